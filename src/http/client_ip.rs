//! Step 2: the client IP, decided once (docs/http.md#client-ip). `TRUST_PROXY=0`: the socket peer, and
//! `X-Forwarded-For` is ignored. `TRUST_PROXY=1` (one hop): the rightmost valid entry of the last
//! `X-Forwarded-For` header — the one our own proxy appended — else the socket peer.

use std::net::{IpAddr, SocketAddr};

use axum::extract::{ConnectInfo, Request};
use axum::response::Response;

use super::Hardening;
use crate::config::canonical_ip;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

pub async fn layer(h: &Hardening, mut request: Request, next: impl AsyncFnOnce(Request) -> Response) -> Response {
    let peer = request.extensions().get::<ConnectInfo<SocketAddr>>().map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let forwarded = h
        .trust_proxy
        .then(|| {
            request
                .headers()
                .get_all("x-forwarded-for")
                .iter()
                .next_back()
                .and_then(|v| v.to_str().ok())
                .and_then(rightmost)
        })
        .flatten();
    let ip = canonical_ip(forwarded.unwrap_or(peer));
    request.extensions_mut().insert(ClientIp(ip));
    next(request).await
}

fn rightmost(header: &str) -> Option<IpAddr> {
    header.rsplit(',').map(str::trim).find_map(|s| s.parse().ok())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_rightmost_valid_entry_wins() {
        assert_eq!(super::rightmost("1.1.1.1, 2.2.2.2").unwrap().to_string(), "2.2.2.2");
        assert_eq!(super::rightmost("1.1.1.1, garbage").unwrap().to_string(), "1.1.1.1");
        assert!(super::rightmost("nope").is_none());
    }
}

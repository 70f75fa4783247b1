//! Steps 4 and 6: the IP denylist on every path, and the allowlists on their scopes
//! (`ADMIN_IP_ALLOWLIST` on `/admin` and `/admin/*`, `WEBHOOK_IP_ALLOWLIST` on `/webhooks/*`).
//! An empty allowlist allows everyone; demo mode skips both.
//!
//! A webhook request refused by `WEBHOOK_IP_ALLOWLIST` is answered in its route's format (TwiML
//! `<Response/>` on Twilio routes, JSON on `/email`, docs/http.md#routes). A POST to a webhook route goes
//! on, marked `webhook_routes::IpRefused`, past the rate limit and the body limit (the pipeline
//! skips steps 7 and 8 for it, as if it were refused here) to its handler, which refuses it before anything
//! else, its body unread, and records `WebhookRejected(ip)` when the agent exists (only handlers
//! reach the store); every other refused request is answered here.

use std::net::IpAddr;

use axum::extract::Request;
use axum::http::Method;
use axum::response::{IntoResponse, Response};
use ipnet::IpNet;

use super::webhook_routes::{ip_refusal, route_path, IpRefused};
use super::{ClientIp, Hardening};
use crate::error::{ApiError, ErrorCode};

pub fn listed(list: &[IpNet], ip: IpAddr) -> bool {
    list.iter().any(|net| net.contains(&ip))
}

fn client(request: &Request) -> IpAddr {
    request.extensions().get::<ClientIp>().map_or(IpAddr::from([127, 0, 0, 1]), |c| c.0)
}

fn forbidden() -> Response {
    ApiError::new(ErrorCode::Forbidden, "Forbidden").into_response()
}

pub async fn denylist(h: &Hardening, request: Request, next: impl AsyncFnOnce(Request) -> Response) -> Response {
    if !h.demo && listed(&h.denylist, client(&request)) {
        return forbidden();
    }
    next(request).await
}

/// True when `path` is `/<scope>` or below it.
pub fn under(path: &str, scope: &str) -> bool {
    path.strip_prefix(scope).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

pub async fn allowlists(h: &Hardening, mut request: Request, next: impl AsyncFnOnce(Request) -> Response) -> Response {
    if !h.demo {
        let path = request.uri().path();
        let (list, webhook) = if under(path, "/admin") {
            (&h.admin_allowlist, false)
        } else if under(path, "/webhooks") {
            (&h.webhook_allowlist, true)
        } else {
            return next(request).await;
        };
        if !list.is_empty() && !listed(list, client(&request)) {
            if !webhook {
                return forbidden();
            }
            if request.method() != Method::POST || !route_path(path) {
                return ip_refusal(path);
            }
            request.extensions_mut().insert(IpRefused);
        }
    }
    next(request).await
}

#[cfg(test)]
mod tests {
    #[test]
    fn scopes_match_whole_segments() {
        assert!(super::under("/admin", "/admin"));
        assert!(super::under("/admin/api/me", "/admin"));
        assert!(!super::under("/administrator", "/admin"));
    }
}

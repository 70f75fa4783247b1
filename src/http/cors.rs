//! Step 5: CORS (docs/http.md#headers-and-cors). An allowed `Origin` (trailing `/` ignored) gets the allow
//! headers; any other gets none. `OPTIONS` is answered here, 204 and empty, on every path.

use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};

use super::Hardening;

pub async fn layer(h: &Hardening, request: Request, next: impl AsyncFnOnce(Request) -> Response) -> Response {
    let origin = request
        .headers()
        .get("origin")
        .and_then(|v| v.to_str().ok())
        .map(|o| o.trim_end_matches('/').to_string())
        .filter(|o| h.cors_origins.iter().any(|allowed| allowed == o));
    let mut response =
        if request.method() == Method::OPTIONS { StatusCode::NO_CONTENT.into_response() } else { next(request).await };
    if let Some(origin) = origin {
        allow(response.headers_mut(), &origin);
    }
    response
}

fn allow(headers: &mut HeaderMap, origin: &str) {
    if let Ok(origin) = HeaderValue::from_str(origin) {
        headers.insert("access-control-allow-origin", origin);
    }
    for (name, value) in [
        ("access-control-allow-credentials", "true"),
        ("access-control-allow-methods", "GET, POST, DELETE, OPTIONS"),
        (
            "access-control-allow-headers",
            "Content-Type, Authorization, Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID, X-Agent-Id",
        ),
        ("access-control-expose-headers", "Mcp-Session-Id"),
        ("access-control-max-age", "86400"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
}

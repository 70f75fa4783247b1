//! Step 3: security headers on every response, whichever layer produced it (docs/http.md#headers-and-cors). The
//! console's HTML page (`GET /admin`) gets the CSP docs/http.md#headers-and-cors sets for it; every other response,
//! its scripts and styles included, `default-src 'none'`.

use axum::extract::Request;
use axum::http::header::{CONTENT_SECURITY_POLICY, CONTENT_TYPE};
use axum::http::HeaderValue;
use axum::response::Response;

use super::Hardening;

const ALWAYS: [(&str, &str); 7] = [
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("content-security-policy", "default-src 'none'"),
    ("cache-control", "no-store"),
    ("vary", "Origin"),
];

pub async fn layer(h: &Hardening, request: Request, next: impl AsyncFnOnce(Request) -> Response) -> Response {
    let page = request.uri().path() == super::console::PAGE;
    let mut response = next(request).await;
    let html = response.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"text/html"));
    let headers = response.headers_mut();
    for (name, value) in ALWAYS {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if page && html {
        headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(super::console::PAGE_CSP));
    }
    if h.production {
        headers.insert("strict-transport-security", HeaderValue::from_static("max-age=31536000; includeSubDomains"));
    }
    response
}

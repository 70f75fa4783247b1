//! What the hardening layer knows about the webhook routes (docs/webhooks.md): which paths they
//! are, the format a refusal there is answered in (TwiML on Twilio routes, JSON on the others),
//! and the `IpRefused` mark `ip_filter` leaves for the handler. Kept in `http`, which `webhooks`
//! imports, so that `ip_filter` does not import `webhooks`.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

use crate::error::{ApiError, ErrorCode};

/// A Twilio reply: `text/xml`, no prolog; the empty one is exactly `<Response/>`.
pub fn twiml(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body.into()).into_response()
}

/// Set by the hardening layer (`ip_filter`) on a request to a webhook route from an IP
/// outside `WEBHOOK_IP_ALLOWLIST`: the handler refuses it at once (docs/webhooks.md#twilio-routes step 1), recording the
/// refusal on the agent's stream when the agent exists.
#[derive(Clone, Copy, Debug)]
pub struct IpRefused;

/// Whether `path` is a Twilio webhook route (`/webhooks/:agentId/sms`, `/call-status`,
/// `/voice/status`), whose answers are TwiML, errors included.
pub fn twilio_path(path: &str) -> bool {
    matches!(segments(path).as_slice(), [_, "sms" | "call-status"] | [_, "voice", "status"])
}

/// Whether `path` is one of the webhook routes (Twilio's or `/webhooks/:agentId/email`).
pub fn route_path(path: &str) -> bool {
    twilio_path(path) || matches!(segments(path).as_slice(), [_, "email"])
}

/// The segments of `path` after `/webhooks/`, the agent id first.
fn segments(path: &str) -> Vec<&str> {
    match path.strip_prefix("/webhooks/") {
        Some(rest) if !rest.starts_with('/') => rest.split('/').collect(),
        _ => Vec::new(),
    }
}

/// Hardening step 3b: on a Twilio route every refusal is TwiML, whichever layer answers it — the
/// denylist (403), the rate limits (429), the body limit (413), the router (404, 405) — keeping
/// its status and headers (`Allow`, `Retry-After`, the request id, the security headers).
pub async fn twiml_errors(request: Request, next: impl AsyncFnOnce(Request) -> Response) -> Response {
    let twilio = twilio_path(request.uri().path());
    let response = next(request).await;
    let refused = response.status().is_client_error() || response.status().is_server_error();
    let json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(twilio && refused && json) {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    // The request-id layer would write the error model's JSON body back from this.
    parts.extensions.remove::<crate::error::ErrorBody>();
    parts.headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/xml; charset=utf-8"));
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from("<Response/>"))
}

/// The answer to a webhook request refused by the IP allowlist: TwiML on Twilio routes, JSON on
/// the others.
pub fn ip_refusal(path: &str) -> Response {
    if twilio_path(path) {
        twiml(StatusCode::FORBIDDEN, "<Response/>")
    } else {
        ApiError::new(ErrorCode::Forbidden, "Forbidden").with_status(StatusCode::FORBIDDEN).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::{route_path, twilio_path};

    #[test]
    fn webhook_routes_are_told_apart_by_their_paths() {
        for twilio in ["/webhooks/a1/sms", "/webhooks/a1/call-status", "/webhooks/a1/voice/status"] {
            assert!(twilio_path(twilio) && route_path(twilio), "{twilio}");
        }
        assert!(!twilio_path("/webhooks/a1/email") && route_path("/webhooks/a1/email"));
        for other in ["/webhooks", "/webhooks/", "/webhooks//sms", "/webhooks/a1/sms/x", "/webhooks/a1/voice", "/sms"] {
            assert!(!route_path(other), "{other}");
        }
    }
}

//! Step 8: request bodies of at most 1 MiB (docs/http.md#hardening), by `Content-Length` or, for a
//! chunked body, while reading it. Larger ones get 413 `payload_too_large` and reach no handler.
//! A body must also arrive within `BODY_READ_TIMEOUT`: one trickled in byte by byte would hold
//! its connection and task for as long as the client likes. It is read here, before any handler,
//! so the deadline holds whatever the route; a late one gets 408 and the connection is closed.

use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};

use crate::error::{ApiError, ErrorCode};

pub const MAX_BODY: usize = 1024 * 1024;
/// How long a client has to send a request's body once its headers are in (1 MiB in 10 s needs
/// ~100 KB/s).
pub const BODY_READ_TIMEOUT: Duration = Duration::from_secs(10);

fn too_large() -> Response {
    ApiError::new(ErrorCode::PayloadTooLarge, "Request body exceeds 1 MiB").into_response()
}

fn too_slow() -> Response {
    let message = format!("Request body not received within {} s", BODY_READ_TIMEOUT.as_secs());
    ApiError::new(ErrorCode::InvalidInput, message)
        .with_status(StatusCode::REQUEST_TIMEOUT)
        .header("Connection", "close")
        .into_response()
}

pub async fn layer(request: Request, next: impl AsyncFnOnce(Request) -> Response) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    let chunked = request.headers().contains_key(axum::http::header::TRANSFER_ENCODING);
    if declared.unwrap_or(0) == 0 && !chunked {
        // No body (a declared length is what hyper reads, never more).
        return next(request).await;
    }
    // Read at most the limit within the deadline, then hand the handler the buffered body.
    let (parts, body) = request.into_parts();
    match tokio::time::timeout(BODY_READ_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => too_slow(),
        Ok(Ok(collected)) => next(Request::from_parts(parts, Body::from(collected.to_bytes()))).await,
        Ok(Err(e)) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => too_large(),
        Ok(Err(e)) => ApiError::new(ErrorCode::InvalidInput, format!("Invalid request body: {e}")).into_response(),
    }
}

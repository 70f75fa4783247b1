//! Step 8: request bodies of at most 1 MiB (CONTRACT §13.1), by `Content-Length` or, for a
//! chunked body, while reading it. Larger ones get 413 `payload_too_large` and reach no handler.

use axum::body::Body;
use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, Limited};

use crate::error::{ApiError, ErrorCode};

pub const MAX_BODY: usize = 1024 * 1024;

fn too_large() -> Response {
    ApiError::new(ErrorCode::PayloadTooLarge, "Request body exceeds 1 MiB").into_response()
}

pub async fn layer(request: Request, next: Next) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return too_large();
    }
    if declared.is_some() || !request.headers().contains_key(axum::http::header::TRANSFER_ENCODING) {
        // A declared length is enforced by hyper; a body without one here is empty.
        return next.run(request).await;
    }
    // Chunked: read at most the limit, then hand the handler the buffered body.
    let (parts, body) = request.into_parts();
    match Limited::new(body, MAX_BODY).collect().await {
        Ok(collected) => next.run(Request::from_parts(parts, Body::from(collected.to_bytes()))).await,
        Err(e) if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() => too_large(),
        Err(e) => ApiError::new(ErrorCode::InvalidInput, format!("Invalid request body: {e}")).into_response(),
    }
}

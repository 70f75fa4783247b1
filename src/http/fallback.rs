//! Unknown paths answer 404 JSON; a known path with another method answers 405 JSON with `Allow`.

use axum::response::{IntoResponse, Response};
use axum::Router;

use crate::error::{ApiError, ErrorCode};

pub fn install(router: Router) -> Router {
    router.fallback(not_found).method_not_allowed_fallback(method_not_allowed)
}

async fn not_found() -> Response {
    ApiError::not_found("Not found").into_response()
}

async fn method_not_allowed() -> Response {
    // axum keeps the route's `Allow` header on this response.
    ApiError::new(ErrorCode::MethodNotAllowed, "Method not allowed").into_response()
}

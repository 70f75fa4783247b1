//! TEMPORARY stub.
use axum::routing::get;
use axum::Router;
pub fn routes() -> Router<crate::app::AppState> {
    Router::new().route("/health", get(|| async { axum::Json(serde_json::json!({"status":"ok"})) }))
}

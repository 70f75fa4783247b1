//! `POST /admin/api/subjects/erase` (CONTRACT §12): the same operation as `comms_erase_subject`
//! (`crate::erasure`), for org admins (own org) and the super-admin (one org or every org).

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use super::admin::Admin;
use super::extract::JsonBody;
use crate::error::ApiError;
use crate::state::AppState;
use crate::validate::Args;

pub fn routes() -> Router<AppState> {
    Router::new().route("/admin/api/subjects/erase", post(erase))
}

async fn erase(State(app): State<AppState>, admin: Admin, JsonBody(raw): JsonBody) -> Result<Json<Value>, ApiError> {
    let args = Args::new(&raw)?;
    crate::erasure::erase_subject(&app, &admin.principal, admin.context.clone(), &args).await.map(Json)
}

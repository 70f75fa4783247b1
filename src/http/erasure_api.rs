//! `POST /admin/api/subjects/erase` (docs/admin-api.md): the same operation as `comms_erase_subject`
//! (`crate::erasure`), for org admins (own org) and the super-admin (one org or every org).

use axum::extract::State;
use axum::Json;

use super::admin::Admin;
use super::extract::JsonBody;
use super::openapi::{tool_result, ApiRouter, Body, Doc, ToolResult};
use crate::error::ApiError;
use crate::state::AppState;
use crate::validate::Args;

pub fn routes() -> ApiRouter {
    ApiRouter::new().post(
        "/admin/api/subjects/erase",
        erase,
        Doc {
            who: "O (own org) S",
            summary: "= comms_erase_subject: destroys the subject's keys in scope and purges its projection rows",
            query: &[],
            body: Body::Tool("comms_erase_subject"),
        },
    )
}

async fn erase(
    State(app): State<AppState>,
    admin: Admin,
    JsonBody(raw): JsonBody,
) -> Result<Json<ToolResult>, ApiError> {
    let args = Args::new(&raw)?;
    crate::erasure::erase_subject(&app, &admin.principal, admin.context.clone(), &args).await.map(tool_result)
}

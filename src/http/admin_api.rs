//! Every `/admin/api/*` route in one router: the OpenAPI document, then the directory, compliance,
//! auditor, view and erasure routes behind the refusal-recording middleware (`admin::record_refusals`). Each is
//! registered with its description (`openapi::ApiRouter`), and the document is built from those.

use std::sync::Arc;

use axum::routing::get;
use axum::{Json, Router};

use super::openapi::{self, ApiRouter, Op, ToolSchemas};
use crate::state::AppState;

pub const OPENAPI_PATH: &str = "/admin/api/openapi.json";

/// The admin routes and the description of each, the document's own entry included.
pub fn described() -> (Router<AppState>, Vec<Op>) {
    let (router, mut ops) = ApiRouter::new()
        .merge(super::directory_api::routes())
        .merge(super::compliance_api::routes())
        .merge(super::audit_api::routes())
        .merge(super::views_api::routes())
        .merge(super::erasure_api::routes())
        .merge(super::alerts_api::routes())
        .merge(super::anomalies_api::routes())
        .merge(super::chains_api::routes())
        .into_parts();
    ops.insert(0, openapi::openapi_op(OPENAPI_PATH));
    (router, ops)
}

/// The admin routes and their document; `tool_schemas` gives a tool route's body schema.
pub fn routes(app: AppState, tool_schemas: ToolSchemas) -> Router<AppState> {
    let (routes, ops) = described();
    let document = Arc::new(openapi::document(&ops, tool_schemas));
    let documented = Router::new().route(OPENAPI_PATH, get(move || async move { Json(document.as_ref().clone()) }));
    documented.merge(routes.layer(axum::middleware::from_fn_with_state(app, super::admin::record_refusals)))
}

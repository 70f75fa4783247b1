//! Every `/admin/api/*` route in one router: the OpenAPI document, then the directory, compliance
//! and auditor routes behind the refusal-recording middleware (`admin::record_refusals`).

use axum::routing::get;
use axum::Router;

use crate::state::AppState;

pub fn routes(app: AppState) -> Router<AppState> {
    let documented = Router::new().route("/admin/api/openapi.json", get(super::openapi::document));
    let routes = Router::new()
        .merge(super::directory_api::routes())
        .merge(super::compliance_api::routes())
        .merge(super::audit_api::routes())
        .merge(super::views_api::routes())
        .merge(super::alerts_api::routes())
        .merge(super::anomalies_api::routes())
        .layer(axum::middleware::from_fn_with_state(app, super::admin::record_refusals));
    documented.merge(routes)
}

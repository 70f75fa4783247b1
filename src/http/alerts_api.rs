//! `GET /admin/api/alerts` (docs/admin-api.md, docs/monitoring.md): the alerts projection, newest first, keyset-paged
//! (`paging::Page` over positions). An org token sees the alerts about its own agents only
//! (those carrying its `orgId`); IP alerts are platform-wide and shown to the master token only.

use axum::extract::State;
use axum::Json;
use commguard_projections::alerts::read::{self as alerts_read, AlertFilter, AlertRow};
use schemars::JsonSchema;
use serde::Serialize;

use super::admin::Admin;
use super::openapi::{ApiRouter, Body, Doc, CURSOR, LIMIT, ORG};
use super::params::Params;
use crate::auth::Role;
use crate::directory::commands::read_scope;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::rfc3339;

/// The docs/monitoring.md rules, as `rule` filters name them.
pub const RULES: [&str; 6] =
    ["volume_spike", "brute_force", "rapid_rotation", "brute_force_lockout", "rate_limit", "spend_threshold"];
pub const SEVERITIES: [&str; 3] = ["HIGH", "MEDIUM", "LOW"];

pub fn routes() -> ApiRouter {
    ApiRouter::new().get(
        "/admin/api/alerts",
        alerts,
        Doc {
            who: "O (its agents) S (also IP alerts)",
            summary: "Alerts raised by the anomaly rules, newest first (?severity&rule&since&orgId&cursor&limit)",
            query: &[
                ("severity", false, "string", "HIGH | MEDIUM | LOW"),
                ("rule", false, "string", "one of the anomaly rules (docs/monitoring.md)"),
                ("since", false, "string", "RFC 3339: raised at or after"),
                ORG,
                CURSOR,
                LIMIT,
            ],
            body: Body::None,
        },
    )
}

/// A page of alerts, newest first.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct AlertPage {
    alerts: Vec<AlertView>,
    next_cursor: Option<String>,
}

/// One alert: a (rule, subject, window) that fired, and how often it fired again in its window.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct AlertView {
    alert_id: String,
    rule: String,
    severity: String,
    title: String,
    message: String,
    /// agent | ip
    subject_kind: String,
    subject_id: String,
    org_id: Option<String>,
    raised_at: String,
    occurrences: i64,
}

/// The reply's form of a row.
fn view(row: AlertRow) -> AlertView {
    AlertView {
        alert_id: row.alert_id,
        rule: row.rule,
        severity: row.severity,
        title: row.title,
        message: row.message,
        subject_kind: row.subject_kind,
        subject_id: row.subject_id,
        org_id: row.org_id,
        raised_at: rfc3339(row.raised_at),
        occurrences: row.occurrences,
    }
}

/// `GET /admin/api/alerts?severity&rule&since&orgId&cursor&limit` → `{alerts, nextCursor}`.
async fn alerts(State(app): State<AppState>, admin: Admin, params: Params) -> Result<Json<AlertPage>, ApiError> {
    let severity = params.choice("severity", &SEVERITIES)?;
    let rule = params.choice("rule", &RULES)?;
    let since = params.time("since")?;
    let org = read_scope(&app, &admin.principal, params.id("orgId")?).await?;
    let page = params.page::<i64>()?;

    let filter = AlertFilter {
        without_ips: admin.principal.role() != Role::SuperAdmin,
        org_id: org,
        severity,
        rule,
        since,
        before: page.after,
    };
    let rows = alerts_read::alerts(&app.pool, &filter, page.fetch()).await.map_err(ApiError::internal)?;
    let (rows, next) = page.finish(rows, |r| r.position);
    Ok(Json(AlertPage { alerts: rows.into_iter().map(view).collect(), next_cursor: next }))
}

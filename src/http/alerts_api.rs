//! `GET /admin/api/alerts` (docs/admin-api.md, docs/monitoring.md): the alerts projection, newest first, keyset-paged
//! (`paging::Page` over positions). An org token sees the alerts about its own agents only
//! (those carrying its `orgId`); IP alerts are platform-wide and shown to the master token only.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
use sqlx::{Postgres, QueryBuilder};

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

#[derive(sqlx::FromRow)]
struct Row {
    position: i64,
    alert_id: String,
    rule: String,
    severity: String,
    title: String,
    message: String,
    subject_kind: String,
    subject_id: String,
    org_id: Option<String>,
    raised_at: DateTime<Utc>,
    occurrences: i64,
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

impl Row {
    fn view(self) -> AlertView {
        AlertView {
            alert_id: self.alert_id,
            rule: self.rule,
            severity: self.severity,
            title: self.title,
            message: self.message,
            subject_kind: self.subject_kind,
            subject_id: self.subject_id,
            org_id: self.org_id,
            raised_at: rfc3339(self.raised_at),
            occurrences: self.occurrences,
        }
    }
}

/// `GET /admin/api/alerts?severity&rule&since&orgId&cursor&limit` → `{alerts, nextCursor}`.
async fn alerts(State(app): State<AppState>, admin: Admin, params: Params) -> Result<Json<AlertPage>, ApiError> {
    let severity = params.choice("severity", &SEVERITIES)?;
    let rule = params.choice("rule", &RULES)?;
    let since = params.time("since")?;
    let org = read_scope(&admin.principal, params.id("orgId")?)?;
    let page = params.page::<i64>()?;

    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT position, alert_id, rule, severity, title, message, subject_kind, subject_id, org_id, raised_at,
                occurrences
         FROM alerts WHERE true",
    );
    if admin.principal.role() != Role::SuperAdmin {
        sql.push(" AND subject_kind <> 'ip'");
    }
    if let Some(org) = org {
        sql.push(" AND org_id = ").push_bind(org);
    }
    if let Some(severity) = severity {
        sql.push(" AND severity = ").push_bind(severity);
    }
    if let Some(rule) = rule {
        sql.push(" AND rule = ").push_bind(rule);
    }
    if let Some(since) = since {
        sql.push(" AND raised_at >= ").push_bind(since);
    }
    if let Some(after) = page.after {
        sql.push(" AND position < ").push_bind(after);
    }
    sql.push(" ORDER BY position DESC LIMIT ").push_bind(page.fetch());
    let rows: Vec<Row> = sql.build_query_as().fetch_all(&app.pool).await.map_err(ApiError::internal)?;
    let (rows, next) = page.finish(rows, |r| r.position);
    Ok(Json(AlertPage { alerts: rows.into_iter().map(Row::view).collect(), next_cursor: next }))
}

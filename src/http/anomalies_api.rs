//! `GET /admin/api/anomalies` (docs/admin-api.md, docs/monitoring.md): every rule's current window values — exactly
//! what the detector evaluates (`anomaly::readings`): outbound attempts per agent (this 5 minutes
//! and the previous), failed authentications per IP (this 5 minutes), current lockouts per IP,
//! tokens issued per agent (this hour), refusals per agent and limit type (the limit's window),
//! spend per agent today against its daily cap — each beside its threshold and whether it fires.
//! IP rows are shown to the master token only; an org token sees its own agents' rows only.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::admin::Admin;
use super::openapi::{ApiRouter, Body, Doc, CURSOR, LIMIT, ORG};
use super::params::Params;
use crate::anomaly::{self, Reading, RULES};
use crate::auth::Role;
use crate::directory::commands::read_scope;
use crate::error::ApiError;
use crate::state::AppState;

pub fn routes() -> ApiRouter {
    ApiRouter::new().get(
        "/admin/api/anomalies",
        anomalies,
        Doc {
            who: "O (its agents) S (also IPs)",
            summary: "Each anomaly rule's current window values, thresholds and whether they fire, by rule and subject",
            query: &[
                ("severity", false, "string", "HIGH | MEDIUM: the rules whose alerts have that severity"),
                ("rule", false, "string", "one anomaly rule (docs/monitoring.md)"),
                ("since", false, "string", "RFC 3339: windows that end at or after it"),
                ORG,
                CURSOR,
                LIMIT,
            ],
            body: Body::None,
        },
    )
}

/// The reply: a page of readings.
#[derive(Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct AnomalyPage {
    anomalies: Vec<Reading>,
    next_cursor: Option<String>,
}

/// `GET /admin/api/anomalies?severity&rule&since&orgId&cursor&limit` → `{anomalies, nextCursor}`.
async fn anomalies(State(app): State<AppState>, admin: Admin, params: Params) -> Result<Json<AnomalyPage>, ApiError> {
    let severity = params.choice("severity", &["HIGH", "MEDIUM"])?;
    let rule = params.choice("rule", &RULES)?;
    let since = params.time("since")?;
    let org = read_scope(&app, &admin.principal, params.id("orgId")?).await?;
    let page = params.page::<(String, String, String, i64)>()?;
    let master = admin.principal.role() == Role::SuperAdmin;
    let readings = anomaly::readings(&app).await.map_err(ApiError::internal)?;
    let items: Vec<((String, String, String, i64), Reading)> = readings
        .into_iter()
        // IP rows are platform-wide: the master's only, and not part of an org's view.
        .filter(|r| if r.subject_kind == "ip" { master && org.is_none() } else { org.is_none() || r.org_id == org })
        .filter(|r| rule.as_deref().is_none_or(|wanted| wanted == r.rule))
        .filter(|r| severity.as_deref().is_none_or(|wanted| wanted == anomaly::severity_of(r.rule)))
        .filter(|r| since.is_none_or(|since| r.window_end >= since))
        .map(|r| {
            let key =
                (r.rule.to_string(), r.subject_id.clone(), r.limit_type.clone().unwrap_or_default(), r.window_key());
            (key, r)
        })
        .collect();
    let (items, next) = page.of(items, |(key, _)| key.clone());
    Ok(Json(AnomalyPage { anomalies: items.into_iter().map(|(_, r)| r).collect(), next_cursor: next }))
}

//! `GET /admin/api/anomalies` (CONTRACT §12, §14): each rule's current window values from the
//! anomaly projection — outbound attempts per agent (this 5 minutes and the previous), failed
//! authentications per IP (this 5 minutes; master token only), tokens issued per agent (this
//! hour) — beside the threshold each is compared with. An org token sees its own agents only.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, TimeDelta, Utc};
use commguard_projections::anomaly::{window_of, AUTH_FAILED, OUTBOUND, TOKEN_ISSUED};
use serde_json::{json, Value};

use super::admin::Admin;
use super::openapi::{ApiRouter, Body, Doc, CURSOR, LIMIT, ORG};
use super::params::Params;
use crate::anomaly::{BRUTE_FORCE_OVER, ROTATION_OVER};
use crate::auth::Role;
use crate::directory::commands::read_scope;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::rfc3339;

pub fn routes() -> ApiRouter {
    ApiRouter::new().get(
        "/admin/api/anomalies",
        anomalies,
        Doc {
            who: "O (its agents) S (also IPs)",
            summary: "Each rule's current window values and thresholds",
            query: &[("rule", false, "string", "one of the §14 rules"), ORG, CURSOR, LIMIT],
            body: Body::None,
        },
    )
}

#[derive(sqlx::FromRow)]
struct Window {
    counter: String,
    subject_kind: String,
    subject_id: String,
    org_id: Option<String>,
    window_start: DateTime<Utc>,
    count: i64,
    previous: i64,
}

/// `GET /admin/api/anomalies?rule&orgId&cursor&limit` → `{anomalies, nextCursor}`, by rule and subject.
async fn anomalies(State(app): State<AppState>, admin: Admin, params: Params) -> Result<Json<AnomalyPage>, ApiError> {
    let rule = params.choice("rule", &["volume_spike", "brute_force", "rapid_rotation"])?;
    let org = read_scope(&admin.principal, params.id("orgId")?)?;
    let page = params.page::<(String, String)>()?;
    let now = app.clock.now();
    let five = window_of(OUTBOUND, now);
    let hour = window_of(TOKEN_ISSUED, now);
    let rows: Vec<Window> = sqlx::query_as(
        "SELECT w.counter, w.subject_kind, w.subject_id, w.org_id, w.window_start, w.count,
                COALESCE(p.count, 0) AS previous
         FROM anomaly_windows w
         LEFT JOIN anomaly_windows p ON w.counter = $1 AND p.counter = w.counter
              AND p.window_start = w.window_start - interval '5 minutes'
              AND p.subject_kind = w.subject_kind AND p.subject_id = w.subject_id
         WHERE (w.counter = $1 AND w.window_start = $3) OR (w.counter = $2 AND w.window_start = $3)
            OR (w.counter = $4 AND w.window_start = $5)",
    )
    .bind(OUTBOUND)
    .bind(AUTH_FAILED)
    .bind(five)
    .bind(TOKEN_ISSUED)
    .bind(hour)
    .fetch_all(&app.pool)
    .await
    .map_err(ApiError::internal)?;
    let master = admin.principal.role() == Role::SuperAdmin;
    let min_actions = i64::from(app.config.anomaly_volume_min_actions);
    let items: Vec<((String, String), Value)> = rows
        .into_iter()
        .filter(|w| master || w.subject_kind != "ip")
        .filter(|w| org.is_none() || w.org_id == org)
        .filter_map(|w| {
            let (name, length, threshold, firing) = match w.counter.as_str() {
                OUTBOUND => (
                    "volume_spike",
                    TimeDelta::minutes(5),
                    json!({"minActions": min_actions, "overPreviousTimes": 3}),
                    w.count >= min_actions && w.count > 3 * w.previous,
                ),
                AUTH_FAILED => (
                    "brute_force",
                    TimeDelta::minutes(5),
                    json!({"over": BRUTE_FORCE_OVER}),
                    w.count > BRUTE_FORCE_OVER,
                ),
                TOKEN_ISSUED => {
                    ("rapid_rotation", TimeDelta::hours(1), json!({"over": ROTATION_OVER}), w.count > ROTATION_OVER)
                }
                _ => return None,
            };
            if rule.as_deref().is_some_and(|r| r != name) {
                return None;
            }
            let mut view = json!({
                "rule": name,
                "subjectKind": w.subject_kind,
                "subjectId": w.subject_id,
                "orgId": w.org_id,
                "windowStart": rfc3339(w.window_start),
                "windowEnd": rfc3339(w.window_start + length),
                "value": w.count,
                "threshold": threshold,
                "firing": firing,
            });
            if name == "volume_spike" {
                view["previous"] = json!(w.previous);
            }
            Some(((name.to_string(), w.subject_id), view))
        })
        .collect();
    let (items, next) = page.of(items, |(key, _)| key.clone());
    Ok(Json(AnomalyPage { anomalies: items.into_iter().map(|(_, v)| v).collect(), next_cursor: next }))
}

/// Each rule's current window values, by rule and subject.
#[derive(serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
struct AnomalyPage {
    anomalies: Vec<Value>,
    next_cursor: Option<String>,
}

//! The admin API's consent, DNC and test-clock routes (CONTRACT §12): the same rules as the
//! consent and DNC tools (`crate::contacts`), for org admins and the super-admin. The DNC routes
//! scope their org exactly as the tools do (`dnc_org`, `dnc_list_scope`): the super-admin names
//! `orgId` to add or remove, and lists every org without it.

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use commguard_domain::contact::DncSource;
use serde::Deserialize;
use serde_json::{json, Value};

use super::admin::Admin;
use super::extract::{JsonBody, Query};
use crate::state::AppState;
use crate::auth::{guard, Role};
use crate::contacts;
use crate::error::{ApiError, ErrorCode};
use crate::contacts::{dnc_list_scope, dnc_org, list_limit};
use crate::store::rfc3339;
use crate::validate::{invalid, Args};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/admin/api/consent", get(consent))
        .route("/admin/api/dnc", get(dnc_list).post(dnc_add))
        .route("/admin/api/dnc/remove", post(dnc_remove))
        .route("/admin/api/test/clock", post(test_clock))
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct ConsentQuery {
    contact: Option<String>,
    agent_id: Option<String>,
    channel: Option<String>,
    org_id: Option<String>,
}

/// The org a consent query acts in: O its own; S the one it names, else its home org.
async fn consent_org(app: &AppState, admin: &Admin, requested: Option<String>) -> Result<String, ApiError> {
    let requested = match admin.principal.role() {
        Role::SuperAdmin => Some(
            requested
                .unwrap_or_else(|| crate::directory::commands::home_org(&admin.principal, None).unwrap_or_default()),
        ),
        _ => requested,
    };
    dnc_org(app, &admin.principal, requested).await
}

async fn consent(
    State(app): State<AppState>,
    admin: Admin,
    Query(query): Query<ConsentQuery>,
) -> Result<Json<Value>, ApiError> {
    let raw = query.contact.ok_or_else(|| invalid("contact", "is required"))?;
    let address = contacts::address("contact", &raw)?;
    let org = match &query.agent_id {
        Some(agent_id) => crate::directory::commands::addressable_agent(&app, &admin.principal, agent_id).await?.org_id,
        None => consent_org(&app, &admin, query.org_id).await?,
    };
    contacts::consent_records(&app, &org, &address, query.agent_id.as_deref(), query.channel.as_deref()).await.map(Json)
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct DncQuery {
    org_id: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

async fn dnc_list(
    State(app): State<AppState>,
    admin: Admin,
    Query(q): Query<DncQuery>,
) -> Result<Json<Value>, ApiError> {
    if let Some(k) = q.kind.as_deref().filter(|k| !["phone", "email"].contains(k)) {
        return Err(invalid("type", format!("must be phone or email, not \"{k}\"")));
    }
    let limit = list_limit(q.limit.map(Value::from).as_ref())?;
    let org = dnc_list_scope(&app, &admin.principal, q.org_id).await?;
    contacts::dnc_list(&app, org.as_deref(), q.kind.as_deref(), q.cursor.as_deref(), limit).await.map(Json)
}

async fn dnc_add(State(app): State<AppState>, admin: Admin, JsonBody(raw): JsonBody) -> Result<Json<Value>, ApiError> {
    let args = Args::new(&raw)?;
    let address = contacts::address("address", &args.str("address", 1, 320)?)?;
    let reason = args.opt_str("reason", 500)?;
    let org = dnc_org(&app, &admin.principal, args.opt_id("orgId")?).await?;
    let context = admin.context.clone().in_org(org.clone());
    let by = admin.principal.stream_id();
    contacts::dnc_add(&app, &org, &address, DncSource::Admin, reason, by, &context).await.map(Json)
}

async fn dnc_remove(
    State(app): State<AppState>,
    admin: Admin,
    JsonBody(raw): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let args = Args::new(&raw)?;
    let address = contacts::address("address", &args.str("address", 1, 320)?)?;
    let reason = args.str("reason", 3, 500)?;
    let org = dnc_org(&app, &admin.principal, args.opt_id("orgId")?).await?;
    let context = admin.context.clone().in_org(org.clone());
    contacts::dnc_remove(&app, &org, &address, reason, admin.principal.stream_id(), &context).await.map(Json)
}

/// `POST /admin/api/test/clock` (S, only with `COMMGUARD_TEST_CLOCK`): `{now}` sets the clock (it
/// keeps running), `{now: null}` returns to the real clock, `{advanceSeconds}` moves it forward.
async fn test_clock(
    State(app): State<AppState>,
    admin: Admin,
    JsonBody(raw): JsonBody,
) -> Result<Json<Value>, ApiError> {
    if !app.config.test_clock {
        return Err(ApiError::not_found("Not found"));
    }
    guard::require_role(&admin.principal, Role::SuperAdmin)?;
    match (raw.get("now"), raw.get("advanceSeconds")) {
        (Some(Value::Null), _) => app.clock.set(None),
        (Some(Value::String(now)), _) => {
            let at = DateTime::parse_from_rfc3339(now).map_err(|_| invalid("now", "must be an RFC 3339 time"))?;
            app.clock.set(Some(at.with_timezone(&Utc)));
        }
        (Some(_), _) => return Err(invalid("now", "must be an RFC 3339 time or null")),
        (None, Some(seconds)) => {
            let seconds = seconds.as_i64().filter(|s| *s >= 0).ok_or_else(|| {
                ApiError::new(ErrorCode::InvalidInput, "advanceSeconds must be a non-negative integer")
                    .with("field", "advanceSeconds")
            })?;
            app.clock.advance(seconds);
        }
        (None, None) => return Err(invalid("now", "now or advanceSeconds is required")),
    }
    Ok(Json(json!({ "now": rfc3339(app.clock.now()) })))
}

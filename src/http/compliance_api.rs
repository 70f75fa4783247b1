//! The admin API's consent, DNC and test-clock routes (docs/admin-api.md): the same rules as the
//! consent and DNC tools (`crate::contacts`), for org admins and the super-admin. The DNC routes
//! scope their org exactly as the tools do (`dnc_org`, `read_scope`): the super-admin names
//! `orgId` to add or remove, and lists every org without it.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use commguard_domain::contact::DncSource;
use serde_json::{json, Value};

use super::admin::Admin;
use super::extract::JsonBody;
use super::openapi::{tool_result, ApiRouter, Body, Doc, ToolResult, CURSOR, LIMIT, ORG};
use super::params::Params;
use crate::auth::{guard, Role};
use crate::contacts;
use crate::contacts::dnc_org;
use crate::directory::commands::read_scope;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store::rfc3339;
use crate::validate::{invalid, Args};

pub fn routes() -> ApiRouter {
    let doc = |who, summary, query, body| Doc { who, summary, query, body };
    ApiRouter::new()
        .get(
            "/admin/api/dnc",
            dnc_list,
            doc(
                "O S",
                "= comms_dnc_list",
                &[ORG, ("type", false, "string", "phone | email"), CURSOR, LIMIT],
                Body::None,
            ),
        )
        .post("/admin/api/dnc", dnc_add, doc("O S", "= comms_dnc_add", &[], Body::Tool("comms_dnc_add")))
        .post(
            "/admin/api/dnc/remove",
            dnc_remove,
            doc("O S", "= comms_dnc_remove", &[], Body::Tool("comms_dnc_remove")),
        )
        .post(
            "/admin/api/test/clock",
            test_clock,
            doc(
                "S, with COMMGUARD_TEST_CLOCK",
                "Set (now) or advance (advanceSeconds) the service clock",
                &[],
                Body::Schema(|| {
                    json!({"type": "object", "properties": {
                        "now": {"type": "string", "format": "date-time"}, "advanceSeconds": {"type": "integer"}}})
                }),
            ),
        )
}

/// `GET /admin/api/dnc?orgId&type&cursor&limit` (= `comms_dnc_list`).
async fn dnc_list(
    State(app): State<AppState>,
    admin: Admin,
    params: Params,
) -> Result<Json<contacts::DncPage>, ApiError> {
    let kind = params.choice("type", &["phone", "email"])?;
    let page = params.page()?;
    let org = read_scope(&app, &admin.principal, params.id("orgId")?).await?;
    contacts::dnc_list(&app, org.as_deref(), kind.as_deref(), page).await.map(Json)
}

async fn dnc_add(
    State(app): State<AppState>,
    admin: Admin,
    JsonBody(raw): JsonBody,
) -> Result<Json<ToolResult>, ApiError> {
    let args = Args::new(&raw)?;
    let address = contacts::address("address", &args.str("address", 1, 320)?)?;
    let reason = args.opt_str("reason", 500)?;
    let org = dnc_org(&app, &admin.principal, args.opt_id("orgId")?).await?;
    let context = admin.context.clone().in_org(org.clone());
    let by = admin.principal.stream_id();
    contacts::dnc_add(&app, &org, &address, DncSource::Admin, reason, by, &context).await.map(tool_result)
}

async fn dnc_remove(
    State(app): State<AppState>,
    admin: Admin,
    JsonBody(raw): JsonBody,
) -> Result<Json<ToolResult>, ApiError> {
    let args = Args::new(&raw)?;
    let address = contacts::address("address", &args.str("address", 1, 320)?)?;
    let reason = args.str("reason", 3, 500)?;
    let org = dnc_org(&app, &admin.principal, args.opt_id("orgId")?).await?;
    let context = admin.context.clone().in_org(org.clone());
    contacts::dnc_remove(&app, &org, &address, reason, admin.principal.stream_id(), &context).await.map(tool_result)
}

/// `POST /admin/api/test/clock` (S, only with `COMMGUARD_TEST_CLOCK`): `{now}` sets the clock (it
/// keeps running), `{now: null}` returns to the real clock, `{advanceSeconds}` moves it forward.
async fn test_clock(
    State(app): State<AppState>,
    admin: Admin,
    JsonBody(raw): JsonBody,
) -> Result<Json<Clock>, ApiError> {
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
    Ok(Json(Clock { now: rfc3339(app.clock.now()) }))
}

/// The service clock after a change.
#[derive(serde::Serialize, schemars::JsonSchema)]
struct Clock {
    now: String,
}

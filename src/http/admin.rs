//! The admin API (CONTRACT §12), identity part: `/me`, organizations and their lifecycle, agents,
//! their tokens and blocked channels. Org tokens (O) see and change their own org; the master
//! token (S) all. Mutations run the same commands as the MCP tools.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use commguard_domain::records::RefusalEvent;

use axum::extract::{FromRequestParts, Path, State};
use axum::http::request::Parts;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::app::AppState;
use crate::auth::{bearer, guard, AuthFailure, Bearer, Principal, Role};
use crate::directory::commands::{self, NewOrg, RotateTarget};
use crate::directory::{self as dir};
use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::http::params::Params;
use crate::http::{ClientIp, RequestId};
use crate::mcp::lockout_gate;
use crate::mcp::tools::outbound as outbound_tools;
use crate::store::{rfc3339, CommandContext};
use crate::validate::{invalid, Args};

pub fn routes(app: AppState) -> Router<AppState> {
    let documented = Router::new().route("/admin/api/openapi.json", get(super::openapi::document));
    let routes = Router::new()
        .route("/admin/api/me", get(me))
        .route("/admin/api/orgs", get(list_orgs).post(create_org))
        .route("/admin/api/orgs/{org_id}", get(get_org))
        .route("/admin/api/orgs/{org_id}/approve", post(approve))
        .route("/admin/api/orgs/{org_id}/suspend", post(suspend))
        .route("/admin/api/orgs/{org_id}/unsuspend", post(unsuspend))
        .route("/admin/api/orgs/{org_id}/settings", post(settings))
        .route("/admin/api/orgs/{org_id}/rotate-token", post(rotate_org_token))
        .route("/admin/api/agents", get(list_agents))
        .route("/admin/api/agents/{agent_id}", get(get_agent))
        .route("/admin/api/agents/{agent_id}/tokens", get(agent_tokens))
        .route("/admin/api/agents/{agent_id}/regenerate-token", post(regenerate_token))
        .route("/admin/api/agents/{agent_id}/blocked-channels", post(blocked_channels))
        .route("/admin/api/agents/{agent_id}/limits", post(agent_limits))
        .route("/admin/api/agents/{agent_id}/billing", post(agent_billing))
        .route("/admin/api/providers", get(list_providers).post(register_provider))
        .merge(super::compliance_api::routes())
        .merge(super::views_api::routes())
        .layer(axum::middleware::from_fn_with_state(app, record_refusals));
    documented.merge(routes)
}

/// Where the `Admin` extractor leaves the caller, so refusals can be recorded after the handler.
#[derive(Clone, Default)]
struct CallerSlot(Arc<Mutex<Option<Principal>>>);

/// Records every refused admin request of an authenticated caller as `ActionRefused` (CONTRACT
/// §6.1, invariant 2). Authentication failures are recorded by the lockout as `AuthFailed`.
async fn record_refusals(State(app): State<AppState>, mut request: Request, next: Next) -> Response {
    let slot = CallerSlot::default();
    request.extensions_mut().insert(slot.clone());
    let route = format!("{} {}", request.method(), request.uri().path());
    let request_id = request.extensions().get::<RequestId>().map(|r| r.0.clone());
    let response = next.run(request).await;
    let principal = slot.0.lock().expect("caller slot lock").take();
    if let (Some(principal), Some(ErrorBody(refusal))) = (principal, response.extensions().get::<ErrorBody>()) {
        let mut context = CommandContext::new(principal.actor(), "admin-api", app.clock.now());
        if let Some(id) = request_id {
            context = context.with_request_id(id);
        }
        let by = if refusal.code == ErrorCode::InvalidInput { "input" } else { "role" };
        context.provenance.fail(by, refusal.message.clone());
        let (stream_type, stream_id) = match &principal.org_id {
            Some(org) => ("organization", org.clone()),
            None => ("platform", "platform".to_string()),
        };
        let context = match &principal.org_id {
            Some(org) => context.in_org(org.clone()),
            None => context,
        };
        let event = RefusalEvent::ActionRefused {
            tool: route,
            agent_id: None,
            code: refusal.code.as_str().into(),
            refused_by: by.into(),
            reason: refusal.message.clone(),
            rule: refusal.extra.get("rule").and_then(serde_json::Value::as_str).map(str::to_string),
        };
        if let Err(e) = app.store.record(stream_type, &stream_id, &[event], &context).await {
            // An unrecorded decision is not answered as if it had been made (CONTRACT P2).
            tracing::error!(error = %e, "ActionRefused not recorded; answered unavailable");
            return axum::response::IntoResponse::into_response(ApiError::unrecorded());
        }
    }
    response
}

/// An authenticated admin caller (O or S) and the context its commands carry.
pub struct Admin {
    pub principal: Principal,
    pub context: CommandContext,
}

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let ip = parts.extensions.get::<ClientIp>().map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0);
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let route = "/admin/api";
        lockout_gate(app, ip, route).await?;
        let missing = || ApiError::new(ErrorCode::Unauthorized, "Missing Authorization header. Use: Bearer <token>");
        let principal = match bearer(&parts.headers) {
            Bearer::Absent => match app.identity.anonymous() {
                Some(p) => p,
                None => {
                    app.lockout.fail(ip, AuthFailure::Missing, route, None, None).await;
                    return Err(missing());
                }
            },
            Bearer::Malformed => {
                app.lockout.fail(ip, AuthFailure::Missing, route, None, None).await;
                return Err(missing());
            }
            Bearer::Token(token) => match app.identity.resolve(&token).await {
                // A valid agent token is not an admin credential; it is not a guess either.
                Ok(p) if p.role() == Role::Agent => {
                    return Err(ApiError::new(ErrorCode::Unauthorized, "Invalid admin token"))
                }
                Ok(p) => {
                    app.lockout.succeed(ip).await;
                    p
                }
                Err(AuthFailure::Unavailable) => {
                    return Err(ApiError::new(ErrorCode::Unavailable, "Service unavailable"))
                }
                Err(failure) => {
                    app.lockout.fail(ip, failure, route, Some(&token), None).await;
                    return Err(ApiError::new(ErrorCode::Unauthorized, "Invalid admin token"));
                }
            },
        };
        if let Some(slot) = parts.extensions.get::<CallerSlot>() {
            *slot.0.lock().expect("caller slot lock") = Some(principal.clone());
        }
        let mut context =
            CommandContext::new(principal.actor(), "admin-api", app.clock.now()).with_request_id(request_id);
        if let Some(org) = &principal.org_id {
            context = context.in_org(org.clone());
        }
        // Mutations run after their handler's role and input checks; both are recorded as passed.
        context.provenance.pass("role");
        context.provenance.pass("input");
        Ok(Self { principal, context })
    }
}

pub(crate) fn body_args(body: &Option<Json<Value>>) -> Value {
    body.as_ref().map(|Json(v)| v.clone()).unwrap_or(Value::Null)
}

async fn me(State(app): State<AppState>, admin: Admin) -> Result<Json<Value>, ApiError> {
    let org = match &admin.principal.org_id {
        Some(id) => dir::org(&app.pool, id).await?,
        None => None,
    };
    Ok(Json(json!({
        "role": admin.principal.role().as_str(),
        "orgId": admin.principal.org_id,
        "org": org.map(|o| json!({"id": o.org_id, "name": o.name, "mode": o.mode, "a2pRegistered": o.a2p_registered})),
    })))
}

/// `GET /admin/api/orgs?orgId&cursor&limit`.
async fn list_orgs(State(app): State<AppState>, admin: Admin, params: Params) -> Result<Json<Value>, ApiError> {
    let org = commands::read_scope(&admin.principal, params.id("orgId")?)?;
    let (orgs, next) = dir::orgs_page(&app.pool, org.as_deref(), &params.page()?).await?;
    let views: Vec<Value> = orgs.iter().map(dir::OrgView::admin_view).collect();
    Ok(Json(json!({ "orgs": views, "nextCursor": next })))
}

async fn get_org(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    guard::own_org(&admin.principal, &org_id)?;
    let org = dir::org(&app.pool, &org_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Organization \"{org_id}\" not found")))?;
    Ok(Json(org.admin_view()))
}

async fn create_org(
    State(app): State<AppState>,
    admin: Admin,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    guard::require_role(&admin.principal, Role::SuperAdmin)?;
    let raw = body_args(&body);
    let args = Args::new(&raw)?;
    let name = args.str("name", 1, 100)?;
    let slug = args.str("slug", 2, 63)?;
    if !slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(invalid("slug", "must match ^[a-z0-9-]{2,63}$"));
    }
    let settings = args.object("settings")?.cloned().map(Value::Object).unwrap_or_else(|| json!({}));
    let new = NewOrg { name: name.trim().into(), slug, settings, a2p_registered: args.bool("a2pRegistered", false)? };
    commands::create_org(&app, admin.context, new).await.map(Json)
}

async fn existing_org(app: &AppState, org_id: &str) -> Result<dir::OrgView, ApiError> {
    dir::org(&app.pool, org_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Organization \"{org_id}\" not found")))
}

async fn approve(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    super_admin(&admin)?;
    existing_org(&app, &org_id).await?;
    let raw = body_args(&body);
    let kyc_note = Args::new(&raw)?.str("kycNote", 3, 2000)?;
    let approved_by = admin.principal.actor_id.clone();
    let view = commands::org_lifecycle(
        &app,
        admin.context,
        &org_id,
        commguard_domain::organization::OrgAction::Approve { kyc_note, approved_by },
    )
    .await?;
    Ok(Json(commands::approved_view(&view)))
}

fn super_admin(admin: &Admin) -> Result<(), ApiError> {
    if admin.principal.role() == Role::SuperAdmin {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, "Super-admin access required"))
    }
}

async fn suspend(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    super_admin(&admin)?;
    existing_org(&app, &org_id).await?;
    let raw = body_args(&body);
    let reason = Args::new(&raw)?.opt_str("reason", 500)?.unwrap_or_default();
    let view = commands::org_lifecycle(
        &app,
        admin.context,
        &org_id,
        commguard_domain::organization::OrgAction::Suspend { reason },
    )
    .await?;
    Ok(Json(json!({ "success": true, "orgId": org_id, "mode": view.mode })))
}

async fn unsuspend(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    super_admin(&admin)?;
    existing_org(&app, &org_id).await?;
    let view =
        commands::org_lifecycle(&app, admin.context, &org_id, commguard_domain::organization::OrgAction::Unsuspend)
            .await?;
    Ok(Json(json!({ "success": true, "orgId": org_id, "mode": view.mode })))
}

/// A cap in dollars: absent = unchanged, `null` = cleared, else ≥ 0 with ≤ 6 decimals.
fn cap(raw: &Value, field: &str) -> Result<Option<Option<i64>>, ApiError> {
    match raw.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => {
            let micros = v.as_f64().filter(|d| *d >= 0.0).and_then(crate::money::from_dollars);
            micros.map(|m| Some(Some(m))).ok_or_else(|| invalid(field, "must be a number ≥ 0 with at most 6 decimals"))
        }
    }
}

async fn settings(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    guard::own_org(&admin.principal, &org_id)?;
    existing_org(&app, &org_id).await?;
    let raw = body_args(&body);
    let args = Args::new(&raw)?;
    let a2p = match raw.get("a2pRegistered") {
        None => None,
        Some(_) => Some(args.bool("a2pRegistered", false)?),
    };
    let max_agents = match raw.get("maxAgents") {
        None => None,
        Some(v) => Some(
            v.as_u64()
                .filter(|n| (1..=100_000).contains(n))
                .ok_or_else(|| invalid("maxAgents", "must be an integer ≥ 1"))? as u32,
        ),
    };
    // Org admins may set their own caps only; registration and capacity are the platform's.
    if admin.principal.role() != Role::SuperAdmin && (a2p.is_some() || max_agents.is_some()) {
        return Err(guard::require_role(&admin.principal, Role::SuperAdmin).unwrap_err());
    }
    let action =
        commands::settings_change(a2p, max_agents, cap(&raw, "maxSpendPerDay")?, cap(&raw, "maxSpendPerMonth")?);
    let view = commands::org_lifecycle(&app, admin.context, &org_id, action).await?;
    let mut out = view.admin_view();
    out["success"] = json!(true);
    // The org's spend as its caps count it: every agent's actions, reserved and settled.
    let (_, today, month) = crate::outbound::usage::counters(&app, "org", &org_id).await?;
    out["spendToday"] = json!(crate::money::to_dollars(today));
    out["spendMonth"] = json!(crate::money::to_dollars(month));
    Ok(Json(out))
}

async fn rotate_org_token(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    guard::own_org(&admin.principal, &org_id)?;
    existing_org(&app, &org_id).await?;
    let out = commands::rotate(&app, admin.context, RotateTarget::Org { org_id }, None).await?;
    Ok(Json(json!({ "success": true, "token": out["token"], "revokedCount": out["revokedCount"] })))
}

/// `GET /admin/api/agents?orgId&cursor&limit`: status, tier, limits and billing of each agent.
async fn list_agents(State(app): State<AppState>, admin: Admin, params: Params) -> Result<Json<Value>, ApiError> {
    let org = commands::read_scope(&admin.principal, params.id("orgId")?)?;
    let (agents, next) = dir::agents_page(&app.pool, org.as_deref(), &params.page()?).await?;
    let mut org_ids: Vec<String> = agents.iter().map(|a| a.org_id.clone()).collect();
    org_ids.sort();
    org_ids.dedup();
    let orgs = dir::orgs_by_id(&app.pool, &org_ids).await?;
    let views: Vec<Value> =
        agents.iter().map(|a| a.admin_view(&app.config, orgs.iter().find(|o| o.org_id == a.org_id))).collect();
    Ok(Json(json!({ "agents": views, "nextCursor": next })))
}

async fn get_agent(
    State(app): State<AppState>,
    admin: Admin,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let agent = commands::addressable_agent(&app, &admin.principal, &agent_id).await?;
    let org = dir::org(&app.pool, &agent.org_id).await?;
    Ok(Json(agent.admin_view(&app.config, org.as_ref())))
}

async fn agent_tokens(
    State(app): State<AppState>,
    admin: Admin,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    commands::addressable_agent(&app, &admin.principal, &agent_id).await?;
    type Row = (uuid::Uuid, Option<String>, chrono::DateTime<chrono::Utc>, Option<chrono::DateTime<chrono::Utc>>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT t.token_id, t.label, t.created_at, u.last_used_at FROM tokens t
         LEFT JOIN token_last_used u USING (token_id)
         WHERE t.kind = 'agent' AND t.agent_id = $1 AND t.revoked_at IS NULL ORDER BY t.created_at",
    )
    .bind(&agent_id)
    .fetch_all(&app.pool)
    .await
    .map_err(ApiError::internal)?;
    let tokens: Vec<Value> = rows
        .into_iter()
        .map(|(id, label, created, used)| json!({ "id": id, "label": label, "createdAt": rfc3339(created), "lastUsedAt": used.map(rfc3339) }))
        .collect();
    Ok(Json(json!({ "tokens": tokens })))
}

async fn regenerate_token(
    State(app): State<AppState>,
    admin: Admin,
    Path(agent_id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let agent = commands::addressable_agent(&app, &admin.principal, &agent_id).await?;
    let out =
        commands::rotate(&app, admin.context, RotateTarget::Agent { agent_id, org_id: agent.org_id }, None).await?;
    Ok(Json(json!({ "success": true, "token": out["token"], "revokedCount": out["revokedCount"] })))
}

async fn blocked_channels(
    State(app): State<AppState>,
    admin: Admin,
    Path(agent_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let agent = commands::addressable_agent(&app, &admin.principal, &agent_id).await?;
    let raw = body_args(&body);
    let channels: Vec<String> = match raw.get("blockedChannels") {
        Some(Value::Array(items)) => items.iter().filter_map(|v| v.as_str().map(str::to_string)).collect(),
        _ => return Err(invalid("blockedChannels", "must be an array")),
    };
    commands::block_channels(&app, admin.context, &agent_id, &agent.org_id, channels).await.map(Json)
}

async fn agent_limits(
    State(app): State<AppState>,
    admin: Admin,
    Path(agent_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    guard::require_role(&admin.principal, Role::SuperAdmin)?;
    let agent = commands::addressable_agent(&app, &admin.principal, &agent_id).await?;
    let raw = body_args(&body);
    let change = outbound_tools::limits_change(&Args::new(&raw)?)?;
    commands::set_limits(&app, admin.context, &agent_id, &agent.org_id, change).await.map(Json)
}

async fn agent_billing(
    State(app): State<AppState>,
    admin: Admin,
    Path(agent_id): Path<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    guard::require_role(&admin.principal, Role::SuperAdmin)?;
    let agent = commands::addressable_agent(&app, &admin.principal, &agent_id).await?;
    let raw = body_args(&body);
    let (tier, markup, email) = outbound_tools::billing_change(&Args::new(&raw)?)?;
    commands::set_billing(&app, admin.context, &agent_id, &agent.org_id, tier, markup, email).await.map(Json)
}

/// Registered providers: names only, never values (CONTRACT §11.5). O sees its own org's.
async fn list_providers(State(app): State<AppState>, admin: Admin) -> Result<Json<Value>, ApiError> {
    let org = match admin.principal.role() {
        Role::SuperAdmin => None,
        _ => admin.principal.org_id.clone(),
    };
    type Row = (String, String, String, Vec<String>, String, chrono::DateTime<chrono::Utc>);
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT scope, org_id, provider, array_agg(credential_key ORDER BY credential_key), max(key_version), max(updated_at)
         FROM provider_credentials WHERE $1::text IS NULL OR (scope = 'org' AND org_id = $1)
         GROUP BY scope, org_id, provider ORDER BY scope, org_id, provider",
    )
    .bind(org)
    .fetch_all(&app.pool)
    .await
    .map_err(ApiError::internal)?;
    let providers: Vec<Value> = rows
        .into_iter()
        .map(|(scope, org_id, provider, keys, version, updated)| {
            json!({"scope": scope, "orgId": (!org_id.is_empty()).then_some(org_id), "provider": provider,
                   "keyNames": keys, "keyVersion": version, "updatedAt": rfc3339(updated)})
        })
        .collect();
    Ok(Json(json!({ "providers": providers })))
}

async fn register_provider(
    State(app): State<AppState>,
    admin: Admin,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    guard::require_role(&admin.principal, Role::SuperAdmin)?;
    let raw = body_args(&body);
    outbound_tools::register(&app, admin.context, &Args::new(&raw)?).await.map(Json)
}

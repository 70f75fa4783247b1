//! The admin API, directory part (docs/admin-api.md): `/me`, organizations and their lifecycle,
//! agents, their tokens, blocked channels, limits and billing, and provider credentials. Org
//! tokens (O) see and change their own org; the master token (S) all. Mutations run the same
//! commands as the MCP tools.

use axum::extract::State;
use axum::Json;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};

use commguard_projections::directory::read;

use crate::auth::{guard, Role};
use crate::directory::commands::{self, NewOrg, RotateTarget};
use crate::directory::settings;
use crate::directory::{self as dir};
use crate::error::ApiError;
use crate::http::extract::{JsonBody, Path};
use crate::http::params::Params;
use crate::state::AppState;
use crate::store::rfc3339;
use crate::validate::{invalid, Args, MAX_STRING};

use super::admin::{Admin, ScopedAgent, SuperAdminOnly};
use super::openapi::{tool_result, ApiRouter, Body, Doc, Query, ToolResult, CURSOR, LIMIT, ORG};

/// The directory routes (assembled with the other admin routes in `admin_api`).
pub fn routes() -> ApiRouter {
    const PAGED: &[Query] = &[ORG, CURSOR, LIMIT];
    let doc = |who, summary, query, body| Doc { who, summary, query, body };
    ApiRouter::new()
        .get("/admin/api/me", me, doc("O S", "The caller's role and organization", &[], Body::None))
        .get("/admin/api/orgs", list_orgs, doc("O (own) S", "Organizations, a page at a time", PAGED, Body::None))
        .post(
            "/admin/api/orgs",
            create_org,
            doc(
                "S",
                "Create an organization (= comms_create_organization)",
                &[],
                Body::Tool("comms_create_organization"),
            ),
        )
        .get("/admin/api/orgs/{orgId}", get_org, doc("O (own) S", "One organization", &[], Body::None))
        .post(
            "/admin/api/orgs/{orgId}/approve",
            approve,
            doc("S", "Approve into production", &[], Body::Schema(|| text_body(&[("kycNote", true, 2000)]))),
        )
        .post(
            "/admin/api/orgs/{orgId}/suspend",
            suspend,
            doc("S", "Suspend; closes the org's sessions", &[], Body::Schema(|| text_body(&[("reason", false, 500)]))),
        )
        .post("/admin/api/orgs/{orgId}/unsuspend", unsuspend, doc("S", "Restore the previous mode", &[], Body::None))
        .post(
            "/admin/api/orgs/{orgId}/settings",
            settings,
            doc("S; O own caps", "Registration, capacity and spend caps", &[], Body::Schema(settings_body)),
        )
        .post(
            "/admin/api/orgs/{orgId}/rotate-token",
            rotate_org_token,
            doc(
                "O (own) S",
                "Rotate the org's admin token (= comms_rotate_token with orgId)",
                &[],
                Body::Schema(|| text_body(&[("label", false, 100)])),
            ),
        )
        .get(
            "/admin/api/agents",
            list_agents,
            doc("O S", "Agents with status, tier, limits and billing, a page at a time", PAGED, Body::None),
        )
        .get(
            "/admin/api/agents/{agentId}",
            get_agent,
            doc("O S", "One agent: status, tier, limits and billing", &[], Body::None),
        )
        .get(
            "/admin/api/agents/{agentId}/tokens",
            agent_tokens,
            doc("O S", "The agent's active tokens (no hashes)", &[], Body::None),
        )
        .post(
            "/admin/api/agents/{agentId}/regenerate-token",
            regenerate_token,
            doc(
                "O S",
                "Rotate the agent's token (= comms_rotate_token)",
                &[],
                Body::Schema(|| text_body(&[("label", false, 100)])),
            ),
        )
        .post(
            "/admin/api/agents/{agentId}/blocked-channels",
            blocked_channels,
            doc(
                "O S",
                "Block channels: names deduplicated, unknown names dropped, any `*` blocks all, `[]` unblocks; an item that is not a string of at most 10,000 characters is refused",
                &[],
                Body::Schema(blocked_channels_body),
            ),
        )
        .post(
            "/admin/api/agents/{agentId}/limits",
            agent_limits,
            doc("S", "= comms_set_agent_limits", &[], Body::Tool("comms_set_agent_limits")),
        )
        .post(
            "/admin/api/agents/{agentId}/billing",
            agent_billing,
            doc("S", "= comms_set_billing_config", &[], Body::Tool("comms_set_billing_config")),
        )
        .get(
            "/admin/api/providers",
            list_providers,
            doc("O (own, names only) S", "Registered provider credentials, names only", PAGED, Body::None),
        )
        .post(
            "/admin/api/providers",
            register_provider,
            doc("S", "= comms_register_provider", &[], Body::Tool("comms_register_provider")),
        )
}

/// A body of string fields: (name, required, max length).
fn text_body(fields: &[(&str, bool, usize)]) -> Value {
    let properties: serde_json::Map<String, Value> =
        fields.iter().map(|(name, _, max)| (name.to_string(), json!({"type": "string", "maxLength": max}))).collect();
    let required: Vec<&str> = fields.iter().filter(|(_, r, _)| *r).map(|(n, _, _)| *n).collect();
    json!({"type": "object", "properties": properties, "required": required})
}

fn settings_body() -> Value {
    json!({"type": "object", "properties": {
        "a2pRegistered": {"type": "boolean"},
        "maxAgents": {"type": "integer", "minimum": 0},
        "maxSpendPerDay": {"type": ["number", "null"], "minimum": 0},
        "maxSpendPerMonth": {"type": ["number", "null"], "minimum": 0},
    }})
}

fn blocked_channels_body() -> Value {
    json!({"type": "object", "required": ["blockedChannels"], "properties": {
        "blockedChannels": {"type": "array", "items": {"type": "string", "maxLength": MAX_STRING}},
    }})
}

/// `GET /admin/api/me`.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Me {
    role: &'static str,
    org_id: Option<String>,
    org: Option<MeOrg>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct MeOrg {
    id: String,
    name: String,
    mode: String,
    a2p_registered: bool,
}

/// A page of organizations.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct OrgPage {
    orgs: Vec<dir::OrgAdminView>,
    next_cursor: Option<String>,
}

/// A page of agents.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct AgentPage {
    agents: Vec<dir::AgentAdminView>,
    next_cursor: Option<String>,
}

/// An org's mode after approval (with `approvedAt`), suspension or unsuspension.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct OrgMode {
    success: bool,
    org_id: String,
    mode: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    approved_at: Option<String>,
}

/// The org after a settings change, with its spend as its caps count it.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct OrgSettings {
    success: bool,
    #[serde(flatten)]
    org: dir::OrgAdminView,
    /// Dollars, every agent's actions of the UTC day, reserved and settled.
    spend_today: f64,
    spend_month: f64,
}

/// A new token (shown once) and how many were revoked for it.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct NewToken {
    success: bool,
    token: String,
    revoked_count: i64,
}

impl NewToken {
    fn of(out: &Value) -> Result<Self, ApiError> {
        let token = out["token"].as_str().ok_or_else(|| ApiError::internal("rotation gave no token"))?;
        Ok(Self { success: true, token: token.into(), revoked_count: out["revokedCount"].as_i64().unwrap_or(0) })
    }
}

/// An agent's active tokens, never their hashes.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Tokens {
    tokens: Vec<TokenInfo>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct TokenInfo {
    id: uuid::Uuid,
    label: Option<String>,
    created_at: String,
    last_used_at: Option<String>,
}

/// Registered provider credentials: names, never values.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct Providers {
    providers: Vec<ProviderInfo>,
    next_cursor: Option<String>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct ProviderInfo {
    scope: String,
    org_id: Option<String>,
    provider: String,
    key_names: Vec<String>,
    key_version: String,
    updated_at: String,
}

async fn me(State(app): State<AppState>, admin: Admin) -> Result<Json<Me>, ApiError> {
    let org = match &admin.principal.org_id {
        Some(id) => dir::org(&app.pool, id).await?,
        None => None,
    };
    Ok(Json(Me {
        role: admin.principal.role().as_str(),
        org_id: admin.principal.org_id.clone(),
        org: org.map(|o| MeOrg {
            id: o.org_id,
            name: o.name,
            mode: o.mode.as_str().into(),
            a2p_registered: o.a2p_registered,
        }),
    }))
}

/// `GET /admin/api/orgs?orgId&cursor&limit`.
async fn list_orgs(State(app): State<AppState>, admin: Admin, params: Params) -> Result<Json<OrgPage>, ApiError> {
    let org = commands::read_scope(&app, &admin.principal, params.id("orgId")?).await?;
    let (orgs, next) = dir::orgs_page(&app.pool, org.as_deref(), &params.page()?).await?;
    Ok(Json(OrgPage { orgs: orgs.iter().map(dir::org_admin_view).collect(), next_cursor: next }))
}

async fn get_org(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
) -> Result<Json<dir::OrgAdminView>, ApiError> {
    guard::own_org(&admin.principal, &org_id)?;
    let org = dir::existing_org(&app.pool, &org_id).await?;
    Ok(Json(dir::org_admin_view(&org)))
}

async fn create_org(
    State(app): State<AppState>,
    admin: Admin,
    JsonBody(raw): JsonBody,
) -> Result<Json<ToolResult>, ApiError> {
    guard::require_role(&admin.principal, Role::SuperAdmin)?;
    let args = Args::new(&raw)?;
    let name = args.str("name", 1, 100)?;
    let slug = args.str("slug", 2, 63)?;
    if !slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-') {
        return Err(invalid("slug", "must match ^[a-z0-9-]{2,63}$"));
    }
    let settings = args.free_object("settings")?;
    let new = NewOrg { name: name.trim().into(), slug, settings, a2p_registered: args.bool("a2pRegistered", false)? };
    commands::create_org(&app, admin.context, new).await.map(tool_result)
}

async fn existing_org(app: &AppState, org_id: &str) -> Result<dir::OrgView, ApiError> {
    dir::existing_org(&app.pool, org_id).await
}

async fn approve(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
    JsonBody(raw): JsonBody,
) -> Result<Json<OrgMode>, ApiError> {
    super_admin(&admin)?;
    existing_org(&app, &org_id).await?;
    let kyc_note = Args::new(&raw)?.str("kycNote", 3, 2000)?;
    let approved_by = admin.principal.actor_id.clone();
    let view = commands::org_lifecycle(
        &app,
        admin.context,
        &org_id,
        commguard_domain::organization::OrgAction::Approve { kyc_note, approved_by },
    )
    .await?;
    Ok(Json(OrgMode {
        success: true,
        org_id,
        mode: view.mode.as_str().into(),
        approved_at: Some(rfc3339(view.updated_at)),
    }))
}

/// Approval, suspension and unsuspension are S-only global configuration (Z7): Z4's refusal.
fn super_admin(admin: &Admin) -> Result<(), ApiError> {
    guard::require_role(&admin.principal, Role::SuperAdmin)
}

async fn suspend(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
    JsonBody(raw): JsonBody,
) -> Result<Json<OrgMode>, ApiError> {
    super_admin(&admin)?;
    existing_org(&app, &org_id).await?;
    let reason = Args::new(&raw)?.opt_str("reason", 500)?.unwrap_or_default();
    let view = commands::org_lifecycle(
        &app,
        admin.context,
        &org_id,
        commguard_domain::organization::OrgAction::Suspend { reason },
    )
    .await?;
    Ok(Json(OrgMode { success: true, org_id, mode: view.mode.as_str().into(), approved_at: None }))
}

async fn unsuspend(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
) -> Result<Json<OrgMode>, ApiError> {
    super_admin(&admin)?;
    existing_org(&app, &org_id).await?;
    let view =
        commands::org_lifecycle(&app, admin.context, &org_id, commguard_domain::organization::OrgAction::Unsuspend)
            .await?;
    Ok(Json(OrgMode { success: true, org_id, mode: view.mode.as_str().into(), approved_at: None }))
}

/// A cap in dollars: absent = unchanged, `null` = cleared, else ≥ 0 with ≤ 6 decimals.
fn cap(raw: &Value, field: &str) -> Result<Option<Option<i64>>, ApiError> {
    match raw.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) => crate::validate::money(field, v).map(|m| Some(Some(m))),
    }
}

async fn settings(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
    JsonBody(raw): JsonBody,
) -> Result<Json<OrgSettings>, ApiError> {
    guard::own_org(&admin.principal, &org_id)?;
    existing_org(&app, &org_id).await?;
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
    // The org's spend as its caps count it: every agent's actions, reserved and settled.
    let (_, today, month) = crate::outbound::usage::counters(&app, "org", &org_id).await?;
    Ok(Json(OrgSettings {
        success: true,
        org: dir::org_admin_view(&view),
        spend_today: crate::money::to_dollars(today),
        spend_month: crate::money::to_dollars(month),
    }))
}

async fn rotate_org_token(
    State(app): State<AppState>,
    admin: Admin,
    Path(org_id): Path<String>,
    JsonBody(raw): JsonBody,
) -> Result<Json<NewToken>, ApiError> {
    guard::own_org(&admin.principal, &org_id)?;
    let label = Args::new(&raw)?.opt_str("label", 100)?;
    existing_org(&app, &org_id).await?;
    let out = commands::rotate(&app, admin.context, RotateTarget::Org { org_id }, label).await?;
    NewToken::of(&out).map(Json)
}

/// `GET /admin/api/agents?orgId&cursor&limit`: status, tier, limits and billing of each agent.
async fn list_agents(State(app): State<AppState>, admin: Admin, params: Params) -> Result<Json<AgentPage>, ApiError> {
    let org = commands::read_scope(&app, &admin.principal, params.id("orgId")?).await?;
    let (agents, next) = dir::agents_page(&app.pool, org.as_deref(), &params.page()?).await?;
    let mut org_ids: Vec<String> = agents.iter().map(|a| a.org_id.clone()).collect();
    org_ids.sort();
    org_ids.dedup();
    let orgs = dir::orgs_by_id(&app.pool, &org_ids).await?;
    let views = agents
        .iter()
        .map(|a| dir::agent_admin_view(a, &app.config, orgs.iter().find(|o| o.org_id == a.org_id)))
        .collect();
    Ok(Json(AgentPage { agents: views, next_cursor: next }))
}

async fn get_agent(
    State(app): State<AppState>,
    ScopedAgent { agent, .. }: ScopedAgent,
) -> Result<Json<dir::AgentAdminView>, ApiError> {
    let org = dir::org(&app.pool, &agent.org_id).await?;
    Ok(Json(dir::agent_admin_view(&agent, &app.config, org.as_ref())))
}

async fn agent_tokens(
    State(app): State<AppState>,
    ScopedAgent { agent, .. }: ScopedAgent,
) -> Result<Json<Tokens>, ApiError> {
    let rows = read::agent_tokens(&app.pool, &agent.agent_id).await.map_err(ApiError::internal)?;
    let tokens = rows
        .into_iter()
        .map(|t| TokenInfo {
            id: t.token_id,
            label: t.label,
            created_at: rfc3339(t.created_at),
            last_used_at: t.last_used_at.map(rfc3339),
        })
        .collect();
    Ok(Json(Tokens { tokens }))
}

/// `= comms_rotate_token` for one agent, with its optional `label`.
async fn regenerate_token(
    State(app): State<AppState>,
    ScopedAgent { admin, agent, .. }: ScopedAgent,
    JsonBody(raw): JsonBody,
) -> Result<Json<NewToken>, ApiError> {
    let label = Args::new(&raw)?.opt_str("label", 100)?;
    let target = RotateTarget::Agent { agent_id: agent.agent_id, org_id: agent.org_id };
    let out = commands::rotate(&app, admin.context, target, label).await?;
    NewToken::of(&out).map(Json)
}

async fn blocked_channels(
    State(app): State<AppState>,
    ScopedAgent { admin, agent, .. }: ScopedAgent,
    JsonBody(raw): JsonBody,
) -> Result<Json<ToolResult>, ApiError> {
    // Unknown channel names are dropped (docs/admin-api.md); an item that is no name at all is bad
    // input, refused before anything changes.
    let channels: Vec<String> = match raw.get("blockedChannels") {
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, item)| match item.as_str() {
                Some(name) if name.chars().count() <= MAX_STRING => Ok(name.to_string()),
                Some(_) => {
                    Err(invalid(&format!("blockedChannels[{i}]"), format!("must be at most {MAX_STRING} characters")))
                }
                None => Err(invalid(&format!("blockedChannels[{i}]"), "must be a string")),
            })
            .collect::<Result<_, _>>()?,
        _ => return Err(invalid("blockedChannels", "must be an array")),
    };
    commands::block_channels(&app, admin.context, &agent.agent_id, &agent.org_id, channels).await.map(tool_result)
}

async fn agent_limits(
    State(app): State<AppState>,
    ScopedAgent { admin, agent, .. }: ScopedAgent<SuperAdminOnly>,
    JsonBody(raw): JsonBody,
) -> Result<Json<ToolResult>, ApiError> {
    let change = settings::limits_change(&Args::new(&raw)?)?;
    commands::set_limits(&app, admin.context, &agent.agent_id, &agent.org_id, change).await.map(tool_result)
}

async fn agent_billing(
    State(app): State<AppState>,
    ScopedAgent { admin, agent, .. }: ScopedAgent<SuperAdminOnly>,
    JsonBody(raw): JsonBody,
) -> Result<Json<ToolResult>, ApiError> {
    let (tier, markup, email) = settings::billing_change(&Args::new(&raw)?)?;
    commands::set_billing(&app, admin.context, &agent.agent_id, &agent.org_id, tier, markup, email)
        .await
        .map(tool_result)
}

/// Registered providers: names only, never values (docs/privacy.md#provider-credentials). O sees its own org's.
async fn list_providers(
    State(app): State<AppState>,
    admin: Admin,
    params: Params,
) -> Result<Json<Providers>, ApiError> {
    let page = params.page::<(String, String, String)>()?;
    // O: its own org's (another `orgId` is refused); S: every scope, or one org's with `orgId`.
    let org = commands::read_scope(&app, &admin.principal, params.id("orgId")?).await?;
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
    // A handful of rows (two providers per scope at most): paged in memory, by their key.
    let (rows, next_cursor) = page.of(rows, |r| (r.0.clone(), r.1.clone(), r.2.clone()));
    let providers = rows
        .into_iter()
        .map(|(scope, org_id, provider, key_names, key_version, updated)| ProviderInfo {
            scope,
            org_id: (!org_id.is_empty()).then_some(org_id),
            provider,
            key_names,
            key_version,
            updated_at: rfc3339(updated),
        })
        .collect();
    Ok(Json(Providers { providers, next_cursor }))
}

async fn register_provider(
    State(app): State<AppState>,
    admin: Admin,
    JsonBody(raw): JsonBody,
) -> Result<Json<ToolResult>, ApiError> {
    guard::require_role(&admin.principal, Role::SuperAdmin)?;
    settings::register_provider(&app, admin.context, &Args::new(&raw)?).await.map(tool_result)
}

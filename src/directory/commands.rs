//! Commands on organizations and agents. Each one: checks what spans aggregates (slug uniqueness,
//! org capacity) under a transaction-scoped advisory lock so instances serialize on it, lets the
//! aggregate decide, waits until the directory projections show the result (a token issued here
//! works on the very next request, a revoked one fails), and answers with the contract payload.

use commguard_domain::agent::{AgentAction, AgentCommand, Capabilities, IssuedVia, Provisioning};
use commguard_domain::countries::provisioning_check;
use commguard_domain::limits::{OverridesChange, Tier};
use commguard_domain::organization::{OrgAction, OrganizationCommand, SettingsChange};
use commguard_domain::refusal::Rule;
use commguard_domain::values::{IssuedToken, OrgMode};
use cqrs_es::AggregateError;
use serde_json::{json, Value};
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use commguard_projections::directory::read::{self, TokenOwner};

use super::{agent, org, OrgView};
use crate::auth::{guard, Principal, Role};
use crate::crypto::tokens::{random_token, sha256_hex};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store::{rfc3339, CommandContext};

/// The org that always exists (docs/security.md#organizations).
pub const DEFAULT_ORG: &str = "default";

/// A token to hand out once, and what the store keeps of it.
fn new_token(label: Option<String>) -> (String, IssuedToken) {
    let token = random_token();
    let issued = IssuedToken { token_id: Uuid::new_v4(), token_hash: sha256_hex(&token), label };
    (token, issued)
}

/// A transaction holding advisory lock `key` until it ends (dropped → rolled back → released).
async fn lock(app: &AppState, key: &str) -> Result<Transaction<'static, Postgres>, ApiError> {
    let mut tx = app.pool.begin().await.map_err(ApiError::internal)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
    Ok(tx)
}

/// Waits until every directory projection has applied `position`.
async fn settle(app: &AppState, position: Option<i64>) -> Result<(), ApiError> {
    settle_on(app, position, &["orgs", "agents", "tokens"]).await
}

async fn settle_on(app: &AppState, position: Option<i64>, projections: &[&str]) -> Result<(), ApiError> {
    if let Some(position) = position {
        for projection in projections.iter().copied() {
            app.store.await_projection(projection, position).await.map_err(ApiError::internal)?;
        }
    }
    Ok(())
}

/// Creates `default` if it does not exist yet (every start; idempotent).
pub async fn ensure_default_org(app: &AppState) -> Result<(), ApiError> {
    if org(&app.pool, DEFAULT_ORG).await?.is_some() {
        return Ok(());
    }
    let (_, token) = new_token(Some("default".into()));
    let command = OrganizationCommand {
        org_id: DEFAULT_ORG.into(),
        action: OrgAction::Create {
            name: "Default".into(),
            slug: "default".into(),
            settings: json!({}),
            a2p_registered: false,
            max_agents: app.config.org_default_max_agents,
            token,
        },
    };
    let context =
        CommandContext::new(crate::store::Actor::system("startup"), "system", app.clock.now()).in_org(DEFAULT_ORG);
    match app.store.execute(&app.orgs, DEFAULT_ORG, command, &context).await {
        Ok(position) => settle(app, position).await,
        Err(AggregateError::UserError(_)) => Ok(()),
        Err(e) => Err(ApiError::internal(e)),
    }
}

pub struct NewOrg {
    pub name: String,
    pub slug: String,
    pub settings: Value,
    pub a2p_registered: bool,
}

/// `comms_create_organization` / `POST /admin/api/orgs`.
pub async fn create_org(app: &AppState, mut context: CommandContext, new: NewOrg) -> Result<Value, ApiError> {
    let tx = lock(app, &format!("commguard.slug.{}", new.slug)).await?;
    let taken = read::slug_taken(&app.pool, &new.slug).await.map_err(ApiError::internal)?;
    if taken {
        return Err(ApiError::new(ErrorCode::Conflict, format!("Organization slug \"{}\" already exists", new.slug)));
    }
    context.provenance.pass("duplicate");
    let org_id = Uuid::new_v4().to_string();
    let (token, issued) = new_token(Some("admin".into()));
    let command = OrganizationCommand {
        org_id: org_id.clone(),
        action: OrgAction::Create {
            name: new.name.clone(),
            slug: new.slug.clone(),
            settings: new.settings,
            a2p_registered: new.a2p_registered,
            max_agents: app.config.org_default_max_agents,
            token: issued,
        },
    };
    let position = app
        .store
        .execute(&app.orgs, &org_id, command, &context.in_org(org_id.clone()))
        .await
        .map_err(ApiError::aggregate)?;
    settle(app, position).await?;
    drop(tx);
    Ok(json!({
        "success": true,
        "orgId": org_id,
        "name": new.name,
        "slug": new.slug,
        "mode": "sandbox",
        "adminToken": token,
        "message": "Organization created in sandbox mode. Store the admin token now: it is shown only once.",
    }))
}

pub struct NewAgent {
    pub agent_id: Option<String>,
    pub org_id: String,
    pub display_name: String,
    pub greeting: Option<String>,
    pub system_prompt: Option<String>,
    pub country: String,
    pub capabilities: Capabilities,
    pub email_domain: Option<String>,
    pub agent_gender: String,
}

fn compliance(message: impl Into<String>, rule: Rule) -> ApiError {
    ApiError::new(ErrorCode::ComplianceBlocked, format!("Compliance: {}", message.into())).under(rule)
}

/// An org that exists and may act (Z6), for provisioning and outbound paths.
pub async fn active_org(app: &AppState, org_id: &str) -> Result<OrgView, ApiError> {
    let found = org(&app.pool, org_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Organization \"{org_id}\" not found")))?;
    if found.mode == OrgMode::Suspended {
        return Err(compliance(format!("Organization \"{org_id}\" is suspended"), Rule::Sandbox));
    }
    Ok(found)
}

/// `comms_provision_channels`: org state, country rules, duplicate, capacity, provider, record.
pub async fn provision(app: &AppState, mut context: CommandContext, new: NewAgent) -> Result<Value, ApiError> {
    let org_view = active_org(app, &new.org_id).await?;
    context.provenance.pass("org_state");
    let check = provisioning_check(&new.country, new.capabilities.phone, org_view.a2p_registered);
    if !check.blockers.is_empty() {
        return Err(compliance("Country compliance requirements not met", Rule::CountryRules)
            .with("blockers", check.blockers)
            .with("warnings", check.warnings));
    }
    context.provenance.pass("country_rules");
    let agent_id = new.agent_id.clone().unwrap_or_else(|| Uuid::new_v4().to_string());

    // Capacity is exact across instances: provisioning in one org is serialized, and the count
    // it reads includes every agent provisioned before (each waits for the projection).
    let mut tx = lock(app, &format!("commguard.org.{}", new.org_id)).await?;
    if agent(&mut *tx, &agent_id).await?.is_some() {
        return Err(ApiError::new(ErrorCode::Conflict, format!("Agent \"{agent_id}\" already exists")));
    }
    let locked_org = org(&mut *tx, &new.org_id).await?.unwrap_or(org_view);
    let (active, max) = (locked_org.agent_count, i64::from(locked_org.max_agents));
    if active >= max {
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!("Agent pool is full ({active}/{max}). Deprovision an agent first."),
        )
        .with("current", active)
        .with("max", max));
    }
    context.provenance.pass("duplicate");
    context.provenance.pass("capacity");

    let sandbox = app.config.demo_mode || locked_org.mode == OrgMode::Sandbox;
    let (phone, provider_refs) = if sandbox {
        (
            new.capabilities.phone.then(|| format!("+1555{:07}", rand::random::<u32>() % 10_000_000)),
            json!({"provider": "mock"}),
        )
    } else {
        real_channels(app, &new, &agent_id).await?
    };
    context.provenance.pass("provider");
    let email_domain = new.email_domain.clone().unwrap_or_else(|| app.config.email_default_domain.clone());
    let email = new.capabilities.email.then(|| format!("{agent_id}@{email_domain}").to_lowercase());
    let channels = json!({
        "phone": phone,
        "whatsapp": if new.capabilities.whatsapp { Value::from("unavailable") } else { Value::Null },
        "email": email,
        "voiceAi": new.capabilities.voice_ai,
    });
    let mode = if locked_org.mode == OrgMode::Production { OrgMode::Production } else { OrgMode::Sandbox };
    let (token, issued) = new_token(Some("provision".into()));
    let command = AgentCommand {
        agent_id: agent_id.clone(),
        action: AgentAction::Provision(Box::new(Provisioning {
            org_id: new.org_id.clone(),
            display_name: new.display_name.clone(),
            agent_gender: new.agent_gender.clone(),
            country: new.country.to_uppercase(),
            capabilities: new.capabilities.clone(),
            channels: channels.clone(),
            greeting: new.greeting,
            system_prompt: new.system_prompt,
            provider_refs,
            mode,
            token: issued,
        })),
    };
    let position = app
        .store
        .execute(&app.agents, &agent_id, command, &context.in_org(new.org_id.clone()))
        .await
        .map_err(ApiError::aggregate)?;
    settle(app, position).await?;
    sqlx::query("SELECT 1").execute(&mut *tx).await.map_err(ApiError::internal)?;
    drop(tx);
    Ok(json!({
        "success": true,
        "agentId": agent_id,
        "orgId": new.org_id,
        "displayName": new.display_name,
        "agentGender": new.agent_gender,
        "securityToken": token,
        "channels": channels,
        "mode": mode.as_str(),
        "sandbox": sandbox,
        "pool": { "slotsRemaining": (max - active - 1).max(0) },
        "warnings": check.warnings,
    }))
}

/// Active token ids of an agent or org, as the tokens projection has them.
async fn active_tokens(app: &AppState, owner: TokenOwner<'_>) -> Result<Vec<Uuid>, ApiError> {
    read::active_token_ids(&app.pool, owner).await.map_err(ApiError::internal)
}

/// An existing agent the caller may address (Z1, Z2).
pub async fn addressable_agent(
    app: &AppState,
    principal: &Principal,
    agent_id: &str,
) -> Result<super::AgentView, ApiError> {
    guard::own_agent(principal, agent_id)?;
    let found = agent(&app.pool, agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Agent \"{agent_id}\" not found")))?;
    guard::agent_in_org(principal, agent_id, &found.org_id)?;
    Ok(found)
}

/// `comms_deprovision_channels`: revokes its tokens and closes its sessions.
pub async fn deprovision(
    app: &AppState,
    context: CommandContext,
    agent_id: &str,
    release_number: bool,
) -> Result<Value, ApiError> {
    let found = agent(&app.pool, agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Agent \"{agent_id}\" not found")))?;
    let tokens = active_tokens(app, TokenOwner::Agent(agent_id)).await?;
    let (number_released, warnings) = release(app, &found, release_number).await?;
    let command = AgentCommand {
        agent_id: agent_id.into(),
        action: AgentAction::Deprovision { number_released, warnings: warnings.clone() },
    };
    let position = app
        .store
        .execute(&app.agents, agent_id, command, &context.in_org(found.org_id.clone()))
        .await
        .map_err(ApiError::aggregate)?;
    settle(app, position).await?;
    app.identity.forget_tokens(&tokens);
    app.sessions.close_agent(agent_id, "agent_deprovisioned").await;
    Ok(json!({
        "success": true,
        "agentId": agent_id,
        "status": "deprovisioned",
        "numberReleased": number_released,
        "tokensRevoked": tokens.len(),
        "warnings": warnings,
    }))
}

/// Whose token to rotate.
pub enum RotateTarget {
    Agent { agent_id: String, org_id: String },
    Org { org_id: String },
}

/// `comms_rotate_token` and the admin rotate routes. Sessions of the revoked tokens are closed
/// shortly after, so the caller's reply is delivered first (docs/tools.md#catalogue).
pub async fn rotate(
    app: &AppState,
    context: CommandContext,
    target: RotateTarget,
    label: Option<String>,
) -> Result<Value, ApiError> {
    let label = label.or_else(|| Some("rotate".into()));
    issue_token(app, context, target, label, true, IssuedVia::Rotate).await
}

/// Issues a token to an agent or org, revoking its active ones first if `revoke_existing`
/// (rotation; `commguard token issue --revoke-existing`), and waits until the directory
/// projections show it: the token works on the next request to any instance.
pub async fn issue_token(
    app: &AppState,
    context: CommandContext,
    target: RotateTarget,
    label: Option<String>,
    revoke_existing: bool,
    issued_via: IssuedVia,
) -> Result<Value, ApiError> {
    let (kind, id, org_id) = match &target {
        RotateTarget::Agent { agent_id, org_id } => ("agent", agent_id.clone(), org_id.clone()),
        RotateTarget::Org { org_id } => ("org", org_id.clone(), org_id.clone()),
    };
    let owner = if kind == "agent" { TokenOwner::Agent(&id) } else { TokenOwner::Org(&id) };
    let revoked = if revoke_existing { active_tokens(app, owner).await? } else { Vec::new() };
    let (token, issued) = new_token(label);
    let token_id = issued.token_id;
    let context = context.in_org(org_id);
    let position = match target {
        RotateTarget::Agent { agent_id, .. } => {
            let action = if revoke_existing {
                AgentAction::RotateToken { token: issued, issued_via, reason: "rotated".into() }
            } else {
                AgentAction::IssueToken { token: issued, issued_via }
            };
            app.store
                .execute(&app.agents, &agent_id, AgentCommand { agent_id: agent_id.clone(), action }, &context)
                .await
                .map_err(ApiError::aggregate)?
        }
        RotateTarget::Org { org_id } => {
            let action = if revoke_existing {
                OrgAction::RotateToken { token: issued, reason: "rotated".into() }
            } else {
                OrgAction::IssueToken { token: issued }
            };
            app.store
                .execute(&app.orgs, &org_id, OrganizationCommand { org_id: org_id.clone(), action }, &context)
                .await
                .map_err(ApiError::aggregate)?
        }
    };
    settle(app, position).await?;
    if !revoked.is_empty() {
        app.identity.forget_tokens(&revoked);
        let (sessions, closing) = (app.sessions.clone(), revoked.clone());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            sessions.close_tokens(&closing, "token_revoked").await;
        });
    }
    Ok(json!({
        "success": true,
        "token": token,
        "tokenId": token_id,
        "revokedCount": revoked.len(),
        "target": { "kind": kind, "id": id },
    }))
}

/// Approve, suspend, unsuspend or change settings of an org (S; settings caps also O own).
pub async fn org_lifecycle(
    app: &AppState,
    context: CommandContext,
    org_id: &str,
    action: OrgAction,
) -> Result<OrgView, ApiError> {
    let suspending = matches!(action, OrgAction::Suspend { .. });
    let position = app
        .store
        .execute(&app.orgs, org_id, OrganizationCommand { org_id: org_id.into(), action }, &context.in_org(org_id))
        .await
        .map_err(ApiError::aggregate)?;
    settle(app, position).await?;
    app.identity.forget_org(org_id);
    if suspending {
        app.sessions.close_org(org_id, "org_suspended").await;
    }
    org(&app.pool, org_id).await?.ok_or_else(|| ApiError::not_found(format!("Organization \"{org_id}\" not found")))
}

pub fn settings_change(
    a2p: Option<bool>,
    max_agents: Option<u32>,
    day: Option<Option<i64>>,
    month: Option<Option<i64>>,
) -> OrgAction {
    OrgAction::ChangeSettings(SettingsChange {
        a2p_registered: a2p,
        max_agents,
        max_spend_per_day: day,
        max_spend_per_month: month,
    })
}

/// `POST /admin/api/agents/:agentId/blocked-channels`.
pub async fn block_channels(
    app: &AppState,
    context: CommandContext,
    agent_id: &str,
    org_id: &str,
    channels: Vec<String>,
) -> Result<Value, ApiError> {
    let command = AgentCommand { agent_id: agent_id.into(), action: AgentAction::BlockChannels { channels } };
    let position = app
        .store
        .execute(&app.agents, agent_id, command, &context.in_org(org_id))
        .await
        .map_err(ApiError::aggregate)?;
    settle(app, position).await?;
    let found = agent(&app.pool, agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Agent \"{agent_id}\" not found")))?;
    Ok(json!({ "success": true, "agentId": agent_id, "blockedChannels": found.blocked_channels.0 }))
}

/// The org a caller acts in when it names none: its own, or `default` for the super-admin.
pub fn home_org(principal: &Principal, requested: Option<String>) -> Result<String, ApiError> {
    match (principal.role(), requested) {
        (Role::SuperAdmin, Some(org)) => Ok(org),
        (Role::SuperAdmin, None) => Ok(principal.org_id.clone().unwrap_or_else(|| DEFAULT_ORG.into())),
        (_, Some(org)) => {
            guard::own_org(principal, &org)?;
            Ok(org)
        }
        (_, None) => principal.org_id.clone().ok_or_else(|| ApiError::new(ErrorCode::Forbidden, "No organization")),
    }
}

/// The org a read covers: O its own (Z5 for another it names); S the one it names, or every org
/// (`None`).
pub fn read_scope(principal: &Principal, requested: Option<String>) -> Result<Option<String>, ApiError> {
    match principal.role() {
        Role::SuperAdmin => Ok(requested),
        _ => home_org(principal, requested).map(Some),
    }
}

pub fn approved_view(view: &OrgView) -> Value {
    json!({ "success": true, "orgId": view.org_id, "mode": view.mode.as_str(), "approvedAt": rfc3339(view.updated_at) })
}

/// Runs a limits or billing command and answers with the agent as the limits projection now has it.
async fn change_agent_limits(
    app: &AppState,
    context: CommandContext,
    agent_id: &str,
    org_id: &str,
    action: AgentAction,
) -> Result<super::AgentView, ApiError> {
    let position = app
        .store
        .execute(&app.agents, agent_id, AgentCommand { agent_id: agent_id.into(), action }, &context.in_org(org_id))
        .await
        .map_err(ApiError::aggregate)?;
    settle_on(app, position, &["limits"]).await?;
    agent(&app.pool, agent_id).await?.ok_or_else(|| ApiError::not_found(format!("Agent \"{agent_id}\" not found")))
}

/// `comms_set_agent_limits` (S): overrides change, effective limits follow (docs/limits.md#tiers).
pub async fn set_limits(
    app: &AppState,
    context: CommandContext,
    agent_id: &str,
    org_id: &str,
    change: OverridesChange,
) -> Result<Value, ApiError> {
    let action = AgentAction::SetLimits { change, starter: super::starter(&app.config) };
    let view = change_agent_limits(app, context, agent_id, org_id, action).await?;
    Ok(json!({
        "success": true,
        "agentId": agent_id,
        "currentLimits": super::limits_json(super::effective_limits(&view, &app.config)),
        "overrides": super::overrides_json(view.overrides),
        "tier": view.tier.as_str(),
    }))
}

/// `comms_set_billing_config` (S): tier, markup, billing address.
pub async fn set_billing(
    app: &AppState,
    context: CommandContext,
    agent_id: &str,
    org_id: &str,
    tier: Option<Tier>,
    markup_percent: Option<Option<f64>>,
    billing_email: Option<Option<String>>,
) -> Result<Value, ApiError> {
    let starter = super::starter(&app.config);
    let action = AgentAction::SetBilling { tier, markup_percent, billing_email: billing_email.clone(), starter };
    let view = change_agent_limits(app, context, agent_id, org_id, action).await?;
    Ok(json!({
        "success": true,
        "agentId": agent_id,
        "billingConfig": {
            "tier": view.tier.as_str(),
            "markupPercent": view.markup_percent,
            "billingEmail": billing_email.flatten(),
        },
        "tierLimits": super::limits_json(view.tier.limits(starter)),
        "effectiveLimits": super::limits_json(super::effective_limits(&view, &app.config)),
        "availableTiers": Tier::ALL,
    }))
}

/// A production org's channels: a number bought from Twilio (SMS webhook pointed at us) and an
/// address on the email domain, each only if that provider has credentials (org, platform, env).
async fn real_channels(app: &AppState, new: &NewAgent, agent_id: &str) -> Result<(Option<String>, Value), ApiError> {
    use crate::providers::{self as provider, credentials};
    let unconfigured = |what: &str| ApiError::new(ErrorCode::Unavailable, format!("No {what} provider configured"));
    if new.capabilities.email {
        let disabled = app.config.provider_resend_disabled;
        if disabled
            || credentials::resolve(&app.pool, &app.credential_keys, &app.config, &new.org_id, "resend")
                .await?
                .is_none()
        {
            return Err(unconfigured("email"));
        }
    }
    if !new.capabilities.phone {
        return Ok((None, json!({"provider": "resend"})));
    }
    if app.config.provider_twilio_disabled {
        return Err(unconfigured("telephony"));
    }
    let creds = credentials::resolve(&app.pool, &app.credential_keys, &app.config, &new.org_id, "twilio")
        .await?
        .ok_or_else(|| unconfigured("telephony"))?;
    let sms_url = format!("{}/webhooks/{agent_id}/sms", app.config.webhook_base_url.trim_end_matches('/'));
    let bought =
        async { provider::Twilio::of(&app.http, &app.config, &creds)?.buy_number(&new.country, &sms_url).await };
    let (number, number_sid) = bought.await.map_err(|f| {
        ApiError::new(ErrorCode::ProviderError, format!("Provisioning failed: {}", f.0)).with("provider", "twilio")
    })?;
    Ok((Some(number), json!({"provider": "twilio", "numberSid": number_sid})))
}

/// Releases the agent's number when asked: mock numbers simply go; a Twilio number is released
/// at Twilio, and a failure there is a warning, not a refusal (docs/tools.md#catalogue).
async fn release(app: &AppState, agent: &super::AgentView, wanted: bool) -> Result<(bool, Vec<String>), ApiError> {
    let number_sid = agent.provider_refs.get("numberSid").and_then(Value::as_str);
    let (true, Some(number_sid)) = (wanted, number_sid) else {
        return Ok((wanted && agent.channels.get("phone").is_some_and(|p| !p.is_null()), Vec::new()));
    };
    use crate::providers::{self as provider, credentials};
    let creds = credentials::resolve(&app.pool, &app.credential_keys, &app.config, &agent.org_id, "twilio").await?;
    let released = match creds {
        Some(creds) => match provider::Twilio::of(&app.http, &app.config, &creds) {
            Ok(twilio) => twilio.release_number(number_sid).await,
            Err(unconfigured) => Err(unconfigured),
        },
        None => Err(provider::ProviderFailure("twilio: not configured".into())),
    };
    Ok(match released {
        Ok(()) => (true, Vec::new()),
        Err(failure) => (false, vec![format!("Number release failed: {}", failure.0)]),
    })
}

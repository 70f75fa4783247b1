//! Commands on agents: provisioning (and the provider channels of a production org),
//! deprovisioning, blocked channels, limits and billing.

use commguard_domain::agent::{AgentAction, AgentCommand, AgentError, AgentStatus, Capabilities, Provisioning};
use commguard_domain::countries::provisioning_check;
use commguard_domain::limits::{OverridesChange, Tier};
use commguard_domain::refusal::{Check, Rule};
use commguard_domain::values::OrgMode;
use serde_json::{json, Value};
use uuid::Uuid;

use commguard_projections::directory::read::TokenOwner;

use super::{active_org, active_tokens, compliance, lock, new_token, reach_every_instance, settle, settle_on};
use crate::directory::{agent, org};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store::CommandContext;

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

/// `comms_provision_channels`: org state, country rules, duplicate, capacity, provider, record.
pub async fn provision(app: &AppState, mut context: CommandContext, new: NewAgent) -> Result<Value, ApiError> {
    let org_view = active_org(app, &new.org_id).await.map_err(|e| e.at(Check::OrgState))?;
    context.provenance.pass("org_state");
    let check = provisioning_check(&new.country, new.capabilities.phone, org_view.a2p_registered);
    if !check.blockers.is_empty() {
        return Err(compliance("Country compliance requirements not met", Rule::CountryRules)
            .with("blockers", check.blockers)
            .with("warnings", json!(check.warnings))
            .at(Check::CountryRules));
    }
    context.provenance.pass("country_rules");
    let agent_id = new.agent_id.clone().unwrap_or_else(|| Uuid::new_v4().to_string());

    // Capacity is exact across instances: provisioning in one org is serialized, and the count
    // it reads includes every agent provisioned before (each waits for the projection).
    let mut tx = lock(app, &format!("commguard.org.{}", new.org_id)).await?;
    if agent(&mut *tx, &agent_id).await?.is_some() {
        return Err(
            ApiError::new(ErrorCode::Conflict, format!("Agent \"{agent_id}\" already exists")).at(Check::Duplicate)
        );
    }
    let locked_org = org(&mut *tx, &new.org_id).await?.unwrap_or(org_view);
    let (active, max) = (locked_org.agent_count, i64::from(locked_org.max_agents));
    if active >= max {
        return Err(ApiError::new(
            ErrorCode::QuotaExceeded,
            format!("Agent pool is full ({active}/{max}). Deprovision an agent first."),
        )
        .with("current", active)
        .with("max", max)
        .at(Check::Capacity));
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

/// `comms_deprovision_channels`: revokes its tokens and closes its sessions.
pub async fn deprovision(
    app: &AppState,
    context: CommandContext,
    agent_id: &str,
    release_number: bool,
) -> Result<Value, ApiError> {
    let org_id = agent(&app.pool, agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Agent \"{agent_id}\" not found")))?
        .org_id;
    // The number is released before the aggregate decides, so a second deprovisioning must be
    // refused before it reaches the provider: under the org's lock (which provisioning holds
    // too) the agent is read as every earlier deprovisioning left it, since each settles first.
    let tx = lock(app, &format!("commguard.org.{org_id}")).await?;
    let found = agent(&app.pool, agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Agent \"{agent_id}\" not found")))?;
    if found.status == AgentStatus::Deprovisioned {
        let refused = AgentError::AlreadyDeprovisioned(agent_id.into());
        return Err(ApiError::new(refused.code(), refused.to_string()));
    }
    let tokens = active_tokens(app, TokenOwner::Agent(agent_id)).await?;
    let (number_released, warnings) = release(app, &found, release_number).await?;
    let command = AgentCommand {
        agent_id: agent_id.into(),
        action: AgentAction::Deprovision { number_released, warnings: warnings.clone() },
    };
    let position = app
        .store
        .execute(&app.agents, agent_id, command, &context.in_org(org_id))
        .await
        .map_err(ApiError::aggregate)?;
    settle(app, position).await?;
    drop(tx);
    app.identity.forget_tokens(&tokens);
    reach_every_instance(app).await;
    app.sessions.close_agent(agent_id, "agent_deprovisioned").await;
    Ok(json!({
        "success": true,
        "agentId": agent_id,
        "status": "deprovisioned",
        "numberReleased": number_released,
        "tokensRevoked": tokens.len(),
        "warnings": release_warnings(&warnings),
    }))
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

/// Runs a limits or billing command and answers with the agent as the limits projection now has it.
async fn change_agent_limits(
    app: &AppState,
    context: CommandContext,
    agent_id: &str,
    org_id: &str,
    action: AgentAction,
) -> Result<crate::directory::AgentView, ApiError> {
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
    let action = AgentAction::SetLimits { change, starter: crate::directory::starter(&app.config) };
    let view = change_agent_limits(app, context, agent_id, org_id, action).await?;
    Ok(json!({
        "success": true,
        "agentId": agent_id,
        "currentLimits": crate::directory::limits_json(crate::directory::effective_limits(&view, &app.config)),
        "overrides": crate::directory::overrides_json(view.overrides),
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
    let starter = crate::directory::starter(&app.config);
    // Omitted = unchanged, as for the tier and the markup: the event carries the whole billing
    // config, so the address it had is carried over (it exists only sealed in the last change).
    let billing_email = match billing_email {
        Some(changed) => changed,
        None => crate::directory::limits::billing_email(&app.pool, app.store.keystore(), agent_id).await?,
    };
    let action = AgentAction::SetBilling { tier, markup_percent, billing_email: Some(billing_email.clone()), starter };
    let view = change_agent_limits(app, context, agent_id, org_id, action).await?;
    Ok(json!({
        "success": true,
        "agentId": agent_id,
        "billingConfig": {
            "tier": view.tier.as_str(),
            "markupPercent": view.markup_percent,
            "billingEmail": billing_email,
        },
        "tierLimits": crate::directory::limits_json(view.tier.limits(starter)),
        "effectiveLimits": crate::directory::limits_json(crate::directory::effective_limits(&view, &app.config)),
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
async fn release(
    app: &AppState,
    agent: &crate::directory::AgentView,
    wanted: bool,
) -> Result<(bool, Vec<String>), ApiError> {
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

/// A deprovisioning's warnings (stored as text in `AgentDeprovisioned`) as replies carry them.
fn release_warnings(warnings: &[String]) -> Vec<Value> {
    warnings.iter().map(|message| json!({"code": "number_not_released", "message": message})).collect()
}

//! Outbound tools; the pipeline itself is `crate::outbound`.

use commguard_domain::limits::{OverridesChange, Tier};
use serde_json::{json, Value};

use super::{Caller, Tool};
use crate::app::AppState;
use crate::auth::Role;
use crate::directory::commands;
use crate::error::ApiError;
use crate::error::ErrorCode;
use crate::outbound::credentials::Credentials;
use crate::outbound::provider::Provider;
use crate::outbound::usage;
use crate::store::CommandContext;
use crate::validate::{invalid, Args};
use commguard_domain::records::ProviderEvent;

pub const SEND_MESSAGE: Tool = Tool {
    name: "comms_send_message",
    role: Role::Agent,
    description: "Send an SMS or email from an agent, through every guard, limit and compliance check.",
    schema: || {
        json!({"type": "object", "required": ["to", "body"], "properties": {
            "agentId": {"type": "string"},
            "to": {"type": "string", "description": "E.164 phone number (sms) or email address (email)"},
            "body": {"type": "string"},
            "channel": {"type": "string", "enum": ["sms", "email", "whatsapp"], "default": "sms"},
            "subject": {"type": "string", "maxLength": 998},
            "html": {"type": "string", "maxLength": 500000},
            "purpose": {"type": "string", "enum": ["marketing", "transactional"], "default": "marketing"}}})
    },
};

pub const MAKE_CALL: Tool = Tool {
    name: "comms_make_call",
    role: Role::Agent,
    description: "Place an AI voice call from an agent, through every guard, limit and compliance check.",
    schema: || {
        json!({"type": "object", "required": ["to"], "properties": {
            "agentId": {"type": "string"},
            "to": {"type": "string", "description": "E.164 phone number"},
            "greeting": {"type": "string", "maxLength": 1000},
            "systemPrompt": {"type": "string", "maxLength": 20000},
            "voice": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            "language": {"type": "string"},
            "recipientTimezone": {"type": "string"},
            "record": {"type": "boolean", "default": false},
            "purpose": {"type": "string", "enum": ["marketing", "transactional"], "default": "marketing"}}})
    },
};

pub const SEND_VOICE_MESSAGE: Tool = Tool {
    name: "comms_send_voice_message",
    role: Role::Agent,
    description: "Call a number and speak a message, through every guard, limit and compliance check.",
    schema: || {
        json!({"type": "object", "required": ["to", "text"], "properties": {
            "agentId": {"type": "string"},
            "to": {"type": "string", "description": "E.164 phone number"},
            "text": {"type": "string", "minLength": 1, "maxLength": 3000},
            "voice": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            "language": {"type": "string"},
            "purpose": {"type": "string", "enum": ["marketing", "transactional"], "default": "marketing"}}})
    },
};

pub const SET_AGENT_LIMITS: Tool = Tool {
    name: "comms_set_agent_limits",
    role: Role::SuperAdmin,
    description: "Override an agent's action and spend limits (null clears an override).",
    schema: || {
        json!({"type": "object", "required": ["agentId", "limits"], "properties": {
            "agentId": {"type": "string"},
            "limits": {"type": "object", "properties": {
                "maxActionsPerMinute": {"type": ["integer", "null"], "minimum": 1},
                "maxActionsPerHour": {"type": ["integer", "null"], "minimum": 1},
                "maxActionsPerDay": {"type": ["integer", "null"], "minimum": 1},
                "maxSpendPerDay": {"type": ["number", "null"], "minimum": 0},
                "maxSpendPerMonth": {"type": ["number", "null"], "minimum": 0}}}}})
    },
};

pub const SET_BILLING_CONFIG: Tool = Tool {
    name: "comms_set_billing_config",
    role: Role::SuperAdmin,
    description: "Set an agent's tier, billing markup and billing email.",
    schema: || {
        json!({"type": "object", "required": ["agentId"], "properties": {
            "agentId": {"type": "string"},
            "tier": {"type": "string", "enum": ["free", "starter", "pro", "enterprise"]},
            "markupPercent": {"type": ["number", "null"], "minimum": 0, "maximum": 500},
            "billingEmail": {"type": ["string", "null"]}}})
    },
};

/// An override: absent = unchanged, `null` = cleared, else a count ≥ 1 or dollars ≥ 0.
fn override_field(
    limits: &serde_json::Map<String, Value>,
    field: &str,
    money: bool,
) -> Result<Option<Option<i64>>, ApiError> {
    let path = format!("limits.{field}");
    match limits.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) if money => crate::validate::money(&path, v).map(|m| Some(Some(m))),
        Some(v) => v
            .as_i64()
            .filter(|n| *n >= 1)
            .map(|n| Some(Some(n)))
            .ok_or_else(|| invalid(&path, "must be an integer ≥ 1")),
    }
}

/// The `limits` argument of `comms_set_agent_limits` (and its admin route).
pub fn limits_change(args: &Args<'_>) -> Result<OverridesChange, ApiError> {
    let limits = args.object("limits")?.ok_or_else(|| invalid("limits", "is required"))?;
    Ok(OverridesChange {
        per_minute: override_field(limits, "maxActionsPerMinute", false)?,
        per_hour: override_field(limits, "maxActionsPerHour", false)?,
        per_day: override_field(limits, "maxActionsPerDay", false)?,
        spend_day: override_field(limits, "maxSpendPerDay", true)?,
        spend_month: override_field(limits, "maxSpendPerMonth", true)?,
    })
}

pub async fn set_agent_limits(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let agent_id = caller.agent_id(args, true)?;
    let change = limits_change(args)?;
    let agent = commands::addressable_agent(app, caller.principal, &agent_id).await?;
    commands::set_limits(app, caller.context(app), &agent_id, &agent.org_id, change).await
}

/// Tier, markup and billing address of `comms_set_billing_config` (and its admin route).
pub type BillingChange = (Option<Tier>, Option<Option<f64>>, Option<Option<String>>);

pub fn billing_change(args: &Args<'_>) -> Result<BillingChange, ApiError> {
    let tier = match args.opt_str("tier", 20)? {
        None => None,
        Some(t) => {
            Some(Tier::parse(&t).ok_or_else(|| invalid("tier", "must be one of free, starter, pro, enterprise"))?)
        }
    };
    let markup = match args.0.get("markupPercent") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => Some(Some(crate::validate::decimal("markupPercent", v, 0.0, 500.0)?)),
    };
    let billing_email = match args.0.get("billingEmail") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(e)) => Some(Some(crate::validate::email("billingEmail", e)?)),
        Some(_) => return Err(invalid("billingEmail", "must be a string")),
    };
    Ok((tier, markup, billing_email))
}

pub async fn set_billing_config(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let agent_id = caller.agent_id(args, true)?;
    let (tier, markup, billing_email) = billing_change(args)?;
    let agent = commands::addressable_agent(app, caller.principal, &agent_id).await?;
    commands::set_billing(app, caller.context(app), &agent_id, &agent.org_id, tier, markup, billing_email).await
}

pub const USAGE_DASHBOARD: Tool = Tool {
    name: "comms_get_usage_dashboard",
    role: Role::Agent,
    description: "Actions and costs per channel over a period, with current usage against limits.",
    schema: || {
        json!({"type": "object", "properties": {
            "agentId": {"type": "string"},
            "period": {"type": "string", "enum": ["today", "week", "month", "all"], "default": "today"},
            "orgId": {"type": "string"}}})
    },
};

pub const BILLING_SUMMARY: Tool = Tool {
    name: "comms_get_billing_summary",
    role: Role::Agent,
    description: "Provider cost and billed cost (with markup) over a period.",
    schema: || {
        json!({"type": "object", "properties": {
            "agentId": {"type": "string"},
            "period": {"type": "string", "enum": ["today", "week", "month", "all"], "default": "month"}}})
    },
};

/// The agent a usage or billing view is about: explicit, else the agent token's; `None` = org view.
async fn viewed_agent(
    app: &AppState,
    caller: &Caller<'_>,
    args: &Args<'_>,
) -> Result<Option<crate::directory::AgentView>, ApiError> {
    match args.opt_id("agentId")?.or_else(|| caller.principal.agent_id().map(str::to_string)) {
        Some(id) => Ok(Some(commands::addressable_agent(app, caller.principal, &id).await?)),
        None => Ok(None),
    }
}

pub async fn usage_dashboard(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let period = args.choice("period", &["today", "week", "month", "all"], "today")?;
    match viewed_agent(app, caller, args).await? {
        Some(agent) => usage::agent_dashboard(app, &agent, &period).await,
        None => usage::org_dashboard(app, caller.principal, args.opt_id("orgId")?, &period).await,
    }
}

pub async fn billing_summary(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let period = args.choice("period", &["today", "week", "month", "all"], "month")?;
    match viewed_agent(app, caller, args).await? {
        Some(agent) => usage::agent_billing(app, &agent, &period).await,
        None => usage::org_billing(app, caller.principal, &period).await,
    }
}

pub const REGISTER_PROVIDER: Tool = Tool {
    name: "comms_register_provider",
    role: Role::SuperAdmin,
    description: "Register Twilio or Resend credentials for the platform or one organization (stored encrypted).",
    schema: || {
        json!({"type": "object", "required": ["provider", "credentials"], "properties": {
            "provider": {"type": "string", "enum": ["twilio", "resend"]},
            "credentials": {"type": "object", "properties": {
                "accountSid": {"type": "string"}, "authToken": {"type": "string"},
                "apiKey": {"type": "string"}, "webhookSecret": {"type": "string"}}},
            "autoVerify": {"type": "boolean", "default": true},
            "orgId": {"type": "string"}}})
    },
};

/// `comms_register_provider` (S): verify against the provider's fixed host, store encrypted
/// (CONTRACT §11.5), record `ProviderRegistered` with the key names only. Live at once: sends
/// resolve credentials per send.
pub async fn register_provider(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    register(app, caller.context(app), args).await
}

/// The registration itself, shared with `POST /admin/api/providers`.
pub async fn register(app: &AppState, context: CommandContext, args: &Args<'_>) -> Result<Value, ApiError> {
    let provider = args.choice("provider", &["twilio", "resend"], "")?;
    if provider.is_empty() {
        return Err(invalid("provider", "is required"));
    }
    let (kind, required, optional): (Provider, &[&str], &[&str]) = match provider.as_str() {
        "twilio" => (Provider::Twilio, &["accountSid", "authToken"], &[]),
        _ => (Provider::Resend, &["apiKey"], &["webhookSecret"]),
    };
    let given = args.object("credentials")?.ok_or_else(|| invalid("credentials", "is required"))?;
    let mut credentials = Credentials::default();
    for name in required.iter().chain(optional) {
        let field = format!("credentials.{name}");
        match given.get(*name) {
            None | Some(Value::Null) if optional.contains(name) => {}
            None | Some(Value::Null) => return Err(invalid(&field, "is required")),
            // Credential values are not free text: they skip the sanitizer but must be one line.
            Some(Value::String(v)) if !v.is_empty() && v.len() <= 4096 && !v.contains(['\r', '\n']) => {
                credentials.0.insert(name.to_string(), v.clone());
            }
            Some(_) => return Err(invalid(&field, "must be a single-line string of 1 to 4096 characters")),
        }
    }
    let auto_verify = args.bool("autoVerify", true)?;
    let org_id = args.opt_id("orgId")?;
    if let Some(org) = &org_id {
        if crate::directory::org(&app.pool, org).await?.is_none() {
            return Err(ApiError::not_found(format!("Organization \"{org}\" not found")));
        }
    }
    if auto_verify {
        kind.verify(&app.http, &app.config, &credentials).await.map_err(|failure| {
            ApiError::new(ErrorCode::ProviderError, format!("Verification failed for {provider}: {}", failure.0))
                .with("provider", provider.clone())
        })?;
    }
    let key = app.credential_keys.first().ok_or_else(|| ApiError::internal("no credentials key"))?;
    let version =
        crate::outbound::credentials::store(&app.pool, key, org_id.as_deref(), &provider, &credentials).await?;
    let mut names: Vec<String> = credentials.0.keys().cloned().collect();
    names.sort();
    let (scope, stream_type, stream_id) = match &org_id {
        Some(org) => ("org", "organization", org.clone()),
        None => ("platform", "platform", "platform".to_string()),
    };
    let event = ProviderEvent::ProviderRegistered {
        scope: scope.into(),
        provider: provider.clone(),
        key_names: names.clone(),
        verified: auto_verify,
        key_version: version.clone(),
    };
    let context = match &org_id {
        Some(org) => context.in_org(org.clone()),
        None => context,
    };
    app.store.record(stream_type, &stream_id, &[event], &context).await.map_err(ApiError::internal)?;
    Ok(json!({
        "success": true,
        "provider": provider,
        "orgId": org_id,
        "verified": auto_verify,
        "keysStored": names,
        "keyVersion": version,
    }))
}

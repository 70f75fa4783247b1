//! Outbound tools; the pipeline itself is `crate::outbound`.

use serde_json::{json, Value};

use super::{Caller, Tool};
use crate::auth::Role;
use crate::directory::{commands, settings};
use crate::error::ApiError;
use crate::outbound::usage;
use crate::state::AppState;
use crate::validate::Args;

pub const SEND_MESSAGE: Tool = Tool {
    name: "comms_send_message",
    handler: |app, caller, args| Box::pin(crate::outbound::send_message(app, caller, args)),
    role: Role::Agent,
    checks: crate::outbound::BEFORE_THE_AGENT,
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
    handler: |app, caller, args| Box::pin(crate::outbound::make_call(app, caller, args)),
    role: Role::Agent,
    checks: crate::outbound::BEFORE_THE_AGENT,
    description: "Place an AI voice call from an agent, through every guard, limit and compliance check.",
    schema: || {
        json!({"type": "object", "required": ["to"], "properties": {
            "agentId": {"type": "string"},
            "to": {"type": "string", "description": "E.164 phone number"},
            "greeting": {"type": "string", "maxLength": 1000},
            "systemPrompt": {"type": "string", "maxLength": 10000},
            "voice": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"},
            "language": {"type": "string"},
            "recipientTimezone": {"type": "string"},
            "record": {"type": "boolean", "default": false},
            "purpose": {"type": "string", "enum": ["marketing", "transactional"], "default": "marketing"}}})
    },
};

pub const SEND_VOICE_MESSAGE: Tool = Tool {
    name: "comms_send_voice_message",
    handler: |app, caller, args| Box::pin(crate::outbound::send_voice_message(app, caller, args)),
    role: Role::Agent,
    checks: crate::outbound::BEFORE_THE_AGENT,
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
    handler: |app, caller, args| Box::pin(set_agent_limits(app, caller, args)),
    role: Role::SuperAdmin,
    checks: super::ROLE_FIRST,
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
    handler: |app, caller, args| Box::pin(set_billing_config(app, caller, args)),
    role: Role::SuperAdmin,
    checks: super::ROLE_FIRST,
    description: "Set an agent's tier, billing markup and billing email.",
    schema: || {
        json!({"type": "object", "required": ["agentId"], "properties": {
            "agentId": {"type": "string"},
            "tier": {"type": "string", "enum": ["free", "starter", "pro", "enterprise"]},
            "markupPercent": {"type": ["number", "null"], "minimum": 0, "maximum": 500},
            "billingEmail": {"type": ["string", "null"]}}})
    },
};

pub async fn set_agent_limits(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let agent_id = caller.agent_id(args, true)?;
    let change = settings::limits_change(args)?;
    let agent = commands::addressable_agent(app, caller.principal, &agent_id).await?;
    commands::set_limits(app, caller.context(&app.clock), &agent_id, &agent.org_id, change).await
}

pub async fn set_billing_config(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let agent_id = caller.agent_id(args, true)?;
    let (tier, markup, billing_email) = settings::billing_change(args)?;
    let agent = commands::addressable_agent(app, caller.principal, &agent_id).await?;
    commands::set_billing(app, caller.context(&app.clock), &agent_id, &agent.org_id, tier, markup, billing_email).await
}

pub const USAGE_DASHBOARD: Tool = Tool {
    name: "comms_get_usage_dashboard",
    handler: |app, caller, args| Box::pin(usage_dashboard(app, caller, args)),
    role: Role::Agent,
    checks: super::ROLE_FIRST,
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
    handler: |app, caller, args| Box::pin(billing_summary(app, caller, args)),
    role: Role::Agent,
    checks: super::ROLE_FIRST,
    description: "Provider cost and billed cost (with markup) over a period.",
    schema: || {
        json!({"type": "object", "properties": {
            "agentId": {"type": "string"},
            "period": {"type": "string", "enum": ["today", "week", "month", "all"], "default": "month"}}})
    },
};

/// The agent a usage or billing view is about: explicit, else the agent token's; `None` = org view.
/// The agent a usage or billing view is about: explicit, the agent token's, else the session's
/// claim (docs/tools.md#common-rules); none: the org's (or every org's) view.
async fn viewed_agent(
    app: &AppState,
    caller: &Caller<'_>,
    args: &Args<'_>,
) -> Result<Option<crate::directory::AgentView>, ApiError> {
    let named = args.opt_id("agentId")?;
    match named.or_else(|| caller.principal.agent_id().or(caller.claim).map(str::to_string)) {
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
    handler: |app, caller, args| Box::pin(register_provider(app, caller, args)),
    role: Role::SuperAdmin,
    checks: super::ROLE_FIRST,
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
/// (docs/privacy.md#provider-credentials), record `ProviderRegistered` with the key names only. Live at once: sends
/// resolve credentials per send.
pub async fn register_provider(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    settings::register_provider(app, caller.context(&app.clock), args).await
}

//! Consent and do-not-contact tools (docs/tools.md#catalogue); the rules live in `crate::contacts`.

use commguard_domain::contact::{DncSource, CONSENT_CHANNELS};
use serde_json::{json, Value};

use super::{Caller, Tool};
use crate::auth::Role;
use crate::contacts::{self, NewConsent};
use crate::directory::commands;
use crate::error::{ApiError, ErrorCode};
use crate::paging::Page;
use crate::state::AppState;
use crate::validate::{invalid, Args, MAX_STRING};

fn consent_schema(extra: Value) -> Value {
    let mut schema = json!({"type": "object", "required": ["contactAddress", "channel"], "properties": {
        "agentId": {"type": "string"},
        "contactAddress": {"type": "string", "description": "E.164 number, or an email for the email channel"},
        "channel": {"type": "string", "enum": CONSENT_CHANNELS}}});
    if let (Some(props), Value::Object(more)) = (schema["properties"].as_object_mut(), extra) {
        props.extend(more);
    }
    schema
}

pub const RECORD_CONSENT: Tool = Tool {
    name: "comms_record_consent",
    handler: |app, caller, args| Box::pin(record_consent(app, caller, args)),
    role: Role::Agent,
    checks: super::ROLE_FIRST,
    description: "Record a contact's consent to be contacted by an agent on a channel.",
    schema: || {
        consent_schema(json!({
            "consentType": {"type": "string", "enum": ["express", "implied", "transactional"], "default": "express"},
            "source": {"type": "string", "maxLength": 200},
            "notes": {"type": "string", "maxLength": 2000}}))
    },
};

pub const REVOKE_CONSENT: Tool = Tool {
    name: "comms_revoke_consent",
    handler: |app, caller, args| Box::pin(revoke_consent(app, caller, args)),
    role: Role::Agent,
    checks: super::ROLE_FIRST,
    description: "Revoke a contact's consent for an agent on a channel.",
    schema: || consent_schema(json!({})),
};

pub const CHECK_CONSENT: Tool = Tool {
    name: "comms_check_consent",
    handler: |app, caller, args| Box::pin(check_consent(app, caller, args)),
    role: Role::Agent,
    checks: super::ROLE_FIRST,
    description:
        "Show whether an agent holds a contact's consent on a channel, and whether the contact is on the DNC list.",
    schema: || consent_schema(json!({})),
};

pub const DNC_ADD: Tool = Tool {
    name: "comms_dnc_add",
    handler: |app, caller, args| Box::pin(dnc_add(app, caller, args)),
    role: Role::Agent,
    checks: super::ROLE_FIRST,
    description: "Add a number or email to the organization's Do Not Contact list.",
    schema: || {
        json!({"type": "object", "required": ["address"], "properties": {
            "address": {"type": "string"}, "reason": {"type": "string", "maxLength": 10000},
            "orgId": {"type": "string", "description": "required for the super-admin"}}})
    },
};

pub const DNC_REMOVE: Tool = Tool {
    name: "comms_dnc_remove",
    handler: |app, caller, args| Box::pin(dnc_remove(app, caller, args)),
    role: Role::Org,
    checks: super::ROLE_FIRST,
    description: "Remove every Do Not Contact entry for an address in the organization.",
    schema: || {
        json!({"type": "object", "required": ["address", "reason"], "properties": {
            "address": {"type": "string"}, "reason": {"type": "string", "minLength": 3, "maxLength": 500},
            "orgId": {"type": "string", "description": "required for the super-admin"}}})
    },
};

pub const DNC_LIST: Tool = Tool {
    name: "comms_dnc_list",
    handler: |app, caller, args| Box::pin(dnc_list(app, caller, args)),
    role: Role::Org,
    checks: super::ROLE_FIRST,
    description: "List the organization's Do Not Contact entries.",
    schema: || {
        json!({"type": "object", "properties": {
            "orgId": {"type": "string", "description": "super-admin: omitted lists every organization"},
            "type": {"type": "string", "enum": ["phone", "email"]},
            "cursor": {"type": "string"}, "limit": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50}}})
    },
};

pub const ERASE_SUBJECT: Tool = Tool {
    name: "comms_erase_subject",
    handler: |app, caller, args| Box::pin(erase_subject(app, caller, args)),
    role: Role::Org,
    checks: super::ROLE_FIRST,
    description: "Erase a data subject (phone number or email) by destroying its keys: its personal data in \
                  events reads [erased], its consent records are purged, DNC entries keep blocking.",
    schema: || {
        json!({"type": "object", "required": ["identifier"], "properties": {
            "identifier": {"type": "string", "description": "E.164 number or email"},
            "identifierType": {"type": "string", "enum": ["phone", "email"], "description": "detected if absent"},
            "orgId": {"type": "string", "description": "super-admin: omitted erases in every organization"},
            "reason": {"type": "string", "maxLength": 10000}}})
    },
};

pub async fn erase_subject(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    crate::erasure::erase_subject(app, caller.principal, caller.context(&app.clock), args).await
}

/// The agent a consent tool is about (Z1, Z2), active, and the parsed contact and channel.
async fn consent_target(
    app: &AppState,
    caller: &Caller<'_>,
    args: &Args<'_>,
) -> Result<(crate::directory::AgentView, contacts::Address, String), ApiError> {
    let agent_id = caller.agent_id(args, false)?;
    let channel = args.str("channel", 1, 16)?;
    if !CONSENT_CHANNELS.contains(&channel.as_str()) {
        return Err(invalid("channel", format!("must be one of {}", CONSENT_CHANNELS.join(", "))));
    }
    let address = contacts::consent_address("contactAddress", &args.str("contactAddress", 1, 320)?, &channel)?;
    let agent = commands::addressable_agent(app, caller.principal, &agent_id).await?;
    Ok((agent, address, channel))
}

fn require_active(agent: &crate::directory::AgentView) -> Result<(), ApiError> {
    if !agent.is_active() {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("Agent \"{}\" is not active (status: {})", agent.agent_id, agent.status.as_str()),
        ));
    }
    Ok(())
}

pub async fn record_consent(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let (agent, address, channel) = consent_target(app, caller, args).await?;
    let consent_type =
        contacts::consent_type(&args.choice("consentType", &["express", "implied", "transactional"], "express")?)?;
    let source = args.opt_str("source", 200)?;
    let notes = args.opt_str("notes", 2000)?;
    require_active(&agent)?;
    let mut context = caller.context(&app.clock).in_org(agent.org_id.clone());
    context.provenance.pass("org_boundary");
    context.provenance.pass("agent_state");
    let new = NewConsent { agent_id: agent.agent_id.clone(), address, channel, consent_type, source, notes };
    contacts::record_consent(app, &agent.org_id, new, &context).await
}

pub async fn revoke_consent(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let (agent, address, channel) = consent_target(app, caller, args).await?;
    let mut context = caller.context(&app.clock).in_org(agent.org_id.clone());
    context.provenance.pass("org_boundary");
    contacts::revoke_consent(app, &agent.org_id, &agent.agent_id, &address, &channel, &context).await
}

pub async fn check_consent(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let (agent, address, channel) = consent_target(app, caller, args).await?;
    contacts::check_consent(app, &agent.org_id, &agent.agent_id, &address, &channel).await
}

pub async fn dnc_add(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let address = contacts::address("address", &args.str("address", 1, 320)?)?;
    let reason = args.opt_str("reason", MAX_STRING)?;
    let org = contacts::dnc_org(app, caller.principal, args.opt_id("orgId")?).await?;
    let source = if caller.principal.role() == Role::Agent { DncSource::Agent } else { DncSource::Admin };
    let context = caller.context(&app.clock).in_org(org.clone());
    contacts::dnc_add(app, &org, &address, source, reason, caller.principal.stream_id(), &context).await
}

pub async fn dnc_remove(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let address = contacts::address("address", &args.str("address", 1, 320)?)?;
    let reason = args.str("reason", 3, 500)?;
    let org = contacts::dnc_org(app, caller.principal, args.opt_id("orgId")?).await?;
    let context = caller.context(&app.clock).in_org(org.clone());
    contacts::dnc_remove(app, &org, &address, reason, caller.principal.stream_id(), &context).await
}

pub async fn dnc_list(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let kind = args.opt_str("type", MAX_STRING)?;
    if let Some(k) = kind.as_deref().filter(|k| !["phone", "email"].contains(k)) {
        return Err(invalid("type", format!("must be phone or email, not \"{k}\"")));
    }
    let cursor = args.opt_str("cursor", 256)?;
    let page = Page::new("comms_dnc_list", cursor.as_deref(), args.0.get("limit"))?;
    let org = crate::directory::commands::read_scope(app, caller.principal, args.opt_id("orgId")?).await?;
    Ok(serde_json::json!(contacts::dnc_list(app, org.as_deref(), kind.as_deref(), page).await?))
}

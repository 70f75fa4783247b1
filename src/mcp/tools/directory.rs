//! Organization and agent tools: create and list organizations (S), provision and deprovision
//! agents (O S), channel status and token rotation (A O S).

use commguard_domain::agent::Capabilities;
use commguard_domain::refusal::Check;
use serde_json::{json, Value};

use super::{Caller, Tool};
use crate::auth::{guard, Role};
use crate::directory::commands::{self, NewAgent, NewOrg, RotateTarget};
use crate::directory::{self as dir};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::validate::{invalid, Args, MAX_STRING};

pub const CREATE_ORGANIZATION: Tool = Tool {
    name: "comms_create_organization",
    handler: |app, caller, args| Box::pin(create_organization(app, caller, args)),
    role: Role::SuperAdmin,
    checks: super::ROLE_FIRST,
    description: "Create an organization (sandbox mode) and issue its admin token.",
    schema: || {
        json!({"type": "object", "required": ["name", "slug"], "properties": {
            "name": {"type": "string", "minLength": 1, "maxLength": 100},
            "slug": {"type": "string", "pattern": "^[a-z0-9-]{2,63}$"},
            "settings": {"type": "object"},
            "a2pRegistered": {"type": "boolean", "default": false}}})
    },
};

pub const LIST_ORGANIZATIONS: Tool = Tool {
    name: "comms_list_organizations",
    handler: |app, _, _| Box::pin(list_organizations(app)),
    role: Role::SuperAdmin,
    checks: super::ROLE_FIRST,
    description: "List every organization with its mode and agent count.",
    schema: || json!({"type": "object", "properties": {}}),
};

pub const PROVISION_CHANNELS: Tool = Tool {
    name: "comms_provision_channels",
    handler: |app, caller, args| Box::pin(provision_channels(app, caller, args)),
    role: Role::Org,
    // docs/tools.md: role, input, then provisioning's own in order (`commands::provision`).
    checks: &[
        Check::Role,
        Check::Input,
        Check::OrgState,
        Check::CountryRules,
        Check::Duplicate,
        Check::Capacity,
        Check::Provider,
    ],
    description: "Provision an agent with phone, email and voice channels; returns its security token once.",
    schema: || {
        json!({"type": "object", "required": ["displayName"], "properties": {
            "agentId": {"type": "string", "pattern": "^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"},
            "displayName": {"type": "string", "minLength": 1, "maxLength": 100},
            "greeting": {"type": "string", "maxLength": 1000},
            "systemPrompt": {"type": "string", "maxLength": 20000},
            "country": {"type": "string", "pattern": "^[A-Za-z]{2}$", "default": "US"},
            "capabilities": {"type": "object", "properties": {
                "phone": {"type": "boolean"}, "whatsapp": {"type": "boolean"},
                "email": {"type": "boolean"}, "voiceAi": {"type": "boolean"}}},
            "emailDomain": {"type": "string"},
            "agentGender": {"type": "string", "enum": ["male", "female", "neutral"], "default": "male"},
            "orgId": {"type": "string"}}})
    },
};

pub const DEPROVISION_CHANNELS: Tool = Tool {
    name: "comms_deprovision_channels",
    handler: |app, caller, args| Box::pin(deprovision_channels(app, caller, args)),
    role: Role::Org,
    checks: super::ROLE_FIRST,
    description: "Deprovision an agent: release its number, revoke its tokens, close its sessions.",
    schema: || {
        json!({"type": "object", "required": ["agentId"], "properties": {
            "agentId": {"type": "string"}, "releaseNumber": {"type": "boolean", "default": true}}})
    },
};

pub const GET_CHANNEL_STATUS: Tool = Tool {
    name: "comms_get_channel_status",
    handler: |app, caller, args| Box::pin(get_channel_status(app, caller, args)),
    role: Role::Agent,
    checks: super::ROLE_FIRST,
    description: "An agent's status, channels, blocked channels and its org's pool.",
    schema: || json!({"type": "object", "properties": {"agentId": {"type": "string"}}}),
};

pub const ROTATE_TOKEN: Tool = Tool {
    name: "comms_rotate_token",
    handler: |app, caller, args| Box::pin(rotate_token(app, caller, args)),
    role: Role::Agent,
    checks: super::ROLE_FIRST,
    description: "Revoke every active token of an agent or org and issue a new one.",
    schema: || {
        json!({"type": "object", "properties": {
            "target": {"type": "string", "enum": ["agent", "org"], "default": "agent"},
            "agentId": {"type": "string"}, "orgId": {"type": "string"}, "label": {"type": "string", "maxLength": 10000}}})
    },
};

pub async fn create_organization(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let name = args.str("name", 1, 100)?;
    let slug = args.str("slug", 2, 63)?;
    if !(2..=63).contains(&slug.len())
        || !slug.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err(invalid("slug", "must match ^[a-z0-9-]{2,63}$"));
    }
    let settings = args.free_object("settings")?;
    let a2p_registered = args.bool("a2pRegistered", false)?;
    commands::create_org(
        app,
        caller.context(&app.clock),
        NewOrg { name: name.trim().into(), slug, settings, a2p_registered },
    )
    .await
}

pub async fn list_organizations(app: &AppState) -> Result<Value, ApiError> {
    let orgs = dir::orgs(&app.pool).await?;
    Ok(json!({ "organizations": orgs.iter().map(dir::org_listing).collect::<Vec<_>>(), "total": orgs.len() }))
}

pub async fn provision_channels(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let agent_id = args.opt_id("agentId")?;
    let display_name = args.str("displayName", 1, 100)?;
    let greeting = args.opt_str("greeting", 1000)?;
    let system_prompt = args.opt_str("systemPrompt", 20_000)?;
    let country = args.opt_str("country", 2)?.unwrap_or_else(|| "US".into());
    if country.len() != 2 || !country.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(invalid("country", "must be an ISO 3166-1 alpha-2 code"));
    }
    let capabilities = match args.object("capabilities")? {
        None => Capabilities::default(),
        Some(map) => {
            let caps = Args(map);
            Capabilities {
                phone: caps.bool("phone", false)?,
                whatsapp: caps.bool("whatsapp", false)?,
                email: caps.bool("email", false)?,
                voice_ai: caps.bool("voiceAi", false)?,
            }
        }
    };
    let email_domain = args.opt_str("emailDomain", 253)?;
    if let Some(domain) = &email_domain {
        crate::validate::email("emailDomain", &format!("x@{domain}"))
            .map_err(|_| invalid("emailDomain", "Invalid email domain"))?;
    }
    let agent_gender = args.choice("agentGender", &["male", "female", "neutral"], "male")?;
    let org_id = commands::home_org(caller.principal, args.opt_id("orgId")?)?;
    let new = NewAgent {
        agent_id,
        org_id,
        display_name: display_name.trim().into(),
        greeting,
        system_prompt,
        country: country.to_uppercase(),
        capabilities,
        email_domain,
        agent_gender,
    };
    // The number is bought before the agent is recorded: both happen, whoever hangs up.
    let context = caller.context(&app.clock);
    app.to_the_end(|app| async move { commands::provision(&app, context, new).await }).await
}

pub async fn deprovision_channels(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let agent_id = caller.agent_id(args, true)?;
    let release_number = args.bool("releaseNumber", true)?;
    commands::addressable_agent(app, caller.principal, &agent_id).await?;
    let mut context = caller.context(&app.clock);
    context.provenance.pass("org_boundary");
    // The number is released before the agent is recorded as deprovisioned: both happen, whoever hangs up.
    app.to_the_end(|app| async move { commands::deprovision(&app, context, &agent_id, release_number).await }).await
}

pub async fn get_channel_status(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let agent_id = caller.agent_id(args, false)?;
    let agent = commands::addressable_agent(app, caller.principal, &agent_id).await?;
    let org = dir::org(&app.pool, &agent.org_id).await?;
    Ok(serde_json::json!(dir::status_view(&agent, org.as_ref())))
}

pub async fn rotate_token(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let target = args.choice("target", &["agent", "org"], "agent")?;
    let label = args.opt_str("label", MAX_STRING)?;
    let principal = caller.principal;
    let target = if target == "org" {
        guard::require_role(principal, Role::Org)?;
        let org_id = commands::home_org(principal, args.opt_id("orgId")?)?;
        if dir::org(&app.pool, &org_id).await?.is_none() {
            return Err(ApiError::new(ErrorCode::NotFound, format!("Organization \"{org_id}\" not found")));
        }
        RotateTarget::Org { org_id }
    } else {
        let agent_id = caller.agent_id(args, false)?;
        let agent = commands::addressable_agent(app, principal, &agent_id).await?;
        RotateTarget::Agent { agent_id, org_id: agent.org_id }
    };
    let mut context = caller.context(&app.clock);
    context.provenance.pass("org_boundary");
    commands::rotate(app, context, target, label).await
}

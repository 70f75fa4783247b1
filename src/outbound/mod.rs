//! The outbound pipeline (CONTRACT §6.1), in the order it runs, in one place:
//! identity → guards → input → agent and org state → compliance → limits → provider → record.
//! Refusals before the agent is known are `ActionRefused` (recorded by the tool layer); from the
//! agent's state on they are `MessageBlocked`, a provider failure is `MessageFailed`, and a send
//! is `MessageSent` — each with the checks that ran, in order.

pub mod compliance;
pub mod limits;
pub mod provider;
pub mod usage;

use commguard_domain::agent::AgentEvent;
use commguard_domain::pii::{Pii, RetentionClass};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::app::AppState;
use crate::auth::Role;
use crate::directory::{self, commands};
use crate::error::{ApiError, ErrorCode};
use crate::mcp::tools::Caller;
use crate::store::CommandContext;
use crate::validate::{self, invalid, Args};
use limits::{Limits, OrgCaps};
use provider::{Outgoing, Provider};

/// A validated `comms_send_message`.
struct Message {
    channel: String,
    to: String,
    body: String,
    subject: Option<String>,
    html: Option<String>,
    purpose: String,
}

fn message_input(args: &Args<'_>) -> Result<Message, ApiError> {
    if args.0.get("templateId").is_some_and(|v| !v.is_null()) {
        return Err(invalid("templateId", "templateId is not supported"));
    }
    let channel = args.choice("channel", &["sms", "email", "whatsapp"], "sms")?;
    if channel == "whatsapp" {
        return Err(ApiError::new(ErrorCode::Unavailable, "Channel \"whatsapp\" is not available"));
    }
    let raw_to = args.str("to", 1, 320)?;
    let to = if channel == "email" { validate::email("to", &raw_to)? } else { validate::phone("to", &raw_to)? };
    let body_max = if channel == "sms" { 1600 } else { 100_000 };
    let body = args.str("body", if channel == "sms" { 1 } else { 0 }, body_max)?;
    let subject = args.opt_str("subject", 998)?;
    if channel == "email" && subject.as_deref().is_none_or(|s| s.trim().is_empty()) {
        return Err(invalid("subject", "Subject is required for email channel"));
    }
    let html = args.opt_str("html", 500_000)?;
    let purpose = args.choice("purpose", &["marketing", "transactional"], "marketing")?;
    Ok(Message { channel, to, body, subject, html, purpose })
}

/// `comms_send_message`.
pub async fn send_message(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    // 1–2: the agent, and Z1.
    let agent_id = caller.agent_id(args, false)?;
    crate::auth::guard::own_agent(caller.principal, &agent_id)?;
    let mut context = caller.context_checked(app, &["agent_resolve", "role"]);
    // 3: input.
    let message = message_input(args)?;
    context.provenance.pass("input");
    // 4: org boundary (Z2).
    let agent = commands::addressable_agent(app, caller.principal, &agent_id).await?;
    context.provenance.pass("org_boundary");
    let context = context.in_org(agent.org_id.clone());

    let message_id = Uuid::new_v4();
    let blocked = |context: CommandContext, check: &'static str, refusal: ApiError| {
        block(app, context, &agent_id, message_id, &message, check, refusal)
    };
    // 5: the agent's state and channel.
    if let Err(refusal) = agent_state(&agent, &message.channel) {
        return Err(blocked(context, "agent_state", refusal).await);
    }
    let mut context = context;
    context.provenance.pass("agent_state");
    // 6: the org's state (Z6).
    let org = match commands::active_org(app, &agent.org_id).await {
        Ok(org) => org,
        Err(refusal) if refusal.code == ErrorCode::ComplianceBlocked => {
            return Err(blocked(context, "org_state", refusal).await)
        }
        Err(other) => return Err(other),
    };
    context.provenance.pass("org_state");
    // 7–11: compliance (applies to the super-admin too).
    let warnings = match compliance::check_message(
        &mut context.provenance,
        &message.channel,
        &message.body,
        message.html.as_deref(),
    ) {
        Ok(warnings) => warnings,
        Err((check, refusal)) => return Err(blocked(context, check, refusal).await),
    };
    // 12: limits — a reservation; the super-admin and demo are counted, never refused.
    let unlimited = caller.principal.role() == Role::SuperAdmin || app.config.demo_mode;
    let limits = if unlimited { Limits::unlimited() } else { Limits::of(&agent, &app.config) };
    let caps = if unlimited {
        OrgCaps::default()
    } else {
        OrgCaps { spend_day: org.max_spend_per_day, spend_month: org.max_spend_per_month }
    };
    let estimate = provider::estimated_cost(&message.channel);
    let reservation =
        match limits::reserve(&app.pool, &agent_id, &agent.org_id, app.clock.now(), estimate, limits, caps).await? {
            Ok(r) => r,
            Err(exceeded) => return Err(blocked(context, "limits", exceeded.to_error()).await),
        };
    if unlimited {
        context.provenance.skip("limits", "super-admin or demo: counted, not limited");
    } else {
        context.provenance.pass("limits");
    }
    // 13: the provider. Sandbox orgs and demo use the mock; real adapters are not built yet.
    let sandbox = app.config.demo_mode || org.mode != "production";
    let provider = if sandbox {
        Provider::Mock
    } else {
        limits::release(&app.pool, &reservation).await?;
        let what = if message.channel == "email" { "email" } else { "telephony" };
        return Err(blocked(
            context,
            "provider",
            ApiError::new(ErrorCode::Unavailable, format!("No {what} provider configured")),
        )
        .await);
    };
    let from = match message.channel.as_str() {
        "email" => agent.channels.get("email").and_then(Value::as_str).map(str::to_string),
        _ => agent.channels.get("phone").and_then(Value::as_str).map(str::to_string),
    };
    let receipt = match provider.send(&Outgoing { channel: &message.channel, to: &message.to }).await {
        Ok(receipt) => receipt,
        Err(failure) => {
            limits::release(&app.pool, &reservation).await?;
            context.provenance.fail("provider", failure.0.clone());
            let event = AgentEvent::MessageFailed {
                message_id,
                channel: message.channel.clone(),
                to: Pii::subject(message.to.clone()),
                provider: provider.name().into(),
                error: failure.0.clone(),
            };
            record(app, &agent_id, event, &context).await;
            let mut e = ApiError::new(ErrorCode::ProviderError, format!("Provider error: {}", failure.0))
                .with("provider", provider.name());
            e.recorded = true;
            return Err(e);
        }
    };
    limits::settle(&app.pool, &reservation, receipt.cost).await?;
    context.provenance.pass("provider");
    let retained = |text: &str| Pii::subject_retained(text.to_string(), message.to.clone(), RetentionClass::Messages);
    let event = AgentEvent::MessageSent {
        message_id,
        channel: message.channel.clone(),
        purpose: message.purpose.clone(),
        to: Pii::subject(message.to.clone()),
        from: from.clone(),
        subject: message.subject.as_deref().map(retained),
        body: retained(&message.body),
        html: message.html.as_deref().map(retained),
        provider: provider.name().into(),
        external_id: receipt.external_id.clone(),
        status: receipt.status.into(),
        cost: receipt.cost,
        warnings: warnings.clone(),
    };
    record(app, &agent_id, event, &context).await;
    let mut reply = json!({
        "success": true,
        "messageId": message_id,
        "externalId": receipt.external_id,
        "status": receipt.status,
        "cost": crate::money::to_dollars(receipt.cost),
        "channel": message.channel,
        "from": from,
        "to": message.to,
        "sandbox": sandbox,
        "warnings": warnings,
    });
    if let Some(subject) = &message.subject {
        reply["subject"] = json!(subject);
    }
    Ok(reply)
}

/// Step 5: active, has the channel, not blocked on it.
fn agent_state(agent: &directory::AgentView, channel: &str) -> Result<(), ApiError> {
    let id = &agent.agent_id;
    if agent.status != "active" {
        return Err(ApiError::new(
            ErrorCode::Conflict,
            format!("Agent \"{id}\" is not active (status: {})", agent.status),
        ));
    }
    let (address, what) = if channel == "email" { ("email", "email address") } else { ("phone", "phone number") };
    if agent.channels.get(address).is_none_or(Value::is_null) {
        return Err(ApiError::new(ErrorCode::Conflict, format!("Agent \"{id}\" has no {what}")));
    }
    let blocked = agent.blocked_channels.as_array().is_some_and(|b| b.iter().any(|c| c == "*" || c == channel));
    if blocked {
        return Err(ApiError::new(ErrorCode::Forbidden, format!("Agent \"{id}\" is blocked on {channel} channel")));
    }
    Ok(())
}

/// Records `MessageBlocked` for a refusal at `check` and returns the refusal, marked recorded.
async fn block(
    app: &AppState,
    mut context: CommandContext,
    agent_id: &str,
    message_id: Uuid,
    message: &Message,
    check: &'static str,
    mut refusal: ApiError,
) -> ApiError {
    context.provenance.fail(check, refusal.message.clone());
    let field = |k: &str| refusal.extra.get(k).and_then(Value::as_str).map(str::to_string);
    let event = AgentEvent::MessageBlocked {
        message_id,
        channel: message.channel.clone(),
        purpose: message.purpose.clone(),
        to: Pii::subject(message.to.clone()),
        body: Pii::subject_retained(message.body.clone(), message.to.clone(), RetentionClass::Messages),
        refused_by: check.into(),
        code: refusal.code.as_str().into(),
        rule: field("rule"),
        limit_type: field("limitType"),
        reason: refusal.message.clone(),
    };
    record(app, agent_id, event, &context).await;
    refusal.recorded = true;
    refusal
}

async fn record(app: &AppState, agent_id: &str, event: AgentEvent, context: &CommandContext) {
    if let Err(e) = app.store.record("agent", agent_id, &[event], context).await {
        tracing::error!(error = %e, agent_id, "outbound event not recorded");
    }
}

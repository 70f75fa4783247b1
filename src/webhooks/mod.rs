//! Provider webhooks (docs/webhooks.md): inbound SMS and call-status callbacks from Twilio, inbound
//! email and complaints from Resend (Svix-signed). Every request passes, in order: IP allowlist
//! (in the hardening layer), the agent, the signature (failing closed), replay protection shared
//! through Postgres (`gate.rs`: axum extractors, so a handler only ever sees a verified request),
//! then its handler (`twilio.rs`, `resend.rs`). Refusals after the agent is known are recorded as
//! `WebhookRejected`; what a webhook changes is recorded as the events of docs/events.md. A nonce is
//! claimed before the handler runs and given back if the handler fails (5xx), so the provider's
//! retry is processed rather than refused as a replay; final answers (2xx, 4xx) keep it.

mod forward;
pub mod gate;
pub mod replay;
mod resend;
pub mod signature;
mod twilio;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use commguard_domain::agent::AgentEvent;
use serde_json::json;

use crate::directory::AgentView;
use crate::error::{ApiError, ErrorCode};
use crate::http::client_ip::ClientIp;
use crate::http::webhook_routes::twiml;
use crate::outbound::actions::xml_escape;
use crate::state::AppState;
use crate::store::{Actor, ActorKind, CommandContext};
pub use resend::addresses;
pub use twilio::price_unpriced_calls;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/{agent_id}/sms", post(twilio::sms))
        .route("/webhooks/{agent_id}/call-status", post(twilio::call_status))
        .route("/webhooks/{agent_id}/voice/status", post(twilio::call_status))
        .route("/webhooks/{agent_id}/email", post(resend::email))
}

fn empty(status: StatusCode) -> Response {
    twiml(status, "<Response/>")
}

fn message_reply(text: &str) -> Response {
    twiml(StatusCode::OK, format!("<Response><Message>{}</Message></Response>", xml_escape(text)))
}

/// The context of events a webhook causes: the provider is the actor.
fn context(app: &AppState, provider: &str, agent: &AgentView) -> CommandContext {
    CommandContext::new(Actor { kind: ActorKind::Provider, id: provider.into() }, "webhook", app.clock.now())
        .in_org(agent.org_id.clone())
}

async fn record(app: &AppState, agent: &AgentView, event: AgentEvent, context: &CommandContext) {
    if let Err(e) = app.store.record("agent", &agent.agent_id, &[event], context).await {
        tracing::error!(error = %e, agent_id = agent.agent_id, "webhook event not recorded");
    }
}

/// The `route` labels of `commguard_webhook_rejections_total`, and its `reason` labels: the
/// recorded reasons (`WebhookRejected`), then the two of refusals with no agent or target.
pub const ROUTES: [&str; 3] = ["sms", "call-status", "email"];
pub const REASONS: [&str; 7] =
    ["signature", "replay", "ip", "secret_missing", "malformed", "unknown_agent", "unknown_target"];

/// A refusal that names no agent of ours (an `:agentId` that is no agent, or not even an id) or
/// no target of the agent's (a number, address or call that is not its own): counted in
/// `commguard_webhook_rejections_total` like every other refusal; there is no agent stream to
/// record it on, or (a target) nothing of the agent's was touched.
fn turned_away(app: &AppState, route: &str, reason: &str) {
    app.metrics.webhook_rejected(route, reason);
}

/// A refusal of a request for a known agent: counted, and recorded as `WebhookRejected`.
/// `checks`: the gate's checks that passed before this refusal, listed first.
async fn reject(
    app: &AppState,
    agent: &AgentView,
    provider: &str,
    route: &str,
    reason: &str,
    ip: &ClientIp,
    checks: &gate::Checks,
) {
    app.metrics.webhook_rejected(route, reason);
    let mut context = checks.context(app, provider, agent);
    context.provenance.fail(reason, format!("webhook {route} rejected: {reason}"));
    let event =
        AgentEvent::WebhookRejected { route: route.into(), reason: reason.into(), ip_ref: app.lockout.ip_ref(ip.0) };
    record(app, agent, event, &context).await;
}

fn json_error(status: StatusCode, message: &str) -> Response {
    let code = match status {
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::BAD_REQUEST => ErrorCode::InvalidInput,
        StatusCode::SERVICE_UNAVAILABLE => ErrorCode::Unavailable,
        _ => ErrorCode::Forbidden,
    };
    ApiError::new(code, message).with_status(status).into_response()
}

fn ok() -> Response {
    Json(json!({"ok": true})).into_response()
}

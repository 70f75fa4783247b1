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

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use commguard_domain::agent::AgentEvent;
use serde_json::json;

use crate::directory::AgentView;
use crate::error::{ApiError, ErrorCode};
use crate::http::client_ip::ClientIp;
use crate::outbound::actions::xml_escape;
use crate::state::AppState;
use crate::store::{Actor, ActorKind, CommandContext};
pub use resend::addresses;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/{agent_id}/sms", post(twilio::sms))
        .route("/webhooks/{agent_id}/call-status", post(twilio::call_status))
        .route("/webhooks/{agent_id}/voice/status", post(twilio::call_status))
        .route("/webhooks/{agent_id}/email", post(resend::email))
}

/// A Twilio reply: `text/xml`, no prolog; the empty one is exactly `<Response/>`.
fn twiml(status: StatusCode, body: impl Into<String>) -> Response {
    (status, [(header::CONTENT_TYPE, "text/xml; charset=utf-8")], body.into()).into_response()
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

/// A refusal that names no agent of ours (an `:agentId` that is no agent, or not even an id) or
/// no target of the agent's (a number, address or call that is not its own): counted in
/// `commguard_webhook_rejections_total` like every other refusal; there is no agent stream to
/// record it on, or (a target) nothing of the agent's was touched.
fn turned_away(app: &AppState, route: &str, reason: &str) {
    app.metrics.webhook_rejected(route, reason);
}

/// A refusal of a request for a known agent: counted, and recorded as `WebhookRejected`.
async fn reject(app: &AppState, agent: &AgentView, provider: &str, route: &str, reason: &str, ip: &ClientIp) {
    app.metrics.webhook_rejected(route, reason);
    let mut context = context(app, provider, agent);
    context.provenance.fail(reason, format!("webhook {route} rejected: {reason}"));
    let event =
        AgentEvent::WebhookRejected { route: route.into(), reason: reason.into(), ip_ref: app.lockout.ip_ref(ip.0) };
    record(app, agent, event, &context).await;
}

/// Set by the hardening layer (`http::ip_filter`) on a request to a webhook route from an IP
/// outside `WEBHOOK_IP_ALLOWLIST`: the handler refuses it at once (docs/webhooks.md#twilio-routes step 1), recording the
/// refusal on the agent's stream when the agent exists.
#[derive(Clone, Copy, Debug)]
pub struct IpRefused;

/// Whether `path` is a Twilio webhook route (`/webhooks/:agentId/sms`, `/call-status`,
/// `/voice/status`), whose answers are TwiML, errors included.
pub fn twilio_path(path: &str) -> bool {
    matches!(segments(path).as_slice(), [_, "sms" | "call-status"] | [_, "voice", "status"])
}

/// Whether `path` is one of the webhook routes (Twilio's or `/webhooks/:agentId/email`).
pub fn route_path(path: &str) -> bool {
    twilio_path(path) || matches!(segments(path).as_slice(), [_, "email"])
}

/// The segments of `path` after `/webhooks/`, the agent id first.
fn segments(path: &str) -> Vec<&str> {
    match path.strip_prefix("/webhooks/") {
        Some(rest) if !rest.starts_with('/') => rest.split('/').collect(),
        _ => Vec::new(),
    }
}

/// The answer to a webhook request refused by the IP allowlist: TwiML on Twilio routes, JSON on
/// the others.
pub fn ip_refusal(path: &str) -> Response {
    if twilio_path(path) {
        empty(StatusCode::FORBIDDEN)
    } else {
        json_error(StatusCode::FORBIDDEN, "Forbidden")
    }
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

#[cfg(test)]
mod tests {
    use super::{route_path, twilio_path};

    #[test]
    fn webhook_routes_are_told_apart_by_their_paths() {
        for twilio in ["/webhooks/a1/sms", "/webhooks/a1/call-status", "/webhooks/a1/voice/status"] {
            assert!(twilio_path(twilio) && route_path(twilio), "{twilio}");
        }
        assert!(!twilio_path("/webhooks/a1/email") && route_path("/webhooks/a1/email"));
        for other in ["/webhooks", "/webhooks/", "/webhooks//sms", "/webhooks/a1/sms/x", "/webhooks/a1/voice", "/sms"] {
            assert!(!route_path(other), "{other}");
        }
    }
}

//! Resend's webhook (docs/webhooks.md#email): a received email (forwarded to the agent platform) and a
//! complaint (the address listed, its email consents revoked). The handler receives a request
//! already through the docs/webhooks.md#twilio-routes gate (`gate::ResendRequest`, Svix-verified over the raw body).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use commguard_domain::agent::AgentEvent;
use commguard_domain::pii::{Pii, RetentionClass};
use serde_json::Value;
use uuid::Uuid;

use super::gate::ResendRequest;
use super::{forward, json_error, ok, record, reject, turned_away};
use crate::contacts::{self, Address};
use crate::state::AppState;
use crate::validate;

/// `Name <addr>` or a bare address, normalised.
fn mailbox(value: &str) -> Option<String> {
    let inner = match (value.rfind('<'), value.rfind('>')) {
        (Some(open), Some(close)) if open < close => &value[open + 1..close],
        _ => value,
    };
    validate::email("address", inner).ok()
}

/// The normalised addresses of a Resend `to`/`from` field (a string or a list); public for the
/// fuzz target of the Svix body parsing.
pub fn addresses(value: &Value) -> Vec<String> {
    match value {
        Value::String(s) => mailbox(s).into_iter().collect(),
        Value::Array(items) => items.iter().filter_map(Value::as_str).filter_map(mailbox).collect(),
        _ => Vec::new(),
    }
}

/// `POST /webhooks/:agentId/email` (docs/webhooks.md#email).
pub async fn email(State(app): State<AppState>, request: ResendRequest) -> Response {
    let response = email_handler(&app, &request).await;
    request.settle(&app, response).await
}

/// Step 3 of docs/webhooks.md#email, its nonce claimed.
async fn email_handler(app: &AppState, request: &ResendRequest) -> Response {
    let (agent, body, ip) = (&request.agent, &request.body, &request.ip);
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        reject(app, agent, "resend", "email", "malformed", ip, &request.checks).await;
        return json_error(StatusCode::BAD_REQUEST, "Invalid JSON body");
    };
    let context = request.checks.context(app, "resend", agent);
    let data = &payload["data"];
    match payload["type"].as_str() {
        Some("email.received") => {
            let from = data.get("from").map(addresses).unwrap_or_default();
            let to = data.get("to").map(addresses).unwrap_or_default();
            let (Some(from), false) = (from.into_iter().next(), to.is_empty()) else {
                reject(app, agent, "resend", "email", "malformed", ip, &request.checks).await;
                return json_error(StatusCode::BAD_REQUEST, "Missing from or to");
            };
            let own = agent.address("email").map(str::to_lowercase);
            let Some(own) = own.filter(|own| to.contains(own)) else {
                turned_away(app, "email", "unknown_target");
                return json_error(StatusCode::NOT_FOUND, "Agent not found");
            };
            let subject = data["subject"].as_str().map(str::to_string);
            let text = data["text"].as_str().or_else(|| data["html"].as_str()).unwrap_or_default().to_string();
            let accepted = agent.accepts("email");
            let forwarded = accepted && app.config.agentos_callback_url.is_some();
            let message_id = Uuid::new_v4();
            let sealed = |value: &str| Pii::subject_retained(value, from.clone(), RetentionClass::Messages);
            let event = AgentEvent::MessageReceived {
                message_id,
                channel: "email".into(),
                from: Pii::subject(from.clone()),
                to: own.clone(),
                subject: subject.as_deref().map(sealed),
                body: sealed(&text),
                external_id: data["email_id"].as_str().unwrap_or_default().to_string(),
                keyword: None,
                dropped: !accepted,
                forwarded,
            };
            record(app, agent, event, &context).await;
            if accepted {
                let inbound = forward::Inbound {
                    agent_id: agent.agent_id.clone(),
                    org_id: agent.org_id.clone(),
                    channel: "email",
                    message_id,
                    from,
                    to: own,
                    body: text,
                    subject,
                    received_at: app.clock.now(),
                };
                forward::spawn(app, inbound);
            }
            ok()
        }
        Some("email.complained") => {
            let Some(complainer) = data.get("to").map(addresses).and_then(|a| a.into_iter().next()) else {
                reject(app, agent, "resend", "email", "malformed", ip, &request.checks).await;
                return json_error(StatusCode::BAD_REQUEST, "Missing from or to");
            };
            let address = Address { value: complainer, kind: "email" };
            match contacts::complaint(app, &agent.org_id, &agent.agent_id, &address, &context).await {
                Ok(()) => ok(),
                Err(e) => e.into_response(),
            }
        }
        _ => ok(),
    }
}

//! Forwarding inbound messages to the agent platform (docs/webhooks.md#forwarding): an asynchronous, signed
//! POST to `AGENTOS_CALLBACK_URL` (`{agentId}` substituted), tried 3 times 1 s, 5 s and 25 s
//! apart; after the last failure an `InboundForwardFailed` is recorded.

use std::time::Duration;

use chrono::{DateTime, Utc};
use commguard_domain::agent::AgentEvent;
use serde_json::json;
use uuid::Uuid;

use super::signature::callback_signature;
use crate::state::AppState;
use crate::store::{rfc3339, Actor, CommandContext};

pub struct Inbound {
    pub agent_id: String,
    pub org_id: String,
    pub channel: &'static str,
    pub message_id: Uuid,
    pub from: String,
    pub to: String,
    pub body: String,
    pub subject: Option<String>,
    pub received_at: DateTime<Utc>,
}

const PAUSES: [Duration; 2] = [Duration::from_secs(5), Duration::from_secs(25)];
const FIRST: Duration = Duration::from_secs(1);

/// Starts forwarding `inbound` in the background, if a callback URL is configured.
pub fn spawn(app: &AppState, inbound: Inbound) {
    let Some(url) = app.config.agentos_callback_url.as_ref() else { return };
    let url = url.replace("{agentId}", &inbound.agent_id);
    let app = app.clone();
    tokio::spawn(async move {
        let mut payload = json!({
            "type": "inbound_message", "agentId": inbound.agent_id, "channel": inbound.channel,
            "messageId": inbound.message_id, "from": inbound.from, "to": inbound.to, "body": inbound.body,
            "receivedAt": rfc3339(inbound.received_at),
        });
        if let Some(subject) = &inbound.subject {
            payload["subject"] = json!(subject);
        }
        let body = payload.to_string();
        let secret = app.config.callback_signing_secret.as_ref().map(|s| s.0.clone()).unwrap_or_default();
        let mut last_error = String::new();
        tokio::time::sleep(FIRST).await;
        for attempt in 0..3 {
            if attempt > 0 {
                tokio::time::sleep(PAUSES[attempt - 1]).await;
            }
            let ts = app.clock.now().timestamp();
            let sent = app
                .http
                .post(&url)
                .header("content-type", "application/json")
                .header("x-commguard-timestamp", ts.to_string())
                .header("x-commguard-signature", callback_signature(&secret, ts, &body))
                .body(body.clone())
                .timeout(Duration::from_secs(10))
                .send()
                .await;
            match sent {
                Ok(r) if r.status().is_success() => return,
                Ok(r) => last_error = format!("callback answered {}", r.status()),
                Err(e) => last_error = format!("callback unreachable: {e}"),
            }
        }
        let context = CommandContext::new(Actor::system("forwarder"), "system", app.clock.now()).in_org(inbound.org_id);
        let event = AgentEvent::InboundForwardFailed { message_id: inbound.message_id, attempts: 3, last_error };
        if let Err(e) = app.store.record("agent", &inbound.agent_id, &[event], &context).await {
            tracing::error!(error = %e, "InboundForwardFailed not recorded");
        }
    });
}

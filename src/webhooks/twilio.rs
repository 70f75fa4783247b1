//! Twilio's webhooks (docs/webhooks.md): inbound SMS with the STOP/START/HELP keywords, and
//! call-status callbacks (a finished call's cost, its recording). Each handler receives a request
//! already through the docs/webhooks.md#twilio-routes gate (`gate::TwilioRequest`).

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use commguard_domain::agent::AgentEvent;
use commguard_domain::pii::{Pii, RetentionClass};
use commguard_projections::contact::read::{self, CallRow};
use uuid::Uuid;

use super::gate::{Form, TwilioRequest, TwilioRoute};
use super::{empty, forward, message_reply, record, reject, replay, turned_away};
use crate::contacts;
use crate::error::ApiError;
use crate::ledger::reservations;
use crate::providers as provider;
use crate::providers::credentials;
use crate::state::AppState;
use crate::validate;

/// `POST /webhooks/:agentId/sms`: its nonce is the message sid.
pub struct Sms;

impl TwilioRoute for Sms {
    const ROUTE: &'static str = "sms";

    fn nonce(form: &Form) -> Option<String> {
        Some(format!("twilio:sms:{}", form.param("MessageSid")?))
    }
}

/// `POST /webhooks/:agentId/call-status` and `/voice/status`: its nonce is the call sid and
/// status.
pub struct CallStatus;

impl TwilioRoute for CallStatus {
    const ROUTE: &'static str = "call-status";

    fn nonce(form: &Form) -> Option<String> {
        Some(format!("twilio:status:{}:{}", form.param("CallSid")?, form.param("CallStatus")?))
    }
}

/// docs/webhooks.md#sms-keywords: the body, trimmed of Unicode whitespace, equal to a keyword (any case).
fn keyword(body: &str) -> Option<(&'static str, String)> {
    let word = body.trim().to_uppercase();
    let kind = match word.as_str() {
        "STOP" | "STOPALL" | "UNSUBSCRIBE" | "CANCEL" | "END" | "QUIT" | "REVOKE" | "OPTOUT" => "stop",
        "START" | "UNSTOP" | "YES" => "start",
        "HELP" | "INFO" => "help",
        _ => return None,
    };
    Some((kind, word))
}

const STOP_REPLY: &str =
    "You have been unsubscribed and will not receive further messages. Reply START to resubscribe.";
const START_REPLY: &str = "You have been resubscribed. Reply STOP to unsubscribe.";

/// `POST /webhooks/:agentId/sms` (docs/webhooks.md#sms).
pub async fn sms(State(app): State<AppState>, request: TwilioRequest<Sms>) -> Response {
    let response = sms_handler(&app, &request).await;
    request.settle(&app, response).await
}

/// Step 5 of an inbound SMS, its nonce claimed.
async fn sms_handler(app: &AppState, request: &TwilioRequest<Sms>) -> Response {
    let (agent, ip) = (&request.agent, &request.ip);
    let sid = request.param("MessageSid").unwrap_or_default();
    let (Some(from), Some(to)) = (request.param("From"), request.param("To")) else {
        reject(app, agent, "twilio", "sms", "malformed", ip, &request.checks).await;
        return empty(StatusCode::BAD_REQUEST);
    };
    let (Ok(from), Ok(to)) = (contacts::address("From", from), validate::phone("To", to)) else {
        reject(app, agent, "twilio", "sms", "malformed", ip, &request.checks).await;
        return empty(StatusCode::BAD_REQUEST);
    };
    if agent.address("phone") != Some(to.as_str()) {
        turned_away(app, "sms", "unknown_target");
        return empty(StatusCode::NOT_FOUND);
    }
    let context = request.checks.context(app, "twilio", agent);
    let text = request.param("Body").unwrap_or_default().to_string();
    let received = |keyword: Option<String>, dropped: bool, forwarded: bool| AgentEvent::MessageReceived {
        message_id: Uuid::new_v4(),
        channel: "sms".into(),
        from: Pii::subject(from.value.clone()),
        to: to.clone(),
        subject: None,
        body: Pii::subject_retained(text.clone(), from.value.clone(), RetentionClass::Messages),
        external_id: sid.to_string(),
        keyword,
        dropped,
        forwarded,
    };
    if !agent.accepts("sms") {
        record(app, agent, received(None, true, false), &context).await;
        return empty(StatusCode::OK);
    }
    let replies = app.config.sms_keyword_replies;
    let reply_or_empty = |text: &str| if replies { message_reply(text) } else { empty(StatusCode::OK) };
    match keyword(&text) {
        Some(("stop", word)) => {
            match contacts::stop(app, &agent.org_id, &agent.agent_id, &from, &word, &context).await {
                Ok(()) => reply_or_empty(STOP_REPLY),
                Err(e) => failed(e),
            }
        }
        Some(("start", word)) => {
            match contacts::start(app, &agent.org_id, &agent.agent_id, &from, &word, &context).await {
                Ok(()) => reply_or_empty(START_REPLY),
                Err(e) => failed(e),
            }
        }
        Some((_, _)) => {
            record(app, agent, received(Some("help".into()), false, false), &context).await;
            reply_or_empty(&app.config.sms_help_text)
        }
        None => {
            let event = received(None, false, app.config.agentos_callback_url.is_some());
            let message_id = match &event {
                AgentEvent::MessageReceived { message_id, .. } => *message_id,
                _ => unreachable!("built as MessageReceived"),
            };
            record(app, agent, event, &context).await;
            let inbound = forward::Inbound {
                agent_id: agent.agent_id.clone(),
                org_id: agent.org_id.clone(),
                channel: "sms",
                message_id,
                from: from.value.clone(),
                to: to.clone(),
                body: text.clone(),
                subject: None,
                received_at: app.clock.now(),
            };
            forward::spawn(app, inbound);
            empty(StatusCode::OK)
        }
    }
}

fn failed(e: ApiError) -> Response {
    tracing::error!(error = %e.message, "webhook handler failed");
    empty(StatusCode::INTERNAL_SERVER_ERROR)
}

const CALL_STATUSES: [&str; 9] =
    ["queued", "initiated", "ringing", "in-progress", "completed", "busy", "failed", "no-answer", "canceled"];
const TERMINAL: [&str; 5] = ["completed", "busy", "failed", "no-answer", "canceled"];

/// The agent's call with provider id `sid`. A callback may outrun the calls projection by a few
/// milliseconds, so a miss waits once for the projection to pass every event committed so far
/// (the call was placed before its callback). Not `feed::head_position`: that stops at the
/// horizon, which a transaction in flight anywhere in the cluster holds below the `CallPlaced`.
async fn find_call(app: &AppState, agent_id: &str, sid: &str) -> Result<Option<CallRow>, ApiError> {
    let lookup = || read::call_by_external_id(&app.pool, agent_id, sid);
    if let Some(found) = lookup().await.map_err(ApiError::internal)? {
        return Ok(Some(found));
    }
    let committed: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events")
        .fetch_one(&app.pool)
        .await
        .map_err(ApiError::internal)?;
    app.store.await_projection("calls", committed).await.map_err(ApiError::internal)?;
    lookup().await.map_err(ApiError::internal)
}

/// `POST /webhooks/:agentId/call-status` and `/voice/status` (docs/webhooks.md#call-status).
pub async fn call_status(State(app): State<AppState>, request: TwilioRequest<CallStatus>) -> Response {
    let response = call_status_handler(&app, &request).await;
    request.settle(&app, response).await
}

/// Step 5 of a call-status callback, its nonce claimed. The call's cost is applied once, by its
/// first terminal status (across instances: `replay::mark_once` on the call); later terminal
/// statuses are recorded without a cost.
async fn call_status_handler(app: &AppState, request: &TwilioRequest<CallStatus>) -> Response {
    let (agent, ip) = (&request.agent, &request.ip);
    let sid = request.param("CallSid").unwrap_or_default();
    let status = request.param("CallStatus").unwrap_or_default();
    if !CALL_STATUSES.contains(&status) {
        reject(app, agent, "twilio", "call-status", "malformed", ip, &request.checks).await;
        return empty(StatusCode::BAD_REQUEST);
    }
    let call = match find_call(app, &agent.agent_id, sid).await {
        Ok(Some(call)) => call,
        Ok(None) => {
            turned_away(app, "call-status", "unknown_target");
            return empty(StatusCode::NOT_FOUND);
        }
        Err(e) => return failed(e),
    };
    let mut context = request.checks.context(app, "twilio", agent);
    let mut cost = None;
    if TERMINAL.contains(&status) {
        let mark = format!("call-cost:{}", call.call_id);
        let now = app.clock.now();
        // The projection already showing a terminal status settles it without a round trip.
        let first = !TERMINAL.contains(&call.status.as_str())
            && match replay::mark_once(&app.pool, &mark, now).await {
                Ok(first) => first,
                Err(e) => return failed(ApiError::internal(e)),
            };
        if !first {
            context.provenance.skip("cost", "applied by an earlier terminal status");
        } else {
            match call_cost(app, &agent.org_id, &call.provider, sid).await {
                Some(price) => {
                    if let Err(e) = reservations::add_cost(&app.pool, &agent.agent_id, &agent.org_id, now, price).await
                    {
                        // Give the mark back with the nonce: the retry applies the cost.
                        if let Err(e) = replay::release(&app.pool, &mark, now).await {
                            tracing::error!(error = %e, call_id = %call.call_id, "call cost mark not given back");
                        }
                        return failed(e);
                    }
                    context.provenance.pass("cost");
                    cost = Some(price);
                }
                None => {
                    // Priced later (`price_unpriced_calls`): the mark stays spent, so the price is
                    // added once, by whoever gets it.
                    if let Err(e) = unpriced(app, &agent.agent_id, &agent.org_id, &call, sid, status).await {
                        if let Err(e) = replay::release(&app.pool, &mark, now).await {
                            tracing::error!(error = %e, call_id = %call.call_id, "call cost mark not given back");
                        }
                        return failed(e);
                    }
                    context.provenance.skip("cost", "no price from the provider yet: added when it has one");
                }
            }
        }
    }
    // A recording is about the call's recipient: it is sealed under the very subject key that
    // seals the call's `to` (never the callback's own `To`, which names nobody we checked) and the
    // voicemail retention key. Erasing the recipient, before or after the recording arrives, or
    // the voicemail class expiring, leaves the reference unreadable. A recipient already erased
    // (or unknown) keeps no reference at all.
    let recording_url = match (request.param("RecordingUrl"), call.to_key) {
        (Some(url), Some(key)) => match app.store.keystore().lookup(&[key]).await {
            Ok(live) if live.contains_key(&key) => {
                context.provenance.pass("recording_subject");
                Some(Pii::under_key_retained(url, key, RetentionClass::Voicemail))
            }
            Ok(_) => {
                context.provenance.skip("recording_subject", "the call's recipient was erased: reference not kept");
                None
            }
            Err(e) => return failed(ApiError::internal(e)),
        },
        (Some(_), None) => {
            context.provenance.skip("recording_subject", "the call's recipient is unknown: reference not kept");
            None
        }
        (None, _) => None,
    };
    let event = AgentEvent::CallStatusChanged {
        call_id: call.call_id,
        kind: call.kind.clone(),
        status: status.into(),
        duration_seconds: request.param("CallDuration").and_then(|d| d.parse().ok()),
        cost,
        recording_url,
    };
    record(app, agent, event, &context).await;
    empty(StatusCode::OK)
}

/// How long a call is asked about before its price is given up on.
const PRICE_FOR: chrono::TimeDelta = chrono::TimeDelta::hours(24);
/// Calls one run asks Twilio about at most.
const PRICES_PER_RUN: i64 = 50;

/// A finished call Twilio has not priced yet: asked about again from a minute on (migration 0035).
async fn unpriced(
    app: &AppState,
    agent_id: &str,
    org_id: &str,
    call: &CallRow,
    sid: &str,
    status: &str,
) -> Result<(), ApiError> {
    sqlx::query(
        "INSERT INTO unpriced_calls (call_id, agent_id, org_id, sid, placed_at, status, next_try)
         VALUES ($1, $2, $3, $4, $5, $6, $7 + interval '60 seconds') ON CONFLICT (call_id) DO NOTHING",
    )
    .bind(call.call_id)
    .bind(agent_id)
    .bind(org_id)
    .bind(sid)
    .bind(call.placed_at)
    .bind(status)
    .bind(app.clock.now())
    .execute(&app.pool)
    .await
    .map(|_| ())
    .map_err(ApiError::internal)
}

/// One row of `unpriced_calls`, claimed by this run.
#[derive(sqlx::FromRow)]
struct Unpriced {
    call_id: Uuid,
    agent_id: String,
    org_id: String,
    sid: String,
    placed_at: chrono::DateTime<chrono::Utc>,
    status: String,
    attempts: i32,
}

/// Asks Twilio again for the price of the calls whose turn has come (a task on every instance):
/// a price found is added to the spend of the day and month it is found (as the usage and billing
/// views count the event that records it) and recorded as the call's `CallStatusChanged` with its
/// cost; a call still unpriced is asked about again after a pause that doubles (1 minute to 1
/// hour), for `PRICE_FOR` after it was placed. Returns how many calls it priced.
pub async fn price_unpriced_calls(app: &AppState) -> Result<usize, sqlx::Error> {
    let now = app.clock.now();
    // Claimed by moving their turn ahead: another instance's run skips them meanwhile.
    let due: Vec<Unpriced> = sqlx::query_as(
        "UPDATE unpriced_calls u
            SET attempts = u.attempts + 1,
                next_try = $1 + make_interval(secs => least(3600, 60 * 2 ^ least(u.attempts + 1, 6)))
          WHERE u.call_id IN (SELECT call_id FROM unpriced_calls WHERE next_try <= $1
                               ORDER BY next_try LIMIT $2 FOR UPDATE SKIP LOCKED)
         RETURNING u.call_id, u.agent_id, u.org_id, u.sid, u.placed_at, u.status, u.attempts",
    )
    .bind(now)
    .bind(PRICES_PER_RUN)
    .fetch_all(&app.pool)
    .await?;
    let mut priced = 0;
    for call in due {
        let Some(price) = call_cost(app, &call.org_id, "twilio", &call.sid).await else {
            if now - call.placed_at > PRICE_FOR {
                tracing::warn!(call_id = %call.call_id, attempts = call.attempts, "no price from Twilio; given up");
                sqlx::query("DELETE FROM unpriced_calls WHERE call_id = $1")
                    .bind(call.call_id)
                    .execute(&app.pool)
                    .await?;
            }
            continue;
        };
        // Taken out and added in one statement: the price is added once, or the call stays for the
        // next run (whose turn the claim has already moved ahead).
        let added: Option<i32> = sqlx::query_scalar(
            "WITH taken AS (DELETE FROM unpriced_calls WHERE call_id = $1 RETURNING 1)
             SELECT 1 FROM taken, LATERAL (SELECT settle_action_cost($2, $3, $4, $5)) settled",
        )
        .bind(call.call_id)
        .bind(&call.agent_id)
        .bind(&call.org_id)
        .bind(now)
        .bind(price)
        .fetch_optional(&app.pool)
        .await?;
        if added.is_none() {
            continue;
        }
        let mut context = crate::store::CommandContext::new(crate::store::Actor::system("pricing"), "job", now)
            .in_org(call.org_id.clone());
        context
            .provenance
            .pass_with("cost", format!("priced by Twilio after the call ended (attempt {})", call.attempts));
        let Ok(Some(row)) = read::call_by_external_id(&app.pool, &call.agent_id, &call.sid).await else {
            tracing::error!(call_id = %call.call_id, "priced call not found; its price is added, not recorded");
            continue;
        };
        let event = AgentEvent::CallStatusChanged {
            call_id: call.call_id,
            kind: row.kind,
            status: call.status.clone(),
            duration_seconds: None,
            cost: Some(price),
            recording_url: None,
        };
        if let Err(e) = app.store.record("agent", &call.agent_id, &[event], &context).await {
            tracing::error!(error = %e, call_id = %call.call_id, "call price added but not recorded");
        }
        priced += 1;
    }
    Ok(priced)
}

/// A finished call's cost: |price| from Twilio's Calls API; mock calls cost nothing. `None` when
/// Twilio has no price yet (or cannot be asked): the event then carries no cost, never a 0 that
/// would read as final, and the call is asked about again later (`unpriced`); a failed lookup
/// never fails the callback.
async fn call_cost(app: &AppState, org_id: &str, provider: &str, sid: &str) -> Option<i64> {
    if provider != "twilio" {
        return Some(0);
    }
    let credentials = match credentials::resolve(&app.pool, &app.credential_keys, &app.config, org_id, "twilio").await {
        Ok(Some(c)) => c,
        Ok(None) => {
            tracing::warn!(call_sid = sid, "call price unavailable: no Twilio credentials");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e.message, call_sid = sid, "call price unavailable: credentials");
            return None;
        }
    };
    let price = async { provider::Twilio::of(&app.http, &app.config, &credentials)?.call_price(sid).await };
    match price.await {
        Ok(price) => price,
        Err(e) => {
            tracing::warn!(error = %e.0, call_sid = sid, "call price unavailable");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::keyword;

    #[test]
    fn keywords_are_the_whole_body_trimmed_of_unicode_whitespace() {
        assert_eq!(keyword("\u{00A0}stop\u{3000}"), Some(("stop", "STOP".to_string())));
        assert_eq!(keyword(" OptOut\n").map(|k| k.0), Some("stop"));
        assert_eq!(keyword("yes").map(|k| k.0), Some("start"));
        assert_eq!(keyword("info").map(|k| k.0), Some("help"));
        assert_eq!(keyword("STOP."), None);
        assert_eq!(keyword("stop please"), None);
    }
}

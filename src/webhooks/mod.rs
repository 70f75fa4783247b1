//! Provider webhooks (CONTRACT §8): inbound SMS and call-status callbacks from Twilio, inbound
//! email and complaints from Resend (Svix-signed). Every request passes, in order: IP allowlist
//! (in the hardening layer), the agent, the signature (failing closed), replay protection shared
//! through Postgres, then its handler. Refusals after the agent is known are recorded as
//! `WebhookRejected`; what a webhook changes is recorded as the events of §11.3. A nonce is
//! claimed before the handler runs and given back if the handler fails (5xx), so the provider's
//! retry is processed rather than refused as a replay; final answers (2xx, 4xx) keep it.

mod forward;
pub mod replay;
pub mod signature;

use axum::body::Bytes;
use axum::extract::rejection::PathRejection;
use axum::extract::{OriginalUri, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Extension, Json, Router};
use chrono::{DateTime, Utc};
use commguard_domain::agent::AgentEvent;
use commguard_domain::pii::{Pii, RetentionClass};
use serde_json::{json, Value};
use uuid::Uuid;

use commguard_projections::contact::read::{self, CallRow};

use crate::contacts::{self, Address};
use crate::directory::{self, AgentView};
use crate::error::{ApiError, ErrorCode};
use crate::http::client_ip::ClientIp;
use crate::outbound::actions::xml_escape;
use crate::outbound::limits;
use crate::providers as provider;
use crate::providers::credentials;
use crate::state::AppState;
use crate::store::{Actor, ActorKind, CommandContext};
use crate::validate;
use replay::Claim;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/webhooks/{agent_id}/sms", post(sms))
        .route("/webhooks/{agent_id}/call-status", post(call_status))
        .route("/webhooks/{agent_id}/voice/status", post(call_status))
        .route("/webhooks/{agent_id}/email", post(email))
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
/// outside `WEBHOOK_IP_ALLOWLIST`: the handler refuses it at once (§8.1 step 1), recording the
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

/// The `:agentId` of a webhook route. Unauthenticated callers reach the agent lookup with it, so
/// text Postgres cannot store (U+0000) or that is not UTF-8 is refused first (400: `<Response/>`
/// on Twilio routes, §7 JSON on `/email`); no agent can have such an id, so nothing is recorded.
fn agent_param(param: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(agent_id) =
        param.map_err(|e| ApiError::new(ErrorCode::InvalidInput, format!("Invalid path: {}", e.body_text())))?;
    validate::storable("agentId", &agent_id)?;
    Ok(agent_id)
}

/// Step 1 for a request the allowlist refused: 403, and `WebhookRejected(ip)` if the agent exists.
async fn refuse_ip(
    app: &AppState,
    agent_id: Option<String>,
    provider: &str,
    route: &str,
    path: &str,
    ip: &ClientIp,
) -> Response {
    let Some(agent_id) = agent_id else {
        turned_away(app, route, "ip");
        return ip_refusal(path);
    };
    let agent_id = agent_id.as_str();
    match directory::agent(&app.pool, agent_id).await {
        Ok(Some(agent)) => reject(app, &agent, provider, route, "ip", ip).await,
        Ok(None) => turned_away(app, route, "ip"),
        Err(e) => {
            turned_away(app, route, "ip");
            tracing::error!(error = %e.message, agent_id, "IP-refused webhook not recorded: agent lookup failed")
        }
    }
    ip_refusal(path)
}

/// What the signature step decided for a request it let through.
enum Signature {
    Verified,
    /// Demo mode: not checked.
    Skipped,
    /// Development without a secret: accepted, marked unverified.
    Unverified,
}

impl Signature {
    fn note(&self, context: &mut CommandContext) {
        match self {
            Self::Verified => context.provenance.pass("signature"),
            Self::Skipped => context.provenance.skip("signature", "demo mode"),
            Self::Unverified => context.provenance.skip("signature", "unverified: no webhook secret configured"),
        }
    }
}

/// A verified Twilio request: its agent, form parameters and how its signature was decided.
struct TwilioRequest {
    agent: AgentView,
    params: Vec<(String, String)>,
    signature: Signature,
}

impl TwilioRequest {
    fn param(&self, name: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str()).filter(|v| !v.is_empty())
    }
}

/// Steps 2–3 of §8.1 for a Twilio route: the agent, the form body, the signature.
async fn twilio_gate(
    app: &AppState,
    agent_id: &str,
    route: &str,
    uri: &OriginalUri,
    headers: &HeaderMap,
    body: &Bytes,
    ip: &ClientIp,
) -> Result<TwilioRequest, Response> {
    let agent = directory::agent(&app.pool, agent_id).await.map_err(|_| empty(StatusCode::SERVICE_UNAVAILABLE))?;
    let Some(agent) = agent else {
        turned_away(app, route, "unknown_agent");
        return Err(empty(StatusCode::NOT_FOUND));
    };
    let form = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"));
    if !form {
        reject(app, &agent, "twilio", route, "malformed", ip).await;
        return Err(empty(StatusCode::BAD_REQUEST));
    }
    let params: Vec<(String, String)> = form_urlencoded::parse(body).into_owned().collect();
    // Parameters become nonces and event fields: text Postgres cannot store is malformed.
    if params.iter().any(|(k, v)| k.contains('\0') || v.contains('\0')) {
        reject(app, &agent, "twilio", route, "malformed", ip).await;
        return Err(empty(StatusCode::BAD_REQUEST));
    }
    let signature = if app.config.demo_mode {
        Signature::Skipped
    } else {
        match twilio_auth_token(app, &agent.org_id).await {
            // A verifier that cannot decide fails closed.
            Err(e) => {
                tracing::error!(error = %e.message, route, agent_id, "Twilio webhook refused: auth token lookup failed");
                reject(app, &agent, "twilio", route, "signature", ip).await;
                return Err(empty(StatusCode::FORBIDDEN));
            }
            Ok(None) if app.config.env.is_production() => {
                reject(app, &agent, "twilio", route, "secret_missing", ip).await;
                return Err(empty(StatusCode::SERVICE_UNAVAILABLE));
            }
            Ok(None) => {
                tracing::warn!(route, agent_id, "Twilio webhook accepted unverified: no auth token configured");
                Signature::Unverified
            }
            Ok(Some(token)) => {
                let base = app.config.webhook_base_url.trim_end_matches('/');
                let url = match uri.0.query() {
                    Some(query) => format!("{base}{}?{query}", uri.0.path()),
                    None => format!("{base}{}", uri.0.path()),
                };
                let given = headers.get("x-twilio-signature").and_then(|v| v.to_str().ok());
                if !given.is_some_and(|g| signature::twilio_valid(&token, &url, &params, g)) {
                    reject(app, &agent, "twilio", route, "signature", ip).await;
                    return Err(empty(StatusCode::FORBIDDEN));
                }
                Signature::Verified
            }
        }
    };
    Ok(TwilioRequest { agent, params, signature })
}

/// The agent's org's effective Twilio auth token (org → platform → environment).
async fn twilio_auth_token(app: &AppState, org_id: &str) -> Result<Option<String>, ApiError> {
    let resolved = credentials::resolve(&app.pool, &app.credential_keys, &app.config, org_id, "twilio").await?;
    Ok(resolved
        .and_then(|c| c.get("authToken").map(str::to_string))
        .or_else(|| app.config.twilio_auth_token.as_ref().map(|s| s.0.clone())))
}

/// A nonce this request claimed (§8.4), at `at`.
struct Claimed {
    nonce: String,
    at: DateTime<Utc>,
}

/// Step 4: the nonce. A replay inside the window → 403; a nonce seen before the window → no effect.
async fn claim_nonce(
    app: &AppState,
    agent: &AgentView,
    provider: &str,
    route: &str,
    nonce: String,
    ip: &ClientIp,
) -> Result<Claimed, Response> {
    let window = app.config.webhook_replay_window_seconds as i64;
    let now = app.clock.now();
    match replay::claim(&app.pool, &nonce, now, window).await {
        Ok(Claim::Fresh) => Ok(Claimed { nonce, at: now }),
        Ok(Claim::Replay) => {
            reject(app, agent, provider, route, "replay", ip).await;
            Err(empty(StatusCode::FORBIDDEN))
        }
        Ok(Claim::Stale) => Err(empty(StatusCode::OK)),
        Err(e) => {
            tracing::error!(error = %e, "replay nonce not claimed");
            Err(empty(StatusCode::SERVICE_UNAVAILABLE))
        }
    }
}

/// After the handler: a failure (5xx) gives the nonce back so the provider's retry is processed;
/// a final answer (2xx, 4xx) keeps it.
async fn settle(app: &AppState, claimed: Claimed, response: Response) -> Response {
    if response.status().is_server_error() {
        if let Err(e) = replay::release(&app.pool, &claimed.nonce, claimed.at).await {
            tracing::error!(error = %e, nonce = claimed.nonce, "failed webhook's nonce not given back");
        }
    }
    response
}

/// Appendix C: the body, trimmed of Unicode whitespace, equal to a keyword (any case).
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

/// `POST /webhooks/:agentId/sms` (§8.2).
async fn sms(
    State(app): State<AppState>,
    agent_id: Result<Path<String>, PathRejection>,
    Extension(ip): Extension<ClientIp>,
    ip_refused: Option<Extension<IpRefused>>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let agent_id = agent_param(agent_id);
    if ip_refused.is_some() {
        return refuse_ip(&app, agent_id.ok(), "twilio", "sms", uri.0.path(), &ip).await;
    }
    let Ok(agent_id) = agent_id else {
        turned_away(&app, "sms", "malformed");
        return empty(StatusCode::BAD_REQUEST);
    };
    let request = match twilio_gate(&app, &agent_id, "sms", &uri, &headers, &body, &ip).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    // The nonce key's field first, then the replay check (step 4), then the handler (step 5).
    let Some(sid) = request.param("MessageSid") else {
        reject(&app, &request.agent, "twilio", "sms", "malformed", &ip).await;
        return empty(StatusCode::BAD_REQUEST);
    };
    let claimed = match claim_nonce(&app, &request.agent, "twilio", "sms", format!("twilio:sms:{sid}"), &ip).await {
        Ok(claimed) => claimed,
        Err(response) => return response,
    };
    let response = sms_handler(&app, &request, sid, &ip).await;
    settle(&app, claimed, response).await
}

/// Step 5 of an inbound SMS, its nonce claimed.
async fn sms_handler(app: &AppState, request: &TwilioRequest, sid: &str, ip: &ClientIp) -> Response {
    let agent = &request.agent;
    let (Some(from), Some(to)) = (request.param("From"), request.param("To")) else {
        reject(app, agent, "twilio", "sms", "malformed", ip).await;
        return empty(StatusCode::BAD_REQUEST);
    };
    let (Ok(from), Ok(to)) = (contacts::address("From", from), validate::phone("To", to)) else {
        reject(app, agent, "twilio", "sms", "malformed", ip).await;
        return empty(StatusCode::BAD_REQUEST);
    };
    if agent.address("phone") != Some(to.as_str()) {
        turned_away(app, "sms", "unknown_target");
        return empty(StatusCode::NOT_FOUND);
    }
    let mut context = context(app, "twilio", agent);
    request.signature.note(&mut context);
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
    if !accepts(agent, "sms") {
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

/// Active and not blocked on `channel`: inbound messages to anything else are dropped.
fn accepts(agent: &AgentView, channel: &str) -> bool {
    agent.accepts(channel)
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

/// `POST /webhooks/:agentId/call-status` and `/voice/status` (§8.3).
async fn call_status(
    State(app): State<AppState>,
    agent_id: Result<Path<String>, PathRejection>,
    Extension(ip): Extension<ClientIp>,
    ip_refused: Option<Extension<IpRefused>>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let agent_id = agent_param(agent_id);
    if ip_refused.is_some() {
        return refuse_ip(&app, agent_id.ok(), "twilio", "call-status", uri.0.path(), &ip).await;
    }
    let Ok(agent_id) = agent_id else {
        turned_away(&app, "call-status", "malformed");
        return empty(StatusCode::BAD_REQUEST);
    };
    let request = match twilio_gate(&app, &agent_id, "call-status", &uri, &headers, &body, &ip).await {
        Ok(r) => r,
        Err(response) => return response,
    };
    // The nonce key's fields first, then the replay check (step 4), then the handler (step 5).
    let (Some(sid), Some(status)) = (request.param("CallSid"), request.param("CallStatus")) else {
        reject(&app, &request.agent, "twilio", "call-status", "malformed", &ip).await;
        return empty(StatusCode::BAD_REQUEST);
    };
    let nonce = format!("twilio:status:{sid}:{status}");
    let claimed = match claim_nonce(&app, &request.agent, "twilio", "call-status", nonce, &ip).await {
        Ok(claimed) => claimed,
        Err(response) => return response,
    };
    let response = call_status_handler(&app, &request, sid, status, &ip).await;
    settle(&app, claimed, response).await
}

/// Step 5 of a call-status callback, its nonce claimed. The call's cost is applied once, by its
/// first terminal status (across instances: `replay::mark_once` on the call); later terminal
/// statuses are recorded without a cost.
async fn call_status_handler(
    app: &AppState,
    request: &TwilioRequest,
    sid: &str,
    status: &str,
    ip: &ClientIp,
) -> Response {
    let agent = &request.agent;
    if !CALL_STATUSES.contains(&status) {
        reject(app, agent, "twilio", "call-status", "malformed", ip).await;
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
    let mut context = context(app, "twilio", agent);
    request.signature.note(&mut context);
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
            match call_cost(app, agent, &call, sid).await {
                Some(price) => {
                    if let Err(e) =
                        limits::add_cost(&app.pool, &agent.agent_id, &agent.org_id, call.placed_at, price).await
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
                None => context.provenance.skip("cost", "no price from the provider yet"),
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

/// A finished call's cost: |price| from Twilio's Calls API; mock calls cost nothing. `None` when
/// Twilio has no price yet (or cannot be asked): the event then carries no cost, never a 0 that
/// would read as final; a failed lookup never fails the callback.
async fn call_cost(app: &AppState, agent: &AgentView, call: &CallRow, sid: &str) -> Option<i64> {
    if call.provider != "twilio" {
        return Some(0);
    }
    let credentials =
        match credentials::resolve(&app.pool, &app.credential_keys, &app.config, &agent.org_id, "twilio").await {
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
    match provider::twilio_call_price(&app.http, &app.config, &credentials, sid).await {
        Ok(price) => price,
        Err(e) => {
            tracing::warn!(error = %e.0, call_sid = sid, "call price unavailable");
            None
        }
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

/// The effective Svix secret of the org's Resend credentials, else `RESEND_WEBHOOK_SECRET`.
async fn svix_secret(app: &AppState, org_id: &str) -> Result<Option<String>, ApiError> {
    let resolved = credentials::resolve(&app.pool, &app.credential_keys, &app.config, org_id, "resend").await?;
    Ok(resolved
        .and_then(|c| c.get("webhookSecret").map(str::to_string))
        .or_else(|| app.config.resend_webhook_secret.as_ref().map(|s| s.0.clone())))
}

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

/// `POST /webhooks/:agentId/email` (§8.5), verified over the raw body bytes.
async fn email(
    State(app): State<AppState>,
    agent_id: Result<Path<String>, PathRejection>,
    Extension(ip): Extension<ClientIp>,
    ip_refused: Option<Extension<IpRefused>>,
    uri: OriginalUri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let agent_id = agent_param(agent_id);
    if ip_refused.is_some() {
        return refuse_ip(&app, agent_id.ok(), "resend", "email", uri.0.path(), &ip).await;
    }
    let agent_id = match agent_id {
        Ok(agent_id) => agent_id,
        Err(refusal) => {
            turned_away(&app, "email", "malformed");
            return refusal.into_response();
        }
    };
    let agent = match directory::agent(&app.pool, &agent_id).await {
        Ok(Some(agent)) => agent,
        Ok(None) => {
            turned_away(&app, "email", "unknown_agent");
            return json_error(StatusCode::NOT_FOUND, "Agent not found");
        }
        Err(e) => return e.into_response(),
    };
    let mut signature = Signature::Skipped;
    if !app.config.demo_mode {
        match svix_secret(&app, &agent.org_id).await {
            // A verifier that cannot decide fails closed.
            Err(e) => {
                tracing::error!(error = %e.message, agent_id, "email webhook refused: secret lookup failed");
                reject(&app, &agent, "resend", "email", "signature", &ip).await;
                return json_error(StatusCode::FORBIDDEN, "Invalid webhook signature");
            }
            Ok(None) if app.config.env.is_production() => {
                reject(&app, &agent, "resend", "email", "secret_missing", &ip).await;
                return json_error(StatusCode::SERVICE_UNAVAILABLE, "Webhook secret is not configured");
            }
            Ok(None) => {
                tracing::warn!(agent_id, "email webhook accepted unverified: no webhook secret configured");
                signature = Signature::Unverified;
            }
            Ok(Some(secret)) => {
                let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
                let given = signature::SvixHeaders {
                    id: header("svix-id"),
                    timestamp: header("svix-timestamp"),
                    signature: header("svix-signature"),
                };
                let tolerance = app.config.webhook_replay_window_seconds as i64;
                if let Err(refusal) =
                    signature::svix_verify(&secret, &given, &body, app.clock.now().timestamp(), tolerance)
                {
                    reject(&app, &agent, "resend", "email", "signature", &ip).await;
                    return json_error(StatusCode::FORBIDDEN, refusal.message());
                }
                signature = Signature::Verified;
            }
        }
    }
    // Replay: by svix-id whenever one is given (verified requests always have one).
    let mut claimed = None;
    if let Some(id) = headers.get("svix-id").and_then(|v| v.to_str().ok()) {
        let window = app.config.webhook_replay_window_seconds as i64;
        let (nonce, now) = (format!("svix:{id}"), app.clock.now());
        match replay::claim(&app.pool, &nonce, now, window).await {
            Ok(Claim::Fresh) => claimed = Some(Claimed { nonce, at: now }),
            Ok(Claim::Replay) => {
                reject(&app, &agent, "resend", "email", "replay", &ip).await;
                return json_error(StatusCode::FORBIDDEN, "Webhook replayed");
            }
            Ok(Claim::Stale) => return ok(),
            Err(e) => return ApiError::internal(e).into_response(),
        }
    }
    let response = email_handler(&app, &agent, &body, signature, &ip).await;
    match claimed {
        Some(claimed) => settle(&app, claimed, response).await,
        None => response,
    }
}

/// Step 3 of §8.5, its nonce claimed.
async fn email_handler(
    app: &AppState,
    agent: &AgentView,
    body: &Bytes,
    signature: Signature,
    ip: &ClientIp,
) -> Response {
    let Ok(payload) = serde_json::from_slice::<Value>(body) else {
        reject(app, agent, "resend", "email", "malformed", ip).await;
        return json_error(StatusCode::BAD_REQUEST, "Invalid JSON body");
    };
    let mut context = context(app, "resend", agent);
    signature.note(&mut context);
    let data = &payload["data"];
    match payload["type"].as_str() {
        Some("email.received") => {
            let from = data.get("from").map(addresses).unwrap_or_default();
            let to = data.get("to").map(addresses).unwrap_or_default();
            let (Some(from), false) = (from.into_iter().next(), to.is_empty()) else {
                reject(app, agent, "resend", "email", "malformed", ip).await;
                return json_error(StatusCode::BAD_REQUEST, "Missing from or to");
            };
            let own = agent.address("email").map(str::to_lowercase);
            let Some(own) = own.filter(|own| to.contains(own)) else {
                turned_away(app, "email", "unknown_target");
                return json_error(StatusCode::NOT_FOUND, "Agent not found");
            };
            let subject = data["subject"].as_str().map(str::to_string);
            let text = data["text"].as_str().or_else(|| data["html"].as_str()).unwrap_or_default().to_string();
            let accepted = accepts(agent, "email");
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
                reject(app, agent, "resend", "email", "malformed", ip).await;
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

#[cfg(test)]
mod tests {
    use super::{keyword, route_path, twilio_path};

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

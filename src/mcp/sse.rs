//! Legacy HTTP+SSE (docs/mcp.md#legacy-httpsse, MCP 2024-11-05): `GET /sse` opens a session and its event
//! stream (`endpoint` first, then one `message` event per JSON-RPC reply, `: ping` every 15 s);
//! `POST /messages?sessionId=` carries requests, answered 202 with the reply on the stream.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;

use super::{admit_to_session, claim_param, open_claim, protocol};
use crate::auth::caller::Transport;
use crate::auth::credential::{authenticate, CredentialRules};
use crate::auth::{bearer, Bearer};
use crate::error::{ApiError, ErrorCode};
use crate::http::extract::PlainQuery;
use crate::http::{ClientIp, RequestId};
use crate::sessions::{Session, Sessions};
use crate::state::AppState;
use crate::store::CommandContext;

const PING_EVERY: Duration = Duration::from_secs(15);

#[derive(Deserialize)]
pub struct OpenQuery {
    token: Option<String>,
    #[serde(rename = "agentId")]
    agent_id: Option<String>,
}

/// `GET /sse`.
pub async fn open(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    PlainQuery(query): PlainQuery<OpenQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rules = CredentialRules {
        route: "/sse",
        takes_query_token: true,
        query_token: query.token,
        missing_message: "Missing token. Use: /sse?token=<token>",
        www_authenticate: false,
    };
    let authenticated = authenticate(&app.lockout, &app.identity, &headers, ip, &rules).await?;
    let principal = authenticated.principal.clone();
    let context = open_context(&app, &principal, &request_id, Transport::Sse);
    let claim = claim_param(query.agent_id.as_deref());
    let (claim, context) = open_claim(&app, &authenticated, query.agent_id, claim, ip, "/sse", context).await?;
    authenticated.admit(&app.lockout, &app.identity, ip).await?;
    let session = app.sessions.open(principal, claim, Transport::Sse, context).await?;
    let inbox = session.take_inbox().expect("a new session has its inbox");
    let first = format!("event: endpoint\ndata: /messages?sessionId={}\n\n", session.id);
    let body = Body::from_stream(event_stream(app.sessions.clone(), session, inbox, Some(first), true));
    Ok((
        [(header::CONTENT_TYPE, "text/event-stream"), (header::HeaderName::from_static("x-accel-buffering"), "no")],
        body,
    )
        .into_response())
}

pub fn open_context(
    app: &AppState,
    principal: &crate::auth::Principal,
    request_id: &str,
    transport: Transport,
) -> CommandContext {
    let context =
        CommandContext::new(principal.actor(), transport.as_str(), app.clock.now()).with_request_id(request_id);
    match &principal.org_id {
        Some(org) => context.in_org(org.clone()),
        None => context,
    }
}

/// What a stream's end leaves behind: a legacy SSE session ends with its stream; a `GET /mcp`
/// stream gives its session's inbox back, so that the client can open the stream again.
struct StreamEnd {
    sessions: Arc<Sessions>,
    session: Arc<Session>,
    inbox: Option<mpsc::UnboundedReceiver<Value>>,
    owns_session: bool,
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        if self.owns_session {
            let (sessions, id) = (self.sessions.clone(), self.session.id.clone());
            tokio::spawn(async move { sessions.close(&id, "stream_closed").await });
        } else if let Some(inbox) = self.inbox.take() {
            self.session.give_back_inbox(inbox);
        }
    }
}

/// The event stream of a session: an optional first event, then its messages and pings, until
/// the session closes. `owns_session`: the session ends with the stream (legacy SSE); otherwise
/// the stream may end and be opened again (`GET /mcp`).
pub fn event_stream(
    sessions: Arc<Sessions>,
    session: Arc<Session>,
    inbox: mpsc::UnboundedReceiver<Value>,
    first: Option<String>,
    owns_session: bool,
) -> impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send {
    let takeovers = session.takeovers();
    let end = StreamEnd { sessions, session, inbox: Some(inbox), owns_session };
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + PING_EVERY, PING_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    futures::stream::unfold((end, first, ticker, takeovers), |(mut end, first, mut ticker, mut takeovers)| async move {
        if let Some(first) = first {
            return Some((Ok(Bytes::from(first)), (end, None, ticker, takeovers)));
        }
        let session = end.session.clone();
        let owns_session = end.owns_session;
        let inbox = end.inbox.as_mut().expect("the inbox is the stream's until it ends");
        let chunk = tokio::select! {
            biased;
            message = inbox.recv() => match message {
                Some(message) => format!("event: message\ndata: {message}\n\n"),
                None => return None,
            },
            _ = session.closed() => return None,
            // A newer `GET /mcp` stream takes the inbox over: this one ends and gives it back.
            _ = takeovers.changed(), if !owns_session => return None,
            _ = ticker.tick() => ": ping\n\n".to_string(),
        };
        Some((Ok(Bytes::from(chunk)), (end, None, ticker, takeovers)))
    })
}

#[derive(Deserialize)]
pub struct MessageQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

/// `POST /messages?sessionId=`.
pub async fn message(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    PlainQuery(query): PlainQuery<MessageQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    // (1)–(2): lockout, and a header credential if one is present.
    let header_principal = match bearer(&headers) {
        Bearer::Absent => {
            app.lockout.gate(ip, "/messages").await?;
            None
        }
        _ => {
            let rules = CredentialRules {
                route: "/messages",
                takes_query_token: false,
                query_token: None,
                missing_message: "Missing Authorization header. Use: Bearer <token>",
                www_authenticate: false,
            };
            Some(authenticate(&app.lockout, &app.identity, &headers, ip, &rules).await?)
        }
    };
    // (3) the session.
    let session = query
        .session_id
        .as_deref()
        .and_then(|id| app.sessions.get(id))
        .filter(|s| s.transport == Transport::Sse)
        .ok_or_else(|| ApiError::new(ErrorCode::NotFound, "Unknown session").with_status(StatusCode::BAD_REQUEST))?;
    // (4)–(5) the request principal must be the session's.
    // (6) the opening token and the org still stand.
    let principal = header_principal.as_ref().map_or_else(|| session.principal.clone(), |a| a.principal.clone());
    let fingerprint = header_principal.as_ref().and_then(|a| a.fingerprint());
    admit_to_session(&app, &session, &principal, ip, "/messages", fingerprint).await?;
    if let Some(authenticated) = &header_principal {
        authenticated.admit(&app.lockout, &app.identity, ip).await?;
    }
    // (7) the message itself.
    if !is_json(&headers) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "Content-Type must be application/json"));
    }
    let messages = protocol::parse(&body)
        .map_err(|e| ApiError::new(ErrorCode::InvalidInput, format!("Invalid message: {e}")))?
        .messages;
    tokio::spawn(async move {
        for message in messages {
            if let Some(reply) = protocol::handle(&app, &session, &principal, &request_id, message).await {
                session.send(reply);
            }
        }
    });
    Ok(StatusCode::ACCEPTED.into_response())
}

pub fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

//! Streamable HTTP at `/mcp` (docs/mcp.md#streamable-http, MCP 2025-03-26 / 2025-06-18): a bearer on every
//! request, `initialize` without `Mcp-Session-Id` opens a session, replies come back as JSON,
//! `GET` is the server's notification stream and `DELETE` ends the session.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;
use serde_json::Value;

use super::protocol::{self, Message, STREAMABLE_VERSIONS};
use super::sse::{event_stream, is_json, open_context};
use super::{admit_to_session, claim_param, open_claim};
use crate::auth::caller::Transport;
use crate::auth::credential::{authenticate, Authenticated, CredentialRules};
use crate::error::{ApiError, ErrorCode};
use crate::http::extract::PlainQuery;
use crate::http::{ClientIp, RequestId};
use crate::sessions::Session;
use crate::state::AppState;
use crate::validate::invalid;

const SESSION_HEADER: &str = "mcp-session-id";

fn rules() -> CredentialRules {
    CredentialRules {
        route: "/mcp",
        // `?token=` is ignored on /mcp: the credential is the bearer header only.
        takes_query_token: false,
        query_token: None,
        missing_message: "Missing Authorization header. Use: Bearer <token>",
        www_authenticate: true,
    }
}

#[derive(Deserialize)]
pub struct McpQuery {
    #[serde(rename = "agentId")]
    agent_id: Option<String>,
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::trim).filter(|v| !v.is_empty())
}

fn accepts(headers: &HeaderMap, wanted: &[&str]) -> bool {
    let accept = headers.get_all(header::ACCEPT).iter().filter_map(|v| v.to_str().ok()).collect::<Vec<_>>().join(",");
    wanted
        .iter()
        .all(|w| accept.split(',').any(|part| part.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case(w))))
}

/// The claim of an `initialize` (docs/mcp.md#sessions): `X-Agent-Id` or `?agentId=`, both and different
/// → 400. A header that is not visible ASCII is refused, not ignored; so is text Postgres cannot
/// store.
fn claim_input(headers: &HeaderMap, query: Option<&str>) -> Result<Option<String>, ApiError> {
    let header = match headers.get("x-agent-id") {
        None => None,
        Some(value) => {
            let text = value.to_str().map_err(|_| invalid("X-Agent-Id", "must be visible ASCII (an agent id)"))?.trim();
            (!text.is_empty()).then_some(text)
        }
    };
    let query = claim_param(query)?;
    match (header, query) {
        (Some(h), Some(q)) if h != q => Err(ApiError::new(ErrorCode::InvalidInput, "X-Agent-Id and agentId disagree")),
        (Some(h), _) => Ok(Some(h.to_string())),
        (None, q) => Ok(q),
    }
}

/// The session a request names, which must belong to the request's principal.
async fn existing_session(
    app: &AppState,
    headers: &HeaderMap,
    authenticated: &Authenticated,
    ip: std::net::IpAddr,
) -> Result<Arc<Session>, ApiError> {
    let id = header_str(headers, SESSION_HEADER)
        .ok_or_else(|| ApiError::new(ErrorCode::InvalidInput, "Missing Mcp-Session-Id header"))?;
    let session = app
        .sessions
        .get(id)
        .filter(|s| s.transport == Transport::Streamable)
        .ok_or_else(|| ApiError::not_found("Unknown or expired session"))?;
    admit_to_session(app, &session, &authenticated.principal, ip, "/mcp", authenticated.fingerprint()).await?;
    Ok(session)
}

/// `POST /mcp`.
pub async fn post(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    Extension(RequestId(request_id)): Extension<RequestId>,
    PlainQuery(query): PlainQuery<McpQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let authenticated = authenticate(&app.lockout, &app.identity, &headers, ip, &rules()).await?;
    let principal = authenticated.principal.clone();
    if !accepts(&headers, &["application/json", "text/event-stream"]) {
        return Err(ApiError::new(ErrorCode::InvalidInput, "Accept must list application/json and text/event-stream")
            .with_status(StatusCode::NOT_ACCEPTABLE));
    }
    if !is_json(&headers) {
        return Err(ApiError::new(ErrorCode::UnsupportedMediaType, "Content-Type must be application/json"));
    }
    let protocol::Parsed { messages, batch } = match protocol::parse(&body) {
        Ok(parsed) => parsed,
        // JSON-RPC's own errors (docs/mcp.md#tool-results): 400 with no id, nothing runs.
        Err(malformed) => return Ok((StatusCode::BAD_REQUEST, axum::Json(malformed.error_response())).into_response()),
    };
    let initializing = messages.iter().any(|m| matches!(m, Message::Request { method, .. } if method == "initialize"));

    let (session, opened) = if header_str(&headers, SESSION_HEADER).is_none() && initializing {
        let context = open_context(&app, &principal, &request_id, Transport::Streamable);
        let claim = claim_input(&headers, query.agent_id.as_deref());
        let offered = match headers.get("x-agent-id") {
            Some(header) => Some(String::from_utf8_lossy(header.as_bytes()).trim().to_string()),
            None => query.agent_id,
        };
        let (claim, context) = open_claim(&app, &authenticated, offered, claim, ip, "/mcp", context).await?;
        authenticated.admit(&app.lockout, &app.identity, ip).await?;
        let session = app.sessions.open(principal.clone(), claim, Transport::Streamable, context).await?;
        (session, true)
    } else {
        let session = existing_session(&app, &headers, &authenticated, ip).await?;
        authenticated.admit(&app.lockout, &app.identity, ip).await?;
        supported_version(&headers)?;
        (session, false)
    };

    let requests = messages.iter().filter(|m| m.is_request()).count();
    let mut replies = Vec::with_capacity(requests);
    for message in messages {
        if let Some(reply) = protocol::handle(&app, &session, &principal, &request_id, message).await {
            replies.push(reply);
        }
    }
    let mut response = if replies.is_empty() {
        StatusCode::ACCEPTED.into_response()
    } else {
        let body = if batch { Value::Array(replies) } else { replies.pop().expect("one reply") };
        ([(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    };
    if opened {
        let id = HeaderValue::from_str(&session.id).expect("session ids are hex");
        response.headers_mut().insert(SESSION_HEADER, id);
    }
    Ok(response)
}

/// Every request of an open session may name its protocol version; one this server does not
/// speak is refused (400), whatever the method.
fn supported_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match header_str(headers, "mcp-protocol-version") {
        Some(version) if !STREAMABLE_VERSIONS.contains(&version) => {
            Err(ApiError::new(ErrorCode::InvalidInput, format!("Unsupported MCP-Protocol-Version: {version}")))
        }
        _ => Ok(()),
    }
}

/// How long a new `GET /mcp` stream waits for the open one to hand the inbox over.
const TAKE_OVER_WITHIN: std::time::Duration = std::time::Duration::from_secs(2);

/// `GET /mcp`: the session's notification stream.
pub async fn get(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let authenticated = authenticate(&app.lockout, &app.identity, &headers, ip, &rules()).await?;
    if !accepts(&headers, &["text/event-stream"]) {
        return Err(ApiError::new(ErrorCode::InvalidInput, "Accept must list text/event-stream")
            .with_status(StatusCode::NOT_ACCEPTABLE));
    }
    let session = existing_session(&app, &headers, &authenticated, ip).await?;
    authenticated.admit(&app.lockout, &app.identity, ip).await?;
    supported_version(&headers)?;
    // The newest stream wins: the one open ends and hands its inbox over (a reconnecting client
    // need not wait until its old connection's end is noticed). Only a stream that cannot end
    // within the wait (its connection stuck in a write) leaves the newcomer refused.
    let inbox = session
        .take_over_inbox(TAKE_OVER_WITHIN)
        .await
        .ok_or_else(|| ApiError::new(ErrorCode::Conflict, "A stream is already open for this session"))?;
    let body = Body::from_stream(event_stream(app.sessions.clone(), session, inbox, None, false));
    Ok(([(header::CONTENT_TYPE, "text/event-stream")], body).into_response())
}

/// `DELETE /mcp`: ends the session.
pub async fn delete(
    State(app): State<AppState>,
    Extension(ClientIp(ip)): Extension<ClientIp>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let authenticated = authenticate(&app.lockout, &app.identity, &headers, ip, &rules()).await?;
    let session = existing_session(&app, &headers, &authenticated, ip).await?;
    authenticated.admit(&app.lockout, &app.identity, ip).await?;
    supported_version(&headers)?;
    app.sessions.close(&session.id, "client_closed").await;
    Ok(StatusCode::NO_CONTENT.into_response())
}

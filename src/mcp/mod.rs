//! MCP over HTTP (docs/mcp.md): the legacy HTTP+SSE pair (`sse`) and Streamable HTTP (`streamable`),
//! both driving one JSON-RPC core (`protocol`) and one tool catalogue (`tools`).
//!
//! Written on axum rather than with rmcp: rmcp no longer serves the legacy SSE transport, and
//! the contract fixes wire details (status codes and texts per step, sessions bound to
//! principals, revocation closing streams, tool refusals as results) that are simplest to keep
//! exact in about as much code as the adapter around rmcp would have been.

pub mod protocol;
pub mod sse;
pub mod streamable;
pub mod tools;

use std::net::IpAddr;

use axum::routing::{get, post};
use axum::Router;
use commguard_domain::refusal::Check;
use commguard_domain::values::OrgMode;

use crate::auth::credential::Authenticated;
use crate::auth::{AuthFailure, Principal, Role};
use crate::directory;
use crate::error::{ApiError, ErrorCode};
use crate::sessions::Session;
use crate::state::AppState;
use crate::store::CommandContext;
use crate::validate;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/sse", get(sse::open))
        .route("/messages", post(sse::message))
        .route("/mcp", post(streamable::post).get(streamable::get).delete(streamable::delete))
}

/// Step (5) of opening a session (`GET /sse`, `initialize` on `/mcp`): the agent claim — `claim`
/// is its input, already refused if malformed, `offered` the text the client sent — and the
/// org's state. Every refusal is recorded: an agent mismatch as a counted `AuthFailed` (docs/http.md#rate-limits-and-brute-force),
/// the others as `ActionRefused` naming the claim as offered (the store escapes what it cannot hold).
/// On success, `context` comes back with the open's checks passed, for its `SessionOpened`.
pub async fn open_claim(
    app: &AppState,
    authenticated: &Authenticated,
    offered: Option<String>,
    claim: Result<Option<String>, ApiError>,
    ip: IpAddr,
    route: &str,
    context: CommandContext,
) -> Result<(Option<String>, CommandContext), ApiError> {
    let principal = &authenticated.principal;
    let claimed = offered.filter(|c| !c.is_empty());
    let result = match claim {
        Ok(claim) => check_claim(app, principal, claim, ip, route, authenticated.fingerprint()).await,
        Err(refusal) => Err(refusal),
    };
    match result {
        Ok(claim) => {
            let mut context = context;
            // Steps (1)–(2) and (4) let the request this far; (5) is the claim and the org.
            for check in ["lockout", "credential", "input", "org_boundary", "org_state"] {
                context.provenance.pass(check);
            }
            Ok((claim, context))
        }
        Err(refusal) => {
            if !refusal.recorded {
                let action = format!("{} {route}", if route == "/sse" { "GET" } else { "POST" });
                if let Some(unrecorded) =
                    crate::refusals::record(app, principal, context, &action, claimed, None, &refusal).await
                {
                    return Err(unrecorded);
                }
            }
            Err(refusal)
        }
    }
}

/// The claim of a query parameter: empty is none; text Postgres cannot store is refused.
pub fn claim_param(value: Option<&str>) -> Result<Option<String>, ApiError> {
    match value.filter(|v| !v.is_empty()) {
        None => Ok(None),
        Some(v) => validate::storable("agentId", v).map(|()| Some(v.to_string())),
    }
}

/// Step (5): the agent claim at open, and the org's state. Returns the claimed agent.
async fn check_claim(
    app: &AppState,
    principal: &Principal,
    claim: Option<String>,
    ip: IpAddr,
    route: &str,
    token_fingerprint: Option<&str>,
) -> Result<Option<String>, ApiError> {
    let claim = match (principal.kind, claim) {
        (Role::Agent, Some(claimed)) if claimed != principal.id => {
            // Counted (docs/http.md#rate-limits-and-brute-force): the token was valid, but a guess at another agent is a failure.
            app.lockout.fail(ip, AuthFailure::AgentMismatch, route, token_fingerprint, Some(&claimed)).await?;
            let mut refusal = ApiError::new(ErrorCode::Unauthorized, "Token agentId does not match requested agentId");
            refusal.recorded = true;
            return Err(refusal);
        }
        (Role::Agent, _) => Some(principal.id.clone()),
        (_, Some(claimed)) => {
            let agent = directory::agent(&app.pool, &claimed)
                .await?
                .ok_or_else(|| ApiError::not_found(format!("Agent \"{claimed}\" not found")))?;
            if principal.kind == Role::Org && principal.org_id.as_deref() != Some(agent.org_id.as_str()) {
                return Err(ApiError::new(
                    ErrorCode::Forbidden,
                    format!("Agent \"{claimed}\" does not belong to your organization"),
                )
                .at(Check::OrgBoundary));
            }
            Some(claimed)
        }
        (_, None) => None,
    };
    if let Some(org_id) = &principal.org_id {
        if app.identity.org_mode(org_id).await.map_err(ApiError::internal)? == Some(OrgMode::Suspended) {
            return Err(ApiError::new(ErrorCode::Forbidden, format!("Organization \"{org_id}\" is suspended"))
                .at(Check::OrgState));
        }
    }
    Ok(claim)
}

/// docs/mcp.md#legacy-httpsse (5)–(6): the request's principal must be the session's (a mismatch is a counted
/// failure), and the token that opened the session must still stand.
pub async fn admit_to_session(
    app: &AppState,
    session: &Session,
    principal: &Principal,
    ip: IpAddr,
    route: &str,
    token_fingerprint: Option<&str>,
) -> Result<(), ApiError> {
    if !principal.same_as(&session.principal) {
        app.lockout.fail(ip, AuthFailure::SessionMismatch, route, token_fingerprint, None).await?;
        return Err(ApiError::new(ErrorCode::Forbidden, "Session belongs to a different principal"));
    }
    // A request that presented the session's own token has just proven it valid.
    let verified = principal.token_id.is_some() && principal.token_id == session.principal.token_id;
    if !session_still_valid(app, &session.principal, verified).await? {
        app.sessions.close(&session.id, "token_revoked").await;
        return Err(ApiError::new(ErrorCode::Unauthorized, "Invalid or revoked token"));
    }
    Ok(())
}

/// Whether the token that opened a session still stands, and its org is not suspended (docs/mcp.md#legacy-httpsse (6)).
async fn session_still_valid(app: &AppState, principal: &Principal, token_verified: bool) -> Result<bool, ApiError> {
    if let Some(token_id) = principal.token_id.filter(|_| !token_verified) {
        if !app.identity.token_active(token_id).await.map_err(ApiError::internal)? {
            return Ok(false);
        }
    }
    if let Some(org_id) = &principal.org_id {
        if app.identity.org_mode(org_id).await.map_err(ApiError::internal)? == Some(OrgMode::Suspended) {
            return Ok(false);
        }
    }
    Ok(true)
}

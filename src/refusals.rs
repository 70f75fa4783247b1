//! Refusals as events (CONTRACT §6.1, invariant 2): a tool call, admin request or session open
//! refused before any aggregate decided is recorded as `ActionRefused` on the caller's stream —
//! the agent's for an agent token, else its organization's, else `platform`. Whatever the refused
//! input held, the store makes the event storable (`store::storable`), so recording a refusal
//! never fails because of the input it refuses.

use commguard_domain::records::RefusalEvent;
use serde_json::Value;

use crate::state::AppState;
use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};
use crate::store::CommandContext;

/// Which check refused, from the refusal's code (CONTRACT §6.1 check names).
pub fn refused_by(refusal: &ApiError) -> &'static str {
    match refusal.code {
        ErrorCode::Forbidden if refusal.message.starts_with("Agent \"") => "org_boundary",
        ErrorCode::Forbidden if refusal.message.starts_with("Organization \"") => "org_state",
        ErrorCode::Forbidden => "role",
        ErrorCode::NotFound => "agent_resolve",
        ErrorCode::InvalidInput | ErrorCode::PayloadTooLarge | ErrorCode::UnsupportedMediaType => "input",
        ErrorCode::ComplianceBlocked => "compliance",
        ErrorCode::Conflict | ErrorCode::QuotaExceeded => "state",
        ErrorCode::Unavailable | ErrorCode::ProviderError => "provider",
        ErrorCode::RateLimited => "limits",
        ErrorCode::Unauthorized | ErrorCode::LockedOut | ErrorCode::MethodNotAllowed | ErrorCode::Internal => {
            "internal"
        }
    }
}

/// Records `refusal` of `action` (a tool name, or `<METHOD> <path>`) by `principal`. `context`
/// carries the actor, transport and request id; the refusing check is added to its provenance.
/// Returns the answer to give: the refusal itself once recorded; if it could not be recorded,
/// `unavailable` ("nothing was done"), since a decision that left no trace must not be answered
/// as one (an answer that is already `unavailable` says as much, and is kept).
pub async fn record(
    app: &AppState,
    principal: &Principal,
    mut context: CommandContext,
    action: &str,
    agent_id: Option<String>,
    refusal: &ApiError,
) -> Option<ApiError> {
    let (stream_type, stream_id) = match (principal.agent_id(), &principal.org_id) {
        (Some(agent), _) => ("agent", agent.to_string()),
        (None, Some(org)) => ("organization", org.clone()),
        (None, None) => ("platform", "platform".to_string()),
    };
    let by = refused_by(refusal);
    context.provenance.fail(by, refusal.message.clone());
    let event = RefusalEvent::ActionRefused {
        tool: action.into(),
        agent_id,
        code: refusal.code.as_str().into(),
        refused_by: by.into(),
        reason: refusal.message.clone(),
        rule: refusal.extra.get("rule").and_then(Value::as_str).map(str::to_string),
    };
    match app.store.record(stream_type, &stream_id, &[event], &context).await {
        Ok(_) => None,
        Err(e) => {
            crate::error::log_failure("ActionRefused not recorded", &e);
            (refusal.code != ErrorCode::Unavailable).then(ApiError::unrecorded)
        }
    }
}

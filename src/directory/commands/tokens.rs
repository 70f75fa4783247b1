//! Tokens of agents and orgs: issuing, with or without revoking the active ones (rotation).

use commguard_domain::agent::{AgentAction, AgentCommand, IssuedVia};
use commguard_domain::organization::{OrgAction, OrganizationCommand};
use serde_json::{json, Value};

use commguard_projections::directory::read::TokenOwner;

use super::{active_tokens, new_token, reach_every_instance, settle};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::CommandContext;

/// Whose token to rotate.
pub enum RotateTarget {
    Agent { agent_id: String, org_id: String },
    Org { org_id: String },
}

/// `comms_rotate_token` and the admin rotate routes. Sessions of the revoked tokens are closed
/// shortly after, so the caller's reply is delivered first (docs/tools.md#catalogue).
pub async fn rotate(
    app: &AppState,
    context: CommandContext,
    target: RotateTarget,
    label: Option<String>,
) -> Result<Value, ApiError> {
    let label = label.or_else(|| Some("rotate".into()));
    issue_token(app, context, target, label, true, IssuedVia::Rotate).await
}

/// Issues a token to an agent or org, revoking its active ones first if `revoke_existing`
/// (rotation; `commguard token issue --revoke-existing`), and waits until the directory
/// projections show it: the token works on the next request to any instance.
pub async fn issue_token(
    app: &AppState,
    context: CommandContext,
    target: RotateTarget,
    label: Option<String>,
    revoke_existing: bool,
    issued_via: IssuedVia,
) -> Result<Value, ApiError> {
    let (kind, id, org_id) = match &target {
        RotateTarget::Agent { agent_id, org_id } => ("agent", agent_id.clone(), org_id.clone()),
        RotateTarget::Org { org_id } => ("org", org_id.clone(), org_id.clone()),
    };
    let owner = if kind == "agent" { TokenOwner::Agent(&id) } else { TokenOwner::Org(&id) };
    let revoked = if revoke_existing { active_tokens(app, owner).await? } else { Vec::new() };
    let (token, issued) = new_token(label);
    let token_id = issued.token_id;
    let context = context.in_org(org_id);
    let position = match target {
        RotateTarget::Agent { agent_id, .. } => {
            let action = if revoke_existing {
                AgentAction::RotateToken { token: issued, issued_via, reason: "rotated".into() }
            } else {
                AgentAction::IssueToken { token: issued, issued_via }
            };
            app.store
                .execute(&app.agents, &agent_id, AgentCommand { agent_id: agent_id.clone(), action }, &context)
                .await
                .map_err(ApiError::aggregate)?
        }
        RotateTarget::Org { org_id } => {
            let action = if revoke_existing {
                OrgAction::RotateToken { token: issued, issued_via, reason: "rotated".into() }
            } else {
                OrgAction::IssueToken { token: issued, issued_via }
            };
            app.store
                .execute(&app.orgs, &org_id, OrganizationCommand { org_id: org_id.clone(), action }, &context)
                .await
                .map_err(ApiError::aggregate)?
        }
    };
    settle(app, position).await?;
    if !revoked.is_empty() {
        app.identity.forget_tokens(&revoked);
        reach_every_instance(app).await;
        let (sessions, closing) = (app.sessions.clone(), revoked.clone());
        tokio::spawn(async move {
            tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            sessions.close_tokens(&closing, "token_revoked").await;
        });
    }
    Ok(json!({
        "success": true,
        "token": token,
        "tokenId": token_id,
        "revokedCount": revoked.len(),
        "target": { "kind": kind, "id": id },
    }))
}

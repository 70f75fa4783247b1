//! Commands on organizations and agents. Each one: checks what spans aggregates (slug uniqueness,
//! org capacity) under a transaction-scoped advisory lock so instances serialize on it, lets the
//! aggregate decide, waits until the directory projections show the result (a token issued here
//! works on the very next request, a revoked one fails), and answers with the contract payload.
//! By concern: `orgs`, `agents` (provisioning, blocked channels, limits, billing), `tokens`; this
//! module holds what they share (locks, settling, the caller's org scope).

mod agents;
mod orgs;
mod tokens;

pub use agents::*;
pub use orgs::*;
pub use tokens::*;

use commguard_domain::refusal::Rule;
use commguard_domain::values::IssuedToken;
use sqlx::{Postgres, Transaction};
use uuid::Uuid;

use commguard_projections::directory::read::{self, TokenOwner};

use super::agent;
use crate::auth::{guard, Principal, Role};
use crate::crypto::tokens::{random_token, sha256_hex};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;

/// The org that always exists (docs/security.md#organizations).
pub const DEFAULT_ORG: &str = "default";

/// A token to hand out once, and what the store keeps of it.
fn new_token(label: Option<String>) -> (String, IssuedToken) {
    let token = random_token();
    let issued = IssuedToken { token_id: Uuid::new_v4(), token_hash: sha256_hex(&token), label };
    (token, issued)
}

/// A transaction holding advisory lock `key` until it ends (dropped → rolled back → released).
async fn lock(app: &AppState, key: &str) -> Result<Transaction<'static, Postgres>, ApiError> {
    let mut tx = app.pool.begin().await.map_err(ApiError::internal)?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(key)
        .execute(&mut *tx)
        .await
        .map_err(ApiError::internal)?;
    Ok(tx)
}

/// Waits until every directory projection has applied `position`.
async fn settle(app: &AppState, position: Option<i64>) -> Result<(), ApiError> {
    settle_on(app, position, &["orgs", "agents", "tokens"]).await
}

async fn settle_on(app: &AppState, position: Option<i64>, projections: &[&str]) -> Result<(), ApiError> {
    if let Some(position) = position {
        for projection in projections.iter().copied() {
            app.store.await_projection(projection, position).await.map_err(ApiError::internal)?;
        }
    }
    Ok(())
}

/// A revocation (tokens, an org's mode) is answered once every live instance has dropped what it
/// revoked from its caches (`auth::identity::reach_every_instance`): "at once on every instance".
/// An instance that does not confirm in time (its listener down) is logged, and the change is
/// answered all the same: it is committed, and a rotation's reply carries the new token.
async fn reach_every_instance(app: &AppState) {
    let lease = std::time::Duration::from_secs(app.config.outbound_intent_lease_seconds);
    match crate::auth::identity::reach_every_instance(&app.pool, lease).await {
        Ok(0) => {}
        Ok(behind) => {
            tracing::warn!(instances = behind, "a revocation was answered before every instance confirmed it")
        }
        Err(e) => tracing::warn!(error = %e, "a revocation's barrier could not be sent; answered without it"),
    }
}

fn compliance(message: impl Into<String>, rule: Rule) -> ApiError {
    ApiError::new(ErrorCode::ComplianceBlocked, format!("Compliance: {}", message.into())).under(rule)
}

/// Active token ids of an agent or org, as the tokens projection has them.
async fn active_tokens(app: &AppState, owner: TokenOwner<'_>) -> Result<Vec<Uuid>, ApiError> {
    read::active_token_ids(&app.pool, owner).await.map_err(ApiError::internal)
}

/// An existing agent the caller may address (Z1, Z2).
pub async fn addressable_agent(
    app: &AppState,
    principal: &Principal,
    agent_id: &str,
) -> Result<crate::directory::AgentView, ApiError> {
    guard::own_agent(principal, agent_id)?;
    let found = agent(&app.pool, agent_id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Agent \"{agent_id}\" not found")))?;
    guard::agent_in_org(principal, agent_id, &found.org_id)?;
    Ok(found)
}

/// The org a caller acts in when it names none: its own, or `default` for the super-admin.
pub fn home_org(principal: &Principal, requested: Option<String>) -> Result<String, ApiError> {
    match (principal.role(), requested) {
        (Role::SuperAdmin, Some(org)) => Ok(org),
        (Role::SuperAdmin, None) => Ok(principal.org_id.clone().unwrap_or_else(|| DEFAULT_ORG.into())),
        (_, Some(org)) => {
            guard::own_org(principal, &org)?;
            Ok(org)
        }
        (_, None) => principal.org_id.clone().ok_or_else(|| ApiError::new(ErrorCode::Forbidden, "No organization")),
    }
}

/// The org a read covers: O its own (Z5 for another it names); S the one it names, or every org
/// (`None`). An org the super-admin names that does not exist is 404, as on every admin route.
pub async fn read_scope(
    app: &AppState,
    principal: &Principal,
    requested: Option<String>,
) -> Result<Option<String>, ApiError> {
    match principal.role() {
        Role::SuperAdmin => {
            if let Some(org_id) = &requested {
                crate::directory::existing_org(&app.pool, org_id).await?;
            }
            Ok(requested)
        }
        _ => home_org(principal, requested).map(Some),
    }
}

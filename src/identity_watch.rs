//! Listens on `commguard_identity` for what other instances (and this one's projections) changed:
//! revoked tokens leave the cache and their sessions close, suspended orgs and deprovisioned
//! agents lose their sessions, IPs that failed elsewhere become lockout suspects, an erased
//! subject's cached live keys are dropped. A revocation's barrier is written back once everything
//! before it is applied (`auth::identity::reach_every_instance`). After a lost connection every
//! cache is cleared, since notifications may have been missed meanwhile.

use std::sync::Arc;
use std::time::Duration;

use commguard_domain::values::OrgMode;
use commguard_projections::directory::read as directory_read;
use commguard_projections::directory::IDENTITY_CHANNEL;
use serde_json::Value;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::{identity, Identity, Lockout};
use crate::sessions::Sessions;
use crate::store::keystore::KeyStore;

/// Sessions of revoked tokens close this long after the notice, so that the reply to the
/// rotation that revoked them reaches the caller first.
const CLOSE_AFTER: Duration = Duration::from_millis(300);

pub async fn run(
    pool: PgPool,
    instance: Uuid,
    identity: Arc<Identity>,
    lockout: Arc<Lockout>,
    sessions: Arc<Sessions>,
    keys: KeyStore,
) {
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                failed("identity listener cannot connect; retrying", &e);
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(IDENTITY_CHANNEL).await {
            failed("identity listener cannot listen; retrying", &e);
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        crate::outage::DATABASE.succeeded();
        // Anything may have changed while we were not listening.
        identity.clear();
        keys.forget_subject_keys();
        match lockout.reload_suspects().await {
            Ok(()) => lockout.watch(true),
            // Every address stays checked against Postgres until a reconnection loads them.
            Err(e) => tracing::warn!(error = %e, "lockout suspects not reloaded"),
        }
        // Every barrier so far is behind us: what it guards was committed before the caches
        // were cleared, and later ones arrive on the channel.
        if let Err(e) = identity::acknowledge(&pool, instance, None).await {
            tracing::warn!(error = %e, "identity barriers not acknowledged");
        }
        identity.watch(true);
        recheck_sessions(&pool, &identity, &sessions).await;
        loop {
            match listener.try_recv().await {
                Ok(Some(notification)) => {
                    let Ok(message) = serde_json::from_str::<Value>(notification.payload()) else { continue };
                    apply(&message, &identity, &lockout, &sessions, &keys).await;
                    // Last: the barrier is acknowledged once what came before it is applied.
                    if let Some(barrier) = message.get("barrier").and_then(Value::as_i64) {
                        if let Err(e) = identity::acknowledge(&pool, instance, Some(barrier)).await {
                            tracing::warn!(error = %e, "identity barrier not acknowledged");
                        }
                    }
                }
                Ok(None) => {
                    tracing::warn!("identity listener lost its connection; caches bypassed until it listens again");
                    unwatched(&identity, &lockout);
                    break;
                }
                Err(e) => {
                    failed("identity listener failed; reconnecting", &e);
                    unwatched(&identity, &lockout);
                    break;
                }
            }
        }
    }
}

/// Nothing that notices keep honest is trusted until the listener listens again: identities and
/// lockouts are read from Postgres meanwhile (fail closed, CONTRACT P5).
fn unwatched(identity: &Identity, lockout: &Lockout) {
    identity.watch(false);
    lockout.watch(false);
}

/// After the listener (re)connects: the sessions whose token was revoked, org suspended or agent
/// deprovisioned while no notice could reach this instance are closed, as the notices would have
/// closed them.
async fn recheck_sessions(pool: &PgPool, identity: &Identity, sessions: &Arc<Sessions>) {
    let (tokens, orgs, agents) = sessions.bound();
    let mut revoked = Vec::new();
    for token in tokens {
        match identity.token_active(token).await {
            Ok(true) => {}
            Ok(false) => revoked.push(token),
            Err(e) => tracing::warn!(error = %e, "a session's token not rechecked"),
        }
    }
    if !revoked.is_empty() {
        sessions.close_tokens(&revoked, "token_revoked").await;
    }
    for org in orgs {
        match identity.org_mode(&org).await {
            Ok(Some(OrgMode::Suspended)) => {
                sessions.close_org(&org, "org_suspended").await;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "a session's org not rechecked"),
        }
    }
    for agent in agents {
        match directory_read::agent(pool, &agent).await {
            Ok(Some(found)) if found.is_active() => {}
            Ok(_) => {
                sessions.close_agent(&agent, "agent_deprovisioned").await;
            }
            Err(e) => tracing::warn!(error = %e, "a session's agent not rechecked"),
        }
    }
}

/// A listener error: the database being down goes to the outage log (the listener retries every
/// second for as long as it lasts), anything else is a warning.
fn failed(what: &'static str, e: &sqlx::Error) {
    if crate::error::is_outage(e) {
        crate::outage::DATABASE.failed("identity listener", e);
    } else {
        tracing::warn!(error = %e, "{what}");
    }
}

async fn apply(message: &Value, identity: &Identity, lockout: &Lockout, sessions: &Arc<Sessions>, keys: &KeyStore) {
    // A subject was erased on some instance: its cached live keys (if any) must go.
    if message.get("subjectErased").is_some() {
        keys.forget_subject_keys();
    }
    if let Some(ids) = message.get("revoked").and_then(Value::as_array) {
        let ids: Vec<Uuid> = ids.iter().filter_map(|v| v.as_str()?.parse().ok()).collect();
        identity.forget_tokens(&ids);
        let sessions = sessions.clone();
        tokio::spawn(async move {
            tokio::time::sleep(CLOSE_AFTER).await;
            sessions.close_tokens(&ids, "token_revoked").await;
        });
    }
    if let Some(org) = message.get("org").and_then(Value::as_str) {
        identity.forget_org(org);
        if message.get("mode").and_then(Value::as_str) == Some("suspended") {
            sessions.close_org(org, "org_suspended").await;
        }
    }
    if let Some(agent) = message.get("agent").and_then(Value::as_str) {
        sessions.close_agent(agent, "agent_deprovisioned").await;
    }
    if let Some(ip_ref) = message.get("suspect").and_then(Value::as_str) {
        lockout.suspect(ip_ref.to_string());
    }
}

//! Outbound intents: an action that may reach a person is recorded, or its caller is told it
//! may have happened (issue 14, principle 2, docs/security.md#principles).
//!
//! Before the provider is called, the reservation transaction (`reserve_actions`, migration
//! 0015) stores an **intent**: the event to record if nobody completes the action (a send with
//! status `unconfirmed`), sealed under the recipient's subject key, owned by this instance.
//! Then, in the order that keeps every crash explainable:
//! - sent at its estimated cost: the event is appended and the intent deleted in one transaction
//!   (`Store::record_settling`, migration 0028);
//! - sent at another cost: the event is appended, then the intent is deleted (batched, with the
//!   cost settled);
//! - provider failure: the `*Failed` event is appended, then the reservation is released and
//!   the intent deleted in one statement.
//!
//! If the append fails (Postgres away), the caller's request retries until its deadline and
//! then answers `unavailable` with status `unconfirmed`; a background task keeps retrying. Each
//! retry runs under the intent's row lock (`settle`), so it and a reconciler never both record.
//!
//! An instance heartbeats into `service_instances`. The reconciler settles the intents of
//! owners whose heartbeat stopped for longer than the lease — counted only while the reconciler
//! itself could reach Postgres, so an outage that silenced everybody kills nobody. A settled
//! intent is recorded as sent-unconfirmed (its reservation kept: the send may have happened),
//! or, if the store already holds its event, only deleted (and released after a failure).

use std::sync::Arc;
use std::time::Duration;

use commguard_domain::agent::AgentEvent;
use commguard_domain::pii::SealedField;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

use crate::crypto::envelope;
use crate::error::{ApiError, ErrorCode};
use crate::store::{CommandContext, Store};

/// How often an instance heartbeats, and how often the reconciler looks.
const HEARTBEAT: Duration = Duration::from_secs(2);
/// How long a request keeps retrying to record its action before answering `unconfirmed`.
pub const RECORD_DEADLINE: Duration = Duration::from_secs(5);
/// Intents settled per reconciler pass at most.
const RECONCILE_BATCH: i64 = 100;
/// Settles at once at most: each holds one pooled connection while the append it waits for needs
/// another, so at most half the pool (and at least one; the pool has at least 2). Every failed or
/// blocked action is recorded through one.
fn settling(pool: &PgPool) -> usize {
    (pool.options().get_max_connections() as usize / 2).max(1)
}
/// The AAD path of a sealed intent.
const INTENT_PATH: &str = "intent";

/// What an intent holds: the event to record if the action is never completed, and its context.
#[derive(Serialize, Deserialize)]
struct Fallback {
    event: AgentEvent,
    context: CommandContext,
}

/// How a completed action ended, for `complete`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ending {
    /// The provider accepted it: the reservation stays, its cost moves by `cost_delta`.
    Sent { cost_delta: i64 },
    /// The provider failed (or none was configured): the reservation is released.
    Failed,
}

/// The action happened (or may have) but its event is not stored yet.
#[derive(Debug)]
pub struct Unrecorded;

pub struct Intents {
    pool: PgPool,
    store: Store,
    instance: Uuid,
    lease: Duration,
    /// Settles under a row lock hold a pooled connection while their event is appended on
    /// another: left unbounded, as many settles as the pool has connections would hold them
    /// all and wait for an append that can never get one (seen in the outage run: 10 stuck).
    settling: tokio::sync::Semaphore,
}

impl Intents {
    /// A new instance identity.
    pub fn start(store: Store, lease: Duration) -> Arc<Self> {
        let permits = settling(store.pool());
        Arc::new(Self {
            pool: store.pool().clone(),
            store,
            instance: Uuid::new_v4(),
            lease,
            settling: tokio::sync::Semaphore::new(permits),
        })
    }

    pub fn instance(&self) -> Uuid {
        self.instance
    }

    /// `event` (what to record if the action is never completed) sealed under the subject key
    /// of `to` in `org_id`, beside a skeleton of it without personal fields (recorded instead if
    /// the subject is erased before the intent is settled): the `intent` the reservation stores.
    pub async fn seal(
        &self,
        id: Uuid,
        org_id: &str,
        to: &str,
        event: AgentEvent,
        context: &CommandContext,
    ) -> Result<Value, ApiError> {
        let keystore = self.store.keystore();
        let subject_ref = keystore.data_keys().blind_index(to);
        // A key cached here is used unchecked (no round trip): an intent sealed under a key that
        // an erasure elsewhere has just destroyed is only ever opened by a reconciler, which then
        // finds the key gone and records the skeleton — as for an erasure after the intent. The
        // event that completes the send is sealed and checked on its own (`append_batch`).
        let (key, _) = keystore.subject_key_deferred(org_id, &subject_ref).await.map_err(db)?;
        let mut skeleton = serde_json::to_value(&event).map_err(db)?;
        erase_personal_fields(&mut skeleton);
        let fallback = Fallback { event, context: context.clone() };
        let plain = serde_json::to_string(&fallback).map_err(db)?;
        let sealed = envelope::seal(&[key], id, INTENT_PATH, &plain);
        Ok(serde_json::json!({ "sealed": sealed, "skeleton": skeleton, "context": context }))
    }

    /// Records `event` for intent `id` of `agent_id`, then completes the intent. Retries until
    /// `RECORD_DEADLINE` if the store is unreachable; after that, keeps retrying in the
    /// background and answers `Unrecorded`.
    pub async fn complete(
        self: &Arc<Self>,
        agent_id: &str,
        id: Uuid,
        event: AgentEvent,
        context: &CommandContext,
        ending: Ending,
    ) -> Result<(), Unrecorded> {
        // The fast path, for a send whose cost is its estimate: its event's append ends its
        // intent in the same transaction, and fails if the intent is gone (settled by a
        // reconciler that took this owner for dead), so the action is never recorded twice. Any
        // other ending (a failure, a block, a cost to settle) is recorded under the intent's row
        // lock (`settle`), which finds it gone just as surely; they are the rarer outcomes.
        if ending == (Ending::Sent { cost_delta: 0 }) {
            match self.store.record_settling("agent", agent_id, std::slice::from_ref(&event), context, Some(id)).await {
                Ok(_) => return Ok(()),
                Err(e) => tracing::warn!(error = %e, %id, "outbound event not recorded yet; retrying"),
            }
        }
        let deadline = tokio::time::Instant::now() + RECORD_DEADLINE;
        let mut wait = Duration::from_millis(50);
        loop {
            match self.settle(id, Some((&event, context, ending)), false).await {
                Ok(_) => return Ok(()),
                Err(e) if tokio::time::Instant::now() + wait >= deadline => {
                    tracing::error!(error = %e.message, %id, "outbound event not recorded by the deadline; retrying in the background");
                    break;
                }
                Err(_) => {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(1));
                }
            }
        }
        let (intents, event, context) = (self.clone(), event, context.clone());
        tokio::spawn(async move {
            let mut wait = Duration::from_millis(500);
            loop {
                match intents.settle(id, Some((&event, &context, ending)), false).await {
                    Ok(_) => {
                        tracing::info!(%id, "outbound event recorded after the outage");
                        break;
                    }
                    Err(_) => {
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Err(Unrecorded)
    }

    /// The reservation meant to store intent `id` answered an error: the connection or the
    /// database failed around its commit, so the commit may have landed all the same. The
    /// provider was never called, so there is nothing to record, but a committed intent would
    /// hold its reservation for as long as this (live) owner runs: no reconciler touches a live
    /// owner's intents. Its intent, if any, is released (reservation given back, intent
    /// deleted) once Postgres answers, and once more a lease later, when a commit that was
    /// still in flight has ended either way.
    pub fn abandon(self: &Arc<Self>, id: Uuid) {
        let intents = self.clone();
        tokio::spawn(async move {
            for pass in 0..2 {
                if pass == 1 {
                    tokio::time::sleep(intents.lease).await;
                }
                let mut wait = Duration::from_millis(200);
                while release(&intents.pool, id).await.is_err() {
                    tokio::time::sleep(wait).await;
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
            }
        });
    }

    /// Settles intent `id` under its row lock: if the store already holds its event, only
    /// completes it; otherwise records `event` (or, with `None`, the intent's own sent-unconfirmed
    /// fallback) and completes it, all before the lock is let go. `skip_locked`: leave an intent
    /// someone else is settling. Returns whether this call recorded an event.
    async fn settle(
        &self,
        id: Uuid,
        event: Option<(&AgentEvent, &CommandContext, Ending)>,
        skip_locked: bool,
    ) -> Result<bool, ApiError> {
        let _permit = self.settling.acquire().await.map_err(db)?;
        let mut tx = self.pool.begin().await.map_err(db)?;
        let lock = if skip_locked { "FOR UPDATE SKIP LOCKED" } else { "FOR UPDATE" };
        let row: Option<(String, Value)> =
            sqlx::query_as(&format!("SELECT agent_id, intent FROM outbound_intents WHERE id = $1 {lock}"))
                .bind(id)
                .fetch_optional(&mut *tx)
                .await
                .map_err(db)?;
        let Some((agent_id, stored)) = row else { return Ok(false) };
        // Crash between an append and its intent's completion: the event is there already. Any
        // outcome counts: a send refused at the recheck before the provider call is recorded
        // blocked, and must not be recorded again, nor as sent by the fallback.
        let recorded: Option<String> = sqlx::query_scalar(
            "SELECT event_type FROM events
              WHERE aggregate_type = 'agent' AND aggregate_id = $1
                AND event_type IN ('MessageSent', 'MessageFailed', 'MessageBlocked',
                                   'CallPlaced', 'CallFailed', 'CallBlocked')
                AND COALESCE(payload->>'messageId', payload->>'callId') = $2
              LIMIT 1",
        )
        .bind(&agent_id)
        .bind(id.to_string())
        .fetch_optional(&mut *tx)
        .await
        .map_err(db)?;
        let (ending, appended) = match recorded {
            Some(kind) if kind.ends_with("Failed") || kind.ends_with("Blocked") => (Ending::Failed, false),
            // Its own event, recorded by an append whose reply was lost: its cost difference
            // still has to be settled.
            Some(_) => (event.map_or(Ending::Sent { cost_delta: 0 }, |(_, _, ending)| ending), false),
            None => {
                let owned;
                let (event, context, ending) = match event {
                    Some(given) => given,
                    None => {
                        owned = self.open(id, &stored).await?;
                        let ending = match owned.event {
                            AgentEvent::MessageFailed { .. } | AgentEvent::CallFailed { .. } => Ending::Failed,
                            _ => Ending::Sent { cost_delta: 0 },
                        };
                        (&owned.event, &owned.context, ending)
                    }
                };
                self.store
                    .record("agent", &agent_id, std::slice::from_ref(event), context)
                    .await
                    .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
                (ending, true)
            }
        };
        let done = match ending {
            Ending::Failed => sqlx::query("SELECT release_intent($1)").bind(id),
            Ending::Sent { cost_delta } => {
                sqlx::query("SELECT complete_intents(ARRAY[$1]::uuid[], ARRAY[$2]::bigint[])").bind(id).bind(cost_delta)
            }
        };
        done.execute(&mut *tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(appended)
    }

    /// The fallback an intent holds; if the recipient's key was destroyed meanwhile (erasure),
    /// its skeleton: the send is still recorded, as unconfirmed, without its personal fields.
    async fn open(&self, id: Uuid, stored: &Value) -> Result<Fallback, ApiError> {
        let field: SealedField = serde_json::from_value(stored["sealed"].clone()).map_err(db)?;
        let keys = self.store.keystore().lookup(&field.k).await.map_err(db)?;
        match envelope::open(&field, id, INTENT_PATH, |k| keys.get(&k).copied()) {
            Ok(plain) => serde_json::from_str(&plain).map_err(db),
            Err(envelope::Opened::Erased) => Ok(Fallback {
                event: serde_json::from_value(stored["skeleton"].clone()).map_err(db)?,
                context: serde_json::from_value(stored["context"].clone()).map_err(db)?,
            }),
            Err(envelope::Opened::Corrupt) => Err(ApiError::internal(format!("intent {id} is corrupt"))),
        }
    }

    /// Heartbeats and reconciles until the process ends.
    pub async fn run(self: Arc<Self>) {
        let mut every = tokio::time::interval(HEARTBEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Since when this instance has reached Postgres without a break.
        let mut connected_since: Option<tokio::time::Instant> = None;
        loop {
            every.tick().await;
            let beat = sqlx::query(
                "INSERT INTO service_instances (id) VALUES ($1)
                 ON CONFLICT (id) DO UPDATE SET heartbeat_at = now()",
            )
            .bind(self.instance)
            .execute(&self.pool)
            .await;
            if beat.is_err() {
                connected_since = None;
                continue;
            }
            let since = *connected_since.get_or_insert_with(tokio::time::Instant::now);
            // Another owner's silence counts only once we have heard for a whole lease.
            if since.elapsed() < self.lease {
                continue;
            }
            if let Err(e) = self.reconcile().await {
                tracing::warn!(error = %e.message, "outbound intents not reconciled this round");
            }
        }
    }

    /// One pass: settles the intents of dead owners, oldest first. Returns how many it settled.
    pub async fn reconcile(&self) -> Result<usize, ApiError> {
        let lease = self.lease.as_secs_f64();
        let orphans: Vec<Uuid> = sqlx::query_scalar(
            "SELECT i.id FROM outbound_intents i
              LEFT JOIN service_instances s ON s.id = i.owner
              WHERE i.owner <> $1
                AND (s.id IS NULL OR s.heartbeat_at < now() - make_interval(secs => $2))
                AND i.created_at < now() - make_interval(secs => $2)
              ORDER BY i.created_at LIMIT $3",
        )
        .bind(self.instance)
        .bind(lease)
        .bind(RECONCILE_BATCH)
        .fetch_all(&self.pool)
        .await
        .map_err(db)?;
        let mut settled = 0;
        for id in orphans {
            match self.settle(id, None, true).await {
                Ok(appended) => {
                    settled += 1;
                    if appended {
                        tracing::warn!(%id, "outbound intent of a stopped instance recorded as sent-unconfirmed");
                    }
                }
                Err(e) => tracing::warn!(error = %e.message, %id, "outbound intent not reconciled"),
            }
        }
        if settled > 0 {
            sqlx::query("DELETE FROM service_instances WHERE heartbeat_at < now() - make_interval(secs => $1) * 10")
                .bind(lease)
                .execute(&self.pool)
                .await
                .map_err(db)?;
        }
        Ok(settled)
    }

    /// Says this instance is gone (a clean stop): its intents become reconcilable at once.
    pub async fn retire(&self) {
        let _ =
            sqlx::query("DELETE FROM service_instances WHERE id = $1").bind(self.instance).execute(&self.pool).await;
    }
}

/// Releases a failed action's reservation and deletes its intent, in one statement.
async fn release(pool: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT release_intent($1)").bind(id).execute(pool).await.map(|_| ())
}

/// Replaces every clear personal field of a serialized event with `[erased]`, sealed only by a
/// retention key: what can be said about an action whose subject is gone.
fn erase_personal_fields(value: &mut Value) {
    match value {
        Value::Object(map) if map.contains_key(commguard_domain::pii::CLEAR_MARKER) => {
            *value = serde_json::to_value(commguard_domain::pii::Pii::retained(
                "[erased]",
                commguard_domain::pii::RetentionClass::Messages,
            ))
            .expect("a field always serializes");
        }
        Value::Object(map) => map.values_mut().for_each(erase_personal_fields),
        Value::Array(items) => items.iter_mut().for_each(erase_personal_fields),
        _ => {}
    }
}

/// A database error inside settling: retried, so answered as `unavailable` and not logged here.
fn db(e: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::Unavailable, e.to_string())
}

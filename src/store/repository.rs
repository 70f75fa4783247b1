//! The cqrs-es event repository over Postgres.
//!
//! Reads go through postgres-es unchanged. Appends are ours, because an append must do more in
//! its one transaction than postgres-es can: seal personal fields, stamp the command context,
//! extend the per-aggregate hash chain and its head, and give each event its global position.

use std::sync::Arc;

use cqrs_es::persist::{
    PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot,
};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::{Map, Value};
use sqlx::PgPool;
use tokio::sync::Notify;
use uuid::Uuid;

use super::chain;
use super::context::CommandContext;
use super::keystore::KeyStore;
use super::sealing::{has_clear_fields, seal_payload};

/// Events one transaction may append: the low 12 bits of a position number them.
pub const MAX_EVENTS_PER_APPEND: usize = 4096;

#[derive(Clone)]
pub struct EventRepository {
    pool: PgPool,
    reads: Arc<PostgresEventRepository>,
    keystore: KeyStore,
    /// Woken after every local commit so local projection runners need not wait for a poll.
    appended: Arc<Notify>,
}

impl EventRepository {
    pub fn new(pool: PgPool, keystore: KeyStore, appended: Arc<Notify>) -> Self {
        let reads = Arc::new(PostgresEventRepository::new(pool.clone()));
        Self { pool, reads, keystore, appended }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn append<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let Some(first) = events.first() else {
            return Ok(());
        };
        if events.len() > MAX_EVENTS_PER_APPEND {
            return Err(PersistenceError::UnknownError(
                format!("an append holds at most {MAX_EVENTS_PER_APPEND} events").into(),
            ));
        }
        // Sealing may create keys; it happens before the transaction (in its own short ones) so
        // that key creation never holds locks while events are written. An unused key is harmless.
        let mut prepared = Vec::with_capacity(events.len());
        for event in events {
            prepared.push(self.prepare(event).await?);
        }

        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let head: Option<(i64, String)> = sqlx::query_as(
            "SELECT last_sequence, last_hash FROM chain_heads
             WHERE aggregate_type = $1 AND aggregate_id = $2 FOR UPDATE",
        )
        .bind(&first.aggregate_type)
        .bind(&first.aggregate_id)
        .fetch_optional(&mut *tx)
        .await
        .map_err(db_error)?;
        let (last_sequence, mut prev_hash) = head.unwrap_or((0, chain::GENESIS.to_string()));
        if first.sequence as i64 != last_sequence + 1 {
            // Someone appended since this command loaded the aggregate: retry the command.
            return Err(PersistenceError::OptimisticLockError);
        }

        for (index, (event, mut p)) in events.iter().zip(prepared).enumerate() {
            p.metadata.insert("prevHash".into(), Value::String(prev_hash.clone()));
            let metadata = Value::Object(p.metadata);
            let hash = chain::event_hash(
                &prev_hash,
                &event.aggregate_type,
                &event.aggregate_id,
                event.sequence as i64,
                &event.event_type,
                &event.event_version,
                &p.payload,
                &metadata,
            );
            let mut metadata = metadata;
            metadata["hash"] = Value::String(hash.clone());
            sqlx::query(
                "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                                     payload, metadata, position, event_id, occurred_at, org_id, prev_hash, hash)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, (pg_current_xact_id()::text::bigint << 12) + $8,
                         $9, $10, $11, $12, $13)",
            )
            .bind(&event.aggregate_type)
            .bind(&event.aggregate_id)
            .bind(event.sequence as i64)
            .bind(&event.event_type)
            .bind(&event.event_version)
            .bind(&p.payload)
            .bind(&metadata)
            .bind(index as i64)
            .bind(p.event_id)
            .bind(p.context.occurred_at)
            .bind(&p.context.org_id)
            .bind(&prev_hash)
            .bind(&hash)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
            prev_hash = hash;
        }

        let last = events.last().expect("events is not empty");
        sqlx::query(
            "INSERT INTO chain_heads (aggregate_type, aggregate_id, last_sequence, last_hash)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (aggregate_type, aggregate_id)
             DO UPDATE SET last_sequence = EXCLUDED.last_sequence, last_hash = EXCLUDED.last_hash",
        )
        .bind(&last.aggregate_type)
        .bind(&last.aggregate_id)
        .bind(last.sequence as i64)
        .bind(&prev_hash)
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;

        if let Some((aggregate_id, state, current_snapshot)) = snapshot {
            sqlx::query("DELETE FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2")
                .bind(A::TYPE)
                .bind(&aggregate_id)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?;
            sqlx::query(
                "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
                 VALUES ($1, $2, $3, $4, $5)",
            )
            .bind(A::TYPE)
            .bind(&aggregate_id)
            .bind(last.sequence as i64)
            .bind(current_snapshot as i64)
            .bind(&state)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        }

        tx.commit().await.map_err(db_error)?;
        self.appended.notify_waiters();
        Ok(())
    }

    /// The stored form of one event: payload untagged and sealed, metadata from its context.
    async fn prepare(&self, event: &SerializedEvent) -> Result<Prepared, PersistenceError> {
        let context = CommandContext::from_metadata(&event.metadata).ok_or_else(|| {
            PersistenceError::UnknownError("an event reached the store without a command context".into())
        })?;
        let event_id = Uuid::new_v4();
        let mut payload = untag(&event.event_type, event.payload.clone());
        seal_payload(&self.keystore, &mut payload, event_id, context.org_id.as_deref(), context.occurred_at)
            .await
            .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        if has_clear_fields(&payload) {
            return Err(PersistenceError::UnknownError("refusing to store a personal field in the clear".into()));
        }
        let mut metadata = Map::new();
        metadata.insert("eventId".into(), Value::String(event_id.to_string()));
        metadata.insert("occurredAt".into(), Value::String(super::rfc3339(context.occurred_at)));
        metadata.insert("orgId".into(), context.org_id.clone().map_or(Value::Null, Value::String));
        metadata.insert("actor".into(), serde_json::to_value(&context.actor)?);
        metadata.insert("requestId".into(), context.request_id.clone().map_or(Value::Null, Value::String));
        metadata.insert("transport".into(), Value::String(context.transport.clone()));
        metadata.insert("provenance".into(), serde_json::to_value(&context.provenance)?);
        Ok(Prepared { event_id, payload, metadata, context })
    }
}

struct Prepared {
    event_id: Uuid,
    payload: Value,
    metadata: Map<String, Value>,
    context: CommandContext,
}

/// cqrs-es serializes an event enum externally tagged (`{"MessageSent": {...}}`); the store
/// keeps only the inner object, since `event_type` already names it.
fn untag(event_type: &str, payload: Value) -> Value {
    match payload {
        Value::Object(mut map) if map.len() == 1 && map.contains_key(event_type) => {
            map.remove(event_type).expect("checked above")
        }
        other => other,
    }
}

/// The inverse of `untag`, for loading aggregates. The stored metadata is replaced by an empty
/// map: cqrs-es wants string values there, and no aggregate decides on metadata.
fn retag(mut event: SerializedEvent) -> SerializedEvent {
    let inner = std::mem::take(&mut event.payload);
    let mut map = Map::new();
    map.insert(event.event_type.clone(), inner);
    event.payload = Value::Object(map);
    event.metadata = Value::Object(Map::new());
    event
}

fn db_error(e: sqlx::Error) -> PersistenceError {
    if let sqlx::Error::Database(db) = &e {
        if db.code().as_deref() == Some("23505") {
            return PersistenceError::OptimisticLockError;
        }
    }
    PersistenceError::ConnectionError(Box::new(e))
}

impl PersistedEventRepository for EventRepository {
    async fn get_events<A: Aggregate>(&self, aggregate_id: &str) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self.reads.get_events::<A>(aggregate_id).await?.into_iter().map(retag).collect())
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        Ok(self.reads.get_last_events::<A>(aggregate_id, last_sequence).await?.into_iter().map(retag).collect())
    }

    async fn get_snapshot<A: Aggregate>(&self, aggregate_id: &str) -> Result<Option<SerializedSnapshot>, PersistenceError> {
        self.reads.get_snapshot::<A>(aggregate_id).await
    }

    async fn persist<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot_update: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        self.append::<A>(events, snapshot_update).await
    }

    async fn stream_events<A: Aggregate>(&self, aggregate_id: &str) -> Result<ReplayStream, PersistenceError> {
        // Replays for aggregates load whole streams; the projection runner reads the global feed.
        let events = self.get_events::<A>(aggregate_id).await?;
        Ok(replay_stream(events))
    }

    async fn stream_all_events<A: Aggregate>(&self) -> Result<ReplayStream, PersistenceError> {
        Err(PersistenceError::UnknownError(
            "stream_all_events is not used: projections follow the global order (store::feed)".into(),
        ))
    }
}

fn replay_stream(events: Vec<SerializedEvent>) -> ReplayStream {
    let (mut feed, stream) = ReplayStream::new(events.len().max(1));
    tokio::spawn(async move {
        for event in events {
            if feed.push(Ok(event)).await.is_err() {
                return;
            }
        }
    });
    stream
}

//! The cqrs-es event repository over Postgres.
//!
//! The table keeps postgres-es's layout and snapshots are read through postgres-es. Appends are
//! ours, because an append must do more in its one statement than postgres-es can: seal personal
//! fields, stamp the command context, extend the per-aggregate hash chain and its head, and give
//! each event its global position. Loads are ours too: they skip the metadata, which no aggregate
//! reads and whose JSON decoding dominated the cost of a command.

use std::sync::Arc;

use cqrs_es::persist::{PersistedEventRepository, PersistenceError, ReplayStream, SerializedEvent, SerializedSnapshot};
use cqrs_es::Aggregate;
use postgres_es::PostgresEventRepository;
use serde_json::{Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use super::chain;
use super::committer::{Alongside, Append, Committer, Row};
use super::context::CommandContext;
use super::keystore::KeyStore;
use super::receipt;
use super::sealing::{has_clear_fields, seal_payload};
use super::storable;

pub use super::committer::MAX_EVENTS_PER_APPEND;

/// An event to append: as cqrs-es serializes it (its metadata unused), the context of the
/// command that produced it, and what its append also does in its transaction.
pub(crate) struct Stamped<'a> {
    pub event: &'a SerializedEvent,
    pub context: &'a CommandContext,
    pub alongside: Option<&'a Alongside>,
}

#[derive(Clone)]
pub struct EventRepository {
    pool: PgPool,
    reads: Arc<PostgresEventRepository>,
    keystore: KeyStore,
    /// Woken after every local commit so local projection runners need not wait for a poll.
    appended: super::Appended,
    /// The last hash of recently loaded or appended streams, so an append needs no extra read.
    heads: Arc<HeadCache>,
    committer: Committer,
}

impl EventRepository {
    pub fn new(kept: super::kept::KeptPool, keystore: KeyStore, appended: super::Appended) -> Self {
        let pool = kept.pool().clone();
        let reads = Arc::new(PostgresEventRepository::new(pool.clone()));
        let committer = Committer::start(kept);
        Self { pool, reads, keystore, appended, heads: Arc::new(HeadCache::default()), committer }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    async fn append<A: Aggregate>(
        &self,
        events: &[SerializedEvent],
        snapshot: Option<(String, Value, usize)>,
    ) -> Result<(), PersistenceError> {
        let Some(position) = self.append_events(events).await? else {
            return Ok(());
        };
        if let Some((aggregate_id, state, current_snapshot)) = snapshot {
            let last_sequence = events.last().map_or(0, |e| e.sequence as i64);
            // The events are committed: a snapshot that fails to save is only a missed cache.
            if let Err(e) = self.save_snapshot::<A>(&aggregate_id, last_sequence, current_snapshot, &state).await {
                tracing::warn!(aggregate_type = A::TYPE, aggregate_id, error = %e, "snapshot not saved");
            }
        }
        receipt::record(position);
        Ok(())
    }

    /// Appends `events` (one stream, contiguous sequences, as cqrs-es hands them over with their
    /// command's context in the metadata) in one statement and returns the position of the last
    /// one; `None` when there was nothing to append.
    pub(crate) async fn append_events(&self, events: &[SerializedEvent]) -> Result<Option<i64>, PersistenceError> {
        let contexts = events
            .iter()
            .map(|event| {
                CommandContext::from_metadata(&event.metadata).ok_or_else(|| {
                    PersistenceError::UnknownError("an event reached the store without a command context".into())
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let stamped: Vec<Stamped> =
            events.iter().zip(&contexts).map(|(event, context)| Stamped { event, context, alongside: None }).collect();
        self.append_stamped(&stamped).await
    }

    /// `append_events` for events whose context and companion work come with them (`Stamped`):
    /// the facts of `Store::record`, which never pass through cqrs-es.
    pub(crate) async fn append_stamped(&self, events: &[Stamped<'_>]) -> Result<Option<i64>, PersistenceError> {
        if events.is_empty() {
            return Ok(None);
        }
        // Postgres text cannot hold U+0000: a stream id or type carrying one is refused here, in
        // this append only, instead of failing the statement it would share with other appends.
        for Stamped { event, .. } in events {
            for (column, text) in [
                ("aggregate_type", event.aggregate_type.as_str()),
                ("aggregate_id", event.aggregate_id.as_str()),
                ("event_type", event.event_type.as_str()),
                ("event_version", event.event_version.as_str()),
            ] {
                if text.contains('\0') {
                    return Err(PersistenceError::UnknownError(
                        format!("refusing to store U+0000 in {column}: Postgres text cannot hold it").into(),
                    ));
                }
            }
        }
        if events.len() > MAX_EVENTS_PER_APPEND {
            return Err(PersistenceError::UnknownError(
                format!("an append holds at most {MAX_EVENTS_PER_APPEND} events").into(),
            ));
        }
        // Subject keys cached here are checked by the append itself; should one have been
        // destroyed meanwhile (an erasure on another instance), the append is refused and sealed
        // again, every key checked before (which drops the destroyed one from the cache:
        // `KeyStore::subject_key`).
        match self.append_sealed(events, false).await {
            Err(e) if super::committer::is_key_destroyed(&e) => self.append_sealed(events, true).await,
            done => done,
        }
    }

    /// `append_stamped` once, its events sealed with subject keys checked now (`check_keys`) or
    /// by the append.
    async fn append_sealed(&self, events: &[Stamped<'_>], check_keys: bool) -> Result<Option<i64>, PersistenceError> {
        let Some(Stamped { event: first, .. }) = events.first() else {
            return Ok(None);
        };
        // Sealing may create keys; it happens before the transaction (in its own short ones) so
        // that key creation never holds locks while events are written. An unused key is harmless.
        let mut prepared = Vec::with_capacity(events.len());
        for event in events {
            prepared.push(self.prepare(event, check_keys).await?);
        }

        let (aggregate_type, aggregate_id) = (first.aggregate_type.as_str(), first.aggregate_id.as_str());
        let expected = first.sequence as i64 - 1;
        let mut prev_hash = self.head_hash(aggregate_type, aggregate_id, expected).await?;

        let mut rows = Vec::with_capacity(events.len());
        for (Stamped { event, context, alongside }, p) in events.iter().zip(prepared) {
            let metadata = MetadataText::new(context, p.event_id, &prev_hash);
            let hash = chain::event_hash_of(
                &prev_hash,
                aggregate_type,
                aggregate_id,
                event.sequence as i64,
                &event.event_type,
                &event.event_version,
                &p.payload,
                metadata.canonical.as_bytes(),
            );
            rows.push(Row {
                sequence: event.sequence as i64,
                event_type: event.event_type.clone(),
                event_version: event.event_version.clone(),
                payload: p.payload,
                metadata: metadata.stored(&hash),
                event_id: p.event_id,
                occurred_at: context.occurred_at,
                org_id: context.org_id.clone(),
                prev_hash: std::mem::replace(&mut prev_hash, hash.clone()),
                hash,
                settles: alongside.and_then(|a| a.settles),
                reserves: alongside.and_then(|a| a.reserves.clone()),
                unchecked_keys: p.unchecked_keys,
            });
        }
        let last_sequence = rows.last().expect("events is not empty").sequence;
        let last_hash = rows.last().expect("events is not empty").hash.clone();

        // Group commit: the events and the new chain head, in one statement with whatever other
        // appends are waiting. The head only moves from the sequence this command was decided on.
        let append = Append {
            aggregate_type: aggregate_type.to_string(),
            aggregate_id: aggregate_id.to_string(),
            expected,
            rows,
        };
        let position = self.committer.append(append).await?;
        self.heads.insert((aggregate_type.to_string(), aggregate_id.to_string()), (last_sequence, last_hash));
        self.appended.bump_types(events.iter().map(|e| e.event.event_type.as_str()));
        Ok(Some(position))
    }

    /// The last sequence this process knows of a stream: from its own loads and appends (cheap,
    /// possibly stale — an append at a stale head conflicts and is retried at the stored one).
    pub(crate) fn known_head(&self, aggregate_type: &str, aggregate_id: &str) -> Option<i64> {
        self.heads.last_sequence(aggregate_type, aggregate_id)
    }

    /// The last sequence and hash of a stream, for appends that do not load the aggregate.
    pub(crate) async fn stream_head(&self, aggregate_type: &str, aggregate_id: &str) -> Result<i64, PersistenceError> {
        let head: Option<(i64, String)> = sqlx::query_as(
            "SELECT last_sequence, last_hash FROM chain_heads WHERE aggregate_type = $1 AND aggregate_id = $2",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        Ok(match head {
            Some((sequence, hash)) => {
                self.heads.insert((aggregate_type.to_string(), aggregate_id.to_string()), (sequence, hash));
                sequence
            }
            None => 0,
        })
    }

    /// The hash of event `sequence` (the chain's last link before this append): from the loads
    /// of this process when it has one (an event's hash never changes), else from the head.
    async fn head_hash(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        sequence: i64,
    ) -> Result<String, PersistenceError> {
        if sequence == 0 {
            return Ok(chain::GENESIS.to_string());
        }
        if let Some(hash) = self.heads.get(aggregate_type, aggregate_id, sequence) {
            return Ok(hash);
        }
        let hash: Option<String> = sqlx::query_scalar(
            "SELECT hash FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence = $3",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(sequence)
        .fetch_optional(&self.pool)
        .await
        .map_err(db_error)?;
        // No event at the expected sequence: someone else's append is what this command missed.
        hash.ok_or(PersistenceError::OptimisticLockError)
    }

    async fn save_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: i64,
        current_snapshot: usize,
        state: &Value,
    ) -> Result<(), PersistenceError> {
        let state = storable::escaped(state);
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        sqlx::query("DELETE FROM snapshots WHERE aggregate_type = $1 AND aggregate_id = $2")
            .bind(A::TYPE)
            .bind(aggregate_id)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        sqlx::query(
            "INSERT INTO snapshots (aggregate_type, aggregate_id, last_sequence, current_snapshot, payload)
             VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(A::TYPE)
        .bind(aggregate_id)
        .bind(last_sequence)
        .bind(current_snapshot as i64)
        .bind(state.as_ref())
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
        tx.commit().await.map_err(db_error)
    }

    /// Loads a stream after `after` for an aggregate. Only what aggregates use is read: no
    /// aggregate decides on metadata (cqrs-es gets an empty map), and the last hash comes from
    /// its plain column, for the next append's chain link.
    async fn load(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        after: i64,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        let rows: Vec<(i64, String, String, Value, String)> = sqlx::query_as(
            "SELECT sequence, event_type, event_version, payload, hash FROM events
             WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3 ORDER BY sequence",
        )
        .bind(aggregate_type)
        .bind(aggregate_id)
        .bind(after)
        .fetch_all(&self.pool)
        .await
        .map_err(db_error)?;
        if let Some((sequence, _, _, _, hash)) = rows.last() {
            self.heads.insert((aggregate_type.to_string(), aggregate_id.to_string()), (*sequence, hash.clone()));
        }
        Ok(rows
            .into_iter()
            .map(|(sequence, event_type, event_version, payload, _)| SerializedEvent {
                aggregate_id: aggregate_id.to_string(),
                sequence: sequence as usize,
                aggregate_type: aggregate_type.to_string(),
                payload: retag(&event_type, payload),
                event_type,
                event_version,
                metadata: Value::Object(Map::new()),
            })
            .collect())
    }

    /// The stored form of one event's payload: untagged, made storable (`storable::make_storable`:
    /// U+0000 escaped, depth capped) and sealed; its metadata is written from its context, storable too, once its chain link is
    /// known (`MetadataText`). These are the one place event JSON is shaped for Postgres, so no
    /// event — whatever its producer let through — carries a NUL there.
    async fn prepare(&self, stamped: &Stamped<'_>, check_keys: bool) -> Result<Prepared, PersistenceError> {
        let Stamped { event, context, .. } = stamped;
        if context.org_id.as_deref().is_some_and(|org| org.contains('\0')) {
            return Err(PersistenceError::UnknownError(
                "refusing to store U+0000 in org_id: Postgres text cannot hold it".into(),
            ));
        }
        let event_id = Uuid::new_v4();
        let mut payload = untag(&event.event_type, event.payload.clone());
        // Before sealing, so a personal field's plaintext is storable too once opened.
        storable::make_storable(&mut payload);
        let unchecked_keys = seal_payload(
            &self.keystore,
            &mut payload,
            event_id,
            context.org_id.as_deref(),
            context.occurred_at,
            check_keys,
        )
        .await
        .map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
        if has_clear_fields(&payload) {
            return Err(PersistenceError::UnknownError("refusing to store a personal field in the clear".into()));
        }
        Ok(Prepared { event_id, payload, unchecked_keys })
    }
}

/// An event's metadata (docs/events.md#envelope), written once as text from its command's
/// context: `canonical`, its RFC 8785 form without `hash`, is what the chain hashes; the stored
/// text is the same with `hash` in its place — byte for byte what serde_json writes for the
/// metadata object (its members sorted, strings escaped alike, U+0000 stored as U+FFFD), which
/// `tests::metadata_text_is_what_serde_json_writes` holds it to.
struct MetadataText {
    canonical: String,
    /// Where `,"hash":…` goes: after `eventId`, before `occurredAt`.
    hash_at: usize,
}

impl MetadataText {
    fn new(context: &CommandContext, event_id: Uuid, prev_hash: &str) -> Self {
        use super::json_text::{push_opt_str, push_str};
        let text = |out: &mut String, s: &str| push_str(out, &storable::escaped_str(s));
        let optional = |out: &mut String, s: Option<&str>| push_opt_str(out, s.map(storable::escaped_str).as_deref());
        let provenance = &context.provenance;
        let mut out = String::with_capacity(320 + 96 * provenance.checks.len());
        out.push_str("{\"actor\":{\"id\":");
        text(&mut out, &context.actor.id);
        out.push_str(",\"kind\":");
        push_str(&mut out, context.actor.kind.as_str());
        out.push_str("},\"eventId\":");
        super::json_text::push_uuid(&mut out, event_id);
        let hash_at = out.len();
        out.push_str(",\"occurredAt\":");
        text(&mut out, &super::rfc3339(context.occurred_at));
        out.push_str(",\"orgId\":");
        optional(&mut out, context.org_id.as_deref());
        out.push_str(",\"prevHash\":");
        text(&mut out, prev_hash);
        out.push_str(",\"provenance\":{\"checks\":[");
        for (i, check) in provenance.checks.iter().enumerate() {
            out.push_str(if i == 0 { "{\"check\":" } else { ",{\"check\":" });
            text(&mut out, &check.check);
            if let Some(detail) = &check.detail {
                out.push_str(",\"detail\":");
                text(&mut out, detail);
            }
            out.push_str(",\"result\":");
            push_str(&mut out, check.result.as_str());
            out.push('}');
        }
        out.push(']');
        if let Some(refused_by) = &provenance.refused_by {
            out.push_str(",\"refusedBy\":");
            text(&mut out, refused_by);
        }
        out.push_str("},\"requestId\":");
        optional(&mut out, context.request_id.as_deref());
        out.push_str(",\"transport\":");
        text(&mut out, &context.transport);
        out.push('}');
        Self { canonical: out, hash_at }
    }

    fn stored(&self, hash: &str) -> String {
        let mut out = String::with_capacity(self.canonical.len() + 80);
        out.push_str(&self.canonical[..self.hash_at]);
        out.push_str(",\"hash\":");
        super::json_text::push_str(&mut out, hash);
        out.push_str(&self.canonical[self.hash_at..]);
        out
    }
}

/// A bounded map (aggregate → last sequence and hash). Losing it costs one read per append.
#[derive(Default)]
struct HeadCache {
    map: std::sync::Mutex<std::collections::HashMap<(String, String), (i64, String)>>,
}

impl HeadCache {
    const CAPACITY: usize = 10_000;

    fn insert(&self, key: (String, String), head: (i64, String)) {
        let mut map = self.map.lock().expect("head cache lock");
        if map.len() >= Self::CAPACITY && !map.contains_key(&key) {
            map.clear();
        }
        map.insert(key, head);
    }

    fn last_sequence(&self, aggregate_type: &str, aggregate_id: &str) -> Option<i64> {
        let map = self.map.lock().expect("head cache lock");
        map.get(&(aggregate_type.to_string(), aggregate_id.to_string())).map(|(s, _)| *s)
    }

    fn get(&self, aggregate_type: &str, aggregate_id: &str, sequence: i64) -> Option<String> {
        let map = self.map.lock().expect("head cache lock");
        let (s, hash) = map.get(&(aggregate_type.to_string(), aggregate_id.to_string()))?;
        (*s == sequence).then(|| hash.clone())
    }
}

struct Prepared {
    event_id: Uuid,
    payload: Value,
    /// Subject keys sealed under unchecked: the append checks them (`committer::Row`).
    unchecked_keys: Vec<Uuid>,
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

/// The inverse of `untag`, for loading aggregates.
fn retag(event_type: &str, payload: Value) -> Value {
    let mut map = Map::new();
    map.insert(event_type.to_string(), payload);
    Value::Object(map)
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
        self.load(A::TYPE, aggregate_id, 0).await
    }

    async fn get_last_events<A: Aggregate>(
        &self,
        aggregate_id: &str,
        last_sequence: usize,
    ) -> Result<Vec<SerializedEvent>, PersistenceError> {
        self.load(A::TYPE, aggregate_id, last_sequence as i64).await
    }

    async fn get_snapshot<A: Aggregate>(
        &self,
        aggregate_id: &str,
    ) -> Result<Option<SerializedSnapshot>, PersistenceError> {
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

#[cfg(test)]
mod tests {
    use chrono::{TimeZone, Utc};
    use serde_json::json;

    use super::super::context::{Actor, ActorKind, Provenance};
    use super::*;

    /// The metadata object as serde builds it: the members of the envelope, U+0000 escaped.
    fn as_serde_builds_it(context: &CommandContext, event_id: Uuid, prev_hash: &str) -> Map<String, Value> {
        let mut metadata = Map::new();
        metadata.insert("eventId".into(), Value::String(event_id.to_string()));
        metadata.insert("occurredAt".into(), Value::String(super::super::rfc3339(context.occurred_at)));
        metadata.insert("orgId".into(), context.org_id.clone().map_or(Value::Null, Value::String));
        metadata.insert("actor".into(), serde_json::to_value(&context.actor).unwrap());
        metadata.insert("requestId".into(), context.request_id.clone().map_or(Value::Null, Value::String));
        metadata.insert("transport".into(), Value::String(context.transport.clone()));
        metadata.insert("provenance".into(), serde_json::to_value(&context.provenance).unwrap());
        metadata.insert("prevHash".into(), Value::String(prev_hash.into()));
        metadata.values_mut().for_each(storable::escape_nul);
        metadata
    }

    #[test]
    fn metadata_text_is_what_serde_json_writes() {
        let at = Utc.with_ymd_and_hms(2026, 12, 7, 18, 0, 0).unwrap() + chrono::Duration::milliseconds(7);
        let mut refused = Provenance::default();
        refused.pass("role");
        refused.pass_with("quiet_hours", "zones America/New_York; 13:00\n\"local\" ✓");
        refused.skip("signature", "unverified");
        refused.fail("dnc", "Compliance: \u{0}listed \\ \u{1f} 🚫");
        let mut passed = Provenance::default();
        passed.pass("role");
        let kinds = [
            ActorKind::Agent,
            ActorKind::Org,
            ActorKind::SuperAdmin,
            ActorKind::System,
            ActorKind::Provider,
            ActorKind::Cli,
        ];
        for (i, kind) in kinds.into_iter().enumerate() {
            let actor = Actor { kind, id: ["a1", "o\"rg", "master", "ré\u{0}x", "twilio", "cli"][i].into() };
            let mut context = CommandContext::new(actor, ["mcp", "admin\t", "sse"][i % 3], at);
            if i % 2 == 1 {
                context = context.in_org("org \u{7f}</script>").with_request_id("req-1");
            }
            context = context.with_provenance([Provenance::default(), passed.clone(), refused.clone()][i % 3].clone());
            let (event_id, prev_hash) = (Uuid::new_v4(), ["0".repeat(64), "ab".repeat(32)][i % 2].clone());
            let text = MetadataText::new(&context, event_id, &prev_hash);
            let without_hash = as_serde_builds_it(&context, event_id, &prev_hash);
            let payload = json!({"to": {"$pii": 1}, "n": i});
            let hash = chain::event_hash(
                &prev_hash,
                "agent",
                "a1",
                3,
                "MessageSent",
                "1.0",
                &payload,
                &Value::Object(without_hash.clone()),
            );
            let hashed = chain::event_hash_of(
                &prev_hash,
                "agent",
                "a1",
                3,
                "MessageSent",
                "1.0",
                &payload,
                text.canonical.as_bytes(),
            );
            assert_eq!(hashed, hash, "the chain hashes the same bytes ({kind:?})");
            let mut stored = without_hash;
            stored.insert("hash".into(), Value::String(hash.clone()));
            assert_eq!(text.stored(&hash), serde_json::to_string(&stored).unwrap(), "{kind:?}");
        }
    }
}

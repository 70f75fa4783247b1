//! Group commit for appends. Every append (sealed, hashed, numbered by its caller) is queued
//! here; the committer task takes everything queued — at most one append per stream and
//! 4,096 events — and writes it in **one call** of `append_batch` (migration 0014): the chain heads of all streams move where
//! they still stand where each append was decided, and only the events of those streams are
//! inserted. An append whose stream moved meanwhile is answered `OptimisticLockError` and its
//! command is decided again; the others commit together. An append whose data Postgres refuses
//! fails alone: the batch is retried in halves (`commit`). Appends that carry reservations (a mock
//! send's event with its limits, migration 0037) go through `append_reserving`, which decides them
//! first: if any is refused nothing is stored, the appends holding one are answered `Refused`, and
//! the others are tried again without them. A lone writer waits for nobody: an append that finds
//! no other under way is committed on its caller's task (`store::gather`), and batches form only
//! from appends that arrive while a statement is in flight, or while the ready tasks run once
//! before a batch is taken (`next_batch`), as in Postgres's own group commit.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use cqrs_es::persist::PersistenceError;
use serde_json::Value;
use sqlx::encode::IsNull;
use sqlx::error::BoxDynError;
use sqlx::postgres::types::Oid;
use sqlx::postgres::{PgArgumentBuffer, PgHasArrayType, PgTypeInfo};
use sqlx::{Encode, Postgres, Type};
use tokio::sync::{mpsc, oneshot, Mutex};
use uuid::Uuid;

use super::gather::Gather;
use super::kept::KeptPool;

/// Events one transaction may append: the low 12 bits of a position number them.
pub const MAX_EVENTS_PER_APPEND: usize = 4096;

/// Statements in flight at once. While one runs, the next batch forms, so batches grow with load.
/// With 16 writers on 2 cores and `append_batch`: 4 in flight 6.1–7.1k appends/s (three runs),
/// 8 5.6k, 16 5.3k: more statements only compete for the same CPUs. After migration 0029 (one
/// append costs less, so a batch's fixed cost counts for more), `scripts/bench.sh event-store`,
/// alternating builds: 1 in flight 8.6k / 9.9k appends/s, 2 12.0k / 12.7k, 3 11.4k / 12.2k, 4
/// 9.5k / 10.7k; sends (`bench.sh send`, 16 sessions) 1,525 / 1,614 with 2 against 1,485 / 1,586
/// with 4. One statement in flight leaves a core idle while the next batch waits for it.
const COMMITTERS: usize = 2;

/// One event of an append, ready to insert.
pub(crate) struct Row {
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    /// Its text (`repository::MetadataText`).
    pub metadata: String,
    pub event_id: Uuid,
    pub occurred_at: DateTime<Utc>,
    pub org_id: Option<String>,
    pub prev_hash: String,
    pub hash: String,
    /// The outbound intent this event settles: deleted in the append's transaction if its head
    /// moves (migration 0028), so the event and the end of its intent commit together.
    pub settles: Option<Uuid>,
    /// The reservation this event is the outcome of, decided in the append's statement
    /// (`append_reserving`, migration 0037): both commit, or neither.
    pub reserves: Option<Reserve>,
    /// Subject keys the payload was sealed under from a cache, unchecked: the append fails
    /// (`CG002`, migration 0029) if any of them was destroyed (`KeyStore::subject_key_deferred`).
    pub unchecked_keys: Vec<Uuid>,
}

/// What an event's append also does in its transaction.
#[derive(Clone, Debug, Default)]
pub(crate) struct Alongside {
    /// The outbound intent the event settles (migration 0028).
    pub settles: Option<Uuid>,
    /// The reservation the event is the outcome of (migration 0037).
    pub reserves: Option<Reserve>,
}

/// One request of `reserve_actions` (as `ledger::reservations` writes it), `id` its `"id"`.
/// Shared, not copied, by the retries of its append.
#[derive(Clone, Debug)]
pub struct Reserve {
    pub id: Uuid,
    pub request: Arc<Value>,
}

/// A reservation refused inside a reserving append (`CG003`): its request's id and what
/// `reserve_actions` answered (limit type, current, maximum, reset instant).
#[derive(Clone, Debug)]
pub struct RefusedReservation {
    pub id: Uuid,
    pub limit_type: String,
    pub current: Option<i64>,
    pub max: Option<i64>,
    pub reset_at: Option<DateTime<Utc>>,
}

/// The reservations of an append that were refused: nothing of the statement was stored.
#[derive(Debug, thiserror::Error)]
#[error("{} reservation(s) refused", .0.len())]
pub(crate) struct Refused(pub Vec<RefusedReservation>);

/// The refused reservations of a failed append, if that is why it failed.
pub fn refused(e: &PersistenceError) -> Option<&[RefusedReservation]> {
    match e {
        PersistenceError::UnknownError(inner) => inner.downcast_ref::<Refused>().map(|r| r.0.as_slice()),
        _ => None,
    }
}

/// The refusals a reserving append's `CG003` lists in its DETAIL; `None` for any other error.
fn refusals_of(e: &sqlx::Error) -> Option<Vec<RefusedReservation>> {
    let sqlx::Error::Database(db) = e else { return None };
    if db.code().as_deref() != Some("CG003") {
        return None;
    }
    let detail = db.try_downcast_ref::<sqlx::postgres::PgDatabaseError>()?.detail()?;
    type Listed = (Uuid, String, Option<i64>, Option<i64>, Option<DateTime<Utc>>);
    let listed: Vec<Listed> = serde_json::from_str(detail).ok()?;
    Some(
        listed
            .into_iter()
            .map(|(id, limit_type, current, max, reset_at)| RefusedReservation {
                id,
                limit_type,
                current,
                max,
                reset_at,
            })
            .collect(),
    )
}

/// The events of one stream after sequence `expected`.
pub(crate) struct Append {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub expected: i64,
    pub rows: Vec<Row>,
}

type Reply = Result<i64, PersistenceError>;

struct Job {
    append: Append,
    reply: oneshot::Sender<Reply>,
}

#[derive(Clone)]
pub(crate) struct Committer {
    /// An append that finds none other under way is committed on its caller's task.
    gather: Gather<Job>,
    pool: KeptPool,
}

impl Committer {
    pub fn start(pool: KeptPool) -> Self {
        let (gather, jobs) = Gather::new();
        let committer = Self { gather, pool: pool.clone() };
        let jobs = Arc::new(Mutex::new(jobs));
        // At most half the pool in statements of the committers at once (and one lone append
        // on its caller's task beside them, which starts only when nothing else is under way).
        let committers = COMMITTERS.min(pool.max_connections() / 2).max(1);
        // The tasks end when the last `Committer` (and so the sender) is dropped.
        for _ in 0..committers {
            let (pool, jobs) = (pool.clone(), jobs.clone());
            tokio::spawn(async move {
                let mut held: Option<Job> = None;
                while let Some(batch) = next_batch(&jobs, &mut held).await {
                    commit(&pool, batch).await;
                }
            });
        }
        committer
    }

    /// Queues `append` and waits for its statement; returns the position of its last event.
    pub async fn append(&self, append: Append) -> Reply {
        let (reply, answer) = oneshot::channel();
        // Nothing to gather: committed here, a batch of one, with no hand-over and back.
        let alone = async |job| commit(&self.pool, vec![job]).await;
        let answer = self.gather.submit(Job { append, reply }, answer, alone).await;
        answer.ok_or_else(|| PersistenceError::UnknownError("the event store is shutting down".into()))?
    }
}

fn key(append: &Append) -> (String, String) {
    (append.aggregate_type.clone(), append.aggregate_id.clone())
}

/// Everything queued, up to one append per stream and `MAX_EVENTS_PER_APPEND` events, starting
/// with `held` (the job the previous batch could not take) or the next job to arrive; `None` when
/// the queue is closed. Cancel-safe: a job is taken out of `held` or the queue only where no
/// `await` follows before it is in the returned batch.
async fn next_batch(jobs: &Mutex<mpsc::UnboundedReceiver<Job>>, held: &mut Option<Job>) -> Option<Vec<Job>> {
    let mut jobs = jobs.lock().await;
    let first = match held.take() {
        Some(job) => job,
        None => {
            // Woken by the first append, let the tasks that are ready run once before taking
            // what else is queued: the writers a batch just answered are then queueing their next
            // appends. Not a wait: with nothing else ready the committer goes on at once.
            // `scripts/bench.sh event-store` (16 writers, alternating builds): 5.1 → 7.2 appends
            // per statement, 11.3–14.5k → 14.0–16.1k appends/s; sends unchanged.
            let job = jobs.recv().await?;
            tokio::task::yield_now().await;
            job
        }
    };
    let mut batch = vec![first];
    let mut streams: HashSet<(String, String)> = HashSet::new();
    let mut events = batch[0].append.rows.len();
    streams.insert(key(&batch[0].append));
    // Take what is already queued; a second append to a stream in this batch waits for the next
    // one (one row of a chain head per statement).
    while let Ok(job) = jobs.try_recv() {
        if streams.contains(&key(&job.append)) || events + job.append.rows.len() > MAX_EVENTS_PER_APPEND {
            *held = Some(job);
            break;
        }
        events += job.append.rows.len();
        streams.insert(key(&job.append));
        batch.push(job);
    }
    Some(batch)
}

/// One call of `append_batch` (migrations 0014, 0028) for the whole batch; every job gets its own answer.
///
/// A batch that fails for something in one append's data (an error of the statement, not of the
/// connection, and not a conflict) is split in halves and each half tried again, down to single
/// appends: the append Postgres refuses fails its own command only, the others commit. The happy
/// path stays one call; one bad append among n costs about 2·log2(n) more.
async fn commit(pool: &KeptPool, mut batch: Vec<Job>) {
    // Heads are locked in one global order, so concurrent batches cannot deadlock.
    batch.sort_unstable_by(|a, b| {
        (&a.append.aggregate_type, &a.append.aggregate_id).cmp(&(&b.append.aggregate_type, &b.append.aggregate_id))
    });
    let mut parts = vec![batch];
    while let Some(mut part) = parts.pop() {
        let result = run(pool, &part).await;
        if let Some(refusals) = result.as_ref().err().and_then(refusals_of) {
            // Nothing was stored: the appends holding a refused reservation are answered with
            // their refusals (their callers chain their streams again without them), the others
            // are tried again without them.
            let (refused, rest): (Vec<Job>, Vec<Job>) = part.into_iter().partition(|job| {
                job.append
                    .rows
                    .iter()
                    .any(|row| row.reserves.as_ref().is_some_and(|r| refusals.iter().any(|x| x.id == r.id)))
            });
            if refused.is_empty() {
                tracing::error!(refused = refusals.len(), "reserving append refused requests it did not hold");
                for job in rest {
                    let _ =
                        job.reply.send(Err(PersistenceError::UnknownError("reservations refused unexpectedly".into())));
                }
                continue;
            }
            for job in refused {
                let own: Vec<RefusedReservation> = refusals
                    .iter()
                    .filter(|x| job.append.rows.iter().any(|row| row.reserves.as_ref().is_some_and(|r| r.id == x.id)))
                    .cloned()
                    .collect();
                let _ = job.reply.send(Err(PersistenceError::UnknownError(Box::new(Refused(own)))));
            }
            if !rest.is_empty() {
                parts.push(rest);
            }
            continue;
        }
        match result {
            Ok((base, moved, last_rows)) => {
                for ((job, moved), last_row) in part.into_iter().zip(moved).zip(last_rows) {
                    let reply = if moved { Ok(base + last_row) } else { Err(PersistenceError::OptimisticLockError) };
                    let _ = job.reply.send(reply);
                }
            }
            // A unique violation means a stream moved in a way the heads did not show (impossible
            // while heads and events are written together), a deadlock or serialization failure
            // that another transaction interleaved: either way every append is decided again.
            Err(e) if retryable(&e) => {
                for job in part {
                    let _ = job.reply.send(Err(PersistenceError::OptimisticLockError));
                }
            }
            Err(e) if part.len() > 1 && isolatable(&e) => {
                tracing::warn!(error = %e, appends = part.len(), "append batch refused; retrying it in halves");
                let second = part.split_off(part.len() / 2);
                // Both halves keep the global order of their heads.
                parts.push(second);
                parts.push(part);
            }
            Err(e) if key_destroyed(&e) => {
                for job in part {
                    let _ = job.reply.send(Err(PersistenceError::UnknownError(Box::new(KeyDestroyed))));
                }
            }
            Err(e) => {
                let down = crate::error::is_outage(&e);
                if down {
                    crate::outage::DATABASE.failed("group commit", &e);
                } else {
                    tracing::error!(error = %e, appends = part.len(), "append failed");
                }
                let message = e.to_string();
                for job in part {
                    let error: Box<dyn std::error::Error + Send + Sync> = if down {
                        // Every waiting command answers `unavailable`, not `internal`.
                        Box::new(crate::error::DatabaseDown(message.clone()))
                    } else {
                        message.clone().into()
                    };
                    let _ = job.reply.send(Err(PersistenceError::ConnectionError(error)));
                }
            }
        }
    }
}

/// An append refused because a subject key one of its events was sealed under had been destroyed
/// (`CG002`): sealed again, under the live generation, it will be stored.
#[derive(Debug, thiserror::Error)]
#[error("a subject key this append was sealed under has been destroyed")]
pub(crate) struct KeyDestroyed;

fn key_destroyed(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("CG002"))
}

/// Whether an append failed only because it must be sealed again (`KeyDestroyed`).
pub(crate) fn is_key_destroyed(e: &PersistenceError) -> bool {
    matches!(e, PersistenceError::UnknownError(inner) if inner.is::<KeyDestroyed>())
}

fn retryable(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("23505" | "40001" | "40P01")))
}

/// Whether a failed statement may have failed for one append's data (22 data exception — 22P05
/// untranslatable character, 22021 bad encoding —, 54 program limit, 23 integrity, …) rather than
/// for the database or the connection, which every smaller statement would fail alike: not class
/// 08 (connection), 53 (resources), 57 (operator intervention, cancel), 58 (system), and not a
/// client-side error (pool, I/O, protocol).
fn isolatable(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::Database(db) => {
            !matches!(db.code().as_deref().map(|c| c.get(..2).unwrap_or(c)), Some("08" | "53" | "57" | "58"))
        }
        sqlx::Error::Encode(_) => true,
        _ => false,
    }
}

const APPEND_BATCH: &str = "SELECT base, moved FROM append_batch($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, \
                            $13, $14, $15, $16, $17, $18)";

/// `append_batch` with the batch's reservations decided first, in one transaction (migration 0037).
const APPEND_RESERVING: &str =
    "SELECT base, moved FROM append_reserving($19, $1, $2, $3, $4, $5, $6, $7, $8, $9, $10, \
                                $11, $12, $13, $14, $15, $16, $17, $18)";

/// One `append_batch` call for `jobs`: the position base, which heads moved, and each job's last
/// row index.
async fn run(pool: &KeptPool, jobs: &[Job]) -> Result<(i64, Vec<bool>, Vec<i64>), sqlx::Error> {
    let mut heads = HeadColumns::default();
    let mut rows = RowColumns::default();
    // The 0-based index, in the batch's rows, of each job's last event.
    let mut last_rows = Vec::with_capacity(jobs.len());
    // Reservations in the order of their events: the order they are decided in.
    let mut requests: Vec<&Value> = Vec::new();
    for (head, job) in (1i32..).zip(jobs.iter()) {
        let a = &job.append;
        let last = a.rows.last().expect("appends are not empty");
        heads.aggregate_type.push(a.aggregate_type.as_str());
        heads.aggregate_id.push(a.aggregate_id.as_str());
        heads.expected.push(a.expected);
        heads.last_sequence.push(last.sequence);
        heads.last_hash.push(last.hash.as_str());
        for row in &a.rows {
            rows.head.push(head);
            rows.sequence.push(row.sequence);
            rows.event_type.push(row.event_type.as_str());
            rows.event_version.push(row.event_version.as_str());
            rows.payload.push(JsonText::Value(&row.payload));
            rows.metadata.push(JsonText::Raw(&row.metadata));
            rows.event_id.push(row.event_id);
            rows.occurred_at.push(row.occurred_at);
            rows.org_id.push(row.org_id.as_deref());
            rows.prev_hash.push(row.prev_hash.as_str());
            rows.hash.push(row.hash.as_str());
            rows.settles.push(row.settles);
            rows.unchecked_keys.extend(&row.unchecked_keys);
            requests.extend(row.reserves.as_ref().map(|r| &*r.request));
        }
        last_rows.push(rows.head.len() as i64 - 1);
    }
    let mut conn = pool.take().await?;
    let statement = if requests.is_empty() { APPEND_BATCH } else { APPEND_RESERVING };
    let mut query = sqlx::query_as(statement)
        .bind(&heads.aggregate_type)
        .bind(&heads.aggregate_id)
        .bind(&heads.expected)
        .bind(&heads.last_sequence)
        .bind(&heads.last_hash)
        .bind(&rows.head)
        .bind(&rows.sequence)
        .bind(&rows.event_type)
        .bind(&rows.event_version)
        .bind(&rows.payload)
        .bind(&rows.metadata)
        .bind(&rows.event_id)
        .bind(&rows.occurred_at)
        .bind(&rows.org_id)
        .bind(&rows.prev_hash)
        .bind(&rows.hash)
        .bind(if rows.settles.iter().any(Option::is_some) { rows.settles.as_slice() } else { &[] })
        .bind(&rows.unchecked_keys);
    if !requests.is_empty() {
        query = query.bind(sqlx::types::Json(&requests));
    }
    let result: Result<(i64, Vec<bool>), sqlx::Error> = query.fetch_one(conn.conn()).await;
    conn.ended(&result);
    result.map(|(base, moved)| (base, moved, last_rows))
}

/// A JSON value bound as Postgres `json`, the type of the columns and of `append_batch`'s
/// parameters. sqlx binds a `serde_json::Value` as `jsonb`: Postgres then parsed each payload
/// and metadata into jsonb, printed it back and parsed it a third time as `json` for the cast
/// (5 % of Postgres's CPU during appends); as `json` its text is checked once and stored as sent.
enum JsonText<'a> {
    Value(&'a Value),
    /// JSON text already written.
    Raw(&'a str),
}

impl Type<Postgres> for JsonText<'_> {
    fn type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(114))
    }
}

impl PgHasArrayType for JsonText<'_> {
    fn array_type_info() -> PgTypeInfo {
        PgTypeInfo::with_oid(Oid(199))
    }
}

impl Encode<'_, Postgres> for JsonText<'_> {
    fn encode_by_ref(&self, buf: &mut PgArgumentBuffer) -> Result<IsNull, BoxDynError> {
        // `json`'s binary form is its text.
        match self {
            Self::Value(value) => serde_json::to_writer(&mut **buf, value)?,
            Self::Raw(text) => buf.extend_from_slice(text.as_bytes()),
        }
        Ok(IsNull::No)
    }
}

#[derive(Default)]
struct HeadColumns<'a> {
    aggregate_type: Vec<&'a str>,
    aggregate_id: Vec<&'a str>,
    expected: Vec<i64>,
    last_sequence: Vec<i64>,
    last_hash: Vec<&'a str>,
}

#[derive(Default)]
struct RowColumns<'a> {
    head: Vec<i32>,
    sequence: Vec<i64>,
    event_type: Vec<&'a str>,
    event_version: Vec<&'a str>,
    payload: Vec<JsonText<'a>>,
    metadata: Vec<JsonText<'a>>,
    event_id: Vec<Uuid>,
    occurred_at: Vec<DateTime<Utc>>,
    org_id: Vec<Option<&'a str>>,
    prev_hash: Vec<&'a str>,
    hash: Vec<&'a str>,
    settles: Vec<Option<Uuid>>,
    /// Every row's `unchecked_keys`, in one array: one destroyed key fails the statement.
    unchecked_keys: Vec<Uuid>,
}

//! Persistence: the embedded default cluster, the Postgres event store (cqrs-es + postgres-es
//! with our append path), sealed personal data, the global order and the projection runner.

pub mod chain;
mod committer;
pub mod context;
pub mod embedded;
pub mod envelope;
pub mod feed;
pub(crate) mod gather;
pub mod history;
mod json_text;
pub mod kept;
pub mod keystore;
pub mod pages;
pub mod receipt;
mod recorder;
pub mod repository;
pub mod runner;
pub mod sealing;
pub mod snapshots;
pub mod storable;
mod tail;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::persist::{PersistenceError, SerializedEvent};
use cqrs_es::{Aggregate, AggregateError, CqrsFramework, DomainEvent};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::watch;

use committer::Alongside;
pub use committer::{refused, RefusedReservation, Reserve};
pub use context::{Actor, ActorKind, CommandContext, Provenance};
pub use keystore::KeyStore;
pub use repository::EventRepository;
use repository::Stamped;

use crate::crypto::DataKeys;

/// The numbered migrations under `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How often a command is retried when another writer appended to its aggregate first.
const CONFLICT_RETRIES: u32 = 64;

/// Streams are snapshotted every this many events.
const SNAPSHOT_EVERY: usize = 100;

pub type Framework<A> = CqrsFramework<A, snapshots::SnapshotStore<A>>;

/// An idle connection older than this is pinged before it is handed out.
const STALE_AFTER: Duration = Duration::from_secs(1);

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    pool_options(max_connections).connect_with(options).await
}

/// The pool settings every pool of the process shares. sqlx pings every connection it takes back
/// into the pool, and by default again before every acquire: two extra round trips per query.
/// The acquire ping is kept only for a connection idle for a while (`STALE_AFTER`); a hot one was
/// checked when it was released.
pub(crate) fn pool_options(max_connections: u32) -> PgPoolOptions {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= STALE_AFTER {
                    sqlx::Connection::ping(conn).await?;
                }
                Ok(true)
            })
        })
}

/// RFC 3339 UTC with milliseconds, the contract's time format.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// Wakes the projection runners: a counter moved after every local append. Unlike a `Notify`, a
/// runner busy with a batch when it moves sees the change as soon as it waits again, so no append
/// waits for the idle poll.
///
/// Each runner subscribes with the event types its projection reads (`subscribe_to`), and a local
/// append wakes only the runners that read one of its types (`bump_types`): a send's
/// `MessageSent` wakes the audit, usage and anomaly runners, not the nine others, which used to
/// step (lock, checkpoint, read, checkpoint write) after every append only to move their
/// checkpoints past it. Those still move within their own `RECHECK`; another instance's events
/// wake the runners of their types (`runner::watch_head`), and `hurry` (`await_projection`) wakes everyone.
#[derive(Clone)]
pub struct Appended(Arc<Wakes>);

struct Wakes {
    all: watch::Sender<u64>,
    typed: std::sync::Mutex<Vec<(&'static [&'static str], watch::Sender<u64>)>>,
    /// Someone waits for a projection (`Store::await_projection`): runners stop gathering.
    hurry: watch::Sender<u64>,
}

impl Default for Appended {
    fn default() -> Self {
        Self(Arc::new(Wakes {
            all: watch::Sender::new(0),
            typed: std::sync::Mutex::default(),
            hurry: watch::Sender::new(0),
        }))
    }
}

impl Appended {
    /// Wakes every runner, and cuts short the pause of those gathering events after a batch: a
    /// caller waits for a projection to apply its own events.
    pub fn hurry(&self) {
        self.0.hurry.send_modify(|n| *n = n.wrapping_add(1));
        self.bump();
    }

    /// Changed by `hurry`.
    pub fn subscribe_hurry(&self) -> watch::Receiver<u64> {
        self.0.hurry.subscribe()
    }

    /// Wakes every runner.
    pub fn bump(&self) {
        self.0.all.send_modify(|n| *n = n.wrapping_add(1));
        for (_, wake) in self.0.typed.lock().expect("wakes lock").iter() {
            wake.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Wakes the runners that read any of `types`, and those that read every type.
    pub fn bump_types<'a>(&self, types: impl IntoIterator<Item = &'a str> + Clone) {
        self.0.all.send_modify(|n| *n = n.wrapping_add(1));
        for (reads, wake) in self.0.typed.lock().expect("wakes lock").iter() {
            if types.clone().into_iter().any(|t| reads.contains(&t)) {
                wake.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
    }

    /// Woken by every append.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.0.all.subscribe()
    }

    /// Woken by appends holding one of `types` (`None`: by every append), and by `bump`.
    pub fn subscribe_to(&self, types: Option<&'static [&'static str]>) -> watch::Receiver<u64> {
        match types {
            None => self.subscribe(),
            Some(types) => {
                let (wake, receiver) = watch::channel(0);
                self.0.typed.lock().expect("wakes lock").push((types, wake));
                receiver
            }
        }
    }
}

/// The event store and everything that shares its pool.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    kept: kept::KeptPool,
    repo: EventRepository,
    keystore: KeyStore,
    appended: Appended,
    recorder: recorder::Recorder,
}

impl Store {
    pub fn new(pool: PgPool, data_keys: Arc<DataKeys>) -> Self {
        let keystore = KeyStore::new(pool.clone(), data_keys);
        let appended = Appended::default();
        let kept = kept::KeptPool::new(pool.clone());
        let repo = EventRepository::new(kept.clone(), keystore.clone(), appended.clone());
        let recorder = recorder::Recorder::new(repo.clone());
        Self { pool, kept, repo, keystore, appended, recorder }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The hot path's connections (`kept`): last used first, no round trip to give one back.
    pub fn kept(&self) -> &kept::KeptPool {
        &self.kept
    }

    pub fn keystore(&self) -> &KeyStore {
        &self.keystore
    }

    /// Moves after every local append; projection runners wait on it.
    pub fn appended(&self) -> Appended {
        self.appended.clone()
    }

    /// A command framework for aggregate `A` over this store, snapshotting long streams
    /// (`snapshots::SnapshotStore`, which replaces cqrs-es 0.5's broken snapshot store).
    pub fn framework<A: Aggregate + Clone>(&self, services: A::Services) -> Framework<A> {
        let store = snapshots::SnapshotStore::new(self.repo.clone(), SNAPSHOT_EVERY);
        CqrsFramework::new(store, Vec::new(), services)
    }

    /// Executes `command` on aggregate `id` with `context`, retrying when another writer appended
    /// to the same aggregate in between (the command is decided again on the new state).
    /// Returns the position of the last event appended (`None` if the command decided none).
    pub async fn execute<A>(
        &self,
        framework: &Framework<A>,
        id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<Option<i64>, AggregateError<A::Error>>
    where
        A: Aggregate + Clone,
        A::Command: Clone,
    {
        let mut attempt = 0;
        loop {
            let run = framework.execute_with_metadata(id, command.clone(), context.to_metadata());
            match receipt::capture(run).await {
                (Err(AggregateError::AggregateConflict), _) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    backoff(attempt).await;
                }
                (result, position) => return result.map(|()| position),
            }
        }
    }

    /// Appends facts to a stream without deciding anything: events that record what happened
    /// (an authentication failure, a session opened) and that no rule can refuse. The stream's
    /// head comes from the chain head; a racing append is retried at the new head.
    pub async fn record<E: DomainEvent>(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[E],
        context: &CommandContext,
    ) -> Result<Option<i64>, PersistenceError> {
        self.record_settling(aggregate_type, aggregate_id, events, context, None).await
    }

    /// `record`, and with `settles` the outbound intent (`ledger::intents`) these events end,
    /// deleted in the transaction that appends them (migration 0028): one commit for both.
    pub async fn record_settling<E: DomainEvent>(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[E],
        context: &CommandContext,
        settles: Option<uuid::Uuid>,
    ) -> Result<Option<i64>, PersistenceError> {
        let alongside = Alongside { settles, reserves: None };
        self.record_alongside(aggregate_type, aggregate_id, events, context, alongside).await
    }

    /// `record`, the events stored only with reservation `reserves`, decided in the transaction
    /// that appends them (migration 0037): both commit, or neither. A refused reservation fails
    /// the call with the refusals `refused` finds in its error, and nothing is stored.
    pub async fn record_reserving<E: DomainEvent>(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[E],
        context: &CommandContext,
        reserves: Reserve,
    ) -> Result<Option<i64>, PersistenceError> {
        let alongside = Alongside { settles: None, reserves: Some(reserves) };
        self.record_alongside(aggregate_type, aggregate_id, events, context, alongside).await
    }

    /// `record`, the last event's append also doing `alongside`.
    async fn record_alongside<E: DomainEvent>(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[E],
        context: &CommandContext,
        alongside: Alongside,
    ) -> Result<Option<i64>, PersistenceError> {
        // Numbered by the recorder, which appends everything queued for the stream at once.
        let context = Arc::new(context.clone());
        let mut facts: Vec<recorder::Fact> = serialize(aggregate_type, aggregate_id, events)?
            .into_iter()
            .map(|event| recorder::Fact { event, context: context.clone(), alongside: Alongside::default() })
            .collect();
        if let Some(last) = facts.last_mut() {
            last.alongside = alongside;
        }
        self.recorder.record(aggregate_type, aggregate_id, facts).await
    }

    /// Like `record`, but only as the first events of the stream: a stream id that is a dedup
    /// key makes the fact happen once, however many instances try (`None`: it already had).
    pub async fn record_once<E: DomainEvent>(
        &self,
        aggregate_type: &str,
        aggregate_id: &str,
        events: &[E],
        context: &CommandContext,
    ) -> Result<Option<i64>, PersistenceError> {
        if self.repo.stream_head(aggregate_type, aggregate_id).await? > 0 {
            return Ok(None);
        }
        let serialized = serialize(aggregate_type, aggregate_id, events)?;
        let stamped: Vec<_> = serialized.iter().map(|event| Stamped { event, context, alongside: None }).collect();
        match self.repo.append_stamped(&stamped).await {
            Err(PersistenceError::OptimisticLockError) => Ok(None),
            other => other,
        }
    }

    /// Waits until projection `name` has applied every event up to `position` (read-your-writes
    /// for callers that answer from a projection right after a command).
    pub async fn await_projection(&self, name: &str, position: i64) -> Result<(), AwaitError> {
        let deadline = tokio::time::Instant::now() + PROJECTION_WAIT;
        loop {
            let applied: Option<i64> =
                sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
            if applied.unwrap_or(0) >= position {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(AwaitError::TimedOut(name.to_string()));
            }
            self.appended.hurry();
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

/// How long a caller waits for a projection to apply its own events before giving up.
const PROJECTION_WAIT: Duration = Duration::from_secs(10);

/// The database errors of a wait, for `ApiError::internal` (`unavailable` when it is down).
impl crate::error::Failure for AwaitError {
    fn database_down(&self) -> bool {
        match self {
            Self::Database(e) => crate::error::is_outage(e),
            Self::TimedOut(_) => false,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AwaitError {
    #[error("projection {0} did not catch up in time")]
    TimedOut(String),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// Events in cqrs-es's serialized form, numbered from 1 (the recorder numbers facts again where
/// their stream stands); their context travels beside them (`repository::Stamped`), not in the
/// metadata, which only cqrs-es's own path fills.
fn serialize<E: DomainEvent>(
    aggregate_type: &str,
    aggregate_id: &str,
    events: &[E],
) -> Result<Vec<SerializedEvent>, PersistenceError> {
    events
        .iter()
        .enumerate()
        .map(|(i, event)| {
            // Externally tagged, as cqrs-es serializes; the repository stores the inner object.
            let payload = serde_json::to_value(event).map_err(|e| PersistenceError::UnknownError(Box::new(e)))?;
            Ok(SerializedEvent::new(
                aggregate_id.to_string(),
                i + 1,
                aggregate_type.to_string(),
                event.event_type(),
                event.event_version(),
                payload,
                serde_json::Value::Null,
            ))
        })
        .collect()
}

/// Exponential backoff with full jitter: spreads racing writers apart.
async fn backoff(attempt: u32) {
    let ceiling_us = 200u64 << attempt.min(7);
    tokio::time::sleep(Duration::from_micros(rand::random::<u64>() % ceiling_us)).await;
}

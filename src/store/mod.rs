//! Persistence: the embedded default cluster, the Postgres event store (cqrs-es + postgres-es
//! with our append path), sealed personal data, the global order and the projection runner.

pub mod chain;
pub mod context;
pub mod embedded;
pub mod envelope;
pub mod feed;
pub mod keystore;
pub mod repository;
pub mod runner;
pub mod sealing;
pub mod snapshots;
pub mod verify;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use cqrs_es::{Aggregate, AggregateError, CqrsFramework};
use sqlx::migrate::Migrator;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;
use tokio::sync::Notify;

pub use context::{Actor, ActorKind, CommandContext, Provenance};
pub use keystore::KeyStore;
pub use repository::EventRepository;

use crate::crypto::DataKeys;

/// The numbered migrations under `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// How often a command is retried when another writer appended to its aggregate first.
const CONFLICT_RETRIES: u32 = 64;

/// Streams are snapshotted every this many events.
const SNAPSHOT_EVERY: usize = 100;

pub type Framework<A> = CqrsFramework<A, snapshots::SnapshotStore<A>>;

pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, sqlx::Error> {
    let options: PgConnectOptions = url.parse()?;
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect_with(options)
        .await
}

/// RFC 3339 UTC with milliseconds, the contract's time format.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

/// The event store and everything that shares its pool.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    repo: EventRepository,
    keystore: KeyStore,
    appended: Arc<Notify>,
}

impl Store {
    pub fn new(pool: PgPool, data_keys: Arc<DataKeys>) -> Self {
        let keystore = KeyStore::new(pool.clone(), data_keys);
        let appended = Arc::new(Notify::new());
        let repo = EventRepository::new(pool.clone(), keystore.clone(), appended.clone());
        Self { pool, repo, keystore, appended }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn keystore(&self) -> &KeyStore {
        &self.keystore
    }

    /// Notified after every local append; projection runners wait on it.
    pub fn appended(&self) -> Arc<Notify> {
        self.appended.clone()
    }

    /// A command framework for aggregate `A` over this store, snapshotting long streams
    /// (`snapshots::SnapshotStore`, which replaces cqrs-es 0.5's broken snapshot store).
    pub fn framework<A: Aggregate>(&self, services: A::Services) -> Framework<A> {
        let store = snapshots::SnapshotStore::new(self.repo.clone(), SNAPSHOT_EVERY);
        CqrsFramework::new(store, Vec::new(), services)
    }

    /// Executes `command` on aggregate `id` with `context`, retrying when another writer appended
    /// to the same aggregate in between (the command is decided again on the new state).
    pub async fn execute<A>(
        &self,
        framework: &Framework<A>,
        id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> Result<(), AggregateError<A::Error>>
    where
        A: Aggregate,
        A::Command: Clone,
    {
        let mut attempt = 0;
        loop {
            match framework.execute_with_metadata(id, command.clone(), context.to_metadata()).await {
                Err(AggregateError::AggregateConflict) if attempt < CONFLICT_RETRIES => {
                    attempt += 1;
                    // Exponential backoff with full jitter spreads racing writers apart.
                    let ceiling_us = 200u64 << attempt.min(7);
                    tokio::time::sleep(Duration::from_micros(rand::random::<u64>() % ceiling_us)).await;
                }
                other => return other,
            }
        }
    }
}

//! Read models of commguard. Each projection is fed the events in their global order by the
//! projection runner (in the server crate), writes its rows in the same transaction that moves its
//! checkpoint, and can be rebuilt from position 0 into shadow tables at any time.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

pub mod alerts;
pub mod anomaly;
pub mod audit;
pub mod contact;
pub mod directory;
pub mod sessions;
pub mod usage;

/// One stored event, as the store keeps it (personal fields sealed). Payload and metadata stay
/// raw JSON: each projection parses only the fields it needs, which keeps catch-up fast.
#[derive(Clone, Debug)]
pub struct StoredEvent {
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub occurred_at: DateTime<Utc>,
    pub org_id: Option<String>,
    pub payload: RawJson,
    pub metadata: RawJson,
    pub prev_hash: String,
    pub hash: String,
}

impl StoredEvent {
    /// The payload as a JSON value (for feeds and tools; projections prefer typed parsing).
    pub fn payload_value(&self) -> Value {
        self.payload.parse().unwrap_or(Value::Null)
    }

    pub fn metadata_value(&self) -> Value {
        self.metadata.parse().unwrap_or(Value::Null)
    }
}

/// JSON text as Postgres stored it. The `json` column type already validated it, so it is kept
/// as text and parsed once, into whatever shape the reader needs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RawJson(pub String);

impl RawJson {
    pub fn get(&self) -> &str {
        &self.0
    }

    pub fn parse<T: DeserializeOwned>(&self) -> serde_json::Result<T> {
        serde_json::from_str(&self.0)
    }
}

/// The physical names of a projection's tables: the live ones, or shadows during a rebuild.
#[derive(Clone, Debug, Default)]
pub struct Tables {
    names: HashMap<&'static str, String>,
    live: bool,
}

impl Tables {
    pub fn live(tables: &[&'static str]) -> Self {
        Self { names: tables.iter().map(|t| (*t, (*t).to_string())).collect(), live: true }
    }

    pub fn shadow(tables: &[&'static str]) -> Self {
        Self { names: tables.iter().map(|t| (*t, shadow_name(t))).collect(), live: false }
    }

    /// Live tables serve requests; a rebuild's shadows do not, so it sends no notifications.
    pub fn is_live(&self) -> bool {
        self.live
    }

    /// The physical name of logical table `table`. Panics on a table the projection did not
    /// declare: that is a programming error caught by the first test that applies an event.
    pub fn get(&self, table: &str) -> &str {
        self.names.get(table).unwrap_or_else(|| panic!("table {table} is not declared by this projection"))
    }
}

pub fn shadow_name(table: &str) -> String {
    format!("{table}__shadow")
}

/// A timestamp as Postgres reads it back exactly (microseconds, UTC).
pub fn rfc3339_micros(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A text column holding a serde enum (`active`, `production`, `granted`, …), for readers: an
/// unknown value is a decode error, never a default — a status or mode read wrong must not let
/// anything through.
pub(crate) fn enum_column<T: DeserializeOwned>(row: &sqlx::postgres::PgRow, column: &str) -> Result<T, sqlx::Error> {
    use sqlx::Row;
    let text: String = row.try_get(column)?;
    serde_json::from_value(Value::String(text))
        .map_err(|e| sqlx::Error::ColumnDecode { index: column.into(), source: Box::new(e) })
}

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error("projection database error: {0}")]
    Database(#[from] sqlx::Error),
    /// The runner delivered an event out of its stream's order: a bug, never skipped over.
    #[error("projection {projection} received {stream} sequence {got} after {last}")]
    OutOfOrder { projection: &'static str, stream: String, got: i64, last: i64 },
}

/// A read model fed by the projection runner.
pub trait Projection: Send + Sync {
    /// The checkpoint name, also the name `commguard replay --projection` takes.
    fn name(&self) -> &'static str;
    /// Every table the projection writes; a rebuild shadows and swaps them all.
    fn tables(&self) -> &'static [&'static str];
    /// The event types `apply` reads, when it reads only some: the live runner then fetches only
    /// these and moves the checkpoint past the rest unread. `None`: every event. Each projection
    /// filters its batch by the same constant, so the two cannot disagree.
    fn event_types(&self) -> Option<&'static [&'static str]> {
        None
    }
    /// True when `apply` finds no row by a non-unique index (it inserts, and finds rows only by
    /// their keys): a rebuild then loads its shadow tables without those indexes and builds each
    /// once at the end, a sorted build instead of an entry per row. False (the default) keeps
    /// them throughout, so that `apply`'s lookups stay index scans.
    fn defers_secondary_indexes(&self) -> bool {
        false
    }
    /// Run by a rebuild in its swap transaction, under the projection's lock, after the shadows
    /// have caught up and before they replace the live tables: for what the live tables had
    /// removed meanwhile by a command that holds the same lock (an erasure's consent rows).
    fn before_swap<'a>(
        &'a self,
        _conn: &'a mut PgConnection,
        _tables: &'a Tables,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async { Ok(()) })
    }
    /// Applies a batch of events, in global order, inside the runner's transaction. Batches let
    /// a projection write with a few set-based statements instead of one round trip per event.
    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>>;
}

/// Every projection this build has, in the order the runner starts them.
pub fn all() -> Vec<Box<dyn Projection>> {
    vec![
        Box::new(directory::OrgsProjection),
        Box::new(directory::AgentsProjection),
        Box::new(directory::TokensProjection),
        Box::new(directory::LimitsProjection),
        Box::new(usage::UsageProjection),
        Box::new(contact::ConsentProjection),
        Box::new(contact::DncProjection),
        Box::new(contact::CallsProjection),
        Box::new(audit::AuditProjection),
        Box::new(alerts::AlertsProjection),
        Box::new(anomaly::AnomalyProjection),
        Box::new(sessions::SessionsProjection),
    ]
}

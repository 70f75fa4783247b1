//! The global event order: reads below the horizon, where every transaction has ended.
//!
//! A position is `(transaction id << 12) | index within the transaction`. `event_horizon()` is
//! the oldest transaction id still running, shifted the same way: all transactions below it have
//! committed or aborted, so what a reader sees below the horizon is final, and every event that
//! commits later has a position above it. Readers therefore never skip an event, whatever order
//! transactions commit in.

use futures::TryStreamExt;
use sqlx::postgres::PgRow;
use sqlx::{PgExecutor, Row};

pub use commguard_projections::{RawJson, StoredEvent};

pub(crate) const COLUMNS: &str = "position, event_id, aggregate_type, aggregate_id, sequence, event_type, \
     event_version, occurred_at, org_id, payload::text AS payload, metadata::text AS metadata, prev_hash, hash";

/// A row of `COLUMNS`, read by position (in `COLUMNS` order): no column-name lookups per field,
/// and no type check per column (`try_get_unchecked`): the statement is ours, its column types
/// fixed by `COLUMNS` and the table. The one mapping of the columns is `EventRef::of_row`.
pub(crate) fn stored_event_from_row(row: &PgRow) -> Result<StoredEvent, sqlx::Error> {
    EventRef::of_row(row).map(|e| e.to_stored())
}

/// An event's columns, borrowed: from a row of `COLUMNS` as Postgres sent it (`EventRef::of_row`,
/// nothing copied), or from a `StoredEvent`.
pub(crate) struct EventRef<'a> {
    pub position: i64,
    pub event_id: uuid::Uuid,
    pub aggregate_type: &'a str,
    pub aggregate_id: &'a str,
    pub sequence: i64,
    pub event_type: &'a str,
    pub event_version: &'a str,
    pub occurred_at: chrono::DateTime<chrono::Utc>,
    pub org_id: Option<&'a str>,
    pub payload: &'a str,
    pub metadata: &'a str,
    pub prev_hash: &'a str,
    pub hash: &'a str,
}

impl<'a> EventRef<'a> {
    /// A row of `COLUMNS`, by position and without type checks.
    pub(crate) fn of_row(row: &'a PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            position: row.try_get_unchecked(0)?,
            event_id: row.try_get_unchecked(1)?,
            aggregate_type: row.try_get_unchecked(2)?,
            aggregate_id: row.try_get_unchecked(3)?,
            sequence: row.try_get_unchecked(4)?,
            event_type: row.try_get_unchecked(5)?,
            event_version: row.try_get_unchecked(6)?,
            occurred_at: row.try_get_unchecked(7)?,
            org_id: row.try_get_unchecked(8)?,
            payload: row.try_get_unchecked(9)?,
            metadata: row.try_get_unchecked(10)?,
            prev_hash: row.try_get_unchecked(11)?,
            hash: row.try_get_unchecked(12)?,
        })
    }

    /// The event, owned.
    pub(crate) fn to_stored(&self) -> StoredEvent {
        StoredEvent {
            position: self.position,
            event_id: self.event_id,
            aggregate_type: self.aggregate_type.to_owned(),
            aggregate_id: self.aggregate_id.to_owned(),
            sequence: self.sequence,
            event_type: self.event_type.to_owned(),
            event_version: self.event_version.to_owned(),
            occurred_at: self.occurred_at,
            org_id: self.org_id.map(str::to_owned),
            payload: RawJson(self.payload.to_owned()),
            metadata: RawJson(self.metadata.to_owned()),
            prev_hash: self.prev_hash.to_owned(),
            hash: self.hash.to_owned(),
        }
    }

    pub(crate) fn of(event: &'a StoredEvent) -> Self {
        Self {
            position: event.position,
            event_id: event.event_id,
            aggregate_type: &event.aggregate_type,
            aggregate_id: &event.aggregate_id,
            sequence: event.sequence,
            event_type: &event.event_type,
            event_version: &event.event_version,
            occurred_at: event.occurred_at,
            org_id: event.org_id.as_deref(),
            payload: event.payload.get(),
            metadata: event.metadata.get(),
            prev_hash: &event.prev_hash,
            hash: &event.hash,
        }
    }
}

/// The payload (as text) of a row of `COLUMNS`.
pub(crate) fn payload_of_row(row: &PgRow) -> Result<&str, sqlx::Error> {
    row.try_get_unchecked(9)
}

/// The position of a row of `COLUMNS`.
pub(crate) fn position_of_row(row: &PgRow) -> Result<i64, sqlx::Error> {
    row.try_get_unchecked(0)
}

/// Up to `limit` events after `after`, in global order, never past the horizon.
/// `org_id` restricts the feed to one organization's events.
pub async fn read_after<'e>(
    db: impl PgExecutor<'e>,
    after: i64,
    limit: i64,
    org_id: Option<&str>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events
         WHERE position > $1 AND position < event_horizon() AND ($3::text IS NULL OR org_id = $3)
         ORDER BY position LIMIT $2"
    );
    let rows = sqlx::query(&sql).bind(after).bind(limit).bind(org_id).fetch_all(db).await?;
    rows.iter().map(stored_event_from_row).collect()
}

/// Up to `limit` events of `event_types` after `after`, in global order, below `horizon` (an
/// `event_horizon()` read earlier: what lies below it was final then and still is), and how far
/// the read reached: every event up to that position that is not returned is of another type. A
/// short read reached the horizon, so the reader may move up to `last_event` — the last event
/// below that horizon, of any type — even when nothing it reads was there; never further, so a
/// reader with nothing new stays where it is.
pub async fn read_types_after(
    conn: &mut sqlx::PgConnection,
    after: i64,
    horizon: i64,
    last_event: i64,
    limit: i64,
    event_types: &[&str],
) -> Result<(Vec<StoredEvent>, i64), sqlx::Error> {
    let sql = format!(
        "SELECT {COLUMNS} FROM events
         WHERE position > $1 AND position < $2 AND event_type = ANY($3)
         ORDER BY position LIMIT $4"
    );
    let rows = sqlx::query(&sql).bind(after).bind(horizon).bind(event_types).bind(limit).fetch_all(conn).await?;
    let events = rows.iter().map(stored_event_from_row).collect::<Result<Vec<_>, _>>()?;
    let reached = match events.last() {
        Some(last) if events.len() as i64 == limit => last.position,
        Some(last) => after.max(last_event).max(last.position),
        None => after.max(last_event),
    };
    Ok((events, reached))
}

/// One page of the auditor feed: up to `limit` events after `after` (of one organization, or of
/// all), and the highest position of that scope below the same horizon (`headPosition`). The
/// horizon is read once, so the head is never below the page. Each scope has its own statement
/// (no `$n IS NULL OR ...`), so the planner always sees which index serves it.
pub async fn read_page(
    pool: &sqlx::PgPool,
    after: i64,
    limit: i64,
    org_id: Option<&str>,
) -> Result<(Vec<StoredEvent>, i64), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    let (horizon, head) = horizon_and_head(&mut conn, org_id).await?;
    let mut events = Vec::new();
    read_below(&mut conn, after, horizon, limit, org_id, usize::MAX, |chunk| events.extend(chunk)).await?;
    Ok((events, head))
}

/// The horizon now, and the highest position in scope below it (`headPosition`).
pub async fn horizon_and_head(conn: &mut sqlx::PgConnection, org_id: Option<&str>) -> Result<(i64, i64), sqlx::Error> {
    match org_id {
        Some(org) => {
            sqlx::query_as(
                "SELECT event_horizon(), COALESCE((SELECT MAX(position) FROM events
                                               WHERE org_id = $1 AND position < event_horizon()), 0)",
            )
            .bind(org)
            .fetch_one(conn)
            .await
        }
        None => sqlx::query_as(
            "SELECT event_horizon(), COALESCE((SELECT MAX(position) FROM events WHERE position < event_horizon()), 0)",
        )
        .fetch_one(conn)
        .await,
    }
}

/// Up to `limit` events in scope after `after` and below `horizon` (read earlier), handed to
/// `each` `chunk` at a time as they arrive. Returns how many there were.
pub async fn read_below(
    conn: &mut sqlx::PgConnection,
    after: i64,
    horizon: i64,
    limit: i64,
    org_id: Option<&str>,
    chunk: usize,
    mut each: impl FnMut(Vec<StoredEvent>),
) -> Result<usize, sqlx::Error> {
    let mut failed = None;
    let count = read_rows_below(conn, after, horizon, limit, org_id, chunk, |rows| {
        match rows.iter().map(stored_event_from_row).collect::<Result<Vec<_>, _>>() {
            Ok(events) => each(events),
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    })
    .await?;
    failed.map_or(Ok(count), Err)
}

/// `read_below`'s rows as Postgres sent them (`COLUMNS`, undecoded), `chunk` at a time: the task
/// that reads the socket only gathers them, the reader decodes them where it likes
/// (`store::pages` on the blocking pool, beside the socket).
pub(crate) async fn read_rows_below(
    conn: &mut sqlx::PgConnection,
    after: i64,
    horizon: i64,
    limit: i64,
    org_id: Option<&str>,
    chunk: usize,
    mut each: impl FnMut(Vec<PgRow>),
) -> Result<usize, sqlx::Error> {
    let org_sql = format!(
        "SELECT {COLUMNS} FROM events WHERE org_id = $1 AND position > $2 AND position < $3
         ORDER BY position LIMIT $4"
    );
    let all_sql =
        format!("SELECT {COLUMNS} FROM events WHERE position > $1 AND position < $2 ORDER BY position LIMIT $3");
    let mut rows = match org_id {
        Some(org) => sqlx::query(&org_sql).bind(org).bind(after).bind(horizon).bind(limit).fetch(conn),
        None => sqlx::query(&all_sql).bind(after).bind(horizon).bind(limit).fetch(conn),
    };
    let share = chunk.min(usize::try_from(limit).unwrap_or(0)).max(1);
    let (mut gathered, mut count) = (Vec::with_capacity(share.min(1000)), 0);
    while let Some(row) = rows.try_next().await? {
        gathered.push(row);
        count += 1;
        if gathered.len() == share {
            each(std::mem::replace(&mut gathered, Vec::with_capacity(share.min(1000))));
        }
    }
    if !gathered.is_empty() {
        each(gathered);
    }
    Ok(count)
}

/// Events at `positions` (already known to lie below the horizon), in position order.
pub async fn read_positions<'e>(db: impl PgExecutor<'e>, positions: &[i64]) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let sql = format!("SELECT {COLUMNS} FROM events WHERE position = ANY($1) ORDER BY position");
    let rows = sqlx::query(&sql).bind(positions).fetch_all(db).await?;
    rows.iter().map(stored_event_from_row).collect()
}

/// The highest position a reader may see now (for `headPosition` and progress bars).
pub async fn head_position<'e>(db: impl PgExecutor<'e>) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events WHERE position < event_horizon()")
        .fetch_one(db)
        .await
}

/// How many events are visible below the horizon after `after` (of `event_types` only, if given).
pub async fn count_after<'e>(
    db: impl PgExecutor<'e>,
    after: i64,
    event_types: Option<&[&str]>,
) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM events
          WHERE position > $1 AND position < event_horizon() AND ($2::text[] IS NULL OR event_type = ANY($2))",
    )
    .bind(after)
    .bind(event_types)
    .fetch_one(db)
    .await
}

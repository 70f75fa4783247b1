//! The projection runner: follows the global event order from each projection's checkpoint and
//! applies a batch of events and the new checkpoint in one transaction. A crash anywhere rolls the
//! batch back; the next run starts at the last committed checkpoint. Several instances may run
//! it: a transaction-scoped advisory lock per projection lets one of them work at a time.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use commguard_projections::{shadow_name, Projection, ProjectionError, Tables};
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::feed;
use super::kept::KeptPool;
use super::tail::{self, Below, Tail};
use crate::error::{is_outage, Failure};

/// Events applied per transaction.
pub const BATCH: i64 = 500;
/// Events applied per transaction while rebuilding into shadow tables.
const REBUILD_BATCH: i64 = 5_000;
/// How long a rebuild waits quietly for the horizon to pass the events committed before it began.
const HORIZON_PATIENCE: Duration = Duration::from_secs(10);
/// How often the instance looks for events committed by other instances (`watch_head`: one
/// statement for all runners).
const IDLE_POLL: Duration = Duration::from_millis(100);
/// How often a runner with nothing to do looks again on its own, without a wake: for a batch
/// another instance took the lock for and then never committed.
const RECHECK: Duration = Duration::from_secs(1);
/// How long a runner that just applied a batch lets new events gather before it looks again,
/// unless someone waits for the projection (`Appended::hurry`, from `Store::await_projection`).
/// At 15 ms, one session's sends (one every 1–3 ms) each cost the three projections that read
/// them (audit, usage, anomaly) about a third of a transaction — seven statements and a commit
/// per send, as many as the send itself (docs/performance.md "Sends"); nobody reads those
/// projections right after a send, and a reader that waits cuts the pause short.
const GATHER: Duration = Duration::from_millis(100);

/// The select list and `FROM` of the horizon and the position of the last event below it (0 when
/// there is none): `Below`, as `lock_relaxed` reads it beside the lock and a rebuild's typed read
/// alone.
macro_rules! below_horizon {
    () => {
        "h.horizon, COALESCE((SELECT MAX(position) FROM events WHERE position < h.horizon), 0)
           FROM event_horizon() AS h(horizon)"
    };
}

#[derive(Debug, thiserror::Error)]
pub enum RunnerError {
    #[error(transparent)]
    Projection(#[from] ProjectionError),
    #[error("projection runner database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("unknown projection {0:?}")]
    UnknownProjection(String),
    #[error("projection {0} stopped moving")]
    Stalled(String),
    #[error("the indexes of {0} changed during the rebuild; run it again")]
    Changed(String),
}

/// A runner's database errors, as the projection's own statements raised them or its own.
impl Failure for RunnerError {
    fn database_down(&self) -> bool {
        match self {
            Self::Database(e) | Self::Projection(ProjectionError::Database(e)) => is_outage(e),
            Self::Projection(ProjectionError::OutOfOrder { .. })
            | Self::UnknownProjection(_)
            | Self::Stalled(_)
            | Self::Changed(_) => false,
        }
    }
}

/// Applies at most one batch of `projection` under checkpoint `checkpoint`, writing to `tables`.
/// Returns how many events it applied (0: caught up, or another instance holds the projection).
pub async fn run_batch(
    pool: &PgPool,
    projection: &dyn Projection,
    checkpoint: &str,
    tables: &Tables,
    batch: i64,
) -> Result<usize, RunnerError> {
    Ok(step(&mut *pool.acquire().await?, projection, checkpoint, tables, batch, None).await?.applied)
}

/// What one live step did: events applied (the checkpoint may also have moved past events of
/// types the projection does not read), and whether there is more below the horizon it read under.
struct Step {
    applied: usize,
    more: bool,
}

/// One live step on `conn`; it ends its transaction either way when it returns `Ok`, so the
/// connection may serve the next statement at once (`kept`).
async fn step(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    checkpoint: &str,
    tables: &Tables,
    batch: i64,
    tail: Option<&Tail>,
) -> Result<Step, RunnerError> {
    let mut tx = conn.begin().await?;
    let Some(below) = lock_relaxed(&mut tx, projection.name()).await? else {
        tx.rollback().await?;
        return Ok(Step { applied: 0, more: false });
    };
    let step = apply_batch(&mut tx, projection, checkpoint, tables, batch, Some((below, tail))).await?;
    tx.commit().await?;
    Ok(step)
}

/// Applies everything below the horizon in batches, reading batch n+1 on a second connection
/// while batch n is applied, so catching up costs max(read, apply) per batch instead of the sum.
/// Each batch is applied under the projection's lock and only if the checkpoint is still where
/// the prefetch started (another instance may have moved it; then the prefetch is dropped).
/// Returns how many events were applied.
pub async fn catch_up(
    pool: &PgPool,
    projection: &dyn Projection,
    checkpoint: &str,
    tables: &Tables,
    batch: i64,
) -> Result<u64, RunnerError> {
    let mut applied = 0u64;
    let mut after = checkpoint_of(&mut *pool.acquire().await?, checkpoint).await?;
    let mut next = prefetch(pool.clone(), after, batch, None);
    loop {
        let (events, _) = next.await.expect("the prefetch task does not panic")?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(applied);
        };
        next = prefetch(pool.clone(), last, batch, None);
        let mut tx = pool.begin().await?;
        if !lock_relaxed_only(&mut tx, projection.name()).await? || checkpoint_of(&mut tx, checkpoint).await? != after {
            // Someone else is applying this projection: leave it to them.
            return Ok(applied);
        }
        projection.apply(&mut tx, tables, &events).await?;
        set_checkpoint(&mut tx, checkpoint, last).await?;
        tx.commit().await?;
        applied += events.len() as u64;
        after = last;
    }
}

/// The next `batch` events after `after`, read in a task of its own (on a connection of its own),
/// of `event_types` only (all with `None`), and how far the read reached: with types, up to the
/// last event below the horizon it read under when no event of those types is left
/// (`feed::read_types_after`).
fn prefetch(
    pool: PgPool,
    after: i64,
    batch: i64,
    event_types: Option<&'static [&'static str]>,
) -> JoinHandle<Result<(Vec<feed::StoredEvent>, i64), sqlx::Error>> {
    tokio::spawn(async move {
        let mut tx = pool.begin().await?;
        sqlx::query("SET LOCAL enable_bitmapscan = off").execute(&mut *tx).await?;
        let read = match event_types {
            Some(types) => {
                let (horizon, last_event): (i64, i64) =
                    sqlx::query_as(concat!("SELECT ", below_horizon!())).fetch_one(&mut *tx).await?;
                feed::read_types_after(&mut tx, after, horizon, last_event, batch, types).await?
            }
            None => {
                let events = feed::read_after(&mut *tx, after, batch, None).await?;
                let reached = events.last().map_or(after, |e| e.position);
                (events, reached)
            }
        };
        tx.commit().await?;
        Ok(read)
    })
}

/// Inside the caller's transaction: reads the checkpoint, applies the next events below the
/// horizon, and moves the checkpoint past them. A live step (`live`: the horizon its lock
/// statement read, and this instance's `Tail` if it has one) reads the projection's event types
/// only, and the checkpoint moves past the others too — up to the last event below that horizon
/// (`feed::read_types_after`, `Tail::read`), never further: with no new event the checkpoint is
/// not written, so idle runners write nothing (each write took a transaction id, which moved the
/// horizon for the others, which then wrote theirs: nine runners kept each other busy). A
/// rebuild reads everything, so its progress counts every event.
async fn apply_batch(
    conn: &mut PgConnection,
    projection: &dyn Projection,
    checkpoint: &str,
    tables: &Tables,
    batch: i64,
    live: Option<(Below, Option<&Tail>)>,
) -> Result<Step, RunnerError> {
    let position = checkpoint_of(&mut *conn, checkpoint).await?;
    let types = projection.event_types();
    let (events, reached) = match live {
        Some((below, Some(tail))) => tail.read(&mut *conn, position, below, batch, types).await?,
        Some((below, None)) => tail::direct(&mut *conn, position, below, batch, types).await?,
        None => {
            let events = feed::read_after(&mut *conn, position, batch, None).await?;
            let reached = events.last().map_or(position, |e| e.position);
            (events, reached)
        }
    };
    let more = events.len() as i64 == batch || live.is_some_and(|(below, _)| reached < below.last_event);
    if reached <= position {
        return Ok(Step { applied: 0, more: false });
    }
    if !events.is_empty() {
        projection.apply(&mut *conn, tables, &events).await?;
    }
    set_checkpoint(&mut *conn, checkpoint, reached).await?;
    Ok(Step { applied: events.len(), more })
}

/// Takes the projection's lock for this transaction (`None`: another instance holds it), relaxes
/// the transaction and reads the horizon and the last event below it, in one round trip. A projection batch need not wait for its WAL
/// flush: its rows and its checkpoint commit or are lost together, and a lost batch is simply
/// applied again from the older checkpoint. The feed is read in index order: right after a burst
/// of appends, before autovacuum has analyzed `events`, the planner would otherwise bitmap-scan
/// and sort the batch on disk (3x slower, measured). Statements use their generic plans: the
/// audit projection's stream-heads join over `UNNEST` arrays was planned afresh for every batch
/// (pg_stat_statements: 798 plans for 789 calls, 0.17 ms of planning against 0.02 ms of
/// execution each).
async fn lock_relaxed(conn: &mut PgConnection, projection: &str) -> Result<Option<Below>, sqlx::Error> {
    let (locked, horizon, last_event): (bool, i64, i64) = sqlx::query_as(concat!(
        "SELECT pg_try_advisory_xact_lock(hashtext('commguard.projection.' || $1))
                AND set_config('synchronous_commit', 'off', true) IS NOT NULL
                AND set_config('enable_bitmapscan', 'off', true) IS NOT NULL
                AND set_config('plan_cache_mode', 'force_generic_plan', true) IS NOT NULL, ",
        below_horizon!()
    ))
    .bind(projection)
    .fetch_one(conn)
    .await?;
    Ok(locked.then_some(Below { horizon, last_event }))
}

/// `lock_relaxed` without the horizon, for `catch_up`, which reads its batches ahead on its own:
/// the last event below the horizon, read after a burst of appends (before its rows are all
/// visible in the visibility map), cost about 4 ms of each catch-up batch of 5,000 events.
async fn lock_relaxed_only(conn: &mut PgConnection, projection: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT pg_try_advisory_xact_lock(hashtext('commguard.projection.' || $1))
                AND set_config('synchronous_commit', 'off', true) IS NOT NULL
                AND set_config('enable_bitmapscan', 'off', true) IS NOT NULL
                AND set_config('plan_cache_mode', 'force_generic_plan', true) IS NOT NULL",
    )
    .bind(projection)
    .fetch_one(conn)
    .await
}

/// The relaxations of `lock_relaxed`, for the rebuild's shadow batches (which take no lock).
async fn durability_relaxed(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT set_config('synchronous_commit', 'off', true), set_config('enable_bitmapscan', 'off', true)")
        .execute(conn)
        .await?;
    Ok(())
}

async fn checkpoint_of(conn: &mut PgConnection, checkpoint: &str) -> Result<i64, sqlx::Error> {
    Ok(sqlx::query_scalar("SELECT position FROM projection_checkpoints WHERE projection = $1")
        .bind(checkpoint)
        .fetch_optional(conn)
        .await?
        .unwrap_or(0))
}

async fn set_checkpoint(conn: &mut PgConnection, checkpoint: &str, position: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO projection_checkpoints (projection, position, updated_at) VALUES ($1, $2, now())
         ON CONFLICT (projection) DO UPDATE SET position = EXCLUDED.position, updated_at = now()",
    )
    .bind(checkpoint)
    .bind(position)
    .execute(conn)
    .await?;
    Ok(())
}

/// Runs every projection until `stop` is notified. One task per projection, so a slow or broken
/// projection never holds the others back; a failing batch is logged and retried after a pause.
///
/// A woken runner applies what it finds in one transaction (a full batch means a backlog, which
/// `catch_up` reads ahead). After a batch it pauses `GATHER` before looking again (less if
/// someone waits for the projection), so under a steady stream of appends each transaction
/// carries many events instead of one commit's worth.
/// Runners are woken by local appends and by `watch_head` (other instances' appends); with
/// nothing to do they cost nothing but one look every `RECHECK`.
pub fn spawn_all(
    kept: KeptPool,
    projections: Vec<Box<dyn Projection>>,
    appended: super::Appended,
    stop: Arc<Notify>,
) -> Vec<JoinHandle<()>> {
    let watcher = watch_head(kept.pool().clone(), appended.clone(), stop.clone());
    let tail = Arc::new(Tail::default());
    projections
        .into_iter()
        .map(|projection| {
            let (kept, stop, tail) = (kept.clone(), stop.clone(), tail.clone());
            let pool = kept.pool().clone();
            let mut wake = appended.subscribe_to(projection.event_types());
            let mut hurry = appended.subscribe_hurry();
            tokio::spawn(async move {
                let tables = Tables::live(projection.tables());
                let name = projection.name();
                loop {
                    wake.borrow_and_update();
                    hurry.borrow_and_update();
                    // A live step runs on the hot path's warm connections (`kept`).
                    let stepped = match kept.take().await {
                        Ok(mut conn) => {
                            let stepped =
                                step(conn.conn(), projection.as_ref(), name, &tables, BATCH, Some(&tail)).await;
                            if stepped.is_ok() {
                                conn.keep();
                            }
                            stepped
                        }
                        Err(e) => Err(e.into()),
                    };
                    let moved = match stepped {
                        Ok(s) if s.more => {
                            catch_up(&pool, projection.as_ref(), name, &tables, BATCH).await.map(|_| true)
                        }
                        // Moved only past events of other types: nothing to gather; wait for a
                        // wake (an append of this projection's types) or `RECHECK`.
                        Ok(s) => Ok(s.applied > 0),
                        Err(e) => Err(e),
                    };
                    if moved.is_ok() {
                        crate::outage::DATABASE.succeeded();
                    }
                    let wait = match moved {
                        Ok(false) => RECHECK,
                        Ok(true) => {
                            tokio::select! {
                                _ = stop.notified() => return,
                                _ = hurry.changed() => continue,
                                _ = tokio::time::sleep(GATHER) => continue,
                            }
                        }
                        Err(e) if e.database_down() => {
                            crate::outage::DATABASE.failed("projection runner", &e);
                            Duration::from_secs(1)
                        }
                        Err(e) => {
                            tracing::error!(projection = name, error = %e, "projection batch failed");
                            Duration::from_secs(1)
                        }
                    };
                    tokio::select! {
                        _ = stop.notified() => return,
                        _ = wake.changed() => {}
                        _ = tokio::time::sleep(wait) => {}
                    }
                }
            })
        })
        .chain(std::iter::once(watcher))
        .collect()
}

/// Every `IDLE_POLL`, one statement for all of this instance's runners: the last event below the
/// horizon, and the types of the events that became visible since the last look. When there are
/// new ones (events another instance committed, or ours) the runners that read one of their
/// types are woken, as by a local append of them (`Appended::bump_types`); otherwise nothing
/// runs. Waking every runner instead made each of the nine that read none of a send's types
/// step (lock, checkpoint, feed read, checkpoint write) every 100 ms while one session sent —
/// about one runner transaction per lone send; they still move past such events within their
/// `RECHECK`.
fn watch_head(pool: PgPool, appended: super::Appended, stop: Arc<Notify>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut seen: Option<i64> = None;
        loop {
            tokio::select! {
                _ = stop.notified() => return,
                _ = tokio::time::sleep(IDLE_POLL) => {}
            }
            // A failure is the runners' to report (they look again every `RECHECK`).
            let Some(after) = seen else {
                let head: Result<i64, sqlx::Error> = sqlx::query_scalar(
                    "SELECT COALESCE(MAX(position), 0) FROM events WHERE position < event_horizon()",
                )
                .fetch_one(&pool)
                .await;
                seen = head.ok();
                continue;
            };
            // Below the horizon nothing appears behind `after` (the last event below an earlier
            // horizon): every new event is after it.
            let new: Result<(Option<i64>, Option<Vec<String>>), sqlx::Error> = sqlx::query_as(
                "SELECT MAX(position), array_agg(DISTINCT event_type) FROM events
                  WHERE position > $1 AND position < event_horizon()",
            )
            .bind(after)
            .fetch_one(&pool)
            .await;
            if let Ok((Some(head), types)) = new {
                let types = types.unwrap_or_default();
                appended.bump_types(types.iter().map(String::as_str));
                seen = Some(head);
            }
        }
    })
}

/// Holds projection `name`'s lock until the transaction ends (waiting for it): live batches,
/// which only try it, skip meanwhile. A rebuild's swap holds it, and so does a command that
/// changes a projection's rows itself (an erasure's consent rows).
pub(crate) async fn hold_projection_lock(conn: &mut PgConnection, name: &str) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('commguard.projection.' || $1))")
        .bind(name)
        .execute(conn)
        .await
        .map(|_| ())
}

/// Rebuilds `projection` from position 0 into shadow tables while servers keep running, then
/// swaps the shadows in atomically, catching up on whatever was appended meanwhile.
pub async fn rebuild(pool: &PgPool, projection: &dyn Projection, progress: &mut Progress) -> Result<u64, RunnerError> {
    let name = projection.name();
    let shadow_checkpoint = format!("{name}__rebuild");
    let shadows = Tables::shadow(projection.tables());
    let mut setup = pool.begin().await?;
    let mut deferred = Vec::new();
    for table in projection.tables() {
        let shadow = shadow_name(table);
        sqlx::query(&format!("DROP TABLE IF EXISTS {shadow}")).execute(&mut *setup).await?;
        sqlx::query(&format!("CREATE TABLE {shadow} (LIKE {table} INCLUDING ALL)")).execute(&mut *setup).await?;
        if projection.defers_secondary_indexes() {
            deferred.extend(drop_secondary_indexes(&mut setup, &shadow).await?);
        }
    }
    sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
        .bind(&shadow_checkpoint)
        .execute(&mut *setup)
        .await?;
    setup.commit().await?;

    let types = projection.event_types();
    progress.total = feed::count_after(pool, 0, types).await? as u64;
    let mut applied = 0u64;
    // Shadow batches run without the live projection's lock, so live runners keep the live
    // tables current meanwhile. The next batch is read while this one is applied, as in
    // `catch_up`, and only of the types the projection reads, as a live runner reads.
    // Every event committed before the rebuild began is in it when it ends, even one that a
    // transaction still in flight elsewhere in the cluster keeps above the horizon for now (the
    // horizon is the whole cluster's): the load waits for the horizon to pass it.
    let committed: i64 = sqlx::query_scalar("SELECT COALESCE(MAX(position), 0) FROM events").fetch_one(pool).await?;
    let (mut waiting, mut warned) = (None, false);
    let (mut next, mut after) = (prefetch(pool.clone(), 0, REBUILD_BATCH, types), 0);
    loop {
        let (events, reached) = next.await.expect("the prefetch task does not panic")?;
        if reached <= after {
            if after >= committed {
                break;
            }
            if !warned && waiting.get_or_insert_with(Instant::now).elapsed() > HORIZON_PATIENCE {
                tracing::warn!(projection = name, "the rebuild waits for a transaction in flight to end");
                warned = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
            next = prefetch(pool.clone(), after, REBUILD_BATCH, types);
            continue;
        }
        waiting = None;
        next = prefetch(pool.clone(), reached, REBUILD_BATCH, types);
        let mut tx = pool.begin().await?;
        durability_relaxed(&mut tx).await?;
        if !events.is_empty() {
            projection.apply(&mut tx, &shadows, &events).await?;
        }
        set_checkpoint(&mut tx, &shadow_checkpoint, reached).await?;
        tx.commit().await?;
        applied += events.len() as u64;
        after = reached;
        progress.update(applied);
    }
    // The deferred indexes, each built once over the loaded rows, before the swap takes the
    // projection's lock.
    for definition in &deferred {
        sqlx::query(definition).execute(pool).await?;
    }

    // Swap: hold the projection's lock (live runners skip meanwhile), apply what came since,
    // rename the shadows in, and move the live checkpoint, all in one transaction.
    let mut tx = pool.begin().await?;
    hold_projection_lock(&mut tx, name).await?;
    loop {
        let n = apply_batch(&mut tx, projection, &shadow_checkpoint, &shadows, REBUILD_BATCH, None).await?.applied;
        if n == 0 {
            break;
        }
        applied += n as u64;
    }
    projection.before_swap(&mut tx, &shadows).await?;
    for table in projection.tables() {
        let shadow = shadow_name(table);
        let renames = index_renames(&mut tx, table, &shadow).await?;
        sqlx::query(&format!("DROP TABLE {table}")).execute(&mut *tx).await?;
        sqlx::query(&format!("ALTER TABLE {shadow} RENAME TO {table}")).execute(&mut *tx).await?;
        for (from, to) in renames {
            sqlx::query(&format!("ALTER INDEX {} RENAME TO {}", quoted(&from), quoted(&to))).execute(&mut *tx).await?;
        }
    }
    let position = checkpoint_of(&mut tx, &shadow_checkpoint).await?;
    set_checkpoint(&mut tx, name, position).await?;
    sqlx::query("DELETE FROM projection_checkpoints WHERE projection = $1")
        .bind(&shadow_checkpoint)
        .execute(&mut *tx)
        .await?;
    tx.commit().await?;
    progress.update(applied);
    progress.finish();
    Ok(applied)
}

/// One index of a table: its name, its definition, and its shape — the definition without its
/// name and table, equal for an index and its copy on another table.
struct Index {
    name: String,
    definition: String,
    shape: String,
    unique: bool,
}

/// The indexes of `table`, by shape and name.
async fn indexes_of(conn: &mut PgConnection, table: &str) -> Result<Vec<Index>, sqlx::Error> {
    let rows: Vec<(String, String, String, bool)> = sqlx::query_as(
        r"SELECT i.relname::text, pg_get_indexdef(x.indexrelid),
                 regexp_replace(pg_get_indexdef(x.indexrelid), '^(CREATE (UNIQUE )?INDEX) \S+ ON \S+', '\1') AS shape,
                 x.indisunique
            FROM pg_index x JOIN pg_class i ON i.oid = x.indexrelid WHERE x.indrelid = $1::regclass
           ORDER BY shape, 1",
    )
    .bind(table)
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().map(|(name, definition, shape, unique)| Index { name, definition, shape, unique }).collect())
}

/// Drops the non-unique indexes of `shadow` and returns the statements that build them again
/// (`Projection::defers_secondary_indexes`). Unique ones stay: they keep a batch applied twice
/// from passing, and upserts need them.
async fn drop_secondary_indexes(conn: &mut PgConnection, shadow: &str) -> Result<Vec<String>, sqlx::Error> {
    let mut deferred = Vec::new();
    for index in indexes_of(&mut *conn, shadow).await?.into_iter().filter(|i| !i.unique) {
        sqlx::query(&format!("DROP INDEX {}", quoted(&index.name))).execute(&mut *conn).await?;
        deferred.push(index.definition);
    }
    Ok(deferred)
}

/// How the shadow's indexes take the live table's names at the swap: each paired with the live
/// index of the same shape (equal ones in name order). `LIKE … INCLUDING ALL` named them after
/// the shadow, and a later migration that names an index or a key (as 0027 dropped
/// `audit_items_agent`) must find it after a replay. A live table whose indexes changed during
/// the rebuild (a migration ran meanwhile) fails the swap, which leaves it as it is.
async fn index_renames(
    conn: &mut PgConnection,
    table: &str,
    shadow: &str,
) -> Result<Vec<(String, String)>, RunnerError> {
    let live = indexes_of(&mut *conn, table).await?;
    let shadowed = indexes_of(&mut *conn, shadow).await?;
    if live.len() != shadowed.len() || live.iter().zip(&shadowed).any(|(l, s)| l.shape != s.shape) {
        return Err(RunnerError::Changed(table.to_string()));
    }
    Ok(shadowed.into_iter().zip(live).map(|(from, to)| (from.name, to.name)).collect())
}

/// `name` as an SQL identifier.
fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Progress on stderr: a redrawn bar on a terminal, otherwise a line every 5 seconds.
pub struct Progress {
    label: String,
    total: u64,
    started: Instant,
    last_line: Instant,
    tty: bool,
    quiet: bool,
}

impl Progress {
    pub fn new(label: impl Into<String>) -> Self {
        let now = Instant::now();
        Self {
            label: label.into(),
            total: 0,
            started: now,
            last_line: now,
            tty: std::io::stderr().is_terminal(),
            quiet: false,
        }
    }

    /// No output at all (tests, library callers).
    pub fn quiet() -> Self {
        Self { quiet: true, ..Self::new("") }
    }

    /// How many items the work will have done when finished.
    pub fn set_total(&mut self, total: u64) {
        self.total = total;
    }

    /// `done` items so far: redraws the bar, or prints a line if 5 s passed since the last.
    pub fn update(&mut self, done: u64) {
        if self.quiet {
            return;
        }
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-6);
        let rate = done as f64 / elapsed;
        let total = self.total.max(done);
        let eta = if rate > 0.0 { (total - done) as f64 / rate } else { 0.0 };
        if self.tty {
            let width = 30;
            let filled = (done * width as u64).checked_div(total).map_or(width, |f| f as usize);
            eprint!(
                "\r{} [{}{}] {done}/{total} {rate:.0} ev/s ETA {eta:.0}s ",
                self.label,
                "#".repeat(filled),
                " ".repeat(width - filled)
            );
        } else if self.last_line.elapsed() >= Duration::from_secs(5) {
            eprintln!("{}: {done}/{total} events, {rate:.0} ev/s, ETA {eta:.0}s", self.label);
            self.last_line = Instant::now();
        }
    }

    pub fn finish(&mut self) {
        if self.quiet {
            return;
        }
        if self.tty {
            eprintln!();
        }
        eprintln!("{}: done in {:.1}s", self.label, self.started.elapsed().as_secs_f64());
    }
}

//! Connections kept between statements of the hot path (the send's read, its reservation, the
//! group commit, the projection runners' live steps), last used first.
//!
//! sqlx gives a connection back to its pool with a ping, one more round trip that wakes a backend
//! and a worker for nothing, and hands idle connections out first in, first out, so one request
//! after another runs on whichever of the pool's backends has been idle longest, its caches cold.
//! Here the connection a statement used goes onto a stack and the next statement takes the top
//! one: one request after another keeps one backend busy and warm.
//! `BENCH_BINARIES="<before> <after> …" scripts/bench.sh send --seconds 8 --sequential 1000`,
//! alternating: one session's p50 3.10 / 3.59 → 1.89 / 2.10 ms and its Postgres CPU per send
//! 1.97 / 2.15 → 1.08 / 1.26 ms; 16 sessions 1,296 / 956 → 1,432 / 1,389 sends/s.
//!
//! A connection sits on the stack at most `KEEP_IDLE`, then goes back to the pool. It goes back at
//! once if its statement did not end (its future dropped mid-way) or ended with an error that may
//! have broken it, where sqlx tests it. A connection kept before the database last failed a call
//! (`outage::DATABASE`) is not used again: it goes back to the pool, which tests it as it tested
//! those that failed. At most half the pool is kept.

use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use sqlx::pool::PoolConnection;
use sqlx::{PgConnection, PgPool, Postgres};

use crate::outage::DATABASE;

/// How long a kept connection may sit unused (and up to twice this before the task that gives
/// them back sees it): far less than `STALE_AFTER`, and short enough that a connection kept through
/// a lull is not long missed by whoever else needs the pool.
const KEEP_IDLE: Duration = Duration::from_millis(250);

/// A kept connection, when it was kept, and `outage::DATABASE.failures()` then.
type Stack = Mutex<Vec<(PoolConnection<Postgres>, Instant, u64)>>;

#[derive(Clone)]
pub struct KeptPool {
    pool: PgPool,
    idle: Arc<Stack>,
    /// At most this many kept unused at once: half the pool, the rest stays the pool's own.
    max: usize,
}

impl KeptPool {
    /// Must be called inside the runtime: it starts the task that gives unused connections back.
    pub fn new(pool: PgPool) -> Self {
        let max = (pool.options().get_max_connections() as usize / 2).max(1);
        let idle: Arc<Stack> = Arc::default();
        tokio::spawn(give_back_unused(Arc::downgrade(&idle)));
        Self { pool, idle, max }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn max_connections(&self) -> usize {
        self.pool.options().get_max_connections() as usize
    }

    /// The connection used last, or one from the pool.
    pub async fn take(&self) -> Result<Kept<'_>, sqlx::Error> {
        let top = {
            let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
            match idle.pop() {
                Some((conn, since, failures)) if failures == DATABASE.failures() && since.elapsed() < KEEP_IDLE => {
                    Some(conn)
                }
                // Too old, or the database failed a call since: this one and every one below it
                // go back to the pool, which tests them.
                Some(stale) => {
                    let below = std::mem::take(&mut *idle);
                    drop(idle);
                    drop((stale, below));
                    None
                }
                None => None,
            }
        };
        let conn = match top {
            Some(conn) => conn,
            None => self.pool.acquire().await?,
        };
        Ok(Kept { from: self, conn: Some(conn), reusable: false })
    }
}

/// Every `KEEP_IDLE`, the connections unused that long go back to the pool; ends with the pool.
async fn give_back_unused(idle: Weak<Stack>) {
    let mut tick = tokio::time::interval(KEEP_IDLE);
    loop {
        tick.tick().await;
        let Some(idle) = idle.upgrade() else { return };
        let stale: Vec<_> = {
            let mut idle = idle.lock().unwrap_or_else(|e| e.into_inner());
            // Oldest at the bottom.
            let fresh = idle.iter().position(|(_, since, _)| since.elapsed() < KEEP_IDLE).unwrap_or(idle.len());
            idle.drain(..fresh).collect()
        };
        drop(stale);
    }
}

/// A connection taken from a `KeptPool`; kept again when dropped if `ended` said it may be.
pub struct Kept<'a> {
    from: &'a KeptPool,
    conn: Option<PoolConnection<Postgres>>,
    reusable: bool,
}

impl Kept<'_> {
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn.as_deref_mut().expect("a kept connection is held until dropped")
    }

    /// Its last statement (or transaction) ended and left it idle: it may serve the next one.
    pub fn keep(&mut self) {
        self.reusable = true;
    }

    /// How its last statement ended: fine, or with an error of the statement, leaves the
    /// connection for the next one; any other (I/O, protocol, the server going away) sends it
    /// back to the pool, which tests it.
    pub fn ended<T>(&mut self, result: &Result<T, sqlx::Error>) {
        self.reusable = match result {
            Ok(_) => true,
            Err(e) => matches!(e, sqlx::Error::Database(_)) && !crate::error::is_outage(e),
        };
    }
}

impl Drop for Kept<'_> {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else { return };
        if self.reusable {
            let mut idle = self.from.idle.lock().unwrap_or_else(|e| e.into_inner());
            if idle.len() < self.from.max {
                idle.push((conn, Instant::now(), DATABASE.failures()));
                return;
            }
        }
        // Back to the pool (outside the lock: sqlx tests it in a task of its own).
        drop(conn);
    }
}

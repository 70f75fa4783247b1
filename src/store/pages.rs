//! Pages of the auditor feed (docs/admin-api.md#the-event-feed), with the next page read ahead.
//!
//! An auditor pages one request at a time: while it reads a page, the server would idle. So when a
//! page comes out full, the rows of the next one (same scope, same `limit`, `after` = this page's
//! last position) are read and parsed at once, and the next request takes them instead of asking
//! Postgres again. This is exact, not a cache that may be stale:
//! - rows below a horizon are final, and every event that commits later lies above it
//!   (`feed`), so a *full* page read ahead holds exactly the events a read at the request would
//!   return; a page read ahead that came out short is dropped and read again;
//! - `headPosition` is read at the request, as without read-ahead;
//! - only stored rows are read ahead (sealed as stored). Which keys live is asked of Postgres when
//!   the page is answered (`PageWriter::write`), so an erasure between the two reads `[erased]`.
//!
//! At most `AHEAD` pages are held per instance, each for at most `AHEAD_TTL`; losing them costs
//! one read.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use sqlx::PgPool;
use tokio::task::JoinHandle;

use super::envelope::{PageWriter, WrittenEnvelopes};
use super::feed;
use super::keystore::{KeyStore, KeyStoreError};

/// Pages read ahead and not yet asked for, at most (one per paging auditor).
const AHEAD: usize = 4;
/// A page read ahead and not asked for within this long is dropped.
const AHEAD_TTL: Duration = Duration::from_secs(10);
/// Events per share of a page parsed while the rest of the page arrives.
const SHARE: usize = 125;

/// Which page: the scope (`None`: every org), whether as stored, `after` and `limit`.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PageKey {
    pub org_id: Option<String>,
    pub as_stored: bool,
    pub after: i64,
    pub limit: i64,
}

/// A page's rows, read and being parsed.
struct Rows {
    writer: PageWriter,
    count: usize,
    last: Option<i64>,
}

/// A page's rows being read ahead.
type Reading = JoinHandle<Result<Rows, sqlx::Error>>;

/// A page, its envelopes written as JSON.
pub struct Page {
    pub events: WrittenEnvelopes,
    /// The `after` of the next page: this page's last position, or `after` when empty.
    pub next_after: i64,
    pub head_position: i64,
    /// Whether its rows had been read ahead.
    pub read_ahead: bool,
}

/// The feed's pages, with the next one read ahead (see the module).
pub struct FeedPages {
    pool: PgPool,
    ahead: Mutex<Vec<(PageKey, Instant, Reading)>>,
}

impl FeedPages {
    pub fn new(pool: PgPool) -> Self {
        Self { pool, ahead: Mutex::new(Vec::new()) }
    }

    /// The page `key` names, its sealed fields opened unless `as_stored`. A database failure is
    /// `KeyStoreError::Database`, whichever read failed.
    pub async fn page(&self, keystore: &KeyStore, key: PageKey) -> Result<Page, KeyStoreError> {
        let ahead = self.take(&key);
        let mut conn = self.pool.acquire().await?;
        let (horizon, head) = feed::horizon_and_head(&mut conn, key.org_id.as_deref()).await?;
        let full = |rows: &Rows| rows.count as i64 == key.limit;
        let (rows, read_ahead) = match ahead {
            Some(read) => match read.await {
                Ok(Ok(rows)) if full(&rows) => (Some(rows), true),
                _ => (None, false),
            },
            None => (None, false),
        };
        let rows = match rows {
            Some(rows) => rows,
            None => read(&mut conn, &key, horizon).await?,
        };
        drop(conn);
        let next_after = rows.last.unwrap_or(key.after);
        if full(&rows) {
            self.read_ahead(PageKey { after: next_after, ..key });
        }
        let events = rows.writer.write(keystore).await?;
        Ok(Page { events, next_after, head_position: head, read_ahead })
    }

    /// The page read ahead for `key`, if any; drops the ones kept too long.
    fn take(&self, key: &PageKey) -> Option<Reading> {
        let mut ahead = self.ahead.lock().expect("feed read-ahead lock");
        ahead.retain(|(_, at, read)| {
            let keep = at.elapsed() < AHEAD_TTL;
            if !keep {
                read.abort();
            }
            keep
        });
        let i = ahead.iter().position(|(k, _, _)| k == key)?;
        Some(ahead.swap_remove(i).2)
    }

    /// Starts reading the page `key` names; the oldest page read ahead gives way when `AHEAD` are held.
    fn read_ahead(&self, key: PageKey) {
        let pool = self.pool.clone();
        let k = key.clone();
        let read = tokio::spawn(async move {
            let mut conn = pool.acquire().await?;
            let horizon: i64 = sqlx::query_scalar("SELECT event_horizon()").fetch_one(&mut *conn).await?;
            read(&mut conn, &k, horizon).await
        });
        let mut ahead = self.ahead.lock().expect("feed read-ahead lock");
        if ahead.len() >= AHEAD {
            let (_, _, oldest) = ahead.remove(0);
            oldest.abort();
        }
        ahead.push((key, Instant::now(), read));
    }
}

/// The rows of page `key` below `horizon`, each share decoded and parsed on the blocking pool as
/// it arrives.
async fn read(conn: &mut sqlx::PgConnection, key: &PageKey, horizon: i64) -> Result<Rows, sqlx::Error> {
    let mut writer = PageWriter::new(key.as_stored);
    let mut last = Ok(None);
    let count = feed::read_rows_below(conn, key.after, horizon, key.limit, key.org_id.as_deref(), SHARE, |share| {
        last = share.last().map(feed::position_of_row).transpose();
        writer.add(share);
    })
    .await?;
    Ok(Rows { writer, count, last: last? })
}

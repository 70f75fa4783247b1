//! Reads of the anomaly windows: what the detector evaluates, and the pruning of windows no rule
//! reads any more.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

/// One open window of one counter for one subject, with the count of the window before it (for
/// the counter `compared`, 0 for the others).
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct WindowRow {
    pub counter: String,
    pub subject_kind: String,
    pub subject_id: String,
    pub org_id: Option<String>,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub count: i64,
    pub previous: i64,
}

/// Every window open at `now`; the previous 5-minute window's count is joined for `compared`.
pub async fn open_windows(pool: &PgPool, now: DateTime<Utc>, compared: &str) -> Result<Vec<WindowRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT w.counter, w.subject_kind, w.subject_id, w.org_id, w.window_start, w.window_end, w.count,
                COALESCE(p.count, 0) AS previous
         FROM anomaly_windows w
         LEFT JOIN anomaly_windows p ON w.counter = $2 AND p.counter = w.counter
              AND p.window_start = w.window_start - interval '5 minutes'
              AND p.subject_kind = w.subject_kind AND p.subject_id = w.subject_id
         WHERE w.window_end > $1 AND w.window_start <= $1",
    )
    .bind(now)
    .bind(compared)
    .fetch_all(pool)
    .await
}

/// Deletes the windows that ended before `before`.
pub async fn prune(pool: &PgPool, before: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM anomaly_windows WHERE window_end < $1")
        .bind(before)
        .execute(pool)
        .await?
        .rows_affected())
}

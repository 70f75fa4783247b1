//! Reads of the anomaly windows: what the detector evaluates, and the pruning of windows no rule
//! reads any more.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::{PRUNE_AFTER, SLIDING};

/// One open window of one counter for one subject; for a sliding counter, the last span before
/// now, with the count of the span before it.
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

/// The sliding counters' names and spans in seconds, as statements bind them.
fn sliding() -> (Vec<&'static str>, Vec<i64>) {
    SLIDING.iter().map(|(counter, span)| (*counter, span.num_seconds())).unzip()
}

/// What every rule reads at `now`: each fixed window open at `now`, and for each sliding counter
/// (`SLIDING`) the sum of its buckets in the last span before `now` as one window ending at `now`,
/// with `previous` the sum in the span before that (read by `volume_spike`).
pub async fn open_windows(pool: &PgPool, now: DateTime<Utc>) -> Result<Vec<WindowRow>, sqlx::Error> {
    let (counters, spans) = sliding();
    sqlx::query_as(
        "SELECT counter, subject_kind, subject_id, org_id, window_start, window_end, count, 0::bigint AS previous
           FROM anomaly_windows
          WHERE window_end > $1 AND window_start <= $1 AND counter <> ALL($2)
         UNION ALL
         SELECT w.counter, w.subject_kind, w.subject_id, max(w.org_id), $1 - s.span, $1,
                COALESCE(sum(w.count) FILTER (WHERE w.window_start > $1 - s.span), 0)::bigint,
                COALESCE(sum(w.count) FILTER (WHERE w.window_start <= $1 - s.span), 0)::bigint
           FROM unnest($2::text[], $3::bigint[]) AS s0(counter, seconds)
          CROSS JOIN LATERAL (SELECT s0.counter, s0.seconds * interval '1 second' AS span) s
           JOIN anomaly_windows w ON w.counter = s.counter
                AND w.window_start > $1 - 2 * s.span AND w.window_start <= $1
          GROUP BY w.counter, w.subject_kind, w.subject_id, s.span
         HAVING sum(w.count) FILTER (WHERE w.window_start > $1 - s.span) > 0",
    )
    .bind(now)
    .bind(&counters)
    .bind(&spans)
    .fetch_all(pool)
    .await
}

/// Deletes what no rule reads at `now` any more: fixed windows that ended `PRUNE_AFTER` ago, and
/// a sliding counter's buckets older than twice its span.
pub async fn prune(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let (counters, spans) = sliding();
    Ok(sqlx::query(
        "DELETE FROM anomaly_windows w
          WHERE w.window_end < $1 - COALESCE(
                    (SELECT 2 * s.seconds * interval '1 second'
                       FROM unnest($2::text[], $3::bigint[]) AS s(counter, seconds) WHERE s.counter = w.counter),
                    $4 * interval '1 second')",
    )
    .bind(now)
    .bind(&counters)
    .bind(&spans)
    .bind(PRUNE_AFTER.num_seconds())
    .execute(pool)
    .await?
    .rows_affected())
}

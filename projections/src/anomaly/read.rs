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

/// What every rule reads at `now`: each fixed window open at `now` — or, with `ended_after`
/// before `now`, also each that ended after it (the detector's look back over what closed since its
/// last run) —, and for each sliding counter
/// (`SLIDING`) the sum of its buckets in the last span before `now` as one window ending at `now`,
/// with `previous` the sum in the span before that (read by `volume_spike`). Each sliding counter's
/// name and span are written into the statement (never bound), so its buckets are read by a range
/// of the primary key (counter, window_start), not by a scan of the table.
pub async fn open_windows(
    pool: &PgPool,
    now: DateTime<Utc>,
    ended_after: DateTime<Utc>,
) -> Result<Vec<WindowRow>, sqlx::Error> {
    let mut sql = String::from(
        "SELECT counter, subject_kind, subject_id, org_id, window_start, window_end, count, 0::bigint AS previous
           FROM anomaly_windows
          WHERE window_end > $3 AND window_start <= $1 AND counter <> ALL($2)",
    );
    for (counter, span) in SLIDING {
        assert!(counter.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "counter names need no quoting");
        let seconds = span.num_seconds();
        sql.push_str(&format!(
            "
         UNION ALL
         SELECT counter, subject_kind, subject_id, max(org_id), $1 - interval '{seconds} seconds', $1,
                COALESCE(sum(count) FILTER (WHERE window_start > $1 - interval '{seconds} seconds'), 0)::bigint,
                COALESCE(sum(count) FILTER (WHERE window_start <= $1 - interval '{seconds} seconds'), 0)::bigint
           FROM anomaly_windows
          WHERE counter = '{counter}' AND window_start > $1 - interval '{double} seconds' AND window_start <= $1
          GROUP BY counter, subject_kind, subject_id
         HAVING sum(count) FILTER (WHERE window_start > $1 - interval '{seconds} seconds') > 0",
            double = 2 * seconds
        ));
    }
    let (counters, _) = sliding();
    sqlx::query_as(&sql).bind(now).bind(&counters).bind(ended_after.min(now)).fetch_all(pool).await
}

/// Deletes what no rule reads at `now` any more: fixed windows that ended `PRUNE_AFTER` ago (by
/// `window_end`'s index), and a sliding counter's buckets older than twice its span (by a range
/// of the primary key).
pub async fn prune(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let (counters, spans) = sliding();
    let fixed = sqlx::query("DELETE FROM anomaly_windows WHERE window_end < $1 AND counter <> ALL($2)")
        .bind(now - PRUNE_AFTER)
        .bind(&counters)
        .execute(pool)
        .await?
        .rows_affected();
    let mut buckets = 0;
    for (counter, seconds) in counters.iter().zip(spans) {
        buckets += sqlx::query("DELETE FROM anomaly_windows WHERE counter = $1 AND window_start < $2")
            .bind(counter)
            .bind(now - chrono::TimeDelta::seconds(2 * seconds))
            .execute(pool)
            .await?
            .rows_affected();
    }
    Ok(fixed + buckets)
}

//! Retention (docs/privacy.md#retention): expiring personal data by destroying keys. The class-c key for UTC
//! day D is destroyed at the first run at or after 00:00 UTC of D + N(c) + 1, i.e. a run on UTC
//! day T destroys the buckets before T − N(c). Usage rows (hourly sums, and the limits' day and
//! month counters) and call rows older than their N are purged,
//! and revoked consents older than theirs lose their record keys and rows. Events are never
//! touched; each class that destroyed or purged anything is recorded as `RetentionPurged` on
//! stream `platform`/`platform`. Runs are scheduled by `crate::jobs`.
//!
//! Two instances never double-run a bucket: a run holds a session advisory lock (another
//! instance's concurrent run skips), and every destruction is `UPDATE … WHERE destroyed_at IS
//! NULL`, so a bucket is destroyed, counted and recorded exactly once.

use chrono::{DateTime, Days, NaiveDate, Utc};
use commguard_domain::pii::RetentionClass;
use commguard_domain::records::RetentionEvent;

use crate::config::Config;
use crate::store::context::{Actor, CommandContext};
use crate::store::Store;

const LOCK: i64 = 0x636f_6d6d_7265_7465; // "commrete"

/// What one class's part of a run did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Purged {
    pub buckets: u64,
    pub record_keys: u64,
    pub rows: u64,
}

/// The first day whose bucket survives a run at `now` for a class kept `days` days.
pub fn cutoff(now: DateTime<Utc>, days: u32) -> NaiveDate {
    now.date_naive().checked_sub_days(Days::new(u64::from(days))).unwrap_or(NaiveDate::MIN)
}

/// One retention run at `now`. `None`: retention is disabled, or another instance is running.
pub async fn run(
    store: &Store,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<Option<Vec<(RetentionClass, Purged)>>, Box<dyn std::error::Error + Send + Sync>> {
    if !config.data_retention_enabled {
        return Ok(None);
    }
    let pool = store.pool();
    let mut lock = pool.acquire().await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)").bind(LOCK).fetch_one(&mut *lock).await?;
    if !locked {
        return Ok(None);
    }
    let outcome = run_locked(store, config, now).await;
    sqlx::query("SELECT pg_advisory_unlock($1)").bind(LOCK).execute(&mut *lock).await?;
    outcome.map(Some)
}

async fn run_locked(
    store: &Store,
    config: &Config,
    now: DateTime<Utc>,
) -> Result<Vec<(RetentionClass, Purged)>, Box<dyn std::error::Error + Send + Sync>> {
    let r = &config.retention;
    let pool = store.pool();
    let keys = store.keystore();
    let mut done = Vec::new();
    for (class, days) in [
        (RetentionClass::Messages, r.messages_days),
        (RetentionClass::Voicemail, r.voicemail_days),
        (RetentionClass::Otp, r.otp_days),
        (RetentionClass::Security, r.security_log_days),
    ] {
        let buckets = keys.destroy_retention(class, cutoff(now, days)).await?;
        done.push((class, Purged { buckets, ..Purged::default() }));
    }
    let usage_before = cutoff(now, r.usage_logs_days);
    let hourly = sqlx::query("DELETE FROM usage_hourly WHERE hour < $1::date::timestamptz")
        .bind(usage_before)
        .execute(pool)
        .await?
        .rows_affected();
    // The limits' counters of days and months that began before the cutoff: long out of any
    // window a limit reads, and a contact's (`<agentId>|<subjectRef>`) name who was contacted.
    let counters = sqlx::query("DELETE FROM usage_counters WHERE period_start < $1")
        .bind(usage_before)
        .execute(pool)
        .await?
        .rows_affected();
    done.push((RetentionClass::Usage, Purged { rows: hourly + counters, ..Purged::default() }));
    let rows = sqlx::query("DELETE FROM calls WHERE placed_at < $1::date::timestamptz")
        .bind(cutoff(now, r.call_logs_days))
        .execute(pool)
        .await?
        .rows_affected();
    done.push((RetentionClass::CallLogs, Purged { rows, ..Purged::default() }));
    let gone: Vec<uuid::Uuid> = sqlx::query_scalar(
        "DELETE FROM consents WHERE status = 'revoked' AND revoked_at < $1::date::timestamptz RETURNING consent_id",
    )
    .bind(cutoff(now, r.revoked_consent_days))
    .fetch_all(pool)
    .await?;
    let record_keys = keys.destroy_consents(&gone).await?;
    done.push((RetentionClass::RevokedConsent, Purged { record_keys, rows: gone.len() as u64, buckets: 0 }));

    let days = |class| match class {
        RetentionClass::Messages => r.messages_days,
        RetentionClass::Usage => r.usage_logs_days,
        RetentionClass::CallLogs => r.call_logs_days,
        RetentionClass::Voicemail => r.voicemail_days,
        RetentionClass::Otp => r.otp_days,
        RetentionClass::RevokedConsent => r.revoked_consent_days,
        RetentionClass::Security => r.security_log_days,
    };
    let events: Vec<RetentionEvent> = done
        .iter()
        .filter(|(_, p)| *p != Purged::default())
        .map(|(class, p)| RetentionEvent::RetentionPurged {
            class: class.as_str().into(),
            buckets_destroyed: p.buckets,
            record_keys_destroyed: p.record_keys,
            projection_rows_purged: p.rows,
            cutoff: cutoff(now, days(*class)).to_string(),
        })
        .collect();
    if !events.is_empty() {
        let context = CommandContext::new(Actor::system("retention"), "system", now);
        store.record("platform", "platform", &events, &context).await?;
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_bucket_goes_at_the_first_run_on_or_after_day_d_plus_n_plus_1() {
        let day = |s: &str| NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap();
        // D = 2026-09-01, N = 90: destroyed from 2026-12-01 00:00 UTC (across month ends).
        assert!(day("2026-09-01") >= cutoff(at("2026-11-30T23:59:59Z"), 90));
        assert!(day("2026-09-01") < cutoff(at("2026-12-01T00:00:00Z"), 90));
        assert!(day("2026-09-02") >= cutoff(at("2026-12-01T23:59:59Z"), 90));
        // Across a DST change (US: 2026-11-01; EU: 2026-10-25): UTC days, no hour shifts.
        assert!(day("2026-10-24") < cutoff(at("2026-11-02T00:00:00Z"), 8));
        assert!(day("2026-10-25") >= cutoff(at("2026-11-02T00:00:00Z"), 8));
        assert!(day("2026-03-07") < cutoff(at("2026-03-09T00:30:00Z"), 1));
        // Across a leap day.
        assert_eq!(cutoff(at("2028-03-01T10:00:00Z"), 1), day("2028-02-29"));
    }
}

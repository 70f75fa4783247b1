//! Anomaly windows (CONTRACT §14): how many events of each counter a subject had in each fixed
//! window — outbound attempts (sent, blocked or failed) per agent in 5 minutes, `AuthFailed` per
//! IP in 5 minutes (while locked too), `AgentTokenIssued` per agent in an hour. A batch is summed
//! in memory and written with one upsert; the detector reads the current windows only.

use std::collections::HashMap;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use sqlx::PgConnection;

use crate::{BoxFuture, Projection, ProjectionError, StoredEvent, Tables};

pub struct AnomalyProjection;

pub const OUTBOUND: &str = "outbound";
pub const AUTH_FAILED: &str = "auth_failed";
pub const TOKEN_ISSUED: &str = "token_issued";

const ANOMALY_EVENTS: &[&str] = &[
    "MessageSent",
    "MessageBlocked",
    "MessageFailed",
    "CallPlaced",
    "CallBlocked",
    "CallFailed",
    "AuthFailed",
    "AgentTokenIssued",
];

/// The window of `counter` holding `at`.
pub fn window_of(counter: &str, at: DateTime<Utc>) -> DateTime<Utc> {
    let length = if counter == TOKEN_ISSUED { TimeDelta::hours(1) } else { TimeDelta::minutes(5) };
    at.duration_trunc(length).unwrap_or(at)
}

/// (counter, subject kind, subject id, window) → (org, count).
type Sums = HashMap<(&'static str, &'static str, String, DateTime<Utc>), (Option<String>, i64)>;

fn counter(event: &StoredEvent) -> Option<(&'static str, &'static str)> {
    match (event.aggregate_type.as_str(), event.event_type.as_str()) {
        ("agent", "AgentTokenIssued") => Some((TOKEN_ISSUED, "agent")),
        ("agent", _) => Some((OUTBOUND, "agent")),
        ("ip", "AuthFailed") => Some((AUTH_FAILED, "ip")),
        _ => None,
    }
}

impl Projection for AnomalyProjection {
    fn name(&self) -> &'static str {
        "anomaly"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["anomaly_windows"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(ANOMALY_EVENTS)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let mut sums = Sums::new();
            for event in events.iter().filter(|e| ANOMALY_EVENTS.contains(&e.event_type.as_str())) {
                let Some((counter, kind)) = counter(event) else { continue };
                let org = if kind == "ip" { None } else { event.org_id.clone() };
                let key = (counter, kind, event.aggregate_id.clone(), window_of(counter, event.occurred_at));
                sums.entry(key).or_insert((org, 0)).1 += 1;
            }
            if sums.is_empty() {
                return Ok(());
            }
            let (mut counters, mut kinds, mut ids, mut windows, mut orgs, mut counts) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((counter, kind, id, window), (org, n)) in sums {
                counters.push(counter.to_string());
                kinds.push(kind.to_string());
                ids.push(id);
                windows.push(window);
                orgs.push(org);
                counts.push(n);
            }
            sqlx::query(&format!(
                "INSERT INTO {} AS w (counter, subject_kind, subject_id, window_start, org_id, count)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::text[], $6::bigint[])
                 ON CONFLICT (counter, window_start, subject_kind, subject_id)
                     DO UPDATE SET count = w.count + EXCLUDED.count, org_id = COALESCE(w.org_id, EXCLUDED.org_id)",
                tables.get("anomaly_windows")
            ))
            .bind(&counters)
            .bind(&kinds)
            .bind(&ids)
            .bind(&windows)
            .bind(&orgs)
            .bind(&counts)
            .execute(conn)
            .await?;
            Ok(())
        })
    }
}

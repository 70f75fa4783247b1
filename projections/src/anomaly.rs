//! Anomaly windows (CONTRACT §14): how many events of each counter a subject had in each fixed
//! window — outbound attempts (sent, blocked or failed) per agent in 5 minutes, `AuthFailed` per
//! IP in 5 minutes (while locked too), `AgentTokenIssued` per agent in an hour. A batch is summed
//! in memory and written with one upsert; the detector reads the current windows only.

use std::collections::HashMap;

use chrono::{DateTime, Datelike, DurationRound, TimeDelta, Utc};
use sqlx::PgConnection;

use crate::{BoxFuture, Projection, ProjectionError, StoredEvent, Tables};

pub struct AnomalyProjection;

pub const OUTBOUND: &str = "outbound";
pub const AUTH_FAILED: &str = "auth_failed";
pub const TOKEN_ISSUED: &str = "token_issued";
/// Refusals by a limit are counted as `rate_limit:<limitType>`, in the limit's own window.
pub const RATE_LIMIT_PREFIX: &str = "rate_limit:";
/// Every `limitType` a reservation can refuse with (`outbound::limits`).
pub const LIMIT_TYPES: [&str; 8] = [
    "per-minute",
    "per-hour",
    "per-day",
    "daily-spend",
    "monthly-spend",
    "org_spend_day",
    "org_spend_month",
    "contact-frequency",
];

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

/// The window of `counter` holding `at`: a limit's own window for refusals (minute, hour, UTC
/// day or month), an hour for tokens issued, else 5 minutes.
pub fn window_of(counter: &str, at: DateTime<Utc>) -> DateTime<Utc> {
    let length = match counter.strip_prefix(RATE_LIMIT_PREFIX) {
        Some("per-minute") => TimeDelta::minutes(1),
        Some("per-hour") => TimeDelta::hours(1),
        Some("monthly-spend" | "org_spend_month") => {
            let day = at.duration_trunc(TimeDelta::days(1)).unwrap_or(at);
            return day - TimeDelta::days(i64::from(day.day0()));
        }
        Some(_) => TimeDelta::days(1),
        None if counter == TOKEN_ISSUED => TimeDelta::hours(1),
        None => TimeDelta::minutes(5),
    };
    at.duration_trunc(length).unwrap_or(at)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Blocked {
    limit_type: Option<String>,
}

/// (counter, subject kind, subject id, window) → (org, count).
type Sums = HashMap<(String, &'static str, String, DateTime<Utc>), (Option<String>, i64)>;

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
                let key =
                    (counter.to_string(), kind, event.aggregate_id.clone(), window_of(counter, event.occurred_at));
                sums.entry(key).or_insert((org.clone(), 0)).1 += 1;
                // A refusal by a limit also counts toward `rate_limit`, per limit type.
                if matches!(event.event_type.as_str(), "MessageBlocked" | "CallBlocked") {
                    let limit_type = event.payload.parse::<Blocked>().ok().and_then(|b| b.limit_type);
                    if let Some(limit_type) = limit_type.filter(|t| LIMIT_TYPES.contains(&t.as_str())) {
                        let counter = format!("{RATE_LIMIT_PREFIX}{limit_type}");
                        let window = window_of(&counter, event.occurred_at);
                        sums.entry((counter, kind, event.aggregate_id.clone(), window)).or_insert((org, 0)).1 += 1;
                    }
                }
            }
            if sums.is_empty() {
                return Ok(());
            }
            let (mut counters, mut kinds, mut ids, mut windows, mut orgs, mut counts) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((counter, kind, id, window), (org, n)) in sums {
                counters.push(counter);
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

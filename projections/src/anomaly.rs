//! Anomaly windows (docs/monitoring.md): how many events of each counter a subject had in each
//! window — outbound attempts (sent, blocked or failed) per agent, `AuthFailed` per IP (while
//! locked too) and `AgentTokenIssued` per agent in one-second buckets (their rules read the last
//! 5 minutes or hour, `SLIDING`), refusals per agent and limit type in the limit's own window,
//! provider cost per agent and UTC day (micro-dollars in `count`), and each lockout per IP from
//! its start to its `lockedUntil`. Each
//! row carries its `window_end`; a batch is summed in memory and written with one upsert. The
//! windows are a projection, not history: the detector reads the current ones
//! (`window_end > now`) and prunes the ones long past (`PRUNE_AFTER`).

pub mod read;

use std::collections::HashMap;

use chrono::{DateTime, Datelike, DurationRound, TimeDelta, Utc};
use sqlx::PgConnection;

use crate::{BoxFuture, Projection, ProjectionError, StoredEvent, Tables};

pub struct AnomalyProjection;

pub const OUTBOUND: &str = "outbound";
pub const AUTH_FAILED: &str = "auth_failed";
pub const TOKEN_ISSUED: &str = "token_issued";
/// Provider cost (micro-dollars) per agent and UTC day: `spend_threshold`.
pub const SPEND: &str = "spend";
/// One row per lockout of an IP, from its start to its `lockedUntil`: `brute_force_lockout`.
pub const LOCKOUT: &str = "lockout";
/// How long a window is kept after its end; anything older is no longer read by anyone and is
/// deleted. A sliding counter's buckets are kept for twice its span instead (`SLIDING`).
pub const PRUNE_AFTER: TimeDelta = TimeDelta::minutes(10);
/// The counters whose rules read the last span before now, not a fixed window (a burst split by
/// a window's edge is still one burst): each counts in one-second buckets, and the detector sums
/// the buckets of the last span (and, for `volume_spike`, of the span before it).
pub const SLIDING: [(&str, TimeDelta); 3] =
    [(OUTBOUND, TimeDelta::minutes(5)), (AUTH_FAILED, TimeDelta::minutes(5)), (TOKEN_ISSUED, TimeDelta::hours(1))];
/// A sliding counter's bucket.
pub const BUCKET: TimeDelta = TimeDelta::seconds(1);

/// The span of a sliding counter (`SLIDING`).
pub fn sliding_span(counter: &str) -> Option<TimeDelta> {
    SLIDING.iter().find(|(c, _)| *c == counter).map(|(_, span)| *span)
}
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
    "CallStatusChanged",
    "AuthFailed",
    "IpLockedOut",
    "AgentTokenIssued",
];

/// The window of `counter` holding `at`: a sliding counter's one-second bucket, a limit's own
/// window for refusals (minute, hour, UTC day or month), a UTC day for spend.
pub fn window_of(counter: &str, at: DateTime<Utc>) -> DateTime<Utc> {
    if sliding_span(counter).is_some() {
        return at.duration_trunc(BUCKET).unwrap_or(at);
    }
    let length = match counter.strip_prefix(RATE_LIMIT_PREFIX) {
        Some("per-minute") => TimeDelta::minutes(1),
        Some("per-hour") => TimeDelta::hours(1),
        Some("monthly-spend" | "org_spend_month") => {
            let day = at.duration_trunc(TimeDelta::days(1)).unwrap_or(at);
            return day - TimeDelta::days(i64::from(day.day0()));
        }
        _ => TimeDelta::days(1),
    };
    at.duration_trunc(length).unwrap_or(at)
}

/// Where the window of `counter` starting at `start` ends (a lockout's end is its own).
pub fn window_end(counter: &str, start: DateTime<Utc>) -> DateTime<Utc> {
    if sliding_span(counter).is_some() {
        return start + BUCKET;
    }
    match counter.strip_prefix(RATE_LIMIT_PREFIX) {
        Some("per-minute") => start + TimeDelta::minutes(1),
        Some("per-hour") => start + TimeDelta::hours(1),
        // The first of the next month.
        Some("monthly-spend" | "org_spend_month") => window_of(counter, start + TimeDelta::days(32)),
        _ => start + TimeDelta::days(1),
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Blocked {
    limit_type: Option<String>,
}

#[derive(serde::Deserialize)]
struct Cost {
    #[serde(default)]
    cost: Option<i64>,
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct Locked {
    locked_until: DateTime<Utc>,
}

/// (counter, subject kind, subject id, window start) → (window end, org, count).
type Sums = HashMap<(String, &'static str, String, DateTime<Utc>), (DateTime<Utc>, Option<String>, i64)>;

fn add(sums: &mut Sums, counter: String, kind: &'static str, event: &StoredEvent, org: Option<String>, n: i64) {
    let start = window_of(&counter, event.occurred_at);
    let end = window_end(&counter, start);
    sums.entry((counter, kind, event.aggregate_id.clone(), start)).or_insert((end, org, 0)).2 += n;
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
                match (event.aggregate_type.as_str(), event.event_type.as_str()) {
                    ("ip", "AuthFailed") => add(&mut sums, AUTH_FAILED.into(), "ip", event, None, 1),
                    ("ip", "IpLockedOut") => {
                        // A lock is its own window: from the event to its `lockedUntil`.
                        let Ok(locked) = event.payload.parse::<Locked>() else { continue };
                        let key = (LOCKOUT.to_string(), "ip", event.aggregate_id.clone(), event.occurred_at);
                        sums.entry(key).or_insert((locked.locked_until, None, 0)).2 += 1;
                    }
                    ("agent", "AgentTokenIssued") => {
                        add(&mut sums, TOKEN_ISSUED.into(), "agent", event, event.org_id.clone(), 1)
                    }
                    ("agent", kind) => {
                        let org = event.org_id.clone();
                        // Spend: what a send or call cost, and a call's final cost when it ends.
                        if matches!(kind, "MessageSent" | "CallPlaced" | "CallStatusChanged") {
                            let cost = event.payload.parse::<Cost>().ok().and_then(|c| c.cost).unwrap_or(0);
                            if cost > 0 {
                                add(&mut sums, SPEND.into(), "agent", event, org.clone(), cost);
                            }
                        }
                        if kind == "CallStatusChanged" {
                            continue;
                        }
                        add(&mut sums, OUTBOUND.into(), "agent", event, org.clone(), 1);
                        // A refusal by a limit also counts toward `rate_limit`, per limit type.
                        if matches!(kind, "MessageBlocked" | "CallBlocked") {
                            let limit_type = event.payload.parse::<Blocked>().ok().and_then(|b| b.limit_type);
                            if let Some(limit_type) = limit_type.filter(|t| LIMIT_TYPES.contains(&t.as_str())) {
                                add(&mut sums, format!("{RATE_LIMIT_PREFIX}{limit_type}"), "agent", event, org, 1);
                            }
                        }
                    }
                    _ => {}
                }
            }
            if sums.is_empty() {
                return Ok(());
            }
            let (mut counters, mut kinds, mut ids, mut windows, mut ends, mut orgs, mut counts) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for ((counter, kind, id, window), (end, org, n)) in sums {
                counters.push(counter);
                kinds.push(kind.to_string());
                ids.push(id);
                windows.push(window);
                ends.push(end);
                orgs.push(org);
                counts.push(n);
            }
            sqlx::query(&format!(
                "INSERT INTO {} AS w (counter, subject_kind, subject_id, window_start, window_end, org_id, count)
                 SELECT * FROM UNNEST($1::text[], $2::text[], $3::text[], $4::timestamptz[], $5::timestamptz[],
                                      $6::text[], $7::bigint[])
                 ON CONFLICT (counter, window_start, subject_kind, subject_id)
                     DO UPDATE SET count = w.count + EXCLUDED.count, org_id = COALESCE(w.org_id, EXCLUDED.org_id)",
                tables.get("anomaly_windows")
            ))
            .bind(&counters)
            .bind(&kinds)
            .bind(&ids)
            .bind(&windows)
            .bind(&ends)
            .bind(&orgs)
            .bind(&counts)
            .execute(conn)
            .await?;
            Ok(())
        })
    }
}

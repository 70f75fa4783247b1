//! The anomaly detector (CONTRACT §14): every `ANOMALY_CHECK_INTERVAL_SECONDS` it reads the
//! current windows of the anomaly projection and raises one `AlertRaised` per (rule, subject,
//! window) — `Store::record_once` on the stream `alert/<dedupKey>`, which Postgres lets only one
//! writer start, however many instances evaluate the same window.
//!
//! Rules evaluated here: `volume_spike`, `brute_force`, `rapid_rotation`, `rate_limit`. The lockout raises
//! `brute_force_lockout` itself (`auth::lockout`).

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use commguard_domain::records::AlertEvent;
use commguard_projections::anomaly::{window_of, AUTH_FAILED, LIMIT_TYPES, OUTBOUND, RATE_LIMIT_PREFIX, TOKEN_ISSUED};
use serde_json::json;
use uuid::Uuid;

use crate::state::AppState;
use crate::store::{rfc3339, Actor, CommandContext};

/// `brute_force`: more than this many `AuthFailed` from one IP in 5 minutes.
pub const BRUTE_FORCE_OVER: i64 = 10;
/// `rapid_rotation`: more than this many tokens issued to one agent in an hour.
pub const ROTATION_OVER: i64 = 3;

/// Runs the detector until the task is dropped (off with `ANOMALY_DETECTOR_ENABLED=false`).
pub async fn run(app: AppState) {
    let mut every = tokio::time::interval(Duration::from_secs(app.config.anomaly_check_interval_seconds));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        if let Err(e) = check(&app).await {
            crate::error::log_failure("anomaly detector run failed", &e);
        }
    }
}

/// Why a run stopped: a window could not be read, or an alert not recorded.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("anomaly windows not read: {0}")]
    Read(#[from] sqlx::Error),
    #[error("alert not recorded: {0}")]
    Record(#[from] cqrs_es::persist::PersistenceError),
}

impl crate::error::Failure for CheckError {
    fn database_down(&self) -> bool {
        match self {
            Self::Read(e) => crate::error::Failure::database_down(e),
            Self::Record(e) => crate::error::Failure::database_down(e),
        }
    }
}

/// (counter, agent, org, window start, refusals) of a `rate_limit:<limitType>` window.
type Refusals = (String, String, Option<String>, DateTime<Utc>, i64);

/// A window value that breaks a rule.
struct Finding {
    rule: &'static str,
    severity: &'static str,
    title: &'static str,
    subject_kind: String,
    subject_id: String,
    org_id: Option<String>,
    window_start: DateTime<Utc>,
    window_end: DateTime<Utc>,
    message: String,
    details: serde_json::Value,
}

/// One evaluation of every rule on the current windows; returns the alerts it recorded.
pub async fn check(app: &AppState) -> Result<usize, CheckError> {
    let now = app.clock.now();
    let mut findings = Vec::new();

    let five = window_of(OUTBOUND, now);
    let spikes: Vec<(String, Option<String>, i64, i64)> = sqlx::query_as(
        "SELECT cur.subject_id, cur.org_id, cur.count, COALESCE(prev.count, 0)
         FROM anomaly_windows cur
         LEFT JOIN anomaly_windows prev ON prev.counter = cur.counter AND prev.window_start = $2
              AND prev.subject_kind = cur.subject_kind AND prev.subject_id = cur.subject_id
         WHERE cur.counter = $3 AND cur.window_start = $1 AND cur.count >= $4 AND cur.count > 3 * COALESCE(prev.count, 0)",
    )
    .bind(five)
    .bind(five - TimeDelta::minutes(5))
    .bind(OUTBOUND)
    .bind(i64::from(app.config.anomaly_volume_min_actions))
    .fetch_all(&app.pool)
    .await?;
    for (agent, org, current, previous) in spikes {
        findings.push(Finding {
            rule: "volume_spike",
            severity: "MEDIUM",
            title: "Volume spike detected",
            message: format!("Agent {agent}: {current} outbound attempts in 5 minutes, {previous} in the 5 before"),
            details: json!({ "current": current, "previous": previous }),
            subject_kind: "agent".into(),
            subject_id: agent,
            org_id: org,
            window_start: five,
            window_end: five + TimeDelta::minutes(5),
        });
    }

    let start = window_of(AUTH_FAILED, now);
    for (ip_ref, _, count) in over(app, AUTH_FAILED, start, BRUTE_FORCE_OVER).await? {
        findings.push(Finding {
            rule: "brute_force",
            severity: "HIGH",
            title: "Brute-force auth detected",
            message: format!("IP {ip_ref}: {count} failed authentications in 5 minutes"),
            details: json!({ "failures": count }),
            subject_kind: "ip".into(),
            subject_id: ip_ref,
            org_id: None,
            window_start: start,
            window_end: start + TimeDelta::minutes(5),
        });
    }

    let hour = window_of(TOKEN_ISSUED, now);
    for (agent, org, count) in over(app, TOKEN_ISSUED, hour, ROTATION_OVER).await? {
        findings.push(Finding {
            rule: "rapid_rotation",
            severity: "MEDIUM",
            title: "Rapid token rotation",
            message: format!("Agent {agent}: {count} tokens issued in an hour"),
            details: json!({ "tokensIssued": count }),
            subject_kind: "agent".into(),
            subject_id: agent,
            org_id: org,
            window_start: hour,
            window_end: hour + TimeDelta::hours(1),
        });
    }

    // rate_limit: each (agent, limitType) refused in the limit's current window.
    let (counters, windows): (Vec<String>, Vec<DateTime<Utc>>) = LIMIT_TYPES
        .iter()
        .map(|t| {
            let counter = format!("{RATE_LIMIT_PREFIX}{t}");
            let window = window_of(&counter, now);
            (counter, window)
        })
        .unzip();
    let refusals: Vec<Refusals> = sqlx::query_as(
        "SELECT w.counter, w.subject_id, w.org_id, w.window_start, w.count
         FROM UNNEST($1::text[], $2::timestamptz[]) AS c(counter, window_start)
         JOIN anomaly_windows w ON w.counter = c.counter AND w.window_start = c.window_start
         WHERE w.subject_kind = 'agent' AND w.count >= 1",
    )
    .bind(&counters)
    .bind(&windows)
    .fetch_all(&app.pool)
    .await?;
    for (counter, agent, org, start, count) in refusals {
        let limit_type = counter.trim_start_matches(RATE_LIMIT_PREFIX).to_string();
        let end = match limit_type.as_str() {
            "per-minute" => start + TimeDelta::minutes(1),
            "per-hour" => start + TimeDelta::hours(1),
            // The first of the next month.
            "monthly-spend" | "org_spend_month" => window_of(&counter, start + TimeDelta::days(32)),
            _ => start + TimeDelta::days(1),
        };
        findings.push(Finding {
            rule: "rate_limit",
            severity: "MEDIUM",
            title: "Rate limit exceeded",
            message: format!("Agent {agent}: refused by its {limit_type} limit ({count} in this window)"),
            details: json!({ "limitType": limit_type, "refusals": count }),
            subject_kind: "agent".into(),
            // The dedup subject is (agent, limitType); the alert's subject is the agent.
            subject_id: agent,
            org_id: org,
            window_start: start,
            window_end: end,
        });
    }

    let mut raised = 0;
    for finding in findings {
        if raise(app, finding, now).await? {
            raised += 1;
        }
    }
    Ok(raised)
}

/// Records `finding` unless its (rule, subject, window) already has its alert.
async fn raise(app: &AppState, f: Finding, now: DateTime<Utc>) -> Result<bool, CheckError> {
    let limit_type = f.details.get("limitType").and_then(|t| t.as_str()).map(|t| format!(":{t}")).unwrap_or_default();
    let dedup_key =
        format!("{}:{}:{}{limit_type}:{}", f.rule, f.subject_kind, f.subject_id, f.window_start.timestamp());
    let alert = AlertEvent::AlertRaised {
        alert_id: Uuid::new_v4().to_string(),
        rule: f.rule.into(),
        severity: f.severity.into(),
        title: f.title.into(),
        message: f.message.clone(),
        subject_kind: f.subject_kind.clone(),
        subject_id: f.subject_id.clone(),
        details: f.details,
        window_start: rfc3339(f.window_start),
        window_end: rfc3339(f.window_end),
    };
    let mut context = CommandContext::new(Actor::system("anomaly"), "detector", now);
    if let Some(org) = &f.org_id {
        context = context.in_org(org.clone());
    }
    if app.store.record_once("alert", &dedup_key, &[alert], &context).await?.is_none() {
        return Ok(false);
    }
    app.metrics.alert(f.severity, f.rule);
    match f.severity {
        "HIGH" => tracing::error!(rule = f.rule, subject = f.subject_id, "HIGH alert: {}: {}", f.title, f.message),
        _ => tracing::warn!(rule = f.rule, subject = f.subject_id, "MEDIUM alert: {}: {}", f.title, f.message),
    }
    Ok(true)
}

/// The subjects (with their org) whose `counter` in the window starting at `start` is above
/// `threshold`.
async fn over(
    app: &AppState,
    counter: &str,
    start: DateTime<Utc>,
    threshold: i64,
) -> Result<Vec<(String, Option<String>, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT subject_id, org_id, count FROM anomaly_windows WHERE counter = $1 AND window_start = $2 AND count > $3",
    )
    .bind(counter)
    .bind(start)
    .bind(threshold)
    .fetch_all(&app.pool)
    .await
}

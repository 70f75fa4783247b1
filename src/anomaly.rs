//! The anomaly detector (docs/monitoring.md): every `ANOMALY_CHECK_INTERVAL_SECONDS` it reads the
//! current windows of the anomaly projection (`window_end > now`; for outbound attempts, failed
//! authentications and tokens issued, the last 5 minutes or hour before now, and for outbound the
//! 5 minutes before those), evaluates the six rules on them and raises one `AlertRaised` per (rule,
//! subject, window) through `alerts::raise` — `Store::record_once` on `alert/<dedupKey>`, which
//! Postgres lets only one writer start, however many instances evaluate the same window.
//!
//! Rules: `volume_spike`, `brute_force`, `rapid_rotation`, `rate_limit`, `spend_threshold`
//! (spend per agent and UTC day against the agent's effective daily cap) and
//! `brute_force_lockout` (each current lock; the lockout raises it at once itself, under the same
//! key, so a lock has one alert whichever path writes it first). `readings` is also what
//! `GET /admin/api/anomalies` shows, so the view and the detector cannot disagree.
//!
//! Each run first deletes the windows no rule reads any more (`anomaly_read::prune`): the windows are a
//! projection of the event store (rebuilt by `commguard replay --projection anomaly`), and the
//! detector's cost follows the current windows, never the history.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use commguard_domain::limits::Tier;
use commguard_projections::anomaly::read::{self as anomaly_read, WindowRow};
use commguard_projections::anomaly::{
    sliding_span, AUTH_FAILED, LOCKOUT, OUTBOUND, RATE_LIMIT_PREFIX, SPEND, TOKEN_ISSUED,
};
use serde::Serialize;
use serde_json::{json, Value};

use crate::alerts::{self, Finding};
use crate::directory::starter;
use crate::money::to_dollars;
use crate::state::AppState;
use crate::store::{rfc3339, Actor, CommandContext};

/// `brute_force`: more than this many `AuthFailed` from one IP in 5 minutes.
pub const BRUTE_FORCE_OVER: i64 = 10;
/// `rapid_rotation`: more than this many tokens issued to one agent in an hour.
pub const ROTATION_OVER: i64 = 3;
/// `volume_spike`: the current 5 minutes above this many times the previous 5.
pub const SPIKE_TIMES: i64 = 3;
/// `spend_threshold`: spend today at or above this percentage of the agent's daily cap.
pub const SPEND_PERCENT: i64 = 80;

/// Every rule of docs/monitoring.md, in the order the view lists them.
pub const RULES: [&str; 6] =
    ["brute_force", "brute_force_lockout", "rapid_rotation", "rate_limit", "spend_threshold", "volume_spike"];

/// Runs the detector until the task is dropped: prunes old windows every interval and, unless
/// `ANOMALY_DETECTOR_ENABLED=false`, evaluates the rules.
pub async fn run(app: AppState) {
    let mut every = tokio::time::interval(Duration::from_secs(app.config.anomaly_check_interval_seconds));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let done = if app.config.anomaly_detector_enabled { check(&app).await.map(drop) } else { prune(&app).await };
        if let Err(e) = done {
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

/// One rule's current window for one subject: its value beside its threshold, and whether it
/// breaks it (`GET /admin/api/anomalies` item).
#[derive(Clone, Debug, Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Reading {
    pub rule: &'static str,
    pub subject_kind: String,
    pub subject_id: String,
    pub org_id: Option<String>,
    #[serde(serialize_with = "as_rfc3339")]
    #[schemars(with = "String")]
    pub window_start: DateTime<Utc>,
    #[serde(serialize_with = "as_rfc3339")]
    #[schemars(with = "String")]
    pub window_end: DateTime<Utc>,
    /// The count, or for `spend_threshold` the spend in dollars.
    pub value: Value,
    /// `volume_spike`: the previous 5 minutes.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous: Option<i64>,
    /// `rate_limit`: the limit that refused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit_type: Option<String>,
    pub threshold: Value,
    pub firing: bool,
    /// The window one alert is raised per: a sliding rule's span truncated from now (one alert
    /// per 5 minutes or hour, docs/monitoring.md), else the window itself.
    #[serde(skip)]
    dedup_window: DateTime<Utc>,
    /// Whether the window is the span before now (it moves with every read).
    #[serde(skip)]
    sliding: bool,
    #[serde(skip)]
    finding: Option<Finding>,
}

impl Reading {
    /// Where the reading sorts among its subject's windows of one rule, for paging: a sliding
    /// window is its subject's only one and moves with every read, so it has none (0).
    pub fn window_key(&self) -> i64 {
        if self.sliding {
            0
        } else {
            self.window_start.timestamp_micros()
        }
    }
}

fn as_rfc3339<S: serde::Serializer>(t: &DateTime<Utc>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&rfc3339(*t))
}

/// One evaluation of every rule on the current windows; returns the alerts it recorded.
pub async fn check(app: &AppState) -> Result<usize, CheckError> {
    prune(app).await?;
    // Fixed windows that closed since the last run are read too: a per-minute limit's window can
    // open and close between two runs a minute apart, and its refusal would never be alerted.
    // Twice the interval covers a late run; pruning keeps them for `PRUNE_AFTER`.
    let now = app.clock.now();
    let interval = TimeDelta::seconds(app.config.anomaly_check_interval_seconds as i64);
    let ended_after = now - (interval * 2).min(commguard_projections::anomaly::PRUNE_AFTER);
    let findings: Vec<Finding> =
        readings_of(app, now, ended_after).await?.into_iter().filter_map(|r| r.finding).collect();
    // A window that keeps firing is found again every run: its alert exists, and one query for
    // all the keys spares a lookup per finding.
    let keys: Vec<&str> = findings.iter().map(|f| f.dedup_key.as_str()).collect();
    let known = alerts::raised(&app.pool, &keys).await?;
    let mut raised = 0;
    for finding in findings.into_iter().filter(|f| !known.contains(&f.dedup_key)) {
        let context = CommandContext::new(Actor::system("anomaly"), "detector", app.clock.now());
        if alerts::raise(&app.store, &app.metrics, finding, context).await? {
            raised += 1;
        }
    }
    Ok(raised)
}

/// Deletes what no rule reads any more: windows long ended, and old sliding buckets (`anomaly_read::prune`).
pub async fn prune(app: &AppState) -> Result<(), CheckError> {
    anomaly_read::prune(&app.pool, app.clock.now()).await?;
    Ok(())
}

/// Every rule's current window values, by rule and subject.
pub async fn readings(app: &AppState) -> Result<Vec<Reading>, sqlx::Error> {
    let now = app.clock.now();
    readings_of(app, now, now).await
}

/// The readings of the windows open at `now` and of the fixed ones that ended after `ended_after`.
async fn readings_of(
    app: &AppState,
    now: DateTime<Utc>,
    ended_after: DateTime<Utc>,
) -> Result<Vec<Reading>, sqlx::Error> {
    let windows = anomaly_read::open_windows(&app.pool, now, ended_after).await?;
    let caps = daily_caps(app, &windows).await?;
    let min_actions = i64::from(app.config.anomaly_volume_min_actions);
    let mut readings: Vec<Reading> = windows.into_iter().filter_map(|w| read(w, min_actions, &caps)).collect();
    readings.sort_by(|a, b| {
        (a.rule, &a.subject_id, &a.limit_type, a.window_start).cmp(&(
            b.rule,
            &b.subject_id,
            &b.limit_type,
            b.window_start,
        ))
    });
    Ok(readings)
}

/// The effective daily spend cap (micro-dollars) of each agent with spend in the windows.
async fn daily_caps(app: &AppState, windows: &[WindowRow]) -> Result<HashMap<String, i64>, sqlx::Error> {
    let agents: Vec<&str> = windows.iter().filter(|w| w.counter == SPEND).map(|w| w.subject_id.as_str()).collect();
    if agents.is_empty() {
        return Ok(HashMap::new());
    }
    let rows = commguard_projections::directory::read::limits_of(&app.pool, &agents).await?;
    let starter = starter(&app.config);
    let mut caps: HashMap<String, i64> =
        agents.iter().map(|a| (a.to_string(), Tier::default().limits(starter).spend_day)).collect();
    for (agent, tier, overrides) in rows {
        caps.insert(agent, overrides.effective(tier.limits(starter)).spend_day);
    }
    Ok(caps)
}

/// A window read against its rule.
fn read(w: WindowRow, min_actions: i64, caps: &HashMap<String, i64>) -> Option<Reading> {
    let agent = w.subject_kind == "agent";
    let (rule, threshold, firing, previous, limit_type, value) = match w.counter.as_str() {
        OUTBOUND if agent => (
            "volume_spike",
            json!({"minActions": min_actions, "overPreviousTimes": SPIKE_TIMES}),
            w.count >= min_actions && w.count > SPIKE_TIMES * w.previous,
            Some(w.previous),
            None,
            json!(w.count),
        ),
        AUTH_FAILED if !agent => {
            ("brute_force", json!({"over": BRUTE_FORCE_OVER}), w.count > BRUTE_FORCE_OVER, None, None, json!(w.count))
        }
        TOKEN_ISSUED if agent => {
            ("rapid_rotation", json!({"over": ROTATION_OVER}), w.count > ROTATION_OVER, None, None, json!(w.count))
        }
        LOCKOUT if !agent => ("brute_force_lockout", json!({"each": "lock"}), w.count >= 1, None, None, json!(w.count)),
        SPEND if agent => {
            let cap = *caps.get(&w.subject_id)?;
            // spend ≥ 80 % of the cap, in integer micro-dollars.
            let firing = w.count * 100 >= cap * SPEND_PERCENT;
            let threshold = json!({"dailyCap": to_dollars(cap), "atLeastPercent": SPEND_PERCENT});
            ("spend_threshold", threshold, firing, None, None, json!(to_dollars(w.count)))
        }
        counter if agent => {
            let limit_type = counter.strip_prefix(RATE_LIMIT_PREFIX)?.to_string();
            ("rate_limit", json!({"atLeast": 1}), w.count >= 1, None, Some(limit_type), json!(w.count))
        }
        _ => return None,
    };
    let sliding = sliding_span(&w.counter);
    let dedup_window = match sliding {
        Some(span) => w.window_end.duration_trunc(span).unwrap_or(w.window_start),
        None => w.window_start,
    };
    let mut reading = Reading {
        rule,
        dedup_window,
        sliding: sliding.is_some(),
        subject_kind: w.subject_kind,
        subject_id: w.subject_id,
        org_id: w.org_id,
        window_start: w.window_start,
        window_end: w.window_end,
        value,
        previous,
        limit_type,
        threshold,
        firing,
        finding: None,
    };
    if firing {
        reading.finding = Some(finding(&reading, w.count, w.previous));
    }
    Some(reading)
}

/// The severity of `rule`'s alerts (docs/monitoring.md): HIGH for the brute-force rules.
pub fn severity_of(rule: &str) -> &'static str {
    match rule {
        "brute_force" | "brute_force_lockout" => "HIGH",
        _ => "MEDIUM",
    }
}

/// The alert a firing reading raises.
fn finding(r: &Reading, count: i64, previous: i64) -> Finding {
    let subject = r.subject_id.clone();
    let severity = severity_of(r.rule);
    let (title, message, details) = match r.rule {
        "volume_spike" => (
            "Volume spike detected",
            format!("Agent {subject}: {count} outbound attempts in 5 minutes, {previous} in the 5 before"),
            json!({ "current": count, "previous": previous }),
        ),
        "brute_force" => (
            "Brute-force auth detected",
            format!("IP {subject}: {count} failed authentications in 5 minutes"),
            json!({ "failures": count }),
        ),
        "rapid_rotation" => (
            "Rapid token rotation",
            format!("Agent {subject}: {count} tokens issued in an hour"),
            json!({ "tokensIssued": count }),
        ),
        "brute_force_lockout" => return Finding::lockout(&subject, None, r.window_start, r.window_end),
        "spend_threshold" => (
            "Spend threshold reached",
            format!(
                "Agent {subject}: spent ${} today, at least {SPEND_PERCENT} % of its daily cap of ${}",
                r.value, r.threshold["dailyCap"]
            ),
            json!({ "spend": r.value, "dailyCap": r.threshold["dailyCap"], "percent": SPEND_PERCENT }),
        ),
        _ => {
            let limit_type = r.limit_type.clone().unwrap_or_default();
            (
                "Rate limit exceeded",
                format!("Agent {subject}: refused by its {limit_type} limit ({count} in this window)"),
                json!({ "limitType": limit_type, "refusals": count }),
            )
        }
    };
    Finding {
        rule: r.rule,
        severity,
        title,
        dedup_key: Finding::key(r.rule, &r.subject_kind, &subject, r.limit_type.as_deref(), r.dedup_window),
        subject_kind: r.subject_kind.clone(),
        subject_id: subject,
        org_id: r.org_id.clone(),
        window_start: r.window_start,
        window_end: r.window_end,
        message,
        details,
    }
}

//! Raising an alert (docs/monitoring.md): every rule — the detector's (`anomaly`) and the lockout's
//! (`auth::lockout`) — describes what it found as a `Finding` and records it here as one
//! `AlertRaised` on the stream `alert/<dedupKey>` with `Store::record_once`, so Postgres lets
//! only the first writer of a (rule, subject, window) through, however many instances or paths
//! try. The one that wrote it counts it and logs it: HIGH at `error`, MEDIUM at `warn`. Below
//! `auth`, so the lockout can raise without importing the detector.

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use commguard_domain::records::AlertEvent;
use serde_json::{json, Value};
use uuid::Uuid;

use crate::metrics::Metrics;
use crate::store::{rfc3339, CommandContext, Store};

/// `brute_force_lockout`'s title, as the lockout and the detector both raise it.
pub const LOCKOUT_TITLE: &str = "Brute-force lockout";

/// A window value that breaks a rule: the alert it raises and the key that makes it unique.
#[derive(Clone, Debug, PartialEq)]
pub struct Finding {
    pub rule: &'static str,
    pub severity: &'static str,
    pub title: &'static str,
    pub subject_kind: String,
    pub subject_id: String,
    pub org_id: Option<String>,
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    pub message: String,
    pub details: Value,
    /// One alert per key: `<rule>:<kind>:<subject>[:<limitType>]:<window start>`, or for a lock
    /// `brute_force_lockout:<ipRef>:<lockedUntil>` (the lock is the window).
    pub dedup_key: String,
}

impl Finding {
    /// The dedup key of a rule whose window is fixed: rule, subject (and limit type), window start.
    pub fn key(rule: &str, kind: &str, subject: &str, limit_type: Option<&str>, start: DateTime<Utc>) -> String {
        let limit_type = limit_type.map(|t| format!(":{t}")).unwrap_or_default();
        format!("{rule}:{kind}:{subject}{limit_type}:{}", start.timestamp())
    }

    /// `brute_force_lockout`: the lock of `ip_ref` from `start` until `until`.
    pub fn lockout(ip_ref: &str, failures: Option<i64>, start: DateTime<Utc>, until: DateTime<Utc>) -> Self {
        let message = match failures {
            Some(n) => format!("IP {ip_ref} locked out after {n} failed authentication attempts"),
            None => format!("IP {ip_ref} locked out until {}", rfc3339(until)),
        };
        Self {
            rule: "brute_force_lockout",
            severity: "HIGH",
            title: LOCKOUT_TITLE,
            subject_kind: "ip".into(),
            subject_id: ip_ref.into(),
            org_id: None,
            window_start: start,
            window_end: until,
            message,
            details: json!({ "failures": failures, "lockedUntil": rfc3339(until) }),
            dedup_key: format!("brute_force_lockout:{ip_ref}:{}", until.timestamp()),
        }
    }
}

/// Which of `keys` already have their alert (one query; `raise` still decides exactly).
pub async fn raised(pool: &sqlx::PgPool, keys: &[&str]) -> Result<HashSet<String>, sqlx::Error> {
    if keys.is_empty() {
        return Ok(HashSet::new());
    }
    let known: Vec<String> = sqlx::query_scalar(
        "SELECT aggregate_id FROM chain_heads WHERE aggregate_type = 'alert' AND aggregate_id = ANY($1)",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    Ok(known.into_iter().collect())
}

/// Records `f` unless its key already has its alert; `true` when this call wrote it.
pub async fn raise(
    store: &Store,
    metrics: &Metrics,
    f: Finding,
    mut context: CommandContext,
) -> Result<bool, cqrs_es::persist::PersistenceError> {
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
    if let Some(org) = &f.org_id {
        context = context.in_org(org.clone());
    }
    if store.record_once("alert", &f.dedup_key, &[alert], &context).await?.is_none() {
        return Ok(false);
    }
    metrics.alert(f.severity, f.rule);
    match f.severity {
        "HIGH" => tracing::error!(rule = f.rule, subject = f.subject_id, "HIGH alert: {}: {}", f.title, f.message),
        _ => tracing::warn!(rule = f.rule, subject = f.subject_id, "MEDIUM alert: {}: {}", f.title, f.message),
    }
    Ok(true)
}

//! Reads of the alerts view: the admin API's alert list, newest first.

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};

/// One alert as the view holds it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AlertRow {
    pub position: i64,
    pub alert_id: String,
    pub rule: String,
    pub severity: String,
    pub title: String,
    pub message: String,
    pub subject_kind: String,
    pub subject_id: String,
    pub org_id: Option<String>,
    pub raised_at: DateTime<Utc>,
    pub occurrences: i64,
}

/// The filters of an alert list; `None` filters nothing.
#[derive(Clone, Debug, Default)]
pub struct AlertFilter {
    /// Leave out alerts about IPs (only the master token sees them).
    pub without_ips: bool,
    pub org_id: Option<String>,
    pub severity: Option<String>,
    pub rule: Option<String>,
    pub since: Option<DateTime<Utc>>,
    /// Positions strictly before this one (the previous page's last).
    pub before: Option<i64>,
}

/// Up to `limit` alerts matching `filter`, newest first.
pub async fn alerts(pool: &PgPool, filter: &AlertFilter, limit: i64) -> Result<Vec<AlertRow>, sqlx::Error> {
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT position, alert_id, rule, severity, title, message, subject_kind, subject_id, org_id, raised_at,
                occurrences
         FROM alerts WHERE true",
    );
    if filter.without_ips {
        sql.push(" AND subject_kind <> 'ip'");
    }
    if let Some(org) = &filter.org_id {
        sql.push(" AND org_id = ").push_bind(org.clone());
    }
    if let Some(severity) = &filter.severity {
        sql.push(" AND severity = ").push_bind(severity.clone());
    }
    if let Some(rule) = &filter.rule {
        sql.push(" AND rule = ").push_bind(rule.clone());
    }
    if let Some(since) = filter.since {
        sql.push(" AND raised_at >= ").push_bind(since);
    }
    if let Some(before) = filter.before {
        sql.push(" AND position < ").push_bind(before);
    }
    sql.push(" ORDER BY position DESC LIMIT ").push_bind(limit);
    sql.build_query_as().fetch_all(pool).await
}

//! Reads of the audit view (`audit_items`): the admin API's audit search and the subject export.
//! Each statement names only the filters given, so each query uses the index that serves it
//! (org, agent, or the subject's blind index).

use chrono::{DateTime, Utc};
use sqlx::{PgPool, Postgres, QueryBuilder};

/// One row of the audit view.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AuditItem {
    pub position: i64,
    pub occurred_at: DateTime<Utc>,
    pub event_type: String,
    pub outcome: String,
    pub actor_kind: Option<String>,
    pub actor_id: Option<String>,
    pub agent_id: Option<String>,
    pub org_id: Option<String>,
    pub refused_by: Option<String>,
    pub code: Option<String>,
    pub rule: Option<String>,
}

impl AuditItem {
    /// One line about the event from the view's own columns: event type, actor, agent and the
    /// refusing check. The view holds no personal field (only blind indexes), so neither can this.
    pub fn summary(&self) -> String {
        let actor = match (&self.actor_kind, &self.actor_id) {
            (Some(kind), Some(id)) => format!("{kind} {id}"),
            _ => "unknown actor".into(),
        };
        let mut line = format!("{} by {actor}", self.event_type);
        if let Some(agent) = &self.agent_id {
            if self.actor_kind.as_deref() != Some("agent") || self.actor_id.as_ref() != Some(agent) {
                line.push_str(&format!(" (agent {agent})"));
            }
        }
        if self.outcome == "refused" {
            line.push_str(&format!(": refused by {}", self.refused_by.as_deref().unwrap_or("unknown check")));
            let detail: Vec<String> =
                [self.code.clone(), self.rule.as_ref().map(|r| format!("rule {r}"))].into_iter().flatten().collect();
            if !detail.is_empty() {
                line.push_str(&format!(" ({})", detail.join(", ")));
            }
        }
        line
    }
}

/// The filters of an audit search; `None` filters nothing.
#[derive(Clone, Debug, Default)]
pub struct AuditFilter {
    /// Positions strictly after this one.
    pub after: i64,
    pub org_id: Option<String>,
    pub agent_id: Option<String>,
    /// The blind index of the subject the event is about.
    pub subject_ref: Option<String>,
    pub event_type: Option<String>,
    pub outcome: Option<String>,
    pub actor_kind: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

/// Up to `limit` items matching `filter`, in position order.
pub async fn items(pool: &PgPool, filter: &AuditFilter, limit: i64) -> Result<Vec<AuditItem>, sqlx::Error> {
    let mut sql: QueryBuilder<Postgres> = QueryBuilder::new(
        "SELECT position, occurred_at, event_type, outcome, actor_kind, actor_id, agent_id, org_id, refused_by, code, rule
         FROM audit_items WHERE position > ",
    );
    sql.push_bind(filter.after);
    let text_filters = [
        ("org_id", &filter.org_id),
        ("agent_id", &filter.agent_id),
        ("subject_ref", &filter.subject_ref),
        ("event_type", &filter.event_type),
        ("outcome", &filter.outcome),
        ("actor_kind", &filter.actor_kind),
    ];
    for (column, value) in text_filters {
        if let Some(value) = value {
            sql.push(format!(" AND {column} = ")).push_bind(value.clone());
        }
    }
    if let Some(from) = filter.from {
        sql.push(" AND occurred_at >= ").push_bind(from);
    }
    if let Some(to) = filter.to {
        // By the published `occurredAt` (milliseconds): `to` equal to an event's includes it.
        sql.push(" AND occurred_at < date_trunc('milliseconds', ")
            .push_bind(to)
            .push("::timestamptz) + interval '1 millisecond'");
    }
    sql.push(" ORDER BY position LIMIT ").push_bind(limit);
    sql.build_query_as().fetch_all(pool).await
}

/// The positions of every event about the subject `subject_ref` up to `head` (optionally of
/// one org, between two instants), in position order: what an export reads.
pub async fn positions_about(
    pool: &PgPool,
    subject_ref: &str,
    head: i64,
    org_id: Option<&str>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Vec<i64>, sqlx::Error> {
    let mut query: QueryBuilder<Postgres> = QueryBuilder::new("SELECT position FROM audit_items WHERE subject_ref = ");
    query.push_bind(subject_ref).push(" AND position <= ").push_bind(head);
    if let Some(org) = org_id {
        query.push(" AND org_id = ").push_bind(org);
    }
    if let Some(from) = from {
        query.push(" AND occurred_at >= ").push_bind(from);
    }
    if let Some(to) = to {
        query
            .push(" AND occurred_at < date_trunc('milliseconds', ")
            .push_bind(to)
            .push("::timestamptz) + interval '1 millisecond'");
    }
    query.push(" ORDER BY position");
    query.build_query_scalar().fetch_all(pool).await
}

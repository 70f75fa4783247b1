//! Reads of `usage_hourly`: actions and provider cost summed per agent and channel.

use chrono::{DateTime, Utc};
use sqlx::PgExecutor;

/// One agent's actions and provider cost (micro-dollars) on one channel over a span of hours.
#[derive(Clone, Debug, PartialEq, Eq, sqlx::FromRow)]
pub struct UsageSum {
    pub agent_id: String,
    pub channel: String,
    pub actions: i64,
    pub cost: i64,
}

/// Sums per agent and channel (of one agent, of one org, or of all) over the hours that start in
/// [`from` truncated to the hour, `to`); `None` leaves that end open. By agent, then channel.
pub async fn sums<'e>(
    db: impl PgExecutor<'e>,
    agent_id: Option<&str>,
    org_id: Option<&str>,
    from: Option<DateTime<Utc>>,
    to: Option<DateTime<Utc>>,
) -> Result<Vec<UsageSum>, sqlx::Error> {
    sqlx::query_as(
        "SELECT agent_id, channel, SUM(actions)::bigint AS actions, SUM(cost)::bigint AS cost FROM usage_hourly
         WHERE ($1::text IS NULL OR agent_id = $1) AND ($2::text IS NULL OR org_id = $2)
           AND ($3::timestamptz IS NULL OR hour >= date_trunc('hour', $3))
           AND ($4::timestamptz IS NULL OR hour < $4)
         GROUP BY agent_id, channel ORDER BY agent_id, channel",
    )
    .bind(agent_id)
    .bind(org_id)
    .bind(from)
    .bind(to)
    .fetch_all(db)
    .await
}

//! The directory of organizations and agents: views read from the directory projections, and
//! the commands that change them (`commands`), shared by MCP tools and admin routes.

pub mod commands;
pub mod limits;
pub mod settings;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use sqlx::{PgExecutor, PgPool};

use commguard_domain::limits::{LimitSet, Overrides, Tier};

use crate::error::ApiError;
use crate::paging::Page;
use crate::store::rfc3339;

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct AgentView {
    pub agent_id: String,
    pub org_id: String,
    pub display_name: String,
    pub agent_gender: String,
    pub country: String,
    pub status: String,
    pub capabilities: Value,
    pub channels: Value,
    pub blocked_channels: Value,
    pub mode: String,
    pub provisioned_at: DateTime<Utc>,
    /// From the limits projection (no row: starter, no overrides, global markup).
    pub tier: Option<String>,
    pub overrides: Option<Value>,
    pub markup_percent: Option<f64>,
    /// Where the agent's channels live at the provider (Twilio's number sid).
    pub provider_refs: Value,
}

#[derive(Clone, Debug, sqlx::FromRow)]
pub struct OrgView {
    pub org_id: String,
    pub name: String,
    pub slug: String,
    pub mode: String,
    pub a2p_registered: bool,
    pub settings: Value,
    pub max_agents: i32,
    pub max_spend_per_day: Option<i64>,
    pub max_spend_per_month: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub agent_count: i64,
}

const ORG_COLUMNS: &str = "o.org_id, o.name, o.slug, o.mode, o.a2p_registered, o.settings, o.max_agents, \
    o.max_spend_per_day, o.max_spend_per_month, o.created_at, o.updated_at, \
    (SELECT COUNT(*) FROM agents a WHERE a.org_id = o.org_id AND a.status = 'active') AS agent_count";

const AGENT_COLUMNS: &str =
    "a.agent_id, a.org_id, a.display_name, a.agent_gender, a.country, a.status, a.capabilities, \
    a.channels, a.blocked_channels, a.mode, a.provisioned_at, l.tier, l.overrides, l.markup_percent, a.provider_refs";

pub async fn agent<'e>(db: impl PgExecutor<'e>, agent_id: &str) -> Result<Option<AgentView>, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents a LEFT JOIN agent_limits l USING (agent_id) WHERE a.agent_id = $1"
    ))
    .bind(agent_id)
    .fetch_optional(db)
    .await
    .map_err(ApiError::internal)
}

pub async fn agents_of(pool: &PgPool, org_id: Option<&str>) -> Result<Vec<AgentView>, ApiError> {
    sqlx::query_as(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents a LEFT JOIN agent_limits l USING (agent_id)
         WHERE $1::text IS NULL OR a.org_id = $1 ORDER BY a.provisioned_at, a.agent_id"
    ))
    .bind(org_id)
    .fetch_all(pool)
    .await
    .map_err(ApiError::internal)
}

/// The sort key of agent and org pages: creation time (microseconds) and id.
pub type CreatedKey = (i64, String);

fn created_key(at: DateTime<Utc>, id: &str) -> CreatedKey {
    (at.timestamp_micros(), id.to_string())
}

fn after_time(page: &Page<CreatedKey>) -> (Option<DateTime<Utc>>, Option<&str>) {
    match &page.after {
        Some((micros, id)) => (DateTime::from_timestamp_micros(*micros), Some(id.as_str())),
        None => (None, None),
    }
}

/// A page of agents (all, or of `org_id`), by provisioning time, and the next page's cursor.
pub async fn agents_page(
    pool: &PgPool,
    org_id: Option<&str>,
    page: &Page<CreatedKey>,
) -> Result<(Vec<AgentView>, Option<String>), ApiError> {
    let (at, id) = after_time(page);
    let rows: Vec<AgentView> = sqlx::query_as(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents a LEFT JOIN agent_limits l USING (agent_id)
         WHERE ($1::text IS NULL OR a.org_id = $1)
           AND ($2::timestamptz IS NULL OR (a.provisioned_at, a.agent_id) > ($2, $3::text))
         ORDER BY a.provisioned_at, a.agent_id LIMIT $4"
    ))
    .bind(org_id)
    .bind(at)
    .bind(id)
    .bind(page.fetch())
    .fetch_all(pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(page.finish(rows, |a| created_key(a.provisioned_at, &a.agent_id)))
}

/// A page of orgs (all, or only `org_id`), by creation time, and the next page's cursor.
pub async fn orgs_page(
    pool: &PgPool,
    org_id: Option<&str>,
    page: &Page<CreatedKey>,
) -> Result<(Vec<OrgView>, Option<String>), ApiError> {
    let (at, id) = after_time(page);
    let rows: Vec<OrgView> = sqlx::query_as(&format!(
        "SELECT {ORG_COLUMNS} FROM orgs o
         WHERE ($1::text IS NULL OR o.org_id = $1)
           AND ($2::timestamptz IS NULL OR (o.created_at, o.org_id) > ($2, $3::text))
         ORDER BY o.created_at, o.org_id LIMIT $4"
    ))
    .bind(org_id)
    .bind(at)
    .bind(id)
    .bind(page.fetch())
    .fetch_all(pool)
    .await
    .map_err(ApiError::internal)?;
    Ok(page.finish(rows, |o| created_key(o.created_at, &o.org_id)))
}

pub async fn org<'e>(db: impl PgExecutor<'e>, org_id: &str) -> Result<Option<OrgView>, ApiError> {
    sqlx::query_as(&format!("SELECT {ORG_COLUMNS} FROM orgs o WHERE o.org_id = $1"))
        .bind(org_id)
        .fetch_optional(db)
        .await
        .map_err(ApiError::internal)
}

/// The orgs among `org_ids` (those that exist).
pub async fn orgs_by_id(pool: &PgPool, org_ids: &[String]) -> Result<Vec<OrgView>, ApiError> {
    sqlx::query_as(&format!("SELECT {ORG_COLUMNS} FROM orgs o WHERE o.org_id = ANY($1)"))
        .bind(org_ids)
        .fetch_all(pool)
        .await
        .map_err(ApiError::internal)
}

pub async fn orgs(pool: &PgPool) -> Result<Vec<OrgView>, ApiError> {
    sqlx::query_as(&format!("SELECT {ORG_COLUMNS} FROM orgs o ORDER BY o.created_at, o.org_id"))
        .fetch_all(pool)
        .await
        .map_err(ApiError::internal)
}

impl OrgView {
    pub fn pool(&self) -> Value {
        let max = i64::from(self.max_agents);
        json!({ "maxAgents": max, "activeAgents": self.agent_count, "slotsRemaining": (max - self.agent_count).max(0) })
    }

    /// The `comms_list_organizations` row.
    pub fn listing(&self) -> Value {
        json!({
            "id": self.org_id,
            "name": self.name,
            "slug": self.slug,
            "mode": self.mode,
            "a2pRegistered": self.a2p_registered,
            "settings": self.settings,
            "created_at": rfc3339(self.created_at),
            "updated_at": rfc3339(self.updated_at),
            "agentCount": self.agent_count,
        })
    }

    /// The admin view: listing plus caps.
    pub fn admin_view(&self) -> Value {
        let mut v = self.listing();
        v["maxAgents"] = json!(self.max_agents);
        v["maxSpendPerDay"] = json!(self.max_spend_per_day.map(crate::money::to_dollars));
        v["maxSpendPerMonth"] = json!(self.max_spend_per_month.map(crate::money::to_dollars));
        v["pool"] = self.pool();
        v
    }
}

impl AgentView {
    pub fn tier(&self) -> Tier {
        self.tier.as_deref().and_then(Tier::parse).unwrap_or_default()
    }

    pub fn overrides(&self) -> Overrides {
        self.overrides.clone().and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default()
    }

    /// The five limits in force (CONTRACT §9.2).
    pub fn effective_limits(&self, config: &crate::config::Config) -> LimitSet {
        self.overrides().effective(self.tier().limits(starter(config)))
    }

    pub fn status_view(&self, org: Option<&OrgView>) -> Value {
        json!({
            "agentId": self.agent_id,
            "orgId": self.org_id,
            "displayName": self.display_name,
            "status": self.status,
            "provisionedAt": rfc3339(self.provisioned_at),
            "channels": self.channels,
            "blockedChannels": self.blocked_channels,
            "mode": org.map_or(self.mode.as_str(), |o| o.mode.as_str()),
            "pool": org.map(OrgView::pool),
        })
    }

    /// The admin view (CONTRACT §12 `/agents`): status, tier, overrides and effective limits,
    /// billing (`markupPercent` null = the deployment's `BILLING_MARKUP_PERCENT`).
    pub fn admin_view(&self, config: &crate::config::Config, org: Option<&OrgView>) -> Value {
        let mut v = self.status_view(org);
        v["tier"] = json!(self.tier().as_str());
        v["overrides"] = overrides_json(self.overrides());
        v["limits"] = limits_json(self.effective_limits(config));
        v["billing"] = json!({
            "tier": self.tier().as_str(),
            "markupPercent": self.markup_percent,
            "effectiveMarkupPercent": self.markup_percent.unwrap_or(config.billing_markup_percent),
        });
        v
    }
}

/// The deployment's starter tier (`DEFAULT_MAX_*`).
pub fn starter(config: &crate::config::Config) -> LimitSet {
    LimitSet {
        per_minute: i64::from(config.default_max_actions_per_minute),
        per_hour: i64::from(config.default_max_actions_per_hour),
        per_day: i64::from(config.default_max_actions_per_day),
        spend_day: config.default_max_spend_per_day,
        spend_month: config.default_max_spend_per_month,
    }
}

/// Limits as the tools show them: counts as integers, spend in dollars.
pub fn limits_json(l: LimitSet) -> Value {
    json!({
        "maxActionsPerMinute": l.per_minute,
        "maxActionsPerHour": l.per_hour,
        "maxActionsPerDay": l.per_day,
        "maxSpendPerDay": crate::money::to_dollars(l.spend_day),
        "maxSpendPerMonth": crate::money::to_dollars(l.spend_month),
    })
}

pub fn overrides_json(o: Overrides) -> Value {
    json!({
        "maxActionsPerMinute": o.per_minute,
        "maxActionsPerHour": o.per_hour,
        "maxActionsPerDay": o.per_day,
        "maxSpendPerDay": o.spend_day.map(crate::money::to_dollars),
        "maxSpendPerMonth": o.spend_month.map(crate::money::to_dollars),
    })
}

//! The directory of organizations and agents: views read from the directory projections, and
//! the commands that change them (`commands`), shared by MCP tools and admin routes.

pub mod commands;
pub mod limits;
pub mod settings;

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::Serialize;
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

/// An org's agent capacity.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PoolView {
    pub max_agents: i64,
    pub active_agents: i64,
    pub slots_remaining: i64,
}

/// The `comms_list_organizations` row.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgListing {
    pub id: String,
    pub name: String,
    pub slug: String,
    pub mode: String,
    pub a2p_registered: bool,
    pub settings: Value,
    #[serde(rename = "created_at")]
    pub created_at: String,
    #[serde(rename = "updated_at")]
    pub updated_at: String,
    pub agent_count: i64,
}

/// The admin view of an org (CONTRACT §12 `/orgs`): the listing, its caps and its capacity.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgAdminView {
    #[serde(flatten)]
    pub listing: OrgListing,
    pub max_agents: i32,
    /// Dollars; null = no cap.
    pub max_spend_per_day: Option<f64>,
    pub max_spend_per_month: Option<f64>,
    pub pool: PoolView,
}

/// Five limits as the tools show them: counts as integers, spend in dollars.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsView {
    pub max_actions_per_minute: i64,
    pub max_actions_per_hour: i64,
    pub max_actions_per_day: i64,
    pub max_spend_per_day: f64,
    pub max_spend_per_month: f64,
}

impl From<LimitSet> for LimitsView {
    fn from(l: LimitSet) -> Self {
        Self {
            max_actions_per_minute: l.per_minute,
            max_actions_per_hour: l.per_hour,
            max_actions_per_day: l.per_day,
            max_spend_per_day: crate::money::to_dollars(l.spend_day),
            max_spend_per_month: crate::money::to_dollars(l.spend_month),
        }
    }
}

/// Overrides as the tools show them; null = the tier's value.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OverridesView {
    pub max_actions_per_minute: Option<i64>,
    pub max_actions_per_hour: Option<i64>,
    pub max_actions_per_day: Option<i64>,
    pub max_spend_per_day: Option<f64>,
    pub max_spend_per_month: Option<f64>,
}

impl From<Overrides> for OverridesView {
    fn from(o: Overrides) -> Self {
        Self {
            max_actions_per_minute: o.per_minute,
            max_actions_per_hour: o.per_hour,
            max_actions_per_day: o.per_day,
            max_spend_per_day: o.spend_day.map(crate::money::to_dollars),
            max_spend_per_month: o.spend_month.map(crate::money::to_dollars),
        }
    }
}

/// An agent's status (`comms_get_agent_status`).
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentStatusView {
    pub agent_id: String,
    pub org_id: String,
    pub display_name: String,
    pub status: String,
    pub provisioned_at: String,
    pub channels: Value,
    pub blocked_channels: Value,
    pub mode: String,
    pub pool: Option<PoolView>,
}

/// An agent's billing: `markupPercent` null = the deployment's `BILLING_MARKUP_PERCENT`.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BillingView {
    pub tier: String,
    pub markup_percent: Option<f64>,
    pub effective_markup_percent: f64,
}

/// The admin view of an agent (CONTRACT §12 `/agents`): status, tier, overrides and effective
/// limits, billing.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentAdminView {
    #[serde(flatten)]
    pub status: AgentStatusView,
    pub tier: String,
    pub overrides: OverridesView,
    pub limits: LimitsView,
    pub billing: BillingView,
}

impl OrgView {
    pub fn pool(&self) -> PoolView {
        let max = i64::from(self.max_agents);
        PoolView { max_agents: max, active_agents: self.agent_count, slots_remaining: (max - self.agent_count).max(0) }
    }

    /// The `comms_list_organizations` row.
    pub fn listing(&self) -> OrgListing {
        OrgListing {
            id: self.org_id.clone(),
            name: self.name.clone(),
            slug: self.slug.clone(),
            mode: self.mode.clone(),
            a2p_registered: self.a2p_registered,
            settings: self.settings.clone(),
            created_at: rfc3339(self.created_at),
            updated_at: rfc3339(self.updated_at),
            agent_count: self.agent_count,
        }
    }

    /// The admin view: listing plus caps.
    pub fn admin_view(&self) -> OrgAdminView {
        OrgAdminView {
            listing: self.listing(),
            max_agents: self.max_agents,
            max_spend_per_day: self.max_spend_per_day.map(crate::money::to_dollars),
            max_spend_per_month: self.max_spend_per_month.map(crate::money::to_dollars),
            pool: self.pool(),
        }
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

    pub fn status_view(&self, org: Option<&OrgView>) -> AgentStatusView {
        AgentStatusView {
            agent_id: self.agent_id.clone(),
            org_id: self.org_id.clone(),
            display_name: self.display_name.clone(),
            status: self.status.clone(),
            provisioned_at: rfc3339(self.provisioned_at),
            channels: self.channels.clone(),
            blocked_channels: self.blocked_channels.clone(),
            mode: org.map_or(&self.mode, |o| &o.mode).clone(),
            pool: org.map(OrgView::pool),
        }
    }

    /// The admin view (CONTRACT §12 `/agents`).
    pub fn admin_view(&self, config: &crate::config::Config, org: Option<&OrgView>) -> AgentAdminView {
        AgentAdminView {
            status: self.status_view(org),
            tier: self.tier().as_str().into(),
            overrides: self.overrides().into(),
            limits: self.effective_limits(config).into(),
            billing: BillingView {
                tier: self.tier().as_str().into(),
                markup_percent: self.markup_percent,
                effective_markup_percent: self.markup_percent.unwrap_or(config.billing_markup_percent),
            },
        }
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

/// Limits as the tools show them (`LimitsView`), as JSON.
pub fn limits_json(l: LimitSet) -> Value {
    json!(LimitsView::from(l))
}

pub fn overrides_json(o: Overrides) -> Value {
    json!(OverridesView::from(o))
}

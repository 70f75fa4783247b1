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

use commguard_domain::limits::{LimitSet, Overrides};
use commguard_projections::directory::read;

use crate::error::ApiError;
use crate::paging::Page;
use crate::store::rfc3339;

pub use commguard_projections::directory::read::{AgentView, BlockedChannels, OrgView};

pub async fn agent<'e>(db: impl PgExecutor<'e>, agent_id: &str) -> Result<Option<AgentView>, ApiError> {
    read::agent(db, agent_id).await.map_err(ApiError::internal)
}

pub async fn agents_of(pool: &PgPool, org_id: Option<&str>) -> Result<Vec<AgentView>, ApiError> {
    read::agents_of(pool, org_id).await.map_err(ApiError::internal)
}

/// The sort key of agent and org pages: creation time (microseconds) and id.
pub type CreatedKey = (i64, String);

fn created_key(at: DateTime<Utc>, id: &str) -> CreatedKey {
    (at.timestamp_micros(), id.to_string())
}

fn after_time(page: &Page<CreatedKey>) -> read::After<'_> {
    page.after.as_ref().and_then(|(micros, id)| Some((DateTime::from_timestamp_micros(*micros)?, id.as_str())))
}

/// A page of agents (all, or of `org_id`), by provisioning time, and the next page's cursor.
pub async fn agents_page(
    pool: &PgPool,
    org_id: Option<&str>,
    page: &Page<CreatedKey>,
) -> Result<(Vec<AgentView>, Option<String>), ApiError> {
    let rows = read::agents_after(pool, org_id, after_time(page), page.fetch()).await.map_err(ApiError::internal)?;
    Ok(page.finish(rows, |a| created_key(a.provisioned_at, &a.agent_id)))
}

/// A page of orgs (all, or only `org_id`), by creation time, and the next page's cursor.
pub async fn orgs_page(
    pool: &PgPool,
    org_id: Option<&str>,
    page: &Page<CreatedKey>,
) -> Result<(Vec<OrgView>, Option<String>), ApiError> {
    let rows = read::orgs_after(pool, org_id, after_time(page), page.fetch()).await.map_err(ApiError::internal)?;
    Ok(page.finish(rows, |o| created_key(o.created_at, &o.org_id)))
}

pub async fn org<'e>(db: impl PgExecutor<'e>, org_id: &str) -> Result<Option<OrgView>, ApiError> {
    read::org(db, org_id).await.map_err(ApiError::internal)
}

/// The org `org_id`, or 404 `Organization "<id>" not found` (the one wording of it).
pub async fn existing_org<'e>(db: impl PgExecutor<'e>, org_id: &str) -> Result<OrgView, ApiError> {
    org(db, org_id).await?.ok_or_else(|| ApiError::not_found(format!("Organization \"{org_id}\" not found")))
}

/// The orgs among `org_ids` (those that exist).
pub async fn orgs_by_id(pool: &PgPool, org_ids: &[String]) -> Result<Vec<OrgView>, ApiError> {
    read::orgs_by_id(pool, org_ids).await.map_err(ApiError::internal)
}

pub async fn orgs(pool: &PgPool) -> Result<Vec<OrgView>, ApiError> {
    read::orgs(pool).await.map_err(ApiError::internal)
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

/// The admin view of an org (docs/admin-api.md `/orgs`): the listing, its caps and its capacity.
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
    pub blocked_channels: Vec<String>,
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

/// The admin view of an agent (docs/admin-api.md `/agents`): status, tier, overrides and effective
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

/// An org's agent capacity.
pub fn capacity(org: &OrgView) -> PoolView {
    let max = i64::from(org.max_agents);
    PoolView { max_agents: max, active_agents: org.agent_count, slots_remaining: (max - org.agent_count).max(0) }
}

/// The `comms_list_organizations` row.
pub fn org_listing(org: &OrgView) -> OrgListing {
    OrgListing {
        id: org.org_id.clone(),
        name: org.name.clone(),
        slug: org.slug.clone(),
        mode: org.mode.as_str().into(),
        a2p_registered: org.a2p_registered,
        settings: org.settings.clone(),
        created_at: rfc3339(org.created_at),
        updated_at: rfc3339(org.updated_at),
        agent_count: org.agent_count,
    }
}

/// The admin view of an org: listing plus caps.
pub fn org_admin_view(org: &OrgView) -> OrgAdminView {
    OrgAdminView {
        listing: org_listing(org),
        max_agents: org.max_agents,
        max_spend_per_day: org.max_spend_per_day.map(crate::money::to_dollars),
        max_spend_per_month: org.max_spend_per_month.map(crate::money::to_dollars),
        pool: capacity(org),
    }
}

/// The five limits in force for `agent` (docs/limits.md#tiers).
pub fn effective_limits(agent: &AgentView, config: &crate::config::Config) -> LimitSet {
    agent.effective_limits(starter(config))
}

/// An agent's status (`comms_get_agent_status`); `org`'s mode when known.
pub fn status_view(agent: &AgentView, org: Option<&OrgView>) -> AgentStatusView {
    AgentStatusView {
        agent_id: agent.agent_id.clone(),
        org_id: agent.org_id.clone(),
        display_name: agent.display_name.clone(),
        status: agent.status.as_str().into(),
        provisioned_at: rfc3339(agent.provisioned_at),
        channels: agent.channels.clone(),
        blocked_channels: agent.blocked_channels.0.clone(),
        mode: org.map_or(agent.mode, |o| o.mode).as_str().into(),
        pool: org.map(capacity),
    }
}

/// The admin view of an agent (docs/admin-api.md `/agents`).
pub fn agent_admin_view(agent: &AgentView, config: &crate::config::Config, org: Option<&OrgView>) -> AgentAdminView {
    AgentAdminView {
        status: status_view(agent, org),
        tier: agent.tier.as_str().into(),
        overrides: agent.overrides.into(),
        limits: effective_limits(agent, config).into(),
        billing: BillingView {
            tier: agent.tier.as_str().into(),
            markup_percent: agent.markup_percent,
            effective_markup_percent: agent.markup_percent.unwrap_or(config.billing_markup_percent),
        },
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

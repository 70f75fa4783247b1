//! An agent's limits as the admin API shows them (docs/admin-api.md `GET /admin/api/limits`): tier,
//! overrides, the effective limits (docs/limits.md#tiers) and its org's spend caps — now, from the directory
//! projections, or at an instant, from the agent's and its org's streams folded by the agent and
//! organization aggregates' own `apply`. Both end in the same `LimitsState`, rendered once.

use chrono::{DateTime, Utc};
use commguard_domain::agent::Agent;
use commguard_domain::limits::{Overrides, Tier};
use commguard_domain::organization::Organization;
use cqrs_es::Aggregate;

use super::{starter, AgentView, LimitsView, OrgView, OverridesView};
use crate::config::Config;
use crate::error::ApiError;
use crate::money::to_dollars;
use crate::store::keystore::KeyStore;
use crate::store::sealing::open_payload;
use crate::store::{history, rfc3339};

/// The agent events that set what this view shows; the rest of the agent's stream (every
/// message and call it ever made) is never read. Migration 0019 indexes exactly these events.
pub const AGENT_SETTINGS: &[&str] = &["AgentProvisioned", "LimitsChanged", "BillingConfigChanged"];
/// The agent's billing address as its last `BillingConfigChanged` set it, opened; `None` when none
/// was set, the last change cleared it, or its subject was erased. The address exists only
/// sealed in that event: only the agent's billing events are read (migration 0019's index).
pub async fn billing_email(
    pool: &sqlx::PgPool,
    keystore: &KeyStore,
    agent_id: &str,
) -> Result<Option<String>, ApiError> {
    const BILLING: &[&str] = &["BillingConfigChanged"];
    let events = history::stream_until(pool, Agent::TYPE, agent_id, Some(BILLING), DateTime::<Utc>::MAX_UTC)
        .await
        .map_err(ApiError::internal)?;
    let Some(last) = events.into_iter().last() else { return Ok(None) };
    let mut payload = last.payload;
    let redactions = open_payload(keystore, &mut payload, last.event_id).await.map_err(ApiError::internal)?;
    let erased = redactions.iter().any(|r| r.path == "billingEmail");
    Ok(payload.get("billingEmail").and_then(|v| v.as_str()).filter(|_| !erased).map(str::to_string))
}

/// The organization events that set its caps.
pub const ORG_SETTINGS: &[&str] = &["OrganizationCreated", "OrgSettingsChanged"];

#[derive(Clone, Debug, PartialEq)]
pub struct LimitsState {
    pub tier: Tier,
    pub overrides: Overrides,
    pub markup_percent: Option<f64>,
    /// The org's daily and monthly spend caps, micro-dollars (`None`: unlimited).
    pub org_spend_day: Option<i64>,
    pub org_spend_month: Option<i64>,
}

impl LimitsState {
    /// As the projections hold it now.
    pub fn live(agent: &AgentView, org: Option<&OrgView>) -> Self {
        Self {
            tier: agent.tier,
            overrides: agent.overrides,
            markup_percent: agent.markup_percent,
            org_spend_day: org.and_then(|o| o.max_spend_per_day),
            org_spend_month: org.and_then(|o| o.max_spend_per_month),
        }
    }

    /// As the events up to `as_of` made it; `None` if the agent had not been provisioned by then.
    pub async fn at(
        pool: &sqlx::PgPool,
        agent_id: &str,
        org_id: &str,
        as_of: DateTime<Utc>,
    ) -> Result<Option<Self>, ApiError> {
        let agent_events = history::stream_until(pool, Agent::TYPE, agent_id, Some(AGENT_SETTINGS), as_of);
        let org_events = history::stream_until(pool, Organization::TYPE, org_id, Some(ORG_SETTINGS), as_of);
        let (agent_events, org_events) = tokio::try_join!(agent_events, org_events).map_err(ApiError::internal)?;
        let agent: Agent = history::fold(&agent_events).map_err(ApiError::internal)?;
        if agent.status().is_none() {
            return Ok(None);
        }
        let org: Organization = history::fold(&org_events).map_err(ApiError::internal)?;
        Ok(Some(Self {
            tier: agent.tier(),
            overrides: agent.overrides(),
            markup_percent: agent.markup_percent(),
            org_spend_day: org.settings().max_spend_per_day,
            org_spend_month: org.settings().max_spend_per_month,
        }))
    }

    /// `{agentId,asOf,tier,overrides,effective,orgCaps,markupPercent}`.
    pub fn view(&self, config: &Config, agent_id: &str, as_of: DateTime<Utc>) -> LimitsReply {
        LimitsReply {
            agent_id: agent_id.into(),
            as_of: rfc3339(as_of),
            tier: self.tier.as_str().into(),
            overrides: self.overrides.into(),
            effective: self.overrides.effective(self.tier.limits(starter(config))).into(),
            org_caps: OrgCaps {
                max_spend_per_day: self.org_spend_day.map(to_dollars),
                max_spend_per_month: self.org_spend_month.map(to_dollars),
            },
            markup_percent: self.markup_percent,
        }
    }
}

/// `GET /admin/api/limits` (docs/admin-api.md): an agent's limits now or as of an instant.
#[derive(serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LimitsReply {
    pub agent_id: String,
    pub as_of: String,
    pub tier: String,
    pub overrides: OverridesView,
    pub effective: LimitsView,
    pub org_caps: OrgCaps,
    /// Null = the deployment's `BILLING_MARKUP_PERCENT`.
    pub markup_percent: Option<f64>,
}

/// The org's spend caps in dollars; null = no cap.
#[derive(serde::Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct OrgCaps {
    pub max_spend_per_day: Option<f64>,
    pub max_spend_per_month: Option<f64>,
}

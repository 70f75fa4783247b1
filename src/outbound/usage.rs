//! Usage and billing views (docs/tools.md#comms_get_usage_dashboard,
//! `comms_get_billing_summary`): sums of the usage projection over a period, and the live
//! counters of the limits for "current usage".

use chrono::{DateTime, Datelike, Duration, TimeZone, Utc};
use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Value};

use commguard_projections::usage::read::{self, UsageSum};

use crate::auth::{Principal, Role};
use crate::directory::{self, commands, limits_json, AgentView};
use crate::error::ApiError;
use crate::money::to_dollars;
use crate::state::AppState;
use crate::validate::invalid;

pub const CHANNELS: [&str; 4] = ["sms", "email", "voice_call", "voice_message"];

/// The start of `period` at `now`: today = 00:00 UTC, week = 168 h ago, month = the 1st, all.
pub fn period_start(period: &str, now: DateTime<Utc>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let midnight = Utc.from_utc_datetime(&now.date_naive().and_hms_opt(0, 0, 0).expect("midnight exists"));
    match period {
        "today" => Ok(Some(midnight)),
        "week" => Ok(Some(now - Duration::hours(168))),
        "month" => Ok(Some(midnight.with_day(1).expect("the 1st exists"))),
        "all" => Ok(None),
        _ => Err(invalid("period", "must be one of today, week, month, all")),
    }
}

/// A span of UTC hours: the usage projection counts per agent, channel and hour, so an hour
/// counts when it starts in [`from` truncated to the hour, `to`). `None`: unbounded.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    pub from: Option<DateTime<Utc>>,
    pub to: Option<DateTime<Utc>>,
}

impl Window {
    /// From the start of `period` at `now`, unbounded after.
    pub fn period(period: &str, now: DateTime<Utc>) -> Result<Self, ApiError> {
        Ok(Self { from: period_start(period, now)?, to: None })
    }
}

/// Per agent and channel: actions and cost in `window`.
async fn sums(
    app: &AppState,
    agent_id: Option<&str>,
    org_id: Option<&str>,
    window: Window,
) -> Result<Vec<UsageSum>, ApiError> {
    read::sums(&app.pool, agent_id, org_id, window.from, window.to).await.map_err(ApiError::internal)
}

/// The live counters the limits read for an agent or an org (`scope` `agent` | `org`): actions
/// today, spend today and spend this month (micro-dollars), at the service clock's now.
pub async fn counters(app: &AppState, scope: &str, key: &str) -> Result<(i64, i64, i64), ApiError> {
    let now = app.clock.now();
    let row: (Option<i64>, Option<i64>, Option<i64>) = sqlx::query_as(
        "SELECT MAX(actions) FILTER (WHERE period = 'day'), MAX(spend) FILTER (WHERE period = 'day'), MAX(spend) FILTER (WHERE period = 'month')
         FROM usage_counters WHERE scope = $1 AND key = $2
           AND ((period = 'day' AND period_start = ($3 AT TIME ZONE 'UTC')::date)
             OR (period = 'month' AND period_start = date_trunc('month', $3 AT TIME ZONE 'UTC')::date))",
    )
    .bind(scope)
    .bind(key)
    .bind(now)
    .fetch_one(&app.pool)
    .await
    .map_err(ApiError::internal)?;
    Ok((row.0.unwrap_or(0), row.1.unwrap_or(0), row.2.unwrap_or(0)))
}

/// Actions and dollars by channel (every channel, zeros included).
type ByChannel<T> = BTreeMap<String, T>;

fn by_channel(rows: &[UsageSum], agent: &str) -> (ByChannel<i64>, ByChannel<f64>, i64, i64) {
    let (mut actions, mut costs) = (BTreeMap::new(), BTreeMap::new());
    for c in CHANNELS {
        actions.insert(c.to_string(), 0);
        costs.insert(c.to_string(), 0.0);
    }
    let (mut total_actions, mut total_cost) = (0, 0);
    for sum in rows.iter().filter(|r| r.agent_id == agent) {
        actions.insert(sum.channel.clone(), sum.actions);
        costs.insert(sum.channel.clone(), to_dollars(sum.cost));
        total_actions += sum.actions;
        total_cost += sum.cost;
    }
    (actions, costs, total_actions, total_cost)
}

/// `comms_get_usage_dashboard` for one agent.
pub async fn agent_dashboard(app: &AppState, agent: &AgentView, period: &str) -> Result<Value, ApiError> {
    let rows = sums(app, Some(&agent.agent_id), None, Window::period(period, app.clock.now())?).await?;
    let (actions, costs, total_actions, total_cost) = by_channel(&rows, &agent.agent_id);
    let limits = directory::effective_limits(agent, &app.config);
    let (today, spend_today, spend_month) = counters(app, "agent", &agent.agent_id).await?;
    Ok(json!({
        "agentId": agent.agent_id,
        "period": period,
        "actions": actions,
        "totalActions": total_actions,
        "costsByChannel": costs,
        "totalCost": to_dollars(total_cost),
        "currentUsage": {
            "actionsToday": today,
            "actionsLimit": limits.per_day,
            "spendToday": to_dollars(spend_today),
            "spendDayLimit": to_dollars(limits.spend_day),
            "spendMonth": to_dollars(spend_month),
            "spendMonthLimit": to_dollars(limits.spend_month),
        },
        "limits": limits_json(limits),
    }))
}

/// Actions and spend per agent in `window`, for `agents` (all of `org`, or one agent), with
/// their totals: `{period, orgId?, globalTotals, agents}` — the org form of
/// `comms_get_usage_dashboard`, and `GET /admin/api/usage`.
pub async fn usage_by_agent(
    app: &AppState,
    agents: &[AgentView],
    org: Option<&str>,
    one_agent: Option<&str>,
    period: &str,
    window: Window,
) -> Result<UsageByAgent, ApiError> {
    let rows = sums(app, one_agent, org, window).await?;
    let (mut all_actions, mut all_cost) = (0, 0);
    let mut listed = Vec::new();
    for agent in agents {
        let (actions, costs, n, cost) = by_channel(&rows, &agent.agent_id);
        all_actions += n;
        all_cost += cost;
        listed.push(AgentUsage {
            agent_id: agent.agent_id.clone(),
            org_id: agent.org_id.clone(),
            actions,
            total_actions: n,
            costs_by_channel: costs,
            total_cost: to_dollars(cost),
        });
    }
    Ok(UsageByAgent {
        period: period.into(),
        org_id: org.map(str::to_string),
        global_totals: Totals { total_actions: all_actions, total_cost: to_dollars(all_cost) },
        agents: listed,
    })
}

/// Actions and spend per agent over a period, with their totals.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageByAgent {
    pub period: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub org_id: Option<String>,
    pub global_totals: Totals,
    pub agents: Vec<AgentUsage>,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Totals {
    pub total_actions: i64,
    /// Dollars.
    pub total_cost: f64,
}

#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentUsage {
    pub agent_id: String,
    pub org_id: String,
    pub actions: ByChannel<i64>,
    pub total_actions: i64,
    pub costs_by_channel: ByChannel<f64>,
    pub total_cost: f64,
}

/// `comms_get_usage_dashboard` without an agent: the caller's org (O), or all / `orgId` (S).
pub async fn org_dashboard(
    app: &AppState,
    principal: &Principal,
    org_id: Option<String>,
    period: &str,
) -> Result<Value, ApiError> {
    let org = commands::read_scope(app, principal, org_id).await?;
    let window = Window::period(period, app.clock.now())?;
    let agents = directory::agents_of(&app.pool, org.as_deref()).await?;
    Ok(json!(usage_by_agent(app, &agents, org.as_deref(), None, period, window).await?))
}

/// provider × (1 + markup/100), half away from zero to 4 decimals, 0 if provider ≤ 0; in micros.
pub fn billed(provider_micros: i64, markup_percent: f64) -> i64 {
    if provider_micros <= 0 {
        return 0;
    }
    // The markup in millionths of a percent (its at most 6 decimals, docs/tools.md#input-formats-and-sanitizer,
    // exactly), then exact integer arithmetic: micros × 10^8.
    const SCALE: i128 = 100_000_000;
    let markup = (markup_percent * 1_000_000.0).round() as i128;
    let exact = i128::from(provider_micros) * (SCALE + markup);
    let unit = 100 * SCALE; // 0.0001 dollars = 100 micros, in the same scale
    let rounded = (exact + unit / 2) / unit * unit;
    (rounded / SCALE) as i64
}

fn markup_of(app: &AppState, agent: &AgentView) -> f64 {
    agent.markup_percent.unwrap_or(app.config.billing_markup_percent)
}

/// `comms_get_billing_summary` for one agent.
pub async fn agent_billing(app: &AppState, agent: &AgentView, period: &str) -> Result<Value, ApiError> {
    let rows = sums(app, Some(&agent.agent_id), None, Window::period(period, app.clock.now())?).await?;
    let (_, costs, _, provider) = by_channel(&rows, &agent.agent_id);
    let markup = markup_of(app, agent);
    let billing_email = directory::limits::billing_email(&app.pool, app.store.keystore(), &agent.agent_id).await?;
    Ok(json!({
        "agentId": agent.agent_id,
        "period": period,
        "providerCost": to_dollars(provider),
        "billingCost": to_dollars(billed(provider, markup)),
        "markupPercent": markup,
        "byChannel": costs,
        "tier": agent.tier.as_str(),
        "billingConfig": {
            "tier": agent.tier.as_str(),
            "markupPercent": agent.markup_percent,
            "billingEmail": billing_email,
        },
    }))
}

/// `comms_get_billing_summary` without an agent (O: its org; S: everything).
pub async fn org_billing(app: &AppState, principal: &Principal, period: &str) -> Result<Value, ApiError> {
    let org = match principal.role() {
        Role::SuperAdmin => None,
        _ => Some(commands::home_org(principal, None)?),
    };
    let rows = sums(app, None, org.as_deref(), Window::period(period, app.clock.now())?).await?;
    let (mut provider_total, mut billed_total) = (0, 0);
    let mut listed = Vec::new();
    for agent in directory::agents_of(&app.pool, org.as_deref()).await? {
        let (_, _, _, provider) = by_channel(&rows, &agent.agent_id);
        let markup = markup_of(app, &agent);
        let bill = billed(provider, markup);
        provider_total += provider;
        billed_total += bill;
        listed.push(json!({"agentId": agent.agent_id, "providerCost": to_dollars(provider), "billingCost": to_dollars(bill), "markupPercent": markup}));
    }
    Ok(json!({
        "period": period,
        "globalMarkupPercent": app.config.billing_markup_percent,
        "totals": {"providerCost": to_dollars(provider_total), "billingCost": to_dollars(billed_total), "revenue": to_dollars(billed_total - provider_total)},
        "agents": listed,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn billing_rounds_half_away_from_zero_to_four_decimals() {
        assert_eq!(billed(7_900, 0.0), 7_900);
        assert_eq!(billed(7_900, 10.0), 8_700); // 0.00869 → 0.0087
        assert_eq!(billed(7_950, 0.0), 8_000); // 0.00795 → 0.0080 (half away from zero)
        assert_eq!(billed(0, 50.0), 0);
        assert_eq!(billed(-5, 50.0), 0);
        assert_eq!(billed(1_000_000, 33.33), 1_333_300);
        // Markups below a hundredth of a percent count: 10 × 1.00004 = 10.0004.
        assert_eq!(billed(10_000_000, 0.004), 10_000_400);
        // 3 × 1.33333333 = 3.99999999 → 4.0000.
        assert_eq!(billed(3_000_000, 33.333333), 4_000_000);
        assert_eq!(billed(3_000_000, 500.0), 18_000_000);
    }
}

//! The admin API's views (docs/admin-api.md): a contact's consent records and an agent's limits — now,
//! or as they stood at `as_of` — and actions and spend per agent. Org tokens see their own org;
//! the super-admin may name one (`orgId`); an `agentId` of another org is refused by Z2.
//!
//! `asOf` in a reply is the instant the view describes: the `as_of` asked for, else the service
//! clock's now when the view was read.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use commguard_domain::contact::CONSENT_CHANNELS;
use schemars::JsonSchema;
use serde::Serialize;

use super::admin::Admin;
use super::openapi::{ApiRouter, Body, Doc, AS_OF, CURSOR, LIMIT, ORG};
use super::params::Params;
use crate::auth::Role;
use crate::contacts;
use crate::contacts::dnc_org;
use crate::directory::commands::{addressable_agent, read_scope};
use crate::directory::limits::{LimitsReply, LimitsState};
use crate::directory::{self as dir};
use crate::error::ApiError;
use crate::outbound::usage::{self, Window};
use crate::state::AppState;
use crate::store::rfc3339;
use crate::validate::invalid;

pub fn routes() -> ApiRouter {
    let doc = |who, summary, query| Doc { who, summary, query, body: Body::None };
    ApiRouter::new()
        .get(
            "/admin/api/consent",
            consent,
            doc(
                "O S",
                "Consent records of a contact and its DNC state, now or as of an instant",
                &[
                    ("contact", true, "string", "E.164 number or email"),
                    ("agentId", false, "string", ""),
                    ("channel", false, "string", "sms | voice | email | whatsapp | recording"),
                    ORG,
                    AS_OF,
                    CURSOR,
                    LIMIT,
                ],
            ),
        )
        .get(
            "/admin/api/limits",
            limits,
            doc(
                "O S",
                "An agent's tier, overrides, effective limits and org caps, now or as of an instant",
                &[("agentId", true, "string", ""), AS_OF],
            ),
        )
        .get(
            "/admin/api/usage",
            usage_view,
            doc(
                "O S",
                "Actions and spend per agent over a period or from/to",
                &[
                    ("agentId", false, "string", "one agent (else every agent in scope)"),
                    ORG,
                    ("period", false, "string", "today | week | month | all (today; all when from or to is given)"),
                    ("from", false, "string", "RFC 3339, taken down to its UTC hour"),
                    ("to", false, "string", "RFC 3339, exclusive"),
                ],
            ),
        )
}

/// `GET /admin/api/consent?contact&agentId&channel&orgId&as_of&cursor&limit`.
async fn consent(
    State(app): State<AppState>,
    admin: Admin,
    params: Params,
) -> Result<Json<contacts::ConsentReply>, ApiError> {
    let raw = params.get("contact").ok_or_else(|| invalid("contact", "is required"))?;
    let address = contacts::address("contact", raw)?;
    let channel = params.choice("channel", &CONSENT_CHANNELS)?;
    let agent_id = params.id("agentId")?;
    let as_of = params.time("as_of")?;
    let page = params.page()?;
    let org = match &agent_id {
        Some(agent_id) => Some(addressable_agent(&app, &admin.principal, agent_id).await?.org_id),
        // The orgs a consent query reads: O its own; S the one it names, else every org.
        None => match (admin.principal.role(), params.id("orgId")?) {
            (Role::SuperAdmin, None) => None,
            (_, requested) => Some(dnc_org(&app, &admin.principal, requested).await?),
        },
    };
    contacts::consent_records(&app, org.as_deref(), &address, agent_id.as_deref(), channel.as_deref(), as_of, page)
        .await
        .map(Json)
}

/// `GET /admin/api/limits?agentId&as_of` → `{agentId,asOf,tier,overrides,effective,orgCaps}`.
async fn limits(State(app): State<AppState>, admin: Admin, params: Params) -> Result<Json<LimitsReply>, ApiError> {
    let agent_id = params.id("agentId")?.ok_or_else(|| invalid("agentId", "is required"))?;
    let as_of = params.time("as_of")?;
    let agent = addressable_agent(&app, &admin.principal, &agent_id).await?;
    let (state, at) = match as_of {
        None => {
            let org = dir::org(&app.pool, &agent.org_id).await?;
            (LimitsState::live(&agent, org.as_ref()), app.clock.now())
        }
        Some(at) => {
            let state = LimitsState::at(&app.pool, &agent_id, &agent.org_id, at).await?.ok_or_else(|| {
                ApiError::not_found(format!("Agent \"{agent_id}\" had not been provisioned at {}", rfc3339(at)))
            })?;
            (state, at)
        }
    };
    Ok(Json(state.view(&app.config, &agent_id, at)))
}

const PERIODS: [&str; 4] = ["today", "week", "month", "all"];

/// `GET /admin/api/usage?agentId&orgId&period&from&to`: actions and spend per agent. `period`
/// (today | week | month | all, as `comms_get_usage_dashboard` reads them) and `from`/`to` narrow
/// each other; without `from` and `to` the period is `today`, with them `all`. The usage
/// projection counts per UTC hour, so `from` is taken down to its hour (the reply says so) and
/// an hour counts when it starts before `to`.
/// `GET /admin/api/usage`: actions and spend per agent, over the window asked.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct UsageView {
    #[serde(flatten)]
    usage: usage::UsageByAgent,
    from: Option<String>,
    to: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    agent_id: Option<String>,
}

async fn usage_view(State(app): State<AppState>, admin: Admin, params: Params) -> Result<Json<UsageView>, ApiError> {
    let (from, to) = (params.time("from")?, params.time("to")?);
    if let (Some(from), Some(to)) = (from, to) {
        if from > to {
            return Err(invalid("from", "must not be after to"));
        }
    }
    let default = if from.is_none() && to.is_none() { "today" } else { "all" };
    let period = params.choice("period", &PERIODS)?.unwrap_or_else(|| default.to_string());
    let window = narrowed(Window::period(&period, app.clock.now())?, from, to);
    let agent_id = params.id("agentId")?;
    let (agents, org) = match &agent_id {
        Some(agent_id) => {
            let agent = addressable_agent(&app, &admin.principal, agent_id).await?;
            let org = agent.org_id.clone();
            (vec![agent], Some(org))
        }
        None => {
            let org = read_scope(&app, &admin.principal, params.id("orgId")?).await?;
            (dir::agents_of(&app.pool, org.as_deref()).await?, org)
        }
    };
    let usage = usage::usage_by_agent(&app, &agents, org.as_deref(), agent_id.as_deref(), &period, window).await?;
    Ok(Json(UsageView { usage, from: window.from.map(rfc3339), to: window.to.map(rfc3339), agent_id }))
}

/// The period's window narrowed by `from` and `to`; the start is taken down to its UTC hour.
fn narrowed(period: Window, from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> Window {
    let start = match (period.from, from) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let hour = TimeDelta::hours(1);
    Window { from: start.map(|t| t.duration_trunc(hour).unwrap_or(t)), to }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn from_and_to_narrow_the_period_and_start_on_the_hour() {
        let period = Window { from: Some(at("2026-12-01T00:00:00Z")), to: None };
        let w = narrowed(period, Some(at("2026-12-01T10:30:00Z")), Some(at("2026-12-01T12:00:00Z")));
        assert_eq!(w, Window { from: Some(at("2026-12-01T10:00:00Z")), to: Some(at("2026-12-01T12:00:00Z")) });
        let w = narrowed(period, Some(at("2026-11-01T00:00:00Z")), None);
        assert_eq!(w.from, Some(at("2026-12-01T00:00:00Z")));
        assert_eq!(narrowed(Window::default(), None, None), Window::default());
    }
}

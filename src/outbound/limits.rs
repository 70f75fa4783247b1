//! Tool limits (CONTRACT §9): effective limits per agent and the atomic reservation of one
//! action. The reservation is one call of `reserve_action` (migration 0006), which serializes on
//! the agent (and on a capped org) inside Postgres, so N instances admit exactly the limit.

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::config::Config;
use crate::error::{ApiError, ErrorCode};

/// The five per-agent limits; `None` = unlimited. Spend in micro-dollars.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub per_minute: Option<i64>,
    pub per_hour: Option<i64>,
    pub per_day: Option<i64>,
    pub spend_day: Option<i64>,
    pub spend_month: Option<i64>,
}

impl Limits {
    /// The agent's effective limits (tier, then overrides; CONTRACT §9.2).
    pub fn of(agent: &crate::directory::AgentView, config: &Config) -> Self {
        let l = agent.effective_limits(config);
        Self {
            per_minute: Some(l.per_minute),
            per_hour: Some(l.per_hour),
            per_day: Some(l.per_day),
            spend_day: Some(l.spend_day),
            spend_month: Some(l.spend_month),
        }
    }

    /// No limits: the super-admin's and demo actions are counted but never refused.
    pub fn unlimited() -> Self {
        Self { per_minute: None, per_hour: None, per_day: None, spend_day: None, spend_month: None }
    }
}

/// An org's spend caps (`null` = unlimited).
#[derive(Clone, Copy, Debug, Default)]
pub struct OrgCaps {
    pub spend_day: Option<i64>,
    pub spend_month: Option<i64>,
}

/// A held slot: confirmed by leaving it, undone by `release`.
#[derive(Clone, Debug)]
pub struct Reservation {
    pub id: Uuid,
    pub agent_id: String,
    pub org_id: String,
    pub at: DateTime<Utc>,
    pub cost: i64,
    /// The blind index of the number a voice action went to (contact frequency).
    pub contact: Option<String>,
}

/// A voice action's recipient (blind index) and the agent's daily maximum to one number.
#[derive(Clone, Debug)]
pub struct Contact {
    pub reference: String,
    pub max_per_day: Option<i64>,
}

/// The refusal of a limit: which, how far, until when.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exceeded {
    pub limit_type: String,
    pub current: i64,
    pub max: i64,
    pub reset_at: DateTime<Utc>,
}

impl Exceeded {
    fn reset_description(&self) -> &'static str {
        match self.limit_type.as_str() {
            "per-minute" => "in up to 60 seconds",
            "per-hour" => "in up to 60 minutes",
            "monthly-spend" | "org_spend_month" => "at the start of next month",
            _ => "at midnight UTC",
        }
    }

    fn is_spend(&self) -> bool {
        self.limit_type.contains("spend")
    }

    /// The §7 refusal: `Rate limit exceeded: <limitType> (<current>/<max>). Resets <when>.`
    pub fn to_error(&self) -> ApiError {
        let (current, max) = if self.is_spend() {
            (
                serde_json::json!(crate::money::to_dollars(self.current)),
                serde_json::json!(crate::money::to_dollars(self.max)),
            )
        } else {
            (serde_json::json!(self.current), serde_json::json!(self.max))
        };
        ApiError::new(
            ErrorCode::RateLimited,
            format!("Rate limit exceeded: {} ({current}/{max}). Resets {}.", self.limit_type, self.reset_description()),
        )
        .with("limitType", self.limit_type.clone())
        .with("current", current)
        .with("max", max)
        .with("resetAt", self.reset_at.to_rfc3339_opts(SecondsFormat::Millis, true))
        .with("resetDescription", self.reset_description())
    }
}

/// What one reservation asks for.
pub struct Request<'a> {
    pub agent_id: &'a str,
    pub org_id: &'a str,
    pub now: DateTime<Utc>,
    /// Estimated cost, micro-dollars.
    pub cost: i64,
    pub limits: Limits,
    pub caps: OrgCaps,
    pub contact: Option<Contact>,
}

/// Reserves one action, or names the first limit that refuses it.
pub async fn reserve(pool: &PgPool, request: Request<'_>) -> Result<Result<Reservation, Exceeded>, ApiError> {
    let Request { agent_id, org_id, now, cost, limits, caps, contact } = request;
    let id = Uuid::new_v4();
    let row: (Option<String>, Option<i64>, Option<i64>, Option<DateTime<Utc>>) =
        sqlx::query_as("SELECT * FROM reserve_action($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)")
            .bind(id)
            .bind(agent_id)
            .bind(org_id)
            .bind(now)
            .bind(cost)
            .bind(limits.per_minute)
            .bind(limits.per_hour)
            .bind(limits.per_day)
            .bind(limits.spend_day)
            .bind(limits.spend_month)
            .bind(caps.spend_day)
            .bind(caps.spend_month)
            .bind(contact.as_ref().map(|c| c.reference.as_str()))
            .bind(contact.as_ref().and_then(|c| c.max_per_day))
            .fetch_one(pool)
            .await
            .map_err(ApiError::internal)?;
    Ok(match row {
        (None, ..) => Ok(Reservation {
            id,
            agent_id: agent_id.into(),
            org_id: org_id.into(),
            at: now,
            cost,
            contact: contact.map(|c| c.reference),
        }),
        (Some(limit_type), current, max, reset_at) => Err(Exceeded {
            limit_type,
            current: current.unwrap_or(0),
            max: max.unwrap_or(0),
            reset_at: reset_at.unwrap_or(now),
        }),
    })
}

/// Gives a reservation back (the provider failed: failed calls consume nothing).
pub async fn release(pool: &PgPool, r: &Reservation) -> Result<(), ApiError> {
    sqlx::query("SELECT release_action($1, $2, $3, $4, $5, $6)")
        .bind(r.id)
        .bind(&r.agent_id)
        .bind(&r.org_id)
        .bind(r.at)
        .bind(r.cost)
        .bind(&r.contact)
        .execute(pool)
        .await
        .map_err(ApiError::internal)?;
    Ok(())
}

/// Replaces the estimated cost with the provider's actual one.
pub async fn settle(pool: &PgPool, r: &Reservation, actual: i64) -> Result<(), ApiError> {
    add_cost(pool, &r.agent_id, &r.org_id, r.at, actual - r.cost).await
}

/// Adds `cost` (micro-dollars, may be negative) to the spend of the agent and its org in the day
/// and month of `at` — a settled estimate, or a call's final price from its status callback.
pub async fn add_cost(
    pool: &PgPool,
    agent_id: &str,
    org_id: &str,
    at: DateTime<Utc>,
    cost: i64,
) -> Result<(), ApiError> {
    if cost == 0 {
        return Ok(());
    }
    sqlx::query("SELECT settle_action_cost($1, $2, $3, $4)")
        .bind(agent_id)
        .bind(org_id)
        .bind(at)
        .bind(cost)
        .execute(pool)
        .await
        .map_err(ApiError::internal)?;
    Ok(())
}

/// Forgets actions older than the longest rolling window (a scheduled job).
pub async fn prune_recent(pool: &PgPool, now: DateTime<Utc>) -> Result<u64, sqlx::Error> {
    let done = sqlx::query("DELETE FROM recent_actions WHERE at < $1 - interval '3600 seconds'")
        .bind(now)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

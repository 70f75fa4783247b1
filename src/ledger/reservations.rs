//! Tool limits (docs/limits.md): effective limits per agent and the atomic reservation of one
//! action. Reservations are decided in Postgres (`reserve_actions`, migration 0013) under the
//! agent's and org's advisory locks, so N instances admit exactly the limit; the `Reserver`
//! sends the reservations queued meanwhile as one batch, one transaction.

use chrono::{DateTime, SecondsFormat, Utc};
use sqlx::PgPool;
use tokio::sync::oneshot;
use uuid::Uuid;

use commguard_domain::refusal::{Check, LimitType};

use crate::error::{ApiError, ErrorCode};
use crate::store::gather::{self, Gather};
use crate::store::kept::KeptPool;
use crate::store::{CommandContext, Reserve, Store};

/// The five per-agent limits a reservation checks (the domain's one declaration of them);
/// `None` = unlimited. Spend in micro-dollars.
pub type Limits = commguard_domain::limits::Limits<Option<i64>>;

/// No limits: the super-admin's and demo actions are counted but never refused.
pub fn unlimited() -> Limits {
    Limits::default()
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
    pub limit_type: LimitType,
    pub current: i64,
    pub max: i64,
    pub reset_at: DateTime<Utc>,
}

impl Exceeded {
    fn reset_description(&self) -> &'static str {
        match self.limit_type {
            LimitType::PerMinute => "in up to 60 seconds",
            LimitType::PerHour => "in up to 60 minutes",
            LimitType::MonthlySpend | LimitType::OrgSpendMonth => "at the start of next month",
            LimitType::PerDay | LimitType::DailySpend | LimitType::OrgSpendDay | LimitType::ContactFrequency => {
                "at midnight UTC"
            }
        }
    }

    /// The docs/errors.md refusal: `Rate limit exceeded: <limitType> (<current>/<max>). Resets <when>.`
    pub fn to_error(&self) -> ApiError {
        use crate::money::{dollars_text, to_dollars};
        let (current, max, shown) = if self.limit_type.is_spend() {
            (
                serde_json::json!(to_dollars(self.current)),
                serde_json::json!(to_dollars(self.max)),
                (dollars_text(self.current), dollars_text(self.max)),
            )
        } else {
            (
                serde_json::json!(self.current),
                serde_json::json!(self.max),
                (self.current.to_string(), self.max.to_string()),
            )
        };
        let mut refusal = ApiError::new(
            ErrorCode::RateLimited,
            format!(
                "Rate limit exceeded: {} ({}/{}). Resets {}.",
                self.limit_type.as_str(),
                shown.0,
                shown.1,
                self.reset_description()
            ),
        )
        .at(Check::Limits);
        refusal.limit = Some(self.limit_type);
        refusal
            .with("current", current)
            .with("max", max)
            .with("resetAt", self.reset_at.to_rfc3339_opts(SecondsFormat::Millis, true))
            .with("resetDescription", self.reset_description())
    }
}

/// What one reservation asks for.
pub struct Request<'a> {
    /// The reservation's id: the action's (messageId, callId) and its intent's.
    pub id: Uuid,
    pub agent_id: &'a str,
    pub org_id: &'a str,
    pub now: DateTime<Utc>,
    /// Estimated cost, micro-dollars.
    pub cost: i64,
    pub limits: Limits,
    pub caps: OrgCaps,
    pub contact: Option<Contact>,
    /// The sealed intent stored with the reservation, and the instance that owns it
    /// (`ledger::intents`).
    pub intent: Option<(Uuid, serde_json::Value)>,
}

type Outcome = Result<Result<Reservation, Exceeded>, ApiError>;

struct Job {
    reservation: Reservation,
    request: serde_json::Value,
    reply: oneshot::Sender<Outcome>,
}

/// Reservations per statement at most.
const MAX_BATCH: usize = 256;

/// Group reservation: every reservation queued while one batch is in Postgres goes in the next
/// batch — one `reserve_actions` call, one transaction, one commit. The agent's lock is held
/// through a commit, so one reservation per commit capped an agent at the disk's flush rate;
/// a batch decides its reservations in queue order exactly as if one after the other.
#[derive(Clone)]
pub struct Reserver {
    /// A reservation that finds none other under way is decided on its caller's task.
    gather: Gather<Job>,
    pool: KeptPool,
}

impl Reserver {
    /// Starts the batching task; it ends when the last `Reserver` is dropped.
    pub fn start(pool: KeptPool) -> Self {
        let (batcher, mut jobs) = Gather::new();
        let reserver = Self { gather: batcher, pool: pool.clone() };
        tokio::spawn(async move {
            while let Some(batch) = gather::next_batch(&mut jobs, MAX_BATCH).await {
                reserve_batch(&pool, batch).await;
            }
        });
        reserver
    }

    /// Reserves one action, or names the first limit that refuses it.
    pub async fn reserve(&self, request: Request<'_>) -> Outcome {
        let (reservation, json) = request.into_parts();
        let (reply, answer) = oneshot::channel();
        let stopped = || ApiError::new(ErrorCode::Unavailable, "The limit store is shutting down");
        // Nothing to gather: decided here, a batch of one, with no hand-over and back.
        let alone = async |job| reserve_batch(&self.pool, vec![job]).await;
        self.gather.submit(Job { reservation, request: json, reply }, answer, alone).await.ok_or_else(stopped)?
    }
}

impl Request<'_> {
    /// The reservation this request makes, and the request as `reserve_actions` reads it.
    fn into_parts(self) -> (Reservation, serde_json::Value) {
        let Request { id, agent_id, org_id, now, cost, limits, caps, contact, intent } = self;
        let mut json = serde_json::json!({
            "id": id, "agent": agent_id, "org": org_id, "now": now, "cost": cost,
            "perMinute": limits.per_minute, "perHour": limits.per_hour, "perDay": limits.per_day,
            "spendDay": limits.spend_day, "spendMonth": limits.spend_month,
            "orgSpendDay": caps.spend_day, "orgSpendMonth": caps.spend_month,
            "contact": contact.as_ref().map(|c| c.reference.as_str()),
            "contactMax": contact.as_ref().and_then(|c| c.max_per_day),
        });
        if let Some((owner, intent)) = intent {
            json["owner"] = serde_json::json!(owner);
            json["intent"] = intent;
        }
        let reservation = Reservation {
            id,
            agent_id: agent_id.into(),
            org_id: org_id.into(),
            at: now,
            cost,
            contact: contact.map(|c| c.reference),
        };
        (reservation, json)
    }
}

/// Reserves `request` (which carries no intent) and records `events` on the agent's stream in
/// one statement (`Store::record_reserving`, migration 0037): both are stored, or neither, and
/// a refused reservation stores nothing. For an action whose outcome is known before it is
/// reserved (the mock provider's), so no intent has to survive a crash between the two.
pub async fn record_reserved<E: cqrs_es::DomainEvent>(
    store: &Store,
    events: &[E],
    context: &CommandContext,
    request: Request<'_>,
) -> Result<Result<Reservation, Exceeded>, ApiError> {
    debug_assert!(request.intent.is_none(), "a reservation recorded with its event has no intent");
    let (reservation, json) = request.into_parts();
    let reserves = Reserve { id: reservation.id, request: std::sync::Arc::new(json) };
    match store.record_reserving("agent", &reservation.agent_id, events, context, reserves).await {
        Ok(_) => Ok(Ok(reservation)),
        Err(e) => match crate::store::refused(&e).and_then(|refusals| refusals.iter().find(|r| r.id == reservation.id))
        {
            Some(refusal) => {
                exceeded(&refusal.limit_type, refusal.current, refusal.max, refusal.reset_at, reservation.at).map(Err)
            }
            None => Err(ApiError::internal(e)),
        },
    }
}

/// The refusal `reserve_actions` answered: limit `name`, `current` of `max`, until `reset_at`
/// (`at`, the request's instant, if it gave none).
fn exceeded(
    name: &str,
    current: Option<i64>,
    max: Option<i64>,
    reset_at: Option<DateTime<Utc>>,
    at: DateTime<Utc>,
) -> Result<Exceeded, ApiError> {
    let limit_type = LimitType::parse(name)
        .ok_or_else(|| ApiError::internal(format!("reserve_actions refused by an unknown limit {name}")))?;
    Ok(Exceeded { limit_type, current: current.unwrap_or(0), max: max.unwrap_or(0), reset_at: reset_at.unwrap_or(at) })
}

/// One `reserve_actions` call for `batch`; every job gets its own answer.
async fn reserve_batch(pool: &KeptPool, mut batch: Vec<Job>) {
    let requests = serde_json::Value::Array(batch.iter_mut().map(|j| std::mem::take(&mut j.request)).collect());
    type Row = (i64, Option<String>, Option<i64>, Option<i64>, Option<DateTime<Utc>>);
    let rows: Result<Vec<Row>, sqlx::Error> = match pool.take().await {
        Ok(mut conn) => {
            let rows = sqlx::query_as("SELECT * FROM reserve_actions($1)").bind(&requests).fetch_all(conn.conn()).await;
            conn.ended(&rows);
            rows
        }
        Err(e) => Err(e),
    };
    match rows {
        Ok(rows) => {
            let mut outcomes: Vec<Option<Row>> = vec![None; batch.len()];
            for row in rows {
                if let Some(slot) = usize::try_from(row.0 - 1).ok().and_then(|i| outcomes.get_mut(i)) {
                    *slot = Some(row);
                }
            }
            for (job, row) in batch.into_iter().zip(outcomes) {
                let outcome = match row {
                    Some((_, None, ..)) => Ok(Ok(job.reservation)),
                    Some((_, Some(name), current, max, reset_at)) => {
                        exceeded(&name, current, max, reset_at, job.reservation.at).map(Err)
                    }
                    None => Err(ApiError::internal("reserve_actions returned no row for a request")),
                };
                let _ = job.reply.send(outcome);
            }
        }
        Err(e) => {
            // One log line for the whole batch (the outage log's when the database is down), and
            // one classified answer for each of its sends.
            let refusal = ApiError::internal(e);
            for job in batch {
                let _ = job.reply.send(Err(refusal.clone()));
            }
        }
    }
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

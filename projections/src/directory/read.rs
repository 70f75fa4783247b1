//! Reads of the directory tables (`orgs`, `agents`, `agent_limits`), as typed rows: an agent's
//! status, its org's mode, its tier, overrides and blocked channels are read once here, never
//! compared as text or parsed again by a caller.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use commguard_domain::agent::AgentStatus;
use commguard_domain::limits::{LimitSet, Overrides, Tier};
use commguard_domain::values::OrgMode;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgExecutor, Row};
use uuid::Uuid;

use crate::contact::{self, read::ContactState};
use crate::enum_column;

/// An agent as the agents projection holds it, with its limits (no `agent_limits` row: starter,
/// no overrides, the deployment's markup).
#[derive(Clone, Debug)]
pub struct AgentView {
    pub agent_id: String,
    pub org_id: String,
    pub display_name: String,
    pub agent_gender: String,
    pub country: String,
    pub status: AgentStatus,
    pub capabilities: Value,
    /// Its addresses by channel (`phone`, `email`, …).
    pub channels: Value,
    pub blocked_channels: BlockedChannels,
    /// The org's mode when the agent was provisioned.
    pub mode: OrgMode,
    pub provisioned_at: DateTime<Utc>,
    pub tier: Tier,
    pub overrides: Overrides,
    pub markup_percent: Option<f64>,
    /// Where the agent's channels live at the provider (Twilio's number sid).
    pub provider_refs: Value,
}

/// The channels an agent is blocked on (`*`: all of them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct BlockedChannels(pub Vec<String>);

impl BlockedChannels {
    pub fn blocks(&self, channel: &str) -> bool {
        self.0.iter().any(|c| c == "*" || c == channel)
    }
}

impl AgentView {
    pub fn is_active(&self) -> bool {
        self.status == AgentStatus::Active
    }

    /// Active and not blocked on `channel`: inbound messages to anything else are dropped.
    pub fn accepts(&self, channel: &str) -> bool {
        self.is_active() && !self.blocked_channels.blocks(channel)
    }

    /// The agent's own address on `channel` (`phone`, `email`).
    pub fn address(&self, channel: &str) -> Option<&str> {
        self.channels.get(channel).and_then(Value::as_str)
    }

    /// The five limits in force (docs/limits.md#tiers), `starter` being the deployment's starter tier.
    pub fn effective_limits(&self, starter: LimitSet) -> LimitSet {
        self.overrides.effective(self.tier.limits(starter))
    }
}

/// An org as the orgs projection holds it, with its count of active agents.
#[derive(Clone, Debug)]
pub struct OrgView {
    pub org_id: String,
    pub name: String,
    pub slug: String,
    pub mode: OrgMode,
    pub a2p_registered: bool,
    pub settings: Value,
    pub max_agents: i32,
    pub max_spend_per_day: Option<i64>,
    pub max_spend_per_month: Option<i64>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub agent_count: i64,
}

/// What a send reads of its agent's org: its mode and spend caps. Not an `OrgView`: that one counts
/// the org's active agents, which a send does not need and which grows with the org.
#[derive(Clone, Debug)]
pub struct OrgTerms {
    pub org_id: String,
    pub mode: OrgMode,
    pub max_spend_per_day: Option<i64>,
    pub max_spend_per_month: Option<i64>,
}

impl<'r> FromRow<'r, PgRow> for AgentView {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let blocked: Value = row.try_get("blocked_channels")?;
        let blocked = serde_json::from_value(blocked)
            .map_err(|e| sqlx::Error::ColumnDecode { index: "blocked_channels".into(), source: Box::new(e) })?;
        let tier: Option<String> = row.try_get("tier")?;
        let overrides: Option<Value> = row.try_get("overrides")?;
        Ok(Self {
            agent_id: row.try_get("agent_id")?,
            org_id: row.try_get("org_id")?,
            display_name: row.try_get("display_name")?,
            agent_gender: row.try_get("agent_gender")?,
            country: row.try_get("country")?,
            status: enum_column(row, "status")?,
            capabilities: row.try_get("capabilities")?,
            channels: row.try_get("channels")?,
            blocked_channels: BlockedChannels(blocked),
            mode: enum_column(row, "mode")?,
            provisioned_at: row.try_get("provisioned_at")?,
            tier: tier.as_deref().and_then(Tier::parse).unwrap_or_default(),
            overrides: overrides.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default(),
            markup_percent: row.try_get("markup_percent")?,
            provider_refs: row.try_get("provider_refs")?,
        })
    }
}

impl<'r> FromRow<'r, PgRow> for OrgView {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            org_id: row.try_get("org_id")?,
            name: row.try_get("name")?,
            slug: row.try_get("slug")?,
            mode: enum_column(row, "mode")?,
            a2p_registered: row.try_get("a2p_registered")?,
            settings: row.try_get("settings")?,
            max_agents: row.try_get("max_agents")?,
            max_spend_per_day: row.try_get("max_spend_per_day")?,
            max_spend_per_month: row.try_get("max_spend_per_month")?,
            created_at: row.try_get("created_at")?,
            updated_at: row.try_get("updated_at")?,
            agent_count: row.try_get("agent_count")?,
        })
    }
}

impl OrgTerms {
    /// The org columns of `agent_org_and_contact` (`o_…`), `None` when the org row is missing.
    fn from_send_read(row: &PgRow) -> Result<Option<Self>, sqlx::Error> {
        let Some(org_id) = row.try_get("o_org_id")? else { return Ok(None) };
        Ok(Some(Self {
            org_id,
            mode: enum_column(row, "o_mode")?,
            max_spend_per_day: row.try_get("o_max_spend_per_day")?,
            max_spend_per_month: row.try_get("o_max_spend_per_month")?,
        }))
    }
}

const ORG_COLUMNS: &str = "o.org_id, o.name, o.slug, o.mode, o.a2p_registered, o.settings, o.max_agents, \
    o.max_spend_per_day, o.max_spend_per_month, o.created_at, o.updated_at, \
    (SELECT COUNT(*) FROM agents a WHERE a.org_id = o.org_id AND a.status = 'active') AS agent_count";

const AGENT_COLUMNS: &str =
    "a.agent_id, a.org_id, a.display_name, a.agent_gender, a.country, a.status, a.capabilities, \
    a.channels, a.blocked_channels, a.mode, a.provisioned_at, l.tier, l.overrides, l.markup_percent, a.provider_refs";

/// A page position: the creation time and id of the last row of the previous page.
pub type After<'a> = Option<(DateTime<Utc>, &'a str)>;

pub async fn agent<'e>(db: impl PgExecutor<'e>, agent_id: &str) -> Result<Option<AgentView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents a LEFT JOIN agent_limits l USING (agent_id) WHERE a.agent_id = $1"
    ))
    .bind(agent_id)
    .fetch_optional(db)
    .await
}

static SEND_READ: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {AGENT_COLUMNS}, o.org_id AS o_org_id, o.mode AS o_mode, o.max_spend_per_day AS o_max_spend_per_day,
                o.max_spend_per_month AS o_max_spend_per_month, {}
           FROM agents a LEFT JOIN agent_limits l USING (agent_id) LEFT JOIN orgs o ON o.org_id = a.org_id
          WHERE a.agent_id = $1",
        contact::read::state_columns("a.org_id", "a.agent_id", "$2", "$3", "$4")
    )
});

/// What the send pipeline reads before it decides, in one statement: the agent, its org's terms
/// (`None` if the org row is missing), and the recipient `subject_ref` as the outbound checks see
/// it in the agent's org on `channel` (recording consent asked for when `recording`).
pub async fn agent_org_and_contact<'e>(
    db: impl PgExecutor<'e>,
    agent_id: &str,
    subject_ref: &str,
    channel: &str,
    recording: bool,
) -> Result<Option<(AgentView, Option<OrgTerms>, ContactState)>, sqlx::Error> {
    let row = sqlx::query(&SEND_READ)
        .bind(agent_id)
        .bind(subject_ref)
        .bind(channel)
        .bind(recording)
        .fetch_optional(db)
        .await?;
    let Some(row) = row else { return Ok(None) };
    Ok(Some((AgentView::from_row(&row)?, OrgTerms::from_send_read(&row)?, ContactState::from_columns(&row)?)))
}

static SEND_READS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT r.n, {AGENT_COLUMNS}, o.org_id AS o_org_id, o.mode AS o_mode,
                o.max_spend_per_day AS o_max_spend_per_day, o.max_spend_per_month AS o_max_spend_per_month, {}
           FROM jsonb_to_recordset($1) AS r(n bigint, agent text, subject text, channel text, recording boolean)
           JOIN agents a ON a.agent_id = r.agent
           LEFT JOIN agent_limits l USING (agent_id) LEFT JOIN orgs o ON o.org_id = a.org_id",
        contact::read::state_columns("a.org_id", "a.agent_id", "r.subject", "r.channel", "r.recording")
    )
});

/// One read of `agent_org_and_contact` for several sends, each (agent, recipient's blind index,
/// channel, whether recording consent is asked for): `answers[i]` is the answer to `reads[i]`,
/// `None` when no such agent. One statement, whose reads come as one `jsonb` value: as arrays, the
/// planner saw their lengths and planned the statement afresh on every call (34 µs of planning
/// per send), its plan for a known length looking cheaper than the one kept.
pub async fn agents_orgs_and_contacts<'e>(
    db: impl PgExecutor<'e>,
    reads: &[(&str, &str, &str, bool)],
) -> Result<Vec<Option<(AgentView, Option<OrgTerms>, ContactState)>>, sqlx::Error> {
    let listed: Vec<Value> = (1i64..)
        .zip(reads)
        .map(|(n, (agent, subject, channel, recording))| {
            serde_json::json!({"n": n, "agent": agent, "subject": subject, "channel": channel, "recording": recording})
        })
        .collect();
    let rows = sqlx::query(&SEND_READS).bind(sqlx::types::Json(&listed)).fetch_all(db).await?;
    let mut answers: Vec<Option<(AgentView, Option<OrgTerms>, ContactState)>> = vec![None; reads.len()];
    for row in rows {
        let n: i64 = row.try_get("n")?;
        let answer = (AgentView::from_row(&row)?, OrgTerms::from_send_read(&row)?, ContactState::from_columns(&row)?);
        if let Some(slot) = usize::try_from(n - 1).ok().and_then(|i| answers.get_mut(i)) {
            *slot = Some(answer);
        }
    }
    Ok(answers)
}

/// Every agent, or those of `org_id`, by provisioning time.
pub async fn agents_of<'e>(db: impl PgExecutor<'e>, org_id: Option<&str>) -> Result<Vec<AgentView>, sqlx::Error> {
    agents_after(db, org_id, None, i64::MAX).await
}

/// At most `limit` agents (all, or of `org_id`) after `after`, by provisioning time.
pub async fn agents_after<'e>(
    db: impl PgExecutor<'e>,
    org_id: Option<&str>,
    after: After<'_>,
    limit: i64,
) -> Result<Vec<AgentView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {AGENT_COLUMNS} FROM agents a LEFT JOIN agent_limits l USING (agent_id)
         WHERE ($1::text IS NULL OR a.org_id = $1)
           AND ($2::timestamptz IS NULL OR (a.provisioned_at, a.agent_id) > ($2, $3::text))
         ORDER BY a.provisioned_at, a.agent_id LIMIT $4"
    ))
    .bind(org_id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// At most `limit` orgs (all, or only `org_id`) after `after`, by creation time.
pub async fn orgs_after<'e>(
    db: impl PgExecutor<'e>,
    org_id: Option<&str>,
    after: After<'_>,
    limit: i64,
) -> Result<Vec<OrgView>, sqlx::Error> {
    sqlx::query_as(&format!(
        "SELECT {ORG_COLUMNS} FROM orgs o
         WHERE ($1::text IS NULL OR o.org_id = $1)
           AND ($2::timestamptz IS NULL OR (o.created_at, o.org_id) > ($2, $3::text))
         ORDER BY o.created_at, o.org_id LIMIT $4"
    ))
    .bind(org_id)
    .bind(after.map(|a| a.0))
    .bind(after.map(|a| a.1))
    .bind(limit)
    .fetch_all(db)
    .await
}

pub async fn org<'e>(db: impl PgExecutor<'e>, org_id: &str) -> Result<Option<OrgView>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {ORG_COLUMNS} FROM orgs o WHERE o.org_id = $1"))
        .bind(org_id)
        .fetch_optional(db)
        .await
}

/// The orgs among `org_ids` (those that exist).
pub async fn orgs_by_id<'e>(db: impl PgExecutor<'e>, org_ids: &[String]) -> Result<Vec<OrgView>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {ORG_COLUMNS} FROM orgs o WHERE o.org_id = ANY($1)"))
        .bind(org_ids)
        .fetch_all(db)
        .await
}

/// Every org, by creation time.
pub async fn orgs<'e>(db: impl PgExecutor<'e>) -> Result<Vec<OrgView>, sqlx::Error> {
    sqlx::query_as(&format!("SELECT {ORG_COLUMNS} FROM orgs o ORDER BY o.created_at, o.org_id")).fetch_all(db).await
}

/// The tier and overrides of those of `agent_ids` that have an `agent_limits` row.
pub async fn limits_of<'e>(
    db: impl PgExecutor<'e>,
    agent_ids: &[&str],
) -> Result<Vec<(String, Tier, Overrides)>, sqlx::Error> {
    let rows: Vec<(String, Option<String>, Option<Value>)> =
        sqlx::query_as("SELECT agent_id, tier, overrides FROM agent_limits WHERE agent_id = ANY($1)")
            .bind(agent_ids)
            .fetch_all(db)
            .await?;
    Ok(rows
        .into_iter()
        .map(|(agent, tier, overrides)| {
            let tier = tier.as_deref().and_then(Tier::parse).unwrap_or_default();
            (agent, tier, overrides.and_then(|v| serde_json::from_value(v).ok()).unwrap_or_default())
        })
        .collect())
}

/// Whether an org already has `slug`.
pub async fn slug_taken<'e>(db: impl PgExecutor<'e>, slug: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM orgs WHERE slug = $1)").bind(slug).fetch_one(db).await
}

/// The id of the org named by id or, failing that, by slug.
pub async fn org_id_or_slug<'e>(db: impl PgExecutor<'e>, wanted: &str) -> Result<Option<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT org_id FROM orgs WHERE org_id = $1 OR slug = $1 ORDER BY org_id = $1 DESC LIMIT 1")
        .bind(wanted)
        .fetch_optional(db)
        .await
}

/// Whose tokens: an agent's or an org's.
#[derive(Clone, Copy, Debug)]
pub enum TokenOwner<'a> {
    Agent(&'a str),
    Org(&'a str),
}

/// The ids of the owner's tokens not revoked.
pub async fn active_token_ids<'e>(db: impl PgExecutor<'e>, owner: TokenOwner<'_>) -> Result<Vec<Uuid>, sqlx::Error> {
    let (sql, id) = match owner {
        TokenOwner::Agent(id) => {
            ("SELECT token_id FROM tokens WHERE kind = 'agent' AND agent_id = $1 AND revoked_at IS NULL", id)
        }
        TokenOwner::Org(id) => {
            ("SELECT token_id FROM tokens WHERE kind = 'org' AND org_id = $1 AND revoked_at IS NULL", id)
        }
    };
    sqlx::query_scalar(sql).bind(id).fetch_all(db).await
}

/// An agent token not revoked, with when it was last used.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct TokenRow {
    pub token_id: Uuid,
    pub label: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

/// The agent's tokens not revoked, oldest first.
pub async fn agent_tokens<'e>(db: impl PgExecutor<'e>, agent_id: &str) -> Result<Vec<TokenRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT t.token_id, t.label, t.created_at, u.last_used_at FROM tokens t
         LEFT JOIN token_last_used u USING (token_id)
         WHERE t.kind = 'agent' AND t.agent_id = $1 AND t.revoked_at IS NULL ORDER BY t.created_at",
    )
    .bind(agent_id)
    .fetch_all(db)
    .await
}

/// A bearer token as identity resolution reads it.
#[derive(Clone, Debug)]
pub struct TokenIdentity {
    pub token_id: Uuid,
    /// `agent` or `org`.
    pub agent_token: bool,
    pub agent_id: Option<String>,
    pub org_id: String,
    pub revoked: bool,
}

/// The token whose SHA-256 is `hash`.
pub async fn token_by_hash<'e>(db: impl PgExecutor<'e>, hash: &str) -> Result<Option<TokenIdentity>, sqlx::Error> {
    let row: Option<(Uuid, String, Option<String>, String, bool)> = sqlx::query_as(
        "SELECT token_id, kind, agent_id, org_id, revoked_at IS NOT NULL FROM tokens WHERE token_hash = $1",
    )
    .bind(hash)
    .fetch_optional(db)
    .await?;
    Ok(row.map(|(token_id, kind, agent_id, org_id, revoked)| TokenIdentity {
        token_id,
        agent_token: kind == "agent",
        agent_id,
        org_id,
        revoked,
    }))
}

/// Whether token `token_id` is revoked (`None`: no such token).
pub async fn token_revoked<'e>(db: impl PgExecutor<'e>, token_id: Uuid) -> Result<Option<bool>, sqlx::Error> {
    sqlx::query_scalar("SELECT revoked_at IS NOT NULL FROM tokens WHERE token_id = $1")
        .bind(token_id)
        .fetch_optional(db)
        .await
}

/// The mode of org `org_id` (`None`: no such org).
pub async fn org_mode<'e>(db: impl PgExecutor<'e>, org_id: &str) -> Result<Option<OrgMode>, sqlx::Error> {
    let mode: Option<String> =
        sqlx::query_scalar("SELECT mode FROM orgs WHERE org_id = $1").bind(org_id).fetch_optional(db).await?;
    mode.map(|m| {
        serde_json::from_value(Value::String(m))
            .map_err(|e| sqlx::Error::ColumnDecode { index: "mode".into(), source: Box::new(e) })
    })
    .transpose()
}

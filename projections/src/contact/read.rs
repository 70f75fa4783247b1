//! Reads of the contact tables (`consents`, `dnc_entries`, `calls`), as typed rows. Contacts are
//! addressed by their subject reference (the blind index of the address), never the address.

use chrono::{DateTime, Utc};
use commguard_domain::contact::ConsentType;
use serde_json::Value;
use sqlx::postgres::PgRow;
use sqlx::{FromRow, PgExecutor, Row};

use crate::enum_column;
use uuid::Uuid;

/// Whether a consent record is in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ConsentStatus {
    Granted,
    Revoked,
}

impl ConsentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Granted => "granted",
            Self::Revoked => "revoked",
        }
    }
}

/// One consent record, as the consent projection holds it.
#[derive(Clone, Debug)]
pub struct ConsentRow {
    pub agent_id: String,
    pub channel: String,
    pub consent_id: Uuid,
    pub consent_type: ConsentType,
    pub status: ConsentStatus,
    pub granted_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub grant_event_id: Uuid,
    /// The grant's personal fields (`source`, `notes`) as the event sealed them.
    pub sealed: Value,
}

/// The sort key of consent records (and of their pages): agent, then channel, byte order.
pub type ConsentKey = (String, String);

impl ConsentRow {
    pub fn key(&self) -> ConsentKey {
        (self.agent_id.clone(), self.channel.clone())
    }

    pub fn active(&self) -> bool {
        self.status == ConsentStatus::Granted
    }
}

impl<'r> FromRow<'r, PgRow> for ConsentRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(Self {
            agent_id: row.try_get("agent_id")?,
            channel: row.try_get("channel")?,
            consent_id: row.try_get("consent_id")?,
            consent_type: enum_column(row, "consent_type")?,
            status: enum_column(row, "status")?,
            granted_at: row.try_get("granted_at")?,
            revoked_at: row.try_get("revoked_at")?,
            grant_event_id: row.try_get("grant_event_id")?,
            sealed: row.try_get("sealed")?,
        })
    }
}

/// Which consent records of a contact to read.
pub struct ConsentQuery<'a> {
    pub org_id: &'a str,
    pub subject_ref: &'a str,
    pub agent_id: Option<&'a str>,
    pub channel: Option<&'a str>,
}

/// The contact's records after `after` in key order, at most `limit`.
pub async fn consents<'e>(
    db: impl PgExecutor<'e>,
    query: &ConsentQuery<'_>,
    after: Option<&ConsentKey>,
    limit: i64,
) -> Result<Vec<ConsentRow>, sqlx::Error> {
    sqlx::query_as(
        r#"SELECT agent_id, channel, consent_id, consent_type, status, granted_at, revoked_at, grant_event_id, sealed
           FROM consents
          WHERE org_id = $1 AND subject_ref = $2 AND ($3::text IS NULL OR agent_id = $3)
            AND ($4::text IS NULL OR channel = $4)
            AND ($5::text IS NULL OR (agent_id COLLATE "C", channel COLLATE "C") > ($5::text, $6::text))
          ORDER BY agent_id COLLATE "C", channel COLLATE "C" LIMIT $7"#,
    )
    .bind(query.org_id)
    .bind(query.subject_ref)
    .bind(query.agent_id)
    .bind(query.channel)
    .bind(after.map(|k| k.0.as_str()))
    .bind(after.map(|k| k.1.as_str()))
    .bind(limit)
    .fetch_all(db)
    .await
}

/// The orgs that hold a consent record or a DNC entry of the contact `subject_ref`, in order
/// (migration 0020's indexes by blind index).
pub async fn orgs_about<'e>(db: impl PgExecutor<'e>, subject_ref: &str) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT org_id FROM consents WHERE subject_ref = $1
          UNION SELECT org_id FROM dnc_entries WHERE subject_ref = $1 ORDER BY 1",
    )
    .bind(subject_ref)
    .fetch_all(db)
    .await
}

/// Whether the contact is on the org's DNC list.
pub async fn on_dnc<'e>(db: impl PgExecutor<'e>, org_id: &str, subject_ref: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM dnc_entries WHERE org_id = $1 AND subject_ref = $2)")
        .bind(org_id)
        .bind(subject_ref)
        .fetch_one(db)
        .await
}

/// The contact's DNC entry `preferred` if it exists, else its first entry that an inbound START
/// does not remove (any source but `stop_keyword`), else its first entry.
pub async fn lasting_dnc_entry<'e>(
    db: impl PgExecutor<'e>,
    org_id: &str,
    subject_ref: &str,
    preferred: Uuid,
) -> Result<Option<Uuid>, sqlx::Error> {
    sqlx::query_scalar(
        "SELECT entry_id FROM dnc_entries WHERE org_id = $1 AND subject_ref = $2
          ORDER BY entry_id = $3 DESC, source <> 'stop_keyword' DESC, position LIMIT 1",
    )
    .bind(org_id)
    .bind(subject_ref)
    .bind(preferred)
    .fetch_optional(db)
    .await
}

/// How many DNC entries the contact has in the org.
pub async fn dnc_count<'e>(db: impl PgExecutor<'e>, org_id: &str, subject_ref: &str) -> Result<i64, sqlx::Error> {
    sqlx::query_scalar("SELECT count(*) FROM dnc_entries WHERE org_id = $1 AND subject_ref = $2")
        .bind(org_id)
        .bind(subject_ref)
        .fetch_one(db)
        .await
}

/// One DNC entry; `sealed` holds its `address` as the event stored it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct DncRow {
    pub org_id: String,
    pub entry_id: Uuid,
    pub address_type: String,
    pub source: String,
    pub reason: Option<String>,
    pub added_by: String,
    pub added_at: DateTime<Utc>,
    pub event_id: Uuid,
    pub position: i64,
    pub sealed: Value,
}

/// DNC entries (of `org_id`, or of every org) of address type `kind` (any), after position
/// `after`, by position, at most `limit`.
pub async fn dnc_entries<'e>(
    db: impl PgExecutor<'e>,
    org_id: Option<&str>,
    kind: Option<&str>,
    after: i64,
    limit: i64,
) -> Result<Vec<DncRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT org_id, entry_id, address_type, source, reason, added_by, added_at, event_id, position, sealed
           FROM dnc_entries
          WHERE ($1::text IS NULL OR org_id = $1) AND position > $2 AND ($3::text IS NULL OR address_type = $3)
          ORDER BY position LIMIT $4",
    )
    .bind(org_id)
    .bind(after)
    .bind(kind)
    .bind(limit)
    .fetch_all(db)
    .await
}

/// What the outbound checks read of one recipient: whether the org lists it (DNC), the agent's
/// consent in force on the action's channel, and — asked only for recorded calls — whether it
/// consented to recording.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ContactState {
    pub on_dnc: bool,
    pub consent: Option<ConsentType>,
    /// `None` when not asked for.
    pub recording_consent: Option<bool>,
}

impl ContactState {
    /// The columns `state_columns` names, from `row`.
    pub(crate) fn from_columns(row: &PgRow) -> Result<Self, sqlx::Error> {
        let consent: Option<String> = row.try_get("c_consent")?;
        Ok(Self {
            on_dnc: row.try_get("c_on_dnc")?,
            consent: consent.and_then(|kind| serde_json::from_value(Value::String(kind)).ok()),
            recording_consent: row.try_get("c_recording")?,
        })
    }
}

/// The select-list columns of a `ContactState` (`c_on_dnc`, `c_consent`, `c_recording`): the one
/// statement of the rules for what lists a contact and what consent is in force. Each argument is
/// an SQL expression: the org, the agent, the subject reference, the channel, and a boolean that
/// asks for recording consent.
pub(crate) fn state_columns(org: &str, agent: &str, subject: &str, channel: &str, recording: &str) -> String {
    let granted = |channel: &str| {
        format!(
            "FROM consents c WHERE c.org_id = {org} AND c.subject_ref = {subject} AND c.agent_id = {agent} \
               AND c.channel = {channel} AND c.status = 'granted'"
        )
    };
    format!(
        "EXISTS (SELECT 1 FROM dnc_entries d WHERE d.org_id = {org} AND d.subject_ref = {subject}) AS c_on_dnc, \
         (SELECT c.consent_type {}) AS c_consent, \
         CASE WHEN {recording} THEN EXISTS (SELECT 1 {}) END AS c_recording",
        granted(channel),
        granted("'recording'")
    )
}

/// A placed call, as the calls projection holds it.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct CallRow {
    pub call_id: Uuid,
    pub kind: String,
    pub provider: String,
    pub placed_at: DateTime<Utc>,
    /// The last status the calls projection applied.
    pub status: String,
    /// The subject key that seals the call's recipient (migration 0023).
    pub to_key: Option<Uuid>,
}

/// The agent's call with provider id `external_id`.
pub async fn call_by_external_id<'e>(
    db: impl PgExecutor<'e>,
    agent_id: &str,
    external_id: &str,
) -> Result<Option<CallRow>, sqlx::Error> {
    sqlx::query_as(
        "SELECT call_id, kind, provider, placed_at, status, to_key FROM calls WHERE agent_id = $1 AND external_id = $2",
    )
    .bind(agent_id)
    .bind(external_id)
    .fetch_optional(db)
    .await
}

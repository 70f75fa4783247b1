//! Consent and do-not-contact (docs/tools.md#catalogue consent and DNC tools, docs/webhooks.md#sms keywords, docs/compliance.md),
//! shared by the tools, the admin API and the webhooks. Every change is a command on the contact
//! aggregate (`<orgId>:<subjectRef>`); callers wait until the consent and DNC projections show it,
//! so the next outbound check sees it on every instance.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use commguard_domain::contact::{
    ConsentType, Contact, ContactAction, ContactCommand, ContactEvent, DncSource, Grant, Listing,
};
use cqrs_es::Aggregate;
use schemars::JsonSchema;
use serde::Serialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use commguard_projections::contact::read::{self, ConsentRow, ConsentStatus};

use crate::auth::{Principal, Role};
use crate::directory;
use crate::error::{ApiError, ErrorCode};
use crate::paging::Page;
use crate::state::AppState;
use crate::store::{history, rfc3339, sealing, CommandContext};
use crate::validate::{self, invalid};

/// A normalised contact address and its kind.
#[derive(Clone, Debug)]
pub struct Address {
    pub value: String,
    /// `phone` or `email`.
    pub kind: &'static str,
}

/// An E.164 number, or an email if the value has an `@`.
pub fn address(field: &str, raw: &str) -> Result<Address, ApiError> {
    if raw.contains('@') {
        Ok(Address { value: validate::email(field, raw)?, kind: "email" })
    } else {
        Ok(Address { value: validate::phone(field, raw)?, kind: "phone" })
    }
}

/// The address a consent on `channel` is held for: an email for email, a number otherwise.
pub fn consent_address(field: &str, raw: &str, channel: &str) -> Result<Address, ApiError> {
    if channel == "email" {
        Ok(Address { value: validate::email(field, raw)?, kind: "email" })
    } else {
        Ok(Address { value: validate::phone(field, raw)?, kind: "phone" })
    }
}

fn subject_ref(app: &AppState, address: &Address) -> String {
    app.store.keystore().data_keys().blind_index(&address.value)
}

/// The contact aggregate's id: `<orgId>:<subjectRef>`.
fn contact_id(app: &AppState, org_id: &str, address: &Address) -> String {
    format!("{org_id}:{}", subject_ref(app, address))
}

/// Runs `action` on the contact `address` in `org_id`, and waits for the projections.
pub async fn execute(
    app: &AppState,
    org_id: &str,
    address: &Address,
    action: ContactAction,
    context: &CommandContext,
) -> Result<(), ApiError> {
    let id = contact_id(app, org_id, address);
    let erased = erased_consents(app, &id).await?;
    let command = ContactCommand { address: address.value.clone(), action, erased };
    let position = app.store.execute(&app.contacts, &id, command, context).await.map_err(ApiError::internal)?;
    if let Some(position) = position {
        for projection in ["consent", "dnc"] {
            app.store.await_projection(projection, position).await.map_err(ApiError::internal)?;
        }
    }
    Ok(())
}

/// The consent records of contact stream `id` whose keys an erasure destroyed (`crate::erasure`):
/// one read of the stream's grants by primary key, and of their keys.
async fn erased_consents(app: &AppState, id: &str) -> Result<Vec<Uuid>, ApiError> {
    sqlx::query_scalar(
        "SELECT d.consent_id FROM data_keys d
         WHERE d.kind = 'consent' AND d.destroyed_at IS NOT NULL AND d.consent_id IN (
             SELECT (payload::jsonb ->> 'consentId')::uuid FROM events
             WHERE aggregate_type = 'contact' AND aggregate_id = $1 AND event_type = 'ConsentGranted')",
    )
    .bind(id)
    .fetch_all(&app.pool)
    .await
    .map_err(ApiError::internal)
}

pub use commguard_projections::contact::read::ConsentKey;

/// The projection's records for a contact, after `after` in key order, at most `limit`.
async fn consent_rows(
    app: &AppState,
    org_id: &str,
    address: &Address,
    agent_id: Option<&str>,
    channel: Option<&str>,
    after: Option<&ConsentKey>,
    limit: i64,
) -> Result<Vec<ConsentRow>, ApiError> {
    let subject_ref = subject_ref(app, address);
    let query = read::ConsentQuery { org_id, subject_ref: &subject_ref, agent_id, channel };
    read::consents(&app.pool, &query, after, limit).await.map_err(ApiError::internal)
}

/// The records of one agent's consent on one channel (at most one).
async fn held_consent(
    app: &AppState,
    org_id: &str,
    address: &Address,
    agent_id: &str,
    channel: &str,
) -> Result<Option<ConsentRow>, ApiError> {
    Ok(consent_rows(app, org_id, address, Some(agent_id), Some(channel), None, 1).await?.into_iter().next())
}

/// A contact's consent records and DNC state as they stood at `as_of`: its stream up to then,
/// folded by the contact aggregate's own `apply` (which records exist, whether each is active,
/// whether the contact is listed), with each grant's type, time and sealed fields and each
/// revocation's time taken from the events exactly as the consent projection takes them.
async fn consent_at(
    app: &AppState,
    org_id: &str,
    address: &Address,
    as_of: DateTime<Utc>,
) -> Result<(Vec<ConsentRow>, bool), ApiError> {
    let stream = contact_id(app, org_id, address);
    let events =
        history::stream_until(&app.pool, Contact::TYPE, &stream, None, as_of).await.map_err(ApiError::internal)?;
    let mut contact = Contact::default();
    let mut rows: BTreeMap<ConsentKey, ConsentRow> = BTreeMap::new();
    // Each grant's keys: those its `contact` is sealed under (the subject's and the record's).
    let mut grant_keys: std::collections::HashMap<Uuid, Vec<Uuid>> = std::collections::HashMap::new();
    for past in &events {
        let event = past.decode::<Contact>().map_err(ApiError::internal)?;
        match &event {
            ContactEvent::ConsentGranted { consent_id, agent_id, channel, consent_type, .. } => {
                let sealed: Map<String, Value> = ["source", "notes"]
                    .into_iter()
                    .filter_map(|k| past.payload.get(k).filter(|v| !v.is_null()).map(|v| (k.to_string(), v.clone())))
                    .collect();
                let row = ConsentRow {
                    agent_id: agent_id.clone(),
                    channel: channel.clone(),
                    consent_id: *consent_id,
                    consent_type: *consent_type,
                    status: ConsentStatus::Revoked,
                    granted_at: past.occurred_at,
                    revoked_at: None,
                    grant_event_id: past.event_id,
                    sealed: Value::Object(sealed),
                };
                let keys = past.payload["contact"]["k"]
                    .as_array()
                    .map(|ids| ids.iter().filter_map(|id| id.as_str()?.parse().ok()).collect::<Vec<Uuid>>());
                grant_keys.insert(*consent_id, keys.unwrap_or_default());
                rows.insert(row.key(), row);
            }
            ContactEvent::ConsentRevoked { agent_id, channel, was_active: true, .. } => {
                if let Some(row) = rows.get_mut(&(agent_id.clone(), channel.clone())) {
                    row.revoked_at = Some(past.occurred_at);
                }
            }
            _ => {}
        }
        contact.apply(event);
    }
    let mut records = Vec::new();
    for (agent_id, channel, active) in contact.consents() {
        if let Some(mut row) = rows.remove(&(agent_id.to_string(), channel.to_string())) {
            row.status = if active { ConsentStatus::Granted } else { ConsentStatus::Revoked };
            records.push(row);
        }
    }
    // A record whose grant's keys are gone was purged (an erasure of the subject, or retention of
    // a revoked consent): the view at an earlier instant does not bring back that it existed.
    let keys: Vec<Uuid> = records.iter().filter_map(|r| grant_keys.get(&r.consent_id)).flatten().copied().collect();
    let live = app.store.keystore().lookup(&keys).await.map_err(ApiError::internal)?;
    records.retain(|row| grant_keys.get(&row.consent_id).is_none_or(|keys| keys.iter().all(|k| live.contains_key(k))));
    Ok((records, contact.on_dnc()))
}

/// The clear `source` of a grant (or `"[erased]"` once its keys are gone).
async fn opened_source(app: &AppState, row: &ConsentRow) -> Result<Value, ApiError> {
    let mut fields = row.sealed.clone();
    sealing::open_payload(app.store.keystore(), &mut fields, row.grant_event_id).await.map_err(ApiError::internal)?;
    Ok(fields.get("source").cloned().unwrap_or(Value::Null))
}

pub async fn on_dnc(app: &AppState, org_id: &str, address: &Address) -> Result<bool, ApiError> {
    read::on_dnc(&app.pool, org_id, &subject_ref(app, address)).await.map_err(ApiError::internal)
}

pub struct NewConsent {
    pub agent_id: String,
    pub address: Address,
    pub channel: String,
    pub consent_type: ConsentType,
    pub source: Option<String>,
    pub notes: Option<String>,
}

/// `comms_record_consent`: grants (or re-grants) consent; a listed contact gets a warning.
pub async fn record_consent(
    app: &AppState,
    org_id: &str,
    new: NewConsent,
    context: &CommandContext,
) -> Result<Value, ApiError> {
    let grant = Grant {
        consent_id: Uuid::new_v4(),
        agent_id: new.agent_id.clone(),
        channel: new.channel.clone(),
        consent_type: new.consent_type,
        source: new.source,
        notes: new.notes,
    };
    execute(app, org_id, &new.address, ContactAction::GrantConsent(grant), context).await?;
    let row = held_consent(app, org_id, &new.address, &new.agent_id, &new.channel)
        .await?
        .ok_or_else(|| ApiError::internal("granted consent missing from its projection"))?;
    let mut warnings = Vec::new();
    if on_dnc(app, org_id, &new.address).await? {
        warnings.push(json!({"code": "on_dnc", "message": format!(
            "{} is on the Do Not Contact list: consent is recorded, but outbound actions stay blocked", new.address.value)}));
    }
    Ok(json!({"success": true, "consentId": row.consent_id, "status": "granted", "warnings": warnings}))
}

/// `comms_revoke_consent`.
pub async fn revoke_consent(
    app: &AppState,
    org_id: &str,
    agent_id: &str,
    address: &Address,
    channel: &str,
    context: &CommandContext,
) -> Result<Value, ApiError> {
    let was_active = held_consent(app, org_id, address, agent_id, channel).await?.is_some_and(|r| r.active());
    let action = ContactAction::RevokeConsent { agent_id: agent_id.into(), channel: channel.into() };
    execute(app, org_id, address, action, context).await?;
    Ok(if was_active {
        json!({"success": true, "status": "revoked"})
    } else {
        json!({"success": true, "message": "No active consent found to revoke"})
    })
}

/// `comms_check_consent`.
pub async fn check_consent(
    app: &AppState,
    org_id: &str,
    agent_id: &str,
    address: &Address,
    channel: &str,
) -> Result<Value, ApiError> {
    let on_dnc = on_dnc(app, org_id, address).await?;
    let Some(row) = held_consent(app, org_id, address, agent_id, channel).await? else {
        return Ok(
            json!({"hasConsent": false, "status": "none", "onDnc": on_dnc, "message": "No consent record found"}),
        );
    };
    Ok(json!({
        "hasConsent": row.active(),
        "status": row.status.as_str(),
        "consentType": row.consent_type.as_str(),
        "grantedAt": rfc3339(row.granted_at),
        "revokedAt": row.revoked_at.map(rfc3339),
        "source": opened_source(app, &row).await?,
        "onDnc": on_dnc,
    }))
}

/// `GET /admin/api/consent`: the records for a contact in the org, a page at a time — as the
/// consent projection holds them now, or, with `as_of`, as the contact's events had them then.
/// `asOf` is the service time of the answer when no `as_of` was asked.
pub async fn consent_records(
    app: &AppState,
    org_id: Option<&str>,
    address: &Address,
    agent_id: Option<&str>,
    channel: Option<&str>,
    as_of: Option<DateTime<Utc>>,
    page: Page<ConsentKey>,
) -> Result<ConsentReply, ApiError> {
    let Some(org_id) = org_id else {
        return every_orgs_consent_records(app, address, agent_id, channel, as_of, page).await;
    };
    let (rows, next, listed, at) = match as_of {
        None => {
            let rows = consent_rows(app, org_id, address, agent_id, channel, page.after.as_ref(), page.fetch()).await?;
            let (rows, next) = page.finish(rows, ConsentRow::key);
            (rows, next, on_dnc(app, org_id, address).await?, app.clock.now())
        }
        Some(at) => {
            let (mut rows, listed) = consent_at(app, org_id, address, at).await?;
            rows.retain(|r| asked_for(r, agent_id, channel));
            let (rows, next) = page.of(rows, ConsentRow::key);
            (rows, next, listed, at)
        }
    };
    let rows = rows.into_iter().map(|row| (org_id.to_string(), row)).collect();
    consent_reply(app, address, rows, listed, at, next).await
}

/// The super-admin's `GET /admin/api/consent` without `orgId`: the contact's records in every
/// org, merged in one key order (agent ids are unique across orgs), `onDnc` when any org lists
/// it. Only the orgs that hold a record of the contact (or, with `as_of`, its stream) are read.
async fn every_orgs_consent_records(
    app: &AppState,
    address: &Address,
    agent_id: Option<&str>,
    channel: Option<&str>,
    as_of: Option<DateTime<Utc>>,
    page: Page<ConsentKey>,
) -> Result<ConsentReply, ApiError> {
    let subject = subject_ref(app, address);
    let (mut rows, mut listed) = (Vec::new(), false);
    let at = match as_of {
        None => {
            for org_id in read::orgs_about(&app.pool, &subject).await.map_err(ApiError::internal)? {
                let held = consent_rows(app, &org_id, address, agent_id, channel, None, i64::MAX).await?;
                rows.extend(held.into_iter().map(|row| (org_id.clone(), row)));
                listed |= on_dnc(app, &org_id, address).await?;
            }
            app.clock.now()
        }
        Some(at) => {
            let orgs: Vec<String> = directory::orgs(&app.pool).await?.into_iter().map(|o| o.org_id).collect();
            let streams: Vec<String> = orgs.iter().map(|org| contact_id(app, org, address)).collect();
            let existing: Vec<String> = sqlx::query_scalar(
                "SELECT aggregate_id FROM chain_heads WHERE aggregate_type = $1 AND aggregate_id = ANY($2)",
            )
            .bind(Contact::TYPE)
            .bind(&streams)
            .fetch_all(&app.pool)
            .await
            .map_err(ApiError::internal)?;
            for (org_id, stream) in orgs.iter().zip(&streams) {
                if !existing.contains(stream) {
                    continue;
                }
                let (held, on) = consent_at(app, org_id, address, at).await?;
                rows.extend(
                    held.into_iter().filter(|r| asked_for(r, agent_id, channel)).map(|row| (org_id.clone(), row)),
                );
                listed |= on;
            }
            at
        }
    };
    let (rows, next) = page.of(rows, |(_, row)| row.key());
    consent_reply(app, address, rows, listed, at, next).await
}

/// Whether `row` is of the agent and channel a consent query asked for (all when `None`).
fn asked_for(row: &ConsentRow, agent_id: Option<&str>, channel: Option<&str>) -> bool {
    agent_id.is_none_or(|a| row.agent_id == a) && channel.is_none_or(|c| row.channel == c)
}

async fn consent_reply(
    app: &AppState,
    address: &Address,
    rows: Vec<(String, ConsentRow)>,
    listed: bool,
    at: DateTime<Utc>,
    next: Option<String>,
) -> Result<ConsentReply, ApiError> {
    let mut records = Vec::new();
    for (org_id, row) in rows {
        records.push(ConsentRecordView {
            source: opened_source(app, &row).await?,
            org_id,
            agent_id: row.agent_id,
            channel: row.channel,
            status: row.status.as_str().into(),
            consent_type: row.consent_type.as_str().into(),
            granted_at: rfc3339(row.granted_at),
            revoked_at: row.revoked_at.map(rfc3339),
        });
    }
    Ok(ConsentReply { contact: address.value.clone(), as_of: rfc3339(at), on_dnc: listed, records, next_cursor: next })
}

/// `GET /admin/api/consent` (docs/admin-api.md).
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsentReply {
    pub contact: String,
    pub as_of: String,
    pub on_dnc: bool,
    pub records: Vec<ConsentRecordView>,
    pub next_cursor: Option<String>,
}

/// One consent record; `source` reads `"[erased]"` once its subject is erased.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConsentRecordView {
    /// The org the record belongs to (a super-admin's view without `orgId` spans every org).
    pub org_id: String,
    pub agent_id: String,
    pub channel: String,
    pub status: String,
    pub consent_type: String,
    pub granted_at: String,
    pub revoked_at: Option<String>,
    pub source: Value,
}

/// `comms_dnc_list` and `GET /admin/api/dnc`.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DncPage {
    pub entries: Vec<DncEntryView>,
    pub next_cursor: Option<String>,
}

/// One DNC entry; `address` reads `"[erased]"` once its subject is erased (it still blocks).
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct DncEntryView {
    pub entry_id: Uuid,
    pub address: Value,
    #[serde(rename = "type")]
    pub kind: String,
    pub source: String,
    pub reason: Option<String>,
    pub added_by: String,
    pub added_at: String,
    pub org_id: String,
}

/// `comms_dnc_add`: idempotent; `source` is `agent` or `admin` by the caller.
pub async fn dnc_add(
    app: &AppState,
    org_id: &str,
    address: &Address,
    source: DncSource,
    reason: Option<String>,
    added_by: String,
    context: &CommandContext,
) -> Result<Value, ApiError> {
    let listing = Listing { entry_id: Uuid::new_v4(), address_type: address.kind.into(), source, reason, added_by };
    let subject = subject_ref(app, address);
    let before = read::dnc_count(&app.pool, org_id, &subject).await.map_err(ApiError::internal)?;
    execute(app, org_id, address, ContactAction::AddDnc(listing.clone()), context).await?;
    // The entry that keeps the contact listed for this caller: its own if one was added (also
    // beside a STOP's entry, which START removes), else the first that lasts as long.
    let entry = read::lasting_dnc_entry(&app.pool, org_id, &subject, listing.entry_id)
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::internal("DNC entry missing from its projection"))?;
    Ok(json!({
        "success": true,
        "entryId": entry,
        "address": address.value,
        "type": address.kind,
        "orgId": org_id,
        "alreadyListed": before > 0,
    }))
}

/// `comms_dnc_remove`: removes every entry for the address in the org.
pub async fn dnc_remove(
    app: &AppState,
    org_id: &str,
    address: &Address,
    reason: String,
    removed_by: String,
    context: &CommandContext,
) -> Result<Value, ApiError> {
    let before = read::dnc_count(&app.pool, org_id, &subject_ref(app, address)).await.map_err(ApiError::internal)?;
    execute(app, org_id, address, ContactAction::RemoveDnc { reason, removed_by }, context).await?;
    Ok(json!({"success": true, "removed": before}))
}

/// `comms_dnc_list`: by position, paged by it (`crate::paging`). `org_id` `None` lists every
/// org's entries (the super-admin without `orgId`); each entry names its org.
pub async fn dnc_list(
    app: &AppState,
    org_id: Option<&str>,
    kind: Option<&str>,
    page: Page<i64>,
) -> Result<DncPage, ApiError> {
    let rows = read::dnc_entries(&app.pool, org_id, kind, page.after.unwrap_or(0), page.fetch())
        .await
        .map_err(ApiError::internal)?;
    let (rows, next) = page.finish(rows, |row| row.position);
    let mut entries = Vec::new();
    for row in rows {
        let mut fields = row.sealed.clone();
        sealing::open_payload(app.store.keystore(), &mut fields, row.event_id).await.map_err(ApiError::internal)?;
        entries.push(DncEntryView {
            entry_id: row.entry_id,
            address: fields.get("address").cloned().unwrap_or(json!("[erased]")),
            kind: row.address_type,
            source: row.source,
            reason: row.reason,
            added_by: row.added_by,
            added_at: rfc3339(row.added_at),
            org_id: row.org_id,
        });
    }
    Ok(DncPage { entries, next_cursor: next })
}

/// Inbound STOP to `agent_id` from `from`, in the agent's org (docs/webhooks.md#sms).
pub async fn stop(
    app: &AppState,
    org_id: &str,
    agent_id: &str,
    from: &Address,
    keyword: &str,
    context: &CommandContext,
) -> Result<(), ApiError> {
    let listing = Listing {
        entry_id: Uuid::new_v4(),
        address_type: from.kind.into(),
        source: DncSource::StopKeyword,
        reason: Some("STOP keyword received via SMS".into()),
        added_by: format!("system:inbound-sms:{agent_id}"),
    };
    let action = ContactAction::Stop { agent_id: agent_id.into(), keyword: keyword.into(), listing };
    execute(app, org_id, from, action, context).await
}

/// Inbound START (docs/webhooks.md#sms).
pub async fn start(
    app: &AppState,
    org_id: &str,
    agent_id: &str,
    from: &Address,
    keyword: &str,
    context: &CommandContext,
) -> Result<(), ApiError> {
    let action =
        ContactAction::Start { agent_id: agent_id.into(), keyword: keyword.into(), consent_id: Uuid::new_v4() };
    execute(app, org_id, from, action, context).await
}

/// An email complaint (docs/webhooks.md#email): list the address, revoke its email consents.
pub async fn complaint(
    app: &AppState,
    org_id: &str,
    agent_id: &str,
    address: &Address,
    context: &CommandContext,
) -> Result<(), ApiError> {
    let listing = Listing {
        entry_id: Uuid::new_v4(),
        address_type: address.kind.into(),
        source: DncSource::Complaint,
        reason: Some("Email complaint received".into()),
        added_by: format!("system:inbound-email:{agent_id}"),
    };
    execute(app, org_id, address, ContactAction::Complaint { listing }, context).await
}

/// `consentType` of a tool call.
pub fn consent_type(value: &str) -> Result<ConsentType, ApiError> {
    serde_json::from_value(Value::String(value.into()))
        .map_err(|_| ApiError::new(ErrorCode::InvalidInput, format!("Invalid consentType \"{value}\"")))
}

/// The org a DNC tool acts in: the caller's own; the super-admin must name one that exists.
pub async fn dnc_org(app: &AppState, principal: &Principal, requested: Option<String>) -> Result<String, ApiError> {
    if principal.role() == Role::SuperAdmin && requested.is_none() {
        return Err(invalid("orgId", "orgId is required for the super-admin"));
    }
    let org = crate::directory::commands::home_org(principal, requested)?;
    directory::existing_org(&app.pool, &org).await?;
    Ok(org)
}

/// `limit` of a list: 50 by default, 1..=500.
pub fn list_limit(value: Option<&Value>) -> Result<i64, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(50),
        Some(v) => match v.as_i64().filter(|n| (1..=500).contains(n)) {
            Some(n) => Ok(n),
            None => Err(invalid("limit", "must be an integer between 1 and 500")),
        },
    }
}

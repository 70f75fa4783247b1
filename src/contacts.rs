//! Consent and do-not-contact (CONTRACT §6.3 consent and DNC tools, §8.2 keywords, §10.2–10.3),
//! shared by the tools, the admin API and the webhooks. Every change is a command on the contact
//! aggregate (`<orgId>:<subjectRef>`); callers wait until the consent and DNC projections show it,
//! so the next outbound check sees it on every instance.

use commguard_domain::contact::{ConsentType, ContactAction, ContactCommand, DncSource, Grant, Listing};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::state::AppState;
use crate::error::{ApiError, ErrorCode};
use crate::store::{rfc3339, sealing, CommandContext};
use crate::auth::{Principal, Role};
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

/// Runs `action` on the contact `address` in `org_id`, and waits for the projections.
pub async fn execute(
    app: &AppState,
    org_id: &str,
    address: &Address,
    action: ContactAction,
    context: &CommandContext,
) -> Result<(), ApiError> {
    let id = format!("{org_id}:{}", subject_ref(app, address));
    let command = ContactCommand { address: address.value.clone(), action };
    let position = app.store.execute(&app.contacts, &id, command, context).await.map_err(ApiError::internal)?;
    if let Some(position) = position {
        for projection in ["consent", "dnc"] {
            app.store.await_projection(projection, position).await.map_err(ApiError::internal)?;
        }
    }
    Ok(())
}

/// One consent row as the projection holds it.
#[derive(sqlx::FromRow)]
struct ConsentRow {
    agent_id: String,
    channel: String,
    consent_id: Uuid,
    consent_type: String,
    status: String,
    granted_at: chrono::DateTime<chrono::Utc>,
    revoked_at: Option<chrono::DateTime<chrono::Utc>>,
    grant_event_id: Uuid,
    sealed: Value,
}

async fn consent_rows(
    app: &AppState,
    org_id: &str,
    address: &Address,
    agent_id: Option<&str>,
    channel: Option<&str>,
) -> Result<Vec<ConsentRow>, ApiError> {
    sqlx::query_as(
        "SELECT agent_id, channel, consent_id, consent_type, status, granted_at, revoked_at, grant_event_id, sealed
           FROM consents
          WHERE org_id = $1 AND subject_ref = $2 AND ($3::text IS NULL OR agent_id = $3)
            AND ($4::text IS NULL OR channel = $4)
          ORDER BY agent_id, channel",
    )
    .bind(org_id)
    .bind(subject_ref(app, address))
    .bind(agent_id)
    .bind(channel)
    .fetch_all(&app.pool)
    .await
    .map_err(ApiError::internal)
}

/// The clear `source` of a grant (or `"[erased]"` once its keys are gone).
async fn opened_source(app: &AppState, row: &ConsentRow) -> Result<Value, ApiError> {
    let mut fields = row.sealed.clone();
    sealing::open_payload(app.store.keystore(), &mut fields, row.grant_event_id).await.map_err(ApiError::internal)?;
    Ok(fields.get("source").cloned().unwrap_or(Value::Null))
}

impl ConsentRow {
    fn active(&self) -> bool {
        self.status == "granted"
    }
}

pub async fn on_dnc(app: &AppState, org_id: &str, address: &Address) -> Result<bool, ApiError> {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM dnc_entries WHERE org_id = $1 AND subject_ref = $2)")
        .bind(org_id)
        .bind(subject_ref(app, address))
        .fetch_one(&app.pool)
        .await
        .map_err(ApiError::internal)
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
    let row = consent_rows(app, org_id, &new.address, Some(&new.agent_id), Some(&new.channel))
        .await?
        .into_iter()
        .next()
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
    let was_active =
        consent_rows(app, org_id, address, Some(agent_id), Some(channel)).await?.iter().any(|r| r.active());
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
    let Some(row) = consent_rows(app, org_id, address, Some(agent_id), Some(channel)).await?.into_iter().next() else {
        return Ok(
            json!({"hasConsent": false, "status": "none", "onDnc": on_dnc, "message": "No consent record found"}),
        );
    };
    Ok(json!({
        "hasConsent": row.active(),
        "status": row.status,
        "consentType": row.consent_type,
        "grantedAt": rfc3339(row.granted_at),
        "revokedAt": row.revoked_at.map(rfc3339),
        "source": opened_source(app, &row).await?,
        "onDnc": on_dnc,
    }))
}

/// `GET /admin/api/consent`: every record for a contact in the org.
pub async fn consent_records(
    app: &AppState,
    org_id: &str,
    address: &Address,
    agent_id: Option<&str>,
    channel: Option<&str>,
) -> Result<Value, ApiError> {
    let mut records = Vec::new();
    for row in consent_rows(app, org_id, address, agent_id, channel).await? {
        records.push(json!({
            "agentId": row.agent_id,
            "channel": row.channel,
            "status": row.status,
            "consentType": row.consent_type,
            "grantedAt": rfc3339(row.granted_at),
            "revokedAt": row.revoked_at.map(rfc3339),
            "source": opened_source(app, &row).await?,
        }));
    }
    Ok(json!({
        "contact": address.value,
        "asOf": rfc3339(app.clock.now()),
        "onDnc": on_dnc(app, org_id, address).await?,
        "records": records,
    }))
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
    execute(app, org_id, address, ContactAction::AddDnc(listing.clone()), context).await?;
    let entry: Uuid = sqlx::query_scalar(
        "SELECT entry_id FROM dnc_entries WHERE org_id = $1 AND subject_ref = $2 ORDER BY position LIMIT 1",
    )
    .bind(org_id)
    .bind(subject_ref(app, address))
    .fetch_optional(&app.pool)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::internal("DNC entry missing from its projection"))?;
    Ok(json!({
        "success": true,
        "entryId": entry,
        "address": address.value,
        "type": address.kind,
        "orgId": org_id,
        "alreadyListed": entry != listing.entry_id,
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
    let before: i64 = sqlx::query_scalar("SELECT count(*) FROM dnc_entries WHERE org_id = $1 AND subject_ref = $2")
        .bind(org_id)
        .bind(subject_ref(app, address))
        .fetch_one(&app.pool)
        .await
        .map_err(ApiError::internal)?;
    execute(app, org_id, address, ContactAction::RemoveDnc { reason, removed_by }, context).await?;
    Ok(json!({"success": true, "removed": before}))
}

#[derive(sqlx::FromRow)]
struct DncRow {
    org_id: String,
    entry_id: Uuid,
    address_type: String,
    source: String,
    reason: Option<String>,
    added_by: String,
    added_at: chrono::DateTime<chrono::Utc>,
    event_id: Uuid,
    position: i64,
    sealed: Value,
}

/// `comms_dnc_list`: by position; the cursor is the last position shown. `org_id` `None` lists
/// every org's entries (the super-admin without `orgId`); each entry names its org.
pub async fn dnc_list(
    app: &AppState,
    org_id: Option<&str>,
    kind: Option<&str>,
    cursor: Option<&str>,
    limit: i64,
) -> Result<Value, ApiError> {
    let after: i64 = match cursor {
        None => 0,
        Some(c) => c.parse().map_err(|_| validate::invalid("cursor", "Invalid cursor"))?,
    };
    let rows: Vec<DncRow> = sqlx::query_as(
        "SELECT org_id, entry_id, address_type, source, reason, added_by, added_at, event_id, position, sealed
           FROM dnc_entries
          WHERE ($1::text IS NULL OR org_id = $1) AND position > $2 AND ($3::text IS NULL OR address_type = $3)
          ORDER BY position LIMIT $4",
    )
    .bind(org_id)
    .bind(after)
    .bind(kind)
    .bind(limit + 1)
    .fetch_all(&app.pool)
    .await
    .map_err(ApiError::internal)?;
    let more = rows.len() as i64 > limit;
    let mut entries = Vec::new();
    let mut last = None;
    for row in rows.into_iter().take(limit as usize) {
        let mut fields = row.sealed.clone();
        sealing::open_payload(app.store.keystore(), &mut fields, row.event_id).await.map_err(ApiError::internal)?;
        last = Some(row.position);
        entries.push(json!({
            "entryId": row.entry_id,
            "address": fields.get("address").cloned().unwrap_or(json!("[erased]")),
            "type": row.address_type,
            "source": row.source,
            "reason": row.reason,
            "addedBy": row.added_by,
            "addedAt": rfc3339(row.added_at),
            "orgId": row.org_id,
        }));
    }
    let next = if more { last.map(|p| p.to_string()) } else { None };
    Ok(json!({"entries": entries, "nextCursor": next}))
}

/// Inbound STOP to `agent_id` from `from`, in the agent's org (§8.2).
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

/// Inbound START (§8.2).
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

/// An email complaint (§8.5): list the address, revoke its email consents.
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
    if crate::directory::org(&app.pool, &org).await?.is_none() {
        return Err(ApiError::not_found(format!("Organization \"{org}\" not found")));
    }
    Ok(org)
}

/// The orgs a DNC listing covers: the caller's own; the super-admin's named one, else every org
/// (`None`).
pub async fn dnc_list_scope(
    app: &AppState,
    principal: &Principal,
    requested: Option<String>,
) -> Result<Option<String>, ApiError> {
    if principal.role() == Role::SuperAdmin && requested.is_none() {
        return Ok(None);
    }
    dnc_org(app, principal, requested).await.map(Some)
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

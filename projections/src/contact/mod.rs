//! Consent and do-not-contact state per org and contact (docs/compliance.md), fed by the contact
//! aggregate, and placed calls by provider id (for status callbacks, docs/webhooks.md#call-status). The outbound pipeline
//! checks DNC and consent here before every action; commands that change them wait for these
//! projections, so a revocation or a STOP holds from the moment it is answered.
//!
//! Personal fields stay sealed: rows keep them exactly as the event stored them (`sealed`,
//! keyed by payload path), with the event id that opens them.

use serde_json::{Map, Value};
use sqlx::PgConnection;

use crate::directory::{relevant, str_field};
use crate::{BoxFuture, Projection, ProjectionError, StoredEvent, Tables};

pub mod read;

const CONSENT_EVENTS: &[&str] = &["ConsentGranted", "ConsentRevoked"];
const DNC_EVENTS: &[&str] = &["DncAdded", "DncRemoved"];
const CALL_EVENTS: &[&str] = &["CallPlaced", "CallStatusChanged"];

pub struct ConsentProjection;
pub struct DncProjection;
pub struct CallsProjection;

/// The contact aggregate's id is `<orgId>:<subjectRef>`; org ids never contain `:`.
fn subject_ref(event: &StoredEvent) -> &str {
    event.aggregate_id.rsplit_once(':').map_or(event.aggregate_id.as_str(), |(_, s)| s)
}

fn org(event: &StoredEvent) -> &str {
    event.aggregate_id.split_once(':').map_or("", |(o, _)| o)
}

/// The sealed fields `keys` of a payload, as an object keyed by their paths.
fn sealed(payload: &Value, keys: &[&str]) -> Value {
    let fields: Map<String, Value> = keys
        .iter()
        .filter_map(|k| payload.get(*k).filter(|v| !v.is_null()).map(|v| ((*k).to_string(), v.clone())))
        .collect();
    Value::Object(fields)
}

impl Projection for ConsentProjection {
    fn name(&self) -> &'static str {
        "consent"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["consents"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(CONSENT_EVENTS)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let consents = tables.get("consents");
            for (event, p) in relevant(events, &["contact"], CONSENT_EVENTS) {
                let agent = str_field(&p, "agentId").unwrap_or_default();
                let channel = str_field(&p, "channel").unwrap_or_default();
                if event.event_type == "ConsentGranted" {
                    let consent_id = str_field(&p, "consentId").and_then(|s| s.parse::<uuid::Uuid>().ok());
                    sqlx::query(&format!(
                        "INSERT INTO {consents} (org_id, subject_ref, agent_id, channel, consent_id, consent_type,
                                                 status, granted_at, revoked_at, grant_event_id, sealed)
                         VALUES ($1, $2, $3, $4, $5, $6, 'granted', $7, NULL, $8, $9)
                         ON CONFLICT (org_id, subject_ref, agent_id, channel) DO UPDATE SET
                             consent_id = EXCLUDED.consent_id, consent_type = EXCLUDED.consent_type,
                             status = 'granted', granted_at = EXCLUDED.granted_at, revoked_at = NULL,
                             grant_event_id = EXCLUDED.grant_event_id, sealed = EXCLUDED.sealed"
                    ))
                    .bind(org(event))
                    .bind(subject_ref(event))
                    .bind(agent)
                    .bind(channel)
                    .bind(consent_id)
                    .bind(str_field(&p, "consentType").unwrap_or("express"))
                    .bind(event.occurred_at)
                    .bind(event.event_id)
                    .bind(sealed(&p, &["source", "notes"]))
                    .execute(&mut *conn)
                    .await?;
                } else if p.get("wasActive").and_then(Value::as_bool) == Some(true) {
                    sqlx::query(&format!(
                        "UPDATE {consents} SET status = 'revoked', revoked_at = $5
                          WHERE org_id = $1 AND subject_ref = $2 AND agent_id = $3 AND channel = $4"
                    ))
                    .bind(org(event))
                    .bind(subject_ref(event))
                    .bind(agent)
                    .bind(channel)
                    .bind(event.occurred_at)
                    .execute(&mut *conn)
                    .await?;
                }
            }
            let granted: Vec<uuid::Uuid> = relevant(events, &["contact"], &["ConsentGranted"])
                .filter_map(|(_, p)| str_field(&p, "consentId").and_then(|s| s.parse().ok()))
                .collect();
            if !granted.is_empty() {
                drop_erased_grants(conn, consents, Some(&granted)).await?;
            }
            Ok(())
        })
    }

    fn before_swap<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        // An erasure (which holds this projection's lock) deletes the live rows only: rows its
        // subject's grants got in the shadow before it are dropped here.
        Box::pin(async move { drop_erased_grants(conn, tables.get("consents"), None).await })
    }
}

/// Deletes the consent rows (of `grants`, or all) whose grant is erased: its record key is
/// destroyed (erasure, or retention of revoked consents), or a key its `contact` field is sealed
/// under is (an erasure that destroyed the subject's keys while the grant was being recorded,
/// before it knew of its record key). A rebuild must not bring such a row back as if it held.
async fn drop_erased_grants(
    conn: &mut PgConnection,
    consents: &str,
    grants: Option<&[uuid::Uuid]>,
) -> Result<(), ProjectionError> {
    sqlx::query(&format!(
        "DELETE FROM {consents} c
          WHERE ($1::uuid[] IS NULL OR c.consent_id = ANY($1))
            AND (EXISTS (SELECT 1 FROM data_keys d
                          WHERE d.kind = 'consent' AND d.consent_id = c.consent_id AND d.destroyed_at IS NOT NULL)
                 OR EXISTS (SELECT 1 FROM events e
                              CROSS JOIN LATERAL json_array_elements_text(e.payload -> 'contact' -> 'k') k(key_id)
                              JOIN data_keys d ON d.key_id::text = k.key_id
                             WHERE e.event_id = c.grant_event_id AND d.destroyed_at IS NOT NULL))"
    ))
    .bind(grants)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

impl Projection for DncProjection {
    fn name(&self) -> &'static str {
        "dnc"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["dnc_entries"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(DNC_EVENTS)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let dnc = tables.get("dnc_entries");
            for (event, p) in relevant(events, &["contact"], DNC_EVENTS) {
                let entry = str_field(&p, "entryId").and_then(|s| s.parse::<uuid::Uuid>().ok());
                if event.event_type == "DncAdded" {
                    sqlx::query(&format!(
                        "INSERT INTO {dnc} (entry_id, org_id, subject_ref, address_type, source, reason, added_by,
                                            added_at, event_id, position, sealed)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) ON CONFLICT (entry_id) DO NOTHING"
                    ))
                    .bind(entry)
                    .bind(org(event))
                    .bind(subject_ref(event))
                    .bind(str_field(&p, "addressType").unwrap_or("phone"))
                    .bind(str_field(&p, "source").unwrap_or("admin"))
                    .bind(str_field(&p, "reason"))
                    .bind(str_field(&p, "addedBy").unwrap_or_default())
                    .bind(event.occurred_at)
                    .bind(event.event_id)
                    .bind(event.position)
                    .bind(sealed(&p, &["address"]))
                    .execute(&mut *conn)
                    .await?;
                } else {
                    sqlx::query(&format!("DELETE FROM {dnc} WHERE entry_id = $1"))
                        .bind(entry)
                        .execute(&mut *conn)
                        .await?;
                }
            }
            Ok(())
        })
    }
}

/// The id of the subject key that seals a placed call's recipient (`to.k[0]`): a later recording
/// of the call is sealed under it (migration 0023).
fn recipient_key(payload: &Value) -> Option<uuid::Uuid> {
    payload.get("to")?.get("k")?.get(0)?.as_str()?.parse().ok()
}

impl Projection for CallsProjection {
    fn name(&self) -> &'static str {
        "calls"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["calls"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(CALL_EVENTS)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let calls = tables.get("calls");
            for (event, p) in relevant(events, &["agent"], CALL_EVENTS) {
                let call = str_field(&p, "callId").and_then(|s| s.parse::<uuid::Uuid>().ok());
                if event.event_type == "CallPlaced" {
                    sqlx::query(&format!(
                        "INSERT INTO {calls} (call_id, agent_id, org_id, external_id, kind, provider, placed_at,
                                              status, cost, to_key)
                         VALUES ($1, $2, $3, $4, $5, $6, $7, 'queued', $8, $9) ON CONFLICT (call_id) DO NOTHING"
                    ))
                    .bind(call)
                    .bind(&event.aggregate_id)
                    .bind(event.org_id.as_deref().unwrap_or_default())
                    .bind(str_field(&p, "externalId").unwrap_or_default())
                    .bind(str_field(&p, "kind").unwrap_or("call"))
                    .bind(str_field(&p, "provider").unwrap_or("mock"))
                    .bind(event.occurred_at)
                    .bind(p.get("cost").and_then(Value::as_i64).unwrap_or(0))
                    .bind(recipient_key(&p))
                    .execute(&mut *conn)
                    .await?;
                } else {
                    sqlx::query(&format!(
                        "UPDATE {calls} SET status = $2, cost = COALESCE($3, cost) WHERE call_id = $1"
                    ))
                    .bind(call)
                    .bind(str_field(&p, "status").unwrap_or_default())
                    .bind(p.get("cost").and_then(Value::as_i64))
                    .execute(&mut *conn)
                    .await?;
                }
            }
            Ok(())
        })
    }
}

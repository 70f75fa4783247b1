//! The auditor's routes of the admin API (docs/admin-api.md): `GET /admin/api/events`, the complete
//! docs/events.md#envelope envelopes in global commit order, and `GET /admin/api/audit`, the audit view with its
//! filters. Org tokens (O) read their own org; the master token (S) reads all, or one org with
//! `orgId`. Successful reads are not recorded (P2); refusals are, by `admin::record_refusals`.

use axum::extract::State;
use axum::Json;
use commguard_projections::audit::read::{self as audit_read, AuditFilter, AuditItem as AuditRow};
use schemars::JsonSchema;
use serde::Serialize;

use super::admin::Admin;
use super::openapi::{ApiRouter, Body, Doc, Written, CURSOR, LIMIT, ORG};
use super::params::Params;
use crate::auth::{guard, Role};
use crate::contacts;
use crate::directory::commands::{addressable_agent, read_scope};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::envelope::{self, WrittenEnvelopes};
use crate::store::pages::PageKey;
use crate::store::rfc3339;
use crate::validate::invalid;

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .get(
            "/admin/api/events",
            events,
            Doc {
                who: "O (own org) S; raw S only",
                summary: "Event envelopes (docs/events.md#envelope) in global commit order",
                query: &[
                    ("after", false, "integer", "the nextAfter of the previous page (0)"),
                    ("limit", false, "integer", "1-1000 (100)"),
                    ORG,
                    ("raw", false, "boolean", "super-admin: payloads as stored, sealed"),
                ],
                body: Body::None,
            },
        )
        .get(
            "/admin/api/audit",
            audit,
            Doc {
                who: "O (own org) S",
                summary: "The audit view",
                query: &[
                    ("agentId", false, "string", ""),
                    ("subject", false, "string", "phone number or email, matched by blind index"),
                    ("from", false, "string", "RFC 3339"),
                    ("to", false, "string", "RFC 3339"),
                    ("eventType", false, "string", ""),
                    ("outcome", false, "string", "allowed | refused"),
                    ("actorKind", false, "string", ""),
                    ORG,
                    CURSOR,
                    LIMIT,
                ],
                body: Body::None,
            },
        )
}

/// `GET /admin/api/events?after&limit&orgId&raw`: `{events, nextAfter, headPosition}`. Reads only
/// below the horizon (`store::pages`, which reads the next page ahead), so consecutive pages never
/// repeat or skip an event, whatever order writers commit in.
async fn events(State(app): State<AppState>, admin: Admin, q: Params) -> Result<Written<EventPage>, ApiError> {
    let after = q.integer("after", 0, (0, i64::MAX))?;
    let limit = q.integer("limit", 100, (1, 1000))?;
    let raw = match q.get("raw") {
        None | Some("false") => false,
        Some("true") => true,
        Some(_) => return Err(invalid("raw", "must be true or false")),
    };
    if raw {
        // Sealed payloads are for auditors of the whole platform (docs/admin-api.md: raw is S).
        guard::require_role(&admin.principal, Role::SuperAdmin)?;
    }
    let org = read_scope(&app, &admin.principal, q.id("orgId")?).await?;
    let key = PageKey { org_id: org, as_stored: raw, after, limit };
    let page = app.feed_pages.page(app.store.keystore(), key).await.map_err(ApiError::internal)?;
    app.metrics.feed_page(page.read_ahead);
    Ok(Written::of_parts(page_parts(page.events, page.next_after, page.head_position)))
}

/// A page of the auditor feed. Its envelopes come written (`envelope::PageWriter`, on every
/// core, straight from the rows), so answering only frames their text (`page_parts`).
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct EventPage {
    events: Vec<envelope::Envelope>,
    /// The `after` of the next page (this page's last position, or `after` when empty).
    next_after: i64,
    /// The highest position in scope a reader may see now.
    head_position: i64,
}

/// `EventPage`'s JSON in parts: the envelopes' texts as written (one per share of the cores),
/// framed, never copied into one text.
fn page_parts(events: WrittenEnvelopes, next_after: i64, head_position: i64) -> Vec<String> {
    let mut parts = vec![String::from("{\"events\":[")];
    for (i, share) in events.into_shares().into_iter().enumerate() {
        if i > 0 {
            parts.push(String::from(","));
        }
        parts.push(share);
    }
    parts.push(format!("],\"nextAfter\":{next_after},\"headPosition\":{head_position}}}"));
    parts
}

/// A page of the audit view.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct AuditPage {
    items: Vec<AuditItem>,
    next_cursor: Option<String>,
}

/// One audited event: who, what, the outcome, and for a refusal the check that refused.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
struct AuditItem {
    position: i64,
    occurred_at: String,
    event_type: String,
    /// allowed | refused
    outcome: String,
    actor: Option<Actor>,
    agent_id: Option<String>,
    org_id: Option<String>,
    summary: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    refused_by: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<String>,
}

#[derive(Serialize, JsonSchema)]
struct Actor {
    kind: String,
    id: String,
}

const ACTOR_KINDS: &[&str] = &["agent", "org", "super-admin", "system", "provider", "cli"];

/// The reply's form of a row of the audit view.
fn view(row: &AuditRow) -> AuditItem {
    let actor = match (&row.actor_kind, &row.actor_id) {
        (Some(kind), Some(id)) => Some(Actor { kind: kind.clone(), id: id.clone() }),
        _ => None,
    };
    AuditItem {
        position: row.position,
        occurred_at: rfc3339(row.occurred_at),
        event_type: row.event_type.clone(),
        outcome: row.outcome.clone(),
        actor,
        agent_id: row.agent_id.clone(),
        org_id: row.org_id.clone(),
        summary: row.summary(),
        refused_by: row.refused_by.clone(),
        code: row.code.clone(),
        rule: row.rule.clone(),
    }
}

/// `GET /admin/api/audit?agentId&subject&from&to&eventType&outcome&actorKind&orgId&cursor&limit`:
/// `{items, nextCursor}` in position order. The statement names only the filters given, so each
/// query uses the index that serves it (org, agent, or the subject's blind index).
async fn audit(State(app): State<AppState>, admin: Admin, q: Params) -> Result<Json<AuditPage>, ApiError> {
    // Keyset paging by position, as every list (`paging::Page`).
    let page = q.page::<i64>()?;
    let (from, to) = (q.time("from")?, q.time("to")?);
    if let Some(kind) = q.get("outcome").filter(|o| !["allowed", "refused"].contains(o)) {
        return Err(invalid("outcome", format!("must be allowed or refused, not \"{kind}\"")));
    }
    if let Some(kind) = q.get("actorKind").filter(|k| !ACTOR_KINDS.contains(k)) {
        return Err(invalid("actorKind", format!("must be one of {}, not \"{kind}\"", ACTOR_KINDS.join(" "))));
    }
    if let Some(t) = q.get("eventType") {
        if t.len() > 64 || !t.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(invalid("eventType", "must be an event type name such as MessageSent"));
        }
    }
    let subject_ref = match q.get("subject") {
        Some(raw) => {
            let address = contacts::address("subject", raw)?;
            Some(app.store.keystore().data_keys().blind_index(&address.value))
        }
        None => None,
    };
    let org = read_scope(&app, &admin.principal, q.id("orgId")?).await?;
    if let Some(agent_id) = q.get("agentId") {
        addressable_agent(&app, &admin.principal, agent_id).await?;
    }

    let filter = AuditFilter {
        after: page.after.unwrap_or(0),
        org_id: org,
        agent_id: q.get("agentId").map(str::to_string),
        subject_ref,
        event_type: q.get("eventType").map(str::to_string),
        outcome: q.get("outcome").map(str::to_string),
        actor_kind: q.get("actorKind").map(str::to_string),
        from,
        to,
    };
    let rows = audit_read::items(&app.pool, &filter, page.fetch()).await.map_err(ApiError::internal)?;
    let (rows, next_cursor) = page.finish(rows, |row| row.position);
    Ok(Json(AuditPage { items: rows.iter().map(view).collect(), next_cursor }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::Utc;

    /// The feed's reply, assembled around envelopes already written, is what serde writes for
    /// `EventPage` (the type the OpenAPI document describes it by).
    #[test]
    fn a_written_page_is_what_serde_writes_for_the_event_page() {
        let envelope = |position: i64, org_id: Option<&str>| envelope::Envelope {
            position,
            event_id: uuid::Uuid::from_u128(position as u128),
            aggregate_type: "agent".into(),
            aggregate_id: "a \"1\"".into(),
            sequence: 1,
            event_type: "DncAdded".into(),
            event_version: "1.0".into(),
            occurred_at: "2026-12-06T14:30:00.000Z".into(),
            org_id: org_id.map(Into::into),
            actor: Some(serde_json::value::RawValue::from_string(r#"{"id": "x", "kind": "agent"}"#.into()).unwrap()),
            request_id: None,
            transport: None,
            provenance: None,
            payload: serde_json::value::RawValue::from_string(r#"{"DncAdded": {"address": "+12025550100"}}"#.into())
                .unwrap(),
            prev_hash: "0".repeat(64),
            hash: "1".repeat(64),
            redactions: Vec::new(),
            metadata: None,
        };
        let pages = || {
            [
                (vec![], 0, 0),
                (vec![envelope(4096, Some("o1"))], 4096, 9000),
                (vec![envelope(1, None), envelope(2, Some("o"))], 2, -1),
            ]
        };
        for (i, (events, next_after, head_position)) in pages().into_iter().enumerate() {
            let texts: Vec<String> = events.iter().map(|e| serde_json::to_string(e).unwrap()).collect();
            let expected = serde_json::to_string(&EventPage { events, next_after, head_position }).unwrap();
            // However the envelopes were shared out when written.
            for split in 0..=texts.len() {
                let shares = [texts[..split].join(","), texts[split..].join(",")];
                let written =
                    envelope::WrittenEnvelopes::of_texts(shares.into_iter().filter(|s| !s.is_empty()).collect());
                assert_eq!(
                    page_parts(written, next_after, head_position).concat(),
                    expected,
                    "page {i}, split at {split}"
                );
            }
        }
    }

    #[test]
    fn cursors_round_trip_and_foreign_ones_are_refused() {
        use crate::paging::Page;
        const AUDIT: &str = "/admin/api/audit";
        let (_, next) = Page::<i64>::from_query(AUDIT, None, Some("1")).unwrap().finish(vec![123_456, 123_457], |p| *p);
        assert_eq!(Page::<i64>::from_query(AUDIT, next.as_deref(), None).unwrap().after, Some(123_456));
        assert_eq!(Page::<i64>::from_query(AUDIT, Some("bm9wZQ"), None).unwrap_err().extra["field"], "cursor");
        assert!(Page::<i64>::from_query(AUDIT, Some("!!"), None).is_err());
        // The alerts list pages by position too: its cursor is not the audit view's.
        assert!(Page::<i64>::from_query(AUDIT, Some("WyIvYWRtaW4vYXBpL2FsZXJ0cyIsNF0"), None).is_err());
    }

    #[test]
    fn summaries_name_the_actor_the_agent_and_the_refusing_check() {
        let item = AuditRow {
            position: 1,
            occurred_at: Utc::now(),
            event_type: "MessageBlocked".into(),
            outcome: "refused".into(),
            actor_kind: Some("agent".into()),
            actor_id: Some("a1".into()),
            agent_id: Some("a1".into()),
            org_id: Some("o1".into()),
            refused_by: Some("dnc".into()),
            code: Some("compliance_blocked".into()),
            rule: Some("dnc".into()),
        };
        assert_eq!(item.summary(), "MessageBlocked by agent a1: refused by dnc (compliance_blocked, rule dnc)");
        let by_admin = AuditRow {
            event_type: "AgentChannelsBlocked".into(),
            outcome: "allowed".into(),
            actor_kind: Some("org".into()),
            actor_id: Some("o1".into()),
            ..item
        };
        assert_eq!(by_admin.summary(), "AgentChannelsBlocked by org o1 (agent a1)");
    }
}

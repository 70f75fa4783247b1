//! The directory: organizations, agents and bearer tokens as the identity layer reads them.
//! Identity events are rare, so these projections write row by row; what matters is that a
//! token issued or revoked is visible the moment its command returns (callers wait for the
//! checkpoint, `Store::await_projection`) and that other instances hear of revocations at once
//! (`NOTIFY commguard_identity`, sent in the projection's transaction, so only on commit).

use serde_json::{json, Value};
use sqlx::PgConnection;

use crate::{BoxFuture, Projection, ProjectionError, StoredEvent, Tables};

pub mod read;

/// The channel other instances listen on to drop cached tokens and close sessions.
pub const IDENTITY_CHANNEL: &str = "commguard_identity";

pub struct OrgsProjection;
pub struct AgentsProjection;
pub struct TokensProjection;
pub struct LimitsProjection;

pub(crate) fn payload(event: &StoredEvent) -> Value {
    event.payload.parse().unwrap_or(Value::Null)
}

/// The events these projections read, with their payloads parsed — and only those: messages,
/// calls and refusals dominate the store, and parsing their payloads here would be wasted work.
const ORG_EVENTS: &[&str] = &[
    "OrganizationCreated",
    "OrganizationApproved",
    "OrganizationSuspended",
    "OrganizationUnsuspended",
    "OrgSettingsChanged",
];
const AGENT_EVENTS: &[&str] = &["AgentProvisioned", "AgentDeprovisioned", "AgentChannelsBlocked"];
const TOKEN_EVENTS: &[&str] = &["AgentTokenIssued", "OrgTokenIssued", "AgentTokenRevoked", "OrgTokenRevoked"];
const LIMIT_EVENTS: &[&str] = &["LimitsChanged", "BillingConfigChanged"];

pub(crate) fn relevant<'e>(
    events: &'e [StoredEvent],
    aggregate_types: &'e [&str],
    event_types: &'e [&str],
) -> impl Iterator<Item = (&'e StoredEvent, Value)> + 'e {
    events
        .iter()
        .filter(|e| {
            aggregate_types.contains(&e.aggregate_type.as_str()) && event_types.contains(&e.event_type.as_str())
        })
        .map(|e| (e, payload(e)))
}

pub(crate) fn str_field<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get(key).and_then(Value::as_str)
}

/// Tells every instance about an identity change, when the tables being written are live.
async fn notify(conn: &mut PgConnection, tables: &Tables, message: Value) -> Result<(), sqlx::Error> {
    if tables.is_live() {
        sqlx::query("SELECT pg_notify($1, $2)").bind(IDENTITY_CHANNEL).bind(message.to_string()).execute(conn).await?;
    }
    Ok(())
}

impl Projection for OrgsProjection {
    fn name(&self) -> &'static str {
        "orgs"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["orgs"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(ORG_EVENTS)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let orgs = tables.get("orgs");
            for (event, p) in relevant(events, &["organization"], ORG_EVENTS) {
                let (id, at) = (&event.aggregate_id, event.occurred_at);
                match event.event_type.as_str() {
                    "OrganizationCreated" => {
                        sqlx::query(&format!(
                            "INSERT INTO {orgs} (org_id, name, slug, mode, a2p_registered, settings, max_agents, created_at, updated_at)
                             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $8) ON CONFLICT (org_id) DO NOTHING"
                        ))
                        .bind(id)
                        .bind(str_field(&p, "name").unwrap_or_default())
                        .bind(str_field(&p, "slug").unwrap_or_default())
                        .bind(str_field(&p, "mode").unwrap_or("sandbox"))
                        .bind(p["a2pRegistered"].as_bool().unwrap_or(false))
                        .bind(if p["settings"].is_object() { p["settings"].clone() } else { json!({}) })
                        .bind(p["maxAgents"].as_i64().unwrap_or(0) as i32)
                        .bind(at)
                        .execute(&mut *conn)
                        .await?;
                    }
                    "OrganizationApproved" | "OrganizationSuspended" | "OrganizationUnsuspended" => {
                        let mode = match event.event_type.as_str() {
                            "OrganizationApproved" => "production",
                            "OrganizationSuspended" => "suspended",
                            _ => str_field(&p, "restoredMode").unwrap_or("sandbox"),
                        };
                        sqlx::query(&format!("UPDATE {orgs} SET mode = $2, updated_at = $3 WHERE org_id = $1"))
                            .bind(id)
                            .bind(mode)
                            .bind(at)
                            .execute(&mut *conn)
                            .await?;
                        notify(conn, tables, json!({"org": id, "mode": mode})).await?;
                    }
                    "OrgSettingsChanged" => {
                        let after = &p["after"];
                        sqlx::query(&format!(
                            "UPDATE {orgs} SET a2p_registered = $2, max_agents = $3, max_spend_per_day = $4,
                                 max_spend_per_month = $5, updated_at = $6 WHERE org_id = $1"
                        ))
                        .bind(id)
                        .bind(after["a2pRegistered"].as_bool().unwrap_or(false))
                        .bind(after["maxAgents"].as_i64().unwrap_or(0) as i32)
                        .bind(after["maxSpendPerDay"].as_i64())
                        .bind(after["maxSpendPerMonth"].as_i64())
                        .bind(at)
                        .execute(&mut *conn)
                        .await?;
                    }
                    _ => {}
                }
            }
            Ok(())
        })
    }
}

impl Projection for AgentsProjection {
    fn name(&self) -> &'static str {
        "agents"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["agents"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(AGENT_EVENTS)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let agents = tables.get("agents");
            for (event, p) in relevant(events, &["agent"], AGENT_EVENTS) {
                let (id, at) = (&event.aggregate_id, event.occurred_at);
                match event.event_type.as_str() {
                    "AgentProvisioned" => {
                        sqlx::query(&format!(
                            "INSERT INTO {agents} (agent_id, org_id, display_name, agent_gender, country, status,
                                 capabilities, channels, mode, provisioned_at, updated_at, provider_refs)
                             VALUES ($1, $2, $3, $4, $5, 'active', $6, $7, $8, $9, $9, $10) ON CONFLICT (agent_id) DO NOTHING"
                        ))
                        .bind(id)
                        .bind(str_field(&p, "orgId").unwrap_or_default())
                        .bind(str_field(&p, "displayName").unwrap_or_default())
                        .bind(str_field(&p, "agentGender").unwrap_or("male"))
                        .bind(str_field(&p, "country").unwrap_or("US"))
                        .bind(p.get("capabilities").cloned().unwrap_or(json!({})))
                        .bind(p.get("channels").cloned().unwrap_or(json!({})))
                        .bind(str_field(&p, "mode").unwrap_or("sandbox"))
                        .bind(at)
                        .bind(p.get("providerRefs").filter(|v| v.is_object()).cloned().unwrap_or(json!({})))
                        .execute(&mut *conn)
                        .await?;
                    }
                    "AgentDeprovisioned" => {
                        sqlx::query(&format!(
                            "UPDATE {agents} SET status = 'deprovisioned', updated_at = $2 WHERE agent_id = $1"
                        ))
                        .bind(id)
                        .bind(at)
                        .execute(&mut *conn)
                        .await?;
                        notify(conn, tables, json!({"agent": id, "status": "deprovisioned"})).await?;
                    }
                    "AgentChannelsBlocked" => {
                        sqlx::query(&format!(
                            "UPDATE {agents} SET blocked_channels = $2, updated_at = $3 WHERE agent_id = $1"
                        ))
                        .bind(id)
                        .bind(p.get("blockedChannels").cloned().unwrap_or(json!([])))
                        .bind(at)
                        .execute(&mut *conn)
                        .await?;
                    }
                    _ => {}
                }
            }
            Ok(())
        })
    }
}

impl Projection for TokensProjection {
    fn name(&self) -> &'static str {
        "tokens"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["tokens"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(TOKEN_EVENTS)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let tokens = tables.get("tokens");
            for (event, p) in relevant(events, &["agent", "organization"], TOKEN_EVENTS) {
                let (kind, agent_id, org_id) = match event.aggregate_type.as_str() {
                    "agent" => ("agent", Some(event.aggregate_id.as_str()), event.org_id.clone().unwrap_or_default()),
                    "organization" => ("org", None, event.aggregate_id.clone()),
                    _ => continue,
                };
                match event.event_type.as_str() {
                    "AgentTokenIssued" | "OrgTokenIssued" => {
                        sqlx::query(&format!(
                            "INSERT INTO {tokens} (token_hash, token_id, kind, agent_id, org_id, label, created_at)
                             VALUES ($1, $2::text::uuid, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING"
                        ))
                        .bind(str_field(&p, "tokenHash").unwrap_or_default())
                        .bind(str_field(&p, "tokenId").unwrap_or_default())
                        .bind(kind)
                        .bind(agent_id)
                        .bind(&org_id)
                        .bind(str_field(&p, "label"))
                        .bind(event.occurred_at)
                        .execute(&mut *conn)
                        .await?;
                    }
                    "AgentTokenRevoked" | "OrgTokenRevoked" => {
                        let ids: Vec<String> = p["tokenIds"]
                            .as_array()
                            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
                            .unwrap_or_default();
                        let hashes: Vec<String> = sqlx::query_scalar(&format!(
                            "UPDATE {tokens} SET revoked_at = $2
                             WHERE token_id = ANY($1::text[]::uuid[]) AND revoked_at IS NULL RETURNING token_hash"
                        ))
                        .bind(&ids)
                        .bind(event.occurred_at)
                        .fetch_all(&mut *conn)
                        .await?;
                        notify(conn, tables, json!({"revoked": ids, "hashes": hashes})).await?;
                    }
                    _ => {}
                }
            }
            Ok(())
        })
    }
}

impl Projection for LimitsProjection {
    fn name(&self) -> &'static str {
        "limits"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["agent_limits"]
    }

    fn event_types(&self) -> Option<&'static [&'static str]> {
        Some(LIMIT_EVENTS)
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            let table = tables.get("agent_limits");
            for (event, p) in relevant(events, &["agent"], LIMIT_EVENTS) {
                let sql = match event.event_type.as_str() {
                    "LimitsChanged" => format!(
                        "INSERT INTO {table} (agent_id, overrides, updated_at) VALUES ($1, $2, $3)
                         ON CONFLICT (agent_id) DO UPDATE SET overrides = EXCLUDED.overrides, updated_at = EXCLUDED.updated_at"
                    ),
                    "BillingConfigChanged" => format!(
                        "INSERT INTO {table} (agent_id, tier, markup_percent, updated_at) VALUES ($1, $2->>'tier', ($2->>'markupPercent')::double precision, $3)
                         ON CONFLICT (agent_id) DO UPDATE SET tier = EXCLUDED.tier, markup_percent = EXCLUDED.markup_percent,
                             updated_at = EXCLUDED.updated_at"
                    ),
                    _ => continue,
                };
                let value = if event.event_type == "LimitsChanged" {
                    p.get("overridesAfter").cloned().unwrap_or(json!({}))
                } else {
                    p
                };
                sqlx::query(&sql)
                    .bind(&event.aggregate_id)
                    .bind(value)
                    .bind(event.occurred_at)
                    .execute(&mut *conn)
                    .await?;
            }
            Ok(())
        })
    }
}

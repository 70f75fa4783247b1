//! The hash chains of the event store (docs/events.md#hash-chain), for the console's Verify view and any
//! auditor: `GET /admin/api/chains` lists each aggregate's chain head (`chain_heads`), and
//! `GET /admin/api/chains/{aggregateType}/{aggregateId}/events` one aggregate's events in sequence
//! order, raw (payloads as stored, with the stored metadata), so the caller recomputes every hash
//! itself. Both are for the master token only: raw payloads are S-only (docs/admin-api.md `/events?raw=true`),
//! and a chain head list without an org column cannot be scoped to one org cheaply.

use axum::extract::State;
use axum::Json;
use serde::Serialize;

use super::admin::Admin;
use super::extract::Path;
use super::openapi::{ApiRouter, Body, Doc, CURSOR, LIMIT};
use super::params::Params;
use crate::auth::{guard, Role};
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::{envelope, feed};

pub fn routes() -> ApiRouter {
    ApiRouter::new()
        .get(
            "/admin/api/chains",
            chains,
            Doc {
                who: "S",
                summary: "The head of each aggregate's hash chain (last sequence and hash)",
                query: &[("aggregateType", false, "string", "one aggregate type, e.g. agent"), CURSOR, LIMIT],
                body: Body::None,
            },
        )
        .get(
            "/admin/api/chains/{aggregateType}/{aggregateId}/events",
            chain_events,
            Doc {
                who: "S",
                summary: "One aggregate's events in sequence order, raw (payload and metadata as stored), and its chain head",
                query: &[
                    ("after", false, "integer", "the nextAfter (a sequence) of the previous page (0)"),
                    ("limit", false, "integer", "1-1000 (500)"),
                ],
                body: Body::None,
            },
        )
}

/// One chain head.
#[derive(Serialize, schemars::JsonSchema, sqlx::FromRow)]
#[serde(rename_all = "camelCase")]
pub struct ChainHead {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub last_sequence: i64,
    pub last_hash: String,
}

#[derive(Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainPage {
    pub chains: Vec<ChainHead>,
    pub next_cursor: Option<String>,
}

#[derive(Serialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainEvents {
    pub head: ChainHead,
    /// Raw docs/events.md#envelope envelopes, each with its stored `metadata`.
    pub events: Vec<envelope::Envelope>,
    /// The last sequence of this page (`after` when the page is empty).
    pub next_after: i64,
}

/// `GET /admin/api/chains?aggregateType&cursor&limit` → `{chains, nextCursor}`, by type then id.
async fn chains(State(app): State<AppState>, admin: Admin, params: Params) -> Result<Json<ChainPage>, ApiError> {
    guard::require_role(&admin.principal, Role::SuperAdmin)?;
    let kind = params.get("aggregateType").map(str::to_string);
    let page = params.page::<(String, String)>()?;
    let (after_type, after_id) = page.after.clone().unzip();
    let rows: Vec<ChainHead> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, last_sequence, last_hash FROM chain_heads
         WHERE ($1::text IS NULL OR aggregate_type = $1)
           AND ($2::text IS NULL OR (aggregate_type, aggregate_id) > ($2, $3))
         ORDER BY aggregate_type, aggregate_id LIMIT $4",
    )
    .bind(kind)
    .bind(after_type)
    .bind(after_id)
    .bind(page.fetch())
    .fetch_all(&app.pool)
    .await
    .map_err(ApiError::internal)?;
    let (chains, next_cursor) = page.finish(rows, |h| (h.aggregate_type.clone(), h.aggregate_id.clone()));
    Ok(Json(ChainPage { chains, next_cursor }))
}

/// `GET /admin/api/chains/{aggregateType}/{aggregateId}/events?after&limit` →
/// `{head, events, nextAfter}`: the stream read by its primary key, whatever the horizon (the
/// chain head and the events it covers are committed together).
async fn chain_events(
    State(app): State<AppState>,
    admin: Admin,
    Path((kind, id)): Path<(String, String)>,
    params: Params,
) -> Result<Json<ChainEvents>, ApiError> {
    guard::require_role(&admin.principal, Role::SuperAdmin)?;
    let after = params.integer("after", 0, (0, i64::MAX))?;
    let limit = params.integer("limit", 500, (1, 1000))?;
    let head: ChainHead = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, last_sequence, last_hash FROM chain_heads
         WHERE aggregate_type = $1 AND aggregate_id = $2",
    )
    .bind(&kind)
    .bind(&id)
    .fetch_optional(&app.pool)
    .await
    .map_err(ApiError::internal)?
    .ok_or_else(|| ApiError::not_found(format!("No chain for aggregate \"{kind}/{id}\"")))?;
    let sql = format!(
        "SELECT {} FROM events WHERE aggregate_type = $1 AND aggregate_id = $2 AND sequence > $3
         ORDER BY sequence LIMIT $4",
        feed::COLUMNS
    );
    let rows = sqlx::query(&sql)
        .bind(&kind)
        .bind(&id)
        .bind(after)
        .bind(limit)
        .fetch_all(&app.pool)
        .await
        .map_err(ApiError::internal)?;
    let stored =
        rows.iter().map(feed::stored_event_from_row).collect::<Result<Vec<_>, _>>().map_err(ApiError::internal)?;
    let next_after = stored.last().map_or(after, |e| e.sequence);
    let events = envelope::envelopes(app.store.keystore(), stored, true).await.map_err(ApiError::internal)?;
    Ok(Json(ChainEvents { head, events, next_after }))
}

//! Replay protection (docs/webhooks.md#replay), shared by every instance through Postgres: the first use of
//! a nonce is recorded atomically; a reuse inside the window is a replay; a reuse after it finds
//! the message already processed and changes nothing (docs/webhooks.md#sms step 4). Nonces are
//! never pruned: a Twilio signature has no timestamp and never expires, so a captured request
//! sent again any time later is told apart from a new one only by its nonce (a row of a few
//! dozen bytes per webhook, beside the events each one records for good). A handler that
//! fails (5xx) gives its nonce back (`release`), so the provider's retry is processed. The same
//! table holds one-time marks (`mark_once`: a call's cost is applied by its first terminal status).

use chrono::{DateTime, Duration, Utc};
use sqlx::PgPool;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// First use: process it.
    Fresh,
    /// Used within the window: refuse.
    Replay,
    /// Used before the window: already processed, no effect.
    Stale,
}

pub async fn claim(pool: &PgPool, nonce: &str, now: DateTime<Utc>, window_seconds: i64) -> Result<Claim, sqlx::Error> {
    // The insert and the read of an existing row are one statement: of two racing requests
    // exactly one inserts, the other sees its row.
    let (inserted, seen_at): (bool, Option<DateTime<Utc>>) = sqlx::query_as(
        "WITH fresh AS (INSERT INTO webhook_nonces (nonce, seen_at) VALUES ($1, $2)
                        ON CONFLICT (nonce) DO NOTHING RETURNING 1)
         SELECT EXISTS (SELECT 1 FROM fresh), (SELECT seen_at FROM webhook_nonces WHERE nonce = $1)",
    )
    .bind(nonce)
    .bind(now)
    .fetch_one(pool)
    .await?;
    Ok(match (inserted, seen_at) {
        (true, _) => Claim::Fresh,
        // Lost a race to an insert not yet visible to this snapshot: the other one is processing it.
        (false, None) => Claim::Replay,
        (false, Some(seen)) if now - seen <= Duration::seconds(window_seconds) => Claim::Replay,
        (false, Some(_)) => Claim::Stale,
    })
}

/// Gives back a nonce claimed at `claimed_at` (its handler failed): only that claim's row goes,
/// so a later claim by another request is never undone.
pub async fn release(pool: &PgPool, nonce: &str, claimed_at: DateTime<Utc>) -> Result<(), sqlx::Error> {
    sqlx::query("DELETE FROM webhook_nonces WHERE nonce = $1 AND seen_at = $2")
        .bind(nonce)
        .bind(claimed_at)
        .execute(pool)
        .await?;
    Ok(())
}

/// Records `key` unless it is already recorded, whenever that was: true for the one caller (on
/// any instance) that recorded it.
pub async fn mark_once(pool: &PgPool, key: &str, now: DateTime<Utc>) -> Result<bool, sqlx::Error> {
    let done =
        sqlx::query("INSERT INTO webhook_nonces (nonce, seen_at) VALUES ($1, $2) ON CONFLICT (nonce) DO NOTHING")
            .bind(key)
            .bind(now)
            .execute(pool)
            .await?;
    Ok(done.rows_affected() == 1)
}

//! `commguard audit verify`: walks every hash chain from its first event, recomputing each hash,
//! checks that `chain_heads` agrees with the last event (a truncated tail shows there), that the
//! columns the feed reads and filters by (event id, instant, org, and the hashes it serves) are the
//! hashed metadata's, and that each stream's events stand in the global order in sequence order.

use chrono::{DateTime, Utc};
use futures::TryStreamExt;
use serde::Serialize;
use sqlx::PgPool;
use uuid::Uuid;

use super::chain::{self, ChainLink};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Broken {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub reason: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Report {
    pub aggregates: u64,
    pub events: u64,
    pub broken: Vec<Broken>,
}

impl Report {
    pub fn is_ok(&self) -> bool {
        self.broken.is_empty()
    }
}

/// One stored event: its chain's columns, and the columns the feed and its filters read beside
/// the hashed metadata (event id, instant, org, the hashes) and its global position.
#[derive(sqlx::FromRow)]
struct Stored {
    #[sqlx(flatten)]
    link: ChainLink,
    #[sqlx(flatten)]
    columns: Columns,
    position: i64,
}

/// The columns of an event that the feed serves or filters by, stored beside its hashed metadata.
#[derive(sqlx::FromRow)]
struct Columns {
    event_id: Uuid,
    occurred_at: DateTime<Utc>,
    org_id: Option<String>,
    prev_hash: String,
    hash: String,
}

/// Verifies every chain, or only `aggregate` (`(type, id)`).
///
/// The events and the chain heads are read in one snapshot (a read-only repeatable-read
/// transaction): read one after the other, an append committed between them showed as a head
/// ahead of its chain, honest history reported broken while servers write.
pub async fn verify(pool: &PgPool, aggregate: Option<(&str, &str)>) -> Result<Report, sqlx::Error> {
    let (kind, id) = aggregate.unzip();
    let mut snapshot = pool.begin().await?;
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY").execute(&mut *snapshot).await?;
    let mut rows = sqlx::query_as::<_, Stored>(
        "SELECT aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
                event_id, occurred_at, org_id, prev_hash, hash, position
         FROM events WHERE ($1::text IS NULL OR (aggregate_type = $1 AND aggregate_id = $2))
         ORDER BY aggregate_type, aggregate_id, sequence",
    )
    .bind(kind)
    .bind(id)
    .fetch(&mut *snapshot);

    let mut report = Report::default();
    let mut current: Vec<ChainLink> = Vec::new();
    let mut tails: Vec<(String, String, i64, String)> = Vec::new();
    let mut seen: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
    // The position of the stream's previous event: a stream's events are committed in sequence
    // order, so their positions rise with it (projections apply them in position order).
    let mut previous_position = i64::MIN;
    while let Some(Stored { link, columns, position }) = rows.try_next().await? {
        if current
            .first()
            .is_some_and(|c| c.aggregate_type != link.aggregate_type || c.aggregate_id != link.aggregate_id)
        {
            check_chain(std::mem::take(&mut current), &mut report, &mut tails, &mut seen);
            previous_position = i64::MIN;
        }
        let (t, i, sequence) = (&link.aggregate_type, &link.aggregate_id, link.sequence);
        if let Some(column) = unhashed_column(&link.metadata, &columns) {
            let reason = format!("column {column} does not match the event's hashed metadata");
            report.broken.push(broken(t, i, sequence, &reason));
        }
        if position <= previous_position {
            let reason = format!("position {position} is not after the previous event's ({previous_position})");
            report.broken.push(broken(t, i, sequence, &reason));
        }
        previous_position = position;
        current.push(link);
    }
    check_chain(current, &mut report, &mut tails, &mut seen);
    drop(rows);

    // Every head must match the last event of its chain, and every chain must have a head.
    let heads: Vec<(String, String, i64, String)> = sqlx::query_as(
        "SELECT aggregate_type, aggregate_id, last_sequence, last_hash FROM chain_heads
         WHERE ($1::text IS NULL OR (aggregate_type = $1 AND aggregate_id = $2))",
    )
    .bind(kind)
    .bind(id)
    .fetch_all(&mut *snapshot)
    .await?;
    snapshot.commit().await?;
    let heads: std::collections::HashMap<(String, String), (i64, String)> =
        heads.into_iter().map(|(t, i, s, h)| ((t, i), (s, h))).collect();
    for (t, i, last_sequence, last_hash) in &tails {
        match heads.get(&(t.clone(), i.clone())) {
            Some((s, h)) if s == last_sequence && h == last_hash => {}
            Some((s, _)) if s > last_sequence => report.broken.push(Broken {
                aggregate_type: t.clone(),
                aggregate_id: i.clone(),
                sequence: last_sequence + 1,
                reason: format!("chain head is at sequence {s}: events after {last_sequence} are missing"),
            }),
            Some(_) => report.broken.push(broken(t, i, *last_sequence, "chain head does not match the last event")),
            None => report.broken.push(broken(t, i, *last_sequence, "chain head missing")),
        }
    }
    for ((t, i), (s, _)) in &heads {
        if !seen.contains(&(t.clone(), i.clone())) {
            report.broken.push(broken(t, i, 1, &format!("chain head at sequence {s} but no events")));
        }
    }
    // A stream asked for by name that has neither events nor a head: nothing of it verifies.
    if let (Some((t, i)), true) = (aggregate, seen.is_empty() && heads.is_empty()) {
        report.broken.push(broken(t, i, 0, "no events and no chain head"));
    }
    Ok(report)
}

fn check_chain(
    links: Vec<ChainLink>,
    report: &mut Report,
    tails: &mut Vec<(String, String, i64, String)>,
    seen: &mut std::collections::HashSet<(String, String)>,
) {
    let Some(first) = links.first() else { return };
    let (t, i) = (first.aggregate_type.clone(), first.aggregate_id.clone());
    seen.insert((t.clone(), i.clone()));
    report.aggregates += 1;
    report.events += links.len() as u64;
    match chain::verify_chain(links.into_iter()) {
        Ok((count, last_hash)) => tails.push((t, i, count as i64, last_hash)),
        Err(b) => report.broken.push(broken(&t, &i, b.sequence, &b.reason)),
    }
}

/// The first of the columns the feed reads (`event_id`, `occurred_at`, `org_id`, `prev_hash`,
/// `hash`) that disagrees with the hashed metadata (`eventId`, `occurredAt` to the millisecond,
/// `orgId`, `prevHash`, `hash`): an event moved to another org's feed, re-dated, or served with
/// other hashes than the chain it verifies in.
fn unhashed_column(metadata: &serde_json::Value, columns: &Columns) -> Option<&'static str> {
    let field = |name: &str| metadata.get(name).and_then(|v| v.as_str());
    if field("eventId") != Some(columns.event_id.to_string().as_str()) {
        return Some("event_id");
    }
    if field("occurredAt") != Some(super::rfc3339(columns.occurred_at).as_str()) {
        return Some("occurred_at");
    }
    if field("orgId") != columns.org_id.as_deref() {
        return Some("org_id");
    }
    if field("prevHash") != Some(columns.prev_hash.as_str()) {
        return Some("prev_hash");
    }
    if field("hash") != Some(columns.hash.as_str()) {
        return Some("hash");
    }
    None
}

fn broken(t: &str, i: &str, sequence: i64, reason: &str) -> Broken {
    Broken { aggregate_type: t.into(), aggregate_id: i.into(), sequence, reason: reason.into() }
}

//! The audit view (docs/admin-api.md `/admin/api/audit`): one row per event with who did what, whether
//! it was allowed or refused, which check refused it, and which data subject it is about. It also
//! proves stream order: a batch that would apply a stream's events out of sequence fails instead
//! of being skipped.
//!
//! **Subject.** `subject_ref` is the blind index (docs/privacy.md#keys-and-crypto-shredding) of the phone number or email an event is
//! about, so `/audit?subject=` and `commguard audit export` find a subject's events by index
//! instead of decrypting history. Stored events hold personal fields only sealed, so the view
//! reads the subject from what the store keeps beside them: the stream id of `subject` streams
//! (`<subjectRef>`) and `contact` streams (`<orgId>:<subjectRef>`); otherwise the subject key
//! that seals a personal field — each sealed field lists its key ids, and `data_keys` records the
//! `subject_ref` of every subject key. Key rows are never deleted (destroying a key clears only
//! its bytes), so a rebuild from position 0 finds the same subjects, erased ones included. An
//! event whose fields name several subjects keeps the smallest reference (no event type does so
//! today); migration 0018 backfilled existing rows with this same rule in SQL.

pub mod read;

use std::borrow::Cow;
use std::collections::HashMap;

use serde::Deserialize;
use serde_json::Value;
use sqlx::PgConnection;
use uuid::Uuid;

use crate::{BoxFuture, Projection, ProjectionError, StoredEvent, Tables};

pub struct AuditProjection;

/// Event types that record a refusal rather than an allowed action.
const REFUSALS: &[&str] = &["MessageBlocked", "CallBlocked", "ActionRefused", "AuthFailed", "WebhookRejected"];

/// Column arrays for one set-based insert.
#[derive(Default)]
struct Rows {
    position: Vec<i64>,
    occurred_at: Vec<chrono::DateTime<chrono::Utc>>,
    aggregate_type: Vec<String>,
    aggregate_id: Vec<String>,
    sequence: Vec<i64>,
    event_type: Vec<String>,
    outcome: Vec<&'static str>,
    actor_kind: Vec<Option<String>>,
    actor_id: Vec<Option<String>>,
    agent_id: Vec<Option<String>>,
    org_id: Vec<Option<String>>,
    refused_by: Vec<Option<String>>,
    code: Vec<Option<String>>,
    rule: Vec<Option<String>>,
    subject_ref: Vec<Option<String>>,
}

/// The few payload fields the audit view reads; parsed without building a JSON tree.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct PayloadFields<'a> {
    #[serde(borrow)]
    agent_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    refused_by: Option<Cow<'a, str>>,
    #[serde(borrow)]
    code: Option<Cow<'a, str>>,
    #[serde(borrow)]
    rule: Option<Cow<'a, str>>,
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct MetadataFields<'a> {
    #[serde(borrow)]
    actor: Option<Actor<'a>>,
    #[serde(borrow)]
    provenance: Option<Provenance<'a>>,
}

#[derive(Deserialize)]
struct Actor<'a> {
    #[serde(borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    id: Cow<'a, str>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Provenance<'a> {
    #[serde(borrow, default)]
    refused_by: Option<Cow<'a, str>>,
}

/// The columns of an event's audit row that are not copied from the event as stored.
struct Derived<'a> {
    outcome: &'static str,
    actor_kind: Option<Cow<'a, str>>,
    actor_id: Option<Cow<'a, str>>,
    agent_id: Option<Cow<'a, str>>,
    refused_by: Option<Cow<'a, str>>,
    code: Option<Cow<'a, str>>,
    rule: Option<Cow<'a, str>>,
}

impl<'a> Derived<'a> {
    fn of(event: &'a StoredEvent) -> Self {
        // Fields of another shape (an object where a string is expected) read as absent.
        let payload: PayloadFields = serde_json::from_str(event.payload.get()).unwrap_or_default();
        let metadata: MetadataFields = serde_json::from_str(event.metadata.get()).unwrap_or_default();
        let (actor_kind, actor_id) = match metadata.actor {
            Some(a) => (Some(a.kind), Some(a.id)),
            None => (None, None),
        };
        Self {
            outcome: if REFUSALS.contains(&event.event_type.as_str()) { "refused" } else { "allowed" },
            actor_kind,
            actor_id,
            agent_id: if event.aggregate_type == "agent" {
                Some(Cow::Borrowed(event.aggregate_id.as_str()))
            } else {
                payload.agent_id
            },
            refused_by: payload.refused_by.or_else(|| metadata.provenance.and_then(|p| p.refused_by)),
            code: payload.code,
            rule: payload.rule,
        }
    }
}

impl Rows {
    fn push(&mut self, event: &StoredEvent, subject_ref: Option<String>) {
        let d = Derived::of(event);
        let own = |v: Option<Cow<str>>| v.map(Cow::into_owned);
        self.position.push(event.position);
        self.occurred_at.push(event.occurred_at);
        self.aggregate_type.push(event.aggregate_type.clone());
        self.aggregate_id.push(event.aggregate_id.clone());
        self.sequence.push(event.sequence);
        self.event_type.push(event.event_type.clone());
        self.outcome.push(d.outcome);
        self.actor_kind.push(own(d.actor_kind));
        self.actor_id.push(own(d.actor_id));
        self.agent_id.push(own(d.agent_id));
        self.org_id.push(event.org_id.clone());
        self.refused_by.push(own(d.refused_by));
        self.code.push(own(d.code));
        self.rule.push(own(d.rule));
        self.subject_ref.push(subject_ref);
    }
}

/// The subject a `subject` or `contact` stream is about, from its id.
fn stream_subject(aggregate_type: &str, aggregate_id: &str) -> Option<String> {
    match aggregate_type {
        "subject" => Some(aggregate_id.to_string()),
        "contact" => aggregate_id.rsplit_once(':').map(|(_, subject_ref)| subject_ref.to_string()),
        _ => None,
    }
}

/// The key ids listed by the sealed fields (`{"$pii":1,"k":[..],..}`) of a payload.
fn sealing_keys(payload: &str) -> Vec<Uuid> {
    // Most events seal nothing: skip parsing them.
    if !payload.contains("\"$pii\"") {
        return Vec::new();
    }
    fn walk(value: &Value, out: &mut Vec<Uuid>) {
        match value {
            Value::Object(map) if map.contains_key("$pii") => {
                let ids = map.get("k").and_then(Value::as_array).into_iter().flatten();
                out.extend(ids.filter_map(|id| id.as_str().and_then(|s| Uuid::parse_str(s).ok())));
            }
            Value::Object(map) => map.values().for_each(|v| walk(v, out)),
            Value::Array(items) => items.iter().for_each(|v| walk(v, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    if let Ok(value) = serde_json::from_str::<Value>(payload) {
        walk(&value, &mut out);
    }
    out
}

/// The subject of each event: from its stream id (`stream_subject`), else from the subject keys
/// that seal its personal fields, with one `data_keys` query for the whole batch.
async fn subjects(conn: &mut PgConnection, events: &[StoredEvent]) -> Result<Vec<Option<String>>, sqlx::Error> {
    let mut subjects: Vec<Option<String>> =
        events.iter().map(|e| stream_subject(&e.aggregate_type, &e.aggregate_id)).collect();
    let sealed: Vec<(usize, Vec<Uuid>)> = events
        .iter()
        .enumerate()
        .filter(|(i, _)| subjects[*i].is_none())
        .map(|(i, e)| (i, sealing_keys(e.payload.get())))
        .filter(|(_, keys)| !keys.is_empty())
        .collect();
    if sealed.is_empty() {
        return Ok(subjects);
    }
    let mut ids: Vec<Uuid> = sealed.iter().flat_map(|(_, keys)| keys.iter().copied()).collect();
    ids.sort_unstable();
    ids.dedup();
    // By primary key alone, the kind checked here: with `kind` and `subject_ref` in the
    // statement, the runner's generic plan could walk the partial index of every subject key
    // (0020) instead (0.3-0.6 ms a batch in the send profile).
    let refs: HashMap<Uuid, String> = sqlx::query_as::<_, (Uuid, String, Option<String>)>(
        "SELECT key_id, kind, subject_ref FROM data_keys WHERE key_id = ANY($1)",
    )
    .bind(&ids)
    .fetch_all(&mut *conn)
    .await?
    .into_iter()
    .filter(|(_, kind, _)| kind == "subject")
    .filter_map(|(id, _, subject_ref)| subject_ref.map(|r| (id, r)))
    .collect();
    for (i, keys) in sealed {
        subjects[i] = keys.iter().filter_map(|k| refs.get(k)).min().cloned();
    }
    Ok(subjects)
}

impl Projection for AuditProjection {
    fn name(&self) -> &'static str {
        "audit"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["audit_items", "audit_stream_heads"]
    }

    /// Rows are inserted; stream heads are found by their key.
    fn defers_secondary_indexes(&self) -> bool {
        true
    }

    fn apply<'a>(
        &'a self,
        conn: &'a mut PgConnection,
        tables: &'a Tables,
        events: &'a [StoredEvent],
    ) -> BoxFuture<'a, Result<(), ProjectionError>> {
        Box::pin(async move {
            // Stream order: each stream's events in this batch must continue its stored head.
            let heads_table = tables.get("audit_stream_heads");
            let mut first: HashMap<(&str, &str), i64> = HashMap::new();
            let mut last: HashMap<(&str, &str), i64> = HashMap::new();
            for e in events {
                let key = (e.aggregate_type.as_str(), e.aggregate_id.as_str());
                first.entry(key).or_insert(e.sequence);
                if let Some(prev) = last.insert(key, e.sequence) {
                    if e.sequence != prev + 1 {
                        return Err(out_of_order(key, e.sequence, prev));
                    }
                }
            }
            // One statement reads the stored heads of the batch's streams (as they were before
            // it: every part of a statement sees one snapshot) and moves them to the batch's
            // last sequences; a stream out of order fails the batch below, and the runner
            // rolls the whole transaction back.
            let (types, ids): (Vec<&str>, Vec<&str>) = last.keys().copied().unzip();
            let last_seqs: Vec<i64> = last.values().copied().collect();
            let stored: Vec<(String, String, i64)> = sqlx::query_as(&format!(
                "WITH b AS (SELECT * FROM UNNEST($1::text[], $2::text[], $3::bigint[]) AS b(t, i, last)),
                      moved AS (INSERT INTO {heads_table} (aggregate_type, aggregate_id, last_sequence)
                                SELECT t, i, last FROM b
                                ON CONFLICT (aggregate_type, aggregate_id) DO UPDATE SET last_sequence = EXCLUDED.last_sequence)
                 SELECT h.aggregate_type, h.aggregate_id, h.last_sequence
                   FROM {heads_table} h JOIN b ON h.aggregate_type = b.t AND h.aggregate_id = b.i"
            ))
            .bind(&types)
            .bind(&ids)
            .bind(&last_seqs)
            .fetch_all(&mut *conn)
            .await?;
            let stored: HashMap<(&str, &str), i64> =
                stored.iter().map(|(t, i, s)| ((t.as_str(), i.as_str()), *s)).collect();
            for (key, seq) in &first {
                let head = stored.get(key).copied().unwrap_or(0);
                if *seq != head + 1 {
                    return Err(out_of_order(*key, *seq, head));
                }
            }

            let subjects = subjects(&mut *conn, events).await?;
            let table = tables.get("audit_items");
            if events.len() < COPY_FROM {
                let mut rows = Rows::default();
                events.iter().zip(subjects).for_each(|(e, subject)| rows.push(e, subject));
                rows.insert(&mut *conn, table).await?;
                return Ok(());
            }
            // COPY for large batches: the audit view gets one row per event, and COPY inserts
            // them at about twice the rate of a set-based INSERT (measured in the event-store
            // benchmark's catch-up). Binary, so Postgres parses no text, and sent in shares as
            // they are encoded, so Postgres inserts one share while the next is encoded.
            let mut copy = conn
                .copy_in_raw(&format!(
                    "COPY {table} (position, occurred_at, aggregate_type, aggregate_id, sequence, event_type, outcome,
                                   actor_kind, actor_id, agent_id, org_id, refused_by, code, rule, subject_ref)
                     FROM STDIN (FORMAT binary)"
                ))
                .await?;
            let mut out = Vec::with_capacity(COPY_SHARE * 160);
            out.extend_from_slice(b"PGCOPY\n\xff\r\n\0");
            out.extend_from_slice(&[0; 8]); // flags, header extension length
            for (n, (event, subject)) in events.iter().zip(&subjects).enumerate() {
                copy_row(event, subject.as_deref(), &mut out);
                if (n + 1).is_multiple_of(COPY_SHARE) {
                    copy.send(std::mem::replace(&mut out, Vec::with_capacity(COPY_SHARE * 160))).await?;
                }
            }
            out.extend_from_slice(&(-1i16).to_be_bytes());
            copy.send(out).await?;
            copy.finish().await?;
            Ok(())
        })
    }
}

/// Batches of at least this many rows are written by COPY, smaller ones by one prepared
/// `INSERT … SELECT FROM UNNEST`. A live runner's batch under a steady stream of sends holds a
/// few events, and a COPY costs a statement parsed afresh and a second round trip each time: it
/// was the costliest statement per send in the send benchmark's profile (docs/performance.md).
const COPY_FROM: usize = 64;

impl Rows {
    /// The rows by one set-based INSERT (a generic plan inside the runner's transaction).
    async fn insert(&self, conn: &mut PgConnection, table: &str) -> Result<(), sqlx::Error> {
        sqlx::query(&format!(
            "INSERT INTO {table} (position, occurred_at, aggregate_type, aggregate_id, sequence, event_type, outcome,
                                  actor_kind, actor_id, agent_id, org_id, refused_by, code, rule, subject_ref)
             SELECT * FROM UNNEST($1::bigint[], $2::timestamptz[], $3::text[], $4::text[], $5::bigint[], $6::text[],
                                  $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], $13::text[],
                                  $14::text[], $15::text[])"
        ))
        .bind(&self.position)
        .bind(&self.occurred_at)
        .bind(&self.aggregate_type)
        .bind(&self.aggregate_id)
        .bind(&self.sequence)
        .bind(&self.event_type)
        .bind(&self.outcome)
        .bind(&self.actor_kind)
        .bind(&self.actor_id)
        .bind(&self.agent_id)
        .bind(&self.org_id)
        .bind(&self.refused_by)
        .bind(&self.code)
        .bind(&self.rule)
        .bind(&self.subject_ref)
        .execute(conn)
        .await?;
        Ok(())
    }
}

/// Rows per share of a COPY.
const COPY_SHARE: usize = 512;

/// Microseconds between the Unix epoch and Postgres's (2000-01-01 UTC).
const POSTGRES_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// One row in COPY's binary format: the field count, then each field as its length and its
/// binary form (big-endian `int8`, `timestamptz` as microseconds since 2000, text as UTF-8), a
/// NULL as length -1.
fn copy_row(event: &StoredEvent, subject_ref: Option<&str>, out: &mut Vec<u8>) {
    let d = Derived::of(event);
    out.extend_from_slice(&15i16.to_be_bytes());
    let int8 = |out: &mut Vec<u8>, v: i64| {
        out.extend_from_slice(&8i32.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    };
    let text = |out: &mut Vec<u8>, v: Option<&str>| match v {
        Some(v) => {
            out.extend_from_slice(&i32::try_from(v.len()).expect("a text field fits a COPY field").to_be_bytes());
            out.extend_from_slice(v.as_bytes());
        }
        None => out.extend_from_slice(&(-1i32).to_be_bytes()),
    };
    int8(out, event.position);
    int8(out, event.occurred_at.timestamp_micros() - POSTGRES_EPOCH_MICROS);
    text(out, Some(&event.aggregate_type));
    text(out, Some(&event.aggregate_id));
    int8(out, event.sequence);
    text(out, Some(&event.event_type));
    text(out, Some(d.outcome));
    text(out, d.actor_kind.as_deref());
    text(out, d.actor_id.as_deref());
    text(out, d.agent_id.as_deref());
    text(out, event.org_id.as_deref());
    text(out, d.refused_by.as_deref());
    text(out, d.code.as_deref());
    text(out, d.rule.as_deref());
    text(out, subject_ref);
}

fn out_of_order((t, i): (&str, &str), got: i64, last: i64) -> ProjectionError {
    ProjectionError::OutOfOrder { projection: "audit", stream: format!("{t}/{i}"), got, last }
}

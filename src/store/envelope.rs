//! The auditor-feed form of an event (docs/events.md#envelope): position, ids, context, the payload with
//! personal fields opened (or `"[erased]"` with a `redactions` entry), and the chain hashes.

use commguard_domain::pii::SEALED_MARKER;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use sqlx::postgres::PgRow;

use super::feed::{payload_of_row, EventRef, StoredEvent};
use super::json_text;
use super::keystore::{KeyStore, KeyStoreError};
use super::sealing::{OpeningKeys, Redaction, SealedPayload, SealedText};

/// An event in the auditor-feed form (docs/events.md#envelope).
///
/// The stored JSON that the feed shows as stored (the context fields of the metadata, a payload
/// with no sealed field, every payload with `raw=true`) passes through as text, never parsed into
/// a tree and written out again: the feed's cost is the fields it opens, not the bytes it moves.
#[derive(Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Envelope {
    /// The global commit order (`after` pages by it).
    pub position: i64,
    pub event_id: Uuid,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub occurred_at: String,
    pub org_id: Option<String>,
    /// `{kind, id}` of who caused the event.
    #[schemars(with = "Value")]
    pub actor: Option<Box<RawValue>>,
    #[schemars(with = "Value")]
    pub request_id: Option<Box<RawValue>>,
    #[schemars(with = "Value")]
    pub transport: Option<Box<RawValue>>,
    /// The decision: every check that ran, and the one that refused.
    #[schemars(with = "Value")]
    pub provenance: Option<Box<RawValue>>,
    /// Personal fields opened, or `"[erased]"` (listed in `redactions`); sealed as stored with
    /// `raw=true`.
    #[schemars(with = "Value")]
    pub payload: Box<RawValue>,
    pub prev_hash: String,
    pub hash: String,
    pub redactions: Vec<Redaction>,
    /// With `raw=true` only: the stored metadata, which docs/events.md#hash-chain hashes with the payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Value>")]
    pub metadata: Option<Box<RawValue>>,
}

/// The context fields of the stored metadata an envelope shows, as stored.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Context<'a> {
    #[serde(borrow)]
    actor: Option<&'a RawValue>,
    #[serde(borrow)]
    request_id: Option<&'a RawValue>,
    #[serde(borrow)]
    transport: Option<&'a RawValue>,
    #[serde(borrow)]
    provenance: Option<&'a RawValue>,
}

/// JSON text as a raw value; stored JSON always is one (`null` if it were not).
fn raw(text: String) -> Box<RawValue> {
    RawValue::from_string(text).unwrap_or_else(|_| RawValue::from_string("null".into()).expect("null is JSON"))
}

/// Whether a stored payload may hold a sealed field (`{"$pii": …}`): only those are parsed. A
/// text that merely mentions the marker is parsed for nothing, never skipped.
fn has_sealed_field(payload: &str) -> bool {
    payload.contains(SEALED_MARKER)
}

/// The feed envelope of `event`; `raw` keeps the payload exactly as stored (sealed), so that an
/// auditor can recompute its hash.
pub async fn envelope(keystore: &KeyStore, event: StoredEvent, raw: bool) -> Result<Envelope, KeyStoreError> {
    Ok(envelopes(keystore, vec![event], raw).await?.remove(0))
}

/// The envelopes of a page of events, with the keys of every sealed field of the page looked up
/// at once (two queries per page, not per event).
///
/// A raw envelope also carries `metadata`, the stored metadata object: with the stored payload it
/// is everything docs/events.md#hash-chain hashes, so an auditor needs nothing but the contract to recompute `hash`.
pub async fn envelopes(
    keystore: &KeyStore,
    events: Vec<StoredEvent>,
    as_stored: bool,
) -> Result<Vec<Envelope>, KeyStoreError> {
    let (page, keys) = prepare(keystore, events, as_stored).await?;
    Ok(par_map(page, |(event, sealed)| build(event, sealed, &keys, as_stored)))
}

/// `envelopes`, each written as JSON by the feed's writer (`PageWriter`): the same text as
/// `serde_json` gives for each `Envelope` of `envelopes`.
pub async fn envelopes_json(
    keystore: &KeyStore,
    events: Vec<StoredEvent>,
    as_stored: bool,
) -> Result<Vec<Box<RawValue>>, KeyStoreError> {
    let (page, keys) = prepare(keystore, events, as_stored).await?;
    Ok(par_map(page, |(event, sealed)| {
        let mut out = String::new();
        write_envelope(&mut out, &EventRef::of(&event), sealed, &keys, as_stored);
        raw(out)
    }))
}

/// A feed page being written while it is read: each share of the page's rows, as Postgres sent
/// them, has its payloads parsed on the blocking pool as soon as it arrives (`add`), while
/// Postgres sends the next; `write` then looks up the page's keys (one query) and writes every
/// envelope, its fields opened, straight from the rows into the page's text (`par_chunks`: one
/// text per share of the cores), byte for byte what `serde_json` writes for the `Envelope`.
pub struct PageWriter {
    as_stored: bool,
    parsing: Vec<tokio::task::JoinHandle<Result<Vec<ParsedRow>, sqlx::Error>>>,
}

/// An event, with its payload parsed when it holds a sealed field.
type Parsed = (StoredEvent, Option<Sealed>);

/// A row of the page, with its payload parsed when it holds a sealed field.
type ParsedRow = (PgRow, Option<Sealed>);

/// A page's envelopes written as JSON: one text per share of the page, its envelopes joined by commas.
pub struct WrittenEnvelopes {
    shares: Vec<String>,
}

impl WrittenEnvelopes {
    /// The texts of the shares (none empty), to be joined by commas.
    pub fn into_shares(self) -> Vec<String> {
        self.shares.into_iter().filter(|share| !share.is_empty()).collect()
    }

    /// Envelopes written elsewhere (tests of the replies that carry them).
    #[cfg(test)]
    pub(crate) fn of_texts(texts: Vec<String>) -> Self {
        Self { shares: texts }
    }
}

impl PageWriter {
    pub fn new(as_stored: bool) -> Self {
        Self { as_stored, parsing: Vec::new() }
    }

    /// The next share of the page's rows (`feed::COLUMNS`), in order.
    pub fn add(&mut self, rows: Vec<PgRow>) {
        let as_stored = self.as_stored;
        self.parsing.push(tokio::task::spawn_blocking(move || {
            rows.into_iter()
                .map(|row| {
                    let sealed = parse(payload_of_row(&row)?, as_stored);
                    Ok((row, sealed))
                })
                .collect()
        }));
    }

    /// Every envelope of the page, written as JSON.
    pub async fn write(self, keystore: &KeyStore) -> Result<WrittenEnvelopes, KeyStoreError> {
        let mut page: Vec<ParsedRow> = Vec::new();
        for share in self.parsing {
            match share.await {
                Ok(parsed) => page.extend(parsed?),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(KeyStoreError::Unwrap(format!("a share of the page was not parsed: {e}"))),
            }
        }
        let keys = OpeningKeys::for_ids(keystore, page.iter().flat_map(|(_, s)| key_ids(s.as_ref())).collect()).await?;
        let as_stored = self.as_stored;
        let shares = par_chunks(page, |share| {
            let Some(first) = share.first() else { return Ok(String::new()) };
            let first = EventRef::of_row(&first.0)?;
            // Room for the share at the size of its first envelope, so that it grows rarely.
            let each = first.payload.len() + first.metadata.len() * if as_stored { 2 } else { 1 } + 512;
            let mut out = String::with_capacity(each * share.len());
            for (i, (row, sealed)) in share.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_envelope(&mut out, &EventRef::of_row(&row)?, sealed, &keys, as_stored);
            }
            Ok(out)
        })
        .into_iter()
        .collect::<Result<Vec<String>, sqlx::Error>>()?;
        Ok(WrittenEnvelopes { shares })
    }
}

/// A payload's sealed fields, found in its text, or (for a text that does not read as JSON
/// there) in its tree.
enum Sealed {
    Text(SealedText),
    Tree(SealedPayload),
}

/// The sealed fields of a stored payload, when it may hold one and is not to be shown as stored.
fn parse(payload: &str, as_stored: bool) -> Option<Sealed> {
    (!as_stored && has_sealed_field(payload))
        .then(|| SealedText::find(payload).map_or_else(|| Sealed::Tree(SealedPayload::parse(payload)), Sealed::Text))
}

fn key_ids(sealed: Option<&Sealed>) -> Vec<Uuid> {
    match sealed {
        Some(Sealed::Text(s)) => s.key_ids().collect(),
        Some(Sealed::Tree(s)) => s.key_ids().collect(),
        None => Vec::new(),
    }
}

/// The names of the context fields of the stored metadata, in the envelope's order.
const CONTEXT: [&str; 4] = ["actor", "requestId", "transport", "provenance"];

/// The context fields of the stored metadata (`CONTEXT`), as their text: found by a walk of the
/// text, or by serde (`Context`) where the walk does not read the text (see `json_text::members`).
fn context_fields(metadata: &str) -> [Option<&str>; 4] {
    json_text::members(metadata, CONTEXT).unwrap_or_else(|| {
        let context: Context = serde_json::from_str(metadata).unwrap_or_default();
        [context.actor, context.request_id, context.transport, context.provenance].map(|f| f.map(RawValue::get))
    })
}

/// The envelope of `event` written as JSON into `out`: what `serde_json` writes for
/// `build(event, sealed, keys, as_stored)`, without building it. The stored JSON it shows as
/// stored (context fields, payloads) is jsonb's text, JSON by construction: copied, not
/// validated again.
fn write_envelope(out: &mut String, event: &EventRef, sealed: Option<Sealed>, keys: &OpeningKeys, as_stored: bool) {
    out.push_str("{\"position\":");
    json_text::push_int(out, event.position);
    out.push_str(",\"eventId\":");
    json_text::push_uuid(out, event.event_id);
    out.push_str(",\"aggregateType\":");
    json_text::push_str(out, event.aggregate_type);
    out.push_str(",\"aggregateId\":");
    json_text::push_str(out, event.aggregate_id);
    out.push_str(",\"sequence\":");
    json_text::push_int(out, event.sequence);
    out.push_str(",\"eventType\":");
    json_text::push_str(out, event.event_type);
    out.push_str(",\"eventVersion\":");
    json_text::push_str(out, event.event_version);
    out.push_str(",\"occurredAt\":");
    json_text::push_time(out, event.occurred_at);
    out.push_str(",\"orgId\":");
    json_text::push_opt_str(out, event.org_id);
    let [actor, request_id, transport, provenance] = context_fields(event.metadata);
    for (name, field) in [
        (",\"actor\":", actor),
        (",\"requestId\":", request_id),
        (",\"transport\":", transport),
        (",\"provenance\":", provenance),
    ] {
        out.push_str(name);
        out.push_str(field.unwrap_or("null"));
    }
    out.push_str(",\"payload\":");
    let mut redactions = Vec::new();
    match sealed {
        Some(Sealed::Text(sealed)) => sealed.open_into(keys, event.payload, event.event_id, out, &mut redactions),
        Some(Sealed::Tree(sealed)) => {
            let (payload, opened) = sealed.open(keys, event.event_id);
            out.push_str(&serde_json::to_string(&payload).unwrap_or_else(|_| "null".into()));
            redactions = opened;
        }
        None => out.push_str(event.payload),
    }
    out.push_str(",\"prevHash\":");
    json_text::push_str(out, event.prev_hash);
    out.push_str(",\"hash\":");
    json_text::push_str(out, event.hash);
    out.push_str(",\"redactions\":[");
    for (i, Redaction { path, reason }) in redactions.iter().enumerate() {
        out.push_str(if i > 0 { ",{\"path\":" } else { "{\"path\":" });
        json_text::push_str(out, path);
        out.push_str(",\"reason\":");
        json_text::push_str(out, reason);
        out.push('}');
    }
    out.push(']');
    if as_stored {
        out.push_str(",\"metadata\":");
        out.push_str(event.metadata);
    }
    out.push('}');
}

/// Each event with its payload parsed when it holds a sealed field (parsed once, its fields
/// found once), and the keys those fields name, looked up for the whole page.
async fn prepare(
    keystore: &KeyStore,
    events: Vec<StoredEvent>,
    as_stored: bool,
) -> Result<(Vec<Parsed>, OpeningKeys), KeyStoreError> {
    let page: Vec<Parsed> = par_map(events, |e| {
        let sealed = parse(e.payload.get(), as_stored);
        (e, sealed)
    });
    let keys = OpeningKeys::for_ids(keystore, page.iter().flat_map(|(_, s)| key_ids(s.as_ref())).collect()).await?;
    Ok((page, keys))
}

/// The envelope of one event, its sealed fields (if parsed) opened with `keys`.
fn build(event: StoredEvent, sealed: Option<Sealed>, keys: &OpeningKeys, as_stored: bool) -> Envelope {
    let (payload, redactions) = match sealed {
        Some(Sealed::Text(sealed)) => {
            let (payload, redactions) = sealed.open(keys, event.payload.get(), event.event_id);
            (raw(payload), redactions)
        }
        Some(Sealed::Tree(sealed)) => {
            let (payload, redactions) = sealed.open(keys, event.event_id);
            (serde_json::value::to_raw_value(&payload).unwrap_or_else(|_| raw("null".into())), redactions)
        }
        None => (raw(event.payload.0), Vec::new()),
    };
    let context: Context = serde_json::from_str(event.metadata.get()).unwrap_or_default();
    let owned = |field: Option<&RawValue>| field.map(RawValue::to_owned);
    let (actor, request_id, transport, provenance) =
        (owned(context.actor), owned(context.request_id), owned(context.transport), owned(context.provenance));
    Envelope {
        position: event.position,
        event_id: event.event_id,
        occurred_at: super::rfc3339(event.occurred_at),
        actor,
        request_id,
        transport,
        provenance,
        payload,
        redactions,
        metadata: as_stored.then(|| raw(event.metadata.0)),
        aggregate_type: event.aggregate_type,
        aggregate_id: event.aggregate_id,
        sequence: event.sequence,
        event_type: event.event_type,
        event_version: event.event_version,
        org_id: event.org_id,
        prev_hash: event.prev_hash,
        hash: event.hash,
    }
}

/// Below this many items a share is not worth a thread.
const PER_THREAD: usize = 64;

/// `items.map(f)` in order, spread over the available cores (`par_chunks`).
fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let mut shares = par_chunks(items, |share| share.into_iter().map(&f).collect::<Vec<R>>()).into_iter();
    let mut out = shares.next().unwrap_or_default();
    for share in shares {
        out.extend(share);
    }
    out
}

/// `f` of each of the contiguous shares of `items` that spread them over the available cores
/// (one share below `2 × PER_THREAD` items), in order: the calling thread takes the first share,
/// scoped threads the others (a page is a few milliseconds of work, so a thread per share costs
/// little; no pool to size or starve, in any runtime).
fn par_chunks<T: Send, R: Send>(items: Vec<T>, f: impl Fn(Vec<T>) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(items.len() / PER_THREAD).max(1);
    if threads == 1 {
        return vec![f(items)];
    }
    let share = items.len().div_ceil(threads);
    let mut shares: Vec<Vec<T>> = Vec::with_capacity(threads);
    let mut items = items.into_iter();
    loop {
        let next: Vec<T> = items.by_ref().take(share).collect();
        if next.is_empty() {
            break;
        }
        shares.push(next);
    }
    let f = &f;
    std::thread::scope(|scope| {
        let mut shares = shares.into_iter();
        let first = shares.next().unwrap_or_default();
        let others: Vec<_> = shares.map(|share| scope.spawn(move || f(share))).collect();
        let mut out = Vec::with_capacity(threads);
        out.push(f(first));
        for other in others {
            match other.join() {
                Ok(done) => out.push(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypto::envelope::seal;
    use crate::crypto::Key;
    use commguard_projections::RawJson;
    use serde_json::json;
    use std::collections::HashMap;

    fn event(n: i64, org_id: Option<&str>, text: &str, payload: String, metadata: &str) -> StoredEvent {
        StoredEvent {
            position: n << 12 | n,
            event_id: Uuid::from_u128(0x9000 + n as u128),
            aggregate_type: format!("agent{text}"),
            aggregate_id: format!("id-{n}{text}"),
            sequence: n * 1_000_000_007,
            event_type: "MessageSent".into(),
            event_version: "1.0".into(),
            occurred_at: chrono::DateTime::from_timestamp(1_765_000_000 + n * 86_399, (n as u32) * 7_654_321).unwrap(),
            org_id: org_id.map(Into::into),
            payload: RawJson(payload),
            metadata: RawJson(metadata.into()),
            prev_hash: format!("{:064x}", n),
            hash: format!("{:064x}", n + 1),
        }
    }

    /// The feed's hand-written envelope (`write_envelope`) is, byte for byte, what serde writes
    /// for the `Envelope` the other readers build: opened, erased and corrupt fields, several
    /// fields in one payload, the tree fallback, `raw=true`, escapes, a null org, context fields
    /// present, absent, null, and metadata the text walk leaves to serde.
    #[test]
    fn written_envelopes_are_what_serde_writes_for_each_envelope() {
        let (live, gone, retained) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3));
        let key: Key = [7u8; 32];
        let keys = OpeningKeys::from_keys(
            HashMap::from([(live, key)]),
            HashMap::from([(gone, "subject".to_string()), (retained, "retention".to_string())]),
        );
        let sealed = |n: i64, path: &str, text: &str, ids: &[Uuid]| {
            let keys: Vec<(Uuid, Key)> = ids.iter().map(|id| (*id, key)).collect();
            serde_json::to_value(seal(&keys, Uuid::from_u128(0x9000 + n as u128), path, text)).unwrap()
        };
        // Postgres's jsonb text: `"key": value`, keys by length then bytes.
        let jsonb = |value: serde_json::Value| -> String {
            let compact = serde_json::to_string(&value).unwrap();
            compact.replace("\":", "\": ").replace(",\"", ", \"")
        };
        let metadata = [
            r#"{"actor": {"id": "agent-1", "kind": "agent"}, "transport": "mcp", "requestId": "req-1", "provenance": {"checks": ["dnc", "consent"], "refusedBy": null}}"#,
            r#"{"actor": {"id": "o \"q\" \\ \u0001 é", "kind": "org"}, "requestId": null}"#,
            r#"{}"#,
            r#"{"transport": "http", "extra": [1, {"actor": 2}, "]}"], "provenance": 12.5e-3}"#,
            "null",
            r#"{"actor": 1, "actor": 2}"#,
            r#"["positional", "members"]"#,
        ];
        let mut events = Vec::new();
        for (i, metadata) in metadata.iter().enumerate() {
            let n = i as i64 * 8;
            events.push(event(
                n,
                Some("org-1"),
                "",
                jsonb(json!({"DncAdded": {"address":
                sealed(n, "DncAdded.address", "+12025550100", &[live]), "reason": "bench"}})),
                metadata,
            ));
            events.push(event(
                n + 1,
                None,
                " \"x\"\n\u{1}é😀",
                jsonb(json!({"MessageSent": {
                "to": sealed(n + 1, "MessageSent.to", "pat \"q\" \\ \u{7}\u{1f} é", &[live]),
                "body": sealed(n + 1, "MessageSent.body", "hello", &[live]),
                "bcc": sealed(n + 1, "MessageSent.bcc", "kept too long", &[live, retained]),
                "cc": [sealed(n + 1, "MessageSent.cc.0", "one", &[gone]), {"$pii": "not a field"}],
                "moved": sealed(n + 1, "elsewhere", "bound to its path", &[live]),
                "cost": 12345678901234567u64}})),
                metadata,
            ));
            events.push(event(
                n + 2,
                Some("o\"2"),
                "",
                jsonb(json!({"Plain": {"text": "no field \u{2028} here"}})),
                metadata,
            ));
            events.push(event(n + 3, None, "", format!("{{\"broken\": \"$pii\" {n}"), metadata));
            events.push(event(
                n + 4,
                Some("org-1"),
                "",
                jsonb(json!({"b": sealed(n + 4, "b", "B", &[gone, retained]),
                "a": sealed(n + 4, "a", "A", &[retained]), "aa": {"k": sealed(n + 4, "aa.k", "K", &[live])}})),
                metadata,
            ));
        }
        for as_stored in [false, true] {
            // A text that is not JSON (never a jsonb column's) is the tree fallback's case when
            // fields are opened; shown as stored, the writer copies stored JSON without reading it.
            for e in events
                .iter()
                .filter(|e| !as_stored || e.payload.get().starts_with("{\"") && !e.payload.get().contains("broken"))
            {
                let sealed = parse(e.payload.get(), as_stored);
                let mut written = String::new();
                write_envelope(&mut written, &EventRef::of(e), sealed, &keys, as_stored);
                let built = build(e.clone(), parse(e.payload.get(), as_stored), &keys, as_stored);
                assert_eq!(written, serde_json::to_string(&built).unwrap(), "raw={as_stored}");
            }
        }
        // The cases are the ones named: opened, each redaction reason, the tree fallback.
        let page: Vec<String> = events
            .iter()
            .map(|e| {
                let mut out = String::new();
                write_envelope(&mut out, &EventRef::of(e), parse(e.payload.get(), false), &keys, false);
                out
            })
            .collect();
        assert!(page[0].contains(r#""address": "+12025550100""#), "{}", page[0]);
        assert!(page[1].contains(r#""reason":"subject_erased""#) && page[1].contains(r#""reason":"corrupt""#));
        assert!(page[1].contains(r#""body": "hello""#), "{}", page[1]);
        assert!(page[4].contains(r#"{"path":"a","reason":"retention_expired"},{"path":"b","reason":"subject_erased"}"#));
        assert!(page[3].contains(r#""payload":null"#), "{}", page[3]);
        assert!(page[2].contains(r#""orgId":"o\"2""#));
        assert!(page[1].contains(r#""orgId":null"#));
    }

    #[test]
    fn par_map_keeps_the_order_of_every_item() {
        for n in [0, 1, 63, 64, 128, 1000, 1001] {
            let out = par_map((0..n).collect(), |i: usize| i * 2);
            assert_eq!(out, (0..n).map(|i| i * 2).collect::<Vec<_>>(), "{n} items");
        }
    }
}

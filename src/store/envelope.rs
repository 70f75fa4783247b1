//! The auditor-feed form of an event (docs/events.md#envelope): position, ids, context, the payload with
//! personal fields opened (or `"[erased]"` with a `redactions` entry), and the chain hashes.

use commguard_domain::pii::SEALED_MARKER;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use sqlx::postgres::PgRow;

use super::feed::{stored_event_from_row, StoredEvent};
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

/// `envelopes`, each already written as JSON, as the feed writes them (`PageWriter`, one share).
pub async fn envelopes_json(
    keystore: &KeyStore,
    events: Vec<StoredEvent>,
    as_stored: bool,
) -> Result<Vec<Box<RawValue>>, KeyStoreError> {
    let (page, keys) = prepare(keystore, events, as_stored).await?;
    Ok(par_map(page, |(event, sealed)| write(build(event, sealed, &keys, as_stored))))
}

/// A feed page being written while it is read: each share of the page's rows is decoded and
/// parsed on the blocking pool as soon as it arrives (`add`), while Postgres sends the next;
/// `write` then looks up the page's keys (one query) and opens and writes every envelope
/// (`par_map`).
pub struct PageWriter {
    as_stored: bool,
    parsing: Vec<tokio::task::JoinHandle<Result<Vec<Parsed>, sqlx::Error>>>,
}

/// An event, with its payload parsed when it holds a sealed field.
type Parsed = (StoredEvent, Option<Sealed>);

impl PageWriter {
    pub fn new(as_stored: bool) -> Self {
        Self { as_stored, parsing: Vec::new() }
    }

    /// The next share of the page's rows (`feed::COLUMNS`), in order.
    pub fn add(&mut self, rows: Vec<PgRow>) {
        let as_stored = self.as_stored;
        self.parsing.push(tokio::task::spawn_blocking(move || {
            rows.iter().map(|row| Ok(parse(stored_event_from_row(row)?, as_stored))).collect()
        }));
    }

    /// Every envelope of the page, written as JSON.
    pub async fn write(self, keystore: &KeyStore) -> Result<Vec<Box<RawValue>>, KeyStoreError> {
        let mut page: Vec<Parsed> = Vec::new();
        for share in self.parsing {
            match share.await {
                Ok(parsed) => page.extend(parsed?),
                Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
                Err(e) => return Err(KeyStoreError::Unwrap(format!("a share of the page was not parsed: {e}"))),
            }
        }
        let keys = OpeningKeys::for_ids(keystore, page.iter().flat_map(|(_, s)| key_ids(s.as_ref())).collect()).await?;
        let as_stored = self.as_stored;
        Ok(par_map(page, |(event, sealed)| write(build(event, sealed, &keys, as_stored))))
    }
}

/// A payload's sealed fields, found in its text, or (for a text that does not read as JSON
/// there) in its tree.
enum Sealed {
    Text(SealedText),
    Tree(SealedPayload),
}

fn parse(event: StoredEvent, as_stored: bool) -> Parsed {
    let text = event.payload.get();
    let sealed = (!as_stored && has_sealed_field(text))
        .then(|| SealedText::find(text).map_or_else(|| Sealed::Tree(SealedPayload::parse(text)), Sealed::Text));
    (event, sealed)
}

fn key_ids(sealed: Option<&Sealed>) -> Vec<Uuid> {
    match sealed {
        Some(Sealed::Text(s)) => s.key_ids().collect(),
        Some(Sealed::Tree(s)) => s.key_ids().collect(),
        None => Vec::new(),
    }
}

fn write(envelope: Envelope) -> Box<RawValue> {
    serde_json::value::to_raw_value(&envelope).unwrap_or_else(|_| raw("null".into()))
}

/// Each event with its payload parsed when it holds a sealed field (parsed once, its fields
/// found once), and the keys those fields name, looked up for the whole page.
async fn prepare(
    keystore: &KeyStore,
    events: Vec<StoredEvent>,
    as_stored: bool,
) -> Result<(Vec<Parsed>, OpeningKeys), KeyStoreError> {
    let page: Vec<Parsed> = par_map(events, |e| parse(e, as_stored));
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

/// `items.map(f)` in order, spread over the available cores in contiguous shares: the calling
/// thread takes the first share, scoped threads the others (a page is a few milliseconds of
/// work, so a thread per share costs little; no pool to size or starve, in any runtime).
fn par_map<T: Send, R: Send>(items: Vec<T>, f: impl Fn(T) -> R + Sync) -> Vec<R> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = cores.min(items.len() / PER_THREAD).max(1);
    if threads == 1 {
        return items.into_iter().map(f).collect();
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
        let others: Vec<_> =
            shares.map(|share| scope.spawn(move || share.into_iter().map(f).collect::<Vec<R>>())).collect();
        let mut out: Vec<R> = first.into_iter().map(f).collect();
        for other in others {
            match other.join() {
                Ok(done) => out.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        out
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn par_map_keeps_the_order_of_every_item() {
        for n in [0, 1, 63, 64, 128, 1000, 1001] {
            let out = par_map((0..n).collect(), |i: usize| i * 2);
            assert_eq!(out, (0..n).map(|i| i * 2).collect::<Vec<_>>(), "{n} items");
        }
    }
}

//! The auditor-feed form of an event (docs/events.md#envelope): position, ids, context, the payload with
//! personal fields opened (or `"[erased]"` with a `redactions` entry), and the chain hashes.

use commguard_domain::pii::SEALED_MARKER;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use super::feed::StoredEvent;
use super::keystore::{KeyStore, KeyStoreError};
use super::sealing::{OpeningKeys, Redaction};

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
    // The payloads to open, parsed once: (index in the page, payload).
    let sealed: Vec<(usize, Value)> = if as_stored {
        Vec::new()
    } else {
        events
            .iter()
            .enumerate()
            .filter(|(_, e)| has_sealed_field(e.payload.get()))
            .map(|(i, e)| (i, e.payload_value()))
            .collect()
    };
    let keys = match sealed.is_empty() {
        true => None,
        false => {
            let payloads: Vec<&Value> = sealed.iter().map(|(_, p)| p).collect();
            Some(OpeningKeys::load(keystore, &payloads).await?)
        }
    };
    let mut sealed = sealed.into_iter().peekable();
    let mut out = Vec::with_capacity(events.len());
    for (i, event) in events.into_iter().enumerate() {
        let (payload, redactions) = match (sealed.next_if(|(at, _)| *at == i), &keys) {
            (Some((_, mut payload)), Some(keys)) => {
                let redactions = keys.open(&mut payload, event.event_id);
                (serde_json::value::to_raw_value(&payload).unwrap_or_else(|_| raw("null".into())), redactions)
            }
            _ => (raw(event.payload.0), Vec::new()),
        };
        let context: Context = serde_json::from_str(event.metadata.get()).unwrap_or_default();
        let owned = |field: Option<&RawValue>| field.map(RawValue::to_owned);
        let (actor, request_id, transport, provenance) =
            (owned(context.actor), owned(context.request_id), owned(context.transport), owned(context.provenance));
        out.push(Envelope {
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
        });
    }
    Ok(out)
}

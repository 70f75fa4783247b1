//! The auditor-feed form of an event (CONTRACT §11.1): position, ids, context, the payload with
//! personal fields opened (or `"[erased]"` with a `redactions` entry), and the chain hashes.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use super::feed::StoredEvent;
use super::keystore::{KeyStore, KeyStoreError};
use super::sealing::{OpeningKeys, Redaction};

/// An event in the auditor-feed form (CONTRACT §11.1).
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
    pub actor: Value,
    pub request_id: Value,
    pub transport: Value,
    /// The decision: every check that ran, and the one that refused.
    pub provenance: Value,
    /// Personal fields opened, or `"[erased]"` (listed in `redactions`); sealed as stored with
    /// `raw=true`.
    pub payload: Value,
    pub prev_hash: String,
    pub hash: String,
    pub redactions: Vec<Redaction>,
    /// With `raw=true` only: the stored metadata, which §11.2 hashes with the payload.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Value>,
}

/// The context fields of the stored metadata an envelope shows.
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Context {
    actor: Value,
    request_id: Value,
    transport: Value,
    provenance: Value,
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
/// is everything §11.2 hashes, so an auditor needs nothing but the contract to recompute `hash`.
pub async fn envelopes(
    keystore: &KeyStore,
    events: Vec<StoredEvent>,
    raw: bool,
) -> Result<Vec<Envelope>, KeyStoreError> {
    let payloads: Vec<Value> = events.iter().map(StoredEvent::payload_value).collect();
    let keys = if raw { None } else { Some(OpeningKeys::load(keystore, &payloads).await?) };
    Ok(events
        .into_iter()
        .zip(payloads)
        .map(|(event, mut payload)| {
            let redactions = keys.as_ref().map(|k| k.open(&mut payload, event.event_id)).unwrap_or_default();
            let context: Context = serde_json::from_str(event.metadata.get()).unwrap_or_default();
            Envelope {
                position: event.position,
                event_id: event.event_id,
                occurred_at: super::rfc3339(event.occurred_at),
                actor: context.actor,
                request_id: context.request_id,
                transport: context.transport,
                provenance: context.provenance,
                payload,
                redactions,
                metadata: raw.then(|| event.metadata_value()),
                aggregate_type: event.aggregate_type,
                aggregate_id: event.aggregate_id,
                sequence: event.sequence,
                event_type: event.event_type,
                event_version: event.event_version,
                org_id: event.org_id,
                prev_hash: event.prev_hash,
                hash: event.hash,
            }
        })
        .collect())
}

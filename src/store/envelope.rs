//! The auditor-feed form of an event (CONTRACT §11.1): position, ids, context, the payload with
//! personal fields opened (or `"[erased]"` with a `redactions` entry), and the chain hashes.

use serde_json::{json, Value};

use super::feed::StoredEvent;
use super::keystore::{KeyStore, KeyStoreError};
use super::sealing::OpeningKeys;

/// The feed envelope of `event`; `raw` keeps the payload exactly as stored (sealed), so that an
/// auditor can recompute its hash.
pub async fn envelope(keystore: &KeyStore, event: StoredEvent, raw: bool) -> Result<Value, KeyStoreError> {
    Ok(envelopes(keystore, vec![event], raw).await?.remove(0))
}

/// The envelopes of a page of events, with the keys of every sealed field of the page looked up
/// at once (two queries per page, not per event).
///
/// A raw envelope also carries `metadata`, the stored metadata object: with the stored payload it
/// is everything §11.2 hashes, so an auditor needs nothing but the contract to recompute `hash`.
pub async fn envelopes(keystore: &KeyStore, events: Vec<StoredEvent>, raw: bool) -> Result<Vec<Value>, KeyStoreError> {
    let payloads: Vec<Value> = events.iter().map(StoredEvent::payload_value).collect();
    let keys = if raw { None } else { Some(OpeningKeys::load(keystore, &payloads).await?) };
    Ok(events
        .into_iter()
        .zip(payloads)
        .map(|(event, mut payload)| {
            let redactions = keys.as_ref().map(|k| k.open(&mut payload, event.event_id)).unwrap_or_default();
            let metadata = event.metadata_value();
            let meta = |key: &str| metadata.get(key).cloned().unwrap_or(Value::Null);
            let mut out = json!({
                "position": event.position,
                "eventId": event.event_id,
                "aggregateType": event.aggregate_type,
                "aggregateId": event.aggregate_id,
                "sequence": event.sequence,
                "eventType": event.event_type,
                "eventVersion": event.event_version,
                "occurredAt": super::rfc3339(event.occurred_at),
                "orgId": event.org_id,
                "actor": meta("actor"),
                "requestId": meta("requestId"),
                "transport": meta("transport"),
                "provenance": meta("provenance"),
                "payload": payload,
                "prevHash": event.prev_hash,
                "hash": event.hash,
                "redactions": redactions,
            });
            if raw {
                out["metadata"] = metadata;
            }
            out
        })
        .collect())
}

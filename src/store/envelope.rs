//! The auditor-feed form of an event (CONTRACT §11.1): position, ids, context, the payload with
//! personal fields opened (or `"[erased]"` with a `redactions` entry), and the chain hashes.

use serde_json::{json, Value};

use super::feed::StoredEvent;
use super::keystore::{KeyStore, KeyStoreError};
use super::sealing::open_payload;

/// The feed envelope of `event`; `raw` keeps the payload exactly as stored (sealed), so that an
/// auditor can recompute its hash.
pub async fn envelope(keystore: &KeyStore, event: StoredEvent, raw: bool) -> Result<Value, KeyStoreError> {
    let mut payload = event.payload_value();
    let metadata = event.metadata_value();
    let redactions = if raw { Vec::new() } else { open_payload(keystore, &mut payload, event.event_id).await? };
    let meta = |key: &str| metadata.get(key).cloned().unwrap_or(Value::Null);
    Ok(json!({
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
    }))
}

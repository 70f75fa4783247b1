//! The per-aggregate hash chain (docs/events.md#hash-chain): each event's hash covers the previous hash, its
//! identity, and the JCS (RFC 8785) form of its stored payload and metadata (minus `hash`).

use serde_json::Value;
use sha2::{Digest, Sha256};

/// The `prevHash` of sequence 1.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

#[allow(clippy::too_many_arguments)]
pub fn event_hash(
    prev_hash: &str,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
    event_type: &str,
    event_version: &str,
    payload: &Value,
    metadata_without_hash: &Value,
) -> String {
    let mut hasher = Sha256::new();
    for part in [prev_hash, aggregate_type, aggregate_id, &sequence.to_string(), event_type, event_version] {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    hasher.update(jcs(payload).as_bytes());
    hasher.update(b"\n");
    hasher.update(jcs(metadata_without_hash).as_bytes());
    hex::encode(hasher.finalize())
}

fn jcs(value: &Value) -> String {
    serde_jcs::to_string(value).expect("a JSON value always canonicalizes")
}

/// The stored metadata with only `hash` removed (`prevHash` stays).
pub fn metadata_without_hash(metadata: &Value) -> Value {
    let mut m = metadata.clone();
    if let Value::Object(map) = &mut m {
        map.remove("hash");
    }
    m
}

/// One stored event, as the chain sees it.
pub struct ChainLink {
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub payload: Value,
    pub metadata: Value,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChainBreak {
    pub sequence: i64,
    pub reason: String,
}

/// Verifies one aggregate's events, in sequence order. Returns the event count and last hash.
pub fn verify_chain(links: impl Iterator<Item = ChainLink>) -> Result<(usize, String), ChainBreak> {
    let mut prev = GENESIS.to_string();
    let mut count = 0usize;
    for link in links {
        let expected_sequence = count as i64 + 1;
        let fail = |reason: String| Err(ChainBreak { sequence: expected_sequence, reason });
        if link.sequence != expected_sequence {
            return fail(format!("sequence gap (expected {expected_sequence}, found {})", link.sequence));
        }
        let stored_prev = link.metadata.get("prevHash").and_then(Value::as_str).unwrap_or_default();
        if stored_prev != prev {
            return fail("prevHash mismatch".into());
        }
        let stored_hash = link.metadata.get("hash").and_then(Value::as_str).unwrap_or_default().to_string();
        let recomputed = event_hash(
            &prev,
            &link.aggregate_type,
            &link.aggregate_id,
            link.sequence,
            &link.event_type,
            &link.event_version,
            &link.payload,
            &metadata_without_hash(&link.metadata),
        );
        if recomputed != stored_hash {
            return fail("hash mismatch".into());
        }
        prev = stored_hash;
        count += 1;
    }
    Ok((count, prev))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn the_hash_input_is_the_documented_byte_string() {
        let payload = json!({"b": 1, "a": "x"});
        let metadata = json!({"prevHash": GENESIS, "actor": {"kind": "system", "id": "t"}});
        let metadata_jcs = format!(r#"{{"actor":{{"id":"t","kind":"system"}},"prevHash":"{GENESIS}"}}"#);
        let expected = format!("{GENESIS}\nagent\na1\n1\nMessageSent\n1.0\n{}\n{metadata_jcs}", r#"{"a":"x","b":1}"#);
        assert_eq!(
            event_hash(GENESIS, "agent", "a1", 1, "MessageSent", "1.0", &payload, &metadata),
            hex::encode(Sha256::digest(expected.as_bytes()))
        );
    }

    fn chain(n: i64) -> Vec<ChainLink> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|sequence| {
                let payload = json!({"n": sequence});
                let mut metadata = json!({"prevHash": prev});
                let hash = event_hash(&prev, "t", "i", sequence, "E", "1.0", &payload, &metadata);
                metadata["hash"] = json!(hash);
                prev = hash;
                ChainLink {
                    aggregate_type: "t".into(),
                    aggregate_id: "i".into(),
                    sequence,
                    event_type: "E".into(),
                    event_version: "1.0".into(),
                    payload,
                    metadata,
                }
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_any_change_breaks_it_where_it_happened() {
        assert_eq!(verify_chain(chain(3).into_iter()).unwrap().0, 3);

        let mut edited = chain(3);
        edited[1].payload = json!({"n": 20});
        assert_eq!(verify_chain(edited.into_iter()).unwrap_err().sequence, 2);

        let mut gap = chain(3);
        gap.remove(1);
        let err = verify_chain(gap.into_iter()).unwrap_err();
        assert_eq!((err.sequence, err.reason.starts_with("sequence gap")), (2, true));

        let mut relinked = chain(3);
        relinked[2].metadata["prevHash"] = json!(GENESIS);
        assert_eq!(verify_chain(relinked.into_iter()).unwrap_err().reason, "prevHash mismatch");
    }
}

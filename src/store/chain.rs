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
    let mut metadata = Vec::with_capacity(256);
    write_jcs(metadata_without_hash, &mut metadata);
    event_hash_of(prev_hash, aggregate_type, aggregate_id, sequence, event_type, event_version, payload, &metadata)
}

/// `event_hash`, the metadata given as its RFC 8785 bytes (the repository writes them once,
/// `repository::MetadataText`).
#[allow(clippy::too_many_arguments)]
pub fn event_hash_of(
    prev_hash: &str,
    aggregate_type: &str,
    aggregate_id: &str,
    sequence: i64,
    event_type: &str,
    event_version: &str,
    payload: &Value,
    metadata_canonical: &[u8],
) -> String {
    let mut hasher = Sha256::new();
    for part in [prev_hash, aggregate_type, aggregate_id, &sequence.to_string(), event_type, event_version] {
        hasher.update(part.as_bytes());
        hasher.update(b"\n");
    }
    let mut canonical = Vec::with_capacity(512 + metadata_canonical.len());
    write_jcs(payload, &mut canonical);
    canonical.push(b'\n');
    canonical.extend_from_slice(metadata_canonical);
    hasher.update(&canonical);
    hex::encode(hasher.finalize())
}

/// Writes the JCS (RFC 8785) form of `value`: object members sorted by the UTF-16 code units of
/// their names, no whitespace, strings escaped as ECMAScript's `JSON.stringify` does (which is
/// serde_json's escaping), every number as the ECMAScript form of its double. These are the bytes
/// `serde_jcs` writes (the test `the_canonical_form_is_serde_jcs_s` holds them together), without
/// its boxed writer per token and its re-parsing of every member name: canonicalizing took a
/// fifth of the CPU of an append in the event-store benchmark.
fn write_jcs(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => {
            let n = n.as_f64().expect("a JSON number is a double");
            out.extend_from_slice(ryu_js::Buffer::new().format_finite(n).as_bytes());
        }
        Value::String(s) => write_jcs_str(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_jcs(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            members.sort_unstable_by(|(a, _), (b, _)| {
                if a.is_ascii() && b.is_ascii() {
                    a.cmp(b)
                } else {
                    a.encode_utf16().cmp(b.encode_utf16())
                }
            });
            out.push(b'{');
            for (i, (name, value)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_jcs_str(name, out);
                out.push(b':');
                write_jcs(value, out);
            }
            out.push(b'}');
        }
    }
}

fn write_jcs_str(s: &str, out: &mut Vec<u8>) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
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
#[derive(sqlx::FromRow)]
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

    /// A small deterministic generator (xorshift), so the comparison below covers many shapes.
    struct Gen(u64);

    impl Gen {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
            &items[(self.next() % items.len() as u64) as usize]
        }

        fn text(&mut self) -> String {
            const PIECES: &[&str] = &[
                "a",
                "b",
                "Z",
                "_",
                "é",
                "\u{e000}",
                "\u{ffff}",
                "😀",
                "\u{10000}",
                "\"",
                "\\",
                "/",
                "\n",
                "\t",
                "\u{8}",
                "\u{c}",
                "\r",
                "\u{1}",
                "\u{1f}",
                "\u{7f}",
                "\u{2028}",
                "€",
                " ",
                "0",
                "$pii",
            ];
            (0..self.next() % 5).map(|_| *self.pick(PIECES)).collect()
        }

        fn value(&mut self, depth: u32) -> Value {
            match self.next() % if depth == 0 { 4 } else { 6 } {
                0 => Value::Null,
                1 => Value::Bool(self.next().is_multiple_of(2)),
                2 => self.number(),
                3 => Value::String(self.text()),
                4 => Value::Array((0..self.next() % 4).map(|_| self.value(depth - 1)).collect()),
                _ => Value::Object((0..self.next() % 6).map(|_| (self.text(), self.value(depth - 1))).collect()),
            }
        }

        fn number(&mut self) -> Value {
            let bits = self.next();
            match bits % 6 {
                0 => json!(bits as i64 % 1000),
                1 => json!(*self.pick(&[0u64, 1, 9_007_199_254_740_993, u64::MAX, 1 << 53])),
                2 => json!(*self.pick(&[i64::MIN, -1, -9_007_199_254_740_993])),
                3 => {
                    json!(*self.pick(&[0.1, -0.0, 1e21, 1e-7, 123456789.125, 5e-324, 1.7976931348623157e308, -2.5e-5]))
                }
                4 => json!(f64::from_bits(bits >> 2)),
                _ => json!((bits % 100_000) as f64 / 7.0),
            }
        }
    }

    #[test]
    fn the_canonical_form_is_serde_jcs_s() {
        let mut gen = Gen(0x9e37_79b9_7f4a_7c15);
        for _ in 0..20_000 {
            let value = gen.value(4);
            let mut ours = Vec::new();
            write_jcs(&value, &mut ours);
            assert_eq!(String::from_utf8(ours).unwrap(), serde_jcs::to_string(&value).unwrap(), "{value}");
        }
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

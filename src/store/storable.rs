//! Text Postgres can store. `text` and `jsonb` cannot hold U+0000 (`json` accepts the `\u0000`
//! escape but every `->>` of it fails later), and one such value fails the whole statement —
//! with group commit, other commands' appends too. The edges refuse input carrying it
//! (`validate`); the store escapes whatever still arrives, so no event ever carries it to Postgres.
//! (Lone surrogates, the other text Postgres refuses, cannot exist in a Rust `String`.)

use std::borrow::Cow;

use serde_json::Value;

/// What U+0000 is stored as: the Unicode replacement character.
pub const NUL_REPLACEMENT: &str = "\u{FFFD}";

/// Whether any string or key in `value` holds U+0000.
pub fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(map) => map.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// `s` with U+0000 replaced by `NUL_REPLACEMENT` (borrowed when it holds none).
pub fn escaped_str(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', NUL_REPLACEMENT))
    } else {
        Cow::Borrowed(s)
    }
}

/// Replaces U+0000 in every string and key of `value` by `NUL_REPLACEMENT`.
pub fn escape_nul(value: &mut Value) {
    match value {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', NUL_REPLACEMENT),
        Value::Array(items) => items.iter_mut().for_each(escape_nul),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                for (key, mut item) in std::mem::take(map) {
                    escape_nul(&mut item);
                    map.insert(key.replace('\0', NUL_REPLACEMENT), item);
                }
            } else {
                map.values_mut().for_each(escape_nul);
            }
        }
        _ => {}
    }
}

/// `value` itself when it is storable, else an escaped copy.
pub fn escaped(value: &Value) -> Cow<'_, Value> {
    if has_nul(value) {
        let mut copy = value.clone();
        escape_nul(&mut copy);
        Cow::Owned(copy)
    } else {
        Cow::Borrowed(value)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn nul_is_replaced_in_strings_and_keys_at_any_depth() {
        let mut v = json!({"a\u{0}b": ["x\u{0}", {"deep": "\u{0}\u{0}"}], "n": 1, "plain": "ok"});
        assert!(has_nul(&v));
        escape_nul(&mut v);
        assert!(!has_nul(&v));
        assert_eq!(v, json!({"a\u{FFFD}b": ["x\u{FFFD}", {"deep": "\u{FFFD}\u{FFFD}"}], "n": 1, "plain": "ok"}));
        let clean = json!({"plain": "ok"});
        assert!(matches!(escaped(&clean), Cow::Borrowed(_)));
    }
}

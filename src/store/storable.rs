//! Text Postgres can store. `text` and `jsonb` cannot hold U+0000 (`json` accepts the `\u0000`
//! escape but every `->>` of it fails later), and one such value fails the whole statement —
//! with group commit, other commands' appends too. The edges refuse input carrying it
//! (`validate`); the store escapes whatever still arrives, so no event ever carries it to Postgres.
//! (Lone surrogates, the other text Postgres refuses, cannot exist in a Rust `String`.) And no
//! event is stored deeper than its readers can parse back (`make_storable`).

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
    walk(value, 0, usize::MAX);
}

/// An event's payload as it may be stored, in one walk: U+0000 escaped (`escape_nul`), and every
/// array or object below `MAX_DEPTH` levels replaced by `TOO_DEEP`.
pub fn make_storable(payload: &mut Value) {
    walk(payload, 0, MAX_DEPTH);
}

fn walk(value: &mut Value, depth: usize, max_depth: usize) {
    match value {
        Value::String(s) if s.contains('\0') => *s = s.replace('\0', NUL_REPLACEMENT),
        Value::Array(_) | Value::Object(_) if depth == max_depth => *value = Value::String(TOO_DEEP.into()),
        Value::Array(items) => items.iter_mut().for_each(|item| walk(item, depth + 1, max_depth)),
        Value::Object(map) => {
            if map.keys().any(|k| k.contains('\0')) {
                for (key, mut item) in std::mem::take(map) {
                    walk(&mut item, depth + 1, max_depth);
                    map.insert(key.replace('\0', NUL_REPLACEMENT), item);
                }
            } else {
                map.values_mut().for_each(|item| walk(item, depth + 1, max_depth));
            }
        }
        _ => {}
    }
}

/// Levels of arrays and objects an event's payload keeps: deeper ones are stored as
/// `TOO_DEEP`. serde_json reads at most 128 levels back (its recursion limit, which sqlx's
/// `json` decoding and every reader of a stored payload inherit), and sealing a field adds two,
/// the feed's envelope two more: an event any deeper would be stored and never read again —
/// its aggregate not loadable, `audit verify` stopped on it. Input can reach 128 levels (the
/// request parser's limit) and a refusal records its arguments as given, so the store caps it.
pub const MAX_DEPTH: usize = 64;

/// What a container deeper than `MAX_DEPTH` is stored as.
pub const TOO_DEEP: &str = "[nested too deep]";

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

    /// `levels` arrays, one in another, around `"x"`.
    fn nested(levels: usize) -> Value {
        (0..levels).fold(json!("x"), |inner, _| json!([inner]))
    }

    #[test]
    fn containers_below_the_depth_limit_are_stored_as_a_marker_and_the_rest_is_kept() {
        let mut shallow = json!({"a": nested(MAX_DEPTH - 1), "n": 1});
        let kept = shallow.clone();
        make_storable(&mut shallow);
        assert_eq!(shallow, kept, "a payload within the limit is untouched");

        let mut deep = json!({"a": nested(127), "b": {"c": "kept\u{0}"}});
        make_storable(&mut deep);
        assert_eq!(deep["b"], json!({"c": "kept\u{FFFD}"}), "and U+0000 escaped in the same walk");
        let mut at = &deep["a"];
        for _ in 1..MAX_DEPTH {
            at = &at[0];
        }
        assert_eq!(at, &json!(TOO_DEEP));
        // What is stored reads back, with room for sealing and the feed's envelope.
        let wrapped = json!({"envelope": {"payload": {"sealed": [deep]}}});
        assert!(serde_json::from_str::<Value>(&wrapped.to_string()).is_ok());
    }
}

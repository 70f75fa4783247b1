//! JSON written by hand into a page's text, byte for byte as serde_json writes the same values
//! (the auditor feed, `envelope::PageWriter`): strings escaped as `serde_json` escapes them,
//! integers, UUIDs and times in their serde forms, and the members of a stored JSON object found
//! in its text without parsing it into anything.

use chrono::{DateTime, Datelike, Timelike, Utc};
use uuid::Uuid;

/// What serde_json writes for each byte of a string: 0 itself, else the letter after `\`
/// (`u` for `\u00XX`).
const ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

const HEX: &[u8; 16] = b"0123456789abcdef";

/// `s` as a JSON string, as `serde_json::to_string(s)` writes it.
pub fn push_str(out: &mut String, s: &str) {
    out.push('"');
    let bytes = s.as_bytes();
    // Most strings need no escape: one pass that the compiler vectorizes, then one copy.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.push_str(s);
        out.push('"');
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape = ESCAPE[b as usize];
        if escape == 0 {
            continue;
        }
        // `i` is an ASCII byte, so a char boundary.
        out.push_str(&s[start..i]);
        out.push('\\');
        if escape == b'u' {
            out.push_str("u00");
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 0xf)]));
        } else {
            out.push(char::from(escape));
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

/// `Some(s)` as a JSON string, `None` as `null`.
pub fn push_opt_str(out: &mut String, s: Option<&str>) {
    match s {
        Some(s) => push_str(out, s),
        None => out.push_str("null"),
    }
}

/// An integer, as serde_json writes it.
pub fn push_int(out: &mut String, n: i64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    let mut rest = n.unsigned_abs();
    loop {
        at -= 1;
        digits[at] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    if n < 0 {
        out.push('-');
    }
    out.push_str(std::str::from_utf8(&digits[at..]).expect("ASCII digits"));
}

/// A UUID as its serde form: a JSON string, hyphenated, lower case.
pub fn push_uuid(out: &mut String, id: Uuid) {
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    out.push('"');
    out.push_str(id.hyphenated().encode_lower(&mut text));
    out.push('"');
}

/// `super::rfc3339(t)` as a JSON string (RFC 3339, milliseconds, `Z`), written without the
/// formatting machinery for the years 0–9999 (the others, and leap seconds, through it).
pub fn push_time(out: &mut String, t: DateTime<Utc>) {
    let (year, nanos) = (t.year(), t.nanosecond());
    if !(0..=9999).contains(&year) || nanos >= 1_000_000_000 {
        push_str(out, &super::rfc3339(t));
        return;
    }
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut n: u32| {
        for i in (at..at + width).rev() {
            text[i] = b'0' + (n % 10) as u8;
            n /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    put(17, 2, t.second());
    put(20, 3, nanos / 1_000_000);
    out.push('"');
    out.push_str(std::str::from_utf8(&text).expect("ASCII"));
    out.push('"');
}

/// The text of the top-level members `names` of the JSON object `text`, each value's text exactly
/// as `serde_json` borrows it as a `&RawValue` (no surrounding whitespace), `None` for a member
/// absent or `null` (as an `Option<&RawValue>` reads it).
///
/// `text` must be JSON (a jsonb column's text): it is not validated, only walked (`each_member`).
/// Anything this walk does not read exactly as serde would — not an object, a name with an
/// escape, a name given twice — answers `None`, and the caller reads the text with serde.
pub fn members<'a, const N: usize>(text: &'a str, names: [&str; N]) -> Option<[Option<&'a str>; N]> {
    let mut found: [Option<&'a str>; N] = [None; N];
    let mut seen = [false; N];
    let mut twice = false;
    each_member(text, |name, value| {
        if let Some(i) = names.iter().position(|n| *n == name) {
            twice |= seen[i];
            seen[i] = true;
            found[i] = (value != "null").then_some(value);
        }
    })?;
    (!twice).then_some(found)
}

/// The members of the JSON object `text` in their order: each name as written between its quotes
/// and its value's text. `None` where `each_member` does not read it.
pub fn object(text: &str) -> Option<Vec<(&str, &str)>> {
    let mut members = Vec::new();
    each_member(text, |name, value| members.push((name, value)))?;
    Some(members)
}

/// The items of the JSON array `text`, each item's text. `None` when `text` is not an array (or
/// not one this walk reads: see `each_member`).
pub fn array(text: &str) -> Option<Vec<&str>> {
    let bytes = text.as_bytes();
    let mut items = Vec::new();
    let mut at = skip_ws(bytes, 0);
    if bytes.get(at) != Some(&b'[') {
        return None;
    }
    at = skip_ws(bytes, at + 1);
    if bytes.get(at) == Some(&b']') {
        return trailing_ws_only(bytes, at + 1).then_some(items);
    }
    loop {
        let end = skip_value(bytes, at)?;
        items.push(&text[at..end]);
        at = skip_ws(bytes, end);
        match bytes.get(at) {
            Some(b',') => at = skip_ws(bytes, at + 1),
            Some(b']') => return trailing_ws_only(bytes, at + 1).then_some(items),
            _ => return None,
        }
    }
}

/// Calls `each(name, value)` for every member of the JSON object `text`, in order, where a value
/// is its text as serde borrows it (`&RawValue`). The text must be JSON: the walk finds where
/// each string, object, array, number and literal ends, it does not check that they are well
/// formed. `None` (after some calls, maybe) when `text` is not an object, when a name holds an
/// escape (its text is then not the name), or when the walk finds text where JSON has none.
fn each_member<'a>(text: &'a str, mut each: impl FnMut(&'a str, &'a str)) -> Option<()> {
    let bytes = text.as_bytes();
    let mut at = skip_ws(bytes, 0);
    if bytes.get(at) != Some(&b'{') {
        return None;
    }
    at = skip_ws(bytes, at + 1);
    if bytes.get(at) == Some(&b'}') {
        return trailing_ws_only(bytes, at + 1).then_some(());
    }
    loop {
        if bytes.get(at) != Some(&b'"') {
            return None;
        }
        let name_end = at + 1 + memchr::memchr2(b'"', b'\\', &bytes[at + 1..])?;
        if bytes[name_end] != b'"' {
            return None;
        }
        let name = &text[at + 1..name_end];
        at = skip_ws(bytes, name_end + 1);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        let value_start = skip_ws(bytes, at + 1);
        let value_end = skip_value(bytes, value_start)?;
        each(name, &text[value_start..value_end]);
        at = skip_ws(bytes, value_end);
        match bytes.get(at) {
            Some(b',') => at = skip_ws(bytes, at + 1),
            Some(b'}') => return trailing_ws_only(bytes, at + 1).then_some(()),
            _ => return None,
        }
    }
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\n' | b'\r' | b'\t')
}

fn skip_ws(bytes: &[u8], mut at: usize) -> usize {
    while at < bytes.len() && is_ws(bytes[at]) {
        at += 1;
    }
    at
}

fn trailing_ws_only(bytes: &[u8], at: usize) -> bool {
    skip_ws(bytes, at) == bytes.len()
}

/// Where the string starting at `at` (its opening quote) ends, after its closing quote.
fn skip_string(bytes: &[u8], mut at: usize) -> Option<usize> {
    at += 1;
    loop {
        at += memchr::memchr2(b'"', b'\\', bytes.get(at..)?)?;
        if bytes[at] == b'"' {
            return Some(at + 1);
        }
        at += 2;
    }
}

/// Where the value starting at `at` ends.
fn skip_value(bytes: &[u8], at: usize) -> Option<usize> {
    match bytes.get(at)? {
        b'"' => skip_string(bytes, at),
        b'{' | b'[' => {
            let (mut depth, mut at) = (0usize, at);
            loop {
                match bytes.get(at)? {
                    b'"' => {
                        at = skip_string(bytes, at)?;
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return Some(at + 1);
                        }
                    }
                    _ => {}
                }
                at += 1;
            }
        }
        b',' | b'}' | b']' | b':' => None,
        _ => {
            // A number or a literal: up to the next delimiter.
            let end = bytes[at..].iter().position(|&b| matches!(b, b',' | b'}' | b']') || is_ws(b));
            Some(end.map_or(bytes.len(), |end| at + end))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::value::RawValue;

    #[test]
    fn strings_are_escaped_as_serde_escapes_them() {
        let mut every_char = String::new();
        for c in (0u32..0x300).chain([0x2028, 0x2029, 0xfeff, 0x1f600]).filter_map(char::from_u32) {
            every_char.push(c);
        }
        for s in ["", "plain", "quote \" and \\ backslash", "\u{0}\u{1f}\u{7f}\n\r\t\u{8}\u{c}", "é ü 😀", &every_char]
        {
            let mut out = String::new();
            push_str(&mut out, s);
            assert_eq!(out, serde_json::to_string(s).unwrap());
        }
    }

    #[test]
    fn integers_uuids_and_times_are_written_as_serde_writes_them() {
        for n in [0, 1, -1, 9, 10, 4096, 1 << 40, i64::MAX, i64::MIN, -1234567890123] {
            let mut out = String::new();
            push_int(&mut out, n);
            assert_eq!(out, serde_json::to_string(&n).unwrap());
        }
        for id in [Uuid::nil(), Uuid::max(), Uuid::from_u128(0x0123_4567_89ab_cdef_fedc_ba98_7654_3210)] {
            let mut out = String::new();
            push_uuid(&mut out, id);
            assert_eq!(out, serde_json::to_string(&id).unwrap());
        }
        let mut seconds: i64 = 0;
        for step in 0..5000i64 {
            // Spread over years 0 to beyond 9999, with every millisecond pattern.
            seconds = seconds.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407 + step);
            let s = seconds.rem_euclid(400_000_000_000) - 70_000_000_000;
            let nanos = (step as u32).wrapping_mul(2_654_435_761) % 1_000_000_000;
            let t = DateTime::from_timestamp(s, nanos).unwrap();
            let mut out = String::new();
            push_time(&mut out, t);
            assert_eq!(out, serde_json::to_string(&super::super::rfc3339(t)).unwrap());
        }
    }

    #[derive(serde::Deserialize, Default)]
    #[serde(rename_all = "camelCase", default)]
    struct Context<'a> {
        #[serde(borrow)]
        actor: Option<&'a RawValue>,
        #[serde(borrow)]
        request_id: Option<&'a RawValue>,
    }

    /// An object's members as serde reads them, names unescaped, values as their text.
    struct Members(Vec<(String, String)>);

    impl<'de> serde::Deserialize<'de> for Members {
        fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Members;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members, A::Error> {
                    let mut members = Vec::new();
                    while let Some((name, value)) = map.next_entry::<String, &'de RawValue>()? {
                        members.push((name, value.get().to_string()));
                    }
                    Ok(Members(members))
                }
            }
            deserializer.deserialize_map(Visit)
        }
    }

    #[test]
    fn members_are_the_text_serde_borrows() {
        let texts = [
            r#"{"actor": {"id": "a\"}1", "kind": "agent"}, "requestId": "r-1", "x": [1, {"y": "]"}]}"#,
            r#"{"requestId":null,"actor":[1,2.5e3,true,"\\"]}"#,
            r#"  { "z" : -1.5 , "actor" : "x\\\"" , "requestId" : 12 }  "#,
            r#"{}"#,
            r#"{"other": {"actor": 1}}"#,
            r#"{"actor": false}"#,
            "{\"actor\":\t\"\u{e9}\\u00e9\"\n}",
        ];
        for text in texts {
            let context: Context = serde_json::from_str(text).unwrap();
            let found = members(text, ["actor", "requestId"]).expect(text);
            assert_eq!(found, [context.actor.map(RawValue::get), context.request_id.map(RawValue::get)], "{text}");
        }
        for text in texts {
            let members: Vec<(String, String)> =
                object(text).unwrap().into_iter().map(|(name, value)| (name.to_string(), value.to_string())).collect();
            let Members(expected) = serde_json::from_str(text).unwrap();
            assert_eq!(members, expected, "{text}");
        }
        for text in [r#"[]"#, r#" [ 1 , "a\"]" , {"b": [2]}, [[]], null ] "#, "[true,false]"] {
            let items: Vec<&str> = array(text).unwrap();
            let expected: Vec<&RawValue> = serde_json::from_str(text).unwrap();
            assert_eq!(items, expected.iter().map(|v| v.get()).collect::<Vec<_>>(), "{text}");
        }
        assert_eq!(array(r#"{"a": 1}"#), None);
        assert_eq!(object("[1]"), None);
        // What the walk leaves to serde.
        for text in [r#"["a", "b"]"#, "null", r#"{"actor": 1, "actor": 2}"#, r#"{"\u0061ctor": 1}"#, r#"{"a": 1} x"#] {
            assert_eq!(members(text, ["actor", "requestId"]), None, "{text}");
        }
    }
}

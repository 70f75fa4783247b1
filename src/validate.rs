//! Input validation (docs/tools.md#input-formats-and-sanitizer): the sanitizer every free-text value passes, phone and email
//! formats, and `Args`, the typed reader tools use for their JSON arguments. Every refusal is
//! `invalid_input` naming the field; unknown arguments are ignored.

use std::sync::LazyLock;

use regex::{Regex, RegexSet, RegexSetBuilder};
use serde_json::{Map, Value};

use crate::error::{ApiError, ErrorCode};

/// Fields that may hold line breaks.
const MULTI_LINE: &[&str] =
    &["body", "html", "text", "greeting", "systemPrompt", "notes", "message", "reason", "kycNote"];

const SEP: &str = r"(?:\s|/\*.*?\*/)+";
const CMD: &str = r"(?:rm|cat|ls|wget|curl|bash|sh|zsh|nc|ncat|python3?|perl|php|chmod|chown|cmd|powershell|whoami)";

/// A rule's pattern as the contract writes it, its `SEP` and `CMD` spelled out.
fn pattern(pattern: &str) -> String {
    // The contract writes `drop SEP table`: the spaces only set SEP apart, SEP is the separator.
    pattern.replace(" SEP ", "SEP").replace("SEP", SEP).replace("CMD", CMD)
}

/// The rules in order (first match wins), each a label and its pattern; the CRLF rule (at
/// `CRLF`) differs between single- and multi-line fields.
const RULES: [(&str, &str); 10] = [
    (
        "SQL injection pattern",
        r#"['";)]\s*(?:drop SEP (?:table|database|schema|view|user)|delete SEP from|insert SEP into|update SEP \w+ SEP set|alter SEP (?:table|database|user)|create SEP (?:table|database|user|function)|exec(?:ute)?[\s(]|union SEP (?:all SEP )?select|truncate SEP table)"#,
    ),
    ("SQL tautology pattern", r#"\b(?:or|and)\s+(?:\d+|'[^']*'|"[^"]*")\s*=\s*(?:\d+|'[^']*'?|"[^"]*"?)"#),
    ("Script tag", r"<\s*script[\s>/]"),
    ("Active content tag", r"<\s*(?:iframe|object|embed|applet|frame|frameset|base|meta)\b"),
    ("JavaScript URI", r"(?:javascript|vbscript)\s*:"),
    ("Event handler injection", r"<[a-z!/][^>]*\bon[a-z]+\s*="),
    ("Control character", r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F]"),
    ("CRLF injection", r"[\r\n]"),
    ("Path traversal", r#"(?:^|[\s/\\'"=:])\.\.[/\\]"#),
    (
        "Command injection",
        r"(?:;|&&|\|\|?)\s*(?:/[\w./-]*/)?CMD(?:\s+[-/~$.|<>;&]|\s*$|[;|&`<>])|\$\(|`[^`]*\bCMD\b[^`]*`",
    ),
];
const CRLF: usize = 7;
/// A multi-line field's CRLF rule: a line break is fine, one that starts an HTTP header is not.
const CRLF_MULTI: &str = r"[\r\n]\s*HTTP/";

/// Every rule in one set, for single-line fields and for multi-line ones: one pass over a value
/// finds every rule it breaks (ten passes did), and the first of them in `RULES`' order is named.
static RULE_SETS: LazyLock<(RegexSet, RegexSet)> = LazyLock::new(|| {
    let set = |crlf: &str| {
        let patterns = RULES.iter().enumerate().map(|(i, (_, p))| pattern(if i == CRLF { crlf } else { p }));
        RegexSetBuilder::new(patterns).case_insensitive(true).build().expect("sanitizer patterns compile")
    };
    (set(RULES[CRLF].1), set(CRLF_MULTI))
});

/// `sanitizer_label` as the rules one by one, in order: the reference the rule set is held to
/// (a unit test and the `sanitize` fuzz target).
#[doc(hidden)]
pub fn sanitizer_label_rule_by_rule(field: &str, value: &str) -> Option<&'static str> {
    static ONE_BY_ONE: LazyLock<(Vec<Regex>, Regex)> = LazyLock::new(|| {
        let compile = |p: &str| regex::RegexBuilder::new(&pattern(p)).case_insensitive(true).build().expect("compiles");
        (RULES.iter().map(|(_, p)| compile(p)).collect(), compile(CRLF_MULTI))
    });
    let (rules, crlf_multi) = &*ONE_BY_ONE;
    let decoded = decode_once(value);
    rules.iter().enumerate().find_map(|(i, rule)| {
        let rule = if i == CRLF && MULTI_LINE.contains(&field) { crlf_multi } else { rule };
        (rule.is_match(value) || decoded.as_deref().is_some_and(|d| rule.is_match(d))).then_some(RULES[i].0)
    })
}

/// The label of the first rule `value` breaks, checked as given and after one decode.
pub fn sanitizer_label(field: &str, value: &str) -> Option<&'static str> {
    let (single, multi) = &*RULE_SETS;
    let set = if MULTI_LINE.contains(&field) { multi } else { single };
    let mut first = set.matches(value).iter().next();
    if let Some(decoded) = decode_once(value) {
        first = first.into_iter().chain(set.matches(&decoded).iter().next()).min();
    }
    first.map(|i| RULES[i].0)
}

pub fn invalid(field: &str, message: impl std::fmt::Display) -> ApiError {
    ApiError::new(ErrorCode::InvalidInput, format!("Invalid input for \"{field}\": {message}")).with("field", field)
}

/// The sanitizer's label for U+0000 and its kin; also the refusal of text Postgres cannot store.
pub const CONTROL_CHARACTER: &str = "Control character";

/// Refuses text Postgres cannot store (U+0000; see `store::storable`). For values that reach a
/// query or an event without passing the sanitizer: ids in paths, query strings, claims.
pub fn storable(field: &str, value: &str) -> Result<(), ApiError> {
    if value.contains('\0') {
        Err(invalid(&printable(field), CONTROL_CHARACTER))
    } else {
        Ok(())
    }
}

/// The path (`settings.a`, `items.2`) of the first string or key holding U+0000 in `value`.
pub fn nul_path(value: &Value) -> Option<String> {
    fn walk(value: &Value, path: &mut Vec<String>) -> Option<String> {
        let here = |path: &[String], last: Option<&str>| {
            let mut all: Vec<&str> = path.iter().map(String::as_str).collect();
            all.extend(last);
            printable(&all.join("."))
        };
        match value {
            Value::String(s) if s.contains('\0') => Some(here(path, None)),
            Value::Array(items) => items.iter().enumerate().find_map(|(i, item)| {
                path.push(i.to_string());
                let found = walk(item, path);
                path.pop();
                found
            }),
            Value::Object(map) => map.iter().find_map(|(key, item)| {
                if key.contains('\0') {
                    return Some(here(path, Some(key)));
                }
                path.push(key.clone());
                let found = walk(item, path);
                path.pop();
                found
            }),
            _ => None,
        }
    }
    walk(value, &mut Vec::new())
}

/// A field name fit for a message: U+0000 shown as U+FFFD.
fn printable(field: &str) -> String {
    field.replace('\0', crate::store::storable::NUL_REPLACEMENT)
}

/// Refuses a value the sanitizer flags.
pub fn sanitize(field: &str, value: &str) -> Result<(), ApiError> {
    match sanitizer_label(field, value) {
        Some(label) => Err(invalid(field, label)),
        None => Ok(()),
    }
}

/// One decode of `%HH` and HTML entities; `None` when nothing was encoded.
fn decode_once(value: &str) -> Option<String> {
    if !value.contains('%') && !value.contains('&') {
        return None;
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => match (hex_digit(bytes[i + 1]), hex_digit(bytes[i + 2])) {
                (Some(hi), Some(lo)) => {
                    out.push(hi << 4 | lo);
                    i += 3;
                }
                _ => {
                    out.push(b'%');
                    i += 1;
                }
            },
            b'&' => match decode_entity(&value[i..]) {
                Some((c, len)) => {
                    let mut buf = [0u8; 4];
                    out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    i += len;
                }
                None => {
                    out.push(b'&');
                    i += 1;
                }
            },
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    let decoded = String::from_utf8_lossy(&out).into_owned();
    (decoded != value).then_some(decoded)
}

fn hex_digit(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn decode_entity(s: &str) -> Option<(char, usize)> {
    for (name, c) in [("&lt;", '<'), ("&gt;", '>'), ("&quot;", '"'), ("&apos;", '\''), ("&amp;", '&')] {
        // By bytes: the text after `&` may start with a multi-byte character (a `str` slice at
        // `name.len()` could fall inside it and panic).
        if s.as_bytes().get(..name.len()).is_some_and(|head| head.eq_ignore_ascii_case(name.as_bytes())) {
            return Some((c, name.len()));
        }
    }
    let rest = s.strip_prefix("&#")?;
    let end = rest.find(';')?;
    let (digits, radix) = match rest[..end].strip_prefix(['x', 'X']) {
        Some(hex) => (hex, 16),
        None => (&rest[..end], 10),
    };
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let c = char::from_u32(u32::from_str_radix(digits, radix).ok()?)?;
    Some((c, 2 + end + 1))
}

/// Money in dollars (docs/README.md#conventions: ≤ 6 decimals, stored as integer micro-dollars): a
/// JSON number ≥ 0 whose decimal form has at most six decimals, as micro-dollars. The one check
/// of every money field (agent limit overrides, org spend caps).
pub fn money(field: &str, value: &Value) -> Result<i64, ApiError> {
    match value {
        Value::Number(n) => crate::money::from_json(n).filter(|m| *m >= 0),
        _ => None,
    }
    .ok_or_else(|| invalid(field, "must be a number ≥ 0 with at most 6 decimals"))
}

/// A JSON number in `min..=max` whose decimal form has at most six decimals (a percentage).
pub fn decimal(field: &str, value: &Value, min: f64, max: f64) -> Result<f64, ApiError> {
    match value {
        Value::Number(n) => {
            crate::money::from_json(n).map(crate::money::to_dollars).filter(|d| (min..=max).contains(d))
        }
        _ => None,
    }
    .ok_or_else(|| invalid(field, format!("must be a number from {min} to {max} with at most 6 decimals")))
}

// ASCII digits only: `\d` matches every Unicode digit, and `+1２０２…` would be a number that no
// DNC entry or consent of `+1202…` matches, while a provider may well dial it.
static PHONE: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^\+[1-9][0-9]{1,14}$").expect("phone pattern"));
static EMAIL: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[^\s@]+@[^\s@]+\.[^\s@]+$").expect("email pattern"));

/// E.164 after stripping spaces, `-`, `.`, `(` and `)`.
pub fn phone(field: &str, value: &str) -> Result<String, ApiError> {
    sanitize(field, value)?;
    let stripped: String = value.chars().filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')')).collect();
    if PHONE.is_match(&stripped) {
        Ok(stripped)
    } else {
        Err(invalid(field, "Invalid phone number format (expected E.164, e.g. +1234567890)"))
    }
}

/// Trimmed and lower-cased.
pub fn email(field: &str, value: &str) -> Result<String, ApiError> {
    sanitize(field, value)?;
    let normalised = value.trim().to_lowercase();
    if normalised.len() <= 254 && EMAIL.is_match(&normalised) {
        Ok(normalised)
    } else {
        Err(invalid(field, "Invalid email address format"))
    }
}

static ID: LazyLock<Regex> = LazyLock::new(|| Regex::new(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$").expect("id pattern"));

/// Agent and org ids (docs/tools.md#common-rules).
pub fn id(field: &str, value: &str) -> Result<String, ApiError> {
    if ID.is_match(value) {
        Ok(value.to_string())
    } else {
        Err(invalid(field, "must match ^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"))
    }
}

/// The longest string an argument may be unless its field says otherwise (docs/tools.md).
pub const MAX_STRING: usize = 10_000;

/// Typed access to a tool's JSON arguments.
pub struct Args<'a>(pub &'a Map<String, Value>);

impl<'a> Args<'a> {
    pub fn new(value: &'a Value) -> Result<Self, ApiError> {
        static EMPTY: LazyLock<Map<String, Value>> = LazyLock::new(Map::new);
        match value {
            // Every argument, known or not: nothing holding U+0000 goes further (the sanitizer
            // covers free text; objects, credentials and unknown arguments are covered here).
            Value::Object(map) => match nul_path(value) {
                Some(field) => Err(invalid(&field, CONTROL_CHARACTER)),
                None => Ok(Self(map)),
            },
            Value::Null => Ok(Self(&EMPTY)),
            _ => Err(ApiError::new(ErrorCode::InvalidInput, "Invalid input: arguments must be an object")),
        }
    }

    fn present(&self, field: &str) -> Option<&'a Value> {
        self.0.get(field).filter(|v| !v.is_null())
    }

    /// An optional string of at most `max` characters, sanitized.
    pub fn opt_str(&self, field: &str, max: usize) -> Result<Option<String>, ApiError> {
        match self.present(field) {
            None => Ok(None),
            Some(Value::String(s)) => {
                free_text(field, s, max)?;
                Ok(Some(s.clone()))
            }
            Some(_) => Err(invalid(field, "must be a string")),
        }
    }

    /// A required string of `min..=max` characters (after trimming), sanitized.
    pub fn str(&self, field: &str, min: usize, max: usize) -> Result<String, ApiError> {
        let value = self.opt_str(field, max)?.ok_or_else(|| invalid(field, "is required"))?;
        if value.trim().chars().count() < min {
            return Err(invalid(field, format!("must be at least {min} characters")));
        }
        Ok(value)
    }

    pub fn bool(&self, field: &str, default: bool) -> Result<bool, ApiError> {
        match self.present(field) {
            None => Ok(default),
            Some(Value::Bool(b)) => Ok(*b),
            Some(_) => Err(invalid(field, "must be a boolean")),
        }
    }

    /// One of `allowed`, or `default` when absent.
    pub fn choice(&self, field: &str, allowed: &[&str], default: &str) -> Result<String, ApiError> {
        match self.opt_str(field, 64)? {
            None => Ok(default.to_string()),
            Some(v) if allowed.contains(&v.as_str()) => Ok(v),
            Some(_) => Err(invalid(field, format!("must be one of {}", allowed.join(", ")))),
        }
    }

    /// An optional id (agentId, orgId).
    pub fn opt_id(&self, field: &str) -> Result<Option<String>, ApiError> {
        match self.opt_str(field, 64)? {
            None => Ok(None),
            Some(v) => id(field, &v).map(Some),
        }
    }

    pub fn object(&self, field: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
        match self.present(field) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(invalid(field, "must be an object")),
        }
    }

    /// An object of free-form values (an org's `settings`; `{}` when absent): every string in it,
    /// key or value at any depth, is free text, held to `MAX_STRING` and passed through the
    /// sanitizer under its path (`settings.a.b[0]`).
    pub fn free_object(&self, field: &str) -> Result<Value, ApiError> {
        let value = self.object(field)?.cloned().map(Value::Object).unwrap_or_else(|| Value::Object(Map::new()));
        free_text_within(field, &value)?;
        Ok(value)
    }
}

/// Free text of at most `max` characters, sanitized.
fn free_text(field: &str, s: &str, max: usize) -> Result<(), ApiError> {
    if s.chars().count() > max {
        return Err(invalid(field, format!("must be at most {max} characters")));
    }
    sanitize(field, s)
}

fn free_text_within(path: &str, value: &Value) -> Result<(), ApiError> {
    let text = |path: &str, s: &str| free_text(path, s, MAX_STRING);
    match value {
        Value::String(s) => text(path, s),
        Value::Array(items) => {
            items.iter().enumerate().try_for_each(|(i, item)| free_text_within(&format!("{path}[{i}]"), item))
        }
        Value::Object(members) => members.iter().try_for_each(|(key, item)| {
            let path = format!("{path}.{key}");
            text(&path, key)?;
            free_text_within(&path, item)
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// The set finds what the rules one by one, in order, find (as given and decoded once).
    #[test]
    fn the_rule_set_names_the_first_rule_a_value_breaks() {
        let values = [
            "hello",
            "Tom & cat",
            "Wait.../ok",
            "a\r\nb",
            "x\r\nHTTP/1.1 200",
            "'; DROP /**/ TABLE users",
            "1' or '1'='1",
            "<script>alert(1)</script>",
            "<iframe src=x>",
            "JaVaScRiPt:alert(1)",
            "<img src=x onerror=alert(1)>",
            "a\u{7f}b",
            "../../etc/passwd",
            "; rm -rf /",
            "$(whoami)",
            "`cat /etc/passwd`",
            "%3Cscript%3E",
            "&lt;script&gt;",
            "%2e%2e%2f",
            "<script> and ../x",
            "; ls and <iframe>",
            "%0d%0aHTTP/1.1",
            "'; exec(xp_cmdshell)",
            "a && curl x",
        ];
        for field in ["body", "subject"] {
            for value in values {
                assert_eq!(
                    sanitizer_label(field, value),
                    sanitizer_label_rule_by_rule(field, value),
                    "{field}: {value:?}"
                );
            }
        }
    }

    #[test]
    fn a_free_form_object_holds_only_sanitized_text() {
        let ok = json!({"settings": {"region": "eu", "nested": {"list": ["a", 1, true]}}});
        assert_eq!(Args::new(&ok).unwrap().free_object("settings").unwrap(), ok["settings"]);
        assert_eq!(Args::new(&json!({})).unwrap().free_object("settings").unwrap(), json!({}));
        for (bad, field) in [
            (json!({"settings": {"note": "<script>alert(1)</script>"}}), "settings.note"),
            (json!({"settings": {"a": {"b": ["ok", "javascript:alert(1)"]}}}), "settings.a.b[1]"),
            (json!({"settings": {"<script>": "x"}}), "settings.<script>"),
            (json!({"settings": {"long": "x".repeat(MAX_STRING + 1)}}), "settings.long"),
        ] {
            let refused = Args::new(&bad).unwrap().free_object("settings").unwrap_err();
            assert_eq!(refused.code, ErrorCode::InvalidInput, "{bad}");
            assert!(refused.message.contains(&format!("\"{field}\"")), "{field}: {}", refused.message);
        }
    }

    #[test]
    fn the_sanitizer_flags_attacks_and_passes_plain_text() {
        let table = [
            ("name", "x'; DROP TABLE users", Some("SQL injection pattern")),
            ("name", "a' or '1'='1", Some("SQL tautology pattern")),
            ("name", "%3Cscript%3Ealert(1)", Some("Script tag")),
            ("name", "&lt;script&gt;", Some("Script tag")),
            ("name", "<img src=x onerror=alert(1)>", Some("Event handler injection")),
            ("name", "line\r\nSet-Cookie: x", Some("CRLF injection")),
            ("body", "line one\r\nline two", None),
            ("body", "x\r\nHTTP/1.1 200 OK", Some("CRLF injection")),
            ("name", "../../etc/passwd", Some("Path traversal")),
            ("name", "x; rm -rf /", Some("Command injection")),
            ("name", "$(whoami)", Some("Command injection")),
            ("name", "Tom & cat", None),
            // A multi-byte character right after `&` (found by schemathesis: it panicked).
            ("name", "&2\u{dd}x", None),
            ("name", "&\u{dd}", None),
            ("name", "&l\u{1F600}", None),
            ("name", "&#x\u{dd};", None),
            ("name", "Wait.../ok", None),
            ("name", "Sales Agent 1", None),
        ];
        for (field, value, expected) in table {
            assert_eq!(sanitizer_label(field, value), expected, "{field}: {value:?}");
        }
    }

    #[test]
    fn formats_normalise_or_refuse() {
        assert_eq!(phone("to", "+1 (555) 123-4567").unwrap(), "+15551234567");
        assert!(phone("to", "5551234567").is_err());
        // Full-width and Arabic-Indic digits are digits to Unicode, not to E.164.
        assert!(phone("to", "+1２０２５５５０１４２").is_err());
        assert!(phone("to", "+1٢٠٢٥٥٥٠١٤٢").is_err());
        assert_eq!(email("to", "  Bob@Example.COM ").unwrap(), "bob@example.com");
        assert!(email("to", "bob@example").is_err());
        assert!(id("agentId", "sales-1.a_b").is_ok());
        assert!(id("agentId", "-bad").is_err());
    }
}

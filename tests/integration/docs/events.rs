//! The generator of the catalogue in `docs/events.md`: every event enum of `domain/src`, read
//! from the source (variants, serde field names, field types, `event_version`), joined with the
//! hand-written tables below (the stream each enum is appended to, the personal-data class of
//! each sealed field, the meaning of each named value type). A variant, field or type the tables
//! do not cover, or a table row the code no longer has, fails the docs test.

use std::collections::{BTreeMap, BTreeSet};

/// The domain sources that declare events.
const SOURCES: &[&str] =
    &["domain/src/organization.rs", "domain/src/agent.rs", "domain/src/contact.rs", "domain/src/records.rs"];

/// Each event enum, in the order the catalogue shows it: a title, its stream (aggregate type /
/// id) and what the enum is for.
const STREAMS: &[(&str, &str, &str, &str)] = &[
    ("OrganizationEvent", "Organization events", "`organization` / orgId", "An organization's lifecycle, settings and tokens; decided by the `Organization` aggregate."),
    ("AgentEvent", "Agent events", "`agent` / agentId", "An agent's lifecycle, tokens and settings (decided by the `Agent` aggregate), and the outbound and inbound facts of its traffic (recorded without loading the aggregate)."),
    ("ContactEvent", "Contact events", "`contact` / `<orgId>:<subjectRef>`", "Consent and do-not-contact state of one phone number or email in one org; decided by the `Contact` aggregate."),
    ("IpEvent", "IP events", "`ip` / ipRef", "Authentication failures and lockouts of one client IP (IPv6 by /64)."),
    ("SessionEvent", "Session events", "`principal` / `<kind>:<id>`", "MCP sessions opened and closed by one principal."),
    ("RefusalEvent", "Refusals", "`platform` / `platform` for callers without an agent or org (the others' refusals are on their `agent` or `organization` stream)", "A tool call, admin request or session open refused before any aggregate decided."),
    ("ProviderEvent", "Provider registrations", "`platform` / `platform` for the platform's own credentials", "Provider credentials registered: key names, never values."),
    ("AlertEvent", "Alerts", "`alert` / dedupKey", "An alert; the stream holds at most one event, so the key deduplicates across instances."),
    ("SubjectEvent", "Data-subject events", "`subject` / subjectRef", "What was done to one data subject as a whole."),
    ("RetentionEvent", "Retention", "`platform` / `platform`", "A retention run that destroyed keys or purged rows."),
];

/// Personal-data fields: (event, field, class). Classes are explained in docs/events.md#personal-data.
const PERSONAL: &[(&str, &str, &str)] = &[
    ("BillingConfigChanged", "billingEmail", "identifier"),
    ("MessageSent", "to", "identifier"),
    ("MessageSent", "subject", "content"),
    ("MessageSent", "body", "content"),
    ("MessageSent", "html", "content"),
    ("MessageBlocked", "to", "identifier"),
    ("MessageBlocked", "body", "content"),
    ("MessageFailed", "to", "identifier"),
    ("CallPlaced", "to", "identifier"),
    ("CallPlaced", "text", "content"),
    ("CallPlaced", "systemPrompt", "content"),
    ("CallBlocked", "to", "identifier"),
    ("CallFailed", "to", "identifier"),
    ("MessageReceived", "from", "identifier"),
    ("MessageReceived", "subject", "content"),
    ("MessageReceived", "body", "content"),
    ("CallStatusChanged", "recordingUrl", "recording"),
    ("ConsentGranted", "contact", "consent"),
    ("ConsentGranted", "source", "consent"),
    ("ConsentGranted", "notes", "consent"),
    ("ConsentRevoked", "contact", "consent (identifier when no consent was active)"),
    ("StopReceived", "from", "identifier"),
    ("StartReceived", "from", "identifier"),
    ("DncAdded", "address", "identifier"),
    ("DncRemoved", "address", "identifier"),
    ("AuthFailed", "ip", "security"),
    ("IpLockedOut", "ip", "security"),
    ("ActionRefused", "args", "arguments"),
];

/// Named value types that appear in payloads, and their JSON form.
const TYPES: &[(&str, &str)] = &[
    ("OrgMode", "`\"sandbox\"`, `\"production\"` or `\"suspended\"`"),
    ("OrgSettings", "`{a2pRegistered, maxAgents, maxSpendPerDay, maxSpendPerMonth}`; spend caps in micro-dollars, `null` = no cap"),
    ("Capabilities", "`{phone, whatsapp, email, voiceAi}`, booleans"),
    ("IssuedVia", "`\"provision\"`, `\"rotate\"` or `\"cli\"`"),
    ("Overrides", "`{perMinute, perHour, perDay, spendDay, spendMonth}`; each `null` when the tier's value applies; spend in micro-dollars"),
    ("LimitSet", "`{perMinute, perHour, perDay, spendDay, spendMonth}`; spend in micro-dollars"),
    ("Tier", "`\"free\"`, `\"starter\"`, `\"pro\"` or `\"enterprise\"`"),
    ("ConsentType", "`\"express\"`, `\"implied\"` or `\"transactional\"`"),
    ("RevokeReason", "`\"tool\"`, `\"stop_keyword\"` or `\"complaint\"`"),
    ("DncSource", "`\"stop_keyword\"`, `\"admin\"`, `\"agent\"` or `\"complaint\"`"),
];

/// One event variant as the source declares it.
#[derive(Debug, Clone, PartialEq)]
struct Variant {
    name: String,
    /// (serde name, Rust type, omitted when absent)
    fields: Vec<(String, String, bool)>,
}

/// (enum name, version, variants) for every `pub enum *Event` of the sources.
fn enums() -> Vec<(String, String, Vec<Variant>)> {
    let sources: Vec<String> = SOURCES
        .iter()
        .map(|source| std::fs::read_to_string(super::repo_file(source)).expect("domain source"))
        .collect();
    let payloads = payload_structs(&sources.concat());
    let mut found = Vec::new();
    for text in &sources {
        let versions = versions(text);
        // `event_type` strings are the variant names: `Self::X { .. } => "X"` (the macro stringifies).
        for (i, _) in text.match_indices("Self::") {
            let arm = &text[i + "Self::".len()..];
            if let Some((variant, rest)) = arm.split_once(" { .. } => \"") {
                if !variant.contains(char::is_whitespace) {
                    let named = rest.split('"').next().unwrap_or_default();
                    assert!(
                        named == variant || !named.chars().next().is_some_and(char::is_uppercase),
                        "{variant} is stored as {named}"
                    );
                }
            }
        }
        let mut rest = text.as_str();
        while let Some(at) = rest.find("pub enum ") {
            let before = &rest[..at];
            let after = &rest[at + "pub enum ".len()..];
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            rest = after;
            if !name.ends_with("Event") {
                continue;
            }
            let attributes = before.rsplit("\n\n").next().unwrap_or_default();
            let body_start = after.find('{').expect("enum body") + 1;
            let (body, inlined) = inline_payloads(&after[body_start..], &payloads);
            assert!(
                attributes.contains("rename_all_fields = \"camelCase\"") || !inlined.struct_variants,
                "{name}: the catalogue assumes camelCase field names"
            );
            let variants = parse_variants(&body);
            let version = versions.get(&name).cloned().unwrap_or_else(|| panic!("{name}: no event_version found"));
            found.push((name, version, variants));
        }
    }
    found
}

/// Payload structs an event variant embeds whole (`ActionRefused(ActionRefused)`): name → the
/// body of its braces. Only `rename_all = "camelCase"` structs qualify, as the catalogue
/// camel-cases every field.
fn payload_structs(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (i, _) in text.match_indices("pub struct ") {
        let attributes = text[..i].rsplit("\n\n").next().unwrap_or_default();
        let after = &text[i + "pub struct ".len()..];
        let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
        let Some(open) = after.find('{') else { continue };
        if !attributes.contains("rename_all = \"camelCase\"") || after[..open].contains(';') {
            continue;
        }
        let mut depth = 0;
        for (j, c) in after[open..].char_indices() {
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        out.insert(name.clone(), after[open + 1..open + j].to_string());
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    out
}

/// What `inline_payloads` found in an enum body.
struct Inlined {
    /// The body declared struct variants of its own (before any payload was inlined).
    struct_variants: bool,
}

/// `body` (an enum body) with every `X(X)` variant whose payload struct is known written as the
/// struct variant `X { … }`, so `parse_variants` reads the payload's fields.
fn inline_payloads(body: &str, payloads: &BTreeMap<String, String>) -> (String, Inlined) {
    let end = {
        let mut depth = 1;
        body.char_indices()
            .find(|&(_, c)| {
                match c {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    _ => {}
                }
                depth == 0
            })
            .map_or(body.len(), |(i, _)| i)
    };
    let struct_variants = body[..end].contains('{');
    let mut out = body.to_string();
    for (name, fields) in payloads {
        let tuple = format!("{name}({name})");
        if body[..end].contains(&tuple) {
            out = out.replacen(&tuple, &format!("{name} {{{fields}}}"), 1);
        }
    }
    (out, Inlined { struct_variants })
}

/// `event_version` per enum: `impl DomainEvent for X { … fn event_version … "v" }`, or the
/// `event_types!` macro's version for every enum listed in it.
fn versions(text: &str) -> BTreeMap<String, String> {
    let literal_after = |s: &str| -> Option<String> {
        let at = s.find("fn event_version")?;
        let s = &s[at..];
        let open = s.find('"')? + 1;
        let close = s[open..].find('"')? + open;
        Some(s[open..close].to_string())
    };
    let mut out = BTreeMap::new();
    for (i, _) in text.match_indices("impl DomainEvent for ") {
        let s = &text[i + "impl DomainEvent for ".len()..];
        let ty: String = s.chars().take_while(|c| c.is_alphanumeric() || *c == '_' || *c == '$').collect();
        if let Some(v) = literal_after(s) {
            if ty == "$ty" {
                for (j, _) in text.match_indices("\nevent_types!(") {
                    let listed: String =
                        text[j + "\nevent_types!(".len()..].chars().take_while(|c| c.is_alphanumeric()).collect();
                    out.insert(listed, v.clone());
                }
            } else {
                out.insert(ty, v);
            }
        }
    }
    out
}

/// Variants and fields of an enum body (starting just after its `{`): comments and attributes
/// are skipped; a field's type runs to the next top-level comma.
fn parse_variants(body: &str) -> Vec<Variant> {
    let chars: Vec<char> = body.chars().collect();
    let mut variants = Vec::new();
    let mut depth = 1;
    let mut i = 0;
    let mut skip_next = false;
    while i < chars.len() && depth > 0 {
        let c = chars[i];
        if c == '/' && chars.get(i + 1) == Some(&'/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
            continue;
        }
        if c == '#' && chars.get(i + 1) == Some(&'[') {
            let start = i;
            let mut brackets = 0;
            while i < chars.len() {
                match chars[i] {
                    '[' => brackets += 1,
                    ']' => {
                        brackets -= 1;
                        if brackets == 0 {
                            break;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            let attribute: String = chars[start..i].iter().collect();
            skip_next |= attribute.contains("skip_serializing_if");
            i += 1;
            continue;
        }
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ if c.is_alphabetic() && (i == 0 || !(chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')) => {
                let start = i;
                while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j].is_whitespace() {
                    j += 1;
                }
                if depth == 1 && chars.get(j) == Some(&'{') {
                    variants.push(Variant { name: word, fields: Vec::new() });
                } else if depth == 2 && chars.get(j) == Some(&':') && chars.get(j + 1) != Some(&':') {
                    let mut k = j + 1;
                    let mut angles = 0;
                    let type_start = k;
                    while k < chars.len() {
                        match chars[k] {
                            '<' => angles += 1,
                            '>' => angles -= 1,
                            ',' | '}' if angles == 0 => break,
                            _ => {}
                        }
                        k += 1;
                    }
                    let ty: String = chars[type_start..k].iter().collect::<String>().trim().to_string();
                    let variant = variants.last_mut().expect("a field inside a variant");
                    variant.fields.push((camel(&word), ty, std::mem::take(&mut skip_next)));
                    i = k;
                }
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    variants
}

fn camel(snake: &str) -> String {
    let mut out = String::new();
    let mut upper = false;
    for c in snake.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

/// A Rust field type in JSON words; named domain types keep their name (see `TYPES`).
fn json_type(ty: &str, named: &mut BTreeSet<String>) -> String {
    let ty = ty.replace(' ', "");
    let inner = |prefix: &str| ty.strip_prefix(prefix).and_then(|t| t.strip_suffix('>')).map(str::to_string);
    if let Some(t) = inner("Option<") {
        return format!("{} or null", json_type(&t, named));
    }
    if let Some(t) = inner("Vec<") {
        return format!("array of {}", json_type(&t, named));
    }
    match ty.as_str() {
        "String" => "string".into(),
        "Uuid" => "string (UUID)".into(),
        "bool" => "boolean".into(),
        "u32" | "u64" | "i64" => "integer".into(),
        "f64" => "number".into(),
        "Value" | "serde_json::Value" => "JSON".into(),
        "Pii" => "sealed string".into(),
        other => {
            named.insert(other.to_string());
            format!("[{other}](#value-types)")
        }
    }
}

/// The markdown between the generated-part markers of docs/events.md.
pub fn render() -> String {
    let enums = enums();
    let declared: Vec<&str> = enums.iter().map(|(n, _, _)| n.as_str()).collect();
    let streams: Vec<&str> = STREAMS.iter().map(|(n, _, _, _)| *n).collect();
    assert_eq!(
        declared.iter().copied().collect::<BTreeSet<_>>(),
        streams.iter().copied().collect::<BTreeSet<_>>(),
        "every event enum has one STREAMS row in tests/integration/docs/events.rs"
    );
    let fields: BTreeMap<(String, String), String> = enums
        .iter()
        .flat_map(|(_, _, variants)| variants.iter())
        .flat_map(|v| v.fields.iter().map(move |(f, ty, _)| ((v.name.clone(), f.clone()), ty.clone())))
        .collect();
    for ((event, field), ty) in &fields {
        let sealed = ty.contains("Pii");
        let listed = PERSONAL.iter().any(|(e, f, _)| e == event && f == field);
        assert!(!sealed || listed, "{event}.{field} is personal data: give it a PERSONAL row");
    }
    for (event, field, _) in PERSONAL {
        assert!(
            fields.contains_key(&(event.to_string(), field.to_string())),
            "PERSONAL names {event}.{field}, which no event has"
        );
    }

    let mut named = BTreeSet::new();
    // One row per event type, with every stream it is appended to.
    let mut rows: Vec<(String, Vec<&str>, String)> = Vec::new();
    for (stream_enum, _, stream, _) in STREAMS {
        let (_, version, variants) = enums.iter().find(|(n, _, _)| n == stream_enum).expect("checked above");
        for v in variants {
            match rows.iter_mut().find(|(name, _, _)| *name == v.name) {
                Some((_, streams, _)) => streams.push(stream),
                None => rows.push((v.name.clone(), vec![stream], version.clone())),
            }
        }
    }
    let mut out = String::from("## Catalogue\n\n| Event | Stream | Version |\n|---|---|---|\n");
    for (name, streams, version) in &rows {
        out.push_str(&format!("| [`{name}`](#{}) | {} | {version} |\n", name.to_lowercase(), streams.join("; ")));
    }
    let mut shown = BTreeSet::new();
    for (stream_enum, title, stream, about) in STREAMS {
        let (_, version, variants) = enums.iter().find(|(n, _, _)| n == stream_enum).expect("checked above");
        out.push_str(&format!("\n## {title}\n\nStream: {stream}. {about}\n"));
        for v in variants {
            if !shown.insert(v.name.clone()) {
                out.push_str(&format!(
                    "\n[`{}`](#{}) (version {version}) is appended here too.\n",
                    v.name,
                    v.name.to_lowercase()
                ));
                continue;
            }
            out.push_str(&format!("\n### {}\n\nVersion {version}.\n\n", v.name));
            out.push_str("| Field | Type | Personal data |\n|---|---|---|\n");
            for (field, ty, optional) in &v.fields {
                let personal = PERSONAL
                    .iter()
                    .find(|(e, f, _)| *e == v.name && f == field)
                    .map_or(String::new(), |(_, _, class)| class.to_string());
                let mut shown_type = json_type(ty, &mut named);
                if *optional {
                    shown_type.push_str(", omitted when absent");
                }
                out.push_str(&format!("| `{field}` | {shown_type} | {personal} |\n"));
            }
        }
    }
    let typed: BTreeSet<String> = TYPES.iter().map(|(t, _)| t.to_string()).collect();
    assert_eq!(named, typed, "every named payload type has one TYPES row in tests/integration/docs/events.rs");
    out.push_str("\n## Value types\n\n| Type | JSON |\n|---|---|\n");
    for (ty, json) in TYPES {
        out.push_str(&format!("| {ty} | {json} |\n"));
    }
    out
}

/// Every event type name the domain declares.
pub fn event_types() -> BTreeSet<String> {
    enums().into_iter().flat_map(|(_, _, variants)| variants.into_iter().map(|v| v.name)).collect()
}

//! Sealing and opening the personal-data fields of event payloads (docs/privacy.md#keys-and-crypto-shredding).
//!
//! The domain marks a personal field with the keys that must seal it (`Pii` clear form). Before
//! an event is stored, `seal_payload` replaces every such field with an envelope encrypted under
//! those keys; `open_payload` reverses it for the auditor feed and exports, reading `"[erased]"`
//! wherever a key has been destroyed.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, Utc};
use commguard_domain::pii::{ClearField, SealedField, CLEAR_MARKER, SEALED_MARKER};
use serde_json::value::RawValue;
use serde_json::Value;
use uuid::Uuid;

use super::keystore::{IdMap, KeyStore, KeyStoreError};
use crate::crypto::envelope::{self, Opened};
use crate::crypto::Key;

/// The organization under which subject keys of platform-level events live.
pub const PLATFORM_ORG: &str = "platform";

/// Replaces every clear personal field in `payload` with its sealed envelope. Unless `check_now`,
/// returns the subject keys taken from the key store's cache unchecked
/// (`KeyStore::subject_key_deferred`): the statement that stores the payload must check that they
/// still live (`append_batch`'s `e_keys`). With `check_now`, every subject key is checked here.
pub async fn seal_payload(
    keystore: &KeyStore,
    payload: &mut Value,
    event_id: Uuid,
    org_id: Option<&str>,
    occurred_at: DateTime<Utc>,
    check_now: bool,
) -> Result<Vec<Uuid>, KeyStoreError> {
    let mut fields: Vec<Field<Clear>> = Vec::new();
    collect(payload, CLEAR_MARKER, &mut Vec::new(), &mut fields);
    // One subject's key is read once per payload, however many fields it seals.
    let mut subject_keys: HashMap<String, (Uuid, Key)> = HashMap::new();
    let mut unchecked = Vec::new();
    for Field { path, at, value: Clear { seal: clear } } in fields {
        let mut keys: Vec<(Uuid, Key)> = Vec::with_capacity(3);
        if let Some(key_id) = clear.with.subject_key {
            let key = keystore.lookup(&[key_id]).await?.remove(&key_id).ok_or_else(|| {
                KeyStoreError::Unwrap(format!("personal field {path}: its subject key {key_id} was destroyed"))
            })?;
            keys.push((key_id, key));
        }
        if let Some(subject) = &clear.with.subject {
            let subject_ref = keystore.data_keys().blind_index(subject);
            let key = match subject_keys.get(&subject_ref) {
                Some(key) => *key,
                None => {
                    let org = org_id.unwrap_or(PLATFORM_ORG);
                    let key = if check_now {
                        keystore.subject_key(org, &subject_ref).await?
                    } else {
                        let (key, check) = keystore.subject_key_deferred(org, &subject_ref).await?;
                        unchecked.extend(check);
                        key
                    };
                    subject_keys.insert(subject_ref, key);
                    key
                }
            };
            keys.push(key);
        }
        if let Some(class) = clear.with.retention {
            keys.push(keystore.retention_key(class, occurred_at.date_naive()).await?);
        }
        if let Some(consent_id) = clear.with.consent_record {
            keys.push(keystore.consent_key(consent_id).await?);
        }
        if keys.is_empty() {
            return Err(KeyStoreError::Unwrap(format!("personal field {path} names no key to seal it")));
        }
        let sealed = envelope::seal(&keys, event_id, &path, &clear.value);
        *pointer_mut(payload, &at).expect("the path was just collected from this payload") =
            serde_json::to_value(sealed).expect("an envelope always serializes");
    }
    Ok(unchecked)
}

/// A clear field as the domain writes it (`Pii::Clear`), read as such: `Pii` is untagged, so
/// reading one through it buffers the object and builds an error for the sealed form it is not
/// first (1.8 % of the server's samples at 16 sessions, all of them here).
#[derive(serde::Deserialize)]
struct Clear {
    #[serde(rename = "$seal")]
    seal: ClearField,
}

/// True when any clear personal field is left: the store refuses to write such a payload.
pub fn has_clear_fields(payload: &Value) -> bool {
    match payload {
        Value::Object(map) => map.contains_key(CLEAR_MARKER) || map.values().any(has_clear_fields),
        Value::Array(items) => items.iter().any(has_clear_fields),
        _ => false,
    }
}

/// A path that could not be opened, for the feed's `redactions`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, schemars::JsonSchema)]
pub struct Redaction {
    pub path: String,
    pub reason: &'static str,
}

/// Opens every sealed field whose keys all exist; the others read `"[erased]"`.
pub async fn open_payload(
    keystore: &KeyStore,
    payload: &mut Value,
    event_id: Uuid,
) -> Result<Vec<Redaction>, KeyStoreError> {
    let fields = sealed_fields(payload);
    let keys = OpeningKeys::load(keystore, key_ids([&fields])).await?;
    Ok(keys.open_fields(payload, fields, event_id))
}

/// A stored payload with sealed fields, parsed once: the tree and where its fields are.
pub struct SealedPayload {
    pub value: Value,
    fields: Vec<Field<SealedField>>,
}

impl SealedPayload {
    /// The payload parsed (`null` if the text is not JSON), with its sealed fields.
    pub fn parse(text: &str) -> Self {
        let value: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let fields = sealed_fields(&value);
        Self { value, fields }
    }

    /// The key ids its fields name (with repeats).
    pub fn key_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.fields.iter().flat_map(|f| f.value.k.iter().copied())
    }

    /// The payload with every field opened (or `"[erased]"`), and its redactions.
    pub fn open(self, keys: &OpeningKeys, event_id: Uuid) -> (Value, Vec<Redaction>) {
        let mut value = self.value;
        let redactions = keys.open_fields(&mut value, self.fields, event_id);
        (value, redactions)
    }
}

fn sealed_fields(payload: &Value) -> Vec<Field<SealedField>> {
    let mut fields = Vec::new();
    collect(payload, SEALED_MARKER, &mut Vec::new(), &mut fields);
    fields
}

/// The distinct key ids of the fields of several payloads, sorted.
fn key_ids<'a>(payloads: impl IntoIterator<Item = &'a Vec<Field<SealedField>>>) -> Vec<Uuid> {
    let mut ids: Vec<Uuid> = payloads.into_iter().flatten().flat_map(|f| f.value.k.iter().copied()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// The keys that open a set of payloads (a feed page, an export chunk), looked up in one query
/// whatever the number of events: the live keys, and the kind of each destroyed one (a redaction
/// says whether erasure or retention destroyed it). Which keys live is always asked of Postgres;
/// the key store may only spare the unwrap and the field-key derivation (`KeyStore::for_opening`).
pub struct OpeningKeys {
    live: IdMap<Uuid, Key>,
    kinds: IdMap<Uuid, String>,
    /// Field keys derived from live keys: the key store's memo, none for `from_keys`.
    derived: Option<super::keystore::FieldKeys>,
    /// When they were looked up: how fresh the memo's entries are is judged as of then.
    at: Instant,
}

impl OpeningKeys {
    /// The keys that open fields sealed under `ids` (in any order, with repeats).
    pub async fn for_ids(keystore: &KeyStore, mut ids: Vec<Uuid>) -> Result<Self, KeyStoreError> {
        ids.sort_unstable();
        ids.dedup();
        Self::load(keystore, ids).await
    }

    async fn load(keystore: &KeyStore, ids: Vec<Uuid>) -> Result<Self, KeyStoreError> {
        if ids.is_empty() {
            return Ok(Self::from_keys(HashMap::new(), HashMap::new()));
        }
        let at = Instant::now();
        let (live, kinds) = keystore.for_opening(&ids, at).await?;
        Ok(Self { live, kinds, derived: Some(keystore.field_keys()), at })
    }

    /// From keys already looked up (no IO): `live` opens fields, `kinds` names why a missing
    /// key is gone. What `load` builds; the fuzz target of the envelope decoder uses it directly.
    pub fn from_keys(live: HashMap<Uuid, Key>, kinds: HashMap<Uuid, String>) -> Self {
        Self { live: live.into_iter().collect(), kinds: kinds.into_iter().collect(), derived: None, at: Instant::now() }
    }

    /// Opens every sealed field of `payload` whose keys are all live; the others read
    /// `"[erased]"` and are listed.
    pub fn open(&self, payload: &mut Value, event_id: Uuid) -> Vec<Redaction> {
        let fields = sealed_fields(payload);
        self.open_fields(payload, fields, event_id)
    }

    /// The field key of a field sealed under `ids`, when all of them live.
    fn field_key(&self, ids: &[Uuid]) -> Option<Key> {
        if !ids.iter().all(|id| self.live.contains_key(id)) {
            return None;
        }
        let derive = || envelope::field_key(ids.iter().map(|id| &self.live[id]));
        Some(match &self.derived {
            Some(memo) => memo.get_or_derive(ids, self.at, derive),
            None => derive(),
        })
    }

    fn open_fields(&self, payload: &mut Value, fields: Vec<Field<SealedField>>, event_id: Uuid) -> Vec<Redaction> {
        let mut redactions = Vec::new();
        for Field { path, at, value: field } in fields {
            let (value, redaction) = self.open_one(&field, event_id, &path);
            redactions.extend(redaction);
            *pointer_mut(payload, &at).expect("the path was just collected from this payload") = Value::String(value);
        }
        redactions
    }

    /// One field's text, or `"[erased]"` with why.
    fn open_one(&self, field: &SealedField, event_id: Uuid, path: &str) -> (String, Option<Redaction>) {
        let opened = match self.field_key(&field.k) {
            Some(key) => envelope::open_with(field, &key, event_id, path),
            None => Err(Opened::Erased),
        };
        match opened {
            Ok(text) => (text, None),
            Err(Opened::Erased) => {
                // Erasure wins over retention when both destroyed a key of this field. Only erasure
                // destroys subject keys; a consent-record key alone is destroyed by retention (its
                // revoked-consent class; an erasure destroys it with the subject's key).
                let subject_gone = field
                    .k
                    .iter()
                    .any(|id| !self.live.contains_key(id) && self.kinds.get(id).is_none_or(|k| k == "subject"));
                let reason = if subject_gone { "subject_erased" } else { "retention_expired" };
                (ERASED.into(), Some(Redaction { path: path.into(), reason }))
            }
            Err(Opened::Corrupt) => (ERASED.into(), Some(Redaction { path: path.into(), reason: "corrupt" })),
        }
    }
}

/// What a field reads when it cannot be opened.
const ERASED: &str = "[erased]";

/// The sealed fields of a stored payload, found in its text without building a tree: where each
/// envelope object lies, its path and its field. Opening writes the opened (or `"[erased]"`)
/// strings into a copy of the text, which keeps every other byte as stored. The fields are found
/// as `collect` finds them (an object holding the marker that reads as a field, in the order of
/// a tree's sorted keys, never looked into), so the paths, the redactions and their order are
/// those of the tree form.
pub struct SealedText {
    /// In the order of the text.
    spots: Vec<Spot>,
}

struct Spot {
    range: std::ops::Range<usize>,
    path: String,
    field: SealedField,
    /// Its place in the tree's order (the order of the redactions).
    rank: usize,
}

impl SealedText {
    /// The fields of `text`; `None` when it does not read as JSON here (the caller then opens the
    /// tree form, `SealedPayload`, which reads such a payload as `null`).
    ///
    /// A stored payload (jsonb's text: JSON, no whitespace around it) is walked in its text
    /// (`walk_text`), which finds where each value ends without checking it again; any other text,
    /// or one that walk does not read (a name with an escape), is read by serde (`walk`).
    pub fn find(text: &str) -> Option<Self> {
        let mut spots = Vec::new();
        let walked = text.contains(SEALED_MARKER) && matches!(text.trim_start().as_bytes().first(), Some(b'{' | b'['));
        let bare =
            !text.starts_with(|c: char| c.is_ascii_whitespace()) && !text.ends_with(|c: char| c.is_ascii_whitespace());
        if !(walked && bare && walk_text(text, text, &mut Vec::new(), &mut spots).is_some()) {
            spots.clear();
            // A walk into an object or an array reads the whole text as JSON (`from_str` to its
            // end), so only a text it would not read is checked first.
            if !walked {
                serde_json::from_str::<&RawValue>(text).ok()?;
            }
            walk(text, text, &mut Vec::new(), &mut spots).ok()?;
        }
        // Found in the tree's order; opened in the text's (fields never overlap).
        for (rank, spot) in spots.iter_mut().enumerate() {
            spot.rank = rank;
        }
        spots.sort_by_key(|spot| spot.range.start);
        Some(Self { spots })
    }

    /// The key ids its fields name (with repeats).
    pub fn key_ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        self.spots.iter().flat_map(|s| s.field.k.iter().copied())
    }

    /// `text` with every field opened (or `"[erased]"`), and the redactions.
    pub fn open(&self, keys: &OpeningKeys, text: &str, event_id: Uuid) -> (String, Vec<Redaction>) {
        let (mut out, mut redactions) = (String::with_capacity(text.len() + 64), Vec::new());
        self.open_into(keys, text, event_id, &mut out, &mut redactions);
        (out, redactions)
    }

    /// `open`, written at the end of `out`, its redactions added to `redactions`: each opened
    /// field as `serde_json` writes a string, every other byte as stored.
    pub fn open_into(
        &self,
        keys: &OpeningKeys,
        text: &str,
        event_id: Uuid,
        out: &mut String,
        redactions: &mut Vec<Redaction>,
    ) {
        let mut ranked: Vec<(usize, Redaction)> = Vec::new();
        let mut at = 0;
        for Spot { range, path, field, rank } in &self.spots {
            let (value, redaction) = keys.open_one(field, event_id, path);
            ranked.extend(redaction.map(|r| (*rank, r)));
            out.push_str(&text[at..range.start]);
            super::json_text::push_str(out, &value);
            at = range.end;
        }
        out.push_str(&text[at..]);
        ranked.sort_by_key(|(rank, _)| *rank);
        redactions.extend(ranked.into_iter().map(|(_, r)| r));
    }
}

/// An object's members in their order, values as their text.
struct Members<'a>(Vec<(String, &'a RawValue)>);

impl<'de> serde::Deserialize<'de> for Members<'de> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Visit;
        impl<'de> serde::de::Visitor<'de> for Visit {
            type Value = Members<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Members<'de>, A::Error> {
                let mut members = Vec::new();
                while let Some(member) = map.next_entry::<String, &'de RawValue>()? {
                    members.push(member);
                }
                Ok(Members(members))
            }
        }
        deserializer.deserialize_map(Visit)
    }
}

/// Where `part` (a value's text inside `whole`) lies in `whole`.
fn range_in(whole: &str, part: &str) -> std::ops::Range<usize> {
    let start = part.as_ptr() as usize - whole.as_ptr() as usize;
    start..start + part.len()
}

/// `members` as a tree's map iterates them: in key order, keeping the last of equal keys (both
/// walks visit an object's members the way `collect` does over the parsed tree).
fn in_tree_order<K: Ord, V>(members: &mut Vec<(K, V)>) {
    members.sort_by(|a, b| a.0.cmp(&b.0));
    members.dedup_by(|later, earlier| {
        let same = later.0 == earlier.0;
        if same {
            std::mem::swap(later, earlier);
        }
        same
    });
}

/// `collect` over the text: `text`, a JSON value's text, lies in `whole`.
fn walk(whole: &str, text: &str, at: &mut Vec<String>, out: &mut Vec<Spot>) -> Result<(), serde_json::Error> {
    if !text.contains(SEALED_MARKER) {
        return Ok(());
    }
    match text.trim_start().as_bytes().first() {
        Some(b'{') => {
            let Members(mut members) = serde_json::from_str(text)?;
            if members.iter().any(|(key, _)| key == SEALED_MARKER) {
                if let Ok(field) = serde_json::from_str::<SealedField>(text) {
                    out.push(Spot { range: range_in(whole, text), path: at.join("."), field, rank: 0 });
                }
                return Ok(());
            }
            in_tree_order(&mut members);
            for (key, child) in members {
                at.push(key);
                walk(whole, child.get(), at, out)?;
                at.pop();
            }
        }
        Some(b'[') => {
            let items: Vec<&RawValue> = serde_json::from_str(text)?;
            for (i, child) in items.into_iter().enumerate() {
                at.push(i.to_string());
                walk(whole, child.get(), at, out)?;
                at.pop();
            }
        }
        _ => {}
    }
    Ok(())
}

/// `walk` over JSON text without parsing it (`json_text::object`, `json_text::array`): the same
/// spots in the same order, names compared as written (`None` for a name with an escape, which
/// `walk` then reads).
fn walk_text(whole: &str, text: &str, at: &mut Vec<String>, out: &mut Vec<Spot>) -> Option<()> {
    if !text.contains(SEALED_MARKER) {
        return Some(());
    }
    match text.as_bytes().first() {
        Some(b'{') => {
            let mut members = super::json_text::object(text)?;
            if members.iter().any(|(key, _)| *key == SEALED_MARKER) {
                let field = field_of_members(&members).or_else(|| serde_json::from_str::<SealedField>(text).ok());
                if let Some(field) = field {
                    out.push(Spot { range: range_in(whole, text), path: at.join("."), field, rank: 0 });
                }
                return Some(());
            }
            in_tree_order(&mut members);
            for (key, child) in members {
                if child.contains(SEALED_MARKER) {
                    at.push(key.to_string());
                    walk_text(whole, child, at, out)?;
                    at.pop();
                }
            }
        }
        Some(b'[') => {
            for (i, child) in super::json_text::array(text)?.into_iter().enumerate() {
                if child.contains(SEALED_MARKER) {
                    at.push(i.to_string());
                    walk_text(whole, child, at, out)?;
                    at.pop();
                }
            }
        }
        _ => {}
    }
    Some(())
}

/// A sealed field read from its object's members (`json_text::object`) when they are in the plain
/// form the store writes (each member once, the marker a plain integer, strings without escapes):
/// what serde reads from that text. `None` for any other form, which serde then reads.
fn field_of_members(members: &[(&str, &str)]) -> Option<SealedField> {
    let (mut marker, mut k, mut n, mut c) = (None, None, None, None);
    for (name, value) in members {
        let slot = match *name {
            SEALED_MARKER => &mut marker,
            "k" => &mut k,
            "n" => &mut n,
            "c" => &mut c,
            _ => continue,
        };
        if slot.replace(*value).is_some() {
            return None;
        }
    }
    let marker: &str = marker?;
    if !marker.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let plain = |text: &str| -> Option<String> {
        let inner = text.strip_prefix('"')?.strip_suffix('"')?;
        (!inner.contains('\\')).then(|| inner.to_string())
    };
    let k = super::json_text::array(k?)?
        .into_iter()
        .map(|id| Uuid::parse_str(&plain(id)?).ok())
        .collect::<Option<Vec<Uuid>>>()?;
    Some(SealedField { marker: marker.parse().ok()?, k, n: plain(n?)?, c: plain(c?)? })
}

/// A personal field found in a payload: its dotted path (what the envelope is bound to, and what
/// a redaction names) and the keys that lead to it. The path alone cannot lead back: a key may
/// itself contain a dot (refused arguments keep the caller's keys).
struct Field<T> {
    path: String,
    at: Vec<String>,
    value: T,
}

/// Every object in `value` that carries `marker` and parses as `T`, with where it is.
fn collect<T: serde::de::DeserializeOwned>(value: &Value, marker: &str, at: &mut Vec<String>, out: &mut Vec<Field<T>>) {
    match value {
        Value::Object(map) if map.contains_key(marker) => {
            // Deserialized from the borrowed tree: no copy of the object first.
            if let Ok(found) = T::deserialize(value) {
                out.push(Field { path: at.join("."), at: at.clone(), value: found });
            }
        }
        Value::Object(map) => {
            for (key, child) in map {
                at.push(key.clone());
                collect(child, marker, at, out);
                at.pop();
            }
        }
        Value::Array(items) => {
            for (i, child) in items.iter().enumerate() {
                at.push(i.to_string());
                collect(child, marker, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn pointer_mut<'a>(value: &'a mut Value, at: &[String]) -> Option<&'a mut Value> {
    at.iter().try_fold(value, |node, part| match node {
        Value::Object(map) => map.get_mut(part),
        Value::Array(items) => items.get_mut(part.parse::<usize>().ok()?),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A key with a dot in it (refused arguments keep the caller's keys) once made the opener
    /// panic: the dotted path did not lead back to the field.
    #[test]
    fn a_field_under_a_key_with_a_dot_opens() {
        let (key_id, key) = (Uuid::from_u128(1), [7u8; 32]);
        let event_id = Uuid::from_u128(9);
        let sealed = envelope::seal(&[(key_id, key)], event_id, "args.a.b", "pat@example.com");
        let mut payload = json!({"args": {"a.b": sealed, "a": {"b": 1}}});
        let keys = OpeningKeys::from_keys(HashMap::from([(key_id, key)]), HashMap::new());
        assert!(keys.open(&mut payload, event_id).is_empty());
        assert_eq!(payload, json!({"args": {"a.b": "pat@example.com", "a": {"b": 1}}}));

        let gone = envelope::seal(&[(Uuid::from_u128(2), key)], event_id, "x.y", "secret");
        let mut payload = json!({"x.y": gone});
        let keys = OpeningKeys::from_keys(HashMap::new(), HashMap::new());
        assert_eq!(keys.open(&mut payload, event_id), vec![Redaction { path: "x.y".into(), reason: "subject_erased" }]);
        assert_eq!(payload, json!({"x.y": "[erased]"}));
    }

    /// Why a field reads `[erased]`: a destroyed subject key is an erasure; a consent-record key
    /// destroyed beside a live subject key is retention (revoked consents), as is a retention key.
    #[test]
    fn a_redaction_names_erasure_only_when_a_subject_key_is_gone() {
        let (subject, consent, retention, event_id) =
            (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(3), Uuid::from_u128(9));
        let key = [7u8; 32];
        let kinds = HashMap::from([
            (subject, "subject".to_string()),
            (consent, "consent".to_string()),
            (retention, "retention".to_string()),
        ]);
        let reason = |sealed_under: &[Uuid], live: &[Uuid]| {
            let keys: Vec<(Uuid, Key)> = sealed_under.iter().map(|id| (*id, key)).collect();
            let mut payload = json!({"contact": envelope::seal(&keys, event_id, "contact", "+15551234567")});
            let live = live.iter().map(|id| (*id, key)).collect();
            let opened = OpeningKeys::from_keys(live, kinds.clone()).open(&mut payload, event_id);
            opened.first().map(|r| r.reason)
        };
        assert_eq!(reason(&[subject, consent], &[subject, consent]), None);
        assert_eq!(reason(&[subject, consent], &[subject]), Some("retention_expired"));
        assert_eq!(reason(&[subject, consent], &[]), Some("subject_erased"));
        assert_eq!(reason(&[subject, retention], &[subject]), Some("retention_expired"));
        assert_eq!(reason(&[subject, retention], &[retention]), Some("subject_erased"));
    }

    /// The text opener (the feed's) finds, opens and redacts exactly what the tree opener does,
    /// with the same paths in the same order, and leaves every other byte as stored.
    #[test]
    fn the_text_opener_agrees_with_the_tree_opener() {
        let (live, gone, event_id) = (Uuid::from_u128(1), Uuid::from_u128(2), Uuid::from_u128(9));
        let key = [7u8; 32];
        let seal = |path: &str, text: &str, ids: &[Uuid]| {
            let keys: Vec<(Uuid, Key)> = ids.iter().map(|id| (*id, key)).collect();
            serde_json::to_value(envelope::seal(&keys, event_id, path, text)).unwrap()
        };
        let payloads = [
            json!({"to": seal("to", "+15551234567", &[live]), "body": seal("body", "hi \"there\"", &[live, gone]),
                   "cost": 12345678901234567u64, "z": [1, {"$pii": "not a field"}]}),
            json!({"args": {"a.b": seal("args.a.b", "x@example.com", &[live]), "list": [
                {"addr": seal("args.list.0.addr", "é ü \u{1F600}", &[live])}, seal("args.list.1", "second", &[gone])]}}),
            json!({"moved": seal("elsewhere", "bound to its path", &[live]), "plain": "no $pii here"}),
            json!({"b": seal("b", "B", &[gone]), "a": seal("a", "A", &[gone]), "aa": {"k": seal("aa.k", "K", &[live])}}),
        ];
        let keys =
            OpeningKeys::from_keys(HashMap::from([(live, key)]), HashMap::from([(gone, "retention".to_string())]));
        for payload in payloads {
            // Any JSON text of the payload (the store keeps Postgres's jsonb form of it).
            let text = serde_json::to_string(&payload).unwrap();
            let mut tree = payload.clone();
            let tree_redactions = keys.open(&mut tree, event_id);
            let found = SealedText::find(&text).expect("JSON text");
            let (opened, text_redactions) = found.open(&keys, &text, event_id);
            assert_eq!(serde_json::from_str::<Value>(&opened).unwrap(), tree, "{text}");
            assert_eq!(text_redactions, tree_redactions, "{text}");
        }
        assert!(SealedText::find("{not json").is_none());
    }

    /// The walk of the text finds the spots the serde walk finds, in jsonb's form and in others.
    #[test]
    fn the_text_walk_finds_what_the_serde_walk_finds() {
        let event_id = Uuid::from_u128(9);
        let seal = |path: &str| {
            serde_json::to_value(envelope::seal(&[(Uuid::from_u128(1), [7u8; 32])], event_id, path, "x")).unwrap()
        };
        let texts = [
            serde_json::to_string(&json!({"b": seal("b"), "a": [seal("a.0"), {"$pii": "no"}, 1], "c": {"d.e": seal("c.d.e")}})).unwrap(),
            r#"{"z": {"$pii": 1, "k": ["00000000-0000-0000-0000-000000000001"], "n": "AAAAAAAAAAAAAAAA", "c": "AA=="}, "a": "$pii", "a": {"q": "$pii"}}"#.to_string(),
            r#"[{"x": [[{"$pii": 1, "k": [], "n": "", "c": ""}]]}, "tail \" $pii"]"#.to_string(),
        ];
        let spots = |spots: &[Spot]| -> Vec<(std::ops::Range<usize>, String, usize)> {
            spots.iter().map(|s| (s.range.clone(), s.path.clone(), s.field.k.len())).collect()
        };
        for text in &texts {
            for jsonb in [text.clone(), text.replace("\":", "\": ").replace(",\"", ", \"")] {
                let (mut by_text, mut by_serde) = (Vec::new(), Vec::new());
                walk_text(&jsonb, &jsonb, &mut Vec::new(), &mut by_text).expect(&jsonb);
                walk(&jsonb, &jsonb, &mut Vec::new(), &mut by_serde).unwrap();
                assert_eq!(spots(&by_text), spots(&by_serde), "{jsonb}");
            }
        }
        // Sealed fields read from their members as serde reads them, or left to serde.
        let sealed = serde_json::to_string(&seal("f")).unwrap();
        for text in [
            sealed.clone(),
            sealed.replace("\":", "\": ").replace(",\"", ", \""),
            r#"{"$pii": 1, "k": ["00000000000000000000000000000001", "{00000000-0000-0000-0000-000000000002}"], "n": "", "c": "x", "z": [1]}"#.into(),
            r#"{"$pii": 2, "k": [], "n": "a\u0041", "c": "x"}"#.into(),
            r#"{"$pii": 1.0, "k": [], "n": "", "c": ""}"#.into(),
            r#"{"$pii": 300, "k": [], "n": "", "c": ""}"#.into(),
            r#"{"$pii": 1, "k": ["not a uuid"], "n": "", "c": ""}"#.into(),
            r#"{"$pii": 1, "k": [], "n": ""}"#.into(),
            r#"{"$pii": 1, "k": [], "n": "", "c": "", "c": ""}"#.into(),
        ] {
            let members = crate::store::json_text::object(&text).unwrap();
            let by_serde = serde_json::from_str::<SealedField>(&text).ok();
            match field_of_members(&members) {
                Some(field) => assert_eq!(Some(field), by_serde, "{text}"),
                None => assert!(by_serde.is_none() || text.contains("\\u0041"), "{text} left to serde"),
            }
        }
        let escaped = r#"{"\u0061": {"$pii": 1, "k": [], "n": "", "c": ""}}"#;
        assert!(walk_text(escaped, escaped, &mut Vec::new(), &mut Vec::new()).is_none(), "left to serde");
        assert_eq!(SealedText::find(escaped).unwrap().spots[0].path, "a");
    }
}

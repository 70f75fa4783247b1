//! Refusals as events (docs/tools.md#common-rules, invariant 2): a tool call, admin request or session open
//! refused before any aggregate decided is recorded as `ActionRefused` on the caller's stream —
//! the agent's for an agent token, else its organization's, else `platform`. Whatever the refused
//! input held, the store makes the event storable (`store::storable`), so recording a refusal
//! never fails because of the input it refuses.

use commguard_domain::pii::{Pii, RetentionClass};
use commguard_domain::records::{ActionRefused, RefusalEvent};
use serde_json::{Map, Value};

use crate::auth::Principal;
use crate::error::{ApiError, ErrorCode};

use crate::state::AppState;
use crate::store::CommandContext;

/// Fields whose value names a person (a phone number or an email address): sealed under that
/// subject's key when it parses as one (†).
const IDENTIFIER_FIELDS: &[&str] =
    &["to", "from", "contactAddress", "address", "identifier", "contact", "phone", "email", "billingEmail", "subject"];

/// Fields whose value is a secret: never stored, not even sealed (docs/privacy.md#provider-credentials).
const SECRET_FIELDS: &[&str] =
    &["credentials", "password", "secret", "token", "securityToken", "authToken", "apiKey", "apiSecret"];

/// The arguments of a refused action as `ActionRefused.args` may hold them (docs/events.md).
/// The structure is kept; every string is sealed, so nothing a caller sent is stored in the clear:
/// - an identifier field (`to`, `contactAddress`, `address`, `identifier`, …) that parses as a
///   phone number or email is sealed under that subject's key alone (†);
/// - every other string is sealed under the subject key of the first identifier found at the top
///   level and the `messages` retention key (‡), or the retention key alone when there is none;
/// - a number or boolean under an identifier field is sealed as text like the strings (a phone
///   number sent as a number); other numbers and booleans stay in the clear;
/// - credential values (`credentials`, `password`, `token`, …) are dropped, and a key that is not
///   a plain name (`[A-Za-z_][A-Za-z0-9_]{0,63}`, so never `$seal` or a dotted path) becomes
///   `_key<n>` so that neither a key nor a marker can carry data past the sealer.
pub fn sealed_args(args: &Value) -> Value {
    let subject = match args {
        Value::Object(map) => IDENTIFIER_FIELDS.iter().find_map(|f| map.get(*f).and_then(as_subject)),
        _ => None,
    };
    seal_value(args, None, subject.as_deref())
}

/// The normalised phone number or email a value names, if it names one.
fn as_subject(value: &Value) -> Option<String> {
    let text = match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => format!("+{n}"),
        _ => return None,
    };
    if text.contains('@') {
        crate::validate::email("identifier", &text).ok()
    } else {
        crate::validate::phone("identifier", &text).ok()
    }
}

fn plain_key(key: &str) -> bool {
    let mut chars = key.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_alphabetic() || c == '_')
        && key.len() <= 64
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn seal_value(value: &Value, field: Option<&str>, subject: Option<&str>) -> Value {
    let identifier = field.is_some_and(|f| IDENTIFIER_FIELDS.contains(&f));
    match value {
        Value::Object(map) => {
            let mut out = Map::new();
            for (i, (key, child)) in map.iter().enumerate() {
                if SECRET_FIELDS.contains(&key.as_str()) {
                    continue;
                }
                let name = if plain_key(key) { key.clone() } else { format!("_key{i}") };
                let sealed = seal_value(child, Some(&name), subject);
                out.insert(name, sealed);
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|item| seal_value(item, field, subject)).collect()),
        Value::String(text) => seal_text(text.clone(), identifier, subject),
        Value::Number(n) if identifier => seal_text(n.to_string(), true, subject),
        // A boolean names nobody, whatever its key (`capabilities.phone`): kept as it is.
        other => other.clone(),
    }
}

fn seal_text(text: String, identifier: bool, subject: Option<&str>) -> Value {
    let pii = match (identifier.then(|| as_subject(&Value::String(text.clone()))).flatten(), subject) {
        (Some(own), _) => Pii::clear(
            text,
            commguard_domain::pii::SealWith {
                subject: Some(own),
                retention: None,
                consent_record: None,
                subject_key: None,
            },
        ),
        (None, Some(subject)) => Pii::subject_retained(text, subject, RetentionClass::Messages),
        (None, None) => Pii::retained(text, RetentionClass::Messages),
    };
    serde_json::to_value(pii).expect("a clear field always serializes")
}

/// Records `refusal` of `action` (a tool name, or `<METHOD> <path>`) by `principal`. `context`
/// carries the actor, transport and request id; the refusing check is added to its provenance.
/// `args` are the refused arguments in the clear; they are stored sealed (`sealed_args`).
/// Returns the answer to give: the refusal itself once recorded; if it could not be recorded,
/// `unavailable` ("nothing was done"), since a decision that left no trace must not be answered
/// as one (an answer that is already `unavailable` says as much, and is kept).
pub async fn record(
    app: &AppState,
    principal: &Principal,
    mut context: CommandContext,
    action: &str,
    agent_id: Option<String>,
    args: Option<&Value>,
    refusal: &ApiError,
) -> Option<ApiError> {
    let (stream_type, stream_id) = match (principal.agent_id(), &principal.org_id) {
        (Some(agent), _) => ("agent", agent.to_string()),
        (None, Some(org)) => ("organization", org.clone()),
        (None, None) => ("platform", "platform".to_string()),
    };
    let refused = refusal.refusal();
    context.provenance.fail(refused.check.as_str(), refusal.message.clone());
    let event = RefusalEvent::ActionRefused(ActionRefused::new(
        action.into(),
        agent_id,
        &refused,
        refusal.message.clone(),
        args.map(sealed_args),
    ));
    match app.store.record(stream_type, &stream_id, &[event], &context).await {
        Ok(_) => None,
        Err(e) => {
            crate::error::log_failure("ActionRefused not recorded", &e);
            (refusal.code != ErrorCode::Unavailable).then(ApiError::unrecorded)
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::sealed_args;

    #[test]
    fn identifiers_and_text_are_sealed_booleans_and_numbers_kept() {
        let sealed = sealed_args(&json!({
            "to": "+12025550100",
            "body": "hello",
            "capabilities": {"phone": true, "email": false},
            "limit": 3,
            "authToken": "secret",
        }));
        for field in ["to", "body"] {
            assert!(sealed[field]["$seal"].is_object(), "{field}: {sealed}");
        }
        assert_eq!(sealed["capabilities"], json!({"phone": true, "email": false}));
        assert_eq!(sealed["limit"], 3);
        assert!(sealed.get("authToken").is_none(), "credential values are never stored");
    }
}

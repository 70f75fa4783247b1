//! Personal data inside events.
//!
//! The domain writes a personal field in the clear, together with the keys that must seal it
//! (docs/events.md and docs/privacy.md#keys-and-crypto-shredding: † subject key, ‡ subject + `messages` retention key, ◊ subject +
//! consent-record key, § `security` retention key). The event store replaces every clear field
//! with a sealed envelope before the event is stored, so a stored event never holds plaintext.
//! Reading an event back yields the sealed form; only the auditor feed and exports open it.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A retention class of docs/privacy.md#retention: its key is per (class, UTC day).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RetentionClass {
    Messages,
    Usage,
    CallLogs,
    Voicemail,
    Otp,
    RevokedConsent,
    Security,
}

impl RetentionClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Messages => "messages",
            Self::Usage => "usage",
            Self::CallLogs => "call_logs",
            Self::Voicemail => "voicemail",
            Self::Otp => "otp",
            Self::RevokedConsent => "revoked_consent",
            Self::Security => "security",
        }
    }
}

/// Which keys seal a field. Destroying any one of them makes the field unreadable.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealWith {
    /// The normalised identifier (E.164 number, lower-cased email, IP) whose subject key seals
    /// the field, in the event's organization. `None`: no subject key (IP fields).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
    /// One existing subject key, by id, instead of the subject's live key: a field about an earlier
    /// event's subject (a call's recording, sealed under the very key that seals the call's
    /// recipient), so that erasing that subject at any time makes the field unreadable too.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject_key: Option<Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention: Option<RetentionClass>,
    /// The consent grant whose record key also seals the field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consent_record: Option<Uuid>,
}

/// A field as the domain writes it: the value and the keys that must seal it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClearField {
    pub value: String,
    pub with: SealWith,
}

/// A field as the store keeps it (docs/privacy.md#keys-and-crypto-shredding (field envelope)).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedField {
    #[serde(rename = "$pii")]
    pub marker: u8,
    /// Key ids, in the order their bytes are concatenated for the field key.
    pub k: Vec<Uuid>,
    /// Base64 of the 12-byte nonce.
    pub n: String,
    /// Base64 of ciphertext ‖ tag.
    pub c: String,
}

/// A personal-data field of an event payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Pii {
    Sealed(SealedField),
    Clear {
        #[serde(rename = "$seal")]
        seal: ClearField,
    },
}

impl Pii {
    /// A field sealed by the subject key of `value` itself (†).
    pub fn subject(value: impl Into<String>) -> Self {
        let value = value.into();
        Self::clear(
            value.clone(),
            SealWith { subject: Some(value), retention: None, consent_record: None, subject_key: None },
        )
    }

    /// A field about `subject`, sealed by its subject key and a retention key (‡, with `Messages`).
    pub fn subject_retained(value: impl Into<String>, subject: impl Into<String>, class: RetentionClass) -> Self {
        Self::clear(
            value,
            SealWith { subject: Some(subject.into()), retention: Some(class), consent_record: None, subject_key: None },
        )
    }

    /// A field about `subject` that also belongs to one consent grant (◊).
    pub fn consent_record(value: impl Into<String>, subject: impl Into<String>, consent_id: Uuid) -> Self {
        Self::clear(
            value,
            SealWith {
                subject: Some(subject.into()),
                retention: None,
                consent_record: Some(consent_id),
                subject_key: None,
            },
        )
    }

    /// A field sealed by the existing subject key `key_id` and a retention key.
    pub fn under_key_retained(value: impl Into<String>, key_id: Uuid, class: RetentionClass) -> Self {
        Self::clear(
            value,
            SealWith { subject: None, retention: Some(class), consent_record: None, subject_key: Some(key_id) },
        )
    }

    /// A field sealed only by a retention key (§, IP addresses).
    pub fn retained(value: impl Into<String>, class: RetentionClass) -> Self {
        Self::clear(value, SealWith { subject: None, retention: Some(class), consent_record: None, subject_key: None })
    }

    pub fn clear(value: impl Into<String>, with: SealWith) -> Self {
        Self::Clear { seal: ClearField { value: value.into(), with } }
    }

    /// The clear value, when the field has not been sealed yet.
    pub fn clear_value(&self) -> Option<&str> {
        match self {
            Self::Clear { seal } => Some(&seal.value),
            Self::Sealed(_) => None,
        }
    }

    pub fn is_sealed(&self) -> bool {
        matches!(self, Self::Sealed(_))
    }
}

/// The JSON key that marks a clear field awaiting sealing.
pub const CLEAR_MARKER: &str = "$seal";
/// The JSON key that marks a sealed envelope.
pub const SEALED_MARKER: &str = "$pii";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clear_and_sealed_forms_round_trip() {
        let clear = Pii::subject("+15551230000");
        let json = serde_json::to_value(&clear).unwrap();
        assert_eq!(json["$seal"]["value"], "+15551230000");
        assert_eq!(serde_json::from_value::<Pii>(json).unwrap(), clear);

        let sealed = serde_json::json!({"$pii": 1, "k": [Uuid::nil()], "n": "AAAA", "c": "BBBB"});
        let pii: Pii = serde_json::from_value(sealed.clone()).unwrap();
        assert!(pii.is_sealed());
        assert_eq!(serde_json::to_value(&pii).unwrap(), sealed);
    }
}

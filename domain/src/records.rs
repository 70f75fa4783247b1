//! Facts that no rule can refuse: they record what happened at the edges (an authentication
//! failure, a lockout, a session, a refused tool call, an alert). They are appended at the head of
//! their stream without loading an aggregate (`Store::record`), so a burst of failures from one IP
//! costs one insert each, however long that IP's history.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::pii::Pii;

/// Stream `ip` (id = ipRef, the blind index of the address).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum IpEvent {
    AuthFailed {
        /// Sealed under the `security` retention key (CONTRACT §11.3 §).
        ip: Pii,
        /// missing | invalid | revoked | agent_mismatch | session_mismatch | locked
        reason: String,
        route: String,
        /// First 8 hex of SHA-256 of the presented value; never the value.
        token_fingerprint: Option<String>,
        claimed_agent_id: Option<String>,
    },
    IpLockedOut {
        ip: Pii,
        failures: u32,
        locked_until: String,
    },
}

/// Stream `principal` (id = `<kind>:<id>`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum SessionEvent {
    SessionOpened { session_id: String, transport: String, claimed_agent_id: Option<String> },
    SessionClosed { session_id: String, reason: String },
}

/// A tool call or route refused before any aggregate decided (CONTRACT §6.1: a tool without its
/// own blocked event records `ActionRefused`). Stream: the agent, the organization or `platform`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum RefusalEvent {
    ActionRefused {
        tool: String,
        agent_id: Option<String>,
        code: String,
        refused_by: String,
        reason: String,
        /// The compliance rule that refused (country rules on provisioning, §10.7).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
        /// The refused tool's arguments (or admin request's body and query), every string sealed
        /// (CONTRACT §11.3): identifiers under their subject key, the rest under the subject and a
        /// retention key; credential values never stored. Built by `refusals::sealed_args`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        args: Option<serde_json::Value>,
    },
}

/// Provider credentials registered (names only, never values). Stream: the organization, or
/// `platform` for platform scope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum ProviderEvent {
    ProviderRegistered { scope: String, provider: String, key_names: Vec<String>, verified: bool, key_version: String },
}

/// Stream `alert` (id = dedupKey).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum AlertEvent {
    AlertRaised {
        alert_id: String,
        rule: String,
        severity: String,
        title: String,
        message: String,
        subject_kind: String,
        subject_id: String,
        details: serde_json::Value,
        window_start: String,
        window_end: String,
    },
}

/// Stream `subject` (id = subjectRef, the blind index of the identifier: never the identifier).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum SubjectEvent {
    /// `commguard audit export` wrote `count` envelopes about the subject.
    AuditExported { count: u64, requested_by: String },
    /// The subject's keys in `org_ids` were destroyed (CONTRACT §11.4); `scope` is `org` or `all`.
    SubjectErased {
        identifier_type: String,
        scope: String,
        org_ids: Vec<String>,
        keys_destroyed: u64,
        reason: Option<String>,
        requested_by: String,
    },
}

/// Stream `platform`/`retention`: a retention run that destroyed keys (CONTRACT §11.6).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum RetentionEvent {
    RetentionPurged {
        class: String,
        buckets_destroyed: u64,
        record_keys_destroyed: u64,
        projection_rows_purged: u64,
        /// Buckets (UTC days) before this date were destroyed.
        cutoff: String,
    },
}

macro_rules! event_types {
    ($ty:ty { $($variant:ident),+ }) => {
        impl DomainEvent for $ty {
            fn event_type(&self) -> String {
                match self { $(Self::$variant { .. } => stringify!($variant),)+ }.into()
            }
            fn event_version(&self) -> String {
                "1.0".into()
            }
        }
    };
}

event_types!(IpEvent { AuthFailed, IpLockedOut });
event_types!(SessionEvent { SessionOpened, SessionClosed });
event_types!(RefusalEvent { ActionRefused });
event_types!(AlertEvent { AlertRaised });
event_types!(ProviderEvent { ProviderRegistered });
event_types!(SubjectEvent { AuditExported, SubjectErased });
event_types!(RetentionEvent { RetentionPurged });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_type_names_are_the_contract_names() {
        let opened =
            SessionEvent::SessionOpened { session_id: "s".into(), transport: "sse".into(), claimed_agent_id: None };
        assert_eq!(opened.event_type(), "SessionOpened");
        let refused = RefusalEvent::ActionRefused {
            tool: "comms_ping".into(),
            agent_id: None,
            code: "forbidden".into(),
            refused_by: "role".into(),
            reason: "x".into(),
            rule: None,
            args: None,
        };
        assert_eq!(refused.event_type(), "ActionRefused");
        let payload = serde_json::to_value(&opened).unwrap();
        assert_eq!(payload["SessionOpened"]["sessionId"], "s");
    }
}

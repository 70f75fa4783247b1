//! Facts that no rule can refuse: they record what happened at the edges (an authentication
//! failure, a lockout, a session, a refused tool call, an alert). They are appended at the head of
//! their stream without loading an aggregate (`Store::record`), so a burst of failures from one IP
//! costs one insert each, however long that IP's history.

use cqrs_es::DomainEvent;
use serde::{Deserialize, Serialize};

use crate::pii::Pii;
use crate::refusal::Refusal;

/// Stream `ip` (id = ipRef, the blind index of the address).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum IpEvent {
    AuthFailed {
        /// Sealed under the `security` retention key (docs/events.md#personal-data (class security)).
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

/// A tool call or route refused before any aggregate decided (docs/tools.md#common-rules: a tool without its
/// own blocked event records `ActionRefused`). Stream: the agent, the organization or `platform`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum RefusalEvent {
    ActionRefused(ActionRefused),
}

/// The payload of `ActionRefused`, the one declaration every stream's event enum embeds
/// (`AgentEvent::ActionRefused`, `OrganizationEvent::ActionRefused`, `RefusalEvent`): the stored
/// JSON is this object under the event type's name, as it always was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ActionRefused {
    pub tool: String,
    pub agent_id: Option<String>,
    pub code: String,
    pub refused_by: String,
    pub reason: String,
    /// The compliance rule that refused (country rules on provisioning, docs/compliance.md#country-rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// The refused tool's arguments (or admin request's body and query), every string sealed
    /// (docs/events.md): identifiers under their subject key, the rest under the subject and a
    /// retention key; credential values never stored. Built by `refusals::sealed_args`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<serde_json::Value>,
}

impl ActionRefused {
    /// `tool` (a tool name, or `<METHOD> <path>`) refused by `refusal`; `reason` is the text to
    /// store (the caller's message, or it without the recipient).
    pub fn new(
        tool: String,
        agent_id: Option<String>,
        refusal: &Refusal,
        reason: String,
        args: Option<serde_json::Value>,
    ) -> Self {
        Self {
            tool,
            agent_id,
            code: refusal.code.as_str().into(),
            refused_by: refusal.check.as_str().into(),
            reason,
            rule: refusal.rule.map(|r| r.as_str().into()),
            args,
        }
    }
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
    /// The subject's keys in `org_ids` were destroyed (docs/privacy.md#keys-and-crypto-shredding); `scope` is `org` or `all`.
    SubjectErased {
        identifier_type: String,
        scope: String,
        org_ids: Vec<String>,
        keys_destroyed: u64,
        reason: Option<String>,
        requested_by: String,
    },
}

/// Stream `platform`/`retention`: a retention run that destroyed keys (docs/privacy.md#retention).
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
        let refused = RefusalEvent::ActionRefused(ActionRefused {
            tool: "comms_ping".into(),
            agent_id: None,
            code: "forbidden".into(),
            refused_by: "role".into(),
            reason: "x".into(),
            rule: None,
            args: None,
        });
        assert_eq!(refused.event_type(), "ActionRefused");
        let payload = serde_json::to_value(&opened).unwrap();
        assert_eq!(payload["SessionOpened"]["sessionId"], "s");
    }

    /// Events stored before the payload was one struct (a struct variant in each enum) read back
    /// the same, and are written back byte for byte.
    #[test]
    fn an_old_shape_action_refused_deserializes_in_every_stream() {
        use crate::agent::AgentEvent;
        use crate::organization::OrganizationEvent;
        let stored = r#"{"ActionRefused":{"tool":"comms_send_message","agentId":"sales-1","code":"compliance_blocked","refusedBy":"compliance","reason":"Compliance: x","rule":"country_rules","args":{"to":"sealed"}}}"#;
        let minimal = r#"{"ActionRefused":{"tool":"GET /admin/api/orgs","agentId":null,"code":"forbidden","refusedBy":"role","reason":"Admin access required."}}"#;
        for json in [stored, minimal] {
            let refusal: RefusalEvent = serde_json::from_str(json).unwrap();
            let agent: AgentEvent = serde_json::from_str(json).unwrap();
            let org: OrganizationEvent = serde_json::from_str(json).unwrap();
            let RefusalEvent::ActionRefused(payload) = &refusal;
            assert_eq!(agent, AgentEvent::ActionRefused(payload.clone()));
            assert_eq!(org, OrganizationEvent::ActionRefused(payload.clone()));
            assert_eq!(agent.event_type(), "ActionRefused");
            assert_eq!(org.event_type(), "ActionRefused");
            for written in [
                serde_json::to_string(&refusal).unwrap(),
                serde_json::to_string(&agent).unwrap(),
                serde_json::to_string(&org).unwrap(),
            ] {
                assert_eq!(written, json);
            }
        }
        let RefusalEvent::ActionRefused(payload) = serde_json::from_str(stored).unwrap();
        assert_eq!((payload.rule.as_deref(), payload.refused_by.as_str()), (Some("country_rules"), "compliance"));
    }

    #[test]
    fn an_action_refused_is_built_from_its_typed_refusal() {
        use crate::refusal::{Check, ErrorCode, Rule};
        let refusal =
            Refusal::new(Check::OrgState, ErrorCode::ComplianceBlocked, "Compliance: suspended").under(Rule::Sandbox);
        let event = ActionRefused::new("GET /sse".into(), None, &refusal, refusal.reason.clone(), None);
        assert_eq!(
            (event.code.as_str(), event.refused_by.as_str(), event.rule.as_deref()),
            ("compliance_blocked", "org_state", Some("sandbox"))
        );
    }
}

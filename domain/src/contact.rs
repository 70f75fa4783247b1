//! The contact aggregate (id = `<orgId>:<subjectRef>`): one person's address inside one org —
//! the consents agents hold for it and the org's do-not-contact entries for it (docs/tools.md#catalogue,
//! docs/webhooks.md#sms, docs/compliance.md). Because STOP, START and complaints touch every agent's consent and the DNC
//! list of one address at once, they are decided here, in one place and one append.
//!
//! The address itself never reaches a stored event in the clear: every field holding it is `Pii`
//! († subject key; ◊ subject + consent-record key).

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::pii::Pii;
use crate::refusal::{DomainError, ErrorCode};

/// Channels a consent is held for; calls and voice messages use `voice`.
pub const CONSENT_CHANNELS: [&str; 5] = ["sms", "voice", "email", "whatsapp", "recording"];
/// The consents a STOP revokes (email is not SMS's to revoke).
const STOP_CHANNELS: [&str; 4] = ["sms", "voice", "whatsapp", "recording"];

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsentType {
    Express,
    Implied,
    Transactional,
}

impl ConsentType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Express => "express",
            Self::Implied => "implied",
            Self::Transactional => "transactional",
        }
    }

    /// `express` and `implied` permit any purpose, `transactional` only transactional sends.
    pub fn permits(self, purpose: &str) -> bool {
        self != Self::Transactional || purpose == "transactional"
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DncSource {
    StopKeyword,
    Admin,
    Agent,
    Complaint,
}

impl DncSource {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StopKeyword => "stop_keyword",
            Self::Admin => "admin",
            Self::Agent => "agent",
            Self::Complaint => "complaint",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RevokeReason {
    Tool,
    StopKeyword,
    Complaint,
}

/// One consent an agent holds (or held) for this contact on one channel.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Consent {
    agent_id: String,
    channel: String,
    consent_id: Uuid,
    active: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct DncEntry {
    entry_id: Uuid,
    source: DncSource,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Contact {
    consents: Vec<Consent>,
    dnc: Vec<DncEntry>,
}

impl Contact {
    pub fn on_dnc(&self) -> bool {
        !self.dnc.is_empty()
    }

    /// Every consent record an agent holds or held for this contact: (agent, channel, active).
    pub fn consents(&self) -> impl Iterator<Item = (&str, &str, bool)> {
        self.consents.iter().map(|c| (c.agent_id.as_str(), c.channel.as_str(), c.active))
    }

    fn consent(&self, agent_id: &str, channel: &str) -> Option<&Consent> {
        self.consents.iter().find(|c| c.agent_id == agent_id && c.channel == channel)
    }
}

/// What a grant records; `consent_id` is used only if the agent holds no record for the channel
/// yet (a re-grant keeps the record's id and clears its revocation).
#[derive(Clone, Debug, PartialEq)]
pub struct Grant {
    pub consent_id: Uuid,
    pub agent_id: String,
    pub channel: String,
    pub consent_type: ConsentType,
    pub source: Option<String>,
    pub notes: Option<String>,
}

/// A new DNC entry, used only if the address is not listed yet.
#[derive(Clone, Debug, PartialEq)]
pub struct Listing {
    pub entry_id: Uuid,
    pub address_type: String,
    pub source: DncSource,
    pub reason: Option<String>,
    pub added_by: String,
}

#[derive(Clone, Debug, PartialEq)]
pub enum ContactAction {
    GrantConsent(Grant),
    RevokeConsent {
        agent_id: String,
        channel: String,
    },
    AddDnc(Listing),
    RemoveDnc {
        reason: String,
        removed_by: String,
    },
    /// Inbound STOP to `agent_id`: revoke every agent's sms/voice/whatsapp/recording consent,
    /// list the address (unless listed).
    Stop {
        agent_id: String,
        keyword: String,
        listing: Listing,
    },
    /// Inbound START: drop the `stop_keyword` entries, grant `sms` to the receiving agent only.
    Start {
        agent_id: String,
        keyword: String,
        consent_id: Uuid,
    },
    /// An email complaint: list the address, revoke every agent's `email` consent.
    Complaint {
        listing: Listing,
    },
}

/// A command on one contact; `address` is the normalised E.164 number or email.
#[derive(Clone, Debug, PartialEq)]
pub struct ContactCommand {
    pub address: String,
    pub action: ContactAction,
    /// Consent records whose keys an erasure destroyed (docs/privacy.md#keys-and-crypto-shredding): they are gone, so a
    /// later grant makes a new record (with a new id and key) and nothing revokes them.
    pub erased: Vec<Uuid>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum ContactEvent {
    ConsentGranted {
        consent_id: Uuid,
        agent_id: String,
        contact: Pii,
        channel: String,
        consent_type: ConsentType,
        source: Option<Pii>,
        notes: Option<Pii>,
        /// `tool` | `keyword`.
        via: String,
    },
    ConsentRevoked {
        consent_id: Option<Uuid>,
        agent_id: String,
        contact: Pii,
        channel: String,
        reason: RevokeReason,
        was_active: bool,
    },
    StopReceived {
        agent_id: String,
        from: Pii,
        keyword: String,
        consents_revoked: u32,
        dnc_added: bool,
    },
    StartReceived {
        agent_id: String,
        from: Pii,
        keyword: String,
        dnc_removed: u32,
        consent_granted: bool,
    },
    DncAdded {
        entry_id: Uuid,
        address: Pii,
        address_type: String,
        source: DncSource,
        reason: Option<String>,
        added_by: String,
    },
    DncRemoved {
        entry_id: Uuid,
        address: Pii,
        reason: String,
        removed_by: String,
    },
}

impl DomainEvent for ContactEvent {
    fn event_type(&self) -> String {
        match self {
            Self::ConsentGranted { .. } => "ConsentGranted",
            Self::ConsentRevoked { .. } => "ConsentRevoked",
            Self::StopReceived { .. } => "StopReceived",
            Self::StartReceived { .. } => "StartReceived",
            Self::DncAdded { .. } => "DncAdded",
            Self::DncRemoved { .. } => "DncRemoved",
        }
        .into()
    }

    fn event_version(&self) -> String {
        "1.0".into()
    }
}

/// Contact commands decide every case (a revoke without consent is recorded with
/// `wasActive:false`), so nothing refuses; the type exists for cqrs-es.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ContactError {
    #[error("unknown consent channel {0}")]
    UnknownChannel(String),
}

impl ContactError {
    /// The docs/errors.md code of each refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::UnknownChannel(_) => ErrorCode::InvalidInput,
        }
    }
}

impl DomainError for ContactError {
    fn code(&self) -> ErrorCode {
        ContactError::code(self)
    }
}

impl Contact {
    fn grant(&self, address: &str, grant: Grant, via: &str) -> ContactEvent {
        let consent_id = self.consent(&grant.agent_id, &grant.channel).map_or(grant.consent_id, |c| c.consent_id);
        let sealed = |value: String| Pii::consent_record(value, address, consent_id);
        ContactEvent::ConsentGranted {
            consent_id,
            agent_id: grant.agent_id,
            contact: sealed(address.to_string()),
            channel: grant.channel,
            consent_type: grant.consent_type,
            source: grant.source.map(sealed),
            notes: grant.notes.map(sealed),
            via: via.into(),
        }
    }

    /// Revocations of every active consent on `channels`, of any agent.
    fn revoke_all(&self, address: &str, channels: &[&str], reason: RevokeReason) -> Vec<ContactEvent> {
        self.consents
            .iter()
            .filter(|c| c.active && channels.contains(&c.channel.as_str()))
            .map(|c| revoked(address, Some(c), &c.agent_id, &c.channel, reason))
            .collect()
    }

    /// A listing is added unless the contact is listed already by an entry that lasts as long:
    /// a STOP adds nothing to any listing, but an admin's, agent's or complaint listing is added
    /// beside a STOP's entry, which an inbound START removes (docs/webhooks.md) and these stay.
    fn list(&self, address: &str, listing: Listing) -> Option<ContactEvent> {
        let listed = match listing.source {
            DncSource::StopKeyword => self.on_dnc(),
            _ => self.dnc.iter().any(|e| e.source != DncSource::StopKeyword),
        };
        (!listed).then(|| ContactEvent::DncAdded {
            entry_id: listing.entry_id,
            address: Pii::subject(address),
            address_type: listing.address_type,
            source: listing.source,
            reason: listing.reason,
            added_by: listing.added_by,
        })
    }

    fn unlist(&self, address: &str, which: impl Fn(&DncEntry) -> bool, reason: &str, by: &str) -> Vec<ContactEvent> {
        self.dnc
            .iter()
            .filter(|e| which(e))
            .map(|e| ContactEvent::DncRemoved {
                entry_id: e.entry_id,
                address: Pii::subject(address),
                reason: reason.into(),
                removed_by: by.into(),
            })
            .collect()
    }
}

fn revoked(address: &str, held: Option<&Consent>, agent_id: &str, channel: &str, reason: RevokeReason) -> ContactEvent {
    let active = held.filter(|c| c.active);
    ContactEvent::ConsentRevoked {
        consent_id: active.map(|c| c.consent_id),
        agent_id: agent_id.into(),
        contact: match active {
            Some(c) => Pii::consent_record(address, address, c.consent_id),
            None => Pii::subject(address),
        },
        channel: channel.into(),
        reason,
        was_active: active.is_some(),
    }
}

impl Aggregate for Contact {
    const TYPE: &'static str = "contact";
    type Command = ContactCommand;
    type Event = ContactEvent;
    type Error = ContactError;
    type Services = ();

    async fn handle(&mut self, command: ContactCommand, _: &(), sink: &EventSink<Self>) -> Result<(), ContactError> {
        use ContactEvent as E;
        let ContactCommand { address, action, erased } = command;
        self.consents.retain(|c| !erased.contains(&c.consent_id));
        let events = match action {
            ContactAction::GrantConsent(grant) => {
                if !CONSENT_CHANNELS.contains(&grant.channel.as_str()) {
                    return Err(ContactError::UnknownChannel(grant.channel));
                }
                vec![self.grant(&address, grant, "tool")]
            }
            ContactAction::RevokeConsent { agent_id, channel } => {
                let held = self.consent(&agent_id, &channel);
                vec![revoked(&address, held, &agent_id, &channel, RevokeReason::Tool)]
            }
            ContactAction::AddDnc(listing) => self.list(&address, listing).into_iter().collect(),
            ContactAction::RemoveDnc { reason, removed_by } => self.unlist(&address, |_| true, &reason, &removed_by),
            ContactAction::Stop { agent_id, keyword, listing } => {
                let mut events = self.revoke_all(&address, &STOP_CHANNELS, RevokeReason::StopKeyword);
                let consents_revoked = events.len() as u32;
                let added = self.list(&address, listing);
                let dnc_added = added.is_some();
                events.extend(added);
                events.push(E::StopReceived {
                    agent_id,
                    from: Pii::subject(&address),
                    keyword,
                    consents_revoked,
                    dnc_added,
                });
                events
            }
            ContactAction::Start { agent_id, keyword, consent_id } => {
                let by = format!("system:inbound-sms:{agent_id}");
                let reason = "START keyword received via SMS";
                let mut events = self.unlist(&address, |e| e.source == DncSource::StopKeyword, reason, &by);
                let dnc_removed = events.len() as u32;
                let grant = Grant {
                    consent_id,
                    agent_id: agent_id.clone(),
                    channel: "sms".into(),
                    consent_type: ConsentType::Express,
                    source: Some("sms_keyword".into()),
                    notes: None,
                };
                events.push(self.grant(&address, grant, "keyword"));
                events.push(E::StartReceived {
                    agent_id,
                    from: Pii::subject(&address),
                    keyword,
                    dnc_removed,
                    consent_granted: true,
                });
                events
            }
            ContactAction::Complaint { listing } => {
                let mut events = self.revoke_all(&address, &["email"], RevokeReason::Complaint);
                events.extend(self.list(&address, listing));
                events
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: ContactEvent) {
        use ContactEvent as E;
        match event {
            E::ConsentGranted { consent_id, agent_id, channel, .. } => {
                match self.consents.iter_mut().find(|c| c.agent_id == agent_id && c.channel == channel) {
                    Some(held) => {
                        held.active = true;
                        held.consent_id = consent_id;
                    }
                    None => self.consents.push(Consent { agent_id, channel, consent_id, active: true }),
                }
            }
            E::ConsentRevoked { agent_id, channel, .. } => {
                if let Some(held) = self.consents.iter_mut().find(|c| c.agent_id == agent_id && c.channel == channel) {
                    held.active = false;
                }
            }
            E::DncAdded { entry_id, source, .. } => self.dnc.push(DncEntry { entry_id, source }),
            E::DncRemoved { entry_id, .. } => self.dnc.retain(|e| e.entry_id != entry_id),
            E::StopReceived { .. } | E::StartReceived { .. } => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    const ADDRESS: &str = "+14155550100";

    fn grant(agent: &str, channel: &str, id: u128) -> ContactEvent {
        ContactEvent::ConsentGranted {
            consent_id: Uuid::from_u128(id),
            agent_id: agent.into(),
            contact: Pii::consent_record(ADDRESS, ADDRESS, Uuid::from_u128(id)),
            channel: channel.into(),
            consent_type: ConsentType::Express,
            source: None,
            notes: None,
            via: "tool".into(),
        }
    }

    fn listing(source: DncSource) -> Listing {
        Listing {
            entry_id: Uuid::from_u128(99),
            address_type: "phone".into(),
            source,
            reason: None,
            added_by: "test".into(),
        }
    }

    fn command(action: ContactAction) -> ContactCommand {
        ContactCommand { address: ADDRESS.into(), action, erased: Vec::new() }
    }

    #[test]
    fn a_regrant_keeps_the_record_id() {
        let again = Grant {
            consent_id: Uuid::from_u128(2),
            agent_id: "a".into(),
            channel: "sms".into(),
            consent_type: ConsentType::Implied,
            source: None,
            notes: None,
        };
        let events = TestFramework::<Contact>::with(())
            .given(vec![grant("a", "sms", 1)])
            .when(command(ContactAction::GrantConsent(again)))
            .inspect_result()
            .unwrap();
        assert!(
            matches!(&events[..], [ContactEvent::ConsentGranted { consent_id, .. }] if *consent_id == Uuid::from_u128(1))
        );
    }

    #[test]
    fn an_erased_record_is_not_reused_nor_revoked() {
        let again = Grant {
            consent_id: Uuid::from_u128(2),
            agent_id: "a".into(),
            channel: "sms".into(),
            consent_type: ConsentType::Express,
            source: None,
            notes: None,
        };
        let erased = |action| ContactCommand { address: ADDRESS.into(), action, erased: vec![Uuid::from_u128(1)] };
        let events = TestFramework::<Contact>::with(())
            .given(vec![grant("a", "sms", 1)])
            .when(erased(ContactAction::GrantConsent(again)))
            .inspect_result()
            .unwrap();
        assert!(
            matches!(&events[..], [ContactEvent::ConsentGranted { consent_id, .. }] if *consent_id == Uuid::from_u128(2)),
            "a grant after erasure is a new record with a new key"
        );
        let events = TestFramework::<Contact>::with(())
            .given(vec![grant("a", "sms", 1)])
            .when(erased(ContactAction::RevokeConsent { agent_id: "a".into(), channel: "sms".into() }))
            .inspect_result()
            .unwrap();
        assert!(matches!(events[0], ContactEvent::ConsentRevoked { was_active: false, consent_id: None, .. }));
    }

    #[test]
    fn stop_revokes_every_agents_phone_consents_but_not_email() {
        let events = TestFramework::<Contact>::with(())
            .given(vec![grant("a", "sms", 1), grant("b", "voice", 2), grant("b", "email", 3)])
            .when(command(ContactAction::Stop {
                agent_id: "a".into(),
                keyword: "STOP".into(),
                listing: listing(DncSource::StopKeyword),
            }))
            .inspect_result()
            .unwrap();
        let revoked: Vec<_> = events
            .iter()
            .filter_map(|e| match e {
                ContactEvent::ConsentRevoked { agent_id, channel, was_active: true, .. } => {
                    Some((agent_id.as_str(), channel.as_str()))
                }
                _ => None,
            })
            .collect();
        assert_eq!(revoked, [("a", "sms"), ("b", "voice")]);
        assert!(matches!(events.last(), Some(ContactEvent::StopReceived { consents_revoked: 2, dnc_added: true, .. })));
    }

    #[test]
    fn start_removes_only_stop_entries_and_grants_sms_to_the_receiver() {
        let stop_entry = ContactEvent::DncAdded {
            entry_id: Uuid::from_u128(7),
            address: Pii::subject(ADDRESS),
            address_type: "phone".into(),
            source: DncSource::StopKeyword,
            reason: None,
            added_by: "x".into(),
        };
        let events = TestFramework::<Contact>::with(())
            .given(vec![stop_entry])
            .when(command(ContactAction::Start {
                agent_id: "a".into(),
                keyword: "START".into(),
                consent_id: Uuid::from_u128(5),
            }))
            .inspect_result()
            .unwrap();
        assert!(matches!(&events[0], ContactEvent::DncRemoved { entry_id, .. } if *entry_id == Uuid::from_u128(7)));
        assert!(
            matches!(&events[1], ContactEvent::ConsentGranted { agent_id, channel, .. } if agent_id == "a" && channel == "sms")
        );
        assert!(matches!(events[2], ContactEvent::StartReceived { dnc_removed: 1, .. }));
    }

    #[test]
    fn an_admin_listing_is_added_beside_a_stop_entry_and_outlives_start() {
        let stopped = TestFramework::<Contact>::with(())
            .given_no_previous_events()
            .when(command(ContactAction::AddDnc(listing(DncSource::StopKeyword))))
            .inspect_result()
            .unwrap();
        let admin = TestFramework::<Contact>::with(())
            .given(stopped.clone())
            .when(command(ContactAction::AddDnc(listing(DncSource::Admin))))
            .inspect_result()
            .unwrap();
        assert!(matches!(&admin[..], [ContactEvent::DncAdded { source: DncSource::Admin, .. }]), "{admin:?}");
        let history = [stopped, admin].concat();
        // A second STOP, and a second admin listing, add nothing.
        for source in [DncSource::StopKeyword, DncSource::Agent] {
            let again = TestFramework::<Contact>::with(())
                .given(history.clone())
                .when(command(ContactAction::AddDnc(listing(source))))
                .inspect_result()
                .unwrap();
            assert!(again.is_empty(), "{again:?}");
        }
    }

    #[test]
    fn listing_twice_adds_once_and_a_revoke_without_consent_is_recorded_inactive() {
        let first = TestFramework::<Contact>::with(())
            .given_no_previous_events()
            .when(command(ContactAction::AddDnc(listing(DncSource::Admin))))
            .inspect_result()
            .unwrap();
        let again = TestFramework::<Contact>::with(())
            .given(first)
            .when(command(ContactAction::AddDnc(listing(DncSource::Agent))))
            .inspect_result()
            .unwrap();
        assert!(again.is_empty());
        let events = TestFramework::<Contact>::with(())
            .given_no_previous_events()
            .when(command(ContactAction::RevokeConsent { agent_id: "a".into(), channel: "sms".into() }))
            .inspect_result()
            .unwrap();
        assert!(matches!(events[0], ContactEvent::ConsentRevoked { was_active: false, consent_id: None, .. }));
    }
}

//! The organization aggregate (id = orgId): lifecycle (sandbox → production by approval,
//! suspension and back), settings and caps, and its admin tokens.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::agent::IssuedVia;
use crate::records::ActionRefused;
use crate::refusal::{DomainError, ErrorCode};
use crate::values::{IssuedToken, OrgMode};

/// Settings an org's caps and registration; money in micro-dollars, `None` = unlimited.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrgSettings {
    pub a2p_registered: bool,
    pub max_agents: u32,
    pub max_spend_per_day: Option<i64>,
    pub max_spend_per_month: Option<i64>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Organization {
    mode: Option<OrgMode>,
    /// The mode to restore on unsuspension.
    mode_before_suspension: Option<OrgMode>,
    settings: OrgSettings,
    active_tokens: Vec<Uuid>,
}

impl Organization {
    pub fn exists(&self) -> bool {
        self.mode.is_some()
    }

    pub fn mode(&self) -> Option<OrgMode> {
        self.mode
    }

    pub fn settings(&self) -> &OrgSettings {
        &self.settings
    }

    pub fn active_tokens(&self) -> &[Uuid] {
        &self.active_tokens
    }
}

/// Which settings to change: `None` leaves a field as it is; the inner `None` of a cap clears it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SettingsChange {
    pub a2p_registered: Option<bool>,
    pub max_agents: Option<u32>,
    pub max_spend_per_day: Option<Option<i64>>,
    pub max_spend_per_month: Option<Option<i64>>,
}

/// A command on organization `org_id` (carried so refusals can name it).
#[derive(Clone, Debug, PartialEq)]
pub struct OrganizationCommand {
    pub org_id: String,
    pub action: OrgAction,
}

#[derive(Clone, Debug, PartialEq)]
pub enum OrgAction {
    Create {
        name: String,
        slug: String,
        settings: Value,
        a2p_registered: bool,
        max_agents: u32,
        token: IssuedToken,
    },
    Approve {
        kyc_note: String,
        approved_by: String,
    },
    Suspend {
        reason: String,
    },
    Unsuspend,
    ChangeSettings(SettingsChange),
    /// Revokes every active org token and issues `token`.
    RotateToken {
        token: IssuedToken,
        issued_via: IssuedVia,
        reason: String,
    },
    /// Issues `token` beside the active ones (`commguard token issue` without `--revoke-existing`).
    IssueToken {
        token: IssuedToken,
        issued_via: IssuedVia,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum OrganizationEvent {
    OrganizationCreated {
        name: String,
        slug: String,
        mode: OrgMode,
        settings: Value,
        a2p_registered: bool,
        max_agents: u32,
    },
    OrganizationApproved {
        previous_mode: OrgMode,
        kyc_note: String,
        approved_by: String,
    },
    OrganizationSuspended {
        reason: String,
    },
    OrganizationUnsuspended {
        restored_mode: OrgMode,
    },
    OrgSettingsChanged {
        before: OrgSettings,
        after: OrgSettings,
    },
    OrgTokenIssued {
        token_id: Uuid,
        token_hash: String,
        label: Option<String>,
        /// How the token came to be; absent in events recorded before it was kept.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        issued_via: Option<IssuedVia>,
    },
    OrgTokenRevoked {
        token_ids: Vec<Uuid>,
        reason: String,
    },
    /// Provider credentials registered for the org (names only; appended by `Store::record`).
    ProviderRegistered {
        scope: String,
        provider: String,
        key_names: Vec<String>,
        verified: bool,
        key_version: String,
    },
    /// A refused tool call or route about this org (appended by `Store::record`; no state).
    ActionRefused(ActionRefused),
}

impl DomainEvent for OrganizationEvent {
    fn event_type(&self) -> String {
        match self {
            Self::OrganizationCreated { .. } => "OrganizationCreated",
            Self::OrganizationApproved { .. } => "OrganizationApproved",
            Self::OrganizationSuspended { .. } => "OrganizationSuspended",
            Self::OrganizationUnsuspended { .. } => "OrganizationUnsuspended",
            Self::OrgSettingsChanged { .. } => "OrgSettingsChanged",
            Self::OrgTokenIssued { .. } => "OrgTokenIssued",
            Self::OrgTokenRevoked { .. } => "OrgTokenRevoked",
            Self::ActionRefused { .. } => "ActionRefused",
            Self::ProviderRegistered { .. } => "ProviderRegistered",
        }
        .into()
    }

    fn event_version(&self) -> String {
        "1.0".into()
    }
}

/// Refusals, worded as the contract words them; `code()` is the docs/errors.md code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OrganizationError {
    #[error("Organization \"{0}\" not found")]
    NotFound(String),
    #[error("Organization \"{0}\" already exists")]
    AlreadyExists(String),
    #[error("Organization \"{0}\" is already in production mode")]
    AlreadyProduction(String),
    /// Approving a suspended org: it must be unsuspended first.
    #[error("Organization \"{0}\" is suspended")]
    Suspended(String),
    #[error("Organization \"{0}\" is already suspended")]
    AlreadySuspended(String),
    #[error("Organization \"{0}\" is not suspended")]
    NotSuspended(String),
    #[error("Invalid input for \"kycNote\": must be 3 to 2000 characters")]
    KycNoteLength,
}

impl OrganizationError {
    /// The docs/errors.md code of each refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::NotFound,
            // The org's state forbids the change (docs/errors.md: `conflict`, "already in mode").
            Self::AlreadyExists(_)
            | Self::AlreadyProduction(_)
            | Self::Suspended(_)
            | Self::AlreadySuspended(_)
            | Self::NotSuspended(_) => ErrorCode::Conflict,
            Self::KycNoteLength => ErrorCode::InvalidInput,
        }
    }
}

impl DomainError for OrganizationError {
    fn code(&self) -> ErrorCode {
        OrganizationError::code(self)
    }
}

impl Aggregate for Organization {
    const TYPE: &'static str = "organization";
    type Command = OrganizationCommand;
    type Event = OrganizationEvent;
    type Error = OrganizationError;
    type Services = ();

    async fn handle(
        &mut self,
        command: OrganizationCommand,
        _: &(),
        sink: &EventSink<Self>,
    ) -> Result<(), OrganizationError> {
        use OrganizationEvent as E;
        let OrganizationCommand { org_id: id, action } = command;
        if !matches!(action, OrgAction::Create { .. }) && !self.exists() {
            return Err(OrganizationError::NotFound(id));
        }
        let mode = self.mode.unwrap_or(OrgMode::Sandbox);
        let events = match action {
            OrgAction::Create { name, slug, settings, a2p_registered, max_agents, token } => {
                if self.exists() {
                    return Err(OrganizationError::AlreadyExists(id));
                }
                vec![
                    E::OrganizationCreated { name, slug, mode: OrgMode::Sandbox, settings, a2p_registered, max_agents },
                    issued(token, IssuedVia::Provision),
                ]
            }
            OrgAction::Approve { kyc_note, approved_by } => {
                let length = kyc_note.trim().chars().count();
                if !(3..=2000).contains(&length) {
                    return Err(OrganizationError::KycNoteLength);
                }
                match mode {
                    OrgMode::Production => return Err(OrganizationError::AlreadyProduction(id)),
                    OrgMode::Suspended => return Err(OrganizationError::Suspended(id)),
                    OrgMode::Sandbox => vec![E::OrganizationApproved { previous_mode: mode, kyc_note, approved_by }],
                }
            }
            OrgAction::Suspend { reason } => {
                if mode == OrgMode::Suspended {
                    return Err(OrganizationError::AlreadySuspended(id));
                }
                vec![E::OrganizationSuspended { reason }]
            }
            OrgAction::Unsuspend => {
                if mode != OrgMode::Suspended {
                    return Err(OrganizationError::NotSuspended(id));
                }
                vec![E::OrganizationUnsuspended {
                    restored_mode: self.mode_before_suspension.unwrap_or(OrgMode::Sandbox),
                }]
            }
            OrgAction::ChangeSettings(change) => {
                let before = self.settings.clone();
                let after = OrgSettings {
                    a2p_registered: change.a2p_registered.unwrap_or(before.a2p_registered),
                    max_agents: change.max_agents.unwrap_or(before.max_agents),
                    max_spend_per_day: change.max_spend_per_day.unwrap_or(before.max_spend_per_day),
                    max_spend_per_month: change.max_spend_per_month.unwrap_or(before.max_spend_per_month),
                };
                if after == before {
                    Vec::new()
                } else {
                    vec![E::OrgSettingsChanged { before, after }]
                }
            }
            OrgAction::RotateToken { token, issued_via, reason } => {
                // Rotation works while suspended (rule Z6, docs/security.md#authorization-rules): it is how a leaked token is cut off.
                let mut events = Vec::new();
                if !self.active_tokens.is_empty() {
                    events.push(E::OrgTokenRevoked { token_ids: self.active_tokens.clone(), reason });
                }
                events.push(issued(token, issued_via));
                events
            }
            // Like rotation, possible while suspended (Z6): the org admin keeps reads and erasure.
            OrgAction::IssueToken { token, issued_via } => vec![issued(token, issued_via)],
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: OrganizationEvent) {
        use OrganizationEvent as E;
        match event {
            E::OrganizationCreated { mode, a2p_registered, max_agents, .. } => {
                self.mode = Some(mode);
                self.settings =
                    OrgSettings { a2p_registered, max_agents, max_spend_per_day: None, max_spend_per_month: None };
            }
            E::OrganizationApproved { .. } => self.mode = Some(OrgMode::Production),
            E::OrganizationSuspended { .. } => {
                self.mode_before_suspension = self.mode;
                self.mode = Some(OrgMode::Suspended);
            }
            E::OrganizationUnsuspended { restored_mode } => {
                self.mode = Some(restored_mode);
                self.mode_before_suspension = None;
            }
            E::OrgSettingsChanged { after, .. } => self.settings = after,
            E::OrgTokenIssued { token_id, .. } => self.active_tokens.push(token_id),
            E::OrgTokenRevoked { token_ids, .. } => self.active_tokens.retain(|t| !token_ids.contains(t)),
            E::ActionRefused { .. } | E::ProviderRegistered { .. } => {}
        }
    }
}

fn issued(token: IssuedToken, issued_via: IssuedVia) -> OrganizationEvent {
    OrganizationEvent::OrgTokenIssued {
        token_id: token.token_id,
        token_hash: token.token_hash,
        label: token.label,
        issued_via: Some(issued_via),
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type Given = TestFramework<Organization>;

    fn token(n: u128) -> IssuedToken {
        IssuedToken { token_id: Uuid::from_u128(n), token_hash: format!("hash{n}"), label: None }
    }

    fn on(action: OrgAction) -> OrganizationCommand {
        OrganizationCommand { org_id: "acme".into(), action }
    }

    fn created() -> Vec<OrganizationEvent> {
        vec![
            OrganizationEvent::OrganizationCreated {
                name: "Acme".into(),
                slug: "acme".into(),
                mode: OrgMode::Sandbox,
                settings: Value::Null,
                a2p_registered: false,
                max_agents: 100,
            },
            OrganizationEvent::OrgTokenIssued {
                token_id: Uuid::from_u128(1),
                token_hash: "hash1".into(),
                label: None,
                issued_via: Some(IssuedVia::Provision),
            },
        ]
    }

    #[test]
    fn a_new_organization_starts_in_sandbox_with_one_admin_token() {
        Given::with(())
            .given_no_previous_events()
            .when(on(OrgAction::Create {
                name: "Acme".into(),
                slug: "acme".into(),
                settings: Value::Null,
                a2p_registered: false,
                max_agents: 100,
                token: token(1),
            }))
            .then_expect_events(created());
    }

    #[test]
    fn creating_twice_is_a_conflict() {
        let create = OrgAction::Create {
            name: "A".into(),
            slug: "a".into(),
            settings: Value::Null,
            a2p_registered: false,
            max_agents: 1,
            token: token(2),
        };
        Given::with(())
            .given(created())
            .when(on(create))
            .then_expect_error(OrganizationError::AlreadyExists("acme".into()));
    }

    #[test]
    fn approval_moves_sandbox_to_production_once() {
        let approve = || on(OrgAction::Approve { kyc_note: "KYC checked".into(), approved_by: "master".into() });
        Given::with(()).given(created()).when(approve()).then_expect_events(vec![
            OrganizationEvent::OrganizationApproved {
                previous_mode: OrgMode::Sandbox,
                kyc_note: "KYC checked".into(),
                approved_by: "master".into(),
            },
        ]);
        let mut approved = created();
        approved.push(OrganizationEvent::OrganizationApproved {
            previous_mode: OrgMode::Sandbox,
            kyc_note: "ok!".into(),
            approved_by: "m".into(),
        });
        Given::with(())
            .given(approved)
            .when(approve())
            .then_expect_error(OrganizationError::AlreadyProduction("acme".into()));
    }

    #[test]
    fn a_kyc_note_needs_3_to_2000_characters() {
        Given::with(())
            .given(created())
            .when(on(OrgAction::Approve { kyc_note: "ok".into(), approved_by: "m".into() }))
            .then_expect_error(OrganizationError::KycNoteLength);
    }

    #[test]
    fn unsuspending_restores_the_mode_before_suspension() {
        let mut history = created();
        history.push(OrganizationEvent::OrganizationApproved {
            previous_mode: OrgMode::Sandbox,
            kyc_note: "fine".into(),
            approved_by: "m".into(),
        });
        history.push(OrganizationEvent::OrganizationSuspended { reason: "abuse".into() });
        Given::with(()).given(history).when(on(OrgAction::Unsuspend)).then_expect_events(vec![
            OrganizationEvent::OrganizationUnsuspended { restored_mode: OrgMode::Production },
        ]);
    }

    #[test]
    fn a_suspended_org_cannot_be_suspended_again_or_approved_and_both_are_conflicts() {
        let mut history = created();
        history.push(OrganizationEvent::OrganizationSuspended { reason: "abuse".into() });
        Given::with(())
            .given(history.clone())
            .when(on(OrgAction::Suspend { reason: "again".into() }))
            .then_expect_error(OrganizationError::AlreadySuspended("acme".into()));
        Given::with(())
            .given(history)
            .when(on(OrgAction::Approve { kyc_note: "KYC checked".into(), approved_by: "m".into() }))
            .then_expect_error(OrganizationError::Suspended("acme".into()));
        for refusal in [OrganizationError::AlreadySuspended("acme".into()), OrganizationError::Suspended("acme".into())]
        {
            assert_eq!(refusal.code(), ErrorCode::Conflict, "{refusal}");
        }
    }

    #[test]
    fn commands_on_an_unknown_organization_are_not_found() {
        Given::with(())
            .given_no_previous_events()
            .when(on(OrgAction::Suspend { reason: "x".into() }))
            .then_expect_error(OrganizationError::NotFound("acme".into()));
    }

    #[test]
    fn rotation_revokes_every_active_token_and_issues_one() {
        let mut history = created();
        // Recorded before issuedVia was kept: it still counts as an active token.
        history.push(OrganizationEvent::OrgTokenIssued {
            token_id: Uuid::from_u128(2),
            token_hash: "hash2".into(),
            label: None,
            issued_via: None,
        });
        history.push(OrganizationEvent::OrganizationSuspended { reason: "leak".into() });
        Given::with(())
            .given(history)
            .when(on(OrgAction::RotateToken {
                token: token(3),
                issued_via: IssuedVia::Rotate,
                reason: "rotate".into(),
            }))
            .then_expect_events(vec![
                OrganizationEvent::OrgTokenRevoked {
                    token_ids: vec![Uuid::from_u128(1), Uuid::from_u128(2)],
                    reason: "rotate".into(),
                },
                OrganizationEvent::OrgTokenIssued {
                    token_id: Uuid::from_u128(3),
                    token_hash: "hash3".into(),
                    label: None,
                    issued_via: Some(IssuedVia::Rotate),
                },
            ]);
    }

    #[test]
    fn issuing_adds_a_token_beside_the_active_ones_and_needs_an_existing_org() {
        let issue = || on(OrgAction::IssueToken { token: token(2), issued_via: IssuedVia::Cli });
        Given::with(()).given(created()).when(issue()).then_expect_events(vec![OrganizationEvent::OrgTokenIssued {
            token_id: Uuid::from_u128(2),
            token_hash: "hash2".into(),
            label: None,
            issued_via: Some(IssuedVia::Cli),
        }]);
        Given::with(())
            .given_no_previous_events()
            .when(issue())
            .then_expect_error(OrganizationError::NotFound("acme".into()));
    }

    #[test]
    fn settings_change_records_before_and_after_and_nothing_when_unchanged() {
        let change = SettingsChange { max_spend_per_day: Some(Some(5_000_000)), ..SettingsChange::default() };
        let before =
            OrgSettings { a2p_registered: false, max_agents: 100, max_spend_per_day: None, max_spend_per_month: None };
        let after = OrgSettings { max_spend_per_day: Some(5_000_000), ..before.clone() };
        Given::with(())
            .given(created())
            .when(on(OrgAction::ChangeSettings(change)))
            .then_expect_events(vec![OrganizationEvent::OrgSettingsChanged { before, after }]);
        Given::with(())
            .given(created())
            .when(on(OrgAction::ChangeSettings(SettingsChange::default())))
            .then_expect_events(vec![]);
    }

    #[test]
    fn an_org_token_event_stored_without_issued_via_reads_back_and_is_written_back_unchanged() {
        let stored =
            r#"{"OrgTokenIssued":{"tokenId":"00000000-0000-0000-0000-000000000002","tokenHash":"h","label":null}}"#;
        let event: OrganizationEvent = serde_json::from_str(stored).unwrap();
        assert!(matches!(event, OrganizationEvent::OrgTokenIssued { issued_via: None, .. }));
        assert_eq!(serde_json::to_string(&event).unwrap(), stored);
    }
}

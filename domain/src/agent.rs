//! The agent aggregate (id = agentId), identity side: provisioning into an organization,
//! deprovisioning, its bearer tokens, and the channels it is blocked on. An agent id is never
//! reused: a deprovisioned agent stays deprovisioned.

use cqrs_es::event_sink::EventSink;
use cqrs_es::{Aggregate, DomainEvent};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::limits::{LimitSet, Overrides, OverridesChange, Tier};
use crate::pii::Pii;
use crate::records::ActionRefused;
use crate::refusal::{DomainError, ErrorCode};
use crate::values::{normalise_blocked_channels, IssuedToken, OrgMode};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentStatus {
    Active,
    Deprovisioned,
}

impl AgentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::Deprovisioned => "deprovisioned",
        }
    }
}

/// How a token came to be (docs/events.md `issuedVia`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IssuedVia {
    Provision,
    Rotate,
    Cli,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    pub phone: bool,
    pub whatsapp: bool,
    pub email: bool,
    pub voice_ai: bool,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Agent {
    org_id: Option<String>,
    status: Option<AgentStatus>,
    active_tokens: Vec<Uuid>,
    blocked_channels: Vec<String>,
    #[serde(default)]
    tier: Tier,
    #[serde(default)]
    overrides: Overrides,
    #[serde(default)]
    markup_percent: Option<f64>,
}

impl Agent {
    pub fn org_id(&self) -> Option<&str> {
        self.org_id.as_deref()
    }

    pub fn status(&self) -> Option<AgentStatus> {
        self.status
    }

    pub fn active_tokens(&self) -> &[Uuid] {
        &self.active_tokens
    }

    pub fn blocked_channels(&self) -> &[String] {
        &self.blocked_channels
    }

    pub fn tier(&self) -> Tier {
        self.tier
    }

    pub fn overrides(&self) -> Overrides {
        self.overrides
    }

    /// `None`: the deployment's markup (`BILLING_MARKUP_PERCENT`).
    pub fn markup_percent(&self) -> Option<f64> {
        self.markup_percent
    }
}

/// What provisioning decided outside the aggregate (country rules, capacity, provider numbers).
#[derive(Clone, Debug, PartialEq)]
pub struct Provisioning {
    pub org_id: String,
    pub display_name: String,
    pub agent_gender: String,
    pub country: String,
    pub capabilities: Capabilities,
    pub channels: Value,
    pub greeting: Option<String>,
    pub system_prompt: Option<String>,
    pub provider_refs: Value,
    pub mode: OrgMode,
    pub token: IssuedToken,
}

/// A command on agent `agent_id` (carried so refusals can name it).
#[derive(Clone, Debug, PartialEq)]
pub struct AgentCommand {
    pub agent_id: String,
    pub action: AgentAction,
}

#[derive(Clone, Debug, PartialEq)]
pub enum AgentAction {
    Provision(Box<Provisioning>),
    Deprovision {
        number_released: bool,
        warnings: Vec<String>,
    },
    /// Revokes every active token of the agent and issues `token`.
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
    BlockChannels {
        channels: Vec<String>,
    },
    /// `starter`: the deployment's starter tier, which effective limits fall back to.
    SetLimits {
        change: OverridesChange,
        starter: LimitSet,
    },
    SetBilling {
        tier: Option<Tier>,
        markup_percent: Option<Option<f64>>,
        billing_email: Option<Option<String>>,
        starter: LimitSet,
    },
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all_fields = "camelCase")]
pub enum AgentEvent {
    AgentProvisioned {
        org_id: String,
        display_name: String,
        agent_gender: String,
        country: String,
        capabilities: Capabilities,
        channels: Value,
        greeting: Option<String>,
        system_prompt: Option<String>,
        provider_refs: Value,
        mode: OrgMode,
    },
    AgentDeprovisioned {
        number_released: bool,
        warnings: Vec<String>,
    },
    AgentTokenIssued {
        token_id: Uuid,
        token_hash: String,
        label: Option<String>,
        issued_via: IssuedVia,
    },
    AgentTokenRevoked {
        token_ids: Vec<Uuid>,
        reason: String,
    },
    AgentChannelsBlocked {
        blocked_channels: Vec<String>,
    },
    /// A refused tool call about this agent (appended by `Store::record`; changes no state).
    ActionRefused(ActionRefused),
    LimitsChanged {
        overrides_before: Overrides,
        overrides_after: Overrides,
        effective: LimitSet,
    },
    BillingConfigChanged {
        tier: Tier,
        markup_percent: Option<f64>,
        billing_email: Option<Pii>,
        tier_limits: LimitSet,
    },
    /// Outbound facts, decided by the outbound pipeline (limits and compliance live outside the
    /// aggregate, in Postgres) and appended by `Store::record`; they change no aggregate state.
    /// Money is integer micro-dollars.
    MessageSent {
        message_id: Uuid,
        channel: String,
        purpose: String,
        to: Pii,
        from: Option<String>,
        subject: Option<Pii>,
        body: Pii,
        html: Option<Pii>,
        provider: String,
        external_id: String,
        status: String,
        cost: i64,
        warnings: Vec<serde_json::Value>,
    },
    MessageBlocked {
        message_id: Uuid,
        channel: String,
        purpose: String,
        to: Pii,
        body: Pii,
        refused_by: String,
        code: String,
        rule: Option<String>,
        limit_type: Option<String>,
        reason: String,
    },
    MessageFailed {
        message_id: Uuid,
        channel: String,
        to: Pii,
        provider: String,
        error: String,
    },
    /// `kind`: call | voice_message.
    CallPlaced {
        call_id: Uuid,
        kind: String,
        to: Pii,
        from: Option<String>,
        text: Option<Pii>,
        system_prompt: Option<Pii>,
        record: bool,
        purpose: String,
        provider: String,
        external_id: String,
        cost: i64,
        /// The candidate zones quiet hours evaluated, and the local time in the first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        zones: Option<Vec<String>>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        local_time: Option<String>,
    },
    CallBlocked {
        call_id: Uuid,
        kind: String,
        to: Pii,
        refused_by: String,
        code: String,
        rule: Option<String>,
        limit_type: Option<String>,
        reason: String,
    },
    /// `code` is the error code the caller was answered and `reason` its text (events stored
    /// before they were recorded read them as empty).
    CallFailed {
        call_id: Uuid,
        kind: String,
        to: Pii,
        provider: String,
        error: String,
        #[serde(default)]
        code: String,
        #[serde(default)]
        reason: String,
    },
    /// Inbound facts from provider webhooks (docs/webhooks.md), appended by `Store::record`.
    MessageReceived {
        message_id: Uuid,
        channel: String,
        from: Pii,
        to: String,
        subject: Option<Pii>,
        body: Pii,
        external_id: String,
        keyword: Option<String>,
        dropped: bool,
        forwarded: bool,
    },
    /// A call's status as the provider reported it; terminal statuses carry the call's cost.
    CallStatusChanged {
        call_id: Uuid,
        kind: String,
        status: String,
        duration_seconds: Option<i64>,
        cost: Option<i64>,
        recording_url: Option<Pii>,
    },
    /// A webhook refused before its handler ran; `reason`: signature | replay | ip | secret_missing | malformed.
    WebhookRejected {
        route: String,
        reason: String,
        ip_ref: String,
    },
    InboundForwardFailed {
        message_id: Uuid,
        attempts: u32,
        last_error: String,
    },
}

impl DomainEvent for AgentEvent {
    fn event_type(&self) -> String {
        match self {
            Self::AgentProvisioned { .. } => "AgentProvisioned",
            Self::AgentDeprovisioned { .. } => "AgentDeprovisioned",
            Self::AgentTokenIssued { .. } => "AgentTokenIssued",
            Self::AgentTokenRevoked { .. } => "AgentTokenRevoked",
            Self::AgentChannelsBlocked { .. } => "AgentChannelsBlocked",
            Self::ActionRefused { .. } => "ActionRefused",
            Self::LimitsChanged { .. } => "LimitsChanged",
            Self::BillingConfigChanged { .. } => "BillingConfigChanged",
            Self::MessageSent { .. } => "MessageSent",
            Self::MessageBlocked { .. } => "MessageBlocked",
            Self::MessageFailed { .. } => "MessageFailed",
            Self::CallPlaced { .. } => "CallPlaced",
            Self::CallBlocked { .. } => "CallBlocked",
            Self::CallFailed { .. } => "CallFailed",
            Self::MessageReceived { .. } => "MessageReceived",
            Self::CallStatusChanged { .. } => "CallStatusChanged",
            Self::WebhookRejected { .. } => "WebhookRejected",
            Self::InboundForwardFailed { .. } => "InboundForwardFailed",
        }
        .into()
    }

    fn event_version(&self) -> String {
        "1.0".into()
    }
}

/// Refusals, worded as the contract words them; `code()` is the docs/errors.md code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("Agent \"{0}\" not found")]
    NotFound(String),
    #[error("Agent \"{0}\" already exists")]
    AlreadyExists(String),
    #[error("Agent \"{0}\" is already deprovisioned")]
    AlreadyDeprovisioned(String),
    #[error("Agent \"{0}\" is not active (status: deprovisioned)")]
    NotActive(String),
}

impl AgentError {
    /// The docs/errors.md code of each refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::NotFound(_) => ErrorCode::NotFound,
            Self::AlreadyExists(_) | Self::AlreadyDeprovisioned(_) | Self::NotActive(_) => ErrorCode::Conflict,
        }
    }
}

impl DomainError for AgentError {
    fn code(&self) -> ErrorCode {
        AgentError::code(self)
    }
}

impl Aggregate for Agent {
    const TYPE: &'static str = "agent";
    type Command = AgentCommand;
    type Event = AgentEvent;
    type Error = AgentError;
    type Services = ();

    async fn handle(&mut self, command: AgentCommand, _: &(), sink: &EventSink<Self>) -> Result<(), AgentError> {
        use AgentEvent as E;
        let AgentCommand { agent_id: id, action } = command;
        let events = match (self.status, action) {
            (Some(_), AgentAction::Provision(_)) => return Err(AgentError::AlreadyExists(id)),
            (None, AgentAction::Provision(p)) => {
                let p = *p;
                vec![
                    E::AgentProvisioned {
                        org_id: p.org_id,
                        display_name: p.display_name,
                        agent_gender: p.agent_gender,
                        country: p.country,
                        capabilities: p.capabilities,
                        channels: p.channels,
                        greeting: p.greeting,
                        system_prompt: p.system_prompt,
                        provider_refs: p.provider_refs,
                        mode: p.mode,
                    },
                    issued(p.token, IssuedVia::Provision),
                ]
            }
            (None, _) => return Err(AgentError::NotFound(id)),
            (Some(AgentStatus::Deprovisioned), AgentAction::Deprovision { .. }) => {
                return Err(AgentError::AlreadyDeprovisioned(id))
            }
            (Some(AgentStatus::Deprovisioned), AgentAction::RotateToken { .. } | AgentAction::IssueToken { .. }) => {
                return Err(AgentError::NotActive(id))
            }
            (Some(AgentStatus::Active), AgentAction::Deprovision { number_released, warnings }) => {
                let mut events = vec![E::AgentDeprovisioned { number_released, warnings }];
                if !self.active_tokens.is_empty() {
                    events.push(E::AgentTokenRevoked {
                        token_ids: self.active_tokens.clone(),
                        reason: "deprovisioned".into(),
                    });
                }
                events
            }
            (Some(AgentStatus::Active), AgentAction::RotateToken { token, issued_via, reason }) => {
                let mut events = Vec::new();
                if !self.active_tokens.is_empty() {
                    events.push(E::AgentTokenRevoked { token_ids: self.active_tokens.clone(), reason });
                }
                events.push(issued(token, issued_via));
                events
            }
            (Some(AgentStatus::Active), AgentAction::IssueToken { token, issued_via }) => {
                vec![issued(token, issued_via)]
            }
            (Some(_), AgentAction::SetLimits { change, starter }) => {
                let after = self.overrides.changed(change);
                vec![E::LimitsChanged {
                    overrides_before: self.overrides,
                    overrides_after: after,
                    effective: after.effective(self.tier.limits(starter)),
                }]
            }
            (Some(_), AgentAction::SetBilling { tier, markup_percent, billing_email, starter }) => {
                let tier = tier.unwrap_or(self.tier);
                vec![E::BillingConfigChanged {
                    tier,
                    markup_percent: markup_percent.unwrap_or(self.markup_percent),
                    // The billing address is personal data: sealed under the agent's org subject key.
                    billing_email: billing_email.flatten().map(Pii::subject),
                    tier_limits: tier.limits(starter),
                }]
            }
            // Blocking stays possible on a deprovisioned agent: it only ever narrows what it may do.
            (Some(_), AgentAction::BlockChannels { channels }) => {
                vec![E::AgentChannelsBlocked { blocked_channels: normalise_blocked_channels(&channels) }]
            }
        };
        for event in events {
            sink.write(event, self).await;
        }
        Ok(())
    }

    fn apply(&mut self, event: AgentEvent) {
        use AgentEvent as E;
        match event {
            E::AgentProvisioned { org_id, .. } => {
                self.org_id = Some(org_id);
                self.status = Some(AgentStatus::Active);
            }
            E::AgentDeprovisioned { .. } => self.status = Some(AgentStatus::Deprovisioned),
            E::AgentTokenIssued { token_id, .. } => self.active_tokens.push(token_id),
            E::AgentTokenRevoked { token_ids, .. } => self.active_tokens.retain(|t| !token_ids.contains(t)),
            E::AgentChannelsBlocked { blocked_channels } => self.blocked_channels = blocked_channels,
            E::LimitsChanged { overrides_after, .. } => self.overrides = overrides_after,
            E::BillingConfigChanged { tier, markup_percent, .. } => {
                self.tier = tier;
                self.markup_percent = markup_percent;
            }
            E::ActionRefused { .. }
            | E::MessageSent { .. }
            | E::MessageBlocked { .. }
            | E::MessageFailed { .. }
            | E::CallPlaced { .. }
            | E::CallBlocked { .. }
            | E::CallFailed { .. }
            | E::MessageReceived { .. }
            | E::CallStatusChanged { .. }
            | E::WebhookRejected { .. }
            | E::InboundForwardFailed { .. } => {}
        }
    }
}

fn issued(token: IssuedToken, issued_via: IssuedVia) -> AgentEvent {
    AgentEvent::AgentTokenIssued {
        token_id: token.token_id,
        token_hash: token.token_hash,
        label: token.label,
        issued_via,
    }
}

#[cfg(test)]
mod tests {
    use cqrs_es::test::TestFramework;

    use super::*;

    type Given = TestFramework<Agent>;

    fn token(n: u128) -> IssuedToken {
        IssuedToken { token_id: Uuid::from_u128(n), token_hash: format!("hash{n}"), label: None }
    }

    fn on(action: AgentAction) -> AgentCommand {
        AgentCommand { agent_id: "sales-1".into(), action }
    }

    fn provisioning() -> Provisioning {
        Provisioning {
            org_id: "acme".into(),
            display_name: "Sales".into(),
            agent_gender: "neutral".into(),
            country: "US".into(),
            capabilities: Capabilities { phone: true, ..Capabilities::default() },
            channels: Value::Null,
            greeting: None,
            system_prompt: None,
            provider_refs: Value::Null,
            mode: OrgMode::Sandbox,
            token: token(1),
        }
    }

    fn provisioned() -> Vec<AgentEvent> {
        let p = provisioning();
        vec![
            AgentEvent::AgentProvisioned {
                org_id: p.org_id,
                display_name: p.display_name,
                agent_gender: p.agent_gender,
                country: p.country,
                capabilities: p.capabilities,
                channels: p.channels,
                greeting: None,
                system_prompt: None,
                provider_refs: p.provider_refs,
                mode: p.mode,
            },
            AgentEvent::AgentTokenIssued {
                token_id: Uuid::from_u128(1),
                token_hash: "hash1".into(),
                label: None,
                issued_via: IssuedVia::Provision,
            },
        ]
    }

    #[test]
    fn provisioning_records_the_agent_and_its_first_token() {
        Given::with(())
            .given_no_previous_events()
            .when(on(AgentAction::Provision(Box::new(provisioning()))))
            .then_expect_events(provisioned());
    }

    #[test]
    fn an_agent_id_is_never_provisioned_twice_even_after_deprovisioning() {
        let mut history = provisioned();
        history.push(AgentEvent::AgentDeprovisioned { number_released: true, warnings: vec![] });
        Given::with(())
            .given(history)
            .when(on(AgentAction::Provision(Box::new(provisioning()))))
            .then_expect_error(AgentError::AlreadyExists("sales-1".into()));
    }

    #[test]
    fn deprovisioning_revokes_tokens_and_a_second_time_is_a_conflict() {
        let deprovision = || on(AgentAction::Deprovision { number_released: true, warnings: vec![] });
        Given::with(()).given(provisioned()).when(deprovision()).then_expect_events(vec![
            AgentEvent::AgentDeprovisioned { number_released: true, warnings: vec![] },
            AgentEvent::AgentTokenRevoked { token_ids: vec![Uuid::from_u128(1)], reason: "deprovisioned".into() },
        ]);
        let mut history = provisioned();
        history.push(AgentEvent::AgentDeprovisioned { number_released: true, warnings: vec![] });
        Given::with(())
            .given(history)
            .when(deprovision())
            .then_expect_error(AgentError::AlreadyDeprovisioned("sales-1".into()));
    }

    #[test]
    fn rotation_revokes_every_active_token_and_refuses_deprovisioned_agents() {
        let rotate = || {
            on(AgentAction::RotateToken { token: token(2), issued_via: IssuedVia::Rotate, reason: "rotated".into() })
        };
        Given::with(()).given(provisioned()).when(rotate()).then_expect_events(vec![
            AgentEvent::AgentTokenRevoked { token_ids: vec![Uuid::from_u128(1)], reason: "rotated".into() },
            AgentEvent::AgentTokenIssued {
                token_id: Uuid::from_u128(2),
                token_hash: "hash2".into(),
                label: None,
                issued_via: IssuedVia::Rotate,
            },
        ]);
        let mut history = provisioned();
        history.push(AgentEvent::AgentDeprovisioned { number_released: false, warnings: vec![] });
        Given::with(()).given(history).when(rotate()).then_expect_error(AgentError::NotActive("sales-1".into()));
    }

    #[test]
    fn issuing_keeps_the_active_tokens_and_refuses_deprovisioned_agents() {
        let issue = || on(AgentAction::IssueToken { token: token(2), issued_via: IssuedVia::Cli });
        Given::with(()).given(provisioned()).when(issue()).then_expect_events(vec![AgentEvent::AgentTokenIssued {
            token_id: Uuid::from_u128(2),
            token_hash: "hash2".into(),
            label: None,
            issued_via: IssuedVia::Cli,
        }]);
        let mut history = provisioned();
        history.push(AgentEvent::AgentDeprovisioned { number_released: false, warnings: vec![] });
        Given::with(()).given(history).when(issue()).then_expect_error(AgentError::NotActive("sales-1".into()));
        Given::with(())
            .given_no_previous_events()
            .when(issue())
            .then_expect_error(AgentError::NotFound("sales-1".into()));
    }

    #[test]
    fn commands_on_an_unknown_agent_are_not_found() {
        Given::with(())
            .given_no_previous_events()
            .when(on(AgentAction::BlockChannels { channels: vec!["sms".into()] }))
            .then_expect_error(AgentError::NotFound("sales-1".into()));
    }

    #[test]
    fn blocked_channels_are_normalised_before_they_are_recorded() {
        let channels = vec!["sms".into(), "pager".into(), "sms".into(), "voice".into()];
        Given::with(()).given(provisioned()).when(on(AgentAction::BlockChannels { channels })).then_expect_events(
            vec![AgentEvent::AgentChannelsBlocked { blocked_channels: vec!["sms".into(), "voice".into()] }],
        );
    }
}

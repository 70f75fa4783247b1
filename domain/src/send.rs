//! The send decision (docs/tools.md#the-outbound-pipeline steps 5, 6 and 13's choice), without IO: given the agent's
//! and the org's state, the channel, demo mode and whether the deployment offers a real provider
//! for the channel, it decides whether the action is refused — at which check, with which
//! refusal — and if not, whether it runs in the sandbox and which provider takes it. The outbound
//! pipeline (`commguard::outbound::run`) does the IO around it: the lookups, compliance (steps
//! 7–11), the reservation (12) and the provider call.
//!
//! A refusal from `decide` is a block (`MessageBlocked` / `CallBlocked`); a refusal from
//! `Route::provider` is a failure of step 13 (`MessageFailed` / `CallFailed`, provider `none`).

use crate::agent::AgentStatus;
use crate::refusal::{Check, ErrorCode, Refusal, Rule};
use crate::values::{Address, Channel, OrgMode};

/// What step 5 reads of the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentState<'a> {
    pub agent_id: &'a str,
    pub status: AgentStatus,
    /// Whether the agent has a phone number.
    pub phone: bool,
    /// Whether the agent has an email address.
    pub email: bool,
    /// The channels it is blocked on; `*` is every channel.
    pub blocked_channels: &'a [String],
}

/// What step 6 reads of the org.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OrgState<'a> {
    pub org_id: &'a str,
    pub mode: OrgMode,
}

/// One outbound action about to be decided.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Send<'a> {
    pub agent: AgentState<'a>,
    pub org: OrgState<'a>,
    pub channel: Channel,
    /// `DEMO_MODE`: everything goes to the mock.
    pub demo_mode: bool,
    /// Whether the deployment offers the channel's real provider (not disabled by an operator).
    pub real_provider: bool,
}

/// A provider kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Mock,
    Twilio,
    Resend,
}

impl Provider {
    /// The real provider of `channel`: Resend for email, Twilio for SMS and voice.
    pub fn real_for(channel: Channel) -> Self {
        match channel {
            Channel::Email => Self::Resend,
            Channel::Sms | Channel::Voice => Self::Twilio,
        }
    }
}

/// Where an admitted action goes (step 13, chosen before compliance and limits so the intent
/// stored with the reservation can say what will have happened).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    /// A sandbox org, or demo mode: the mock.
    Sandbox,
    /// A production org: the channel's real provider, if it has credentials.
    Real(Channel),
    /// A production org whose channel's provider the deployment does not offer.
    Unconfigured(Channel),
}

impl Route {
    /// Whether the reply says `sandbox: true`.
    pub fn sandbox(self) -> bool {
        self == Self::Sandbox
    }

    /// The real provider whose credentials must be looked up, if any.
    pub fn wants_credentials(self) -> Option<Provider> {
        match self {
            Self::Real(channel) => Some(Provider::real_for(channel)),
            Self::Sandbox | Self::Unconfigured(_) => None,
        }
    }

    /// Step 13: the provider that takes the action, given whether credentials were found for the
    /// real one; a refusal is a failure (`MessageFailed`), not a block.
    pub fn provider(self, credentials: bool) -> Result<Provider, Refusal> {
        match self {
            Self::Sandbox => Ok(Provider::Mock),
            Self::Real(channel) if credentials => Ok(Provider::real_for(channel)),
            Self::Real(channel) | Self::Unconfigured(channel) => Err(unconfigured(channel)),
        }
    }
}

fn unconfigured(channel: Channel) -> Refusal {
    let what = match channel {
        Channel::Email => "email",
        Channel::Sms | Channel::Voice => "telephony",
    };
    Refusal::new(Check::Provider, ErrorCode::Unavailable, format!("No {what} provider configured"))
}

/// Step 5: the agent is active, has the channel's address, and is not blocked on it.
pub fn agent_state(agent: &AgentState<'_>, channel: Channel) -> Result<(), Refusal> {
    let id = agent.agent_id;
    let refuse = |code, reason: String| Err(Refusal::new(Check::AgentState, code, reason));
    if agent.status != AgentStatus::Active {
        return refuse(
            ErrorCode::Conflict,
            format!("Agent \"{id}\" is not active (status: {})", agent.status.as_str()),
        );
    }
    let (has, what) = match channel.address() {
        Address::Email => (agent.email, "email address"),
        Address::Phone => (agent.phone, "phone number"),
    };
    if !has {
        return refuse(ErrorCode::Conflict, format!("Agent \"{id}\" has no {what}"));
    }
    if agent.blocked_channels.iter().any(|c| c == "*" || c == channel.as_str()) {
        return refuse(ErrorCode::Forbidden, format!("Agent \"{id}\" is blocked on {} channel", channel.as_str()));
    }
    Ok(())
}

/// Step 6 (Z6): a suspended org does nothing.
pub fn org_state(org: &OrgState<'_>) -> Result<(), Refusal> {
    match org.mode {
        OrgMode::Suspended => Err(Refusal::new(
            Check::OrgState,
            ErrorCode::ComplianceBlocked,
            format!("Compliance: Organization \"{}\" is suspended", org.org_id),
        )
        .under(Rule::Sandbox)),
        OrgMode::Sandbox | OrgMode::Production => Ok(()),
    }
}

/// Steps 5 and 6, then the route of step 13: the mock for sandbox orgs and demo, else the
/// channel's real provider if the deployment offers it.
pub fn decide(send: &Send<'_>) -> Result<Route, Refusal> {
    agent_state(&send.agent, send.channel)?;
    org_state(&send.org)?;
    Ok(if send.demo_mode || send.org.mode != OrgMode::Production {
        Route::Sandbox
    } else if send.real_provider {
        Route::Real(send.channel)
    } else {
        Route::Unconfigured(send.channel)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: &[String] = &[];

    /// Given an active agent with a phone and an email, in a sandbox org, no demo, providers on.
    fn given<'a>() -> Send<'a> {
        Send {
            agent: AgentState {
                agent_id: "sales-1",
                status: AgentStatus::Active,
                phone: true,
                email: true,
                blocked_channels: NONE,
            },
            org: OrgState { org_id: "acme", mode: OrgMode::Sandbox },
            channel: Channel::Sms,
            demo_mode: false,
            real_provider: true,
        }
    }

    fn refused(send: &Send<'_>) -> Refusal {
        decide(send).expect_err("refused")
    }

    #[test]
    fn an_inactive_agent_is_refused_at_agent_state_with_conflict() {
        let mut send = given();
        send.agent.status = AgentStatus::Deprovisioned;
        let refusal = refused(&send);
        assert_eq!((refusal.check, refusal.code), (Check::AgentState, ErrorCode::Conflict));
        assert_eq!(refusal.reason, "Agent \"sales-1\" is not active (status: deprovisioned)");
        assert_eq!((refusal.rule, refusal.limit), (None, None));
    }

    #[test]
    fn an_agent_without_the_channels_address_is_refused() {
        let mut send = given();
        send.agent.phone = false;
        for channel in [Channel::Sms, Channel::Voice] {
            send.channel = channel;
            let refusal = refused(&send);
            assert_eq!((refusal.check, refusal.code), (Check::AgentState, ErrorCode::Conflict));
            assert_eq!(refusal.reason, "Agent \"sales-1\" has no phone number");
        }
        send.channel = Channel::Email;
        assert_eq!(decide(&send), Ok(Route::Sandbox));
        send.agent.email = false;
        assert_eq!(refused(&send).reason, "Agent \"sales-1\" has no email address");
    }

    #[test]
    fn a_blocked_channel_or_star_is_refused_forbidden() {
        let blocked = vec!["voice".to_string()];
        let mut send = given();
        send.agent.blocked_channels = &blocked;
        assert_eq!(decide(&send), Ok(Route::Sandbox), "sms is not blocked");
        send.channel = Channel::Voice;
        let refusal = refused(&send);
        assert_eq!((refusal.check, refusal.code), (Check::AgentState, ErrorCode::Forbidden));
        assert_eq!(refusal.reason, "Agent \"sales-1\" is blocked on voice channel");

        let star = vec!["*".to_string()];
        send.agent.blocked_channels = &star;
        send.channel = Channel::Email;
        assert_eq!(refused(&send).reason, "Agent \"sales-1\" is blocked on email channel");
    }

    #[test]
    fn the_agents_state_is_checked_before_the_orgs() {
        let mut send = given();
        send.agent.status = AgentStatus::Deprovisioned;
        send.org.mode = OrgMode::Suspended;
        assert_eq!(refused(&send).check, Check::AgentState);
    }

    #[test]
    fn a_suspended_org_is_refused_at_org_state_under_the_sandbox_rule() {
        let mut send = given();
        send.org.mode = OrgMode::Suspended;
        let refusal = refused(&send);
        assert_eq!((refusal.check, refusal.code), (Check::OrgState, ErrorCode::ComplianceBlocked));
        assert_eq!(refusal.rule, Some(Rule::Sandbox));
        assert_eq!(refusal.reason, "Compliance: Organization \"acme\" is suspended");
        send.demo_mode = true;
        assert_eq!(refused(&send).check, Check::OrgState, "demo mode does not lift a suspension");
    }

    #[test]
    fn a_sandbox_org_goes_to_the_mock() {
        let mut send = given();
        send.real_provider = false;
        let route = decide(&send).unwrap();
        assert_eq!(route, Route::Sandbox);
        assert!(route.sandbox());
        assert_eq!(route.wants_credentials(), None);
        assert_eq!(route.provider(false), Ok(Provider::Mock));
    }

    #[test]
    fn demo_mode_goes_to_the_mock_even_in_production() {
        let mut send = given();
        send.org.mode = OrgMode::Production;
        send.demo_mode = true;
        let route = decide(&send).unwrap();
        assert_eq!((route, route.provider(false)), (Route::Sandbox, Ok(Provider::Mock)));
    }

    #[test]
    fn production_goes_to_the_channels_real_provider_with_credentials() {
        let mut send = given();
        send.org.mode = OrgMode::Production;
        for (channel, provider) in
            [(Channel::Sms, Provider::Twilio), (Channel::Voice, Provider::Twilio), (Channel::Email, Provider::Resend)]
        {
            send.channel = channel;
            let route = decide(&send).unwrap();
            assert!(!route.sandbox());
            assert_eq!(route.wants_credentials(), Some(provider));
            assert_eq!(route.provider(true), Ok(provider));
        }
    }

    #[test]
    fn production_without_a_provider_fails_at_the_provider_step() {
        let mut send = given();
        send.org.mode = OrgMode::Production;
        send.real_provider = false;
        let route = decide(&send).expect("admitted: the failure is step 13's");
        assert_eq!(route, Route::Unconfigured(Channel::Sms));
        assert_eq!(route.wants_credentials(), None);
        let failure = route.provider(true).unwrap_err();
        assert_eq!((failure.check, failure.code), (Check::Provider, ErrorCode::Unavailable));
        assert_eq!(failure.reason, "No telephony provider configured");

        send.channel = Channel::Email;
        assert_eq!(decide(&send).unwrap().provider(false).unwrap_err().reason, "No email provider configured");
    }

    #[test]
    fn production_without_credentials_fails_at_the_provider_step() {
        let mut send = given();
        send.org.mode = OrgMode::Production;
        send.channel = Channel::Voice;
        let failure = decide(&send).unwrap().provider(false).unwrap_err();
        assert_eq!(failure.reason, "No telephony provider configured");
        send.channel = Channel::Email;
        let failure = decide(&send).unwrap().provider(false).unwrap_err();
        assert_eq!((failure.check, failure.reason.as_str()), (Check::Provider, "No email provider configured"));
    }
}

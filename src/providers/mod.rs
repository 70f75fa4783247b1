//! Communication providers behind one interface: the mock (docs/security.md#organizations) for
//! sandbox orgs and demo mode, and real HTTP clients for Twilio (`twilio.rs`: Messages, Calls,
//! numbers) and Resend (`resend.rs`: emails) with the credentials `credentials` resolves. Base URLs are
//! configurable (`TWILIO_API_BASE_URL`, `RESEND_API_BASE_URL`), so tests run the adapters
//! against local servers that speak those APIs. Sends are not retried: a send is not idempotent,
//! and a retry after a timeout could deliver twice.

use std::time::Duration;

use commguard_domain::values::Channel;
use rand::RngCore;
use serde_json::Value;

pub mod credentials;
mod resend;
mod twilio;

use crate::config::Config;
use credentials::Credentials;
pub use resend::Resend;
pub use twilio::Twilio;

/// How long a provider may take to accept a send.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// What is sent.
pub struct Outgoing<'a> {
    pub channel: Channel,
    pub to: &'a str,
    pub from: Option<&'a str>,
    pub subject: Option<&'a str>,
    pub body: Option<&'a str>,
    pub html: Option<&'a str>,
    /// What a call says and does (voice only).
    pub twiml: Option<&'a str>,
    /// Where the provider reports delivery or call status.
    pub status_callback: Option<&'a str>,
    pub record: bool,
}

/// The provider's answer to an accepted send. Cost in micro-dollars.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub external_id: String,
    pub status: String,
    pub cost: i64,
}

/// A provider refused or failed (`provider_error`).
#[derive(Clone, Debug)]
pub struct ProviderFailure(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Mock,
    Twilio,
    Resend,
}

/// Estimated costs, reserved before the send (docs/limits.md#tool-limits): SMS 0.0079, email 0.001, calls 0.
pub fn estimated_cost(channel: Channel) -> i64 {
    match channel {
        Channel::Sms => 7_900,
        Channel::Email => 1_000,
        Channel::Voice => 0,
    }
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mock => "mock",
            Self::Twilio => "twilio",
            Self::Resend => "resend",
        }
    }

    /// The real provider for `channel`; `None` when an operator disabled it.
    pub fn real_for(channel: Channel, config: &Config) -> Option<Self> {
        match channel {
            Channel::Email => (!config.provider_resend_disabled).then_some(Self::Resend),
            Channel::Sms | Channel::Voice => (!config.provider_twilio_disabled).then_some(Self::Twilio),
        }
    }

    pub async fn send(
        self,
        http: &reqwest::Client,
        config: &Config,
        credentials: &Credentials,
        message: &Outgoing<'_>,
    ) -> Result<Receipt, ProviderFailure> {
        match self {
            Self::Mock => mock_send(message),
            Self::Twilio => Twilio::of(http, config, credentials)?.send(message).await,
            Self::Resend => match Resend::account(http, config, credentials) {
                Some(resend) => resend.send(message).await,
                None => Err(ProviderFailure("resend: not configured".into())),
            },
        }
    }

    /// Checks credentials against the provider's fixed host (docs/tools.md#catalogue, fixes W31):
    /// `GET /2010-04-01/Accounts/{sid}.json` or `GET /domains`.
    pub async fn verify(
        self,
        http: &reqwest::Client,
        config: &Config,
        credentials: &Credentials,
    ) -> Result<(), ProviderFailure> {
        match self {
            Self::Mock => Ok(()),
            Self::Twilio => match Twilio::account(http, config, credentials) {
                Some(twilio) => twilio.verify().await,
                None => Err(ProviderFailure("accountSid and authToken are required".into())),
            },
            Self::Resend => match Resend::account(http, config, credentials) {
                Some(resend) => resend.verify().await,
                None => Err(ProviderFailure("apiKey is required".into())),
            },
        }
    }
}

fn hex32() -> String {
    let mut bytes = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The mock fails sends to `+15005550001` and `*@fail.invalid` (a test hook), accepts the rest.
fn mock_send(message: &Outgoing<'_>) -> Result<Receipt, ProviderFailure> {
    if message.to == "+15005550001" || message.to.ends_with("@fail.invalid") {
        return Err(ProviderFailure(format!("Mock provider rejected delivery to {}", message.to)));
    }
    let prefix = match message.channel {
        Channel::Email => "EM",
        Channel::Sms => "SM",
        Channel::Voice => "CA",
    };
    if prefix == "CA" && message.twiml.is_none() {
        return Err(ProviderFailure("a call needs TwiML".into()));
    }
    let status = if prefix == "CA" { "queued" } else { "sent" };
    Ok(Receipt {
        external_id: format!("{prefix}{}", hex32()),
        status: status.into(),
        cost: estimated_cost(message.channel),
    })
}

/// A provider's error body as one line: its `message` field if it has one, else the status.
async fn failure(provider: &str, response: reqwest::Response) -> ProviderFailure {
    let status = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    let detail = body.get("message").and_then(Value::as_str).map_or_else(|| format!("HTTP {status}"), str::to_string);
    ProviderFailure(format!("{provider}: {detail}"))
}

fn unreachable(provider: &str, e: reqwest::Error) -> ProviderFailure {
    if e.is_timeout() {
        ProviderFailure(format!("{provider}: no answer within {} s", TIMEOUT.as_secs()))
    } else {
        ProviderFailure(format!("{provider}: request failed"))
    }
}

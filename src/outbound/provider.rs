//! Communication providers behind one interface. The mock (CONTRACT §5 Organizations) serves
//! sandbox orgs and demo mode; the real Twilio and Resend adapters are still to come (issue 5),
//! so a production org is answered `unavailable` until they exist.

use rand::RngCore;

/// What is sent.
pub struct Outgoing<'a> {
    pub channel: &'a str,
    pub to: &'a str,
    /// What a call says and does (voice only).
    pub twiml: Option<&'a str>,
}

/// The provider's answer to an accepted send. Cost in micro-dollars.
#[derive(Clone, Debug)]
pub struct Receipt {
    pub external_id: String,
    pub status: &'static str,
    pub cost: i64,
}

/// A provider refused or failed (`provider_error`).
#[derive(Clone, Debug)]
pub struct ProviderFailure(pub String);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Provider {
    Mock,
}

/// Mock prices (CONTRACT §9.1 estimates): SMS 0.0079, email 0.001, calls 0.
pub fn estimated_cost(channel: &str) -> i64 {
    match channel {
        "sms" => 7_900,
        "email" => 1_000,
        _ => 0,
    }
}

impl Provider {
    pub fn name(self) -> &'static str {
        match self {
            Self::Mock => "mock",
        }
    }

    pub async fn send(self, message: &Outgoing<'_>) -> Result<Receipt, ProviderFailure> {
        match self {
            Self::Mock => mock_send(message),
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
        "email" => "EM",
        "sms" => "SM",
        _ => "CA",
    };
    if prefix == "CA" && message.twiml.is_none() {
        return Err(ProviderFailure("a call needs TwiML".into()));
    }
    let status = if prefix == "CA" { "queued" } else { "sent" };
    Ok(Receipt { external_id: format!("{prefix}{}", hex32()), status, cost: estimated_cost(message.channel) })
}

//! Communication providers behind one interface: the mock (CONTRACT §5 Organizations) for
//! sandbox orgs and demo mode, and real HTTP adapters for Twilio (Messages and Calls REST API)
//! and Resend (emails API) with the credentials `super::credentials` resolves. Base URLs are
//! configurable (`TWILIO_API_BASE_URL`, `RESEND_API_BASE_URL`), so tests run the adapters
//! against local servers that speak those APIs. Sends are not retried: a send is not idempotent,
//! and a retry after a timeout could deliver twice.

use std::time::Duration;

use commguard_domain::values::Channel;
use rand::RngCore;
use serde_json::{json, Value};

pub mod credentials;

use crate::config::Config;
use credentials::Credentials;

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

/// Estimated costs, reserved before the send (CONTRACT §9.1): SMS 0.0079, email 0.001, calls 0.
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
            Self::Twilio => twilio_send(http, config, credentials, message).await,
            Self::Resend => resend_send(http, config, credentials, message).await,
        }
    }

    /// Checks credentials against the provider's fixed host (CONTRACT §6.3, fixes W31):
    /// `GET /2010-04-01/Accounts/{sid}.json` or `GET /domains`.
    pub async fn verify(
        self,
        http: &reqwest::Client,
        config: &Config,
        credentials: &Credentials,
    ) -> Result<(), ProviderFailure> {
        let request = match self {
            Self::Mock => return Ok(()),
            Self::Twilio => {
                let (Some(sid), Some(token)) = (credentials.get("accountSid"), credentials.get("authToken")) else {
                    return Err(ProviderFailure("accountSid and authToken are required".into()));
                };
                let base = config.twilio_api_base_url.trim_end_matches('/');
                http.get(format!("{base}/2010-04-01/Accounts/{sid}.json")).basic_auth(sid, Some(token))
            }
            Self::Resend => {
                let Some(key) = credentials.get("apiKey") else {
                    return Err(ProviderFailure("apiKey is required".into()));
                };
                http.get(format!("{}/domains", config.resend_api_base_url.trim_end_matches('/'))).bearer_auth(key)
            }
        };
        let response = request.timeout(TIMEOUT).send().await.map_err(|e| unreachable(self.name(), e))?;
        if response.status().is_success() {
            Ok(())
        } else {
            Err(failure(self.name(), response).await)
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

/// Twilio's price is a negative decimal string of dollars, often unknown at send time.
fn twilio_cost(body: &Value, channel: Channel) -> i64 {
    body.get("price")
        .and_then(Value::as_str)
        .and_then(crate::money::parse_decimal)
        .map(i64::abs)
        .unwrap_or_else(|| estimated_cost(channel))
}

async fn twilio_send(
    http: &reqwest::Client,
    config: &Config,
    credentials: &Credentials,
    m: &Outgoing<'_>,
) -> Result<Receipt, ProviderFailure> {
    let (Some(sid), Some(token)) = (credentials.get("accountSid"), credentials.get("authToken")) else {
        return Err(ProviderFailure("twilio: not configured".into()));
    };
    let resource = if m.channel == Channel::Voice { "Calls" } else { "Messages" };
    let url = format!("{}/2010-04-01/Accounts/{sid}/{resource}.json", config.twilio_api_base_url.trim_end_matches('/'));
    let mut form: Vec<(&str, &str)> = vec![("To", m.to)];
    if let Some(from) = m.from {
        form.push(("From", from));
    }
    if m.channel == Channel::Voice {
        form.push(("Twiml", m.twiml.unwrap_or("<Response/>")));
        if m.record {
            form.push(("Record", "true"));
        }
    } else if let Some(body) = m.body {
        form.push(("Body", body));
    }
    if let Some(callback) = m.status_callback {
        form.push(("StatusCallback", callback));
    }
    let response = http
        .post(url)
        .basic_auth(sid, Some(token))
        .form(&form)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable("twilio", e))?;
    if !response.status().is_success() {
        return Err(failure("twilio", response).await);
    }
    let body: Value = response.json().await.map_err(|_| ProviderFailure("twilio: unreadable response".into()))?;
    let external_id = body
        .get("sid")
        .and_then(Value::as_str)
        .ok_or_else(|| ProviderFailure("twilio: response without sid".into()))?;
    Ok(Receipt {
        external_id: external_id.to_string(),
        status: body.get("status").and_then(Value::as_str).unwrap_or("queued").to_string(),
        cost: twilio_cost(&body, m.channel),
    })
}

async fn resend_send(
    http: &reqwest::Client,
    config: &Config,
    credentials: &Credentials,
    m: &Outgoing<'_>,
) -> Result<Receipt, ProviderFailure> {
    let Some(key) = credentials.get("apiKey") else {
        return Err(ProviderFailure("resend: not configured".into()));
    };
    let url = format!("{}/emails", config.resend_api_base_url.trim_end_matches('/'));
    let mut email = json!({"from": m.from, "to": [m.to], "subject": m.subject, "text": m.body});
    if let Some(html) = m.html {
        email["html"] = json!(html);
    }
    let response = http
        .post(url)
        .bearer_auth(key)
        .json(&email)
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable("resend", e))?;
    if !response.status().is_success() {
        return Err(failure("resend", response).await);
    }
    let body: Value = response.json().await.map_err(|_| ProviderFailure("resend: unreadable response".into()))?;
    let id =
        body.get("id").and_then(Value::as_str).ok_or_else(|| ProviderFailure("resend: response without id".into()))?;
    Ok(Receipt { external_id: id.to_string(), status: "sent".into(), cost: estimated_cost(Channel::Email) })
}

/// Buys a local number in `country` that can send SMS, pointing its inbound SMS at `sms_url`
/// (CONTRACT §6.3 provisioning). Returns the number and Twilio's sid for it.
pub async fn buy_twilio_number(
    http: &reqwest::Client,
    config: &Config,
    credentials: &Credentials,
    country: &str,
    sms_url: &str,
) -> Result<(String, String), ProviderFailure> {
    let (Some(sid), Some(token)) = (credentials.get("accountSid"), credentials.get("authToken")) else {
        return Err(ProviderFailure("twilio: not configured".into()));
    };
    let base = format!("{}/2010-04-01/Accounts/{sid}", config.twilio_api_base_url.trim_end_matches('/'));
    let search = http
        .get(format!("{base}/AvailablePhoneNumbers/{country}/Local.json"))
        .query(&[("SmsEnabled", "true"), ("PageSize", "1")])
        .basic_auth(sid, Some(token))
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable("twilio", e))?;
    if !search.status().is_success() {
        return Err(failure("twilio", search).await);
    }
    let found: Value = search.json().await.map_err(|_| ProviderFailure("twilio: unreadable response".into()))?;
    let number = found["available_phone_numbers"][0]["phone_number"]
        .as_str()
        .ok_or_else(|| ProviderFailure(format!("twilio: no number available in {country}")))?
        .to_string();
    let bought = http
        .post(format!("{base}/IncomingPhoneNumbers.json"))
        .basic_auth(sid, Some(token))
        .form(&[("PhoneNumber", number.as_str()), ("SmsUrl", sms_url)])
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable("twilio", e))?;
    if !bought.status().is_success() {
        return Err(failure("twilio", bought).await);
    }
    let body: Value = bought.json().await.map_err(|_| ProviderFailure("twilio: unreadable response".into()))?;
    let number_sid = body["sid"].as_str().ok_or_else(|| ProviderFailure("twilio: response without sid".into()))?;
    Ok((body["phone_number"].as_str().unwrap_or(&number).to_string(), number_sid.to_string()))
}

/// A call's price as Twilio reports it (`GET …/Calls/{sid}.json`, `price` is negative or null
/// until Twilio has rated the call): |price| in micro-dollars, `None` if not rated yet.
pub async fn twilio_call_price(
    http: &reqwest::Client,
    config: &Config,
    credentials: &Credentials,
    call_sid: &str,
) -> Result<Option<i64>, ProviderFailure> {
    let (Some(sid), Some(token)) = (credentials.get("accountSid"), credentials.get("authToken")) else {
        return Err(ProviderFailure("twilio: not configured".into()));
    };
    let base = config.twilio_api_base_url.trim_end_matches('/');
    let response = http
        .get(format!("{base}/2010-04-01/Accounts/{sid}/Calls/{call_sid}.json"))
        .basic_auth(sid, Some(token))
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable("twilio", e))?;
    if !response.status().is_success() {
        return Err(failure("twilio", response).await);
    }
    let body: Value = response.json().await.map_err(|_| ProviderFailure("twilio: unreadable response".into()))?;
    let price = match &body["price"] {
        Value::String(s) => crate::money::parse_decimal(s),
        Value::Number(n) => crate::money::parse_decimal(&n.to_string()),
        _ => None,
    };
    Ok(price.map(i64::abs))
}

/// Releases a bought number (`DELETE …/IncomingPhoneNumbers/{sid}.json`).
pub async fn release_twilio_number(
    http: &reqwest::Client,
    config: &Config,
    credentials: &Credentials,
    number_sid: &str,
) -> Result<(), ProviderFailure> {
    let (Some(sid), Some(token)) = (credentials.get("accountSid"), credentials.get("authToken")) else {
        return Err(ProviderFailure("twilio: not configured".into()));
    };
    let base = config.twilio_api_base_url.trim_end_matches('/');
    let response = http
        .delete(format!("{base}/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers/{number_sid}.json"))
        .basic_auth(sid, Some(token))
        .timeout(TIMEOUT)
        .send()
        .await
        .map_err(|e| unreachable("twilio", e))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(failure("twilio", response).await)
    }
}

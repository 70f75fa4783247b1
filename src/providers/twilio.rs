//! The one Twilio REST client: an account's base URL (`TWILIO_API_BASE_URL`), account sid and
//! auth token, the GET/POST/DELETE helpers with basic auth and the send timeout, and the mapping
//! of Twilio's answers to `ProviderFailure`. Sending, credential checks, number buying and
//! release, and the call price lookup all go through it.

use commguard_domain::values::Channel;
use serde_json::Value;

use super::{estimated_cost, failure, unreachable, Outgoing, ProviderFailure, Receipt, TIMEOUT};
use crate::config::Config;
use crate::providers::credentials::Credentials;

/// A Twilio account, ready to be called.
pub struct Twilio<'a> {
    http: &'a reqwest::Client,
    /// `{base}/2010-04-01/Accounts/{sid}`.
    account: String,
    sid: &'a str,
    token: &'a str,
}

impl<'a> Twilio<'a> {
    /// The account of `credentials` (`accountSid`, `authToken`); `None` if either is missing.
    pub fn account(http: &'a reqwest::Client, config: &Config, credentials: &'a Credentials) -> Option<Self> {
        let (Some(sid), Some(token)) = (credentials.get("accountSid"), credentials.get("authToken")) else {
            return None;
        };
        let account = format!("{}/2010-04-01/Accounts/{sid}", config.twilio_api_base_url.trim_end_matches('/'));
        Some(Self { http, account, sid, token })
    }

    /// As `account`, a missing credential being `twilio: not configured`.
    pub fn of(
        http: &'a reqwest::Client,
        config: &Config,
        credentials: &'a Credentials,
    ) -> Result<Self, ProviderFailure> {
        Self::account(http, config, credentials).ok_or_else(|| ProviderFailure("twilio: not configured".into()))
    }

    /// Sends `request` with the account's basic auth and the timeout; a failure or a non-2xx
    /// answer is a `ProviderFailure`.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ProviderFailure> {
        let response = request
            .basic_auth(self.sid, Some(self.token))
            .timeout(TIMEOUT)
            .send()
            .await
            .map_err(|e| unreachable("twilio", e))?;
        if !response.status().is_success() {
            return Err(failure("twilio", response).await);
        }
        Ok(response)
    }

    /// `GET {account}{path}` with `query`: the JSON answer.
    async fn get(&self, path: &str, query: &[(&str, &str)]) -> Result<Value, ProviderFailure> {
        json(self.call(self.http.get(format!("{}{path}", self.account)).query(query)).await?).await
    }

    /// `POST {account}{path}` with a form body: the JSON answer.
    async fn post(&self, path: &str, form: &[(&str, &str)]) -> Result<Value, ProviderFailure> {
        json(self.call(self.http.post(format!("{}{path}", self.account)).form(form)).await?).await
    }

    /// Checks the credentials: `GET /2010-04-01/Accounts/{sid}.json`.
    pub async fn verify(&self) -> Result<(), ProviderFailure> {
        self.call(self.http.get(format!("{}.json", self.account))).await.map(drop)
    }

    /// Sends a message (`Messages`) or places a call (`Calls`, with its TwiML).
    pub async fn send(&self, m: &Outgoing<'_>) -> Result<Receipt, ProviderFailure> {
        let resource = if m.channel == Channel::Voice { "Calls" } else { "Messages" };
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
        let body = self.post(&format!("/{resource}.json"), &form).await?;
        let external_id = body
            .get("sid")
            .and_then(Value::as_str)
            .ok_or_else(|| ProviderFailure("twilio: response without sid".into()))?;
        Ok(Receipt {
            external_id: external_id.to_string(),
            status: body.get("status").and_then(Value::as_str).unwrap_or("queued").to_string(),
            cost: cost(&body, m.channel),
        })
    }

    /// Buys a local number in `country` that can send SMS, pointing its inbound SMS at `sms_url`
    /// (docs/tools.md#comms_provision_channels). Returns the number and Twilio's sid for it.
    pub async fn buy_number(&self, country: &str, sms_url: &str) -> Result<(String, String), ProviderFailure> {
        let found = self
            .get(&format!("/AvailablePhoneNumbers/{country}/Local.json"), &[("SmsEnabled", "true"), ("PageSize", "1")])
            .await?;
        let number = found["available_phone_numbers"][0]["phone_number"]
            .as_str()
            .ok_or_else(|| ProviderFailure(format!("twilio: no number available in {country}")))?
            .to_string();
        let body =
            self.post("/IncomingPhoneNumbers.json", &[("PhoneNumber", number.as_str()), ("SmsUrl", sms_url)]).await?;
        let number_sid = body["sid"].as_str().ok_or_else(|| ProviderFailure("twilio: response without sid".into()))?;
        Ok((body["phone_number"].as_str().unwrap_or(&number).to_string(), number_sid.to_string()))
    }

    /// Releases a bought number (`DELETE …/IncomingPhoneNumbers/{sid}.json`).
    pub async fn release_number(&self, number_sid: &str) -> Result<(), ProviderFailure> {
        let url = format!("{}/IncomingPhoneNumbers/{number_sid}.json", self.account);
        self.call(self.http.delete(url)).await.map(drop)
    }

    /// A call's price as Twilio reports it (`GET …/Calls/{sid}.json`, `price` is negative or null
    /// until Twilio has rated the call): |price| in micro-dollars, `None` if not rated yet.
    pub async fn call_price(&self, call_sid: &str) -> Result<Option<i64>, ProviderFailure> {
        let body = self.get(&format!("/Calls/{call_sid}.json"), &[]).await?;
        let price = match &body["price"] {
            Value::String(s) => crate::money::parse_decimal(s),
            Value::Number(n) => crate::money::parse_decimal(&n.to_string()),
            _ => None,
        };
        Ok(price.map(i64::abs))
    }
}

async fn json(response: reqwest::Response) -> Result<Value, ProviderFailure> {
    response.json().await.map_err(|_| ProviderFailure("twilio: unreadable response".into()))
}

/// Twilio's price is a negative decimal string of dollars, often unknown at send time.
fn cost(body: &Value, channel: Channel) -> i64 {
    body.get("price")
        .and_then(Value::as_str)
        .and_then(crate::money::parse_decimal)
        .map(i64::abs)
        .unwrap_or_else(|| estimated_cost(channel))
}

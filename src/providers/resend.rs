//! The Resend client: base URL (`RESEND_API_BASE_URL`) and API key, the bearer-authenticated
//! calls with the send timeout, and the mapping of Resend's answers to `ProviderFailure`.

use commguard_domain::values::Channel;
use serde_json::{json, Value};

use super::{estimated_cost, failure, unreachable, Outgoing, ProviderFailure, Receipt, TIMEOUT};
use crate::config::Config;
use crate::providers::credentials::Credentials;

/// A Resend account, ready to be called.
pub struct Resend<'a> {
    http: &'a reqwest::Client,
    base: &'a str,
    key: &'a str,
}

impl<'a> Resend<'a> {
    /// The account of `credentials` (`apiKey`); `None` if it is missing.
    pub fn account(http: &'a reqwest::Client, config: &'a Config, credentials: &'a Credentials) -> Option<Self> {
        let key = credentials.get("apiKey")?;
        Some(Self { http, base: config.resend_api_base_url.trim_end_matches('/'), key })
    }

    /// Sends `request` with the API key and the timeout; a failure or a non-2xx answer is a
    /// `ProviderFailure`.
    async fn call(&self, request: reqwest::RequestBuilder) -> Result<reqwest::Response, ProviderFailure> {
        let response =
            request.bearer_auth(self.key).timeout(TIMEOUT).send().await.map_err(|e| unreachable("resend", e))?;
        if !response.status().is_success() {
            return Err(failure("resend", response).await);
        }
        Ok(response)
    }

    /// Checks the key: `GET /domains`.
    pub async fn verify(&self) -> Result<(), ProviderFailure> {
        self.call(self.http.get(format!("{}/domains", self.base))).await.map(drop)
    }

    /// `POST /emails`.
    pub async fn send(&self, m: &Outgoing<'_>) -> Result<Receipt, ProviderFailure> {
        let mut email = json!({"from": m.from, "to": [m.to], "subject": m.subject, "text": m.body});
        if let Some(html) = m.html {
            email["html"] = json!(html);
        }
        let response = self.call(self.http.post(format!("{}/emails", self.base)).json(&email)).await?;
        let body: Value = response.json().await.map_err(|_| ProviderFailure("resend: unreadable response".into()))?;
        let id = body
            .get("id")
            .and_then(Value::as_str)
            .ok_or_else(|| ProviderFailure("resend: response without id".into()))?;
        Ok(Receipt { external_id: id.to_string(), status: "sent".into(), cost: estimated_cost(Channel::Email) })
    }
}

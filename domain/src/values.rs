//! Value types shared by the aggregates.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An organization's mode (docs/security.md#organizations, docs/compliance.md#sandbox sandbox gating).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrgMode {
    Sandbox,
    Production,
    Suspended,
}

impl OrgMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sandbox => "sandbox",
            Self::Production => "production",
            Self::Suspended => "suspended",
        }
    }
}

/// An outbound channel (docs/tools.md#catalogue): what an action is sent on, checked and counted by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Sms,
    Email,
    Voice,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sms => "sms",
            Self::Email => "email",
            Self::Voice => "voice",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "sms" => Some(Self::Sms),
            "email" => Some(Self::Email),
            "voice" => Some(Self::Voice),
            _ => None,
        }
    }

    /// The agent's address the channel sends from: its email address, else its phone number.
    pub fn address(self) -> Address {
        match self {
            Self::Email => Address::Email,
            Self::Sms | Self::Voice => Address::Phone,
        }
    }
}

/// An agent's own address: the key of its `channels` object.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Address {
    Phone,
    Email,
}

impl Address {
    /// The key in the agent's `channels`.
    pub fn key(self) -> &'static str {
        match self {
            Self::Phone => "phone",
            Self::Email => "email",
        }
    }
}

/// A bearer token just issued: its id and SHA-256 hash. The domain never sees the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token_id: Uuid,
    pub token_hash: String,
    pub label: Option<String>,
}

/// Channels an agent can be blocked on (docs/admin-api.md blocked-channels).
pub const CHANNELS: [&str; 4] = ["sms", "voice", "email", "whatsapp"];

/// Deduplicates, drops unknown names, and collapses any `*` to `["*"]`.
pub fn normalise_blocked_channels(requested: &[String]) -> Vec<String> {
    if requested.iter().any(|c| c == "*") {
        return vec!["*".into()];
    }
    let mut out: Vec<String> = Vec::new();
    for channel in requested {
        if CHANNELS.contains(&channel.as_str()) && !out.contains(channel) {
            out.push(channel.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocked_channels_are_deduplicated_known_and_star_wins() {
        let list = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(normalise_blocked_channels(&list(&["sms", "fax", "sms", "email"])), ["sms", "email"]);
        assert_eq!(normalise_blocked_channels(&list(&["sms", "*"])), ["*"]);
        assert!(normalise_blocked_channels(&[]).is_empty());
    }

    #[test]
    fn channels_serialize_lowercase_and_parse_back() {
        for channel in [Channel::Sms, Channel::Email, Channel::Voice] {
            assert_eq!(serde_json::to_value(channel).unwrap(), channel.as_str());
            assert_eq!(Channel::parse(channel.as_str()), Some(channel));
        }
        assert_eq!(Channel::parse("whatsapp"), None);
        assert_eq!(Channel::Voice.address().key(), "phone");
    }
}

//! Value types shared by the aggregates.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// An organization's mode (CONTRACT §5 Organizations, §10.8 sandbox gating).
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

/// A bearer token just issued: its id and SHA-256 hash. The domain never sees the token itself.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssuedToken {
    pub token_id: Uuid,
    pub token_hash: String,
    pub label: Option<String>,
}

/// Channels an agent can be blocked on (CONTRACT §12 blocked-channels).
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
}

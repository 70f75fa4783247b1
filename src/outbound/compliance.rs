//! Compliance on every outbound path (CONTRACT §10). This module is where the communication-law
//! issue puts content filter, DNC, consent, quiet hours and recording consent; until then each of
//! those checks is recorded as `skipped` in the provenance — never as passed — and only the
//! CAN-SPAM warning (§10.6) is produced.

use serde_json::{json, Value};

use crate::error::ApiError;
use crate::store::Provenance;

const NOT_YET: &str = "not enforced yet (communication-law issue)";

/// Checks 7–9 for a message; returns its warnings, or the check that refused and why.
pub fn check_message(
    provenance: &mut Provenance,
    channel: &str,
    body: &str,
    html: Option<&str>,
) -> Result<Vec<Value>, (&'static str, ApiError)> {
    for check in ["content_filter", "dnc", "consent"] {
        provenance.skip(check, NOT_YET);
    }
    let mut warnings = Vec::new();
    let mentions_unsubscribe = |text: &str| text.to_lowercase().contains("unsubscribe");
    if channel == "email" && !mentions_unsubscribe(body) && !html.is_some_and(mentions_unsubscribe) {
        warnings.push(
            json!({"code": "can_spam_unsubscribe_missing", "message": "Email has no unsubscribe link (CAN-SPAM)"}),
        );
    }
    Ok(warnings)
}

/// Checks 7–11 for a call or voice message.
pub fn check_call(provenance: &mut Provenance, record: bool) -> Result<Vec<Value>, (&'static str, ApiError)> {
    for check in ["content_filter", "dnc", "consent", "quiet_hours"] {
        provenance.skip(check, NOT_YET);
    }
    if record {
        provenance.skip("recording_consent", NOT_YET);
    }
    Ok(Vec::new())
}

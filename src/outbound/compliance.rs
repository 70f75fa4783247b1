//! Compliance on every outbound path (docs/tools.md#the-outbound-pipeline checks 7–11, docs/compliance.md), applied to every caller,
//! the super-admin included: content filter, do-not-contact, consent, quiet hours (voice; not in
//! demo mode) and recording consent (recorded calls), then the CAN-SPAM warning for email.
//! Each check is recorded in the provenance; the first refusal names its rule. A check that
//! cannot be evaluated refuses (P5); what they read of the recipient is read with the agent.

use commguard_domain::refusal::{Check, Rule};
use commguard_domain::values::Channel;
use commguard_domain::{calling_hours, content, recording};
use commguard_projections::contact::read::ContactState;
use serde_json::{json, Value};

use crate::directory::AgentView;
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store::Provenance;

/// What compliance needs to know about one outbound action.
pub struct Subject<'a> {
    /// `voice` for calls and voice messages.
    pub channel: Channel,
    pub to: &'a str,
    pub purpose: &'a str,
    /// Everything the content filter reads (body, subject, html text, greeting, spoken text).
    pub texts: Vec<&'a str>,
    /// Email only: the body and html the CAN-SPAM warning looks at.
    pub email: Option<(&'a str, Option<&'a str>)>,
    /// Voice only.
    pub voice: Option<Voice<'a>>,
}

pub struct Voice<'a> {
    pub recipient_timezone: Option<&'a str>,
    pub record: bool,
}

/// What passing compliance yields: warnings for the reply, and the quiet-hours evaluation.
#[derive(Default)]
pub struct Passed {
    pub warnings: Vec<Value>,
    pub zones: Option<Vec<String>>,
    pub local_time: Option<String>,
}

/// A compliance refusal at `check`, under `rule`.
fn blocked(check: Check, rule: Rule, message: impl Into<String>) -> ApiError {
    ApiError::new(ErrorCode::ComplianceBlocked, message).at(check).under(rule)
}

/// Checks 7–11 for `subject`, sent by `agent`, with `contact`: the recipient as the contact
/// projection holds it, read with the agent (`read::agent_org_and_contact`; recording consent
/// asked for when `subject` is a recorded call). A refusal names its check (`ApiError::at`).
pub fn check(
    app: &AppState,
    agent: &AgentView,
    subject: &Subject<'_>,
    state: &ContactState,
    provenance: &mut Provenance,
) -> Result<Passed, ApiError> {
    // 7: content.
    if let Some(violation) = content::screen(subject.texts.iter().copied()) {
        return Err(blocked(Check::ContentFilter, Rule::ContentFilter, violation.message()));
    }
    provenance.pass("content_filter");

    // 8–9: DNC and consent.
    let channel = subject.channel;
    if state.on_dnc {
        return Err(blocked(
            Check::Dnc,
            Rule::Dnc,
            format!("Compliance: {} is on the Do Not Contact list", subject.to),
        ));
    }
    provenance.pass("dnc");
    let no_consent = || {
        blocked(
            Check::Consent,
            Rule::ConsentRequired,
            format!(
                "Compliance: No active consent from {} for {}. Record consent before sending.",
                subject.to,
                channel.as_str()
            ),
        )
    };
    match state.consent {
        None => return Err(no_consent()),
        Some(kind) if !kind.permits(subject.purpose) => {
            return Err(no_consent().with("consentType", kind.as_str()));
        }
        Some(_) => provenance.pass("consent"),
    }

    let mut passed = Passed::default();
    if let Some(voice) = &subject.voice {
        // 10: quiet hours in the recipient's local time.
        if app.config.demo_mode {
            provenance.skip("quiet_hours", "demo mode");
        } else {
            let marketing = subject.purpose == "marketing";
            let decision = calling_hours::evaluate(subject.to, voice.recipient_timezone, marketing, app.clock.now())
                .map_err(|e| {
                    blocked(
                        Check::QuietHours,
                        Rule::QuietHours,
                        format!("Compliance: calling hours cannot be evaluated: {e}"),
                    )
                })?;
            if let Some(refusal) = decision.refusal {
                // The refusal's entry carries its message (added by the pipeline); the zones it
                // evaluated and the note (an ignored recipientTimezone) go in just before it.
                if let Some(note) = &decision.note {
                    provenance.pass_with("quiet_hours_zones", format!("{} ({note})", decision.zones.join(", ")));
                }
                let error = blocked(Check::QuietHours, Rule::QuietHours, refusal.message)
                    .with("zone", refusal.zone)
                    .with("localTime", refusal.local_time)
                    .with("window", refusal.window);
                return Err(error);
            }
            let detail = match &decision.note {
                Some(note) => format!("{} in {} ({note})", decision.window, decision.zones.join(", ")),
                None => format!("{} in {}", decision.window, decision.zones.join(", ")),
            };
            provenance.pass_with("quiet_hours", detail);
            passed.local_time = Some(decision.local_time);
            passed.zones = Some(decision.zones);
        }
        // 11: recording consent where every party must agree.
        if voice.record {
            let own_number = agent.address("phone");
            let jurisdiction = recording::all_party_jurisdiction(subject.to)
                .or_else(|| own_number.and_then(recording::all_party_jurisdiction));
            if let Some(jurisdiction) = jurisdiction {
                if state.recording_consent != Some(true) {
                    let message = format!(
                        "Compliance: Recording consent required: {jurisdiction} requires all-party consent to record calls."
                    );
                    return Err(blocked(Check::RecordingConsent, Rule::RecordingConsent, message));
                }
            }
            provenance.pass("recording_consent");
        }
    }

    // CAN-SPAM (docs/compliance.md#can-spam): a warning, never a refusal.
    if let Some((body, html)) = subject.email {
        let mentions_unsubscribe = |text: &str| text.to_lowercase().contains("unsubscribe");
        if !mentions_unsubscribe(body) && !html.is_some_and(mentions_unsubscribe) {
            passed.warnings.push(
                json!({"code": "can_spam_unsubscribe_missing", "message": "Email has no unsubscribe link (CAN-SPAM)"}),
            );
        }
    }
    Ok(passed)
}

/// The text of an HTML body, for the content filter: tags dropped, entities left as they are.
pub fn html_text(html: &str) -> String {
    let mut text = String::with_capacity(html.len());
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    text
}

//! The three outbound tools (docs/tools.md#catalogue): their inputs (step 3), their events and replies,
//! and the TwiML of calls. The checks themselves run in `super::run`.

use commguard_domain::agent::AgentEvent;
use commguard_domain::pii::{Pii, RetentionClass};
use commguard_domain::refusal::{Check, Refusal};
use commguard_domain::values::Channel;
use serde_json::{json, Value};
use uuid::Uuid;

use super::{compliance, run, Action};
use crate::auth::caller::Caller;
use crate::directory::AgentView;
use crate::error::{ApiError, ErrorCode};
use crate::providers::{Outgoing, Provider, Receipt};
use crate::state::AppState;
use crate::validate::{self, invalid, Args, MAX_STRING};

/// A validated `comms_send_message`.
struct Message {
    channel: Channel,
    to: String,
    body: String,
    subject: Option<String>,
    html: Option<String>,
    /// The text of `html`, for the content filter.
    html_text: Option<String>,
    purpose: String,
}

fn message_input(args: &Args<'_>) -> Result<Message, ApiError> {
    if args.0.get("templateId").is_some_and(|v| !v.is_null()) {
        // docs/tools.md#catalogue fixes the whole text (not the `Invalid input for "<field>": …` form).
        return Err(ApiError::new(ErrorCode::InvalidInput, "templateId is not supported").with("field", "templateId"));
    }
    let channel = match args.choice("channel", &["sms", "email", "whatsapp"], "sms")?.as_str() {
        // Refused at step 3 (input), whatever `unavailable` is refused at elsewhere (the provider).
        "whatsapp" => {
            return Err(ApiError::new(ErrorCode::Unavailable, "Channel \"whatsapp\" is not available").at(Check::Input))
        }
        "email" => Channel::Email,
        _ => Channel::Sms,
    };
    let raw_to = args.str("to", 1, 320)?;
    let to = if channel == Channel::Email { validate::email("to", &raw_to)? } else { validate::phone("to", &raw_to)? };
    let sms = channel == Channel::Sms;
    let body = args.str("body", if sms { 1 } else { 0 }, if sms { 1600 } else { 100_000 })?;
    let subject = args.opt_str("subject", 998)?;
    if channel == Channel::Email && subject.as_deref().is_none_or(|s| s.trim().is_empty()) {
        return Err(
            ApiError::new(ErrorCode::InvalidInput, "Subject is required for email channel").with("field", "subject")
        );
    }
    let html = args.opt_str("html", 500_000)?;
    let purpose = args.choice("purpose", &["marketing", "transactional"], "marketing")?;
    let html_text = html.as_deref().map(compliance::html_text);
    Ok(Message { channel, to, body, subject, html, html_text, purpose })
}

fn retained(text: &str, to: &str) -> Pii {
    Pii::subject_retained(text.to_string(), to.to_string(), RetentionClass::Messages)
}

fn rule(refusal: &Refusal) -> Option<String> {
    refusal.rule.map(|r| r.as_str().into())
}

fn limit_type(refusal: &Refusal) -> Option<String> {
    refusal.limit.map(|l| l.as_str().into())
}

impl Action for Message {
    fn channel(&self) -> Channel {
        self.channel
    }

    fn to(&self) -> &str {
        &self.to
    }

    fn id_field(&self) -> &'static str {
        "messageId"
    }

    fn outgoing<'a>(&'a self, from: Option<&'a str>, _: Option<&'a str>, callback: Option<&'a str>) -> Outgoing<'a> {
        Outgoing {
            channel: self.channel,
            to: &self.to,
            from,
            subject: self.subject.as_deref(),
            body: Some(&self.body),
            html: self.html.as_deref(),
            twiml: None,
            status_callback: callback,
            record: false,
        }
    }

    fn subject(&self) -> compliance::Subject<'_> {
        let mut texts = vec![self.body.as_str()];
        texts.extend(self.subject.as_deref());
        texts.extend(self.html_text.as_deref());
        compliance::Subject {
            channel: self.channel,
            to: &self.to,
            purpose: &self.purpose,
            texts,
            email: (self.channel == Channel::Email).then_some((self.body.as_str(), self.html.as_deref())),
            voice: None,
        }
    }

    fn blocked(&self, id: Uuid, refusal: &Refusal) -> AgentEvent {
        AgentEvent::MessageBlocked {
            message_id: id,
            channel: self.channel.as_str().into(),
            purpose: self.purpose.clone(),
            to: Pii::subject(self.to.clone()),
            body: retained(&self.body, &self.to),
            refused_by: refusal.check.as_str().into(),
            code: refusal.code.as_str().into(),
            rule: rule(refusal),
            limit_type: limit_type(refusal),
            reason: refusal.reason.clone(),
        }
    }

    fn failed(&self, id: Uuid, provider: &str, _code: ErrorCode, error: &str) -> AgentEvent {
        AgentEvent::MessageFailed {
            message_id: id,
            channel: self.channel.as_str().into(),
            to: Pii::subject(self.to.clone()),
            provider: provider.into(),
            error: error.into(),
        }
    }

    fn sent(
        &self,
        id: Uuid,
        from: Option<String>,
        provider: Provider,
        receipt: &Receipt,
        passed: &compliance::Passed,
    ) -> AgentEvent {
        AgentEvent::MessageSent {
            message_id: id,
            channel: self.channel.as_str().into(),
            purpose: self.purpose.clone(),
            to: Pii::subject(self.to.clone()),
            from,
            subject: self.subject.as_deref().map(|s| retained(s, &self.to)),
            body: retained(&self.body, &self.to),
            html: self.html.as_deref().map(|h| retained(h, &self.to)),
            provider: provider.name().into(),
            external_id: receipt.external_id.clone(),
            status: receipt.status.clone(),
            cost: receipt.cost,
            warnings: passed.warnings.clone(),
        }
    }

    fn reply(&self, id: Uuid, from: Option<String>, receipt: &Receipt, sandbox: bool, warnings: Vec<Value>) -> Value {
        let mut reply = json!({
            "success": true,
            "messageId": id,
            "externalId": receipt.external_id,
            "status": receipt.status,
            "cost": crate::money::to_dollars(receipt.cost),
            "channel": self.channel,
            "from": from,
            "to": self.to,
            "sandbox": sandbox,
            "warnings": warnings,
        });
        if let Some(subject) = &self.subject {
            reply["subject"] = json!(subject);
        }
        reply
    }
}

/// `comms_send_message`.
pub async fn send_message(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    run(app, caller, args, message_input).await
}

/// A validated `comms_make_call` (`kind` call) or `comms_send_voice_message` (`voice_message`).
struct Call {
    kind: &'static str,
    to: String,
    /// The greeting of a call, the text of a voice message.
    text: String,
    greeting_given: bool,
    system_prompt: Option<String>,
    recipient_timezone: Option<String>,
    record: bool,
    purpose: String,
}

fn voice_options(args: &Args<'_>) -> Result<(), ApiError> {
    if let Some(voice) = args.opt_str("voice", 64)? {
        if voice.is_empty() || !voice.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(invalid("voice", "must match ^[A-Za-z0-9._-]{1,64}$"));
        }
    }
    if let Some(language) = args.opt_str("language", 35)? {
        let ok = language
            .split('-')
            .all(|part| !part.is_empty() && part.len() <= 8 && part.bytes().all(|b| b.is_ascii_alphanumeric()));
        if !ok {
            return Err(invalid("language", "must be a BCP 47 language tag"));
        }
    }
    Ok(())
}

fn call_input(args: &Args<'_>) -> Result<Call, ApiError> {
    let to = validate::phone("to", &args.str("to", 1, 32)?)?;
    let greeting = args.opt_str("greeting", 1000)?;
    let system_prompt = args.opt_str("systemPrompt", MAX_STRING)?;
    voice_options(args)?;
    let recipient_timezone = args.opt_str("recipientTimezone", 64)?;
    Ok(Call {
        recipient_timezone,
        kind: "call",
        to,
        greeting_given: greeting.is_some(),
        text: greeting.unwrap_or_default(),
        system_prompt,
        record: args.bool("record", false)?,
        purpose: args.choice("purpose", &["marketing", "transactional"], "marketing")?,
    })
}

fn voice_message_input(args: &Args<'_>) -> Result<Call, ApiError> {
    let to = validate::phone("to", &args.str("to", 1, 32)?)?;
    let text = args.str("text", 1, 3000)?;
    voice_options(args)?;
    Ok(Call {
        kind: "voice_message",
        to,
        text,
        greeting_given: true,
        system_prompt: None,
        recipient_timezone: None,
        record: false,
        purpose: args.choice("purpose", &["marketing", "transactional"], "marketing")?,
    })
}

/// Escapes text and attribute values for XML (docs/tools.md#catalogue: TwiML values are escaped).
pub fn xml_escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out
}

impl Call {
    fn spoken(&self, app: &AppState, agent: &AgentView) -> String {
        let text =
            if self.greeting_given { self.text.clone() } else { format!("Hello, this is {}.", agent.display_name) };
        if app.config.voice_ai_disclosure {
            format!("{}{text}", app.config.voice_ai_disclosure_text)
        } else {
            text
        }
    }
}

impl Action for Call {
    fn channel(&self) -> Channel {
        Channel::Voice
    }

    fn to(&self) -> &str {
        &self.to
    }

    fn id_field(&self) -> &'static str {
        "callId"
    }

    fn outgoing<'a>(
        &'a self,
        from: Option<&'a str>,
        twiml: Option<&'a str>,
        callback: Option<&'a str>,
    ) -> Outgoing<'a> {
        Outgoing {
            channel: Channel::Voice,
            to: &self.to,
            from,
            subject: None,
            body: None,
            html: None,
            twiml,
            status_callback: callback,
            record: self.record,
        }
    }

    fn subject(&self) -> compliance::Subject<'_> {
        // docs/tools.md#catalogue: the filter reads a call's greeting (not its systemPrompt), a voice message's text.
        compliance::Subject {
            channel: Channel::Voice,
            to: &self.to,
            purpose: &self.purpose,
            texts: vec![self.text.as_str()],
            email: None,
            voice: Some(compliance::Voice {
                recipient_timezone: self.recipient_timezone.as_deref(),
                record: self.record,
            }),
        }
    }

    fn blocked(&self, id: Uuid, refusal: &Refusal) -> AgentEvent {
        AgentEvent::CallBlocked {
            call_id: id,
            kind: self.kind.into(),
            to: Pii::subject(self.to.clone()),
            refused_by: refusal.check.as_str().into(),
            code: refusal.code.as_str().into(),
            rule: rule(refusal),
            limit_type: limit_type(refusal),
            reason: refusal.reason.clone(),
        }
    }

    fn failed(&self, id: Uuid, provider: &str, code: ErrorCode, error: &str) -> AgentEvent {
        AgentEvent::CallFailed {
            call_id: id,
            kind: self.kind.into(),
            to: Pii::subject(self.to.clone()),
            provider: provider.into(),
            error: error.into(),
            code: code.as_str().into(),
            reason: error.into(),
        }
    }

    fn sent(
        &self,
        id: Uuid,
        from: Option<String>,
        provider: Provider,
        receipt: &Receipt,
        passed: &compliance::Passed,
    ) -> AgentEvent {
        AgentEvent::CallPlaced {
            call_id: id,
            kind: self.kind.into(),
            to: Pii::subject(self.to.clone()),
            from,
            text: (!self.text.is_empty()).then(|| retained(&self.text, &self.to)),
            system_prompt: self.system_prompt.as_deref().map(|p| retained(p, &self.to)),
            record: self.record,
            purpose: self.purpose.clone(),
            provider: provider.name().into(),
            external_id: receipt.external_id.clone(),
            cost: receipt.cost,
            zones: passed.zones.clone(),
            local_time: passed.local_time.clone(),
        }
    }

    fn reply(&self, id: Uuid, from: Option<String>, receipt: &Receipt, sandbox: bool, _: Vec<Value>) -> Value {
        if self.kind == "call" {
            json!({"success": true, "callId": id, "sessionId": id, "callSid": receipt.external_id, "status": receipt.status,
                   "from": from, "to": self.to, "recorded": self.record, "sandbox": sandbox})
        } else {
            json!({"success": true, "callId": id, "callSid": receipt.external_id, "status": receipt.status,
                   "from": from, "to": self.to, "characters": self.text.chars().count(), "sandbox": sandbox})
        }
    }

    fn twiml(&self, app: &AppState, agent: &AgentView, id: Uuid) -> Option<String> {
        let mut twiml = String::from("<Response>");
        if self.record {
            twiml.push_str(&format!("<Say>{}</Say>", xml_escape(&app.config.recording_announcement_text)));
        }
        twiml.push_str(&format!("<Say>{}</Say>", xml_escape(&self.spoken(app, agent))));
        if self.kind == "call" {
            if let Some(relay) = &app.config.voice_relay_url {
                let url = format!("{relay}?agentId={}&callId={id}", agent.agent_id);
                twiml.push_str(&format!("<Connect><ConversationRelay url=\"{}\"/></Connect>", xml_escape(&url)));
            }
        }
        twiml.push_str("</Response>");
        Some(twiml)
    }
}

/// `comms_make_call`.
pub async fn make_call(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    run(app, caller, args, call_input).await
}

/// `comms_send_voice_message`.
pub async fn send_voice_message(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    run(app, caller, args, voice_message_input).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn twiml_values_are_escaped() {
        assert_eq!(xml_escape("Tom & <Jerry> \"hi\" 'x'"), "Tom &amp; &lt;Jerry&gt; &quot;hi&quot; &apos;x&apos;");
    }
}

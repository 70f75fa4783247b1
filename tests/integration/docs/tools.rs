//! The generator of `docs/tools.md`: the tool catalogue rendered from the tool table as the
//! server lists it (`tools::list` per role: name, description, input schema), with each tool's
//! reply and refusals from the hand-written `NOTES` below. The table is read only through
//! `tools::list`, so the generator does not depend on how the table is built.

use std::collections::BTreeSet;

use commguard::auth::Role;
use commguard::mcp::tools;
use serde_json::Value;

/// What a tool answers and what it may refuse, beyond what every tool may refuse
/// (docs/tools.md#common-rules). One row per tool, in any order; a tool without a row, or a row
/// without a tool, fails the docs test.
pub const NOTES: &[(&str, &str, &str)] = &[
    (
        "comms_ping",
        "`{status:\"ok\", server:\"commguard\", version, echo, principal:{kind,id,orgId}, org:{id,mode}, \
         pool:{maxAgents,activeAgents,slotsRemaining}, providers:{telephony,email,database}}`; `echo` repeats \
         `message`.",
        "Only the common refusals.",
    ),
    (
        "comms_create_organization",
        "`{success, orgId, name, slug, mode:\"sandbox\", adminToken, message}`; the org token is shown this \
         once. Events: `OrganizationCreated`, `OrgTokenIssued`.",
        "`conflict` when the slug is taken (`Organization slug \"<slug>\" already exists`).",
    ),
    (
        "comms_list_organizations",
        "`{organizations:[{id,name,slug,mode,a2pRegistered,settings,created_at,updated_at,agentCount}], total}`.",
        "Only the common refusals.",
    ),
    (
        "comms_provision_channels",
        "`{success, agentId, orgId, displayName, agentGender, securityToken, channels:{phone,whatsapp,email,voiceAi}, \
         mode, sandbox, pool:{slotsRemaining}, warnings}`; `securityToken` (64 hex) is shown this once. A sandbox org gets a \
         mock number `+1555…`; `whatsapp` reads `\"unavailable\"`. Events: `AgentProvisioned`, `AgentTokenIssued`.",
        "Checked in this order: role; input; a suspended org (`compliance_blocked`, rule `sandbox`); country rules \
         (`compliance_blocked`, rule `country_rules`, with `blockers` and `warnings`, see \
         [country rules](compliance.md#country-rules)); an existing id (`conflict`); a full pool (`quota_exceeded` with \
         `current`, `max`); buying the number (`provider_error`). Provenance names them `role`, `input`, `org_state`, \
         `country_rules`, `duplicate`, `capacity`, `provider`; a refusal's `ActionRefused` lists those before it as passed.",
    ),
    (
        "comms_deprovision_channels",
        "`{success, agentId, status:\"deprovisioned\", numberReleased, tokensRevoked, warnings?}`; the agent's \
         tokens are revoked and its sessions closed. A number that could not be released is a warning. Events: \
         `AgentDeprovisioned`, `AgentTokenRevoked`.",
        "`conflict` when the agent is already deprovisioned; org boundary (`not_found`, `forbidden`).",
    ),
    (
        "comms_get_channel_status",
        "`{agentId, orgId, displayName, status, provisionedAt, channels, blockedChannels, mode, pool}`.",
        "Org boundary (`not_found`, `forbidden`).",
    ),
    (
        "comms_rotate_token",
        "`{success, token, tokenId, revokedCount, target:{kind,id}}`. Every active token of the target is revoked \
         and one is issued; sessions opened with a revoked token close right after the reply is delivered, the \
         caller's own included. An agent token rotates its own agent; an org token its org or its agents. Events: \
         `AgentTokenRevoked`/`OrgTokenRevoked`, `AgentTokenIssued`/`OrgTokenIssued`.",
        "`forbidden` for a target outside the caller's reach.",
    ),
    (
        "comms_send_message",
        "`{success, messageId, externalId, status, cost, channel, from, to, subject?, sandbox, warnings}`. An email \
         without the word `unsubscribe` goes out with the warning `can_spam_unsubscribe_missing`. Event: \
         `MessageSent` (or `MessageBlocked`, `MessageFailed`).",
        "Every step of the outbound pipeline ([the outbound pipeline](#the-outbound-pipeline)). Also `invalid_input` for a body \
         over 1,600 characters (SMS) or 100,000 (email), an email without `subject`, and `templateId`; `unavailable` for the `whatsapp` channel.",
    ),
    (
        "comms_make_call",
        "`{success, callId, sessionId, callSid, status, from, to, recorded, sandbox}`. The call speaks the AI \
         disclosure and the greeting (default `Hello, this is <displayName>.`), preceded by the recording \
         announcement when `record` is true. Event: `CallPlaced` (or `CallBlocked`, `CallFailed`).",
        "Every step of the outbound pipeline on the `voice` channel; quiet hours and, with `record:true`, recording \
         consent ([recording consent](compliance.md#recording-consent)).",
    ),
    (
        "comms_send_voice_message",
        "`{success, callId, callSid, status, from, to, characters, sandbox}`; the provider speaks the disclosure \
         and `text`. Event: `CallPlaced` (kind `voice_message`), or `CallBlocked`, `CallFailed`.",
        "Every step of the outbound pipeline on the `voice` channel, quiet hours included.",
    ),
    (
        "comms_record_consent",
        "`{success, consentId, status:\"granted\", warnings}`; a contact on the DNC list gives the warning `on_dnc`. \
         Granting again reuses the record and clears its revocation. Event: `ConsentGranted`.",
        "`invalid_input` when the address does not suit the channel (an email for `email`, E.164 otherwise); \
         `conflict` for an inactive agent; org boundary.",
    ),
    (
        "comms_revoke_consent",
        "`{success, status:\"revoked\"}`, or `{success, message:\"No active consent found to revoke\"}`. Event: \
         `ConsentRevoked` (with `wasActive`).",
        "Org boundary.",
    ),
    (
        "comms_check_consent",
        "`{hasConsent, status:\"granted\"|\"revoked\", consentType, grantedAt, revokedAt, source, onDnc}`, or \
         `{hasConsent:false, status:\"none\", onDnc, message}` when there is no record. A read: no event.",
        "Org boundary.",
    ),
    (
        "comms_set_agent_limits",
        "`{success, agentId, currentLimits, overrides, tier}`: `currentLimits` are the five effective limits. An \
         omitted limit is unchanged, `null` removes the override. Event: `LimitsChanged`.",
        "`invalid_input` for 0 or negative action counts and negative spend.",
    ),
    (
        "comms_get_usage_dashboard",
        "For one agent: `{agentId, period, actions:{sms,email,voice_call,voice_message}, totalActions, \
         costsByChannel, totalCost, currentUsage:{actionsToday,actionsLimit,spendToday,spendDayLimit,spendMonth,\
         spendMonthLimit}, limits}` (the agent named, the agent token's, or the session's claim). Without an \
         agent (org token, or the super-admin with or without `orgId`): \
         `{period, orgId?, globalTotals:{totalActions,totalCost}, agents}`. `today` starts at 00:00 UTC, `week` is \
         the last 168 hours, `month` starts on the 1st (UTC).",
        "Org boundary; `forbidden` for another org's `orgId`.",
    ),
    (
        "comms_set_billing_config",
        "`{success, agentId, billingConfig:{tier,markupPercent,billingEmail}, tierLimits, effectiveLimits, \
         availableTiers}`. A `null` markup falls back to `BILLING_MARKUP_PERCENT`; 0 means no markup. Event: \
         `BillingConfigChanged`.",
        "`invalid_input` for an unknown tier or a markup outside 0–500.",
    ),
    (
        "comms_get_billing_summary",
        "For one agent (named, the agent token's, or the session's claim): `{agentId, period, providerCost, \
         billingCost, markupPercent, byChannel, tier, billingConfig:{tier,markupPercent,billingEmail}}`; otherwise `{period, globalMarkupPercent, totals:{providerCost,billingCost,revenue}, \
         agents}`. Billed cost = provider cost × (1 + markup/100), rounded half away from zero to 4 decimals.",
        "Org boundary.",
    ),
    (
        "comms_register_provider",
        "`{success, provider, orgId, verified, keysStored, keyVersion}`: key names only, never values. Twilio takes \
         `accountSid`, `authToken`; Resend `apiKey` and optionally `webhookSecret`. Without `orgId` the credentials \
         are the platform's. They are stored encrypted ([privacy](privacy.md#provider-credentials)) and used from the \
         next send on. Event: `ProviderRegistered`.",
        "`provider_error` when verification against the provider's fixed host fails \
         (`Verification failed for <provider>: …`); `invalid_input` for a missing or multi-line value.",
    ),
    (
        "comms_dnc_add",
        "`{success, entryId, address, type:\"phone\"|\"email\", orgId, alreadyListed}`; adding a listed address \
         again changes nothing, except that a listing made while only an inbound STOP lists the address is added \
         beside the STOP's entry (its `entryId` is the new entry), so a later START, which removes only STOP's \
         entries, leaves the address listed. Event: `DncAdded` (source `agent` or `admin`).",
        "`invalid_input` for an address that is neither E.164 nor an email, or without `orgId` from the \
         super-admin; `forbidden` for another org.",
    ),
    (
        "comms_dnc_remove",
        "`{success, removed}`: every entry for the address in the org. Event: `DncRemoved`.",
        "`invalid_input` for a reason shorter than 3 characters; `forbidden` for another org.",
    ),
    (
        "comms_dnc_list",
        "`{entries:[{entryId, address, type, source, reason, addedBy, addedAt}], nextCursor}`; `address` reads \
         `[erased]` after an erasure; `source` is `stop_keyword`, `admin`, `agent` or `complaint`. Paged like \
         the admin lists ([paging](admin-api.md#paging)).",
        "`invalid_input` for a bad cursor or limit; `forbidden` for another org.",
    ),
    (
        "comms_erase_subject",
        "`{success, subjectRef, scope:\"org\"|\"all\", orgIds, keysDestroyed, projectionRowsPurged, \
         dncSuppressionsKept, erasedAt}`. Idempotent. An org token erases in its org; the super-admin in `orgId`, \
         or everywhere without it ([erasure](privacy.md#erasure)). Event: `SubjectErased`.",
        "`invalid_input` for an identifier that is neither a phone number nor an email; `forbidden` for another org.",
    ),
];

/// Who may call: the roles whose `tools/list` shows the tool.
fn roles(name: &str) -> &'static str {
    let listed = |role| tools::list(role).iter().any(|t| t["name"] == name);
    if listed(Role::Agent) {
        "agent, org, super-admin"
    } else if listed(Role::Org) {
        "org, super-admin"
    } else {
        "super-admin"
    }
}

/// The markdown between the generated-part markers of docs/tools.md.
pub fn render() -> String {
    let all = tools::list(Role::SuperAdmin);
    let names: BTreeSet<&str> = all.iter().filter_map(|t| t["name"].as_str()).collect();
    let noted: BTreeSet<&str> = NOTES.iter().map(|(n, _, _)| *n).collect();
    assert_eq!(names, noted, "every tool has one NOTES row in tests/integration/docs/tools.rs, and no other row");

    let mut out = String::new();
    out.push_str("## Catalogue\n\n| Tool | Callers | What it does |\n|---|---|---|\n");
    for tool in &all {
        let name = tool["name"].as_str().unwrap_or_default();
        out.push_str(&format!(
            "| [`{name}`](#{name}) | {} | {} |\n",
            roles(name),
            cell(tool["description"].as_str().unwrap_or_default())
        ));
    }
    for tool in &all {
        let name = tool["name"].as_str().unwrap_or_default();
        let (_, reply, refusals) = NOTES.iter().find(|(n, _, _)| *n == name).expect("checked above");
        out.push_str(&format!("\n### `{name}`\n\n{}\n\n", tool["description"].as_str().unwrap_or_default()));
        out.push_str(&format!("Callers: {}.\n\n", roles(name)));
        out.push_str(&arguments(&tool["inputSchema"]));
        out.push_str(&format!("\n**Reply.** {reply}\n\n**Refusals.** {refusals}\n"));
    }
    out
}

/// The argument table of one input schema; nested objects are flattened to `outer.inner`.
fn arguments(schema: &Value) -> String {
    let mut rows = Vec::new();
    collect(schema, "", &mut rows);
    if rows.is_empty() {
        return "No arguments.\n".into();
    }
    let mut out = String::from("| Argument | Type | Required | Default | Rules |\n|---|---|---|---|---|\n");
    for row in rows {
        out.push_str(&row);
    }
    out
}

fn collect(schema: &Value, prefix: &str, rows: &mut Vec<String>) {
    let Some(properties) = schema["properties"].as_object() else { return };
    let required: Vec<&str> =
        schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
    // Required arguments first, then the rest; each group in name order.
    let mut names: Vec<&String> = properties.keys().collect();
    names.sort_by_key(|name| (!required.contains(&name.as_str()), name.as_str()));
    for name in names {
        let property = &properties[name];
        let path = format!("{prefix}{name}");
        let default = match &property["default"] {
            Value::Null => String::new(),
            value => format!("`{value}`"),
        };
        rows.push(format!(
            "| `{path}` | {} | {} | {default} | {} |\n",
            type_of(property),
            if required.contains(&name.as_str()) { "yes" } else { "" },
            cell(&rules(property)),
        ));
        if property["properties"].as_object().is_some_and(|p| !p.is_empty()) {
            collect(property, &format!("{path}."), rows);
        }
    }
}

fn type_of(property: &Value) -> String {
    match &property["type"] {
        Value::String(t) => t.clone(),
        Value::Array(types) => types.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" or "),
        _ => "any".into(),
    }
}

fn rules(property: &Value) -> String {
    let mut parts = Vec::new();
    if let Some(values) = property["enum"].as_array() {
        let values: Vec<String> = values.iter().map(|v| format!("`{}`", v.as_str().unwrap_or_default())).collect();
        parts.push(format!("one of {}", values.join(", ")));
    }
    match (property["minLength"].as_u64(), property["maxLength"].as_u64()) {
        (Some(min), Some(max)) => parts.push(format!("{min}–{max} characters")),
        (None, Some(max)) => parts.push(format!("at most {max} characters")),
        (Some(min), None) => parts.push(format!("at least {min} characters")),
        (None, None) => {}
    }
    match (&property["minimum"], &property["maximum"]) {
        (Value::Number(min), Value::Number(max)) => parts.push(format!("{min}–{max}")),
        (Value::Number(min), _) => parts.push(format!("≥ {min}")),
        (_, Value::Number(max)) => parts.push(format!("≤ {max}")),
        _ => {}
    }
    if let Some(pattern) = property["pattern"].as_str() {
        parts.push(format!("matches `{pattern}`"));
    }
    if let Some(description) = property["description"].as_str() {
        parts.push(description.to_string());
    }
    parts.join("; ")
}

/// Text safe inside a table cell.
fn cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

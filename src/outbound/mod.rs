//! The outbound pipeline (docs/tools.md#the-outbound-pipeline), in the order it runs, in one place:
//! identity → guards → input → agent and org state → compliance → limits → provider → record.
//! Refusals before the agent is known are `ActionRefused` (recorded by the tool layer); from the
//! agent's state on they are `MessageBlocked` / `CallBlocked`, a provider failure is
//! `MessageFailed` / `CallFailed`, and a send is `MessageSent` / `CallPlaced` — each with the
//! checks that ran, in order. `actions` holds the three tools' inputs, events and replies.
//! Steps 5–6 and the choice of step 13's provider are the domain's pure decision
//! (`commguard_domain::send::decide`); this module does the IO around it. Every refusal is a typed
//! `Refusal` (check, code, rule, limit) from where it is decided to its event and reply.

pub mod compliance;

pub mod usage;

use commguard_domain::agent::AgentEvent;
use commguard_domain::refusal::{Check, Refusal};
use commguard_domain::send;
use commguard_domain::values::{Address, Channel};
use serde_json::Value;
use uuid::Uuid;

use commguard_projections::contact::read::ContactState;
use commguard_projections::directory::read::OrgTerms;

use crate::auth::caller::Caller;
use crate::auth::{guard, Principal, Role};
use crate::directory::{self, AgentView};
use crate::error::{ApiError, ErrorCode};
use crate::ledger::intents;
use crate::ledger::reservations::{self, Contact, Limits, OrgCaps};
use crate::providers::credentials;
use crate::providers::{self as provider, Outgoing, Provider, Receipt};
use crate::state::AppState;
use crate::store::CommandContext;
use crate::validate::Args;

pub mod actions;

pub use actions::{make_call, send_message, send_voice_message};

/// The pipeline's checks before the agent's state (docs/tools.md#the-outbound-pipeline, 1–4), in
/// order, each run by `run`, whose refusals there are marked with their check: such a refusal is
/// an `ActionRefused`, which lists the ones before it as passed (`mcp::tools::Tool::checks`).
pub const BEFORE_THE_AGENT: &[Check] = &[Check::AgentResolve, Check::Role, Check::Input, Check::OrgBoundary];

/// One kind of outbound action: how it is checked, sent and recorded. The pipeline (`run`) is
/// the same for all of them.
trait Action: Send + Sync + 'static {
    /// The channel the agent's state and blocks are checked on.
    fn channel(&self) -> Channel;
    fn to(&self) -> &str;
    /// The reply's name for the action's id: `messageId` or `callId`.
    fn id_field(&self) -> &'static str;
    /// What compliance (checks 7–11) reads.
    fn subject(&self) -> compliance::Subject<'_>;
    /// The blocked event of `refusal`, whose reason no longer names the recipient.
    fn blocked(&self, id: Uuid, refusal: &Refusal) -> AgentEvent;
    /// `provider` is the provider's name, `none` when none is configured; `code` is what the
    /// caller is answered (a call's failure records it, CONTRACT §11.3; a message's does not).
    fn failed(&self, id: Uuid, provider: &str, code: ErrorCode, error: &str) -> AgentEvent;
    fn sent(
        &self,
        id: Uuid,
        from: Option<String>,
        provider: Provider,
        receipt: &Receipt,
        passed: &compliance::Passed,
    ) -> AgentEvent;
    fn reply(&self, id: Uuid, from: Option<String>, receipt: &Receipt, sandbox: bool, warnings: Vec<Value>) -> Value;
    /// What the provider is given.
    fn outgoing<'a>(&'a self, from: Option<&'a str>, twiml: Option<&'a str>, callback: Option<&'a str>)
        -> Outgoing<'a>;
    /// TwiML for calls, handed to the provider.
    fn twiml(&self, _app: &AppState, _agent: &directory::AgentView, _id: Uuid) -> Option<String> {
        None
    }
}

/// The docs/tools.md#the-outbound-pipeline pipeline for `action`, parsed from `args` by `input` (step 3).
async fn run<A: Action>(
    app: &AppState,
    caller: &Caller<'_>,
    args: &Args<'_>,
    input: impl FnOnce(&Args<'_>) -> Result<A, ApiError>,
) -> Result<Value, ApiError> {
    // 1–2: the agent, and Z1. A refusal at 1–4 is recorded by the tool layer as `ActionRefused`,
    // with the checks before it passed (`BEFORE_THE_AGENT`): each is marked with its check here.
    let agent_id = caller.agent_id(args, false).map_err(|e| e.at(Check::AgentResolve))?;
    crate::auth::guard::own_agent(caller.principal, &agent_id).map_err(|e| e.at(Check::Role))?;
    let mut context = caller.context_checked(&app.clock, &["agent_resolve", "role"]);
    // 3: input.
    let action = input(args).map_err(|e| e.at(Check::Input))?;
    context.provenance.pass("input");
    // 4: org boundary (Z2). The agent, its org (checked at steps 5–6) and the recipient as
    // compliance sees it (steps 8, 9 and 11) come from one statement.
    let subject = action.subject();
    let (agent, org, contact_state) =
        agent_for_send(app, caller.principal, &agent_id, &subject).await.map_err(|e| e.at(Check::OrgBoundary))?;
    context.provenance.pass("org_boundary");
    let mut context = context.in_org(agent.org_id.clone());

    let id = Uuid::new_v4();
    let channel = action.channel();
    // 5–6: the agent's state and channel, the org's state (Z6), and where the action will go —
    // decided by `send::decide` on what the directory shows.
    let org = org.ok_or_else(|| {
        ApiError::not_found(format!("Organization \"{}\" not found", agent.org_id)).at(Check::OrgState)
    })?;
    let route = match send::decide(&send_state(app, &agent, &org, channel)) {
        Ok(route) => route,
        Err(refusal) => {
            if refusal.check == Check::OrgState {
                context.provenance.pass("agent_state");
            }
            return Err(block(app, context, &agent_id, id, &action, refusal.into()).await);
        }
    };
    context.provenance.pass("agent_state");
    context.provenance.pass("org_state");
    // 7–11: compliance (applies to the super-admin too).
    let passed = match compliance::check(app, &agent, &subject, &contact_state, &mut context.provenance) {
        Ok(passed) => passed,
        Err(refusal) => return Err(block(app, context, &agent_id, id, &action, refusal).await),
    };
    // 12: limits — a reservation; the super-admin and demo are counted, never refused.
    let unlimited = caller.principal.role() == Role::SuperAdmin || app.config.demo_mode;
    let limits = if unlimited { reservations::unlimited() } else { limits_of(&agent, &app.config) };
    let caps = if unlimited {
        OrgCaps::default()
    } else {
        OrgCaps { spend_day: org.max_spend_per_day, spend_month: org.max_spend_per_month }
    };
    let contact = (channel == Channel::Voice).then(|| Contact {
        reference: app.store.keystore().data_keys().blind_index(action.to()),
        max_per_day: (!unlimited).then_some(i64::from(app.config.default_max_calls_per_day_same_number)),
    });
    let estimate = provider::estimated_cost(channel);
    // Step 13's provider is chosen now (it is used only once the limits pass), so the intent
    // stored with the reservation can say what will have happened if nobody completes it.
    let credentials = match route.wants_credentials() {
        Some(kind) => {
            credentials::resolve(&app.pool, &app.credential_keys, &app.config, &org.org_id, provider_of(kind).name())
                .await?
        }
        None => None,
    };
    let chosen = route.provider(credentials.is_some()).map(|kind| (provider_of(kind), credentials.unwrap_or_default()));
    let from = agent.channels.get(channel.address().key()).and_then(Value::as_str).map(str::to_string);
    let twiml = action.twiml(app, &agent, id);
    let callback = (channel == Channel::Voice).then(|| {
        format!("{}/webhooks/{}/call-status", app.config.webhook_base_url.trim_end_matches('/'), agent.agent_id)
    });
    // The mock reaches nobody and answers at once: its answer is known before anything is
    // reserved, so a send it takes is reserved and recorded by one statement, with no intent
    // (`reservations::record_reserved`). One it refuses (its test hooks) goes the usual way.
    let mocked = match &chosen {
        Ok((provider @ Provider::Mock, credentials)) => {
            let outgoing = action.outgoing(from.as_deref(), twiml.as_deref(), callback.as_deref());
            provider.send(&app.http, &app.config, credentials, &outgoing).await.ok()
        }
        _ => None,
    };
    let fallback = match mocked {
        Some(_) => None,
        None => Some({
            let mut fallback_context = context.clone();
            limits_passed(&mut fallback_context.provenance, unlimited);
            let event = match &chosen {
                Ok((provider, _)) => {
                    fallback_context
                        .provenance
                        .pass_with("provider", "unconfirmed: the outcome of the provider call was never recorded");
                    let unconfirmed =
                        Receipt { external_id: String::new(), status: "unconfirmed".into(), cost: estimate };
                    action.sent(id, from.clone(), *provider, &unconfirmed, &passed)
                }
                Err(failure) => {
                    fallback_context.provenance.fail(failure.check.as_str(), failure.reason.clone());
                    action.failed(id, "none", failure.code, &failure.reason)
                }
            };
            app.intents.seal(id, &agent.org_id, action.to(), event, &fallback_context).await?
        }),
    };
    // From the reservation on, the action may reach a person, so it is finished in a task of its
    // own: the caller's future is dropped when its client hangs up (streamable HTTP runs the tool in
    // the request's handler), and a send cut off between its reservation and its event would stay
    // unrecorded, its quota held, for as long as this instance lives (a reconciler settles only
    // the intents of instances that stopped).
    let performance = |app| Performance {
        app,
        agent_id,
        agent,
        action,
        context,
        id,
        unlimited,
        limits,
        caps,
        contact,
        estimate,
        chosen,
        from,
        twiml,
        callback,
        passed,
        sandbox: route.sandbox(),
        mocked,
        fallback,
    };
    app.to_the_end(|app| perform(performance(app))).await
}

/// The agent `agent_id` if the caller may address it (Z1, Z2), its org (`None` if missing), and
/// the recipient of `subject` as compliance reads it in the agent's org: one statement
/// (`read::agent_org_and_contact`), one round trip per send before its reservation.
async fn agent_for_send(
    app: &AppState,
    principal: &Principal,
    agent_id: &str,
    subject: &compliance::Subject<'_>,
) -> Result<(AgentView, Option<OrgTerms>, ContactState), ApiError> {
    guard::own_agent(principal, agent_id)?;
    let (agent, org, contact) = read_for_send(app, agent_id, subject)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("Agent \"{agent_id}\" not found")))?;
    guard::agent_in_org(principal, agent_id, &agent.org_id)?;
    Ok((agent, org, contact))
}

/// The agent, its org and the recipient of `subject` as compliance reads them: one statement
/// (`read::agent_org_and_contact`), shared with the other sends' reads queued meanwhile
/// (`ledger::reads`). `None`: no such agent.
async fn read_for_send(
    app: &AppState,
    agent_id: &str,
    subject: &compliance::Subject<'_>,
) -> Result<Option<(AgentView, Option<OrgTerms>, ContactState)>, ApiError> {
    let subject_ref = app.store.keystore().data_keys().blind_index(subject.to);
    let recording = subject.voice.as_ref().is_some_and(|voice| voice.record);
    app.send_reads.read(agent_id, subject_ref, subject.channel.as_str(), recording).await
}

/// Compliance (checks 7–11) again for `action`, with the recipient as the contact projection holds
/// it now: `Err` is the refusal, or `unavailable` if it cannot be read.
async fn recheck<A: Action>(app: &AppState, agent: &AgentView, action: &A) -> Result<(), ApiError> {
    let subject = action.subject();
    let Some((_, _, contact)) = read_for_send(app, &agent.agent_id, &subject).await? else {
        return Err(ApiError::new(ErrorCode::Unavailable, "The agent could not be read again"));
    };
    let mut scratch = crate::store::Provenance::default();
    compliance::check(app, agent, &subject, &contact, &mut scratch).map(|_| ())
}

/// What the second half of the pipeline needs, owned by its task.
struct Performance<A> {
    app: AppState,
    agent_id: String,
    agent: AgentView,
    action: A,
    context: CommandContext,
    id: Uuid,
    unlimited: bool,
    limits: Limits,
    caps: OrgCaps,
    contact: Option<Contact>,
    estimate: i64,
    chosen: Result<(Provider, credentials::Credentials), Refusal>,
    from: Option<String>,
    /// What a call's provider is handed: its TwiML and status callback.
    twiml: Option<String>,
    callback: Option<String>,
    passed: compliance::Passed,
    sandbox: bool,
    /// The mock's answer, taken before the reservation: the send is reserved and recorded by one
    /// statement, with no intent.
    mocked: Option<Receipt>,
    /// The sealed intent stored with the reservation, when the send is not `mocked`.
    fallback: Option<Value>,
}

/// Steps 12–13 and the record: the reservation with its intent, the provider, and the event.
async fn perform<A: Action>(p: Performance<A>) -> Result<Value, ApiError> {
    let Performance {
        app,
        agent_id,
        agent,
        action,
        mut context,
        id,
        unlimited,
        limits,
        caps,
        contact,
        estimate,
        chosen,
        from,
        twiml,
        callback,
        passed,
        sandbox,
        mocked,
        fallback,
    } = p;
    let app = &app;
    let channel = action.channel();
    let now = app.clock.now();
    let request = reservations::Request {
        id,
        agent_id: &agent_id,
        org_id: &agent.org_id,
        now,
        cost: estimate,
        limits,
        caps,
        contact,
        intent: fallback.map(|fallback| (app.intents.instance(), fallback)),
    };
    if let Some(receipt) = mocked {
        // Reserved and recorded together: a refusal stored nothing, and is recorded as blocked.
        let mut sent_context = context.clone();
        limits_passed(&mut sent_context.provenance, unlimited);
        sent_context.provenance.pass("provider");
        let sent = action.sent(id, from.clone(), Provider::Mock, &receipt, &passed);
        return match reservations::record_reserved(&app.store, &[sent], &sent_context, request).await {
            Ok(Ok(_)) => {
                app.metrics.message_sent(channel);
                Ok(action.reply(id, from, &receipt, sandbox, passed.warnings))
            }
            Ok(Err(exceeded)) => {
                app.metrics.rate_limit_hit(exceeded.limit_type);
                Err(block(app, context, &agent_id, id, &action, exceeded.to_error()).await)
            }
            // The statement may have failed around its commit, after storing both: the action is
            // recorded exactly if it was sent, and the mock reaches nobody either way.
            Err(failure) if failure.code == ErrorCode::Unavailable => Err(unconfirmed(
                &action,
                id,
                "The database failed while the sandbox action was being recorded: it was sent if and only if it was recorded",
            )),
            Err(failure) => Err(failure),
        };
    }
    let reserved = match app.reserver.reserve(request).await {
        Ok(reserved) => reserved,
        Err(failure) => {
            // Not performed; an intent its commit may have stored all the same is given back.
            app.intents.abandon(id);
            return Err(failure);
        }
    };
    if let Err(exceeded) = reserved {
        app.metrics.rate_limit_hit(exceeded.limit_type);
        return Err(block(app, context, &agent_id, id, &action, exceeded.to_error()).await);
    }
    limits_passed(&mut context.provenance, unlimited);
    // 13: the provider: the mock for sandbox orgs and demo, else the configured real one.
    let (provider, provider_credentials) = match chosen {
        Ok(chosen) => chosen,
        Err(failure) => {
            // Step 13 refusals are failures, not blocks (docs/tools.md#the-outbound-pipeline).
            context.provenance.fail(failure.check.as_str(), failure.reason.clone());
            let failed = action.failed(id, "none", failure.code, &failure.reason);
            // Unrecorded: retried in the background; nothing reached anyone either way.
            let _ = app.intents.complete(&agent_id, id, failed, &context, intents::Ending::Failed).await;
            let mut refusal = ApiError::from(failure);
            refusal.recorded = true;
            return Err(refusal);
        }
    };
    // An opt-out committed since the checks (a STOP, a revoked consent, a DNC entry) refuses the
    // action here, before it reaches anyone: the recipient is read again once the reservation is
    // held, which may have waited behind other sends (a STOP was answered up to a second before
    // sends checked ahead of it reached Twilio). The mock reaches nobody.
    if provider != Provider::Mock {
        if let Err(refusal) = recheck(app, &agent, &action).await {
            let ending = match refusal.code {
                ErrorCode::ComplianceBlocked => {
                    let mut recorded = refusal.refusal();
                    recorded.reason = scrub(&refusal.message, action.to());
                    let detail = format!("{} (checked again before the provider call)", recorded.reason);
                    context.provenance.fail(recorded.check.as_str(), detail);
                    action.blocked(id, &recorded)
                }
                _ => {
                    context.provenance.fail("dnc", "the recipient could not be checked again before the provider call");
                    action.failed(id, "none", refusal.code, "the recipient could not be checked again")
                }
            };
            // Not performed: the reservation is given back with the event.
            let _ = app.intents.complete(&agent_id, id, ending, &context, intents::Ending::Failed).await;
            let mut refusal = refusal;
            refusal.recorded = true;
            return Err(refusal);
        }
    }
    let outgoing = action.outgoing(from.as_deref(), twiml.as_deref(), callback.as_deref());
    let receipt = match provider.send(&app.http, &app.config, &provider_credentials, &outgoing).await {
        Ok(receipt) => receipt,
        Err(failure) => {
            let recorded = scrub(&failure.0, action.to());
            context.provenance.fail("provider", recorded.clone());
            let failed = action.failed(id, provider.name(), ErrorCode::ProviderError, &recorded);
            let _ = app.intents.complete(&agent_id, id, failed, &context, intents::Ending::Failed).await;
            let mut e = ApiError::new(ErrorCode::ProviderError, format!("Provider error: {}", failure.0))
                .with("provider", provider.name());
            e.recorded = true;
            return Err(e);
        }
    };
    context.provenance.pass("provider");
    app.metrics.message_sent(channel);
    let sent = action.sent(id, from.clone(), provider, &receipt, &passed);
    let ending = intents::Ending::Sent { cost_delta: receipt.cost - estimate };
    if app.intents.complete(&agent_id, id, sent, &context, ending).await.is_err() {
        // The provider took it: a person may have it. Say so, and never that nothing happened.
        return Err(unconfirmed(
            &action,
            id,
            "The action was handed to the provider but could not be recorded yet; it will be recorded when the database is back",
        ));
    }
    Ok(action.reply(id, from, &receipt, sandbox, passed.warnings))
}

/// `unavailable` for action `id` with status `unconfirmed`: it may have happened (`message` says
/// how it stands), so no refusal is recorded for it.
fn unconfirmed<A: Action>(action: &A, id: Uuid, message: &str) -> ApiError {
    let mut e = ApiError::new(ErrorCode::Unavailable, message)
        .with(action.id_field(), id.to_string())
        .with("status", "unconfirmed");
    e.recorded = true;
    e
}

/// Step 12 passed, in `provenance`: the limits, or for the super-admin and demo (`unlimited`)
/// counted without limits.
fn limits_passed(provenance: &mut crate::store::Provenance, unlimited: bool) {
    if unlimited {
        provenance.skip("limits", "super-admin or demo: counted, not limited");
    } else {
        provenance.pass("limits");
    }
}

/// The send decision's input, from the directory's typed rows.
fn send_state<'a>(app: &AppState, agent: &'a AgentView, org: &'a OrgTerms, channel: Channel) -> send::Send<'a> {
    let has = |address: Address| agent.channels.get(address.key()).is_some_and(|v| !v.is_null());
    send::Send {
        agent: send::AgentState {
            agent_id: &agent.agent_id,
            status: agent.status,
            phone: has(Address::Phone),
            email: has(Address::Email),
            blocked_channels: &agent.blocked_channels.0,
        },
        org: send::OrgState { org_id: &org.org_id, mode: org.mode },
        channel,
        demo_mode: app.config.demo_mode,
        real_provider: Provider::real_for(channel, &app.config).is_some(),
    }
}

/// The provider client of a decided provider kind.
fn provider_of(kind: send::Provider) -> Provider {
    match kind {
        send::Provider::Mock => Provider::Mock,
        send::Provider::Twilio => Provider::Twilio,
        send::Provider::Resend => Provider::Resend,
    }
}

/// `text` without the recipient `to` in any usual form: for the clear-text parts of events
/// (reasons, provenance details, provider errors), whose recipient field is sealed. A provider's
/// error may quote the number as E.164, as digits only or as national digits, with spaces,
/// dashes, dots or parentheses, and an email in any case: every such form is replaced.
pub(crate) fn scrub(text: &str, to: &str) -> String {
    if to.is_empty() {
        return text.to_string();
    }
    let pattern = match to.strip_prefix('+') {
        Some(digits) if digits.len() >= 7 && digits.bytes().all(|b| b.is_ascii_digit()) => {
            // The whole number, or it without a country code of 1 to 3 digits (national digits),
            // each digit maybe separated from the next; longest first.
            let forms: Vec<String> = (0..=3)
                .filter(|cut| digits.len() - cut >= 7)
                .map(|cut| {
                    let spaced: Vec<String> = digits[cut..].chars().map(|c| c.to_string()).collect();
                    spaced.join(r"[\s().-]*")
                })
                .collect();
            format!(r"\+?(?:{})", forms.join("|"))
        }
        _ => regex::escape(to),
    };
    match regex::RegexBuilder::new(&pattern).case_insensitive(true).build() {
        Ok(re) => re.replace_all(text, "[recipient]").into_owned(),
        Err(_) => text.replace(to, "[recipient]"),
    }
}

/// Records the action's blocked event for `refusal` (at the check it names); returns the refusal,
/// marked recorded — or, if the decision cannot be recorded, `unavailable`: nothing was done.
async fn block<A: Action>(
    app: &AppState,
    mut context: CommandContext,
    agent_id: &str,
    id: Uuid,
    action: &A,
    mut refusal: ApiError,
) -> ApiError {
    // The caller's message names the recipient; what is stored in clear must not (docs/privacy.md#keys-and-crypto-shredding: the
    // recipient exists only sealed, so an erasure leaves nothing behind).
    let mut recorded = refusal.refusal();
    recorded.reason = scrub(&refusal.message, action.to());
    context.provenance.fail(recorded.check.as_str(), recorded.reason.clone());
    if let Err(e) = app.store.record("agent", agent_id, &[action.blocked(id, &recorded)], &context).await {
        crate::error::log_failure("outbound refusal not recorded; answered unavailable", &e);
        return ApiError::unrecorded();
    }
    refusal.recorded = true;
    refusal
}

/// The agent's effective limits (tier, then overrides; docs/limits.md#tiers).
fn limits_of(agent: &crate::directory::AgentView, config: &crate::config::Config) -> Limits {
    crate::directory::effective_limits(agent, config).map(Some)
}

#[cfg(test)]
mod tests {
    use super::scrub;

    #[test]
    fn scrub_removes_every_usual_form_of_the_recipient() {
        for (text, to) in [
            ("The 'To' number +12025550142 is not valid", "+12025550142"),
            ("The 'To' number 12025550142 is not valid", "+12025550142"),
            ("The 'To' number 2025550142 is not valid", "+12025550142"),
            ("The 'To' number (202) 555-0142 is not valid", "+12025550142"),
            ("The 'To' number +1 202 555 0142 is not valid", "+12025550142"),
            ("The 'To' number +44 20 7946 0958 is not valid", "+442079460958"),
            ("The 'To' number 020 7946 0958 is not valid", "+442079460958"),
            ("Invalid `to`: Pat.Erasable@Example.com is not valid", "pat.erasable@example.com"),
        ] {
            let scrubbed = scrub(text, to);
            assert!(scrubbed.contains("[recipient]") && scrubbed.ends_with(" is not valid"), "{text} -> {scrubbed}");
            assert!(!scrubbed.chars().any(|c| c.is_ascii_digit()) || to.starts_with("+44"), "{text} -> {scrubbed}");
        }
        assert_eq!(scrub("no number here", "+12025550142"), "no number here");
    }
}

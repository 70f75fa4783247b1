//! The tool catalogue (docs/tools.md#catalogue): each tool's role, schema and handler. `list` shows a
//! caller only the tools of its role; `call` refuses others with the role's text (a caller who
//! may not use a tool does not learn that it exists from `tools/list`), and records every
//! refusal as `ActionRefused` (docs/tools.md#common-rules).

pub mod contacts;
mod directory;
pub mod outbound;
mod ping;

use std::future::Future;
use std::pin::Pin;

use commguard_domain::refusal::Check;
use serde_json::{json, Value};

use crate::auth::{guard, Role};
use crate::error::ApiError;
use crate::state::AppState;
use crate::validate::Args;

pub use crate::auth::caller::Caller;

/// What a tool's handler answers: a boxed future, so that every handler has one type.
pub type Reply<'a> = Pin<Box<dyn Future<Output = Result<Value, ApiError>> + Send + 'a>>;

/// A tool's handler, called once its role is checked and its arguments are readable.
pub type Handler = for<'a> fn(&'a AppState, &'a Caller<'a>, &'a Args<'a>) -> Reply<'a>;

/// One tool: the table below is the only list of names, for `tools/list`, the admin routes'
/// schemas and dispatch alike.
pub struct Tool {
    pub name: &'static str,
    pub handler: Handler,
    pub role: Role,
    /// The checks a call runs, in order, as far as they are declared (the outbound pipeline's
    /// first four, provisioning's seven, else the role): a refusal at one of them passed the ones
    /// before it, any other refusal passed them all, a failure none (`passed_before`).
    pub checks: &'static [Check],
    pub description: &'static str,
    pub schema: fn() -> Value,
}

/// What `dispatch` checks before a handler runs: the caller's role.
pub const ROLE_FIRST: &[Check] = &[Check::Role];

/// Every tool this build serves.
const TOOLS: &[Tool] = &[
    ping::TOOL,
    directory::CREATE_ORGANIZATION,
    directory::LIST_ORGANIZATIONS,
    directory::PROVISION_CHANNELS,
    directory::DEPROVISION_CHANNELS,
    directory::GET_CHANNEL_STATUS,
    directory::ROTATE_TOKEN,
    outbound::SEND_MESSAGE,
    outbound::MAKE_CALL,
    outbound::SEND_VOICE_MESSAGE,
    outbound::SET_AGENT_LIMITS,
    outbound::SET_BILLING_CONFIG,
    outbound::USAGE_DASHBOARD,
    outbound::BILLING_SUMMARY,
    outbound::REGISTER_PROVIDER,
    contacts::RECORD_CONSENT,
    contacts::REVOKE_CONSENT,
    contacts::CHECK_CONSENT,
    contacts::DNC_ADD,
    contacts::DNC_REMOVE,
    contacts::DNC_LIST,
    contacts::ERASE_SUBJECT,
];

/// Every tool's name.
pub fn names() -> impl Iterator<Item = &'static str> {
    TOOLS.iter().map(|t| t.name)
}

/// The input schema of the tool `name` (the admin routes that perform a tool take the same body).
pub fn input_schema(name: &str) -> Option<Value> {
    TOOLS.iter().find(|t| t.name == name).map(|t| (t.schema)())
}

/// The `tools/list` entries a caller of `role` may see.
pub fn list(role: Role) -> Vec<Value> {
    TOOLS
        .iter()
        .filter(|t| role >= t.role)
        .map(|t| json!({ "name": t.name, "description": t.description, "inputSchema": (t.schema)() }))
        .collect()
}

/// Runs tool `name`; a refusal is recorded before it is returned.
pub async fn call(app: &AppState, caller: &Caller<'_>, name: &str, arguments: Value) -> Result<Value, ApiError> {
    let outcome = dispatch(app, caller, name, &arguments).await;
    let outcome = match outcome {
        Err(refusal) if !refusal.recorded => match record_refusal(app, caller, name, &arguments, &refusal).await {
            Some(unrecorded) => Err(unrecorded),
            None => Err(refusal),
        },
        other => other,
    };
    // Unknown names are one label value: a caller cannot grow the series.
    let tool = TOOLS.iter().find(|t| t.name == name).map_or("unknown", |t| t.name);
    app.metrics.tool_call(tool, outcome.as_ref().map_or_else(|e| e.code.as_str(), |_| "ok"));
    outcome
}

async fn dispatch(app: &AppState, caller: &Caller<'_>, name: &str, arguments: &Value) -> Result<Value, ApiError> {
    let tool =
        TOOLS.iter().find(|t| t.name == name).ok_or_else(|| ApiError::not_found(format!("Unknown tool: {name}")))?;
    guard::require_role(caller.principal, tool.role)?;
    let args = Args::new(arguments)?;
    (tool.handler)(app, caller, &args).await
}

/// The checks of a tool's `checks` that passed before `refusing` refused: those listed before it;
/// all of them when it is not listed (a later check: the list names the first ones); none for a
/// failure (`internal`), which may have come anywhere.
fn passed_before(checks: &'static [Check], refusing: Check) -> &'static [Check] {
    match checks.iter().position(|c| *c == refusing) {
        Some(i) => &checks[..i],
        None if refusing == Check::Internal => &[],
        None => checks,
    }
}

/// Records `refusal`; `Some` is the answer to give instead (see `refusals::record`).
async fn record_refusal(
    app: &AppState,
    caller: &Caller<'_>,
    tool: &str,
    arguments: &Value,
    refusal: &ApiError,
) -> Option<ApiError> {
    let agent_id = arguments
        .get("agentId")
        .and_then(Value::as_str)
        .map(str::to_string)
        .or_else(|| caller.principal.agent_id().map(str::to_string));
    // The provenance lists the checks that ran before the refusing one (`Tool::checks`).
    let mut context = caller.bare_context(&app.clock);
    if let Some(known) = TOOLS.iter().find(|t| t.name == tool) {
        for check in passed_before(known.checks, refusal.check()) {
            context.provenance.pass(check.as_str());
        }
    }
    crate::refusals::record(app, caller.principal, context, tool, agent_id, Some(arguments), refusal).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_lists_as_passed_the_checks_before_it_and_a_failure_none() {
        let provisioning = directory::PROVISION_CHANNELS.checks;
        assert_eq!(passed_before(provisioning, Check::Duplicate), &provisioning[..4]);
        assert_eq!(passed_before(provisioning, Check::Role), &[] as &[Check]);
        // The outbound tools list their first four checks: a later one passed them all.
        let send = outbound::SEND_MESSAGE.checks;
        assert_eq!(passed_before(send, Check::Consent), send);
        // An outage or a bug says nothing of where it came.
        assert_eq!(passed_before(provisioning, Check::Internal), &[] as &[Check]);
        assert_eq!(passed_before(send, Check::Internal), &[] as &[Check]);
    }
}

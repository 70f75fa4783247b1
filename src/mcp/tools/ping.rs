//! `comms_ping`: who the server thinks you are, your org and its pool, and what is configured.

use serde_json::{json, Value};

use super::{Caller, Tool};
use crate::auth::Role;
use crate::directory::{self, commands::DEFAULT_ORG};
use crate::error::ApiError;
use crate::providers::credentials;
use crate::state::AppState;
use crate::validate::Args;

pub const TOOL: Tool = Tool {
    name: "comms_ping",
    handler: |app, caller, args| Box::pin(ping(app, caller, args)),
    role: Role::Agent,
    checks: super::ROLE_FIRST,
    description: "Check connectivity and see the caller's identity, organization and providers.",
    schema: || json!({"type": "object", "properties": {"message": {"type": "string", "maxLength": 10000}}}),
};

pub async fn ping(app: &AppState, caller: &Caller<'_>, args: &Args<'_>) -> Result<Value, ApiError> {
    let echo = args.opt_str("message", 10_000)?;
    let principal = caller.principal;
    let org_id = principal.org_id.clone().unwrap_or_else(|| DEFAULT_ORG.into());
    let org = directory::org(&app.pool, &org_id).await?;
    let (telephony, email) =
        credentials::providers_configured(&app.pool, &app.config, Some(&org_id)).await.map_err(ApiError::internal)?;
    let configured = |yes: bool| if yes { "configured" } else { "not_configured" };
    Ok(json!({
        "status": "ok",
        "server": "commguard",
        "version": env!("CARGO_PKG_VERSION"),
        "echo": echo,
        "principal": { "kind": principal.kind.as_str(), "id": principal.id, "orgId": principal.org_id },
        "org": { "id": org_id, "mode": org.as_ref().map(|o| o.mode.as_str()) },
        "pool": org.as_ref().map(directory::capacity),
        "providers": {
            "telephony": configured(telephony),
            "email": configured(email),
            "database": "ok",
        },
    }))
}

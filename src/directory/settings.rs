//! Settings changes that the MCP tools and the admin routes both make, read from their arguments
//! once: an agent's limit overrides and billing, and provider credentials.

use commguard_domain::limits::{OverridesChange, Tier};
use commguard_domain::records::ProviderEvent;
use serde_json::{json, Value};

use crate::error::{ApiError, ErrorCode};
use crate::providers::credentials::Credentials;
use crate::providers::Provider;
use crate::state::AppState;
use crate::store::CommandContext;
use crate::validate::{invalid, Args};

/// An override: absent = unchanged, `null` = cleared, else a count ≥ 1 or dollars ≥ 0.
fn override_field(
    limits: &serde_json::Map<String, Value>,
    field: &str,
    money: bool,
) -> Result<Option<Option<i64>>, ApiError> {
    let path = format!("limits.{field}");
    match limits.get(field) {
        None => Ok(None),
        Some(Value::Null) => Ok(Some(None)),
        Some(v) if money => crate::validate::money(&path, v).map(|m| Some(Some(m))),
        Some(v) => v
            .as_i64()
            .filter(|n| *n >= 1)
            .map(|n| Some(Some(n)))
            .ok_or_else(|| invalid(&path, "must be an integer ≥ 1")),
    }
}

/// The `limits` argument of `comms_set_agent_limits` (and its admin route).
pub fn limits_change(args: &Args<'_>) -> Result<OverridesChange, ApiError> {
    let limits = args.object("limits")?.ok_or_else(|| invalid("limits", "is required"))?;
    Ok(OverridesChange {
        per_minute: override_field(limits, "maxActionsPerMinute", false)?,
        per_hour: override_field(limits, "maxActionsPerHour", false)?,
        per_day: override_field(limits, "maxActionsPerDay", false)?,
        spend_day: override_field(limits, "maxSpendPerDay", true)?,
        spend_month: override_field(limits, "maxSpendPerMonth", true)?,
    })
}

/// Tier, markup and billing address of `comms_set_billing_config` (and its admin route).
pub type BillingChange = (Option<Tier>, Option<Option<f64>>, Option<Option<String>>);

pub fn billing_change(args: &Args<'_>) -> Result<BillingChange, ApiError> {
    let tier = match args.opt_str("tier", 20)? {
        None => None,
        Some(t) => {
            Some(Tier::parse(&t).ok_or_else(|| invalid("tier", "must be one of free, starter, pro, enterprise"))?)
        }
    };
    let markup = match args.0.get("markupPercent") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(v) => Some(Some(crate::validate::decimal("markupPercent", v, 0.0, 500.0)?)),
    };
    let billing_email = match args.0.get("billingEmail") {
        None => None,
        Some(Value::Null) => Some(None),
        Some(Value::String(e)) => Some(Some(crate::validate::email("billingEmail", e)?)),
        Some(_) => return Err(invalid("billingEmail", "must be a string")),
    };
    Ok((tier, markup, billing_email))
}

/// `comms_register_provider` and `POST /admin/api/providers`: verify against the provider's
/// fixed host, store encrypted (docs/privacy.md#provider-credentials), record `ProviderRegistered` with the key names
/// only. Live at once: sends resolve credentials per send.
pub async fn register_provider(app: &AppState, context: CommandContext, args: &Args<'_>) -> Result<Value, ApiError> {
    let provider = args.choice("provider", &["twilio", "resend"], "")?;
    if provider.is_empty() {
        return Err(invalid("provider", "is required"));
    }
    let (kind, required, optional): (Provider, &[&str], &[&str]) = match provider.as_str() {
        "twilio" => (Provider::Twilio, &["accountSid", "authToken"], &[]),
        _ => (Provider::Resend, &["apiKey"], &["webhookSecret"]),
    };
    let given = args.object("credentials")?.ok_or_else(|| invalid("credentials", "is required"))?;
    let mut credentials = Credentials::default();
    for name in required.iter().chain(optional) {
        let field = format!("credentials.{name}");
        match given.get(*name) {
            None | Some(Value::Null) if optional.contains(name) => {}
            None | Some(Value::Null) => return Err(invalid(&field, "is required")),
            // Credential values are not free text: they skip the sanitizer but must be one line.
            Some(Value::String(v)) if !v.is_empty() && v.len() <= 4096 && !v.contains(['\r', '\n']) => {
                credentials.0.insert(name.to_string(), v.clone());
            }
            Some(_) => return Err(invalid(&field, "must be a single-line string of 1 to 4096 characters")),
        }
    }
    let auto_verify = args.bool("autoVerify", true)?;
    let org_id = args.opt_id("orgId")?;
    if let Some(org) = &org_id {
        crate::directory::existing_org(&app.pool, org).await?;
    }
    if auto_verify {
        kind.verify(&app.http, &app.config, &credentials).await.map_err(|failure| {
            ApiError::new(ErrorCode::ProviderError, format!("Verification failed for {provider}: {}", failure.0))
                .with("provider", provider.clone())
        })?;
    }
    // The credentials are stored, then `ProviderRegistered` recorded: both happen, whoever hangs up.
    app.to_the_end(|app| async move {
        let key = app.credential_keys.first().ok_or_else(|| ApiError::internal("no credentials key"))?;
        let version =
            crate::providers::credentials::store(&app.pool, key, org_id.as_deref(), &provider, &credentials).await?;
        let mut names: Vec<String> = credentials.0.keys().cloned().collect();
        names.sort();
        let (scope, stream_type, stream_id) = match &org_id {
            Some(org) => ("org", "organization", org.clone()),
            None => ("platform", "platform", "platform".to_string()),
        };
        let event = ProviderEvent::ProviderRegistered {
            scope: scope.into(),
            provider: provider.clone(),
            key_names: names.clone(),
            verified: auto_verify,
            key_version: version.clone(),
        };
        let context = match &org_id {
            Some(org) => context.in_org(org.clone()),
            None => context,
        };
        app.store.record(stream_type, &stream_id, &[event], &context).await.map_err(ApiError::internal)?;
        Ok(json!({
            "success": true,
            "provider": provider,
            "orgId": org_id,
            "verified": auto_verify,
            "keysStored": names,
            "keyVersion": version,
        }))
    })
    .await
}

//! Commands on organizations: the default org, creation, approval, suspension and settings.

use commguard_domain::organization::{OrgAction, OrganizationCommand, SettingsChange};
use commguard_domain::refusal::Rule;
use commguard_domain::values::OrgMode;
use cqrs_es::AggregateError;
use serde_json::{json, Value};
use uuid::Uuid;

use commguard_projections::directory::read::{self};

use super::{compliance, lock, new_token, reach_every_instance, settle, DEFAULT_ORG};
use crate::directory::{org, OrgView};
use crate::error::{ApiError, ErrorCode};
use crate::state::AppState;
use crate::store::{rfc3339, CommandContext};

/// Creates `default` if it does not exist yet (every start; idempotent).
pub async fn ensure_default_org(app: &AppState) -> Result<(), ApiError> {
    if org(&app.pool, DEFAULT_ORG).await?.is_some() {
        return Ok(());
    }
    let (_, token) = new_token(Some("default".into()));
    let command = OrganizationCommand {
        org_id: DEFAULT_ORG.into(),
        action: OrgAction::Create {
            name: "Default".into(),
            slug: "default".into(),
            settings: json!({}),
            a2p_registered: false,
            max_agents: app.config.org_default_max_agents,
            token,
        },
    };
    let context =
        CommandContext::new(crate::store::Actor::system("startup"), "system", app.clock.now()).in_org(DEFAULT_ORG);
    match app.store.execute(&app.orgs, DEFAULT_ORG, command, &context).await {
        Ok(position) => settle(app, position).await,
        Err(AggregateError::UserError(_)) => Ok(()),
        Err(e) => Err(ApiError::internal(e)),
    }
}

pub struct NewOrg {
    pub name: String,
    pub slug: String,
    pub settings: Value,
    pub a2p_registered: bool,
}

/// `comms_create_organization` / `POST /admin/api/orgs`.
pub async fn create_org(app: &AppState, mut context: CommandContext, new: NewOrg) -> Result<Value, ApiError> {
    let tx = lock(app, &format!("commguard.slug.{}", new.slug)).await?;
    let taken = read::slug_taken(&app.pool, &new.slug).await.map_err(ApiError::internal)?;
    if taken {
        return Err(ApiError::new(ErrorCode::Conflict, format!("Organization slug \"{}\" already exists", new.slug)));
    }
    context.provenance.pass("duplicate");
    let org_id = Uuid::new_v4().to_string();
    let (token, issued) = new_token(Some("admin".into()));
    let command = OrganizationCommand {
        org_id: org_id.clone(),
        action: OrgAction::Create {
            name: new.name.clone(),
            slug: new.slug.clone(),
            settings: new.settings,
            a2p_registered: new.a2p_registered,
            max_agents: app.config.org_default_max_agents,
            token: issued,
        },
    };
    let position = app
        .store
        .execute(&app.orgs, &org_id, command, &context.in_org(org_id.clone()))
        .await
        .map_err(ApiError::aggregate)?;
    settle(app, position).await?;
    drop(tx);
    Ok(json!({
        "success": true,
        "orgId": org_id,
        "name": new.name,
        "slug": new.slug,
        "mode": "sandbox",
        "adminToken": token,
        "message": "Organization created in sandbox mode. Store the admin token now: it is shown only once.",
    }))
}

/// An org that exists and may act (Z6), for provisioning and outbound paths.
pub async fn active_org(app: &AppState, org_id: &str) -> Result<OrgView, ApiError> {
    let found = crate::directory::existing_org(&app.pool, org_id).await?;
    if found.mode == OrgMode::Suspended {
        return Err(compliance(format!("Organization \"{org_id}\" is suspended"), Rule::Sandbox));
    }
    Ok(found)
}

/// Approve, suspend, unsuspend or change settings of an org (S; settings caps also O own).
pub async fn org_lifecycle(
    app: &AppState,
    context: CommandContext,
    org_id: &str,
    action: OrgAction,
) -> Result<OrgView, ApiError> {
    let suspending = matches!(action, OrgAction::Suspend { .. });
    let position = app
        .store
        .execute(&app.orgs, org_id, OrganizationCommand { org_id: org_id.into(), action }, &context.in_org(org_id))
        .await
        .map_err(ApiError::aggregate)?;
    settle(app, position).await?;
    app.identity.forget_org(org_id);
    reach_every_instance(app).await;
    if suspending {
        app.sessions.close_org(org_id, "org_suspended").await;
    }
    crate::directory::existing_org(&app.pool, org_id).await
}

pub fn settings_change(
    a2p: Option<bool>,
    max_agents: Option<u32>,
    day: Option<Option<i64>>,
    month: Option<Option<i64>>,
) -> OrgAction {
    OrgAction::ChangeSettings(SettingsChange {
        a2p_registered: a2p,
        max_agents,
        max_spend_per_day: day,
        max_spend_per_month: month,
    })
}

pub fn approved_view(view: &OrgView) -> Value {
    json!({ "success": true, "orgId": view.org_id, "mode": view.mode.as_str(), "approvedAt": rfc3339(view.updated_at) })
}

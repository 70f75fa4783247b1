//! The domain's aggregates through the real store: commands decide on reloaded state, payloads
//! are stored untagged in the contract's camelCase, refusals come back as the domain's errors.

use std::sync::Arc;

use commguard::crypto::DataKeys;
use commguard::store::{feed, Actor, ActorKind, CommandContext, Store};
use commguard_domain::organization::{OrgAction, Organization, OrganizationCommand, OrganizationError};
use commguard_domain::values::IssuedToken;
use cqrs_es::AggregateError;
use uuid::Uuid;

use crate::support::{wait_visible, TestDb};

#[tokio::test]
async fn an_organization_lives_through_the_store() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    commguard::store::MIGRATOR.run(&pool).await.unwrap();
    let store = Store::new(pool, Arc::new(DataKeys::new(&[2; 32])));
    let orgs = store.framework::<Organization>(());
    let ctx = CommandContext::new(Actor { kind: ActorKind::SuperAdmin, id: "master".into() }, "test", chrono::Utc::now()).in_org("acme");
    let on = |action| OrganizationCommand { org_id: "acme".into(), action };
    let token = IssuedToken { token_id: Uuid::new_v4(), token_hash: "ab".repeat(32), label: Some("first".into()) };

    let create = OrgAction::Create {
        name: "Acme".into(),
        slug: "acme".into(),
        settings: serde_json::json!({}),
        a2p_registered: false,
        max_agents: 100,
        token,
    };
    store.execute(&orgs, "acme", on(create), &ctx).await.unwrap();
    let approve = OrgAction::Approve { kyc_note: "Documents verified".into(), approved_by: "master".into() };
    store.execute(&orgs, "acme", on(approve.clone()), &ctx).await.unwrap();
    match store.execute(&orgs, "acme", on(approve), &ctx).await {
        Err(AggregateError::UserError(e)) => {
            assert_eq!(e, OrganizationError::AlreadyProduction("acme".into()));
            assert_eq!(e.code(), "conflict");
        }
        other => panic!("a second approval must be refused, got {other:?}"),
    }

    wait_visible(store.pool(), 3).await;
    let events = feed::read_after(store.pool(), 0, 10, None).await.unwrap();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    assert_eq!(types, ["OrganizationCreated", "OrgTokenIssued", "OrganizationApproved"]);
    let created = events[0].payload_value();
    assert_eq!(created["mode"], "sandbox");
    assert_eq!(created["a2pRegistered"], false);
    assert_eq!(events[2].payload_value()["previousMode"], "sandbox");
    assert_eq!(events[0].metadata_value()["actor"]["kind"], "super-admin");
    assert!(events.iter().all(|e| e.org_id.as_deref() == Some("acme")));
}

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
    let ctx =
        CommandContext::new(Actor { kind: ActorKind::SuperAdmin, id: "master".into() }, "test", chrono::Utc::now())
            .in_org("acme");
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

/// A burst of facts on one stream (a principal's sessions closing at shutdown) is stored whole:
/// queued appends are grouped, nothing is lost to conflicts, and the chain stays intact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_facts_on_one_stream_is_stored_completely_and_in_one_chain() {
    use commguard_domain::records::SessionEvent;
    let db = TestDb::new().await;
    let pool = db.pool().await;
    commguard::store::MIGRATOR.run(&pool).await.unwrap();
    let store = Store::new(pool.clone(), Arc::new(DataKeys::new(&[3; 32])));
    let ctx =
        CommandContext::new(Actor { kind: ActorKind::SuperAdmin, id: "master".into() }, "test", chrono::Utc::now());
    let tasks: Vec<_> = (0..1000)
        .map(|i| {
            let (store, ctx) = (store.clone(), ctx.clone());
            tokio::spawn(async move {
                let closed = SessionEvent::SessionClosed { session_id: format!("s{i}"), reason: "shutdown".into() };
                store.record("principal", "super-admin:master", &[closed], &ctx).await
            })
        })
        .collect();
    for task in tasks {
        assert!(task.await.unwrap().unwrap().is_some(), "every fact is stored");
    }
    let count: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE aggregate_type = 'principal'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(count, 1000);
    let report = commguard::store::verify::verify(&pool, Some(("principal", "super-admin:master"))).await.unwrap();
    assert!(report.is_ok(), "the chain verifies");
}

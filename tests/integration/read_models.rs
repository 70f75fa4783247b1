//! The typed reads of the read models (`projections::<name>::read`): a row's status, mode, tier,
//! overrides and blocked channels come back as types, and a status or mode the reader does not
//! know is an error, never a default that would let an agent act.

use commguard_domain::agent::AgentStatus;
use commguard_domain::limits::{Overrides, Tier};
use commguard_domain::values::OrgMode;
use commguard_projections::directory::read;

use crate::support::TestDb;

#[tokio::test]
async fn directory_rows_read_typed_and_an_unknown_status_or_mode_fails_closed() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    commguard::store::MIGRATOR.run(&pool).await.unwrap();
    sqlx::query(
        "INSERT INTO orgs (org_id, name, slug, mode, a2p_registered, max_agents, created_at, updated_at)
         VALUES ('o1', 'One', 'one', 'production', false, 5, now(), now())",
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query(
        r#"INSERT INTO agents (agent_id, org_id, display_name, agent_gender, country, status, capabilities, channels,
               blocked_channels, mode, provisioned_at, updated_at)
           VALUES ('a1', 'o1', 'A', 'male', 'US', 'active', '{}', '{"phone": "+15551230000"}', '["sms"]',
               'production', now(), now())"#,
    )
    .execute(&pool)
    .await
    .unwrap();
    sqlx::query("INSERT INTO agent_limits (agent_id, tier, overrides, updated_at) VALUES ('a1', 'pro', '{\"perMinute\": 3}', now())")
        .execute(&pool)
        .await
        .unwrap();

    let agent = read::agent(&pool, "a1").await.unwrap().expect("agent a1");
    assert_eq!((agent.status, agent.mode, agent.tier), (AgentStatus::Active, OrgMode::Production, Tier::Pro));
    assert_eq!(agent.overrides, Overrides { per_minute: Some(3), ..Overrides::default() });
    assert_eq!(agent.address("phone"), Some("+15551230000"));
    assert!(agent.blocked_channels.blocks("sms") && !agent.blocked_channels.blocks("email"));
    assert!(!agent.accepts("sms") && agent.accepts("email"));
    let org = read::org(&pool, "o1").await.unwrap().expect("org o1");
    assert_eq!((org.mode, org.agent_count), (OrgMode::Production, 1));
    assert_eq!(read::org_mode(&pool, "o1").await.unwrap(), Some(OrgMode::Production));

    // A value no reader knows is a decode error, not "active" or "sandbox" by default.
    sqlx::query("UPDATE agents SET status = 'paused' WHERE agent_id = 'a1'").execute(&pool).await.unwrap();
    assert!(matches!(read::agent(&pool, "a1").await, Err(sqlx::Error::ColumnDecode { .. })));
    sqlx::query("UPDATE orgs SET mode = 'trial' WHERE org_id = 'o1'").execute(&pool).await.unwrap();
    assert!(matches!(read::org(&pool, "o1").await, Err(sqlx::Error::ColumnDecode { .. })));
    assert!(read::org_mode(&pool, "o1").await.is_err());
    // Blocked channels that are not a list of names fail closed too.
    sqlx::query("UPDATE agents SET status = 'active', blocked_channels = '\"sms\"' WHERE agent_id = 'a1'")
        .execute(&pool)
        .await
        .unwrap();
    assert!(matches!(read::agent(&pool, "a1").await, Err(sqlx::Error::ColumnDecode { .. })));
}

//! Retention (CONTRACT §11.6) on the service clock: a message body from 91 days ago is
//! `[erased]` after a run, one from 89 days ago still reads; a run records `RetentionPurged`
//! once, a second run destroys nothing more, and `DATA_RETENTION_ENABLED=false` runs nothing.

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use crate::support::{McpSession as Session, TestDb, TestServer};

const MASTER: &str = "retention-test-master-token-0123456789abcdef";
const TO: &str = "+12025550177";

fn vars(enabled: &'static str) -> Vec<(&'static str, &'static str)> {
    vec![
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ("COMMGUARD_TEST_CLOCK", "true"),
        ("DATA_RETENTION_ENABLED", enabled),
    ]
}

async fn set_clock(s: &TestServer, now: &str) {
    let r = s
        .http
        .post(s.url("/admin/api/test/clock"))
        .bearer_auth(MASTER)
        .json(&json!({"now": now}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

async fn feed(s: &TestServer) -> Vec<Value> {
    let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(s.rt.store.pool()).await.unwrap();
    crate::support::wait_visible(s.rt.store.pool(), written).await;
    let r = s.http.get(s.url("/admin/api/events?limit=1000")).bearer_auth(MASTER).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json::<Value>().await.unwrap()["events"].as_array().unwrap().clone()
}

async fn seeded(enabled: &'static str) -> (TestDb, TestServer) {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars(enabled)).await;
    set_clock(&s, "2026-09-01T16:00:00Z").await;
    let master = Session::open(&s, MASTER).await;
    let org =
        master.ok("comms_create_organization", json!({"name": "Keep", "slug": "keep", "a2pRegistered": true})).await;
    let agent = Session::open(&s, org["adminToken"].as_str().unwrap())
        .await
        .ok("comms_provision_channels", json!({"displayName": "Clinic", "capabilities": {"phone": true}}))
        .await;
    let me = Session::open(&s, agent["securityToken"].as_str().unwrap()).await;
    me.ok("comms_record_consent", json!({"contactAddress": TO, "channel": "sms"})).await;
    me.ok("comms_send_message", json!({"to": TO, "body": "ninety-one days old"})).await;
    set_clock(&s, "2026-09-03T16:00:00Z").await;
    me.ok("comms_send_message", json!({"to": TO, "body": "eighty-nine days old"})).await;
    set_clock(&s, "2026-12-01T00:00:00Z").await;
    (db, s)
}

fn bodies(events: &[Value]) -> Vec<(String, Value)> {
    events
        .iter()
        .filter(|e| e["eventType"] == "MessageSent")
        .map(|e| (e["payload"]["body"].as_str().unwrap().to_string(), e["redactions"].clone()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_expires_a_91_day_old_body_and_keeps_an_89_day_old_one() {
    let (_db, s) = seeded("true").await;
    let now = at("2026-12-01T00:00:00Z");
    let done = commguard::retention::run(&s.rt.store, &s.rt.config, now).await.unwrap().expect("the run happened");
    let messages = done.iter().find(|(c, _)| c.as_str() == "messages").unwrap();
    assert_eq!(messages.1.buckets, 1, "only 2026-09-01's messages key");

    let events = feed(&s).await;
    let sent = bodies(&events);
    assert_eq!(sent[0].0, "[erased]");
    assert_eq!(sent[0].1, json!([{"path": "body", "reason": "retention_expired"}]));
    assert_eq!(sent[1].0, "eighty-nine days old");
    assert_eq!(sent[1].1, json!([]));
    let purged: Vec<&Value> = events.iter().filter(|e| e["eventType"] == "RetentionPurged").collect();
    assert_eq!(purged.len(), 1, "{purged:?}");
    assert_eq!(purged[0]["payload"]["class"], "messages");
    assert_eq!(purged[0]["payload"]["bucketsDestroyed"], 1);
    assert_eq!(purged[0]["payload"]["cutoff"], "2026-09-02");

    // The same day again: nothing left to destroy, nothing recorded; two days later the second.
    let again = commguard::retention::run(&s.rt.store, &s.rt.config, now).await.unwrap().unwrap();
    assert!(again.iter().all(|(_, p)| p.buckets == 0 && p.rows == 0 && p.record_keys == 0));
    let later =
        commguard::retention::run(&s.rt.store, &s.rt.config, at("2026-12-03T00:00:00Z")).await.unwrap().unwrap();
    assert_eq!(later.iter().find(|(c, _)| c.as_str() == "messages").unwrap().1.buckets, 1);
    let events = feed(&s).await;
    assert_eq!(events.iter().filter(|e| e["eventType"] == "RetentionPurged").count(), 2);
    assert_eq!(bodies(&events)[1].0, "[erased]");
    assert!(commguard::store::verify::verify(s.rt.store.pool(), None).await.unwrap().is_ok());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_retention_runs_nothing() {
    let (_db, s) = seeded("false").await;
    let outcome = commguard::retention::run(&s.rt.store, &s.rt.config, at("2026-12-01T00:00:00Z")).await.unwrap();
    assert!(outcome.is_none());
    let events = feed(&s).await;
    assert_eq!(bodies(&events)[0].0, "ninety-one days old");
    assert_eq!(events.iter().filter(|e| e["eventType"] == "RetentionPurged").count(), 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_running_at_once_destroy_and_record_a_bucket_once() {
    let (db, one) = seeded("true").await;
    let two = TestServer::start(&db, &vars("true")).await;
    let now = at("2026-12-01T00:00:00Z");
    let (a, b) = tokio::join!(
        commguard::retention::run(&one.rt.store, &one.rt.config, now),
        commguard::retention::run(&two.rt.store, &two.rt.config, now)
    );
    let destroyed: u64 = [a.unwrap(), b.unwrap()]
        .into_iter()
        .flatten()
        .flatten()
        .filter(|(c, _)| c.as_str() == "messages")
        .map(|(_, p)| p.buckets)
        .sum();
    assert_eq!(destroyed, 1);
    let events = feed(&one).await;
    assert_eq!(events.iter().filter(|e| e["eventType"] == "RetentionPurged").count(), 1);
    assert_eq!(bodies(&events)[0].0, "[erased]");
    two.stop().await;
    one.stop().await;
}

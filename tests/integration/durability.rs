//! An action that happened is recorded, or its caller is told it may have happened (issue 14):
//! Postgres stopped between the provider call and the record, a server killed with sends in
//! flight. And spend caps as docs/limits.md#tool-limits words them: a cap refuses once the spend before the action
//! has reached it, and racing sends overshoot it by at most one action's cost.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use commguard::app::{Runtime, Server};
use commguard::store::embedded::{EmbeddedPostgres, Released};
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::support::{
    binary, config, counted_today, data_dir, open_intents, McpSession as Session, TestDb, TestServer,
};

const MASTER: &str = "durability-test-master-token-0123456789abcdef";
const DATA_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const CREDENTIALS_KEY: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";
const RECIPIENT: &str = "pat@example.com";

/// A local server speaking Resend's `POST /emails`. Every request is counted on arrival and
/// answered only once the gate opens (never, if it stays shut).
struct Resend {
    base: String,
    arrived: Arc<AtomicUsize>,
    gate: watch::Sender<bool>,
}

impl Resend {
    async fn start() -> Self {
        let arrived = Arc::new(AtomicUsize::new(0));
        let (gate, open) = watch::channel(false);
        async fn emails(State((arrived, mut open)): State<(Arc<AtomicUsize>, watch::Receiver<bool>)>) -> Json<Value> {
            let n = arrived.fetch_add(1, Ordering::SeqCst) + 1;
            let _ = open.wait_for(|open| *open).await;
            Json(json!({"id": format!("re_held_{n}")}))
        }
        let app = Router::new().route("/emails", post(emails)).with_state((arrived.clone(), open));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Self { base, arrived, gate }
    }

    async fn wait_arrived(&self, n: usize) {
        for _ in 0..3000 {
            if self.arrived.load(Ordering::SeqCst) >= n {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("only {} of {n} sends reached the provider", self.arrived.load(Ordering::SeqCst));
    }
}

fn vars<'a>(db_url: &'a str, data: &'a str, resend: &'a str, extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    let mut v = vec![
        ("DATABASE_URL", db_url),
        ("COMMGUARD_DATA_DIR", data),
        ("DATA_ENCRYPTION_KEY", DATA_KEY),
        ("CREDENTIALS_ENCRYPTION_KEY", CREDENTIALS_KEY),
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ("RESEND_API_KEY", "re_test_key"),
        ("RESEND_API_BASE_URL", resend),
        ("OUTBOUND_INTENT_LEASE_SECONDS", "1"),
    ];
    v.extend_from_slice(extra);
    v
}

/// A production org (emails go to the Resend double) with one email agent whose recipient
/// consented; returns the agent's token and id.
async fn email_agent(http: &reqwest::Client, base: &str) -> (String, String) {
    let master = Session::open_at(http, base, MASTER).await;
    let org = master.ok("comms_create_organization", json!({"name": "Live", "slug": "live"})).await;
    let admin = Session::open_at(http, base, org["adminToken"].as_str().unwrap()).await;
    let agent =
        admin.ok("comms_provision_channels", json!({"displayName": "Mail", "capabilities": {"email": true}})).await;
    crate::support::approve_org(http, base, MASTER, org["orgId"].as_str().unwrap()).await;
    let token = agent["securityToken"].as_str().unwrap().to_string();
    let me = Session::open_at(http, base, &token).await;
    me.ok("comms_record_consent", json!({"contactAddress": RECIPIENT, "channel": "email"})).await;
    (token, agent["agentId"].as_str().unwrap().to_string())
}

fn email(n: usize) -> Value {
    json!({"channel": "email", "to": RECIPIENT, "subject": format!("Note {n}"), "body": "Reply STOP to unsubscribe"})
}

/// (messageId or callId, status) of every outbound event of `agent_id`.
async fn recorded(pool: &PgPool, agent_id: &str) -> Vec<(String, String, String)> {
    sqlx::query_as(
        "SELECT event_type, payload::jsonb->>'messageId', COALESCE(payload::jsonb->>'status', '')
           FROM events WHERE aggregate_id = $1 AND event_type IN ('MessageSent', 'MessageFailed') ORDER BY sequence",
    )
    .bind(agent_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Polls `check` for up to 60 s.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..600 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{what} did not happen within 60 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_stopped_between_the_provider_call_and_the_record_loses_no_send() {
    let resend = Resend::start().await;
    // A private cluster this test can stop and start again.
    let cluster_dir = data_dir();
    let pg_bin = std::env::var("PG_BIN_DIR").ok().map(std::path::PathBuf::from);
    let pg = EmbeddedPostgres::start(cluster_dir.path(), pg_bin.as_deref()).expect("private cluster starts");
    let url = pg.url();
    let data = data_dir();
    let dir = data.path().display().to_string();
    // Fewer connections than sends in flight: background retries must not starve each other of
    // the pool (eight retries each holding a connection once deadlocked a pool of ten).
    let rt = Runtime::open(config(&vars(&url, &dir, &resend.base, &[("DATABASE_MAX_CONNECTIONS", "4")])))
        .await
        .expect("runtime opens");
    let server = Server::start(&rt, TcpListener::bind("127.0.0.1:0").await.unwrap()).await.unwrap();
    let base = format!("http://{}", server.addr);
    let http = reqwest::Client::new();
    let (token, agent_id) = email_agent(&http, &base).await;

    // Eight sends reach the provider; Postgres stops; then the provider answers them.
    const SENDS: usize = 8;
    let mut sessions = Vec::new();
    for _ in 0..SENDS {
        sessions.push(Session::open_at(&http, &base, &token).await);
    }
    let calls: Vec<_> = sessions
        .into_iter()
        .enumerate()
        .map(|(i, s)| tokio::spawn(async move { s.call("comms_send_message", email(i)).await }))
        .collect();
    resend.wait_arrived(SENDS).await;
    let released = tokio::task::spawn_blocking(move || pg.release().expect("the cluster stops")).await.unwrap();
    assert!(matches!(released, Released::Stopped), "this test is the cluster's only user");
    resend.gate.send(true).unwrap();

    // Every caller hears either success (recorded) or `unavailable` + `unconfirmed` with its id.
    let mut acknowledged = Vec::new();
    let mut unconfirmed = Vec::new();
    for call in calls {
        let (is_error, reply) = call.await.unwrap();
        if is_error {
            assert_eq!(
                (reply["code"].as_str(), reply["status"].as_str()),
                (Some("unavailable"), Some("unconfirmed")),
                "{reply}"
            );
            unconfirmed.push(reply["messageId"].as_str().expect("the refusal names the message").to_string());
        } else {
            acknowledged.push(reply["messageId"].as_str().unwrap().to_string());
        }
    }
    assert_eq!(unconfirmed.len(), SENDS, "Postgres was down for every record: none can be acknowledged");

    // Postgres comes back: the background retries record every send with its real receipt.
    let restart_dir = cluster_dir.path().to_path_buf();
    let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&restart_dir, pg_bin.as_deref()))
        .await
        .unwrap()
        .expect("the cluster starts again");
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(2).connect(&pg.url()).await.unwrap();
    eventually("every send recorded and every intent completed", || async {
        recorded(&pool, &agent_id).await.len() == SENDS && open_intents(&pool).await == 0
    })
    .await;
    let events = recorded(&pool, &agent_id).await;
    for id in acknowledged.iter().chain(&unconfirmed) {
        let found: Vec<_> = events.iter().filter(|(_, m, _)| m == id).collect();
        assert_eq!(found.len(), 1, "message {id} is recorded exactly once: {events:?}");
        assert_eq!(
            (found[0].0.as_str(), found[0].2.as_str()),
            ("MessageSent", "sent"),
            "the provider's receipt is kept"
        );
    }
    assert_eq!(counted_today(&pool, &agent_id).await, SENDS as i64, "the counters agree with the store");

    server.stop().await.unwrap();
    rt.shutdown().await;
    pool.close().await;
    tokio::task::spawn_blocking(move || pg.release().unwrap()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_with_sends_in_flight_leaks_no_reservation() {
    let resend = Resend::start().await;
    let db = TestDb::new().await;
    let data = data_dir();
    let dir = data.path().display().to_string();
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port().to_string()
    };
    let mut env = vars(&db.url, &dir, &resend.base, &[("HOST", "127.0.0.1"), ("PORT", port.as_str())]);
    env.push(("RUST_LOG", "warn"));
    let mut child = Command::new(binary())
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(env.iter().copied())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("commguard serve starts");
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let ready = || async { http.get(format!("{base}/health/ready")).send().await.is_ok_and(|r| r.status() == 200) };
    eventually("the server is ready", ready).await;
    let (token, agent_id) = email_agent(&http, &base).await;

    // Six sends held at the provider (the gate never opens), then kill -9.
    const SENDS: usize = 6;
    let mut calls = Vec::new();
    for i in 0..SENDS {
        let me = Session::open_at(&http, &base, &token).await;
        calls.push(tokio::spawn(async move { me.call("comms_send_message", email(i)).await }));
    }
    resend.wait_arrived(SENDS).await;
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for call in calls {
        assert!(call.await.is_err(), "a killed server answers nobody");
    }
    let pool = db.pool().await;
    assert_eq!(counted_today(&pool, &agent_id).await, SENDS as i64, "six slots are held");
    assert_eq!(open_intents(&pool).await, SENDS as i64, "each with its intent");
    assert!(recorded(&pool, &agent_id).await.is_empty(), "and nothing recorded yet");

    // Another instance reconciles them within the lease: sent-unconfirmed, slots kept.
    let other = TestServer::start(&db, &[("OUTBOUND_INTENT_LEASE_SECONDS", "1")]).await;
    eventually("the intents of the killed server reconciled", || async { open_intents(&pool).await == 0 }).await;
    let events = recorded(&pool, &agent_id).await;
    assert_eq!(events.len(), SENDS, "{events:?}");
    assert!(events.iter().all(|(t, _, status)| t == "MessageSent" && status == "unconfirmed"), "{events:?}");
    assert_eq!(counted_today(&pool, &agent_id).await, events.len() as i64, "counters equal the recorded actions");
    let provenance: Value = sqlx::query_scalar(
        "SELECT metadata::jsonb->'provenance' FROM events WHERE aggregate_id = $1 AND event_type = 'MessageSent' LIMIT 1",
    )
    .bind(&agent_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let last = provenance["checks"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["check"], "provider");
    assert!(last["detail"].as_str().unwrap().starts_with("unconfirmed"), "{provenance}");
    other.stop().await;
}

/// A sandbox org's agent whose recipient consented, with agent limits set by the master.
async fn capped_agent(s: &TestServer, slug: &str, limits: Value) -> (Session, String, String) {
    let master = Session::open(s, MASTER).await;
    let org = master.ok("comms_create_organization", json!({"name": slug, "slug": slug, "a2pRegistered": true})).await;
    let admin = Session::open(s, org["adminToken"].as_str().unwrap()).await;
    let agent =
        admin.ok("comms_provision_channels", json!({"displayName": "Sender", "capabilities": {"phone": true}})).await;
    let agent_id = agent["agentId"].as_str().unwrap().to_string();
    master.ok("comms_set_agent_limits", json!({"agentId": agent_id, "limits": limits})).await;
    let me = Session::open(s, agent["securityToken"].as_str().unwrap()).await;
    me.ok("comms_record_consent", json!({"contactAddress": "+12025550100", "channel": "sms"})).await;
    (me, agent_id, org["orgId"].as_str().unwrap().to_string())
}

async fn sms(me: &Session) -> (bool, Value) {
    me.call("comms_send_message", json!({"to": "+12025550100", "body": "Your table is ready."})).await
}

fn plain_vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ("DEFAULT_MAX_ACTIONS_PER_MINUTE", "1000"),
        ("DEFAULT_MAX_ACTIONS_PER_HOUR", "1000"),
        ("DEFAULT_MAX_ACTIONS_PER_DAY", "1000"),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spend_cap_refuses_once_the_spend_before_the_action_reaches_it() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &plain_vars()).await;

    // Agent caps: 0.005 a day lets the first 0.0079 SMS through and refuses the second.
    let cases = [
        ("daily", json!({"maxSpendPerDay": 0.005}), "daily-spend", "at midnight UTC"),
        ("monthly", json!({"maxSpendPerMonth": 0.005}), "monthly-spend", "at the start of next month"),
    ];
    for (slug, limits, limit_type, resets) in cases {
        let (me, _, _) = capped_agent(&s, slug, limits).await;
        let (is_error, first) = sms(&me).await;
        assert!(!is_error, "{limit_type}: nothing spent yet, the first send passes: {first}");
        let (is_error, refused) = sms(&me).await;
        assert!(is_error);
        assert_eq!(refused["limitType"], limit_type);
        assert_eq!((refused["current"].as_f64(), refused["max"].as_f64()), (Some(0.0079), Some(0.005)));
        assert_eq!(refused["error"], format!("Rate limit exceeded: {limit_type} (0.0079/0.005). Resets {resets}."));
    }

    // Org caps: 0.01 lets two SMS through (0 and 0.0079 are below it) and refuses the third.
    for (slug, field, limit_type) in
        [("org-day", "maxSpendPerDay", "org_spend_day"), ("org-month", "maxSpendPerMonth", "org_spend_month")]
    {
        let (me, _, org_id) = capped_agent(&s, slug, json!({})).await;
        let settings = s
            .http
            .post(s.url(&format!("/admin/api/orgs/{org_id}/settings")))
            .bearer_auth(MASTER)
            .json(&json!({ field: 0.01 }))
            .send()
            .await
            .unwrap();
        assert_eq!(settings.status(), 200, "{}", settings.text().await.unwrap());
        for n in 1..=2 {
            let (is_error, reply) = sms(&me).await;
            assert!(!is_error, "{limit_type}: send {n} passes: {reply}");
        }
        let (is_error, refused) = sms(&me).await;
        assert!(is_error);
        assert_eq!(refused["limitType"], limit_type, "{refused}");
        assert_eq!((refused["current"].as_f64(), refused["max"].as_f64()), (Some(0.0158), Some(0.01)));
        assert!(refused["resetAt"].as_str().is_some());
    }
    s.stop().await;
}

/// Sends `n` SMS at once from their own sessions, spread over `servers`; returns how many passed.
async fn race(servers: &[&TestServer], token: &str, n: usize) -> usize {
    let mut sessions = Vec::new();
    for i in 0..n {
        sessions.push(Session::open(servers[i % servers.len()], token).await);
    }
    let outcomes = futures::future::join_all(sessions.iter().map(sms)).await;
    for (_, refusal) in outcomes.iter().filter(|(e, _)| *e) {
        assert_eq!(refusal["limitType"], "daily-spend", "{refusal}");
    }
    outcomes.iter().filter(|(e, _)| !e).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_sends_overshoot_a_spend_cap_by_at_most_one_action_on_one_instance_or_two() {
    let db = TestDb::new().await;
    let a = TestServer::start(&db, &plain_vars()).await;
    let b = TestServer::start(&db, &plain_vars()).await;
    // 0.1 a day: sends pass while the spend before them is below 0.1, i.e. 13 (12 × 0.0079 =
    // 0.0948 < 0.1 ≤ 13 × 0.0079 = 0.1027). The overshoot, 0.0027, is under one SMS.
    for (slug, servers) in [("race-one", vec![&a]), ("race-two", vec![&a, &b])] {
        let (_, agent_id, _) = capped_agent(&a, slug, json!({"maxSpendPerDay": 0.1})).await;
        let token = {
            let master = Session::open(&a, MASTER).await;
            master.ok("comms_rotate_token", json!({"target": "agent", "agentId": agent_id})).await["token"]
                .as_str()
                .unwrap()
                .to_string()
        };
        let passed = race(&servers, &token, 200).await;
        assert_eq!(passed, 13, "{slug}: exactly the sends whose spend-before was under the cap");
        let spent: i64 = sqlx::query_scalar(
            "SELECT spend FROM usage_counters WHERE scope = 'agent' AND key = $1 AND period = 'day'",
        )
        .bind(&agent_id)
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
        assert!(spent >= 100_000 && spent - 100_000 < 7_900, "{slug}: spent {spent} µ$ against a 100000 µ$ cap");
    }
    a.stop().await;
    b.stop().await;
}

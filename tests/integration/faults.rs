//! Short forms of `scripts/chaos.sh crash` and `postgres` (issue 20): a few hundred SMS sends
//! (mock provider) across one SIGKILL of a `commguard serve` process, and across one database
//! outage under two running instances. Every send a caller saw acknowledged is recorded exactly
//! once; after the kill the limit counters count only what was recorded; after the outage a
//! revocation still reaches the other instance within 5 s (its LISTEN connection came back).

use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::PgPool;
use tokio::task::JoinHandle;

use crate::outage::{cluster_socket, PgProxy};
use crate::support::{
    admin_url, binary, counted_today, data_dir, open_intents, McpSession as Session, TestDb, TestServer,
};

const MASTER: &str = "faults-test-master-token-0123456789abcdef01234567";
const TO: &str = "+12025550100";
const SENDERS: usize = 8;

fn limits() -> Vec<(&'static str, &'static str)> {
    vec![
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "100000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "100000000"),
        ("DEFAULT_MAX_ACTIONS_PER_MINUTE", "100000000"),
        ("DEFAULT_MAX_ACTIONS_PER_HOUR", "100000000"),
        ("DEFAULT_MAX_ACTIONS_PER_DAY", "100000000"),
        ("DEFAULT_MAX_SPEND_PER_DAY", "100000000"),
        ("DEFAULT_MAX_SPEND_PER_MONTH", "100000000"),
        ("OUTBOUND_INTENT_LEASE_SECONDS", "1"),
    ]
}

/// `commguard serve` as a process on `port`, its output discarded.
fn serve(db_url: &str, data: &str, port: &str) -> Child {
    Command::new(binary())
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .envs(limits())
        .envs([("DATABASE_URL", db_url), ("COMMGUARD_DATA_DIR", data), ("HOST", "127.0.0.1"), ("PORT", port)])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("commguard serve starts")
}

/// Polls `check` every 50 ms for up to `seconds`; false if it never held.
async fn within<F, Fut>(seconds: u64, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(seconds);
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn ready(http: &reqwest::Client, base: &str) -> bool {
    http.get(format!("{base}/health/ready")).send().await.is_ok_and(|r| r.status() == 200)
}

/// A sandbox org (A2P registered) with an SMS agent whose recipient consented: (org token,
/// agent token, agent id).
async fn sms_agent(http: &reqwest::Client, base: &str) -> (String, String, String) {
    let master = Session::open_at(http, base, MASTER).await;
    let org = master
        .ok("comms_create_organization", json!({"name": "Faults", "slug": "faults", "a2pRegistered": true}))
        .await;
    let org_token = org["adminToken"].as_str().unwrap().to_string();
    let admin = Session::open_at(http, base, &org_token).await;
    let agent =
        admin.ok("comms_provision_channels", json!({"displayName": "Sender", "capabilities": {"phone": true}})).await;
    let token = agent["securityToken"].as_str().unwrap().to_string();
    let me = Session::open_at(http, base, &token).await;
    me.ok("comms_record_consent", json!({"contactAddress": TO, "channel": "sms"})).await;
    (org_token, token, agent["agentId"].as_str().unwrap().to_string())
}

type Acked = Arc<Mutex<Vec<String>>>;

/// `SENDERS` sessions at `base` send `each` SMS one after the other, noting every acknowledged
/// message id. A sender stops at its first send that got no answer when `stop_unanswered`
/// (its server was killed); otherwise it carries on (the server is up, its database is not).
async fn senders(
    http: &reqwest::Client,
    base: &str,
    token: &str,
    each: usize,
    stop_unanswered: bool,
    acked: &Acked,
) -> Vec<JoinHandle<usize>> {
    let mut tasks = Vec::new();
    for n in 0..SENDERS {
        let me = Session::open_at(http, base, token).await;
        let acked = acked.clone();
        tasks.push(tokio::spawn(async move {
            let mut answered = 0;
            for i in 0..each {
                match me.try_call("comms_send_message", json!({"to": TO, "body": format!("fault {n}.{i}")})).await {
                    Some((false, reply)) => {
                        answered += 1;
                        acked.lock().unwrap().push(reply["messageId"].as_str().unwrap().to_string());
                    }
                    Some((true, _)) => answered += 1,
                    None if stop_unanswered => break,
                    None => {}
                }
            }
            answered
        }));
    }
    tasks
}

async fn acked_count(acked: &Acked, at_least: usize) -> bool {
    acked.lock().unwrap().len() >= at_least
}

/// Message ids of the agent's `MessageSent` events, with repeats.
async fn recorded(pool: &PgPool, agent_id: &str) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT payload::jsonb->>'messageId' FROM events WHERE aggregate_id = $1 AND event_type = 'MessageSent'",
    )
    .bind(agent_id)
    .fetch_all(pool)
    .await
    .unwrap()
}

/// Every acknowledged send recorded once, and none recorded twice.
async fn assert_recorded_once(pool: &PgPool, agent_id: &str, acked: &Acked) -> usize {
    let recorded = recorded(pool, agent_id).await;
    let mut once = recorded.clone();
    once.sort();
    once.dedup();
    assert_eq!(once.len(), recorded.len(), "a send recorded twice");
    let acked = acked.lock().unwrap().clone();
    let lost: Vec<&String> = acked.iter().filter(|id| !once.contains(id)).collect();
    assert!(lost.is_empty(), "{} of {} acknowledged sends lost: {lost:?}", lost.len(), acked.len());
    recorded.len()
}

/// `assert_recorded_once`, and once the intents of the killed instance are reconciled, the limit
/// counters equal the recorded sends (no reservation left held).
async fn assert_nothing_lost(pool: &PgPool, agent_id: &str, acked: &Acked) {
    assert!(
        within(60, || async { open_intents(pool).await == 0 }).await,
        "the intents left open were not reconciled within 60 s"
    );
    let recorded = assert_recorded_once(pool, agent_id, acked).await;
    assert_eq!(counted_today(pool, agent_id).await, recorded as i64, "limits count only what was recorded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_run_loses_and_duplicates_no_acknowledged_send() {
    let db = TestDb::new().await;
    let data = data_dir();
    let dir = data.path().display().to_string();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port().to_string();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut child = serve(&db.url, &dir, &port);
    assert!(within(60, || ready(&http, &base)).await, "the server never became ready");
    let (_, token, agent_id) = sms_agent(&http, &base).await;

    // 8 × 25 sends; SIGKILL once 100 are acknowledged.
    let acked: Acked = Arc::default();
    let first = senders(&http, &base, &token, 25, true, &acked).await;
    assert!(within(120, || acked_count(&acked, 100)).await, "100 sends were not acknowledged");
    child.kill().expect("SIGKILL");
    child.wait().unwrap();
    for task in first {
        task.await.unwrap();
    }
    let before = acked.lock().unwrap().len();

    // Restarted on the same database and data directory: 8 × 20 more, all acknowledged.
    let mut child = serve(&db.url, &dir, &port);
    assert!(within(60, || ready(&http, &base)).await, "the restarted server never became ready");
    for task in senders(&http, &base, &token, 20, true, &acked).await {
        assert_eq!(task.await.unwrap(), 20);
    }
    assert_eq!(acked.lock().unwrap().len(), before + SENDERS * 20, "every send after the restart acknowledged");

    let pool = db.pool().await;
    assert_nothing_lost(&pool, &agent_id, &acked).await;
    child.kill().expect("stop");
    child.wait().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_database_outage_under_load_loses_nothing_and_revocation_reaches_every_instance_after_it() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(cluster_socket()).await;
    let user = admin_url().split("://").nth(1).unwrap().split('@').next().unwrap().to_string();
    let through_proxy =
        TestDb { name: db.name.clone(), url: format!("postgres://{user}@127.0.0.1:{}/{}", proxy.port, db.name) };
    let a = TestServer::start(&through_proxy, &limits()).await;
    let b = TestServer::start(&through_proxy, &limits()).await;
    let (org_token, token, agent_id) = sms_agent(&a.http, &a.base).await;

    // 8 × 40 sends on A; the database goes away for 2 s once 60 are acknowledged.
    let acked: Acked = Arc::default();
    let tasks = senders(&a.http, &a.base, &token, 40, false, &acked).await;
    assert!(within(120, || acked_count(&acked, 60)).await, "60 sends were not acknowledged");
    proxy.set_down(true);
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.set_down(false);
    let mut answered = 0;
    for task in tasks {
        answered += task.await.unwrap();
    }
    assert!(answered >= 60, "only {answered} sends answered");
    // Both instances recover without a restart.
    assert!(within(30, || ready(&a.http, &a.base)).await, "A did not recover");
    assert!(within(30, || ready(&b.http, &b.base)).await, "B did not recover");
    let after = acked.lock().unwrap().len();
    for task in senders(&b.http, &b.base, &token, 5, false, &acked).await {
        task.await.unwrap();
    }
    assert_eq!(acked.lock().unwrap().len(), after + SENDERS * 5, "sends on B after the outage all acknowledged");
    // No reservation is left held: a reservation whose commit's answer the outage cut has its
    // intent given back by its (live) owner (`Intents::abandon`), the others are completed.
    let pool = db.pool().await;
    assert_nothing_lost(&pool, &agent_id, &acked).await;

    // After recovery a rotation on A refuses the old token on B within 5 s (B's token watcher
    // listens again).
    assert_eq!(initialize(&b, &token).await, 200);
    let rotated = a
        .http
        .post(a.url(&format!("/admin/api/agents/{agent_id}/regenerate-token")))
        .bearer_auth(&org_token)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    assert_eq!(initialize(&a, &token).await, 401);
    assert!(within(5, || async { initialize(&b, &token).await == 401 }).await, "B still admits the revoked token");
    b.stop().await;
    a.stop().await;
}

async fn initialize(s: &TestServer, token: &str) -> u16 {
    s.http
        .post(s.url("/mcp"))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Every session open is recorded (`SessionOpened`), so one that cannot be recorded is not
/// opened: with the database away, the master (whose token needs no database) is answered 503 on
/// both transports, and once it is back a session opens and is recorded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_whose_opening_cannot_be_recorded_is_not_opened() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(cluster_socket()).await;
    let user = admin_url().split("://").nth(1).unwrap().split('@').next().unwrap().to_string();
    let through_proxy =
        TestDb { name: db.name.clone(), url: format!("postgres://{user}@127.0.0.1:{}/{}", proxy.port, db.name) };
    let s = TestServer::start(&through_proxy, &limits()).await;
    proxy.set_down(true);
    assert_eq!(initialize(&s, MASTER).await, 503);
    let sse = s.http.get(s.url(&format!("/sse?token={MASTER}"))).send().await.unwrap();
    assert_eq!(sse.status(), 503);
    proxy.set_down(false);
    assert!(within(30, || ready(&s.http, &s.base)).await, "the server did not recover");
    assert_eq!(initialize(&s, MASTER).await, 200);
    let opened: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'SessionOpened'")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(opened, 1, "only the session opened after the outage exists, and it is recorded");
    s.stop().await;
}

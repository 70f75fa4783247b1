//! The administrative commands of the binary (docs/cli.md) against the database of a running
//! in-process server: `token issue` (the token works at once, unknown or inactive targets exit 1)
//! and `audit export` (JSON Lines of envelopes about one subject only, recorded as `AuditExported`).

use std::process::Output;

use serde_json::{json, Value};

use crate::cli::run;
use crate::support::{data_dir, provision, McpSession as Session, TestDb, TestServer};

const MASTER: &str = "cli-admin-test-master-token-0123456789abcdef";
/// The keys `support::dev_config` gives the in-process server: the CLI must open the same data.
const DATA_KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
const CREDENTIALS_KEY: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";
const PHONE: &str = "+12025550100";
const OTHER: &str = "+12025550111";
const EMAIL: &str = "bob@example.com";

async fn server(db: &TestDb) -> TestServer {
    TestServer::start(
        db,
        &[
            ("MASTER_SECURITY_TOKEN", MASTER),
            ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
            ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
            ("COMMGUARD_TEST_CLOCK", "true"),
        ],
    )
    .await
}

/// Runs the binary on `db` (off the async runtime: it blocks until the command ends).
async fn commguard(db: &TestDb, args: &[&str]) -> Output {
    let data = data_dir();
    let (url, dir) = (db.url.clone(), data.path().display().to_string());
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [
            ("DATABASE_URL", url.as_str()),
            ("COMMGUARD_DATA_DIR", dir.as_str()),
            ("DATA_ENCRYPTION_KEY", DATA_KEY),
            ("CREDENTIALS_ENCRYPTION_KEY", CREDENTIALS_KEY),
        ];
        let out = run(&args, &env);
        drop(data);
        out
    })
    .await
    .unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

struct Org {
    id: String,
    slug: String,
    admin: String,
    agent_id: String,
    agent_token: String,
}

async fn org(s: &TestServer, slug: &str) -> Org {
    let p = provision(s, MASTER, slug, json!({}), "Desk", json!({"phone": true, "email": true})).await;
    Org { id: p.org_id, slug: slug.into(), admin: p.admin, agent_id: p.agent_id, agent_token: p.agent_token }
}

async fn me(s: &TestServer, token: &str) -> (u16, Value) {
    let r = s.http.get(s.url("/admin/api/me")).bearer_auth(token).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

fn printed_token(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    let printed = stdout(out);
    let token = printed.strip_suffix('\n').expect("one line");
    assert!(
        token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()),
        "{printed:?}"
    );
    token.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_issue_prints_a_token_that_works_at_once_and_refuses_unknown_or_inactive_targets() {
    let db = TestDb::new().await;
    let s = server(&db).await;
    let o = org(&s, "acme").await;

    // An agent token beside the active one, through the agent aggregate.
    let token = printed_token(&commguard(&db, &["token", "issue", "--agent", &o.agent_id, "--label", "boot"]).await);
    Session::open(&s, &token).await.ok("comms_ping", json!({})).await;
    Session::open(&s, &o.agent_token).await.ok("comms_ping", json!({})).await;
    let (payload, metadata): (Value, Value) = sqlx::query_as(
        "SELECT payload::jsonb, metadata::jsonb FROM events WHERE event_type = 'AgentTokenIssued' ORDER BY position DESC LIMIT 1",
    )
    .fetch_one(s.rt.store.pool())
    .await
    .unwrap();
    assert_eq!((payload["issuedVia"].as_str(), payload["label"].as_str()), (Some("cli"), Some("boot")));
    assert_eq!(metadata["actor"], json!({"kind": "cli", "id": "cli"}));
    assert_eq!((metadata["transport"].as_str(), metadata["orgId"].as_str()), (Some("cli"), Some(o.id.as_str())));
    assert!(!payload.to_string().contains(&token), "only the hash is stored");

    // An org token by slug, revoking the others: the new one works on the running server at
    // once, the old one stops working (the server learns it over NOTIFY).
    assert_eq!(me(&s, &o.admin).await.0, 200);
    let out = commguard(&db, &["token", "issue", "--org", &o.slug, "--revoke-existing"]).await;
    let org_token = printed_token(&out);
    let (status, body) = me(&s, &org_token).await;
    assert_eq!((status, body["orgId"].as_str()), (200, Some(o.id.as_str())));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while me(&s, &o.admin).await.0 != 401 {
        assert!(std::time::Instant::now() < deadline, "the revoked org token still works");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let issued: Vec<String> =
        sqlx::query_scalar("SELECT event_type FROM events WHERE aggregate_id = $1 ORDER BY sequence DESC LIMIT 2")
            .bind(&o.id)
            .fetch_all(s.rt.store.pool())
            .await
            .unwrap();
    assert_eq!(issued, ["OrgTokenIssued", "OrgTokenRevoked"]);
    let org_issued: Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE aggregate_id = $1 AND event_type = 'OrgTokenIssued' ORDER BY sequence DESC LIMIT 1",
    )
    .bind(&o.id)
    .fetch_one(s.rt.store.pool())
    .await
    .unwrap();
    assert_eq!(org_issued["issuedVia"].as_str(), Some("cli"), "{org_issued}");

    // Unknown and inactive targets are refused (exit 1, nothing printed); usage errors exit 2.
    let unknown = commguard(&db, &["token", "issue", "--agent", "no-such-agent"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{}", stderr(&unknown));
    assert!(stdout(&unknown).is_empty() && stderr(&unknown).contains("not found"));
    let unknown_org = commguard(&db, &["token", "issue", "--org", "no-such-org"]).await;
    assert_eq!(unknown_org.status.code(), Some(1));
    Session::open(&s, &org_token).await.ok("comms_deprovision_channels", json!({"agentId": o.agent_id})).await;
    let inactive = commguard(&db, &["token", "issue", "--agent", &o.agent_id]).await;
    assert_eq!(inactive.status.code(), Some(1), "{}", stderr(&inactive));
    assert!(stdout(&inactive).is_empty() && stderr(&inactive).contains("not active"), "{}", stderr(&inactive));
    assert_eq!(commguard(&db, &["token", "issue"]).await.status.code(), Some(2));
    assert_eq!(commguard(&db, &["token", "issue", "--agent", "a", "--org", "b"]).await.status.code(), Some(2));
    s.stop().await;
}

#[tokio::test]
async fn help_lists_every_command() {
    let out = tokio::task::spawn_blocking(|| run(&["--help"], &[])).await.unwrap();
    assert_eq!(out.status.code(), Some(0));
    let help = stdout(&out);
    for command in ["serve", "migrate", "replay", "audit verify", "audit export --subject", "token issue (--agent"] {
        assert!(help.contains(command), "--help lacks {command}:\n{help}");
    }
}

fn lines(text: &str) -> Vec<Value> {
    text.lines().map(|l| serde_json::from_str(l).expect("each line is one JSON envelope")).collect()
}

/// Whether an exported envelope is about `subject`: a personal field holds it (opened), or it
/// is on the subject's own stream.
fn about(envelope: &Value, subject: &str, subject_ref: &str) -> bool {
    envelope["payload"].to_string().contains(&format!("\"{subject}\""))
        || envelope["aggregateId"].as_str().unwrap().ends_with(subject_ref)
}

async fn exported(s: &TestServer, subject_ref: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE aggregate_type = 'subject' AND aggregate_id = $1
           AND event_type = 'AuditExported' ORDER BY sequence",
    )
    .bind(subject_ref)
    .fetch_all(s.rt.store.pool())
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_export_writes_the_subjects_envelopes_only_and_records_the_export() {
    let db = TestDb::new().await;
    let s = server(&db).await;
    let set_clock = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER);
    assert_eq!(set_clock.json(&json!({"now": "2026-12-01T16:00:00Z"})).send().await.unwrap().status(), 200);
    let a = org(&s, "alpha").await;
    let b = org(&s, "bravo").await;
    for (o, to) in [(&a, PHONE), (&a, OTHER), (&b, PHONE)] {
        let agent = Session::open(&s, &o.agent_token).await;
        agent.ok("comms_record_consent", json!({"contactAddress": to, "channel": "sms"})).await;
        agent.ok("comms_send_message", json!({"to": to, "body": format!("Hello {to}")})).await;
    }
    Session::open(&s, MASTER)
        .await
        .ok("comms_set_billing_config", json!({"agentId": a.agent_id, "billingEmail": EMAIL}))
        .await;
    let keys = s.rt.store.keystore().data_keys();
    let (phone_ref, email_ref) = (keys.blind_index(PHONE), keys.blind_index(EMAIL));

    // To a file, the subject as typed: every line is an envelope about PHONE, in position order,
    // opened, and nothing about anyone else; both orgs' events without --org.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("phone.jsonl");
    let out =
        commguard(&db, &["audit", "export", "--subject", "+1 (202) 555-0100", "--out", file.to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stdout(&out).is_empty(), "with --out nothing goes to stdout");
    let envelopes = lines(&std::fs::read_to_string(&file).unwrap());
    assert!(envelopes.iter().all(|e| about(e, PHONE, &phone_ref)), "only the subject's events");
    let positions: Vec<i64> = envelopes.iter().map(|e| e["position"].as_i64().unwrap()).collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "by position");
    let types: Vec<&str> = envelopes.iter().map(|e| e["eventType"].as_str().unwrap()).collect();
    assert_eq!(types, ["ConsentGranted", "MessageSent", "ConsentGranted", "MessageSent"], "{types:?}");
    assert_eq!(envelopes[1]["payload"]["to"], PHONE);
    assert_eq!(envelopes[1]["payload"]["body"], format!("Hello {PHONE}"));
    let orgs: Vec<&str> = envelopes.iter().map(|e| e["orgId"].as_str().unwrap()).collect();
    assert_eq!(orgs, [a.id.as_str(), a.id.as_str(), b.id.as_str(), b.id.as_str()]);
    // Exactly the events the audit view indexes under the subject.
    let indexed: Vec<i64> = sqlx::query_scalar(
        "SELECT position FROM audit_items WHERE subject_ref = $1 AND event_type <> 'AuditExported' ORDER BY position",
    )
    .bind(&phone_ref)
    .fetch_all(s.rt.store.pool())
    .await
    .unwrap();
    assert_eq!(positions, indexed);

    // Recorded on the subject's stream, with the count and no identifier in the clear.
    let recorded = exported(&s, &phone_ref).await;
    assert_eq!(recorded, [json!({"count": 4, "requestedBy": "cli"})]);
    let plain: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE payload::text LIKE '%2025550100%' OR metadata::text LIKE '%2025550100%'",
    )
    .fetch_one(s.rt.store.pool())
    .await
    .unwrap();
    assert_eq!(plain, 0, "the number is nowhere in the clear");

    // To stdout, an email, one org (by slug): the billing email event on the agent's stream.
    let out = commguard(&db, &["audit", "export", "--subject", "Bob@Example.com", "--org", &a.slug]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let envelopes = lines(&stdout(&out));
    assert_eq!(envelopes.len(), 1);
    assert_eq!(envelopes[0]["eventType"], "BillingConfigChanged");
    assert_eq!(envelopes[0]["payload"]["billingEmail"], EMAIL);
    assert_eq!(exported(&s, &email_ref).await, [json!({"count": 1, "requestedBy": "cli"})]);
    let with_org: Value =
        sqlx::query_scalar("SELECT metadata::jsonb FROM events WHERE aggregate_type = 'subject' AND aggregate_id = $1")
            .bind(&email_ref)
            .fetch_one(s.rt.store.pool())
            .await
            .unwrap();
    assert_eq!((with_org["orgId"].as_str(), with_org["actor"]["kind"].as_str()), (Some(a.id.as_str()), Some("cli")));

    // A time window and an org narrow it; an erased subject exports "[erased]" fields.
    let later = commguard(&db, &["audit", "export", "--subject", PHONE, "--from", "2030-01-01T00:00:00Z"]).await;
    assert_eq!((later.status.code(), stdout(&later).as_str()), (Some(0), ""));
    assert_eq!(exported(&s, &phone_ref).await.last().unwrap()["count"], 0);
    assert_eq!(s.rt.store.keystore().destroy_subject(Some(&a.id), &phone_ref).await.unwrap(), 1);
    let out =
        commguard(&db, &["audit", "export", "--subject", PHONE, "--org", &a.id, "--to", "2030-01-01T00:00:00Z"]).await;
    let envelopes = lines(&stdout(&out));
    let types: Vec<&str> = envelopes.iter().map(|e| e["eventType"].as_str().unwrap()).collect();
    assert_eq!(types, ["ConsentGranted", "MessageSent"], "org A's only (the exports without --org have no org)");
    assert_eq!(envelopes[1]["payload"]["to"], "[erased]");
    assert!(envelopes[1]["redactions"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["path"] == "to" && r["reason"] == "subject_erased"));

    // Bad input: a subject that is neither a number nor an email, or a bad time, is a usage
    // error; an unknown org is refused.
    assert_eq!(commguard(&db, &["audit", "export", "--subject", "nobody"]).await.status.code(), Some(2));
    assert_eq!(
        commguard(&db, &["audit", "export", "--subject", PHONE, "--from", "today"]).await.status.code(),
        Some(2)
    );
    let unknown = commguard(&db, &["audit", "export", "--subject", PHONE, "--org", "no-such-org"]).await;
    assert_eq!(unknown.status.code(), Some(1), "{}", stderr(&unknown));
    // An export that cannot be written is not made, and not recorded as made.
    let before = exported(&s, &phone_ref).await.len();
    let nowhere = dir.path().join("no-such-dir").join("x.jsonl");
    let unwritable = commguard(&db, &["audit", "export", "--subject", PHONE, "--out", nowhere.to_str().unwrap()]).await;
    assert_eq!(unwritable.status.code(), Some(2), "{}", stderr(&unwritable));
    assert_eq!(exported(&s, &phone_ref).await.len(), before, "no AuditExported for an export never written");
    s.stop().await;
}

/// `commguard replay --projection alerts|anomaly|sessions` rebuilds each from position 0: the
/// tables emptied behind the server's back come back with the rows the events say.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_rebuilds_alerts_anomaly_and_sessions_from_zero() {
    let db = TestDb::new().await;
    let s = TestServer::start(
        &db,
        &[
            ("MASTER_SECURITY_TOKEN", MASTER),
            ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
            ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
            ("BRUTE_FORCE_MAX_FAILURES", "3"),
        ],
    )
    .await;
    let o = org(&s, "replayed").await;
    let _agent = Session::open(&s, &o.agent_token).await;
    let _admin = Session::open(&s, &o.admin).await;
    for _ in 0..3 {
        assert_eq!(me(&s, "not-a-token").await.0, 401);
    }
    let pool = db.pool().await;
    let scalar = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, String>(sql).fetch_one(&pool).await.unwrap() }
    };
    const ALERTS: &str = "SELECT COALESCE(string_agg(concat_ws('|', position, alert_id, rule, org_id, occurrences), ',' ORDER BY position), '') FROM alerts";
    const WINDOWS: &str = "SELECT COALESCE(string_agg(concat_ws('|', counter, subject_id, window_start, window_end, org_id, count), ',' ORDER BY counter, subject_id, window_start), '') FROM anomaly_windows";
    const SESSIONS: &str = "SELECT COALESCE(string_agg(concat_ws('|', session_id, principal, org_id, transport, opened_at, closed_at, close_reason), ',' ORDER BY session_id), '') FROM mcp_sessions";
    // What the events say, once the live projections have caught up: every session opened so far
    // is in the sessions view (the org's set-up opened some too).
    let opened: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'SessionOpened'")
        .fetch_one(&pool)
        .await
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let (alerts, windows, sessions) = loop {
        let seen = (scalar(ALERTS).await, scalar(WINDOWS).await, scalar(SESSIONS).await);
        let listed = seen.2.matches(',').count() as i64 + 1;
        if seen.0.contains("brute_force_lockout") && seen.1.contains("lockout|") && listed >= opened.max(2) {
            break seen;
        }
        assert!(std::time::Instant::now() < deadline, "the live projections never caught up: {seen:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(windows.contains("token_issued|") && windows.contains("auth_failed|"), "{windows}");
    assert!(sessions.contains(&format!("agent:{}", o.agent_id)), "{sessions}");
    s.stop().await;
    // Stopping closed the sessions (SessionClosed, not projected by the stopped server).
    let closed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'SessionClosed'")
        .fetch_one(&pool)
        .await
        .unwrap();

    for table in ["alerts", "anomaly_windows", "mcp_sessions"] {
        sqlx::query(&format!("DELETE FROM {table}")).execute(&pool).await.unwrap();
    }
    for projection in ["alerts", "anomaly", "sessions"] {
        let out = commguard(&db, &["replay", "--projection", projection]).await;
        assert_eq!(out.status.code(), Some(0), "{projection}: {}", stderr(&out));
        assert!(stderr(&out).contains(&format!("projection {projection} rebuilt")), "{}", stderr(&out));
    }
    assert_eq!(scalar(ALERTS).await, alerts);
    assert_eq!(scalar(WINDOWS).await, windows);
    let rebuilt: Vec<(Option<chrono::DateTime<chrono::Utc>>,)> =
        sqlx::query_as("SELECT closed_at FROM mcp_sessions ORDER BY session_id").fetch_all(&pool).await.unwrap();
    assert_eq!(rebuilt.len(), sessions.matches(',').count() + 1, "every session opened");
    assert_eq!(rebuilt.iter().filter(|(c,)| c.is_some()).count() as i64, closed, "closed as the events say");
}

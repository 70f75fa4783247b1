//! The console (`GET /admin`, issue 21) in a real headless Chromium driven by Selenium
//! (`tests/e2e/console_browser.py`), against a real server and Postgres: the page and its CSP,
//! then the auditor's scenario — sign in with an org token, its agents and no other org's, a
//! refused send found by the recipient's number with the rule that refused it, consent as of an
//! instant before its revocation, a chain recomputed in the browser (OK), one stored event
//! tampered with SQL and the chain recomputed again (BROKEN at its sequence). Wrong tokens from
//! the page count toward the lockout. Screenshots of every view go to
//! `target/test-artifacts/console/`.

use serde_json::{json, Value};

use crate::mcp_e2e::run_script;
use crate::support::{provision, wait_visible, McpSession as Session, TestDb, TestServer};

const MASTER: &str = "console-test-master-token-0123456789abcdef";
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; frame-ancestors 'none'";

fn vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ("COMMGUARD_TEST_CLOCK", "true"),
        ("ANOMALY_CHECK_INTERVAL_SECONDS", "1"),
    ]
}

async fn set_clock(s: &TestServer, now: &str) {
    let r = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER).json(&json!({"now": now})).send().await;
    assert_eq!(r.unwrap().status(), 200);
}

async fn get(s: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let r = s.http.get(s.url(path)).bearer_auth(token).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_page_is_embedded_strict_and_uses_only_the_api() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let page = s.http.get(s.url("/admin")).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let headers = page.headers().clone();
    assert_eq!(headers["content-security-policy"], CSP, "docs/http.md#headers-and-cors, exactly, for the admin page");
    assert!(headers["content-type"].to_str().unwrap().starts_with("text/html"));
    for (name, value) in [
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        ("referrer-policy", "strict-origin-when-cross-origin"),
        ("cache-control", "no-store"),
    ] {
        assert_eq!(headers[name], value, "{name} stays");
    }
    assert!(headers.get("set-cookie").is_none(), "no cookie");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>") && !html.contains("style=") && !html.contains("<style"), "nothing inline");
    assert!(!html.contains("http://") && !html.contains("https://"), "no third-party origin");

    // The assets are embedded; they keep the API's `default-src 'none'`.
    for (path, kind) in [
        ("/admin/console.js", "text/javascript"),
        ("/admin/jcs.js", "text/javascript"),
        ("/admin/console.css", "text/css"),
        ("/admin/icon.svg", "image/svg+xml"),
    ] {
        let r = s.http.get(s.url(path)).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        assert_eq!(r.headers()["content-security-policy"], "default-src 'none'", "{path}");
        // The SVG namespace is a name, not an origin anything is fetched from.
        let body = r.text().await.unwrap().replace("xmlns=\"http://www.w3.org/2000/svg\"", "");
        assert!(!body.contains("http://") && !body.contains("https://"), "{path} names no other origin");
    }
    // The page calls the admin API and nothing else.
    let script = s.http.get(s.url("/admin/console.js")).send().await.unwrap().text().await.unwrap();
    for piece in script.split("api(\"").skip(1) {
        assert!(piece.starts_with("/admin/api/"), "the console calls only the admin API: {}", &piece[..40]);
    }
    assert!(!script.contains("document.cookie") && !script.contains("localStorage"), "the token stays in the tab");
    // The API's own routes keep their CSP; an unknown console path is the JSON 404.
    let api = s.http.get(s.url("/admin/api/openapi.json")).send().await.unwrap();
    assert_eq!(api.headers()["content-security-policy"], "default-src 'none'");
    let unknown = s.http.get(s.url("/admin/nothing.js")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.headers()["content-security-policy"], "default-src 'none'");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_routes_are_for_the_master_token_and_list_a_stream_raw() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let a = provision(&s, MASTER, "chains-a", json!({}), "A", json!({"phone": true})).await;
    let (status, body) = get(&s, &a.admin, "/admin/api/chains").await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    let path = format!("/admin/api/chains/agent/{}/events", a.agent_id);
    let (status, _) = get(&s, &a.admin, &path).await;
    assert_eq!(status, 403, "raw payloads are master-only");

    let (status, page) = get(&s, MASTER, "/admin/api/chains?aggregateType=agent&limit=500").await;
    assert_eq!(status, 200, "{page}");
    let head = page["chains"].as_array().unwrap().iter().find(|h| h["aggregateId"] == a.agent_id.as_str()).unwrap();
    let last = head["lastSequence"].as_i64().unwrap();
    assert!(last >= 2, "{head}");
    let (status, stream) = get(&s, MASTER, &format!("{path}?limit=1")).await;
    assert_eq!(status, 200, "{stream}");
    assert_eq!(stream["head"], *head);
    assert_eq!(stream["events"][0]["sequence"], 1);
    assert!(stream["events"][0]["metadata"].is_object(), "raw: the stored metadata");
    assert_eq!(stream["nextAfter"], 1);
    let (_, rest) = get(&s, MASTER, &format!("{path}?after=1")).await;
    assert_eq!(rest["events"].as_array().unwrap().len() as i64, last - 1);
    assert_eq!(rest["events"].as_array().unwrap().last().unwrap()["hash"], head["lastHash"]);

    let (status, body) = get(&s, MASTER, "/admin/api/chains/agent/nobody/events").await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")));
    let (status, body) = get(&s, MASTER, &format!("{path}?limit=0")).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("limit")));
    let (status, body) = get(&s, MASTER, &format!("{path}?after=-1")).await;
    assert_eq!((status, body["field"].as_str()), (400, Some("after")));
    let (status, body) = get(&s, MASTER, "/admin/api/chains?cursor=nope").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("cursor")));
    // Cursor paging walks every head once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let (_, page) = get(&s, MASTER, &format!("/admin/api/chains?limit=2&cursor={cursor}")).await;
        seen.extend(page["chains"].as_array().unwrap().iter().map(|h| h["aggregateId"].to_string()));
        match page["nextCursor"].as_str() {
            Some(next) => cursor = next.to_string(),
            None => break,
        }
    }
    let heads: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM chain_heads").fetch_one(&db.pool().await).await.unwrap();
    assert_eq!(seen.len() as i64, heads);
    s.stop().await;
}

/// The first refused `/audit` item about `subject`, once the view has it.
async fn refused_about(s: &TestServer, token: &str, subject: &str) -> Value {
    let path = format!("/admin/api/audit?subject={}&outcome=refused", subject.replace('+', "%2B"));
    for _ in 0..300 {
        let (status, body) = get(s, token, &path).await;
        assert_eq!(status, 200, "{body}");
        if let Some(item) = body["items"].as_array().unwrap().first() {
            return item.clone();
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("the audit view never showed the refused send");
}

/// Waits until the org's token sees an alert (the detector runs every second).
async fn await_org_alert(s: &TestServer, token: &str) {
    for _ in 0..300 {
        let (status, body) = get(s, token, "/admin/api/alerts").await;
        assert_eq!(status, 200, "{body}");
        if !body["alerts"].as_array().unwrap().is_empty() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("no alert was raised for the org");
}

/// How many `event_type` events the store holds (`AuthFailed`: those of the admin API).
async fn events_of_type(pool: &sqlx::PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE event_type = $1 AND (event_type <> 'AuthFailed' OR payload->>'route' = '/admin/api')",
    )
        .bind(event_type)
        .fetch_one(pool)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_uses_the_console_in_a_real_browser() {
    let db = TestDb::new().await;
    let pool = db.pool().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T09:00:00Z").await;
    // A detector run that read the real clock just before would prune the windows written now
    // (tests/integration/anomaly.rs, `set_clock`); the next run (1 s) reads the set clock.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    let org = provision(&s, MASTER, "console-a", json!({}), "Front desk", json!({"phone": true})).await;
    let other = provision(&s, MASTER, "console-b", json!({}), "Elsewhere", json!({"phone": true})).await;
    let admin = Session::open(&s, &org.admin).await;
    let agent = Session::open(&s, &org.agent_token).await;
    let caps = json!({"maxSpendPerDay": 0.05, "maxSpendPerMonth": 20});
    let settings = s.http.post(s.url(&format!("/admin/api/orgs/{}/settings", org.org_id))).bearer_auth(&org.admin);
    assert_eq!(settings.json(&caps).send().await.unwrap().status(), 200);

    // Consent granted at 09:10 and revoked at 11:10; the console asks as of 10:00.
    let contact = "+12025550144";
    set_clock(&s, "2026-12-01T09:10:00Z").await;
    admin
        .ok("comms_record_consent", json!({"agentId": org.agent_id, "contactAddress": contact, "channel": "sms"}))
        .await;
    set_clock(&s, "2026-12-01T11:10:00Z").await;
    admin
        .ok("comms_revoke_consent", json!({"agentId": org.agent_id, "contactAddress": contact, "channel": "sms"}))
        .await;

    // At 14:00 one message is sent, and a second refused by a per-minute limit of 1: a rate_limit alert.
    set_clock(&s, "2026-12-01T14:00:00Z").await;
    let master = Session::open(&s, MASTER).await;
    master.ok("comms_set_agent_limits", json!({"agentId": org.agent_id, "limits": {"maxActionsPerMinute": 1}})).await;
    let customer = "+12025550100";
    admin
        .ok("comms_record_consent", json!({"agentId": org.agent_id, "contactAddress": customer, "channel": "sms"}))
        .await;
    agent.ok("comms_send_message", json!({"to": customer, "body": "Your table is ready."})).await;
    let (limited, reply) = agent.call("comms_send_message", json!({"to": customer, "body": "Again"})).await;
    assert!(limited && reply["limitType"] == "per-minute", "{reply}");
    await_org_alert(&s, &org.admin).await;

    // A send refused because the recipient is on the do-not-contact list.
    let phone = "+12025550177";
    set_clock(&s, "2026-12-01T15:00:00Z").await;
    admin.ok("comms_record_consent", json!({"agentId": org.agent_id, "contactAddress": phone, "channel": "sms"})).await;
    admin.ok("comms_dnc_add", json!({"address": phone})).await;
    let (refused, reply) = agent.call("comms_send_message", json!({"to": phone, "body": "Your table is ready."})).await;
    assert!(refused, "{reply}");
    let item = refused_about(&s, &org.admin, phone).await;
    assert_eq!(
        (item["eventType"].as_str(), item["refusedBy"].as_str()),
        (Some("MessageBlocked"), Some("dnc")),
        "{item}"
    );
    let total: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(&pool).await.unwrap();
    wait_visible(&pool, total).await;

    let artifacts = concat!(env!("CARGO_MANIFEST_DIR"), "/target/test-artifacts/console");
    std::fs::create_dir_all(artifacts).unwrap();
    let aggregate = format!("agent/{}", org.agent_id);
    let base = s.base.clone();
    let scenario: Vec<(&str, String)> = vec![
        ("CONSOLE_ORG_TOKEN", org.admin.clone()),
        ("CONSOLE_ORG_AGENTS", org.agent_id.clone()),
        ("CONSOLE_OTHER_AGENT", other.agent_id.clone()),
        ("CONSOLE_PHONE", phone.into()),
        ("CONSOLE_RULE", "dnc".into()),
        ("CONSOLE_CONTACT", contact.into()),
        ("CONSOLE_BEFORE_REVOCATION", "2026-12-01T10:00:00Z".into()),
        ("CONSOLE_MASTER_TOKEN", MASTER.into()),
        ("CONSOLE_AGGREGATE", aggregate.clone()),
        ("CONSOLE_TAMPERED_SEQUENCE", "2".into()),
        ("CONSOLE_ALERT_RULE", "rate_limit".into()),
    ];
    let phase = |name: &'static str| {
        let (base, scenario) = (base.clone(), scenario.clone());
        tokio::task::spawn_blocking(move || {
            let env: Vec<(&str, &str)> = scenario.iter().map(|(k, v)| (*k, v.as_str())).collect();
            run_script("console_browser.py", &[name, &base, artifacts], &env);
        })
    };

    phase("org").await.unwrap();
    // The wrong token the page sent was counted like any other failure (then reset by the sign-in).
    assert_eq!(events_of_type(&pool, "AuthFailed").await, 1);
    phase("verify").await.unwrap();

    // Tamper with the agent's second event, bypassing the append-only trigger as an intruder would.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only").execute(&mut *tx).await.unwrap();
    let changed = sqlx::query(
        "UPDATE events SET payload = jsonb_set(payload::jsonb, '{label}', '\"forged\"')::json
         WHERE aggregate_type = 'agent' AND aggregate_id = $1 AND sequence = 2",
    )
    .bind(&org.agent_id)
    .execute(&mut *tx)
    .await
    .unwrap();
    assert_eq!(changed.rows_affected(), 1);
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_append_only").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();

    phase("broken").await.unwrap();
    // Ten wrong tokens from the page locked the IP out; the eleventh was refused while locked.
    assert_eq!(events_of_type(&pool, "IpLockedOut").await, 1);
    assert_eq!(events_of_type(&pool, "AuthFailed").await, 12);
    for view in [
        "signin-refused",
        "agents",
        "agents-phone",
        "activity",
        "audit",
        "consent",
        "alerts",
        "verify-org",
        "verify-ok",
        "verify-broken",
        "signin-locked-out",
    ] {
        let png = std::fs::read(format!("{artifacts}/{view}.png")).unwrap();
        assert!(png.starts_with(b"\x89PNG"), "{view}.png is a screenshot");
    }
    s.stop().await;
}

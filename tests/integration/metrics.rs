//! `GET /metrics` (docs/http.md#routes, docs/http.md#rate-limits-and-brute-force, docs/monitoring.md): read by the official Python Prometheus parser
//! (`tests/e2e/prom_parse.py` in the e2e venv) after real tool calls, sends, limit refusals,
//! webhook rejections, HTTP rate-limit hits and a lockout; the master token or an
//! `ADMIN_IP_ALLOWLIST` hit is required, and failures count toward the lockout.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use crate::support::{McpSession as Session, TestDb, TestServer};

const MASTER: &str = "metrics-test-master-token-0123456789abcdef";

fn python() -> String {
    std::env::var("COMMGUARD_TEST_PYTHON").expect(
        "COMMGUARD_TEST_PYTHON names the venv python with prometheus_client; run the suite through scripts/test.sh",
    )
}

/// The families of `text` as the Prometheus parser reads them.
fn parse(text: &str) -> Vec<Value> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
    let mut child = Command::new(python())
        .current_dir(dir)
        .arg("prom_parse.py")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("the e2e python runs");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused:\n{text}\n{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).unwrap().as_array().unwrap().clone()
}

/// The value of sample `name` with exactly `labels`, if present.
fn sample(families: &[Value], name: &str, labels: Value) -> Option<f64> {
    families
        .iter()
        .flat_map(|f| f["samples"].as_array().unwrap())
        .find(|s| s[0] == name && s[1] == labels)
        .map(|s| s[2].as_f64().unwrap())
}

async fn scrape(s: &TestServer, from: Option<&str>, token: Option<&str>) -> reqwest::Response {
    let mut request = s.http.get(s.url("/metrics"));
    if let Some(ip) = from {
        request = request.header("x-forwarded-for", ip);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    request.send().await.unwrap()
}

/// Scrapes as the master and parses; every family must be typed.
async fn families(s: &TestServer) -> Vec<Value> {
    let r = scrape(s, None, Some(MASTER)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/plain; version=0.0.4; charset=utf-8");
    let families = parse(&r.text().await.unwrap());
    for f in &families {
        assert_ne!(f["type"], "unknown", "an untyped family: {f}");
    }
    families
}

async fn count(db: &TestDb, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&db.pool().await)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_follow_tool_calls_sends_limit_refusals_and_webhook_rejections() {
    let db = TestDb::new().await;
    let vars = [
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ("COMMGUARD_TEST_CLOCK", "true"),
    ];
    let s = TestServer::start(&db, &vars).await;

    // No credential: 401, counted toward the lockout, with the security headers.
    let refused = scrape(&s, None, None).await;
    assert_eq!(refused.status(), 401);
    assert_eq!(refused.headers()["x-content-type-options"], "nosniff");
    assert_eq!(refused.headers()["content-security-policy"], "default-src 'none'");
    assert_eq!(refused.headers()["www-authenticate"], "Bearer realm=\"commguard\"");
    assert_eq!(scrape(&s, None, Some("not-a-token")).await.status(), 401);
    assert_eq!(count(&db, "AuthFailed").await, 2);

    let before = families(&s).await;
    assert!(sample(&before, "mcp_uptime_seconds", json!({})).is_some_and(|u| u >= 0.0));
    assert_eq!(sample(&before, "mcp_alerts_total", json!({"severity": "HIGH"})), Some(0.0));
    // Every family of the contract is there from the start, each bounded label value at zero, so a
    // rate over it reads 0, not "no data".
    for (name, labels) in [
        ("mcp_messages_sent_total", json!({"channel": "sms"})),
        ("mcp_messages_sent_total", json!({"channel": "voice"})),
        ("mcp_rate_limit_hits_total", json!({"limit_type": "per-minute"})),
        ("mcp_rate_limit_hits_total", json!({"limit_type": "contact-frequency"})),
        ("mcp_anomaly_detected_total", json!({"type": "volume_spike"})),
        ("mcp_anomaly_detected_total", json!({"type": "brute_force_lockout"})),
        ("commguard_tool_calls_total", json!({"tool": "comms_send_message", "outcome": "ok"})),
        ("commguard_webhook_rejections_total", json!({"route": "sms", "reason": "signature"})),
        ("commguard_webhook_rejections_total", json!({"route": "email", "reason": "unknown_target"})),
    ] {
        assert_eq!(sample(&before, name, labels.clone()), Some(0.0), "{name} {labels}");
    }
    assert_eq!(sample(&before, "mcp_http_rate_limit_hits_total", json!({"scope": "per_ip"})), Some(0.0));
    for projection in ["orgs", "agents", "tokens", "audit"] {
        let lag = sample(&before, "commguard_projection_lag_events", json!({"projection": projection}));
        assert!(lag.is_some_and(|l| l >= 0.0), "{projection}: {lag:?}");
    }

    // 11:00 in Washington: inside calling hours.
    let clock = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER);
    assert!(clock.json(&json!({"now": "2026-12-01T16:00:00Z"})).send().await.unwrap().status().is_success());
    let master = Session::open(&s, MASTER).await;
    let org = master
        .ok("comms_create_organization", json!({"name": "Metrics", "slug": "metrics", "a2pRegistered": true}))
        .await;
    let org_token = org["adminToken"].as_str().unwrap().to_string();
    let admin = Session::open(&s, &org_token).await;
    let agent =
        admin.ok("comms_provision_channels", json!({"displayName": "Sender", "capabilities": {"phone": true}})).await;
    let agent_id = agent["agentId"].as_str().unwrap().to_string();
    let me = Session::open(&s, agent["securityToken"].as_str().unwrap()).await;
    me.ok("comms_record_consent", json!({"contactAddress": "+12025550100", "channel": "sms"})).await;
    master.ok("comms_set_agent_limits", json!({"agentId": agent_id, "limits": {"maxActionsPerMinute": 2}})).await;
    for _ in 0..2 {
        me.ok("comms_send_message", json!({"to": "+12025550100", "body": "Your table is ready."})).await;
    }
    let (is_error, refusal) = me.call("comms_send_message", json!({"to": "+12025550100", "body": "Again"})).await;
    assert!(is_error && refusal["limitType"] == "per-minute", "{refusal}");
    let (is_error, _) = me.call("comms_no_such_tool", json!({})).await;
    assert!(is_error);

    // A webhook that is not a form: rejected as malformed.
    let webhook = s
        .http
        .post(s.url(&format!("/webhooks/{agent_id}/sms")))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(webhook.status(), 400);

    // An org token is a valid credential but not the master's.
    assert_eq!(scrape(&s, None, Some(&org_token)).await.status(), 403);

    let after = families(&s).await;
    let tool = |name: &str, outcome: &str| {
        sample(&after, "commguard_tool_calls_total", json!({"tool": name, "outcome": outcome}))
    };
    assert_eq!(tool("comms_send_message", "ok"), Some(2.0));
    assert_eq!(tool("comms_send_message", "rate_limited"), Some(1.0));
    assert_eq!(tool("comms_record_consent", "ok"), Some(1.0));
    assert_eq!(tool("unknown", "not_found"), Some(1.0));
    assert_eq!(sample(&after, "mcp_messages_sent_total", json!({"channel": "sms"})), Some(2.0));
    assert_eq!(sample(&after, "mcp_rate_limit_hits_total", json!({"limit_type": "per-minute"})), Some(1.0));
    assert_eq!(
        sample(&after, "commguard_webhook_rejections_total", json!({"route": "sms", "reason": "malformed"})),
        Some(1.0)
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_authorises_failures_lock_out_and_rate_limit_hits_are_counted() {
    let db = TestDb::new().await;
    let vars = [
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("TRUST_PROXY", "1"),
        ("ADMIN_IP_ALLOWLIST", "10.9.9.0/24"),
        ("HTTP_RATE_LIMIT_PER_IP", "20"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
    ];
    let s = TestServer::start(&db, &vars).await;

    // An allowlisted address needs no token.
    let allowed = scrape(&s, Some("10.9.9.7"), None).await;
    assert_eq!(allowed.status(), 200);
    assert!(parse(&allowed.text().await.unwrap()).iter().any(|f| f["name"] == "mcp_uptime_seconds"));

    // Ten failures from one address lock it: one HIGH alert; the locked address gets 429.
    for n in 1..=10 {
        assert_eq!(scrape(&s, Some("203.0.113.5"), None).await.status(), 401, "failure {n}");
    }
    assert_eq!(count(&db, "IpLockedOut").await, 1);
    assert_eq!(count(&db, "AlertRaised").await, 1);
    assert_eq!(scrape(&s, Some("203.0.113.5"), Some(MASTER)).await.status(), 429);

    // The 21st request from one address in a minute is refused by the per-IP limit.
    for _ in 0..20 {
        assert_eq!(
            s.http.get(s.url("/health")).header("x-forwarded-for", "198.51.100.7").send().await.unwrap().status(),
            200
        );
    }
    let limited = s.http.get(s.url("/health")).header("x-forwarded-for", "198.51.100.7").send().await.unwrap();
    assert_eq!(limited.status(), 429);

    let r = scrape(&s, Some("10.9.9.8"), None).await;
    assert_eq!(r.status(), 200);
    let families = parse(&r.text().await.unwrap());
    assert_eq!(sample(&families, "mcp_alerts_total", json!({"severity": "HIGH"})), Some(1.0));
    assert_eq!(sample(&families, "mcp_anomaly_detected_total", json!({"type": "brute_force_lockout"})), Some(1.0));
    assert_eq!(sample(&families, "mcp_http_rate_limit_hits_total", json!({"scope": "per_ip"})), Some(1.0));
    assert_eq!(sample(&families, "mcp_http_rate_limit_hits_total", json!({"scope": "global"})), Some(0.0));
    s.stop().await;
}

/// Every webhook refusal is counted, whether or not it names an agent of ours: an unknown agent,
/// an `:agentId` that is not even text, a bad signature, a replay, a number that is not the
/// agent's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_webhook_rejection_is_counted_known_agent_or_not() {
    const AUTH_TOKEN: &str = "metrics-twilio-auth-token";
    const BASE: &str = "https://hooks.example.com";
    let db = TestDb::new().await;
    let vars = [
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ("WEBHOOK_BASE_URL", BASE),
        ("TWILIO_ACCOUNT_SID", "ACtest"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("TWILIO_API_BASE_URL", "http://127.0.0.1:9"),
    ];
    let s = TestServer::start(&db, &vars).await;
    let p = crate::support::provision(&s, MASTER, "hooks", json!({}), "Inbox", json!({"phone": true})).await;
    let number = p.number.expect("a phone agent has a number");
    let post = |path: String, params: Vec<(&'static str, String)>, signature: Option<String>| {
        let s = &s;
        async move {
            let owned: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
            let signature = signature.unwrap_or_else(|| {
                commguard::webhooks::signature::twilio_expected(AUTH_TOKEN, &format!("{BASE}{path}"), &owned)
            });
            let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(&owned).finish();
            let r = s
                .http
                .post(s.url(&path))
                .header("content-type", "application/x-www-form-urlencoded")
                .header("x-twilio-signature", signature)
                .body(body)
                .send()
                .await
                .unwrap();
            r.status().as_u16()
        }
    };
    let inbound = |sid: &str, to: &str| {
        vec![
            ("MessageSid", sid.to_string()),
            ("From", "+12025550177".to_string()),
            ("To", to.to_string()),
            ("Body", "hi".to_string()),
        ]
    };
    let stranger = "00000000-0000-4000-8000-000000000000";
    let sms = format!("/webhooks/{}/sms", p.agent_id);

    assert_eq!(post(format!("/webhooks/{stranger}/sms"), inbound("SM0", &number), None).await, 404);
    assert_eq!(post(format!("/webhooks/{stranger}/call-status"), vec![], None).await, 404);
    let email = s.http.post(s.url(&format!("/webhooks/{stranger}/email"))).body("{}").send().await.unwrap();
    assert_eq!(email.status(), 404);
    assert_eq!(post("/webhooks/%00/sms".into(), inbound("SM0", &number), None).await, 400);
    assert_eq!(post(sms.clone(), inbound("SM1", &number), Some("bm90IGl0".into())).await, 403);
    assert_eq!(post(sms.clone(), inbound("SM2", &number), None).await, 200);
    assert_eq!(post(sms.clone(), inbound("SM2", &number), None).await, 403, "a replay");
    assert_eq!(post(sms.clone(), inbound("SM3", "+12025550999"), None).await, 404, "not the agent's number");

    let after = families(&s).await;
    let rejected = |route: &str, reason: &str| {
        sample(&after, "commguard_webhook_rejections_total", json!({"route": route, "reason": reason}))
    };
    assert_eq!(rejected("sms", "unknown_agent"), Some(1.0));
    assert_eq!(rejected("call-status", "unknown_agent"), Some(1.0));
    assert_eq!(rejected("email", "unknown_agent"), Some(1.0));
    assert_eq!(rejected("sms", "malformed"), Some(1.0));
    assert_eq!(rejected("sms", "signature"), Some(1.0));
    assert_eq!(rejected("sms", "replay"), Some(1.0));
    assert_eq!(rejected("sms", "unknown_target"), Some(1.0));
    // The refusals about our agent are also events on its stream; the others have none.
    assert_eq!(count(&db, "WebhookRejected").await, 2);
    s.stop().await;
}

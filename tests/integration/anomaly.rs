//! The anomaly detector (CONTRACT §14) on the anomaly projection's windows: `brute_force`,
//! `rapid_rotation` and `volume_spike` fire at their thresholds and not one below, and two
//! instances evaluating the same window raise exactly one alert.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::support::{McpSession as Session, TestDb, TestServer};

const MASTER: &str = "anomaly-test-master-token-0123456789abcdef";
const VARS: [(&str, &str); 8] = [
    ("MASTER_SECURITY_TOKEN", MASTER),
    ("TRUST_PROXY", "1"),
    ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
    ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
    ("COMMGUARD_TEST_CLOCK", "true"),
    ("ANOMALY_CHECK_INTERVAL_SECONDS", "1"),
    ("ANOMALY_VOLUME_MIN_ACTIONS", "3"),
    // No lockout in the way: brute_force counts failures on its own.
    ("BRUTE_FORCE_MAX_FAILURES", "1000"),
];

/// 16:00:30Z: 11:00 in Washington, 4.5 minutes before the 5-minute window ends.
async fn set_clock(s: &TestServer) {
    let clock = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER);
    assert!(clock.json(&json!({"now": "2026-12-01T16:00:30Z"})).send().await.unwrap().status().is_success());
}

async fn alerts(db: &TestDb, rule: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'AlertRaised' AND payload::jsonb ->> 'rule' = $1",
    )
    .bind(rule)
    .fetch_one(&db.pool().await)
    .await
    .unwrap()
}

/// Several detector runs (1 s apart) after the projection caught up.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(2500)).await;
}

async fn await_alert(db: &TestDb, rule: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while alerts(db, rule).await == 0 {
        assert!(Instant::now() < deadline, "no {rule} alert");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fail_auth(s: &TestServer, ip: &str) {
    let r =
        s.http.get(s.url("/admin/api/alerts")).header("x-forwarded-for", ip).bearer_auth("wrong").send().await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn brute_force_fires_above_ten_failures_once_across_two_instances() {
    let db = TestDb::new().await;
    let a = TestServer::start(&db, &VARS).await;
    let b = TestServer::start(&db, &VARS).await;
    set_clock(&a).await;
    set_clock(&b).await;
    for n in 0..10 {
        fail_auth(if n % 2 == 0 { &a } else { &b }, "203.0.113.20").await;
    }
    settle().await;
    assert_eq!(alerts(&db, "brute_force").await, 0, "ten failures are not more than ten");
    fail_auth(&b, "203.0.113.20").await;
    await_alert(&db, "brute_force").await;
    settle().await;
    assert_eq!(alerts(&db, "brute_force").await, 1, "one alert for the window, whichever instance saw it first");

    let (status, body): (u16, Value) = {
        let r = a.http.get(a.url("/admin/api/alerts?rule=brute_force")).bearer_auth(MASTER).send().await.unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    };
    assert_eq!(status, 200);
    let alert = &body["alerts"][0];
    assert_eq!(
        (&alert["severity"], &alert["title"], &alert["subjectKind"]),
        (&json!("HIGH"), &json!("Brute-force auth detected"), &json!("ip"))
    );
    let r = b.http.get(b.url("/admin/api/anomalies?rule=brute_force")).bearer_auth(MASTER).send().await.unwrap();
    let windows: Value = r.json().await.unwrap();
    let row = &windows["anomalies"][0];
    assert_eq!(
        (&row["subjectKind"], &row["value"], &row["firing"], &row["windowStart"], &row["windowEnd"]),
        (
            &json!("ip"),
            &json!(11),
            &json!(true),
            &json!("2026-12-01T16:00:00.000Z"),
            &json!("2026-12-01T16:05:00.000Z")
        ),
        "{windows}"
    );
    let metrics = a.http.get(a.url("/metrics")).bearer_auth(MASTER).send().await.unwrap().text().await.unwrap();
    let b_metrics = b.http.get(b.url("/metrics")).bearer_auth(MASTER).send().await.unwrap().text().await.unwrap();
    let counted = [metrics, b_metrics]
        .iter()
        .filter(|m| m.contains("mcp_anomaly_detected_total{type=\"brute_force\"} 1\n"))
        .count();
    assert_eq!(counted, 1, "the instance that raised it counts it");
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rapid_rotation_and_volume_spike_fire_at_their_thresholds_in_the_agents_org() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &VARS).await;
    set_clock(&s).await;
    let master = Session::open(&s, MASTER).await;
    let org = master.ok("comms_create_organization", json!({"name": "Spiky", "slug": "spiky"})).await;
    let org_token = org["adminToken"].as_str().unwrap().to_string();
    let admin = Session::open(&s, &org_token).await;
    let agent =
        admin.ok("comms_provision_channels", json!({"displayName": "Mailer", "capabilities": {"email": true}})).await;
    let agent_id = agent["agentId"].as_str().unwrap().to_string();

    // Provisioning issued one token; two rotations make three in the hour: not more than three.
    for _ in 0..2 {
        admin.ok("comms_rotate_token", json!({"agentId": agent_id})).await;
    }
    settle().await;
    assert_eq!(alerts(&db, "rapid_rotation").await, 0);
    let rotated = admin.ok("comms_rotate_token", json!({"agentId": agent_id})).await;
    await_alert(&db, "rapid_rotation").await;

    // Outbound attempts (blocked ones count): two are below ANOMALY_VOLUME_MIN_ACTIONS=3.
    let token = rotated["securityToken"].as_str().or(rotated["token"].as_str()).unwrap().to_string();
    let me = Session::open(&s, &token).await;
    let attempt = || async {
        let (is_error, refusal) = me
            .call(
                "comms_send_message",
                json!({"channel": "email", "to": "nobody@example.com", "subject": "Hi", "body": "hi"}),
            )
            .await;
        assert!(is_error && refusal["code"] == "compliance_blocked", "blocked without consent: {refusal}");
    };
    for _ in 0..2 {
        attempt().await;
    }
    settle().await;
    assert_eq!(alerts(&db, "volume_spike").await, 0);
    attempt().await;
    await_alert(&db, "volume_spike").await;

    // Both are the agent's org's: its token sees them.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = s.http.get(s.url("/admin/api/alerts")).bearer_auth(&org_token).send().await.unwrap();
        let body: Value = r.json().await.unwrap();
        let rules: Vec<&str> = body["alerts"].as_array().unwrap().iter().map(|a| a["rule"].as_str().unwrap()).collect();
        if rules.len() == 2 {
            assert_eq!(rules, ["volume_spike", "rapid_rotation"], "{body}");
            assert!(body["alerts"].as_array().unwrap().iter().all(|a| a["subjectId"] == agent_id.as_str()), "{body}");
            break;
        }
        assert!(Instant::now() < deadline, "the org sees {rules:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The current windows behind them, as the org sees them (no IP rows).
    let r = s.http.get(s.url("/admin/api/anomalies")).bearer_auth(&org_token).send().await.unwrap();
    let body: Value = r.json().await.unwrap();
    let rows: Vec<(&str, i64, i64, bool)> = body["anomalies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["rule"].as_str().unwrap(),
                a["value"].as_i64().unwrap(),
                a["previous"].as_i64().unwrap_or(-1),
                a["firing"] == true,
            )
        })
        .collect();
    assert_eq!(rows, [("rapid_rotation", 4, -1, true), ("volume_spike", 3, 0, true)], "{body}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limit_raises_one_alert_per_agent_limit_type_and_window() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &VARS).await;
    set_clock(&s).await;
    let master = Session::open(&s, MASTER).await;
    let org = master
        .ok("comms_create_organization", json!({"name": "Limited", "slug": "limited", "a2pRegistered": true}))
        .await;
    let admin = Session::open(&s, org["adminToken"].as_str().unwrap()).await;
    let agent =
        admin.ok("comms_provision_channels", json!({"displayName": "Sender", "capabilities": {"phone": true}})).await;
    let agent_id = agent["agentId"].as_str().unwrap().to_string();
    let me = Session::open(&s, agent["securityToken"].as_str().unwrap()).await;
    me.ok("comms_record_consent", json!({"contactAddress": "+12025550100", "channel": "sms"})).await;
    master.ok("comms_set_agent_limits", json!({"agentId": agent_id, "limits": {"maxActionsPerMinute": 1}})).await;
    me.ok("comms_send_message", json!({"to": "+12025550100", "body": "Your table is ready."})).await;
    settle().await;
    assert_eq!(alerts(&db, "rate_limit").await, 0, "no refusal yet");
    for _ in 0..2 {
        let (is_error, refusal) = me.call("comms_send_message", json!({"to": "+12025550100", "body": "Again"})).await;
        assert!(is_error && refusal["limitType"] == "per-minute", "{refusal}");
    }
    await_alert(&db, "rate_limit").await;
    settle().await;
    assert_eq!(alerts(&db, "rate_limit").await, 1, "one alert for (agent, per-minute, this minute)");
    let details: Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE event_type = 'AlertRaised' AND payload::jsonb ->> 'rule' = 'rate_limit'",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(
        (&details["subjectId"], &details["details"]["limitType"], &details["windowStart"], &details["windowEnd"]),
        (
            &json!(agent_id),
            &json!("per-minute"),
            &json!("2026-12-01T16:00:00.000Z"),
            &json!("2026-12-01T16:01:00.000Z")
        ),
        "{details}"
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_detector_can_be_turned_off() {
    let db = TestDb::new().await;
    let mut vars = VARS.to_vec();
    vars.push(("ANOMALY_DETECTOR_ENABLED", "false"));
    let s = TestServer::start(&db, &vars).await;
    set_clock(&s).await;
    for _ in 0..11 {
        fail_auth(&s, "203.0.113.21").await;
    }
    settle().await;
    assert_eq!(alerts(&db, "brute_force").await, 0);
    s.stop().await;
}

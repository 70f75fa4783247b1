//! The anomaly detector (docs/monitoring.md) on the anomaly projection's windows: `brute_force`,
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
///
/// Then waits out the detector run that may have read the real clock just before: it prunes the
/// windows that ended ten minutes before *its* now, which are all of the test's. This test failed
/// about once in ten runs so: the first failure's window, written a few milliseconds after the
/// clock was set, was deleted by such a run's prune (cut-off 2026-12-07 04:38:40 while the window
/// ends 2026-12-01 16:05), and the failures after it counted from zero. The next run, one interval
/// (1 s) later, reads the set clock.
async fn set_clock(s: &TestServer) {
    let clock = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER);
    assert!(clock.json(&json!({"now": "2026-12-01T16:00:30Z"})).send().await.unwrap().status().is_success());
    tokio::time::sleep(Duration::from_millis(1500)).await;
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
        if Instant::now() >= deadline {
            panic!("no {rule} alert; {}", diagnosis(db).await);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// What a missing alert needs to be explained: where the anomaly projection stands against the
/// store and the horizon, its windows, the oldest writing transaction of the whole cluster (which
/// holds the horizon back for every database in it, docs/design.md, global order), and every
/// `AuthFailed` stored. It showed a window one short of the failures stored and applied, which
/// led to the prune in `set_clock`.
async fn diagnosis(db: &TestDb) -> String {
    let pool = db.pool().await;
    let state: (Option<i64>, Option<i64>, i64) = sqlx::query_as(
        "SELECT (SELECT position FROM projection_checkpoints WHERE projection = 'anomaly'),
                (SELECT max(position) FROM events), event_horizon()",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let windows: Vec<(String, String, String, i64)> = sqlx::query_as(
        "SELECT counter, subject_kind, window_start::text, count FROM anomaly_windows ORDER BY window_start, counter",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let oldest: Option<(String, String, String, String)> = sqlx::query_as(
        "SELECT datname::text, state, (now() - xact_start)::text, left(query, 120) FROM pg_stat_activity
          WHERE backend_xid IS NOT NULL ORDER BY age(backend_xid) DESC LIMIT 1",
    )
    .fetch_optional(&pool)
    .await
    .unwrap();
    // Every AuthFailed in the store (position, its stream, when): whether the window missed one
    // that was stored, or one was never stored.
    let failures: Vec<(i64, String, String)> = sqlx::query_as(
        "SELECT position, aggregate_id, occurred_at::text FROM events WHERE event_type = 'AuthFailed' ORDER BY position",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    format!(
        "checkpoint {:?}, last event {:?}, horizon {}; windows {windows:?}; oldest writing transaction {oldest:?}; \
         AuthFailed events stored {}: {failures:?}",
        state.0,
        state.1,
        state.2,
        failures.len()
    )
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
        (&row["subjectKind"], &row["value"], &row["firing"]),
        (&json!("ip"), &json!(11), &json!(true)),
        "{windows}"
    );
    // A sliding window: the 5 minutes before now.
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(row[k].as_str().unwrap()).unwrap();
    assert_eq!((at("windowEnd") - at("windowStart")).num_seconds(), 300, "{windows}");
    assert!(row["windowEnd"].as_str().unwrap().starts_with("2026-12-01T16:0"), "{windows}");
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

/// The variables of a server whose detector task only prunes: the tests run `anomaly::check`
/// themselves, once the windows hold what they wait for, so nothing depends on timing.
fn manual(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut vars: Vec<_> = VARS.iter().copied().filter(|(k, _)| *k != "BRUTE_FORCE_MAX_FAILURES").collect();
    vars.push(("ANOMALY_DETECTOR_ENABLED", "false"));
    vars.extend_from_slice(extra);
    vars
}

/// Waits until the anomaly projection holds `count` in `counter`'s current window of `subject`:
/// its latest window, or for a sliding counter (one-second buckets) the sum of its buckets in the
/// span before its latest one.
async fn await_window(db: &TestDb, counter: &str, subject: &str, count: i64) {
    let pool = db.pool().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    let span = commguard_projections::anomaly::sliding_span(counter).map(|span| span.num_seconds());
    loop {
        let now: Option<i64> = match span {
            Some(seconds) => sqlx::query_scalar(
                "SELECT sum(count)::bigint FROM anomaly_windows w WHERE counter = $1 AND subject_id = $2
                    AND window_start > (SELECT max(window_start) FROM anomaly_windows
                                         WHERE counter = $1 AND subject_id = $2) - $3 * interval '1 second'",
            )
            .bind(counter)
            .bind(subject)
            .bind(seconds),
            None => sqlx::query_scalar(
                "SELECT count FROM anomaly_windows WHERE counter = $1 AND subject_id = $2
                  ORDER BY window_start DESC LIMIT 1",
            )
            .bind(counter)
            .bind(subject),
        }
        .fetch_optional(&pool)
        .await
        .unwrap()
        .flatten();
        if now == Some(count) {
            return;
        }
        assert!(Instant::now() < deadline, "{counter} of {subject}: {now:?}, waiting for {count}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn anomalies(s: &TestServer, token: &str, query: &str) -> Vec<Value> {
    let r = s.http.get(s.url(&format!("/admin/api/anomalies{query}"))).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    body["anomalies"].as_array().unwrap().clone()
}

fn rules(rows: &[Value]) -> Vec<String> {
    let mut rules: Vec<String> = rows.iter().map(|r| r["rule"].as_str().unwrap().to_string()).collect();
    rules.dedup();
    rules
}

struct Agent {
    org_id: String,
    org_token: String,
    agent_id: String,
    session: Session,
}

async fn sms_agent(s: &TestServer, master: &Session, slug: &str, limits: Value) -> Agent {
    let org = master.ok("comms_create_organization", json!({"name": slug, "slug": slug, "a2pRegistered": true})).await;
    let org_token = org["adminToken"].as_str().unwrap().to_string();
    let admin = Session::open(s, &org_token).await;
    let agent =
        admin.ok("comms_provision_channels", json!({"displayName": "Sender", "capabilities": {"phone": true}})).await;
    let agent_id = agent["agentId"].as_str().unwrap().to_string();
    let session = Session::open(s, agent["securityToken"].as_str().unwrap()).await;
    session.ok("comms_record_consent", json!({"contactAddress": "+12025550100", "channel": "sms"})).await;
    master.ok("comms_set_agent_limits", json!({"agentId": agent_id, "limits": limits})).await;
    Agent { org_id: org["orgId"].as_str().unwrap().to_string(), org_token, agent_id, session }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spend_threshold_fires_at_eighty_percent_of_the_daily_cap_and_not_one_micro_dollar_below() {
    let db = TestDb::new().await;
    // Five sends are no volume spike here: only spend_threshold can fire.
    let s = TestServer::start(&db, &manual(&[("ANOMALY_VOLUME_MIN_ACTIONS", "100")])).await;
    set_clock(&s).await;
    let app = s.rt.state();
    let master = Session::open(&s, MASTER).await;
    // Five mock SMS cost 5 × $0.0079 = $0.0395: 80 % of $0.049375, one micro-dollar short of
    // 80 % of $0.049376.
    let a = sms_agent(&s, &master, "spender", json!({"maxSpendPerDay": 0.049376})).await;
    for _ in 0..5 {
        a.session.ok("comms_send_message", json!({"to": "+12025550100", "body": "Your table is ready."})).await;
    }
    await_window(&db, "spend", &a.agent_id, 39_500).await;
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 0);
    assert_eq!(alerts(&db, "spend_threshold").await, 0, "$0.0395 is below 80 % of $0.049376");
    let row = anomalies(&s, &a.org_token, "?rule=spend_threshold").await;
    assert_eq!(
        (&row[0]["subjectId"], &row[0]["value"], &row[0]["threshold"]["dailyCap"], &row[0]["firing"]),
        (&json!(a.agent_id), &json!(0.0395), &json!(0.049376), &json!(false)),
        "{row:?}"
    );

    master.ok("comms_set_agent_limits", json!({"agentId": a.agent_id, "limits": {"maxSpendPerDay": 0.049375}})).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while anomalies(&s, MASTER, "?rule=spend_threshold").await[0]["firing"] != true {
        assert!(Instant::now() < deadline, "the new cap never reached the limits projection");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 1);
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 0, "one alert per agent and UTC day");
    let alert: Value = sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE event_type = 'AlertRaised' AND payload::jsonb ->> 'rule' = 'spend_threshold'",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(
        (&alert["severity"], &alert["title"], &alert["subjectId"], &alert["windowStart"], &alert["windowEnd"]),
        (
            &json!("MEDIUM"),
            &json!("Spend threshold reached"),
            &json!(a.agent_id),
            &json!("2026-12-01T00:00:00.000Z"),
            &json!("2026-12-02T00:00:00.000Z")
        ),
        "{alert}"
    );
    let org_of: Option<String> = sqlx::query_scalar(
        "SELECT org_id FROM events WHERE event_type = 'AlertRaised' AND payload::jsonb ->> 'rule' = 'spend_threshold'",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(org_of.as_deref(), Some(a.org_id.as_str()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volume_spike_needs_more_than_three_times_the_previous_five_minutes() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &manual(&[])).await;
    set_clock(&s).await;
    let app = s.rt.state();
    let master = Session::open(&s, MASTER).await;
    let a = sms_agent(&s, &master, "spiky", json!({"maxActionsPerMinute": 100})).await;
    let send = || async {
        a.session.ok("comms_send_message", json!({"to": "+12025550100", "body": "Your table is ready."})).await;
    };
    send().await;
    await_window(&db, "outbound", &a.agent_id, 1).await;
    let clock = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER);
    assert!(clock.json(&json!({"advanceSeconds": 300})).send().await.unwrap().status().is_success());
    // 3 in this window, 1 in the previous: at ANOMALY_VOLUME_MIN_ACTIONS, not above 3 × 1.
    for _ in 0..3 {
        send().await;
    }
    await_window(&db, "outbound", &a.agent_id, 3).await;
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 0);
    let row = anomalies(&s, &a.org_token, "?rule=volume_spike").await;
    assert_eq!((&row[0]["value"], &row[0]["previous"], &row[0]["firing"]), (&json!(3), &json!(1), &json!(false)));
    send().await;
    await_window(&db, "outbound", &a.agent_id, 4).await;
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 1);
    assert_eq!(alerts(&db, "volume_spike").await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_is_one_high_alert_and_the_detector_raises_a_lost_one_under_the_same_key() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &manual(&[("BRUTE_FORCE_MAX_FAILURES", "3")])).await;
    set_clock(&s).await;
    let app = s.rt.state();
    for _ in 0..2 {
        fail_auth(&s, "203.0.113.30").await;
    }
    let ip_ref = app.lockout.ip_ref("203.0.113.30".parse().unwrap());
    await_window(&db, "auth_failed", &ip_ref, 2).await;
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 0);
    assert_eq!(alerts(&db, "brute_force_lockout").await, 0, "two failures of three: no lock");
    fail_auth(&s, "203.0.113.30").await;
    assert_eq!(alerts(&db, "brute_force_lockout").await, 1, "the lock raised its alert");
    await_window(&db, "lockout", &ip_ref, 1).await;
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 0, "the detector finds the lock's alert");
    assert_eq!(alerts(&db, "brute_force_lockout").await, 1);

    // A lock whose alert was lost (recorded `IpLockedOut` only): the detector raises it, with
    // the key the lockout uses.
    let until = "2026-12-01T16:15:30.000Z";
    let locked = commguard_domain::records::IpEvent::IpLockedOut {
        ip: commguard_domain::pii::Pii::retained(
            "198.51.100.9".to_string(),
            commguard_domain::pii::RetentionClass::Security,
        ),
        failures: 3,
        locked_until: until.into(),
    };
    let context =
        commguard::store::CommandContext::new(commguard::store::Actor::system("auth"), "http", app.clock.now());
    app.store.record("ip", "lost-lock-ref", &[locked], &context).await.unwrap();
    await_window(&db, "lockout", "lost-lock-ref", 1).await;
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 1);
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 0);
    let key: String = sqlx::query_scalar(
        "SELECT aggregate_id FROM events WHERE event_type = 'AlertRaised' AND payload::jsonb ->> 'subjectId' = 'lost-lock-ref'",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    let until_ts = chrono::DateTime::parse_from_rfc3339(until).unwrap().timestamp();
    assert_eq!(key, format!("brute_force_lockout:lost-lock-ref:{until_ts}"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anomalies_show_every_rules_current_windows_ip_rows_to_the_master_only_and_org_rows_to_their_org() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &manual(&[("BRUTE_FORCE_MAX_FAILURES", "3")])).await;
    set_clock(&s).await;
    let master = Session::open(&s, MASTER).await;
    let a = sms_agent(&s, &master, "alpha", json!({"maxActionsPerMinute": 2, "maxSpendPerDay": 1})).await;
    let b = sms_agent(&s, &master, "beta", json!({})).await;
    for _ in 0..2 {
        a.session.ok("comms_send_message", json!({"to": "+12025550100", "body": "Your table is ready."})).await;
    }
    let (is_error, refusal) = a.session.call("comms_send_message", json!({"to": "+12025550100", "body": "More"})).await;
    assert!(is_error && refusal["limitType"] == "per-minute", "{refusal}");
    for _ in 0..3 {
        fail_auth(&s, "203.0.113.40").await;
    }
    let ip_ref = s.rt.state().lockout.ip_ref("203.0.113.40".parse().unwrap());
    await_window(&db, "lockout", &ip_ref, 1).await;
    await_window(&db, "rate_limit:per-minute", &a.agent_id, 1).await;
    await_window(&db, "spend", &a.agent_id, 15_800).await;

    let all = anomalies(&s, MASTER, "").await;
    assert_eq!(
        rules(&all),
        ["brute_force", "brute_force_lockout", "rapid_rotation", "rate_limit", "spend_threshold", "volume_spike"],
        "{all:?}"
    );
    let lock = all.iter().find(|r| r["rule"] == "brute_force_lockout").unwrap();
    assert_eq!(
        (&lock["subjectKind"], &lock["subjectId"], &lock["firing"], &lock["orgId"]),
        (&json!("ip"), &json!(ip_ref), &json!(true), &Value::Null),
        "{lock}"
    );
    // The lock is its window: from the lockout to 900 s (BRUTE_FORCE_LOCKOUT_SECONDS) later.
    let at = |k: &str| chrono::DateTime::parse_from_rfc3339(lock[k].as_str().unwrap()).unwrap();
    // (The lock's end is kept in milliseconds, its start in microseconds.)
    let length = (at("windowEnd") - at("windowStart")).num_milliseconds();
    assert!((899_000..=900_000).contains(&length), "{lock}");
    let failures = all.iter().find(|r| r["rule"] == "brute_force").unwrap();
    assert_eq!((&failures["value"], &failures["firing"]), (&json!(3), &json!(false)));
    let limited = all.iter().find(|r| r["rule"] == "rate_limit").unwrap();
    assert_eq!(
        (&limited["subjectId"], &limited["limitType"], &limited["value"], &limited["firing"], &limited["orgId"]),
        (&json!(a.agent_id), &json!("per-minute"), &json!(1), &json!(true), &json!(a.org_id)),
        "{limited}"
    );
    let spend = all.iter().find(|r| r["rule"] == "spend_threshold").unwrap();
    assert_eq!(
        (&spend["value"], &spend["threshold"]["dailyCap"], &spend["firing"]),
        (&json!(0.0158), &json!(1.0), &json!(false))
    );

    // By the severity of the rules' alerts, and by when the windows end.
    assert_eq!(rules(&anomalies(&s, MASTER, "?severity=HIGH").await), ["brute_force", "brute_force_lockout"]);
    let medium = anomalies(&s, MASTER, "?severity=MEDIUM").await;
    assert_eq!(rules(&medium), ["rapid_rotation", "rate_limit", "spend_threshold", "volume_spike"]);
    assert_eq!(anomalies(&s, MASTER, "?since=2026-12-01T16:00:00Z").await.len(), all.len(), "all open now");
    assert!(anomalies(&s, MASTER, "?since=2026-12-02T01:00:00Z").await.is_empty(), "none ends after tomorrow 01:00");

    // An org sees its own agents' rows and no IP row; the master can ask for one org too.
    let own = anomalies(&s, &a.org_token, "").await;
    assert_eq!(rules(&own), ["rapid_rotation", "rate_limit", "spend_threshold", "volume_spike"], "{own:?}");
    assert!(own.iter().all(|r| r["orgId"] == a.org_id.as_str() && r["subjectKind"] == "agent"), "{own:?}");
    // (A sliding window ends at the instant it is read: compared without its bounds.)
    let unbounded = |rows: Vec<Value>| -> Vec<Value> {
        rows.into_iter()
            .map(|mut r| {
                let row = r.as_object_mut().unwrap();
                row.remove("windowStart");
                row.remove("windowEnd");
                r
            })
            .collect()
    };
    assert_eq!(unbounded(anomalies(&s, MASTER, &format!("?orgId={}", a.org_id)).await), unbounded(own));
    let other = anomalies(&s, &b.org_token, "").await;
    assert_eq!(rules(&other), ["rapid_rotation"], "{other:?}");
    assert_eq!(other[0]["subjectId"], b.agent_id.as_str());
    assert!(anomalies(&s, &b.org_token, "?rule=brute_force_lockout").await.is_empty());
    let r = s
        .http
        .get(s.url(&format!("/admin/api/anomalies?orgId={}", a.org_id)))
        .bearer_auth(&b.org_token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403, "an org token cannot read another org");

    // Paged by (rule, subject, limit type, window): one row a page, the same rows.
    let (mut paged, mut query) = (Vec::new(), "?limit=1".to_string());
    loop {
        let r = s.http.get(s.url(&format!("/admin/api/anomalies{query}"))).bearer_auth(MASTER).send().await.unwrap();
        let body: Value = r.json().await.unwrap();
        paged.extend(body["anomalies"].as_array().unwrap().iter().cloned());
        match body["nextCursor"].as_str() {
            Some(cursor) => query = format!("?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(unbounded(paged), unbounded(all));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_windows_are_pruned_and_the_detector_reads_only_current_ones() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &manual(&[("BRUTE_FORCE_MAX_FAILURES", "1000")])).await;
    set_clock(&s).await;
    let app = s.rt.state();
    for _ in 0..11 {
        fail_auth(&s, "203.0.113.50").await;
    }
    let ip_ref = app.lockout.ip_ref("203.0.113.50".parse().unwrap());
    await_window(&db, "auth_failed", &ip_ref, 11).await;
    // 15 minutes later the window (16:00–16:05) ended 10 minutes ago or more: pruned, not read.
    let clock = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER);
    assert!(clock.json(&json!({"advanceSeconds": 900})).send().await.unwrap().status().is_success());
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 0, "a past window raises nothing");
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM anomaly_windows").fetch_one(&db.pool().await).await.unwrap();
    assert_eq!(left, 0, "the old window was deleted");
    assert_eq!(alerts(&db, "brute_force").await, 0);
    assert!(anomalies(&s, MASTER, "").await.is_empty());
    s.stop().await;
}

/// The 5 minutes of `brute_force` are the last 5 before now, not a fixed window: failures on
/// both sides of a 5-minute boundary (6 before 16:05, 5 after, within 15 s) are one burst, and
/// fire. Ten in the same span do not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_split_by_a_five_minute_boundary_is_still_one_burst() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &manual(&[("BRUTE_FORCE_MAX_FAILURES", "1000")])).await;
    let clock = |body: Value| {
        let request = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER).json(&body).send();
        async move { assert!(request.await.unwrap().status().is_success()) }
    };
    clock(json!({"now": "2026-12-01T16:04:52Z"})).await;
    let app = s.rt.state();
    let ip = "203.0.113.77";
    let ip_ref = app.lockout.ip_ref(ip.parse().unwrap());
    for _ in 0..6 {
        fail_auth(&s, ip).await;
    }
    await_window(&db, "auth_failed", &ip_ref, 6).await;
    clock(json!({"advanceSeconds": 10})).await;
    for _ in 0..4 {
        fail_auth(&s, ip).await;
    }
    await_window(&db, "auth_failed", &ip_ref, 10).await;
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 0, "10 in 5 minutes is not more than 10");
    fail_auth(&s, ip).await;
    await_window(&db, "auth_failed", &ip_ref, 11).await;
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 1, "11 across the boundary fire");
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 0, "once per 5-minute dedup window");
    assert_eq!(alerts(&db, "brute_force").await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refusal_whose_minute_closed_before_the_detector_ran_is_still_alerted() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &manual(&[])).await;
    set_clock(&s).await;
    let app = s.rt.state();
    let master = Session::open(&s, MASTER).await;
    let a = sms_agent(&s, &master, "closing", json!({"maxActionsPerMinute": 1})).await;
    a.session.ok("comms_send_message", json!({"to": "+12025550100", "body": "Your table is ready."})).await;
    let (is_error, refusal) =
        a.session.call("comms_send_message", json!({"to": "+12025550100", "body": "Again"})).await;
    assert!(is_error && refusal["limitType"] == "per-minute", "{refusal}");
    await_window(&db, "rate_limit:per-minute", &a.agent_id, 1).await;

    // The detector's next run comes just after the refusal's minute (16:00) has closed, within
    // twice its interval (here 1 s) of it.
    let clock = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER);
    assert!(clock.json(&json!({"now": "2026-12-01T16:01:00.500Z"})).send().await.unwrap().status().is_success());
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 1, "the closed minute's refusal is alerted");
    assert_eq!(commguard::anomaly::check(&app).await.unwrap(), 0, "once");
    assert_eq!(alerts(&db, "rate_limit").await, 1);
    // What the admin view shows as current is still only what is open now.
    let open = anomalies(&s, MASTER, "").await;
    assert!(rules(&open).iter().all(|rule| rule != "rate_limit"), "{open:?}");
    s.stop().await;
}

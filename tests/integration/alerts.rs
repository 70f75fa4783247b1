//! `GET /admin/api/alerts` (docs/admin-api.md, docs/monitoring.md) from the alerts projection: the brute-force
//! lockout's HIGH alert (IP, master only), agent alerts scoped to their org, the filters,
//! `occurrences` and cursor paging.

use std::time::{Duration, Instant};

use chrono::Utc;
use commguard::store::{Actor, CommandContext};
use commguard_domain::records::AlertEvent;
use serde_json::{json, Value};

use crate::support::{McpSession as Session, TestDb, TestServer};

const MASTER: &str = "alerts-test-master-token-0123456789abcdef";

async fn get(s: &TestServer, token: &str, query: &str) -> (u16, Value) {
    let r = s.http.get(s.url(&format!("/admin/api/alerts{query}"))).bearer_auth(token).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

/// The master's view once it holds `n` alerts (the projection follows the store).
async fn await_alerts(s: &TestServer, n: usize) -> Vec<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let (status, body) = get(s, MASTER, "").await;
        assert_eq!(status, 200, "{body}");
        let alerts = body["alerts"].as_array().unwrap().clone();
        if alerts.len() >= n {
            assert_eq!(alerts.len(), n, "{body}");
            return alerts;
        }
        assert!(Instant::now() < deadline, "only {} of {n} alerts projected", alerts.len());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Records an agent alert as the detector will: on its dedupKey stream, in the agent's org.
async fn raise(s: &TestServer, dedup_key: &str, org: &str, agent: &str, rule: &str, severity: &str) {
    let alert = AlertEvent::AlertRaised {
        alert_id: uuid::Uuid::new_v4().to_string(),
        rule: rule.into(),
        severity: severity.into(),
        title: "Rate limit exceeded".into(),
        message: format!("agent {agent}: {rule}"),
        subject_kind: "agent".into(),
        subject_id: agent.into(),
        details: json!({}),
        window_start: "2026-12-01T16:00:00Z".into(),
        window_end: "2026-12-01T16:01:00Z".into(),
    };
    let context = CommandContext::new(Actor::system("anomaly"), "detector", Utc::now()).in_org(org.to_string());
    let recorded = s.rt.store.record_once("alert", dedup_key, std::slice::from_ref(&alert), &context).await.unwrap();
    assert!(recorded.is_some(), "{dedup_key} recorded once");
    // The same dedupKey again is not a second alert.
    assert_eq!(s.rt.store.record_once("alert", dedup_key, &[alert], &context).await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alerts_are_listed_by_scope_filtered_counted_and_paged() {
    let db = TestDb::new().await;
    let vars = [
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("TRUST_PROXY", "1"),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
    ];
    let s = TestServer::start(&db, &vars).await;

    // Ten failed admin requests from one address: one HIGH lockout alert about the IP.
    for _ in 0..10 {
        let r = s.http.get(s.url("/admin/api/alerts")).header("x-forwarded-for", "203.0.113.9").send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let lockout = await_alerts(&s, 1).await;
    let alert = &lockout[0];
    assert_eq!(
        (
            &alert["rule"],
            &alert["severity"],
            &alert["title"],
            &alert["subjectKind"],
            &alert["orgId"],
            &alert["occurrences"]
        ),
        (
            &json!("brute_force_lockout"),
            &json!("HIGH"),
            &json!("Brute-force lockout"),
            &json!("ip"),
            &Value::Null,
            &json!(1)
        )
    );
    assert!(alert["raisedAt"].as_str().unwrap().ends_with('Z'), "{alert}");

    let master = Session::open(&s, MASTER).await;
    let mut orgs = Vec::new();
    for slug in ["alerts-a", "alerts-b"] {
        let org = master.ok("comms_create_organization", json!({"name": slug, "slug": slug})).await;
        orgs.push((org["orgId"].as_str().unwrap().to_string(), org["adminToken"].as_str().unwrap().to_string()));
    }
    let ((org_a, token_a), (org_b, token_b)) = (orgs[0].clone(), orgs[1].clone());
    raise(&s, "rate_limit:agent-a1:per-minute:1", &org_a, "agent-a1", "rate_limit", "MEDIUM").await;
    raise(&s, "rate_limit:agent-a1:per-minute:2", &org_a, "agent-a1", "rate_limit", "MEDIUM").await;
    raise(&s, "volume_spike:agent-b1:1", &org_b, "agent-b1", "volume_spike", "MEDIUM").await;
    let all = await_alerts(&s, 4).await;
    assert_eq!(all[0]["subjectId"], "agent-b1", "newest first: {all:?}");
    assert_eq!((&all[1]["subjectId"], &all[1]["occurrences"]), (&json!("agent-a1"), &json!(2)));
    assert_eq!((&all[2]["subjectId"], &all[2]["occurrences"]), (&json!("agent-a1"), &json!(1)));

    // Org A sees its agents' alerts only, never the IP alert; it cannot name another org.
    let (status, mine) = get(&s, &token_a, "").await;
    assert_eq!(status, 200);
    let mine = mine["alerts"].as_array().unwrap();
    assert_eq!(mine.len(), 2, "{mine:?}");
    assert!(mine.iter().all(|a| a["orgId"] == org_a.as_str() && a["subjectKind"] == "agent"), "{mine:?}");
    let (status, b) = get(&s, &token_b, "").await;
    assert_eq!((status, b["alerts"].as_array().unwrap().len()), (200, 1));
    assert_eq!(get(&s, &token_a, &format!("?orgId={org_b}")).await.0, 403);

    // Filters.
    let (_, high) = get(&s, MASTER, "?severity=HIGH").await;
    assert_eq!(high["alerts"].as_array().unwrap().len(), 1);
    let (_, spikes) = get(&s, MASTER, "?rule=volume_spike").await;
    assert_eq!(spikes["alerts"].as_array().unwrap().len(), 1);
    let (_, scoped) = get(&s, MASTER, &format!("?orgId={org_a}&rule=rate_limit")).await;
    assert_eq!(scoped["alerts"].as_array().unwrap().len(), 2);
    let (_, future) = get(&s, MASTER, "?since=2999-01-01T00:00:00Z").await;
    assert_eq!(future["alerts"], json!([]));
    let (status, bad) = get(&s, MASTER, "?severity=urgent").await;
    assert_eq!((status, bad["field"].as_str()), (400, Some("severity")));
    let (status, bad) = get(&s, MASTER, "?rule=nope").await;
    assert_eq!((status, bad["field"].as_str()), (400, Some("rule")));

    // Pages of one, without repeating or skipping.
    let mut seen = Vec::new();
    let mut query = "?limit=1".to_string();
    loop {
        let (status, page) = get(&s, MASTER, &query).await;
        assert_eq!(status, 200);
        seen.extend(page["alerts"].as_array().unwrap().iter().map(|a| a["alertId"].clone()));
        match page["nextCursor"].as_str() {
            Some(cursor) => query = format!("?limit=1&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(seen, all.iter().map(|a| a["alertId"].clone()).collect::<Vec<_>>());

    // Rebuilt from position 0 (`commguard replay --projection alerts|anomaly`), the same rows.
    let pool = db.pool().await;
    let table = |sql: &'static str| {
        let pool = pool.clone();
        async move { sqlx::query_scalar::<_, String>(sql).fetch_one(&pool).await.unwrap() }
    };
    const ALERTS: &str = "SELECT COALESCE(string_agg(concat_ws('|', position, alert_id, rule, org_id, occurrences), ',' ORDER BY position), '') FROM alerts";
    const WINDOWS: &str = "SELECT COALESCE(string_agg(concat_ws('|', counter, subject_id, window_start, count), ',' ORDER BY counter, subject_id, window_start), '') FROM anomaly_windows";
    let (alerts_before, windows_before) = (table(ALERTS).await, table(WINDOWS).await);
    assert!(!windows_before.is_empty(), "the failures were counted");
    s.stop().await;
    use commguard::store::runner::{rebuild, Progress};
    rebuild(&pool, &commguard_projections::alerts::AlertsProjection, &mut Progress::quiet()).await.unwrap();
    rebuild(&pool, &commguard_projections::anomaly::AnomalyProjection, &mut Progress::quiet()).await.unwrap();
    assert_eq!((table(ALERTS).await, table(WINDOWS).await), (alerts_before, windows_before));
}

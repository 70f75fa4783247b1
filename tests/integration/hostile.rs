//! Hostile input (issue 14): one hostile byte must not cost anyone else a write. U+0000 is
//! refused at every edge with docs/errors.md `invalid_input` and the refusal is recorded; the store makes any
//! event storable whatever it carries; the group committer isolates an append Postgres refuses.
//! Also: admin rejections as docs/errors.md JSON, an agent mismatch counted toward the lockout, `X-Agent-Id`
//! refused when not ASCII, money with at most six decimals in its decimal form, and refused
//! requests leaving `lastUsedAt` alone.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use commguard::crypto::DataKeys;
use commguard::store::Store;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::support::ledger::{context, Ledger, Note};
use crate::support::{provision, wait_visible, McpSession, TestDb, TestServer};

const MASTER: &str = "hostile-test-master-token-0123456789abcdef";
const VARS: [(&str, &str); 3] =
    [("MASTER_SECURITY_TOKEN", MASTER), ("HTTP_RATE_LIMIT_PER_IP", "1000000"), ("HTTP_RATE_LIMIT_GLOBAL", "1000000")];

struct Org {
    org_id: String,
    admin: String,
    agent_id: String,
    agent_token: String,
    number: String,
}

async fn org(s: &TestServer, slug: &str) -> Org {
    let p = provision(s, MASTER, slug, json!({}), "Desk", json!({"phone": true})).await;
    let number = p.number.expect("a phone agent has a number");
    Org { org_id: p.org_id, admin: p.admin, agent_id: p.agent_id, agent_token: p.agent_token, number }
}

/// (status, content type, body as JSON or `Null`).
async fn answer(response: reqwest::Response) -> (u16, String, Value) {
    let status = response.status().as_u16();
    let content_type =
        response.headers().get("content-type").map(|v| v.to_str().unwrap().to_string()).unwrap_or_default();
    let text = response.text().await.unwrap();
    (status, content_type, serde_json::from_str(&text).unwrap_or(Value::Null))
}

/// A docs/errors.md refusal: JSON with `error`, `code` and `requestId`.
fn assert_refused(what: &str, (status, content_type, body): &(u16, String, Value), expected: (u16, &str)) {
    assert_eq!((*status, body["code"].as_str()), (expected.0, Some(expected.1)), "{what}: {body}");
    assert!(content_type.starts_with("application/json"), "{what}: {content_type}");
    assert!(body["error"].is_string() && body["requestId"].is_string(), "{what}: {body}");
}

async fn count(pool: &PgPool, sql: &str, bind: &str) -> i64 {
    sqlx::query_scalar(sql).bind(bind).fetch_one(pool).await.unwrap()
}

async fn refusals(pool: &PgPool, stream: &str) -> Vec<Value> {
    sqlx::query_scalar(
        "SELECT payload::jsonb FROM events WHERE event_type = 'ActionRefused' AND aggregate_id = $1 ORDER BY position",
    )
    .bind(stream)
    .fetch_all(pool)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nul_carrying_requests_racing_legitimate_writes_cost_no_legitimate_write() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &VARS).await;
    let o = org(&s, "race").await;
    let session = McpSession::open(&s, &o.admin).await;

    // 120 admin DNC adds, 20 of them carrying U+0000 somewhere, plus 10 tool calls whose refused
    // arguments (an agentId with U+0000) go into the refusal event itself, all at once.
    let hostile = |i: usize| match i % 4 {
        0 => json!({"address": "+1202555\u{0}0100"}),
        1 => json!({"address": format!("+1202556{i:04}"), "reason": "spam\u{0}"}),
        2 => json!({"address": format!("+1202556{i:04}"), "note\u{0}": true}),
        _ => json!({"address": format!("+1202556{i:04}"), "orgId": "x\u{0}y"}),
    };
    let admin_calls = futures::future::join_all((0..120).map(|i| {
        let nul = i % 6 == 0;
        let body = if nul { hostile(i) } else { json!({"address": format!("+1202555{i:04}"), "reason": "asked"}) };
        let request = s.http.post(s.url("/admin/api/dnc")).bearer_auth(&o.admin).json(&body);
        async move { (nul, answer(request.send().await.unwrap()).await) }
    }));
    let tool_calls =
        futures::future::join_all((0..10).map(|i| {
            session.call("comms_dnc_add", json!({"address": format!("+1202557{i:04}"), "agentId": "a\u{0}b"}))
        }));
    let (admin_calls, tool_calls) = tokio::join!(admin_calls, tool_calls);
    let mut legitimate = 0;
    for (nul, reply) in admin_calls {
        if nul {
            assert_refused("NUL-carrying POST /admin/api/dnc", &reply, (400, "invalid_input"));
            assert!(reply.2["error"].as_str().unwrap().ends_with("Control character"), "{}", reply.2);
        } else {
            assert_eq!(reply.0, 200, "a legitimate write failed: {}", reply.2);
            legitimate += 1;
        }
    }
    for (is_error, refusal) in tool_calls {
        assert!(is_error);
        assert_eq!((refusal["code"].as_str(), refusal["field"].as_str()), (Some("invalid_input"), Some("agentId")));
    }
    assert_eq!(legitimate, 100);

    // Every write and every refusal is an event; the refused value is stored escaped.
    let pool = db.pool().await;
    assert_eq!(
        count(&pool, "SELECT count(*) FROM events WHERE event_type = 'DncAdded' AND org_id = $1", &o.org_id).await,
        100
    );
    let refused = refusals(&pool, &o.org_id).await;
    let admin_refusals = refused.iter().filter(|r| r["tool"] == "POST /admin/api/dnc").count();
    let tool_refusals: Vec<&Value> = refused.iter().filter(|r| r["tool"] == "comms_dnc_add").collect();
    assert_eq!((admin_refusals, tool_refusals.len()), (20, 10));
    assert!(refused.iter().all(|r| r["code"] == "invalid_input" && r["refusedBy"] == "input"));
    assert!(tool_refusals.iter().all(|r| r["agentId"] == "a\u{FFFD}b"), "{tool_refusals:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nul_in_ids_is_refused_at_every_edge_and_recorded() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &VARS).await;
    let o = org(&s, "edges").await;
    let get = |path: &str, token: &str| s.http.get(s.url(path)).bearer_auth(token).send();

    // Admin routes: path ids, query strings.
    for (path, field) in [
        ("/admin/api/orgs/a%00b", "orgId"),
        ("/admin/api/agents/a%00b", "agentId"),
        ("/admin/api/agents/a%00b/tokens", "agentId"),
        ("/admin/api/dnc?type=%00", "type"),
        ("/admin/api/consent?contact=%2B12025550100&agentId=a%00b", "agentId"),
    ] {
        let reply = answer(get(path, &o.admin).await.unwrap()).await;
        assert_refused(path, &reply, (400, "invalid_input"));
        assert_eq!(reply.2["field"], field, "{path}");
    }
    let reply = answer(
        s.http.post(s.url("/admin/api/agents/a%00b/limits")).bearer_auth(MASTER).json(&json!({})).send().await.unwrap(),
    )
    .await;
    assert_refused("POST limits", &reply, (400, "invalid_input"));

    // MCP opens: the claim, with an agent token (its own stream) and an org token.
    let sse = |token: &str| s.http.get(s.url(&format!("/sse?token={token}&agentId=a%00b"))).send();
    assert_refused("/sse agent token", &answer(sse(&o.agent_token).await.unwrap()).await, (400, "invalid_input"));
    assert_refused("/sse org token", &answer(sse(&o.admin).await.unwrap()).await, (400, "invalid_input"));
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}});
    let mcp = s
        .http
        .post(s.url("/mcp?agentId=a%00b"))
        .bearer_auth(&o.admin)
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_refused("/mcp claim", &answer(mcp).await, (400, "invalid_input"));

    // Tools: any argument, known or not, nested or not.
    let tools = McpSession::open(&s, MASTER).await;
    for (tool, args, field) in [
        ("comms_get_channel_status", json!({"agentId": "a\u{0}b"}), "agentId"),
        (
            "comms_create_organization",
            json!({"name": "N", "slug": "nul-org", "settings": {"x": "\u{0}"}}),
            "settings.x",
        ),
        ("comms_ping", json!({"unknown": ["ok", "\u{0}"]}), "unknown.1"),
    ] {
        let (is_error, refusal) = tools.call(tool, args).await;
        assert!(is_error, "{tool}");
        assert_eq!((refusal["code"].as_str(), refusal["field"].as_str()), (Some("invalid_input"), Some(field)));
    }

    // Webhooks need no credential: an id or a parameter Postgres cannot store is malformed.
    let form = |path: &str, body: String| {
        s.http.post(s.url(path)).header("content-type", "application/x-www-form-urlencoded").body(body).send()
    };
    let (status, content_type, _) = answer(form("/webhooks/a%00b/sms", String::new()).await.unwrap()).await;
    assert_eq!((status, content_type.as_str()), (400, "text/xml; charset=utf-8"));
    let (status, _, _) = answer(form("/webhooks/a%00b/call-status", String::new()).await.unwrap()).await;
    assert_eq!(status, 400);
    let email = s.http.post(s.url("/webhooks/a%00b/email")).json(&json!({})).send().await.unwrap();
    assert_refused("/email", &answer(email).await, (400, "invalid_input"));
    let to: String = form_urlencoded::byte_serialize(o.number.as_bytes()).collect();
    let sms = format!("MessageSid=SM%00x&From=%2B12025550100&To={to}&Body=hi");
    let (status, _, _) = answer(form(&format!("/webhooks/{}/sms", o.agent_id), sms).await.unwrap()).await;
    assert_eq!(status, 400);

    // Every refusal of a known caller is recorded, the offending claim escaped.
    let pool = db.pool().await;
    let org_refusals = refusals(&pool, &o.org_id).await;
    assert_eq!(org_refusals.iter().filter(|r| r["tool"].as_str().unwrap().contains("/admin/api/")).count(), 5);
    let claims: Vec<&Value> =
        org_refusals.iter().filter(|r| ["GET /sse", "POST /mcp"].contains(&r["tool"].as_str().unwrap())).collect();
    assert_eq!(claims.len(), 2);
    assert!(claims.iter().all(|r| r["agentId"] == "a\u{FFFD}b" && r["code"] == "invalid_input"), "{claims:?}");
    let agent_refusals = refusals(&pool, &o.agent_id).await;
    assert_eq!((agent_refusals.len(), agent_refusals[0]["agentId"].as_str()), (1, Some("a\u{FFFD}b")));
    let platform = refusals(&pool, "platform").await;
    assert_eq!(platform.iter().filter(|r| r["code"] == "invalid_input").count(), 4, "{platform:?}");
    let malformed = count(
        &pool,
        "SELECT count(*) FROM events WHERE event_type = 'WebhookRejected' AND aggregate_id = $1 AND payload->>'reason' = 'malformed'",
        &o.agent_id,
    )
    .await;
    assert_eq!(malformed, 1);
    // Nothing Postgres could not hold was stored, and nothing was lost on the way.
    let nul_text: i64 =
        sqlx::query_scalar("SELECT count(*) FROM events WHERE strpos(payload::text || metadata::text, '\\u0000') > 0")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(nul_text, 0);
    s.stop().await;
}

async fn ledger_store(db: &TestDb) -> Store {
    let pool = sqlx::postgres::PgPoolOptions::new().max_connections(24).connect(&db.url).await.unwrap();
    commguard::store::MIGRATOR.run(&pool).await.unwrap();
    Store::new(pool, Arc::new(DataKeys::new(&[9u8; 32])))
}

/// A stream id Postgres refuses: its chain head's index entry exceeds the btree maximum (54000).
fn oversized_id(i: usize) -> String {
    let bytes: Vec<u8> = (0..16_384).map(|_| rand::random::<u8>()).collect();
    format!("oversized-{i}-{}", base64::engine::general_purpose::STANDARD.encode(bytes))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_append_postgres_refuses_fails_alone_in_its_batch() {
    let db = TestDb::new().await;
    let store = ledger_store(&db).await;
    let ledger = Arc::new(store.framework::<Ledger>(()));
    for round in 0..3 {
        let mut good = Vec::new();
        let mut bad = Vec::new();
        for i in 0..150 {
            let (writer, framework) = (store.clone(), ledger.clone());
            let id = format!("good-{round}-{i}");
            good.push(tokio::spawn(async move {
                let note = Note { text: format!("{round}/{i}"), about: None };
                writer.execute(&framework, &id, note, &context("org-test")).await
            }));
            if i % 25 == 0 {
                let (writer, framework) = (store.clone(), ledger.clone());
                let id = oversized_id(i);
                bad.push(tokio::spawn(async move {
                    let note = Note { text: "refused".into(), about: None };
                    writer.execute(&framework, &id, note, &context("org-test")).await
                }));
            }
        }
        for task in good {
            assert!(task.await.unwrap().is_ok(), "round {round}: a good append failed with a bad one");
        }
        for task in bad {
            assert!(task.await.unwrap().is_err(), "round {round}: Postgres accepted an oversized stream id");
        }
    }
    let pool = store.pool();
    let stored: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(pool).await.unwrap();
    assert_eq!(stored, 450);
    assert!(commguard::store::verify::verify(pool, None).await.unwrap().is_ok());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_escapes_nul_in_any_event_and_refuses_it_in_a_stream_id() {
    let db = TestDb::new().await;
    let store = ledger_store(&db).await;
    let ledger = store.framework::<Ledger>(());
    // A payload and a personal field (sealed, then opened by the feed) carrying U+0000.
    let note = Note { text: "a\u{0}b".into(), about: Some("x\u{0}@example.com".into()) };
    store.execute(&ledger, "nul-payload", note, &context("org-test")).await.unwrap();
    let note = Note { text: "next".into(), about: None };
    store.execute(&ledger, "nul-payload", note, &context("org-test")).await.unwrap();
    // A stream id holding it fails its own command, before Postgres.
    let note = Note { text: "x".into(), about: None };
    assert!(store.execute(&ledger, "nul\u{0}id", note, &context("org-test")).await.is_err());

    let pool = store.pool();
    let payloads: Vec<Value> =
        sqlx::query_scalar("SELECT payload::jsonb FROM events WHERE aggregate_id = 'nul-payload' ORDER BY sequence")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!((payloads.len(), payloads[0]["text"].as_str()), (2, Some("a\u{FFFD}b")));
    assert!(commguard::store::verify::verify(pool, None).await.unwrap().is_ok(), "hashes cover the stored form");
    wait_visible(pool, 2).await;
    let events = commguard::store::feed::read_after(pool, 0, 10, None).await.unwrap();
    let first = events.into_iter().next().unwrap();
    let first = commguard::store::envelope::envelope(store.keystore(), first, false).await.unwrap();
    let first = serde_json::to_value(first).unwrap();
    assert_eq!(first["payload"]["body"], "message for x\u{FFFD}@example.com", "{first}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_rejections_are_error_model_json_and_recorded() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &VARS).await;
    let o = org(&s, "rejections").await;
    let settings = format!("/admin/api/orgs/{}/settings", o.org_id);
    let cases = [
        ("GET limit=abc", s.http.get(s.url("/admin/api/dnc?limit=abc")), (400, "invalid_input")),
        ("GET limit overflows", s.http.get(s.url("/admin/api/dnc?limit=99999999999999999999")), (400, "invalid_input")),
        ("path not UTF-8", s.http.get(s.url("/admin/api/agents/%FF")), (400, "invalid_input")),
        (
            "text/plain body",
            s.http.post(s.url("/admin/api/dnc")).header("content-type", "text/plain").body("address=+12025550100"),
            (415, "unsupported_media_type"),
        ),
        (
            "broken JSON",
            s.http.post(s.url("/admin/api/dnc")).header("content-type", "application/json").body("{\"address\":"),
            (400, "invalid_input"),
        ),
        (
            "JSON not an object",
            s.http.post(s.url(&settings)).header("content-type", "application/json").body("[1]"),
            (400, "invalid_input"),
        ),
    ];
    let mut recorded = 0;
    for (what, request, expected) in cases {
        let reply = answer(request.bearer_auth(&o.admin).send().await.unwrap()).await;
        assert_refused(what, &reply, expected);
        recorded += 1;
    }
    let refused = refusals(&db.pool().await, &o.org_id).await;
    assert_eq!(refused.len(), recorded);
    assert!(refused.iter().any(|r| r["code"] == "unsupported_media_type" && r["refusedBy"] == "input"));
    s.stop().await;
}

async fn sse_open(s: &TestServer, token: &str, claim: &str) -> u16 {
    s.http.get(s.url(&format!("/sse?token={token}&agentId={claim}"))).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_token_claiming_another_agent_counts_toward_the_lockout() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &VARS).await;
    let o = org(&s, "mismatch").await;
    // A valid token opens fine before (and would reset a count, were there one).
    let own = s.http.get(s.url(&format!("/sse?token={}", o.agent_token))).send().await.unwrap();
    assert_eq!(own.status(), 200);
    drop(own);
    for attempt in 1..=9 {
        assert_eq!(sse_open(&s, &o.agent_token, "someone-else").await, 401, "attempt {attempt}");
    }
    // The tenth failure, on /mcp through X-Agent-Id, locks the IP; it still gets its 401.
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}});
    let tenth = s
        .http
        .post(s.url("/mcp"))
        .bearer_auth(&o.agent_token)
        .header("accept", "application/json, text/event-stream")
        .header("x-agent-id", "someone-else")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(tenth.status(), 401);
    let (status, _, body) =
        answer(s.http.get(s.url(&format!("/sse?token={}", o.agent_token))).send().await.unwrap()).await;
    assert_eq!((status, body["code"].as_str()), (429, Some("locked_out")));
    let pool = db.pool().await;
    let mismatches: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'AuthFailed' AND payload->>'reason' = 'agent_mismatch'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    let locks: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'IpLockedOut'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!((mismatches, locks), (10, 1));
    // Each names the token presented by its fingerprint (the first 8 hex of its SHA-256).
    let fingerprints: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT payload->>'tokenFingerprint' FROM events WHERE event_type = 'AuthFailed' AND payload->>'reason' = 'agent_mismatch'",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let expected = commguard::crypto::tokens::fingerprint(&o.agent_token);
    assert!(fingerprints.iter().all(|f| f.as_deref() == Some(expected.as_str())), "{fingerprints:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_non_ascii_agent_id_header_is_refused() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &VARS).await;
    let o = org(&s, "header").await;
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}});
    let reply = s
        .http
        .post(s.url("/mcp"))
        .bearer_auth(&o.admin)
        .header("accept", "application/json, text/event-stream")
        .header("x-agent-id", reqwest::header::HeaderValue::from_bytes("agént".as_bytes()).unwrap())
        .json(&init)
        .send()
        .await
        .unwrap();
    let reply = answer(reply).await;
    assert_refused("X-Agent-Id", &reply, (400, "invalid_input"));
    assert_eq!(reply.2["field"], "X-Agent-Id");
    let refused = refusals(&db.pool().await, &o.org_id).await;
    assert_eq!((refused.len(), refused[0]["tool"].as_str()), (1, Some("POST /mcp")));
    s.stop().await;
}

/// A raw JSON body, so numbers reach the server exactly as written.
async fn post_raw(s: &TestServer, path: &str, body: &str) -> (u16, String, Value) {
    let request = s.http.post(s.url(path)).bearer_auth(MASTER).header("content-type", "application/json");
    answer(request.body(body.to_string()).send().await.unwrap()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn money_is_checked_in_its_decimal_form_in_every_money_field() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &VARS).await;
    let o = org(&s, "money").await;
    let limits = format!("/admin/api/agents/{}/limits", o.agent_id);
    let settings = format!("/admin/api/orgs/{}/settings", o.org_id);
    let billing = format!("/admin/api/agents/{}/billing", o.agent_id);
    for value in ["4.9e-324", "1e-7", "0.0000001", "1.1234567", "-1", "1e300", "\"5\""] {
        for field in ["maxSpendPerDay", "maxSpendPerMonth"] {
            let reply = post_raw(&s, &limits, &format!(r#"{{"limits":{{"{field}":{value}}}}}"#)).await;
            assert_refused(&format!("limits {field}={value}"), &reply, (400, "invalid_input"));
            let reply = post_raw(&s, &settings, &format!(r#"{{"{field}":{value}}}"#)).await;
            assert_refused(&format!("settings {field}={value}"), &reply, (400, "invalid_input"));
        }
        let reply = post_raw(&s, &billing, &format!(r#"{{"markupPercent":{value}}}"#)).await;
        assert_refused(&format!("markupPercent={value}"), &reply, (400, "invalid_input"));
    }
    // The same numbers through the tool.
    let master = McpSession::open(&s, MASTER).await;
    let (is_error, refusal) = master
        .call("comms_set_agent_limits", json!({"agentId": o.agent_id, "limits": {"maxSpendPerDay": 4.9e-324}}))
        .await;
    assert!(is_error);
    assert_eq!(refusal["field"], "limits.maxSpendPerDay");

    // Six decimals in any notation are exact.
    let (status, _, set) =
        post_raw(&s, &limits, r#"{"limits":{"maxSpendPerDay":1e-6,"maxSpendPerMonth":12.345678}}"#).await;
    assert_eq!(status, 200, "{set}");
    assert_eq!(
        (set["overrides"]["maxSpendPerDay"].as_f64(), set["overrides"]["maxSpendPerMonth"].as_f64()),
        (Some(0.000001), Some(12.345678))
    );
    let (status, _, capped) = post_raw(&s, &settings, r#"{"maxSpendPerDay":2.5e1,"maxSpendPerMonth":0}"#).await;
    assert_eq!(
        (status, capped["maxSpendPerDay"].as_f64(), capped["maxSpendPerMonth"].as_f64()),
        (200, Some(25.0), Some(0.0)),
        "{capped}"
    );
    let (status, _, billed) = post_raw(&s, &billing, r#"{"markupPercent":12.5}"#).await;
    assert_eq!((status, billed["billingConfig"]["markupPercent"].as_f64()), (200, Some(12.5)), "{billed}");
    s.stop().await;
}

async fn last_used(pool: &PgPool, agent_id: &str) -> i64 {
    count(
        pool,
        "SELECT count(*) FROM token_last_used u JOIN tokens t USING (token_id) WHERE t.kind = 'agent' AND t.agent_id = $1",
        agent_id,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_requests_do_not_mark_their_token_used() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &VARS).await;
    let o = org(&s, "last-used").await;
    let pool = db.pool().await;
    // Refused: the agent token on the admin API, claiming another agent on /sse and on /mcp.
    let (status, _, _) =
        answer(s.http.get(s.url("/admin/api/me")).bearer_auth(&o.agent_token).send().await.unwrap()).await;
    assert_eq!(status, 401);
    assert_eq!(sse_open(&s, &o.agent_token, "someone-else").await, 401);
    let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}});
    let mcp = s
        .http
        .post(s.url("/mcp?agentId=someone-else"))
        .bearer_auth(&o.agent_token)
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .unwrap();
    assert_eq!(mcp.status(), 401);
    tokio::time::sleep(Duration::from_millis(500)).await; // the write, were there one, is off the request path
    assert_eq!(last_used(&pool, &o.agent_id).await, 0, "a refused request marked its token used");

    // Admitted: the next request marks it.
    McpSession::open(&s, &o.agent_token).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while last_used(&pool, &o.agent_id).await == 0 {
        assert!(std::time::Instant::now() < deadline, "lastUsedAt never written for an admitted request");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.stop().await;
}

/// Numbers at the ends of JSON's range (found by `scripts/chaos.sh api`): Postgres prints
/// 1.7976931348623157e308 back as 309 digits, which the server must read as the number it wrote —
/// in the org list, the feed and `audit verify`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_at_the_ends_of_the_range_are_read_back_as_written() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &[("MASTER_SECURITY_TOKEN", MASTER)]).await;
    let settings = json!({"big": 1.7976931348623157e308, "small": -1.7976931348623157e308, "tiny": 5e-324, "x": 1e21});
    let created = s
        .http
        .post(s.url("/admin/api/orgs"))
        .bearer_auth(MASTER)
        .json(&json!({"name": "Extremes", "slug": "extremes", "settings": settings}))
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 200);
    let (status, _, orgs) =
        answer(s.http.get(s.url("/admin/api/orgs")).bearer_auth(MASTER).send().await.unwrap()).await;
    assert_eq!(status, 200, "{orgs}");
    let listed = orgs["orgs"].as_array().unwrap().iter().find(|o| o["slug"] == "extremes").unwrap();
    assert_eq!(listed["settings"], settings);
    let report = commguard::store::verify::verify(&db.pool().await, None).await.unwrap();
    assert!(report.is_ok(), "{report:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_in_flight_when_the_lock_falls_are_answered_as_locked_not_as_failed() {
    let db = TestDb::new().await;
    let vars = [&VARS[..], &[("TRUST_PROXY", "1"), ("BRUTE_FORCE_MAX_FAILURES", "3")]].concat();
    let s = TestServer::start(&db, &vars).await;
    // Thirty wrong guesses at once from one address: all of them pass the gate before the lock.
    let guesses = (0..30).map(|n| {
        let request = s
            .http
            .get(s.url("/admin/api/me"))
            .header("x-forwarded-for", "198.51.100.23")
            .bearer_auth(format!("guess-{n}"))
            .send();
        async move { request.await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(guesses).await;
    let failed = statuses.iter().filter(|&&status| status == 401).count();
    let locked = statuses.iter().filter(|&&status| status == 429).count();
    assert_eq!((failed, locked), (3, 27), "only the three failures up to the lock are told they failed: {statuses:?}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lockout_counts_failures_in_a_sliding_window_and_prunes_what_no_longer_counts() {
    let db = TestDb::new().await;
    let vars = [
        &VARS[..],
        &[
            ("TRUST_PROXY", "1"),
            ("BRUTE_FORCE_MAX_FAILURES", "3"),
            ("BRUTE_FORCE_WINDOW_SECONDS", "60"),
            ("COMMGUARD_TEST_CLOCK", "true"),
        ],
    ]
    .concat();
    let s = TestServer::start(&db, &vars).await;
    let at = |seconds: i64| {
        let now =
            chrono::DateTime::parse_from_rfc3339("2026-12-01T16:00:00Z").unwrap() + chrono::Duration::seconds(seconds);
        let request =
            s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER).json(&json!({"now": now.to_rfc3339()}));
        async move { assert_eq!(request.send().await.unwrap().status(), 200) }
    };
    let from = |ip: &'static str, token: &'static str| {
        let request = s.http.get(s.url("/admin/api/me")).header("x-forwarded-for", ip).bearer_auth(token).send();
        async move { request.await.unwrap().status().as_u16() }
    };
    let (x, y) = ("198.51.100.31", "198.51.100.32");
    at(0).await;
    assert_eq!(from(y, "wrong").await, 401);
    for (second, status) in [(0, 401), (50, 401), (70, 401)] {
        at(second).await;
        assert_eq!(from(x, "wrong").await, status, "at {second} s");
    }
    // At 75 s the failures at 50, 70 and 75 s are three within 60 s, though the first failure
    // (0 s) is out of the window: a fixed window restarted at 70 s and counted two.
    at(75).await;
    assert_eq!(from(x, "wrong").await, 401, "the third failure in the window still gets its 401");
    assert_eq!(from(x, MASTER).await, 429, "and locks the address");
    assert_eq!(from(y, MASTER).await, 200);

    let lockout = s.server.as_ref().unwrap().state().lockout.clone();
    assert_eq!(lockout.prune().await.unwrap(), 0, "y's success reset its count; x is locked");
    at(76).await;
    assert_eq!(from(y, "wrong").await, 401);
    at(76 + 61).await;
    assert_eq!(lockout.prune().await.unwrap(), 1, "y's failure is older than the window");
    assert_eq!(from(x, MASTER).await, 429, "x's lock holds");
    at(75 + 901).await;
    assert_eq!(lockout.prune().await.unwrap(), 1, "x's lock expired");
    assert_eq!(from(x, MASTER).await, 200);
    s.stop().await;
}

/// Arguments nested as deep as the request parser allows (128 levels in all) are refused and
/// recorded, and the record stays readable: the store keeps at most `storable::MAX_DEPTH` levels
/// of a payload, so the agent's stream still loads (deprovisioning it works) and `audit verify`
/// reads every event. Stored whole, the refusal was deeper than serde_json reads back: every
/// later command on the stream failed with `internal`, and `audit verify` stopped on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn arguments_nested_as_deep_as_the_parser_allows_leave_the_stream_readable() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &VARS).await;
    let o = org(&s, "deep").await;
    let agent = McpSession::open(&s, &o.agent_token).await;
    let deep = (0..124).fold(json!("x"), |inner, _| json!([inner]));
    let (is_error, refused) = agent.call("comms_no_such_tool", json!({ "a": deep })).await;
    assert!(is_error, "{refused}");
    let pool = db.pool().await;
    let refusals: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE aggregate_id = $1 AND event_type = 'ActionRefused'")
            .bind(&o.agent_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(refusals, 1, "the refused call is recorded");

    let master = McpSession::open(&s, MASTER).await;
    let gone = master.ok("comms_deprovision_channels", json!({ "agentId": o.agent_id })).await;
    assert_eq!(gone["status"], "deprovisioned", "{gone}");
    let report = commguard::store::verify::verify(&pool, None).await.expect("every stored event reads back");
    assert!(report.is_ok(), "{report:?}");
    s.stop().await;
}

/// `lastUsedAt` is an instant of the service clock, as `createdAt` is: with the test clock in
/// 2030, a token issued and used then was last used in 2030, not on the machine's date.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_used_at_is_read_from_the_service_clock() {
    let db = TestDb::new().await;
    let vars = [&VARS[..], &[("COMMGUARD_TEST_CLOCK", "true")]].concat();
    let s = TestServer::start(&db, &vars).await;
    let clock = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER);
    assert!(clock.json(&json!({"now": "2030-01-01T00:00:00Z"})).send().await.unwrap().status().is_success());
    let o = org(&s, "clocked").await;
    McpSession::open(&s, &o.agent_token).await;
    let pool = db.pool().await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let used = loop {
        let used: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
            "SELECT u.last_used_at FROM token_last_used u JOIN tokens t USING (token_id)
              WHERE t.kind = 'agent' AND t.agent_id = $1",
        )
        .bind(&o.agent_id)
        .fetch_optional(&pool)
        .await
        .unwrap();
        if let Some(used) = used {
            break used;
        }
        assert!(std::time::Instant::now() < deadline, "lastUsedAt never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(used.to_rfc3339().starts_with("2030-01-01"), "lastUsedAt {used} is not the service clock's");
    s.stop().await;
}

/// A refused admin request whose body is not a JSON object is recorded with its size only: a
/// mistyped provider registration (a trailing comma) must not store its token where the feed
/// shows it, nor a malformed DNC body an address that erasure could not reach.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_admin_body_is_recorded_by_its_size_not_its_text() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &VARS).await;
    let body = r#"{"provider":"twilio","credentials":{"accountSid":"AC1","authToken":"s3cr3t-token"},}"#;
    let refused = s
        .http
        .post(s.url("/admin/api/providers"))
        .bearer_auth(MASTER)
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 400);
    let pool = db.pool().await;
    let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(&pool).await.unwrap();
    wait_visible(&pool, written).await;
    let feed = s.http.get(s.url("/admin/api/events?limit=1000")).bearer_auth(MASTER).send().await.unwrap();
    let feed = feed.text().await.unwrap();
    assert!(feed.contains("ActionRefused"), "the refusal is recorded");
    assert!(!feed.contains("s3cr3t-token"), "the token reached the feed");
    assert!(feed.contains(&format!("\"unparsedBytes\":{}", body.len())), "recorded by its size");
    s.stop().await;
}

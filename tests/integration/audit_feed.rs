//! The auditor's side of the admin API (docs/events.md#envelope, docs/admin-api.md): `/admin/api/events` pages the
//! global order without repeating or skipping (also across a transaction that commits late),
//! scoped to the caller's org, opened or `[erased]`, raw for the super-admin only, with every hash
//! recomputed by an independent Python canonicalizer; `/admin/api/audit` with each of its filters,
//! cursor paging, and subject references that a replay and migration 0018 rebuild identically.

use std::collections::BTreeSet;

use commguard_projections::audit::AuditProjection;
use serde_json::{json, Value};

use crate::support::ledger::{note, Ledger};
use crate::support::{provision, wait_visible, McpSession as Session, TestDb, TestServer};

const MASTER: &str = "audit-feed-test-master-token-0123456789abcdef";
/// The subject most events are about, and the same number as a person might type it.
const PHONE: &str = "+12025550100";
const PHONE_TYPED: &str = "+1 (202) 555-0100";
const EMAIL: &str = "bob@example.com";
const EMAIL_TYPED: &str = "  Bob@Example.COM ";
/// A number on the DNC list of org A: sending to it is refused.
const BLOCKED: &str = "+12025550199";
const T1: &str = "2026-12-01T16:00:00Z";
const T2: &str = "2026-12-01T17:00:00Z";

fn vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ("COMMGUARD_TEST_CLOCK", "true"),
    ]
}

async fn get(s: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let r = s.http.get(s.url(path)).bearer_auth(token).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

async fn ok(s: &TestServer, token: &str, path: &str) -> Value {
    let (status, body) = get(s, token, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

async fn set_clock(s: &TestServer, now: &str) {
    let r = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER).json(&json!({"now": now})).send().await;
    assert_eq!(r.unwrap().status(), 200);
}

struct Org {
    id: String,
    admin: String,
    agent_id: String,
    agent_token: String,
}

/// Org A (agent A) and org B (agent B). At T1 agent A gets consent from PHONE and EMAIL, sends
/// them an SMS and an email, is refused a send to BLOCKED (DNC), and gets a billing email; at T2
/// agent A texts PHONE again and agent B (in org B) texts PHONE once. Org A's admin is refused
/// the raw feed once (`ActionRefused`).
struct World {
    a: Org,
    b: Org,
}

async fn org(s: &TestServer, slug: &str, settings: Value) -> Org {
    let p = provision(s, MASTER, slug, settings, "Zoë’s desk", json!({"phone": true, "email": true})).await;
    Org { id: p.org_id, admin: p.admin, agent_id: p.agent_id, agent_token: p.agent_token }
}

async fn world(s: &TestServer) -> World {
    set_clock(s, T1).await;
    // Settings are stored as given: keys and numbers that canonicalization must get right.
    let settings = json!({"zeta": 1, "é": 0.0079, "😀": [1e21, 1e-7, -0.5], "\u{20ac}": {"b": true, "a": null}});
    let a = org(s, "alpha", settings).await;
    let b = org(s, "bravo", json!({})).await;
    let me = Session::open(s, &a.agent_token).await;
    me.ok("comms_record_consent", json!({"contactAddress": PHONE, "channel": "sms"})).await;
    me.ok("comms_record_consent", json!({"contactAddress": EMAIL, "channel": "email"})).await;
    me.ok("comms_send_message", json!({"to": PHONE, "body": "Your table is ready."})).await;
    me.ok("comms_send_message", json!({"channel": "email", "to": EMAIL, "subject": "Hi", "body": "Hello Bob"})).await;
    let dnc = s.http.post(s.url("/admin/api/dnc")).bearer_auth(&a.admin).json(&json!({"address": BLOCKED})).send();
    assert_eq!(dnc.await.unwrap().status(), 200);
    let (refused, _) = me.call("comms_send_message", json!({"to": BLOCKED, "body": "hello"})).await;
    assert!(refused, "a send to a DNC number is refused");
    let master = Session::open(s, MASTER).await;
    master.ok("comms_set_billing_config", json!({"agentId": a.agent_id, "billingEmail": EMAIL})).await;
    let (status, _) = get(s, &a.admin, "/admin/api/events?raw=true").await;
    assert_eq!(status, 403);

    set_clock(s, T2).await;
    me.ok("comms_send_message", json!({"to": PHONE, "body": "Still hungry?"})).await;
    let other = Session::open(s, &b.agent_token).await;
    other.ok("comms_record_consent", json!({"contactAddress": PHONE, "channel": "sms"})).await;
    other.ok("comms_send_message", json!({"to": PHONE, "body": "Other org here"})).await;
    World { a, b }
}

async fn stored_count(s: &TestServer) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(s.rt.store.pool()).await.unwrap()
}

/// Every event the caller sees, paging `limit` at a time with `extra` query parameters.
async fn whole_feed(s: &TestServer, token: &str, limit: usize, extra: &str) -> Vec<Value> {
    let (mut after, mut out) = (0i64, Vec::new());
    loop {
        let page = ok(s, token, &format!("/admin/api/events?after={after}&limit={limit}{extra}")).await;
        let events = page["events"].as_array().unwrap();
        assert!(events.len() <= limit);
        if events.is_empty() {
            assert_eq!(page["nextAfter"], after, "an empty page stays where it was");
            return out;
        }
        assert_eq!(page["nextAfter"], events.last().unwrap()["position"]);
        assert!(page["headPosition"].as_i64().unwrap() >= page["nextAfter"].as_i64().unwrap());
        after = page["nextAfter"].as_i64().unwrap();
        out.extend(events.iter().cloned());
    }
}

fn positions(events: &[Value]) -> Vec<i64> {
    events.iter().map(|e| e["position"].as_i64().unwrap()).collect()
}

/// Positions of every event stored (all of them below the horizon once visible), of one org or all.
async fn stored_positions(s: &TestServer, org: Option<&str>) -> Vec<i64> {
    sqlx::query_scalar("SELECT position FROM events WHERE $1::text IS NULL OR org_id = $1 ORDER BY position")
        .bind(org)
        .fetch_all(s.rt.store.pool())
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_feed_pages_in_commit_order_scoped_to_the_caller_and_erased_fields_read_erased() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let w = world(&s).await;
    wait_visible(s.rt.store.pool(), stored_count(&s).await).await;

    // Pages of 7 follow each other without repeating or skipping: together they are the store.
    let all = whole_feed(&s, MASTER, 7, "").await;
    assert_eq!(positions(&all), stored_positions(&s, None).await);
    let first = ok(&s, MASTER, "/admin/api/events").await;
    assert_eq!(first["events"].as_array().unwrap().len(), all.len().min(100), "100 by default");
    assert_eq!(first["headPosition"], *all.last().unwrap()["position"].as_i64().as_ref().unwrap());
    let envelope = &all[0];
    for field in [
        "position",
        "eventId",
        "aggregateType",
        "aggregateId",
        "sequence",
        "eventType",
        "eventVersion",
        "occurredAt",
        "orgId",
        "actor",
        "requestId",
        "transport",
        "provenance",
        "payload",
        "prevHash",
        "hash",
        "redactions",
    ] {
        assert!(envelope.get(field).is_some(), "envelope field {field}: {envelope}");
    }
    assert!(envelope.get("metadata").is_none(), "only raw envelopes carry the stored metadata");

    // Decrypted while the keys exist.
    let sent_a = |feed: &[Value]| -> Vec<Value> {
        feed.iter()
            .filter(|e| e["eventType"] == "MessageSent" && e["aggregateId"] == w.a.agent_id.as_str())
            .cloned()
            .collect()
    };
    let sent = sent_a(&all);
    assert_eq!(sent.len(), 3);
    assert_eq!(sent[0]["payload"]["to"], PHONE);
    assert_eq!(sent[0]["payload"]["body"], "Your table is ready.");
    assert_eq!(sent[1]["payload"]["to"], EMAIL);

    // An org token sees its own org only; naming another org is refused (Z5); the master token
    // may filter by org.
    let own = whole_feed(&s, &w.a.admin, 5, "").await;
    assert_eq!(positions(&own), stored_positions(&s, Some(&w.a.id)).await);
    assert!(own.iter().all(|e| e["orgId"] == w.a.id.as_str()));
    let own_head = ok(&s, &w.a.admin, "/admin/api/events?limit=1").await["headPosition"].clone();
    assert_eq!(own_head, *own.last().unwrap()["position"].as_i64().as_ref().unwrap(), "the head of the caller's scope");
    assert!(own_head.as_i64() < first["headPosition"].as_i64(), "org B's sends came later");
    let (status, refusal) = get(&s, &w.a.admin, &format!("/admin/api/events?orgId={}", w.b.id)).await;
    assert_eq!((status, refusal["code"].as_str()), (403, Some("forbidden")));
    assert_eq!(refusal["error"], format!("Access to organization \"{}\" denied", w.b.id));
    let filtered = whole_feed(&s, MASTER, 50, &format!("&orgId={}", w.b.id)).await;
    assert_eq!(positions(&filtered), stored_positions(&s, Some(&w.b.id)).await);

    // Raw payloads are the stored, sealed form, for the super-admin only.
    let (status, refusal) = get(&s, &w.a.admin, "/admin/api/events?raw=true").await;
    assert_eq!((status, refusal["code"].as_str()), (403, Some("forbidden")));
    assert!(refusal["error"].as_str().unwrap().starts_with("Super-admin access required"));
    let raw = whole_feed(&s, MASTER, 100, "&raw=true").await;
    let raw_sent = sent_a(&raw);
    assert_eq!(raw_sent[0]["payload"]["to"]["$pii"], 1);
    assert_eq!(raw_sent[0]["metadata"]["hash"], raw_sent[0]["hash"]);
    assert_eq!(raw_sent[0]["metadata"]["prevHash"], raw_sent[0]["prevHash"]);

    let stored = stored_count(&s).await;
    wait_visible(s.rt.store.pool(), stored).await;
    let big = ok(&s, MASTER, "/admin/api/events?limit=1000").await;
    assert_eq!(big["events"].as_array().unwrap().len() as i64, stored, "up to 1000 per page");

    // Bad paging values are refused with the JSON error model.
    for query in ["after=-1", "after=abc", "limit=0", "limit=1001", "limit=ten", "raw=yes"] {
        let (status, body) = get(&s, MASTER, &format!("/admin/api/events?{query}")).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_input")), "{query}: {body}");
        assert!(body["field"].is_string() && body["requestId"].is_string(), "{body}");
    }

    // Erasing PHONE in org A: its fields read "[erased]" with a redaction; EMAIL and org B's
    // copy of PHONE (another org's key) still open.
    let keystore = s.rt.store.keystore();
    let subject_ref = keystore.data_keys().blind_index(PHONE);
    assert_eq!(keystore.destroy_subject(Some(&w.a.id), &subject_ref).await.unwrap(), 1);
    let after = whole_feed(&s, MASTER, 100, "").await;
    let sent = sent_a(&after);
    assert_eq!((&sent[0]["payload"]["to"], &sent[0]["payload"]["body"]), (&json!("[erased]"), &json!("[erased]")));
    let redactions: BTreeSet<(String, String)> = sent[0]["redactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["path"].as_str().unwrap().into(), r["reason"].as_str().unwrap().into()))
        .collect();
    assert_eq!(
        redactions,
        BTreeSet::from([("body".into(), "subject_erased".into()), ("to".into(), "subject_erased".into())])
    );
    assert_eq!(sent[1]["payload"]["to"], EMAIL);
    assert!(sent[1]["redactions"].as_array().unwrap().is_empty());
    let in_b = after
        .iter()
        .find(|e| e["eventType"] == "MessageSent" && e["aggregateId"] == w.b.agent_id.as_str())
        .expect("org B's send");
    assert_eq!(in_b["payload"]["to"], PHONE);
    s.stop().await;
}

/// Feed pages answered so far whose rows had been read ahead (`read="ahead"`) or were read on request.
async fn feed_pages(s: &TestServer, read: &str) -> f64 {
    let text = s.http.get(s.url("/metrics")).bearer_auth(MASTER).send().await.unwrap().text().await.unwrap();
    let line = format!("commguard_feed_pages_total{{read=\"{read}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(line.as_str())).expect("the feed page counter").parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_read_ahead_are_what_a_fresh_read_gives_and_an_erasure_between_pages_reads_erased() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let w = world(&s).await;
    let pool = s.rt.store.pool().clone();
    wait_visible(&pool, stored_count(&s).await).await;
    let keystore = s.rt.store.keystore();

    // Paging 3 at a time: after the first page, every full page's rows were read ahead, and each
    // page is, byte for byte, what reading and opening that page directly gives.
    let (ahead, on_request) = (feed_pages(&s, "ahead").await, feed_pages(&s, "on_request").await);
    let (mut after, mut pages) = (0i64, 0);
    loop {
        let page = ok(&s, MASTER, &format!("/admin/api/events?after={after}&limit=3")).await;
        let (direct, _) = commguard::store::feed::read_page(&pool, after, 3, None).await.unwrap();
        let direct = commguard::store::envelope::envelopes_json(keystore, direct, false).await.unwrap();
        let direct: Vec<Value> = direct.iter().map(|e| serde_json::from_str(e.get()).unwrap()).collect();
        assert_eq!(page["events"].as_array().unwrap(), &direct, "page after {after}");
        pages += 1;
        if direct.len() < 3 {
            break;
        }
        after = page["nextAfter"].as_i64().unwrap();
    }
    assert!(pages >= 4, "{pages} pages");
    let read_ahead = feed_pages(&s, "ahead").await - ahead;
    assert_eq!(read_ahead, f64::from(pages - 2), "all but the first page and the short last one");
    assert_eq!(feed_pages(&s, "on_request").await - on_request, 2.0);

    // A page whose rows were read ahead before an erasure opens nothing of the erased subject:
    // which keys live is asked when the page is answered.
    let all = whole_feed(&s, MASTER, 100, "").await;
    let at = all
        .iter()
        .position(|e| e["eventType"] == "MessageSent" && e["aggregateId"] == w.a.agent_id.as_str())
        .expect("agent A's first send");
    assert!(at >= 2, "events come before the send");
    let before = all[at - 2]["position"].as_i64().unwrap();
    let previous = ok(&s, MASTER, &format!("/admin/api/events?after={before}&limit=1")).await;
    assert_eq!(previous["nextAfter"], all[at - 1]["position"]);
    let ahead = feed_pages(&s, "ahead").await;
    let subject_ref = keystore.data_keys().blind_index(PHONE);
    assert_eq!(keystore.destroy_subject(Some(&w.a.id), &subject_ref).await.unwrap(), 1);
    let page = ok(&s, MASTER, &format!("/admin/api/events?after={}&limit=1", previous["nextAfter"])).await;
    assert_eq!(feed_pages(&s, "ahead").await - ahead, 1.0, "this page's rows were read ahead");
    let sent = &page["events"][0];
    assert_eq!(sent["position"], all[at]["position"]);
    assert_eq!(all[at]["payload"]["to"], PHONE, "it opened before the erasure");
    assert_eq!(sent["payload"]["to"], "[erased]");
    assert_eq!(sent["redactions"].as_array().unwrap().len(), 2, "{sent}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feed_pages_never_skip_an_event_whose_transaction_commits_late() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let pool = s.rt.store.pool().clone();
    wait_visible(&pool, stored_count(&s).await).await;
    let seen = whole_feed(&s, MASTER, 2, "").await;
    let mut after = *positions(&seen).last().expect("start-up recorded the default org");

    // A writer takes its transaction id and stalls; a later append commits meanwhile (through
    // the store: a command would wait for projections, which the stalled writer holds back).
    let mut slow = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_current_xact_id()").execute(&mut *slow).await.unwrap();
    let ledger = s.rt.store.framework::<Ledger>(());
    note(&s.rt.store, &ledger, "fast", "committed first", Some(PHONE)).await;
    let stored = stored_count(&s).await;
    let page = ok(&s, MASTER, &format!("/admin/api/events?after={after}")).await;
    assert!(page["events"].as_array().unwrap().is_empty(), "the horizon holds back commits after the stalled one");
    assert_eq!(page["nextAfter"], after);
    assert!(page["headPosition"].as_i64().unwrap() <= after, "nor does the head pass it");

    // The stalled writer's event is numbered below the ones that committed first, and is not skipped.
    sqlx::query(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
                             position, event_id, occurred_at, org_id, prev_hash, hash)
         VALUES ('ledger', 'slow', 1, 'Noted', '1.0', '{}', '{}', (pg_current_xact_id()::text::bigint << 12),
                 gen_random_uuid(), now(), NULL, '', '')",
    )
    .execute(&mut *slow)
    .await
    .unwrap();
    slow.commit().await.unwrap();
    wait_visible(&pool, stored + 1).await;
    let mut rest = Vec::new();
    loop {
        let page = ok(&s, MASTER, &format!("/admin/api/events?after={after}&limit=1")).await;
        let Some(event) = page["events"].as_array().unwrap().first().cloned() else { break };
        after = event["position"].as_i64().unwrap();
        rest.push(event);
    }
    assert_eq!(rest[0]["aggregateId"], "slow", "the late transaction's event comes first");
    assert_eq!(rest[1]["aggregateId"], "fast");
    assert_eq!(rest[1]["payload"]["contact"], PHONE, "opened like every other event");
    assert_eq!(rest.len(), 2);
    let mut all = seen.clone();
    all.extend(rest);
    assert_eq!(positions(&all), stored_positions(&s, None).await, "nothing repeated, nothing skipped");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auditor_recomputes_every_hash_of_the_raw_feed_in_python() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    world(&s).await;
    let stored = stored_count(&s).await;
    wait_visible(s.rt.store.pool(), stored).await;
    let env = [("COMMGUARD_URL".to_string(), s.base.clone()), ("COMMGUARD_MASTER_TOKEN".into(), MASTER.into())];
    let minimum = stored.to_string();
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        crate::mcp_e2e::run_script("feed_hash.py", &[&minimum], &env)
    })
    .await
    .unwrap();
    s.stop().await;
}

/// Waits until the audit view holds every stored event.
async fn audit_complete(s: &TestServer) {
    let stored = stored_count(s).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let rows: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM audit_items").fetch_one(s.rt.store.pool()).await.unwrap();
        if rows >= stored {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "the audit view stays at {rows} of {stored}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// Every audit item for `query`, following `nextCursor` `limit` at a time.
async fn audit_items(s: &TestServer, token: &str, query: &str, limit: usize) -> Vec<Value> {
    let (mut items, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let mut path = format!("/admin/api/audit?limit={limit}&{query}");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let page = ok(s, token, &path).await;
        let got = page["items"].as_array().unwrap();
        assert!(got.len() <= limit);
        items.extend(got.iter().cloned());
        match page["nextCursor"].as_str() {
            Some(next) => {
                assert_eq!(got.len(), limit, "only full pages have a next cursor");
                cursor = Some(next.to_string());
            }
            None => return items,
        }
    }
}

fn encode(v: &str) -> String {
    form_urlencoded::byte_serialize(v.as_bytes()).collect()
}

/// Whether an opened envelope is about `subject`: a personal field holds it, or it is on the
/// subject's own stream.
fn about(envelope: &Value, subject: &str, subject_ref: &str) -> bool {
    envelope["payload"].to_string().contains(&format!("\"{subject}\""))
        || envelope["aggregateId"].as_str().unwrap().ends_with(subject_ref)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_audit_filter_narrows_the_view_and_replay_and_migration_rebuild_subjects() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let w = world(&s).await;
    audit_complete(&s).await;
    let everything = audit_items(&s, MASTER, "", 500).await;
    assert_eq!(everything.len() as i64, stored_count(&s).await);
    assert_eq!(audit_items(&s, MASTER, "", 4).await, everything, "cursor pages add up to the whole view");
    let default_page = ok(&s, MASTER, "/admin/api/audit").await;
    assert_eq!(default_page["items"].as_array().unwrap().len(), everything.len().min(50), "50 by default");
    let item = everything.iter().find(|i| i["eventType"] == "MessageBlocked").expect("the refused send");
    assert_eq!(item["outcome"], "refused");
    assert_eq!(
        (item["refusedBy"].as_str(), item["code"].as_str(), item["rule"].as_str()),
        (Some("dnc"), Some("compliance_blocked"), Some("dnc"))
    );
    assert_eq!(item["actor"], json!({"kind": "agent", "id": w.a.agent_id}));
    assert_eq!(item["orgId"], w.a.id.as_str());
    assert!(item["summary"].as_str().unwrap().contains("refused by dnc"));
    let allowed = everything.iter().find(|i| i["eventType"] == "OrganizationCreated").unwrap();
    assert!(allowed.get("refusedBy").is_none() && allowed.get("code").is_none(), "absent, not null: {allowed}");
    for i in &everything {
        let summary = i["summary"].as_str().unwrap();
        for secret in [PHONE, "2025550100", EMAIL, BLOCKED, "table is ready", "Hello Bob"] {
            assert!(!summary.contains(secret), "a summary holds personal data: {summary}");
        }
    }

    // Opened events, to check the subject filters against.
    wait_visible(s.rt.store.pool(), stored_count(&s).await).await;
    let feed = whole_feed(&s, MASTER, 1000, "").await;
    let keys = s.rt.store.keystore().data_keys();
    for (typed, subject) in [(PHONE_TYPED, PHONE), (EMAIL_TYPED, EMAIL)] {
        let subject_ref = keys.blind_index(subject);
        let found: Vec<i64> = positions(&audit_items(&s, MASTER, &format!("subject={}", encode(typed)), 500).await);
        let expected: Vec<i64> =
            positions(&feed.iter().filter(|e| about(e, subject, &subject_ref)).cloned().collect::<Vec<_>>());
        assert!(expected.len() >= 3, "{subject}: {expected:?}");
        assert_eq!(found, expected, "{subject}: matched by blind index, normalised first");
    }
    let in_a = audit_items(&s, &w.a.admin, &format!("subject={}", encode(PHONE)), 500).await;
    assert!(in_a.iter().all(|i| i["orgId"] == w.a.id.as_str()));
    assert!(in_a.len() < audit_items(&s, MASTER, &format!("subject={}", encode(PHONE)), 500).await.len());

    // agentId, eventType, outcome, actorKind, from/to: each keeps exactly the matching items.
    let view = (&s, everything.as_slice());
    check(view, &format!("agentId={}", w.a.agent_id), |i| i["agentId"] == w.a.agent_id.as_str()).await;
    check(view, "eventType=MessageSent", |i| i["eventType"] == "MessageSent").await;
    check(view, "outcome=refused", |i| i["outcome"] == "refused").await;
    check(view, "outcome=allowed", |i| i["outcome"] == "allowed").await;
    check(view, "actorKind=super-admin", |i| i["actor"]["kind"] == "super-admin").await;
    check(view, "actorKind=agent", |i| i["actor"]["kind"] == "agent").await;
    check(view, "from=2026-12-01T16:30:00Z", |i| i["occurredAt"].as_str().unwrap() >= "2026-12-01T16:30").await;
    check(view, "to=2026-12-01T16:30:00.000Z", |i| i["occurredAt"].as_str().unwrap() <= "2026-12-01T16:30").await;
    let window =
        audit_items(&s, MASTER, "from=2026-12-01T16:59:59Z&to=2026-12-01T18:00:00Z&eventType=MessageSent", 500).await;
    assert_eq!(window.len(), 2, "agent A's and agent B's sends at T2");
    assert!(window.iter().all(|i| i["occurredAt"].as_str().unwrap().starts_with(&T2[..13])));

    // Org tokens see their org only; another org's agent is refused (Z2), another org too (Z5).
    // (Refusals are recorded: the view grows from here on.)
    let own = audit_items(&s, &w.a.admin, "", 500).await;
    assert!(!own.is_empty() && own.iter().all(|i| i["orgId"] == w.a.id.as_str()));
    let (status, body) = get(&s, &w.a.admin, &format!("/admin/api/audit?agentId={}", w.b.agent_id)).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, _) = get(&s, &w.a.admin, &format!("/admin/api/audit?orgId={}", w.b.id)).await;
    assert_eq!(status, 403);
    let (status, _) = get(&s, MASTER, "/admin/api/audit?agentId=no-such-agent").await;
    assert_eq!(status, 404);
    for query in [
        "outcome=maybe",
        "actorKind=robot",
        "from=yesterday",
        "to=2026-13-01T00:00:00Z",
        "limit=0",
        "limit=501",
        "cursor=garbage",
        "subject=not-a-number",
        "eventType=Message%20Sent",
    ] {
        let (status, body) = get(&s, MASTER, &format!("/admin/api/audit?{query}")).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_input")), "{query}: {body}");
    }

    // Subject references: a replay from position 0 and migration 0018's SQL backfill both
    // rebuild exactly what the live projection wrote.
    s.stop().await;
    let pool = db.pool().await;
    let stored: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(&pool).await.unwrap();
    wait_visible(&pool, stored).await;
    let tables = commguard_projections::Tables::live(&["audit_items", "audit_stream_heads"]);
    let runner = commguard::store::runner::catch_up(&pool, &AuditProjection, "audit", &tables, 500);
    runner.await.unwrap();
    let live = subject_refs(&pool).await;
    assert_eq!(live.len() as i64, stored, "the live view caught up");
    assert!(live.iter().filter(|(_, r)| r.is_some()).count() >= 8);
    commguard::store::runner::rebuild(&pool, &AuditProjection, &mut commguard::store::runner::Progress::quiet())
        .await
        .unwrap();
    assert_eq!(subject_refs(&pool).await, live, "replay");
    sqlx::query("ALTER TABLE audit_items DROP COLUMN subject_ref").execute(&pool).await.unwrap();
    let migration = commguard::store::MIGRATOR.iter().find(|m| m.version == 18).expect("migration 0018");
    sqlx::raw_sql(&migration.sql).execute(&pool).await.unwrap();
    assert_eq!(subject_refs(&pool).await, live, "migration 0018 backfill");
}

/// The audit items for `query` are exactly the items of the whole view that `keep` keeps, and
/// the filter keeps some and drops some.
async fn check(view: (&TestServer, &[Value]), query: &str, keep: impl Fn(&Value) -> bool) {
    let (s, everything) = view;
    let filtered = audit_items(s, MASTER, query, 500).await;
    let expected: Vec<Value> = everything.iter().filter(|i| keep(i)).cloned().collect();
    assert!(!expected.is_empty(), "{query} matches something");
    assert!(expected.len() < everything.len(), "{query} filters something out");
    assert_eq!(filtered, expected, "{query}");
}

async fn subject_refs(pool: &sqlx::PgPool) -> Vec<(i64, Option<String>)> {
    sqlx::query_as("SELECT position, subject_ref FROM audit_items ORDER BY position").fetch_all(pool).await.unwrap()
}

/// `ActionRefused.args` (docs/events.md): a refused send and a refused admin request keep their
/// arguments, sealed in the store (no clear number, address or body; no credential at all) and
/// opened in the feed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refused_actions_keep_their_arguments_sealed_in_the_store_and_open_in_the_feed() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, T1).await;
    let a = org(&s, "alpha", json!({})).await;
    let me = Session::open(&s, &a.agent_token).await;
    let body = "Meet me at 221B Baker Street";
    let (refused, _) =
        me.call("comms_send_message", json!({"to": PHONE_TYPED, "body": body, "channel": "carrier-pigeon"})).await;
    assert!(refused, "an unknown channel is refused at the input check");
    let dnc = s
        .http
        .post(s.url("/admin/api/dnc"))
        .bearer_auth(&a.admin)
        .json(&json!({"address": EMAIL, "reason": "asked twice <script>", "bogus": {"$seal": "x", "a.b": 7},
            "credentials": {"authToken": "sk_live_never_stored"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(dnc.status(), 400, "a script tag in the reason is refused");
    wait_visible(s.rt.store.pool(), stored_count(&s).await).await;

    let stored: Vec<String> =
        sqlx::query_scalar("SELECT payload::text FROM events WHERE event_type = 'ActionRefused' ORDER BY position")
            .fetch_all(s.rt.store.pool())
            .await
            .unwrap();
    assert_eq!(stored.len(), 2, "{stored:?}");
    for text in &stored {
        for clear in ["2025550100", "202) 555", "Baker Street", "carrier-pigeon", "bob@example", "asked twice"] {
            assert!(!text.contains(clear), "{clear} in the clear: {text}");
        }
        assert!(!text.contains("sk_live"), "a credential is never stored: {text}");
        assert!(!text.contains("$seal"), "nothing left unsealed: {text}");
        assert!(text.contains("\"args\""), "{text}");
    }

    let feed = whole_feed(&s, MASTER, 1000, "").await;
    let refusals: Vec<&Value> = feed.iter().filter(|e| e["eventType"] == "ActionRefused").collect();
    assert_eq!(refusals.len(), 2);
    let payload = |e: &Value| e["payload"].get("ActionRefused").cloned().unwrap_or_else(|| e["payload"].clone());
    let send = payload(refusals[0]);
    assert_eq!(send["tool"], "comms_send_message", "{send}");
    assert_eq!(send["args"], json!({"to": PHONE_TYPED, "body": body, "channel": "carrier-pigeon"}), "{send}");
    assert_eq!(refusals[0]["redactions"], json!([]));
    let admin = payload(refusals[1]);
    assert_eq!(admin["tool"], "POST /admin/api/dnc", "{admin}");
    assert_eq!(admin["args"]["address"], EMAIL, "{admin}");
    assert_eq!(admin["args"]["reason"], "asked twice <script>", "{admin}");
    assert!(admin["args"].get("credentials").is_none(), "{admin}");
    let bogus = &admin["args"]["bogus"];
    assert_eq!(bogus.as_object().unwrap().len(), 2, "keys renamed, values kept: {bogus}");
    assert!(bogus.get("$seal").is_none() && bogus.get("a.b").is_none(), "{bogus}");
    assert!(bogus.as_object().unwrap().values().any(|v| v == "x"), "{bogus}");
    assert!(bogus.as_object().unwrap().values().any(|v| v == 7), "{bogus}");
}

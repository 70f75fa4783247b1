//! Identity across instances: two servers on one database. A token rotated through one instance
//! is refused by the other, and the other's open SSE stream of that token ends within 5 s.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::support::{last_refusal_provenance, listed_checks, McpSession, TestDb, TestServer};

const MASTER: &str = "identity-test-master-token-0123456789abcdef";
const LIMITS: [(&str, &str); 3] =
    [("MASTER_SECURITY_TOKEN", MASTER), ("HTTP_RATE_LIMIT_PER_IP", "100000"), ("HTTP_RATE_LIMIT_GLOBAL", "100000")];

/// Calls `tool` as `token` in a fresh Streamable HTTP session; returns its JSON result.
async fn call_tool(s: &TestServer, token: &str, tool: &str, args: Value) -> Value {
    McpSession::open(s, token).await.ok(tool, args).await
}

/// Like `call_tool`, but returns refusals too: (isError, the result's JSON).
async fn try_tool(s: &TestServer, token: &str, tool: &str, args: Value) -> (bool, Value) {
    McpSession::open(s, token).await.call(tool, args).await
}

/// Creates an organization as the super-admin; returns (orgId, its admin token).
async fn create_org(s: &TestServer, slug: &str, a2p_registered: bool) -> (String, String) {
    let org = call_tool(
        s,
        MASTER,
        "comms_create_organization",
        json!({"name": slug, "slug": slug, "a2pRegistered": a2p_registered}),
    )
    .await;
    (org["orgId"].as_str().unwrap().to_string(), org["adminToken"].as_str().unwrap().to_string())
}

async fn sse_status(s: &TestServer, token: &str) -> u16 {
    s.http.get(s.url(&format!("/sse?token={token}"))).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_one_instance_revokes_and_closes_streams_on_another() {
    let db = TestDb::new().await;
    let a = TestServer::start(&db, &LIMITS).await;
    let b = TestServer::start(&db, &LIMITS).await;

    let (org_id, org_token) = create_org(&a, "two-instances", true).await;
    let agent = call_tool(
        &a,
        &org_token,
        "comms_provision_channels",
        json!({"displayName": "Roamer", "capabilities": {"email": true}}),
    )
    .await;
    let (agent_id, old) =
        (agent["agentId"].as_str().unwrap().to_string(), agent["securityToken"].as_str().unwrap().to_string());

    // Instance B knows the token (and caches it) and holds a stream open with it.
    let stream = b.http.get(b.url(&format!("/sse?token={old}"))).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    let first = body.next().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).starts_with("event: endpoint"));

    let rotated = a
        .http
        .post(a.url(&format!("/admin/api/agents/{agent_id}/regenerate-token")))
        .bearer_auth(&org_token)
        .send()
        .await
        .unwrap();
    assert_eq!(rotated.status(), 200);
    let new: Value = rotated.json().await.unwrap();
    let new = new["token"].as_str().unwrap().to_string();

    // The old token is refused by B as soon as B hears of the revocation (NOTIFY), and by A at once.
    assert_eq!(sse_status(&a, &old).await, 401);
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match sse_status(&b, &old).await {
            401 => break,
            status => assert!(Instant::now() < deadline, "B still admits the revoked token ({status})"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(call_tool(&b, &new, "comms_ping", json!({}),).await["principal"]["id"], agent_id.as_str());

    // B's stream of the revoked token ends within 5 s.
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(chunk) = body.next().await {
            if chunk.is_err() {
                break;
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the revoked token's stream on the other instance is still open after 5 s");

    // The route is `comms_rotate_token`: its optional `label` names the new token.
    let labelled = a
        .http
        .post(a.url(&format!("/admin/api/agents/{agent_id}/regenerate-token")))
        .bearer_auth(&org_token)
        .json(&json!({"label": "http-label"}))
        .send()
        .await
        .unwrap();
    assert_eq!(labelled.status(), 200);
    let tokens: Value = a
        .http
        .get(a.url(&format!("/admin/api/agents/{agent_id}/tokens")))
        .bearer_auth(&org_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let labels: Vec<&str> = tokens["tokens"].as_array().unwrap().iter().filter_map(|t| t["label"].as_str()).collect();
    assert_eq!(labels, ["http-label"], "{tokens}");

    // The org's own rotation takes the same optional label; a label Postgres cannot hold is
    // refused before anything changes.
    let rotate_org = |body: Option<Value>, token: String| {
        let mut request = a.http.post(a.url(&format!("/admin/api/orgs/{org_id}/rotate-token"))).bearer_auth(token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        async move {
            let reply = request.send().await.unwrap();
            (reply.status().as_u16(), reply.json::<Value>().await.unwrap())
        }
    };
    let (status, refused) = rotate_org(Some(json!({"label": "l\u{0}"})), org_token.clone()).await;
    assert_eq!((status, refused["code"].as_str()), (400, Some("invalid_input")), "{refused}");
    let (status, rotated) = rotate_org(Some(json!({"label": "ops desk"})), org_token.clone()).await;
    assert_eq!(status, 200, "{rotated}");
    let (status, again) = rotate_org(None, rotated["token"].as_str().unwrap().to_string()).await;
    assert_eq!(status, 200, "no body: {again}");
    let org_labels: Vec<Option<String>> =
        sqlx::query_scalar("SELECT label FROM tokens WHERE kind = 'org' AND org_id = $1 ORDER BY created_at")
            .bind(org_id)
            .fetch_all(&db.pool().await)
            .await
            .unwrap();
    assert_eq!(org_labels.len(), 3, "the first token and two rotations, none for the refused one");
    assert_eq!(org_labels[1].as_deref(), Some("ops desk"));

    b.stop().await;
    a.stop().await;
}

async fn admin(s: &TestServer, token: &str, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut r = s.http.request(method, s.url(path)).bearer_auth(token);
    if let Some(body) = body {
        r = r.json(&body);
    }
    let r = r.send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// Waits (≤ 5 s) until an open event stream ends.
async fn ends_within_5s(body: &mut (impl futures::Stream<Item = reqwest::Result<axum::body::Bytes>> + Unpin)) -> bool {
    tokio::time::timeout(Duration::from_secs(5), async { while let Some(Ok(_)) = body.next().await {} }).await.is_ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_is_approved_suspended_and_restored_by_the_super_admin_only() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &LIMITS).await;
    let (org_id, org_token) = create_org(&s, "lifecycle", true).await;
    let agent = call_tool(
        &s,
        &org_token,
        "comms_provision_channels",
        json!({"displayName": "Life agent", "capabilities": {"phone": true}}),
    )
    .await;
    let agent_token = agent["securityToken"].as_str().unwrap().to_string();
    assert!(agent["channels"]["phone"].as_str().unwrap().starts_with("+1555"));

    let path = |what: &str| format!("/admin/api/orgs/{org_id}/{what}");
    let (status, body) =
        admin(&s, &org_token, reqwest::Method::POST, &path("approve"), Some(json!({"kycNote": "docs ok"}))).await;
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    let (status, body) =
        admin(&s, MASTER, reqwest::Method::POST, &path("approve"), Some(json!({"kycNote": "KYC documents verified"})))
            .await;
    assert_eq!((status, body["mode"].as_str()), (200, Some("production")), "{body}");
    let (status, _) =
        admin(&s, MASTER, reqwest::Method::POST, &path("approve"), Some(json!({"kycNote": "again"}))).await;
    assert_eq!(status, 409);

    let stream = s.http.get(s.url(&format!("/sse?token={agent_token}"))).send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let mut body = stream.bytes_stream();
    body.next().await.unwrap().unwrap();
    let (status, _) =
        admin(&s, MASTER, reqwest::Method::POST, &path("suspend"), Some(json!({"reason": "abuse report"}))).await;
    assert_eq!(status, 200);
    assert!(ends_within_5s(&mut body).await, "the suspended org's stream is still open");
    let refused = s.http.get(s.url(&format!("/sse?token={agent_token}"))).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(refused["error"], format!("Organization \"{org_id}\" is suspended"));
    // Reads keep working for the org admin while suspended (Z6).
    let (status, me) = admin(&s, &org_token, reqwest::Method::GET, "/admin/api/me", None).await;
    assert_eq!((status, me["org"]["mode"].as_str()), (200, Some("suspended")));

    let (status, body) = admin(&s, MASTER, reqwest::Method::POST, &path("unsuspend"), None).await;
    assert_eq!((status, body["mode"].as_str()), (200, Some("production")), "the previous mode comes back");
    assert_eq!(sse_status(&s, &agent_token).await, 200);

    // The refused approval is an event, with the check that refused it.
    let refusals: Vec<Value> = sqlx::query_scalar(
        "SELECT metadata::jsonb FROM events WHERE event_type = 'ActionRefused' AND aggregate_id = $1",
    )
    .bind(&org_id)
    .fetch_all(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(refusals.len(), 1);
    assert_eq!(refusals[0]["provenance"]["refusedBy"], "role");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn org_capacity_is_exact_when_two_instances_provision_at_once() {
    let db = TestDb::new().await;
    let a = TestServer::start(&db, &LIMITS).await;
    let b = TestServer::start(&db, &LIMITS).await;
    let (org_id, org_token) = create_org(&a, "capacity", true).await;
    let (status, _) = admin(
        &a,
        MASTER,
        reqwest::Method::POST,
        &format!("/admin/api/orgs/{org_id}/settings"),
        Some(json!({"maxAgents": 3})),
    )
    .await;
    assert_eq!(status, 200);

    let attempts = (0..12).map(|i| {
        let server = if i % 2 == 0 { &a } else { &b };
        try_tool(server, &org_token, "comms_provision_channels", json!({"displayName": format!("Racer {i}")}))
    });
    let outcomes = futures::future::join_all(attempts).await;
    let admitted = outcomes.iter().filter(|(is_error, _)| !is_error).count();
    assert_eq!(admitted, 3, "exactly maxAgents provisions succeed: {outcomes:?}");
    for (_, refusal) in outcomes.iter().filter(|(is_error, _)| *is_error) {
        assert_eq!(refusal["code"], "quota_exceeded");
        assert_eq!(refusal["error"], "Agent pool is full (3/3). Deprovision an agent first.");
    }

    // Successful commands carry the checks they passed.
    let provenance: Value = sqlx::query_scalar(
        "SELECT metadata::jsonb -> 'provenance' FROM events WHERE event_type = 'AgentProvisioned' LIMIT 1",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    let checks: Vec<&str> =
        provenance["checks"].as_array().unwrap().iter().map(|c| c["check"].as_str().unwrap()).collect();
    assert_eq!(checks, ["role", "input", "org_state", "country_rules", "duplicate", "capacity", "provider"]);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_session_cap_refuses_with_503_and_failures_are_recorded() {
    let db = TestDb::new().await;
    let mut vars = LIMITS.to_vec();
    vars.push(("MCP_MAX_SESSIONS", "2"));
    let s = TestServer::start(&db, &vars).await;
    let first = s.http.get(s.url(&format!("/sse?token={MASTER}"))).send().await.unwrap();
    let second = s.http.get(s.url(&format!("/sse?token={MASTER}"))).send().await.unwrap();
    assert_eq!((first.status().as_u16(), second.status().as_u16()), (200, 200));
    let third = s.http.get(s.url(&format!("/sse?token={MASTER}"))).send().await.unwrap();
    assert_eq!(third.status(), 503);
    drop((first, second));

    assert_eq!(sse_status(&s, "not-a-token").await, 401);
    let pool = db.pool().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let counts: (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE event_type = 'AuthFailed'), COUNT(*) FILTER (WHERE event_type = 'SessionClosed') FROM events",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
        if counts == (1, 2) {
            break;
        }
        assert!(Instant::now() < deadline, "expected one AuthFailed and two SessionClosed, got {counts:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failed: Value = sqlx::query_scalar("SELECT payload::jsonb FROM events WHERE event_type = 'AuthFailed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed["reason"], "invalid");
    assert_eq!(failed["route"], "/sse");
    assert!(failed["ip"]["$pii"].is_number(), "the IP is sealed: {failed}");
    s.stop().await;
}

/// A `/mcp` session opened by the master with `initialize`: its id.
async fn open_streamable(s: &TestServer) -> String {
    let init = s
        .http
        .post(s.url("/mcp"))
        .bearer_auth(MASTER)
        .header("accept", "application/json, text/event-stream")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}))
        .send()
        .await
        .unwrap();
    init.headers()["mcp-session-id"].to_str().unwrap().to_string()
}

/// A JSON-RPC ping in `session`: the status.
async fn ping_streamable(s: &TestServer, session: &str) -> u16 {
    let r = s
        .http
        .post(s.url("/mcp"))
        .bearer_auth(MASTER)
        .header("accept", "application/json, text/event-stream")
        .header("mcp-session-id", session)
        .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "ping"}))
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streamable_sessions_expire() {
    let db = TestDb::new().await;
    let mut vars = LIMITS.to_vec();
    vars.push(("MCP_SESSION_IDLE_SECONDS", "1"));
    let s = TestServer::start(&db, &vars).await;
    let session = open_streamable(&s).await;
    let ping = || ping_streamable(&s, &session);
    assert_eq!(ping().await, 200);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if ping().await == 404 {
            break;
        }
        // Each ping keeps it alive: wait out the idle limit before the next probe.
        tokio::time::sleep(Duration::from_millis(1600)).await;
        assert!(Instant::now() < deadline, "the idle session never expired");
    }
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_needs_no_token_but_obeys_the_admin_allowlist() {
    let db = TestDb::new().await;
    let open = TestServer::start(&db, &LIMITS).await;
    let doc: Value = open.http.get(open.url("/admin/api/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/admin/api/agents/{agentId}/tokens"]["get"].is_object());
    open.stop().await;

    let mut vars = LIMITS.to_vec();
    vars.push(("ADMIN_IP_ALLOWLIST", "10.0.0.0/8"));
    let closed = TestServer::start(&db, &vars).await;
    let refused = closed.http.get(closed.url("/admin/api/openapi.json")).send().await.unwrap();
    assert_eq!(refused.status(), 403);
    closed.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_country_rule_refusal_names_its_rule_and_is_recorded_with_it() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &LIMITS).await;
    let org = call_tool(&s, MASTER, "comms_create_organization", json!({"name": "No A2P", "slug": "no-a2p"})).await;
    let org_token = org["adminToken"].as_str().unwrap().to_string();
    let (is_error, refusal) = try_tool(
        &s,
        &org_token,
        "comms_provision_channels",
        json!({"displayName": "US phone", "country": "US", "capabilities": {"phone": true}}),
    )
    .await;
    assert!(is_error, "a US phone number needs A2P registration: {refusal}");
    assert_eq!(
        (refusal["code"].as_str(), refusal["rule"].as_str()),
        (Some("compliance_blocked"), Some("country_rules"))
    );
    assert!(!refusal["blockers"].as_array().unwrap().is_empty(), "the blockers are listed: {refusal}");

    let recorded: (String, Option<String>, String) = sqlx::query_as(
        "SELECT payload::jsonb ->> 'code', payload::jsonb ->> 'rule', payload::jsonb ->> 'tool' FROM events
          WHERE event_type = 'ActionRefused' AND aggregate_id = $1",
    )
    .bind(org["orgId"].as_str().unwrap())
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(
        recorded,
        ("compliance_blocked".into(), Some("country_rules".into()), "comms_provision_channels".into())
    );

    // A country without blockers provisions, and its rules come back as warnings, each
    // `{code, message}` as every tool's warnings (docs/tools.md).
    let provisioned =
        call_tool(&s, &org_token, "comms_provision_channels", json!({"displayName": "Paris", "country": "FR"})).await;
    assert_eq!(
        provisioned["warnings"],
        json!([
            {"code": "calling_hours", "message": "France restricts calling hours to 8:00-20:00 local time"},
            {"code": "recording_consent", "message": "France requires consent to record calls"},
        ])
    );
    s.stop().await;
}

/// `GET /admin/api/me` as the master from `ip` (TRUST_PROXY=1): the status.
async fn me_from(s: &TestServer, ip: &str, token: &str) -> u16 {
    let r = s.http.get(s.url("/admin/api/me")).header("x-forwarded-for", ip).bearer_auth(token).send().await.unwrap();
    r.status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_set_on_one_instance_outlives_a_success_the_other_checked_before_it() {
    let db = TestDb::new().await;
    let vars = [&LIMITS[..], &[("TRUST_PROXY", "1"), ("BRUTE_FORCE_MAX_FAILURES", "3")]].concat();
    let a = TestServer::start(&db, &vars).await;
    let b = TestServer::start(&db, &vars).await;
    let ip = "203.0.113.77";
    for _ in 0..3 {
        assert_eq!(me_from(&a, ip, "not-the-master-token").await, 401);
    }
    assert_eq!(me_from(&a, ip, MASTER).await, 429, "the third failure locked the address");
    // B hears of the failures (NOTIFY) and refuses the address too.
    let deadline = Instant::now() + Duration::from_secs(2);
    while me_from(&b, ip, MASTER).await != 429 {
        assert!(Instant::now() < deadline, "B never refused the locked address");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each failure was announced; the last announcements arrive before the success below, so
    // that none of them makes B suspect the address again after it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // A request B let through just before the lock now succeeds: it must not make B forget the
    // lock (it used to stop checking the address, and served it for the whole 900 s).
    let late = b.server.as_ref().unwrap().state().lockout.succeed(ip.parse().unwrap(), "/admin/api").await;
    let refused = late.expect_err("a success after the lock is refused as the lock's requests are");
    assert_eq!(
        (refused.code.as_str(), refused.message.as_str()),
        ("locked_out", "Too many failed attempts. Try again later.")
    );
    assert_eq!(me_from(&b, ip, MASTER).await, 429, "B still refuses the locked address");
    assert_eq!(me_from(&a, ip, MASTER).await, 429);
    let pool = db.pool().await;
    let failures: i32 = sqlx::query_scalar("SELECT failures FROM auth_failures").fetch_one(&pool).await.unwrap();
    assert_eq!(failures, 3, "the lock's row is kept");
    a.stop().await;
    b.stop().await;
}

/// A failure whose count cannot be kept must not leave the address free to guess: its requests
/// are refused (`unavailable`, fail closed) until the missed failure is counted, and then it is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_whose_failure_could_not_be_counted_is_refused_until_it_is() {
    let db = TestDb::new().await;
    let vars = [&LIMITS[..], &[("TRUST_PROXY", "1"), ("BRUTE_FORCE_MAX_FAILURES", "3")]].concat();
    let s = TestServer::start(&db, &vars).await;
    let pool = db.pool().await;
    let ip = "203.0.113.78";
    // The counter's statement fails (its table is away); the failure is still recorded.
    sqlx::query("ALTER TABLE auth_failures RENAME TO auth_failures_away").execute(&pool).await.unwrap();
    assert_eq!(me_from(&s, ip, "not-the-master-token").await, 401);
    let failed: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'AuthFailed'")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert_eq!(failed, 1, "the failure is recorded");
    // Its count is short: the address is refused, the right credential too, while others are served.
    assert_eq!(me_from(&s, ip, MASTER).await, 503);
    assert_eq!(me_from(&s, ip, MASTER).await, 503, "refused again while the count still fails");
    assert_eq!(me_from(&s, "203.0.113.79", MASTER).await, 200);
    sqlx::query("ALTER TABLE auth_failures_away RENAME TO auth_failures").execute(&pool).await.unwrap();
    // The missed failure is counted first, then this one: two of the three that lock.
    assert_eq!(me_from(&s, ip, "not-the-master-token").await, 401);
    let failures: i32 = sqlx::query_scalar("SELECT failures FROM auth_failures").fetch_one(&pool).await.unwrap();
    assert_eq!(failures, 2, "the missed failure was counted");
    assert_eq!(me_from(&s, ip, "not-the-master-token").await, 401, "the third failure gets its 401");
    assert_eq!(me_from(&s, ip, MASTER).await, 429, "and locks the address");
    s.stop().await;
}

/// A failure whose `AuthFailed` cannot be stored is answered `unavailable` and still counted:
/// the answer tells the guesser the token was wrong, so an uncounted one would be a free guess.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_that_could_not_be_recorded_is_still_counted() {
    let db = TestDb::new().await;
    let vars = [&LIMITS[..], &[("TRUST_PROXY", "1"), ("BRUTE_FORCE_MAX_FAILURES", "3")]].concat();
    let s = TestServer::start(&db, &vars).await;
    let pool = db.pool().await;
    let ip = "203.0.113.80";
    sqlx::raw_sql(
        "CREATE FUNCTION refuse_auth_failed() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'AuthFailed refused by the test'; END $$;
         CREATE TRIGGER refuse_auth_failed BEFORE INSERT ON events
           FOR EACH ROW WHEN (NEW.event_type = 'AuthFailed') EXECUTE FUNCTION refuse_auth_failed();",
    )
    .execute(&pool)
    .await
    .unwrap();
    for _ in 0..3 {
        assert_eq!(me_from(&s, ip, "not-the-master-token").await, 503, "unrecorded: unavailable");
    }
    sqlx::raw_sql("DROP TRIGGER refuse_auth_failed ON events").execute(&pool).await.unwrap();
    let failures: i32 = sqlx::query_scalar("SELECT failures FROM auth_failures").fetch_one(&pool).await.unwrap();
    assert_eq!(failures, 3, "every guess was counted");
    assert_eq!(me_from(&s, ip, MASTER).await, 429, "the three locked the address");
    assert_eq!(me_from(&s, "203.0.113.81", MASTER).await, 200);
    s.stop().await;
}

/// An instance whose identity listener is not listening (before it first does, or after it lost
/// its connection) trusts no cached identity and no partial list of suspect addresses: a token
/// revoked, or an address locked, by another instance meanwhile — whose notice never reaches this
/// one — is refused at once. The cache and the suspects answer again once it listens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_its_listener_an_instance_reads_identities_and_locks_from_postgres() {
    use commguard::auth::lockout::Refusal;
    use commguard::auth::{Identity, Lockout};
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &LIMITS).await;
    let org = call_tool(&s, MASTER, "comms_create_organization", json!({"name": "Unheard", "slug": "unheard"})).await;
    let org_token = org["adminToken"].as_str().unwrap().to_string();
    let agent = call_tool(&s, &org_token, "comms_provision_channels", json!({"displayName": "Unheard"})).await;
    let token = agent["securityToken"].as_str().unwrap().to_string();
    let pool = db.pool().await;

    // Another instance's view, with no listener of its own: what it cached it hears nothing about.
    let identity = Identity::new(pool.clone(), Some(MASTER), false, commguard::clock::Clock::default());
    identity.watch(true);
    assert!(identity.resolve(&token).await.is_ok());
    sqlx::query("UPDATE tokens SET revoked_at = now() WHERE kind = 'agent' AND agent_id = $1")
        .bind(agent["agentId"].as_str().unwrap())
        .execute(&pool)
        .await
        .unwrap();
    assert!(identity.resolve(&token).await.is_ok(), "listening, the cache answers until a notice drops it");
    identity.watch(false);
    assert_eq!(identity.resolve(&token).await.err(), Some(commguard::auth::AuthFailure::Revoked));
    identity.watch(true);
    assert_eq!(identity.resolve(&token).await.err(), Some(commguard::auth::AuthFailure::Revoked));

    // An address locked elsewhere, never announced here.
    let config = crate::support::config(&[("MASTER_SECURITY_TOKEN", MASTER), ("DATABASE_URL", db.url.as_str())]);
    let store =
        commguard::store::Store::new(pool.clone(), std::sync::Arc::new(commguard::crypto::DataKeys::new(&[7; 32])));
    let lockout = Lockout::new(&config, store, commguard::clock::Clock::default(), Default::default());
    let ip: std::net::IpAddr = "203.0.113.90".parse().unwrap();
    sqlx::query(
        "INSERT INTO auth_failures (ip_key, failures, window_start, locked_until)
         VALUES ($1, 10, now(), now() + interval '1 hour')",
    )
    .bind(lockout.ip_ref(ip))
    .execute(&pool)
    .await
    .unwrap();
    assert!(matches!(lockout.check(ip).await, Err(Refusal::Locked { .. })), "unwatched: checked in Postgres");
    lockout.watch(true);
    assert!(lockout.check(ip).await.is_ok(), "watched, an address it never heard of is not looked up");
    s.stop().await;
}

/// Each instance keeps the aggregates it last committed, but uses one only while no other
/// instance has appended to its stream since: suspended on A, restored on B, an org is suspended
/// on A again (A's cached state said "already suspended", a 409 that left the org active).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_on_one_instance_sees_what_another_instance_changed() {
    let db = TestDb::new().await;
    let a = TestServer::start(&db, &LIMITS).await;
    let b = TestServer::start(&db, &LIMITS).await;
    let (org_id, _) = create_org(&a, "two-instances", true).await;
    let path = |what: &str| format!("/admin/api/orgs/{org_id}/{what}");
    let suspend = || Some(json!({"reason": "abuse report"}));
    let (status, body) = admin(&a, MASTER, reqwest::Method::POST, &path("suspend"), suspend()).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin(&b, MASTER, reqwest::Method::POST, &path("unsuspend"), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = admin(&a, MASTER, reqwest::Method::POST, &path("suspend"), suspend()).await;
    assert_eq!(status, 200, "A decided on its stale cache: {body}");
    assert_eq!(body["mode"], "suspended", "{body}");
    b.stop().await;
    a.stop().await;
}

/// The names of the checks in the provenance of the first event of `event_type`.
async fn checks_of(db: &TestDb, event_type: &str) -> Vec<String> {
    let provenance: Value = sqlx::query_scalar(
        "SELECT metadata::jsonb -> 'provenance' FROM events WHERE event_type = $1 ORDER BY position LIMIT 1",
    )
    .bind(event_type)
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    provenance["checks"].as_array().unwrap().iter().map(|c| c["check"].as_str().unwrap().to_string()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_erasure_and_session_events_list_each_check_they_passed_once() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &LIMITS).await;
    let org = call_tool(&s, MASTER, "comms_create_organization", json!({"name": "Checks", "slug": "checks"})).await;
    let org_token = org["adminToken"].as_str().unwrap().to_string();
    let agent = call_tool(&s, &org_token, "comms_provision_channels", json!({"displayName": "Listed"})).await;
    let agent_token = agent["securityToken"].as_str().unwrap().to_string();
    let consent = json!({"contactAddress": "+12025550177", "channel": "sms"});
    call_tool(&s, &agent_token, "comms_record_consent", consent.clone()).await;
    call_tool(&s, &agent_token, "comms_revoke_consent", consent).await;
    call_tool(&s, &org_token, "comms_erase_subject", json!({"identifier": "+12025550177"})).await;
    let erase = s
        .http
        .post(s.url("/admin/api/subjects/erase"))
        .bearer_auth(&org_token)
        .json(&json!({"identifier": "+12025550178"}))
        .send()
        .await
        .unwrap();
    assert_eq!(erase.status(), 200);

    assert_eq!(checks_of(&db, "ConsentGranted").await, ["role", "input", "org_boundary", "agent_state"]);
    assert_eq!(checks_of(&db, "ConsentRevoked").await, ["role", "input", "org_boundary"]);
    let erasures: Vec<Value> = sqlx::query_scalar(
        "SELECT metadata::jsonb -> 'provenance' -> 'checks' FROM events WHERE event_type = 'SubjectErased'
          ORDER BY position",
    )
    .fetch_all(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(erasures.len(), 2);
    for checks in &erasures {
        let names: Vec<&str> = checks.as_array().unwrap().iter().map(|c| c["check"].as_str().unwrap()).collect();
        assert_eq!(names, ["role", "input", "org_boundary"], "tool and admin route alike");
    }
    assert_eq!(checks_of(&db, "SessionOpened").await, ["lockout", "credential", "input", "org_boundary", "org_state"]);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_is_answered_once_every_live_instance_has_dropped_the_old_token() {
    let db = TestDb::new().await;
    let a = TestServer::start(&db, &LIMITS).await;
    let b = TestServer::start(&db, &LIMITS).await;
    let org = call_tool(&a, MASTER, "comms_create_organization", json!({"name": "Barrier", "slug": "barrier"})).await;
    let org_token = org["adminToken"].as_str().unwrap().to_string();
    let agent = call_tool(&a, &org_token, "comms_provision_channels", json!({"displayName": "Rotated"})).await;
    let agent_id = agent["agentId"].as_str().unwrap().to_string();
    let mut token = agent["securityToken"].as_str().unwrap().to_string();
    let b_identity = b.server.as_ref().unwrap().state().identity.clone();
    let rotate = || {
        let request = a
            .http
            .post(a.url(&format!("/admin/api/agents/{agent_id}/regenerate-token")))
            .bearer_auth(&org_token)
            .send();
        async move {
            let reply = request.await.unwrap();
            assert_eq!(reply.status(), 200);
            let body: Value = reply.json().await.unwrap();
            body["token"].as_str().unwrap().to_string()
        }
    };

    // B has the token cached; the moment A answers the rotation, B no longer admits it.
    for _ in 0..5 {
        assert!(b_identity.resolve(&token).await.is_ok(), "B resolves (and caches) the live token");
        let new = rotate().await;
        let old = b_identity.resolve(&token).await;
        assert!(old.is_err(), "B still admitted the rotated token after A's reply");
        token = new;
    }

    // A live instance that has not read the barrier yet holds the reply back until it has.
    let pool = db.pool().await;
    let slow = uuid::Uuid::new_v4();
    sqlx::query("INSERT INTO service_instances (id) VALUES ($1)").bind(slow).execute(&pool).await.unwrap();
    let issued: i64 = sqlx::query_scalar("SELECT last_value FROM identity_barriers").fetch_one(&pool).await.unwrap();
    let acknowledging = {
        let pool = pool.clone();
        tokio::spawn(async move {
            // The barrier of the rotation below, once it is out, read late.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                assert!(Instant::now() < deadline, "the rotation sent no barrier");
                let last: i64 =
                    sqlx::query_scalar("SELECT last_value FROM identity_barriers").fetch_one(&pool).await.unwrap();
                if last > issued {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    sqlx::query("UPDATE service_instances SET identity_seen = $2 WHERE id = $1")
                        .bind(slow)
                        .bind(last)
                        .execute(&pool)
                        .await
                        .unwrap();
                    return Instant::now();
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
    };
    rotate().await;
    let answered = Instant::now();
    let acknowledged = acknowledging.await.unwrap();
    assert!(answered > acknowledged, "the rotation was answered before the slow instance read its barrier");
    sqlx::query("DELETE FROM service_instances WHERE id = $1").bind(slow).execute(&pool).await.unwrap();
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamable_sessions_notification_stream_is_taken_over_by_the_newest_get() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &LIMITS).await;
    let session = open_streamable(&s).await;
    // Each GET on its own connection, as a client that reconnects opens a new one.
    let open = || {
        let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
        client
            .get(s.url("/mcp"))
            .bearer_auth(MASTER)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &session)
            .send()
    };
    let first = open().await.unwrap();
    assert_eq!(first.status(), 200);
    // While it is open, a second stream takes over (the contract has no 409 for GET /mcp): it is
    // served, and the first one ends.
    let second = open().await.unwrap();
    assert_eq!(second.status(), 200);
    let mut ended = first.bytes_stream();
    let drained = tokio::time::timeout(Duration::from_secs(5), async { while ended.next().await.is_some() {} }).await;
    assert!(drained.is_ok(), "the first stream did not end when the second took over");
    // A client that reconnects before its old connection's end is noticed is served at once too.
    let third = open().await.unwrap();
    assert_eq!(third.status(), 200);
    drop((second, third));
    let again = open().await.unwrap();
    assert_eq!(again.status(), 200);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_listening_on_its_stream_is_not_idle() {
    let db = TestDb::new().await;
    let mut vars = LIMITS.to_vec();
    vars.push(("MCP_SESSION_IDLE_SECONDS", "1"));
    let s = TestServer::start(&db, &vars).await;
    let session = open_streamable(&s).await;
    let listening = reqwest::Client::new()
        .get(s.url("/mcp"))
        .bearer_auth(MASTER)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(listening.status(), 200);
    // Three idle limits pass with nothing but the open stream.
    tokio::time::sleep(Duration::from_millis(3000)).await;
    assert_eq!(ping_streamable(&s, &session).await, 200, "a listening session was expired as idle");
    drop(listening);
    s.stop().await;
}

/// A refused provisioning's `ActionRefused` lists the checks before the one that refused as
/// passed, in docs/tools.md's order, and names that one as provisioning names it (`country_rules`,
/// `duplicate`, `capacity`; not the generic `compliance` or `state`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_provisioning_lists_the_checks_it_passed() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &LIMITS).await;
    let (org_id, org_token) = create_org(&s, "provisioning-checks", false).await;
    let settings = format!("/admin/api/orgs/{org_id}/settings");
    let (status, _) = admin(&s, MASTER, reqwest::Method::POST, &settings, Some(json!({"maxAgents": 1}))).await;
    assert_eq!(status, 200);
    let org_admin = McpSession::open(&s, &org_token).await;
    org_admin.ok("comms_provision_channels", json!({"agentId": "taken", "displayName": "First"})).await;
    const ORDER: [&str; 6] = ["role", "input", "org_state", "country_rules", "duplicate", "capacity"];
    let cases = [
        (json!({"displayName": ""}), "invalid_input", 1),
        // The US needs A2P registration for a number; this org has none.
        (json!({"displayName": "Phone", "capabilities": {"phone": true}}), "compliance_blocked", 3),
        (json!({"agentId": "taken", "displayName": "Again"}), "conflict", 4),
        (json!({"displayName": "Second"}), "quota_exceeded", 5),
    ];
    let pool = db.pool().await;
    for (args, code, refusing) in cases {
        let (is_error, refusal) = org_admin.call("comms_provision_channels", args).await;
        assert!(is_error && refusal["code"] == code, "{code}: {refusal}");
        let provenance = last_refusal_provenance(&pool).await;
        let listed = listed_checks(&provenance);
        let expected: Vec<(&str, &str)> =
            ORDER[..refusing].iter().map(|c| (*c, "pass")).chain([(ORDER[refusing], "fail")]).collect();
        assert_eq!(listed, expected, "{code}: {provenance}");
        assert_eq!(provenance["refusedBy"], ORDER[refusing], "{code}");
    }
    s.stop().await;
}

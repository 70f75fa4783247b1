//! The real provider adapters against local servers that speak Twilio's and Resend's APIs: what
//! they send (auth, fields, TwiML), what they make of the answers, and that a refusal by the
//! provider is a `provider_error` that consumes no quota.

use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::support::{McpSession as Session, TestDb, TestServer};

const MASTER: &str = "providers-test-master-token-0123456789abcdef";

/// One request as the fake provider saw it.
#[derive(Clone, Debug)]
struct Seen {
    path: String,
    authorization: String,
    body: String,
}

type Log = Arc<Mutex<Vec<Seen>>>;

fn seen(log: &Log, path: String, headers: &HeaderMap, body: &str) {
    let authorization = headers.get("authorization").and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    log.lock().unwrap().push(Seen { path, authorization, body: body.to_string() });
}

/// Twilio holds its answer to a message for this number until the test lets it go (`HELD.1`),
/// having said that the request arrived (`HELD.0`): a provider call in flight.
const HELD_TO: &str = "+12025550102";
static HELD: std::sync::LazyLock<(tokio::sync::Notify, tokio::sync::Notify)> =
    std::sync::LazyLock::new(Default::default);

/// Twilio holds its answer to the purchase of a number for this agent (its `SmsUrl` names it) in
/// the same way (`HELD_BUY`).
const HELD_AGENT: &str = "held-agent";
static HELD_BUY: std::sync::LazyLock<(tokio::sync::Notify, tokio::sync::Notify)> =
    std::sync::LazyLock::new(Default::default);

/// Twilio Messages and Calls, and Resend emails, on one local server.
async fn fake_providers() -> (String, Log) {
    let log: Log = Arc::default();
    async fn twilio(
        State(log): State<Log>,
        Path((sid, resource)): Path<(String, String)>,
        headers: HeaderMap,
        body: String,
    ) -> (StatusCode, Json<Value>) {
        seen(&log, format!("/2010-04-01/Accounts/{sid}/{resource}"), &headers, &body);
        let form: Vec<(String, String)> = url_decode(&body);
        let to = form.iter().find(|(k, _)| k == "To").map(|(_, v)| v.clone()).unwrap_or_default();
        if to == HELD_TO {
            HELD.0.notify_one();
            HELD.1.notified().await;
        }
        if to == "+12025550400" {
            return (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({"code": 21211, "message": format!("The 'To' number {to} is not a valid phone number."), "status": 400}),
                ),
            );
        }
        if resource == "IncomingPhoneNumbers.json" && body.contains(HELD_AGENT) {
            HELD_BUY.0.notify_one();
            HELD_BUY.1.notified().await;
        }
        if resource == "IncomingPhoneNumbers.json" {
            let number = form.iter().find(|(k, _)| k == "PhoneNumber").map(|(_, v)| v.clone()).unwrap_or_default();
            return (
                StatusCode::CREATED,
                Json(json!({"sid": "PNfake0000000000000000000000000001", "phone_number": number})),
            );
        }
        let prefix = if resource == "Calls.json" { "CA" } else { "SM" };
        (
            StatusCode::CREATED,
            Json(
                json!({"sid": format!("{prefix}fake0000000000000000000000000001"), "status": "queued", "price": null}),
            ),
        )
    }
    async fn resend(State(log): State<Log>, headers: HeaderMap, body: String) -> (StatusCode, Json<Value>) {
        seen(&log, "/emails".into(), &headers, &body);
        (StatusCode::OK, Json(json!({"id": "re_fake_1"})))
    }
    async fn account(
        State(log): State<Log>,
        Path(resource): Path<String>,
        headers: HeaderMap,
    ) -> (StatusCode, Json<Value>) {
        seen(&log, format!("/2010-04-01/Accounts/{resource}"), &headers, "");
        let expected = format!("Basic {}", base64_encode("ACorg:org-secret"));
        if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some(expected.as_str()) {
            (StatusCode::OK, Json(json!({"sid": "ACorg", "status": "active"})))
        } else {
            (StatusCode::UNAUTHORIZED, Json(json!({"code": 20003, "message": "Authenticate", "status": 401})))
        }
    }
    async fn available(
        State(log): State<Log>,
        Path((sid, country)): Path<(String, String)>,
        headers: HeaderMap,
    ) -> Json<Value> {
        seen(&log, format!("/2010-04-01/Accounts/{sid}/AvailablePhoneNumbers/{country}/Local.json"), &headers, "");
        Json(json!({"available_phone_numbers": [{"phone_number": "+12025559999"}]}))
    }
    async fn release(
        State(log): State<Log>,
        Path((sid, number)): Path<(String, String)>,
        headers: HeaderMap,
    ) -> StatusCode {
        seen(&log, format!("DELETE /2010-04-01/Accounts/{sid}/IncomingPhoneNumbers/{number}"), &headers, "");
        StatusCode::NO_CONTENT
    }
    let app = Router::new()
        .route("/2010-04-01/Accounts/{sid}/IncomingPhoneNumbers/{number}", axum::routing::delete(release))
        .route("/2010-04-01/Accounts/{resource}", axum::routing::get(account))
        .route("/2010-04-01/Accounts/{sid}/AvailablePhoneNumbers/{country}/Local.json", axum::routing::get(available))
        .route("/2010-04-01/Accounts/{sid}/{resource}", post(twilio))
        .route("/emails", post(resend))
        .with_state(log.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, log)
}

fn url_decode(body: &str) -> Vec<(String, String)> {
    body.split('&')
        .filter_map(|pair| pair.split_once('='))
        .map(|(k, v)| {
            let decode = |s: &str| {
                let s = s.replace('+', " ");
                let bytes = s.as_bytes();
                let mut out = Vec::new();
                let mut i = 0;
                while i < bytes.len() {
                    if bytes[i] == b'%' && i + 2 < bytes.len() {
                        out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
                        i += 3;
                    } else {
                        out.push(bytes[i]);
                        i += 1;
                    }
                }
                String::from_utf8(out).unwrap()
            };
            (decode(k), decode(v))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn production_orgs_send_through_twilio_and_resend_and_provider_refusals_consume_nothing() {
    let (fake, log) = fake_providers().await;
    let db = TestDb::new().await;
    let vars = [
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("COMMGUARD_TEST_CLOCK", "true"),
        ("HTTP_RATE_LIMIT_PER_IP", "100000"),
        ("TWILIO_ACCOUNT_SID", "ACtest"),
        ("TWILIO_AUTH_TOKEN", "twilio-secret"),
        ("TWILIO_API_BASE_URL", fake.as_str()),
        ("RESEND_API_KEY", "re_test_key"),
        ("RESEND_API_BASE_URL", fake.as_str()),
        ("DEFAULT_MAX_ACTIONS_PER_MINUTE", "3"),
        ("WEBHOOK_BASE_URL", "https://hooks.example.com"),
    ];
    let s = TestServer::start(&db, &vars).await;
    let master = Session::open(&s, MASTER).await;
    let (_, agent) = approved_org(&s, &master, "Live", json!({"phone": true, "email": true})).await;
    let me = Session::open(&s, agent["securityToken"].as_str().unwrap()).await;
    consent(&s, &me).await;
    let number = agent["channels"]["phone"].as_str().unwrap();

    // A refusal by Twilio: provider_error with Twilio's message, and the slot is given back.
    let (is_error, refused) = me.call("comms_send_message", json!({"to": "+12025550400", "body": "hi"})).await;
    assert!(is_error);
    assert_eq!((refused["code"].as_str(), refused["provider"].as_str()), (Some("provider_error"), Some("twilio")));
    assert!(refused["error"].as_str().unwrap().contains("is not a valid phone number"), "{refused}");

    let sms = me.ok("comms_send_message", json!({"to": "+12025550100", "body": "Tom & Jerry"})).await;
    assert_eq!(
        (sms["externalId"].as_str(), sms["sandbox"].as_bool()),
        (Some("SMfake0000000000000000000000000001"), Some(false))
    );
    let call = me.ok("comms_make_call", json!({"to": "+12025550101", "greeting": "Hi <you> & welcome"})).await;
    assert_eq!(call["callSid"], "CAfake0000000000000000000000000001");
    // The limit is 3 a minute and the refused send took no slot: all three go through.
    let email = me
        .ok(
            "comms_send_message",
            json!({"channel": "email", "to": "a@example.com", "subject": "Hello", "body": "Hi there"}),
        )
        .await;
    assert_eq!(email["externalId"], "re_fake_1");

    let requests = log.lock().unwrap().clone();
    assert_eq!(requests.len(), 4, "{requests:?}");
    let basic = format!("Basic {}", base64_encode("ACtest:twilio-secret"));
    let message = &requests[1];
    assert_eq!(
        (message.path.as_str(), message.authorization.as_str()),
        ("/2010-04-01/Accounts/ACtest/Messages.json", basic.as_str())
    );
    let form = url_decode(&message.body);
    let get = |form: &[(String, String)], k: &str| form.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
    assert_eq!(get(&form, "To").as_deref(), Some("+12025550100"));
    assert_eq!(get(&form, "From").as_deref(), Some(number));
    assert_eq!(get(&form, "Body").as_deref(), Some("Tom & Jerry"));
    let call_form = url_decode(&requests[2].body);
    assert_eq!(requests[2].path, "/2010-04-01/Accounts/ACtest/Calls.json");
    let twiml = get(&call_form, "Twiml").unwrap();
    assert_eq!(
        twiml,
        "<Response><Say>Please note, this is an AI-generated call. Hi &lt;you&gt; &amp; welcome</Say></Response>"
    );
    let expected_callback =
        format!("https://hooks.example.com/webhooks/{}/call-status", agent["agentId"].as_str().unwrap());
    assert_eq!(get(&call_form, "StatusCallback"), Some(expected_callback));
    let email_request = &requests[3];
    assert_eq!((email_request.path.as_str(), email_request.authorization.as_str()), ("/emails", "Bearer re_test_key"));
    let sent: Value = serde_json::from_str(&email_request.body).unwrap();
    assert_eq!(
        (sent["to"][0].as_str(), sent["subject"].as_str(), sent["text"].as_str()),
        (Some("a@example.com"), Some("Hello"), Some("Hi there"))
    );

    let failed: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = 'MessageFailed'")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(failed, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_or_a_purchase_whose_client_hangs_up_during_the_provider_call_is_still_recorded() {
    // Streamable HTTP runs a tool in the request's handler, which the server drops when the client
    // hangs up. A send must still end (its event recorded, its intent settled, not left for a
    // reconciler that only settles the intents of instances that stopped), and a number bought
    // must be recorded with its agent.
    let (fake, _) = fake_providers().await;
    let db = TestDb::new().await;
    let vars = [
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("COMMGUARD_TEST_CLOCK", "true"),
        ("HTTP_RATE_LIMIT_PER_IP", "100000"),
        ("TWILIO_ACCOUNT_SID", "ACtest"),
        ("TWILIO_AUTH_TOKEN", "twilio-secret"),
        ("TWILIO_API_BASE_URL", fake.as_str()),
        ("WEBHOOK_BASE_URL", "https://hooks.example.com"),
    ];
    let s = TestServer::start(&db, &vars).await;
    let master = Session::open(&s, MASTER).await;
    let (admin, agent) = approved_org(&s, &master, "Held", json!({"phone": true})).await;
    let me = Arc::new(Session::open(&s, agent["securityToken"].as_str().unwrap()).await);
    consent(&s, &me).await;
    let pool = db.pool().await;

    // A number bought while the client hangs up: the agent that holds it is still recorded.
    let admin = Arc::new(admin);
    let provisioning = {
        let admin = admin.clone();
        tokio::spawn(async move {
            admin
                .call(
                    "comms_provision_channels",
                    json!({"agentId": HELD_AGENT, "displayName": "Held", "capabilities": {"phone": true}}),
                )
                .await
        })
    };
    HELD_BUY.0.notified().await;
    provisioning.abort();
    assert!(provisioning.await.is_err_and(|e| e.is_cancelled()));
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    HELD_BUY.1.notify_one();
    let provisioned = counts_once_settled(
        &pool,
        &format!("SELECT COUNT(*) FROM events WHERE event_type = 'AgentProvisioned' AND aggregate_id = '{HELD_AGENT}'"),
        [1],
    )
    .await;
    assert_eq!(provisioned, [1], "the number Twilio sold was not recorded with its agent");

    let caller = {
        let me = me.clone();
        tokio::spawn(async move { me.call("comms_send_message", json!({"to": HELD_TO, "body": "hold on"})).await })
    };
    HELD.0.notified().await;
    // The client hangs up while Twilio has the message: its connection closes with the request.
    caller.abort();
    assert!(caller.await.is_err_and(|e| e.is_cancelled()));
    // Time for the server to see the connection close (and drop the request's handler), then Twilio answers.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    HELD.1.notify_one();

    let [sent, intents] = counts_once_settled(
        &pool,
        "SELECT COUNT(*) FROM events WHERE event_type = 'MessageSent' AND payload->>'externalId' LIKE 'SMfake%'
         UNION ALL SELECT COUNT(*) FROM outbound_intents",
        [1, 0],
    )
    .await;
    assert_eq!((sent, intents), (1, 0), "the send Twilio took was not recorded, or its intent was left behind");
    s.stop().await;
}

/// A production org (created, then approved after KYC), its admin's session, and an agent of it
/// provisioned with `capabilities`.
async fn approved_org(s: &TestServer, master: &Session, name: &str, capabilities: Value) -> (Session, Value) {
    let slug = name.to_lowercase();
    let org = master.ok("comms_create_organization", json!({"name": name, "slug": slug, "a2pRegistered": true})).await;
    let admin = Session::open(s, org["adminToken"].as_str().unwrap()).await;
    let agent = admin.ok("comms_provision_channels", json!({"displayName": name, "capabilities": capabilities})).await;
    crate::support::approve_org(&s.http, &s.base, MASTER, org["orgId"].as_str().unwrap()).await;
    (admin, agent)
}

/// The counts `sql` returns (one row each), once they are `want` or after 20 s, whichever comes first.
async fn counts_once_settled<const N: usize>(pool: &sqlx::PgPool, sql: &str, want: [i64; N]) -> [i64; N] {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let rows: Vec<i64> = sqlx::query_scalar(sql).fetch_all(pool).await.unwrap();
        let counts: [i64; N] = rows.try_into().expect("one count per row");
        if counts == want || tokio::time::Instant::now() > deadline {
            return counts;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn base64_encode(text: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registered_org_credentials_are_verified_stored_encrypted_and_used_at_once() {
    let (fake, log) = fake_providers().await;
    let db = TestDb::new().await;
    let vars = [
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("COMMGUARD_TEST_CLOCK", "true"),
        ("HTTP_RATE_LIMIT_PER_IP", "100000"),
        ("TWILIO_API_BASE_URL", fake.as_str()),
    ];
    let s = TestServer::start(&db, &vars).await;
    let master = Session::open(&s, MASTER).await;
    let org = master
        .ok("comms_create_organization", json!({"name": "Own", "slug": "own-creds", "a2pRegistered": true}))
        .await;
    let org_id = org["orgId"].as_str().unwrap().to_string();
    let admin = Session::open(&s, org["adminToken"].as_str().unwrap()).await;
    let agent =
        admin.ok("comms_provision_channels", json!({"displayName": "Own", "capabilities": {"phone": true}})).await;
    crate::support::approve_org(&s.http, &s.base, MASTER, &org_id).await;
    let me = Session::open(&s, agent["securityToken"].as_str().unwrap()).await;
    consent(&s, &me).await;

    // No credentials anywhere: a production org cannot send.
    let (is_error, refused) = me.call("comms_send_message", json!({"to": "+12025550100", "body": "hi"})).await;
    assert!(is_error);
    assert_eq!(
        (refused["code"].as_str(), refused["error"].as_str()),
        (Some("unavailable"), Some("No telephony provider configured"))
    );
    // A refusal at step 13 is a failure, not a block (docs/tools.md#the-outbound-pipeline).
    let (event_type, provider): (String, String) = sqlx::query_as(
        "SELECT event_type, payload->>'provider' FROM events
          WHERE aggregate_id = $1 AND event_type IN ('MessageFailed', 'MessageBlocked')",
    )
    .bind(agent["agentId"].as_str().unwrap())
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!((event_type.as_str(), provider.as_str()), ("MessageFailed", "none"));

    let (is_error, refused) = me
        .call(
            "comms_register_provider",
            json!({"provider": "twilio", "credentials": {"accountSid": "ACorg", "authToken": "x"}}),
        )
        .await;
    assert!(is_error);
    assert_eq!(refused["code"], "forbidden");
    let register = |token: &str| json!({"provider": "twilio", "orgId": org_id, "credentials": {"accountSid": "ACorg", "authToken": token}});
    let (is_error, refused) = master.call("comms_register_provider", register("wrong-secret")).await;
    assert!(is_error);
    assert_eq!(refused["error"], "Verification failed for twilio: twilio: Authenticate");
    let (is_error, refused) =
        admin.call("comms_provision_channels", json!({"displayName": "Second", "capabilities": {"phone": true}})).await;
    assert!(is_error);
    assert_eq!(refused["error"], "No telephony provider configured");
    let providers = |ping: Value| (ping["providers"]["telephony"].clone(), ping["providers"]["email"].clone());
    let unconfigured = (json!("not_configured"), json!("not_configured"));
    assert_eq!(providers(admin.ok("comms_ping", json!({})).await), unconfigured);
    let registered = master.ok("comms_register_provider", register("org-secret")).await;
    assert_eq!(registered["keysStored"], json!(["accountSid", "authToken"]));
    // Live at once for the org's ping; the platform (the master's org, readiness) has none.
    assert_eq!(providers(admin.ok("comms_ping", json!({})).await), (json!("configured"), json!("not_configured")));
    assert_eq!(providers(master.ok("comms_ping", json!({})).await), unconfigured);
    let ready: Value = s.http.get(s.url("/health/ready")).send().await.unwrap().json().await.unwrap();
    assert_eq!(providers(ready), unconfigured);
    assert_eq!(registered["keyVersion"].as_str().unwrap().len(), 8);
    assert!(!registered.to_string().contains("org-secret"), "the reply never shows a value");

    // Provisioning in a production org buys a real number, its SMS webhook pointed at us.
    let second =
        admin.ok("comms_provision_channels", json!({"displayName": "Second", "capabilities": {"phone": true}})).await;
    assert_eq!(second["channels"]["phone"], "+12025559999");
    let bought = log
        .lock()
        .unwrap()
        .iter()
        .find(|r| r.path.ends_with("IncomingPhoneNumbers.json"))
        .cloned()
        .expect("a number was bought");
    let form = url_decode(&bought.body);
    let sms_url = format!("http://localhost:3100/webhooks/{}/sms", second["agentId"].as_str().unwrap());
    assert!(form.contains(&("SmsUrl".to_string(), sms_url)), "{form:?}");

    let gone = admin.ok("comms_deprovision_channels", json!({"agentId": second["agentId"]})).await;
    assert_eq!(gone["numberReleased"], true, "{gone}");
    assert!(log
        .lock()
        .unwrap()
        .iter()
        .any(|r| r.path
            == "DELETE /2010-04-01/Accounts/ACorg/IncomingPhoneNumbers/PNfake0000000000000000000000000001.json"));
    // Again: refused before anything reaches the provider (the number is not released twice).
    let releases = || log.lock().unwrap().iter().filter(|r| r.path.starts_with("DELETE ")).count();
    let released = releases();
    let (is_error, again) =
        admin.call("comms_deprovision_channels", json!({"agentId": second["agentId"], "releaseNumber": true})).await;
    assert!(is_error);
    assert_eq!(again["code"], "conflict", "{again}");
    assert_eq!(again["error"], format!("Agent \"{}\" is already deprovisioned", second["agentId"].as_str().unwrap()));
    assert_eq!(releases(), released, "a refused deprovisioning reached Twilio");

    // Live at once: the next send uses the org's own credentials.
    let sent = me.ok("comms_send_message", json!({"to": "+12025550100", "body": "hi"})).await;
    assert_eq!(sent["sandbox"], false);
    let last = log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.path, "/2010-04-01/Accounts/ACorg/Messages.json");
    assert_eq!(last.authorization, format!("Basic {}", base64_encode("ACorg:org-secret")));

    // Stored only encrypted; no event holds a value.
    let pool = db.pool().await;
    let rows: Vec<(String, String, String)> = sqlx::query_as(
        "SELECT credential_key, ciphertext, iv FROM provider_credentials WHERE org_id = $1 ORDER BY credential_key",
    )
    .bind(&org_id)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|(_, c, iv)| !c.contains(&hex::encode("org-secret")) && iv.len() == 24));
    let leaks: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM events WHERE payload::text LIKE '%org-secret%' OR metadata::text LIKE '%org-secret%'",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(leaks, 0);
    let registered_events: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = 'ProviderRegistered' AND aggregate_id = $1")
            .bind(&org_id)
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(registered_events, 1);
    for token in [MASTER, org["adminToken"].as_str().unwrap()] {
        let listed: Value =
            s.http.get(s.url("/admin/api/providers")).bearer_auth(token).send().await.unwrap().json().await.unwrap();
        assert_eq!(listed["providers"][0]["keyNames"], json!(["accountSid", "authToken"]), "{listed}");
        assert_eq!(listed["providers"][0]["orgId"], org_id.as_str());
        assert!(!listed.to_string().contains("org-secret"));
    }
    s.stop().await;

    // Key rotation: restarted with a new key and the old one as previous, the rows are rewritten
    // under the new key and still work.
    const OLD_KEY: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";
    const NEW_KEY: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    let rotated = [
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("COMMGUARD_TEST_CLOCK", "true"),
        ("HTTP_RATE_LIMIT_PER_IP", "100000"),
        ("TWILIO_API_BASE_URL", fake.as_str()),
        ("CREDENTIALS_ENCRYPTION_KEY", NEW_KEY),
        ("CREDENTIALS_ENCRYPTION_KEY_PREVIOUS", OLD_KEY),
    ];
    let s = TestServer::start(&db, &rotated).await;
    let versions: Vec<String> =
        sqlx::query_scalar("SELECT DISTINCT key_version FROM provider_credentials").fetch_all(&pool).await.unwrap();
    let new_version = hex::encode(&<sha2::Sha256 as sha2::Digest>::digest(hex::decode(NEW_KEY).unwrap())[..4]);
    assert_eq!(versions, [new_version]);
    let me = Session::open(&s, agent["securityToken"].as_str().unwrap()).await;
    consent(&s, &me).await;
    me.ok("comms_send_message", json!({"to": "+12025550100", "body": "after rotation"})).await;
    let last = log.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.authorization, format!("Basic {}", base64_encode("ACorg:org-secret")));

    // Platform credentials (no orgId) are live at once for readiness and every org's ping.
    let master = Session::open(&s, MASTER).await;
    let platform = json!({"provider": "twilio", "credentials": {"accountSid": "ACorg", "authToken": "org-secret"}});
    master.ok("comms_register_provider", platform).await;
    let ready: Value = s.http.get(s.url("/health/ready")).send().await.unwrap().json().await.unwrap();
    assert_eq!(
        (ready["providers"]["telephony"].as_str(), ready["providers"]["email"].as_str()),
        (Some("configured"), Some("not_configured"))
    );
    let ping = master.ok("comms_ping", json!({})).await;
    assert_eq!(ping["providers"]["telephony"], "configured", "{ping}");
    // The list pages like every admin list: the org's row and the platform's, one at a time.
    let list = |query: String| {
        let request = s.http.get(s.url(&format!("/admin/api/providers{query}"))).bearer_auth(MASTER).send();
        async move { request.await.unwrap().json::<Value>().await.unwrap() }
    };
    let all = list(String::new()).await;
    assert_eq!((all["providers"].as_array().unwrap().len(), &all["nextCursor"]), (2, &Value::Null), "{all}");
    let first = list("?limit=1".into()).await;
    let cursor = first["nextCursor"].as_str().expect("a second page").to_string();
    let second = list(format!("?limit=1&cursor={cursor}")).await;
    assert_eq!([&first["providers"][0], &second["providers"][0]], [&all["providers"][0], &all["providers"][1]]);
    assert_eq!(second["nextCursor"], Value::Null);
    // `orgId` filters the super-admin's list to that org's rows (docs/admin-api.md); an org
    // token naming another org is refused.
    let one = list(format!("?orgId={org_id}")).await;
    assert_eq!(one["providers"].as_array().unwrap().len(), 1, "{one}");
    assert_eq!(one["providers"][0]["orgId"], org_id.as_str());
    let other = s
        .http
        .get(s.url("/admin/api/providers?orgId=default"))
        .bearer_auth(org["adminToken"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 403);
    s.stop().await;
}

/// Consent for every recipient these tests use, at 11:00 in Washington (docs/compliance.md).
async fn consent(s: &TestServer, me: &Session) {
    let clock = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER);
    assert!(clock.json(&json!({"now": "2026-12-01T16:00:00Z"})).send().await.unwrap().status().is_success());
    for to in ["+12025550400", "+12025550100", "+12025550101", HELD_TO] {
        for channel in ["sms", "voice"] {
            me.ok("comms_record_consent", json!({"contactAddress": to, "channel": channel})).await;
        }
    }
    for to in ["pat@example.com", "a@example.com", "bob@example.com"] {
        me.ok("comms_record_consent", json!({"contactAddress": to, "channel": "email"})).await;
    }
}

/// Resend's webhook secret resolves key by key (docs/webhooks.md#email): an org that registered
/// its own Resend set without a `webhookSecret` is verified with the platform's registered one,
/// not left without a secret (development accepts unsigned webhooks then, with a warning).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_org_registered_without_a_webhook_secret_is_verified_with_the_platforms() {
    use base64::Engine;
    use hmac::Mac;
    const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &[("MASTER_SECURITY_TOKEN", MASTER), ("HTTP_RATE_LIMIT_PER_IP", "100000")]).await;
    let master = Session::open(&s, MASTER).await;
    let (_, agent) = approved_org(&s, &master, "Mailer", json!({"email": true})).await;
    let (agent_id, org_id) = (agent["agentId"].as_str().unwrap(), agent["orgId"].as_str().unwrap());
    let register = |org: Option<&str>, credentials: Value| {
        let mut args = json!({"provider": "resend", "credentials": credentials, "autoVerify": false});
        if let Some(org) = org {
            args["orgId"] = json!(org);
        }
        args
    };
    master
        .ok("comms_register_provider", register(None, json!({"apiKey": "re_platform", "webhookSecret": SECRET})))
        .await;
    master.ok("comms_register_provider", register(Some(org_id), json!({"apiKey": "re_org"}))).await;

    let body = json!({"type": "email.sent"}).to_string();
    let post = |headers: Vec<(&'static str, String)>| {
        let mut request = s
            .http
            .post(s.url(&format!("/webhooks/{agent_id}/email")))
            .header("content-type", "application/json")
            .body(body.clone());
        for (name, value) in headers {
            request = request.header(name, value);
        }
        request.send()
    };
    let unsigned = post(Vec::new()).await.unwrap();
    assert_eq!(unsigned.status(), 403);
    let refused: Value = unsigned.json().await.unwrap();
    assert_eq!(refused["error"], "Missing Svix signature headers", "{refused}");

    let ts = chrono::Utc::now().timestamp();
    let key = base64::engine::general_purpose::STANDARD.decode(SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("msg_platform.{ts}.{body}").as_bytes());
    let signature = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    let signed = post(vec![
        ("svix-id", "msg_platform".into()),
        ("svix-timestamp", ts.to_string()),
        ("svix-signature", signature),
    ])
    .await
    .unwrap();
    assert_eq!(signed.status(), 200, "{}", signed.text().await.unwrap());
    s.stop().await;
}

//! GDPR erasure end to end (CONTRACT §6.3 `comms_erase_subject`, §11.4, §12
//! `POST /admin/api/subjects/erase`): a subject seeded through sends, a call, a voice message,
//! consent, DNC and an inbound STOP is erased on one instance; afterwards a `pg_dump` of the whole
//! database holds none of its forms, both instances' feeds read `[erased]`, DNC still blocks on
//! both, the hash chains verify, a second erasure changes nothing, and later events about the
//! same identifier read normally under a new key generation.

use std::process::Command;
use std::time::Duration;

use commguard::webhooks::signature::twilio_expected;
use serde_json::{json, Value};

use crate::support::{McpSession as Session, TestDb, TestServer};

const MASTER: &str = "erasure-test-master-token-0123456789abcdef";
const AUTH_TOKEN: &str = "twilio-auth-token-for-erasure-tests";
const BASE: &str = "https://hooks.example.com";

const PHONE: &str = "+12025550142";
const PHONE_FORMS: [&str; 3] = ["+12025550142", "2025550142", "12025550142"];
const EMAIL: &str = "Pat.Erasable@Example.com";
const EMAIL_LOWER: &str = "pat.erasable@example.com";

fn vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ("COMMGUARD_TEST_CLOCK", "true"),
        ("WEBHOOK_BASE_URL", BASE),
        ("TWILIO_ACCOUNT_SID", "ACtest"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("TWILIO_API_BASE_URL", "http://127.0.0.1:9"),
    ]
}

fn pg_dump(db: &TestDb) -> String {
    let bin = std::env::var("PG_BIN_DIR").map(|d| format!("{d}/pg_dump")).unwrap_or_else(|_| "pg_dump".into());
    let out = Command::new(bin).arg("--dbname").arg(&db.url).output().expect("pg_dump runs");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("a plain dump is text")
}

async fn set_clock(s: &TestServer, now: &str) {
    let r = s
        .http
        .post(s.url("/admin/api/test/clock"))
        .bearer_auth(MASTER)
        .json(&json!({"now": now}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn admin_post(s: &TestServer, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = s.http.post(s.url(path)).bearer_auth(token).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn admin_get(s: &TestServer, token: &str, path: &str) -> Value {
    let r = s.http.get(s.url(path)).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

/// Every envelope of the feed, as the master reads it on `s` (opened, or `[erased]`).
async fn feed(s: &TestServer) -> Vec<Value> {
    let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(s.rt.store.pool()).await.unwrap();
    crate::support::wait_visible(s.rt.store.pool(), written).await;
    let page = admin_get(s, MASTER, "/admin/api/events?limit=1000").await;
    page["events"].as_array().unwrap().clone()
}

async fn inbound_stop(s: &TestServer, agent_id: &str, to: &str) {
    let path = format!("/webhooks/{agent_id}/sms");
    let params = [("MessageSid", "SMerase1"), ("From", PHONE), ("To", to), ("Body", "STOP")];
    let owned: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let signature = twilio_expected(AUTH_TOKEN, &format!("{BASE}{path}"), &owned);
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let r = s
        .http
        .post(s.url(&path))
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

fn erased_paths(envelope: &Value) -> Vec<(String, String)> {
    envelope["redactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["path"].as_str().unwrap().to_string(), r["reason"].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subject_is_gone_from_the_whole_database_and_both_instances() {
    let db = TestDb::new().await;
    let a = TestServer::start(&db, &vars()).await;
    let b = TestServer::start(&db, &vars()).await;
    for s in [&a, &b] {
        set_clock(s, "2026-12-01T16:00:00Z").await; // 11:00 in Washington DC
    }
    let master = Session::open(&a, MASTER).await;
    let org =
        master.ok("comms_create_organization", json!({"name": "Erase", "slug": "erase", "a2pRegistered": true})).await;
    let (org_id, admin) = (org["orgId"].as_str().unwrap().to_string(), org["adminToken"].as_str().unwrap().to_string());
    let agent = Session::open(&a, &admin)
        .await
        .ok(
            "comms_provision_channels",
            json!({"displayName": "Clinic", "capabilities": {"phone": true, "email": true}}),
        )
        .await;
    let agent_id = agent["agentId"].as_str().unwrap().to_string();
    let number = agent["channels"]["phone"].as_str().unwrap().to_string();
    let token = agent["securityToken"].as_str().unwrap().to_string();
    let on_a = Session::open(&a, &token).await;
    let on_b = Session::open(&b, &token).await;

    // Seed: consent on every channel, sends, a call, a voice message (from both instances, so
    // both cache the subject key), a DNC entry by the admin, an inbound STOP.
    for (channel, to) in [("sms", PHONE), ("voice", "+1 202 555 0142"), ("email", EMAIL)] {
        on_a.ok(
            "comms_record_consent",
            json!({"contactAddress": to, "channel": channel, "source": format!("form of {to}")}),
        )
        .await;
    }
    on_a.ok("comms_send_message", json!({"to": PHONE, "body": format!("Hello {PHONE}")})).await;
    on_b.ok("comms_send_message", json!({"to": "+1 202 555 0142", "body": "From the other instance"})).await;
    on_a.ok(
        "comms_send_message",
        json!({"channel": "email", "to": EMAIL, "subject": "Hi", "body": format!("Dear {EMAIL}")}),
    )
    .await;
    on_a.ok("comms_make_call", json!({"to": PHONE})).await;
    on_b.ok("comms_send_voice_message", json!({"to": PHONE, "text": format!("Call {PHONE} back")})).await;
    let (status, _) = admin_post(&a, &admin, "/admin/api/dnc", json!({"address": PHONE, "reason": "asked"})).await;
    assert_eq!(status, 200);
    inbound_stop(&a, &agent_id, &number).await;
    let before = feed(&a).await;
    assert!(serde_json::to_string(&before).unwrap().contains(PHONE), "the feed opens the subject before erasure");

    // An agent may not erase; the org admin erases the phone number in its org over HTTP.
    let (is_error, refusal) = on_a.call("comms_erase_subject", json!({"identifier": PHONE})).await;
    assert!(is_error, "{refusal}");
    let (status, erased) = admin_post(
        &a,
        &admin,
        "/admin/api/subjects/erase",
        json!({"identifier": "+1 202 555 0142", "reason": "GDPR art. 17"}),
    )
    .await;
    assert_eq!(status, 200, "{erased}");
    let subject_ref = a.rt.store.keystore().data_keys().blind_index(PHONE);
    assert_eq!(erased["subjectRef"], subject_ref.as_str());
    assert_eq!((erased["scope"].as_str(), erased["orgIds"].clone()), (Some("org"), json!([org_id])));
    assert!(erased["keysDestroyed"].as_u64().unwrap() >= 3, "the subject key and two consent keys: {erased}");
    assert!(erased["projectionRowsPurged"].as_u64().unwrap() >= 2, "sms and voice consent rows: {erased}");
    let kept = erased["dncSuppressionsKept"].as_u64().unwrap();
    assert!(kept >= 1, "the DNC entries stay as suppression: {erased}");
    assert!(erased["erasedAt"].as_str().unwrap().starts_with("2026-12-01T16:"));

    // (b, c) Both instances read the phone's fields as [erased] at once; the email is untouched.
    for s in [&a, &b] {
        let events = feed(s).await;
        let text = serde_json::to_string(&events).unwrap();
        let holding: Vec<&Value> = events.iter().filter(|e| e.to_string().contains("2025550142")).collect();
        assert!(holding.is_empty() && !text.contains(PHONE), "the feed still shows the number: {holding:?}");
        assert!(text.contains(EMAIL_LOWER), "another subject stays readable");
        let sent: Vec<&Value> =
            events.iter().filter(|e| e["eventType"] == "MessageSent" && e["payload"]["channel"] == "sms").collect();
        assert_eq!(sent.len(), 2);
        for e in &sent {
            assert_eq!(e["payload"]["to"], "[erased]");
            assert_eq!(e["payload"]["body"], "[erased]");
            assert!(erased_paths(e).contains(&("to".into(), "subject_erased".into())), "{e}");
        }
        let call = events.iter().find(|e| e["eventType"] == "CallPlaced").unwrap();
        assert_eq!(call["payload"]["to"], "[erased]");
        let erasure = events.iter().find(|e| e["eventType"] == "SubjectErased").unwrap();
        assert_eq!(erasure["aggregateType"], "subject");
        assert_eq!(erasure["aggregateId"], subject_ref.as_str());
        assert_eq!(erasure["payload"]["identifierType"], "phone");
        assert_eq!(erasure["payload"]["keysDestroyed"], erased["keysDestroyed"]);
        assert!(erasure["payload"]["requestedBy"].as_str().unwrap().starts_with("org:"), "{erasure}");
    }

    // Consent records are gone from the projection.
    let consent = admin_get(&a, &admin, &format!("/admin/api/consent?contact=%2B12025550142&agentId={agent_id}")).await;
    assert_eq!(consent["records"], json!([]), "{consent}");
    assert_eq!(consent["onDnc"], true, "{consent}");
    // A rebuild of the consent projection does not bring the erased records back.
    let quiet = &mut commguard::store::runner::Progress::quiet();
    commguard::store::runner::rebuild(a.rt.store.pool(), &commguard_projections::contact::ConsentProjection, quiet)
        .await
        .unwrap();
    let consent = admin_get(&a, &admin, &format!("/admin/api/consent?contact=%2B12025550142&agentId={agent_id}")).await;
    assert_eq!(consent["records"], json!([]), "after a rebuild: {consent}");
    let email = admin_get(&a, &admin, &format!("/admin/api/consent?contact={EMAIL_LOWER}&agentId={agent_id}")).await;
    assert_eq!(email["records"].as_array().unwrap().len(), 1, "another subject's record is rebuilt: {email}");

    // (e) Idempotent: nothing left to destroy or purge.
    let (status, again) = admin_post(&a, &admin, "/admin/api/subjects/erase", json!({"identifier": PHONE})).await;
    assert_eq!(status, 200);
    assert_eq!((again["keysDestroyed"].as_u64(), again["projectionRowsPurged"].as_u64()), (Some(0), Some(0)));
    assert_eq!(again["dncSuppressionsKept"].as_u64(), Some(kept));

    // The master erases the email in every org through the tool.
    let mail = master.ok("comms_erase_subject", json!({"identifier": EMAIL, "reason": "request"})).await;
    assert_eq!((mail["scope"].as_str(), mail["orgIds"].clone()), (Some("all"), json!([org_id])));
    assert!(mail["keysDestroyed"].as_u64().unwrap() >= 2, "{mail}");
    let erasures: Vec<Value> = feed(&b)
        .await
        .into_iter()
        .filter(|e| e["eventType"] == "SubjectErased")
        .map(|e| e["payload"].clone())
        .collect();
    assert_eq!(erasures.len(), 3);
    assert_eq!((erasures[2]["identifierType"].as_str(), erasures[2]["scope"].as_str()), (Some("email"), Some("all")));

    // (a) The whole database holds no form of either identifier.
    let dump = pg_dump(&db);
    for form in PHONE_FORMS.iter().chain([EMAIL, EMAIL_LOWER].iter()) {
        assert!(!dump.contains(form), "the dump holds {form:?}");
    }
    let text = serde_json::to_string(&feed(&a).await).unwrap();
    assert!(!text.contains(EMAIL_LOWER) && !text.contains(EMAIL));

    // (d) The hash chains still verify.
    assert!(commguard::store::verify::verify(a.rt.store.pool(), None).await.unwrap().is_ok());

    // DNC still blocks on both instances (the erasure's notice dropped the instances' cached
    // subject keys: the refusals are sealed under a new generation), and lists as [erased].
    for (s, session) in [(&a, &on_a), (&b, &on_b)] {
        let (is_error, refusal) = session.call("comms_send_message", json!({"to": PHONE, "body": "hi"})).await;
        assert!(is_error, "a DNC'd subject was contacted after erasure");
        assert_eq!(refusal["rule"], "dnc", "{refusal}");
        let listed = admin_get(s, &admin, "/admin/api/dnc").await;
        let entries = listed["entries"].as_array().unwrap();
        assert_eq!(entries.len() as u64, kept);
        assert!(entries.iter().all(|e| e["address"] == "[erased]"), "{listed}");
    }

    // Later events about the same identifier use a new key generation and read normally, also
    // on the instance that had cached the destroyed key (the erasure's notice dropped it).
    tokio::time::sleep(Duration::from_millis(300)).await;
    on_b.ok("comms_record_consent", json!({"contactAddress": EMAIL, "channel": "email", "source": "new form"})).await;
    on_b.ok("comms_send_message", json!({"channel": "email", "to": EMAIL, "subject": "Hi", "body": "welcome back"}))
        .await;
    let (is_error, _) = on_b.call("comms_send_message", json!({"to": PHONE, "body": "hi again"})).await;
    assert!(is_error);
    let events = feed(&b).await;
    let last_mail = events.iter().rev().find(|e| e["eventType"] == "MessageSent").unwrap();
    assert_eq!(
        (last_mail["payload"]["to"].as_str(), last_mail["payload"]["body"].as_str()),
        (Some(EMAIL_LOWER), Some("welcome back"))
    );
    let blocked = events.iter().rev().find(|e| e["eventType"] == "MessageBlocked").unwrap();
    assert_eq!(blocked["payload"]["to"], PHONE, "sealed under a new generation, not the destroyed key");
    let generations: Vec<i32> = sqlx::query_scalar(
        "SELECT generation FROM data_keys WHERE kind = 'subject' AND subject_ref = $1 ORDER BY generation",
    )
    .bind(&subject_ref)
    .fetch_all(a.rt.store.pool())
    .await
    .unwrap();
    assert_eq!(generations, [1, 2]);
    // The new events are sealed too: still no clear form anywhere, refusal texts included.
    let dump = pg_dump(&db);
    for form in PHONE_FORMS.iter().chain([EMAIL, EMAIL_LOWER].iter()) {
        assert!(!dump.contains(form), "the dump holds {form:?} after new events");
    }
    assert!(commguard::store::verify::verify(a.rt.store.pool(), None).await.unwrap().is_ok());
    b.stop().await;
    a.stop().await;
}

//! GDPR erasure end to end (docs/tools.md#comms_erase_subject, docs/privacy.md#keys-and-crypto-shredding, docs/admin-api.md
//! `POST /admin/api/subjects/erase`) on two real `commguard serve` processes sharing one database.
//! A phone number and an email are seeded through every path — consent, sends, a call with a
//! recording, a voice message, an admin DNC entry, an inbound STOP, and Svix-signed email webhooks
//! (a received mail and a complaint) — then erased on one instance. The other instance reads
//! `[erased]` and refuses by DNC in the very next request (no waiting), new events about the
//! same identifiers read normally under a new key generation, `commguard audit verify` prints OK,
//! a `pg_dump` of the whole database holds none of the identifiers' forms, and neither does the
//! servers' own log output at `RUST_LOG=trace`.

use std::process::Command;

use serde_json::{json, Value};

use crate::support::{assert_audit_verifies, commguard_cli, McpSession as Session, ServeProcess, TestDb};

const MASTER: &str = "erasure-test-master-token-0123456789abcdef";
const AUTH_TOKEN: &str = "twilio-auth-token-for-erasure-tests";
const BASE: &str = "https://hooks.example.com";
const SVIX_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const NOW: &str = "2026-12-01T16:00:00Z"; // 11:00 in Washington DC

const PHONE: &str = "+12025550142";
const PHONE_SPACED: &str = "+1 202 555 0142";
const EMAIL: &str = "Pat.Erasable@Example.com";
const EMAIL_LOWER: &str = "pat.erasable@example.com";
/// Every usual form of the two identifiers: E.164, national digits, digits only; the email in
/// its original and lower case.
const FORMS: [&str; 5] = ["+12025550142", "2025550142", "12025550142", EMAIL, EMAIL_LOWER];

fn vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ("WEBHOOK_RATE_LIMIT_PER_IP", "1000000"),
        ("COMMGUARD_TEST_CLOCK", "true"),
        ("WEBHOOK_BASE_URL", BASE),
        ("TWILIO_ACCOUNT_SID", "ACtest"),
        ("TWILIO_AUTH_TOKEN", AUTH_TOKEN),
        ("TWILIO_API_BASE_URL", "http://127.0.0.1:9"),
        ("RESEND_WEBHOOK_SECRET", SVIX_SECRET),
        // Every level of every crate, ours and the libraries'.
        ("RUST_LOG", "trace"),
        ("LOG_FORMAT", "text"),
    ]
}

fn pg_dump(db: &TestDb) -> String {
    let bin = std::env::var("PG_BIN_DIR").map(|d| format!("{d}/pg_dump")).unwrap_or_else(|_| "pg_dump".into());
    let out = Command::new(bin).arg("--dbname").arg(&db.url).output().expect("pg_dump runs");
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("a plain dump is text")
}

fn assert_holds_no_form(text: &str, what: &str) {
    for form in FORMS {
        if let Some(at) = text.find(form) {
            let line_start = text[..at].rfind('\n').map_or(0, |i| i + 1);
            let line_end = text[at..].find('\n').map_or(text.len(), |i| at + i);
            panic!("{what} holds {form:?}: {}", &text[line_start..line_end.min(line_start + 2000)]);
        }
    }
}

async fn set_clock(s: &ServeProcess, now: &str) {
    let r = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER).json(&json!({"now": now})).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
}

async fn admin_post(s: &ServeProcess, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = s.http.post(s.url(path)).bearer_auth(token).json(&body).send().await.unwrap();
    let status = r.status().as_u16();
    (status, r.json().await.unwrap())
}

async fn admin_get(s: &ServeProcess, token: &str, path: &str) -> Value {
    let r = s.http.get(s.url(path)).bearer_auth(token).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

async fn session(s: &ServeProcess, token: &str) -> Session {
    Session::open_at(&s.http, &s.base, token).await
}

/// Every envelope of the feed, as the master reads it on `s` (opened, or `[erased]`), once
/// every event written so far is below the horizon.
async fn feed(s: &ServeProcess, db: &TestDb) -> Vec<Value> {
    let pool = db.pool().await;
    let written: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM events").fetch_one(&pool).await.unwrap();
    crate::support::wait_visible(&pool, written).await;
    pool.close().await;
    let page = admin_get(s, MASTER, "/admin/api/events?limit=1000").await;
    page["events"].as_array().unwrap().clone()
}

async fn twilio_post(s: &ServeProcess, path: &str, params: &[(&str, &str)]) -> (u16, String) {
    crate::support::twilio_form(&s.http, &s.url(path), &format!("{BASE}{path}"), AUTH_TOKEN, params, None).await
}

/// A Svix-signed `/email` webhook (docs/webhooks.md#email) at the service clock's `NOW`.
async fn svix_post(s: &ServeProcess, agent_id: &str, id: &str, body: Value) -> u16 {
    use base64::Engine;
    use hmac::Mac;
    let body = body.to_string();
    let ts = chrono::DateTime::parse_from_rfc3339(NOW).unwrap().timestamp();
    let key = base64::engine::general_purpose::STANDARD.decode(SVIX_SECRET.trim_start_matches("whsec_")).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    let signature = format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()));
    let r = s
        .http
        .post(s.url(&format!("/webhooks/{agent_id}/email")))
        .header("content-type", "application/json")
        .header("svix-id", id)
        .header("svix-timestamp", ts.to_string())
        .header("svix-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    r.status().as_u16()
}

fn erased_paths(envelope: &Value) -> Vec<(String, String)> {
    envelope["redactions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| (r["path"].as_str().unwrap().to_string(), r["reason"].as_str().unwrap().to_string()))
        .collect()
}

fn position(e: &Value) -> i64 {
    e["position"].as_i64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_erased_subject_is_gone_from_the_whole_database_the_logs_and_both_instances() {
    let db = TestDb::new().await;
    let logs = tempfile::tempdir().unwrap();
    let log = logs.path().join("servers.log");
    // One after the other, so that they do not race to apply the migrations.
    let a = ServeProcess::start(&db, &vars(), &log).await;
    let b = ServeProcess::start(&db, &vars(), &log).await;
    for s in [&a, &b] {
        set_clock(s, NOW).await;
    }
    let master = session(&a, MASTER).await;
    let org =
        master.ok("comms_create_organization", json!({"name": "Erase", "slug": "erase", "a2pRegistered": true})).await;
    let (org_id, admin) = (org["orgId"].as_str().unwrap().to_string(), org["adminToken"].as_str().unwrap().to_string());
    let agent = session(&a, &admin)
        .await
        .ok(
            "comms_provision_channels",
            json!({"displayName": "Clinic", "capabilities": {"phone": true, "email": true}}),
        )
        .await;
    let agent_id = agent["agentId"].as_str().unwrap().to_string();
    let number = agent["channels"]["phone"].as_str().unwrap().to_string();
    let own_email = agent["channels"]["email"].as_str().unwrap().to_string();
    let token = agent["securityToken"].as_str().unwrap().to_string();
    let on_a = session(&a, &token).await;
    let on_b = session(&b, &token).await;

    // Seed through every path: consent on every channel, sends from both instances (so both
    // cache the subject's key), a call and its recording, a voice message, a DNC entry by the
    // admin, an inbound STOP, a received mail and a complaint over Svix-signed webhooks, and a
    // failed authentication (a lockout row).
    for (channel, to) in [("sms", PHONE), ("voice", PHONE_SPACED), ("email", EMAIL)] {
        on_a.ok(
            "comms_record_consent",
            json!({"contactAddress": to, "channel": channel, "source": format!("form of {to}")}),
        )
        .await;
    }
    on_a.ok("comms_send_message", json!({"to": PHONE, "body": format!("Hello {PHONE}")})).await;
    on_b.ok("comms_send_message", json!({"to": PHONE_SPACED, "body": "From the other instance"})).await;
    on_a.ok(
        "comms_send_message",
        json!({"channel": "email", "to": EMAIL, "subject": "Hi", "body": format!("Dear {EMAIL}")}),
    )
    .await;
    let call = on_a.ok("comms_make_call", json!({"to": PHONE})).await;
    let call_sid = call["callSid"].as_str().unwrap().to_string();
    on_b.ok("comms_send_voice_message", json!({"to": PHONE, "text": format!("Call {PHONE} back")})).await;
    let status_path = format!("/webhooks/{agent_id}/call-status");
    let recording = "https://api.twilio.com/2010-04-01/Accounts/ACtest/Recordings/RE0001";
    let (code, _) = twilio_post(
        &b,
        &status_path,
        &[("CallSid", &call_sid), ("CallStatus", "completed"), ("To", PHONE), ("RecordingUrl", recording)],
    )
    .await;
    assert_eq!(code, 200);
    let (status, _) = admin_post(&a, &admin, "/admin/api/dnc", json!({"address": PHONE, "reason": "asked"})).await;
    assert_eq!(status, 200);
    let sms_path = format!("/webhooks/{agent_id}/sms");
    let (code, _) =
        twilio_post(&a, &sms_path, &[("MessageSid", "SMerase1"), ("From", PHONE), ("To", &number), ("Body", "STOP")])
            .await;
    assert_eq!(code, 200);
    let mail = json!({"type": "email.received", "data": {"from": format!("Pat <{EMAIL}>"), "to": [own_email],
        "subject": format!("From {EMAIL}"), "text": "Call me back"}});
    assert_eq!(svix_post(&b, &agent_id, "msg_erase_1", mail).await, 200);
    let complaint = json!({"type": "email.complained", "data": {"from": own_email, "to": [EMAIL]}});
    assert_eq!(svix_post(&a, &agent_id, "msg_erase_2", complaint).await, 200);
    let r = a.http.get(a.url("/admin/api/dnc")).bearer_auth("not-a-token-of-anyone-0123456789").send().await;
    assert_eq!(r.unwrap().status(), 401);

    let before = feed(&a, &db).await;
    let text = serde_json::to_string(&before).unwrap();
    for form in [PHONE, EMAIL_LOWER, recording] {
        assert!(text.contains(form), "the feed opens {form} before erasure");
    }
    let received = before.iter().find(|e| e["eventType"] == "MessageReceived" && e["payload"]["channel"] == "email");
    assert_eq!(received.unwrap()["payload"]["from"], EMAIL_LOWER);

    // An agent may not erase; the org admin erases the phone number in its org over HTTP, on A.
    let (is_error, refusal) = on_a.call("comms_erase_subject", json!({"identifier": PHONE})).await;
    assert!(is_error, "{refusal}");
    let (status, erased) = admin_post(
        &a,
        &admin,
        "/admin/api/subjects/erase",
        json!({"identifier": PHONE_SPACED, "reason": "GDPR art. 17"}),
    )
    .await;
    assert_eq!((status, &erased["success"]), (200, &json!(true)), "a mutation answers success:true: {erased}");
    // Idempotent: nothing left to destroy or purge (on A, so that B keeps its cached key).
    let (status, again) = admin_post(&a, &admin, "/admin/api/subjects/erase", json!({"identifier": PHONE})).await;
    assert_eq!(status, 200);
    assert_eq!((again["keysDestroyed"].as_u64(), again["projectionRowsPurged"].as_u64()), (Some(0), Some(0)));
    assert_eq!(again["dncSuppressionsKept"], erased["dncSuppressionsKept"]);

    // At once on B, which cached the destroyed key (no sleep, no retry loop): DNC still blocks,
    // and the refusal is sealed under a new generation, not the destroyed key it had cached.
    let (is_error, refusal) = on_b.call("comms_send_message", json!({"to": PHONE, "body": "hi"})).await;
    assert!(is_error, "a DNC'd subject was contacted after erasure");
    assert_eq!(refusal["rule"], "dnc", "{refusal}");
    // A later status callback of the erased recipient's call keeps no recording reference.
    let (code, _) = twilio_post(
        &b,
        &status_path,
        &[("CallSid", &call_sid), ("CallStatus", "canceled"), ("RecordingUrl", "https://example.com/RE0002")],
    )
    .await;
    assert_eq!(code, 200);
    let (is_error, refusal) = on_a.call("comms_send_message", json!({"to": PHONE, "body": "hi"})).await;
    assert!(is_error && refusal["rule"] == "dnc", "{refusal}");

    let keys = commguard::crypto::DataKeys::new(&hex_key(crate::support::DATA_KEY_HEX));
    let subject_ref = keys.blind_index(PHONE);
    assert_eq!(erased["subjectRef"], subject_ref.as_str());
    assert_eq!((erased["scope"].as_str(), erased["orgIds"].clone()), (Some("org"), json!([org_id])));
    assert!(erased["keysDestroyed"].as_u64().unwrap() >= 3, "the subject key and two consent keys: {erased}");
    assert!(erased["projectionRowsPurged"].as_u64().unwrap() >= 2, "sms and voice consent rows: {erased}");
    let kept = erased["dncSuppressionsKept"].as_u64().unwrap();
    assert!(kept >= 1, "the DNC entries stay as suppression: {erased}");
    assert!(erased["erasedAt"].as_str().unwrap().starts_with("2026-12-01T16:"));

    // Both instances read the phone's fields as [erased]; the events after the erasure read.
    for s in [&a, &b] {
        let events = feed(s, &db).await;
        // The second (idempotent) erasure came right after the first: B's events follow it.
        let erasure = events.iter().rfind(|e| e["eventType"] == "SubjectErased").unwrap();
        let (earlier, later): (Vec<&Value>, Vec<&Value>) = events.iter().partition(|e| position(e) < position(erasure));
        let text = serde_json::to_string(&earlier).unwrap();
        let holding: Vec<&&Value> = earlier.iter().filter(|e| e.to_string().contains("2025550142")).collect();
        assert!(holding.is_empty() && !text.contains(PHONE), "the feed still shows the number: {holding:?}");
        assert!(text.contains(EMAIL_LOWER), "another subject stays readable");
        let sent: Vec<&&Value> =
            earlier.iter().filter(|e| e["eventType"] == "MessageSent" && e["payload"]["channel"] == "sms").collect();
        assert_eq!(sent.len(), 2);
        for e in &sent {
            assert_eq!(e["payload"]["to"], "[erased]");
            assert_eq!(e["payload"]["body"], "[erased]");
            assert!(erased_paths(e).contains(&("to".into(), "subject_erased".into())), "{e}");
        }
        let call = earlier.iter().find(|e| e["eventType"] == "CallPlaced").unwrap();
        assert_eq!(call["payload"]["to"], "[erased]");
        let status = earlier.iter().find(|e| e["eventType"] == "CallStatusChanged").unwrap();
        assert_eq!(status["payload"]["recordingUrl"], "[erased]", "{status}");
        assert!(erased_paths(status).contains(&("recordingUrl".into(), "subject_erased".into())), "{status}");
        assert!(!text.contains("RE0001"));
        let first = events.iter().find(|e| e["eventType"] == "SubjectErased").unwrap();
        assert_eq!(first["aggregateType"], "subject");
        assert_eq!(first["aggregateId"], subject_ref.as_str());
        assert_eq!(first["payload"]["identifierType"], "phone");
        assert_eq!(first["payload"]["keysDestroyed"], erased["keysDestroyed"]);
        assert!(first["payload"]["requestedBy"].as_str().unwrap().starts_with("org:"), "{first}");
        assert!(!first.to_string().contains("2025550142"), "no identifier in SubjectErased: {first}");
        let blocked: Vec<&&Value> = later.iter().filter(|e| e["eventType"] == "MessageBlocked").collect();
        assert_eq!(blocked.len(), 2, "{later:?}");
        for e in blocked {
            assert_eq!(e["payload"]["to"], PHONE, "sealed under a new generation, not the destroyed key: {e}");
        }
        let late = later.iter().find(|e| e["eventType"] == "CallStatusChanged").unwrap();
        assert!(late["payload"]["recordingUrl"].is_null(), "{late}");
    }

    // Consent records are gone from the projection, and a rebuild does not bring them back.
    let consent = admin_get(&a, &admin, &format!("/admin/api/consent?contact=%2B12025550142&agentId={agent_id}")).await;
    assert_eq!(consent["records"], json!([]), "{consent}");
    assert_eq!(consent["onDnc"], true, "{consent}");
    let pool = db.pool().await;
    let quiet = &mut commguard::store::runner::Progress::quiet();
    commguard::store::runner::rebuild(&pool, &commguard_projections::contact::ConsentProjection, quiet).await.unwrap();
    let consent = admin_get(&b, &admin, &format!("/admin/api/consent?contact=%2B12025550142&agentId={agent_id}")).await;
    assert_eq!(consent["records"], json!([]), "after a rebuild: {consent}");
    let email = admin_get(&b, &admin, &format!("/admin/api/consent?contact={EMAIL_LOWER}&agentId={agent_id}")).await;
    assert_eq!(email["records"].as_array().unwrap().len(), 1, "another subject's record is rebuilt: {email}");

    // The master erases the email in every org through the tool, on B; A at once seals the next
    // event about it (a DNC refusal: the complaint listed it) under a new generation.
    let master_b = session(&b, MASTER).await;
    let mail = master_b.ok("comms_erase_subject", json!({"identifier": EMAIL, "reason": "request"})).await;
    assert_eq!((mail["success"].as_bool(), mail["scope"].as_str()), (Some(true), Some("all")), "{mail}");
    assert_eq!(mail["orgIds"], json!([org_id]));
    assert!(mail["keysDestroyed"].as_u64().unwrap() >= 2, "{mail}");
    let (is_error, refusal) =
        on_a.call("comms_send_message", json!({"channel": "email", "to": EMAIL, "subject": "x", "body": "y"})).await;
    assert!(is_error && refusal["rule"] == "dnc", "{refusal}");
    on_a.ok("comms_record_consent", json!({"contactAddress": EMAIL, "channel": "email", "source": "new form"})).await;
    let events = feed(&a, &db).await;
    let erasures: Vec<&Value> = events.iter().filter(|e| e["eventType"] == "SubjectErased").collect();
    assert_eq!(erasures.len(), 3, "the phone twice, the email once");
    let last = erasures[2];
    assert_eq!(
        (last["payload"]["identifierType"].as_str(), last["payload"]["scope"].as_str()),
        (Some("email"), Some("all"))
    );
    let (earlier, later): (Vec<&Value>, Vec<&Value>) = events.iter().partition(|e| position(e) < position(last));
    let text = serde_json::to_string(&earlier).unwrap();
    assert!(!text.contains(EMAIL_LOWER) && !text.contains(EMAIL), "the email is erased everywhere before");
    let blocked = later.iter().find(|e| e["eventType"] == "MessageBlocked").unwrap();
    assert_eq!(blocked["payload"]["to"], EMAIL_LOWER);
    let granted = later.iter().find(|e| e["eventType"] == "ConsentGranted").unwrap();
    assert_eq!(granted["payload"]["contact"], EMAIL_LOWER);

    // DNC lists the entries as [erased] on both instances.
    for s in [&a, &b] {
        let listed = admin_get(s, &admin, "/admin/api/dnc").await;
        let entries = listed["entries"].as_array().unwrap();
        assert_eq!(entries.len() as u64, kept + 1, "the phone's entries and the complaint: {listed}");
        assert!(entries.iter().all(|e| e["address"] == "[erased]"), "{listed}");
    }
    let generations: Vec<i32> = sqlx::query_scalar(
        "SELECT generation FROM data_keys WHERE kind = 'subject' AND subject_ref = $1 ORDER BY generation",
    )
    .bind(&subject_ref)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(generations, [1, 2]);
    pool.close().await;

    // The hash chains verify, by the CLI as an operator runs it.
    assert_audit_verifies(&db, "erasure");
    let (_, out, err) = commguard_cli(&db, &["audit", "verify"], &[("RUST_LOG", "trace")]);

    // The whole database holds no form of either identifier, new sealed events included.
    assert_holds_no_form(&pg_dump(&db), "the dump");

    // Nor does anything the servers logged, at every level, from start to stop.
    a.stop();
    b.stop();
    let logged = std::fs::read_to_string(&log).unwrap();
    // Nothing of ours or of the libraries logs at TRACE on these paths; DEBUG (sqlx's statements)
    // shows that every level was on.
    assert!(logged.contains(" DEBUG ") && logged.contains("commguard listening"), "the servers' logs were captured");
    assert_holds_no_form(&logged, "the servers' logs");
    assert_holds_no_form(&format!("{out}{err}"), "audit verify's output");
}

fn hex_key(hex: &str) -> commguard::crypto::Key {
    let bytes = hex::decode(hex).unwrap();
    bytes.try_into().unwrap()
}

/// A grant recorded while an erasure runs — after it listed the subject's grants, before it
/// destroyed the subject's keys — keeps a record key the erasure never named, but its `contact`
/// is sealed under a subject key the erasure destroyed: the consent projection drops its row
/// (when it applies the grant, and at a rebuild's swap), so a rebuild does not bring back consent
/// for an erased person. Before, only a destroyed record key dropped a row.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_sealed_under_a_destroyed_subject_key_is_not_rebuilt() {
    use crate::support::{provision, TestServer};
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &[("MASTER_SECURITY_TOKEN", MASTER)]).await;
    let p = provision(&s, MASTER, "late-grant", json!({}), "Granted", json!({"phone": true})).await;
    let agent = Session::open(&s, &p.agent_token).await;
    agent.ok("comms_record_consent", json!({"contactAddress": "+12025550143", "channel": "sms"})).await;
    let pool = db.pool().await;
    let rows = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM consents WHERE agent_id = $1")
            .bind(&p.agent_id)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    assert_eq!(rows().await, 1);
    // The erasure's destruction of the subject's keys, without the grant in its list.
    let destroyed = sqlx::query(
        "UPDATE data_keys SET wrapped = NULL, destroyed_at = now() WHERE kind = 'subject' AND destroyed_at IS NULL",
    )
    .execute(&pool)
    .await
    .unwrap()
    .rows_affected();
    assert!(destroyed >= 1);
    let quiet = &mut commguard::store::runner::Progress::quiet();
    commguard::store::runner::rebuild(&pool, &commguard_projections::contact::ConsentProjection, quiet).await.unwrap();
    assert_eq!(rows().await, 0, "the erased subject's grant came back in the rebuild");
    s.stop().await;
}

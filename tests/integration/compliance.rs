//! Communication law end to end (docs/webhooks.md, docs/compliance.md): consent on every outbound channel, DNC per
//! org, the content filter, quiet hours on the service clock, recording consent, and the Twilio
//! and Svix webhooks (signatures, replay, STOP/START/HELP, call status) — through real HTTP.

use base64::Engine;
use serde_json::{json, Value};

use crate::support::{provision, McpSession as Session, TestDb, TestServer};

const MASTER: &str = "compliance-test-master-token-0123456789abcdef";
const AUTH_TOKEN: &str = "twilio-auth-token-for-tests";
const BASE: &str = "https://hooks.example.com";
const SVIX_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

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
        ("RESEND_WEBHOOK_SECRET", SVIX_SECRET),
    ]
}

struct Org {
    org_id: String,
    admin: String,
    agent_token: String,
    agent_id: String,
    number: String,
}

/// A sandbox org with one agent (phone + email).
async fn org(s: &TestServer, slug: &str) -> Org {
    let p = provision(s, MASTER, slug, json!({}), "Clinic", json!({"phone": true, "email": true})).await;
    let number = p.number.expect("a phone agent has a number");
    Org { org_id: p.org_id, admin: p.admin, agent_token: p.agent_token, agent_id: p.agent_id, number }
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

async fn payloads(db: &TestDb, event_type: &str) -> Vec<Value> {
    sqlx::query_scalar("SELECT payload::jsonb FROM events WHERE event_type = $1 ORDER BY position")
        .bind(event_type)
        .fetch_all(&db.pool().await)
        .await
        .unwrap()
}

fn assert_blocked(refusal: &Value, rule: &str, message: &str) {
    assert_eq!(refusal["code"], "compliance_blocked", "{refusal}");
    assert_eq!(refusal["rule"], rule, "{refusal}");
    assert_eq!(refusal["error"], message, "{refusal}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_is_required_on_every_channel_and_transactional_consent_is_narrow() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await; // 11:00 in Washington DC
    let o = org(&s, "consent").await;
    let me = Session::open(&s, &o.agent_token).await;

    let sends = [
        ("comms_send_message", json!({"to": "+12025550100", "body": "Your table is ready."}), "+12025550100", "sms"),
        (
            "comms_send_message",
            json!({"channel": "email", "to": "Pat@Example.com", "subject": "Hi", "body": "Hello"}),
            "pat@example.com",
            "email",
        ),
        ("comms_make_call", json!({"to": "+12025550100"}), "+12025550100", "voice"),
        (
            "comms_send_voice_message",
            json!({"to": "+12025550100", "text": "Your order shipped."}),
            "+12025550100",
            "voice",
        ),
    ];
    for (tool, args, to, channel) in &sends {
        let (is_error, refusal) = me.call(tool, args.clone()).await;
        assert!(is_error, "{tool} went out without consent");
        assert_blocked(
            &refusal,
            "consent_required",
            &format!("Compliance: No active consent from {to} for {channel}. Record consent before sending."),
        );
    }
    assert_eq!(payloads(&db, "MessageBlocked").await.len() + payloads(&db, "CallBlocked").await.len(), 4);
    assert!(payloads(&db, "MessageBlocked").await.iter().all(|p| p["rule"] == "consent_required"));

    let check = me.ok("comms_check_consent", json!({"contactAddress": "+12025550100", "channel": "sms"})).await;
    assert_eq!(
        check,
        json!({"hasConsent": false, "status": "none", "onDnc": false, "message": "No consent record found"})
    );

    for (channel, to) in [("sms", "+12025550100"), ("email", "pat@example.com"), ("voice", "+1 202 555 0100")] {
        let granted = me
            .ok(
                "comms_record_consent",
                json!({"contactAddress": to, "channel": channel, "source": "web form", "consentType": "express"}),
            )
            .await;
        assert_eq!(granted["status"], "granted");
    }
    for (tool, args, _, _) in &sends {
        me.ok(tool, args.clone()).await;
    }
    let check = me.ok("comms_check_consent", json!({"contactAddress": "+12025550100", "channel": "sms"})).await;
    assert_eq!((check["hasConsent"].as_bool(), check["source"].as_str()), (Some(true), Some("web form")));

    // Revoked: refused again; revoking twice says there was nothing to revoke.
    let revoked = me.ok("comms_revoke_consent", json!({"contactAddress": "+12025550100", "channel": "sms"})).await;
    assert_eq!(revoked["status"], "revoked");
    let again = me.ok("comms_revoke_consent", json!({"contactAddress": "+12025550100", "channel": "sms"})).await;
    assert_eq!(again["message"], "No active consent found to revoke");
    let (is_error, _) = me.call("comms_send_message", sends[0].1.clone()).await;
    assert!(is_error);

    // Transactional consent permits only transactional sends.
    me.ok(
        "comms_record_consent",
        json!({"contactAddress": "+12025550199", "channel": "sms", "consentType": "transactional"}),
    )
    .await;
    let (is_error, refusal) = me.call("comms_send_message", json!({"to": "+12025550199", "body": "Sale!"})).await;
    assert!(is_error);
    assert_eq!(refusal["consentType"], "transactional");
    me.ok("comms_send_message", json!({"to": "+12025550199", "body": "Receipt #1", "purpose": "transactional"})).await;

    // The grant's contact and source are sealed in the store.
    let granted = payloads(&db, "ConsentGranted").await;
    assert!(granted.iter().all(|p| p["contact"]["$pii"].is_number() && p["agentId"] == o.agent_id.as_str()));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dnc_blocks_within_its_org_only_and_content_is_filtered() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await;
    let a = org(&s, "dnc-a").await;
    let b = org(&s, "dnc-b").await;
    let agent_a = Session::open(&s, &a.agent_token).await;
    let agent_b = Session::open(&s, &b.agent_token).await;
    for agent in [&agent_a, &agent_b] {
        agent.ok("comms_record_consent", json!({"contactAddress": "+12025550123", "channel": "sms"})).await;
    }

    let added = agent_a.ok("comms_dnc_add", json!({"address": "+1 (202) 555-0123", "reason": "asked"})).await;
    assert_eq!((added["type"].as_str(), added["alreadyListed"].as_bool()), (Some("phone"), Some(false)));
    let again = agent_a.ok("comms_dnc_add", json!({"address": "+12025550123"})).await;
    assert_eq!((again["alreadyListed"].as_bool(), &again["entryId"]), (Some(true), &added["entryId"]));

    let (is_error, refusal) = agent_a.call("comms_send_message", json!({"to": "+12025550123", "body": "hi"})).await;
    assert!(is_error);
    assert_blocked(&refusal, "dnc", "Compliance: +12025550123 is on the Do Not Contact list");
    agent_b.ok("comms_send_message", json!({"to": "+12025550123", "body": "hi"})).await;

    let admin_a = Session::open(&s, &a.admin).await;
    let listed = admin_a.ok("comms_dnc_list", json!({})).await;
    assert_eq!(listed["entries"][0]["address"], "+12025550123");
    assert_eq!((listed["entries"][0]["source"].as_str(), listed["nextCursor"].is_null()), (Some("agent"), true));
    let (is_error, refusal) =
        agent_a.call("comms_dnc_remove", json!({"address": "+12025550123", "reason": "mistake"})).await;
    assert!(is_error, "agents may not remove DNC entries: {refusal}");
    let removed =
        admin_a.ok("comms_dnc_remove", json!({"address": "+12025550123", "reason": "added by mistake"})).await;
    assert_eq!(removed["removed"], 1);
    agent_a.ok("comms_send_message", json!({"to": "+12025550123", "body": "hi"})).await;

    // The content filter reads body, subject and html text; ordinary words pass.
    let (is_error, refusal) =
        agent_a.call("comms_send_message", json!({"to": "+12025550123", "body": "I will hurt you"})).await;
    assert!(is_error);
    assert_blocked(&refusal, "content_filter", "Compliance: Message contains threatening content");
    let (is_error, refusal) =
        agent_a.call("comms_send_message", json!({"to": "+12025550123", "body": "what the f.u.c.k"})).await;
    assert!(is_error);
    assert_blocked(&refusal, "content_filter", "Compliance: Message contains prohibited language");
    agent_a.ok("comms_send_message", json!({"to": "+12025550123", "body": "No harm done. Does it hurt?"})).await;
    let blocked = payloads(&db, "MessageBlocked").await;
    assert_eq!(blocked.iter().filter(|p| p["rule"] == "content_filter").count(), 2);
    assert_eq!(blocked.iter().filter(|p| p["rule"] == "dnc").count(), 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_respect_local_calling_hours_and_recording_consent() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let o = org(&s, "hours").await;
    let me = Session::open(&s, &o.agent_token).await;
    for to in ["+12125550100", "+14155550100"] {
        me.ok("comms_record_consent", json!({"contactAddress": to, "channel": "voice"})).await;
    }

    // 03:00 UTC is 22:00 in New York (EST): refused, with the zone and local time.
    set_clock(&s, "2026-12-02T03:00:00Z").await;
    let (is_error, refusal) = me.call("comms_make_call", json!({"to": "+12125550100"})).await;
    assert!(is_error);
    assert_blocked(
        &refusal,
        "quiet_hours",
        "Compliance: TCPA: Calls not allowed at this time (22:00 in America/New_York). Allowed: 8:00 AM - 9:00 PM.",
    );
    assert_eq!(refusal["zone"], "America/New_York");
    let (is_error, _) = me.call("comms_send_voice_message", json!({"to": "+12125550100", "text": "Reminder"})).await;
    assert!(is_error, "voice messages keep quiet hours too");
    // Same instant, 19:00 in San Francisco: allowed.
    me.ok("comms_make_call", json!({"to": "+14155550100"})).await;

    // Summer time: 12:30 UTC in July is 08:30 EDT (allowed) but would be 07:30 EST.
    set_clock(&s, "2026-07-01T12:30:00Z").await;
    let placed = me.ok("comms_make_call", json!({"to": "+12125550100"})).await;
    let call: Value = payloads(&db, "CallPlaced").await.into_iter().last().unwrap();
    assert_eq!(call["zones"], json!(["America/New_York"]));
    assert_eq!(placed["recorded"], false);

    // Recording a Californian (all-party) needs recording consent.
    set_clock(&s, "2026-07-01T18:00:00Z").await;
    let (is_error, refusal) = me.call("comms_make_call", json!({"to": "+14155550100", "record": true})).await;
    assert!(is_error);
    assert_blocked(
        &refusal,
        "recording_consent",
        "Compliance: Recording consent required: California requires all-party consent to record calls.",
    );
    me.ok("comms_record_consent", json!({"contactAddress": "+14155550100", "channel": "recording"})).await;
    let recorded = me.ok("comms_make_call", json!({"to": "+14155550100", "record": true})).await;
    assert_eq!(recorded["recorded"], true);
    s.stop().await;
}

/// A form POST signed as Twilio signs it, to `path` on `s`.
async fn twilio_post(s: &TestServer, path: &str, params: &[(&str, &str)], signature: Option<String>) -> (u16, String) {
    crate::support::twilio_form(&s.http, &s.url(path), &format!("{BASE}{path}"), AUTH_TOKEN, params, signature).await
}

fn sms<'a>(sid: &'a str, from: &'a str, to: &'a str, body: &'a str) -> Vec<(&'a str, &'a str)> {
    vec![("MessageSid", sid), ("From", from), ("To", to), ("Body", body)]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stop_start_and_help_act_in_the_receiving_org_only() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await;
    let a = org(&s, "stop-a").await;
    let b = org(&s, "stop-b").await;
    let me = Session::open(&s, &a.agent_token).await;
    let other = Session::open(&s, &b.agent_token).await;
    let sender = "+12025550177";
    for (agent, channel) in [(&me, "sms"), (&me, "voice"), (&me, "email"), (&other, "sms")] {
        let to = if channel == "email" { "sam@example.com" } else { sender };
        agent.ok("comms_record_consent", json!({"contactAddress": to, "channel": channel})).await;
    }
    let path = format!("/webhooks/{}/sms", a.agent_id);
    let number = a.number.as_str();
    let inbound = |sid, body| sms(sid, sender, number, body);

    // A wrong signature is refused and recorded; no effect.
    let (status, body) = twilio_post(&s, &path, &inbound("SM1", "STOP"), Some("bm90IGl0".into())).await;
    assert_eq!((status, body.as_str()), (403, "<Response/>"));
    assert_eq!(payloads(&db, "WebhookRejected").await[0]["reason"], "signature");

    let (status, body) = twilio_post(&s, &path, &inbound("SM1", "  stop "), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "<Response><Message>You have been unsubscribed and will not receive further messages. Reply START to resubscribe.</Message></Response>"
    );
    // Replayed within the window: refused.
    let (status, _) = twilio_post(&s, &path, &inbound("SM1", "  stop "), None).await;
    assert_eq!(status, 403);
    assert_eq!(payloads(&db, "WebhookRejected").await.last().unwrap()["reason"], "replay");
    // Provenance lists every check that ran, in order: the gate's, then the refusing one.
    let checks = |event_type: &'static str| {
        let pool = db.pool();
        async move {
            let all: Vec<Value> = sqlx::query_scalar(
                "SELECT metadata::jsonb -> 'provenance' -> 'checks' FROM events WHERE event_type = $1 ORDER BY position",
            )
            .bind(event_type)
            .fetch_all(&pool.await)
            .await
            .unwrap();
            let last = all.last().unwrap().as_array().unwrap().clone();
            last.iter()
                .map(|c| format!("{}:{}", c["check"].as_str().unwrap(), c["result"].as_str().unwrap()))
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(checks("WebhookRejected").await, ["agent:pass", "signature:pass", "replay:fail"]);
    // The request's id (the X-Request-Id it was answered with) is on its events.
    let ids: Vec<Option<String>> = sqlx::query_scalar(
        "SELECT metadata::jsonb ->> 'requestId' FROM events WHERE event_type IN ('StopReceived', 'WebhookRejected')",
    )
    .fetch_all(&db.pool().await)
    .await
    .unwrap();
    assert!(ids.len() >= 3 && ids.iter().all(|id| id.as_ref().is_some_and(|id| id.len() >= 8)), "{ids:?}");
    assert_eq!(checks("StopReceived").await[..3], ["agent:pass", "signature:pass", "replay:pass"]);

    let check = me.ok("comms_check_consent", json!({"contactAddress": sender, "channel": "voice"})).await;
    assert_eq!((check["status"].as_str(), check["onDnc"].as_bool()), (Some("revoked"), Some(true)));
    let email = me.ok("comms_check_consent", json!({"contactAddress": "sam@example.com", "channel": "email"})).await;
    assert_eq!(email["hasConsent"], true, "STOP by SMS leaves email consent alone");
    let (is_error, refusal) = me.call("comms_send_message", json!({"to": sender, "body": "hi"})).await;
    assert!(is_error);
    assert_eq!(refusal["rule"], "dnc");
    // The other org is untouched.
    other.ok("comms_send_message", json!({"to": sender, "body": "hi"})).await;
    let stop = &payloads(&db, "StopReceived").await[0];
    assert_eq!((stop["consentsRevoked"].as_u64(), stop["dncAdded"].as_bool()), (Some(2), Some(true)));

    let (status, body) = twilio_post(&s, &path, &inbound("SM2", "HELP"), None).await;
    assert_eq!(status, 200);
    assert_eq!(
        body,
        "<Response><Message>Reply STOP to unsubscribe. Msg&amp;data rates may apply.</Message></Response>"
    );

    let (status, body) = twilio_post(&s, &path, &inbound("SM3", "Start"), None).await;
    assert_eq!(
        (status, body.as_str()),
        (200, "<Response><Message>You have been resubscribed. Reply STOP to unsubscribe.</Message></Response>")
    );
    me.ok("comms_send_message", json!({"to": sender, "body": "welcome back"})).await;
    let voice = me.ok("comms_check_consent", json!({"contactAddress": sender, "channel": "voice"})).await;
    assert_eq!(voice["hasConsent"], false, "START restores only sms consent");

    // Not a keyword: recorded as received; `STOP.` is not STOP.
    let (status, body) = twilio_post(&s, &path, &inbound("SM4", "STOP."), None).await;
    assert_eq!((status, body.as_str()), (200, "<Response/>"));
    assert_eq!(payloads(&db, "MessageReceived").await.len(), 2);
    assert_eq!(payloads(&db, "StopReceived").await.len(), 1);

    // Wrong recipient number, missing fields, unknown agent.
    let (status, _) =
        twilio_post(&s, &path, &[("MessageSid", "SM5"), ("From", sender), ("To", "+15550000000"), ("Body", "x")], None)
            .await;
    assert_eq!(status, 404);
    let (status, _) = twilio_post(&s, &path, &[("MessageSid", "SM6"), ("Body", "x")], None).await;
    assert_eq!(status, 400);
    let (status, body) = twilio_post(&s, "/webhooks/nobody/sms", &inbound("SM7", "x"), None).await;
    assert_eq!((status, body.as_str()), (404, "<Response/>"));

    // An agent's own listing made while a STOP's entry lists the contact is added beside it, so
    // START (which removes only STOP's entries) leaves the contact listed.
    let (status, _) = twilio_post(&s, &path, &inbound("SM8", "STOP"), None).await;
    assert_eq!(status, 200);
    let listed = me.ok("comms_dnc_add", json!({"address": sender, "reason": "asked us by phone"})).await;
    assert_eq!(listed["alreadyListed"], true);
    let (status, _) = twilio_post(&s, &path, &inbound("SM9", "START"), None).await;
    assert_eq!(status, 200);
    let entries = Session::open(&s, &a.admin).await.ok("comms_dnc_list", json!({})).await;
    let sources: Vec<&str> =
        entries["entries"].as_array().unwrap().iter().filter_map(|e| e["source"].as_str()).collect();
    assert_eq!(sources, ["agent"], "{entries}");
    assert_eq!(entries["entries"][0]["entryId"], listed["entryId"]);
    let (is_error, refusal) = me.call("comms_send_message", json!({"to": sender, "body": "hi"})).await;
    assert_eq!((is_error, refusal["rule"].as_str()), (true, Some("dnc")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn call_status_sequences_pass_and_repeats_are_refused() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await;
    let o = org(&s, "status").await;
    let me = Session::open(&s, &o.agent_token).await;
    me.ok("comms_record_consent", json!({"contactAddress": "+12025550188", "channel": "voice"})).await;
    let call = me.ok("comms_make_call", json!({"to": "+12025550188"})).await;
    let sid = call["callSid"].as_str().unwrap().to_string();
    let path = format!("/webhooks/{}/call-status", o.agent_id);
    for status in ["ringing", "in-progress", "completed"] {
        let (code, body) =
            twilio_post(&s, &path, &[("CallSid", &sid), ("CallStatus", status), ("CallDuration", "42")], None).await;
        assert_eq!((code, body.as_str()), (200, "<Response/>"), "{status}");
    }
    let (code, _) = twilio_post(&s, &path, &[("CallSid", &sid), ("CallStatus", "completed")], None).await;
    assert_eq!(code, 403, "the same status twice is a replay");
    let (code, _) = twilio_post(&s, &path, &[("CallSid", &sid), ("CallStatus", "exploded")], None).await;
    assert_eq!(code, 400);
    let (code, _) = twilio_post(&s, &path, &[("CallSid", "CAunknown"), ("CallStatus", "ringing")], None).await;
    assert_eq!(code, 404);
    let alias = format!("/webhooks/{}/voice/status", o.agent_id);
    let (code, _) = twilio_post(&s, &alias, &[("CallSid", &sid), ("CallStatus", "canceled")], None).await;
    assert_eq!(code, 200);
    let changes = payloads(&db, "CallStatusChanged").await;
    let statuses: Vec<&str> = changes.iter().map(|p| p["status"].as_str().unwrap()).collect();
    assert_eq!(statuses, ["ringing", "in-progress", "completed", "canceled"]);
    assert_eq!((changes[2]["cost"].as_i64(), changes[2]["durationSeconds"].as_i64()), (Some(0), Some(42)));
    assert!(changes[0]["cost"].is_null());
    s.stop().await;
}

fn svix_headers(id: &str, ts: i64, body: &str, secret: &str) -> String {
    use hmac::Mac;
    let key = base64::engine::general_purpose::STANDARD.decode(secret.trim_start_matches("whsec_")).unwrap();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{ts}.{body}").as_bytes());
    format!("v1,{}", base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn svix_email_webhooks_verify_the_raw_body_and_complaints_list_the_address() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await;
    let o = org(&s, "email-hooks").await;
    let me = Session::open(&s, &o.agent_token).await;
    me.ok("comms_record_consent", json!({"contactAddress": "lee@example.com", "channel": "email"})).await;
    let status = me.ok("comms_get_channel_status", json!({})).await;
    let own = status["channels"]["email"].as_str().unwrap().to_string();
    let path = format!("/webhooks/{}/email", o.agent_id);
    let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T16:00:00Z").unwrap().timestamp();
    let post = |id: &'static str, ts: i64, body: String, signature: Option<String>| {
        let sig = signature.unwrap_or_else(|| svix_headers(id, ts, &body, SVIX_SECRET));
        s.http
            .post(s.url(&path))
            .header("content-type", "application/json")
            .header("svix-id", id)
            .header("svix-timestamp", ts.to_string())
            .header("svix-signature", sig)
            .body(body)
            .send()
    };
    let received = json!({"type": "email.received", "data": {"from": "Lee <LEE@example.com>", "to": [own], "subject": "Hi", "text": "Hello"}}).to_string();
    let r = post("msg_1", now, received.clone(), None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.json::<Value>().await.unwrap(), json!({"ok": true}));
    let r = post("msg_1", now, received.clone(), None).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.json::<Value>().await.unwrap()["error"].clone()),
        (403, json!("Webhook replayed"))
    );
    let r = post("msg_2", now - 301, received.clone(), None).await.unwrap();
    assert_eq!(r.json::<Value>().await.unwrap()["error"], "Webhook timestamp expired");
    let r = post("msg_3", now, received.clone(), Some("v1,bm90IGl0".into())).await.unwrap();
    assert_eq!(
        (r.status().as_u16(), r.json::<Value>().await.unwrap()["error"].clone()),
        (403, json!("Invalid webhook signature"))
    );
    // The signature covers the raw bytes: re-serialised JSON does not verify.
    let spaced = received.replace(",", ", ");
    let r = post("msg_4", now, spaced, Some(svix_headers("msg_4", now, &received, SVIX_SECRET))).await.unwrap();
    assert_eq!(r.status(), 403);

    let complaint = json!({"type": "email.complained", "data": {"from": own, "to": ["lee@example.com"]}}).to_string();
    assert_eq!(post("msg_5", now, complaint, None).await.unwrap().status(), 200);
    let check = me.ok("comms_check_consent", json!({"contactAddress": "lee@example.com", "channel": "email"})).await;
    assert_eq!((check["status"].as_str(), check["onDnc"].as_bool()), (Some("revoked"), Some(true)));
    let (is_error, refusal) = me
        .call("comms_send_message", json!({"channel": "email", "to": "lee@example.com", "subject": "x", "body": "y"}))
        .await;
    assert!(is_error);
    assert_eq!(refusal["rule"], "dnc");
    let listed = Session::open(&s, &o.admin).await.ok("comms_dnc_list", json!({})).await;
    assert_eq!(listed["entries"][0]["source"], "complaint");
    assert_eq!(payloads(&db, "MessageReceived").await.len(), 1);
    s.stop().await;
}

const STOP_REPLY: &str = "<Response><Message>You have been unsubscribed and will not receive further messages. Reply START to resubscribe.</Message></Response>";
const START_REPLY: &str =
    "<Response><Message>You have been resubscribed. Reply STOP to unsubscribe.</Message></Response>";
const HELP_REPLY: &str =
    "<Response><Message>Reply STOP to unsubscribe. Msg&amp;data rates may apply.</Message></Response>";

/// `vars()` with some values replaced or added.
fn vars_with(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v: Vec<_> = vars().into_iter().filter(|(k, _)| !extra.iter().any(|(e, _)| e == k)).collect();
    v.extend_from_slice(extra);
    v
}

async fn rejections(db: &TestDb) -> Vec<(String, String)> {
    payloads(db, "WebhookRejected")
        .await
        .iter()
        .map(|p| (p["route"].as_str().unwrap().to_string(), p["reason"].as_str().unwrap().to_string()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appendix_c_keywords_match_the_whole_body_trimmed_of_unicode_whitespace() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await;
    let o = org(&s, "keywords").await;
    let path = format!("/webhooks/{}/sms", o.agent_id);
    let cases: [(&str, &str); 14] = [
        ("STOPALL", STOP_REPLY),
        ("unsubscribe", STOP_REPLY),
        ("Cancel", STOP_REPLY),
        ("END", STOP_REPLY),
        ("quit", STOP_REPLY),
        ("REVOKE", STOP_REPLY),
        ("OptOut", STOP_REPLY),
        ("\u{00A0}STOP", STOP_REPLY),
        ("stop\u{3000}", STOP_REPLY),
        ("UNSTOP", START_REPLY),
        ("yes", START_REPLY),
        ("INFO", HELP_REPLY),
        ("STOP.", "<Response/>"),
        ("stop please", "<Response/>"),
    ];
    for (n, (body, reply)) in cases.iter().enumerate() {
        // A sender per case, so each STOP lists a new number.
        let sender = format!("+120255502{n:02}");
        let sid = format!("SMkw{n}");
        let (status, answer) = twilio_post(&s, &path, &sms(&sid, &sender, &o.number, body), None).await;
        assert_eq!((status, answer.as_str()), (200, *reply), "body {body:?}");
    }
    let stops = Value::Array(payloads(&db, "StopReceived").await.iter().map(|p| p["keyword"].clone()).collect());
    assert_eq!(stops, json!(["STOPALL", "UNSUBSCRIBE", "CANCEL", "END", "QUIT", "REVOKE", "OPTOUT", "STOP", "STOP"]));
    assert!(payloads(&db, "StopReceived").await.iter().all(|p| p["dncAdded"] == true));
    let starts = Value::Array(payloads(&db, "StartReceived").await.iter().map(|p| p["keyword"].clone()).collect());
    assert_eq!(starts, json!(["UNSTOP", "YES"]));
    let received = payloads(&db, "MessageReceived").await;
    let keywords: Vec<&Value> = received.iter().map(|p| &p["keyword"]).collect();
    assert_eq!(keywords, [&json!("help"), &Value::Null, &Value::Null], "INFO is HELP; the last two are plain messages");
    // The listed numbers are on the org's DNC list; the plain messages' senders are not.
    let listed = Session::open(&s, &o.admin).await.ok("comms_dnc_list", json!({})).await;
    let addresses: Vec<&str> =
        listed["entries"].as_array().unwrap().iter().map(|e| e["address"].as_str().unwrap()).collect();
    assert_eq!(addresses.len(), 9, "{listed}");
    assert!(!addresses.contains(&"+12025550212") && !addresses.contains(&"+12025550213"));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_is_refused_by_another_instance_and_a_redelivery_past_the_window_has_no_effect() {
    let db = TestDb::new().await;
    let one = TestServer::start(&db, &vars()).await;
    let two = TestServer::start(&db, &vars()).await;
    // Weeks before the real date: the nonces are older than any pruning horizon (below).
    for s in [&one, &two] {
        set_clock(s, "2026-11-02T16:00:00Z").await;
    }
    let o = org(&one, "replay").await;
    let path = format!("/webhooks/{}/sms", o.agent_id);
    let message = sms("SMreplay1", "+12025550301", &o.number, "Hello there");

    let (status, body) = twilio_post(&one, &path, &message, None).await;
    assert_eq!((status, body.as_str()), (200, "<Response/>"));
    let (status, body) = twilio_post(&two, &path, &message, None).await;
    assert_eq!((status, body.as_str()), (403, "<Response/>"), "the second instance sees the first's nonce");
    assert_eq!(rejections(&db).await, [("sms".to_string(), "replay".to_string())]);

    // Past the 300 s window: already processed, so 200 and nothing happens.
    for s in [&one, &two] {
        let r = s
            .http
            .post(s.url("/admin/api/test/clock"))
            .bearer_auth(MASTER)
            .json(&json!({"advanceSeconds": 301}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200);
    }
    let (status, body) = twilio_post(&two, &path, &message, None).await;
    assert_eq!((status, body.as_str()), (200, "<Response/>"));
    assert_eq!(payloads(&db, "MessageReceived").await.len(), 1, "the late redelivery recorded nothing");
    assert_eq!(rejections(&db).await.len(), 1);

    // docs/webhooks.md#twilio-routes: replay (step 4) comes before the handler's checks (step 5). A message to a number that
    // is not the agent's is refused by the handler (404) with its nonce claimed: sent again, it
    // is a replay.
    let wrong_to = sms("SMreplay2", "+12025550301", "+12025550999", "hi");
    assert_eq!(twilio_post(&one, &path, &wrong_to, None).await.0, 404);
    assert_eq!(twilio_post(&two, &path, &wrong_to, None).await.0, 403);
    let no_from = [("MessageSid", "SMreplay3"), ("To", o.number.as_str()), ("Body", "x")];
    assert_eq!(twilio_post(&one, &path, &no_from, None).await.0, 400);
    assert_eq!(twilio_post(&one, &path, &no_from, None).await.0, 403);
    let status_path = format!("/webhooks/{}/call-status", o.agent_id);
    let unknown = [("CallSid", "CAunknown"), ("CallStatus", "ringing")];
    assert_eq!(twilio_post(&one, &status_path, &unknown, None).await.0, 404);
    assert_eq!(twilio_post(&two, &status_path, &unknown, None).await.0, 403);
    // Without the fields the nonce is made of: 400 before any replay check, however often.
    for _ in 0..2 {
        assert_eq!(twilio_post(&one, &path, &[("From", "+12025550301"), ("Body", "x")], None).await.0, 400);
        assert_eq!(twilio_post(&one, &status_path, &[("CallSid", "CAunknown")], None).await.0, 400);
    }
    let reasons: Vec<String> = rejections(&db).await.into_iter().map(|(_, reason)| reason).collect();
    assert_eq!(reasons.iter().filter(|r| *r == "replay").count(), 4, "{reasons:?}");
    two.stop().await;
    one.stop().await;

    // A Twilio signature never expires, so the nonce is the only defence against a captured
    // request sent again: it is kept however old (docs/webhooks.md#replay). A new instance, whose
    // periodic jobs run at once, still finds the message processed.
    let three = TestServer::start(&db, &vars()).await;
    set_clock(&three, "2026-11-02T16:10:00Z").await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await; // let them run
    let (status, body) = twilio_post(&three, &path, &message, None).await;
    assert_eq!((status, body.as_str()), (200, "<Response/>"));
    assert_eq!(payloads(&db, "MessageReceived").await.len(), 1, "a weeks-old message is still processed once");
    three.stop().await;
}

/// A local Twilio: calls get sids `CAprice1`, `CAprice2`, …; the Calls API reports a price of
/// -0.0130 for `CAprice1`, no price for `CAprice2` the first time it is asked and -0.0200 after
/// that, and no price for the others.
async fn twilio_with_prices() -> String {
    use axum::extract::{Path, State};
    use axum::routing::{get, post};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    type Counts = Arc<(AtomicUsize, AtomicUsize)>;
    async fn place(State(n): State<Counts>) -> (axum::http::StatusCode, axum::Json<Value>) {
        let sid = format!("CAprice{}", n.0.fetch_add(1, Ordering::SeqCst) + 1);
        (axum::http::StatusCode::CREATED, axum::Json(json!({"sid": sid, "status": "queued", "price": null})))
    }
    async fn fetch(State(n): State<Counts>, Path((_, file)): Path<(String, String)>) -> axum::Json<Value> {
        let sid = file.trim_end_matches(".json");
        let price = match sid {
            "CAprice1" => json!("-0.0130"),
            "CAprice2" if n.1.fetch_add(1, Ordering::SeqCst) > 0 => json!("-0.0200"),
            _ => Value::Null,
        };
        axum::Json(json!({"sid": sid, "status": "completed", "price": price, "price_unit": "USD"}))
    }
    let app = axum::Router::new()
        .route("/2010-04-01/Accounts/{sid}/Calls.json", post(place))
        .route("/2010-04-01/Accounts/{sid}/Calls/{file}", get(fetch))
        .with_state(Arc::new((AtomicUsize::new(0), AtomicUsize::new(0))));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    base
}

async fn spend_today(me: &Session) -> f64 {
    me.ok("comms_get_usage_dashboard", json!({})).await["currentUsage"]["spendToday"].as_f64().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_price_is_added_once_and_a_failed_handler_gives_its_nonce_back() {
    let fake: &'static str = Box::leak(twilio_with_prices().await.into_boxed_str());
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars_with(&[("TWILIO_API_BASE_URL", fake)])).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await;
    let o = org(&s, "priced").await;
    crate::support::approve_org(&s.http, &s.base, MASTER, &o.org_id).await;
    let me = Session::open(&s, &o.agent_token).await;
    me.ok("comms_record_consent", json!({"contactAddress": "+12025550188", "channel": "voice"})).await;
    let call = me.ok("comms_make_call", json!({"to": "+12025550188"})).await;
    assert_eq!((call["callSid"].as_str(), call["sandbox"].as_bool()), (Some("CAprice1"), Some(false)));
    assert_eq!(spend_today(&me).await, 0.0);
    let path = format!("/webhooks/{}/call-status", o.agent_id);
    let status = |status: &'static str| vec![("CallSid", "CAprice1"), ("CallStatus", status)];

    // The spend cannot be written: the handler fails (5xx) and gives its nonce back ...
    let pool = db.pool().await;
    let rename =
        |from: &str, to: &str| format!("ALTER FUNCTION {from}(text, text, timestamptz, bigint) RENAME TO {to}");
    sqlx::query(&rename("settle_action_cost", "settle_action_cost_off")).execute(&pool).await.unwrap();
    let (code, body) = twilio_post(&s, &path, &status("completed"), None).await;
    assert_eq!((code, body.as_str()), (500, "<Response/>"));
    sqlx::query(&rename("settle_action_cost_off", "settle_action_cost")).execute(&pool).await.unwrap();
    assert!(payloads(&db, "CallStatusChanged").await.is_empty());
    // ... so Twilio's retry is processed, not refused as a replay.
    let (code, body) = twilio_post(&s, &path, &status("completed"), None).await;
    assert_eq!((code, body.as_str()), (200, "<Response/>"));
    assert_eq!(spend_today(&me).await, 0.013);

    // A second terminal status is recorded but adds nothing.
    let (code, _) = twilio_post(&s, &path, &status("canceled"), None).await;
    assert_eq!(code, 200);
    assert_eq!(spend_today(&me).await, 0.013);
    let changes = payloads(&db, "CallStatusChanged").await;
    let seen: Vec<(&str, Option<i64>)> =
        changes.iter().map(|p| (p["status"].as_str().unwrap(), p["cost"].as_i64())).collect();
    assert_eq!(seen, [("completed", Some(13_000)), ("canceled", None)]);
    assert!(rejections(&db).await.is_empty());

    // A call Twilio has no price for yet: recorded without a cost, never as a final 0.
    let second = me.ok("comms_make_call", json!({"to": "+12025550188"})).await;
    assert_eq!(second["callSid"], "CAprice2");
    let (code, _) = twilio_post(&s, &path, &[("CallSid", "CAprice2"), ("CallStatus", "completed")], None).await;
    assert_eq!(code, 200);
    let last = payloads(&db, "CallStatusChanged").await.pop().unwrap();
    assert_eq!((last["status"].as_str(), last["cost"].is_null()), (Some("completed"), true), "{last}");
    assert_eq!(spend_today(&me).await, 0.013);

    // It is asked about again from a minute on, its price added once and recorded with it.
    let app = s.server.as_ref().unwrap().state().clone();
    assert_eq!(commguard::webhooks::price_unpriced_calls(&app).await.unwrap(), 0, "not its turn yet");
    set_clock(&s, "2026-12-01T16:01:30Z").await;
    assert_eq!(commguard::webhooks::price_unpriced_calls(&app).await.unwrap(), 1);
    assert_eq!(commguard::webhooks::price_unpriced_calls(&app).await.unwrap(), 0, "once");
    assert_eq!(spend_today(&me).await, 0.033);
    let priced = payloads(&db, "CallStatusChanged").await.pop().unwrap();
    assert_eq!((priced["status"].as_str(), priced["cost"].as_i64()), (Some("completed"), Some(20_000)), "{priced}");
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM unpriced_calls").fetch_one(&pool).await.unwrap();
    assert_eq!(left, 0);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_webhook_ip_allowlist_refuses_in_the_routes_format_and_records_the_refusal() {
    let db = TestDb::new().await;
    // Step 6 comes before the rate limit (7) and the body limit (8), docs/http.md#hardening: a
    // refused IP is answered 403 however often it calls and however large its body.
    let limited = [("WEBHOOK_IP_ALLOWLIST", "10.0.0.0/8"), ("WEBHOOK_RATE_LIMIT_PER_IP", "2")];
    let s = TestServer::start(&db, &vars_with(&limited)).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await;
    let o = org(&s, "allowlist").await;
    let post = |path: String, content_type: &'static str, body: String| {
        s.http.post(s.url(&path)).header("content-type", content_type).body(body).send()
    };
    let form = form_urlencoded::Serializer::new(String::new())
        .extend_pairs(sms("SMip1", "+12025550401", &o.number, "STOP"))
        .finish();
    for route in ["sms", "call-status", "voice/status"] {
        let r = post(format!("/webhooks/{}/{route}", o.agent_id), "application/x-www-form-urlencoded", form.clone())
            .await
            .unwrap();
        assert_eq!(r.status(), 403, "{route}");
        assert_eq!(r.headers()["content-type"], "text/xml; charset=utf-8", "{route}");
        assert_eq!(r.text().await.unwrap(), "<Response/>", "{route}");
    }
    let r = post(format!("/webhooks/{}/email", o.agent_id), "application/json", json!({"type": "x"}).to_string())
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("application/json"));
    let refusal: Value = r.json().await.unwrap();
    assert_eq!((refusal["code"].as_str(), refusal["error"].as_str()), (Some("forbidden"), Some("Forbidden")));
    // An unknown agent: refused the same way (the IP comes first), nothing to record it on.
    let r = post("/webhooks/nobody/sms".into(), "application/x-www-form-urlencoded", form.clone()).await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (403, "<Response/>".to_string()));
    let r = s.http.get(s.url(&format!("/webhooks/{}/sms", o.agent_id))).send().await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (403, "<Response/>".to_string()));
    let oversize = format!("{form}&Padding={}", "x".repeat(2 << 20));
    let r = post(format!("/webhooks/{}/sms", o.agent_id), "application/x-www-form-urlencoded", oversize).await.unwrap();
    assert_eq!((r.status().as_u16(), r.text().await.unwrap()), (403, "<Response/>".to_string()));

    let recorded = rejections(&db).await;
    let ip = |route: &str| (route.to_string(), "ip".to_string());
    assert_eq!(recorded, [ip("sms"), ip("call-status"), ip("call-status"), ip("email"), ip("sms")]);
    let on_agent: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM events WHERE event_type = 'WebhookRejected' AND aggregate_type = 'agent' AND aggregate_id = $1",
    )
    .bind(&o.agent_id)
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(on_agent, 5);
    // Nothing went through: the STOP had no effect.
    assert!(payloads(&db, "StopReceived").await.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_credential_lookup_error_while_verifying_fails_closed() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await;
    let o = org(&s, "broken-creds").await;
    // The org's stored credentials are under a key this server does not have: lookups fail.
    for provider in ["twilio", "resend"] {
        sqlx::query(
            "INSERT INTO provider_credentials (scope, org_id, provider, credential_key, key_version, iv, auth_tag, ciphertext)
             VALUES ('org', $1, $2, 'authToken', 'deadbeef', 'AA==', 'AA==', 'AA==')",
        )
        .bind(&o.org_id)
        .bind(provider)
        .execute(&db.pool().await)
        .await
        .unwrap();
    }
    let path = format!("/webhooks/{}/sms", o.agent_id);
    let (status, body) = twilio_post(&s, &path, &sms("SMcred1", "+12025550501", &o.number, "STOP"), None).await;
    assert_eq!((status, body.as_str()), (403, "<Response/>"));
    let r = s
        .http
        .post(s.url(&format!("/webhooks/{}/email", o.agent_id)))
        .header("content-type", "application/json")
        .body(json!({"type": "email.complained", "data": {"to": ["x@example.com"]}}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(r.json::<Value>().await.unwrap()["code"], "forbidden");
    assert_eq!(
        rejections(&db).await,
        [("sms".to_string(), "signature".to_string()), ("email".to_string(), "signature".to_string())]
    );
    assert!(payloads(&db, "StopReceived").await.is_empty() && payloads(&db, "DncAdded").await.is_empty());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_super_admin_names_the_org_to_change_dnc_and_lists_every_org_without_one() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let a = org(&s, "dnc-scope-a").await;
    let b = org(&s, "dnc-scope-b").await;
    let master = Session::open(&s, MASTER).await;
    let admin = |method: reqwest::Method, path: &str, body: Option<Value>| {
        let r = s.http.request(method, s.url(path)).bearer_auth(MASTER);
        match body {
            Some(body) => r.json(&body).send(),
            None => r.send(),
        }
    };

    // Adding and removing need orgId, through the tool and the admin route alike.
    let (is_error, refusal) = master.call("comms_dnc_add", json!({"address": "+12025550601"})).await;
    assert!(is_error);
    assert_eq!((refusal["code"].as_str(), refusal["field"].as_str()), (Some("invalid_input"), Some("orgId")));
    let r = admin(reqwest::Method::POST, "/admin/api/dnc", Some(json!({"address": "+12025550601"}))).await.unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert_eq!((body["code"].as_str(), body["error"].as_str()), (Some("invalid_input"), refusal["error"].as_str()));
    let r = admin(
        reqwest::Method::POST,
        "/admin/api/dnc/remove",
        Some(json!({"address": "+12025550601", "reason": "no org named"})),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 400);
    assert!(payloads(&db, "DncAdded").await.is_empty(), "nothing was listed in a default org");

    master.ok("comms_dnc_add", json!({"address": "+12025550601", "orgId": a.org_id})).await;
    let r = admin(reqwest::Method::POST, "/admin/api/dnc", Some(json!({"address": "+12025550602", "orgId": b.org_id})))
        .await
        .unwrap();
    assert_eq!(r.status(), 200);

    // Listing without orgId: every org's entries, each naming its org; with orgId: that org's.
    let orgs_of = |listed: &Value| -> Vec<(String, String)> {
        listed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["orgId"].as_str().unwrap().to_string(), e["address"].as_str().unwrap().to_string()))
            .collect()
    };
    let both = vec![(a.org_id.clone(), "+12025550601".to_string()), (b.org_id.clone(), "+12025550602".to_string())];
    assert_eq!(orgs_of(&master.ok("comms_dnc_list", json!({})).await), both);
    let r = admin(reqwest::Method::GET, "/admin/api/dnc", None).await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(orgs_of(&r.json().await.unwrap()), both);
    assert_eq!(orgs_of(&master.ok("comms_dnc_list", json!({"orgId": b.org_id})).await), both[1..]);
    let r = admin(reqwest::Method::GET, &format!("/admin/api/dnc?orgId={}", a.org_id), None).await.unwrap();
    assert_eq!(orgs_of(&r.json().await.unwrap()), both[..1]);
    // An org admin still sees its own org only.
    assert_eq!(orgs_of(&Session::open(&s, &b.admin).await.ok("comms_dnc_list", json!({})).await), both[1..]);

    let removed = master
        .ok("comms_dnc_remove", json!({"address": "+12025550601", "reason": "resolved", "orgId": a.org_id}))
        .await;
    assert_eq!(removed["removed"], 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_are_filtered_on_the_greeting_and_an_ignored_timezone_is_noted_when_refused() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await; // 11:00 in New York
    let o = org(&s, "greeting").await;
    let me = Session::open(&s, &o.agent_token).await;
    me.ok("comms_record_consent", json!({"contactAddress": "+12125550100", "channel": "voice"})).await;

    let (is_error, refusal) =
        me.call("comms_make_call", json!({"to": "+12125550100", "greeting": "I will hurt you"})).await;
    assert!(is_error);
    assert_blocked(&refusal, "content_filter", "Compliance: Message contains threatening content");
    me.ok(
        "comms_make_call",
        json!({"to": "+12125550100", "greeting": "Hello!", "systemPrompt": "Never say 'I will hurt you'."}),
    )
    .await;
    let (is_error, _) =
        me.call("comms_send_voice_message", json!({"to": "+12125550100", "text": "I will hurt you"})).await;
    assert!(is_error, "voice messages are filtered on their text");

    // 03:00 UTC is 22:00 in New York: refused; Los Angeles is not a zone of a 212 number, so the
    // requested zone is ignored, and the refusal's provenance says so.
    set_clock(&s, "2026-12-02T03:00:00Z").await;
    let (is_error, refusal) =
        me.call("comms_make_call", json!({"to": "+12125550100", "recipientTimezone": "America/Los_Angeles"})).await;
    assert!(is_error);
    assert_blocked(
        &refusal,
        "quiet_hours",
        "Compliance: TCPA: Calls not allowed at this time (22:00 in America/New_York). Allowed: 8:00 AM - 9:00 PM.",
    );
    let provenance: Value = sqlx::query_scalar(
        "SELECT metadata::jsonb -> 'provenance' FROM events WHERE event_type = 'CallBlocked' AND payload::jsonb ->> 'refusedBy' = 'quiet_hours'",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(provenance["refusedBy"], "quiet_hours");
    let details: Vec<&str> =
        provenance["checks"].as_array().unwrap().iter().filter_map(|c| c["detail"].as_str()).collect();
    assert!(
        details.iter().any(|d| d.contains("America/Los_Angeles") && d.contains("ignored")),
        "the ignored recipientTimezone is not in the refusal's provenance: {provenance}"
    );
    s.stop().await;
}

/// Development without a Twilio secret accepts a webhook unverified, and its event says so: the
/// provenance's signature check is `skipped`, detail `unverified` (docs/webhooks.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_accepted_without_a_secret_is_marked_unverified() {
    let db = TestDb::new().await;
    let unsigned: Vec<_> = vars().into_iter().filter(|(k, _)| *k != "TWILIO_AUTH_TOKEN").collect();
    let s = TestServer::start(&db, &unsigned).await;
    let a = org(&s, "unverified").await;
    let path = format!("/webhooks/{}/sms", a.agent_id);
    let (status, _) =
        twilio_post(&s, &path, &sms("SMu1", "+12025550166", &a.number, "hello"), Some("anything".into())).await;
    assert_eq!(status, 200);
    let checks: Value = sqlx::query_scalar(
        "SELECT metadata::jsonb -> 'provenance' -> 'checks' FROM events WHERE event_type = 'MessageReceived'",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(checks[1], json!({"check": "signature", "result": "skipped", "detail": "unverified"}), "{checks}");
    s.stop().await;
}

/// A local Twilio that takes messages and counts them: (base URL, messages received).
async fn twilio_counting_messages() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use axum::extract::State;
    use axum::routing::post;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    async fn message(State(n): State<Arc<AtomicUsize>>) -> (axum::http::StatusCode, axum::Json<Value>) {
        let sid = format!("SMcount{}", n.fetch_add(1, Ordering::SeqCst) + 1);
        (axum::http::StatusCode::CREATED, axum::Json(json!({"sid": sid, "status": "queued", "price": null})))
    }
    let received = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new()
        .route("/2010-04-01/Accounts/{sid}/Messages.json", post(message))
        .with_state(received.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (base, received)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_answered_while_a_checked_send_waits_for_its_reservation_keeps_it_from_the_provider() {
    let (fake, received) = twilio_counting_messages().await;
    let fake: &'static str = Box::leak(fake.into_boxed_str());
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars_with(&[("TWILIO_API_BASE_URL", fake)])).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await;
    let o = org(&s, "late-stop").await;
    crate::support::approve_org(&s.http, &s.base, MASTER, &o.org_id).await;
    let me = Session::open(&s, &o.agent_token).await;
    let to = "+12025550166";
    me.ok("comms_record_consent", json!({"contactAddress": to, "channel": "sms"})).await;
    me.ok("comms_send_message", json!({"to": to, "body": "First"})).await;
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The agent's reservations wait behind a lock held here, as behind a busy batch.
    let pool = db.pool().await;
    let mut held = pool.begin().await.unwrap();
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('commguard.limits.agent.' || $1))")
        .bind(&o.agent_id)
        .execute(&mut *held)
        .await
        .unwrap();
    let waiting = {
        let me = Session::open(&s, &o.agent_token).await;
        tokio::spawn(async move { me.call("comms_send_message", json!({"to": to, "body": "Second"})).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let blocked: i64 =
            sqlx::query_scalar("SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted")
                .fetch_one(&pool)
                .await
                .unwrap();
        if blocked > 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the send never reached its reservation");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    // The send passed its checks; now the recipient opts out, and is told so.
    let path = format!("/webhooks/{}/sms", o.agent_id);
    let (status, reply) = twilio_post(&s, &path, &sms("SMlatestop", to, &o.number, "STOP"), None).await;
    assert_eq!(status, 200);
    assert!(reply.contains("unsubscribed"), "{reply}");
    held.rollback().await.unwrap();

    let (is_error, refusal) = waiting.await.unwrap();
    assert!(is_error, "{refusal}");
    assert_eq!((refusal["code"].as_str(), refusal["rule"].as_str()), (Some("compliance_blocked"), Some("dnc")));
    assert_eq!(received.load(std::sync::atomic::Ordering::SeqCst), 1, "nothing reached Twilio after the STOP");
    let blocked = payloads(&db, "MessageBlocked").await.pop().unwrap();
    assert_eq!(blocked["refusedBy"], "dnc", "{blocked}");
    // The refused send gave its reservation back: one action counted today, not two.
    let usage = me.ok("comms_get_usage_dashboard", json!({})).await;
    assert_eq!(usage["currentUsage"]["actionsToday"], 1, "{usage}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_calls_price_counts_on_the_day_it_is_known_for_limits_usage_and_billing_alike() {
    let fake: &'static str = Box::leak(twilio_with_prices().await.into_boxed_str());
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars_with(&[("TWILIO_API_BASE_URL", fake)])).await;
    set_clock(&s, "2026-11-30T21:00:00Z").await;
    let o = org(&s, "midnight").await;
    crate::support::approve_org(&s.http, &s.base, MASTER, &o.org_id).await;
    let me = Session::open(&s, &o.agent_token).await;
    me.ok("comms_record_consent", json!({"contactAddress": "+12025550188", "channel": "voice"})).await;
    // Placed in the last seconds of November (before 21:00 in Washington), priced in December.
    set_clock(&s, "2026-11-30T23:59:50Z").await;
    let call = me.ok("comms_make_call", json!({"to": "+12025550188"})).await;
    assert_eq!(call["callSid"], "CAprice1");
    set_clock(&s, "2026-12-01T00:00:30Z").await;
    let path = format!("/webhooks/{}/call-status", o.agent_id);
    let (code, _) = twilio_post(&s, &path, &[("CallSid", "CAprice1"), ("CallStatus", "completed")], None).await;
    assert_eq!(code, 200);
    // The limits' spend today and this month, and the usage view's (a projection, followed
    // asynchronously), agree.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let dashboard = loop {
        let dashboard = me.ok("comms_get_usage_dashboard", json!({"period": "today"})).await;
        if dashboard["totalCost"].as_f64() != Some(0.0) || std::time::Instant::now() > deadline {
            break dashboard;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(dashboard["currentUsage"]["spendToday"].as_f64(), Some(0.013), "{dashboard}");
    assert_eq!(dashboard["currentUsage"]["spendMonth"].as_f64(), Some(0.013), "{dashboard}");
    assert_eq!(dashboard["totalCost"].as_f64(), Some(0.013), "{dashboard}");
    s.stop().await;
}

//! Outbound messages through the whole pipeline (mock provider): limits exact under concurrency
//! on one instance and split over two, failed provider calls consume nothing, spend caps, and
//! every outcome is an event with the checks that ran.

use serde_json::{json, Value};

use crate::support::{last_refusal_provenance, listed_checks, McpSession as Session, TestDb, TestServer};

const MASTER: &str = "outbound-test-master-token-0123456789abcdef";

fn vars(extra: &[(&'static str, &'static str)]) -> Vec<(&'static str, &'static str)> {
    let mut v = vec![
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ("COMMGUARD_TEST_CLOCK", "true"),
    ];
    v.extend_from_slice(extra);
    v
}

/// `vars` with `max` actions a minute by default, and room for 1,000 an hour and a day.
fn per_minute(max: &'static str) -> Vec<(&'static str, &'static str)> {
    vars(&[
        ("DEFAULT_MAX_ACTIONS_PER_MINUTE", max),
        ("DEFAULT_MAX_ACTIONS_PER_HOUR", "1000"),
        ("DEFAULT_MAX_ACTIONS_PER_DAY", "1000"),
    ])
}

/// Sets `s`'s service clock to 11:00 in Washington (each instance has its own test clock).
async fn set_clock(s: &TestServer) {
    let clock = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER);
    assert!(clock.json(&json!({"now": "2026-12-01T16:00:00Z"})).send().await.unwrap().status().is_success());
}

/// The recipients these tests send to; each has consent for its channels (docs/compliance.md#consent).
const PHONES: [&str; 7] =
    ["+15005550001", "+12025550100", "+12025550111", "+12025550122", "+12025550133", "+12025550144", "+12025550155"];
const EMAILS: [&str; 2] = ["a@example.com", "bob@example.com"];

/// A sandbox org with one SMS- and email-capable agent whose recipients consented, at 11:00 in
/// Washington (inside calling hours); returns the agent's token and id.
async fn agent(s: &TestServer, slug: &str) -> (String, String) {
    set_clock(s).await;
    let master = Session::open(s, MASTER).await;
    let org = master.ok("comms_create_organization", json!({"name": slug, "slug": slug, "a2pRegistered": true})).await;
    let admin = Session::open(s, org["adminToken"].as_str().unwrap()).await;
    let agent = admin
        .ok(
            "comms_provision_channels",
            json!({"displayName": "Sender", "capabilities": {"phone": true, "email": true}}),
        )
        .await;
    let token = agent["securityToken"].as_str().unwrap().to_string();
    let me = Session::open(s, &token).await;
    let phones = PHONES.iter().flat_map(|p| [(*p, "sms"), (*p, "voice")]);
    for (to, channel) in phones.chain(EMAILS.iter().map(|e| (*e, "email"))) {
        me.ok("comms_record_consent", json!({"contactAddress": to, "channel": channel})).await;
    }
    (token, agent["agentId"].as_str().unwrap().to_string())
}

async fn count(db: &TestDb, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(&db.pool().await)
        .await
        .unwrap()
}

/// Sends `n` SMS at once, spread over `servers`, each from its own session; returns the outcomes.
async fn burst(servers: &[&TestServer], token: &str, n: usize) -> Vec<(bool, Value)> {
    let mut sessions = Vec::new();
    for i in 0..n {
        sessions.push(Session::open(servers[i % servers.len()], token).await);
    }
    let sends = sessions
        .iter()
        .map(|s| s.call("comms_send_message", json!({"to": "+12025550100", "body": "Your table is ready."})));
    futures::future::join_all(sends).await
}

fn assert_exactly(outcomes: &[(bool, Value)], admitted: usize) {
    let sent = outcomes.iter().filter(|(e, _)| !e).count();
    assert_eq!(sent, admitted, "exactly the limit gets through");
    for (_, refusal) in outcomes.iter().filter(|(e, _)| *e) {
        assert_eq!(refusal["code"], "rate_limited", "{refusal}");
        assert_eq!(refusal["limitType"], "per-minute");
        assert_eq!(refusal["max"], admitted as i64);
        assert_eq!(
            refusal["error"],
            format!("Rate limit exceeded: per-minute ({admitted}/{admitted}). Resets in up to 60 seconds.")
        );
        assert!(refusal["resetAt"].as_str().is_some());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_sends_against_a_limit_of_fifty_let_exactly_fifty_through() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &per_minute("50")).await;
    let (token, _) = agent(&s, "burst-one").await;
    let outcomes = burst(&[&s], &token, 200).await;
    assert_exactly(&outcomes, 50);
    assert_eq!((count(&db, "MessageSent").await, count(&db, "MessageBlocked").await), (50, 150));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_limit_is_exact_when_two_instances_share_the_burst() {
    let db = TestDb::new().await;
    let v = per_minute("50");
    let a = TestServer::start(&db, &v).await;
    let b = TestServer::start(&db, &v).await;
    let (token, _) = agent(&a, "burst-two").await;
    set_clock(&b).await;
    let outcomes = burst(&[&a, &b], &token, 200).await;
    assert_exactly(&outcomes, 50);
    b.stop().await;
    a.stop().await;
}

/// A sandbox send is reserved and recorded by one statement shared with other agents' sends
/// (migration 0037). When some of a statement's reservations are refused nothing of it is stored;
/// the refused sends are recorded as blocked and the others are stored on the next try. So two
/// agents at their limit cost the two unlimited agents beside them no send, and every agent's
/// counters equal its recorded sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_in_a_shared_statement_cost_the_other_agents_nothing() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &per_minute("1000")).await;
    let master = Session::open(&s, MASTER).await;
    let mut agents = Vec::new();
    for (slug, per_minute) in [("shared-a", Some(10)), ("shared-b", Some(10)), ("shared-c", None), ("shared-d", None)] {
        let (token, agent_id) = agent(&s, slug).await;
        if let Some(max) = per_minute {
            let limits = json!({"agentId": agent_id, "limits": {"maxActionsPerMinute": max}});
            master.ok("comms_set_agent_limits", limits).await;
        }
        agents.push((token, agent_id, per_minute.unwrap_or(SENDS)));
    }
    const SENDS: i64 = 30;
    let mut sessions = Vec::new();
    for _ in 0..SENDS {
        for (i, (token, ..)) in agents.iter().enumerate() {
            sessions.push((i, Session::open(&s, token).await));
        }
    }
    let sends = sessions.iter().map(|(i, session)| async move {
        (*i, session.call("comms_send_message", json!({"to": "+12025550100", "body": "Your table is ready."})).await)
    });
    let outcomes = futures::future::join_all(sends).await;
    let pool = db.pool().await;
    for (i, (_, agent_id, admitted)) in agents.iter().enumerate() {
        let mine: Vec<&Value> = outcomes.iter().filter(|(j, _)| *j == i).map(|(_, (_, reply))| reply).collect();
        let sent = outcomes.iter().filter(|(j, (error, _))| *j == i && !error).count() as i64;
        assert_eq!(sent, *admitted, "agent {i}: {mine:?}");
        for (_, (_, refusal)) in outcomes.iter().filter(|(j, (error, _))| *j == i && *error) {
            assert_eq!(
                (refusal["code"].as_str(), refusal["limitType"].as_str()),
                (Some("rate_limited"), Some("per-minute"))
            );
        }
        let recorded: (i64, i64) = sqlx::query_as(
            "SELECT COUNT(*) FILTER (WHERE event_type = 'MessageSent'), COUNT(*) FILTER (WHERE event_type = 'MessageBlocked')
               FROM events WHERE aggregate_type = 'agent' AND aggregate_id = $1",
        )
        .bind(agent_id)
        .fetch_one(&pool)
        .await
        .unwrap();
        assert_eq!(recorded, (*admitted, SENDS - admitted), "agent {i}'s sends and refusals are recorded");
        assert_eq!(crate::support::counted_today(&pool, agent_id).await, *admitted, "agent {i}'s counters");
    }
    assert_eq!(crate::support::open_intents(&pool).await, 0, "a sandbox send stores no intent");
    s.stop().await;
}

/// A send refused before its agent's state is known (docs/tools.md#the-outbound-pipeline, checks
/// 1–4) is an `ActionRefused` whose provenance lists every check that ran, in order: the ones
/// passed, then the one that refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_refused_before_the_agents_state_lists_the_checks_it_passed() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars(&[])).await;
    let (token, _) = agent(&s, "early-refusals").await;
    let (_, other_id) = agent(&s, "early-others").await;
    let master = Session::open(&s, MASTER).await;
    let me = Session::open(&s, &token).await;
    let sms = |extra: Value| {
        let mut args = json!({"to": "+12025550111", "body": "Your table is ready."});
        args.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        args
    };
    // (who, arguments, code, the checks in order as (check, result))
    type Case<'a> = (&'a Session, Value, &'static str, &'static [(&'static str, &'static str)]);
    let cases: [Case; 4] = [
        (&master, sms(json!({})), "invalid_input", &[("agent_resolve", "fail")]),
        (&me, sms(json!({"agentId": other_id})), "forbidden", &[("agent_resolve", "pass"), ("role", "fail")]),
        (
            &me,
            sms(json!({"to": "not a number"})),
            "invalid_input",
            &[("agent_resolve", "pass"), ("role", "pass"), ("input", "fail")],
        ),
        (
            &master,
            sms(json!({"agentId": "no-such-agent"})),
            "not_found",
            &[("agent_resolve", "pass"), ("role", "pass"), ("input", "pass"), ("org_boundary", "fail")],
        ),
    ];
    let pool = db.pool().await;
    for (i, (session, args, code, checks)) in cases.iter().enumerate() {
        let (is_error, refusal) = session.call("comms_send_message", args.clone()).await;
        assert!(is_error && refusal["code"] == *code, "case {i}: {refusal}");
        let provenance = last_refusal_provenance(&pool).await;
        let listed = listed_checks(&provenance);
        assert_eq!(listed, *checks, "case {i}: {provenance}");
        assert_eq!(provenance["refusedBy"], checks.last().unwrap().0, "case {i}");
    }
    // Another tool: its role was checked first.
    let limits = json!({"agentId": other_id, "limits": {"maxActionsPerMinute": 0}});
    let (is_error, refusal) = master.call("comms_set_agent_limits", limits).await;
    assert!(is_error && refusal["code"] == "invalid_input", "{refusal}");
    let provenance = last_refusal_provenance(&pool).await;
    assert_eq!(
        (listed_checks(&provenance), provenance["refusedBy"].as_str()),
        (vec![("role", "pass"), ("input", "fail")], Some("input")),
        "{provenance}"
    );
    s.stop().await;
}

/// Sends that arrive together read their agents and recipients in one statement
/// (`ledger::reads`): each gets its own agent's and its own recipient's state. Two agents of two
/// orgs send at once to a consented recipient, one without consent and one on the first agent's
/// org's DNC list: every outcome is the one its own agent and recipient give.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_read_together_each_get_their_own_agent_and_recipient() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &per_minute("1000")).await;
    let (first, _) = agent(&s, "reads-one").await;
    let (second, _) = agent(&s, "reads-two").await;
    Session::open(&s, &first).await.ok("comms_dnc_add", json!({"address": "+12025550122"})).await;
    // (recipient, the first agent's outcome, the second agent's outcome)
    let cases = [
        ("+12025550111", None, None),
        ("+12025550199", Some("consent_required"), Some("consent_required")),
        ("+12025550122", Some("dnc"), None),
    ];
    let mut sessions = Vec::new();
    for _ in 0..6 {
        for (case, _) in cases.iter().enumerate() {
            for (which, token) in [&first, &second].into_iter().enumerate() {
                sessions.push((case, which, Session::open(&s, token).await));
            }
        }
    }
    let sends = sessions.iter().map(|(case, which, session)| async move {
        let sent = session.call("comms_send_message", json!({"to": cases[*case].0, "body": "Your table is ready."}));
        (*case, *which, sent.await)
    });
    for (case, which, (is_error, reply)) in futures::future::join_all(sends).await {
        let (to, first_rule, second_rule) = cases[case];
        let expected = if which == 0 { first_rule } else { second_rule };
        match expected {
            None => assert!(!is_error, "agent {which} to {to}: {reply}"),
            Some(rule) => {
                assert!(is_error, "agent {which} to {to}: {reply}");
                assert_eq!((reply["code"].as_str(), reply["rule"].as_str()), (Some("compliance_blocked"), Some(rule)));
            }
        }
    }
    s.stop().await;
}

/// A sandbox send is reserved and recorded together and stores no intent (migration 0037): once
/// the reply is in, none is left — after one send, and after a burst spread over two instances
/// whose appends are grouped (a real provider's send ends its intent with its event, migration
/// 0028: `durability::postgres_stopped_between_the_provider_call_and_the_record_loses_no_send`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sent_message_leaves_no_intent_once_answered() {
    let db = TestDb::new().await;
    let v = per_minute("1000");
    let a = TestServer::start(&db, &v).await;
    let b = TestServer::start(&db, &v).await;
    let (token, _) = agent(&a, "settled").await;
    set_clock(&b).await;
    let pool = db.pool().await;
    let me = Session::open(&a, &token).await;
    for n in 1..=3 {
        let sent = me.ok("comms_send_message", json!({"to": "+12025550100", "body": "Your table is ready."})).await;
        assert_eq!(sent["status"], "sent", "{sent}");
        assert_eq!(crate::support::open_intents(&pool).await, 0, "the intent of send {n} ended with its event");
        assert_eq!(count(&db, "MessageSent").await, n);
    }
    let outcomes = burst(&[&a, &b], &token, 20).await;
    assert!(outcomes.iter().all(|(error, _)| !error), "{outcomes:?}");
    assert_eq!(crate::support::open_intents(&pool).await, 0, "every intent of the burst ended with its event");
    assert_eq!(count(&db, "MessageSent").await, 23);
    b.stop().await;
    a.stop().await;
}

/// The context of an event recorded by the tests below themselves.
fn system_context() -> commguard::store::CommandContext {
    use commguard::store::{Actor, CommandContext};
    CommandContext::new(Actor::system("test"), "test", chrono::Utc::now())
}

/// A provider failure of SMS `id`.
fn failed_sms(id: uuid::Uuid) -> commguard_domain::agent::AgentEvent {
    commguard_domain::agent::AgentEvent::MessageFailed {
        message_id: id,
        channel: "sms".into(),
        to: commguard_domain::pii::Pii::subject("+12025550100".to_string()),
        provider: "mock".into(),
        error: "test".into(),
    }
}

/// The owner's append of an action whose intent is gone — settled meanwhile by a reconciler that
/// took the owner for dead and recorded the intent's own event — fails and records nothing
/// (migration 0028), so no action is recorded twice; with its intent there, the event is stored
/// and the intent ends in the same transaction.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_settling_an_intent_already_settled_records_nothing() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars(&[])).await;
    let (_, agent_id) = agent(&s, "settled-elsewhere").await;
    let pool = db.pool().await;
    let context = system_context();
    let gone = uuid::Uuid::new_v4();
    let refused = s.rt.store.record_settling("agent", &agent_id, &[failed_sms(gone)], &context, Some(gone)).await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(count(&db, "MessageFailed").await, 0, "nothing recorded for a settled intent");

    let open = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO outbound_intents (id, agent_id, org_id, owner, at, cost, intent)
         VALUES ($1, $2, 'org', $3, now(), 0, '{}')",
    )
    .bind(open)
    .bind(&agent_id)
    .bind(uuid::Uuid::new_v4())
    .execute(&pool)
    .await
    .unwrap();
    s.rt.store.record_settling("agent", &agent_id, &[failed_sms(open)], &context, Some(open)).await.unwrap();
    assert_eq!(count(&db, "MessageFailed").await, 1);
    assert_eq!(crate::support::open_intents(&pool).await, 0, "the intent ended with its event");
    s.stop().await;
}

/// A send refused at the recheck before the provider call is recorded `MessageBlocked`, then its
/// intent released. If its owner dies between the two, the reconciler finds the blocked outcome
/// and only releases the reservation: it records no sent-unconfirmed fallback for an action that
/// never reached the provider (nor a second outcome).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_send_whose_owner_died_before_releasing_is_released_not_recorded_again() {
    use commguard_domain::agent::AgentEvent;
    use commguard_domain::pii::Pii;
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars(&[("OUTBOUND_INTENT_LEASE_SECONDS", "1")])).await;
    let (_, agent_id) = agent(&s, "blocked-then-died").await;
    let pool = db.pool().await;
    let context = system_context();
    let id = uuid::Uuid::new_v4();
    let blocked = AgentEvent::MessageBlocked {
        message_id: id,
        channel: "sms".into(),
        purpose: "transactional".into(),
        to: Pii::subject("+12025550100".to_string()),
        body: Pii::subject("+12025550100".to_string()),
        refused_by: "dnc".into(),
        code: "compliance_blocked".into(),
        rule: Some("dnc".into()),
        limit_type: None,
        reason: "checked again before the provider call".into(),
    };
    s.rt.store.record("agent", &agent_id, &[blocked], &context).await.unwrap();
    // Its intent, left by an owner that is gone (no heartbeat) before it released it.
    sqlx::query(
        "INSERT INTO outbound_intents (id, agent_id, org_id, owner, at, cost, intent, created_at)
         VALUES ($1, $2, 'org', $3, now(), 0, '{}', now() - interval '1 minute')",
    )
    .bind(id)
    .bind(&agent_id)
    .bind(uuid::Uuid::new_v4())
    .execute(&pool)
    .await
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while crate::support::open_intents(&pool).await > 0 {
        assert!(std::time::Instant::now() < deadline, "the blocked send's intent was never released");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(count(&db, "MessageSent").await, 0, "no fallback recorded for a blocked send");
    assert_eq!(count(&db, "MessageBlocked").await, 1, "its outcome recorded once");
    s.stop().await;
}

/// An owner taken for dead whose intent a reconciler has settled (recording its fallback) records
/// no second outcome when it comes back with a failure: every ending other than a send at its
/// estimate is recorded under the intent's row lock, which finds the intent gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_owner_whose_intent_was_settled_elsewhere_records_no_failure() {
    use commguard::ledger::intents::Ending;
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars(&[])).await;
    let (_, agent_id) = agent(&s, "owner-came-back").await;
    let settled_elsewhere = uuid::Uuid::new_v4();
    let intents = s.server.as_ref().unwrap().state().intents.clone();
    let failed = failed_sms(settled_elsewhere);
    let outcome = intents.complete(&agent_id, settled_elsewhere, failed, &system_context(), Ending::Failed).await;
    assert!(outcome.is_ok());
    assert_eq!(count(&db, "MessageFailed").await, 0, "a second outcome was recorded for a settled intent");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_provider_call_consumes_no_quota_and_spend_caps_refuse() {
    let db = TestDb::new().await;
    // A cap refuses when the spend *before* the action has reached it (docs/limits.md#tool-limits): 0, 0.0079 and
    // 0.0158 are below 0.02, so three SMS pass; at 0.0237 the fourth is refused.
    let s = TestServer::start(&db, &vars(&[("DEFAULT_MAX_SPEND_PER_DAY", "0.02")])).await;
    let (token, agent_id) = agent(&s, "spender").await;
    let me = Session::open(&s, &token).await;

    let (is_error, failed) = me.call("comms_send_message", json!({"to": "+15005550001", "body": "hello"})).await;
    assert!(is_error);
    assert_eq!((failed["code"].as_str(), failed["provider"].as_str()), (Some("provider_error"), Some("mock")));
    for _ in 0..3 {
        let sent = me.ok("comms_send_message", json!({"to": "+12025550100", "body": "hello"})).await;
        assert_eq!(
            (sent["status"].as_str(), sent["cost"].as_f64(), sent["sandbox"].as_bool()),
            (Some("sent"), Some(0.0079), Some(true))
        );
        assert!(sent["externalId"].as_str().unwrap().starts_with("SM"));
    }
    let (is_error, refused) = me.call("comms_send_message", json!({"to": "+12025550100", "body": "hello"})).await;
    assert!(is_error);
    assert_eq!(refused["limitType"], "daily-spend", "{refused}");
    assert_eq!(refused["error"], "Rate limit exceeded: daily-spend (0.0237/0.02). Resets at midnight UTC.");

    // Email: a subject is required, and CAN-SPAM warns without an unsubscribe link.
    let (is_error, missing) =
        me.call("comms_send_message", json!({"channel": "email", "to": "a@example.com", "body": "hi"})).await;
    assert!(is_error);
    assert_eq!(missing["error"], "Subject is required for email channel");

    let pool = db.pool().await;
    let (failed, blocked): (i64, i64) = sqlx::query_as(
        "SELECT COUNT(*) FILTER (WHERE event_type = 'MessageFailed'), COUNT(*) FILTER (WHERE event_type = 'MessageBlocked') FROM events WHERE aggregate_id = $1",
    )
    .bind(&agent_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((failed, blocked), (1, 1));
    let provenance: Value = sqlx::query_scalar(
        "SELECT metadata::jsonb -> 'provenance' FROM events WHERE event_type = 'MessageSent' AND aggregate_id = $1 LIMIT 1",
    )
    .bind(&agent_id)
    .fetch_one(&pool)
    .await
    .unwrap();
    let checks: Vec<(&str, &str)> = provenance["checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["check"].as_str().unwrap(), c["result"].as_str().unwrap()))
        .collect();
    assert_eq!(
        checks,
        [
            ("agent_resolve", "pass"),
            ("role", "pass"),
            ("input", "pass"),
            ("org_boundary", "pass"),
            ("agent_state", "pass"),
            ("org_state", "pass"),
            ("content_filter", "pass"),
            ("dnc", "pass"),
            ("consent", "pass"),
            ("limits", "pass"),
            ("provider", "pass"),
        ]
    );
    // The recipient and the body are sealed in the stored event.
    let sent: Value = sqlx::query_scalar("SELECT payload::jsonb FROM events WHERE event_type = 'MessageSent' LIMIT 1")
        .fetch_one(&pool)
        .await
        .unwrap();
    assert!(sent["to"]["$pii"].is_number() && sent["body"]["$pii"].is_number(), "{sent}");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overrides_and_tiers_set_the_limits_in_force() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars(&[])).await;
    let (token, agent_id) = agent(&s, "tiers").await;
    let master = Session::open(&s, MASTER).await;
    let me = Session::open(&s, &token).await;
    let send = || me.call("comms_send_message", json!({"to": "+12025550111", "body": "hi"}));

    let (is_error, refusal) =
        me.call("comms_set_agent_limits", json!({"agentId": agent_id, "limits": {"maxActionsPerMinute": 3}})).await;
    assert!(is_error);
    assert_eq!(refusal["error"], "Admin access required. Agent tokens cannot perform this action.");
    let (is_error, refusal) =
        master.call("comms_set_agent_limits", json!({"agentId": agent_id, "limits": {"maxActionsPerMinute": 0}})).await;
    assert!(is_error);
    assert_eq!(refusal["code"], "invalid_input");

    let set =
        master.ok("comms_set_agent_limits", json!({"agentId": agent_id, "limits": {"maxActionsPerMinute": 3}})).await;
    assert_eq!(
        (set["currentLimits"]["maxActionsPerMinute"].as_i64(), set["tier"].as_str()),
        (Some(3), Some("starter"))
    );
    assert_eq!(set["overrides"]["maxActionsPerHour"], Value::Null);
    for _ in 0..3 {
        assert!(!send().await.0);
    }
    let (is_error, refusal) = send().await;
    assert!(is_error);
    assert_eq!(refusal["error"], "Rate limit exceeded: per-minute (3/3). Resets in up to 60 seconds.");

    // Clearing the override returns to the tier; the free tier allows 5 a minute.
    master.ok("comms_set_agent_limits", json!({"agentId": agent_id, "limits": {"maxActionsPerMinute": null}})).await;
    let billing =
        master.ok("comms_set_billing_config", json!({"agentId": agent_id, "tier": "free", "markupPercent": 0})).await;
    assert_eq!(billing["effectiveLimits"]["maxActionsPerMinute"], 5);
    assert_eq!(billing["billingConfig"]["markupPercent"], 0.0);
    assert_eq!(billing["availableTiers"], json!(["free", "starter", "pro", "enterprise"]));
    for _ in 0..2 {
        assert!(!send().await.0);
    }
    let (is_error, refusal) = send().await;
    assert!(is_error);
    assert_eq!(refusal["error"], "Rate limit exceeded: per-minute (5/5). Resets in up to 60 seconds.");
    assert_eq!(count(&db, "LimitsChanged").await, 2);
    assert_eq!(count(&db, "BillingConfigChanged").await, 1);
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_and_billing_follow_the_sends() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars(&[])).await;
    let (token, agent_id) = agent(&s, "usage").await;
    let me = Session::open(&s, &token).await;
    let master = Session::open(&s, MASTER).await;
    for _ in 0..2 {
        me.ok("comms_send_message", json!({"to": "+12025550122", "body": "hi"})).await;
    }
    let email = me
        .ok(
            "comms_send_message",
            json!({"channel": "email", "to": "Bob@Example.com", "subject": "Hi", "body": "Hello"}),
        )
        .await;
    assert_eq!(email["to"], "bob@example.com");
    assert_eq!(email["warnings"][0]["code"], "can_spam_unsubscribe_missing");
    // WhatsApp is refused at step 3 (input), and recorded so: no provider was asked.
    let (is_error, refusal) =
        me.call("comms_send_message", json!({"channel": "whatsapp", "to": "+12025550100", "body": "hi"})).await;
    assert_eq!((is_error, refusal["code"].as_str()), (true, Some("unavailable")));
    let refused_by: String = sqlx::query_scalar(
        "SELECT payload::jsonb ->> 'refusedBy' FROM events WHERE event_type = 'ActionRefused' AND payload::jsonb ->> 'code' = 'unavailable'",
    )
    .fetch_one(&db.pool().await)
    .await
    .unwrap();
    assert_eq!(refused_by, "input");

    // The usage projection follows the events; current usage is the live counters.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let dashboard = loop {
        let d = me.ok("comms_get_usage_dashboard", json!({})).await;
        if d["totalActions"] == 3 {
            break d;
        }
        assert!(std::time::Instant::now() < deadline, "usage never reached 3 actions: {d}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert_eq!(dashboard["agentId"], agent_id.as_str());
    assert_eq!((dashboard["actions"]["sms"].as_i64(), dashboard["actions"]["email"].as_i64()), (Some(2), Some(1)));
    assert_eq!(dashboard["costsByChannel"]["sms"].as_f64(), Some(0.0158));
    assert_eq!(dashboard["totalCost"].as_f64(), Some(0.0168));
    assert_eq!(dashboard["currentUsage"]["actionsToday"], 3);
    assert_eq!(dashboard["currentUsage"]["spendToday"].as_f64(), Some(0.0168));

    // The billing address: set, kept by a change that leaves it out (as the tier and markup are),
    // shown by the summary, and cleared by `null`.
    let set = master.ok("comms_set_billing_config", json!({"agentId": agent_id, "billingEmail": "Bills@Example.com"}));
    assert_eq!(set.await["billingConfig"]["billingEmail"], "bills@example.com");
    let kept = master.ok("comms_set_billing_config", json!({"agentId": agent_id, "markupPercent": 10})).await;
    assert_eq!(
        kept["billingConfig"],
        json!({"tier": "starter", "markupPercent": 10.0, "billingEmail": "bills@example.com"})
    );
    let bill = me.ok("comms_get_billing_summary", json!({})).await;
    assert_eq!((bill["providerCost"].as_f64(), bill["billingCost"].as_f64()), (Some(0.0168), Some(0.0185)));
    assert_eq!(bill["billingConfig"]["billingEmail"], "bills@example.com");
    let cleared = master.ok("comms_set_billing_config", json!({"agentId": agent_id, "billingEmail": null})).await;
    assert_eq!(cleared["billingConfig"]["billingEmail"], Value::Null);
    let bill = me.ok("comms_get_billing_summary", json!({})).await;
    assert_eq!((&bill["billingConfig"]["billingEmail"], bill["markupPercent"].as_f64()), (&Value::Null, Some(10.0)));
    let all = master.ok("comms_get_billing_summary", json!({})).await;
    assert_eq!(all["totals"]["revenue"].as_f64(), Some(0.0017));
    let org = master.ok("comms_get_usage_dashboard", json!({"period": "month"})).await;
    assert_eq!(org["globalTotals"]["totalActions"], 3);
    // A session's claim is the tools' default agent: the master claiming this agent sees its views.
    let claiming = Session::open_claiming(&s, MASTER, &agent_id).await;
    let claimed = claiming.ok("comms_get_usage_dashboard", json!({"period": "month"})).await;
    assert_eq!((claimed["agentId"].as_str(), claimed["totalActions"].as_i64()), (Some(agent_id.as_str()), Some(3)));
    let bill = claiming.ok("comms_get_billing_summary", json!({})).await;
    assert_eq!(bill["agentId"], agent_id.as_str());
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn calls_and_voice_messages_go_through_the_pipeline_with_contact_frequency() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars(&[])).await;
    let (token, agent_id) = agent(&s, "voice").await;
    let me = Session::open(&s, &token).await;

    let call = me.ok("comms_make_call", json!({"to": "+1 (202) 555-0133", "greeting": "Hi <there> & welcome"})).await;
    assert_eq!(
        (call["status"].as_str(), call["recorded"].as_bool(), call["sandbox"].as_bool()),
        (Some("queued"), Some(false), Some(true))
    );
    assert!(call["callSid"].as_str().unwrap().starts_with("CA"));
    assert_eq!(call["sessionId"], call["callId"]);
    assert_eq!(call["to"], "+12025550133");
    let message =
        me.ok("comms_send_voice_message", json!({"to": "+12025550133", "text": "Your appointment is at 3pm."})).await;
    assert_eq!(message["characters"], 27);

    // Two voice actions to one number a day (DEFAULT_MAX_CALLS_PER_DAY_SAME_NUMBER); others still go.
    let (is_error, refusal) = me.call("comms_make_call", json!({"to": "+12025550133"})).await;
    assert!(is_error);
    assert_eq!(refusal["limitType"], "contact-frequency");
    assert_eq!(refusal["error"], "Rate limit exceeded: contact-frequency (2/2). Resets at midnight UTC.");
    me.ok("comms_make_call", json!({"to": "+12025550144"})).await;
    let (is_error, refusal) = me.call("comms_send_voice_message", json!({"to": "+12025550155", "text": ""})).await;
    assert!(is_error);
    assert_eq!(refusal["code"], "invalid_input");

    let blocked: Value = sqlx::query_scalar("SELECT payload::jsonb FROM events WHERE event_type = 'CallBlocked'")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(
        (blocked["refusedBy"].as_str(), blocked["limitType"].as_str()),
        (Some("limits"), Some("contact-frequency"))
    );
    assert!(blocked["to"]["$pii"].is_number());
    // A call the provider fails is recorded with the code and text its caller was answered
    // (CONTRACT §11.3: CallBlocked / CallFailed carry code and reason). At 13:00 in Adak and 09:00
    // in Guam, both candidate zones of +1 500 numbers (the same UTC day).
    let clock = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER);
    assert!(clock.json(&json!({"now": "2026-12-01T23:00:00Z"})).send().await.unwrap().status().is_success());
    let (is_error, failure) = me.call("comms_make_call", json!({"to": "+15005550001"})).await;
    assert!(is_error);
    assert_eq!(failure["code"], "provider_error", "{failure}");
    let failed: Value = sqlx::query_scalar("SELECT payload::jsonb FROM events WHERE event_type = 'CallFailed'")
        .fetch_one(&db.pool().await)
        .await
        .unwrap();
    assert_eq!(
        (failed["code"].as_str(), failed["provider"].as_str()),
        (Some("provider_error"), Some("mock")),
        "{failed}"
    );
    assert!(!failed["reason"].as_str().unwrap().is_empty(), "{failed}");
    assert_eq!(failed["reason"], failed["error"]);
    assert!(failed["to"]["$pii"].is_number());

    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let d = me.ok("comms_get_usage_dashboard", json!({"agentId": agent_id})).await;
        if d["totalActions"] == 3 {
            assert_eq!(
                (d["actions"]["voice_call"].as_i64(), d["actions"]["voice_message"].as_i64()),
                (Some(2), Some(1))
            );
            break;
        }
        assert!(std::time::Instant::now() < deadline, "usage never showed the calls: {d}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    s.stop().await;
}

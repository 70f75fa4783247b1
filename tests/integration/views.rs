//! The admin views (docs/admin-api.md) over real HTTP: consent and limits as they stood at `as_of`
//! between changes made at set instants of the test clock, cursor paging of every list, usage per
//! period and from/to, the org's real spend in the settings reply, and org scoping (Z2, Z5).

use std::collections::HashSet;

use serde_json::{json, Value};

use crate::support::{McpSession as Session, TestDb, TestServer};

const MASTER: &str = "views-test-master-token-0123456789abcdef";

fn vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "1000000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "1000000"),
        ("COMMGUARD_TEST_CLOCK", "true"),
    ]
}

async fn set_clock(s: &TestServer, now: &str) {
    let r = s.http.post(s.url("/admin/api/test/clock")).bearer_auth(MASTER).json(&json!({"now": now})).send().await;
    assert_eq!(r.unwrap().status(), 200);
}

/// `GET path` with `token`: (status, JSON body).
async fn get(s: &TestServer, token: &str, path: &str) -> (u16, Value) {
    let r = s.http.get(s.url(path)).bearer_auth(token).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

async fn get_ok(s: &TestServer, token: &str, path: &str) -> Value {
    let (status, body) = get(s, token, path).await;
    assert_eq!(status, 200, "{path}: {body}");
    body
}

async fn post(s: &TestServer, token: &str, path: &str, body: Value) -> (u16, Value) {
    let r = s.http.post(s.url(path)).bearer_auth(token).json(&body).send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

struct Org {
    id: String,
    admin: String,
}

async fn create_org(s: &TestServer, slug: &str) -> Org {
    let master = Session::open(s, MASTER).await;
    let org = master.ok("comms_create_organization", json!({"name": slug, "slug": slug, "a2pRegistered": true})).await;
    Org { id: org["orgId"].as_str().unwrap().into(), admin: org["adminToken"].as_str().unwrap().into() }
}

/// Provisions an SMS- and email-capable agent in `org`: (agent id, agent token).
async fn provision(s: &TestServer, org: &Org, name: &str) -> (String, String) {
    let admin = Session::open(s, &org.admin).await;
    let agent = admin
        .ok("comms_provision_channels", json!({"displayName": name, "capabilities": {"phone": true, "email": true}}))
        .await;
    (agent["agentId"].as_str().unwrap().into(), agent["securityToken"].as_str().unwrap().into())
}

fn limits(per_minute: i64, per_hour: i64, per_day: i64, spend_day: f64, spend_month: f64) -> Value {
    json!({"maxActionsPerMinute": per_minute, "maxActionsPerHour": per_hour, "maxActionsPerDay": per_day,
           "maxSpendPerDay": spend_day, "maxSpendPerMonth": spend_month})
}

fn no_overrides() -> Value {
    json!({"maxActionsPerMinute": null, "maxActionsPerHour": null, "maxActionsPerDay": null,
           "maxSpendPerDay": null, "maxSpendPerMonth": null})
}

/// The records of `/consent` with their times cut to the second (changes happen a few ms after
/// the instant the clock was set to).
fn records(view: &Value) -> Vec<Value> {
    let cut = |v: &Value| v.as_str().map_or(Value::Null, |t| json!(&t[..19]));
    view["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            json!({"agentId": r["agentId"], "channel": r["channel"], "status": r["status"], "consentType": r["consentType"],
                   "grantedAt": cut(&r["grantedAt"]), "revokedAt": cut(&r["revokedAt"]), "source": r["source"]})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consent_and_limits_as_of_instants_between_their_changes() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T09:00:00Z").await;
    let org = create_org(&s, "as-of").await;
    let (agent, _) = provision(&s, &org, "Clinic").await;
    let master = Session::open(&s, MASTER).await;
    let admin = Session::open(&s, &org.admin).await;
    let contact = "+12025550100";
    let consent = |source: &str, kind: &str| json!({"agentId": agent, "contactAddress": contact, "channel": "sms", "consentType": kind, "source": source});

    set_clock(&s, "2026-12-01T09:10:00Z").await;
    admin.ok("comms_record_consent", consent("web-form", "express")).await;
    set_clock(&s, "2026-12-01T10:05:00Z").await;
    master.ok("comms_set_agent_limits", json!({"agentId": agent, "limits": {"maxActionsPerMinute": 7}})).await;
    set_clock(&s, "2026-12-01T11:05:00Z").await;
    master.ok("comms_set_billing_config", json!({"agentId": agent, "tier": "pro", "markupPercent": 12.5})).await;
    set_clock(&s, "2026-12-01T11:10:00Z").await;
    admin.ok("comms_revoke_consent", json!({"agentId": agent, "contactAddress": contact, "channel": "sms"})).await;
    set_clock(&s, "2026-12-01T12:05:00Z").await;
    let change = json!({"agentId": agent, "limits": {"maxActionsPerMinute": null, "maxSpendPerDay": 5}});
    master.ok("comms_set_agent_limits", change).await;
    set_clock(&s, "2026-12-01T12:10:00Z").await;
    admin.ok("comms_record_consent", consent("paper", "transactional")).await;
    set_clock(&s, "2026-12-01T13:05:00Z").await;
    let (status, _) =
        post(&s, &org.admin, &format!("/admin/api/orgs/{}/settings", org.id), json!({"maxSpendPerDay": 20})).await;
    assert_eq!(status, 200);
    set_clock(&s, "2026-12-01T13:10:00Z").await;
    admin.ok("comms_dnc_add", json!({"address": contact})).await;
    set_clock(&s, "2026-12-01T14:00:00Z").await;

    // Consent: none yet, granted, revoked, granted again (another type and source), then listed.
    let consent_at = |at: &str| format!("/admin/api/consent?contact=%2B12025550100&as_of={at}");
    let view = get_ok(&s, &org.admin, &consent_at("2026-12-01T09:05:00Z")).await;
    assert_eq!((view["asOf"].as_str(), view["onDnc"].as_bool()), (Some("2026-12-01T09:05:00.000Z"), Some(false)));
    assert_eq!(view["records"], json!([]));
    let granted = json!({"agentId": agent, "channel": "sms", "status": "granted", "consentType": "express",
                         "grantedAt": "2026-12-01T09:10:00", "revokedAt": null, "source": "web-form"});
    assert_eq!(
        records(&get_ok(&s, &org.admin, &consent_at("2026-12-01T09:30:00Z")).await),
        std::slice::from_ref(&granted)
    );
    assert_eq!(
        records(&get_ok(&s, &org.admin, &consent_at("2026-12-01T11:09:59Z")).await),
        std::slice::from_ref(&granted)
    );
    let mut revoked = granted.clone();
    revoked["status"] = json!("revoked");
    revoked["revokedAt"] = json!("2026-12-01T11:10:00");
    assert_eq!(records(&get_ok(&s, &org.admin, &consent_at("2026-12-01T11:30:00Z")).await), [revoked]);
    let regranted = json!({"agentId": agent, "channel": "sms", "status": "granted", "consentType": "transactional",
                           "grantedAt": "2026-12-01T12:10:00", "revokedAt": null, "source": "paper"});
    let view = get_ok(&s, &org.admin, &consent_at("2026-12-01T12:30:00Z")).await;
    assert_eq!((records(&view), view["onDnc"].as_bool()), (vec![regranted.clone()], Some(false)));
    let view = get_ok(&s, &org.admin, &consent_at("2026-12-01T13:30:00Z")).await;
    assert_eq!((records(&view), view["onDnc"].as_bool()), (vec![regranted.clone()], Some(true)));
    // The live view (from the consent projection) and the fold of the events agree, to the ms.
    let live = get_ok(&s, &org.admin, "/admin/api/consent?contact=%2B12025550100").await;
    let folded = get_ok(&s, &org.admin, &consent_at("2026-12-01T14:30:00Z")).await;
    assert_eq!((&live["records"], &live["onDnc"]), (&folded["records"], &folded["onDnc"]));
    assert!(live["asOf"].as_str().unwrap().starts_with("2026-12-01T14:00:0"), "{live}");
    // An offset other than Z, and a `+` sent unencoded, name the same instant.
    let view =
        get_ok(&s, &org.admin, "/admin/api/consent?contact=%2B12025550100&as_of=2026-12-01T12:30:00+02:00").await;
    assert_eq!((records(&view), view["asOf"].as_str()), (vec![granted], Some("2026-12-01T10:30:00.000Z")));

    // Limits: starter, an override, tier pro, the override cleared and a spend override, org cap.
    let limits_at = |at: &str| format!("/admin/api/limits?agentId={agent}&as_of={at}");
    let (status, body) = get(&s, &org.admin, &limits_at("2026-12-01T08:00:00Z")).await;
    assert_eq!((status, body["code"].as_str()), (404, Some("not_found")), "{body}");
    let no_caps = json!({"maxSpendPerDay": null, "maxSpendPerMonth": null});
    let expect = [
        ("2026-12-01T09:30:00Z", "starter", no_overrides(), limits(10, 100, 500, 10.0, 100.0), &no_caps),
        (
            "2026-12-01T10:30:00Z",
            "starter",
            json!({"maxActionsPerMinute": 7, "maxActionsPerHour": null, "maxActionsPerDay": null, "maxSpendPerDay": null, "maxSpendPerMonth": null}),
            limits(7, 100, 500, 10.0, 100.0),
            &no_caps,
        ),
        (
            "2026-12-01T11:30:00Z",
            "pro",
            json!({"maxActionsPerMinute": 7, "maxActionsPerHour": null, "maxActionsPerDay": null, "maxSpendPerDay": null, "maxSpendPerMonth": null}),
            limits(7, 500, 5000, 100.0, 1000.0),
            &no_caps,
        ),
        (
            "2026-12-01T12:30:00Z",
            "pro",
            json!({"maxActionsPerMinute": null, "maxActionsPerHour": null, "maxActionsPerDay": null, "maxSpendPerDay": 5.0, "maxSpendPerMonth": null}),
            limits(30, 500, 5000, 5.0, 1000.0),
            &no_caps,
        ),
        (
            "2026-12-01T13:30:00Z",
            "pro",
            json!({"maxActionsPerMinute": null, "maxActionsPerHour": null, "maxActionsPerDay": null, "maxSpendPerDay": 5.0, "maxSpendPerMonth": null}),
            limits(30, 500, 5000, 5.0, 1000.0),
            &json!({"maxSpendPerDay": 20.0, "maxSpendPerMonth": null}),
        ),
    ];
    for (at, tier, overrides, effective, caps) in expect {
        let view = get_ok(&s, &org.admin, &limits_at(at)).await;
        assert_eq!(view["agentId"], agent);
        assert_eq!(view["asOf"].as_str().map(|t| &t[..19]), Some(&at[..19]));
        assert_eq!((&view["tier"], &view["overrides"]), (&json!(tier), &overrides), "{at}: {view}");
        assert_eq!((&view["effective"], &view["orgCaps"]), (&effective, caps), "{at}: {view}");
    }
    // `as_of` equal to an event's published `occurredAt` includes that event, and a millisecond
    // before it does not: instants are stored as they are published, to the millisecond.
    let audit = get_ok(&s, &org.admin, &format!("/admin/api/audit?agentId={agent}&eventType=LimitsChanged")).await;
    let first = audit["items"][0]["occurredAt"].as_str().unwrap().to_string();
    let millis = chrono::DateTime::parse_from_rfc3339(&first).unwrap();
    let before = (millis - chrono::Duration::milliseconds(1)).to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(get_ok(&s, &org.admin, &limits_at(&first)).await["overrides"]["maxActionsPerMinute"], 7, "{first}");
    assert_eq!(get_ok(&s, &org.admin, &limits_at(&before)).await["overrides"]["maxActionsPerMinute"], Value::Null);
    let audit = get_ok(&s, &org.admin, "/admin/api/audit?eventType=ConsentRevoked").await;
    let revoked_at = audit["items"][0]["occurredAt"].as_str().unwrap().to_string();
    assert_eq!(records(&get_ok(&s, &org.admin, &consent_at(&revoked_at)).await)[0]["status"], "revoked");
    let audit = get_ok(&s, &org.admin, &format!("/admin/api/audit?to={first}&eventType=LimitsChanged")).await;
    assert_eq!(audit["items"].as_array().unwrap().len(), 1, "`to` equal to an event's occurredAt includes it: {audit}");

    let live = get_ok(&s, &org.admin, &format!("/admin/api/limits?agentId={agent}")).await;
    let folded = get_ok(&s, &org.admin, &limits_at("2026-12-01T14:30:00Z")).await;
    for field in ["tier", "overrides", "effective", "orgCaps", "markupPercent"] {
        assert_eq!(live[field], folded[field], "{field}");
    }
    assert_eq!(live["markupPercent"], 12.5);

    // The agent views carry status, tier, limits and billing.
    let one = get_ok(&s, &org.admin, &format!("/admin/api/agents/{agent}")).await;
    assert_eq!((one["status"].as_str(), one["tier"].as_str()), (Some("active"), Some("pro")));
    assert_eq!(one["limits"], limits(30, 500, 5000, 5.0, 1000.0));
    assert_eq!(one["billing"], json!({"tier": "pro", "markupPercent": 12.5, "effectiveMarkupPercent": 12.5}));
    let listed = get_ok(&s, &org.admin, "/admin/api/agents").await;
    assert_eq!(listed["agents"][0]["limits"], one["limits"]);
    assert_eq!(listed["agents"][0]["mode"], "sandbox");

    // Bad instants and other orgs' agents are refused.
    let (status, body) = get(&s, &org.admin, &limits_at("yesterday")).await;
    assert_eq!((status, body["code"].as_str(), body["field"].as_str()), (400, Some("invalid_input"), Some("as_of")));
    let (status, body) = get(&s, &org.admin, "/admin/api/limits").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("agentId")));
    let other = create_org(&s, "as-of-other").await;
    let (status, body) = get(&s, &other.admin, &limits_at("2026-12-01T13:30:00Z")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some(&*format!("Agent \"{agent}\" does not belong to your organization")))
    );
    let (status, body) = get(&s, &org.admin, "/admin/api/limits?agentId=nobody&as_of=2026-12-01T13:30:00Z").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("Agent \"nobody\" not found")));
    let (status, _) = get(&s, &other.admin, &format!("{}&agentId={agent}", consent_at("2026-12-01T13:30:00Z"))).await;
    assert_eq!(status, 403);
    s.stop().await;
}

/// The super-admin's consent view without `orgId` spans every org (each record names its org),
/// now and as of an instant; with `orgId`, one org; an org admin sees only its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_super_admins_consent_view_spans_every_org_unless_it_names_one() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T09:00:00Z").await;
    let (one, two) = (create_org(&s, "span-one").await, create_org(&s, "span-two").await);
    let (agent_one, _) = provision(&s, &one, "One").await;
    let (agent_two, _) = provision(&s, &two, "Two").await;
    let contact = "+12025550177";
    for (org, agent, channel) in [(&one, &agent_one, "sms"), (&two, &agent_two, "voice")] {
        let admin = Session::open(&s, &org.admin).await;
        admin
            .ok("comms_record_consent", json!({"agentId": agent, "contactAddress": contact, "channel": channel}))
            .await;
    }
    let dnc = post(&s, &two.admin, "/admin/api/dnc", json!({"address": contact})).await;
    assert_eq!(dnc.0, 200, "{:?}", dnc.1);
    set_clock(&s, "2026-12-01T10:00:00Z").await;

    let orgs_of = |view: &Value| -> Vec<(String, String)> {
        let records = view["records"].as_array().unwrap();
        let mut seen: Vec<(String, String)> = records
            .iter()
            .map(|r| (r["orgId"].as_str().unwrap().to_string(), r["agentId"].as_str().unwrap().to_string()))
            .collect();
        seen.sort();
        seen
    };
    let mut both = vec![(one.id.clone(), agent_one.clone()), (two.id.clone(), agent_two.clone())];
    both.sort();
    for path in [
        "/admin/api/consent?contact=%2B12025550177",
        "/admin/api/consent?contact=%2B12025550177&as_of=2026-12-01T09:30:00Z",
    ] {
        let all = get_ok(&s, MASTER, path).await;
        assert_eq!((orgs_of(&all), all["onDnc"].as_bool()), (both.clone(), Some(true)), "{path}: {all}");
        // Paged one at a time, the same records in the same order.
        let first = get_ok(&s, MASTER, &format!("{path}&limit=1")).await;
        let cursor = first["nextCursor"].as_str().expect("a second page").to_string();
        let second = get_ok(&s, MASTER, &format!("{path}&limit=1&cursor={cursor}")).await;
        assert_eq!(
            [first["records"][0].clone(), second["records"][0].clone()],
            [all["records"][0].clone(), all["records"][1].clone()]
        );
        let named = get_ok(&s, MASTER, &format!("{path}&orgId={}", one.id)).await;
        assert_eq!(
            (orgs_of(&named), named["onDnc"].as_bool()),
            (vec![(one.id.clone(), agent_one.clone())], Some(false))
        );
        let own = get_ok(&s, &two.admin, path).await;
        assert_eq!((orgs_of(&own), own["onDnc"].as_bool()), (vec![(two.id.clone(), agent_two.clone())], Some(true)));
    }
    let before = get_ok(&s, MASTER, "/admin/api/consent?contact=%2B12025550177&as_of=2026-12-01T08:00:00Z").await;
    assert_eq!((before["records"].as_array().unwrap().len(), before["onDnc"].as_bool()), (0, Some(false)));
    s.stop().await;
}

/// Walks a list from its first page with `limit`, checking each page's size; returns every item
/// (as `id` picks it) in order.
async fn walk(s: &TestServer, token: &str, path: &str, items: &str, id: &str, limit: usize) -> Vec<String> {
    let sep = if path.contains('?') { '&' } else { '?' };
    let (mut seen, mut cursor) = (Vec::new(), None::<String>);
    loop {
        let url = match &cursor {
            Some(c) => format!("{path}{sep}limit={limit}&cursor={c}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let page = get_ok(s, token, &url).await;
        let rows = page[items].as_array().unwrap();
        assert!(rows.len() <= limit, "{url}: {page}");
        seen.extend(rows.iter().map(|r| r[id].as_str().unwrap().to_string()));
        match page["nextCursor"].as_str() {
            Some(next) => {
                assert_eq!(rows.len(), limit, "a page before the last is full");
                cursor = Some(next.to_string());
            }
            None => return seen,
        }
    }
}

fn distinct(items: &[String]) -> usize {
    items.iter().collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_list_pages_by_cursor_without_repeats_or_gaps_within_its_org() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await;
    let a = create_org(&s, "pages-a").await;
    let b = create_org(&s, "pages-b").await;
    for n in 0..5 {
        create_org(&s, &format!("pages-extra-{n}")).await;
    }
    let mut a_agents = Vec::new();
    for n in 0..5 {
        a_agents.push(provision(&s, &a, &format!("A{n}")).await.0);
    }
    let (b_agent, _) = provision(&s, &b, "B0").await;

    // Orgs: default + 7, three at a time; an org created while paging shows up once.
    let first = get_ok(&s, MASTER, "/admin/api/orgs?limit=3").await;
    let late = create_org(&s, "pages-late").await;
    let orgs = walk(&s, MASTER, "/admin/api/orgs", "orgs", "id", 3).await;
    assert_eq!((orgs.len(), distinct(&orgs)), (9, 9), "{orgs:?}");
    assert!(orgs.contains(&late.id) && orgs.contains(&a.id));
    let resumed =
        walk(&s, MASTER, &format!("/admin/api/orgs?cursor={}", first["nextCursor"].as_str().unwrap()), "orgs", "id", 3)
            .await;
    assert_eq!(resumed, orgs[3..]);
    assert_eq!(walk(&s, &a.admin, "/admin/api/orgs", "orgs", "id", 1).await, std::slice::from_ref(&a.id));
    assert_eq!(
        walk(&s, MASTER, &format!("/admin/api/orgs?orgId={}", b.id), "orgs", "id", 2).await,
        std::slice::from_ref(&b.id)
    );

    // Agents: an org token sees its five, two at a time; the master all six, or one org's.
    assert_eq!(walk(&s, &a.admin, "/admin/api/agents", "agents", "agentId", 2).await, a_agents);
    let all = walk(&s, MASTER, "/admin/api/agents", "agents", "agentId", 4).await;
    assert_eq!((all.len(), distinct(&all)), (6, 6));
    assert_eq!(walk(&s, MASTER, &format!("/admin/api/agents?orgId={}", b.id), "agents", "agentId", 2).await, [b_agent]);

    // DNC: seven entries in A, one in B.
    let admin_a = Session::open(&s, &a.admin).await;
    let mut listed = Vec::new();
    for n in 0..7 {
        let address = format!("+1202555020{n}");
        admin_a.ok("comms_dnc_add", json!({"address": address})).await;
        listed.push(address);
    }
    Session::open(&s, &b.admin).await.ok("comms_dnc_add", json!({"address": "+12025550299"})).await;
    assert_eq!(walk(&s, &a.admin, "/admin/api/dnc", "entries", "address", 3).await, listed);
    let every = walk(&s, MASTER, "/admin/api/dnc", "entries", "address", 5).await;
    assert_eq!((every.len(), distinct(&every)), (8, 8));

    // Consent: five agents × two channels for one contact, now and as of an instant.
    for agent in &a_agents {
        for channel in ["sms", "voice"] {
            let grant = json!({"agentId": agent, "contactAddress": "+12025550300", "channel": channel});
            admin_a.ok("comms_record_consent", grant).await;
        }
    }
    let path = "/admin/api/consent?contact=%2B12025550300";
    let key = |r: &Value| format!("{}/{}", r["agentId"].as_str().unwrap(), r["channel"].as_str().unwrap());
    let mut expected: Vec<String> = a_agents.iter().flat_map(|a| [format!("{a}/sms"), format!("{a}/voice")]).collect();
    expected.sort();
    for view in [path.to_string(), format!("{path}&as_of=2026-12-02T00:00:00Z")] {
        let (mut seen, mut cursor) = (Vec::new(), None::<String>);
        loop {
            let url = cursor.as_ref().map_or(format!("{view}&limit=3"), |c| format!("{view}&limit=3&cursor={c}"));
            let page = get_ok(&s, &a.admin, &url).await;
            seen.extend(page["records"].as_array().unwrap().iter().map(key));
            match page["nextCursor"].as_str() {
                Some(c) => cursor = Some(c.to_string()),
                None => break,
            }
        }
        assert_eq!(seen, expected, "{view}");
    }

    // Bad cursors and limits are invalid input, in JSON; other orgs are refused (Z5).
    for list in ["/admin/api/orgs?", "/admin/api/agents?", "/admin/api/dnc?", &format!("{path}&")] {
        for bad in ["cursor=not-a-cursor", "cursor=eyJhIjoxfQ", "limit=0", "limit=501", "limit=ten"] {
            let (status, body) = get(&s, MASTER, &format!("{list}{bad}")).await;
            let field = if bad.starts_with("cursor") { "cursor" } else { "limit" };
            assert_eq!(
                (status, body["code"].as_str(), body["field"].as_str()),
                (400, Some("invalid_input"), Some(field)),
                "{list}{bad}"
            );
        }
    }
    let denied = format!("Access to organization \"{}\" denied", b.id);
    for list in ["orgs", "agents", "dnc"] {
        let (status, body) = get(&s, &a.admin, &format!("/admin/api/{list}?orgId={}", b.id)).await;
        assert_eq!((status, body["error"].as_str()), (403, Some(denied.as_str())), "{list}");
    }
    s.stop().await;
}

/// Polls `/usage` (`query`) until its global total reaches `actions` (the usage projection
/// follows the sends).
async fn usage_when(s: &TestServer, token: &str, query: &str, actions: i64) -> Value {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let view = get_ok(s, token, &format!("/admin/api/usage{query}")).await;
        if view["globalTotals"]["totalActions"] == actions {
            return view;
        }
        assert!(std::time::Instant::now() < deadline, "{query}: {view}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn agent_row<'a>(view: &'a Value, agent: &str) -> &'a Value {
    view["agents"].as_array().unwrap().iter().find(|r| r["agentId"] == agent).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_by_period_and_window_within_its_org_and_the_orgs_real_spend() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-15T10:00:00Z").await;
    let a = create_org(&s, "usage-a").await;
    let b = create_org(&s, "usage-b").await;
    let (a1, a1_token) = provision(&s, &a, "A1").await;
    let (b1, b1_token) = provision(&s, &b, "B1").await;
    let me = Session::open(&s, &a1_token).await;
    for (to, channel) in [("+12025550100", "sms"), ("bob@example.com", "email")] {
        me.ok("comms_record_consent", json!({"contactAddress": to, "channel": channel})).await;
    }
    let sms = json!({"to": "+12025550100", "body": "Your table is ready."});
    let email = json!({"to": "bob@example.com", "channel": "email", "subject": "Hi", "body": "Hello. unsubscribe"});

    // Dec 15, 10:xx: two SMS; 12:xx: one email; Dec 16, 09:xx: one SMS. B sends one SMS on Dec 16.
    me.ok("comms_send_message", sms.clone()).await;
    me.ok("comms_send_message", sms.clone()).await;
    set_clock(&s, "2026-12-15T12:00:00Z").await;
    me.ok("comms_send_message", email).await;
    set_clock(&s, "2026-12-16T09:00:00Z").await;
    me.ok("comms_send_message", sms.clone()).await;
    let them = Session::open(&s, &b1_token).await;
    them.ok("comms_record_consent", json!({"contactAddress": "+12025550100", "channel": "sms"})).await;
    them.ok("comms_send_message", sms).await;

    let today = usage_when(&s, &a.admin, "", 1).await;
    assert_eq!((today["period"].as_str(), today["orgId"].as_str()), (Some("today"), Some(a.id.as_str())));
    assert_eq!(today["from"], "2026-12-16T00:00:00.000Z");
    assert_eq!(today["agents"].as_array().unwrap().len(), 1, "an org token sees its own agents only");
    assert_eq!(
        (agent_row(&today, &a1)["actions"]["sms"].as_i64(), agent_row(&today, &a1)["totalCost"].as_f64()),
        (Some(1), Some(0.0079))
    );
    for period in ["week", "month", "all"] {
        let view = usage_when(&s, &a.admin, &format!("?period={period}"), 4).await;
        let row = agent_row(&view, &a1);
        assert_eq!((row["actions"]["sms"].as_i64(), row["actions"]["email"].as_i64()), (Some(3), Some(1)), "{period}");
        assert_eq!(row["totalCost"].as_f64(), Some(0.0247), "{period}");
    }
    let view = usage_when(&s, &a.admin, "?from=2026-12-15T11:30:00Z&to=2026-12-15T13:00:00Z", 1).await;
    assert_eq!(
        (view["from"].as_str(), view["to"].as_str()),
        (Some("2026-12-15T11:00:00.000Z"), Some("2026-12-15T13:00:00.000Z"))
    );
    assert_eq!((agent_row(&view, &a1)["actions"]["email"].as_i64(), view["period"].as_str()), (Some(1), Some("all")));
    let view =
        usage_when(&s, &a.admin, &format!("?agentId={a1}&from=2026-12-15T00:00:00Z&to=2026-12-15T11:00:00Z"), 2).await;
    assert_eq!(
        (view["agentId"].as_str(), agent_row(&view, &a1)["totalCost"].as_f64()),
        (Some(a1.as_str()), Some(0.0158))
    );
    let view = usage_when(&s, &a.admin, "?period=today&from=2026-12-15T00:00:00Z", 1).await;
    assert_eq!(view["from"], "2026-12-16T00:00:00.000Z", "period and from narrow each other");

    // The master sees both orgs, or one; org tokens are held to their own (Z2, Z5).
    let all = usage_when(&s, MASTER, "?period=all", 5).await;
    assert_eq!((agent_row(&all, &b1)["totalActions"].as_i64(), all.get("orgId")), (Some(1), None));
    let only_b = usage_when(&s, MASTER, &format!("?orgId={}", b.id), 1).await;
    assert_eq!(only_b["agents"].as_array().unwrap().len(), 1);
    let (status, body) = get(&s, &a.admin, &format!("/admin/api/usage?agentId={b1}")).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some(&*format!("Agent \"{b1}\" does not belong to your organization")))
    );
    let (status, body) = get(&s, &a.admin, &format!("/admin/api/usage?orgId={}", b.id)).await;
    assert_eq!((status, body["error"].as_str()), (403, Some(&*format!("Access to organization \"{}\" denied", b.id))));
    let (status, body) = get(&s, MASTER, "/admin/api/usage?agentId=ghost").await;
    assert_eq!((status, body["error"].as_str()), (404, Some("Agent \"ghost\" not found")));
    for bad in ["period=year", "from=soon", "from=2026-12-16T00:00:00Z&to=2026-12-15T00:00:00Z"] {
        let (status, body) = get(&s, MASTER, &format!("/admin/api/usage?{bad}")).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("invalid_input")), "{bad}");
    }

    // The settings reply carries the org's spend as its caps count it: today and this month.
    let (status, reply) =
        post(&s, &a.admin, &format!("/admin/api/orgs/{}/settings", a.id), json!({"maxSpendPerDay": 50})).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!((reply["spendToday"].as_f64(), reply["spendMonth"].as_f64()), (Some(0.0079), Some(0.0247)));
    assert_eq!(reply["maxSpendPerDay"].as_f64(), Some(50.0));
    let (_, reply) =
        post(&s, MASTER, &format!("/admin/api/orgs/{}/settings", b.id), json!({"maxSpendPerMonth": 9})).await;
    assert_eq!((reply["spendToday"].as_f64(), reply["spendMonth"].as_f64()), (Some(0.0079), Some(0.0079)));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_channels_drop_unknown_names_and_refuse_items_that_are_no_names() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let org = create_org(&s, "blocker").await;
    let (agent, _) = provision(&s, &org, "Blocked").await;
    let path = format!("/admin/api/agents/{agent}/blocked-channels");
    let blocked = |body: Value| body["blockedChannels"].clone();

    let (status, body) = post(&s, &org.admin, &path, json!({"blockedChannels": ["voice", "sms", "sms", "fax"]})).await;
    assert_eq!((status, blocked(body)), (200, json!(["voice", "sms"])), "deduped, the unknown name dropped");
    let events = || async {
        let pool = db.pool().await;
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM events WHERE event_type = 'AgentChannelsBlocked'")
            .fetch_one(&pool)
            .await
            .unwrap();
        n
    };
    assert_eq!(events().await, 1);

    // Items that are no channel name at all change nothing: the agent stays blocked.
    for (items, field, message) in [
        (json!([1, {"x": 1}, null]), "blockedChannels[0]", "must be a string"),
        (json!(["sms", "x".repeat(10_001)]), "blockedChannels[1]", "must be at most 10000 characters"),
    ] {
        let (status, body) = post(&s, &org.admin, &path, json!({"blockedChannels": items})).await;
        assert_eq!(
            (status, body["code"].as_str(), body["error"].as_str()),
            (400, Some("invalid_input"), Some(format!("Invalid input for \"{field}\": {message}").as_str())),
            "{body}"
        );
    }
    assert_eq!(events().await, 1, "no change recorded");
    let view = get_ok(&s, &org.admin, &format!("/admin/api/agents/{agent}")).await;
    assert_eq!(view["blockedChannels"], json!(["voice", "sms"]), "{view}");

    let (status, body) = post(&s, &org.admin, &path, json!({"blockedChannels": ["sms", "*"]})).await;
    assert_eq!((status, blocked(body)), (200, json!(["*"])));
    let (status, body) = post(&s, &org.admin, &path, json!({"blockedChannels": []})).await;
    assert_eq!((status, blocked(body)), (200, json!([])), "[] unblocks");
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cursor_pages_only_the_list_it_came_from() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let org = create_org(&s, "cursors").await;
    provision(&s, &org, "One").await;
    provision(&s, &org, "Two").await;
    let agents = get_ok(&s, MASTER, "/admin/api/agents?limit=1").await;
    let cursor = agents["nextCursor"].as_str().expect("a second page").to_string();
    let (status, next) = get(&s, MASTER, &format!("/admin/api/agents?limit=1&cursor={cursor}")).await;
    assert_eq!(status, 200, "{next}");
    // The same key shape (instant, id) on another list: refused, not a page starting elsewhere.
    let (status, refused) = get(&s, MASTER, &format!("/admin/api/orgs?cursor={cursor}")).await;
    assert_eq!(
        (status, refused["code"].as_str(), refused["field"].as_str()),
        (400, Some("invalid_input"), Some("cursor"))
    );
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_audit_view_reads_its_parameters_as_every_other_list_does() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    // An unencoded `+` offset arrives as a space; a padded limit is trimmed; as on every list.
    for query in ["from=2026-12-07T10:20:00+01:00", "limit=%205", "to=2030-01-01T00:00:00-05:00"] {
        let (status, body) = get(&s, MASTER, &format!("/admin/api/audit?{query}")).await;
        assert_eq!(status, 200, "{query}: {body}");
    }
    let (status, body) = get(&s, MASTER, "/admin/api/audit?from=yesterday").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("from")));
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_consent_view_as_of_an_earlier_instant_does_not_bring_back_an_erased_subject() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    set_clock(&s, "2026-12-01T16:00:00Z").await;
    let org = create_org(&s, "forgotten").await;
    let (_, agent_token) = provision(&s, &org, "Keeper").await;
    let agent = Session::open(&s, &agent_token).await;
    for contact in ["+12025550131", "+12025550132"] {
        agent.ok("comms_record_consent", json!({"contactAddress": contact, "channel": "sms"})).await;
    }
    set_clock(&s, "2026-12-01T17:00:00Z").await;
    let before = "2026-12-01T16:30:00Z";
    let view = |contact: &str| format!("/admin/api/consent?contact=%2B{}&as_of={before}", &contact[1..]);
    let records = |v: &Value| v["records"].as_array().unwrap().len();
    assert_eq!(records(&get_ok(&s, &org.admin, &view("+12025550131")).await), 1);

    let (status, erased) =
        post(&s, &org.admin, "/admin/api/subjects/erase", json!({"identifier": "+12025550131"})).await;
    assert_eq!(status, 200, "{erased}");
    let now = get_ok(&s, &org.admin, "/admin/api/consent?contact=%2B12025550131").await;
    assert_eq!(records(&now), 0, "{now}");
    let then = get_ok(&s, &org.admin, &view("+12025550131")).await;
    assert_eq!(records(&then), 0, "the erased subject's grant stays purged at an earlier instant: {then}");
    let other = get_ok(&s, &org.admin, &view("+12025550132")).await;
    assert_eq!(records(&other), 1, "another contact's grant is still there: {other}");
    s.stop().await;
}

//! The admin API's OpenAPI 3.1 document (docs/admin-api.md): valid by a real validator
//! (`openapi-spec-validator`, run in Python), and complete: every admin route this server serves
//! appears in it, and every path it lists is served.

use std::collections::BTreeSet;

use serde_json::Value;

use crate::mcp_e2e::run_script;
use crate::support::{TestDb, TestServer};

const MASTER: &str = "openapi-test-master-token-0123456789abcdef";

fn vars() -> Vec<(&'static str, &'static str)> {
    vec![
        ("MASTER_SECURITY_TOKEN", MASTER),
        ("HTTP_RATE_LIMIT_PER_IP", "100000"),
        ("HTTP_RATE_LIMIT_GLOBAL", "100000"),
        ("COMMGUARD_TEST_CLOCK", "true"),
    ]
}

async fn document(s: &TestServer) -> Value {
    let r = s.http.get(s.url("/admin/api/openapi.json")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    r.json().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openapi_document_is_valid_openapi_3_1() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let doc = document(&s).await;
    assert_eq!(doc["openapi"], "3.1.0");
    let url = s.url("/admin/api/openapi.json");
    run_script("openapi_validate.py", &[&url, MASTER], &[]);
    s.stop().await;
}

/// Every `"/admin/api/…"` route literal in the server's HTTP sources, `{param}` form.
fn routes_in_sources() -> BTreeSet<String> {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/src/http");
    let mut found = BTreeSet::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let text = std::fs::read_to_string(&path).unwrap();
        for piece in text.split("\"/admin/api/").skip(1) {
            let route = &piece[..piece.find('"').unwrap()];
            found.insert(format!("/admin/api/{route}"));
        }
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_admin_route_served_is_in_the_document_and_every_documented_one_is_served() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let doc = document(&s).await;
    let paths = doc["paths"].as_object().unwrap();

    // No admin route is written anywhere in src/http without appearing in the document.
    let in_sources = routes_in_sources();
    assert!(in_sources.len() >= 25, "{in_sources:?}");
    for route in &in_sources {
        assert!(paths.contains_key(route), "{route} is routed in src/http but missing from the document");
    }

    // Each documented path is routed (a method it does not serve answers 405, not the 404 of an
    // unknown path), and each documented method is answered by a handler, not by the fallbacks.
    let unknown = s.http.delete(s.url("/admin/api/no-such-route")).bearer_auth(MASTER).send().await.unwrap();
    assert_eq!(unknown.status(), 404, "the fallback of an unknown path");
    for (path, item) in paths {
        let concrete = path.replace("{orgId}", "default").replace("{agentId}", "nobody");
        let r = s.http.delete(s.url(&concrete)).bearer_auth(MASTER).send().await.unwrap();
        assert_eq!(r.status(), 405, "DELETE {concrete}: the path is routed");
        for method in item.as_object().unwrap().keys() {
            let request = match method.as_str() {
                "get" => s.http.get(s.url(&concrete)),
                "post" => s.http.post(s.url(&concrete)).json(&serde_json::json!({})),
                other => panic!("unexpected method {other} for {path}"),
            };
            let r = request.bearer_auth(MASTER).send().await.unwrap();
            assert_ne!(r.status(), 405, "{method} {concrete} is served");
            let body: Value = r.json().await.unwrap_or(Value::Null);
            assert_ne!(body["error"], "Not found", "{method} {concrete} reached a handler: {body}");
        }
        // Every operation has its responses and a reply schema that resolves; only the document
        // itself is open to anyone (no security, so no 401), and every POST may conflict (409).
        for (method, op) in item.as_object().unwrap() {
            let open = path == "/admin/api/openapi.json";
            assert_eq!(op.get("security") == Some(&serde_json::json!([])), open, "{method} {path}");
            assert_eq!(op["responses"].get("401").is_none(), open, "{method} {path}");
            assert_eq!(op["responses"].get("409").is_some(), method == "post", "{method} {path}");
            assert_eq!(op["responses"].get("415").is_some(), method == "post", "{method} {path}");
            // What any route may answer (docs/http.md): a body over the limit, a rate limit or
            // lockout, an internal error, a wrong method.
            for status in ["405", "413", "429", "500"] {
                assert!(op["responses"].get(status).is_some(), "{method} {path} lacks {status}");
            }
        }
        for (method, op) in item.as_object().unwrap() {
            let reply = op["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].as_str().unwrap();
            let name = reply.trim_start_matches("#/components/schemas/");
            assert!(doc["components"]["schemas"][name].is_object(), "{method} {path}: {reply}");
        }
    }
    s.stop().await;
}

/// Every GET route answers with what its document describes (the 200 reply derived from the
/// handler's type, refusals with the error schema), checked in Python by a JSON Schema validator
/// against real replies about a real org, agent, DNC entry and consent-less contact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_reply_matches_the_schema_its_route_documents() {
    let db = TestDb::new().await;
    let s = TestServer::start(&db, &vars()).await;
    let p = crate::support::provision(
        &s,
        MASTER,
        "schema-org",
        serde_json::json!({}),
        "Schema agent",
        serde_json::json!({"phone": true, "email": true}),
    )
    .await;
    let contact = "+12025550143";
    let r = s
        .http
        .post(s.url("/admin/api/dnc"))
        .bearer_auth(&p.admin)
        .json(&serde_json::json!({"address": contact, "reason": "schema test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let url = s.url("");
    run_script(
        "openapi_replies.py",
        &[url.trim_end_matches('/'), MASTER, &p.admin, &p.org_id, &p.agent_id, contact],
        &[],
    );
    s.stop().await;
}

//! Identity across instances: two servers on one database. A token rotated through one instance
//! is refused by the other, and the other's open SSE stream of that token ends within 5 s.

use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::{json, Value};

use crate::support::{TestDb, TestServer};

const MASTER: &str = "identity-test-master-token-0123456789abcdef";
const LIMITS: [(&str, &str); 3] =
    [("MASTER_SECURITY_TOKEN", MASTER), ("HTTP_RATE_LIMIT_PER_IP", "100000"), ("HTTP_RATE_LIMIT_GLOBAL", "100000")];

/// Opens a Streamable HTTP session as `token` and calls `tool`; returns the tool's JSON result.
async fn call_tool(s: &TestServer, token: &str, tool: &str, args: Value) -> Value {
    let post = |body: Value, session: Option<String>| {
        let mut r = s
            .http
            .post(s.url("/mcp"))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(id) = session {
            r = r.header("mcp-session-id", id);
        }
        r.send()
    };
    let init = post(json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}), None)
        .await
        .unwrap();
    assert_eq!(init.status(), 200);
    let session = init.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let reply: Value = post(json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": args}}), Some(session))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let result = &reply["result"];
    assert_eq!(result["isError"], false, "{tool}: {result}");
    serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap()
}

async fn sse_status(s: &TestServer, token: &str) -> u16 {
    s.http.get(s.url(&format!("/sse?token={token}"))).send().await.unwrap().status().as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_on_one_instance_revokes_and_closes_streams_on_another() {
    let db = TestDb::new().await;
    let a = TestServer::start(&db, &LIMITS).await;
    let b = TestServer::start(&db, &LIMITS).await;

    let org = call_tool(&a, MASTER, "comms_create_organization", json!({"name": "Two", "slug": "two-instances", "a2pRegistered": true})).await;
    let org_token = org["adminToken"].as_str().unwrap().to_string();
    let agent = call_tool(&a, &org_token, "comms_provision_channels", json!({"displayName": "Roamer", "capabilities": {"email": true}})).await;
    let (agent_id, old) = (agent["agentId"].as_str().unwrap().to_string(), agent["securityToken"].as_str().unwrap().to_string());

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

    b.stop().await;
    a.stop().await;
}

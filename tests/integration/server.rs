//! The server over real HTTP: health, readiness (503 within 2 s when Postgres goes away).

use std::time::{Duration, Instant};

use crate::support::{admin_url, TestDb, TestServer};

#[tokio::test]
async fn health_reports_the_service_and_readiness_the_database() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, &[]).await;

    let health = server.http.get(server.url("/health")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert_eq!(health.headers()["x-content-type-options"], "nosniff");
    let body: serde_json::Value = health.json().await.unwrap();
    assert_eq!(body["status"], "ok");
    assert_eq!(body["environment"], "development");
    assert_eq!(body["demoMode"], false);
    assert_eq!(body["mode"], "live");
    assert!(body["uptime"].is_number() && body["version"].is_string());

    let ready = server.http.get(server.url("/health/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["status"], "ready");
    assert_eq!(body["checks"]["database"], "ok");
    assert_eq!(body["checks"]["migrations"], "ok");
    assert_eq!(body["providers"]["telephony"], "not_configured");

    // Postgres goes away: connections are cut and new ones refused.
    let admin = sqlx::PgPool::connect(&admin_url()).await.unwrap();
    sqlx::query(&format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS false", db.name)).execute(&admin).await.unwrap();
    sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1")
        .bind(&db.name)
        .execute(&admin)
        .await
        .unwrap();
    let started = Instant::now();
    let degraded = server.http.get(server.url("/health/ready")).send().await.unwrap();
    let took = started.elapsed();
    assert_eq!(degraded.status(), 503);
    assert!(took < Duration::from_millis(2500), "answered in {took:?}");
    let body: serde_json::Value = degraded.json().await.unwrap();
    assert_eq!(body["status"], "degraded");

    sqlx::query(&format!("ALTER DATABASE {} WITH ALLOW_CONNECTIONS true", db.name)).execute(&admin).await.unwrap();
    let again = server.http.get(server.url("/health/ready")).send().await.unwrap();
    assert_eq!(again.status(), 200, "ready again once Postgres is back");
    server.stop().await;
}

#[tokio::test]
async fn unknown_paths_and_methods_answer_json_errors() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, &[]).await;
    let missing = server.http.get(server.url("/nope")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.headers()["x-frame-options"], "DENY");
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    assert!(body["requestId"].is_string());

    let wrong = server.http.delete(server.url("/health")).send().await.unwrap();
    assert_eq!(wrong.status(), 405);
    assert!(wrong.headers()["allow"].to_str().unwrap().contains("GET"));
    let body: serde_json::Value = wrong.json().await.unwrap();
    assert_eq!(body["code"], "method_not_allowed");
    server.stop().await;
}

/// JSON-RPC 2.0 on `/mcp`: a batch is answered with an array, even a batch of one; a single
/// message with an object.
#[tokio::test]
async fn a_json_rpc_batch_of_one_is_answered_with_an_array() {
    const MASTER: &str = "server-test-master-token-0123456789abcdef";
    let db = TestDb::new().await;
    let server = TestServer::start(&db, &[("MASTER_SECURITY_TOKEN", MASTER)]).await;
    let post = |body: serde_json::Value, session: Option<String>| {
        let mut request = server
            .http
            .post(server.url("/mcp"))
            .bearer_auth(MASTER)
            .header("accept", "application/json, text/event-stream")
            .json(&body);
        if let Some(id) = session {
            request = request.header("mcp-session-id", id).header("mcp-protocol-version", "2025-03-26");
        }
        request.send()
    };
    let init = serde_json::json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {"protocolVersion": "2025-03-26"}});
    let opened = post(init, None).await.unwrap();
    assert_eq!(opened.status(), 200);
    let session = opened.headers()["mcp-session-id"].to_str().unwrap().to_string();
    let ping = serde_json::json!({"jsonrpc": "2.0", "id": 1, "method": "ping"});
    let single: serde_json::Value = post(ping.clone(), Some(session.clone())).await.unwrap().json().await.unwrap();
    assert_eq!(single, serde_json::json!({"jsonrpc": "2.0", "id": 1, "result": {}}));
    let batch: serde_json::Value = post(serde_json::json!([ping]), Some(session)).await.unwrap().json().await.unwrap();
    assert_eq!(batch, serde_json::json!([{"jsonrpc": "2.0", "id": 1, "result": {}}]));
    server.stop().await;
}

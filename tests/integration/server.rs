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

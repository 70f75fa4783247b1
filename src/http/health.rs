//! `GET /health` (the process is up) and `GET /health/ready` (Postgres answers within 2 s).

use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use sqlx::{ConnectOptions, Connection};

use crate::providers::credentials;
use crate::state::AppState;

const READY_TIMEOUT: Duration = Duration::from_secs(2);

pub fn routes() -> Router<AppState> {
    Router::new().route("/health", get(health)).route("/health/ready", get(ready))
}

async fn health(State(state): State<AppState>) -> Json<serde_json::Value> {
    let demo = state.config.demo_mode;
    Json(json!({
        "status": "ok",
        "uptime": state.started.elapsed().as_secs_f64(),
        "version": env!("CARGO_PKG_VERSION"),
        "environment": state.config.env.as_str(),
        "demoMode": demo,
        "mode": if demo { "demo" } else { "live" },
    }))
}

async fn ready(State(state): State<AppState>) -> Response {
    let configured = |yes: bool| if yes { "configured" } else { "not_configured" };
    let latest = crate::store::MIGRATOR.iter().map(|m| m.version).max().unwrap_or(0);
    let checked = tokio::time::timeout(READY_TIMEOUT, async {
        // A connection of its own: the pool may still hold connections Postgres cut while they
        // sat idle, and readiness must tell whether Postgres answers now.
        let mut conn = state.pool.connect_options().connect().await?;
        let applied = sqlx::query_scalar::<_, Option<i64>>("SELECT MAX(version) FROM _sqlx_migrations WHERE success")
            .fetch_one(&mut conn)
            .await;
        // Platform credentials registered at run time count as configured.
        let providers = credentials::providers_configured(&mut conn, &state.config, None).await.ok();
        let _ = conn.close().await;
        applied.map(|applied| (applied, providers))
    })
    .await;
    let from_env = (state.config.telephony_configured(), state.config.email_configured());
    let providers = match &checked {
        Ok(Ok((_, Some(providers)))) => *providers,
        _ => from_env,
    };
    let (telephony, email) = (configured(providers.0), configured(providers.1));
    if let Ok(Ok((applied, _))) = checked {
        let migrations = if applied.unwrap_or(0) >= latest { "ok" } else { "pending" };
        let status = if migrations == "ok" { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
        let body = json!({
            "status": if migrations == "ok" { "ready" } else { "degraded" },
            "checks": {"database": "ok", "migrations": migrations},
            "providers": {"database": "ok", "telephony": telephony, "email": email},
        });
        return (status, Json(body)).into_response();
    }
    let body = json!({
        "status": "degraded",
        "checks": {"database": "unavailable", "migrations": "unknown"},
        "providers": {"database": "unavailable", "telephony": telephony, "email": email},
    });
    (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
}

//! `GET /metrics` (docs/http.md#routes, docs/monitoring.md): this instance's metrics in the Prometheus text format.
//! Authorised by a hit on a non-empty `ADMIN_IP_ALLOWLIST`, or by the master token (bearer,
//! resolved by `Identity`, which compares the master in constant time); a missing or invalid
//! credential counts toward the lockout (docs/http.md#rate-limits-and-brute-force) as on the admin API. The security headers come
//! from the hardening layer, as for every route.

use std::net::IpAddr;

use axum::extract::{FromRequestParts, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use sqlx::PgPool;

use crate::auth::{bearer, AuthFailure, Bearer, Role};
use crate::crypto::tokens::fingerprint;
use crate::error::{ApiError, ErrorCode};
use crate::http::ip_filter::listed;
use crate::http::{ClientIp, RequestId};
use crate::state::AppState;
use crate::store::CommandContext;

const ROUTE: &str = "/metrics";

pub fn routes() -> Router<AppState> {
    Router::new().route(ROUTE, get(metrics))
}

/// A caller allowed to read the metrics.
struct Scraper;

impl FromRequestParts<AppState> for Scraper {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let ip = parts.extensions.get::<ClientIp>().map_or(IpAddr::from([0, 0, 0, 0]), |c| c.0);
        let allowlist = &app.config.admin_ip_allowlist;
        if !allowlist.is_empty() && listed(allowlist, ip) {
            return Ok(Self);
        }
        app.lockout.gate(ip, ROUTE).await?;
        let missing = || {
            ApiError::new(ErrorCode::Unauthorized, "Missing Authorization header. Use: Bearer <token>")
                .header("www-authenticate", "Bearer realm=\"commguard\"".to_string())
        };
        let principal = match bearer(&parts.headers) {
            Bearer::Absent => match app.identity.anonymous() {
                Some(p) => p,
                None => {
                    app.lockout.fail(ip, AuthFailure::Missing, ROUTE, None, None).await?;
                    return Err(missing());
                }
            },
            Bearer::Malformed => {
                app.lockout.fail(ip, AuthFailure::Missing, ROUTE, None, None).await?;
                return Err(missing());
            }
            Bearer::Token(token) => match app.identity.resolve(&token).await {
                Ok(p) => {
                    app.lockout.succeed(ip, ROUTE).await?;
                    p
                }
                Err(AuthFailure::Unavailable) => {
                    return Err(ApiError::new(ErrorCode::Unavailable, "Service unavailable"))
                }
                Err(failure) => {
                    app.lockout.fail(ip, failure, ROUTE, Some(&fingerprint(&token)), None).await?;
                    return Err(ApiError::new(ErrorCode::Unauthorized, "Invalid or revoked token"));
                }
            },
        };
        if principal.role() == Role::SuperAdmin {
            return Ok(Self);
        }
        // A valid org or agent token: not a guess, but not the master either (Z4), and recorded.
        let refusal = ApiError::new(
            ErrorCode::Forbidden,
            "Super-admin access required. Only the orchestrator token can perform this action.",
        );
        let request_id = parts.extensions.get::<RequestId>().map(|r| r.0.clone()).unwrap_or_default();
        let mut context =
            CommandContext::new(principal.actor(), "metrics", app.clock.now()).with_request_id(request_id);
        if let Some(org) = &principal.org_id {
            context = context.in_org(org.clone());
        }
        let agent = principal.agent_id().map(str::to_string);
        let route = format!("GET {ROUTE}");
        Err(crate::refusals::record(app, &principal, context, &route, agent, None, &refusal).await.unwrap_or(refusal))
    }
}

async fn metrics(_: Scraper, State(app): State<AppState>) -> Result<Response, ApiError> {
    let names: Vec<String> = commguard_projections::all().iter().map(|p| p.name().to_string()).collect();
    let lag = projection_lag(&app.pool, &names).await.map_err(ApiError::internal)?;
    Ok(([(CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], app.metrics.render(&lag)).into_response())
}

/// How many stored events each projection has not applied yet: those past its checkpoint.
pub async fn projection_lag(pool: &PgPool, names: &[String]) -> Result<Vec<(String, i64)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT p.name, (SELECT count(*) FROM events e WHERE e.position > COALESCE(c.position, 0))
         FROM unnest($1::text[]) AS p(name) LEFT JOIN projection_checkpoints c ON c.projection = p.name
         ORDER BY p.name",
    )
    .bind(names)
    .fetch_all(pool)
    .await
}

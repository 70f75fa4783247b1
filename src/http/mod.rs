//! HTTP hardening (docs/http.md#hardening), one module per layer, and the health routes. `harden` wraps a
//! router in the layers in the order they run; route authentication (step 9) is per route.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::{from_fn_with_state, Next};
use axum::response::Response;
use axum::Router;
use ipnet::IpNet;

use crate::config::{Config, Environment};

pub mod admin;
pub mod admin_api;
pub mod alerts_api;
pub mod anomalies_api;
pub mod audit_api;
pub mod body_limit;
pub mod chains_api;
pub mod client_ip;
pub mod compliance_api;
pub mod console;
pub mod cors;
pub mod directory_api;
pub mod erasure_api;
pub mod extract;
pub mod fallback;
pub mod headers;
pub mod health;
pub mod ip_filter;
pub mod openapi;
pub mod params;
pub mod prometheus;
pub mod rate_limit;
pub mod request_id;
pub mod views_api;
pub mod webhook_routes;

pub use client_ip::ClientIp;
pub use request_id::RequestId;

/// Everything the layers need, parsed once from the configuration.
pub struct Hardening {
    pub production: bool,
    pub demo: bool,
    pub trust_proxy: bool,
    pub cors_origins: Vec<String>,
    pub denylist: Vec<IpNet>,
    pub admin_allowlist: Vec<IpNet>,
    pub webhook_allowlist: Vec<IpNet>,
    pub limits: rate_limit::RateLimits,
    pub metrics: Arc<crate::metrics::Metrics>,
}

impl Hardening {
    pub fn new(config: &Config, metrics: Arc<crate::metrics::Metrics>) -> Arc<Self> {
        Arc::new(Self {
            production: config.env == Environment::Production,
            demo: config.demo_mode,
            trust_proxy: config.trust_proxy,
            cors_origins: config.cors_allowed_origins.clone(),
            denylist: config.ip_denylist.clone(),
            admin_allowlist: config.admin_ip_allowlist.clone(),
            webhook_allowlist: config.webhook_ip_allowlist.clone(),
            limits: rate_limit::RateLimits::new(
                config.http_rate_limit_per_ip,
                config.http_rate_limit_global,
                config.webhook_rate_limit_per_ip,
            ),
            metrics,
        })
    }

    /// Drops idle per-IP rate windows (a scheduled job calls this).
    pub fn prune(&self) {
        self.limits.prune();
    }
}

/// Wraps `router` in docs/http.md#hardening steps 1–8: one axum layer runs them all (`pipeline`).
pub fn harden(router: Router, hardening: Arc<Hardening>) -> Router {
    fallback::install(router).layer(from_fn_with_state(hardening, pipeline))
}

/// Steps 1–8, each handing the request on to the next (or answering it) and seeing the response
/// on its way back: written innermost first, so read from the bottom. One layer instead of one per
/// step, because axum's `from_fn` clones every layer below it and boxes a future on each request.
async fn pipeline(State(h): State<Arc<Hardening>>, request: Request, next: Next) -> Response {
    let h = &*h;
    // A webhook POST the allowlist refused (step 6 marks it) skips steps 7 and 8: its handler
    // answers 403 with its body unread, and it takes no rate-limit slot.
    let step7 = async move |r: Request| {
        if r.extensions().get::<webhook_routes::IpRefused>().is_some() {
            return next.run(r).await;
        }
        let step8 = async move |r| body_limit::layer(r, async move |r| next.run(r).await).await;
        rate_limit::layer(h, r, step8).await
    };
    let step6 = async move |r| ip_filter::allowlists(h, r, step7).await;
    let step5 = async move |r| cors::layer(h, r, step6).await;
    let step4 = async move |r| ip_filter::denylist(h, r, step5).await;
    // 3b: TwiML on Twilio routes.
    let step3b = async move |r| webhook_routes::twiml_errors(r, step4).await;
    let step3 = async move |r| headers::layer(h, r, step3b).await;
    let step2 = async move |r| client_ip::layer(h, r, step3).await;
    request_id::layer(request, step2).await
}

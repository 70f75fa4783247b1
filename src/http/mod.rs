//! HTTP hardening (docs/http.md#hardening), one module per layer, and the health routes. `harden` wraps a
//! router in the layers in the order they run; route authentication (step 9) is per route.

use std::sync::Arc;

use axum::middleware::from_fn_with_state;
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

/// Wraps `router` in docs/http.md#hardening steps 1–8. The first layer listed runs first.
pub fn harden(router: Router, hardening: Arc<Hardening>) -> Router {
    let layers = tower::ServiceBuilder::new()
        .layer(axum::middleware::from_fn(request_id::layer)) // 1
        .layer(from_fn_with_state(hardening.clone(), client_ip::layer)) // 2
        .layer(from_fn_with_state(hardening.clone(), headers::layer)) // 3
        .layer(axum::middleware::from_fn(webhook_routes::twiml_errors)) // 3b: TwiML on Twilio routes
        .layer(from_fn_with_state(hardening.clone(), ip_filter::denylist)) // 4
        .layer(from_fn_with_state(hardening.clone(), cors::layer)) // 5
        .layer(from_fn_with_state(hardening.clone(), ip_filter::allowlists)) // 6
        .layer(from_fn_with_state(hardening.clone(), rate_limit::layer)) // 7
        .layer(axum::middleware::from_fn(body_limit::layer)); // 8
    fallback::install(router).layer(layers)
}

//! TEMPORARY stub until the HTTP hardening branch is merged.
use std::sync::Arc;
pub mod health;
pub struct Hardening;
impl Hardening {
    pub fn new(_: &crate::config::Config) -> Arc<Self> {
        Arc::new(Self)
    }
}
pub fn harden(router: axum::Router, _: Arc<Hardening>) -> axum::Router {
    router
}

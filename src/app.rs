//! The application state shared by every handler, and the router with its layers in order.

use std::sync::Arc;
use std::time::Instant;

use sqlx::PgPool;

use crate::clock::Clock;
use crate::config::Config;

#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub clock: Clock,
    pub started: Instant,
}

//! The state every request handler shares: configuration, the store and the per-instance
//! services (identity cache, lockout, MCP sessions, reservations, intents). It sits below every
//! transport and operation that takes it, and imports none of them.

use std::sync::Arc;
use std::time::Instant;

use commguard_domain::agent::Agent;
use commguard_domain::contact::Contact;
use commguard_domain::organization::Organization;
use sqlx::PgPool;

use crate::auth::{Identity, Lockout};
use crate::clock::Clock;
use crate::config::Config;
use crate::crypto;
use crate::ledger::intents::Intents;
use crate::ledger::reads::SendReads;
use crate::ledger::reservations::Reserver;
use crate::metrics::Metrics;
use crate::sessions::Sessions;
use crate::store::pages::FeedPages;
use crate::store::{Framework, Store};

/// A handle on the server's services: one `Arc`, so that every handler, layer and task that
/// takes the state clones one counter (the services themselves hold a dozen).
#[derive(Clone)]
pub struct AppState(Arc<Services>);

impl AppState {
    pub fn new(services: Services) -> Self {
        Self(Arc::new(services))
    }
}

impl std::ops::Deref for AppState {
    type Target = Services;

    fn deref(&self) -> &Services {
        &self.0
    }
}

/// What `AppState` shares.
pub struct Services {
    pub config: Arc<Config>,
    pub pool: PgPool,
    pub store: Store,
    pub clock: Clock,
    pub started: Instant,
    pub identity: Arc<Identity>,
    pub lockout: Arc<Lockout>,
    pub sessions: Arc<Sessions>,
    pub orgs: Arc<Framework<Organization>>,
    pub agents: Arc<Framework<Agent>>,
    pub contacts: Arc<Framework<Contact>>,
    /// The providers' HTTP client (one connection pool for every send).
    pub http: reqwest::Client,
    /// `CREDENTIALS_ENCRYPTION_KEY` first, then the previous key (decrypt-only).
    pub credential_keys: Arc<Vec<crypto::Key>>,
    /// What a send reads before it decides (agent, org, recipient), batched.
    pub send_reads: SendReads,
    /// Tool-limit reservations, batched (docs/limits.md).
    pub reserver: Reserver,
    /// This instance's outbound intents (recorded before every provider call).
    pub intents: Arc<Intents>,
    /// This instance's Prometheus metrics (`/metrics`), shared with the hardening layers.
    pub metrics: Arc<Metrics>,
    /// The auditor feed's pages, the next one read ahead (`store::pages`).
    pub feed_pages: Arc<FeedPages>,
}

impl AppState {
    /// Runs `work`, given its own handle on the state, in a task of its own and to its end: a
    /// caller that goes away (its future dropped when its client hangs up — streamable HTTP runs a
    /// tool in the request's handler) cannot stop it half-way. For work whose outcome must be
    /// recorded once it has begun: a provider paid or a person reached (outbound, provisioning), a
    /// commit that its event must follow (erasure, provider registration).
    pub async fn to_the_end<T, F, Fut>(&self, work: F) -> Result<T, crate::error::ApiError>
    where
        F: FnOnce(AppState) -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::error::ApiError>> + Send + 'static,
        T: Send + 'static,
    {
        match tokio::spawn(work(self.clone())).await {
            Ok(done) => done,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(crate::error::ApiError::internal(format!("a task that had to run to its end stopped: {e}"))),
        }
    }
}

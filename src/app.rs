//! Start-up and the router: opens the database (the embedded cluster when `DATABASE_URL` is
//! unset), applies migrations, loads keys, starts the projection runners, and serves HTTP with
//! the hardening layers of `http::harden` around every route.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::auth::{Identity, Lockout};
use crate::clock::Clock;
use crate::config::{Config, Environment, LogFormat};
use crate::crypto::{self, DataKeys};
use crate::directory::commands;
use crate::http::{self, Hardening};
use crate::identity_watch;
use crate::jobs::{Jobs, RetentionJob};
use crate::mcp;
use crate::sessions::Sessions;
use crate::state::AppState;
use crate::store::embedded::{EmbeddedError, EmbeddedPostgres, Released};
use crate::store::{self, runner, Store};

/// How long in-flight requests may take to finish after SIGTERM (docs/cli.md).
const DRAIN: Duration = Duration::from_secs(10);
/// How long a client may take to send a request's headers (slow clients hold a connection and a
/// task each; see `http::body_limit::BODY_READ_TIMEOUT` for bodies).
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Embedded(#[from] EmbeddedError),
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error(transparent)]
    Crypto(#[from] crypto::CryptoError),
    #[error("HOST and PORT: cannot listen on {0}: {1}")]
    Listen(String, std::io::Error),
    #[error("server: {0}")]
    Serve(std::io::Error),
    #[error("start-up: {0}")]
    Setup(String),
    #[error("scheduled jobs: {0}")]
    Jobs(tokio_cron_scheduler::JobSchedulerError),
}

/// Everything a command needs: configuration, database, store. `shutdown` stops what it started.
pub struct Runtime {
    pub config: Arc<Config>,
    pub store: Store,
    credential_keys: Arc<Vec<crypto::Key>>,
    pub clock: Clock,
    embedded: Option<EmbeddedPostgres>,
}

impl Runtime {
    pub async fn open(config: Config) -> Result<Self, StartError> {
        let (url, embedded) = match &config.database_url {
            Some(url) => (url.clone(), None),
            None => {
                let (dir, bin) = (config.data_dir.clone(), config.pg_bin_dir.clone());
                let pg = tokio::task::spawn_blocking(move || EmbeddedPostgres::start(&dir, bin.as_deref()))
                    .await
                    .expect("the embedded start task does not panic")?;
                tracing::info!(socket = %pg.socket_dir().display(), "embedded PostgreSQL running");
                (pg.url(), Some(pg))
            }
        };
        let opened = Self::open_database(&config, &url).await;
        let production = config.env == Environment::Production;
        let credential_key = crypto::keys::load_or_generate(
            "CREDENTIALS_ENCRYPTION_KEY",
            config.credentials_encryption_key,
            &config.data_dir,
            production,
        );
        match (opened, credential_key) {
            (Ok(store), Ok(key)) => {
                if let Some(previous) = &config.credentials_encryption_key_previous {
                    // Rows under the previous key are rewritten under the current one (docs/configuration.md).
                    match crate::providers::credentials::reencrypt(store.pool(), &key, previous).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(rows = n, "provider credentials re-encrypted under the current key"),
                        Err(e) => tracing::error!(error = %e.message, "provider credentials not re-encrypted"),
                    }
                }
                let keys = std::iter::once(key).chain(config.credentials_encryption_key_previous).collect();
                Ok(Self {
                    config: Arc::new(config),
                    store,
                    credential_keys: Arc::new(keys),
                    clock: Clock::default(),
                    embedded,
                })
            }
            (opened, key) => {
                let e = match (opened, key) {
                    (Err(e), _) => e,
                    (_, Err(e)) => StartError::from(e),
                    (Ok(_), Ok(_)) => unreachable!("handled above"),
                };
                if let Some(pg) = embedded {
                    release(pg).await;
                }
                Err(e)
            }
        }
    }

    async fn open_database(config: &Config, url: &str) -> Result<Store, StartError> {
        let pool = store::connect(url, config.database_max_connections).await?;
        store::MIGRATOR.run(&pool).await?;
        let production = config.env == Environment::Production;
        let data_key = crypto::keys::load_or_generate(
            "DATA_ENCRYPTION_KEY",
            config.data_encryption_key,
            &config.data_dir,
            production,
        )?;
        Ok(Store::new(pool, Arc::new(DataKeys::new(&data_key))))
    }

    /// Closes the pool and gives up this process's use of the embedded cluster, which stops it
    /// if no other process uses it.
    pub async fn shutdown(self) {
        self.store.pool().close().await;
        if let Some(pg) = self.embedded {
            release(pg).await;
        }
    }

    /// The state of one server: caches and sessions are per instance, everything else is shared.
    pub fn state(&self) -> AppState {
        let config = self.config.clone();
        let store = self.store.clone();
        let master = config.master_token.as_ref().map(|s| s.0.as_str());
        let metrics = Arc::new(crate::metrics::Metrics::new());
        metrics.show_at_zero(
            crate::mcp::tools::names(),
            &crate::anomaly::RULES,
            &crate::webhooks::ROUTES,
            &crate::webhooks::REASONS,
        );
        AppState::new(crate::state::Services {
            pool: store.pool().clone(),
            identity: Arc::new(Identity::new(store.pool().clone(), master, config.demo_mode, self.clock.clone())),
            lockout: Arc::new(Lockout::new(&config, store.clone(), self.clock.clone(), metrics.clone())),
            sessions: Arc::new(Sessions::new(
                config.mcp_max_sessions as usize,
                Duration::from_secs(config.mcp_session_idle_seconds),
                store.clone(),
                self.clock.clone(),
            )),
            credential_keys: self.credential_keys.clone(),
            send_reads: crate::ledger::reads::SendReads::start(store.kept().clone()),
            reserver: crate::ledger::reservations::Reserver::start(store.kept().clone()),
            intents: crate::ledger::intents::Intents::start(
                store.clone(),
                Duration::from_secs(config.outbound_intent_lease_seconds),
            ),
            http: reqwest::Client::builder()
                .timeout(crate::providers::TIMEOUT)
                .build()
                .expect("the HTTP client builds with its default TLS roots"),
            orgs: Arc::new(store.framework(())),
            agents: Arc::new(store.framework(())),
            contacts: Arc::new(store.framework(())),
            clock: self.clock.clone(),
            started: Instant::now(),
            metrics,
            feed_pages: Arc::new(crate::store::pages::FeedPages::new(store.pool().clone())),
            store,
            config,
        })
    }
}

/// Gives the embedded cluster back (`EmbeddedPostgres::release`): stopped only by its last user.
async fn release(pg: EmbeddedPostgres) {
    match tokio::task::spawn_blocking(move || pg.release()).await {
        Ok(Ok(Released::Stopped)) => tracing::info!("embedded PostgreSQL stopped"),
        Ok(Ok(Released::InUse)) => tracing::info!("embedded PostgreSQL left running: another process uses it"),
        Ok(Err(e)) => tracing::error!(error = %e, "embedded PostgreSQL did not stop cleanly"),
        Err(e) => tracing::error!(error = %e, "embedded PostgreSQL stop task failed"),
    }
}

/// Every route, inside the hardening pipeline.
pub fn router(state: AppState, hardening: Arc<Hardening>) -> Router {
    let routes = Router::new()
        .merge(http::health::routes())
        .merge(mcp::routes())
        .merge(http::admin_api::routes(state.clone(), mcp::tools::input_schema))
        .merge(http::console::routes())
        .merge(http::prometheus::routes())
        .merge(crate::webhooks::routes())
        .with_state(state);
    http::harden(routes, hardening)
}

/// A running server: its address, and handles to stop it and wait for it.
pub struct Server {
    pub addr: SocketAddr,
    stop: Arc<Notify>,
    task: JoinHandle<Result<(), std::io::Error>>,
    runners: Vec<JoinHandle<()>>,
    jobs: Jobs,
    /// The state its requests are served with.
    state: AppState,
}

impl Server {
    /// Serves `rt` on `listener`, with the projection runners, until `stop` is called.
    pub async fn start(rt: &Runtime, listener: TcpListener) -> Result<Self, StartError> {
        let addr = listener.local_addr().map_err(|e| StartError::Listen("socket".into(), e))?;
        let stop = Arc::new(Notify::new());
        let state = rt.state();
        let hardening = Hardening::new(&state.config, state.metrics.clone());
        let retention =
            RetentionJob { store: rt.store.clone(), config: state.config.clone(), clock: state.clock.clone() };
        let jobs = Jobs::start(hardening.clone(), retention).await.map_err(StartError::Jobs)?;
        let runners =
            runner::spawn_all(rt.store.kept().clone(), commguard_projections::all(), rt.store.appended(), stop.clone());
        commands::ensure_default_org(&state).await.map_err(|e| StartError::Setup(e.message))?;
        let mut tasks = vec![tokio::spawn(identity_watch::run(
            state.pool.clone(),
            state.intents.instance(),
            state.identity.clone(),
            state.lockout.clone(),
            state.sessions.clone(),
            rt.store.keystore().clone(),
        ))];
        let sessions = state.sessions.clone();
        let config_idle = state.config.mcp_session_idle_seconds;
        tasks.push(tokio::spawn(async move {
            // Often enough that a session never outlives its idle limit by more than half of it.
            let every = Duration::from_secs(config_idle / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
            let mut every = tokio::time::interval(every);
            loop {
                every.tick().await;
                sessions.expire_idle().await;
            }
        }));
        let (pool, clock, lockout) = (state.pool.clone(), state.clock.clone(), state.lockout.clone());
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                if let Err(e) = lockout.prune().await {
                    tracing::warn!(error = %e, "old brute-force counts not pruned");
                }
                if let Err(e) = crate::ledger::reservations::prune_recent(&pool, clock.now()).await {
                    tracing::warn!(error = %e, "old rate-window rows not pruned");
                }
            }
        }));
        tasks.push(tokio::spawn(state.intents.clone().run()));
        // Calls Twilio had not priced when they ended (migration 0035).
        let pricing = state.clone();
        tasks.push(tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(30));
            loop {
                every.tick().await;
                if let Err(e) = crate::webhooks::price_unpriced_calls(&pricing).await {
                    tracing::warn!(error = %e, "unpriced calls not priced this round");
                }
            }
        }));
        // The detector's task also prunes old anomaly windows, so it runs when detection is off.
        tasks.push(tokio::spawn(crate::anomaly::run(state.clone())));
        let runners = runners.into_iter().chain(tasks).collect();
        let app = router(state.clone(), hardening);
        // Registered now, so a `stop` right after `start` is not lost.
        let mut stopping = Box::pin(stop.clone().notified_owned());
        stopping.as_mut().enable();
        let task = tokio::spawn(serve(listener, app, stopping));
        Ok(Self { addr, stop, task, runners, jobs, state })
    }

    /// The state this server's requests are served with: its caches, its lockout suspects, its
    /// sessions (`Runtime::state` makes a new one).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Stops accepting, lets in-flight requests finish (at most `DRAIN`), stops the runners.
    pub async fn stop(self) -> Result<(), StartError> {
        self.stop.notify_waiters();
        // Open event streams would hold the graceful shutdown for the whole drain period.
        self.state.sessions.close_all("shutdown").await;
        let served = tokio::time::timeout(DRAIN, self.task).await;
        for runner in self.runners {
            runner.abort();
        }
        self.jobs.stop().await;
        // Intents still open (background retries) become reconcilable by others at once.
        self.state.intents.retire().await;
        match served {
            Ok(Ok(result)) => result.map_err(StartError::Serve),
            Ok(Err(join)) => Err(StartError::Serve(std::io::Error::other(join))),
            Err(_) => {
                tracing::warn!("requests still running after {}s; stopping anyway", DRAIN.as_secs());
                Ok(())
            }
        }
    }
}

/// Serves HTTP/1.1 on `listener` until `stopping` completes, then lets open connections finish
/// (the caller bounds the wait). Like `axum::serve`, plus what it does not expose: a client has
/// `HEADER_READ_TIMEOUT` to send a request's headers (an idle kept-alive connection as long to
/// start its next request), so connections that trickle their headers in are closed; bodies have
/// their own deadline (`http::body_limit`). The socket peer is the request's `ConnectInfo`.
async fn serve(
    listener: TcpListener,
    app: Router,
    mut stopping: Pin<Box<tokio::sync::futures::OwnedNotified>>,
) -> Result<(), std::io::Error> {
    use hyper_util::rt::{TokioIo, TokioTimer};

    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new()).header_read_timeout(HEADER_READ_TIMEOUT);
    // Connections hold a receiver each: `closing` tells them to finish, `closed` resolves once
    // every one of them has.
    let (closing, closing_rx) = tokio::sync::watch::channel(());
    let (closed, closed_rx) = tokio::sync::watch::channel(());
    loop {
        let (stream, peer) = tokio::select! {
            _ = stopping.as_mut() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    accept_failed(e).await;
                    continue;
                }
            },
        };
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            request.extensions_mut().insert(ConnectInfo(peer));
            tower::ServiceExt::oneshot(app.clone(), request.map(axum::body::Body::new))
        });
        let connection = http.serve_connection(TokioIo::new(stream), service);
        let (mut closing, closed) = (closing_rx.clone(), closed_rx.clone());
        tokio::spawn(async move {
            let mut connection = std::pin::pin!(connection);
            tokio::select! {
                _ = connection.as_mut() => {}
                _ = closing.changed() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
            drop(closed);
        });
    }
    drop(listener);
    let _ = closing.send(());
    drop(closed_rx);
    closed.closed().await;
    Ok(())
}

/// Per-connection accept errors (the peer gave up) are nothing; others (out of descriptors)
/// are logged and accepting pauses for a moment, as `axum::serve` does.
async fn accept_failed(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::error!(error = %e, "accept failed");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// `commguard serve`: listens on HOST:PORT until SIGINT or SIGTERM.
pub async fn serve_until_signal(rt: &Runtime) -> Result<(), StartError> {
    // The handlers are installed before anything says the server is up: a SIGTERM sent as soon
    // as it listens must drain it, not kill it.
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("installing a SIGTERM handler succeeds");
    let interrupt = tokio::signal::ctrl_c();
    let bind = format!("{}:{}", rt.config.host, rt.config.port);
    let listener = TcpListener::bind(&bind).await.map_err(|e| StartError::Listen(bind.clone(), e))?;
    let server = Server::start(rt, listener).await?;
    tracing::info!(addr = %server.addr, "commguard listening");
    tokio::select! {
        _ = interrupt => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
    server.stop().await
}

/// Logs per `LOG_FORMAT` (JSON in production, text in development), filtered by `RUST_LOG`,
/// then says once what this development setup runs without.
pub fn init_tracing(config: &Config) {
    use tracing_subscriber::EnvFilter;
    // Checked when the configuration was read (`Config::log_filter`), so never silently replaced.
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi);
    let _ = match config.log_format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Text => builder.try_init(),
    };
    for warning in config.warnings() {
        tracing::warn!("{warning}");
    }
}

#[cfg(test)]
mod tests {
    use crate::http::admin_api::described;
    use crate::http::openapi::{document, Body, Op};

    fn ops() -> Vec<Op> {
        described().1
    }

    // The admin document's tool bodies are the MCP tools' schemas: tested here, where both are visible.
    #[test]
    fn every_route_is_described_with_its_parameters_and_schemas() {
        let ops = ops();
        let doc = document(&ops, crate::mcp::tools::input_schema);
        assert_eq!(doc["openapi"], "3.1.0");
        let paths = doc["paths"].as_object().unwrap();
        assert_eq!(paths.values().map(|p| p.as_object().unwrap().len()).sum::<usize>(), ops.len());
        assert_eq!(doc["paths"]["/admin/api/orgs/{orgId}/approve"]["post"]["parameters"][0]["name"], "orgId");
        let limits = &doc["paths"]["/admin/api/limits"]["get"]["parameters"];
        assert_eq!((limits[0]["name"].as_str(), limits[0]["required"].as_bool()), (Some("agentId"), Some(true)));
        // A tool route's body is the tool's own input schema.
        let dnc = &doc["paths"]["/admin/api/agents/{agentId}/limits"]["post"]["requestBody"]["content"]
            ["application/json"]["schema"];
        assert_eq!(*dnc, crate::mcp::tools::input_schema("comms_set_agent_limits").unwrap());
        // Every reply is a defined component, derived from the handler's own reply type.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for op in &ops {
            let reply = &doc["paths"][op.path][op.method]["responses"]["200"]["content"]["application/json"]["schema"];
            let name = reply["$ref"].as_str().and_then(|r| r.strip_prefix("#/components/schemas/"));
            assert!(name.is_some_and(|n| schemas.contains_key(n)), "{} {}: {reply}", op.method, op.path);
            if let Body::Tool(name) = op.doc.body {
                assert!(crate::mcp::tools::input_schema(name).is_some(), "{name} is a tool");
            }
        }
        // The feed's envelope is the type the handler serializes: its fields, required, in camelCase.
        let envelope = &schemas["Envelope"];
        let required: Vec<&str> =
            envelope["required"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect();
        for field in ["position", "eventId", "aggregateType", "sequence", "payload", "prevHash", "hash", "redactions"] {
            assert!(required.contains(&field), "{field} in {required:?}");
        }
        assert!(!required.contains(&"metadata"), "metadata is raw=true only");
        assert_eq!(schemas["AgentAdminView"]["properties"]["limits"]["$ref"], "#/components/schemas/LimitsView");
    }
}

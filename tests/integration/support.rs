//! Test support: a fresh database per test, configurations, servers on port 0, and a small
//! aggregate (`Ledger`) for exercising the event store without the business domain.

use std::collections::HashMap;
use std::path::PathBuf;

use commguard::app::{Runtime, Server};
use commguard::config::Config;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::net::TcpListener;
use uuid::Uuid;

pub mod ledger;

/// The cluster scripts/test.sh started (or the one DATABASE_URL names).
pub fn admin_url() -> String {
    std::env::var("DATABASE_URL").expect("DATABASE_URL is set by scripts/test.sh; run the suite through it")
}

/// A fresh database, dropped with the cluster at the end of the run.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

/// Warnings and errors of the servers a test runs in its own process, in the test's output: a
/// test that fails shows them (a reply says only `internal` and a request id), one that passes
/// does not. Once per process; every test that makes a database or a configuration calls it.
pub fn log_warnings_to_test_output() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new("warn"))
            .with_ansi(false)
            .with_test_writer()
            .try_init();
    });
}

impl TestDb {
    pub async fn new() -> Self {
        log_warnings_to_test_output();
        let admin = PgPool::connect(&admin_url()).await.expect("the test cluster accepts connections");
        let name = format!("t_{}", Uuid::new_v4().simple());
        sqlx::query(&format!("CREATE DATABASE {name}")).execute(&admin).await.expect("create test database");
        admin.close().await;
        let url = with_database(&admin_url(), &name);
        Self { name, url }
    }

    pub async fn pool(&self) -> PgPool {
        sqlx::postgres::PgPoolOptions::new().max_connections(4).connect(&self.url).await.expect("connect test database")
    }
}

/// `url` with its database name replaced by `database`.
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let base = match base.rfind('/') {
        Some(slash) if slash > "postgres://".len() => &base[..slash],
        _ => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// A configuration read from `vars` only (nothing from the process environment).
pub fn config(vars: &[(&str, &str)]) -> Config {
    log_warnings_to_test_output();
    let vars: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    Config::from_lookup(|name| vars.get(name).cloned()).expect("test configuration is valid")
}

/// A data directory for one test, traversable by the `postgres` user when tests run as root.
pub fn data_dir() -> tempfile::TempDir {
    let dir = tempfile::Builder::new().prefix("commguard-data-").tempdir().expect("temp dir");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
    dir
}

/// A development configuration over `db` with a fixed data key.
pub fn dev_config(db: &TestDb, data_dir: &std::path::Path, extra: &[(&str, &str)]) -> Config {
    let dir = data_dir.display().to_string();
    let mut vars = vec![
        ("DATABASE_URL", db.url.as_str()),
        ("COMMGUARD_DATA_DIR", dir.as_str()),
        ("DATA_ENCRYPTION_KEY", "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"),
        ("CREDENTIALS_ENCRYPTION_KEY", "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f"),
    ];
    vars.extend_from_slice(extra);
    config(&vars)
}

/// A real server on 127.0.0.1, port 0.
pub struct TestServer {
    pub rt: Runtime,
    pub server: Option<Server>,
    pub base: String,
    pub http: reqwest::Client,
    _data: tempfile::TempDir,
}

impl TestServer {
    pub async fn start(db: &TestDb, extra: &[(&str, &str)]) -> Self {
        let data = data_dir();
        let rt = Runtime::open(dev_config(db, data.path(), extra)).await.expect("runtime opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let server = Server::start(&rt, listener).await.expect("server starts");
        let base = format!("http://{}", server.addr);
        Self { rt, server: Some(server), base, http: reqwest::Client::new(), _data: data }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.stop().await.expect("server stops cleanly");
        }
        self.rt.shutdown().await;
    }
}

/// The path of the built `commguard` binary.
pub fn binary() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_commguard"))
}

/// Waits until `n` events are visible below the horizon. The horizon is cluster-wide: a
/// transaction in flight in any database of the cluster (other tests run in parallel) holds
/// readers back until it ends, so reads right after a commit must allow for it.
pub async fn wait_visible(pool: &PgPool, n: i64) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let visible = commguard::store::feed::count_after(pool, 0, None).await.expect("count visible events");
        if visible >= n {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "only {visible} of {n} events became visible");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
}

/// An MCP session over Streamable HTTP for one token.
pub struct McpSession {
    http: reqwest::Client,
    base: String,
    token: String,
    id: String,
}

impl McpSession {
    pub async fn open(server: &TestServer, token: &str) -> Self {
        Self::open_at(&server.http, &server.base, token).await
    }

    /// A session that claims the agent `agent_id` (`X-Agent-Id`): the tools' default agent.
    pub async fn open_claiming(server: &TestServer, token: &str, agent_id: &str) -> Self {
        Self::opened(&server.http, &server.base, token, Some(agent_id)).await
    }

    /// A session with the server at `base` (e.g. a `commguard serve` process).
    pub async fn open_at(http: &reqwest::Client, base: &str, token: &str) -> Self {
        Self::opened(http, base, token, None).await
    }

    async fn opened(http: &reqwest::Client, base: &str, token: &str, claim: Option<&str>) -> Self {
        let mut init = http
            .post(format!("{base}/mcp"))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18"}}));
        if let Some(agent_id) = claim {
            init = init.header("x-agent-id", agent_id);
        }
        let init = init.send().await.unwrap();
        assert_eq!(init.status(), 200);
        let id = init.headers()["mcp-session-id"].to_str().unwrap().to_string();
        Self { http: http.clone(), base: base.to_string(), token: token.into(), id }
    }

    /// (isError, the result's JSON).
    pub async fn call(&self, tool: &str, args: Value) -> (bool, Value) {
        let reply: Value = self
            .http
            .post(format!("{}/mcp", self.base))
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.id)
            .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": args}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let result = &reply["result"];
        (
            result["isError"].as_bool().unwrap(),
            serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap(),
        )
    }

    /// `call`, or `None` when no answer came (the server is gone or its reply is not a result).
    pub async fn try_call(&self, tool: &str, args: Value) -> Option<(bool, Value)> {
        let reply: Value = self
            .http
            .post(format!("{}/mcp", self.base))
            .bearer_auth(&self.token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &self.id)
            .json(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": tool, "arguments": args}}))
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()?;
        let result = &reply["result"];
        Some((result["isError"].as_bool()?, serde_json::from_str(result["content"][0]["text"].as_str()?).ok()?))
    }

    pub async fn ok(&self, tool: &str, args: Value) -> Value {
        let (is_error, value) = self.call(tool, args).await;
        assert!(!is_error, "{tool}: {value}");
        value
    }
}

/// A sandbox org with one agent, made through the tools as a caller would make it.
pub struct Provisioned {
    pub org_id: String,
    /// The org's admin token.
    pub admin: String,
    pub agent_id: String,
    pub agent_token: String,
    /// The agent's number, when it has a phone.
    pub number: Option<String>,
}

/// Creates org `slug` (A2P registered; `settings` as given) with the master token `master`, and
/// provisions one agent named `display_name` with `capabilities`.
pub async fn provision(
    s: &TestServer,
    master: &str,
    slug: &str,
    settings: Value,
    display_name: &str,
    capabilities: Value,
) -> Provisioned {
    let master = McpSession::open(s, master).await;
    let org = master
        .ok(
            "comms_create_organization",
            json!({"name": slug, "slug": slug, "a2pRegistered": true, "settings": settings}),
        )
        .await;
    let admin = org["adminToken"].as_str().unwrap().to_string();
    let agent = McpSession::open(s, &admin)
        .await
        .ok("comms_provision_channels", json!({"displayName": display_name, "capabilities": capabilities}))
        .await;
    Provisioned {
        org_id: org["orgId"].as_str().unwrap().into(),
        admin,
        agent_id: agent["agentId"].as_str().unwrap().into(),
        agent_token: agent["securityToken"].as_str().unwrap().into(),
        number: agent["channels"]["phone"].as_str().map(str::to_string),
    }
}

/// The fixed development keys of `dev_config`, for processes started outside it.
pub const DATA_KEY_HEX: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";
pub const CREDENTIALS_KEY_HEX: &str = "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f";

/// A server started with `config` (a `dev_config` that the test may have changed, e.g. a
/// shorter first retention delay, which no variable sets).
impl TestServer {
    pub async fn start_with(db: &TestDb, extra: &[(&str, &str)], change: impl FnOnce(&mut Config)) -> Self {
        let data = data_dir();
        let mut config = dev_config(db, data.path(), extra);
        change(&mut config);
        let rt = Runtime::open(config).await.expect("runtime opens");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let server = Server::start(&rt, listener).await.expect("server starts");
        let base = format!("http://{}", server.addr);
        Self { rt, server: Some(server), base, http: reqwest::Client::new(), _data: data }
    }
}

/// `commguard <args>` on `db` with the development keys: (exit code, stdout, stderr).
pub fn commguard_cli(db: &TestDb, args: &[&str], extra: &[(&str, &str)]) -> (Option<i32>, String, String) {
    let data = data_dir();
    let mut cmd = std::process::Command::new(binary());
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("COMMGUARD_DATA_DIR", data.path())
        .env("DATA_ENCRYPTION_KEY", DATA_KEY_HEX)
        .env("CREDENTIALS_ENCRYPTION_KEY", CREDENTIALS_KEY_HEX);
    for (k, v) in extra {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("commguard runs");
    (out.status.code(), String::from_utf8_lossy(&out.stdout).into(), String::from_utf8_lossy(&out.stderr).into())
}

/// `commguard audit verify` on `db` prints OK and exits 0.
pub fn assert_audit_verifies(db: &TestDb, after: &str) {
    let (code, stdout, stderr) = commguard_cli(db, &["audit", "verify"], &[]);
    assert_eq!(code, Some(0), "audit verify after {after}: {stdout}{stderr}");
    assert!(stdout.starts_with("OK"), "audit verify after {after}: {stdout}");
}

/// A `commguard serve` process on `db` (127.0.0.1, a free port) whose whole log output, stdout
/// and stderr, goes to `log`. Killed when dropped.
pub struct ServeProcess {
    child: std::process::Child,
    pub base: String,
    pub http: reqwest::Client,
    _data: tempfile::TempDir,
}

impl ServeProcess {
    pub async fn start(db: &TestDb, vars: &[(&str, &str)], log: &std::path::Path) -> Self {
        let data = data_dir();
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log file");
        let mut cmd = std::process::Command::new(binary());
        cmd.arg("serve")
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("DATABASE_URL", &db.url)
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("COMMGUARD_DATA_DIR", data.path())
            .env("DATA_ENCRYPTION_KEY", DATA_KEY_HEX)
            .env("CREDENTIALS_ENCRYPTION_KEY", CREDENTIALS_KEY_HEX);
        for (k, v) in vars {
            cmd.env(k, v);
        }
        let child = cmd
            .stdout(std::process::Stdio::from(file.try_clone().unwrap()))
            .stderr(std::process::Stdio::from(file))
            .spawn()
            .expect("commguard serve starts");
        let me = Self { child, base: format!("http://127.0.0.1:{port}"), http: reqwest::Client::new(), _data: data };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            if let Ok(r) = me.http.get(me.url("/health")).send().await {
                if r.status().is_success() {
                    return me;
                }
            }
            assert!(std::time::Instant::now() < deadline, "{} did not become healthy", me.base);
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// SIGTERM, then waits for the process to end (its last log lines are written).
    pub fn stop(mut self) {
        let _ = std::process::Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while self.child.try_wait().ok().flatten().is_none() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A form POST to `url`, signed as Twilio signs it for the public address `public` (the
/// deployment's `WEBHOOK_BASE_URL` plus the path) with `auth_token`, or carrying `signature` as
/// given: (status, body).
pub async fn twilio_form(
    http: &reqwest::Client,
    url: &str,
    public: &str,
    auth_token: &str,
    params: &[(&str, &str)],
    signature: Option<String>,
) -> (u16, String) {
    let owned: Vec<(String, String)> = params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let signature =
        signature.unwrap_or_else(|| commguard::webhooks::signature::twilio_expected(auth_token, public, &owned));
    let body: String = form_urlencoded::Serializer::new(String::new()).extend_pairs(params).finish();
    let r = http
        .post(url)
        .header("content-type", "application/x-www-form-urlencoded")
        .header("x-twilio-signature", signature)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    (status, r.text().await.unwrap())
}

/// Approves org `org_id` (KYC) on the server at `base` as the super-admin `master`: its agents may
/// then use real providers.
pub async fn approve_org(http: &reqwest::Client, base: &str, master: &str, org_id: &str) {
    let approve = http
        .post(format!("{base}/admin/api/orgs/{org_id}/approve"))
        .bearer_auth(master)
        .json(&json!({"kycNote": "KYC verified"}))
        .send()
        .await
        .unwrap();
    assert_eq!(approve.status(), 200);
}

/// An agent's actions today as the limit counters see them.
pub async fn counted_today(pool: &PgPool, agent_id: &str) -> i64 {
    sqlx::query_scalar(
        "SELECT COALESCE(SUM(actions), 0)::bigint FROM usage_counters WHERE scope = 'agent' AND key = $1 AND period = 'day'",
    )
    .bind(agent_id)
    .fetch_one(pool)
    .await
    .unwrap()
}

/// Outbound intents not settled yet, of every instance.
pub async fn open_intents(pool: &PgPool) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbound_intents").fetch_one(pool).await.unwrap()
}

/// The provenance of the last `ActionRefused` stored.
pub async fn last_refusal_provenance(pool: &sqlx::PgPool) -> Value {
    sqlx::query_scalar(
        "SELECT metadata::jsonb -> 'provenance' FROM events WHERE event_type = 'ActionRefused' ORDER BY position DESC LIMIT 1",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

/// The checks a provenance lists, in order, as (check, result).
pub fn listed_checks(provenance: &Value) -> Vec<(&str, &str)> {
    provenance["checks"]
        .as_array()
        .expect("a provenance lists its checks")
        .iter()
        .map(|c| (c["check"].as_str().unwrap(), c["result"].as_str().unwrap()))
        .collect()
}

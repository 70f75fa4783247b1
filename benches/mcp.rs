//! MCP benchmark client (run by `scripts/bench.sh mcp`, not a test) against a running server at
//! `--url`: N Streamable HTTP sessions call for T seconds, in three phases measured the same way
//! — `GET /health` (the HTTP baseline: hardening layers, no auth), JSON-RPC `ping` (baseline +
//! bearer auth, session lookup, principal check, routing) and `tools/call comms_ping` (+ the tool,
//! which reads the org from Postgres) — then holds `--idle` legacy SSE sessions open. Prints one
//! JSON line; the server's RSS is read by the script. `--mode send` measures sends, `--mode
//! as-of-setup` / `--mode as-of` the admin API's point-in-time views (`scripts/bench.sh as-of`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

fn num(name: &str, default: u64) -> u64 {
    arg(name).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[derive(Clone, Copy)]
enum Phase {
    Health,
    RpcPing,
    ToolPing,
    Send,
}

async fn open_session(client: &reqwest::Client, url: &str, token: &str) -> String {
    let init = json!({"jsonrpc": "2.0", "id": 0, "method": "initialize", "params": {
        "protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "bench", "version": "1"}}});
    let r = client
        .post(format!("{url}/mcp"))
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&init)
        .send()
        .await
        .expect("initialize");
    assert!(r.status().is_success(), "initialize: {}", r.status());
    r.headers().get("mcp-session-id").expect("session id").to_str().unwrap().to_string()
}

/// The send phase cycles over this many recipients, each of whom consented beforehand
/// (docs/compliance.md#consent: without consent every send would be refused).
const RECIPIENTS: u64 = 500;

fn recipient(n: u64) -> String {
    format!("+1202555{:04}", n % RECIPIENTS)
}

/// One request of `phase` in `session`; whether it succeeded.
async fn request(client: &reqwest::Client, url: &str, token: &str, session: &str, phase: Phase, id: u64) -> bool {
    let ok = match phase {
        Phase::Health => client.get(format!("{url}/health")).send().await.map(|r| r.status().is_success()),
        Phase::RpcPing | Phase::ToolPing | Phase::Send => {
            let body = match phase {
                Phase::RpcPing => json!({"jsonrpc": "2.0", "id": id, "method": "ping"}),
                Phase::Send => json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                            "params": {"name": "comms_send_message", "arguments": {
                                "to": recipient(id), "body": "Your order has shipped."}}}),
                _ => json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                            "params": {"name": "comms_ping", "arguments": {}}}),
            };
            let sent = client
                .post(format!("{url}/mcp"))
                .bearer_auth(token)
                .header("accept", "application/json, text/event-stream")
                .header("mcp-session-id", session)
                .header("mcp-protocol-version", "2025-06-18")
                .json(&body)
                .send()
                .await;
            match (phase, sent) {
                (Phase::Send, Ok(r)) => r.text().await.map(|t| !t.contains("\"isError\":true")),
                (_, r) => r.map(|r| r.status().is_success()),
            }
        }
    };
    ok.unwrap_or(false)
}

/// Each call's start (µs after `epoch`) and latency (µs).
async fn worker(
    client: reqwest::Client,
    url: String,
    token: String,
    phase: Phase,
    epoch: Instant,
    until: Instant,
) -> Vec<(u64, u32)> {
    let session = open_session(&client, &url, &token).await;
    let mut calls = Vec::new();
    let mut id = 1u64;
    while Instant::now() < until {
        id += 1;
        let started = Instant::now();
        assert!(request(&client, &url, &token, &session, phase, id).await, "a benchmark request failed");
        calls.push((started.duration_since(epoch).as_micros() as u64, started.elapsed().as_micros() as u32));
    }
    calls
}

/// Alternates `GET /health` and JSON-RPC `ping` in each session, so both see the same load;
/// returns their latencies (µs).
async fn paired_worker(client: reqwest::Client, url: String, token: String, until: Instant) -> (Vec<u32>, Vec<u32>) {
    let session = open_session(&client, &url, &token).await;
    let (mut health, mut ping) = (Vec::new(), Vec::new());
    let mut id = 1u64;
    while Instant::now() < until {
        id += 1;
        let started = Instant::now();
        assert!(request(&client, &url, &token, &session, Phase::Health, id).await, "health failed");
        health.push(started.elapsed().as_micros() as u32);
        let started = Instant::now();
        assert!(request(&client, &url, &token, &session, Phase::RpcPing, id).await, "ping failed");
        ping.push(started.elapsed().as_micros() as u32);
    }
    (health, ping)
}

async fn paired(url: &str, token: &str, sessions: u64, seconds: u64) -> Value {
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    paired_worker(client.clone(), url.into(), token.into(), Instant::now() + Duration::from_millis(300)).await;
    let until = Instant::now() + Duration::from_secs(seconds);
    let tasks: Vec<_> =
        (0..sessions).map(|_| tokio::spawn(paired_worker(client.clone(), url.into(), token.into(), until))).collect();
    let (mut health, mut ping) = (Vec::new(), Vec::new());
    for t in tasks {
        let (h, p) = t.await.unwrap();
        health.extend(h);
        ping.extend(p);
    }
    health.sort_unstable();
    ping.sort_unstable();
    json!({"pairs": health.len(),
           "health_p50_ms": percentile(&health, 0.50), "health_p99_ms": percentile(&health, 0.99),
           "ping_p50_ms": percentile(&ping, 0.50), "ping_p99_ms": percentile(&ping, 0.99)})
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[i]) / 1000.0
}

/// `sessions` sessions, session `i` with `tokens[i % tokens.len()]`.
async fn run_phase(url: &str, tokens: &[String], sessions: u64, seconds: u64, phase: Phase) -> Value {
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let token = &tokens[0];
    // Warm the caches (token, org) before measuring.
    let (epoch, epoch_wall) = (Instant::now(), std::time::SystemTime::now());
    worker(client.clone(), url.into(), token.into(), phase, epoch, epoch + Duration::from_millis(300)).await;
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..sessions as usize)
        .map(|i| {
            let token = tokens[i % tokens.len()].clone();
            tokio::spawn(worker(client.clone(), url.into(), token, phase, epoch, until))
        })
        .collect();
    let mut calls = Vec::new();
    for t in tasks {
        calls.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    // BENCH_LATENCIES=<file>: every call's start (µs after the warm-up began) and latency (µs),
    // in start order, to see where the tail falls in time.
    if let Ok(path) = std::env::var("BENCH_LATENCIES") {
        calls.sort_unstable();
        let wall = epoch_wall.duration_since(std::time::UNIX_EPOCH).expect("after 1970").as_micros();
        let lines: String = std::iter::once(format!("# start {wall} (µs since 1970)\n"))
            .chain(calls.iter().map(|(at, us)| format!("{at} {us}\n")))
            .collect();
        std::fs::write(&path, lines).expect("BENCH_LATENCIES is writable");
    }
    let mut all: Vec<u32> = calls.into_iter().map(|(_, us)| us).collect();
    all.sort_unstable();
    json!({"calls": all.len(), "calls_per_sec": all.len() as f64 / elapsed,
           "p50_ms": percentile(&all, 0.50), "p99_ms": percentile(&all, 0.99)})
}

/// Opens `n` legacy SSE sessions and keeps them open until the returned handles drop.
async fn idle_sse(url: &str, token: &str, n: u64) -> Vec<reqwest::Response> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let mut open = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let r = client.get(format!("{url}/sse?token={token}")).send().await.expect("open sse");
        assert!(r.status().is_success(), "sse open: {}", r.status());
        open.push(r);
    }
    open
}

/// Calls `name` with each of `calls` in one session of `token`; returns the JSON results.
async fn tools(url: &str, token: &str, name: &str, calls: Vec<Value>) -> Vec<Value> {
    let client = reqwest::Client::new();
    let session = open_session(&client, url, token).await;
    let mut results = Vec::with_capacity(calls.len());
    for (id, args) in calls.into_iter().enumerate() {
        let reply: Value = client
            .post(format!("{url}/mcp"))
            .bearer_auth(token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-session-id", &session)
            .json(&json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
                          "params": {"name": name, "arguments": args}}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let result = &reply["result"];
        assert_eq!(result["isError"], false, "{name}: {result}");
        results.push(serde_json::from_str(result["content"][0]["text"].as_str().unwrap()).unwrap());
    }
    results
}

async fn tool(url: &str, token: &str, name: &str, args: Value) -> Value {
    tools(url, token, name, vec![args]).await.remove(0)
}

/// utime + stime of process `pid`, and (with `children`) of its waited-for children, in clock ticks.
fn ticks(pid: &str, children: bool) -> Option<u64> {
    let fields = stat_fields(pid)?;
    let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok());
    let own = field(11)? + field(12)?;
    Some(if children { own + field(13)? + field(14)? } else { own })
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command name (state is field 3 of
/// proc(5), so index 0 here; ppid index 1, utime 11, stime 12, cutime 13, cstime 14).
fn stat_fields(pid: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// utime + stime of the server process (`--server-pid`), in clock ticks.
fn server_ticks() -> Option<u64> {
    ticks(&arg("--server-pid")?, false)
}

/// utime + stime of the whole Postgres cluster (`--pg-pid`, the postmaster), in clock ticks: the
/// postmaster, every live child (backends, WAL writer, checkpointer, …), and the children that
/// already exited (the postmaster's cutime + cstime), so a backend that ends mid-phase still counts.
fn pg_ticks() -> Option<u64> {
    let postmaster = arg("--pg-pid")?;
    let mut total = ticks(&postmaster, true)?;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Some(fields) = stat_fields(&name) {
            if fields.get(1) == Some(&postmaster) {
                total += ticks(&name, false).unwrap_or(0);
            }
        }
    }
    Some(total)
}

/// The server's resident set (`VmRSS`), in KiB.
fn server_rss_kb() -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", arg("--server-pid")?)).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Runs `phase` and adds the server's and the cluster's CPU per call over it (ms; clock ticks
/// are 1/100 s on Linux, CLK_TCK).
async fn with_cpu(phase: impl std::future::Future<Output = Value>) -> Value {
    let (server_before, pg_before) = (server_ticks(), pg_ticks());
    let mut result = phase.await;
    let calls = result["calls"].as_f64().unwrap_or(1.0).max(1.0);
    if let (Some(before), Some(after)) = (server_before, server_ticks()) {
        result["server_cpu_ms_per_call"] = json!((after - before) as f64 * 10.0 / calls);
    }
    if let (Some(before), Some(after)) = (pg_before, pg_ticks()) {
        result["pg_cpu_ms_per_call"] = json!((after - before) as f64 * 10.0 / calls);
    }
    result
}

/// Runs the shell command in environment variable `name`, if set; panics if it fails.
fn hook(name: &str) {
    if let Ok(command) = std::env::var(name) {
        let done = std::process::Command::new("sh").arg("-c").arg(&command).status().expect("a bench hook runs");
        assert!(done.success(), "{name} failed: {done}");
    }
}

/// `n` sends one after the other in one session (no concurrency: nothing to batch).
async fn sequential(url: &str, token: &str, n: u64) -> Value {
    let client = reqwest::Client::new();
    let session = open_session(&client, url, token).await;
    for id in 0..20 {
        assert!(request(&client, url, token, &session, Phase::Send, id).await, "a warm-up send failed");
    }
    hook("BENCH_BEFORE_SEQUENTIAL");
    with_cpu(async {
        let mut all = Vec::with_capacity(n as usize);
        for id in 0..n {
            let started = Instant::now();
            assert!(request(&client, url, token, &session, Phase::Send, 100 + id).await, "a benchmark send failed");
            all.push(started.elapsed().as_micros() as u32);
        }
        all.sort_unstable();
        json!({"calls": all.len(), "p50_ms": percentile(&all, 0.50), "p99_ms": percentile(&all, 0.99)})
    })
    .await
}

/// `--mode send`: a sandbox org and agent whose recipients consented, then sends from N
/// sessions for T seconds (every check on: content, DNC, consent, limits), after `--sequential`
/// sends one at a time from one session (first, so no backlog of the concurrent phase is
/// counted in it). Only the send phases are counted in the CPU figures, beside 5 idle seconds.
/// `--agents A` (1 unless given): A agents of the org, the sessions spread over them in turn.
async fn send_mode(url: &str, master: &str, sessions: u64, seconds: u64, agents: u64) {
    let slug = format!("bench-{}", std::process::id());
    let org =
        tool(url, master, "comms_create_organization", json!({"name": "Bench", "slug": slug, "a2pRegistered": true}))
            .await;
    let admin = org["adminToken"].as_str().unwrap().to_string();
    let mut tokens = Vec::new();
    for _ in 0..agents.max(1) {
        let agent = tool(
            url,
            &admin,
            "comms_provision_channels",
            json!({"displayName": "Bench", "capabilities": {"phone": true}}),
        )
        .await;
        let token = agent["securityToken"].as_str().unwrap().to_string();
        let consents = (0..RECIPIENTS).map(|n| json!({"contactAddress": recipient(n), "channel": "sms"})).collect();
        tools(url, &token, "comms_record_consent", consents).await;
        tokens.push(token);
    }
    let token = tokens[0].clone();
    // Idle: what the server and Postgres burn per second with nothing to do (projections caught
    // up with the set-up first), the floor under every per-send figure below.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let idle = with_cpu(async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        json!({"calls": 5})
    })
    .await;
    let one = match num("--sequential", 0) {
        0 => Value::Null,
        n => {
            // BENCH_BEFORE_SEQUENTIAL / BENCH_AFTER_SEQUENTIAL (scripts/bench.sh with
            // BENCH_PG_STATS=sequential or BENCH_PERF): shell commands run around the sequential
            // phase (after its warm-up) — there, a statement profile or `perf record` of it alone.
            let one = sequential(url, &token, n).await;
            hook("BENCH_AFTER_SEQUENTIAL");
            one
        }
    };
    // BENCH_BEFORE_SEND (scripts/bench.sh with BENCH_PG_STATS): a shell command run just before
    // the concurrent phase — there, resetting pg_stat_statements, so that the statement profile
    // per send holds neither the set-up's consents nor the sequential sends.
    hook("BENCH_BEFORE_SEND");
    let send = with_cpu(run_phase(url, &tokens, sessions, seconds, Phase::Send)).await;
    println!("{}", json!({"send": send, "sequential": one, "idle_cpu_ms_per_s": idle}));
}

/// The first instant of the `as-of` history; changes follow an hour apart.
const AS_OF_START: &str = "2026-01-01T00:00:00Z";
const AS_OF_HOURS: i64 = 24;

/// POST `path` with `token`; panics unless it succeeds.
async fn admin_post(client: &reqwest::Client, url: &str, token: &str, path: &str, body: Value) -> Value {
    let r = client.post(format!("{url}{path}")).bearer_auth(token).json(&body).send().await.unwrap();
    assert!(r.status().is_success(), "{path}: {}", r.status());
    r.json().await.unwrap()
}

/// `--mode as-of-setup` (server with `COMMGUARD_TEST_CLOCK`): an org with two agents, and a
/// contact whose consents and the first agent's limits, tier and org caps change once an hour
/// for `AS_OF_HOURS` hours of test-clock time. Prints `{admin, orgId, agentId, contact}`.
async fn as_of_setup(url: &str, master: &str) {
    let client = reqwest::Client::new();
    let start = chrono::DateTime::parse_from_rfc3339(AS_OF_START).unwrap();
    let at = |hour: i64| (start + chrono::Duration::hours(hour) + chrono::Duration::minutes(1)).to_rfc3339();
    admin_post(&client, url, master, "/admin/api/test/clock", json!({"now": AS_OF_START})).await;
    let slug = format!("as-of-{}", std::process::id());
    let org =
        tool(url, master, "comms_create_organization", json!({"name": "AsOf", "slug": slug, "a2pRegistered": true}))
            .await;
    let (org_id, admin) = (org["orgId"].as_str().unwrap().to_string(), org["adminToken"].as_str().unwrap().to_string());
    let mut agents = Vec::new();
    for name in ["First", "Second"] {
        let agent = tool(
            url,
            &admin,
            "comms_provision_channels",
            json!({"displayName": name, "capabilities": {"phone": true}}),
        )
        .await;
        agents.push(agent["agentId"].as_str().unwrap().to_string());
    }
    let contact = "+12025550142";
    let tiers = ["free", "starter", "pro", "enterprise"];
    for hour in 0..AS_OF_HOURS {
        admin_post(&client, url, master, "/admin/api/test/clock", json!({"now": at(hour)})).await;
        let agent = &agents[(hour % 2) as usize];
        let channel = ["sms", "voice"][(hour / 2 % 2) as usize];
        let consent = json!({"agentId": agent, "contactAddress": contact, "channel": channel});
        let id = &agents[0];
        let (who, name, args) = match hour % 4 {
            0 => (admin.as_str(), "comms_record_consent", consent),
            1 => {
                (master, "comms_set_agent_limits", json!({"agentId": id, "limits": {"maxActionsPerMinute": hour + 1}}))
            }
            2 => (admin.as_str(), "comms_revoke_consent", consent),
            _ => (master, "comms_set_billing_config", json!({"agentId": id, "tier": tiers[(hour / 4 % 4) as usize]})),
        };
        tool(url, who, name, args).await;
        if hour % 6 == 5 {
            admin_post(
                &client,
                url,
                &admin,
                &format!("/admin/api/orgs/{org_id}/settings"),
                json!({"maxSpendPerDay": hour}),
            )
            .await;
        }
    }
    println!("{}", json!({"admin": admin, "orgId": org_id, "agentId": agents[0], "contact": contact}));
}

/// Requests cycling over `paths` (each must answer 200) until `until`; latencies in µs.
async fn path_worker(
    client: reqwest::Client,
    url: String,
    token: String,
    paths: Arc<Vec<String>>,
    offset: usize,
    until: Instant,
) -> Vec<u32> {
    let mut latencies_us = Vec::new();
    let mut i = offset;
    while Instant::now() < until {
        let started = Instant::now();
        let r = client.get(format!("{url}{}", paths[i % paths.len()])).bearer_auth(&token).send().await.unwrap();
        assert!(r.status().is_success(), "{}: {}", paths[i % paths.len()], r.status());
        r.bytes().await.unwrap();
        latencies_us.push(started.elapsed().as_micros() as u32);
        i += 7;
    }
    latencies_us
}

async fn run_paths(url: &str, token: &str, sessions: u64, seconds: u64, paths: Vec<String>) -> Value {
    let client = reqwest::Client::builder().pool_max_idle_per_host(64).build().unwrap();
    let paths = Arc::new(paths);
    path_worker(
        client.clone(),
        url.into(),
        token.into(),
        paths.clone(),
        0,
        Instant::now() + Duration::from_millis(300),
    )
    .await;
    let until = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..sessions)
        .map(|n| {
            tokio::spawn(path_worker(client.clone(), url.into(), token.into(), paths.clone(), n as usize * 13, until))
        })
        .collect();
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    let elapsed = started.elapsed().as_secs_f64();
    all.sort_unstable();
    json!({"calls": all.len(), "calls_per_sec": all.len() as f64 / elapsed,
           "p50_ms": percentile(&all, 0.50), "p99_ms": percentile(&all, 0.99), "max_ms": percentile(&all, 1.0)})
}

/// `--mode as-of --agent A --contact C` (token: the org's admin token): `/consent` and `/limits`
/// with `as_of` at instants spread over the history (every 7 minutes), then both live.
async fn as_of_mode(url: &str, token: &str, sessions: u64, seconds: u64) {
    let agent = arg("--agent").expect("--agent");
    let contact = arg("--contact").expect("--contact").replace('+', "%2B");
    let start = chrono::DateTime::parse_from_rfc3339(AS_OF_START).unwrap();
    let instants: Vec<String> = (1..AS_OF_HOURS * 60 / 7)
        .map(|m| (start + chrono::Duration::minutes(m * 7)).to_utc().format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .collect();
    let consent: Vec<String> =
        instants.iter().map(|t| format!("/admin/api/consent?contact={contact}&as_of={t}")).collect();
    let limits: Vec<String> = instants.iter().map(|t| format!("/admin/api/limits?agentId={agent}&as_of={t}")).collect();
    let consent_as_of = run_paths(url, token, sessions, seconds, consent).await;
    let limits_as_of = run_paths(url, token, sessions, seconds, limits).await;
    let consent_live =
        run_paths(url, token, sessions, seconds, vec![format!("/admin/api/consent?contact={contact}")]).await;
    let limits_live =
        run_paths(url, token, sessions, seconds, vec![format!("/admin/api/limits?agentId={agent}")]).await;
    println!(
        "{}",
        json!({"consent_as_of": consent_as_of, "limits_as_of": limits_as_of, "consent_live": consent_live, "limits_live": limits_live})
    );
}

#[tokio::main]
async fn main() {
    let url = arg("--url").expect("--url of a running server");
    let token = arg("--token").expect("--token (the master token)");
    match arg("--mode").as_deref() {
        Some("send") => {
            return send_mode(&url, &token, num("--sessions", 16), num("--seconds", 20), num("--agents", 1)).await
        }
        Some("as-of-setup") => return as_of_setup(&url, &token).await,
        Some("as-of") => return as_of_mode(&url, &token, num("--sessions", 4), num("--seconds", 10)).await,
        _ => {}
    }
    let sessions = num("--sessions", 16);
    let seconds = num("--seconds", 20);
    let idle = num("--idle", 1000);
    let health = run_phase(&url, std::slice::from_ref(&token), sessions, seconds, Phase::Health).await;
    let rpc = run_phase(&url, std::slice::from_ref(&token), sessions, seconds, Phase::RpcPing).await;
    let tool = run_phase(&url, std::slice::from_ref(&token), sessions, seconds, Phase::ToolPing).await;
    let pairs = paired(&url, &token, sessions, seconds).await;
    // The server's RSS after the load, then after each quarter of the idle sessions (each read
    // a second after the last open, once the sessions' records have been written).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut rss = vec![json!([0, server_rss_kb()])];
    let mut held = Vec::new();
    for quarter in 1..=4 {
        let upto = idle * quarter / 4;
        held.extend(idle_sse(&url, &token, upto - held.len() as u64).await);
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push(json!([held.len(), server_rss_kb()]));
    }
    let held = Arc::new(held);
    println!(
        "{}",
        json!({"health": health, "rpc_ping": rpc, "comms_ping": tool, "paired": pairs, "idle_sse_sessions": held.len(),
               "rss_kb_by_sessions": rss})
    );
    // Hold the sessions while the script reads the server's RSS.
    tokio::time::sleep(Duration::from_secs(num("--hold", 5))).await;
}

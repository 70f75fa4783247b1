//! Anomaly-detector benchmark (run by `scripts/bench.sh anomaly`, not a test): the cost of one
//! detector run (`anomaly::check`: prune, read the current windows, evaluate the six rules) on a
//! store holding only the current activity, beside the same on a store that also holds `--fill`
//! events of history (30 days before today, UTC), in the same run and cluster. Both stores get
//! the same current activity (outbound attempts, refusals and spend of 200 agents, failures of
//! 50 IPs, tokens, lockouts in the 30 s before one service time `t0`, at which both are measured);
//! the anomaly projection catches up over each store before its runs. Prints one JSON line.

use std::collections::HashMap;
use std::time::Instant;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use commguard::app::Runtime;
use commguard::config::Config;
use commguard::store::runner;
use commguard_projections::anomaly::AnomalyProjection;
use commguard_projections::{Projection, Tables};
use serde_json::{json, Value};

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn text_arg(name: &str) -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| panic!("{name} is required"))
}

/// Events written straight into the store (synthetic rows: the detector and the projection read
/// only their type, stream, time and the payload fields below): `n` of them from position
/// `first`, event `g` stamped `at(g)`.
async fn insert(pool: &sqlx::PgPool, first: i64, n: i64, prefix: &str, at: &str, t0: DateTime<Utc>) {
    let sql = format!(
        "INSERT INTO events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata,
             position, event_id, occurred_at, org_id, prev_hash, hash)
         SELECT CASE WHEN g % 10 = 8 OR g % 1000 = 999 THEN 'ip' ELSE 'agent' END,
                '{prefix}' || (g / 100 % $3), g / 100 / $3 * 100 + g % 100 + 1,
                CASE WHEN g % 1000 = 999 THEN 'IpLockedOut' WHEN g % 10 < 6 THEN 'MessageSent'
                     WHEN g % 10 = 6 THEN 'MessageBlocked' WHEN g % 10 = 7 THEN 'CallStatusChanged'
                     WHEN g % 10 = 8 THEN 'AuthFailed' ELSE 'AgentTokenIssued' END,
                '1.0',
                CASE WHEN g % 1000 = 999 THEN json_build_object('failures', 10, 'lockedUntil',
                         to_char(({at}) AT TIME ZONE 'UTC' + interval '15 minutes', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))
                     WHEN g % 10 < 6 THEN '{{\"channel\":\"sms\",\"cost\":7900}}'::json
                     WHEN g % 10 = 6 THEN '{{\"channel\":\"sms\",\"limitType\":\"per-minute\"}}'::json
                     WHEN g % 10 = 7 THEN '{{\"kind\":\"call\",\"status\":\"completed\",\"cost\":13000}}'::json
                     WHEN g % 10 = 8 THEN '{{\"reason\":\"invalid\",\"route\":\"/mcp\"}}'::json
                     ELSE '{{\"tokenId\":\"t\",\"issuedVia\":\"rotate\"}}'::json END,
                '{{}}', $1 + g, gen_random_uuid(), {at}, 'bench-org', repeat('0', 64), repeat('0', 64)
         FROM generate_series(0, $2 - 1) g"
    );
    // Streams of 100 events: `$3` streams of each prefix take turns, so `n` spreads over them.
    let streams: i64 = if prefix.starts_with("cur") { 200 } else { 10_000 };
    sqlx::query(&sql).bind(first).bind(n).bind(streams).bind(t0).execute(pool).await.unwrap();
}

async fn open(url: &str, data: &std::path::Path) -> Runtime {
    let dir = data.display().to_string();
    let vars: HashMap<&str, &str> = [
        ("DATABASE_URL", url),
        ("COMMGUARD_DATA_DIR", dir.as_str()),
        ("DATA_ENCRYPTION_KEY", "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"),
        ("CREDENTIALS_ENCRYPTION_KEY", "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f"),
    ]
    .into_iter()
    .collect();
    let config = Config::from_lookup(|name| vars.get(name).map(|v| v.to_string())).unwrap();
    Runtime::open(config).await.unwrap()
}

/// Fills one store, catches the projection up and times `runs` detector runs.
async fn measure(url: &str, fill: i64, current: i64, runs: usize, t0: DateTime<Utc>) -> Value {
    let data = tempfile::tempdir().unwrap();
    let rt = open(url, data.path()).await;
    // Both stores are measured at the same service time, so their current windows are the same.
    rt.clock.set(Some(t0));
    let pool = rt.store.pool().clone();
    let fill_started = Instant::now();
    if fill > 0 {
        // History: the 30 days before today (UTC), one event a minute per slot.
        let at = "date_trunc('day', $4 AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' - interval '1 minute' - (g % 43200) * interval '1 minute'";
        insert(&pool, 1, fill, "hist-", at, t0).await;
    }
    // Current activity: the 30 s before `t0`, all in one 5-minute window.
    insert(&pool, fill + 1, current, "cur-", "$4 - (g % 30) * interval '1 second'", t0).await;
    sqlx::query("ANALYZE events").execute(&pool).await.unwrap();
    let fill_secs = fill_started.elapsed().as_secs_f64();

    let projection = AnomalyProjection;
    let tables = Tables::live(projection.tables());
    let catch_started = Instant::now();
    let mut projected = 0;
    loop {
        let n = runner::catch_up(&pool, &projection, projection.name(), &tables, 5_000).await.unwrap();
        if n == 0 {
            break;
        }
        projected += n;
    }
    let catch_secs = catch_started.elapsed().as_secs_f64();
    sqlx::query("ANALYZE anomaly_windows").execute(&pool).await.unwrap();
    let windows_before: i64 =
        sqlx::query_scalar("SELECT count(*) FROM anomaly_windows").fetch_one(&pool).await.unwrap();

    let app = rt.state();
    // Back to `t0` (filling took a while): the same current windows, per-minute ones included.
    rt.clock.set(Some(t0));
    // The first run prunes the history's windows.
    let first_started = Instant::now();
    let raised = commguard::anomaly::check(&app).await.unwrap();
    let first_ms = first_started.elapsed().as_secs_f64() * 1e3;
    sqlx::query("VACUUM ANALYZE anomaly_windows").execute(&pool).await.unwrap();
    let windows_after: i64 = sqlx::query_scalar("SELECT count(*) FROM anomaly_windows").fetch_one(&pool).await.unwrap();
    let readings = commguard::anomaly::readings(&app).await.unwrap().len();

    let mut times = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = Instant::now();
        commguard::anomaly::check(&app).await.unwrap();
        times.push(started.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    let mean = times.iter().sum::<f64>() / runs as f64;
    let events: i64 = sqlx::query_scalar("SELECT count(*) FROM events").fetch_one(&pool).await.unwrap();
    rt.shutdown().await;
    json!({
        "events": events,
        "fill_secs": fill_secs,
        "projected": projected,
        "catch_up_secs": catch_secs,
        "windows_before_prune": windows_before,
        "windows_after_prune": windows_after,
        "readings": readings,
        "alerts_raised_first_run": raised,
        "first_run_ms": first_ms,
        "runs": runs,
        "mean_ms": mean,
        "p50_ms": times[runs / 2],
        "p99_ms": times[(runs * 99 / 100).min(runs - 1)],
    })
}

#[tokio::main]
async fn main() {
    let fill = arg("--fill", 1_000_000) as i64;
    let current = arg("--current", 5_000) as i64;
    let runs = arg("--runs", 200) as usize;
    // 30 s into the current 5-minute window: each store's measurement ends well before it does.
    let t0 = Utc::now().duration_trunc(TimeDelta::minutes(5)).unwrap() + TimeDelta::seconds(30);
    let empty = measure(&text_arg("--empty-url"), 0, current, runs, t0).await;
    let full = measure(&text_arg("--full-url"), fill, current, runs, t0).await;
    println!("{}", json!({ "empty": empty, "full": full }));
}

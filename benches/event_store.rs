//! Event-store benchmark (run by `scripts/bench.sh event-store`, not a test): single-event
//! commands from N concurrent writers for T seconds against `DATABASE_URL`, then the audit
//! projection's catch-up from position 0 over everything written, alternating with the bare feed
//! read it is compared with. Prints one JSON line.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use commguard::crypto::DataKeys;
use commguard::store::{runner, Store};
use commguard_projections::audit::AuditProjection;
use commguard_projections::{Projection, Tables};

/// The server's allocator (`src/main.rs`): the store is measured as the server runs it. With
/// glibc's malloc, allocation was a quarter of this process's CPU during the appends.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[path = "../tests/integration/support/ledger.rs"]
mod ledger;

fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[tokio::main]
async fn main() {
    let writers = arg("--writers", 16);
    let seconds = arg("--seconds", 20);
    let stream_length = arg("--stream-length", 10).max(1);
    let url = std::env::var("DATABASE_URL").expect("DATABASE_URL names the benchmark database");
    // The server's pool settings (`store::connect`): sqlx's defaults ping each connection before
    // every acquire, a round trip per query the server does not make.
    let pool = commguard::store::connect(&url, writers as u32 + 4).await.unwrap();
    commguard::store::MIGRATOR.run(&pool).await.unwrap();
    let store = Store::new(pool.clone(), Arc::new(DataKeys::new(&[5u8; 32])));

    let appended = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let (store, appended) = (store.clone(), appended.clone());
            tokio::spawn(async move {
                let framework = store.framework::<ledger::Ledger>(());
                let mut i = 0u64;
                while Instant::now() < deadline {
                    // Each command loads its aggregate first: streams grow to `stream_length` events.
                    let id = format!("bench-{w}-{}", i / stream_length);
                    ledger::note(&store, &framework, &id, "benchmark", None).await;
                    appended.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let append_secs = started.elapsed().as_secs_f64();
    let appends = appended.load(Ordering::Relaxed);

    // The feed read alone (global order, no projection writes) and the audit projection's
    // catch-up from position 0 over the whole store, alternately, `ROUNDS` times each: one of
    // either takes well under a second here, and single runs of them varied 1.5x within an hour
    // (docs/performance.md). The medians are reported.
    const ROUNDS: usize = 5;
    let projection = AuditProjection;
    let tables = Tables::live(projection.tables());
    let (mut reads, mut catch_ups, mut projected) = (Vec::new(), Vec::new(), 0);
    for _ in 0..ROUNDS {
        let read_started = Instant::now();
        let (mut after, mut read) = (0i64, 0u64);
        loop {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("SET LOCAL enable_bitmapscan = off").execute(&mut *tx).await.unwrap();
            let batch = commguard::store::feed::read_after(&mut *tx, after, 5_000, None).await.unwrap();
            tx.commit().await.unwrap();
            let Some(last) = batch.last() else { break };
            after = last.position;
            read += batch.len() as u64;
        }
        reads.push(read as f64 / read_started.elapsed().as_secs_f64());

        // The projection starts empty.
        sqlx::query("TRUNCATE audit_items, audit_stream_heads").execute(&pool).await.unwrap();
        sqlx::query("DELETE FROM projection_checkpoints").execute(&pool).await.unwrap();
        let catch_started = Instant::now();
        projected = runner::catch_up(&pool, &projection, projection.name(), &tables, 5_000).await.unwrap();
        catch_ups.push(projected as f64 / catch_started.elapsed().as_secs_f64());
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (read_rate, catch_up_rate) = (median(&mut reads), median(&mut catch_ups));
    eprintln!("feed read alone, median of {ROUNDS}: {read_rate:.0} events/s");
    eprintln!("catch-up, median of {ROUNDS}: {catch_up_rate:.0} events/s");
    println!(
        "{{\"writers\":{writers},\"stream_length\":{stream_length},\"seconds\":{append_secs:.2},\"appends\":{appends},\"appends_per_sec\":{:.1},\"projected\":{projected},\"catch_up_events_per_sec\":{catch_up_rate:.1}}}",
        appends as f64 / append_secs
    );
}

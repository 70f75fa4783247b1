//! The `commguard` binary from the outside: the embedded cluster (first start, restart, stale pid,
//! clean stop on SIGTERM, shared by several processes and stopped only by its last user),
//! configuration errors, `audit verify` and `replay` exit codes.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::support::{binary, data_dir, ledger, TestDb};

/// The binary with a clean environment: only what the test passes, plus PATH and PG_BIN_DIR.
fn commguard(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args).env_clear().env("PATH", std::env::var("PATH").unwrap_or_default());
    if let Ok(bin) = std::env::var("PG_BIN_DIR") {
        cmd.env("PG_BIN_DIR", bin);
    }
    cmd.env("RUST_LOG", "info");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

pub(crate) fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    commguard(args, env).output().expect("commguard runs")
}

/// Whether a postmaster runs on `data/pg`: its pid file names a live process. (`pg_ctl status`
/// refuses to run as root, and tests may run as root.)
fn cluster_running(data: &Path) -> bool {
    let Ok(pid_file) = std::fs::read_to_string(data.join("pg/postmaster.pid")) else { return false };
    let pid = pid_file.lines().next().unwrap_or_default().trim();
    !pid.is_empty() && Path::new("/proc").join(pid).exists()
}

#[test]
fn migrate_starts_initialises_and_stops_the_embedded_cluster_and_recovers_a_stale_pid() {
    let data = data_dir();
    let dir = data.path().display().to_string();
    let env = [("COMMGUARD_DATA_DIR", dir.as_str())];

    let first = run(&["migrate"], &env);
    assert!(first.status.success(), "first migrate: {}", String::from_utf8_lossy(&first.stderr));
    assert!(data.path().join("pg/PG_VERSION").exists(), "initdb ran in $COMMGUARD_DATA_DIR/pg");
    assert!(!cluster_running(data.path()), "the cluster is stopped when the command ends");
    let conf = std::fs::read_to_string(data.path().join("pg/postgresql.conf")).unwrap();
    assert!(conf.contains("listen_addresses = ''"), "Unix socket only");

    // Development keys are generated once into the data directory, readable by the owner only.
    use std::os::unix::fs::PermissionsExt;
    let key_file = data.path().join("keys/data_encryption_key.hex");
    let mode = std::fs::metadata(&key_file).expect("a generated data key").permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    let key = std::fs::read_to_string(&key_file).unwrap();

    // A crash leaves a pid file naming a process that is gone: the next start recovers.
    std::fs::write(data.path().join("pg/postmaster.pid"), "999999\n/nonexistent\n").unwrap();
    let second = run(&["migrate"], &env);
    assert!(second.status.success(), "migrate after a crash: {}", String::from_utf8_lossy(&second.stderr));
    assert_eq!(std::fs::read_to_string(&key_file).unwrap(), key, "the key is kept across restarts");
    assert!(!cluster_running(data.path()));
}

/// `commguard serve` on the embedded cluster of `dir`, port 0: the child and its address.
fn serve_embedded(dir: &str) -> (std::process::Child, String) {
    let mut child = commguard(&["serve"], &[("COMMGUARD_DATA_DIR", dir), ("HOST", "127.0.0.1"), ("PORT", "0")])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("serve starts");
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    let addr = loop {
        let line = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())).expect("serve logs its address");
        if let Some(rest) = line.split("addr=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    (child, addr)
}

/// SIGTERM, then the exit status (within the drain time).
fn terminate(mut child: std::process::Child) -> std::process::ExitStatus {
    let kill = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "serve stops within the drain time");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn serve_on_the_embedded_default_answers_and_stops_cleanly_on_sigterm() {
    let data = data_dir();
    let dir = data.path().display().to_string();
    let (child, addr) = serve_embedded(&dir);
    let body: serde_json::Value = reqwest::blocking_get(&format!("http://{addr}/health"));
    assert_eq!(body["status"], "ok");
    assert!(cluster_running(data.path()));
    // The cluster trusts whoever reaches its socket: nobody but its own user can.
    use std::os::unix::fs::PermissionsExt;
    for path in [data.path().join("run"), data.path().join("run/.s.PGSQL.5432")] {
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {:o}", path.display(), mode & 0o777);
    }

    assert!(terminate(child).success(), "serve exits 0 on SIGTERM");
    assert!(!cluster_running(data.path()), "the embedded cluster is stopped after the server");
}

#[test]
fn commands_and_a_second_server_share_the_embedded_cluster_and_never_stop_it_under_the_server() {
    let data = data_dir();
    let dir = data.path().display().to_string();
    let (server, addr) = serve_embedded(&dir);
    let ready = |after: &str| {
        let (status, body) = reqwest::blocking_status(&format!("http://{addr}/health/ready"));
        assert_eq!(status, 200, "the server is ready after {after}: {body}");
        assert_eq!(body["checks"]["database"], "ok", "after {after}");
        assert!(cluster_running(data.path()), "the cluster runs after {after}");
    };
    ready("start");
    let env = [("COMMGUARD_DATA_DIR", dir.as_str())];

    let verify = run(&["audit", "verify"], &env);
    assert_eq!(verify.status.code(), Some(0), "{}", String::from_utf8_lossy(&verify.stderr));
    assert!(String::from_utf8_lossy(&verify.stdout).starts_with("OK "));
    ready("audit verify");

    let replay = run(&["replay"], &env);
    assert_eq!(replay.status.code(), Some(0), "{}", String::from_utf8_lossy(&replay.stderr));
    ready("replay");

    // A second server on the same data directory and the busy port: refused (exit 2, naming
    // the address), and the cluster the first one uses keeps running.
    let port = addr.rsplit(':').next().unwrap();
    let second = run(&["serve"], &[("COMMGUARD_DATA_DIR", dir.as_str()), ("HOST", "127.0.0.1"), ("PORT", port)]);
    assert_eq!(second.status.code(), Some(2), "{}", String::from_utf8_lossy(&second.stderr));
    assert!(String::from_utf8_lossy(&second.stderr).contains("cannot listen on"));
    ready("a second serve on the busy port");

    // Two commands at once while the server runs: neither stops the cluster under the other.
    let both: Vec<_> =
        (0..2).map(|_| commguard(&["audit", "verify"], &env).stdout(Stdio::null()).spawn().unwrap()).collect();
    for mut child in both {
        assert!(child.wait().unwrap().success());
    }
    ready("two concurrent audit verify");

    // The last user stops it.
    assert!(terminate(server).success());
    assert!(!cluster_running(data.path()), "the server, last user of the cluster, stopped it");
}

#[test]
fn a_malformed_variable_exits_2_naming_it() {
    let data = data_dir();
    let dir = data.path().display().to_string();
    for (var, value) in [("PORT", "eighty"), ("DATA_ENCRYPTION_KEY", "abc"), ("DEMO_MODE", "yes")] {
        let out = run(&["migrate"], &[("COMMGUARD_DATA_DIR", dir.as_str()), (var, value)]);
        assert_eq!(out.status.code(), Some(2), "{var}={value}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(var), "{var}: {stderr}");
    }
    let out = run(&["migrate"], &[("COMMGUARD_ENV", "production"), ("COMMGUARD_DATA_DIR", dir.as_str())]);
    assert_eq!(out.status.code(), Some(2), "production refuses to start without a master token");
    assert!(String::from_utf8_lossy(&out.stderr).contains("MASTER_SECURITY_TOKEN"));
}

#[test]
fn without_postgres_programs_the_error_names_the_debian_package() {
    let data = data_dir();
    let dir = data.path().display().to_string();
    let out = run(&["migrate"], &[("COMMGUARD_DATA_DIR", dir.as_str()), ("PG_BIN_DIR", "/nonexistent/bin")]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("apt-get install postgresql"), "{stderr}");
}

#[tokio::test]
async fn audit_verify_and_replay_report_through_exit_codes() {
    let db = TestDb::new().await;
    let data = data_dir();
    let dir = data.path().display().to_string();
    let key = "11".repeat(32);
    let env = [
        ("DATABASE_URL", db.url.as_str()),
        ("COMMGUARD_DATA_DIR", dir.as_str()),
        ("DATA_ENCRYPTION_KEY", key.as_str()),
    ];

    let migrated = run(&["migrate"], &env);
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let pool = db.pool().await;
    let store =
        commguard::store::Store::new(pool.clone(), std::sync::Arc::new(commguard::crypto::DataKeys::new(&[1; 32])));
    let ledger = store.framework::<ledger::Ledger>(());
    for i in 0..3 {
        ledger::note(&store, &ledger, "cli", &format!("n{i}"), Some("+15551112222")).await;
    }

    let ok = run(&["audit", "verify"], &env);
    assert_eq!(ok.status.code(), Some(0));
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "OK 1 aggregates, 3 events");

    let replay = run(&["replay", "--projection", "audit"], &env);
    assert!(replay.status.success(), "{}", String::from_utf8_lossy(&replay.stderr));
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM audit_items").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 3);
    let unknown = run(&["replay", "--projection", "nope"], &env);
    assert_eq!(unknown.status.code(), Some(2));

    let mut tx = pool.begin().await.unwrap();
    sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only").execute(&mut *tx).await.unwrap();
    sqlx::query("UPDATE events SET event_type = 'Forged' WHERE sequence = 2").execute(&mut *tx).await.unwrap();
    sqlx::query("ALTER TABLE events ENABLE TRIGGER events_append_only").execute(&mut *tx).await.unwrap();
    tx.commit().await.unwrap();
    let broken = run(&["audit", "verify"], &env);
    assert_eq!(broken.status.code(), Some(1));
    let out = String::from_utf8_lossy(&broken.stdout);
    assert!(out.starts_with("BROKEN ledger/cli at sequence 2: "), "{out}");
    let json = run(&["audit", "verify", "--json", "--aggregate", "ledger/cli"], &env);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(report["broken"][0]["sequence"], 2);

    // The columns the feed shows and filters by are held to the hashed metadata: an event moved
    // to another org's feed, or re-dated, is found though its chain is intact.
    let tamper = |statement: String| {
        let pool = pool.clone();
        async move {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("ALTER TABLE events DISABLE TRIGGER events_append_only").execute(&mut *tx).await.unwrap();
            sqlx::query(&statement).execute(&mut *tx).await.unwrap();
            sqlx::query("ALTER TABLE events ENABLE TRIGGER events_append_only").execute(&mut *tx).await.unwrap();
            tx.commit().await.unwrap();
        }
    };
    let (event_id, occurred_at, org_id, prev_hash, hash, position): (uuid::Uuid, String, String, String, String, i64) =
        sqlx::query_as(
            "SELECT event_id, occurred_at::text, org_id, prev_hash, hash, position FROM events WHERE sequence = 3",
        )
        .fetch_one(&pool)
        .await
        .unwrap();
    let restore = format!(
        "UPDATE events SET org_id = '{org_id}', occurred_at = '{occurred_at}', event_id = '{event_id}', \
         prev_hash = '{prev_hash}', hash = '{hash}', position = {position} WHERE sequence = 3"
    );
    tamper(restore.clone()).await;
    assert_eq!(run(&["audit", "verify", "--aggregate", "ledger/cli"], &env).status.code(), Some(1), "still event 2");
    let column = |name: &str| format!("column {name} does not match the event's hashed metadata");
    let first: i64 =
        sqlx::query_scalar("SELECT position FROM events WHERE sequence = 1").fetch_one(&pool).await.unwrap();
    let second: i64 =
        sqlx::query_scalar("SELECT position FROM events WHERE sequence = 2").fetch_one(&pool).await.unwrap();
    for (forgery, reason) in [
        ("UPDATE events SET org_id = 'another-org' WHERE sequence = 3".to_string(), column("org_id")),
        (
            "UPDATE events SET occurred_at = occurred_at - interval '1 day' WHERE sequence = 3".into(),
            column("occurred_at"),
        ),
        (
            "UPDATE events SET occurred_at = occurred_at + interval '1 millisecond' WHERE sequence = 3".into(),
            column("occurred_at"),
        ),
        ("UPDATE events SET event_id = gen_random_uuid() WHERE sequence = 3".into(), column("event_id")),
        // The hashes the feed serves (an auditor recomputes those) are the chain's.
        ("UPDATE events SET hash = repeat('a', 64) WHERE sequence = 3".into(), column("hash")),
        ("UPDATE events SET prev_hash = repeat('b', 64) WHERE sequence = 3".into(), column("prev_hash")),
        // Moved before its predecessors in the global order, which projections follow.
        (
            format!("UPDATE events SET position = {} WHERE sequence = 3", first - 1),
            format!("position {} is not after the previous event's ({second})", first - 1),
        ),
    ] {
        tamper(forgery.clone()).await;
        let json = run(&["audit", "verify", "--json", "--aggregate", "ledger/cli"], &env);
        let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
        let at_3: Vec<&str> = report["broken"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|b| b["sequence"] == 3)
            .filter_map(|b| b["reason"].as_str())
            .collect();
        assert_eq!(at_3, [reason.as_str()], "{forgery}");
        tamper(restore.clone()).await;
    }
    let json = run(&["audit", "verify", "--json", "--aggregate", "ledger/cli"], &env);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert!(report["broken"].as_array().unwrap().iter().all(|b| b["sequence"] == 2), "restored: {report}");

    // A stream asked for by name that does not exist does not verify.
    let missing = run(&["audit", "verify", "--aggregate", "ledger/nobody"], &env);
    assert_eq!(missing.status.code(), Some(1));
    let out = String::from_utf8_lossy(&missing.stdout);
    assert_eq!(out.trim(), "BROKEN ledger/nobody at sequence 0: no events and no chain head");
}

mod reqwest {
    /// A blocking GET without pulling reqwest's blocking client into the build.
    pub fn blocking_get(url: &str) -> serde_json::Value {
        blocking_status(url).1
    }

    /// A blocking GET: status and JSON body.
    pub fn blocking_status(url: &str) -> (u16, serde_json::Value) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let response = ::reqwest::get(url).await.unwrap();
            (response.status().as_u16(), response.json().await.unwrap())
        })
    }
}

/// `audit verify` while the store is written: each run reads the events and the chain heads in
/// one snapshot, so appends committed during the run never show as a head ahead of its chain (or
/// a head without events). Read one after the other, most runs here reported honest streams broken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn audit_verify_while_appends_commit_reports_no_honest_stream_broken() {
    let db = TestDb::new().await;
    let data = data_dir();
    let dir = data.path().display().to_string();
    let env = [("DATABASE_URL", db.url.as_str()), ("COMMGUARD_DATA_DIR", dir.as_str())];
    let migrated = run(&["migrate"], &env);
    assert!(migrated.status.success(), "{}", String::from_utf8_lossy(&migrated.stderr));
    let pool = db.pool().await;
    let store =
        commguard::store::Store::new(pool.clone(), std::sync::Arc::new(commguard::crypto::DataKeys::new(&[1; 32])));
    let ledger = std::sync::Arc::new(store.framework::<ledger::Ledger>(()));
    for i in 0..200 {
        ledger::note(&store, &ledger, &format!("s{}", i % 20), "seed", None).await;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writers: Vec<_> = (0..4)
        .map(|w| {
            let (store, ledger, stop) = (store.clone(), ledger.clone(), stop.clone());
            tokio::spawn(async move {
                let mut n = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    // Existing streams move their heads; new ones start with one.
                    let stream = if n % 2 == 0 { format!("s{}", (w * 5 + n) % 20) } else { format!("w{w}-{n}") };
                    ledger::note(&store, &ledger, &stream, "while verifying", None).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut broken = Vec::new();
    for _ in 0..30 {
        let report = commguard::store::verify::verify(&pool, None).await.unwrap();
        broken.extend(report.broken);
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut appended = 0;
    for writer in writers {
        appended += writer.await.unwrap();
    }
    assert!(appended > 30, "the store was written during the runs ({appended} appends)");
    assert!(broken.is_empty(), "honest streams reported broken: {:?}", &broken[..broken.len().min(3)]);
    let after = commguard::store::verify::verify(&pool, None).await.unwrap();
    assert!(after.is_ok(), "{after:?}");
}

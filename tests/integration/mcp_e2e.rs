//! MCP over the wire with the official Python SDK (`mcp` from PyPI, in the venv scripts/test.sh
//! creates): the scripts under tests/e2e/ connect to real servers over both transports and assert
//! the contract's identity rules; the lockout case runs two real `commguard serve` processes on
//! one database.

use std::net::TcpListener as StdListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::{binary, data_dir, TestDb, TestServer};

const MASTER: &str = "e2e-master-token-0123456789abcdef0123456789";
/// Generous HTTP limits: every request of a script comes from 127.0.0.1.
const OPEN_LIMITS: [(&str, &str); 2] = [("HTTP_RATE_LIMIT_PER_IP", "100000"), ("HTTP_RATE_LIMIT_GLOBAL", "100000")];

fn python() -> String {
    std::env::var("COMMGUARD_TEST_PYTHON")
        .expect("COMMGUARD_TEST_PYTHON names the venv python with the mcp SDK; run the suite through scripts/test.sh")
}

/// Runs `tests/e2e/<script> args` against `env` and fails the test with its output unless it passes.
pub(crate) fn run_script(script: &str, args: &[&str], env: &[(&str, &str)]) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/e2e");
    let mut cmd = Command::new(python());
    cmd.current_dir(dir).arg(script).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("the e2e python runs");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{script} {args:?} failed:\n{text}");
    assert!(text.contains("PASS"), "{script} ran no step:\n{text}");
}

async fn server(db: &TestDb, extra: &[(&str, &str)]) -> TestServer {
    let mut vars: Vec<(&str, &str)> = OPEN_LIMITS.to_vec();
    vars.extend_from_slice(extra);
    TestServer::start(db, &vars).await
}

/// Runs `script args` against a fresh server started with `vars`; the script gets the server's
/// URL and the master token.
async fn scripted(vars: &[(&str, &str)], script: &'static str, args: &'static [&'static str]) {
    run_scripted(vars, script, args, false).await;
}

/// Like `scripted`, and the script also gets `vars` themselves (the secrets it signs webhooks with).
async fn scripted_with_vars(vars: &[(&str, &str)], script: &'static str, args: &'static [&'static str]) {
    run_scripted(vars, script, args, true).await;
}

async fn run_scripted(vars: &[(&str, &str)], script: &'static str, args: &'static [&'static str], share: bool) {
    let db = TestDb::new().await;
    let s = server(&db, vars).await;
    let mut env = vec![("COMMGUARD_URL".to_string(), s.base.clone()), ("COMMGUARD_MASTER_TOKEN".into(), MASTER.into())];
    if share {
        env.extend(vars.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    }
    tokio::task::spawn_blocking(move || {
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run_script(script, args, &env)
    })
    .await
    .unwrap();
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_rules_hold_over_legacy_sse_with_the_official_client() {
    scripted(&[("MASTER_SECURITY_TOKEN", MASTER)], "mcp_identity.py", &["--transport", "sse"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_rules_hold_over_streamable_http_with_the_official_client() {
    scripted(&[("MASTER_SECURITY_TOKEN", MASTER)], "mcp_identity.py", &["--transport", "streamable"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_open_admits_no_credential_as_super_admin_but_verifies_presented_ones() {
    scripted(&[], "mcp_modes.py", &["--mode", "dev-open"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_mode_skips_authentication_and_elevates_agent_tokens() {
    scripted(&[("DEMO_MODE", "true")], "mcp_modes.py", &["--mode", "demo"]).await;
}

/// A `commguard serve` process on a free port; killed on drop.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0").expect("bind port 0").local_addr().unwrap().port()
}

fn serve(db: &TestDb, port: u16, data: &std::path::Path) -> Process {
    let port = port.to_string();
    let child = Command::new(binary())
        .arg("serve")
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("DATABASE_URL", &db.url)
        .env("HOST", "127.0.0.1")
        .env("PORT", &port)
        .env("COMMGUARD_DATA_DIR", data)
        .env("MASTER_SECURITY_TOKEN", MASTER)
        .env("DATA_ENCRYPTION_KEY", "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0")
        .env("CREDENTIALS_ENCRYPTION_KEY", "a0b1c2d3e4f5061728394a5b6c7d8e9fa0b1c2d3e4f5061728394a5b6c7d8e9f")
        .env("HTTP_RATE_LIMIT_PER_IP", "100000")
        .env("HTTP_RATE_LIMIT_GLOBAL", "100000")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("commguard serve starts");
    Process(child)
}

async fn wait_healthy(base: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let client = reqwest::Client::new();
    loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return;
            }
        }
        assert!(Instant::now() < deadline, "{base} did not become healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_failures_split_over_two_processes_lock_the_ip_on_both() {
    let db = TestDb::new().await;
    // Migrations first, so the two processes do not race to apply them.
    let first_data = data_dir();
    let second_data = data_dir();
    let (p1, p2) = (free_port(), free_port());
    let one = serve(&db, p1, first_data.path());
    let (u1, u2) = (format!("http://127.0.0.1:{p1}"), format!("http://127.0.0.1:{p2}"));
    wait_healthy(&u1).await;
    let two = serve(&db, p2, second_data.path());
    wait_healthy(&u2).await;
    tokio::task::spawn_blocking(move || {
        run_script(
            "mcp_lockout.py",
            &[],
            &[("COMMGUARD_URL", &u1), ("COMMGUARD_URL_2", &u2), ("COMMGUARD_MASTER_TOKEN", MASTER)],
        )
    })
    .await
    .unwrap();
    drop((one, two));
}

/// The outbound script needs a per-minute limit of 50 and room above it for the rest.
const OUTBOUND: [(&str, &str); 4] = [
    ("MASTER_SECURITY_TOKEN", MASTER),
    ("DEFAULT_MAX_ACTIONS_PER_MINUTE", "50"),
    ("DEFAULT_MAX_ACTIONS_PER_HOUR", "1000"),
    ("DEFAULT_MAX_ACTIONS_PER_DAY", "1000"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_limits_and_usage_hold_over_legacy_sse_with_the_official_client() {
    scripted(&OUTBOUND, "mcp_outbound.py", &["--transport", "sse"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_limits_and_usage_hold_over_streamable_http_with_the_official_client() {
    scripted(&OUTBOUND, "mcp_outbound.py", &["--transport", "streamable"]).await;
}

/// Webhooks signed by the providers' own libraries (`twilio`'s RequestValidator, `svix`'s Webhook):
/// the script signs with these values, the server verifies with them. Mock calls need no Twilio
/// API; TWILIO_API_BASE_URL points nowhere so nothing can reach the real one.
const WEBHOOKS: [(&str, &str); 7] = [
    ("MASTER_SECURITY_TOKEN", MASTER),
    ("COMMGUARD_TEST_CLOCK", "true"),
    ("WEBHOOK_BASE_URL", "https://hooks.e2e.example"),
    ("TWILIO_ACCOUNT_SID", "AC00000000000000000000000000e2e0e2"),
    ("TWILIO_AUTH_TOKEN", "e2e-twilio-auth-token-0123456789abcdef"),
    ("TWILIO_API_BASE_URL", "http://127.0.0.1:9"),
    ("RESEND_WEBHOOK_SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twilio_webhooks_signed_by_twilios_request_validator_drive_stop_start_help_and_call_status() {
    scripted_with_vars(&WEBHOOKS, "webhooks.py", &["--part", "twilio", "--transport", "streamable"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resend_webhooks_signed_by_the_svix_library_verify_raw_bodies_and_list_complaints() {
    scripted_with_vars(&WEBHOOKS, "webhooks.py", &["--part", "svix", "--transport", "sse"]).await;
}

//! The database going away under a running server (docs/errors.md): calls answer `unavailable`
//! (503), never `internal`, and the server recovers by itself when the database is back.
//!
//! The server reaches its database through a TCP proxy in front of the test cluster's socket.
//! "Down" cuts every proxied connection and hangs up on new ones at once (what a stopped or
//! restarting Postgres looks like to a client: connections reset, handshakes cut), without
//! disturbing the cluster the other tests share.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::net::{TcpListener, UnixStream};
use tokio::sync::watch;

use crate::support::{admin_url, TestDb, TestServer};

pub struct PgProxy {
    pub port: u16,
    down: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PgProxy {
    pub async fn start(socket: PathBuf) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (down, _) = watch::channel(false);
        let state = down.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else { continue };
                if *state.borrow() {
                    drop(client);
                    continue;
                }
                let mut cut = state.subscribe();
                let socket = socket.clone();
                tokio::spawn(async move {
                    let Ok(mut upstream) = UnixStream::connect(&socket).await else { return };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
                        _ = cut.wait_for(|down| *down) => {}
                    }
                });
            }
        });
        Self { port, down, task }
    }

    pub fn set_down(&self, down: bool) {
        self.down.send_replace(down);
    }
}

impl Drop for PgProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The Unix socket of the test cluster, from `?host=<dir>` of its URL.
pub fn cluster_socket() -> PathBuf {
    let url = admin_url();
    let host = url.split("host=").nth(1).expect("the test cluster is reached through a Unix socket");
    PathBuf::from(host.split('&').next().unwrap()).join(".s.PGSQL.5432")
}

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let response = server.http.get(server.url(path)).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn calls_answer_unavailable_while_the_database_is_down_and_recover_when_it_is_back() {
    let db = TestDb::new().await;
    let proxy = PgProxy::start(cluster_socket()).await;
    let user = admin_url().split("://").nth(1).unwrap().split('@').next().unwrap().to_string();
    let through_proxy =
        TestDb { name: db.name.clone(), url: format!("postgres://{user}@127.0.0.1:{}/{}", proxy.port, db.name) };
    // Development without a master token: a request without credentials is the super-admin.
    let server = TestServer::start(
        &through_proxy,
        &[("HTTP_RATE_LIMIT_PER_IP", "100000"), ("HTTP_RATE_LIMIT_GLOBAL", "100000")],
    )
    .await;
    let (status, body) = get(&server, "/admin/api/orgs").await;
    assert_eq!(status, 200, "{body}");

    proxy.set_down(true);
    for attempt in 0..5 {
        let (status, body) = get(&server, "/admin/api/orgs").await;
        assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "read {attempt}: {body}");
        assert_eq!(body["error"], "Service unavailable");
        let created = server
            .http
            .post(server.url("/admin/api/orgs"))
            .json(&serde_json::json!({"name": format!("Down {attempt}"), "slug": format!("down-{attempt}")}))
            .send()
            .await
            .unwrap();
        let status = created.status().as_u16();
        let body: Value = created.json().await.unwrap();
        assert_eq!((status, body["code"].as_str()), (503, Some("unavailable")), "command {attempt}: {body}");
    }
    let (status, body) = get(&server, "/health/ready").await;
    assert_eq!((status, body["status"].as_str()), (503, Some("degraded")));
    let (status, _) = get(&server, "/health").await;
    assert_eq!(status, 200, "the process itself is up");

    // Back: the pool reconnects by itself.
    proxy.set_down(false);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, body) = get(&server, "/admin/api/orgs").await;
        if status == 200 {
            assert!(body["orgs"].as_array().unwrap().iter().any(|o| o["id"] == "default"), "{body}");
            break;
        }
        assert_eq!(body["code"], "unavailable", "never internal: {body}");
        assert!(Instant::now() < deadline, "the server did not recover: {status} {body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let created = server
        .http
        .post(server.url("/admin/api/orgs"))
        .json(&serde_json::json!({"name": "Back", "slug": "back"}))
        .send()
        .await
        .unwrap();
    assert!(created.status().is_success(), "{}", created.text().await.unwrap());
    server.stop().await;
}

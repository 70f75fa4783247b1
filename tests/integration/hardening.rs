//! HTTP hardening over real HTTP (docs/http.md#hardening): headers on every response, CORS, IP lists with
//! CIDR, client IP behind one proxy, per-IP then global limits, body limits, request ids.

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::{TestDb, TestServer};

const SECURITY_HEADERS: [(&str, &str); 7] = [
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("x-xss-protection", "1; mode=block"),
    ("referrer-policy", "strict-origin-when-cross-origin"),
    ("content-security-policy", "default-src 'none'"),
    ("cache-control", "no-store"),
    ("vary", "Origin"),
];

fn assert_hardened(response: &reqwest::Response) {
    for (name, value) in SECURITY_HEADERS {
        assert_eq!(
            response.headers().get(name).map(|v| v.to_str().unwrap()),
            Some(value),
            "{name} on {}",
            response.status()
        );
    }
    assert!(response.headers().get("strict-transport-security").is_none(), "HSTS only in production");
}

async fn get_from(server: &TestServer, path: &str, forwarded_for: &str) -> reqwest::Response {
    server.http.get(server.url(path)).header("x-forwarded-for", forwarded_for).send().await.unwrap()
}

#[tokio::test]
async fn every_response_is_hardened_and_errors_carry_their_request_id() {
    let db = TestDb::new().await;
    let server =
        TestServer::start(&db, &[("HTTP_RATE_LIMIT_PER_IP", "4"), ("IP_DENYLIST", "10.9.9.9"), ("TRUST_PROXY", "1")])
            .await;
    let ok = server.http.get(server.url("/health")).header("x-request-id", "trace-abc-123").send().await.unwrap();
    assert_eq!(ok.status(), 200);
    assert_hardened(&ok);
    assert_eq!(ok.headers()["x-request-id"], "trace-abc-123");

    let missing = server.http.get(server.url("/missing")).header("x-request-id", "bad id!").send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_hardened(&missing);
    let header_id = missing.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_ne!(header_id, "bad id!", "an invalid id is replaced");
    let body: serde_json::Value = missing.json().await.unwrap();
    assert_eq!(body["requestId"], header_id.as_str());

    let options = server.http.request(reqwest::Method::OPTIONS, server.url("/anything")).send().await.unwrap();
    assert_eq!(options.status(), 204);
    assert_hardened(&options);
    assert!(options.bytes().await.unwrap().is_empty());

    let denied = get_from(&server, "/health", "10.9.9.9").await;
    assert_eq!(denied.status(), 403);
    assert_hardened(&denied);
    let body: serde_json::Value = denied.json().await.unwrap();
    assert_eq!((body["error"].as_str(), body["code"].as_str()), (Some("Forbidden"), Some("forbidden")));

    let too_large = server.http.post(server.url("/health")).body(vec![b'x'; 1024 * 1024 + 1]).send().await.unwrap();
    assert_eq!(too_large.status(), 413);
    assert_hardened(&too_large);
    assert_eq!(too_large.json::<serde_json::Value>().await.unwrap()["code"], "payload_too_large");

    for _ in 0..4 {
        get_from(&server, "/health", "192.0.2.1").await;
    }
    let limited = get_from(&server, "/health", "192.0.2.1").await;
    assert_eq!(limited.status(), 429);
    assert_hardened(&limited);
    server.stop().await;
}

#[tokio::test]
async fn cors_answers_only_allowed_origins() {
    let db = TestDb::new().await;
    let server =
        TestServer::start(&db, &[("CORS_ALLOWED_ORIGINS", "https://app.example/,https://admin.example")]).await;
    let allowed = server.http.get(server.url("/health")).header("origin", "https://app.example").send().await.unwrap();
    let h = allowed.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-methods"], "GET, POST, DELETE, OPTIONS");
    assert_eq!(
        h["access-control-allow-headers"],
        "Content-Type, Authorization, Mcp-Session-Id, MCP-Protocol-Version, Last-Event-ID, X-Agent-Id"
    );
    assert_eq!(h["access-control-expose-headers"], "Mcp-Session-Id");
    assert_eq!(h["access-control-max-age"], "86400");

    let preflight = server
        .http
        .request(reqwest::Method::OPTIONS, server.url("/mcp"))
        .header("origin", "https://admin.example/")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 204);
    assert_eq!(preflight.headers()["access-control-allow-origin"], "https://admin.example");

    let other = server.http.get(server.url("/health")).header("origin", "https://evil.example").send().await.unwrap();
    assert!(other.headers().iter().all(|(name, _)| !name.as_str().starts_with("access-control-")));
    server.stop().await;
}

#[tokio::test]
async fn ip_lists_follow_the_client_ip_decided_once() {
    let db = TestDb::new().await;
    let server = TestServer::start(
        &db,
        &[
            ("TRUST_PROXY", "1"),
            ("IP_DENYLIST", "203.0.113.0/24"),
            ("ADMIN_IP_ALLOWLIST", "198.51.100.0/24,::ffff:192.0.2.9"),
        ],
    )
    .await;
    assert_eq!(get_from(&server, "/health", "203.0.113.77").await.status(), 403, "denylist CIDR");
    // Only the rightmost entry (appended by our one proxy) counts: a forged left entry is ignored.
    assert_eq!(get_from(&server, "/health", "198.51.100.1, 203.0.113.77").await.status(), 403);
    assert_eq!(get_from(&server, "/health", "203.0.113.77, 198.51.100.1").await.status(), 200);

    assert_eq!(get_from(&server, "/admin/api/me", "192.0.2.200").await.status(), 403, "outside the admin allowlist");
    assert_eq!(get_from(&server, "/admin", "192.0.2.200").await.status(), 403);
    assert_eq!(get_from(&server, "/administrator", "192.0.2.200").await.status(), 404, "not the admin scope");
    assert_ne!(get_from(&server, "/admin/api/me", "198.51.100.20").await.status(), 403);
    assert_ne!(get_from(&server, "/admin/api/me", "192.0.2.9").await.status(), 403, "IPv4-mapped entries match IPv4");
    server.stop().await;

    // Without TRUST_PROXY, X-Forwarded-For is ignored: the socket peer (127.0.0.1) decides.
    let direct = TestServer::start(&db, &[("IP_DENYLIST", "203.0.113.0/24")]).await;
    assert_eq!(get_from(&direct, "/health", "203.0.113.77").await.status(), 200);
    direct.stop().await;
}

#[tokio::test]
async fn per_ip_then_global_limits_refuse_without_taking_slots() {
    let db = TestDb::new().await;
    let server = TestServer::start(
        &db,
        &[
            ("TRUST_PROXY", "1"),
            ("HTTP_RATE_LIMIT_PER_IP", "3"),
            ("HTTP_RATE_LIMIT_GLOBAL", "5"),
            ("WEBHOOK_RATE_LIMIT_PER_IP", "2"),
        ],
    )
    .await;
    for _ in 0..3 {
        assert_eq!(get_from(&server, "/health", "192.0.2.1").await.status(), 200);
    }
    let per_ip = get_from(&server, "/health", "192.0.2.1").await;
    assert_eq!(per_ip.status(), 429);
    let retry: u64 = per_ip.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let body: serde_json::Value = per_ip.json().await.unwrap();
    assert_eq!((body["error"].as_str(), body["code"].as_str()), (Some("Too many requests"), Some("rate_limited")));
    // Refused requests took no global slot: two more clients fit before the global limit.
    assert_eq!(get_from(&server, "/health", "192.0.2.2").await.status(), 200);
    assert_eq!(get_from(&server, "/health", "192.0.2.3").await.status(), 200);
    let global = get_from(&server, "/health", "192.0.2.4").await;
    assert_eq!(global.status(), 429);
    assert!(global.headers().contains_key("retry-after"));
    assert_eq!(global.json::<serde_json::Value>().await.unwrap()["error"], "Too many requests (global limit)");

    // Webhooks: their own per-IP limit, and the full global bucket does not apply to them.
    for _ in 0..2 {
        let wrong_method = get_from(&server, "/webhooks/a1/sms", "192.0.2.9").await;
        // A Twilio route answers every refusal in TwiML, whichever layer refuses (docs/webhooks.md).
        assert_eq!(wrong_method.status(), 405);
        assert!(wrong_method.headers()["allow"].to_str().unwrap().contains("POST"));
        assert_eq!(wrong_method.headers()["content-type"], "text/xml; charset=utf-8");
        assert_eq!(wrong_method.text().await.unwrap(), "<Response/>");
    }
    let limited = get_from(&server, "/webhooks/a1/sms", "192.0.2.9").await;
    assert_eq!(limited.status(), 429);
    assert!(limited.headers().contains_key("retry-after") && limited.headers().contains_key("x-request-id"));
    assert_eq!(limited.headers()["content-type"], "text/xml; charset=utf-8");
    assert_eq!(limited.text().await.unwrap(), "<Response/>");
    // The email webhook is not Twilio's: its refusals stay JSON.
    let email = get_from(&server, "/webhooks/a1/email", "192.0.2.10").await;
    assert_eq!(
        (email.status().as_u16(), email.json::<serde_json::Value>().await.unwrap()["code"].as_str()),
        (405, Some("method_not_allowed"))
    );
    server.stop().await;
}

#[tokio::test]
async fn bodies_over_one_mebibyte_are_refused_by_length_and_while_streaming() {
    let db = TestDb::new().await;
    let server = TestServer::start(&db, &[]).await;
    let at_limit = server.http.post(server.url("/missing")).body(vec![b'x'; 1024 * 1024]).send().await.unwrap();
    assert_eq!(at_limit.status(), 404, "exactly 1 MiB passes the limit");

    // A chunked body declares no length: it is cut off while being read.
    let addr = server.base.trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!("POST /missing HTTP/1.1\r\nHost: {addr}\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n\r\n");
    stream.write_all(head.as_bytes()).await.unwrap();
    let chunk = vec![b'y'; 64 * 1024];
    for _ in 0..17 {
        let mut frame = format!("{:x}\r\n", chunk.len()).into_bytes();
        frame.extend_from_slice(&chunk);
        frame.extend_from_slice(b"\r\n");
        if stream.write_all(&frame).await.is_err() {
            break; // the server may close once it has answered
        }
    }
    let _ = stream.write_all(b"0\r\n\r\n").await;
    let mut reply = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), stream.read_to_end(&mut reply)).await;
    let reply = String::from_utf8_lossy(&reply);
    assert!(reply.starts_with("HTTP/1.1 413"), "{}", reply.lines().next().unwrap_or_default());
    assert!(reply.contains("\"code\":\"payload_too_large\""));
    assert!(reply.to_ascii_lowercase().contains("x-content-type-options: nosniff"));
    server.stop().await;
}

/// What a client that trickles its request in one byte per second saw: whether the server
/// closed the connection before the request was all sent, how long that took, what it answered.
struct Trickled {
    slow: &'static str,
    cut_off: bool,
    after: std::time::Duration,
    reply: String,
}

/// Sends `at_once` in one go, then `trickled` one byte per second until the server hangs up.
async fn trickle(addr: String, slow: &'static str, at_once: Vec<u8>, trickled: Vec<u8>) -> Trickled {
    let started = std::time::Instant::now();
    let mut stream = tokio::net::TcpStream::connect(&addr).await.unwrap();
    stream.write_all(&at_once).await.unwrap();
    let mut reply = Vec::new();
    let mut buf = [0u8; 4096];
    let mut cut_off = false;
    'send: for byte in trickled {
        if stream.write_all(&[byte]).await.is_err() {
            cut_off = true;
            break;
        }
        let pause = tokio::time::sleep(std::time::Duration::from_secs(1));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                read = stream.read(&mut buf) => match read {
                    Ok(0) | Err(_) => {
                        cut_off = true;
                        break 'send;
                    }
                    Ok(n) => reply.extend_from_slice(&buf[..n]),
                },
            }
        }
    }
    Trickled { slow, cut_off, after: started.elapsed(), reply: String::from_utf8_lossy(&reply).into_owned() }
}

#[tokio::test]
async fn slow_clients_are_cut_off_while_other_requests_stay_fast() {
    let db = TestDb::new().await;
    let server =
        TestServer::start(&db, &[("HTTP_RATE_LIMIT_PER_IP", "100000"), ("HTTP_RATE_LIMIT_GLOBAL", "100000")]).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    // Each request would take over a minute to send at one byte per second.
    let slow_head = format!("GET /health HTTP/1.1\r\nHost: {addr}\r\nX-Slow: {}\r\n\r\n", "a".repeat(60));
    let body_head =
        format!("POST /mcp HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n");
    let mut slow = Vec::new();
    for _ in 0..8 {
        slow.push(tokio::spawn(trickle(addr.clone(), "header", Vec::new(), slow_head.clone().into_bytes())));
        slow.push(tokio::spawn(trickle(addr.clone(), "body", body_head.clone().into_bytes(), vec![b' '; 100])));
    }

    // Meanwhile other clients are served as usual.
    let mut served = 0;
    while slow.iter().any(|task| !task.is_finished()) {
        let started = std::time::Instant::now();
        let health = server.http.get(server.url("/health")).send().await.unwrap();
        assert_eq!(health.status(), 200);
        assert!(started.elapsed() < std::time::Duration::from_secs(5), "/health waited behind the slow clients");
        served += 1;
        tokio::time::sleep(std::time::Duration::from_millis(250)).await;
    }
    assert!(served > 1);

    let (mut heads, mut bodies) = (0, 0);
    for task in slow {
        let t = task.await.unwrap();
        assert!(t.cut_off, "a slow {} was never cut off", t.slow);
        // Generous: the limits are 10 s; the requests would take over 60 s.
        assert!(t.after < std::time::Duration::from_secs(40), "a slow {} was held for {:?}", t.slow, t.after);
        if t.slow == "body" {
            assert!(t.reply.starts_with("HTTP/1.1 408"), "{}", t.reply.lines().next().unwrap_or_default());
            assert!(t.reply.contains("\"code\":\"invalid_input\""), "{}", t.reply);
            assert!(t.reply.to_ascii_lowercase().contains("connection: close"));
            bodies += 1;
        } else {
            assert!(!t.reply.contains(" 200 "), "the trickled request was never served: {}", t.reply);
            heads += 1;
        }
    }
    assert_eq!((heads, bodies), (8, 8));
    server.stop().await;
}

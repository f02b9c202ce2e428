//! Growth an app or a stranger could cause, each bounded by a setting: the audit log, metrics,
//! consent and tokens, list pages, imports, slow clients and connections.

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use selfcloud_gateway::server::ConnectionLimits;
use serde_json::{json, Value};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test]
async fn audit_entries_keep_a_bounded_path_and_request_id() {
    let s = Server::start().await;
    let t = s.user("ada").await;
    let long_key = "k".repeat(60_000);
    let junk_id = "x".repeat(10_000);
    let resp = s
        .http
        .get(s.url(&format!("/v1/storage/notes/{long_key}")))
        .bearer_auth(&t)
        .header("x-request-id", &junk_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    // The client's odd id is replaced by one of ours, in the answer and the log alike.
    let answered = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert!(answered.len() < 64 && answered != junk_id);
    let (_, _, audit) = s.call(Method::GET, "/v1/audit", Some(&t), None).await;
    let entry = &audit["entries"].as_array().unwrap().iter().find(|e| e["status"] == 400).unwrap().clone();
    assert!(entry["path"].as_str().unwrap().len() <= 515, "{}", entry["path"].as_str().unwrap().len());
    assert_eq!(entry["request_id"], answered.as_str());
    // A plain id of the client's is kept.
    let resp = s.http.get(s.url("/v1/me")).bearer_auth(&t).header("x-request-id", "trace-42.a_b:c").send().await;
    assert_eq!(resp.unwrap().headers()["x-request-id"], "trace-42.a_b:c");
}

#[tokio::test]
async fn metrics_do_not_grow_with_the_methods_clients_invent() {
    let s = Server::start().await;
    let size = |s: &Server| {
        let url = s.url("/metrics");
        async move { reqwest::get(url).await.unwrap().text().await.unwrap() }
    };
    for i in 0..5 {
        let m = reqwest::Method::from_bytes(format!("WARMUP{i}").as_bytes()).unwrap();
        s.http.request(m, s.url("/nowhere")).send().await.unwrap();
    }
    size(&s).await; // the first scrape adds /metrics' own series
    let before = size(&s).await;
    for i in 0..200 {
        let m = reqwest::Method::from_bytes(format!("ODD{i}").as_bytes()).unwrap();
        s.http.request(m, s.url("/nowhere")).send().await.unwrap();
    }
    let after = size(&s).await;
    assert!(!after.contains("ODD"), "raw methods never become labels");
    assert!(after.contains("method=\"other\""));
    assert!(after.len() < before.len() + 256, "{} -> {}", before.len(), after.len());
}

#[tokio::test]
async fn consent_decisions_are_rate_limited() {
    // Each decision writes a code (and fsyncs): the user's own request budget bounds them.
    let s = Server::start_with(|c| (c.limits.rate_per_token, c.limits.rate_burst) = (1, 2)).await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes"]).await;
    let signed_up = s.sign_up("ada").await;
    let ada = s.log_in("ada").await;
    let req = selfcloud_sdk::AuthorizationRequest::new(&s.app_config(&client_id), &["storage:read:notes"]);
    let started = std::time::Instant::now();
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(s.decide(&ada, &req, "allow").await.status());
    }
    let allowed = statuses.iter().filter(|st| **st == StatusCode::FOUND).count();
    // A burst of two, then one a second.
    assert!(allowed as u64 <= 2 + started.elapsed().as_secs() + 1, "{allowed} allowed: {statuses:?}");
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS));
    // However many consents got through, the user holds one grant for the app.
    let user = signed_up["user_id"].as_str().unwrap().parse().unwrap();
    assert_eq!(s.control.grants(user, u64::MAX / 2).await.unwrap().len(), 1);
}

#[tokio::test]
async fn an_apps_tokens_share_one_request_budget() {
    let s = Server::start_with(|c| (c.limits.rate_per_token, c.limits.rate_burst) = (1, 3)).await;
    let ada = s.user("ada").await;
    let (client_id, first) = s.app_token(&ada, &["storage:read:notes"]).await;
    // A second sign-in of the same app: a second access token on the same grant.
    let (_, second) = s.authorize(&ada, &client_id, &["storage:read:notes"]).await;
    assert_ne!(first.access_token, second.access_token);
    let mut statuses = Vec::new();
    for token in [&first.access_token, &second.access_token, &first.access_token, &second.access_token] {
        statuses.push(s.call(Method::GET, "/v1/storage/notes", Some(token), None).await.0);
    }
    assert_eq!(statuses.iter().filter(|st| **st == StatusCode::TOO_MANY_REQUESTS).count(), 1, "{statuses:?}");
}

#[tokio::test]
async fn a_refresh_supersedes_the_previous_access_token() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let (client_id, first) = s.app_token(&ada, &["storage:read:notes"]).await;
    let app = selfcloud_sdk::Client::with_tokens(s.app_config(&client_id), first.clone());
    let second = app.refresh().await.unwrap();
    assert_eq!(
        s.call(Method::GET, "/v1/storage/notes", Some(&first.access_token), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(s.call(Method::GET, "/v1/storage/notes", Some(&second.access_token), None).await.0, StatusCode::OK);
}

#[tokio::test]
async fn list_pages_stop_at_a_byte_budget() {
    let s = Server::start_with(|c| c.limits.list_max_bytes = 3_000).await;
    let t = s.user("ada").await;
    for i in 0..6 {
        s.put_ok(&t, &format!("/v1/storage/big/{i}"), json!("x".repeat(1_000))).await;
    }
    let (mut seen, mut cursor) = (0, None::<String>);
    loop {
        let path = match &cursor {
            Some(c) => format!("/v1/storage/big?limit=1000&cursor={c}"),
            None => "/v1/storage/big?limit=1000".to_owned(),
        };
        let (st, _, page) = s.call(Method::GET, &path, Some(&t), None).await;
        assert_eq!(st, StatusCode::OK);
        let n = page["records"].as_array().unwrap().len();
        assert!(n <= 3, "{n} records of 1 KB in a 3 KB page");
        seen += n;
        match page["cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => break,
        }
    }
    assert_eq!(seen, 6);
}

#[tokio::test]
async fn an_oversized_import_is_refused_without_being_kept() {
    let s = Server::start_with(|c| c.limits.max_import_bytes = 64 * 1024).await;
    let signed_up = s.sign_up("ada").await;
    let t = s.log_in("ada").await;
    let dir =
        selfcloud_control::instance_dir(s.home.path(), signed_up["instance"]["id"].as_str().unwrap().parse().unwrap());
    // Declared too large: refused before a byte is read.
    let resp = s
        .http
        .post(s.url("/v1/import"))
        .bearer_auth(&t)
        .header("content-type", "application/x-tar")
        .body(vec![0u8; 128 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Streamed without a length: cut off once past the limit, and the spool is gone.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = (0..32).map(|_| Ok(vec![0u8; 8 * 1024])).collect();
    let resp = s
        .http
        .post(s.url("/v1/import"))
        .bearer_auth(&t)
        .header("content-type", "application/x-tar")
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(chunks)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(Server::error_code(&body), "too_large");
    let left: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert!(left.iter().all(|n| !n.to_string_lossy().contains("import")), "{left:?}");
}

/// A server with these connection limits; it stops when the answer is dropped.
struct Limited {
    addr: String,
    _stop: tokio_util::sync::DropGuard,
    _home: tempfile::TempDir,
}

async fn server_with_connections(limits: ConnectionLimits) -> Limited {
    let home = tempfile::tempdir().unwrap();
    let control = selfcloud_control::Control::open(common::test_config(home.path()), 0).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let config = selfcloud_gateway::GatewayConfig { connections: limits, ..Default::default() };
    let clock = std::sync::Arc::new(selfcloud_gateway::clock::SystemClock);
    let running = selfcloud_gateway::serve(listener, control, clock, config, shutdown.clone()).await.unwrap();
    Limited { addr: running.addr.to_string(), _stop: shutdown.drop_guard(), _home: home }
}

#[tokio::test]
async fn a_client_that_never_finishes_its_headers_is_cut_off() {
    let limits = ConnectionLimits { header_read_timeout: Duration::from_millis(500), ..Default::default() };
    let server = server_with_connections(limits).await;
    let addr = server.addr.clone();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n").await.unwrap();
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "the connection is still open after 5 s");
    // One that connects and sends nothing at all is cut off too.
    let mut silent = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), silent.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "a silent connection is still open after 5 s");
    // A kept-alive connection that sends no second request is closed as well.
    let mut kept = tokio::net::TcpStream::connect(&addr).await.unwrap();
    kept.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), kept.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "an idle kept-alive connection is still open after 5 s");
    assert!(String::from_utf8_lossy(&buf).contains("200 OK"), "it was served first");
    // Nor does an HTTP/2 preface (HTTP/2 is not served: it has no header deadline) hold a slot.
    let mut h2 = tokio::net::TcpStream::connect(&addr).await.unwrap();
    h2.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00").await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), h2.read_to_end(&mut buf)).await;
    assert!(closed.is_ok(), "an HTTP/2 preface kept its connection open");
    // A client that sends its request in time is served.
    let ok = reqwest::get(format!("http://{addr}/healthz")).await.unwrap();
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn connections_past_the_cap_wait_until_one_closes() {
    let limits =
        ConnectionLimits { max_connections: 2, header_read_timeout: Duration::from_secs(30), ..Default::default() };
    assert!(limits.max_connections < ConnectionLimits::default().max_connections);
    let server = server_with_connections(limits).await;
    let addr = server.addr.clone();
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut c = tokio::net::TcpStream::connect(&addr).await.unwrap();
        c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 512];
        assert!(c.read(&mut buf).await.unwrap() > 0, "served: the connection stays open (keep-alive)");
        held.push(c);
    }
    // A third connection sends its request (the kernel completes the handshake, the server does
    // not take it) ...
    let mut third = tokio::net::TcpStream::connect(&addr).await.unwrap();
    third.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    // ... while the server goes on answering on a connection it holds, so it would have answered
    // the third by now had it taken it.
    let mut buf = [0u8; 512];
    for _ in 0..10 {
        held[0].write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(held[0].read(&mut buf).await.unwrap() > 0, "a held connection is served");
    }
    let unanswered = third.try_read(&mut buf);
    assert!(
        matches!(&unanswered, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a third connection is not served while two are open: {unanswered:?}"
    );
    drop(held.pop());
    let n = tokio::time::timeout(Duration::from_secs(5), third.read(&mut buf)).await.unwrap().unwrap();
    let answer = String::from_utf8_lossy(&buf[..n]);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

#[tokio::test]
async fn a_client_that_trickles_its_body_is_cut_off() {
    let limits = ConnectionLimits { body_read_timeout: Duration::from_millis(500), ..Default::default() };
    let server = server_with_connections(limits).await;
    let addr = server.addr.clone();
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head =
        "POST /v1/accounts HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{";
    slow.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(5), slow.read_to_end(&mut buf)).await;
    assert!(answered.is_ok(), "a body that stopped coming is still waited for after 5 s");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 4"), "{text}");
}

/// A body shorter than its `Content-Length` is the client's error, on either runtime: the
/// instance is fine, and is not reported as restarting.
#[tokio::test]
async fn a_body_shorter_than_its_length_is_a_400_and_writes_nothing() {
    let limits = ConnectionLimits { body_read_timeout: Duration::from_millis(500), ..Default::default() };
    let s = Server::start_configured(
        |_| {},
        selfcloud_gateway::GatewayConfig { connections: limits, ..Default::default() },
    )
    .await;
    let ada = s.user("ada").await;
    s.put_ok(&ada, "/v1/storage/notes/a", json!(1)).await;
    let addr = s.base.trim_start_matches("http://").to_owned();
    let mut short = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let head = format!(
        "PUT /v1/storage/notes/short HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {ada}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\nConnection: close\r\n\r\n{{\"text\":"
    );
    short.write_all(head.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let answered = tokio::time::timeout(Duration::from_secs(10), short.read_to_end(&mut buf)).await;
    assert!(answered.is_ok(), "no answer in 10 s");
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 400"), "{text}");
    assert!(text.contains("\"invalid_request\""), "{text}");
    let (status, _, _) = s.call(Method::GET, "/v1/storage/notes/short", Some(&ada), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    s.put_ok(&ada, "/v1/storage/notes/b", json!(2)).await;
}

/// Each sign-up provisions an instance (a directory, a store, a key file): a crowd of addresses,
/// each within its own limit, is bounded by one cap for all, on the API and the page alike.
#[tokio::test]
async fn sign_ups_from_many_addresses_share_one_cap() {
    let s = Server::start_with(|c| (c.limits.rate_per_ip, c.limits.sign_ups_per_minute) = (1, 3)).await;
    // Every address of 127.0.0.0/8 is this machine's: each request comes from another one.
    let from = |i: u8| reqwest::Client::builder().local_address(std::net::IpAddr::from([127, 0, 0, 10 + i]));
    let mut answers = Vec::new();
    for i in 0..6 {
        let body = json!({"username": format!("crowd{i}"), "password": "correct horse battery"});
        let resp = from(i).build().unwrap().post(s.url("/v1/accounts")).json(&body).send().await.unwrap();
        let retry = resp.headers().get("retry-after").map(|v| v.to_str().unwrap().parse::<u64>().unwrap());
        answers.push((resp.status(), retry, resp.json::<Value>().await.unwrap()));
    }
    let created = answers.iter().filter(|(st, _, _)| *st == StatusCode::CREATED).count();
    assert_eq!(created, 3, "{answers:?}");
    let (status, retry, body) = answers.last().unwrap();
    assert_eq!(*status, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert!(matches!(retry, Some(1..=60)), "{retry:?}");
    // The page's form counts against the same cap.
    let browser = from(20).cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let csrf = s.form_token(&browser, &s.url("/signup")).await;
    let pw = "correct horse battery";
    let form = [("username", "crowd9"), ("password", pw), ("password_again", pw), ("csrf", &csrf)];
    let resp = browser.post(s.url("/signup")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
}

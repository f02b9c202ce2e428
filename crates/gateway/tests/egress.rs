//! The egress channel, attacked and used: an owner names an upstream OpenAI-compatible provider
//! (llama.cpp's own `llama-server`, on loopback, which wants a key) and chats with it through
//! control's broker; the key is sealed in the instance; an origin the operator did not
//! allow-list is never reached, nor one a redirect points to. Runs on both runtimes (the
//! in-process one has a broker's socket too).

mod common;

use common::{free_port, Peer, Server, REQUIRE_MODEL_ENV};
use reqwest::{Method, StatusCode};
use selfcloud_instance::protocol::egress::Origin;
use serde_json::{json, Value};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Set by `./selfcloud test`: llama.cpp's `llama-server`, built from the llama-cpp-python sdist.
const LLAMA_SERVER_ENV: &str = "SELFCLOUD_TEST_LLAMA_SERVER";
const KEY: &str = "sk-upstream-test-4f1c9a";
const MODEL: &str = "upstream-smollm2";

/// `llama-server` with the test model on a loopback port, asking for [`KEY`]; `None` (noted)
/// when this run has none and does not require one.
async fn llama_server() -> Option<Peer> {
    let (server, model) = match (std::env::var_os(LLAMA_SERVER_ENV), common::test_model()) {
        (Some(server), Some(model)) => (server, model),
        _ if std::env::var_os(REQUIRE_MODEL_ENV).is_some() => {
            panic!("{REQUIRE_MODEL_ENV} is set but {LLAMA_SERVER_ENV} is not")
        }
        _ => {
            eprintln!("skipped: no llama-server ({LLAMA_SERVER_ENV} unset; `./selfcloud test` builds one and sets it)");
            return None;
        }
    };
    let port = free_port();
    let child = std::process::Command::new(server)
        .args(["-m", model.to_str().unwrap(), "--host", "127.0.0.1", "--port", &port.to_string()])
        .args(["-c", "1024", "-np", "1", "-t", "1", "--api-key", KEY])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("llama-server starts");
    let upstream = Peer { child, port };
    let health = format!("http://127.0.0.1:{port}/health");
    for _ in 0..600 {
        if reqwest::get(&health).await.is_ok_and(|r| r.status().is_success()) {
            return Some(upstream);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("llama-server did not come up on port {port}");
}

/// A loopback host that counts the connections it is sent and answers each with `answer`.
struct Host {
    port: u16,
    hits: Arc<AtomicUsize>,
}

fn host(answer: String) -> Host {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let hits = Arc::new(AtomicUsize::new(0));
    let counted = hits.clone();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
            let mut head = Vec::new();
            let mut byte = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && conn.read(&mut byte).is_ok_and(|n| n == 1) {
                head.push(byte[0]);
            }
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    Host { port, hits }
}

async fn chat(server: &Server, token: &str, stream: bool) -> reqwest::Response {
    let body = json!({"model": MODEL, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8, "stream": stream});
    server.http.post(server.url("/v1/llm/chat/completions")).bearer_auth(token).json(&body).send().await.unwrap()
}

async fn name_provider(server: &Server, owner: &str, base_url: &str, key: &str) -> Value {
    let body = json!({"base_url": base_url, "model": MODEL, "api_key": key});
    let (status, _, shown) = server.call(Method::PUT, "/v1/llm/upstream", Some(owner), Some(body)).await;
    assert_eq!(status, StatusCode::OK, "{shown}");
    shown
}

fn files_under(dir: &std::path::Path, found: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            files_under(&path, found);
        } else {
            found.push(path);
        }
    }
}

#[tokio::test]
async fn an_owners_upstream_provider_is_reached_only_through_the_broker_and_only_where_allowed() {
    let Some(upstream) = llama_server().await else { return };
    let never = host("HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}".into());
    let never_url = format!("http://127.0.0.1:{}/v1", never.port);
    let redirect = format!(
        "HTTP/1.1 307 Temporary Redirect\r\nLocation: {never_url}/chat/completions\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let redirector = host(redirect);
    let allowed = [upstream.port, redirector.port].map(|p| Origin::parse(&format!("http://127.0.0.1:{p}")).unwrap());
    let server = Server::start_with(|c| c.egress.allow = allowed.to_vec()).await;
    server.sign_up("ada").await;
    let ada = server.log_in("ada").await;

    // Named once; the key is never shown again.
    let (status, _, none) = server.call(Method::GET, "/v1/llm/upstream", Some(&ada), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{none}");
    let base_url = format!("http://127.0.0.1:{}/v1", upstream.port);
    let shown = name_provider(&server, &ada, &base_url, KEY).await;
    assert_eq!(shown, json!({"base_url": base_url, "model": MODEL, "api_key_set": true}));
    let (_, _, again) = server.call(Method::GET, "/v1/llm/upstream", Some(&ada), None).await;
    assert!(!again.to_string().contains(KEY), "{again}");
    let (_, _, models) = server.call(Method::GET, "/v1/llm/models", Some(&ada), None).await;
    assert!(
        models["data"].as_array().unwrap().iter().any(|m| m["id"] == MODEL && m["owned_by"] == "upstream"),
        "{models}"
    );

    // A chat naming its model is the provider's answer (it took the key: it refuses without).
    let answer = chat(&server, &ada, false).await;
    assert_eq!(answer.status(), StatusCode::OK);
    let answer: Value = answer.json().await.unwrap();
    assert!(answer["choices"][0]["message"]["content"].is_string(), "{answer}");
    let used = answer["usage"]["total_tokens"].as_u64().expect("the provider reports usage");
    assert!(used > 0, "{answer}");
    let streamed = chat(&server, &ada, true).await;
    assert_eq!(streamed.status(), StatusCode::OK);
    assert!(streamed.headers()[reqwest::header::CONTENT_TYPE].to_str().unwrap().starts_with("text/event-stream"));
    let events = streamed.text().await.unwrap();
    assert!(events.contains("chat.completion.chunk") && events.trim_end().ends_with("data: [DONE]"), "{events}");
    // The owner paid what the provider reported, from their own budget.
    let (_, _, usage) = server.call(Method::GET, "/v1/llm/usage", Some(&ada), None).await;
    assert!(usage["owner"]["tokens"].as_u64().unwrap() >= used, "{usage}");

    // An app with the chat scope may use it; no app may see or change it.
    let (_, tokens) = server.app_token(&ada, &["llm:chat"]).await;
    let app = tokens.access_token;
    assert_eq!(chat(&server, &app, false).await.status(), StatusCode::OK);
    for method in [Method::GET, Method::DELETE] {
        let (status, _, _) = server.call(method.clone(), "/v1/llm/upstream", Some(&app), None).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{method}");
    }

    // The key is sealed: no file of the home holds it in the clear.
    let mut files = Vec::new();
    files_under(server.home.path(), &mut files);
    assert!(!files.is_empty());
    for file in files {
        let bytes = std::fs::read(&file).unwrap_or_default();
        assert!(!bytes.windows(KEY.len()).any(|w| w == KEY.as_bytes()), "the key in the clear in {}", file.display());
    }

    // Nor does an export carry it out (the key stays with the instance).
    let export = server.http.get(server.url("/v1/export")).bearer_auth(&ada).send().await.unwrap();
    assert_eq!(export.status(), StatusCode::OK);
    let archive = export.bytes().await.unwrap();
    assert!(archive.len() > 512);
    assert!(!archive.windows(KEY.len()).any(|w| w == KEY.as_bytes()), "the key left in an export");
    assert!(!archive.windows(12).any(|w| w == b"llm-upstream"), "the provider left in an export");

    // A wrong key is the provider's refusal, as a bad gateway.
    name_provider(&server, &ada, &base_url, "sk-wrong").await;
    let refused = chat(&server, &ada, false).await;
    assert_eq!(refused.status(), StatusCode::BAD_GATEWAY);
    let refused: Value = refused.json().await.unwrap();
    assert_eq!(Server::error_code(&refused), "upstream_failed", "{refused}");

    // An origin off the allow-list is refused by control, and never reached.
    name_provider(&server, &ada, &never_url, KEY).await;
    let off_list = chat(&server, &ada, false).await;
    assert_eq!(off_list.status(), StatusCode::FORBIDDEN);
    let off_list: Value = off_list.json().await.unwrap();
    assert!(off_list["error"]["message"].as_str().unwrap().contains("allow-list"), "{off_list}");
    // Nor through an allowed host's redirect: control follows none.
    name_provider(&server, &ada, &format!("http://127.0.0.1:{}/v1", redirector.port), KEY).await;
    let redirected = chat(&server, &ada, false).await;
    assert_eq!(redirected.status(), StatusCode::BAD_GATEWAY);
    assert_eq!(redirector.hits.load(Ordering::SeqCst), 1, "the allowed host was asked once");
    assert_eq!(never.hits.load(Ordering::SeqCst), 0, "a host off the allow-list was reached");

    // Forgotten: the model is no longer the provider's.
    let (status, _, _) = server.call(Method::DELETE, "/v1/llm/upstream", Some(&ada), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, _, _) = server.call(Method::GET, "/v1/llm/upstream", Some(&ada), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_ne!(chat(&server, &ada, false).await.status(), StatusCode::OK);
    server.stop().await;
}

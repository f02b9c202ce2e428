//! What an app's LLM calls cost is written whatever its user's store does meanwhile: a store
//! filled during an answer does not make it free, and a ledger that cannot be written ends the
//! answer with an error and refuses the next call until it can.

mod common;

use common::{test_model, with_model, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn question(stream: bool, max_tokens: u32) -> Value {
    json!({
        "messages": [{"role": "user", "content": "Count from one to forty in words."}],
        "temperature": 0,
        "max_tokens": max_tokens,
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    })
}

/// A server with the model and a small store, Ada, and an app's `llm:chat` token and grant id.
async fn ada_and_an_app() -> Option<(Server, String, String, String)> {
    let model = test_model()?;
    let s = Server::start_with(|c| {
        with_model(c, &model, 1, 4);
        c.limits.quota_bytes = 256 * 1024;
    })
    .await;
    let ada = s.user("ada").await;
    let (_, app) = s.app_token(&ada, &["llm:chat"]).await;
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let grant_id = grants["grants"][0]["id"].as_str().unwrap().to_owned();
    Some((s, ada, app.access_token, grant_id))
}

/// Fills Ada's store to its last byte.
async fn fill(s: &Server, ada: &str) {
    let (mut n, mut size) = (0, 64 * 1024);
    while size > 0 {
        let path = format!("/v1/storage/filler/k{n}");
        match s.call(Method::PUT, &path, Some(ada), Some(json!("x".repeat(size)))).await.0 {
            StatusCode::INSUFFICIENT_STORAGE => size /= 2,
            st => {
                assert!(st.is_success(), "{st}");
                n += 1;
            }
        }
    }
}

/// Opens a streamed answer and reads until a piece of text came (the engine is under way).
async fn started(s: &Server, app: &str, body: &Value) -> (reqwest::Response, String) {
    let mut resp = s.http.post(s.url("/v1/llm/chat/completions")).bearer_auth(app).json(body).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let mut seen = String::new();
    while seen.matches("data: ").count() < 2 {
        seen.push_str(&String::from_utf8_lossy(&resp.chunk().await.unwrap().expect("the stream ended early")));
    }
    (resp, seen)
}

fn payloads(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn a_store_filled_during_an_answer_does_not_make_it_free() {
    let Some((s, ada, app, grant_id)) = ada_and_an_app().await else { return };
    let (resp, seen) = started(&s, &app, &question(true, 64)).await;
    fill(&s, &ada).await;
    let body = seen + &resp.text().await.unwrap();
    let payloads = payloads(&body);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"), "{body}");
    let usage: Value = serde_json::from_str(&payloads[payloads.len() - 2]).unwrap();
    let total = usage["usage"]["total_tokens"].as_u64().unwrap();
    assert!(total > 0, "{body}");
    // The owner frees room again: what the answer cost is in the ledger, not lost.
    s.call(Method::DELETE, "/v1/storage/filler/k0", Some(&ada), None).await;
    assert_eq!(s.spent_today(&ada, &grant_id, total).await, total);
}

#[cfg(feature = "attack-probes")]
#[tokio::test]
async fn a_ledger_that_cannot_be_written_ends_the_answer_and_refuses_the_next_call() {
    let Some((s, ada, app, grant_id)) = ada_and_an_app().await else { return };
    // The ledger breaks while an answer is under way (a call never starts without its room).
    let (resp, seen) = started(&s, &app, &question(true, 200)).await;
    s.probe(&ada, json!({"probe": "ledger_unwritable", "unwritable": true})).await;
    let body = seen + &resp.text().await.unwrap();
    let last: Value = serde_json::from_str(payloads(&body).last().unwrap()).unwrap_or_else(|e| panic!("{e}: {body}"));
    assert!(last["error"]["code"].is_string(), "the answer ended as if paid: {body}");
    assert!(!body.contains("[DONE]"), "{body}");

    // The next call does not start while what the last one spent is not written.
    let (st, _, err) = s.call(Method::POST, "/v1/llm/chat/completions", Some(&app), Some(question(false, 4))).await;
    assert!(st.is_server_error(), "{st} {err}");
    assert!(Server::error_code(&err) == "internal", "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("could not be recorded"), "{err}");

    // Once it can be written, the next call writes the debt first, then runs.
    s.probe(&ada, json!({"probe": "ledger_unwritable", "unwritable": false})).await;
    let (st, _, answer) = s.call(Method::POST, "/v1/llm/chat/completions", Some(&app), Some(question(false, 4))).await;
    assert_eq!(st, StatusCode::OK, "{answer}");
    let second = answer["usage"]["total_tokens"].as_u64().unwrap();
    let (_, _, usage) = s.call(Method::GET, "/v1/llm/usage", Some(&ada), None).await;
    let mine = usage["apps"].as_array().unwrap().iter().find(|a| a["grant_id"] == grant_id.as_str()).unwrap().clone();
    assert_eq!(mine["requests"], 2, "{usage}");
    assert!(mine["tokens"].as_u64().unwrap() > second, "{usage}");
}

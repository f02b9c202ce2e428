//! The shared LLM engine as its own sandboxed process (`selfcloud engine run`), reached by each
//! instance only through the channel control's broker hands it: killed in the middle of two
//! answers, both end with 503 and `Retry-After` (the streamed one as its last event), and the
//! next call is served by the engine control starts again. Runs in the suite's process-runtime
//! pass (`./selfcloud test` sets the binary); in-process there is no engine process to kill.

mod common;

use common::{test_model, with_model, Server, PROCESS_RUNTIME_ENV};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

fn long_question(stream: bool) -> Value {
    json!({
        "messages": [{"role": "user", "content": "Write a very long story about a dragon who learns to read, at least 3000 words, with many chapters."}],
        "temperature": 0,
        "max_tokens": 600,
        "stream": stream,
    })
}

fn capital_question() -> Value {
    json!({
        "messages": [{"role": "user", "content": "What is the capital of France?"}],
        "temperature": 0,
        "max_tokens": 16,
    })
}

#[tokio::test]
async fn a_killed_engine_fails_the_answers_under_way_with_503_and_a_new_one_serves_the_next() {
    let Some(model) = test_model() else { return };
    if std::env::var_os(PROCESS_RUNTIME_ENV).is_none() {
        return;
    }
    let s = Server::start_with(|c| {
        with_model(c, &model, 1, 4);
        let llm = c.llm.as_mut().unwrap();
        llm.shared = Some(selfcloud_llm::llama::LlamaOptions { slots: 4, ..llm.engine.clone() });
    })
    .await;
    let ada = s.user("ada").await;
    let chat = "/v1/llm/chat/completions";
    assert_eq!(s.control.engine_pid(), None, "the engine starts with the first chat, not before");
    let (st, _, first) = s.call(Method::POST, chat, Some(&ada), Some(capital_question())).await;
    assert_eq!(st, StatusCode::OK, "{first}");
    assert!(first["choices"][0]["message"]["content"].as_str().unwrap().contains("Paris"), "{first}");
    let pid = s.control.engine_pid().expect("the engine runs as a process of its own");

    // Two long answers under way, from two users (one user's calls take turns for their bill):
    // Bob's whole, Ada's streamed, read until its first words came, by when Bob's is in the
    // engine too.
    let bob = s.user("bob").await;
    let (st, _, _) = s.call(Method::POST, chat, Some(&bob), Some(capital_question())).await;
    assert_eq!(st, StatusCode::OK, "Bob's instance is awake and holds its channel");
    let whole = {
        let (http, url) = (s.http.clone(), s.url(chat));
        tokio::spawn(async move { http.post(url).bearer_auth(bob).json(&long_question(false)).send().await.unwrap() })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut streamed = s.http.post(s.url(chat)).bearer_auth(&ada).json(&long_question(true)).send().await.unwrap();
    assert_eq!(streamed.status(), StatusCode::OK);
    let mut body = String::new();
    while body.matches("chat.completion.chunk").count() < 3 {
        let chunk = tokio::time::timeout(Duration::from_secs(60), streamed.chunk()).await.unwrap().unwrap();
        body.push_str(&String::from_utf8_lossy(&chunk.expect("the stream goes on until its first words")));
    }
    // SAFETY: a signal to the engine process this test's server started.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);

    let whole = tokio::time::timeout(Duration::from_secs(60), whole).await.unwrap().unwrap();
    assert_eq!(whole.status(), StatusCode::SERVICE_UNAVAILABLE, "{}", whole.text().await.unwrap());
    assert!(whole.headers().contains_key("retry-after"), "{:?}", whole.headers());
    let error: Value = whole.json().await.unwrap();
    assert_eq!(error["error"]["code"], "unavailable", "{error}");
    let rest = tokio::time::timeout(Duration::from_secs(60), streamed.text()).await.unwrap().unwrap();
    body.push_str(&rest);
    assert!(body.contains("\"code\":\"unavailable\""), "{body}");
    assert!(!body.contains("[DONE]"), "{body}");

    // The next call: a new engine (after the first crash there is no wait), a whole answer.
    let (st, _, again) = s.call(Method::POST, chat, Some(&ada), Some(capital_question())).await;
    assert_eq!(st, StatusCode::OK, "{again}");
    assert_eq!(again["choices"][0]["message"]["content"], first["choices"][0]["message"]["content"]);
    let restarted = s.control.engine_pid().expect("a new engine runs");
    assert_ne!(restarted, pid);
}

//! The private LLM through the gateway, on the real model (SmolLM2 through llama.cpp): an app
//! with `llm:chat` chats with a user's instance, JSON and streamed; one without the scope, or a
//! server without a model, is refused with the contract's error.

mod common;

use common::{test_model, with_model, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Greedy, with a pinned system prompt: the same answer every run.
fn capital_question(stream: bool) -> Value {
    json!({
        "model": "smollm2",
        "messages": [
            {"role": "system", "content": "You are a helpful assistant. Answer in one short sentence."},
            {"role": "user", "content": "What is the capital of France?"},
        ],
        "temperature": 0,
        "max_tokens": 24,
        "stream": stream,
        "stream_options": if stream { json!({"include_usage": true}) } else { Value::Null },
    })
}

async fn server_with_model() -> Option<Server> {
    let model = test_model()?;
    Some(Server::start_with(|c| with_model(c, &model, 1, 4)).await)
}

/// A server with the model, its user Ada (her session) and an app's `llm:chat` token for her.
async fn ada_and_a_chat_app() -> Option<(Server, String, String)> {
    let s = server_with_model().await?;
    let ada = s.user("ada").await;
    let (_, app) = s.app_token(&ada, &["llm:chat"]).await;
    Some((s, ada, app.access_token))
}

/// The `data:` payloads of a server-sent event stream, in order.
fn sse_payloads(body: &str) -> Vec<String> {
    body.split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data: ")).map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn an_app_with_llm_chat_gets_an_answer_from_the_real_model() {
    let Some((s, ada, t)) = ada_and_a_chat_app().await else { return };
    let t = t.as_str();

    let (st, _, models) = s.call(Method::GET, "/v1/llm/models", Some(t), None).await;
    assert_eq!(st, StatusCode::OK, "{models}");
    assert_eq!(models["data"][0]["id"], "smollm2");

    let (st, _, answer) =
        s.call(Method::POST, "/v1/llm/chat/completions", Some(t), Some(capital_question(false))).await;
    assert_eq!(st, StatusCode::OK, "{answer}");
    assert_eq!(answer["object"], "chat.completion");
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(text.contains("Paris"), "{answer}");
    assert_eq!(answer["choices"][0]["message"]["role"], "assistant");
    let usage = &answer["usage"];
    assert!(usage["prompt_tokens"].as_u64().unwrap() > 10, "{answer}");
    let completion = usage["completion_tokens"].as_u64().unwrap();
    assert!((1..=24).contains(&completion), "{answer}");
    assert_eq!(usage["total_tokens"].as_u64(), Some(usage["prompt_tokens"].as_u64().unwrap() + completion));
    assert_eq!(answer["timings"]["predicted_n"].as_u64(), Some(completion), "{answer}");

    // The same question again: the slot reuses the prompt it already holds.
    let (_, _, again) = s.call(Method::POST, "/v1/llm/chat/completions", Some(t), Some(capital_question(false))).await;
    assert_eq!(again["choices"][0]["message"]["content"], answer["choices"][0]["message"]["content"]);
    assert!(again["timings"]["cache_n"].as_u64().unwrap() > 0, "{again}");

    // The owner's audit log names the call, never its content.
    let (_, _, audit) = s.call(Method::GET, "/v1/audit", Some(&ada), None).await;
    let entry = audit["entries"].as_array().unwrap().iter().find(|e| e["path"] == "/v1/llm/chat/completions");
    assert_eq!(entry.map(|e| e["scope"].clone()), Some(json!("llm:chat")), "{audit}");
    assert!(!audit.to_string().contains("capital"), "{audit}");
}

#[tokio::test]
async fn a_streamed_answer_arrives_as_chunks_ending_in_done() {
    let Some(s) = server_with_model().await else { return };
    let ada = s.user("ada").await;
    let (_, app) = s.app_token(&ada, &["ai:chat"]).await;
    let resp = s
        .http
        .post(s.url("/v1/llm/chat/completions"))
        .bearer_auth(&app.access_token)
        .json(&capital_question(true))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let body = resp.text().await.unwrap();
    let payloads = sse_payloads(&body);
    assert_eq!(payloads.last().map(String::as_str), Some("[DONE]"), "{body}");
    let chunks: Vec<Value> = payloads[..payloads.len() - 1].iter().map(|p| serde_json::from_str(p).unwrap()).collect();
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk"), "{body}");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let text: String =
        chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect::<Vec<_>>().concat();
    assert!(text.contains("Paris"), "{body}");
    // Text came in more than one piece, then the finish reason, then usage with no choices.
    assert!(
        chunks.iter().filter(|c| c["choices"][0]["delta"]["content"].as_str().is_some_and(|t| !t.is_empty())).count()
            > 1
    );
    let finish = chunks.iter().find_map(|c| c["choices"][0]["finish_reason"].as_str());
    assert!(matches!(finish, Some("stop" | "length")), "{body}");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]), "{body}");
    assert!(usage["usage"]["completion_tokens"].as_u64().unwrap() >= 1, "{body}");
}

#[tokio::test]
async fn stop_strings_max_tokens_and_json_mode_shape_the_answer() {
    let Some((s, _, t)) = ada_and_a_chat_app().await else { return };
    let t = t.as_str();
    let chat = |extra: Value| {
        let mut body = capital_question(false);
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };

    let (_, _, short) =
        s.call(Method::POST, "/v1/llm/chat/completions", Some(t), Some(chat(json!({"max_tokens": 2})))).await;
    assert_eq!(short["choices"][0]["finish_reason"], "length", "{short}");
    assert_eq!(short["usage"]["completion_tokens"], 2, "{short}");

    let (_, _, stopped) =
        s.call(Method::POST, "/v1/llm/chat/completions", Some(t), Some(chat(json!({"stop": ["Paris"]})))).await;
    assert_eq!(stopped["choices"][0]["finish_reason"], "stop", "{stopped}");
    let text = stopped["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(!text.contains("Paris") && !text.is_empty(), "{stopped}");

    let json_mode = chat(json!({
        "messages": [{"role": "user", "content": "Give the capital of France as JSON with a key city."}],
        "response_format": {"type": "json_object"},
        "max_tokens": 48,
    }));
    let (st, _, answer) = s.call(Method::POST, "/v1/llm/chat/completions", Some(t), Some(json_mode)).await;
    assert_eq!(st, StatusCode::OK, "{answer}");
    let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
    if answer["choices"][0]["finish_reason"] == "stop" {
        let parsed: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert!(parsed.is_object(), "{text}");
    } else {
        assert!(text.trim_start().starts_with('{'), "{text}");
    }

    // What is not supported is a clear 400, not a silent difference.
    let nul = json!({"messages": [{"role": "user", "content": "a\u{0}b"}]});
    for (extra, field) in [
        (json!({"n": 2}), "n"),
        (json!({"tools": {"get_weather": {}}}), "tools"),
        (json!({"tool_choice": "required"}), "tool_choice"),
        (json!({"max_tokens": 1_000_000}), "max_tokens"),
        (nul, "NUL"),
    ] {
        let (st, _, err) = s.call(Method::POST, "/v1/llm/chat/completions", Some(t), Some(chat(extra))).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
        assert!(err["error"]["message"].as_str().unwrap().contains(field), "{err}");
    }
    let untyped = s.http.post(s.url("/v1/llm/chat/completions")).bearer_auth(t).body(chat(json!({})).to_string());
    assert_eq!(untyped.send().await.unwrap().status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn without_the_scope_an_app_is_refused_and_without_a_model_the_instance_says_so() {
    // No model needed: both refusals come before any generation.
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let (_, app) = s.app_token(&ada, &["storage:read:notes"]).await;
    for (method, path) in [(Method::GET, "/v1/llm/models"), (Method::POST, "/v1/llm/chat/completions")] {
        let (st, _, err) = s.call(method.clone(), path, Some(&app.access_token), Some(capital_question(false))).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::FORBIDDEN, "forbidden"), "{path}: {err}");
    }
    let (_, chat_app) = s.app_token(&ada, &["llm:chat"]).await;
    let (st, _, err) = s
        .call(Method::POST, "/v1/llm/chat/completions", Some(&chat_app.access_token), Some(capital_question(false)))
        .await;
    assert_eq!(st, StatusCode::SERVICE_UNAVAILABLE, "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("model pull"), "{err}");
    // A malformed request is still the app's fault first.
    let (st, _, err) = s
        .call(Method::POST, "/v1/llm/chat/completions", Some(&chat_app.access_token), Some(json!({"messages": "hi"})))
        .await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::BAD_REQUEST, "invalid_request"), "{err}");
}

/// The Python interpreter that has the `openai` package (`./selfcloud test` makes one).
const PYTHON_ENV: &str = "SELFCLOUD_TEST_PYTHON";

#[tokio::test]
async fn the_official_openai_client_chats_streamed_and_not_and_embeds() {
    let Some(python) = std::env::var_os(PYTHON_ENV) else {
        assert!(std::env::var_os(common::REQUIRE_MODEL_ENV).is_none(), "{PYTHON_ENV} is not set");
        eprintln!("skipped: {PYTHON_ENV} unset");
        return;
    };
    let Some(s) = server_with_model().await else { return };
    let ada = s.user("ada").await;
    let (_, app) = s.app_token(&ada, &["llm:chat", "llm:embed"]).await;
    let embeddings = if common::test_embed_model().is_some() { "embeddings" } else { "no-embeddings" };
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let base = s.base.clone();
    // Off the runtime's thread: the server under test runs on it.
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python).arg(script).arg(base).arg(app.access_token).arg(embeddings).output()
    })
    .await
    .unwrap()
    .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && stdout.trim() == "ok", "stdout: {stdout}\nstderr: {stderr}");
}

async fn ask(s: &Server, token: &str, body: Value) -> (StatusCode, reqwest::header::HeaderMap, Value) {
    s.call(Method::POST, "/v1/assistant/chat", Some(token), Some(body)).await
}

#[tokio::test]
async fn the_owners_assistant_answers_from_their_own_records_and_cites_them() {
    let Some(s) = server_with_model().await else { return };
    let (ada, bob) = (s.user("ada").await, s.user("bob").await);
    s.put_ok(&ada, "/v1/storage/notes/trip", json!({"text": "My flight to Lisbon leaves on May 3 at 9am."})).await;
    s.put_ok(&ada, "/v1/storage/notes/groceries", json!({"text": "Buy milk, bread and eggs."})).await;
    s.put_ok(&ada, "/v1/storage/diary/monday", json!({"text": "Planning the Lisbon trip went well."})).await;
    s.put_ok(
        &bob,
        "/v1/storage/notes/flight",
        json!({"text": "Bob's flight to Lisbon leaves on June 9 from gate B12."}),
    )
    .await;
    let question = json!({"message": "When does my flight to Lisbon leave?"});

    let (st, _, answer) = ask(&s, &ada, question.clone()).await;
    assert_eq!(st, StatusCode::OK, "{answer}");
    let cited: Vec<(String, String)> = answer["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["collection"].as_str().unwrap().to_owned(), c["key"].as_str().unwrap().to_owned()))
        .collect();
    assert_eq!(cited.first(), Some(&("notes".into(), "trip".into())), "{answer}");
    assert!(!cited.iter().any(|(_, k)| k == "groceries" || k == "flight"), "{answer}");
    let text = answer["answer"].as_str().unwrap();
    assert!(text.contains("May 3"), "{answer}");
    assert!(!text.contains("June"), "another user's record reached the answer: {answer}");

    // Bob's assistant reads Bob's records only.
    let (_, _, bobs) = ask(&s, &bob, question.clone()).await;
    assert_eq!(bobs["citations"][0]["key"], "flight", "{bobs}");
    assert_eq!(bobs["citations"].as_array().unwrap().len(), 1, "{bobs}");

    // The owner chooses what it reads.
    let (_, _, diary_only) =
        ask(&s, &ada, json!({"message": "When does my flight to Lisbon leave?", "collections": ["diary"]})).await;
    let collections: Vec<&str> =
        diary_only["citations"].as_array().unwrap().iter().map(|c| c["collection"].as_str().unwrap()).collect();
    assert_eq!(collections, ["diary"], "{diary_only}");

    // No app reaches the owner's assistant, whatever its scopes; a bad request is a 400.
    let (_, app) = s.app_token(&ada, &["llm:chat", "storage:read:notes"]).await;
    let (st, _, err) = ask(&s, &app.access_token, question).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::FORBIDDEN, "forbidden"), "{err}");
    let (st, _, err) = ask(&s, &ada, json!({"message": ""})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST, "{err}");
}

#[tokio::test]
async fn an_apps_token_budget_is_enforced_and_its_owner_sees_what_it_spent() {
    let Some(model) = test_model() else { return };
    let s = Server::start_with(|c| {
        with_model(c, &model, 1, 4);
        c.limits.llm_app_tokens_per_day = 5_000;
    })
    .await;
    let ada = s.user("ada").await;
    let dev = s.user("dev").await;
    let client_id = s.register_app(&dev, &["llm:chat"]).await;
    let config = s.app_config(&client_id);
    let req = selfcloud_sdk::AuthorizationRequest::new(&config, &["llm:chat"]);
    // A budget that is not a number is refused; one set on the consent page sticks to the grant.
    let refused = s.decide_with(&ada, &req, "allow", &[("token_budget", "lots")]).await;
    assert_eq!(refused.status(), StatusCode::BAD_REQUEST);
    let resp = s.decide_with(&ada, &req, "allow", &[("token_budget", "1000")]).await;
    let code = req.finish(resp.headers()["location"].to_str().unwrap()).unwrap();
    let app = selfcloud_sdk::Client::new(config).exchange_code(&req, &code).await.unwrap().access_token;
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let grant = &grants["grants"][0];
    assert_eq!((grant["token_budget"].as_u64(), grant["tokens_per_day"].as_u64()), (Some(1000), Some(1000)));
    let grant_id = grant["id"].as_str().unwrap().to_owned();
    let set_budget = |budget: Value| {
        let path = format!("/v1/grants/{grant_id}");
        let (s, ada) = (&s, &ada);
        async move { s.call(Method::PATCH, &path, Some(ada), Some(json!({"token_budget": budget}))).await.0 }
    };

    // One answer: the owner sees what it cost, prompt and answer together.
    let (st, _, answer) =
        s.call(Method::POST, "/v1/llm/chat/completions", Some(&app), Some(capital_question(false))).await;
    assert_eq!(st, StatusCode::OK, "{answer}");
    let (total, prompt) =
        (answer["usage"]["total_tokens"].as_u64().unwrap(), answer["usage"]["prompt_tokens"].as_u64().unwrap());
    assert_eq!(s.spent_today(&ada, &grant_id, total).await, total);

    // The budget lowered to what was spent: the next call is 429 budget_exceeded until midnight UTC.
    assert_eq!(set_budget(json!(total)).await, StatusCode::NO_CONTENT);
    let (st, headers, err) =
        s.call(Method::POST, "/v1/llm/chat/completions", Some(&app), Some(capital_question(false))).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded"), "{err}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");

    // Room for the prompt and three more tokens: the answer is cut to three, then the budget is spent.
    assert_eq!(set_budget(json!(total + prompt + 3)).await, StatusCode::NO_CONTENT);
    let (st, _, cut) =
        s.call(Method::POST, "/v1/llm/chat/completions", Some(&app), Some(capital_question(false))).await;
    assert_eq!(st, StatusCode::OK, "{cut}");
    assert_eq!(
        (cut["usage"]["completion_tokens"].as_u64(), cut["choices"][0]["finish_reason"].as_str()),
        (Some(3), Some("length")),
        "{cut}"
    );
    s.spent_today(&ada, &grant_id, total + prompt + 3).await;
    let (st, _, err) =
        s.call(Method::POST, "/v1/llm/chat/completions", Some(&app), Some(capital_question(false))).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded"), "{err}");

    // A budget above the tier's ceiling could never be spent: it is refused, naming the ceiling,
    // and the grant keeps its own.
    let over = json!({"token_budget": 1_000_000});
    let (st, _, err) = s.call(Method::PATCH, &format!("/v1/grants/{grant_id}"), Some(&ada), Some(over)).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::BAD_REQUEST, "invalid_request"), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("5000"), "{err}");
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    assert_eq!(grants["grants"][0]["token_budget"].as_u64(), Some(total + prompt + 3), "{grants}");
    assert_eq!(set_budget(json!(5_000)).await, StatusCode::NO_CONTENT);
    // A stream its client leaves is billed for what it spent.
    let before = s.spent_today(&ada, &grant_id, 0).await;
    let mut long = capital_question(true);
    long["max_tokens"] = json!(200);
    let mut resp = s.http.post(s.url("/v1/llm/chat/completions")).bearer_auth(&app).json(&long).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Leave once a piece of the answer came (the role frame goes out before the engine starts:
    // a client leaving then is billed nothing, as nothing was computed).
    let mut seen = String::new();
    while seen.matches("data: ").count() < 2 {
        seen.push_str(&String::from_utf8_lossy(&resp.chunk().await.unwrap().expect("the stream ended early")));
    }
    drop(resp);
    assert!(s.spent_today(&ada, &grant_id, before + prompt).await >= before + prompt);

    // Only the owner sees the usage or changes a budget; the owner's own chats draw on their
    // own budget, not the app's.
    let (st, _, _) = s.call(Method::GET, "/v1/llm/usage", Some(&app), None).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _, _) =
        s.call(Method::PATCH, &format!("/v1/grants/{grant_id}"), Some(&app), Some(json!({"token_budget": null}))).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let bob = s.user("bob").await;
    let (st, _, _) =
        s.call(Method::PATCH, &format!("/v1/grants/{grant_id}"), Some(&bob), Some(json!({"token_budget": null}))).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(set_budget(json!(0)).await, StatusCode::NO_CONTENT);
    let (st, _, _) = s.call(Method::POST, "/v1/llm/chat/completions", Some(&ada), Some(capital_question(false))).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _, err) =
        s.call(Method::POST, "/v1/llm/chat/completions", Some(&app), Some(capital_question(false))).await;
    assert_eq!(Server::error_code(&err), "budget_exceeded", "{st} {err}");
}

#[tokio::test]
async fn in_shared_mode_several_users_chat_at_once_through_one_batching_engine() {
    let Some(model) = test_model() else { return };
    let s = Server::start_with(|c| {
        with_model(c, &model, 4, 8);
        let llm = c.llm.as_mut().unwrap();
        llm.shared = Some(llm.engine.clone());
    })
    .await;
    let mut tokens = Vec::new();
    for name in ["ada", "bob", "cyd", "dee"] {
        let user = s.user(name).await;
        tokens.push(s.app_token(&user, &["llm:chat"]).await.1.access_token);
    }
    let all_at_once = || {
        futures_util::future::join_all(
            tokens
                .iter()
                .map(|t| s.call(Method::POST, "/v1/llm/chat/completions", Some(t), Some(capital_question(false)))),
        )
    };
    for (st, _, answer) in all_at_once().await {
        assert_eq!(st, StatusCode::OK, "{answer}");
        assert!(answer["choices"][0]["message"]["content"].as_str().unwrap().contains("Paris"), "{answer}");
        // The same prompt from four instances: none is served from another's cache.
        assert_eq!(answer["timings"]["cache_n"], 0, "{answer}");
    }
    // Each one's next turn continues from what its own last request left in the engine's cache.
    for (st, _, answer) in all_at_once().await {
        assert_eq!(st, StatusCode::OK, "{answer}");
        assert!(answer["timings"]["cache_n"].as_u64().unwrap() > 10, "{answer}");
    }
}

#[tokio::test]
async fn the_owners_own_use_has_a_daily_budget_per_tier_like_an_apps() {
    let Some(model) = test_model() else { return };
    let s = Server::start_with(|c| {
        with_model(c, &model, 1, 4);
        c.limits.llm_owner_tokens_per_day = 150;
    })
    .await;
    let ada = s.user("ada").await;
    let chat = || s.call(Method::POST, "/v1/llm/chat/completions", Some(&ada), Some(capital_question(false)));
    let (st, _, answer) = chat().await;
    assert_eq!(st, StatusCode::OK, "{answer}");
    let total = answer["usage"]["total_tokens"].as_u64().unwrap();
    // The owner sees their own use beside the apps'.
    let (_, _, usage) = s.call(Method::GET, "/v1/llm/usage", Some(&ada), None).await;
    assert_eq!(usage["owner"]["tokens"].as_u64(), Some(total), "{usage}");
    // Chats go on until the day's budget is spent, then 429 budget_exceeded until midnight UTC.
    let (mut refused, mut spent) = (None, total);
    for _ in 0..8 {
        let (st, headers, body) = chat().await;
        if st == StatusCode::OK {
            spent += body["usage"]["total_tokens"].as_u64().unwrap();
            continue;
        }
        refused = Some((st, headers, body));
        break;
    }
    let (st, headers, err) = refused.expect("the owner's chats were never refused");
    assert_eq!((st, Server::error_code(&err)), (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded"), "{err}");
    let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=86_400).contains(&retry), "{retry}");
    assert!(spent <= 150, "{spent} tokens served against a budget of 150");
    // The assistant and embeddings draw on the same budget.
    let (st, _, err) = ask(&s, &ada, json!({"message": "When does my flight leave?"})).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded"), "{err}");
    if common::test_embed_model().is_some() {
        // More words than the few tokens a refused chat may have left.
        let body = json!({"model": "all-minilm-l6-v2", "input": "hello ".repeat(100)});
        let (st, _, err) = s.call(Method::POST, "/v1/llm/embeddings", Some(&ada), Some(body)).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded"), "{err}");
    }
}

#[tokio::test]
async fn an_answer_nobody_reads_gives_its_slot_back_within_seconds() {
    let Some(s) = server_with_model().await else { return };
    let ada = s.user("ada").await;
    let (_, reader) = s.app_token(&ada, &["llm:chat"]).await;
    // A long answer whose reader never reads: called on the instance directly, as the gateway
    // does, so nothing between (sockets, buffers) reads it either.
    let (_, _, me) = s.call(Method::GET, "/v1/me", Some(&ada), None).await;
    let id = me["instance"]["id"].as_str().unwrap().parse().unwrap();
    let mut long = capital_question(true);
    long["max_tokens"] = json!(2000);
    long["messages"][1]["content"] = json!("Write a very long story about the sea.");
    let req = http::Request::post("/v1/llm/chat/completions")
        .header("content-type", "application/json")
        .body(axum::body::Body::from(long.to_string()))
        .unwrap();
    let mut ctx = selfcloud_instance::CallContext::new(
        selfcloud_instance::protocol::Actor::Owner,
        &Default::default(),
        None,
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64,
        60_000,
    );
    ctx.token_budget = Some(1_000_000);
    let stalled = s.control.instance(id).await.unwrap().call(&ctx, req).await.unwrap();
    assert_eq!(stalled.status(), StatusCode::OK);
    // The one slot is taken; another app of the same user is served once the stall is noticed.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let started = std::time::Instant::now();
    let mut short = capital_question(false);
    short["max_tokens"] = json!(4);
    let (st, _, answer) =
        s.call(Method::POST, "/v1/llm/chat/completions", Some(&reader.access_token), Some(short)).await;
    let waited = started.elapsed();
    assert_eq!(st, StatusCode::OK, "{answer}");
    eprintln!("served after {waited:?} behind an unread answer");
    assert!(waited < std::time::Duration::from_secs(12), "waited {waited:?} behind an answer nobody reads");
    drop(stalled);
}

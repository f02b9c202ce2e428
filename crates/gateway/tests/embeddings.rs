//! Embeddings through the gateway, on the real model (all-MiniLM-L6-v2 as `model pull` converts
//! it, run by llama.cpp in the user's instance).

mod common;

use common::{test_embed_model, test_model, with_model, Server};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A server with both models, or `None` when this run has them not.
async fn server() -> Option<Server> {
    let model = test_model()?;
    test_embed_model()?;
    Some(Server::start_with(|c| with_model(c, &model, 1, 4)).await)
}

fn vectors(answer: &Value) -> Vec<Vec<f32>> {
    let data = answer["data"].as_array().unwrap_or_else(|| panic!("no data: {answer}"));
    data.iter()
        .enumerate()
        .map(|(i, d)| {
            assert_eq!((d["object"].as_str(), d["index"].as_u64()), (Some("embedding"), Some(i as u64)), "{answer}");
            d["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect()
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn an_app_with_llm_embed_gets_vectors_and_pays_for_them() {
    let Some(s) = server().await else { return };
    let ada = s.user("ada").await;
    let body = json!({
        "model": "all-minilm-l6-v2",
        "input": ["When does my plane take off?", "My flight to Lisbon leaves at 9am.", "Buy milk and bread."],
    });

    // The scope is needed: an app that may chat may not embed, and a wrong token gets nothing.
    let (_, chat_only) = s.app_token(&ada, &["llm:chat"]).await;
    let (st, _, err) =
        s.call(Method::POST, "/v1/llm/embeddings", Some(&chat_only.access_token), Some(body.clone())).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::FORBIDDEN, "forbidden"), "{err}");
    let (st, _, _) = s.call(Method::POST, "/v1/llm/embeddings", Some("not-a-token"), Some(body.clone())).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);

    let (client_id, app) = s.app_token(&ada, &["llm:embed"]).await;
    let (st, _, answer) = s.call(Method::POST, "/v1/llm/embeddings", Some(&app.access_token), Some(body)).await;
    assert_eq!(st, StatusCode::OK, "{answer}");
    assert_eq!((answer["object"].as_str(), answer["model"].as_str()), (Some("list"), Some("all-minilm-l6-v2")));
    let v = vectors(&answer);
    assert!(v.iter().all(|v| v.len() == 384 && (dot(v, v) - 1.0).abs() < 1e-3), "unit vectors of 384");
    assert!(dot(&v[0], &v[1]) > dot(&v[0], &v[2]) + 0.2, "the plane is nearer the flight than the milk");

    // What it read is billed to the app, and the owner sees it.
    let tokens = answer["usage"]["prompt_tokens"].as_u64().unwrap();
    assert!(tokens > 10 && answer["usage"]["total_tokens"].as_u64() == Some(tokens), "{answer}");
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let grant = grants["grants"].as_array().unwrap().iter().find(|g| g["client_id"] == client_id.as_str()).unwrap();
    assert_eq!(s.spent_today(&ada, grant["id"].as_str().unwrap(), tokens).await, tokens);

    // Base64, as OpenAI's Python client asks by default: the same vector, little-endian f32s.
    let (st, _, b64) = s
        .call(
            Method::POST,
            "/v1/llm/embeddings",
            Some(&app.access_token),
            Some(json!({"input": "When does my plane take off?", "encoding_format": "base64"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{b64}");
    use base64::Engine as _;
    let bytes =
        base64::engine::general_purpose::STANDARD.decode(b64["data"][0]["embedding"].as_str().unwrap()).unwrap();
    let back: Vec<f32> = bytes.chunks(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect();
    assert!(dot(&back, &v[0]) > 0.9999);

    // A body that does not say it is JSON is a 415, one nested past what records may be a 400.
    let resp = s
        .http
        .post(s.url("/v1/llm/embeddings"))
        .bearer_auth(&app.access_token)
        .header("content-type", "text/plain")
        .body(r#"{"input": "hi"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let deep = format!(r#"{{"input": "hi", "x": {}{}}}"#, "[".repeat(5000), "]".repeat(5000));
    let resp = s
        .http
        .post(s.url("/v1/llm/embeddings"))
        .bearer_auth(&app.access_token)
        .header("content-type", "application/json")
        .body(deep)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    // What the model cannot take is a clear 400.
    for bad in [json!({"input": []}), json!({"input": [[1, 2, 3]]}), json!({"input": "a", "dimensions": 8})] {
        let (st, _, err) = s.call(Method::POST, "/v1/llm/embeddings", Some(&app.access_token), Some(bad.clone())).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::BAD_REQUEST, "invalid_request"), "{bad}: {err}");
    }
}

#[tokio::test]
async fn a_server_without_an_embedding_model_says_so() {
    let Some(model) = test_model() else { return };
    let s = Server::start_with(|c| {
        with_model(c, &model, 1, 4);
        c.llm.as_mut().unwrap().embedding = None;
    })
    .await;
    let ada = s.user("ada").await;
    let (st, _, err) = s.call(Method::POST, "/v1/llm/embeddings", Some(&ada), Some(json!({"input": "hello"}))).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::SERVICE_UNAVAILABLE, "unavailable"), "{err}");
    assert!(err["error"]["message"].as_str().unwrap().contains("embedding model"), "{err}");
}

#[tokio::test]
async fn an_apps_budget_holds_against_one_large_request_and_many_at_once() {
    let Some(s) = server().await else { return };
    let ada = s.user("ada").await;
    let (client_id, app) = s.app_token(&ada, &["llm:embed", "llm:chat"]).await;
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let grant = grants["grants"].as_array().unwrap().iter().find(|g| g["client_id"] == client_id.as_str()).unwrap();
    let path = format!("/v1/grants/{}", grant["id"].as_str().unwrap());
    let (st, _, _) = s.call(Method::PATCH, &path, Some(&ada), Some(json!({"token_budget": 100}))).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let usage = || async {
        let (_, _, u) = s.call(Method::GET, "/v1/llm/usage", Some(&ada), None).await;
        u["apps"].as_array().unwrap().iter().map(|a| a["tokens"].as_u64().unwrap()).sum::<u64>()
    };

    // One request larger than what is left is refused whole: nothing computed, nothing billed.
    let large = json!({"input": ["word ".repeat(300)]});
    let (st, headers, err) =
        s.call(Method::POST, "/v1/llm/embeddings", Some(&app.access_token), Some(large.clone())).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded"), "{err}");
    assert!(headers.contains_key("retry-after"));
    assert_eq!(usage().await, 0);

    // Many at once (each about 45 tokens): they take turns, so together they stay within it.
    let small = json!({"input": vec!["Paris is the capital of France."; 5]});
    let calls =
        (0..6).map(|_| s.call(Method::POST, "/v1/llm/embeddings", Some(&app.access_token), Some(small.clone())));
    let answers = futures_util::future::join_all(calls).await;
    let ok = answers.iter().filter(|(st, _, _)| *st == StatusCode::OK).count();
    assert!(answers.iter().all(|(st, _, _)| [StatusCode::OK, StatusCode::TOO_MANY_REQUESTS].contains(st)));
    assert!((1..=2).contains(&ok), "{ok} of 6 ran within a budget of 100");
    // The last charge is written just after its answer: wait for it. Then one more call, which
    // starts only once the app's turn is free, and each call holds it until its charge is
    // written: once that call is refused, nothing of the six is still to come.
    let billed = s.spent_today(&ada, grant["id"].as_str().unwrap(), ok as u64 * 45).await;
    let (st, _, err) = s.call(Method::POST, "/v1/llm/embeddings", Some(&app.access_token), Some(large)).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::TOO_MANY_REQUESTS, "budget_exceeded"), "{err}");
    let total = usage().await;
    assert!(total <= 100 && total == billed && total == ok as u64 * 45, "{total} tokens billed for {ok} calls of 45");
}

#[tokio::test]
async fn a_full_store_refuses_a_call_it_could_not_record_and_records_one_it_made_room_for() {
    let Some(model) = test_model() else { return };
    if test_embed_model().is_none() {
        return;
    }
    let s = Server::start_with(|c| {
        with_model(c, &model, 1, 4);
        c.limits.quota_bytes = 20_000;
    })
    .await;
    let ada = s.user("ada").await;
    let (_, app) = s.app_token(&ada, &["llm:embed", "storage:write:junk"]).await;
    let body = json!({"input": "hello"});
    let (st, _, _) = s.call(Method::POST, "/v1/llm/embeddings", Some(&app.access_token), Some(body.clone())).await;
    assert_eq!(st, StatusCode::OK);
    // The app fills the user's store itself to its last bytes, then asks again.
    let mut n = 0;
    for filler in [json!({"text": "x".repeat(1500)}), json!(1)] {
        loop {
            n += 1;
            let path = format!("/v1/storage/junk/{n}");
            let (st, _, _) = s.call(Method::PUT, &path, Some(&app.access_token), Some(filler.clone())).await;
            if st != StatusCode::OK {
                assert_eq!(st, StatusCode::INSUFFICIENT_STORAGE);
                break;
            }
        }
    }
    // Its first call took the room its day's record needs: its use is still written, in place.
    let (st, _, err) = s.call(Method::POST, "/v1/llm/embeddings", Some(&app.access_token), Some(body.clone())).await;
    assert_eq!(st, StatusCode::OK, "{err}");
    let (_, _, usage) = s.call(Method::GET, "/v1/llm/usage", Some(&ada), None).await;
    assert_eq!(usage["apps"][0]["requests"], 2, "{usage}");
    // Another app's first call of the day finds no room for its record: refused before it runs.
    let (_, other) = s.app_token(&ada, &["llm:embed"]).await;
    let (st, _, err) = s.call(Method::POST, "/v1/llm/embeddings", Some(&other.access_token), Some(body)).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::INSUFFICIENT_STORAGE, "quota_exceeded"), "{err}");
}

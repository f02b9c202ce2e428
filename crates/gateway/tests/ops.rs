//! What operators rely on: health, metrics, the OpenAPI document, rate limits, JSON errors for
//! unknown routes, request ids.

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

#[tokio::test]
async fn health_metrics_and_openapi() {
    let s = Server::start().await;
    let (st, _, body) = s.call(Method::GET, "/healthz", None, None).await;
    assert_eq!((st, body), (StatusCode::OK, json!({"status": "ok"})));
    let t = s.user("ada").await;
    s.put_ok(&t, "/v1/storage/notes/a", json!(1)).await;
    s.call(Method::GET, "/v1/storage/notes/missing", Some(&t), None).await;

    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    for needle in [
        "selfcloud_http_requests_total{route=\"/v1/storage/{collection}/{key}\",method=\"PUT\",status=\"200\"} 1",
        "selfcloud_http_requests_total{route=\"/v1/storage/{collection}/{key}\",method=\"GET\",status=\"404\"} 1",
        "selfcloud_http_request_duration_seconds_bucket",
        "selfcloud_instances_provisioned 1",
    ] {
        assert!(metrics.contains(needle), "missing {needle} in\n{metrics}");
    }
    assert!(!metrics.contains("notes/missing"), "raw paths never become labels");

    let doc: Value = s.http.get(s.url("/openapi.json")).send().await.unwrap().json().await.unwrap();
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    for path in [
        "/v1/accounts",
        "/v1/sessions",
        "/v1/me",
        "/v1/storage/{collection}/{key}",
        "/v1/storage/{collection}",
        "/v1/grants/{id}",
        "/v1/audit",
        "/v1/apps",
    ] {
        assert!(doc["paths"][path].is_object(), "{path} missing from the OpenAPI document");
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_json_with_a_request_id() {
    let s = Server::start().await;
    let resp = s.http.get(s.url("/v1/nope")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    assert!(resp.headers().contains_key("x-request-id"));
    assert_eq!(Server::error_code(&resp.json::<Value>().await.unwrap()), "not_found");
    let resp = s.http.patch(s.url("/v1/accounts")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(Server::error_code(&resp.json::<Value>().await.unwrap()), "invalid_request");
    // A client's request id is kept, so logs can be matched across systems.
    let resp = s.http.get(s.url("/healthz")).header("x-request-id", "trace-42").send().await.unwrap();
    assert_eq!(resp.headers()["x-request-id"], "trace-42");
}

#[tokio::test]
async fn rate_limits_answer_429_with_retry_after() {
    let s = Server::start_with(|c| {
        c.limits.rate_per_token = 5;
        c.limits.rate_burst = 5;
        c.limits.rate_per_ip = 3;
    })
    .await;
    let t = s.user("ada").await;
    let bob = s.user("bob").await;
    let mut limited = None;
    for _ in 0..20 {
        let resp = s.http.get(s.url("/v1/storage/notes")).bearer_auth(&t).send().await.unwrap();
        if resp.status() == StatusCode::TOO_MANY_REQUESTS {
            limited = Some(resp);
            break;
        }
    }
    let resp = limited.expect("a token past its rate is limited");
    let retry: u64 = resp.headers()["retry-after"].to_str().unwrap().parse().unwrap();
    assert!((1..=2).contains(&retry));
    assert_eq!(Server::error_code(&resp.json::<Value>().await.unwrap()), "rate_limited");
    // The limit is per token: another user's token is unaffected.
    assert_eq!(s.call(Method::GET, "/v1/storage/notes", Some(&bob), None).await.0, StatusCode::OK);

    // Log-in attempts from one address are limited too (password guessing).
    let mut statuses = Vec::new();
    for _ in 0..10 {
        let (st, _, _) = s
            .call(Method::POST, "/v1/sessions", None, Some(json!({"username": "ada", "password": "guess guess"})))
            .await;
        statuses.push(st);
    }
    assert!(statuses.contains(&StatusCode::TOO_MANY_REQUESTS), "{statuses:?}");
}

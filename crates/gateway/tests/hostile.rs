//! An instance's answer is untrusted: code that took over Ada's instance (the `hostile` probe)
//! answers what it likes on every route, and what reaches her browser or her app is still the
//! gateway's own answer: the media type the route promises or the gateway's JSON error, none of
//! the instance's cookies, redirects, CORS or policies, and a CSP that runs nothing.
#![cfg(feature = "attack-probes")]

mod common;

use common::Server;
use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use selfcloud_gateway::untrusted::ANSWER_CSP;
use serde_json::{json, Value};

/// Every family of forwarded route, as an owner calls it.
fn routes() -> Vec<(Method, &'static str, Option<Value>)> {
    let chat = json!({"messages": [{"role": "user", "content": "hi"}]});
    vec![
        (Method::GET, "/v1/storage/notes", None),
        (Method::PUT, "/v1/storage/notes/a", Some(json!({"text": "x"}))),
        (Method::GET, "/v1/export", None),
        (Method::POST, "/v1/import", Some(json!({}))),
        (Method::GET, "/v1/audit", None),
        (Method::POST, "/v1/llm/chat/completions", Some(chat.clone())),
        (Method::GET, "/v1/llm/usage", None),
        (Method::POST, "/v1/assistant/chat", Some(chat)),
        (Method::GET, "/v1/assistant/memories", None),
    ]
}

/// None of what the instance added to its answer survived, and the gateway's own policy holds.
fn assert_gateways_own(headers: &HeaderMap, what: &str) {
    for name in [
        "set-cookie",
        "location",
        "refresh",
        "access-control-allow-origin",
        "access-control-allow-credentials",
        "clear-site-data",
        "strict-transport-security",
        "link",
        "x-hostile",
    ] {
        assert!(headers.get(name).is_none(), "{what}: the instance's {name} reached the client: {headers:?}");
    }
    // The export's download name is the gateway's own; the instance's `inline` is not.
    if let Some(disposition) = headers.get("content-disposition") {
        assert!(disposition.to_str().unwrap().starts_with("attachment;"), "{what}: {disposition:?}");
    }
    assert_eq!(headers["content-security-policy"], ANSWER_CSP, "{what}");
    assert_eq!(headers["x-content-type-options"], "nosniff", "{what}");
    assert_eq!(headers["cache-control"], "no-store", "{what}");
}

async fn hostile(s: &Server, owner: &str, hostility: Value) {
    let outcome = s.probe(owner, json!({"probe": "hostile", "hostility": hostility})).await;
    assert_eq!(outcome["got_through"], true, "{outcome}");
}

#[tokio::test]
async fn a_hostile_page_from_the_instance_becomes_the_gateways_json_error_on_every_route() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let page = "<script>window.__pwned = 1</script><h1>selfcloud</h1>";
    hostile(&s, &ada, json!({"mode": "answer", "status": 500, "content_type": "text/html", "body": page})).await;
    for (method, path, body) in routes() {
        let what = format!("{method} {path}");
        let (status, headers, answer) = s.call(method, path, Some(&ada), body).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{what}: {answer}");
        assert_eq!(Server::error_code(&answer), "internal", "{what}: {answer}");
        assert!(headers["content-type"].to_str().unwrap().starts_with("application/json"), "{what}");
        assert!(!answer.to_string().contains("__pwned"), "{what}: {answer}");
        assert_gateways_own(&headers, &what);
    }
    // A "success" under a type its route never promises is refused, not passed on.
    hostile(&s, &ada, json!({"mode": "answer", "status": 200, "content_type": "text/html", "body": page})).await;
    for (method, path, body) in routes() {
        let what = format!("{method} {path}");
        let (status, headers, answer) = s.call(method, path, Some(&ada), body).await;
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{what}: {answer}");
        assert_gateways_own(&headers, &what);
    }
    // JSON where the export promises a tar is refused too; a tar where JSON is promised as well.
    hostile(&s, &ada, json!({"mode": "answer", "status": 200, "content_type": "application/json", "body": "{}"})).await;
    let (status, headers, _) = s.call(Method::GET, "/v1/export", Some(&ada), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_gateways_own(&headers, "export as JSON");
    hostile(&s, &ada, json!({"mode": "answer", "status": 200, "content_type": "application/x-tar", "body": "x"})).await;
    let (status, _, _) = s.call(Method::GET, "/v1/storage/notes", Some(&ada), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test]
async fn an_error_the_instance_names_keeps_its_code_but_gets_its_status_and_headers_from_the_gateway() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    // A not_found claimed with status 200 and a message full of control characters.
    let body = json!({"error": {"code": "not_found", "message": "gone\u{1b}[2J\r\nSet-Cookie: x=y"}}).to_string();
    hostile(&s, &ada, json!({"mode": "answer", "status": 404, "content_type": "text/plain", "body": body})).await;
    let (status, headers, answer) = s.call(Method::GET, "/v1/storage/notes/a", Some(&ada), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(Server::error_code(&answer), "not_found");
    let message = answer["error"]["message"].as_str().unwrap();
    assert!(!message.chars().any(char::is_control), "{message:?}");
    assert_gateways_own(&headers, "rebuilt error");
    // A code that does not fit its status class (a "client error" that is a 503) is internal.
    let body = json!({"error": {"code": "not_found", "message": "x"}}).to_string();
    hostile(&s, &ada, json!({"mode": "answer", "status": 503, "content_type": "application/json", "body": body})).await;
    let (status, _, answer) = s.call(Method::GET, "/v1/storage/notes/a", Some(&ada), None).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{answer}");
    assert_eq!(Server::error_code(&answer), "internal");
}

#[tokio::test]
async fn an_instances_own_answers_pass_without_the_headers_it_adds() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    s.put_ok(&ada, "/v1/storage/notes/a", json!({"text": "kept"})).await;
    hostile(&s, &ada, json!({"mode": "headers"})).await;
    let (status, headers, answer) = s.call(Method::GET, "/v1/storage/notes/a", Some(&ada), None).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    assert_eq!(answer["text"], "kept", "{answer}");
    assert_gateways_own(&headers, "storage read");
    let resp = s.http.get(s.url("/v1/export")).bearer_auth(&ada).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["content-type"], "application/x-tar");
    assert_gateways_own(resp.headers(), "export");
    assert!(!resp.bytes().await.unwrap().is_empty());
    // The instance's own errors keep their code and status.
    let (status, headers, answer) = s.call(Method::GET, "/v1/storage/notes/missing", Some(&ada), None).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{answer}");
    assert_eq!(Server::error_code(&answer), "not_found");
    assert_gateways_own(&headers, "storage miss");
}

#[tokio::test]
async fn the_dashboards_export_shows_a_page_of_ours_when_the_instance_answers_a_page_of_its_own() {
    let s = Server::start().await;
    s.sign_up("ada").await;
    let browser =
        reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let token = s.form_token(&browser, &s.url("/login")).await;
    let form = [("username", "ada"), ("password", "correct horse battery"), ("next", "/me"), ("csrf", &token)];
    let resp = browser.post(s.url("/login")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let page = browser.get(s.url("/me")).send().await.unwrap().text().await.unwrap();
    let csrf = page.split("name=\"csrf-token\" content=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let ada = s.log_in("ada").await;
    let page = "<script>window.__pwned = 1</script>";
    hostile(&s, &ada, json!({"mode": "answer", "status": 500, "content_type": "text/html", "body": page})).await;
    let resp = browser.post(s.url("/me/account/export")).form(&[("csrf", &csrf)]).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
    let headers = resp.headers().clone();
    assert!(headers.get("set-cookie").is_none(), "{headers:?}");
    assert!(headers.get("x-hostile").is_none(), "{headers:?}");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"), "{headers:?}");
    let text = resp.text().await.unwrap();
    assert!(!text.contains("__pwned"), "{text}");
    // The web session is the one the log-in made: the dashboard still opens.
    assert_eq!(browser.get(s.url("/me")).send().await.unwrap().status(), StatusCode::OK);
}

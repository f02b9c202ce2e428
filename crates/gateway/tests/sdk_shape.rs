//! The Rust SDK in SELF's shape (`App`, `Session`), as an app written against SELF's sketch uses
//! it, against a real server: connect, keep records, ask for more, chat (streaming too).

mod common;

use common::{test_model, with_model, Server, REDIRECT};
use futures_util::StreamExt;
use reqwest::StatusCode;
use selfcloud_sdk::{App, Session};
use serde_json::json;

/// The user (by their session) allows what the connection URL asks; the app handles the callback.
async fn consent(s: &Server, user: &str, app: &App, url: &str) -> Session {
    let query = url.split_once('?').unwrap().1;
    let mut form: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
    form.push(("decision".into(), "allow".into()));
    let resp = s.http.post(s.url("/oauth/authorize")).bearer_auth(user).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    app.handle_callback(resp.headers()["location"].to_str().unwrap()).await.unwrap()
}

#[tokio::test]
async fn an_app_in_selfs_shape_connects_keeps_records_and_asks_for_more() {
    let model = test_model();
    let s = match &model {
        Some(m) => Server::start_with(|c| with_model(c, m, 1, 4)).await,
        None => Server::start().await,
    };
    let dev = s.user("developer").await;
    let app_id = s.register_app(&dev, &["ai:chat", "storage:read", "storage:write"]).await;
    let ada = s.user("ada").await;
    s.put_ok(&ada, "/v1/storage/diary/secret", json!("private")).await;

    let app = App::new(&app_id, &s.base, REDIRECT).unwrap();
    let url = app.create_connection_url(&["storage:read", "storage:write"]);
    let session = consent(&s, &ada, &app, &url).await;
    session.storage().set("greeting", &json!({"text": "hello"})).await.unwrap();
    assert_eq!(session.storage().get("greeting").await.unwrap().unwrap()["text"], "hello");
    assert_eq!(session.storage().list(Some("gr"), Some(10)).await.unwrap().len(), 1);
    // Its storage is its own namespace: the user's other records are out of reach.
    let diary = session.client().storage().get("diary", "secret").await.unwrap_err();
    assert_eq!(diary.self_code(), Some("PERMISSION_DENIED"));
    assert!(session.has_permission("storage:read") && session.has_permission("storage:write"));
    assert!(!session.has_permission("ai:chat"));
    let refused = session.ai().chat("hi").await.unwrap_err();
    assert_eq!(refused.self_code(), Some("PERMISSION_DENIED"), "{refused}");
    session.storage().delete("greeting").await.unwrap();
    assert!(session.storage().get("greeting").await.unwrap().is_none());

    // Asking for more: the grant gains it, the old permissions stay.
    let more = session.request_permissions(&app, &["ai:chat"]);
    let session = consent(&s, &ada, &app, &more).await;
    assert!(session.has_permission("ai:chat") && session.has_permission("storage:write"));
    let (_, _, grants) = s.call(reqwest::Method::GET, "/v1/grants", Some(&ada), None).await;
    assert_eq!(grants["grants"].as_array().unwrap().len(), 1, "one grant, merged: {grants}");
    if model.is_some() {
        assert!(!session.ai().chat("Say hello").await.unwrap().is_empty());
        let mut stream = session.ai().chat_stream("Count to five").await.unwrap();
        let mut pieces = Vec::new();
        while let Some(piece) = stream.next().await {
            pieces.push(piece.unwrap());
        }
        assert!(pieces.len() > 1, "the answer streams: {pieces:?}");
        // The whole OpenAI call: a value of the schema the app asked for.
        let schema = json!({"type": "object", "properties": {"greeting": {"type": "string", "maxLength": 40}},
            "required": ["greeting"], "additionalProperties": false});
        let body = json!({"messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 64, "temperature": 0,
            "response_format": {"type": "json_schema", "json_schema": {"name": "hello", "schema": schema}}});
        let answer = session.ai().completions(&body).await.unwrap();
        let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
        let value: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {answer}"));
        assert!(value["greeting"].is_string(), "{answer}");
    }
    // A callback that answers no connection this app started is refused.
    assert!(app.handle_callback(&format!("{REDIRECT}?code=x&state=forged")).await.is_err());
}

#[tokio::test]
async fn a_connection_may_come_back_to_another_registered_redirect() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let other = "http://127.0.0.1:9/elsewhere";
    let body = json!({"name": "Two doors", "redirect_uris": [REDIRECT, other], "scopes": ["storage:write"]});
    let (status, _, registered) = s.call(reqwest::Method::POST, "/v1/apps", Some(&dev), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{registered}");
    let app = App::new(registered["client_id"].as_str().unwrap(), &s.base, REDIRECT).unwrap();
    let ada = s.user("ada").await;
    let url = app.create_connection_url_to(&["storage:write"], other);
    assert!(url.contains(&url::form_urlencoded::byte_serialize(other.as_bytes()).collect::<String>()), "{url}");
    let session = consent(&s, &ada, &app, &url).await;
    session.storage().set("k", &json!(1)).await.unwrap();
}

#[tokio::test]
async fn test_users_come_from_a_development_server_only() {
    let gateway = selfcloud_gateway::GatewayConfig { dev_test_users: true, ..Default::default() };
    let s = Server::start_configured(|_| {}, gateway).await;
    let dev = s.user("developer").await;
    let app_id = s.register_app(&dev, &["storage:read", "storage:write", "storage:read:notes"]).await;
    let app = App::new(&app_id, &s.base, REDIRECT).unwrap();
    let user = app.create_test_user(&s.operator_token(), &["storage:read", "storage:write"]).await.unwrap();
    user.session.storage().set("k", &json!(1)).await.unwrap();
    assert!(user.session.has_permission("storage:write") && !user.session.has_permission("storage:read:notes"));
    // The user is a real one: they log in and see the app among their grants.
    let owner = s.log_in_as(&user.username, &user.password).await;
    let (_, _, grants) = s.call(reqwest::Method::GET, "/v1/grants", Some(&owner), None).await;
    assert_eq!(grants["grants"][0]["client_id"], app_id.as_str());
    // Only the operator, and never beyond the app's registration.
    let e = app.create_test_user(&dev, &["storage:read"]).await.unwrap_err();
    assert_eq!(e.status(), Some(403), "{e}");
    let e = app.create_test_user(&s.operator_token(), &["llm:chat"]).await.unwrap_err();
    assert_eq!(e.status(), Some(400), "{e}");

    // Without the flag, the endpoint does not exist.
    let plain = Server::start().await;
    let dev = plain.user("developer").await;
    let app_id = plain.register_app(&dev, &["storage:read"]).await;
    let app = App::new(&app_id, &plain.base, REDIRECT).unwrap();
    let e = app.create_test_user(&plain.operator_token(), &["storage:read"]).await.unwrap_err();
    assert_eq!(e.status(), Some(404), "{e}");
}

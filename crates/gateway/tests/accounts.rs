//! Sign-up provisions a ready instance; log-in; the profile; bad input.

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test]
async fn sign_up_provisions_the_instance_before_answering() {
    let s = Server::start().await;
    let body = s.sign_up("ada").await;
    assert_eq!(body["username"], "ada");
    assert_eq!(body["instance"]["state"], "ready");
    let instance: selfcloud_core::InstanceId = body["instance"]["id"].as_str().unwrap().parse().unwrap();
    let user_id = body["user_id"].as_str().unwrap();
    assert!(user_id.starts_with("usr_"));

    // Already on disk when the answer arrives: its own sharded directory, store and key file.
    let dir = selfcloud_control::instance_dir(s.home.path(), instance);
    assert!(dir.starts_with(s.home.path().join("instances").join(instance.shard())));
    assert!(dir.join("store.db").is_file() && dir.join("keys.json").is_file());
    let keys: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("keys.json")).unwrap()).unwrap();
    assert!(keys["sealed"].is_string() && keys["password_wrapped"].is_string() && keys["kdf"]["m_cost"].is_number());
    assert_ne!(keys["sealed"], keys["password_wrapped"]);
    // The password itself is nowhere on disk.
    for file in [s.home.path().join("control.db"), dir.join("keys.json")] {
        let bytes = std::fs::read(file).unwrap();
        assert!(!bytes.windows(21).any(|w| w == b"correct horse battery"));
    }

    let t = s.log_in("ada").await;
    let (st, _, me) = s.call(Method::GET, "/v1/me", Some(&t), None).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(me["user_id"], user_id);
    let runtime = s.control.runtime_kind().as_str();
    assert_eq!(me["instance"], json!({"id": instance.to_string(), "state": "ready", "runtime": runtime}));
    assert_eq!(me["tier"], "free");
    assert_eq!(me["storage"]["records"], 0);

    // Each user has their own instance.
    let other = s.sign_up("bob").await;
    assert_ne!(other["instance"]["id"], body["instance"]["id"]);
    assert_eq!(s.control.instances_provisioned(), 2);
}

#[tokio::test]
async fn sign_up_and_log_in_refuse_bad_input_clearly() {
    let s = Server::start().await;
    s.sign_up("ada").await;
    let (st, _, err) = s
        .call(Method::POST, "/v1/accounts", None, Some(json!({"username": "ada", "password": "another password"})))
        .await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::CONFLICT, "conflict"));
    for body in [
        json!({"username": "a", "password": "long enough"}),
        json!({"username": "Ada", "password": "long enough"}),
        json!({"username": "../../etc", "password": "long enough"}),
        json!({"username": "ada2", "password": "short"}),
        json!({"username": "ada2"}),
        json!({"username": "ada2", "password": "long enough", "admin": true}),
        json!(["ada2", "long enough"]),
    ] {
        let (st, _, err) = s.call(Method::POST, "/v1/accounts", None, Some(body.clone())).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");
    }
    let resp =
        s.http.post(s.url("/v1/accounts")).header("content-type", "application/json").body("{").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = s.http.post(s.url("/v1/accounts")).body("username=ada").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert_eq!(s.control.instances_provisioned(), 1, "no refused sign-up left an instance");

    // Wrong password and unknown user answer alike.
    let (st1, _, e1) = s
        .call(Method::POST, "/v1/sessions", None, Some(json!({"username": "ada", "password": "wrong password"})))
        .await;
    let (st2, _, e2) = s
        .call(Method::POST, "/v1/sessions", None, Some(json!({"username": "nobody", "password": "wrong password"})))
        .await;
    assert_eq!((st1, st2), (StatusCode::UNAUTHORIZED, StatusCode::UNAUTHORIZED));
    assert_eq!(e1, e2);
}

#[tokio::test]
async fn log_in_answers_a_bearer_token_and_sets_no_cookie() {
    let s = Server::start().await;
    s.sign_up("ada").await;
    let resp = s
        .http
        .post(s.url("/v1/sessions"))
        .json(&json!({"username": "ada", "password": "correct horse battery"}))
        .send()
        .await
        .unwrap();
    // A cookie would go to every port of this host, an app's loopback callback included.
    assert!(resp.headers().get("set-cookie").is_none());
    let token = resp.json::<serde_json::Value>().await.unwrap()["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("scs_"));
    let me = s.http.get(s.url("/v1/me")).header("cookie", format!("selfcloud_session={token}")).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::UNAUTHORIZED, "the session is a bearer token, not a cookie");
    assert_eq!(s.call(reqwest::Method::GET, "/v1/me", Some(&token), None).await.0, StatusCode::OK);
}

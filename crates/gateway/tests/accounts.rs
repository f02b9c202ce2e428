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
    assert!(dir.join("store.db").is_file());
    // Its key file is in the home's keys tree, out of every instance's view.
    let key_file = selfcloud_control::keystore::key_file_path(s.home.path(), instance);
    assert!(!key_file.starts_with(&dir) && !dir.join("keys.json").exists());
    let keys: serde_json::Value = serde_json::from_slice(&std::fs::read(&key_file).unwrap()).unwrap();
    assert!(keys["sealed"].is_string() && keys["password_wrapped"].is_string() && keys["kdf"]["m_cost"].is_number());
    assert_ne!(keys["sealed"], keys["password_wrapped"]);
    // The password itself is nowhere on disk.
    for file in [s.home.path().join("control.db"), key_file] {
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

/// Wrong passwords for one username: after a few, every further check by that name waits, and
/// is refused before any password derivation runs, on each endpoint that checks one by name; the
/// wait grows and a success clears it. Unknown names are throttled exactly like known ones.
#[tokio::test]
async fn failed_log_ins_are_throttled_per_username_and_a_success_clears_them() {
    const FREE: usize = 5; // the default number of failures before the first wait
    const PASSWORD: &str = "correct horse battery";
    let s = Server::start().await;
    // The waits are whole seconds: time moves here only when the test says.
    s.clock.freeze();
    s.sign_up("ada").await;
    s.sign_up("bob").await;
    let log_in = |name: &str, password: &str| {
        let (s, body) = (&s, json!({"username": name, "password": password}));
        async move { s.call(Method::POST, "/v1/sessions", None, Some(body)).await }
    };
    for name in ["ada", "nobody"] {
        for i in 0..FREE {
            assert_eq!(log_in(name, "wrong password").await.0, StatusCode::UNAUTHORIZED, "{name}, failure {i}");
        }
    }
    // The next check on either name is refused at once, and the two answers are the same.
    let (ada_st, ada_headers, ada_err) = log_in("ada", "wrong password").await;
    let (nobody_st, nobody_headers, nobody_err) = log_in("nobody", "wrong password").await;
    assert_eq!((ada_st, nobody_st), (StatusCode::TOO_MANY_REQUESTS, StatusCode::TOO_MANY_REQUESTS), "{ada_err}");
    assert_eq!(Server::error_code(&ada_err), "rate_limited");
    assert_eq!(ada_err, nobody_err);
    assert_eq!(
        (&ada_headers["retry-after"], &nobody_headers["retry-after"]),
        (&"1".parse().unwrap(), &"1".parse().unwrap())
    );
    // The right password waits too (knowing it is right takes the derivation the wait saves).
    assert_eq!(log_in("ada", PASSWORD).await.0, StatusCode::TOO_MANY_REQUESTS);
    // Another account is untouched.
    assert_eq!(log_in("bob", PASSWORD).await.0, StatusCode::OK);
    // The recovery by that name and the web log-in form wait as well.
    let recovery = json!({"username": "ada", "recovery_code": "not-a-code", "new_password": "a new password"});
    let (st, headers, _) = s.call(Method::POST, "/v1/accounts/recover", None, Some(recovery)).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    assert!(headers.contains_key("retry-after"));
    let browser =
        reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let token = s.form_token(&browser, &s.url("/login")).await;
    let form = [("username", "ada"), ("password", PASSWORD), ("next", "/me"), ("csrf", &token)];
    let resp = browser.post(s.url("/login")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);

    // Once the wait is over, a check runs again; another failure doubles the wait.
    s.clock.advance(1);
    assert_eq!(log_in("ada", "wrong password").await.0, StatusCode::UNAUTHORIZED);
    let (st, headers, _) = log_in("ada", PASSWORD).await;
    assert_eq!((st, &headers["retry-after"]), (StatusCode::TOO_MANY_REQUESTS, &"2".parse().unwrap()));
    s.clock.advance(2);
    // The right password logs in and clears the record: mistakes are free again.
    assert_eq!(log_in("ada", PASSWORD).await.0, StatusCode::OK);
    for i in 0..FREE {
        assert_eq!(log_in("ada", "wrong password").await.0, StatusCode::UNAUTHORIZED, "failure {i} after a log-in");
    }
}

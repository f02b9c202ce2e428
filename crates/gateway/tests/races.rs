//! Revocations and password changes racing the requests they must end, over HTTP, many rounds
//! each: whatever the interleaving, nothing issued against the old state outlives the change.
//! (The exact interleavings are pinned down deterministically in control's and the token
//! table's own tests; these check the whole server keeps the promise under real concurrency.)

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

async fn token_form(s: &Server, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let resp = s.http.post(s.url("/oauth/token")).form(form).send().await.unwrap();
    (resp.status(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_racing_a_revocation_never_leaves_working_tokens() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    for round in 0..40 {
        let (client_id, tokens) = s.app_token(&ada, &["storage:read:notes"]).await;
        let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
        let grant = grants["grants"].as_array().unwrap().iter().find(|g| g["client_id"] == client_id.as_str()).unwrap();
        let revoke = format!("/v1/grants/{}", grant["id"].as_str().unwrap());
        let refresh = tokens.refresh_token.unwrap();
        let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", &client_id)];
        let (revoked, (st, body)) =
            tokio::join!(s.call(Method::DELETE, &revoke, Some(&ada), None), token_form(&s, &form));
        assert_eq!(revoked.0, StatusCode::NO_CONTENT);
        if st == StatusCode::OK {
            let access = body["access_token"].as_str().unwrap();
            let (code, _, _) = s.call(Method::GET, "/v1/storage/notes", Some(access), None).await;
            assert_eq!(code, StatusCode::UNAUTHORIZED, "round {round}: an access token outlived its grant");
            let next = body["refresh_token"].as_str().unwrap();
            let again = [("grant_type", "refresh_token"), ("refresh_token", next), ("client_id", &client_id)];
            assert_eq!(token_form(&s, &again).await.0, StatusCode::BAD_REQUEST, "round {round}: it still rotates");
        }
        let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
        assert!(grants["grants"].as_array().unwrap().iter().all(|g| g["client_id"] != client_id.as_str()));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_exchange_racing_a_revocation_never_leaves_working_tokens() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let dev = s.user("developer").await;
    for round in 0..40 {
        let client_id = s.register_app(&dev, &["storage:read:notes"]).await;
        let config = s.app_config(&client_id);
        let req = selfcloud_sdk::AuthorizationRequest::new(&config, &["storage:read:notes"]);
        let resp = s.decide(&ada, &req, "allow").await;
        let code = req.finish(resp.headers()["location"].to_str().unwrap()).unwrap();
        let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
        let grant = grants["grants"].as_array().unwrap().iter().find(|g| g["client_id"] == client_id.as_str()).unwrap();
        let revoke = format!("/v1/grants/{}", grant["id"].as_str().unwrap());
        let app = selfcloud_sdk::Client::new(config);
        let (revoked, exchanged) =
            tokio::join!(s.call(Method::DELETE, &revoke, Some(&ada), None), app.exchange_code(&req, &code));
        assert_eq!(revoked.0, StatusCode::NO_CONTENT);
        if let Ok(tokens) = exchanged {
            let (st, _, _) = s.call(Method::GET, "/v1/storage/notes", Some(&tokens.access_token), None).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "round {round}: a code exchanged into a revoked grant");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_session_made_with_the_old_password_survives_a_change() {
    let s = Server::start().await;
    s.sign_up("ada").await;
    let mut password = "correct horse battery".to_owned();
    for round in 0..6 {
        let owner = {
            let body = json!({"username": "ada", "password": password});
            let (_, _, session) = s.call(Method::POST, "/v1/sessions", None, Some(body)).await;
            session["token"].as_str().unwrap().to_owned()
        };
        let next = format!("password number {round}");
        let logins = (0..4).map(|_| {
            let (s, old) = (&s, password.clone());
            async move {
                let mut got = Vec::new();
                for _ in 0..10 {
                    let body = json!({"username": "ada", "password": old});
                    let (st, _, session) = s.call(Method::POST, "/v1/sessions", None, Some(body)).await;
                    if st == StatusCode::OK {
                        got.push(session["token"].as_str().unwrap().to_owned());
                    }
                }
                got
            }
        });
        let change = json!({"password": password, "new_password": next});
        let change = s.call(Method::PUT, "/v1/accounts/me/password", Some(&owner), Some(change));
        let (changed, sessions) = tokio::join!(change, futures_util::future::join_all(logins));
        assert_eq!(changed.0, StatusCode::OK, "{}", changed.2);
        for token in sessions.into_iter().flatten() {
            let (st, _, _) = s.call(Method::GET, "/v1/me", Some(&token), None).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "round {round}: a session made with the old password lives on");
        }
        password = next;
    }
}

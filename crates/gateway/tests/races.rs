//! Revocations and password changes racing the requests they must end, over HTTP, many rounds
//! each: whatever the interleaving, nothing issued against the old state outlives the change.
//! (The exact interleavings are pinned down deterministically in control's and the token
//! table's own tests; these check the whole server keeps the promise under real concurrency.)

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use std::time::Duration;

/// Rounds of each race where the racing call must have succeeded at least: otherwise the checks
/// on what it issued never ran, and the test passed on nothing.
const MUST_RACE: usize = 4;

async fn token_form(s: &Server, form: &[(&str, &str)]) -> (StatusCode, Value) {
    let resp = s.http.post(s.url("/oauth/token")).form(form).send().await.unwrap();
    (resp.status(), resp.json().await.unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_refresh_racing_a_revocation_never_leaves_working_tokens() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let mut raced = 0;
    for round in 0..40 {
        let (client_id, tokens) = s.app_token(&ada, &["storage:read:notes"]).await;
        let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
        let grant = grants["grants"].as_array().unwrap().iter().find(|g| g["client_id"] == client_id.as_str()).unwrap();
        let revoke = format!("/v1/grants/{}", grant["id"].as_str().unwrap());
        let refresh = tokens.refresh_token.unwrap();
        let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", &client_id)];
        let (revoked, (st, body)) =
            tokio::join!(later(round, s.call(Method::DELETE, &revoke, Some(&ada), None)), token_form(&s, &form));
        assert_eq!(revoked.0, StatusCode::NO_CONTENT);
        if st != StatusCode::OK {
            assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")), "round {round}");
        } else {
            raced += 1;
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
    assert!(raced >= MUST_RACE, "only {raced} of 40 refreshes succeeded: the race was not run");
}

/// `call`, started 0 to 7 ms late, a millisecond more each round: the rounds run from the call
/// winning outright, through the overlap, to the call it races finishing first.
async fn later<T>(round: u64, call: impl std::future::Future<Output = T>) -> T {
    tokio::time::sleep(Duration::from_millis(round % 8)).await;
    call.await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_code_exchange_racing_a_revocation_never_leaves_working_tokens() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let dev = s.user("developer").await;
    let mut raced = 0;
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
        let (revoked, exchanged) = tokio::join!(
            later(round, s.call(Method::DELETE, &revoke, Some(&ada), None)),
            app.exchange_code(&req, &code)
        );
        assert_eq!(revoked.0, StatusCode::NO_CONTENT);
        match exchanged {
            Ok(tokens) => {
                raced += 1;
                let (st, _, _) = s.call(Method::GET, "/v1/storage/notes", Some(&tokens.access_token), None).await;
                assert_eq!(st, StatusCode::UNAUTHORIZED, "round {round}: a code exchanged into a revoked grant");
            }
            Err(selfcloud_sdk::Error::Api { status: 400, code, .. }) if code == "invalid_grant" => {}
            Err(e) => panic!("round {round}: {e}"),
        }
    }
    assert!(raced >= MUST_RACE, "only {raced} of 40 code exchanges succeeded: the race was not run");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn no_session_made_with_the_old_password_survives_a_change() {
    // Log-ins with the old password fail on purpose here: the per-name throttle (tested in
    // accounts.rs) must not stop the rounds.
    let s = Server::start_with(|c| c.limits.log_in_free_failures = u32::MAX).await;
    s.sign_up("ada").await;
    let mut password = "correct horse battery".to_owned();
    let mut raced = 0;
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
                    } else {
                        // The old password no longer holds (or too many tries of it wait).
                        assert!([StatusCode::UNAUTHORIZED, StatusCode::TOO_MANY_REQUESTS].contains(&st), "{st}");
                    }
                }
                got
            }
        });
        let change = json!({"password": password, "new_password": next});
        let change = s.call(Method::PUT, "/v1/accounts/me/password", Some(&owner), Some(change));
        let (changed, sessions) = tokio::join!(change, futures_util::future::join_all(logins));
        assert_eq!(changed.0, StatusCode::OK, "{}", changed.2);
        let sessions: Vec<String> = sessions.into_iter().flatten().collect();
        raced += usize::from(!sessions.is_empty());
        for token in sessions {
            let (st, _, _) = s.call(Method::GET, "/v1/me", Some(&token), None).await;
            assert_eq!(st, StatusCode::UNAUTHORIZED, "round {round}: a session made with the old password lives on");
        }
        password = next;
    }
    assert!(raced >= 4, "a log-in with the old password succeeded in only {raced} of 6 rounds: the race was not run");
}

//! The account after sign-up, over HTTP: a password change re-wraps the data key and nothing
//! else, the recovery code resets a forgotten password once, and deletion leaves nothing behind.

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const PASSWORD: &str = "correct horse battery";

async fn log_in_with(s: &Server, username: &str, password: &str) -> (StatusCode, Value) {
    let (st, _, body) =
        s.call(Method::POST, "/v1/sessions", None, Some(json!({"username": username, "password": password}))).await;
    (st, body)
}

fn instance_dir(s: &Server, signed_up: &Value) -> std::path::PathBuf {
    selfcloud_control::instance_dir(s.home.path(), signed_up["instance"]["id"].as_str().unwrap().parse().unwrap())
}

/// A digest of the instance's record store (the database and its WAL; not the shared-memory
/// index, where readers take their marks), to show it was not rewritten.
fn store_digest(dir: &std::path::Path) -> Vec<u8> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.file_name().unwrap().to_str().is_some_and(|n| n.starts_with("store.") && !n.ends_with("-shm")))
        .collect();
    names.sort();
    let mut h = Sha256::new();
    for p in names {
        h.update(p.file_name().unwrap().to_str().unwrap());
        h.update(std::fs::read(p).unwrap());
    }
    h.finalize().to_vec()
}

/// Where the instance's key file is: the home's keys tree, never the instance's directory.
fn key_path(s: &Server, signed_up: &Value) -> std::path::PathBuf {
    let id = signed_up["instance"]["id"].as_str().unwrap().parse().unwrap();
    selfcloud_control::keystore::key_file_path(s.home.path(), id)
}

fn key_file(s: &Server, signed_up: &Value) -> Value {
    serde_json::from_slice(&std::fs::read(key_path(s, signed_up)).unwrap()).unwrap()
}

#[tokio::test]
async fn a_password_change_rewraps_the_key_ends_sessions_and_keeps_grants() {
    let s = Server::start().await;
    let signed_up = s.sign_up("ada").await;
    let (t1, t2) = (s.log_in("ada").await, s.log_in("ada").await);
    s.put_ok(&t1, "/v1/storage/notes/n1", json!({"t": "kept"})).await;
    let (_, app) = s.app_token(&t1, &["storage:read:notes"]).await;
    let dir = instance_dir(&s, &signed_up);
    // Reading the audit log writes its queue first, so nothing is left to land in the store later.
    s.call(Method::GET, "/v1/audit", Some(&t1), None).await;
    let (before_store, before_keys) = (store_digest(&dir), key_file(&s, &signed_up));

    // Refused: the wrong current password, a too-short new one, unknown fields; nothing changes.
    for (body, status) in [
        (json!({"password": "not my password", "new_password": "a new password"}), StatusCode::UNAUTHORIZED),
        (json!({"password": PASSWORD, "new_password": "short"}), StatusCode::BAD_REQUEST),
        (json!({"password": PASSWORD}), StatusCode::BAD_REQUEST),
        (json!({"password": PASSWORD, "new_password": "a new password", "user": "bob"}), StatusCode::BAD_REQUEST),
    ] {
        let (st, _, err) = s.call(Method::PUT, "/v1/accounts/me/password", Some(&t1), Some(body.clone())).await;
        assert_eq!(st, status, "{body}: {err}");
        Server::error_code(&err);
    }
    assert_eq!(key_file(&s, &signed_up), before_keys);
    assert_eq!(s.call(Method::GET, "/v1/me", Some(&t2), None).await.0, StatusCode::OK);

    let (st, headers, session) = s
        .call(
            Method::PUT,
            "/v1/accounts/me/password",
            Some(&t1),
            Some(json!({"password": PASSWORD, "new_password": "a new password"})),
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{session}");
    assert!(headers.get("set-cookie").is_none(), "API sessions are bearer tokens, never cookies");
    let fresh = session["token"].as_str().unwrap();
    // Only the password's wrap changed: the store's files are byte for byte the same.
    s.call(Method::GET, "/v1/audit", Some(fresh), None).await;
    assert_eq!(store_digest(&dir), before_store);

    // Every earlier session is over; the new one reads the same data; the app keeps its grant.
    for old in [&t1, &t2] {
        assert_eq!(s.call(Method::GET, "/v1/me", Some(old), None).await.0, StatusCode::UNAUTHORIZED);
    }
    let (st, _, v) = s.call(Method::GET, "/v1/storage/notes/n1", Some(fresh), None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"t": "kept"})));
    assert_eq!(s.call(Method::GET, "/v1/storage/notes/n1", Some(&app.access_token), None).await.0, StatusCode::OK);
    assert_eq!(log_in_with(&s, "ada", PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(log_in_with(&s, "ada", "a new password").await.0, StatusCode::OK);

    let after_keys = key_file(&s, &signed_up);
    assert_eq!(after_keys["sealed"], before_keys["sealed"]);
    assert_ne!(after_keys["password_wrapped"], before_keys["password_wrapped"]);
    assert_ne!(after_keys["salt"], before_keys["salt"]);
}

#[tokio::test]
async fn the_recovery_code_resets_a_forgotten_password_once() {
    let s = Server::start().await;
    let signed_up = s.sign_up("ada").await;
    let code = signed_up["recovery_code"].as_str().unwrap().to_owned();
    assert_eq!(code.len(), 39, "eight groups of four: {code}");
    let old = s.log_in("ada").await;
    s.put_ok(&old, "/v1/storage/notes/n1", json!("still here")).await;
    s.sign_up("bob").await;
    let recover = |username: &str, code: &str, new: &str| json!({"username": username, "recovery_code": code, "new_password": new});

    // A wrong code, another user's name, an unknown user, a malformed code: all the same answer.
    let mut wrong = code.clone().into_bytes();
    wrong[0] = if wrong[0] == b'0' { b'1' } else { b'0' };
    let wrong = String::from_utf8(wrong).unwrap();
    let mut answers = Vec::new();
    for body in [
        recover("ada", &wrong, "a new password"),
        recover("bob", &code, "a new password"),
        recover("nobody", &code, "a new password"),
        recover("ada", "not-a-code", "a new password"),
    ] {
        let (st, _, err) = s.call(Method::POST, "/v1/accounts/recover", None, Some(body)).await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
        answers.push(err);
    }
    assert!(answers.windows(2).all(|w| w[0] == w[1]), "{answers:?}");
    let (st, _, _) = s.call(Method::POST, "/v1/accounts/recover", None, Some(recover("ada", &code, "short"))).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(log_in_with(&s, "bob", PASSWORD).await.0, StatusCode::OK, "bob is untouched");
    assert_eq!(s.call(Method::GET, "/v1/me", Some(&old), None).await.0, StatusCode::OK);

    // The right code, typed loosely: a new password, a session, the data readable, a new code.
    let typed = code.to_lowercase().replace('-', " ");
    let (st, _, recovered) =
        s.call(Method::POST, "/v1/accounts/recover", None, Some(recover("ada", &typed, "a new password"))).await;
    assert_eq!(st, StatusCode::OK, "{recovered}");
    let token = recovered["token"].as_str().unwrap();
    let (st, _, v) = s.call(Method::GET, "/v1/storage/notes/n1", Some(token), None).await;
    assert_eq!((st, v), (StatusCode::OK, json!("still here")));
    assert_eq!(s.call(Method::GET, "/v1/me", Some(&old), None).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(log_in_with(&s, "ada", PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    assert_eq!(log_in_with(&s, "ada", "a new password").await.0, StatusCode::OK);

    // The used code is spent; the new one works in its place.
    let next = recovered["recovery_code"].as_str().unwrap();
    assert_ne!(next, code);
    let (st, _, _) =
        s.call(Method::POST, "/v1/accounts/recover", None, Some(recover("ada", &code, "third password"))).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _, _) =
        s.call(Method::POST, "/v1/accounts/recover", None, Some(recover("ada", next, "third password"))).await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn deleting_an_account_shreds_its_key_removes_its_files_and_ends_every_token() {
    let s = Server::start().await;
    let signed_up = s.sign_up("ada").await;
    let code = signed_up["recovery_code"].as_str().unwrap().to_owned();
    let (ada, ada2) = (s.log_in("ada").await, s.log_in("ada").await);
    s.put_ok(&ada, "/v1/storage/notes/n1", json!("ada's")).await;
    let (client_id, app) = s.app_token(&ada, &["storage:read:notes"]).await;
    let bob = s.user("bob").await;
    s.put_ok(&bob, "/v1/storage/notes/n1", json!("bob's")).await;
    let dir = instance_dir(&s, &signed_up);
    let keys = key_path(&s, &signed_up);
    assert!(keys.is_file());

    // The password is asked again: wrong, missing or for someone else, nothing is deleted.
    for (body, status) in [
        (Some(json!({"password": "not my password"})), StatusCode::UNAUTHORIZED),
        (Some(json!({})), StatusCode::BAD_REQUEST),
        (None, StatusCode::UNSUPPORTED_MEDIA_TYPE),
    ] {
        let (st, _, err) = s.call(Method::DELETE, "/v1/accounts/me", Some(&ada), body).await;
        assert_eq!(st, status, "{err}");
    }
    let (st, _, _) = s.call(Method::DELETE, "/v1/accounts/me", Some(&ada), Some(json!({"password": PASSWORD}))).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    assert!(!dir.exists(), "the instance's directory is gone");
    assert!(!keys.exists(), "its key file is gone");

    // Every token the account had is dead: both sessions, the app's access and refresh tokens.
    for t in [&ada, &ada2, &app.access_token] {
        let (st, _, err) = s.call(Method::GET, "/v1/storage/notes/n1", Some(t), None).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::UNAUTHORIZED, "unauthenticated"));
    }
    let refresh = s
        .http
        .post(s.url("/oauth/token"))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", app.refresh_token.as_deref().unwrap()),
            ("client_id", client_id.as_str()),
        ])
        .send()
        .await
        .unwrap();
    // Refused for the dead token itself (a well-formed request: the client is named).
    assert_eq!(refresh.status(), StatusCode::BAD_REQUEST);
    let refused: Value = refresh.json().await.unwrap();
    assert_eq!(refused["error"], "invalid_grant", "{refused}");
    // No way back in: not the password, not the recovery code; the name stays reserved.
    assert_eq!(log_in_with(&s, "ada", PASSWORD).await.0, StatusCode::UNAUTHORIZED);
    let body = json!({"username": "ada", "recovery_code": code, "new_password": "a new password"});
    assert_eq!(s.call(Method::POST, "/v1/accounts/recover", None, Some(body)).await.0, StatusCode::UNAUTHORIZED);
    let body = json!({"username": "ada", "password": "a new password"});
    assert_eq!(s.call(Method::POST, "/v1/accounts", None, Some(body)).await.0, StatusCode::CONFLICT);

    // Bob is untouched.
    let (st, _, v) = s.call(Method::GET, "/v1/storage/notes/n1", Some(&bob), None).await;
    assert_eq!((st, v), (StatusCode::OK, json!("bob's")));

    // After a restart the tombstone holds: nothing of Ada's comes back.
    let home = s.stop().await;
    let now = selfcloud_gateway::clock::Clock::now(&selfcloud_gateway::clock::SystemClock);
    let control = selfcloud_control::Control::open(common::test_config(home.path()), now).unwrap();
    assert!(control.authenticate(&ada, now).is_none());
    assert!(control.log_in("ada", PASSWORD).await.is_err());
    let instance = signed_up["instance"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(control.instance(instance).await.err().map(|e| e.code), Some(selfcloud_core::ErrorCode::NotFound));
}

#[tokio::test]
async fn an_idle_instance_hibernates_and_wakes_on_the_next_call_with_data_tokens_and_audit_intact() {
    use selfcloud_control::RunState;
    let s = Server::start_with(|c| c.hibernate_after = std::time::Duration::from_secs(1)).await;
    let owner = s.user("ada").await;
    let (_, app) = s.app_token(&owner, &["storage:read:notes"]).await;
    s.put_ok(&owner, "/v1/storage/notes/a", json!({"v": 1})).await;
    let (_, _, me) = s.call(Method::GET, "/v1/me", Some(&owner), None).await;
    let id = me["instance"]["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(s.control.run_status(id).state, RunState::Running);

    // Idle past the setting: it hibernates (under `process`, its process has exited).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while s.control.run_status(id).state != RunState::Hibernated {
        assert!(std::time::Instant::now() < deadline, "still {:?}", s.control.run_status(id));
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert_eq!(s.control.run_status(id).pid, None);

    // The app's next call wakes it, with no error: same token, same data.
    let (st, _, v) = s.call(Method::GET, "/v1/storage/notes/a", Some(&app.access_token), None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"v": 1})));
    assert_eq!(s.control.run_status(id).state, RunState::Running);
    // The access log runs on across the sleep: the write before, the app's read after.
    let (_, _, audit) = s.call(Method::GET, "/v1/audit", Some(&owner), None).await;
    let entries = audit["entries"].as_array().unwrap();
    let paths: Vec<(&str, &str)> =
        entries.iter().map(|e| (e["method"].as_str().unwrap(), e["actor"]["kind"].as_str().unwrap())).collect();
    let read = paths.iter().position(|p| *p == ("GET", "app")).expect("the app's read is logged");
    let write = paths.iter().position(|p| *p == ("PUT", "owner")).expect("the owner's write is logged");
    assert!(read < write, "newest first: the read after the wake, then the write before it: {paths:?}");
    // And the wakes are counted.
    let metrics = s.http.get(s.url("/metrics")).send().await.unwrap().text().await.unwrap();
    let wakes = metrics
        .lines()
        .find_map(|l| l.strip_prefix("selfcloud_instance_wake_seconds_count "))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no wake count in {metrics}"));
    assert!(wakes >= 2, "{wakes} wakes counted");
    assert!(metrics.contains("selfcloud_instances{state=\"running\"} 1"), "{metrics}");
}

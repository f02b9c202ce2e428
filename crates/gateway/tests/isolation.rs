//! Attacks on isolation: for every API, the wrong token, another user's credentials, forged,
//! expired and revoked tokens, missing scopes and owner-only powers all fail with the contract's
//! error, and nothing is written.

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// The owner's powers, never reachable with an app token, with a body where one is taken.
fn owner_only_endpoints() -> Vec<(Method, &'static str, Option<Value>)> {
    vec![
        (Method::GET, "/v1/audit", None),
        (Method::GET, "/v1/grants", None),
        (Method::DELETE, "/v1/grants/grt_00000000000000000000000000000000", None),
        (Method::PATCH, "/v1/grants/grt_00000000000000000000000000000000", Some(json!({"token_budget": 5}))),
        (
            Method::POST,
            "/v1/apps",
            Some(json!({"name": "x", "redirect_uris": ["https://a.example/cb"], "scopes": ["llm:chat"]})),
        ),
        (Method::GET, "/v1/apps", None),
        (Method::DELETE, "/v1/apps/app_00000000000000000000000000000000", None),
        (Method::DELETE, "/v1/sessions", None),
        (Method::GET, "/v1/export", None),
        (Method::POST, "/v1/import", Some(json!({}))),
        (
            Method::PUT,
            "/v1/accounts/me/password",
            Some(json!({"password": "correct horse battery", "new_password": "taken over"})),
        ),
        (Method::DELETE, "/v1/accounts/me", Some(json!({"password": "correct horse battery"}))),
    ]
}

/// Authenticated endpoints, with a body where one is taken (every route of the instance's parts
/// is also walked from its declaration in `routes.rs`).
fn endpoints() -> Vec<(Method, &'static str, Option<Value>)> {
    let mut all = vec![
        (Method::GET, "/v1/me", None),
        (Method::GET, "/v1/storage/notes", None),
        (Method::GET, "/v1/storage/notes/secret", None),
        (Method::PUT, "/v1/storage/notes/secret", Some(json!({"pwned": true}))),
        (Method::DELETE, "/v1/storage/notes/secret", None),
        (Method::GET, "/v1/llm/models", None),
        (Method::POST, "/v1/llm/chat/completions", Some(json!({"messages": [{"role": "user", "content": "hi"}]}))),
    ];
    all.extend(owner_only_endpoints());
    all
}

async fn assert_untouched(s: &Server, owner: &str) {
    let (st, _, v) = s.call(Method::GET, "/v1/storage/notes/secret", Some(owner), None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"text": "ada's secret"})));
    let (_, _, page) = s.call(Method::GET, "/v1/storage/notes", Some(owner), None).await;
    assert_eq!(page["records"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn forged_missing_expired_and_logged_out_tokens_reach_nothing() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    s.put_ok(&ada, "/v1/storage/notes/secret", json!({"text": "ada's secret"})).await;
    let mut forged = ada.clone();
    // One character changed (to one it is not already).
    let last = forged.pop().unwrap();
    forged.push(if last == 'A' { 'B' } else { 'A' });
    for (method, path, body) in endpoints() {
        for token in [None, Some(forged.as_str()), Some("scs_"), Some(""), Some("Basic YWRhOnB3")] {
            let (st, _, err) = s.call(method.clone(), path, token, body.clone()).await;
            assert_eq!(
                (st, Server::error_code(&err)),
                (StatusCode::UNAUTHORIZED, "unauthenticated"),
                "{method} {path} with {token:?}"
            );
        }
    }
    // A refresh token is not an API credential.
    let (_, tokens) = s.app_token(&ada, &["storage:read:notes"]).await;
    let refresh = tokens.refresh_token.clone().unwrap();
    assert_eq!(s.call(Method::GET, "/v1/storage/notes/secret", Some(&refresh), None).await.0, StatusCode::UNAUTHORIZED);

    // Expired: access tokens live an hour, sessions a day.
    s.clock.advance(3601);
    assert_eq!(
        s.call(Method::GET, "/v1/storage/notes/secret", Some(&tokens.access_token), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (st, _, _) = s.call(Method::GET, "/v1/me", Some(&ada), None).await;
    assert_eq!(st, StatusCode::OK, "the session still lives");
    s.clock.advance(24 * 3600);
    for (method, path, body) in endpoints() {
        assert_eq!(s.call(method.clone(), path, Some(&ada), body).await.0, StatusCode::UNAUTHORIZED, "{method} {path}");
    }
    let ada = s.log_in("ada").await;
    assert_untouched(&s, &ada).await;

    // Logging out ends the session at once.
    assert_eq!(s.call(Method::DELETE, "/v1/sessions", Some(&ada), None).await.0, StatusCode::NO_CONTENT);
    assert_eq!(s.call(Method::GET, "/v1/me", Some(&ada), None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn another_users_credentials_only_ever_open_their_own_instance() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let bob = s.user("bob").await;
    s.put_ok(&ada, "/v1/storage/notes/secret", json!({"text": "ada's secret"})).await;

    // Bob's session names Bob's instance: the same paths show Bob's (empty) data, and his
    // writes land in his instance, never in Ada's.
    assert_eq!(s.call(Method::GET, "/v1/storage/notes/secret", Some(&bob), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.call(Method::GET, "/v1/storage/notes", Some(&bob), None).await.2["records"], json!([]));
    assert_eq!(s.call(Method::DELETE, "/v1/storage/notes/secret", Some(&bob), None).await.0, StatusCode::NOT_FOUND);
    s.put_ok(&bob, "/v1/storage/notes/secret", json!({"text": "bob's"})).await;
    assert_untouched(&s, &ada).await;
    let (_, _, me) = s.call(Method::GET, "/v1/me", Some(&bob), None).await;
    assert_eq!(me["username"], "bob");

    // An app Bob authorized holds a token for Bob's instance only.
    let (_, bob_app) = s.app_token(&bob, &["storage:read:notes", "storage:write:notes"]).await;
    let (st, _, v) = s.call(Method::GET, "/v1/storage/notes/secret", Some(&bob_app.access_token), None).await;
    assert_eq!((st, v), (StatusCode::OK, json!({"text": "bob's"})));
    s.call(Method::DELETE, "/v1/storage/notes/secret", Some(&bob_app.access_token), None).await;
    assert_untouched(&s, &ada).await;

    // Ada's grants cannot be seen or revoked by Bob.
    let (_, ada_app) = s.app_token(&ada, &["storage:read:notes"]).await;
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let ada_grant = grants["grants"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(s.call(Method::GET, "/v1/grants", Some(&bob), None).await.2["grants"].as_array().unwrap().len(), 1);
    let (st, _, err) = s.call(Method::DELETE, &format!("/v1/grants/{ada_grant}"), Some(&bob), None).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::NOT_FOUND, "not_found"));
    assert_eq!(
        s.call(Method::GET, "/v1/storage/notes/secret", Some(&ada_app.access_token), None).await.0,
        StatusCode::OK
    );
    // Ada's audit log shows nothing of Bob's traffic.
    let (_, _, audit) = s.call(Method::GET, "/v1/audit", Some(&ada), None).await;
    assert!(
        audit["entries"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["actor"]["kind"] == "owner" || e["actor"]["grant_id"] == ada_grant.as_str()),
        "{audit}"
    );
}

#[tokio::test]
async fn app_tokens_reach_only_their_scopes_and_never_owner_powers() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    s.put_ok(&ada, "/v1/storage/notes/secret", json!({"text": "ada's secret"})).await;
    s.put_ok(&ada, "/v1/storage/photos/p1", json!({"jpg": "..."})).await;
    let (_, app) = s.app_token(&ada, &["storage:read:notes"]).await;
    let t = app.access_token.as_str();

    // Missing scope: writing, deleting, other collections (also lookalike prefixes).
    for (method, path, body) in [
        (Method::PUT, "/v1/storage/notes/secret", Some(json!({"pwned": true}))),
        (Method::DELETE, "/v1/storage/notes/secret", None),
        (Method::GET, "/v1/storage/photos/p1", None),
        (Method::GET, "/v1/storage/photos", None),
        (Method::GET, "/v1/storage/notes2/x", None),
        (Method::GET, "/v1/storage/note/x", None),
        (Method::GET, "/v1/me", None),
        (Method::GET, "/v1/llm/models", None),
        (Method::POST, "/v1/llm/chat/completions", Some(json!({"messages": [{"role": "user", "content": "hi"}]}))),
    ] {
        let (st, _, err) = s.call(method.clone(), path, Some(t), body).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::FORBIDDEN, "forbidden"), "{method} {path}");
    }
    // Owner-only powers: never with an app token, whatever its scopes.
    for (method, path, body) in owner_only_endpoints() {
        let (st, _, err) = s.call(method.clone(), path, Some(t), body).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::FORBIDDEN, "forbidden"), "{method} {path}");
    }
    // No token is accepted as a cookie, app tokens least of all.
    for cookie in [format!("selfcloud_session={t}"), format!("selfcloud_web={t}")] {
        let resp = s.http.get(s.url("/v1/storage/notes/secret")).header("cookie", cookie).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    }
    assert_untouched(&s, &ada).await;

    // What it may do, it may do; and every attempt, allowed or not, is in Ada's audit log.
    assert_eq!(s.call(Method::GET, "/v1/storage/notes/secret", Some(t), None).await.0, StatusCode::OK);
    let (_, _, audit) = s.call(Method::GET, "/v1/audit", Some(&ada), None).await;
    let app_entries: Vec<&Value> =
        audit["entries"].as_array().unwrap().iter().filter(|e| e["actor"]["kind"] == "app").collect();
    let first = app_entries[0];
    assert_eq!(first["method"], "GET");
    assert_eq!(first["path"], "/v1/storage/notes/secret");
    assert_eq!(first["scope"], "storage:read:notes");
    assert_eq!(first["status"], 200);
    assert_eq!(first["actor"]["name"], "Notes Deluxe");
    assert!(first["at_ms"].as_u64().unwrap() > 1_700_000_000_000);
    assert!(first["request_id"].as_str().is_some());
    let refused: Vec<u64> = app_entries.iter().map(|e| e["status"].as_u64().unwrap()).filter(|s| *s == 403).collect();
    // Six storage calls, /v1/me, two LLM calls, /v1/audit, the export and the import, and the
    // nine calls on the account, its apps, grants and sessions: each refused call is audited.
    assert_eq!(refused.len(), 21, "{audit}");
    assert!(app_entries.iter().any(|e| e["path"] == "/v1/accounts/me/password" && e["status"] == 403), "{audit}");
    assert!(app_entries.iter().any(|e| e["path"] == "/v1/me" && e["status"] == 403), "{audit}");
}

#[tokio::test]
async fn a_revoked_grant_fails_on_the_very_next_request() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let (_, app) = s.app_token(&ada, &["storage:read:notes", "storage:write:notes"]).await;
    let t = app.access_token.as_str();
    assert_eq!(s.call(Method::PUT, "/v1/storage/notes/a", Some(t), Some(json!(1))).await.0, StatusCode::OK);
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let id = grants["grants"][0]["id"].as_str().unwrap().to_owned();
    assert_eq!(s.call(Method::DELETE, &format!("/v1/grants/{id}"), Some(&ada), None).await.0, StatusCode::NO_CONTENT);
    for (method, path, body) in endpoints() {
        let (st, _, err) = s.call(method.clone(), path, Some(t), body).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::UNAUTHORIZED, "unauthenticated"), "{method} {path}");
    }
    // Revoking twice, or a malformed id, is a plain 404.
    assert_eq!(s.call(Method::DELETE, &format!("/v1/grants/{id}"), Some(&ada), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(s.call(Method::DELETE, "/v1/grants/..%2F..%2Fetc", Some(&ada), None).await.0, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn tokens_and_revocations_survive_a_restart() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let (_, kept) = s.app_token(&ada, &["storage:read:notes"]).await;
    let (revoked_app, revoked) = s.app_token(&ada, &["storage:read:notes"]).await;
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    // Found by its app: grants made in the same second have no set order.
    let grant = grants["grants"].as_array().unwrap().iter().find(|g| g["client_id"] == revoked_app.as_str()).unwrap();
    let (st, _, _) =
        s.call(Method::DELETE, &format!("/v1/grants/{}", grant["id"].as_str().unwrap()), Some(&ada), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    s.put_ok(&ada, "/v1/storage/notes/a", json!("kept")).await;
    let home = s.stop().await;

    // Same home, new process state: the registry and tokens are read back from disk.
    let config = common::test_config(home.path());
    let control = selfcloud_control::Control::open(
        config,
        selfcloud_gateway::clock::Clock::now(&selfcloud_gateway::clock::SystemClock),
    )
    .unwrap();
    let now = selfcloud_gateway::clock::Clock::now(&selfcloud_gateway::clock::SystemClock);
    assert!(control.authenticate(&ada, now).is_some(), "session survives");
    assert!(control.authenticate(&kept.access_token, now).is_some(), "kept grant's token survives");
    assert!(control.authenticate(&revoked.access_token, now).is_none(), "revoked grant's token stays dead");
    assert!(control.authenticate(&revoked.refresh_token.unwrap(), now).is_none());
}

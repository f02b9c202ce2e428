//! The apps themselves, over HTTP: what a developer may register and how many, confidential
//! clients proving themselves with their secret, and how long a grant to an app lasts.

mod common;

use common::{Server, REDIRECT};
use reqwest::{Method, StatusCode};
use selfcloud_sdk::{AuthorizationRequest, Client};
use serde_json::json;

#[tokio::test]
async fn app_registration_validates_its_input() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    for body in [
        json!({"name": "x", "redirect_uris": ["http://evil.example/cb"], "scopes": ["llm:chat"]}),
        json!({"name": "x", "redirect_uris": ["javascript:alert(1)"], "scopes": ["llm:chat"]}),
        json!({"name": "x", "redirect_uris": ["https://a.example/cb#frag"], "scopes": ["llm:chat"]}),
        json!({"name": "x", "redirect_uris": [], "scopes": ["llm:chat"]}),
        json!({"name": "x", "redirect_uris": ["https://a.example/cb"], "scopes": ["audit"]}),
        json!({"name": "x", "redirect_uris": ["https://a.example/cb"], "scopes": []}),
        json!({"name": "", "redirect_uris": ["https://a.example/cb"], "scopes": ["llm:chat"]}),
        json!({"name": "x", "redirect_uris": ["https://a.example/cb"]}),
        // Smuggling a second address, or a scheme, past the URL parser.
        json!({"name": "x", "redirect_uris": ["https://good.example/cb\nhttp://evil.example/steal"], "scopes": ["llm:chat"]}),
        json!({"name": "x", "redirect_uris": ["https://good.example/cb\njavascript:alert(1)"], "scopes": ["llm:chat"]}),
        json!({"name": "x", "redirect_uris": ["https://good.example/cb\n"], "scopes": ["llm:chat"]}),
        json!({"name": "x", "redirect_uris": ["https://good.example/c\tb"], "scopes": ["llm:chat"]}),
        json!({"name": "x", "redirect_uris": ["com.example.app:/cb"], "scopes": ["llm:chat"]}),
    ] {
        let (st, _, err) = s.call(Method::POST, "/v1/apps", Some(&dev), Some(body.clone())).await;
        assert_eq!((st, Server::error_code(&err)), (StatusCode::BAD_REQUEST, "invalid_request"), "{body}");
    }
    let ok =
        json!({"name": "x", "redirect_uris": ["https://a.example/cb", "http://[::1]:8080/cb"], "scopes": ["llm:chat"]});
    let (st, _, app) = s.call(Method::POST, "/v1/apps", Some(&dev), Some(ok)).await;
    assert_eq!(st, StatusCode::CREATED);
    assert_eq!(app["redirect_uris"], json!(["https://a.example/cb", "http://[::1]:8080/cb"]));
}

#[tokio::test]
async fn developers_hold_a_bounded_number_of_apps_and_deleting_one_ends_every_grant_to_it() {
    let s = Server::start_with(|c| c.limits.apps_per_user = 3).await;
    let dev = s.user("developer").await;
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(s.register_app(&dev, &["storage:read:notes"]).await);
    }
    let body = json!({"name": "x", "redirect_uris": ["https://a.example/cb"], "scopes": ["llm:chat"]});
    let (st, _, err) = s.call(Method::POST, "/v1/apps", Some(&dev), Some(body)).await;
    assert_eq!((st, Server::error_code(&err)), (StatusCode::CONFLICT, "conflict"), "{err}");
    let (_, _, list) = s.call(Method::GET, "/v1/apps", Some(&dev), None).await;
    assert_eq!(list["apps"].as_array().unwrap().len(), 3, "{list}");

    // Ada uses the first app; the developer deletes it.
    let ada = s.user("ada").await;
    let (_, tokens) = s.authorize(&ada, &ids[0], &["storage:read:notes"]).await;
    // Another developer cannot delete it; a malformed id is a plain 404.
    let other = s.user("other").await;
    assert_eq!(
        s.call(Method::DELETE, &format!("/v1/apps/{}", ids[0]), Some(&other), None).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(s.call(Method::DELETE, "/v1/apps/..%2Fx", Some(&dev), None).await.0, StatusCode::NOT_FOUND);
    assert_eq!(
        s.call(Method::DELETE, &format!("/v1/apps/{}", ids[0]), Some(&dev), None).await.0,
        StatusCode::NO_CONTENT
    );
    assert_eq!(
        s.call(Method::GET, "/v1/storage/notes", Some(&tokens.access_token), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let refresh = tokens.refresh_token.unwrap();
    let form = [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", ids[0].as_str())];
    assert_eq!(s.token_form(&form).await.1["error"], "invalid_grant");
    assert_eq!(s.call(Method::GET, "/v1/grants", Some(&ada), None).await.2, json!({"grants": []}));
    // A deleted app is unknown to the consent page, and frees its place.
    let req = AuthorizationRequest::new(&s.app_config(&ids[0]), &["storage:read:notes"]);
    let resp = s.http.get(req.url()).bearer_auth(&ada).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers().get("location").is_none());
    s.register_app(&dev, &["storage:read:notes"]).await;

    // The developer deletes their account: every app of theirs goes, with every grant to it.
    let (_, kept) = s.authorize(&ada, &ids[1], &["storage:read:notes"]).await;
    let gone = json!({"password": "correct horse battery"});
    assert_eq!(s.call(Method::DELETE, "/v1/accounts/me", Some(&dev), Some(gone)).await.0, StatusCode::NO_CONTENT);
    assert_eq!(
        s.call(Method::GET, "/v1/storage/notes", Some(&kept.access_token), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let req = AuthorizationRequest::new(&s.app_config(&ids[1]), &["storage:read:notes"]);
    assert_eq!(s.decide(&ada, &req, "allow").await.status(), StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn a_confidential_client_proves_itself_with_its_secret_as_well() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let body = json!({"name": "Server app", "redirect_uris": [REDIRECT], "scopes": ["storage:read:notes"], "confidential": true});
    let (status, _, app) = s.call(Method::POST, "/v1/apps", Some(&dev), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    assert_eq!(app["token_endpoint_auth_method"], "client_secret_basic");
    let (client_id, secret) =
        (app["client_id"].as_str().unwrap().to_owned(), app["client_secret"].as_str().unwrap().to_owned());
    let (_, _, listed) = s.call(Method::GET, "/v1/apps", Some(&dev), None).await;
    assert!(listed["apps"][0].get("client_secret").is_none(), "the secret is shown once: {listed}");
    let ada = s.user("ada").await;
    let config = s.app_config(&client_id);

    // One code per attempt, each refused without, or with a wrong, secret; then redeemed with it.
    let code_for = |req: &AuthorizationRequest| {
        let req = req.clone();
        let s = &s;
        let ada = ada.clone();
        async move {
            let resp = s.decide(&ada, &req, "allow").await;
            req.finish(resp.headers()["location"].to_str().unwrap()).unwrap()
        }
    };
    let req = AuthorizationRequest::new(&config, &["storage:read:notes"]);
    let code = code_for(&req).await;
    let without = Client::new(config.clone()).exchange_code(&req, &code).await.unwrap_err();
    assert_eq!((without.status(), without.code()), (Some(400), Some("invalid_client")), "{without}");
    let wrong =
        Client::new(config.clone()).with_client_secret("sck_wrong").exchange_code(&req, &code).await.unwrap_err();
    assert_eq!((wrong.status(), wrong.code()), (Some(401), Some("invalid_client")), "{wrong}");
    let raw = s
        .http
        .post(s.url("/oauth/token"))
        .basic_auth(&client_id, Some("sck_wrong"))
        .form(&[("grant_type", "authorization_code"), ("code", &code)])
        .send()
        .await
        .unwrap();
    assert_eq!(raw.headers()["www-authenticate"], "Basic realm=\"selfcloud\"");
    let client = Client::new(config.clone()).with_client_secret(&secret);
    client.exchange_code(&req, &code).await.unwrap();
    client.refresh().await.unwrap();
    let stolen = Client::with_tokens(config.clone(), client.tokens().unwrap());
    assert_eq!(
        stolen.refresh().await.unwrap_err().code(),
        Some("invalid_client"),
        "a refresh token alone is not enough"
    );
    // Its tokens are revoked by it alone, authenticated, whether or not the form names it.
    let access = client.tokens().unwrap().access_token;
    let bare = s.http.post(s.url("/oauth/revoke")).form(&[("token", access.as_str())]).send().await.unwrap();
    assert_eq!(bare.status(), StatusCode::BAD_REQUEST);
    assert_eq!(s.call(Method::GET, "/v1/storage/notes", Some(&access), None).await.0, StatusCode::OK, "still alive");
    client.revoke().await.unwrap();
    assert_eq!(s.call(Method::GET, "/v1/storage/notes", Some(&access), None).await.0, StatusCode::UNAUTHORIZED);

    // A public client has no secret to send.
    let public = s.register_app(&dev, &["storage:read:notes"]).await;
    let req = AuthorizationRequest::new(&s.app_config(&public), &["storage:read:notes"]);
    let resp = s.decide(&ada, &req, "allow").await;
    let code = req.finish(resp.headers()["location"].to_str().unwrap()).unwrap();
    let e =
        Client::new(s.app_config(&public)).with_client_secret(&secret).exchange_code(&req, &code).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(401), Some("invalid_client")), "{e}");
    let (_, _, meta) = s.call(Method::GET, "/.well-known/oauth-authorization-server", None, None).await;
    assert_eq!(meta["token_endpoint_auth_methods_supported"], json!(["none", "client_secret_basic"]));
}

#[tokio::test]
async fn a_grant_set_to_last_a_day_ends_by_itself_with_every_token() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes"]).await;
    let ada = s.user("ada").await;
    let config = s.app_config(&client_id);
    let req = AuthorizationRequest::new(&config, &["storage:read:notes"]);
    let resp = s.decide_with(&ada, &req, "allow", &[("expires_in_days", "1")]).await;
    let code = req.finish(resp.headers()["location"].to_str().unwrap()).unwrap();
    let client = Client::new(config.clone());
    let tokens = client.exchange_code(&req, &code).await.unwrap();
    assert!(tokens.expires_in <= 86_400);
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let expires_at = grants["grants"][0]["expires_at"].as_u64().unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    assert!((now + 86_000..=now + 86_500).contains(&expires_at), "{grants}");
    client.refresh().await.unwrap();
    // Asked again, the page offers to keep that end, first; a consent that does not choose keeps it.
    let again = AuthorizationRequest::new(&config, &["storage:read:notes"]);
    let page = s.http.get(again.url()).bearer_auth(&ada).send().await.unwrap().text().await.unwrap();
    let select = page.split("name=\"expires_in_days\"").nth(1).unwrap();
    assert!(select.trim_start_matches(['>', ' ']).starts_with("<option value=\"keep\" selected"), "{select}");
    s.decide(&ada, &again, "allow").await;
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    assert_eq!(grants["grants"][0]["expires_at"].as_u64(), Some(expires_at), "{grants}");

    // A day later: the refresh token would live on, but no token outlives its grant.
    s.clock.advance(86_401);
    let ada = s.log_in("ada").await; // her own session ran out too
    let e = client.refresh().await.unwrap_err();
    assert_eq!(e.code(), Some("invalid_grant"), "{e}");
    assert_eq!(
        s.call(Method::GET, "/v1/storage/notes", Some(&client.tokens().unwrap().access_token), None).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    assert_eq!(grants, json!({"grants": []}));
    // Consenting again starts a new grant; a bad choice of days is refused.
    let req = AuthorizationRequest::new(&config, &["storage:read:notes"]);
    let resp = s.decide_with(&ada, &req, "allow", &[("expires_in_days", "0")]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let (client, _) = s.authorize(&ada, &client_id, &["storage:read:notes"]).await;
    assert!(client.storage().list("notes", None, None, None).await.is_ok());
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    assert!(grants["grants"][0]["expires_at"].is_null(), "{grants}");
}

//! OAuth 2.1 over HTTP, played by the SDK as a third-party app against the real server.

mod common;

use common::{Server, REDIRECT};
use reqwest::{Method, StatusCode};
use selfcloud_sdk::{AuthorizationRequest, Client};
use serde_json::{json, Value};

#[tokio::test]
async fn an_app_gets_consent_and_scoped_access_with_the_sdk() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes*", "storage:write:notes", "profile:read"]).await;
    let ada = s.user("ada").await;
    s.put_ok(&ada, "/v1/storage/private/diary", json!("not for apps")).await;

    // The consent page names the app and each scope in plain words, and cannot be framed.
    let config = s.app_config(&client_id);
    let req = AuthorizationRequest::new(&config, &["storage:read:notes*", "storage:write:notes"]);
    let page = s.http.get(req.url()).bearer_auth(&ada).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["x-frame-options"], "DENY");
    assert!(page.headers()["content-security-policy"].to_str().unwrap().contains("frame-ancestors 'none'"));
    let html = page.text().await.unwrap();
    assert!(html.contains("Notes Deluxe"), "{html}");
    assert!(html.contains("Read your records in every collection whose name starts with"), "{html}");
    assert!(html.contains("Create, change and delete your \u{201c}notes\u{201d} records"), "{html}");

    // The user allows; the app exchanges the code and works within its scopes only.
    let resp = s.decide(&ada, &req, "allow").await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    let location = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(location.starts_with(REDIRECT) && location.contains("iss="), "{location}");
    let code = req.finish(&location).unwrap();
    let app = Client::new(config.clone());
    let tokens = app.exchange_code(&req, &code).await.unwrap();
    assert_eq!(tokens.scope, "storage:read:notes* storage:write:notes");
    let rev = app.storage().put("notes", "n1", &json!({"t": "from the app"})).await.unwrap();
    let rec = app.storage().get("notes", "n1").await.unwrap().unwrap();
    assert_eq!((rec.rev, rec.value), (rev, json!({"t": "from the app"})));
    assert_eq!(app.storage().list("notes", None, None, None).await.unwrap().records.len(), 1);
    // Outside the grant: another collection, writing where only reading was granted, profile.
    assert_eq!(app.storage().get("private", "diary").await.unwrap_err().status(), Some(403));
    assert_eq!(app.storage().put("notes.work", "x", &json!(1)).await.unwrap_err().status(), Some(403));
    assert_eq!(app.get_json("/v1/me").await.unwrap_err().status(), Some(403));
    // The owner sees the app's write in their own instance.
    assert_eq!(s.call(Method::GET, "/v1/storage/notes/n1", Some(&ada), None).await.2, json!({"t": "from the app"}));

    // The user lists the grant, then revokes it: the very next request fails, and so does refresh.
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let grant = &grants["grants"][0];
    assert_eq!(grant["app_name"], "Notes Deluxe");
    assert_eq!(grant["client_id"], client_id.as_str());
    let grant_id = grant["id"].as_str().unwrap();
    let (st, _, _) = s.call(Method::DELETE, &format!("/v1/grants/{grant_id}"), Some(&ada), None).await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let stale = Client::with_tokens(config.clone(), tokens.clone());
    let err = stale.storage().get("notes", "n1").await.unwrap_err();
    assert_eq!((err.status(), err.code()), (Some(401), Some("unauthenticated")));
    let refresh_err = Client::with_tokens(config, tokens).refresh().await.unwrap_err();
    assert_eq!(refresh_err.code(), Some("invalid_grant"));
    assert_eq!(s.call(Method::GET, "/v1/grants", Some(&ada), None).await.2, json!({"grants": []}));
}

#[tokio::test]
async fn the_user_can_untick_scopes_and_deny() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes", "storage:write:notes"]).await;
    let ada = s.user("ada").await;
    let config = s.app_config(&client_id);

    let req = AuthorizationRequest::new(&config, &["storage:read:notes", "storage:write:notes"]);
    let mut form = req.params();
    form.push(("decision".into(), "allow".into()));
    form.push(("grant_scope".into(), "storage:read:notes".into()));
    let resp = s.http.post(s.url("/oauth/authorize")).bearer_auth(&ada).form(&form).send().await.unwrap();
    let code = req.finish(resp.headers()["location"].to_str().unwrap()).unwrap();
    let app = Client::new(config.clone());
    assert_eq!(app.exchange_code(&req, &code).await.unwrap().scope, "storage:read:notes");
    assert_eq!(app.storage().put("notes", "x", &json!(1)).await.unwrap_err().status(), Some(403));

    let req = AuthorizationRequest::new(&config, &["storage:read:notes"]);
    let resp = s.decide(&ada, &req, "deny").await;
    let err = req.finish(resp.headers()["location"].to_str().unwrap()).unwrap_err();
    assert!(matches!(err, selfcloud_sdk::Error::Denied(ref e) if e == "access_denied"), "{err:?}");
}

#[tokio::test]
async fn codes_work_once_expire_and_need_the_right_verifier() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes"]).await;
    let other_client = s.register_app(&dev, &["storage:read:notes"]).await;
    let ada = s.user("ada").await;
    let config = s.app_config(&client_id);
    let new_code = |req: &AuthorizationRequest| {
        let req = req.params();
        let (s, ada) = (&s, ada.clone());
        async move {
            let mut form = req;
            form.push(("decision".into(), "allow".into()));
            let resp = s.http.post(s.url("/oauth/authorize")).bearer_auth(&ada).form(&form).send().await.unwrap();
            let loc = resp.headers()["location"].to_str().unwrap().to_owned();
            url::Url::parse(&loc).unwrap().query_pairs().find(|(k, _)| k == "code").unwrap().1.into_owned()
        }
    };
    let req = AuthorizationRequest::new(&config, &["storage:read:notes"]);
    let verifier = req.code_verifier().to_owned();
    let exchange = |code: String, verifier: Option<String>, client: String, redirect: &'static str| {
        let s = &s;
        async move {
            let mut form = vec![
                ("grant_type", "authorization_code".to_owned()),
                ("code", code),
                ("client_id", client),
                ("redirect_uri", redirect.to_owned()),
            ];
            if let Some(v) = verifier {
                form.push(("code_verifier", v));
            }
            let form: Vec<(&str, &str)> = form.iter().map(|(k, v)| (*k, v.as_str())).collect();
            s.token_form(&form).await
        }
    };

    // PKCE downgrade: no verifier at all is refused, as is a wrong one; so are another client
    // and another redirect URI. None of them spends the code: whoever tried it without the
    // verifier cannot burn the app's code (nor, replaying it, revoke the grant).
    let code = new_code(&req).await;
    let (st, body) = exchange(code.clone(), None, client_id.clone(), REDIRECT).await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")));
    let wrong = "x".repeat(43);
    assert_eq!(
        exchange(code.clone(), Some(wrong.clone()), client_id.clone(), REDIRECT).await.1["error"],
        "invalid_grant"
    );
    assert_eq!(
        exchange(code.clone(), Some(verifier.clone()), other_client.clone(), REDIRECT).await.1["error"],
        "invalid_grant"
    );
    assert_eq!(
        exchange(code.clone(), Some(verifier.clone()), client_id.clone(), "http://127.0.0.1:9/other").await.1["error"],
        "invalid_grant"
    );
    let (st, tokens) = exchange(code.clone(), Some(verifier.clone()), client_id.clone(), REDIRECT).await;
    assert_eq!(st, StatusCode::OK, "the app's own exchange still works: {tokens}");
    let access = tokens["access_token"].as_str().unwrap().to_owned();
    // The spent code presented again without the verifier: refused, and the grant stays.
    for (verifier, client) in [(Some(wrong), client_id.clone()), (Some(verifier.clone()), other_client.clone())] {
        assert_eq!(exchange(code.clone(), verifier, client, REDIRECT).await.1["error"], "invalid_grant");
    }
    assert_eq!(s.call(Method::GET, "/v1/storage/notes", Some(&access), None).await.0, StatusCode::OK);
    // Expired: codes live 60 s.
    let code = new_code(&req).await;
    s.clock.advance(61);
    assert_eq!(exchange(code, Some(verifier.clone()), client_id.clone(), REDIRECT).await.1["error"], "invalid_grant");

    // A good code works once; replaying it revokes what it issued (its sign-in).
    let code = new_code(&req).await;
    let (st, tokens) = exchange(code.clone(), Some(verifier.clone()), client_id.clone(), REDIRECT).await;
    assert_eq!(st, StatusCode::OK, "{tokens}");
    assert_eq!(tokens["token_type"], "Bearer");
    let access = tokens["access_token"].as_str().unwrap();
    assert_eq!(s.call(Method::GET, "/v1/storage/notes", Some(access), None).await.0, StatusCode::OK);
    let (st, body) = exchange(code, Some(verifier), client_id, REDIRECT).await;
    assert_eq!((st, body["error"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_grant")));
    assert_eq!(s.call(Method::GET, "/v1/storage/notes", Some(access), None).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn refresh_tokens_rotate_and_a_replay_ends_that_sign_in_but_not_the_grant() {
    let s = Server::start().await;
    let ada = s.user("ada").await;
    let (client_id, first) = s.app_token(&ada, &["storage:read:notes"]).await;
    let config = s.app_config(&client_id);
    let app = Client::with_tokens(config.clone(), first.clone());
    let second = app.refresh().await.unwrap();
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_ne!(second.access_token, first.access_token);
    assert_eq!(app.storage().list("notes", None, None, None).await.unwrap().records.len(), 0);

    // The old refresh token again: a thief or a bug. Everything of that sign-in stops working.
    let replay = Client::with_tokens(config.clone(), first).refresh().await.unwrap_err();
    assert_eq!(replay.code(), Some("invalid_grant"));
    let err = Client::with_tokens(config.clone(), second.clone())
        .storage()
        .list("notes", None, None, None)
        .await
        .unwrap_err();
    assert_eq!(err.status(), Some(401));
    assert!(Client::with_tokens(config, second).refresh().await.is_err());
    // The user's consent stays: the grant is still listed.
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    assert!(grants["grants"].as_array().unwrap().iter().any(|g| g["client_id"] == client_id.as_str()), "{grants}");

    // Refresh cannot widen scope; an unknown grant type is refused.
    let (client_id, tokens) = s.app_token(&ada, &["storage:read:notes"]).await;
    let refresh = tokens.refresh_token.unwrap();
    let (_, body) = s
        .token_form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", &refresh),
            ("client_id", &client_id),
            ("scope", "storage:read:*"),
        ])
        .await;
    assert_eq!(body["error"], "invalid_scope");
    // The refused request spent nothing: the same refresh token still rotates, once.
    let form =
        [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", client_id.as_str())];
    let (st, rotated) = s.token_form(&form).await;
    assert_eq!(st, StatusCode::OK, "{rotated}");
    assert_eq!(
        s.call(Method::GET, "/v1/storage/notes", Some(rotated["access_token"].as_str().unwrap()), None).await.0,
        StatusCode::OK
    );
    let (_, body) = s.token_form(&[("grant_type", "password"), ("client_id", &client_id)]).await;
    assert_eq!(body["error"], "unsupported_grant_type");
}

#[tokio::test]
async fn a_replay_ends_only_the_sign_in_it_came_from_and_the_grant_stays() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let scopes = ["storage:read:notes"];
    let client_id = s.register_app(&dev, &scopes).await;
    let ada = s.user("ada").await;
    let config = s.app_config(&client_id);
    let status = |token: String| {
        let s = &s;
        async move { s.call(Method::GET, "/v1/storage/notes", Some(&token), None).await.0 }
    };
    let granted = || async {
        let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
        grants["grants"].as_array().unwrap().iter().filter(|g| g["client_id"] == client_id.as_str()).count()
    };
    // The app signed in on two devices: two token families of one grant.
    let (_, a) = s.authorize(&ada, &client_id, &scopes).await;
    let (_, b) = s.authorize(&ada, &client_id, &scopes).await;

    // Device A refreshes, then its spent refresh token comes again (a double submit, or a thief).
    let a2 = Client::with_tokens(config.clone(), a.clone()).refresh().await.unwrap();
    let replay = Client::with_tokens(config.clone(), a).refresh().await.unwrap_err();
    assert_eq!(replay.code(), Some("invalid_grant"));
    // Everything of family A stops working...
    assert_eq!(status(a2.access_token.clone()).await, StatusCode::UNAUTHORIZED, "family A's access token");
    assert_eq!(Client::with_tokens(config.clone(), a2).refresh().await.unwrap_err().code(), Some("invalid_grant"));
    // ...family B (the app on the other device) does not, and the user's consent stays.
    assert_eq!(status(b.access_token.clone()).await, StatusCode::OK, "family B's access token");
    let b2 = Client::with_tokens(config.clone(), b).refresh().await.unwrap();
    assert_eq!(status(b2.access_token.clone()).await, StatusCode::OK);
    assert_eq!(granted().await, 1, "the grant is still listed");

    // A replayed code ends the family it started, and only that one.
    let req = AuthorizationRequest::new(&config, &scopes);
    let resp = s.decide(&ada, &req, "allow").await;
    let code = req.finish(resp.headers()["location"].to_str().unwrap()).unwrap();
    let c = Client::new(config.clone()).exchange_code(&req, &code).await.unwrap();
    assert_eq!(status(c.access_token.clone()).await, StatusCode::OK);
    let again = Client::new(config.clone()).exchange_code(&req, &code).await.unwrap_err();
    assert_eq!(again.code(), Some("invalid_grant"));
    assert_eq!(status(c.access_token.clone()).await, StatusCode::UNAUTHORIZED, "the code's family is revoked");
    assert_eq!(Client::with_tokens(config.clone(), c).refresh().await.unwrap_err().code(), Some("invalid_grant"));
    assert_eq!(status(b2.access_token.clone()).await, StatusCode::OK, "family B still works");
    assert!(Client::with_tokens(config, b2).refresh().await.is_ok());
    assert_eq!(granted().await, 1, "the grant is still listed");
}

#[tokio::test]
async fn an_app_holds_one_grant_per_user_and_revoking_it_ends_every_sign_in() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes", "storage:write:notes"]).await;
    let ada = s.user("ada").await;
    // Two consents (two devices, say), for different scopes.
    let (_, read) = s.authorize(&ada, &client_id, &["storage:read:notes"]).await;
    let (_, write) = s.authorize(&ada, &client_id, &["storage:write:notes"]).await;
    // Each sign-in carries what was consented to for it.
    assert_eq!(
        s.call(Method::PUT, "/v1/storage/notes/a", Some(&read.access_token), Some(json!(1))).await.0,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.call(Method::PUT, "/v1/storage/notes/a", Some(&write.access_token), Some(json!(1))).await.0,
        StatusCode::OK
    );
    // The user sees the app once, holding both.
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let list = grants["grants"].as_array().unwrap();
    assert_eq!(list.len(), 1, "{grants}");
    assert_eq!(list[0]["scopes"], json!(["storage:read:notes", "storage:write:notes"]));
    // Revoking the entry the user sees ends every token the app holds for them.
    let id = list[0]["id"].as_str().unwrap();
    assert_eq!(s.call(Method::DELETE, &format!("/v1/grants/{id}"), Some(&ada), None).await.0, StatusCode::NO_CONTENT);
    for t in [&read, &write] {
        assert_eq!(
            s.call(Method::GET, "/v1/storage/notes", Some(&t.access_token), None).await.0,
            StatusCode::UNAUTHORIZED
        );
        let refresh = t.refresh_token.clone().unwrap();
        let form =
            [("grant_type", "refresh_token"), ("refresh_token", refresh.as_str()), ("client_id", client_id.as_str())];
        assert_eq!(s.token_form(&form).await.1["error"], "invalid_grant");
    }
}

#[tokio::test]
async fn bad_authorization_requests_never_redirect_to_unregistered_places() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes"]).await;
    let ada = s.user("ada").await;
    let config = s.app_config(&client_id);
    let req = AuthorizationRequest::new(&config, &["storage:read:notes"]);
    let with = |name: &str, value: &str| {
        let mut url = req.url();
        let pairs: Vec<(String, String)> =
            url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).filter(|(k, _)| k != name).collect();
        url.query_pairs_mut().clear().extend_pairs(pairs).append_pair(name, value);
        url
    };
    // Unknown client or unregistered redirect URI (also a prefix or an extended one): an error
    // page, no redirect at all.
    for url in [
        with("client_id", "app_00000000000000000000000000000000"),
        with("client_id", "nope"),
        with("redirect_uri", "https://evil.example/callback"),
        with("redirect_uri", "http://127.0.0.1:9/callback/../evil"),
        with("redirect_uri", "http://127.0.0.1:9/callbackx"),
    ] {
        let resp = s.http.get(url.clone()).bearer_auth(&ada).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{url}");
        assert!(resp.headers().get("location").is_none());
    }
    // Known client and redirect, bad request: the error goes back to the app, with its state.
    for (url, error) in [
        (with("code_challenge_method", "plain"), "invalid_request"),
        (with("code_challenge", "short"), "invalid_request"),
        (with("response_type", "token"), "unsupported_response_type"),
        (with("scope", "storage:read:other"), "invalid_scope"),
        (with("scope", "audit"), "invalid_scope"),
    ] {
        let resp = s.http.get(url.clone()).bearer_auth(&ada).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FOUND, "{url}");
        let loc = resp.headers()["location"].to_str().unwrap();
        assert!(loc.starts_with(REDIRECT), "{loc}");
        let q: Vec<(String, String)> = url::Url::parse(loc).unwrap().query_pairs().into_owned().collect();
        assert!(q.contains(&("error".into(), error.into())), "{loc}");
        assert!(q.contains(&("state".into(), req.state().into())), "{loc}");
    }
    // Deciding without any session is refused.
    let mut form = req.params();
    form.push(("decision".into(), "allow".into()));
    let resp = s.http.post(s.url("/oauth/authorize")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    // An app token is not a session: it cannot consent on the user's behalf.
    let (_, tokens) = s.app_token(&ada, &["storage:read:notes"]).await;
    let resp =
        s.http.post(s.url("/oauth/authorize")).bearer_auth(&tokens.access_token).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_browser_flow_logs_in_with_a_cookie_and_checks_csrf() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes"]).await;
    s.sign_up("ada").await;
    let browser =
        reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let req = AuthorizationRequest::new(&s.app_config(&client_id), &["storage:read:notes"]);

    // No session: a log-in form that carries the request along.
    let html = browser.get(req.url()).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("action=\"/oauth/login\"") && html.contains(req.code_challenge()), "{html}");
    let token = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let mut login = req.params();
    login.push(("csrf".into(), token));
    login.push(("username".into(), "ada".into()));
    login.push(("password".into(), "wrong password".into()));
    let resp = browser.post(s.url("/oauth/login")).form(&login).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    login.pop();
    login.push(("password".into(), "correct horse battery".into()));
    let resp = browser.post(s.url("/oauth/login")).form(&login).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let back = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(back.starts_with("/oauth/authorize?"), "{back}");

    // With the cookie: the consent page, whose form carries a CSRF token.
    let html = browser.get(s.url(&back)).send().await.unwrap().text().await.unwrap();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let mut form = req.params();
    form.push(("decision".into(), "allow".into()));
    // A cross-site form post rides on the cookie but cannot know the token: refused.
    let resp = browser.post(s.url("/oauth/authorize")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
    form.push(("csrf".into(), "0".repeat(64)));
    assert_eq!(
        browser.post(s.url("/oauth/authorize")).form(&form).send().await.unwrap().status(),
        StatusCode::FORBIDDEN
    );
    form.pop();
    form.push(("csrf".into(), csrf));
    let resp = browser.post(s.url("/oauth/authorize")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let code = req.finish(resp.headers()["location"].to_str().unwrap()).unwrap();
    Client::new(s.app_config(&client_id)).exchange_code(&req, &code).await.unwrap();
}

#[tokio::test]
async fn revocation_endpoint_and_metadata() {
    let s = Server::start().await;
    let meta: Value =
        s.http.get(s.url("/.well-known/oauth-authorization-server")).send().await.unwrap().json().await.unwrap();
    assert_eq!(meta["issuer"], s.base.as_str());
    assert_eq!(meta["code_challenge_methods_supported"], json!(["S256"]));
    assert_eq!(meta["token_endpoint"], format!("{}/oauth/token", s.base));

    let ada = s.user("ada").await;
    let (client_id, tokens) = s.app_token(&ada, &["storage:read:notes"]).await;
    let access = tokens.access_token.clone();
    // Unknown tokens are "revoked" too (RFC 7009): nothing to learn from the answer.
    let resp = s
        .http
        .post(s.url("/oauth/revoke"))
        .form(&[("token", "sca_unknown"), ("client_id", &client_id)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // Another client cannot revoke this client's token.
    let resp = s
        .http
        .post(s.url("/oauth/revoke"))
        .form(&[("token", access.as_str()), ("client_id", "app_00000000000000000000000000000000")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(s.call(Method::GET, "/v1/storage/notes", Some(&access), None).await.0, StatusCode::OK);
    let refresh = tokens.refresh_token.clone().unwrap();
    let app = Client::with_tokens(s.app_config(&client_id), tokens);
    app.revoke().await.unwrap();
    // The app signed out: its tokens end, refresh included. The user's grant stays (they revoke
    // the app itself at /v1/grants), so signing in again needs no new consent.
    assert_eq!(s.call(Method::GET, "/v1/storage/notes", Some(&access), None).await.0, StatusCode::UNAUTHORIZED);
    let (_, body) =
        s.token_form(&[("grant_type", "refresh_token"), ("refresh_token", &refresh), ("client_id", &client_id)]).await;
    assert_eq!(body["error"], "invalid_grant");
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    assert_eq!(grants["grants"].as_array().unwrap().len(), 1, "{grants}");
    // scopes_supported comes from the scope grammar: one broadest scope of each kind.
    assert_eq!(meta["scopes_supported"].as_array().unwrap().len(), selfcloud_core::Scope::broadest().len());
}

#[tokio::test]
async fn self_storage_words_reach_the_apps_own_collections_only() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read", "storage:write", "ai:chat"]).await;
    let ns = selfcloud_core::scope::app_namespace(&client_id.parse().unwrap());
    let ada = s.user("ada").await;
    s.put_ok(&ada, "/v1/storage/diary/secret", json!("private")).await;
    let (client, tokens) = s.authorize(&ada, &client_id, &["storage:read", "storage:write"]).await;
    assert_eq!(tokens.scope, format!("storage:read:{ns}* storage:write:{ns}*"));
    let own = format!("{ns}-notes");
    client.storage().put(&own, "first", &json!({"text": "mine"})).await.unwrap();
    assert_eq!(client.storage().get(&own, "first").await.unwrap().unwrap().value["text"], "mine");
    for elsewhere in ["diary", "notes"] {
        let e = client.storage().get(elsewhere, "secret").await.unwrap_err();
        assert_eq!(e.status(), Some(403), "{elsewhere}: {e}");
        let e = client.storage().put(elsewhere, "x", &json!(1)).await.unwrap_err();
        assert_eq!(e.status(), Some(403), "{elsewhere}: {e}");
    }
    // Another app with broad prefixes reads the user's records, never this app's own.
    let broad = s.register_app(&dev, &["storage:read:ap*", "storage:write:*"]).await;
    let (other, _) = s.authorize(&ada, &broad, &["storage:read:ap*", "storage:write:*"]).await;
    assert_eq!(other.storage().get(&own, "first").await.unwrap_err().status(), Some(403));
    assert_eq!(other.storage().put(&own, "first", &json!("overwritten")).await.unwrap_err().status(), Some(403));
    other.storage().put("apples", "a", &json!(1)).await.unwrap();
    // No app may register, or ask for, another app's namespace.
    let theft = format!("storage:read:{ns}*");
    let body = json!({"name": "Thief", "redirect_uris": [REDIRECT], "scopes": [theft]});
    let (status, _, answer) = s.call(Method::POST, "/v1/apps", Some(&dev), Some(body)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
    let (status, _, answer) = s
        .call(
            Method::POST,
            "/v1/apps",
            Some(&dev),
            Some(json!({"name": "Any", "redirect_uris": [REDIRECT], "scopes": ["storage:read:app-*"]})),
        )
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{answer}");
}

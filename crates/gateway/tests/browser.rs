//! The browser's side of OAuth, attacked the way a loopback app or another site would: the web
//! session cookie must never open the API, must not reach an app's callback, and the log-in and
//! consent forms must come from this server's own pages.

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use selfcloud_sdk::AuthorizationRequest;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A loopback "app" that answers every request with 200 and keeps the `Cookie` headers it got.
async fn app_server() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else { return };
            let keep = keep.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 16 * 1024];
                let n = stream.read(&mut buf).await.unwrap_or(0);
                let head = String::from_utf8_lossy(&buf[..n]).into_owned();
                for line in head.lines() {
                    if let Some(v) = line.strip_prefix("cookie: ").or_else(|| line.strip_prefix("Cookie: ")) {
                        keep.lock().unwrap().push(v.to_owned());
                    }
                }
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok").await;
            });
        }
    });
    (port, seen)
}

fn browser() -> reqwest::Client {
    reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// The log-in form for `req` as `browser` got it (its token), filled in with Ada's credentials.
async fn login_form(s: &Server, browser: &reqwest::Client, req: &AuthorizationRequest) -> Vec<(String, String)> {
    let mut form = req.params();
    form.push(("csrf".into(), s.form_token(browser, req.url().as_str()).await));
    form.push(("username".into(), "ada".into()));
    form.push(("password".into(), "correct horse battery".into()));
    form
}

/// Logs the browser in through the log-in form; returns the consent page's URL.
async fn log_in(s: &Server, browser: &reqwest::Client, req: &AuthorizationRequest) -> String {
    let resp = browser.post(s.url("/oauth/login")).form(&login_form(s, browser, req).await).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("selfcloud_web=scw_"), "{cookie}");
    for part in ["Path=/oauth", "HttpOnly", "SameSite=Lax", "Max-Age=900"] {
        assert!(cookie.contains(part), "{cookie} lacks {part}");
    }
    s.url(resp.headers()["location"].to_str().unwrap())
}

fn csrf_of(html: &str) -> String {
    html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned()
}

#[tokio::test]
async fn a_loopback_app_never_receives_a_credential_that_opens_the_api() {
    let s = Server::start().await;
    let (port, seen) = app_server().await;
    let dev = s.user("developer").await;
    let redirect = format!("http://127.0.0.1:{port}/cb");
    let body = json!({"name": "Sly", "redirect_uris": [redirect], "scopes": ["storage:read:notes"]});
    let (_, _, app) = s.call(Method::POST, "/v1/apps", Some(&dev), Some(body)).await;
    let client_id = app["client_id"].as_str().unwrap().to_owned();
    let ada = s.user("ada").await;
    s.put_ok(&ada, "/v1/storage/diary/secret", json!("private")).await;

    // Ada consents in her browser, which then follows the redirect to the app's callback.
    let browser = browser();
    let config = selfcloud_sdk::AppConfig {
        base_url: s.base.parse().unwrap(),
        client_id: client_id.clone(),
        redirect_uri: redirect.clone(),
    };
    let req = AuthorizationRequest::new(&config, &["storage:read:notes"]);
    let consent = log_in(&s, &browser, &req).await;
    let html = browser.get(&consent).send().await.unwrap().text().await.unwrap();
    let mut form = req.params();
    form.push(("decision".into(), "allow".into()));
    form.push(("csrf".into(), csrf_of(&html)));
    let resp = browser.post(s.url("/oauth/authorize")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let callback = resp.headers()["location"].to_str().unwrap().to_owned();
    assert!(callback.starts_with(&redirect));
    assert_eq!(browser.get(&callback).send().await.unwrap().status(), StatusCode::OK);
    // Cookies are not kept apart by port, but this one is scoped to /oauth: none reached /cb.
    assert!(seen.lock().unwrap().iter().all(|c| !c.contains("selfcloud")), "{:?}", seen.lock().unwrap());

    // Even a web session in hand (an app whose page the browser visits under /oauth gets it)
    // opens no API: not as a cookie, not as a bearer token.
    let other = self::browser();
    let resp = other.post(s.url("/oauth/login")).form(&login_form(&s, &other, &req).await).send().await.unwrap();
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
    let web = set.split(';').next().unwrap().split_once('=').unwrap().1.to_owned();
    for path in ["/v1/grants", "/v1/me", "/v1/storage/diary/secret", "/v1/export", "/v1/audit"] {
        let by_cookie = s.http.get(s.url(path)).header("cookie", format!("selfcloud_web={web}")).send().await.unwrap();
        assert_eq!(by_cookie.status(), StatusCode::UNAUTHORIZED, "{path} by cookie");
        assert_eq!(s.call(Method::GET, path, Some(&web), None).await.0, StatusCode::UNAUTHORIZED, "{path} by bearer");
    }
    let register = json!({"name": "Evil", "redirect_uris": ["https://evil.example/cb"], "scopes": ["storage:read:*"]});
    assert_eq!(s.call(Method::POST, "/v1/apps", Some(&web), Some(register)).await.0, StatusCode::UNAUTHORIZED);
    // Nor is an API session a cookie.
    let by_cookie = s.http.get(s.url("/v1/grants")).header("cookie", format!("selfcloud_web={ada}")).send().await;
    assert_eq!(by_cookie.unwrap().status(), StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn the_web_session_is_short_lived_and_ends_with_a_password_change() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes"]).await;
    s.sign_up("ada").await;
    let req = AuthorizationRequest::new(&s.app_config(&client_id), &["storage:read:notes"]);
    let browser = browser();
    let consent = log_in(&s, &browser, &req).await;
    assert!(browser.get(&consent).send().await.unwrap().text().await.unwrap().contains("name=\"csrf\""));
    // Fifteen minutes on, the cookie is dead: the log-in page again.
    s.clock.advance(901);
    let html = browser.get(&consent).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("action=\"/oauth/login\""), "{html}");
    // A new one dies with a password change.
    let consent = log_in(&s, &browser, &req).await;
    let t = s.log_in("ada").await;
    let change = json!({"password": "correct horse battery", "new_password": "a brand new one"});
    assert_eq!(s.call(Method::PUT, "/v1/accounts/me/password", Some(&t), Some(change)).await.0, StatusCode::OK);
    let html = browser.get(&consent).send().await.unwrap().text().await.unwrap();
    assert!(html.contains("action=\"/oauth/login\""), "{html}");
}

#[tokio::test]
async fn log_in_and_consent_forms_from_another_site_are_refused() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes"]).await;
    s.sign_up("ada").await;
    let req = AuthorizationRequest::new(&s.app_config(&client_id), &["storage:read:notes"]);
    let host = s.base.trim_start_matches("http://").to_owned();
    // Login CSRF: another site (or an app's page on another port) posts the attacker's
    // credentials into the victim's browser. Refused whatever the credentials.
    for (name, value) in [
        ("sec-fetch-site", "cross-site".to_owned()),
        ("sec-fetch-site", "same-site".to_owned()),
        ("origin", "https://evil.example".to_owned()),
        ("origin", "http://127.0.0.1:9".to_owned()),
        ("origin", "null".to_owned()),
    ] {
        // The form's own token, too: only where it was posted from is wrong.
        let b = browser();
        let login = login_form(&s, &b, &req).await;
        let resp = b.post(s.url("/oauth/login")).header(name, &value).form(&login).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{name}: {value}");
        assert!(resp.headers().get("set-cookie").is_none());
        let body: Value = resp.json().await.unwrap();
        assert_eq!(Server::error_code(&body), "forbidden");
    }
    // From our own page it works.
    let b = browser();
    let login = login_form(&s, &b, &req).await;
    let resp = b
        .post(s.url("/oauth/login"))
        .header("sec-fetch-site", "same-origin")
        .header("origin", format!("http://{host}"))
        .form(&login)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    // The consent form too: even with the right CSRF token, a post from another site is refused.
    let consent = s.url(resp.headers()["location"].to_str().unwrap());
    let csrf = csrf_of(&b.get(&consent).send().await.unwrap().text().await.unwrap());
    let mut form = req.params();
    form.push(("decision".into(), "allow".into()));
    form.push(("csrf".into(), csrf));
    let cross = b.post(s.url("/oauth/authorize")).header("sec-fetch-site", "cross-site").form(&form).send().await;
    assert_eq!(cross.unwrap().status(), StatusCode::FORBIDDEN);
    let own = b.post(s.url("/oauth/authorize")).header("sec-fetch-site", "same-origin").form(&form).send().await;
    assert_eq!(own.unwrap().status(), StatusCode::FOUND);
}

#[tokio::test]
async fn malformed_oauth_requests_get_a_page_or_a_json_error_not_plain_text() {
    let s = Server::start().await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes"]).await;
    // A repeated parameter cannot be read as one request: an error page.
    let resp = s.http.get(s.url(&format!("/oauth/authorize?client_id={client_id}&state=a&state=b"))).send().await;
    let resp = resp.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    // Forms that are not forms: the contract's JSON error.
    for path in ["/oauth/authorize", "/oauth/login"] {
        let resp = s.http.post(s.url(path)).header("content-type", "application/json").body("{}").send().await;
        let resp = resp.unwrap();
        assert_eq!(resp.status(), StatusCode::BAD_REQUEST, "{path}");
        let body: Value = resp.json().await.unwrap();
        assert_eq!(Server::error_code(&body), "invalid_request", "{path}");
    }
    // The token and revoke endpoints answer in RFC 6749's shape.
    for path in ["/oauth/token", "/oauth/revoke"] {
        let resp = s.http.post(s.url(path)).header("content-type", "application/json").body("{}").send().await;
        let body: Value = resp.unwrap().json().await.unwrap();
        assert_eq!(body["error"], "invalid_request", "{path}: {body}");
    }
}

/// Notes, the example app, attacked as any OAuth client is: a callback handed to another
/// browser connects nothing there, and its forms want the visitor's own token.
#[tokio::test]
async fn the_example_app_finishes_a_connection_only_where_it_started() {
    let s = Server::start().await;
    let (notes, _) = s.notes_app().await;
    let mallory = s.user("mallory").await;
    // Mallory starts a connection in her browser and allows it with her account...
    let attacker = browser();
    let resp = attacker.get(format!("{notes}/connect")).send().await.unwrap();
    let authorize = url::Url::parse(resp.headers()["location"].to_str().unwrap()).unwrap();
    let mut form: Vec<(String, String)> = authorize.query_pairs().into_owned().collect();
    form.push(("decision".into(), "allow".into()));
    let resp = s.http.post(s.url("/oauth/authorize")).bearer_auth(&mallory).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::FOUND);
    let callback = resp.headers()["location"].to_str().unwrap().to_owned();
    // ... and hands the callback to Ada: in Ada's browser it connects nothing.
    let ada = browser();
    let resp = ada.get(&callback).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(resp.headers().get("set-cookie").is_none());
    assert!(ada.get(&notes).send().await.unwrap().text().await.unwrap().contains("Connect your selfcloud"));
    // In the browser that started it, it does.
    assert_eq!(attacker.get(&callback).send().await.unwrap().status(), StatusCode::SEE_OTHER);
    let home = attacker.get(&notes).send().await.unwrap().text().await.unwrap();
    let csrf = home.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    // Its forms want the visitor's token: a wrong one saves nothing, the right one does.
    let forged = attacker.post(format!("{notes}/notes")).form(&[("text", "forged"), ("csrf", "x")]).send().await;
    assert_eq!(forged.unwrap().status(), StatusCode::FORBIDDEN);
    let forged = attacker.post(format!("{notes}/summarize")).form(&[("csrf", "x")]).send().await;
    assert_eq!(forged.unwrap().status(), StatusCode::FORBIDDEN);
    let mine = attacker.post(format!("{notes}/notes")).form(&[("text", "mine"), ("csrf", &csrf)]).send().await;
    assert_eq!(mine.unwrap().status(), StatusCode::SEE_OTHER);
    let (_, _, stored) = s.call(Method::GET, "/v1/storage/notes", Some(&mallory), None).await;
    let texts: Vec<_> = stored["records"].as_array().unwrap().iter().map(|r| r["value"]["text"].clone()).collect();
    assert_eq!(texts, vec![json!("mine")]);
}

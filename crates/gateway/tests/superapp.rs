//! The Super-App's forms over plain HTTP, every one of them: each wants its session's CSRF token
//! (once), from this origin; without, it changes nothing and answers a page, never a bare
//! framework error. Fast, with no browser: `chromium.rs` drives the same pages in one.

mod common;

use common::Server;
use reqwest::{Method, StatusCode};
use serde_json::json;

/// A browser (cookies kept, redirects not followed) logged in through the log-in form.
async fn logged_in(s: &Server, user: &str) -> (reqwest::Client, String, String) {
    s.sign_up(user).await;
    let browser =
        reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let token = s.form_token(&browser, &s.url("/login")).await;
    let form = [("username", user), ("password", "correct horse battery"), ("next", "/me"), ("csrf", &token)];
    let resp = browser.post(s.url("/login")).form(&form).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()["set-cookie"].to_str().unwrap().split(';').next().unwrap().to_owned();
    let page = browser.get(s.url("/me")).send().await.unwrap().text().await.unwrap();
    let csrf = page.split("name=\"csrf-token\" content=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    (browser, csrf, cookie)
}

#[tokio::test]
async fn every_dashboard_form_wants_its_token_from_this_origin() {
    let s = Server::start().await;
    let (browser, csrf, cookie) = logged_in(&s, "ada").await;
    let (_, mallory_csrf, _) = logged_in(&s, "mallory").await;
    let ada = s.log_in("ada").await;
    s.app_token(&ada, &["storage:read:notes"]).await;
    let (_, _, grants) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let grant_id = grants["grants"][0]["id"].as_str().unwrap().to_owned();
    let forms: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/me/saved".into(), vec![("saved", "yes")]),
        (format!("/me/apps/{grant_id}/budget"), vec![("token_budget", "5")]),
        ("/me/assistant/memories".into(), vec![("text", "remember me")]),
        ("/me/assistant/settings".into(), vec![("collections", "notes")]),
        (
            "/me/account/password".into(),
            vec![("password", "correct horse battery"), ("new_password", "another long one")],
        ),
        ("/me/account/export".into(), vec![]),
        ("/me/account/delete".into(), vec![("password", "correct horse battery"), ("confirm", "yes")]),
        (format!("/me/apps/{grant_id}/revoke"), vec![]),
        ("/me/logout".into(), vec![]),
    ];
    for (path, fields) in &forms {
        type Attempt<'a> = (&'a str, Vec<(&'a str, &'a str)>, Option<&'a str>);
        let attempts: [Attempt; 5] = [
            ("no token", fields.clone(), None),
            ("a wrong token", [fields.clone(), vec![("csrf", "0000")]].concat(), None),
            ("another session's token", [fields.clone(), vec![("csrf", mallory_csrf.as_str())]].concat(), None),
            (
                "the token twice",
                [fields.clone(), vec![("csrf", csrf.as_str()), ("csrf", csrf.as_str())]].concat(),
                None,
            ),
            ("another origin", [fields.clone(), vec![("csrf", csrf.as_str())]].concat(), Some("http://evil.example")),
        ];
        for (what, form, origin) in attempts {
            let mut req = browser.post(s.url(path)).form(&form);
            if let Some(o) = origin {
                req = req.header("origin", o);
            }
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path} with {what}");
            assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"), "{path}: a page");
        }
    }
    // Nothing changed: the grant, the memories, the settings, the password, the account.
    let (_, _, after) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    assert_eq!(after["grants"][0]["token_budget"], json!(null));
    let (_, _, memories) = s.call(Method::GET, "/v1/assistant/memories", Some(&ada), None).await;
    assert_eq!(memories, json!({"memories": []}));
    s.log_in("ada").await;
    // The script's endpoints want the token in their header, which no other origin can set.
    for (path, body) in [("/me/assistant/stream", "{\"message\":\"hi\"}"), ("/me/account/import", "")] {
        let resp =
            browser.post(s.url(path)).header("content-type", "application/json").body(body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path}");
        let resp = browser.post(s.url(path)).header("x-csrf-token", &mallory_csrf).body(body).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::FORBIDDEN, "{path} with another session's token");
    }
    // With its token, from this origin, a form does its work; a form that is not one is a page.
    let resp = browser
        .post(s.url("/me/assistant/memories"))
        .form(&[("text", "remember me"), ("csrf", &csrf)])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let (_, _, memories) = s.call(Method::GET, "/v1/assistant/memories", Some(&ada), None).await;
    assert_eq!(memories["memories"][0]["text"], "remember me");
    // An export from the page is a download, and the access log has it, as it has the API's.
    let resp = browser.post(s.url("/me/account/export")).form(&[("csrf", &csrf)]).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(!resp.bytes().await.unwrap().is_empty());
    let (_, _, log) = s.call(Method::GET, "/v1/audit", Some(&ada), None).await;
    let exports = log["entries"].as_array().unwrap().iter().filter(|e| e["path"] == "/v1/export").count();
    assert_eq!(exports, 1, "{log}");
    let resp = browser.post(s.url("/me/assistant/memories")).json(&json!({"text": "x"})).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    // The web session opens no API route; an API session opens no page.
    assert!(cookie.starts_with("selfcloud_web=scw_"), "{cookie}");
    let cookie_api = s.http.get(s.url("/v1/me")).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(cookie_api.status(), StatusCode::UNAUTHORIZED);
    let token = cookie.split_once('=').unwrap().1;
    assert_eq!(s.call(Method::GET, "/v1/me", Some(token), None).await.0, StatusCode::UNAUTHORIZED, "nor as a bearer");
    let bearer_page = s.http.get(s.url("/me")).bearer_auth(&ada).send().await.unwrap();
    assert_eq!(bearer_page.status(), StatusCode::SEE_OTHER, "to the log-in page");
}

/// The forms before a session (sign up, log in, recover, the consent flow's log-in) want the
/// token of the page this browser opened, from this origin: without it, with a wrong one, with
/// another browser's, or from another origin, nothing happens (login CSRF).
#[tokio::test]
async fn forms_before_a_session_want_the_token_of_their_page() {
    let s = Server::start().await;
    s.sign_up("ada").await;
    let dev = s.user("developer").await;
    let client_id = s.register_app(&dev, &["storage:read:notes"]).await;
    let req = selfcloud_sdk::AuthorizationRequest::new(&s.app_config(&client_id), &["storage:read:notes"]);
    let browser =
        || reqwest::Client::builder().cookie_store(true).redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let pw = "correct horse battery";
    let pairs = |p: &[(&str, &str)]| p.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
    let oauth_login = [req.params(), pairs(&[("username", "ada"), ("password", pw)])].concat();
    let forms = [
        (s.url("/signup"), "/signup", pairs(&[("username", "eve"), ("password", pw), ("password_again", pw)])),
        (s.url("/login"), "/login", pairs(&[("username", "ada"), ("password", pw)])),
        (s.url("/recover"), "/recover", pairs(&[("username", "ada"), ("recovery_code", "x"), ("new_password", pw)])),
        (req.url().to_string(), "/oauth/login", oauth_login),
    ];
    for (page, action, fields) in forms {
        let (mine, theirs) = (browser(), browser());
        let token = s.form_token(&mine, &page).await;
        let other = s.form_token(&theirs, &page).await;
        assert_ne!(token, other, "each browser has its own");
        let with = |t: &str| [fields.clone(), pairs(&[("csrf", t)])].concat();
        let attempts = [
            ("no token", &mine, fields.clone(), None),
            ("a wrong token", &mine, with("0000"), None),
            ("another browser's token", &mine, with(&other), None),
            ("the token twice", &mine, [with(&token), pairs(&[("csrf", &token)])].concat(), None),
            ("its token from another origin", &mine, with(&token), Some("http://evil.example")),
            ("its token without its cookie", &s.http, with(&token), None),
        ];
        for (what, client, form, origin) in attempts {
            let mut post = client.post(s.url(action)).form(&form);
            if let Some(origin) = origin {
                post = post.header("origin", origin);
            }
            let resp = post.send().await.unwrap();
            assert!(
                [StatusCode::FORBIDDEN, StatusCode::BAD_REQUEST].contains(&resp.status()),
                "{action}, {what}: {}",
                resp.status()
            );
            let cookies: Vec<_> = resp.headers().get_all("set-cookie").iter().collect();
            assert!(cookies.iter().all(|c| !c.to_str().unwrap().contains("selfcloud_web=scw_")), "{action}, {what}");
        }
        // From this origin without its token, the form comes back, ready to send again.
        let page = mine.post(s.url(action)).form(&fields).send().await.unwrap().text().await.unwrap();
        assert!(page.contains("It is ready again") && page.contains("name=\"csrf\""), "{action}: {page}");
    }
    // A form cookie this server did not make (planted, garbled, the right length but not hex) is
    // replaced, not trusted.
    for planted in ["x".to_owned(), "0000".to_owned(), "z".repeat(64)] {
        let resp =
            s.http.get(s.url("/login")).header("cookie", format!("selfcloud_form={planted}")).send().await.unwrap();
        let set = resp.headers().get("set-cookie").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        let value = set.strip_prefix("selfcloud_form=").and_then(|v| v.split(';').next()).unwrap_or_default();
        assert!(value.len() == 64 && value != planted.as_str(), "{planted:?}: {set}");
    }
    // So a log-in left open across a browser restart (its form cookie gone) goes on the second try.
    let restarted = browser();
    let login = pairs(&[("username", "ada"), ("password", pw)]);
    let page = restarted.post(s.url("/login")).form(&login).send().await.unwrap().text().await.unwrap();
    let fresh = page.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap();
    let again = restarted.post(s.url("/login")).form(&[login, pairs(&[("csrf", fresh)])].concat()).send().await;
    assert_eq!(again.unwrap().status(), StatusCode::SEE_OTHER);
    // Nothing happened: no account made, Ada's password unchanged.
    let eve = json!({"username": "eve", "password": pw});
    assert_eq!(s.call(Method::POST, "/v1/sessions", None, Some(eve)).await.0, StatusCode::UNAUTHORIZED);
    s.log_in("ada").await;
}

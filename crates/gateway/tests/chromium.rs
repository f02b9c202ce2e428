//! The Super-App and the example app in a real browser (headless Chromium through chromedriver):
//! a person signs up, saves the recovery code, connects the Notes app and unticks a scope, sees
//! the app refused that scope, chats with the assistant as its answer streams, revokes the app
//! and sees its next call refused. Then the attacks a browser makes possible: a cross-site
//! consent post, framing, open redirects, script through an app's name or a stored value.
//!
//! A screenshot of each page is kept (`<target>/screenshots/`). `./selfcloud test` installs
//! Chromium and its driver and sets `SELFCLOUD_TEST_CHROMEDRIVER`; without it this suite is
//! skipped, unless `SELFCLOUD_TEST_REQUIRE_MODEL` says every part must run.

mod common;

use common::{test_model, with_model, Server};
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use reqwest::{Method, StatusCode};
use serde_json::json;
use std::path::PathBuf;
use std::time::Duration;

const DRIVER_ENV: &str = "SELFCLOUD_TEST_CHROMEDRIVER";
const PASSWORD: &str = "correct horse battery";

/// chromedriver on a free loopback port, with one headless Chromium session; both end with it.
struct Chromium {
    browser: Browser,
    driver: std::process::Child,
    shots: PathBuf,
    prefix: &'static str,
    taken: std::sync::atomic::AtomicUsize,
    /// The browser's profile, removed with it.
    _profile: tempfile::TempDir,
}

impl Chromium {
    async fn start(prefix: &'static str) -> Option<Chromium> {
        let Some(driver_path) = std::env::var_os(DRIVER_ENV) else {
            assert!(std::env::var_os("SELFCLOUD_TEST_REQUIRE_MODEL").is_none(), "{DRIVER_ENV} is not set");
            eprintln!("skipped: no browser ({DRIVER_ENV} unset; `./selfcloud test` installs Chromium)");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let driver = std::process::Command::new(driver_path)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let mut caps = serde_json::Map::new();
        let args =
            ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1100,1000"];
        let profile = tempfile::tempdir().unwrap();
        let mut args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        args.push(format!("--user-data-dir={}", profile.path().display()));
        let mut options = json!({"args": args});
        if let Some(binary) = std::env::var_os("SELFCLOUD_TEST_CHROMIUM") {
            options["binary"] = json!(binary.to_string_lossy());
        }
        caps.insert("goog:chromeOptions".into(), options);
        let url = format!("http://127.0.0.1:{port}");
        let mut builder = ClientBuilder::new(hyper_util::client::legacy::connect::HttpConnector::new());
        builder.capabilities(caps);
        let mut browser = None;
        for _ in 0..100 {
            match builder.connect(&url).await {
                Ok(b) => {
                    browser = Some(b);
                    break;
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        let browser = browser.expect("chromedriver answers within 10 s");
        let exe = std::env::current_exe().unwrap();
        let target = exe.ancestors().nth(3).unwrap().to_owned(); // <target>/debug/deps/<test>
        let shots = target.join("screenshots");
        std::fs::create_dir_all(&shots).unwrap();
        for old in std::fs::read_dir(&shots).unwrap().flatten() {
            if old.file_name().to_string_lossy().starts_with(&format!("{prefix}-")) {
                let _ = std::fs::remove_file(old.path());
            }
        }
        Some(Chromium { browser, driver, shots, prefix, taken: Default::default(), _profile: profile })
    }

    async fn shot(&self, name: &str) {
        let png = self.browser.screenshot().await.unwrap();
        let n = self.taken.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        std::fs::write(self.shots.join(format!("{}-{n:02}-{name}.png", self.prefix)), png).unwrap();
    }

    /// The text of the first element `css` finds, waiting for it to appear; the page it was
    /// not on is kept (a screenshot) and shown.
    async fn text(&self, css: &str) -> String {
        self.text_with(css, "").await
    }

    /// The text of the first element `css` finds once it holds `needle`, waiting up to 20 s
    /// (through page loads: an element of the page being left goes stale, and is looked up again).
    async fn text_with(&self, css: &str, needle: &str) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let mut last = String::new();
        while std::time::Instant::now() < deadline {
            if let Ok(element) = self.browser.find(Locator::Css(css)).await {
                if let Ok(text) = element.text().await {
                    if text.contains(needle) {
                        return text;
                    }
                    last = text;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.shot("failed").await;
        let url = self.browser.current_url().await.unwrap();
        panic!("no {css} holding {needle:?} on {url} (last: {last:?}):\n{}", self.source().await)
    }

    async fn fill(&self, css: &str, value: &str) {
        let field = self.browser.find(Locator::Css(css)).await.unwrap();
        field.clear().await.unwrap();
        field.send_keys(value).await.unwrap();
    }

    async fn click(&self, css: &str) {
        self.browser.find(Locator::Css(css)).await.unwrap().click().await.unwrap();
    }

    async fn source(&self) -> String {
        self.browser.source().await.unwrap()
    }

    async fn path(&self) -> String {
        let url = self.browser.current_url().await.unwrap();
        format!("{}{}", url.path(), url.query().map(|q| format!("?{q}")).unwrap_or_default())
    }

    /// Waits up to 20 s until `script` answers true in the page.
    async fn until(&self, what: &str, script: &str) {
        for _ in 0..200 {
            if self.browser.execute(script, vec![]).await.is_ok_and(|v| v == json!(true)) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.shot("failed").await;
        panic!("waited 20 s for {what}:\n{}", self.source().await)
    }

    async fn pwned(&self) -> bool {
        self.browser.execute("return window.__pwned === 1;", vec![]).await.unwrap() == json!(true)
    }

    async fn end(mut self) {
        self.browser.close().await.unwrap();
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Signs Ada up through the pages; answers her recovery code.
async fn sign_up(c: &Chromium, s: &Server) -> String {
    c.browser.goto(&s.url("/")).await.unwrap();
    c.shot("landing").await;
    c.click("a[href='/signup']").await;
    c.fill("input[name=username]", "ada").await;
    c.fill("input[name=password]", PASSWORD).await;
    c.fill("input[name=password_again]", PASSWORD).await;
    c.shot("sign-up").await;
    c.click("button[type=submit]").await;
    let code = c.text("#recovery-code").await;
    c.shot("recovery-code").await;
    c.click("input[name=saved]").await;
    c.click("main button[type=submit]").await;
    assert_eq!(c.text("#instance-state").await, "ready");
    code
}

#[tokio::test]
async fn a_person_signs_up_connects_an_app_chats_and_revokes_it() {
    let Some(model) = test_model() else { return };
    let Some(c) = Chromium::start("flow").await else { return };
    let s = Server::start_with(|config| with_model(config, &model, 1, 4)).await;
    let (notes, notes_id) = s.notes_app().await;
    let code = sign_up(&c, &s).await;
    assert!(code.len() >= 20, "{code}");
    c.shot("dashboard").await;

    // Notes asks; the consent page says what each scope allows, in plain words.
    c.browser.goto(&format!("{notes}/")).await.unwrap();
    c.shot("notes-connect").await;
    c.click("#connect").await;
    c.text_with("h1", "Allow").await;
    let consent = c.source().await;
    assert!(c.path().await.starts_with("/oauth/authorize"), "{}", c.path().await);
    for words in
        ["Read your \u{201c}notes\u{201d} records", "Create, change and delete your \u{201c}notes\u{201d} records"]
    {
        assert!(consent.contains(words), "the consent page lacks {words:?}");
    }
    assert!(consent.contains("Chat with your private assistant, up to 20,000 tokens a day"), "{consent}");
    c.shot("consent").await;
    // Ada lets Notes keep notes, but not use her assistant.
    c.click("input[name=grant_scope][value='llm:chat']").await;
    let days = c.browser.find(Locator::Css("select[name=expires_in_days]")).await.unwrap();
    days.select_by_value("30").await.unwrap();
    c.click("button[value=allow]").await;
    c.text("#notes").await;
    c.fill("input[name=text]", "Buy oat milk and call the plumber on Friday").await;
    c.click("form[action='/notes'] button").await;
    c.text_with("#notes", "oat milk").await;
    c.shot("notes-app").await;
    c.click("#summarize").await;
    let refused = c.text("#error").await;
    assert!(refused.contains("refused") && refused.contains("llm:chat"), "{refused}");
    c.shot("notes-refused-a-scope").await;

    // The assistant answers from her notes, streaming into the page (no page load between).
    c.browser.goto(&s.url("/me/assistant")).await.unwrap();
    c.browser.execute("window.__samePage = 1;", vec![]).await.unwrap();
    c.fill("textarea[name=message]", "What must I buy?").await;
    c.click("#ask button").await;
    c.browser
        .wait()
        .at_most(Duration::from_secs(120))
        .for_element(Locator::Css(".turn.assistant[data-finish]"))
        .await
        .unwrap();
    let answer = c.text(".turn.assistant").await;
    assert!(!answer.trim().is_empty());
    assert_eq!(
        c.browser.execute("return window.__samePage;", vec![]).await.unwrap(),
        json!(1),
        "the answer came without a page load"
    );
    assert!(c.text(".sources").await.contains("notes/"), "the answer names the note it read");
    c.shot("assistant").await;

    // The dashboard lists Notes with what it may do; Ada revokes it.
    c.browser.goto(&s.url("/me")).await.unwrap();
    let dashboard = c.text("article.app").await;
    assert!(dashboard.contains("Notes") && dashboard.contains("Last used"), "{dashboard}");
    assert!(dashboard.contains(", until 20"), "the grant lasts the 30 days chosen: {dashboard}");
    assert!(!dashboard.contains("Chat with your private assistant"), "the unticked scope was not granted: {dashboard}");
    c.shot("dashboard-apps").await;
    c.click("article.app button.danger").await;
    c.text_with("main", "No app can reach your instance").await;
    c.browser.goto(&format!("{notes}/")).await.unwrap();
    let after = c.text("#error").await;
    assert!(after.contains("no longer lets Notes in"), "{after}");
    c.shot("notes-after-revoke").await;

    // The access log shows each of it, and filters.
    c.browser.goto(&s.url(&format!("/me/log?who={notes_id}&outcome=refused"))).await.unwrap();
    let log = c.text("#log").await;
    assert!(log.contains("POST /v1/llm/chat/completions") && log.contains("403"), "{log}");
    assert!(!log.contains("PUT /v1/storage/notes"), "the filter keeps refusals only: {log}");
    c.shot("access-log").await;
    c.browser.goto(&s.url("/me/account")).await.unwrap();
    c.shot("account").await;
    c.end().await;
    s.stop().await;
}

/// A page on another loopback port: what an attacker's site serves.
async fn attacker_site(html: String) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new().route("/", axum::routing::get(move || async move { axum::response::Html(html) }));
    tokio::spawn(async move { axum::serve(listener, app).await });
    base
}

fn escape_attr(s: &str) -> String {
    s.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;")
}

#[tokio::test]
async fn a_browser_cannot_be_turned_against_its_owner() {
    let Some(c) = Chromium::start("attack").await else { return };
    let s = Server::start().await;
    sign_up(&c, &s).await;
    let ada = s.log_in("ada").await;
    let dev = s.user("mallory").await;
    let evil = "<img src=x onerror=\"window.__pwned=1\"><script>window.__pwned=1</script>";
    let body =
        json!({"name": format!("Evil {evil}"), "redirect_uris": [common::REDIRECT], "scopes": ["storage:read:notes"]});
    let (status, _, app) = s.call(Method::POST, "/v1/apps", Some(&dev), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let client_id = app["client_id"].as_str().unwrap().to_owned();
    let req = selfcloud_sdk::AuthorizationRequest::new(&s.app_config(&client_id), &["storage:read:notes"]);

    // Script through an app's name, on the consent page and the dashboard: shown, never run.
    c.browser.goto(&format!("{}/oauth/authorize?{}", s.base, req.url().query().unwrap())).await.unwrap();
    assert!(c.text("h1").await.contains("<script>"), "the name shows as text");
    assert!(!c.pwned().await);
    c.shot("consent-with-a-hostile-name").await;
    s.authorize(&ada, &client_id, &["storage:read:notes"]).await;
    // ... and through a stored value the dashboard shows (a memory).
    let (st, _, _) = s.call(Method::POST, "/v1/assistant/memories", Some(&ada), Some(json!({"text": evil}))).await;
    assert_eq!(st, StatusCode::CREATED);
    c.browser.goto(&s.url("/me")).await.unwrap();
    assert!(c.text("article.app h3").await.contains("<img"));
    c.browser.goto(&s.url("/me/assistant")).await.unwrap();
    assert!(c.text("ul.memories").await.contains("<script>"));
    assert!(!c.pwned().await, "no script ran");
    c.shot("dashboard-with-hostile-values").await;

    // A cross-site form post of the consent (no CSRF token): refused, no grant gained.
    let params: Vec<(String, String)> = req.params();
    let fields: String = params
        .iter()
        .chain(&[("decision".to_owned(), "allow".to_owned())])
        .map(|(k, v)| format!("<input type=\"hidden\" name=\"{}\" value=\"{}\">", escape_attr(k), escape_attr(v)))
        .collect();
    let (_, _, before) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    let post = attacker_site(format!(
        "<form id=f method=post action=\"{}/oauth/authorize\">{fields}</form><script>document.getElementById('f').submit()</script>",
        s.base
    ))
    .await;
    c.browser.goto(&post).await.unwrap();
    let answer = c.text_with("body", "forbidden").await;
    assert!(answer.contains("own pages"), "{answer}");
    let (_, _, after) = s.call(Method::GET, "/v1/grants", Some(&ada), None).await;
    assert_eq!(before, after, "the cross-site post changed nothing");
    c.shot("cross-site-consent-refused").await;

    // The consent page in another site's frame: the browser refuses to show it. Looked at once
    // the frame has loaded (a refused frame loads the browser's error page).
    let framing = attacker_site(format!(
        "<h1>Win a prize</h1><iframe id=x width=600 height=400 onload=\"window.__framed=1\" \
         src=\"{}/oauth/authorize?{}\"></iframe>",
        s.base,
        escape_attr(req.url().query().unwrap())
    ))
    .await;
    c.browser.goto(&framing).await.unwrap();
    c.until("the frame to load", "return window.__framed === 1;").await;
    c.shot("framing-refused").await;
    c.browser.enter_frame(0).await.unwrap();
    let framed = c.source().await;
    assert!(!framed.contains("decision"), "the consent form rendered inside another site's frame");
    c.browser.enter_parent_frame().await.unwrap();

    // Open redirects: a log-in's `next` and an unregistered `redirect_uri` stay on this origin.
    for next in ["https://evil.example/", "//evil.example/x", "/\\evil.example"] {
        let q = serde_urlencoded::to_string([("next", next)]).unwrap();
        c.browser.goto(&s.url(&format!("/login?{q}"))).await.unwrap();
        c.fill("input[name=username]", "ada").await;
        c.fill("input[name=password]", PASSWORD).await;
        c.click("main button[type=submit]").await;
        c.text("#instance-state").await;
        let url = c.browser.current_url().await.unwrap();
        assert_eq!((url.host_str(), url.path()), (Some("127.0.0.1"), "/me"), "{next} led to {url}");
    }
    let mut bad = req.url();
    let pairs: Vec<(String, String)> = bad
        .query_pairs()
        .map(|(k, v)| {
            let v = if k == "redirect_uri" { "https://evil.example/cb".into() } else { v.into_owned() };
            (k.into_owned(), v)
        })
        .collect();
    bad.query_pairs_mut().clear().extend_pairs(pairs);
    c.browser.goto(&format!("{}/oauth/authorize?{}", s.base, bad.query().unwrap())).await.unwrap();
    assert!(c.text("p.error").await.contains("not registered"));
    assert_eq!(c.browser.current_url().await.unwrap().port(), url::Url::parse(&s.base).unwrap().port());
    c.shot("open-redirect-refused").await;
    c.end().await;
    s.stop().await;
}

/// An app that runs in the browser alone (a single-page app on its own origin), on the
/// TypeScript SDK as built (`SELFCLOUD_TEST_TS_SDK`, set by `./selfcloud test`).
async fn spa(sdk: PathBuf, base: &str) -> (tokio::net::TcpListener, String, impl FnOnce(String) -> axum::Router) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let origin = format!("http://{}", listener.local_addr().unwrap());
    let base = base.to_owned();
    let router = move |app_id: String| {
        use axum::response::IntoResponse;
        let page = "<!doctype html><meta charset=utf-8><title>SPA</title><button id=connect>Connect</button>\
                    <p id=result></p><script type=module src=/app.js></script>";
        let script = format!(
            r#"import {{ App }} from "/sdk.js";
const app = new App({{ appId: "{app_id}", server: "{base}", redirectUrl: location.origin + "/callback" }});
document.getElementById("connect").onclick = async () => {{
  location.href = await app.createConnectionUrl({{ permissions: ["storage:read", "storage:write"] }});
}};
if (location.pathname === "/callback") {{
  const out = document.getElementById("result");
  try {{
    const session = await app.handleCallback(location.href);
    await session.storage.set("from-the-browser", {{ ok: true }});
    out.textContent = "stored " + JSON.stringify(await session.storage.get("from-the-browser"));
  }} catch (e) {{ out.textContent = "error " + e.code + ": " + e.message; }}
}}"#
        );
        let js = |body: String| ([(axum::http::header::CONTENT_TYPE, "text/javascript")], body).into_response();
        let sdk = std::fs::read_to_string(sdk).unwrap();
        axum::Router::new()
            .route("/", axum::routing::get(move || async move { axum::response::Html(page) }))
            .route("/callback", axum::routing::get(move || async move { axum::response::Html(page) }))
            .route("/app.js", axum::routing::get(move || async move { js(script) }))
            .route("/sdk.js", axum::routing::get(move || async move { js(sdk) }))
    };
    (listener, origin, router)
}

#[tokio::test]
async fn an_app_in_the_browser_connects_with_the_typescript_sdk() {
    let Some(sdk) = std::env::var_os("SELFCLOUD_TEST_TS_SDK").map(PathBuf::from) else {
        assert!(std::env::var_os("SELFCLOUD_TEST_REQUIRE_MODEL").is_none(), "SELFCLOUD_TEST_TS_SDK is not set");
        eprintln!("skipped: the TypeScript SDK is not built (`./selfcloud test` builds it)");
        return;
    };
    let Some(c) = Chromium::start("spa").await else { return };
    let s = Server::start().await;
    let (listener, origin, router) = spa(sdk, &s.base).await;
    let dev = s.user("developer").await;
    let body = json!({"name": "Pocket", "redirect_uris": [format!("{origin}/callback")], "scopes": ["storage:read", "storage:write"]});
    let (status, _, app) = s.call(Method::POST, "/v1/apps", Some(&dev), Some(body)).await;
    assert_eq!(status, StatusCode::CREATED, "{app}");
    let app_id = app["client_id"].as_str().unwrap().to_owned();
    let routes = router(app_id.clone());
    tokio::spawn(async move { axum::serve(listener, routes).await });
    sign_up(&c, &s).await;

    // PKCE with WebCrypto, the pending request in sessionStorage, fetch across origins.
    c.browser.goto(&format!("{origin}/")).await.unwrap();
    c.click("#connect").await;
    assert!(c.text("h1").await.contains("Pocket"));
    c.shot("consent").await;
    c.click("button[value=allow]").await;
    let mut result = String::new();
    for _ in 0..200 {
        if c.path().await.starts_with("/callback") {
            result = c.text("#result").await;
            if !result.is_empty() {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(result, "stored {\"ok\":true}");
    c.shot("stored-from-the-browser").await;
    let ada = s.log_in("ada").await;
    let ns = selfcloud_core::scope::app_namespace(&app_id.parse().unwrap());
    let (status, _, value) = s.call(Method::GET, &format!("/v1/storage/{ns}/from-the-browser"), Some(&ada), None).await;
    assert_eq!((status, value), (StatusCode::OK, json!({"ok": true})));

    // Cross-origin reads are open to the bearer API only: never to the pages a cookie opens.
    let page = s.http.get(s.url("/me")).header("origin", &origin).send().await.unwrap();
    assert!(page.headers().get("access-control-allow-origin").is_none());
    let preflight = s
        .http
        .request(Method::OPTIONS, s.url("/v1/storage/notes/a"))
        .header("origin", &origin)
        .header("access-control-request-method", "PUT")
        .header("access-control-request-headers", "authorization,content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.headers()["access-control-allow-origin"], origin.as_str());
    c.end().await;
    s.stop().await;
}

/// Code that took over Ada's instance answers her dashboard's export with a page of its own
/// (inline script, a cookie in the web session's name): the browser shows a page of ours, runs
/// nothing and keeps the session it had.
#[cfg(feature = "attack-probes")]
#[tokio::test]
async fn a_hostile_instance_cannot_put_a_page_on_the_gateways_origin() {
    let Some(c) = Chromium::start("hostile").await else { return };
    let s = Server::start().await;
    sign_up(&c, &s).await;
    let session = c.browser.get_named_cookie("selfcloud_web").await.unwrap().value().to_owned();
    let ada = s.log_in("ada").await;
    let page = "<h1>Your export</h1><script>window.__pwned = 1</script>";
    let hostility = json!({"mode": "answer", "status": 500, "content_type": "text/html", "body": page});
    let outcome = s.probe(&ada, json!({"probe": "hostile", "hostility": hostility})).await;
    assert_eq!(outcome["got_through"], true, "{outcome}");
    c.browser.goto(&s.url("/me/account")).await.unwrap();
    c.click("form[action='/me/account/export'] button").await;
    c.text_with("h1", "That did not work").await;
    c.shot("hostile-export").await;
    assert!(!c.source().await.contains("Your export"), "the instance's page was shown");
    assert!(!c.pwned().await, "the instance's script ran on the gateway's origin");
    let after = c.browser.get_named_cookie("selfcloud_web").await.unwrap().value().to_owned();
    assert_eq!(after, session, "the instance set the web session's cookie");
    c.end().await;
}

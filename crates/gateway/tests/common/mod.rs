//! A real server on a loopback port, with a clock the test can move, and helpers that talk HTTP
//! to it the way users and apps do.
#![allow(dead_code)] // each test binary uses a different part of the harness

use reqwest::{Method, StatusCode};
use selfcloud_control::{Control, ControlConfig};
use selfcloud_core::config::{KdfParams, Limits};
use selfcloud_gateway::clock::OffsetClock;
use selfcloud_gateway::{GatewayConfig, Running};
use selfcloud_sdk::{AppConfig, AuthorizationRequest, Client, TokenSet};
use serde_json::{json, Value};
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

pub const REDIRECT: &str = "http://127.0.0.1:9/callback";

pub struct Server {
    pub base: String,
    pub home: tempfile::TempDir,
    pub clock: Arc<OffsetClock>,
    pub control: Arc<Control>,
    pub http: reqwest::Client,
    shutdown: CancellationToken,
    running: Option<Running>,
}

/// The environment variable that runs the suite against the `process` runtime: the path of the
/// `selfcloud` binary whose `instance run` serves each instance (`./selfcloud test` sets it for
/// its second pass).
pub const PROCESS_RUNTIME_ENV: &str = "SELFCLOUD_TEST_PROCESS_RUNTIME";

pub fn test_config(home: &std::path::Path) -> ControlConfig {
    let mut config = ControlConfig::new(home);
    config.kdf = KdfParams::INSECURE_FOR_TESTS;
    config.limits = Limits { rate_per_ip: 10_000, ..Limits::default() };
    if let Some(program) = std::env::var_os(PROCESS_RUNTIME_ENV) {
        let mut process = selfcloud_control::runtime::ProcessConfig::new(program.into());
        // The suite reads instances' files from the host (sealed values, spools, key files), so
        // their directories stay on the home's filesystem; disks of their own are attacked by
        // the real binary's suites (`selfcloud/tests/disk.rs`, `sandbox.rs`).
        process.disk_images = false;
        config.runtime = selfcloud_control::RuntimeConfig::Process(process);
    }
    config
}

impl Server {
    pub async fn start() -> Server {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(tweak: impl FnOnce(&mut ControlConfig)) -> Server {
        Self::start_configured(tweak, GatewayConfig::default()).await
    }

    /// [`Server::start_with`], with the gateway's own settings too.
    pub async fn start_configured(tweak: impl FnOnce(&mut ControlConfig), gateway: GatewayConfig) -> Server {
        let home = tempfile::tempdir().unwrap();
        let mut config = test_config(home.path());
        tweak(&mut config);
        let clock = Arc::new(OffsetClock::default());
        let now = selfcloud_gateway::clock::Clock::now(clock.as_ref());
        let control = Control::open(config, now).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let shutdown = CancellationToken::new();
        let running = selfcloud_gateway::serve(listener, control.clone(), clock.clone(), gateway, shutdown.clone())
            .await
            .unwrap();
        let base = format!("http://{}", running.addr);
        let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
        Server { base, home, clock, control, http, shutdown, running: Some(running) }
    }

    /// Stops cleanly (requests drained, audit written); the home directory is handed back.
    pub async fn stop(mut self) -> tempfile::TempDir {
        self.shutdown.cancel();
        self.running.take().unwrap().wait().await.unwrap();
        self.home
    }

    /// The operator's token (in the home directory, as `up` writes it).
    pub fn operator_token(&self) -> String {
        std::fs::read_to_string(self.home.path().join(selfcloud_control::OPERATOR_TOKEN_FILE))
            .unwrap()
            .trim()
            .to_owned()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// What a browser (`browser`, keeping cookies) gets opening `page`: the token of its form
    /// (the `csrf` field; before a session, tied to the form cookie the page sets).
    #[allow(dead_code)]
    pub async fn form_token(&self, browser: &reqwest::Client, page: &str) -> String {
        let html = browser.get(page).send().await.unwrap().text().await.unwrap();
        let Some(rest) = html.split("name=\"csrf\" value=\"").nth(1) else {
            panic!("no form token on {page}:\n{html}")
        };
        rest.split('"').next().unwrap().to_owned()
    }

    /// Sends a request; returns status, headers and the body as JSON (Null if empty or not JSON).
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, reqwest::header::HeaderMap, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let (status, headers) = (resp.status(), resp.headers().clone());
        let text = resp.text().await.unwrap();
        (status, headers, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// A setup write that must succeed (a test whose setup silently failed proves nothing).
    pub async fn put_ok(&self, token: &str, path: &str, body: Value) {
        let (status, _, answer) = self.call(Method::PUT, path, Some(token), Some(body)).await;
        assert_eq!(status, StatusCode::OK, "setup write {path}: {answer}");
    }

    pub async fn sign_up(&self, username: &str) -> Value {
        let (status, _, body) = self
            .call(
                Method::POST,
                "/v1/accounts",
                None,
                Some(json!({"username": username, "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body
    }

    /// A session of `username` with `password`.
    pub async fn log_in_as(&self, username: &str, password: &str) -> String {
        let credentials = json!({"username": username, "password": password});
        let (status, _, body) = self.call(Method::POST, "/v1/sessions", None, Some(credentials)).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    pub async fn log_in(&self, username: &str) -> String {
        let (status, _, body) = self
            .call(
                Method::POST,
                "/v1/sessions",
                None,
                Some(json!({"username": username, "password": "correct horse battery"})),
            )
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["token"].as_str().unwrap().to_owned()
    }

    /// A new user with a session.
    pub async fn user(&self, username: &str) -> String {
        self.sign_up(username).await;
        self.log_in(username).await
    }

    pub async fn register_app(&self, owner: &str, scopes: &[&str]) -> String {
        let body = json!({"name": "Notes Deluxe", "redirect_uris": [REDIRECT], "scopes": scopes});
        let (status, _, body) = self.call(Method::POST, "/v1/apps", Some(owner), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["client_id"].as_str().unwrap().to_owned()
    }

    /// A form posted to the token endpoint as a client would: its status and RFC 6749 answer,
    /// which is never cached.
    #[allow(dead_code)]
    pub async fn token_form(&self, form: &[(&str, &str)]) -> (StatusCode, Value) {
        let resp = self.http.post(self.url("/oauth/token")).form(form).send().await.unwrap();
        let status = resp.status();
        assert_eq!(resp.headers()["cache-control"], "no-store");
        (status, resp.json().await.unwrap())
    }

    /// Notes, the example app, on its own loopback port, registered by a developer: its base
    /// URL and client id.
    #[allow(dead_code)]
    pub async fn notes_app(&self) -> (String, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let dev = self.user("notes-developer").await;
        let redirect = format!("{base}/callback");
        let body = json!({"name": "Notes", "redirect_uris": [redirect], "scopes": selfcloud_example_notes::SCOPES});
        let (status, _, app) = self.call(Method::POST, "/v1/apps", Some(&dev), Some(body)).await;
        assert_eq!(status, StatusCode::CREATED, "{app}");
        let client_id = app["client_id"].as_str().unwrap().to_owned();
        let config =
            AppConfig { base_url: self.base.parse().unwrap(), client_id: client_id.clone(), redirect_uri: redirect };
        tokio::spawn(async move { axum::serve(listener, selfcloud_example_notes::router(config)).await });
        (base, client_id)
    }

    pub fn app_config(&self, client_id: &str) -> AppConfig {
        AppConfig { base_url: self.base.parse().unwrap(), client_id: client_id.into(), redirect_uri: REDIRECT.into() }
    }

    /// The user (by their session) answers an authorization request; returns the redirect.
    pub async fn decide(&self, session: &str, req: &AuthorizationRequest, decision: &str) -> reqwest::Response {
        self.decide_with(session, req, decision, &[]).await
    }

    /// [`Server::decide`] with more fields of the consent form (a token budget).
    pub async fn decide_with(
        &self,
        session: &str,
        req: &AuthorizationRequest,
        decision: &str,
        fields: &[(&str, &str)],
    ) -> reqwest::Response {
        let mut form = req.params();
        form.push(("decision".into(), decision.into()));
        form.extend(fields.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        self.http.post(self.url("/oauth/authorize")).bearer_auth(session).form(&form).send().await.unwrap()
    }

    /// Runs the whole flow with the SDK: the app asks, the user allows, the app gets tokens.
    pub async fn authorize(&self, session: &str, client_id: &str, scopes: &[&str]) -> (Client, TokenSet) {
        let config = self.app_config(client_id);
        let req = AuthorizationRequest::new(&config, scopes);
        let resp = self.decide(session, &req, "allow").await;
        assert_eq!(resp.status(), StatusCode::FOUND);
        let location = resp.headers()["location"].to_str().unwrap().to_owned();
        let code = req.finish(&location).unwrap();
        let client = Client::new(config);
        let tokens = client.exchange_code(&req, &code).await.unwrap();
        (client, tokens)
    }

    /// A user, an app registered by a developer, and that app's token for the user.
    pub async fn app_token(&self, user_session: &str, scopes: &[&str]) -> (String, TokenSet) {
        let dev = self.user(&format!("dev{}", rand_suffix())).await;
        let client_id = self.register_app(&dev, scopes).await;
        let (_, tokens) = self.authorize(user_session, &client_id, scopes).await;
        (client_id, tokens)
    }

    /// What the owner's usage page says `grant` spent today, once the ledger holds at least `least`.
    pub async fn spent_today(&self, owner: &str, grant: &str, least: u64) -> u64 {
        for _ in 0..100 {
            let (st, _, usage) = self.call(Method::GET, "/v1/llm/usage", Some(owner), None).await;
            assert_eq!(st, StatusCode::OK, "{usage}");
            let apps = usage["apps"].as_array().unwrap();
            let tokens = apps.iter().find(|a| a["grant_id"] == grant).and_then(|a| a["tokens"].as_u64());
            if let Some(tokens) = tokens.filter(|t| *t >= least) {
                return tokens;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        panic!("the ledger never showed {least} tokens for {grant}");
    }

    pub fn error_code(body: &Value) -> &str {
        body["error"]["code"].as_str().unwrap_or_else(|| panic!("not a contract error: {body}"))
    }

    /// Runs an attack probe (feature `attack-probes`) inside the instance of the owner whose
    /// session is `owner`, as control calls it (a system call): its outcome.
    pub async fn probe(&self, owner: &str, probe: Value) -> Value {
        let (status, _, me) = self.call(Method::GET, "/v1/me", Some(owner), None).await;
        assert_eq!(status, StatusCode::OK, "{me}");
        let id = me["instance"]["id"].as_str().unwrap().parse().unwrap();
        let client = self.control.instance(id).await.unwrap();
        let req = http::Request::post("/system/probe")
            .header("content-type", "application/json")
            .body(axum::body::Body::from(probe.to_string()))
            .unwrap();
        let ctx = selfcloud_instance::CallContext::system(0, 30_000);
        let resp = client.call(&ctx, req).await.unwrap();
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
        assert!(status.is_success(), "{probe}: {status} {}", String::from_utf8_lossy(&bytes));
        serde_json::from_slice(&bytes).unwrap()
    }
}

pub fn rand_suffix() -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed).to_string()
}

/// Sends exactly these bytes as an HTTP/1.1 request (no client-side path normalisation) and
/// returns the status and body.
pub async fn raw_request(base: &str, request_line_path: &str, method: &str, token: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {request_line_path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{{}}"
    );
    stream.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    stream.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out).into_owned();
    let status = text.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_owned();
    (status, body)
}

/// The GGUF model the LLM tests run (`./selfcloud test` pulls SmolLM2 and sets it).
pub const MODEL_ENV: &str = "SELFCLOUD_TEST_MODEL";
/// Set by `./selfcloud test` (and so CI): a missing model fails the LLM tests instead of skipping them.
pub const REQUIRE_MODEL_ENV: &str = "SELFCLOUD_TEST_REQUIRE_MODEL";

/// The test model's path, or `None` (with a note on stderr) when this run has none.
pub fn test_model() -> Option<std::path::PathBuf> {
    model_from(MODEL_ENV)
}

/// The embedding model (`./selfcloud test` pulls all-MiniLM-L6-v2 and sets it).
pub const EMBED_MODEL_ENV: &str = "SELFCLOUD_TEST_EMBED_MODEL";

/// The test embedding model's path, or `None` (with a note) when this run has none.
pub fn test_embed_model() -> Option<std::path::PathBuf> {
    model_from(EMBED_MODEL_ENV)
}

fn model_from(env: &str) -> Option<std::path::PathBuf> {
    match std::env::var_os(env) {
        Some(path) => Some(path.into()),
        None if std::env::var_os(REQUIRE_MODEL_ENV).is_some() => panic!("{REQUIRE_MODEL_ENV} is set but {env} is not"),
        None => {
            eprintln!("skipped: no model ({env} unset; `./selfcloud test` pulls one and sets it)");
            None
        }
    }
}

/// Gives every instance the model (and the embedding model, when this run has one), and shows
/// their directories to sandboxed instances (read-only).
pub fn with_model(config: &mut ControlConfig, model: &std::path::Path, slots: usize, queue: usize) {
    let engine = selfcloud_llm::llama::LlamaOptions {
        path: model.to_owned(),
        name: "smollm2".into(),
        context_tokens: 2048,
        slots,
        queue,
        threads: 0,
        stalled_reader_ms: selfcloud_llm::llama::LlamaOptions::DEFAULT_STALLED_READER_MS,
    };
    let embedding = std::env::var_os(EMBED_MODEL_ENV).map(|path| selfcloud_llm::embed::EmbedOptions {
        path: path.into(),
        name: "all-minilm-l6-v2".into(),
        input_tokens: 256,
        queue,
        threads: 0,
    });
    if let selfcloud_control::RuntimeConfig::Process(process) = &mut config.runtime {
        // The model files themselves, as `up` shows them (their directory may be private).
        process.read_only.push(model.to_owned());
        if let Some(e) = &embedding {
            process.read_only.push(e.path.clone());
        }
    }
    config.llm =
        Some(selfcloud_instance::protocol::LlmSettings { engine, limits: Default::default(), embedding, shared: None });
}

/// A helper process serving on a loopback port (an upstream provider, an S3 server), killed
/// when dropped.
#[allow(dead_code)]
pub struct Peer {
    pub child: std::process::Child,
    pub port: u16,
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port nothing listens on now.
#[allow(dead_code)]
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

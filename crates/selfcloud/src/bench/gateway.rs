//! The real gateway in-process: starting it, signing up over HTTP, and obtaining an app's
//! access token through the OAuth flow, as a third-party app would.

use super::record_key;
use anyhow::{anyhow, ensure, Context};
use bytes::Bytes;
use reqwest::header::LOCATION;
use reqwest::StatusCode;
use selfcloud_control::keys::{random_salt, PasswordKeys};
use selfcloud_control::{Control, ControlConfig};
use selfcloud_core::config::KdfParams;
use selfcloud_gateway::clock::{Clock, SystemClock};
use selfcloud_gateway::{GatewayConfig, Running};
use selfcloud_sdk::{AppConfig, AuthorizationRequest, Client};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Rate limits high enough that the bench is never throttled.
const UNTHROTTLED: u32 = 1_000_000_000;
const PASSWORD: &str = "bench-password-0123456789";
const REDIRECT_URI: &str = "http://127.0.0.1:9/cb";
const COLLECTION: &str = "bench";
/// Concurrent writers filling the collection (setup only, not measured).
const WRITERS: usize = 4;

pub struct Gateway {
    pub base: String,
    pub running: Running,
    shutdown: CancellationToken,
}

pub fn core_error(e: selfcloud_core::Error) -> anyhow::Error {
    anyhow!("{}: {}", e.message, e.detail.unwrap_or_default())
}

/// Starts the gateway on `127.0.0.1:0` over a fresh home, at the production KDF cost.
pub async fn start(home: PathBuf) -> anyhow::Result<Gateway> {
    start_with(home, |_| {}).await
}

/// [`start`], with the control settings changed by `tweak` (runtime, hibernation).
pub async fn start_with(home: PathBuf, tweak: impl FnOnce(&mut ControlConfig)) -> anyhow::Result<Gateway> {
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let mut config = ControlConfig::new(home);
    config.kdf = KdfParams::default();
    tweak(&mut config);
    config.limits.rate_per_ip = UNTHROTTLED;
    config.limits.rate_per_token = UNTHROTTLED;
    config.limits.rate_burst = UNTHROTTLED;
    let control = Control::open(config, clock.now()).map_err(core_error)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let shutdown = CancellationToken::new();
    let running =
        selfcloud_gateway::serve(listener, control, clock, GatewayConfig::default(), shutdown.clone()).await?;
    Ok(Gateway { base: format!("http://{}", running.addr), running, shutdown })
}

impl Gateway {
    /// Stops serving and waits for the audit queue to be written; answers how long that took.
    pub async fn stop(self) -> anyhow::Result<Duration> {
        let started = Instant::now();
        self.shutdown.cancel();
        self.running.wait().await?;
        Ok(started.elapsed())
    }
}

/// Logs in user `name` and answers their session token.
pub async fn log_in(base: &str, name: &str) -> anyhow::Result<String> {
    let http = reqwest::Client::new();
    let body = json!({ "username": name, "password": PASSWORD });
    let response = http.post(format!("{base}/v1/sessions")).json(&body).send().await?;
    let session = expect(response, StatusCode::OK, "log-in").await?;
    Ok(session["token"].as_str().context("log-in answered no token")?.to_owned())
}

/// Answers the JSON body when the status is `want`, else an error naming what came back.
async fn expect(response: reqwest::Response, want: StatusCode, what: &str) -> anyhow::Result<Value> {
    let status = response.status();
    let body = response.text().await?;
    ensure!(status == want, "{what}: {status} {body}");
    serde_json::from_str(&body).with_context(|| format!("{what}: body is not JSON: {body}"))
}

/// `n` sign-ups one after another, each timed from request to the answer naming a ready
/// instance.
pub async fn sign_ups(base: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    sign_ups_named(base, "bench", n).await
}

/// [`sign_ups`] of users `{prefix}00000`, `{prefix}00001`, …
pub async fn sign_ups_named(base: &str, prefix: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let http = reqwest::Client::new();
    let url = format!("{base}/v1/accounts");
    let mut took = Vec::with_capacity(n);
    for i in 0..n {
        let body = json!({ "username": format!("{prefix}{i:05}"), "password": PASSWORD });
        let started = Instant::now();
        let response = http.post(&url).json(&body).send().await?;
        let answer = expect(response, StatusCode::CREATED, "sign-up").await?;
        took.push(started.elapsed());
        ensure!(answer["instance"]["state"] == "ready", "sign-up answered an instance that is not ready: {answer}");
    }
    Ok(took)
}

/// `n` bare Argon2id derivations at the production cost, the work each sign-up deliberately
/// pays, timed one by one.
pub async fn kdf_baseline(n: usize) -> anyhow::Result<Vec<Duration>> {
    tokio::task::spawn_blocking(move || {
        (0..n)
            .map(|_| {
                let salt = random_salt();
                let started = Instant::now();
                PasswordKeys::derive(PASSWORD, &salt, KdfParams::default()).map_err(core_error)?;
                Ok(started.elapsed())
            })
            .collect()
    })
    .await?
}

/// Signs up a reader, registers an app, grants it `storage:read:bench` through the OAuth flow,
/// fills the collection with `records` copies of `value`, and answers the app's access token.
pub async fn prepare_reader(base: &str, records: usize, value: &Bytes) -> anyhow::Result<String> {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let (session, access_token) = app_token(base, "benchreader", &["storage:read:bench"]).await?;
    write_records(&http, base, &session, records, value).await?;

    // The app token reads back exactly the bytes written.
    let response =
        http.get(format!("{base}/v1/storage/{COLLECTION}/{}", record_key(0))).bearer_auth(&access_token).send().await?;
    ensure!(response.status() == StatusCode::OK, "app read answered {}", response.status());
    ensure!(response.bytes().await? == *value, "app read answered other bytes than were written");
    Ok(access_token)
}

/// A new user `username` who consents, over the real OAuth flow, to an app asking for `scopes`:
/// their owner session and the app's access token.
pub async fn app_token(base: &str, username: &str, scopes: &[&str]) -> anyhow::Result<(String, String)> {
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build()?;
    let credentials = json!({ "username": username, "password": PASSWORD });
    let response = http.post(format!("{base}/v1/accounts")).json(&credentials).send().await?;
    expect(response, StatusCode::CREATED, "sign-up").await?;
    let response = http.post(format!("{base}/v1/sessions")).json(&credentials).send().await?;
    let session = expect(response, StatusCode::OK, "log-in").await?;
    let session = session["token"].as_str().context("log-in answered no token")?.to_owned();

    let app = json!({ "name": "bench", "redirect_uris": [REDIRECT_URI], "scopes": scopes });
    let response = http.post(format!("{base}/v1/apps")).bearer_auth(&session).json(&app).send().await?;
    let app = expect(response, StatusCode::CREATED, "app registration").await?;
    let client_id = app["client_id"].as_str().context("app registration answered no client_id")?;

    let config =
        AppConfig { base_url: base.parse()?, client_id: client_id.to_owned(), redirect_uri: REDIRECT_URI.to_owned() };
    let request = AuthorizationRequest::new(&config, scopes);
    let mut form = request.params();
    form.push(("decision".into(), "allow".into()));
    let response = http.post(format!("{base}/oauth/authorize")).bearer_auth(&session).form(&form).send().await?;
    ensure!(response.status() == StatusCode::FOUND, "consent answered {}", response.status());
    let location =
        response.headers().get(LOCATION).and_then(|v| v.to_str().ok()).context("consent answered no Location")?;
    let code = request.finish(location)?;
    let tokens = Client::new(config).exchange_code(&request, &code).await?;
    for scope in scopes {
        ensure!(tokens.scope.split(' ').any(|s| s == *scope), "granted scope is {:?}", tokens.scope);
    }
    Ok((session, tokens.access_token))
}

/// Writes the records with the owner's session, a few writers at once.
async fn write_records(
    http: &reqwest::Client,
    base: &str,
    session: &str,
    records: usize,
    value: &Bytes,
) -> anyhow::Result<()> {
    let mut writers = tokio::task::JoinSet::new();
    for first in 0..WRITERS.min(records) {
        let (http, session, value) = (http.clone(), session.to_owned(), value.clone());
        let base = base.to_owned();
        writers.spawn(async move {
            for i in (first..records).step_by(WRITERS) {
                let response = http
                    .put(format!("{base}/v1/storage/{COLLECTION}/{}", record_key(i)))
                    .bearer_auth(&session)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(value.clone())
                    .send()
                    .await?;
                expect(response, StatusCode::OK, "record write").await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(done) = writers.join_next().await {
        done??;
    }
    Ok(())
}

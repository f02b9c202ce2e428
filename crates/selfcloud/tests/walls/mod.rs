//! The real binary under `--runtime process`, a user's HTTP calls, and probes run inside a
//! user's instance (feature `attack-probes`), for the suites that attack instances from inside.
#![allow(dead_code)]

use axum::body::Body;
use selfcloud_core::InstanceId;
use selfcloud_instance::{CallContext, InstanceClient};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

pub const PASSWORD: &str = "correct horse battery";

pub struct Up {
    pub child: Child,
    pub base: String,
    pub home: PathBuf,
    pub http: reqwest::Client,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The model the LLM tests use (`./selfcloud test` sets it), shown to instances read-only.
pub fn test_model() -> Option<PathBuf> {
    std::env::var_os("SELFCLOUD_TEST_MODEL").map(PathBuf::from)
}

/// The embedding model, which every instance maps itself (in shared mode the chat model is the
/// engine's alone).
pub fn test_embed_model() -> Option<PathBuf> {
    std::env::var_os("SELFCLOUD_TEST_EMBED_MODEL").map(PathBuf::from)
}

pub fn start(home: &Path) -> Up {
    start_with(home, &[])
}

/// [`start`], with more flags.
pub fn start_with(home: &Path, flags: &[&str]) -> Up {
    launch(home, flags, &[], Stdio::inherit())
}

/// The server with `flags`, then `env` (which overrides the defaults here), its stderr on
/// `stderr`; answers once it listens.
pub fn launch(home: &Path, flags: &[&str], env: &[(&str, String)], stderr: Stdio) -> Up {
    let mut command = Command::new(env!("CARGO_BIN_EXE_selfcloud"));
    command
        .args(["up", "--runtime", "process", "--addr", "127.0.0.1:0", "--kdf-memory-kib", "8", "--kdf-iterations", "1"])
        // Tight limits, so the attacks meet them quickly.
        .args(["--free-memory-mib", "96", "--free-pids", "48", "--hibernate-after", "600", "--rate-per-ip", "1000"])
        .args(flags)
        .env("SELFCLOUD_HOME", home)
        .env("SELFCLOUD_MODEL", test_model().map_or_else(|| "none".into(), |m| m.display().to_string()))
        .env("SELFCLOUD_EMBEDDING_MODEL", std::env::var("SELFCLOUD_TEST_EMBED_MODEL").unwrap_or_else(|_| "none".into()))
        .env("RUST_LOG", "warn");
    for (name, value) in env {
        command.env(name, value);
    }
    let mut child = command.stdout(Stdio::piped()).stderr(stderr).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base =
        line.trim().strip_prefix("selfcloud listening on ").expect("the first line names the address").to_owned();
    Up { child, base, home: home.to_owned(), http: reqwest::Client::new() }
}

pub struct User {
    pub token: String,
    pub instance: InstanceId,
}

impl Up {
    pub async fn user(&self, name: &str) -> User {
        self.user_with_code(name).await.0
    }

    /// A new user, and the recovery code sign-up gave them.
    pub async fn user_with_code(&self, name: &str) -> (User, String) {
        let body = json!({"username": name, "password": PASSWORD});
        let account = self.post(&format!("{}/v1/accounts", self.base), &body).await;
        let session = self.post(&format!("{}/v1/sessions", self.base), &body).await;
        let user = User {
            token: session["token"].as_str().unwrap().to_owned(),
            instance: account["instance"]["id"].as_str().expect("sign-up names the instance").parse().unwrap(),
        };
        (user, account["recovery_code"].as_str().unwrap().to_owned())
    }

    async fn post(&self, url: &str, body: &Value) -> Value {
        self.http.post(url).json(body).send().await.unwrap().json().await.unwrap()
    }

    pub async fn put(&self, user: &User, key: &str, value: Value) -> u16 {
        let url = format!("{}/v1/storage/notes/{key}", self.base);
        self.http.put(url).bearer_auth(&user.token).json(&value).send().await.unwrap().status().as_u16()
    }

    pub async fn get(&self, user: &User, key: &str) -> (u16, Value) {
        let url = format!("{}/v1/storage/notes/{key}", self.base);
        let resp = self.http.get(url).bearer_auth(&user.token).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The operator's view of every instance.
    pub async fn instances(&self) -> Vec<Value> {
        let token = std::fs::read_to_string(self.home.join("operator.token")).unwrap();
        let url = format!("{}/v1/admin/instances", self.base);
        let list: Value = self.http.get(url).bearer_auth(token.trim()).send().await.unwrap().json().await.unwrap();
        list["instances"].as_array().unwrap().clone()
    }

    pub async fn view(&self, user: &User) -> Value {
        let id = user.instance.to_string();
        self.instances().await.into_iter().find(|i| i["id"] == id.as_str()).unwrap()
    }

    pub fn dir(&self, user: &User) -> PathBuf {
        selfcloud_control::instance_dir(&self.home, user.instance)
    }

    /// The directory as the running instance sees it: its own disk image where it has one,
    /// which only its mount namespace holds.
    pub async fn seen_dir(&self, user: &User) -> PathBuf {
        let reaper = self.view(user).await["pid"].as_u64().expect("the instance runs");
        PathBuf::from(format!("/proc/{}/root/instance", children(reaper)))
    }

    /// Runs a probe inside `user`'s instance, speaking the protocol on its socket as control does.
    pub async fn probe(&self, user: &User, probe: Value) -> Result<Value, String> {
        let socket = self.dir(user).join(selfcloud_instance::transport::SOCKET_FILE);
        let client = InstanceClient::connect(user.instance, &socket).await.map_err(|e| e.to_string())?;
        let req = http::Request::post("/system/probe")
            .header("content-type", "application/json")
            .body(Body::from(probe.to_string()))
            .unwrap();
        let resp = client.call(&CallContext::system(0, 30_000), req).await.map_err(|e| e.message)?;
        let status = resp.status();
        let bytes = http_body_util::BodyExt::collect(resp.into_body()).await.map_err(|e| e.to_string())?.to_bytes();
        if !status.is_success() {
            return Err(format!("{status}: {}", String::from_utf8_lossy(&bytes)));
        }
        Ok(serde_json::from_slice(&bytes).unwrap())
    }

    pub async fn refused(&self, user: &User, probe: Value) -> String {
        let out = self.probe(user, probe.clone()).await.unwrap_or_else(|e| panic!("{probe}: {e}"));
        assert_eq!(out["got_through"], false, "{probe} got through: {out}");
        out["detail"].as_str().unwrap().to_owned()
    }
}

/// The one child of `pid` (the instance behind the process the server started).
pub fn children(pid: u64) -> u64 {
    let children = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap();
    children.trim().parse().unwrap_or_else(|_| panic!("{pid} has not one child: {children:?}"))
}

/// Whether `pid` has ended: gone, or a zombie not yet reaped.
pub fn ended(pid: u64) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        // The state follows the command's name, which closes with the line's last parenthesis.
        Ok(stat) => stat.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

/// Waits, up to 10 s, until `done`.
pub async fn until(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..400 {
        if done() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("waited 10 s for {what}");
}

/// A stream of the chunks sent on `rx`.
pub fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

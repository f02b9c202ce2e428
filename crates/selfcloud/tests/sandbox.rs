//! Attacks from inside an instance process: the real binary serves under `--runtime process`,
//! and probes (feature `attack-probes`, test builds only) run attack code inside one user's
//! instance. Each attack must fail, and the other instances must keep serving. Then an instance
//! is killed mid-request: that caller gets 503, the instance comes back, nothing acknowledged
//! is lost.
#![cfg(all(target_os = "linux", feature = "attack-probes"))]

use axum::body::Body;
use selfcloud_core::InstanceId;
use selfcloud_instance::{CallContext, InstanceClient};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const PASSWORD: &str = "correct horse battery";

struct Up {
    child: Child,
    base: String,
    home: PathBuf,
    http: reqwest::Client,
}

impl Drop for Up {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The model the LLM tests use (`./selfcloud test` sets it), shown to instances read-only.
fn test_model() -> Option<PathBuf> {
    std::env::var_os("SELFCLOUD_TEST_MODEL").map(PathBuf::from)
}

fn start(home: &Path) -> Up {
    let mut child = Command::new(env!("CARGO_BIN_EXE_selfcloud"))
        .args(["up", "--runtime", "process", "--addr", "127.0.0.1:0", "--kdf-memory-kib", "8", "--kdf-iterations", "1"])
        // Tight limits, so the attacks meet them quickly.
        .args(["--free-memory-mib", "96", "--free-pids", "48", "--hibernate-after", "600", "--rate-per-ip", "1000"])
        .env("SELFCLOUD_HOME", home)
        .env("SELFCLOUD_MODEL", test_model().map_or_else(|| "none".into(), |m| m.display().to_string()))
        .env("SELFCLOUD_EMBEDDING_MODEL", std::env::var("SELFCLOUD_TEST_EMBED_MODEL").unwrap_or_else(|_| "none".into()))
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base =
        line.trim().strip_prefix("selfcloud listening on ").expect("the first line names the address").to_owned();
    Up { child, base, home: home.to_owned(), http: reqwest::Client::new() }
}

struct User {
    token: String,
    instance: InstanceId,
}

impl Up {
    async fn user(&self, name: &str) -> User {
        let body = json!({"username": name, "password": PASSWORD});
        let account: Value = self
            .http
            .post(format!("{}/v1/accounts", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session: Value = self
            .http
            .post(format!("{}/v1/sessions", self.base))
            .json(&body)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        User {
            token: session["token"].as_str().unwrap().to_owned(),
            instance: account["instance"]["id"].as_str().expect("sign-up names the instance").parse().unwrap(),
        }
    }

    async fn put(&self, user: &User, key: &str, value: Value) -> u16 {
        let url = format!("{}/v1/storage/notes/{key}", self.base);
        self.http.put(url).bearer_auth(&user.token).json(&value).send().await.unwrap().status().as_u16()
    }

    async fn get(&self, user: &User, key: &str) -> (u16, Value) {
        let url = format!("{}/v1/storage/notes/{key}", self.base);
        let resp = self.http.get(url).bearer_auth(&user.token).send().await.unwrap();
        let status = resp.status().as_u16();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// The operator's view of every instance.
    async fn instances(&self) -> Vec<Value> {
        let token = std::fs::read_to_string(self.home.join("operator.token")).unwrap();
        let url = format!("{}/v1/admin/instances", self.base);
        let list: Value = self.http.get(url).bearer_auth(token.trim()).send().await.unwrap().json().await.unwrap();
        list["instances"].as_array().unwrap().clone()
    }

    async fn view(&self, user: &User) -> Value {
        let id = user.instance.to_string();
        self.instances().await.into_iter().find(|i| i["id"] == id.as_str()).unwrap()
    }

    fn dir(&self, user: &User) -> PathBuf {
        selfcloud_control::instance_dir(&self.home, user.instance)
    }

    /// Runs a probe inside `user`'s instance, speaking the protocol on its socket as control does.
    async fn probe(&self, user: &User, probe: Value) -> Result<Value, String> {
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

    async fn refused(&self, user: &User, probe: Value) -> String {
        let out = self.probe(user, probe.clone()).await.unwrap_or_else(|e| panic!("{probe}: {e}"));
        assert_eq!(out["got_through"], false, "{probe} got through: {out}");
        out["detail"].as_str().unwrap().to_owned()
    }
}

#[tokio::test]
async fn nothing_an_instance_runs_reaches_outside_it_and_the_others_keep_serving() {
    let home = tempfile::tempdir().unwrap();
    let up = start(home.path());
    let (ada, bob) = (up.user("ada").await, up.user("bob").await);
    assert_eq!(up.put(&ada, "a", json!({"mine": "ada"})).await, 200);
    assert_eq!(up.put(&bob, "b", json!({"mine": "bob"})).await, 200);
    let bob_view = up.view(&bob).await;
    assert_eq!(bob_view["run_state"], "running", "{bob_view}");
    assert_eq!(bob_view["runtime"], "process");
    assert!(bob_view["memory_bytes"].as_u64().unwrap() > 0, "its cgroup reports memory: {bob_view}");
    let bob_pid = bob_view["pid"].as_u64().unwrap();
    let server_pid = up.child.id();

    // The probe itself works: its own directory is writable, so a refusal below means the walls.
    let own = up.probe(&ada, json!({"probe": "write", "path": "/instance/probe.txt"})).await.unwrap();
    assert_eq!(own["got_through"], true, "{own}");

    let home_path = home.path().to_str().unwrap();
    let bob_dir = up.dir(&bob);
    let bob_dir = bob_dir.to_str().unwrap();
    for path in [
        format!("{bob_dir}/keys.json"),
        format!("{bob_dir}/store.db"),
        format!("{home_path}/control.db"),
        format!("{home_path}/node.key"),
        format!("{home_path}/operator.token"),
        "/etc/passwd".into(),
        format!("/proc/{server_pid}/environ"),
    ] {
        up.refused(&ada, json!({"probe": "read", "path": path})).await;
    }
    up.refused(&ada, json!({"probe": "list", "path": format!("{home_path}/instances")})).await;
    // Landlock holds inside the view too: the root's own stand-in file is visible, not readable.
    if selfcloud_sandbox::probe().iter().any(|l| l.name == "landlock" && l.available) {
        up.refused(&ada, json!({"probe": "read", "path": "/.empty"})).await;
    }
    for path in [format!("{home_path}/planted"), "/planted".into(), "/tmp/planted".into(), format!("{bob_dir}/planted")]
    {
        up.refused(&ada, json!({"probe": "write", "path": path})).await;
    }
    assert!(!home.path().join("planted").exists() && !Path::new("/tmp/planted").exists());
    // The model's directory is in the view, read-only: every instance maps the same weights and
    // none can change them for the others.
    if let Some(model) = test_model() {
        let models = model.parent().unwrap();
        let seen = up.probe(&ada, json!({"probe": "list", "path": models})).await.unwrap();
        assert_eq!(seen["got_through"], true, "{seen}");
        up.refused(&ada, json!({"probe": "write", "path": models.join("planted")})).await;
        assert!(!models.join("planted").exists());
    }
    for domain in ["inet_tcp", "inet_udp", "inet6_tcp", "netlink", "unix"] {
        up.refused(&ada, json!({"probe": "socket", "domain": domain})).await;
    }
    let bob_socket = format!("{bob_dir}/{}", selfcloud_instance::transport::SOCKET_FILE);
    up.refused(&ada, json!({"probe": "connect_unix", "path": bob_socket})).await;
    for pid in [bob_pid as i32, server_pid as i32] {
        up.refused(&ada, json!({"probe": "signal", "pid": pid})).await;
        up.refused(&ada, json!({"probe": "ptrace", "pid": pid})).await;
    }
    up.refused(&ada, json!({"probe": "fork"})).await;
    // Its own key file (wrapped keys, KDF salt) is not in its view: an empty file stands over it.
    up.refused(&ada, json!({"probe": "read_own_key_file"})).await;
    // Nor can it outlive its reaper, or leave a setuid file behind.
    up.refused(&ada, json!({"probe": "clear_death_signal"})).await;
    up.refused(&ada, json!({"probe": "setuid"})).await;
    let tty = up.refused(&ada, json!({"probe": "type_into_terminal"})).await;
    assert!(tty.contains("not permitted"), "refused by the filter, not for want of a terminal: {tty}");
    up.refused(&ada, json!({"probe": "exec", "path": "/bin/sh"})).await;
    // Threads past the pids limit (48) fail to start.
    let threads = up.refused(&ada, json!({"probe": "threads", "count": 200})).await;
    assert!(threads.contains("threads started"), "{threads}");

    // Bob and the server lived through all of it.
    assert_eq!(up.get(&bob, "b").await, (200, json!({"mine": "bob"})));
    assert_eq!(up.view(&bob).await["pid"].as_u64(), Some(bob_pid));
    assert_eq!(up.view(&bob).await["restarts"], 0);

    // Past its memory limit (96 MiB) the kernel kills the instance, and only it.
    let killed = up.probe(&ada, json!({"probe": "alloc", "bytes": 400u64 << 20})).await;
    assert!(killed.is_err(), "400 MiB allocated under a 96 MiB limit: {killed:?}");
    assert_eq!(up.get(&bob, "b").await, (200, json!({"mine": "bob"})));
    // Ada's instance comes back on her next call, with her data.
    assert_eq!(up.get(&ada, "a").await, (200, json!({"mine": "ada"})));
    assert_eq!(up.view(&ada).await["restarts"], 1);
}

#[tokio::test]
async fn an_instance_killed_mid_request_answers_503_then_comes_back_with_every_acknowledged_write() {
    let home = tempfile::tempdir().unwrap();
    let up = start(home.path());
    let ada = up.user("ada").await;
    for i in 0..20 {
        assert_eq!(up.put(&ada, &format!("k{i}"), json!({"n": i})).await, 200);
    }
    let pid = up.view(&ada).await["pid"].as_u64().unwrap();
    // A write whose body is still arriving when the instance dies.
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
    let url = format!("{}/v1/storage/notes/late", up.base);
    let pending = tokio::spawn({
        let (http, token) = (up.http.clone(), ada.token.clone());
        async move {
            let resp = http
                .put(url)
                .bearer_auth(token)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (resp.status().as_u16(), resp.headers().get("retry-after").is_some(), resp.text().await.unwrap())
        }
    });
    tx.send(Ok(b"{\"n\":".to_vec())).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = tx.send(Ok(b"1}".to_vec())).await;
    drop(tx);
    let (status, retry_after, body) = pending.await.unwrap();
    assert_eq!(status, 503, "{body}");
    assert!(retry_after, "a 503 says when to try again");
    assert_eq!(serde_json::from_str::<Value>(&body).unwrap()["error"]["code"], "unavailable");
    // The next call wakes it again; every acknowledged write is there.
    for i in 0..20 {
        assert_eq!(up.get(&ada, &format!("k{i}")).await, (200, json!({"n": i})));
    }
    let view = up.view(&ada).await;
    assert_eq!(view["restarts"], 1, "{view}");
    assert_ne!(view["pid"].as_u64(), Some(pid));
}

/// A stream of the chunks sent on `rx`.
fn tokio_stream_from(
    rx: tokio::sync::mpsc::Receiver<Result<Vec<u8>, std::io::Error>>,
) -> impl futures_util::Stream<Item = Result<Vec<u8>, std::io::Error>> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

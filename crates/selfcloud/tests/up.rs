//! The real binary: `selfcloud up` starts, serves, stops cleanly on SIGTERM, and keeps every
//! acknowledged write across a restart, even after SIGKILL.

use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Up {
    child: Child,
    base: String,
}

fn start(home: &std::path::Path) -> Up {
    start_with(home, &[])
}

fn start_with(home: &std::path::Path, extra: &[&str]) -> Up {
    let mut child = Command::new(env!("CARGO_BIN_EXE_selfcloud"))
        .args(["up", "--addr", "127.0.0.1:0", "--kdf-memory-kib", "8", "--kdf-iterations", "1"])
        .args(extra)
        .env("SELFCLOUD_HOME", home)
        // The test model when this run has one, never a download.
        .env("SELFCLOUD_MODEL", std::env::var("SELFCLOUD_TEST_MODEL").unwrap_or_else(|_| "none".into()))
        .env("SELFCLOUD_EMBEDDING_MODEL", std::env::var("SELFCLOUD_TEST_EMBED_MODEL").unwrap_or_else(|_| "none".into()))
        .env("RUST_LOG", "info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("selfcloud listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Up { child, base }
}

fn signal(child: &Child, sig: &str) {
    let status = Command::new("kill").args([sig, &child.id().to_string()]).status().unwrap();
    assert!(status.success());
}

fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        assert!(Instant::now() < deadline, "did not exit in {within:?}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn post(http: &reqwest::Client, url: String, body: Value) -> Value {
    http.post(url).json(&body).send().await.unwrap().json().await.unwrap()
}

#[tokio::test]
async fn up_serves_stops_cleanly_and_keeps_acknowledged_writes() {
    let home = tempfile::tempdir().unwrap();
    let http = reqwest::Client::new();
    let mut up = start(home.path());
    assert!(up.base.starts_with("http://127.0.0.1:"));
    let health: Value = http.get(format!("{}/healthz", up.base)).send().await.unwrap().json().await.unwrap();
    assert_eq!(health["status"], "ok");
    post(&http, format!("{}/v1/accounts", up.base), json!({"username": "ada", "password": "correct horse"})).await;
    let session =
        post(&http, format!("{}/v1/sessions", up.base), json!({"username": "ada", "password": "correct horse"})).await;
    let token = session["token"].as_str().unwrap().to_owned();
    let put = |base: &str, key: &str| {
        http.put(format!("{base}/v1/storage/notes/{key}")).bearer_auth(&token).json(&json!({"k": key})).send()
    };
    assert!(put(&up.base, "before-term").await.unwrap().status().is_success());
    // With a model, the owner's instance (sandboxed where the kernel allows) answers a chat.
    if std::env::var_os("SELFCLOUD_TEST_MODEL").is_some() {
        let question = json!({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                              "temperature": 0, "max_tokens": 16});
        let resp =
            http.post(format!("{}/v1/llm/chat/completions", up.base)).bearer_auth(&token).json(&question).send().await;
        let answer: Value = resp.unwrap().json().await.unwrap();
        assert!(answer["choices"][0]["message"]["content"].as_str().unwrap_or("").contains("Paris"), "{answer}");
    }

    // SIGTERM: drains and exits 0, saying so in its log.
    signal(&up.child, "-TERM");
    let status = wait_exit(&mut up.child, Duration::from_secs(10));
    assert!(status.success(), "{status:?}");
    let mut log = String::new();
    std::io::Read::read_to_string(&mut up.child.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("stopped cleanly"), "{log}");

    // Restart on the same home: the session and the record are still there. Then SIGKILL right
    // after an acknowledged write: that write survives too.
    let mut up = start(home.path());
    let get = |base: &str, key: &str| http.get(format!("{base}/v1/storage/notes/{key}")).bearer_auth(&token).send();
    assert_eq!(get(&up.base, "before-term").await.unwrap().json::<Value>().await.unwrap(), json!({"k": "before-term"}));
    for i in 0..20 {
        assert!(put(&up.base, &format!("before-kill-{i}")).await.unwrap().status().is_success());
    }
    signal(&up.child, "-KILL");
    wait_exit(&mut up.child, Duration::from_secs(10));

    let mut up = start(home.path());
    for i in 0..20 {
        let key = format!("before-kill-{i}");
        let resp = get(&up.base, &key).await.unwrap();
        assert_eq!(resp.status(), 200, "{key} lost after SIGKILL");
        assert_eq!(resp.json::<Value>().await.unwrap(), json!({"k": key}));
    }
    signal(&up.child, "-TERM");
    assert!(wait_exit(&mut up.child, Duration::from_secs(10)).success());
}

#[test]
fn help_names_every_limit() {
    let out = Command::new(env!("CARGO_BIN_EXE_selfcloud")).args(["up", "--help"]).output().unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--addr",
        "--home",
        "--kdf-memory-kib",
        "--kdf-iterations",
        "--max-value-bytes",
        "--rate-per-token",
        "--rate-burst",
        "--rate-per-ip",
        "--sign-ups-per-minute",
        "--quota-bytes",
        "--growth-quota-bytes",
        "--pro-quota-bytes",
        "--growth-rate-per-token",
        "--pro-rate-per-token",
        "--llm-app-tokens-per-day",
        "--growth-llm-app-tokens-per-day",
        "--pro-llm-app-tokens-per-day",
        "--llm-owner-tokens-per-day",
        "--growth-llm-owner-tokens-per-day",
        "--pro-llm-owner-tokens-per-day",
        "--max-import-bytes",
        "--store",
        "--list-max",
        "--audit-retention",
        "--session-ttl",
        "--web-session-ttl",
        "--access-ttl",
        "--code-ttl",
        "--list-max-bytes",
        "--audit-field-max",
        "--sessions-per-user",
        "--app-sessions-per-grant",
        "--spent-refresh-kept",
        "--log-in-free-failures",
        "--log-in-max-wait-secs",
        "--log-in-names-tracked",
        "--kdf-concurrency",
        "--kdf-wait",
        "--max-connections",
        "--header-read-timeout",
        "--body-read-timeout",
        "--apps-per-user",
        "--runtime",
        "--hibernate-after",
        "--stop-grace",
        "--instance-start-timeout",
        "--instance-uids",
        "--instance-log-line-max",
        "--instance-log-lines-per-sec",
        "--open-instances",
        "--instance-memory-mib",
        "--free-memory-mib",
        "--free-cpu-millis",
        "--free-pids",
        "--growth-memory-mib",
        "--growth-cpu-millis",
        "--growth-pids",
        "--pro-memory-mib",
        "--pro-cpu-millis",
        "--pro-pids",
        "--model",
        "--models",
        "--package-index",
        "--llm-context-tokens",
        "--llm-slots",
        "--llm-queue",
        "--llm-threads",
        "--llm-stalled-reader-ms",
        "--llm-max-tokens",
        "--llm-default-max-tokens",
        "--embedding-model",
        "--llm-max-embedding-inputs",
        "--llm-engine",
        "--llm-shared-places",
        "--llm-engine-memory-mib",
        "--assistant-max-records",
        "--assistant-max-memories",
        "--assistant-embeds-per-pass",
        "--backup-dir-root",
        "--backup-dir-max-mib",
        "--backup-kdf-memory-kib",
        "--backup-kdf-iterations",
        "SELFCLOUD_MODEL",
        "SELFCLOUD_EMBEDDING_MODEL",
        "SELFCLOUD_HOME",
        "SELFCLOUD_ADDR",
    ] {
        assert!(help.contains(flag), "{flag} missing from --help:\n{help}");
    }
}

#[test]
fn a_bad_home_is_a_clear_error() {
    let file = tempfile::NamedTempFile::new().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_selfcloud"))
        .args(["up", "--addr", "127.0.0.1:0", "--model", "none", "--home"])
        .arg(file.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("opening home directory"), "{err}");
}

#[test]
fn a_missing_model_is_a_clear_error() {
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_selfcloud"))
        .args(["up", "--addr", "127.0.0.1:0", "--model", "/nowhere/model.gguf"])
        .env("SELFCLOUD_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("--model /nowhere/model.gguf: no such file"), "{err}");
}

#[cfg(unix)]
#[tokio::test]
async fn every_file_and_directory_under_the_home_is_the_server_users_alone() {
    use std::os::unix::fs::PermissionsExt;
    let home = tempfile::tempdir().unwrap();
    let root = home.path().join("data");
    let http = reqwest::Client::new();
    // Both engines: RocksDB creates its files itself, with the process's umask.
    for (engine, user) in [("sqlite", "ada"), ("rocksdb", "bob")] {
        let mut up = start_with(&root, &["--store", engine]);
        let creds = json!({"username": user, "password": "correct horse"});
        post(&http, format!("{}/v1/accounts", up.base), creds.clone()).await;
        let token = post(&http, format!("{}/v1/sessions", up.base), creds).await["token"].as_str().unwrap().to_owned();
        let resp = http.put(format!("{}/v1/storage/notes/a", up.base)).bearer_auth(&token).json(&json!(1)).send().await;
        assert!(resp.unwrap().status().is_success());
        http.get(format!("{}/v1/audit", up.base)).bearer_auth(&token).send().await.unwrap();
        signal(&up.child, "-TERM");
        assert!(wait_exit(&mut up.child, Duration::from_secs(10)).success());
    }
    let (mut files, mut stack) = (0, vec![root.clone()]);
    while let Some(dir) = stack.pop() {
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is {:o}", dir.display(), mode & 0o777);
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files += 1;
                let mode = std::fs::metadata(&path).unwrap().permissions().mode();
                assert_eq!(mode & 0o077, 0, "{} is {:o}", path.display(), mode & 0o777);
                if path.extension().is_some_and(|e| e == "ext4") {
                    files += files_in_image(&path);
                }
            }
        }
    }
    assert!(files > 10, "{files}");
}

/// The files at the top of an instance's disk image, each checked to be its owner's alone;
/// answers how many there are (read with e2fsprogs' debugfs, which mounts nothing).
fn files_in_image(image: &std::path::Path) -> usize {
    let out = Command::new("debugfs").arg("-R").arg("ls -l /").arg(image).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let mut files = 0;
    for line in listing.lines() {
        // "  12  100600 (1)   0   0  4096  7-Dec-2026 05:58 store.db"
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(mode), Some(name)) = (fields.get(1), fields.last()) else { continue };
        let Ok(mode) = u32::from_str_radix(mode, 8) else { continue };
        if mode & 0o170000 == 0o100000 {
            files += 1;
            assert_eq!(mode & 0o077, 0, "{name} in {} is {:o}", image.display(), mode & 0o777);
        }
    }
    assert!(files > 0, "{} holds no file: {listing}", image.display());
    files
}

//! Backup through the gateway, on both runtimes: the owner adds a directory target under a
//! passphrase and takes snapshots, each proved by a drill; what the directory holds reads as
//! nothing, and opens with the passphrase alone into every record. Apps, and servers with no
//! backup root, get nothing.

mod common;

use common::{free_port, Peer, Server};
use reqwest::{Method, StatusCode};
use selfcloud_backup::{DirTarget, Repo, Secret};
use selfcloud_store::EngineKind;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const PASSPHRASE: &str = "a passphrase only ada knows";
/// In every record; never to be found at the target.
const MARKER: &str = "quartzwhistle";

fn files_under(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                out.push(path);
            }
        }
    }
    out
}

fn bytes_under(root: &Path) -> u64 {
    files_under(root).iter().map(|p| std::fs::metadata(p).unwrap().len()).sum()
}

/// The snapshot restored into a new directory and opened under the key its manifest carries,
/// as a user would on a machine of their own; the store must be of `engine`.
async fn restored(
    repo: &Repo,
    manifest: &selfcloud_backup::Manifest,
    engine: EngineKind,
) -> (tempfile::TempDir, selfcloud_store::Store) {
    let scratch = tempfile::tempdir().unwrap();
    let into = scratch.path().join("restored");
    repo.restore(manifest, &into, Default::default()).await.unwrap();
    assert_eq!(EngineKind::detect(&into), Some(engine));
    let key = selfcloud_store::DataKey::from_bytes(manifest.data_key);
    let options = selfcloud_store::StoreOptions { quota_bytes: u64::MAX };
    let store = selfcloud_store::Store::open(engine, &into, &key, options).unwrap();
    (scratch, store)
}

fn collection() -> selfcloud_core::Collection {
    selfcloud_core::Collection::parse(&format!("{MARKER}s")).unwrap()
}

/// The value of record `{MARKER}{i}` in a restored page.
fn value_of(page: &selfcloud_store::Page, i: usize) -> Value {
    let record = page.records.iter().find(|r| r.key.as_str() == format!("{MARKER}{i}")).unwrap();
    serde_json::from_slice(&record.value).unwrap()
}

#[tokio::test]
async fn an_owner_backs_up_to_a_directory_and_the_snapshot_opens_with_the_passphrase_alone_sqlite() {
    backs_up_to_a_directory(EngineKind::Sqlite).await;
}

/// RocksDB's copy is its checkpoint, which under the process runtime's walls copies its files
/// (hard links fail there as across filesystems).
#[tokio::test]
async fn an_owner_backs_up_to_a_directory_and_the_snapshot_opens_with_the_passphrase_alone_rocksdb() {
    backs_up_to_a_directory(EngineKind::Rocksdb).await;
}

async fn backs_up_to_a_directory(engine: EngineKind) {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_owned();
    let server = Server::start_with(move |c| {
        c.egress.backup_dir_root = Some(dir);
        c.store_engine = engine;
    })
    .await;
    let ada = server.user("ada").await;
    // Enough pages (about 60 KiB of records) that one changed record is a small part of them.
    for i in 0..40 {
        let value = json!({"secret": format!("{MARKER} {i}"), "pad": "p".repeat(1500)});
        server.put_ok(&ada, &format!("/v1/storage/{MARKER}s/{MARKER}{i}"), value).await;
    }
    let add = json!({"kind": "directory", "passphrase": PASSPHRASE});

    // Only the owner: an app holding every scope it may ask is refused, and no token is 401.
    let (_, app) = server.app_token(&ada, &[&format!("storage:read:{MARKER}s")]).await;
    for path in ["/v1/backup/targets", "/v1/backup/snapshots"] {
        let (status, _, body) = server.call(Method::POST, path, Some(&app.access_token), Some(add.clone())).await;
        assert_eq!(status, StatusCode::FORBIDDEN, "{path}: {body}");
        let (status, _, _) = server.call(Method::POST, path, None, Some(add.clone())).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{path}");
    }
    let (status, _, body) = server
        .call(Method::POST, "/v1/backup/targets", Some(&ada), Some(json!({"kind": "directory", "passphrase": "short"})))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, _, body) = server.call(Method::POST, "/v1/backup/snapshots", Some(&ada), Some(json!({}))).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "a snapshot needs a target first: {body}");

    let (status, _, added) = server.call(Method::POST, "/v1/backup/targets", Some(&ada), Some(add.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let recovery = added["recovery_key"].as_str().expect("shown once").to_owned();
    assert_eq!(recovery.len(), 79, "{recovery}");
    let (status, _, body) = server.call(Method::POST, "/v1/backup/targets", Some(&ada), Some(add.clone())).await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");

    let (status, _, taken) = server.call(Method::POST, "/v1/backup/snapshots", Some(&ada), Some(json!({}))).await;
    assert_eq!(status, StatusCode::CREATED, "{taken}");
    let first = taken["snapshots"][0].clone();
    assert_eq!(first["verified"], true, "{taken}");
    let after_first = bytes_under(root.path());

    // One change: the next snapshot sends a small part of the first.
    server.put_ok(&ada, &format!("/v1/storage/{MARKER}s/{MARKER}3"), json!({"secret": "changed"})).await;
    let (status, _, taken) = server.call(Method::POST, "/v1/backup/snapshots", Some(&ada), None).await;
    assert_eq!(status, StatusCode::CREATED, "{taken}");
    let second = taken["snapshots"][0].clone();
    let grown = bytes_under(root.path()) - after_first;
    assert!(grown * 2 < after_first, "the second snapshot sent {grown} bytes after {after_first}");

    let (status, _, listed) =
        server.call(Method::GET, "/v1/backup/targets/directory/snapshots", Some(&ada), None).await;
    assert_eq!(status, StatusCode::OK, "{listed}");
    let ids: Vec<&Value> = listed["snapshots"].as_array().unwrap().iter().map(|s| &s["id"]).collect();
    assert_eq!(ids, vec![&first["id"], &second["id"]]);
    let (_, _, targets) = server.call(Method::GET, "/v1/backup/targets", Some(&ada), None).await;
    let target = &targets["targets"][0];
    assert_eq!(target["last_snapshot"]["id"], second["id"], "{targets}");
    assert!(target["last_verified_at_ms"].as_u64().is_some(), "{targets}");
    assert!(target.get("backup_key").is_none() && !targets.to_string().contains("recovery"), "{targets}");

    // The directory holds the instance's own subdirectory only, and nothing readable in it.
    let subdirs: Vec<PathBuf> = std::fs::read_dir(root.path()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(subdirs.len(), 1, "{subdirs:?}");
    // Another owner's backups go to a subdirectory of their own, beside it, and leave Ada's as they were.
    let bob = server.user("bob").await;
    let (status, _, body) = server.call(Method::POST, "/v1/backup/targets", Some(&bob), Some(add.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "a target of its own, though the passphrase is the same: {body}");
    let (status, _, body) = server.call(Method::POST, "/v1/backup/snapshots", Some(&bob), None).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 2);
    let (_, _, listed) = server.call(Method::GET, "/v1/backup/targets/directory/snapshots", Some(&ada), None).await;
    assert_eq!(listed["snapshots"].as_array().unwrap().len(), 2, "{listed}");
    for file in files_under(root.path()) {
        let bytes = std::fs::read(&file).unwrap();
        for needle in [MARKER.as_bytes(), b"SQLite format", b"\"secret\""] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{} holds plaintext", file.display());
        }
    }

    // Everything comes back from the directory and the passphrase (or the recovery key) alone.
    let target: Arc<dyn selfcloud_backup::Target> = Arc::new(DirTarget::new(&subdirs[0]));
    for secret in [Secret::passphrase(PASSPHRASE), Secret::RecoveryKey(recovery.parse().unwrap())] {
        let repo = Repo::open(target.clone(), &secret).await.unwrap();
        let manifest = repo.snapshots().await.unwrap().pop().unwrap();
        assert_eq!(manifest.id, second["id"].as_str().unwrap());
        let (_scratch, store) = restored(&repo, &manifest, engine).await;
        let page = store.list(&collection(), "", 100, usize::MAX, None).unwrap();
        assert_eq!(page.records.len(), 40);
        assert_eq!(value_of(&page, 3), json!({"secret": "changed"}));
        // The access log comes back too.
        assert!(!store.read_log(None, 10).unwrap().is_empty(), "the access log is in the snapshot");
    }
    let err = Repo::open(target, &Secret::passphrase("not the passphrase at all")).await.err().unwrap();
    assert_eq!(err.code, selfcloud_core::ErrorCode::Forbidden);
}

/// Each instance's share of the backup directory is bounded: a snapshot past it is a 507, and
/// the owner's records are untouched.
#[tokio::test]
async fn a_snapshot_past_the_directory_quota_is_refused() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().to_owned();
    let server = Server::start_with(move |c| {
        c.egress.backup_dir_root = Some(dir);
        c.egress.backup_dir_max_bytes = 16 << 10;
    })
    .await;
    let ada = server.user("ada").await;
    for i in 0..20 {
        server.put_ok(&ada, &format!("/v1/storage/notes/n{i}"), json!({"n": i, "pad": "p".repeat(2000)})).await;
    }
    let add = json!({"kind": "directory", "passphrase": PASSPHRASE});
    let (status, _, body) = server.call(Method::POST, "/v1/backup/targets", Some(&ada), Some(add)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let (status, _, body) = server.call(Method::POST, "/v1/backup/snapshots", Some(&ada), None).await;
    assert_eq!(status.as_u16(), 507, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("backup directory is full"), "{body}");
    assert!(bytes_under(root.path()) <= 16 << 10);
    let (status, _, _) = server.call(Method::GET, "/v1/storage/notes/n3", Some(&ada), None).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn a_server_with_no_backup_root_keeps_no_directory_backups() {
    let server = Server::start().await;
    let ada = server.user("ada").await;
    let add = json!({"kind": "directory", "passphrase": PASSPHRASE});
    let (status, _, body) = server.call(Method::POST, "/v1/backup/targets", Some(&ada), Some(add)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("--backup-dir-root"), "{body}");
    let (_, _, targets) = server.call(Method::GET, "/v1/backup/targets", Some(&ada), None).await;
    assert_eq!(targets["targets"], json!([]));
}

const BUCKET: &str = "backups";
const SECRET_KEY: &str = "s3-secret-key-9f2c1e7a";

/// moto (installed by `./selfcloud test` in the test Python) serving S3 on loopback, with
/// [`BUCKET`] made; `None` (noted) when this run has no such Python and does not require one.
async fn moto() -> Option<Peer> {
    let python = match std::env::var_os("SELFCLOUD_TEST_PYTHON") {
        Some(python) => python,
        None if std::env::var_os(common::REQUIRE_MODEL_ENV).is_some() => {
            panic!("{} is set but SELFCLOUD_TEST_PYTHON is not", common::REQUIRE_MODEL_ENV)
        }
        None => {
            eprintln!("skipped: no SELFCLOUD_TEST_PYTHON with moto (`./selfcloud test` makes one)");
            return None;
        }
    };
    let port = free_port();
    let child = std::process::Command::new(python)
        .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("moto's server starts");
    let moto = Peer { child, port };
    let bucket = format!("http://127.0.0.1:{port}/{BUCKET}");
    for _ in 0..300 {
        if let Ok(made) = reqwest::Client::new().put(&bucket).send().await {
            assert!(made.status().is_success(), "making the bucket: {}", made.status());
            return Some(moto);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("moto's server did not come up on port {port}");
}

/// Plain HTTP to the bucket, as a user restoring on their own machine would reach it.
struct Http(reqwest::Client);

#[async_trait::async_trait]
impl selfcloud_backup::target::Transport for Http {
    async fn send(&self, request: http::Request<bytes::Bytes>) -> selfcloud_core::Result<http::Response<bytes::Bytes>> {
        let (head, body) = request.into_parts();
        let sent = self.0.request(head.method, head.uri.to_string()).body(body).send().await;
        let sent = sent.map_err(|e| selfcloud_core::Error::internal(e.to_string()))?;
        let status = sent.status();
        let bytes = sent.bytes().await.map_err(|e| selfcloud_core::Error::internal(e.to_string()))?;
        Ok(http::Response::builder().status(status).body(bytes).unwrap())
    }
}

/// Every object the bucket holds, by key, read without signing (moto does not check).
async fn bucket_objects(port: u16) -> Vec<(String, Vec<u8>)> {
    let base = format!("http://127.0.0.1:{port}/{BUCKET}");
    let list = reqwest::get(format!("{base}?list-type=2")).await.unwrap().text().await.unwrap();
    let mut out = Vec::new();
    for key in list.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()) {
        let bytes = reqwest::get(format!("{base}/{key}")).await.unwrap().bytes().await.unwrap().to_vec();
        out.push((key.to_owned(), bytes));
    }
    out
}

#[tokio::test]
async fn an_owner_backs_up_to_s3_through_the_egress_channel_and_restores_with_the_recovery_key_alone() {
    let Some(moto) = moto().await else { return };
    let endpoint = format!("http://127.0.0.1:{}", moto.port);
    let allowed = selfcloud_instance::protocol::egress::Origin::parse(&endpoint).unwrap();
    let server = Server::start_with(move |c| c.egress.allow = vec![allowed]).await;
    let ada = server.user("ada").await;
    for i in 0..30 {
        server
            .put_ok(&ada, &format!("/v1/storage/{MARKER}s/{MARKER}{i}"), json!({"secret": format!("{MARKER} {i}")}))
            .await;
    }
    let s3 = json!({"kind": "s3", "endpoint": endpoint, "bucket": BUCKET, "region": "us-east-1",
        "access_key_id": "AKIAADA", "secret_access_key": SECRET_KEY, "prefix": "ada/"});
    let mut add = s3.clone();
    add["passphrase"] = json!(PASSPHRASE);
    let (status, _, added) = server.call(Method::POST, "/v1/backup/targets", Some(&ada), Some(add.clone())).await;
    assert_eq!(status, StatusCode::CREATED, "{added}");
    let recovery = added["recovery_key"].as_str().unwrap().to_owned();
    let (status, _, taken) =
        server.call(Method::POST, "/v1/backup/snapshots", Some(&ada), Some(json!({"target": "s3"}))).await;
    assert_eq!(status, StatusCode::CREATED, "{taken}");
    assert_eq!(taken["snapshots"][0]["verified"], true, "{taken}");
    server.put_ok(&ada, &format!("/v1/storage/{MARKER}s/{MARKER}7"), json!({"secret": "changed"})).await;
    let (status, _, taken) = server.call(Method::POST, "/v1/backup/snapshots", Some(&ada), None).await;
    assert_eq!(status, StatusCode::CREATED, "{taken}");

    // The key is never shown again; the bucket holds sealed objects under random names only.
    let (_, _, targets) = server.call(Method::GET, "/v1/backup/targets", Some(&ada), None).await;
    assert_eq!(targets["targets"][0]["s3"]["bucket"], BUCKET, "{targets}");
    assert!(!targets.to_string().contains(SECRET_KEY), "{targets}");
    let objects = bucket_objects(moto.port).await;
    assert!(
        objects.iter().any(|(k, _)| k.starts_with("ada/packs/")),
        "{:?}",
        objects.iter().map(|o| &o.0).collect::<Vec<_>>()
    );
    for (key, bytes) in &objects {
        assert!(key.starts_with("ada/"), "{key}");
        selfcloud_backup::target::check_name(key.trim_start_matches("ada/")).unwrap();
        for needle in [MARKER.as_bytes(), b"SQLite format", b"\"secret\"", SECRET_KEY.as_bytes()] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{key} holds plaintext");
        }
    }

    // From the bucket and the recovery key alone, on another machine: every record.
    let mut s3 = s3;
    s3.as_object_mut().unwrap().remove("kind");
    let config: selfcloud_backup::target::S3Config = serde_json::from_value(s3).unwrap();
    let target = selfcloud_backup::target::S3Target::new(&config, Http(reqwest::Client::new())).unwrap();
    let repo = Repo::open(Arc::new(target), &Secret::RecoveryKey(recovery.parse().unwrap())).await.unwrap();
    let newest = repo.snapshots().await.unwrap().pop().unwrap();
    assert_eq!(newest.id, taken["snapshots"][0]["id"].as_str().unwrap());
    let (_scratch, store) = restored(&repo, &newest, EngineKind::Sqlite).await;
    let page = store.list(&collection(), "", 100, usize::MAX, None).unwrap();
    assert_eq!(page.records.len(), 30);
    assert_eq!(value_of(&page, 7), json!({"secret": "changed"}));
}

/// An S3 endpoint the operator did not allow-list is never reached: the target is refused.
#[tokio::test]
async fn an_s3_target_off_the_egress_allow_list_is_refused() {
    let Some(moto) = moto().await else { return };
    let server = Server::start().await;
    let ada = server.user("ada").await;
    let add = json!({"kind": "s3", "endpoint": format!("http://127.0.0.1:{}", moto.port), "bucket": BUCKET,
        "region": "us-east-1", "access_key_id": "AKIAADA", "secret_access_key": SECRET_KEY, "passphrase": PASSPHRASE});
    let (status, _, body) = server.call(Method::POST, "/v1/backup/targets", Some(&ada), Some(add)).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    assert!(bucket_objects(moto.port).await.is_empty());
    // A target that is not one is a 400.
    let bad = json!({"kind": "ftp", "passphrase": PASSPHRASE});
    let (status, _, body) = server.call(Method::POST, "/v1/backup/targets", Some(&ada), Some(bad)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}

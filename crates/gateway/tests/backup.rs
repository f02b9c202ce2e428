//! Backup through the gateway, on both runtimes: the owner adds a directory target under a
//! passphrase and takes snapshots, each proved by a drill; what the directory holds reads as
//! nothing, and opens with the passphrase alone into every record. Apps, and servers with no
//! backup root, get nothing.

mod common;

use common::Server;
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
    for i in 0..40 {
        server
            .put_ok(&ada, &format!("/v1/storage/{MARKER}s/{MARKER}{i}"), json!({"secret": format!("{MARKER} {i}")}))
            .await;
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
        let scratch = tempfile::tempdir().unwrap();
        let into = scratch.path().join("restored");
        repo.restore(&manifest, &into, Default::default()).await.unwrap();
        let key = selfcloud_store::DataKey::from_bytes(manifest.data_key);
        let kind = selfcloud_store::EngineKind::detect(&into).unwrap();
        assert_eq!(kind, engine);
        let store =
            selfcloud_store::Store::open(kind, &into, &key, selfcloud_store::StoreOptions { quota_bytes: u64::MAX })
                .unwrap();
        let collection = selfcloud_core::Collection::parse(&format!("{MARKER}s")).unwrap();
        let page = store.list(&collection, "", 100, usize::MAX, None).unwrap();
        assert_eq!(page.records.len(), 40);
        let changed = page.records.iter().find(|r| r.key.as_str() == format!("{MARKER}3")).unwrap();
        assert_eq!(serde_json::from_slice::<Value>(&changed.value).unwrap(), json!({"secret": "changed"}));
        // The access log comes back too.
        assert!(!store.read_log(None, 10).unwrap().is_empty(), "the access log is in the snapshot");
    }
    let err = Repo::open(target, &Secret::passphrase("not the passphrase at all")).await.err().unwrap();
    assert_eq!(err.code, selfcloud_core::ErrorCode::Forbidden);
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

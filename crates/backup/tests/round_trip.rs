//! A real store's snapshot, sent to a directory target and restored, on both engines: what
//! comes back is what was there, the target holds nothing readable, and every kind of damage
//! to what it holds is a clear error.

use async_trait::async_trait;
use selfcloud_backup::{DirTarget, KdfCost, Progress, Repo, Secret, Target};
use selfcloud_core::{Collection, ErrorCode, RecordKey, Result};
use selfcloud_store::{DataKey, EngineKind, Precondition, Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const PASSPHRASE: &str = "a long enough passphrase";
const CHEAP: KdfCost = KdfCost { memory_kib: 256, iterations: 1 };
/// Written into names and values; never to be found at the target.
const MARKER: &str = "zebracrossing";

struct Instance {
    _dir: tempfile::TempDir,
    key: DataKey,
    store: Store,
    kind: EngineKind,
}

fn instance(kind: EngineKind) -> Instance {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("instance");
    std::fs::create_dir(&path).unwrap();
    let key = DataKey::generate();
    let store = Store::create(kind, &path, &key, StoreOptions { quota_bytes: u64::MAX }).unwrap();
    Instance { _dir: dir, key, store, kind }
}

fn c(s: &str) -> Collection {
    Collection::parse(s).unwrap()
}
fn k(s: &str) -> RecordKey {
    RecordKey::parse(s).unwrap()
}

fn fill(i: &Instance, n: usize, tag: &str) {
    for r in 0..n {
        let value = format!("{{\"{MARKER}\":\"{tag}-{r}\",\"pad\":\"{}\"}}", "p".repeat(600));
        i.store
            .put(&c(&format!("{MARKER}s")), &k(&format!("{MARKER}-{r}")), value.as_bytes(), Precondition::None)
            .unwrap();
    }
    i.store.append_log(&[format!("{MARKER} log {tag}").into_bytes()], 100).unwrap();
}

fn records(store: &Store) -> Vec<(String, Vec<u8>)> {
    let page = store.scan(None, 100_000, usize::MAX).unwrap();
    page.records.into_iter().map(|r| (format!("{}/{}", r.collection, r.key), r.value)).collect()
}

/// A consistent copy of the instance's store, as the instance makes before a snapshot.
fn copy(i: &Instance, scratch: &Path) -> PathBuf {
    let into = scratch.join(format!("copy-{}", rand_suffix()));
    i.store.snapshot(&into).unwrap();
    into
}

fn rand_suffix() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    N.fetch_add(1, Ordering::Relaxed) as u64
}

fn opened(kind: EngineKind, dir: &Path, key: &DataKey) -> Store {
    Store::open(kind, dir, key, StoreOptions { quota_bytes: u64::MAX }).unwrap()
}

fn target_bytes(root: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for kind in ["keys", "packs", "snapshots"] {
        let Ok(entries) = std::fs::read_dir(root.join(kind)) else { continue };
        for e in entries {
            let p = e.unwrap().path();
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A scratch directory, and a repository set up at a directory target.
struct Setup {
    scratch: tempfile::TempDir,
    target_dir: tempfile::TempDir,
    target: Arc<dyn Target>,
    repo: Repo,
    recovery: selfcloud_backup::RecoveryKey,
}

async fn set_up() -> Setup {
    let (scratch, target_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let target: Arc<dyn Target> = Arc::new(DirTarget::new(target_dir.path()));
    let (repo, _, recovery) = Repo::init(target.clone(), PASSPHRASE, CHEAP).await.unwrap();
    Setup { scratch, target_dir, target, repo, recovery }
}

async fn round_trip(kind: EngineKind) {
    let i = instance(kind);
    fill(&i, 300, "first");
    let Setup { scratch, target_dir, target, repo, recovery } = set_up().await;
    let account = format!("{{\"username\":\"ada\",\"{MARKER}\":1}}");
    let progress = Arc::new(Progress::default());
    let first = repo
        .snapshot(&copy(&i, scratch.path()), account.clone(), *i.key.as_bytes(), 1, None, progress.clone())
        .await
        .unwrap();
    assert_eq!(progress.done(), progress.total());
    assert_eq!(progress.total(), first.bytes());
    let before = records(&i.store);
    assert_eq!(before.len(), 300);

    // A change to a few records: the next snapshot sends only their chunks.
    for r in [3, 150, 299] {
        i.store
            .put(&c(&format!("{MARKER}s")), &k(&format!("{MARKER}-{r}")), b"{\"changed\":true}", Precondition::None)
            .unwrap();
    }
    let grown_before: usize = target_bytes(target_dir.path()).iter().map(|(_, b)| b.len()).sum();
    let second = repo
        .snapshot(&copy(&i, scratch.path()), account.clone(), *i.key.as_bytes(), 2, Some(&first), Default::default())
        .await
        .unwrap();
    let grown: usize = target_bytes(target_dir.path()).iter().map(|(_, b)| b.len()).sum::<usize>() - grown_before;
    assert!(grown * 4 < grown_before, "the second snapshot sent {grown} bytes after {grown_before}");
    let after = records(&i.store);

    // Nothing readable at the target: no name, value, log entry or account field.
    for (path, bytes) in target_bytes(target_dir.path()) {
        assert!(!contains(&bytes, MARKER.as_bytes()), "{} holds plaintext", path.display());
        assert!(!contains(&bytes, b"SQLite format"), "{} holds a database page in the clear", path.display());
        assert!(!contains(&bytes, i.key.as_bytes()), "{} holds the data key", path.display());
    }

    // Opened again with the passphrase alone (a new process, nothing kept), or the recovery key.
    let by_passphrase = Repo::open(target.clone(), &Secret::passphrase(PASSPHRASE)).await.unwrap();
    let by_recovery = Repo::open(target.clone(), &Secret::RecoveryKey(recovery)).await.unwrap();
    let listed = by_passphrase.snapshots().await.unwrap();
    assert_eq!(listed.iter().map(|m| m.id.clone()).collect::<Vec<_>>(), vec![first.id.clone(), second.id.clone()]);
    for (repo, manifest, want) in [(&by_passphrase, &first, &before), (&by_recovery, &second, &after)] {
        let into = scratch.path().join(format!("restored-{}", manifest.id));
        repo.verify(manifest, Default::default()).await.unwrap();
        repo.restore(manifest, &into, Default::default()).await.unwrap();
        let key = DataKey::from_bytes(manifest.data_key);
        let store = opened(i.kind, &into, &key);
        store.verify().unwrap();
        assert_eq!(&records(&store), want);
        let log = store.read_log(None, 10).unwrap();
        assert!(String::from_utf8_lossy(&log[0].1).contains(MARKER), "the log comes back too");
        assert_eq!(manifest.account, account);
    }
}

#[tokio::test]
async fn sqlite_round_trip() {
    round_trip(EngineKind::Sqlite).await;
}

#[tokio::test]
async fn rocksdb_round_trip() {
    round_trip(EngineKind::Rocksdb).await;
}

#[tokio::test]
async fn a_wrong_secret_opens_nothing() {
    let target_dir = tempfile::tempdir().unwrap();
    let target: Arc<dyn Target> = Arc::new(DirTarget::new(target_dir.path()));
    let err = Repo::open(target.clone(), &Secret::passphrase(PASSPHRASE)).await.err().unwrap();
    assert_eq!(err.code, ErrorCode::NotFound, "{err:?}");
    Repo::init(target.clone(), PASSPHRASE, CHEAP).await.unwrap();
    let err = Repo::open(target.clone(), &Secret::passphrase("another long passphrase")).await.err().unwrap();
    assert_eq!(err.code, ErrorCode::Forbidden, "{err:?}");
    let err = Repo::open(target.clone(), &Secret::RecoveryKey(selfcloud_backup::RecoveryKey::generate())).await.err();
    assert_eq!(err.unwrap().code, ErrorCode::Forbidden);
    // Set up once: a second setup would orphan what is there.
    let err = Repo::init(target, PASSPHRASE, CHEAP).await.err().unwrap();
    assert_eq!(err.code, ErrorCode::Conflict);
}

/// What a test does to an object's bytes.
type Damage = Box<dyn Fn(&mut Vec<u8>)>;

/// Every way a target's objects can be damaged is found, by a check and by a restore, and named.
#[tokio::test]
async fn tampered_truncated_and_missing_objects_are_errors() {
    let i = instance(EngineKind::Sqlite);
    fill(&i, 50, "x");
    let Setup { scratch, target_dir, repo, .. } = set_up().await;
    let m = repo.snapshot(&copy(&i, scratch.path()), "{}".into(), [0; 32], 1, None, Default::default()).await.unwrap();
    let pack = target_dir.path().join(&m.packs[0]);
    let original = std::fs::read(&pack).unwrap();
    let damage: [(&str, Damage); 3] = [
        ("tampered", Box::new(|b: &mut Vec<u8>| b[100] ^= 0x40)),
        ("truncated", Box::new(|b: &mut Vec<u8>| b.truncate(b.len() / 2))),
        ("missing", Box::new(|_: &mut Vec<u8>| {})),
    ];
    for (what, change) in damage {
        if what == "missing" {
            std::fs::remove_file(&pack).unwrap();
        } else {
            let mut bytes = original.clone();
            change(&mut bytes);
            std::fs::write(&pack, bytes).unwrap();
        }
        let err = repo.verify(&m, Default::default()).await.unwrap_err();
        assert_eq!(err.code, ErrorCode::UpstreamFailed, "{what}: {err:?}");
        assert!(err.message.contains("damaged") && err.message.contains(what), "{what}: {}", err.message);
        let into = scratch.path().join(format!("r-{what}"));
        assert_eq!(repo.restore(&m, &into, Default::default()).await.unwrap_err().code, ErrorCode::UpstreamFailed);
    }
    std::fs::write(&pack, &original).unwrap();
    repo.verify(&m, Default::default()).await.unwrap();
    // The manifest itself.
    let manifest = target_dir.path().join(format!("snapshots/{}", m.id));
    let mut bytes = std::fs::read(&manifest).unwrap();
    bytes[30] ^= 1;
    std::fs::write(&manifest, &bytes).unwrap();
    let err = repo.manifest(&m.id).await.unwrap_err();
    assert!(err.message.contains("damaged"), "{err:?}");
    assert_eq!(repo.snapshots().await.unwrap_err().code, ErrorCode::UpstreamFailed);
}

/// A target that fails every write after the first `ok`.
struct Failing {
    inner: DirTarget,
    ok: AtomicUsize,
}

#[async_trait]
impl Target for Failing {
    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        if self.ok.fetch_sub(1, Ordering::Relaxed) == 0 {
            self.ok.store(0, Ordering::Relaxed);
            return Err(selfcloud_core::Error::unavailable("the target is down", Default::default()));
        }
        self.inner.put(name, bytes).await
    }
    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.inner.get(name).await
    }
    async fn list(&self, kind: &str) -> Result<Vec<String>> {
        self.inner.list(kind).await
    }
    async fn delete(&self, name: &str) -> Result<()> {
        self.inner.delete(name).await
    }
}

/// A snapshot cut short leaves no snapshot, only packs no snapshot names, which a collection
/// removes; one removed snapshot's packs go, its successor's stay and restore.
#[tokio::test]
async fn a_snapshot_cut_short_leaves_nothing_a_collection_keeps() {
    let i = instance(EngineKind::Sqlite);
    // About 12 MB: two packs of chunks. Random values, so no two chunks are alike.
    for r in 0..400 {
        let value: String = (0..30_000).map(|_| char::from(b'a' + rand::random::<u8>() % 26)).collect();
        i.store.put(&c("blobs"), &k(&format!("b{r}")), format!("\"{value}\"").as_bytes(), Precondition::None).unwrap();
    }
    let scratch = tempfile::tempdir().unwrap();
    let target_dir = tempfile::tempdir().unwrap();
    let failing = Arc::new(Failing { inner: DirTarget::new(target_dir.path()), ok: AtomicUsize::new(3) });
    let target: Arc<dyn Target> = failing.clone();
    // Two key objects, then one pack; the second pack fails.
    let (repo, _, _) = Repo::init(target.clone(), PASSPHRASE, CHEAP).await.unwrap();
    let source = copy(&i, scratch.path());
    let err = repo.snapshot(&source, "{}".into(), [0; 32], 1, None, Default::default()).await.unwrap_err();
    assert_eq!(err.code, ErrorCode::Unavailable, "{err:?}");
    assert!(repo.snapshots().await.unwrap().is_empty());
    assert_eq!(target.list("packs").await.unwrap().len(), 1);
    assert_eq!(repo.collect_garbage().await.unwrap(), 1);
    failing.ok.store(usize::MAX / 2, Ordering::Relaxed);
    let first = repo.snapshot(&source, "{}".into(), [0; 32], 1, None, Default::default()).await.unwrap();
    assert!(first.packs.len() >= 2, "{} packs", first.packs.len());
    i.store.put(&c("blobs"), &k("b1"), b"\"new\"", Precondition::None).unwrap();
    let second = repo
        .snapshot(&copy(&i, scratch.path()), "{}".into(), [0; 32], 2, Some(&first), Default::default())
        .await
        .unwrap();
    repo.forget(&first.id).await.unwrap();
    let dropped = repo.collect_garbage().await.unwrap();
    let kept = target.list("packs").await.unwrap();
    assert_eq!(kept.len(), second.packs.len(), "dropped {dropped}");
    let into = scratch.path().join("restored");
    repo.restore(&second, &into, Default::default()).await.unwrap();
    let store = opened(EngineKind::Sqlite, &into, &i.key);
    assert_eq!(records(&store), records(&i.store));
    // With no snapshot left, nothing is.
    repo.forget(&second.id).await.unwrap();
    assert_eq!(repo.collect_garbage().await.unwrap(), kept.len());
    assert!(target.list("packs").await.unwrap().is_empty());
}

/// A manifest longer than one object goes in parts: it reads back whole, a collection keeps its
/// parts, and a damaged part is named like a damaged pack.
#[tokio::test]
async fn a_long_manifest_is_stored_in_parts() {
    let i = instance(EngineKind::Sqlite);
    fill(&i, 300, "parts");
    let Setup { scratch, target_dir, target, repo, .. } = set_up().await;
    let repo = repo.with_manifest_parts_of(1024);
    let m = repo.snapshot(&copy(&i, scratch.path()), "{}".into(), [0; 32], 1, None, Default::default()).await.unwrap();
    let packs = target.list("packs").await.unwrap();
    assert!(packs.len() > m.packs.len() + 1, "{} objects for {} packs", packs.len(), m.packs.len());
    assert_eq!(repo.manifest(&m.id).await.unwrap(), m);
    assert_eq!(repo.collect_garbage().await.unwrap(), 0, "the parts are named");
    let into = scratch.path().join("restored");
    repo.restore(&m, &into, Default::default()).await.unwrap();
    assert_eq!(records(&opened(EngineKind::Sqlite, &into, &i.key)), records(&i.store));
    let part = packs.iter().find(|p| !m.packs.contains(p)).unwrap();
    let path = target_dir.path().join(part);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[10] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = repo.manifest(&m.id).await.unwrap_err();
    assert!(err.message.contains("damaged"), "{err:?}");
}

//! `selfcloud backup ls|verify|restore`, the real binary, on a directory target written by an
//! instance's backup: with the passphrase (or the recovery key) alone it lists, checks and
//! restores the files byte for byte; a wrong passphrase or a damaged object is a clear error
//! and a non-zero exit, and writes nothing.

use selfcloud_backup::{DirTarget, KdfCost, Repo, Target};
use selfcloud_core::{Collection, RecordKey};
use selfcloud_store::{DataKey, EngineKind, Precondition, Store, StoreOptions};
use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;

const PASSPHRASE: &str = "the owner's own passphrase";

fn backup(args: &[&str], passphrase: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_selfcloud"));
    cmd.arg("backup").args(args).env_remove("SELFCLOUD_BACKUP_PASSPHRASE").env_remove("SELFCLOUD_BACKUP_RECOVERY_KEY");
    if let Some(p) = passphrase {
        cmd.env("SELFCLOUD_BACKUP_PASSPHRASE", p);
    }
    cmd.output().unwrap()
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn same_files(a: &Path, b: &Path) {
    for entry in std::fs::read_dir(a).unwrap() {
        let name = entry.unwrap().file_name();
        assert_eq!(std::fs::read(a.join(&name)).unwrap(), std::fs::read(b.join(&name)).unwrap(), "{name:?}");
    }
}

#[tokio::test]
async fn the_cli_lists_verifies_and_restores_with_the_passphrase_alone() {
    let work = tempfile::tempdir().unwrap();
    let instance = work.path().join("instance");
    std::fs::create_dir(&instance).unwrap();
    let store =
        Store::create(EngineKind::Sqlite, &instance, &DataKey::generate(), StoreOptions { quota_bytes: u64::MAX })
            .unwrap();
    for i in 0..200 {
        let key = RecordKey::parse(&format!("r{i}")).unwrap();
        store
            .put(&Collection::parse("notes").unwrap(), &key, format!("{{\"n\":{i}}}").as_bytes(), Precondition::None)
            .unwrap();
    }
    let copy = work.path().join("copy");
    store.snapshot(&copy).unwrap();
    let target_dir = work.path().join("target");
    let target: Arc<dyn Target> = Arc::new(DirTarget::new(&target_dir));
    let (repo, _, recovery) = Repo::init(target, PASSPHRASE, KdfCost { memory_kib: 256, iterations: 1 }).await.unwrap();
    let manifest =
        repo.snapshot(&copy, "{}".into(), [0; 32], 1_796_000_000_000, None, Default::default()).await.unwrap();
    let dir = target_dir.to_str().unwrap();

    let listed = backup(&["ls", "--dir", dir], Some(PASSPHRASE));
    assert!(listed.status.success(), "{}", text(&listed));
    assert!(text(&listed).contains(&manifest.id), "{}", text(&listed));
    let verified = backup(&["verify", "--dir", dir, "--recovery-key", &recovery.to_string()], None);
    assert!(verified.status.success(), "{}", text(&verified));
    let into = work.path().join("restored");
    let restored = backup(&["restore", "--dir", dir, "--into", into.to_str().unwrap()], Some(PASSPHRASE));
    assert!(restored.status.success(), "{}", text(&restored));
    same_files(&copy, &into);

    // A wrong passphrase opens nothing and writes nothing.
    let elsewhere = work.path().join("elsewhere");
    let wrong = backup(&["restore", "--dir", dir, "--into", elsewhere.to_str().unwrap()], Some("not the passphrase"));
    assert!(!wrong.status.success());
    assert!(text(&wrong).contains("opens none of this target's keys"), "{}", text(&wrong));
    assert!(!elsewhere.exists());
    // A damaged pack is found and named.
    let pack = target_dir.join(&manifest.packs[0]);
    let mut bytes = std::fs::read(&pack).unwrap();
    bytes[64] ^= 1;
    std::fs::write(&pack, bytes).unwrap();
    let damaged = backup(&["verify", "--dir", dir], Some(PASSPHRASE));
    assert!(!damaged.status.success());
    assert!(text(&damaged).contains("damaged"), "{}", text(&damaged));
}

//! `selfcloud bench backup`: one instance's store backed up beside restic (the peer), on the
//! same files in the same run, both to a directory on the same disk.
//!
//! A store of `--mib` MiB of 1 KiB records is copied as of one moment (`Store::snapshot`, what
//! a snapshot always starts from; timed on its own), then each side backs the copy up: the first
//! snapshot; after 1 % of the pages changed by scattered record updates; after 1 % appended as
//! new records. Each figure is the side's own time and how much its repository grew. Last, each
//! restores the newest snapshot into an empty directory. restic runs with its defaults (repository
//! v2, compression auto) and the same password-derived key setup is done before timing on both.

use super::progress;
use anyhow::{ensure, Context};
use selfcloud_backup::{DirTarget, KdfCost, Manifest, Repo, Target};
use selfcloud_core::{Collection, RecordKey};
use selfcloud_store::{DataKey, EngineKind, ImportRecord, Precondition, Store, StoreOptions};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Instant;

#[derive(clap::Args, Debug, Clone)]
pub struct BackupBenchArgs {
    /// Size of the instance's store, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub mib: u64,
    /// The restic binary to run beside (Debian's `restic` package).
    #[arg(long, default_value = "restic")]
    pub restic: PathBuf,
    /// Where the store, its copies and both repositories go (a directory on the disk to measure).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Also print the figures as one JSON line after the table.
    #[arg(long)]
    pub json: bool,
}

const PASSWORD: &str = "a benchmark passphrase";
const COLLECTION: &str = "bench";

/// One side's figures for one step.
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
struct Step {
    secs: f64,
    grown_bytes: u64,
}

pub async fn run(args: BackupBenchArgs) -> anyhow::Result<()> {
    ensure!(args.mib >= 16, "--mib must be at least 16");
    let version = Command::new(&args.restic).arg("version").output();
    let version = match version {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout).trim().to_owned(),
        _ => anyhow::bail!("no restic at {} (Debian: apt install restic)", args.restic.display()),
    };
    let scratch = match &args.dir {
        Some(dir) => tempfile::tempdir_in(dir)?,
        None => tempfile::tempdir()?,
    };
    let root = scratch.path();
    let instance = root.join("instance");
    std::fs::create_dir(&instance)?;
    let key = DataKey::generate();
    let store = Store::create(EngineKind::Sqlite, &instance, &key, StoreOptions { quota_bytes: u64::MAX })?;
    let records = fill(&store, args.mib)?;
    let copy = root.join("copy");
    let copy_secs = fresh_copy(&store, &copy)?;
    let size = bytes_under(&copy);
    progress(format!("a store of {records} records, {} MiB copied as of one moment in {copy_secs:.2} s", size >> 20));

    let ours_dir = root.join("ours");
    let target: Arc<dyn Target> = Arc::new(DirTarget::new(&ours_dir));
    let (repo, _, _) =
        Repo::init(target, PASSWORD, KdfCost::default()).await.map_err(|e| anyhow::anyhow!(e.message))?;
    let theirs = root.join("restic");
    restic(&args.restic, &theirs, &["init"])?;

    let mut ours = Vec::new();
    let mut peer = Vec::new();
    let mut last: Option<Manifest> = None;
    let steps = ["first snapshot", "1 % scattered change", "1 % appended"];
    for (i, step) in steps.iter().enumerate() {
        match i {
            1 => change_scattered(&store, records)?,
            2 => append(&store, records, size / 100)?,
            _ => {}
        }
        if i > 0 {
            fresh_copy(&store, &copy)?;
        }
        progress(format!("{step}: ours"));
        let before = bytes_under(&ours_dir);
        let started = Instant::now();
        let manifest = repo
            .snapshot(&copy, "{}".into(), *key.as_bytes(), i as u64, last.as_ref(), Default::default())
            .await
            .map_err(|e| anyhow::anyhow!(e.message))?;
        ours.push(Step { secs: started.elapsed().as_secs_f64(), grown_bytes: bytes_under(&ours_dir) - before });
        last = Some(manifest);
        progress(format!("{step}: restic"));
        let before = bytes_under(&theirs);
        let started = Instant::now();
        restic(&args.restic, &theirs, &["backup", "--quiet", copy.to_str().context("a UTF-8 path")?])?;
        peer.push(Step { secs: started.elapsed().as_secs_f64(), grown_bytes: bytes_under(&theirs) - before });
    }

    progress("restore: ours");
    let started = Instant::now();
    let into = root.join("restored-ours");
    repo.restore(last.as_ref().expect("three snapshots"), &into, Default::default())
        .await
        .map_err(|e| anyhow::anyhow!(e.message))?;
    let ours_restore = started.elapsed().as_secs_f64();
    progress("restore: restic");
    let started = Instant::now();
    let into = root.join("restored-restic");
    restic(
        &args.restic,
        &theirs,
        &["restore", "latest", "--quiet", "--target", into.to_str().context("a UTF-8 path")?],
    )?;
    let peer_restore = started.elapsed().as_secs_f64();

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!("selfcloud bench backup: a {} MiB SQLite store, beside {version}", size >> 20);
    println!("consistent copy (both sides start from it): {copy_secs:.2} s");
    println!(
        "{:<22} {:>10} {:>12} {:>10} {:>12} {:>8} {:>14}",
        "step", "ours s", "ours grew", "restic s", "restic grew", "speed", "grew, of size"
    );
    for (i, step) in steps.iter().enumerate() {
        let (o, p) = (ours[i], peer[i]);
        println!(
            "{:<22} {:>10.2} {:>9.1} MiB {:>10.2} {:>9.1} MiB {:>7.2}x {:>6.2}% /{:>5.2}%",
            step,
            o.secs,
            mib(o.grown_bytes),
            p.secs,
            mib(p.grown_bytes),
            p.secs / o.secs,
            100.0 * o.grown_bytes as f64 / size as f64,
            100.0 * p.grown_bytes as f64 / size as f64,
        );
    }
    println!(
        "{:<22} {:>10.2} {:>12} {:>10.2} {:>12} {:>7.2}x",
        "restore newest",
        ours_restore,
        "",
        peer_restore,
        "",
        peer_restore / ours_restore
    );
    println!(
        "first snapshot throughput: ours {:.0} MiB/s, restic {:.0} MiB/s",
        mib(size) / ours[0].secs,
        mib(size) / peer[0].secs
    );
    if args.json {
        let figures = serde_json::json!({
            "bytes": size, "copy_secs": copy_secs, "ours": ours, "restic": peer,
            "restore_secs": {"ours": ours_restore, "restic": peer_restore}, "restic_version": version,
        });
        println!("{figures}");
    }
    Ok(())
}

/// Records of 1 KiB (sealed, as an instance keeps them) until the store holds `mib` MiB.
fn fill(store: &Store, mib: u64) -> anyhow::Result<usize> {
    let value = super::record_value().to_vec();
    let records = ((mib << 20) / 1200) as usize;
    progress(format!("writing {records} records"));
    let collection = Collection::parse(COLLECTION)?;
    let rows = (0..records).map(|i| {
        Ok(ImportRecord {
            collection: collection.clone(),
            key: RecordKey::parse(&key_of(i)).expect("a key"),
            value: value.clone(),
        })
    });
    store.import(rows)?;
    Ok(records)
}

fn key_of(i: usize) -> String {
    format!("k{i:08}")
}

/// A record in about every hundredth page rewritten, at random.
fn change_scattered(store: &Store, records: usize) -> anyhow::Result<()> {
    let collection = Collection::parse(COLLECTION)?;
    let mut rng = super::load::Rng(7);
    // About three 1 KiB records to a 4 KiB page: a hundredth of the pages is a 300th of them.
    let changes = records / 300;
    progress(format!("changing {changes} records scattered through the store"));
    let mut value = super::record_value().to_vec();
    for n in 0..changes {
        value[10..18].copy_from_slice(&(n as u64).to_le_bytes().map(|b| b'a' + b % 26));
        let key = RecordKey::parse(&key_of(rng.below(records)))?;
        store.put(&collection, &key, &value, Precondition::None)?;
    }
    Ok(())
}

/// New records of about `bytes` in all.
fn append(store: &Store, records: usize, bytes: u64) -> anyhow::Result<()> {
    let collection = Collection::parse(COLLECTION)?;
    let value = super::record_value().to_vec();
    let count = (bytes / 1200) as usize;
    progress(format!("appending {count} records"));
    for n in 0..count {
        store.put(&collection, &RecordKey::parse(&key_of(records + n))?, &value, Precondition::None)?;
    }
    Ok(())
}

/// Replaces `copy` with the store as of now; the seconds it took.
fn fresh_copy(store: &Store, copy: &Path) -> anyhow::Result<f64> {
    if copy.exists() {
        std::fs::remove_dir_all(copy)?;
    }
    let started = Instant::now();
    store.snapshot(copy)?;
    Ok(started.elapsed().as_secs_f64())
}

fn restic(bin: &Path, repo: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(bin)
        .args(["--repo", repo.to_str().context("a UTF-8 path")?])
        .args(args)
        .env("RESTIC_PASSWORD", PASSWORD)
        .env("RESTIC_CACHE_DIR", repo.with_extension("cache"))
        .output()?;
    ensure!(out.status.success(), "restic {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(())
}

fn bytes_under(root: &Path) -> u64 {
    let mut total = 0;
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            match entry.file_type() {
                Ok(t) if t.is_dir() => dirs.push(entry.path()),
                Ok(t) if t.is_file() => total += entry.metadata().map_or(0, |m| m.len()),
                _ => {}
            }
        }
    }
    total
}

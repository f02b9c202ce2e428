//! Disks from inside an instance: code in one instance fills its disk, and every other user
//! keeps working; a host disk that fills anyway answers 507 and loses no audit entry. The real
//! binary serves under `--runtime process`; probes (feature `attack-probes`) do the filling.
#![cfg(all(target_os = "linux", feature = "attack-probes"))]

mod walls;

use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use walls::*;

/// What `bytes` of the fill probe's detail say it wrote.
fn written(outcome: &Value) -> u64 {
    let detail = outcome["detail"].as_str().unwrap();
    detail.strip_prefix("wrote ").and_then(|r| r.split(' ').next()).and_then(|n| n.parse().ok()).unwrap()
}

/// A PUT's status and error code (`""` on success).
async fn put_code(up: &Up, user: &User, key: &str, value: Value) -> (u16, String) {
    let url = format!("{}/v1/storage/notes/{key}", up.base);
    let resp = up.http.put(url).bearer_auth(&user.token).json(&value).send().await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or("").to_owned())
}

async fn sign_up(up: &Up, name: &str) -> (u16, String) {
    let body = json!({"username": name, "password": PASSWORD});
    let resp = up.http.post(format!("{}/v1/accounts", up.base)).json(&body).send().await.unwrap();
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["error"]["code"].as_str().unwrap_or("").to_owned())
}

fn root() -> bool {
    // SAFETY: reads this process's effective uid.
    unsafe { libc::geteuid() == 0 }
}

/// A server running as root gives each instance a disk of its tier's size: code in it that
/// fills it stops there, having taken no more of the host's disk; its own writes then answer
/// 507 `disk_full` and lose nothing acknowledged; the other users write and sign up as before;
/// room made, it writes again.
#[tokio::test]
async fn an_instance_that_fills_its_disk_fills_only_its_own() {
    if !root() || selfcloud_sandbox::image::mkfs().is_err() {
        eprintln!("skipped: disk images need a server running as root and mkfs.ext4");
        return;
    }
    let home = tempfile::tempdir().unwrap();
    let up = start_with(home.path(), &["--free-disk-mib", "48", "--instance-disk-images", "on"]);
    let (ada, bob) = (up.user("ada").await, up.user("bob").await);
    assert_eq!(up.put(&ada, "kept", json!("acknowledged before")).await, 200);
    assert_eq!(up.put(&bob, "b", json!(1)).await, 200);
    let image = selfcloud_control::disk::image_path(&up.home, ada.instance);
    assert_eq!(std::fs::metadata(&image).unwrap().len(), 48 << 20, "its disk is its tier's size");

    let fill = up.probe(&ada, json!({"probe": "fill_disk", "path": "/instance/fill", "bytes": 1u64 << 30})).await;
    let fill = fill.unwrap();
    assert_eq!(fill["got_through"], false, "it wrote a GiB on a 48 MiB disk: {fill}");
    assert!(fill["detail"].as_str().unwrap().contains("No space left"), "{fill}");
    let wrote = written(&fill);
    assert!((20 << 20..48 << 20).contains(&wrote), "it filled what it had, no more: {wrote} bytes");
    let taken = std::fs::metadata(&image).unwrap().blocks() * 512;
    assert!(taken <= 48 << 20, "the host's disk gave it {taken} bytes");

    // Its own write finds no room: 507 disk_full, nothing written, the earlier write intact.
    let big = json!("x".repeat(512 * 1024));
    assert_eq!(put_code(&up, &ada, "big", big.clone()).await, (507, "disk_full".into()));
    assert_eq!(up.get(&ada, "big").await.0, 404);
    assert_eq!(up.get(&ada, "kept").await, (200, json!("acknowledged before")));
    // Everyone else is untouched.
    assert_eq!(up.put(&bob, "b2", big.clone()).await, 200);
    assert_eq!(sign_up(&up, "cyd").await.0, 201);

    // Room made, it writes again.
    let removed = up.probe(&ada, json!({"probe": "remove", "path": "/instance/fill"})).await.unwrap();
    assert_eq!(removed["got_through"], true, "{removed}");
    assert_eq!(put_code(&up, &ada, "big", big).await.0, 200);
}

/// Unmounts the small filesystem a test put the home on.
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// A host disk that fills anyway (here a home on a 96 MiB filesystem, instances without disks
/// of their own) answers every write, sign-up and log-in with 507 `disk_full` and a clear
/// message, never a bare 500.
#[tokio::test]
async fn a_full_host_disk_answers_507_not_500() {
    if !root() || selfcloud_sandbox::image::mkfs().is_err() {
        eprintln!("skipped: mounting the small home needs root and mkfs.ext4");
        return;
    }
    let base = tempfile::tempdir().unwrap();
    let home = base.path().join("home");
    std::fs::create_dir(&home).unwrap();
    // An ext4 of its own (not a tmpfs: that is memory, charged to the instance that fills it).
    let disk = base.path().join("home.ext4");
    let made = std::process::Command::new("mkfs.ext4").args(["-q", "-F", "-m", "0"]).arg(&disk).arg("96M").status();
    let mounted = std::process::Command::new("mount").args(["-o", "loop"]).arg(&disk).arg(&home).status();
    assert!(made.unwrap().success() && mounted.unwrap().success());
    let _mounted = Mounted(home.clone());
    let up = start_with(&home, &["--instance-disk-images", "off"]);
    let (ada, bob) = (up.user("ada").await, up.user("bob").await);
    assert_eq!(up.put(&ada, "before", json!(1)).await, 200);
    assert_eq!(up.put(&bob, "before", json!(1)).await, 200);

    // Ada's instance, which has no disk of its own here, fills the host's.
    let fill = up.probe(&ada, json!({"probe": "fill_disk", "path": "/instance/fill", "bytes": 1u64 << 30})).await;
    assert_eq!(fill.unwrap_or_else(|e| panic!("the fill probe: {e}"))["got_through"], false);

    let big = json!("x".repeat(512 * 1024));
    let (status, code) = put_code(&up, &bob, "during", big).await;
    assert_eq!((status, code.as_str()), (507, "disk_full"));
    let (status, code) = sign_up(&up, "cyd").await;
    assert_eq!((status, code.as_str()), (507, "disk_full"), "sign-up on a full disk");
    let resp = up.http.post(format!("{}/v1/sessions", up.base)).json(&json!({"username": "bob", "password": PASSWORD}));
    let resp = resp.send().await.unwrap();
    assert_ne!(resp.status().as_u16(), 500, "a log-in on a full disk: {}", resp.text().await.unwrap());

    // Room again: sign-up works once more.
    let removed = up.probe(&ada, json!({"probe": "remove", "path": "/instance/fill"})).await.unwrap();
    assert_eq!(removed["got_through"], true, "{removed}");
    assert_eq!(sign_up(&up, "cyd").await.0, 201);
}

/// Audit entries an instance cannot take (its disk full: here its access log made to fail as a
/// full disk does) wait and are written once it can, in order, none dropped.
#[tokio::test]
async fn audit_entries_an_instance_cannot_take_wait_until_it_can() {
    let home = tempfile::tempdir().unwrap();
    let up = start(home.path());
    let ada = up.user("ada").await;
    assert_eq!(up.put(&ada, "before", json!(1)).await, 200);
    let set = |on: bool| json!({"probe": "audit_unwritable", "unwritable": on});
    assert_eq!(up.probe(&ada, set(true)).await.unwrap()["got_through"], true);
    for key in ["during-1", "during-2", "during-3"] {
        assert_eq!(up.put(&ada, key, json!(key)).await, 200);
    }
    let logged = |log: &Value| -> Vec<String> {
        let entries = log["entries"].as_array().cloned().unwrap_or_default();
        entries.iter().filter_map(|e| e["path"].as_str().map(str::to_owned)).filter(|p| p.contains("during")).collect()
    };
    let read = || async {
        let resp = up.http.get(format!("{}/v1/audit", up.base)).bearer_auth(&ada.token).send().await.unwrap();
        resp.json::<Value>().await.unwrap()
    };
    // While it cannot take them they are not in its log (reading it flushes the queue first).
    assert_eq!(logged(&read().await), Vec::<String>::new());
    assert_eq!(up.probe(&ada, set(false)).await.unwrap()["got_through"], true);
    let mut seen = Vec::new();
    for _ in 0..100 {
        seen = logged(&read().await);
        if seen.len() >= 3 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Newest first, as the log reads.
    let want: Vec<String> = (1..=3).rev().map(|n| format!("/v1/storage/notes/during-{n}")).collect();
    assert_eq!(seen, want, "every entry kept, in order");
}

/// Not a check but a measurement (run it with `--ignored --nocapture`): one user's 1 KiB PUTs,
/// their p50 and p90 while the instance is quiet and while another instance writes 256 MiB and
/// fsyncs it again and again, with the tier's I/O limits and without them.
#[tokio::test]
#[ignore]
async fn measure_a_neighbours_put_latency_under_a_copy_and_fsync_burst() {
    for (label, flags) in [
        ("unbounded", ["--free-io-mib-per-sec", "0", "--free-io-ops-per-sec", "0"]),
        ("tier limits (default)", ["--free-io-mib-per-sec", "64", "--free-io-ops-per-sec", "1000"]),
    ] {
        let home = tempfile::tempdir().unwrap();
        let up = std::sync::Arc::new(start_with(home.path(), &flags));
        let (ada, bob) = (up.user("ada").await, up.user("bob").await);
        assert_eq!(up.put(&ada, "a", json!(1)).await, 200);
        let puts = |n: usize| {
            let (up, token) = (up.clone(), bob.token.clone());
            async move {
                let mut took = Vec::with_capacity(n);
                for i in 0..n {
                    let started = std::time::Instant::now();
                    let url = format!("{}/v1/storage/notes/k{i}", up.base);
                    let resp = up.http.put(url).bearer_auth(&token).json(&json!("x".repeat(1024))).send().await;
                    assert_eq!(resp.unwrap().status(), 200);
                    took.push(started.elapsed().as_secs_f64() * 1e3);
                }
                took.sort_by(|a, b| a.partial_cmp(b).unwrap());
                (took[n / 2], took[n * 9 / 10])
            }
        };
        let quiet = puts(300).await;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let burst = {
            let (up, stop) = (up.clone(), stop.clone());
            let ada = User { token: ada.token.clone(), instance: ada.instance };
            tokio::spawn(async move {
                let mut rounds = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let p = json!({"probe": "fill_disk", "path": "/instance/burst", "bytes": 256u64 << 20});
                    let out = up.probe(&ada, p).await.unwrap();
                    rounds.push(out["detail"].as_str().unwrap().to_owned());
                    up.probe(&ada, json!({"probe": "remove", "path": "/instance/burst"})).await.unwrap();
                }
                rounds
            })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        let busy = puts(300).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let rounds = burst.await.unwrap();
        println!(
            "{label}: neighbour PUT p50/p90 quiet {:.2}/{:.2} ms, under the burst {:.2}/{:.2} ms; bursts: {rounds:?}",
            quiet.0, quiet.1, busy.0, busy.1
        );
    }
}

//! Attacks from inside an instance process: the real binary serves under `--runtime process`,
//! and probes (feature `attack-probes`, test builds only) run attack code inside one user's
//! instance. Each attack must fail, and the other instances must keep serving. Then an instance
//! is killed mid-request: that caller gets 503, the instance comes back, nothing acknowledged
//! is lost.
#![cfg(all(target_os = "linux", feature = "attack-probes"))]

mod walls;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use walls::*;

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
    // The process the server started (the pid it reports) stays outside the pid namespace only
    // to wait for the instance, its one child: it is behind a seccomp filter (mode 2) with no
    // privilege to gain, as the instance is.
    for pid in [bob_pid, children(bob_pid)] {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        for line in ["Seccomp:\t2", "NoNewPrivs:\t1"] {
            assert!(status.lines().any(|l| l == line), "{pid}: no {line:?} in its status:\n{status}");
        }
    }

    // The probe itself works: its own directory is writable, so a refusal below means the walls.
    let own = up.probe(&ada, json!({"probe": "write", "path": "/instance/probe.txt"})).await.unwrap();
    assert_eq!(own["got_through"], true, "{own}");

    let home_path = home.path().to_str().unwrap();
    let bob_dir = up.dir(&bob);
    let bob_dir = bob_dir.to_str().unwrap();
    for path in [
        selfcloud_control::keystore::key_file_path(&up.home, bob.instance).display().to_string(),
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
    // The chat model is the shared engine's alone (`--llm-engine shared`, the default): not in
    // an instance's view at all.
    if let Some(model) = test_model() {
        let why = up.refused(&ada, json!({"probe": "read", "path": model})).await;
        assert!(why.contains("No such file"), "the chat model is in the view: {why}");
    }
    // The embedding model is, read-only: every instance maps the same weights and none can
    // change them for the others.
    if let Some(model) = test_embed_model() {
        up.refused(&ada, json!({"probe": "write", "path": model})).await;
        let models = model.parent().unwrap();
        // Its directory holds nothing else to see: Landlock refuses to list it (the rule is on the
        // file), and without Landlock only the shared files are there.
        let seen = up.probe(&ada, json!({"probe": "list", "path": models})).await.unwrap();
        if seen["got_through"] == true {
            let names: Vec<String> = serde_json::from_str(seen["detail"].as_str().unwrap()).unwrap();
            assert!(names.iter().all(|n| n.ends_with(".gguf")), "{seen}");
        }
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
    // Nor see, through what instances share, what the others do: which pages of a file mapped
    // read-only by every instance (the model) are cached, nor evict them to watch them come back;
    // nor the host's load and memory, nor its disks.
    let mapped: Vec<PathBuf> = std::iter::once("/instance/probe.txt".into()).chain(test_embed_model()).collect();
    for path in &mapped {
        for probe in ["mincore", "fadvise_dontneed", "pageout"] {
            let why = up.refused(&ada, json!({"probe": probe, "path": path})).await;
            assert!(why.contains("not permitted"), "{probe} {}: refused by the filter: {why}", path.display());
        }
    }
    let why = up.refused(&ada, json!({"probe": "sysinfo"})).await;
    assert!(why.contains("not permitted"), "{why}");
    // By name and by descriptor (on what it can open: the root itself it may not read).
    let why = up.refused(&ada, json!({"probe": "statfs", "path": "/"})).await;
    assert!(why.starts_with("statfs: Operation not permitted"), "statfs on /: {why}");
    for path in std::iter::once("/instance".into()).chain(test_embed_model()) {
        let why = up.refused(&ada, json!({"probe": "statfs", "path": path})).await;
        assert_eq!(why.matches("not permitted").count(), 2, "statfs and fstatfs on {}: {why}", path.display());
    }
    let tty = up.refused(&ada, json!({"probe": "type_into_terminal"})).await;
    assert!(tty.contains("not permitted"), "refused by the filter, not for want of a terminal: {tty}");
    up.refused(&ada, json!({"probe": "exec", "path": "/bin/sh"})).await;
    // No hard link, even inside its own directory: refused as across filesystems, so RocksDB's
    // checkpoint (a backup's copy) falls back to copying.
    let link = json!({"probe": "link", "from": "/instance/probe.txt", "to": "/instance/probe.link"});
    let why = up.refused(&ada, link).await;
    assert!(why.contains("cross-device"), "{why}");
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
    // Once the server has seen it go (a call that races its death gets 503 and a Retry-After, as
    // the test below checks), Ada's instance comes back on her next call, with her data.
    let mut seen_gone = false;
    for _ in 0..400 {
        if up.view(&ada).await["run_state"] != "running" {
            seen_gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(seen_gone, "10 s on, the server still counts the killed instance as running");
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
    let view = up.view(&ada).await;
    let (pid, called) = (view["pid"].as_u64().unwrap(), view["last_active_ms"].as_u64());
    let instance_pid = children(pid);
    // A call after the last one in another millisecond, so the wait below sees it.
    tokio::time::sleep(Duration::from_millis(5)).await;
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
    // Killed once the write is on its way to the instance (control handed the gateway a handle
    // for it), ...
    let mut forwarded = false;
    for _ in 0..200 {
        if up.view(&ada).await["last_active_ms"].as_u64() != called {
            forwarded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(forwarded, "the write never reached its instance");
    assert!(Command::new("kill").args(["-9", &pid.to_string()]).status().unwrap().success());
    // ... and the rest of its body sent once the instance is really gone (the process the server
    // started and the instance behind it).
    until("the instance to die", || ended(pid) && ended(instance_pid)).await;
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

/// Code that took over an instance goes for its owner's account: the key file (the password's
/// wrap, enough to guess the password offline; the recovery wrap, which it could rewrite for a
/// code of its choosing) is in no directory it sees, before or after a password change and a
/// recovery; and a directory it plants where the server once wrote its temporary key file
/// breaks neither.
#[tokio::test]
async fn an_instance_cannot_reach_its_owners_keys_nor_break_a_password_change() {
    let home = tempfile::tempdir().unwrap();
    let up = start(home.path());
    let (ada, code) = up.user_with_code("ada").await;
    assert_eq!(up.put(&ada, "a", json!(1)).await, 200);
    let planted = up.probe(&ada, json!({"probe": "mkdir", "path": "/instance/keys.tmp"})).await.unwrap();
    assert_eq!(planted["got_through"], true, "its own directory is writable: {planted}");
    let change = json!({"password": PASSWORD, "new_password": "a second password"});
    let resp = up.http.put(format!("{}/v1/accounts/me/password", up.base)).bearer_auth(&ada.token).json(&change);
    let resp = resp.send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let session: Value = resp.json().await.unwrap();
    let ada = User { token: session["token"].as_str().unwrap().to_owned(), instance: ada.instance };
    let recovery = json!({"username": "ada", "recovery_code": code, "new_password": "a third password"});
    let resp = up.http.post(format!("{}/v1/accounts/recover", up.base)).json(&recovery).send().await.unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    // After both, nothing of the key file is in the instance's view, under any name.
    let key_file = selfcloud_control::keystore::key_file_path(&up.home, ada.instance);
    assert!(key_file.is_file());
    up.refused(&ada, json!({"probe": "read_own_key_file"})).await;
    let listed = up.probe(&ada, json!({"probe": "list", "path": "/instance"})).await.unwrap();
    let listed = listed["detail"].as_str().unwrap();
    assert!(!listed.contains("keys.json") && !listed.contains(".staged"), "{listed}");
    let secret = std::fs::read_to_string(&key_file).unwrap();
    let wrap: Value = serde_json::from_str(&secret).unwrap();
    let seen = up.seen_dir(&ada).await;
    let entries: Vec<_> = std::fs::read_dir(up.dir(&ada)).unwrap().chain(std::fs::read_dir(&seen).unwrap()).collect();
    assert!(entries.len() > 2, "the instance's files are read: {entries:?}");
    for entry in entries {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap_or_default();
        let needle = wrap["recovery_wrapped"].as_str().unwrap().as_bytes();
        assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{} holds the recovery wrap", path.display());
    }
}

/// A server running as root runs each instance's root as a host uid of its own (never 0), with
/// no supplementary group, and its directory belongs to that uid.
#[tokio::test]
async fn under_a_root_server_each_instance_runs_as_an_unprivileged_uid_of_its_own() {
    // SAFETY: reads this process's effective uid.
    let root = unsafe { libc::geteuid() } == 0;
    let home = tempfile::tempdir().unwrap();
    let up = start(home.path());
    let (ada, bob) = (up.user("ada").await, up.user("bob").await);
    let mut uids = Vec::new();
    for user in [&ada, &bob] {
        assert_eq!(up.put(user, "a", json!(1)).await, 200);
        let reaper = up.view(user).await["pid"].as_u64().unwrap();
        for pid in [reaper, children(reaper)] {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect::<Vec<_>>()
            };
            let (uid, gid, groups) = (field("Uid:"), field("Gid:"), field("Groups:"));
            if root {
                assert!(uid.iter().all(|u| *u != "0" && *u == uid[0]), "{pid}: uids {uid:?}");
                assert!(gid.iter().all(|g| *g == uid[0]), "{pid}: gids {gid:?}");
                assert!(groups.is_empty(), "{pid}: supplementary groups {groups:?}");
                uids.push(uid[0].parse::<u32>().unwrap());
            } else {
                // SAFETY: reads this process's effective uid.
                assert_eq!(uid[0].parse::<u32>().unwrap(), unsafe { libc::geteuid() }, "{pid}: the server's own uid");
            }
        }
        if root {
            use std::os::unix::fs::MetadataExt;
            let owner = std::fs::metadata(up.seen_dir(user).await.join("store.db")).unwrap().uid();
            assert_eq!(owner, *uids.last().unwrap(), "its files are its own");
        }
    }
    if root {
        uids.dedup();
        assert_eq!(uids.len(), 2, "each instance its own uid: {uids:?}");
    }
}

/// The shared LLM engine (`--llm-engine shared`, the default) runs behind the instance's walls,
/// as a process of its own started on the first chat: another network namespace than the
/// server's, seccomp and no privilege to gain, the range's first uid where the server runs as
/// root (no instance has it), nothing of the home in its view, and no socket anyone could reach
/// it by; it ends with the server.
#[tokio::test]
async fn the_shared_engine_runs_behind_the_walls_with_no_address() {
    let Some(_) = test_model() else { return };
    let home = tempfile::tempdir().unwrap();
    let mut up = start(home.path());
    let server = up.child.id() as u64;
    // The server's children, whichever of its threads started them.
    let engine_of = || {
        let tasks = std::fs::read_dir(format!("/proc/{server}/task")).unwrap();
        let kids: String = tasks
            .map(|t| std::fs::read_to_string(t.unwrap().path().join("children")).unwrap_or_default())
            .collect::<Vec<_>>()
            .join(" ");
        kids.split_whitespace().map(|p| p.parse::<u64>().unwrap()).find(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            cmd.split(|b| *b == 0).any(|a| a == b"engine")
        })
    };
    let ada = up.user("ada").await;
    assert_eq!(engine_of(), None, "no engine before the first chat");
    let question = json!({"messages": [{"role": "user", "content": "What is the capital of France?"}],
                          "temperature": 0, "max_tokens": 16});
    let answer: Value = up
        .http
        .post(format!("{}/v1/llm/chat/completions", up.base))
        .bearer_auth(&ada.token)
        .json(&question)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(answer["choices"][0]["message"]["content"].as_str().unwrap_or("").contains("Paris"), "{answer}");
    let reaper = engine_of().expect("the engine is a process of the server's");
    let engine = children(reaper);
    let ns = |pid: u64, kind: &str| std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).unwrap();
    for kind in ["net", "mnt", "pid", "user"] {
        assert_ne!(ns(engine, kind), ns(server, kind), "the engine shares the server's {kind} namespace");
    }
    let status = std::fs::read_to_string(format!("/proc/{engine}/status")).unwrap();
    for line in ["Seccomp:\t2", "NoNewPrivs:\t1"] {
        assert!(status.lines().any(|l| l == line), "no {line:?} in the engine's status:\n{status}");
    }
    let uid: u32 = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // SAFETY: reads this process's effective uid.
    if unsafe { libc::geteuid() } == 0 {
        assert_eq!(uid, selfcloud_control::runtime::HostIds::DEFAULT.first, "the range's first uid");
        let instance = children(up.view(&ada).await["pid"].as_u64().unwrap());
        let instance_status = std::fs::read_to_string(format!("/proc/{instance}/status")).unwrap();
        assert!(!instance_status.contains(&format!("Uid:\t{uid}\t")), "an instance has the engine's uid");
    }
    // Its view: its empty directory and the model, none of the home.
    let mounts = std::fs::read_to_string(format!("/proc/{engine}/mountinfo")).unwrap();
    assert!(!mounts.contains("instances") && !mounts.contains("control.db"), "{mounts}");
    // No socket with a name: what it serves on are the pairs control handed it.
    let unix = std::fs::read_to_string(format!("/proc/{engine}/net/unix")).unwrap();
    assert!(unix.lines().skip(1).all(|l| l.split_whitespace().nth(7).is_none()), "a named socket: {unix}");

    // SAFETY: a signal to the server this test started.
    assert_eq!(unsafe { libc::kill(server as i32, libc::SIGTERM) }, 0);
    assert!(up.child.wait().unwrap().success());
    until("the engine ends with the server", || ended(engine) && ended(reaper)).await;
}

//! An instance's stderr against the server's log: the real binary serves under `--runtime
//! process` with its stderr on a log file, and a probe (feature `attack-probes`) writes from
//! inside one instance a forged line at offset 0 (after trying to make the file world-writable,
//! truncate it and turn off its append mode), escape sequences, a 1 MB line and a flood. The log
//! keeps what it had, and holds only the instance's lines the server wrote for it: tagged with
//! its id, cleaned, cut to the cap, and the flood cut down with a summary. And a client's broken
//! request is no alarm: a body shorter than its `Content-Length` is a 400, and no warning.
#![cfg(all(target_os = "linux", feature = "attack-probes"))]

mod walls;

use serde_json::json;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;
use walls::*;

/// The settings the server runs under here.
const LINE_MAX: usize = 1024;
const LINES_PER_SEC: usize = 50;

/// The server, its stderr appended to `log` (made 0600), as an operator's service manager would.
fn start(home: &Path, log: &Path) -> (Up, ServerLog) {
    let mut file = std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(log).unwrap();
    // What an earlier run left in it.
    std::io::Write::write_all(&mut file, b"an earlier line of the server's log\n").unwrap();
    // Settings by environment, which a server without them ignores (the run before the fix).
    let env = [
        ("SELFCLOUD_MODEL", "none".to_owned()),
        ("SELFCLOUD_EMBEDDING_MODEL", "none".to_owned()),
        ("SELFCLOUD_INSTANCE_LOG_LINE_MAX", LINE_MAX.to_string()),
        ("SELFCLOUD_INSTANCE_LOG_LINES_PER_SEC", LINES_PER_SEC.to_string()),
        ("SELFCLOUD_BODY_READ_TIMEOUT", "1".to_owned()),
    ];
    (launch(home, &[], &env, file.into()), ServerLog(log.to_owned()))
}

/// The server's log file.
struct ServerLog(PathBuf);

impl ServerLog {
    fn read(&self) -> Vec<u8> {
        std::fs::read(&self.0).unwrap()
    }

    /// Waits, up to 10 s, for a line of the log holding `needle`.
    async fn logged(&self, needle: &str) -> bool {
        for _ in 0..400 {
            if String::from_utf8_lossy(&self.read()).contains(needle) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        false
    }
}

#[tokio::test]
async fn an_instance_cannot_rewrite_the_servers_log_and_its_lines_come_cleaned_tagged_and_rate_limited() {
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("server.log");
    let (up, server_log) = start(&home.path().join("data"), &log);
    let ada = up.user("ada").await;
    assert_eq!(up.put(&ada, "a", json!(1)).await, 200);
    let id = ada.instance.to_string();
    let tag = format!("instance={id}");
    let before = server_log.read();
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o7777;

    let tamper = up.probe(&ada, json!({"probe": "tamper_stderr"})).await.unwrap();
    let escapes = "esc-probe \x1b[31mred\x1b[0m \x1b]0;title\x07 \x1b]8;;http://x.invalid/\x1b\\link\x1b]8;;\x1b\\ \
                   cr\roverwrite nul\0 bs\x08 c1\u{9b}2J del\x7f bidi\u{202e}txt esc-end\n";
    up.probe(&ada, json!({"probe": "stderr", "text": escapes})).await.unwrap();
    up.probe(&ada, json!({"probe": "stderr", "text": "L", "times": 1usize << 20})).await.unwrap();
    up.probe(&ada, json!({"probe": "stderr", "text": " long-end\n"})).await.unwrap();
    up.probe(&ada, json!({"probe": "stderr", "text": "flood-line\n", "times": 5000})).await.unwrap();
    let dropped = format!("lines of instance {id} dropped");
    let summarised = server_log.logged(&dropped).await;
    // Once the flood is over, a later line gets through again.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    up.probe(&ada, json!({"probe": "stderr", "text": "after-flood\n"})).await.unwrap();
    let after = server_log.logged("after-flood").await;

    // The log kept what it had, with its mode.
    let now = std::fs::metadata(&log).unwrap().permissions().mode() & 0o7777;
    assert_eq!(now, mode, "the log file's mode changed from {mode:o} to {now:o}: {tamper}");
    let all = server_log.read();
    assert!(
        all.starts_with(&before),
        "the log lost or changed what it had ({tamper}): {} bytes before, now {}",
        before.len(),
        { String::from_utf8_lossy(&all[..all.len().min(300)]).into_owned() }
    );
    assert!(!String::from_utf8_lossy(&all).contains("FORGED"), "a forged line is in the log");
    assert_eq!(tamper["got_through"], false, "{tamper}");

    let text = String::from_utf8(all.clone()).expect("the log is UTF-8");
    // No raw control byte (C0, DEL, C1) nor escape: only the newlines between lines.
    if let Some(c) = text.chars().find(|&c| c != '\n' && (c.is_control() || ('\u{2028}'..='\u{2029}').contains(&c))) {
        panic!("a raw control character {c:?} is in the log:\n{}", tail(&text));
    }
    assert!(!text.contains('\u{202e}'), "a bidi override is in the log");
    let instance_lines: Vec<&str> = text
        .lines()
        .filter(|l| ["esc-probe", "LLLL", "flood-line", "after-flood"].iter().any(|n| l.contains(n)))
        .collect();
    assert!(!instance_lines.is_empty(), "no line of the instance's is in the log:\n{}", tail(&text));
    for line in &instance_lines {
        assert!(line.contains(&tag), "an instance's line without its id: {}", &line[..line.len().min(300)]);
    }
    let esc = instance_lines.iter().find(|l| l.contains("esc-probe")).expect("the escapes line is logged");
    assert!(esc.contains("esc-end") && esc.contains("red") && esc.contains("link"), "{esc}");
    // Nothing of the instance's is longer than the cap (plus the server's timestamp, level,
    // target and tag), and the long line says it was cut.
    let overhead = 200 + tag.len();
    for line in text.lines() {
        assert!(line.len() <= LINE_MAX + overhead, "a line of {} bytes: {}…", line.len(), &line[..200]);
    }
    let long = instance_lines.iter().find(|l| l.contains("LLLL")).expect("the long line is logged, cut");
    assert!(!long.contains("long-end") && long.contains("[cut]"), "{}", &long[long.len().saturating_sub(100)..]);
    // The flood is cut down to about a second's worth, and the cut said.
    let flood = instance_lines.iter().filter(|l| l.contains("flood-line")).count();
    assert!(flood <= 3 * LINES_PER_SEC, "{flood} of 5000 flood lines logged");
    assert!(summarised, "no {dropped:?} in the log:\n{}", tail(&text));
    assert!(after, "a line after the flood is logged");
}

fn tail(text: &str) -> &str {
    let mut start = text.len().saturating_sub(3000);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}

/// Sends `head` and `body` as they are on one connection, leaves it open, and reads the answer
/// (the server ends a body that stopped coming after `--body-read-timeout`, 1 s here).
async fn short_body(base: &str, path: &str, token: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = base.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "PUT {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len() + 100
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "no answer in 20 s to a body that stopped coming");
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn a_body_shorter_than_its_length_is_the_clients_error_and_no_alarm() {
    let home = tempfile::tempdir().unwrap();
    let log = home.path().join("server.log");
    let (up, server_log) = start(&home.path().join("data"), &log);
    let ada = up.user("ada").await;
    assert_eq!(up.put(&ada, "a", json!(1)).await, 200);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = server_log.read().len();
    for _ in 0..3 {
        let answer = short_body(&up.base, "/v1/storage/notes/short", &ada.token, r#"{"text":"#).await;
        assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
        assert!(answer.contains(r#""code":"invalid_request""#), "{answer}");
    }
    // The instance is fine, and wrote nothing of the broken call.
    assert_eq!(up.put(&ada, "b", json!(2)).await, 200);
    let url = format!("{}/v1/storage/notes/short", up.base);
    let missing = up.http.get(url).bearer_auth(&ada.token).send().await.unwrap().status().as_u16();
    assert_eq!(missing, 404);
    let text = String::from_utf8_lossy(&server_log.read()[before..]).into_owned();
    for alarm in ["WARN", "ERROR", "unreachable", "restarting"] {
        assert!(!text.contains(alarm), "the client's short body raised {alarm:?} in the server's log:\n{text}");
    }
}

//! The crash harness, as CI runs it: `selfcloud bench crash` SIGKILLs a real server twenty times
//! mid-write on each engine, runs `selfcloud verify` after every kill, and fails if a single
//! acknowledged write is missing or the store's integrity check fails. Every other cycle also
//! kills the instance's own process mid-write.

use std::process::Command;

fn crash_harness(store: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_selfcloud"))
        .args(["bench", "crash", "--kills", "20", "--store", store, "--min-ms", "30", "--max-ms", "300"])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{store}: {stdout}\n{stderr}");
    let summary = stdout.lines().find(|l| l.starts_with("crash summary:")).unwrap_or_else(|| panic!("{stdout}"));
    let field = |name: &str| -> u64 {
        let value = summary.split(' ').find_map(|kv| kv.strip_prefix(&format!("{name}="))).unwrap();
        value.parse().unwrap()
    };
    assert_eq!(field("kills"), 20);
    assert_eq!((field("losses"), field("unexpected"), field("verify_failures")), (0, 0, 0), "{summary}");
    // The run must have exercised something: acknowledged writes, and kills that caught some in flight.
    assert!(field("acknowledged") > 100, "{summary}");
    assert!(field("in_flight") > 0, "{summary}");
    // Instance processes were killed mid-write too (every other cycle), not only the server.
    assert!(field("instance_kills") >= 5, "{summary}");
}

#[test]
fn no_acknowledged_write_is_lost_to_sigkill_on_sqlite() {
    crash_harness("sqlite");
}

#[test]
fn no_acknowledged_write_is_lost_to_sigkill_on_rocksdb() {
    crash_harness("rocksdb");
}

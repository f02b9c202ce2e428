//! The crate map's invariants that the dependency graph can show, read from `cargo metadata`:
//! data flows one way (gateway -> control -> instance -> store), the SDK stands apart, and the
//! crates that must not do I/O or touch a store cannot reach one.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// Each workspace crate's normal (not dev or build) dependencies, by package name.
fn dependencies() -> BTreeMap<String, BTreeSet<String>> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    meta["packages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let deps = p["dependencies"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|d| d["kind"].is_null())
                .map(|d| d["name"].as_str().unwrap().to_owned())
                .collect();
            (p["name"].as_str().unwrap().to_owned(), deps)
        })
        .collect()
}

#[test]
fn the_crate_map_holds() {
    let deps = dependencies();
    let of = |name: &str| deps.get(name).unwrap_or_else(|| panic!("no crate {name}"));
    let ours = |name: &str| -> BTreeSet<&str> {
        of(name).iter().filter(|d| d.starts_with("selfcloud-")).map(String::as_str).collect()
    };
    // One way: each layer reaches only the layers below it.
    assert_eq!(ours("selfcloud-core"), BTreeSet::new());
    assert_eq!(ours("selfcloud-durable"), BTreeSet::from(["selfcloud-core"]));
    assert_eq!(ours("selfcloud-store"), BTreeSet::from(["selfcloud-core", "selfcloud-durable"]));
    // The sandbox is walls only: no domain types, no crate of ours.
    assert_eq!(ours("selfcloud-sandbox"), BTreeSet::new());
    // The LLM is a part of an instance: it knows the shared types and nothing of stores or routing.
    assert_eq!(ours("selfcloud-llm"), BTreeSet::from(["selfcloud-core"]));
    assert!(!of("selfcloud-llm").contains("axum"), "the LLM part routes HTTP");
    // The shared engine's process serves the LLM part over channels: the model and its walls,
    // nothing of instances, stores or control.
    assert_eq!(ours("selfcloud-engine"), BTreeSet::from(["selfcloud-core", "selfcloud-llm", "selfcloud-sandbox"]));
    // Backup cuts, seals and sends files: the store's cipher (`Sealer`) is all it takes of the
    // store, and it knows nothing of instances, routing or control.
    assert_eq!(ours("selfcloud-backup"), BTreeSet::from(["selfcloud-core", "selfcloud-durable", "selfcloud-store"]));
    assert!(!of("selfcloud-backup").contains("axum"), "the backup part routes HTTP");
    assert!(ours("selfcloud-instance").iter().all(|d| [
        "selfcloud-core",
        "selfcloud-durable",
        "selfcloud-store",
        "selfcloud-sandbox",
        "selfcloud-llm",
        "selfcloud-backup"
    ]
    .contains(d)));
    assert!(!ours("selfcloud-control").contains("selfcloud-gateway"));
    // Control knows instances by id, directory and runtime handle: the store stays below the
    // instance boundary (control reaches it only through the instance protocol).
    assert!(!of("selfcloud-control").contains("selfcloud-store"), "control depends on the store");
    // The gateway reaches data only through control's instance handle: no store, no database.
    for forbidden in ["selfcloud-store", "selfcloud-durable", "rusqlite", "rocksdb"] {
        assert!(!of("selfcloud-gateway").contains(forbidden), "the gateway depends on {forbidden}");
    }
    // Core does no I/O.
    for forbidden in ["tokio", "rusqlite", "rocksdb", "reqwest", "axum"] {
        assert!(!of("selfcloud-core").contains(forbidden), "core depends on {forbidden}");
    }
    // The SDK is what app developers take: it needs no server crate.
    assert_eq!(ours("selfcloud-sdk"), BTreeSet::new());
}

/// The Rust sources under `dir`, with their text.
fn sources(dir: &std::path::Path) -> Vec<(std::path::PathBuf, String)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            let text = std::fs::read_to_string(&path).unwrap();
            found.push((path, text));
        }
    }
    found
}

/// Control's calls on an instance (`/system/…`) are made by control alone, through its one
/// client (`control/src/system.rs`): the gateway asks control and never calls them, nor makes a
/// call in control's name.
#[test]
fn only_control_calls_an_instances_system_routes() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let gateway = sources(&crates.join("gateway/src"));
    assert!(gateway.len() > 20, "the gateway's sources are read");
    for (path, text) in gateway {
        for forbidden in ["\"/system/", "CallContext::system"] {
            assert!(!text.contains(forbidden), "{} holds {forbidden}", path.display());
        }
    }
    let control: Vec<_> = sources(&crates.join("control/src"))
        .into_iter()
        .filter(|(_, text)| text.contains("\"/system/"))
        .map(|(path, _)| path.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(control, ["system.rs"], "control's system calls are made in one place");
}

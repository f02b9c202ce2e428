//! One user's instance behind one protocol. The gateway reaches a user's data only through an
//! [`InstanceClient`]; what crosses is HTTP ([`protocol`]): the instance serves its own API
//! ([`service`], an axum router over its parts), in the server's process or in its own
//! sandboxed one ([`process`]), and the [`transport`] carries calls to either.
//!
//! An instance knows nothing of other instances: it is opened on its own directory with its own key.

pub mod api;
pub mod archive;
mod broker;
mod ledger;
mod llm;
mod local;
mod memory;
pub mod part;
pub mod process;
pub mod protocol;
mod remote_engine;
pub mod service;
mod spool;
pub mod transport;
mod vectors;

pub use protocol::{Actor, CallContext, Settings};
pub use selfcloud_store::{DataKey, EngineKind};
pub use transport::InstanceClient;

use selfcloud_core::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// One line of the instance's access log.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Milliseconds since the Unix epoch.
    pub at_ms: u64,
    pub actor: Actor,
    pub method: String,
    pub path: String,
    /// The scope that allowed the request, if one was needed and held.
    pub scope: Option<String>,
    pub status: u16,
    pub request_id: Option<String>,
}

/// An audit entry as read back, with its place in the log (for paging).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditRecord {
    pub seq: u64,
    #[serde(flatten)]
    pub entry: AuditEntry,
}

/// Storage used by an instance against its quota.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StorageUsage {
    pub records: u64,
    pub bytes: u64,
    pub quota_bytes: u64,
}

/// What an integrity check of an instance's store found (it passed: failures are errors).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IntegrityReport {
    /// The store engine, as `EngineKind::as_str` names it.
    pub engine: String,
    pub records: u64,
    pub bytes: u64,
}

/// A stored value as JSON text, for lists and exports. Values are checked on the way in, but one
/// stored before that check (or damaged since) must not break every page or archive after it:
/// invalid UTF-8 is replaced, and what is still not JSON becomes a JSON string of its text. The
/// flag says whether the value had to be repaired. A sound value is borrowed, not copied.
pub fn json_text(value: &[u8]) -> (std::borrow::Cow<'_, str>, bool) {
    let text = String::from_utf8_lossy(value);
    let lossy = matches!(text, std::borrow::Cow::Owned(_));
    if selfcloud_core::json::check_value(&text).is_ok() {
        return (text, lossy);
    }
    (serde_json::to_string(&text).expect("a string serializes").into(), true)
}

/// A request body arriving chunk by chunk (an import archive).
pub type ByteStream = std::pin::Pin<Box<dyn futures_util::Stream<Item = std::io::Result<bytes::Bytes>> + Send>>;

/// Bounds on one import.
#[derive(Clone, Copy, Debug)]
pub struct ImportLimits {
    /// Largest archive taken, in bytes.
    pub max_bytes: u64,
    pub max_value_bytes: usize,
}

/// Creates a new instance's parts (its store) in `dir`, which exists and is empty. The instance
/// then runs wherever its runtime starts it.
pub fn create(settings: &Settings, dir: &Path, key: &DataKey, engine: EngineKind) -> Result<()> {
    let options = selfcloud_store::StoreOptions { quota_bytes: settings.quota_bytes };
    local::Local::create(settings.id, dir, key, engine, options).map(drop)
}

/// Opens the instance living in `dir` inside this process (the `inproc` runtime).
pub fn open_in_process(
    dir: &Path,
    key: &DataKey,
    settings: Settings,
    broker: Option<std::os::fd::OwnedFd>,
) -> Result<InstanceClient> {
    let options = selfcloud_store::StoreOptions { quota_bytes: settings.quota_bytes };
    let id = settings.id;
    let local = local::Local::open(id, dir, key, options)?;
    // In the server's process too, the parts reach outside only through the broker's socket
    // (`broker`: this end of it), and the shared engine is in this process.
    let outside = match broker.map(broker::Broker::on).transpose() {
        Ok(broker) => broker.map(|b| service::Outside { broker: std::sync::Arc::new(b), engine_beyond: false }),
        Err(e) => return Err(Error::internal(format!("the broker's socket: {e}"))),
    };
    Ok(InstanceClient::in_process(id, service::router_with(local, settings, outside)))
}

#[cfg(test)]
#[test]
fn damaged_values_become_json_that_lists_and_exports_can_carry() {
    assert_eq!(json_text(br#"{"a":1}"#), (r#"{"a":1}"#.into(), false));
    let (text, repaired) = json_text(b"\"caf\xff\"");
    assert!(repaired);
    assert_eq!(serde_json::from_str::<String>(&text).unwrap(), "caf\u{fffd}");
    let (text, repaired) = json_text(b"not json");
    assert!(repaired);
    assert_eq!(serde_json::from_str::<String>(&text).unwrap(), "not json");
    // Syntax that standard parsers refuse (too deep) is carried as its text too.
    let deep = format!("{}{}", "[".repeat(300), "]".repeat(300));
    let (text, repaired) = json_text(deep.as_bytes());
    assert!(repaired);
    assert_eq!(serde_json::from_str::<String>(&text).unwrap(), deep);
}

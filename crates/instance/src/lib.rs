//! One user's instance behind one API. The gateway reaches a user's data only through
//! [`Instance`]; this crate ships the in-process runtime ([`InprocInstance`]). A sandboxed runtime
//! implements the same trait over a Unix socket, which is why every argument and answer here is a
//! plain serializable value, never a handle into this process.
//!
//! An instance knows nothing of other instances: it is opened on its own directory with its own key.

pub mod archive;
mod inproc;
mod spool;

pub use inproc::InprocInstance;
pub use selfcloud_store::{
    DataKey, EngineKind, ImportRecord, Page, Precondition, Record, Rev, ScanPage, ScannedRecord, Usage,
};

use async_trait::async_trait;
use selfcloud_core::{Collection, InstanceId, RecordKey, Result};
use serde::{Deserialize, Serialize};

/// Who made a request on the instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Actor {
    /// The instance's owner, with their session.
    Owner,
    /// A third-party app, through a grant.
    App { client_id: String, name: String, grant_id: String },
}

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

/// Everything the gateway (through control) can ask of one user's instance.
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

#[async_trait]
pub trait Instance: Send + Sync + 'static {
    fn id(&self) -> InstanceId;

    async fn get_record(&self, collection: &Collection, key: &RecordKey) -> Result<Option<Record>>;
    async fn put_record(
        &self,
        collection: &Collection,
        key: &RecordKey,
        value: Vec<u8>,
        cond: Precondition,
    ) -> Result<Rev>;
    async fn delete_record(&self, collection: &Collection, key: &RecordKey, cond: Precondition) -> Result<()>;
    /// Up to `limit` records, fewer once their values reach `max_bytes` (a page has at least one).
    async fn list_records(
        &self,
        collection: &Collection,
        prefix: &str,
        limit: usize,
        max_bytes: usize,
        cursor: Option<&str>,
    ) -> Result<Page>;
    async fn storage_usage(&self) -> Result<StorageUsage>;

    /// Every record of every collection, in (collection, key) order, after `cursor`: up to
    /// `limit` records, fewer once their values reach `max_bytes` (a page always has one). Pages
    /// are read one by one, not from one snapshot; no record appears twice.
    async fn export_records(&self, cursor: Option<&str>, limit: usize, max_bytes: usize) -> Result<ScanPage>;
    /// Restores an export archive (see [`archive`]) into this instance, which must hold no record
    /// (`conflict`), in one atomic and durable write: all or, on any error (a damaged archive,
    /// `too_large`, `quota_exceeded`), nothing. The archive streams to a private file in the
    /// instance's directory, is checked whole, then imported; it is never held in memory. One
    /// import at a time per instance. Returns the usage afterwards.
    async fn import_archive(&self, archive: ByteStream, limits: ImportLimits) -> Result<StorageUsage>;
    /// Runs the store's own integrity check and compares its counters with a full scan; an
    /// error says what is wrong. Reads every record: for `selfcloud verify`, not the hot path.
    async fn verify(&self) -> Result<IntegrityReport>;
    /// Applies a new storage quota (the instance's tier changed).
    async fn set_quota(&self, quota_bytes: u64) -> Result<()>;

    /// Appends entries to the access log; entries past `keep` newest are dropped.
    async fn append_audit(&self, entries: Vec<AuditEntry>, keep: u64) -> Result<()>;
    /// Up to `limit` entries older than `before`, newest first.
    async fn read_audit(&self, before: Option<u64>, limit: usize) -> Result<Vec<AuditRecord>>;
}

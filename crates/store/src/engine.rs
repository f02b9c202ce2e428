//! The private contract every storage engine meets. Values arrive sealed; the engine never sees
//! plaintext and never parses it.

use crate::{Precondition, Rev, Usage};
use selfcloud_core::{Error, ErrorCode, Result};

pub(crate) type Sealed = Vec<u8>;

/// `(collection, key, rev, sealed value)` from a whole-store scan.
pub(crate) type ScanRow = (String, String, Rev, Sealed);

/// One stored batch of log entries.
pub(crate) struct LogBatch {
    /// The number of its last entry.
    pub last: u64,
    pub count: u64,
    pub sealed: Sealed,
}

/// One record of a bulk import, sealed by the facade.
pub(crate) struct ImportRow {
    pub collection: String,
    pub key: String,
    /// Bytes counted against the quota (key and plaintext value).
    pub size: u64,
    pub sealed: Sealed,
}

/// The check every engine applies before an import, inside its write lock.
pub(crate) fn check_empty(records: i64) -> Result<()> {
    if records != 0 {
        return Err(Error::conflict("the instance already holds records; import needs an empty one"));
    }
    Ok(())
}

/// Rows of an import as they stream in: each is sealed by the facade on the way.
pub(crate) type ImportRows<'a> = &'a mut dyn Iterator<Item = Result<ImportRow>>;

pub(crate) trait Engine: Send + Sync {
    fn get(&self, collection: &str, key: &str) -> Result<Option<(Rev, Sealed)>>;

    /// Checks `cond` and the quota, assigns the next rev and writes, atomically and durably:
    /// once this returns `Ok` the write survives a crash.
    fn put(&self, collection: &str, key: &str, cond: Precondition, size: u64, value: &[u8], quota: u64) -> Result<Rev>;

    fn delete(&self, collection: &str, key: &str, cond: Precondition) -> Result<()>;

    /// Up to `limit` rows with `key` starting with `prefix` and greater than `after`, in key
    /// order; stops early once the sealed values reach `max_bytes` (always at least one row).
    fn list(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, Rev, Sealed)>>;

    /// Up to `limit` rows of every collection, in (collection, key) order, strictly after
    /// `after`; stops early once the sealed values reach `max_bytes` (always at least one row).
    fn scan(&self, after: Option<(&str, &str)>, limit: usize, max_bytes: usize) -> Result<Vec<ScanRow>>;

    /// Writes `rows` (distinct, in (collection, key) order, taken one by one) into an empty
    /// store, each with the next rev, in one atomic and durable write. `conflict` if the store
    /// holds any record, `quota_exceeded` once their sizes pass `quota`, or the first error the
    /// rows yield; in every such case nothing is written.
    fn import(&self, rows: ImportRows, quota: u64) -> Result<()>;

    fn usage(&self) -> Result<Usage>;

    /// Appends one batch of `count` entries, numbered on from the last entry, as the bytes
    /// `seal(first number)` returns; then drops the batches whose entries are all older than the
    /// `keep` (at least 1) newest. Atomic. Returns the number of the batch's last entry.
    fn append_log(&self, count: u64, keep: u64, seal: &dyn Fn(u64) -> Result<Sealed>) -> Result<u64>;

    /// The batches holding entries numbered below `before`, newest first, stopping once they hold
    /// `limit` such entries.
    fn read_log(&self, before: u64, limit: usize) -> Result<Vec<LogBatch>>;

    /// The engine's own integrity check, then a full scan whose totals must match the counters.
    fn verify(&self) -> Result<Usage>;

    /// Writes a copy of the store as of one moment into the directory `into` (which exists and
    /// is empty), under the names the engine opens, while writes go on.
    fn snapshot(&self, into: &std::path::Path) -> Result<()>;
}

/// The precondition check every engine applies inside its write transaction.
pub(crate) fn check(cond: Precondition, current: Option<Rev>) -> Result<()> {
    match (cond, current) {
        (Precondition::None, _) => Ok(()),
        (Precondition::IfMatch(want), Some(have)) if want == have => Ok(()),
        (Precondition::IfMatch(_), _) => {
            Err(Error::new(ErrorCode::PreconditionFailed, "the record's rev does not match If-Match"))
        }
        (Precondition::IfExists, Some(_)) => Ok(()),
        (Precondition::IfExists, None) => Err(Error::new(ErrorCode::PreconditionFailed, "the record does not exist")),
        (Precondition::IfAbsent, None) => Ok(()),
        (Precondition::IfAbsent, Some(_)) => Err(Error::new(ErrorCode::PreconditionFailed, "the record exists")),
    }
}

/// Deleting a record that is not there: `If-Match` (a rev or `*`) cannot hold (RFC 9110 13.1.1),
/// otherwise there is simply no such record.
pub(crate) fn missing(cond: Precondition) -> Error {
    match cond {
        Precondition::IfMatch(_) | Precondition::IfExists => {
            Error::new(ErrorCode::PreconditionFailed, "the record does not exist")
        }
        Precondition::None | Precondition::IfAbsent => Error::not_found("no such record"),
    }
}

/// The quota rule: growth past the quota is refused; shrinking is always allowed.
pub(crate) fn check_quota(delta: i64, used: i64, quota: u64) -> Result<()> {
    if delta > 0 && (used + delta) as u64 > quota {
        return Err(Error::new(
            ErrorCode::QuotaExceeded,
            format!("this write needs {delta} more bytes; {used} of {quota} are used"),
        ));
    }
    Ok(())
}

/// The last step of every engine's `verify`: the usage counters must equal a full scan's totals.
pub(crate) fn agree(counted: Usage, scanned: Usage) -> Result<Usage> {
    if counted != scanned {
        return Err(Error::internal(format!("counters {counted:?} disagree with a scan {scanned:?}")));
    }
    Ok(scanned)
}

//! The private contract every storage engine meets. Values arrive sealed; the engine never sees
//! plaintext and never parses it.

use crate::{Precondition, Rev, Usage};
use selfcloud_core::Result;

pub(crate) type Sealed = Vec<u8>;

pub(crate) trait Engine: Send + Sync {
    fn get(&self, collection: &str, key: &str) -> Result<Option<(Rev, Sealed)>>;

    /// Checks `cond` and the quota, assigns the next rev and writes, atomically and durably:
    /// once this returns `Ok` the write survives a crash.
    fn put(
        &self,
        collection: &str,
        key: &str,
        cond: Precondition,
        size: u64,
        value: &[u8],
        quota: u64,
    ) -> Result<Rev>;

    fn delete(&self, collection: &str, key: &str, cond: Precondition) -> Result<()>;

    /// Up to `limit` rows with `key` starting with `prefix` and greater than `after`, in key order.
    fn list(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<(String, Rev, Sealed)>>;

    fn usage(&self) -> Result<Usage>;

    fn append_log(&self, entries: &[Sealed], keep: u64) -> Result<u64>;

    fn read_log(&self, before: u64, limit: usize) -> Result<Vec<(u64, Sealed)>>;
}

//! One instance's record store: records in collections, an append-only log, encryption at rest
//! and quota accounting, behind one facade ([`Store`]) over a private engine trait.
//!
//! The facade owns what every engine must do the same way (validation has happened in `core`
//! types already; here: encryption, cursors, limits); engines own bytes on disk and atomicity
//! (precondition, quota and write in one transaction). SQLite is the engine today.

mod crypto;
mod engine;
mod sqlite;

pub use crypto::DataKey;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use crypto::Sealer;
use engine::Engine;
use selfcloud_core::names::validate_key_prefix;
use selfcloud_core::{Collection, Error, RecordKey, Result};
use std::path::Path;

/// A record's revision: an instance-wide counter value, so a newer write always has a larger rev.
pub type Rev = u64;

/// What a write requires of the current record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    None,
    /// The record exists with exactly this rev (`If-Match`).
    IfMatch(Rev),
    /// The record does not exist (`If-None-Match: *`).
    IfAbsent,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    pub key: RecordKey,
    pub rev: Rev,
    /// The JSON value, as the client sent it.
    pub value: Vec<u8>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    pub records: Vec<Record>,
    /// Opaque; pass back to get the next page. `None` when this page is the last.
    pub cursor: Option<String>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub records: u64,
    /// Bytes of keys and values as stored by the user (before encryption overhead).
    pub bytes: u64,
}

/// Settings fixed when a store is opened.
#[derive(Clone, Copy, Debug)]
pub struct StoreOptions {
    /// Writes that would take usage past this many bytes are refused with `quota_exceeded`.
    pub quota_bytes: u64,
}

/// One instance's store. Cheap to share behind an `Arc`; every method is safe to call from many
/// threads (reads run in parallel, writes take the store's write lock).
pub struct Store {
    engine: Box<dyn Engine>,
    sealer: Sealer,
    options: StoreOptions,
}

impl Store {
    /// Opens (creating and migrating as needed) the SQLite store at `path`.
    pub fn open_sqlite(path: &Path, key: &DataKey, options: StoreOptions) -> Result<Store> {
        Ok(Store {
            engine: Box::new(sqlite::SqliteEngine::open(path)?),
            sealer: Sealer::new(key),
            options,
        })
    }

    pub fn get(&self, collection: &Collection, key: &RecordKey) -> Result<Option<Record>> {
        let Some((rev, sealed)) = self.engine.get(collection.as_str(), key.as_str())? else {
            return Ok(None);
        };
        let value = self.sealer.open(&record_aad(collection, key), &sealed)?;
        Ok(Some(Record {
            key: key.clone(),
            rev,
            value,
        }))
    }

    /// Writes `value` (JSON bytes) and returns the new rev.
    pub fn put(
        &self,
        collection: &Collection,
        key: &RecordKey,
        value: &[u8],
        cond: Precondition,
    ) -> Result<Rev> {
        let sealed = self.sealer.seal(&record_aad(collection, key), value)?;
        let size = (key.as_str().len() + value.len()) as u64;
        self.engine.put(
            collection.as_str(),
            key.as_str(),
            cond,
            size,
            &sealed,
            self.options.quota_bytes,
        )
    }

    /// Deletes a record; `not_found` if it does not exist.
    pub fn delete(
        &self,
        collection: &Collection,
        key: &RecordKey,
        cond: Precondition,
    ) -> Result<()> {
        self.engine.delete(collection.as_str(), key.as_str(), cond)
    }

    /// Records of `collection` whose key starts with `prefix`, in key order, after `cursor`.
    pub fn list(
        &self,
        collection: &Collection,
        prefix: &str,
        limit: usize,
        cursor: Option<&str>,
    ) -> Result<Page> {
        validate_key_prefix(prefix)?;
        let after = cursor.map(decode_cursor).transpose()?;
        let limit = limit.max(1);
        // One extra row tells whether another page follows without a second query.
        let mut rows = self.engine.list(
            collection.as_str(),
            prefix,
            after.as_ref().map(|k| k.as_str()),
            limit + 1,
        )?;
        let more = rows.len() > limit;
        rows.truncate(limit);
        let mut records = Vec::with_capacity(rows.len());
        for (key, rev, sealed) in rows {
            let key = RecordKey::parse(&key)
                .map_err(|_| Error::internal("stored key violates grammar"))?;
            let value = self.sealer.open(&record_aad(collection, &key), &sealed)?;
            records.push(Record { key, rev, value });
        }
        let cursor = if more {
            records
                .last()
                .map(|r| URL_SAFE_NO_PAD.encode(r.key.as_str()))
        } else {
            None
        };
        Ok(Page { records, cursor })
    }

    pub fn usage(&self) -> Result<Usage> {
        self.engine.usage()
    }

    pub fn quota_bytes(&self) -> u64 {
        self.options.quota_bytes
    }

    /// Appends entries to the instance's log (the audit log) in one transaction; returns the
    /// sequence number of the last. Entries past `keep` newest are pruned.
    pub fn append_log(&self, entries: &[Vec<u8>], keep: u64) -> Result<u64> {
        let sealed = entries
            .iter()
            .map(|e| self.sealer.seal(b"log", e))
            .collect::<Result<Vec<_>>>()?;
        self.engine.append_log(&sealed, keep)
    }

    /// Up to `limit` log entries with a sequence number below `before` (all if `None`), newest first.
    pub fn read_log(&self, before: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.engine
            .read_log(before.unwrap_or(u64::MAX), limit)?
            .into_iter()
            .map(|(seq, sealed)| Ok((seq, self.sealer.open(b"log", &sealed)?)))
            .collect()
    }
}

/// Binds a sealed value to its collection and key, so a value moved to another record on disk
/// fails to decrypt instead of being served under the wrong name.
fn record_aad(collection: &Collection, key: &RecordKey) -> Vec<u8> {
    let mut aad = Vec::with_capacity(6 + collection.as_str().len() + key.as_str().len());
    aad.extend_from_slice(b"rec\0");
    aad.extend_from_slice(collection.as_str().as_bytes());
    aad.push(0);
    aad.extend_from_slice(key.as_str().as_bytes());
    aad
}

fn decode_cursor(cursor: &str) -> Result<RecordKey> {
    let bad = || Error::invalid("malformed cursor");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    RecordKey::parse(std::str::from_utf8(&bytes).map_err(|_| bad())?).map_err(|_| bad())
}

#[cfg(test)]
mod tests;

//! One instance's record store: records in collections, an append-only log, encryption at rest
//! and quota accounting, behind one facade ([`Store`]) over a private engine trait.
//!
//! The facade owns what every engine must do the same way (validation has happened in `core`
//! types already; here: encryption, cursors, limits); engines own bytes on disk and atomicity
//! (precondition, quota and write in one transaction). SQLite is the default engine; RocksDB is
//! the other, chosen per instance when it is created.

mod crypto;
mod engine;
mod log;
mod rocks;
mod sqlite;

pub use crypto::{DataKey, Sealer};
/// RocksDB's options as every instance opens it (for side-by-side measurements of the bare engine).
pub use rocks::options as rocksdb_options;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
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
    /// The record exists, whatever its rev (`If-Match: *`, RFC 9110 13.1.1).
    IfExists,
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

/// One record of a whole-store scan, with its collection beside it.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScannedRecord {
    pub collection: Collection,
    pub key: RecordKey,
    pub rev: Rev,
    pub value: Vec<u8>,
}

/// A page of a whole-store scan.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ScanPage {
    pub records: Vec<ScannedRecord>,
    /// Opaque; pass back to get the next page. `None` when this page is the last.
    pub cursor: Option<String>,
}

/// One record to bulk-import; it gets a new rev.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ImportRecord {
    pub collection: Collection,
    pub key: RecordKey,
    /// The JSON value, stored as given.
    pub value: Vec<u8>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Usage {
    pub records: u64,
    /// Bytes charged against the quota: for each record, [`charged_bytes`].
    pub bytes: u64,
}

/// Bytes of fixed cost charged for every record (its rowid, rev, size and row header).
pub const RECORD_OVERHEAD: u64 = 32;

/// What one record costs against the quota: about what it takes on disk, so many tiny records
/// cannot store far more than the quota says. Its collection and key twice (the row and the
/// index on them), the value as sealed (with the cipher's nonce and tag), and a fixed overhead.
pub fn charged_bytes(collection: &Collection, key: &RecordKey, value_len: usize) -> u64 {
    let names = (collection.as_str().len() + key.as_str().len()) as u64;
    2 * names + (value_len + crypto::SEAL_OVERHEAD) as u64 + RECORD_OVERHEAD
}

/// Which engine holds an instance's records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum EngineKind {
    #[default]
    Sqlite,
    Rocksdb,
}

impl EngineKind {
    pub const ALL: [EngineKind; 2] = [EngineKind::Sqlite, EngineKind::Rocksdb];

    /// The engine's file (SQLite) or directory (RocksDB) inside an instance directory.
    pub fn file_name(self) -> &'static str {
        match self {
            EngineKind::Sqlite => "store.db",
            EngineKind::Rocksdb => "store.rocksdb",
        }
    }

    /// The engine of an existing store in `dir`, told by what is on disk.
    pub fn detect(dir: &Path) -> Option<EngineKind> {
        EngineKind::ALL.into_iter().find(|k| dir.join(k.file_name()).exists())
    }

    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Sqlite => "sqlite",
            EngineKind::Rocksdb => "rocksdb",
        }
    }
}

impl std::str::FromStr for EngineKind {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "sqlite" => Ok(EngineKind::Sqlite),
            "rocksdb" => Ok(EngineKind::Rocksdb),
            _ => Err(Error::invalid("store engine must be sqlite or rocksdb")),
        }
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
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
    /// Bytes this store may hold; changes when the instance's tier does.
    quota_bytes: std::sync::atomic::AtomicU64,
}

impl Store {
    /// Creates a new, empty store of `kind` inside the directory `dir`, durably, and opens it.
    /// `conflict` if `dir` already holds one.
    pub fn create(kind: EngineKind, dir: &Path, key: &DataKey, options: StoreOptions) -> Result<Store> {
        if EngineKind::detect(dir).is_some() {
            return Err(Error::conflict("the directory already holds a store"));
        }
        let path = dir.join(kind.file_name());
        let engine: Box<dyn Engine> = match kind {
            EngineKind::Sqlite => Box::new(sqlite::SqliteEngine::create(&path)?),
            EngineKind::Rocksdb => Box::new(rocks::RocksEngine::open(&path)?),
        };
        Ok(Store::over(engine, key, options))
    }

    /// Opens (migrating as needed) the store of `kind` inside the directory `dir`.
    pub fn open(kind: EngineKind, dir: &Path, key: &DataKey, options: StoreOptions) -> Result<Store> {
        let path = dir.join(kind.file_name());
        let engine: Box<dyn Engine> = match kind {
            EngineKind::Sqlite => Box::new(sqlite::SqliteEngine::open(&path)?),
            EngineKind::Rocksdb => Box::new(rocks::RocksEngine::open(&path)?),
        };
        Ok(Store::over(engine, key, options))
    }

    fn over(engine: Box<dyn Engine>, key: &DataKey, options: StoreOptions) -> Store {
        Store { engine, sealer: Sealer::new(key), quota_bytes: options.quota_bytes.into() }
    }

    /// Checks the engine's integrity and that the usage counters agree with a full scan.
    pub fn verify(&self) -> Result<Usage> {
        self.engine.verify()
    }

    /// Writes a copy of the whole store (records, counters and the log) as of one moment into
    /// `into`, a new directory, while writes go on; [`Store::open`] opens it. Its values stay
    /// sealed under this store's key.
    pub fn snapshot(&self, into: &Path) -> Result<()> {
        selfcloud_durable::create_private_dir(into)?;
        if std::fs::read_dir(into).map_err(|e| selfcloud_durable::io_err("read", into, e))?.next().is_some() {
            return Err(Error::conflict("a snapshot goes into an empty directory"));
        }
        self.engine.snapshot(into)
    }

    pub fn get(&self, collection: &Collection, key: &RecordKey) -> Result<Option<Record>> {
        let Some((rev, sealed)) = self.engine.get(collection.as_str(), key.as_str())? else {
            return Ok(None);
        };
        let value = self.sealer.open(&record_aad(collection, key), sealed)?;
        Ok(Some(Record { key: key.clone(), rev, value }))
    }

    /// Writes `value` (JSON bytes) and returns the new rev.
    pub fn put(&self, collection: &Collection, key: &RecordKey, value: &[u8], cond: Precondition) -> Result<Rev> {
        let sealed = self.sealer.seal(&record_aad(collection, key), value)?;
        let size = charged_bytes(collection, key, value.len());
        self.engine.put(collection.as_str(), key.as_str(), cond, size, &sealed, self.quota_bytes())
    }

    /// Deletes a record; `not_found` if it does not exist.
    pub fn delete(&self, collection: &Collection, key: &RecordKey, cond: Precondition) -> Result<()> {
        self.engine.delete(collection.as_str(), key.as_str(), cond)
    }

    /// Records of `collection` whose key starts with `prefix`, in key order, after `cursor`: up
    /// to `limit`, fewer once their values reach `max_bytes` (a page always has one).
    pub fn list(
        &self,
        collection: &Collection,
        prefix: &str,
        limit: usize,
        max_bytes: usize,
        cursor: Option<&str>,
    ) -> Result<Page> {
        validate_key_prefix(prefix)?;
        let after = cursor.map(decode_cursor).transpose()?;
        let limit = limit.max(1);
        // One extra row tells whether another page follows without a second query; a page cut
        // short by `max_bytes` cannot tell, so it hands out a cursor (the next may be empty).
        let after = after.as_ref().map(|k| k.as_str());
        let mut rows = self.engine.list(collection.as_str(), prefix, after, limit + 1, max_bytes)?;
        let more = rows.len() > limit || rows.iter().map(|r| r.2.len()).sum::<usize>() >= max_bytes;
        rows.truncate(limit);
        let mut records = Vec::with_capacity(rows.len());
        for (key, rev, sealed) in rows {
            let key = RecordKey::parse(&key).map_err(|_| Error::internal("stored key violates grammar"))?;
            let value = self.sealer.open(&record_aad(collection, &key), sealed)?;
            records.push(Record { key, rev, value });
        }
        let cursor = if more { records.last().map(|r| URL_SAFE_NO_PAD.encode(r.key.as_str())) } else { None };
        Ok(Page { records, cursor })
    }

    /// Every record of every collection in (collection, key) order, after `cursor`: up to
    /// `limit` records, fewer once their values reach `max_bytes` (always at least one). Each
    /// page is read on its own: records written during a scan may or may not appear, but none
    /// appears twice.
    pub fn scan(&self, cursor: Option<&str>, limit: usize, max_bytes: usize) -> Result<ScanPage> {
        let after = cursor.map(decode_scan_cursor).transpose()?;
        let limit = limit.max(1);
        let after = after.as_ref().map(|(c, k)| (c.as_str(), k.as_str()));
        // One extra row tells whether another page follows without a second query; a page cut
        // short by `max_bytes` cannot tell, so it hands out a cursor (the next page may be empty).
        let mut rows = self.engine.scan(after, limit + 1, max_bytes)?;
        let full = rows.len() > limit || rows.iter().map(|r| r.3.len()).sum::<usize>() >= max_bytes;
        rows.truncate(limit);
        let mut records = Vec::with_capacity(rows.len());
        for (collection, key, rev, sealed) in rows {
            let bad = || Error::internal("stored name violates grammar");
            let collection = Collection::parse_stored(&collection).map_err(|_| bad())?;
            let key = RecordKey::parse(&key).map_err(|_| bad())?;
            let value = self.sealer.open(&record_aad(&collection, &key), sealed)?;
            records.push(ScannedRecord { collection, key, rev, value });
        }
        let cursor = match records.last() {
            Some(r) if full => Some(URL_SAFE_NO_PAD.encode(format!("{}/{}", r.collection, r.key))),
            _ => None,
        };
        Ok(ScanPage { records, cursor })
    }

    /// Writes `records` into this store, which must hold none (`conflict` otherwise), in one
    /// atomic and durable write: all of them or, on any error (`quota_exceeded`, a record out of
    /// (collection, key) order or repeated, an error the iterator yields), none. Records are
    /// taken one by one and sealed as they come, so an import streams. Records get new revs;
    /// keys and values are stored as given. Returns the usage afterwards.
    pub fn import(&self, records: impl IntoIterator<Item = Result<ImportRecord>>) -> Result<Usage> {
        let mut last: Option<(Collection, RecordKey)> = None;
        let mut rows = records.into_iter().map(|r| {
            let r = r?;
            if last.as_ref().is_some_and(|(c, k)| (c, k) >= (&r.collection, &r.key)) {
                return Err(Error::invalid("imported records must be in (collection, key) order, each once"));
            }
            let row = engine::ImportRow {
                sealed: self.sealer.seal(&record_aad(&r.collection, &r.key), &r.value)?,
                size: charged_bytes(&r.collection, &r.key, r.value.len()),
                collection: r.collection.as_str().to_owned(),
                key: r.key.as_str().to_owned(),
            };
            last = Some((r.collection, r.key));
            Ok(row)
        });
        self.engine.import(&mut rows, self.quota_bytes())?;
        self.engine.usage()
    }

    pub fn usage(&self) -> Result<Usage> {
        self.engine.usage()
    }

    pub fn quota_bytes(&self) -> u64 {
        self.quota_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Applies a new quota (a tier change); existing data stays even if it is now over.
    pub fn set_quota_bytes(&self, quota: u64) {
        self.quota_bytes.store(quota, std::sync::atomic::Ordering::Relaxed);
    }

    /// Appends entries to the instance's log (the audit log) as one batch, in one transaction;
    /// returns the sequence number of the last (0 if there were none). Batches whose entries
    /// are all older than the `keep` newest are pruned, so at least `keep` entries stay.
    pub fn append_log(&self, entries: &[Vec<u8>], keep: u64) -> Result<u64> {
        if entries.is_empty() {
            return Ok(0);
        }
        let (packed, count) = (log::pack(entries), entries.len() as u64);
        self.engine.append_log(count, keep.max(1), &|first| self.sealer.seal(&log::aad(first, count), &packed))
    }

    /// Up to `limit` log entries with a sequence number below `before` (all if `None`), newest first.
    pub fn read_log(&self, before: Option<u64>, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let before = before.unwrap_or(u64::MAX);
        let mut out = Vec::with_capacity(limit.min(1024));
        for batch in self.engine.read_log(before, limit)? {
            let first = batch.last + 1 - batch.count;
            let opened = self.sealer.open(&log::aad(first, batch.count), batch.sealed)?;
            let entries = log::unpack(&opened, batch.count)?;
            for (i, entry) in entries.into_iter().enumerate().rev() {
                let seq = first + i as u64;
                if seq < before && out.len() < limit {
                    out.push((seq, entry));
                }
            }
        }
        Ok(out)
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

/// A scan cursor: the last record's `collection/key` (neither grammar has `/`).
fn decode_scan_cursor(cursor: &str) -> Result<(Collection, RecordKey)> {
    let bad = || Error::invalid("malformed cursor");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    let text = std::str::from_utf8(&bytes).map_err(|_| bad())?;
    let (collection, key) = text.split_once('/').ok_or_else(bad)?;
    Ok((Collection::parse_stored(collection).map_err(|_| bad())?, RecordKey::parse(key).map_err(|_| bad())?))
}

fn decode_cursor(cursor: &str) -> Result<RecordKey> {
    let bad = || Error::invalid("malformed cursor");
    let bytes = URL_SAFE_NO_PAD.decode(cursor).map_err(|_| bad())?;
    RecordKey::parse(std::str::from_utf8(&bytes).map_err(|_| bad())?).map_err(|_| bad())
}

#[cfg(test)]
mod tests;

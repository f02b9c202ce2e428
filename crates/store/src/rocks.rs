//! The RocksDB engine: one database directory per instance. Every write is one `WriteBatch`
//! written with `sync`, so an acknowledged write survives a crash; the per-instance write lock
//! makes check-then-write (precondition, quota, rev) atomic. Counters live in the same batches.
//!
//! Key layout (collection and key grammars exclude NUL, so NUL separators keep order by key):
//! `r\0<collection>\0<key>` -> rev (u64 BE) | size (u64 BE) | sealed value
//! `c\0`                     -> the counters: rev | records | bytes (u64 BE each), one key so a
//!                             write adds one small entry to the memtable, not three
//! `l\0<seq u64 BE>`        -> a log batch ending at entry `seq`: count (u64 BE) | sealed

use crate::engine::{agree, check, check_empty, check_quota, missing, Engine, ImportRows, LogBatch, ScanRow, Sealed};
use crate::log::entries_before;
use crate::{Precondition, Rev, Usage};
use parking_lot::Mutex;
use rocksdb::{Direction, IteratorMode, Options, ReadOptions, WriteBatch, WriteOptions, DB};
use selfcloud_core::{Error, Result};
use std::path::Path;

/// The options every instance's database is opened with.
pub fn options() -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(true);
    // Values are sealed (random-looking) before they get here: compression would not help.
    opts.set_compression_type(rocksdb::DBCompressionType::None);
    // Many small instances per node: keep each one's memtable and file handles modest.
    opts.set_write_buffer_size(4 << 20);
    opts.set_max_open_files(64);
    opts.set_keep_log_file_num(2);
    opts
}

pub(crate) struct RocksEngine {
    db: DB,
    /// The write lock, holding the counters as last written.
    writer: Mutex<Counters>,
}

#[derive(Clone, Copy, Default)]
struct Counters {
    rev: i64,
    records: i64,
    bytes: i64,
    log_seq: u64,
}

impl Counters {
    /// The stored form of the `c\0` key: rev | records | bytes (the log's number is its keys').
    fn encode(&self) -> [u8; 24] {
        let mut value = [0u8; 24];
        for (slot, n) in value.chunks_exact_mut(8).zip([self.rev, self.records, self.bytes]) {
            slot.copy_from_slice(&(n as u64).to_be_bytes());
        }
        value
    }

    fn decode(&mut self, value: &[u8]) -> Result<()> {
        if value.len() != 24 {
            return Err(Error::internal("rocksdb: counters have the wrong length"));
        }
        self.rev = be_u64(&value[..8])? as i64;
        self.records = be_u64(&value[8..16])? as i64;
        self.bytes = be_u64(&value[16..])? as i64;
        Ok(())
    }
}

fn db_err(e: rocksdb::Error) -> Error {
    // RocksDB names the failure only in its message ("IO error: No space left on device").
    let text = e.to_string();
    if text.contains("No space left on device") || text.contains("Disk quota exceeded") {
        Error::disk_full(format!("rocksdb: {text}"))
    } else {
        Error::internal(format!("rocksdb: {text}"))
    }
}

fn record_key(collection: &str, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(3 + collection.len() + key.len());
    k.extend_from_slice(b"r\0");
    k.extend_from_slice(collection.as_bytes());
    k.push(0);
    k.extend_from_slice(key.as_bytes());
    k
}

fn log_key(seq: u64) -> [u8; 10] {
    let mut k = [0u8; 10];
    k[..2].copy_from_slice(b"l\0");
    k[2..].copy_from_slice(&seq.to_be_bytes());
    k
}

const COUNTERS: &[u8] = b"c\0";

fn be_u64(bytes: &[u8]) -> Result<u64> {
    bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| Error::internal("rocksdb: short value"))
}

/// A stored record value: `rev | size | sealed`.
fn encode(rev: Rev, size: u64, sealed: &[u8]) -> Vec<u8> {
    let mut stored = Vec::with_capacity(16 + sealed.len());
    stored.extend_from_slice(&rev.to_be_bytes());
    stored.extend_from_slice(&size.to_be_bytes());
    stored.extend_from_slice(sealed);
    stored
}

/// `(rev, size, sealed)` from a stored record value.
fn decode(value: &[u8]) -> Result<(Rev, u64, &[u8])> {
    if value.len() < 16 {
        return Err(Error::internal("rocksdb: record too short"));
    }
    Ok((be_u64(&value[..8])?, be_u64(&value[8..16])?, &value[16..]))
}

impl RocksEngine {
    pub fn open(path: &Path) -> Result<Self> {
        let db = DB::open(&options(), path).map_err(db_err)?;
        let mut counters = Counters::default();
        if let Some(v) = db.get_pinned(COUNTERS).map_err(db_err)? {
            counters.decode(&v)?;
        }
        // The newest log entry is the last key under the log prefix.
        let mut it = db.iterator(IteratorMode::From(&log_key(u64::MAX), Direction::Reverse));
        if let Some(item) = it.next() {
            let (k, _) = item.map_err(db_err)?;
            if k.len() == 10 && k.starts_with(b"l\0") {
                counters.log_seq = be_u64(&k[2..])?;
            }
        }
        drop(it);
        Ok(RocksEngine { db, writer: Mutex::new(counters) })
    }

    fn write(&self, mut batch: WriteBatch, c: &Counters) -> Result<()> {
        batch.put(COUNTERS, c.encode());
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch, &opts).map_err(db_err)
    }

    fn scan_totals(&self) -> Result<Usage> {
        let (mut records, mut bytes) = (0u64, 0u64);
        for item in self.db.iterator(IteratorMode::From(b"r\0", Direction::Forward)) {
            let (k, v) = item.map_err(db_err)?;
            if !k.starts_with(b"r\0") {
                break;
            }
            let (_, size, _) = decode(&v)?;
            records += 1;
            bytes += size;
        }
        Ok(Usage { records, bytes })
    }
}

impl Engine for RocksEngine {
    fn get(&self, collection: &str, key: &str) -> Result<Option<(Rev, Sealed)>> {
        let Some(v) = self.db.get_pinned(record_key(collection, key)).map_err(db_err)? else { return Ok(None) };
        let (rev, _, sealed) = decode(&v)?;
        Ok(Some((rev, sealed.to_vec())))
    }

    fn put(&self, collection: &str, key: &str, cond: Precondition, size: u64, value: &[u8], quota: u64) -> Result<Rev> {
        let mut counters = self.writer.lock();
        let k = record_key(collection, key);
        let current = self
            .db
            .get_pinned(&k)
            .map_err(db_err)?
            .map(|v| decode(&v).map(|(rev, size, _)| (rev, size)))
            .transpose()?;
        check(cond, current.map(|(rev, _)| rev))?;
        let delta = size as i64 - current.map_or(0, |(_, s)| s as i64);
        check_quota(delta, counters.bytes, quota)?;
        let mut next = *counters;
        next.rev += 1;
        next.bytes += delta;
        next.records += i64::from(current.is_none());
        let mut batch = WriteBatch::default();
        batch.put(&k, encode(next.rev as Rev, size, value));
        self.write(batch, &next)?;
        *counters = next;
        Ok(next.rev as Rev)
    }

    fn delete(&self, collection: &str, key: &str, cond: Precondition) -> Result<()> {
        let mut counters = self.writer.lock();
        let k = record_key(collection, key);
        let Some((rev, size)) =
            self.db.get_pinned(&k).map_err(db_err)?.map(|v| decode(&v).map(|(r, s, _)| (r, s))).transpose()?
        else {
            return Err(missing(cond));
        };
        check(cond, Some(rev))?;
        let mut next = *counters;
        next.bytes -= size as i64;
        next.records -= 1;
        let mut batch = WriteBatch::default();
        batch.delete(&k);
        self.write(batch, &next)?;
        *counters = next;
        Ok(())
    }

    fn list(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, Rev, Sealed)>> {
        let base = record_key(collection, "");
        let lower = match after {
            Some(a) if a >= prefix => {
                // The smallest key strictly after `a`: `a` followed by NUL.
                let mut k = record_key(collection, a);
                k.push(0);
                k
            }
            _ => record_key(collection, prefix),
        };
        // Every key byte sorts below 0x7f, so `prefix || 0x7f` bounds the keys with that prefix.
        let mut upper = record_key(collection, prefix);
        upper.push(0x7f);
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(upper);
        let (mut out, mut bytes) = (Vec::with_capacity(limit.min(1024)), 0);
        for item in self.db.iterator_opt(IteratorMode::From(&lower, Direction::Forward), opts) {
            if out.len() == limit || bytes >= max_bytes {
                break;
            }
            let (k, v) = item.map_err(db_err)?;
            let key =
                std::str::from_utf8(&k[base.len()..]).map_err(|_| Error::internal("rocksdb: key is not UTF-8"))?;
            let (rev, _, sealed) = decode(&v)?;
            bytes += sealed.len();
            out.push((key.to_owned(), rev, sealed.to_vec()));
        }
        Ok(out)
    }

    fn scan(&self, after: Option<(&str, &str)>, limit: usize, max_bytes: usize) -> Result<Vec<ScanRow>> {
        // NUL sorts below every name byte, so `r\0<collection>\0<key>` order is (collection, key)
        // order, and the smallest key strictly after a record is its key followed by NUL.
        let lower = match after {
            Some((collection, key)) => {
                let mut k = record_key(collection, key);
                k.push(0);
                k
            }
            None => b"r\0".to_vec(),
        };
        let mut opts = ReadOptions::default();
        opts.set_iterate_upper_bound(b"r\x01".to_vec());
        let (mut out, mut bytes) = (Vec::with_capacity(limit.min(1024)), 0);
        for item in self.db.iterator_opt(IteratorMode::From(&lower, Direction::Forward), opts) {
            if out.len() == limit || (!out.is_empty() && bytes >= max_bytes) {
                break;
            }
            let (k, v) = item.map_err(db_err)?;
            let names = std::str::from_utf8(&k[2..]).map_err(|_| Error::internal("rocksdb: key is not UTF-8"))?;
            let (collection, key) =
                names.split_once('\0').ok_or_else(|| Error::internal("rocksdb: record key without separator"))?;
            let (rev, _, sealed) = decode(&v)?;
            bytes += sealed.len();
            out.push((collection.to_owned(), key.to_owned(), rev, sealed.to_vec()));
        }
        Ok(out)
    }

    fn import(&self, rows: ImportRows, quota: u64) -> Result<()> {
        let mut counters = self.writer.lock();
        check_empty(counters.records)?;
        let mut next = *counters;
        // The batch holds the sealed import until its one write: RocksDB's atomicity costs
        // memory of the archive's size (SQLite's transaction spills to its log instead).
        let mut batch = WriteBatch::default();
        for row in rows {
            let row = row?;
            check_quota(row.size as i64, next.bytes, quota)?;
            next.rev += 1;
            next.records += 1;
            next.bytes += row.size as i64;
            batch.put(record_key(&row.collection, &row.key), encode(next.rev as Rev, row.size, &row.sealed));
        }
        // One synced batch: all of the import survives a crash, or none of it.
        self.write(batch, &next)?;
        *counters = next;
        Ok(())
    }

    fn usage(&self) -> Result<Usage> {
        let c = *self.writer.lock();
        Ok(Usage { records: c.records as u64, bytes: c.bytes as u64 })
    }

    fn append_log(&self, count: u64, keep: u64, seal: &dyn Fn(u64) -> Result<Sealed>) -> Result<u64> {
        let mut counters = self.writer.lock();
        let mut next = *counters;
        let sealed = seal(next.log_seq + 1)?;
        next.log_seq += count;
        let mut value = Vec::with_capacity(8 + sealed.len());
        value.extend_from_slice(&count.to_be_bytes());
        value.extend_from_slice(&sealed);
        let mut batch = WriteBatch::default();
        batch.put(log_key(next.log_seq), value);
        if next.log_seq > keep {
            batch.delete_range(log_key(0), log_key(next.log_seq - keep + 1));
        }
        self.write(batch, &next)?;
        *counters = next;
        Ok(next.log_seq)
    }

    fn verify(&self) -> Result<Usage> {
        // Opening replayed the WAL and checked what it read; a full scan reads every block
        // (checksums verified) and must agree with the counters.
        let scanned = self.scan_totals()?;
        agree(self.usage()?, scanned)
    }

    fn snapshot(&self, into: &Path) -> Result<()> {
        // A checkpoint flushes the memtable and takes the live files with deletions held off.
        // Its hard links fail under the sandbox (EXDEV, as across filesystems), so it copies.
        let checkpoint = rocksdb::checkpoint::Checkpoint::new(&self.db).map_err(db_err)?;
        checkpoint.create_checkpoint(into.join(crate::EngineKind::Rocksdb.file_name())).map_err(db_err)
    }

    fn read_log(&self, before: u64, limit: usize) -> Result<Vec<LogBatch>> {
        let bounded = || {
            let mut opts = ReadOptions::default();
            opts.set_iterate_lower_bound(log_key(0).to_vec());
            opts.set_iterate_upper_bound(b"l\x01".to_vec());
            opts
        };
        let parse = |k: &[u8], v: &[u8]| -> Result<LogBatch> {
            Ok(LogBatch { last: be_u64(&k[2..])?, count: be_u64(v)?, sealed: v[8..].to_vec() })
        };
        let mut out = Vec::new();
        // The one batch that may straddle `before`: the first ending at or after it.
        if let Some(item) =
            self.db.iterator_opt(IteratorMode::From(&log_key(before), Direction::Forward), bounded()).next()
        {
            let (k, v) = item.map_err(db_err)?;
            let batch = parse(&k, &v)?;
            if entries_before(batch.last, batch.count, before) > 0 {
                out.push(batch);
            }
        }
        let mut held: u64 = out.iter().map(|b| entries_before(b.last, b.count, before)).sum();
        if before == 0 {
            return Ok(out);
        }
        // Then the batches ending before it, newest first.
        for item in self.db.iterator_opt(IteratorMode::From(&log_key(before - 1), Direction::Reverse), bounded()) {
            if held >= limit as u64 {
                break;
            }
            let (k, v) = item.map_err(db_err)?;
            let batch = parse(&k, &v)?;
            held += batch.count;
            out.push(batch);
        }
        Ok(out)
    }
}

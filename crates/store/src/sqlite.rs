//! The SQLite engine: one database file per instance, WAL with `synchronous=FULL` so an
//! acknowledged write survives a crash or power loss. One writer connection behind a lock (the
//! per-instance write lock) and a small pool of reader connections that read in parallel. The
//! file is this process's alone while it is open (`Sharing::ThisProcess`), so reads take no
//! file locks; `selfcloud verify` runs on a stopped server.
//!
//! Records live in a rowid table with a unique index on (collection, key), not in a `WITHOUT
//! ROWID` table: an index b-tree keeps at most ~1000 bytes of a row on its page, so 1 KiB values
//! would each spill to an overflow page, which SQLite reads past its cache with a syscall.
//!
//! The log (the audit log) is a second file, `log.db`, with its own connection. Appends come
//! all the time, and every commit to a file makes its readers drop their page caches; apart,
//! they leave the record readers' caches warm. Log commits do not fsync (`synchronous=NORMAL`):
//! they survive a crash of the process, as the queue in front of them does not. The file is
//! created by the first append, so sign-up creates one database, not two.

use crate::engine::{agree, check, check_empty, check_quota, missing, Engine, ImportRows, LogBatch, ScanRow, Sealed};
use crate::log::entries_before;
use crate::{Precondition, Rev, Usage};
use parking_lot::Mutex;
use rusqlite::{params, Connection, OpenFlags, OptionalExtension, TransactionBehavior};
use selfcloud_core::{Error, Result};
use selfcloud_durable::io_err;
use selfcloud_durable::sqlite::{open_connection, open_migrated, Durability, Sharing};
use std::path::{Path, PathBuf};

/// Schema versions of `store.db`, applied in order on open (`PRAGMA user_version` records how
/// far a file is).
const MIGRATIONS: &[&str] = &[
    // 1: records and counters.
    "CREATE TABLE records (
         id         INTEGER PRIMARY KEY,
         collection TEXT NOT NULL,
         key        TEXT NOT NULL,
         rev        INTEGER NOT NULL,
         size       INTEGER NOT NULL,
         value      BLOB NOT NULL,
         UNIQUE (collection, key)
     );
     CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
     INSERT INTO counters VALUES ('rev', 0), ('records', 0), ('bytes', 0);",
];

#[cfg(test)]
pub(crate) const MIGRATIONS_LEN: usize = MIGRATIONS.len();

/// Schema versions of `log.db`.
const LOG_MIGRATIONS: &[&str] = &[
    // 1: the log, a row per batch: the number of its last entry, how many it holds, sealed.
    "CREATE TABLE log (seq INTEGER PRIMARY KEY, count INTEGER NOT NULL, value BLOB NOT NULL);",
];

/// The log's file, beside the store's.
pub(crate) const LOG_FILE: &str = "log.db";

/// Reader connections kept open; more are opened under load and closed after.
const READERS_KEPT: usize = 4;

pub(crate) struct SqliteEngine {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
    log_path: PathBuf,
    /// The log's one connection (appends, the owner's reads, checks), once the log exists.
    log: Mutex<Option<Connection>>,
}

fn db_err(e: rusqlite::Error) -> Error {
    selfcloud_durable::sqlite::error("sqlite", e)
}

impl SqliteEngine {
    pub fn open(path: &Path) -> Result<Self> {
        let writer = open_migrated(path, Durability::Full, Sharing::ThisProcess, MIGRATIONS, "sqlite")?;
        Ok(SqliteEngine {
            path: path.to_owned(),
            writer: Mutex::new(writer),
            readers: Mutex::new(Vec::new()),
            log_path: path.with_file_name(LOG_FILE),
            log: Mutex::new(None),
        })
    }

    /// Creates a store at `path` (which must not exist) as a synced copy of an empty, migrated
    /// store file, then opens it. Sign-up waits on this: copying a few pages costs a fraction of
    /// creating the database (the switch to WAL, the schema, their syncs).
    pub fn create(path: &Path) -> Result<Self> {
        let dir = path.parent().expect("a store lives in a directory");
        selfcloud_durable::create_new(path, template(dir)?)?;
        Self::open(path)
    }

    /// Runs `f` on the log's connection, opening the log first (creating it if `create`);
    /// `None` if there is no log and `create` is false.
    fn with_log<T>(&self, create: bool, f: impl FnOnce(&mut Connection) -> Result<T>) -> Result<Option<T>> {
        let mut slot = self.log.lock();
        if slot.is_none() {
            if !create && !self.log_path.exists() {
                return Ok(None);
            }
            *slot = Some(open_migrated(
                &self.log_path,
                Durability::Normal,
                Sharing::Processes,
                LOG_MIGRATIONS,
                "sqlite log",
            )?);
        }
        f(slot.as_mut().expect("opened just above")).map(Some)
    }

    fn read<T>(&self, f: impl FnOnce(&Connection) -> rusqlite::Result<T>) -> Result<T> {
        let conn = self.readers.lock().pop();
        let conn = match conn {
            Some(c) => c,
            None => {
                // Read-write, though it only reads: `unix-excl` skips its locks only for those.
                let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
                let c = open_connection(&self.path, flags, Sharing::ThisProcess, "sqlite")?;
                c.busy_timeout(std::time::Duration::from_secs(5)).map_err(db_err)?;
                c
            }
        };
        let out = f(&conn).map_err(db_err);
        let mut pool = self.readers.lock();
        if pool.len() < READERS_KEPT {
            pool.push(conn);
        }
        out
    }
}

/// The bytes of an empty store file at the current schema, in WAL mode: made once per process,
/// in a scratch file inside `dir` (so on the same file system), then kept in memory. Closing the
/// only connection checkpoints and removes the WAL, so the one file holds everything.
fn template(dir: &Path) -> Result<&'static [u8]> {
    static TEMPLATE: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    if let Some(t) = TEMPLATE.get() {
        return Ok(t);
    }
    let scratch = dir.join(format!(".template-{:016x}.db", rand::random::<u64>()));
    let made = make_template(&scratch);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", scratch.display()));
    }
    let bytes = made?;
    Ok(TEMPLATE.get_or_init(|| bytes))
}

fn make_template(scratch: &Path) -> Result<Vec<u8>> {
    let conn = open_migrated(scratch, Durability::Full, Sharing::Processes, MIGRATIONS, "sqlite")?;
    conn.close().map_err(|(_, e)| db_err(e))?;
    std::fs::read(scratch).map_err(|e| io_err("read", scratch, e))
}

fn bump(tx: &rusqlite::Transaction, name: &str, delta: i64) -> rusqlite::Result<i64> {
    tx.query_row("UPDATE counters SET value = value + ?2 WHERE name = ?1 RETURNING value", params![name, delta], |r| {
        r.get(0)
    })
}

impl Engine for SqliteEngine {
    fn get(&self, collection: &str, key: &str) -> Result<Option<(Rev, Sealed)>> {
        self.read(|c| {
            c.prepare_cached("SELECT rev, value FROM records WHERE collection = ?1 AND key = ?2")?
                .query_row(params![collection, key], |r| Ok((r.get::<_, i64>(0)? as Rev, r.get(1)?)))
                .optional()
        })
    }

    fn put(&self, collection: &str, key: &str, cond: Precondition, size: u64, value: &[u8], quota: u64) -> Result<Rev> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
        let current: Option<(i64, i64)> = tx
            .prepare_cached("SELECT rev, size FROM records WHERE collection = ?1 AND key = ?2")
            .and_then(|mut s| s.query_row(params![collection, key], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(db_err)?;
        check(cond, current.map(|(rev, _)| rev as Rev))?;
        let old_size = current.map_or(0, |(_, s)| s);
        let delta = size as i64 - old_size;
        let used: i64 =
            tx.query_row("SELECT value FROM counters WHERE name = 'bytes'", [], |r| r.get(0)).map_err(db_err)?;
        check_quota(delta, used, quota)?;
        let rev = bump(&tx, "rev", 1).map_err(db_err)?;
        tx.prepare_cached(
            "INSERT INTO records (collection, key, rev, size, value) VALUES (?1, ?2, ?3, ?4, ?5)
             ON CONFLICT (collection, key) DO UPDATE SET rev = excluded.rev, size = excluded.size, value = excluded.value",
        )
        .and_then(|mut s| s.execute(params![collection, key, rev, size as i64, value]))
        .map_err(db_err)?;
        bump(&tx, "bytes", delta).map_err(db_err)?;
        if current.is_none() {
            bump(&tx, "records", 1).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(rev as Rev)
    }

    fn delete(&self, collection: &str, key: &str, cond: Precondition) -> Result<()> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
        let current: Option<(i64, i64)> = tx
            .prepare_cached("SELECT rev, size FROM records WHERE collection = ?1 AND key = ?2")
            .and_then(|mut s| s.query_row(params![collection, key], |r| Ok((r.get(0)?, r.get(1)?))).optional())
            .map_err(db_err)?;
        let Some((rev, size)) = current else {
            return Err(missing(cond));
        };
        check(cond, Some(rev as Rev))?;
        tx.execute("DELETE FROM records WHERE collection = ?1 AND key = ?2", params![collection, key])
            .map_err(db_err)?;
        bump(&tx, "bytes", -size).map_err(db_err)?;
        bump(&tx, "records", -1).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    fn list(
        &self,
        collection: &str,
        prefix: &str,
        after: Option<&str>,
        limit: usize,
        max_bytes: usize,
    ) -> Result<Vec<(String, Rev, Sealed)>> {
        // Every key byte sorts below 0x7f, so `prefix || 0x7f` bounds the keys with that prefix.
        let upper = format!("{prefix}\u{7f}");
        let lower = match after {
            Some(a) if a >= prefix => a,
            _ => prefix,
        };
        let strict = after.is_some_and(|a| a >= prefix);
        self.read(|c| {
            let sql = if strict {
                "SELECT key, rev, value FROM records WHERE collection = ?1 AND key > ?2 AND key < ?3 ORDER BY key LIMIT ?4"
            } else {
                "SELECT key, rev, value FROM records WHERE collection = ?1 AND key >= ?2 AND key < ?3 ORDER BY key LIMIT ?4"
            };
            let mut stmt = c.prepare_cached(sql)?;
            let mut rows = stmt.query(params![collection, lower, upper, limit as i64])?;
            let (mut out, mut bytes) = (Vec::new(), 0);
            while let Some(r) = rows.next()? {
                let value: Sealed = r.get(2)?;
                bytes += value.len();
                out.push((r.get(0)?, r.get::<_, i64>(1)? as Rev, value));
                if bytes >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn scan(&self, after: Option<(&str, &str)>, limit: usize, max_bytes: usize) -> Result<Vec<ScanRow>> {
        // Every collection is non-empty, so ("", "") sorts before every record. The row-value
        // comparison is a range on the primary key: each page is one seek.
        let (collection, key) = after.unwrap_or(("", ""));
        self.read(|c| {
            let mut stmt = c.prepare_cached(
                "SELECT collection, key, rev, value FROM records WHERE (collection, key) > (?1, ?2)
                 ORDER BY collection, key LIMIT ?3",
            )?;
            let mut rows = stmt.query(params![collection, key, limit as i64])?;
            let (mut out, mut bytes) = (Vec::new(), 0);
            while let Some(r) = rows.next()? {
                let value: Sealed = r.get(3)?;
                bytes += value.len();
                out.push((r.get(0)?, r.get(1)?, r.get::<_, i64>(2)? as Rev, value));
                if bytes >= max_bytes {
                    break;
                }
            }
            Ok(out)
        })
    }

    fn import(&self, rows: ImportRows, quota: u64) -> Result<()> {
        let mut conn = self.writer.lock();
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
        let (records, used): (i64, i64) = tx
            .query_row(
                "SELECT (SELECT value FROM counters WHERE name = 'records'), (SELECT value FROM counters WHERE name = 'bytes')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .map_err(db_err)?;
        check_empty(records)?;
        let first_rev = bump(&tx, "rev", 0).map_err(db_err)?;
        let (mut count, mut bytes) = (0i64, 0i64);
        {
            let mut stmt = tx
                .prepare_cached("INSERT INTO records (collection, key, rev, size, value) VALUES (?1, ?2, ?3, ?4, ?5)")
                .map_err(db_err)?;
            for row in rows {
                let row = row?;
                check_quota(row.size as i64, used + bytes, quota)?;
                count += 1;
                bytes += row.size as i64;
                stmt.execute(params![row.collection, row.key, first_rev + count, row.size as i64, row.sealed])
                    .map_err(db_err)?;
            }
        }
        // Dropped without commit on any error above: the transaction rolls back whole.
        bump(&tx, "rev", count).map_err(db_err)?;
        bump(&tx, "bytes", bytes).map_err(db_err)?;
        bump(&tx, "records", count).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    fn usage(&self) -> Result<Usage> {
        self.read(|c| {
            c.query_row(
                "SELECT (SELECT value FROM counters WHERE name = 'records'), (SELECT value FROM counters WHERE name = 'bytes')",
                [],
                |r| Ok(Usage { records: r.get::<_, i64>(0)? as u64, bytes: r.get::<_, i64>(1)? as u64 }),
            )
        })
    }

    fn append_log(&self, count: u64, keep: u64, seal: &dyn Fn(u64) -> Result<Sealed>) -> Result<u64> {
        let appended = self.with_log(true, |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate).map_err(db_err)?;
            let prev: i64 = tx.query_row("SELECT coalesce(max(seq), 0) FROM log", [], |r| r.get(0)).map_err(db_err)?;
            let last = prev as u64 + count;
            let sealed = seal(prev as u64 + 1)?;
            tx.prepare_cached("INSERT INTO log (seq, count, value) VALUES (?1, ?2, ?3)")
                .and_then(|mut st| st.execute(params![last as i64, count as i64, sealed]))
                .map_err(db_err)?;
            if last > keep {
                tx.execute("DELETE FROM log WHERE seq <= ?1", params![(last - keep) as i64]).map_err(db_err)?;
            }
            tx.commit().map_err(db_err)?;
            Ok(last)
        })?;
        Ok(appended.expect("with_log(create) always runs"))
    }

    fn verify(&self) -> Result<Usage> {
        self.with_log(false, |log| integrity_check(log, LOG_FILE))?;
        let conn = self.writer.lock();
        integrity_check(&conn, crate::EngineKind::Sqlite.file_name())?;
        let scanned = conn
            .query_row("SELECT count(*), coalesce(sum(size), 0) FROM records", [], |r| {
                Ok(Usage { records: r.get::<_, i64>(0)? as u64, bytes: r.get::<_, i64>(1)? as u64 })
            })
            .map_err(db_err)?;
        drop(conn);
        agree(self.usage()?, scanned)
    }

    fn snapshot(&self, into: &Path) -> Result<()> {
        // The online backup in one step is one read transaction: a single moment, writers
        // unblocked (WAL), and no restart when they commit meanwhile.
        self.read(|conn| copy_database(conn, &into.join(crate::EngineKind::Sqlite.file_name())))?;
        self.with_log(false, |log| copy_database(log, &into.join(LOG_FILE)).map_err(db_err))?;
        Ok(())
    }

    fn read_log(&self, before: u64, limit: usize) -> Result<Vec<LogBatch>> {
        let batches = self.with_log(false, |conn| {
            // Newest first, skipping batches that only hold entries from `before` on.
            let mut stmt = conn
                .prepare_cached("SELECT seq, count, value FROM log WHERE seq - count + 1 < ?1 ORDER BY seq DESC")
                .map_err(db_err)?;
            let mut rows = stmt.query(params![before.min(i64::MAX as u64) as i64]).map_err(db_err)?;
            let (mut out, mut held) = (Vec::new(), 0u64);
            while held < limit as u64 {
                let Some(r) = rows.next().map_err(db_err)? else { break };
                let batch = LogBatch {
                    last: r.get::<_, i64>(0).map_err(db_err)? as u64,
                    count: r.get::<_, i64>(1).map_err(db_err)? as u64,
                    sealed: r.get(2).map_err(db_err)?,
                };
                held += entries_before(batch.last, batch.count, before);
                out.push(batch);
            }
            Ok(out)
        })?;
        Ok(batches.unwrap_or_default())
    }
}

fn integrity_check(conn: &Connection, file: &str) -> Result<()> {
    let report: String = conn.query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(db_err)?;
    if report != "ok" {
        return Err(Error::internal(format!("sqlite integrity_check of {file}: {report}")));
    }
    Ok(())
}

/// Copies the database `from` reads into a new file at `to`, in one step.
fn copy_database(from: &Connection, to: &Path) -> rusqlite::Result<()> {
    let mut copy = Connection::open(to)?;
    let backup = rusqlite::backup::Backup::new(from, &mut copy)?;
    backup.step(-1)?;
    drop(backup);
    // The copy is read as a file: nothing of it left in a WAL beside it.
    copy.pragma_update(None, "journal_mode", "DELETE")?;
    Ok(())
}

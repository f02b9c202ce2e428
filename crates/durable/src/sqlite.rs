//! Opening a SQLite database the one way every database here is opened: created private, WAL,
//! the given `synchronous` level, migrated one version per transaction.

use crate::ensure_private_file;
use rusqlite::Connection;
use selfcloud_core::{Error, Result};
use std::path::Path;

/// A SQLite failure as an internal error naming the database; a full disk is `disk_full`.
pub fn db_err(what: &'static str) -> impl Fn(rusqlite::Error) -> Error {
    move |e| error(what, e)
}

/// [`db_err`] for one error: SQLite's "database or disk is full" becomes `disk_full`, the rest
/// internal.
pub fn error(what: &str, e: rusqlite::Error) -> Error {
    if matches!(&e, rusqlite::Error::SqliteFailure(f, _) if f.code == rusqlite::ErrorCode::DiskFull) {
        Error::disk_full(format!("{what}: {e}"))
    } else {
        Error::internal(format!("{what}: {e}"))
    }
}

/// How much a commit waits for the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// fsync on every commit: an acknowledged write survives a power cut.
    Full,
    /// No fsync on commit (WAL): survives a crash of the process, not of the machine.
    Normal,
}

/// Who may open a database while this process has it open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sharing {
    /// Any process (SQLite's default file locks on every transaction).
    Processes,
    /// Connections of this process only: SQLite's `unix-excl` VFS takes one exclusive file lock
    /// for the process and keeps the WAL index in memory, so a read transaction costs no
    /// `fcntl` calls (four per read otherwise: half of a cached point read, measured). Every
    /// connection to the file must be opened with this sharing.
    ThisProcess,
}

impl Sharing {
    fn vfs(self) -> Option<&'static str> {
        match self {
            Sharing::Processes => None,
            Sharing::ThisProcess if cfg!(unix) => Some("unix-excl"),
            Sharing::ThisProcess => None,
        }
    }
}

/// Opens a connection to an existing database with `flags`, honouring `sharing`.
pub fn open_connection(
    path: &Path,
    flags: rusqlite::OpenFlags,
    sharing: Sharing,
    what: &'static str,
) -> Result<Connection> {
    match sharing.vfs() {
        Some(vfs) => Connection::open_with_flags_and_vfs(path, flags, vfs),
        None => Connection::open_with_flags(path, flags),
    }
    .map_err(db_err(what))
}

/// Opens (creating, mode 0600) the database at `path` in WAL mode with `sharing`, and applies
/// the migrations it has not seen (`PRAGMA user_version` counts them). `what` names it in errors.
pub fn open_migrated(
    path: &Path,
    durability: Durability,
    sharing: Sharing,
    migrations: &[&str],
    what: &'static str,
) -> Result<Connection> {
    ensure_private_file(path)?;
    let flags = rusqlite::OpenFlags::default();
    let mut conn = open_connection(path, flags, sharing, what)?;
    let synchronous = match durability {
        Durability::Full => "FULL",
        Durability::Normal => "NORMAL",
    };
    conn.execute_batch(&format!(
        "PRAGMA journal_mode=WAL; PRAGMA synchronous={synchronous}; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;"
    ))
    .map_err(db_err(what))?;
    migrate(&mut conn, migrations, what)?;
    Ok(conn)
}

/// Applies `migrations[user_version..]` in order, each with its version bump in one transaction.
pub fn migrate(conn: &mut Connection, migrations: &[&str], what: &'static str) -> Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db_err(what))?;
    if version > migrations.len() {
        return Err(Error::internal(format!("{what}: schema {version} is newer than this binary knows")));
    }
    for (i, sql) in migrations.iter().enumerate().skip(version) {
        let tx = conn.transaction().map_err(db_err(what))?;
        tx.execute_batch(sql).map_err(db_err(what))?;
        tx.pragma_update(None, "user_version", i + 1).map_err(db_err(what))?;
        tx.commit().map_err(db_err(what))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_run_once_in_order_and_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let one = ["CREATE TABLE a (x INTEGER)"];
        let two = ["CREATE TABLE a (x INTEGER)", "INSERT INTO a VALUES (7)"];
        drop(open_migrated(&path, Durability::Full, Sharing::Processes, &one, "test").unwrap());
        let conn = open_migrated(&path, Durability::Full, Sharing::Processes, &two, "test").unwrap();
        let n: i64 = conn.query_row("SELECT count(*) FROM a", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1);
        drop(conn);
        drop(open_migrated(&path, Durability::Full, Sharing::Processes, &two, "test").unwrap());
        let err = open_migrated(&path, Durability::Full, Sharing::Processes, &one, "test").unwrap_err();
        assert!(err.detail.unwrap().contains("newer"));
    }

    #[cfg(unix)]
    #[test]
    fn a_database_of_this_process_only_is_shared_by_its_connections() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.db");
        let schema = ["CREATE TABLE a (x INTEGER)"];
        let writer = open_migrated(&path, Durability::Full, Sharing::ThisProcess, &schema, "test").unwrap();
        let flags = rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX;
        let reader = open_connection(&path, flags, Sharing::ThisProcess, "test").unwrap();
        writer.execute("INSERT INTO a VALUES (1)", []).unwrap();
        let n: i64 = reader.query_row("SELECT count(*) FROM a", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 1, "a reader sees what the writer committed");
        writer.execute("INSERT INTO a VALUES (2)", []).unwrap();
        let n: i64 = reader.query_row("SELECT count(*) FROM a", [], |r| r.get(0)).unwrap();
        assert_eq!(n, 2);
        // No shared-memory index beside it: the WAL index lives in this process.
        assert!(!dir.path().join("t.db-shm").exists());
    }
}

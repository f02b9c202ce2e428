//! Files and SQLite databases that survive a crash whole and that only the server's user can
//! read. Every crate that writes to disk goes through here, so each rule is written once: a
//! file is either absent or complete after a crash; a directory entry is durable once its
//! directory is synced; a schema is migrated one version per transaction; nothing is created
//! readable by other local users.
//!
//! No domain types: paths, bytes and SQL only.

use selfcloud_core::{Error, Result};
use std::io::Write;
use std::path::Path;

pub mod sqlite;

/// Files this crate creates: read and written by the server's user only.
pub const FILE_MODE: u32 = 0o600;
/// Directories this crate creates: entered by the server's user only.
pub const DIR_MODE: u32 = 0o700;

/// An I/O failure as an internal error naming what was done to which path (for the operator's
/// log; the client sees a generic message), or `disk_full` when there was no room.
pub fn io_err(what: &str, path: &Path, e: std::io::Error) -> Error {
    let detail = format!("{what} {}: {e}", path.display());
    if Error::is_no_space(&e) {
        Error::disk_full(detail)
    } else {
        Error::internal(detail)
    }
}

/// Makes the directory entries of `dir` (files created, renamed or removed in it) durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err("sync", dir, e))
}

/// Options that create a file with [`FILE_MODE`] whatever the process umask.
fn private_options() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    options.write(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options
}

/// Creates `path`, which must not exist, with `bytes`, synced, its directory synced too.
pub fn create_new(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = private_options().create_new(true).open(path).map_err(|e| io_err("create", path, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| io_err("write", path, e))?;
    sync_dir(parent(path))
}

/// Writes a file so that after a crash it is either the old one or the new one, whole: a
/// temporary file beside it, fsync, rename, fsync of the directory.
pub fn replace(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = private_options().create(true).truncate(true).open(&tmp).map_err(|e| io_err("create", &tmp, e))?;
    f.write_all(bytes).and_then(|_| f.sync_all()).map_err(|e| io_err("write", &tmp, e))?;
    std::fs::rename(&tmp, path).map_err(|e| io_err("rename", path, e))?;
    sync_dir(parent(path))
}

/// Creates a directory (and its parents) with [`DIR_MODE`]; an existing one is narrowed to it.
/// One already private is left as it is: inside an instance's walls there is no `chmod`.
pub fn create_private_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(|e| io_err("create", dir, e))?;
        let mode = std::fs::metadata(dir).map_err(|e| io_err("stat", dir, e))?.permissions().mode();
        if mode & 0o777 == DIR_MODE {
            return Ok(());
        }
    }
    #[cfg(not(unix))]
    std::fs::create_dir_all(dir).map_err(|e| io_err("create", dir, e))?;
    restrict(dir, DIR_MODE)
}

/// Sets `path`'s permission bits to `mode` (unix; elsewhere a no-op).
pub fn restrict(path: &Path, mode: u32) -> Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| io_err("chmod", path, e))?;
    }
    let _ = (path, mode);
    Ok(())
}

/// Creates `path` empty with [`FILE_MODE`] if it does not exist (so a library that creates it
/// later, SQLite among them, inherits the mode rather than the umask's).
pub fn ensure_private_file(path: &Path) -> Result<()> {
    match private_options().create_new(true).open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err("create", path, e)),
    }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn replace_swaps_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k.json");
        replace(&path, b"one").unwrap();
        replace(&path, b"two").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert!(!path.with_extension("tmp").exists());
        #[cfg(unix)]
        assert_eq!(mode(&path), FILE_MODE);
    }

    #[test]
    fn create_new_refuses_an_existing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a");
        create_new(&path, b"x").unwrap();
        assert!(create_new(&path, b"y").is_err());
        assert_eq!(std::fs::read(&path).unwrap(), b"x");
    }

    #[cfg(unix)]
    #[test]
    fn private_dirs_and_files_are_private_whatever_the_umask_made_them() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        std::fs::create_dir_all(&sub).unwrap();
        restrict(&sub, 0o755).unwrap();
        create_private_dir(&sub).unwrap();
        assert_eq!(mode(&sub), DIR_MODE);
        let file = sub.join("f");
        ensure_private_file(&file).unwrap();
        ensure_private_file(&file).unwrap();
        assert_eq!(mode(&file), FILE_MODE);
    }
}

//! A directory target: `<root>/<kind>/<id>`, each object written whole (temporary file, fsync,
//! rename, fsync of the directory).

use super::{check_name, Target, KINDS};
use async_trait::async_trait;
use selfcloud_core::{Error, Result};
use selfcloud_durable::io_err;
use std::path::PathBuf;

/// The largest object read back: a pack or a manifest's part, with room to spare.
const MAX_OBJECT_BYTES: u64 = 2 * crate::PACK_BYTES as u64;

/// A directory on a filesystem the process can write: `<root>/<kind>/<id>`.
pub struct DirTarget {
    root: PathBuf,
    /// The most bytes its objects may hold together; a write past it is refused (507).
    quota_bytes: u64,
}

impl DirTarget {
    pub fn new(root: impl Into<PathBuf>) -> DirTarget {
        DirTarget { root: root.into(), quota_bytes: u64::MAX }
    }

    /// A target whose objects may hold at most `bytes` together (the server's bound on each
    /// instance's share of its backup directory).
    pub fn with_quota(mut self, bytes: u64) -> DirTarget {
        self.quota_bytes = bytes;
        self
    }

    fn path(&self, name: &str) -> Result<PathBuf> {
        check_name(name)?;
        Ok(self.root.join(name))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T> + Send + 'static) -> Result<T> {
    tokio::task::spawn_blocking(f).await.map_err(Error::internal)?
}

#[async_trait]
impl Target for DirTarget {
    async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<()> {
        let path = self.path(name)?;
        let (root, quota) = (self.root.clone(), self.quota_bytes);
        blocking(move || {
            if quota != u64::MAX {
                // What is there, less the object this write replaces, plus what it writes.
                let replaced = std::fs::symlink_metadata(&path).map_or(0, |m| m.len());
                let held = bytes_under(&root) - replaced.min(bytes_under(&root));
                if held + bytes.len() as u64 > quota {
                    return Err(Error::new(
                        selfcloud_core::ErrorCode::DiskFull,
                        format!("the backup directory is full: it holds {held} of its {quota} bytes"),
                    ));
                }
            }
            let dir = path.parent().expect("a kind directory");
            if !dir.exists() {
                selfcloud_durable::create_private_dir(dir)?;
                selfcloud_durable::sync_dir(dir.parent().expect("the root"))?;
            }
            selfcloud_durable::replace(&path, &bytes)
        })
        .await
    }

    async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name)?;
        blocking(move || {
            // What a directory holds may have been planted: no link followed, no file read past
            // the largest object a repository writes.
            let meta = match std::fs::symlink_metadata(&path) {
                Ok(meta) => meta,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(io_err("read", &path, e)),
            };
            if !meta.is_file() || meta.len() > MAX_OBJECT_BYTES {
                return Err(crate::damaged(format!("{} is not an object a backup writes", path.display())));
            }
            std::fs::read(&path).map(Some).map_err(|e| io_err("read", &path, e))
        })
        .await
    }

    async fn list(&self, kind: &str) -> Result<Vec<String>> {
        if !KINDS.contains(&kind) {
            return Err(Error::internal(format!("not a backup object kind: {kind:?}")));
        }
        let dir = self.root.join(kind);
        let kind = kind.to_owned();
        blocking(move || {
            let entries = match std::fs::read_dir(&dir) {
                Ok(entries) => entries,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                Err(e) => return Err(io_err("list", &dir, e)),
            };
            let mut names = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| io_err("list", &dir, e))?;
                let name = format!("{kind}/{}", entry.file_name().to_string_lossy());
                // A write's temporary file, or anything else not ours, is not an object.
                if check_name(&name).is_ok() {
                    names.push(name);
                }
            }
            names.sort();
            Ok(names)
        })
        .await
    }

    async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name)?;
        blocking(move || match std::fs::remove_file(&path) {
            Ok(()) => selfcloud_durable::sync_dir(path.parent().expect("a kind directory")),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path, e)),
        })
        .await
    }
}

/// The bytes of the objects under `root`.
fn bytes_under(root: &std::path::Path) -> u64 {
    KINDS
        .iter()
        .filter_map(|kind| std::fs::read_dir(root.join(kind)).ok())
        .flat_map(|entries| entries.flatten())
        .filter_map(|e| e.metadata().ok().filter(|m| m.is_file()).map(|m| m.len()))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_directory_target_keeps_whole_objects_by_kind() {
        let dir = tempfile::tempdir().unwrap();
        let target = DirTarget::new(dir.path());
        let name = "packs/0123456789abcdef0123456789abcdef";
        assert_eq!(target.get(name).await.unwrap(), None);
        assert_eq!(target.list("packs").await.unwrap(), Vec::<String>::new());
        target.put(name, b"bytes".to_vec()).await.unwrap();
        assert_eq!(target.get(name).await.unwrap().as_deref(), Some(&b"bytes"[..]));
        assert_eq!(target.list("packs").await.unwrap(), vec![name.to_owned()]);
        // A leftover temporary file is not listed.
        std::fs::write(dir.path().join("packs/0123456789abcdef0123456789abcdef.tmp"), b"x").unwrap();
        assert_eq!(target.list("packs").await.unwrap().len(), 1);
        target.delete(name).await.unwrap();
        target.delete(name).await.unwrap();
        assert_eq!(target.get(name).await.unwrap(), None);
        assert!(target.get("packs/../x").await.is_err());
    }

    #[tokio::test]
    async fn a_write_past_the_quota_is_refused_and_a_replacement_counts_once() {
        let dir = tempfile::tempdir().unwrap();
        let target = DirTarget::new(dir.path()).with_quota(10);
        let (a, b) = ("packs/0123456789abcdef0123456789abcdef", "packs/fedcba9876543210fedcba9876543210");
        target.put(a, vec![1; 6]).await.unwrap();
        target.put(a, vec![2; 8]).await.unwrap();
        let err = target.put(b, vec![3; 3]).await.unwrap_err();
        assert_eq!(err.code, selfcloud_core::ErrorCode::DiskFull, "{err:?}");
        assert_eq!(target.get(b).await.unwrap(), None);
        target.put(b, vec![3; 2]).await.unwrap();
    }
}

//! Each instance's own disk (the process runtime, a server running as root): a loop image in
//! `<home>/images/<2 hex>/<id>.ext4`, out of every instance's view, whose size is the tier's
//! disk limit. The instance process mounts it at its directory inside its own walls
//! (`selfcloud_sandbox::image`); the server never mounts it.
//!
//! An image is made from what the instance's directory holds, at its first wake after it was
//! provisioned there (or after an upgrade from a release without images): one path for both.
//! Once an image exists it is the instance's data, for good: files found in the directory
//! beside it can only be the copies it was made from, left by a crash between the image's
//! rename and their removal, so they are removed. An instance with an image is always woken on
//! it (turning images off stops only new ones being made).

use selfcloud_core::{Error, InstanceId, Result};
use selfcloud_durable::io_err;
use selfcloud_instance::protocol::DiskImage;
use std::path::{Path, PathBuf};

pub const IMAGES_DIR: &str = "images";

/// Where instance `id`'s image lives. The id is parsed, so nothing a user sends reaches it.
pub fn image_path(home: &Path, id: InstanceId) -> PathBuf {
    home.join(IMAGES_DIR).join(id.shard()).join(format!("{id}.ext4"))
}

/// The image instance `id` wakes on, made first from `dir` where it has none and `make` is
/// set; `None` where it has none and `make` is not set. Blocking; the instance is asleep.
pub(crate) fn prepare(home: &Path, id: InstanceId, dir: &Path, bytes: u64, make: bool) -> Result<Option<DiskImage>> {
    let path = image_path(home, id);
    let exists = path.try_exists().map_err(|e| io_err("look for", &path, e))?;
    if !exists && !make {
        return Ok(None);
    }
    if !exists {
        // A socket is nothing to copy: the server binds a new one at each wake.
        let _ = std::fs::remove_file(dir.join(selfcloud_instance::transport::SOCKET_FILE));
        let parent = path.parent().expect("an image has a parent");
        std::fs::create_dir_all(parent).map_err(|e| io_err("create", parent, e))?;
        selfcloud_durable::restrict(parent, selfcloud_durable::DIR_MODE)?;
        selfcloud_durable::restrict(&home.join(IMAGES_DIR), selfcloud_durable::DIR_MODE)?;
        selfcloud_sandbox::image::build(&path, dir, bytes).map_err(|e| {
            if Error::is_no_space(&e) {
                Error::disk_full(format!("make {}: {e}", path.display()))
            } else {
                Error::internal(format!("instance {id}: make its disk image {}: {e}", path.display()))
            }
        })?;
        tracing::info!(instance = %id, image = %path.display(), bytes, "disk image made");
    }
    clear(dir)?;
    Ok(Some(DiskImage { path, bytes }))
}

/// Removes what `dir` holds (copies now in the image), keeping `dir`: the mount point. An
/// empty directory, as at every wake after the first, costs one read and no sync.
fn clear(dir: &Path) -> Result<()> {
    let mut removed = false;
    for entry in std::fs::read_dir(dir).map_err(|e| io_err("read", dir, e))? {
        let entry = entry.map_err(|e| io_err("read", dir, e))?;
        let path = entry.path();
        let gone = match entry.file_type() {
            Ok(t) if t.is_dir() => std::fs::remove_dir_all(&path),
            _ => std::fs::remove_file(&path),
        };
        gone.map_err(|e| io_err("remove", &path, e))?;
        removed = true;
    }
    if removed {
        selfcloud_durable::sync_dir(dir)?;
    }
    Ok(())
}

/// Removes instance `id`'s image (already gone is fine). Blocking.
pub(crate) fn remove(home: &Path, id: InstanceId) -> Result<()> {
    let path = image_path(home, id);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &path, e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> InstanceId {
        "ins_ab0123456789abcdef0123456789abcd".parse().unwrap()
    }

    #[test]
    fn images_live_outside_every_instance_directory() {
        let home = Path::new("/srv/selfcloud");
        let image = image_path(home, id());
        assert_eq!(image, Path::new("/srv/selfcloud/images/ab/ins_ab0123456789abcdef0123456789abcd.ext4"));
        assert!(!image.starts_with(crate::instance_dir(home, id())));
    }

    #[test]
    fn an_image_is_made_once_from_the_directory_which_is_then_emptied() {
        if selfcloud_sandbox::image::mkfs().is_err() {
            eprintln!("skipped: no mkfs.ext4 (e2fsprogs) on this machine");
            return;
        }
        let home = tempfile::tempdir().unwrap();
        let dir = crate::instance_dir(home.path(), id());
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("store.db"), b"records").unwrap();
        // Not made where it is not asked for.
        assert_eq!(prepare(home.path(), id(), &dir, 64 << 20, false).unwrap().map(|i| i.path), None);
        assert!(dir.join("store.db").exists());
        let made = prepare(home.path(), id(), &dir, 64 << 20, true).unwrap().unwrap();
        assert_eq!((made.path.clone(), made.bytes), (image_path(home.path(), id()), 64 << 20));
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0, "the copies are gone");
        let made_at = std::fs::metadata(&made.path).unwrap().modified().unwrap();
        // Left-over copies beside an existing image (a crash after its rename) are removed, and
        // the image is kept as it is, even where new images are off.
        std::fs::write(dir.join("store.db"), b"a stale copy").unwrap();
        assert!(prepare(home.path(), id(), &dir, 64 << 20, false).unwrap().is_some());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 0);
        assert_eq!(std::fs::metadata(&made.path).unwrap().modified().unwrap(), made_at);
        remove(home.path(), id()).unwrap();
        remove(home.path(), id()).unwrap();
        assert!(!made.path.exists());
    }
}

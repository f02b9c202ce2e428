//! Where instances' key files live: `<home>/keys/<2 hex>/<id>.json` (directories 0700, files
//! 0600), a tree no instance sees. A key file wraps the data key three ways (sealed, password,
//! recovery code); an instance that could read it could guess its owner's password offline, and
//! one that could write it could set a recovery code of its choosing. So no key file, and no
//! temporary file of one, is ever in an instance's directory (homes of the first layout are
//! moved here at start, [`migrate`]).
//!
//! A password change or a recovery is one step that wholly happens or leaves the old password
//! and the old recovery code working: the new file is written beside the current one
//! (`<id>.staged.json`), the registry's new verifier is the commit point, and only then does the
//! staged file replace the current one. A crash or an error before the commit leaves the staged
//! file behind, and it is thrown away; one after it leaves a staged file whose salt is the
//! registry's, and it is promoted. Either way, [`reconcile`] settles it before the next change.

use crate::keys::InstanceKeyFile;
use rand::RngCore;
use selfcloud_core::{Error, InstanceId, Result};
use selfcloud_durable::{io_err, sync_dir};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

pub const KEYS_DIR: &str = "keys";
/// The name of the key file in an instance directory of the first layout (moved at start).
const LEGACY_KEY_FILE: &str = "keys.json";
const LEGACY_TMP_FILE: &str = "keys.tmp";

/// The instance's key file: `<home>/keys/<2 hex>/<id>.json`. The id is a parsed
/// [`InstanceId`], so no user input reaches this path.
pub fn key_file_path(home: &Path, id: InstanceId) -> PathBuf {
    home.join(KEYS_DIR).join(id.shard()).join(format!("{id}.json"))
}

/// A change's file, written before the registry commits it.
pub(crate) fn staged_path(home: &Path, id: InstanceId) -> PathBuf {
    home.join(KEYS_DIR).join(id.shard()).join(format!("{id}.staged.json"))
}

/// The temporary files `durable::replace` writes beside a file and renames over it.
fn temporary_paths(home: &Path, id: InstanceId) -> [PathBuf; 2] {
    [key_file_path(home, id).with_extension("tmp"), staged_path(home, id).with_extension("tmp")]
}

fn make_shard_dir(home: &Path, id: InstanceId) -> Result<()> {
    selfcloud_durable::create_private_dir(&home.join(KEYS_DIR))?;
    selfcloud_durable::create_private_dir(&home.join(KEYS_DIR).join(id.shard()))
}

/// The current key file; `not_found` when there is none (a deleted instance's).
pub fn read(home: &Path, id: InstanceId) -> Result<InstanceKeyFile> {
    InstanceKeyFile::read(&key_file_path(home, id))
}

/// Writes a new instance's key file, whole or not at all.
pub fn create(home: &Path, id: InstanceId, file: &InstanceKeyFile) -> Result<()> {
    make_shard_dir(home, id)?;
    file.write(&key_file_path(home, id))
}

/// Writes a change's file beside the current one; the current one stays as it was.
pub fn stage(home: &Path, id: InstanceId, file: &InstanceKeyFile) -> Result<()> {
    make_shard_dir(home, id)?;
    file.write(&staged_path(home, id))
}

/// Makes the staged file the current one (the registry has committed its password).
pub fn promote(home: &Path, id: InstanceId) -> Result<()> {
    let (staged, current) = (staged_path(home, id), key_file_path(home, id));
    std::fs::rename(&staged, &current).map_err(|e| io_err("rename", &staged, e))?;
    sync_dir(current.parent().expect("key files live in a directory"))
}

/// Throws the staged file away (its change did not commit); none is fine.
pub fn discard_staged(home: &Path, id: InstanceId) -> Result<()> {
    let staged = staged_path(home, id);
    match std::fs::remove_file(&staged) {
        Ok(()) => sync_dir(staged.parent().expect("key files live in a directory")),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", &staged, e)),
    }
}

/// Settles a change a crash or an error left half done, given the password salt the registry
/// holds, and answers the current file. A staged file under that salt was committed: its
/// password wrap becomes current. Its recovery wrap does not: the answer that would have handed
/// the owner the new code never went out, so the code they hold stays the one that works. Any
/// other staged file never committed and is thrown away. Called under the account's change guard.
pub fn reconcile(home: &Path, id: InstanceId, registry_salt: &[u8]) -> Result<InstanceKeyFile> {
    match InstanceKeyFile::read(&staged_path(home, id)) {
        Ok(staged) if staged.salt == registry_salt => {
            tracing::warn!(instance = %id, "a committed password change found staged; completing it");
            let mut current = read(home, id)?;
            (current.password_wrapped, current.salt, current.kdf) = (staged.password_wrapped, staged.salt, staged.kdf);
            current.write(&key_file_path(home, id))?;
            discard_staged(home, id)?;
            Ok(current)
        }
        Ok(_) => {
            tracing::warn!(instance = %id, "an uncommitted password change found staged; discarding it");
            discard_staged(home, id)?;
            read(home, id)
        }
        Err(e) if e.code == selfcloud_core::ErrorCode::NotFound => read(home, id),
        // Unreadable: whatever it is, it was never the current file.
        Err(_) => discard_staged(home, id).and_then(|_| read(home, id)),
    }
}

/// Overwrites a file with random bytes, flushes them to disk, then unlinks it, so the wraps of a
/// data key do not linger in freed blocks (as far as the file system writes in place). A file
/// already gone is done: a deletion interrupted by a crash can be run again. A symbolic link is
/// unlinked, never followed.
pub(crate) fn shred(path: &Path) -> Result<()> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io_err("stat", path, e)),
    };
    if meta.is_dir() {
        std::fs::remove_dir_all(path).map_err(|e| io_err("remove", path, e))?;
        return sync_dir(path.parent().expect("files live in a directory"));
    }
    if meta.is_file() {
        let mut f = no_follow().write(true).open(path).map_err(|e| io_err("open", path, e))?;
        let mut noise = vec![0u8; usize::try_from(meta.len()).unwrap_or(0).max(1)];
        rand::rngs::OsRng.fill_bytes(&mut noise);
        f.write_all(&noise).and_then(|_| f.sync_all()).map_err(|e| io_err("overwrite", path, e))?;
    }
    std::fs::remove_file(path).map_err(|e| io_err("unlink", path, e))?;
    sync_dir(path.parent().expect("files live in a directory"))
}

/// Shreds every key file of the instance: current, staged and their temporary files.
pub fn shred_all(home: &Path, id: InstanceId) -> Result<()> {
    shred(&key_file_path(home, id))?;
    shred(&staged_path(home, id))?;
    temporary_paths(home, id).iter().try_for_each(|p| shred(p))
}

fn no_follow() -> std::fs::OpenOptions {
    let mut options = std::fs::OpenOptions::new();
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::custom_flags(&mut options, libc::O_NOFOLLOW);
    options
}

/// Moves the key file of each instance directory of the first layout (`<dir>/keys.json`) into
/// the keys tree and shreds it there, with any `keys.tmp` beside it. Only a regular file is
/// read, never through a link. Run at start, before any instance wakes. A crash half-way is
/// run again: a file already in the tree wins and the one left in the directory is shredded.
///
/// What such a file holds is taken as found: an instance that could write it before this
/// release could have changed its recovery wrap (its sealed wrap it could not forge).
pub fn migrate(home: &Path, instance_dir: impl Fn(InstanceId) -> PathBuf, ids: &[InstanceId]) -> Result<usize> {
    let mut moved = 0;
    for &id in ids {
        let dir = instance_dir(id);
        let legacy = dir.join(LEGACY_KEY_FILE);
        let is_file = std::fs::symlink_metadata(&legacy).is_ok_and(|m| m.is_file());
        if is_file && !key_file_path(home, id).exists() {
            let mut bytes = Vec::new();
            no_follow()
                .read(true)
                .open(&legacy)
                .and_then(|mut f| f.read_to_end(&mut bytes))
                .map_err(|e| io_err("read", &legacy, e))?;
            let file: InstanceKeyFile =
                serde_json::from_slice(&bytes).map_err(|e| Error::internal(format!("{}: {e}", legacy.display())))?;
            create(home, id, &file)?;
            moved += 1;
        }
        // Whatever stands at the old names now is the instance's own, except a key file.
        if is_file {
            shred(&legacy)?;
        }
        if std::fs::symlink_metadata(dir.join(LEGACY_TMP_FILE)).is_ok_and(|m| m.is_file()) {
            shred(&dir.join(LEGACY_TMP_FILE))?;
        }
    }
    if moved > 0 {
        tracing::info!(moved, "key files moved out of instance directories into the keys tree");
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfcloud_core::config::KdfParams;

    fn file(salt: u8) -> InstanceKeyFile {
        let wrapped = crate::keys::wrap(&[salt; 32], "test", &selfcloud_instance::DataKey::generate()).unwrap();
        InstanceKeyFile {
            version: crate::keys::KEY_FILE_VERSION,
            sealed: wrapped.clone(),
            password_wrapped: wrapped.clone(),
            kdf: KdfParams::INSECURE_FOR_TESTS,
            salt: vec![salt; 16],
            recovery_wrapped: wrapped,
            recovery_salt: vec![9; 16],
        }
    }

    #[test]
    fn key_files_live_in_a_private_tree_outside_every_instance_directory() {
        let home = tempfile::tempdir().unwrap();
        let id = InstanceId::random();
        create(home.path(), id, &file(1)).unwrap();
        let path = key_file_path(home.path(), id);
        assert!(path.starts_with(home.path().join(KEYS_DIR)));
        assert!(!path.starts_with(crate::instance_dir(home.path(), id)));
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!((mode(path.parent().unwrap()), mode(&home.path().join(KEYS_DIR))), (0o700, 0o700));
    }

    #[test]
    fn a_staged_change_is_promoted_only_when_the_registry_committed_it() {
        let home = tempfile::tempdir().unwrap();
        let id = InstanceId::random();
        create(home.path(), id, &file(1)).unwrap();
        // Committed (the registry holds the staged salt): its password wrap becomes current, the
        // recovery wrap stays the one whose code the owner holds.
        let mut committed = file(2);
        committed.recovery_salt = vec![10; 16];
        stage(home.path(), id, &committed).unwrap();
        let settled = reconcile(home.path(), id, &[2; 16]).unwrap();
        assert_eq!((settled.salt, settled.password_wrapped), (vec![2; 16], committed.password_wrapped));
        assert_eq!(settled.recovery_salt, vec![9; 16]);
        assert_eq!(read(home.path(), id).unwrap().salt, vec![2; 16]);
        assert!(!staged_path(home.path(), id).exists());
        // Not committed: thrown away, the current file stands.
        stage(home.path(), id, &file(3)).unwrap();
        assert_eq!(reconcile(home.path(), id, &[2; 16]).unwrap().salt, vec![2; 16]);
        assert!(!staged_path(home.path(), id).exists());
        // Nothing staged: the current file.
        assert_eq!(reconcile(home.path(), id, &[2; 16]).unwrap().salt, vec![2; 16]);
    }

    #[test]
    fn shredding_removes_every_file_and_never_follows_a_link() {
        let home = tempfile::tempdir().unwrap();
        let id = InstanceId::random();
        create(home.path(), id, &file(1)).unwrap();
        stage(home.path(), id, &file(2)).unwrap();
        let outside = home.path().join("outside");
        std::fs::write(&outside, b"not ours to shred").unwrap();
        let [tmp, staged_tmp] = temporary_paths(home.path(), id);
        std::os::unix::fs::symlink(&outside, &tmp).unwrap();
        std::fs::create_dir(&staged_tmp).unwrap();
        shred_all(home.path(), id).unwrap();
        for p in [key_file_path(home.path(), id), staged_path(home.path(), id), tmp, staged_tmp] {
            assert!(std::fs::symlink_metadata(&p).is_err(), "{} is left", p.display());
        }
        assert_eq!(std::fs::read(&outside).unwrap(), b"not ours to shred");
        shred_all(home.path(), id).unwrap();
    }

    #[test]
    fn migration_moves_a_regular_key_file_and_never_reads_through_a_link() {
        let home = tempfile::tempdir().unwrap();
        let (a, b) = (InstanceId::random(), InstanceId::random());
        let dir = |id: InstanceId| crate::instance_dir(home.path(), id);
        for id in [a, b] {
            std::fs::create_dir_all(dir(id)).unwrap();
        }
        std::fs::write(dir(a).join(LEGACY_KEY_FILE), serde_json::to_vec(&file(7)).unwrap()).unwrap();
        std::fs::write(dir(a).join(LEGACY_TMP_FILE), b"half a key file").unwrap();
        // b's "key file" is a link an instance planted to a file of the host.
        let host = home.path().join("host-secret");
        std::fs::write(&host, serde_json::to_vec(&file(8)).unwrap()).unwrap();
        std::os::unix::fs::symlink(&host, dir(b).join(LEGACY_KEY_FILE)).unwrap();
        assert_eq!(migrate(home.path(), dir, &[a, b]).unwrap(), 1);
        assert_eq!(read(home.path(), a).unwrap().salt, vec![7; 16]);
        assert!(!dir(a).join(LEGACY_KEY_FILE).exists() && !dir(a).join(LEGACY_TMP_FILE).exists());
        assert_eq!(read(home.path(), b).unwrap_err().code, selfcloud_core::ErrorCode::NotFound);
        assert!(host.exists(), "the link's target is untouched");
        // Run again (a crash half-way): nothing more to do.
        assert_eq!(migrate(home.path(), dir, &[a, b]).unwrap(), 0);
        assert_eq!(read(home.path(), a).unwrap().salt, vec![7; 16]);
    }
}

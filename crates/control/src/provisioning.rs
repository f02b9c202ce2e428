//! What exists of an instance before it first wakes: its directory under the home, its store
//! and data key, its key file, and the node key that seals every data key; and the settings an
//! instance is started with.

use crate::keys::{self, InstanceKeyFile, NodeKey, PasswordKeys};
use crate::recovery::RecoveryCode;
use crate::Control;
use selfcloud_core::{Error, InstanceId, Result};
use selfcloud_instance::{DataKey, Settings};
use std::path::{Path, PathBuf};

pub const INSTANCES_DIR: &str = "instances";
const NODE_KEY_FILE: &str = "node.key";

/// Where an instance lives: `<home>/instances/<2 hex>/<id>/`. The id is a parsed [`InstanceId`]
/// (fixed prefix and 32 lowercase hex digits), so no user input ever reaches this path.
pub fn instance_dir(home: &Path, id: InstanceId) -> PathBuf {
    home.join(INSTANCES_DIR).join(id.shard()).join(id.to_string())
}

pub(crate) fn load_or_create_node_key(home: &Path) -> Result<NodeKey> {
    let path = home.join(NODE_KEY_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let bytes: [u8; 32] =
                bytes.try_into().map_err(|_| Error::internal(format!("{} is not 32 bytes", path.display())))?;
            Ok(NodeKey::from_bytes(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = NodeKey::generate();
            selfcloud_durable::replace(&path, key.as_bytes())?;
            Ok(key)
        }
        Err(e) => Err(selfcloud_durable::io_err("read", &path, e)),
    }
}

/// Threads an instance's engine computes with when the operator left it to us: its CPU allowance
/// in whole cores (more threads than the cgroup's quota only wait on each other at llama.cpp's
/// barriers), at least one, at most the machine's cores.
pub(crate) fn llm_threads(cpu_millis: u32, cores: usize) -> usize {
    (cpu_millis as usize).div_ceil(1000).clamp(1, cores.max(1))
}

impl Control {
    pub(crate) fn settings(&self, id: InstanceId) -> Settings {
        let limits = &self.config.limits;
        let tier = self.tier_of(id);
        let settings = Settings::new(id, limits, limits.tier(tier).quota_bytes);
        let llm = self.config.llm.clone().map(|mut llm| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            let threads = llm_threads(limits.resources.of(tier).cpu_millis, cores);
            if llm.engine.threads == 0 {
                llm.engine.threads = threads;
            }
            if let Some(e) = llm.embedding.as_mut().filter(|e| e.threads == 0) {
                e.threads = threads;
            }
            llm
        });
        Settings { llm, backup_kdf: self.config.backup_kdf, ..settings }
    }

    /// Creates the instance's directory, data key and store: all that does not depend on the
    /// password. Blocking.
    pub(crate) fn create_instance(&self, id: InstanceId) -> Result<DataKey> {
        let dir = instance_dir(&self.config.home, id);
        selfcloud_durable::create_private_dir(&dir)?;
        // Every account starts on the free tier; an operator moves it.
        self.remember_tier(id, selfcloud_core::config::Tier::Free);
        let data_key = DataKey::generate();
        selfcloud_instance::create(&self.settings(id), &dir, &data_key, self.config.store_engine)?;
        Ok(data_key)
    }

    /// Writes the instance's key file: its data key wrapped by the node's sealing key, by the
    /// password's key and by the recovery code's. Blocking.
    pub(crate) fn write_key_file(
        &self,
        id: InstanceId,
        data_key: &DataKey,
        password: &PasswordKeys,
        salt: &[u8],
        recovery: &RecoveryCode,
    ) -> Result<()> {
        let recovery_salt = keys::random_salt();
        let file = InstanceKeyFile {
            version: keys::KEY_FILE_VERSION,
            sealed: keys::wrap(&self.node_key.instance_seal_key(id), keys::SEAL_PURPOSE, data_key)?,
            password_wrapped: keys::wrap(password.kek(), keys::PASSWORD_PURPOSE, data_key)?,
            kdf: self.config.kdf,
            salt: salt.to_vec(),
            recovery_wrapped: keys::wrap(&recovery.derive(&recovery_salt), keys::RECOVERY_PURPOSE, data_key)?,
            recovery_salt: recovery_salt.to_vec(),
        };
        crate::keystore::create(&self.config.home, id, &file)
    }

    /// Removes the directory and key file left by a provisioning that did not complete.
    pub(crate) fn discard_dir(&self, id: InstanceId) {
        if let Err(e) = crate::keystore::shred_all(&self.config.home, id) {
            tracing::warn!(instance = %id, error = %e, "could not remove an abandoned key file");
        }
        let dir = instance_dir(&self.config.home, id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(instance = %id, error = %e, "could not remove an abandoned instance directory");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_dirs_are_sharded_under_home() {
        let home = Path::new("/srv/selfcloud");
        let id: InstanceId = "ins_ab0123456789abcdef0123456789abcd".parse().unwrap();
        assert_eq!(
            instance_dir(home, id),
            Path::new("/srv/selfcloud/instances/ab/ins_ab0123456789abcdef0123456789abcd")
        );
        // Nothing that is not a well-formed id becomes an InstanceId, so nothing else becomes a path.
        for trick in [
            "ins_../../etc",
            "ins_ab0123456789abcdef0123456789ab/x",
            "ins_AB0123456789ABCDEF0123456789ABCD",
            "../ins_ab",
        ] {
            assert!(trick.parse::<InstanceId>().is_err(), "{trick}");
        }
    }

    #[test]
    fn llm_threads_follow_the_cpu_allowance_within_the_machine() {
        assert_eq!(llm_threads(1000, 16), 1);
        assert_eq!(llm_threads(1500, 16), 2);
        assert_eq!(llm_threads(4000, 2), 2);
        assert_eq!(llm_threads(0, 8), 1);
        assert_eq!(llm_threads(250, 0), 1);
    }
}

//! Instance directories, provisioning and the bounded set of open instances.

use crate::keys::{self, InstanceKeyFile, NodeKey, PasswordKeys};
use crate::recovery::RecoveryCode;
use crate::Control;
use selfcloud_core::{Error, InstanceId, Result};
use selfcloud_instance::{DataKey, InprocInstance, Instance};
use selfcloud_store::StoreOptions;
use std::path::{Path, PathBuf};
use std::sync::Arc;

pub const INSTANCES_DIR: &str = "instances";
pub(crate) const KEY_FILE: &str = "keys.json";
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

impl Control {
    fn store_options(&self, id: InstanceId) -> StoreOptions {
        StoreOptions { quota_bytes: self.config.limits.tier(self.tier_of(id)).quota_bytes }
    }

    /// Creates the instance's directory, data key and store: all that does not depend on the
    /// password. Blocking.
    pub(crate) fn create_instance(&self, id: InstanceId) -> Result<(DataKey, Arc<dyn Instance>)> {
        let dir = instance_dir(&self.config.home, id);
        selfcloud_durable::create_private_dir(&dir)?;
        // Every account starts on the free tier; an operator moves it.
        self.remember_tier(id, selfcloud_core::config::Tier::Free);
        let data_key = DataKey::generate();
        let instance: Arc<dyn Instance> =
            Arc::new(InprocInstance::create(id, &dir, &data_key, self.config.store_engine, self.store_options(id))?);
        Ok((data_key, instance))
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
        file.write(&instance_dir(&self.config.home, id).join(KEY_FILE))
    }

    /// Removes a directory left by a provisioning that did not complete.
    pub(crate) fn discard_dir(&self, id: InstanceId) {
        let dir = instance_dir(&self.config.home, id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            tracing::warn!(instance = %id, error = %e, "could not remove an abandoned instance directory");
        }
    }

    /// The instance's handle, opening it if it is not open. The caller has already established,
    /// from a token, that this is the instance it may reach.
    pub async fn instance(&self, id: InstanceId) -> Result<Arc<dyn Instance>> {
        if let Some(i) = self.open.lock().get(id) {
            return Ok(i);
        }
        let _guard = self.opening.lock().await;
        if let Some(i) = self.open.lock().get(id) {
            return Ok(i);
        }
        let (home, seal, options) =
            (self.config.home.clone(), self.node_key.instance_seal_key(id), self.store_options(id));
        let registry = self.registry.clone();
        let instance: Arc<dyn Instance> = tokio::task::spawn_blocking(move || -> Result<_> {
            // A deleted instance's key is shredded, but never rely on that alone.
            if registry.instance_deleted(id)? {
                return Err(Error::not_found("instance not found"));
            }
            let dir = instance_dir(&home, id);
            let file = InstanceKeyFile::read(&dir.join(KEY_FILE))?;
            let data_key = keys::unwrap(&seal, keys::SEAL_PURPOSE, &file.sealed)?;
            Ok(Arc::new(InprocInstance::open(id, &dir, &data_key, options)?))
        })
        .await
        .map_err(Error::internal)??;
        self.open.lock().put(id, instance.clone());
        Ok(instance)
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
}

//! The account after sign-up: changing the password, recovering it with the recovery code, and
//! deleting the account. A new password re-wraps the same data key, so no instance data is
//! rewritten; deletion destroys the key first, which makes whatever is left on disk unreadable.

use crate::accounts::validate_password;
use crate::instances::instance_dir;
use crate::keys::{self, random_salt, InstanceKeyFile, PasswordKeys};
use crate::keystore;
use crate::recovery::RecoveryCode;
use crate::registry::{UserRow, DELETED};
use crate::tokens::TokenKind;
use crate::Control;
use selfcloud_core::{Error, Result, UserId};
use selfcloud_durable::io_err;
use selfcloud_instance::DataKey;
use std::path::Path;
use std::sync::Arc;
use zeroize::Zeroizing;

/// What a recovery hands back: a session and the next recovery code (the one used is spent).
#[derive(Clone, Debug)]
pub struct Recovered {
    /// The recovered account's instance (whose access log notes the recovery).
    pub instance_id: selfcloud_core::InstanceId,
    pub token: String,
    pub expires_at: u64,
    pub recovery_code: String,
}

/// The one answer to every failed recovery, so it tells nothing about what was wrong.
const RECOVERY_FAILED: &str = "wrong username or recovery code";

fn wrong_password() -> Error {
    Error::unauthenticated("wrong password")
}

/// Marks one user's account as being changed; dropped, it lets the next change in.
struct AccountChange {
    control: Arc<Control>,
    user: UserId,
}

impl Drop for AccountChange {
    fn drop(&mut self) {
        self.control.account_changes.lock().remove(&self.user);
    }
}

/// Removes a stopped instance's directory (already gone is fine: a deletion asked again).
fn remove_dir(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io_err("remove", dir, e)),
    }
}

impl Control {
    fn begin_account_change(self: &Arc<Self>, user: UserId) -> Result<AccountChange> {
        if !self.account_changes.lock().insert(user) {
            return Err(Error::conflict("another change to this account is under way"));
        }
        Ok(AccountChange { control: self.clone(), user })
    }

    /// The user's key file, with a change a crash or an error left half done settled first (see
    /// `keystore`). Under the account's change guard.
    fn read_key_file(&self, u: &UserRow) -> Result<InstanceKeyFile> {
        keystore::reconcile(&self.config.home, u.instance_id, &u.salt)
    }

    /// The user, if `password` is theirs. Blocking (one KDF).
    fn check_password(&self, user: UserId, password: &str) -> Result<(UserRow, PasswordKeys)> {
        let u = self.registry.user_by_id(user)?.filter(|u| u.state != DELETED).ok_or_else(wrong_password)?;
        let keys = PasswordKeys::derive(password, &u.salt, u.kdf)?;
        if keys.verifies(&u.verifier_hash) {
            Ok((u, keys))
        } else {
            Err(wrong_password())
        }
    }

    /// Changes the owner's password: the old one must verify and unwrap the data key (proving the
    /// whole key chain, not only the verifier); the key is re-wrapped under the new one. Every
    /// owner session ends; the new one is returned. App grants and their tokens stay valid.
    pub async fn change_password(
        self: &Arc<Self>,
        user: UserId,
        old: &str,
        new: &str,
        now: u64,
    ) -> Result<(String, u64)> {
        validate_password(new)?;
        let change = self.begin_account_change(user)?;
        let slot = self.kdf_slot().await?;
        let (old, new) = (Zeroizing::new(old.to_owned()), Zeroizing::new(new.to_owned()));
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let this = &change.control;
            let (u, keys) = this.check_password(user, &old)?;
            let mut file = this.read_key_file(&u)?;
            let data_key = if file.salt == u.salt {
                keys::unwrap(keys.kek(), keys::PASSWORD_PURPOSE, &file.password_wrapped)?
            } else {
                // An earlier change stopped between its registry and key-file writes: the password
                // just verified is not the one the file's wrap is under. The sealed wrap stands in.
                tracing::warn!(instance = %u.instance_id, "key file behind the registry; re-wrapping from the sealed key");
                keys::unwrap(&this.node_key.instance_seal_key(u.instance_id), keys::SEAL_PURPOSE, &file.sealed)?
            };
            this.set_password(&u, &mut file, &data_key, &new, None, now)
        })
        .await
        .map_err(Error::internal)?
    }

    /// Sets a new password with the recovery code instead of the old password. The code is spent:
    /// a new one is returned. Every failure answers the same `unauthenticated`.
    pub async fn recover(self: &Arc<Self>, username: &str, code: &str, new: &str, now: u64) -> Result<Recovered> {
        validate_password(new)?;
        let failed = || Error::unauthenticated(RECOVERY_FAILED);
        let code = RecoveryCode::parse(code).ok_or_else(failed)?;
        let slot = self.kdf_slot().await?;
        let (this, username, new) = (self.clone(), username.to_owned(), Zeroizing::new(new.to_owned()));
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let u = this.registry.user_by_name(&username)?.filter(|u| u.state != DELETED).ok_or_else(failed)?;
            let _change = this.begin_account_change(u.id)?;
            let mut file = this.read_key_file(&u)?;
            let kek = code.derive(&file.recovery_salt);
            let data_key = keys::unwrap(&kek, keys::RECOVERY_PURPOSE, &file.recovery_wrapped).map_err(|_| failed())?;
            let next = RecoveryCode::generate();
            let (token, expires_at) = this.set_password(&u, &mut file, &data_key, &new, Some(&next), now)?;
            tracing::info!(user = %u.id, "password reset with the recovery code");
            Ok(Recovered { instance_id: u.instance_id, token, expires_at, recovery_code: next.display() })
        })
        .await
        .map_err(Error::internal)?
    }

    /// Re-wraps `data_key` under a new password (and, given one, a new recovery code), stores the
    /// new verifier, ends every owner session and starts one. Blocking.
    ///
    /// One step that wholly happens or not at all: the new key file is staged first, the
    /// registry's new verifier commits it, and only then does it replace the current file (see
    /// `keystore`). Any failure before the commit leaves the old password and the old recovery
    /// code working; a crash after it is completed by the next read of the key file.
    fn set_password(
        &self,
        u: &UserRow,
        file: &mut InstanceKeyFile,
        data_key: &DataKey,
        new: &str,
        recovery: Option<&RecoveryCode>,
        now: u64,
    ) -> Result<(String, u64)> {
        let (salt, kdf) = (random_salt(), self.config.kdf);
        let keys = PasswordKeys::derive(new, &salt, kdf)?;
        file.password_wrapped = keys::wrap(keys.kek(), keys::PASSWORD_PURPOSE, data_key)?;
        (file.salt, file.kdf) = (salt.to_vec(), kdf);
        if let Some(code) = recovery {
            let recovery_salt = random_salt();
            file.recovery_wrapped = keys::wrap(&code.derive(&recovery_salt), keys::RECOVERY_PURPOSE, data_key)?;
            file.recovery_salt = recovery_salt.to_vec();
        }
        file.version = keys::KEY_FILE_VERSION;
        let home = &self.config.home;
        if let Err(e) = keystore::stage(home, u.instance_id, file) {
            let _ = keystore::discard_staged(home, u.instance_id);
            return Err(e);
        }
        let epoch = match self.registry.set_password(u.id, &kdf, &salt, &keys.verifier_hash()) {
            Ok(epoch) => epoch,
            Err(e) => {
                let _ = keystore::discard_staged(home, u.instance_id);
                return Err(e);
            }
        };
        self.tokens.remove_sessions_of(u.id, epoch, now);
        // Committed. Were the promotion to fail, the next read of the file completes it
        // (`reconcile`), keeping the recovery code the owner holds: this answer, with the new
        // one, does not go out.
        keystore::promote(home, u.instance_id)?;
        self.start_session(TokenKind::Session, &UserRow { credential_epoch: epoch, ..u.clone() }, now)
    }

    /// Deletes the account: with the password verified, the data key is shredded first, then the
    /// instance is closed and its directory removed, then the registry keeps a tombstone (see
    /// `Registry::tombstone`) and every token of the user stops working. Each step tolerates
    /// having been done already, so a deletion cut short by a crash can simply be asked again.
    pub async fn delete_account(self: &Arc<Self>, user: UserId, password: &str, now: u64) -> Result<()> {
        let _change = self.begin_account_change(user)?;
        let slot = self.kdf_slot().await?;
        let (this, password) = (self.clone(), Zeroizing::new(password.to_owned()));
        let u = tokio::task::spawn_blocking(move || {
            let _slot = slot;
            this.check_password(user, &password).map(|(u, _)| u)
        })
        .await
        .map_err(Error::internal)??;
        let (id, dir) = (u.instance_id, instance_dir(&self.config.home, u.instance_id));
        // The key first: from here on no wake can open the instance. Then the instance stops
        // (calls under way finish; a wake that read the key before the shred is stopped too),
        // and only then are its files removed.
        let home = self.config.home.clone();
        tokio::task::spawn_blocking(move || keystore::shred_all(&home, id)).await.map_err(Error::internal)??;
        self.stop_instance(id).await;
        let home = self.config.home.clone();
        tokio::task::spawn_blocking(move || remove_dir(&dir).and_then(|_| crate::disk::remove(&home, id)))
            .await
            .map_err(Error::internal)??;
        let revoked = self.blocking(move |r| r.tombstone(user, now)).await?;
        self.deleted(id);
        self.tokens.remove_user(user, now);
        // The apps the user developed are gone too, with every grant others gave them.
        for grant in revoked {
            self.tokens.remove_grant(grant, now);
        }
        tracing::info!(user = %user, instance = %id, "account deleted");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ControlConfig;
    use selfcloud_core::config::KdfParams;

    async fn control() -> (tempfile::TempDir, Arc<Control>) {
        let home = tempfile::tempdir().unwrap();
        let mut config = ControlConfig::new(home.path());
        config.kdf = KdfParams::INSECURE_FOR_TESTS;
        let control = Control::open(config, 1_000).unwrap();
        (home, control)
    }

    #[tokio::test]
    async fn the_recovery_code_alone_unwraps_the_sealed_data_key() {
        let (_home, c) = control().await;
        let account = c.sign_up("ada", "correct horse battery", 1_000).await.unwrap();
        let id = account.instance_id;
        let file = keystore::read(c.config.home.as_path(), id).unwrap();
        assert_eq!(file.version, keys::KEY_FILE_VERSION);
        let sealed = keys::unwrap(&c.node_key.instance_seal_key(id), keys::SEAL_PURPOSE, &file.sealed).unwrap();
        let unwrap_with = |file: &InstanceKeyFile, code: &str| {
            let kek = RecoveryCode::parse(code).unwrap().derive(&file.recovery_salt);
            keys::unwrap(&kek, keys::RECOVERY_PURPOSE, &file.recovery_wrapped)
        };
        let recovered = unwrap_with(&file, &account.recovery_code).unwrap();
        assert_eq!(recovered.as_bytes(), sealed.as_bytes());
        assert_ne!(file.recovery_salt, file.salt, "the code has its own salt");

        // A recovery re-wraps the same key under a new code; the old code opens nothing now.
        let r = c.recover("ada", &account.recovery_code.to_lowercase(), "a new password", 1_001).await.unwrap();
        let file = keystore::read(c.config.home.as_path(), id).unwrap();
        assert_eq!(unwrap_with(&file, &r.recovery_code).unwrap().as_bytes(), sealed.as_bytes());
        assert!(unwrap_with(&file, &account.recovery_code).is_err());
        let again = c.recover("ada", &account.recovery_code, "another password", 1_002).await.unwrap_err();
        assert_eq!(again.message, RECOVERY_FAILED);
    }

    #[tokio::test]
    async fn a_password_change_rewraps_the_same_key_without_touching_the_seal() {
        let (_home, c) = control().await;
        let account = c.sign_up("ada", "correct horse battery", 1_000).await.unwrap();
        let before = keystore::read(c.config.home.as_path(), account.instance_id).unwrap();
        c.change_password(account.user_id, "correct horse battery", "a new password", 1_001).await.unwrap();
        let after = keystore::read(c.config.home.as_path(), account.instance_id).unwrap();
        assert_eq!(after.sealed, before.sealed);
        assert_ne!(after.salt, before.salt);
        let keys = PasswordKeys::derive("a new password", &after.salt, after.kdf).unwrap();
        let seal = c.node_key.instance_seal_key(account.instance_id);
        assert_eq!(
            keys::unwrap(keys.kek(), keys::PASSWORD_PURPOSE, &after.password_wrapped).unwrap().as_bytes(),
            keys::unwrap(&seal, keys::SEAL_PURPOSE, &after.sealed).unwrap().as_bytes()
        );
        assert!(c.log_in("ada", "correct horse battery").await.is_err());
        assert!(c.log_in("ada", "a new password").await.is_ok());
    }

    /// Something in the way of the change's file (here a directory at its temporary name):
    /// the change fails before anything is committed, and the old password and the old recovery
    /// code both still work. Then, once it is out of the way, the change goes through.
    #[tokio::test]
    async fn a_change_that_cannot_write_its_key_file_changes_nothing() {
        let (home, c) = control().await;
        let account = c.sign_up("ada", "correct horse battery", 1_000).await.unwrap();
        let id = account.instance_id;
        let blocker = keystore::staged_path(home.path(), id).with_extension("tmp");
        std::fs::create_dir(&blocker).unwrap();
        assert!(c.change_password(account.user_id, "correct horse battery", "a new password", 1_001).await.is_err());
        assert!(c.recover("ada", &account.recovery_code, "a new password", 1_002).await.is_err());
        assert!(c.log_in("ada", "a new password").await.is_err());
        assert!(c.log_in("ada", "correct horse battery").await.is_ok(), "the old password works");
        std::fs::remove_dir(&blocker).unwrap();
        let r = c.recover("ada", &account.recovery_code, "a new password", 1_003).await.unwrap();
        assert!(c.log_in("ada", "a new password").await.is_ok(), "the old code was still good");
        assert!(c.recover("ada", &account.recovery_code, "a third password", 1_004).await.is_err(), "now spent");
        assert!(c.recover("ada", &r.recovery_code, "a third password", 1_005).await.is_ok());
    }

    /// A crash between the registry's commit and the key file's promotion, in a recovery: the
    /// new password holds, and so does the code the owner still has (the answer with the new
    /// one never went out).
    #[tokio::test]
    async fn a_committed_recovery_left_staged_keeps_the_code_its_owner_holds() {
        let (home, c) = control().await;
        let account = c.sign_up("ada", "correct horse battery", 1_000).await.unwrap();
        let id = account.instance_id;
        let current = keystore::key_file_path(home.path(), id);
        let before = std::fs::read(&current).unwrap();
        c.recover("ada", &account.recovery_code, "a new password", 1_001).await.unwrap();
        std::fs::rename(&current, keystore::staged_path(home.path(), id)).unwrap();
        std::fs::write(&current, before).unwrap();
        assert!(c.log_in("ada", "a new password").await.is_ok());
        c.recover("ada", &account.recovery_code, "a third password", 1_002).await.unwrap();
        assert!(c.log_in("ada", "a third password").await.is_ok());
        assert!(!keystore::staged_path(home.path(), id).exists());
    }
}

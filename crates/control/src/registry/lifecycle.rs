//! Registry writes of the account lifecycle: a new password, and the deletion tombstone.

use super::{db_err, kdf_to_text, Registry};
use rusqlite::{params, OptionalExtension};
use selfcloud_core::config::KdfParams;
use selfcloud_core::{GrantId, InstanceId, Result, UserId};

/// `instances.state` of a deleted account.
pub const DELETED: &str = "deleted";

impl Registry {
    /// Stores a new password's KDF inputs and verifier, raises the credential epoch and deletes
    /// the user's owner and web sessions, in one transaction: a session made with the old password
    /// never outlives the change (a log-in that checked the old one inserts only under the old
    /// epoch, see `insert_session`). Returns the new epoch.
    pub fn set_password(&self, user: UserId, kdf: &KdfParams, salt: &[u8], verifier_hash: &[u8]) -> Result<u64> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let epoch: i64 = tx
            .query_row(
                "UPDATE users SET kdf = ?2, salt = ?3, verifier_hash = ?4, credential_epoch = credential_epoch + 1
                 WHERE id = ?1 RETURNING credential_epoch",
                params![user.to_string(), kdf_to_text(kdf), salt, verifier_hash],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        tx.execute("DELETE FROM tokens WHERE user_id = ?1 AND kind IN ('session', 'web')", [user.to_string()])
            .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(epoch as u64)
    }

    /// Marks a deleted account, in one transaction: its instance is `deleted`, its verifier is
    /// cleared (no password matches an empty one), its grants are revoked and its tokens and codes
    /// are gone.
    ///
    /// The user row itself stays, so the username stays reserved: were it freed, a newcomer
    /// taking it would receive whatever apps and people still send to that name.
    ///
    /// The apps the user registered are deleted too, with every grant other users gave them
    /// (returned, so their tokens can be fenced in memory).
    pub fn tombstone(&self, user: UserId, now: u64) -> Result<Vec<GrantId>> {
        let (mut conn, id) = (self.conn.lock(), user.to_string());
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute(
            "UPDATE instances SET state = ?2, deleted_at = ?3 WHERE user_id = ?1",
            params![id, DELETED, now as i64],
        )
        .map_err(db_err)?;
        tx.execute(
            "UPDATE users SET verifier_hash = x'', credential_epoch = credential_epoch + 1 WHERE id = ?1",
            [&id],
        )
        .map_err(db_err)?;
        tx.execute(
            "UPDATE grants SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
            params![id, now as i64],
        )
        .map_err(db_err)?;
        tx.execute("DELETE FROM tokens WHERE user_id = ?1", [&id]).map_err(db_err)?;
        tx.execute("DELETE FROM codes WHERE user_id = ?1", [&id]).map_err(db_err)?;
        // Its host uid is free for another instance (its files and processes are gone).
        tx.execute("DELETE FROM host_ids WHERE instance_id IN (SELECT id FROM instances WHERE user_id = ?1)", [&id])
            .map_err(db_err)?;
        let revoked = super::apps::delete_apps_in(&tx, super::apps::Apps::Owner, &id, now).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(revoked)
    }

    pub fn instance_deleted(&self, id: InstanceId) -> Result<bool> {
        self.conn
            .lock()
            .query_row("SELECT state FROM instances WHERE id = ?1", [id.to_string()], |r| r.get::<_, String>(0))
            .optional()
            .map(|state| state.as_deref() == Some(DELETED))
            .map_err(db_err)
    }
}

//! Registry writes of the account lifecycle: a new password, and the deletion tombstone.

use super::{db_err, kdf_to_text, Registry};
use rusqlite::{params, OptionalExtension};
use selfcloud_core::config::KdfParams;
use selfcloud_core::{InstanceId, Result, UserId};

/// `instances.state` of a deleted account.
pub const DELETED: &str = "deleted";

impl Registry {
    /// Stores a new password's KDF inputs and verifier and deletes the user's owner sessions, in
    /// one transaction: a session made with the old password never outlives the change.
    pub fn set_password(&self, user: UserId, kdf: &KdfParams, salt: &[u8], verifier_hash: &[u8]) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute(
            "UPDATE users SET kdf = ?2, salt = ?3, verifier_hash = ?4 WHERE id = ?1",
            params![user.to_string(), kdf_to_text(kdf), salt, verifier_hash],
        )
        .map_err(db_err)?;
        tx.execute("DELETE FROM tokens WHERE user_id = ?1 AND kind = 'session'", [user.to_string()]).map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// Marks a deleted account, in one transaction: its instance is `deleted`, its verifier is
    /// cleared (no password matches an empty one), its grants are revoked and its tokens and codes
    /// are gone.
    ///
    /// The user row itself stays, so the username stays reserved: were it freed, a newcomer
    /// taking it would receive whatever apps and people still send to that name.
    pub fn tombstone(&self, user: UserId, now: u64) -> Result<()> {
        let (mut conn, id) = (self.conn.lock(), user.to_string());
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute(
            "UPDATE instances SET state = ?2, deleted_at = ?3 WHERE user_id = ?1",
            params![id, DELETED, now as i64],
        )
        .map_err(db_err)?;
        tx.execute("UPDATE users SET verifier_hash = x'' WHERE id = ?1", [&id]).map_err(db_err)?;
        tx.execute(
            "UPDATE grants SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL",
            params![id, now as i64],
        )
        .map_err(db_err)?;
        tx.execute("DELETE FROM tokens WHERE user_id = ?1", [&id]).map_err(db_err)?;
        tx.execute("DELETE FROM codes WHERE user_id = ?1", [&id]).map_err(db_err)?;
        tx.commit().map_err(db_err)
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

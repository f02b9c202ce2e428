//! Registry rows of apps: registered by a user (their developer), at most so many each, listed
//! and deleted by them. Deleting an app, or its developer's account, revokes every grant to it.

use super::oauth::{redirect_uris, revoke_in, scopes, AppRow};
use super::{db_err, parse, Registry};
use rusqlite::{params, OptionalExtension, Transaction};
use selfcloud_core::{AppId, Error, GrantId, Result, UserId};

fn app_of(r: &rusqlite::Row, id: AppId) -> rusqlite::Result<AppRow> {
    Ok(AppRow {
        id,
        owner_id: parse(r.get(0)?)?,
        name: r.get(1)?,
        redirect_uris: redirect_uris(&r.get::<_, String>(2)?),
        scopes: scopes(r.get(3)?),
        created_at: r.get::<_, i64>(4)? as u64,
        secret_hash: r.get::<_, Option<Vec<u8>>>(5)?.and_then(|h| h.try_into().ok()),
    })
}

/// Which apps [`delete_apps_in`] deletes.
#[derive(Clone, Copy)]
pub(super) enum Apps {
    /// The one app with this id.
    Id,
    /// Every app of this developer.
    Owner,
}

/// Marks the live apps whose id (or owner) is `arg` deleted and revokes every active grant to
/// them, of any user. Returns the grants revoked.
pub(super) fn delete_apps_in(tx: &Transaction, which: Apps, arg: &str, now: u64) -> rusqlite::Result<Vec<GrantId>> {
    let column = match which {
        Apps::Id => "id",
        Apps::Owner => "owner_id",
    };
    let grants: Vec<(String, String)> = {
        let sql = format!(
            "SELECT g.id, g.user_id FROM grants g JOIN apps a ON a.id = g.app_id
             WHERE a.{column} = ?1 AND a.deleted_at IS NULL AND g.revoked_at IS NULL"
        );
        let mut stmt = tx.prepare(&sql)?;
        let rows = stmt.query_map([arg], |r| Ok((r.get(0)?, r.get(1)?)))?;
        rows.collect::<rusqlite::Result<_>>()?
    };
    let sql = format!("UPDATE apps SET deleted_at = ?2 WHERE {column} = ?1 AND deleted_at IS NULL");
    tx.execute(&sql, params![arg, now as i64])?;
    let mut revoked = Vec::with_capacity(grants.len());
    for (grant, user) in grants {
        let (grant, user): (GrantId, UserId) = (parse(grant)?, parse(user)?);
        revoke_in(tx, user, grant, now)?;
        revoked.push(grant);
    }
    Ok(revoked)
}

impl Registry {
    /// Registers an app, unless its developer already has `max` live ones (`conflict`).
    pub fn insert_app(&self, a: &AppRow, max: usize) -> Result<()> {
        let uris = serde_json::to_string(&a.redirect_uris).map_err(Error::internal)?;
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let held: i64 = tx
            .query_row(
                "SELECT count(*) FROM apps WHERE owner_id = ?1 AND deleted_at IS NULL",
                [a.owner_id.to_string()],
                |r| r.get(0),
            )
            .map_err(db_err)?;
        if held as usize >= max {
            return Err(Error::conflict(format!("an account registers at most {max} apps; delete one first")));
        }
        tx.execute(
            "INSERT INTO apps (id, owner_id, name, redirect_uris, scopes, created_at, secret_hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![
                a.id.to_string(),
                a.owner_id.to_string(),
                a.name,
                uris,
                a.scopes.to_string(),
                a.created_at as i64,
                a.secret_hash.map(|h| h.to_vec())
            ],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    /// A live (not deleted) app.
    pub fn app(&self, id: AppId) -> Result<Option<AppRow>> {
        self.conn
            .lock()
            .prepare_cached(
                "SELECT owner_id, name, redirect_uris, scopes, created_at, secret_hash FROM apps WHERE id = ?1 AND deleted_at IS NULL",
            )
            .and_then(|mut s| s.query_row([id.to_string()], |r| app_of(r, id)).optional())
            .map_err(db_err)
    }

    /// The live apps `owner` registered, oldest first.
    pub fn apps_of(&self, owner: UserId) -> Result<Vec<AppRow>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT owner_id, name, redirect_uris, scopes, created_at, secret_hash, id FROM apps
                 WHERE owner_id = ?1 AND deleted_at IS NULL ORDER BY created_at, id",
            )
            .map_err(db_err)?;
        let rows = stmt.query_map([owner.to_string()], |r| app_of(r, parse(r.get(6)?)?)).map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// Deletes one of `owner`'s apps and revokes every grant to it. `None` if it is not theirs
    /// or already deleted; otherwise the grants revoked.
    pub fn delete_app(&self, owner: UserId, app: AppId, now: u64) -> Result<Option<Vec<GrantId>>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let theirs: Option<String> = tx
            .query_row(
                "SELECT owner_id FROM apps WHERE id = ?1 AND owner_id = ?2 AND deleted_at IS NULL",
                params![app.to_string(), owner.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if theirs.is_none() {
            return Ok(None);
        }
        let revoked = delete_apps_in(&tx, Apps::Id, &app.to_string(), now).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Some(revoked))
    }
}

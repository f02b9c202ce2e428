//! Registry rows of grants: one active grant per user and app, gaining scopes with each consent
//! (which also stores the code for exactly what was allowed), carrying the user's daily token
//! budget for the app, listed and revoked by the user.

use super::oauth::{revoke_in, scopes, NewCodeRow};
use super::{db_err, parse, Registry};
use rusqlite::{params, OptionalExtension};
use selfcloud_core::{AppId, GrantId, Result, ScopeSet, UserId};

#[derive(Clone, Debug)]
pub struct GrantRow {
    pub id: GrantId,
    pub user_id: UserId,
    pub app_id: AppId,
    pub app_name: String,
    pub scopes: ScopeSet,
    pub created_at: u64,
    /// LLM tokens a day the user allows the app; `None` leaves the tier's ceiling alone.
    pub token_budget: Option<u64>,
    /// When it ends by itself (Unix seconds); `None`: when the user revokes it.
    pub expires_at: Option<u64>,
}

/// What the user set on a grant besides its scopes.
#[derive(Clone, Copy, Debug, Default)]
pub struct GrantTerms {
    /// LLM tokens a day; `None` keeps what the grant had.
    pub token_budget: Option<u64>,
    /// When the grant ends by itself; `None`: when the user revokes it.
    pub expires_at: Option<u64>,
}

impl Registry {
    /// The user allowed `app` the `scopes`: their one active grant for the app gains them (or is
    /// created), and a code for exactly these scopes is stored, in one transaction.
    /// A `token_budget` given replaces the grant's; `None` keeps what it had.
    pub fn consent(
        &self,
        user: UserId,
        app: AppId,
        scopes: &ScopeSet,
        terms: GrantTerms,
        code: NewCodeRow,
        now: u64,
    ) -> Result<GrantRow> {
        let GrantTerms { token_budget, expires_at } = terms;
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let live: bool = tx
            .query_row("SELECT deleted_at IS NULL FROM apps WHERE id = ?1", [app.to_string()], |r| r.get(0))
            .optional()
            .map_err(db_err)?
            .unwrap_or(false);
        if !live {
            return Err(selfcloud_core::Error::not_found("unknown client_id"));
        }
        // A grant that ran out is over: this consent starts a new one.
        let lapsed: Option<String> = tx
            .query_row(
                "SELECT id FROM grants WHERE user_id = ?1 AND app_id = ?2 AND revoked_at IS NULL AND expires_at <= ?3",
                params![user.to_string(), app.to_string(), now as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        if let Some(lapsed) = lapsed {
            super::oauth::revoke_in(&tx, user, lapsed.parse()?, now).map_err(db_err)?;
        }
        let expires_sql = expires_at.map(|t| t.min(i64::MAX as u64) as i64);
        let existing: Option<(String, String, i64, Option<i64>)> = tx
            .query_row(
                "SELECT id, scopes, created_at, token_budget FROM grants
                 WHERE user_id = ?1 AND app_id = ?2 AND revoked_at IS NULL",
                params![user.to_string(), app.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )
            .optional()
            .map_err(db_err)?;
        let budget_sql = token_budget.map(|b| b.min(i64::MAX as u64) as i64);
        let (id, all, created_at, token_budget) = match existing {
            Some((id, held, created_at, held_budget)) => {
                let id: GrantId = id.parse()?;
                let all = self::scopes(held).union(scopes);
                let budget = budget_sql.or(held_budget);
                // The expiry is the latest consent's choice, as the page showed it.
                tx.execute(
                    "UPDATE grants SET scopes = ?2, token_budget = ?3, expires_at = ?4 WHERE id = ?1",
                    params![id.to_string(), all.to_string(), budget, expires_sql],
                )
                .map_err(db_err)?;
                (id, all, created_at as u64, budget.map(|b| b as u64))
            }
            None => {
                let id = GrantId::random();
                tx.execute(
                    "INSERT INTO grants (id, user_id, app_id, scopes, created_at, token_budget, expires_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![
                        id.to_string(),
                        user.to_string(),
                        app.to_string(),
                        scopes.to_string(),
                        now as i64,
                        budget_sql,
                        expires_sql
                    ],
                )
                .map_err(db_err)?;
                (id, scopes.clone(), now, token_budget)
            }
        };
        tx.execute(
            "INSERT INTO codes (hash, app_id, user_id, grant_id, redirect_uri, code_challenge, scopes, expires_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            params![
                code.hash.as_slice(),
                app.to_string(),
                user.to_string(),
                id.to_string(),
                code.redirect_uri,
                code.code_challenge,
                code.scopes.to_string(),
                code.expires_at as i64
            ],
        )
        .map_err(db_err)?;
        let app_name: String =
            tx.query_row("SELECT name FROM apps WHERE id = ?1", [app.to_string()], |r| r.get(0)).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(GrantRow { id, user_id: user, app_id: app, app_name, scopes: all, created_at, token_budget, expires_at })
    }

    /// Sets (or with `None` clears) the token budget of one of `user`'s active grants; false when
    /// it is not theirs or not active.
    pub fn set_token_budget(&self, user: UserId, grant: GrantId, budget: Option<u64>) -> Result<bool> {
        let conn = self.conn.lock();
        let changed = conn
            .execute(
                "UPDATE grants SET token_budget = ?3 WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
                params![grant.to_string(), user.to_string(), budget.map(|b| b.min(i64::MAX as u64) as i64)],
            )
            .map_err(db_err)?;
        Ok(changed == 1)
    }

    /// The token budget of an active grant: `None` when it has none or is not active.
    pub fn token_budget(&self, grant: GrantId) -> Result<Option<u64>> {
        let conn = self.conn.lock();
        let budget: Option<Option<i64>> = conn
            .query_row(
                "SELECT token_budget FROM grants WHERE id = ?1 AND revoked_at IS NULL",
                [grant.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(db_err)?;
        Ok(budget.flatten().map(|b| b as u64))
    }

    pub fn active_grants_of(&self, user: UserId, now: u64) -> Result<Vec<GrantRow>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT g.id, g.app_id, a.name, g.scopes, g.created_at, g.token_budget, g.expires_at
                 FROM grants g JOIN apps a ON a.id = g.app_id
                 WHERE g.user_id = ?1 AND g.revoked_at IS NULL AND (g.expires_at IS NULL OR g.expires_at > ?2)
                 ORDER BY g.created_at, g.id",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![user.to_string(), now as i64], |r| {
                Ok(GrantRow {
                    id: parse(r.get(0)?)?,
                    user_id: user,
                    app_id: parse(r.get(1)?)?,
                    app_name: r.get(2)?,
                    scopes: scopes(r.get(3)?),
                    created_at: r.get::<_, i64>(4)? as u64,
                    token_budget: r.get::<_, Option<i64>>(5)?.map(|b| b as u64),
                    expires_at: r.get::<_, Option<i64>>(6)?.map(|t| t as u64),
                })
            })
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// Marks a grant revoked and deletes its tokens and codes, in one transaction. False when the
    /// grant does not belong to `user` or is already revoked.
    pub fn revoke_grant(&self, user: UserId, grant: GrantId, now: u64) -> Result<bool> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let revoked = revoke_in(&tx, user, grant, now).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(revoked)
    }
}

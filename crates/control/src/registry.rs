//! The control-plane registry: users, instances, apps, grants, tokens and codes, in one SQLite
//! file (`<home>/control.db`). It holds ids, hashes and wrapped keys, never instance contents.

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use selfcloud_core::config::KdfParams;
use selfcloud_core::{AppId, Error, GrantId, InstanceId, Result, ScopeSet, UserId};
use std::path::Path;

mod lifecycle;
pub use lifecycle::DELETED;

const MIGRATIONS: &[&str] = &[
    "
    CREATE TABLE users (
        id            TEXT PRIMARY KEY,
        username      TEXT NOT NULL UNIQUE,
        kdf           TEXT NOT NULL,
        salt          BLOB NOT NULL,
        verifier_hash BLOB NOT NULL,
        created_at    INTEGER NOT NULL
    );
    CREATE TABLE instances (
        id         TEXT PRIMARY KEY,
        user_id    TEXT NOT NULL UNIQUE REFERENCES users(id),
        tier       TEXT NOT NULL,
        state      TEXT NOT NULL,
        created_at INTEGER NOT NULL
    );
    CREATE TABLE apps (
        id            TEXT PRIMARY KEY,
        owner_id      TEXT NOT NULL REFERENCES users(id),
        name          TEXT NOT NULL,
        redirect_uris TEXT NOT NULL,
        scopes        TEXT NOT NULL,
        created_at    INTEGER NOT NULL
    );
    CREATE TABLE grants (
        id         TEXT PRIMARY KEY,
        user_id    TEXT NOT NULL REFERENCES users(id),
        app_id     TEXT NOT NULL REFERENCES apps(id),
        scopes     TEXT NOT NULL,
        created_at INTEGER NOT NULL,
        revoked_at INTEGER
    );
    CREATE INDEX grants_by_user ON grants(user_id);
    CREATE TABLE tokens (
        hash       BLOB PRIMARY KEY,
        kind       TEXT NOT NULL,
        user_id    TEXT NOT NULL,
        grant_id   TEXT,
        scopes     TEXT NOT NULL,
        expires_at INTEGER NOT NULL,
        spent      INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
    CREATE TABLE codes (
        hash           BLOB PRIMARY KEY,
        app_id         TEXT NOT NULL,
        user_id        TEXT NOT NULL,
        grant_id       TEXT NOT NULL,
        redirect_uri   TEXT NOT NULL,
        code_challenge TEXT NOT NULL,
        expires_at     INTEGER NOT NULL,
        spent          INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID;
",
    "
    -- Account deletion: the instance row becomes a tombstone (state 'deleted').
    ALTER TABLE instances ADD COLUMN deleted_at INTEGER;
    CREATE INDEX tokens_by_user ON tokens(user_id);
",
];

#[derive(Clone, Debug)]
pub struct UserRow {
    pub id: UserId,
    pub username: String,
    pub kdf: KdfParams,
    pub salt: Vec<u8>,
    pub verifier_hash: Vec<u8>,
    pub instance_id: InstanceId,
    pub tier: String,
    pub state: String,
    pub created_at: u64,
}

#[derive(Clone, Debug)]
pub struct AppRow {
    pub id: AppId,
    pub owner_id: UserId,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: ScopeSet,
    pub created_at: u64,
}

#[derive(Clone, Debug)]
pub struct GrantRow {
    pub id: GrantId,
    pub user_id: UserId,
    pub app_id: AppId,
    pub app_name: String,
    pub scopes: ScopeSet,
    pub created_at: u64,
}

#[derive(Clone, Debug)]
pub struct TokenRow {
    pub hash: [u8; 32],
    pub kind: String,
    pub user_id: UserId,
    pub grant_id: Option<GrantId>,
    pub scopes: String,
    pub expires_at: u64,
    pub spent: bool,
}

#[derive(Clone, Debug)]
pub struct CodeRow {
    pub app_id: AppId,
    pub user_id: UserId,
    pub grant_id: GrantId,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub expires_at: u64,
    pub spent: bool,
}

pub(crate) struct Registry {
    conn: Mutex<Connection>,
}

pub(crate) fn db_err(e: rusqlite::Error) -> Error {
    Error::internal(format!("registry: {e}"))
}

fn parse<T: std::str::FromStr<Err = Error>>(s: String) -> rusqlite::Result<T> {
    s.parse().map_err(|e: Error| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

impl Registry {
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path).map_err(db_err)?;
        conn.execute_batch(
            "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON; PRAGMA busy_timeout=5000;",
        )
        .map_err(db_err)?;
        let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(db_err)?;
        if version > MIGRATIONS.len() {
            return Err(Error::internal("registry schema is newer than this binary"));
        }
        for (i, sql) in MIGRATIONS.iter().enumerate().skip(version) {
            let tx = conn.transaction().map_err(db_err)?;
            tx.execute_batch(sql).map_err(db_err)?;
            tx.pragma_update(None, "user_version", i + 1).map_err(db_err)?;
            tx.commit().map_err(db_err)?;
        }
        Ok(Registry { conn: Mutex::new(conn) })
    }

    pub fn username_taken(&self, username: &str) -> Result<bool> {
        self.conn
            .lock()
            .query_row("SELECT 1 FROM users WHERE username = ?1", [username], |_| Ok(()))
            .optional()
            .map(|r| r.is_some())
            .map_err(db_err)
    }

    /// Inserts the user and their instance in one transaction; `conflict` if the name is taken.
    pub fn insert_user(&self, u: &UserRow) -> Result<()> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let kdf = kdf_to_text(&u.kdf);
        let inserted = tx.execute(
            "INSERT INTO users (id, username, kdf, salt, verifier_hash, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)
             ON CONFLICT (username) DO NOTHING",
            params![u.id.to_string(), u.username, kdf, u.salt, u.verifier_hash, u.created_at as i64],
        );
        if inserted.map_err(db_err)? == 0 {
            return Err(Error::conflict("username is taken"));
        }
        tx.execute(
            "INSERT INTO instances (id, user_id, tier, state, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![u.instance_id.to_string(), u.id.to_string(), u.tier, u.state, u.created_at as i64],
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)
    }

    const USER_SELECT: &'static str =
        "SELECT u.id, u.username, u.kdf, u.salt, u.verifier_hash, i.id, i.tier, i.state, u.created_at
         FROM users u JOIN instances i ON i.user_id = u.id";

    fn user_where(&self, clause: &str, arg: &str) -> Result<Option<UserRow>> {
        let sql = format!("{} WHERE {clause}", Self::USER_SELECT);
        self.conn
            .lock()
            .prepare_cached(&sql)
            .and_then(|mut s| {
                s.query_row([arg], |r| {
                    Ok(UserRow {
                        id: parse(r.get(0)?)?,
                        username: r.get(1)?,
                        kdf: kdf_from_text(&r.get::<_, String>(2)?),
                        salt: r.get(3)?,
                        verifier_hash: r.get(4)?,
                        instance_id: parse(r.get(5)?)?,
                        tier: r.get(6)?,
                        state: r.get(7)?,
                        created_at: r.get::<_, i64>(8)? as u64,
                    })
                })
                .optional()
            })
            .map_err(db_err)
    }

    pub fn user_by_name(&self, username: &str) -> Result<Option<UserRow>> {
        self.user_where("u.username = ?1", username)
    }

    pub fn user_by_id(&self, id: UserId) -> Result<Option<UserRow>> {
        self.user_where("u.id = ?1", &id.to_string())
    }

    pub fn instance_count(&self) -> Result<u64> {
        self.conn
            .lock()
            .query_row("SELECT count(*) FROM instances", [], |r| r.get::<_, i64>(0))
            .map(|n| n as u64)
            .map_err(db_err)
    }

    /// Every instance's tier (loaded into memory at start).
    pub fn instance_tiers(&self) -> Result<std::collections::HashMap<InstanceId, selfcloud_core::config::Tier>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare("SELECT id, tier FROM instances").map_err(db_err)?;
        let rows =
            stmt.query_map([], |r| Ok((parse::<InstanceId>(r.get(0)?)?, r.get::<_, String>(1)?))).map_err(db_err)?;
        let mut out = std::collections::HashMap::new();
        for row in rows {
            let (id, tier) = row.map_err(db_err)?;
            out.insert(id, tier.parse().unwrap_or_default());
        }
        Ok(out)
    }

    /// False when there is no such instance.
    pub fn set_instance_tier(&self, id: InstanceId, tier: &str) -> Result<bool> {
        self.conn
            .lock()
            .execute("UPDATE instances SET tier = ?2 WHERE id = ?1", params![id.to_string(), tier])
            .map(|n| n == 1)
            .map_err(db_err)
    }

    /// `(id, username, tier, state, created_at)` of every instance, oldest first.
    #[allow(clippy::type_complexity)]
    pub fn instances(&self) -> Result<Vec<(InstanceId, String, String, String, u64)>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare(
                "SELECT i.id, u.username, i.tier, i.state, i.created_at FROM instances i JOIN users u ON u.id = i.user_id
                 ORDER BY i.created_at, i.id",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| Ok((parse(r.get(0)?)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get::<_, i64>(4)? as u64)))
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// Every live instance id in the registry, in id order (for `selfcloud verify`); deleted
    /// instances have no directory left to check.
    pub fn instance_ids(&self) -> Result<Vec<InstanceId>> {
        let conn = self.conn.lock();
        let mut stmt = conn.prepare("SELECT id FROM instances WHERE state != 'deleted' ORDER BY id").map_err(db_err)?;
        let ids = stmt.query_map([], |r| parse(r.get(0)?)).map_err(db_err)?;
        ids.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// SQLite's own check of the registry file: `Ok` or what it found wrong.
    pub fn integrity_check(&self) -> Result<()> {
        let report: String = self.conn.lock().query_row("PRAGMA integrity_check", [], |r| r.get(0)).map_err(db_err)?;
        if report != "ok" {
            return Err(Error::internal(format!("registry integrity_check: {report}")));
        }
        Ok(())
    }

    pub fn insert_app(&self, a: &AppRow) -> Result<()> {
        let uris = a.redirect_uris.join("\n");
        self.conn
            .lock()
            .execute(
                "INSERT INTO apps (id, owner_id, name, redirect_uris, scopes, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![a.id.to_string(), a.owner_id.to_string(), a.name, uris, a.scopes.to_string(), a.created_at as i64],
            )
            .map(drop)
            .map_err(db_err)
    }

    pub fn app(&self, id: AppId) -> Result<Option<AppRow>> {
        self.conn
            .lock()
            .prepare_cached("SELECT owner_id, name, redirect_uris, scopes, created_at FROM apps WHERE id = ?1")
            .and_then(|mut s| {
                s.query_row([id.to_string()], |r| {
                    Ok(AppRow {
                        id,
                        owner_id: parse(r.get(0)?)?,
                        name: r.get(1)?,
                        redirect_uris: r.get::<_, String>(2)?.split('\n').map(str::to_owned).collect(),
                        scopes: ScopeSet::parse(&r.get::<_, String>(3)?).unwrap_or_default(),
                        created_at: r.get::<_, i64>(4)? as u64,
                    })
                })
                .optional()
            })
            .map_err(db_err)
    }

    pub fn insert_grant(&self, g: &GrantRow) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT INTO grants (id, user_id, app_id, scopes, created_at) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    g.id.to_string(),
                    g.user_id.to_string(),
                    g.app_id.to_string(),
                    g.scopes.to_string(),
                    g.created_at as i64
                ],
            )
            .map(drop)
            .map_err(db_err)
    }

    pub fn active_grants_of(&self, user: UserId) -> Result<Vec<GrantRow>> {
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare_cached(
                "SELECT g.id, g.app_id, a.name, g.scopes, g.created_at FROM grants g JOIN apps a ON a.id = g.app_id
                 WHERE g.user_id = ?1 AND g.revoked_at IS NULL ORDER BY g.created_at, g.id",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map(params![user.to_string()], |r| {
                Ok(GrantRow {
                    id: parse(r.get(0)?)?,
                    user_id: user,
                    app_id: parse(r.get(1)?)?,
                    app_name: r.get(2)?,
                    scopes: ScopeSet::parse(&r.get::<_, String>(3)?).unwrap_or_default(),
                    created_at: r.get::<_, i64>(4)? as u64,
                })
            })
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    /// Marks a grant revoked and deletes its tokens, in one transaction. Returns false when the
    /// grant does not belong to `user` or is already revoked.
    pub fn revoke_grant(&self, user: UserId, grant: GrantId, now: u64) -> Result<bool> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let n = tx
            .execute(
                "UPDATE grants SET revoked_at = ?3 WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
                params![grant.to_string(), user.to_string(), now as i64],
            )
            .map_err(db_err)?;
        if n == 1 {
            tx.execute("DELETE FROM tokens WHERE grant_id = ?1", [grant.to_string()]).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(n == 1)
    }

    pub fn grant_is_active(&self, grant: GrantId) -> Result<bool> {
        self.conn
            .lock()
            .query_row("SELECT revoked_at IS NULL FROM grants WHERE id = ?1", [grant.to_string()], |r| {
                r.get::<_, bool>(0)
            })
            .optional()
            .map(|r| r.unwrap_or(false))
            .map_err(db_err)
    }

    pub fn insert_token(&self, t: &TokenRow) -> Result<()> {
        self.conn
            .lock()
            .prepare_cached(
                "INSERT INTO tokens (hash, kind, user_id, grant_id, scopes, expires_at, spent) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    t.hash.as_slice(),
                    t.kind,
                    t.user_id.to_string(),
                    t.grant_id.map(|g| g.to_string()),
                    t.scopes,
                    t.expires_at as i64,
                    t.spent
                ])
            })
            .map(drop)
            .map_err(db_err)
    }

    /// Marks a token spent (a rotated refresh token). False if it was already spent or gone.
    pub fn spend_token(&self, hash: &[u8; 32]) -> Result<bool> {
        self.conn
            .lock()
            .execute("UPDATE tokens SET spent = 1 WHERE hash = ?1 AND spent = 0", [hash.as_slice()])
            .map(|n| n == 1)
            .map_err(db_err)
    }

    pub fn delete_token(&self, hash: &[u8; 32]) -> Result<()> {
        self.conn.lock().execute("DELETE FROM tokens WHERE hash = ?1", [hash.as_slice()]).map(drop).map_err(db_err)
    }

    /// Every token still valid at `now` (loaded into memory at start); expired ones are deleted.
    pub fn live_tokens(&self, now: u64) -> Result<Vec<TokenRow>> {
        let conn = self.conn.lock();
        conn.execute("DELETE FROM tokens WHERE expires_at <= ?1", [now as i64]).map_err(db_err)?;
        conn.execute("DELETE FROM codes WHERE expires_at <= ?1", [now as i64]).map_err(db_err)?;
        let mut stmt = conn
            .prepare("SELECT hash, kind, user_id, grant_id, scopes, expires_at, spent FROM tokens")
            .map_err(db_err)?;
        let rows = stmt
            .query_map([], |r| {
                let hash: Vec<u8> = r.get(0)?;
                Ok(TokenRow {
                    hash: hash.try_into().unwrap_or([0; 32]),
                    kind: r.get(1)?,
                    user_id: parse(r.get(2)?)?,
                    grant_id: r.get::<_, Option<String>>(3)?.map(parse).transpose()?,
                    scopes: r.get(4)?,
                    expires_at: r.get::<_, i64>(5)? as u64,
                    spent: r.get(6)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }

    pub fn insert_code(&self, hash: &[u8; 32], c: &CodeRow) -> Result<()> {
        self.conn
            .lock()
            .execute(
                "INSERT INTO codes (hash, app_id, user_id, grant_id, redirect_uri, code_challenge, expires_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    hash.as_slice(),
                    c.app_id.to_string(),
                    c.user_id.to_string(),
                    c.grant_id.to_string(),
                    c.redirect_uri,
                    c.code_challenge,
                    c.expires_at as i64
                ],
            )
            .map(drop)
            .map_err(db_err)
    }

    /// Reads a code and marks it spent in one transaction; the row returned tells whether it had
    /// been spent before (a replay).
    pub fn take_code(&self, hash: &[u8; 32]) -> Result<Option<CodeRow>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let row = tx
            .query_row(
                "SELECT app_id, user_id, grant_id, redirect_uri, code_challenge, expires_at, spent FROM codes WHERE hash = ?1",
                [hash.as_slice()],
                |r| {
                    Ok(CodeRow {
                        app_id: parse(r.get(0)?)?,
                        user_id: parse(r.get(1)?)?,
                        grant_id: parse(r.get(2)?)?,
                        redirect_uri: r.get(3)?,
                        code_challenge: r.get(4)?,
                        expires_at: r.get::<_, i64>(5)? as u64,
                        spent: r.get(6)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)?;
        tx.execute("UPDATE codes SET spent = 1 WHERE hash = ?1", [hash.as_slice()]).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(row)
    }
}

fn kdf_to_text(k: &KdfParams) -> String {
    format!("argon2id;m={};t={};p={}", k.m_cost, k.t_cost, k.p_cost)
}

fn kdf_from_text(s: &str) -> KdfParams {
    let mut k = KdfParams::default();
    for part in s.split(';').skip(1) {
        if let Some((name, value)) = part.split_once('=') {
            let v = value.parse().unwrap_or(0);
            match name {
                "m" => k.m_cost = v,
                "t" => k.t_cost = v,
                "p" => k.p_cost = v,
                _ => {}
            }
        }
    }
    k
}

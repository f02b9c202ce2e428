//! The control-plane registry: users, instances, apps, grants, tokens and codes, in one SQLite
//! file (`<home>/control.db`). It holds ids, hashes and wrapped keys, never instance contents.

use parking_lot::Mutex;
use rusqlite::{params, Connection, OptionalExtension};
use selfcloud_core::config::KdfParams;
use selfcloud_core::{Error, InstanceId, Result, UserId};
use selfcloud_durable::sqlite::{open_migrated, Durability, Sharing};
use std::path::Path;

mod apps;
mod grants;
mod host_ids;
mod lifecycle;
mod oauth;
pub use grants::{GrantRow, GrantTerms};
pub use lifecycle::DELETED;
pub use oauth::{AppRow, CodeRow, Ended, FamilyPlan, Issued, NewCodeRow, Redeemed, RefreshRow, Verdict};

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
    r#"
    -- A credential epoch per user: a session is inserted only if the epoch it was checked
    -- against is still current, so no log-in racing a password change outlives it.
    ALTER TABLE users ADD COLUMN credential_epoch INTEGER NOT NULL DEFAULT 0;
    -- Redirect URIs as a JSON list (they were joined with line breaks).
    UPDATE apps SET redirect_uris =
        '["' || replace(replace(replace(redirect_uris, '\', '\\'), '"', '\"'), char(10), '","') || '"]';
    -- A code carries the scopes consented to when it was issued.
    ALTER TABLE codes ADD COLUMN scopes TEXT NOT NULL DEFAULT '';
    -- App tokens come in families, one per code exchange: a refresh supersedes its family's
    -- previous access token, and a grant keeps a bounded number of families.
    ALTER TABLE tokens ADD COLUMN family TEXT;
    -- Issue order (newest highest), for the bounds that end the oldest first.
    ALTER TABLE tokens ADD COLUMN seq INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX tokens_by_family ON tokens(family);
    CREATE INDEX tokens_by_grant ON tokens(grant_id);
    CREATE INDEX codes_by_grant ON codes(grant_id);
    -- One active grant per (user, app): older duplicates end, with their tokens.
    UPDATE grants SET revoked_at = created_at WHERE revoked_at IS NULL AND rowid NOT IN
        (SELECT max(rowid) FROM grants WHERE revoked_at IS NULL GROUP BY user_id, app_id);
    DELETE FROM tokens WHERE grant_id IN (SELECT id FROM grants WHERE revoked_at IS NOT NULL);
    CREATE UNIQUE INDEX one_active_grant ON grants(user_id, app_id) WHERE revoked_at IS NULL;
    -- Apps are deleted by their developer, or with the developer's account.
    ALTER TABLE apps ADD COLUMN deleted_at INTEGER;
    CREATE INDEX apps_by_owner ON apps(owner_id);
    CREATE INDEX grants_by_app ON grants(app_id);
"#,
    "
    -- LLM tokens a day the user lets the app spend (NULL: the tier's ceiling alone).
    ALTER TABLE grants ADD COLUMN token_budget INTEGER;
    ",
    "
    -- A confidential client's secret, hashed (NULL: a public client, which proves itself with PKCE alone).
    ALTER TABLE apps ADD COLUMN secret_hash BLOB;
    ",
    "
    -- When the grant ends by itself (Unix seconds; NULL: when the user revokes it).
    ALTER TABLE grants ADD COLUMN expires_at INTEGER;
    ",
    "
    -- The host uid each instance's root runs as when the server runs as root: one per instance.
    CREATE TABLE host_ids (
        instance_id TEXT PRIMARY KEY,
        uid         INTEGER NOT NULL UNIQUE
    ) WITHOUT ROWID;
    ",
    "
    -- The token family a code's exchange started: a replay of the code ends that family alone.
    ALTER TABLE codes ADD COLUMN family TEXT;
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
    /// Raised by every password change, recovery and deletion; a session is only ever inserted
    /// under the epoch its password was checked in.
    pub credential_epoch: u64,
}

pub(crate) struct Registry {
    conn: Mutex<Connection>,
}

pub(crate) fn db_err(e: rusqlite::Error) -> Error {
    selfcloud_durable::sqlite::error("registry", e)
}

fn parse<T: std::str::FromStr<Err = Error>>(s: String) -> rusqlite::Result<T> {
    s.parse().map_err(|e: Error| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

impl Registry {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = open_migrated(path, Durability::Full, Sharing::Processes, MIGRATIONS, "registry")?;
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
        "SELECT u.id, u.username, u.kdf, u.salt, u.verifier_hash, i.id, i.tier, i.state, u.created_at, u.credential_epoch
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
                        credential_epoch: r.get::<_, i64>(9)? as u64,
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

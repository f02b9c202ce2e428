//! Registry rows of the OAuth server: apps, authorization codes and tokens (grants are in
//! `grants.rs`, apps' own lifecycle in `apps.rs`). Every check that must not race a revocation or a password change runs in the same
//! transaction as the write it guards; the caller's protocol decision runs inside it too, so a
//! code or refresh token is spent only by a request that passed every check.

use super::{db_err, parse, Registry, DELETED};
use rusqlite::{params, OptionalExtension, Transaction};
use selfcloud_core::{AppId, GrantId, InstanceId, Result, ScopeSet, UserId};

pub type Hash = [u8; 32];

#[derive(Clone, Debug)]
pub struct AppRow {
    pub id: AppId,
    pub owner_id: UserId,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: ScopeSet,
    pub created_at: u64,
    /// SHA-256 of a confidential client's secret.
    pub secret_hash: Option<[u8; 32]>,
}

/// A token as loaded into memory at start (refresh tokens stay on disk: they are not API
/// credentials, and only the token endpoint reads them).
#[derive(Clone, Debug)]
pub struct TokenRow {
    pub hash: Hash,
    pub kind: String,
    pub user_id: UserId,
    pub instance_id: InstanceId,
    /// `(grant, app, app name)` of an app token.
    pub grant: Option<(GrantId, AppId, String)>,
    pub scopes: String,
    pub expires_at: u64,
    pub credential_epoch: u64,
    /// The sign-in an app token belongs to.
    pub family: Option<String>,
}

/// An authorization code as stored.
#[derive(Clone, Debug)]
pub struct CodeRow {
    pub app_id: AppId,
    pub user_id: UserId,
    pub grant_id: GrantId,
    pub redirect_uri: String,
    pub code_challenge: String,
    /// What the user consented to for this code.
    pub scopes: ScopeSet,
    pub expires_at: u64,
    pub spent: bool,
    /// The token family its exchange started (`None` until it is spent, or for a code spent
    /// before codes kept it).
    pub family: Option<String>,
}

/// A refresh token as stored.
#[derive(Clone, Debug)]
pub struct RefreshRow {
    pub user_id: UserId,
    pub grant_id: GrantId,
    pub app_id: AppId,
    pub family: String,
    pub scopes: ScopeSet,
    pub expires_at: u64,
    pub spent: bool,
}

/// The new tokens to write when a code or a refresh token is honoured, and the bounds kept.
pub struct FamilyPlan {
    /// The family of a code exchange's tokens (a refresh keeps its own).
    pub family: String,
    pub access: (Hash, u64),
    pub refresh: (Hash, u64),
    /// Token families (app sign-ins) a grant keeps; past it the oldest ends.
    pub max_families: usize,
    /// Spent refresh tokens a family remembers, to recognise a replay.
    pub spent_kept: usize,
}

impl FamilyPlan {
    /// The plan with both tokens ending by `end` at the latest.
    pub fn ending_by(&self, end: Option<u64>) -> FamilyPlan {
        let cap = |t: u64| end.map_or(t, |e| t.min(e));
        FamilyPlan {
            family: self.family.clone(),
            access: (self.access.0, cap(self.access.1)),
            refresh: (self.refresh.0, cap(self.refresh.1)),
            max_families: self.max_families,
            spent_kept: self.spent_kept,
        }
    }
}

/// The protocol's decision on a code or refresh token, taken inside the transaction that would
/// spend it, with its reason for a refusal.
pub enum Verdict<E> {
    /// Spend it and issue tokens carrying these scopes.
    Issue(ScopeSet),
    /// Refuse, and leave it as it was.
    Refuse(E),
    /// Refuse and end the credential's token family (the sign-in it came from): it was used
    /// twice, so two parties hold it (RFC 9700 4.14.2). The grant and its other families stay.
    Revoke(E),
}

/// What a replay ended.
pub enum Ended {
    /// The credential's family: these tokens.
    Family { family: String, removed: Vec<Hash> },
    /// A credential from before families were kept: its family is unknown, so the grant ends.
    Grant,
}

/// What became of a code or refresh token.
pub enum Redeemed<E> {
    Unknown,
    Refused(E),
    Revoked {
        grant: GrantId,
        ended: Ended,
        reason: E,
    },
    /// The grant is no longer active (revoked, or its user deleted).
    GrantEnded,
    Issued(Issued),
}

pub struct Issued {
    pub user: UserId,
    pub instance: InstanceId,
    pub grant: GrantId,
    pub app: AppId,
    pub app_name: String,
    pub scopes: ScopeSet,
    /// The family the new pair belongs to.
    pub family: String,
    /// Tokens the write removed (a superseded access token, families past the bound): drop
    /// them from memory.
    pub removed: Vec<Hash>,
    /// When the new access token ends (its lifetime, or the grant's expiry if sooner).
    pub access_expires_at: u64,
}

/// The fields of a new code.
pub struct NewCodeRow<'a> {
    pub hash: Hash,
    pub redirect_uri: &'a str,
    pub code_challenge: &'a str,
    pub scopes: &'a ScopeSet,
    pub expires_at: u64,
}

pub(super) fn scopes(text: String) -> ScopeSet {
    ScopeSet::parse(&text).unwrap_or_default()
}

pub(super) fn redirect_uris(json: &str) -> Vec<String> {
    serde_json::from_str(json).unwrap_or_else(|e| {
        tracing::error!(error = %e, "an app's stored redirect URIs are not a JSON list; none are honoured");
        Vec::new()
    })
}

/// The live grant's user, instance, app and expiry, if the grant is active (not revoked, not run
/// out) and its user not deleted.
#[allow(clippy::type_complexity)]
fn active_grant(
    tx: &Transaction,
    grant: GrantId,
    now: u64,
) -> rusqlite::Result<Option<(UserId, InstanceId, AppId, String, Option<u64>)>> {
    tx.prepare_cached(
        "SELECT g.user_id, i.id, g.app_id, a.name, g.expires_at FROM grants g JOIN apps a ON a.id = g.app_id
         JOIN instances i ON i.user_id = g.user_id
         WHERE g.id = ?1 AND g.revoked_at IS NULL AND i.state != ?2 AND a.deleted_at IS NULL
           AND (g.expires_at IS NULL OR g.expires_at > ?3)",
    )?
    .query_row(params![grant.to_string(), DELETED, now as i64], |r| {
        let expires: Option<i64> = r.get(4)?;
        Ok((parse(r.get(0)?)?, parse(r.get(1)?)?, parse(r.get(2)?)?, r.get(3)?, expires.map(|t| t as u64)))
    })
    .optional()
}

pub(super) fn revoke_in(tx: &Transaction, user: UserId, grant: GrantId, now: u64) -> rusqlite::Result<bool> {
    let n = tx.execute(
        "UPDATE grants SET revoked_at = ?3 WHERE id = ?1 AND user_id = ?2 AND revoked_at IS NULL",
        params![grant.to_string(), user.to_string(), now as i64],
    )?;
    if n == 1 {
        tx.execute("DELETE FROM tokens WHERE grant_id = ?1", [grant.to_string()])?;
        tx.execute("DELETE FROM codes WHERE grant_id = ?1", [grant.to_string()])?;
    }
    Ok(n == 1)
}

fn hashes(tx: &Transaction, sql: &str, args: impl rusqlite::Params) -> rusqlite::Result<Vec<Hash>> {
    let mut stmt = tx.prepare_cached(sql)?;
    let rows = stmt.query_map(args, |r| r.get::<_, Vec<u8>>(0))?;
    rows.map(|h| h.map(|h| h.try_into().unwrap_or([0; 32]))).collect()
}

fn delete_hashes(tx: &Transaction, removed: &[Hash]) -> rusqlite::Result<()> {
    let mut stmt = tx.prepare_cached("DELETE FROM tokens WHERE hash = ?1")?;
    for h in removed {
        stmt.execute([h.as_slice()])?;
    }
    Ok(())
}

/// A token row to insert.
struct NewToken<'a> {
    hash: &'a Hash,
    kind: &'a str,
    user: UserId,
    grant: Option<GrantId>,
    family: Option<&'a str>,
    scopes: &'a str,
    expires_at: u64,
}

/// A number for each token issued, larger for a later one, also across restarts (it starts from
/// the clock in nanoseconds): the bounds end the oldest first, and many tokens share a second.
fn issue_seq() -> i64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static LAST: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    let prev = LAST.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| Some(p.max(nanos) + 1)).unwrap_or(0);
    (prev.max(nanos) + 1).min(i64::MAX as u64) as i64
}

fn insert_token(tx: &Transaction, t: NewToken) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO tokens (hash, kind, user_id, grant_id, family, scopes, expires_at, seq)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
    )?
    .execute(params![
        t.hash.as_slice(),
        t.kind,
        t.user.to_string(),
        t.grant.map(|g| g.to_string()),
        t.family,
        t.scopes,
        t.expires_at as i64,
        issue_seq()
    ])
    .map(drop)
}

/// Writes an access and a refresh token of `family`, then ends the grant's oldest families past
/// the bound. Returns the hashes of the tokens that ended.
fn issue_family(
    tx: &Transaction,
    user: UserId,
    grant: GrantId,
    family: &str,
    scopes: &ScopeSet,
    plan: &FamilyPlan,
) -> rusqlite::Result<Vec<Hash>> {
    let text = scopes.to_string();
    for (kind, (hash, expires_at)) in [("access", &plan.access), ("refresh", &plan.refresh)] {
        let row = NewToken {
            hash,
            kind,
            user,
            grant: Some(grant),
            family: Some(family),
            scopes: &text,
            expires_at: *expires_at,
        };
        insert_token(tx, row)?;
    }
    let mut stmt = tx.prepare_cached(
        "SELECT family FROM tokens WHERE grant_id = ?1 AND kind = 'refresh' AND spent = 0 GROUP BY family
         ORDER BY family = ?2 DESC, max(seq) DESC LIMIT -1 OFFSET ?3",
    )?;
    let old: Vec<String> = stmt
        .query_map(params![grant.to_string(), family, plan.max_families.max(1) as i64], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut removed = Vec::new();
    for f in old {
        removed.extend(end_family_in(tx, &f)?);
    }
    Ok(removed)
}

/// Deletes every token of `family`; returns their hashes.
fn end_family_in(tx: &Transaction, family: &str) -> rusqlite::Result<Vec<Hash>> {
    let removed = hashes(tx, "SELECT hash FROM tokens WHERE family = ?1", [family])?;
    tx.execute("DELETE FROM tokens WHERE family = ?1", [family])?;
    Ok(removed)
}

/// The end of presenting a code or refresh token, in its transaction: a refusal writes nothing,
/// a revocation ends `family` (the credential's own; the grant when it has none); an issue needs
/// the grant active, then `spend` marks the credential spent (`None`: it already was) and says
/// which tokens that removed, then the new pair of `family` is written.
fn honour<E>(
    tx: Transaction,
    verdict: Verdict<E>,
    (user, grant): (UserId, GrantId),
    family: &str,
    plan: &FamilyPlan,
    now: u64,
    spend: impl FnOnce(&Transaction) -> rusqlite::Result<Option<Vec<Hash>>>,
) -> Result<Redeemed<E>> {
    let scopes = match verdict {
        Verdict::Issue(scopes) => scopes,
        Verdict::Refuse(reason) => return Ok(Redeemed::Refused(reason)),
        Verdict::Revoke(reason) => {
            let ended = if family.is_empty() {
                revoke_in(&tx, user, grant, now).map_err(db_err)?;
                Ended::Grant
            } else {
                Ended::Family { family: family.to_owned(), removed: end_family_in(&tx, family).map_err(db_err)? }
            };
            tx.commit().map_err(db_err)?;
            return Ok(Redeemed::Revoked { grant, ended, reason });
        }
    };
    let Some((user, instance, app, app_name, grant_ends)) = active_grant(&tx, grant, now).map_err(db_err)? else {
        return Ok(Redeemed::GrantEnded);
    };
    let Some(mut removed) = spend(&tx).map_err(db_err)? else { return Ok(Redeemed::Unknown) };
    // No token outlives its grant: both end at its expiry at the latest.
    let plan = plan.ending_by(grant_ends);
    removed.extend(issue_family(&tx, user, grant, family, &scopes, &plan).map_err(db_err)?);
    tx.commit().map_err(db_err)?;
    let (access_expires_at, family) = (plan.access.1, family.to_owned());
    Ok(Redeemed::Issued(Issued { user, instance, grant, app, app_name, scopes, family, removed, access_expires_at }))
}

impl Registry {
    /// Honours a code, in one transaction: `decide` sees it first; a code is spent only when it
    /// answers `Issue`, and only while the grant is active.
    pub fn redeem_code<E>(
        &self,
        hash: &Hash,
        decide: impl FnOnce(&CodeRow) -> Verdict<E>,
        plan: &FamilyPlan,
        now: u64,
    ) -> Result<Redeemed<E>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let row = tx
            .query_row(
                "SELECT app_id, user_id, grant_id, redirect_uri, code_challenge, scopes, expires_at, spent, family
                 FROM codes WHERE hash = ?1",
                [hash.as_slice()],
                |r| {
                    Ok(CodeRow {
                        app_id: parse(r.get(0)?)?,
                        user_id: parse(r.get(1)?)?,
                        grant_id: parse(r.get(2)?)?,
                        redirect_uri: r.get(3)?,
                        code_challenge: r.get(4)?,
                        scopes: scopes(r.get(5)?),
                        expires_at: r.get::<_, i64>(6)? as u64,
                        spent: r.get(7)?,
                        family: r.get(8)?,
                    })
                },
            )
            .optional()
            .map_err(db_err)?;
        let Some(code) = row else { return Ok(Redeemed::Unknown) };
        let verdict = decide(&code);
        // A replay ends the family this code's exchange started; an exchange starts the plan's.
        let family = match verdict {
            Verdict::Revoke(_) => code.family.clone().unwrap_or_default(),
            _ => plan.family.clone(),
        };
        let spend = |tx: &Transaction| {
            tx.execute("UPDATE codes SET spent = 1, family = ?2 WHERE hash = ?1", params![hash.as_slice(), &family])
                .map(|_| Some(Vec::new()))
        };
        honour(tx, verdict, (code.user_id, code.grant_id), &family, plan, now, spend)
    }

    /// A refresh token's row, spent or not.
    pub fn refresh_row(&self, hash: &Hash) -> Result<Option<RefreshRow>> {
        let conn = self.conn.lock();
        Self::refresh_in(&conn, hash)
    }

    fn refresh_in(conn: &rusqlite::Connection, hash: &Hash) -> Result<Option<RefreshRow>> {
        conn.prepare_cached(
            "SELECT t.user_id, t.grant_id, g.app_id, t.family, t.scopes, t.expires_at, t.spent
             FROM tokens t JOIN grants g ON g.id = t.grant_id WHERE t.hash = ?1 AND t.kind = 'refresh'",
        )
        .and_then(|mut s| {
            s.query_row([hash.as_slice()], |r| {
                Ok(RefreshRow {
                    user_id: parse(r.get(0)?)?,
                    grant_id: parse(r.get(1)?)?,
                    app_id: parse(r.get(2)?)?,
                    family: r.get::<_, Option<String>>(3)?.unwrap_or_default(),
                    scopes: scopes(r.get(4)?),
                    expires_at: r.get::<_, i64>(5)? as u64,
                    spent: r.get(6)?,
                })
            })
            .optional()
        })
        .map_err(db_err)
    }

    /// Rotates a refresh token, in one transaction: `decide` sees it first; on `Issue` it is
    /// spent, its family's access token is superseded, and a new pair is written, while the
    /// grant is active. The family remembers its `spent_kept` newest spent tokens.
    pub fn rotate_refresh<E>(
        &self,
        hash: &Hash,
        decide: impl FnOnce(&RefreshRow) -> Verdict<E>,
        plan: &FamilyPlan,
        now: u64,
    ) -> Result<Redeemed<E>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let Some(token) = Self::refresh_in(&tx, hash)? else { return Ok(Redeemed::Unknown) };
        let verdict = decide(&token);
        let family = token.family.as_str();
        let spend = |tx: &Transaction| {
            if tx.execute("UPDATE tokens SET spent = 1 WHERE hash = ?1 AND spent = 0", [hash.as_slice()])? != 1 {
                return Ok(None);
            }
            let mut removed = hashes(tx, "SELECT hash FROM tokens WHERE family = ?1 AND kind = 'access'", [family])?;
            removed.extend(hashes(
                tx,
                "SELECT hash FROM tokens WHERE family = ?1 AND kind = 'refresh' AND spent = 1
                 ORDER BY seq DESC LIMIT -1 OFFSET ?2",
                params![family, plan.spent_kept.max(1) as i64],
            )?);
            delete_hashes(tx, &removed)?;
            Ok(Some(removed))
        };
        honour(tx, verdict, (token.user_id, token.grant_id), family, plan, now, spend)
    }

    /// Ends a token family (an app signed out on one device): every token of it, by hash.
    pub fn end_family(&self, family: &str) -> Result<Vec<Hash>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let removed = end_family_in(&tx, family).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(removed)
    }

    /// Inserts an owner session (or web session) of `kind`, only if the user's credential epoch
    /// is still `epoch` and the account is not deleted, then ends the user's oldest sessions of
    /// that kind past `max`. `None` when the epoch moved on; otherwise the hashes that ended.
    pub fn insert_session(
        &self,
        user: UserId,
        epoch: u64,
        kind: &str,
        token: (Hash, u64),
        max: usize,
    ) -> Result<Option<Vec<Hash>>> {
        let mut conn = self.conn.lock();
        let tx = conn.transaction().map_err(db_err)?;
        let current: Option<(i64, String)> = tx
            .query_row(
                "SELECT u.credential_epoch, i.state FROM users u JOIN instances i ON i.user_id = u.id WHERE u.id = ?1",
                [user.to_string()],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(db_err)?;
        if !current.is_some_and(|(e, state)| e as u64 == epoch && state != DELETED) {
            return Ok(None);
        }
        let row = NewToken { hash: &token.0, kind, user, grant: None, family: None, scopes: "", expires_at: token.1 };
        insert_token(&tx, row).map_err(db_err)?;
        let removed = hashes(
            &tx,
            "SELECT hash FROM tokens WHERE user_id = ?1 AND kind = ?2
             ORDER BY hash = ?3 DESC, seq DESC LIMIT -1 OFFSET ?4",
            params![user.to_string(), kind, token.0.as_slice(), max.max(1) as i64],
        )
        .map_err(db_err)?;
        delete_hashes(&tx, &removed).map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        Ok(Some(removed))
    }

    pub fn delete_token(&self, hash: &Hash) -> Result<()> {
        self.conn.lock().execute("DELETE FROM tokens WHERE hash = ?1", [hash.as_slice()]).map(drop).map_err(db_err)
    }

    /// Deletes expired tokens and codes.
    pub fn sweep(&self, now: u64) -> Result<()> {
        let conn = self.conn.lock();
        conn.execute("DELETE FROM tokens WHERE expires_at <= ?1", [now as i64]).map_err(db_err)?;
        conn.execute("DELETE FROM codes WHERE expires_at <= ?1", [now as i64]).map_err(db_err)?;
        Ok(())
    }

    /// Every API credential still valid at `now`, of a live account and (for app tokens) an active
    /// grant, for the in-memory table; expired tokens and codes are deleted first.
    pub fn live_tokens(&self, now: u64) -> Result<Vec<TokenRow>> {
        self.sweep(now)?;
        let conn = self.conn.lock();
        let mut stmt = conn
            .prepare(
                "SELECT t.hash, t.kind, t.user_id, i.id, t.grant_id, g.app_id, a.name, t.scopes, t.expires_at,
                        u.credential_epoch, t.family
                 FROM tokens t JOIN users u ON u.id = t.user_id JOIN instances i ON i.user_id = u.id
                 LEFT JOIN grants g ON g.id = t.grant_id LEFT JOIN apps a ON a.id = g.app_id
                 WHERE t.kind != 'refresh' AND i.state != ?1
                   AND (t.grant_id IS NULL OR (g.revoked_at IS NULL AND a.deleted_at IS NULL))",
            )
            .map_err(db_err)?;
        let rows = stmt
            .query_map([DELETED], |r| {
                let hash: Vec<u8> = r.get(0)?;
                let grant = match r.get::<_, Option<String>>(4)? {
                    Some(g) => Some((parse(g)?, parse(r.get(5)?)?, r.get(6)?)),
                    None => None,
                };
                Ok(TokenRow {
                    hash: hash.try_into().unwrap_or([0; 32]),
                    kind: r.get(1)?,
                    user_id: parse(r.get(2)?)?,
                    instance_id: parse(r.get(3)?)?,
                    grant,
                    scopes: r.get(7)?,
                    expires_at: r.get::<_, i64>(8)? as u64,
                    credential_epoch: r.get::<_, i64>(9)? as u64,
                    family: r.get(10)?,
                })
            })
            .map_err(db_err)?;
        rows.collect::<rusqlite::Result<_>>().map_err(db_err)
    }
}

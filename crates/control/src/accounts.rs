//! Sign-up (which provisions the instance), log-in, sessions and token checks.

use crate::keys::{random_salt, PasswordKeys};
use crate::recovery::RecoveryCode;
use crate::registry::{TokenRow, UserRow, DELETED};
use crate::tokens::{hash_token, new_token, GrantRef, TokenInfo, TokenKind};
use crate::Control;
use selfcloud_core::{Error, InstanceId, Result, ScopeSet, UserId};
use std::collections::hash_map::Entry;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use zeroize::Zeroizing;

/// A new account and its ready instance.
#[derive(Clone, Debug)]
pub struct Account {
    pub user_id: UserId,
    pub username: String,
    pub instance_id: InstanceId,
    pub instance_state: String,
    /// Shown to the user once, at sign-up; only a key derived from it is kept.
    pub recovery_code: String,
}

/// What `/v1/me` shows of the account itself.
#[derive(Clone, Debug)]
pub struct Profile {
    pub user_id: UserId,
    pub username: String,
    pub instance_id: InstanceId,
    pub instance_state: String,
    pub tier: String,
    pub created_at: u64,
}

pub const MIN_PASSWORD: usize = 8;
pub const MAX_PASSWORD: usize = 1024;

/// Usernames: 3 to 32 of `[a-z0-9_.-]`, starting with a letter or digit.
pub fn validate_username(name: &str) -> Result<()> {
    let ok = (3..=32).contains(&name.len())
        && name.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-'))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(Error::invalid("username must be 3 to 32 of [a-z0-9_.-], starting with a letter or digit"))
    }
}

pub(crate) fn validate_password(password: &str) -> Result<()> {
    if (MIN_PASSWORD..=MAX_PASSWORD).contains(&password.len()) {
        Ok(())
    } else {
        Err(Error::invalid(format!("password must be {MIN_PASSWORD} to {MAX_PASSWORD} bytes")))
    }
}

impl Control {
    /// Creates the account and provisions its instance before returning: directory, data key and
    /// store, then the key file, then the registry row, in that order, so a crash part-way leaves
    /// at worst an unreferenced directory and never a user without an instance.
    ///
    /// One thread, one step after another: run beside the KDF, creating the store made the
    /// memory-hard KDF slower by more than it saved (measured on 2 vCPUs).
    pub async fn sign_up(self: &Arc<Self>, username: &str, password: &str, now: u64) -> Result<Account> {
        validate_username(username)?;
        validate_password(password)?;
        let (this, username, password) = (self.clone(), username.to_owned(), Zeroizing::new(password.to_owned()));
        tokio::task::spawn_blocking(move || {
            // Checked first so a taken name costs no KDF; the UNIQUE constraint settles races.
            if this.registry.username_taken(&username)? {
                return Err(Error::conflict("username is taken"));
            }
            let salt = random_salt();
            let keys = PasswordKeys::derive(&password, &salt, this.config.kdf)?;
            let recovery_code = RecoveryCode::generate();
            let user = UserRow {
                id: UserId::random(),
                username,
                kdf: this.config.kdf,
                salt: salt.to_vec(),
                verifier_hash: keys.verifier_hash().to_vec(),
                instance_id: InstanceId::random(),
                tier: "free".into(),
                state: "ready".into(),
                created_at: now,
            };
            let id = user.instance_id;
            let provisioned = (|| -> Result<()> {
                let (data_key, instance) = this.create_instance(id)?;
                this.write_key_file(id, &data_key, &keys, &salt, &recovery_code)?;
                this.registry.insert_user(&user)?;
                this.open.lock().put(id, instance);
                Ok(())
            })();
            if let Err(e) = provisioned {
                this.discard_dir(id);
                return Err(e);
            }
            this.provisioned.fetch_add(1, Ordering::Relaxed);
            tracing::info!(user = %user.id, instance = %id, "instance provisioned");
            Ok(Account {
                user_id: user.id,
                username: user.username,
                instance_id: id,
                instance_state: user.state,
                recovery_code: recovery_code.display(),
            })
        })
        .await
        .map_err(Error::internal)?
    }

    /// Checks a password. Unknown users cost the same KDF as known ones, so timing does not tell
    /// which usernames exist; both answer the same `unauthenticated`.
    pub async fn log_in(self: &Arc<Self>, username: &str, password: &str) -> Result<UserRow> {
        let (this, username, password) = (self.clone(), username.to_owned(), password.to_owned());
        tokio::task::spawn_blocking(move || {
            let user = this.registry.user_by_name(&username)?;
            let (salt, kdf) = match &user {
                Some(u) => (u.salt.clone(), u.kdf),
                None => (vec![0u8; 16], this.config.kdf),
            };
            let keys = PasswordKeys::derive(&password, &salt, kdf)?;
            match user {
                Some(u) if u.state != DELETED && keys.verifies(&u.verifier_hash) => Ok(u),
                _ => Err(Error::unauthenticated("wrong username or password")),
            }
        })
        .await
        .map_err(Error::internal)?
    }

    pub async fn profile(&self, user: UserId) -> Result<Profile> {
        let u = self.blocking(move |r| r.user_by_id(user)).await?.ok_or_else(|| Error::not_found("no such user"))?;
        Ok(Profile {
            user_id: u.id,
            username: u.username,
            instance_id: u.instance_id,
            instance_state: u.state,
            tier: u.tier,
            created_at: u.created_at,
        })
    }

    /// Issues a token, persisting it before it is handed out. Returns the token and its expiry.
    pub(crate) fn issue_token(
        &self,
        kind: TokenKind,
        user_id: UserId,
        instance_id: InstanceId,
        grant: Option<GrantRef>,
        scopes: ScopeSet,
        now: u64,
    ) -> Result<(String, u64)> {
        let ttl = match kind {
            TokenKind::Session => self.config.ttls.session,
            TokenKind::Access => self.config.ttls.access,
            TokenKind::Refresh => self.config.ttls.refresh,
        };
        let expires_at = now + ttl.as_secs();
        let token = new_token(kind);
        let hash = hash_token(&token);
        self.registry.insert_token(&TokenRow {
            hash,
            kind: kind.as_str().into(),
            user_id,
            grant_id: grant.as_ref().map(|g| g.grant_id),
            scopes: scopes.to_string(),
            expires_at,
            spent: false,
        })?;
        let info = TokenInfo { kind, user_id, instance_id, grant, scopes, expires_at, spent: AtomicBool::new(false) };
        self.tokens.insert(hash, info);
        Ok((token, expires_at))
    }

    /// Starts an owner session for a user who just proved their password.
    pub async fn create_session(self: &Arc<Self>, user: &UserRow, now: u64) -> Result<(String, u64)> {
        let (this, id, instance) = (self.clone(), user.id, user.instance_id);
        tokio::task::spawn_blocking(move || {
            this.issue_token(TokenKind::Session, id, instance, None, ScopeSet::default(), now)
        })
        .await
        .map_err(Error::internal)?
    }

    /// The live token behind a bearer string, or `None` if it is unknown, expired or spent.
    /// Memory only: this is on every request's path.
    pub fn authenticate(&self, token: &str, now: u64) -> Option<Arc<TokenInfo>> {
        let info = self.tokens.get(&hash_token(token))?;
        (info.expires_at > now && !info.is_spent()).then_some(info)
    }

    /// Ends a session or revokes an app token (RFC 7009: unknown tokens are not an error).
    pub async fn revoke_token(&self, token: &str) -> Result<()> {
        self.revoke_token_by_hash(hash_token(token)).await
    }

    pub async fn revoke_token_by_hash(&self, hash: crate::tokens::TokenHash) -> Result<()> {
        self.tokens.remove(&hash);
        self.blocking(move |r| r.delete_token(&hash)).await
    }

    pub(crate) fn load_tokens(&self, now: u64) -> Result<()> {
        let mut grants = std::collections::HashMap::new();
        for row in self.registry.live_tokens(now)? {
            let Some(kind) = TokenKind::parse(&row.kind) else {
                continue;
            };
            let Some(user) = self.registry.user_by_id(row.user_id)?.filter(|u| u.state != DELETED) else {
                continue;
            };
            let grant = match row.grant_id {
                None => None,
                Some(gid) => {
                    let grant = match grants.entry(gid) {
                        Entry::Occupied(e) => e.into_mut(),
                        Entry::Vacant(e) => {
                            let g = self.registry.active_grants_of(user.id)?.into_iter().find(|g| g.id == gid);
                            e.insert(g.map(|g| GrantRef { grant_id: g.id, client_id: g.app_id, app_name: g.app_name }))
                        }
                    };
                    match grant.clone() {
                        Some(g) => Some(g),
                        None => continue, // the grant was revoked: its tokens are dead
                    }
                }
            };
            let scopes = ScopeSet::parse(&row.scopes).unwrap_or_default();
            let info = TokenInfo {
                kind,
                user_id: user.id,
                instance_id: user.instance_id,
                grant,
                scopes,
                expires_at: row.expires_at,
                spent: AtomicBool::new(row.spent),
            };
            self.tokens.insert(row.hash, info);
        }
        Ok(())
    }

    /// Drops expired tokens from memory (the registry drops them at the next start).
    pub fn sweep_tokens(&self, now: u64) {
        self.tokens.remove_expired(now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usernames_follow_the_rule() {
        for ok in ["ada", "ada.lovelace", "user_1", "0xdead", &"a".repeat(32)] {
            assert!(validate_username(ok).is_ok(), "{ok}");
        }
        for bad in ["ab", "Ada", "-ada", ".ada", "ada/../x", "ada\0", "ad a", &"a".repeat(33)] {
            assert!(validate_username(bad).is_err(), "{bad:?}");
        }
    }
}

//! Sign-up (which provisions the instance), log-in, sessions and token checks.

use crate::keys::{random_salt, PasswordKeys};
use crate::recovery::RecoveryCode;
use crate::registry::{UserRow, DELETED};
use crate::tokens::{hash_token, new_token, GrantRef, TokenInfo, TokenKind};
use crate::Control;
use selfcloud_core::{Error, InstanceId, Result, ScopeSet, UserId};
use std::sync::atomic::Ordering;
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

/// A log-in checked a password that changed (or an account deleted) before its session began.
fn credentials_changed() -> Error {
    Error::unauthenticated("the account's password changed; log in again")
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
        let slot = self.kdf_slot().await?;
        let (this, username, password) = (self.clone(), username.to_owned(), Zeroizing::new(password.to_owned()));
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
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
                credential_epoch: 0,
            };
            let id = user.instance_id;
            let provisioned = (|| -> Result<()> {
                let data_key = this.create_instance(id)?;
                this.write_key_file(id, &data_key, &keys, &salt, &recovery_code)?;
                this.registry.insert_user(&user)?;
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
        let slot = self.kdf_slot().await?;
        let (this, username, password) = (self.clone(), username.to_owned(), Zeroizing::new(password.to_owned()));
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            // The verifier and the credential epoch are read together: the session this log-in
            // may start is bound to that epoch.
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

    /// Starts an owner session of `kind` (an API session or the browser's web session) for a
    /// user whose password was just checked under `user.credential_epoch`. The registry inserts
    /// it only if that epoch is still current, so a log-in that raced a password change fails
    /// instead of outliving it. Returns the token and its expiry.
    pub(crate) fn start_session(&self, kind: TokenKind, user: &UserRow, now: u64) -> Result<(String, u64)> {
        let ttl = match kind {
            TokenKind::Web => self.config.ttls.web_session,
            _ => self.config.ttls.session,
        };
        let expires_at = now + ttl.as_secs();
        let token = new_token(kind);
        let hash = hash_token(&token);
        let max = self.config.limits.sessions_per_user;
        let removed = self
            .registry
            .insert_session(user.id, user.credential_epoch, kind.as_str(), (hash, expires_at), max)?
            .ok_or_else(credentials_changed)?;
        self.tokens.remove(&removed);
        let info = TokenInfo::new(
            kind,
            user.id,
            user.instance_id,
            None,
            ScopeSet::default(),
            expires_at,
            user.credential_epoch,
        );
        if !self.tokens.insert(hash, info) {
            return Err(credentials_changed());
        }
        Ok((token, expires_at))
    }

    /// Starts a session of `kind` for a user who just proved their password: the owner's API
    /// session (`Session`), or the browser's short-lived web session for the consent pages
    /// (`Web`), never an API credential.
    /// A session for `user` right after this process verified them (a sign-up, a recovery, a
    /// password change) without a second password derivation. Callers must have just verified
    /// the person: no request reaches this on its own.
    pub async fn start_session_for(self: &Arc<Self>, user: UserId, kind: TokenKind, now: u64) -> Result<(String, u64)> {
        let u = self.blocking(move |r| r.user_by_id(user)).await?.ok_or_else(|| Error::not_found("no such user"))?;
        self.create_session(&u, kind, now).await
    }

    pub async fn create_session(self: &Arc<Self>, user: &UserRow, kind: TokenKind, now: u64) -> Result<(String, u64)> {
        if !matches!(kind, TokenKind::Session | TokenKind::Web) {
            return Err(Error::internal("only owner and web sessions start from a log-in"));
        }
        let (this, user) = (self.clone(), user.clone());
        tokio::task::spawn_blocking(move || this.start_session(kind, &user, now)).await.map_err(Error::internal)?
    }

    /// The live token behind a bearer string, or `None` if it is unknown or expired. Memory
    /// only: this is on every request's path.
    pub fn authenticate(&self, token: &str, now: u64) -> Option<Arc<TokenInfo>> {
        let info = self.tokens.get(&hash_token(token))?;
        (info.expires_at > now).then_some(info)
    }

    /// Ends a session or revokes an app token (RFC 7009: unknown tokens are not an error).
    pub async fn revoke_token(&self, token: &str) -> Result<()> {
        self.revoke_token_by_hash(hash_token(token)).await
    }

    pub async fn revoke_token_by_hash(&self, hash: crate::tokens::TokenHash) -> Result<()> {
        self.tokens.remove(&[hash]);
        self.blocking(move |r| r.delete_token(&hash)).await
    }

    pub(crate) fn load_tokens(&self, now: u64) -> Result<()> {
        for row in self.registry.live_tokens(now)? {
            let Some(kind) = TokenKind::parse(&row.kind) else {
                continue;
            };
            let grant = row.grant.map(|(grant_id, client_id, app_name)| GrantRef { grant_id, client_id, app_name });
            let scopes = ScopeSet::parse(&row.scopes).unwrap_or_default();
            let info =
                TokenInfo::new(kind, row.user_id, row.instance_id, grant, scopes, row.expires_at, row.credential_epoch)
                    .in_family(row.family);
            self.tokens.insert(row.hash, info);
        }
        Ok(())
    }

    /// Drops expired tokens and codes, from memory and from the registry.
    pub async fn sweep_tokens(&self, now: u64) -> Result<()> {
        self.tokens.sweep(now);
        self.blocking(move |r| r.sweep(now)).await
    }

    /// Waits for one of the bounded KDF slots: each Argon2id derivation holds its memory cost
    /// (19 MiB by default) while it runs, so concurrent log-ins from many addresses must queue
    /// rather than add up. Past the configured wait the caller is told to come back.
    pub(crate) async fn kdf_slot(&self) -> Result<tokio::sync::OwnedSemaphorePermit> {
        match tokio::time::timeout(self.config.kdf_wait, self.kdf_slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => Ok(permit),
            Ok(Err(_)) => Err(Error::internal("the KDF slots are closed")),
            Err(_) => Err(Error {
                retry_after: Some(std::time::Duration::from_secs(1)),
                ..Error::new(selfcloud_core::ErrorCode::Unavailable, "too many password checks at once; try again")
            }),
        }
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

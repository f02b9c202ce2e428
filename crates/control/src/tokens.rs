//! Bearer tokens: opaque random strings, stored only as SHA-256 hashes. Every live token is also
//! kept in memory, so checking one on the hot path is a hash and a map lookup; the registry is
//! written first, so a token the client holds always survives a restart.

use parking_lot::RwLock;
use rand::RngCore;
use selfcloud_core::{AppId, GrantId, InstanceId, ScopeSet, UserId};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// The owner's log-in session: every scope plus the owner-only APIs.
    Session,
    /// An app's access token: the grant's scopes.
    Access,
    /// An app's refresh token: exchanged (once) for a new access and refresh token.
    Refresh,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::Access => "access",
            TokenKind::Refresh => "refresh",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "session" => TokenKind::Session,
            "access" => TokenKind::Access,
            "refresh" => TokenKind::Refresh,
            _ => return None,
        })
    }
    /// Token strings carry their kind, so logs and leaks are easy to recognise.
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Session => "scs_",
            TokenKind::Access => "sca_",
            TokenKind::Refresh => "scr_",
        }
    }
}

/// The app and grant behind an app token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GrantRef {
    pub grant_id: GrantId,
    pub client_id: AppId,
    pub app_name: String,
}

#[derive(Debug)]
pub struct TokenInfo {
    pub kind: TokenKind,
    pub user_id: UserId,
    pub instance_id: InstanceId,
    pub grant: Option<GrantRef>,
    pub scopes: ScopeSet,
    /// Unix seconds.
    pub expires_at: u64,
    /// Set when a refresh token has been exchanged; presenting it again is a replay.
    pub(crate) spent: AtomicBool,
}

impl TokenInfo {
    pub fn is_spent(&self) -> bool {
        self.spent.load(Ordering::Acquire)
    }
}

pub type TokenHash = [u8; 32];

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

pub(crate) fn new_token(kind: TokenKind) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes))
}

#[derive(Default)]
pub(crate) struct TokenTable {
    by_hash: RwLock<HashMap<TokenHash, Arc<TokenInfo>>>,
    /// Users deleted since start: a token issued for one by a request that raced the deletion
    /// is never admitted. Read and written under `by_hash`'s write lock.
    deleted_users: parking_lot::Mutex<std::collections::HashSet<UserId>>,
}

impl TokenTable {
    pub fn insert(&self, hash: TokenHash, info: TokenInfo) {
        let mut by_hash = self.by_hash.write();
        if !self.deleted_users.lock().contains(&info.user_id) {
            by_hash.insert(hash, Arc::new(info));
        }
    }

    /// Drops every owner session of `user` (their password changed); app tokens stay.
    pub fn remove_sessions_of(&self, user: UserId) {
        self.by_hash.write().retain(|_, t| !(t.user_id == user && t.kind == TokenKind::Session));
    }

    /// Drops every token of a deleted user and refuses any later one.
    pub fn remove_user(&self, user: UserId) {
        let mut by_hash = self.by_hash.write();
        self.deleted_users.lock().insert(user);
        by_hash.retain(|_, t| t.user_id != user);
    }

    pub fn get(&self, hash: &TokenHash) -> Option<Arc<TokenInfo>> {
        self.by_hash.read().get(hash).cloned()
    }

    pub fn remove(&self, hash: &TokenHash) {
        self.by_hash.write().remove(hash);
    }

    pub fn remove_grant(&self, grant: GrantId) {
        self.by_hash.write().retain(|_, t| t.grant.as_ref().is_none_or(|g| g.grant_id != grant));
    }

    pub fn remove_expired(&self, now: u64) {
        self.by_hash.write().retain(|_, t| t.expires_at > now);
    }

    pub fn mark_spent(&self, hash: &TokenHash) {
        if let Some(t) = self.get(hash) {
            t.spent.store(true, Ordering::Release);
        }
    }
}

//! Bearer tokens: opaque random strings, stored only as SHA-256 hashes. Every live API credential
//! is also kept in memory, so checking one on the hot path is a hash and a map lookup; the
//! registry is written first, so a token the client holds always survives a restart.
//!
//! The registry decides, in one transaction, whether a token may be issued (grant active,
//! credential epoch unchanged). The table in memory is written just after, so a revocation or a
//! password change can land between the two: it leaves a *fence* (a revoked grant, a deleted
//! user, a new epoch) that the late insert meets and obeys. Fences are kept for a while, then
//! forgotten: by then no insert decided before them can still be on its way.

use parking_lot::{Mutex, RwLock};
use rand::RngCore;
use selfcloud_core::{AppId, GrantId, InstanceId, ScopeSet, UserId};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    /// The owner's API session (a bearer token): every scope plus the owner-only APIs.
    Session,
    /// The browser's session cookie: the log-in and consent pages only, never an API credential.
    Web,
    /// An app's access token: the grant's scopes.
    Access,
    /// An app's refresh token: exchanged (once) for a new access and refresh token. Kept in the
    /// registry only; it is never an API credential.
    Refresh,
}

impl TokenKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::Web => "web",
            TokenKind::Access => "access",
            TokenKind::Refresh => "refresh",
        }
    }
    pub(crate) fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "session" => TokenKind::Session,
            "web" => TokenKind::Web,
            "access" => TokenKind::Access,
            "refresh" => TokenKind::Refresh,
            _ => return None,
        })
    }
    /// Token strings carry their kind, so logs and leaks are easy to recognise.
    fn prefix(self) -> &'static str {
        match self {
            TokenKind::Session => "scs_",
            TokenKind::Web => "scw_",
            TokenKind::Access => "sca_",
            TokenKind::Refresh => "scr_",
        }
    }
    fn is_owner_session(self) -> bool {
        matches!(self, TokenKind::Session | TokenKind::Web)
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
    /// The credential epoch an owner session was made under (0 for app tokens).
    pub(crate) epoch: u64,
    /// The sign-in (token family) an app token belongs to.
    pub(crate) family: Option<String>,
    /// Whose request budget a request with this token spends: the grant's for an app token (all
    /// of an app's tokens for a user share one), the user's for owner sessions.
    pub rate_key: [u8; 32],
}

impl TokenInfo {
    pub(crate) fn new(
        kind: TokenKind,
        user_id: UserId,
        instance_id: InstanceId,
        grant: Option<GrantRef>,
        scopes: ScopeSet,
        expires_at: u64,
        epoch: u64,
    ) -> Self {
        let rate_key = match &grant {
            Some(g) => rate_key(b"grant", g.grant_id.as_bytes()),
            None => rate_key(b"user", user_id.as_bytes()),
        };
        TokenInfo { kind, user_id, instance_id, grant, scopes, expires_at, epoch, family: None, rate_key }
    }

    pub(crate) fn in_family(self, family: Option<String>) -> Self {
        TokenInfo { family, ..self }
    }
}

fn rate_key(domain: &[u8], id: &[u8; 16]) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..domain.len()].copy_from_slice(domain);
    key[16..].copy_from_slice(id);
    key
}

pub type TokenHash = [u8; 32];

pub fn hash_token(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// A confidential client's secret: 32 random bytes, `sck_` and base64url (no character a Basic
/// header or a form would need to escape).
pub(crate) fn new_client_secret() -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("sck_{}", URL_SAFE_NO_PAD.encode(bytes))
}

pub(crate) fn new_token(kind: TokenKind) -> String {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let mut bytes = [0u8; 32];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("{}{}", kind.prefix(), URL_SAFE_NO_PAD.encode(bytes))
}

/// How long a fence is kept, in seconds: far longer than the moment between a registry commit
/// and the table insert that follows it.
const FENCE_SECS: u64 = 600;

#[derive(Default)]
struct Fences {
    deleted_users: HashMap<UserId, u64>,
    revoked_grants: HashMap<GrantId, u64>,
    /// Token families ended by a replay or a sign-out.
    ended_families: HashMap<String, u64>,
    /// The newest credential epoch of users whose password changed, and when.
    epochs: HashMap<UserId, (u64, u64)>,
}

impl Fences {
    fn admits(&self, info: &TokenInfo) -> bool {
        if self.deleted_users.contains_key(&info.user_id) {
            return false;
        }
        if info.grant.as_ref().is_some_and(|g| self.revoked_grants.contains_key(&g.grant_id)) {
            return false;
        }
        if info.family.as_ref().is_some_and(|f| self.ended_families.contains_key(f)) {
            return false;
        }
        !(info.kind.is_owner_session() && self.epochs.get(&info.user_id).is_some_and(|(e, _)| info.epoch < *e))
    }

    fn forget_before(&mut self, cutoff: u64) {
        self.deleted_users.retain(|_, at| *at >= cutoff);
        self.revoked_grants.retain(|_, at| *at >= cutoff);
        self.ended_families.retain(|_, at| *at >= cutoff);
        self.epochs.retain(|_, (_, at)| *at >= cutoff);
    }
}

#[derive(Default)]
pub(crate) struct TokenTable {
    by_hash: RwLock<HashMap<TokenHash, Arc<TokenInfo>>>,
    /// Read and written under `by_hash`'s write lock.
    fences: Mutex<Fences>,
}

impl TokenTable {
    /// Admits a token the registry has just stored, unless a fence refuses it. True if admitted.
    pub fn insert(&self, hash: TokenHash, info: TokenInfo) -> bool {
        let mut by_hash = self.by_hash.write();
        let admitted = self.fences.lock().admits(&info);
        if admitted {
            by_hash.insert(hash, Arc::new(info));
        }
        admitted
    }

    /// Drops every owner and web session of `user` older than `epoch` (their password changed).
    pub fn remove_sessions_of(&self, user: UserId, epoch: u64, now: u64) {
        let mut by_hash = self.by_hash.write();
        self.fences.lock().epochs.insert(user, (epoch, now));
        by_hash.retain(|_, t| !(t.user_id == user && t.kind.is_owner_session() && t.epoch < epoch));
    }

    /// Drops every token of a deleted user and refuses any later one.
    pub fn remove_user(&self, user: UserId, now: u64) {
        let mut by_hash = self.by_hash.write();
        self.fences.lock().deleted_users.insert(user, now);
        by_hash.retain(|_, t| t.user_id != user);
    }

    /// Drops every token of a revoked grant and refuses any later one.
    pub fn remove_grant(&self, grant: GrantId, now: u64) {
        let mut by_hash = self.by_hash.write();
        self.fences.lock().revoked_grants.insert(grant, now);
        by_hash.retain(|_, t| t.grant.as_ref().is_none_or(|g| g.grant_id != grant));
    }

    /// Drops the tokens of an ended family (`removed`, as the registry deleted them) and refuses
    /// any later one of it: a refresh of that family may have committed just before it ended.
    pub fn remove_family(&self, family: &str, removed: &[TokenHash], now: u64) {
        let mut by_hash = self.by_hash.write();
        self.fences.lock().ended_families.insert(family.to_owned(), now);
        for h in removed {
            by_hash.remove(h);
        }
    }

    pub fn get(&self, hash: &TokenHash) -> Option<Arc<TokenInfo>> {
        self.by_hash.read().get(hash).cloned()
    }

    pub fn remove(&self, hashes: &[TokenHash]) {
        if hashes.is_empty() {
            return;
        }
        let mut by_hash = self.by_hash.write();
        for h in hashes {
            by_hash.remove(h);
        }
    }

    /// Drops expired tokens and fences old enough to be forgotten.
    pub fn sweep(&self, now: u64) {
        let mut by_hash = self.by_hash.write();
        by_hash.retain(|_, t| t.expires_at > now);
        self.fences.lock().forget_before(now.saturating_sub(FENCE_SECS));
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_hash.read().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(kind: TokenKind, user: UserId, grant: Option<GrantId>, epoch: u64) -> TokenInfo {
        let grant = grant.map(|g| GrantRef { grant_id: g, client_id: AppId::random(), app_name: "a".into() });
        TokenInfo::new(kind, user, InstanceId::random(), grant, ScopeSet::default(), 10_000, epoch)
    }

    #[test]
    fn a_late_insert_meets_the_fence_of_a_revocation_that_overtook_it() {
        let table = TokenTable::default();
        let (user, grant) = (UserId::random(), GrantId::random());
        table.remove_grant(grant, 100);
        assert!(!table.insert([1; 32], info(TokenKind::Access, user, Some(grant), 0)));
        assert!(table.get(&[1; 32]).is_none());
        // Another grant of the same user is not fenced.
        assert!(table.insert([2; 32], info(TokenKind::Access, user, Some(GrantId::random()), 0)));
    }

    #[test]
    fn an_ended_family_refuses_a_late_insert_and_its_grant_keeps_the_others() {
        let table = TokenTable::default();
        let (user, grant) = (UserId::random(), GrantId::random());
        let token = |family: &str| info(TokenKind::Access, user, Some(grant), 0).in_family(Some(family.into()));
        assert!(table.insert([1; 32], token("a")));
        assert!(table.insert([2; 32], token("b")));
        table.remove_family("a", &[[1; 32]], 100);
        assert!(table.get(&[1; 32]).is_none());
        assert!(!table.insert([3; 32], token("a")), "a refresh of the ended family, landing late");
        assert!(table.get(&[2; 32]).is_some() && table.insert([4; 32], token("b")), "another sign-in of the grant");
        table.sweep(100 + FENCE_SECS + 1);
        assert!(table.insert([3; 32], token("a")), "the fence is forgotten");
    }

    #[test]
    fn sessions_of_an_old_epoch_are_dropped_and_refused() {
        let table = TokenTable::default();
        let user = UserId::random();
        assert!(table.insert([1; 32], info(TokenKind::Session, user, None, 0)));
        assert!(table.insert([2; 32], info(TokenKind::Web, user, None, 0)));
        assert!(table.insert([3; 32], info(TokenKind::Access, user, Some(GrantId::random()), 0)));
        table.remove_sessions_of(user, 1, 100);
        assert!(table.get(&[1; 32]).is_none() && table.get(&[2; 32]).is_none());
        assert!(table.get(&[3; 32]).is_some(), "app tokens survive a password change");
        assert!(!table.insert([4; 32], info(TokenKind::Session, user, None, 0)), "a log-in under the old epoch");
        assert!(table.insert([5; 32], info(TokenKind::Session, user, None, 1)));
    }

    #[test]
    fn fences_are_forgotten_after_a_while_and_tokens_expire() {
        let table = TokenTable::default();
        let (user, grant) = (UserId::random(), GrantId::random());
        table.remove_user(user, 100);
        assert!(!table.insert([1; 32], info(TokenKind::Session, user, None, 0)));
        table.sweep(100 + FENCE_SECS + 1);
        assert!(table.insert([1; 32], info(TokenKind::Session, user, None, 0)));
        table.remove_grant(grant, 100);
        table.sweep(10_000);
        assert_eq!(table.len(), 0, "expired at 10,000");
    }

    #[test]
    fn rate_keys_are_per_grant_for_apps_and_per_user_for_sessions() {
        let (user, grant) = (UserId::random(), GrantId::random());
        let a = info(TokenKind::Access, user, Some(grant), 0);
        let b = info(TokenKind::Access, user, Some(grant), 0);
        let s1 = info(TokenKind::Session, user, None, 0);
        let s2 = info(TokenKind::Session, user, None, 0);
        assert_eq!(a.rate_key, b.rate_key);
        assert_eq!(s1.rate_key, s2.rate_key);
        assert_ne!(a.rate_key, s1.rate_key);
    }
}

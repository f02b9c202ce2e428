//! Apps, grants, authorization codes and app tokens: what the OAuth server (in the gateway) keeps.
//! The protocol's decisions (PKCE, redirect matching, replay handling) are the gateway's: it hands
//! them in as a function, which runs inside the registry transaction that spends the code or
//! refresh token, so a check and the write it allows are one step.

use crate::registry::{AppRow, Ended, FamilyPlan, GrantRow, GrantTerms, Issued, NewCodeRow, Redeemed, Registry};
use crate::tokens::{hash_token, new_token, GrantRef, TokenInfo, TokenKind};
use crate::Control;
use selfcloud_core::{AppId, Error, GrantId, InstanceId, Result, ScopeSet, UserId};
use std::sync::Arc;

pub use crate::registry::{CodeRow as CodeGrant, RefreshRow as RefreshGrant, Verdict};

#[derive(Clone, Debug)]
pub struct NewApp {
    /// Chosen before registering: the app's scopes may name its own namespace, derived from it.
    pub id: AppId,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: ScopeSet,
    /// A confidential client (a server-side app): it gets a secret to authenticate with at the
    /// token endpoint (`client_secret_basic`), besides PKCE.
    pub confidential: bool,
}

#[derive(Clone, Debug)]
pub struct App {
    pub client_id: AppId,
    pub owner_id: UserId,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: ScopeSet,
    pub created_at: u64,
    /// SHA-256 of its client secret, when it is a confidential client.
    pub secret_hash: Option<[u8; 32]>,
}

impl From<AppRow> for App {
    fn from(a: AppRow) -> Self {
        App {
            client_id: a.id,
            owner_id: a.owner_id,
            name: a.name,
            redirect_uris: a.redirect_uris,
            scopes: a.scopes,
            created_at: a.created_at,
            secret_hash: a.secret_hash,
        }
    }
}

/// A user's grant to one app: one per (user, app), holding every scope the user has allowed it.
#[derive(Clone, Debug)]
pub struct Grant {
    pub id: GrantId,
    pub client_id: AppId,
    pub app_name: String,
    pub scopes: ScopeSet,
    pub created_at: u64,
    /// LLM tokens a day the user allows the app (the tier's ceiling applies above it).
    pub token_budget: Option<u64>,
    /// When it ends by itself; `None`: when the user revokes it.
    pub expires_at: Option<u64>,
}

impl From<GrantRow> for Grant {
    fn from(g: GrantRow) -> Self {
        Grant {
            id: g.id,
            client_id: g.app_id,
            app_name: g.app_name,
            scopes: g.scopes,
            created_at: g.created_at,
            token_budget: g.token_budget,
            expires_at: g.expires_at,
        }
    }
}

/// What the user consented to on one authorization request.
#[derive(Clone, Debug)]
pub struct Consent {
    pub scopes: ScopeSet,
    pub redirect_uri: String,
    pub code_challenge: String,
    /// LLM tokens a day the user set on the consent page; `None` keeps the grant's (or none).
    pub token_budget: Option<u64>,
    /// When the grant ends by itself (Unix seconds), as the user chose on the consent page;
    /// `None`: when they revoke it.
    pub expires_at: Option<u64>,
}

/// What came of presenting a code or refresh token.
pub enum TokenOutcome<E> {
    /// No such code or refresh token (or its grant is gone).
    Unknown,
    Refused(E),
    /// A replay: the sign-in (token family) it came from is ended.
    Revoked(E),
    /// The grant was revoked (or its account deleted) before the tokens could be issued.
    GrantEnded,
    Issued(AppTokens),
}

/// A new access token and its refresh token.
#[derive(Clone, Debug)]
pub struct AppTokens {
    pub access: String,
    pub refresh: String,
    /// The user's instance, and the grant the tokens act under.
    pub instance: InstanceId,
    pub grant: GrantRef,
    /// Of the access token, Unix seconds.
    pub expires_at: u64,
    pub scopes: ScopeSet,
}

impl Control {
    /// Registers an app; a confidential one's secret is answered this once (only its hash is kept).
    pub async fn register_app(&self, owner: UserId, app: NewApp, now: u64) -> Result<(App, Option<String>)> {
        let secret = app.confidential.then(crate::tokens::new_client_secret);
        let row = AppRow {
            id: app.id,
            owner_id: owner,
            name: app.name,
            redirect_uris: app.redirect_uris,
            scopes: app.scopes,
            created_at: now,
            secret_hash: secret.as_deref().map(hash_token),
        };
        let max = self.config.limits.apps_per_user;
        let app = self.blocking(move |r| r.insert_app(&row, max).map(|_| App::from(row))).await?;
        Ok((app, secret))
    }

    /// A live app (a deleted one is unknown).
    pub async fn app(&self, id: AppId) -> Result<Option<App>> {
        self.blocking(move |r| r.app(id).map(|a| a.map(App::from))).await
    }

    /// The apps `owner` registered.
    pub async fn apps(&self, owner: UserId) -> Result<Vec<App>> {
        let rows = self.blocking(move |r| r.apps_of(owner)).await?;
        Ok(rows.into_iter().map(App::from).collect())
    }

    /// Deletes one of `owner`'s apps: every user's grant to it is revoked, and with them every
    /// token the app holds. `not_found` if it is not theirs.
    pub async fn delete_app(&self, owner: UserId, app: AppId, now: u64) -> Result<()> {
        let revoked = self.blocking(move |r| r.delete_app(owner, app, now)).await?;
        let revoked = revoked.ok_or_else(|| Error::not_found("no such app"))?;
        for grant in revoked {
            self.tokens.remove_grant(grant, now);
        }
        tracing::info!(app = %app, "app deleted");
        Ok(())
    }

    /// The user allowed `app` what `consent` says: their one grant for the app gains those scopes
    /// (or is created), and a single-use code for exactly them is returned.
    pub async fn consent(&self, user: UserId, app: &App, consent: Consent, now: u64) -> Result<(Grant, String)> {
        let code = new_code();
        let (hash, app_id, expires_at) = (hash_token(&code), app.client_id, now + self.config.ttls.code.as_secs());
        let grant = self
            .blocking(move |r| {
                let row = NewCodeRow {
                    hash,
                    redirect_uri: &consent.redirect_uri,
                    code_challenge: &consent.code_challenge,
                    scopes: &consent.scopes,
                    expires_at,
                };
                let terms = GrantTerms { token_budget: consent.token_budget, expires_at: consent.expires_at };
                r.consent(user, app_id, &consent.scopes, terms, row, now)
            })
            .await?;
        Ok((grant.into(), code))
    }

    /// The user's active grants (not revoked, not run out at `now`), one per app.
    pub async fn grants(&self, user: UserId, now: u64) -> Result<Vec<Grant>> {
        let rows = self.blocking(move |r| r.active_grants_of(user, now)).await?;
        Ok(rows.into_iter().map(Grant::from).collect())
    }

    /// Revokes one of `user`'s grants and every token issued under it; the very next request
    /// with one of them fails. `not_found` if the grant is not theirs or already revoked.
    pub async fn revoke_grant(&self, user: UserId, grant: GrantId, now: u64) -> Result<()> {
        let revoked = self.blocking(move |r| r.revoke_grant(user, grant, now)).await?;
        if revoked {
            // Only once the grant is known to be this user's: never touch another's tokens.
            self.tokens.remove_grant(grant, now);
            Ok(())
        } else {
            Err(Error::not_found("no such grant"))
        }
    }

    /// Sets or clears the daily token budget of one of `user`'s grants; `not_found` if the grant
    /// is not theirs or not active.
    pub async fn set_token_budget(&self, user: UserId, grant: GrantId, budget: Option<u64>) -> Result<()> {
        if self.blocking(move |r| r.set_token_budget(user, grant, budget)).await? {
            Ok(())
        } else {
            Err(Error::not_found("no such grant"))
        }
    }

    /// The LLM tokens a day an app may spend through `grant` on `instance`.
    pub async fn token_budget(&self, grant: GrantId, instance: selfcloud_core::InstanceId) -> Result<u64> {
        let ceiling = self.config.limits.tier(self.tier_of(instance)).llm_app_tokens_per_day;
        let own = self.blocking(move |r| r.token_budget(grant)).await?;
        Ok(app_token_budget(own, ceiling))
    }

    /// The LLM tokens a day the owner's own calls may spend on `instance`: its tier's setting.
    pub fn owner_token_budget(&self, instance: selfcloud_core::InstanceId) -> u64 {
        self.config.limits.tier(self.tier_of(instance)).llm_owner_tokens_per_day
    }

    fn family_plan(&self, now: u64) -> (FamilyPlan, String, String) {
        let (access, refresh) = (new_token(TokenKind::Access), new_token(TokenKind::Refresh));
        let ttls = self.config.ttls;
        let plan = FamilyPlan {
            family: hex::encode(rand::random::<[u8; 16]>()),
            access: (hash_token(&access), now + ttls.access.as_secs()),
            refresh: (hash_token(&refresh), now + ttls.refresh.as_secs()),
            max_families: self.config.limits.app_sessions_per_grant,
            spent_kept: self.config.limits.spent_refresh_kept,
        };
        (plan, access, refresh)
    }

    /// Presents an authorization code. `decide` (the protocol) sees it inside the transaction
    /// that would spend it; the code is spent only when it answers `Issue` and the grant is active.
    pub async fn redeem_code<E: Send + 'static>(
        self: &Arc<Self>,
        code: &str,
        now: u64,
        decide: impl FnOnce(&CodeGrant) -> Verdict<E> + Send + 'static,
    ) -> Result<TokenOutcome<E>> {
        let hash = hash_token(code);
        self.present(now, move |r, plan| r.redeem_code(&hash, decide, plan, now)).await
    }

    /// Presents a refresh token. `decide` sees it inside the transaction that would rotate it; on
    /// `Issue` it is spent and its family's access token superseded by the new pair.
    pub async fn rotate_refresh<E: Send + 'static>(
        self: &Arc<Self>,
        token: &str,
        now: u64,
        decide: impl FnOnce(&RefreshGrant) -> Verdict<E> + Send + 'static,
    ) -> Result<TokenOutcome<E>> {
        let hash = hash_token(token);
        self.present(now, move |r, plan| r.rotate_refresh(&hash, decide, plan, now)).await
    }

    /// Runs a registry step that presents a code or refresh token, with a new pair ready to
    /// write, then brings memory in line with what it did.
    async fn present<E: Send + 'static>(
        &self,
        now: u64,
        step: impl FnOnce(&Registry, &FamilyPlan) -> Result<Redeemed<E>> + Send + 'static,
    ) -> Result<TokenOutcome<E>> {
        let (plan, access, refresh) = self.family_plan(now);
        let redeemed = self.blocking(move |r| step(r, &plan)).await?;
        Ok(match redeemed {
            Redeemed::Unknown => TokenOutcome::Unknown,
            Redeemed::GrantEnded => TokenOutcome::GrantEnded,
            Redeemed::Refused(reason) => TokenOutcome::Refused(reason),
            Redeemed::Revoked { grant, ended, reason } => {
                match ended {
                    Ended::Family { family, removed } => {
                        tracing::warn!(grant = %grant, "replayed credential: its sign-in's tokens are revoked");
                        self.tokens.remove_family(&family, &removed, now);
                    }
                    Ended::Grant => {
                        tracing::warn!(grant = %grant, "replayed credential of no family: the grant is revoked");
                        self.tokens.remove_grant(grant, now);
                    }
                }
                TokenOutcome::Revoked(reason)
            }
            Redeemed::Issued(Issued {
                user,
                instance,
                grant,
                app,
                app_name,
                scopes,
                family,
                removed,
                access_expires_at,
            }) => {
                let expires_at = access_expires_at;
                self.tokens.remove(&removed);
                let grant = GrantRef { grant_id: grant, client_id: app, app_name };
                let info = TokenInfo::new(
                    TokenKind::Access,
                    user,
                    instance,
                    Some(grant.clone()),
                    scopes.clone(),
                    expires_at,
                    0,
                )
                .in_family(Some(family));
                // A revocation that committed after this issue has fenced the grant: the token is
                // refused here, and the refresh token was deleted with the grant.
                self.tokens.insert(hash_token(&access), info);
                TokenOutcome::Issued(AppTokens { access, refresh, instance, grant, expires_at, scopes })
            }
        })
    }

    /// The app a live access or refresh token was issued to.
    pub async fn app_of_token(&self, token: &str, now: u64) -> Result<Option<AppId>> {
        if let Some(info) = self.authenticate(token, now) {
            return Ok(info.grant.as_ref().map(|g| g.client_id));
        }
        let hash = hash_token(token);
        Ok(self.blocking(move |r| r.refresh_row(&hash)).await?.filter(|row| !row.spent).map(|row| row.app_id))
    }

    /// RFC 7009 revocation by the app: a refresh token ends its family (the app signed out on
    /// that device), an access token ends itself. A token of another client, an owner session or
    /// an unknown token changes nothing, and the caller cannot tell which it was.
    pub async fn revoke_app_token(&self, token: &str, client: Option<AppId>, now: u64) -> Result<()> {
        let hash = hash_token(token);
        if let Some(info) = self.authenticate(token, now) {
            let Some(grant) = &info.grant else { return Ok(()) };
            if client.is_some_and(|c| c != grant.client_id) {
                return Ok(());
            }
            self.tokens.remove(&[hash]);
            return self.blocking(move |r| r.delete_token(&hash)).await;
        }
        let Some(row) = self.blocking(move |r| r.refresh_row(&hash)).await? else { return Ok(()) };
        if client.is_some_and(|c| c != row.app_id) {
            return Ok(());
        }
        let family = row.family.clone();
        let removed = self.blocking(move |r| r.end_family(&row.family)).await?;
        self.tokens.remove_family(&family, &removed, now);
        Ok(())
    }
}

/// The budget that applies to an app: the user's for its grant, never above the tier's ceiling;
/// the ceiling alone when the user set none.
pub fn app_token_budget(own: Option<u64>, tier_ceiling: u64) -> u64 {
    own.map_or(tier_ceiling, |b| b.min(tier_ceiling))
}

/// A budget the user sets is at most the tier's ceiling: more could never be spent, and storing
/// it would overstate what the app may do. The refusal names the ceiling.
pub fn check_token_budget(budget: Option<u64>, tier_ceiling: u64) -> Result<()> {
    match budget {
        Some(b) if b > tier_ceiling => Err(Error::invalid(format!(
            "token_budget is {b}; this tier's ceiling is {tier_ceiling} tokens a day, the most a budget may be"
        ))),
        _ => Ok(()),
    }
}

fn new_code() -> String {
    // Codes share the token generator (256 random bits); the prefix tells them apart.
    new_token(TokenKind::Access).replacen("sca_", "scc_", 1)
}

#[cfg(test)]
mod budget_tests {
    use super::{app_token_budget, check_token_budget};

    #[test]
    fn a_budget_above_the_ceiling_is_refused_naming_it() {
        assert!(check_token_budget(Some(20_000), 20_000).is_ok() && check_token_budget(None, 0).is_ok());
        let e = check_token_budget(Some(20_001), 20_000).unwrap_err();
        assert_eq!(e.code, selfcloud_core::ErrorCode::InvalidRequest);
        assert!(e.message.contains("20000 tokens a day"), "{}", e.message);
    }

    #[test]
    fn the_smaller_budget_applies() {
        assert_eq!(app_token_budget(Some(500), 20_000), 500);
        assert_eq!(app_token_budget(Some(50_000), 20_000), 20_000);
        assert_eq!(app_token_budget(None, 20_000), 20_000);
        assert_eq!(app_token_budget(Some(0), 20_000), 0);
    }
}

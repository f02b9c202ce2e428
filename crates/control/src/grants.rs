//! Apps, grants, authorization codes and app tokens: the records the OAuth server (in the
//! gateway) keeps. The protocol's decisions (PKCE, redirect matching, replay handling) are the
//! gateway's; this module stores and retrieves atomically.

use crate::registry::{AppRow, CodeRow, GrantRow};
use crate::tokens::{hash_token, new_token, GrantRef, TokenInfo, TokenKind};
use crate::Control;
use selfcloud_core::{AppId, Error, GrantId, Result, ScopeSet, UserId};
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct NewApp {
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: ScopeSet,
}

#[derive(Clone, Debug)]
pub struct App {
    pub client_id: AppId,
    pub owner_id: UserId,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: ScopeSet,
    pub created_at: u64,
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
        }
    }
}

#[derive(Clone, Debug)]
pub struct Grant {
    pub id: GrantId,
    pub client_id: AppId,
    pub app_name: String,
    pub scopes: ScopeSet,
    pub created_at: u64,
}

#[derive(Clone, Debug)]
pub struct NewCode {
    pub client_id: AppId,
    pub user_id: UserId,
    pub grant_id: GrantId,
    pub redirect_uri: String,
    pub code_challenge: String,
}

/// An authorization code as redeemed.
#[derive(Clone, Debug)]
pub struct CodeGrant {
    pub client_id: AppId,
    pub user_id: UserId,
    pub grant_id: GrantId,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub expires_at: u64,
    /// The code had been redeemed before: a replay.
    pub replayed: bool,
}

impl Control {
    pub async fn register_app(&self, owner: UserId, app: NewApp, now: u64) -> Result<App> {
        let row = AppRow {
            id: AppId::random(),
            owner_id: owner,
            name: app.name,
            redirect_uris: app.redirect_uris,
            scopes: app.scopes,
            created_at: now,
        };
        self.blocking(move |r| r.insert_app(&row).map(|_| row.into())).await
    }

    pub async fn app(&self, id: AppId) -> Result<Option<App>> {
        self.blocking(move |r| r.app(id).map(|a| a.map(App::from))).await
    }

    pub async fn create_grant(&self, user: UserId, app: &App, scopes: ScopeSet, now: u64) -> Result<Grant> {
        let row = GrantRow {
            id: GrantId::random(),
            user_id: user,
            app_id: app.client_id,
            app_name: app.name.clone(),
            scopes,
            created_at: now,
        };
        self.blocking(move |r| {
            r.insert_grant(&row)?;
            Ok(Grant {
                id: row.id,
                client_id: row.app_id,
                app_name: row.app_name,
                scopes: row.scopes,
                created_at: row.created_at,
            })
        })
        .await
    }

    /// The user's active grants.
    pub async fn grants(&self, user: UserId) -> Result<Vec<Grant>> {
        let rows = self.blocking(move |r| r.active_grants_of(user)).await?;
        Ok(rows
            .into_iter()
            .map(|g| Grant {
                id: g.id,
                client_id: g.app_id,
                app_name: g.app_name,
                scopes: g.scopes,
                created_at: g.created_at,
            })
            .collect())
    }

    /// Revokes one of `user`'s grants and every token issued under it; the very next request
    /// with one of them fails. `not_found` if the grant is not theirs or already revoked.
    pub async fn revoke_grant(&self, user: UserId, grant: GrantId, now: u64) -> Result<()> {
        let revoked = self.blocking(move |r| r.revoke_grant(user, grant, now)).await?;
        if revoked {
            // Only once the grant is known to be this user's: never touch another's tokens.
            self.tokens.remove_grant(grant);
            Ok(())
        } else {
            Err(Error::not_found("no such grant"))
        }
    }

    /// Revokes a grant on the protocol's behalf (a replayed code or refresh token).
    pub async fn revoke_grant_for_replay(&self, user: UserId, grant: GrantId, now: u64) -> Result<()> {
        tracing::warn!(grant = %grant, "replayed credential: revoking the grant and its tokens");
        match self.revoke_grant(user, grant, now).await {
            Err(e) if e.code == selfcloud_core::ErrorCode::NotFound => Ok(()),
            other => other,
        }
    }

    pub async fn issue_code(&self, code: NewCode, now: u64) -> Result<String> {
        let token = new_code();
        let hash = hash_token(&token);
        let row = CodeRow {
            app_id: code.client_id,
            user_id: code.user_id,
            grant_id: code.grant_id,
            redirect_uri: code.redirect_uri,
            code_challenge: code.code_challenge,
            expires_at: now + self.config.ttls.code.as_secs(),
            spent: false,
        };
        self.blocking(move |r| r.insert_code(&hash, &row)).await?;
        Ok(token)
    }

    /// Redeems a code: it is marked spent whatever happens next, so it works at most once.
    pub async fn redeem_code(&self, code: &str) -> Result<Option<CodeGrant>> {
        let hash = hash_token(code);
        let row = self.blocking(move |r| r.take_code(&hash)).await?;
        Ok(row.map(|c| CodeGrant {
            client_id: c.app_id,
            user_id: c.user_id,
            grant_id: c.grant_id,
            redirect_uri: c.redirect_uri,
            code_challenge: c.code_challenge,
            expires_at: c.expires_at,
            replayed: c.spent,
        }))
    }

    pub async fn grant_is_active(&self, grant: GrantId) -> Result<bool> {
        self.blocking(move |r| r.grant_is_active(grant)).await
    }

    /// Issues an access and a refresh token for a grant. Returns `(access, refresh, access expiry)`.
    pub async fn issue_app_tokens(
        self: &Arc<Self>,
        user: UserId,
        grant: GrantRef,
        scopes: ScopeSet,
        now: u64,
    ) -> Result<(String, String, u64)> {
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let u =
                this.registry.user_by_id(user)?.ok_or_else(|| Error::unauthenticated("the user no longer exists"))?;
            let (access, expires) =
                this.issue_token(TokenKind::Access, user, u.instance_id, Some(grant.clone()), scopes.clone(), now)?;
            let (refresh, _) = this.issue_token(TokenKind::Refresh, user, u.instance_id, Some(grant), scopes, now)?;
            Ok((access, refresh, expires))
        })
        .await
        .map_err(Error::internal)?
    }

    /// A refresh token's record, spent or not (a spent one means a replay), if it is unexpired.
    pub fn refresh_token(&self, token: &str, now: u64) -> Option<Arc<TokenInfo>> {
        let info = self.tokens.get(&hash_token(token))?;
        (info.kind == TokenKind::Refresh && info.expires_at > now).then_some(info)
    }

    /// Marks a refresh token spent. False if another exchange spent it first.
    pub async fn spend_refresh(&self, token: &str) -> Result<bool> {
        let hash = hash_token(token);
        let first = self.blocking(move |r| r.spend_token(&hash)).await?;
        if first {
            self.tokens.mark_spent(&hash);
        }
        Ok(first)
    }
}

fn new_code() -> String {
    // Codes share the token generator (256 random bits); the prefix tells them apart.
    new_token(TokenKind::Access).replacen("sca_", "scc_", 1)
}

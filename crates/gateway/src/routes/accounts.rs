//! Accounts, sessions and the caller's profile.

use crate::auth::{Caller, Logged};
use crate::error::{ApiJson, ApiResult};
use crate::routes::ErrorBody;
use crate::state::AppState;
use axum::extract::{ConnectInfo, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use selfcloud_control::TokenKind;
use selfcloud_core::Scope;
use selfcloud_instance::Actor;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::Arc;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct InstanceSummary {
    pub id: String,
    pub state: String,
    /// Where it runs: `process` (its own sandboxed process) or `inproc`.
    pub runtime: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AccountCreated {
    pub user_id: String,
    pub username: String,
    pub instance: InstanceSummary,
    /// Shown this once: it alone can reset the password without losing the instance's data.
    pub recovery_code: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct SessionCreated {
    pub token: String,
    /// Unix seconds.
    pub expires_at: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StorageSummary {
    pub records: u64,
    pub bytes: u64,
    pub quota_bytes: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Me {
    pub user_id: String,
    pub username: String,
    /// Present for the owner only (apps with `profile:read` see who, not what).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tier: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance: Option<InstanceSummary>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage: Option<StorageSummary>,
}

/// Create an account; its instance is provisioned before the answer.
#[utoipa::path(post, path = "/v1/accounts", tag = "accounts", request_body = Credentials,
    responses((status = 201, body = AccountCreated), (status = 400, body = ErrorBody), (status = 409, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_account(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<Credentials>,
) -> ApiResult<Response> {
    s.rate.check_sign_up(peer.ip())?;
    let account = s.control.sign_up(&body.username, &body.password, s.clock.now()).await?;
    let created = AccountCreated {
        user_id: account.user_id.to_string(),
        username: account.username,
        instance: InstanceSummary {
            id: account.instance_id.to_string(),
            state: account.instance_state,
            runtime: s.control.runtime_kind().as_str().to_owned(),
        },
        recovery_code: account.recovery_code,
    };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

/// Log in: the owner's API session token, a bearer credential (no cookie: a browser would send
/// one to every port of this host).
#[utoipa::path(post, path = "/v1/sessions", tag = "accounts", request_body = Credentials,
    responses((status = 200, body = SessionCreated), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_session(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    ApiJson(body): ApiJson<Credentials>,
) -> ApiResult<Response> {
    s.rate.check_ip(peer.ip())?;
    let user = crate::throttle::log_in(&s, &body.username, &body.password).await?;
    let (token, expires_at) = s.control.create_session(&user, TokenKind::Session, s.clock.now()).await?;
    Ok(Json(SessionCreated { token, expires_at }).into_response())
}

/// Log out: ends the session that made this request.
#[utoipa::path(delete, path = "/v1/sessions", tag = "accounts", security(("bearer" = [])),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn delete_session(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require_owner()?;
    s.control.revoke_token_by_hash(caller.token_hash).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PasswordChange {
    /// The current password.
    pub password: String,
    pub new_password: String,
}

/// Change the password: the data key is re-wrapped (no record is rewritten), every owner
/// session ends, and a new one is returned. App grants stay.
#[utoipa::path(put, path = "/v1/accounts/me/password", tag = "accounts", request_body = PasswordChange, security(("bearer" = [])),
    responses((status = 200, body = SessionCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
              (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn change_password(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<PasswordChange>,
) -> ApiResult<Response> {
    caller.require_owner()?;
    let (token, expires_at) =
        s.control.change_password(caller.token.user_id, &body.password, &body.new_password, s.clock.now()).await?;
    Ok(Json(SessionCreated { token, expires_at }).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recovery {
    pub username: String,
    /// The code shown at sign-up (or at the last recovery); dashes, spaces and case do not matter.
    pub recovery_code: String,
    pub new_password: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Recovered {
    pub token: String,
    pub expires_at: u64,
    /// The next recovery code: the one just used is spent.
    pub recovery_code: String,
}

/// Set a new password with the recovery code; the data stays readable. Every owner session ends.
#[utoipa::path(post, path = "/v1/accounts/recover", tag = "accounts", request_body = Recovery,
    responses((status = 200, body = Recovered), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn recover(
    State(s): State<Arc<AppState>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: axum::http::HeaderMap,
    ApiJson(body): ApiJson<Recovery>,
) -> ApiResult<Response> {
    s.rate.check_ip(peer.ip())?;
    let r = crate::throttle::recover(&s, &body.username, &body.recovery_code, &body.new_password).await?;
    // The owner's log says their password was reset (a failed try names no account).
    let entry = Logged::new(&s, "POST", "/v1/accounts/recover", &headers).entry(&s, Actor::Owner, None, 200);
    s.audit.record(r.instance_id, entry).await;
    Ok(Json(Recovered { token: r.token, expires_at: r.expires_at, recovery_code: r.recovery_code }).into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AccountDeletion {
    /// The password again: deletion cannot be undone.
    pub password: String,
}

/// Delete the account: the instance's data key is shredded first, then its files; every token of
/// the account stops working. The username stays reserved.
#[utoipa::path(delete, path = "/v1/accounts/me", tag = "accounts", request_body = AccountDeletion, security(("bearer" = [])),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn delete_account(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(body): ApiJson<AccountDeletion>,
) -> ApiResult<Response> {
    caller.require_owner()?;
    s.control.delete_account(caller.token.user_id, &body.password, s.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// The caller's account, instance state and storage use.
#[utoipa::path(get, path = "/v1/me", tag = "accounts", security(("bearer" = [])),
    responses((status = 200, body = Me), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn me(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Json<Me>> {
    if !caller.is_owner() {
        caller.require(&Scope::ProfileRead)?;
    }
    let profile = s.control.profile(caller.token.user_id).await?;
    let mut me = Me {
        user_id: profile.user_id.to_string(),
        username: profile.username,
        tier: None,
        instance: None,
        storage: None,
    };
    if caller.is_owner() {
        let usage = s.control.storage_usage(caller.token.instance_id).await?;
        me.tier = Some(profile.tier);
        me.instance = Some(InstanceSummary {
            id: profile.instance_id.to_string(),
            state: profile.instance_state,
            runtime: s.control.runtime_kind().as_str().to_owned(),
        });
        me.storage =
            Some(StorageSummary { records: usage.records, bytes: usage.bytes, quota_bytes: usage.quota_bytes });
    }
    Ok(Json(me))
}

//! The operator's API (`/v1/admin`): instance metadata and tiers, never contents. Authenticated
//! by the operator token kept in the home directory, not by any user's session.

use crate::error::{ApiError, ApiJson, ApiPath, ApiResult};
use crate::routes::ErrorBody;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Json;
use selfcloud_core::config::Tier;
use selfcloud_core::{Error, InstanceId};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Middleware: only the operator token passes; user and app tokens are refused alike.
pub async fn operator_only(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    match crate::auth::bearer(req.headers()) {
        Some(token) if s.control.is_operator(token) => next.run(req).await,
        Some(_) => ApiError(Error::forbidden("operator token required")).into_response(),
        None => ApiError(Error::unauthenticated("missing operator token")).into_response(),
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct InstanceView {
    pub id: String,
    pub username: String,
    pub tier: String,
    pub state: String,
    pub created_at: u64,
    pub quota_bytes: u64,
    /// `running`, `hibernated` (no process, no memory: its files only) or `crashed`.
    pub run_state: String,
    /// `process` or `inproc`.
    pub runtime: String,
    /// From its cgroup, while it runs (`process` runtime).
    pub memory_bytes: Option<u64>,
    pub cpu_usec: Option<u64>,
    /// Unix milliseconds of its last call since this server started.
    pub last_active_ms: Option<u64>,
    /// Restarts after a crash since this server started.
    pub restarts: u64,
    /// Its process id, while it runs as a process.
    pub pid: Option<u32>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct InstanceList {
    pub instances: Vec<InstanceView>,
}

/// Every instance's metadata (operator only).
#[utoipa::path(get, path = "/v1/admin/instances", tag = "admin", security(("bearer" = [])),
    responses((status = 200, body = InstanceList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_instances(State(s): State<Arc<AppState>>) -> ApiResult<Json<InstanceList>> {
    let instances = s.control.list_instances().await?;
    Ok(Json(InstanceList {
        instances: instances
            .into_iter()
            .map(|i| InstanceView {
                id: i.id.to_string(),
                username: i.username,
                tier: i.tier.to_string(),
                state: i.state,
                created_at: i.created_at,
                quota_bytes: s.limits.tier(i.tier).quota_bytes,
                run_state: i.run.state.as_str().to_owned(),
                runtime: s.control.runtime_kind().as_str().to_owned(),
                memory_bytes: i.run.usage.memory_bytes,
                cpu_usec: i.run.usage.cpu_usec,
                last_active_ms: i.run.last_active_ms,
                restarts: i.run.restarts,
                pid: i.run.pid,
            })
            .collect(),
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TierChange {
    /// free, growth or pro.
    pub tier: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TierChanged {
    pub id: String,
    pub tier: String,
    pub quota_bytes: u64,
    pub rate_per_token: u32,
}

/// Move an instance to another tier; quota and rate limits change at once (operator only).
#[utoipa::path(put, path = "/v1/admin/instances/{id}/tier", tag = "admin", params(("id" = String, Path)),
    request_body = TierChange, security(("bearer" = [])),
    responses((status = 200, body = TierChanged), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn set_tier(
    State(s): State<Arc<AppState>>,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<TierChange>,
) -> ApiResult<Json<TierChanged>> {
    let id: InstanceId = id.parse().map_err(|_| Error::not_found("no such instance"))?;
    let tier: Tier = body.tier.parse()?;
    s.control.set_tier(id, tier).await?;
    let limits = s.limits.tier(tier);
    Ok(Json(TierChanged {
        id: id.to_string(),
        tier: tier.to_string(),
        quota_bytes: limits.quota_bytes,
        rate_per_token: limits.rate_per_token,
    }))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestUserRequest {
    /// The app the new user has allowed.
    pub client_id: String,
    /// What they allowed it (within its registration; SELF's words too).
    pub scopes: Vec<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct TestUser {
    pub user_id: String,
    pub username: String,
    pub password: String,
    /// The app's tokens for this user, as the token endpoint answers them.
    pub access_token: String,
    pub token_type: String,
    pub expires_in: u64,
    pub refresh_token: String,
    pub scope: String,
}

/// Development only (`--dev-test-users`): a new user, with a random name and password, who has
/// allowed `client_id` the `scopes`, and the app's tokens for them, made through the same
/// consent and code redemption as the browser flow. Off (404) unless the flag is set.
#[utoipa::path(post, path = "/v1/admin/test-users", tag = "admin", request_body = TestUserRequest,
    security(("operator" = [])),
    responses((status = 201, body = TestUser), (status = 400, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn test_user(State(s): State<Arc<AppState>>, ApiJson(req): ApiJson<TestUserRequest>) -> ApiResult<Response> {
    use crate::oauth::token::{decide_code, CodeExchange};
    use rand::distributions::{Alphanumeric, DistString};
    if !s.dev_test_users {
        return Err(Error::not_found("no such endpoint").into());
    }
    let unknown = || Error::not_found("no such app");
    let id: selfcloud_core::AppId = req.client_id.parse().map_err(|_| unknown())?;
    let app = s.control.app(id).await?.ok_or_else(unknown)?;
    let scopes = selfcloud_core::ScopeSet::parse_for(&req.scopes.join(" "), &app.client_id)?;
    if scopes.is_empty() || !app.scopes.covers_all(&scopes) {
        return Err(Error::invalid("ask for one or more of the scopes the app registered").into());
    }
    let (username, password, verifier) = {
        let mut rng = rand::thread_rng(); // not held across an await: it is not Send
        let name = format!("test-{}", Alphanumeric.sample_string(&mut rng, 12).to_lowercase());
        (name, Alphanumeric.sample_string(&mut rng, 24), Alphanumeric.sample_string(&mut rng, 64))
    };
    let now = s.clock.now();
    let account = s.control.sign_up(&username, &password, now).await?;
    let redirect_uri =
        app.redirect_uris.first().cloned().ok_or_else(|| Error::internal("an app without a redirect URI"))?;
    let challenge = {
        use base64::Engine as _;
        use sha2::Digest as _;
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(sha2::Sha256::digest(verifier.as_bytes()))
    };
    let consent = selfcloud_control::Consent {
        scopes,
        redirect_uri: redirect_uri.clone(),
        code_challenge: challenge,
        token_budget: None,
        expires_at: None,
    };
    let (_, code) = s.control.consent(account.user_id, &app, consent, now).await?;
    let exchange = CodeExchange { client_id: id, code: code.clone(), redirect_uri, verifier };
    match s.control.redeem_code(&code, now, move |c| decide_code(&exchange, c, now)).await? {
        selfcloud_control::TokenOutcome::Issued(t) => {
            let user = TestUser {
                user_id: account.user_id.to_string(),
                username,
                password,
                access_token: t.access,
                token_type: "Bearer".into(),
                expires_in: t.expires_at.saturating_sub(now),
                refresh_token: t.refresh,
                scope: t.scopes.to_string(),
            };
            Ok((axum::http::StatusCode::CREATED, Json(user)).into_response())
        }
        _ => Err(Error::internal("a fresh code was not redeemed").into()),
    }
}

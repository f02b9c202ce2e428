//! App registration and the owner's view of their grants.

use crate::auth::Caller;
use crate::error::{ApiJson, ApiPath, ApiResult};
use crate::oauth::validate_redirect_uri;
use crate::routes::ErrorBody;
use crate::state::AppState;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use selfcloud_control::NewApp;
use selfcloud_core::{AppId, Error, GrantId, ScopeSet};
use serde::{Deserialize, Serialize};
use std::sync::Arc;

pub const MAX_REDIRECT_URIS: usize = 10;
pub const MAX_APP_NAME: usize = 100;

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppRequest {
    pub name: String,
    pub redirect_uris: Vec<String>,
    /// The most the app may ever ask for, e.g. `["storage:read:notes", "llm:chat"]`; bare
    /// `storage:read` / `storage:write` are the app's own collections.
    pub scopes: Vec<String>,
    /// A server-side app that can keep a secret: it authenticates at the token endpoint with
    /// `client_secret_basic` as well as PKCE. Default: a public client (PKCE alone).
    #[serde(default)]
    pub confidential: bool,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AppCreated {
    /// The OAuth `client_id`. Every client proves itself with PKCE; a confidential one with its secret too.
    pub client_id: String,
    pub name: String,
    pub redirect_uris: Vec<String>,
    pub scopes: Vec<String>,
    pub created_at: u64,
    /// `none` (a public client) or `client_secret_basic`.
    pub token_endpoint_auth_method: String,
    /// A confidential client's secret: shown in the registration's answer only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<String>,
}

/// Register a third-party app (the owner becomes its developer).
#[utoipa::path(post, path = "/v1/apps", tag = "apps", request_body = AppRequest, security(("bearer" = [])),
    responses((status = 201, body = AppCreated), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn register(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiJson(req): ApiJson<AppRequest>,
) -> ApiResult<Response> {
    caller.require_owner()?;
    let name = req.name.trim();
    if name.is_empty() || name.chars().count() > MAX_APP_NAME || name.chars().any(char::is_control) {
        return Err(Error::invalid(format!("name must be 1 to {MAX_APP_NAME} printable characters")).into());
    }
    if req.redirect_uris.is_empty() || req.redirect_uris.len() > MAX_REDIRECT_URIS {
        return Err(Error::invalid(format!("give 1 to {MAX_REDIRECT_URIS} redirect_uris")).into());
    }
    for uri in &req.redirect_uris {
        validate_redirect_uri(uri)?;
    }
    let id = AppId::random();
    let scopes = ScopeSet::parse_for(&req.scopes.join(" "), &id)?;
    if scopes.is_empty() || req.scopes.iter().any(|s| s.contains(' ')) {
        return Err(Error::invalid("scopes must be a non-empty list of single scopes").into());
    }
    let app =
        NewApp { id, name: name.to_owned(), redirect_uris: req.redirect_uris, scopes, confidential: req.confidential };
    let (app, secret) = s.control.register_app(caller.token.user_id, app, s.clock.now()).await?;
    let created = AppCreated { client_secret: secret, ..AppCreated::from(app) };
    Ok((StatusCode::CREATED, Json(created)).into_response())
}

impl From<selfcloud_control::App> for AppCreated {
    fn from(app: selfcloud_control::App) -> Self {
        AppCreated {
            client_id: app.client_id.to_string(),
            name: app.name,
            redirect_uris: app.redirect_uris,
            scopes: app.scopes.iter().map(|s| s.to_string()).collect(),
            created_at: app.created_at,
            token_endpoint_auth_method: if app.secret_hash.is_some() { "client_secret_basic" } else { "none" }.into(),
            client_secret: None,
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct AppList {
    pub apps: Vec<AppCreated>,
}

/// The apps the caller registered (as their developer; owner only).
#[utoipa::path(get, path = "/v1/apps", tag = "apps", security(("bearer" = [])),
    responses((status = 200, body = AppList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Json<AppList>> {
    caller.require_owner()?;
    let apps = s.control.apps(caller.token.user_id).await?;
    Ok(Json(AppList { apps: apps.into_iter().map(AppCreated::from).collect() }))
}

/// Delete an app the caller registered: every user's grant to it ends, and every token it holds.
#[utoipa::path(delete, path = "/v1/apps/{client_id}", tag = "apps", params(("client_id" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_owner()?;
    // A malformed id and another developer's app answer alike.
    let id: AppId = id.parse().map_err(|_| Error::not_found("no such app"))?;
    s.control.delete_app(caller.token.user_id, id, s.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GrantView {
    pub id: String,
    pub client_id: String,
    pub app_name: String,
    pub scopes: Vec<String>,
    pub created_at: u64,
    /// LLM tokens a day the user set for the app (`null`: none of their own).
    pub token_budget: Option<u64>,
    /// When the grant ends by itself (Unix seconds); `null`: when the user revokes it.
    pub expires_at: Option<u64>,
    /// What applies: the user's budget under the tier's ceiling. `GET /v1/llm/usage` says what
    /// the app spent of it today.
    pub tokens_per_day: u64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct GrantList {
    pub grants: Vec<GrantView>,
}

/// The apps holding access to the caller's instance (owner only).
#[utoipa::path(get, path = "/v1/grants", tag = "grants", security(("bearer" = [])),
    responses((status = 200, body = GrantList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_grants(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Json<GrantList>> {
    caller.require_owner()?;
    let grants = s.control.grants(caller.token.user_id, s.clock.now()).await?;
    let ceiling = s.control.config().limits.tier(s.control.tier_of(caller.token.instance_id)).llm_app_tokens_per_day;
    Ok(Json(GrantList {
        grants: grants
            .into_iter()
            .map(|g| GrantView {
                id: g.id.to_string(),
                client_id: g.client_id.to_string(),
                app_name: g.app_name,
                scopes: g.scopes.iter().map(|s| s.to_string()).collect(),
                created_at: g.created_at,
                token_budget: g.token_budget,
                expires_at: g.expires_at,
                tokens_per_day: selfcloud_control::app_token_budget(g.token_budget, ceiling),
            })
            .collect(),
    }))
}

/// A budget above the tier's ceiling is refused (400, naming the ceiling) rather than stored.
pub fn check_token_budget(
    s: &AppState,
    instance: selfcloud_core::InstanceId,
    budget: Option<u64>,
) -> Result<(), Error> {
    let ceiling = s.control.config().limits.tier(s.control.tier_of(instance)).llm_app_tokens_per_day;
    selfcloud_control::check_token_budget(budget, ceiling)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GrantChange {
    /// LLM tokens a day the app may spend; `null` leaves only the tier's ceiling.
    pub token_budget: Option<u64>,
}

/// Change a grant: its daily LLM token budget (owner only). It applies from the app's next call.
#[utoipa::path(patch, path = "/v1/grants/{id}", tag = "grants", params(("id" = String, Path)), security(("bearer" = [])),
    request_body = GrantChange,
    responses((status = 204), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn change_grant(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(change): ApiJson<GrantChange>,
) -> ApiResult<StatusCode> {
    caller.require_owner()?;
    let id: GrantId = id.parse().map_err(|_| Error::not_found("no such grant"))?;
    check_token_budget(&s, caller.token.instance_id, change.token_budget)?;
    s.control.set_token_budget(caller.token.user_id, id, change.token_budget).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revoke a grant: its tokens stop working on the very next request (owner only).
#[utoipa::path(delete, path = "/v1/grants/{id}", tag = "grants", params(("id" = String, Path)), security(("bearer" = [])),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn revoke_grant(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<StatusCode> {
    caller.require_owner()?;
    // A malformed id and another user's grant answer alike: nothing tells whether it exists.
    let id: GrantId = id.parse().map_err(|_| Error::not_found("no such grant"))?;
    s.control.revoke_grant(caller.token.user_id, id, s.clock.now()).await?;
    Ok(StatusCode::NO_CONTENT)
}

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

//! The user's data leaves with them and comes back: `GET /v1/export` streams the instance as one
//! archive, `POST /v1/import` restores one into an empty instance (both the owner's alone, both
//! answered by the instance: `selfcloud_instance::service::portability`). Here: the access check,
//! the file's name, and the documentation.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::routes::forward::{forward, forward_within, IMPORT_TIMEOUT};
use crate::routes::ErrorBody;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue};
use axum::response::Response;
use selfcloud_core::Error;
use selfcloud_instance::protocol::Need;
use selfcloud_instance::service::portability::Imported;
use std::sync::Arc;

/// Stream the whole instance as a tar archive: records per collection as JSON lines, then a
/// manifest with counts and SHA-256 of every part (owner only).
#[utoipa::path(get, path = "/v1/export", tag = "portability", security(("bearer" = [])),
    responses((status = 200, content_type = "application/x-tar", body = Vec<u8>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn export(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    caller.check(&Need::Owner)?;
    let profile = s.control.profile(caller.token.user_id).await?;
    let mut resp = forward(&s, &caller, Need::Owner, req).await?;
    if resp.status().is_success() {
        let name = format!("attachment; filename=\"selfcloud-{}-{}.tar\"", profile.username, s.clock.now());
        resp.headers_mut().insert(header::CONTENT_DISPOSITION, HeaderValue::from_str(&name).map_err(Error::internal)?);
    }
    Ok(resp)
}

/// Restore an export archive into this instance, which must hold no record. The archive is
/// checked whole first; then every record is written in one atomic step, or none is (owner only).
#[utoipa::path(post, path = "/v1/import", tag = "portability", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 200, body = Imported), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 507, body = ErrorBody)))]
pub async fn import(State(s): State<Arc<AppState>>, caller: Caller, req: Request) -> ApiResult<Response> {
    forward_within(&s, &caller, Need::Owner, req, IMPORT_TIMEOUT).await
}

//! Records in collections: `/v1/storage/{collection}[/{key}]`, answered by the instance
//! (`selfcloud_instance::service::storage`); here only the access check and the documentation.

use crate::auth::Caller;
use crate::error::{ApiPath, ApiResult};
use crate::routes::forward::forward;
use crate::routes::ErrorBody;
use crate::state::AppState;
use axum::extract::{Request, State};
use axum::response::Response;
use selfcloud_core::Collection;
use selfcloud_instance::protocol::Need;
use selfcloud_instance::service::storage::{names, ListAnswer, ListQuery, PutAnswer};
use std::sync::Arc;

/// Any call on one record: read, write or delete, by its method.
pub async fn record(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((collection, key)): ApiPath<(String, String)>,
    req: Request,
) -> ApiResult<Response> {
    let (collection, _) = names(&collection, &key)?;
    let need = Need::record(req.method(), &collection);
    forward(&s, &caller, need, req).await
}

/// A page of a collection.
#[utoipa::path(get, path = "/v1/storage/{collection}", tag = "storage", security(("bearer" = [])),
    params(("collection" = String, Path), ListQuery),
    responses((status = 200, body = ListAnswer), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(collection): ApiPath<String>,
    req: Request,
) -> ApiResult<Response> {
    let collection = Collection::parse(&collection)?;
    forward(&s, &caller, Need::record(req.method(), &collection), req).await
}

/// Write a record (any JSON value up to the size limit).
#[utoipa::path(put, path = "/v1/storage/{collection}/{key}", tag = "storage", security(("bearer" = [])),
    params(("collection" = String, Path), ("key" = String, Path), ("If-Match" = Option<String>, Header), ("If-None-Match" = Option<String>, Header)),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = PutAnswer), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 413, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub fn put() {}

/// Read a record: the stored JSON value, with its rev as `ETag`.
#[utoipa::path(get, path = "/v1/storage/{collection}/{key}", tag = "storage", security(("bearer" = [])),
    params(("collection" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = Object, headers(("ETag" = String))), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub fn get() {}

/// Delete a record.
#[utoipa::path(delete, path = "/v1/storage/{collection}/{key}", tag = "storage", security(("bearer" = [])),
    params(("collection" = String, Path), ("key" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub fn delete() {}

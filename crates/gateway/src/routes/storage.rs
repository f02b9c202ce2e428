//! Records in collections: `/v1/storage/{collection}[/{key}]`.

use crate::auth::{Caller, ScopeUsed};
use crate::error::{page_limit, ApiBytes, ApiError, ApiPath, ApiQuery, ApiResult};
use crate::routes::ErrorBody;
use crate::state::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use selfcloud_core::{Collection, Error, ErrorCode, RecordKey, Scope};
use selfcloud_instance::{Precondition, Rev};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::sync::Arc;

/// Attaches the scope used to a response, so the audit log records it.
fn with_scope(mut resp: Response, used: ScopeUsed) -> Response {
    resp.extensions_mut().insert(used);
    resp
}

fn etag(rev: Rev) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{rev}\"")).expect("digits and quotes are a valid header")
}

/// `If-Match: "17"`, `If-Match: *` (the record exists) or `If-None-Match: *`.
fn precondition(headers: &HeaderMap) -> Result<Precondition, Error> {
    if let Some(v) = headers.get(header::IF_MATCH) {
        let text = v.to_str().map_err(|_| Error::invalid("If-Match is not text"))?.trim();
        if text == "*" {
            return Ok(Precondition::IfExists);
        }
        // If-Match compares strongly (RFC 9110 13.1.1): a weak tag never matches.
        if text.starts_with("W/") {
            return Err(Error::new(
                ErrorCode::PreconditionFailed,
                "If-Match compares strongly; a weak tag never matches",
            ));
        }
        let rev = text.trim_matches('"');
        return rev
            .parse()
            .map(Precondition::IfMatch)
            .map_err(|_| Error::invalid("If-Match must be a rev from an ETag"));
    }
    if let Some(v) = headers.get(header::IF_NONE_MATCH) {
        return match v.to_str().map(str::trim) {
            Ok("*") => Ok(Precondition::IfAbsent),
            _ => Err(Error::invalid("If-None-Match supports only *")),
        };
    }
    Ok(Precondition::None)
}

fn names(collection: &str, key: &str) -> Result<(Collection, RecordKey), Error> {
    Ok((Collection::parse(collection)?, RecordKey::parse(key)?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PutAnswer {
    pub rev: String,
}

/// Write a record (any JSON value up to the size limit).
#[utoipa::path(put, path = "/v1/storage/{collection}/{key}", tag = "storage", security(("bearer" = [])),
    params(("collection" = String, Path), ("key" = String, Path), ("If-Match" = Option<String>, Header), ("If-None-Match" = Option<String>, Header)),
    request_body(content = Object, content_type = "application/json"),
    responses((status = 200, body = PutAnswer), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 412, body = ErrorBody), (status = 413, body = ErrorBody), (status = 507, body = ErrorBody)))]
pub async fn put(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((collection, key)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Response> {
    let (collection, key) = names(&collection, &key)?;
    let used = caller.require(&Scope::storage_write(&collection))?;
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"));
    if !json_type {
        return Err(Error::new(
            ErrorCode::UnsupportedMediaType,
            "records are JSON: send Content-Type: application/json",
        )
        .into());
    }
    if body.len() > s.limits.max_value_bytes {
        return Err(
            Error::new(ErrorCode::TooLarge, format!("values are at most {} bytes", s.limits.max_value_bytes)).into()
        );
    }
    // UTF-8 first: serde skips the bytes of strings it ignores without checking them, and a value
    // stored with invalid UTF-8 inside a string would break every list and export after it.
    let text = std::str::from_utf8(&body).map_err(|e| Error::invalid(format!("body is not UTF-8: {e}")))?;
    // And a value standard parsers read back (depth, number range, escapes): one that only the
    // syntax allows would break every client's list that holds it.
    selfcloud_core::json::check_value(text).map_err(|e| Error::invalid(format!("body: {}", e.message)))?;
    let cond = precondition(&headers)?;
    let instance = s.control.instance(caller.token.instance_id).await?;
    let rev = instance.put_record(&collection, &key, body.to_vec(), cond).await?;
    let resp = ([(header::ETAG, etag(rev))], Json(PutAnswer { rev: rev.to_string() })).into_response();
    Ok(with_scope(resp, used))
}

/// Read a record: the stored JSON value, with its rev as `ETag`.
#[utoipa::path(get, path = "/v1/storage/{collection}/{key}", tag = "storage", security(("bearer" = [])),
    params(("collection" = String, Path), ("key" = String, Path)),
    responses((status = 200, body = Object, headers(("ETag" = String))), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((collection, key)): ApiPath<(String, String)>,
) -> ApiResult<Response> {
    let (collection, key) = names(&collection, &key)?;
    let used = caller.require(&Scope::storage_read(&collection))?;
    let instance = s.control.instance(caller.token.instance_id).await?;
    let Some(record) = instance.get_record(&collection, &key).await? else {
        return Ok(with_scope(ApiError(Error::not_found("no such record")).into_response(), used));
    };
    let resp = (
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json")), (header::ETAG, etag(record.rev))],
        record.value,
    )
        .into_response();
    Ok(with_scope(resp, used))
}

/// Delete a record.
#[utoipa::path(delete, path = "/v1/storage/{collection}/{key}", tag = "storage", security(("bearer" = [])),
    params(("collection" = String, Path), ("key" = String, Path), ("If-Match" = Option<String>, Header)),
    responses((status = 204), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 412, body = ErrorBody)))]
pub async fn delete(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiPath((collection, key)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (collection, key) = names(&collection, &key)?;
    let used = caller.require(&Scope::storage_write(&collection))?;
    let cond = precondition(&headers)?;
    let instance = s.control.instance(caller.token.instance_id).await?;
    let resp = match instance.delete_record(&collection, &key, cond).await {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => ApiError(e).into_response(),
    };
    Ok(with_scope(resp, used))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only keys starting with this.
    pub prefix: Option<String>,
    /// Page size (default 100, at most 1000).
    pub limit: Option<usize>,
    /// From the previous page.
    pub cursor: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ListedRecord {
    pub key: String,
    pub rev: String,
    #[schema(value_type = Object)]
    pub value: Box<RawValue>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ListAnswer {
    pub records: Vec<ListedRecord>,
    pub cursor: Option<String>,
}

/// List a collection's records in key order.
#[utoipa::path(get, path = "/v1/storage/{collection}", tag = "storage", security(("bearer" = [])),
    params(("collection" = String, Path), ListQuery),
    responses((status = 200, body = ListAnswer), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    ApiPath(collection): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Response> {
    let collection = Collection::parse(&collection)?;
    let used = caller.require(&Scope::storage_read(&collection))?;
    let limit = page_limit(q.limit, &s.limits)?;
    let instance = s.control.instance(caller.token.instance_id).await?;
    let prefix = q.prefix.as_deref().unwrap_or("");
    let page = instance.list_records(&collection, prefix, limit, s.limits.list_max_bytes, q.cursor.as_deref()).await?;
    let records = page
        .records
        .into_iter()
        .map(|r| ListedRecord {
            value: listed_value(&collection, &r.key, r.value),
            key: r.key.to_string(),
            rev: r.rev.to_string(),
        })
        .collect();
    Ok(with_scope(Json(ListAnswer { records, cursor: page.cursor }).into_response(), used))
}

/// A stored value as a list shows it: a damaged one (see `json_text`) repaired, not failing the page.
fn listed_value(collection: &Collection, key: &RecordKey, value: Vec<u8>) -> Box<RawValue> {
    let text = match selfcloud_instance::json_text(&value) {
        // Sound (borrowed): the bytes themselves, not a copy.
        (std::borrow::Cow::Borrowed(_), _) => String::from_utf8(value).expect("json_text checked it is UTF-8"),
        (repaired, _) => {
            tracing::warn!(%collection, %key, "a stored value is not valid JSON text; listed repaired");
            repaired.into_owned()
        }
    };
    RawValue::from_string(text).expect("json_text gives JSON")
}

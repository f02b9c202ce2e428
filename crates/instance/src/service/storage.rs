//! Records in collections: `/v1/storage/{collection}[/{key}]`.

use super::{Ctx, S};
use crate::api::{ApiBytes, ApiError, ApiPath, ApiQuery, ApiResult};
use crate::protocol::Need;
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use selfcloud_core::{Collection, Error, ErrorCode, RecordKey};
use selfcloud_store::Precondition;
use selfcloud_store::Rev;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

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

/// The names of a record path, as both sides of the boundary parse them.
pub fn names(collection: &str, key: &str) -> Result<(Collection, RecordKey), Error> {
    Ok((Collection::parse(collection)?, RecordKey::parse(key)?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PutAnswer {
    pub rev: String,
}

pub(crate) async fn put(
    s: S,
    ctx: Ctx,
    ApiPath((collection, key)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Response> {
    let (collection, key) = names(&collection, &key)?;
    ctx.require(&Need::record(&Method::PUT, &collection))?;
    if !crate::api::is_json(&headers) {
        return Err(Error::new(
            ErrorCode::UnsupportedMediaType,
            "records are JSON: send Content-Type: application/json",
        )
        .into());
    }
    let max = s.settings.max_value_bytes;
    if body.len() > max {
        return Err(Error::new(ErrorCode::TooLarge, format!("values are at most {max} bytes")).into());
    }
    // UTF-8 first: serde skips the bytes of strings it ignores without checking them, and a value
    // stored with invalid UTF-8 inside a string would break every list and export after it.
    let text = std::str::from_utf8(&body).map_err(|e| Error::invalid(format!("body is not UTF-8: {e}")))?;
    // And a value standard parsers read back (depth, number range, escapes): one that only the
    // syntax allows would break every client's list that holds it.
    selfcloud_core::json::check_value(text).map_err(|e| Error::invalid(format!("body: {}", e.message)))?;
    let cond = precondition(&headers)?;
    let rev = s.local.put_record(&collection, &key, body.to_vec(), cond).await?;
    super::assistant::after_write(&s);
    Ok(([(header::ETAG, etag(rev))], Json(PutAnswer { rev: rev.to_string() })).into_response())
}

pub(crate) async fn get(s: S, ctx: Ctx, ApiPath((collection, key)): ApiPath<(String, String)>) -> ApiResult<Response> {
    let (collection, key) = names(&collection, &key)?;
    ctx.require(&Need::record(&Method::GET, &collection))?;
    let Some(record) = s.local.get_record(&collection, &key).await? else {
        return Ok(ApiError(Error::not_found("no such record")).into_response());
    };
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json")), (header::ETAG, etag(record.rev))],
        record.value,
    )
        .into_response())
}

pub(crate) async fn delete(
    s: S,
    ctx: Ctx,
    ApiPath((collection, key)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (collection, key) = names(&collection, &key)?;
    ctx.require(&Need::record(&Method::DELETE, &collection))?;
    let cond = precondition(&headers)?;
    s.local.delete_record(&collection, &key, cond).await?;
    super::assistant::after_write(&s);
    Ok(StatusCode::NO_CONTENT.into_response())
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

pub(crate) async fn list(
    s: S,
    ctx: Ctx,
    ApiPath(collection): ApiPath<String>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> ApiResult<Response> {
    let collection = Collection::parse(&collection)?;
    ctx.require(&Need::record(&Method::GET, &collection))?;
    let limit = s.settings.page_limit(q.limit)?;
    let prefix = q.prefix.as_deref().unwrap_or("");
    let page = s.local.list_records(&collection, prefix, limit, s.settings.list_max_bytes, q.cursor.as_deref()).await?;
    let records = page
        .records
        .into_iter()
        .map(|r| ListedRecord {
            value: listed_value(&collection, &r.key, r.value),
            key: r.key.to_string(),
            rev: r.rev.to_string(),
        })
        .collect();
    Ok(Json(ListAnswer { records, cursor: page.cursor }).into_response())
}

/// A stored value as a list shows it: a damaged one (see `json_text`) repaired, not failing the page.
fn listed_value(collection: &Collection, key: &RecordKey, value: Vec<u8>) -> Box<RawValue> {
    let text = match crate::json_text(&value) {
        // Sound (borrowed): the bytes themselves, not a copy.
        (std::borrow::Cow::Borrowed(_), _) => String::from_utf8(value).expect("json_text checked it is UTF-8"),
        (repaired, _) => {
            tracing::warn!(%collection, %key, "a stored value is not valid JSON text; listed repaired");
            repaired.into_owned()
        }
    };
    RawValue::from_string(text).expect("json_text gives JSON")
}

//! Records in collections: `/v1/storage/{collection}[/{key}]`. Each call needs the storage
//! scope of its collection (`Access::Record`), checked before a handler runs.

use super::S;
use crate::api::{ApiBytes, ApiError, ApiPath, ApiQuery, ApiResult};
use crate::part::{query_of, schema_of, Access, Body, Part, Route};
use crate::protocol::wire::{ListAnswer, ListQuery, ListedRecord, PutAnswer};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, put};
use axum::Json;
use selfcloud_core::{Collection, Error, ErrorCode, RecordKey};
use selfcloud_store::Precondition;
use selfcloud_store::Rev;
use serde_json::value::RawValue;

pub static PART: Part = Part {
    name: "storage",
    about: "The user's records: JSON values in collections, read and written by the storage scope of each collection.",
    routes: &[
        Route::new(
            Method::GET,
            "/v1/storage/{collection}",
            Access::Record,
            "A page of a collection, in key order.",
            || get(list),
        )
        .query(query_of::<ListQuery>)
        .answer_schema(schema_of::<ListAnswer>)
        .errors(&[400, 403]),
        Route::new(
            Method::PUT,
            "/v1/storage/{collection}/{key}",
            Access::Record,
            "Write a record (any JSON value up to the size limit).",
            || put(write),
        )
        .body(Body::Json)
        .answer_schema(schema_of::<PutAnswer>)
        .answer_headers(&[("ETag", "The record's new rev")])
        .headers(&[
            ("If-Match", "Write only over this rev (\"17\"), or only over a record that exists (*)"),
            ("If-None-Match", "*: write only a new record"),
        ])
        .errors(&[400, 403, 412, 413, 415, 507]),
        Route::new(
            Method::GET,
            "/v1/storage/{collection}/{key}",
            Access::Record,
            "Read a record: the stored JSON value, with its rev as `ETag`.",
            || get(read),
        )
        .answer_headers(&[("ETag", "The record's rev, for If-Match")])
        .errors(&[403, 404]),
        Route::new(Method::DELETE, "/v1/storage/{collection}/{key}", Access::Record, "Delete a record.", || {
            delete(remove)
        })
        .answer(crate::part::Answer::Empty)
        .headers(&[("If-Match", "Delete only this rev (\"17\")")])
        .errors(&[403, 404, 412]),
    ],
    collections: &[],
    sealed: &[],
    channels: &[],
};

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

/// The names of a record path.
fn names(collection: &str, key: &str) -> Result<(Collection, RecordKey), Error> {
    Ok((Collection::parse(collection)?, RecordKey::parse(key)?))
}

async fn write(
    s: S,
    ApiPath((collection, key)): ApiPath<(String, String)>,
    headers: HeaderMap,
    ApiBytes(body): ApiBytes,
) -> ApiResult<Response> {
    let (collection, key) = names(&collection, &key)?;
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

async fn read(s: S, ApiPath((collection, key)): ApiPath<(String, String)>) -> ApiResult<Response> {
    let (collection, key) = names(&collection, &key)?;
    let Some(record) = s.local.get_record(&collection, &key).await? else {
        return Ok(ApiError(Error::not_found("no such record")).into_response());
    };
    Ok((
        [(header::CONTENT_TYPE, HeaderValue::from_static("application/json")), (header::ETAG, etag(record.rev))],
        record.value,
    )
        .into_response())
}

async fn remove(
    s: S,
    ApiPath((collection, key)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (collection, key) = names(&collection, &key)?;
    let cond = precondition(&headers)?;
    s.local.delete_record(&collection, &key, cond).await?;
    super::assistant::after_write(&s);
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list(s: S, ApiPath(collection): ApiPath<String>, ApiQuery(q): ApiQuery<ListQuery>) -> ApiResult<Response> {
    let collection = Collection::parse(&collection)?;
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

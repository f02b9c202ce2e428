//! The contract's JSON error as an axum response, and extractors whose rejections use it. Shared
//! by both sides of the instance boundary: the gateway and the instance answer errors alike.

use axum::extract::rejection::{BytesRejection, JsonRejection, PathRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use selfcloud_core::{Error, ErrorCode};

/// Every handler's error: serialised as `{"error":{"code","message"}}` with its status.
#[derive(Debug)]
pub struct ApiError(pub Error);

pub type ApiResult<T> = Result<T, ApiError>;

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        ApiError(e)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let e = self.0;
        if let Some(detail) = &e.detail {
            tracing::error!(code = e.code.as_str(), detail = %detail, "request failed");
        }
        let mut resp = (e.status(), axum::Json(e.body())).into_response();
        if let Some(after) = e.retry_after {
            let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        resp
    }
}

/// Maps an axum rejection (bad path, query, body) to the contract's error by its status.
fn rejection(status: StatusCode, text: String) -> ApiError {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::TooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => ErrorCode::InvalidRequest,
    };
    ApiError(Error::new(code, text))
}

macro_rules! api_extractor {
    ($(#[$doc:meta])* $name:ident, $inner:ident, $rejection:ty, parts) => {
        $(#[$doc])*
        pub struct $name<T>(pub T);
        impl<S: Send + Sync, T> FromRequestParts<S> for $name<T>
        where
            axum::extract::$inner<T>: FromRequestParts<S, Rejection = $rejection>,
        {
            type Rejection = ApiError;
            async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
                axum::extract::$inner::<T>::from_request_parts(parts, state)
                    .await
                    .map(|v| $name(v.0))
                    .map_err(|r| rejection(r.status(), r.body_text()))
            }
        }
    };
}

api_extractor!(
    /// Path parameters, percent-decoded; a malformed path is a JSON 400.
    ApiPath, Path, PathRejection, parts
);
api_extractor!(
    /// Query parameters; malformed ones are a JSON 400.
    ApiQuery, Query, QueryRejection, parts
);

/// A raw body, bounded by the router's body limit (413 `too_large` past it).
pub struct ApiBytes(pub bytes::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBytes {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        bytes::Bytes::from_request(req, state)
            .await
            .map(ApiBytes)
            .map_err(|r: BytesRejection| rejection(r.status(), r.body_text()))
    }
}

/// Whether the request says its body is JSON (`Content-Type: application/json`, any parameters).
pub fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

/// A JSON request body read into `T`: 415 unless it says it is JSON, 400 unless it is one value
/// standard parsers read back (depth, numbers, escapes: the rules records are held to) of `T`'s
/// shape.
pub fn json_body<T: serde::de::DeserializeOwned>(headers: &axum::http::HeaderMap, body: &[u8]) -> Result<T, Error> {
    if !is_json(headers) {
        return Err(Error::new(
            ErrorCode::UnsupportedMediaType,
            "send the body as JSON: Content-Type: application/json",
        ));
    }
    let text = std::str::from_utf8(body).map_err(|e| Error::invalid(format!("the body is not UTF-8: {e}")))?;
    selfcloud_core::json::check_value(text).map_err(|e| Error::invalid(format!("the request body: {}", e.message)))?;
    serde_json::from_str(text).map_err(|e| Error::invalid(format!("the request body: {e}")))
}

/// Unknown routes answer the contract's 404, not an empty body.
pub async fn not_found() -> ApiError {
    ApiError(Error::not_found("no such endpoint"))
}

pub async fn method_not_allowed() -> Response {
    let e = Error::new(ErrorCode::InvalidRequest, "method not allowed on this endpoint");
    (StatusCode::METHOD_NOT_ALLOWED, axum::Json(e.body())).into_response()
}

/// A JSON object body, deserialized into `T`. Only an object is accepted (serde would also take
/// an array for a struct); wrong type, bad JSON or too large are JSON errors.
pub struct ApiJson<T>(pub T);

impl<S: Send + Sync, T: serde::de::DeserializeOwned> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let axum::Json(object) = axum::Json::<serde_json::Map<String, serde_json::Value>>::from_request(req, state)
            .await
            .map_err(|r: JsonRejection| rejection(r.status(), r.body_text()))?;
        serde_json::from_value(serde_json::Value::Object(object))
            .map(ApiJson)
            .map_err(|e| ApiError(Error::invalid(format!("invalid body: {e}"))))
    }
}

/// A list's page size: the default when none is asked for, otherwise 1 to the configured maximum.
pub fn page_limit(asked: Option<usize>, limits: &selfcloud_core::config::Limits) -> Result<usize, ApiError> {
    let limit = asked.unwrap_or(limits.list_default);
    if limit == 0 || limit > limits.list_max {
        return Err(ApiError(Error::invalid(format!("limit must be 1..={}", limits.list_max))));
    }
    Ok(limit)
}

/// A handler that panicked answers the contract's 500 (the panic goes to the log), not a
/// dropped connection.
pub fn panicked(panic: Box<dyn std::any::Any + Send + 'static>) -> Response {
    let what = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".into());
    ApiError(Error::internal(format!("handler panicked: {what}"))).into_response()
}

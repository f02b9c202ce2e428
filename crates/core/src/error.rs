//! The one error type every crate returns, mapped to the HTTP contract's JSON error.

use http::StatusCode;
use serde::{Deserialize, Serialize};
use std::time::Duration;

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The error codes of the HTTP contract, each with its one status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    Conflict,
    PreconditionFailed,
    TooLarge,
    UnsupportedMediaType,
    RateLimited,
    BudgetExceeded,
    QuotaExceeded,
    /// A disk is full (the instance's own limit, or the server's): nothing was written.
    DiskFull,
    Unavailable,
    /// An outside host the instance asked (an upstream LLM provider) failed or refused it.
    UpstreamFailed,
    Internal,
}

impl ErrorCode {
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::InvalidRequest => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthenticated => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound => StatusCode::NOT_FOUND,
            ErrorCode::Conflict => StatusCode::CONFLICT,
            ErrorCode::PreconditionFailed => StatusCode::PRECONDITION_FAILED,
            ErrorCode::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ErrorCode::RateLimited | ErrorCode::BudgetExceeded => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::QuotaExceeded | ErrorCode::DiskFull => StatusCode::INSUFFICIENT_STORAGE,
            ErrorCode::Unavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::UpstreamFailed => StatusCode::BAD_GATEWAY,
            ErrorCode::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidRequest => "invalid_request",
            ErrorCode::Unauthenticated => "unauthenticated",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Conflict => "conflict",
            ErrorCode::PreconditionFailed => "precondition_failed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::BudgetExceeded => "budget_exceeded",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::DiskFull => "disk_full",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::UpstreamFailed => "upstream_failed",
            ErrorCode::Internal => "internal",
        }
    }
}

/// An error with the code the client sees and a message safe to show them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct Error {
    pub code: ErrorCode,
    pub message: String,
    /// Set on `rate_limited` (and `unavailable`) so the gateway can answer `Retry-After`.
    pub retry_after: Option<Duration>,
    /// What went wrong inside, for the operator's log; never sent to the client.
    pub detail: Option<String>,
}

impl Error {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Error { code, message: message.into(), retry_after: None, detail: None }
    }
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidRequest, message)
    }
    pub fn unauthenticated(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthenticated, message)
    }
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::NotFound, message)
    }
    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Conflict, message)
    }
    /// An internal failure: the detail goes to the log, the client sees a generic message.
    pub fn internal(detail: impl std::fmt::Display) -> Self {
        Error { detail: Some(detail.to_string()), ..Self::new(ErrorCode::Internal, "internal error") }
    }
    pub fn rate_limited(retry_after: Duration) -> Self {
        Error { retry_after: Some(retry_after), ..Self::new(ErrorCode::RateLimited, "too many requests") }
    }
    /// A token budget is spent until `retry_after` from now, when its window resets.
    pub fn budget_exceeded(message: impl Into<String>, retry_after: Duration) -> Self {
        Error { retry_after: Some(retry_after), ..Self::new(ErrorCode::BudgetExceeded, message) }
    }
    /// The service cannot answer now; the caller may retry after `retry_after`.
    pub fn unavailable(message: impl Into<String>, retry_after: Duration) -> Self {
        Error { retry_after: Some(retry_after), ..Self::new(ErrorCode::Unavailable, message) }
    }
    /// A write found no room on its disk; `detail` (for the log) says which file. Nothing of the
    /// write happened, so the caller may retry once room is made.
    pub fn disk_full(detail: impl std::fmt::Display) -> Self {
        Error {
            detail: Some(detail.to_string()),
            ..Self::new(ErrorCode::DiskFull, "the disk is full: nothing was written; try again later")
        }
    }
    /// Whether an I/O error means there is no room left (no space, or over a quota).
    pub fn is_no_space(e: &std::io::Error) -> bool {
        // ENOSPC and EDQUOT.
        matches!(e.kind(), std::io::ErrorKind::StorageFull | std::io::ErrorKind::QuotaExceeded)
    }
    pub fn status(&self) -> StatusCode {
        self.code.status()
    }
    /// Reads back an error that crossed a process boundary as [`Error::body`] (the wire error
    /// of the instance protocol); `None` when `body` is not one.
    pub fn from_body(body: &[u8], retry_after: Option<Duration>) -> Option<Error> {
        #[derive(Deserialize)]
        struct Wire {
            error: WireError,
        }
        #[derive(Deserialize)]
        struct WireError {
            code: ErrorCode,
            message: String,
        }
        let wire: Wire = serde_json::from_slice(body).ok()?;
        Some(Error { retry_after, ..Error::new(wire.error.code, wire.error.message) })
    }
    /// The JSON body of the contract: `{"error":{"code","message"}}`.
    pub fn body(&self) -> serde_json::Value {
        serde_json::json!({"error": {"code": self.code.as_str(), "message": self.message}})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_contract_shape() {
        let e = Error::conflict("username taken");
        assert_eq!(e.status(), StatusCode::CONFLICT);
        assert_eq!(e.body(), serde_json::json!({"error":{"code":"conflict","message":"username taken"}}));
        assert_eq!(Error::rate_limited(Duration::from_secs(1)).status().as_u16(), 429);
        assert_eq!(ErrorCode::QuotaExceeded.status().as_u16(), 507);
        let full = Error::disk_full("write /x: No space left on device");
        assert_eq!((full.status().as_u16(), full.code.as_str()), (507, "disk_full"));
        assert!(Error::is_no_space(&std::io::Error::from_raw_os_error(28)));
        assert!(!Error::is_no_space(&std::io::Error::from_raw_os_error(5)));
        let spent = Error::budget_exceeded("spent", Duration::from_secs(60));
        assert_eq!((spent.status().as_u16(), spent.code.as_str()), (429, "budget_exceeded"));
    }

    #[test]
    fn errors_cross_the_wire_and_come_back_the_same() {
        let e = Error::new(ErrorCode::QuotaExceeded, "over quota");
        let bytes = serde_json::to_vec(&e.body()).unwrap();
        assert_eq!(Error::from_body(&bytes, None), Some(e));
        // The detail never crosses: it is for the log of the side that failed.
        let internal = Error::internal("disk on fire");
        let back = Error::from_body(&serde_json::to_vec(&internal.body()).unwrap(), None).unwrap();
        assert_eq!((back.code, back.detail), (ErrorCode::Internal, None));
        assert_eq!(Error::from_body(b"<html>", None), None);
        assert_eq!(Error::from_body(br#"{"error":{"code":"no_such_code","message":"x"}}"#, None), None);
    }
}

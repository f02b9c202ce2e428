//! The HTTP handlers, one module per area of the contract. Handlers are thin: parse into
//! `core` types, check the caller, call control or forward to the instance, shape the answer.
//! The instance's own routes are not written here: `forward` serves what its parts declare.

pub mod accounts;
pub mod admin;
pub mod apps;
pub mod forward;

use serde::Serialize;

/// The JSON error body, for the OpenAPI document.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// One of: invalid_request, unauthenticated, forbidden, not_found, conflict,
    /// precondition_failed, too_large, unsupported_media_type, rate_limited, budget_exceeded,
    /// quota_exceeded, disk_full, unavailable, upstream_failed (502: an outside host the instance
    /// asked, such as an upstream LLM provider, failed), internal.
    pub code: String,
    pub message: String,
}

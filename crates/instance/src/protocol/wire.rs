//! The bodies that cross the boundary with a shape of their own: what the instance answers and
//! control sends, read by the gateway, control and the SDKs' documentation alike. Handlers build
//! them; nothing outside the instance reaches into a handler's module for a type.

use crate::{AuditEntry, AuditRecord};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A record written: its new rev (also its `ETag`).
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct PutAnswer {
    pub rev: String,
}

/// A page of a collection, asked for.
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

/// A page of a collection; `cursor` is `null` on the last.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ListAnswer {
    pub records: Vec<ListedRecord>,
    pub cursor: Option<String>,
}

/// An archive imported: what the instance holds now.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct Imported {
    pub records: u64,
    pub bytes: u64,
    pub quota_bytes: u64,
}

/// A page of the access log, asked for.
#[derive(Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Entries older than this sequence number (from a previous page's `next_before`).
    pub before: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

/// A page of the access log, newest first.
#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<AuditRecord>,
    pub next_before: Option<u64>,
}

/// Entries control appends to the access log (`POST /system/audit`). Borrowed by the sender,
/// which keeps its entries for a retry should the write fail.
#[derive(Serialize, Deserialize)]
pub struct AuditBatch<'a> {
    pub entries: std::borrow::Cow<'a, [AuditEntry]>,
    /// Entries past this many newest are dropped.
    pub keep: u64,
}

/// A new quota (`PUT /system/quota`).
#[derive(Serialize, Deserialize)]
pub struct Quota {
    pub quota_bytes: u64,
}

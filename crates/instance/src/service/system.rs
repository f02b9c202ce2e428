//! Calls only control makes (`/system/…`: usage, quota, integrity, appending to the access log),
//! and the owner's read of that log.

use super::{Ctx, S};
use crate::api::{ApiJson, ApiQuery, ApiResult};
use crate::protocol::Need;
use crate::{AuditEntry, AuditRecord, IntegrityReport, StorageUsage};
use axum::http::StatusCode;
use axum::Json;
use serde::{Deserialize, Serialize};

pub(crate) async fn usage(s: S, ctx: Ctx) -> ApiResult<Json<StorageUsage>> {
    ctx.require(&Need::System)?;
    Ok(Json(s.local.storage_usage().await?))
}

#[derive(Serialize, Deserialize)]
pub struct Quota {
    pub quota_bytes: u64,
}

pub(crate) async fn set_quota(s: S, ctx: Ctx, ApiJson(q): ApiJson<Quota>) -> ApiResult<StatusCode> {
    ctx.require(&Need::System)?;
    s.local.set_quota(q.quota_bytes).await?;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn verify(s: S, ctx: Ctx) -> ApiResult<Json<IntegrityReport>> {
    ctx.require(&Need::System)?;
    Ok(Json(s.local.verify().await?))
}

/// Borrowed by the sender, which keeps its entries for a retry should the write fail.
#[derive(Serialize, Deserialize)]
pub struct AuditBatch<'a> {
    pub entries: std::borrow::Cow<'a, [AuditEntry]>,
    /// Entries past this many newest are dropped.
    pub keep: u64,
}

pub(crate) async fn append_audit(
    s: S,
    ctx: Ctx,
    ApiJson(batch): ApiJson<AuditBatch<'static>>,
) -> ApiResult<StatusCode> {
    ctx.require(&Need::System)?;
    #[cfg(feature = "attack-probes")]
    if s.audit_unwritable.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(selfcloud_core::Error::disk_full("the access log is unwritable (attack probe)").into());
    }
    s.local.append_audit(&batch.entries, batch.keep).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
pub struct AuditQuery {
    /// Entries older than this sequence number (from a previous page's `next_before`).
    pub before: Option<u64>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<usize>,
}

#[derive(Serialize, Deserialize, utoipa::ToSchema)]
pub struct AuditPage {
    #[schema(value_type = Vec<Object>)]
    pub entries: Vec<AuditRecord>,
    pub next_before: Option<u64>,
}

pub(crate) async fn read_audit(s: S, ctx: Ctx, ApiQuery(q): ApiQuery<AuditQuery>) -> ApiResult<Json<AuditPage>> {
    ctx.require(&Need::Owner)?;
    let limit = s.settings.page_limit(q.limit)?;
    let entries = s.local.read_audit(q.before, limit).await?;
    let next_before = if entries.len() == limit { entries.last().map(|e| e.seq) } else { None };
    Ok(Json(AuditPage { entries, next_before }))
}

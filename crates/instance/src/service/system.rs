//! Calls only control makes (`/system/…`: usage, quota, integrity, appending to the access log),
//! and the owner's read of that log.

use super::S;
use crate::api::{ApiJson, ApiQuery, ApiResult};
use crate::part::{query_of, schema_of, Access, Answer, Body, Part, Route};
use crate::protocol::wire::{AuditBatch, AuditPage, AuditQuery, Quota};
use crate::{IntegrityReport, StorageUsage};
use axum::http::{Method, StatusCode};
use axum::routing::{get, post, put};
use axum::Json;

/// Control's own calls: never forwarded, and no such routes for anyone else.
pub static PART: Part = Part {
    name: "system",
    about: "Control's calls on the instance: usage, quota, integrity, appending to the access log.",
    routes: &[
        Route::new(Method::GET, "/system/usage", Access::System, "Records and bytes against the quota.", || get(usage)),
        Route::new(Method::PUT, "/system/quota", Access::System, "A new quota.", || put(set_quota))
            .body(Body::Json)
            .answer(Answer::Empty),
        Route::new(Method::POST, "/system/verify", Access::System, "Every record read back and checked.", || {
            post(verify)
        }),
        Route::new(Method::POST, "/system/audit", Access::System, "Entries appended to the access log.", || {
            post(append_audit)
        })
        .body(Body::Json)
        .answer(Answer::Empty),
    ],
    collections: &[],
    sealed: &[],
    channels: &[],
};

/// The owner's access log (control writes it, through `/system/audit`).
pub static AUDIT: Part = Part {
    name: "audit",
    about: "The owner's access log: every call on the instance and every change to the account, allowed or refused.",
    routes: &[Route::new(
        Method::GET,
        "/v1/audit",
        Access::Owner,
        "The access log, newest first, a page at a time.",
        || get(read_audit),
    )
    .reads_access_log()
    .query(query_of::<AuditQuery>)
    .answer_schema(schema_of::<AuditPage>)
    .errors(&[403])],
    collections: &[],
    sealed: &[],
    channels: &[],
};

async fn usage(s: S) -> ApiResult<Json<StorageUsage>> {
    Ok(Json(s.local.storage_usage().await?))
}

async fn set_quota(s: S, ApiJson(q): ApiJson<Quota>) -> ApiResult<StatusCode> {
    s.local.set_quota(q.quota_bytes).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn verify(s: S) -> ApiResult<Json<IntegrityReport>> {
    Ok(Json(s.local.verify().await?))
}

async fn append_audit(s: S, ApiJson(batch): ApiJson<AuditBatch<'static>>) -> ApiResult<StatusCode> {
    #[cfg(feature = "attack-probes")]
    if s.audit_unwritable.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(selfcloud_core::Error::disk_full("the access log is unwritable (attack probe)").into());
    }
    s.local.append_audit(&batch.entries, batch.keep).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn read_audit(s: S, ApiQuery(q): ApiQuery<AuditQuery>) -> ApiResult<Json<AuditPage>> {
    let limit = s.settings.page_limit(q.limit)?;
    let entries = s.local.read_audit(q.before, limit).await?;
    let next_before = if entries.len() == limit { entries.last().map(|e| e.seq) } else { None };
    Ok(Json(AuditPage { entries, next_before }))
}

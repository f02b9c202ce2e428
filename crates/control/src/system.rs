//! Control's own calls on an instance (`/system/…`: usage, quota, integrity, appending to the
//! access log), made here and nowhere else: the gateway asks control, never the instance. Each
//! call carries control's context (`Actor::System`), which no gateway call can carry, and its
//! answer is bounded in time and size: an instance cannot stall control or make it buffer.

use crate::Control;
use http::{Method, Request, StatusCode};
use http_body_util::BodyExt;
use selfcloud_core::{Error, InstanceId, Result};
use selfcloud_instance::protocol::wire::{AuditBatch, Quota};
use selfcloud_instance::transport::Body;
use selfcloud_instance::{AuditEntry, CallContext, InstanceClient, IntegrityReport, StorageUsage};
use serde::de::DeserializeOwned;
use std::time::Duration;

/// How long control's own calls wait for an answer.
const SYSTEM_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest answer to a call of control's own (usage, a verify report).
const SYSTEM_ANSWER_MAX: usize = 1 << 20;

/// Control's client of one instance's `/system` routes.
pub(crate) struct System<'a>(pub &'a InstanceClient);

impl System<'_> {
    /// A call of control's own, with a JSON answer (`None` for 204).
    async fn call<T: DeserializeOwned>(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Option<T>> {
        let now_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let ctx = CallContext::system(now_ms, SYSTEM_TIMEOUT.as_millis() as u64);
        let mut req = Request::builder().method(method).uri(path);
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let req = req.body(body.map_or_else(Body::empty, Body::from)).map_err(Error::internal)?;
        let resp = self.0.call(&ctx, req).await?;
        let status = resp.status();
        let body = http_body_util::Limited::new(resp.into_body(), SYSTEM_ANSWER_MAX);
        let bytes = tokio::time::timeout(SYSTEM_TIMEOUT, body.collect())
            .await
            .map_err(|_| Error::unavailable("the instance's answer did not end in time", Duration::from_secs(1)))?
            .map_err(Error::internal)?
            .to_bytes();
        if !status.is_success() {
            return Err(Error::from_body(&bytes, None)
                .unwrap_or_else(|| Error::internal(format!("instance answered {status} without an error body"))));
        }
        if status == StatusCode::NO_CONTENT {
            return Ok(None);
        }
        serde_json::from_slice(&bytes).map(Some).map_err(Error::internal)
    }

    pub async fn storage_usage(&self) -> Result<StorageUsage> {
        self.call(Method::GET, "/system/usage", None).await?.ok_or_else(|| Error::internal("no usage"))
    }

    pub async fn set_quota(&self, quota_bytes: u64) -> Result<()> {
        let body = serde_json::to_vec(&Quota { quota_bytes }).map_err(Error::internal)?;
        self.call::<()>(Method::PUT, "/system/quota", Some(body)).await.map(drop)
    }

    pub async fn verify(&self) -> Result<IntegrityReport> {
        self.call(Method::POST, "/system/verify", None).await?.ok_or_else(|| Error::internal("no report"))
    }

    pub async fn append_audit(&self, entries: &[AuditEntry], keep: u64) -> Result<()> {
        let body = serde_json::to_vec(&AuditBatch { entries: entries.into(), keep }).map_err(Error::internal)?;
        self.call::<()>(Method::POST, "/system/audit", Some(body)).await.map(drop)
    }
}

impl Control {
    /// Records and bytes the instance holds against its quota (waking it).
    pub async fn storage_usage(&self, id: InstanceId) -> Result<StorageUsage> {
        System(&self.instance(id).await?).storage_usage().await
    }

    /// Appends entries to the instance's access log, keeping its newest `keep` (waking it).
    pub async fn append_audit(&self, id: InstanceId, entries: &[AuditEntry], keep: u64) -> Result<()> {
        System(&self.instance(id).await?).append_audit(entries, keep).await
    }
}

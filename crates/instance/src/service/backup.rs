//! The owner's backups (`selfcloud-backup`): targets they add under a passphrase only they know,
//! snapshots taken on request or on control's schedule, each proved by a restore drill. The
//! instance cuts and seals everything itself; what leaves goes out on the egress channel, so
//! it reaches only what control carries it to (a directory under the operator's backup root).
//! Each target's backup key is kept in the sealed `_backup` collection, in no export, so
//! scheduled snapshots need no passphrase; the passphrase and the recovery key are never kept.

use super::{Ctx, Shared, S};
use crate::api::{json_body, ApiBytes, ApiResult};
use crate::local::Local;
use crate::part::{Access, Answer, Part, Route};
use async_trait::async_trait;
use axum::extract::Path;
use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::Json;
use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use selfcloud_backup::target::{RemoteDir, S3Config, S3Target};
use selfcloud_backup::{BackupKey, Manifest, Progress, Repo, Secret, Target};
use selfcloud_core::{Collection, Error, ErrorCode, RecordKey, Result};
use selfcloud_store::{DataKey, Precondition};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;
use zeroize::Zeroizing;

pub static PART: Part = Part {
    name: "backup",
    about: "Encrypted backups of the whole instance to targets the owner picks, under a passphrase only they know, each snapshot proved by a restore drill.",
    routes: &[
        Route::new(
            Method::POST,
            "/v1/backup/targets",
            Access::Owner,
            "Adds a backup target: `{kind: \"directory\", passphrase}` (a directory the server's operator set aside for backups, this instance's own part of it) or `{kind: \"s3\", passphrase, endpoint, bucket, region, access_key_id, secret_access_key, prefix?, path_style?}` (an S3-compatible bucket whose origin the operator allow-lists; the key is kept sealed here and signs each request, never shown again). A new target is set up with a new backup key, wrapped under the passphrase and under a recovery key shown in this answer only; one that already holds this user's backup is opened with the passphrase (owner only).",
            || post(add_target),
        )
        .body(crate::part::Body::Json)
        .answer(Answer::Created)
        .errors(&[400, 403, 409, 502, 503]),
        Route::new(Method::GET, "/v1/backup/targets", Access::Owner, "The backup targets, with their last snapshot and last verified restore (owner only).", || get(list_targets))
            .errors(&[403]),
        Route::new(
            Method::DELETE,
            "/v1/backup/targets/{target}",
            Access::Owner,
            "Forgets a target and its key here; what it holds stays there, and opens again with the passphrase (owner only).",
            || delete(remove_target),
        )
        .answer(Answer::Empty)
        .errors(&[403]),
        Route::new(
            Method::POST,
            "/v1/backup/snapshots",
            Access::Owner,
            "Takes a snapshot now to every target (or `{target}`): a copy of the instance as of one moment, sealed and sent; only what its last snapshot lacks goes. Each is then restored into scratch, opened and checked whole (owner only).",
            || post(take_snapshots),
        )
        .body(crate::part::Body::Json)
        .answer(Answer::Created)
        .errors(&[400, 403, 404, 502, 503, 507]),
        Route::new(Method::GET, "/v1/backup/targets/{target}/snapshots", Access::Owner, "The snapshots a target holds, oldest first (owner only).", || get(list_snapshots))
            .errors(&[403, 404, 502, 503]),
    ],
    collections: &[],
    sealed: &[COLLECTION],
    channels: &[crate::protocol::broker::Channel::Egress],
};

/// Where targets and their keys are kept, a record per target.
pub(crate) const COLLECTION: &str = "backup";
/// Targets one instance may have: one of each kind (a target's id is its kind).
const MAX_TARGETS: usize = 2;
/// The largest answer read from a target (a list of every pack of a large backup).
const TARGET_ANSWER_BYTES: usize = 16 << 20;

/// A target, as the owner names it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum Spec {
    /// This instance's subdirectory of the operator's backup root, written by control.
    Directory,
    /// An S3-compatible bucket the owner holds a key to; its origin must be on the server's
    /// egress allow-list.
    S3(S3Config),
}

impl Spec {
    fn id(&self) -> &'static str {
        match self {
            Spec::Directory => "directory",
            Spec::S3(_) => "s3",
        }
    }
}

/// A target as kept (sealed) in the store.
#[derive(Clone, Serialize, Deserialize)]
struct Kept {
    id: String,
    spec: Spec,
    added_at_ms: u64,
    backup_key: String,
    #[serde(default)]
    last: Option<Last>,
    #[serde(default)]
    last_error: Option<String>,
}

/// The last snapshot to a target, and its drill.
#[derive(Clone, Serialize, Deserialize)]
struct Last {
    snapshot: String,
    taken_at_ms: u64,
    bytes: u64,
    verified_at_ms: Option<u64>,
}

impl Kept {
    fn shown(&self) -> Value {
        let mut shown = json!({
            "id": self.id,
            "kind": self.spec.id(),
            "added_at_ms": self.added_at_ms,
            "last_snapshot": self.last.as_ref().map(|l| json!({"id": l.snapshot, "taken_at_ms": l.taken_at_ms, "bytes": l.bytes})),
            "last_verified_at_ms": self.last.as_ref().and_then(|l| l.verified_at_ms),
            "last_error": self.last_error,
        });
        // Never the secret key.
        if let Spec::S3(config) = &self.spec {
            shown["s3"] = config.shown();
        }
        shown
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TakeSnapshots {
    #[serde(default)]
    target: Option<String>,
}

fn collection() -> Collection {
    Collection::internal(COLLECTION)
}

fn record_key(id: &str) -> Result<RecordKey> {
    RecordKey::parse(id).map_err(|_| Error::not_found("no such backup target"))
}

async fn targets(s: &Shared) -> Result<Vec<Kept>> {
    let page = s.local.list_records(&collection(), "", MAX_TARGETS, 1 << 20, None).await?;
    page.records.iter().map(|r| serde_json::from_slice(&r.value).map_err(Error::internal)).collect()
}

async fn keep(s: &Shared, kept: &Kept) -> Result<()> {
    let value = serde_json::to_vec(kept).map_err(Error::internal)?;
    s.local.put_record(&collection(), &record_key(&kept.id)?, value, Precondition::None).await.map(drop)
}

/// The objects of a target, reached the one way this instance has out.
fn reach(s: &Arc<Shared>, spec: &Spec) -> Result<Arc<dyn Target>> {
    Ok(match spec {
        Spec::Directory => Arc::new(RemoteDir::new(Egress(s.clone()))),
        Spec::S3(config) => Arc::new(S3Target::new(config, Egress(s.clone()))?),
    })
}

/// `{kind, passphrase, ...}`: the passphrase, and the target the rest names.
fn read_add(headers: &HeaderMap, body: &[u8]) -> Result<(Zeroizing<String>, Spec)> {
    let mut fields: serde_json::Map<String, Value> = json_body(headers, body)?;
    let passphrase = match fields.remove("passphrase") {
        Some(Value::String(p)) => Zeroizing::new(p),
        _ => return Err(Error::invalid("passphrase: the backup passphrase, a string")),
    };
    let spec = serde_json::from_value(Value::Object(fields)).map_err(|e| Error::invalid(format!("the target: {e}")))?;
    Ok((passphrase, spec))
}

/// Requests on the egress channel, their answers read whole (bounded).
struct Egress(Arc<Shared>);

#[async_trait]
impl selfcloud_backup::target::Transport for Egress {
    async fn send(&self, request: http::Request<Bytes>) -> Result<http::Response<Bytes>> {
        let egress = self.0.egress.as_ref().ok_or_else(|| {
            Error::unavailable("this instance has no way out to a backup target", Duration::from_secs(60))
        })?;
        let answer = egress.send(request.map(Full::new)).await?;
        let (head, body) = answer.into_parts();
        let bytes = Limited::new(body, TARGET_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|_| Error::new(ErrorCode::UpstreamFailed, "the backup target's answer broke off or ran too long"))?
            .to_bytes();
        Ok(http::Response::from_parts(head, bytes))
    }
}

async fn add_target(s: S, ctx: Ctx, headers: HeaderMap, ApiBytes(body): ApiBytes) -> ApiResult<Response> {
    let (passphrase, spec) = read_add(&headers, &body)?;
    selfcloud_backup::keys::check_passphrase(&passphrase)?;
    // One add (or snapshot) at a time: two adds at once would set up two keys at one target.
    let _one_at_a_time = s.backup_runs.lock().await;
    let kept = targets(&s).await?;
    if kept.iter().any(|t| t.id == spec.id()) {
        return Err(Error::conflict("that target is added already; remove it first to name another").into());
    }
    let target = reach(&s, &spec)?;
    // A target holding this user's backup (after a move, or a lost instance) is opened, not set
    // up again over it.
    let (key, recovery) = if target.list("keys").await?.is_empty() {
        let (_, key, recovery) = Repo::init(target, &passphrase, s.settings.backup_kdf).await?;
        (key, Some(recovery.to_string()))
    } else {
        (Repo::unlock(target.as_ref(), &Secret::Passphrase(passphrase)).await?, None)
    };
    let kept = Kept {
        id: spec.id().to_owned(),
        spec,
        added_at_ms: ctx.0.now_ms,
        backup_key: key.to_hex().to_string(),
        last: None,
        last_error: None,
    };
    keep(&s, &kept).await?;
    tracing::info!(instance = %s.settings.id, target = %kept.id, "backup target added");
    let mut shown = kept.shown();
    shown["recovery_key"] = json!(recovery);
    Ok((StatusCode::CREATED, Json(shown)).into_response())
}

async fn list_targets(s: S) -> ApiResult<Response> {
    let shown: Vec<Value> = targets(&s).await?.iter().map(Kept::shown).collect();
    Ok(Json(json!({"targets": shown})).into_response())
}

async fn remove_target(s: S, Path(id): Path<String>) -> ApiResult<Response> {
    match s.local.delete_record(&collection(), &record_key(&id)?, Precondition::None).await {
        Ok(()) => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) if e.code == ErrorCode::NotFound => Ok(StatusCode::NO_CONTENT.into_response()),
        Err(e) => Err(e.into()),
    }
}

async fn take_snapshots(s: S, ctx: Ctx, headers: HeaderMap, ApiBytes(body): ApiBytes) -> ApiResult<Response> {
    let take: TakeSnapshots = if body.is_empty() { TakeSnapshots::default() } else { json_body(&headers, &body)? };
    let mut chosen: Vec<Kept> =
        targets(&s).await?.into_iter().filter(|t| take.target.as_ref().is_none_or(|id| *id == t.id)).collect();
    if chosen.is_empty() {
        return Err(Error::not_found("no such backup target; add one first").into());
    }
    let mut taken = Vec::new();
    for kept in &mut chosen {
        let outcome = snapshot(&s, kept, ctx.0.now_ms).await;
        kept.last_error = outcome.as_ref().err().map(|e| e.message.clone());
        keep(&s, kept).await?;
        taken.push(outcome?);
    }
    Ok((StatusCode::CREATED, Json(json!({"snapshots": taken}))).into_response())
}

/// One snapshot to one target, then its drill; `kept` learns of both.
async fn snapshot(s: &Arc<Shared>, kept: &mut Kept, now_ms: u64) -> Result<Value> {
    let _one_at_a_time = s.backup_runs.lock().await;
    let repo = Repo::with_key(reach(s, &kept.spec)?, &BackupKey::from_hex(&kept.backup_key)?);
    // The last snapshot's chunks are not sent again; if it is gone, everything is.
    let parent = match &kept.last {
        Some(last) => repo.manifest(&last.snapshot).await.ok(),
        None => None,
    };
    let copy = s.local.snapshot_copy().await?;
    let account = json!({"instance": s.settings.id.to_string()}).to_string();
    let data_key = *s.local.data_key().as_bytes();
    let progress = Arc::new(Progress::default());
    let manifest =
        repo.snapshot(&copy.path().join("copy"), account, data_key, now_ms, parent.as_ref(), progress).await?;
    drop(copy);
    // Only a snapshot that restored whole becomes the next one's parent.
    drill(s, &repo, &manifest).await?;
    kept.last = Some(Last {
        snapshot: manifest.id.clone(),
        taken_at_ms: now_ms,
        bytes: manifest.bytes(),
        verified_at_ms: Some(now_ms),
    });
    tracing::info!(instance = %s.settings.id, target = %kept.id, snapshot = %manifest.id, bytes = manifest.bytes(), "backup snapshot taken and verified");
    Ok(
        json!({"target": kept.id, "id": manifest.id, "taken_at_ms": now_ms, "bytes": manifest.bytes(), "verified": true}),
    )
}

/// Restores `manifest` into scratch inside the instance's directory, opens it under the key it
/// carries, and checks every record and log entry; the scratch goes whatever the outcome.
async fn drill(s: &Shared, repo: &Repo, manifest: &Manifest) -> Result<()> {
    let scratch = s.local.scratch()?;
    let into = scratch.path().join("restored");
    repo.restore(manifest, &into, Default::default()).await?;
    Local::check_restored(into, DataKey::from_bytes(manifest.data_key)).await.map_err(|e| {
        selfcloud_backup::damaged(format!("snapshot {} restored but did not open whole: {}", manifest.id, e.message))
    })?;
    Ok(())
}

async fn list_snapshots(s: S, Path(id): Path<String>) -> ApiResult<Response> {
    let kept =
        targets(&s).await?.into_iter().find(|t| t.id == id).ok_or_else(|| Error::not_found("no such backup target"))?;
    let repo = Repo::with_key(reach(&s, &kept.spec)?, &BackupKey::from_hex(&kept.backup_key)?);
    let shown: Vec<Value> = repo
        .snapshots()
        .await?
        .iter()
        .map(|m| json!({"id": m.id, "taken_at_ms": m.taken_at_ms, "bytes": m.bytes(), "files": m.files.len()}))
        .collect();
    Ok(Json(json!({"snapshots": shown})).into_response())
}

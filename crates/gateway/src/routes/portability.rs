//! The user's data leaves with them and comes back: `GET /v1/export` streams the instance as one
//! archive (see `selfcloud_instance::archive`), `POST /v1/import` restores one into an empty
//! instance. Both are the owner's alone.

use crate::auth::Caller;
use crate::error::ApiResult;
use crate::routes::ErrorBody;
use crate::state::AppState;
use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use selfcloud_core::{Error, ErrorCode};
use selfcloud_instance::archive::{self, ArchiveWriter};
use selfcloud_instance::{ImportLimits, Instance};
use serde::Serialize;
use std::sync::Arc;

/// Records and bytes of values read from the instance per step of an export.
const EXPORT_PAGE_RECORDS: usize = 1000;
const EXPORT_PAGE_BYTES: usize = 1 << 20;

/// Stream the whole instance as a tar archive: records per collection as JSON lines, then a
/// manifest with counts and SHA-256 of every part (owner only).
#[utoipa::path(get, path = "/v1/export", tag = "portability", security(("bearer" = [])),
    responses((status = 200, content_type = "application/x-tar", body = Vec<u8>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn export(State(s): State<Arc<AppState>>, caller: Caller) -> ApiResult<Response> {
    caller.require_owner()?;
    let instance = s.control.instance(caller.token.instance_id).await?;
    let profile = s.control.profile(caller.token.user_id).await?;
    let now = s.clock.now();
    let state = ExportState {
        instance,
        writer: Some(ArchiveWriter::new(now, archive::PART_BYTES)),
        cursor: None,
        scanned: false,
    };
    let body = Body::from_stream(futures_util::stream::try_unfold(state, |st| async move {
        let out = next_chunk(st).await;
        if let Err(e) = &out {
            // The status line has gone out: the client sees a cut-off archive, which no import takes.
            tracing::error!(error = %e, "export failed part-way");
        }
        out
    }));
    let disposition = format!("attachment; filename=\"selfcloud-{}-{now}.tar\"", profile.username);
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(archive::CONTENT_TYPE)),
        (header::CONTENT_DISPOSITION, HeaderValue::from_str(&disposition).map_err(Error::internal)?),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((headers, body).into_response())
}

struct ExportState {
    instance: Arc<dyn Instance>,
    /// `None` once the archive is finished.
    writer: Option<ArchiveWriter>,
    cursor: Option<String>,
    scanned: bool,
}

/// The next bytes of the archive: reads pages until a part is full, or finishes the archive.
async fn next_chunk(mut st: ExportState) -> std::io::Result<Option<(Bytes, ExportState)>> {
    loop {
        let Some(mut writer) = st.writer.take() else { return Ok(None) };
        if st.scanned {
            let (rest, _) = writer.finish().map_err(std::io::Error::other)?;
            return Ok(Some((Bytes::from(rest), st)));
        }
        let page = st
            .instance
            .export_records(st.cursor.as_deref(), EXPORT_PAGE_RECORDS, EXPORT_PAGE_BYTES)
            .await
            .map_err(std::io::Error::other)?;
        (st.cursor, st.scanned) = (page.cursor.clone(), page.cursor.is_none());
        // Serialising and hashing a part is CPU work: off the async runtime.
        let (writer, ready) = tokio::task::spawn_blocking(move || {
            page.records.iter().try_for_each(|r| writer.push(r))?;
            let ready = writer.take();
            Ok::<_, Error>((writer, ready))
        })
        .await
        .map_err(std::io::Error::other)?
        .map_err(std::io::Error::other)?;
        st.writer = Some(writer);
        if !ready.is_empty() {
            return Ok(Some((Bytes::from(ready), st)));
        }
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct Imported {
    pub records: u64,
    pub bytes: u64,
    pub quota_bytes: u64,
}

/// Restore an export archive into this instance, which must hold no record. The archive is
/// checked whole first; then every record is written in one atomic step, or none is (owner only).
#[utoipa::path(post, path = "/v1/import", tag = "portability", security(("bearer" = [])),
    request_body(content = Vec<u8>, content_type = "application/x-tar"),
    responses((status = 200, body = Imported), (status = 400, body = ErrorBody), (status = 403, body = ErrorBody),
              (status = 409, body = ErrorBody), (status = 413, body = ErrorBody), (status = 415, body = ErrorBody),
              (status = 507, body = ErrorBody)))]
pub async fn import(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<Json<Imported>> {
    caller.require_owner()?;
    let media_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next());
    if !media_type.is_some_and(|t| t.trim().eq_ignore_ascii_case(archive::CONTENT_TYPE)) {
        let message = format!("an import is an export archive: send Content-Type: {}", archive::CONTENT_TYPE);
        return Err(Error::new(ErrorCode::UnsupportedMediaType, message).into());
    }
    let max_bytes = s.limits.max_import_bytes as u64;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes) {
        return Err(Error::new(ErrorCode::TooLarge, format!("an import is at most {max_bytes} bytes")).into());
    }
    let instance = s.control.instance(caller.token.instance_id).await?;
    // The body streams into the instance, which spools and checks it; it is never held here.
    let stream = body.into_data_stream().map(|chunk| chunk.map_err(std::io::Error::other));
    let limits = ImportLimits { max_bytes, max_value_bytes: s.limits.max_value_bytes };
    let usage = instance.import_archive(Box::pin(stream), limits).await?;
    tracing::info!(instance = %caller.token.instance_id, records = usage.records, "archive imported");
    Ok(Json(Imported { records: usage.records, bytes: usage.bytes, quota_bytes: usage.quota_bytes }))
}

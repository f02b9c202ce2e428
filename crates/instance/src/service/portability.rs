//! The user's data leaves with them and comes back: `GET /v1/export` streams the instance as one
//! archive (see `crate::archive`), `POST /v1/import` restores one into an empty instance. Both
//! are the owner's alone. The archive is written here, inside the instance, and streams out
//! through whatever carries the answer; the gateway only names the file.

use super::{Ctx, S};
use crate::api::ApiResult;
use crate::archive::{self, ArchiveWriter};
use crate::part::{schema_of, Access, Answer, Part, Route};
use crate::protocol::wire::Imported;
use crate::ImportLimits;
use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Json;
use bytes::Bytes;
use futures_util::StreamExt;
use selfcloud_core::{Error, ErrorCode};
use std::sync::Arc;

pub static PART: Part = Part {
    name: "portability",
    about: "The user's data leaves with them and comes back: the whole instance as one archive.",
    routes: &[
        Route::new(
            Method::GET,
            "/v1/export",
            Access::Owner,
            "Stream the whole instance as a tar archive: records per collection as JSON lines, then a manifest with counts and SHA-256 of every part.",
            || get(export),
        )
        .answer(Answer::Archive)
        .errors(&[403]),
        Route::new(
            Method::POST,
            "/v1/import",
            Access::Owner,
            "Restore an export archive into this instance, which must hold no record. The archive is checked whole first; then every record is written in one atomic step, or none is.",
            || post(import),
        )
        .body(crate::part::Body::Archive)
        .answer_schema(schema_of::<Imported>)
        .errors(&[400, 403, 409, 413, 415, 507]),
    ],
    collections: &[],
    sealed: &[],
    channels: &[],
};

/// Records and bytes of values read from the store per step of an export.
const EXPORT_PAGE_RECORDS: usize = 1000;
const EXPORT_PAGE_BYTES: usize = 1 << 20;

async fn export(s: S, ctx: Ctx) -> ApiResult<Response> {
    let state = ExportState {
        shared: s.0.clone(),
        writer: Some(ArchiveWriter::new(ctx.0.now_ms / 1000, archive::PART_BYTES)),
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
    let headers = [
        (header::CONTENT_TYPE, HeaderValue::from_static(archive::CONTENT_TYPE)),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ];
    Ok((headers, body).into_response())
}

struct ExportState {
    shared: Arc<super::Shared>,
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
            .shared
            .local
            .export_records(st.cursor.as_deref(), EXPORT_PAGE_RECORDS, EXPORT_PAGE_BYTES)
            .await
            .map_err(std::io::Error::other)?;
        (st.cursor, st.scanned) = (page.cursor.clone(), page.cursor.is_none());
        // Serialising and hashing a part is CPU work: off the async runtime.
        let (writer, ready) = tokio::task::spawn_blocking(move || {
            // A sealed collection (a key) never leaves in an archive.
            let exported = page.records.iter().filter(|r| !super::is_sealed_collection(&r.collection));
            exported.into_iter().try_for_each(|r| writer.push(r))?;
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

async fn import(s: S, headers: HeaderMap, body: Body) -> ApiResult<Json<Imported>> {
    let media_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).and_then(|v| v.split(';').next());
    if !media_type.is_some_and(|t| t.trim().eq_ignore_ascii_case(archive::CONTENT_TYPE)) {
        let message = format!("an import is an export archive: send Content-Type: {}", archive::CONTENT_TYPE);
        return Err(Error::new(ErrorCode::UnsupportedMediaType, message).into());
    }
    let max_bytes = s.settings.max_import_bytes as u64;
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max_bytes) {
        return Err(Error::new(ErrorCode::TooLarge, format!("an import is at most {max_bytes} bytes")).into());
    }
    // The body streams into a spool file, checked there; it is never held in memory.
    let stream = body.into_data_stream().map(|chunk| chunk.map_err(std::io::Error::other));
    let limits = ImportLimits { max_bytes, max_value_bytes: s.settings.max_value_bytes };
    let usage = s.local.import_archive(Box::pin(stream), limits).await?;
    tracing::info!(instance = %s.settings.id, records = usage.records, "archive imported");
    super::assistant::after_write(&s);
    Ok(Json(Imported { records: usage.records, bytes: usage.bytes, quota_bytes: usage.quota_bytes }))
}

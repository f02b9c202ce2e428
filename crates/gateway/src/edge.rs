//! What every request passes first, in one middleware: its request id (the client's own if it is
//! short and plain, else one of ours), the headers every answer carries, and the request log.
//!
//! The per-request log line is at `debug` (`RUST_LOG=selfcloud_gateway=debug`): at `info` it was
//! a formatted line and a write to stderr for every request, the costliest step of a cached GET
//! measured from outside; who did what is the audit log's job. Failures (5xx) are always logged,
//! with the request id that ties them to the client's report.

use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::Response;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// Longest `x-request-id` a client may bring.
const MAX_REQUEST_ID: usize = 128;

/// Request ids for requests that bring none: a random prefix per process and a counter. Unique
/// and cheap (no syscall, unlike a random UUID per request); they need not be unguessable.
pub struct RequestIds {
    prefix: String,
    next: AtomicU64,
}

impl RequestIds {
    pub fn new() -> Self {
        RequestIds { prefix: format!("{:08x}", rand::random::<u32>()), next: AtomicU64::new(0) }
    }

    fn next(&self) -> HeaderValue {
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        HeaderValue::from_str(&format!("{}-{n:010}", self.prefix)).expect("hex digits and a dash")
    }
}

impl Default for RequestIds {
    fn default() -> Self {
        Self::new()
    }
}

/// A client's id is kept only if logs and the audit log can carry it as it is.
fn plain(id: &HeaderValue) -> bool {
    id.len() <= MAX_REQUEST_ID && id.as_bytes().iter().all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
}

pub async fn edge(State(ids): State<Arc<RequestIds>>, mut req: Request, next: Next) -> Response {
    let id = match req.headers().get(&X_REQUEST_ID) {
        Some(v) if plain(v) => v.clone(),
        _ => {
            let v = ids.next();
            req.headers_mut().insert(X_REQUEST_ID, v.clone());
            v
        }
    };
    let (method, uri, started) = (req.method().clone(), req.uri().clone(), Instant::now());
    let mut resp = next.run(req).await;
    let status = resp.status();
    let request_id = id.to_str().unwrap_or("-");
    let ms = started.elapsed().as_secs_f64() * 1e3;
    if status.is_server_error() {
        tracing::error!(%method, path = uri.path(), %status, request_id, ms, "request failed");
    } else {
        tracing::debug!(%method, path = uri.path(), %status, request_id, ms, "request");
    }
    let headers = resp.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(X_REQUEST_ID, id);
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_short_plain_ids_are_kept_and_ours_are_unique() {
        assert!(plain(&HeaderValue::from_static("trace-42.a_b:c")));
        assert!(!plain(&HeaderValue::from_static("a b")));
        assert!(!plain(&HeaderValue::from_str(&"x".repeat(129)).unwrap()));
        let ids = RequestIds::new();
        assert_ne!(ids.next(), ids.next());
        assert!(plain(&ids.next()));
    }
}

//! The transport of the instance protocol, written once for both runtimes: an [`InstanceClient`]
//! calls the instance's router directly when it lives in this process, or over HTTP/2 on the
//! Unix socket in its directory when it runs in its own ([`serve_socket`] is that side). HTTP/2
//! because one connection carries every concurrent call (no pool to keep), with per-stream flow
//! control: a slow reader of an export slows the instance's writer, nothing piles up between.

use crate::protocol::{self, CallContext, CONTEXT_HEADER};
pub use axum::body::Body;
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper_util::rt::{TokioExecutor, TokioIo};
use selfcloud_core::{Error, InstanceId, Result};
use std::any::Any;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The socket's file name inside the instance's directory.
pub const SOCKET_FILE: &str = "instance.sock";

/// Windows large enough that one stream can move a megabyte without waiting for a window update.
const STREAM_WINDOW: u32 = 1 << 20;
const CONNECTION_WINDOW: u32 = 8 << 20;
/// Beyond the call's own timeout, which the instance enforces, how long the caller waits.
const ANSWER_GRACE: Duration = Duration::from_secs(2);

#[derive(Clone)]
enum Transport {
    InProcess(axum::Router),
    Socket(hyper::client::conn::http2::SendRequest<Body>),
}

/// A handle on one instance, for one or more calls. While any clone of it, or any answer body it
/// gave, is alive, its lease is held: the runtime does not hibernate an instance in use.
#[derive(Clone)]
pub struct InstanceClient {
    id: InstanceId,
    transport: Transport,
    lease: Option<Arc<dyn Any + Send + Sync>>,
}

impl InstanceClient {
    /// The instance's router, called in this process.
    pub fn in_process(id: InstanceId, router: axum::Router) -> Self {
        InstanceClient { id, transport: Transport::InProcess(router), lease: None }
    }

    /// Connects to the instance serving on `socket`.
    pub async fn connect(id: InstanceId, socket: &Path) -> std::io::Result<Self> {
        let stream = tokio::net::UnixStream::connect(socket).await?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .handshake::<_, Body>(TokioIo::new(stream))
            .await
            .map_err(std::io::Error::other)?;
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(instance = %id, error = %e, "instance connection ended");
            }
        });
        Ok(InstanceClient { id, transport: Transport::Socket(sender), lease: None })
    }

    pub fn with_lease(mut self, lease: Arc<dyn Any + Send + Sync>) -> Self {
        self.lease = Some(lease);
        self
    }

    pub fn id(&self) -> InstanceId {
        self.id
    }

    /// Whether the connection is known to be gone (the process exited).
    pub fn is_closed(&self) -> bool {
        match &self.transport {
            Transport::InProcess(_) => false,
            Transport::Socket(s) => s.is_closed(),
        }
    }

    /// Sends one call. The request's path is the instance API's; its context header is set here.
    /// `Err` only when the instance could not be reached (it is restarting or crashed); any answer
    /// it gave, errors included, is `Ok`.
    pub async fn call(&self, ctx: &CallContext, mut req: Request<Body>) -> Result<Response<Body>> {
        let context = http::HeaderValue::from_str(&ctx.encode()).map_err(Error::internal)?;
        req.headers_mut().insert(CONTEXT_HEADER, context);
        // Only what the wire carries: in process as over the socket, nothing of the caller's
        // process (its request extensions) reaches the instance.
        req.extensions_mut().clear();
        let resp = match &self.transport {
            Transport::InProcess(router) => {
                use tower::ServiceExt;
                router.clone().oneshot(req).await.map_err(Error::internal)?
            }
            Transport::Socket(sender) => {
                // HTTP/2 needs an absolute URI; the authority names nothing (the socket is the address).
                let path = req.uri().path_and_query().map_or("/", |p| p.as_str());
                *req.uri_mut() = format!("http://instance{path}").parse().map_err(Error::internal)?;
                let mut sender = sender.clone();
                // A request body that fails on its way in (shorter than its Content-Length, its
                // client gone) resets the stream, which hyper reports like a lost instance: it is
                // the client's error, and no alarm for the operator.
                let body_failed = Arc::new(AtomicBool::new(false));
                let failed = body_failed.clone();
                let req = req.map(|body| {
                    Body::new(body.map_err(move |e| {
                        failed.store(true, Ordering::Relaxed);
                        e
                    }))
                });
                let unreachable = |e: hyper::Error| {
                    if body_failed.load(Ordering::Relaxed) {
                        tracing::debug!(instance = %self.id, error = %e, "the request's body did not arrive whole");
                        return protocol::body_incomplete();
                    }
                    tracing::warn!(instance = %self.id, error = %e, "instance unreachable");
                    protocol::unreachable(Duration::from_secs(1))
                };
                // The caller's own clock bounds the wait: an instance that never answers (or is
                // made not to) cannot hold a gateway task, or the audit writer, forever.
                let wait = Duration::from_millis(ctx.timeout_ms) + ANSWER_GRACE;
                let answered = tokio::time::timeout(wait, async {
                    sender.ready().await.map_err(unreachable)?;
                    sender.send_request(req).await.map_err(unreachable)
                })
                .await;
                match answered {
                    Ok(resp) => resp?.map(Body::new),
                    Err(_) => {
                        return Err(Error::unavailable("the instance did not answer in time", Duration::from_secs(1)))
                    }
                }
            }
        };
        Ok(match self.lease.clone() {
            // The lease rides on the body, so a streamed answer holds the instance awake.
            Some(lease) => resp.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _held = &lease;
                    frame
                }))
            }),
            None => resp,
        })
    }
}

/// Serves `router` on `listener` until `shutdown`, then lets calls under way finish (up to
/// `drain`) before returning.
pub async fn serve_socket(
    listener: tokio::net::UnixListener,
    router: axum::Router,
    shutdown: CancellationToken,
    drain: Duration,
) {
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    loop {
        let stream = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let service = hyper_util::service::TowerToHyperService::new(router.clone());
        let connection = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
            .max_concurrent_streams(1024)
            .serve_connection(TokioIo::new(stream), service);
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!("calls still under way after the drain time; stopping anyway");
    }
}

//! Control's end of instances' egress channels (`instance::protocol::egress`): the one way a
//! request an instance prepared reaches a host outside. Each channel is a stream pair; control
//! serves HTTP/2 on its end and sends each request on only when its origin is on the
//! operator's allow-list (`--egress-allow`), with its own client: no redirect followed, no proxy
//! from the environment, a bounded request, answer and wait. The instance never holds a socket
//! of the network, and what it names it cannot widen: a refusal is 403 with the protocol's mark.

use bytes::Bytes;
use futures_util::TryStreamExt;
use http::{HeaderMap, Request, Response};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Full, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper_util::rt::{TokioExecutor, TokioIo};
use selfcloud_core::{Error, ErrorCode, InstanceId, Result};
use selfcloud_instance::protocol::egress::{self, Origin, REFUSED_HEADER};
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

type Body = UnsyncBoxBody<Bytes, std::io::Error>;

/// The directory backup target's origin, which control answers itself.
static DIR_ORIGIN: std::sync::LazyLock<Origin> =
    std::sync::LazyLock::new(|| Origin::parse(selfcloud_backup::target::DIR_ORIGIN).expect("a valid origin"));

/// What the operator lets instances reach, and how much of it.
#[derive(Clone, Debug)]
pub struct EgressConfig {
    /// The origins instances may reach (`scheme://host:port`); empty: none.
    pub allow: Vec<Origin>,
    /// Longest wait for a connection, and for each next byte of an answer.
    pub connect_timeout: Duration,
    pub read_timeout: Duration,
    /// Largest request body an instance may send, and answer it may be sent.
    pub max_request_bytes: usize,
    pub max_answer_bytes: u64,
    /// Requests one channel may have under way.
    pub max_streams: u32,
    /// Where directory backup targets live (`--backup-dir-root`), each instance in its own
    /// subdirectory; `None`: no instance may back up to a directory here.
    pub backup_dir_root: Option<std::path::PathBuf>,
    /// The most bytes one instance's subdirectory of it may hold.
    pub backup_dir_max_bytes: u64,
}

impl Default for EgressConfig {
    fn default() -> Self {
        EgressConfig {
            allow: Vec::new(),
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(120),
            max_request_bytes: 4 << 20,
            max_answer_bytes: 16 << 20,
            max_streams: 16,
            backup_dir_root: None,
            backup_dir_max_bytes: 64 << 30,
        }
    }
}

/// The egress of this server: its rules and its one client.
pub struct Egress {
    config: EgressConfig,
    client: reqwest::Client,
    /// Each instance's one channel: a newer one ends the one before, so an instance asking
    /// again and again holds one channel, not one per ask.
    channels: parking_lot::Mutex<std::collections::HashMap<InstanceId, tokio::task::AbortHandle>>,
}

impl Egress {
    pub fn new(config: EgressConfig) -> Result<Egress> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .connect_timeout(config.connect_timeout)
            .read_timeout(config.read_timeout)
            .build()
            .map_err(|e| Error::internal(format!("the egress client: {e}")))?;
        Ok(Egress { config, client, channels: Default::default() })
    }

    /// A new channel for instance `id`: the instance's end; control serves the other.
    pub fn connect(self: &Arc<Self>, id: InstanceId) -> Result<OwnedFd> {
        let (ours, theirs) = selfcloud_sandbox::fds::pair(selfcloud_sandbox::fds::Pair::Stream)
            .map_err(|e| Error::internal(format!("an egress channel: {e}")))?;
        let stream = std::os::unix::net::UnixStream::from(ours);
        stream.set_nonblocking(true).map_err(Error::internal)?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(Error::internal)?;
        let (egress, streams) = (self.clone(), self.config.max_streams);
        let served = tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let egress = egress.clone();
                async move { Ok::<_, std::convert::Infallible>(egress.forward(id, request).await) }
            });
            let served = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .max_concurrent_streams(streams)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(e) = served {
                tracing::debug!(instance = %id, error = %e, "an egress channel ended");
            }
        });
        if let Some(older) = self.channels.lock().insert(id, served.abort_handle()) {
            older.abort();
        }
        Ok(theirs)
    }

    /// One request of instance `id`: sent on if its origin is allowed, else refused.
    async fn forward(&self, id: InstanceId, request: Request<Incoming>) -> Response<Body> {
        if Origin::of(request.uri()).is_ok_and(|o| o == *DIR_ORIGIN) {
            return self.backup_directory(id, request).await;
        }
        let origin = match egress::allowed(&self.config.allow, request.uri()) {
            Ok(origin) => origin,
            Err(why) => {
                tracing::warn!(instance = %id, uri = %request.uri(), "egress refused: {why}");
                return refusal(&why);
            }
        };
        let started = std::time::Instant::now();
        let method = request.method().clone();
        match self.send(request).await {
            Ok(answer) => {
                tracing::info!(instance = %id, %origin, %method, status = answer.status().as_u16(),
                    ms = started.elapsed().as_millis() as u64, "egress");
                answer
            }
            Err(e) => {
                tracing::warn!(instance = %id, %origin, %method, error = %e.message, "egress failed");
                error(&e)
            }
        }
    }

    /// A request of the directory backup target's protocol (`selfcloud_backup::target`),
    /// carried out in instance `id`'s own subdirectory of the backup root and nowhere else: the
    /// instance names objects, never paths.
    async fn backup_directory(&self, id: InstanceId, request: Request<Incoming>) -> Response<Body> {
        let Some(root) = &self.config.backup_dir_root else {
            return refusal("this server keeps no backup directories (its operator has not set --backup-dir-root)");
        };
        let (head, body) = request.into_parts();
        let body = match Limited::new(body, self.config.max_request_bytes).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(_) => return error(&Error::new(ErrorCode::TooLarge, "a backup object is too long or broke off")),
        };
        let target =
            selfcloud_backup::DirTarget::new(root.join(id.to_string())).with_quota(self.config.backup_dir_max_bytes);
        match selfcloud_backup::target::serve(&target, &head.method, head.uri.path(), body).await {
            Ok(answer) => answer.map(|b| Full::new(b).map_err(|never| match never {}).boxed_unsync()),
            Err(e) => {
                if e.code == ErrorCode::Internal || e.code == ErrorCode::DiskFull {
                    tracing::warn!(instance = %id, error = %e.message, "a backup directory write failed");
                }
                error(&e)
            }
        }
    }

    async fn send(&self, request: Request<Incoming>) -> Result<Response<Body>> {
        let (head, body) = request.into_parts();
        let body = Limited::new(body, self.config.max_request_bytes)
            .collect()
            .await
            .map_err(|_| Error::new(ErrorCode::TooLarge, "the request to the outside host is too long or broke off"))?
            .to_bytes();
        let url = head.uri.to_string();
        let sent =
            self.client.request(head.method, &url).headers(crossing(&head.headers)).body(body).send().await.map_err(
                |e| {
                    Error::new(
                        ErrorCode::UpstreamFailed,
                        format!("the outside host could not be reached: {}", cause(&e)),
                    )
                },
            )?;
        let mut answer = Response::builder().status(sent.status());
        if let Some(headers) = answer.headers_mut() {
            *headers = crossing(sent.headers());
        }
        // The answer streams back as it comes, cut off past its bound.
        let max = self.config.max_answer_bytes;
        let mut seen = 0u64;
        let frames = sent.bytes_stream().map_err(std::io::Error::other).and_then(move |chunk| {
            seen += chunk.len() as u64;
            let over = seen > max;
            async move {
                if over {
                    return Err(std::io::Error::other(format!("the outside host's answer is past {max} bytes")));
                }
                Ok(Frame::data(chunk))
            }
        });
        answer.body(BodyExt::boxed_unsync(StreamBody::new(frames))).map_err(Error::internal)
    }
}

/// The headers that cross, either way.
fn crossing(headers: &HeaderMap) -> HeaderMap {
    headers.iter().filter(|(name, _)| egress::crosses(name)).map(|(n, v)| (n.clone(), v.clone())).collect()
}

/// What went wrong reaching a host, without the URL (which the caller knows).
fn cause(e: &reqwest::Error) -> &'static str {
    if e.is_timeout() {
        "it did not answer in time"
    } else if e.is_connect() {
        "the connection was refused or failed"
    } else {
        "the exchange failed"
    }
}

fn refusal(why: &str) -> Response<Body> {
    let mut answer = error(&Error::forbidden(why));
    answer.headers_mut().insert(REFUSED_HEADER, http::HeaderValue::from_static("1"));
    answer
}

fn error(e: &Error) -> Response<Body> {
    let body = Full::new(Bytes::from(e.body().to_string())).map_err(|never| match never {}).boxed_unsync();
    let mut answer = Response::new(body);
    *answer.status_mut() = e.status();
    answer.headers_mut().insert(http::header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    answer
}

//! The instance's end of control's broker (`protocol::broker`): the one way a part reaches
//! anything outside the instance. It asks for a channel by name and gets a descriptor already
//! connected to that channel's one peer; the instance itself never makes a socket.

use crate::protocol::broker::{Channel, Message, BROKER_FD, MAX_MESSAGE_BYTES};
use bytes::Bytes;
use http_body_util::Full;
use hyper::client::conn::http2::SendRequest;
use hyper_util::rt::{TokioExecutor, TokioIo};
use selfcloud_core::{Error, Result};
use selfcloud_sandbox::fds;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

/// How long a part waits for control's answer before it answers its own caller 503.
const ANSWER_WAIT: Duration = Duration::from_secs(30);

type Reply = (Message, Option<OwnedFd>);

pub struct Broker {
    socket: OwnedFd,
    replies: tokio::sync::Mutex<tokio::sync::mpsc::Receiver<Reply>>,
}

impl Broker {
    /// The socket the server handed in at [`BROKER_FD`], once it is sure to be one, with a thread
    /// reading control's answers from it.
    pub fn handed() -> std::io::Result<Broker> {
        let socket = fds::handed(BROKER_FD, libc::SOCK_SEQPACKET, "the broker's socket")?;
        Self::on(socket)
    }

    /// A broker on `socket` (a sequenced-packet socket whose peer is control's broker).
    pub fn on(socket: OwnedFd) -> std::io::Result<Broker> {
        let reader = socket.try_clone()?;
        let (tx, replies) = tokio::sync::mpsc::channel(4);
        std::thread::Builder::new().name("broker".into()).spawn(move || {
            let mut buf = [0u8; MAX_MESSAGE_BYTES];
            while let Ok((n, fd)) = fds::recv(reader.as_fd(), &mut buf) {
                if n == 0 {
                    break; // control is gone
                }
                let Some(message) = Message::decode(&buf[..n]) else { continue };
                if tx.blocking_send((message, fd)).is_err() {
                    break;
                }
            }
        })?;
        Ok(Broker { socket, replies: tokio::sync::Mutex::new(replies) })
    }

    /// A channel to `channel`'s peer: 503 when control refuses it or does not answer.
    pub async fn ask(&self, channel: Channel) -> Result<OwnedFd> {
        let mut replies = self.replies.lock().await;
        // An answer that came after its asker gave up is stale: drop it.
        while replies.try_recv().is_ok() {}
        fds::send(self.socket.as_fd(), &Message::Want { channel }.encode(), None)
            .map_err(|e| Error::unavailable(format!("the broker cannot be reached: {e}"), Duration::from_secs(5)))?;
        let none =
            |why: &str| Error::unavailable(format!("no {} channel: {why}", channel.as_str()), Duration::from_secs(5));
        match tokio::time::timeout(ANSWER_WAIT, replies.recv()).await {
            Err(_) => Err(none("the broker did not answer in time")),
            Ok(None) => Err(none("the broker has closed")),
            Ok(Some((Message::Channel { channel: c }, Some(fd)))) if c == channel => Ok(fd),
            Ok(Some((Message::Refused { message, retry_after_ms, .. }, _))) => {
                Err(Error::unavailable(message, Duration::from_millis(retry_after_ms.unwrap_or(5000))))
            }
            Ok(Some(_)) => Err(none("the broker answered something else")),
        }
    }
}

/// HTTP/2 on a channel the broker hands in (the shared engine's, the egress channel), asked for
/// again whenever the last one has broken; `broken` is what a caller is told when it breaks.
pub struct HttpChannel {
    broker: Arc<Broker>,
    channel: Channel,
    broken: fn() -> Error,
    conn: tokio::sync::Mutex<Option<SendRequest<Full<Bytes>>>>,
}

impl HttpChannel {
    pub fn new(broker: Arc<Broker>, channel: Channel, broken: fn() -> Error) -> HttpChannel {
        HttpChannel { broker, channel, broken, conn: Default::default() }
    }

    /// Sends `request` on the channel, opening a new one where the last has broken.
    pub async fn send(&self, request: http::Request<Full<Bytes>>) -> Result<http::Response<hyper::body::Incoming>> {
        let mut sender = {
            let mut conn = self.conn.lock().await;
            match conn.as_ref().filter(|s| !s.is_closed()) {
                Some(s) => s.clone(),
                None => {
                    let s = self.open().await?;
                    *conn = Some(s.clone());
                    s
                }
            }
        };
        sender.ready().await.map_err(|_| (self.broken)())?;
        sender.send_request(request).await.map_err(|_| (self.broken)())
    }

    async fn open(&self) -> Result<SendRequest<Full<Bytes>>> {
        let fd = self.broker.ask(self.channel).await?;
        let stream = std::os::unix::net::UnixStream::from(fd);
        stream.set_nonblocking(true).map_err(Error::internal)?;
        let stream = tokio::net::UnixStream::from_std(stream).map_err(Error::internal)?;
        let (sender, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|_| (self.broken)())?;
        let channel = self.channel.as_str();
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(channel, error = %e, "a brokered channel ended");
            }
        });
        Ok(sender)
    }
}

//! Control's end of each instance's broker socket (`instance::protocol::broker`): the one
//! place an instance's outside channels come from, as Sandstorm's supervisor brokers a grain's.
//! An instance asks for a channel by name; it gets one only if a part of it declares that
//! channel and this server offers it, already connected to that channel's one peer. Asks are
//! paced, so an instance that asks in a loop costs the peer one new channel per [`PACE`].

use super::egress::Egress;
use super::engine::EngineHost;
use selfcloud_core::InstanceId;
use selfcloud_instance::protocol::broker::{Channel, Message, MAX_MESSAGE_BYTES};
use selfcloud_sandbox::fds;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// The shortest time between two channels handed to one instance.
pub const PACE: Duration = Duration::from_millis(250);

/// What this server offers an instance's parts.
#[derive(Clone, Default)]
pub struct Offered {
    pub engine: Option<Arc<EngineHost>>,
    pub egress: Option<Arc<Egress>>,
}

/// Serves `id`'s end of its broker socket until the instance closes it (it exited).
pub fn spawn(id: InstanceId, socket: OwnedFd, offered: Offered) {
    tokio::spawn(async move {
        if let Err(e) = serve(id, socket, offered).await {
            tracing::debug!(instance = %id, error = %e, "the broker's socket ended");
        }
    });
}

async fn serve(id: InstanceId, socket: OwnedFd, offered: Offered) -> std::io::Result<()> {
    fds::set_nonblocking(socket.as_fd())?;
    // SAFETY: the socket is an owned, valid descriptor, neither replaced nor closed while the
    // AsyncFd holds it.
    let socket = unsafe { AsyncFd::register(socket)? };
    let mut buf = [0u8; MAX_MESSAGE_BYTES];
    let mut last: Option<tokio::time::Instant> = None;
    loop {
        let mut ready = socket.readable().await?;
        let (n, stray) = match ready.try_io(|s| fds::recv(s.as_fd(), &mut buf)) {
            Ok(Ok(got)) => got,
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => continue,
            Ok(Err(e)) => return Err(e),
            Err(_would_block) => continue,
        };
        if n == 0 {
            return Ok(()); // the instance is gone
        }
        // An instance hands control nothing: a descriptor it sent is closed unread.
        drop(stray);
        let Some(Message::Want { channel }) = Message::decode(&buf[..n]) else {
            tracing::debug!(instance = %id, "the broker ignored a message it does not know");
            continue;
        };
        if let Some(at) = last {
            tokio::time::sleep_until(at + PACE).await;
        }
        last = Some(tokio::time::Instant::now());
        let (reply, fd) = answer(id, channel, &offered).await;
        loop {
            let mut ready = socket.writable().await?;
            match ready.try_io(|s| fds::send(s.as_fd(), &reply.encode(), fd.as_ref().map(|f| f.as_fd()))) {
                Ok(sent) => break sent?,
                Err(_would_block) => continue,
            }
        }
    }
}

/// The answer to `id` asking for `channel`.
async fn answer(id: InstanceId, channel: Channel, offered: &Offered) -> (Message, Option<OwnedFd>) {
    let refused = |message: String, retry_after: Option<Duration>| Message::Refused {
        channel,
        message,
        retry_after_ms: retry_after.map(|d| d.as_millis() as u64),
    };
    if !selfcloud_instance::service::declares_channel(channel) {
        return (refused(format!("no part of an instance declares the {} channel", channel.as_str()), None), None);
    }
    match channel {
        Channel::LlmEngine => match &offered.engine {
            None => (refused("this server runs no shared LLM engine".into(), None), None),
            Some(engine) => match engine.connect(id).await {
                Ok(fd) => (Message::Channel { channel }, Some(fd)),
                Err(e) => (refused(e.message, e.retry_after), None),
            },
        },
        // A channel only: each request on it is checked against the allow-list (`egress.rs`).
        Channel::Egress => match &offered.egress {
            None => (refused("this server lets instances reach no outside host".into(), None), None),
            Some(egress) => match egress.connect(id) {
                Ok(fd) => (Message::Channel { channel }, Some(fd)),
                Err(e) => (refused(e.message, None), None),
            },
        },
    }
}

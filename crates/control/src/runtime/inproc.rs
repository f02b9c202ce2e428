//! The `inproc` runtime: the instance's service in the server's own process. Its parts still
//! reach outside only through a broker's socket, as in the process runtime, so what the broker
//! offers (the egress channel) and refuses is the same in both.

use super::broker::Offered;
use super::{Awake, ResourceUsage, Runtime, RuntimeKind, WakeSpec};
use async_trait::async_trait;
use selfcloud_core::config::Resources;
use selfcloud_core::{Error, Result};
use selfcloud_instance::{DataKey, InstanceClient};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::Duration;

pub struct Inproc {
    offered: Offered,
}

impl Inproc {
    pub fn new(offered: Offered) -> Inproc {
        Inproc { offered }
    }
}

struct InprocAwake {
    client: InstanceClient,
    /// The instance's end of its broker socket, shut when the instance is let go so the
    /// broker's reader and control's end both see it close.
    broker: OwnedFd,
}

impl Drop for InprocAwake {
    fn drop(&mut self) {
        // SAFETY: shuts a socket this value owns; it stays open (and owned) until dropped.
        unsafe { libc::shutdown(self.broker.as_raw_fd(), libc::SHUT_RDWR) };
    }
}

#[async_trait]
impl Runtime for Inproc {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Inproc
    }

    async fn wake(&self, spec: WakeSpec, key: DataKey) -> Result<Box<dyn Awake>> {
        let id = spec.settings.id;
        let (ours, theirs) = selfcloud_sandbox::fds::pair(selfcloud_sandbox::fds::Pair::Messages)
            .map_err(|e| Error::internal(format!("instance {id}: the broker's socket: {e}")))?;
        let kept = theirs.try_clone().map_err(Error::internal)?;
        let client = tokio::task::spawn_blocking(move || {
            selfcloud_instance::open_in_process(&spec.dir, &key, spec.settings, Some(theirs))
        })
        .await
        .map_err(Error::internal)??;
        super::broker::spawn(id, ours, self.offered.clone());
        Ok(Box::new(InprocAwake { client, broker: kept }))
    }
}

#[async_trait]
impl Awake for InprocAwake {
    fn client(&self) -> InstanceClient {
        self.client.clone()
    }
    fn running(&self) -> bool {
        true
    }
    fn exit(&self) -> Option<String> {
        None
    }
    fn usage(&self) -> ResourceUsage {
        ResourceUsage::default()
    }
    fn pid(&self) -> Option<u32> {
        None
    }
    fn limit(&self, _: Resources) -> Result<()> {
        Ok(())
    }
    /// The store closes when the last handle on it goes; the instance table stops an instance
    /// only when no call holds one.
    async fn stop(&self, _grace: Duration) {}
}

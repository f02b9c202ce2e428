//! The `inproc` runtime: the instance's service in the server's own process.

use super::{Awake, ResourceUsage, Runtime, RuntimeKind, WakeSpec};
use async_trait::async_trait;
use selfcloud_core::config::Resources;
use selfcloud_core::{Error, Result};
use selfcloud_instance::{DataKey, InstanceClient};
use std::time::Duration;

pub struct Inproc;

struct InprocAwake(InstanceClient);

#[async_trait]
impl Runtime for Inproc {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Inproc
    }

    async fn wake(&self, spec: WakeSpec, key: DataKey) -> Result<Box<dyn Awake>> {
        let client =
            tokio::task::spawn_blocking(move || selfcloud_instance::open_in_process(&spec.dir, &key, spec.settings))
                .await
                .map_err(Error::internal)??;
        Ok(Box::new(InprocAwake(client)))
    }
}

#[async_trait]
impl Awake for InprocAwake {
    fn client(&self) -> InstanceClient {
        self.0.clone()
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

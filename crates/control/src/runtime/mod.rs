//! Where instances run. A [`Runtime`] starts one instance and answers an [`Awake`] handle;
//! control's instance table (`crate::instances`) decides when (first call, after a crash with
//! backoff) and stops them (idle, deletion, shutdown). Two runtimes:
//! - `inproc`: the instance's service runs in the server's process (logical isolation only:
//!   its own directory, file and key); for tests that do not test isolation, and machines
//!   without namespaces;
//! - `process`: each instance is its own sandboxed process (`selfcloud instance run`), reached
//!   over the socket in its directory, limited by its tier's cgroup.
//!
//! Both are handed a data key at wake and nothing else of the store: store types stay behind
//! the instance boundary.

pub mod broker;
pub mod egress;
pub mod engine;
mod inproc;
mod process;
pub mod stderr;

pub use inproc::Inproc;
pub use process::{HostIds, Process, ProcessConfig};

use async_trait::async_trait;
use selfcloud_core::config::Resources;
use selfcloud_core::Result;
use selfcloud_instance::{DataKey, InstanceClient, Settings};
use std::path::PathBuf;
use std::time::Duration;

/// Which runtime runs instances.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RuntimeKind {
    Inproc,
    #[default]
    Process,
}

impl RuntimeKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Inproc => "inproc",
            RuntimeKind::Process => "process",
        }
    }
}

impl std::str::FromStr for RuntimeKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "inproc" => Ok(RuntimeKind::Inproc),
            "process" => Ok(RuntimeKind::Process),
            other => Err(format!("unknown runtime {other:?} (inproc, process)")),
        }
    }
}

/// What a runtime needs to start one instance.
pub struct WakeSpec {
    pub dir: PathBuf,
    pub settings: Settings,
    pub resources: Resources,
    /// The host uid its root runs as (process runtime, server running as root).
    pub host_id: Option<u32>,
    /// Its own disk (process runtime, server running as root), mounted at `dir` inside it.
    pub image: Option<selfcloud_instance::protocol::DiskImage>,
}

/// What an awake instance used, from its cgroup (`None` where not measured).
pub use selfcloud_sandbox::cgroups::Usage as ResourceUsage;

#[async_trait]
pub trait Runtime: Send + Sync + 'static {
    fn kind(&self) -> RuntimeKind;
    /// Starts the instance; answers once it takes calls.
    async fn wake(&self, spec: WakeSpec, key: DataKey) -> Result<Box<dyn Awake>>;
    /// The shared LLM engine's process id while it runs (process runtime in shared mode).
    fn engine_pid(&self) -> Option<u32> {
        None
    }
    /// Stops what the runtime runs beside the instances (the shared engine).
    async fn stop(&self) {}
}

/// One running instance.
#[async_trait]
pub trait Awake: Send + Sync + 'static {
    /// A handle for calls (without a lease: the instance table adds one per caller).
    fn client(&self) -> InstanceClient;
    /// False once the instance has exited (crashed or killed).
    fn running(&self) -> bool;
    /// Why it exited, once it has.
    fn exit(&self) -> Option<String>;
    fn usage(&self) -> ResourceUsage;
    /// The process id, where the instance is a process.
    fn pid(&self) -> Option<u32>;
    /// Applies new limits (the tier changed) to the running instance.
    fn limit(&self, resources: Resources) -> Result<()>;
    /// Asks the instance to stop, lets its calls finish for up to `grace`, then ends it.
    async fn stop(&self, grace: Duration);
}

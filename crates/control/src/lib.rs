//! The control plane: who the users are, which instance is theirs, which apps they granted what,
//! and the lifecycle of instances (provision, open, keep a bounded set open).
//!
//! Control reads no instance contents: it hands the gateway an
//! [`InstanceClient`](selfcloud_instance::InstanceClient) (waking the instance first) and the gateway
//! talks to that. Every method that depends on time takes `now` (Unix seconds) so tests
//! control the clock.

mod accounts;
pub mod admission;
pub mod disk;
mod grants;
mod instances;
pub mod keys;
pub mod keystore;
mod lifecycle;
mod provisioning;
mod recovery;
mod registry;
pub mod runtime;
mod system;
mod tiers;
pub mod tokens;
mod verify;

pub use accounts::{Account, Profile};
pub use grants::{
    app_token_budget, check_token_budget, App, AppTokens, CodeGrant, Consent, Grant, NewApp, RefreshGrant,
    TokenOutcome, Verdict,
};
pub use instances::{instance_dir, restart_backoff, RunState, RunStatus, RuntimeSummary, INSTANCES_DIR};
pub use lifecycle::Recovered;
pub use recovery::RecoveryCode;
pub use registry::UserRow;
pub use tiers::{InstanceInfo, OPERATOR_TOKEN_FILE};
pub use tokens::{GrantRef, TokenInfo, TokenKind};
pub use verify::{HomeReport, InstanceCheck};

use keys::NodeKey;
use parking_lot::Mutex;
use registry::Registry;
use selfcloud_core::config::{KdfParams, Limits, TokenTtls};
use selfcloud_core::{Error, InstanceId, Result};
use selfcloud_instance::EngineKind;
use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use tokens::TokenTable;

/// The shared LLM engine's working directory in the home (empty: it writes nothing).
pub const ENGINE_DIR: &str = "engine";

/// The shared LLM engine the process runtime runs beside its instances, in shared mode: its
/// own directory in the home, the model its one file, and the first uid of the instances' range
/// (which no instance is given) where the server runs as root.
fn engine_config(config: &ControlConfig, p: &runtime::ProcessConfig) -> Option<runtime::engine::EngineConfig> {
    let options = config.llm.as_ref()?.shared.clone()?;
    Some(runtime::engine::EngineConfig {
        program: p.program.clone(),
        read_only: vec![options.path.clone()],
        options,
        dir: config.home.join(ENGINE_DIR),
        sandbox: p.sandbox,
        host_id: p.host_ids.map(|r| r.first),
        memory_bytes: p.engine_memory_bytes,
        log: p.log,
    })
}

/// Everything control needs to know, filled by the binary from flags and environment.
#[derive(Clone, Debug)]
pub struct ControlConfig {
    pub home: PathBuf,
    pub kdf: KdfParams,
    pub limits: Limits,
    pub ttls: TokenTtls,
    /// Instances kept awake at once; past this the least recently used idle one hibernates.
    pub open_instances: usize,
    /// The memory all awake instances together may use, by their tiers' limits (`admission`);
    /// `None`: three quarters of the machine's.
    pub instance_memory_bytes: Option<u64>,
    /// Where instances run.
    pub runtime: RuntimeConfig,
    /// An instance with no call for this long hibernates (its process exits; its files stay).
    pub hibernate_after: std::time::Duration,
    /// How long a stopping instance may take to finish the calls under way.
    pub stop_grace: std::time::Duration,
    /// The store engine of instances provisioned from now on (existing ones keep theirs).
    pub store_engine: EngineKind,
    /// Password derivations (Argon2id) run at once; each holds the KDF's memory cost.
    pub kdf_concurrency: usize,
    /// How long a password check waits for a KDF slot before the caller is told to retry.
    pub kdf_wait: std::time::Duration,
    /// The private LLM every instance runs, when the server has a model.
    pub llm: Option<selfcloud_instance::protocol::LlmSettings>,
    /// The outside hosts instances may reach (an upstream LLM provider), and how much.
    pub egress: runtime::egress::EgressConfig,
    /// Argon2id's cost for a backup passphrase's wrap of a new target's key.
    pub backup_kdf: selfcloud_backup::KdfCost,
}

impl ControlConfig {
    pub fn new(home: impl Into<PathBuf>) -> Self {
        ControlConfig {
            home: home.into(),
            kdf: KdfParams::default(),
            limits: Limits::default(),
            ttls: TokenTtls::default(),
            open_instances: 1024,
            instance_memory_bytes: None,
            runtime: RuntimeConfig::Inproc,
            hibernate_after: std::time::Duration::from_secs(60),
            stop_grace: std::time::Duration::from_secs(10),
            store_engine: EngineKind::default(),
            kdf_concurrency: std::thread::available_parallelism().map_or(2, |n| n.get()),
            kdf_wait: std::time::Duration::from_secs(10),
            llm: None,
            egress: Default::default(),
            backup_kdf: Default::default(),
        }
    }
}

/// Which runtime, with its settings.
#[derive(Clone, Debug)]
pub enum RuntimeConfig {
    Inproc,
    Process(runtime::ProcessConfig),
}

pub struct Control {
    config: ControlConfig,
    registry: Arc<Registry>,
    node_key: NodeKey,
    tokens: TokenTable,
    runtime: Box<dyn runtime::Runtime>,
    /// The instances this server runs (one lock each).
    table: instances::Table,
    /// Users with a password change, recovery or deletion under way: one at a time per user.
    account_changes: Mutex<std::collections::HashSet<selfcloud_core::UserId>>,
    provisioned: AtomicU64,
    /// Every instance's tier, for the rate limit on each request and the quota on open.
    tiers: parking_lot::RwLock<std::collections::HashMap<InstanceId, selfcloud_core::config::Tier>>,
    /// The operator's bearer token for `/v1/admin` (hash only).
    operator_token_hash: [u8; 32],
    /// Bounds the password derivations running at once (see `kdf_slot`).
    kdf_slots: Arc<tokio::sync::Semaphore>,
    /// What all awake instances together may use (`admission`), in bytes.
    memory_budget: u64,
}

impl Control {
    /// Opens (creating on first start) the home directory, the node key and the registry, and
    /// loads the live tokens.
    pub fn open(config: ControlConfig, now: u64) -> Result<Arc<Control>> {
        let home = &config.home;
        // Only the server's user may enter the home: it holds the registry (salts, verifiers,
        // token hashes), the node key and every instance.
        selfcloud_durable::create_private_dir(home)?;
        selfcloud_durable::create_private_dir(&home.join(INSTANCES_DIR))?;
        selfcloud_durable::create_private_dir(&home.join(keystore::KEYS_DIR))?;
        let node_key = provisioning::load_or_create_node_key(home)?;
        let registry = Arc::new(Registry::open(&home.join("control.db"))?);
        // Before any instance wakes: no key file stays where an instance can see it.
        keystore::migrate(home, |id| instance_dir(home, id), &registry.instance_ids()?)?;
        let tiers = parking_lot::RwLock::new(registry.instance_tiers()?);
        let operator_token_hash = tiers::load_or_create_operator_token(home)?;
        let egress = Arc::new(runtime::egress::Egress::new(config.egress.clone())?);
        let runtime: Box<dyn runtime::Runtime> = match &config.runtime {
            RuntimeConfig::Inproc => {
                Box::new(runtime::Inproc::new(runtime::broker::Offered { engine: None, egress: Some(egress) }))
            }
            RuntimeConfig::Process(p) => Box::new(runtime::Process::new(p.clone(), engine_config(&config, p), egress)?),
        };
        let control = Control {
            runtime,
            table: instances::Table::default(),
            provisioned: AtomicU64::new(registry.instance_count()?),
            registry,
            node_key,
            tokens: TokenTable::default(),
            account_changes: Mutex::default(),
            tiers,
            operator_token_hash,
            kdf_slots: Arc::new(tokio::sync::Semaphore::new(config.kdf_concurrency.max(1))),
            memory_budget: config
                .instance_memory_bytes
                .unwrap_or_else(|| admission::machine_memory().map_or(u64::MAX, admission::default_budget)),
            config,
        };
        control.load_tokens(now)?;
        tracing::info!(instance_memory_mib = control.memory_budget >> 20, "awake instances are admitted by memory");
        Ok(Arc::new(control))
    }

    pub fn config(&self) -> &ControlConfig {
        &self.config
    }

    pub fn runtime_kind(&self) -> runtime::RuntimeKind {
        self.runtime.kind()
    }

    /// Instances provisioned on this node, ever.
    pub fn instances_provisioned(&self) -> u64 {
        self.provisioned.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs registry work on the blocking pool (registry writes wait for fsync).
    async fn blocking<T: Send + 'static>(&self, f: impl FnOnce(&Registry) -> Result<T> + Send + 'static) -> Result<T> {
        let registry = self.registry.clone();
        tokio::task::spawn_blocking(move || f(&registry)).await.map_err(Error::internal)?
    }
}

#[cfg(test)]
mod tests;

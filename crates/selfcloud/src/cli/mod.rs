//! Command-line flags. Every setting also reads an environment variable `SELFCLOUD_*`.

use clap::{Args, Parser, Subcommand, ValueEnum};
use selfcloud_core::config::{InstanceLog, KdfParams, Limits, Resources, TierLimits, TierResources, TokenTtls};
use selfcloud_gateway::server::ConnectionLimits;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod egress;
mod llm;
pub use egress::EgressArgs;
pub use llm::LlmArgs;

#[derive(Parser, Debug)]
#[command(name = "selfcloud", version, about = "A private cloud instance for every user, on one machine or many")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the server: gateway, control plane and instances, in one process.
    Up(Box<UpArgs>),
    /// Measure sign-up latency and authorized read throughput beside bare floors; `bench store`
    /// compares the record store with the bare engines; `bench crash` SIGKILLs a server mid-write
    /// and checks that no acknowledged write was lost.
    Bench(crate::bench::BenchArgs),
    /// Check the registry and every instance's store of a stopped server; non-zero exit on failure.
    Verify(crate::verify::VerifyArgs),
    /// Pull a model for the private assistant (`model pull smollm2`), or list the known ones.
    Model(crate::model::ModelArgs),
    /// A backup target in your hands: list its snapshots, verify one, or restore one's files,
    /// with the backup passphrase (or recovery key) alone.
    Backup(crate::backup::BackupArgs),
    /// The instance process (`instance run`), started by the server's `process` runtime.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// The shared LLM engine process (`engine run`), started by the server's `process` runtime.
    #[command(subcommand)]
    Engine(EngineCommand),
}

#[derive(Subcommand, Debug)]
pub enum EngineCommand {
    /// Serve the shared LLM engine to the instances whose channels the server hands in; reads
    /// its start message from stdin and stops when stdin closes. Not for use by hand.
    Run {
        /// Its working directory (empty).
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum InstanceCommand {
    /// Serve one instance on the socket in its directory; reads its start message (settings and
    /// data key) from stdin and stops when stdin closes. Not for use by hand.
    Run {
        /// The instance's directory.
        #[arg(long)]
        dir: PathBuf,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeChoice {
    Auto,
    Process,
    Inproc,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Args, Debug, Clone)]
pub struct UpArgs {
    /// Address to listen on.
    #[arg(long, env = "SELFCLOUD_ADDR", default_value = "127.0.0.1:8420")]
    pub addr: SocketAddr,
    /// Directory holding the registry, keys and every instance.
    #[arg(long, env = "SELFCLOUD_HOME", default_value = "./selfcloud-data")]
    pub home: PathBuf,
    /// Public base URL, used as the OAuth issuer (default: http://ADDR).
    #[arg(long, env = "SELFCLOUD_PUBLIC_URL")]
    pub public_url: Option<String>,
    /// Development only: serve `POST /v1/admin/test-users` (operator token), which makes a user
    /// who has already allowed an app, for the SDKs' `createTestUser` in an app's tests.
    #[arg(long, env = "SELFCLOUD_DEV_TEST_USERS")]
    pub dev_test_users: bool,
    /// Log format.
    #[arg(long, env = "SELFCLOUD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Connections open at once; past it, new ones wait in the listen backlog.
    #[arg(long, env = "SELFCLOUD_MAX_CONNECTIONS", default_value_t = ConnectionLimits::default().max_connections)]
    pub max_connections: usize,
    /// Seconds a client has to send a request's headers (from connecting, or after an answer on a
    /// kept-alive connection) before the connection is closed.
    #[arg(long, env = "SELFCLOUD_HEADER_READ_TIMEOUT", default_value_t = ConnectionLimits::default().header_read_timeout.as_secs())]
    pub header_read_timeout: u64,
    /// Seconds a request body may pause between two pieces before the request is cut off.
    #[arg(long, env = "SELFCLOUD_BODY_READ_TIMEOUT", default_value_t = ConnectionLimits::default().body_read_timeout.as_secs())]
    pub body_read_timeout: u64,
    #[command(flatten)]
    pub settings: Settings,
    #[command(flatten)]
    pub llm: LlmArgs,
}

impl UpArgs {
    pub fn connection_limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            max_connections: self.max_connections,
            header_read_timeout: Duration::from_secs(self.header_read_timeout.max(1)),
            body_read_timeout: Duration::from_secs(self.body_read_timeout.max(1)),
        }
    }
}

/// Limits and costs, each with a safe default.
#[derive(Args, Debug, Clone)]
pub struct Settings {
    /// Argon2id memory per password derivation, in KiB.
    #[arg(long, env = "SELFCLOUD_KDF_MEMORY_KIB", default_value_t = KdfParams::default().m_cost)]
    pub kdf_memory_kib: u32,
    /// Argon2id passes.
    #[arg(long, env = "SELFCLOUD_KDF_ITERATIONS", default_value_t = KdfParams::default().t_cost)]
    pub kdf_iterations: u32,
    /// Argon2id lanes.
    #[arg(long, env = "SELFCLOUD_KDF_PARALLELISM", default_value_t = KdfParams::default().p_cost)]
    pub kdf_parallelism: u32,
    /// Argon2id memory of a backup passphrase's wrap (made inside the instance), in KiB.
    #[arg(long, env = "SELFCLOUD_BACKUP_KDF_MEMORY_KIB", default_value_t = selfcloud_backup::KdfCost::default().memory_kib)]
    pub backup_kdf_memory_kib: u32,
    /// Argon2id passes of a backup passphrase's wrap.
    #[arg(long, env = "SELFCLOUD_BACKUP_KDF_ITERATIONS", default_value_t = selfcloud_backup::KdfCost::default().iterations)]
    pub backup_kdf_iterations: u32,
    /// Password derivations run at once (each holds the KDF memory); 0 means one per CPU.
    #[arg(long, env = "SELFCLOUD_KDF_CONCURRENCY", default_value_t = 0)]
    pub kdf_concurrency: usize,
    /// Seconds a log-in waits for a free KDF slot before it is told to retry (503).
    #[arg(long, env = "SELFCLOUD_KDF_WAIT", default_value_t = 10)]
    pub kdf_wait: u64,
    /// Largest record value, in bytes.
    #[arg(long, env = "SELFCLOUD_MAX_VALUE_BYTES", default_value_t = Limits::default().max_value_bytes)]
    pub max_value_bytes: usize,
    /// Largest archive an import accepts, in bytes (spooled to a file in the instance's directory
    /// and checked from there, never held in memory).
    #[arg(long, env = "SELFCLOUD_MAX_IMPORT_BYTES", default_value_t = Limits::default().max_import_bytes)]
    pub max_import_bytes: usize,
    /// Sustained requests per second allowed to one token.
    #[arg(long, env = "SELFCLOUD_RATE_PER_TOKEN", default_value_t = Limits::default().rate_per_token)]
    pub rate_per_token: u32,
    /// Requests one token may burst above its rate.
    #[arg(long, env = "SELFCLOUD_RATE_BURST", default_value_t = Limits::default().rate_burst)]
    pub rate_burst: u32,
    /// Sign-up, log-in and token requests per second from one client address.
    #[arg(long, env = "SELFCLOUD_RATE_PER_IP", default_value_t = Limits::default().rate_per_ip)]
    pub rate_per_ip: u32,
    /// Sign-ups per minute from all addresses together: each provisions an instance on this
    /// node's disk, and many addresses each within `--rate-per-ip` must not fill it.
    #[arg(long, env = "SELFCLOUD_SIGN_UPS_PER_MINUTE", default_value_t = Limits::default().sign_ups_per_minute)]
    pub sign_ups_per_minute: u32,
    /// Storage quota of a free-tier instance (every new account's), in bytes.
    #[arg(long, env = "SELFCLOUD_QUOTA_BYTES", default_value_t = Limits::default().quota_bytes)]
    pub quota_bytes: u64,
    /// Storage quota of a growth-tier instance, in bytes.
    #[arg(long, env = "SELFCLOUD_GROWTH_QUOTA_BYTES", default_value_t = Limits::default().growth.quota_bytes)]
    pub growth_quota_bytes: u64,
    /// Requests per second per token on the growth tier.
    #[arg(long, env = "SELFCLOUD_GROWTH_RATE_PER_TOKEN", default_value_t = Limits::default().growth.rate_per_token)]
    pub growth_rate_per_token: u32,
    /// Storage quota of a pro-tier instance, in bytes.
    #[arg(long, env = "SELFCLOUD_PRO_QUOTA_BYTES", default_value_t = Limits::default().pro.quota_bytes)]
    pub pro_quota_bytes: u64,
    /// Requests per second per token on the pro tier.
    #[arg(long, env = "SELFCLOUD_PRO_RATE_PER_TOKEN", default_value_t = Limits::default().pro.rate_per_token)]
    pub pro_rate_per_token: u32,
    /// LLM tokens one app may spend a day on a free-tier instance: the ceiling of the budget a user
    /// sets on a grant (an app without one gets the ceiling).
    #[arg(long, env = "SELFCLOUD_LLM_APP_TOKENS_PER_DAY", default_value_t = Limits::default().llm_app_tokens_per_day)]
    pub llm_app_tokens_per_day: u64,
    /// LLM tokens one app may spend a day on a growth-tier instance.
    #[arg(long, env = "SELFCLOUD_GROWTH_LLM_APP_TOKENS_PER_DAY", default_value_t = Limits::default().growth.llm_app_tokens_per_day)]
    pub growth_llm_app_tokens_per_day: u64,
    /// LLM tokens one app may spend a day on a pro-tier instance.
    #[arg(long, env = "SELFCLOUD_PRO_LLM_APP_TOKENS_PER_DAY", default_value_t = Limits::default().pro.llm_app_tokens_per_day)]
    pub pro_llm_app_tokens_per_day: u64,
    /// LLM tokens the owner's own calls (chat, assistant, embeddings) may spend a day on a free-tier instance.
    #[arg(long, env = "SELFCLOUD_LLM_OWNER_TOKENS_PER_DAY", default_value_t = Limits::default().llm_owner_tokens_per_day)]
    pub llm_owner_tokens_per_day: u64,
    /// The owner's own LLM tokens a day on a growth-tier instance.
    #[arg(long, env = "SELFCLOUD_GROWTH_LLM_OWNER_TOKENS_PER_DAY", default_value_t = Limits::default().growth.llm_owner_tokens_per_day)]
    pub growth_llm_owner_tokens_per_day: u64,
    /// The owner's own LLM tokens a day on a pro-tier instance.
    #[arg(long, env = "SELFCLOUD_PRO_LLM_OWNER_TOKENS_PER_DAY", default_value_t = Limits::default().pro.llm_owner_tokens_per_day)]
    pub pro_llm_owner_tokens_per_day: u64,
    /// Largest page a list may ask for.
    #[arg(long, env = "SELFCLOUD_LIST_MAX", default_value_t = Limits::default().list_max)]
    pub list_max: usize,
    /// Bytes of values one list page holds at most (a page always holds one record).
    #[arg(long, env = "SELFCLOUD_LIST_MAX_BYTES", default_value_t = Limits::default().list_max_bytes)]
    pub list_max_bytes: usize,
    /// Audit entries kept per instance (older ones are pruned).
    #[arg(long, env = "SELFCLOUD_AUDIT_RETENTION", default_value_t = Limits::default().audit_retention)]
    pub audit_retention: u64,
    /// Longest path or request id an audit entry keeps, in bytes.
    #[arg(long, env = "SELFCLOUD_AUDIT_FIELD_MAX", default_value_t = Limits::default().audit_field_max)]
    pub audit_field_max: usize,
    /// Owner sessions one user keeps (a new log-in ends the oldest past it).
    #[arg(long, env = "SELFCLOUD_SESSIONS_PER_USER", default_value_t = Limits::default().sessions_per_user)]
    pub sessions_per_user: usize,
    /// App sign-ins (token families) one grant keeps (a new one ends the oldest past it).
    #[arg(long, env = "SELFCLOUD_APP_SESSIONS_PER_GRANT", default_value_t = Limits::default().app_sessions_per_grant)]
    pub app_sessions_per_grant: usize,
    /// Spent refresh tokens a sign-in remembers, so a replay of one ends that sign-in.
    #[arg(long, env = "SELFCLOUD_SPENT_REFRESH_KEPT", default_value_t = Limits::default().spent_refresh_kept)]
    pub spent_refresh_kept: usize,
    /// Failed log-ins or recoveries one username may have before each further try waits (1 s, doubling).
    #[arg(long, env = "SELFCLOUD_LOG_IN_FREE_FAILURES", default_value_t = Limits::default().log_in_free_failures)]
    pub log_in_free_failures: u32,
    /// The longest wait between failed log-ins of one username, in seconds.
    #[arg(long, env = "SELFCLOUD_LOG_IN_MAX_WAIT_SECS", default_value_t = Limits::default().log_in_max_wait_secs)]
    pub log_in_max_wait_secs: u64,
    /// Usernames whose failed log-ins are remembered at once.
    #[arg(long, env = "SELFCLOUD_LOG_IN_NAMES_TRACKED", default_value_t = Limits::default().log_in_names_tracked)]
    pub log_in_names_tracked: usize,
    /// Apps one account may have registered at once.
    #[arg(long, env = "SELFCLOUD_APPS_PER_USER", default_value_t = Limits::default().apps_per_user)]
    pub apps_per_user: usize,
    /// Store engine for new instances: sqlite or rocksdb (existing instances keep theirs).
    #[arg(long = "store", env = "SELFCLOUD_STORE", default_value = "sqlite")]
    pub store_engine: selfcloud_store::EngineKind,
    /// Instances kept awake at once (past it the least recently used idle one hibernates).
    #[arg(long, env = "SELFCLOUD_OPEN_INSTANCES", default_value_t = 1024)]
    pub open_instances: usize,
    /// Memory all awake instances together may use, in MiB, counted by their tiers' memory
    /// limits: a wake past it hibernates the least recently used idle instances, or answers 503
    /// when every awake one is in use. 0: three quarters of the machine's memory.
    #[arg(long, env = "SELFCLOUD_INSTANCE_MEMORY_MIB", default_value_t = 0)]
    pub instance_memory_mib: u64,
    /// Where instances run: `process` (each in its own sandboxed process), `inproc` (inside the
    /// server), or `auto` (process where the kernel allows; says so at start either way).
    #[arg(long, env = "SELFCLOUD_RUNTIME", default_value = "auto")]
    pub runtime: RuntimeChoice,
    /// Seconds without a call after which an instance hibernates (its process exits, files stay).
    #[arg(long, env = "SELFCLOUD_HIBERNATE_AFTER", default_value_t = 60.0)]
    pub hibernate_after: f64,
    /// Seconds a stopping instance has to finish the calls under way.
    #[arg(long, env = "SELFCLOUD_STOP_GRACE", default_value_t = 10)]
    pub stop_grace: u64,
    /// Seconds an instance process may take to start.
    #[arg(long, env = "SELFCLOUD_INSTANCE_START_TIMEOUT", default_value_t = 10)]
    pub instance_start_timeout: u64,
    /// Host uids for instances, FIRST:COUNT, when the server runs as root: each instance's root
    /// is one of them (its uid and gid, its own), never host root; no other user of the machine
    /// may hold one. The server itself stays root (it mounts and drives cgroups); a server not
    /// run as root runs every instance as its own unprivileged uid and ignores this.
    #[arg(long, env = "SELFCLOUD_INSTANCE_UIDS", default_value = "1879048192:65536")]
    pub instance_uids: selfcloud_control::runtime::HostIds,
    /// A disk of its own for each instance (`--runtime process`): a loop image of its tier's
    /// `--*-disk-mib`, so it cannot fill the home's disk for everyone. `auto`: when the server
    /// runs as root with namespaces and mkfs.ext4 (e2fsprogs); `on`: refuse to start otherwise;
    /// `off`: instances write on the home's filesystem (an instance that already has an image
    /// keeps it).
    #[arg(long, env = "SELFCLOUD_INSTANCE_DISK_IMAGES", value_enum, default_value_t = DiskImages::Auto)]
    pub instance_disk_images: DiskImages,
    /// Longest line of an instance's stderr the server logs, in bytes (at least 64); the rest of
    /// a longer line is dropped, and the line says it was cut.
    #[arg(long, env = "SELFCLOUD_INSTANCE_LOG_LINE_MAX", default_value_t = InstanceLog::default().line_max as u64,
          value_parser = clap::value_parser!(u64).range(InstanceLog::LINE_MIN as u64..))]
    pub instance_log_line_max: u64,
    /// Lines of one instance's stderr the server logs per second (at least 1); the others are
    /// dropped, and their count logged.
    #[arg(long, env = "SELFCLOUD_INSTANCE_LOG_LINES_PER_SEC", default_value_t = InstanceLog::default().lines_per_sec,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub instance_log_lines_per_sec: u32,
    /// Memory of a free-tier instance process, in MiB (its cgroup; past it the kernel kills it).
    #[arg(long, env = "SELFCLOUD_FREE_MEMORY_MIB", default_value_t = TierResources::default().free.memory_bytes >> 20)]
    pub free_memory_mib: u64,
    /// CPU of a free-tier instance, in thousandths of a core.
    #[arg(long, env = "SELFCLOUD_FREE_CPU_MILLIS", default_value_t = TierResources::default().free.cpu_millis)]
    pub free_cpu_millis: u32,
    /// Processes and threads of a free-tier instance.
    #[arg(long, env = "SELFCLOUD_FREE_PIDS", default_value_t = TierResources::default().free.pids)]
    pub free_pids: u32,
    /// Disk of a free-tier instance, in MiB: the size of its own disk image (the server running
    /// as root gives each instance one; it grows, never shrinks, when a tier changes).
    #[arg(long, env = "SELFCLOUD_FREE_DISK_MIB", default_value_t = TierResources::default().free.disk_bytes >> 20)]
    pub free_disk_mib: u64,
    /// Reads and writes on a free-tier instance's disk, each in MiB a second (0: unbounded).
    #[arg(long, env = "SELFCLOUD_FREE_IO_MIB_PER_SEC", default_value_t = TierResources::default().free.io_bytes_per_sec >> 20)]
    pub free_io_mib_per_sec: u64,
    /// Reads and writes a second on a free-tier instance's disk, each (0: unbounded).
    #[arg(long, env = "SELFCLOUD_FREE_IO_OPS_PER_SEC", default_value_t = TierResources::default().free.io_ops_per_sec)]
    pub free_io_ops_per_sec: u32,
    /// Memory of a growth-tier instance, in MiB.
    #[arg(long, env = "SELFCLOUD_GROWTH_MEMORY_MIB", default_value_t = TierResources::default().growth.memory_bytes >> 20)]
    pub growth_memory_mib: u64,
    /// CPU of a growth-tier instance, in thousandths of a core.
    #[arg(long, env = "SELFCLOUD_GROWTH_CPU_MILLIS", default_value_t = TierResources::default().growth.cpu_millis)]
    pub growth_cpu_millis: u32,
    /// Processes and threads of a growth-tier instance.
    #[arg(long, env = "SELFCLOUD_GROWTH_PIDS", default_value_t = TierResources::default().growth.pids)]
    pub growth_pids: u32,
    /// Disk of a growth-tier instance, in MiB: the size of its own disk image (the server running
    /// as root gives each instance one; it grows, never shrinks, when a tier changes).
    #[arg(long, env = "SELFCLOUD_GROWTH_DISK_MIB", default_value_t = TierResources::default().growth.disk_bytes >> 20)]
    pub growth_disk_mib: u64,
    /// Reads and writes on a growth-tier instance's disk, each in MiB a second (0: unbounded).
    #[arg(long, env = "SELFCLOUD_GROWTH_IO_MIB_PER_SEC", default_value_t = TierResources::default().growth.io_bytes_per_sec >> 20)]
    pub growth_io_mib_per_sec: u64,
    /// Reads and writes a second on a growth-tier instance's disk, each (0: unbounded).
    #[arg(long, env = "SELFCLOUD_GROWTH_IO_OPS_PER_SEC", default_value_t = TierResources::default().growth.io_ops_per_sec)]
    pub growth_io_ops_per_sec: u32,
    /// Memory of a pro-tier instance, in MiB.
    #[arg(long, env = "SELFCLOUD_PRO_MEMORY_MIB", default_value_t = TierResources::default().pro.memory_bytes >> 20)]
    pub pro_memory_mib: u64,
    /// CPU of a pro-tier instance, in thousandths of a core.
    #[arg(long, env = "SELFCLOUD_PRO_CPU_MILLIS", default_value_t = TierResources::default().pro.cpu_millis)]
    pub pro_cpu_millis: u32,
    /// Processes and threads of a pro-tier instance.
    #[arg(long, env = "SELFCLOUD_PRO_PIDS", default_value_t = TierResources::default().pro.pids)]
    pub pro_pids: u32,
    /// Disk of a pro-tier instance, in MiB: the size of its own disk image (the server running
    /// as root gives each instance one; it grows, never shrinks, when a tier changes).
    #[arg(long, env = "SELFCLOUD_PRO_DISK_MIB", default_value_t = TierResources::default().pro.disk_bytes >> 20)]
    pub pro_disk_mib: u64,
    /// Reads and writes on a pro-tier instance's disk, each in MiB a second (0: unbounded).
    #[arg(long, env = "SELFCLOUD_PRO_IO_MIB_PER_SEC", default_value_t = TierResources::default().pro.io_bytes_per_sec >> 20)]
    pub pro_io_mib_per_sec: u64,
    /// Reads and writes a second on a pro-tier instance's disk, each (0: unbounded).
    #[arg(long, env = "SELFCLOUD_PRO_IO_OPS_PER_SEC", default_value_t = TierResources::default().pro.io_ops_per_sec)]
    pub pro_io_ops_per_sec: u32,
    /// Owner API session lifetime, in seconds.
    #[arg(long, env = "SELFCLOUD_SESSION_TTL", default_value_t = TokenTtls::default().session.as_secs())]
    pub session_ttl: u64,
    /// Web session (the log-in and consent pages' cookie) lifetime, in seconds.
    #[arg(long, env = "SELFCLOUD_WEB_SESSION_TTL", default_value_t = TokenTtls::default().web_session.as_secs())]
    pub web_session_ttl: u64,
    /// App access-token lifetime, in seconds.
    #[arg(long, env = "SELFCLOUD_ACCESS_TTL", default_value_t = TokenTtls::default().access.as_secs())]
    pub access_ttl: u64,
    /// App refresh-token lifetime, in seconds.
    #[arg(long, env = "SELFCLOUD_REFRESH_TTL", default_value_t = TokenTtls::default().refresh.as_secs())]
    pub refresh_ttl: u64,
    /// Authorization-code lifetime, in seconds.
    #[arg(long, env = "SELFCLOUD_CODE_TTL", default_value_t = TokenTtls::default().code.as_secs())]
    pub code_ttl: u64,
    #[command(flatten)]
    pub egress: EgressArgs,
}

/// A tier's resources from its flags (memory, disk and IO rate in MiB).
fn mib_resources(memory_mib: u64, cpu_millis: u32, pids: u32, disk_mib: u64, io_mib: u64, io_ops: u32) -> Resources {
    Resources {
        memory_bytes: memory_mib << 20,
        cpu_millis,
        pids,
        disk_bytes: disk_mib << 20,
        io_bytes_per_sec: io_mib << 20,
        io_ops_per_sec: io_ops,
    }
}

impl Settings {
    pub fn control_config(&self, home: PathBuf) -> selfcloud_control::ControlConfig {
        let defaults = Limits::default();
        selfcloud_control::ControlConfig {
            home,
            kdf: KdfParams { m_cost: self.kdf_memory_kib, t_cost: self.kdf_iterations, p_cost: self.kdf_parallelism },
            limits: Limits {
                max_value_bytes: self.max_value_bytes,
                max_import_bytes: self.max_import_bytes,
                rate_per_token: self.rate_per_token,
                rate_burst: self.rate_burst,
                rate_per_ip: self.rate_per_ip,
                // Stand-in until its flag is wired.
                sign_ups_per_minute: self.sign_ups_per_minute.max(1),
                list_default: defaults.list_default.min(self.list_max),
                list_max: self.list_max,
                list_max_bytes: self.list_max_bytes,
                quota_bytes: self.quota_bytes,
                llm_app_tokens_per_day: self.llm_app_tokens_per_day,
                llm_owner_tokens_per_day: self.llm_owner_tokens_per_day,
                // Paid tiers burst to twice their rate, as the free tier's default does.
                growth: TierLimits {
                    quota_bytes: self.growth_quota_bytes,
                    rate_per_token: self.growth_rate_per_token,
                    rate_burst: self.growth_rate_per_token.saturating_mul(2),
                    llm_app_tokens_per_day: self.growth_llm_app_tokens_per_day,
                    llm_owner_tokens_per_day: self.growth_llm_owner_tokens_per_day,
                },
                pro: TierLimits {
                    quota_bytes: self.pro_quota_bytes,
                    rate_per_token: self.pro_rate_per_token,
                    rate_burst: self.pro_rate_per_token.saturating_mul(2),
                    llm_app_tokens_per_day: self.pro_llm_app_tokens_per_day,
                    llm_owner_tokens_per_day: self.pro_llm_owner_tokens_per_day,
                },
                audit_retention: self.audit_retention,
                audit_field_max: self.audit_field_max,
                sessions_per_user: self.sessions_per_user,
                app_sessions_per_grant: self.app_sessions_per_grant,
                spent_refresh_kept: self.spent_refresh_kept,
                log_in_free_failures: self.log_in_free_failures,
                log_in_max_wait_secs: self.log_in_max_wait_secs,
                log_in_names_tracked: self.log_in_names_tracked,
                apps_per_user: self.apps_per_user,
                resources: TierResources {
                    free: mib_resources(
                        self.free_memory_mib,
                        self.free_cpu_millis,
                        self.free_pids,
                        self.free_disk_mib,
                        self.free_io_mib_per_sec,
                        self.free_io_ops_per_sec,
                    ),
                    growth: mib_resources(
                        self.growth_memory_mib,
                        self.growth_cpu_millis,
                        self.growth_pids,
                        self.growth_disk_mib,
                        self.growth_io_mib_per_sec,
                        self.growth_io_ops_per_sec,
                    ),
                    pro: mib_resources(
                        self.pro_memory_mib,
                        self.pro_cpu_millis,
                        self.pro_pids,
                        self.pro_disk_mib,
                        self.pro_io_mib_per_sec,
                        self.pro_io_ops_per_sec,
                    ),
                },
            },
            ttls: TokenTtls {
                session: Duration::from_secs(self.session_ttl),
                web_session: Duration::from_secs(self.web_session_ttl),
                access: Duration::from_secs(self.access_ttl),
                refresh: Duration::from_secs(self.refresh_ttl),
                code: Duration::from_secs(self.code_ttl),
            },
            open_instances: self.open_instances,
            instance_memory_bytes: (self.instance_memory_mib > 0).then_some(self.instance_memory_mib << 20),
            // `runtime()` picks the runtime; a bench or test that wants another sets it.
            runtime: selfcloud_control::RuntimeConfig::Inproc,
            hibernate_after: Duration::from_secs_f64(self.hibernate_after.max(0.0)),
            stop_grace: Duration::from_secs(self.stop_grace),
            store_engine: self.store_engine,
            kdf_concurrency: match self.kdf_concurrency {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            },
            kdf_wait: Duration::from_secs(self.kdf_wait),
            // `up` sets it once the model is found.
            llm: None,
            egress: self.egress.config(),
            backup_kdf: selfcloud_backup::KdfCost {
                memory_kib: self.backup_kdf_memory_kib.max(8),
                iterations: self.backup_kdf_iterations.max(1),
            },
        }
    }
}

impl Settings {
    /// The runtime `up` serves with. `auto` and `process` both run each instance as its own
    /// process; each sandbox layer this kernel lacks is named in a warning and left out (never
    /// silently). `inproc` is asked for by name only.
    pub fn runtime(&self) -> anyhow::Result<selfcloud_control::RuntimeConfig> {
        if self.runtime == RuntimeChoice::Inproc {
            tracing::warn!("--runtime inproc: every instance runs inside the server (isolation is logical only)");
            return Ok(selfcloud_control::RuntimeConfig::Inproc);
        }
        let layers = selfcloud_sandbox::probe();
        for layer in layers.iter().filter(|l| !l.available) {
            tracing::warn!(
                layer = layer.name,
                why = layer.why.as_deref().unwrap_or(""),
                "sandbox layer unavailable: instances run without it"
            );
        }
        let has = |name: &str| layers.iter().any(|l| l.name == name && l.available);
        let program = std::env::current_exe()?;
        let mut config = selfcloud_control::runtime::ProcessConfig::new(program);
        config.sandbox = has("namespaces");
        config.cgroups = has("cgroups");
        config.start_timeout = Duration::from_secs(self.instance_start_timeout);
        config.log = InstanceLog {
            line_max: self.instance_log_line_max as usize,
            lines_per_sec: self.instance_log_lines_per_sec,
        };
        if config.host_ids.is_some() {
            config.host_ids = Some(self.instance_uids);
            tracing::info!(
                first = self.instance_uids.first,
                count = self.instance_uids.count,
                "the server runs as root: each instance runs as a host uid of its own"
            );
        }
        let images = config.host_ids.is_some() && config.sandbox;
        config.disk_images = match (self.instance_disk_images, images, selfcloud_sandbox::image::mkfs()) {
            (DiskImages::Off, ..) => false,
            (_, true, Ok(_)) => true,
            (DiskImages::On, false, _) => {
                anyhow::bail!("--instance-disk-images on needs the server to run as root, with namespaces")
            }
            (DiskImages::On, true, Err(e)) => anyhow::bail!("--instance-disk-images on: {e}"),
            (DiskImages::Auto, _, why) => {
                let why = match why {
                    Err(e) if images => e.to_string(),
                    _ => "the server does not run as root with namespaces".into(),
                };
                tracing::warn!(why = %why, "instances have no disk of their own: one can fill the home's disk");
                false
            }
        };
        if config.disk_images {
            tracing::info!("each instance has a disk of its own (a loop image of its tier's disk limit)");
        }
        let present: Vec<&str> = layers.iter().filter(|l| l.available).map(|l| l.name).collect();
        tracing::info!(layers = %present.join(","), "each instance runs in its own process");
        Ok(selfcloud_control::RuntimeConfig::Process(config))
    }
}

/// `--instance-disk-images`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum DiskImages {
    Auto,
    On,
    Off,
}

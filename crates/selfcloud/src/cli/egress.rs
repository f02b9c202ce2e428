//! The flags of the egress channel: which outside hosts instances may reach (an owner's upstream
//! LLM provider), how much of them, and where directory backups go.

use clap::Args;
use selfcloud_control::runtime::egress::EgressConfig;
use selfcloud_instance::protocol::egress::Origin;
use std::time::Duration;

#[derive(Args, Debug, Clone)]
pub struct EgressArgs {
    /// Origins instances may send requests to, comma-separated (`https://api.openai.com,
    /// http://127.0.0.1:8080`): an owner's upstream LLM provider must be one. Control sends each
    /// request itself, follows no redirect, and refuses any other origin (403). Empty (the
    /// default): instances reach nothing outside.
    #[arg(long, env = "SELFCLOUD_EGRESS_ALLOW", value_delimiter = ',', value_parser = Origin::parse)]
    pub egress_allow: Vec<Origin>,
    /// Seconds to wait for an outside host's connection, and between two bytes of its answer.
    #[arg(long, env = "SELFCLOUD_EGRESS_READ_TIMEOUT_SECS", default_value_t = 120)]
    pub egress_read_timeout_secs: u64,
    /// Largest answer an outside host may send one request, in MiB (cut off past it).
    #[arg(long, env = "SELFCLOUD_EGRESS_MAX_ANSWER_MIB", default_value_t = 16)]
    pub egress_max_answer_mib: u64,
    /// Requests one instance may have under way to outside hosts at once.
    #[arg(long, env = "SELFCLOUD_EGRESS_MAX_REQUESTS", default_value_t = 16)]
    pub egress_max_requests: u32,
    /// A directory where owners may keep their encrypted backups (the "directory" target), each
    /// instance confined to its own subdirectory, `DIR/<instance id>`, which it names objects in
    /// and nothing else. Unset (the default): no directory target on this server.
    #[arg(long, env = "SELFCLOUD_BACKUP_DIR_ROOT")]
    pub backup_dir_root: Option<std::path::PathBuf>,
    /// The most one instance's backups may hold in the backup directory, in MiB (a snapshot
    /// past it is refused, 507).
    #[arg(long, env = "SELFCLOUD_BACKUP_DIR_MAX_MIB", default_value_t = 64 * 1024)]
    pub backup_dir_max_mib: u64,
}

impl EgressArgs {
    pub fn config(&self) -> EgressConfig {
        let wait = Duration::from_secs(self.egress_read_timeout_secs.max(1));
        EgressConfig {
            allow: self.egress_allow.clone(),
            connect_timeout: wait.min(Duration::from_secs(10)),
            read_timeout: wait,
            max_answer_bytes: self.egress_max_answer_mib.max(1) << 20,
            max_streams: self.egress_max_requests.max(1),
            backup_dir_root: self.backup_dir_root.clone(),
            backup_dir_max_bytes: self.backup_dir_max_mib.max(1) << 20,
            ..EgressConfig::default()
        }
    }
}

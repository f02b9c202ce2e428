//! Configuration types shared by the crates; the binary fills them from flags and environment.

use std::time::Duration;

/// Argon2id cost. Stored with each user so it can be raised later without locking anyone out.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost: u32,
    /// Passes.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl Default for KdfParams {
    /// OWASP's recommended Argon2id floor: 19 MiB, 2 passes, 1 lane.
    fn default() -> Self {
        KdfParams { m_cost: 19 * 1024, t_cost: 2, p_cost: 1 }
    }
}

impl KdfParams {
    /// The cheapest cost argon2 accepts; for tests only, set through configuration.
    pub const INSECURE_FOR_TESTS: KdfParams = KdfParams { m_cost: 8, t_cost: 1, p_cost: 1 };
}

/// Token and code lifetimes.
#[derive(Clone, Copy, Debug)]
pub struct TokenTtls {
    /// The owner's API session (bearer).
    pub session: Duration,
    /// The browser's web session (the log-in and consent pages' cookie).
    pub web_session: Duration,
    pub access: Duration,
    pub refresh: Duration,
    pub code: Duration,
}

impl Default for TokenTtls {
    fn default() -> Self {
        TokenTtls {
            session: Duration::from_secs(24 * 3600),
            web_session: Duration::from_secs(15 * 60),
            access: Duration::from_secs(3600),
            refresh: Duration::from_secs(30 * 24 * 3600),
            code: Duration::from_secs(60),
        }
    }
}

/// Limits applied at the edge.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Largest record value, in bytes.
    pub max_value_bytes: usize,
    /// Largest archive `POST /v1/import` accepts, in bytes (it is spooled to a file in the
    /// instance's directory and checked whole from there before anything is written).
    pub max_import_bytes: usize,
    /// Requests per second allowed to one token (sustained), on the free tier.
    pub rate_per_token: u32,
    /// Requests a token may burst above its rate, on the free tier.
    pub rate_burst: u32,
    /// Unauthenticated requests (sign-up, log-in, token) per second from one client address.
    pub rate_per_ip: u32,
    /// Sign-ups per minute from all addresses together (each provisions an instance on this
    /// node's disk): many addresses pass the per-address limit, not this one.
    pub sign_ups_per_minute: u32,
    /// Default and maximum page size of a list.
    pub list_default: usize,
    pub list_max: usize,
    /// Bytes of values one list page holds at most (a page always holds one record).
    pub list_max_bytes: usize,
    /// Storage quota of an instance on the free tier (every new account's), in bytes.
    pub quota_bytes: u64,
    /// LLM tokens (prompt and answer) one app may spend in a UTC day on a free-tier instance: the
    /// ceiling of any budget its user sets on the grant.
    pub llm_app_tokens_per_day: u64,
    /// LLM tokens the owner's own calls (chat, assistant, embeddings) may spend in a UTC day on a
    /// free-tier instance: open sign-up must not hand out unbounded model time.
    pub llm_owner_tokens_per_day: u64,
    /// The paid tiers' quota and rates.
    pub growth: TierLimits,
    pub pro: TierLimits,
    /// Audit entries kept per instance; older ones are pruned.
    pub audit_retention: u64,
    /// Longest path or request id an audit entry keeps, in bytes; longer ones are cut.
    pub audit_field_max: usize,
    /// Owner sessions (and, apart, web sessions) one user keeps; a new one ends the oldest.
    pub sessions_per_user: usize,
    /// Sign-ins (token families, one per code exchange) an app keeps per grant; a new one ends
    /// the oldest.
    pub app_sessions_per_grant: usize,
    /// Spent refresh tokens a token family remembers, so a replay of one ends that family.
    pub spent_refresh_kept: usize,
    /// Failed password checks (log-in, recovery) one username may have before each further one
    /// waits, 1 s and doubling after every failure.
    pub log_in_free_failures: u32,
    /// The longest such wait, in seconds.
    pub log_in_max_wait_secs: u64,
    /// Usernames whose failures are remembered at once (the least telling is forgotten first).
    pub log_in_names_tracked: usize,
    /// Apps one account may have registered at once.
    pub apps_per_user: usize,
    /// What each tier's instance process may use (its cgroup), under the `process` runtime.
    pub resources: TierResources,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_value_bytes: 1024 * 1024,
            max_import_bytes: 256 * 1024 * 1024,
            rate_per_token: 200,
            rate_burst: 400,
            rate_per_ip: 20,
            sign_ups_per_minute: 60,
            list_default: 100,
            list_max: 1000,
            list_max_bytes: 4 * 1024 * 1024,
            quota_bytes: 10_000_000_000,
            llm_app_tokens_per_day: 20_000,
            llm_owner_tokens_per_day: 50_000,
            growth: TierLimits {
                quota_bytes: 50_000_000_000,
                rate_per_token: 500,
                rate_burst: 1000,
                llm_app_tokens_per_day: 200_000,
                llm_owner_tokens_per_day: 500_000,
            },
            pro: TierLimits {
                quota_bytes: 200_000_000_000,
                rate_per_token: 2000,
                rate_burst: 4000,
                llm_app_tokens_per_day: 2_000_000,
                llm_owner_tokens_per_day: 5_000_000,
            },
            audit_retention: 100_000,
            audit_field_max: 512,
            sessions_per_user: 32,
            app_sessions_per_grant: 16,
            spent_refresh_kept: 32,
            log_in_free_failures: 5,
            log_in_max_wait_secs: 900,
            log_in_names_tracked: 100_000,
            apps_per_user: 50,
            resources: TierResources::default(),
        }
    }
}

impl Limits {
    /// What an instance on `tier` may use.
    pub fn tier(&self, tier: Tier) -> TierLimits {
        match tier {
            Tier::Free => TierLimits {
                quota_bytes: self.quota_bytes,
                rate_per_token: self.rate_per_token,
                rate_burst: self.rate_burst,
                llm_app_tokens_per_day: self.llm_app_tokens_per_day,
                llm_owner_tokens_per_day: self.llm_owner_tokens_per_day,
            },
            Tier::Growth => self.growth,
            Tier::Pro => self.pro,
        }
    }
}

/// Memory, CPU and processes an instance's process may use, enforced by its cgroup.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Resources {
    /// Memory (anonymous and page cache charged to it); past it the kernel reclaims, then kills.
    pub memory_bytes: u64,
    /// CPU time per wall-clock second, in thousandths of a core (1000 = one core).
    pub cpu_millis: u32,
    /// Processes and threads at once.
    pub pids: u32,
    /// The instance's disk (its image's size, where the server gives each instance one): its
    /// records with their overhead, its logs and its LLM memory all fit in it.
    pub disk_bytes: u64,
    /// Bytes a second it may read, and as many write, on its disk (0: unbounded): one instance's
    /// copy-and-fsync burst must not queue every other instance's writes behind it.
    pub io_bytes_per_sec: u64,
    /// Reads a second it may issue to its disk, and as many writes (0: unbounded).
    pub io_ops_per_sec: u32,
}

/// Each tier's [`Resources`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierResources {
    pub free: Resources,
    pub growth: Resources,
    pub pro: Resources,
}

impl Default for TierResources {
    fn default() -> Self {
        const MIB: u64 = 1024 * 1024;
        const GIB: u64 = 1024 * MIB;
        // Disks hold each tier's storage quota (10, 50 and 200 GB) with room to spare for the
        // databases' own pages, write-ahead logs, the access log and the LLM's memory.
        TierResources {
            free: Resources {
                memory_bytes: 256 * MIB,
                cpu_millis: 1000,
                pids: 128,
                disk_bytes: 12 * GIB,
                io_bytes_per_sec: 64 * MIB,
                io_ops_per_sec: 1000,
            },
            growth: Resources {
                memory_bytes: 1024 * MIB,
                cpu_millis: 2000,
                pids: 256,
                disk_bytes: 56 * GIB,
                io_bytes_per_sec: 128 * MIB,
                io_ops_per_sec: 2000,
            },
            pro: Resources {
                memory_bytes: 4096 * MIB,
                cpu_millis: 4000,
                pids: 512,
                disk_bytes: 224 * GIB,
                io_bytes_per_sec: 256 * MIB,
                io_ops_per_sec: 4000,
            },
        }
    }
}

/// What the server logs of an instance process's stderr (the `process` runtime), which code that
/// took the instance over writes as it likes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceLog {
    /// Longest line logged, in bytes, its cut marker included; the rest of a longer one is dropped.
    pub line_max: usize,
    /// Lines per second logged of one instance (a second's worth may come at once); the others
    /// are dropped and counted.
    pub lines_per_sec: u32,
}

impl InstanceLog {
    /// The shortest `line_max` allowed: room for the cut marker and some text.
    pub const LINE_MIN: usize = 64;
}

impl Default for InstanceLog {
    fn default() -> Self {
        InstanceLog { line_max: 4096, lines_per_sec: 100 }
    }
}

impl TierResources {
    pub fn of(&self, tier: Tier) -> Resources {
        match tier {
            Tier::Free => self.free,
            Tier::Growth => self.growth,
            Tier::Pro => self.pro,
        }
    }
}

/// A plan: how much an instance may store and how fast its tokens may call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum Tier {
    #[default]
    Free,
    Growth,
    Pro,
}

impl Tier {
    pub const ALL: [Tier; 3] = [Tier::Free, Tier::Growth, Tier::Pro];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Free => "free",
            Tier::Growth => "growth",
            Tier::Pro => "pro",
        }
    }
}

impl std::str::FromStr for Tier {
    type Err = crate::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .into_iter()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| crate::Error::invalid("tier must be free, growth or pro"))
    }
}

impl std::fmt::Display for Tier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Quota and request rates of one tier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TierLimits {
    pub quota_bytes: u64,
    pub rate_per_token: u32,
    pub rate_burst: u32,
    /// The most LLM tokens one app may spend in a UTC day (see [`Limits::llm_app_tokens_per_day`]).
    pub llm_app_tokens_per_day: u64,
    /// The owner's own LLM tokens a UTC day (see [`Limits::llm_owner_tokens_per_day`]).
    pub llm_owner_tokens_per_day: u64,
}

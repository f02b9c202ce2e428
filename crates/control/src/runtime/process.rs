//! The `process` runtime: each instance in its own process (`<program> instance run --dir
//! <dir>`), behind the sandbox's walls, in a cgroup with its tier's limits.
//!
//! The start message (settings and the data key) goes down the child's stdin, never its command
//! line or environment (both are readable by other local users through /proc). The child says
//! `ready` on stdout once its socket takes calls. The server keeps the stdin pipe open for the
//! child's life: closing it asks the instance to stop, and if the server dies the kernel closes
//! it, so no instance outlives its server. Its stderr is a pipe too, which the server reads and
//! logs line by line, cleaned, cut and rate-limited (`stderr.rs`).

use super::{Awake, ResourceUsage, Runtime, RuntimeKind, WakeSpec};
use async_trait::async_trait;
use selfcloud_core::config::{InstanceLog, Resources};
use selfcloud_core::{Error, Result};
use selfcloud_instance::protocol::broker::BROKER_FD;
use selfcloud_instance::protocol::{Start, LISTENER_FD, READY_LINE};
use selfcloud_instance::transport::SOCKET_FILE;
use selfcloud_instance::{DataKey, InstanceClient};
use selfcloud_sandbox::cgroups;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use zeroize::Zeroize;

/// Settings of the process runtime.
#[derive(Clone, Debug)]
pub struct ProcessConfig {
    /// The selfcloud binary that runs `instance run`.
    pub program: PathBuf,
    /// Put instances behind the sandbox's walls (namespaces, seccomp, Landlock).
    pub sandbox: bool,
    /// Drive cgroups (memory, CPU, pids) for each instance.
    pub cgroups: bool,
    /// How long an instance may take to say it is ready.
    pub start_timeout: Duration,
    /// Shared files every instance may read (mounted read-only).
    pub read_only: Vec<PathBuf>,
    /// What of each instance's stderr the server logs (a line's length, lines per second).
    pub log: InstanceLog,
    /// When the server runs as root: the host uids instances' roots are mapped to, one of its
    /// own per instance (`None`: instances run as the server's own, unprivileged, uid).
    pub host_ids: Option<HostIds>,
    /// Give each instance a disk of its own, a loop image of its tier's disk limit (needs the
    /// server to run as root; `false`: instances write on the home's filesystem, unbounded).
    pub disk_images: bool,
    /// The shared LLM engine's memory limit (its cgroup's), in shared mode.
    pub engine_memory_bytes: u64,
}

/// A range of host uids (each also the gid): `first` for the shared LLM engine, `first + 1`, ...
/// `first + count - 1` for instances. No other user of the machine may hold one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HostIds {
    pub first: u32,
    pub count: u32,
}

impl HostIds {
    /// The uids instances are given (the range's first is the shared engine's).
    pub fn instances(self) -> (u32, u32) {
        (self.first + 1, self.count - 1)
    }

    /// Just above the range systemd leaves to containers (524288 to 1879048191), below 2^31.
    pub const DEFAULT: HostIds = HostIds { first: 1_879_048_192, count: 65_536 };
}

impl std::str::FromStr for HostIds {
    type Err = String;
    /// `FIRST:COUNT`.
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        let (first, count) = s.split_once(':').ok_or("expected FIRST:COUNT")?;
        let first: u32 = first.parse().map_err(|e| format!("FIRST: {e}"))?;
        let count: u32 = count.parse().map_err(|e| format!("COUNT: {e}"))?;
        if first == 0 || count < 2 || first.checked_add(count).is_none_or(|end| end > i32::MAX as u32) {
            return Err("FIRST must be above 0, COUNT at least 2, and FIRST + COUNT at most 2^31 - 1".into());
        }
        Ok(HostIds { first, count })
    }
}

impl ProcessConfig {
    pub fn new(program: PathBuf) -> Self {
        ProcessConfig {
            program,
            sandbox: true,
            cgroups: true,
            start_timeout: Duration::from_secs(10),
            read_only: Vec::new(),
            log: InstanceLog::default(),
            // SAFETY: reads this process's effective uid.
            host_ids: (unsafe { libc::geteuid() } == 0).then_some(HostIds::DEFAULT),
            // SAFETY: as above.
            disk_images: unsafe { libc::geteuid() } == 0,
            engine_memory_bytes: 4 << 30,
        }
    }
}

pub struct Process {
    config: ProcessConfig,
    cgroups: Option<cgroups::Hierarchy>,
    /// What the broker hands instances (`broker.rs`).
    offered: super::broker::Offered,
}

impl Process {
    /// Finds the cgroup trees (when asked to drive them).
    /// Where they cannot be driven, instances run without limits, and the log says why.
    /// `engine`: the shared LLM engine to run beside the instances (shared mode).
    pub fn new(
        config: ProcessConfig,
        engine: Option<super::engine::EngineConfig>,
        egress: Arc<super::egress::Egress>,
    ) -> Result<Self> {
        let cgroups = match config.cgroups.then(cgroups::Hierarchy::detect) {
            Some(Ok(h)) => {
                tracing::info!(trees = %h.describe(), "instance cgroups");
                Some(h)
            }
            Some(Err(e)) => {
                tracing::warn!(error = %e, "cgroups unavailable: instances run without memory, CPU and pids limits");
                None
            }
            None => None,
        };
        let engine = engine.map(|e| Arc::new(super::engine::EngineHost::new(e, cgroups.clone())));
        Ok(Process { config, cgroups, offered: super::broker::Offered { engine, egress: Some(egress) } })
    }
}

fn limits(r: Resources, disk: Option<(u32, u32)>) -> cgroups::Limits {
    let io = disk.map(|device| cgroups::IoLimit {
        device,
        bytes_per_sec: r.io_bytes_per_sec,
        ops_per_sec: r.io_ops_per_sec,
    });
    cgroups::Limits { memory_bytes: r.memory_bytes, cpu_millis: r.cpu_millis, pids: r.pids, io }
}

/// SIGKILLs the instance's process group: its reaper and the instance (which started it with
/// setsid, so the group's id is the reaper's pid, and nothing else is in it).
fn kill_group(pid: u32) {
    // SAFETY: a signal to the group this runtime created.
    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
}

/// The longest path a Unix socket address holds (sun_path, with its terminating zero).
const SOCKET_PATH_MAX: usize = 107;

#[async_trait]
impl Runtime for Process {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Process
    }

    fn engine_pid(&self) -> Option<u32> {
        self.offered.engine.as_ref().and_then(|e| e.pid())
    }

    async fn stop(&self) {
        if let Some(engine) = &self.offered.engine {
            engine.stop().await;
        }
    }

    async fn wake(&self, spec: WakeSpec, key: DataKey) -> Result<Box<dyn Awake>> {
        let id = spec.settings.id;
        let socket = spec.dir.join(SOCKET_FILE);
        if socket.as_os_str().len() > SOCKET_PATH_MAX {
            return Err(Error::internal(format!(
                "{} is longer than a Unix socket path may be ({SOCKET_PATH_MAX} bytes): choose a shorter --home",
                socket.display()
            )));
        }
        let _ = std::fs::remove_file(&socket);
        // Bound here and handed in: the instance never makes a socket, and the path stays the
        // server's to connect to even where the instance's directory is its own disk image.
        let listener = std::os::unix::net::UnixListener::bind(&socket)
            .map_err(|e| Error::internal(format!("instance {id}: bind {}: {e}", socket.display())))?;
        if let Some(host_id) = spec.host_id {
            // The instance's root is this host uid: everything in its directory becomes its own
            // (files made by the server at provisioning, and by an earlier uid after a change).
            let dir = spec.dir.clone();
            tokio::task::spawn_blocking(move || selfcloud_sandbox::give_to(&dir, host_id))
                .await
                .map_err(Error::internal)?
                .map_err(|e| Error::internal(format!("instance {id}: chown to its uid {host_id}: {e}")))?;
        }
        // Its I/O is throttled on the disk holding the home, where its image's reads and
        // writes land too (the loop device passes each on in the instance's own group).
        let disk = cgroups::IoLimit::device_of(&spec.dir);
        let group = match &self.cgroups {
            Some(h) => Some(h.create(&id.to_string(), limits(spec.resources, disk)).map_err(Error::internal)?),
            None => None,
        };
        let mut command = tokio::process::Command::new(&self.config.program);
        command
            .arg("instance")
            .arg("run")
            .arg("--dir")
            .arg(&spec.dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            // A pipe the server reads, never its own stderr: that may be its log file, which
            // the instance could chmod, truncate or overwrite through the descriptor.
            .stderr(std::process::Stdio::piped())
            // Nothing of the server's environment: only what says how to log.
            .env_clear()
            .kill_on_drop(true);
        // Its own session, with no controlling terminal: a terminal's Ctrl-C reaches the server,
        // which drains the instances instead of their dying mid-write, and the instance cannot
        // reach the operator's terminal.
        let listening = std::os::fd::AsRawFd::as_raw_fd(&listener);
        // The broker's socket: the instance's one way to ask for an outside channel.
        let (broker, brokered) = selfcloud_sandbox::fds::pair(selfcloud_sandbox::fds::Pair::Messages)
            .map_err(|e| Error::internal(format!("instance {id}: the broker's socket: {e}")))?;
        let brokered_fd = std::os::fd::AsRawFd::as_raw_fd(&brokered);
        // SAFETY: setsid, dup2 and fcntl are async-signal-safe, which is all that may run
        // between fork and exec.
        unsafe {
            command.pre_exec(move || {
                if libc::setsid() < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The broker's socket out of the listener's way first, should it sit there.
                let brokered_fd = match brokered_fd {
                    LISTENER_FD => libc::fcntl(brokered_fd, libc::F_DUPFD_CLOEXEC, BROKER_FD + 1),
                    fd => fd,
                };
                // The listener and the broker's socket at the descriptors the instance keeps.
                let moved = selfcloud_sandbox::fds::place(listening, LISTENER_FD);
                let brokered = selfcloud_sandbox::fds::place(brokered_fd, BROKER_FD);
                if moved < 0 || brokered < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        for name in ["RUST_LOG", "SELFCLOUD_LOG_FORMAT"] {
            if let Some(v) = std::env::var_os(name) {
                command.env(name, v);
            }
        }
        let mut child = command
            .spawn()
            .map_err(|e| Error::internal(format!("start {} instance run: {e}", self.config.program.display())))?;
        // The instance holds it now; the server's copy would only keep the socket alive after
        // the instance is gone.
        drop(listener);
        drop(brokered);
        super::broker::spawn(id, broker, self.offered.clone());
        let pid = child.id().ok_or_else(|| Error::internal("the instance exited at once"))?;
        let fail = |what: String, group: &Option<cgroups::Group>| {
            kill_group(pid);
            if let Some(g) = group {
                g.remove();
            }
            Error::internal(format!("instance {id}: {what}"))
        };
        // In its group before it reads its start message, so all it ever does is counted.
        if let Some(g) = &group {
            if let Err(e) = g.add(pid) {
                return Err(fail(format!("cgroup: {e}"), &group));
            }
        }
        let mut stdin = child.stdin.take().expect("stdin is piped");
        let stdout = child.stdout.take().expect("stdout is piped");
        // Read from now on, so what it says as it fails to start is logged too; until EOF, which
        // comes when it and its reaper are gone (exited or killed with their group).
        super::stderr::spawn(id, child.stderr.take().expect("stderr is piped"), self.config.log);
        let start = Start {
            settings: spec.settings,
            sandbox: self.config.sandbox,
            read_only: self.config.read_only.clone(),
            host_id: spec.host_id,
            image: spec.image,
        };
        // The start message, then the key on a line of its own (read once behind the walls).
        let mut line = serde_json::to_vec(&start).map_err(Error::internal)?;
        line.push(b'\n');
        line.extend_from_slice(hex::encode(key.as_bytes()).as_bytes());
        line.push(b'\n');
        drop(key);
        let sent = stdin.write_all(&line).await;
        line.zeroize();
        if let Err(e) = sent.and(stdin.flush().await) {
            return Err(fail(format!("send the start message: {e}"), &group));
        }
        let mut ready = String::new();
        let mut lines = tokio::io::BufReader::new(stdout);
        match tokio::time::timeout(self.config.start_timeout, lines.read_line(&mut ready)).await {
            Ok(Ok(_)) if ready.trim_end() == READY_LINE => {}
            Ok(_) => {
                let status = child.wait().await.ok().map(|s| s.to_string()).unwrap_or_default();
                return Err(fail(format!("exited before it was ready ({status}; its log says why)"), &group));
            }
            Err(_) => return Err(fail(format!("not ready after {:?}", self.config.start_timeout), &group)),
        }
        let client = match InstanceClient::connect(id, &socket).await {
            Ok(c) => c,
            Err(e) => return Err(fail(format!("connect to {}: {e}", socket.display()), &group)),
        };
        let exit = Arc::new(OnceLock::new());
        let (done_tx, done) = tokio::sync::watch::channel(false);
        let reaped = exit.clone();
        tokio::spawn(async move {
            let status = child.wait().await;
            let why = match status {
                Ok(s) => s.to_string(),
                Err(e) => format!("wait failed: {e}"),
            };
            let _ = reaped.set(why);
            let _ = done_tx.send(true);
        });
        Ok(Box::new(ProcessAwake {
            client,
            pid,
            exit,
            done,
            stdin: parking_lot::Mutex::new(Some(stdin)),
            group,
            disk,
            socket,
        }))
    }
}

struct ProcessAwake {
    client: InstanceClient,
    pid: u32,
    exit: Arc<OnceLock<String>>,
    done: tokio::sync::watch::Receiver<bool>,
    /// Closing it asks the instance to stop.
    stdin: parking_lot::Mutex<Option<tokio::process::ChildStdin>>,
    group: Option<cgroups::Group>,
    /// The disk its I/O is throttled on.
    disk: Option<(u32, u32)>,
    socket: PathBuf,
}

#[async_trait]
impl Awake for ProcessAwake {
    fn client(&self) -> InstanceClient {
        self.client.clone()
    }

    fn running(&self) -> bool {
        self.exit.get().is_none() && !self.client.is_closed()
    }

    fn exit(&self) -> Option<String> {
        self.exit.get().cloned()
    }

    fn usage(&self) -> ResourceUsage {
        self.group.as_ref().map(|g| g.usage()).unwrap_or_default()
    }

    fn pid(&self) -> Option<u32> {
        Some(self.pid)
    }

    fn limit(&self, resources: Resources) -> Result<()> {
        match &self.group {
            Some(g) => g.set_limits(limits(resources, self.disk)).map_err(Error::internal),
            None => Ok(()),
        }
    }

    async fn stop(&self, grace: Duration) {
        drop(self.stdin.lock().take());
        let mut done = self.done.clone();
        if tokio::time::timeout(grace, done.wait_for(|d| *d)).await.is_err() {
            tracing::warn!(instance = %self.client.id(), "did not stop in time; killed");
            kill_group(self.pid);
            let _ = done.wait_for(|d| *d).await;
        }
        // Whatever is left of its session (it cannot leave it: setsid and setpgid are not in its
        // allow-list) goes with it.
        kill_group(self.pid);
        if let Some(g) = &self.group {
            g.remove();
        }
        // The socket the server bound for it (the next wake binds a new one).
        let _ = std::fs::remove_file(&self.socket);
    }
}

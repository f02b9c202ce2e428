//! The shared LLM engine's process (`<program> engine run --dir <home>/engine`), kept by the
//! `process` runtime: started when the first instance asks the broker for its channel, behind
//! the instance's walls (its own uid, the first of `--instance-uids`, where the server runs as
//! root), in a cgroup of its own. A crashed engine is started again on the next ask, after the
//! backoff an instance gets (`instances::restart_backoff`); until then an ask is refused with
//! 503 and the wait, which the instance passes to its caller.
//!
//! Control gives the engine one end of each channel (a stream pair) beside the instance's id on
//! the engine's broker socket, and the instance the other: the engine has no address anyone
//! could reach it at.

use selfcloud_core::config::InstanceLog;
use selfcloud_core::{Error, InstanceId, Result};
use selfcloud_llm::channel::{EngineStart, Tenant, ENGINE_BROKER_FD, ENGINE_READY_LINE};
use selfcloud_llm::llama::LlamaOptions;
use selfcloud_sandbox::{cgroups, fds};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// How long the engine may take to load its model and say it is ready.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// A run this long counts as healthy: a crash after it starts the backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(30);

/// How the engine runs.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    pub program: PathBuf,
    /// The model, and the places of the one context every instance shares.
    pub options: LlamaOptions,
    /// Its working directory (empty; the only writable path in its view).
    pub dir: PathBuf,
    pub sandbox: bool,
    /// The files it reads: the model.
    pub read_only: Vec<PathBuf>,
    /// Its host uid, where the server runs as root.
    pub host_id: Option<u32>,
    /// Its cgroup's memory limit (the weights are mapped, the KV cache of every place is its own).
    pub memory_bytes: u64,
    pub log: InstanceLog,
}

pub struct EngineHost {
    config: EngineConfig,
    cgroups: Option<cgroups::Hierarchy>,
    state: tokio::sync::Mutex<State>,
    pid: AtomicU32,
}

#[derive(Default)]
struct State {
    running: Option<Running>,
    crashes_in_row: u32,
    retry_at: Option<Instant>,
}

struct Running {
    broker: OwnedFd,
    pid: u32,
    started: Instant,
    exited: tokio::sync::watch::Receiver<bool>,
    /// Closing it asks the engine to stop.
    stdin: Option<tokio::process::ChildStdin>,
    group: Option<cgroups::Group>,
}

impl Drop for Running {
    fn drop(&mut self) {
        // SAFETY: a signal to the session this host created for the engine.
        unsafe { libc::kill(-(self.pid as i32), libc::SIGKILL) };
        if let Some(g) = &self.group {
            g.remove();
        }
    }
}

impl EngineHost {
    pub fn new(config: EngineConfig, cgroups: Option<cgroups::Hierarchy>) -> Self {
        EngineHost { config, cgroups, state: Default::default(), pid: AtomicU32::new(0) }
    }

    /// The engine's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        Some(self.pid.load(Ordering::Relaxed)).filter(|&p| p != 0)
    }

    /// A new channel for `tenant`: the engine holds the other end, named as `tenant`'s. Starts
    /// the engine first where it is not running.
    pub async fn connect(&self, tenant: InstanceId) -> Result<OwnedFd> {
        let mut state = self.state.lock().await;
        if state.running.as_ref().is_some_and(|r| *r.exited.borrow()) {
            let ran = state.running.take().map(|r| r.started.elapsed()).unwrap_or_default();
            state.crashes_in_row = if ran >= HEALTHY_RUN { 1 } else { state.crashes_in_row + 1 };
            let wait = crate::instances::restart_backoff(state.crashes_in_row);
            state.retry_at = Some(Instant::now() + wait);
            self.pid.store(0, Ordering::Relaxed);
            tracing::warn!(
                after_secs = wait.as_secs(),
                "the shared LLM engine exited; it starts again on the next call"
            );
        }
        if state.running.is_none() {
            if let Some(wait) = state.retry_at.and_then(|at| at.checked_duration_since(Instant::now())) {
                return Err(restarting(wait.max(Duration::from_secs(1))));
            }
            match self.start().await {
                Ok(running) => {
                    self.pid.store(running.pid, Ordering::Relaxed);
                    state.running = Some(running);
                }
                Err(e) => {
                    state.crashes_in_row += 1;
                    let wait = crate::instances::restart_backoff(state.crashes_in_row).max(Duration::from_secs(1));
                    state.retry_at = Some(Instant::now() + wait);
                    tracing::error!(error = %e.message, detail = e.detail.as_deref().unwrap_or(""), "the shared LLM engine did not start");
                    return Err(restarting(wait));
                }
            }
        }
        let running = state.running.as_ref().expect("running");
        let (mine, theirs) = fds::pair(fds::Pair::Stream).map_err(Error::internal)?;
        let named = serde_json::to_vec(&Tenant { tenant: tenant.to_string() }).map_err(Error::internal)?;
        if let Err(e) = fds::send(running.broker.as_fd(), &named, Some(theirs.as_fd())) {
            tracing::warn!(error = %e, "the shared LLM engine's broker socket failed");
            state.running = None;
            self.pid.store(0, Ordering::Relaxed);
            return Err(restarting(Duration::from_secs(1)));
        }
        Ok(mine)
    }

    async fn start(&self) -> Result<Running> {
        let c = &self.config;
        let fail =
            |what: &str, e: &dyn std::fmt::Display| Error::internal(format!("the shared LLM engine: {what}: {e}"));
        selfcloud_durable::create_private_dir(&c.dir)?;
        if let Some(uid) = c.host_id {
            let dir = c.dir.clone();
            tokio::task::spawn_blocking(move || selfcloud_sandbox::give_to(&dir, uid))
                .await
                .map_err(Error::internal)?
                .map_err(|e| fail("chown its directory", &e))?;
        }
        let (ours, theirs) = fds::pair(fds::Pair::Messages).map_err(|e| fail("its broker socket", &e))?;
        let mut command = tokio::process::Command::new(&c.program);
        command
            .arg("engine")
            .arg("run")
            .arg("--dir")
            .arg(&c.dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .env_clear()
            .kill_on_drop(true);
        for name in ["RUST_LOG", "SELFCLOUD_LOG_FORMAT"] {
            if let Some(v) = std::env::var_os(name) {
                command.env(name, v);
            }
        }
        let handed = theirs.as_raw_fd();
        // SAFETY: setsid and dup2 are async-signal-safe, all that runs between fork and exec.
        unsafe {
            command.pre_exec(move || {
                let moved = fds::place(handed, ENGINE_BROKER_FD);
                if libc::setsid() < 0 || moved < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = command.spawn().map_err(|e| fail("start", &e))?;
        drop(theirs);
        let pid = child.id().ok_or_else(|| fail("start", &"it exited at once"))?;
        // SAFETY: a signal to the session the engine made (setsid) at its start.
        let kill = || unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        let group = match &self.cgroups {
            Some(h) => {
                let limits = cgroups::Limits {
                    memory_bytes: c.memory_bytes,
                    cpu_millis: 1000 * std::thread::available_parallelism().map_or(1, |n| n.get() as u32),
                    pids: 256,
                    io: None,
                };
                let group = h.create("llm-engine", limits).map_err(|e| fail("its cgroup", &e))?;
                if let Err(e) = group.add(pid) {
                    kill();
                    group.remove();
                    return Err(fail("its cgroup", &e));
                }
                Some(group)
            }
            None => None,
        };
        super::stderr::spawn("llm-engine", child.stderr.take().expect("piped"), c.log);
        let start = EngineStart {
            engine: c.options.clone(),
            sandbox: c.sandbox,
            read_only: c.read_only.clone(),
            host_id: c.host_id,
        };
        let mut line = serde_json::to_vec(&start).map_err(Error::internal)?;
        line.push(b'\n');
        let mut stdin = child.stdin.take().expect("piped");
        let mut ready = String::new();
        let mut stdout = tokio::io::BufReader::new(child.stdout.take().expect("piped"));
        let started = async {
            stdin.write_all(&line).await?;
            stdin.flush().await?;
            stdout.read_line(&mut ready).await
        };
        let outcome = tokio::time::timeout(START_TIMEOUT, started).await;
        if !matches!(outcome, Ok(Ok(_))) || ready.trim_end() != ENGINE_READY_LINE {
            kill();
            if let Some(g) = &group {
                g.remove();
            }
            return Err(fail("start", &"it was not ready (its log says why)"));
        }
        let (done, exited) = tokio::sync::watch::channel(false);
        tokio::spawn(async move {
            let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
            tracing::info!(%status, "the shared LLM engine exited");
            let _ = done.send(true);
        });
        tracing::info!(pid, places = c.options.slots, "the shared LLM engine is ready");
        Ok(Running { broker: ours, pid, started: Instant::now(), exited, stdin: Some(stdin), group })
    }

    /// Stops the engine (the server is stopping).
    pub async fn stop(&self) {
        let running = self.state.lock().await.running.take();
        if let Some(mut running) = running {
            let mut exited = running.exited.clone();
            // Closing its stdin asks it to stop; it has nothing to save.
            drop(running.stdin.take());
            let _ = tokio::time::timeout(Duration::from_secs(5), exited.wait_for(|e| *e)).await;
            drop(running);
        }
        self.pid.store(0, Ordering::Relaxed);
    }
}

fn restarting(wait: Duration) -> Error {
    Error::unavailable("the shared LLM engine is restarting; try again shortly", wait)
}

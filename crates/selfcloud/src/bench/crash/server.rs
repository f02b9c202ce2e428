//! The server under test: this same binary run as `selfcloud up` in a child process, so a
//! SIGKILL takes down exactly what production runs. Blocking calls: use from the blocking pool.

use anyhow::{bail, Context};
use selfcloud_store::EngineKind;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long a start may take before the harness gives up on it.
const START_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Server {
    child: Child,
    pub base: String,
}

impl Server {
    /// Starts `selfcloud up` on a free loopback port with cheap sign-up and no rate limit (the
    /// harness wants as many writes in flight as the store takes); its log goes to `log`.
    pub fn start(exe: &Path, home: &Path, store: EngineKind, log: &Path) -> anyhow::Result<Server> {
        let log_file = std::fs::File::create(log).with_context(|| format!("create {}", log.display()))?;
        let unlimited = "1000000";
        let mut child = Command::new(exe)
            .args(["up", "--addr", "127.0.0.1:0", "--kdf-memory-kib", "8", "--kdf-iterations", "1", "--model", "none"])
            .args(["--rate-per-token", unlimited, "--rate-burst", unlimited, "--rate-per-ip", unlimited])
            .args(["--store", store.as_str()])
            .arg("--home")
            .arg(home)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .with_context(|| format!("spawn {}", exe.display()))?;
        // The first stdout line says where it listens; read it on a thread so a hung start
        // cannot hang the harness.
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let read = BufReader::new(stdout).read_line(&mut line).map(|_| line);
            let _ = tx.send(read);
        });
        let mut server = Server { child, base: String::new() };
        let line = match rx.recv_timeout(START_TIMEOUT) {
            Ok(Ok(line)) => line,
            Ok(Err(e)) => bail!("reading the server's first line: {e} (log: {})", log.display()),
            Err(_) => bail!("the server did not start in {START_TIMEOUT:?} (log: {})", log.display()),
        };
        let Some(base) = line.trim().strip_prefix("selfcloud listening on ") else {
            bail!("the server did not start: first line {line:?} (log: {})", log.display());
        };
        server.base = base.to_owned();
        Ok(server)
    }

    /// SIGKILL: no drain, no destructor, no flush; only what reached the disk survives.
    pub fn kill(&mut self) -> anyhow::Result<()> {
        self.child.kill().context("SIGKILL the server")?;
        self.child.wait().context("reap the server")?;
        Ok(())
    }

    /// SIGTERM and a clean exit within `within`.
    pub fn stop(&mut self, within: Duration) -> anyhow::Result<()> {
        let status = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status()?;
        anyhow::ensure!(status.success(), "kill -TERM failed");
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::ensure!(status.success(), "the server exited with {status} after SIGTERM");
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the server did not stop within {within:?} of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Server {
    /// A harness that fails half-way leaves no server behind.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `selfcloud verify --home`: whether it passed, and what it printed.
pub fn verify(exe: &Path, home: &Path) -> anyhow::Result<(bool, String)> {
    let out = Command::new(exe)
        .arg("verify")
        .arg("--home")
        .arg(home)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("spawn {} verify", exe.display()))?;
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok((out.status.success(), text))
}

/// The server log of one cycle, kept beside the home for when a check fails.
pub fn log_path(dir: &Path, cycle: usize) -> PathBuf {
    dir.join(format!("up-{cycle:03}.log"))
}

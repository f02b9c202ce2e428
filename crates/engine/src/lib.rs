//! The shared LLM engine process (`selfcloud engine run --dir <dir>`): one continuous-batching
//! context (`llm::batched`) serving every instance, started by control behind the same walls
//! as an instance (namespaces with no network, its model the only file it reads, read-only; no
//! capabilities; Landlock; seccomp; its own cgroup).
//!
//! It opens no socket and listens on none. Control hands it, on the socket at
//! [`ENGINE_BROKER_FD`], one end of each instance's channel beside the [`Tenant`] it belongs
//! to; the instance holds the other end. So no instance can reach it but through the channel
//! handed in, and what it says of itself (its tenant) is never the instance's word. Each channel
//! is HTTP/2 (`llm::channel` says what crosses): a generation is a stream, a sequence of the
//! shared cache cleared at its end, and an instance whose reader stalls holds back only its own
//! sequence. A newer channel for the same tenant ends the older one (an instance asks for a new
//! channel only when its last one broke), so one instance holds one connection here.
//!
//! The start message is one line of JSON on stdin; `ready` on stdout once the model is loaded;
//! end of stdin is the order to stop, and comes when control stops it or dies.

mod serve;

use selfcloud_llm::batched::BatchedEngine;
use selfcloud_llm::channel::{EngineStart, Tenant, ENGINE_BROKER_FD, ENGINE_READY_LINE};
use std::collections::HashMap;
use std::io::{BufRead, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

fn bad(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// Runs the engine with `dir` as its (empty) working directory. Call it before any thread is
/// started (the walls need a single-threaded caller). Returns once told to stop.
pub fn run(dir: &Path) -> std::io::Result<()> {
    // Only stdin, stdout, stderr and the broker's socket cross from the server; prompts pass
    // through its memory, so no core dump carries them off.
    selfcloud_sandbox::close_inherited_and_undump(ENGINE_BROKER_FD + 1);
    let mut stdin = std::io::stdin().lock();
    let mut line = String::new();
    stdin.by_ref().take(64 * 1024).read_line(&mut line)?;
    drop(stdin);
    let start: EngineStart = serde_json::from_str(&line).map_err(|e| bad("the start message", e))?;
    let broker = selfcloud_sandbox::fds::handed(ENGINE_BROKER_FD, libc::SOCK_SEQPACKET, "the broker's socket")?;
    let spec = selfcloud_sandbox::Spec {
        dir: dir.to_owned(),
        read_only: start.read_only.clone(),
        host_id: start.host_id,
        image: None,
    };
    let entered = match start.sandbox {
        true => selfcloud_sandbox::enter(&spec),
        false => selfcloud_sandbox::restrict(&spec),
    }
    .map_err(|e| bad("the sandbox", e))?;
    tracing::debug!(landlock = %entered.landlock, "the engine is behind its walls");
    selfcloud_sandbox::lock_down().map_err(|e| bad("seccomp", e))?;

    let started = std::time::Instant::now();
    let engine = Arc::new(BatchedEngine::load(&start.engine).map_err(|e| bad("the model", e.message))?);
    tracing::info!(ms = started.elapsed().as_millis() as u64, places = start.engine.slots, "the shared engine loaded");

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async move {
        let (channels_tx, mut channels) = tokio::sync::mpsc::channel::<(Tenant, OwnedFd)>(16);
        std::thread::Builder::new().name("engine-broker".into()).spawn(move || {
            let mut buf = [0u8; 1024];
            while let Ok((n, fd)) = selfcloud_sandbox::fds::recv(broker.as_fd(), &mut buf) {
                if n == 0 {
                    break; // control is gone
                }
                let (Ok(tenant), Some(fd)) = (serde_json::from_slice::<Tenant>(&buf[..n]), fd) else { continue };
                if channels_tx.blocking_send((tenant, fd)).is_err() {
                    break;
                }
            }
        })?;
        let (stop_tx, mut stop) = tokio::sync::oneshot::channel::<()>();
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
            let _ = stop_tx.send(());
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{ENGINE_READY_LINE}")?;
        out.flush()?;
        drop(out);
        let mut served: HashMap<String, tokio::task::AbortHandle> = HashMap::new();
        loop {
            tokio::select! {
                _ = &mut stop => break,
                handed = channels.recv() => {
                    let Some((tenant, fd)) = handed else { break };
                    let stream = std::os::unix::net::UnixStream::from(fd);
                    stream.set_nonblocking(true)?;
                    let stream = tokio::net::UnixStream::from_std(stream)?;
                    let task = tokio::spawn(serve::channel(stream, tenant.tenant.clone(), engine.clone()));
                    if let Some(older) = served.insert(tenant.tenant, task.abort_handle()) {
                        older.abort();
                    }
                    served.retain(|_, t| !t.is_finished());
                }
            }
        }
        Ok::<_, std::io::Error>(())
    })
}

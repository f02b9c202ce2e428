//! The instance process (`selfcloud instance run --dir <dir>`): reads its start message from
//! stdin, goes behind the sandbox's walls, opens its parts, serves the instance API on the socket
//! in its directory, and says `ready` on stdout. It stops, letting calls under way finish, when
//! its stdin closes: the server closes it to hibernate or drain the instance, and the kernel
//! closes it if the server dies, so an instance never outlives its server.

use crate::protocol::{Start, READY_LINE};
use crate::transport::{serve_socket, SOCKET_FILE};
use crate::{local::Local, service, DataKey};
use selfcloud_store::StoreOptions;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroize;

/// How long calls under way may take to finish once the instance is asked to stop.
const DRAIN: Duration = Duration::from_secs(10);

fn bad(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// Runs the instance living in `dir`. Call it before any thread is started (the sandbox needs a
/// single-threaded caller). Returns once the instance has stopped.
pub fn run(dir: &Path) -> std::io::Result<()> {
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    let parsed: Result<Start, _> = serde_json::from_str(&line);
    line.zeroize();
    let mut start = parsed.map_err(|e| bad("the start message", e))?;
    let mut key = [0u8; 32];
    let decoded = hex::decode_to_slice(&start.key, &mut key);
    start.key.zeroize();
    decoded.map_err(|e| bad("the data key", e))?;
    let data_key = DataKey::from_bytes(key);
    key.zeroize();

    let root = if start.sandbox {
        let spec = selfcloud_sandbox::Spec { dir: dir.to_owned(), read_only: start.read_only.clone() };
        let entered = selfcloud_sandbox::enter(&spec).map_err(|e| bad("the sandbox", e))?;
        tracing::debug!(landlock = %entered.landlock, "behind the sandbox");
        PathBuf::from(selfcloud_sandbox::INSTANCE_MOUNT)
    } else {
        dir.to_owned()
    };
    let socket = root.join(SOCKET_FILE);
    let _ = std::fs::remove_file(&socket);
    let listener = std::os::unix::net::UnixListener::bind(&socket).map_err(|e| bad("bind the socket", e))?;
    listener.set_nonblocking(true)?;
    if start.sandbox {
        // From here on no socket can be made, no process started, nothing outside signalled.
        selfcloud_sandbox::lock_down().map_err(|e| bad("seccomp", e))?;
    }

    let settings = start.settings;
    let options = StoreOptions { quota_bytes: settings.quota_bytes };
    let local = Local::open(settings.id, &root, &data_key, options).map_err(|e| bad("open the store", e))?;
    drop(data_key);
    let router = service::router(local, settings);

    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(2).max_blocking_threads(16).enable_all().build()?;
    runtime.block_on(async {
        let listener = tokio::net::UnixListener::from_std(listener)?;
        let shutdown = CancellationToken::new();
        let stop = shutdown.clone();
        std::thread::spawn(move || {
            // Anything after the start line is ignored; end of file is the order to stop.
            let mut buf = [0u8; 64];
            while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
            stop.cancel();
        });
        let mut out = std::io::stdout().lock();
        writeln!(out, "{READY_LINE}")?;
        out.flush()?;
        drop(out);
        serve_socket(listener, router, shutdown, DRAIN).await;
        Ok::<_, std::io::Error>(())
    })?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

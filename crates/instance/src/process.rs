//! The instance process (`selfcloud instance run --dir <dir>`): reads its start message from
//! stdin, goes behind the sandbox's walls, opens its parts, serves the instance API on the
//! listening socket the server handed in (bound at its directory's socket path), and says
//! `ready` on stdout. It stops, letting calls under way finish, when
//! its stdin closes: the server closes it to hibernate or drain the instance, and the kernel
//! closes it if the server dies, so an instance never outlives its server.

use crate::protocol::broker::BROKER_FD;
use crate::protocol::{Start, LISTENER_FD, READY_LINE};
use crate::transport::serve_socket;
use crate::{local::Local, service, DataKey};
use selfcloud_store::StoreOptions;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroize;

/// How long calls under way may take to finish once the instance is asked to stop.
const DRAIN: Duration = Duration::from_secs(10);

fn bad(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

/// One line of stdin (the start message, then the key), read byte by byte from the raw
/// descriptor so no buffer outside this function (std's stdin keeps one) holds a copy of the
/// key, and nothing past the line is read: the key stays in the pipe until it is asked for.
fn read_line() -> std::io::Result<zeroize::Zeroizing<Vec<u8>>> {
    let mut line = zeroize::Zeroizing::new(Vec::with_capacity(1024));
    loop {
        let mut byte = 0u8;
        // SAFETY: reads one byte into a local.
        match unsafe { libc::read(0, (&mut byte as *mut u8).cast(), 1) } {
            1 if byte == b'\n' => return Ok(line),
            1 if line.len() < 64 * 1024 => line.push(byte),
            1 => return Err(std::io::Error::other("the start message is too long")),
            0 => return Err(std::io::Error::other("stdin closed before the start message")),
            _ => {
                let e = std::io::Error::last_os_error();
                if e.kind() != std::io::ErrorKind::Interrupted {
                    return Err(e);
                }
            }
        }
    }
}

/// Runs the instance living in `dir`. Call it before any thread is started (the sandbox needs a
/// single-threaded caller). Returns once the instance has stopped.
pub fn run(dir: &Path) -> std::io::Result<()> {
    // Only stdin, stdout, stderr, the listening socket and the broker's cross from the server:
    // any other descriptor a library left inheritable is closed before anything else runs.
    let first_closed = BROKER_FD + 1;
    // The data key lives in this process: no core dump may carry it off, and nothing of this
    // user's may read its memory through /proc.
    selfcloud_sandbox::close_inherited_and_undump(first_closed);
    let line = read_line()?;
    let start: Start = serde_json::from_slice(&line).map_err(|e| bad("the start message", e))?;
    drop(line);

    let listener = handed_listener()?;
    let spec = selfcloud_sandbox::Spec {
        dir: dir.to_owned(),
        read_only: start.read_only.clone(),
        host_id: start.host_id,
        image: start.image.clone().map(|i| selfcloud_sandbox::image::Image { path: i.path, bytes: i.bytes }),
    };
    let root = if start.sandbox {
        let entered = selfcloud_sandbox::enter(&spec).map_err(|e| bad("the sandbox", e))?;
        tracing::debug!(landlock = %entered.landlock, "behind the sandbox");
        PathBuf::from(selfcloud_sandbox::INSTANCE_MOUNT)
    } else {
        // No namespaces on this kernel: the walls that need none still go up.
        let entered = selfcloud_sandbox::restrict(&spec).map_err(|e| bad("the sandbox", e))?;
        tracing::debug!(landlock = %entered.landlock, "without namespaces");
        dir.to_owned()
    };
    // Behind the walls (and past the reaper's fork): now the key.
    let line = read_line()?;
    let mut key = [0u8; 32];
    let decoded = hex::decode_to_slice(line.as_slice(), &mut key);
    drop(line);
    decoded.map_err(|e| bad("the data key", e))?;
    let data_key = DataKey::from_bytes(key);
    key.zeroize();

    listener.set_nonblocking(true)?;
    // From here on no socket can be made, no process started, nothing outside signalled.
    selfcloud_sandbox::lock_down().map_err(|e| bad("seccomp", e))?;
    // Its reader is a thread, so only now (the walls need a single-threaded caller).
    let broker = match crate::broker::Broker::handed() {
        Ok(b) => Some(std::sync::Arc::new(b)),
        Err(e) => {
            tracing::warn!(error = %e, "no broker: this instance reaches nothing outside itself");
            None
        }
    };

    let settings = start.settings;
    let options = StoreOptions { quota_bytes: settings.quota_bytes };
    let local = Local::open(settings.id, &root, &data_key, options).map_err(|e| bad("open the store", e))?;
    drop(data_key);
    let outside = broker.map(|broker| service::Outside { broker, engine_beyond: true });
    let router = service::router_with(local, settings, outside);

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
    Ok(())
}

/// The listening Unix socket the server handed in at [`LISTENER_FD`], once it is sure to be one.
fn handed_listener() -> std::io::Result<std::os::unix::net::UnixListener> {
    use std::os::fd::FromRawFd;
    let mut listening: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: asks whether the descriptor is a listening socket, into a local.
    let rc = unsafe {
        libc::getsockopt(
            LISTENER_FD,
            libc::SOL_SOCKET,
            libc::SO_ACCEPTCONN,
            (&mut listening as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if rc != 0 || listening == 0 {
        return Err(bad("the listening socket", format!("descriptor {LISTENER_FD} is none (the server hands it in)")));
    }
    // SAFETY: the descriptor is a listening socket this process owns from now on.
    Ok(unsafe { std::os::unix::net::UnixListener::from_raw_fd(LISTENER_FD) })
}

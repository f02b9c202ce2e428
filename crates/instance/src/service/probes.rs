//! Attack code run inside an instance process, for the sandbox's tests (feature
//! `attack-probes`; never in a release build). Each probe tries one thing the walls must stop and
//! says whether it got through. Only control reaches it (`Access::System`).

use super::{Shared, S};
use crate::api::{ApiJson, ApiResult};
use axum::Json;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

#[derive(Deserialize)]
#[serde(tag = "probe", rename_all = "snake_case")]
pub enum Probe {
    Read {
        path: PathBuf,
    },
    Write {
        path: PathBuf,
    },
    List {
        path: PathBuf,
    },
    /// `inet_tcp`, `inet_udp`, `inet6_tcp`, `netlink`, `unix`.
    Socket {
        domain: String,
    },
    ConnectUnix {
        path: PathBuf,
    },
    Signal {
        pid: i32,
    },
    Ptrace {
        pid: i32,
    },
    Fork,
    Exec {
        path: PathBuf,
    },
    /// Starts up to `count` threads at once; answers how many started.
    Threads {
        count: u32,
    },
    /// Allocates and touches this many bytes.
    Alloc {
        bytes: usize,
    },
    /// Pushes a character into the terminal behind stderr, were it one (TIOCSTI).
    TypeIntoTerminal,
    /// Reads the instance's key file where it was kept before it moved out of instance
    /// directories (`keys.json` in its own directory).
    ReadOwnKeyFile,
    /// Makes a directory (one planted where the server might write a file).
    Mkdir {
        path: PathBuf,
    },
    /// Hard-links `from` as `to`.
    Link {
        from: PathBuf,
        to: PathBuf,
    },
    /// Clears the signal that ends the instance with its reaper.
    ClearDeathSignal,
    /// Makes a setuid file in its own directory.
    Setuid,
    /// From now on this instance answers as code that took it over could (`hostility`), on every
    /// call but control's (`/system/…`). Kept by this one instance: `inproc` runs them all in
    /// one process.
    Hostile {
        hostility: Hostility,
    },
    /// Maps `path` read-only (as the model is, by every instance) and asks which of its pages
    /// are in the page cache.
    Mincore {
        path: PathBuf,
    },
    /// Asks the kernel to drop `path`'s cached pages (`fadvise(DONTNEED)`).
    FadviseDontneed {
        path: PathBuf,
    },
    /// Maps `path` read-only and asks the kernel to page its pages out (`MADV_PAGEOUT`).
    Pageout {
        path: PathBuf,
    },
    /// Reads the host's load and memory.
    Sysinfo,
    /// Reads the size and free space of the filesystem holding `path`, by name and by descriptor.
    Statfs {
        path: PathBuf,
    },
    /// From now on (until turned off) every write of the token ledger fails, as a broken or
    /// full disk would make it.
    LedgerUnwritable {
        unwritable: bool,
    },
    /// From now on (until turned off) every append to the access log fails as on a full disk.
    AuditUnwritable {
        unwritable: bool,
    },
    /// Writes `text`, `times` times over, straight to fd 2 (what the server logs of it).
    Stderr {
        text: String,
        #[serde(default = "once")]
        times: usize,
    },
    /// Writes up to `bytes` to `path` in 1 MiB pieces, then fsyncs it (a disk filled, or a
    /// copy-and-fsync burst). Gets through if all of it was written and synced; the detail says
    /// how much was, in how long, and what stopped it.
    FillDisk {
        path: PathBuf,
        bytes: u64,
    },
    /// Removes the file at `path`.
    Remove {
        path: PathBuf,
    },
    /// Goes for the file behind fd 2 (the server's log, were it one): fchmod 0666, ftruncate,
    /// O_APPEND off and a line written at offset 0. Gets through if the truncation or the write
    /// at offset 0 worked; the detail says how each went.
    TamperStderr,
}

fn once() -> usize {
    1
}

#[derive(Serialize)]
pub struct Outcome {
    /// True when the walls let it through.
    pub got_through: bool,
    pub detail: String,
}

fn outcome<T: std::fmt::Debug>(r: std::io::Result<T>) -> Outcome {
    match r {
        Ok(v) => Outcome { got_through: true, detail: format!("{v:?}") },
        Err(e) => Outcome { got_through: false, detail: e.to_string() },
    }
}

fn errno(rc: libc::c_long) -> std::io::Result<libc::c_long> {
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Maps up to 1 MiB of `path` read-only and shared, touches it, and runs `f` on the mapping.
fn mapped<T>(path: &Path, f: impl FnOnce(*mut libc::c_void, usize) -> std::io::Result<T>) -> std::io::Result<T> {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path)?;
    let len = (file.metadata()?.len() as usize).min(1 << 20);
    if len == 0 {
        return Err(std::io::Error::other("an empty file has no page to map"));
    }
    // SAFETY: a fresh read-only mapping of an open file, unmapped below.
    let addr = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, file.as_raw_fd(), 0) };
    if addr == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: reads the mapping's first byte, inside the file.
    let _ = unsafe { std::ptr::read_volatile(addr.cast::<u8>()) };
    let out = f(addr, len);
    // SAFETY: the mapping made above.
    unsafe { libc::munmap(addr, len) };
    out
}

/// The probes, control's alone like every `/system` call (a test plays control).
pub static PART: crate::part::Part = crate::part::Part {
    name: "attack-probes",
    about: "What code that took over the instance would do (test builds only).",
    routes: &[crate::part::Route::new(
        http::Method::POST,
        "/system/probe",
        crate::part::Access::System,
        "Runs one probe.",
        || axum::routing::post(run),
    )
    .body(crate::part::Body::Json)],
    collections: &[],
    sealed: &[],
    channels: &[],
};

async fn run(s: S, ApiJson(probe): ApiJson<Probe>) -> ApiResult<Json<Outcome>> {
    if let Probe::Hostile { hostility } = probe {
        *s.hostile.lock().unwrap_or_else(|e| e.into_inner()) = hostility;
        return Ok(Json(Outcome { got_through: true, detail: "its answers are hostile from now on".into() }));
    }
    if let Probe::LedgerUnwritable { unwritable } = probe {
        s.ledger.unwritable.store(unwritable, std::sync::atomic::Ordering::Relaxed);
        return Ok(Json(Outcome { got_through: true, detail: format!("ledger unwritable: {unwritable}") }));
    }
    if let Probe::AuditUnwritable { unwritable } = probe {
        s.audit_unwritable.store(unwritable, std::sync::atomic::Ordering::Relaxed);
        return Ok(Json(Outcome { got_through: true, detail: format!("access log unwritable: {unwritable}") }));
    }
    let out = tokio::task::spawn_blocking(move || attempt(probe)).await.map_err(selfcloud_core::Error::internal)?;
    Ok(Json(out))
}

fn attempt(probe: Probe) -> Outcome {
    match probe {
        Probe::Read { path } => outcome(std::fs::read(&path).map(|b| b.len())),
        Probe::Write { path } => outcome(std::fs::write(&path, b"written from inside an instance")),
        Probe::List { path } => outcome(std::fs::read_dir(&path).map(|d| {
            d.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned()).collect::<Vec<_>>()
        })),
        Probe::Socket { domain } => {
            let (family, kind) = match domain.as_str() {
                "inet_tcp" => (libc::AF_INET, libc::SOCK_STREAM),
                "inet_udp" => (libc::AF_INET, libc::SOCK_DGRAM),
                "inet6_tcp" => (libc::AF_INET6, libc::SOCK_STREAM),
                "netlink" => (libc::AF_NETLINK, libc::SOCK_RAW),
                _ => (libc::AF_UNIX, libc::SOCK_STREAM),
            };
            outcome(errno(unsafe { libc::socket(family, kind, 0) } as libc::c_long).inspect(|&fd| unsafe {
                libc::close(fd as i32);
            }))
        }
        Probe::ConnectUnix { path } => outcome(std::os::unix::net::UnixStream::connect(path).map(drop)),
        Probe::Signal { pid } => outcome(errno(unsafe { libc::kill(pid, libc::SIGKILL) } as libc::c_long)),
        Probe::Ptrace { pid } => outcome(errno(unsafe {
            libc::ptrace(
                libc::PTRACE_ATTACH,
                pid,
                std::ptr::null_mut::<libc::c_void>(),
                std::ptr::null_mut::<libc::c_void>(),
            )
        })),
        Probe::Fork => outcome(errno(unsafe {
            match libc::fork() {
                0 => libc::_exit(0),
                pid => pid as libc::c_long,
            }
        })),
        Probe::Exec { path } => {
            use std::os::unix::process::CommandExt;
            outcome(Err::<(), _>(std::process::Command::new(path).exec()))
        }
        Probe::Threads { count } => {
            let stop = std::sync::Arc::new(std::sync::Barrier::new(1));
            let mut started = Vec::new();
            let mut failure = None;
            for _ in 0..count {
                let stop = stop.clone();
                match std::thread::Builder::new().stack_size(64 * 1024).spawn(move || {
                    let _ = stop;
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }) {
                    Ok(t) => started.push(t),
                    Err(e) => {
                        failure = Some(e);
                        break;
                    }
                }
            }
            let n = started.len();
            for t in started {
                let _ = t.join();
            }
            match failure {
                Some(e) => Outcome { got_through: false, detail: format!("{n} threads started, then: {e}") },
                None => Outcome { got_through: true, detail: format!("{n} threads started") },
            }
        }
        Probe::ReadOwnKeyFile => outcome(std::fs::read("/instance/keys.json").and_then(|b| {
            if b.is_empty() {
                Err(std::io::Error::other("an empty file stands in for it"))
            } else {
                Ok(b.len())
            }
        })),
        Probe::Mkdir { path } => outcome(std::fs::create_dir(path)),
        Probe::Link { from, to } => outcome(std::fs::hard_link(from, to)),
        Probe::ClearDeathSignal => {
            outcome(errno(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, 0, 0, 0, 0) } as libc::c_long))
        }
        Probe::Setuid => {
            use std::os::unix::fs::PermissionsExt;
            let path = "/instance/setuid-probe";
            // fchmod on the open file: the call an allowed mode change goes through.
            let made =
                std::fs::File::create(path).and_then(|f| f.set_permissions(std::fs::Permissions::from_mode(0o4755)));
            let _ = std::fs::remove_file(path);
            outcome(made)
        }
        Probe::Mincore { path } => outcome(mapped(&path, |addr, len| {
            let mut cached = vec![0u8; len.div_ceil(4096)];
            // SAFETY: `addr` is a mapping of `len` bytes; `cached` has a byte per page of it.
            errno(unsafe { libc::mincore(addr, len, cached.as_mut_ptr()) } as libc::c_long)?;
            Ok(format!("{} of {} pages cached", cached.iter().filter(|&&b| b & 1 == 1).count(), cached.len()))
        })),
        Probe::FadviseDontneed { path } => outcome(std::fs::File::open(&path).and_then(|f| {
            use std::os::fd::AsRawFd;
            // SAFETY: advice on an open descriptor; it answers an error number, not -1.
            match unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) } {
                0 => Ok(()),
                e => Err(std::io::Error::from_raw_os_error(e)),
            }
        })),
        Probe::Pageout { path } => outcome(mapped(&path, |addr, len| {
            const MADV_PAGEOUT: libc::c_int = 21;
            // SAFETY: `addr` is a mapping of `len` bytes.
            errno(unsafe { libc::madvise(addr, len, MADV_PAGEOUT) } as libc::c_long)
        })),
        Probe::Sysinfo => {
            // SAFETY: fills a local.
            let mut info: libc::sysinfo = unsafe { std::mem::zeroed() };
            outcome(
                errno(unsafe { libc::sysinfo(&mut info) } as libc::c_long).map(|_| {
                    format!("load {}, {} bytes free", info.loads[0], info.freeram as u64 * info.mem_unit as u64)
                }),
            )
        }
        Probe::Statfs { path } => {
            use std::os::unix::ffi::OsStrExt;
            let name = std::ffi::CString::new(path.as_os_str().as_bytes()).unwrap_or_default();
            // SAFETY: fill locals; `name` is a C string.
            let mut by_name: libc::statfs = unsafe { std::mem::zeroed() };
            let named = errno(unsafe { libc::statfs(name.as_ptr(), &mut by_name) } as libc::c_long);
            let opened = std::fs::File::open(&path).and_then(|f| {
                use std::os::fd::AsRawFd;
                let mut by_fd: libc::statfs = unsafe { std::mem::zeroed() };
                errno(unsafe { libc::fstatfs(f.as_raw_fd(), &mut by_fd) } as libc::c_long).map(|_| by_fd.f_bfree)
            });
            match (named, opened) {
                (Err(a), Err(b)) => Outcome { got_through: false, detail: format!("statfs: {a}; fstatfs: {b}") },
                (a, b) => Outcome {
                    got_through: true,
                    detail: format!("statfs: {:?}; fstatfs: {b:?}", a.map(|_| by_name.f_bfree)),
                },
            }
        }
        Probe::Hostile { .. } | Probe::LedgerUnwritable { .. } | Probe::AuditUnwritable { .. } => {
            Outcome { got_through: false, detail: "set by `run`, not here".into() }
        }
        Probe::TypeIntoTerminal => {
            let c = b'x';
            outcome(errno(unsafe { libc::ioctl(2, libc::TIOCSTI, &c) } as libc::c_long))
        }
        Probe::Alloc { bytes } => {
            let mut v = vec![0u8; bytes];
            for i in (0..bytes).step_by(4096) {
                v[i] = 1;
            }
            let sum: u64 = v.iter().step_by(4096).map(|&b| b as u64).sum();
            Outcome { got_through: true, detail: format!("touched {sum} pages") }
        }
        Probe::Stderr { text, times } => {
            use std::io::Write;
            outcome(std::io::stderr().lock().write_all(text.repeat(times).as_bytes()))
        }
        Probe::TamperStderr => tamper_stderr(),
        Probe::FillDisk { path, bytes } => fill_disk(&path, bytes),
        Probe::Remove { path } => outcome(std::fs::remove_file(path)),
    }
}

fn fill_disk(path: &Path, bytes: u64) -> Outcome {
    use selfcloud_core::Error;
    use std::io::Write;
    let started = std::time::Instant::now();
    let piece = vec![0x5au8; 1 << 20];
    let mut written = 0u64;
    let result = std::fs::File::create(path).and_then(|mut f| {
        // Big pieces, then (once one finds no room) small ones, for what room is left.
        let mut size = piece.len();
        while written < bytes {
            let n = size.min((bytes - written) as usize);
            match f.write(&piece[..n]) {
                Ok(0) => return Err(std::io::Error::from(std::io::ErrorKind::WriteZero)),
                Ok(n) => written += n as u64,
                Err(e) if size > 4096 && Error::is_no_space(&e) => size = 4096,
                Err(e) => return Err(e),
            }
        }
        f.sync_all()
    });
    let ms = started.elapsed().as_millis();
    match result {
        Ok(()) => Outcome { got_through: true, detail: format!("wrote {written} bytes in {ms} ms") },
        Err(e) => Outcome { got_through: false, detail: format!("wrote {written} bytes in {ms} ms, then: {e}") },
    }
}

fn tamper_stderr() -> Outcome {
    let said = |r: std::io::Result<libc::c_long>| r.map_or_else(|e| e.to_string(), |_| "ok".to_owned());
    // SAFETY: calls on fd 2, which this process holds; the write reads a local buffer.
    let (fchmod, ftruncate, fcntl, pwrite) = unsafe {
        let fchmod = errno(libc::fchmod(2, 0o666) as libc::c_long);
        let ftruncate = errno(libc::ftruncate(2, 0) as libc::c_long);
        let fcntl = errno(libc::fcntl(2, libc::F_GETFL) as libc::c_long).and_then(|flags| {
            errno(libc::fcntl(2, libc::F_SETFL, flags as libc::c_int & !libc::O_APPEND) as libc::c_long)
        });
        let forged = b"FORGED server line written at offset 0\n";
        let pwrite = errno(libc::pwrite(2, forged.as_ptr().cast(), forged.len(), 0) as libc::c_long);
        (fchmod, ftruncate, fcntl, pwrite)
    };
    let got_through = ftruncate.is_ok() || pwrite.is_ok();
    let detail = format!(
        "fchmod: {}; ftruncate: {}; fcntl: {}; pwrite: {}",
        said(fchmod),
        said(ftruncate),
        said(fcntl),
        said(pwrite)
    );
    Outcome { got_through, detail }
}

/// How a hostile instance answers (the `hostile` probe).
#[derive(Deserialize, Clone, Default)]
#[serde(tag = "mode", rename_all = "snake_case")]
pub enum Hostility {
    /// As built: its own answers.
    #[default]
    Off,
    /// Its own answers, with [`hostile_headers`] added.
    Headers,
    /// This answer in place of its own, with [`hostile_headers`].
    Answer { status: u16, content_type: String, body: String },
}

/// What code that took over an instance would add to its answers against the gateway's origin:
/// cookies in the web session's names, a redirect, CORS for every origin and credentials, a
/// page of its own (inline, its own CSP, sniffing), caching by shared caches, and the browser's
/// own site data wiped.
fn hostile_headers(h: &mut axum::http::HeaderMap) {
    use axum::http::HeaderValue;
    for (name, value) in [
        ("set-cookie", "selfcloud_web=scw_planted_by_the_instance; Path=/; HttpOnly"),
        ("set-cookie", "__Host-selfcloud_web=scw_planted_by_the_instance; Path=/; Secure"),
        ("location", "https://attacker.invalid/"),
        ("refresh", "0; url=https://attacker.invalid/"),
        ("access-control-allow-origin", "*"),
        ("access-control-allow-credentials", "true"),
        ("content-disposition", "inline"),
        ("content-security-policy", "script-src * 'unsafe-inline'"),
        ("x-content-type-options", "sniff"),
        ("cache-control", "public, max-age=31536000"),
        ("clear-site-data", "\"cookies\""),
        ("strict-transport-security", "max-age=0"),
        ("link", "<https://attacker.invalid/x.js>; rel=preload; as=script"),
        ("x-hostile", "1"),
    ] {
        h.append(name, HeaderValue::from_static(value));
    }
}

/// Answers every call but control's as the instance's [`Hostility`] says.
pub(crate) async fn hostile(
    axum::extract::State(s): axum::extract::State<std::sync::Arc<Shared>>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let hostility = if req.uri().path().starts_with("/system/") {
        Hostility::Off
    } else {
        s.hostile.lock().unwrap_or_else(|e| e.into_inner()).clone()
    };
    let mut resp = match hostility {
        Hostility::Off => return next.run(req).await,
        Hostility::Headers => next.run(req).await,
        Hostility::Answer { status, content_type, body } => {
            let status = axum::http::StatusCode::from_u16(status).unwrap_or(axum::http::StatusCode::OK);
            (status, [(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
        }
    };
    hostile_headers(resp.headers_mut());
    resp
}

//! Attack code run inside an instance process, for the sandbox's tests (feature
//! `attack-probes`; never in a release build). Each probe tries one thing the walls must stop and
//! says whether it got through. Only control's socket reaches it (`Need::System`).

use super::Ctx;
use crate::api::{ApiJson, ApiResult};
use crate::protocol::Need;
use axum::Json;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

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
    /// Reads what the mount view shows in place of the instance's key file.
    ReadOwnKeyFile,
    /// Clears the signal that ends the instance with its reaper.
    ClearDeathSignal,
    /// Makes a setuid file in its own directory.
    Setuid,
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

pub async fn run(ctx: Ctx, ApiJson(probe): ApiJson<Probe>) -> ApiResult<Json<Outcome>> {
    ctx.require(&Need::System)?;
    let out = tokio::task::spawn_blocking(move || attempt(probe)).await.map_err(selfcloud_core::Error::internal)?;
    Ok(Json(out))
}

fn attempt(probe: Probe) -> Outcome {
    match probe {
        Probe::Read { path } => outcome(std::fs::read(&path).map(|b| b.len())),
        Probe::Write { path } => outcome(std::fs::write(&path, b"written from inside an instance")),
        Probe::List { path } => outcome(std::fs::read_dir(&path).map(|d| d.count())),
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
    }
}

//! The walls around one instance process, in the order they go up (Sandstorm's supervisor and
//! bubblewrap do the same in C): new user, mount, pid, ipc, uts and network namespaces; a mount
//! view holding only the instance's own directory (read-write) and the shared files it may read
//! (read-only) on an otherwise empty, read-only root; no capabilities and `no_new_privs`;
//! Landlock where the kernel has it; a seccomp allow-list last. Resource limits come from the
//! cgroup the parent places the process in ([`cgroups`]).
//!
//! [`probe`] says which layers this kernel offers, so the server can say so at start instead of
//! failing on the first sign-up. No domain types live here: paths, ids and kernel calls.

pub mod cgroups;
#[cfg(unix)]
pub mod fds;
pub mod image;
#[cfg(target_os = "linux")]
mod linux;

use std::path::PathBuf;

/// Where the instance's directory appears inside its mount view.
pub const INSTANCE_MOUNT: &str = "/instance";

/// First thing in a process the server started: closes every descriptor from `first` on (what
/// a library left inheritable), and makes the process undumpable (no core file, no /proc
/// reads of its memory by its own user), for what its memory will hold (a data key, prompts).
pub fn close_inherited_and_undump(first: i32) {
    // SAFETY: closes descriptors this process has not opened (nothing here uses them), and sets
    // limits on this process alone.
    unsafe {
        if libc::syscall(libc::SYS_close_range, first as u32, u32::MAX, 0u32) != 0 {
            // Before Linux 5.9: one by one.
            for fd in first..1024 {
                libc::close(fd);
            }
        }
        let none = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        libc::setrlimit(libc::RLIMIT_CORE, &none);
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// What the child asks for.
#[derive(Clone, Debug, Default)]
pub struct Spec {
    /// The instance's directory: the only writable path in the view, at [`INSTANCE_MOUNT`].
    pub dir: PathBuf,
    /// Shared files mounted read-only at their own paths (models, later).
    pub read_only: Vec<PathBuf>,
    /// The unprivileged host uid (and gid) the instance's root is, when the server runs as root
    /// (`None`: the server's own ids, which are then unprivileged already). The directory must
    /// belong to it.
    pub host_id: Option<u32>,
    /// The instance's own disk, mounted at `dir` before anything else (only a server running
    /// as root gives one): `None` keeps `dir` on the host's filesystem.
    pub image: Option<image::Image>,
}

/// One layer of the sandbox and whether this kernel has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layer {
    pub name: &'static str,
    pub available: bool,
    /// Why not, when it is not.
    pub why: Option<String>,
}

/// Which layers this machine offers. Namespaces are tried in a short-lived child, so the
/// answer is what `enter` will meet, not what a config file claims.
pub fn probe() -> Vec<Layer> {
    #[cfg(target_os = "linux")]
    {
        linux::probe()
    }
    #[cfg(not(target_os = "linux"))]
    {
        vec![Layer { name: "namespaces", available: false, why: Some("not Linux".into()) }]
    }
}

/// Whether the process runtime can run here: it needs the namespaces (the other layers add to
/// them, and their absence is a warning, not a refusal).
pub fn namespaces_available(layers: &[Layer]) -> bool {
    layers.iter().any(|l| l.name == "namespaces" && l.available)
}

/// What `enter` put up, for the instance's start log.
#[derive(Clone, Debug, Default)]
pub struct Entered {
    pub landlock: String,
}

/// Puts the calling process behind the walls. Must run before any thread is started (user
/// namespaces refuse a threaded caller). Returns in a new child that is pid 1 of its own pid
/// namespace; the original process stays behind as its reaper and exits with the child's status,
/// so it never returns. The network namespace is empty: the caller's one way out is the
/// listening socket the server handed it.
pub fn enter(spec: &Spec) -> std::io::Result<Entered> {
    #[cfg(target_os = "linux")]
    {
        linux::enter(spec)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = spec;
        Err(std::io::Error::other("the sandbox needs Linux"))
    }
}

/// Where namespaces are missing: the walls that need none (`no_new_privs`, Landlock on the real
/// directory), so seccomp can still follow. The instance then sees the host's tree, bounded by
/// Landlock alone where the kernel has it.
pub fn restrict(spec: &Spec) -> std::io::Result<Entered> {
    #[cfg(target_os = "linux")]
    {
        linux::restrict(spec)
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = spec;
        Err(std::io::Error::other("the sandbox needs Linux"))
    }
}

/// The last wall: the seccomp allow-list. Separate from [`enter`] because the caller still has
/// to read its key and open its files behind the other walls; nothing may create a socket
/// after this.
pub fn lock_down() -> std::io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        linux::seccomp::install()
    }
    #[cfg(not(target_os = "linux"))]
    {
        Err(std::io::Error::other("the sandbox needs Linux"))
    }
}

/// Makes `dir` and everything in it belong to `id` (uid and gid), never following a link: what
/// the server wrote there becomes the instance's own before its mapped root starts. Only the
/// instance writes in its directory, and it is not running while this walks it.
#[cfg(unix)]
pub fn give_to(dir: &std::path::Path, id: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(dir, Some(id), Some(id))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            give_to(&entry.path(), id)?;
        } else {
            std::os::unix::fs::lchown(entry.path(), Some(id), Some(id))?;
        }
    }
    Ok(())
}

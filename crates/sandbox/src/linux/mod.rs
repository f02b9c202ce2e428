//! The Linux walls. Each step says why it is there; the order matters and is explained inline.

pub mod seccomp;

use crate::{Entered, Layer, Spec, INSTANCE_MOUNT};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{unshare, CloneFlags};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::{chdir, fork, pivot_root, ForkResult};
use std::io::{Error, Result};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

fn namespaces() -> CloneFlags {
    CloneFlags::CLONE_NEWUSER
        | CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWNET
}

fn io(what: &str, e: nix::Error) -> Error {
    Error::new(std::io::Error::from(e).kind(), format!("{what}: {e}"))
}

pub fn probe() -> Vec<Layer> {
    let mut layers = Vec::new();
    // In a throw-away child: unshare changes the caller, and the server must stay as it is.
    // Between fork and _exit only raw system calls run (the server may have threads).
    let namespaces = unsafe {
        match libc::fork() {
            -1 => Err(Error::last_os_error().to_string()),
            0 => {
                let rc = libc::unshare(namespaces().bits());
                libc::_exit(if rc == 0 { 0 } else { *libc::__errno_location() & 0x7f });
            }
            pid => {
                let mut status = 0;
                libc::waitpid(pid, &mut status, 0);
                match libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)) {
                    Some(0) => Ok(()),
                    Some(errno) => Err(format!(
                        "unshare(user, mount, pid, ipc, uts, net) fails: {} (user namespaces may be off: \
                         kernel.unprivileged_userns_clone, user.max_user_namespaces)",
                        Error::from_raw_os_error(errno)
                    )),
                    None => Err("the probe child died".into()),
                }
            }
        }
    };
    layers.push(layer("namespaces", namespaces));
    // The ABI version, or an error when Landlock is not built in or not enabled at boot.
    let landlock = unsafe {
        let v = libc::syscall(libc::SYS_landlock_create_ruleset, std::ptr::null::<u8>(), 0usize, 1u32);
        if v > 0 {
            Ok(())
        } else {
            Err(format!("Landlock is not enabled in this kernel ({})", Error::last_os_error()))
        }
    };
    layers.push(layer("landlock", landlock));
    let seccomp = unsafe {
        if libc::prctl(libc::PR_GET_SECCOMP) >= 0 {
            Ok(())
        } else {
            Err(format!("seccomp is not built in ({})", Error::last_os_error()))
        }
    };
    layers.push(layer("seccomp", seccomp));
    layers.push(layer("cgroups", crate::cgroups::Hierarchy::detect().map(drop).map_err(|e| e.to_string())));
    layers
}

fn layer(name: &'static str, r: std::result::Result<(), String>) -> Layer {
    Layer { name, available: r.is_ok(), why: r.err() }
}

pub fn enter(spec: &Spec) -> Result<Entered> {
    let (uid, gid) = (nix::unistd::geteuid(), nix::unistd::getegid());
    // All namespaces at once. The pid namespace applies to children only, hence the fork below.
    // The network namespace holds only a loopback that is down: the instance's one way out is
    // the socket its parent reaches through the filesystem.
    unshare(namespaces()).map_err(|e| io("unshare", e))?;
    // One id inside, the server's own outside: the instance owns what the server owns on disk
    // and can reach only what its mount view shows. setgroups must be denied before gid_map.
    std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
    std::fs::write("/proc/self/setgroups", "deny")?;
    std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;

    // Handles on what the view will hold, taken in the new mount namespace (a bind mount's
    // source must belong to it) while the host's tree is still visible: they are bind-mounted
    // through /proc/self/fd after the tmpfs hides their paths.
    let dir =
        std::fs::File::open(&spec.dir).map_err(|e| Error::new(e.kind(), format!("{}: {e}", spec.dir.display())))?;
    let shared = spec
        .read_only
        .iter()
        .map(|p| {
            std::fs::File::open(p)
                .map(|f| (p.clone(), f))
                .map_err(|e| Error::new(e.kind(), format!("{}: {e}", p.display())))
        })
        .collect::<Result<Vec<_>>>()?;

    mount_view(&dir, &shared, &spec.hidden)?;
    drop((dir, shared));
    nix::unistd::sethostname("instance").map_err(|e| io("sethostname", e))?;

    // Become pid 1 of the new pid namespace; the original process stays behind only to wait.
    match unsafe { fork() }.map_err(|e| io("fork", e))? {
        ForkResult::Parent { child } => {
            let code = match waitpid(child, None) {
                Ok(WaitStatus::Exited(_, code)) => code,
                Ok(WaitStatus::Signaled(_, sig, _)) => 128 + sig as i32,
                _ => 1,
            };
            std::process::exit(code);
        }
        ForkResult::Child => {}
    }
    // If the reaper is killed (the server's SIGKILL goes to it), the instance goes with it. (Were
    // it killed before this line, the instance still ends: its stdin closes with the server's
    // side of the pipe, which is what ends an instance in every case.)
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL).map_err(|e| io("pdeathsig", e))?;
    drop_capabilities()?;
    nix::sys::prctl::set_no_new_privs().map_err(|e| io("no_new_privs", e))?;
    let landlock = landlock_rules(Path::new(INSTANCE_MOUNT), &spec.read_only);
    Ok(Entered { landlock })
}

pub fn restrict(spec: &Spec) -> Result<Entered> {
    nix::sys::prctl::set_no_new_privs().map_err(|e| io("no_new_privs", e))?;
    Ok(Entered { landlock: landlock_rules(&spec.dir, &spec.read_only) })
}

/// An empty tmpfs becomes the root; the instance directory is bound read-write at /instance and
/// each shared path read-only at its own path; the old root is detached; the new root is then
/// made read-only. Nothing of the host (other instances, the registry, the node key, /proc) is
/// left to name.
fn mount_view(dir: &std::fs::File, shared: &[(PathBuf, std::fs::File)], hidden: &[String]) -> Result<()> {
    // Nothing mounted here may propagate back to the host's namespace.
    mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
        .map_err(|e| io("make / private", e))?;
    // Any directory serves as the mount point: the tmpfs hides it only in this namespace.
    let root = Path::new("/tmp");
    mount(Some("tmpfs"), root, Some("tmpfs"), MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("mode=0755,size=64k"))
        .map_err(|e| io("mount tmpfs root", e))?;
    let nosuid = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    let target = root.join(INSTANCE_MOUNT.trim_start_matches('/'));
    std::fs::create_dir(&target)?;
    bind(dir, &target, nosuid)?;
    // An empty, read-only file over each hidden name: the instance cannot read it, write it,
    // rename over it or unlink it (a mount point is busy), and has no right to unmount it.
    let empty = root.join(".empty");
    std::fs::write(&empty, b"")?;
    let blank = std::fs::File::open(&empty)?;
    for name in hidden.iter().filter(|n| !n.contains('/') && target.join(n).exists()) {
        bind(&blank, &target.join(name), nosuid | MsFlags::MS_RDONLY)?;
    }
    for (path, file) in shared {
        let target = root.join(path.strip_prefix("/").unwrap_or(path));
        if file.metadata()?.is_dir() {
            std::fs::create_dir_all(&target)?;
        } else {
            std::fs::create_dir_all(target.parent().unwrap_or(root))?;
            std::fs::write(&target, b"")?;
        }
        bind(file, &target, nosuid | MsFlags::MS_RDONLY)?;
    }
    // pivot_root(".", ".") stacks the old root under the new one; detaching it leaves only ours.
    chdir(root).map_err(|e| io("chdir", e))?;
    pivot_root(".", ".").map_err(|e| io("pivot_root", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| io("detach the old root", e))?;
    chdir("/").map_err(|e| io("chdir /", e))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REMOUNT | MsFlags::MS_BIND | MsFlags::MS_RDONLY | nosuid,
        None::<&str>,
    )
    .map_err(|e| io("make the root read-only", e))?;
    Ok(())
}

/// Binds what `file` names at `target`, then applies `flags` (a bind mount takes them only on a
/// remount).
fn bind(file: &std::fs::File, target: &Path, flags: MsFlags) -> Result<()> {
    let source = format!("/proc/self/fd/{}", file.as_raw_fd());
    mount(Some(source.as_str()), target, None::<&str>, MsFlags::MS_BIND, None::<&str>)
        .map_err(|e| io(&format!("bind {}", target.display()), e))?;
    // A mount inherited from the host is locked: a remount must keep the flags it has (atime
    // ones included), so they are read back and kept beside ours.
    let kept = nix::sys::statvfs::statvfs(target).map_err(|e| io("statvfs", e))?.flags();
    let mut flags = flags;
    for (have, keep) in [
        (nix::sys::statvfs::FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (nix::sys::statvfs::FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (nix::sys::statvfs::FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
        (nix::sys::statvfs::FsFlags::ST_RDONLY, MsFlags::MS_RDONLY),
    ] {
        if kept.contains(have) {
            flags |= keep;
        }
    }
    mount(None::<&str>, target, None::<&str>, MsFlags::MS_REMOUNT | MsFlags::MS_BIND | flags, None::<&str>)
        .map_err(|e| io(&format!("remount {}", target.display()), e))
}

/// Root inside the user namespace holds every capability there; the instance needs none of
/// them. The bounding set goes first (so none can come back), then the ambient, then the rest.
fn drop_capabilities() -> Result<()> {
    unsafe {
        for cap in 0..=63 {
            // Capabilities past the kernel's last answer EINVAL: that is the end of the list.
            if libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0) != 0
                && Error::last_os_error().raw_os_error() == Some(libc::EINVAL)
            {
                break;
            }
        }
        libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        #[derive(Clone, Copy)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        const VERSION_3: u32 = 0x2008_0522;
        let header = Header { version: VERSION_3, pid: 0 };
        let data = [Data { effective: 0, permitted: 0, inheritable: 0 }; 2];
        if libc::syscall(libc::SYS_capset, &header, data.as_ptr()) != 0 {
            return Err(Error::new(Error::last_os_error().kind(), format!("capset: {}", Error::last_os_error())));
        }
    }
    Ok(())
}

/// Landlock: the instance directory read-write, the shared paths read-only, nothing else. The
/// mount view already hides the rest; this holds even if a mount were ever added by mistake.
/// Best effort: an older kernel enforces fewer rights, one without Landlock none (said at start).
fn landlock_rules(own: &Path, read_only: &[PathBuf]) -> String {
    use landlock::{Access, AccessFs, PathBeneath, PathFd, Ruleset, RulesetAttr, RulesetCreatedAttr, ABI};
    let abi = ABI::V3;
    let attempt = || -> std::result::Result<landlock::RestrictionStatus, String> {
        let text = |e: &dyn std::fmt::Display| e.to_string();
        let fd = |p: &Path| PathFd::new(p).map_err(|e| text(&e));
        let own = fd(own)?;
        let mut ruleset = Ruleset::default()
            .handle_access(AccessFs::from_all(abi))
            .and_then(|r| r.create())
            .and_then(|r| r.add_rule(PathBeneath::new(own, AccessFs::from_all(abi))))
            .map_err(|e| text(&e))?;
        for path in read_only {
            ruleset = ruleset.add_rule(PathBeneath::new(fd(path)?, AccessFs::from_read(abi))).map_err(|e| text(&e))?;
        }
        ruleset.restrict_self().map_err(|e| text(&e))
    };
    match attempt() {
        Ok(status) => format!("{:?}", status.ruleset),
        Err(e) => format!("not enforced: {e}"),
    }
}

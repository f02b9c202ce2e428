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
    // A server running as root gives each instance a host uid of its own: root inside is then
    // nobody outside, so a kernel bug reached from inside lands as an unprivileged user. Only a
    // process of the parent namespace may map another uid than its own, so a helper forked
    // before the unshare (still host root, outside every namespace) writes the maps.
    // The instance's own disk first, while this process is still host root in the host's
    // namespaces (ext4 mounts only there), in a mount namespace of its own: the mount, and the
    // loop device under it, then go with the instance whatever ends it.
    if let Some(image) = &spec.image {
        if !uid.is_root() {
            return Err(Error::other("a disk image needs the server to run as root"));
        }
        unshare(CloneFlags::CLONE_NEWNS).map_err(|e| io("unshare the mount namespace", e))?;
        mount(None::<&str>, "/", None::<&str>, MsFlags::MS_REC | MsFlags::MS_PRIVATE, None::<&str>)
            .map_err(|e| io("make / private", e))?;
        crate::image::attach(image, &spec.dir)?;
        if let Some(id) = spec.host_id {
            crate::give_to(&spec.dir, id)?;
        }
    }
    let mapper = match spec.host_id {
        Some(id) if uid.is_root() => Some(IdMapper::fork(id)?),
        _ => None,
    };
    // All namespaces at once. The pid namespace applies to children only, hence the fork below.
    // The network namespace holds only a loopback that is down: the instance's one way out is
    // the socket its parent reaches through the filesystem.
    unshare(namespaces()).map_err(|e| io("unshare", e))?;
    match mapper {
        Some(mapper) => mapper.map()?,
        None => {
            // One id inside, the server's own (unprivileged) outside. setgroups must be denied
            // before an unprivileged process may write gid_map.
            std::fs::write("/proc/self/uid_map", format!("0 {uid} 1"))?;
            std::fs::write("/proc/self/setgroups", "deny")?;
            std::fs::write("/proc/self/gid_map", format!("0 {gid} 1"))?;
        }
    }

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

    if spec.host_id.is_some() && uid.is_root() {
        // Become the mapped root (host uid `host_id`), keeping the capabilities of this
        // namespace for the mounts below; the host's supplementary groups (root's) go first.
        // The handles above were opened as host root, which could still walk the server's
        // private home to them.
        let zero = (nix::unistd::Gid::from_raw(0), nix::unistd::Uid::from_raw(0));
        nix::unistd::setgroups(&[]).map_err(|e| io("setgroups", e))?;
        nix::unistd::setresgid(zero.0, zero.0, zero.0).map_err(|e| io("setresgid", e))?;
        nix::unistd::setresuid(zero.1, zero.1, zero.1).map_err(|e| io("setresuid", e))?;
    }
    mount_view(&dir, &shared)?;
    drop((dir, shared));
    nix::unistd::sethostname("instance").map_err(|e| io("sethostname", e))?;

    // Become pid 1 of the new pid namespace; the original process stays behind only to wait.
    // It holds nothing of the instance's (the data key is read after this fork) and, like the
    // instance, keeps no capability, gains none, and makes only the calls waiting takes.
    match unsafe { fork() }.map_err(|e| io("fork", e))? {
        ForkResult::Parent { child } => {
            let walled = drop_capabilities()
                .and_then(|_| nix::sys::prctl::set_no_new_privs().map_err(|e| io("no_new_privs", e)))
                .and_then(|_| seccomp::install_reaper());
            if let Err(e) = walled {
                eprintln!("the instance's reaper: {e}");
                let _ = nix::sys::signal::kill(child, nix::sys::signal::Signal::SIGKILL);
            }
            let code = loop {
                match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => break code,
                    Ok(WaitStatus::Signaled(_, sig, _)) => break 128 + sig as i32,
                    Err(nix::errno::Errno::EINTR) => continue,
                    _ => break 1,
                }
            };
            // SAFETY: ends this process at once; nothing of it needs flushing or unwinding.
            unsafe { libc::_exit(code) };
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
fn mount_view(dir: &std::fs::File, shared: &[(PathBuf, std::fs::File)]) -> Result<()> {
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

/// The helper that maps an instance's root to its host uid: a child forked before the unshare,
/// so it stays in the host's namespaces as root, waits for the word that the parent is in its
/// new user namespace, writes the parent's `uid_map` and `gid_map`, and exits.
struct IdMapper {
    pid: nix::unistd::Pid,
    go: std::os::fd::OwnedFd,
}

impl IdMapper {
    fn fork(host_id: u32) -> Result<IdMapper> {
        let (go_read, go) = nix::unistd::pipe().map_err(|e| io("pipe", e))?;
        let parent = std::process::id();
        // SAFETY: the caller is single-threaded (the sandbox needs it), so the child may run
        // ordinary code; it ends with _exit.
        match unsafe { fork() }.map_err(|e| io("fork the id mapper", e))? {
            ForkResult::Child => {
                drop(go);
                let mut byte = [0u8; 1];
                let told = nix::unistd::read(&go_read, &mut byte).is_ok_and(|n| n == 1);
                let map = |file: &str| std::fs::write(format!("/proc/{parent}/{file}"), format!("0 {host_id} 1"));
                let done = told && map("uid_map").is_ok() && map("gid_map").is_ok();
                // SAFETY: ends the helper without running the parent's exit handlers.
                unsafe { libc::_exit(if done { 0 } else { 1 }) }
            }
            ForkResult::Parent { child } => Ok(IdMapper { pid: child, go }),
        }
    }

    /// Tells the helper to write the maps, and waits until it has.
    fn map(self) -> Result<()> {
        nix::unistd::write(&self.go, &[1]).map_err(|e| io("tell the id mapper", e))?;
        drop(self.go);
        match waitpid(self.pid, None) {
            Ok(WaitStatus::Exited(_, 0)) => Ok(()),
            other => Err(Error::other(format!("mapping the instance's ids failed: {other:?}"))),
        }
    }
}

//! The system calls an instance may make once it serves: what its runtime (tokio, SQLite,
//! RocksDB, the allocator) was seen to need, and nothing that reaches outside the instance: no
//! new socket, connect, bind or listen (its listener exists before this; a connected pair,
//! which reaches nothing, is allowed), no fork or exec, no
//! kill/ptrace/process_vm_*, no mount, namespace, keyring, BPF or io_uring call. A call off the
//! list fails with EPERM rather than killing the process, so a library probing an optional call
//! (an I/O priority, say) degrades instead of crashing.
//!
//! Nor does an instance learn what others do through what they share: the model file is mapped
//! by every instance, so `mincore` (which of its pages are cached), `fadvise(DONTNEED)` and
//! `madvise(MADV_COLD, MADV_PAGEOUT)` (evict them, then time their return) are refused, and so
//! are `sysinfo` (the host's load, memory and process count) and `statfs`/`fstatfs` (the size
//! and free space of the host's disks; SQLite and RocksDB only read the filesystem's type from
//! it, and do without). Kept, and why: `getrusage` and `prlimit64` read only its own process;
//! `sched_getaffinity` shows the CPUs its cgroup gives it, which tokio sizes its pool by.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
};
use std::collections::BTreeMap;
use std::io::{Error, Result};

const ALLOWED: &[libc::c_long] = &[
    // memory
    libc::SYS_brk,
    libc::SYS_mmap,
    libc::SYS_munmap,
    libc::SYS_mremap,
    libc::SYS_mprotect,
    libc::SYS_membarrier,
    // files (inside the view: only the instance directory exists)
    libc::SYS_read,
    libc::SYS_write,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
    libc::SYS_readv,
    libc::SYS_writev,
    libc::SYS_preadv,
    libc::SYS_pwritev,
    libc::SYS_openat,
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_fstat,
    libc::SYS_newfstatat,
    libc::SYS_statx,
    libc::SYS_fsync,
    libc::SYS_fdatasync,
    libc::SYS_sync_file_range,
    libc::SYS_ftruncate,
    libc::SYS_fallocate,
    libc::SYS_readahead,
    libc::SYS_flock,
    libc::SYS_fcntl,
    libc::SYS_getdents64,
    libc::SYS_renameat,
    libc::SYS_renameat2,
    libc::SYS_unlinkat,
    libc::SYS_mkdirat,
    libc::SYS_faccessat,
    libc::SYS_faccessat2,
    libc::SYS_readlinkat,
    libc::SYS_fchmod,
    libc::SYS_fchown,
    libc::SYS_utimensat,
    libc::SYS_getcwd,
    libc::SYS_dup,
    libc::SYS_dup3,
    libc::SYS_pipe2,
    libc::SYS_ioctl,
    libc::SYS_eventfd2,
    libc::SYS_copy_file_range,
    libc::SYS_sendfile,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rename,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_unlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_mkdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_rmdir,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_access,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_stat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_lstat,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_open,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_readlink,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_poll,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_epoll_wait,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_dup2,
    // the already-bound socket and its connections
    libc::SYS_accept4,
    libc::SYS_recvfrom,
    libc::SYS_sendto,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_shutdown,
    libc::SYS_getsockopt,
    libc::SYS_setsockopt,
    libc::SYS_getsockname,
    libc::SYS_getpeername,
    libc::SYS_epoll_create1,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_pwait2,
    libc::SYS_ppoll,
    // threads, time, signals to itself
    libc::SYS_futex,
    libc::SYS_set_robust_list,
    libc::SYS_get_robust_list,
    libc::SYS_rseq,
    libc::SYS_set_tid_address,
    libc::SYS_sched_yield,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
    libc::SYS_getpriority,
    libc::SYS_setpriority,
    libc::SYS_clock_gettime,
    libc::SYS_clock_getres,
    libc::SYS_clock_nanosleep,
    libc::SYS_nanosleep,
    libc::SYS_gettimeofday,
    libc::SYS_rt_sigaction,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sigaltstack,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_getppid,
    libc::SYS_getuid,
    libc::SYS_geteuid,
    libc::SYS_getgid,
    libc::SYS_getegid,
    libc::SYS_getrandom,
    libc::SYS_uname,
    libc::SYS_prlimit64,
    libc::SYS_getrusage,
    libc::SYS_prctl,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_restart_syscall,
    libc::SYS_timerfd_create,
    libc::SYS_timerfd_settime,
];

fn filter_err(e: impl std::fmt::Display) -> Error {
    Error::other(format!("seccomp: {e}"))
}

fn arch() -> Result<seccompiler::TargetArch> {
    std::env::consts::ARCH.try_into().map_err(filter_err)
}

/// One rule: argument `arg` (a 32-bit value) differs from each of `values`.
fn none_of(arg: u8, values: &[u64]) -> Result<SeccompRule> {
    let conditions = values
        .iter()
        .map(|&v| SeccompCondition::new(arg, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, v).map_err(filter_err))
        .collect::<Result<Vec<_>>>()?;
    SeccompRule::new(conditions).map_err(filter_err)
}

/// What the instance's reaper (the process left outside its pid namespace) may do: wait for
/// the instance and exit with its status. Anything else fails with EPERM.
const REAPER_ALLOWED: &[libc::c_long] = &[
    libc::SYS_wait4,
    libc::SYS_waitid,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_rt_sigreturn,
    libc::SYS_restart_syscall,
    libc::SYS_write,
    libc::SYS_kill,
];

/// The reaper's own filter (see [`REAPER_ALLOWED`]); `write` only to stderr, `kill` only to
/// the instance it waits for, with SIGKILL, when its own walls failed to go up.
pub fn install_reaper() -> Result<()> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = REAPER_ALLOWED.iter().map(|&nr| (nr, vec![])).collect();
    let stderr = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, 2).map_err(filter_err)?;
    rules.insert(libc::SYS_write, vec![SeccompRule::new(vec![stderr]).map_err(filter_err)?]);
    let sigkill = SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::SIGKILL as u64)
        .map_err(filter_err)?;
    rules.insert(libc::SYS_kill, vec![SeccompRule::new(vec![sigkill]).map_err(filter_err)?]);
    let filter = SeccompFilter::new(rules, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, arch()?)
        .map_err(filter_err)?;
    let program: BpfProgram = filter.try_into().map_err(filter_err)?;
    seccompiler::apply_filter(&program).map_err(filter_err)
}

pub fn install() -> Result<()> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED.iter().map(|&nr| (nr, vec![])).collect();
    // madvise and fadvise64, but not the advice that evicts pages of a file others map.
    const MADV_COLD: u64 = 20;
    const MADV_PAGEOUT: u64 = 21;
    rules.insert(libc::SYS_madvise, vec![none_of(2, &[MADV_COLD, MADV_PAGEOUT])?]);
    rules.insert(libc::SYS_fadvise64, vec![none_of(3, &[libc::POSIX_FADV_DONTNEED as u64])?]);
    // clone only for threads: a new process (fork, or clone without CLONE_THREAD) is refused.
    let thread = SeccompCondition::new(
        0,
        SeccompCmpArgLen::Qword,
        SeccompCmpOp::MaskedEq(libc::CLONE_THREAD as u64),
        libc::CLONE_THREAD as u64,
    )
    .map_err(filter_err)?;
    rules.insert(libc::SYS_clone, vec![SeccompRule::new(vec![thread]).map_err(filter_err)?]);
    // Signals only to its own threads (pid 1 is this process inside its pid namespace).
    let own = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, std::process::id() as u64)
        .map_err(filter_err)?;
    rules.insert(libc::SYS_tgkill, vec![SeccompRule::new(vec![own]).map_err(filter_err)?]);
    // ioctl, but never to push input into a terminal (TIOCSTI, TIOCLINUX): stderr may be the
    // operator's terminal, and typed-in commands would run outside every wall.
    let not =
        |request: u64| SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::Ne, request).map_err(filter_err);
    // The request's type differs between C libraries and architectures; the cast is a no-op here.
    #[allow(clippy::unnecessary_cast)]
    let ioctl = SeccompRule::new(vec![not(libc::TIOCSTI as u64)?, not(libc::TIOCLINUX as u64)?]).map_err(filter_err)?;
    rules.insert(libc::SYS_ioctl, vec![ioctl]);
    // prctl only to name threads and read a few settings: not PR_SET_PDEATHSIG (which would let
    // the instance outlive its reaper), not PR_SET_DUMPABLE, not the seccomp or capability ones.
    const PR_SET_VMA: u64 = 0x5356_4d41;
    let options = [libc::PR_SET_NAME as u64, libc::PR_GET_NAME as u64, libc::PR_CAPBSET_READ as u64, PR_SET_VMA];
    let prctl = options
        .iter()
        .map(|&o| {
            let c = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, o).map_err(filter_err)?;
            SeccompRule::new(vec![c]).map_err(filter_err)
        })
        .collect::<Result<Vec<_>>>()?;
    rules.insert(libc::SYS_prctl, prctl);
    // Modes, but never setuid or setgid bits.
    let plain =
        SeccompCondition::new(1, SeccompCmpArgLen::Dword, SeccompCmpOp::MaskedEq(0o6000), 0).map_err(filter_err)?;
    rules.insert(libc::SYS_fchmod, vec![SeccompRule::new(vec![plain]).map_err(filter_err)?]);
    // A connected pair of Unix sockets reaches nothing outside (tokio's signal driver makes one).
    let unix = SeccompCondition::new(0, SeccompCmpArgLen::Dword, SeccompCmpOp::Eq, libc::AF_UNIX as u64)
        .map_err(filter_err)?;
    rules.insert(libc::SYS_socketpair, vec![SeccompRule::new(vec![unix]).map_err(filter_err)?]);
    // clone3 passes its flags in memory, which a filter cannot read: allowed here and answered
    // ENOSYS by the second filter, so the C library falls back to clone, which is checked.
    rules.insert(libc::SYS_clone3, vec![]);
    // Answered by `no_links` below.
    rules.insert(libc::SYS_link, vec![]);
    rules.insert(libc::SYS_linkat, vec![]);
    let allow_list = SeccompFilter::new(rules, SeccompAction::Errno(libc::EPERM as u32), SeccompAction::Allow, arch()?)
        .map_err(filter_err)?;
    // Hard links are refused as across filesystems (EXDEV), not EPERM: RocksDB's checkpoint
    // (the backup's consistent copy) then copies its files instead of linking them. The allow-list
    // lets link and linkat through to this filter, whose errno then stands (the kernel takes the
    // strictest action of all filters); installed before the allow-list, which forbids seccomp().
    let no_links = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_link, vec![]), (libc::SYS_linkat, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EXDEV as u32),
        arch()?,
    )
    .map_err(filter_err)?;
    let no_clone3 = SeccompFilter::new(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        SeccompAction::Allow,
        SeccompAction::Errno(libc::ENOSYS as u32),
        arch()?,
    )
    .map_err(filter_err)?;
    for filter in [no_clone3, no_links, allow_list] {
        let program: BpfProgram = filter.try_into().map_err(filter_err)?;
        seccompiler::apply_filter(&program).map_err(filter_err)?;
    }
    Ok(())
}

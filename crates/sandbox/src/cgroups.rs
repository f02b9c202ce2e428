//! Instance cgroups: memory, CPU, pids and disk I/O limits from the instance's tier, and what it
//! used.
//!
//! Both hierarchies are driven by writing their files: cgroup v2 (one unified tree) and v1 (a
//! tree per controller). A machine may mount both, as this project's CI machines do (v1
//! controllers, and a v2 tree holding none of the three); each controller is driven where it is
//! actually available. Instance groups live under a `selfcloud/` group *beside* the server's own
//! (v2 forbids processes in a group that has children, so never under it), and nothing else is
//! ever touched. A small, readable module rather than a crate: the kept crates pick one
//! hierarchy for the whole machine, which is wrong on such mixed machines.

use std::io::{Error, Result};
use std::path::{Path, PathBuf};

/// One instance's limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: u64,
    /// Thousandths of a core.
    pub cpu_millis: u32,
    pub pids: u32,
    /// Reads and writes on one block device (where the blkio/io controller is mounted).
    pub io: Option<IoLimit>,
}

/// Throttling of one block device: bytes and operations a second, each for reads and for
/// writes alike (0: unbounded). Throttling works whatever the disk's scheduler (weights need
/// BFQ, which few servers run).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoLimit {
    /// The whole disk's `major:minor` (a limit on a partition is refused).
    pub device: (u32, u32),
    pub bytes_per_sec: u64,
    pub ops_per_sec: u32,
}

impl IoLimit {
    /// The whole disk under the filesystem holding `path`, where it is a block device (a
    /// tmpfs or overlay has none: `None`).
    pub fn device_of(path: &Path) -> Option<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let dev = std::fs::metadata(path).ok()?.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
        if !sys.exists() {
            return None;
        }
        // A partition's parent directory in sysfs is its disk, whose `dev` names it.
        if sys.join("partition").exists() {
            let disk = std::fs::read_to_string(sys.canonicalize().ok()?.parent()?.join("dev")).ok()?;
            let (major, minor) = disk.trim().split_once(':')?;
            return Some((major.parse().ok()?, minor.parse().ok()?));
        }
        Some((major, minor))
    }
}

/// What an instance used, read from its group.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub memory_bytes: Option<u64>,
    pub cpu_usec: Option<u64>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Controller {
    Memory,
    Cpu,
    CpuAcct,
    Pids,
    Blkio,
}

impl Controller {
    fn v1_name(self) -> &'static str {
        match self {
            Controller::Memory => "memory",
            Controller::Cpu => "cpu",
            Controller::CpuAcct => "cpuacct",
            Controller::Pids => "pids",
            Controller::Blkio => "blkio",
        }
    }
}

/// Where each controller is driven: the `selfcloud` parent group in the right tree.
#[derive(Clone, Debug)]
pub struct Hierarchy {
    /// (controller, its `selfcloud` parent directory, whether it is a v2 tree)
    parents: Vec<(Controller, PathBuf, bool)>,
}

/// One instance's group, removed with [`Group::remove`].
#[derive(Debug)]
pub struct Group {
    dirs: Vec<(Controller, PathBuf, bool)>,
}

fn err(what: impl std::fmt::Display, path: &Path, e: Error) -> Error {
    Error::new(e.kind(), format!("{what} {}: {e}", path.display()))
}

fn write(path: &Path, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|e| err(format!("write {value:?} to"), path, e))
}

impl Hierarchy {
    /// Finds the mounted trees and this process's place in them, and makes the `selfcloud`
    /// parent groups. An error names what is missing.
    pub fn detect() -> Result<Hierarchy> {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
        let own = std::fs::read_to_string("/proc/self/cgroup")?;
        Self::from_tables(&mountinfo, &own)?.created()
    }

    fn from_tables(mountinfo: &str, own: &str) -> Result<Hierarchy> {
        // (mount point, fs type, super options) of each cgroup mount.
        let mounts: Vec<(PathBuf, String, String)> = mountinfo
            .lines()
            .filter_map(|line| {
                let (left, right) = line.split_once(" - ")?;
                let point = left.split(' ').nth(4)?;
                let mut r = right.split(' ');
                let fstype = r.next()?.to_owned();
                let options = r.nth(1).unwrap_or("").to_owned();
                fstype.starts_with("cgroup").then(|| (PathBuf::from(point), fstype, options))
            })
            .collect();
        // This process's path in each hierarchy: "0::/path" for v2, "N:memory,...:/path" for v1.
        let place = |v1_name: Option<&str>| {
            own.lines().find_map(|line| {
                let mut parts = line.splitn(3, ':');
                let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
                let matches = match v1_name {
                    None => controllers.is_empty(),
                    Some(name) => controllers.split(',').any(|c| c == name),
                };
                matches.then(|| path.trim_start_matches('/').to_owned())
            })
        };
        let mut parents = Vec::new();
        let v2 = mounts.iter().find(|(_, t, _)| t == "cgroup2");
        let v2_controllers = v2
            .and_then(|(point, _, _)| {
                let base = point.join(place(None)?);
                std::fs::read_to_string(base.parent().unwrap_or(point).join("cgroup.controllers")).ok()
            })
            .unwrap_or_default();
        for controller in
            [Controller::Memory, Controller::Cpu, Controller::CpuAcct, Controller::Pids, Controller::Blkio]
        {
            let v2_name = match controller {
                Controller::CpuAcct => "cpu",
                Controller::Blkio => "io",
                other => other.v1_name(),
            };
            if let Some((point, _, _)) = v2.filter(|_| v2_controllers.split_whitespace().any(|c| c == v2_name)) {
                if controller != Controller::CpuAcct {
                    let mine = point.join(place(None).unwrap_or_default());
                    parents.push((controller, beside(&mine, point), true));
                }
                continue;
            }
            let v1 =
                mounts.iter().find(|(_, t, opts)| t == "cgroup" && opts.split(',').any(|o| o == controller.v1_name()));
            if let Some((point, _, _)) = v1 {
                let mine = point.join(place(Some(controller.v1_name())).unwrap_or_default());
                parents.push((controller, beside(&mine, point), false));
            }
        }
        for needed in [Controller::Memory, Controller::Cpu, Controller::Pids] {
            if !parents.iter().any(|(c, _, _)| *c == needed) {
                return Err(Error::other(format!(
                    "the {} cgroup controller is mounted in neither cgroup v1 nor v2",
                    needed.v1_name()
                )));
            }
        }
        Ok(Hierarchy { parents })
    }

    fn created(self) -> Result<Hierarchy> {
        for (controller, dir, v2) in &self.parents {
            std::fs::create_dir_all(dir).map_err(|e| err("create", dir, e))?;
            if *v2 {
                // Children of a v2 group get only the controllers it hands down.
                let name = if *controller == Controller::Blkio { "io" } else { controller.v1_name() };
                let _ = write(&dir.join("cgroup.subtree_control"), &format!("+{name}"));
            }
        }
        Ok(self)
    }

    /// Makes `name`'s group with these limits. A group left by an earlier run is reused.
    pub fn create(&self, name: &str, limits: Limits) -> Result<Group> {
        let mut dirs = Vec::new();
        for (controller, parent, v2) in &self.parents {
            let dir = parent.join(name);
            match std::fs::create_dir(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(err("create", &dir, e)),
            }
            dirs.push((*controller, dir, *v2));
        }
        let group = Group { dirs };
        group.set_limits(limits)?;
        Ok(group)
    }

    /// Removes the groups left empty (a crashed server's). Only for a machine where one server
    /// runs: another server's group, made but not yet entered, is empty too.
    pub fn sweep(&self) {
        for (_, parent, _) in &self.parents {
            let Ok(entries) = std::fs::read_dir(parent) else { continue };
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(entry.path());
                }
            }
        }
    }

    /// The trees in use, for the start-up log: `memory=v1:/sys/fs/cgroup/memory/...`.
    pub fn describe(&self) -> String {
        self.parents
            .iter()
            .map(|(c, dir, v2)| format!("{}=v{}:{}", c.v1_name(), if *v2 { 2 } else { 1 }, dir.display()))
            .collect::<Vec<_>>()
            .join(" ")
    }
}

/// One device's throttle: `io.max` in v2, the four `blkio.throttle.*` files in v1. A 0 there
/// lifts the limit, as "max" does in v2.
fn write_io(dir: &Path, v2: bool, io: IoLimit) -> Result<()> {
    let (major, minor) = io.device;
    let (bps, iops) = (io.bytes_per_sec, u64::from(io.ops_per_sec));
    if v2 {
        let v = |n: u64| if n == 0 { "max".to_owned() } else { n.to_string() };
        let line = format!("{major}:{minor} rbps={} wbps={} riops={} wiops={}", v(bps), v(bps), v(iops), v(iops));
        return write(&dir.join("io.max"), &line);
    }
    for (file, value) in
        [("read_bps_device", bps), ("write_bps_device", bps), ("read_iops_device", iops), ("write_iops_device", iops)]
    {
        write(&dir.join(format!("blkio.throttle.{file}")), &format!("{major}:{minor} {value}"))?;
    }
    Ok(())
}

/// `<parent of mine>/selfcloud`, never above the mount point.
fn beside(mine: &Path, point: &Path) -> PathBuf {
    let parent = if mine == point { point } else { mine.parent().unwrap_or(point) };
    parent.join("selfcloud")
}

impl Group {
    /// Applies limits (at creation, and when the instance's tier changes).
    pub fn set_limits(&self, limits: Limits) -> Result<()> {
        const PERIOD_US: u64 = 100_000;
        let quota_us = PERIOD_US * u64::from(limits.cpu_millis) / 1000;
        for (controller, dir, v2) in &self.dirs {
            match (controller, v2) {
                (Controller::Memory, true) => {
                    write(&dir.join("memory.max"), &limits.memory_bytes.to_string())?;
                    // No swap: past its memory the instance is reclaimed, then killed.
                    let _ = write(&dir.join("memory.swap.max"), "0");
                }
                (Controller::Memory, false) => {
                    // Memory plus swap (where swap is accounted) may never be below memory alone:
                    // raised first when the limit grows, lowered after it when it shrinks.
                    let (bytes, memsw) = (limits.memory_bytes.to_string(), dir.join("memory.memsw.limit_in_bytes"));
                    let _ = write(&memsw, &bytes);
                    write(&dir.join("memory.limit_in_bytes"), &bytes)?;
                    let _ = write(&memsw, &bytes);
                }
                (Controller::Cpu, true) => write(&dir.join("cpu.max"), &format!("{quota_us} {PERIOD_US}"))?,
                (Controller::Cpu, false) => {
                    write(&dir.join("cpu.cfs_period_us"), &PERIOD_US.to_string())?;
                    write(&dir.join("cpu.cfs_quota_us"), &quota_us.to_string())?;
                }
                (Controller::Pids, _) => write(&dir.join("pids.max"), &limits.pids.to_string())?,
                (Controller::Blkio, v2) => {
                    if let Some(io) = limits.io {
                        write_io(dir, *v2, io)?;
                    }
                }
                (Controller::CpuAcct, _) => {}
            }
        }
        Ok(())
    }

    /// Whether this group throttles disk I/O (the blkio/io controller is mounted).
    pub fn throttles_io(&self) -> bool {
        self.dirs.iter().any(|(c, _, _)| *c == Controller::Blkio)
    }

    /// Moves a process (and so every thread and child it starts later) into the group.
    pub fn add(&self, pid: u32) -> Result<()> {
        for (_, dir, _) in &self.dirs {
            write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    pub fn usage(&self) -> Usage {
        let read = |dir: &Path, file: &str| std::fs::read_to_string(dir.join(file)).ok();
        let mut usage = Usage::default();
        for (controller, dir, v2) in &self.dirs {
            match (controller, v2) {
                (Controller::Memory, true) => {
                    usage.memory_bytes = read(dir, "memory.current").and_then(|s| s.trim().parse().ok())
                }
                (Controller::Memory, false) => {
                    usage.memory_bytes = read(dir, "memory.usage_in_bytes").and_then(|s| s.trim().parse().ok())
                }
                (Controller::Cpu, true) => {
                    usage.cpu_usec = read(dir, "cpu.stat").and_then(|s| {
                        s.lines().find_map(|l| l.strip_prefix("usage_usec ").and_then(|v| v.trim().parse().ok()))
                    })
                }
                (Controller::CpuAcct, false) => {
                    usage.cpu_usec =
                        read(dir, "cpuacct.usage").and_then(|s| s.trim().parse::<u64>().ok()).map(|ns| ns / 1000)
                }
                _ => {}
            }
        }
        usage
    }

    /// Removes the group once its processes are gone. The kernel refuses while any is alive,
    /// so a caller removes it after reaping the instance.
    pub fn remove(&self) {
        for (_, dir, _) in &self.dirs {
            if let Err(e) = std::fs::remove_dir(dir) {
                tracing::debug!(dir = %dir.display(), error = %e, "cgroup not removed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mixed_machine_drives_v1_controllers_and_places_groups_beside_the_servers() {
        // This project's CI machine: v1 controllers, a v2 tree holding none of the three.
        let mountinfo = "\
30 25 0:26 / /sys/fs/cgroup rw - tmpfs tmpfs rw
31 30 0:27 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
32 30 0:28 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
33 30 0:29 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
34 30 0:30 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
41 31 0:38 / /sys/fs/cgroup/unified-nonexistent rw,relatime - cgroup2 cgroup2 rw";
        let own = "8:pids:/\n4:memory:/jobs/abc\n2:cpuacct:/\n1:cpu:/\n0::/";
        let h = Hierarchy::from_tables(mountinfo, own).unwrap();
        let dir = |c: Controller| h.parents.iter().find(|(x, _, _)| *x == c).map(|(_, d, v2)| (d.clone(), *v2));
        assert_eq!(dir(Controller::Memory), Some((PathBuf::from("/sys/fs/cgroup/memory/jobs/selfcloud"), false)));
        assert_eq!(dir(Controller::Cpu), Some((PathBuf::from("/sys/fs/cgroup/cpu/selfcloud"), false)));
        assert_eq!(dir(Controller::Pids), Some((PathBuf::from("/sys/fs/cgroup/pids/selfcloud"), false)));
        assert!(dir(Controller::CpuAcct).is_some());
    }

    #[test]
    fn a_machine_without_a_controller_says_which() {
        let mountinfo = "31 30 0:27 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu";
        let e = Hierarchy::from_tables(mountinfo, "1:cpu:/").unwrap_err();
        assert!(e.to_string().contains("memory"), "{e}");
    }
}

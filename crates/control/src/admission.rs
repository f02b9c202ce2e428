//! Admission by memory. Each awake instance may use its tier's memory limit (its cgroup's, under
//! the `process` runtime), so the sum of those limits over the awake instances, and those
//! waking, is what the node has promised. An instance wakes only when its limit fits in the
//! budget (`--instance-memory-mib`); when it does not, the least recently used idle instances
//! hibernate to make room, and when no idle one can free enough the wake is refused (503 with
//! `Retry-After`) instead of leaving the choice to the kernel's OOM killer.
//!
//! The rule is a pure function ([`admit`]); `instances.rs` applies it under one lock.

use selfcloud_core::InstanceId;
use std::time::Instant;

/// What the table knows of one awake instance, for the rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AwakeInstance {
    pub id: InstanceId,
    /// The memory it may use: its tier's limit when it woke.
    pub reserved: u64,
    pub last_active: Instant,
    /// A call is under way (a handle or an answer body is held): it is not stopped for room.
    pub in_use: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Admission {
    /// It fits now.
    Admit,
    /// It fits once these (idle, least recently used first) hibernate.
    Evict(Vec<InstanceId>),
    /// Not even hibernating every idle instance makes room.
    Full,
}

/// Whether an instance that may use `need` bytes may wake under `budget`, with `awake` running
/// and `pending` bytes promised to wakes under way. One instance alone is always admitted, so a
/// budget below a tier's limit slows a node down rather than stopping it.
pub fn admit(budget: u64, need: u64, pending: u64, awake: &[AwakeInstance]) -> Admission {
    let used = awake.iter().map(|a| a.reserved).sum::<u64>().saturating_add(pending);
    if used.saturating_add(need) <= budget || (awake.is_empty() && pending == 0) {
        return Admission::Admit;
    }
    let mut idle: Vec<&AwakeInstance> = awake.iter().filter(|a| !a.in_use).collect();
    idle.sort_by_key(|a| a.last_active);
    let (mut left, mut victims) = (used, Vec::new());
    for a in idle {
        left -= a.reserved;
        victims.push(a.id);
        if left.saturating_add(need) <= budget || (left == 0 && pending == 0) {
            return Admission::Evict(victims);
        }
    }
    Admission::Full
}

/// The budget when the operator names none: three quarters of the machine's memory (the rest
/// for the server itself, the page cache and the shared model's pages).
pub fn default_budget(machine_bytes: u64) -> u64 {
    machine_bytes / 4 * 3
}

/// The machine's memory, from `/proc/meminfo` (`None` where there is none).
pub fn machine_memory() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = info.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    const MIB: u64 = 1024 * 1024;

    fn awake(n: usize, in_use: &[usize]) -> (Vec<AwakeInstance>, Vec<InstanceId>) {
        let start = Instant::now();
        let ids: Vec<InstanceId> = (0..n).map(|_| InstanceId::random()).collect();
        let list = ids
            .iter()
            .enumerate()
            .map(|(i, id)| AwakeInstance {
                id: *id,
                reserved: 100 * MIB,
                last_active: start + Duration::from_secs(i as u64),
                in_use: in_use.contains(&i),
            })
            .collect();
        (list, ids)
    }

    #[test]
    fn an_instance_that_fits_wakes_and_one_that_does_not_makes_room_from_the_least_recently_used() {
        let (list, ids) = awake(3, &[]);
        assert_eq!(admit(400 * MIB, 100 * MIB, 0, &list), Admission::Admit);
        assert_eq!(admit(300 * MIB, 100 * MIB, 0, &list), Admission::Evict(vec![ids[0]]));
        assert_eq!(admit(300 * MIB, 200 * MIB, 0, &list), Admission::Evict(vec![ids[0], ids[1]]));
        // Wakes under way count as if awake.
        assert_eq!(admit(400 * MIB, 100 * MIB, 100 * MIB, &list), Admission::Evict(vec![ids[0]]));
    }

    #[test]
    fn instances_in_use_are_never_stopped_for_room_and_a_full_node_refuses() {
        let (list, ids) = awake(3, &[0, 2]);
        assert_eq!(admit(300 * MIB, 100 * MIB, 0, &list), Admission::Evict(vec![ids[1]]));
        let (list, _) = awake(3, &[0, 1, 2]);
        assert_eq!(admit(300 * MIB, 100 * MIB, 0, &list), Admission::Full);
        // Nothing idle frees enough for a big instance: refused, and nothing is stopped for it.
        let (list, _) = awake(2, &[0]);
        assert_eq!(admit(200 * MIB, 200 * MIB, 0, &list), Admission::Full);
    }

    #[test]
    fn one_instance_alone_always_wakes() {
        assert_eq!(admit(10 * MIB, 100 * MIB, 0, &[]), Admission::Admit);
        let (list, ids) = awake(1, &[]);
        assert_eq!(admit(10 * MIB, 100 * MIB, 0, &list), Admission::Evict(vec![ids[0]]));
        assert_eq!(admit(10 * MIB, 100 * MIB, 5, &[]), Admission::Full);
        assert_eq!(default_budget(24 << 30), 18 << 30);
    }
}

//! The table of instances this server runs: each one
//! wakes on its first call, hibernates when idle, restarts with backoff after a crash, and is
//! stopped before its account's files are removed. One lock per instance (never one for all):
//! a slow wake of one instance delays only the callers of that instance.

use crate::admission::{self, Admission, AwakeInstance};
use crate::keys;
use crate::runtime::{Awake, ResourceUsage, WakeSpec};
use crate::Control;
use parking_lot::{Mutex, RwLock};
use selfcloud_core::{Error, InstanceId, Result};
use selfcloud_instance::InstanceClient;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use crate::provisioning::{instance_dir, INSTANCES_DIR};

/// An instance's state, as the operator sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RunState {
    Running,
    /// Not running: its files are all there is (no memory held).
    Hibernated,
    /// Exited without being asked; it restarts on its next call (after the backoff).
    Crashed,
}

impl RunState {
    pub const ALL: [RunState; 3] = [RunState::Running, RunState::Hibernated, RunState::Crashed];
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Hibernated => "hibernated",
            RunState::Crashed => "crashed",
        }
    }
}

/// What the table knows of one instance.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunStatus {
    pub state: RunState,
    pub usage: ResourceUsage,
    /// Unix milliseconds of its last call since this server started.
    pub last_active_ms: Option<u64>,
    pub restarts: u64,
    pub pid: Option<u32>,
}

/// Counters for `/metrics`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RuntimeSummary {
    pub by_state: Vec<(RunState, u64)>,
    pub restarts: u64,
    /// Instances hibernated to make room in the memory budget, and wakes refused for want of it.
    pub evicted_for_memory: u64,
    pub refused_for_memory: u64,
}

/// A wake's latency goes to whoever watches (the gateway's histogram).
pub type WakeObserver = Box<dyn Fn(Duration) + Send + Sync>;

#[derive(Default)]
struct Inner {
    awake: Option<Arc<dyn Awake>>,
    started_at: Option<Instant>,
    crashes_in_row: u32,
    /// No restart before this (the backoff after repeated crashes).
    not_before: Option<Instant>,
    crashed: bool,
}

struct Slot {
    /// The running instance, for the lock-free fast path.
    ready: RwLock<Option<(InstanceClient, Arc<dyn Awake>)>>,
    /// Held while the instance wakes, stops or is deleted.
    inner: tokio::sync::Mutex<Inner>,
    /// Held by every handle given out (and the bodies of their answers): while another holder
    /// exists, a call is under way and the instance is not stopped for idleness.
    lease: Arc<()>,
    last_active_ms: AtomicU64,
    last_active: Mutex<Instant>,
    restarts: AtomicU64,
    /// The memory it may use while awake: its tier's limit when it woke (`admission`).
    reserved: AtomicU64,
}

impl Slot {
    fn new() -> Self {
        Slot {
            ready: RwLock::new(None),
            inner: tokio::sync::Mutex::new(Inner::default()),
            lease: Arc::new(()),
            last_active_ms: AtomicU64::new(0),
            last_active: Mutex::new(Instant::now()),
            restarts: AtomicU64::new(0),
            reserved: AtomicU64::new(0),
        }
    }

    fn in_use(&self) -> bool {
        Arc::strong_count(&self.lease) > 1
    }

    fn touch(&self) {
        self.last_active_ms.store(now_ms(), Ordering::Relaxed);
        *self.last_active.lock() = Instant::now();
    }

    fn handle(&self, client: &InstanceClient) -> InstanceClient {
        self.touch();
        client.clone().with_lease(self.lease.clone())
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The wait before the next start after `crashes_in_row` crashes in a row: none after the first
/// (a one-off crash costs one 503), then 1 s, 2 s, 4 s … up to a minute.
pub fn restart_backoff(crashes_in_row: u32) -> Duration {
    match crashes_in_row {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 2).min(6)).min(Duration::from_secs(60)),
    }
}

/// Whether an instance should hibernate now.
pub fn should_hibernate(idle: Duration, in_use: bool, hibernate_after: Duration) -> bool {
    !in_use && idle >= hibernate_after
}

/// A run this long counts as healthy: a crash after it starts the backoff afresh.
const HEALTHY_RUN: Duration = Duration::from_secs(30);
/// The wait a wake refused for want of memory suggests: an awake instance's call ends, or it
/// goes idle, within seconds.
const RETRY_FULL: Duration = Duration::from_secs(2);

#[derive(Default)]
pub(crate) struct Table {
    slots: Mutex<HashMap<InstanceId, Arc<Slot>>>,
    /// Instances whose account is being deleted: never woken again.
    deleting: Mutex<std::collections::HashSet<InstanceId>>,
    pub(crate) wake_observer: std::sync::OnceLock<WakeObserver>,
    /// Memory promised to wakes under way (`admission`); held while a wake is admitted.
    pending: Mutex<u64>,
    /// Instances hibernated to make room for another, and wakes refused for want of it.
    pub(crate) evicted_for_memory: AtomicU64,
    pub(crate) refused_for_memory: AtomicU64,
}

impl Table {
    fn slot(&self, id: InstanceId) -> Arc<Slot> {
        self.slots.lock().entry(id).or_insert_with(|| Arc::new(Slot::new())).clone()
    }
}

impl Control {
    /// A handle on the instance, waking it if it is not running. The caller has already
    /// established, from a token, that this is the instance it may reach. While the handle (or
    /// an answer body it gave) lives, the instance is not hibernated.
    pub async fn instance(&self, id: InstanceId) -> Result<InstanceClient> {
        let slot = self.table.slot(id);
        if let Some((client, awake)) = slot.ready.read().as_ref() {
            if awake.running() {
                return Ok(slot.handle(client));
            }
        }
        let mut inner = slot.inner.lock().await;
        if let Some((client, awake)) = slot.ready.read().as_ref() {
            if awake.running() {
                return Ok(slot.handle(client));
            }
        }
        if self.table.deleting.lock().contains(&id) {
            return Err(Error::not_found("instance not found"));
        }
        if let Some(awake) = inner.awake.take() {
            // It exited without being asked: a crash. Count it and reap what is left.
            *slot.ready.write() = None;
            let healthy = inner.started_at.is_some_and(|t| t.elapsed() >= HEALTHY_RUN);
            inner.crashes_in_row = if healthy { 1 } else { inner.crashes_in_row + 1 };
            inner.crashed = true;
            inner.not_before = Some(Instant::now() + restart_backoff(inner.crashes_in_row));
            slot.restarts.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(instance = %id, exit = ?awake.exit(), crashes_in_row = inner.crashes_in_row, "instance crashed; restarting");
            awake.stop(Duration::ZERO).await;
        }
        if let Some(wait) = inner.not_before.and_then(|t| t.checked_duration_since(Instant::now())) {
            return Err(Error::unavailable("the instance is restarting after repeated crashes", wait));
        }
        let started = Instant::now();
        let need = self.config.limits.resources.of(self.tier_of(id)).memory_bytes;
        self.admit(id, need).await?;
        let woke = self.wake(id).await;
        let awake: Arc<dyn Awake> = match woke {
            Ok(awake) => Arc::from(awake),
            Err(e) => {
                self.admitted(need);
                return Err(e);
            }
        };
        let client = awake.client();
        inner.awake = Some(awake.clone());
        inner.started_at = Some(started);
        slot.reserved.store(need, Ordering::Relaxed);
        *slot.ready.write() = Some((client.clone(), awake));
        // Counted as awake now, no longer as a wake under way.
        self.admitted(need);
        let took = started.elapsed();
        if let Some(observe) = self.table.wake_observer.get() {
            observe(took);
        }
        tracing::debug!(instance = %id, took_ms = took.as_secs_f64() * 1e3, "instance woke");
        let handle = slot.handle(&client);
        drop(inner);
        self.hibernate_over_cap(id);
        Ok(handle)
    }

    async fn wake(&self, id: InstanceId) -> Result<Box<dyn Awake>> {
        let (registry, home, seal) =
            (self.registry.clone(), self.config.home.clone(), self.node_key.instance_seal_key(id));
        let (host_ids, images) = match &self.config.runtime {
            crate::RuntimeConfig::Process(p) => (p.host_ids, Some(p.disk_images)),
            crate::RuntimeConfig::Inproc => (None, None),
        };
        let resources = self.config.limits.resources.of(self.tier_of(id));
        let (dir, key, host_id, image) = tokio::task::spawn_blocking(move || -> Result<_> {
            // A deleted instance's key is shredded, but never rely on that alone.
            if registry.instance_deleted(id)? {
                return Err(Error::not_found("instance not found"));
            }
            let host_id =
                host_ids.map(|r| r.instances()).map(|(first, count)| registry.host_id(id, first, count)).transpose()?;
            // The sealed wrap is the same in a staged change's file: the current one will do.
            let file = crate::keystore::read(&home, id)?;
            let key = keys::unwrap(&seal, keys::SEAL_PURPOSE, &file.sealed)?;
            let dir = instance_dir(&home, id);
            let image = match images {
                Some(make) => crate::disk::prepare(&home, id, &dir, resources.disk_bytes, make)?,
                // In the server's own process there is no mount namespace to mount it in.
                None if crate::disk::image_path(&home, id).exists() => {
                    return Err(Error::internal(format!(
                        "instance {id} lives in its disk image, which only `--runtime process` mounts"
                    )))
                }
                None => None,
            };
            Ok((dir, key, host_id, image))
        })
        .await
        .map_err(Error::internal)??;
        self.runtime.wake(WakeSpec { dir, settings: self.settings(id), resources, host_id, image }, key).await
    }

    /// Waits until `need` bytes fit in the memory budget, hibernating the least recently used
    /// idle instances to make room, and promises them to the wake of `id` (given back by
    /// [`Control::admitted`]); 503 when no idle instance can free enough.
    async fn admit(&self, id: InstanceId, need: u64) -> Result<()> {
        let budget = self.memory_budget;
        for _ in 0..4 {
            let victims: Vec<(InstanceId, Arc<Slot>)> = {
                let mut pending = self.table.pending.lock();
                let slots: Vec<(InstanceId, Arc<Slot>)> = self
                    .table
                    .slots
                    .lock()
                    .iter()
                    .filter(|(other, s)| **other != id && s.ready.read().is_some())
                    .map(|(other, s)| (*other, s.clone()))
                    .collect();
                let awake: Vec<AwakeInstance> = slots
                    .iter()
                    .map(|(other, s)| AwakeInstance {
                        id: *other,
                        reserved: s.reserved.load(Ordering::Relaxed),
                        last_active: *s.last_active.lock(),
                        in_use: s.in_use(),
                    })
                    .collect();
                match admission::admit(budget, need, *pending, &awake) {
                    Admission::Admit => {
                        *pending += need;
                        return Ok(());
                    }
                    Admission::Full => break,
                    Admission::Evict(ids) => slots.into_iter().filter(|(other, _)| ids.contains(other)).collect(),
                }
            };
            for (victim, slot) in victims {
                tracing::info!(instance = %victim, for_instance = %id, "instance hibernated to make room in the memory budget");
                self.table.evicted_for_memory.fetch_add(1, Ordering::Relaxed);
                stop_slot(victim, &slot, self.config.stop_grace, |s| !s.in_use()).await;
            }
        }
        self.table.refused_for_memory.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(instance = %id, budget_mib = budget >> 20, need_mib = need >> 20,
            "no room in the instance memory budget: every awake instance is in use");
        Err(Error::unavailable("the server has no memory free for another instance now; try again shortly", RETRY_FULL))
    }

    /// A wake admitted for `need` bytes has ended (awake, counted by its slot, or failed).
    fn admitted(&self, need: u64) {
        let mut pending = self.table.pending.lock();
        *pending = pending.saturating_sub(need);
    }

    /// Past the cap on awake instances, the least recently used idle ones go to sleep.
    fn hibernate_over_cap(&self, just_woken: InstanceId) {
        let cap = self.config.open_instances.max(1);
        let mut awake: Vec<(Instant, InstanceId, Arc<Slot>)> = self
            .table
            .slots
            .lock()
            .iter()
            .filter(|(_, s)| s.ready.read().is_some())
            .map(|(id, s)| (*s.last_active.lock(), *id, s.clone()))
            .collect();
        if awake.len() <= cap {
            return;
        }
        awake.sort_by_key(|(at, _, _)| *at);
        let excess = awake.len() - cap;
        for (_, id, slot) in awake.into_iter().filter(|(_, id, s)| *id != just_woken && !s.in_use()).take(excess) {
            let grace = self.config.stop_grace;
            tokio::spawn(async move { stop_slot(id, &slot, grace, |s| !s.in_use()).await });
        }
    }

    /// Hibernates every instance idle for the configured time. Run now and then by the gateway.
    pub async fn hibernate_idle(&self) {
        let after = self.config.hibernate_after;
        let idle: Vec<(InstanceId, Arc<Slot>)> = self
            .table
            .slots
            .lock()
            .iter()
            .filter(|(_, s)| {
                s.ready.read().is_some() && should_hibernate(s.last_active.lock().elapsed(), s.in_use(), after)
            })
            .map(|(id, s)| (*id, s.clone()))
            .collect();
        for (id, slot) in idle {
            stop_slot(id, &slot, self.config.stop_grace, |s| {
                should_hibernate(s.last_active.lock().elapsed(), s.in_use(), after)
            })
            .await;
        }
    }

    /// Stops the instance for good (deletion): no wake after this; calls under way finish, up
    /// to the grace time.
    pub(crate) async fn stop_instance(&self, id: InstanceId) {
        self.table.deleting.lock().insert(id);
        let slot = self.table.slots.lock().remove(&id);
        if let Some(slot) = slot {
            let deadline = Instant::now() + self.config.stop_grace;
            while slot.in_use() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            stop_slot(id, &slot, self.config.stop_grace, |_| true).await;
        }
    }

    /// The deletion of `id` has finished (its registry row is a tombstone, which refuses any wake).
    pub(crate) fn deleted(&self, id: InstanceId) {
        self.table.deleting.lock().remove(&id);
    }

    /// Stops every instance, letting calls under way finish (a clean shutdown, or an upgrade).
    pub async fn stop_all(&self) {
        let slots: Vec<(InstanceId, Arc<Slot>)> = self.table.slots.lock().drain().collect();
        let grace = self.config.stop_grace;
        let stops = slots.iter().map(|(id, slot)| stop_slot(*id, slot, grace, |_| true));
        futures_util::future::join_all(stops).await;
        if !slots.is_empty() {
            tracing::info!(instances = slots.len(), "instances stopped");
        }
        self.runtime.stop().await;
    }

    /// The shared LLM engine's process id while it runs.
    pub fn engine_pid(&self) -> Option<u32> {
        self.runtime.engine_pid()
    }

    /// What the table knows of `id` (never its contents).
    pub fn run_status(&self, id: InstanceId) -> RunStatus {
        let Some(slot) = self.table.slots.lock().get(&id).cloned() else {
            return RunStatus {
                state: RunState::Hibernated,
                usage: ResourceUsage::default(),
                last_active_ms: None,
                restarts: 0,
                pid: None,
            };
        };
        let ready = slot.ready.read().as_ref().map(|(_, a)| a.clone());
        let state = match &ready {
            Some(a) if a.running() => RunState::Running,
            Some(_) => RunState::Crashed,
            None if slot.inner.try_lock().is_ok_and(|i| i.crashed && i.awake.is_none()) => RunState::Crashed,
            None => RunState::Hibernated,
        };
        let last = slot.last_active_ms.load(Ordering::Relaxed);
        RunStatus {
            state,
            usage: ready.as_ref().map(|a| a.usage()).unwrap_or_default(),
            last_active_ms: (last > 0).then_some(last),
            restarts: slot.restarts.load(Ordering::Relaxed),
            pid: ready.as_ref().filter(|a| a.running()).and_then(|a| a.pid()),
        }
    }

    /// Instances by state, and restarts, for `/metrics`. Instances the table has never run
    /// count as hibernated.
    pub fn runtime_summary(&self) -> RuntimeSummary {
        let ids: Vec<InstanceId> = self.table.slots.lock().keys().copied().collect();
        let mut counts: HashMap<RunState, u64> = HashMap::new();
        let mut restarts = 0;
        for id in &ids {
            let s = self.run_status(*id);
            *counts.entry(s.state).or_default() += 1;
            restarts += s.restarts;
        }
        let untracked = self.instances_provisioned().saturating_sub(ids.len() as u64);
        *counts.entry(RunState::Hibernated).or_default() += untracked;
        RuntimeSummary {
            by_state: RunState::ALL.iter().map(|s| (*s, counts.get(s).copied().unwrap_or(0))).collect(),
            restarts,
            evicted_for_memory: self.table.evicted_for_memory.load(Ordering::Relaxed),
            refused_for_memory: self.table.refused_for_memory.load(Ordering::Relaxed),
        }
    }

    /// Watches every wake's latency (the gateway's histogram); set once.
    pub fn observe_wakes(&self, observer: WakeObserver) {
        let _ = self.table.wake_observer.set(observer);
    }

    /// Applies a tier change to a running instance: its quota and its cgroup's limits.
    pub(crate) async fn retier_running(&self, id: InstanceId, tier: selfcloud_core::config::Tier) -> Result<()> {
        let Some(slot) = self.table.slots.lock().get(&id).cloned() else { return Ok(()) };
        let ready = slot.ready.read().clone();
        if let Some((client, awake)) = ready.filter(|(_, a)| a.running()) {
            awake.limit(self.config.limits.resources.of(tier))?;
            crate::system::System(&client).set_quota(self.config.limits.tier(tier).quota_bytes).await?;
        }
        Ok(())
    }
}

/// Stops one slot's instance if `still` holds once its lock is taken (a call may have come).
async fn stop_slot(id: InstanceId, slot: &Slot, grace: Duration, still: impl Fn(&Slot) -> bool) {
    let mut inner = slot.inner.lock().await;
    if !still(slot) {
        return;
    }
    // Closed to new callers first, then checked again: a caller that took a handle on the fast
    // path just before holds a lease now, and the instance stays up for it.
    let taken = slot.ready.write().take();
    if !still(slot) {
        *slot.ready.write() = taken;
        return;
    }
    let Some(awake) = inner.awake.take() else { return };
    inner.crashed = !awake.running();
    awake.stop(grace).await;
    tracing::debug!(instance = %id, "instance stopped");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_crash_restarts_at_once_and_repeated_crashes_back_off() {
        assert_eq!(restart_backoff(1), Duration::ZERO);
        assert_eq!(restart_backoff(2), Duration::from_secs(1));
        assert_eq!(restart_backoff(3), Duration::from_secs(2));
        assert_eq!(restart_backoff(8), Duration::from_secs(60));
        assert_eq!(restart_backoff(1000), Duration::from_secs(60));
    }

    #[test]
    fn only_an_idle_instance_nobody_holds_hibernates() {
        let after = Duration::from_secs(60);
        assert!(should_hibernate(Duration::from_secs(61), false, after));
        assert!(!should_hibernate(Duration::from_secs(59), false, after));
        // A long export holds its lease: never cut off for idleness.
        assert!(!should_hibernate(Duration::from_secs(3600), true, after));
    }
}

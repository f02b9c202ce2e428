//! The audit pipeline. Requests enqueue entries and move on; one writer task batches them per
//! instance and appends them to each instance's own log, off the request's path. Reading the log
//! first flushes the queue, so an owner always sees their latest requests.

use prometheus_client::metrics::counter::Counter;
use selfcloud_control::Control;
use selfcloud_core::InstanceId;
use selfcloud_instance::AuditEntry;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};

enum Message {
    Entry(InstanceId, AuditEntry),
    Flush(oneshot::Sender<()>),
}

/// Most entries written in one batch.
const BATCH: usize = 4096;
/// After the first entry of a batch, the writer waits this long for more. Requests then never
/// wake it one by one (under load it sleeps through thousands of sends), and each batch is one
/// commit per instance. An entry reaches disk within about this much time; reading the log
/// flushes first, so an owner never sees it late.
const LINGER: Duration = Duration::from_millis(20);

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Message>,
}

impl AuditSink {
    /// Starts the writer; each batch it cannot write counts in `failures` and is tried again
    /// later (`retry_delay`). It ends, after writing everything queued, once every sink is
    /// dropped and nothing waits for a retry.
    pub fn start(
        control: Arc<Control>,
        failures: Counter,
        queue: usize,
        keep: u64,
    ) -> (AuditSink, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        // As many entries may wait for a retry as the queue holds.
        let task = tokio::spawn(writer(rx, control, failures, keep, queue.max(1)));
        (AuditSink { tx }, task)
    }

    /// Queues an entry. Waits only when the queue is full (back-pressure rather than loss).
    pub async fn record(&self, instance: InstanceId, entry: AuditEntry) {
        if self.tx.send(Message::Entry(instance, entry)).await.is_err() {
            tracing::error!(instance = %instance, "audit writer has stopped; entry lost");
        }
    }

    /// Returns once every entry queued before this call is written.
    pub async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Message::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }
}

/// How long one instance's batch may take to be written.
const APPEND_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait before the `attempts`-th retry of a batch that could not be written (its disk full,
/// its instance restarting): doubling from 100 ms, at most 30 s. A pure rule, tested below.
pub fn retry_delay(attempts: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempts.min(9))).min(Duration::from_secs(30))
}

/// One instance's entries that wait for another try, in the order they came.
struct Pending {
    entries: Vec<AuditEntry>,
    attempts: u32,
    due: Instant,
}

/// Entries that could not be written yet, per instance, at most `max` in all: past it the
/// oldest go, counted (memory is bounded; a disk full for hours cannot take the server down).
struct Retries {
    by_instance: HashMap<InstanceId, Pending>,
    max: usize,
}

impl Retries {
    fn held(&self) -> usize {
        self.by_instance.values().map(|p| p.entries.len()).sum()
    }

    fn next_due(&self) -> Option<Instant> {
        self.by_instance.values().map(|p| p.due).min()
    }

    /// An entry for `id` that came while earlier ones of it wait joins them, so order is kept;
    /// it is handed back when none wait.
    fn join(&mut self, id: InstanceId, entry: AuditEntry) -> Option<AuditEntry> {
        match self.by_instance.get_mut(&id) {
            Some(p) => {
                p.entries.push(entry);
                None
            }
            None => Some(entry),
        }
    }

    /// Keeps a batch that failed for another try after its delay, before what joined it
    /// meanwhile; answers how many of the oldest entries it dropped to stay within `max`.
    fn keep(&mut self, id: InstanceId, mut entries: Vec<AuditEntry>, attempts: u32, now: Instant) -> usize {
        let due = now + retry_delay(attempts);
        let p = self.by_instance.entry(id).or_insert(Pending { entries: Vec::new(), attempts, due });
        entries.append(&mut p.entries);
        *p = Pending { entries, attempts, due };
        let mut over = self.held().saturating_sub(self.max);
        let dropped = over;
        while over > 0 {
            let Some(oldest) = self.by_instance.values_mut().min_by_key(|p| p.due) else { break };
            let cut = over.min(oldest.entries.len());
            oldest.entries.drain(..cut);
            over -= cut;
            self.by_instance.retain(|_, p| !p.entries.is_empty());
        }
        dropped
    }

    /// The batches due by `now`, taken out, each with its attempts so far.
    fn take_due(&mut self, now: Instant) -> HashMap<InstanceId, (Vec<AuditEntry>, u32)> {
        let due: Vec<InstanceId> = self.by_instance.iter().filter(|(_, p)| p.due <= now).map(|(id, _)| *id).collect();
        due.into_iter().filter_map(|id| self.by_instance.remove(&id).map(|p| (id, (p.entries, p.attempts)))).collect()
    }
}

async fn writer(mut rx: mpsc::Receiver<Message>, control: Arc<Control>, failures: Counter, keep: u64, max: usize) {
    let mut buf = Vec::with_capacity(BATCH);
    let mut retries = Retries { by_instance: HashMap::new(), max: max.max(1) };
    let mut open = true;
    loop {
        if open {
            // Wait for entries (`Some(0)`: every sender is gone), or until a retry is due (`None`).
            let got = match retries.next_due() {
                Some(due) => tokio::time::timeout_at(due.into(), rx.recv_many(&mut buf, BATCH)).await.ok(),
                None => Some(rx.recv_many(&mut buf, BATCH).await),
            };
            open = got != Some(0);
            let flush_asked = buf.iter().any(|m| matches!(m, Message::Flush(_)));
            if got.is_some_and(|n| n > 0) && !flush_asked && buf.len() < BATCH {
                tokio::time::sleep(LINGER).await;
                while buf.len() < BATCH {
                    match rx.try_recv() {
                        Ok(m) => buf.push(m),
                        Err(_) => break,
                    }
                }
            }
        } else {
            match retries.next_due() {
                Some(due) => tokio::time::sleep_until(due.into()).await,
                None => return, // every sender is gone, the queue is empty and nothing waits
            }
        }
        let mut batches = retries.take_due(Instant::now());
        let mut waiters = Vec::new();
        for msg in buf.drain(..) {
            match msg {
                Message::Entry(id, e) => {
                    if let Some(e) = retries.join(id, e) {
                        batches.entry(id).or_default().0.push(e);
                    }
                }
                Message::Flush(w) => waiters.push(w),
            }
        }
        for (id, (entries, attempts)) in batches {
            // Bounded: an instance that does not answer waits for its own retry, never stalls
            // the log of every other instance behind it.
            let result =
                tokio::time::timeout(APPEND_TIMEOUT, control.append_audit(id, &entries, keep)).await.unwrap_or_else(
                    |_| Err(selfcloud_core::Error::internal("the instance did not take its audit batch in time")),
                );
            match result {
                Ok(()) if attempts > 0 => tracing::info!(instance = %id, attempts, "audit batch written after retries"),
                Ok(()) => {}
                // A deleted instance's log is gone with it.
                Err(e) if e.code == selfcloud_core::ErrorCode::NotFound => {}
                Err(e) => {
                    failures.inc();
                    let wait = retry_delay(attempts);
                    tracing::warn!(instance = %id, error = %e, detail = ?e.detail, entries = entries.len(),
                        retry_in_ms = wait.as_millis() as u64, "audit batch not written yet; kept for a retry");
                    let dropped = retries.keep(id, entries, attempts + 1, Instant::now());
                    if dropped > 0 {
                        tracing::error!(
                            dropped,
                            held = retries.held(),
                            "audit entries dropped: too many wait for a retry"
                        );
                    }
                }
            }
        }
        for w in waiters {
            let _ = w.send(());
        }
    }
}

/// A request's path or id as the audit log keeps it: at most `max` bytes (cut at a character
/// boundary, marked with `…`), control characters replaced, so a client cannot grow the log (it
/// is not counted against the quota) or forge lines in it by what it sends.
pub fn capped(text: &str, max: usize) -> String {
    let mut out = String::with_capacity(text.len().min(max));
    for c in text.chars() {
        if out.len() + c.len_utf8() > max {
            out.push('\u{2026}');
            break;
        }
        out.push(if c.is_control() { '\u{fffd}' } else { c });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> AuditEntry {
        AuditEntry {
            at_ms: 0,
            actor: selfcloud_instance::protocol::Actor::Owner,
            method: "PUT".into(),
            path: path.into(),
            scope: None,
            status: 200,
            request_id: None,
        }
    }

    #[test]
    fn retries_back_off_to_a_ceiling() {
        assert_eq!(retry_delay(0), Duration::from_millis(100));
        assert_eq!(retry_delay(1), Duration::from_millis(200));
        assert_eq!(retry_delay(8), Duration::from_millis(25_600));
        assert_eq!(retry_delay(9), Duration::from_secs(30));
        assert_eq!(retry_delay(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn a_kept_batch_waits_its_delay_keeps_its_order_and_the_whole_is_bounded() {
        let (a, b): (InstanceId, InstanceId) = (
            "ins_aa0123456789abcdef0123456789abcd".parse().unwrap(),
            "ins_bb0123456789abcdef0123456789abcd".parse().unwrap(),
        );
        let now = Instant::now();
        let mut r = Retries { by_instance: HashMap::new(), max: 4 };
        assert_eq!(r.keep(a, vec![entry("/1"), entry("/2")], 1, now), 0);
        assert!(r.take_due(now).is_empty(), "not before its delay");
        // Later entries of the same instance join it, after it.
        assert!(r.join(a, entry("/3")).is_none());
        assert_eq!(r.join(b, entry("/x")).map(|e| e.path), Some("/x".into()));
        // Past the bound the oldest go: b's batch is kept, a's first entries dropped.
        assert_eq!(r.keep(b, vec![entry("/b1"), entry("/b2")], 1, now + Duration::from_millis(1)), 1);
        let due = r.take_due(now + Duration::from_secs(1));
        let paths = |id| -> Vec<String> { due[&id].0.iter().map(|e| e.path.clone()).collect() };
        assert_eq!(paths(a), ["/2", "/3"]);
        assert_eq!(paths(b), ["/b1", "/b2"]);
        assert_eq!(r.held(), 0);
        assert!(r.next_due().is_none());
    }

    #[test]
    fn audit_fields_are_capped_and_printable() {
        assert_eq!(capped("/v1/storage/notes/a", 512), "/v1/storage/notes/a");
        let long = format!("/v1/storage/notes/{}", "x".repeat(100_000));
        assert!(capped(&long, 512).len() <= 512 + 3);
        assert!(capped(&long, 512).ends_with('\u{2026}'));
        assert_eq!(capped("é".repeat(10).as_str(), 5), "éé\u{2026}");
        assert_eq!(capped("a\nb", 10), "a\u{fffd}b");
    }
}

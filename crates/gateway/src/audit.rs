//! The audit pipeline. Requests enqueue entries and move on; one writer task batches them per
//! instance and appends them to each instance's own log, off the request's path. Reading the log
//! first flushes the queue, so an owner always sees their latest requests.

use prometheus_client::metrics::counter::Counter;
use selfcloud_control::Control;
use selfcloud_core::InstanceId;
use selfcloud_instance::AuditEntry;
use std::collections::HashMap;
use std::sync::Arc;
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
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

#[derive(Clone)]
pub struct AuditSink {
    tx: mpsc::Sender<Message>,
}

impl AuditSink {
    /// Starts the writer; each batch it cannot write counts in `failures`. It ends, after writing
    /// everything queued, once every sink is dropped.
    pub fn start(
        control: Arc<Control>,
        failures: Counter,
        queue: usize,
        keep: u64,
    ) -> (AuditSink, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let task = tokio::spawn(writer(rx, control, failures, keep));
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
const APPEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

async fn writer(mut rx: mpsc::Receiver<Message>, control: Arc<Control>, failures: Counter, keep: u64) {
    let mut buf = Vec::with_capacity(BATCH);
    loop {
        if rx.recv_many(&mut buf, BATCH).await == 0 {
            return; // every sender is gone and the queue is empty
        }
        let flush_asked = buf.iter().any(|m| matches!(m, Message::Flush(_)));
        if !flush_asked && buf.len() < BATCH {
            tokio::time::sleep(LINGER).await;
            while buf.len() < BATCH {
                match rx.try_recv() {
                    Ok(m) => buf.push(m),
                    Err(_) => break,
                }
            }
        }
        let mut by_instance: HashMap<InstanceId, Vec<AuditEntry>> = HashMap::new();
        let mut waiters = Vec::new();
        for msg in buf.drain(..) {
            match msg {
                Message::Entry(id, e) => by_instance.entry(id).or_default().push(e),
                Message::Flush(w) => waiters.push(w),
            }
        }
        for (id, entries) in by_instance {
            // Bounded: an instance that does not answer loses its own batch, never stalls the
            // log of every other instance behind it.
            let append = async {
                match control.instance(id).await {
                    Ok(instance) => instance.append_audit(entries, keep).await,
                    Err(e) => Err(e),
                }
            };
            let result = tokio::time::timeout(APPEND_TIMEOUT, append).await.unwrap_or_else(|_| {
                Err(selfcloud_core::Error::internal("the instance did not take its audit batch in time"))
            });
            if let Err(e) = result {
                failures.inc();
                tracing::error!(instance = %id, error = %e, detail = ?e.detail, "audit batch not written");
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
    use super::capped;

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

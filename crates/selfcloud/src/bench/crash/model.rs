//! What the harness knows about every key: the last state the server acknowledged, and the
//! states sent since without an answer (in flight when the server was killed). After a restart
//! the store must hold the acknowledged state or one of those sent after it; anything else is a
//! lost (or resurrected) write.

use std::collections::HashMap;

/// A record as the harness expects to read it back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    Absent,
    /// The unique value written (`"v"` of the JSON body).
    Present(String),
}

#[derive(Debug)]
pub struct Key {
    pub name: String,
    /// `None` until the server has answered a write of this key (absent is then allowed too).
    acked: Option<State>,
    /// Sent after `acked` with no answer; any one of them may have been applied.
    pending: Vec<State>,
}

impl Key {
    pub fn new(name: String) -> Key {
        Key { name, acked: None, pending: Vec::new() }
    }

    /// Records a write about to be sent: from here on the server may hold it.
    pub fn send(&mut self, state: State) {
        self.pending.push(state);
    }

    /// The write sent last was acknowledged. One writer owns each key and sends one request at a
    /// time, so the acknowledged write is the newest and supersedes every earlier unknown.
    pub fn ack(&mut self) {
        self.acked = self.pending.pop();
        self.pending.clear();
    }

    /// Present for certain (acknowledged, nothing in doubt since): safe to delete expecting 204.
    pub fn surely_present(&self) -> bool {
        self.pending.is_empty() && matches!(self.acked, Some(State::Present(_)))
    }

    fn allows(&self, seen: &State) -> bool {
        let acked = self.acked.as_ref().map_or(*seen == State::Absent, |a| a == seen);
        acked || self.pending.contains(seen)
    }
}

/// One writer's keys (its own: no other writer touches them) and its value counter.
#[derive(Debug)]
pub struct Writer {
    pub id: usize,
    pub keys: Vec<Key>,
    /// Makes every value ever sent unique.
    pub next_value: u64,
}

impl Writer {
    pub fn new(id: usize) -> Writer {
        Writer { id, keys: Vec::new(), next_value: 0 }
    }

    pub fn new_key(&mut self) -> usize {
        self.keys.push(Key::new(format!("w{}-{:06}", self.id, self.keys.len())));
        self.keys.len() - 1
    }

    pub fn new_value(&mut self, cycle: usize) -> String {
        self.next_value += 1;
        format!("c{cycle}-w{}-{}", self.id, self.next_value)
    }
}

/// What reading the store back after a restart found.
#[derive(Debug, Default)]
pub struct Check {
    /// Keys whose state is neither the acknowledged one nor one sent after it.
    pub lost: Vec<String>,
    /// Keys in the store that the harness never wrote.
    pub unexpected: Vec<String>,
    /// Writes in flight at the kill: found applied, or not.
    pub in_flight_applied: u64,
    pub in_flight_not_applied: u64,
    pub keys: u64,
}

/// Compares the store (`key -> value`) with the model, then takes what was read as the new
/// acknowledged state of every key: it is on disk now, and the next crash must keep it.
pub fn check_and_settle(writers: &mut [Writer], stored: &HashMap<String, String>) -> Check {
    let mut check = Check::default();
    let mut seen = 0;
    for key in writers.iter_mut().flat_map(|w| w.keys.iter_mut()) {
        let state = stored.get(&key.name).map_or(State::Absent, |v| State::Present(v.clone()));
        seen += usize::from(state != State::Absent);
        if !key.allows(&state) {
            check.lost.push(format!(
                "{}: acknowledged {:?}, in flight {:?}, found {state:?}",
                key.name, key.acked, key.pending
            ));
        } else if !key.pending.is_empty() {
            let before = key.acked.as_ref().map_or(state == State::Absent, |a| *a == state);
            if before {
                check.in_flight_not_applied += 1;
            } else {
                check.in_flight_applied += 1;
            }
        }
        key.acked = Some(state);
        key.pending.clear();
        check.keys += 1;
    }
    if seen != stored.len() {
        let known: std::collections::HashSet<&str> =
            writers.iter().flat_map(|w| w.keys.iter().map(|k| k.name.as_str())).collect();
        check.unexpected = stored.keys().filter(|k| !known.contains(k.as_str())).cloned().collect();
    }
    check
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn acknowledged_writes_must_survive_and_unanswered_ones_may() {
        let mut w = Writer::new(0);
        let a = w.new_key(); // acknowledged put
        w.keys[a].send(State::Present("1".into()));
        w.keys[a].ack();
        let b = w.new_key(); // put in flight at the kill, never answered
        w.keys[b].send(State::Present("2".into()));
        let c = w.new_key(); // acknowledged put, then an acknowledged delete
        w.keys[c].send(State::Present("3".into()));
        w.keys[c].ack();
        w.keys[c].send(State::Absent);
        w.keys[c].ack();
        let mut writers = [w];

        // The in-flight put may be there or not; both are fine.
        let check = check_and_settle(&mut writers, &store(&[("w0-000000", "1")]));
        assert!(check.lost.is_empty() && check.unexpected.is_empty(), "{check:?}");
        assert_eq!((check.in_flight_applied, check.in_flight_not_applied), (0, 1));

        // Settled: now b is known absent, so it appearing later is a resurrection; a vanishing
        // is a loss; c coming back is a lost delete; a stranger is unexpected.
        let check = check_and_settle(&mut writers, &store(&[("w0-000001", "2"), ("w0-000002", "3"), ("zz", "9")]));
        assert_eq!(check.lost.len(), 3, "{check:?}");
        assert_eq!(check.unexpected, vec!["zz".to_string()]);
    }

    #[test]
    fn an_older_value_is_a_loss_a_newer_sent_one_is_not() {
        let mut w = Writer::new(1);
        let k = w.new_key();
        w.keys[k].send(State::Present("old".into()));
        w.keys[k].ack();
        w.keys[k].send(State::Present("new".into()));
        w.keys[k].ack();
        w.keys[k].send(State::Present("newest".into()));
        let mut writers = [w];
        let check = check_and_settle(&mut writers, &store(&[("w1-000000", "newest")]));
        assert!(check.lost.is_empty());
        assert_eq!(check.in_flight_applied, 1);
        writers[0].keys[k].send(State::Present("later".into()));
        writers[0].keys[k].ack();
        let check = check_and_settle(&mut writers, &store(&[("w1-000000", "newest")]));
        assert_eq!(check.lost.len(), 1);
    }
}

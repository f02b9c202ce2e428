//! Failed password checks per username. The address limit alone lets many addresses (a botnet, or
//! every loopback address of the host) guess one account's password and fill the password
//! derivation slots real log-ins wait for. So every check by name (log-in, recovery) first asks
//! this throttle: after a few free failures the name waits, twice as long after each further
//! failure up to a cap, and a check refused here costs no derivation. Unknown names are counted
//! exactly like known ones, so the answers tell nobody which names exist; a success clears the
//! name's record.

use crate::state::AppState;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use selfcloud_control::{Recovered, UserRow};
use selfcloud_core::config::Limits;
use selfcloud_core::{Error, ErrorCode};
use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// A name's record is forgotten after a day without a failure: its failures are free again.
const FORGET_SECS: u64 = 24 * 3600;

/// Names are kept to this many characters: longer ones are never usernames, and the map's
/// memory stays bounded per name as well as by count.
const KEY_CHARS: usize = 64;

/// The rule, from the settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    /// Failures a name may have before it waits at all.
    pub free_failures: u32,
    /// The longest wait, in seconds.
    pub max_wait_secs: u64,
}

/// What is known of a name: its failures since its last success, and when the last one was.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub failures: u32,
    pub last_failure: u64,
}

impl Rule {
    /// Seconds a name with `failures` waits after its last failure: none while failures are
    /// free, then 1, 2, 4... up to the cap.
    pub fn wait(&self, failures: u32) -> u64 {
        let Some(doublings) = failures.checked_sub(self.free_failures) else { return 0 };
        1u64.checked_shl(doublings).unwrap_or(u64::MAX).min(self.max_wait_secs.max(1))
    }

    /// Whether a check may run at `now`, or the seconds still to wait.
    pub fn check(&self, record: Record, now: u64) -> Result<(), u64> {
        let until = record.last_failure.saturating_add(self.wait(record.failures));
        if now >= until {
            Ok(())
        } else {
            Err(until - now)
        }
    }

    /// Whether a record still matters at `now` (a forgotten one counts as no failure).
    pub fn remembers(&self, record: Record, now: u64) -> bool {
        now < record.last_failure.saturating_add(FORGET_SECS.max(self.max_wait_secs))
    }
}

pub struct LogInThrottle {
    rule: Rule,
    /// Names held at most; past it the least telling record goes (see `make_room`).
    capacity: usize,
    records: Mutex<HashMap<String, Record>>,
}

/// One check by name, counted as a failure from its start: many checks of one name at once
/// all count, and one whose caller goes away before the answer stays counted.
#[must_use = "settle the attempt with its outcome"]
pub struct Attempt<'a> {
    throttle: &'a LogInThrottle,
    key: String,
}

fn key(username: &str) -> String {
    username.trim().chars().take(KEY_CHARS).collect::<String>().to_lowercase()
}

/// The refusal: the same for every name, known or not.
fn refused(wait_secs: u64) -> Error {
    Error {
        retry_after: Some(Duration::from_secs(wait_secs)),
        ..Error::new(ErrorCode::RateLimited, "too many failed attempts for this username; try again later")
    }
}

impl LogInThrottle {
    pub fn new(limits: &Limits) -> Self {
        let rule = Rule { free_failures: limits.log_in_free_failures, max_wait_secs: limits.log_in_max_wait_secs };
        LogInThrottle { rule, capacity: limits.log_in_names_tracked.max(1), records: Mutex::default() }
    }

    /// The map; a panic while it was held leaves nothing half-written (every change is one insert
    /// or remove), so a poisoned lock is taken as it is.
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Record>> {
        self.records.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Starts a check of `username` at `now`, or refuses it (`rate_limited`, with the wait).
    pub fn begin(&self, username: &str, now: u64) -> Result<Attempt<'_>, Error> {
        let key = key(username);
        let mut records = self.lock();
        let record = records.get(&key).copied().filter(|r| self.rule.remembers(*r, now)).unwrap_or_default();
        self.rule.check(record, now).map_err(refused)?;
        if !records.contains_key(&key) && records.len() >= self.capacity {
            self.make_room(&mut records, now);
        }
        records.insert(key.clone(), Record { failures: record.failures.saturating_add(1), last_failure: now });
        Ok(Attempt { throttle: self, key })
    }

    /// Forgets what no longer matters; if the map is still full, the record that tells least (the
    /// fewest failures, then the oldest), so names made up to fill the map push out each other
    /// before a name that is being guessed.
    fn make_room(&self, records: &mut HashMap<String, Record>, now: u64) {
        records.retain(|_, r| self.rule.remembers(*r, now));
        if records.len() < self.capacity {
            return;
        }
        let least = records.iter().min_by_key(|(_, r)| (r.failures, r.last_failure));
        if let Some(name) = least.map(|(name, _)| name.clone()) {
            records.remove(&name);
        }
    }

    #[cfg(test)]
    fn record(&self, username: &str) -> Option<Record> {
        self.lock().get(&key(username)).copied()
    }
}

impl Attempt<'_> {
    /// A success clears the name; a wrong credential stays counted; any other outcome (the
    /// derivation slots busy, a new password refused) was no guess and is taken back.
    pub fn settle<T>(self, outcome: &Result<T, Error>) {
        let mut records = self.throttle.lock();
        match outcome {
            Ok(_) => {
                records.remove(&self.key);
            }
            Err(e) if e.code == ErrorCode::Unauthenticated => {}
            Err(_) => {
                if let Some(r) = records.get_mut(&self.key) {
                    r.failures = r.failures.saturating_sub(1);
                }
            }
        }
    }
}

/// Checks a password by name, throttled.
pub async fn log_in(s: &AppState, username: &str, password: &str) -> Result<UserRow, Error> {
    let attempt = s.log_ins.begin(username, s.clock.now())?;
    let outcome = s.control.log_in(username, password).await;
    attempt.settle(&outcome);
    outcome
}

/// Recovers an account by name with its recovery code, throttled like a log-in.
pub async fn recover(s: &AppState, username: &str, code: &str, new_password: &str) -> Result<Recovered, Error> {
    let now = s.clock.now();
    let attempt = s.log_ins.begin(username, now)?;
    let outcome = s.control.recover(username, code, new_password, now).await;
    attempt.settle(&outcome);
    outcome
}

/// A page answering a refusal carries its `Retry-After` too.
pub fn with_retry_after(mut resp: Response, e: &Error) -> Response {
    if let Some(after) = e.retry_after {
        let secs = after.as_secs() + u64::from(after.subsec_nanos() > 0);
        resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    const RULE: Rule = Rule { free_failures: 3, max_wait_secs: 60 };

    fn throttle(capacity: usize) -> LogInThrottle {
        let limits = Limits {
            log_in_free_failures: RULE.free_failures,
            log_in_max_wait_secs: RULE.max_wait_secs,
            log_in_names_tracked: capacity,
            ..Limits::default()
        };
        LogInThrottle::new(&limits)
    }

    fn wrong() -> Result<(), Error> {
        Err(Error::unauthenticated("wrong username or password"))
    }

    #[test]
    fn the_wait_starts_after_the_free_failures_doubles_and_is_capped() {
        let waits: Vec<u64> = (0..12).map(|f| RULE.wait(f)).collect();
        assert_eq!(waits, [0, 0, 0, 1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(RULE.wait(u32::MAX), 60, "no overflow");
        assert_eq!(RULE.check(Record { failures: 2, last_failure: 100 }, 100), Ok(()));
        assert_eq!(RULE.check(Record { failures: 5, last_failure: 100 }, 101), Err(3));
        assert_eq!(RULE.check(Record { failures: 5, last_failure: 100 }, 104), Ok(()));
        assert!(RULE.remembers(Record { failures: 9, last_failure: 100 }, 100 + FORGET_SECS - 1));
        assert!(!RULE.remembers(Record { failures: 9, last_failure: 100 }, 100 + FORGET_SECS));
    }

    #[test]
    fn checks_count_from_their_start_a_success_clears_and_other_errors_are_taken_back() {
        let t = throttle(100);
        for _ in 0..3 {
            t.begin("ada", 1_000).unwrap().settle(&wrong());
        }
        let e = t.begin("ada", 1_000).err().unwrap();
        assert_eq!((e.code, e.retry_after), (ErrorCode::RateLimited, Some(Duration::from_secs(1))));
        // The same for a name that differs only in case or spaces, and for no account at all.
        assert!(t.begin(" ADA ", 1_000).is_err());
        for _ in 0..3 {
            t.begin("nobody", 1_000).unwrap().settle(&wrong());
        }
        assert_eq!(t.begin("nobody", 1_000).err().unwrap().body(), e.body());
        // Two checks at once both count, before either answers.
        let (a, b) = (t.begin("ada", 1_001).unwrap(), t.begin("bob", 1_001).unwrap());
        assert!(t.begin("ada", 1_001).is_err(), "the one in flight counts");
        a.settle(&Ok(()));
        assert_eq!(t.record("ada"), None, "a success clears the record");
        // A check that was no guess (slots busy) is not held against the name.
        b.settle(&Err::<(), _>(Error::unavailable("busy", Duration::from_secs(1))));
        assert_eq!(t.record("bob").unwrap().failures, 0);
    }

    #[test]
    fn the_map_is_bounded_and_a_name_being_guessed_outlasts_made_up_ones() {
        let t = throttle(10);
        for _ in 0..4 {
            let _ = t.begin("ada", 1_000).map(|a| a.settle(&wrong()));
        }
        for i in 0..1_000 {
            t.begin(&format!("made-up-{i}"), 1_000).unwrap().settle(&wrong());
        }
        assert_eq!(t.lock().len(), 10);
        assert!(t.begin("ada", 1_000).is_err(), "still waiting: {:?}", t.record("ada"));
        // Long names take a bounded key.
        t.begin(&"x".repeat(100_000), 1_000).unwrap().settle(&wrong());
        assert!(t.lock().keys().all(|k| k.len() <= KEY_CHARS));
    }

    #[test]
    fn a_record_is_forgotten_after_a_day_without_failures() {
        let t = throttle(100);
        for _ in 0..6 {
            let _ = t.begin("ada", 1_000).map(|a| a.settle(&wrong()));
        }
        assert_eq!(t.record("ada").unwrap().failures, 3, "the fourth at once was refused");
        // Just short of a day the wait is long over, but the failures still count.
        let late = 1_000 + FORGET_SECS - 1;
        t.begin("ada", late).unwrap().settle(&wrong());
        assert_eq!(t.record("ada").unwrap().failures, 4);
        // A day after the last failure the name starts afresh.
        t.begin("ada", late + FORGET_SECS).unwrap().settle(&wrong());
        assert_eq!(t.record("ada").unwrap().failures, 1);
    }
}

//! Time, passed in: handlers read the state's clock so tests can move it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch.
    fn now_ms(&self) -> u64;
    fn now(&self) -> u64 {
        self.now_ms() / 1000
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
    }
}

/// The system clock plus an offset that tests advance to expire tokens and codes; frozen, it
/// stands still between advances (for rules measured in whole seconds, which a slow run or a
/// second's boundary would otherwise cross).
#[derive(Default)]
pub struct OffsetClock {
    offset: AtomicU64,
    /// The moment it stands at, when frozen (0: it runs).
    frozen_at: AtomicU64,
}

impl OffsetClock {
    pub fn advance(&self, secs: u64) {
        self.offset.fetch_add(secs * 1000, Ordering::SeqCst);
    }

    /// From now on time moves only by [`OffsetClock::advance`].
    pub fn freeze(&self) {
        self.frozen_at.store(SystemClock.now_ms(), Ordering::SeqCst);
    }
}

impl Clock for OffsetClock {
    fn now_ms(&self) -> u64 {
        let base = match self.frozen_at.load(Ordering::SeqCst) {
            0 => SystemClock.now_ms(),
            at => at,
        };
        base + self.offset.load(Ordering::SeqCst)
    }
}

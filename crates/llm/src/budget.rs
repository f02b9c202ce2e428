//! Token budgets: how many tokens an app (or the whole instance) may spend in a UTC day.
//!
//! A grant may carry a budget set by the user under the tier's ceiling (control hands the one that
//! applies to the instance with each call). These are pure functions of the tokens already spent
//! and `now`, so the instance that keeps the counts can check them and tests can move the clock.

use selfcloud_core::Error;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// What a generation may spend: the tokens left of its caller's budget today, and how long until
/// the budget resets (for the 429 when the prompt alone is more than what is left).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    pub tokens: u64,
    pub resets_in: Duration,
}

/// Counts what a generation spends (its prompt, then each new token) as the engine goes. A meter
/// made with [`Meter::billed`] pays once, when its last holder lets go: the engine done with the
/// generation and the caller done with the answer, so a client that leaves mid-answer, or before
/// the prompt was even read, is billed for exactly what was computed.
#[derive(Clone, Default)]
pub struct Meter(Arc<Tally>);

type Payer = Box<dyn FnOnce(u64) + Send>;

#[derive(Default)]
struct Tally {
    spent: AtomicU64,
    pay: std::sync::Mutex<Option<Payer>>,
}

impl Drop for Tally {
    fn drop(&mut self) {
        let pay = self.pay.get_mut().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(pay) = pay {
            pay(*self.spent.get_mut());
        }
    }
}

impl Meter {
    /// A meter `pay` settles with the tokens spent (on whichever thread lets go last).
    pub fn billed(pay: impl FnOnce(u64) + Send + 'static) -> Self {
        Meter(Arc::new(Tally { spent: AtomicU64::new(0), pay: std::sync::Mutex::new(Some(Box::new(pay))) }))
    }

    pub fn add(&self, tokens: u64) {
        self.0.spent.fetch_add(tokens, Ordering::Relaxed);
    }

    pub fn spent(&self) -> u64 {
        self.0.spent.load(Ordering::Relaxed)
    }
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Meter({})", self.spent())
    }
}

impl PartialEq for Meter {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

/// How many tokens `allowance` lets a generation produce after a `prompt_tokens` prompt; the
/// budget's 429 when the prompt alone is more than is left.
pub fn cap(asked: u32, prompt_tokens: u64, allowance: Option<Allowance>) -> Result<u32, Error> {
    let Some(a) = allowance else { return Ok(asked) };
    completion_cap(asked, prompt_tokens, Some(a.tokens)).ok_or_else(|| {
        Error::budget_exceeded(
            format!(
                "the prompt is {prompt_tokens} tokens and {} are left of today's budget; it resets in {} s",
                a.tokens,
                a.resets_in.as_secs()
            ),
            a.resets_in,
        )
    })
}

/// An input of `tokens` that no answer follows (texts to embed) against `allowance`: the
/// budget's 429 when it is more than is left.
pub fn fits(tokens: u64, allowance: Option<Allowance>) -> Result<(), Error> {
    match allowance {
        Some(a) if tokens > a.tokens => Err(Error::budget_exceeded(
            format!(
                "the input is {tokens} tokens and {} are left of today's budget; it resets in {} s",
                a.tokens,
                a.resets_in.as_secs()
            ),
            a.resets_in,
        )),
        _ => Ok(()),
    }
}

/// What the caller may still spend today, as the engine takes it; `Ok(None)` without a budget.
pub fn allowance(budget: Option<u64>, spent: u64, now_ms: u64) -> Result<Option<Allowance>, Error> {
    Ok(remaining(budget, spent, now_ms)?
        .map(|tokens| Allowance { tokens, resets_in: Duration::from_millis(resets_at(now_ms) - now_ms) }))
}

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The start of the UTC day `now_ms` falls in: the key tokens spent are counted under.
pub fn window(now_ms: u64) -> u64 {
    now_ms - now_ms % DAY_MS
}

/// When the window holding `now_ms` ends and spending starts again from zero.
pub fn resets_at(now_ms: u64) -> u64 {
    window(now_ms) + DAY_MS
}

/// How many tokens a call may still spend, given `spent` in the current window. A budget that is
/// used up answers `budget_exceeded`, retryable when the window resets.
pub fn remaining(budget: Option<u64>, spent: u64, now_ms: u64) -> Result<Option<u64>, Error> {
    let Some(budget) = budget else { return Ok(None) };
    match budget.checked_sub(spent).filter(|left| *left > 0) {
        Some(left) => Ok(Some(left)),
        None => {
            let wait = Duration::from_millis(resets_at(now_ms) - now_ms);
            Err(Error::budget_exceeded(
                format!(
                    "the token budget of {budget} a day is spent; it resets at midnight UTC, in {} s",
                    wait.as_secs()
                ),
                wait,
            ))
        }
    }
}

/// The most new tokens a generation may produce: what the request asked for, cut to what is left
/// of the budget once the prompt is paid for. `None` means the prompt alone exceeds it.
pub fn completion_cap(asked: u32, prompt_tokens: u64, left: Option<u64>) -> Option<u32> {
    match left {
        None => Some(asked),
        Some(left) if left > prompt_tokens => Some(asked.min(u32::try_from(left - prompt_tokens).unwrap_or(u32::MAX))),
        Some(_) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use selfcloud_core::error::ErrorCode;

    const NOON: u64 = 20_000 * DAY_MS + DAY_MS / 2;

    #[test]
    fn an_input_fits_what_is_left_or_is_refused_whole() {
        let left = |tokens| Some(Allowance { tokens, resets_in: Duration::from_secs(60) });
        assert!(fits(100, left(100)).is_ok() && fits(u64::MAX, None).is_ok());
        let e = fits(101, left(100)).unwrap_err();
        assert_eq!((e.code, e.retry_after), (ErrorCode::BudgetExceeded, Some(Duration::from_secs(60))));
        assert!(e.message.contains("101 tokens and 100 are left"), "{}", e.message);
    }

    #[test]
    fn the_window_is_the_utc_day() {
        assert_eq!(window(NOON), 20_000 * DAY_MS);
        assert_eq!(window(20_000 * DAY_MS), 20_000 * DAY_MS);
        assert_eq!(resets_at(NOON), 20_001 * DAY_MS);
        assert_eq!(window(resets_at(NOON) - 1), window(NOON));
    }

    #[test]
    fn a_spent_budget_answers_429_until_the_window_resets() {
        assert_eq!(remaining(Some(1000), 400, NOON).unwrap(), Some(600));
        assert_eq!(remaining(None, u64::MAX, NOON).unwrap(), None);
        for spent in [1000, 1001, u64::MAX] {
            let e = remaining(Some(1000), spent, NOON).unwrap_err();
            assert_eq!(e.code, ErrorCode::BudgetExceeded);
            assert_eq!(e.status().as_u16(), 429);
            assert_eq!(e.retry_after, Some(Duration::from_millis(DAY_MS / 2)));
            assert!(e.message.contains("in 43200 s"), "{}", e.message);
        }
        // A budget of zero allows nothing.
        assert!(remaining(Some(0), 0, NOON).is_err());
    }

    #[test]
    fn the_completion_is_cut_to_what_the_budget_leaves() {
        assert_eq!(completion_cap(256, 40, None), Some(256));
        assert_eq!(completion_cap(256, 40, Some(100)), Some(60));
        assert_eq!(completion_cap(16, 40, Some(100)), Some(16));
        assert_eq!(completion_cap(16, 100, Some(100)), None);
        assert_eq!(completion_cap(16, 0, Some(u64::MAX)), Some(16));
    }

    #[test]
    fn an_allowance_caps_the_answer_or_refuses_a_prompt_past_it() {
        let a = allowance(Some(1000), 900, NOON).unwrap().unwrap();
        assert_eq!(a, Allowance { tokens: 100, resets_in: Duration::from_millis(DAY_MS / 2) });
        assert_eq!(cap(256, 40, Some(a)).unwrap(), 60);
        assert_eq!(cap(256, 40, None).unwrap(), 256);
        let e = cap(256, 100, Some(a)).unwrap_err();
        assert_eq!((e.code, e.retry_after), (ErrorCode::BudgetExceeded, Some(a.resets_in)));
        assert_eq!(allowance(None, 5, NOON).unwrap(), None);
        assert!(allowance(Some(1000), 1000, NOON).is_err());
    }

    #[test]
    fn a_meter_is_shared_by_its_clones() {
        let (m, clone) = (Meter::default(), Meter::default());
        let same = m.clone();
        same.add(3);
        m.add(2);
        assert_eq!((m.spent(), clone.spent()), (5, 0));
        assert!(m == same && m != clone);
    }

    #[test]
    fn a_billed_meter_pays_once_when_its_last_holder_lets_go() {
        let paid = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = paid.clone();
        let m = Meter::billed(move |n| log.lock().unwrap().push(n));
        let engine = m.clone();
        m.add(30);
        drop(m);
        assert!(paid.lock().unwrap().is_empty(), "paid while the engine still counted");
        engine.add(1);
        drop(engine);
        assert_eq!(*paid.lock().unwrap(), vec![31]);
    }
}

//! Token budgets: how many tokens an app (or the whole instance) may spend in a UTC day.
//!
//! A grant may carry a budget set by the user; the tier sets a ceiling for the instance. The
//! smaller one applies. These are pure functions of the tokens already spent and `now`, so the
//! instance that keeps the counts can check them and tests can move the clock.

use selfcloud_core::Error;
use std::time::Duration;

const DAY_MS: u64 = 24 * 60 * 60 * 1000;

/// The start of the UTC day `now_ms` falls in: the key tokens spent are counted under.
pub fn window(now_ms: u64) -> u64 {
    now_ms - now_ms % DAY_MS
}

/// When the window holding `now_ms` ends and spending starts again from zero.
pub fn resets_at(now_ms: u64) -> u64 {
    window(now_ms) + DAY_MS
}

/// The budget that applies: the grant's own and the tier's ceiling, the smaller of the two; `None`
/// when neither sets one.
pub fn effective(grant: Option<u64>, tier_ceiling: Option<u64>) -> Option<u64> {
    match (grant, tier_ceiling) {
        (Some(g), Some(t)) => Some(g.min(t)),
        (one, other) => one.or(other),
    }
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
    fn the_window_is_the_utc_day() {
        assert_eq!(window(NOON), 20_000 * DAY_MS);
        assert_eq!(window(20_000 * DAY_MS), 20_000 * DAY_MS);
        assert_eq!(resets_at(NOON), 20_001 * DAY_MS);
        assert_eq!(window(resets_at(NOON) - 1), window(NOON));
    }

    #[test]
    fn the_smaller_budget_applies() {
        assert_eq!(effective(Some(500), Some(20_000)), Some(500));
        assert_eq!(effective(Some(50_000), Some(20_000)), Some(20_000));
        assert_eq!(effective(None, Some(20_000)), Some(20_000));
        assert_eq!(effective(Some(7), None), Some(7));
        assert_eq!(effective(None, None), None);
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
}

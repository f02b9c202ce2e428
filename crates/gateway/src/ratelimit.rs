//! Per-token, per-address and whole-server rate limits (GCRA token buckets from `governor`).

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultDirectRateLimiter, DefaultKeyedRateLimiter, Quota};
use selfcloud_core::config::{Limits, Tier};
use selfcloud_core::Error;
use std::net::IpAddr;
use std::num::NonZeroU32;

pub struct RateLimits {
    /// One keyed limiter per tier, in `Tier::ALL` order.
    per_token: Vec<DefaultKeyedRateLimiter<[u8; 32]>>,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    /// Sign-ups from all addresses together: each provisions an instance on this node's disk.
    sign_ups: DefaultDirectRateLimiter,
    clock: DefaultClock,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).expect("max(1)");
    let burst = NonZeroU32::new(burst.max(per_second).max(1)).expect("max(1)");
    Quota::per_second(rate).allow_burst(burst)
}

/// A minute's worth at once, then one every `60 / per_minute` seconds.
fn sign_up_quota(per_minute: u32) -> Quota {
    let n = NonZeroU32::new(per_minute.max(1)).expect("max(1)");
    Quota::per_minute(n).allow_burst(n)
}

impl RateLimits {
    pub fn new(limits: &Limits) -> Self {
        let per_token = Tier::ALL
            .iter()
            .map(|t| {
                let l = limits.tier(*t);
                DefaultKeyedRateLimiter::keyed(quota(l.rate_per_token, l.rate_burst))
            })
            .collect();
        RateLimits {
            per_token,
            per_ip: DefaultKeyedRateLimiter::keyed(quota(limits.rate_per_ip, limits.rate_per_ip.saturating_mul(2))),
            sign_ups: DefaultDirectRateLimiter::direct(sign_up_quota(limits.sign_ups_per_minute)),
            clock: DefaultClock::default(),
        }
    }

    /// One request of a token on an instance of `tier`.
    pub fn check_token(&self, token_hash: &[u8; 32], tier: Tier) -> Result<(), Error> {
        let index = Tier::ALL.iter().position(|t| *t == tier).expect("every tier is in Tier::ALL");
        self.per_token[index]
            .check_key(token_hash)
            .map_err(|not_until| Error::rate_limited(not_until.wait_time_from(self.clock.now())))
    }

    /// For requests that carry no token yet (sign-up, log-in, token exchange): slows password
    /// guessing and sign-up floods from one address.
    pub fn check_ip(&self, ip: IpAddr) -> Result<(), Error> {
        self.per_ip.check_key(&ip).map_err(|not_until| Error::rate_limited(not_until.wait_time_from(self.clock.now())))
    }

    /// A sign-up from `ip`: its address's limit, then the cap on all sign-ups together (checked
    /// second, so one address's flood spends only its own bucket).
    pub fn check_sign_up(&self, ip: IpAddr) -> Result<(), Error> {
        self.check_ip(ip)?;
        self.sign_ups.check().map_err(|not_until| Error::rate_limited(not_until.wait_time_from(self.clock.now())))
    }

    /// Forgets keys whose buckets are full again, so memory follows active clients only.
    pub fn sweep(&self) {
        self.per_token.iter().for_each(|l| l.retain_recent());
        self.per_ip.retain_recent();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_ups_are_capped_across_addresses_but_the_cap_spends_nothing_of_log_ins() {
        let limits = Limits { rate_per_ip: 100, sign_ups_per_minute: 2, ..Limits::default() };
        let rate = RateLimits::new(&limits);
        let ip = |i: u8| IpAddr::from([10, 0, 0, i]);
        assert!(rate.check_sign_up(ip(1)).is_ok());
        assert!(rate.check_sign_up(ip(2)).is_ok());
        let refused = rate.check_sign_up(ip(3)).unwrap_err();
        assert_eq!(refused.code, selfcloud_core::ErrorCode::RateLimited);
        let wait = refused.retry_after.unwrap();
        assert!(wait > std::time::Duration::ZERO && wait <= std::time::Duration::from_secs(30), "{wait:?}");
        assert!(rate.check_ip(ip(3)).is_ok(), "log-in and the token endpoint are not capped by it");
    }
}

//! Per-token and per-address rate limits (GCRA token buckets from `governor`).

use governor::clock::{Clock as _, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota};
use selfcloud_core::config::{Limits, Tier};
use selfcloud_core::Error;
use std::net::IpAddr;
use std::num::NonZeroU32;

pub struct RateLimits {
    /// One keyed limiter per tier, in `Tier::ALL` order.
    per_token: Vec<DefaultKeyedRateLimiter<[u8; 32]>>,
    per_ip: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
}

fn quota(per_second: u32, burst: u32) -> Quota {
    let rate = NonZeroU32::new(per_second.max(1)).expect("max(1)");
    let burst = NonZeroU32::new(burst.max(per_second).max(1)).expect("max(1)");
    Quota::per_second(rate).allow_burst(burst)
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

    /// Forgets keys whose buckets are full again, so memory follows active clients only.
    pub fn sweep(&self) {
        self.per_token.iter().for_each(|l| l.retain_recent());
        self.per_ip.retain_recent();
    }
}

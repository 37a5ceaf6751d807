//! Per-client rate limit (`[rate_limit]`, off by default): a token bucket per client IP in a
//! fixed-size table, so memory stays the same however many distinct addresses arrive.
//!
//! The table has `table_slots` buckets indexed by a keyed hash of the IP (the key is random per
//! process, so a sender cannot aim addresses at one slot). A slot belongs to the last client
//! that used it; a different client that lands on it takes it over only when the owner's bucket
//! has refilled (it was idle), otherwise both share one bucket. Sharing can only limit a client
//! earlier than its own bucket would, never let anyone exceed the rate; with 65,536 slots it
//! needs tens of thousands of clients sending at the limit at once.
//!
//! Hand-written rather than `governor`: its keyed limiter keeps a map entry per client that
//! grows with every distinct address until it is swept, which is the memory an address-spraying
//! sender controls; the fixed table is bounded by construction and costs one lock per check.

use std::hash::BuildHasher;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The limiter's settings, from `[rate_limit]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Sustained beacons per second per client.
    pub(crate) per_second: f64,
    /// Bucket size: beacons a client may send at once after being idle.
    pub(crate) burst: f64,
    /// Buckets in the table.
    pub(crate) slots: usize,
}

#[derive(Debug, Clone, Copy)]
struct Slot {
    /// Hash of the owner's IP; 0 = never used.
    key: u64,
    tokens: f64,
    /// Nanoseconds since the limiter's start at the last refill.
    at: u64,
}

/// The outcome for one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Go ahead.
    Allow,
    /// Over the limit: try again after this long (`Retry-After`, whole seconds, at least 1).
    Deny(Duration),
}

/// A bounded table of token buckets.
pub(crate) struct RateLimiter {
    limits: Limits,
    slots: Box<[Mutex<Slot>]>,
    hasher: std::collections::hash_map::RandomState,
    start: Instant,
}

impl RateLimiter {
    /// An empty table (`slots` buckets, allocated once).
    pub(crate) fn new(limits: Limits) -> Self {
        let empty = Slot {
            key: 0,
            tokens: 0.0,
            at: 0,
        };
        Self {
            limits,
            slots: (0..limits.slots.max(1))
                .map(|_| Mutex::new(empty))
                .collect(),
            hasher: std::collections::hash_map::RandomState::new(),
            start: Instant::now(),
        }
    }

    /// Takes one token from `ip`'s bucket.
    pub(crate) fn check(&self, ip: IpAddr) -> Decision {
        self.check_at(ip, self.start.elapsed())
    }

    fn check_at(&self, ip: IpAddr, now: Duration) -> Decision {
        // Never 0, which marks an unused slot.
        let key = self
            .hasher
            .hash_one(crate::ingest::forwarded_for::canonical(ip))
            | 1;
        let now_ns = now.as_nanos() as u64;
        let l = &self.limits;
        let mut slot = self.slots[(key >> 1) as usize % self.slots.len()]
            .lock()
            .expect("not poisoned");
        let elapsed = now_ns.saturating_sub(slot.at) as f64 / 1e9;
        let refilled = (slot.tokens + elapsed * l.per_second).min(l.burst);
        if slot.key != key && (slot.key == 0 || refilled >= l.burst) {
            // Unused, or its owner has been idle long enough to be full again: take it over.
            *slot = Slot {
                key,
                tokens: l.burst,
                at: now_ns,
            };
        } else {
            slot.tokens = refilled;
            slot.at = now_ns;
        }
        if slot.tokens >= 1.0 {
            slot.tokens -= 1.0;
            Decision::Allow
        } else {
            let wait = (1.0 - slot.tokens) / l.per_second;
            Decision::Deny(Duration::from_secs(wait.ceil().max(1.0) as u64))
        }
    }

    /// Takes `tokens` more from `ip`'s bucket after a request that stored more than one
    /// beacon's worth (a batch, a large body): owed, so the bucket may go below zero and the
    /// client waits until it has paid; never below minus one burst, so a client sharing the
    /// slot by a hash collision is never held for long.
    pub(crate) fn charge(&self, ip: IpAddr, tokens: f64) {
        if tokens <= 0.0 {
            return;
        }
        let key = self
            .hasher
            .hash_one(crate::ingest::forwarded_for::canonical(ip))
            | 1;
        let mut slot = self.slots[(key >> 1) as usize % self.slots.len()]
            .lock()
            .expect("not poisoned");
        if slot.key == key {
            slot.tokens = (slot.tokens - tokens).max(-self.limits.burst);
        }
    }

    /// Bytes the table takes, whatever the traffic.
    #[cfg(test)]
    pub(crate) fn table_bytes(&self) -> usize {
        self.slots.len() * std::mem::size_of::<Mutex<Slot>>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn burst_then_the_sustained_rate() {
        let r = RateLimiter::new(Limits {
            per_second: 10.0,
            burst: 5.0,
            slots: 1024,
        });
        let a = ip("203.0.113.1");
        for _ in 0..5 {
            assert_eq!(r.check_at(a, Duration::ZERO), Decision::Allow);
        }
        assert_eq!(
            r.check_at(a, Duration::ZERO),
            Decision::Deny(Duration::from_secs(1))
        );
        // 10/s: one token per 100 ms.
        assert_eq!(
            r.check_at(a, 99 * MS),
            Decision::Deny(Duration::from_secs(1))
        );
        assert_eq!(r.check_at(a, 101 * MS), Decision::Allow);
        assert!(matches!(r.check_at(a, 102 * MS), Decision::Deny(_)));
        // Another client is not affected.
        assert_eq!(r.check_at(ip("203.0.113.2"), 102 * MS), Decision::Allow);
        // IPv4-mapped IPv6 is the same client.
        assert!(matches!(
            r.check_at(ip("::ffff:203.0.113.1"), 103 * MS),
            Decision::Deny(_)
        ));
        // After a second idle the bucket is full again.
        for _ in 0..5 {
            assert_eq!(r.check_at(a, 2000 * MS), Decision::Allow);
        }
    }

    /// What a batch owes is paid before the next request: 1 token taken, 9 charged, then
    /// denied until the rate has refilled them.
    #[test]
    fn charged_tokens_are_owed() {
        let r = RateLimiter::new(Limits {
            per_second: 10.0,
            burst: 10.0,
            slots: 64,
        });
        let a = ip("192.0.2.9");
        assert_eq!(r.check_at(a, Duration::ZERO), Decision::Allow);
        r.charge(a, 9.0);
        assert!(matches!(r.check_at(a, Duration::ZERO), Decision::Deny(_)));
        assert!(matches!(r.check_at(a, 50 * MS), Decision::Deny(_)));
        assert_eq!(r.check_at(a, 101 * MS), Decision::Allow);
        // Never owed more than one burst.
        r.charge(a, 1e9);
        assert_eq!(r.check_at(a, 2200 * MS), Decision::Allow);
    }

    #[test]
    fn slow_rates_say_how_long_to_wait() {
        let r = RateLimiter::new(Limits {
            per_second: 0.1,
            burst: 1.0,
            slots: 16,
        });
        let a = ip("198.51.100.7");
        assert_eq!(r.check_at(a, Duration::ZERO), Decision::Allow);
        assert_eq!(
            r.check_at(a, Duration::ZERO),
            Decision::Deny(Duration::from_secs(10))
        );
    }

    /// A million distinct addresses: the table does not grow, and nobody gets more than the
    /// rate allows (a shared slot only limits earlier).
    #[test]
    fn memory_is_bounded_and_sharing_never_lets_more_through() {
        let limits = Limits {
            per_second: 1.0,
            burst: 2.0,
            slots: 4096,
        };
        let r = RateLimiter::new(limits);
        let before = r.table_bytes();
        let mut allowed = 0u64;
        for i in 0..1_000_000u32 {
            if r.check_at(IpAddr::V4(i.into()), Duration::from_micros(u64::from(i)))
                == Decision::Allow
            {
                allowed += 1;
            }
        }
        assert_eq!(r.table_bytes(), before);
        assert!(allowed > 0);
        // One client hammering among the crowd still gets at most burst + rate × time.
        let hammer = ip("192.0.2.99");
        let mut ok = 0;
        for ms in 0..3000u64 {
            let t = Duration::from_secs(2) + Duration::from_millis(ms);
            r.check_at(IpAddr::V4((ms as u32 * 7919).into()), t);
            if r.check_at(hammer, t) == Decision::Allow {
                ok += 1;
            }
        }
        assert!(
            ok <= 2 + 3 + 1,
            "hammer got {ok} in 3 s at 1/s with burst 2"
        );
    }
}

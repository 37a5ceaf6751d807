//! `[rate_limit]`: per-client token buckets.

use super::error::{positive, ConfigError};
use serde::{Deserialize, Serialize};

/// Per-client rate limit: a token bucket per client IP in a fixed-size table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Answer 429 to a client over the limit. Off by default: behind NAT many browsers share
    /// one address, so size the limit for your busiest office before turning it on.
    pub enabled: bool,
    /// Sustained beacons per second per client IP.
    pub per_client_per_second: f64,
    /// Beacons a client may send at once after being idle.
    pub burst: u32,
    /// Buckets in the table: memory is fixed at about 32 bytes each, however many clients.
    pub(crate) table_slots: usize,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            per_client_per_second: 20.0,
            burst: 100,
            table_slots: 65_536,
        }
    }
}

impl RateLimitConfig {
    /// Checks what serde cannot: ranges and the relations between this section's keys.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let rl = self;
        if !(rl.per_client_per_second.is_finite() && rl.per_client_per_second > 0.0) {
            return Err(ConfigError::new(
                "rate_limit.per_client_per_second",
                format!("{} is not a positive rate", rl.per_client_per_second),
                "set beacons per second per client, e.g. 20",
            ));
        }
        positive("rate_limit.burst", u64::from(rl.burst))?;
        if !(1024..=16 * 1024 * 1024).contains(&rl.table_slots) {
            return Err(ConfigError::new(
                "rate_limit.table_slots",
                format!("{} is outside 1024..=16777216", rl.table_slots),
                "use 65536 (about 2 MiB) or more for many distinct clients",
            ));
        }
        Ok(())
    }
}

//! `[check]`: the self-check at start and the kernel counter sampler.

use serde::{Deserialize, Serialize};

/// Self-check and kernel sampler.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CheckConfig {
    /// Refuse to start when `beacon-collector check` finds a `fail` (warnings are logged either
    /// way).
    pub strict: bool,
    /// Seconds between reads of the kernel counters (listen overflows, SYN cookies, conntrack
    /// fill, TIME_WAIT, open fds) exported as metrics; a rising trouble counter is logged.
    /// 0 disables the sampler.
    pub sample_interval_seconds: u64,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self {
            strict: false,
            sample_interval_seconds: 5,
        }
    }
}

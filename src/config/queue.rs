//! `[queue]`: requests waiting for the spool, and what a full spool answers.

use super::error::{positive, ConfigError};
use serde::{Deserialize, Serialize};

/// The bounded queue between handlers and the spool writer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QueueConfig {
    /// Beacons waiting to be written to the spool (one group commit takes all of them).
    /// When full, requests get 503.
    pub(crate) capacity: usize,
    /// Value of `Retry-After` on a 503.
    pub retry_after_seconds: u64,
}

impl Default for QueueConfig {
    fn default() -> Self {
        Self {
            capacity: 65_536,
            retry_after_seconds: 5,
        }
    }
}

impl QueueConfig {
    /// Checks what serde cannot: ranges and the relations between this section's keys.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let q = self;
        positive("queue.capacity", q.capacity as u64)?;
        positive("queue.retry_after_seconds", q.retry_after_seconds)?;
        Ok(())
    }
}

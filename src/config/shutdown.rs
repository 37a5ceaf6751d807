//! `[shutdown]`: deregistration delay, drain and flush deadlines.

use super::error::{positive, ConfigError};
use serde::{Deserialize, Serialize};

/// Shutdown on SIGTERM.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShutdownConfig {
    /// Seconds `/healthz` answers 503 while still serving, so the load balancer deregisters the
    /// collector before it stops accepting (ALB default deregistration delay: 300 s, health
    /// check interval x unhealthy threshold is what actually matters). Every answer meanwhile
    /// says `Connection: close`: keep it above `client_interval_seconds` and its jitter, so
    /// every live keep-alive client is told on an answer rather than closed while idle.
    pub deregistration_delay_seconds: u64,
    /// How often a keep-alive client sends a beacon on its connection (the tags' ping
    /// interval; 15 s in the field notes), for the self-check of the delay above.
    pub(crate) client_interval_seconds: u64,
    /// Seconds open connections get to finish after accepting stops.
    pub drain_timeout_seconds: u64,
    /// Seconds the forwarder gets to hand every accepted beacon to the processing stage and
    /// see it acknowledged.
    pub flush_timeout_seconds: u64,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            deregistration_delay_seconds: 20,
            client_interval_seconds: 15,
            drain_timeout_seconds: 20,
            flush_timeout_seconds: 30,
        }
    }
}

impl ShutdownConfig {
    /// The shortest deregistration delay in which every client pinging every
    /// `client_interval_seconds` (±25 %: tags jitter their timers) sends once.
    pub(crate) fn delay_covering_clients(&self) -> u64 {
        (self.client_interval_seconds * 5).div_ceil(4)
    }

    /// Checks what serde cannot: ranges and the relations between this section's keys.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let s = self;
        positive("shutdown.drain_timeout_seconds", s.drain_timeout_seconds)?;
        positive(
            "shutdown.client_interval_seconds",
            s.client_interval_seconds,
        )?;
        positive("shutdown.flush_timeout_seconds", s.flush_timeout_seconds)?;
        Ok(())
    }
}

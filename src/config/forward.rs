//! `[forward]`: how the collector reaches the processing stage.

use super::error::{positive, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Where the processing stage runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ForwardMode {
    /// `serve` starts `beacon-collector process` as a supervised child on `forward.socket_path`.
    Embedded,
    /// Connect to a processing stage somebody else runs on `forward.socket_path`.
    External,
}

/// The forwarder.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ForwardConfig {
    /// `embedded` (default: one command runs everything) or `external`.
    pub mode: ForwardMode,
    /// Unix socket of the processing stage.
    pub socket_path: PathBuf,
    /// Permission bits the stage gives that socket file (`0o660`: owner and group may
    /// connect).
    pub(crate) socket_mode: u32,
    /// With `mode = "embedded"`: milliseconds the collector waits before restarting a
    /// processing stage that exited; doubles per quick failure up to 10 s.
    pub restart_delay_ms: u64,
    /// Most records in one BATCH frame.
    pub(crate) batch_max_records: usize,
    /// Milliseconds the forwarder waits for a batch to fill after its first record arrives.
    /// Beacons are answered before this, so it costs no client latency; it turns one write
    /// and one wake-up per beacon on both sides of the socket into one per batch. 0 disables.
    pub(crate) linger_ms: u64,
    /// Most records sent but not yet acknowledged. When reached the forwarder waits, the queue
    /// fills, and requests get 503: back-pressure instead of unbounded memory.
    pub(crate) max_unacked_records: usize,
    /// First reconnect delay in milliseconds; doubles per failure, with jitter.
    pub(crate) reconnect_initial_ms: u64,
    /// Longest reconnect delay in milliseconds.
    pub reconnect_max_ms: u64,
    /// Seconds without an acknowledgement while records are outstanding before the connection
    /// is considered stuck, dropped and re-established (records are then resent). A stage
    /// whose sink is retrying repeats its last ACK every 5 s, which counts: so this fires only
    /// for a stage that is silent, not for one waiting on its broker. At least 10.
    pub ack_timeout_seconds: u64,
}

impl Default for ForwardConfig {
    fn default() -> Self {
        Self {
            mode: ForwardMode::Embedded,
            socket_path: PathBuf::from("run/processor.sock"),
            socket_mode: 0o660,
            restart_delay_ms: 200,
            batch_max_records: 512,
            linger_ms: 2,
            max_unacked_records: 50_000,
            reconnect_initial_ms: 50,
            reconnect_max_ms: 5_000,
            ack_timeout_seconds: 30,
        }
    }
}

impl ForwardConfig {
    /// Checks what serde cannot: ranges and the relations between this section's keys.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let f = self;
        if f.socket_path.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "forward.socket_path",
                "empty",
                "set the path of the processing stage's unix socket, e.g. \"run/processor.sock\"",
            ));
        }
        // sun_path is 108 bytes including the NUL on Linux.
        if f.socket_path.as_os_str().len() > 107 {
            return Err(ConfigError::new(
                "forward.socket_path",
                "longer than the 107 bytes a unix socket path may have",
                "use a shorter path, e.g. under /run",
            ));
        }
        if f.socket_mode > 0o777 {
            return Err(ConfigError::new(
                "forward.socket_mode",
                format!("{:#o} is not a permission mode", f.socket_mode),
                "write it as a TOML octal integer, e.g. 0o660",
            ));
        }
        positive("forward.batch_max_records", f.batch_max_records as u64)?;
        if f.linger_ms > 1000 {
            return Err(ConfigError::new(
                "forward.linger_ms",
                "above 1000 ms",
                "use 0..=1000 (2 is plenty to batch under load)",
            ));
        }
        if f.max_unacked_records < f.batch_max_records {
            return Err(ConfigError::new(
                "forward.max_unacked_records",
                "smaller than forward.batch_max_records",
                "use at least forward.batch_max_records (default 50000)",
            ));
        }
        positive("forward.reconnect_initial_ms", f.reconnect_initial_ms)?;
        if f.reconnect_max_ms < f.reconnect_initial_ms {
            return Err(ConfigError::new(
                "forward.reconnect_max_ms",
                "smaller than forward.reconnect_initial_ms",
                "use a value at least forward.reconnect_initial_ms",
            ));
        }
        positive("forward.ack_timeout_seconds", f.ack_timeout_seconds)?;
        let heartbeat = crate::protocol::HEARTBEAT.as_secs();
        if f.ack_timeout_seconds < 2 * heartbeat {
            return Err(ConfigError::new(
                "forward.ack_timeout_seconds",
                format!(
                    "{} s is under two of the stage's {heartbeat} s heartbeats: a stage whose \
                     sink is retrying would be taken for a stuck one, and everything in flight \
                     sent again",
                    f.ack_timeout_seconds
                ),
                format!("use at least {} (default 30)", 2 * heartbeat),
            ));
        }
        Ok(())
    }
}

//! `[spool]`: the durable local log every accepted beacon is written to.

use super::error::{file_mode, ConfigError};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// When a beacon counts as accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AckAfter {
    /// After `write(2)` to the spool: survives a crash or `kill -9` of the collector.
    Write,
    /// After `fdatasync(2)` of the spool (group commit): survives power loss.
    Fsync,
}

/// The durable spool.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SpoolConfig {
    /// Directory of the spool segments and checkpoint (created if missing).
    pub dir: PathBuf,
    /// `write` (default) or `fsync`: what must happen before a beacon is answered 204.
    pub ack_after: AckAfter,
    /// A new segment file is started when the current one reaches this size. Segments are
    /// deleted whole once every record in them is acknowledged.
    pub segment_bytes: u64,
    /// Most bytes the spool may hold. At the high-water mark requests get 503 and the health
    /// check fails until the processing stage drains it below the low-water mark.
    pub max_bytes: u64,
    /// High-water mark, percent of `max_bytes`.
    pub(crate) high_water_percent: u8,
    /// Low-water mark, percent of `max_bytes`, where accepting resumes.
    pub(crate) low_water_percent: u8,
    /// Mode of the files the spool creates (they hold client IPs and page URLs); its directory
    /// gets the matching search bits (0o640 → 0o750). The process umask applies on top.
    pub file_mode: u32,
    /// Records waiting for a spool commit (each worker's share of it; one group commit takes
    /// all of a worker's). When full, requests get 503.
    pub(crate) max_pending_records: usize,
}

impl Default for SpoolConfig {
    fn default() -> Self {
        Self {
            dir: PathBuf::from("spool"),
            ack_after: AckAfter::Write,
            segment_bytes: 64 * 1024 * 1024,
            max_bytes: 4 * 1024 * 1024 * 1024,
            high_water_percent: 90,
            low_water_percent: 80,
            file_mode: 0o640,
            max_pending_records: 65_536,
        }
    }
}

impl SpoolConfig {
    /// Checks what serde cannot: ranges and the relations between this section's keys.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let sp = self;
        file_mode("spool.file_mode", sp.file_mode)?;
        super::error::positive("spool.max_pending_records", sp.max_pending_records as u64)?;
        if sp.dir.as_os_str().is_empty() {
            return Err(ConfigError::new(
                "spool.dir",
                "empty",
                "set a directory on a local disk, e.g. \"spool\"",
            ));
        }
        if sp.segment_bytes < 4096 {
            return Err(ConfigError::new(
                "spool.segment_bytes",
                "below 4096",
                "use at least 4096 (default 67108864)",
            ));
        }
        if sp.max_bytes < 4 * sp.segment_bytes {
            return Err(ConfigError::new(
                "spool.max_bytes",
                format!(
                    "{} is less than four segments ({} bytes each)",
                    sp.max_bytes, sp.segment_bytes
                ),
                "raise spool.max_bytes or lower spool.segment_bytes",
            ));
        }
        if !(sp.low_water_percent < sp.high_water_percent && sp.high_water_percent <= 100) {
            return Err(ConfigError::new(
                "spool.high_water_percent",
                format!(
                    "high {} / low {} must satisfy low < high <= 100",
                    sp.high_water_percent, sp.low_water_percent
                ),
                "use e.g. high_water_percent = 90, low_water_percent = 80",
            ));
        }
        Ok(())
    }
}

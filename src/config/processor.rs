//! `[processor]`: the bundled processing stage and which sinks it feeds (each sink owns its
//! own section, e.g. `[processor.nats]`).

use super::error::{positive, ConfigError};
use crate::sink::kafka::config::KafkaConfig;
use crate::sink::kind::SinkKind;
use crate::sink::nats::config::NatsConfig;
use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::path::PathBuf;

/// The bundled processing stage.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ProcessorConfig {
    /// Where records go: `"files"` (NDJSON, `[processor.files]`), `"nats"` (a JetStream
    /// stream, `[processor.nats]`), `"kafka"` (a Kafka topic, `[processor.kafka]`). A batch is
    /// acknowledged to the collector only once every sink has it, so the collector's spool
    /// keeps whatever any sink has not confirmed.
    pub sinks: Vec<SinkKind>,
    /// The files sink (used when `sinks` lists `"files"`).
    pub files: FilesConfig,
    /// The stage's own Prometheus `/metrics` listener.
    pub admin: StageAdminConfig,
    /// The NATS JetStream sink (used when `sinks` lists `"nats"`).
    pub nats: NatsConfig,
    /// The Kafka sink (used when `sinks` lists `"kafka"`).
    pub kafka: KafkaConfig,
}

impl Default for ProcessorConfig {
    fn default() -> Self {
        Self {
            sinks: vec![SinkKind::Files],
            files: FilesConfig::default(),
            admin: StageAdminConfig::default(),
            nats: NatsConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

/// `[processor.files]`: rotated NDJSON files.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FilesConfig {
    /// Directory the NDJSON files are written to (created if missing).
    pub data_dir: PathBuf,
    /// File name prefix: `<prefix>-<UTC time>-<n>.ndjson`.
    pub(crate) prefix: String,
    /// Rotate the current file when it reaches this size.
    pub(crate) rotate_bytes: u64,
    /// Rotate the current file when it is this old, even if idle.
    pub rotate_seconds: u64,
    /// Mode of the NDJSON files; `data_dir` gets the matching search bits (0o640 → 0o750), so a
    /// log shipper in the group can read them. The umask applies too.
    pub mode: u32,
    /// Call `fdatasync` before acknowledging a batch (survives power loss, costs latency).
    pub(crate) fsync: bool,
}

impl Default for FilesConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("data"),
            prefix: "beacons".into(),
            rotate_bytes: 128 * 1024 * 1024,
            rotate_seconds: 3600,
            mode: 0o640,
            fsync: false,
        }
    }
}

/// `[processor.admin]`: the stage's metrics listener (records written, duplicates dropped,
/// corrupt records, rotations, sink state), like the collector's `[admin]`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageAdminConfig {
    /// Serve it.
    pub enabled: bool,
    /// Its address.
    pub listen: SocketAddr,
}

impl Default for StageAdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            listen: "127.0.0.1:9103".parse().expect("static address"),
        }
    }
}

impl ProcessorConfig {
    /// Checks what serde cannot: ranges and the relations between this section's keys.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let p = &self.files;
        if p.prefix.is_empty() || p.prefix.contains('/') {
            return Err(ConfigError::new(
                "processor.files.prefix",
                "empty or contains '/'",
                "use a plain name such as \"beacons\"",
            ));
        }
        if p.rotate_bytes < 4096 {
            return Err(ConfigError::new(
                "processor.files.rotate_bytes",
                "below 4096",
                "use at least 4096 (default 134217728)",
            ));
        }
        positive("processor.files.rotate_seconds", p.rotate_seconds)?;
        super::error::file_mode("processor.files.mode", p.mode)?;

        self.validate_sinks()
    }

    /// The `sinks` list, and the section of every sink it names.
    fn validate_sinks(&self) -> Result<(), ConfigError> {
        if self.sinks.is_empty() {
            return Err(ConfigError::new(
                "processor.sinks",
                "empty: the stage would acknowledge beacons it sends nowhere",
                format!("list at least one of {}", SinkKind::NAMES),
            ));
        }
        if (1..self.sinks.len()).any(|i| self.sinks[..i].contains(&self.sinks[i])) {
            return Err(ConfigError::new(
                "processor.sinks",
                "lists a sink twice",
                "list each sink once, e.g. [\"files\", \"nats\"]",
            ));
        }
        for kind in &self.sinks {
            match kind {
                // Its keys are this section's own (checked above).
                SinkKind::Files => {}
                SinkKind::Nats => self.nats.validate_for_sink()?,
                SinkKind::Kafka => self.kafka.validate_for_sink()?,
            }
        }
        Ok(())
    }
}

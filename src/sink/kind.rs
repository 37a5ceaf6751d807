//! Which sinks exist, as the config names them. A leaf: the config's `[processor]` section
//! and the sinks both read it.

use serde::{Deserialize, Serialize};

/// A processing-stage sink.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// NDJSON files in `processor.files.data_dir`.
    Files,
    /// A NATS JetStream stream (`[processor.nats]`).
    Nats,
    /// An Apache Kafka topic (`[processor.kafka]`).
    Kafka,
}

impl SinkKind {
    /// Every sink, as `processor.sinks` spells it.
    pub(crate) const NAMES: &'static str = "\"files\", \"nats\", \"kafka\"";

    /// This sink's name in `processor.sinks` and in metric labels.
    pub(crate) fn name(self) -> &'static str {
        match self {
            SinkKind::Files => "files",
            SinkKind::Nats => "nats",
            SinkKind::Kafka => "kafka",
        }
    }
}

/// What a broker sink does when its stream or topic exists with settings other than the
/// configured ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnMismatch {
    /// Log every difference and exit: nothing is published (the collector keeps spooling).
    Fail,
    /// Log every difference and publish anyway.
    Warn,
}

//! `[processor.kafka]`: the Kafka sink's settings and their checks.

use crate::config::error::{positive, ConfigError};
use crate::sink::kind::OnMismatch;
use crate::sink::template::Template;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a record's Kafka message key is: it picks the partition, and the order Kafka keeps is
/// per partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum KeyBy {
    /// The site (host of the page): one site's beacons stay in order, in one partition.
    Site,
    /// The record id: spread evenly over the partitions, no order kept.
    Id,
}

/// Compression of message batches (done by the producer, undone by consumers).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Compression {
    /// None.
    None,
    /// LZ4: cheap, the usual choice for small JSON records.
    Lz4,
    /// Zstandard: smaller, more CPU.
    Zstd,
}

impl Compression {
    /// librdkafka's name for it.
    pub(crate) fn codec(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// The client properties the sink sets itself: a configured `properties` entry may not change
/// them, because the sink's promise (a batch is confirmed only when every record is in the
/// topic, replays are not stored twice by the producer's own retries) rests on them.
pub(crate) const RESERVED: [&str; 6] = [
    "acks",
    "enable.idempotence",
    "bootstrap.servers",
    "delivery.timeout.ms",
    "message.timeout.ms",
    "max.in.flight.requests.per.connection",
];

/// The Kafka sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// Brokers to bootstrap from (`host:port`); list several so the stage starts while one is
    /// down. The client learns the rest of the cluster from them.
    pub bootstrap_servers: Vec<String>,
    /// The topic each beacon goes to: a name, or a template of dot-separated tokens, each a
    /// literal or one of `{site}`, `{path}`, `{kind}`, `{method}`, `{param.NAME}` (values
    /// reduced to `[a-z0-9_-]`, at most 64 bytes, empty is `_`), e.g. `beacons.{kind}`.
    pub topic: String,
    /// Most distinct topics a template may render (each created on first sight): a template
    /// with `{site}` or `{param.NAME}` lets any page name a topic. Past it, records whose
    /// topic is new go to `overflow_topic`, counted.
    pub max_topics: usize,
    /// Where records go whose rendered topic would exceed `max_topics`. A plain name.
    pub overflow_topic: String,
    /// The message key: `"site"` (one site's beacons in order, in one partition; a beacon
    /// without a site is keyed by its id, so they spread) or `"id"` (the record id: even
    /// spread, no order).
    pub(crate) key: KeyBy,
    /// `"none"`, `"lz4"` or `"zstd"`.
    pub(crate) compression: Compression,
    /// Milliseconds the producer waits to fill a batch before sending it (`linger.ms`).
    pub(crate) linger_ms: u64,
    /// Most messages in one produce request per partition (`batch.num.messages`).
    pub(crate) batch_messages: usize,
    /// Records handed to the producer and not yet acknowledged by Kafka, at most; at the limit
    /// the stage stops reading from the collector (whose spool holds the rest).
    pub max_inflight: usize,
    /// Milliseconds the producer keeps retrying a record (`delivery.timeout.ms`): past it the
    /// record's batch is not confirmed, stays in the collector's spool and is sent again.
    pub delivery_timeout_ms: u64,
    /// The client id brokers log and quota by.
    pub(crate) client_id: String,
    /// Create the topic (each topic a template renders) when it does not exist, with the
    /// settings below; with `false` a missing topic stops the stage.
    pub create_topic: bool,
    /// An existing topic whose settings differ from these: `"fail"` (exit, reporting each
    /// difference) or `"warn"` (report and publish anyway).
    pub topic_mismatch: OnMismatch,
    /// Partitions of a created topic.
    pub partitions: u32,
    /// Copies of each partition (at most the number of brokers; 3 survives one broker down
    /// with `min_insync_replicas = 2`).
    pub replication_factor: u16,
    /// `min.insync.replicas` of a created topic: with `acks=all`, a write needs this many
    /// copies in sync, else it is refused (and retried) rather than kept by too few brokers.
    pub min_insync_replicas: u16,
    /// Seconds a message is kept (`retention.ms` of a created topic); 0 means no age limit.
    pub(crate) retention_seconds: u64,
    /// More client properties, passed to librdkafka as they are: security (`security.protocol`,
    /// `sasl.mechanism`, `sasl.username`, `sasl.password`, `ssl.ca.location`, ...), tuning. The
    /// ones the sink's promise rests on (`acks`, `enable.idempotence`, ...) cannot be set here.
    pub(crate) properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            bootstrap_servers: vec!["127.0.0.1:9092".into()],
            topic: "beacons".into(),
            max_topics: 100,
            overflow_topic: "beacons.overflow".into(),
            key: KeyBy::Site,
            compression: Compression::Lz4,
            linger_ms: 5,
            batch_messages: 10_000,
            max_inflight: 100_000,
            delivery_timeout_ms: 30_000,
            client_id: "beacon-collector".into(),
            create_topic: true,
            topic_mismatch: OnMismatch::Fail,
            partitions: 6,
            replication_factor: 1,
            min_insync_replicas: 1,
            retention_seconds: 7 * 24 * 3600,
            properties: BTreeMap::new(),
        }
    }
}

/// Kafka's limit on a topic name.
const MAX_TOPIC: usize = 249;

impl KafkaConfig {
    /// Checks the section when `processor.sinks` lists `"kafka"`: refused outright in a build
    /// without the client.
    pub(crate) fn validate_for_sink(&self) -> Result<(), ConfigError> {
        if !cfg!(feature = "kafka") {
            return Err(ConfigError::new(
                "processor.sinks",
                "lists \"kafka\" but this build has no Kafka client",
                "rebuild with the default features (cargo build --features kafka), or remove \"kafka\"",
            ));
        }
        self.validate()
    }

    /// Checks the section (only when `processor.sinks` lists `"kafka"`).
    ///
    /// Over the house limit of ~100 lines on purpose: a flat list of independent checks, each
    /// naming its key, problem and fix; split up, a reader would hunt for the check of a key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.bootstrap_servers.is_empty() {
            return Err(ConfigError::new(
                "processor.kafka.bootstrap_servers",
                "empty",
                "list brokers as host:port, e.g. [\"10.0.0.1:9092\", \"10.0.0.2:9092\"]",
            ));
        }
        for (i, s) in self.bootstrap_servers.iter().enumerate() {
            let ok = s
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !ok {
                return Err(ConfigError::new(
                    &format!("processor.kafka.bootstrap_servers[{i}]"),
                    format!("{s:?} is not host:port"),
                    "write each broker as host:port, e.g. \"10.0.0.1:9092\"",
                ));
            }
        }
        let template = Template::parse(&self.topic).map_err(|problem| {
            ConfigError::new(
                "processor.kafka.topic",
                problem,
                "a topic name, or tokens like beacons.{kind} (placeholders: {site}, {path}, {kind}, {method}, {param.NAME})",
            )
        })?;
        let sample = template.sample();
        if let Some(b) = sample
            .bytes()
            .find(|b| !(b.is_ascii_alphanumeric() || b"._-".contains(b)))
        {
            return Err(ConfigError::new(
                "processor.kafka.topic",
                format!("{:?} is not allowed in a Kafka topic name", b as char),
                "use letters, digits, '.', '_' and '-' only",
            ));
        }
        if template.max_len() > MAX_TOPIC {
            return Err(ConfigError::new(
                "processor.kafka.topic",
                format!("can render names longer than Kafka's {MAX_TOPIC} bytes"),
                "use fewer or shorter tokens (each placeholder renders up to 64 bytes)",
            ));
        }
        positive("processor.kafka.max_topics", self.max_topics as u64)?;
        if self.overflow_topic.is_empty()
            || self.overflow_topic.len() > MAX_TOPIC
            || !self
                .overflow_topic
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        {
            return Err(ConfigError::new(
                "processor.kafka.overflow_topic",
                format!("{:?} is not a Kafka topic name", self.overflow_topic),
                "a plain name of letters, digits, '.', '_' and '-' (no placeholders), e.g. \"beacons.overflow\"",
            ));
        }
        positive("processor.kafka.max_inflight", self.max_inflight as u64)?;
        positive("processor.kafka.batch_messages", self.batch_messages as u64)?;
        positive("processor.kafka.partitions", u64::from(self.partitions))?;
        positive(
            "processor.kafka.replication_factor",
            u64::from(self.replication_factor),
        )?;
        positive(
            "processor.kafka.min_insync_replicas",
            u64::from(self.min_insync_replicas),
        )?;
        if self.min_insync_replicas > self.replication_factor {
            return Err(ConfigError::new(
                "processor.kafka.min_insync_replicas",
                format!(
                    "{} is more than replication_factor {}: every write would be refused",
                    self.min_insync_replicas, self.replication_factor
                ),
                "set it to at most replication_factor (2 with 3 copies is the usual choice)",
            ));
        }
        if self.delivery_timeout_ms < 1000 {
            return Err(ConfigError::new(
                "processor.kafka.delivery_timeout_ms",
                format!("{} ms leaves no time for a retry", self.delivery_timeout_ms),
                "give the producer at least 1000 ms (30000 is usual: a leader election fits in it)",
            ));
        }
        if self.client_id.is_empty() {
            return Err(ConfigError::new(
                "processor.kafka.client_id",
                "empty",
                "name the client, e.g. \"beacon-collector\"",
            ));
        }
        for k in self.properties.keys() {
            if RESERVED.contains(&k.as_str()) {
                return Err(ConfigError::new(
                    &format!("processor.kafka.properties.\"{k}\""),
                    "is set by the sink (acks=all with the idempotent producer; timeouts and servers from their own keys)",
                    "remove it; use bootstrap_servers, delivery_timeout_ms or max_inflight for those",
                ));
            }
        }
        Ok(())
    }
}

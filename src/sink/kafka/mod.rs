//! The Kafka sink: produces each record (its NDJSON line) to a topic named by the config (or
//! rendered from the beacon), keyed by site or record id, with the record id in a `beacon-id`
//! header, and confirms a batch only when Kafka has acknowledged every record of it from all
//! in-sync replicas (`acks=all`, the idempotent producer). A record the producer gives up on
//! leaves its batch unconfirmed: the collector keeps it spooled and sends it again. It also
//! makes sure each topic exists with the configured settings, and reports every difference
//! when it does not.
//!
//! Exactly once, honestly: idempotence covers the producer's own retries (a retried send is
//! stored once, in order). A batch sent again after a stage crash or a delivery timeout is a
//! new send, and may be stored twice; consumers drop the copies by the `beacon-id` header
//! (`examples/kafka_consumer.py` does).
//!
//! The config section and its checks (`config.rs`) are always built; the client
//! (`producer.rs`, rdkafka over librdkafka) is behind the default-on `kafka` cargo feature.

pub(crate) mod config;
#[cfg(feature = "kafka")]
mod producer;

pub(crate) use config::KafkaConfig;

use super::{Job, SinkError};
use crate::lifecycle::CancellationToken;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Starts the Kafka sink as a task in `tasks`.
pub(crate) fn spawn(
    cfg: KafkaConfig,
    jobs: mpsc::Receiver<Job>,
    abandon: CancellationToken,
    tasks: &mut JoinSet<Result<(), SinkError>>,
) -> Result<(), SinkError> {
    #[cfg(feature = "kafka")]
    {
        tasks.spawn(producer::run(cfg, jobs, abandon));
        Ok(())
    }
    #[cfg(not(feature = "kafka"))]
    {
        let _ = (cfg, jobs, abandon, tasks);
        Err(SinkError::Config(
            "processor.sinks lists \"kafka\" but this build has no Kafka client".into(),
        ))
    }
}

//! The NATS JetStream sink: publishes each record (its NDJSON line) to a subject derived from
//! the beacon, with the record id as `Nats-Msg-Id`, and confirms a batch only when JetStream
//! has acknowledged every record of it. Unacknowledged publishes are sent again (same id, so
//! JetStream stores one copy) until they are, the collector goes away, or the stage stops;
//! meanwhile the collector's spool holds them. It also makes sure the stream exists with the
//! configured settings, and reports every difference when it does not.

//!
//! The config section and its checks (`config.rs`) and the subject patterns (`subject.rs`) are
//! always built, so a config file means the same with or without the client; the client
//! (`jetstream.rs`, async-nats) is behind the default-on `nats` cargo feature.

pub(crate) mod config;
#[cfg(feature = "nats")]
mod jetstream;
pub(crate) mod subject;

pub(crate) use config::{NatsConfig, Retention, Storage};

use super::{Job, SinkError};
use crate::lifecycle::CancellationToken;
use tokio::sync::mpsc;
use tokio::task::JoinSet;

/// Starts the NATS sink as a task in `tasks`.
pub(crate) fn spawn(
    cfg: NatsConfig,
    jobs: mpsc::Receiver<Job>,
    abandon: CancellationToken,
    tasks: &mut JoinSet<Result<(), SinkError>>,
) -> Result<(), SinkError> {
    #[cfg(feature = "nats")]
    {
        tasks.spawn(jetstream::run(cfg, jobs, abandon));
        Ok(())
    }
    #[cfg(not(feature = "nats"))]
    {
        let _ = (cfg, jobs, abandon, tasks);
        Err(SinkError::Config(
            "processor.sinks lists \"nats\" but this build has no NATS client".into(),
        ))
    }
}

//! The processing stage's sinks: where acknowledged records go. A collector batch is rendered
//! once into a [`Batch`] and handed to every configured sink as a [`Job`]; the stage
//! acknowledges the batch to the collector only when every sink has said `true`.
//!
//! Adding a sink: a module here (its task, its config section type and `validate()`), an arm
//! in [`SinkKind`], a field for its section and a `validate` arm in `config::ProcessorConfig`,
//! and an arm in [`spawn`] below. `docs/DEVELOPING.md` walks through it.

pub(crate) mod files;
pub(crate) mod kafka;
pub(crate) mod kind;
pub(crate) mod nats;
pub(crate) mod template;

pub(crate) use kind::{OnMismatch, SinkKind};

use crate::config::ProcessorConfig;
use crate::lifecycle::CancellationToken;
use bytes::Bytes;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// Sinks that cannot do their work (see [`set_stalled`]), with what they say to change.
static STALLED: std::sync::Mutex<std::collections::BTreeMap<&'static str, String>> =
    std::sync::Mutex::new(std::collections::BTreeMap::new());

/// Marks `sink` stalled with the problem and its fix (`Some`), or working again (`None`);
/// sets `beacon_sink_stalled{sink}` and logs each change once (the problem itself is logged,
/// throttled, where it happens).
pub(crate) fn set_stalled(sink: &'static str, problem: Option<String>) {
    let mut s = STALLED.lock().expect("not poisoned");
    let changed = match problem {
        Some(p) => s.insert(sink, p.clone()).is_none().then_some(Some(p)),
        None => s.remove(sink).is_some().then_some(None),
    };
    metrics::gauge!(crate::metrics::SINK_STALLED, "sink" => sink).set(if s.contains_key(sink) {
        1.0
    } else {
        0.0
    });
    match changed {
        Some(Some(p)) => {
            tracing::error!(sink, problem = %p, "sink stalled: it will not recover without a change; readiness fails")
        }
        Some(None) => tracing::info!(sink, "sink working again"),
        None => {}
    }
}

/// The stage's readiness: `Err` with every stalled sink's problem.
pub(crate) fn readiness() -> Result<(), String> {
    let s = STALLED.lock().expect("not poisoned");
    if s.is_empty() {
        return Ok(());
    }
    Err(s
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n"))
}

/// One collector batch, rendered once and shared by every sink.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// NDJSON: one line per record, each ending in `\n`.
    pub(crate) lines: Bytes,
    /// Per record, in order.
    pub(crate) records: Vec<Entry>,
}

/// One record of a [`Batch`]: where its line is, its id, and the record itself for a sink
/// that derives more from it (the NATS subject, say).
#[derive(Debug)]
pub(crate) struct Entry {
    /// Offset just past this record's `\n`.
    pub(crate) end: usize,
    /// The record id (UUIDv7): a broker's deduplication key, formatted by the sink that needs
    /// it (the files sink does not).
    pub(crate) id: [u8; 16],
    /// The encoded record (a slice of the collector's frame, not a copy).
    pub(crate) record: Bytes,
    /// The tracker's own event id, when it sent one: where a broker can drop duplicates, it
    /// drops a tracker's retries by it (they are new records with ids of their own).
    pub(crate) event_id: Option<String>,
}

impl Entry {
    /// The key a broker drops duplicates by: the tracker's event id, else the record id (a
    /// collector's replay of a record carries both unchanged).
    pub(crate) fn dedup_id(&self) -> String {
        match &self.event_id {
            Some(e) => e.clone(),
            None => crate::record::format_uuid(&self.id),
        }
    }
}

impl Batch {
    /// Record `i`'s JSON line without its newline.
    pub(crate) fn line(&self, i: usize) -> Bytes {
        let start = if i == 0 { 0 } else { self.records[i - 1].end };
        self.lines.slice(start..self.records[i].end - 1)
    }
}

/// A batch for one sink, and where to say whether the sink has it (`true`) or gave up
/// (`false`: the batch is not acknowledged and the collector sends it again).
#[derive(Debug)]
pub(crate) struct Job {
    /// The records.
    pub(crate) batch: Arc<Batch>,
    /// The sink's answer.
    pub(crate) done: oneshot::Sender<bool>,
}

/// A sink failed for good: the stage stops (and is restarted by its supervisor); what the sink
/// did not confirm stays in the collector's spool.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Setting up (a directory, a credentials file) failed.
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// The world does not match the configuration (a stream with other settings, say).
    #[error("{0}")]
    Config(String),
    /// Writing failed (disk full, permissions): nothing more can be acknowledged.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The sink's task ended while the stage still ran.
    #[error("a sink stopped unexpectedly")]
    Stopped,
}

/// A step of setting up a path (a directory, a socket, a credentials file) failed: for the
/// sinks and the stage's own socket.
#[derive(Debug, thiserror::Error)]
#[error("{what} {path}: {source}")]
pub struct SetupError {
    /// The step.
    pub(crate) what: &'static str,
    /// The path involved.
    pub(crate) path: PathBuf,
    /// The OS error.
    #[source]
    pub(crate) source: io::Error,
}

/// `map_err` for a setup step on `path`.
pub(crate) fn setup<'a>(
    what: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> SetupError + 'a {
    move |source| SetupError {
        what,
        path: path.to_path_buf(),
        source,
    }
}

/// Starts the sink `kind` as a task in `tasks`, taking jobs from `jobs` until every sender is
/// gone; `abandon` tells a sink still retrying to give up (its records stay spooled).
pub(crate) fn spawn(
    kind: SinkKind,
    p: &ProcessorConfig,
    jobs: mpsc::Receiver<Job>,
    abandon: CancellationToken,
    tasks: &mut JoinSet<Result<(), SinkError>>,
) -> Result<(), SinkError> {
    // Exported at 0 from the start, as every series the alerts read (see crate::metrics).
    metrics::gauge!(crate::metrics::SINK_STALLED, "sink" => kind.name()).set(0.0);
    match kind {
        SinkKind::Files => {
            tasks.spawn(files::run(files::FileSink::open(&p.files)?, jobs));
        }
        SinkKind::Nats => nats::spawn(p.nats.clone(), jobs, abandon, tasks)?,
        SinkKind::Kafka => kafka::spawn(p.kafka.clone(), jobs, abandon, tasks)?,
    }
    Ok(())
}

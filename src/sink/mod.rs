//! The processing stage's sinks: where acknowledged records go. A collector batch is rendered
//! once into a [`Batch`] and handed to every configured sink as a [`Job`]; the stage
//! acknowledges the batch to the collector only when every sink has said `true`.

pub mod files;
pub mod nats;

use bytes::Bytes;
use std::sync::Arc;
use tokio::sync::oneshot;

/// One collector batch, rendered once and shared by every sink.
#[derive(Debug, Default)]
pub struct Batch {
    /// NDJSON: one line per record, each ending in `\n`.
    pub lines: Bytes,
    /// Per record, in order.
    pub records: Vec<Entry>,
}

/// Where one record is in [`Batch::lines`], and what a broker needs to know about it.
#[derive(Debug)]
pub struct Entry {
    /// Offset just past this record's `\n`.
    pub end: usize,
    /// The record id (UUIDv7): the broker's deduplication key, formatted by the sink that
    /// needs it (the files sink does not).
    pub id: [u8; 16],
    /// The NATS subject (empty when no NATS sink is configured).
    pub subject: String,
}

impl Batch {
    /// Record `i`'s JSON line without its newline.
    pub fn line(&self, i: usize) -> Bytes {
        let start = if i == 0 { 0 } else { self.records[i - 1].end };
        self.lines.slice(start..self.records[i].end - 1)
    }
}

/// A batch for one sink, and where to say whether the sink has it (`true`) or gave up
/// (`false`: the batch is not acknowledged and the collector sends it again).
#[derive(Debug)]
pub struct Job {
    /// The records.
    pub batch: Arc<Batch>,
    /// The sink's answer.
    pub done: oneshot::Sender<bool>,
}

//! A consumer of the beacon topic that drops replays: it reads the topic in a consumer group,
//! prints each beacon (one NDJSON line, the shape the files sink writes) to stdout once, and
//! commits its position after the lines are written. A copy — the same record produced again
//! after a stage crash or a delivery timeout — carries the same `beacon-id` header as its
//! first, and is dropped if that id was seen among the last `--remember` beacons.
//!
//! ```text
//! cargo run --example kafka-consumer -- --brokers 127.0.0.1:9092 --group dashboards
//! ```
//!
//! Exactly once, as far as it goes: the window of remembered ids bounds memory (16 bytes of
//! id and the map's overhead each: the default 1,000,000 measured ~295 MB of RSS), so a copy arriving after
//! more beacons than that went by is printed again; copies come right after a fault, within
//! seconds. The consumer itself is at least once: if it is killed between printing and
//! committing, the next run prints those lines again (with its window empty).

use clap::Parser;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
use rdkafka::message::{Headers, Message};
use std::collections::{HashSet, VecDeque};
use std::io::Write;
use std::time::{Duration, Instant};

#[derive(Parser)]
struct Args {
    /// Brokers (host:port), comma separated.
    #[arg(long, default_value = "127.0.0.1:9092")]
    brokers: String,
    /// The topic (`processor.kafka.topic`).
    #[arg(long, default_value = "beacons")]
    topic: String,
    /// Consumer group: the cluster remembers how far it got; copies with the same group share
    /// the partitions.
    #[arg(long, default_value = "example")]
    group: String,
    /// How many recent beacon ids to remember to drop copies.
    #[arg(long, default_value_t = 1_000_000)]
    remember: usize,
    /// Exit after this many seconds without a message, once the group has given this consumer
    /// its partitions (default: run until killed).
    #[arg(long)]
    exit_when_idle: Option<u64>,
}

/// The last `cap` ids seen.
struct Recent {
    set: HashSet<Vec<u8>>,
    order: VecDeque<Vec<u8>>,
    cap: usize,
}

impl Recent {
    /// True the first time `id` is seen within the window.
    fn first(&mut self, id: &[u8]) -> bool {
        if self.set.contains(id) {
            return false;
        }
        if self.order.len() == self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        self.set.insert(id.to_vec());
        self.order.push_back(id.to_vec());
        true
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &args.brokers)
        .set("group.id", &args.group)
        .set("enable.auto.commit", "false")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&[&args.topic])?;
    let mut recent = Recent {
        set: HashSet::new(),
        order: VecDeque::new(),
        cap: args.remember.max(1),
    };
    let (mut printed, mut dropped) = (0u64, 0u64);
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    // Idle time counts from the last message, or from when the group gave us partitions
    // (joining a group takes seconds: that is not idleness).
    let mut last: Option<Instant> = None;
    let mut committed = Instant::now();
    let mut uncommitted = false;
    loop {
        let polled = consumer.poll(Duration::from_millis(500));
        let idle = polled.is_none();
        if let Some(m) = polled {
            let m = m?;
            last = Some(Instant::now());
            let id = m.headers().and_then(|h| {
                h.iter()
                    .find(|h| h.key == "beacon-id")
                    .and_then(|h| h.value)
                    .map(<[u8]>::to_vec)
            });
            // A message without the header was not written by the collector: printed.
            if id.as_deref().is_none_or(|id| recent.first(id)) {
                out.write_all(m.payload().unwrap_or_default())?;
                out.write_all(b"\n")?;
                printed += 1;
            } else {
                dropped += 1;
            }
            uncommitted = true;
        }
        // Every second, and when idle: the printed lines are flushed, then the position
        // (just past the last message handled) committed.
        if uncommitted && (idle || committed.elapsed() >= Duration::from_secs(1)) {
            out.flush()?;
            consumer.commit_consumer_state(CommitMode::Sync)?;
            uncommitted = false;
            committed = Instant::now();
        }
        if last.is_none() && consumer.assignment().is_ok_and(|a| a.count() > 0) {
            last = Some(Instant::now());
        }
        if idle
            && args
                .exit_when_idle
                .is_some_and(|s| last.is_some_and(|l| l.elapsed() >= Duration::from_secs(s)))
        {
            break;
        }
    }
    out.flush()?;
    eprintln!("kafka-consumer: printed {printed} beacons, dropped {dropped} copies");
    Ok(())
}

//! beacon-collector: a beacon ingest server.
//!
//! # Module map
//! ```text
//!  collector process (`serve`)                        processing stage (`process`)
//!  ───────────────────────────                        ────────────────────────────
//!  server ── lifecycle (signals, phases, cancel)      processor ── lifecycle
//!    │  host::check (self-check at start)               │
//!    ├─ ingest::worker ×cores                           ├─ protocol (HELLO/BATCH/ACK)
//!    │    listener → native | hyper_engine              ├─ record (decode, NDJSON)
//!    │    routes → record_build → commit                └─ sink ─┬─ files (rotated NDJSON)
//!    │    (group commit per turn)                                ├─ nats (JetStream, subject)
//!    │         │                                                 └─ kafka (topic, beacon-id)
//!    │         ▼                unix socket
//!    ├─ spool (frame, writer, reader)  ──▶ forwarder ══BATCH══▶ processor
//!    │                                   ◀══ACK═════
//!    ├─ supervisor (runs `process` as a child, restarts it)
//!    ├─ admin (/metrics) ← metrics (every name)
//!    └─ host::sampler (kernel counters) ← host::kernel (/proc)
//! ```
//! - [`config`]: the TOML schema, one file per section, defaults and `validate()`.
//! - [`lifecycle`]: shutdown kinds and phases, signals, the cancellation token tasks stop on.
//! - [`server`]: the collector's sockets, [`run`], and the `serve` command around it.
//! - [`ingest`]: thread-per-core workers, each owning a `SO_REUSEPORT` listener, its
//!   connections and a group commit to the spool; the native HTTP/1.1 engine (httparse) and
//!   the hyper reference engine over shared routes, limits and request → record.
//! - [`record`]: the beacon record, its binary encoding and its NDJSON form.
//! - [`spool`]: durable segmented log (frame, writer, reader); a beacon is answered once it
//!   is here.
//! - [`forwarder`]: spool → batches on a unix socket → ACKs → spool segments deleted.
//! - [`protocol`]: the frame format between collector and processing stage.
//! - [`processor`], [`sink`]: the bundled processing stage and its sinks (rotated NDJSON
//!   files, NATS JetStream, Kafka); each sink owns its config section and checks.
//! - [`supervisor`]: runs the embedded processing stage as a child and restarts it;
//!   [`tasks`]: restarts a background task (forwarder, sampler, admin) that died, and fails
//!   health while the forwarder is down; [`fault`]: fault points for the tests that prove it.
//! - [`metrics`]: metric names and the Prometheus recorder; [`admin`] serves them.
//! - [`host`]: reading `/proc`, the self-check against the config with its generated
//!   sysctl/limits/systemd files, and kernel counters as metrics.
//! - [`tls`]: HTTPS certificates (SNI, SIGHUP reload, checks), the rustls config both engines
//!   use, session tickets, handshake metrics.
//! - [`logging`], [`time`]: log setup; RFC 3339 and HTTP dates without a date-time dependency.
//!
//! Data path: a worker accepts → frames the request → builds the record into its commit
//! group → [`spool::Spool::write_group`] once per event-loop turn (503 when it cannot) → 204
//! → the forwarder streams it to the processing stage → ACK → the segment is deleted once all
//! its records are acknowledged. Shutdown: health check 503, drain, flush what the stage will
//! take; anything left stays in the spool for the next start.

// Built without a sink's client (`--no-default-features`), what only that sink calls (its
// metric names, the topic/subject templates, the rendered-entry fields) is compiled but never
// called. The default build, which CI lints with `-D warnings`, reports dead code as usual.
#![cfg_attr(
    not(all(feature = "nats", feature = "kafka")),
    allow(dead_code, unused_imports)
)]

mod admin;
pub mod config;
#[doc(hidden)]
pub mod fault;
mod forwarder;
pub mod host;
pub mod ingest;
mod lifecycle;
pub mod logging;
pub mod metrics;
pub mod probe;
pub mod processor;
pub mod protocol;
pub mod record;
pub mod server;
mod sink;
mod spool;
mod supervisor;
mod tasks;
pub mod time;
mod tls;

pub use lifecycle::Shutdown;
pub use server::{run, Listeners, RunError, RunReport};

//! `[processor.nats]`: the NATS JetStream sink's settings and their checks.

use crate::config::error::{positive, ConfigError};
use crate::sink::kind::OnMismatch;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// JetStream retention policy of the stream the stage creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Retention {
    /// Kept until `retention_seconds` / `max_bytes` (any number of consumers, replayable).
    Limits,
    /// Kept until every consumer that exists has acknowledged it.
    Interest,
    /// Removed once one consumer acknowledges it (a work queue).
    Workqueue,
}

/// JetStream storage of the stream the stage creates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Storage {
    /// On disk (survives a broker restart).
    File,
    /// In memory (lost when the broker restarts).
    Memory,
}

/// The NATS JetStream sink.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NatsConfig {
    /// Server URLs (`nats://host:port`); list several members of a cluster so the stage can
    /// connect while one is down. The client also learns the others from the cluster.
    pub servers: Vec<String>,
    /// A `.creds` file (user JWT + NKey seed) to authenticate with; unset for none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) credentials_file: Option<PathBuf>,
    /// The connection name the servers show (`nats server report connections`).
    pub(crate) connection_name: String,
    /// The stream's name.
    pub(crate) stream: String,
    /// The subjects the stream captures (NATS wildcards allowed).
    pub(crate) stream_subjects: Vec<String>,
    /// The subject each beacon is published to: dot-separated tokens, each a literal or one
    /// of `{site}` (host of the page: the `u` parameter, else Origin, else Referer), `{path}`,
    /// `{kind}`, `{method}`, `{param.NAME}`. Values are reduced to `[A-Za-z0-9_-]` (anything
    /// else becomes `_`, at most 64 bytes; empty is `_`). Must fall inside `stream_subjects`.
    pub(crate) subject: String,
    /// Create the stream when it does not exist (with the settings below).
    pub(crate) create_stream: bool,
    /// An existing stream whose settings differ from these: `"fail"` (exit, reporting each
    /// difference) or `"warn"` (report and publish anyway).
    pub(crate) stream_mismatch: OnMismatch,
    /// `"limits"`, `"interest"` or `"workqueue"`.
    pub(crate) retention: Retention,
    /// `"file"` or `"memory"`.
    pub(crate) storage: Storage,
    /// Copies of each message (1..=5, at most the number of servers; 3 in a cluster survives
    /// one server down, 5 survives two, 2 survives none).
    pub replicas: usize,
    /// Seconds a message is kept (limits retention); 0 means no age limit.
    pub(crate) retention_seconds: u64,
    /// Bytes the stream may hold before the oldest messages go; 0 means no limit.
    pub(crate) max_bytes: u64,
    /// Seconds JetStream remembers message ids (`Nats-Msg-Id` = the record id) to drop a
    /// republished beacon: replays after a stage or collector restart within this window are
    /// stored once.
    pub(crate) duplicate_window_seconds: u64,
    /// Publishes awaiting JetStream's acknowledgement at once; at the limit the stage stops
    /// reading from the collector (whose spool then holds the rest).
    pub(crate) max_inflight: usize,
    /// Milliseconds to wait for JetStream to acknowledge a publish before sending it again
    /// (with the same message id, so a late first copy is not stored twice).
    pub publish_timeout_ms: u64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            servers: vec!["nats://127.0.0.1:4222".into()],
            credentials_file: None,
            connection_name: "beacon-collector".into(),
            stream: "BEACONS".into(),
            stream_subjects: vec!["beacons.>".into()],
            subject: "beacons.{site}".into(),
            create_stream: true,
            stream_mismatch: OnMismatch::Fail,
            retention: Retention::Limits,
            storage: Storage::File,
            replicas: 1,
            retention_seconds: 7 * 24 * 3600,
            max_bytes: 0,
            duplicate_window_seconds: 120,
            max_inflight: 4096,
            publish_timeout_ms: 5000,
        }
    }
}

impl NatsConfig {
    /// Checks the section when `processor.sinks` lists `"nats"`: refused outright in a build
    /// without the client.
    pub(crate) fn validate_for_sink(&self) -> Result<(), ConfigError> {
        if !cfg!(feature = "nats") {
            return Err(ConfigError::new(
                "processor.sinks",
                "lists \"nats\" but this build has no NATS client",
                "rebuild with the default features (cargo build --features nats), or remove \"nats\"",
            ));
        }
        self.validate()
    }

    /// Checks the section (only when `processor.sinks` lists `"nats"`).
    ///
    /// Over the house limit of ~100 lines on purpose: a flat list of independent checks, each
    /// naming its key, problem and fix; split up, a reader would hunt for the check of a key.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        if self.servers.is_empty() {
            return Err(ConfigError::new(
                "processor.nats.servers",
                "empty",
                "list the NATS servers, e.g. [\"nats://10.0.0.1:4222\", \"nats://10.0.0.2:4222\"]",
            ));
        }
        // The URL grammar is the client's; without it (no `nats` feature) the sink is refused
        // before this section is read.
        #[cfg(feature = "nats")]
        for (i, s) in self.servers.iter().enumerate() {
            if let Err(e) = s.parse::<async_nats::ServerAddr>() {
                return Err(ConfigError::new(
                    &format!("processor.nats.servers[{i}]"),
                    format!("{s:?} is not a server URL ({e})"),
                    "write it as nats://host:port (or tls://host:port)",
                ));
            }
        }
        if let Some(f) = &self.credentials_file {
            if f.as_os_str().is_empty() {
                return Err(ConfigError::new(
                    "processor.nats.credentials_file",
                    "empty path",
                    "remove the key for no credentials, or give the .creds file's path",
                ));
            }
        }
        let name_ok = !self.stream.is_empty()
            && self
                .stream
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b".*>/\\".contains(&b));
        if !name_ok {
            return Err(ConfigError::new(
                "processor.nats.stream",
                format!("{:?} is not a stream name", self.stream),
                "use letters, digits, '-' and '_', e.g. \"BEACONS\"",
            ));
        }
        if self.stream_subjects.is_empty() {
            return Err(ConfigError::new(
                "processor.nats.stream_subjects",
                "empty",
                "list the subjects the stream captures, e.g. [\"beacons.>\"]",
            ));
        }
        for (i, s) in self.stream_subjects.iter().enumerate() {
            if let Err(problem) = super::subject::check_pattern(s) {
                return Err(ConfigError::new(
                    &format!("processor.nats.stream_subjects[{i}]"),
                    format!("{s:?}: {problem}"),
                    "write dot-separated tokens; `*` matches one token, `>` the rest",
                ));
            }
        }
        let template =
            crate::sink::template::Template::parse(&self.subject).map_err(|problem| {
                ConfigError::new(
                    "processor.nats.subject",
                    format!("{:?}: {problem}", self.subject),
                    "write dot-separated tokens, each a literal or one of {site}, {path}, {kind}, \
                 {method}, {param.NAME}, e.g. \"beacons.{site}\"",
                )
            })?;
        let sample = template.sample();
        if !self
            .stream_subjects
            .iter()
            .any(|p| super::subject::matches(p, &sample))
        {
            return Err(ConfigError::new(
                "processor.nats.subject",
                format!(
                    "{:?} is not captured by processor.nats.stream_subjects {:?}: JetStream would \
                     refuse every publish",
                    self.subject, self.stream_subjects
                ),
                "make a stream subject match it (e.g. \"beacons.>\" for \"beacons.{site}\")",
            ));
        }
        if !matches!(self.replicas, 1..=5) {
            return Err(ConfigError::new(
                "processor.nats.replicas",
                format!("{} is outside 1..=5", self.replicas),
                "use 1 for a single server, 3 (or 5) for a cluster",
            ));
        }
        positive(
            "processor.nats.duplicate_window_seconds",
            self.duplicate_window_seconds,
        )?;
        if self.retention_seconds != 0 && self.retention_seconds < self.duplicate_window_seconds {
            return Err(ConfigError::new(
                "processor.nats.retention_seconds",
                "shorter than processor.nats.duplicate_window_seconds",
                "keep messages at least as long as the duplicate window (or 0 for no age limit)",
            ));
        }
        positive("processor.nats.max_inflight", self.max_inflight as u64)?;
        if self.publish_timeout_ms < 100 {
            return Err(ConfigError::new(
                "processor.nats.publish_timeout_ms",
                format!("{} ms is below 100 ms", self.publish_timeout_ms),
                "use at least 100 (default 5000): a cluster electing a leader takes seconds",
            ));
        }
        Ok(())
    }
}

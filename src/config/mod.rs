//! Configuration: the TOML schema, its defaults, parsing with key paths, and `validate()`.
//!
//! One file per section, each with its struct, defaults and `validate()`; the rules that span
//! sections are in [`Config::validate`]. Every field carries a doc comment (it is the
//! reference) and its unit in its name. Parsing never panics; every failure is a
//! [`ConfigError`] naming the key, the problem and the fix, which the binary turns into exit
//! code 64 (`EX_USAGE`).

mod admin;
mod check;
mod client_ip;
pub(crate) mod error;
mod forward;
mod http;
mod log;
mod migrate;
mod processor;
mod rate_limit;
mod server;
mod shutdown;
mod spool;
mod tls;

pub use crate::sink::kind::{OnMismatch, SinkKind};
pub(crate) use admin::AdminConfig;
pub(crate) use check::CheckConfig;
pub(crate) use client_ip::ClientIpConfig;
pub use error::ConfigError;
pub use forward::{ForwardConfig, ForwardMode};
pub(crate) use http::{HttpConfig, Protocol};
pub use log::{LogConfig, LogFormat};
pub use migrate::Deprecation;
pub(crate) use processor::{FilesConfig, ProcessorConfig};
pub(crate) use rate_limit::RateLimitConfig;
pub(crate) use server::ServerConfig;
pub(crate) use shutdown::ShutdownConfig;
pub use spool::AckAfter;
pub(crate) use spool::SpoolConfig;
pub use tls::{MinVersion, SniCertificate, TlsConfig};

pub(crate) use error::dir_mode;
use error::{path_error, toml_error};
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Every leaf of `v` as (dotted key, value).
fn leaves(prefix: &str, v: &toml::Value, out: &mut Vec<(String, toml::Value)>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                leaves(&key, v, out);
            }
        }
        _ => out.push((prefix.to_string(), v.clone())),
    }
}

/// A key whose value changed, and how the change takes effect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// Dotted key path.
    pub key: String,
    /// When it takes effect.
    pub effect: Effect,
}

/// How a changed key takes effect on SIGHUP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// At once, without dropping a connection (every worker takes the new state between
    /// requests).
    Live,
    /// The embedded processing stage is restarted with it (what it has not acknowledged is
    /// sent again; NATS drops the duplicates by id).
    StageRestart,
    /// Only after a restart of the collector.
    Restart,
}

impl Effect {
    /// Keys (or `section.` prefixes) that change live.
    pub(crate) const LIVE: [&'static str; 27] = [
        "http.allowed_origins",
        "http.cors_allow_credentials",
        "http.cors_max_age_seconds",
        "client_ip.trusted_proxies",
        "http.retry_after_seconds",
        "http.max_body_bytes",
        "http.max_decoded_body_bytes",
        "http.max_batch_stored_bytes",
        "http.max_params",
        "http.max_param_name_bytes",
        "http.max_param_value_bytes",
        "http.max_json_depth",
        "http.beacon_path",
        "http.gif_path",
        "http.batch_path",
        "http.routes",
        "http.trackers",
        "http.event_id_param",
        "http.health_path",
        "http.ready_path",
        "http.live_path",
        "rate_limit.",
        "log.level",
        // The files are read again on every SIGHUP (a renewed certificate under the same
        // name too); new handshakes get them.
        "tls.cert_file",
        "tls.key_file",
        "tls.certificates",
        "tls.ticket_key_file",
    ];

    /// How `key` takes effect.
    pub(crate) fn of(key: &str) -> Effect {
        let matches = |p: &&str| key == *p || (p.ends_with('.') && key.starts_with(*p));
        if Self::LIVE.iter().any(matches) {
            Effect::Live
        } else if key.starts_with("processor.") {
            Effect::StageRestart
        } else {
            Effect::Restart
        }
    }

    /// As the log and `config validate --against` say it.
    pub fn as_str(self) -> &'static str {
        match self {
            Effect::Live => "live",
            Effect::StageRestart => "restarts the processing stage",
            Effect::Restart => "needs a restart",
        }
    }
}

/// The shipped, annotated default configuration. A test parses it, so it cannot rot.
pub const DEFAULT_TOML: &str = include_str!("../../config/collector.toml");

/// The whole configuration file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The public TCP listener and its per-socket options.
    pub server: ServerConfig,
    /// HTTP limits, timeouts and routes.
    pub http: HttpConfig,
    /// Who the client is: PROXY protocol and trusted `X-Forwarded-For`.
    pub client_ip: ClientIpConfig,
    /// The HTTPS listener (off by default).
    pub tls: TlsConfig,
    /// Per-client rate limit (off by default).
    pub rate_limit: RateLimitConfig,
    /// The durable local spool every accepted beacon is written to before it is answered.
    pub spool: SpoolConfig,
    /// How the collector reaches the processing stage.
    pub forward: ForwardConfig,
    /// The bundled processing stage (`beacon-collector process`).
    pub processor: ProcessorConfig,
    /// SIGTERM behaviour: deregistration delay, drain and flush deadlines.
    pub shutdown: ShutdownConfig,
    /// The admin listener (Prometheus `/metrics`).
    pub admin: AdminConfig,
    /// The kernel/limits self-check at start and the kernel counter sampler while serving.
    pub check: CheckConfig,
    /// Logging.
    pub log: LogConfig,
    /// Keys the file wrote under their old names (read as the new ones; see `config validate`).
    #[serde(skip)]
    pub deprecations: Vec<Deprecation>,
}

impl Config {
    /// Parses TOML text and validates it.
    pub(crate) fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let mut table: toml::Table = text.parse().map_err(|e| toml_error(text, &e))?;
        // Old key names are moved to their new places first, so what follows sees one schema;
        // an error in a moved key names it as the file wrote it.
        let deprecations = migrate::apply(&mut table)?;
        let as_written = |e: ConfigError| migrate::as_written(e, &deprecations);
        let de = toml::Value::Table(table);
        let mut config: Config = serde_path_to_error::deserialize(de)
            .map_err(|e| {
                let key = e.path().to_string();
                let inner = e.into_inner();
                let msg = inner.message().to_string();
                path_error(&key, &msg)
            })
            .map_err(as_written)?;
        config.validate().map_err(as_written)?;
        config.deprecations = deprecations;
        Ok(config)
    }

    /// Reads, parses and validates a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigError::new(
                "-c",
                format!("cannot read {}: {e}", path.display()),
                "pass the path of a readable TOML file, or omit -c for the built-in defaults",
            )
        })?;
        Self::from_toml(&text)
    }

    /// Ingest workers after resolving 0 to the CPU count.
    pub(crate) fn workers(&self) -> usize {
        match self.server.workers {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }

    /// Listening sockets after resolving 0 to the worker count.
    pub(crate) fn listeners(&self) -> usize {
        match self.server.listeners {
            0 => self.workers(),
            n => n,
        }
    }

    /// Checks values serde cannot: ranges and the relations between keys.
    /// Checks values serde cannot: each section, then the rules between sections.
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        self.rate_limit.validate()?;
        self.server.validate()?;
        self.http.validate()?;
        self.tls.validate(self.server.listen)?;
        self.spool.validate()?;
        self.forward.validate()?;
        self.processor.validate()?;
        self.shutdown.validate()?;
        if self.admin.enabled
            && self.processor.admin.enabled
            && self.admin.listen == self.processor.admin.listen
            // Port 0 is "any free port": two of them never collide.
            && self.admin.listen.port() != 0
        {
            return Err(ConfigError::new(
                "processor.admin.listen",
                "same address as admin.listen",
                "give the processing stage its own metrics port (default 127.0.0.1:9103)",
            ));
        }
        Ok(())
    }

    /// The keys whose values differ between `self` and `other`, in file order, each with how
    /// it takes effect on SIGHUP.
    pub fn changes(&self, other: &Config) -> Vec<Change> {
        let flat = |c: &Config| {
            let mut out = Vec::new();
            if let Ok(v) = toml::Value::try_from(c) {
                leaves("", &v, &mut out);
            }
            out
        };
        let (a, b) = (flat(self), flat(other));
        let mut keys: Vec<&String> = a.iter().chain(b.iter()).map(|(k, _)| k).collect();
        keys.dedup();
        let mut seen = std::collections::HashSet::new();
        keys.into_iter()
            .filter(|k| seen.insert(k.as_str()))
            .filter(|k| {
                a.iter().find(|(x, _)| x == *k).map(|(_, v)| v)
                    != b.iter().find(|(x, _)| x == *k).map(|(_, v)| v)
            })
            .map(|k| Change {
                key: k.clone(),
                effect: Effect::of(k),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shipped_default_parses_and_matches_builtin() {
        let shipped = Config::from_toml(DEFAULT_TOML).expect("config/collector.toml is valid");
        let builtin = Config::default();
        builtin.validate().expect("built-in defaults are valid");
        // The shipped file documents the built-in defaults: they must not drift apart.
        assert_eq!(
            toml::to_string(&shipped).unwrap(),
            toml::to_string(&builtin).unwrap()
        );
    }

    /// The prose cannot drift either: every key the code has is written out in the shipped
    /// file under its section, in a commented block saying what it does; and the file
    /// sets no key the code does not have (parsing above refuses unknown keys).
    #[test]
    fn shipped_default_documents_every_key() {
        let mut keys = Vec::new();
        leaves(
            "",
            &toml::Value::try_from(Config::default()).unwrap(),
            &mut keys,
        );
        let keys: Vec<String> = keys.into_iter().map(|(k, _)| k).collect();
        let mut documented = std::collections::HashMap::new();
        let mut section = String::new();
        let mut comment_above = false;
        for line in DEFAULT_TOML.lines().map(str::trim) {
            if let Some(s) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = s.to_string();
                comment_above = false;
            } else if line.starts_with('#') {
                comment_above = true;
            } else if let Some((k, _)) = line.split_once('=') {
                // A comment may describe a block of related keys (no blank line between).
                documented.insert(format!("{section}.{}", k.trim()), comment_above);
            } else if line.is_empty() {
                comment_above = false;
            }
        }
        let missing: Vec<_> = keys
            .iter()
            .filter(|k| !documented.contains_key(*k))
            .collect();
        assert!(
            missing.is_empty(),
            "keys the shipped config does not show: {missing:?}"
        );
        let bare: Vec<_> = documented
            .iter()
            .filter(|(_, c)| !**c)
            .map(|(k, _)| k)
            .collect();
        assert!(
            bare.is_empty(),
            "keys without a comment above them: {bare:?}"
        );
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let e = Config::from_toml("[http]\nidle_timout_seconds = 80\n").unwrap_err();
        assert_eq!(e.key, "http.idle_timout_seconds");
        assert_eq!(e.problem, "unknown key");
        assert!(e.fix.contains("idle_timeout_seconds"), "{e}");
    }

    #[test]
    fn wrong_type_is_named_with_its_path() {
        let e = Config::from_toml("[server]\nbacklog = \"lots\"\n").unwrap_err();
        assert_eq!(e.key, "server.backlog");
    }

    #[test]
    fn background_nice_stops_at_19() {
        let e = Config::from_toml("[server]\nbackground_nice = 20\n").unwrap_err();
        assert_eq!(e.key, "server.background_nice");
        assert!(e.fix.contains("19"), "{e}");
        Config::from_toml("[server]\nbackground_nice = 0\n").unwrap();
        Config::from_toml("[server]\nbackground_nice = 19\n").unwrap();
    }

    #[test]
    fn idle_timeout_must_exceed_lb_idle_timeout() {
        let e = Config::from_toml("[http]\nidle_timeout_seconds = 60\n").unwrap_err();
        assert_eq!(e.key, "http.idle_timeout_seconds");
        assert!(e.problem.contains("502"), "{e}");
        Config::from_toml("[http]\nidle_timeout_seconds = 61\n").unwrap();
    }

    #[test]
    fn syntax_error_names_the_line() {
        let e = Config::from_toml("[http]\n\nidle_timeout_seconds = = 3\n").unwrap_err();
        assert!(e.key.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_enum_value_lists_choices() {
        let e = Config::from_toml("[forward]\nmode = \"sideways\"\n").unwrap_err();
        assert_eq!(e.key, "forward.mode");
        assert!(e.fix.contains("embedded"), "{e}");
    }

    #[test]
    fn bad_origin_rejected() {
        let e = Config::from_toml("[http]\nallowed_origins = [\"example.com\"]\n").unwrap_err();
        assert_eq!(e.key, "http.allowed_origins");
        for bad in ["0o644\n", "0o400\n", "0o750\n", "0o1640\n"] {
            let e = Config::from_toml(&format!("[spool]\nfile_mode = {bad}")).unwrap_err();
            assert_eq!(e.key, "spool.file_mode", "{bad}");
        }
        assert_eq!(dir_mode(0o640), 0o750);
        assert_eq!(dir_mode(0o600), 0o700);
        let e = Config::from_toml("[http]\ncors_allow_credentials = true\n").unwrap_err();
        assert_eq!(e.key, "http.cors_allow_credentials", "never with *");
        Config::from_toml(
            "[http]\ncors_allow_credentials = true\nallowed_origins = [\"https://a.example\"]\n",
        )
        .unwrap();
    }

    /// Every key that moved is still read under its old name, as the same setting, with a
    /// deprecation naming the new key.
    #[test]
    fn every_old_key_is_still_accepted_with_a_warning() {
        let mut text = String::new();
        let mut expected = toml::Table::new();
        for (i, m) in migrate::MOVED.iter().enumerate() {
            // A value that is not the default, so a key read and then dropped would show.
            let (old, new) = match m.new {
                "processor.files.data_dir" => (
                    "\"/srv/beacons\"".to_string(),
                    "\"/srv/beacons\"".to_string(),
                ),
                "processor.files.prefix" => ("\"rum\"".into(), "\"rum\"".into()),
                "processor.files.fsync" => ("true".into(), "true".into()),
                "processor.admin.enabled" => ("false".into(), "false".into()),
                "processor.admin.listen" => {
                    ("\"127.0.0.1:9333\"".into(), "\"127.0.0.1:9333\"".into())
                }
                "client_ip.proxy_protocol" => ("\"v2\"".into(), "\"v2\"".into()),
                "client_ip.trusted_proxies" => {
                    ("[\"10.0.0.0/8\"]".into(), "[\"10.0.0.0/8\"]".into())
                }
                "processor.files.mode" | "forward.socket_mode" => ("0o600".into(), "0o600".into()),
                _ => {
                    let n = 100_000 + i as i64;
                    (n.to_string(), (n * m.scale).to_string())
                }
            };
            // Dotted keys at the root: TOML's other way of writing `[section] key = value`.
            text.push_str(&format!("{} = {old}\n", m.old));
            let one: toml::Table = format!("{} = {new}\n", m.new).parse().unwrap();
            merge(&mut expected, one);
        }
        let c = Config::from_toml(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        assert_eq!(c.deprecations.len(), migrate::MOVED.len());
        for (d, m) in c.deprecations.iter().zip(migrate::MOVED.iter()) {
            assert_eq!((d.old, d.new), (m.old, m.new));
            assert!(d.to_string().contains(m.new), "{d}");
        }
        let mut want: toml::Table = toml::Value::try_from(Config::default())
            .unwrap()
            .try_into()
            .unwrap();
        merge(&mut want, expected);
        let got: toml::Table = toml::Value::try_from(&c).unwrap().try_into().unwrap();
        assert_eq!(got, want, "the old keys read as the new ones");
    }

    fn merge(into: &mut toml::Table, from: toml::Table) {
        for (k, v) in from {
            match (into.get_mut(&k), v) {
                (Some(toml::Value::Table(a)), toml::Value::Table(b)) => merge(a, b),
                (_, v) => {
                    into.insert(k, v);
                }
            }
        }
    }

    #[test]
    fn proxy_settings_are_checked() {
        let c = Config::from_toml(
            "[client_ip]\nproxy_protocol = \"v2\"\ntrusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\"]\n",
        )
        .unwrap();
        assert_eq!(c.client_ip.proxy_protocol, crate::ingest::proxy::Mode::V2);
        assert_eq!(c.client_ip.trusted_proxies.len(), 2);
        assert!(c.deprecations.is_empty());
        let e =
            Config::from_toml("[client_ip]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n")
                .unwrap_err();
        assert!(e.key.starts_with("client_ip.trusted_proxies"), "{e:?}");
        assert!(e.problem.contains("host bits"), "{e:?}");
        // Under its old name, the error names the key as the file wrote it.
        let e = Config::from_toml("[http]\ntrusted_proxies = [\"10.0.0.0/8\", \"10.0.0.1/8\"]\n")
            .unwrap_err();
        assert!(e.key.starts_with("http.trusted_proxies"), "{e:?}");
        for (toml, key) in [
            (
                "[rate_limit]\nper_client_per_second = 0.0\n",
                "rate_limit.per_client_per_second",
            ),
            ("[rate_limit]\nburst = 0\n", "rate_limit.burst"),
            ("[rate_limit]\ntable_slots = 10\n", "rate_limit.table_slots"),
        ] {
            let e = Config::from_toml(toml).unwrap_err();
            assert_eq!(e.key, key, "{toml}");
        }
        let e = Config::from_toml("[client_ip]\nproxy_protocol = \"v3\"\n").unwrap_err();
        assert_eq!(e.key, "client_ip.proxy_protocol");
        assert!(e.problem.contains("v3"), "{e:?}");
    }

    #[test]
    fn nats_settings_are_checked_when_the_sink_is_on() {
        // Not checked while the sink is off: a half-written [processor.nats] does no harm.
        Config::from_toml("[processor.nats]\nsubject = \"x.{nope}\"\n").unwrap();
        let on = "[processor]\nsinks = [\"files\", \"nats\"]\n[processor.nats]\n";
        let c = Config::from_toml(&format!("{on}replicas = 3\n")).unwrap();
        assert_eq!(c.processor.sinks, vec![SinkKind::Files, SinkKind::Nats]);
        for (toml, key, problem) in [
            (
                "subject = \"beacons.{nope}\"\n",
                "processor.nats.subject",
                "unknown placeholder",
            ),
            (
                "subject = \"other.{site}\"\n",
                "processor.nats.subject",
                "not captured by processor.nats.stream_subjects",
            ),
            (
                "servers = [\"nats://a:4222\", \"nats://b:port\"]\n",
                "processor.nats.servers[1]",
                "not a server URL",
            ),
            ("servers = []\n", "processor.nats.servers", "empty"),
            (
                "stream = \"BEA.CONS\"\n",
                "processor.nats.stream",
                "not a stream name",
            ),
            (
                "stream_subjects = [\"beacons.>.x\"]\n",
                "processor.nats.stream_subjects[0]",
                "last token",
            ),
            ("replicas = 7\n", "processor.nats.replicas", "outside"),
            (
                "retention = \"forever\"\n",
                "processor.nats.retention",
                "forever",
            ),
            ("max_inflight = 0\n", "processor.nats.max_inflight", ""),
            (
                "publish_timeout_ms = 10\n",
                "processor.nats.publish_timeout_ms",
                "",
            ),
            (
                "max_age_seconds = 60\n",
                "processor.nats.max_age_seconds",
                "shorter than",
            ),
        ] {
            let e = Config::from_toml(&format!("{on}{toml}")).unwrap_err();
            assert_eq!(e.key, key, "{toml}: {e}");
            assert!(e.problem.contains(problem), "{toml}: {e}");
        }
        let e = Config::from_toml("[processor]\nsinks = []\n").unwrap_err();
        assert_eq!(e.key, "processor.sinks");
        let e = Config::from_toml("[processor]\nsinks = [\"nats\", \"nats\"]\n").unwrap_err();
        assert!(e.problem.contains("twice"), "{e}");
        let e = Config::from_toml("[processor]\nsinks = [\"kinesis\"]\n").unwrap_err();
        assert!(e.key.starts_with("processor.sinks"), "{e}");
    }

    #[test]
    fn kafka_settings_are_checked_when_the_sink_is_on() {
        let on = "[processor]\nsinks = [\"kafka\"]\n[processor.kafka]\n";
        let c = Config::from_toml(on).unwrap();
        assert_eq!(c.processor.kafka.topic, "beacons");
        // Off: the section is not checked.
        Config::from_toml("[processor.kafka]\nbootstrap_servers = []\n").unwrap();
        for (toml, key, problem) in [
            (
                "bootstrap_servers = []\n",
                "processor.kafka.bootstrap_servers",
                "empty",
            ),
            (
                "bootstrap_servers = [\"kafka1\"]\n",
                "processor.kafka.bootstrap_servers[0]",
                "host:port",
            ),
            ("topic = \"beacons/x\"\n", "processor.kafka.topic", "'/'"),
            (
                "topic = \"beacons.{host}\"\n",
                "processor.kafka.topic",
                "unknown placeholder",
            ),
            (
                "topic = \"b.{site}.{site}.{site}.{site}\"\n",
                "processor.kafka.topic",
                "longer than",
            ),
            ("key = \"random\"\n", "processor.kafka.key", "random"),
            (
                "compression = \"gzip\"\n",
                "processor.kafka.compression",
                "gzip",
            ),
            ("max_inflight = 0\n", "processor.kafka.max_inflight", ""),
            ("partitions = 0\n", "processor.kafka.partitions", ""),
            (
                "replication_factor = 1\nmin_insync_replicas = 2\n",
                "processor.kafka.min_insync_replicas",
                "more than replication_factor",
            ),
            (
                "delivery_timeout_ms = 10\n",
                "processor.kafka.delivery_timeout_ms",
                "no time for a retry",
            ),
            (
                "[processor.kafka.properties]\nacks = \"1\"\n",
                "processor.kafka.properties.\"acks\"",
                "set by the sink",
            ),
        ] {
            let e = Config::from_toml(&format!("{on}{toml}")).unwrap_err();
            assert_eq!(e.key, key, "{toml}: {e}");
            assert!(e.problem.contains(problem), "{toml}: {e}");
        }
        let c = Config::from_toml(&format!(
            "{on}topic = \"beacons.{{kind}}\"\n[processor.kafka.properties]\n\"security.protocol\" = \"sasl_plaintext\"\n"
        ))
        .unwrap();
        assert_eq!(
            c.processor.kafka.properties["security.protocol"],
            "sasl_plaintext"
        );
    }
}

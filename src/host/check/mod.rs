//! `beacon-collector check`: compares kernel and process limits with what the config needs,
//! one [`Finding`] per setting (current value, recommendation, severity, the failure it
//! prevents, the exact fix), and generates the sysctl, limits and systemd files that fix them.
//!
//! Every threshold here answers an outage in the field notes (`shared/seeds/`): listen
//! backlogs cut to somaxconn, nofile at 1024, conntrack full with a 5-day timeout, ephemeral
//! ports exhausted by TIME_WAIT, `tcp_tw_recycle` dropping NAT clients, keepalive at 2 hours.

mod emit;
mod rules;

pub use emit::{emit, emit_limits, emit_sysctl, emit_systemd, Emit};

use super::kernel::ProcRoot;
use crate::config::Config;
use serde::Serialize;
use std::fmt::Write as _;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Severity {
    /// As recommended.
    Ok,
    /// Works, but fails under load or after an incident, or signals past trouble.
    Warn,
    /// Breaks the collector or its clients as configured.
    Fail,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Severity::Ok => "ok",
            Severity::Warn => "warn",
            Severity::Fail => "fail",
        }
    }
}

/// One checked setting.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Finding {
    /// The setting, e.g. `net.core.somaxconn` or `RLIMIT_NOFILE`.
    pub(crate) key: String,
    /// Its value now (`absent` when the kernel does not have it).
    pub(crate) current: String,
    /// What the config needs.
    pub(crate) recommended: String,
    /// How bad.
    pub(crate) severity: Severity,
    /// The failure it prevents, in one sentence.
    pub(crate) why: String,
    /// The exact fix (a sysctl line, a limits or systemd setting); empty when ok.
    pub(crate) fix: String,
    /// Who can change it: what a container or pod may set for itself, and what only the node.
    pub(crate) scope: Scope,
}

/// Where a setting lives, which decides who can change it when the collector runs in a
/// container (its own network namespace) or a Kubernetes pod. Checked on Linux 6.x by writing
/// each in a fresh network namespace (`unshare -n`) and reading it back on the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Scope {
    /// Per network namespace, and in Kubernetes' safe set: a pod sets it in
    /// `securityContext.sysctls` with no kubelet change.
    NetnsSafe,
    /// Per network namespace, outside Kubernetes' safe set: `podman run --sysctl` sets it; a
    /// pod needs the kubelet's `--allowed-unsafe-sysctls` (e.g. `net.core.somaxconn`).
    Netns,
    /// Kernel-wide: only the node sets it (sysctl.d on the host, a privileged DaemonSet); a
    /// container sees the node's value, or nothing.
    Node,
    /// The collector process's own limit: the service manager or the container runtime
    /// (`LimitNOFILE`, `--ulimit`).
    Process,
    /// A key of the collector's config.
    Config,
}

impl Scope {
    /// The scope of a finding's key.
    pub(crate) fn of(key: &str) -> Scope {
        match key {
            // Kubernetes' safe sysctls (1.29+ for the keepalive and FIN timeouts).
            "net.ipv4.ip_local_port_range"
            | "net.ipv4.tcp_syncookies"
            | "net.ipv4.tcp_keepalive_time"
            | "net.ipv4.tcp_fin_timeout" => Scope::NetnsSafe,
            // Global: read-only (or absent) inside a network namespace.
            "net.core.netdev_max_backlog"
            | "net.core.rmem_max"
            | "net.core.wmem_max"
            | "net.netfilter.nf_conntrack_max"
            | "net.netfilter.nf_conntrack_count" => Scope::Node,
            k if k.starts_with("net.") => Scope::Netns,
            k if k.starts_with("RLIMIT_") => Scope::Process,
            k if k.starts_with("fs.") || k.starts_with("vm.") || k.starts_with("kernel.") => {
                Scope::Node
            }
            _ => Scope::Config,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Scope::NetnsSafe => "netns-safe",
            Scope::Netns => "netns",
            Scope::Node => "node",
            Scope::Process => "process",
            Scope::Config => "config",
        }
    }
}

/// The table's legend for the SCOPE column.
const SCOPES: &str = "SCOPE: netns-safe / netns = this network namespace's own value: a container sets it \
(podman/docker run --sysctl KEY=VALUE), a Kubernetes pod in securityContext.sysctls (netns needs the \
kubelet's --allowed-unsafe-sysctls); node = kernel-wide, only the host sets it (a container sees the \
node's value or nothing); process = the runtime's limit (LimitNOFILE, --ulimit); config = this config.";

/// The outcome of a check.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// The `/proc` tree read.
    pub(crate) proc_root: String,
    /// Every finding, in check order.
    pub(crate) findings: Vec<Finding>,
    /// Counts by severity.
    pub(crate) summary: Summary,
    /// The exit code `check` uses for this report.
    pub(crate) exit_code: i32,
}

/// Counts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub(crate) struct Summary {
    /// Findings that are ok.
    pub(crate) ok: usize,
    /// Warnings.
    pub(crate) warn: usize,
    /// Failures.
    pub(crate) fail: usize,
}

/// The check could not run.
#[derive(Debug, thiserror::Error)]
#[error("cannot read kernel settings under {0}: no sys/ and net/ there (is it a /proc tree?)")]
pub(crate) struct CheckError(pub String);

/// The `check` command: prints the report (a table, coloured when `color`, or JSON) and
/// returns the exit code: 0 all ok, 1 findings, 2 could not run.
pub fn command(config: &Config, proc: &ProcRoot, json: bool, color: bool) -> u8 {
    let report = match run(config, proc) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return 2;
        }
    };
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serializes")
        );
    } else {
        print!("{}", report.render_table(color));
    }
    report.exit_code as u8
}

/// `check.strict = true` and the self-check at start found failures.
#[derive(Debug, thiserror::Error)]
#[error(
    "check.strict = true and the self-check found {0} fail(s); fix them (see the log, or run \
     `beacon-collector check`) or set check.strict = false"
)]
pub struct StrictFailure(pub usize);

/// The self-check at start: runs [`run`] against the live system and logs each warn and fail
/// with its fix; with `check.strict` a fail stops the start. A check that cannot run (no
/// `/proc`) is logged and skipped.
pub(crate) fn self_check(config: &Config) -> Result<(), StrictFailure> {
    let report = match run(config, &ProcRoot::system()) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("self-check skipped: {e}");
            return Ok(());
        }
    };
    for f in &report.findings {
        match f.severity {
            Severity::Ok => {}
            Severity::Warn => {
                tracing::warn!(key = %f.key, current = %f.current, recommended = %f.recommended, fix = %f.fix, "check: {}", f.why)
            }
            Severity::Fail => {
                tracing::error!(key = %f.key, current = %f.current, recommended = %f.recommended, fix = %f.fix, "check: {}", f.why)
            }
        }
    }
    tracing::info!(
        ok = report.summary.ok,
        warn = report.summary.warn,
        fail = report.summary.fail,
        "self-check done (beacon-collector check for the table)"
    );
    if config.check.strict && report.summary.fail > 0 {
        return Err(StrictFailure(report.summary.fail));
    }
    Ok(())
}

/// File descriptors the collector needs beyond one per connection: listeners, spool segments,
/// data files, logs, the admin listener, the runtime.
pub(crate) const FD_OVERHEAD: u64 = 256;
/// Linux keeps a socket in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN; not `tcp_fin_timeout`).
pub(crate) const TIME_WAIT_SECONDS: u64 = 60;

/// Values the config implies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Needs {
    /// `server.backlog`.
    pub(crate) backlog: u64,
    /// File descriptors needed at `server.max_connections`.
    pub(crate) fds: u64,
    /// Recommended `RLIMIT_NOFILE` (twice the need, rounded up to a power of two).
    pub(crate) nofile: u64,
    /// Recommended `nf_conntrack_max`.
    pub(crate) conntrack_max: u64,
    /// Recommended `nf_conntrack_tcp_timeout_established`.
    pub(crate) conntrack_established: u64,
    /// Recommended `TimeoutStopSec`.
    pub(crate) stop_seconds: u64,
}

impl Needs {
    /// From the config.
    pub(crate) fn from_config(c: &Config) -> Self {
        let s = &c.server;
        let fds = s.max_connections as u64 + FD_OVERHEAD;
        let keepalive_dead = s.tcp_keepalive_idle_seconds
            + s.tcp_keepalive_interval_seconds * u64::from(s.tcp_keepalive_probes);
        let idle_seconds = c.http.idle_timeout_seconds.max(keepalive_dead);
        Self {
            backlog: u64::from(s.backlog),
            fds,
            nofile: (fds * 2).next_power_of_two(),
            conntrack_max: (4 * s.max_connections as u64)
                .next_power_of_two()
                .max(262_144),
            conntrack_established: (2 * idle_seconds).max(600),
            stop_seconds: c.shutdown.deregistration_delay_seconds
                + c.shutdown.drain_timeout_seconds
                + c.shutdown.flush_timeout_seconds
                + 10,
        }
    }
}

/// Runs every check against `proc` for `config`, in the order of [`rules::RULES`].
pub(crate) fn run(config: &Config, proc: &ProcRoot) -> Result<Report, CheckError> {
    if !proc.usable() {
        return Err(CheckError(proc.root().display().to_string()));
    }
    let cx = rules::Context {
        config,
        proc,
        needs: Needs::from_config(config),
    };
    let mut findings = Vec::new();
    for rule in rules::RULES {
        rule.check(&cx, &mut findings);
    }
    let mut summary = Summary::default();
    for f in &findings {
        match f.severity {
            Severity::Ok => summary.ok += 1,
            Severity::Warn => summary.warn += 1,
            Severity::Fail => summary.fail += 1,
        }
    }
    Ok(Report {
        proc_root: proc.root().display().to_string(),
        findings,
        summary,
        exit_code: i32::from(summary.warn + summary.fail > 0),
    })
}

impl Report {
    /// The human table: one row per finding, then why/fix under each warn and fail.
    pub(crate) fn render_table(&self, color: bool) -> String {
        let paint = |s: Severity, text: &str| -> String {
            if !color {
                return text.to_string();
            }
            let code = match s {
                Severity::Ok => "32",
                Severity::Warn => "33",
                Severity::Fail => "31;1",
            };
            format!("\x1b[{code}m{text}\x1b[0m")
        };
        let kw = self
            .findings
            .iter()
            .map(|f| f.key.len())
            .max()
            .unwrap_or(3)
            .max(3);
        let cw = self
            .findings
            .iter()
            .map(|f| f.current.len())
            .max()
            .unwrap_or(7)
            .clamp(7, 40);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<4}  {:<kw$}  {:<10}  {:<cw$}  RECOMMENDED",
            "", "KEY", "SCOPE", "CURRENT"
        );
        for f in &self.findings {
            let sev = format!("{:<4}", f.severity.as_str());
            let _ = writeln!(
                out,
                "{}  {:<kw$}  {:<10}  {:<cw$}  {}",
                paint(f.severity, &sev),
                f.key,
                f.scope.as_str(),
                f.current,
                f.recommended
            );
            if f.severity != Severity::Ok {
                let _ = writeln!(out, "      why: {}", f.why);
                let _ = writeln!(out, "      fix: {}", f.fix);
            }
        }
        let _ = writeln!(
            out,
            "\n{} ok, {} warn, {} fail ({})",
            self.summary.ok, self.summary.warn, self.summary.fail, self.proc_root
        );
        let _ = writeln!(out, "{SCOPES}");
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_for_defaults() {
        let n = Needs::from_config(&Config::default());
        assert_eq!(n.backlog, 4096);
        assert_eq!(n.fds, 50_256);
        assert_eq!(n.nofile, 131_072);
        assert_eq!(n.stop_seconds, 80);
        assert_eq!(n.conntrack_established, 600);
    }

    #[test]
    fn sysctl_file_sets_what_the_checks_want() {
        let s = emit_sysctl(&Config::default());
        assert!(s.contains("net.core.somaxconn = 4096\n"));
        assert!(!s.contains("tcp_tw_recycle ="));
        for line in s.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
            assert!(line.contains(" = "), "{line}");
        }
    }
}

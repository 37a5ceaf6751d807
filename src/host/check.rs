//! `beacon-collector check`: compares kernel and process limits with what the config needs,
//! one [`Finding`] per setting (current value, recommendation, severity, the failure it
//! prevents, the exact fix), and generates the sysctl, limits and systemd files that fix them.
//!
//! Every threshold here answers an outage in the field notes (`shared/seeds/`): listen
//! backlogs cut to somaxconn, nofile at 1024, conntrack full with a 5-day timeout, ephemeral
//! ports exhausted by TIME_WAIT, `tcp_tw_recycle` dropping NAT clients, keepalive at 2 hours.

use super::kernel::ProcRoot;
use crate::config::Config;
use serde::Serialize;
use std::fmt::Write as _;

/// How bad a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
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
pub struct Finding {
    /// The setting, e.g. `net.core.somaxconn` or `RLIMIT_NOFILE`.
    pub key: String,
    /// Its value now (`absent` when the kernel does not have it).
    pub current: String,
    /// What the config needs.
    pub recommended: String,
    /// How bad.
    pub severity: Severity,
    /// The failure it prevents, in one sentence.
    pub why: String,
    /// The exact fix (a sysctl line, a limits or systemd setting); empty when ok.
    pub fix: String,
}

/// The outcome of a check.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The `/proc` tree read.
    pub proc_root: String,
    /// Every finding, in check order.
    pub findings: Vec<Finding>,
    /// Counts by severity.
    pub summary: Summary,
    /// The exit code `check` uses for this report.
    pub exit_code: i32,
}

/// Counts by severity.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Findings that are ok.
    pub ok: usize,
    /// Warnings.
    pub warn: usize,
    /// Failures.
    pub fail: usize,
}

/// The check could not run.
#[derive(Debug, thiserror::Error)]
#[error("cannot read kernel settings under {0}: no sys/ and net/ there (is it a /proc tree?)")]
pub struct CheckError(pub String);

/// A file `check --emit` generates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Emit {
    /// /etc/sysctl.d/60-beacon-collector.conf
    Sysctl,
    /// /etc/security/limits.d/60-beacon-collector.conf
    Limits,
    /// /etc/systemd/system/beacon-collector.service
    Systemd,
}

/// The generated file.
pub fn emit(config: &Config, which: Emit) -> String {
    match which {
        Emit::Sysctl => emit_sysctl(config),
        Emit::Limits => emit_limits(config),
        Emit::Systemd => emit_systemd(config),
    }
}

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
pub fn self_check(config: &Config) -> Result<(), StrictFailure> {
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
pub const FD_OVERHEAD: u64 = 256;
/// Linux keeps a socket in TIME_WAIT for 60 s (TCP_TIMEWAIT_LEN; not `tcp_fin_timeout`).
pub const TIME_WAIT_SECONDS: u64 = 60;

/// Values the config implies.
#[derive(Debug, Clone, Copy)]
pub struct Needs {
    /// `server.backlog`.
    pub backlog: u64,
    /// File descriptors needed at `server.max_connections`.
    pub fds: u64,
    /// Recommended `RLIMIT_NOFILE` (twice the need, rounded up to a power of two).
    pub nofile: u64,
    /// Recommended `nf_conntrack_max`.
    pub conntrack_max: u64,
    /// Recommended `nf_conntrack_tcp_timeout_established`.
    pub conntrack_established: u64,
    /// Seconds the collector keeps an idle connection (keep-alive, or keepalive probing).
    pub idle_seconds: u64,
    /// Recommended `TimeoutStopSec`.
    pub stop_seconds: u64,
}

impl Needs {
    /// From the config.
    pub fn from_config(c: &Config) -> Self {
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
            idle_seconds,
            stop_seconds: c.shutdown.deregistration_delay_seconds
                + c.shutdown.drain_timeout_seconds
                + c.shutdown.flush_timeout_seconds
                + 10,
        }
    }
}

struct Checker<'a> {
    proc: &'a ProcRoot,
    out: Vec<Finding>,
}

impl Checker<'_> {
    fn push(
        &mut self,
        key: &str,
        current: impl ToString,
        recommended: impl ToString,
        severity: Severity,
        why: &str,
        fix: String,
    ) {
        self.out.push(Finding {
            key: key.to_string(),
            current: current.to_string(),
            recommended: recommended.to_string(),
            severity,
            why: why.to_string(),
            fix: if severity == Severity::Ok {
                String::new()
            } else {
                fix
            },
        });
    }

    fn num(&self, key: &str) -> Option<u64> {
        self.proc.sysctl_u64(key)
    }
}

fn sysctl_fix(key: &str, value: impl std::fmt::Display) -> String {
    format!("sysctl -w {key}={value}; persist '{key} = {value}' in /etc/sysctl.d/60-beacon-collector.conf (beacon-collector check --emit sysctl)")
}

fn absent(v: Option<u64>) -> String {
    v.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

/// Runs every check against `proc` for `config`.
pub fn run(config: &Config, proc: &ProcRoot) -> Result<Report, CheckError> {
    if !proc.usable() {
        return Err(CheckError(proc.root().display().to_string()));
    }
    let n = Needs::from_config(config);
    let mut c = Checker {
        proc,
        out: Vec::new(),
    };
    use Severity::*;

    // --- listen queue ---------------------------------------------------------------------
    let somaxconn = c.num("net.core.somaxconn");
    let sev = match somaxconn {
        Some(v) if v < n.backlog => Fail,
        None => Warn,
        _ => Ok,
    };
    c.push(
        "net.core.somaxconn",
        absent(somaxconn),
        format!(">= {} (server.backlog)", n.backlog),
        sev,
        "The kernel silently cuts every listen backlog to somaxconn; a burst of new connections beyond it is dropped (ListenOverflows) and clients see timeouts.",
        sysctl_fix("net.core.somaxconn", n.backlog),
    );
    let syn_backlog = c.num("net.ipv4.tcp_max_syn_backlog");
    c.push(
        "net.ipv4.tcp_max_syn_backlog",
        absent(syn_backlog),
        format!(">= {}", n.backlog),
        if syn_backlog.is_some_and(|v| v < n.backlog) { Warn } else { Ok },
        "Half-open connections beyond it are dropped or answered with SYN cookies during a reconnect storm (e.g. after a load balancer failover).",
        sysctl_fix("net.ipv4.tcp_max_syn_backlog", n.backlog),
    );
    let cookies = c.num("net.ipv4.tcp_syncookies");
    c.push(
        "net.ipv4.tcp_syncookies",
        absent(cookies),
        "1",
        if cookies == Some(1) { Ok } else { Warn },
        "With cookies off a SYN flood or a reconnect storm fills the SYN queue and refuses real clients; 2 (always) disables TCP options on every connection.",
        sysctl_fix("net.ipv4.tcp_syncookies", 1),
    );

    // --- file descriptors -----------------------------------------------------------------
    match proc.nofile() {
        Some((soft, hard)) => {
            let sev = if !soft.at_least(n.fds) {
                Fail
            } else if !hard.at_least(n.nofile) {
                Warn
            } else {
                Ok
            };
            c.push(
                "RLIMIT_NOFILE",
                format!("soft {soft}, hard {hard}"),
                format!(">= {} (server.max_connections {} + {FD_OVERHEAD}); set {}", n.fds, config.server.max_connections, n.nofile),
                sev,
                "Each connection is a file descriptor: at the limit accept() fails with EMFILE and new clients wait in the backlog until it overflows.",
                format!("LimitNOFILE={} in the systemd unit, or 'beacon soft nofile {0}' and 'beacon hard nofile {0}' in /etc/security/limits.d/60-beacon-collector.conf", n.nofile),
            );
        }
        None => c.push(
            "RLIMIT_NOFILE",
            "unknown",
            n.nofile,
            Warn,
            "Each connection is a file descriptor: at the limit accept() fails with EMFILE.",
            "check 'ulimit -n' for the collector's user".into(),
        ),
    }
    let file_max = c.num("fs.file-max");
    c.push(
        "fs.file-max",
        absent(file_max),
        format!(">= {}", n.nofile),
        if file_max.is_some_and(|v| v < n.nofile) { Fail } else { Ok },
        "The system-wide file limit: when it is reached every process gets ENFILE, not just the collector.",
        sysctl_fix("fs.file-max", n.nofile * 4),
    );
    let nr_open = c.num("fs.nr_open");
    c.push(
        "fs.nr_open",
        absent(nr_open),
        format!(">= {}", n.nofile),
        if nr_open.is_some_and(|v| v < n.nofile) {
            Fail
        } else {
            Ok
        },
        "RLIMIT_NOFILE cannot be raised above nr_open, whatever limits.conf or LimitNOFILE say.",
        sysctl_fix("fs.nr_open", n.nofile.max(1_048_576)),
    );

    // --- ephemeral ports and TIME_WAIT -----------------------------------------------------
    let range = proc.sysctl_pair("net.ipv4.ip_local_port_range");
    let sock = proc.sockstat();
    if let Some((lo, hi)) = range {
        let width = hi.saturating_sub(lo) + 1;
        let rate = width / TIME_WAIT_SECONDS;
        let tw = sock.map_or(0, |s| s.tw);
        let sev = if tw * 100 >= width * 80 {
            Fail
        } else if tw * 100 >= width * 50 {
            Warn
        } else {
            Ok
        };
        c.push(
            "net.ipv4.ip_local_port_range",
            format!("{lo}-{hi} ({width} ports; {tw} in TIME_WAIT, about {} closes/s)", tw / TIME_WAIT_SECONDS),
            format!("TIME_WAIT well under {width}; sustains {rate} new outbound connections/s per destination"),
            sev,
            "The collector itself makes no outbound TCP connections (unix socket to its stage), but a proxy on this host that opens a connection per request (nginx proxying with HTTP/1.0) runs out of ports at width/60 s connections per second and fails with EADDRNOTAVAIL.",
            "use keep-alive between proxy and collector; widen with 'net.ipv4.ip_local_port_range = 10240 65535' in /etc/sysctl.d/60-beacon-collector.conf; set net.ipv4.tcp_tw_reuse = 1 for outbound connections".into(),
        );
    }
    let tw_reuse = c.num("net.ipv4.tcp_tw_reuse");
    c.push(
        "net.ipv4.tcp_tw_reuse",
        absent(tw_reuse),
        "1 or 2 (safe: outbound connections only)",
        if tw_reuse == Some(0) { Warn } else { Ok },
        "Lets new outbound connections reuse TIME_WAIT ports (with timestamps), so a co-located proxy does not exhaust ephemeral ports.",
        sysctl_fix("net.ipv4.tcp_tw_reuse", 1),
    );
    let recycle = c.num("net.ipv4.tcp_tw_recycle");
    c.push(
        "net.ipv4.tcp_tw_recycle",
        absent(recycle),
        "absent or 0",
        if recycle.is_some_and(|v| v != 0) { Fail } else { Ok },
        "Drops SYNs from clients behind NAT whose timestamps are not monotonic across the NAT: whole offices or mobile carriers cannot connect, intermittently (removed from Linux in 4.12 for this reason).",
        "sysctl -w net.ipv4.tcp_tw_recycle=0 and remove it from /etc/sysctl.conf and /etc/sysctl.d/*".into(),
    );
    let fin = c.num("net.ipv4.tcp_fin_timeout");
    c.push(
        "net.ipv4.tcp_fin_timeout",
        absent(fin),
        "<= 60 (30 is plenty)",
        if fin.is_some_and(|v| v > 60) { Warn } else { Ok },
        "How long FIN_WAIT_2 sockets of vanished clients are kept (not TIME_WAIT, which is fixed at 60 s); high values pile up orphan sockets.",
        sysctl_fix("net.ipv4.tcp_fin_timeout", 30),
    );
    let buckets = c.num("net.ipv4.tcp_max_tw_buckets");
    if let Some(b) = buckets {
        let tw = sock.map_or(0, |s| s.tw);
        c.push(
            "net.ipv4.tcp_max_tw_buckets",
            format!("{b} ({tw} in use)"),
            "TIME_WAIT sockets well below it",
            if tw * 100 >= b * 80 { Warn } else { Ok },
            "Above it the kernel destroys TIME_WAIT sockets early ('time wait bucket table overflow') and stray segments of old connections can hit new ones.",
            "find what closes so many connections (enable keep-alive); raise with sysctl -w net.ipv4.tcp_max_tw_buckets=<2x current>".into(),
        );
    }

    // --- conntrack ------------------------------------------------------------------------
    match (
        c.num("net.netfilter.nf_conntrack_max"),
        c.num("net.netfilter.nf_conntrack_count"),
    ) {
        (Some(max), count) => {
            let count = count.unwrap_or(0);
            let fill = if max == 0 {
                100.0
            } else {
                count as f64 * 100.0 / max as f64
            };
            c.push(
                "net.netfilter.nf_conntrack_count",
                format!("{count} of {max} ({fill:.0}% full)"),
                format!("< 70% full; nf_conntrack_max >= {}", n.conntrack_max),
                if fill >= 90.0 {
                    Fail
                } else if fill >= 70.0 || max < n.conntrack_max {
                    Warn
                } else {
                    Ok
                },
                "When the connection tracking table is full the kernel drops every new packet ('nf_conntrack: table full, dropping packet' in syslog, nothing else): the host stops answering.",
                format!("{}; or do not track the beacon port: iptables -t raw -A PREROUTING -p tcp --dport {} -j NOTRACK (and the OUTPUT equivalent)", sysctl_fix("net.netfilter.nf_conntrack_max", n.conntrack_max), config.server.listen.port()),
            );
            let est = c.num("net.netfilter.nf_conntrack_tcp_timeout_established");
            c.push(
                "net.netfilter.nf_conntrack_tcp_timeout_established",
                absent(est),
                format!("<= {} (2x the longest idle time the collector allows)", n.conntrack_established),
                if est.is_some_and(|v| v > 86_400) { Warn } else { Ok },
                "The default 432000 s (5 days) keeps entries of connections that died without a FIN until the table fills.",
                sysctl_fix("net.netfilter.nf_conntrack_tcp_timeout_established", n.conntrack_established),
            );
        }
        (None, _) => c.push(
            "net.netfilter.nf_conntrack_max",
            "absent (conntrack not loaded)",
            "absent, or sized for the connection rate",
            Ok,
            "Without the conntrack module there is no tracking table to fill.",
            String::new(),
        ),
    }

    // --- keep-alive connections -----------------------------------------------------------
    let ssai = c.num("net.ipv4.tcp_slow_start_after_idle");
    c.push(
        "net.ipv4.tcp_slow_start_after_idle",
        absent(ssai),
        "0",
        if ssai == Some(1) { Warn } else { Ok },
        "Keep-alive connections that idle between beacons restart from the initial congestion window each time, adding round trips to every response.",
        sysctl_fix("net.ipv4.tcp_slow_start_after_idle", 0),
    );
    let ka = c.num("net.ipv4.tcp_keepalive_time");
    let s = &config.server;
    c.push(
        "net.ipv4.tcp_keepalive_time",
        absent(ka),
        format!("any: the collector sets {} s / {} s x {} per socket", s.tcp_keepalive_idle_seconds, s.tcp_keepalive_interval_seconds, s.tcp_keepalive_probes),
        Ok,
        "The 2-hour default keeps dead peers' sockets for 2 h 11 min; the collector overrides it on every connection it accepts.",
        String::new(),
    );
    let retries2 = c.num("net.ipv4.tcp_retries2");
    let sev = if s.tcp_user_timeout_seconds == 0 && retries2.is_some_and(|v| v >= 8) {
        Warn
    } else {
        Ok
    };
    c.push(
        "net.ipv4.tcp_retries2",
        absent(retries2),
        if s.tcp_user_timeout_seconds > 0 {
            format!("any: TCP_USER_TIMEOUT {} s is set per socket", s.tcp_user_timeout_seconds)
        } else {
            "set server.tcp_user_timeout_seconds".to_string()
        },
        sev,
        "With data in flight keepalive never fires; retransmissions keep a dead peer's socket for up to ~15 minutes (tcp_retries2 = 15) unless TCP_USER_TIMEOUT bounds it.",
        "set server.tcp_user_timeout_seconds = 30".into(),
    );
    let ndb = c.num("net.core.netdev_max_backlog");
    c.push(
        "net.core.netdev_max_backlog",
        absent(ndb),
        ">= 2048 (16384 for a busy host)",
        if ndb.is_some_and(|v| v < 2048) {
            Warn
        } else {
            Ok
        },
        "Packets beyond it wait in no queue: they are dropped before TCP sees them during bursts.",
        sysctl_fix("net.core.netdev_max_backlog", 16384),
    );
    for key in ["net.core.rmem_max", "net.core.wmem_max"] {
        let v = c.num(key);
        c.push(
            key,
            absent(v),
            ">= 212992 (the usual default)",
            if v.is_some_and(|v| v < 131_072) { Warn } else { Ok },
            "Caps socket buffers; beacons are small, but too small a cap collapses receive queues (TCPRcvCollapsed) under bursts.",
            sysctl_fix(key, 4_194_304),
        );
    }

    // --- the config's own ordering --------------------------------------------------------
    let h = &config.http;
    c.push(
        "http.idle_timeout_seconds",
        format!("{} s (load balancer: {} s)", h.idle_timeout_seconds, h.lb_idle_timeout_seconds),
        "above http.lb_idle_timeout_seconds",
        if h.idle_timeout_seconds > h.lb_idle_timeout_seconds { Ok } else { Fail },
        "If the collector closes idle connections first, the load balancer reuses one being closed and the client gets a 502.",
        format!("set http.idle_timeout_seconds = {}", h.lb_idle_timeout_seconds + 15),
    );

    // --- counters since boot: past trouble --------------------------------------------------
    let netstat = proc.netstat();
    let snmp = proc.snmp();
    let counters: [(&str, &str, &str); 6] = [
        ("TcpExt.ListenOverflows", "accept queues overflowed: connections were dropped because a listener's backlog was full", "raise net.core.somaxconn and server.backlog; check that the server keeps up (CPU, server.max_connections)"),
        ("TcpExt.ListenDrops", "SYNs to listening sockets were dropped (overflows, memory, or errors)", "as for ListenOverflows; also check tcp_max_syn_backlog"),
        ("TcpExt.SyncookiesSent", "the SYN queue overflowed and SYN cookies were sent", "raise net.ipv4.tcp_max_syn_backlog and net.core.somaxconn"),
        ("TcpExt.SyncookiesFailed", "invalid SYN cookies were received: often the footprint of tcp_tw_recycle/NAT problems or floods", "make sure tcp_tw_recycle is off; look for SYN floods"),
        ("TcpExt.TCPRcvCollapsed", "receive queues were collapsed to save memory (low socket buffers or memory pressure)", "check net.core.rmem_max and net.ipv4.tcp_mem"),
        ("TcpExt.TCPBacklogDrop", "packets were dropped because a socket's backlog was full while the process held it", "the server is not keeping up: check CPU and worker threads"),
    ];
    for (key, what, fix) in counters {
        if let Some(v) = netstat.get(key).copied() {
            c.push(
                key,
                v,
                "0 since boot",
                if v > 0 { Warn } else { Ok },
                &format!("A count above 0 means {what}."),
                fix.to_string(),
            );
        }
    }
    if let (Some(t), Some(out)) = (netstat.get("TcpExt.TCPTimeouts"), snmp.get("Tcp.OutSegs")) {
        let per_mille = if *out == 0 { 0 } else { t * 1000 / out };
        c.push(
            "TcpExt.TCPTimeouts",
            format!("{t} ({per_mille} per 1000 segments sent)"),
            "under 1 per 1000 segments",
            if per_mille >= 1 { Warn } else { Ok },
            "Retransmission timeouts are normal in small numbers; a high rate means loss between the collector and its clients or load balancer.",
            "look for packet loss (netdev_max_backlog drops, NIC errors, an overloaded load balancer)".into(),
        );
    }

    let mut summary = Summary::default();
    for f in &c.out {
        match f.severity {
            Ok => summary.ok += 1,
            Warn => summary.warn += 1,
            Fail => summary.fail += 1,
        }
    }
    let exit_code = i32::from(summary.warn + summary.fail > 0);
    Result::Ok(Report {
        proc_root: proc.root().display().to_string(),
        findings: c.out,
        summary,
        exit_code,
    })
}

impl Report {
    /// The human table: one row per finding, then why/fix under each warn and fail.
    pub fn render_table(&self, color: bool) -> String {
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
            "{:<4}  {:<kw$}  {:<cw$}  RECOMMENDED",
            "", "KEY", "CURRENT"
        );
        for f in &self.findings {
            let sev = format!("{:<4}", f.severity.as_str());
            let _ = writeln!(
                out,
                "{}  {:<kw$}  {:<cw$}  {}",
                paint(f.severity, &sev),
                f.key,
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
        out
    }
}

/// `/etc/sysctl.d/60-beacon-collector.conf` tuned to the config.
pub fn emit_sysctl(config: &Config) -> String {
    let n = Needs::from_config(config);
    format!(
        "# /etc/sysctl.d/60-beacon-collector.conf: kernel settings for beacon-collector\n\
         # Generated by `beacon-collector check --emit sysctl` for server.backlog = {backlog},\n\
         # server.max_connections = {maxc}. Apply: sysctl --system. Undo: delete this file, reboot\n\
         # (or set each key back to the value `beacon-collector check` printed before).\n\
         \n\
         # listen(2) backlogs are silently cut to this: make room for server.backlog.\n\
         net.core.somaxconn = {backlog}\n\
         # Half-open connections during a reconnect storm (load balancer failover).\n\
         net.ipv4.tcp_max_syn_backlog = {backlog}\n\
         # SYN cookies only when the SYN queue overflows (1), never always (2).\n\
         net.ipv4.tcp_syncookies = 1\n\
         # System-wide and per-process file ceilings above LimitNOFILE={nofile}.\n\
         fs.file-max = {file_max}\n\
         fs.nr_open = {nr_open}\n\
         # Keep-alive connections idle between beacons: do not shrink their window each time.\n\
         net.ipv4.tcp_slow_start_after_idle = 0\n\
         # Packets queued between the NIC and TCP during bursts.\n\
         net.core.netdev_max_backlog = 16384\n\
         # FIN_WAIT_2 of vanished clients (TIME_WAIT itself is fixed at 60 s).\n\
         net.ipv4.tcp_fin_timeout = 30\n\
         # Outbound connections only (a co-located proxy): reuse TIME_WAIT ports safely, and a\n\
         # wider ephemeral range. Never set tcp_tw_recycle: it drops clients behind NAT.\n\
         net.ipv4.tcp_tw_reuse = 1\n\
         net.ipv4.ip_local_port_range = 10240 65535\n\
         # Connection tracking, if the nf_conntrack module is loaded ('-': ignored otherwise).\n\
         # A full table drops every new packet; the default 5-day timeout keeps dead entries.\n\
         -net.netfilter.nf_conntrack_max = {ct_max}\n\
         -net.netfilter.nf_conntrack_tcp_timeout_established = {ct_est}\n",
        backlog = n.backlog,
        maxc = config.server.max_connections,
        nofile = n.nofile,
        file_max = n.nofile * 4,
        nr_open = n.nofile.max(1_048_576),
        ct_max = n.conntrack_max,
        ct_est = n.conntrack_established,
    )
}

/// `/etc/security/limits.d/60-beacon-collector.conf` for the `beacon` user.
pub fn emit_limits(config: &Config) -> String {
    let n = Needs::from_config(config);
    format!(
        "# /etc/security/limits.d/60-beacon-collector.conf: file descriptors for beacon-collector\n\
         # Generated by `beacon-collector check --emit limits`: server.max_connections = {maxc}\n\
         # plus {FD_OVERHEAD} for listeners, spool and data files, doubled. Applies to sessions started\n\
         # through PAM (login, su); a systemd service uses LimitNOFILE= in its unit instead.\n\
         # Undo: delete this file and log in again.\n\
         beacon  soft  nofile  {nofile}\n\
         beacon  hard  nofile  {nofile}\n",
        maxc = config.server.max_connections,
        nofile = n.nofile,
    )
}

/// A hardened systemd unit for the config.
pub fn emit_systemd(config: &Config) -> String {
    let n = Needs::from_config(config);
    let mut rw = vec!["/var/lib/beacon-collector".to_string()];
    for p in [
        &config.spool.dir,
        &config.processor.data_dir,
        &config.forward.socket_path,
    ] {
        let dir = if p == &config.forward.socket_path {
            p.parent().map(|d| d.to_path_buf()).unwrap_or_default()
        } else {
            p.clone()
        };
        if dir.is_absolute() {
            let s = dir.display().to_string();
            if !rw.contains(&s) {
                rw.push(s);
            }
        }
    }
    format!(
        "# /etc/systemd/system/beacon-collector.service\n\
         # Generated by `beacon-collector check --emit systemd`. Relative paths in the config (spool,\n\
         # data, socket) resolve under WorkingDirectory. Install and undo: see deploy/README.md.\n\
         [Unit]\n\
         Description=beacon-collector beacon ingest server\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=exec\n\
         ExecStartPre=/usr/local/bin/beacon-collector config validate -c /etc/beacon-collector/collector.toml\n\
         ExecStart=/usr/local/bin/beacon-collector serve -c /etc/beacon-collector/collector.toml --log-format json\n\
         # SIGTERM to the collector only: it fails /healthz for the deregistration delay, drains,\n\
         # flushes its spool to the processing stage, then stops the stage itself. The default\n\
         # control-group mode would kill the stage at the same moment.\n\
         KillMode=mixed\n\
         KillSignal=SIGTERM\n\
         # deregistration ({dereg} s) + drain ({drain} s) + flush ({flush} s) + 10 s.\n\
         TimeoutStopSec={stop}\n\
         Restart=on-failure\n\
         RestartSec=1\n\
         User=beacon\n\
         Group=beacon\n\
         WorkingDirectory=/var/lib/beacon-collector\n\
         StateDirectory=beacon-collector\n\
         # One descriptor per connection (server.max_connections = {maxc}) plus spool and files.\n\
         LimitNOFILE={nofile}\n\
         \n\
         # Hardening: no privileges, read-only system, writable state only.\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         ReadWritePaths={rw}\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectKernelLogs=yes\n\
         ProtectControlGroups=yes\n\
         ProtectClock=yes\n\
         ProtectHostname=yes\n\
         RestrictAddressFamilies=AF_INET AF_INET6 AF_UNIX\n\
         RestrictNamespaces=yes\n\
         RestrictRealtime=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         MemoryDenyWriteExecute=yes\n\
         SystemCallArchitectures=native\n\
         SystemCallFilter=@system-service\n\
         CapabilityBoundingSet=\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        dereg = config.shutdown.deregistration_delay_seconds,
        drain = config.shutdown.drain_timeout_seconds,
        flush = config.shutdown.flush_timeout_seconds,
        stop = n.stop_seconds,
        maxc = config.server.max_connections,
        nofile = n.nofile,
        rw = rw.join(" "),
    )
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
        assert_eq!(n.stop_seconds, 75);
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

//! The checks, as rows: a [`Sysctl`] row is a key, how to judge its value, what to recommend,
//! why it matters, and the value the fix and the generated sysctl file set (one constant for
//! both). Checks that weigh several readings together (file limits, ports against TIME_WAIT,
//! conntrack fill, the config's own timeouts, counters since boot) are functions in the same
//! table, so [`RULES`] is the order of the report.

use super::{Finding, Needs, Severity, FD_OVERHEAD, TIME_WAIT_SECONDS};
use crate::config::Config;
use crate::host::kernel::{ProcRoot, TROUBLE_COUNTERS};
use Severity::{Fail, Ok, Warn};

/// What the rules read.
pub(crate) struct Context<'a> {
    /// The config being checked.
    pub(crate) config: &'a Config,
    /// The `/proc` tree.
    pub(crate) proc: &'a ProcRoot,
    /// What the config implies.
    pub(crate) needs: Needs,
}

/// One kernel setting.
#[derive(Clone, Copy)]
pub(crate) struct Sysctl {
    /// The sysctl key.
    pub(crate) key: &'static str,
    /// The severity of a reading (`None`: the key is absent).
    pub(crate) judge: fn(Option<u64>, &Needs) -> Severity,
    /// What to aim for, as the report shows it.
    pub(crate) recommend: fn(&Needs) -> String,
    /// The failure it prevents.
    pub(crate) why: &'static str,
    /// The value the fix and the generated sysctl file set; `None` for a key that is never
    /// written (the fix says what to do instead).
    pub(crate) set: Option<fn(&Needs) -> String>,
    /// The fix when `set` is `None`.
    pub(crate) fix: &'static str,
    /// The comment above the key in the generated sysctl file.
    pub(crate) note: &'static str,
    /// `-key = value` in the generated file: ignored when the module is not loaded.
    pub(crate) optional: bool,
}

/// A check: a row, or a function for the checks that weigh several readings.
pub(crate) enum Rule {
    /// A kernel setting.
    Sysctl(Sysctl),
    /// Anything else.
    Custom(fn(&Context<'_>, &mut Vec<Finding>)),
}

impl Rule {
    /// Runs this check, adding its findings.
    pub(crate) fn check(&self, cx: &Context<'_>, out: &mut Vec<Finding>) {
        match self {
            Rule::Sysctl(s) => {
                let v = cx.proc.sysctl_u64(s.key);
                let fix = match s.set {
                    Some(set) => sysctl_fix(s.key, set(&cx.needs)),
                    None => s.fix.to_string(),
                };
                push(
                    out,
                    s.key,
                    absent(v),
                    (s.recommend)(&cx.needs),
                    (s.judge)(v, &cx.needs),
                    s.why,
                    fix,
                );
            }
            Rule::Custom(f) => f(cx, out),
        }
    }
}

/// The ephemeral port range the generated file and the fix text set (outbound connections of
/// a co-located proxy).
pub(crate) const PORT_RANGE: (u64, u64) = (10240, 65535);

/// Every check, in report order.
pub(crate) const RULES: &[Rule] = &[
    // --- listen queue ---------------------------------------------------------------------
    Rule::Sysctl(Sysctl {
        key: "net.core.somaxconn",
        judge: |v, n| match v {
            Some(v) if v < n.backlog => Fail,
            None => Warn,
            _ => Ok,
        },
        recommend: |n| format!(">= {} (server.backlog)", n.backlog),
        why: "The kernel silently cuts every listen backlog to somaxconn; a burst of new connections beyond it is dropped (ListenOverflows) and clients see timeouts.",
        set: Some(|n| n.backlog.to_string()),
        fix: "",
        note: "listen(2) backlogs are silently cut to this: make room for server.backlog.",
        optional: false,
    }),
    Rule::Sysctl(Sysctl {
        key: "net.ipv4.tcp_max_syn_backlog",
        judge: |v, n| if v.is_some_and(|v| v < n.backlog) { Warn } else { Ok },
        recommend: |n| format!(">= {}", n.backlog),
        why: "Half-open connections beyond it are dropped or answered with SYN cookies during a reconnect storm (e.g. after a load balancer failover).",
        set: Some(|n| n.backlog.to_string()),
        fix: "",
        note: "Half-open connections during a reconnect storm (load balancer failover).",
        optional: false,
    }),
    Rule::Sysctl(Sysctl {
        key: "net.ipv4.tcp_syncookies",
        judge: |v, _| if v == Some(1) { Ok } else { Warn },
        recommend: |_| "1".into(),
        why: "With cookies off a SYN flood or a reconnect storm fills the SYN queue and refuses real clients; 2 (always) disables TCP options on every connection.",
        set: Some(|_| "1".into()),
        fix: "",
        note: "SYN cookies only when the SYN queue overflows (1), never always (2).",
        optional: false,
    }),
    // --- file descriptors -----------------------------------------------------------------
    Rule::Custom(nofile),
    Rule::Sysctl(Sysctl {
        key: "fs.file-max",
        judge: |v, n| if v.is_some_and(|v| v < n.nofile) { Fail } else { Ok },
        recommend: |n| format!(">= {}", n.nofile),
        why: "The system-wide file limit: when it is reached every process gets ENFILE, not just the collector.",
        set: Some(|n| (n.nofile * 4).to_string()),
        fix: "",
        note: "System-wide file ceiling, above LimitNOFILE.",
        optional: false,
    }),
    Rule::Sysctl(Sysctl {
        key: "fs.nr_open",
        judge: |v, n| if v.is_some_and(|v| v < n.nofile) { Fail } else { Ok },
        recommend: |n| format!(">= {}", n.nofile),
        why: "RLIMIT_NOFILE cannot be raised above nr_open, whatever limits.conf or LimitNOFILE say.",
        set: Some(|n| n.nofile.max(1_048_576).to_string()),
        fix: "",
        note: "Per-process file ceiling: LimitNOFILE cannot go above it.",
        optional: false,
    }),
    // --- ephemeral ports and TIME_WAIT -----------------------------------------------------
    Rule::Custom(port_range),
    Rule::Sysctl(Sysctl {
        key: "net.ipv4.tcp_tw_reuse",
        judge: |v, _| if v == Some(0) { Warn } else { Ok },
        recommend: |_| "1 or 2 (safe: outbound connections only)".into(),
        why: "Lets new outbound connections reuse TIME_WAIT ports (with timestamps), so a co-located proxy does not exhaust ephemeral ports.",
        set: Some(|_| "1".into()),
        fix: "",
        note: "Outbound connections only (a co-located proxy): reuse TIME_WAIT ports safely. Never set tcp_tw_recycle: it drops clients behind NAT.",
        optional: false,
    }),
    Rule::Sysctl(Sysctl {
        key: "net.ipv4.tcp_tw_recycle",
        judge: |v, _| if v.is_some_and(|v| v != 0) { Fail } else { Ok },
        recommend: |_| "absent or 0".into(),
        why: "Drops SYNs from clients behind NAT whose timestamps are not monotonic across the NAT: whole offices or mobile carriers cannot connect, intermittently (removed from Linux in 4.12 for this reason).",
        set: None,
        fix: "sysctl -w net.ipv4.tcp_tw_recycle=0 and remove it from /etc/sysctl.conf and /etc/sysctl.d/*",
        note: "",
        optional: false,
    }),
    Rule::Sysctl(Sysctl {
        key: "net.ipv4.tcp_fin_timeout",
        judge: |v, _| if v.is_some_and(|v| v > 60) { Warn } else { Ok },
        recommend: |_| "<= 60 (30 is plenty)".into(),
        why: "How long FIN_WAIT_2 sockets of vanished clients are kept (not TIME_WAIT, which is fixed at 60 s); high values pile up orphan sockets.",
        set: Some(|_| "30".into()),
        fix: "",
        note: "FIN_WAIT_2 of vanished clients (TIME_WAIT itself is fixed at 60 s).",
        optional: false,
    }),
    Rule::Custom(tw_buckets),
    // --- conntrack ------------------------------------------------------------------------
    Rule::Custom(conntrack),
    // --- keep-alive connections -----------------------------------------------------------
    Rule::Sysctl(Sysctl {
        key: "net.ipv4.tcp_slow_start_after_idle",
        judge: |v, _| if v == Some(1) { Warn } else { Ok },
        recommend: |_| "0".into(),
        why: "Keep-alive connections that idle between beacons restart from the initial congestion window each time, adding round trips to every response.",
        set: Some(|_| "0".into()),
        fix: "",
        note: "Keep-alive connections idle between beacons: do not shrink their window each time.",
        optional: false,
    }),
    Rule::Custom(keepalive),
    Rule::Sysctl(Sysctl {
        key: "net.core.netdev_max_backlog",
        judge: |v, _| if v.is_some_and(|v| v < 2048) { Warn } else { Ok },
        recommend: |_| ">= 2048 (16384 for a busy host)".into(),
        why: "Packets beyond it wait in no queue: they are dropped before TCP sees them during bursts.",
        set: Some(|_| "16384".into()),
        fix: "",
        note: "Packets queued between the NIC and TCP during bursts.",
        optional: false,
    }),
    Rule::Sysctl(SOCKET_BUFFER_CAP("net.core.rmem_max")),
    Rule::Sysctl(SOCKET_BUFFER_CAP("net.core.wmem_max")),
    // --- the config's own ordering --------------------------------------------------------
    Rule::Custom(idle_timeout),
    Rule::Custom(deregistration),
    Rule::Custom(tls_certificates),
    // --- counters since boot: past trouble --------------------------------------------------
    Rule::Custom(counters),
];

/// Connection tracking settings: judged together in [`conntrack`] (fill against max), written
/// with `-` in the sysctl file (ignored when the module is not loaded).
pub(crate) const CONNTRACK: [Sysctl; 2] = [
    Sysctl {
        key: "net.netfilter.nf_conntrack_max",
        judge: |_, _| Ok,
        recommend: |n| format!(">= {}", n.conntrack_max),
        why: "",
        set: Some(|n| n.conntrack_max.to_string()),
        fix: "",
        note: "Connection tracking, if nf_conntrack is loaded: a full table drops every new packet.",
        optional: true,
    },
    Sysctl {
        key: "net.netfilter.nf_conntrack_tcp_timeout_established",
        judge: |v, _| if v.is_some_and(|v| v > 86_400) { Warn } else { Ok },
        recommend: |n| format!("<= {} (2x the longest idle time the collector allows)", n.conntrack_established),
        why: "The default 432000 s (5 days) keeps entries of connections that died without a FIN until the table fills.",
        set: Some(|n| n.conntrack_established.to_string()),
        fix: "",
        note: "The default 5-day timeout keeps entries of dead connections until the table fills.",
        optional: true,
    },
];

#[allow(non_snake_case)]
const fn SOCKET_BUFFER_CAP(key: &'static str) -> Sysctl {
    Sysctl {
        key,
        judge: |v, _| if v.is_some_and(|v| v < 131_072) { Warn } else { Ok },
        recommend: |_| ">= 212992 (the usual default)".into(),
        why: "Caps socket buffers; beacons are small, but too small a cap collapses receive queues (TCPRcvCollapsed) under bursts.",
        set: Some(|_| "4194304".into()),
        fix: "",
        note: "Socket buffer caps: too small collapses receive queues under bursts.",
        optional: false,
    }
}

fn push(
    out: &mut Vec<Finding>,
    key: &str,
    current: impl ToString,
    recommended: impl ToString,
    severity: Severity,
    why: &str,
    fix: String,
) {
    out.push(Finding {
        key: key.to_string(),
        current: current.to_string(),
        recommended: recommended.to_string(),
        severity,
        why: why.to_string(),
        fix: if severity == Ok { String::new() } else { fix },
        scope: super::Scope::of(key),
    });
}

fn sysctl_fix(key: &str, value: impl std::fmt::Display) -> String {
    format!("sysctl -w {key}={value}; persist '{key} = {value}' in /etc/sysctl.d/60-beacon-collector.conf (beacon-collector check --emit sysctl)")
}

fn absent(v: Option<u64>) -> String {
    v.map_or_else(|| "absent".to_string(), |v| v.to_string())
}

/// `RLIMIT_NOFILE` against the connections the config allows.
fn nofile(cx: &Context<'_>, out: &mut Vec<Finding>) {
    let (config, n) = (cx.config, &cx.needs);
    match cx.proc.nofile() {
        Some((soft, hard)) => {
            let sev = if !soft.at_least(n.fds) {
                Fail
            } else if !hard.at_least(n.nofile) {
                Warn
            } else {
                Ok
            };
            push(
        out,
                "RLIMIT_NOFILE",
                format!("soft {soft}, hard {hard}"),
                format!(">= {} (server.max_connections {} + {FD_OVERHEAD}); set {}", n.fds, config.server.max_connections, n.nofile),
                sev,
                "Each connection is a file descriptor: at the limit accept() fails with EMFILE and new clients wait in the backlog until it overflows.",
                format!("LimitNOFILE={} in the systemd unit, or 'beacon soft nofile {0}' and 'beacon hard nofile {0}' in /etc/security/limits.d/60-beacon-collector.conf", n.nofile),
            );
        }
        None => push(
            out,
            "RLIMIT_NOFILE",
            "unknown",
            n.nofile,
            Warn,
            "Each connection is a file descriptor: at the limit accept() fails with EMFILE.",
            "check 'ulimit -n' for the collector's user".into(),
        ),
    }
}

/// The ephemeral port range against the sockets in TIME_WAIT.
fn port_range(cx: &Context<'_>, out: &mut Vec<Finding>) {
    let range = cx.proc.sysctl_pair("net.ipv4.ip_local_port_range");
    let sock = cx.proc.sockstat();
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
        push(
        out,
            "net.ipv4.ip_local_port_range",
            format!("{lo}-{hi} ({width} ports; {tw} in TIME_WAIT, about {} closes/s)", tw / TIME_WAIT_SECONDS),
            format!("TIME_WAIT well under {width}; sustains {rate} new outbound connections/s per destination"),
            sev,
            "The collector itself makes no outbound TCP connections (unix socket to its stage), but a proxy on this host that opens a connection per request (nginx proxying with HTTP/1.0) runs out of ports at width/60 s connections per second and fails with EADDRNOTAVAIL.",
            format!("use keep-alive between proxy and collector; widen with 'net.ipv4.ip_local_port_range = {} {}' in /etc/sysctl.d/60-beacon-collector.conf; set net.ipv4.tcp_tw_reuse = 1 for outbound connections", PORT_RANGE.0, PORT_RANGE.1),
        );
    }
}

/// The TIME_WAIT bucket limit against the sockets in TIME_WAIT.
fn tw_buckets(cx: &Context<'_>, out: &mut Vec<Finding>) {
    let buckets = cx.proc.sysctl_u64("net.ipv4.tcp_max_tw_buckets");
    if let Some(b) = buckets {
        let tw = cx.proc.sockstat().map_or(0, |s| s.tw);
        push(
        out,
            "net.ipv4.tcp_max_tw_buckets",
            format!("{b} ({tw} in use)"),
            "TIME_WAIT sockets well below it",
            if tw * 100 >= b * 80 { Warn } else { Ok },
            "Above it the kernel destroys TIME_WAIT sockets early ('time wait bucket table overflow') and stray segments of old connections can hit new ones.",
            "find what closes so many connections (enable keep-alive); raise with sysctl -w net.ipv4.tcp_max_tw_buckets=<2x current>".into(),
        );
    }
}

/// Connection tracking fill and timeout, when the module is loaded.
fn conntrack(cx: &Context<'_>, out: &mut Vec<Finding>) {
    let (config, n) = (cx.config, &cx.needs);
    match (
        cx.proc.sysctl_u64("net.netfilter.nf_conntrack_max"),
        cx.proc.sysctl_u64("net.netfilter.nf_conntrack_count"),
    ) {
        (Some(max), count) => {
            let count = count.unwrap_or(0);
            let fill = if max == 0 {
                100.0
            } else {
                count as f64 * 100.0 / max as f64
            };
            push(
        out,
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
                format!("{}; or do not track the beacon port: iptables -t raw -A PREROUTING -p tcp --dport {} -j NOTRACK (and the OUTPUT equivalent)", sysctl_fix(CONNTRACK[0].key, n.conntrack_max), config.server.listen.port()),
            );
            // The timeout is a plain row, checked only when conntrack is loaded.
            Rule::Sysctl(CONNTRACK[1]).check(cx, out);
        }
        (None, _) => push(
            out,
            "net.netfilter.nf_conntrack_max",
            "absent (conntrack not loaded)",
            "absent, or sized for the connection rate",
            Ok,
            "Without the conntrack module there is no tracking table to fill.",
            String::new(),
        ),
    }
}

/// Keepalive and retransmission limits, which the collector sets per socket.
fn keepalive(cx: &Context<'_>, out: &mut Vec<Finding>) {
    let config = cx.config;
    let ka = cx.proc.sysctl_u64("net.ipv4.tcp_keepalive_time");
    let s = &config.server;
    push(
        out,
        "net.ipv4.tcp_keepalive_time",
        absent(ka),
        format!("any: the collector sets {} s / {} s x {} per socket", s.tcp_keepalive_idle_seconds, s.tcp_keepalive_interval_seconds, s.tcp_keepalive_probes),
        Ok,
        "The 2-hour default keeps dead peers' sockets for 2 h 11 min; the collector overrides it on every connection it accepts.",
        String::new(),
    );
    let retries2 = cx.proc.sysctl_u64("net.ipv4.tcp_retries2");
    let sev = if s.tcp_user_timeout_seconds == 0 && retries2.is_some_and(|v| v >= 8) {
        Warn
    } else {
        Ok
    };
    push(
        out,
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
}

/// The collector's idle timeout against the load balancer's.
fn idle_timeout(cx: &Context<'_>, out: &mut Vec<Finding>) {
    let config = cx.config;
    let h = &config.http;
    push(
        out,
        "http.idle_timeout_seconds",
        format!("{} s (load balancer: {} s)", h.idle_timeout_seconds, h.lb_idle_timeout_seconds),
        "above http.lb_idle_timeout_seconds",
        if h.idle_timeout_seconds > h.lb_idle_timeout_seconds { Ok } else { Fail },
        "If the collector closes idle connections first, the load balancer reuses one being closed and the client gets a 502.",
        format!("set http.idle_timeout_seconds = {}", h.lb_idle_timeout_seconds + 15),
    );
}

/// The deregistration delay against the clients' ping interval.
fn deregistration(cx: &Context<'_>, out: &mut Vec<Finding>) {
    let s = &cx.config.shutdown;
    let want = s.delay_covering_clients();
    push(
        out,
        "shutdown.deregistration_delay_seconds",
        format!(
            "{} s (clients send every {} s)",
            s.deregistration_delay_seconds, s.client_interval_seconds
        ),
        format!(">= {want} s (1.25 x shutdown.client_interval_seconds), or 0"),
        if s.deregistration_delay_seconds == 0 || s.deregistration_delay_seconds >= want {
            Ok
        } else {
            Warn
        },
        "During the delay every answer says Connection: close; a keep-alive client that sends nothing in it is closed while idle at its end, and its next beacon meets a closed connection (a browser sends it again; other clients lose it).",
        format!("set shutdown.deregistration_delay_seconds = {want}"),
    );
}

/// Days left before a certificate expires below which `check` warns (renewal tooling renews
/// at 30 days left: 21 means it has failed for over a week).
const CERT_WARN_DAYS: i64 = 21;

/// The HTTPS certificates: each loads and its key matches, its chain is in order, it covers
/// the SNI names it is configured for, and how long until it expires.
fn tls_certificates(cx: &Context<'_>, out: &mut Vec<Finding>) {
    let t = &cx.config.tls;
    if !t.enabled {
        return;
    }
    let certs =
        match crate::tls::Certificates::load(t) {
            Result::Ok(c) => c,
            Err(e) => {
                push(out, &e.key, e.problem.clone(), "a readable PEM pair whose key matches", Fail,
                "The HTTPS listener cannot start (or, on SIGHUP, keeps the certificate it has).",
                e.fix);
                return;
            }
        };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for l in certs.all() {
        let key = &l.key_path;
        let name = l.label();
        push(
            out,
            &format!("{key} (key)"),
            format!("{name}: the key matches"),
            "the key of the certificate",
            Ok,
            "A key that does not match fails every handshake.",
            String::new(),
        );
        let Some(Some(leaf)) = l.chain.first() else {
            push(
                out,
                key,
                format!("{name}: not an X.509 certificate this check can read"),
                "a DER X.509 certificate",
                Warn,
                "Expiry and names cannot be checked.",
                "check the file with openssl x509 -noout -text -in FILE".to_string(),
            );
            continue;
        };
        let order = l.chain.windows(2).position(|w| match (&w[0], &w[1]) {
            (Some(a), Some(b)) => a.issuer != b.subject,
            _ => true,
        });
        push(out, &format!("{key} (chain)"),
            match order {
                None => format!("{name}: {} certificate(s), each issued by the next", l.chain.len()),
                Some(i) => format!("{name}: certificate {} is not issued by certificate {}", i + 1, i + 2),
            },
            "the certificate first, then each issuer in turn",
            if order.is_none() { Ok } else { Fail },
            "Browsers build the path from the order served; a wrong order or a missing intermediate fails on some clients only.",
            "write the file as: certificate, intermediate(s), in issuing order (the CA's fullchain.pem)".to_string());
        let uncovered: Vec<&String> = l
            .server_names
            .iter()
            .filter(|n| {
                !leaf
                    .dns_names
                    .iter()
                    .any(|p| crate::tls::x509::name_matches(p, n) || p.eq_ignore_ascii_case(n))
            })
            .collect();
        push(out, &format!("{key} (names)"),
            if uncovered.is_empty() {
                format!("{name}: covers {:?}", if l.server_names.is_empty() { &leaf.dns_names } else { &l.server_names })
            } else {
                format!("{name}: does not cover {uncovered:?} (it names {:?})", leaf.dns_names)
            },
            "every name in server_names among the certificate's DNS names",
            if uncovered.is_empty() { Ok } else { Fail },
            "A browser asking for a name the certificate does not list refuses the connection.",
            "issue the certificate for those names, or move them to a [[tls.certificates]] entry that has them".to_string());
        let days = (leaf.not_after - now).div_euclid(86_400);
        push(
            out,
            &format!("{key} (expiry)"),
            format!("{name}: {days} day(s) left"),
            format!(">= {CERT_WARN_DAYS} days"),
            if leaf.not_after <= now {
                Fail
            } else if days < CERT_WARN_DAYS {
                Warn
            } else {
                Ok
            },
            "An expired certificate fails every handshake: no beacon arrives over HTTPS.",
            "renew it, write the new files and send SIGHUP (open connections keep the old one)"
                .to_string(),
        );
    }
}

/// Trouble counters since boot, and the retransmission timeout rate.
fn counters(cx: &Context<'_>, out: &mut Vec<Finding>) {
    let netstat = cx.proc.netstat();
    let snmp = cx.proc.snmp();
    for t in TROUBLE_COUNTERS {
        let (key, what, fix) = (t.key, t.means, t.fix);
        if let Some(v) = netstat.get(key).copied() {
            push(
                out,
                key,
                v,
                "0 since boot",
                if v > 0 { Warn } else { Ok },
                &format!("A count above 0 means {what}."),
                fix.to_string(),
            );
        }
    }
    if let (Some(t), Some(sent)) = (netstat.get("TcpExt.TCPTimeouts"), snmp.get("Tcp.OutSegs")) {
        let per_mille = if *sent == 0 { 0 } else { t * 1000 / sent };
        push(
        out,
            "TcpExt.TCPTimeouts",
            format!("{t} ({per_mille} per 1000 segments sent)"),
            "under 1 per 1000 segments",
            if per_mille >= 1 { Warn } else { Ok },
            "Retransmission timeouts are normal in small numbers; a high rate means loss between the collector and its clients or load balancer.",
            "look for packet loss (netdev_max_backlog drops, NIC errors, an overloaded load balancer)".into(),
        );
    }
}

//! Reading kernel settings, kernel counters and the process's own limits from `/proc`, or from
//! a recorded copy of it (`--proc-root`, the test fixtures). Missing files are `None`: kernels
//! differ (e.g. `tcp_tw_recycle` is gone since 4.12, conntrack files exist only with the module).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// A `/proc` tree.
#[derive(Debug, Clone)]
pub struct ProcRoot {
    root: PathBuf,
}

/// `/proc/net/sockstat`'s TCP line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Sockstat {
    /// Sockets in use.
    pub(crate) inuse: u64,
    /// Orphaned sockets (closed by the process, still in the kernel).
    pub(crate) orphan: u64,
    /// Sockets in TIME_WAIT.
    pub(crate) tw: u64,
}

/// A resource limit value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Limit {
    /// A number.
    Value(u64),
    /// `unlimited`.
    Unlimited,
}

impl Limit {
    /// True if at least `n`.
    pub(crate) fn at_least(self, n: u64) -> bool {
        match self {
            Limit::Unlimited => true,
            Limit::Value(v) => v >= n,
        }
    }
}

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Limit::Value(v) => write!(f, "{v}"),
            Limit::Unlimited => f.write_str("unlimited"),
        }
    }
}

impl ProcRoot {
    /// The running system's `/proc`.
    pub(crate) fn system() -> Self {
        Self::new("/proc")
    }

    /// A tree rooted at `root` (laid out like `/proc`).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// The root directory.
    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    /// True when the tree has `sys/` and `net/` at all (otherwise nothing can be checked).
    pub(crate) fn usable(&self) -> bool {
        self.root.join("sys").is_dir() && self.root.join("net").is_dir()
    }

    fn read(&self, rel: &str) -> Option<String> {
        std::fs::read_to_string(self.root.join(rel)).ok()
    }

    /// The process listening on TCP `port` (any address), as (pid, command name): from the
    /// LISTEN sockets in `net/tcp` and `net/tcp6`, then the process whose descriptors hold one.
    /// `None` when nothing listens or the owner is not visible to this user.
    pub(crate) fn listener_of(&self, port: u16) -> Option<(u32, String)> {
        let want = format!(":{port:04X}");
        let mut inodes = Vec::new();
        for table in ["net/tcp", "net/tcp6"] {
            for line in self.read(table).unwrap_or_default().lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                // sl local_address rem_address st ... inode (field 9); 0A is LISTEN.
                if f.len() > 9 && f[3] == "0A" && f[1].ends_with(&want) {
                    inodes.push(format!("socket:[{}]", f[9]));
                }
            }
        }
        if inodes.is_empty() {
            return None;
        }
        for entry in std::fs::read_dir(&self.root).ok()?.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|s| s.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
                continue;
            };
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                if inodes.iter().any(|i| target.as_os_str() == i.as_str()) {
                    let comm = self.read(&format!("{pid}/comm")).unwrap_or_default();
                    return Some((pid, comm.trim().to_string()));
                }
            }
        }
        None
    }

    /// A sysctl by its dotted name, e.g. `net.core.somaxconn`, trimmed.
    pub(crate) fn sysctl(&self, name: &str) -> Option<String> {
        self.read(&format!("sys/{}", name.replace('.', "/")))
            .map(|s| s.split_whitespace().collect::<Vec<_>>().join(" "))
    }

    /// A numeric sysctl.
    pub(crate) fn sysctl_u64(&self, name: &str) -> Option<u64> {
        self.sysctl(name)?.parse().ok()
    }

    /// A two-number sysctl (`ip_local_port_range`).
    pub(crate) fn sysctl_pair(&self, name: &str) -> Option<(u64, u64)> {
        let s = self.sysctl(name)?;
        let mut it = s.split_whitespace().map(|v| v.parse().ok());
        Some((it.next()??, it.next()??))
    }

    /// `net/netstat` counters as `TcpExt.ListenOverflows` → value.
    pub(crate) fn netstat(&self) -> HashMap<String, u64> {
        self.read("net/netstat")
            .map(|t| parse_header_value_pairs(&t))
            .unwrap_or_default()
    }

    /// `net/snmp` counters as `Tcp.OutSegs` → value.
    pub(crate) fn snmp(&self) -> HashMap<String, u64> {
        self.read("net/snmp")
            .map(|t| parse_header_value_pairs(&t))
            .unwrap_or_default()
    }

    /// The TCP line of `net/sockstat`.
    pub(crate) fn sockstat(&self) -> Option<Sockstat> {
        let text = self.read("net/sockstat")?;
        let line = text.lines().find(|l| l.starts_with("TCP:"))?;
        let fields: Vec<&str> = line.split_whitespace().collect();
        let get = |k: &str| {
            fields
                .iter()
                .position(|f| *f == k)
                .and_then(|i| fields.get(i + 1))
                .and_then(|v| v.parse().ok())
        };
        Some(Sockstat {
            inuse: get("inuse")?,
            orphan: get("orphan").unwrap_or(0),
            tw: get("tw").unwrap_or(0),
        })
    }

    /// `RLIMIT_NOFILE` (soft, hard) of the process whose `self/limits` this tree has.
    pub(crate) fn nofile(&self) -> Option<(Limit, Limit)> {
        let text = self.read("self/limits")?;
        let line = text.lines().find(|l| l.starts_with("Max open files"))?;
        let mut it = line["Max open files".len()..].split_whitespace().map(|v| {
            if v == "unlimited" {
                Some(Limit::Unlimited)
            } else {
                v.parse().ok().map(Limit::Value)
            }
        });
        Some((it.next()??, it.next()??))
    }

    /// Open file descriptors of `self`.
    pub(crate) fn open_fds(&self) -> Option<u64> {
        std::fs::read_dir(self.root.join("self/fd"))
            .ok()
            .map(|d| d.count() as u64)
    }
}

/// Parses the `Name: k1 k2 …` / `Name: v1 v2 …` line pairs of `/proc/net/{netstat,snmp}`.
fn parse_header_value_pairs(text: &str) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [head, vals] = pair else { continue };
        let (Some((p1, keys)), Some((p2, values))) = (head.split_once(':'), vals.split_once(':'))
        else {
            continue;
        };
        if p1 != p2 {
            continue;
        }
        for (k, v) in keys.split_whitespace().zip(values.split_whitespace()) {
            if let Ok(v) = v.parse::<i64>() {
                out.insert(format!("{p1}.{k}"), v.max(0) as u64);
            }
        }
    }
    out
}

/// A kernel counter (`/proc/net/netstat`) that means trouble when it is above zero or rising:
/// the self-check reports it since boot, the sampler exports it and logs when it rises.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TroubleCounter {
    /// `TcpExt.<name>`.
    pub(crate) key: &'static str,
    /// The metric the sampler exports it as (none: checked at start only).
    pub(crate) metric: Option<&'static str>,
    /// What a rise means.
    pub(crate) means: &'static str,
    /// What to do.
    pub(crate) fix: &'static str,
}

/// The one list of trouble counters.
pub(crate) const TROUBLE_COUNTERS: [TroubleCounter; 6] = [
    TroubleCounter {
        key: "TcpExt.ListenOverflows",
        metric: Some(crate::metrics::KERNEL_LISTEN_OVERFLOWS_TOTAL),
        means: "accept queues overflowed: connections were dropped because a listener's backlog was full",
        fix: "raise net.core.somaxconn and server.backlog; check that the server keeps up (CPU, server.max_connections)",
    },
    TroubleCounter {
        key: "TcpExt.ListenDrops",
        metric: Some(crate::metrics::KERNEL_LISTEN_DROPS_TOTAL),
        means: "SYNs to listening sockets were dropped (overflows, memory, or errors)",
        fix: "as for ListenOverflows; also check tcp_max_syn_backlog",
    },
    TroubleCounter {
        key: "TcpExt.SyncookiesSent",
        metric: Some(crate::metrics::KERNEL_SYNCOOKIES_SENT_TOTAL),
        means: "the SYN queue overflowed and SYN cookies were sent",
        fix: "raise net.ipv4.tcp_max_syn_backlog and net.core.somaxconn",
    },
    TroubleCounter {
        key: "TcpExt.SyncookiesFailed",
        metric: Some(crate::metrics::KERNEL_SYNCOOKIES_FAILED_TOTAL),
        means: "invalid SYN cookies were received: often the footprint of tcp_tw_recycle/NAT problems or floods",
        fix: "make sure tcp_tw_recycle is off; look for SYN floods",
    },
    TroubleCounter {
        key: "TcpExt.TCPRcvCollapsed",
        metric: None,
        means: "receive queues were collapsed to save memory (low socket buffers or memory pressure)",
        fix: "check net.core.rmem_max and net.ipv4.tcp_mem",
    },
    TroubleCounter {
        key: "TcpExt.TCPBacklogDrop",
        metric: Some(crate::metrics::KERNEL_TCP_BACKLOG_DROPS_TOTAL),
        means: "packets were dropped because a socket's backlog was full while the process held it",
        fix: "the server is not keeping up: check CPU and worker threads",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_netstat_pairs() {
        let m = parse_header_value_pairs(
            "TcpExt: SyncookiesSent ListenOverflows\nTcpExt: 3 17\nIpExt: InNoRoutes\nIpExt: 0\n",
        );
        assert_eq!(m["TcpExt.ListenOverflows"], 17);
        assert_eq!(m["TcpExt.SyncookiesSent"], 3);
        assert_eq!(m["IpExt.InNoRoutes"], 0);
    }

    #[test]
    fn reads_the_real_proc() {
        let p = ProcRoot::system();
        assert!(p.usable());
        assert!(p.sysctl_u64("net.core.somaxconn").is_some());
        assert!(p.sockstat().is_some());
        let (soft, hard) = p.nofile().unwrap();
        assert!(hard.at_least(match soft {
            Limit::Value(v) => v,
            Limit::Unlimited => u64::MAX,
        }));
        assert!(p.open_fds().unwrap() >= 3);
        assert!(p.snmp().contains_key("Tcp.OutSegs"));
    }
}

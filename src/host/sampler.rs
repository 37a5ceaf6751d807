//! While serving: reads kernel counters every few seconds, exports them as metrics, and logs a
//! warning when a trouble counter rises, so the collector says what used to be one line in
//! syslog (or nothing at all).

use super::kernel::{Limit, ProcRoot, TROUBLE_COUNTERS};
use crate::lifecycle::CancellationToken;
use crate::metrics as m;
use std::collections::HashMap;
use std::time::Duration;

/// What one sample saw.
#[derive(Debug, Default)]
pub(crate) struct Sample {
    /// Trouble counters now.
    pub(crate) counters: HashMap<&'static str, u64>,
    /// Trouble counters that rose since the previous sample, with the increase (each logged).
    pub(crate) risen: Vec<(&'static str, u64)>,
}

/// One sample: sets the metrics, logs what rose since `prev`.
pub(crate) fn sample(proc: &ProcRoot, prev: &HashMap<&'static str, u64>) -> Sample {
    let netstat = proc.netstat();
    let mut out = Sample::default();
    for c in TROUBLE_COUNTERS {
        let (Some(metric), Some(&v)) = (c.metric, netstat.get(c.key)) else {
            continue;
        };
        let key = c.key;
        metrics::counter!(metric).absolute(v);
        if let Some(&before) = prev.get(key) {
            if v > before {
                tracing::warn!(
                    counter = key,
                    increase = v - before,
                    total = v,
                    fix = c.fix,
                    "kernel: {}",
                    c.means
                );
                out.risen.push((key, v - before));
            }
        }
        out.counters.insert(key, v);
    }
    if let (Some(max), Some(count)) = (
        proc.sysctl_u64("net.netfilter.nf_conntrack_max"),
        proc.sysctl_u64("net.netfilter.nf_conntrack_count"),
    ) {
        let fill = if max == 0 {
            1.0
        } else {
            count as f64 / max as f64
        };
        metrics::gauge!(m::KERNEL_CONNTRACK_FILL_RATIO).set(fill);
        if fill >= 0.9 {
            tracing::warn!(count, max, "kernel: conntrack table {:.0}% full; at 100% every new packet is dropped (raise net.netfilter.nf_conntrack_max)", fill * 100.0);
        }
    }
    if let Some(s) = proc.sockstat() {
        metrics::gauge!(m::KERNEL_TCP_TIME_WAIT).set(s.tw as f64);
        metrics::gauge!(m::KERNEL_TCP_ORPHANS).set(s.orphan as f64);
    }
    if let (Some(open), Some((soft, _))) = (proc.open_fds(), proc.nofile()) {
        metrics::gauge!(m::PROCESS_OPEN_FDS).set(open as f64);
        if let Limit::Value(max) = soft {
            metrics::gauge!(m::PROCESS_MAX_FDS).set(max as f64);
            if open * 10 >= max * 9 {
                tracing::warn!(open, max, "process: file descriptors at {}% of RLIMIT_NOFILE; accept() will fail with EMFILE", open * 100 / max.max(1));
            }
        }
    }
    out
}

/// Samples every `every` until `stop` is cancelled.
pub(crate) async fn run(proc: ProcRoot, every: Duration, stop: CancellationToken) {
    let mut prev = HashMap::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.cancelled() => return,
        }
        let p = proc.clone();
        let before = std::mem::take(&mut prev);
        prev = tokio::task::spawn_blocking(move || sample(&p, &before).counters)
            .await
            .unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rising_trouble_counter_is_reported() {
        let fixture = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/proc/somaxconn-128"
        );
        let proc = ProcRoot::new(fixture);
        let first = sample(&proc, &HashMap::new());
        assert!(
            first.risen.is_empty(),
            "nothing to compare with on the first sample"
        );
        assert_eq!(first.counters["TcpExt.ListenOverflows"], 5213);
        let mut before = first.counters.clone();
        before.insert("TcpExt.ListenOverflows", 5000);
        let second = sample(&proc, &before);
        assert_eq!(second.risen, vec![("TcpExt.ListenOverflows", 213)]);
        let healthy = ProcRoot::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/proc/healthy"
        ));
        let h = sample(&healthy, &sample(&healthy, &HashMap::new()).counters);
        assert!(h.risen.is_empty());
    }
}

//! Per-worker request counters ([`Stats`]): plain cells on the request path, added to the
//! Prometheus registry once a second, and the counters exported at 0 before the first request.

use super::answer::{status_index, status_label, Answer, Reject, STATUSES};
use super::request::Route;
use super::state::SharedState;
use crate::record::Kind;
use std::cell::Cell;
use std::sync::atomic::Ordering;

/// The label-less counters a worker keeps, each with its metric name: one table, so counting,
/// flushing and declaring cannot disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// Request body bytes read (before decoding).
    BodyBytes,
    /// `X-Forwarded-For` values from a trusted proxy that did not parse.
    ForwardedInvalid,
    /// Header deadlines that closed a connection.
    HeaderTimeouts,
    /// Connections closed because they reached `http.max_connection_age_seconds`.
    AgedOut,
    /// Connections accepted.
    Connections,
}

impl Counter {
    /// Every counter, in the order of their cells.
    const ALL: [Counter; 5] = [
        Counter::BodyBytes,
        Counter::ForwardedInvalid,
        Counter::HeaderTimeouts,
        Counter::AgedOut,
        Counter::Connections,
    ];

    /// The metric it is added to.
    fn metric(self) -> &'static str {
        use crate::metrics as m;
        match self {
            Counter::BodyBytes => m::HTTP_REQUEST_BODY_BYTES_TOTAL,
            Counter::ForwardedInvalid => m::FORWARDED_FOR_INVALID_TOTAL,
            Counter::HeaderTimeouts => m::HEADER_TIMEOUTS_TOTAL,
            Counter::AgedOut => m::CONNECTIONS_AGED_OUT_TOTAL,
            Counter::Connections => m::CONNECTIONS_ACCEPTED_TOTAL,
        }
    }
}

/// Exports the request counters at 0 (see [`crate::metrics`]): every rejection reason, every
/// kind of beacon, every status of the beacon route (the alerts' ratios read them), the
/// label-less counters, and "not draining".
pub(crate) fn declare_metrics() {
    use crate::metrics as m;
    for r in Reject::ALL {
        metrics::counter!(m::BEACONS_REJECTED_TOTAL, "reason" => r.label()).increment(0);
    }
    for kind in Kind::ALL {
        metrics::counter!(m::BEACONS_ACCEPTED_TOTAL, "kind" => kind.as_str()).increment(0);
    }
    for &s in STATUSES.iter().filter(|&&s| s != 0) {
        metrics::counter!(m::HTTP_REQUESTS_TOTAL, "route" => Route::Beacon.label(), "status" => status_label(s))
            .increment(0);
    }
    for c in Counter::ALL {
        metrics::counter!(c.metric()).increment(0);
    }
    metrics::gauge!(m::CONNECTIONS_OPEN).increment(0.0);
    metrics::gauge!(m::DRAINING).set(0.0);
}

/// Per-worker counters: plain cells bumped on the request path, added to the shared
/// Prometheus registry once a second ([`Stats::flush`]), so a request does no registry
/// lookup and touches no cache line another core writes.
#[derive(Default)]
pub(crate) struct Stats {
    requests: [[Cell<u64>; STATUSES.len()]; Route::ALL.len()],
    rejected: [Cell<u64>; Reject::ALL.len()],
    accepted: [Cell<u64>; Kind::ALL.len()],
    counters: [Cell<u64>; Counter::ALL.len()],
    /// Request durations (seconds) by route since the last flush, capped per flush.
    durations: std::cell::RefCell<[Vec<f64>; Route::ALL.len()]>,
}

/// Request durations kept per route between flushes (a sample, not every request, under load).
const DURATION_SAMPLES: usize = 2048;

fn bump(c: &Cell<u64>, n: u64) {
    c.set(c.get() + n);
}

impl Stats {
    /// Adds `n` to a label-less counter.
    pub(crate) fn add(&self, c: Counter, n: u64) {
        bump(&self.counters[c as usize], n);
    }

    /// Counts `n` accepted records of `kind` (once they are in the spool).
    pub(crate) fn accepted(&self, kind: Kind, n: u64) {
        bump(&self.accepted[kind as usize], n);
    }

    /// Counts an answered request.
    pub(crate) fn answered(&self, route: Route, a: &Answer, started: std::time::Instant) {
        bump(&self.requests[route.index()][status_index(a.status)], 1);
        if let Some(r) = a.reject {
            bump(&self.rejected[r.index()], 1);
        }
        let mut d = self.durations.borrow_mut();
        let v = &mut d[route.index()];
        if v.len() < DURATION_SAMPLES {
            v.push(started.elapsed().as_secs_f64());
        }
    }

    /// Counts a rejection answered without a route (framing errors).
    pub(crate) fn framing_error(&self, a: &Answer) {
        self.answered(Route::Other, a, std::time::Instant::now());
    }

    /// Adds everything counted since the last flush to the registry and to `app.accepted`.
    pub(crate) fn flush(&self, app: &SharedState) {
        use crate::metrics as m;
        let take = |c: &Cell<u64>| Some(c.replace(0)).filter(|&n| n > 0);
        for route in Route::ALL {
            for (i, c) in self.requests[route.index()].iter().enumerate() {
                if let Some(n) = take(c) {
                    metrics::counter!(m::HTTP_REQUESTS_TOTAL, "route" => route.label(), "status" => status_label(STATUSES[i])).increment(n);
                }
            }
        }
        for (r, c) in Reject::ALL.iter().zip(&self.rejected) {
            if let Some(n) = take(c) {
                metrics::counter!(m::BEACONS_REJECTED_TOTAL, "reason" => r.label()).increment(n);
            }
        }
        for kind in Kind::ALL {
            if let Some(n) = take(&self.accepted[kind as usize]) {
                app.accepted.fetch_add(n, Ordering::Relaxed);
                metrics::counter!(m::BEACONS_ACCEPTED_TOTAL, "kind" => kind.as_str()).increment(n);
            }
        }
        for (c, cell) in Counter::ALL.iter().zip(&self.counters) {
            if let Some(n) = take(cell) {
                metrics::counter!(c.metric()).increment(n);
            }
        }
        let mut d = self.durations.borrow_mut();
        for route in Route::ALL {
            let v = &mut d[route.index()];
            if !v.is_empty() {
                let h =
                    metrics::histogram!(m::HTTP_REQUEST_DURATION_SECONDS, "route" => route.label());
                for s in v.drain(..) {
                    h.record(s);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_listed_in_the_order_of_their_cells() {
        for (i, c) in Counter::ALL.into_iter().enumerate() {
            assert_eq!(c as usize, i);
        }
        let names: std::collections::HashSet<_> = Counter::ALL.iter().map(|c| c.metric()).collect();
        assert_eq!(names.len(), Counter::ALL.len(), "one metric per counter");
    }
}

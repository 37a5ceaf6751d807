//! Counting (HDR histogram per thread, merged) and reporting: a wrk-like text report, or JSON
//! following `loadtest/schema.json`.

use crate::http::RequestSpec;
use crate::{Mode, Opts, Schedule};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// Per-thread counters.
#[derive(Clone)]
pub struct Stats {
    hist: Histogram<u64>,
    /// Indexed by status code (100..=599 are the valid ones): an array, not a map, because it
    /// is updated on every response.
    statuses: Box<[u64; 600]>,
    errors: BTreeMap<String, u64>,
    /// Requests sent again on a new connection after a reused one failed before answering.
    pub(crate) retried: u64,
    /// TLS handshake durations, microseconds.
    handshakes: Histogram<u64>,
    /// Of those, resumed from a session ticket.
    resumed: u64,
    requests: u64,
    bytes: u64,
    /// Per time bin: latency by intended send time, responses and errors by when they came.
    bins: Vec<Bin>,
    start: Instant,
    bin_us: u64,
}

/// One bin of the timeline. Its histogram keeps 2 significant digits (26 KB) where the run's
/// keeps 3 (0.2 MB): a run has up to `MAX_BINS` of them per thread.
#[derive(Clone)]
struct Bin {
    hist: Histogram<u64>,
    responses: u64,
    errors: u64,
}

/// A knee is this many bins over a threshold, to the end of the run.
const KNEE_BINS: usize = 3;

/// The most bins a timeline has: a run longer than this many seconds gets wider bins.
pub const MAX_BINS: u64 = 300;

/// The timeline bin width for a run of `total`: one second, or wider so that a long run has
/// at most `MAX_BINS` bins.
pub fn bin_width(total: Duration) -> Duration {
    Duration::from_secs(total.as_secs().div_ceil(MAX_BINS).max(1))
}

/// Latencies are kept in microseconds up to one hour.
const MAX_US: u64 = 3_600_000_000;

impl Stats {
    /// Empty counters for a run started at `start`, with timeline bins `bin` wide; latencies in
    /// microseconds up to one hour, 3 significant digits.
    pub fn new(start: Instant, bin: Duration) -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_US, 3).expect("valid bounds"),
            statuses: Box::new([0; 600]),
            errors: BTreeMap::new(),
            retried: 0,
            handshakes: Histogram::new_with_bounds(1, MAX_US, 3).expect("valid bounds"),
            resumed: 0,
            requests: 0,
            bytes: 0,
            bins: Vec::new(),
            start,
            bin_us: (bin.as_micros() as u64).max(1),
        }
    }

    fn bin(&mut self, at: Instant) -> &mut Bin {
        let i =
            (at.saturating_duration_since(self.start).as_micros() as u64 / self.bin_us) as usize;
        if self.bins.len() <= i {
            self.bins.resize_with(i + 1, Bin::new);
        }
        &mut self.bins[i]
    }

    /// One response to a request due at `sent` (when it was, or should have been, sent) and
    /// complete at `done`.
    pub fn record(&mut self, sent: Instant, done: Instant, status: u16, bytes: u64) {
        let us = (done.saturating_duration_since(sent).as_micros() as u64).clamp(1, MAX_US);
        let _ = self.hist.record(us);
        self.statuses[usize::from(status).min(599)] += 1;
        self.requests += 1;
        self.bytes += bytes;
        let _ = self.bin(sent).hist.record(us);
        self.bin(done).responses += 1;
    }

    /// One TLS handshake, from `start` to `done`.
    pub fn handshake(&mut self, start: Instant, done: Instant, resumed: bool) {
        let us = (done.saturating_duration_since(start).as_micros() as u64).clamp(1, MAX_US);
        let _ = self.handshakes.record(us);
        self.resumed += u64::from(resumed);
    }

    /// One error, at `at`.
    pub fn error(&mut self, reason: String, at: Instant) {
        *self.errors.entry(reason).or_default() += 1;
        self.bin(at).errors += 1;
    }

    /// Adds another thread's counters (the same start and bin width).
    pub fn merge(&mut self, o: Stats) {
        let _ = self.hist.add(&o.hist);
        for (a, b) in self.statuses.iter_mut().zip(o.statuses.iter()) {
            *a += b;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.requests += o.requests;
        self.retried += o.retried;
        let _ = self.handshakes.add(&o.handshakes);
        self.resumed += o.resumed;
        self.bytes += o.bytes;
        if self.bins.len() < o.bins.len() {
            self.bins.resize_with(o.bins.len(), Bin::new);
        }
        for (a, b) in self.bins.iter_mut().zip(o.bins) {
            let _ = a.hist.add(&b.hist);
            a.responses += b.responses;
            a.errors += b.errors;
        }
    }
}

impl Bin {
    fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, MAX_US, 2).expect("valid bounds"),
            responses: 0,
            errors: 0,
        }
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Latency {
    /// Fastest.
    pub min: u64,
    /// Mean.
    pub mean: f64,
    /// Standard deviation.
    pub stdev: f64,
    /// Slowest.
    pub max: u64,
    /// Median.
    pub p50: u64,
    /// 75th percentile.
    pub p75: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
}

/// Fleet mode: connections held.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct Held {
    /// Most connections open at once.
    pub max: usize,
    /// Fewest open at once after the first interval (ramp-up).
    pub min_after_ramp: usize,
    /// Open when the test ended.
    pub end: usize,
}

/// One step of the latency spectrum.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
pub struct Point {
    /// Latency at this percentile, microseconds.
    pub value_us: u64,
    /// Quantile, 0..=1.
    pub quantile: f64,
    /// Responses at or below `value_us`.
    pub count: u64,
}

/// One bin of the timeline: what happened during `seconds` from `t`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TimeBin {
    /// Start of the bin, seconds from the start of the run.
    pub t: f64,
    /// Length of the bin (the last one may be cut short by the end of the run).
    pub seconds: f64,
    /// Requests/s the schedule asked for during the bin (open loop, fleet); null in closed loop.
    pub offered_per_second: Option<f64>,
    /// Responses/s received during the bin.
    pub responses_per_second: f64,
    /// Responses to the requests due in this bin (the latency figures' count).
    pub answered: u64,
    /// Errors during the bin.
    pub errors: u64,
    /// Median latency of the requests due in this bin; null when none was answered.
    pub p50_us: Option<u64>,
    /// 99th percentile latency of the requests due in this bin.
    pub p99_us: Option<u64>,
}

/// Open loop with a rising rate: the ramp and where the server stopped keeping up.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Ramp {
    /// Requests/s at the start.
    pub from: f64,
    /// Requests/s at the end of the ramp (held after it until the run ends).
    pub to: f64,
    /// Length of the ramp.
    pub seconds: f64,
    /// A bin is over the knee when its p99 exceeds this...
    pub knee_p99_us: u64,
    /// ...or its errors exceed this share of its requests, percent.
    pub knee_error_percent: f64,
    /// Where the server went over a threshold and stayed over it (at least 3 bins, to the end
    /// of the run); null when it did not.
    pub knee: Option<Knee>,
    /// The most responses/s in a bin before the knee (the whole run when there is none).
    pub max_good_responses_per_second: f64,
}

/// Where the ramp crossed a threshold.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Knee {
    /// The offered requests/s there.
    pub rate: f64,
    /// Seconds from the start.
    pub at_seconds: f64,
    /// `p99` or `errors`.
    pub reason: String,
    /// p99 of the bin.
    pub p99_us: Option<u64>,
    /// Errors as a share of the bin's requests, percent.
    pub error_percent: f64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// JSON layout version.
    pub schema_version: u32,
    /// Target URL.
    pub url: String,
    /// Pacing mode.
    pub mode: Mode,
    /// Connections (or fleet clients).
    pub connections: usize,
    /// Threads used.
    pub threads: usize,
    /// New connection per request.
    pub close: bool,
    /// HTTP method.
    pub method: crate::http::Method,
    /// Open loop: target requests/s; fleet: clients / interval.
    pub target_rate: Option<f64>,
    /// Seconds measured.
    pub duration_seconds: f64,
    /// True when stopped early (Ctrl-C): a partial report.
    pub interrupted: bool,
    /// Responses received.
    pub requests: u64,
    /// Responses per second.
    pub requests_per_second: f64,
    /// Bytes of responses read.
    pub bytes_read: u64,
    /// Latency (from the intended send time in open loop and fleet modes).
    pub latency_us: Option<Latency>,
    /// The whole latency spectrum (HdrHistogram's percentile distribution: 5 ticks per half
    /// distance to 100 %), for `--latency`, `--hgrm` and the plots.
    #[serde(rename = "latency_spectrum")]
    pub spectrum: Vec<Point>,
    /// Responses by status code.
    pub status: BTreeMap<String, u64>,
    /// Errors by reason.
    pub errors: BTreeMap<String, u64>,
    /// Total errors.
    pub errors_total: u64,
    /// Fleet mode: requests sent again on a new connection because a reused keep-alive
    /// connection failed before any answer byte, as a browser does (not errors unless the
    /// retry failed too; `--no-retry-reused` makes them errors).
    pub retried: u64,
    /// Fleet mode only.
    pub connections_held: Option<Held>,
    /// Width of the timeline's bins, seconds.
    pub bin_seconds: f64,
    /// What happened over time, bin by bin.
    pub timeline: Vec<TimeBin>,
    /// Open loop with `--rate A..B`: the ramp and its knee.
    pub ramp: Option<Ramp>,
    /// https://: the TLS handshakes (null for http://).
    pub tls: Option<TlsHandshakes>,
}

/// The TLS handshakes of a run, timed apart from the requests (a request's latency starts
/// after its connection's handshake).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TlsHandshakes {
    /// Handshakes completed.
    pub handshakes: u64,
    /// Of those, resumed from a session ticket (`--tls-resume`).
    pub resumed: u64,
    /// Handshakes per second.
    pub per_second: f64,
    /// Handshake duration, TCP connected to TLS established.
    pub latency_us: Latency,
}

impl Report {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn build(
        opts: &Opts,
        mode: Mode,
        spec: &RequestSpec,
        conns: usize,
        threads: usize,
        elapsed: Duration,
        interrupted: bool,
        s: Stats,
        held: Option<Held>,
        schedule: Option<Schedule>,
    ) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let bin_seconds = s.bin_us as f64 / 1e6;
        let timeline = timeline(&s.bins, bin_seconds, secs, |t| match mode {
            Mode::Closed => None,
            Mode::Open => schedule.map(|r| r.at(t)),
            Mode::Fleet => Some(conns as f64 / opts.interval.as_secs_f64()),
        });
        let ramp = schedule.filter(|r| r.from != r.to).map(|r| {
            let p99 = opts.knee_p99.as_micros() as u64;
            let (knee, max_good) = knee(&timeline, p99, opts.knee_errors);
            Ramp {
                from: r.from,
                to: r.to,
                seconds: r.ramp.as_secs_f64(),
                knee_p99_us: p99,
                knee_error_percent: opts.knee_errors,
                knee,
                max_good_responses_per_second: max_good,
            }
        });
        let hs = &s.handshakes;
        let tls = (!hs.is_empty()).then(|| TlsHandshakes {
            handshakes: hs.len(),
            resumed: s.resumed,
            per_second: hs.len() as f64 / secs,
            latency_us: Latency {
                min: hs.min(),
                mean: hs.mean(),
                stdev: hs.stdev(),
                max: hs.max(),
                p50: hs.value_at_quantile(0.50),
                p75: hs.value_at_quantile(0.75),
                p90: hs.value_at_quantile(0.90),
                p99: hs.value_at_quantile(0.99),
                p999: hs.value_at_quantile(0.999),
            },
        });
        let h = &s.hist;
        let latency = (s.requests > 0).then(|| Latency {
            min: h.min(),
            mean: h.mean(),
            stdev: h.stdev(),
            max: h.max(),
            p50: h.value_at_quantile(0.50),
            p75: h.value_at_quantile(0.75),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
        });
        let spectrum = if s.requests > 0 {
            h.iter_quantiles(5)
                .map(|v| Point {
                    value_us: h.highest_equivalent(v.value_iterated_to()),
                    quantile: v.quantile_iterated_to(),
                    count: h.count_between(0, v.value_iterated_to()),
                })
                .collect()
        } else {
            Vec::new()
        };
        let target_rate = match mode {
            Mode::Open => schedule.map(|r| r.to),
            Mode::Fleet => Some(conns as f64 / opts.interval.as_secs_f64()),
            Mode::Closed => None,
        };
        Report {
            schema_version: 2,
            url: opts.url.clone(),
            mode,
            connections: conns,
            threads,
            close: spec.close,
            method: spec.method,
            target_rate,
            duration_seconds: secs,
            interrupted,
            requests: s.requests,
            requests_per_second: s.requests as f64 / secs,
            bytes_read: s.bytes,
            latency_us: latency,
            spectrum,
            status: s
                .statuses
                .iter()
                .enumerate()
                .filter(|(_, &v)| v > 0)
                .map(|(k, &v)| (k.to_string(), v))
                .collect(),
            errors_total: s.errors.values().sum(),
            retried: s.retried,
            errors: s.errors,
            connections_held: held,
            bin_seconds,
            timeline,
            ramp,
            tls,
        }
    }

    /// How the load was paced, in words.
    fn mode_text(&self) -> String {
        match (self.mode, &self.ramp) {
            (Mode::Closed, _) => "closed loop".to_string(),
            (Mode::Open, Some(r)) => format!(
                "open loop ramping {:.0} -> {:.0} req/s over {:.0}s",
                r.from, r.to, r.seconds
            ),
            (Mode::Open, None) => {
                format!("open loop at {} req/s", self.target_rate.unwrap_or(0.0))
            }
            (Mode::Fleet, _) => format!(
                "fleet, one beacon per client every {:.1}s ({:.0} req/s)",
                self.connections as f64 / self.target_rate.unwrap_or(1.0),
                self.target_rate.unwrap_or(0.0)
            ),
        }
    }

    /// One line saying what ran: the picture's title.
    pub fn describe(&self) -> String {
        format!(
            "{}, {} {}, {} {}, {:.0}s",
            self.mode_text(),
            self.connections,
            if self.mode == Mode::Fleet {
                "clients"
            } else {
                "connections"
            },
            self.method.as_str(),
            if self.close {
                "new connection per request"
            } else {
                "keep-alive"
            },
            self.duration_seconds
        )
    }

    /// The wrk-like text report.
    pub fn render(&self, distribution: bool) -> String {
        let mut o = String::new();
        let mode = self.mode_text();
        let conn = if self.close {
            "new connection per request"
        } else {
            "keep-alive"
        };
        let _ = writeln!(o, "{:.1}s test @ {}", self.duration_seconds, self.url);
        let _ = writeln!(
            o,
            "  {} threads and {} {} ({mode}, {conn}){}",
            self.threads,
            self.connections,
            if self.mode == Mode::Fleet {
                "clients"
            } else {
                "connections"
            },
            if self.interrupted {
                " — interrupted, partial results"
            } else {
                ""
            }
        );
        if let Some(t) = &self.tls {
            let l = &t.latency_us;
            let _ = writeln!(
                o,
                "  TLS handshakes {} ({} resumed, {:.0}/s)  avg {}  p50 {}  p99 {}  max {}",
                t.handshakes,
                t.resumed,
                t.per_second,
                us(l.mean as u64),
                us(l.p50),
                us(l.p99),
                us(l.max)
            );
        }
        if let Some(l) = &self.latency_us {
            let _ = writeln!(
                o,
                "  Latency   avg {}  stdev {}  max {}  p99 {}",
                us(l.mean as u64),
                us(l.stdev as u64),
                us(l.max),
                us(l.p99)
            );
            if distribution {
                let _ = writeln!(
                    o,
                    "  Latency distribution{}",
                    if self.mode == Mode::Closed {
                        ""
                    } else {
                        " (from intended send time)"
                    }
                );
                for (p, v) in [
                    ("50%", l.p50),
                    ("75%", l.p75),
                    ("90%", l.p90),
                    ("99%", l.p99),
                    ("99.9%", l.p999),
                ] {
                    let _ = writeln!(o, "    {p:>6}  {}", us(v));
                }
                let _ = writeln!(o, "  Detailed percentile spectrum:");
                o.push_str(&self.hgrm());
            }
        }
        let _ = writeln!(
            o,
            "  {} requests in {:.2}s, {:.2} MB read",
            self.requests,
            self.duration_seconds,
            self.bytes_read as f64 / 1e6
        );
        let status: Vec<String> = self
            .status
            .iter()
            .map(|(k, v)| format!("{k}: {v}"))
            .collect();
        let _ = writeln!(
            o,
            "  Status codes: {}",
            if status.is_empty() {
                "none".into()
            } else {
                status.join(", ")
            }
        );
        if self.retried > 0 {
            let _ = writeln!(
                o,
                "  Retried on a new connection (a reused one failed before answering, as a browser retries): {}",
                self.retried
            );
        }
        if self.errors_total > 0 {
            let _ = writeln!(o, "  Errors: {}", self.errors_total);
            for (k, v) in &self.errors {
                let _ = writeln!(o, "    {k}: {v}");
            }
        }
        if let Some(h) = &self.connections_held {
            let _ = writeln!(
                o,
                "  Connections held: max {}, min after ramp-up {}, at end {}",
                h.max, h.min_after_ramp, h.end
            );
        }
        if let Some(r) = &self.ramp {
            self.render_ramp(&mut o, r);
        }
        let _ = writeln!(o, "Requests/sec: {:.2}", self.requests_per_second);
        o
    }

    /// The ramp's timeline and its knee.
    fn render_ramp(&self, o: &mut String, r: &Ramp) {
        let _ = writeln!(
            o,
            "  Ramp {:.0} -> {:.0} req/s over {:.0}s ({:.0}s bins; latency by intended send time)",
            r.from, r.to, r.seconds, self.bin_seconds
        );
        let _ = writeln!(
            o,
            "    {:>6} {:>10} {:>10} {:>9} {:>9} {:>7}",
            "t", "offered/s", "answered/s", "p50", "p99", "errors"
        );
        for b in &self.timeline {
            let _ = writeln!(
                o,
                "    {:>5.0}s {:>10.0} {:>10.0} {:>9} {:>9} {:>7}",
                b.t,
                b.offered_per_second.unwrap_or(0.0),
                b.responses_per_second,
                b.p50_us.map_or("-".into(), us),
                b.p99_us.map_or("-".into(), us),
                b.errors
            );
        }
        match &r.knee {
            Some(k) => {
                let why = if k.reason == "errors" {
                    format!("errors {:.1}% > {}%", k.error_percent, r.knee_error_percent)
                } else {
                    format!(
                        "p99 {} > {}",
                        k.p99_us.map_or("-".into(), us),
                        us(r.knee_p99_us)
                    )
                };
                let _ = writeln!(
                    o,
                    "  Knee: {:.0} req/s offered ({why}, from {:.0}s); best below it {:.0} req/s",
                    k.rate, k.at_seconds, r.max_good_responses_per_second
                );
            }
            None => {
                let _ = writeln!(
                    o,
                    "  Knee: none up to {:.0} req/s (p99 under {}, errors under {}%); best {:.0} req/s",
                    r.to,
                    us(r.knee_p99_us),
                    r.knee_error_percent,
                    r.max_good_responses_per_second
                );
            }
        }
    }
}

/// The timeline of a run `secs` long from its bins; `offered(t)` is the schedule's rate at `t`.
fn timeline(
    bins: &[Bin],
    width: f64,
    secs: f64,
    offered: impl Fn(f64) -> Option<f64>,
) -> Vec<TimeBin> {
    bins.iter()
        .enumerate()
        .map(|(i, b)| (i as f64 * width, b))
        // Answers that came in after the end (a closed-loop connection finishes its request)
        // would make a bin of a few milliseconds with an absurd rate.
        .filter(|(t, _)| secs - t > width / 10.0)
        .map(|(t, b)| {
            let seconds = width.min(secs - t);
            let q = |q| (!b.hist.is_empty()).then(|| b.hist.value_at_quantile(q));
            TimeBin {
                t,
                seconds,
                offered_per_second: offered(t + seconds / 2.0),
                responses_per_second: b.responses as f64 / seconds,
                answered: b.hist.len(),
                errors: b.errors,
                p50_us: q(0.5),
                p99_us: q(0.99),
            }
        })
        .collect()
}

/// The knee of a ramp: the rate from which the server stayed over a threshold — every later bin
/// with requests in it has its p99 over `p99_us` or its errors over `error_percent` of its
/// requests, and there are at least `KNEE_BINS` of them. "Stayed", because on a shared machine a
/// second or two of slow answers at a rate the server then keeps up with again is noise, not
/// capacity (the timeline shows them). Also returns the most responses/s of a bin before it.
fn knee(timeline: &[TimeBin], p99_us: u64, error_percent: f64) -> (Option<Knee>, f64) {
    let judged: Vec<(&TimeBin, Option<(&'static str, f64)>)> = timeline
        .iter()
        .filter(|b| b.answered + b.errors > 0)
        .map(|b| {
            let errors = 100.0 * b.errors as f64 / (b.answered + b.errors) as f64;
            let over = if errors > error_percent {
                Some(("errors", errors))
            } else if b.p99_us.is_some_and(|p| p > p99_us) {
                Some(("p99", errors))
            } else {
                None
            };
            (b, over)
        })
        .collect();
    let stayed = judged.len()
        - judged
            .iter()
            .rev()
            .take_while(|(_, over)| over.is_some())
            .count();
    let at = (judged.len() - stayed >= KNEE_BINS).then_some(stayed);
    let max_good = judged[..at.unwrap_or(judged.len())]
        .iter()
        .map(|(b, _)| b.responses_per_second)
        .fold(0.0, f64::max);
    let knee = at.map(|i| {
        let (b, over) = judged[i];
        let (reason, error_percent) = over.expect("judged over the threshold");
        Knee {
            rate: b.offered_per_second.unwrap_or(0.0),
            at_seconds: b.t,
            reason: reason.into(),
            p99_us: b.p99_us,
            error_percent,
        }
    });
    (knee, max_good)
}

fn us(v: u64) -> String {
    if v >= 1_000_000 {
        format!("{:.2}s", v as f64 / 1e6)
    } else if v >= 1000 {
        format!("{:.2}ms", v as f64 / 1e3)
    } else {
        format!("{v}us")
    }
}

impl Report {
    /// The latency spectrum in HdrHistogram's percentile-distribution format (what wrk2's
    /// `--latency` prints and plotters of `.hgrm` files read), values in milliseconds.
    pub fn hgrm(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "{:>12} {:>14} {:>10} {:>14}\n",
            "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
        );
        for p in &self.spectrum {
            let ms = p.value_us as f64 / 1000.0;
            if p.quantile < 1.0 {
                let _ = writeln!(
                    o,
                    "{ms:>12.3} {:>14.12} {:>10} {:>14.2}",
                    p.quantile,
                    p.count,
                    1.0 / (1.0 - p.quantile)
                );
            } else {
                let _ = writeln!(o, "{ms:>12.3} {:>14.12} {:>10}", p.quantile, p.count);
            }
        }
        if let Some(l) = &self.latency_us {
            let _ = writeln!(
                o,
                "#[Mean    = {:>12.3}, StdDeviation   = {:>12.3}]",
                l.mean / 1000.0,
                l.stdev / 1000.0
            );
            let _ = writeln!(
                o,
                "#[Max     = {:>12.3}, Total count    = {:>12}]",
                l.max as f64 / 1000.0,
                self.requests
            );
        }
        o
    }
}

//! Counting (HDR histogram per thread, merged) and reporting: a wrk-like text report, or JSON
//! following `loadtest/schema.json`.

use crate::http::RequestSpec;
use crate::{Mode, Opts};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

/// Per-thread counters.
#[derive(Clone)]
pub struct Stats {
    hist: Histogram<u64>,
    /// Indexed by status code (100..=599 are the valid ones): an array, not a map, because it
    /// is updated on every response.
    statuses: Box<[u64; 600]>,
    errors: BTreeMap<String, u64>,
    requests: u64,
    bytes: u64,
}

impl Default for Stats {
    fn default() -> Self {
        Self::new()
    }
}

impl Stats {
    /// Empty counters; latencies in microseconds up to one hour, 3 significant digits.
    pub fn new() -> Self {
        Self {
            hist: Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds"),
            statuses: Box::new([0; 600]),
            errors: BTreeMap::new(),
            requests: 0,
            bytes: 0,
        }
    }

    /// One response.
    pub fn record(&mut self, latency_us: u64, status: u16, bytes: u64) {
        let _ = self.hist.record(latency_us.min(3_600_000_000));
        self.statuses[usize::from(status).min(599)] += 1;
        self.requests += 1;
        self.bytes += bytes;
    }

    /// One error.
    pub fn error(&mut self, reason: String) {
        *self.errors.entry(reason).or_default() += 1;
    }

    /// Adds another thread's counters.
    pub fn merge(&mut self, o: Stats) {
        let _ = self.hist.add(&o.hist);
        for (a, b) in self.statuses.iter_mut().zip(o.statuses.iter()) {
            *a += b;
        }
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
        self.requests += o.requests;
        self.bytes += o.bytes;
    }
}

/// Latency summary in microseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
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
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Held {
    /// Most connections open at once.
    pub max: usize,
    /// Fewest open at once after the first interval (ramp-up).
    pub min_after_ramp: usize,
    /// Open when the test ended.
    pub end: usize,
}

/// One step of the latency spectrum.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    /// Latency at this percentile, microseconds.
    pub value_us: u64,
    /// Quantile, 0..=1.
    pub quantile: f64,
    /// Responses at or below `value_us`.
    pub count: u64,
}

/// The result of a run.
#[derive(Debug, Clone, Serialize)]
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
    /// distance to 100 %), for `--latency` and `--hgrm`; not in the JSON report.
    #[serde(skip)]
    pub spectrum: Vec<Point>,
    /// Responses by status code.
    pub status: BTreeMap<String, u64>,
    /// Errors by reason.
    pub errors: BTreeMap<String, u64>,
    /// Total errors.
    pub errors_total: u64,
    /// Fleet mode only.
    pub connections_held: Option<Held>,
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
    ) -> Report {
        let secs = elapsed.as_secs_f64().max(1e-9);
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
            Mode::Open => opts.rate,
            Mode::Fleet => Some(conns as f64 / opts.interval.as_secs_f64()),
            Mode::Closed => None,
        };
        Report {
            schema_version: 1,
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
            errors: s.errors,
            connections_held: held,
        }
    }

    /// The wrk-like text report.
    pub fn render(&self, distribution: bool) -> String {
        let mut o = String::new();
        let mode = match self.mode {
            Mode::Closed => "closed loop".to_string(),
            Mode::Open => format!("open loop at {} req/s", self.target_rate.unwrap_or(0.0)),
            Mode::Fleet => format!(
                "fleet, one beacon per client every {:.1}s ({:.0} req/s)",
                self.connections as f64 / self.target_rate.unwrap_or(1.0),
                self.target_rate.unwrap_or(0.0)
            ),
        };
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
        let _ = writeln!(o, "Requests/sec: {:.2}", self.requests_per_second);
        o
    }
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

//! beacon-loadgen: load for beacon collectors.
//!
//! One worker loop per connection, parameterised by its pacing:
//! - **closed loop** (`-c`, like wrk): the next request goes as soon as the previous answer is in;
//! - **open loop** (`--rate`): requests are scheduled at a fixed rate and latency is measured
//!   from when each *should* have been sent (coordinated-omission correction, as wrk2 does);
//! - **fleet** (`--clients --interval`): N virtual browsers, each holding a keep-alive
//!   connection and pinging every interval with jitter, spread over `127.0.0.x` source
//!   addresses so N can exceed one address's ephemeral ports.
//!
//! `-t` threads each run a single-threaded Tokio runtime with their share of connections (the
//! wrk model: no cross-thread wake-ups on the hot path). Per-thread HDR histograms and counters
//! are merged at the end.

pub mod compare;
pub mod http;
pub mod plot;
pub mod report;
pub mod tls;

use crate::http::{BodyKind, Head, Method, ParseError, RequestSpec};
use crate::report::{Report, Stats};
use crate::tls::Stream;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpSocket;

/// Wake-up lateness that is the timer's, not the server's (see `connection`).
const TIMER_SLACK: Duration = Duration::from_millis(1);

/// Command-line options.
#[derive(Debug, Clone, clap::Parser)]
#[command(
    name = "beacon-loadgen",
    version,
    about = "Load generator for beacon collectors",
    after_help = "Compare saved --json reports: beacon-loadgen compare A.json B.json [--label A --label B] [--plot out.svg]"
)]
pub struct Opts {
    /// Target URL, e.g. http://127.0.0.1:8080/beacon or https://localhost:8443/beacon
    pub url: String,
    /// https://: trust the server certificates this CA (PEM file) signed.
    #[arg(long)]
    pub cacert: Option<std::path::PathBuf>,
    /// https://: take any server certificate (its signature is still checked).
    #[arg(long)]
    pub insecure: bool,
    /// https://: resume TLS sessions (tickets) on new connections, as a returning browser
    /// does. Off: every new connection is a full handshake.
    #[arg(long)]
    pub tls_resume: bool,
    /// Connections (closed and open loop).
    #[arg(short = 'c', long, default_value_t = 64)]
    pub connections: usize,
    /// Threads, each with its own event loop.
    #[arg(short = 't', long, default_value_t = 1)]
    pub threads: usize,
    /// Test duration (e.g. 10s, 500ms, 2m).
    #[arg(short = 'd', long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Extra request header, `Name: value` (repeatable).
    #[arg(short = 'H', long = "header")]
    pub headers: Vec<String>,
    /// Print the latency distribution.
    #[arg(long)]
    pub latency: bool,
    /// Open loop: total requests per second, latency corrected for coordinated omission.
    /// `A..B` ramps from A to B over `--ramp` (default: the whole run) and reports the knee.
    #[arg(long, value_parser = parse_rate)]
    pub rate: Option<RateSpec>,
    /// With `--rate A..B`: the ramp's length; the run lasts at least this long and holds B
    /// after it.
    #[arg(long, value_parser = parse_duration)]
    pub ramp: Option<Duration>,
    /// Ramp: a second whose p99 is over this is over the knee.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    pub knee_p99: Duration,
    /// Ramp: a second whose errors are over this percent of its requests is over the knee.
    #[arg(long, default_value_t = 1.0)]
    pub knee_errors: f64,
    /// A new connection for every request (`Connection: close`), like a proxy speaking HTTP/1.0.
    #[arg(long)]
    pub close: bool,
    /// Request method: GET (query-string beacons) or POST (body beacons).
    #[arg(long, value_enum, default_value_t = Method::Get)]
    pub method: Method,
    /// POST body kind.
    #[arg(long, value_enum, default_value_t = BodyKind::Text)]
    pub body: BodyKind,
    /// POST body size in bytes (approximate lower bound: the fields come first).
    #[arg(long, default_value_t = 256)]
    pub body_bytes: usize,
    /// Send exactly the URL every time (no generated beacon fields): what wrk sends.
    #[arg(long)]
    pub fixed: bool,
    /// Fleet mode: this many virtual browsers, each with its own keep-alive connection.
    #[arg(long)]
    pub clients: Option<usize>,
    /// Fleet mode: each browser sends a beacon this often.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Fleet mode: random spread of each interval, percent.
    #[arg(long, default_value_t = 20)]
    pub jitter_percent: u32,
    /// Fleet mode: do not send a request again on a new connection when it failed on a reused
    /// keep-alive connection before any byte of an answer came. Browsers do send it again
    /// (the server may have closed the idle connection as the request left), so by default
    /// the fleet does too and counts those as `retried`, not as errors.
    #[arg(long)]
    pub no_retry_reused: bool,
    /// Source addresses to spread connections over: `127.0.0.1-127.0.0.254`, a comma list, or
    /// `none`. Default: that loopback range in fleet mode against a loopback target.
    #[arg(long)]
    pub source_ips: Option<String>,
    /// Per-request timeout (connect; write and read together). The timer is re-armed lazily,
    /// so a stalled request is given up after between 1× and 1.5× this.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub timeout: Duration,
    /// Print the report as JSON (schema: loadtest/schema.json).
    #[arg(long)]
    pub json: bool,
    /// Also write the latency spectrum to this file in HdrHistogram's percentile-distribution
    /// format (`.hgrm`), which standard latency plotters read.
    #[arg(long)]
    pub hgrm: Option<std::path::PathBuf>,
    /// Also draw the run to this SVG file: throughput and p50/p99 latency over time, and the
    /// latency distribution.
    #[arg(long)]
    pub plot: Option<std::path::PathBuf>,
}

impl Opts {
    /// How long the run lasts: `-d`, or the ramp when that is longer.
    pub fn run_length(&self) -> Duration {
        self.duration.max(self.ramp.unwrap_or_default())
    }
}

/// `--rate`: one rate, or a ramp `A..B`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RateSpec {
    /// Requests/s at the start.
    pub from: f64,
    /// Requests/s at the end of the ramp (= `from` for a fixed rate).
    pub to: f64,
}

/// Parses `5000` or `1000..50000`.
pub fn parse_rate(s: &str) -> Result<RateSpec, String> {
    let num = |v: &str| -> Result<f64, String> {
        let r: f64 = v
            .trim()
            .parse()
            .map_err(|_| format!("not a rate: {v:?} (use 5000 or 1000..50000)"))?;
        if r > 0.0 && r.is_finite() {
            Ok(r)
        } else {
            Err(format!("a rate must be positive: {v:?}"))
        }
    };
    let (from, to) = match s.split_once("..") {
        Some((a, b)) => (num(a)?, num(b)?),
        None => (num(s)?, num(s)?),
    };
    if to < from {
        return Err(format!("a ramp goes up: {s:?} (use low..high)"));
    }
    Ok(RateSpec { from, to })
}

/// The open loop's offered rate over the run: `from`, rising linearly to `to` over `ramp`, then
/// `to`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// Requests/s at the start.
    pub from: f64,
    /// Requests/s from the end of the ramp on.
    pub to: f64,
    /// Length of the ramp.
    pub ramp: Duration,
}

impl Schedule {
    /// Requests/s `t` seconds into the run.
    pub fn at(&self, t: f64) -> f64 {
        let ramp = self.ramp.as_secs_f64();
        if ramp <= 0.0 || t >= ramp {
            self.to
        } else {
            self.from + (self.to - self.from) * t.max(0.0) / ramp
        }
    }
}

/// Parses `10s`, `500ms`, `2m`, `1h`, or plain seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map_or((s, "s"), |i| (&s[..i], &s[i..]));
    let v: f64 = num.parse().map_err(|_| format!("not a duration: {s:?}"))?;
    let secs = match unit {
        "ms" => v / 1000.0,
        "s" => v,
        "m" => v * 60.0,
        "h" => v * 3600.0,
        _ => return Err(format!("unknown unit in {s:?} (use ms, s, m, h)")),
    };
    if !(secs.is_finite() && secs > 0.0) {
        return Err(format!("duration must be positive: {s:?}"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A setup failure, before any load is sent.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// The URL is not `http://host[:port]/path` or `https://...`.
    #[error("bad URL {0:?}: use http://host[:port]/path or https://host[:port]/path")]
    Url(String),
    /// The TLS client could not be set up.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsSetupError),
    /// The host did not resolve.
    #[error("cannot resolve {0}: {1}")]
    Resolve(String, std::io::Error),
    /// Options that do not fit together.
    #[error("{0}")]
    Options(String),
    /// Not enough file descriptors, even after raising the soft limit.
    #[error("need {need} file descriptors but RLIMIT_NOFILE is {soft} (hard {hard}); raise it with `ulimit -n {need}` (as root: `ulimit -Hn`), or LimitNOFILE= in a unit")]
    Nofile {
        /// Needed.
        need: u64,
        /// Soft limit after trying to raise it.
        soft: u64,
        /// Hard limit.
        hard: u64,
    },
}

/// How connections are paced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Send as fast as answers come back.
    Closed,
    /// Fixed total rate, latency from the intended send time.
    Open,
    /// Many idle keep-alive clients pinging at an interval.
    Fleet,
}

/// Live counters, readable while the test runs (progress line, fleet gauge).
#[derive(Debug, Default)]
pub struct Live {
    /// Responses received.
    pub requests: AtomicU64,
    /// Errors.
    pub errors: AtomicU64,
    /// Connections open now.
    pub connected: AtomicUsize,
}

struct Plan {
    mode: Mode,
    target: SocketAddr,
    spec: RequestSpec,
    conns: usize,
    /// Seconds between a connection's sends (open loop and fleet; at the start of a ramp).
    period: Duration,
    /// A rising open-loop rate.
    schedule: Option<Schedule>,
    /// Timeline bin width.
    bin: Duration,
    jitter: f64,
    sources: Vec<Ipv4Addr>,
    timeout: Duration,
    /// `--no-retry-reused`.
    no_retry_reused: bool,
    /// https://: the TLS client.
    tls: Option<crate::tls::Target>,
}

/// Runs the test until the duration is over or `stop` turns true; returns the report (a
/// partial one when stopped early).
pub fn run(opts: &Opts, stop: Arc<AtomicBool>, live: Arc<Live>) -> Result<Report, SetupError> {
    let (target, spec, https) = parse_target(opts)?;
    let tls = if https {
        Some(crate::tls::target(
            &spec.host,
            opts.cacert.as_deref(),
            opts.insecure,
            opts.tls_resume,
        )?)
    } else {
        None
    };
    let mode = match (opts.clients, opts.rate) {
        (Some(_), Some(_)) => {
            return Err(SetupError::Options(
                "--clients (fleet) and --rate (open loop) do not combine: a fleet's rate is clients / interval".into(),
            ))
        }
        (Some(_), None) => Mode::Fleet,
        (None, Some(_)) => Mode::Open,
        (None, None) => Mode::Closed,
    };
    let conns = match mode {
        Mode::Fleet => opts.clients.unwrap_or(0),
        _ => opts.connections,
    };
    if conns == 0 || opts.threads == 0 {
        return Err(SetupError::Options(
            "connections, clients and threads must be at least 1".into(),
        ));
    }
    if mode == Mode::Fleet && opts.close {
        return Err(SetupError::Options(
            "fleet clients hold keep-alive connections; --close does not apply".into(),
        ));
    }
    let schedule = opts.rate.map(|r| Schedule {
        from: r.from,
        to: r.to,
        ramp: if r.from == r.to {
            Duration::ZERO
        } else {
            opts.ramp.unwrap_or(opts.duration)
        },
    });
    if opts.ramp.is_some() && !schedule.is_some_and(|r| r.from < r.to) {
        return Err(SetupError::Options(
            "--ramp goes with a rising --rate A..B (e.g. --rate 1000..50000 --ramp 30s)".into(),
        ));
    }
    let period = match (mode, schedule) {
        (Mode::Open, Some(r)) => Duration::from_secs_f64(conns as f64 / r.from),
        (Mode::Fleet, _) => opts.interval,
        _ => Duration::ZERO,
    };
    let sources = source_ips(opts, mode, target)?;
    raise_nofile(conns as u64 + 64)?;

    let run_length = opts.run_length();
    let plan = Arc::new(Plan {
        mode,
        target,
        spec,
        conns,
        period,
        schedule: schedule.filter(|r| r.from != r.to),
        bin: report::bin_width(run_length),
        jitter: f64::from(opts.jitter_percent.min(100)) / 100.0,
        sources,
        timeout: opts.timeout,
        no_retry_reused: opts.no_retry_reused,
        tls,
    });
    let start = Instant::now();
    let deadline = start + run_length;
    let threads = opts.threads.min(conns);
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let (plan, stop, live) = (plan.clone(), stop.clone(), live.clone());
            std::thread::Builder::new()
                .name(format!("loadgen-{t}"))
                .spawn(move || thread_main(t, threads, plan, start, deadline, stop, live))
                .expect("spawning a load thread")
        })
        .collect();
    // The fleet's "connections held" is sampled here, off the hot path.
    let mut held_max = 0usize;
    let mut held_min_after_ramp: Option<usize> = None;
    let ramp = start + plan.period.min(run_length / 2) + Duration::from_millis(200);
    while Instant::now() < deadline && !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(50));
        let now_held = live.connected.load(Ordering::Relaxed);
        held_max = held_max.max(now_held);
        if Instant::now() >= ramp {
            held_min_after_ramp = Some(held_min_after_ramp.map_or(now_held, |m| m.min(now_held)));
        }
    }
    let interrupted = stop.load(Ordering::Relaxed) && Instant::now() < deadline;
    let held_end = live.connected.load(Ordering::Relaxed);
    stop.store(true, Ordering::Relaxed);
    let elapsed = start.elapsed();
    let mut total = Stats::new(start, plan.bin);
    for h in handles {
        total.merge(h.join().expect("load thread panicked"));
    }
    Ok(Report::build(
        opts,
        mode,
        &plan.spec,
        conns,
        threads,
        elapsed,
        interrupted,
        total,
        (mode == Mode::Fleet).then_some(report::Held {
            max: held_max,
            min_after_ramp: held_min_after_ramp.unwrap_or(held_end),
            end: held_end,
        }),
        schedule,
    ))
}

fn parse_target(opts: &Opts) -> Result<(SocketAddr, RequestSpec, bool), SetupError> {
    let (rest, https) = match opts.url.strip_prefix("https://") {
        Some(r) => (r, true),
        None => (
            opts.url
                .strip_prefix("http://")
                .ok_or_else(|| SetupError::Url(opts.url.clone()))?,
            false,
        ),
    };
    let (authority, path_query) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.is_empty() {
        return Err(SetupError::Url(opts.url.clone()));
    }
    let (path, query) = match path_query.split_once('?') {
        Some((p, q)) => (p.to_string(), Some(q.to_string())),
        None => (path_query.to_string(), None),
    };
    let with_port = if authority
        .rsplit(':')
        .next()
        .is_some_and(|p| p.parse::<u16>().is_ok())
        && !authority.ends_with(']')
    {
        authority.to_string()
    } else {
        format!("{authority}:{}", if https { 443 } else { 80 })
    };
    use std::net::ToSocketAddrs;
    let target = with_port
        .to_socket_addrs()
        .map_err(|e| SetupError::Resolve(authority.to_string(), e))?
        .next()
        .ok_or_else(|| {
            SetupError::Resolve(authority.to_string(), std::io::Error::other("no address"))
        })?;
    let spec = RequestSpec {
        host: authority.to_string(),
        path,
        query,
        fixed: opts.fixed,
        method: opts.method,
        body: opts.body,
        body_bytes: opts.body_bytes,
        headers: opts.headers.clone(),
        close: opts.close,
    };
    Ok((target, spec, https))
}

fn source_ips(opts: &Opts, mode: Mode, target: SocketAddr) -> Result<Vec<Ipv4Addr>, SetupError> {
    let spec = match &opts.source_ips {
        Some(s) if s == "none" => return Ok(Vec::new()),
        Some(s) => s.clone(),
        None if mode == Mode::Fleet && target.ip().is_loopback() && target.is_ipv4() => {
            "127.0.0.1-127.0.0.254".to_string()
        }
        None => return Ok(Vec::new()),
    };
    let bad = || {
        SetupError::Options(format!(
            "--source-ips {spec:?}: use a.b.c.d-a.b.c.e or a comma list"
        ))
    };
    let mut out = Vec::new();
    for part in spec.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (Ipv4Addr, Ipv4Addr) = (
                    a.trim().parse().map_err(|_| bad())?,
                    b.trim().parse().map_err(|_| bad())?,
                );
                let (a, b) = (u32::from(a), u32::from(b));
                if b < a || b - a > 65_535 {
                    return Err(bad());
                }
                out.extend((a..=b).map(Ipv4Addr::from));
            }
            None => out.push(part.trim().parse().map_err(|_| bad())?),
        }
    }
    Ok(out)
}

/// Raises the soft `RLIMIT_NOFILE` to what is needed (up to the hard limit), or says why not.
fn raise_nofile(need: u64) -> Result<(), SetupError> {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a valid pointer to a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) != 0 {
            return Ok(());
        }
        if r.rlim_cur >= need {
            return Ok(());
        }
        let want = libc::rlimit {
            rlim_cur: need.min(r.rlim_max),
            rlim_max: r.rlim_max,
        };
        libc::setrlimit(libc::RLIMIT_NOFILE, &want);
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
    }
    if r.rlim_cur < need {
        return Err(SetupError::Nofile {
            need,
            soft: r.rlim_cur,
            hard: r.rlim_max,
        });
    }
    Ok(())
}

fn thread_main(
    t: usize,
    threads: usize,
    plan: Arc<Plan>,
    start: Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    live: Arc<Live>,
) -> Stats {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("building a load thread runtime");
    let local = tokio::task::LocalSet::new();
    let stats = std::rc::Rc::new(std::cell::RefCell::new(Stats::new(start, plan.bin)));
    local.block_on(&rt, async {
        // Sleeping connections (fleet clients wait up to an interval) learn of the stop through
        // one watch per thread instead of each polling the flag.
        let (stop_tx, stopped) = tokio::sync::watch::channel(false);
        let flag = stop.clone();
        tokio::task::spawn_local(async move {
            while !flag.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let _ = stop_tx.send(true);
        });
        let mut tasks = Vec::new();
        for c in (t..plan.conns).step_by(threads) {
            let (plan, stop, live, stats) =
                (plan.clone(), stop.clone(), live.clone(), stats.clone());
            let stopped = stopped.clone();
            tasks.push(tokio::task::spawn_local(async move {
                connection(c, plan, start, deadline, stop, stopped, live, stats).await;
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    std::rc::Rc::try_unwrap(stats)
        .map(|c| c.into_inner())
        .unwrap_or_else(|rc| rc.borrow().clone())
}

/// When the next request is due: now (closed loop) or on a schedule (open loop, fleet).
struct Pacer {
    mode: Mode,
    next: Instant,
    period: Duration,
    jitter: f64,
    rng: fastrand::Rng,
    /// A ramp: the period follows the offered rate.
    ramp: Option<(Schedule, Instant, f64)>,
}

impl Pacer {
    fn new(plan: &Plan, c: usize, start: Instant) -> Self {
        let mut rng = fastrand::Rng::with_seed(0x5eed ^ c as u64);
        let first = match plan.mode {
            Mode::Closed => start,
            // Spread connections evenly over one period so the rate is smooth, not bursty.
            Mode::Open => start + plan.period.mul_f64(c as f64 / plan.conns as f64),
            // Browsers arrive at random moments of the interval.
            Mode::Fleet => start + plan.period.mul_f64(rng.f64()),
        };
        Self {
            mode: plan.mode,
            next: first,
            period: plan.period,
            jitter: plan.jitter,
            rng,
            ramp: plan.schedule.map(|r| (r, start, plan.conns as f64)),
        }
    }

    /// The intended send time of the next request.
    fn intended(&self) -> Instant {
        self.next
    }

    fn advance(&mut self) {
        self.next = match self.mode {
            Mode::Closed => Instant::now(),
            // The schedule does not slip when the server is slow: that is the point.
            Mode::Open => match self.ramp {
                // Each connection's share of the rate at its own next send.
                Some((r, start, conns)) => {
                    let t = (self.next - start).as_secs_f64();
                    self.next + Duration::from_secs_f64(conns / r.at(t))
                }
                None => self.next + self.period,
            },
            Mode::Fleet => {
                let f = 1.0 + self.jitter * (2.0 * self.rng.f64() - 1.0);
                self.next + self.period.mul_f64(f)
            }
        };
    }
}

#[allow(clippy::too_many_arguments)]
async fn connection(
    c: usize,
    plan: Arc<Plan>,
    start: Instant,
    deadline: Instant,
    stop: Arc<AtomicBool>,
    mut stopped: tokio::sync::watch::Receiver<bool>,
    live: Arc<Live>,
    stats: std::rc::Rc<std::cell::RefCell<Stats>>,
) {
    let mut pacer = Pacer::new(&plan, c, start);
    let mut rng = fastrand::Rng::with_seed(c as u64 * 7919 + 1);
    let sid = rng.u64(..);
    let source = (!plan.sources.is_empty()).then(|| plan.sources[c % plan.sources.len()]);
    let mut stream: Option<Stream> = None;
    let mut out = Vec::with_capacity(1024);
    let mut inbuf = vec![0u8; 16 * 1024];
    let mut n = 0u64;
    // Requests answered on the current connection (a failure on a reused one may be retried).
    let mut used = 0u64;
    let mut unpublished = 0u64;
    let watchdog = tokio::time::sleep(plan.timeout);
    tokio::pin!(watchdog);
    // Fleet clients connect at once and then idle: holding connections is the load.
    if plan.mode == Mode::Fleet {
        match connect(&plan, source, &stats).await {
            Ok(s) => {
                live.connected.fetch_add(1, Ordering::Relaxed);
                stream = Some(s);
            }
            Err(e) => record_error(&stats, &live, e),
        }
        // The first ping is scheduled from when this client got its connection: ten thousand
        // connects at once queue in our own event loop, and that queue is not the server's
        // latency.
        pacer.next = Instant::now() + (pacer.next - start);
    }
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let due = pacer.intended();
        if due >= deadline {
            // A fleet client holds its connection to the end: held connections are the load,
            // and the report samples them until the stop.
            if plan.mode == Mode::Fleet && stream.is_some() {
                let _ = stopped.wait_for(|s| *s).await;
            }
            break;
        }
        if plan.mode != Mode::Closed {
            tokio::select! {
                _ = tokio::time::sleep_until(due.into()) => {}
                _ = stopped.wait_for(|s| *s) => break,
            }
        }
        // Latency is measured from the intended send time in open loop and fleet modes, so a
        // stalled server cannot hide its stall by delaying our sends (coordinated omission).
        // Up to TIMER_SLACK of lateness is the timer's own granularity (Tokio's wheel ticks in
        // milliseconds) and is not charged to the server.
        let t0 = if plan.mode == Mode::Closed {
            Instant::now()
        } else {
            due + Instant::now()
                .saturating_duration_since(due)
                .min(TIMER_SLACK)
        };
        pacer.advance();
        if stream.is_none() {
            match connect(&plan, source, &stats).await {
                Ok(s) => {
                    live.connected.fetch_add(1, Ordering::Relaxed);
                    stream = Some(s);
                }
                Err(e) => {
                    record_error(&stats, &live, e);
                    // Do not spin on a refused connect in closed loop.
                    if plan.mode == Mode::Closed {
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    continue;
                }
            }
        }
        n += 1;
        // A fixed request is the same bytes every time: formatted once.
        if !plan.spec.fixed || out.is_empty() {
            plan.spec.write(&mut out, sid, n, &mut rng);
        }
        let s = stream.as_mut().expect("connected above");
        // One timer per connection, re-armed only when less than `timeout` is left: arming a
        // fresh timer for every request costs a timer-wheel insert and remove per request,
        // which at 100k requests/s is a measurable share of a core. A request therefore times
        // out after between 1× and 1.5× `timeout`.
        // (In a closed loop t0 was read just now: one clock read fewer per request.)
        let now = if plan.mode == Mode::Closed {
            t0
        } else {
            Instant::now()
        };
        if watchdog.deadline() < (now + plan.timeout).into() {
            watchdog
                .as_mut()
                .reset((now + plan.timeout + plan.timeout / 2).into());
        }
        let mut answered = false;
        let mut res = tokio::select! {
            biased;
            r = exchange(s, &out, &mut inbuf, &mut answered) => Some(r),
            _ = &mut watchdog => None,
        };
        // A browser sends a request again, once, on a new connection when a reused keep-alive
        // connection failed before any answer byte: the server closed it as it sat idle (an
        // idle timeout, a drain, a restart). The fleet does the same, and counts it.
        if plan.mode == Mode::Fleet
            && !plan.no_retry_reused
            && used > 0
            && !answered
            && matches!(res, Some(Err(ErrorKind::Closed | ErrorKind::Io(_))))
        {
            stats.borrow_mut().retried += 1;
            stream = None;
            live.connected.fetch_sub(1, Ordering::Relaxed);
            match connect(&plan, source, &stats).await {
                Ok(mut s) => {
                    live.connected.fetch_add(1, Ordering::Relaxed);
                    res = tokio::select! {
                        biased;
                        r = exchange(&mut s, &out, &mut inbuf, &mut answered) => Some(r),
                        _ = &mut watchdog => None,
                    };
                    used = 0;
                    stream = Some(s);
                }
                Err(e) => res = Some(Err(e)),
            }
        }
        let (keep, outcome) = match res {
            None => (false, Err(ErrorKind::Timeout)),
            Some(Err(e)) => (false, Err(e)),
            Some(Ok((head, bytes))) => (!head.close && !plan.spec.close, Ok((head.status, bytes))),
        };
        match outcome {
            Ok((status, bytes)) => {
                let mut st = stats.borrow_mut();
                st.record(t0, Instant::now(), status, bytes);
                // The shared counter is for the progress line: in a closed loop it is
                // updated in batches so threads do not contend on its cache line.
                unpublished += 1;
                if unpublished >= 32 || plan.mode != Mode::Closed {
                    live.requests.fetch_add(unpublished, Ordering::Relaxed);
                    unpublished = 0;
                }
            }
            Err(e) => record_error(&stats, &live, e),
        }
        if !keep {
            if stream.take().is_some() {
                live.connected.fetch_sub(1, Ordering::Relaxed);
            }
            used = 0;
        } else {
            used += 1;
        }
    }
    if stream.is_some() {
        live.connected.fetch_sub(1, Ordering::Relaxed);
    }
    live.requests.fetch_add(unpublished, Ordering::Relaxed);
}

/// Error reasons, counted by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// `connect(2)` failed with this errno name.
    Connect(&'static str),
    /// Reading or writing failed with this errno name.
    Io(&'static str),
    /// The server closed the connection before answering.
    Closed,
    /// Connect, write or read took longer than `--timeout`.
    Timeout,
    /// The response was not HTTP/1.x.
    BadResponse,
    /// A chunked response (not supported).
    Chunked,
    /// The TLS handshake failed.
    Tls(&'static str),
}

impl ErrorKind {
    /// The label used in reports.
    pub fn label(self) -> String {
        match self {
            ErrorKind::Connect(e) => format!("connect {e}"),
            ErrorKind::Io(e) => format!("io {e}"),
            ErrorKind::Closed => "closed before response".into(),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::BadResponse => "bad response".into(),
            ErrorKind::Chunked => "chunked response".into(),
            ErrorKind::Tls(e) => format!("tls {e}"),
        }
    }
}

fn errno_name(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc::EADDRNOTAVAIL) => "EADDRNOTAVAIL (ephemeral ports exhausted)",
        Some(libc::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc::ECONNRESET) => "ECONNRESET",
        Some(libc::ECONNABORTED) => "ECONNABORTED",
        Some(libc::EPIPE) => "EPIPE",
        Some(libc::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc::EMFILE) => "EMFILE (raise ulimit -n)",
        Some(libc::ENFILE) => "ENFILE (fs.file-max)",
        Some(libc::ENETUNREACH) => "ENETUNREACH",
        Some(libc::EHOSTUNREACH) => "EHOSTUNREACH",
        Some(libc::EADDRINUSE) => "EADDRINUSE",
        Some(libc::ENOBUFS) => "ENOBUFS",
        _ => "other",
    }
}

fn record_error(stats: &std::rc::Rc<std::cell::RefCell<Stats>>, live: &Live, e: ErrorKind) {
    stats.borrow_mut().error(e.label(), Instant::now());
    live.errors.fetch_add(1, Ordering::Relaxed);
}

/// A new connection to the plan's target, with its TLS handshake (timed and counted) on
/// https://.
async fn connect(
    plan: &Plan,
    source: Option<Ipv4Addr>,
    stats: &std::rc::Rc<std::cell::RefCell<Stats>>,
) -> Result<Stream, ErrorKind> {
    let s = connect_tcp(plan.target, source, plan.timeout).await?;
    let Some(tls) = &plan.tls else {
        return Ok(Stream::Plain(s));
    };
    let t0 = Instant::now();
    let s = tokio::time::timeout(plan.timeout, tls.connector.connect(tls.name.clone(), s))
        .await
        .map_err(|_| ErrorKind::Timeout)?
        .map_err(|e| ErrorKind::Tls(tls_error_name(&e)))?;
    let resumed = s.get_ref().1.handshake_kind() == Some(rustls::HandshakeKind::Resumed);
    stats.borrow_mut().handshake(t0, Instant::now(), resumed);
    Ok(Stream::Tls(Box::new(s)))
}

/// A bounded label for a failed handshake.
fn tls_error_name(e: &std::io::Error) -> &'static str {
    match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        Some(rustls::Error::InvalidCertificate(_)) => "certificate not trusted",
        Some(rustls::Error::AlertReceived(_)) => "alert from the server",
        Some(rustls::Error::PeerIncompatible(_)) => "no shared parameters",
        Some(_) => "protocol error",
        None => errno_name(e),
    }
}

async fn connect_tcp(
    target: SocketAddr,
    source: Option<Ipv4Addr>,
    timeout: Duration,
) -> Result<tokio::net::TcpStream, ErrorKind> {
    let sock = if target.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .map_err(|e| ErrorKind::Connect(errno_name(&e)))?;
    if let Some(ip) = source {
        sock.bind(SocketAddr::new(IpAddr::V4(ip), 0))
            .map_err(|e| ErrorKind::Connect(errno_name(&e)))?;
    }
    let s = tokio::time::timeout(timeout, sock.connect(target))
        .await
        .map_err(|_| ErrorKind::Timeout)?
        .map_err(|e| ErrorKind::Connect(errno_name(&e)))?;
    let _ = s.set_nodelay(true);
    Ok(s)
}

/// Writes one request and reads one response; returns its head and the bytes read.
/// One request and its answer. `answered` is set once a byte of the answer has come: a failure
/// before that, on a reused connection, is what a browser sends again.
async fn exchange(
    s: &mut Stream,
    req: &[u8],
    buf: &mut [u8],
    answered: &mut bool,
) -> Result<(Head, u64), ErrorKind> {
    *answered = false;
    s.write_all(req)
        .await
        .map_err(|e| ErrorKind::Io(errno_name(&e)))?;
    if matches!(s, Stream::Tls(_)) {
        s.flush().await.map_err(|e| ErrorKind::Io(errno_name(&e)))?;
    }
    let mut filled = 0;
    loop {
        if filled == buf.len() {
            return Err(ErrorKind::BadResponse);
        }
        let n = s
            .read(&mut buf[filled..])
            .await
            .map_err(|e| ErrorKind::Io(errno_name(&e)))?;
        if n == 0 {
            return Err(ErrorKind::Closed);
        }
        *answered = true;
        filled += n;
        match http::parse_head(&buf[..filled], false) {
            Ok(None) => continue,
            Err(ParseError::Malformed) => return Err(ErrorKind::BadResponse),
            Err(ParseError::Chunked) => return Err(ErrorKind::Chunked),
            Ok(Some(head)) => {
                let total = head.head_len + head.content_length;
                // Drain the body (small for beacons; a GIF is 43 bytes).
                let mut have = filled;
                while have < total {
                    let want = (total - have).min(buf.len());
                    let n = s
                        .read(&mut buf[..want])
                        .await
                        .map_err(|e| ErrorKind::Io(errno_name(&e)))?;
                    if n == 0 {
                        return Err(ErrorKind::Closed);
                    }
                    have += n;
                }
                return Ok((head, have as u64));
            }
        }
    }
}

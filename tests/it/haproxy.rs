//! Behind a real HAProxy (Debian's package) running `deploy/haproxy.cfg`: PROXY v2 from the load
//! balancer names the client, and a collector that gets SIGTERM drains out of the pool while a
//! client sending continuously sees zero errors and every 2xx beacon reaches the output.

use crate::common::*;
use beacon_collector::config::{Config, ForwardMode};
use beacon_collector::ingest::proxy::Mode;
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// HAProxy running a deployment example, stopped on drop.
pub(crate) struct Haproxy {
    child: Child,
    pub(crate) addr: SocketAddr,
}

impl Haproxy {
    fn start(collectors: [SocketAddr; 2]) -> Haproxy {
        Self::start_with(collectors, &[])
    }

    /// `deploy/haproxy.cfg` in front of `collectors`, with the deployment's timings scaled
    /// down to test time (and `env` over them).
    fn start_with(collectors: [SocketAddr; 2], env: &[(&str, &str)]) -> Haproxy {
        let (c1, c2) = (collectors[0].to_string(), collectors[1].to_string());
        let mut all = vec![
            ("COLLECTOR_1", c1.as_str()),
            ("COLLECTOR_2", c2.as_str()),
            ("CLIENT_IDLE", "30s"),
            ("SERVER_IDLE", "10s"),
        ];
        all.extend_from_slice(env);
        Self::run("haproxy.cfg", "BEACON_BIND", &all)
    }

    /// `deploy/<file>` with `env`, its frontend bound (through `bind_var`) to a free port;
    /// health checks every 200 ms, down after 2.
    pub(crate) fn run(file: &str, bind_var: &str, env: &[(&str, &str)]) -> Haproxy {
        let bin = ["/usr/sbin/haproxy", "/usr/local/sbin/haproxy"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())
            .expect("haproxy not found: apt-get install haproxy (.ci/run installs it)");
        let addr = free_port();
        let cfg = format!("{}/deploy/{file}", env!("CARGO_MANIFEST_DIR"));
        let child = Command::new(bin)
            .args(["-db", "-f", &cfg])
            .env(bind_var, addr.to_string())
            .env("CHECK_INTER", "200ms")
            .env("CHECK_FALL", "2")
            .env("CHECK_RISE", "2")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok());
        Haproxy { child, addr }
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap()
}

fn start_collector(dir: &std::path::Path, dereg: u64) -> (Binary, SocketAddr, Config) {
    let mut c = test_config(dir);
    c.forward.mode = ForwardMode::Embedded;
    c.client_ip.proxy_protocol = Mode::V2;
    c.shutdown.deregistration_delay_seconds = dereg;
    let bin = Binary::serve(dir, &c);
    let addr = bin.listening();
    (bin, addr, c)
}

/// What a continuously sending client saw.
#[derive(Default)]
pub(crate) struct Seen {
    pub ok: Vec<String>,
    pub bad_status: Vec<u16>,
    pub transport_errors: u64,
}

/// `clients` keep-alive clients sending beacons as fast as answers come, each counting every
/// failure: a status other than 204, a connection that fails or closes mid-request.
pub(crate) fn continuous(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
) -> Vec<std::thread::JoinHandle<Seen>> {
    continuous_with(addr, clients, stop, dial_plain(Duration::from_secs(10)))
}

/// [`continuous`] over connections `dial` opens (plain or TLS).
pub(crate) fn continuous_with(
    addr: SocketAddr,
    clients: usize,
    stop: Arc<AtomicBool>,
    dial: Dial,
) -> Vec<std::thread::JoinHandle<Seen>> {
    (0..clients)
        .map(|c| {
            let stop = stop.clone();
            let dial = dial.clone();
            std::thread::spawn(move || {
                let mut seen = Seen::default();
                let mut conn: Option<Box<dyn Requester>> = None;
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    let c0 = match conn.as_mut() {
                        Some(c) => c,
                        None => match dial(addr) {
                            Some(r) => conn.insert(r),
                            None => {
                                seen.transport_errors += 1;
                                std::thread::sleep(Duration::from_millis(10));
                                continue;
                            }
                        },
                    };
                    let key = format!("{c}-{n}");
                    n += 1;
                    let raw = format!("GET /beacon?k={key} HTTP/1.1\r\nHost: t\r\n\r\n");
                    if !c0.send(raw.as_bytes()) {
                        seen.transport_errors += 1;
                        conn = None;
                        continue;
                    }
                    match c0.read_resp() {
                        Some(r) => {
                            // Like any HTTP client: a server that says it closes is not reused.
                            if r.header("connection")
                                .is_some_and(|v| v.eq_ignore_ascii_case("close"))
                            {
                                conn = None;
                            }
                            if r.status == 204 {
                                seen.ok.push(key);
                            } else {
                                seen.bad_status.push(r.status);
                            }
                        }
                        None => {
                            seen.transport_errors += 1;
                            conn = None;
                        }
                    }
                    // A beacon client, not a benchmark: a few hundred per second in all.
                    std::thread::sleep(Duration::from_millis(5));
                }
                seen
            })
        })
        .collect()
}

/// Stops the clients and adds up what they saw.
pub(crate) fn stop_clients(stop: &AtomicBool, clients: Vec<std::thread::JoinHandle<Seen>>) -> Seen {
    stop.store(true, Ordering::Relaxed);
    let mut seen = Seen::default();
    for c in clients {
        let s = c.join().unwrap();
        seen.ok.extend(s.ok);
        seen.bad_status.extend(s.bad_status);
        seen.transport_errors += s.transport_errors;
    }
    seen
}

/// Both collectors' outputs got beacons, and every key answered 204 is in one of them;
/// returns all their records.
pub(crate) fn every_204_in_one_of(
    seen: &Seen,
    first: &std::path::Path,
    second: &std::path::Path,
) -> Vec<serde_json::Value> {
    let mut recs = records(first);
    let from_first = recs.len();
    recs.extend(records(second));
    assert!(
        from_first > 0 && recs.len() > from_first,
        "both collectors served: first {from_first}, all {}",
        recs.len()
    );
    let got: std::collections::HashSet<&str> = recs
        .iter()
        .filter_map(|r| param(r, "k").and_then(|v| v.as_str()))
        .collect();
    let lost: Vec<&String> = seen
        .ok
        .iter()
        .filter(|k| !got.contains(k.as_str()))
        .collect();
    assert!(
        lost.is_empty(),
        "lost {} of {} 204s, e.g. {:?}",
        lost.len(),
        seen.ok.len(),
        &lost[..lost.len().min(5)]
    );
    recs
}

#[test]
fn drain_behind_haproxy_loses_nothing_and_shows_no_errors() {
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // Deregistration delay 2 s > fall x inter (2 x 200 ms): HAProxy sees /healthz fail and
    // moves traffic before the collector stops accepting.
    let (mut a, addr_a, ca) = start_collector(da.path(), 2);
    let (mut b, addr_b, cb) = start_collector(db.path(), 0);
    let lb = Haproxy::start([addr_a, addr_b]);

    let stop = Arc::new(AtomicBool::new(false));
    let clients = continuous(lb.addr, 4, stop.clone());
    std::thread::sleep(Duration::from_secs(2));

    let sigterm_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    a.signal(libc::SIGTERM);
    let t0 = Instant::now();
    let status = a.wait(Duration::from_secs(30));
    let a_exit = t0.elapsed();
    let log = a.log.lock().unwrap().join("\n");
    assert!(!log.contains("did not stop within"), "{log}");
    assert!(status.success(), "collector A exit status {status}");
    assert!(
        t0.elapsed() >= Duration::from_secs(2),
        "A did not wait out its deregistration delay"
    );
    // Traffic carries on through B alone.
    std::thread::sleep(Duration::from_secs(1));
    let seen = stop_clients(&stop, clients);
    b.signal(libc::SIGTERM);
    assert!(b.wait(Duration::from_secs(30)).success());

    eprintln!(
        "drain: {} beacons answered 204, {} other statuses, {} transport errors, A exited after {:?}",
        seen.ok.len(),
        seen.bad_status.len(),
        seen.transport_errors,
        a_exit
    );
    assert_eq!(
        (seen.bad_status.len(), seen.transport_errors),
        (0, 0),
        "client-visible errors during the drain: statuses {:?}",
        &seen.bad_status[..seen.bad_status.len().min(10)]
    );
    assert!(seen.ok.len() > 200, "only {} beacons sent", seen.ok.len());
    let recs = every_204_in_one_of(
        &seen,
        &ca.processor.files.data_dir,
        &cb.processor.files.data_dir,
    );
    // The health check moved the traffic, not the closing listener: HAProxy marks A down
    // after two failed checks (~0.4 s), so A gets nothing new in the second half of its 2 s
    // deregistration delay, while it would keep receiving until it stops accepting if
    // /healthz did not fail.
    let cutoff = beacon_collector::time::rfc3339_micros(sigterm_us + 1_200_000);
    let late = records(&ca.processor.files.data_dir)
        .iter()
        .filter(|r| {
            r["received_at"]
                .as_str()
                .is_some_and(|t| t > cutoff.as_str())
        })
        .count();
    assert_eq!(late, 0, "beacons reached A more than 1.2 s after SIGTERM");
    // HAProxy's PROXY v2 header named the client (the test, on loopback).
    let beacons: Vec<_> = recs.iter().filter(|r| param(r, "k").is_some()).collect();
    assert!(beacons
        .iter()
        .all(|r| r["client_ip_source"] == "proxy_v2" && r["client_ip"] == "127.0.0.1"));
}

/// A TCP relay that delays every chunk in both directions: the network between a load balancer
/// and its targets. On loopback a FIN arrives in microseconds and HAProxy drops idle
/// connections the server closed before it reuses them; across a real network the FIN is in
/// flight while the balancer already sends the next request down that connection.
fn delaying_relay(target: SocketAddr, delay: Duration) -> SocketAddr {
    let std_l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_l.set_nonblocking(true).unwrap();
    let addr = std_l.local_addr().unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let l = tokio::net::TcpListener::from_std(std_l).unwrap();
            loop {
                let Ok((c, _)) = l.accept().await else {
                    continue;
                };
                tokio::spawn(async move {
                    let Ok(s) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let ((cr, cw), (sr, sw)) = (c.into_split(), s.into_split());
                    tokio::join!(pipe(cr, sw, delay), pipe(sr, cw, delay));
                });
            }
        });
    });
    addr
}

async fn pipe(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    delay: Duration,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let n = r.read(&mut buf).await.unwrap_or(0);
        tokio::time::sleep(delay).await;
        if n == 0 || w.write_all(&buf[..n]).await.is_err() {
            let _ = w.shutdown().await;
            return;
        }
    }
}

/// Client-visible failures of a fleet of keep-alive browsers pinging every second through
/// HAProxy (deploy/haproxy.cfg) to one collector 10 ms away, with the collector's idle timeout
/// `idle` seconds.
fn fleet_errors_through_haproxy(idle: u64) -> (u64, u64) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.client_ip.proxy_protocol = Mode::V2;
    c.http.idle_timeout_seconds = idle;
    // Below the collector's on purpose in the first case: what `validate()` would refuse.
    c.http.lb_idle_timeout_seconds = 0;
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let relay = delaying_relay(srv.addr, Duration::from_millis(10));
    // One collector behind both server lines: a health check that times out on a busy box
    // (two in a row at the drain tests' 200 ms) would mark it down and every request 503,
    // which is not the race measured here. So checks here can fail for 100 s first.
    let lb = Haproxy::start_with(
        [relay, relay],
        &[
            ("SERVER_IDLE", "10s"),
            ("CHECK_INTER", "1s"),
            ("CHECK_FALL", "100"),
        ],
    );
    let opts = <beacon_loadgen::Opts as clap::Parser>::try_parse_from([
        "beacon-loadgen",
        "--clients",
        "300",
        "--interval",
        "1s",
        "--jitter-percent",
        "2",
        // What the balancer hands its clients, counted as it is: a browser would send again
        // a request that failed on a reused connection before any answer byte, which hides
        // part of the race from its user but not from the balancer's logs.
        "--no-retry-reused",
        "-d",
        "12s",
        &format!("http://{}/beacon", lb.addr),
    ])
    .unwrap();
    let report =
        beacon_loadgen::run(&opts, Arc::new(AtomicBool::new(false)), Arc::default()).unwrap();
    drop(lb);
    srv.shutdown(beacon_collector::Shutdown::Graceful).unwrap();
    stage.stop();
    let non_2xx: u64 = report
        .status
        .iter()
        .filter(|(k, _)| !k.starts_with('2'))
        .map(|(_, v)| v)
        .sum();
    eprintln!(
        "idle timeout {idle}s behind HAProxy: {} requests, {} errors {:?}, statuses {:?}",
        report.requests, report.errors_total, report.errors, report.status
    );
    (report.requests, report.errors_total + non_2xx)
}

/// Seed 002: a collector idle timeout below the load balancer's loses requests whenever the
/// balancer reuses a connection the collector is closing; the default ordering (collector 75 s
/// above every balancer timeout) loses none. This is what `validate()` enforces.
#[test]
fn idle_timeout_race_shows_only_in_the_wrong_order() {
    let (n_wrong, err_wrong) = fleet_errors_through_haproxy(1);
    let (n_right, err_right) = fleet_errors_through_haproxy(75);
    assert!(
        n_wrong > 2000 && n_right > 2000,
        "{n_wrong} / {n_right} requests"
    );
    assert!(
        err_wrong > 0,
        "collector idle 1 s under a reusing LB: expected client-visible errors"
    );
    assert_eq!(err_right, 0, "default ordering: no client-visible errors");
}

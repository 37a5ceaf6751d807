//! Test harness: a real collector (`run()` in-process, or the real binary) on port 0, a real
//! processing stage (the real binary) on a unix socket in a temp dir, a tiny raw HTTP client,
//! and a reader for the NDJSON output.

use beacon_collector::config::{Config, ForwardMode};
use beacon_collector::{Listeners, RunError, RunReport, Shutdown};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub mod tls;

pub const BIN: &str = env!("CARGO_BIN_EXE_beacon-collector");

/// A loopback port nobody listens on (bound and released: free when the caller binds it,
/// unless another process takes it in between).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The example program `name` from `examples/` (built by `cargo test`; built here when
/// missing).
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let debug = exe.parent().unwrap().parent().unwrap();
    let bin = debug.join("examples").join(name);
    if !bin.exists() {
        let ok = Command::new(env!("CARGO"))
            .args(["build", "--example", name])
            .status()
            .unwrap();
        assert!(ok.success(), "building examples/{name}.rs");
    }
    bin
}

/// Runs the real processing stage (`process`) on `c` (written into `dir`) until it exits by
/// itself; returns whether it succeeded and what it printed (stdout, then stderr).
pub fn process_once(dir: &Path, c: &Config) -> (bool, String) {
    let cfg = write_config(dir, c);
    let out = Command::new(BIN)
        .args(["process", "-c", cfg.to_str().unwrap()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// A server process of the tests (a broker): its output appended to `log`, stopped with a
/// signal, and killed when dropped.
pub struct Daemon {
    pub log: PathBuf,
    pub child: Option<Child>,
}

impl Daemon {
    pub fn new(log: PathBuf) -> Daemon {
        Daemon { log, child: None }
    }

    /// Starts `cmd` (its output to the log); `missing` says how to install it.
    pub fn spawn(&mut self, cmd: &mut Command, missing: &str) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = cmd
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect(missing);
        self.child = Some(child);
    }

    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Sends `sig` and reaps the process.
    pub fn signal(&mut self, sig: i32) {
        if let Some(mut c) = self.child.take() {
            kill(c.id(), sig);
            let _ = c.wait();
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.signal(libc::SIGKILL);
    }
}

/// Waits until something accepts connections on loopback `port`.
pub fn wait_listening(port: u16, limit: Duration) {
    wait_until(limit, || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
}

/// Sends `sig` to the process `pid` (one of this test's children).
pub fn kill(pid: u32, sig: i32) {
    // SAFETY: kill(2) with a valid signal number has no memory effects; the pid is a child
    // this test started and has not reaped.
    unsafe {
        libc::kill(pid as libc::pid_t, sig);
    }
}

/// A config for tests: loopback port 0, no admin listener, external stage in `dir`, short
/// shutdown phases.
pub fn test_config(dir: &Path) -> Config {
    let mut c = Config::default();
    c.server.listen = "127.0.0.1:0".parse().unwrap();
    c.server.workers = 2;
    c.admin.enabled = false;
    c.processor.admin.enabled = false;
    c.forward.mode = ForwardMode::External;
    c.forward.socket_path = dir.join("stage.sock");
    c.forward.reconnect_max_ms = 200;
    c.processor.files.data_dir = dir.join("data");
    c.spool.dir = dir.join("spool");
    c.forward.restart_delay_ms = 100;
    c.shutdown.deregistration_delay_seconds = 0;
    c.shutdown.drain_timeout_seconds = 5;
    c.shutdown.flush_timeout_seconds = 20;
    c
}

pub fn write_config(dir: &Path, c: &Config) -> PathBuf {
    let p = dir.join("collector.toml");
    std::fs::write(&p, toml::to_string(c).unwrap()).unwrap();
    p
}

/// The real processing stage binary.
pub struct Stage {
    pub child: Child,
}

impl Stage {
    pub fn start(dir: &Path, c: &Config) -> Stage {
        let cfg = write_config(dir, c);
        // Appended to across restarts; `Stage::log` reads it when a test fails.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("stage.log"))
            .unwrap();
        let child = Command::new(BIN)
            .args(["process", "--log-format", "json", "-c"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        let socket = c.forward.socket_path.clone();
        wait_until(Duration::from_secs(10), || {
            std::os::unix::net::UnixStream::connect(&socket).is_ok()
        });
        Stage { child }
    }

    /// The last `lines` lines the stages started in `dir` logged.
    pub fn log(dir: &Path, lines: usize) -> String {
        let text = std::fs::read_to_string(dir.join("stage.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn signal(&self, sig: i32) {
        kill(self.child.id(), sig);
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(mut self) {
        self.signal(libc::SIGTERM);
        let status = self.child.wait().unwrap();
        assert!(status.success(), "stage exited with {status}");
    }
}

impl Drop for Stage {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `run()` in-process on its own runtime thread.
pub struct Server {
    pub addr: SocketAddr,
    /// The HTTPS listener, when `tls.enabled`.
    pub tls_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<Shutdown>>,
    thread: Option<std::thread::JoinHandle<Result<RunReport, RunError>>>,
}

impl Server {
    pub fn start(c: Config) -> Server {
        let listeners = Listeners::bind(&c).unwrap();
        let addr = listeners.beacon_addr().unwrap();
        let tls_addr = listeners.tls_addr();
        let (tx, rx) = tokio::sync::oneshot::channel();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(beacon_collector::run(c, listeners, async move {
                rx.await.unwrap_or(Shutdown::Fast)
            }))
        });
        Server {
            addr,
            tls_addr,
            stop: Some(tx),
            thread: Some(thread),
        }
    }

    /// Shuts down and returns what `run` returned.
    pub fn shutdown(mut self, kind: Shutdown) -> Result<RunReport, RunError> {
        let _ = self.stop.take().unwrap().send(kind);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(Shutdown::Fast);
        }
    }
}

/// Polls `f` every 20 ms until it holds; fails the test after `limit`.
pub fn wait_until(limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "condition not met within {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A client connection speaking raw HTTP/1.1, in the clear or over TLS.
pub trait Requester: Send {
    /// Writes `raw`; false when the connection failed.
    fn send(&mut self, raw: &[u8]) -> bool;
    /// Reads one answer (not to a HEAD); `None` when the connection closed first.
    fn read_resp(&mut self) -> Option<Resp>;
}

/// Opens a [`Requester`] to an address (`None`: the connect failed).
pub type Dial = std::sync::Arc<dyn Fn(SocketAddr) -> Option<Box<dyn Requester>> + Send + Sync>;

/// Plain TCP connections whose reads give up after `read_timeout`.
pub fn dial_plain(read_timeout: Duration) -> Dial {
    std::sync::Arc::new(move |a| {
        let s = TcpStream::connect_timeout(&a, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(read_timeout)).ok()?;
        Some(Box::new(Conn {
            rd: BufReader::new(s),
        }) as Box<dyn Requester>)
    })
}

impl Requester for Conn {
    fn send(&mut self, raw: &[u8]) -> bool {
        self.rd.get_mut().write_all(raw).is_ok()
    }
    fn read_resp(&mut self) -> Option<Resp> {
        self.read(false)
    }
}

/// A keep-alive connection speaking raw HTTP/1.1.
pub struct Conn {
    pub rd: BufReader<TcpStream>,
}

impl Conn {
    pub fn open(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            rd: BufReader::new(s),
        }
    }

    pub fn send(&mut self, raw: &[u8]) {
        self.rd.get_mut().write_all(raw).unwrap();
    }

    /// Reads one response; `None` if the server closed the connection first.
    pub fn read(&mut self, head: bool) -> Option<Resp> {
        read_resp(&mut self.rd, head)
    }

    pub fn request(&mut self, raw: &[u8]) -> Option<Resp> {
        self.send(raw);
        self.read(raw.starts_with(b"HEAD "))
    }

    /// True when the server has closed the connection (EOF) within `limit`.
    pub fn closed_within(&mut self, limit: Duration) -> bool {
        self.rd.get_ref().set_read_timeout(Some(limit)).unwrap();
        let mut b = [0u8; 1];
        let r = self.rd.read(&mut b);
        self.rd
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        matches!(r, Ok(0))
            || matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset)
    }
}

/// Reads one response off `rd` (`head`: the answer to a HEAD, no body); `None` if the
/// server closed the connection first.
pub fn read_resp(rd: &mut impl BufRead, head: bool) -> Option<Resp> {
    let mut line = String::new();
    match rd.read_line(&mut line) {
        Ok(0) | Err(_) => return None,
        Ok(_) => {}
    }
    let status: u16 = line.split_whitespace().nth(1)?.parse().ok()?;
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        rd.read_line(&mut h).ok()?;
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut r = Resp {
        status,
        headers,
        body: Vec::new(),
    };
    let len: usize = r.header("content-length").map_or(0, |v| v.parse().unwrap());
    if !head && len > 0 {
        r.body = vec![0; len];
        rd.read_exact(&mut r.body).ok()?;
    }
    Some(r)
}

/// One request on a fresh connection.
pub fn req(addr: SocketAddr, raw: &str) -> Resp {
    Conn::open(addr)
        .request(raw.as_bytes())
        .expect("a response")
}

pub fn get(addr: SocketAddr, target: &str) -> Resp {
    req(
        addr,
        &format!("GET {target} HTTP/1.1\r\nHost: t\r\nUser-Agent: test-ua\r\n\r\n"),
    )
}

pub fn post(addr: SocketAddr, target: &str, ctype: &str, body: &[u8]) -> Resp {
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    Conn::open(addr).request(&raw).expect("a response")
}

/// A POST whose body is coded with `coding` (`Content-Encoding`).
pub fn post_coded(addr: SocketAddr, target: &str, ctype: &str, coding: &str, body: &[u8]) -> Resp {
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nHost: t\r\nContent-Type: {ctype}\r\nContent-Encoding: {coding}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    Conn::open(addr).request(&raw).expect("a response")
}

/// Every NDJSON record under `dir` (finished and open files).
pub fn records(dir: &Path) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(dir) else {
        return out;
    };
    let mut paths: Vec<_> = rd.map(|e| e.unwrap().path()).collect();
    paths.sort();
    for p in paths {
        let text = std::fs::read_to_string(&p).unwrap();
        for line in text.lines() {
            out.push(serde_json::from_str(line).unwrap_or_else(|e| panic!("{p:?}: {e}: {line}")));
        }
    }
    out
}

pub fn unique_ids(recs: &[serde_json::Value]) -> std::collections::HashSet<String> {
    recs.iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect()
}

/// Param value by name from a record.
pub fn param<'a>(rec: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    rec["params"]
        .as_array()?
        .iter()
        .find(|p| p[0] == name)
        .map(|p| &p[1])
}

/// The real `serve` binary, with its JSON log on stderr read line by line.
pub struct Binary {
    pub child: Child,
    pub log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Binary {
    pub fn start(dir: &Path, args: &[&str]) -> Binary {
        let mut child = Command::new(BIN)
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                log2.lock().unwrap().push(line);
            }
        });
        Binary { child, log }
    }

    /// The real `serve` binary on `c` (written into `dir`, which is also its working
    /// directory), logging JSON. Starting it again on the same `dir` and config is a restart.
    pub fn serve(dir: &Path, c: &Config) -> Binary {
        let cfg = write_config(dir, c);
        Binary::start(
            dir,
            &["serve", "--log-format", "json", "-c", cfg.to_str().unwrap()],
        )
    }

    /// Waits for the "listening" line and returns the beacon address it names.
    pub fn listening(&self) -> SocketAddr {
        self.wait_for("listening", Duration::from_secs(10))["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Waits for the "listening" line and returns the HTTPS address it names.
    pub fn https(&self) -> SocketAddr {
        self.wait_for("listening", Duration::from_secs(10))["https"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Waits for the "admin listening" line and returns the metrics address it names.
    pub fn admin(&self) -> SocketAddr {
        self.wait_for("admin listening", Duration::from_secs(10))["addr"]
            .as_str()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// Waits for the first JSON log line whose message starts with `msg` and returns it.
    pub fn wait_for(&self, msg: &str, limit: Duration) -> serde_json::Value {
        self.wait_for_nth(msg, 1, limit)
    }

    /// Waits until `n` log lines have a message starting with `msg`; returns the n-th.
    pub fn wait_for_nth(&self, msg: &str, n: usize, limit: Duration) -> serde_json::Value {
        let deadline = Instant::now() + limit;
        loop {
            let found: Vec<serde_json::Value> = self
                .log
                .lock()
                .unwrap()
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|v| v["message"].as_str().is_some_and(|m| m.starts_with(msg)))
                .collect();
            if found.len() >= n {
                return found[n - 1].clone();
            }
            assert!(
                Instant::now() < deadline,
                "no log line {msg:?} (#{n}); log: {:#?}",
                self.log.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn signal(&self, sig: i32) {
        kill(self.child.id(), sig);
    }

    pub fn wait(&mut self, limit: Duration) -> std::process::ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                start.elapsed() < limit,
                "binary did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Steady beacon load from a few keep-alive clients. Each beacon carries a unique key
/// (`k=<client>-<n>`); the keys answered 204 are remembered, so a test can check that each
/// one reached the output (not just that the counts match).
pub struct Load {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// 204s so far, every client together.
    accepted: std::sync::Arc<std::sync::atomic::AtomicU64>,
    threads: Vec<std::thread::JoinHandle<(Vec<String>, u64)>>,
    pub addr: std::sync::Arc<std::sync::Mutex<SocketAddr>>,
}

impl Load {
    pub fn start(addr: SocketAddr, clients: usize) -> Load {
        Self::paced(addr, clients, Duration::ZERO)
    }

    /// Like `start`, each client pausing `pause` after every answer (a bounded rate, for
    /// tests whose downstream is slower than the collector).
    pub fn paced(addr: SocketAddr, clients: usize, pause: Duration) -> Load {
        Self::with(addr, clients, pause, dial_plain(Duration::from_secs(5)))
    }

    /// Like `start`, over HTTPS (`tls::dial`).
    pub fn tls(addr: SocketAddr, clients: usize, dial: Dial) -> Load {
        Self::with(addr, clients, Duration::ZERO, dial)
    }

    fn with(addr: SocketAddr, clients: usize, pause: Duration, dial: Dial) -> Load {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let shared_addr = std::sync::Arc::new(std::sync::Mutex::new(addr));
        let accepted = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let threads = (0..clients)
            .map(|c| {
                let stop = stop.clone();
                let accepted = accepted.clone();
                let addr = shared_addr.clone();
                let dial = dial.clone();
                std::thread::spawn(move || {
                    let mut ok = Vec::new();
                    let mut other = 0u64;
                    let mut conn: Option<Box<dyn Requester>> = None;
                    let mut n = 0u64;
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let c0 = match conn.as_mut() {
                            Some(c) => c,
                            None => {
                                let a = *addr.lock().unwrap();
                                match dial(a) {
                                    Some(r) => conn.insert(r),
                                    None => {
                                        std::thread::sleep(Duration::from_millis(20));
                                        continue;
                                    }
                                }
                            }
                        };
                        let key = format!("{c}-{n}");
                        n += 1;
                        let raw = format!("GET /beacon?k={key}&t=1 HTTP/1.1\r\nHost: t\r\n\r\n");
                        if !c0.send(raw.as_bytes()) {
                            conn = None;
                            continue;
                        }
                        if !pause.is_zero() {
                            std::thread::sleep(pause);
                        }
                        match c0.read_resp() {
                            Some(r) if r.status == 204 => {
                                ok.push(key);
                                accepted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            }
                            Some(r) => {
                                other += 1;
                                if r.header("connection") == Some("close") {
                                    conn = None;
                                }
                                std::thread::sleep(Duration::from_millis(5));
                            }
                            None => conn = None,
                        }
                    }
                    (ok, other)
                })
            })
            .collect();
        Load {
            stop,
            accepted,
            threads,
            addr: shared_addr,
        }
    }

    /// Waits until `n` more beacons were answered 204: "let the load run" as a condition, so
    /// a busy machine gets the same amount of traffic through a fault, only slower.
    pub fn wait_accepted(&self, n: u64) {
        let count = || self.accepted.load(std::sync::atomic::Ordering::Relaxed);
        let target = count() + n;
        wait_until(Duration::from_secs(60), || count() >= target);
    }

    /// Stops the clients; returns the keys answered 204 and the count of other answers.
    pub fn stop(self) -> (Vec<String>, u64) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        let mut keys = Vec::new();
        let mut other = 0;
        for t in self.threads {
            let (k, o) = t.join().unwrap();
            keys.extend(k);
            other += o;
        }
        (keys, other)
    }
}

/// The finding for `key` in a `beacon-collector check --json` report; fails the test without it.
pub fn finding<'a>(report: &'a serde_json::Value, key: &str) -> &'a serde_json::Value {
    report["findings"]
        .as_array()
        .expect("a findings array")
        .iter()
        .find(|f| f["key"] == key)
        .unwrap_or_else(|| panic!("no finding for {key}: {report}"))
}

/// Checks every 204'd key is in the output; returns (records, unique ids, duplicates).
pub fn assert_no_loss(data_dir: &Path, keys: &[String]) -> (usize, usize, usize) {
    let recs = records(data_dir);
    let got: std::collections::HashSet<&str> = recs
        .iter()
        .filter_map(|r| param(r, "k").and_then(|v| v.as_str()))
        .collect();
    let lost: Vec<&String> = keys.iter().filter(|k| !got.contains(k.as_str())).collect();
    assert!(
        lost.is_empty(),
        "lost {} of {} beacons answered 204, e.g. {:?}",
        lost.len(),
        keys.len(),
        &lost[..lost.len().min(5)]
    );
    let unique = unique_ids(&recs).len();
    (recs.len(), unique, recs.len() - unique)
}

/// After the spool was full: waits up to `limit` for the collector to answer 204 again (only
/// 503 meanwhile), then sends 100 more beacons; returns the keys of every one answered 204.
pub fn accepted_again(addr: SocketAddr, limit: Duration) -> Vec<String> {
    wait_until(limit, || {
        let r = get(addr, "/beacon?k=after");
        assert!(matches!(r.status, 204 | 503), "unexpected {}", r.status);
        r.status == 204
    });
    let mut keys = vec!["after".to_string()];
    for i in 0..100 {
        let k = format!("late-{i}");
        assert_eq!(get(addr, &format!("/beacon?k={k}")).status, 204);
        keys.push(k);
    }
    keys
}

/// Sends keyed beacons padded to ~350 bytes on one connection until one is refused; returns
/// the keys answered 204 and the refusal. Panics on any other status, or after `limit` 204s.
pub fn send_until_refused(addr: SocketAddr, limit: usize) -> (Vec<String>, Resp) {
    let mut conn = Conn::open(addr);
    let mut keys = Vec::new();
    loop {
        let key = format!("d-{}", keys.len());
        let raw = format!(
            "GET /beacon?k={key}&pad={} HTTP/1.1\r\nHost: t\r\n\r\n",
            "x".repeat(300)
        );
        let r = conn.request(raw.as_bytes()).unwrap();
        match r.status {
            204 => keys.push(key),
            503 => return (keys, r),
            s => panic!("unexpected {s}"),
        }
        assert!(keys.len() < limit, "{limit} beacons and still no refusal");
    }
}

/// Headless Chromium loading `url` with its profile in `profile` and `extra` flags; the caller
/// kills it. Needs the Debian package `chromium` (.ci/run installs it).
pub fn chromium(url: &str, profile: &Path, extra: &[&str]) -> std::process::Child {
    chromium_command(url, profile, extra)
        .spawn()
        .expect("chromium is installed (.ci/run installs the Debian package)")
}

/// The command [`chromium`] runs, to add to (e.g. a `HOME` whose NSS database trusts a test CA).
pub fn chromium_command(url: &str, profile: &Path, extra: &[&str]) -> std::process::Command {
    let mut cmd = std::process::Command::new("chromium");
    cmd.args([
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--no-default-browser-check",
        "--disable-extensions",
        "--disable-background-networking",
    ])
    .args(extra)
    .arg(format!("--user-data-dir={}", profile.display()))
    .arg(url)
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null());
    cmd
}

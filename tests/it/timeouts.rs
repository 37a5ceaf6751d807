//! The header deadline (slowloris) and the keep-alive idle timeout hold independently, on
//! both HTTP engines (their timers are built differently).

use crate::common::*;
use beacon_collector::ingest::Engine;
use std::io::Write;
use std::time::{Duration, Instant};

const ENGINES: [Engine; 2] = [Engine::Native, Engine::Hyper];

fn server(engine: Engine, header_s: u64, idle_s: u64) -> (tempfile::TempDir, Stage, Server) {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.server.engine = engine;
    c.http.header_timeout_seconds = header_s;
    c.http.idle_timeout_seconds = idle_s;
    c.http.lb_idle_timeout_seconds = idle_s - 1;
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c);
    (dir, stage, srv)
}

const BEACON: &[u8] = b"GET /beacon?k=v HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn header_deadline_closes_a_connection_that_trickles_headers() {
    for engine in ENGINES {
        header_deadline(engine);
    }
}

fn header_deadline(engine: Engine) {
    let (_d, _s, srv) = server(engine, 1, 30);
    let mut conn = Conn::open(srv.addr);
    let start = Instant::now();
    conn.send(b"GET /beacon?k=v HTTP/1.1\r\nHost: t\r\n");
    // One header line every 200 ms: never complete, never idle long.
    let mut closed_at = None;
    for i in 0..40 {
        if conn.closed_within(Duration::from_millis(200)) {
            closed_at = Some(start.elapsed());
            break;
        }
        if conn
            .rd
            .get_mut()
            .write_all(format!("X-Slow-{i}: 1\r\n").as_bytes())
            .is_err()
        {
            closed_at = Some(start.elapsed());
            break;
        }
    }
    let t = closed_at.expect("slowloris connection was closed");
    assert!(
        t >= Duration::from_millis(900),
        "{engine:?}: closed too early: {t:?}"
    );
    assert!(
        t < Duration::from_secs(3),
        "{engine:?}: closed too late: {t:?} (idle timeout is 30 s)"
    );
}

#[test]
fn idle_keepalive_survives_past_header_deadline_and_closes_after_idle_timeout() {
    // The engines in parallel: each waits out its idle timeout.
    let handles: Vec<_> = ENGINES
        .into_iter()
        .map(|e| std::thread::spawn(move || idle_timeout(e)))
        .collect();
    for h in handles {
        h.join().unwrap();
    }
}

fn idle_timeout(engine: Engine) {
    let (_d, _s, srv) = server(engine, 1, 3);
    let mut conn = Conn::open(srv.addr);
    assert_eq!(conn.request(BEACON).unwrap().status, 204);
    // Idle for twice the header deadline: an idle connection is not a slow request.
    std::thread::sleep(Duration::from_millis(2000));
    let r = conn
        .request(BEACON)
        .expect("connection still open before the idle timeout");
    assert_eq!(r.status, 204);
    let idle_start = Instant::now();
    assert!(
        conn.closed_within(Duration::from_secs(8)),
        "idle connection was never closed"
    );
    let t = idle_start.elapsed();
    assert!(
        t >= Duration::from_millis(2800),
        "{engine:?}: closed before the idle timeout: {t:?}"
    );
    assert!(
        t < Duration::from_millis(4500),
        "{engine:?}: closed well after the idle timeout: {t:?}"
    );
}

/// `http.max_connection_age_seconds`: past it (±10 %) the next answer says `Connection:
/// close` and the connection closes, whether a request was in progress or the connection was
/// idle (an idle one is not closed: its client's next request would race the close); both
/// counted. On both engines.
#[test]
fn connections_past_their_age_are_closed_between_requests() {
    for engine in ENGINES {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        c.server.engine = engine;
        c.http.max_connection_age_seconds = 1;
        let _stage = Stage::start(dir.path(), &c);
        let srv = Server::start(c);
        let before = aged_out_total();

        // Busy: a request in progress when the age passes is answered, with Connection:
        // close, and the connection closes.
        let mut busy = Conn::open(srv.addr);
        let r = busy.request(BEACON).expect("an answer");
        assert_eq!(r.status, 204);
        assert_ne!(r.header("connection"), Some("close"), "{engine:?}: young");
        let mut idle = Conn::open(srv.addr);
        assert_eq!(idle.request(BEACON).expect("an answer").status, 204);
        std::thread::sleep(Duration::from_millis(300));
        busy.send(b"POST /beacon HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\nContent-Length: 10\r\n\r\nhello");
        std::thread::sleep(Duration::from_millis(1100));
        busy.send(b"world");
        let r = busy.read(false).expect("an answer past the age");
        assert_eq!(r.status, 204, "{engine:?}");
        assert_eq!(r.header("connection"), Some("close"), "{engine:?}: aged");
        assert!(busy.closed_within(Duration::from_secs(2)), "{engine:?}");

        // Idle past its age: kept (closing it would race the client's next request on it);
        // its next request is answered, with Connection: close, and then it closes.
        assert!(
            !idle.closed_within(Duration::from_millis(500)),
            "{engine:?}: an idle connection is left to its idle timeout"
        );
        let r = idle
            .request(BEACON)
            .expect("an answer on the aged idle connection");
        assert_eq!(r.status, 204, "{engine:?}");
        assert_eq!(r.header("connection"), Some("close"), "{engine:?}: aged");
        assert!(idle.closed_within(Duration::from_secs(2)), "{engine:?}");
        // Counters are added once a second.
        std::thread::sleep(Duration::from_millis(1200));
        assert!(aged_out_total() >= before + 2, "{engine:?}: counted");
        srv.shutdown(beacon_collector::Shutdown::Fast).unwrap();
    }
}

fn aged_out_total() -> u64 {
    beacon_collector::metrics::install()
        .render()
        .lines()
        .find(|l| l.starts_with("beacon_connections_aged_out_total"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

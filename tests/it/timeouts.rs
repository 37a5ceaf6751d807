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

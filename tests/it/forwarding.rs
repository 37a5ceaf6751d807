//! The forwarder: reconnects to a restarted processing stage without losing what it accepted,
//! and answers 503 + Retry-After when its queue is full.

use crate::common::*;
use beacon_collector::Shutdown;
use std::time::Duration;

const BEACON: &[u8] = b"GET /beacon?k=v HTTP/1.1\r\nHost: t\r\n\r\n";

fn send_n(addr: std::net::SocketAddr, n: usize) -> usize {
    let mut conn = Conn::open(addr);
    (0..n)
        .filter(|_| conn.request(BEACON).is_some_and(|r| r.status == 204))
        .count()
}

#[test]
fn stage_killed_and_restarted_collector_reconnects_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(dir.path());
    let mut stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());

    let mut ok = send_n(srv.addr, 200);
    wait_until(Duration::from_secs(10), || {
        records(&c.processor.data_dir).len() >= 200
    });
    stage.kill9();
    // Accepted while no stage is there: held by the forwarder, not dropped.
    ok += send_n(srv.addr, 200);
    let stage = Stage::start(dir.path(), &c);
    ok += send_n(srv.addr, 200);
    wait_until(Duration::from_secs(10), || {
        unique_ids(&records(&c.processor.data_dir)).len() >= 600
    });

    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(ok, 600);
    assert_eq!(report.accepted, 600);
    assert_eq!(report.acknowledged, 600);
    assert_eq!(unique_ids(&records(&c.processor.data_dir)).len(), 600);
}

#[test]
fn spool_limit_answers_503_and_fails_health_then_recovers_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.spool.segment_bytes = 4096;
    c.spool.max_bytes = 16384;
    c.queue.retry_after_seconds = 7;
    // No stage yet: everything accepted stays in the spool until the limit.
    let srv = Server::start(c.clone());
    let mut conn = Conn::open(srv.addr);
    let mut ok = Vec::new();
    let refused = loop {
        let n = ok.len();
        let r = conn
            .request(
                format!(
                    "GET /beacon?n={n}&pad={} HTTP/1.1\r\nHost: t\r\n\r\n",
                    "x".repeat(200)
                )
                .as_bytes(),
            )
            .unwrap();
        match r.status {
            204 => ok.push(n),
            503 => break r,
            s => panic!("unexpected {s}"),
        }
        assert!(ok.len() < 1000, "spool limit never reached");
    };
    assert_eq!(refused.header("retry-after"), Some("7"));
    assert_eq!(refused.body, b"spool_full");
    assert_eq!(
        get(srv.addr, "/healthz").status,
        503,
        "health fails above the high-water mark"
    );

    let stage = Stage::start(dir.path(), &c);
    wait_until(Duration::from_secs(10), || {
        get(srv.addr, "/healthz").status == 200
    });
    assert_eq!(get(srv.addr, "/beacon?after=1").status, 204);
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(report.remaining, 0);
    let recs = records(&c.processor.data_dir);
    assert_eq!(
        unique_ids(&recs).len(),
        ok.len() + 1,
        "every 204 delivered, nothing else"
    );
    for n in &ok {
        assert!(
            recs.iter()
                .any(|r| param(r, "n").is_some_and(|v| v == &n.to_string())),
            "beacon {n} lost"
        );
    }
    assert!(
        !recs
            .iter()
            .any(|r| param(r, "n").is_some_and(|v| v == &ok.len().to_string())),
        "the 503'd beacon is not recorded"
    );
}

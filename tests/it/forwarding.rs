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
fn full_queue_answers_503_with_retry_after_then_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.queue.capacity = 3;
    c.queue.retry_after_seconds = 7;
    // No stage yet: the forwarder cannot take records off the queue.
    let srv = Server::start(c.clone());
    assert_eq!(send_n(srv.addr, 3), 3);
    let r = get(srv.addr, "/beacon?over=1");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("retry-after"), Some("7"));

    let stage = Stage::start(dir.path(), &c);
    wait_until(Duration::from_secs(10), || {
        records(&c.processor.data_dir).len() == 3
    });
    assert_eq!(get(srv.addr, "/beacon?after=1").status, 204);
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!((report.accepted, report.acknowledged), (4, 4));
    let recs = records(&c.processor.data_dir);
    assert_eq!(recs.len(), 4);
    assert!(
        !recs.iter().any(|r| param(r, "over").is_some()),
        "a 503'd beacon is not recorded"
    );
}

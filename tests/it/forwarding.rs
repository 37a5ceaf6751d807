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
        records(&c.processor.files.data_dir).len() >= 200
    });
    stage.kill9();
    // Accepted while no stage is there: held by the forwarder, not dropped.
    ok += send_n(srv.addr, 200);
    let stage = Stage::start(dir.path(), &c);
    ok += send_n(srv.addr, 200);
    wait_until(Duration::from_secs(10), || {
        unique_ids(&records(&c.processor.files.data_dir)).len() >= 600
    });

    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(ok, 600);
    assert_eq!(report.accepted, 600);
    assert_eq!(report.acknowledged, 600);
    assert_eq!(unique_ids(&records(&c.processor.files.data_dir)).len(), 600);
}

#[test]
fn spool_limit_answers_503_and_fails_health_then_recovers_without_loss() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.spool.segment_bytes = 4096;
    c.spool.max_bytes = 16384;
    c.http.retry_after_seconds = 7;
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
    let recs = records(&c.processor.files.data_dir);
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

/// The stage's replay filter is exact for a stage that stays alive: a collector that sends a
/// batch, loses its connection before the ACK, and sends the same records again on a new one
/// (a write timeout, a reconnect) gets them written once. Before, the first connection's batch
/// was still being written when the resend arrived, and both were (87 copies in the soak).
#[test]
fn a_batch_resent_on_a_new_connection_while_in_flight_is_written_once() {
    use beacon_collector::protocol::{self, Frame};
    use beacon_collector::record::{self, ClientIpSource, Kind, RecordRef};
    use bytes::BytesMut;
    use std::io::{Read, Write};
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(dir.path());
    let stage = Stage::start(dir.path(), &c);
    wait_until(Duration::from_secs(10), || c.forward.socket_path.exists());
    let encoded: Vec<bytes::Bytes> = (0..500)
        .map(|i| {
            let key = format!("r{i}");
            let rec = RecordRef {
                id: record::new_id(1_700_000_000_000_000 + i),
                received_us: 1_700_000_000_000_000 + i,
                peer: b"127.0.0.1:1",
                client_ip: b"127.0.0.1",
                client_ip_source: ClientIpSource::Peer,
                method: b"GET",
                path: b"/beacon",
                kind: Kind::Query,
                user_agent: None,
                referer: None,
                origin: None,
                params: vec![(key.as_bytes().into(), b"1".as_slice().into())],
                body: b"".as_slice().into(),
                event_id: None,
            };
            let mut b = BytesMut::new();
            rec.encode(&mut b);
            b.freeze()
        })
        .collect();
    let mut frames = BytesMut::new();
    Frame::Hello {
        version: protocol::VERSION,
        instance: 0x5eed,
    }
    .encode(&mut frames);
    protocol::encode_batch(1, encoded.iter(), &mut frames);
    // First connection: the batch, then gone before any ACK.
    let mut first = std::os::unix::net::UnixStream::connect(&c.forward.socket_path).unwrap();
    first.write_all(&frames).unwrap();
    drop(first);
    // Second connection: the same records again; the ACK covers them all.
    let mut second = std::os::unix::net::UnixStream::connect(&c.forward.socket_path).unwrap();
    second.write_all(&frames).unwrap();
    second
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    // ACK frames (a heartbeat repeats the last one while the sinks work) until all 500.
    loop {
        let mut ack = [0u8; 13];
        second.read_exact(&mut ack).unwrap();
        assert_eq!(ack[4], 3, "an ACK frame");
        if u64::from_be_bytes(ack[5..].try_into().unwrap()) == 500 {
            break;
        }
    }
    drop(second);
    stage.stop();
    let recs = records(&c.processor.files.data_dir);
    assert_eq!(recs.len(), 500, "every record once");
    assert_eq!(unique_ids(&recs).len(), 500);
}

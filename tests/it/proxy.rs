//! PROXY protocol on the beacon listener: the header's source is the client in the record, and
//! a connection without a valid header is closed, never served with a guessed address.

use crate::common::*;
use beacon_collector::ingest::proxy::{Mode, V2_SIGNATURE};
use beacon_collector::Shutdown;
use std::time::Duration;

fn v2_inet(src: [u8; 4], sport: u16) -> Vec<u8> {
    let mut h = V2_SIGNATURE.to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    h.extend_from_slice(&src);
    h.extend_from_slice(&[127, 0, 0, 1]);
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&8080u16.to_be_bytes());
    h
}

#[test]
fn proxy_headers_name_the_client_and_missing_ones_close_the_connection() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.client_ip.proxy_protocol = Mode::Any;
    c.http.header_timeout_seconds = 1;
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let a = srv.addr;

    // v1, with the request in the same segment as the header.
    let mut conn = Conn::open(a);
    conn.send(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\nGET /beacon?via=v1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(conn.read(false).unwrap().status, 204);
    // Keep-alive: the header is read once, the next request on the connection is plain HTTP.
    assert_eq!(
        conn.request(b"GET /beacon?via=v1-again HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap()
            .status,
        204
    );

    // v2, split from its request and itself split in two writes.
    let mut conn = Conn::open(a);
    let h = v2_inet([198, 51, 100, 9], 40000);
    conn.send(&h[..7]);
    std::thread::sleep(Duration::from_millis(50));
    conn.send(&h[7..]);
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(
        conn.request(b"GET /beacon?via=v2 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap()
            .status,
        204
    );

    // v2 LOCAL (the proxy's own health check): served, the TCP peer is the client.
    let mut conn = Conn::open(a);
    let mut local = V2_SIGNATURE.to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    conn.send(&local);
    assert_eq!(
        conn.request(b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap()
            .status,
        200
    );

    // No header, a garbage header, a header that never ends: closed, nothing answered.
    for raw in [
        &b"GET /beacon?via=none HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"PROXY TCP4 999.0.0.1 10.0.0.1 1 2\r\nGET /beacon?via=bad HTTP/1.1\r\nHost: t\r\n\r\n",
        b"PROXY TCP4 203.0.113.7 10.0.0.1 51234",
    ] {
        let mut conn = Conn::open(a);
        conn.send(raw);
        // The truncated header waits for the header timeout (1 s in tests) before closing.
        assert!(
            conn.closed_within(Duration::from_secs(5)),
            "{:?}",
            String::from_utf8_lossy(raw)
        );
    }

    srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    let recs = records(&c.processor.files.data_dir);
    let via = |v: &str| {
        recs.iter()
            .find(|r| param(r, "via").is_some_and(|p| p == v))
            .unwrap_or_else(|| panic!("{v}: {recs:#?}"))
    };
    assert_eq!(
        (&via("v1")["client_ip"], &via("v1")["client_ip_source"]),
        (&"203.0.113.7".into(), &"proxy_v1".into())
    );
    assert_eq!(via("v1-again")["client_ip"], "203.0.113.7");
    assert_eq!(
        (&via("v2")["client_ip"], &via("v2")["client_ip_source"]),
        (&"198.51.100.9".into(), &"proxy_v2".into())
    );
    // The TCP peer is still recorded as it was.
    assert!(via("v2")["peer"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert_eq!(recs.len(), 3, "only the proxied beacons: {recs:#?}");
}

#[test]
fn without_proxy_protocol_the_peer_is_the_client() {
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(dir.path());
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    assert_eq!(get(srv.addr, "/beacon?p=1").status, 204);
    // A PROXY header on a listener that does not expect one is not honoured: it is a bad request.
    let r = req(
        srv.addr,
        "PROXY TCP4 203.0.113.7 10.0.0.1 51234 8080\r\nGET /beacon?p=2 HTTP/1.1\r\nHost: t\r\n\r\n",
    );
    assert_eq!(r.status, 400);
    srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    let recs = records(&c.processor.files.data_dir);
    assert_eq!(recs.len(), 1);
    assert_eq!(
        (&recs[0]["client_ip"], &recs[0]["client_ip_source"]),
        (&"127.0.0.1".into(), &"peer".into())
    );
}

#[test]
fn forwarded_for_is_believed_only_from_trusted_proxies() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.client_ip.trusted_proxies = vec!["127.0.0.0/8".to_string().try_into().unwrap()];
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let send = |id: &str, xff: &str| {
        let r = req(
            srv.addr,
            &format!("GET /beacon?x={id} HTTP/1.1\r\nHost: t\r\n{xff}\r\n"),
        );
        assert_eq!(r.status, 204);
    };
    // The left hop is the client's own claim; the right-most untrusted one is real.
    send(
        "chain",
        "X-Forwarded-For: 6.6.6.6, 203.0.113.9, 127.0.0.2\r\n",
    );
    send(
        "lines",
        "X-Forwarded-For: 6.6.6.6\r\nX-Forwarded-For: 198.51.100.4\r\n",
    );
    send("garbage", "X-Forwarded-For: 203.0.113.9, not-an-ip\r\n");
    send("none", "");
    srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();

    let dir2 = tempfile::tempdir().unwrap();
    let mut c2 = test_config(dir2.path());
    c2.client_ip.trusted_proxies = vec!["10.0.0.0/8".to_string().try_into().unwrap()];
    let stage2 = Stage::start(dir2.path(), &c2);
    let srv2 = Server::start(c2.clone());
    let r = req(
        srv2.addr,
        "GET /beacon?x=untrusted HTTP/1.1\r\nHost: t\r\nX-Forwarded-For: 203.0.113.9\r\n\r\n",
    );
    assert_eq!(r.status, 204);
    srv2.shutdown(Shutdown::Graceful).unwrap();
    stage2.stop();

    let mut recs = records(&c.processor.files.data_dir);
    recs.extend(records(&c2.processor.files.data_dir));
    let client = |id: &str| {
        let r = recs
            .iter()
            .find(|r| param(r, "x").is_some_and(|p| p == id))
            .unwrap();
        (
            r["client_ip"].as_str().unwrap().to_string(),
            r["client_ip_source"].as_str().unwrap().to_string(),
        )
    };
    let xff = |ip: &str| (ip.to_string(), "x_forwarded_for".to_string());
    let peer = || ("127.0.0.1".to_string(), "peer".to_string());
    assert_eq!(client("chain"), xff("203.0.113.9"));
    assert_eq!(client("lines"), xff("198.51.100.4"));
    assert_eq!(client("garbage"), peer());
    assert_eq!(client("none"), peer());
    assert_eq!(client("untrusted"), peer());
}

#[test]
fn rate_limit_answers_429_per_client_ip() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.rate_limit.enabled = true;
    c.rate_limit.per_client_per_second = 0.5;
    c.rate_limit.burst = 3;
    c.client_ip.trusted_proxies = vec!["127.0.0.0/8".to_string().try_into().unwrap()];
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let send = |xff: &str| {
        req(
            srv.addr,
            &format!("GET /beacon?r=1 HTTP/1.1\r\nHost: t\r\n{xff}\r\n"),
        )
    };
    for _ in 0..3 {
        assert_eq!(send("").status, 204);
    }
    let r = send("");
    assert_eq!(r.status, 429);
    // 0.5/s: the next token is two seconds away.
    assert_eq!(r.header("retry-after"), Some("2"));
    // The limit follows the client named by a trusted proxy, not the proxy's address.
    for _ in 0..3 {
        assert_eq!(send("X-Forwarded-For: 203.0.113.9\r\n").status, 204);
    }
    assert_eq!(send("X-Forwarded-For: 203.0.113.9\r\n").status, 429);
    assert_eq!(send("X-Forwarded-For: 198.51.100.1\r\n").status, 204);
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(report.accepted, 7);
    assert_eq!(
        records(&c.processor.files.data_dir).len(),
        7,
        "429s are not recorded"
    );
}

//! HTTPS on the collector: beacons over TLS on both engines (curl, a rustls client,
//! `openssl s_client`), SNI, ALPN and versions, hostile input refused and counted, SIGHUP
//! certificate reload, and `check`'s certificate findings.

use crate::common::tls::{client, Pki, TlsConn};
use crate::common::*;
use beacon_collector::config::Config;
use beacon_collector::ingest::Engine;
use beacon_collector::Shutdown;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A test config serving HTTPS on loopback port 0 with `leaf`.
fn tls_config(dir: &Path, leaf: &crate::common::tls::Leaf) -> Config {
    let mut c = test_config(dir);
    c.tls.enabled = true;
    c.tls.listen = "127.0.0.1:0".parse().unwrap();
    c.tls.cert_file = leaf.cert.clone();
    c.tls.key_file = leaf.key.clone();
    c
}

/// A temp dir with a test CA and a `localhost` leaf it signed, and a test config serving
/// HTTPS with that leaf.
fn https() -> (tempfile::TempDir, Pki, crate::common::tls::Leaf, Config) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let leaf = pki.leaf("localhost", &["localhost"], 30);
    let c = tls_config(dir.path(), &leaf);
    (dir, pki, leaf, c)
}

/// The admin listener on a free loopback port (its address is in the log).
fn with_admin(c: &mut Config) {
    c.admin.enabled = true;
    c.admin.listen = "127.0.0.1:0".parse().unwrap();
}

fn curl(args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "20"])
        .args(args)
        .output()
        .expect("curl");
    (
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// `openssl s_client` against `addr` with `extra` options; its whole output.
fn s_client(addr: SocketAddr, extra: &[&str]) -> String {
    let out = Command::new("openssl")
        .args(["s_client", "-connect", &addr.to_string()])
        .args(extra)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl");
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn metric(admin: SocketAddr, series: &str) -> f64 {
    let text = String::from_utf8_lossy(&get(admin, "/metrics").body).to_string();
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[test]
fn beacons_over_https_reach_the_stage_on_both_engines() {
    for engine in [Engine::Native, Engine::Hyper] {
        let dir = tempfile::tempdir().unwrap();
        let pki = Pki::new(dir.path());
        let leaf = pki.leaf("localhost", &["localhost"], 30);
        let mut c = tls_config(dir.path(), &leaf);
        c.server.engine = engine;
        let stage = Stage::start(dir.path(), &c);
        let srv = Server::start(c.clone());
        let tls = srv.tls_addr.expect("HTTPS listener");
        let url = |p: &str| format!("https://localhost:{}{p}", tls.port());
        let resolve = format!("localhost:{}:127.0.0.1", tls.port());
        let ca = pki.ca.to_str().unwrap();
        // curl over HTTPS: the status code, and what it said on stderr.
        let https_curl = |extra: &[&str], target: &str| {
            let mut args = vec![
                "--cacert",
                ca,
                "--resolve",
                &resolve,
                "-o",
                "/dev/null",
                "-w",
                "%{http_code}",
            ];
            args.extend_from_slice(extra);
            let u = url(target);
            args.push(&u);
            curl(&args)
        };
        let (code, err) = https_curl(&[], "/beacon?k=curl-get&engine=x");
        assert_eq!(code, "204", "{engine:?}: curl GET over HTTPS: {err}");
        let (code, err) = https_curl(
            &[
                "-H",
                "content-type: application/json",
                "--data",
                r#"{"k":"curl-post"}"#,
            ],
            "/beacon",
        );
        assert_eq!(code, "204", "{engine:?}: curl POST over HTTPS: {err}");
        // Keep-alive over one TLS connection, and a body split across TLS records.
        let cfg = client(&pki.ca);
        let mut conn = TlsConn::open(tls, "localhost", &cfg);
        for i in 0..3 {
            let r = conn
                .request(format!("GET /beacon?k=ka-{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
                .expect("an answer on the kept connection");
            assert_eq!(r.status, 204);
        }
        let fields: Vec<String> = (0..10)
            .map(|i| format!("v{i}={}", "x".repeat(4000)))
            .collect();
        let body = format!("k=big&{}", fields.join("&"));
        let r = conn
            .request(
                format!(
                    "POST /beacon HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )
                .as_bytes(),
            )
            .unwrap();
        assert_eq!(r.status, 204, "{engine:?}: a body over several TLS records");
        // The plain listener keeps serving beside it.
        assert_eq!(get(srv.addr, "/beacon?k=plain").status, 204);
        let report = srv.shutdown(Shutdown::Graceful).unwrap();
        stage.stop();
        let recs = records(&c.processor.files.data_dir);
        let keys: Vec<&str> = recs
            .iter()
            .filter_map(|r| param(r, "k")?.as_str())
            .collect();
        for k in ["curl-get", "ka-0", "ka-1", "ka-2", "plain"] {
            assert!(keys.contains(&k), "{engine:?}: {k} missing from {keys:?}");
        }
        assert_eq!(
            report.accepted as usize,
            recs.len(),
            "{engine:?}: every 2xx stored"
        );
    }
}

#[test]
fn sni_alpn_and_versions_as_openssl_sees_them() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let main = pki.leaf("localhost", &["localhost"], 30);
    let other = pki.leaf("other", &["other.test", "*.other.test"], 30);
    let mut c = tls_config(dir.path(), &main);
    c.tls.certificates = vec![beacon_collector::config::SniCertificate {
        server_names: vec!["other.test".into(), "*.other.test".into()],
        cert_file: other.cert.clone(),
        key_file: other.key.clone(),
    }];
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c);
    let tls = srv.tls_addr.unwrap();
    let ca = pki.ca.to_str().unwrap();
    let out = s_client(
        tls,
        &[
            "-servername",
            "b.other.test",
            "-CAfile",
            ca,
            "-alpn",
            "http/1.1",
        ],
    );
    assert!(
        out.contains("CN = other.test"),
        "SNI picks the other certificate: {out}"
    );
    assert!(out.contains("ALPN protocol: http/1.1"), "{out}");
    assert!(out.contains("Verify return code: 0"), "{out}");
    let out = s_client(tls, &["-servername", "unknown.test", "-CAfile", ca]);
    assert!(
        out.contains("CN = localhost"),
        "other names get the default: {out}"
    );
    let out = s_client(tls, &["-servername", "localhost", "-tls1_2", "-CAfile", ca]);
    assert!(
        out.contains("Protocol  : TLSv1.2") || out.contains("TLSv1.2"),
        "{out}"
    );
    for old in ["-tls1_1", "-tls1"] {
        let out = s_client(tls, &[old, "-cipher", "DEFAULT@SECLEVEL=0"]);
        assert!(
            out.contains("Cipher is (NONE)") && out.contains("no peer certificate available"),
            "{old} must be refused: {out}"
        );
    }
    srv.shutdown(Shutdown::Fast).unwrap();
    stage.stop();
}

#[test]
fn hostile_input_on_the_tls_port_is_refused_and_counted() {
    let (dir, pki, _leaf, mut c) = https();
    with_admin(&mut c);
    c.http.header_timeout_seconds = 1;
    c.tls.min_version = beacon_collector::config::MinVersion::Tls13;
    let stage = Stage::start(dir.path(), &c);
    let bin = Binary::serve(dir.path(), &c);
    let (tls, admin) = (bin.https(), bin.admin());
    // Handshake done, no request yet: past the header deadline it must stay open (it is
    // idle, not slow), as a browser that preconnects and sends its beacon later.
    let mut ok = TlsConn::open(tls, "localhost", &client(&pki.ca));
    // Plain HTTP: nginx's 400, then close.
    let mut plain = Conn::open(tls);
    let r = plain
        .request(b"GET /beacon?k=1 HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    assert_eq!(r.status, 400);
    assert!(String::from_utf8_lossy(&r.body).contains("plain HTTP"));
    assert!(plain.closed_within(Duration::from_secs(10)));
    // Garbage in a TLS record, and a ClientHello cut short then silence.
    let mut g = std::net::TcpStream::connect(tls).unwrap();
    g.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    g.write_all(b"\x16\x03\x01\x00\x08garbage!").unwrap();
    let mut sink = Vec::new();
    let _ = g.read_to_end(&mut sink);
    // An oversized ClientHello: a handshake record announcing 18 KB (more than a TLS record
    // may carry), sent in full.
    let mut big = std::net::TcpStream::connect(tls).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut rec = b"\x16\x03\x01\x48\x00".to_vec();
    rec.resize(5 + 0x4800, 0x41);
    let _ = big.write_all(&rec);
    let _ = big.read_to_end(&mut sink);
    let mut slow = std::net::TcpStream::connect(tls).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    slow.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")
        .unwrap();
    let started = std::time::Instant::now();
    let _ = slow.read_to_end(&mut sink);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "a slow handshake is cut at the header deadline"
    );
    // TLS 1.2 against min_version = "1.3".
    let out = s_client(tls, &["-tls1_2"]);
    assert!(out.contains("Cipher is (NONE)"), "TLS 1.2 refused: {out}");
    // The slow handshake, begun after `ok`'s, was cut: `ok` is past its header deadline too.
    let r = ok.request(b"GET /beacon?k=ok HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(
        r.map(|r| r.status),
        Some(204),
        "an idle established connection stays"
    );
    let m = |r: &str| {
        metric(
            admin,
            &format!("beacon_tls_handshakes_total{{result=\"{r}\"}}"),
        )
    };
    wait_until(Duration::from_secs(10), || {
        m("plain_http") >= 1.0
            && m("protocol_error") >= 2.0
            && m("timeout") >= 1.0
            && m("no_shared_cipher") >= 1.0
            && m("ok") >= 1.0
    });
    assert_eq!(
        metric(admin, "beacon_tls_connections_total{version=\"1.3\"}"),
        1.0
    );
    drop(bin);
    stage.stop();
}

#[test]
fn sighup_reloads_certificates_and_keeps_open_connections() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let first = pki.leaf("first", &["localhost"], 30);
    let live = crate::common::tls::Leaf {
        cert: dir.path().join("live.pem"),
        key: dir.path().join("live.key"),
    };
    std::fs::copy(&first.cert, &live.cert).unwrap();
    std::fs::copy(&first.key, &live.key).unwrap();
    let mut c = tls_config(dir.path(), &live);
    with_admin(&mut c);
    let stage = Stage::start(dir.path(), &c);
    let bin = Binary::serve(dir.path(), &c);
    let (tls, admin) = (bin.https(), bin.admin());
    let cfg = client(&pki.ca);
    let mut kept = TlsConn::open(tls, "localhost", &cfg);
    let cert1 = kept.peer_cert();
    assert_eq!(
        kept.request(b"GET /beacon?k=a HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .status,
        204
    );

    // A renewed certificate under the same file names.
    let second = pki.leaf("second", &["localhost"], 60);
    std::fs::copy(&second.cert, &live.cert).unwrap();
    std::fs::copy(&second.key, &live.key).unwrap();
    bin.signal(libc::SIGHUP);
    bin.wait_for("SIGHUP: TLS certificates reloaded", Duration::from_secs(10));
    // A fresh client each time: a resumed session reports the certificate of the session.
    let cert2 = TlsConn::open(tls, "localhost", &client(&pki.ca)).peer_cert();
    assert_ne!(cert1, cert2, "new handshakes get the new certificate");
    assert_eq!(
        kept.request(b"GET /beacon?k=b HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap()
            .status,
        204,
        "the open connection is untouched"
    );

    // A key that does not match: refused, the running pair stays.
    std::fs::copy(&first.key, &live.key).unwrap();
    bin.signal(libc::SIGHUP);
    let refused = bin.wait_for(
        "SIGHUP: the configuration is invalid",
        Duration::from_secs(10),
    );
    assert_eq!(refused["key"], "tls.key_file", "{refused}");
    assert!(
        refused["problem"]
            .as_str()
            .unwrap()
            .contains("does not match"),
        "{refused}"
    );
    assert_eq!(
        TlsConn::open(tls, "localhost", &client(&pki.ca)).peer_cert(),
        cert2
    );
    assert_eq!(
        metric(admin, "beacon_tls_reloads_total{result=\"error\"}"),
        1.0
    );
    drop(bin);
    stage.stop();
}

#[test]
fn check_reports_names_chain_and_expiry_of_the_certificates() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let soon = pki.leaf("soon", &["localhost"], 10);
    let other = pki.leaf("other", &["other.test"], 30);
    let mut c = tls_config(dir.path(), &soon);
    c.tls.certificates = vec![beacon_collector::config::SniCertificate {
        server_names: vec!["beacon.example.com".into()],
        cert_file: other.cert.clone(),
        key_file: other.key.clone(),
    }];
    let cfg = write_config(dir.path(), &c);
    let out = Command::new(BIN)
        .args(["check", "--json", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let find = |key: &str| finding(&report, key).clone();
    let expiry = find("tls.cert_file (expiry)");
    assert_eq!(expiry["severity"], "warn", "{expiry}");
    assert!(expiry["current"].as_str().unwrap().contains("day(s) left"));
    assert_eq!(find("tls.cert_file (key)")["severity"], "ok");
    assert_eq!(find("tls.cert_file (chain)")["severity"], "ok");
    let names = find("tls.certificates[0].cert_file (names)");
    assert_eq!(names["severity"], "fail", "{names}");
    assert!(names["current"]
        .as_str()
        .unwrap()
        .contains("beacon.example.com"));

    // A key that does not match its certificate: exit 64 naming the key, before binding.
    c.tls.key_file = other.key.clone();
    let cfg = write_config(dir.path(), &c);
    let out = Command::new(BIN)
        .args(["serve", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("tls.key_file") && err.contains("does not match"),
        "{err}"
    );
}

/// beacon-loadgen over HTTPS: `--close` makes every request a full handshake, and with
/// `--tls-resume` the collector resumes them from its tickets; both sides count the same.
#[test]
fn loadgen_measures_full_and_resumed_handshakes() {
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let (dir, pki, _leaf, mut c) = https();
    with_admin(&mut c);
    let stage = Stage::start(dir.path(), &c);
    let bin = Binary::serve(dir.path(), &c);
    let (tls, admin) = (bin.https(), bin.admin());
    let url = format!("https://localhost:{}/beacon", tls.port());
    let run = |extra: &[&str]| {
        let mut args = vec![
            "beacon-loadgen",
            "-c",
            "4",
            "-d",
            "1s",
            "--close",
            "--cacert",
            pki.ca.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        args.push(&url);
        let opts = <beacon_loadgen::Opts as clap::Parser>::try_parse_from(args).unwrap();
        beacon_loadgen::run(&opts, Arc::new(AtomicBool::new(false)), Arc::default()).unwrap()
    };
    let full = run(&[]);
    let t = full.tls.clone().expect("handshakes reported");
    assert_eq!(full.errors_total, 0, "{:?}", full.errors);
    assert!(full.requests > 10);
    assert_eq!(
        t.handshakes, full.requests,
        "--close: one handshake per request"
    );
    assert_eq!(t.resumed, 0);
    let resumed = run(&["--tls-resume"]);
    let r = resumed.tls.clone().unwrap();
    assert_eq!(resumed.errors_total, 0, "{:?}", resumed.errors);
    assert!(
        r.resumed * 10 >= r.handshakes * 9,
        "--tls-resume resumes all but each connection's first: {r:?}"
    );
    let m = |res: &str| {
        metric(
            admin,
            &format!("beacon_tls_handshakes_total{{result=\"{res}\"}}"),
        )
    };
    wait_until(Duration::from_secs(10), || {
        m("resumed") == r.resumed as f64
            && m("ok") == (t.handshakes + r.handshakes - r.resumed) as f64
    });
    drop(bin);
    stage.stop();
}

/// Two HTTPS collectors behind HAProxy in `mode tcp` with `send-proxy-v2`
/// (deploy/haproxy-tls-passthrough.cfg: the AWS NLB shape). One drains on SIGTERM while
/// keep-alive HTTPS clients send continuously: no client error, every 204 in an output, and
/// the PROXY header, read before the ClientHello, names the client.
#[test]
fn drain_behind_haproxy_tls_passthrough_shows_no_errors() {
    use crate::haproxy::{continuous_with, every_204_in_one_of, stop_clients, Haproxy};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let (da, db) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let pki = Pki::new(da.path());
    let leaf = pki.leaf("localhost", &["localhost"], 30);
    let start = |dir: &Path, dereg: u64| {
        let mut c = tls_config(dir, &leaf);
        c.forward.mode = beacon_collector::config::ForwardMode::Embedded;
        c.client_ip.proxy_protocol = beacon_collector::ingest::proxy::Mode::V2;
        c.shutdown.deregistration_delay_seconds = dereg;
        let bin = Binary::serve(dir, &c);
        let (plain, tls) = (bin.listening(), bin.https());
        (bin, plain, tls, c)
    };
    // A waits out 2 s (> 2 failed checks x 200 ms) before it stops accepting.
    let (mut a, plain_a, tls_a, ca) = start(da.path(), 2);
    let (mut b, plain_b, tls_b, cb) = start(db.path(), 0);
    let (ta, tb) = (tls_a.to_string(), tls_b.to_string());
    let (pa, pb) = (plain_a.port().to_string(), plain_b.port().to_string());
    let lb = Haproxy::run(
        "haproxy-tls-passthrough.cfg",
        "BEACON_TLS_BIND",
        &[
            ("COLLECTOR_1", ta.as_str()),
            ("COLLECTOR_2", tb.as_str()),
            ("HEALTH_PORT_1", pa.as_str()),
            ("HEALTH_PORT_2", pb.as_str()),
        ],
    );
    let stop = Arc::new(AtomicBool::new(false));
    let dial = crate::common::tls::dial("localhost", client(&pki.ca));
    let clients = continuous_with(lb.addr, 4, stop.clone(), dial);
    std::thread::sleep(Duration::from_secs(2));
    a.signal(libc::SIGTERM);
    assert!(a.wait(Duration::from_secs(30)).success());
    std::thread::sleep(Duration::from_secs(1));
    let seen = stop_clients(&stop, clients);
    b.signal(libc::SIGTERM);
    assert!(b.wait(Duration::from_secs(30)).success());
    eprintln!(
        "tls drain: {} 204s, {} other statuses, {} transport errors",
        seen.ok.len(),
        seen.bad_status.len(),
        seen.transport_errors
    );
    assert_eq!(
        (seen.bad_status.len(), seen.transport_errors),
        (0, 0),
        "client-visible errors during the drain: {:?}",
        &seen.bad_status[..seen.bad_status.len().min(10)]
    );
    assert!(seen.ok.len() > 100, "only {} beacons sent", seen.ok.len());
    let recs = every_204_in_one_of(
        &seen,
        &ca.processor.files.data_dir,
        &cb.processor.files.data_dir,
    );
    assert!(recs
        .iter()
        .filter(|r| param(r, "k").is_some())
        .all(|r| r["client_ip_source"] == "proxy_v2" && r["client_ip"] == "127.0.0.1"));
}

/// kill -9 under HTTPS load, then a restart on the same spool: every beacon answered 204
/// over TLS is in the output.
#[test]
fn collector_killed_under_https_load_loses_nothing() {
    let (dir, pki, _leaf, c) = https();
    let stage = Stage::start(dir.path(), &c);
    let bin = Binary::serve(dir.path(), &c);
    let load = Load::tls(
        bin.https(),
        4,
        crate::common::tls::dial("localhost", client(&pki.ca)),
    );
    load.wait_accepted(300);
    drop(bin); // SIGKILL: no drain, no flush
    let mut bin = Binary::serve(dir.path(), &c);
    *load.addr.lock().unwrap() = bin.https();
    load.wait_accepted(300);
    let (keys, _) = load.stop();
    // A clean stop hands the stage everything (what the killed one left included).
    bin.signal(libc::SIGINT);
    assert!(bin.wait(Duration::from_secs(30)).success());
    let (recs, unique, dups) = assert_no_loss(&c.processor.files.data_dir, &keys);
    eprintln!(
        "https kill -9: 204s={} records={recs} unique={unique} duplicates={dups} lost=0",
        keys.len()
    );
    stage.stop();
}

/// testssl.sh (Debian's package) against the TLS port: no SSLv2/SSLv3/TLS 1.0/1.1, no NULL,
/// anonymous, export or low ciphers, forward secrecy, and no vulnerability it checks for:
/// every finding is OK or INFO.
#[test]
fn testssl_finds_nothing_to_flag() {
    let (dir, _pki, _leaf, c) = https();
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c);
    let json = dir.path().join("testssl.json");
    let out = Command::new("testssl")
        .args(["--quiet", "--color", "0", "--warnings", "off", "--jsonfile"])
        .arg(&json)
        .args(["-p", "-s", "-f", "-U"])
        .arg(srv.tls_addr.unwrap().to_string())
        .output()
        .expect("testssl (Debian package testssl.sh; .ci/run installs it)");
    let text = String::from_utf8_lossy(&out.stdout);
    let findings: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert!(findings.len() > 20, "testssl ran its checks: {text}");
    let flagged: Vec<&serde_json::Value> = findings
        .iter()
        .filter(|f| !matches!(f["severity"].as_str(), Some("OK" | "INFO")))
        .collect();
    assert!(flagged.is_empty(), "testssl flags: {flagged:#?}");
    let finding = |id: &str| {
        findings
            .iter()
            .find(|f| f["id"] == id)
            .and_then(|f| f["finding"].as_str())
            .unwrap_or_else(|| panic!("no {id} in testssl's output: {text}"))
            .to_string()
    };
    for id in [
        "SSLv2",
        "SSLv3",
        "TLS1",
        "TLS1_1",
        "cipherlist_NULL",
        "cipherlist_aNULL",
        "cipherlist_EXPORT",
        "cipherlist_LOW",
    ] {
        assert_eq!(finding(id), "not offered", "{id}");
    }
    assert!(finding("TLS1_3").starts_with("offered"));
    srv.shutdown(Shutdown::Fast).unwrap();
    stage.stop();
}

/// Two collectors sharing `tls.ticket_key_file` (one balancer's fleet): a browser resumes on
/// B the session A gave it. With keys of their own it cannot, and gets a full handshake.
#[test]
fn a_shared_ticket_key_lets_a_browser_resume_on_another_collector() {
    let (dir, pki, leaf, _) = https();
    let key = dir.path().join("ticket.key");
    std::fs::write(&key, (0..80u8).collect::<Vec<u8>>()).unwrap();
    let start = |name: &str, shared: bool| {
        let d = dir.path().join(name);
        std::fs::create_dir_all(&d).unwrap();
        let mut c = tls_config(&d, &leaf);
        if shared {
            c.tls.ticket_key_file = key.clone();
        }
        let stage = Stage::start(&d, &c);
        (Server::start(c), stage)
    };
    for shared in [true, false] {
        let (a, sa) = start(&format!("a-{shared}"), shared);
        let (b, sb) = start(&format!("b-{shared}"), shared);
        // One client config: one session cache, as one browser.
        let browser = client(&pki.ca);
        let mut first = TlsConn::open(a.tls_addr.unwrap(), "localhost", &browser);
        // The ticket comes after the handshake: an answer on the connection brings it in.
        let r = first.request(b"GET /beacon?k=a HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.unwrap().status, 204);
        let mut second = TlsConn::open(b.tls_addr.unwrap(), "localhost", &browser);
        assert_eq!(
            second.resumed(),
            shared,
            "resumed on B with a shared key: {shared}"
        );
        let r = second.request(b"GET /beacon?k=b HTTP/1.1\r\nHost: x\r\n\r\n");
        assert_eq!(r.unwrap().status, 204);
        for (srv, stage) in [(a, sa), (b, sb)] {
            srv.shutdown(Shutdown::Fast).unwrap();
            stage.stop();
        }
    }
}

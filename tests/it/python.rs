//! docs/PROTOCOL.md is usable from another language: the Python reference consumer in
//! `examples/consumer.py` receives, decodes and acknowledges what the collector sends.

use crate::common::*;
use beacon_collector::Shutdown;
use std::time::Duration;

#[test]
fn python_reference_consumer_decodes_and_acknowledges() {
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(dir.path());
    let out = dir.path().join("py.ndjson");
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/consumer.py");
    let mut py = std::process::Command::new("python3")
        .arg(script)
        .arg("--socket")
        .arg(&c.forward.socket_path)
        .arg("--out")
        .arg(&out)
        .spawn()
        .expect("python3 is installed (.ci/run checks)");
    let sock = c.forward.socket_path.clone();
    wait_until(Duration::from_secs(10), || {
        std::os::unix::net::UnixStream::connect(&sock).is_ok()
    });

    let srv = Server::start(c.clone());
    let a = srv.addr;
    assert_eq!(get(a, "/beacon?k=q&nl=a%0Ab&bin=%FE").status, 204);
    assert_eq!(
        post(
            a,
            "/beacon",
            "application/json",
            b"{\"k\": \"j\", \"n\": [1, 2]}"
        )
        .status,
        204
    );
    assert_eq!(
        post(
            a,
            "/beacon",
            "application/x-www-form-urlencoded",
            b"k=f&x=1"
        )
        .status,
        204
    );
    assert_eq!(
        post(a, "/beacon", "text/plain", b"hello\tworld").status,
        204
    );
    // A tracker's event with its own id (the record's appended event_id).
    let ev = br#"{"event":"$pageview","uuid":"0193a0c4-3333-7000-8000-000000000001"}"#;
    assert_eq!(post(a, "/e/", "application/json", ev).status, 200);
    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    // Acknowledged by the Python stage, so the spool is empty.
    assert_eq!(
        (report.accepted, report.acknowledged, report.remaining),
        (5, 5, 0)
    );
    kill(py.id(), libc::SIGTERM);
    let _ = py.wait();

    let text = std::fs::read_to_string(&out).unwrap();
    let recs: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 5);
    let e = recs.iter().find(|r| r["path"] == "/e/").unwrap();
    assert_eq!(e["event_id"], "0193a0c4-3333-7000-8000-000000000001");
    let q = recs.iter().find(|r| r["kind"] == "query").unwrap();
    assert_eq!(param(q, "nl").unwrap(), "a\nb");
    assert_eq!(param(q, "bin").unwrap()["b64"], "/g==");
    assert_eq!(q["method"], "GET");
    assert!(q["received_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(q["id"].as_str().unwrap().len(), 36);
    let j = recs.iter().find(|r| r["kind"] == "json").unwrap();
    assert_eq!(j["json"]["n"][1], 2);
    let f = recs.iter().find(|r| r["kind"] == "form").unwrap();
    assert_eq!(param(f, "x").unwrap(), "1");
    let t = recs.iter().find(|r| r["kind"] == "text").unwrap();
    assert_eq!(t["body"], "hello\tworld");
}

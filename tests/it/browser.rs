//! A real browser sends the beacons: headless Chromium loads a page from another origin whose
//! script calls `navigator.sendBeacon` with a string, `URLSearchParams`, `FormData` and a
//! `Blob` of `application/json` (credentialed, so its preflight needs
//! `http.cors_allow_credentials`), and all four land in the files with their fields decoded.

use crate::common::*;
use beacon_collector::Shutdown;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Serves `page` to every request on `l` (the page's origin).
fn serve_page(l: std::net::TcpListener, page: String) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
        }
    });
}

#[test]
fn chromium_send_beacon_string_params_formdata_and_json_blob_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    // The page comes from another origin than the collector's: a cross-origin page.
    let page_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let page_addr = page_listener.local_addr().unwrap();
    c.http.allowed_origins = vec![format!("http://{page_addr}")];
    c.http.cors_allow_credentials = true;
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let u = format!("http://{}/beacon", srv.addr);
    let page = format!(
        r#"<!doctype html><title>beacons</title><script>
const u = "{u}";
navigator.sendBeacon(u + "?k=str", "hello from a string");
navigator.sendBeacon(u + "?k=usp", new URLSearchParams({{f: "usp", a: "1"}}));
const fd = new FormData(); fd.append("f", "formdata"); fd.append("n", "42");
navigator.sendBeacon(u + "?k=fd", fd);
navigator.sendBeacon(u + "?k=blob", new Blob([JSON.stringify({{f: "blob", t: 1}})], {{type: "application/json"}}));
</script>"#
    );
    serve_page(page_listener, page);
    let profile = tempfile::tempdir().unwrap();
    let mut browser = chromium(&format!("http://{page_addr}/"), profile.path(), &[]);

    let deadline = Instant::now() + Duration::from_secs(30);
    let recs = loop {
        let recs = records(&c.processor.files.data_dir);
        if recs.len() >= 4 || Instant::now() > deadline {
            break recs;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let _ = browser.kill();
    let _ = browser.wait();
    srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();

    let by = |k: &str| {
        recs.iter()
            .find(|r| r["params"][0][1] == k)
            .unwrap_or_else(|| panic!("the {k} beacon did not arrive: {recs:#?}"))
            .clone()
    };
    let param = |r: &serde_json::Value, name: &str| {
        r["params"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == name)
            .map(|p| p[1].as_str().unwrap().to_string())
    };
    let s = by("str");
    assert_eq!(
        (s["kind"].as_str(), s["body"].as_str()),
        (Some("text"), Some("hello from a string"))
    );
    let p = by("usp");
    assert_eq!(p["kind"], "form");
    assert_eq!(param(&p, "f").as_deref(), Some("usp"));
    let f = by("fd");
    assert_eq!(f["kind"], "multipart", "FormData is multipart/form-data");
    assert_eq!(param(&f, "f").as_deref(), Some("formdata"));
    assert_eq!(param(&f, "n").as_deref(), Some("42"));
    let b = by("blob");
    assert_eq!(
        b["kind"], "json",
        "the credentialed JSON blob passed its preflight"
    );
    assert_eq!(b["json"]["f"], "blob");
    assert!(b["user_agent"].as_str().unwrap().contains("Chrome"));
}

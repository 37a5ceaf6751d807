//! A real browser sends the beacons: headless Chromium loads a page from another origin whose
//! script calls `navigator.sendBeacon` with a string, `URLSearchParams`, `FormData` and a
//! `Blob` of `application/json` (credentialed, so its preflight needs
//! `http.cors_allow_credentials`), and an image beacon; all land in the files with their
//! fields decoded. Then the same with everything over HTTPS: an HTTPS page, the collector's
//! TLS port, the test CA trusted through an NSS database.

use crate::common::*;
use beacon_collector::Shutdown;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

/// Serves `page` to every request on `l` (the page's origin), over TLS with `tls`.
fn serve_page(
    l: std::net::TcpListener,
    page: String,
    tls: Option<std::sync::Arc<rustls::ServerConfig>>,
) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let mut s: Box<dyn ReadWrite> = match &tls {
                None => Box::new(s),
                Some(cfg) => match rustls::ServerConnection::new(cfg.clone()) {
                    Ok(c) => Box::new(rustls::StreamOwned::new(c, s)),
                    Err(_) => continue,
                },
            };
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf);
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
                page.len()
            );
            let _ = s.flush();
        }
    });
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// The script of the page: the four `sendBeacon` bodies to `u` (a beacon URL), and an image
/// beacon to `gif`.
fn beacon_script(u: &str, gif: &str) -> String {
    format!(
        r#"<!doctype html><title>beacons</title><script>
const u = "{u}";
navigator.sendBeacon(u + "?k=str", "hello from a string");
navigator.sendBeacon(u + "?k=usp", new URLSearchParams({{f: "usp", a: "1"}}));
const fd = new FormData(); fd.append("f", "formdata"); fd.append("n", "42");
navigator.sendBeacon(u + "?k=fd", fd);
navigator.sendBeacon(u + "?k=blob", new Blob([JSON.stringify({{f: "blob", t: 1}})], {{type: "application/json"}}));
new Image().src = "{gif}?k=img";
</script>"#
    )
}

/// Waits up to 30 s for `n` records in `dir`.
fn wait_records(dir: &std::path::Path, n: usize) -> Vec<serde_json::Value> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let recs = records(dir);
        if recs.len() >= n || Instant::now() > deadline {
            return recs;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
    let gif = format!("http://{}/beacon.gif", srv.addr);
    serve_page(page_listener, beacon_script(&u, &gif), None);
    let profile = tempfile::tempdir().unwrap();
    let mut browser = chromium(&format!("http://{page_addr}/"), profile.path(), &[]);
    let recs = wait_records(&c.processor.files.data_dir, 5);
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

/// The same over HTTPS end to end: an HTTPS page (its own origin) whose beacons go to the
/// collector's TLS port; Chromium trusts the test CA through an NSS database, as a browser
/// trusts a real one.
#[test]
fn chromium_beacons_over_https_all_arrive() {
    let dir = tempfile::tempdir().unwrap();
    let pki = crate::common::tls::Pki::new(dir.path());
    let leaf = pki.leaf("localhost", &["localhost"], 30);
    let mut c = test_config(dir.path());
    c.tls.enabled = true;
    c.tls.listen = "127.0.0.1:0".parse().unwrap();
    c.tls.cert_file = leaf.cert.clone();
    c.tls.key_file = leaf.key.clone();
    let page_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let page_port = page_listener.local_addr().unwrap().port();
    c.http.allowed_origins = vec![format!("https://localhost:{page_port}")];
    c.http.cors_allow_credentials = true;
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let port = srv.tls_addr.unwrap().port();
    let u = format!("https://localhost:{port}/beacon");
    let gif = format!("https://localhost:{port}/beacon.gif");
    serve_page(
        page_listener,
        beacon_script(&u, &gif),
        Some(crate::common::tls::server(&leaf)),
    );
    let home = tempfile::tempdir().unwrap();
    crate::common::tls::trust_in_nss(home.path(), &pki.ca);
    let profile = tempfile::tempdir().unwrap();
    let mut browser = chromium_command(
        &format!("https://localhost:{page_port}/"),
        profile.path(),
        &[],
    )
    .env("HOME", home.path())
    .spawn()
    .expect("chromium");
    let recs = wait_records(&c.processor.files.data_dir, 5);
    let _ = browser.kill();
    let _ = browser.wait();
    srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    let keys: Vec<&str> = recs
        .iter()
        .filter_map(|r| r["params"][0][1].as_str())
        .collect();
    for k in ["str", "usp", "fd", "blob", "img"] {
        assert!(
            keys.contains(&k),
            "the {k} beacon did not arrive over HTTPS: {recs:#?}"
        );
    }
    let blob = recs.iter().find(|r| r["params"][0][1] == "blob").unwrap();
    assert_eq!(
        blob["json"]["f"], "blob",
        "the credentialed preflight passed over HTTPS"
    );
    assert!(recs.iter().all(|r| r["origin"].as_str()
        == Some(&format!("https://localhost:{page_port}")[..])
        || r["origin"].is_null()));
}

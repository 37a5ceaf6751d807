//! Beacons of every shape arrive in the NDJSON output with the right fields.

use crate::common::*;
use beacon_collector::ingest::Engine;
use beacon_collector::Shutdown;

#[test]
fn get_and_post_beacons_arrive_with_their_fields() {
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(dir.path());
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let a = srv.addr;

    let r = req(
        a,
        "GET /beacon?u=https%3A%2F%2Fshop.example%2Fcart&t_done=1234&nl=line1%0Aline2&bin=%FF%00&sp=a+b HTTP/1.1\r\n\
         Host: t\r\nUser-Agent: Mozilla/5.0 (test)\r\nReferer: https://shop.example/cart\r\nOrigin: https://shop.example\r\n\r\n",
    );
    assert_eq!(r.status, 204);
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("access-control-allow-origin"), Some("*"));
    assert!(r.header("access-control-allow-credentials").is_none());

    let r = req(a, "HEAD /beacon?h=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 204);

    let r = get(a, "/beacon.gif?g=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), Some("image/gif"));
    assert_eq!(r.body.len(), 43);
    assert!(r.body.starts_with(b"GIF89a"));

    assert_eq!(
        post(
            a,
            "/beacon?site=s1",
            "application/x-www-form-urlencoded",
            b"f=1&msg=hi%20there"
        )
        .status,
        204
    );
    assert_eq!(
        post(
            a,
            "/beacon",
            "application/json",
            b"{\n  \"j\": [1, 2.50],\n  \"s\": \"x\\ny\"\n}"
        )
        .status,
        204
    );
    // sendBeacon(url, string): text/plain; JSON inside is kept as JSON, anything else as text.
    assert_eq!(
        post(a, "/beacon", "text/plain;charset=UTF-8", b"{\"tp\":true}").status,
        204
    );
    assert_eq!(
        post(
            a,
            "/beacon",
            "text/plain;charset=UTF-8",
            b"free text\nsecond line"
        )
        .status,
        204
    );

    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    assert_eq!(report.accepted, 7);
    assert_eq!(report.acknowledged, 7);
    stage.stop();

    let recs = records(&c.processor.files.data_dir);
    // One line per record: the newline inside a value did not split it.
    assert_eq!(recs.len(), 7, "{recs:#?}");
    assert_eq!(unique_ids(&recs).len(), 7);

    let q = recs.iter().find(|r| param(r, "t_done").is_some()).unwrap();
    assert_eq!(q["method"], "GET");
    assert_eq!(q["path"], "/beacon");
    assert_eq!(q["kind"], "query");
    assert_eq!(param(q, "u").unwrap(), "https://shop.example/cart");
    assert_eq!(param(q, "nl").unwrap(), "line1\nline2");
    assert_eq!(param(q, "sp").unwrap(), "a b");
    // Invalid UTF-8 is kept byte for byte, as base64.
    assert_eq!(param(q, "bin").unwrap()["b64"], "/wA=");
    assert_eq!(q["user_agent"], "Mozilla/5.0 (test)");
    assert_eq!(q["referer"], "https://shop.example/cart");
    assert_eq!(q["origin"], "https://shop.example");
    assert!(q["peer"].as_str().unwrap().starts_with("127.0.0.1:"));
    assert!(q["received_at"].as_str().unwrap().ends_with('Z'));

    let h = recs.iter().find(|r| param(r, "h").is_some()).unwrap();
    assert_eq!(h["method"], "HEAD");
    let g = recs.iter().find(|r| param(r, "g").is_some()).unwrap();
    assert_eq!(g["path"], "/beacon.gif");

    let f = recs.iter().find(|r| r["kind"] == "form").unwrap();
    assert_eq!(param(f, "site").unwrap(), "s1");
    assert_eq!(param(f, "msg").unwrap(), "hi there");

    let j = recs
        .iter()
        .find(|r| r["kind"] == "json" && r["json"]["j"].is_array())
        .unwrap();
    assert_eq!(j["json"]["s"], "x\ny");
    assert_eq!(j["method"], "POST");
    assert!(recs
        .iter()
        .any(|r| r["kind"] == "json" && r["json"]["tp"] == true));
    let t = recs.iter().find(|r| r["kind"] == "text").unwrap();
    assert_eq!(t["body"], "free text\nsecond line");
}

#[test]
fn cors_preflight_and_origin_allow_list() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.http.allowed_origins = vec!["https://shop.example".into()];
    let _stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c);
    let a = srv.addr;

    let ok = req(
        a,
        "OPTIONS /beacon HTTP/1.1\r\nHost: t\r\nOrigin: https://shop.example\r\n\
         Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n",
    );
    assert_eq!(ok.status, 204);
    assert_eq!(
        ok.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
    assert!(ok
        .header("access-control-allow-methods")
        .unwrap()
        .contains("POST"));
    // content-encoding too: a fetch with a CompressionStream body asks for it.
    assert_eq!(
        ok.header("access-control-allow-headers"),
        Some("content-type, content-encoding, sp-anonymous")
    );
    assert_eq!(ok.header("access-control-max-age"), Some("86400"));
    assert!(ok.header("access-control-allow-credentials").is_none());
    assert!(ok
        .headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("vary") && v.contains("Origin")));

    let bad = req(
        a,
        "OPTIONS /beacon HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
    );
    assert_eq!(bad.status, 403);
    assert!(bad.header("access-control-allow-origin").is_none());

    // A simple (no-preflight) text/plain beacon from a foreign origin is refused too.
    let raw = "POST /beacon HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx";
    assert_eq!(req(a, raw).status, 403);
    let raw = "POST /beacon HTTP/1.1\r\nHost: t\r\nOrigin: https://shop.example\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx";
    let r = req(a, raw);
    assert_eq!(r.status, 204);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://shop.example")
    );
}

/// `sendBeacon(url, formData)` and `curl -F` send multipart/form-data: the fields arrive as
/// parameters (kind "multipart"), a file part as its name, type and size.
#[test]
fn multipart_form_data_fields_arrive_as_params() {
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(dir.path());
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let body = "------WebKitFormBoundary7MA4YWxk\r\n\
        Content-Disposition: form-data; name=\"k\"\r\n\r\nmp\r\n\
        ------WebKitFormBoundary7MA4YWxk\r\n\
        Content-Disposition: form-data; name=\"t_done\"\r\n\r\n1234\r\n\
        ------WebKitFormBoundary7MA4YWxk\r\n\
        Content-Disposition: form-data; name=\"shot\"; filename=\"s.png\"\r\n\
        Content-Type: image/png\r\n\r\n\x01\x02\x03\r\n\
        ------WebKitFormBoundary7MA4YWxk--\r\n";
    let ct = "multipart/form-data; boundary=----WebKitFormBoundary7MA4YWxk";
    assert_eq!(
        post(srv.addr, "/beacon?src=fd", ct, body.as_bytes()).status,
        204
    );
    assert_eq!(post(srv.addr, "/beacon", ct, b"not multipart").status, 400);
    assert_eq!(
        post(srv.addr, "/beacon", "multipart/form-data", body.as_bytes()).status,
        400
    );
    srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    let recs = records(&c.processor.files.data_dir);
    let r = recs
        .iter()
        .find(|r| r["kind"] == "multipart")
        .expect("a multipart record");
    let params: Vec<(String, String)> = r["params"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p[0].as_str().unwrap().into(), p[1].as_str().unwrap().into()))
        .collect();
    assert_eq!(params[0], ("src".into(), "fd".into()));
    assert_eq!(params[1], ("k".into(), "mp".into()));
    assert_eq!(params[2], ("t_done".into(), "1234".into()));
    assert_eq!(params[3].0, "shot");
    assert_eq!(
        params[3].1,
        r#"{"filename":"s.png","content_type":"image/png","bytes":3}"#
    );
}

/// Content-Encoding: gzip, deflate and zstd bodies are decoded and stored decoded; an unknown
/// coding is 415, a corrupt one 400, a zip bomb 413 (decoded size capped). Both engines.
#[test]
fn compressed_bodies_are_decoded() {
    use std::io::Write;
    let gzip = |b: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b).unwrap();
        e.finish().unwrap()
    };
    for engine in [Engine::Native, Engine::Hyper] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        c.server.engine = engine;
        let stage = Stage::start(dir.path(), &c);
        let srv = Server::start(c.clone());
        let send = |ct: &str, ce: &str, body: &[u8]| {
            let mut raw = format!(
                "POST /beacon HTTP/1.1\r\nHost: t\r\nContent-Type: {ct}\r\nContent-Encoding: {ce}\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .into_bytes();
            raw.extend_from_slice(body);
            Conn::open(srv.addr)
                .request(&raw)
                .expect("an answer")
                .status
        };
        let json = br#"{"k":"gz","events":[1,2,3]}"#;
        assert_eq!(
            send("application/json", "gzip", &gzip(json)),
            204,
            "{engine:?}"
        );
        let zs = ruzstd::encoding::compress_to_vec(
            &b"hello zstd k=zs"[..],
            ruzstd::encoding::CompressionLevel::Fastest,
        );
        assert_eq!(send("text/plain", "zstd", &zs), 204, "{engine:?}");
        assert_eq!(
            send("text/plain", "br", b"\x0b\x02\x80hi\x03"),
            415,
            "{engine:?}"
        );
        assert_eq!(
            send("text/plain", "gzip", b"not gzip at all"),
            400,
            "{engine:?}"
        );
        let bomb = gzip(&vec![b'a'; 20_000_000]);
        assert!(bomb.len() < c.http.max_body_bytes);
        assert_eq!(send("text/plain", "gzip", &bomb), 413, "{engine:?}");
        srv.shutdown(Shutdown::Graceful).unwrap();
        stage.stop();
        let recs = records(&c.processor.files.data_dir);
        assert!(
            recs.iter().any(|r| r["json"]["k"] == "gz"),
            "{engine:?}: gzip JSON decoded"
        );
        assert!(
            recs.iter().any(|r| r["body"] == "hello zstd k=zs"),
            "{engine:?}: zstd text decoded"
        );
        assert_eq!(recs.len(), 2, "{engine:?}: nothing else stored");
    }
}

/// `POST /beacon/batch`: a JSON array, NDJSON, Snowplow's payload_data and PostHog's batch
/// each become one record per event with the request's metadata; all spooled or none (an
/// invalid event refuses the whole batch); over the limit 413. Both engines.
#[test]
fn batch_endpoint_stores_one_record_per_event_all_or_none() {
    for engine in [Engine::Native, Engine::Hyper] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        c.server.engine = engine;
        c.http.max_batch_events = 5;
        let stage = Stage::start(dir.path(), &c);
        let srv = Server::start(c.clone());
        let a = srv.addr;
        let batch =
            |ct: &str, body: &str| post(a, "/beacon/batch?src=b", ct, body.as_bytes()).status;
        assert_eq!(
            batch(
                "application/json",
                r#"[{"k":"arr1"},{"k":"arr2"},{"k":"arr3"}]"#
            ),
            204
        );
        assert_eq!(
            batch("application/x-ndjson", "{\"k\":\"nd1\"}\n{\"k\":\"nd2\"}\n"),
            204
        );
        assert_eq!(
            batch(
                "text/plain",
                r#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{"k":"sp1","e":"pv"}]}"#
            ),
            204
        );
        assert_eq!(
            batch(
                "application/json",
                r#"{"api_key":"x","batch":[{"k":"ph1"}]}"#
            ),
            204
        );
        // All or none: one bad event refuses the batch; too many events; empty.
        assert_eq!(batch("application/json", r#"[{"k":"bad1"},{"k":]"#), 400);
        assert_eq!(
            batch("application/x-ndjson", "{\"k\":\"bad2\"}\nnot json\n"),
            400
        );
        assert_eq!(
            batch(
                "application/json",
                &format!("[{}]", [r#"{"k":"many"}"#; 6].join(","))
            ),
            413
        );
        assert_eq!(batch("application/json", "[]"), 400);
        assert_eq!(batch("multipart/form-data; boundary=x", "--x--"), 415);
        assert_eq!(get(a, "/beacon/batch").status, 405);
        let report = srv.shutdown(Shutdown::Graceful).unwrap();
        stage.stop();
        assert_eq!(report.accepted, 7, "{engine:?}: one per event");
        let recs = records(&c.processor.files.data_dir);
        let mut keys: Vec<String> = recs
            .iter()
            .map(|r| r["json"]["k"].as_str().unwrap().to_string())
            .collect();
        keys.sort();
        assert_eq!(
            keys,
            ["arr1", "arr2", "arr3", "nd1", "nd2", "ph1", "sp1"],
            "{engine:?}"
        );
        assert!(recs
            .iter()
            .all(|r| r["params"][0][0] == "src" && r["path"] == "/beacon/batch"));
        let ids: std::collections::HashSet<_> = recs.iter().map(|r| r["id"].clone()).collect();
        assert_eq!(ids.len(), 7, "each event has its own id");
    }
}

/// `sendBeacon` with an `application/json` Blob is credentialed: with
/// `http.cors_allow_credentials` both engines answer its preflight and the beacon with the exact
/// origin and `Access-Control-Allow-Credentials: true`, and the JSON arrives.
#[test]
fn credentialed_cors_for_json_blobs_on_both_engines() {
    for engine in [Engine::Native, Engine::Hyper] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        c.server.engine = engine;
        c.http.allowed_origins = vec!["https://shop.example".into()];
        c.http.cors_allow_credentials = true;
        let _stage = Stage::start(dir.path(), &c);
        let srv = Server::start(c.clone());
        let a = srv.addr;
        let pre = req(
            a,
            "OPTIONS /beacon HTTP/1.1\r\nHost: t\r\nOrigin: https://shop.example\r\n\
             Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n",
        );
        assert_eq!(pre.status, 204, "{engine:?}");
        assert_eq!(
            pre.header("access-control-allow-origin"),
            Some("https://shop.example")
        );
        assert_eq!(
            pre.header("access-control-allow-credentials"),
            Some("true"),
            "{engine:?}"
        );
        assert_eq!(
            pre.header("access-control-allow-headers"),
            Some("content-type, content-encoding, sp-anonymous")
        );
        let body = br#"{"k":"blob","t_done":12}"#;
        let raw = format!(
            "POST /beacon HTTP/1.1\r\nHost: t\r\nOrigin: https://shop.example\r\nCookie: s=1\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{}",
            body.len(),
            std::str::from_utf8(body).unwrap()
        );
        let r = req(a, &raw);
        assert_eq!(r.status, 204, "{engine:?}");
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        // A foreign origin still gets nothing.
        let bad = req(
            a,
            "OPTIONS /beacon HTTP/1.1\r\nHost: t\r\nOrigin: https://evil.example\r\nAccess-Control-Request-Method: POST\r\n\r\n",
        );
        assert_eq!(bad.status, 403);
        assert!(bad.header("access-control-allow-credentials").is_none());
        srv.shutdown(Shutdown::Graceful).unwrap();
        let recs = records(&c.processor.files.data_dir);
        assert!(
            recs.iter().any(|r| r["json"]["k"] == "blob"),
            "{engine:?}: the JSON blob arrived"
        );
    }
}

#[test]
fn routes_methods_and_health() {
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(dir.path());
    let _stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c);
    let a = srv.addr;
    assert_eq!(get(a, "/healthz").status, 200);
    assert_eq!(get(a, "/nope").status, 404);
    let r = req(a, "DELETE /beacon HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!(r.status, 405);
    assert_eq!(r.header("allow"), Some("GET, HEAD, POST, OPTIONS"));
    assert_eq!(
        req(
            a,
            "POST /healthz HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n"
        )
        .status,
        405
    );
    assert_eq!(post(a, "/beacon.gif", "text/plain", b"x").status, 405);
}

/// Spool and output hold client IPs and page URLs: directories 0700, files 0600, whatever
/// the umask.
#[test]
fn spool_and_data_files_are_private_to_their_user() {
    use std::os::unix::fs::PermissionsExt;
    // Defaults: owner rw, group r (a log shipper), nobody else; then owner only, configured.
    for (file, dir_mode) in [(0o640, 0o750), (0o600, 0o700)] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        c.spool.file_mode = file;
        c.processor.files.mode = file;
        let stage = Stage::start(dir.path(), &c);
        let srv = Server::start(c.clone());
        assert_eq!(get(srv.addr, "/beacon?k=private").status, 204);
        srv.shutdown(Shutdown::Graceful).unwrap();
        stage.stop();
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&c.spool.dir), dir_mode, "spool dir");
        assert_eq!(mode(&c.processor.files.data_dir), dir_mode, "data dir");
        let mut files = 0;
        for d in [&c.spool.dir, &c.processor.files.data_dir] {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                assert_eq!(mode(&p), file, "{p:?}");
                files += 1;
            }
        }
        assert!(files >= 3, "lock, checkpoint or segment, and a data file");
    }
}

/// Batch amplification: every record repeats the request's query and headers, so 100 tiny
/// events under an 8 KB query and a 12 KB User-Agent stored 2,082,400 bytes from ~20 KB
/// (x103). Over `http.max_batch_stored_bytes` such a batch is 413 and nothing of it is stored;
/// under it, a batch pays the rate limit per record. Both engines.
#[test]
fn batch_amplification_is_bounded_and_rate_limited() {
    for engine in [Engine::Native, Engine::Hyper] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        c.server.engine = engine;
        c.http.max_uri_bytes = 16 * 1024;
        c.http.max_param_value_bytes = 16 * 1024;
        c.http.max_header_bytes = 32 * 1024;
        c.rate_limit.enabled = true;
        c.rate_limit.burst = 120;
        c.rate_limit.per_client_per_second = 0.01;
        let stage = Stage::start(dir.path(), &c);
        let srv = Server::start(c.clone());
        let events = format!("[{}]", vec![r#"{"e":1}"#; 100].join(","));
        let send = |query: &str, ua: &str, body: &str| {
            let raw = format!(
                "POST /beacon/batch?{query} HTTP/1.1\r\nHost: t\r\nUser-Agent: {ua}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            Conn::open(srv.addr)
                .request(raw.as_bytes())
                .expect("an answer")
        };
        let big_query = format!("k=amp&q={}", "q".repeat(8000));
        let r = send(&big_query, &"u".repeat(12_000), &events);
        assert_eq!(r.status, 413, "{engine:?}");
        assert_eq!(String::from_utf8_lossy(&r.body).trim(), "batch_too_large");
        // 100 small events: 204, and 100 of the 119 tokens left are gone (the 413 took one).
        assert_eq!(send("k=ok", "ua", &events).status, 204, "{engine:?}");
        for i in 0..19 {
            assert_eq!(get(srv.addr, &format!("/beacon?k=one{i}")).status, 204);
        }
        assert_eq!(get(srv.addr, "/beacon?k=over").status, 429, "{engine:?}");
        srv.shutdown(Shutdown::Graceful).unwrap();
        stage.stop();
        let recs = records(&c.processor.files.data_dir);
        assert!(recs.iter().all(|r| param(r, "k").unwrap() != "amp"));
        assert_eq!(recs.len(), 100 + 19, "{engine:?}");
    }
}

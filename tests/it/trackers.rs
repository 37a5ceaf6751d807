//! The trackers' own requests, byte for byte as they send them, on both engines with the
//! default routes: Snowplow's tp2 POST (credentialed preflight) and `/i` pixel, PostHog's
//! gzip-js body without `Content-Encoding`, its JSON batch, its sendBeacon `data=<base64>`
//! form, its flags and remote config; each event one record with the tracker's own id as
//! `event_id`, answered as the tracker expects (PostHog retries anything but 200).

use crate::common::*;
use beacon_collector::ingest::Engine;
use beacon_collector::Shutdown;
use std::io::Write;

const ORIGIN: &str = "https://shop.example";

fn gzip(b: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(b).unwrap();
    e.finish().unwrap()
}

/// A POST with the page's `Origin`, as a tracker's `fetch` sends it.
fn post_from_page(addr: std::net::SocketAddr, target: &str, ctype: &str, body: &[u8]) -> Resp {
    let mut raw = format!(
        "POST {target} HTTP/1.1\r\nHost: t\r\nOrigin: {ORIGIN}\r\nContent-Type: {ctype}\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    raw.extend_from_slice(body);
    Conn::open(addr).request(&raw).expect("a response")
}

fn base64(b: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for c in b.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[test]
fn snowplow_and_posthog_requests_land_once_per_event_with_their_ids() {
    for engine in [Engine::Native, Engine::Hyper] {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        c.server.engine = engine;
        // Snowplow's fetch sends credentials: its docs say to allow them for the page's origin.
        c.http.allowed_origins = vec![ORIGIN.into()];
        c.http.cors_allow_credentials = true;
        let stage = Stage::start(dir.path(), &c);
        let srv = Server::start(c.clone());
        let a = srv.addr;

        // Snowplow tp2: the credentialed preflight, then payload_data with two events.
        let pre = req(
            a,
            &format!(
                "OPTIONS /com.snowplowanalytics.snowplow/tp2 HTTP/1.1\r\nHost: t\r\nOrigin: {ORIGIN}\r\n\
                 Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: content-type\r\n\r\n"
            ),
        );
        assert_eq!(pre.status, 204, "{engine:?}");
        assert_eq!(pre.header("access-control-allow-credentials"), Some("true"));
        assert_eq!(pre.header("access-control-allow-origin"), Some(ORIGIN));
        let sp = br#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{"e":"pv","url":"https://shop.example/","eid":"7b1e4c2a-0c9d-4d0a-9c53-5d2f6a1b0e01","tv":"js-4.10.1","stm":"1733300000000"},{"e":"se","se_ca":"cart","se_ac":"add","eid":"7b1e4c2a-0c9d-4d0a-9c53-5d2f6a1b0e02","tv":"js-4.10.1"}]}"#;
        let r = post_from_page(
            a,
            "/com.snowplowanalytics.snowplow/tp2",
            "application/json; charset=UTF-8",
            sp,
        );
        assert_eq!(r.status, 200, "{engine:?}: {:?}", r.body);
        assert_eq!(r.header("access-control-allow-credentials"), Some("true"));
        // The GET pixel, fixed at /i in the tracker.
        let r = get(
            a,
            "/i?e=pv&url=https%3A%2F%2Fshop.example%2F&eid=7b1e4c2a-0c9d-4d0a-9c53-5d2f6a1b0e03&tv=js-4.10.1",
        );
        assert_eq!(r.status, 200);
        assert_eq!(r.header("content-type"), Some("image/gif"));

        // PostHog: gzip named only in the query, a JSON batch, a sendBeacon base64 form.
        let ph = br#"[{"event":"$pageview","uuid":"0193a0c4-1111-7000-8000-000000000001","properties":{"$current_url":"https://shop.example/"}},{"event":"clicked","uuid":"0193a0c4-1111-7000-8000-000000000002","properties":{}}]"#;
        let r = post_from_page(
            a,
            "/e/?ip=0&_=1733300000000&ver=1.449.2&compression=gzip-js",
            "text/plain",
            &gzip(ph),
        );
        assert_eq!(
            r.status,
            200,
            "{engine:?}: {:?}",
            String::from_utf8_lossy(&r.body)
        );
        assert_eq!(r.body, br#"{"status":1}"#);
        let batch = br#"{"api_key":"phc_test","batch":[{"event":"$autocapture","uuid":"0193a0c4-1111-7000-8000-000000000003","properties":{}}],"sent_at":"2026-12-04T00:00:00.000Z"}"#;
        let r = post_from_page(a, "/i/v0/e/?ver=1.449.2", "application/json", batch);
        assert_eq!(r.status, 200);
        let unload = br#"[{"event":"$pageleave","uuid":"0193a0c4-1111-7000-8000-000000000004","properties":{}}]"#;
        let form = format!(
            "data={}",
            base64(unload)
                .replace('+', "%2B")
                .replace('/', "%2F")
                .replace('=', "%3D")
        );
        let r = post_from_page(
            a,
            "/e/?ip=0&ver=1.449.2&compression=base64",
            "application/x-www-form-urlencoded",
            form.as_bytes(),
        );
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));

        // Flags and remote config: answered, nothing recorded.
        let r = post_from_page(
            a,
            "/flags/?v=2&config=true",
            "application/json",
            br#"{"token":"phc_test","distinct_id":"d"}"#,
        );
        assert_eq!(r.status, 200);
        let flags: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(flags["featureFlags"], serde_json::json!({}));
        let r = get(a, "/array/phc_test/config");
        assert_eq!(r.status, 200);
        serde_json::from_slice::<serde_json::Value>(&r.body).unwrap();
        assert_eq!(get(a, "/array/phc_test/config.js").status, 200);

        // A 404 for the page keeps CORS, so the page sees the status.
        let r = req(
            a,
            &format!("GET /nope HTTP/1.1\r\nHost: t\r\nOrigin: {ORIGIN}\r\n\r\n"),
        );
        assert_eq!(r.status, 404);
        assert_eq!(r.header("access-control-allow-origin"), Some(ORIGIN));
        // A body that is not what the query says: refused, nothing stored.
        let r = post_from_page(a, "/e/?compression=gzip-js", "text/plain", b"not gzip");
        assert_eq!(r.status, 400);
        assert_eq!(r.body, b"bad_content_encoding");

        srv.shutdown(Shutdown::Graceful).unwrap();
        stage.stop();
        let recs = records(&c.processor.files.data_dir);
        let ids: Vec<&str> = recs.iter().filter_map(|r| r["event_id"].as_str()).collect();
        let mut want = vec![
            "7b1e4c2a-0c9d-4d0a-9c53-5d2f6a1b0e01",
            "7b1e4c2a-0c9d-4d0a-9c53-5d2f6a1b0e02",
            "7b1e4c2a-0c9d-4d0a-9c53-5d2f6a1b0e03",
            "0193a0c4-1111-7000-8000-000000000001",
            "0193a0c4-1111-7000-8000-000000000002",
            "0193a0c4-1111-7000-8000-000000000003",
            "0193a0c4-1111-7000-8000-000000000004",
        ];
        let mut got = ids.clone();
        got.sort();
        want.sort();
        assert_eq!(
            got, want,
            "{engine:?}: one record per event, each with its id"
        );
        assert_eq!(recs.len(), 7, "{engine:?}: nothing else stored: {recs:#?}");
        let se = recs
            .iter()
            .find(|r| r["event_id"] == "7b1e4c2a-0c9d-4d0a-9c53-5d2f6a1b0e02")
            .unwrap();
        assert_eq!(se["json"]["se_ca"], "cart", "the event's fields decoded");
        let leave = recs
            .iter()
            .find(|r| r["event_id"] == "0193a0c4-1111-7000-8000-000000000004")
            .unwrap();
        assert_eq!(leave["json"]["event"], "$pageleave");
        let pixel = recs.iter().find(|r| r["path"] == "/i").unwrap();
        assert_eq!(param(pixel, "e").unwrap(), "pv");
    }
}

/// `http.trackers = []`: the trackers' paths are not served.
#[test]
fn trackers_can_be_turned_off() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    c.http.trackers = Vec::new();
    let _stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    assert_eq!(post(srv.addr, "/e/", "application/json", b"[]").status, 404);
    assert_eq!(get(srv.addr, "/i?e=pv").status, 404);
    assert_eq!(get(srv.addr, "/beacon?x=1").status, 204);
}

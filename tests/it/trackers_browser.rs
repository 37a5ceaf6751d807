//! The trackers real pages run, as they are (npm packages pinned in tests/trackers, fetched by
//! tests/trackers/fetch.sh), in headless Chromium on pages from another origin, configured
//! only by their endpoint (and credentials allowed for the page's origin, as Snowplow's docs
//! say): boomerang's GET and POST beacons, Snowplow's POST and GET, PostHog's fetch and its
//! unload flush, and a `fetch` whose body is gzip from a `CompressionStream`. Every event lands
//! exactly once, by its event id, with its fields decoded.

use crate::common::*;
use beacon_collector::Shutdown;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The trackers' packages, fetched once per test run (a no-op when `.ci/run` already did).
fn trackers() -> PathBuf {
    static FETCH: std::sync::Once = std::sync::Once::new();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = root.join("target/trackers");
    FETCH.call_once(|| {
        let ok = Command::new("bash")
            .arg(root.join("tests/trackers/fetch.sh"))
            .arg(&dir)
            .status()
            .expect("bash");
        assert!(
            ok.success(),
            "tests/trackers/fetch.sh failed: it needs npm (.ci/run installs it)"
        );
    });
    dir.join("node_modules")
}

/// Serves `pages` by path and the packages under `/nm/` on `l`: the pages' own origin.
fn serve(l: std::net::TcpListener, pages: HashMap<String, String>, modules: PathBuf) {
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            let mut buf = [0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let head = String::from_utf8_lossy(&buf[..n]);
            let target = head.split(' ').nth(1).unwrap_or("/").to_string();
            let path = target.split('?').next().unwrap_or("/");
            let (ctype, body) = match path.strip_prefix("/nm/") {
                // Nothing outside the packages: the path is the test's own.
                Some(rest) if !rest.contains("..") => (
                    "application/javascript",
                    std::fs::read(modules.join(rest)).unwrap_or_default(),
                ),
                _ => (
                    "text/html",
                    pages
                        .get(path)
                        .cloned()
                        .unwrap_or_else(|| "<!doctype html>done".into())
                        .into_bytes(),
                ),
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = s.write_all(&body);
        }
    });
}

/// Loads `url` in headless Chromium until `done` holds for the records (or 30 s), then closes
/// it. The user agent is a desktop Chrome's: posthog-js drops events from `HeadlessChrome` as a
/// bot's, and a real page has a real browser's.
fn load(url: &str, data: &Path, done: impl Fn(&[serde_json::Value]) -> bool) {
    let profile = tempfile::tempdir().unwrap();
    let mut browser = chromium(
        url,
        profile.path(),
        &["--user-agent=Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/156.0.0.0 Safari/537.36"],
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !done(&records(data)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = browser.kill();
    let _ = browser.wait();
}

fn p<'a>(r: &'a serde_json::Value, name: &str) -> Option<&'a str> {
    param(r, name).and_then(|v| v.as_str())
}

/// A record's event name: Snowplow's `e` (body or query), PostHog's `event`.
fn event_name(r: &serde_json::Value) -> Option<&str> {
    let j = &r["json"];
    j["e"]
        .as_str()
        .or_else(|| j["event"].as_str())
        .or_else(|| p(r, "e"))
}

#[test]
fn boomerang_snowplow_posthog_and_compressed_fetch_land_once_per_event() {
    let modules = trackers();
    let dir = tempfile::tempdir().unwrap();
    let mut c = test_config(dir.path());
    let page_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let page_origin = format!("http://{}", page_listener.local_addr().unwrap());
    c.http.allowed_origins = vec![page_origin.clone()];
    c.http.cors_allow_credentials = true;
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let col = format!("http://{}", srv.addr);
    let data = c.processor.files.data_dir.clone();

    let mut pages = HashMap::new();
    pages.insert(
        "/boomerang.html".to_string(),
        format!(
            r#"<!doctype html><title>boomerang</title>
<script src="/nm/boomerangjs/boomerang.js"></script><script src="/nm/boomerangjs/plugins/rt.js"></script>
<script>BOOMR.init({{beacon_url: "{col}/beacon", beacon_type: location.search.includes("post") ? "POST" : "GET"}});</script><p>page</p>"#
        ),
    );
    pages.insert(
        "/snowplow.html".to_string(),
        format!(
            r#"<!doctype html><title>snowplow</title>
<script src="/nm/@snowplow/browser-tracker/dist/index.umd.min.js"></script>
<script>
const t = snowplowBrowserTracking;
t.newTracker("sp", "{col}", {{appId: "shop"}});
t.newTracker("spget", "{col}", {{appId: "shop-get", eventMethod: "get"}});
t.trackPageView();
t.trackStructEvent({{category: "cart", action: "add", label: "sku-1"}});
setTimeout(() => {{ location.href = "/done"; }}, 2500);
</script>"#
        ),
    );
    pages.insert(
        "/posthog.html".to_string(),
        format!(
            r#"<!doctype html><title>posthog</title>
<script src="/nm/posthog-js/dist/array.full.js"></script>
<script>
posthog.init("phc_test", {{api_host: "{col}"}});
posthog.capture("custom_one", {{n: 1}});
// Leaving the page flushes what is queued (sendBeacon on pagehide).
setTimeout(() => {{ posthog.capture("custom_two", {{n: 2}}); location.href = "/done"; }}, 3500);
</script>"#
        ),
    );
    pages.insert(
        "/fetchgz.html".to_string(),
        format!(
            r#"<!doctype html><title>compressed fetch</title>
<script>
(async () => {{
  const json = JSON.stringify({{k: "gz", pad: "x".repeat(2000)}});
  const body = await new Response(new Blob([json]).stream().pipeThrough(new CompressionStream("gzip"))).arrayBuffer();
  await fetch("{col}/beacon?k=gz", {{method: "POST", keepalive: true,
    headers: {{"Content-Type": "application/json", "Content-Encoding": "gzip"}}, body}});
}})();
</script>"#
        ),
    );
    serve(page_listener, pages, modules);

    let boomerang = |r: &serde_json::Value, mode: &str| {
        r["path"] == "/beacon" && p(r, "u").is_some_and(|u| u.ends_with(mode))
    };
    load(&format!("{page_origin}/boomerang.html?get"), &data, |rs| {
        rs.iter().any(|r| boomerang(r, "?get"))
    });
    load(&format!("{page_origin}/boomerang.html?post"), &data, |rs| {
        rs.iter().any(|r| boomerang(r, "?post"))
    });
    let snowplow = |r: &serde_json::Value| {
        r["path"] == "/com.snowplowanalytics.snowplow/tp2" || r["path"] == "/i"
    };
    load(&format!("{page_origin}/snowplow.html"), &data, |rs| {
        rs.iter().filter(|r| snowplow(r)).count() >= 4
    });
    let posthog = |r: &serde_json::Value| r["path"] == "/e/" || r["path"] == "/i/v0/e/";
    load(&format!("{page_origin}/posthog.html"), &data, |rs| {
        rs.iter()
            .filter(|r| posthog(r))
            .any(|r| event_name(r) == Some("$pageleave"))
    });
    load(&format!("{page_origin}/fetchgz.html"), &data, |rs| {
        rs.iter().any(|r| p(r, "k") == Some("gz"))
    });

    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(report.remaining, 0);
    let recs = records(&data);
    let summary: Vec<String> = recs
        .iter()
        .map(|r| {
            format!(
                "{} {} {:?} {:?}",
                r["method"],
                r["path"],
                r["event_id"],
                event_name(r)
            )
        })
        .collect();

    // Boomerang: one beacon per page load, GET (query) and POST (sendBeacon form).
    let get: Vec<_> = recs.iter().filter(|r| boomerang(r, "?get")).collect();
    let post: Vec<_> = recs.iter().filter(|r| boomerang(r, "?post")).collect();
    assert_eq!((get.len(), post.len()), (1, 1), "{summary:#?}");
    assert_eq!(
        (get[0]["method"].as_str(), get[0]["kind"].as_str()),
        (Some("GET"), Some("query"))
    );
    assert_eq!(
        (post[0]["method"].as_str(), post[0]["kind"].as_str()),
        (Some("POST"), Some("form"))
    );
    assert!(
        p(get[0], "pid").is_some() && p(get[0], "rt.start").is_some(),
        "{:#}",
        get[0]
    );

    // Every event with an id is there once.
    let mut seen = HashMap::new();
    for r in &recs {
        if let Some(id) = r["event_id"].as_str() {
            *seen.entry(id.to_string()).or_insert(0) += 1;
        }
    }
    assert!(
        seen.values().all(|&n| n == 1),
        "an event twice: {summary:#?}"
    );

    // Snowplow: page view and structured event, by POST and by GET, each with its eid.
    let sp: Vec<_> = recs.iter().filter(|r| snowplow(r)).collect();
    let mut kinds: Vec<(String, String)> = sp
        .iter()
        .map(|r| {
            (
                r["path"].as_str().unwrap().to_string(),
                event_name(r).unwrap_or("?").to_string(),
            )
        })
        .collect();
    kinds.sort();
    assert_eq!(
        kinds,
        [
            ("/com.snowplowanalytics.snowplow/tp2".into(), "pv".into()),
            ("/com.snowplowanalytics.snowplow/tp2".into(), "se".into()),
            ("/i".into(), "pv".into()),
            ("/i".into(), "se".into()),
        ],
        "{summary:#?}"
    );
    assert!(sp.iter().all(|r| r["event_id"].is_string()), "{summary:#?}");
    let se = sp
        .iter()
        .find(|r| r["path"] == "/com.snowplowanalytics.snowplow/tp2" && event_name(r) == Some("se"))
        .unwrap();
    assert_eq!(se["json"]["se_ca"], "cart");

    // PostHog: its fetch and its unload flush, each event once, with its uuid.
    let mut names: Vec<&str> = recs
        .iter()
        .filter(|r| posthog(r))
        .filter_map(event_name)
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["$pageleave", "$pageview", "custom_one", "custom_two"],
        "{summary:#?}"
    );
    assert!(recs
        .iter()
        .filter(|r| posthog(r))
        .all(|r| r["event_id"].is_string()));

    // The gzip fetch: its preflight allowed Content-Encoding, its body decoded.
    let gz: Vec<_> = recs.iter().filter(|r| p(r, "k") == Some("gz")).collect();
    assert_eq!(gz.len(), 1, "{summary:#?}");
    assert_eq!(gz[0]["json"]["pad"].as_str().map(str::len), Some(2000));
}

//! The generator runs in-process against a small HTTP/1.1 server on port 0 that counts what it
//! sees; the counts the generator reports must match the server's.

use beacon_loadgen::{report::Report, run, Live, Opts};
use clap::Parser;
use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// What the server saw.
#[derive(Default)]
struct Seen {
    requests: AtomicU64,
    accepted: AtomicU64,
    open: AtomicUsize,
    max_open: AtomicUsize,
    peers: Mutex<HashSet<IpAddr>>,
    /// POST bodies whose length matched Content-Length and that parsed as the content type says.
    good_bodies: AtomicU64,
    /// Distinct request targets (path + query).
    targets: Mutex<HashSet<String>>,
}

struct Server {
    addr: SocketAddr,
    seen: Arc<Seen>,
}

/// Answers `204` to every request; `stall` makes the n-th request (1-based) wait before its
/// answer.
fn server(stall: Option<(u64, Duration)>) -> Server {
    serve(Behaviour {
        stall,
        service: None,
        drop_after: None,
    })
}

/// A server of known capacity: one request at a time, each taking `service`, whatever the
/// number of connections (so at most 1 / `service` requests/s).
fn slow_server(service: Duration) -> Server {
    serve(Behaviour {
        stall: None,
        service: Some((service, Arc::new(tokio::sync::Mutex::new(())))),
        drop_after: None,
    })
}

/// Closes every connection, without a word, once it has answered `n` requests: what an idle
/// timeout or a drain does to a keep-alive client between two of its requests.
fn dropping_server(n: u64) -> Server {
    serve(Behaviour {
        stall: None,
        service: None,
        drop_after: Some(n),
    })
}

#[derive(Clone)]
struct Behaviour {
    stall: Option<(u64, Duration)>,
    service: Option<(Duration, Arc<tokio::sync::Mutex<()>>)>,
    drop_after: Option<u64>,
}

fn serve(behaviour: Behaviour) -> Server {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let seen = Arc::new(Seen::default());
    let s = seen.clone();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).unwrap();
            loop {
                let (sock, peer) = listener.accept().await.unwrap();
                s.accepted.fetch_add(1, Ordering::SeqCst);
                let open = s.open.fetch_add(1, Ordering::SeqCst) + 1;
                s.max_open.fetch_max(open, Ordering::SeqCst);
                s.peers.lock().unwrap().insert(peer.ip());
                let (s, b) = (s.clone(), behaviour.clone());
                tokio::spawn(async move {
                    let _ = serve_conn(sock, &s, b).await;
                    s.open.fetch_sub(1, Ordering::SeqCst);
                });
            }
        });
    });
    Server { addr, seen }
}

async fn serve_conn(
    mut sock: tokio::net::TcpStream,
    s: &Seen,
    behaviour: Behaviour,
) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4096);
    let mut chunk = [0u8; 4096];
    let mut answered = 0u64;
    loop {
        if behaviour.drop_after.is_some_and(|n| answered >= n) {
            return Ok(());
        }
        let end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let len: usize = header("content-length:").map_or(0, |v| v.parse().unwrap());
        let close = header("connection:").is_some_and(|v| v == "close");
        while buf.len() < end + len {
            let n = sock.read(&mut chunk).await?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        if len > 0 {
            let body = &buf[end..end + len];
            let ok = match header("content-type:").as_deref() {
                Some("application/x-www-form-urlencoded") => !body.contains(&b'{'),
                Some(_) => serde_json::from_slice::<serde_json::Value>(body).is_ok(),
                None => false,
            };
            if ok {
                s.good_bodies.fetch_add(1, Ordering::SeqCst);
            }
        }
        let target = head.split(' ').nth(1).unwrap_or("").to_string();
        s.targets.lock().unwrap().insert(target);
        buf.drain(..end + len);
        let n = s.requests.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some((at, d)) = behaviour.stall {
            if n == at {
                tokio::time::sleep(d).await;
            }
        }
        if let Some((d, one_at_a_time)) = &behaviour.service {
            let _held = one_at_a_time.lock().await;
            std::thread::sleep(*d);
        }
        let resp: &[u8] = if close {
            b"HTTP/1.1 204 No Content\r\nconnection: close\r\n\r\n"
        } else {
            b"HTTP/1.1 204 No Content\r\n\r\n"
        };
        sock.write_all(resp).await?;
        answered += 1;
        if close {
            return Ok(());
        }
    }
}

fn opts(args: &[&str]) -> Opts {
    Opts::try_parse_from(std::iter::once("beacon-loadgen").chain(args.iter().copied())).unwrap()
}

fn go(args: &[&str]) -> Report {
    run(
        &opts(args),
        Arc::new(AtomicBool::new(false)),
        Arc::new(Live::default()),
    )
    .unwrap()
}

fn url(s: &Server) -> String {
    format!("http://{}/beacon", s.addr)
}

fn assert_clean(r: &Report, s: &Server) {
    assert_eq!(r.errors_total, 0, "errors: {:?}", r.errors);
    assert!(r.requests > 0);
    assert_eq!(
        r.requests,
        s.seen.requests.load(Ordering::SeqCst),
        "reported vs served"
    );
    assert_eq!(r.status.get("204"), Some(&r.requests));
}

#[test]
fn closed_loop_counts_match_the_server() {
    let s = server(None);
    let r = go(&["-c", "8", "-t", "2", "-d", "500ms", &url(&s)]);
    assert_clean(&r, &s);
    assert_eq!(r.connections, 8);
    assert_eq!(
        s.seen.accepted.load(Ordering::SeqCst),
        8,
        "keep-alive: one connection each"
    );
    // Generated beacons vary (session ids, timers, pages): not one cached URL.
    assert!(s.seen.targets.lock().unwrap().len() > 100);
    let l = r.latency_us.unwrap();
    assert!(l.min <= l.p50 && l.p50 <= l.p99 && l.p99 <= l.max);
}

#[test]
fn fixed_sends_exactly_the_url() {
    let s = server(None);
    let r = go(&[
        "-c",
        "2",
        "-d",
        "300ms",
        "--fixed",
        &format!("{}?a=1", url(&s)),
    ]);
    assert_clean(&r, &s);
    let targets = s.seen.targets.lock().unwrap();
    assert_eq!(targets.iter().collect::<Vec<_>>(), vec!["/beacon?a=1"]);
}

#[test]
fn post_bodies_have_their_type_and_size() {
    for kind in ["text", "form", "json"] {
        let s = server(None);
        let r = go(&[
            "-c",
            "2",
            "-d",
            "300ms",
            "--method",
            "post",
            "--body",
            kind,
            "--body-bytes",
            "700",
            &url(&s),
        ]);
        assert_clean(&r, &s);
        assert_eq!(
            s.seen.good_bodies.load(Ordering::SeqCst),
            r.requests,
            "{kind}"
        );
    }
}

#[test]
fn open_loop_sends_the_scheduled_count() {
    let s = server(None);
    let r = go(&["-c", "4", "--rate", "400", "-d", "1s", &url(&s)]);
    assert_clean(&r, &s);
    // 400/s for 1 s, each connection on its own evenly spread schedule.
    assert!((390..=401).contains(&r.requests), "{} requests", r.requests);
    assert_eq!(r.target_rate, Some(400.0));
}

/// One stalled answer on a single connection: a closed loop sees one slow request, an open loop
/// charges the stall to every request that was due while it lasted (coordinated omission).
#[test]
fn open_loop_latency_counts_from_the_intended_send_time() {
    let stall = Some((5, Duration::from_millis(500)));
    let s = server(stall);
    let open = go(&["-c", "1", "--rate", "50", "-d", "1s", &url(&s)]);
    assert_clean(&open, &s);
    let l = open.latency_us.unwrap();
    assert!(l.max >= 450_000, "the stalled request itself: {l:?}");
    // ~25 of ~50 requests were due during the stall: a quarter of all waited over 100 ms.
    assert!(l.p75 >= 100_000, "open loop hides the stall: {l:?}");

    let s = server(stall);
    let closed = go(&["-c", "1", "-d", "1s", &url(&s)]);
    assert_clean(&closed, &s);
    let l = closed.latency_us.unwrap();
    assert!(l.max >= 450_000);
    assert!(
        l.p75 < 100_000,
        "closed loop charges the stall to one request: {l:?}"
    );
}

#[test]
fn close_mode_opens_a_connection_per_request() {
    let s = server(None);
    let r = go(&["-c", "4", "--close", "-d", "500ms", &url(&s)]);
    assert_clean(&r, &s);
    assert!(r.close);
    assert_eq!(s.seen.accepted.load(Ordering::SeqCst), r.requests);
}

#[test]
fn fleet_holds_every_client_and_spreads_source_addresses() {
    let s = server(None);
    let r = go(&[
        "--clients",
        "300",
        "--interval",
        "1s",
        "-t",
        "2",
        "-d",
        "2500ms",
        &url(&s),
    ]);
    assert_clean(&r, &s);
    let held = r.connections_held.unwrap();
    assert_eq!((held.max, held.min_after_ramp), (300, 300), "{held:?}");
    assert_eq!(s.seen.max_open.load(Ordering::SeqCst), 300);
    assert_eq!(s.seen.accepted.load(Ordering::SeqCst), 300, "no reconnects");
    // One beacon per client per second with ±20 % jitter, for 2.5 s.
    assert!(
        (500..=1000).contains(&r.requests),
        "{} requests",
        r.requests
    );
    assert_eq!(s.seen.peers.lock().unwrap().len(), 254, "127.0.0.1-254");
}

#[test]
fn refused_connections_are_counted_by_name() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let r = go(&[
        "-c",
        "1",
        "-d",
        "200ms",
        &format!("http://127.0.0.1:{port}/beacon"),
    ]);
    assert_eq!(r.requests, 0);
    assert!(r.latency_us.is_none());
    assert!(
        r.errors.get("connect ECONNREFUSED").is_some_and(|&n| n > 0),
        "{:?}",
        r.errors
    );
    assert_eq!(r.errors_total, r.errors.values().sum::<u64>());
}

#[test]
fn stop_gives_a_partial_report() {
    let s = server(None);
    let stop = Arc::new(AtomicBool::new(false));
    let st = stop.clone();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(300));
        st.store(true, Ordering::SeqCst);
    });
    let t = std::time::Instant::now();
    let r = run(
        &opts(&["-c", "4", "-d", "60s", &url(&s)]),
        stop,
        Arc::new(Live::default()),
    )
    .unwrap();
    assert!(t.elapsed() < Duration::from_secs(30));
    assert!(r.interrupted);
    assert_clean(&r, &s);
}

#[test]
fn bad_options_are_refused() {
    let stop = || Arc::new(AtomicBool::new(false));
    for args in [
        &["--clients", "10", "--rate", "5", "http://127.0.0.1:1/"][..],
        &["--clients", "10", "--close", "http://127.0.0.1:1/"],
        &["https://127.0.0.1:1/"],
        &["-c", "0", "http://127.0.0.1:1/"],
    ] {
        assert!(
            run(&opts(args), stop(), Arc::new(Live::default())).is_err(),
            "{args:?}"
        );
    }
}

// --- the JSON report against loadtest/schema.json --------------------------------------------

/// The subset of JSON Schema the checked-in schema uses: type (one or a list), enum, minimum,
/// required, properties, additionalProperties (false or a schema), items. A keyword outside it fails
/// the test instead of being ignored: a schema that says `maximum` must not pass unchecked.
fn validate(schema: &serde_json::Value, v: &serde_json::Value, at: &str, errs: &mut Vec<String>) {
    use serde_json::Value;
    const KNOWN: [&str; 11] = [
        "type",
        "items",
        "enum",
        "minimum",
        "required",
        "properties",
        "additionalProperties",
        "description",
        "title",
        "$id",
        "$schema",
    ];
    for k in schema.as_object().expect("a schema is an object").keys() {
        assert!(
            KNOWN.contains(&k.as_str()),
            "schema keyword {k:?} at {at} is not checked by this validator: teach it, or drop it"
        );
    }
    if let Some(t) = schema.get("type") {
        let types: Vec<&str> = match t {
            Value::String(s) => vec![s.as_str()],
            Value::Array(a) => a.iter().filter_map(Value::as_str).collect(),
            _ => panic!("bad type in schema at {at}"),
        };
        let ok = types.iter().any(|t| match *t {
            "object" => v.is_object(),
            "array" => v.is_array(),
            "string" => v.is_string(),
            "boolean" => v.is_boolean(),
            "null" => v.is_null(),
            "number" => v.is_number(),
            "integer" => v.is_u64() || v.is_i64(),
            other => panic!("type {other} not supported by this validator"),
        });
        if !ok {
            errs.push(format!("{at}: {v} is not {types:?}"));
            return;
        }
    }
    if let Some(Value::Array(allowed)) = schema.get("enum") {
        if !allowed.contains(v) {
            errs.push(format!("{at}: {v} not in {allowed:?}"));
        }
    }
    if let (Some(min), Some(x)) = (schema.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < min {
            errs.push(format!("{at}: {x} < minimum {min}"));
        }
    }
    if let (Some(items), Some(a)) = (schema.get("items"), v.as_array()) {
        for (i, item) in a.iter().enumerate() {
            validate(items, item, &format!("{at}[{i}]"), errs);
        }
    }
    let Some(obj) = v.as_object() else { return };
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let r = r.as_str().unwrap();
        if !obj.contains_key(r) {
            errs.push(format!("{at}: missing {r}"));
        }
    }
    let props = schema.get("properties").and_then(Value::as_object);
    for (k, val) in obj {
        let path = format!("{at}.{k}");
        match (
            props.and_then(|p| p.get(k)),
            schema.get("additionalProperties"),
        ) {
            (Some(s), _) => validate(s, val, &path, errs),
            (None, Some(Value::Bool(false))) => errs.push(format!("{path}: not in the schema")),
            (None, Some(s @ Value::Object(_))) => validate(s, val, &path, errs),
            (None, _) => {}
        }
    }
}

fn schema() -> serde_json::Value {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/schema.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn check(v: &serde_json::Value) -> Vec<String> {
    let mut errs = Vec::new();
    validate(&schema(), v, "$", &mut errs);
    errs
}

/// The binary's `--json` output, in every mode, follows the checked-in schema.
#[test]
fn json_output_follows_the_schema() {
    let s = server(None);
    let bin = env!("CARGO_BIN_EXE_beacon-loadgen");
    let refused = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/beacon", l.local_addr().unwrap())
    };
    let runs: [(Vec<String>, i32); 4] = [
        (
            vec![
                "-c".into(),
                "2".into(),
                "-d".into(),
                "300ms".into(),
                url(&s),
            ],
            0,
        ),
        (
            vec![
                "--rate".into(),
                "100".into(),
                "-d".into(),
                "300ms".into(),
                url(&s),
            ],
            0,
        ),
        (
            vec![
                "--clients".into(),
                "20".into(),
                "--interval".into(),
                "200ms".into(),
                "-d".into(),
                "500ms".into(),
                url(&s),
            ],
            0,
        ),
        (vec!["-d".into(), "200ms".into(), refused], 1),
    ];
    let mut modes = HashSet::new();
    for (args, code) in runs {
        let out = std::process::Command::new(bin)
            .arg("--json")
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let errs = check(&v);
        assert!(errs.is_empty(), "{args:?}: {errs:#?}\n{v:#}");
        modes.insert(v["mode"].as_str().unwrap().to_string());
        assert!(v["connections_held"].is_null() == (v["mode"] != "fleet"));
    }
    assert_eq!(modes.len(), 3);
}

/// The validator and schema are strict enough to catch a changed report.
#[test]
fn schema_rejects_a_changed_report() {
    let s = server(None);
    let r = go(&["-c", "1", "-d", "100ms", &url(&s)]);
    let good = serde_json::to_value(&r).unwrap();
    assert!(check(&good).is_empty(), "{:#?}", check(&good));
    let mut missing = good.clone();
    missing.as_object_mut().unwrap().remove("errors_total");
    let mut extra = good.clone();
    extra["latency_us"]["p9999"] = 1.into();
    let mut wrong_type = good.clone();
    wrong_type["requests"] = "many".into();
    let mut wrong_enum = good.clone();
    wrong_enum["mode"] = "burst".into();
    for bad in [missing, extra, wrong_type, wrong_enum] {
        assert!(!check(&bad).is_empty(), "accepted: {bad:#}");
    }
}

/// `--latency` prints the whole spectrum and `--hgrm` writes it in HdrHistogram's
/// percentile-distribution format: quantiles and values rise to 100 % and the total count.
#[test]
fn latency_spectrum_in_hgrm_format() {
    let s = server(None);
    let r = go(&["-c", "4", "-d", "400ms", &url(&s)]);
    assert_clean(&r, &s);
    let text = r.hgrm();
    let mut lines = text.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains("Value") && header.contains("Percentile") && header.contains("TotalCount")
    );
    let rows: Vec<(f64, f64, u64)> = lines
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().unwrap(),
                f[1].parse().unwrap(),
                f[2].parse().unwrap(),
            )
        })
        .collect();
    assert!(
        rows.len() > 10,
        "a spectrum, not a handful of percentiles: {text}"
    );
    for w in rows.windows(2) {
        assert!(
            w[0].0 <= w[1].0 && w[0].1 <= w[1].1 && w[0].2 <= w[1].2,
            "{w:?}"
        );
    }
    let last = rows.last().unwrap();
    assert_eq!((last.1, last.2), (1.0, r.requests));
    assert!(text.contains(&format!("Total count    = {:>12}", r.requests)));
    assert!(r.render(true).contains("Detailed percentile spectrum"));
}

/// A ramp finds the knee of a server of known capacity (one request at a time, 2 ms each: at
/// most 500 requests/s) between where the ramp starts and where it would have passed twice
/// that, reports it in text and JSON, and finds none for a server that keeps up.
#[test]
fn ramp_finds_the_knee_of_a_server() {
    let slow = slow_server(Duration::from_millis(2));
    let args = |u: &str| {
        vec![
            "-c".to_string(),
            "32".into(),
            "--rate".into(),
            "100..1600".into(),
            "--ramp".into(),
            "6s".into(),
            "-d".into(),
            "6s".into(),
            "--knee-p99".into(),
            "50ms".into(),
            u.to_string(),
        ]
    };
    let a = args(&url(&slow));
    let r = go(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.target_rate, Some(1600.0));
    let ramp = r.ramp.as_ref().expect("a ramp report");
    let knee = ramp
        .knee
        .as_ref()
        .unwrap_or_else(|| panic!("no knee: {r:#?}"));
    assert_eq!(knee.reason, "p99");
    assert!(
        (150.0..1000.0).contains(&knee.rate),
        "knee at {} req/s for a 500 req/s server: {:#?}",
        knee.rate,
        r.timeline
    );
    assert!(ramp.max_good_responses_per_second <= 520.0, "{ramp:#?}");
    // The timeline covers the run second by second, with the offered rate rising.
    assert!(r.timeline.len() >= 5, "{:#?}", r.timeline);
    let offered: Vec<f64> = r
        .timeline
        .iter()
        .map(|b| b.offered_per_second.unwrap())
        .collect();
    assert!(offered.windows(2).all(|w| w[1] > w[0]), "{offered:?}");
    // The text report says it; the JSON carries it (schema-checked elsewhere).
    assert!(r.render(false).contains("Knee: "), "{}", r.render(false));
    let v = serde_json::to_value(&r).unwrap();
    assert!(check(&v).is_empty(), "{:#?}", check(&v));
    assert_eq!(v["ramp"]["knee"]["reason"], "p99");

    let fast = server(None);
    let a = args(&url(&fast));
    let mut a: Vec<&str> = a.iter().map(String::as_str).collect();
    a[3] = "100..400";
    let r = go(&a);
    let ramp = r.ramp.as_ref().expect("a ramp report");
    assert!(ramp.knee.is_none(), "{:#?}", r.timeline);
    assert!(r.render(false).contains("Knee: none up to 400 req/s"));
}

/// The polylines of an SVG as (stroke colour, stroke width, number of points).
fn polylines(svg: &str) -> Vec<(String, String, usize)> {
    let attr = |tag: &str, name: &str| {
        let start = tag.find(&format!(" {name}=\""))? + name.len() + 3;
        Some(tag[start..start + tag[start..].find('"')?].to_string())
    };
    svg.split("<polyline")
        .skip(1)
        .map(|rest| {
            let tag = &rest[..rest.find("/>").unwrap()];
            (
                attr(tag, "stroke").unwrap(),
                attr(tag, "stroke-width").unwrap(),
                attr(tag, "points").unwrap().split_whitespace().count(),
            )
        })
        .collect()
}

/// `--plot` draws a run — three panels with axis titles and units, a legend entry per series,
/// the answered throughput through one point per second of the timeline — and `compare` draws
/// two saved reports into one picture, one colour each, and prints their table with ratios.
#[test]
fn plots_of_a_run_and_of_a_comparison() {
    let s = server(None);
    let dir = tempfile::tempdir().unwrap();
    let bin = env!("CARGO_BIN_EXE_beacon-loadgen");
    let run = |name: &str, args: &[&str]| -> (serde_json::Value, String) {
        let svg = dir.path().join(format!("{name}.svg"));
        let out = std::process::Command::new(bin)
            .arg("--json")
            .arg("--plot")
            .arg(&svg)
            .args(args)
            .arg(url(&s))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(dir.path().join(format!("{name}.json")), &out.stdout).unwrap();
        (
            serde_json::from_slice(&out.stdout).unwrap(),
            std::fs::read_to_string(svg).unwrap(),
        )
    };
    let (ramp, svg) = run("ramp", &["-c", "4", "--rate", "100..400", "-d", "3s"]);
    assert!(svg.starts_with("<svg"), "{}", &svg[..100.min(svg.len())]);
    for text in [
        "Throughput",
        "Latency over time",
        "Latency distribution",
        "time since start (s)",
        "requests/s",
        "latency (ms, log scale)",
        "percentile",
        "99.9%",
        ": answered",
        ": offered",
        ": p50",
        ": p99",
        "(max ",
    ] {
        assert!(svg.contains(text), "{text:?} missing from the picture");
    }
    // Run 0's colour, the answered line's width: one point per bin.
    let bins = ramp["timeline"].as_array().unwrap().len();
    assert!(bins >= 3, "{ramp:#}");
    let lines = polylines(&svg);
    assert!(
        lines
            .iter()
            .any(|(c, w, n)| c == "#0072B2" && w == "2" && *n == bins),
        "no answered line of {bins} points in {lines:?}"
    );

    let (closed, _) = run("closed", &["-c", "2", "-d", "1s"]);
    let out = std::process::Command::new(bin)
        .args(["compare", "--label", "ramp", "--label", "closed", "--plot"])
        .arg(dir.path().join("both.svg"))
        .arg(dir.path().join("ramp.json"))
        .arg(dir.path().join("closed.json"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    let row = table
        .lines()
        .find(|l| l.starts_with("requests/s"))
        .unwrap_or_else(|| panic!("{table}"));
    let cells: Vec<&str> = row.split_whitespace().collect();
    let (a, b) = (
        ramp["requests_per_second"].as_f64().unwrap(),
        closed["requests_per_second"].as_f64().unwrap(),
    );
    assert_eq!(cells[1], format!("{a:.0}"), "{table}");
    assert_eq!(cells[3], format!("{:.2}x", b / a), "{table}");
    let both = std::fs::read_to_string(dir.path().join("both.svg")).unwrap();
    for text in [
        "ramp: answered",
        "ramp: offered",
        "closed: answered",
        "closed: p99",
    ] {
        assert!(both.contains(text), "{text:?} missing from the comparison");
    }
    assert!(
        !both.contains("closed: offered"),
        "a closed loop offers no rate"
    );
    let colours: HashSet<String> = polylines(&both).into_iter().map(|l| l.0).collect();
    assert!(
        colours.contains("#0072B2") && colours.contains("#E69F00"),
        "{colours:?}"
    );

    // A file that is not a report is refused by name.
    let junk = dir.path().join("junk.json");
    std::fs::write(&junk, "{\"requests\": 1}").unwrap();
    let out = std::process::Command::new(bin)
        .arg("compare")
        .arg(&junk)
        .arg(dir.path().join("closed.json"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("junk.json") && err.contains("schema version 2"),
        "{err}"
    );
}

/// A fleet client whose keep-alive connection was closed while it sat idle sends its request
/// again on a new connection, once, as a browser does: counted as `retried`, not as an error.
/// `--no-retry-reused` counts them as errors instead.
#[test]
fn fleet_retries_a_request_that_failed_on_a_reused_connection() {
    let args = |s: &Server, extra: &'static [&'static str]| {
        let mut a = vec![
            "--clients".to_string(),
            "20".into(),
            "--interval".into(),
            "300ms".into(),
            "-d".into(),
            "2s".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a.push(url(s));
        a
    };
    let s = dropping_server(1);
    let a = args(&s, &[]);
    let r = go(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.errors_total, 0, "{:?}", r.errors);
    assert!(
        r.retried > 0,
        "the server dropped every connection after one answer"
    );
    assert_eq!(r.requests, s.seen.requests.load(Ordering::SeqCst));

    let s = dropping_server(1);
    let a = args(&s, &["--no-retry-reused"]);
    let r = go(&a.iter().map(String::as_str).collect::<Vec<_>>());
    assert_eq!(r.retried, 0);
    assert!(
        r.errors_total > 0,
        "without retries the dropped connections are errors"
    );
}

//! Whatever a client sends, every NDJSON line the stage writes is UTF-8 JSON that serde_json,
//! Python's `json` and jq all read: hostile JSON (deep nesting, invalid UTF-8, lone surrogate
//! escapes) and a few thousand mutated and random bodies from fixed seeds, as JSON and as
//! text/plain.

use crate::common::*;
use beacon_collector::Shutdown;
use std::io::Write as _;
use std::path::Path;

/// A JSON-ish body mutated `n` times: bytes flipped, inserted (including quotes, brackets,
/// backslashes, invalid UTF-8 and surrogate escapes) and removed.
fn mutate(rng: &mut fastrand::Rng, base: &[u8], n: usize) -> Vec<u8> {
    const PIECES: [&[u8]; 12] = [
        b"\"",
        b"[",
        b"{",
        b"]",
        b"}",
        b"\\",
        b"\\ud800",
        b"\\udc00",
        b"\xff",
        b"\xc3",
        b"\xed\xa0\x80",
        b"\\u00",
    ];
    let mut v = base.to_vec();
    for _ in 0..n {
        let at = rng.usize(..=v.len());
        match rng.u8(..3) {
            0 if !v.is_empty() => {
                let i = rng.usize(..v.len());
                v[i] = rng.u8(..);
            }
            1 => {
                let p = PIECES[rng.usize(..PIECES.len())];
                v.splice(at..at, p.iter().copied());
            }
            _ if !v.is_empty() => {
                v.remove(rng.usize(..v.len()));
            }
            _ => {}
        }
    }
    v
}

/// Every line of every file under `dir`, checked with serde_json here.
fn lines_checked_with_serde(dir: &Path) -> usize {
    let mut n = 0;
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        for line in std::fs::read(&p).unwrap().split(|&b| b == b'\n') {
            if line.is_empty() {
                continue;
            }
            let text = std::str::from_utf8(line)
                .unwrap_or_else(|e| panic!("{p:?}: a line that is not UTF-8 ({e}): {line:?}"));
            let _: serde_json::Value = serde_json::from_str(text)
                .unwrap_or_else(|e| panic!("{p:?}: serde_json cannot read a line ({e}): {text}"));
            n += 1;
        }
    }
    n
}

#[test]
fn every_stored_line_is_json_for_serde_python_and_jq() {
    let dir = tempfile::tempdir().unwrap();
    let c = test_config(dir.path());
    let stage = Stage::start(dir.path(), &c);
    let srv = Server::start(c.clone());
    let a = srv.addr;

    // The cases from the field: answered, and what is stored is readable.
    let deep_array = "[".repeat(30_000);
    let deep_object = "{\"a\":".repeat(10_000);
    let hostile: Vec<(&str, Vec<u8>, u16)> = vec![
        ("application/json", deep_array.clone().into_bytes(), 400),
        ("application/json", deep_object.clone().into_bytes(), 400),
        ("text/plain", deep_array.into_bytes(), 204),
        ("text/plain", deep_object.into_bytes(), 204),
        ("application/json", b"{\"a\":\"\xff\xfe\"}".to_vec(), 400),
        ("text/plain", b"{\"a\":\"\xff\xfe\"}".to_vec(), 204),
        (
            "application/json",
            br#"{"lone":"\ud800","low":"\udc00"}"#.to_vec(),
            204,
        ),
        ("text/plain", br#"["\ud800\u0041"]"#.to_vec(), 204),
        // Numbers no reader holds: serde_json's "number out of range", Python's 4,300-digit
        // integer limit; stored as strings of their text. Also inside batch events, below.
        (
            "application/json",
            br#"{"a":1e400,"b":-1e999}"#.to_vec(),
            204,
        ),
        ("text/plain", br#"[1E+400]"#.to_vec(), 204),
        (
            "application/json",
            format!(r#"{{"n":{}}}"#, "9".repeat(5000)).into_bytes(),
            204,
        ),
    ];
    for (ct, body, want) in &hostile {
        let r = post(a, "/beacon?k=hostile", ct, body);
        assert_eq!(
            r.status,
            *want,
            "{ct} {:?}",
            String::from_utf8_lossy(&body[..40.min(body.len())])
        );
    }
    let batch = format!(r#"[{{"e":1e400}},{{"e":{}}}]"#, "8".repeat(4400));
    assert_eq!(
        post(
            a,
            "/beacon/batch?k=numbers",
            "application/json",
            batch.as_bytes()
        )
        .status,
        204
    );
    let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
    assert_eq!(
        post(a, "/beacon", "application/json", deep.as_bytes()).status,
        400
    );
    let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
    assert_eq!(
        post(a, "/beacon?k=deep64", "application/json", ok.as_bytes()).status,
        204
    );

    // Mutated and random bodies, fixed seeds, on keep-alive connections.
    let bases: [&[u8]; 4] = [
        br#"{"k":"m","a":[1,2.5,{"b":"c\"d","e":null}],"u":"caf\u00e9 \ud83d\ude00"}"#,
        br#"[{"t_done":1234,"nested":[[[[["x"]]]]]},"text",true,false,1e308,-2.5E-7]"#,
        "{\"name\":\"résumé\",\"emoji\":\"😀\",\"esc\":\"\\n\\t\\\\\"}".as_bytes(),
        b"k=v&x=%FF&y=caf%C3%A9",
    ];
    let mut rng = fastrand::Rng::with_seed(0x0e5c_0de5);
    let mut conn = Conn::open(a);
    let mut sent = 0;
    for i in 0..3000 {
        let body = if i % 10 == 9 {
            (0..rng.usize(1..200)).map(|_| rng.u8(..)).collect()
        } else {
            let base = bases[rng.usize(..bases.len())];
            let n = rng.usize(1..6);
            mutate(&mut rng, base, n)
        };
        let ct = ["application/json", "text/plain;charset=UTF-8"][rng.usize(..2)];
        let mut raw = format!(
            "POST /beacon?k=m{i} HTTP/1.1\r\nHost: t\r\nContent-Type: {ct}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        let status = match conn.request(&raw) {
            Some(r) => r.status,
            None => {
                conn = Conn::open(a);
                conn.request(&raw).expect("a response").status
            }
        };
        assert!(matches!(status, 204 | 400), "status {status} for {body:?}");
        sent += usize::from(status == 204);
    }
    // The trackers' routes, mutated the same way: PostHog's JSON, gzip-js and base64 forms,
    // Snowplow's payload_data. Answered 200 or 4xx, never stored unreadable.
    let ph_base: &[u8] = br#"[{"event":"$pageview","uuid":"0193-a","properties":{"$current_url":"https://a/","n":[1,2.5e3]}}]"#;
    let sp_base: &[u8] = br#"{"schema":"iglu:com.snowplowanalytics.snowplow/payload_data/jsonschema/1-0-4","data":[{"e":"pv","eid":"e-1","tv":"js-4.10.1"}]}"#;
    for i in 0..600 {
        let n = rng.usize(1..4);
        let (target, ct, body) = match i % 4 {
            0 => (
                "/e/?ver=1",
                "application/json",
                mutate(&mut rng, ph_base, n),
            ),
            1 => {
                let m = mutate(&mut rng, ph_base, n);
                let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                std::io::Write::write_all(&mut e, &m).unwrap();
                let mut gz = e.finish().unwrap();
                if i % 8 == 1 {
                    // A corrupted member too.
                    let at = rng.usize(..gz.len());
                    gz[at] ^= 0x5a;
                }
                ("/e/?compression=gzip-js", "text/plain", gz)
            }
            2 => (
                "/e/?compression=base64",
                "application/x-www-form-urlencoded",
                mutate(&mut rng, b"data=W3siZXZlbnQiOiJ4IiwidXVpZCI6InUifV0%3D", n),
            ),
            _ => (
                "/com.snowplowanalytics.snowplow/tp2",
                "application/json",
                mutate(&mut rng, sp_base, n),
            ),
        };
        let r = post(a, target, ct, &body);
        assert!(
            matches!(r.status, 200 | 400 | 413),
            "status {} on {target} for {:?}",
            r.status,
            String::from_utf8_lossy(&body)
        );
    }
    let bomb = {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        std::io::Write::write_all(&mut e, &vec![b' '; 64 << 20]).unwrap();
        e.finish().unwrap()
    };
    assert_eq!(
        post(a, "/e/?compression=gzip-js", "text/plain", &bomb).status,
        413
    );

    let report = srv.shutdown(Shutdown::Graceful).unwrap();
    stage.stop();
    assert_eq!(report.remaining, 0);

    let data = &c.processor.files.data_dir;
    let lines = lines_checked_with_serde(data);
    assert!(lines >= sent, "{lines} lines for {sent} accepted beacons");

    // Python's json, line by line.
    let py = std::process::Command::new("python3")
        .arg("-c")
        .arg(
            "import json,pathlib,sys\n\
             n=0\n\
             for p in pathlib.Path(sys.argv[1]).iterdir():\n\
             \x20   for line in p.read_bytes().split(b'\\n'):\n\
             \x20       if line:\n\
             \x20           json.loads(line.decode('utf-8')); n+=1\n\
             print(n)",
        )
        .arg(data)
        .output()
        .expect("python3 is installed (.ci/run checks)");
    assert!(
        py.status.success(),
        "python: {}",
        String::from_utf8_lossy(&py.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&py.stdout).trim(),
        lines.to_string()
    );

    // jq reads every line of every file (it stops at the first line it cannot parse).
    for e in std::fs::read_dir(data).unwrap() {
        let p = e.unwrap().path();
        let out = std::process::Command::new("jq")
            .args(["-c", "."])
            .arg(&p)
            .output()
            .expect("jq is installed (.ci/run installs the Debian package)");
        assert!(
            out.status.success(),
            "jq on {p:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let want = std::fs::read(&p)
            .unwrap()
            .split(|&b| b == b'\n')
            .filter(|l| !l.is_empty())
            .count();
        assert_eq!(
            out.stdout
                .split(|&b| b == b'\n')
                .filter(|l| !l.is_empty())
                .count(),
            want,
            "{p:?}"
        );
    }
    std::io::stderr().flush().ok();
    eprintln!("readable: {sent} beacons accepted, {lines} lines read by serde_json, Python and jq");
}

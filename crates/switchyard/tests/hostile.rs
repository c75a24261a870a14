//! Hostile requests against the built binary, as an attacker with only the public project
//! token would send them. Each test starts its own server, attacks it, then checks that it
//! still serves and that its peak memory (VmHWM, read from /proc) stayed under 300 MB.
//! The tests run one at a time, so one test's load never slows another's server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{start_with, Server, SECRET, TOKEN};

/// Peak resident memory a server may reach in any of these tests.
const MAX_PEAK_KB: u64 = 300 * 1024;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder().timeout(Duration::from_secs(30)).build().unwrap()
}

/// The server's peak resident set size, in kB.
fn peak_rss_kb(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/pid/status");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

/// Still alive, still taking events, and its peak memory stayed bounded.
fn assert_healthy(server: &Server) {
    let client = client();
    assert_eq!(client.get(format!("{}/_liveness", server.url)).send().unwrap().status(), 200);
    let event = json!({"api_key": TOKEN, "event": "flow_executed", "distinct_id": "user_1", "properties": {"trace_id": "t1"}});
    let response = client.post(format!("{}/i/v0/e/", server.url)).json(&event).send().unwrap();
    assert_eq!(response.status(), 200, "capture still works");
    let peak = peak_rss_kb(server);
    eprintln!("peak RSS: {peak} kB");
    assert!(peak < MAX_PEAK_KB, "peak RSS {peak} kB ≥ {MAX_PEAK_KB} kB");
}

fn start(dir: &std::path::Path, env: &[(&str, &str)]) -> Server {
    start_with(dir, |command| {
        for (name, value) in env {
            command.env(name, value);
        }
    })
}

/// An lz-string (base64) payload that decompresses to about `codes²/2` characters: after one
/// literal, every code names the dictionary entry being made (the "KwKwK" case), so each
/// entry is one character longer than the last.
fn lz64_bomb(codes: usize) -> String {
    struct Bits {
        out: String,
        value: u32,
        count: u32,
    }
    impl Bits {
        /// Writes `value` in `bits` bits, lowest first, as lz-string reads them.
        fn write(&mut self, value: u32, bits: u32) {
            const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=";
            for i in 0..bits {
                self.value = (self.value << 1) | ((value >> i) & 1);
                self.count += 1;
                if self.count == 6 {
                    self.out.push(ALPHABET[self.value as usize] as char);
                    self.value = 0;
                    self.count = 0;
                }
            }
        }
    }
    let mut bits = Bits { out: String::new(), value: 0, count: 0 };
    bits.write(0, 2); // an 8-bit literal follows
    bits.write(b'a' as u32, 8);
    let (mut dict_size, mut num_bits, mut enlarge_in) = (4u32, 3u32, 4u32);
    for _ in 0..codes {
        bits.write(dict_size, num_bits);
        dict_size += 1;
        enlarge_in -= 1;
        if enlarge_in == 0 {
            enlarge_in = 1 << num_bits;
            num_bits += 1;
        }
    }
    bits.write(2, num_bits); // end of stream
    while bits.count != 0 {
        bits.write(0, 1);
    }
    bits.out
}

fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

/// Imports the platform's four flags through the management API.
fn import_platform_flags(server: &Server, client: &reqwest::blocking::Client) {
    let flags = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/platform-flags.json")).unwrap();
    let imported = client.post(format!("{}/api/projects/@current/feature_flags/import/", server.url)).bearer_auth(SECRET).body(flags).send().unwrap();
    assert_eq!(imported.status(), 200);
}

/// A status that refuses: a 4xx or 503.
fn refused(status: reqwest::StatusCode) -> bool {
    status.is_client_error() || status == 503
}

#[test]
fn lz64_bombs_are_refused_within_bounded_memory() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let client = client();
    let bomb = lz64_bomb(40_000);
    assert!(bomb.len() < 100 * 1024, "{} bytes", bomb.len());
    let form = |data: &str| form_urlencoded::Serializer::new(String::new()).append_pair("data", data).append_pair("compression", "lz64").finish();

    for path in ["/flags/?v=2&compression=lz64", "/i/v0/e/?compression=lz64", "/batch/?compression=lz64"] {
        let response = client.post(format!("{}{path}", server.url)).body(bomb.clone()).send().unwrap();
        assert!(refused(response.status()), "{path}: {}", response.status());
    }
    let response = client
        .post(format!("{}/e/", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form(&bomb))
        .send()
        .unwrap();
    assert!(refused(response.status()), "form: {}", response.status());
    // An <img> tag on any page can send a GET; the URL carries the bomb (a smaller one: URLs
    // are bounded by the header limit).
    let small = lz64_bomb(20_000);
    let response = client.get(format!("{}/e/?{}", server.url, form(&small))).send().unwrap();
    assert!(refused(response.status()), "GET: {}", response.status());
    // Several at once.
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| {
                let response = client.post(format!("{}/i/v0/e/?compression=lz64", server.url)).body(bomb.clone()).send().unwrap();
                assert!(refused(response.status()));
            });
        }
    });
    assert_healthy(&server);
}

#[test]
fn empty_object_bombs_are_refused_within_bounded_memory() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let client = client();
    // Just under the decompressed limit: millions of `{}` events in one batch.
    let mut body = format!(r#"{{"api_key":"{TOKEN}","batch":["#).into_bytes();
    while body.len() < 30 * 1024 * 1024 {
        body.extend_from_slice(b"{},");
    }
    body.extend_from_slice(b"{}]}");
    let bomb = gzip(&body);
    assert!(bomb.len() < 200 * 1024, "{} bytes", bomb.len());
    // And past it: ~100 MB of `{},` (the original report: 96 KB gzipped).
    let mut huge = b"[".to_vec();
    while huge.len() < 100 * 1024 * 1024 {
        huge.extend_from_slice(b"{},");
    }
    huge.extend_from_slice(b"{}]");
    let huge = gzip(&huge);
    std::thread::scope(|scope| {
        for (path, body) in [("/batch/", &bomb), ("/i/v0/e/", &huge), ("/batch/", &bomb), ("/v1/batch", &huge), ("/i/v0/e/", &bomb)] {
            let (client, server) = (&client, &server);
            scope.spawn(move || {
                let response = client
                    .post(format!("{}{path}", server.url))
                    .header("content-type", "application/json")
                    .header("content-encoding", "gzip")
                    .basic_auth(common::WRITE_KEY, Some(""))
                    .body(body.clone())
                    .send()
                    .unwrap();
                assert!(refused(response.status()), "{path}: {}", response.status());
            });
        }
    });
    assert_healthy(&server);
}

#[test]
fn bodies_that_cost_more_to_parse_than_to_send_are_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let client = client();
    // One Segment event holding a million tiny objects: each costs a B-tree node once parsed.
    let mut segment = br#"{"batch":[{"type":"track","event":"tool_used","userId":"u","properties":{"x":["#.to_vec();
    while segment.len() < 16 * 1024 * 1024 {
        segment.extend_from_slice(br#"{"a":0},"#);
    }
    segment.extend_from_slice(br#"{"a":0}]}}]}"#);
    // A PostHog batch whose one "event" is an array of millions of numbers.
    let mut posthog = format!(r#"{{"api_key":"{TOKEN}","batch":[["#).into_bytes();
    while posthog.len() < 18 * 1024 * 1024 {
        posthog.extend_from_slice(b"0,");
    }
    posthog.extend_from_slice(b"0]]}");
    let (segment, posthog) = (gzip(&segment), gzip(&posthog));
    std::thread::scope(|scope| {
        for _ in 0..3 {
            let (client, server, segment, posthog) = (&client, &server, &segment, &posthog);
            scope.spawn(move || {
                let response = client
                    .post(format!("{}/v1/batch", server.url))
                    .basic_auth(common::WRITE_KEY, Some(""))
                    .header("content-encoding", "gzip")
                    .body(segment.clone())
                    .send()
                    .unwrap();
                assert_eq!(response.status(), 413, "{}", response.text().unwrap());
                let response = client.post(format!("{}/batch/", server.url)).header("content-encoding", "gzip").body(posthog.clone()).send().unwrap();
                assert_eq!(response.status(), 413, "{}", response.text().unwrap());
            });
        }
    });
    let metrics = client.get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    assert!(metrics.contains(r#"switchyard_events_rejected_total{reason="too_costly_to_parse"} 6"#), "{metrics}");
    assert_healthy(&server);
}

#[test]
fn flags_amplification_is_bounded() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let client = client();
    import_platform_flags(&server, &client);

    // A key repeated a million times: 11 KB gzipped, refused by size.
    let keys: Vec<&str> = vec!["track_model_costs"; 1_000_000];
    let body = json!({"token": TOKEN, "distinct_id": "user_1", "flag_keys_to_evaluate": keys}).to_string();
    let response = client.post(format!("{}/flags/?v=2", server.url)).header("content-encoding", "gzip").body(gzip(body.as_bytes())).send().unwrap();
    assert!(refused(response.status()), "{}", response.status());

    // Within the size limit, a repeated key is answered once and unknown keys are dropped.
    let mut keys: Vec<String> = vec!["track_model_costs".to_owned(); 2000];
    keys.extend((0..500).map(|i| format!("no_such_flag_{i}")));
    let groups: serde_json::Map<String, Value> = (0..200).map(|i| (format!("type_{i}"), json!(format!("key_{i}")))).collect();
    let body = json!({"token": TOKEN, "distinct_id": "user_1", "flag_keys_to_evaluate": keys, "groups": groups});
    let answer: Value = client.post(format!("{}/flags/?v=2", server.url)).json(&body).send().unwrap().json().unwrap();
    let answered: Vec<&String> = answer["flags"].as_object().unwrap().keys().collect();
    assert_eq!(answered, ["track_model_costs"]);
    assert_healthy(&server);
}

/// Reads until the peer closes (true) or `limit` passes (false).
fn closed_within(stream: &mut TcpStream, limit: Duration) -> (bool, Vec<u8>) {
    stream.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let deadline = Instant::now() + limit;
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buffer) {
            Ok(0) => return (true, received),
            Ok(n) => received.extend_from_slice(&buffer[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(_) => return (true, received),
        }
    }
    (false, received)
}

#[test]
fn slow_and_idle_connections_are_closed() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let server = start(
        dir.path(),
        &[("SWITCHYARD_HTTP_HEADER_READ_TIMEOUT_SECS", "1"), ("SWITCHYARD_HTTP_BODY_READ_TIMEOUT_SECS", "1"), ("SWITCHYARD_HTTP_KEEP_ALIVE_TIMEOUT_SECS", "1")],
    );
    let address = server.url.trim_start_matches("http://").to_owned();

    // Slowloris: half a header, then nothing. Closed after the header timeout.
    let mut half = TcpStream::connect(&address).unwrap();
    half.write_all(b"POST /batch/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n").unwrap();
    let started = Instant::now();
    let (closed, _) = closed_within(&mut half, Duration::from_secs(10));
    assert!(closed, "a half-sent header keeps its connection");
    assert!(started.elapsed() < Duration::from_secs(5), "closed after {:?}", started.elapsed());

    // A body that stops halfway: 408, which SDKs retry; nothing stored.
    let mut slow = TcpStream::connect(&address).unwrap();
    slow.write_all(b"POST /batch/ HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"api_key\":").unwrap();
    let (_, answer) = closed_within(&mut slow, Duration::from_secs(10));
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");

    // An idle keep-alive connection is closed too.
    let mut idle = TcpStream::connect(&address).unwrap();
    idle.write_all(b"GET /_liveness HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let (closed, answer) = closed_within(&mut idle, Duration::from_secs(10));
    assert!(closed && String::from_utf8_lossy(&answer).starts_with("HTTP/1.1 200"));
    assert_healthy(&server);
}

#[test]
fn a_connection_flood_does_not_stop_liveness() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[("SWITCHYARD_HTTP_MAX_CONNECTIONS", "50"), ("SWITCHYARD_HTTP_HEADER_READ_TIMEOUT_SECS", "30")]);
    let address = server.url.trim_start_matches("http://").to_owned();
    let flood: Vec<TcpStream> = (0..400).filter_map(|_| TcpStream::connect(&address).ok()).collect();
    assert!(flood.len() >= 300);
    // The flood's connections past the cap send no header: closed after 2 s, freeing the
    // overflow slots (the first 50 hold theirs for the 30 s header timeout).
    std::thread::sleep(Duration::from_millis(2500));

    // Past the cap: health checks are served, other requests told to come back.
    let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(5)).pool_max_idle_per_host(0).build().unwrap();
    let started = Instant::now();
    let liveness = client.get(format!("{}/_liveness", server.url)).send().unwrap();
    assert_eq!(liveness.status(), 200);
    assert!(started.elapsed() < Duration::from_secs(2), "liveness took {:?}", started.elapsed());
    let capture = client.post(format!("{}/i/v0/e/", server.url)).json(&json!({"api_key": TOKEN, "event": "e", "distinct_id": "u"})).send();
    match capture {
        Ok(response) => {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
        }
        Err(error) => panic!("past the cap a request is answered 503, not {error}"),
    }

    drop(flood);
    std::thread::sleep(Duration::from_millis(500));
    let metrics = client.get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    assert!(metrics.contains("switchyard_http_connections_refused_total{outcome=\"closed\"}"), "{metrics}");
    assert_healthy(&server);
}

#[test]
fn hostile_flag_definitions_are_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let client = client();
    let import = |body: Value| {
        client.post(format!("{}/api/projects/@current/feature_flags/import/", server.url)).bearer_auth(SECRET).json(&body).send().unwrap()
    };
    // A cohort that refers to itself.
    let cyclic = json!({
        "flags": [{"key": "cyclic", "active": true, "filters": {"groups": [{"properties": [{"key": "id", "type": "cohort", "value": 7}], "rollout_percentage": 100}]}}],
        "cohorts": {"7": {"type": "OR", "values": [{"type": "AND", "values": [{"key": "id", "type": "cohort", "value": 7}]}]}},
    });
    let response = import(cyclic);
    assert_eq!(response.status(), 400);
    assert!(response.text().unwrap().contains('7'), "the answer names the cohort");
    // A 20,000-deep chain of flag dependencies.
    let chain_of = |depth: usize| -> Vec<Value> {
        (0..depth)
            .map(|i| {
                let properties = if i == 0 { json!([]) } else { json!([{"key": format!("f{}", i - 1), "type": "flag", "value": true, "operator": "flag_evaluates_to"}]) };
                json!({"key": format!("f{i}"), "active": true, "filters": {"groups": [{"properties": properties, "rollout_percentage": 100}]}})
            })
            .collect()
    };
    let chain = chain_of(20_000);
    let response = import(json!({"flags": chain}));
    assert!(refused(response.status()), "{}", response.status());
    // One that fits in a management request's 2 MB: refused for its depth, naming a flag.
    let chain: Vec<Value> = chain_of(2_000);
    let response = import(json!({"flags": chain}));
    assert_eq!(response.status(), 400);
    let answer = response.text().unwrap();
    assert!(answer.contains("`f"), "the answer names a flag: {answer}");
    let answer = client.post(format!("{}/flags/?v=2", server.url)).json(&json!({"token": TOKEN, "distinct_id": "u"})).send().unwrap();
    assert_eq!(answer.status(), 200);
    assert_healthy(&server);
}

#[test]
fn huge_person_updates_do_not_stall_flags_or_liveness() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let client = client();
    import_platform_flags(&server, &client);

    // 2,000 identifies, each setting 200 properties of 200 bytes: 80 MB of `$set` for the
    // person processor, logged before it starts on them.
    let value = "x".repeat(200);
    for request in 0..40 {
        let batch: Vec<Value> = (0..50)
            .map(|i| {
                let set: serde_json::Map<String, Value> = (0..200).map(|p| (format!("trait_{p}"), json!(format!("{value}{request}{i}")))).collect();
                json!({"event": "$identify", "distinct_id": format!("heavy_{}", (request * 50 + i) % 400), "properties": {"$set": set}})
            })
            .collect();
        let response = client.post(format!("{}/batch/", server.url)).json(&json!({"api_key": TOKEN, "batch": batch})).send().unwrap();
        assert_eq!(response.status(), 200);
    }

    // While the processor works through them, probes for other people answer at once.
    let probe = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let last_set = |probe: &reqwest::blocking::Client| -> Value {
        let person: Value = probe
            .get(format!("{}/api/projects/@current/persons/?distinct_id=heavy_399", server.url))
            .bearer_auth(SECRET)
            .send()
            .unwrap()
            .json()
            .unwrap_or(Value::Null);
        person["results"][0]["properties"]["trait_0"].clone()
    };
    let final_value = json!(format!("{value}3949"));
    let processed_before = last_set(&probe) == final_value;
    let (mut slowest_liveness, mut slowest_flags) = (Duration::ZERO, Duration::ZERO);
    let until = Instant::now() + Duration::from_secs(3);
    let mut probes = 0;
    while Instant::now() < until {
        let started = Instant::now();
        assert_eq!(probe.get(format!("{}/_liveness", server.url)).send().unwrap().status(), 200);
        slowest_liveness = slowest_liveness.max(started.elapsed());
        let started = Instant::now();
        let body = json!({"token": TOKEN, "distinct_id": format!("light_{probes}"), "person_properties": {"plan": "pro"}});
        let answer = probe.post(format!("{}/flags/?v=2", server.url)).json(&body).send().unwrap();
        assert_eq!(answer.status(), 200);
        slowest_flags = slowest_flags.max(started.elapsed());
        probes += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    eprintln!("{probes} probes; slowest liveness {slowest_liveness:?}, slowest /flags {slowest_flags:?}; processed before probing: {processed_before}");
    assert!(!processed_before, "the probes ran while the person processor was busy");
    let deadline = Instant::now() + Duration::from_secs(120);
    while last_set(&probe) != final_value {
        assert!(Instant::now() < deadline, "the person processor finished the updates");
        std::thread::sleep(Duration::from_millis(200));
    }
    let metrics = probe.get(format!("{}/metrics", server.url)).send().unwrap().text().unwrap();
    // Blocked behind a batch's transaction, they took seconds (28.8 s seen); 500 ms leaves room
    // for a debug build on a machine shared with other tests.
    assert!(slowest_liveness < Duration::from_millis(500), "liveness took {slowest_liveness:?}");
    assert!(slowest_flags < Duration::from_millis(500), "/flags took {slowest_flags:?}");
    assert!(metrics.contains("switchyard_events_logged_total"), "{metrics}");
    assert_healthy(&server);
}

#[test]
fn revoked_keys_and_cross_origin_reads_are_refused() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path(), &[]);
    let client = client();
    let keys_url = format!("{}/api/projects/@current/keys/", server.url);

    // A second public token, used, then revoked: 401 from the next request on.
    let created: Value = client.post(&keys_url).bearer_auth(SECRET).json(&json!({"kind": "project_token"})).send().unwrap().json().unwrap();
    let token = created["key"].as_str().unwrap().to_owned();
    let event = |token: &str| json!({"api_key": token, "event": "tool_used", "distinct_id": "u", "properties": {"trace_id": "t"}});
    assert_eq!(client.post(format!("{}/i/v0/e/", server.url)).json(&event(&token)).send().unwrap().status(), 200);
    let revoked = client.delete(format!("{keys_url}{}/", created["id"])).bearer_auth(SECRET).send().unwrap();
    assert_eq!(revoked.status(), 200);
    assert_eq!(client.post(format!("{}/i/v0/e/", server.url)).json(&event(&token)).send().unwrap().status(), 401);
    let listed = client.get(&keys_url).bearer_auth(SECRET).send().unwrap().text().unwrap();
    assert!(!listed.contains(&token) && !listed.contains(SECRET), "no key values in a listing");

    // Browsers' SDK routes answer other origins; the management API and metrics do not.
    let origin = "https://app.example.com";
    let flags = client.post(format!("{}/flags/?v=2", server.url)).header("origin", origin).json(&json!({"token": TOKEN, "distinct_id": "u"})).send().unwrap();
    assert_eq!(flags.headers()["access-control-allow-origin"], origin);
    for path in ["/api/projects/@current/events/", "/metrics", "/flags/definitions"] {
        let response = client.get(format!("{}{path}", server.url)).header("origin", origin).bearer_auth(SECRET).send().unwrap();
        assert!(!response.headers().contains_key("access-control-allow-origin"), "{path} allows other origins");
    }
    assert_healthy(&server);
}

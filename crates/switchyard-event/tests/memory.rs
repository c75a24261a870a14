//! Peak memory while a hostile body is decoded, parsed and normalized, as intake does it.
//!
//! The workspace forbids `unsafe`, so there is no counting allocator here: each case runs in a
//! child process (this same binary, `--case NAME FILE`) that reads its body, resets the kernel's
//! peak-RSS mark (`5` to `/proc/self/clear_refs`), handles the body and reports `VmHWM` minus the
//! RSS it started from. The parent builds the bodies once and checks each child's outcome and
//! peak against a bound proportional to the decompression limit.
//!
//! `harness = false`: the cases must run one per process, so `main` is the runner.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use switchyard_event::decode::{decode_posthog_body, decode_segment_body, BodyHints, DecodeLimits};
use switchyard_event::{posthog, segment, EventLimits, Rejection, RequestMeta};

/// The decompression limit the cases run with.
const LIMIT: usize = 1 << 20;
/// What a case may hold at its peak beyond the RSS it started from: the body and the limit's
/// worth of decoded text, plus what parsing and decoding build from it.
const PEAK_BOUND: usize = 4 * LIMIT;

struct Case {
    name: &'static str,
    /// How the child handles the body.
    route: Route,
    /// The `Rejection` code expected.
    expected: &'static str,
    body: fn() -> Vec<u8>,
}

#[derive(Clone, Copy)]
enum Route {
    /// `POST /i/v0/e/` with a query string.
    Posthog(&'static str),
    /// `POST /v1/batch`.
    SegmentBatch,
}

const CASES: &[Case] = &[
    // 96 KB of gzip that inflates to ~96 MB of `{},`: refused while inflating.
    Case { name: "gzip_braces_96kb", route: Route::Posthog(""), expected: "decompressed_too_large", body: gzip_braces_96kb },
    // Just under the limit of `[{},{},…]`: ~350,000 events, refused at event 20,001.
    Case { name: "gzip_braces_under_limit", route: Route::Posthog(""), expected: "too_many_events", body: gzip_braces_under_limit },
    // The same as a RudderStack/Segment batch.
    Case { name: "segment_batch_under_limit", route: Route::SegmentBatch, expected: "too_many_events", body: segment_batch_under_limit },
    // lz-string of a run: a few KB whose usual decoding costs the square of its output.
    Case { name: "lz64_run", route: Route::Posthog("compression=lz64"), expected: "decompressed_too_large", body: lz64_run },
    // The same through `GET ?data=` (an `<img>` tag can send it): the body is empty.
    Case { name: "lz64_get_data", route: Route::Posthog("GET"), expected: "decompressed_too_large", body: lz64_run },
];

fn gzip(chunks: impl Iterator<Item = Vec<u8>>) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    for chunk in chunks {
        encoder.write_all(&chunk).unwrap();
    }
    encoder.finish().unwrap()
}

fn gzip_braces_96kb() -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    encoder.write_all(b"[").unwrap();
    let chunk = "{},".repeat(1 << 16);
    while encoder.get_ref().len() < 96 * 1024 {
        encoder.write_all(chunk.as_bytes()).unwrap();
    }
    encoder.write_all(b"{}]").unwrap();
    encoder.finish().unwrap()
}

fn braces_array(open: &str, close: &str) -> Vec<u8> {
    let n = (LIMIT - open.len() - close.len()) / 3;
    let text = format!("{open}{}{{}}{close}", "{},".repeat(n - 1));
    assert!(text.len() <= LIMIT);
    gzip(std::iter::once(text.into_bytes()))
}

fn gzip_braces_under_limit() -> Vec<u8> {
    braces_array("[", "]")
}

fn segment_batch_under_limit() -> Vec<u8> {
    braces_array(r#"{"writeKey":"k","batch":["#, "]}")
}

fn lz64_run() -> Vec<u8> {
    lz_str::compress_to_base64(&"{},".repeat(LIMIT / 2)).into_bytes()
}

/// Decodes, parses and normalizes a body as intake does; the first refusal's code, or `ok`.
fn handle(route: Route, body: &[u8]) -> &'static str {
    let decode_limits = DecodeLimits { max_decompressed_bytes: LIMIT };
    let limits = EventLimits::default();
    let meta = RequestMeta { project_id: 1, received_at: chrono::Utc::now(), traceparent: None, ip: None };
    let outcome = |result: Result<usize, Rejection>| match result {
        Ok(_) => "ok",
        Err(rejection) => rejection.code,
    };
    match route {
        Route::Posthog(query) => {
            let get_query;
            let (body, hints) = if query == "GET" {
                get_query = form_urlencoded::Serializer::new(String::new())
                    .append_pair("data", std::str::from_utf8(body).unwrap())
                    .append_pair("compression", "lz64")
                    .finish();
                (&b""[..], BodyHints { query: Some(&get_query), legacy_path: true, ..Default::default() })
            } else {
                (body, BodyHints { query: Some(query), content_type: Some("text/plain"), ..Default::default() })
            };
            outcome(decode_posthog_body(body, &hints, decode_limits).and_then(|json| {
                let request = posthog::parse_capture_request(&json, None, &limits)?;
                let ctx = posthog::PosthogContext {
                    meta: &meta,
                    sent_at: request.sent_at,
                    historical_migration: false,
                    engage: false,
                    limits: &limits,
                };
                let out = posthog::normalize(request.events, &ctx);
                Ok(out.accepted.len())
            }))
        }
        Route::SegmentBatch => outcome(decode_segment_body(body, Some("gzip"), decode_limits).and_then(|json| {
            let request = segment::parse_segment_request(&json, None, &limits)?;
            let ctx = segment::SegmentContext { meta: &meta, batch_sent_at: None, limits: &limits };
            Ok(segment::normalize(request.events, &ctx).accepted.len())
        })),
    }
}

/// A `kB` field of `/proc/self/status`, in bytes.
fn status_bytes(field: &str) -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with(field)).unwrap_or_else(|| panic!("no {field} in /proc/self/status"));
    let kb: usize = line[field.len()..].trim().trim_end_matches("kB").trim().parse().unwrap();
    kb * 1024
}

/// The child: handles one body and prints its outcome and peak.
fn child(name: &str, file: &Path) -> ExitCode {
    let case = CASES.iter().find(|c| c.name == name).expect("a known case");
    let body = std::fs::read(file).expect("the case's body");
    std::fs::write("/proc/self/clear_refs", "5").expect("resetting the peak RSS mark (Linux 4.0+)");
    let start = status_bytes("VmRSS:");
    let outcome = handle(case.route, &body);
    let peak = status_bytes("VmHWM:").saturating_sub(start);
    println!("outcome={outcome} peak={peak}");
    ExitCode::SUCCESS
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--case" {
        return child(&args[2], Path::new(&args[3]));
    }
    let dir = std::env::temp_dir().join(format!("switchyard-memory-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut failed = Vec::new();
    for case in CASES {
        let body = (case.body)();
        let file: PathBuf = dir.join(case.name);
        std::fs::write(&file, &body).unwrap();
        let out = Command::new(&exe).args(["--case", case.name]).arg(&file).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let report = stdout.lines().find_map(|l| {
            let rest = l.strip_prefix("outcome=")?;
            let (outcome, peak) = rest.split_once(" peak=")?;
            Some((outcome.to_owned(), peak.parse::<usize>().ok()?))
        });
        let verdict = match &report {
            Some((outcome, peak)) if outcome == case.expected && *peak < PEAK_BOUND => "ok",
            _ => "FAILED",
        };
        println!(
            "test {} ({} body bytes): {:?}, bound {PEAK_BOUND} bytes, expected {} ... {verdict}",
            case.name,
            body.len(),
            report,
            case.expected
        );
        if verdict != "ok" {
            eprintln!("{}", String::from_utf8_lossy(&out.stderr));
            failed.push(case.name);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    let status = if failed.is_empty() { "ok" } else { "FAILED" };
    println!("\ntest result: {status}. {} passed; {} failed", CASES.len() - failed.len(), failed.len());
    if failed.is_empty() { ExitCode::SUCCESS } else { ExitCode::FAILURE }
}

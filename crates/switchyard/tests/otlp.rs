//! OTLP export under load against the built binary: after `kill -9`, every span of every
//! export answered 2xx is stored (read back through the trace view).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{start, SECRET, TOKEN};

const SPANS_PER_REQUEST: usize = 20;
/// The trace view reads at most 10,000 parts of a run: each worker's run stays under it.
const MAX_SPANS_PER_TRACE: usize = 8_000;

fn trace_of(worker: usize) -> String {
    format!("{:032x}", 0xabc0_0000u64 + worker as u64)
}

/// Exports spans from `workers` clients until `stop`; the span ids of every export answered 2xx.
fn export(url: &str, workers: usize, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..workers)
        .map(|w| {
            let url = url.to_owned();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let mut acked = Vec::new();
                let started = Instant::now();
                let mut next = 1u64;
                while !stop.load(Ordering::SeqCst) && started.elapsed() < Duration::from_secs(30) && acked.len() + SPANS_PER_REQUEST <= MAX_SPANS_PER_TRACE {
                    let ids: Vec<String> = (0..SPANS_PER_REQUEST)
                        .map(|_| {
                            next += 1;
                            format!("{:08x}{:08x}", w + 1, next)
                        })
                        .collect();
                    let spans: Vec<Value> = ids
                        .iter()
                        .map(|id| {
                            json!({"traceId": trace_of(w), "spanId": id, "name": "chat gpt-4o-mini", "kind": 3,
                                   "startTimeUnixNano": "1764927000000000000", "endTimeUnixNano": "1764927000500000000",
                                   "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                                                  {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o-mini"}},
                                                  {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
                                                  {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "5"}}]})
                        })
                        .collect();
                    let body = json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "agent-svc"}}]},
                                                         "scopeSpans": [{"spans": spans}]}]});
                    match client.post(format!("{url}/v1/traces")).bearer_auth(TOKEN).json(&body).send() {
                        Ok(r) if r.status().is_success() => acked.extend(ids),
                        Ok(_) => {}
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                acked
            })
        })
        .collect()
}

/// The span ids of a run's tree, read back through the trace view.
fn stored_spans(url: &str, trace: &str) -> HashSet<String> {
    let client = reqwest::blocking::Client::new();
    let response = client.get(format!("{url}/api/projects/@current/traces/{trace}")).bearer_auth(SECRET).send().unwrap();
    if response.status() == 404 {
        return HashSet::new();
    }
    let view: Value = response.json().unwrap();
    let mut ids = HashSet::new();
    let mut todo: Vec<Value> = view["tree"].as_array().cloned().unwrap_or_default();
    while let Some(node) = todo.pop() {
        ids.insert(node["id"].as_str().unwrap().to_owned());
        todo.extend(node["children"].as_array().cloned().unwrap_or_default());
    }
    ids
}

#[test]
fn kill_9_during_otlp_export_loses_no_acknowledged_span() {
    const WORKERS: usize = 6;
    let dir = tempfile::tempdir().unwrap();
    let mut server = start(dir.path());
    let stop = Arc::new(AtomicBool::new(false));
    let workers = export(&server.url, WORKERS, stop.clone());
    std::thread::sleep(Duration::from_millis(1500));
    server.child.kill().unwrap(); // SIGKILL, mid-export
    server.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<Vec<String>> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let total: usize = acked.iter().map(Vec::len).sum();
    assert!(total >= 200, "too few acknowledged spans: {total}");

    let server = start(dir.path());
    for (w, ids) in acked.iter().enumerate() {
        let stored = stored_spans(&server.url, &trace_of(w));
        let missing: Vec<&String> = ids.iter().filter(|id| !stored.contains(*id)).collect();
        assert!(missing.is_empty(), "worker {w}: {} of {} acknowledged spans lost, e.g. {:?}", missing.len(), ids.len(), &missing[..missing.len().min(3)]);
    }
}

//! LLM analytics benchmarks, each on fresh release servers (`switchyard-loadgen llm-bench`):
//!
//! 1. **Enrichment at intake.** Batches of 50 `$ai_generation` events (as posthog-python's
//!    OpenAI wrapper sends them: model, tokens with cache and reasoning, messages, choices)
//!    driven for `--seconds` against a server with `llm.enrich` on, then one with it off; the
//!    ratio of the two rates.
//! 2. **OTLP intake.** Exports of 512 GenAI spans (protobuf, as the OTel SDK's batch processor
//!    sends them) to `/v1/traces` for `--seconds`: spans per second acknowledged, each export
//!    durable (its spans and the `$ai_generation` events made from them) before its 200.
//! 3. **Trace view.** A store of `--store-events` events in runs of 10 (so a tenth as many
//!    traces), loaded through `/batch/`; then trace views of random runs, one at a time, for
//!    `--seconds`: p50/p99/max.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use hyper::body::Bytes;
use serde_json::{json, Value};

use crate::route::{post_all, Server, SECRET_KEY};
use crate::{drive, fetch, peak_rss_mb, percentile, Scenario, TOKEN};

pub struct Options {
    pub server_bin: String,
    pub seconds: u64,
    pub connections: usize,
    pub store_events: usize,
}

pub fn llm_bench(options: &Options) -> anyhow::Result<()> {
    enrichment(options)?;
    otlp(options)?;
    trace_view(options)?;
    Ok(())
}

/// A `$ai_generation` as posthog-python's OpenAI wrapper sends it.
fn generation(i: usize) -> Value {
    json!({
        "event": "$ai_generation",
        "distinct_id": format!("user_{}", i % 100),
        "uuid": uuid_of(i),
        "properties": {
            "$ai_trace_id": format!("trace-{}", i / 5),
            "$ai_span_id": format!("span-{i}"),
            "$ai_model": "gpt-4o-mini",
            "$ai_provider": "openai",
            "$ai_input": [{"role": "system", "content": "You are a helpful agent."}, {"role": "user", "content": "Find the weather in Paris."}],
            "$ai_output_choices": [{"role": "assistant", "content": "It is sunny in Paris today."}],
            "$ai_input_tokens": 12,
            "$ai_output_tokens": 5,
            "$ai_cache_read_input_tokens": 4,
            "$ai_reasoning_tokens": 2,
            "$ai_latency": 0.42,
            "$ai_http_status": 200,
            "$ai_base_url": "https://api.openai.com/v1",
            "$ai_model_parameters": {"temperature": 0.2, "max_completion_tokens": 256, "stream": false},
            "$ai_lib": "posthog-ai",
            "$lib": "posthog-python",
            "workspace_id": "ws_1",
            "organization_id": "org_1",
        }
    })
}

fn uuid_of(i: usize) -> String {
    format!("01938000-0000-7000-8000-{i:012x}")
}

fn enrichment(options: &Options) -> anyhow::Result<()> {
    const BATCH: usize = 50;
    let body = json!({"api_key": TOKEN, "batch": (0..BATCH).map(generation).collect::<Vec<_>>()}).to_string();
    let scenario = Scenario { name: "ai-batch", path: "/batch/", bodies: vec![Bytes::from(body)], events_per_request: BATCH, headers: vec![] };
    println!("1. $ai_generation batches of {BATCH} to /batch/, {} connections, {} s per run, a fresh server each", options.connections, options.seconds);
    println!("{:<16} {:>10} {:>10} {:>8} {:>8} {:>7} {:>9}", "llm.enrich", "req/s", "events/s", "p50 ms", "p99 ms", "errors", "RSS MB");
    let mut rates = Vec::new();
    for enrich in ["true", "false"] {
        let server = Server::start_with(&options.server_bin, &format!("enrich-{enrich}"), &[("SWITCHYARD_LLM__ENRICH", enrich)])?;
        let f = drive(server.addr, &scenario, options.connections, options.seconds)?;
        let rate = f.requests as f64 * BATCH as f64 / f.elapsed.as_secs_f64();
        rates.push(rate);
        println!(
            "{:<16} {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>7} {:>9.1}",
            enrich,
            f.requests as f64 / f.elapsed.as_secs_f64(),
            rate,
            f.p50.as_secs_f64() * 1000.0,
            f.p99.as_secs_f64() * 1000.0,
            f.errors,
            peak_rss_mb(server.pid()).unwrap_or(f64::NAN)
        );
        if enrich == "true" {
            let metrics = fetch(server.addr, "/metrics").unwrap_or_default();
            let costed = metrics.lines().find(|l| l.starts_with("switchyard_llm_events_costed_total")).unwrap_or("switchyard_llm_events_costed_total ?");
            println!("  {costed}");
        }
    }
    println!("enrichment on / off: {:.2} (target ≥ 0.90)", rates[0] / rates[1]);
    Ok(())
}

/// An OTLP export of `spans` GenAI spans of one run, as protobuf.
fn otlp_body(spans: usize, run: usize) -> anyhow::Result<Vec<u8>> {
    let trace = format!("{:032x}", 0x5eed_0000_0000u64 + run as u64);
    let spans: Vec<Value> = (0..spans)
        .map(|i| {
            json!({"traceId": trace, "spanId": format!("{:016x}", (run << 20) + i + 1), "parentSpanId": if i == 0 { String::new() } else { format!("{:016x}", (run << 20) + 1) },
                   "name": "chat gpt-4o-mini", "kind": 3,
                   "startTimeUnixNano": (1_764_927_000_000_000_000u64 + i as u64 * 1_000_000).to_string(),
                   "endTimeUnixNano": (1_764_927_000_400_000_000u64 + i as u64 * 1_000_000).to_string(),
                   "attributes": [
                       {"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                       {"key": "gen_ai.system", "value": {"stringValue": "openai"}},
                       {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o-mini"}},
                       {"key": "gen_ai.response.model", "value": {"stringValue": "gpt-4o-mini-2024-07-18"}},
                       {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
                       {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "5"}},
                       {"key": "server.address", "value": {"stringValue": "api.openai.com"}}],
                   "status": {}})
        })
        .collect();
    let request = json!({"resourceSpans": [{"resource": {"attributes": [
        {"key": "service.name", "value": {"stringValue": "agent-svc"}},
        {"key": "user.id", "value": {"stringValue": format!("user_{}", run % 100)}}]},
        "scopeSpans": [{"scope": {"name": "opentelemetry.instrumentation.openai_v2", "version": "2.4b0"}, "spans": spans}]}]});
    let decoded = switchyard_llm::otlp::decode("application/json", request.to_string().as_bytes()).context("the benchmark's own OTLP JSON")?;
    Ok(switchyard_llm::otlp::encode(&decoded))
}

fn otlp(options: &Options) -> anyhow::Result<()> {
    const SPANS: usize = 512;
    let bodies = (0..8).map(|run| otlp_body(SPANS, run).map(Bytes::from)).collect::<anyhow::Result<Vec<_>>>()?;
    let bytes = bodies[0].len();
    if let Ok(path) = std::env::var("LLM_BENCH_DUMP") {
        std::fs::write(path, &bodies[0])?;
    }
    let scenario = Scenario {
        name: "otlp",
        path: "/v1/traces",
        bodies,
        events_per_request: SPANS,
        headers: vec![("content-type", "application/x-protobuf".into()), ("authorization", format!("Bearer {TOKEN}"))],
    };
    let server = Server::start_with(&options.server_bin, "otlp", &[])?;
    let f = drive(server.addr, &scenario, options.connections.min(16), options.seconds)?;
    let spans = f.requests as f64 * SPANS as f64 / f.elapsed.as_secs_f64();
    println!(
        "\n2. OTLP/HTTP protobuf exports of {SPANS} GenAI spans ({bytes} bytes) to /v1/traces, {} connections, {} s, a fresh server",
        options.connections.min(16),
        options.seconds
    );
    println!(
        "{:.0} exports/s, {spans:.0} spans/s acknowledged durably (target ≥ 100,000), each span also an $ai_generation event; p50 {:.1} ms, p99 {:.1} ms, {} errors; server peak RSS {:.1} MB",
        f.requests as f64 / f.elapsed.as_secs_f64(),
        f.p50.as_secs_f64() * 1000.0,
        f.p99.as_secs_f64() * 1000.0,
        f.errors,
        peak_rss_mb(server.pid()).unwrap_or(f64::NAN)
    );
    Ok(())
}

fn trace_view(options: &Options) -> anyhow::Result<()> {
    const PER_TRACE: usize = 10;
    const BATCH: usize = 500;
    let server = Server::start_with(&options.server_bin, "traces", &[])?;
    let batches = options.store_events.div_ceil(BATCH);
    let traces = batches * BATCH / PER_TRACE;
    let started = Instant::now();
    // Bodies are made as they are sent, a few thousand at a time (10M events do not fit in
    // memory as bodies at once).
    const CHUNK: usize = 200;
    let mut sent = 0;
    while sent < batches {
        let n = CHUNK.min(batches - sent);
        let bodies: Vec<Bytes> = (sent..sent + n)
            .map(|b| {
                let events: Vec<Value> = (0..BATCH)
                    .map(|i| {
                        let n = b * BATCH + i;
                        let name = ["agent_execution", "tool_used", "rag_query_triggered", "model_cost", "flow_executed"][n % 5];
                        json!({"event": name, "distinct_id": format!("user_{}", n % 1000), "uuid": uuid_of(n),
                               "properties": {"trace_id": format!("{:032x}", n / PER_TRACE + 1), "workspace_id": format!("ws_{}", n % 50),
                                              "agent_id": "ag_1", "model": "gpt-4o-mini", "input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.00036}})
                    })
                    .collect();
                Bytes::from(json!({"api_key": TOKEN, "batch": events}).to_string())
            })
            .collect();
        post_all(server.addr, bodies, 8)?;
        sent += n;
    }
    let loaded = started.elapsed();
    println!(
        "\n3. trace view on a store of {} events in {traces} runs of {PER_TRACE}, loaded in {:.0} s ({:.0} events/s)",
        batches * BATCH,
        loaded.as_secs_f64(),
        (batches * BATCH) as f64 / loaded.as_secs_f64()
    );
    let mut client = reqwest_like_get(server.addr);
    let deadline = Instant::now() + Duration::from_secs(options.seconds);
    let mut latencies = Vec::new();
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    while Instant::now() < deadline {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        let trace = (state % traces as u64) + 1;
        let path = format!("/api/projects/@current/traces/{trace:032x}");
        let t = Instant::now();
        let (status, body) = client(&path)?;
        latencies.push(t.elapsed());
        anyhow::ensure!(status == 200, "GET {path} answered {status}: {body}");
        let view: Value = serde_json::from_str(&body)?;
        anyhow::ensure!(view["totals"]["events"] == PER_TRACE, "GET {path}: {} events, not {PER_TRACE}", view["totals"]["events"]);
    }
    latencies.sort_unstable();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "{} views of random runs, one at a time: p50 {:.1} ms, p99 {:.1} ms (target ≤ 50), max {:.1} ms; server peak RSS {:.1} MB",
        latencies.len(),
        ms(percentile(&latencies, 0.50)),
        ms(percentile(&latencies, 0.99)),
        ms(latencies.last().copied().unwrap_or_default()),
        peak_rss_mb(server.pid()).unwrap_or(f64::NAN)
    );
    Ok(())
}

/// A blocking GET with the secret key over one keep-alive connection: (status, body).
fn reqwest_like_get(addr: std::net::SocketAddr) -> impl FnMut(&str) -> anyhow::Result<(u16, String)> {
    use std::io::{BufRead, BufReader, Read, Write};
    let mut stream: Option<BufReader<std::net::TcpStream>> = None;
    move |path: &str| {
        if stream.is_none() {
            let tcp = std::net::TcpStream::connect(addr)?;
            tcp.set_nodelay(true)?;
            stream = Some(BufReader::new(tcp));
        }
        let reader = stream.as_mut().expect("connected");
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {SECRET_KEY}\r\n\r\n");
        reader.get_mut().write_all(request.as_bytes())?;
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let status: u16 = line.split_whitespace().nth(1).and_then(|s| s.parse().ok()).context("an HTTP status line")?;
        let mut length = 0usize;
        loop {
            line.clear();
            reader.read_line(&mut line)?;
            if line == "\r\n" || line.is_empty() {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse()?;
            }
        }
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    }
}

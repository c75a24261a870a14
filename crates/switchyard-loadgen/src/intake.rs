//! In-process intake work per event, one thread: parsing a PostHog capture body, and
//! normalizing its events into their stored form (the unified event's JSON is written while
//! normalizing). No HTTP, no log: the handler's own CPU
//! cost, for comparing changes to it (system allocator; the server uses mimalloc).

use std::time::{Duration, Instant};

use switchyard_event::{posthog, EventLimits, RequestMeta};

use crate::{batch_body, single_body};

struct Phases {
    parse: Duration,
    normalize: Duration,
    events: usize,
}

fn run(body: &[u8], iterations: usize) -> Phases {
    let limits = EventLimits::default();
    let mut phases = Phases { parse: Duration::ZERO, normalize: Duration::ZERO, events: 0 };
    let mut stored_bytes = 0;
    for _ in 0..iterations {
        let started = Instant::now();
        let request = posthog::parse_capture_request(body, None, &limits).expect("the benchmark body parses");
        let parsed = Instant::now();
        let meta = RequestMeta { project_id: 1, received_at: chrono::Utc::now(), traceparent: None, ip: Some("127.0.0.1".into()) };
        let ctx = posthog::PosthogContext {
            meta: &meta,
            sent_at: request.sent_at,
            historical_migration: request.historical_migration,
            engage: false,
            limits: &limits,
        };
        let normalized = posthog::normalize(request.events, &ctx);
        let normalized_at = Instant::now();
        phases.events += normalized.accepted.len();
        stored_bytes += normalized.accepted.iter().map(|event| event.body.len()).sum::<usize>();
        phases.parse += parsed - started;
        phases.normalize += normalized_at - parsed;
    }
    assert!(stored_bytes > 0);
    phases
}

fn report(name: &str, body: &[u8], iterations: usize) {
    run(body, iterations / 10 + 1);
    let p = run(body, iterations);
    let per_event = |d: Duration| d.as_nanos() as f64 / p.events as f64;
    let (parse, normalize) = (per_event(p.parse), per_event(p.normalize));
    println!(
        "  {name:<13} parse {parse:>6.0}  normalize into the stored form {normalize:>6.0}  total {:>6.0} ns per event",
        parse + normalize
    );
}

pub fn eval_bench(iterations: usize) -> anyhow::Result<()> {
    println!("in-process intake work, one thread (catalog `agent_execution` events, 15 properties):");
    report("single event", single_body(1).as_bytes(), iterations);
    report("batch of 50", batch_body(50, 1).as_bytes(), iterations / 50 + 1);
    Ok(())
}

//! Routing benchmarks: delivery to destinations, measured against a null sink in this process.
//!
//! `switchyard-loadgen route-bench --server-bin target/release/switchyard` starts the server
//! (loopback delivery allowed; `SWITCHYARD_ROUTING__*` in this program's environment reaches
//! it) and a null sink: axum on a runtime and threads of its own (at nice 10, standing in for a
//! destination on another machine), counting the events of each request (a JSON array, parsed
//! without building it) and answering 200. Three scenarios:
//!
//! 1. **Delivery rate.** `--events` events are loaded through `/batch/` (batches of 500) with no
//!    destination; then one webhook destination at a time (`max_batch_events` 1000,
//!    `"start": "earliest"`) reads them all back: plain, with three declarative rules, with a
//!    typical JS `transformEvent`. Events/s is the time from creating the destination until the
//!    sink has counted every event; each destination is deleted before the next is created.
//! 2. **Intake beside delivery.** The `bench` batch scenario (batches of 50) for `--seconds` on a
//!    fresh server with no destination, then on a fresh server with one webhook destination
//!    (`"start": "now"`) delivering to the sink while it runs; the ratio of the two rates.
//! 3. **Acknowledgement to delivery.** A paced sender on a fresh server with one destination:
//!    batches of 50 at 200 requests/s (10,000 events/s) for `--seconds`, every event with its own
//!    `uuid`. The sender records when each batch was acknowledged, the sink when each id
//!    arrived; p50/p99/max of the difference.
//!
//! 4. **A destination down through a backlog.** As 3, on a server where `--backlog` events were
//!    logged first and a destination whose address nothing listens on reads them from the
//!    start: the tracked destination's latency beside it, and the server's RSS (the backlog
//!    stays on disk).
//!
//! Every wait is bounded; a figure that is not reached in time is printed as such.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::Method;
use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::{batch_body, catalog_event, cpu_seconds, drive, fetch, free_port, peak_rss_mb, percentile, wait_ready, Process, Scenario, TOKEN};

pub(crate) const SECRET_KEY: &str = "phs_loadgen_0123456789abcdefghijklmnop";
const DESTINATIONS: &str = "/api/projects/@current/destinations/";
/// RudderStack's published delivery rate for its router on 2 cores, events/s.
const RUDDERSTACK_EVENTS_PER_SEC: f64 = 1_600.0;
/// Events per `/batch/` request when preloading.
const PRELOAD_BATCH: usize = 500;
/// How long one destination may take to deliver the preloaded events.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the latency scenario waits for its last events after the sender stops.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Options {
    pub server_bin: String,
    pub events: usize,
    /// Events logged before scenario 4 (a destination down through them).
    pub backlog: usize,
    pub seconds: u64,
    pub connections: usize,
}

/// The sink's slot whose deliveries are recorded per event id (scenario 3); the other slots
/// only count.
const TRACKED: usize = 0;
/// The slot of the destination attached while intake is measured (scenario 1 uses 1 to 3).
const INTAKE_SLOT: usize = 4;
const SLOTS: usize = 8;

/// What the null sink has received: events per slot (`/hook/{slot}`), and for the tracked
/// slot when each event id first arrived.
struct Sink {
    events: [AtomicU64; SLOTS],
    requests: [AtomicU64; SLOTS],
    arrivals: Mutex<HashMap<String, Instant>>,
}

impl Sink {
    fn events(&self, slot: usize) -> u64 {
        self.events[slot].load(Ordering::Relaxed)
    }
}

/// Lowers the calling thread's priority to nice 10 (Linux: per thread).
fn background_priority() {
    #[cfg(target_os = "linux")]
    let _ = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 10);
}

/// Starts the null sink on a runtime and thread of its own. The thread lives as long as this
/// program (the servers that deliver to it are stopped first).
fn start_sink() -> anyhow::Result<(Arc<Sink>, SocketAddr)> {
    let sink = Arc::new(Sink {
        events: std::array::from_fn(|_| AtomicU64::new(0)),
        requests: std::array::from_fn(|_| AtomicU64::new(0)),
        arrivals: Mutex::new(HashMap::new()),
    });
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    listener.set_nonblocking(true)?;
    let addr = listener.local_addr()?;
    // The sink stands in for a destination on another machine: its threads run at nice 10, so
    // when the machine is busy its work does not take the CPU from the server's intake.
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).on_thread_start(background_priority).enable_all().build()?;
    let app = axum::Router::new()
        .route("/hook/{slot}", axum::routing::post(receive))
        .layer(DefaultBodyLimit::disable())
        .with_state(sink.clone());
    std::thread::Builder::new().name("null-sink".into()).spawn(move || {
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("a tokio listener");
            axum::serve(listener, app).await.expect("the null sink serves");
        })
    })?;
    Ok((sink, addr))
}

/// One webhook request: a JSON array of events. Counted without building them, except on the
/// tracked slot, where each event's id is kept with the time it arrived.
async fn receive(State(sink): State<Arc<Sink>>, Path(slot): Path<usize>, body: Bytes) -> StatusCode {
    let arrived = Instant::now();
    if slot >= SLOTS {
        return StatusCode::NOT_FOUND;
    }
    let events = if slot == TRACKED {
        #[derive(Deserialize)]
        struct Delivered {
            id: String,
        }
        let Ok(events) = serde_json::from_slice::<Vec<Delivered>>(&body) else { return StatusCode::BAD_REQUEST };
        let n = events.len();
        let mut arrivals = sink.arrivals.lock().unwrap();
        for event in events {
            arrivals.entry(event.id).or_insert(arrived);
        }
        n
    } else {
        let Ok(events) = serde_json::from_slice::<Vec<IgnoredAny>>(&body) else { return StatusCode::BAD_REQUEST };
        events.len()
    };
    sink.events[slot].fetch_add(events as u64, Ordering::Relaxed);
    sink.requests[slot].fetch_add(1, Ordering::Relaxed);
    StatusCode::OK
}

/// A server on a fresh data directory, allowed to deliver to loopback; removed when dropped.
pub(crate) struct Server {
    process: Process,
    pub(crate) addr: SocketAddr,
    dir: PathBuf,
}

impl Server {
    fn start(bin: &str, name: &str) -> anyhow::Result<Server> {
        Server::start_with(bin, name, &[])
    }

    /// [`Server::start`] with more environment.
    pub(crate) fn start_with(bin: &str, name: &str, env: &[(&str, &str)]) -> anyhow::Result<Server> {
        let dir = std::env::temp_dir().join(format!("switchyard-route-bench-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let port = free_port()?;
        let process = Process(
            Command::new(bin)
                .arg("serve")
                .env("SWITCHYARD_DATA_DIR", &dir)
                .env("SWITCHYARD_LISTEN", format!("127.0.0.1:{port}"))
                .env("SWITCHYARD_PROJECT_TOKEN", TOKEN)
                .env("SWITCHYARD_SECRET_KEY", SECRET_KEY)
                .env("SWITCHYARD_ROUTING__ALLOW_PRIVATE_ADDRESSES", "true")
                .env("SWITCHYARD_LOG", "warn")
                .envs(env.iter().copied())
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {bin}"))?,
        );
        let server = Server { process, addr: ([127, 0, 0, 1], port).into(), dir };
        wait_ready(server.addr, "/_readiness")?;
        Ok(server)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.process.0.id()
    }

    fn rss(&self) -> String {
        peak_rss_mb(self.pid()).map_or_else(|| "unavailable".to_owned(), |mb| format!("{mb:.1} MB"))
    }

    /// One API call with the secret key; the status and the JSON answer (`null` when empty).
    fn api(&self, method: Method, path: &str, body: Option<&Value>) -> anyhow::Result<(StatusCode, Value)> {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        let addr = self.addr;
        runtime.block_on(async move {
            let stream = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr)).await??;
            let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
            tokio::spawn(conn);
            let request = hyper::Request::builder()
                .method(method)
                .uri(path)
                .header("host", "127.0.0.1")
                .header("authorization", format!("Bearer {SECRET_KEY}"))
                .header("content-type", "application/json")
                .body(Full::new(body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()))))?;
            let response = tokio::time::timeout(Duration::from_secs(10), sender.send_request(request)).await??;
            let status = response.status();
            let bytes = response.into_body().collect().await?.to_bytes();
            let value = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
            Ok((status, value))
        })
    }

    /// Creates a webhook destination delivering to `slot` of the sink; its id.
    fn create_destination(&self, sink: SocketAddr, slot: usize, start: &str, transformations: Value) -> anyhow::Result<i64> {
        let spec = json!({
            "name": format!("sink-{slot}"),
            "type": "webhook",
            "config": {"url": format!("http://{sink}/hook/{slot}"), "max_batch_events": 1000},
            "start": start,
            "transformations": transformations,
        });
        let (status, answer) = self.api(Method::POST, DESTINATIONS, Some(&spec))?;
        anyhow::ensure!(status == StatusCode::CREATED, "creating a destination answered {status}: {answer}");
        answer["id"].as_i64().context("the created destination has no id")
    }

    fn delete_destination(&self, id: i64) -> anyhow::Result<()> {
        let (status, answer) = self.api(Method::DELETE, &format!("{DESTINATIONS}{id}/"), None)?;
        anyhow::ensure!(status.is_success(), "deleting destination {id} answered {status}: {answer}");
        Ok(())
    }

    /// Destination `id`'s requests so far and the mean time one took, answer included (the
    /// `destination_send_seconds` histogram).
    fn send_times(&self, id: i64) -> Option<(u64, Duration)> {
        let metrics = fetch(self.addr, "/metrics")?;
        let label = format!("{{destination=\"{id}\"}} ");
        let value = |name: &str| -> Option<f64> {
            metrics.lines().find_map(|line| line.split_once(name)?.1.strip_prefix(label.as_str())?.trim().parse().ok())
        };
        let count = value("destination_send_seconds_count")?;
        let sum = value("destination_send_seconds_sum")?;
        Some((count as u64, Duration::from_secs_f64(sum / count.max(1.0))))
    }

    fn status(&self, id: i64) -> Value {
        self.api(Method::GET, &format!("{DESTINATIONS}{id}/status/"), None).map(|(_, v)| v).unwrap_or(Value::Null)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.process.0.kill();
        let _ = self.process.0.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// POSTs every body to `/batch/` over `connections` keep-alive connections; each must be
/// acknowledged with 200.
pub(crate) fn post_all(addr: SocketAddr, bodies: Vec<Bytes>, connections: usize) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let bodies = Arc::new(bodies);
    let next = Arc::new(AtomicUsize::new(0));
    runtime.block_on(async move {
        let mut tasks = Vec::new();
        for _ in 0..connections {
            let (bodies, next) = (bodies.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { break };
                    let request = hyper::Request::post("/batch/")
                        .header("host", "127.0.0.1")
                        .header("content-type", "application/json")
                        .body(Full::new(body.clone()))?;
                    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request)).await??;
                    let status = response.status();
                    response.into_body().collect().await?;
                    anyhow::ensure!(status == StatusCode::OK, "/batch/ answered {status}");
                    sender.ready().await?;
                }
                anyhow::Ok(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        Ok(())
    })
}

/// Waits until the sink's `slot` has `target` events, or `timeout`; the events it has.
fn wait_for(sink: &Sink, slot: usize, target: u64, timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    loop {
        let events = sink.events(slot);
        if events >= target || Instant::now() >= deadline {
            return events;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

pub fn route_bench(options: &Options) -> anyhow::Result<()> {
    let (sink, sink_addr) = start_sink()?;
    println!(
        "route-bench: window {} events, {} lanes (SWITCHYARD_ROUTING__WINDOW_EVENTS, __LANES), webhook max_batch_events 1000, \
         null sink in this process",
        env_or("SWITCHYARD_ROUTING__WINDOW_EVENTS", "1000"),
        env_or("SWITCHYARD_ROUTING__LANES", "4"),
    );
    delivery_rate(options, &sink, sink_addr)?;
    intake_beside_delivery(options, &sink, sink_addr, INTAKE_SLOT)?;
    ack_to_delivery(options, &sink, sink_addr, 0)?;
    ack_to_delivery(options, &sink, sink_addr, options.backlog)?;
    Ok(())
}

/// Scenario 1: the preloaded events read back by one destination at a time.
fn delivery_rate(options: &Options, sink: &Sink, sink_addr: SocketAddr) -> anyhow::Result<()> {
    let server = Server::start(&options.server_bin, "delivery")?;
    let batches = options.events.div_ceil(PRELOAD_BATCH);
    let events = batches * PRELOAD_BATCH;
    let body = Bytes::from(batch_body(PRELOAD_BATCH, 1));
    let started = Instant::now();
    post_all(server.addr, vec![body; batches], options.connections.clamp(1, 8))?;
    let loaded = started.elapsed();
    println!(
        "\n1. delivery to a null sink, start earliest: {events} events preloaded through /batch/ ({PRELOAD_BATCH} per request) \
         in {:.1} s ({:.0} events/s); server peak RSS {}",
        loaded.as_secs_f64(),
        events as f64 / loaded.as_secs_f64(),
        server.rss()
    );
    let chains = [
        ("plain", json!([]), 100_000.0),
        (
            "3 declarative rules",
            json!([
                {"type": "drop_events", "events": ["$pageview"]},
                {"type": "remove_property", "key": "workspace_id"},
                {"type": "set_property", "key": "env", "value": "prod"}
            ]),
            80_000.0,
        ),
        (
            "JS transformEvent",
            json!([{"type": "javascript", "code": "export function transformEvent(event, metadata) { event.properties = event.properties || {}; event.properties.routed = true; return event; }"}]),
            30_000.0,
        ),
    ];
    println!(
        "{:<20} {:>10} {:>9} {:>10} {:>9} {:>13} {:>11} {:>13} {:>9} {:>8} {:>9}",
        "chain", "events/s", "target", "of target", "×1,600/s", "server CPU s", "µs CPU/ev", "loadgen CPU s", "requests", "send ms", "RSS MB"
    );
    for (slot, (name, transformations, target)) in (TRACKED + 1..).zip(chains) {
        let cpu_before = cpu_seconds(server.pid());
        let own_cpu_before = cpu_seconds(std::process::id());
        let started = Instant::now();
        let id = server.create_destination(sink_addr, slot, "earliest", transformations)?;
        let delivered = wait_for(sink, slot, events as u64, DELIVERY_TIMEOUT);
        let elapsed = started.elapsed();
        let cpu = cpu_seconds(server.pid()).zip(cpu_before).map(|(after, before)| after - before).unwrap_or(f64::NAN);
        // The sink's work (and this thread's polling) is this process's CPU.
        let own_cpu = cpu_seconds(std::process::id()).zip(own_cpu_before).map(|(after, before)| after - before).unwrap_or(f64::NAN);
        let rate = delivered as f64 / elapsed.as_secs_f64();
        let shown = if delivered >= events as u64 {
            format!("{rate:.0}")
        } else {
            format!("{rate:.0}*")
        };
        println!(
            "{:<20} {:>10} {:>9.0} {:>9.2}× {:>8.0}× {:>13.2} {:>11.1} {:>13.2} {:>9} {:>8.1} {:>9.1}",
            name,
            shown,
            target,
            rate / target,
            rate / RUDDERSTACK_EVENTS_PER_SEC,
            cpu,
            cpu * 1e6 / delivered.max(1) as f64,
            own_cpu,
            sink.requests[slot].load(Ordering::Relaxed),
            server.send_times(id).map_or(f64::NAN, |(_, mean)| mean.as_secs_f64() * 1000.0),
            peak_rss_mb(server.pid()).unwrap_or(f64::NAN)
        );
        if delivered < events as u64 {
            println!(
                "  * timed out after {:.0} s with {delivered} of {events} events delivered; status: {}",
                DELIVERY_TIMEOUT.as_secs_f64(),
                server.status(id)
            );
        }
        server.delete_destination(id)?;
    }
    Ok(())
}

/// Scenario 2: the batch scenario on a server with no destination, then with one.
fn intake_beside_delivery(options: &Options, sink: &Sink, sink_addr: SocketAddr, slot: usize) -> anyhow::Result<()> {
    const BATCH: usize = 50;
    let scenario = Scenario {
        name: "batch",
        path: "/batch/",
        bodies: vec![Bytes::from(batch_body(BATCH, 1))],
        events_per_request: BATCH,
        headers: vec![],
    };
    println!(
        "\n2. intake, batches of {BATCH} to /batch/, {} connections, {} s per run, a fresh server each",
        options.connections, options.seconds
    );
    println!(
        "{:<22} {:>10} {:>10} {:>8} {:>8} {:>7} {:>10} {:>10} {:>9}",
        "destinations", "req/s", "events/s", "p50 ms", "p99 ms", "errors", "delivered", "lag", "RSS MB"
    );
    let mut rates = Vec::new();
    for attached in [false, true] {
        let server = Server::start(&options.server_bin, if attached { "intake-1" } else { "intake-0" })?;
        let id = if attached { Some(server.create_destination(sink_addr, slot, "now", json!([]))?) } else { None };
        let f = drive(server.addr, &scenario, options.connections, options.seconds)?;
        let rate = f.requests as f64 * BATCH as f64 / f.elapsed.as_secs_f64();
        rates.push(rate);
        let (delivered, lag) = match id {
            Some(id) => {
                let status = server.status(id);
                (sink.events(slot).to_string(), status["lag"]["events"].as_u64().map_or("-".to_owned(), |l| l.to_string()))
            }
            None => ("-".to_owned(), "-".to_owned()),
        };
        println!(
            "{:<22} {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>7} {:>10} {:>10} {:>9.1}",
            if attached { "one webhook (now)" } else { "none" },
            f.requests as f64 / f.elapsed.as_secs_f64(),
            rate,
            f.p50.as_secs_f64() * 1000.0,
            f.p99.as_secs_f64() * 1000.0,
            f.errors,
            delivered,
            lag,
            peak_rss_mb(server.pid()).unwrap_or(f64::NAN)
        );
    }
    println!("intake rate with one destination / with none: {:.2} (target ≥ 0.80)", rates[1] / rates[0]);
    Ok(())
}

/// The id of event `i` of paced batch `b` in run `run`: a UUID, as PostHog SDKs send.
fn event_uuid(run: usize, b: usize, i: usize) -> String {
    format!("0190000{run}-0000-7000-8000-{:012x}", b * 1000 + i)
}

/// Scenario 3 (`backlog` 0) and 4: a paced sender at 10,000 events/s; acknowledgement to arrival
/// at the sink per id. With a backlog, that many events are logged first and a second
/// destination, down (nothing listens at its address), is attached to read them all
/// (`start: earliest`): it retries while the tracked one delivers.
fn ack_to_delivery(options: &Options, sink: &Sink, sink_addr: SocketAddr, backlog: usize) -> anyhow::Result<()> {
    const BATCH: usize = 50;
    const PER_SEC: usize = 200;
    const CONNECTIONS: usize = 8;
    let run = usize::from(backlog > 0);
    sink.arrivals.lock().unwrap().clear();
    sink.events[TRACKED].store(0, Ordering::Relaxed);
    sink.requests[TRACKED].store(0, Ordering::Relaxed);
    let server = Server::start(&options.server_bin, if backlog > 0 { "backlog" } else { "latency" })?;
    let down = if backlog > 0 {
        let started = Instant::now();
        let body = Bytes::from(batch_body(PRELOAD_BATCH, 1));
        post_all(server.addr, vec![body; backlog.div_ceil(PRELOAD_BATCH)], options.connections.clamp(1, 8))?;
        let dead: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let spec = json!({"name": "down", "type": "webhook", "config": {"url": format!("http://{dead}/hook")}, "start": "earliest"});
        let (status, answer) = server.api(Method::POST, DESTINATIONS, Some(&spec))?;
        anyhow::ensure!(status == StatusCode::CREATED, "creating the down destination answered {status}: {answer}");
        println!(
            "\n4. as 3, beside a destination that is down through a backlog: {backlog} events logged in {:.1} s, then a webhook to \
             {dead} (nothing listens) reading them all",
            started.elapsed().as_secs_f64()
        );
        answer["id"].as_i64()
    } else {
        None
    };
    let id = server.create_destination(sink_addr, TRACKED, "now", json!([]))?;
    let batches = PER_SEC * options.seconds as usize;
    let interval = Duration::from_secs(1) / PER_SEC as u32;
    let addr = server.addr;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // (batch, when it was acknowledged), and the worst send delay behind schedule.
    let (acks, behind) = runtime.block_on(async move {
        let start = tokio::time::Instant::now() + Duration::from_millis(50);
        let mut tasks = Vec::new();
        for connection in 0..CONNECTIONS {
            tasks.push(tokio::spawn(async move {
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                let mut acks = Vec::new();
                let mut behind = Duration::ZERO;
                for b in (connection..batches).step_by(CONNECTIONS) {
                    let events: Vec<Value> = (0..BATCH)
                        .map(|i| {
                            let mut event = catalog_event(i, 1, 0);
                            event["uuid"] = json!(event_uuid(run, b, i));
                            event
                        })
                        .collect();
                    let body = json!({"api_key": TOKEN, "batch": events}).to_string();
                    let due = start + interval * b as u32;
                    tokio::time::sleep_until(due).await;
                    behind = behind.max(tokio::time::Instant::now() - due);
                    let request = hyper::Request::post("/batch/")
                        .header("host", "127.0.0.1")
                        .header("content-type", "application/json")
                        .body(Full::new(Bytes::from(body)))?;
                    let response = tokio::time::timeout(Duration::from_secs(30), sender.send_request(request)).await??;
                    let status = response.status();
                    response.into_body().collect().await?;
                    let acked = Instant::now();
                    anyhow::ensure!(status == StatusCode::OK, "/batch/ answered {status}");
                    acks.push((b, acked));
                    sender.ready().await?;
                }
                anyhow::Ok((acks, behind))
            }));
        }
        let mut all = Vec::new();
        let mut behind = Duration::ZERO;
        for task in tasks {
            let (acks, b) = task.await??;
            all.extend(acks);
            behind = behind.max(b);
        }
        anyhow::Ok((all, behind))
    })?;
    let expected = (acks.len() * BATCH) as u64;
    let received = wait_for_arrivals(sink, expected as usize, DRAIN_TIMEOUT);
    let arrivals = sink.arrivals.lock().unwrap();
    let mut latencies: Vec<i64> = Vec::with_capacity(expected as usize);
    let mut early = 0;
    for &(b, acked) in &acks {
        for i in 0..BATCH {
            let Some(&arrived) = arrivals.get(&event_uuid(run, b, i)) else { continue };
            // An event may reach the sink before its acknowledgement reaches the sender.
            let micros = match arrived.checked_duration_since(acked) {
                Some(d) => d.as_micros() as i64,
                None => {
                    early += 1;
                    -(acked.duration_since(arrived).as_micros() as i64)
                }
            };
            latencies.push(micros);
        }
    }
    latencies.sort_unstable();
    let ms = |p: f64| percentile(&latencies, p) as f64 / 1000.0;
    if backlog == 0 {
        println!(
            "\n3. acknowledgement → delivery at {} events/s ({BATCH} per batch, {PER_SEC} batches/s, {} s, a fresh server, one webhook destination)",
            BATCH * PER_SEC,
            options.seconds
        );
    }
    println!(
        "acknowledged {expected} events, {} distinct ids reached the sink ({} deliveries in {} requests), {early} before their ack; \
         sender at most {:.1} ms behind schedule",
        latencies.len(),
        sink.events(TRACKED),
        sink.requests[TRACKED].load(Ordering::Relaxed),
        behind.as_secs_f64() * 1000.0
    );
    if (received as u64) < expected {
        println!("  {} events had not arrived {:.0} s after the sender stopped", expected - received as u64, DRAIN_TIMEOUT.as_secs_f64());
    }
    if let Some((requests, mean)) = server.send_times(id) {
        println!("server: {requests} requests, {:.0} events per request, {:.1} ms per request on average", expected as f64 / requests.max(1) as f64, mean.as_secs_f64() * 1000.0);
    }
    println!(
        "ack → delivery: p50 {:.1} ms, p99 {:.1} ms (target ≤ 500), max {:.1} ms; server peak RSS {}",
        ms(0.50),
        ms(0.99),
        latencies.last().copied().unwrap_or(0) as f64 / 1000.0,
        server.rss()
    );
    if let Some(down) = down {
        let status = server.status(down);
        println!(
            "the down destination: delivered {}, retrying {}, lag {} events, last error {}",
            status["delivered"], status["retrying"], status["lag"]["events"], status["last_error"]
        );
    }
    Ok(())
}

/// Waits until `expected` distinct ids reached the tracked slot, or `timeout`; how many did.
fn wait_for_arrivals(sink: &Sink, expected: usize, timeout: Duration) -> usize {
    let deadline = Instant::now() + timeout;
    loop {
        let received = sink.arrivals.lock().unwrap().len();
        if received >= expected || Instant::now() >= deadline {
            return received;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

//! Load generator for Switchyard's intake, measured side by side with a null endpoint.
//!
//! `switchyard-loadgen bench --server-bin target/release/switchyard` starts the server on a
//! fresh data directory and a null endpoint (this program's `null-server`: the same
//! axum/hyper/tokio stack, reading and discarding the body) as separate processes on loopback,
//! drives both with the same requests over keep-alive HTTP/1.1 connections from one thread,
//! and prints events/s, requests/s, p50/p99 acknowledgement latency and the server's peak RSS.
//! Every run is bounded by `--seconds`. `route-bench` measures delivery to destinations
//! (see `route.rs`), `warehouse-bench` the warehouse loaders and SQL (see `warehouse.rs`).

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use serde_json::json;

mod flags;
mod intake;
mod llm;
mod route;
mod sync;
mod warehouse;

#[derive(Parser)]
#[command(about = "Drive Switchyard's intake and a null endpoint; print throughput and latency")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the server and a null endpoint, run every scenario against both, print figures.
    Bench {
        /// The switchyard binary to measure.
        #[arg(long, default_value = "target/release/switchyard")]
        server_bin: String,
        /// Seconds per scenario.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Rounds per scenario, each driving switchyard then the null endpoint; the median
        /// ratio is reported (this machine is shared and noisy).
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Concurrent connections.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Events per batch in the batch scenario.
        #[arg(long, default_value_t = 50)]
        batch: usize,
        /// Concurrent agent runs (distinct trace ids) the events of a batch belong to. Each
        /// distinct trace id is a separate place in the trace index, so more traces per
        /// batch mean more index pages written per commit.
        #[arg(long, default_value_t = 1)]
        traces: usize,
        /// Distinct request bodies the connections cycle through, each with its own trace ids:
        /// `bodies × traces` agent runs in all, so the trace index grows as with real traffic
        /// (default 1: every request is the same).
        #[arg(long, default_value_t = 1)]
        bodies: usize,
        /// Run only this scenario (`batch` or `single`).
        #[arg(long)]
        only: Option<String>,
    },
    /// A null endpoint: accepts any request, reads and discards the body, answers 200.
    NullServer {
        #[arg(long)]
        port: u16,
    },
    /// In-process intake work on one core: ns per event to parse, normalize and serialize
    /// PostHog capture bodies (a single event, a batch of 50).
    IntakeEval {
        #[arg(long, default_value_t = 200_000)]
        iterations: usize,
    },
    /// In-process flag evaluation on one core: ns per flag for 50 realistic flags and for a
    /// plain rollout flag.
    FlagsEval {
        #[arg(long, default_value_t = 20_000)]
        iterations: usize,
    },
    /// `/flags` answering 50 flags over HTTP, side by side with Unleash Edge (offline, the
    /// same flags as a bootstrap file, its frontend API) when `--unleash-edge-bin` is given.
    FlagsBench {
        #[arg(long, default_value = "target/release/switchyard")]
        server_bin: String,
        #[arg(long)]
        unleash_edge_bin: Option<String>,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// Delivery to destinations against a null sink in this process: the rate at which a
    /// webhook destination reads back preloaded events (plain, declarative rules, JS), intake's
    /// batch rate with one destination attached vs none, and acknowledgement → delivery
    /// latency at 10,000 events/s, alone and beside a destination down through a backlog.
    RouteBench {
        #[arg(long, default_value = "target/release/switchyard")]
        server_bin: String,
        /// Events preloaded for the delivery-rate scenario (rounded up to batches of 500).
        #[arg(long, default_value_t = 200_000)]
        events: usize,
        /// Events logged before the last scenario, which a destination that is down reads
        /// from the start beside the measured one.
        #[arg(long, default_value_t = 1_000_000)]
        backlog: usize,
        /// Seconds per run of the intake and latency scenarios.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent connections of the intake scenario (the preload uses up to 8).
        #[arg(long, default_value_t = 32)]
        connections: usize,
    },
    /// LLM analytics: `$ai_generation` intake with enrichment on vs off, OTLP spans per second,
    /// trace view latency on a large store.
    LlmBench {
        #[arg(long, default_value = "target/release/switchyard")]
        server_bin: String,
        /// Seconds per run.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Concurrent connections of the intake scenarios.
        #[arg(long, default_value_t = 32)]
        connections: usize,
        /// Events in the trace view's store (runs of 10).
        #[arg(long, default_value_t = 10_000_000)]
        store_events: usize,
    },
    /// The warehouse: the lake loader's rate beside a bare reader of the log, the PostgreSQL
    /// loader beside plain COPY of the same rows, SQL over a large lake beside DuckDB, intake
    /// with the lake on vs off.
    WarehouseBench(warehouse::Options),
    /// What one durable write costs on this machine's disk, alone: 16 KiB appended to a growing
    /// file plus `fdatasync` (a new WAL), WAL-sized overwrites plus `fdatasync` (16 and 64 KiB)
    /// and an `fdatasync` with nothing written, each timed (avg, p50, p99) with the CPU it
    /// costs. The least a group commit can take here.
    SyncFloor {
        /// A directory on the disk to measure (where the data directory would be).
        #[arg(long, default_value = ".")]
        dir: std::path::PathBuf,
        #[arg(long, default_value_t = 3000)]
        ops: usize,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::NullServer { port } => null_server(port),
        Cmd::FlagsEval { iterations } => flags::eval_bench(iterations),
        Cmd::IntakeEval { iterations } => intake::eval_bench(iterations),
        Cmd::SyncFloor { dir, ops } => sync::sync_floor(&dir, ops),
        Cmd::FlagsBench { server_bin, unleash_edge_bin, seconds, connections } => {
            flags::http_bench(&server_bin, unleash_edge_bin.as_deref(), seconds, connections)
        }
        Cmd::LlmBench { server_bin, seconds, connections, store_events } => {
            llm::llm_bench(&llm::Options { server_bin, seconds, connections, store_events })
        }
        Cmd::WarehouseBench(options) => warehouse::warehouse_bench(&options),
        Cmd::RouteBench { server_bin, events, backlog, seconds, connections } => {
            route::route_bench(&route::Options { server_bin, events, backlog, seconds, connections })
        }
        Cmd::Bench { server_bin, seconds, rounds, connections, batch, traces, bodies, only } => {
            let traffic = Traffic { batch, traces: traces.max(1), bodies: bodies.max(1) };
            bench(&server_bin, seconds, rounds.max(1), connections, &traffic, only.as_deref())
        }
    }
}

fn null_server(port: u16) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let app = axum::Router::new().fallback(|body: axum::body::Bytes| async move {
            std::hint::black_box(body.len());
            axum::Json(json!({"status": "Ok"}))
        });
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        axum::serve(listener, app).await?;
        Ok(())
    })
}

const TOKEN: &str = "phc_loadgen";

/// The trace id of the `trace`-th concurrent agent run: 32 hex digits, spread over the key space
/// as real trace ids are.
fn trace_id(trace: usize) -> String {
    format!("{:032x}", (trace as u128 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15_f39c_c060_5ced_c835))
}

/// What the bench sends: batch size, agent runs per request, distinct request bodies.
struct Traffic {
    batch: usize,
    traces: usize,
    bodies: usize,
}

/// A PostHog `/batch/` body of `events` catalog events over `traces` agent runs.
pub(crate) fn batch_body(events: usize, traces: usize) -> String {
    batch_body_from(events, traces, 0)
}

/// A `/batch/` body whose agent runs are numbered from `first_trace`.
fn batch_body_from(events: usize, traces: usize, first_trace: usize) -> String {
    json!({"api_key": TOKEN, "batch": (0..events).map(|i| catalog_event(i, traces, first_trace)).collect::<Vec<_>>(),
           "sent_at": "2026-11-25T12:08:21.829969+00:00"})
    .to_string()
}

/// A PostHog single-event body (`/i/v0/e/`) carrying its token.
pub(crate) fn single_body(traces: usize) -> String {
    single_body_from(traces, 0)
}

fn single_body_from(traces: usize, first_trace: usize) -> String {
    let mut single = catalog_event(0, traces, first_trace);
    single["api_key"] = json!(TOKEN);
    single.to_string()
}

/// The `i`-th event of a request whose events belong to `traces` concurrent agent runs,
/// numbered from `first_trace`.
fn catalog_event(i: usize, traces: usize, first_trace: usize) -> serde_json::Value {
    json!({
        "event": "agent_execution",
        "distinct_id": format!("user_{}", i % 100),
        "properties": {
            "trace_id": trace_id(first_trace + i % traces.max(1)),
            "workspace_id": "ws_1",
            "organization_id": "org_1",
            "agent_id": "ag_1",
            "run_id": format!("run_{i}"),
            "model": "gpt-4o-mini",
            "provider": "openai",
            "input_tokens": 1200,
            "output_tokens": 300,
            "cost_usd": 0.00036,
            "duration_ms": 2100,
            "status": "success",
            "$groups": {"workspace": "ws_1", "organization": "org_1"},
            "$lib": "posthog-python",
            "$lib_version": "7.91.1"
        },
        "timestamp": "2026-11-25T12:08:21.824965+00:00"
    })
}

pub(crate) struct Scenario {
    pub name: &'static str,
    pub path: &'static str,
    /// Request bodies; each connection cycles through them from its own starting point.
    pub bodies: Vec<Bytes>,
    pub events_per_request: usize,
    pub headers: Vec<(&'static str, String)>,
}

pub(crate) struct Figures {
    pub requests: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub p50: Duration,
    pub p99: Duration,
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_ready(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    while Instant::now() < deadline {
        let ok = runtime.block_on(async {
            let Ok(stream) = tokio::net::TcpStream::connect(addr).await else { return false };
            let Ok((mut sender, conn)) =
                hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
            else {
                return false;
            };
            tokio::spawn(conn);
            let request = hyper::Request::get(path).header("host", "127.0.0.1").body(Full::new(Bytes::new())).unwrap();
            matches!(sender.send_request(request).await, Ok(r) if r.status() == 200)
        });
        if ok {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("{addr} did not become ready")
}

/// GET `path` from `addr`; the body when the answer is 200.
pub(crate) fn fetch(addr: SocketAddr, path: &str) -> Option<String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
    runtime.block_on(async {
        let stream = tokio::net::TcpStream::connect(addr).await.ok()?;
        let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await.ok()?;
        tokio::spawn(conn);
        let request = hyper::Request::get(path).header("host", "127.0.0.1").body(Full::new(Bytes::new())).ok()?;
        let response = sender.send_request(request).await.ok()?;
        if response.status() != 200 {
            return None;
        }
        let body = response.into_body().collect().await.ok()?.to_bytes();
        String::from_utf8(body.to_vec()).ok()
    })
}

/// Switchyard's committed log transactions and the events they held so far (the
/// `switchyard_log_transaction_events` histogram's count and sum).
fn log_commits(addr: SocketAddr) -> Option<(f64, f64)> {
    let metrics = fetch(addr, "/metrics")?;
    let value = |name: &str| -> Option<f64> {
        metrics.lines().find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
    };
    Some((value("switchyard_log_transaction_events_count ")?, value("switchyard_log_transaction_events_sum ")?))
}

/// The `p`-quantile (0.5 for the median) of sorted values; 0 when there are none.
pub(crate) fn percentile<T: Copy + Default>(sorted: &[T], p: f64) -> T {
    match sorted.len() {
        0 => T::default(),
        n => sorted[((n as f64 * p) as usize).min(n - 1)],
    }
}

/// CPU seconds (user + system) a process has used so far.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

pub(crate) fn peak_rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

/// Drives `addr` with `connections` keep-alive connections from one thread for `seconds`.
pub(crate) fn drive(addr: SocketAddr, scenario: &Scenario, connections: usize, seconds: u64) -> anyhow::Result<Figures> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async move {
        let deadline = Instant::now() + Duration::from_secs(seconds);
        let mut tasks = Vec::new();
        for connection in 0..connections {
            let bodies = scenario.bodies.clone();
            let mut next_body = connection;
            let path = scenario.path;
            let headers = scenario.headers.clone();
            tasks.push(tokio::spawn(async move {
                let mut latencies: Vec<u32> = Vec::with_capacity(100_000);
                let mut errors = 0u64;
                let stream = tokio::net::TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                let (mut sender, conn) =
                    hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
                tokio::spawn(conn);
                while Instant::now() < deadline {
                    let mut request = hyper::Request::post(path)
                        .header("host", "127.0.0.1");
                    if !headers.iter().any(|(name, _)| name.eq_ignore_ascii_case("content-type")) {
                        request = request.header("content-type", "application/json");
                    }
                    for (name, value) in &headers {
                        request = request.header(*name, value);
                    }
                    let request = request.body(Full::new(bodies[next_body % bodies.len()].clone()))?;
                    next_body += 1;
                    let started = Instant::now();
                    let response = sender.send_request(request).await?;
                    let ok = response.status().is_success();
                    response.into_body().collect().await?;
                    latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    if !ok {
                        errors += 1;
                    }
                    sender.ready().await?;
                }
                anyhow::Ok((latencies, errors))
            }));
        }
        let started = Instant::now();
        let mut all = Vec::new();
        let mut errors = 0;
        for task in tasks {
            let (latencies, e) = task.await??;
            all.extend(latencies);
            errors += e;
        }
        let elapsed = started.elapsed();
        all.sort_unstable();
        let pct = |p: f64| Duration::from_micros(percentile(&all, p) as u64);
        Ok(Figures { requests: all.len() as u64, errors, elapsed, p50: pct(0.50), p99: pct(0.99) })
    })
}

pub(crate) struct Process(pub Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn bench(
    server_bin: &str,
    seconds: u64,
    rounds: usize,
    connections: usize,
    traffic: &Traffic,
    only: Option<&str>,
) -> anyhow::Result<()> {
    let Traffic { batch, traces, bodies } = *traffic;
    let data_dir = std::env::temp_dir().join(format!("switchyard-loadgen-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data_dir);
    let server_port = free_port()?;
    let server = Process(
        Command::new(server_bin)
            .arg("serve")
            .env("SWITCHYARD_DATA_DIR", &data_dir)
            .env("SWITCHYARD_LISTEN", format!("127.0.0.1:{server_port}"))
            .env("SWITCHYARD_PROJECT_TOKEN", TOKEN)
            .env("SWITCHYARD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {server_bin}"))?,
    );
    let null_port = free_port()?;
    let null = Process(
        Command::new(std::env::current_exe()?)
            .args(["null-server", "--port", &null_port.to_string()])
            .spawn()
            .context("cannot start the null endpoint")?,
    );
    let server_addr: SocketAddr = ([127, 0, 0, 1], server_port).into();
    let null_addr: SocketAddr = ([127, 0, 0, 1], null_port).into();
    wait_ready(server_addr, "/_readiness")?;
    wait_ready(null_addr, "/")?;

    let scenarios = [
        Scenario {
            name: "batch",
            path: "/batch/",
            bodies: (0..bodies).map(|b| Bytes::from(batch_body_from(batch, traces, b * traces))).collect(),
            events_per_request: batch,
            headers: vec![],
        },
        Scenario {
            name: "single",
            path: "/i/v0/e/",
            bodies: (0..bodies).map(|b| Bytes::from(single_body_from(traces, b * traces))).collect(),
            events_per_request: 1,
            headers: vec![],
        },
    ];

    println!(
        "switchyard-loadgen: {connections} connections, {seconds} s per run, {rounds} rounds, \
         {traces} trace id(s) per batch, {bodies} distinct bodies ({} agent runs), one generator thread",
        traces * bodies
    );
    println!(
        "{:<8} {:>5} {:<11} {:>10} {:>10} {:>8} {:>8} {:>7} {:>12} {:>10} {:>10}",
        "scenario", "round", "target", "req/s", "events/s", "p50 ms", "p99 ms", "errors", "CPU µs/req", "commits/s", "ev/commit"
    );
    for scenario in scenarios.iter().filter(|s| only.is_none_or(|o| o == s.name)) {
        let mut ratios = Vec::new();
        for round in 1..=rounds {
            let mut rates = Vec::new();
            for (target, addr, pid) in [("switchyard", server_addr, server.0.id()), ("null", null_addr, null.0.id())] {
                let cpu_before = cpu_seconds(pid);
                let commits_before = log_commits(addr);
                let f = drive(addr, scenario, connections, seconds)?;
                let cpu = cpu_seconds(pid).zip(cpu_before).map(|(after, before)| after - before);
                // Group commit: transactions per second and events per transaction.
                let commits = log_commits(addr).zip(commits_before).map(|((count, sum), (count0, sum0))| {
                    let commits = count - count0;
                    (commits / f.elapsed.as_secs_f64(), (sum - sum0) / commits.max(1.0))
                });
                let (commits_per_sec, events_per_commit) = match commits {
                    Some((rate, events)) => (format!("{rate:.0}"), format!("{events:.1}")),
                    None => ("-".to_owned(), "-".to_owned()),
                };
                let rps = f.requests as f64 / f.elapsed.as_secs_f64();
                rates.push(rps);
                let cpu_per_request = cpu.map(|c| c * 1e6 / f.requests.max(1) as f64).unwrap_or(f64::NAN);
                println!(
                    "{:<8} {:>5} {:<11} {:>10.0} {:>10.0} {:>8.2} {:>8.2} {:>7} {:>12.1} {:>10} {:>10}",
                    scenario.name,
                    round,
                    target,
                    rps,
                    rps * scenario.events_per_request as f64,
                    f.p50.as_secs_f64() * 1000.0,
                    f.p99.as_secs_f64() * 1000.0,
                    f.errors,
                    cpu_per_request,
                    commits_per_sec,
                    events_per_commit
                );
            }
            ratios.push(rates[0] / rates[1]);
        }
        ratios.sort_by(f64::total_cmp);
        let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        println!(
            "{:<8} switchyard/null request-rate ratio: median {:.2} (rounds: {})",
            scenario.name,
            ratios[ratios.len() / 2],
            shown.join(", ")
        );
    }
    match peak_rss_mb(server.0.id()) {
        Some(mb) => println!("switchyard peak RSS: {mb:.1} MB"),
        None => println!("switchyard peak RSS: unavailable"),
    }
    drop(null);
    drop(server);
    let _ = std::fs::remove_dir_all(&data_dir);
    Ok(())
}

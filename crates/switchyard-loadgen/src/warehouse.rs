//! Warehouse benchmarks (`switchyard-loadgen warehouse-bench`), issue 15's targets measured
//! side by side in one run (this machine is shared and noisy: the ratios are the figures):
//!
//! 1. **Lake load rate.** In this process: a temporary event log (`SqliteLog`) holding
//!    `--log-events` catalog events, then the lake's loader (`lake::run`, default
//!    `LakeConfig`: windows of 10,000) until its cursor reaches the log's end: events/s. Beside
//!    it, on the same log, the ceilings: a bare consumer (read and commit windows of 10,000,
//!    nothing else), and one that also parses each event and makes its warehouse rows
//!    (`rows_for` + `Schema::admit`) without writing a file.
//! 2. **PostgreSQL load vs plain COPY.** A throwaway PostgreSQL 15 cluster with its default
//!    settings (fsync and synchronous_commit on), the loader (`postgres::run`, default
//!    windows) over `--pg-events` events until its cursor reaches the end; then, for every
//!    table it made, its rows copied out (`COPY … TO STDOUT (FORMAT binary)`) into memory and
//!    copied into a new table like it (`CREATE TABLE … (LIKE … INCLUDING ALL)`), only that
//!    `COPY … FROM STDIN` timed. The ratio copy time / loader time.
//! 3. **SQL over a large lake.** A lake of `--lake-events` events built in this process as the
//!    loader builds it (rows per window of 100,000, `write_window`, then `compact_dir` as after
//!    each load), the release server started over it (`SWITCHYARD_WAREHOUSE__LAKE_DIR`), and two
//!    queries timed as the wall clock of the `switchyard sql … --format json` process (one
//!    untimed run first, then the median of `--runs`); beside it the DuckDB CLI over the same
//!    files (`read_parquet(…, union_by_name = true)`), timed the same way. The answers of the
//!    two engines are compared.
//! 4. **Intake beside the loader.** The `bench` batch scenario (batches of 50, `--connections`)
//!    for `--seconds` on a fresh server with the lake on (the default) and one with it off
//!    (`SWITCHYARD_WAREHOUSE__LAKE=false`), alternated over `--rounds`: the ratio of the rates.
//!
//! Every wait is bounded (`--timeout`); a figure not reached in time is printed as such.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use chrono::{DateTime, TimeZone as _, Utc};
use futures_util::{SinkExt as _, StreamExt as _};
use hyper::body::Bytes;
use serde_json::{json, Map, Value};
use switchyard_event::model::{format_time, EventType, Protocol};
use switchyard_event::{Accepted, Event};
use switchyard_pipeline::{lake, postgres, LoadStatus, Stores};
use switchyard_store::{AppendBatch, ControlStore, EventLog as _, LogRecord, Selection, SqliteLog, SqliteLogConfig};
use switchyard_warehouse::{rows_for, Dialect, Row, Schema};
use tokio::sync::watch;

use crate::route::{Server, SECRET_KEY};
use crate::{batch_body, cpu_seconds, drive, fetch, peak_rss_mb, Scenario};

#[derive(clap::Args)]
pub struct Options {
    /// The switchyard binary (part 3's server and CLI, part 4's servers).
    #[arg(long, default_value = "target/release/switchyard")]
    pub server_bin: String,
    /// Events in the log the lake loads (part 1; rounded up to windows of 10,000).
    #[arg(long, default_value_t = 1_000_000)]
    pub log_events: usize,
    /// Events the PostgreSQL loader loads (part 2; rounded up to windows of 10,000).
    #[arg(long, default_value_t = 200_000)]
    pub pg_events: usize,
    /// Events in the lake the SQL queries run over (part 3).
    #[arg(long, default_value_t = 10_000_000)]
    pub lake_events: usize,
    /// Days the events' timestamps spread over.
    #[arg(long, default_value_t = 7)]
    pub days: u32,
    /// Where part 3's lake is built and kept (reused when it holds a lake already);
    /// unset: a temporary directory, removed at the end.
    #[arg(long)]
    pub lake_dir: Option<PathBuf>,
    /// Timed runs per query (after one untimed run); the median is reported.
    #[arg(long, default_value_t = 3)]
    pub runs: usize,
    /// The DuckDB CLI (PyPI: `pip install duckdb-cli`).
    #[arg(long, default_value = "duckdb")]
    pub duckdb_bin: String,
    /// Seconds per intake run (part 4).
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Intake rounds, each with the lake on and off (order alternated).
    #[arg(long, default_value_t = 2)]
    pub rounds: usize,
    /// Concurrent connections of the intake runs.
    #[arg(long, default_value_t = 32)]
    pub connections: usize,
    /// Only these parts, comma-separated: lake, postgres, sql, intake.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Longest a load or the lake's build may take, seconds (10M events take ~15–20 min
    /// to build here).
    #[arg(long, default_value_t = 1800)]
    pub timeout: u64,
}

/// The loader's windows in part 1 and 2 (`LakeConfig`'s and `PostgresConfig`'s default): logs
/// are rounded up to a whole number of them, so the last window is full and not held back by
/// `max_wait`.
const LOADER_WINDOW: usize = 10_000;
/// Events per window when part 3's lake is built.
const BUILD_WINDOW: usize = 100_000;
/// Events per append when a log is filled.
const APPEND_BATCH: usize = 5_000;
/// The project every event belongs to (the server's default project).
const PROJECT: i64 = 1;
/// The PostgreSQL schema of part 2.
const PG_SCHEMA: &str = "switchyard";

pub fn warehouse_bench(options: &Options) -> anyhow::Result<()> {
    let wants = |part: &str| options.only.is_empty() || options.only.iter().any(|o| o == part);
    println!(
        "warehouse-bench: catalog events over {} days (runs of 10 events per trace; tool_used, $ai_generation, agent_execution, \
         rag_query_triggered, model_cost, flow_executed, prompt_blocked, identify), project {PROJECT}",
        options.days
    );
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    if wants("lake") {
        runtime.block_on(lake_load(options))?;
    }
    if wants("postgres") {
        runtime.block_on(postgres_load(options))?;
    }
    if wants("sql") {
        sql_over_lake(options)?;
    }
    if wants("intake") {
        intake_beside_lake(options)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Catalog events

/// Models with their prices in 10^-12 USD per input and output token.
const MODELS: [(&str, &str, u64, u64); 5] = [
    ("gpt-4o-mini", "openai", 150_000, 600_000),
    ("gpt-4o", "openai", 2_500_000, 10_000_000),
    ("claude-3-5-sonnet", "anthropic", 3_000_000, 15_000_000),
    ("claude-3-5-haiku", "anthropic", 800_000, 4_000_000),
    ("gemini-1.5-flash", "google", 75_000, 300_000),
];
const TOOLS: [(&str, &str); 6] = [
    ("web_search", "builtin"),
    ("sql_query", "connector"),
    ("http_request", "http"),
    ("python", "code"),
    ("slack_post", "connector"),
    ("github_issue", "mcp"),
];
const USERS: u64 = 1_000;
const WORKSPACES: u64 = 50;
const ORGANIZATIONS: u64 = 10;

/// A 64-bit mix of `n` (splitmix64's finalizer): cheap, deterministic "randomness".
fn mix(n: u64) -> u64 {
    let mut z = n.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One of `choices`, by `n`.
fn pick(choices: &[&'static str], n: u64) -> &'static str {
    choices[(n % choices.len() as u64) as usize]
}

/// `units` × 10^-12 as exact decimal text, without trailing zeros (`0.000495`).
fn decimal_text(units: u64) -> String {
    let text = format!("{}.{:012}", units / 1_000_000_000_000, units % 1_000_000_000_000);
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A cost as the JSON number a client sends (the shortest float of the exact decimal, whose
/// text is that decimal).
fn cost_value(units: u64) -> Value {
    json!(decimal_text(units).parse::<f64>().unwrap_or(0.0))
}

/// The `n`-th of `total` events, as the intake stores it: runs of 10 events share a trace, a
/// user, a workspace and an organization; timestamps spread evenly over `days` days from
/// 2026-11-28.
fn catalog_event(n: usize, total: usize, days: u32) -> Event {
    let run = (n / 10) as u64;
    let h = mix(n as u64);
    let user = mix(run) % USERS;
    let workspace = user % WORKSPACES;
    let organization = workspace % ORGANIZATIONS;
    let (workspace_id, organization_id) = (format!("ws_{workspace}"), format!("org_{organization}"));
    let span = i64::from(days.max(1)) * 86_400_000_000;
    let start = Utc.with_ymd_and_hms(2026, 11, 28, 0, 0, 0).single().unwrap_or_default();
    let at: DateTime<Utc> = start + chrono::Duration::microseconds(span / total.max(1) as i64 * n as i64 + (h % 1000) as i64);
    let trace = crate::trace_id(run as usize);
    let span_id = format!("{:016x}", h);
    let agent_id = format!("ag_{}", run % 40);
    let flow_id = format!("flow_{}", run % 120);
    let run_id = format!("run_{run}");
    let (model, provider, price_in, price_out) = MODELS[(mix(run ^ 0x5eed) % MODELS.len() as u64) as usize];
    let input_tokens = 200 + h % 3000;
    let output_tokens = 40 + (h >> 20) % 800;
    let cached = if h.is_multiple_of(3) { input_tokens / 4 } else { 0 };
    let input_cost = (input_tokens - cached) * price_in + cached * price_in / 2;
    let output_cost = output_tokens * price_out;
    let failed = h.is_multiple_of(20);
    let mut kind = EventType::Track;
    let mut traits = Map::new();
    let (name, mut properties) = match n % 10 {
        0 => (
            "agent_execution",
            json!({"agent_id": agent_id, "run_id": run_id, "model": model, "provider": provider, "input_tokens": input_tokens,
                   "output_tokens": output_tokens, "cached_input_tokens": cached, "cost_usd": cost_value(input_cost + output_cost),
                   "duration_ms": 400 + h % 9000, "status": if failed { "error" } else { "success" }, "tool_calls": h % 6}),
        ),
        1 | 4 => (
            "$ai_generation",
            json!({"$ai_model": model, "$ai_provider": provider, "$ai_input_tokens": input_tokens, "$ai_output_tokens": output_tokens,
                   "$ai_cache_read_input_tokens": cached, "$ai_input_cost_usd": cost_value(input_cost),
                   "$ai_output_cost_usd": cost_value(output_cost), "$ai_total_cost_usd": cost_value(input_cost + output_cost),
                   "$ai_latency": (300 + h % 4000) as f64 / 1000.0, "$ai_http_status": 200, "$ai_trace_id": trace, "$ai_span_id": span_id,
                   "$ai_base_url": "https://api.openai.com/v1",
                   "$ai_input": [{"role": "system", "content": "You are a helpful agent."}, {"role": "user", "content": "Summarize the open incidents."}],
                   "$ai_output_choices": [{"role": "assistant", "content": "Three incidents are open; two are waiting on a vendor."}],
                   "agent_id": agent_id, "run_id": run_id, "$lib": "posthog-python", "$lib_version": "7.91.1"}),
        ),
        2 | 5 | 7 => {
            let (tool, tool_type) = TOOLS[(h % TOOLS.len() as u64) as usize];
            let mut p = json!({"tool_name": tool, "tool_type": tool_type, "flow_id": flow_id, "node_id": format!("node_{}", h % 30),
                               "run_id": run_id, "duration_ms": 20 + h % 3000, "success": !failed});
            if failed {
                p["error_type"] = json!("timeout");
            }
            ("tool_used", p)
        }
        3 => (
            "rag_query_triggered",
            json!({"knowledge_base_id": format!("kb_{}", h % 25), "index_version": format!("v{}", 1 + h % 4), "top_k": 8,
                   "results_count": h % 9, "latency_ms": 15 + h % 400, "retriever": pick(&["vector", "hybrid", "keyword"], h),
                   "embedding_model": "text-embedding-3-small"}),
        ),
        6 => (
            "model_cost",
            json!({"model": model, "provider": provider, "input_tokens": input_tokens, "output_tokens": output_tokens,
                   "cached_input_tokens": cached, "cost_usd": cost_value(input_cost + output_cost), "pricing_version": "2026-11",
                   "agent_id": agent_id, "flow_id": flow_id, "run_id": run_id}),
        ),
        8 if run.is_multiple_of(2) => (
            "prompt_blocked",
            json!({"reason": pick(&["abuse", "similarity", "pii", "jailbreak", "policy"], h), "detector": "llm-guard",
                   "score": (h % 1000) as f64 / 1000.0, "threshold": 0.8, "policy_id": format!("pol_{}", h % 7), "agent_id": agent_id,
                   "flow_id": flow_id, "prompt_sha256": format!("{:016x}{:016x}{:016x}{:016x}", h, mix(h), mix(h + 1), mix(h + 2))}),
        ),
        8 => {
            kind = EventType::Identify;
            traits = json!({"email": format!("user{user}@example.com"), "name": format!("User {user}"), "plan": pick(&["free", "team", "enterprise"], user),
                            "seats": 1 + user % 40})
            .as_object()
            .cloned()
            .unwrap_or_default();
            ("$identify", json!({}))
        }
        _ => (
            "flow_executed",
            json!({"flow_id": flow_id, "flow_version": 1 + run % 5, "run_id": run_id, "status": if failed { "error" } else { "success" },
                   "duration_ms": 1000 + h % 20000, "node_count": 3 + h % 12, "nodes_failed": u64::from(failed),
                   "trigger": pick(&["manual", "schedule", "api", "webhook"], h)}),
        ),
    };
    let properties = properties.as_object_mut().map(std::mem::take).unwrap_or_default();
    let mut properties = properties;
    for (key, value) in [
        ("trace_id", json!(trace)),
        ("span_id", json!(span_id)),
        ("workspace_id", json!(workspace_id)),
        ("organization_id", json!(organization_id)),
    ] {
        properties.insert(key.into(), value);
    }
    let mut groups = Map::new();
    groups.insert("workspace".into(), json!(workspace_id));
    groups.insert("organization".into(), json!(organization_id));
    let distinct_id = format!("user_{user}");
    Event {
        id: format!("0193a000-0000-7000-8000-{n:012x}"),
        project_id: PROJECT,
        protocol: Protocol::Posthog,
        kind,
        event: name.to_owned(),
        user_id: (kind == EventType::Identify).then(|| distinct_id.clone()),
        distinct_id,
        anonymous_id: None,
        properties,
        traits,
        traits_set_once: Map::new(),
        context: Map::new(),
        groups,
        group_type: None,
        group_id: None,
        previous_id: None,
        name: None,
        category: None,
        timestamp: format_time(at),
        original_timestamp: Some(format_time(at)),
        sent_at: Some(format_time(at + chrono::Duration::milliseconds(120))),
        received_at: format_time(at + chrono::Duration::milliseconds(150)),
        trace_id: Some(trace),
        span_id: Some(span_id),
        request_ip: Some("198.51.100.4".into()),
        extra: Map::new(),
    }
}

/// The event as the intake logs it (its stored form: columns and body).
fn log_record(event: Event) -> LogRecord {
    let accepted = Accepted::from_event(event);
    let person_update = accepted.updates_persons;
    LogRecord::from_accepted(accepted, person_update)
}

// ---------------------------------------------------------------------------------------------
// A log in this process

struct BenchStores {
    log: SqliteLog,
    control: ControlStore,
}

impl Stores for BenchStores {
    fn log(&self) -> &SqliteLog {
        &self.log
    }
    fn control(&self) -> &ControlStore {
        &self.control
    }
}

/// A new log in `dir` holding `events` catalog events (appended 5,000 at a time, as group
/// commits of a busy intake would); prints how long it took.
async fn filled_log(dir: &Path, events: usize, days: u32) -> anyhow::Result<Arc<BenchStores>> {
    let stores = Arc::new(BenchStores {
        log: SqliteLog::open(&dir.join("events.db"), SqliteLogConfig::default())?,
        control: ControlStore::open(&dir.join("control.db"))?,
    });
    let started = Instant::now();
    let mut n = 0;
    while n < events {
        let end = (n + APPEND_BATCH).min(events);
        let records = tokio::task::block_in_place(|| (n..end).map(|i| log_record(catalog_event(i, events, days))).collect::<Vec<_>>());
        stores.log.append(AppendBatch { events: records, ..Default::default() }).await?;
        n = end;
    }
    let filled = started.elapsed();
    // The log's trace index and checkpoints run behind the appends, on threads of their own:
    // let them finish before anything is timed.
    settle().await;
    println!(
        "  log of {events} events filled in {:.1} s, quiet {:.1} s later ({})",
        filled.as_secs_f64(),
        (started.elapsed() - filled).as_secs_f64(),
        file_sizes(dir)
    );
    Ok(stores)
}

/// Waits (at most 2 minutes) until this process has been nearly idle for half a second: the
/// log's background threads (trace index, checkpoints) are done.
async fn settle() {
    let deadline = Instant::now() + Duration::from_secs(120);
    let pid = std::process::id();
    let mut before = cpu_seconds(pid);
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = cpu_seconds(pid);
        if let (Some(a), Some(b)) = (now, before) {
            if a - b < 0.05 {
                return;
            }
        }
        before = now;
    }
}

/// The total size of the files under `dir`, as text.
fn file_sizes(dir: &Path) -> String {
    let (bytes, files) = walk(dir);
    format!("{files} files, {:.0} MB", bytes as f64 / 1e6)
}

/// Bytes and files under `dir`, recursively.
fn walk(dir: &Path) -> (u64, usize) {
    let mut total = (0, 0);
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        if path.is_dir() {
            let (bytes, files) = walk(&path);
            total = (total.0 + bytes, total.1 + files);
        } else if let Ok(meta) = entry.metadata() {
            total = (total.0 + meta.len(), total.1 + 1);
        }
    }
    total
}

/// Waits until `consumer`'s cursor is `end` or `timeout` passes; the time it took, or None.
async fn wait_for_cursor(log: &SqliteLog, consumer: &str, end: i64, started: Instant, timeout: Duration) -> anyhow::Result<Option<Duration>> {
    loop {
        if log.cursor(consumer).await? == Some(end) {
            return Ok(Some(started.elapsed()));
        }
        if started.elapsed() > timeout {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn rate(events: usize, elapsed: Duration) -> f64 {
    events as f64 / elapsed.as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// 1. The lake's load rate

async fn lake_load(options: &Options) -> anyhow::Result<()> {
    let events = options.log_events.div_ceil(LOADER_WINDOW).max(1) * LOADER_WINDOW;
    println!("\n1. lake load rate: a log of {events} events in this process, read to its end in windows of {LOADER_WINDOW}");
    let dir = tempfile::Builder::new().prefix("switchyard-warehouse-bench-").tempdir()?;
    let stores = filled_log(dir.path(), events, options.days).await?;
    let end = stores.log.end().await?;
    let cpu = || cpu_seconds(std::process::id()).unwrap_or(f64::NAN);

    // The ceiling from reading alone.
    let (cpu0, started) = (cpu(), Instant::now());
    let mut read = 0;
    loop {
        let batch = stores.log.read("bench:bare", LOADER_WINDOW, Selection::All).await?;
        let Some(position) = batch.position else { break };
        read += batch.entries.len();
        stores.log.commit("bench:bare", position).await?;
    }
    let bare = (started.elapsed(), cpu() - cpu0);
    anyhow::ensure!(read == events, "the bare consumer read {read} events, not {events}");

    // Reading, parsing and making the rows, without writing them.
    let (cpu0, started) = (cpu(), Instant::now());
    let mut schema = Schema::with_fixed_tables();
    let mut rows = 0usize;
    loop {
        let batch = stores.log.read("bench:rows", LOADER_WINDOW, Selection::All).await?;
        let Some(position) = batch.position else { break };
        tokio::task::block_in_place(|| -> anyhow::Result<()> {
            for entry in &batch.entries {
                let event: Event = serde_json::from_str(&entry.body)?;
                for row in rows_for(&event, Dialect::Lake) {
                    let (row, _) = schema.admit(row);
                    rows += 1;
                    std::hint::black_box(row);
                }
            }
            Ok(())
        })?;
        stores.log.commit("bench:rows", position).await?;
    }
    let rows_only = (started.elapsed(), cpu() - cpu0);

    // The lake's loader, as the server runs it; then again from the start into another
    // directory with compaction off, to show what compaction costs.
    let timeout = Duration::from_secs(options.timeout);
    let root = dir.path().join("lake");
    let (loaded, lake_cpu, status) = load_lake(&stores, lake::LakeConfig::new(&root), end, timeout).await?;
    stores.log.forget(lake::CONSUMER).await?;
    let uncompacted = lake::LakeConfig { compact_files: usize::MAX, ..lake::LakeConfig::new(dir.path().join("lake-uncompacted")) };
    let (loaded_uncompacted, uncompacted_cpu, _) = load_lake(&stores, uncompacted, end, timeout).await?;

    println!("{:<44} {:>10} {:>12} {:>14} {:>10}", "consumer", "seconds", "events/s", "CPU µs/event", "vs bare");
    let line = |name: &str, (elapsed, cpu): (Duration, f64)| {
        println!(
            "{name:<44} {:>10.2} {:>12.0} {:>14.1} {:>10.2}",
            elapsed.as_secs_f64(),
            rate(events, elapsed),
            cpu * 1e6 / events as f64,
            bare.0.as_secs_f64() / elapsed.as_secs_f64()
        );
    };
    line("bare: read + commit", bare);
    line(&format!("read + parse + rows_for + admit ({:.1} rows/event)", rows as f64 / events as f64), rows_only);
    match loaded_uncompacted {
        Some(elapsed) => line("lake::run, compaction off", (elapsed, uncompacted_cpu)),
        None => println!("lake::run, compaction off: did not reach the log's end within {} s", options.timeout),
    }
    match loaded {
        Some(elapsed) => {
            line("lake::run (default LakeConfig)", (elapsed, lake_cpu));
            println!(
                "lake: {} rows, {} discards, {} ({} without compaction); load rate {:.0} events/s (target ≥ 200,000): {}",
                status.loaded_rows.load(std::sync::atomic::Ordering::Relaxed),
                status.discards.load(std::sync::atomic::Ordering::Relaxed),
                file_sizes(&root),
                file_sizes(&dir.path().join("lake-uncompacted")),
                rate(events, elapsed),
                met(rate(events, elapsed) >= 200_000.0)
            );
        }
        None => println!("lake::run: did not reach the log's end within {} s (at {})", options.timeout, status.position.load(std::sync::atomic::Ordering::Relaxed)),
    }
    stores.log.close().await;
    Ok(())
}

/// Runs the lake's loader with `config` until its cursor is `end`: the time it took (None: not
/// within `timeout`), the CPU seconds this process used meanwhile, its status.
async fn load_lake(stores: &Arc<BenchStores>, config: lake::LakeConfig, end: i64, timeout: Duration) -> anyhow::Result<(Option<Duration>, f64, Arc<LoadStatus>)> {
    let pid = std::process::id();
    let status = Arc::new(LoadStatus::default());
    let (stop, stop_rx) = watch::channel(false);
    let (cpu0, started) = (cpu_seconds(pid), Instant::now());
    let task = tokio::spawn(lake::run(stores.clone() as Arc<dyn Stores>, config, status.clone(), stop_rx));
    let loaded = wait_for_cursor(&stores.log, lake::CONSUMER, end, started, timeout).await?;
    let cpu = cpu_seconds(pid).zip(cpu0).map_or(f64::NAN, |(a, b)| a - b);
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    Ok((loaded, cpu, status))
}

fn met(ok: bool) -> &'static str {
    if ok {
        "met"
    } else {
        "NOT met"
    }
}

// ---------------------------------------------------------------------------------------------
// 2. PostgreSQL: the loader against plain COPY

/// A throwaway PostgreSQL 15 cluster with its default settings (fsync on), on a free loopback
/// port; stopped and removed when dropped. PostgreSQL refuses to run as root: as root its
/// commands run as the `postgres` user.
struct PgServer {
    dir: tempfile::TempDir,
    bin: PathBuf,
    port: u16,
}

const PG_USER: &str = "switchyard";

fn running_as_root() -> bool {
    std::fs::metadata("/proc/self").map(|m| m.uid() == 0).unwrap_or(false)
}

impl PgServer {
    fn start() -> anyhow::Result<PgServer> {
        let bin = std::env::var_os("SWITCHYARD_PG_BIN").map_or_else(|| PathBuf::from("/usr/lib/postgresql/15/bin"), PathBuf::from);
        anyhow::ensure!(bin.join("initdb").is_file(), "PostgreSQL 15 is missing ({}): apt-get install postgresql-15, or set SWITCHYARD_PG_BIN", bin.display());
        let dir = tempfile::Builder::new().prefix("switchyard-bench-pg-").tempdir()?;
        if running_as_root() {
            let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status()?.success();
            anyhow::ensure!(ok, "chown of {} to postgres failed", dir.path().display());
        }
        let server = PgServer { dir, bin, port: crate::free_port()? };
        let data = server.dir.path().join("data");
        server.run("initdb", &["-D", path_str(&data)?, "-A", "trust", "-U", PG_USER, "-E", "UTF8", "--locale=C"])?;
        let options = format!("-c port={} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{}'", server.port, server.dir.path().display());
        let log = server.dir.path().join("postgres.log");
        server
            .run("pg_ctl", &["-D", path_str(&data)?, "-l", path_str(&log)?, "-o", &options, "-w", "-t", "60", "start"])
            .with_context(|| format!("PostgreSQL did not start; its log:\n{}", std::fs::read_to_string(&log).unwrap_or_default()))?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("postgres://{PG_USER}@127.0.0.1:{}/postgres", self.port)
    }

    fn run(&self, program: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(program);
        let mut command = if running_as_root() {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let output = command.args(args).output().with_context(|| format!("{} did not run", program.display()))?;
        anyhow::ensure!(output.status.success(), "{} failed: {}", program.display(), String::from_utf8_lossy(&output.stderr));
        Ok(())
    }

    /// The server's settings that decide durability, as text.
    async fn durability(client: &tokio_postgres::Client) -> String {
        let mut shown = Vec::new();
        for setting in ["fsync", "synchronous_commit", "wal_level", "shared_buffers"] {
            let value = client.query_one(&format!("SHOW {setting}"), &[]).await.map(|r| r.get::<_, String>(0)).unwrap_or_else(|_| "?".into());
            shown.push(format!("{setting}={value}"));
        }
        shown.join(", ")
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        if let Ok(data) = path_str(&self.dir.path().join("data")) {
            let _ = self.run("pg_ctl", &["-D", data, "-m", "fast", "-w", "stop"]);
        }
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().with_context(|| format!("{} is not UTF-8", path.display()))
}

async fn postgres_load(options: &Options) -> anyhow::Result<()> {
    let events = options.pg_events.div_ceil(LOADER_WINDOW).max(1) * LOADER_WINDOW;
    println!("\n2. PostgreSQL load vs plain COPY: {events} events, a throwaway PostgreSQL 15 with its default settings");
    let server = tokio::task::block_in_place(PgServer::start)?;
    let (client, connection) = tokio_postgres::connect(&server.url(), tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    println!("  server: {}", PgServer::durability(&client).await);
    let dir = tempfile::Builder::new().prefix("switchyard-warehouse-bench-").tempdir()?;
    let stores = filled_log(dir.path(), events, options.days).await?;
    let end = stores.log.end().await?;

    let config = postgres::PostgresConfig::new(1, PROJECT, server.url(), PG_SCHEMA);
    let status = Arc::new(LoadStatus::default());
    let (stop, stop_rx) = watch::channel(false);
    let started = Instant::now();
    let task = tokio::spawn(postgres::run(stores.clone() as Arc<dyn Stores>, config, status.clone(), stop_rx));
    let loaded = wait_for_cursor(&stores.log, &postgres::consumer_name(1), end, started, Duration::from_secs(options.timeout)).await?;
    let _ = stop.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(30), task).await;
    let Some(loader_time) = loaded else {
        println!(
            "postgres::run: did not reach the log's end within {} s (at {}; last error {:?})",
            options.timeout,
            status.position.load(std::sync::atomic::Ordering::Relaxed),
            status.last_error.lock().ok().and_then(|e| e.clone())
        );
        return Ok(());
    };
    let loaded_rows = status.loaded_rows.load(std::sync::atomic::Ordering::Relaxed);

    // The same rows with nothing but COPY: out to memory, then into a table like each.
    let tables: Vec<String> = client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE' AND table_name <> $2 ORDER BY 1",
            &[&PG_SCHEMA, &postgres::LOADS_TABLE],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut copies: Vec<(String, i64, Vec<Bytes>)> = Vec::new();
    for table in &tables {
        let count: i64 = client.query_one(&format!("SELECT count(*) FROM \"{PG_SCHEMA}\".\"{table}\""), &[]).await?.get(0);
        let stream = client.copy_out(&format!("COPY (SELECT * FROM \"{PG_SCHEMA}\".\"{table}\") TO STDOUT (FORMAT binary)")).await?;
        let chunks: Vec<Bytes> = stream.map(|c| c.map(|b| Bytes::from(b.to_vec()))).collect::<Vec<_>>().await.into_iter().collect::<Result<_, _>>()?;
        client
            .batch_execute(&format!("CREATE TABLE \"{PG_SCHEMA}\".\"copy_{table}\" (LIKE \"{PG_SCHEMA}\".\"{table}\" INCLUDING ALL)"))
            .await?;
        copies.push((table.clone(), count, chunks));
    }
    let mut copy_time = Duration::ZERO;
    let mut per_table = Vec::new();
    for (table, count, chunks) in &copies {
        let started = Instant::now();
        let sink = client.copy_in::<_, Bytes>(&format!("COPY \"{PG_SCHEMA}\".\"copy_{table}\" FROM STDIN (FORMAT binary)")).await?;
        let mut sink = std::pin::pin!(sink);
        for chunk in chunks {
            sink.feed(chunk.clone()).await?;
        }
        let copied = sink.as_mut().finish().await?;
        let elapsed = started.elapsed();
        anyhow::ensure!(copied == *count as u64, "COPY into copy_{table} took {copied} rows, not {count}");
        copy_time += elapsed;
        per_table.push((table.as_str(), *count, chunks.iter().map(Bytes::len).sum::<usize>(), elapsed));
    }
    let table_rows: i64 = per_table.iter().map(|(_, n, _, _)| n).sum();
    let bytes: usize = per_table.iter().map(|(_, _, b, _)| b).sum();
    println!("{:<28} {:>10} {:>10} {:>10}", "table (plain COPY)", "rows", "MB", "ms");
    for (table, rows, bytes, elapsed) in &per_table {
        println!("{table:<28} {rows:>10} {:>10.1} {:>10.0}", *bytes as f64 / 1e6, elapsed.as_secs_f64() * 1000.0);
    }
    println!(
        "loader: {events} events, {loaded_rows} rows written ({table_rows} rows in {} tables) in {:.2} s: {:.0} events/s, {:.0} rows/s",
        tables.len(),
        loader_time.as_secs_f64(),
        rate(events, loader_time),
        loaded_rows as f64 / loader_time.as_secs_f64()
    );
    println!(
        "plain COPY of the same rows ({:.0} MB binary): {:.2} s, {:.0} rows/s",
        bytes as f64 / 1e6,
        copy_time.as_secs_f64(),
        table_rows as f64 / copy_time.as_secs_f64()
    );
    let ratio = copy_time.as_secs_f64() / loader_time.as_secs_f64();
    println!("copy time / loader time: {ratio:.2} (target ≥ 0.5): {}", met(ratio >= 0.5));
    stores.log.close().await;
    drop(client);
    drop(server);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. SQL over a large lake, beside DuckDB

/// The two queries, with the columns that identify a row (the rest is the measure).
const QUERIES: [(&str, &str, &str); 2] = [
    ("a", "model_cost_logs", "SELECT workspace_id, model, sum(cost_usd) FROM model_cost_logs GROUP BY workspace_id, model"),
    ("b", "event_logs", "SELECT event, date_trunc('day', \"timestamp\") AS day, count(*) FROM event_logs GROUP BY 1, 2"),
];

/// Builds the lake of `events` events under `root` as the loader builds it: the rows of each
/// window of [`BUILD_WINDOW`] events admitted by one schema and written with `write_window`,
/// then each directory written compacted (`compact_dir` with the loader's defaults). Making
/// rows and writing files run on two threads, one window apart.
fn build_lake(root: &Path, events: usize, days: u32, timeout: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    let windows = events.div_ceil(BUILD_WINDOW);
    let (sender, receiver) = std::sync::mpsc::sync_channel::<(i64, i64, Vec<Row>)>(1);
    let writer_root = root.to_path_buf();
    let writer = std::thread::spawn(move || -> anyhow::Result<usize> {
        let defaults = lake::LakeConfig::new(&writer_root);
        let mut files = 0;
        for (first, last, rows) in receiver {
            let written = lake::write_window(&writer_root, PROJECT, first, last, &rows)?;
            files += written.len();
            drop(rows);
            let mut dirs: Vec<PathBuf> = written.iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
            dirs.dedup();
            for dir in dirs {
                lake::compact_dir(&dir, defaults.compact_files, defaults.compact_small_bytes)?;
            }
        }
        Ok(files)
    });
    let mut schema = Schema::with_fixed_tables();
    let mut rows_total = 0;
    for window in 0..windows {
        if started.elapsed() > timeout {
            drop(sender);
            let _ = writer.join();
            anyhow::bail!("building the lake took longer than {} s ({window} of {windows} windows)", timeout.as_secs());
        }
        let (first, last) = (window * BUILD_WINDOW, ((window + 1) * BUILD_WINDOW).min(events));
        let loaded_at = Utc::now();
        let mut rows = Vec::with_capacity((last - first) * 5);
        for n in first..last {
            for row in rows_for(&catalog_event(n, events, days), Dialect::Lake) {
                let (mut row, discards) = schema.admit(row);
                anyhow::ensure!(discards.is_empty(), "event {n} made discards: {discards:?}");
                row.stamp(loaded_at);
                rows.push(row);
            }
        }
        rows_total += rows.len();
        if sender.send((first as i64 + 1, last as i64, rows)).is_err() {
            break;
        }
        if (window + 1) % 10 == 0 {
            println!("  {} of {events} events written ({:.0} s)", last, started.elapsed().as_secs_f64());
        }
    }
    drop(sender);
    let files = writer.join().map_err(|_| anyhow::anyhow!("the lake's writer thread panicked"))??;
    let schema_path = root.join(format!("project={PROJECT}")).join("_schema.json");
    std::fs::write(&schema_path, serde_json::to_vec(&schema)?)?;
    println!(
        "  lake of {events} events built in {:.0} s ({:.0} events/s; {rows_total} rows in {files} files written, {} after compaction)",
        started.elapsed().as_secs_f64(),
        rate(events, started.elapsed()),
        file_sizes(root)
    );
    Ok(())
}

/// Whether `root` holds a lake of the project already.
fn has_lake(root: &Path) -> bool {
    root.join(format!("project={PROJECT}")).join("event_logs").is_dir()
}

/// Whether `program` (a path, or a name looked up in `PATH`) is a script rather than a binary.
fn is_script(program: &str) -> bool {
    let path = if program.contains('/') {
        Some(PathBuf::from(program))
    } else {
        std::env::var_os("PATH").and_then(|paths| std::env::split_paths(&paths).map(|dir| dir.join(program)).find(|p| p.is_file()))
    };
    let mut start = [0u8; 2];
    path.and_then(|p| std::fs::File::open(p).ok())
        .is_some_and(|mut f| std::io::Read::read_exact(&mut f, &mut start).is_ok() && &start == b"#!")
}

/// Wall clock of one process run; its standard output.
fn timed(command: &mut Command) -> anyhow::Result<(Duration, String)> {
    let started = Instant::now();
    let output = command.stdin(Stdio::null()).output()?;
    let elapsed = started.elapsed();
    anyhow::ensure!(output.status.success(), "{command:?} failed: {}{}", String::from_utf8_lossy(&output.stderr), String::from_utf8_lossy(&output.stdout));
    Ok((elapsed, String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// An answer as (key columns joined by `|`) → the measure as a float, from Switchyard's JSON.
fn switchyard_answer(text: &str, query: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let answer: Value = serde_json::from_str(text).with_context(|| format!("switchyard's answer is not JSON: {text}"))?;
    let mut out = BTreeMap::new();
    for row in answer["results"].as_array().context("an answer has results")? {
        let cells = row.as_array().context("a row is an array")?;
        let (keys, measure) = cells.split_at(cells.len() - 1);
        let key: Vec<String> = keys.iter().map(|v| key_text(query, &v.as_str().map_or_else(|| v.to_string(), str::to_owned))).collect();
        out.insert(key.join("|"), number(&measure[0]).context("a measure is a number")?);
    }
    Ok(out)
}

/// The same from DuckDB's CSV (header first).
fn duckdb_answer(text: &str, query: &str) -> anyhow::Result<BTreeMap<String, f64>> {
    let mut out = BTreeMap::new();
    for line in text.lines().skip(1).filter(|l| !l.is_empty()) {
        let cells: Vec<&str> = line.split(',').map(|c| c.trim_matches('"')).collect();
        let (keys, measure) = cells.split_at(cells.len() - 1);
        let key: Vec<String> = keys.iter().map(|k| key_text(query, k)).collect();
        out.insert(key.join("|"), measure[0].parse().with_context(|| format!("DuckDB's measure {:?} is not a number", measure[0]))?);
    }
    Ok(out)
}

/// A key cell made comparable across engines: days as `YYYY-MM-DD`, NULL as empty.
fn key_text(query: &str, cell: &str) -> String {
    let cell = if cell == "null" || cell == "NULL" { "" } else { cell };
    if query == "b" && cell.len() >= 10 && cell.as_bytes().get(4) == Some(&b'-') {
        return cell[..10].to_owned();
    }
    cell.to_owned()
}

fn number(value: &Value) -> Option<f64> {
    value.as_f64().or_else(|| value.as_str()?.parse().ok())
}

/// Compares two answers; a description of the first differences, or None.
fn differences(ours: &BTreeMap<String, f64>, theirs: &BTreeMap<String, f64>) -> Option<String> {
    let mut found = Vec::new();
    for key in ours.keys().chain(theirs.keys()).collect::<std::collections::BTreeSet<_>>() {
        match (ours.get(key), theirs.get(key)) {
            (Some(a), Some(b)) if (a - b).abs() <= 1e-9 * a.abs().max(b.abs()).max(1.0) => {}
            (a, b) => found.push(format!("{key}: switchyard {a:?}, duckdb {b:?}")),
        }
    }
    (!found.is_empty()).then(|| format!("{} differences, e.g. {}", found.len(), found.iter().take(3).cloned().collect::<Vec<_>>().join("; ")))
}

fn median(mut values: Vec<Duration>) -> Duration {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or_default()
}

fn sql_over_lake(options: &Options) -> anyhow::Result<()> {
    println!("\n3. SQL over a lake of {} events: `switchyard sql … --format json` against the release server, beside the DuckDB CLI", options.lake_events);
    let temp;
    let root = match &options.lake_dir {
        Some(dir) => dir.clone(),
        None => {
            temp = tempfile::Builder::new().prefix("switchyard-warehouse-bench-lake-").tempdir()?;
            temp.path().to_path_buf()
        }
    };
    if has_lake(&root) {
        println!("  reusing the lake in {} ({})", root.display(), file_sizes(&root));
    } else {
        std::fs::create_dir_all(&root)?;
        build_lake(&root, options.lake_events, options.days, Duration::from_secs(options.timeout))?;
    }
    let root = root.canonicalize()?;
    let server = Server::start_with(&options.server_bin, "sql", &[("SWITCHYARD_WAREHOUSE__LAKE_DIR", path_str(&root)?)])?;
    let url = format!("http://{}", server.addr);
    let duckdb = Command::new(&options.duckdb_bin).arg("--version").output().ok().filter(|o| o.status.success());
    if is_script(&options.duckdb_bin) {
        println!(
            "  note: {} is a script (pip's and pyenv's wrappers are): its interpreter's start is timed too; \
             pass the binary itself (PyPI duckdb-cli: site-packages/duckdb_cli/duckdb)",
            options.duckdb_bin
        );
    }
    match &duckdb {
        Some(version) => println!("  duckdb: {} ({})", options.duckdb_bin, String::from_utf8_lossy(&version.stdout).trim()),
        None => println!("  duckdb: {} cannot be run; only Switchyard is timed", options.duckdb_bin),
    }
    println!(
        "  each query: one untimed run per engine, then the median of {} runs of the whole CLI process (start, query, answer printed)",
        options.runs
    );
    println!("{:<6} {:>14} {:>12} {:>18} {:>8}  answers", "query", "switchyard ms", "duckdb ms", "switchyard/duckdb", "rows");
    let project = root.join(format!("project={PROJECT}"));
    for (name, table, query) in QUERIES {
        let mut ours = Command::new(&options.server_bin);
        ours.args(["sql", query, "--format", "json", "--url", &url, "--secret-key", SECRET_KEY]);
        let (_, answer) = timed(&mut ours)?;
        let mut times = Vec::new();
        for _ in 0..options.runs.max(1) {
            times.push(timed(&mut ours)?.0);
        }
        let ours_ms = median(times).as_secs_f64() * 1000.0;
        let ours_answer = switchyard_answer(&answer, name)?;
        let (theirs_ms, check) = match duckdb {
            Some(_) => {
                let files = project.join(table).join("**").join("*.parquet");
                let script = format!(
                    "SET TimeZone = 'UTC'; CREATE VIEW {table} AS SELECT * FROM read_parquet('{}', union_by_name = true); {query};",
                    files.display()
                );
                let mut theirs = Command::new(&options.duckdb_bin);
                theirs.args(["-csv", "-c", &script]);
                let (_, answer) = timed(&mut theirs)?;
                let mut times = Vec::new();
                for _ in 0..options.runs.max(1) {
                    times.push(timed(&mut theirs)?.0);
                }
                let theirs_answer = duckdb_answer(&answer, name)?;
                let check = match differences(&ours_answer, &theirs_answer) {
                    None => "same".to_owned(),
                    Some(diff) => format!("!!! MISMATCH: {diff}"),
                };
                (Some(median(times).as_secs_f64() * 1000.0), check)
            }
            None => (None, "not compared".to_owned()),
        };
        let ratio = theirs_ms.map(|t| ours_ms / t);
        println!(
            "{name:<6} {ours_ms:>14.0} {:>12} {:>18} {:>8}  {check}",
            theirs_ms.map_or("-".into(), |t| format!("{t:.0}")),
            ratio.map_or("-".into(), |r| format!("{r:.2}")),
            ours_answer.len()
        );
        println!(
            "       {query}\n       target ≤ 2× DuckDB and ≤ 1 s: {}",
            met(ours_ms <= 1000.0 && ratio.is_none_or(|r| r <= 2.0))
        );
    }
    println!("  server peak RSS {:.1} MB", peak_rss_mb(server.pid()).unwrap_or(f64::NAN));
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Intake beside the lake's loader

/// A metric's value with the given label text (`{warehouse="lake"}`), from `/metrics`.
fn metric(metrics: &str, name: &str, labels: &str) -> Option<f64> {
    metrics.lines().find_map(|line| line.strip_prefix(name)?.strip_prefix(labels)?.trim().parse().ok())
}

fn intake_beside_lake(options: &Options) -> anyhow::Result<()> {
    const BATCH: usize = 50;
    println!(
        "\n4. intake beside the lake's loader: batches of {BATCH} to /batch/, {} connections, {} s per run, a fresh server each, \
         lake on and off alternated over {} rounds",
        options.connections, options.seconds, options.rounds
    );
    let scenario = Scenario { name: "batch", path: "/batch/", bodies: vec![Bytes::from(batch_body(BATCH, 1))], events_per_request: BATCH, headers: vec![] };
    println!(
        "{:<6} {:<5} {:>10} {:>8} {:>8} {:>12} {:>14} {:>12}",
        "round", "lake", "events/s", "p50 ms", "p99 ms", "CPU µs/ev", "lake loaded", "lake lag"
    );
    let mut sums = [0.0f64; 2];
    let mut ratios = Vec::new();
    for round in 1..=options.rounds.max(1) {
        let order: [bool; 2] = if round % 2 == 1 { [true, false] } else { [false, true] };
        let mut rates = [0.0f64; 2];
        for lake_on in order {
            let env = [("SWITCHYARD_WAREHOUSE__LAKE", if lake_on { "true" } else { "false" })];
            let server = Server::start_with(&options.server_bin, if lake_on { "lake-on" } else { "lake-off" }, &env)?;
            let cpu0 = cpu_seconds(server.pid());
            let f = drive(server.addr, &scenario, options.connections, options.seconds)?;
            let cpu = cpu_seconds(server.pid()).zip(cpu0).map(|(a, b)| a - b);
            let events = f.requests as f64 * BATCH as f64;
            let events_per_sec = events / f.elapsed.as_secs_f64();
            let metrics = fetch(server.addr, "/metrics").unwrap_or_default();
            let (loaded, lag) = if lake_on {
                let label = "{warehouse=\"lake\"} ";
                (
                    metric(&metrics, "switchyard_warehouse_loaded_events", label).map_or("?".into(), |v| format!("{v:.0}")),
                    metric(&metrics, "switchyard_warehouse_lag_events", label).map_or("?".into(), |v| format!("{v:.0}")),
                )
            } else {
                ("-".into(), "-".into())
            };
            println!(
                "{round:<6} {:<5} {events_per_sec:>10.0} {:>8.2} {:>8.2} {:>12.1} {loaded:>14} {lag:>12}{}",
                if lake_on { "on" } else { "off" },
                f.p50.as_secs_f64() * 1000.0,
                f.p99.as_secs_f64() * 1000.0,
                cpu.map_or(f64::NAN, |c| c * 1e6 / events.max(1.0)),
                if f.errors > 0 { format!("  ({} errors)", f.errors) } else { String::new() }
            );
            rates[usize::from(!lake_on)] = events_per_sec;
        }
        sums[0] += rates[0];
        sums[1] += rates[1];
        ratios.push(rates[0] / rates[1]);
    }
    let shown: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
    let ratio = sums[0] / sums[1];
    println!("lake on / off: {ratio:.2} on the sums (rounds: {}) (target ≥ 0.8): {}", shown.join(", "), met(ratio >= 0.8));
    Ok(())
}

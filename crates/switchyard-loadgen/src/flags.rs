//! Flag benchmarks: in-process evaluation, and `/flags` over HTTP beside Unleash Edge.

use std::hint::black_box;
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::Context as _;
use hyper::body::Bytes;
use serde_json::{json, Map, Value};
use switchyard_flags::{Context, FlagDefinition, FlagSet};

use crate::{cpu_seconds, drive, free_port, peak_rss_mb, wait_ready, Process, Scenario};

const PLANS: [&str; 4] = ["free", "pro", "team", "enterprise"];
const COUNTRIES: [&str; 5] = ["FR", "US", "DE", "JP", "BR"];

/// 50 flags as PostHog JSON. `realistic`: several conditions over 5–10 properties, a quarter
/// multivariate; otherwise one condition with one filter and a rollout each (the shape of the
/// Unleash set below).
pub fn posthog_flags(realistic: bool) -> Vec<Value> {
    (0..50)
        .map(|i| {
            let rollout = 20 + (i * 7) % 80;
            let groups = if realistic {
                json!([
                    {"properties": [
                        {"key": "plan", "type": "person", "operator": "exact", "value": ["pro", "enterprise"]},
                        {"key": "country", "type": "person", "operator": "exact", "value": [COUNTRIES[i % 5], COUNTRIES[(i + 1) % 5]]},
                        {"key": "email", "type": "person", "operator": "icontains", "value": "@acme"}
                    ], "rollout_percentage": rollout},
                    {"properties": [
                        {"key": "app_version", "type": "person", "operator": "semver_gte", "value": "1.4.0"},
                        {"key": "seats", "type": "person", "operator": "gt", "value": 10}
                    ], "rollout_percentage": 100},
                    {"properties": [
                        {"key": "signup_date", "type": "person", "operator": "is_date_after", "value": "2025-01-01"},
                        {"key": "model", "type": "person", "operator": "regex", "value": "^gpt-4"}
                    ], "rollout_percentage": 50}
                ])
            } else {
                json!([{"properties": [{"key": "plan", "type": "person", "operator": "exact", "value": ["pro", "enterprise"]}], "rollout_percentage": rollout}])
            };
            let mut filters = json!({"groups": groups, "payloads": {}});
            if i % 4 == 0 {
                filters["multivariate"] = json!({"variants": [
                    {"key": "control", "rollout_percentage": 34}, {"key": "a", "rollout_percentage": 33}, {"key": "b", "rollout_percentage": 33}
                ]});
            }
            json!({"id": i + 1, "key": format!("flag_{i}"), "name": format!("Flag {i}"), "active": true, "filters": filters})
        })
        .collect()
}

/// The same 50 flags as an Unleash client-features bootstrap: one flexible rollout with one
/// constraint each, a quarter with variants.
fn unleash_bootstrap() -> Value {
    let features: Vec<Value> = (0..50)
        .map(|i| {
            let rollout = 20 + (i * 7) % 80;
            let mut feature = json!({
                "name": format!("flag_{i}"), "type": "release", "enabled": true, "project": "default",
                "strategies": [{"name": "flexibleRollout",
                    "parameters": {"rollout": rollout.to_string(), "stickiness": "default", "groupId": format!("flag_{i}")},
                    "constraints": [{"contextName": "plan", "operator": "IN", "values": ["pro", "enterprise"], "inverted": false, "caseInsensitive": false}]}]
            });
            if i % 4 == 0 {
                feature["variants"] = json!([
                    {"name": "control", "weight": 340, "weightType": "fix", "stickiness": "default"},
                    {"name": "a", "weight": 330, "weightType": "variable", "stickiness": "default"},
                    {"name": "b", "weight": 330, "weightType": "variable", "stickiness": "default"}
                ]);
            }
            feature
        })
        .collect();
    json!({"version": 2, "features": features})
}

fn person(i: usize) -> Map<String, Value> {
    let v = json!({
        "email": format!("user{i}@{}", if i.is_multiple_of(3) { "acme.io" } else { "example.com" }),
        "plan": PLANS[i % 4],
        "country": COUNTRIES[i % 5],
        "app_version": format!("1.{}.0", i % 7),
        "signup_date": format!("2025-{:02}-15", 1 + i % 12),
        "is_beta": i.is_multiple_of(2),
        "seats": (i * 3) % 40,
        "model": if i.is_multiple_of(2) { "gpt-4o-mini" } else { "claude-3-5-sonnet" },
    });
    v.as_object().cloned().expect("object")
}

fn compile(flags: Vec<Value>) -> FlagSet {
    let definitions: Vec<FlagDefinition> = flags.into_iter().map(|f| serde_json::from_value(f).expect("valid flag")).collect();
    FlagSet::new(definitions, &Map::new(), &Map::new()).expect("flags compile")
}

/// ns per flag, evaluating every flag of `set` for `iterations` different persons.
fn time_set(set: &FlagSet, iterations: usize) -> f64 {
    let persons: Vec<(String, Map<String, Value>)> = (0..256).map(|i| (format!("user_{i}"), person(i))).collect();
    let empty = Map::new();
    let now = chrono::Utc::now();
    let started = Instant::now();
    for n in 0..iterations {
        let (id, props) = &persons[n % persons.len()];
        let ctx = Context {
            distinct_id: id,
            device_id: None,
            continuity_key: None,
            person_properties: props,
            groups: &empty,
            group_properties: &empty,
            now,
        };
        black_box(set.evaluate_all(&ctx));
    }
    started.elapsed().as_nanos() as f64 / (iterations * set.len()) as f64
}

pub fn eval_bench(iterations: usize) -> anyhow::Result<()> {
    let realistic = compile(posthog_flags(true));
    let rollout = compile(vec![json!({"id": 1, "key": "plain_rollout", "active": true,
                                       "filters": {"groups": [{"properties": [], "rollout_percentage": 50}]}})]);
    // Warm up, then measure.
    time_set(&realistic, iterations / 10 + 1);
    let per_flag = time_set(&realistic, iterations);
    time_set(&rollout, iterations * 10 / 10 + 1);
    let plain = time_set(&rollout, iterations * 50);
    println!("in-process flag evaluation, one thread:");
    println!("  50 realistic flags (3 conditions, 8 properties, a quarter multivariate): {per_flag:.0} ns per flag");
    println!("  plain rollout flag: {plain:.0} ns per flag");
    Ok(())
}

pub fn http_bench(server_bin: &str, unleash_bin: Option<&str>, seconds: u64, connections: usize) -> anyhow::Result<()> {
    let dir = std::env::temp_dir().join(format!("switchyard-flags-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let port = free_port()?;
    let server = Process(
        Command::new(server_bin)
            .arg("serve")
            .env("SWITCHYARD_DATA_DIR", dir.join("data"))
            .env("SWITCHYARD_LISTEN", format!("127.0.0.1:{port}"))
            .env("SWITCHYARD_PROJECT_TOKEN", "phc_bench")
            .env("SWITCHYARD_SECRET_KEY", "phs_bench_0123456789abcdefghijklmnop")
            .env("SWITCHYARD_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("cannot start {server_bin}"))?,
    );
    let server_addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_ready(server_addr, "/_readiness")?;
    let import = json!({"flags": posthog_flags(false), "group_type_mapping": {}, "cohorts": {}}).to_string();
    let status = Command::new("curl")
        .args(["-sf", "-o", "/dev/null", "-X", "POST", "-H", "Authorization: Bearer phs_bench_0123456789abcdefghijklmnop", "--data-binary", "@-"])
        .arg(format!("http://127.0.0.1:{port}/api/projects/@current/feature_flags/import/"))
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().expect("stdin").write_all(import.as_bytes())?;
            c.wait()
        })?;
    anyhow::ensure!(status.success(), "importing the benchmark flags failed");

    let props = person(1);
    let mut runs: Vec<(String, SocketAddr, u32, Scenario)> = vec![(
        "switchyard".into(),
        server_addr,
        server.0.id(),
        Scenario {
            name: "flags",
            path: "/flags/?v=2",
            bodies: vec![Bytes::from(json!({"token": "phc_bench", "distinct_id": "user_1", "person_properties": props}).to_string())],
            events_per_request: 50,
            headers: vec![],
        },
    )];
    let mut edge = None;
    if let Some(bin) = unleash_bin {
        let bootstrap = dir.join("unleash-bootstrap.json");
        std::fs::write(&bootstrap, unleash_bootstrap().to_string())?;
        let edge_port = free_port()?;
        let token = "*:development.switchyardbench";
        let child = Process(
            Command::new(bin)
                .args(["--port", &edge_port.to_string(), "--interface", "127.0.0.1", "offline", "--bootstrap-file"])
                .arg(&bootstrap)
                .args(["--client-tokens", token, "--frontend-tokens", token])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .with_context(|| format!("cannot start {bin}"))?,
        );
        let edge_addr: SocketAddr = ([127, 0, 0, 1], edge_port).into();
        wait_ready(edge_addr, "/internal-backstage/health")?;
        let context = json!({"userId": "user_1", "properties": props.iter().map(|(k, v)| (k.clone(), Value::String(match v { Value::String(s) => s.clone(), o => o.to_string() }))).collect::<Map<_, _>>()});
        runs.push((
            "unleash-edge".into(),
            edge_addr,
            child.0.id(),
            Scenario {
                name: "flags",
                path: "/api/frontend/all",
                bodies: vec![Bytes::from(json!({"context": context}).to_string())],
                events_per_request: 50,
                headers: vec![("authorization", token.to_owned())],
            },
        ));
        edge = Some(child);
    }

    println!("flags over HTTP: 50 flags, {connections} connections, {seconds} s per run, one generator thread");
    println!("{:<13} {:>10} {:>8} {:>8} {:>7} {:>12} {:>9}", "target", "req/s", "p50 ms", "p99 ms", "errors", "CPU µs/req", "RSS MB");
    for (name, addr, pid, scenario) in &runs {
        let before = cpu_seconds(*pid);
        let f = drive(*addr, scenario, connections, seconds)?;
        let cpu = cpu_seconds(*pid).zip(before).map(|(a, b)| (a - b) * 1e6 / f.requests.max(1) as f64).unwrap_or(f64::NAN);
        println!(
            "{:<13} {:>10.0} {:>8.2} {:>8.2} {:>7} {:>12.1} {:>9.1}",
            name,
            f.requests as f64 / f.elapsed.as_secs_f64(),
            f.p50.as_secs_f64() * 1000.0,
            f.p99.as_secs_f64() * 1000.0,
            f.errors,
            cpu,
            peak_rss_mb(*pid).unwrap_or(f64::NAN)
        );
    }
    drop(edge);
    drop(server);
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

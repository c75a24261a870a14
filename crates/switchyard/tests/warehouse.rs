//! The PostgreSQL warehouse from the built binary: `kill -9` twice while events are being
//! loaded into a real PostgreSQL 15 (started by the test); after the restarts every
//! acknowledged event is in PostgreSQL's `event_logs` exactly once, and in the lake too, and
//! both hold the same events. Traffic goes only to loopback and every loop is bounded.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
#[path = "../../switchyard-pipeline/tests/support/pg.rs"]
mod pg;

use common::{load, start_with, Server, SECRET};
use pg::PgCluster;

/// Events per load: small, so a kill lands between, and inside, many windows.
const WINDOW: usize = 500;
const SCHEMA: &str = "switchyard";

/// The config file: small windows, a 1 s wait, the cluster as `[[warehouse.postgres]]`.
fn config_file(dir: &Path, cluster: &PgCluster) -> PathBuf {
    let path = dir.join("switchyard.toml");
    let text = format!(
        "[warehouse]\nmax_events = {WINDOW}\nmax_wait_secs = 1\n\n[[warehouse.postgres]]\nname = \"analytics\"\ndsn = \"{}\"\nschema = \"{SCHEMA}\"\n",
        cluster.url()
    );
    std::fs::write(&path, text).unwrap();
    path
}

fn start(data: &Path, config: &Path) -> Server {
    start_with(data, |c| {
        c.env("SWITCHYARD_CONFIG", config);
    })
}

/// A runtime for the PostgreSQL client (the test itself is blocking, like the load).
fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap()
}

/// `event_logs` rows in PostgreSQL (0 before the loader created the table).
fn pg_rows(runtime: &tokio::runtime::Runtime, client: &tokio_postgres::Client) -> i64 {
    runtime.block_on(async {
        match client.query_one(&format!("SELECT count(*) FROM {SCHEMA}.event_logs"), &[]).await {
            Ok(row) => row.get(0),
            Err(_) => 0,
        }
    })
}

/// Loads from 2 clients (a few thousand events a second) until PostgreSQL got at least one
/// more window and a second and a half passed, then `kill -9`s the server while its loader is
/// still behind; gives the ids of the acknowledged events and the rows PostgreSQL had then.
fn load_and_kill(server: &mut Server, runtime: &tokio::runtime::Runtime, client: &tokio_postgres::Client) -> (Vec<String>, i64) {
    let before = pg_rows(runtime, client);
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&server.url, 2, stop.clone());
    let started = Instant::now();
    let deadline = started + Duration::from_secs(25);
    while started.elapsed() < Duration::from_millis(1500) || pg_rows(runtime, client) < before + WINDOW as i64 {
        assert!(Instant::now() < deadline, "PostgreSQL got no window while the load ran ({} rows)", pg_rows(runtime, client));
        std::thread::sleep(Duration::from_millis(100));
    }
    let loaded = pg_rows(runtime, client);
    server.child.kill().unwrap(); // SIGKILL, mid-load
    server.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    (workers.into_iter().flat_map(|w| w.join().unwrap()).collect(), loaded)
}

fn query(url: &str, sql: &str) -> Value {
    let response = reqwest::blocking::Client::new()
        .post(format!("{url}/api/projects/@current/query"))
        .bearer_auth(SECRET)
        .json(&json!({"query": sql}))
        .send()
        .unwrap();
    assert_eq!(response.status(), 200, "{sql}");
    response.json().unwrap()
}

fn statuses(url: &str) -> Vec<Value> {
    let body: Value = reqwest::blocking::Client::new()
        .get(format!("{url}/api/projects/@current/warehouses/status/"))
        .bearer_auth(SECRET)
        .send()
        .unwrap()
        .json()
        .unwrap();
    body["results"].as_array().unwrap().clone()
}

#[test]
fn kill_9_while_loading_postgres_loads_every_acknowledged_event_once() {
    let cluster = PgCluster::start_new();
    let runtime = runtime();
    let client = runtime.block_on(cluster.client());
    let dir = tempfile::tempdir().unwrap();
    let config = config_file(dir.path(), &cluster);
    let data = dir.path().join("data");

    let mut acked: Vec<String> = Vec::new();
    let mut server = start(&data, &config);
    for _ in 0..2 {
        let (more, loaded) = load_and_kill(&mut server, &runtime, &client);
        acked.extend(more);
        assert!(loaded < acked.len() as i64, "the kill came when PostgreSQL had caught up ({loaded} of {} events): nothing was mid-load", acked.len());
        server = start(&data, &config);
    }
    // More after the last restart, then quiet.
    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&server.url, 1, stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    acked.extend(workers.into_iter().flat_map(|w| w.join().unwrap()));
    let acked: HashSet<String> = acked.into_iter().collect();
    assert!(acked.len() >= 1000, "too few acknowledgements for the test to mean much: {}", acked.len());
    let acked_ids: Vec<String> = acked.iter().cloned().collect();

    // Every acknowledged event reaches PostgreSQL.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let present: i64 = runtime.block_on(async {
            client
                .query_one(&format!("SELECT count(*) FROM {SCHEMA}.event_logs WHERE id = ANY($1)"), &[&acked_ids])
                .await
                .map_or(0, |row| row.get(0))
        });
        if present == acked_ids.len() as i64 {
            break;
        }
        assert!(Instant::now() < deadline, "{} of {} acknowledged events never reached PostgreSQL", acked_ids.len() as i64 - present, acked_ids.len());
        std::thread::sleep(Duration::from_millis(250));
    }
    // And the loaders have caught up with the log (events stored but not acknowledged, as a
    // kill cut their answer, count too).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let all = statuses(&server.url);
        if all.len() == 2 && all.iter().all(|w| w["lag"]["events"] == 0) {
            break;
        }
        assert!(Instant::now() < deadline, "the loaders did not catch up: {all:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let listed: Value = reqwest::blocking::Client::new()
        .get(format!("{}/api/projects/@current/warehouses/", server.url))
        .bearer_auth(SECRET)
        .send()
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(listed["results"].as_array().unwrap().len(), 1, "one configured warehouse across restarts: {listed}");

    // Exactly once in PostgreSQL: no duplicates in its tables, the same events as the lake.
    let (rows, distinct, tracks): (i64, i64, i64) = runtime.block_on(async {
        let row = client
            .query_one(&format!("SELECT count(*), count(DISTINCT id), (SELECT count(*) FROM {SCHEMA}.tracks) FROM {SCHEMA}.event_logs"), &[])
            .await
            .unwrap();
        (row.get(0), row.get(1), row.get(2))
    });
    assert_eq!(rows, distinct, "an event is twice in PostgreSQL's event_logs");
    assert_eq!(tracks, rows, "every event is a track call, once in tracks too");
    assert!(rows >= acked.len() as i64);
    let pg_ids: HashSet<String> = runtime.block_on(async {
        client.query(&format!("SELECT id FROM {SCHEMA}.event_logs"), &[]).await.unwrap().iter().map(|r| r.get(0)).collect()
    });

    let counted = query(&server.url, "SELECT count(*), count(DISTINCT id) FROM event_logs");
    assert_eq!(counted["results"][0], json!([rows, rows]), "the lake holds each event once, and as many as PostgreSQL");
    let lake_ids: HashSet<String> = query(&server.url, "SELECT id FROM event_logs")["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r[0].as_str().unwrap().to_owned())
        .collect();
    let missing = acked.iter().filter(|id| !lake_ids.contains(*id)).count();
    assert_eq!(missing, 0, "acknowledged events missing from the lake");
    assert!(lake_ids == pg_ids, "the lake and PostgreSQL hold different events");
}

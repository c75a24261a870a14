//! Starting the built binary for tests.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

pub const TOKEN: &str = "phc_durability";
pub const WRITE_KEY: &str = "wk_durability";
pub const SECRET: &str = "phs_durability_0123456789abcdefghij";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub struct Server {
    pub child: Child,
    pub url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `switchyard serve` on `data_dir` and a free loopback port; waits until ready.
pub fn start(data_dir: &std::path::Path) -> Server {
    start_with(data_dir, |_| {})
}

/// [`start`], with the command adjusted first (more environment, where its output goes).
pub fn start_with(data_dir: &std::path::Path, adjust: impl FnOnce(&mut Command)) -> Server {
    let port = free_port();
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchyard"));
    command
        .arg("serve")
        .env("SWITCHYARD_DATA_DIR", data_dir)
        .env("SWITCHYARD_LISTEN", format!("127.0.0.1:{port}"))
        .env("SWITCHYARD_PROJECT_TOKEN", TOKEN)
        .env("SWITCHYARD_WRITE_KEY", WRITE_KEY)
        .env("SWITCHYARD_SECRET_KEY", SECRET)
        .env("SWITCHYARD_LOG", "warn")
        .stdout(Stdio::null());
    adjust(&mut command);
    let child = command.spawn().unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let client = reqwest::blocking::Client::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(r) = client.get(format!("{url}/_readiness")).send() {
            if r.status() == 200 {
                break;
            }
        }
        assert!(Instant::now() < deadline, "server did not become ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    Server { child, url }
}

/// Runs the binary with `args`; returns (success, stdout, stderr).
pub fn cli(args: &[&str]) -> (bool, String, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_switchyard")).args(args).output().unwrap();
    (output.status.success(), String::from_utf8(output.stdout).unwrap(), String::from_utf8(output.stderr).unwrap())
}

/// Sends batches from `workers` concurrent clients until `stop` (or a bound) and returns the
/// ids of every event whose request got a 2xx.
pub fn load(url: &str, workers: usize, stop: Arc<AtomicBool>) -> Vec<std::thread::JoinHandle<Vec<String>>> {
    (0..workers)
        .map(|w| {
            let url = url.to_owned();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
                let mut acked = Vec::new();
                let started = Instant::now();
                for round in 0..100_000 {
                    if stop.load(Ordering::SeqCst) || started.elapsed() > Duration::from_secs(30) {
                        break;
                    }
                    let ids: Vec<String> = (0..10).map(|_| uuid::Uuid::new_v4().to_string()).collect();
                    let result = if round % 2 == 0 {
                        let batch: Vec<Value> = ids
                            .iter()
                            .map(|id| json!({"event": "tool_used", "uuid": id, "distinct_id": format!("user_{w}"),
                                             "properties": {"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "tool_name": "web_search", "success": true}}))
                            .collect();
                        client.post(format!("{url}/batch/")).json(&json!({"api_key": TOKEN, "batch": batch})).send()
                    } else {
                        let batch: Vec<Value> = ids
                            .iter()
                            .map(|id| json!({"type": "track", "event": "agent_execution", "messageId": id, "userId": format!("user_{w}"),
                                             "properties": {"agent_id": "ag_1", "model": "gpt-4o-mini", "status": "success"}}))
                            .collect();
                        client.post(format!("{url}/v1/batch")).basic_auth(WRITE_KEY, Some("")).json(&json!({"batch": batch})).send()
                    };
                    match result {
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


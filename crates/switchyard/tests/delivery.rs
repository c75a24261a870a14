//! Delivery from the built binary under load: `kill -9` while a destination is being fed;
//! after a restart every acknowledged event reaches it (by id), and duplicates come only from
//! what was in flight (at most one window of the log per lane set).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

mod common;
use common::{load, start_with, SECRET};

/// How many times each event id reached the receiver.
type Seen = Arc<Mutex<HashMap<String, u32>>>;

/// A webhook receiver on its own runtime thread; answers 200 to every batch after recording it.
fn receiver() -> (String, Seen) {
    let seen: Seen = Arc::default();
    let recorded = seen.clone();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let app = axum::Router::new().fallback(move |body: axum::body::Bytes| {
                let recorded = recorded.clone();
                async move {
                    let events: Vec<Value> = serde_json::from_slice(&body).unwrap_or_default();
                    let mut seen = recorded.lock().unwrap();
                    for e in events {
                        *seen.entry(e["id"].as_str().unwrap_or_default().to_owned()).or_default() += 1;
                    }
                    "ok"
                }
            });
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            axum::serve(listener, app).await.unwrap();
        });
    });
    (url, seen)
}

const WINDOW: usize = 500;

#[test]
fn kill_9_during_delivery_loses_nothing_acknowledged() {
    let (hook, seen) = receiver();
    let dir = tempfile::tempdir().unwrap();
    let routing = |c: &mut std::process::Command| {
        c.env("SWITCHYARD_ROUTING__ALLOW_PRIVATE_ADDRESSES", "true").env("SWITCHYARD_ROUTING__WINDOW_EVENTS", WINDOW.to_string());
    };
    let mut server = start_with(dir.path(), routing);
    let client = reqwest::blocking::Client::new();
    let created = client
        .post(format!("{}/api/projects/@current/destinations/", server.url))
        .bearer_auth(SECRET)
        .json(&json!({"name": "sink", "type": "webhook", "config": {"url": hook, "max_batch_events": 100}}))
        .send()
        .unwrap();
    assert_eq!(created.status(), 201);

    let stop = Arc::new(AtomicBool::new(false));
    let workers = load(&server.url, 8, stop.clone());
    // At least 1.5 s of load, and delivery under way, before the kill.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) || (seen.lock().unwrap().is_empty() && started.elapsed() < Duration::from_secs(30)) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let delivered_before = seen.lock().unwrap().len();
    server.child.kill().unwrap(); // SIGKILL, mid-delivery
    server.child.wait().unwrap();
    stop.store(true, Ordering::SeqCst);
    let acked: Vec<String> = workers.into_iter().flat_map(|w| w.join().unwrap()).collect();
    assert!(acked.len() > 500, "too few acknowledgements: {}", acked.len());
    assert!(delivered_before > 0, "delivery was under way when the server was killed");

    let _server = start_with(dir.path(), routing);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let missing = acked.iter().filter(|id| !seen.lock().unwrap().contains_key(*id)).count();
        if missing == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "{missing} of {} acknowledged events never reached the destination", acked.len());
        std::thread::sleep(Duration::from_millis(200));
    }
    let seen = seen.lock().unwrap();
    let duplicates: u32 = seen.values().map(|n| n - 1).sum();
    // Only what the killed server had read but not committed past can come again: one window.
    assert!(duplicates as usize <= WINDOW, "{duplicates} duplicates: more than one window was sent again");
}

//! Routing: destinations managed by API, events delivered from the log to real HTTP receivers
//! that fail, throttle, hang and refuse; retries, splitting, dead letters and replay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::{json, Value};

use crate::{wait_until, TestServer, SECRET, TOKEN};

/// What the receiver does with the next requests.
#[derive(Clone, Debug)]
pub enum Behaviour {
    Accept,
    /// Answers this status to the next `n` requests, then accepts.
    Fail { status: u16, times: usize },
    /// 429 with `Retry-After: secs` once, then accepts.
    Throttle { secs: u64 },
    /// Never answers within the client's timeout.
    Hang,
    /// 400 to any batch holding an event whose `properties.poison` is true.
    RefusePoison,
}

#[derive(Clone, Debug)]
pub struct Received {
    pub at: Instant,
    pub headers: HeaderMap,
    pub body: Value,
    pub status: u16,
}

/// A real HTTP server on a random loopback port that records every request.
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub behaviour: Arc<Mutex<Behaviour>>,
    pub requests: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    pub async fn start(behaviour: Behaviour) -> Receiver {
        let receiver = Receiver {
            url: String::new(),
            behaviour: Arc::new(Mutex::new(behaviour)),
            requests: Arc::new(Mutex::new(Vec::new())),
        };
        let state = receiver.clone();
        let app = axum::Router::new().fallback(move |headers: HeaderMap, body: axum::body::Bytes| {
            let state = state.clone();
            async move { state.answer(headers, body).await }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver { url, ..receiver }
    }

    async fn answer(&self, headers: HeaderMap, body: axum::body::Bytes) -> axum::response::Response {
        let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
        let behaviour = self.behaviour.lock().unwrap().clone();
        let (status, retry_after) = match behaviour {
            Behaviour::Accept => (200, None),
            Behaviour::Fail { status, times } => {
                let mut b = self.behaviour.lock().unwrap();
                *b = if times <= 1 { Behaviour::Accept } else { Behaviour::Fail { status, times: times - 1 } };
                (status, None)
            }
            Behaviour::Throttle { secs } => {
                *self.behaviour.lock().unwrap() = Behaviour::Accept;
                (429, Some(secs))
            }
            Behaviour::Hang => {
                self.record(headers, body, 0);
                tokio::time::sleep(Duration::from_secs(3600)).await;
                return StatusCode::OK.into_response();
            }
            Behaviour::RefusePoison => {
                let poisoned = events_of(&body).iter().any(|e| e["properties"]["poison"] == true);
                (if poisoned { 400 } else { 200 }, None)
            }
        };
        self.record(headers, body, status);
        let mut response = (StatusCode::from_u16(status).unwrap(), "{\"status\":\"see code\"}").into_response();
        if let Some(secs) = retry_after {
            response.headers_mut().insert("retry-after", secs.to_string().parse().unwrap());
        }
        response
    }

    fn record(&self, headers: HeaderMap, body: Value, status: u16) {
        self.requests.lock().unwrap().push(Received { at: Instant::now(), headers, body, status });
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.behaviour.lock().unwrap() = behaviour;
    }

    pub fn received(&self) -> Vec<Received> {
        self.requests.lock().unwrap().clone()
    }

    /// Events of accepted requests, in arrival order.
    pub fn delivered(&self) -> Vec<Value> {
        self.received().iter().filter(|r| r.status == 200).flat_map(|r| events_of(&r.body)).collect()
    }
}

/// The events of a webhook body (an array) or a batch body (`{"batch": [...]}`).
pub fn events_of(body: &Value) -> Vec<Value> {
    match body {
        Value::Array(events) => events.clone(),
        other => other["batch"].as_array().cloned().unwrap_or_default(),
    }
}

/// Routing settings for loopback receivers and quick retries.
pub fn quick(c: &mut switchyard_server::Config) {
    c.routing.allow_private_addresses = true;
    c.routing.retry_initial_backoff_ms = 50;
    c.routing.retry_max_backoff_secs = 1;
    c.routing.request_timeout_secs = 2;
}

pub async fn create(server: &TestServer, body: Value) -> (u16, Value) {
    let response = server.client.post(format!("{}/api/projects/@current/destinations/", server.url)).bearer_auth(SECRET).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn get(server: &TestServer, path: &str) -> Value {
    let response = server.client.get(format!("{}/api/projects/@current/destinations/{path}", server.url)).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(response.status(), 200, "{path}");
    response.json().await.unwrap()
}

/// Sends `events` (name, distinct id, properties) through PostHog's `/batch/`.
pub async fn capture(server: &TestServer, events: &[(String, String, Value)]) {
    let batch: Vec<Value> = events
        .iter()
        .map(|(event, distinct_id, properties)| json!({"event": event, "distinct_id": distinct_id, "properties": properties}))
        .collect();
    let response = server.client.post(format!("{}/batch/", server.url)).json(&json!({"api_key": TOKEN, "batch": batch})).send().await.unwrap();
    assert_eq!(response.status(), 200);
}

/// `n` events over `users` distinct ids, each numbered in its user's order.
fn numbered(n: usize, users: usize) -> Vec<(String, String, Value)> {
    (0..n)
        .map(|i| {
            let user = format!("user_{}", i % users);
            ("tool_used".to_string(), user, json!({"n": i, "tool_name": "search", "workspace_id": "ws_1", "trace_id": format!("tr_{i}")}))
        })
        .collect()
}

fn webhook(url: &str) -> Value {
    json!({"name": "hook", "type": "webhook", "config": {"url": format!("{url}/hook")}})
}

/// Events of each distinct id arrived in the order they were sent (by their `n`).
fn assert_ordered_per_user(delivered: &[Value]) {
    let mut last: HashMap<String, i64> = HashMap::new();
    for e in delivered {
        let user = e["distinct_id"].as_str().unwrap().to_owned();
        let n = e["properties"]["n"].as_i64().unwrap();
        if let Some(prev) = last.get(&user) {
            assert!(n > *prev, "{user}: {n} arrived after {prev}");
        }
        last.insert(user, n);
    }
}

#[tokio::test]
async fn destinations_api_validates_masks_and_deletes() {
    let server = TestServer::start_with(|c| c.routing.allow_private_addresses = false).await;
    let (status, body) = create(&server, json!({"name": "x", "type": "webhook", "config": {"url": "ftp://example.com"}})).await;
    assert_eq!((status, body["attr"].as_str()), (400, Some("config.url")), "{body}");
    let (status, body) = create(&server, json!({"name": "x", "type": "webhook", "config": {"url": "http://127.0.0.1:9/hook"}})).await;
    assert_eq!((status, body["attr"].as_str()), (400, Some("config.url")), "loopback refused by default: {body}");
    assert!(body["detail"].as_str().unwrap().contains("loopback"), "{body}");
    let (status, body) = create(&server, json!({"name": "x", "type": "segment", "config": {"url": "https://api.segment.io"}})).await;
    assert_eq!((status, body["attr"].as_str()), (400, Some("config.write_key")), "{body}");
    let (status, body) = create(&server, json!({"name": "x", "type": "webhook", "config": {"url": "https://hooks.example.com/x"}, "transformations": [{"type": "teleport"}]})).await;
    assert_eq!((status, body["attr"].as_str()), (400, Some("transformations[0].type")), "{body}");

    let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
    let (status, created) = create(
        &server,
        json!({"name": "warehouse hook", "type": "webhook", "enabled": false, "config": {"url": "https://hooks.example.com/x", "secret": secret, "headers": {"Authorization": "Bearer abc"}}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["config"]["secret"], "********");
    let id = created["id"].as_i64().unwrap();
    let fetched = get(&server, &format!("{id}/")).await;
    assert!(!fetched.to_string().contains("Bearer abc") && !fetched.to_string().contains(secret), "{fetched}");
    let listed = get(&server, "").await;
    assert_eq!(listed["results"].as_array().unwrap().len(), 1);

    let patched: Value = server
        .client
        .patch(format!("{}/api/projects/@current/destinations/{id}/", server.url))
        .bearer_auth(SECRET)
        .json(&json!({"name": "renamed", "config": fetched["config"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["name"], "renamed");
    let stored = server.state.control.get_destination(1, id).unwrap().unwrap();
    assert!(stored.spec.contains(secret), "the masked secret sent back keeps the stored one");

    let status = get(&server, &format!("{id}/status")).await;
    assert_eq!(status["enabled"], false);
    assert_eq!(status["running"], false);

    let deleted = server.client.delete(format!("{}/api/projects/@current/destinations/{id}/", server.url)).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let gone = server.client.get(format!("{}/api/projects/@current/destinations/{id}/", server.url)).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(gone.status(), 404);
    let anonymous = server.client.get(format!("{}/api/projects/@current/destinations/", server.url)).send().await.unwrap();
    assert_eq!(anonymous.status(), 401);
    assert!(server.state.log.cursor(&format!("destination:{id}")).await.unwrap().is_none(), "a deleted destination's cursor is gone");
}

#[tokio::test]
async fn webhook_delivery_survives_failures_in_order_per_user() {
    let receiver = Receiver::start(Behaviour::Fail { status: 503, times: 3 }).await;
    let server = TestServer::start_with(|c| {
        quick(c);
        c.routing.window_events = 40;
    })
    .await;
    let (status, created) = create(
        &server,
        json!({"name": "hook", "type": "webhook", "config": {"url": format!("{}/hook", receiver.url), "secret": "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD", "max_batch_events": 10}}),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    let events = numbered(200, 7);
    capture(&server, &events).await;
    wait_until("every event is delivered", async || receiver.delivered().len() >= 200).await;
    let delivered = receiver.delivered();
    let ids: std::collections::HashSet<&str> = delivered.iter().map(|e| e["id"].as_str().unwrap()).collect();
    assert_eq!(ids.len(), 200, "each event once (no retried batch was accepted twice)");
    assert_ordered_per_user(&delivered);
    assert_eq!(delivered[0]["event"], "tool_used");
    assert_eq!(delivered[0]["properties"]["tool_name"], "search", "the events API's shape");

    // Signed per Standard Webhooks; a retried batch keeps its webhook-id.
    let received = receiver.received();
    let failed: Vec<&Received> = received.iter().filter(|r| r.status == 503).collect();
    assert_eq!(failed.len(), 3);
    for r in &received {
        assert!(r.headers["webhook-signature"].to_str().unwrap().starts_with("v1,"));
        assert!(r.headers["webhook-id"].to_str().unwrap().starts_with("msg_"));
        assert!(r.headers["webhook-timestamp"].to_str().unwrap().parse::<i64>().is_ok());
    }
    let first_failed_id = failed[0].headers["webhook-id"].clone();
    let first_failed_events = failed[0].body.clone();
    let retried = received.iter().find(|r| r.status == 200 && r.body == first_failed_events).expect("the failed batch was sent again");
    assert_eq!(retried.headers["webhook-id"], first_failed_id);

    wait_until("the status counts every event delivered", async || get(&server, &format!("{id}/status")).await["lag"]["events"] == 0).await;
    let status = get(&server, &format!("{id}/status")).await;
    assert_eq!(status["delivered"], 200, "{status}");
    assert_eq!(status["dead_letters"], 0, "{status}");
    assert_eq!(status["lag"]["events"], 0, "{status}");
    assert!(status["last_success_at"].is_string(), "{status}");
    let metrics = server.metrics().await;
    assert!(metrics.contains(&format!("switchyard_destination_delivered_total{{destination=\"{id}\"}} 200")), "{metrics}");
}

#[tokio::test]
async fn a_refused_event_is_found_dead_lettered_and_replayed() {
    let receiver = Receiver::start(Behaviour::RefusePoison).await;
    let server = TestServer::start_with(quick).await;
    let (_, created) = create(&server, webhook(&receiver.url)).await;
    let id = created["id"].as_i64().unwrap();
    let mut events = numbered(40, 3);
    events[17].2["poison"] = json!(true);
    let poisoned_n = 17;
    capture(&server, &events).await;
    wait_until("the 39 good events are delivered", async || receiver.delivered().len() >= 39).await;
    wait_until("the refused one is dead-lettered", async || get(&server, &format!("{id}/status")).await["dead_letters"] == 1).await;
    let delivered = receiver.delivered();
    assert_eq!(delivered.len(), 39);
    assert!(delivered.iter().all(|e| e["properties"]["n"] != poisoned_n));

    let letters = get(&server, &format!("{id}/dead_letters/")).await;
    let letter = &letters["results"][0];
    assert_eq!(letter["event"]["properties"]["n"], poisoned_n, "{letter}");
    assert_eq!(letter["last_status"], 400, "{letter}");
    assert!(letter["reason"].as_str().unwrap().contains("400"), "{letter}");
    assert!(letter["last_response"].as_str().unwrap().contains("see code"), "{letter}");

    // The receiver is fixed; a replay delivers the letter and discards it.
    receiver.set(Behaviour::Accept);
    let replay = server
        .client
        .post(format!("{}/api/projects/@current/destinations/{id}/dead_letters/replay", server.url))
        .bearer_auth(SECRET)
        .json(&json!({"ids": [letter["id"]]}))
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 202);
    wait_until("the replayed event arrives", async || receiver.delivered().iter().any(|e| e["properties"]["n"] == poisoned_n)).await;
    wait_until("the letter is gone", async || get(&server, &format!("{id}/status")).await["dead_letters"] == 0).await;
}

#[tokio::test]
async fn retries_end_in_dead_letters_and_honour_retry_after() {
    let receiver = Receiver::start(Behaviour::Throttle { secs: 1 }).await;
    let server = TestServer::start_with(|c| {
        quick(c);
        c.routing.retry_min_attempts = 3;
        c.routing.retry_max_age_secs = 1;
    })
    .await;
    let (_, created) = create(&server, webhook(&receiver.url)).await;
    let id = created["id"].as_i64().unwrap();
    capture(&server, &numbered(1, 1)).await;
    wait_until("the throttled event is delivered", async || receiver.delivered().len() == 1).await;
    let received = receiver.received();
    assert_eq!(received[0].status, 429);
    let waited = received[1].at - received[0].at;
    assert!(waited >= Duration::from_millis(950), "Retry-After: 1 was honoured ({waited:?})");

    // Always failing: given up after 3 attempts and 1 s, dead-lettered with the last answer.
    receiver.set(Behaviour::Fail { status: 500, times: usize::MAX });
    capture(&server, &numbered(2, 2)).await;
    wait_until("both are dead-lettered", async || get(&server, &format!("{id}/status")).await["dead_letters"] == 2).await;
    let letters = get(&server, &format!("{id}/dead_letters/?limit=1")).await;
    assert_eq!(letters["results"].as_array().unwrap().len(), 1);
    assert!(letters["next"].is_string(), "{letters}");
    let letter = &letters["results"][0];
    assert_eq!(letter["last_status"], 500);
    assert!(letter["attempts"].as_u64().unwrap() >= 3, "{letter}");
    let status = get(&server, &format!("{id}/status")).await;
    assert!(status["last_error"].as_str().unwrap().contains("500"), "{status}");

    // Discarded, they are gone.
    let discarded = server.client.delete(format!("{}/api/projects/@current/destinations/{id}/dead_letters/", server.url)).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(discarded.status(), 200);
    assert_eq!(get(&server, &format!("{id}/status")).await["dead_letters"], 0);
}

#[tokio::test]
async fn a_hanging_destination_does_not_hold_back_another() {
    let hanging = Receiver::start(Behaviour::Hang).await;
    let healthy = Receiver::start(Behaviour::Accept).await;
    let server = TestServer::start_with(|c| {
        quick(c);
        c.routing.request_timeout_secs = 1;
    })
    .await;
    let (_, slow) = create(&server, webhook(&hanging.url)).await;
    create(&server, webhook(&healthy.url)).await;
    capture(&server, &numbered(100, 10)).await;
    let started = Instant::now();
    wait_until("the healthy destination has everything", async || healthy.delivered().len() == 100).await;
    // Held back, it would wait for the hanging one's retries: hours (3 attempts and 3 hours).
    assert!(started.elapsed() < Duration::from_secs(20), "not held back: {:?}", started.elapsed());
    let slow_id = slow["id"].as_i64().unwrap();
    wait_until("the hanging one reports its timeouts", async || {
        get(&server, &format!("{slow_id}/status")).await["last_error"].as_str().is_some_and(|e| e.contains("timed out"))
    })
    .await;
    let status = get(&server, &format!("{slow_id}/status")).await;
    assert_eq!(status["delivered"], 0);
    assert!(status["lag"]["events"].as_i64().unwrap() >= 100, "{status}");
}

#[tokio::test]
async fn start_filter_and_transformations_choose_what_is_sent() {
    let server = TestServer::start_with(quick).await;
    capture(&server, &numbered(5, 1)).await;
    let backfill = Receiver::start(Behaviour::Accept).await;
    let fresh = Receiver::start(Behaviour::Accept).await;
    let shaped = Receiver::start(Behaviour::Accept).await;
    let mut earliest = webhook(&backfill.url);
    earliest["start"] = json!("earliest");
    create(&server, earliest).await;
    create(&server, webhook(&fresh.url)).await;
    let (status, body) = create(
        &server,
        json!({
            "name": "shaped", "type": "webhook", "config": {"url": format!("{}/hook", shaped.url)},
            "filter": {"events": ["tool_*", "flow_executed"]},
            "transformations": [
                {"type": "drop_where", "properties": [{"key": "n", "operator": "gt", "value": 7}]},
                {"type": "rename_event", "from": "flow_executed", "to": "Flow Executed"},
                {"type": "remove_property", "key": "workspace_id"}
            ]
        }),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let mut later = numbered(10, 2);
    later.push(("flow_executed".into(), "user_0".into(), json!({"n": 1})));
    later.push(("agent_created".into(), "user_0".into(), json!({"n": 2})));
    capture(&server, &later).await;

    wait_until("the backfill has all 17", async || backfill.delivered().len() == 17).await;
    wait_until("the fresh one has the 12 sent after it", async || fresh.delivered().len() == 12).await;
    wait_until("the shaped one has what passed", async || shaped.delivered().len() == 9).await;
    let shaped_events = shaped.delivered();
    assert!(shaped_events.iter().all(|e| e["event"] != "agent_created"), "filtered out by name");
    assert!(shaped_events.iter().any(|e| e["event"] == "Flow Executed"), "renamed");
    assert!(shaped_events.iter().all(|e| e["properties"].get("workspace_id").is_none()), "property removed");
    assert!(shaped_events.iter().all(|e| e["properties"]["n"].as_i64().unwrap() <= 7), "dropped by condition");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(backfill.delivered().len(), 17, "nothing twice");
}

/// RudderStack's documented example: drop some events, enrich the rest.
const RUDDERSTACK_EXAMPLE: &str = r#"
export function transformEvent(event, metadata) {
    if (event.event === "agent_error") return null;
    const meta = metadata(event);
    event.properties = event.properties || {};
    event.properties.destination = meta.destinationId;
    event.properties.model_family = (event.properties.model || "").split("-")[0];
    log("routed", event.event);
    return event;
}
"#;

#[tokio::test]
async fn javascript_transformations_run_sandboxed() {
    let receiver = Receiver::start(Behaviour::Accept).await;
    let server = TestServer::start_with(|c| {
        quick(c);
        c.routing.js_time_limit_ms = 200;
        c.routing.js_memory_mib = 16;
    })
    .await;
    let js = |code: &str| json!({"name": "js", "type": "webhook", "config": {"url": format!("{}/hook", receiver.url)}, "transformations": [{"type": "javascript", "code": code}]});
    let (status, good) = create(&server, js(RUDDERSTACK_EXAMPLE)).await;
    assert_eq!(status, 201, "{good}");
    let (status, body) = create(&server, js("export function transformEvent(event) { return event; ")).await;
    assert_eq!((status, body["attr"].as_str()), (400, Some("transformations[0].code")), "{body}");

    let hostile = [
        ("loop", "export function transformEvent(e) { while (true) {} }", "time limit"),
        ("alloc", "export function transformEvent(e) { let a = []; while (true) { a.push(new Array(1e6).fill(1)); } }", "memory"),
        ("require", "export function transformEvent(e) { require('fs'); return e; }", "require"),
        ("fetch", "export function transformEvent(e) { fetch('http://example.com'); return e; }", "fetch"),
        ("process", "export function transformEvent(e) { process.exit(1); return e; }", "process"),
    ];
    let mut hostile_ids = Vec::new();
    for (name, code, _) in &hostile {
        let (status, created) = create(&server, js(code)).await;
        assert_eq!(status, 201, "{name}: {created}");
        hostile_ids.push(created["id"].as_i64().unwrap());
    }
    capture(
        &server,
        &[
            ("agent_execution".into(), "user_1".into(), json!({"model": "gpt-4o-mini", "status": "success"})),
            ("agent_error".into(), "user_1".into(), json!({"error": "boom"})),
        ],
    )
    .await;
    wait_until("the example's output arrives", async || receiver.delivered().len() == 1).await;
    let delivered = receiver.delivered();
    assert_eq!(delivered[0]["event"], "agent_execution");
    assert_eq!(delivered[0]["properties"]["model_family"], "gpt");
    assert_eq!(delivered[0]["properties"]["destination"], good["id"].to_string());
    for ((name, _, reason), id) in hostile.iter().zip(&hostile_ids) {
        wait_until(&format!("{name} is dead-lettered"), async || get(&server, &format!("{id}/status")).await["dead_letters"] == 2).await;
        let letters = get(&server, &format!("{id}/dead_letters/")).await;
        let why = letters["results"][0]["reason"].as_str().unwrap().to_owned();
        assert!(why.contains(reason), "{name}: {why}");
    }
    // The server kept serving all along.
    assert_eq!(server.client.get(format!("{}/_liveness", server.url)).send().await.unwrap().status(), 200);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(receiver.delivered().len(), 1, "nothing from the hostile destinations");
    let status = get(&server, &format!("{}/status", good["id"])).await;
    assert_eq!(status["filtered"], 1, "returning null filters: {status}");
}

#[tokio::test]
async fn transformations_can_be_tried_before_attaching_them() {
    let server = TestServer::start().await;
    let body = json!({
        "transformations": [{"type": "javascript", "code": RUDDERSTACK_EXAMPLE}, {"type": "hash_property", "key": "email", "salt": "s"}],
        "events": [
            {"id": "e1", "type": "track", "event": "agent_execution", "distinct_id": "u1", "properties": {"model": "claude-3", "email": "a@example.com"}},
            {"type": "track", "event": "agent_error", "userId": "u1", "messageId": "m2", "properties": {}}
        ]
    });
    let response = server.client.post(format!("{}/api/projects/@current/transformations/test", server.url)).bearer_auth(SECRET).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let answer: Value = response.json().await.unwrap();
    let results = answer["results"].as_array().unwrap();
    let out = &results[0]["output"][0];
    assert_eq!(out["properties"]["model_family"], "claude");
    let hashed = out["properties"]["email"].as_str().unwrap();
    assert_eq!(hashed.len(), 64, "salted SHA-256: {hashed}");
    assert!(results[0]["logs"].to_string().contains("routed"), "{answer}");
    assert_eq!(results[1]["dropped"], true, "{answer}");
    let bad = server
        .client
        .post(format!("{}/api/projects/@current/transformations/test", server.url))
        .bearer_auth(SECRET)
        .json(&json!({"transformations": [{"type": "redact", "pattern": "("}], "events": []}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    let bad: Value = bad.json().await.unwrap();
    assert_eq!(bad["attr"], "transformations[0].pattern", "{bad}");
}

/// A TCP front for `backend` that reads the first `closes` requests and closes their
/// connections without answering, then passes connections through.
async fn closing_proxy(backend: &str, closes: usize) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let backend = backend.trim_start_matches("http://").to_owned();
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(closes));
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let (backend, left) = (backend.clone(), left.clone());
            tokio::spawn(async move {
                use std::sync::atomic::Ordering;
                if left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                    let mut buf = [0u8; 1024];
                    let _ = tokio::io::AsyncReadExt::read(&mut socket, &mut buf).await;
                    return; // dropped: the connection closes mid-request
                }
                let mut upstream = tokio::net::TcpStream::connect(backend).await.unwrap();
                let _ = tokio::io::copy_bidirectional(&mut socket, &mut upstream).await;
            });
        }
    });
    url
}

#[tokio::test]
async fn connections_closed_mid_request_are_retried() {
    let receiver = Receiver::start(Behaviour::Accept).await;
    let front = closing_proxy(&receiver.url, 2).await;
    let server = TestServer::start_with(quick).await;
    let (_, created) = create(&server, webhook(&front)).await;
    let id = created["id"].as_i64().unwrap();
    capture(&server, &numbered(30, 3)).await;
    wait_until("everything arrives despite the closed connections", async || receiver.delivered().len() == 30).await;
    assert_ordered_per_user(&receiver.delivered());
    let status = get(&server, &format!("{id}/status")).await;
    assert_eq!(status["dead_letters"], 0, "{status}");
    assert!(status["last_error"].is_string(), "the closed connections were seen: {status}");
}

#[tokio::test]
async fn an_otlp_destination_forwards_spans_as_protobuf() {
    // A collector: decodes each protobuf export; the first one is answered 503.
    let received: Arc<Mutex<Vec<switchyard_llm::otlp::Span>>> = Arc::default();
    let failures = Arc::new(std::sync::atomic::AtomicUsize::new(1));
    let (store, fail) = (received.clone(), failures.clone());
    let app = axum::Router::new().fallback(move |headers: HeaderMap, body: axum::body::Bytes| {
        let (store, fail) = (store.clone(), fail.clone());
        async move {
            assert_eq!(headers["content-type"], "application/x-protobuf");
            assert_eq!(headers["x-collector-key"], "k1");
            if fail.fetch_update(std::sync::atomic::Ordering::SeqCst, std::sync::atomic::Ordering::SeqCst, |n| n.checked_sub(1)).is_ok() {
                return StatusCode::SERVICE_UNAVAILABLE;
            }
            store.lock().unwrap().extend(switchyard_llm::otlp::decode("application/x-protobuf", &body).unwrap());
            StatusCode::OK
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let collector = format!("http://{}/v1/traces", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });

    let server = TestServer::start_with(quick).await;
    let (status, body) = create(&server, json!({"name": "signoz", "type": "otlp", "config": {"endpoint": collector, "headers": {"x-collector-key": "k1"}}, "filter": {"events": ["x"]}})).await;
    assert_eq!((status, body["attr"].as_str()), (400, Some("filter")), "{body}");
    let (status, created) = create(&server, json!({"name": "signoz", "type": "otlp", "config": {"endpoint": collector, "headers": {"x-collector-key": "k1"}}})).await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["config"]["headers"]["x-collector-key"], "********");
    let id = created["id"].as_i64().unwrap();
    let spans: Vec<Value> = (1..=30)
        .map(|i| {
            json!({"traceId": format!("{:032x}", 0xabc + i % 3), "spanId": format!("{i:016x}"), "name": format!("step {i}"),
                   "startTimeUnixNano": "1764927000000000000", "endTimeUnixNano": "1764927000500000000",
                   "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}}]})
        })
        .collect();
    let export = json!({"resourceSpans": [{"resource": {"attributes": [{"key": "service.name", "value": {"stringValue": "agent-svc"}}]}, "scopeSpans": [{"spans": spans}]}]});
    let response = server.client.post(format!("{}/v1/traces", server.url)).bearer_auth(TOKEN).json(&export).send().await.unwrap();
    assert_eq!(response.status(), 200);
    wait_until("every span reaches the collector", async || received.lock().unwrap().len() >= 30).await;
    let got = received.lock().unwrap().clone();
    assert_eq!(got.len(), 30, "each span once");
    let step7 = got.iter().find(|s| s.name == "step 7").unwrap();
    assert_eq!(step7.span_id, format!("{:016x}", 7));
    assert_eq!(step7.resource["service.name"], "agent-svc", "resource kept");
    assert_eq!(step7.attributes["gen_ai.operation.name"], "chat");
    // The collector has the spans a moment before the worker counts them and commits its cursor.
    wait_until("the status counts every span delivered", async || get(&server, &format!("{id}/status")).await["lag"]["events"] == 0).await;
    let status = get(&server, &format!("{id}/status")).await;
    assert_eq!(status["delivered"], 30, "{status}");
    assert!(status["last_error"].as_str().unwrap().contains("503"), "the first export was retried: {status}");
    // Its cursor is in the spans: it does not hold back the events' retention.
    assert!(server.state.log.cursor(&format!("destination:{id}")).await.unwrap().is_none());
    assert!(server.state.log.cursor(&format!("spans:destination:{id}")).await.unwrap().is_some());
}

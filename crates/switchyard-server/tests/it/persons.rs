//! The person processor: events update persons and groups in the control store, and flag
//! evaluation uses the stored properties (the request's take precedence).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::{TestServer, SECRET, TOKEN, WRITE_KEY};

async fn poll(server: &TestServer, path: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let body: Value = server.client.get(format!("{}{path}", server.url)).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
        if done(&body) {
            return body;
        }
        assert!(Instant::now() < deadline, "timed out waiting on {path}: {body}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn persons_and_groups_follow_the_log_and_feed_flag_evaluation() {
    let server = TestServer::start().await;
    let batch = json!({"api_key": TOKEN, "batch": [
        {"event": "$pageview", "distinct_id": "anon_7", "properties": {"$set_once": {"first_seen": "docs"}}},
        {"event": "$set", "distinct_id": "anon_7", "$set": {"plan": "free", "temp": 1}},
        {"event": "$identify", "distinct_id": "user_7", "properties": {"$anon_distinct_id": "anon_7"}, "$set": {"email": "dev@acme.io", "plan": "pro"}},
        {"event": "tool_used", "distinct_id": "user_7", "properties": {"$unset": ["temp"], "$set_once": {"first_seen": "later"}}},
        {"event": "$groupidentify", "distinct_id": "user_7", "properties": {"$group_type": "workspace", "$group_key": "ws_3", "$group_set": {"plan": "enterprise"}}},
        {"event": "agent_execution", "distinct_id": "user_7", "properties": {"$groups": {"project": "p1"}}},
    ]});
    let response = server.client.post(format!("{}/batch/", server.url)).json(&batch).send().await.unwrap();
    assert_eq!(response.status(), 200);
    // Segment alias: anon_8's person merges into user_7's.
    let response = server
        .client
        .post(format!("{}/v1/alias", server.url))
        .basic_auth(WRITE_KEY, Some(""))
        .json(&json!({"userId": "user_7", "previousId": "anon_8"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);

    let persons = poll(&server, "/api/projects/@current/persons/?distinct_id=anon_8", |b| !b["results"].as_array().unwrap().is_empty()).await;
    let person = &persons["results"][0];
    assert_eq!(person["distinct_ids"], json!(["anon_7", "anon_8", "user_7"]));
    assert_eq!(person["properties"], json!({"first_seen": "docs", "plan": "pro", "email": "dev@acme.io"}));
    assert_eq!(person["is_identified"], true);

    let groups: Value = server.client.get(format!("{}/api/projects/@current/groups/?group_type=workspace&group_key=ws_3", server.url)).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
    assert_eq!(groups["results"][0]["properties"]["plan"], "enterprise");
    assert_eq!(groups["results"][0]["group_type_index"], 0);

    // Flags: a person flag on the stored email, a group flag on the stored plan.
    let example = include_str!("../../../../examples/platform-flags.json");
    let response = server.client.post(format!("{}/api/projects/@current/feature_flags/import/", server.url)).bearer_auth(SECRET).body(example).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let flags = |body: Value| server.client.post(format!("{}/flags/?v=2", server.url)).json(&body).send();
    let stored: Value = flags(json!({"token": TOKEN, "distinct_id": "user_7", "groups": {"workspace": "ws_3"}})).await.unwrap().json().await.unwrap();
    assert_eq!(stored["flags"]["agent_debugger_ui"]["enabled"], true, "stored email matches");
    assert_eq!(stored["flags"]["versioned_rag_tracking"]["variant"], "v2");
    // ws_3 is on the enterprise plan (stored): condition 2 at 50%: compare with the engine directly.
    let overridden: Value = flags(json!({"token": TOKEN, "distinct_id": "user_7", "person_properties": {"email": "someone@else.com"}})).await.unwrap().json().await.unwrap();
    assert_eq!(overridden["flags"]["agent_debugger_ui"]["enabled"], false, "the request's properties win");

    // The new group type `project` got the next index; the flag snapshot has it.
    let definitions: Value = server.client.get(format!("{}/flags/definitions", server.url)).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
    assert_eq!(definitions["group_type_mapping"]["2"], "project");
}

#[tokio::test]
async fn person_properties_stop_at_their_limits_and_the_rest_is_counted() {
    let server = TestServer::start_with(|c| {
        c.limits.max_person_properties = 5;
        c.limits.max_person_properties_bytes = 300;
    })
    .await;
    let capture = |events: Value| {
        let body = json!({"api_key": TOKEN, "batch": events});
        server.client.post(format!("{}/batch/", server.url)).json(&body).send()
    };
    // Ten properties: the first five (in key order) are kept.
    let set: serde_json::Map<String, Value> = (0..10).map(|i| (format!("p{i}"), json!(i))).collect();
    assert_eq!(capture(json!([{"event": "$set", "distinct_id": "capped", "$set": set}])).await.unwrap().status(), 200);
    let person = poll(&server, "/api/projects/@current/persons/?distinct_id=capped", |b| !b["results"].as_array().unwrap().is_empty()).await;
    assert_eq!(person["results"][0]["properties"], json!({"p0": 0, "p1": 1, "p2": 2, "p3": 3, "p4": 4}));
    // Too big for the bytes left: dropped. A change that does not grow them passes.
    let events = json!([
        {"event": "$set", "distinct_id": "capped", "$set": {"p0": "x".repeat(400)}},
        {"event": "$set", "distinct_id": "capped", "$set": {"p1": "one"}},
    ]);
    assert_eq!(capture(events).await.unwrap().status(), 200);
    let person = poll(&server, "/api/projects/@current/persons/?distinct_id=capped", |b| b["results"][0]["properties"]["p1"] == "one").await;
    assert_eq!(person["results"][0]["properties"]["p0"], 0);
    // Counted once the batch is committed, a moment after the person shows.
    crate::wait_seeing("six dropped properties are counted", async || {
        let metrics = server.metrics().await;
        let line = metrics.lines().find(|l| l.starts_with("switchyard_person_properties_dropped_total ")).map(str::to_owned);
        if line.as_deref() == Some("switchyard_person_properties_dropped_total 6") { Ok(()) } else { Err(format!("{line:?}")) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heavy_person_updates_leave_the_store_to_others_between_small_transactions() {
    let server = TestServer::start_with(|c| c.limits.max_person_properties_bytes = 256 << 10).await;
    // 60 events, each setting 100 new properties of ~100 bytes on one person: it reaches its
    // limit (256 KiB) after ~25, and every event then rewrites 256 KiB.
    let value = "v".repeat(100);
    for request in 0..3 {
        let events: Vec<Value> = (0..20)
            .map(|e| {
                let n = request * 20 + e;
                let set: serde_json::Map<String, Value> = (0..100).map(|p| (format!("e{n}_p{p}"), json!(value))).collect();
                json!({"event": "$set", "distinct_id": "heavy", "$set": set})
            })
            .collect();
        let body = json!({"api_key": TOKEN, "batch": events});
        assert_eq!(server.client.post(format!("{}/batch/", server.url)).json(&body).send().await.unwrap().status(), 200);
    }
    let last = json!({"api_key": TOKEN, "batch": [{"event": "$set", "distinct_id": "heavy", "$set": {"e0_p0": "last"}}]});
    assert_eq!(server.client.post(format!("{}/batch/", server.url)).json(&last).send().await.unwrap().status(), 200);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    loop {
        // Lookups need the control store, as the processor does.
        let asked = Instant::now();
        let other = server.client.get(format!("{}/api/projects/@current/persons/?distinct_id=someone_else", server.url)).bearer_auth(SECRET).send().await.unwrap();
        assert_eq!(other.status(), 200);
        slowest = slowest.max(asked.elapsed());
        let asked = Instant::now();
        let heavy: Value = server.client.get(format!("{}/api/projects/@current/persons/?distinct_id=heavy", server.url)).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
        slowest = slowest.max(asked.elapsed());
        if heavy["results"][0]["properties"]["e0_p0"] == "last" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(120), "the updates were never applied");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let busy = started.elapsed();
    assert!(busy > Duration::from_millis(500), "the updates took {busy:?}: too little to tell");
    assert!(slowest * 4 < busy, "a lookup waited {slowest:?} while the updates took {busy:?}");
    let metrics = server.metrics().await;
    assert!(!metrics.contains("switchyard_person_properties_dropped_total 0"), "the limits were reached: {metrics}");
}

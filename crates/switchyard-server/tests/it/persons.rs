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

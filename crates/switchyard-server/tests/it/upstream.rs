//! Upstream mode: a second Switchyard plays the upstream PostHog. Flags keep being served
//! when it stops, and after a restart while it is still down, marked stale.


use serde_json::{json, Value};

use crate::{mirror_of, wait_until, TestServer, SECRET, TOKEN};

async fn evaluate(server: &TestServer) -> Value {
    server
        .client
        .post(format!("{}/flags/?v=2", server.url))
        .json(&json!({"token": TOKEN, "distinct_id": "user_42"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

#[tokio::test]
async fn flags_survive_upstream_outages_and_restarts() {
    let upstream = TestServer::start().await;
    let example = include_str!("../../../../examples/platform-flags.json");
    let response = upstream.client.post(format!("{}/api/projects/@current/feature_flags/import/", upstream.url)).bearer_auth(SECRET).body(example).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let mirror = TestServer::start_with(mirror_of(upstream.url.clone())).await;
    wait_until("the mirror is ready", async || {
        mirror.client.get(format!("{}/_readiness/flags", mirror.url)).send().await.unwrap().status() == 200
    })
    .await;
    let fresh = evaluate(&mirror).await;
    assert_eq!(fresh["flags"]["agent_debugger_ui"]["enabled"], true);
    assert_eq!(fresh["flagsSnapshot"]["stale"], false);
    let managed = mirror.client.post(format!("{}/api/projects/@current/feature_flags/", mirror.url)).bearer_auth(SECRET).json(&json!({"key": "local"})).send().await.unwrap();
    assert_eq!(managed.status(), 409, "mirrored flags are changed upstream");

    // Upstream goes away: the last snapshot is served, marked stale.
    upstream.stop().await;
    wait_until("the snapshot is stale", async || evaluate(&mirror).await["flagsSnapshot"]["stale"] == true).await;
    let stale = evaluate(&mirror).await;
    assert_eq!(stale["flags"]["agent_debugger_ui"]["enabled"], true);
    assert!(stale["flagsSnapshot"].get("last_error").is_none(), "upstream errors stay in logs and metrics");
    let metrics = mirror.metrics().await;
    assert!(metrics.contains("switchyard_flags_snapshot_stale 1"), "{metrics}");
    assert!(!metrics.contains("switchyard_flags_upstream_failures_total 0"), "{metrics}");

    // Restart while upstream is still down: the persisted snapshot is served at once.
    let dir = mirror.stop().await;
    let url = upstream_dead_url();
    let restarted = TestServer::start_in(dir, mirror_of(url)).await;
    assert_eq!(restarted.client.get(format!("{}/_readiness", restarted.url)).send().await.unwrap().status(), 200);
    let after = evaluate(&restarted).await;
    assert_eq!(after["flags"]["agent_debugger_ui"]["enabled"], true);
    assert_eq!(after["flags"]["versioned_rag_tracking"]["enabled"], true);
    wait_until("the restarted mirror reports staleness", async || evaluate(&restarted).await["flagsSnapshot"]["stale"] == true).await;
    let definitions = restarted.client.get(format!("{}/flags/definitions", restarted.url)).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(definitions.headers()["x-switchyard-snapshot-stale"], "true");

    // A mirror that never got a snapshot: its flags are not ready, intake is.
    let empty = TestServer::start_with(mirror_of(upstream_dead_url())).await;
    assert_eq!(empty.client.get(format!("{}/_readiness/flags", empty.url)).send().await.unwrap().status(), 503);
    assert_eq!(empty.client.get(format!("{}/_readiness", empty.url)).send().await.unwrap().status(), 200);
}

/// A loopback URL nothing listens on.
fn upstream_dead_url() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    format!("http://127.0.0.1:{port}")
}

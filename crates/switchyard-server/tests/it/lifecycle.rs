//! Health, CORS, the body encodings posthog-js uses, pagination, and restart.

use base64::Engine as _;
use serde_json::{json, Value};

use crate::{TestServer, SECRET, TOKEN};

#[tokio::test]
async fn health_cors_and_encodings() {
    let server = TestServer::start().await;
    let get = |path: &str| server.client.get(format!("{}{path}", server.url)).send();
    assert_eq!(get("/_liveness").await.unwrap().status(), 200);
    assert_eq!(get("/_readiness").await.unwrap().status(), 200);

    let preflight = server
        .client
        .request(reqwest::Method::OPTIONS, format!("{}/e/", server.url))
        .header("origin", "http://app.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type")
        .send()
        .await
        .unwrap();
    assert_eq!(preflight.status(), 200);
    let h = preflight.headers();
    assert_eq!(h["access-control-allow-origin"], "http://app.example");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-allow-headers"], "content-type");
    assert!(h["access-control-allow-methods"].to_str().unwrap().contains("POST"));
    // Capture takes GET and POST (and preflights); any other method is refused, and stores nothing.
    let put = server.client.put(format!("{}/e/", server.url)).body("{}").send().await.unwrap();
    assert_eq!(put.status(), 405);
    assert_eq!(server.client.head(format!("{}/e/", server.url)).send().await.unwrap().status(), 405);

    // GET with data= (base64), on a legacy path.
    let one = json!({"event": "tool_used", "properties": {"distinct_id": "u1", "token": TOKEN, "tool_name": "web_search"}});
    let data = base64::engine::general_purpose::STANDARD.encode(one.to_string());
    let response = server.client.get(format!("{}/e", server.url)).query(&[("data", data.as_str())]).send().await.unwrap();
    assert_eq!(response.status(), 200);

    // lz-string form body, as posthog-js-lite's form capture sends it; beacon answers 204.
    let array = json!([{"event": "agent_created", "properties": {"distinct_id": "u2", "token": TOKEN, "agent_id": "ag_1"}}]);
    let form: String = [("data", lz_str::compress_to_base64(&array.to_string())), ("compression", "lz64".into())]
        .iter()
        .map(|(k, v)| format!("{k}={}", v.replace('+', "%2B").replace('/', "%2F").replace('=', "%3D")))
        .collect::<Vec<_>>()
        .join("&");
    let response = server
        .client
        .post(format!("{}/e/?beacon=1", server.url))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert!(response.headers().get("access-control-allow-origin").is_some());

    // The request's traceparent header supplies the trace when the event has none.
    let response = server
        .client
        .post(format!("{}/i/v0/e/", server.url))
        .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
        .header("x-forwarded-for", "203.0.113.9, 10.0.0.1")
        .json(&json!({"api_key": TOKEN, "event": "rag_query_triggered", "distinct_id": "u3", "properties": {"top_k": 5}}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body, json!({"status": "Ok"}));

    let events = server.events("").await;
    let names: Vec<&str> = events.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["rag_query_triggered", "agent_created", "tool_used"]);
    assert_eq!(events[0]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(events[0]["span_id"], "00f067aa0ba902b7");
    assert_eq!(events[1]["properties"]["agent_id"], "ag_1");
    assert_eq!(events[2]["distinct_id"], "u1");
    // The client's address: the peer's; X-Forwarded-For counts only from trusted proxies
    // (none configured here; keys.rs has them).
    assert_eq!(events[0]["request_ip"], "127.0.0.1");
    assert_eq!((&events[1]["request_ip"], &events[2]["request_ip"]), (&json!("127.0.0.1"), &json!("127.0.0.1")));
}

#[tokio::test]
async fn pagination_time_filters_and_restart() {
    let server = TestServer::start().await;
    let batch: Vec<Value> = (0..25)
        .map(|i| {
            json!({"event": "flow_executed", "distinct_id": format!("user_{}", i % 2),
                   "timestamp": format!("2026-11-25T10:00:{i:02}Z"),
                   "properties": {"flow_id": "flow_9", "status": "success", "duration_ms": i}})
        })
        .collect();
    let response = server.client.post(format!("{}/batch", server.url)).json(&json!({"api_key": TOKEN, "batch": batch})).send().await.unwrap();
    assert_eq!(response.status(), 200);

    let mut seen = Vec::new();
    let mut url = format!("{}/api/projects/@current/events/?limit=10&distinct_id=user_0", server.url);
    loop {
        let page: Value = server.client.get(&url).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
        for e in page["results"].as_array().unwrap() {
            seen.push(e["properties"]["duration_ms"].as_i64().unwrap());
        }
        match page["next"].as_str() {
            Some(next) => url = format!("{}{next}", server.url),
            None => break,
        }
    }
    assert_eq!(seen, (0..25).rev().filter(|i| i % 2 == 0).collect::<Vec<_>>());

    let window = server.events("after=2026-11-25T10:00:05Z&before=2026-11-25T10:00:08Z").await;
    let durations: Vec<i64> = window.iter().map(|e| e["properties"]["duration_ms"].as_i64().unwrap()).collect();
    assert_eq!(durations, [7, 6]);
    let bad = server
        .client
        .get(format!("{}/api/projects/@current/events/?after=soon", server.url))
        .bearer_auth(SECRET)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert!(bad.text().await.unwrap().contains("`after`"));

    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |_| {}).await;
    assert_eq!(server.events("").await.len(), 25, "events survive a restart");
}

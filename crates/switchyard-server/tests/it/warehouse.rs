//! The embedded Parquet lake, loaded behind the log when `warehouse.lake` is on.

use serde_json::json;

use crate::{wait_until, TestServer, SECRET, TOKEN};

/// The Parquet files under `dir`, as paths relative to it.
fn parquet_files(dir: &std::path::Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        for entry in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                out.push(path.strip_prefix(dir).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn events_reach_the_lake_as_parquet_tables_by_day() {
    let server = TestServer::start_with(|c| {
        c.warehouse.lake = true;
        c.warehouse.max_wait_secs = 1;
    })
    .await;
    let batch = json!({"api_key": TOKEN, "batch": [
        {"event": "tool_used", "distinct_id": "user_1", "timestamp": "2026-12-05T10:00:00Z",
         "properties": {"tool_name": "web_search", "success": true, "trace_id": "t1", "workspace_id": "ws_1"}},
        {"event": "$ai_generation", "distinct_id": "user_1", "timestamp": "2026-12-05T10:00:01Z",
         "properties": {"$ai_model": "gpt-4o-mini", "$ai_provider": "openai", "$ai_input_tokens": 12, "$ai_output_tokens": 5, "$ai_trace_id": "t1"}},
    ]});
    assert_eq!(server.client.post(format!("{}/batch/", server.url)).json(&batch).send().await.unwrap().status(), 200);
    let lake = server.dir.path().join("lake");
    wait_until("the lake has the events' tables", async || {
        let files = parquet_files(&lake);
        ["tracks/", "tool_used/", "event_logs/", "model_cost_logs/"].iter().all(|t| files.iter().any(|f| f.contains(t)))
    })
    .await;
    let files = parquet_files(&lake);
    assert!(files.iter().all(|f| f.starts_with("project=1/") && f.contains("/day=2026-12-05/")), "{files:?}");
    wait_until("the loader's cursor passed them", async || server.state.log.cursor("warehouse:lake").await.unwrap().is_some_and(|p| p >= 2)).await;
    // Stopped and started again, nothing is loaded twice.
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |c| {
        c.warehouse.lake = true;
        c.warehouse.max_wait_secs = 1;
    })
    .await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(parquet_files(&server.dir.path().join("lake")), files);
}

async fn sql(server: &TestServer, key: &str, project: &str, query: &str) -> (u16, serde_json::Value) {
    let response = server
        .client
        .post(format!("{}/api/projects/{project}/query", server.url))
        .bearer_auth(key)
        .json(&json!({"query": query}))
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

#[tokio::test]
async fn the_lake_answers_sql_read_only_per_project() {
    // The lake is on by default.
    let server = TestServer::start_with(|c| c.warehouse.max_wait_secs = 1).await;
    let batch = json!({"api_key": TOKEN, "batch": [
        {"event": "agent_execution", "distinct_id": "user_1", "timestamp": "2026-12-05T10:00:00Z",
         "properties": {"agent_id": "agent_1", "workspace_id": "ws_1", "status": "success", "trace_id": "t1", "duration_ms": 1200}},
        {"event": "$ai_generation", "distinct_id": "user_1", "timestamp": "2026-12-05T10:00:01Z",
         "properties": {"$ai_model": "gpt-4o-mini", "$ai_provider": "openai", "$ai_input_tokens": 1000, "$ai_output_tokens": 500,
                        "$ai_total_cost_usd": 0.00045, "$ai_trace_id": "t1", "workspace_id": "ws_1"}},
        {"event": "$ai_generation", "distinct_id": "user_2", "timestamp": "2026-12-06T08:00:00Z",
         "properties": {"$ai_model": "gpt-4o-mini", "$ai_provider": "openai", "$ai_input_tokens": 10, "$ai_output_tokens": 5,
                        "$ai_total_cost_usd": 0.000009, "$ai_trace_id": "t2", "workspace_id": "ws_2"}},
    ]});
    assert_eq!(server.client.post(format!("{}/batch/", server.url)).json(&batch).send().await.unwrap().status(), 200);
    wait_until("the events are queryable", async || {
        let (status, body) = sql(&server, SECRET, "@current", "SELECT count(*) AS n FROM event_logs").await;
        status == 200 && body["results"][0][0] == 3
    })
    .await;
    let (status, body) = sql(&server, SECRET, "@current", "SELECT workspace_id, model, sum(cost_usd) AS cost FROM model_cost_logs GROUP BY 1, 2 ORDER BY 1").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["columns"], json!(["workspace_id", "model", "cost"]));
    assert_eq!(body["results"], json!([["ws_1", "gpt-4o-mini", "0.00045"], ["ws_2", "gpt-4o-mini", "0.000009"]]));
    let (_, body) = sql(&server, SECRET, "1", "SELECT trace_id, status, llm_calls, input_tokens, agent_id FROM agent_trace_history ORDER BY trace_id").await;
    assert_eq!(body["results"], json!([["t1", "success", 1, 1000, "agent_1"], ["t2", "success", 1, 10, null]]), "{body}");
    let (_, body) = sql(&server, SECRET, "@current", "SELECT event, date_trunc('day', \"timestamp\") AS day, count(*) FROM event_logs GROUP BY 1, 2 ORDER BY 1, 2").await;
    assert_eq!(body["results"].as_array().unwrap().len(), 3, "{body}");

    let (status, body) = sql(&server, SECRET, "@current", "DELETE FROM event_logs").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("read_only")), "{body}");
    let (status, body) = sql(&server, SECRET, "@current", "SELECT * FROM no_such_table").await;
    assert_eq!((status, body["code"].as_str()), (400, Some("invalid_query")), "{body}");
    assert!(body["detail"].as_str().unwrap().contains("no_such_table"), "{body}");
    let (status, _) = sql(&server, TOKEN, "@current", "SELECT 1").await;
    assert_eq!(status, 401, "the public token cannot query");
    let (status, _) = sql(&server, SECRET, "2", "SELECT 1").await;
    assert_eq!(status, 403, "another project's tables");
    let response = server.client.post(format!("{}/api/projects/@current/query", server.url)).bearer_auth(SECRET).body("{\"sql\": 1}").send().await.unwrap();
    assert_eq!(response.status(), 400);
    let metrics = server.metrics().await;
    assert!(metrics.contains("switchyard_warehouse_queries_total{outcome=\"read_only\"} 1"), "{metrics}");
}

//! The embedded Parquet lake, loaded behind the log when `warehouse.lake` is on.

use serde_json::json;

use crate::{wait_until, TestServer, TOKEN};

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

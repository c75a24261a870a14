//! The embedded Parquet lake, loaded behind the log when `warehouse.lake` is on.

use serde_json::json;

use crate::{wait_seeing, wait_until, TestServer, SECRET, TOKEN};

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
    // A window's tables show one after the other: waited for until the lake has committed it.
    wait_until("the events are queryable", async || {
        let (status, body) = sql(&server, SECRET, "@current", "SELECT count(*) AS n FROM event_logs").await;
        status == 200 && body["results"][0][0] == 3 && lake_status(&server).await["lag"]["events"] == 0
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

// PostgreSQL warehouses, end to end: a real PostgreSQL 15 started by the test (`crate::pg`),
// filled by the server's loader and read back with tokio-postgres next to the lake's SQL.

/// A warehouse API answer: (status, body).
async fn warehouses(server: &TestServer, method: reqwest::Method, path: &str, body: Option<serde_json::Value>) -> (u16, serde_json::Value) {
    let mut request = server
        .client
        .request(method, format!("{}/api/projects/@current/warehouses/{path}", server.url))
        .bearer_auth(SECRET);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, if text.is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text).unwrap() })
}

/// The status entry of PostgreSQL warehouse `id` (`None` while it is not listed).
async fn loader_status(server: &TestServer, id: i64) -> Option<serde_json::Value> {
    let (status, body) = warehouses(server, reqwest::Method::GET, "status/", None).await;
    assert_eq!(status, 200, "{body}");
    body["results"].as_array().unwrap().iter().find(|w| w["id"] == id).cloned()
}

/// The lake's status entry.
async fn lake_status(server: &TestServer) -> serde_json::Value {
    let (_, body) = warehouses(server, reqwest::Method::GET, "status/", None).await;
    body["results"].as_array().unwrap().iter().find(|w| w["type"] == "lake").cloned().expect("the lake is listed")
}

/// A decimal as text without trailing zeros (`0.000459000000` → `0.000459`), so PostgreSQL's
/// `numeric(38,12)` and the lake's answer compare as numbers.
fn decimal(text: &str) -> String {
    if !text.contains('.') {
        return text.to_owned();
    }
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

/// A JSON answer cell as text (numbers as written, strings as they are).
fn cell_text(value: &serde_json::Value) -> String {
    match value {
        serde_json::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// One-cell query on the lake: the cell as text.
async fn lake_one(server: &TestServer, query: &str) -> String {
    let (status, body) = sql(server, SECRET, "@current", query).await;
    assert_eq!(status, 200, "{query}: {body}");
    cell_text(&body["results"][0][0])
}

/// The lake's `event_logs` rows (`None` before the table exists).
async fn lake_events(server: &TestServer) -> Option<usize> {
    let (status, body) = sql(server, SECRET, "@current", "SELECT count(*) FROM event_logs").await;
    (status == 200).then(|| body["results"][0][0].as_u64().unwrap() as usize)
}

async fn pg_count(client: &tokio_postgres::Client, schema: &str, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM \"{schema}\".\"{table}\""), &[]).await.unwrap().get(0)
}

/// `event_logs` in PostgreSQL, or 0 before the loader made it.
async fn pg_events(client: &tokio_postgres::Client, schema: &str) -> i64 {
    match client.query_one(&format!("SELECT count(*) FROM \"{schema}\".event_logs"), &[]).await {
        Ok(row) => row.get(0),
        Err(_) => 0,
    }
}

/// The schema's tables (not views), the loader's own `_switchyard_loads` left out.
async fn pg_tables(client: &tokio_postgres::Client, schema: &str) -> Vec<String> {
    client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = $1 AND table_type = 'BASE TABLE' AND table_name <> '_switchyard_loads' ORDER BY 1",
            &[&schema],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// A W3C trace id.
fn trace_id(n: usize) -> String {
    format!("{:032x}", 0x4bf9_2f35_77b3_4da6_a3ce_929d_0e0e_0000_u128 + n as u128)
}

/// Realistic platform events (the catalog's `agent_execution`, `tool_used`, `$ai_generation`
/// with a cost, and identify calls), the traces `traces` (by number, see [`trace_id`]), each
/// event with its own id.
fn catalog_events(traces: std::ops::Range<usize>, day: &str) -> Vec<serde_json::Value> {
    let mut events = Vec::new();
    let users = traces.len().min(3);
    for n in traces {
        let user = format!("user_{}", n % 3);
        let failed = n % 4 == 3;
        let mut at = 0;
        let mut push = |name: &str, properties: serde_json::Value| {
            let mut props = json!({"trace_id": trace_id(n), "span_id": format!("{:016x}", 0x00f0_67aa_0ba9_0000_u64 + at),
                                   "workspace_id": format!("ws_{}", n % 2), "organization_id": "org_1"});
            props.as_object_mut().unwrap().extend(properties.as_object().unwrap().clone());
            events.push(json!({"event": name, "uuid": uuid::Uuid::new_v4().to_string(), "distinct_id": user,
                               "timestamp": format!("{day}T10:{:02}:{:02}Z", n % 60, at), "properties": props}));
            at += 1;
        };
        push(
            "agent_execution",
            json!({"agent_id": format!("agent_{}", n % 2), "run_id": format!("run_{n}"), "model": "gpt-4o-mini", "provider": "openai",
                   "input_tokens": 1200 + n, "output_tokens": 300, "duration_ms": 2400, "status": if failed { "error" } else { "success" },
                   "tool_calls": 2}),
        );
        for call in 0..2 {
            push(
                "$ai_generation",
                json!({"$ai_model": "gpt-4o-mini", "$ai_provider": "openai", "$ai_input_tokens": 600 + call, "$ai_output_tokens": 150,
                       "$ai_total_cost_usd": serde_json::from_str::<serde_json::Value>(&format!("0.00{}{}7", n % 9 + 1, call + 1)).unwrap(), "$ai_trace_id": trace_id(n), "$ai_latency": 1.25,
                       "agent_id": format!("agent_{}", n % 2)}),
            );
        }
        for call in 0..2 {
            let ok = !(failed && call == 1);
            let mut props = json!({"tool_name": if call == 0 { "web_search" } else { "sql_query" }, "tool_type": "builtin",
                                   "run_id": format!("run_{n}"), "duration_ms": 310 + call, "success": ok});
            if !ok {
                props["error_type"] = json!("timeout");
            }
            push("tool_used", props);
        }
    }
    for user in 0..users {
        events.push(json!({"event": "$identify", "uuid": uuid::Uuid::new_v4().to_string(), "distinct_id": format!("user_{user}"),
                           "timestamp": format!("{day}T09:00:00Z"),
                           "properties": {"workspace_id": "ws_0", "organization_id": "org_1",
                                          "$set": {"email": format!("user_{user}@example.com"), "plan": "pro", "seats": 3 + user}}}));
    }
    events
}

async fn send(server: &TestServer, events: &[serde_json::Value]) {
    for chunk in events.chunks(25) {
        let response = server.client.post(format!("{}/batch/", server.url)).json(&json!({"api_key": TOKEN, "batch": chunk})).send().await.unwrap();
        assert_eq!(response.status(), 200);
    }
}

/// Waits until the lake and PostgreSQL warehouse `id` have caught up with the log, and the
/// lake answers `expected` events; on timeout, says what it last saw.
async fn wait_loaded(server: &TestServer, id: i64, expected: usize) {
    wait_seeing(&format!("warehouse {id} and the lake have loaded {expected} events"), async || {
        let postgres = loader_status(server, id).await;
        let lake = lake_status(server).await;
        let in_lake = lake_events(server).await;
        let loaded = postgres.as_ref().is_some_and(|pg| pg["lag"]["events"] == 0 && pg["last_load_at"].is_string())
            && lake["lag"]["events"] == 0
            && in_lake == Some(expected);
        if loaded { Ok(()) } else { Err(format!("\npostgres: {postgres:?}\nlake: {lake}\nlake events: {in_lake:?}")) }
    })
    .await;
}

#[tokio::test]
async fn a_postgres_warehouse_by_api_holds_what_the_lake_holds_until_deleted() {
    let cluster = crate::pg::PgCluster::start_new();
    let pg = cluster.client().await;
    let server = TestServer::start_with(|c| c.warehouse.max_wait_secs = 1).await;
    // A password that trust authentication ignores, to see it masked.
    let dsn = format!("postgres://{}:s3cret-pw@127.0.0.1:{}/postgres", crate::pg::USER, cluster.port());
    let masked = format!("postgres://{}:********@127.0.0.1:{}/postgres", crate::pg::USER, cluster.port());

    // Refused, naming the field.
    let (status, body) = warehouses(&server, reqwest::Method::POST, "", Some(json!({"name": "w", "type": "snowflake", "config": {"dsn": dsn}}))).await;
    assert_eq!((status, body["attr"].as_str()), (400, Some("type")), "{body}");
    let (status, body) = warehouses(&server, reqwest::Method::POST, "", Some(json!({"name": "w", "type": "postgres", "config": {"dsn": "postgres://u@h:notaport/db"}}))).await;
    assert_eq!((status, body["attr"].as_str()), (400, Some("config.dsn")), "{body}");
    let (status, body) = warehouses(&server, reqwest::Method::POST, "", Some(json!({"name": "w", "type": "postgres", "config": {"dsn": dsn, "schema": ""}}))).await;
    assert_eq!((status, body["attr"].as_str()), (400, Some("config.schema")), "{body}");
    let (_, body) = warehouses(&server, reqwest::Method::GET, "", None).await;
    assert_eq!(body["results"], json!([]), "nothing refused was stored");

    let (status, created) =
        warehouses(&server, reqwest::Method::POST, "", Some(json!({"name": "analytics", "type": "postgres", "config": {"dsn": dsn, "schema": "analytics"}}))).await;
    assert_eq!(status, 201, "{created}");
    let id = created["id"].as_i64().unwrap();
    assert_eq!((created["name"].as_str(), created["type"].as_str()), (Some("analytics"), Some("postgres")));
    assert_eq!(created["config"], json!({"dsn": masked, "schema": "analytics"}));
    let (status, listed) = warehouses(&server, reqwest::Method::GET, "", None).await;
    assert_eq!(status, 200);
    assert_eq!(listed["results"].as_array().unwrap().len(), 1);
    assert_eq!(listed["results"][0]["config"]["dsn"], json!(masked));
    let (status, got) = warehouses(&server, reqwest::Method::GET, &format!("{id}/"), None).await;
    assert_eq!(status, 200);
    assert_eq!(got, created);
    for shown in [&created, &listed, &got] {
        assert!(!shown.to_string().contains("s3cret"), "the password is shown: {shown}");
    }

    let events = catalog_events(0..8, "2026-12-05");
    let mut more = catalog_events(8..12, "2026-12-06");
    let total = events.len() + more.len();
    send(&server, &events).await;
    // Another day's traces, in their own requests.
    send(&server, &more).await;
    wait_loaded(&server, id, total).await;
    let status = loader_status(&server, id).await.unwrap();
    assert_eq!(status["loaded_events"], total, "{status}");
    assert_eq!((status["failures"].as_i64(), status["last_error"].as_str(), status["discards"].as_i64()), (Some(0), None, Some(0)), "{status}");
    assert_eq!(status["name"], "analytics");
    assert_eq!(status["type"], "postgres");

    // Every table PostgreSQL has holds as many rows as the lake's.
    let tables = pg_tables(&pg, "analytics").await;
    for expected in ["event_logs", "tracks", "tool_used", "ai_generation", "agent_execution", "identifies", "users", "model_cost_logs", "agent_trace_events"] {
        assert!(tables.iter().any(|t| t == expected), "{expected} is not in PostgreSQL: {tables:?}");
    }
    for table in &tables {
        let in_pg = pg_count(&pg, "analytics", table).await;
        let in_lake = lake_one(&server, &format!("SELECT count(*) FROM {table}")).await;
        assert_eq!(in_pg.to_string(), in_lake, "rows of {table}");
    }
    assert_eq!(pg_count(&pg, "analytics", "event_logs").await, total as i64);
    assert_eq!(pg_count(&pg, "analytics", "users").await, 3);
    let pg_cost: String = pg.query_one("SELECT sum(cost_usd)::text FROM analytics.model_cost_logs", &[]).await.unwrap().get(0);
    let lake_cost = lake_one(&server, "SELECT sum(cost_usd) FROM model_cost_logs").await;
    assert_eq!(decimal(&pg_cost), decimal(&lake_cost));
    // What was sent: each cost has five decimals (`0.00117`).
    let sent: u64 = events
        .iter()
        .chain(&more)
        .filter_map(|e| e["properties"]["$ai_total_cost_usd"].as_f64())
        .map(|cost| (cost * 100_000.0).round() as u64)
        .sum();
    assert_eq!(decimal(&pg_cost), decimal(&format!("{}.{:05}", sent / 100_000, sent % 100_000)), "the costs sent");

    // The trace summaries agree, a failed trace's and a clean one's.
    for n in [2, 3] {
        let trace = trace_id(n);
        let row = pg
            .query_one(
                "SELECT llm_calls::text, cost_usd::text, status, tool_calls::text, errors::text, input_tokens::text, events::text, agent_id
                 FROM analytics.agent_trace_history WHERE trace_id = $1",
                &[&trace],
            )
            .await
            .unwrap();
        let in_pg: Vec<String> = (0..8).map(|i| row.get::<_, String>(i)).collect();
        let (status, body) = sql(
            &server,
            SECRET,
            "@current",
            &format!("SELECT llm_calls, cost_usd, status, tool_calls, errors, input_tokens, events, agent_id FROM agent_trace_history WHERE trace_id = '{trace}'"),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let in_lake: Vec<String> = body["results"][0].as_array().unwrap().iter().map(cell_text).collect();
        assert_eq!(in_pg[0], "2", "two $ai_generation calls");
        assert_eq!(in_pg[2], if n == 3 { "error" } else { "success" });
        assert_eq!(decimal(&in_pg[1]), decimal(&in_lake[1]), "cost of {trace}");
        assert_eq!((&in_pg[..1], &in_pg[2..]), (&in_lake[..1], &in_lake[2..]), "trace {trace}");
    }

    let metrics = server.metrics().await;
    for line in [
        format!("switchyard_warehouse_loaded_events{{warehouse=\"postgres:{id}\"}} {total}"),
        format!("switchyard_warehouse_lag_events{{warehouse=\"postgres:{id}\"}} 0"),
        format!("switchyard_warehouse_failures{{warehouse=\"postgres:{id}\"}} 0"),
    ] {
        assert!(metrics.lines().any(|l| l == line), "no `{line}` in\n{metrics}");
    }
    assert!(metrics.contains(&format!("switchyard_warehouse_last_load_seconds{{warehouse=\"postgres:{id}\"}} 1")), "{metrics}");

    // Deleted: gone from the API and the status, its cursor let go, and new events stay out.
    let (status, _) = warehouses(&server, reqwest::Method::DELETE, &format!("{id}/"), None).await;
    assert_eq!(status, 204);
    let (status, body) = warehouses(&server, reqwest::Method::GET, &format!("{id}/"), None).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = warehouses(&server, reqwest::Method::DELETE, &format!("{id}/"), None).await;
    assert_eq!(status, 404);
    assert!(loader_status(&server, id).await.is_none());
    let consumer = format!("warehouse:postgres:{id}");
    assert_eq!(server.state.log.cursor(&consumer).await.unwrap(), None, "a deleted warehouse's cursor would hold the log's retention back");
    let metrics = server.metrics().await;
    assert!(!metrics.contains(&format!("warehouse=\"postgres:{id}\"")), "a deleted warehouse's gauges go: {metrics}");
    more = catalog_events(12..14, "2026-12-07");
    send(&server, &more).await;
    let after = total + more.len();
    wait_until("the lake has the new events", async || lake_events(&server).await == Some(after)).await;
    // Longer than a window may wait, for a loader that was not stopped.
    tokio::time::sleep(std::time::Duration::from_millis(2500)).await;
    assert_eq!(pg_count(&pg, "analytics", "event_logs").await, total as i64, "a deleted warehouse got events");
}

/// `[[warehouse.postgres]]` with a 1 s window.
fn configured(dsn: String) -> impl FnOnce(&mut switchyard_server::Config) {
    move |c| {
        c.warehouse.max_wait_secs = 1;
        c.warehouse.postgres = vec![switchyard_server::config::PostgresWarehouse {
            name: "configured".into(),
            dsn,
            schema: "from_config".into(),
            project_id: 1,
        }];
    }
}

#[tokio::test]
async fn a_configured_postgres_warehouse_loads_and_keeps_its_id_and_rows_across_restarts() {
    let cluster = crate::pg::PgCluster::start_new();
    let pg = cluster.client().await;
    let server = TestServer::start_with(configured(cluster.url())).await;
    let (_, listed) = warehouses(&server, reqwest::Method::GET, "", None).await;
    let listed = listed["results"].as_array().unwrap().clone();
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0]["name"].as_str(), listed[0]["config"]["schema"].as_str()), (Some("configured"), Some("from_config")));
    let id = listed[0]["id"].as_i64().unwrap();

    let first = catalog_events(0..5, "2026-12-05");
    send(&server, &first).await;
    wait_loaded(&server, id, first.len()).await;
    assert_eq!(pg_events(&pg, "from_config").await, first.len() as i64);
    let loaded_at = |rows: Vec<tokio_postgres::Row>| rows.iter().map(|r| (r.get::<_, String>(0), r.get::<_, String>(1))).collect::<Vec<_>>();
    let before = loaded_at(pg.query("SELECT id, uuid_ts::text FROM from_config.event_logs ORDER BY id", &[]).await.unwrap());
    let tracks_before = pg_count(&pg, "from_config", "tracks").await;

    let dir = server.stop().await;
    let server = TestServer::start_in(dir, configured(cluster.url())).await;
    let (_, listed) = warehouses(&server, reqwest::Method::GET, "", None).await;
    let ids: Vec<i64> = listed["results"].as_array().unwrap().iter().map(|w| w["id"].as_i64().unwrap()).collect();
    assert_eq!(ids, vec![id], "the configured warehouse is the same one after a restart");
    let second = catalog_events(5..7, "2026-12-06");
    send(&server, &second).await;
    wait_loaded(&server, id, first.len() + second.len()).await;
    let status = loader_status(&server, id).await.unwrap();
    assert_eq!(status["loaded_events"], second.len(), "only the new events were loaded after the restart: {status}");

    assert_eq!(pg_events(&pg, "from_config").await, (first.len() + second.len()) as i64);
    let after = loaded_at(
        pg.query("SELECT id, uuid_ts::text FROM from_config.event_logs WHERE id = ANY($1) ORDER BY id", &[&before.iter().map(|(id, _)| id.clone()).collect::<Vec<_>>()])
            .await
            .unwrap(),
    );
    assert_eq!(after, before, "rows loaded before the restart were not loaded again");
    let second_tracks = second.iter().filter(|e| e["event"] != "$identify").count();
    assert_eq!(pg_count(&pg, "from_config", "tracks").await, tracks_before + second_tracks as i64);
    let cursors: Vec<String> = pg.query("SELECT consumer FROM from_config._switchyard_loads", &[]).await.unwrap().iter().map(|r| r.get(0)).collect();
    assert_eq!(cursors, vec![format!("warehouse:postgres:{id}")]);
}

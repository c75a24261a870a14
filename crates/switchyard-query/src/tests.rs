//! Queries over a real lake: Parquet files written by the lake's own writer.

use super::*;
use serde_json::json;
use switchyard_event::Event;
use switchyard_warehouse::{rows_for, Dialect, Schema, TraceSummary};

fn event(project_id: i64, id: &str, kind: &str, name: &str, timestamp: &str, properties: Value, traits: Value) -> Event {
    serde_json::from_value(json!({
        "id": id, "project_id": project_id, "protocol": "segment", "type": kind, "event": name,
        "distinct_id": "user_7", "user_id": "user_7", "anonymous_id": "anon_3",
        "properties": properties, "traits": traits, "context": {},
        "timestamp": timestamp, "received_at": "2025-12-06T23:59:00.000000Z", "request_ip": "198.51.100.4"
    }))
    .unwrap()
}

/// A track event; a `trace_id` property is the event's trace, as intake makes it.
fn track(id: &str, name: &str, timestamp: &str, properties: Value) -> Event {
    let trace_id = properties.get("trace_id").and_then(Value::as_str).map(str::to_owned);
    let mut e = event(1, id, "track", name, timestamp, properties, json!({}));
    e.trace_id = trace_id;
    e
}

/// Writes `windows` of events as the lake loader does: each window its own files.
fn lake(windows: &[Vec<Event>]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let mut schemas: std::collections::HashMap<i64, Schema> = Default::default();
    let mut seq = 0;
    for window in windows {
        let first = seq + 1;
        let mut by_project: std::collections::BTreeMap<i64, Vec<switchyard_warehouse::Row>> = Default::default();
        for e in window {
            seq += 1;
            let schema = schemas.entry(e.project_id).or_insert_with(Schema::with_fixed_tables);
            for row in rows_for(e, Dialect::Lake) {
                let (mut row, discards) = schema.admit(row);
                row.stamp(chrono::Utc::now());
                by_project.entry(e.project_id).or_default().push(row);
                for d in discards {
                    by_project.entry(e.project_id).or_default().push(schema.admit(d.to_row()).0);
                }
            }
        }
        for (project, rows) in by_project {
            switchyard_pipeline::lake::write_window(dir.path(), project, first, seq, &rows).unwrap();
        }
    }
    dir
}

async fn run(root: &Path, sql: &str) -> QueryResult {
    query(root, 1, sql, &QueryLimits::default()).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

fn run_of_an_agent() -> Vec<Event> {
    vec![
        track("r1", "rag_query_triggered", "2025-12-05T09:30:00.100Z", json!({"trace_id": "t1", "knowledge_base_id": "kb_1", "workspace_id": "ws_1"})),
        track(
            "r2",
            "$ai_generation",
            "2025-12-05T09:30:01Z",
            json!({"$ai_trace_id": "t1", "$ai_model": "gpt-4o-mini", "$ai_provider": "openai", "$ai_input_tokens": 1000, "$ai_output_tokens": 200, "$ai_total_cost_usd": 0.000123456789, "agent_id": "agent_9", "workspace_id": "ws_1"}),
        ),
        track(
            "r3",
            "$ai_generation",
            "2025-12-05T09:30:02Z",
            json!({"$ai_trace_id": "t1", "$ai_model": "gpt-4o-mini", "$ai_provider": "openai", "$ai_input_tokens": 500, "$ai_output_tokens": 100, "$ai_total_cost_usd": 0.2, "$ai_tool_call_count": 2}),
        ),
        track("r4", "model_cost", "2025-12-05T09:30:02Z", json!({"trace_id": "t1", "model": "gpt-4o-mini", "cost_usd": 9.99})),
        track("r5", "tool_used", "2025-12-05T09:30:03Z", json!({"trace_id": "t1", "tool_name": "sql", "success": false, "error_type": "timeout", "flow_id": "flow_42"})),
        track("r6", "prompt_blocked", "2025-12-06T09:30:04Z", json!({"trace_id": "t1", "reason": "pii"})),
        track("s1", "flow_executed", "2025-12-06T10:00:00Z", json!({"trace_id": "t2", "flow_id": "flow_7", "duration_ms": 830})),
    ]
}

#[tokio::test]
async fn counts_sums_and_exact_costs() {
    let lake = lake(&[run_of_an_agent()]);
    let counts = run(lake.path(), "SELECT event, count(*) AS n FROM event_logs GROUP BY event ORDER BY event").await;
    assert_eq!(counts.columns, vec!["event", "n"]);
    assert_eq!(counts.types, vec!["string", "int"]);
    assert_eq!(counts.results[0], vec![json!("$ai_generation"), json!(2)]);
    assert_eq!(counts.results.len(), 6);
    let cost = run(lake.path(), "SELECT model, sum(cost_usd) AS cost FROM model_cost_logs GROUP BY model").await;
    assert_eq!(cost.results, vec![vec![json!("gpt-4o-mini"), json!("10.190123456789")]], "exact decimal sum");
    assert!(cost.types[1].starts_with("decimal("), "{:?}", cost.types);
    let by_day = run(lake.path(), "SELECT date_trunc('day', \"timestamp\") AS day, count(*) AS n FROM tracks GROUP BY 1 ORDER BY 1").await;
    assert_eq!(by_day.results, vec![vec![json!("2025-12-05T00:00:00.000000Z"), json!(5)], vec![json!("2025-12-06T00:00:00.000000Z"), json!(2)]]);
    let tables = run(lake.path(), "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1").await;
    let names: Vec<&str> = tables.results.iter().map(|r| r[0].as_str().unwrap()).collect();
    for t in ["agent_trace_history", "event_logs", "model_cost_logs", "tool_used", "tracks"] {
        assert!(names.contains(&t), "{t} in {names:?}");
    }
}

/// A session registers only the tables a statement names: views, tables named in a CTE, a
/// subquery or a join, in any case, are all there.
#[tokio::test]
async fn tables_named_anywhere_in_a_statement_are_there() {
    let mut events = run_of_an_agent();
    events.push(event(1, "i1", "identify", "", "2025-12-05T09:00:00Z", json!({}), json!({"plan": "pro"})));
    let lake = lake(&[events]);
    let calls = run(lake.path(), "SELECT count(*) FROM model_cost_logs").await.results[0][0].clone();
    let users = run(lake.path(), "SELECT count(*) FROM users").await.results[0][0].clone();
    let traces = run(lake.path(), "SELECT count(DISTINCT trace_id) FROM model_cost_logs").await.results[0][0].clone();
    let joined = run(
        lake.path(),
        "WITH calls AS (SELECT trace_id, count(*) AS n FROM MODEL_COST_LOGS GROUP BY trace_id)
         SELECT sum(calls.n) AS calls, count(*) AS traces, (SELECT count(*) FROM Users) AS users FROM agent_trace_history h JOIN calls ON calls.trace_id = h.trace_id",
    )
    .await;
    assert_eq!(joined.results, vec![vec![calls, traces, users]]);
}

#[tokio::test]
async fn trace_history_is_right_whatever_the_order_and_loads() {
    let events = run_of_an_agent();
    let mut expected = TraceSummary::new("t1");
    for e in &events {
        expected.add(e);
    }
    let expected = expected.row().unwrap();
    // The trace's events arrive late and out of order, over three loads.
    let windows = vec![vec![events[4].clone(), events[6].clone()], vec![events[2].clone(), events[0].clone()], vec![events[5].clone(), events[1].clone(), events[3].clone()]];
    let lake = lake(&windows);
    let got = run(lake.path(), "SELECT * FROM agent_trace_history WHERE trace_id = 't1'").await;
    assert_eq!(got.results.len(), 1);
    let row: std::collections::BTreeMap<&str, &Value> = got.columns.iter().map(String::as_str).zip(&got.results[0]).collect();
    for (column, (_, value)) in &expected.columns {
        let got = row.get(column.as_str()).unwrap_or_else(|| panic!("no column {column}"));
        match column.as_str() {
            // RFC 3339 both; the fold keeps the event's precision, the lake microseconds.
            "first_timestamp" | "last_timestamp" | "received_at" => assert_eq!(got.as_str().unwrap().get(..19), value.as_str().unwrap().get(..19), "{column}"),
            "cost_usd" => assert_eq!(got.as_str().unwrap(), value.as_str().unwrap().trim_end_matches('0').trim_end_matches('.'), "{column}"),
            _ => assert_eq!(*got, value, "{column}"),
        }
    }
    assert_eq!(row["status"], &json!("error"));
    assert_eq!(row["llm_calls"], &json!(2), "the $ai_* calls, not the model_cost event");
    assert_eq!(row["tool_calls"], &json!(3));
    assert_eq!(row["first_error"], &json!("timeout"));
    assert_eq!(row["duration_ms"], &json!(86_403_900));
}

#[tokio::test]
async fn users_are_merged_latest_non_null() {
    let lake = lake(&[
        vec![event(1, "i1", "identify", "", "2025-12-05T09:00:00Z", json!({}), json!({"plan": "free", "company": "Acme"}))],
        vec![event(1, "i2", "identify", "", "2025-12-05T10:00:00Z", json!({}), json!({"plan": "team", "seats": 3}))],
    ]);
    let users = run(lake.path(), "SELECT id, plan, company, seats FROM users").await;
    assert_eq!(users.results, vec![vec![json!("user_7"), json!("team"), json!("Acme"), json!(3)]]);
    let identifies = run(lake.path(), "SELECT count(*) FROM identifies").await;
    assert_eq!(identifies.results, vec![vec![json!(2)]]);
    // A track event named like a reserved word has RudderStack's `_` in front, and is a table.
    let lake = self::lake(&[vec![track("o1", "order", "2025-12-05T09:00:00Z", json!({"total": 12}))]]);
    assert_eq!(run(lake.path(), "SELECT total FROM _order").await.results, vec![vec![json!(12)]]);
}

#[tokio::test]
async fn writes_other_projects_and_files_are_refused() {
    let mut events = run_of_an_agent();
    events.push(event(2, "p2", "track", "secret_event", "2025-12-05T09:00:00Z", json!({"x": 1}), json!({})));
    let lake = lake(&[events]);
    for sql in [
        "INSERT INTO tracks (id) VALUES ('x')",
        "DELETE FROM tracks",
        "CREATE TABLE t AS SELECT 1",
        "CREATE VIEW v AS SELECT 1",
        "DROP TABLE tracks",
        "CREATE EXTERNAL TABLE leak STORED AS PARQUET LOCATION '/etc/'",
        "COPY (SELECT * FROM tracks) TO '/tmp/out.parquet'",
        "SET datafusion.execution.batch_size = 1",
    ] {
        let error = query(lake.path(), 1, sql, &QueryLimits::default()).await.unwrap_err();
        assert!(matches!(error, QueryError::ReadOnly(_)), "{sql}: {error:?}");
    }
    for sql in ["SELECT * FROM secret_event", "SELECT * FROM 'project=2/event_logs/'", "SELECT * FROM '/etc/passwd'"] {
        let error = query(lake.path(), 1, sql, &QueryLimits::default()).await.unwrap_err();
        assert!(matches!(error, QueryError::Invalid(_)), "{sql}: {error:?}");
    }
    let other = query(lake.path(), 2, "SELECT count(*) FROM event_logs", &QueryLimits::default()).await.unwrap();
    assert_eq!(other.results, vec![vec![json!(1)]], "project 2 sees its own event only");
    let empty = query(lake.path(), 3, "SELECT 1 AS one", &QueryLimits::default()).await.unwrap();
    assert_eq!(empty.results, vec![vec![json!(1)]]);
}

#[tokio::test]
async fn rows_and_time_are_limited() {
    let lake = lake(&[run_of_an_agent()]);
    let limits = QueryLimits {
        max_rows: 3,
        ..QueryLimits::default()
    };
    let error = query(lake.path(), 1, "SELECT * FROM event_logs", &limits).await.unwrap_err();
    assert!(matches!(error, QueryError::TooManyRows(3)), "{error:?}");
    assert_eq!(query(lake.path(), 1, "SELECT * FROM event_logs LIMIT 3", &limits).await.unwrap().results.len(), 3);
    let limits = QueryLimits {
        timeout: Duration::from_millis(300),
        ..QueryLimits::default()
    };
    let engine = QueryEngine::new(lake.path(), limits.clone(), || {}).unwrap();
    // 7^12 rows, each looked at: never finishes in time.
    let endless = "SELECT count(*) FROM event_logs a, event_logs b, event_logs c, event_logs d, event_logs e, event_logs f, event_logs g, event_logs h, event_logs i, event_logs j, event_logs k, event_logs l WHERE concat(a.id, b.id, c.id, d.id, e.id, f.id, g.id, h.id, i.id, j.id, k.id, l.id) <> 'x'";
    let started = std::time::Instant::now();
    let error = engine.query(1, endless).await.unwrap_err();
    assert!(matches!(error, QueryError::Timeout(_)), "{error:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    // The aborted query stops at its next yield and gives its threads back (this machine is
    // shared: a few tries, each within the limit).
    let mut answer = engine.query(1, "SELECT count(*) FROM event_logs").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while answer.is_err() && std::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        answer = engine.query(1, "SELECT count(*) FROM event_logs").await;
    }
    assert_eq!(answer.unwrap().results, vec![vec![json!(7)]]);
    let error = query(lake.path(), 1, "SELEC nonsense", &limits).await.unwrap_err();
    assert!(matches!(error, QueryError::Invalid(_)), "{error:?}");
}

/// The engine keeps the files' footers across queries, but each query lists the files there
/// are: files added, removed or merged since are seen as they are.
#[tokio::test]
async fn an_engine_sees_files_added_and_compacted_between_queries() {
    let later = vec![
        track("t1", "tool_used", "2025-12-05T11:00:00Z", json!({"tool_name": "web_search"})),
        track("t2", "tool_used", "2025-12-05T11:01:00Z", json!({"tool_name": "sql_query", "rows": 3})),
    ];
    let lake = lake(&[run_of_an_agent(), later]);
    // The second window's files, set aside: named `part-{first seq}-…`, its first seq is 8.
    let second: Vec<PathBuf> = walk(lake.path()).into_iter().filter(|p| p.file_name().unwrap().to_str().unwrap().starts_with("part-00000000000000000008-")).collect();
    assert!(!second.is_empty());
    let aside = tempfile::tempdir().unwrap();
    for (i, path) in second.iter().enumerate() {
        std::fs::rename(path, aside.path().join(i.to_string())).unwrap();
    }
    let engine = QueryEngine::new(lake.path(), QueryLimits::default(), || {}).unwrap();
    let count = async |sql: &str| engine.query(1, sql).await.unwrap().results[0][0].clone();
    assert_eq!(count("SELECT count(*) FROM event_logs").await, json!(7));
    for (i, path) in second.iter().enumerate() {
        std::fs::rename(aside.path().join(i.to_string()), path).unwrap();
    }
    assert_eq!(count("SELECT count(*) FROM event_logs").await, json!(9), "a new window's files are read");
    assert_eq!(count("SELECT count(*) FROM tool_used WHERE \"rows\" = 3").await, json!(1), "with their new column");
    let day = lake.path().join("project=1/event_logs/day=2025-12-05");
    let inputs: Vec<(PathBuf, Vec<u8>)> = walk(&day).into_iter().map(|p| (p.clone(), std::fs::read(&p).unwrap())).collect();
    assert!(switchyard_pipeline::lake::compact_dir(&day, 0, u64::MAX).unwrap().is_some(), "the day's files merged into one");
    assert_eq!(count("SELECT count(*) FROM event_logs").await, json!(9), "the merged file read, not the removed ones");
    // Compaction's output in place, its inputs not yet removed: each row is read once.
    for (path, bytes) in &inputs {
        std::fs::write(path, bytes).unwrap();
    }
    assert_eq!(walk(&day).len(), inputs.len() + 1);
    let both = engine.query(1, "SELECT count(*), count(DISTINCT id) FROM event_logs").await.unwrap();
    assert_eq!(both.results[0], vec![json!(9), json!(9)], "files a compacted file covers are not read");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// A file removed after the plan listed it and before it is read (a compaction's input) gives
/// an error the query recognises, to run again over the files there are.
#[tokio::test]
async fn a_listed_file_that_is_gone_is_recognised() {
    let lake = lake(&[run_of_an_agent()]);
    let ctx = empty_session(&QueryLimits::default(), None).unwrap();
    let listed = register(&ctx, lake.path(), 1, &[TableReference::bare("event_logs")]).await.unwrap();
    let files = &listed[0].1;
    assert!(!files.is_empty());
    let mut stream = ctx.sql("SELECT count(DISTINCT id) FROM event_logs").await.unwrap().execute_stream().await.unwrap();
    for file in files {
        std::fs::remove_file(file).unwrap();
    }
    let mut error = None;
    while let Some(batch) = stream.next().await {
        if let Err(e) = batch {
            error = Some(QueryError::from(e));
            break;
        }
    }
    match error {
        Some(QueryError::Engine(message)) => assert!(vanished(&message), "{message}"),
        other => panic!("not an engine error: {other:?}"),
    }
}

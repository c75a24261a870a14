//! The PostgreSQL warehouse loader against a real PostgreSQL 15 (started by the test, see
//! `support::pg`), fed from a real event log.

mod support;

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use support::pg::PgCluster;
use switchyard_event::Event;
use switchyard_pipeline::postgres::{consumer_name, run, PgDecimal, PostgresConfig, LOADS_TABLE};
use switchyard_pipeline::LoadStatus;
use switchyard_pipeline::Stores;
use switchyard_store::{AppendBatch, ControlStore, EventLog, LogRecord, SqliteLog, SqliteLogConfig};
use switchyard_warehouse::Decimal;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::Client;

const SCHEMA: &str = "analytics";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

struct TestStores {
    log: SqliteLog,
    control: ControlStore,
}

impl Stores for TestStores {
    fn log(&self) -> &SqliteLog {
        &self.log
    }
    fn control(&self) -> &ControlStore {
        &self.control
    }
}

fn stores(dir: &std::path::Path) -> Arc<TestStores> {
    Arc::new(TestStores {
        log: SqliteLog::open(&dir.join("log.db"), SqliteLogConfig::default()).unwrap(),
        control: ControlStore::open(&dir.join("control.db")).unwrap(),
    })
}

/// An event as the intake stores it, with the catalog's common properties.
fn event(project_id: i64, id: &str, kind: &str, name: &str, at: &str, properties: Value, traits: Value) -> Event {
    let mut props = json!({"span_id": "00f067aa0ba902b7", "workspace_id": "ws_1", "organization_id": "org_1"});
    props.as_object_mut().unwrap().extend(properties.as_object().unwrap().clone());
    serde_json::from_value(json!({
        "id": id, "project_id": project_id, "protocol": "segment", "type": kind, "event": name,
        "distinct_id": "user_7", "user_id": "user_7", "anonymous_id": "anon_3",
        "properties": props, "traits": traits,
        "context": {"library": {"name": "analytics-python", "version": "2.3.0"}, "traits": {"plan": "pro"}},
        "timestamp": at, "sent_at": at, "received_at": at, "request_ip": "198.51.100.4"
    }))
    .unwrap()
}

/// The same event in a trace.
fn traced(mut event: Event) -> Event {
    event.trace_id = Some(TRACE.into());
    event.properties.insert("trace_id".into(), json!(TRACE));
    event
}

fn record(event: &Event) -> LogRecord {
    LogRecord {
        id: event.id.clone(),
        project_id: event.project_id,
        kind: event.kind.as_str(),
        event: event.event.clone(),
        distinct_id: event.distinct_id.clone(),
        trace_id: event.trace_id.clone(),
        timestamp: event.timestamp.clone(),
        received_at: event.received_at.clone(),
        body: serde_json::to_string(event).unwrap(),
        person_update: false,
    }
}

/// Appends; gives the last seq.
async fn append(stores: &TestStores, records: Vec<LogRecord>) -> i64 {
    let receipt = stores
        .log
        .append(AppendBatch {
            events: records,
            ..Default::default()
        })
        .await
        .unwrap();
    receipt.last_seq.expect("events appended")
}

async fn append_events(stores: &TestStores, events: &[Event]) -> i64 {
    append(stores, events.iter().map(record).collect()).await
}

fn config(cluster: &PgCluster) -> PostgresConfig {
    PostgresConfig {
        max_events: 100,
        max_wait: Duration::from_millis(50),
        ..PostgresConfig::new(1, 1, cluster.url(), SCHEMA)
    }
}

struct Loader {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    status: Arc<LoadStatus>,
}

fn start(stores: &Arc<TestStores>, config: PostgresConfig) -> Loader {
    let (stop, stop_rx) = watch::channel(false);
    let status = Arc::new(LoadStatus::default());
    let task = tokio::spawn(run(stores.clone() as Arc<dyn Stores>, config, status.clone(), stop_rx));
    Loader { stop, task, status }
}

impl Loader {
    async fn stop(self) -> Arc<LoadStatus> {
        self.stop.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the loader stops")
            .unwrap();
        self.status
    }
}

async fn wait_until<F: Future<Output = bool>>(what: &str, mut check: impl FnMut() -> F) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the log's cursor and the loader's status are both at `position`: the status is
/// updated after the log's commit, and a loader stopped in between never counts its last window.
async fn wait_loaded(stores: &TestStores, loader: &Loader, position: i64) {
    let consumer = consumer_name(1);
    wait_until(&format!("the log cursor and the loader's status are at {position}"), || async {
        stores.log.cursor(&consumer).await.unwrap() == Some(position) && loader.status.snapshot()["position"] == json!(position)
    })
    .await;
}

async fn count(client: &Client, table: &str) -> i64 {
    client.query_one(&format!("SELECT count(*) FROM {SCHEMA}.{table}"), &[]).await.unwrap().get(0)
}

async fn ids(client: &Client, table: &str) -> Vec<String> {
    let rows = client.query(&format!("SELECT id FROM {SCHEMA}.{table} ORDER BY id"), &[]).await.unwrap();
    rows.iter().map(|r| r.get(0)).collect()
}

/// `information_schema`'s data type of a column (None: no such column).
async fn column_type(client: &Client, table: &str, column: &str) -> Option<String> {
    client
        .query_opt(
            "SELECT data_type::text FROM information_schema.columns WHERE table_schema = $1 AND table_name = $2 AND column_name = $3",
            &[&SCHEMA, &table, &column],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

async fn pg_position(client: &Client) -> Option<i64> {
    client
        .query_opt(
            &format!("SELECT position FROM {SCHEMA}.{LOADS_TABLE} WHERE consumer = $1"),
            &[&consumer_name(1)],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// The discards as (row_id, table, column, value, reason), sorted.
async fn discards(client: &Client) -> Vec<(String, String, String, String, String)> {
    let rows = client
        .query(
            &format!("SELECT row_id, table_name, column_name, column_value, reason FROM {SCHEMA}.rudder_discards ORDER BY 1, 2, 3"),
            &[],
        )
        .await
        .unwrap();
    rows.iter().map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4))).collect()
}

/// When `tool_used` row `t1` was last loaded.
async fn stamp(client: &Client) -> DateTime<Utc> {
    client
        .query_one(&format!("SELECT uuid_ts FROM {SCHEMA}.tool_used WHERE id = 't1'"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn counts(client: &Client) -> Vec<i64> {
    let mut counts = Vec::new();
    for table in ["tracks", "tool_used", "identifies", "users", "event_logs"] {
        counts.push(count(client, table).await);
    }
    counts
}

fn time(text: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_load_into_typed_tables_with_users_merged_and_exact_cost() {
    let cluster = PgCluster::start_new();
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(dir.path());
    let events = vec![
        traced(event(
            1,
            "t1",
            "track",
            "tool_used",
            "2025-12-05T09:30:00Z",
            json!({"tool_name": "web_search", "tool_type": "builtin", "flow_id": "flow_42", "node_id": "n1", "run_id": "run_1", "duration_ms": 120, "success": true}),
            json!({}),
        )),
        traced(event(
            1,
            "f1",
            "track",
            "flow_executed",
            "2025-12-05T09:30:02Z",
            json!({"flow_id": "flow_42", "flow_version": "3", "run_id": "run_1", "status": "success", "duration_ms": 1830, "node_count": 5, "nodes_failed": 0, "trigger": "schedule"}),
            json!({}),
        )),
        traced(event(
            1,
            "a1",
            "track",
            "agent_execution",
            "2025-12-05T09:30:01Z",
            json!({"agent_id": "agent_9", "run_id": "run_1", "model": "claude-sonnet-4-5", "provider": "anthropic", "input_tokens": 1200, "output_tokens": 340, "cached_input_tokens": 200, "cost_usd": 0.0042, "duration_ms": 2100, "status": "success", "tool_calls": 2}),
            json!({}),
        )),
        traced(event(
            1,
            "g1",
            "track",
            "$ai_generation",
            "2025-12-05T09:30:01.123456Z",
            json!({"$ai_model": "gpt-4o-mini", "$ai_provider": "openai", "$ai_input_tokens": 1200, "$ai_output_tokens": 300, "$ai_total_cost_usd": 0.000123456789, "$ai_latency": 0.8}),
            json!({}),
        )),
        event(
            1,
            "i1",
            "identify",
            "$identify",
            "2025-12-05T09:00:00Z",
            json!({}),
            json!({"email": "ada@example.com", "plan": "free", "seats": 1, "company": "Acme"}),
        ),
        event(
            1,
            "i2",
            "identify",
            "$identify",
            "2025-12-05T10:00:00Z",
            json!({}),
            json!({"plan": "team", "seats": 5}),
        ),
        // Another project's event: not this warehouse's.
        event(2, "o1", "track", "tool_used", "2025-12-05T09:30:00Z", json!({"tool_name": "calc"}), json!({})),
    ];
    let last = append_events(&stores, &events).await;
    let loader = start(&stores, config(&cluster));
    wait_loaded(&stores, &loader, last).await;
    let status = loader.stop().await;

    let client = cluster.client().await;
    assert_eq!(ids(&client, "tracks").await, ["a1", "f1", "g1", "t1"]);
    assert_eq!(ids(&client, "tool_used").await, ["t1"]);
    assert_eq!(ids(&client, "identifies").await, ["i1", "i2"]);
    assert_eq!(ids(&client, "event_logs").await, ["a1", "f1", "g1", "i1", "i2", "t1"]);
    assert_eq!(ids(&client, "agent_trace_events").await, ["a1", "f1", "g1", "t1"]);
    // The trace's summary is a view over its events.
    let trace = client
        .query_one(&format!("SELECT events, llm_calls, cost_usd::text, status, agent_id, flow_id, duration_ms FROM {SCHEMA}.agent_trace_history"), &[])
        .await
        .unwrap();
    assert_eq!(trace.get::<_, i64>(0), 4);
    assert_eq!(trace.get::<_, i64>(1), 1, "the $ai_generation");
    assert_eq!(trace.get::<_, String>(2), "0.000123456789");
    assert_eq!(trace.get::<_, String>(3), "success");
    assert_eq!(trace.get::<_, String>(4), "agent_9");
    assert_eq!(trace.get::<_, String>(5), "flow_42");
    assert_eq!(trace.get::<_, i64>(6), 2000);

    let tool = client
        .query_one(
            &format!("SELECT duration_ms, success, tool_name, \"timestamp\", context_library_name, event, uuid_ts FROM {SCHEMA}.tool_used"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(tool.get::<_, i64>(0), 120);
    assert!(tool.get::<_, bool>(1));
    assert_eq!(tool.get::<_, String>(2), "web_search");
    assert_eq!(tool.get::<_, DateTime<Utc>>(3), time("2025-12-05T09:30:00Z"));
    assert_eq!(tool.get::<_, String>(4), "analytics-python");
    assert_eq!(tool.get::<_, String>(5), "tool_used");
    let flow = client
        .query_one(&format!("SELECT node_count, flow_version, \"trigger\" FROM {SCHEMA}.flow_executed"), &[])
        .await
        .unwrap();
    assert_eq!(
        (flow.get::<_, i64>(0), flow.get::<_, String>(1), flow.get::<_, String>(2)),
        (5, "3".into(), "schedule".into())
    );
    let agent = client
        .query_one(&format!("SELECT cost_usd, input_tokens, model FROM {SCHEMA}.agent_execution"), &[])
        .await
        .unwrap();
    assert_eq!(
        (agent.get::<_, f64>(0), agent.get::<_, i64>(1), agent.get::<_, String>(2)),
        (0.0042, 1200, "claude-sonnet-4-5".into())
    );

    // The exact cost, to the 12th decimal.
    let cost = client
        .query_one(
            &format!("SELECT cost_usd::text, input_tokens, output_tokens, model, provider, \"timestamp\" FROM {SCHEMA}.model_cost_logs WHERE id = 'g1'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cost.get::<_, String>(0), "0.000123456789");
    assert_eq!((cost.get::<_, i64>(1), cost.get::<_, i64>(2)), (1200, 300));
    assert_eq!((cost.get::<_, String>(3), cost.get::<_, String>(4)), ("gpt-4o-mini".into(), "openai".into()));
    assert_eq!(cost.get::<_, DateTime<Utc>>(5), time("2025-12-05T09:30:01.123456Z"));
    let trace_cost: String = client
        .query_one(&format!("SELECT sum(cost_usd)::text FROM {SCHEMA}.agent_trace_events"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(trace_cost, "0.000123456789");

    // users: one row per user, the latest non-null value of each column.
    let user = client
        .query_one(&format!("SELECT id, email, plan, seats, company, context_traits_plan FROM {SCHEMA}.users"), &[])
        .await
        .unwrap();
    assert_eq!(user.get::<_, String>(0), "user_7");
    assert_eq!(user.get::<_, String>(1), "ada@example.com", "kept: the later identify has no email");
    assert_eq!((user.get::<_, String>(2), user.get::<_, i64>(3)), ("team".into(), 5));
    assert_eq!((user.get::<_, String>(4), user.get::<_, String>(5)), ("Acme".into(), "pro".into()));

    let log = client
        .query_one(
            &format!("SELECT properties, status, latency_ms, trace_id, workspace_id, \"type\" FROM {SCHEMA}.event_logs WHERE id = 't1'"),
            &[],
        )
        .await
        .unwrap();
    let properties: Value = log.get(0);
    assert_eq!(
        (properties["tool_name"].clone(), properties["duration_ms"].clone()),
        (json!("web_search"), json!(120))
    );
    assert_eq!((log.get::<_, String>(1), log.get::<_, i64>(2)), ("success".into(), 120));
    assert_eq!(
        (log.get::<_, String>(3), log.get::<_, String>(4), log.get::<_, String>(5)),
        (TRACE.into(), "ws_1".into(), "track".into())
    );
    let identify_latency: Option<i64> = client
        .query_one(&format!("SELECT latency_ms FROM {SCHEMA}.event_logs WHERE id = 'i1'"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(identify_latency, None, "an event without a latency has NULL there");

    for (table, column, expected) in [
        ("tool_used", "id", "text"),
        ("tool_used", "duration_ms", "bigint"),
        ("tool_used", "success", "boolean"),
        ("tool_used", "tool_name", "text"),
        ("tool_used", "timestamp", "timestamp with time zone"),
        ("tool_used", "uuid_ts", "timestamp with time zone"),
        ("agent_execution", "cost_usd", "double precision"),
        ("event_logs", "properties", "jsonb"),
        ("event_logs", "context", "jsonb"),
        ("model_cost_logs", "cost_usd", "numeric"),
        ("model_cost_logs", "agent_id", "text"),
        ("users", "seats", "bigint"),
    ] {
        assert_eq!(column_type(&client, table, column).await.as_deref(), Some(expected), "{table}.{column}");
    }
    let numeric: (i32, i32) = client
        .query_one(
            "SELECT numeric_precision::int4, numeric_scale::int4 FROM information_schema.columns WHERE table_schema = $1 AND table_name = 'model_cost_logs' AND column_name = 'cost_usd'",
            &[&SCHEMA],
        )
        .await
        .map(|r| (r.get(0), r.get(1)))
        .unwrap();
    assert_eq!(numeric, (38, 12));
    // Keys: id, so a second row of the same id cannot be inserted.
    let duplicate = client.execute(&format!("INSERT INTO {SCHEMA}.tool_used (id) VALUES ('t1')"), &[]).await;
    assert!(duplicate.is_err(), "tool_used has its primary key");

    // The cursor is in PostgreSQL, and the log's copy agrees.
    assert_eq!(pg_position(&client).await, Some(last));
    assert_eq!(stores.log.cursor(&consumer_name(1)).await.unwrap(), Some(last));
    let snapshot = status.snapshot();
    assert_eq!(snapshot["loaded_events"], json!(6), "{snapshot}");
    assert_eq!(
        (snapshot["failures"].clone(), snapshot["position"].clone(), snapshot["discards"].clone()),
        (json!(0), json!(last), json!(0))
    );
    assert!(snapshot["last_load_at"].is_string() && snapshot["last_error"].is_null(), "{snapshot}");
    assert_eq!(column_type(&client, "tracks", "calc").await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_properties_add_columns_and_refused_values_go_to_the_discards() {
    let cluster = PgCluster::start_new();
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(dir.path());
    let tool = |id: &str, props: Value| event(1, id, "track", "tool_used", "2025-12-05T09:30:00Z", props, json!({}));
    let first = append_events(&stores, &[tool("t1", json!({"tool_name": "web_search", "duration_ms": 120, "success": true}))]).await;
    let loader = start(&stores, config(&cluster));
    wait_loaded(&stores, &loader, first).await;
    let client = cluster.client().await;
    assert_eq!(column_type(&client, "tool_used", "error_type").await, None);

    let mut ancient = tool("t5", json!({"tool_name": "calc"}));
    ancient.sent_at = Some("-5000-01-01T00:00:00".into());
    let unreadable = LogRecord {
        body: "not an event".into(),
        ..record(&tool("bad", json!({})))
    };
    let records = vec![
        record(&tool(
            "t2",
            json!({"tool_name": "sql", "duration_ms": 80, "success": false, "error_type": "timeout"}),
        )),
        record(&tool("t3", json!({"tool_name": "mcp", "duration_ms": "slow", "success": true}))),
        record(&tool("t4", json!({"tool_name": "bad\u{0}name", "duration_ms": 5}))),
        unreadable,
        record(&ancient),
        // An event named like the cursors' table gets a table of its own.
        record(&event(
            1,
            "x1",
            "track",
            "_switchyard_loads",
            "2025-12-05T09:30:00Z",
            json!({"n": 1}),
            json!({}),
        )),
    ];
    let last = append(&stores, records).await;
    wait_loaded(&stores, &loader, last).await;
    let status = loader.stop().await;

    // A new property: a new column, typed by its first value.
    assert_eq!(column_type(&client, "tool_used", "error_type").await.as_deref(), Some("text"));
    assert_eq!(ids(&client, "tool_used").await, ["t1", "t2", "t3", "t4", "t5"]);
    let rows = client
        .query(
            &format!("SELECT id, duration_ms, tool_name, error_type, sent_at FROM {SCHEMA}.tool_used ORDER BY id"),
            &[],
        )
        .await
        .unwrap();
    type ToolRow = (String, Option<i64>, Option<String>, Option<String>, bool);
    let got: Vec<ToolRow> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get::<_, Option<DateTime<Utc>>>(4).is_some()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("t1".into(), Some(120), Some("web_search".into()), None, true),
            ("t2".into(), Some(80), Some("sql".into()), Some("timeout".into()), true),
            ("t3".into(), None, Some("mcp".into()), None, true),
            ("t4".into(), Some(5), None, None, true),
            ("t5".into(), None, Some("calc".into()), None, false),
        ]
    );
    let discarded = discards(&client).await;
    let incompatible = "incompatible schema conversion from string to int".to_owned();
    let text_nul = "PostgreSQL text cannot hold the NUL character (\\u0000)".to_owned();
    let json_nul = "PostgreSQL jsonb cannot hold the NUL character (\\u0000)".to_owned();
    let range = "datetime outside PostgreSQL's range (4714-11-24 BC to 294276 AD)".to_owned();
    let expected = vec![
        (
            "t3".to_owned(),
            "event_logs".to_owned(),
            "latency_ms".to_owned(),
            "slow".to_owned(),
            incompatible.clone(),
        ),
        ("t3".into(), "tool_used".into(), "duration_ms".into(), "slow".into(), incompatible),
        ("t4".into(), "event_logs".into(), "properties".into(), String::new(), json_nul),
        ("t4".into(), "tool_used".into(), "tool_name".into(), "bad\\u0000name".into(), text_nul),
        (
            "t5".into(),
            "tool_used".into(),
            "sent_at".into(),
            "-5000-01-01T00:00:00.000000Z".into(),
            range.clone(),
        ),
        ("t5".into(), "tracks".into(), "sent_at".into(), "-5000-01-01T00:00:00.000000Z".into(), range),
    ];
    assert_eq!(discarded.len(), expected.len(), "{discarded:#?}");
    for (got, want) in discarded.iter().zip(&expected) {
        if want.2 == "properties" {
            // The properties' JSON text, with the NUL as its JSON escape.
            assert_eq!((&got.0, &got.1, &got.2, &got.4), (&want.0, &want.1, &want.2, &want.4));
            let value: Value = serde_json::from_str(&got.3).unwrap();
            assert_eq!(value["tool_name"], json!("bad\u{0}name"));
        } else {
            assert_eq!(got, want);
        }
    }
    let discard_types = [
        ("row_id", "text"),
        ("column_value", "text"),
        ("received_at", "timestamp with time zone"),
        ("uuid_ts", "timestamp with time zone"),
    ];
    for (column, ty) in discard_types {
        assert_eq!(column_type(&client, "rudder_discards", column).await.as_deref(), Some(ty), "{column}");
    }

    assert_eq!(ids(&client, "__switchyard_loads").await, ["x1"]);
    assert_eq!(count(&client, LOADS_TABLE).await, 1);
    assert_eq!(pg_position(&client).await, Some(last));
    let snapshot = status.snapshot();
    assert_eq!(
        (snapshot["discards"].clone(), snapshot["skipped"].clone(), snapshot["loaded_events"].clone()),
        (json!(6), json!(1), json!(6)),
        "{snapshot}"
    );
    assert_eq!(snapshot["failures"], json!(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn windows_load_exactly_once_across_restarts_and_replays() {
    let cluster = PgCluster::start_new();
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(dir.path());
    let consumer = consumer_name(1);
    let first = append_events(
        &stores,
        &[
            event(
                1,
                "t1",
                "track",
                "tool_used",
                "2025-12-05T09:30:00Z",
                json!({"tool_name": "web_search", "flow_version": "v1"}),
                json!({}),
            ),
            event(
                1,
                "i1",
                "identify",
                "$identify",
                "2025-12-05T09:00:00Z",
                json!({}),
                json!({"email": "ada@example.com", "plan": "free"}),
            ),
            event(1, "i2", "identify", "$identify", "2025-12-05T10:00:00Z", json!({}), json!({"plan": "team"})),
        ],
    )
    .await;
    let loader = start(&stores, config(&cluster));
    wait_loaded(&stores, &loader, first).await;
    loader.stop().await;
    let client = cluster.client().await;
    let loaded_at = stamp(&client).await;

    // A crash after PostgreSQL's COMMIT, before the log's commit: the log's cursor is behind.
    stores.log.commit(&consumer, 0).await.unwrap();
    let loader = start(&stores, config(&cluster));
    wait_loaded(&stores, &loader, first).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(stamp(&client).await, loaded_at, "the window was not loaded again");
    assert_eq!(loader.status.snapshot()["loaded_events"], json!(0));

    // The schema was read back from PostgreSQL: flow_version stays text, so an int fits it.
    let second = append_events(
        &stores,
        &[event(
            1,
            "t2",
            "track",
            "tool_used",
            "2025-12-05T11:00:00Z",
            json!({"tool_name": "sql", "flow_version": 2}),
            json!({}),
        )],
    )
    .await;
    wait_loaded(&stores, &loader, second).await;
    loader.stop().await;
    let version: String = client
        .query_one(&format!("SELECT flow_version FROM {SCHEMA}.tool_used WHERE id = 't2'"), &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(version, "2");
    assert_eq!(column_type(&client, "tool_used", "flow_version").await.as_deref(), Some("text"));
    assert_eq!(pg_position(&client).await, Some(second));

    // A replay of everything (the cursor row deleted): the same rows, none twice.
    let before = counts(&client).await;
    assert_eq!(before, [2, 2, 2, 1, 4]);
    client.execute(&format!("DELETE FROM {SCHEMA}.{LOADS_TABLE}"), &[]).await.unwrap();
    let loader = start(&stores, config(&cluster));
    wait_loaded(&stores, &loader, second).await;
    assert_eq!(pg_position(&client).await, Some(second));
    let status = loader.stop().await;
    assert_eq!(status.snapshot()["loaded_events"], json!(4), "{}", status.snapshot());
    assert_ne!(stamp(&client).await, loaded_at, "the window was loaded again");
    assert_eq!(counts(&client).await, before);
    let user = client.query_one(&format!("SELECT email, plan FROM {SCHEMA}.users"), &[]).await.unwrap();
    assert_eq!((user.get::<_, String>(0), user.get::<_, String>(1)), ("ada@example.com".into(), "team".into()));
    assert_eq!(stores.log.cursor(&consumer).await.unwrap(), Some(second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warehouse_that_is_down_is_retried_until_it_is_up() {
    let mut cluster = PgCluster::init();
    let dir = tempfile::tempdir().unwrap();
    let stores = stores(dir.path());
    let first = append_events(
        &stores,
        &[event(
            1,
            "t1",
            "track",
            "tool_used",
            "2025-12-05T09:30:00Z",
            json!({"tool_name": "web_search"}),
            json!({}),
        )],
    )
    .await;
    let loader = start(&stores, config(&cluster));
    let status = loader.status.clone();
    wait_until("a failure is recorded", || async { status.snapshot()["failures"].as_u64() >= Some(1) }).await;
    let down = status.snapshot();
    assert!(down["last_error"].as_str().unwrap().contains("error connecting to server"), "{down}");
    assert!(down["last_load_at"].is_null());
    assert_eq!(stores.log.cursor(&consumer_name(1)).await.unwrap(), None, "nothing is committed");

    cluster.start();
    wait_loaded(&stores, &loader, first).await;
    let up = status.snapshot();
    assert_eq!(up["failures"], json!(0), "{up}");
    assert!(up["last_load_at"].is_string() && up["last_error"].is_string(), "{up}");
    assert_eq!(up["loaded_events"], json!(1));

    // Down while running: the window waits, nothing is skipped.
    cluster.stop();
    let second = append_events(
        &stores,
        &[event(
            1,
            "t2",
            "track",
            "tool_used",
            "2025-12-05T09:31:00Z",
            json!({"tool_name": "sql"}),
            json!({}),
        )],
    )
    .await;
    wait_until("the failure is recorded", || async { status.snapshot()["failures"].as_u64() >= Some(1) }).await;
    assert_eq!(stores.log.cursor(&consumer_name(1)).await.unwrap(), Some(first));
    cluster.start();
    wait_loaded(&stores, &loader, second).await;
    loader.stop().await;
    let client = cluster.client().await;
    assert_eq!(ids(&client, "tool_used").await, ["t1", "t2"]);
    assert_eq!(status.snapshot()["loaded_events"], json!(2));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exact_decimals_round_trip_through_postgres_numeric() {
    let cluster = PgCluster::start_new();
    let client = cluster.client().await;
    for text in [
        "0",
        "0.000123456789",
        "0.000000000001",
        "-0.000000000001",
        "-1.5",
        "10000",
        "99990000.0001",
        "0.0042135",
        "12345678901234567890123456.999999999999",
        "-99999999999999999999999999.999999999999",
    ] {
        let decimal = Decimal::parse(text).unwrap();
        let units = decimal.0.unsigned_abs();
        let expected = format!(
            "{}{}.{:012}",
            if decimal.0 < 0 { "-" } else { "" },
            units / 10_u128.pow(12),
            units % 10_u128.pow(12)
        );
        let back: String = client.query_one("SELECT $1::numeric::text", &[&PgDecimal(decimal)]).await.unwrap().get(0);
        assert_eq!(back, expected, "{text}");
        let in_column: String = client
            .query_one("SELECT CAST($1 AS numeric(38,12))::text", &[&PgDecimal(decimal)])
            .await
            .unwrap()
            .get(0);
        assert_eq!(in_column, expected, "{text} as numeric(38,12)");
    }
}

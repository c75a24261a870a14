//! Golden rows: the unified events the official SDKs' recorded requests became
//! (`switchyard-server/tests/data/sdk-requests/expected-events.json`) and catalog events with a
//! type conflict and a new property go in; every table's rows come out, column by column with
//! their types, as in `tests/data/expected-rows.json` (regenerate with `UPDATE_GOLDEN=1`, then
//! review the diff), for PostgreSQL's names and the lake's.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Map, Value};
use switchyard_event::Event;
use switchyard_warehouse::{rows_for, Dialect, Schema};

fn manifest() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The SDKs' events (by id, so in a stable order), each given a fixed `received_at` and
/// `timestamp` (the golden file dropped the ones that depend on when it was recorded).
fn sdk_events() -> Vec<Event> {
    let path = manifest().join("../switchyard-server/tests/data/sdk-requests/expected-events.json");
    let golden: BTreeMap<String, Value> = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    golden
        .into_values()
        .map(|mut e| {
            let map = e.as_object_mut().unwrap();
            map.insert("received_at".into(), json!("2026-11-25T12:08:25.000000Z"));
            let offset = map.remove("timestamp_offset_ms").and_then(|v| v.as_i64());
            if let Some(ms) = offset {
                let at = chrono::DateTime::parse_from_rfc3339("2026-11-25T12:08:25Z").unwrap() + chrono::Duration::milliseconds(ms);
                map.insert("timestamp".into(), json!(at.to_rfc3339()));
            } else if !map.contains_key("timestamp") {
                let original = map["original_timestamp"].clone();
                map.insert("timestamp".into(), original);
            }
            serde_json::from_value(e).unwrap()
        })
        .collect()
}

/// Catalog events after the SDKs': a known column gets a value of another type (discarded), a
/// new property arrives (a new column), a trace ends in an error, a model's cost is logged.
fn catalog_events() -> Vec<Event> {
    let base = |id: &str, name: &str, props: Value| -> Event {
        serde_json::from_value(json!({
            "id": id, "project_id": 1, "protocol": "segment", "type": "track", "event": name,
            "distinct_id": "user_42", "user_id": "user_42", "properties": props,
            "timestamp": "2026-11-25T13:00:00Z", "received_at": "2026-11-25T13:00:01.000000Z",
            "trace_id": "trace_catalog_1"
        }))
        .unwrap()
    };
    vec![
        base("c1", "tool_used", json!({"tool_name": "sql", "tool_type": "builtin", "duration_ms": "slow", "success": false, "error_type": "timeout", "workspace_id": "ws_1"})),
        base("c2", "flow_executed", json!({"flow_id": "flow_9", "status": "error", "node_count": 4, "retry_policy": {"max": 3}, "workspace_id": "ws_1"})),
        base("c3", "agent_error", json!({"agent_id": "ag_1", "error_type": "rate_limit", "error_message": "429 from provider", "workspace_id": "ws_1"})),
        base(
            "c4",
            "model_cost",
            json!({"model": "claude-sonnet-4-5", "provider": "anthropic", "input_tokens": 1200, "output_tokens": 340, "cost_usd": 0.00123456789, "agent_id": "ag_1", "run_id": "run_7", "workspace_id": "ws_1", "organization_id": "org_1"}),
        ),
    ]
}

/// Every table's rows: table → row id → column → [type, value], the load time left out.
fn rows(dialect: Dialect) -> Value {
    let mut schema = Schema::with_fixed_tables();
    let mut tables: BTreeMap<String, Vec<Value>> = BTreeMap::new();
    for event in sdk_events().iter().chain(catalog_events().iter()) {
        for row in rows_for(event, dialect) {
            let (row, discards) = schema.admit(row);
            let mut admitted = vec![row];
            admitted.extend(discards.iter().map(|d| schema.admit(d.to_row()).0));
            for row in admitted {
                let columns: Map<String, Value> = row.columns.iter().map(|(c, (t, v))| (c.clone(), json!([t.as_str(), v]))).collect();
                tables.entry(row.table.clone()).or_default().push(Value::Object(columns));
            }
        }
    }
    json!(tables)
}

#[test]
fn sdk_and_catalog_events_become_the_expected_rows() {
    let got = json!({"postgres": rows(Dialect::Postgres), "lake": rows(Dialect::Lake)});
    let path = manifest().join("tests/data/expected-rows.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, serde_json::to_string_pretty(&got).unwrap() + "\n").unwrap();
    }
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(&path).expect("the golden file (UPDATE_GOLDEN=1 writes it)")).unwrap();
    for dialect in ["postgres", "lake"] {
        let (got, expected) = (got[dialect].as_object().unwrap(), expected[dialect].as_object().unwrap());
        assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{dialect}: the tables");
        for (table, rows) in got {
            let (rows, want) = (rows.as_array().unwrap(), expected[table].as_array().unwrap());
            assert_eq!(rows.len(), want.len(), "{dialect}.{table}: the row count");
            for (row, want) in rows.iter().zip(want) {
                for (column, value) in want.as_object().unwrap() {
                    assert_eq!(row.get(column), Some(value), "{dialect}.{table}.{column} of row {}", row["id"]);
                }
                assert_eq!(row.as_object().unwrap().len(), want.as_object().unwrap().len(), "{dialect}.{table}: the columns of row {}", row["id"]);
            }
        }
    }
    // What the golden file must show, whatever it is regenerated from.
    let lake = &got["lake"];
    let discards = lake["rudder_discards"].as_array().unwrap();
    assert!(
        discards.iter().any(|d| d["row_id"][1] == "c1" && d["table_name"][1] == "tool_used" && d["column_name"][1] == "duration_ms" && d["column_value"][1] == "slow"),
        "the string duration is discarded: {discards:?}"
    );
    let flows = lake["flow_executed"].as_array().unwrap();
    let c2 = flows.iter().find(|r| r["id"][1] == "c2").unwrap();
    assert_eq!(c2["retry_policy_max"], json!(["int", 3]), "a new nested property is a new column");
    assert!(flows.iter().filter(|r| r["id"][1] != "c2").all(|r| r.get("retry_policy_max").is_none()));
    let trace = lake["agent_trace_events"].as_array().unwrap().iter().find(|r| r["id"][1] == "c3").unwrap();
    assert_eq!(trace["errors"], json!(["int", 1]));
    assert_eq!(trace["error"], json!(["string", "429 from provider"]));
    let costs = lake["model_cost_logs"].as_array().unwrap();
    assert!(costs.iter().all(|r| r["cost_usd"].is_null() || r["cost_usd"][0] == "decimal"), "costs are exact decimals");
    let c4 = costs.iter().find(|r| r["id"][1] == "c4").unwrap();
    assert_eq!(c4["cost_usd"], json!(["decimal", "0.00123456789"]));
    assert_eq!((&c4["model"][1], &c4["organization_id"][1], &c4["run_id"][1]), (&json!("claude-sonnet-4-5"), &json!("org_1"), &json!("run_7")));
}

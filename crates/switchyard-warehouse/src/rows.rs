//! The rows of one event, in RudderStack's tables and the platform's.
//!
//! RudderStack's tables (`rudder-transformer: src/warehouse/index.js`, `WH*Config.js`):
//! - every call: `id` (message id), `anonymous_id`, `user_id`, `sent_at`, `timestamp`,
//!   `received_at`, `original_timestamp`, `channel`, `context_ip` (`context.ip`, else the
//!   request's address), `context_request_ip`, `context_passed_ip`, and `context_*`;
//! - track: a `tracks` row (standard columns, `event_text` = the name as sent, `event` = the
//!   table name, no properties) and a row in the event's own table (the same plus properties);
//!   an event whose name leaves no table name (`🎉`) has only its `tracks` row;
//! - identify: `identifies` (traits unprefixed) and, when there is a user id, `users` (`id` =
//!   user id, timestamps, `context_traits_*`, traits; no `anonymous_id`), merged column by
//!   column, the latest non-null value winning ([`Merge::LatestNonNull`]);
//! - group: `groups` (`group_id`, traits); page/screen: `pages`/`screens` (`name` = name, else
//!   `properties.name`, properties); alias: `aliases` (`previous_id`, traits).
//!
//! A property named like one of its table's standard columns is dropped, as RudderStack drops
//! it (the value stays in `event_logs.properties`). `uuid_ts` is the load time: the loader sets
//! it ([`Row::stamp`]). Not done: `context_source_*`/`context_destination_*` (no source or
//! destination ids here), the 200-columns-per-event guard, `traits_set_once`.
//!
//! The platform's tables (ours; names and columns from the platform's own migration, see
//! `warehouse.md` §3.5): `event_logs` for every event, `model_cost_logs` for every
//! `model_cost`, `$ai_generation` and `$ai_embedding`; their columns are fixed
//! ([`fixed_tables`]). `agent_trace_history` is a fold over a trace's events: see
//! [`crate::trace`].

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};
use switchyard_event::model::{format_time, parse_time};
use switchyard_event::{Event, EventType};

use crate::flatten::{flatten_into, Columns};
use crate::naming::{self, Dialect};
use crate::types::{coerce, infer, ColumnType, Decimal};

/// How a row is written when a row with the same `id` is there already.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Merge {
    /// The new row replaces the old (every event table: a replay rewrites the same row).
    Replace,
    /// Column by column, the value of the row with the latest `received_at` that has one
    /// (RudderStack's `users`: `FIRST_VALUE(col IGNORE NULLS) … ORDER BY received_at DESC`).
    LatestNonNull,
}

/// One row of one table.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub table: String,
    pub columns: Columns,
    pub merge: Merge,
}

impl Row {
    fn new(table: &str, merge: Merge) -> Row {
        Row {
            table: table.to_owned(),
            columns: Columns::new(),
            merge,
        }
    }

    /// The row's key: its `id` column.
    pub fn id(&self) -> Option<&str> {
        self.columns.get("id").and_then(|(_, v)| v.as_str())
    }

    /// Sets `uuid_ts`, the load time.
    pub fn stamp(&mut self, loaded_at: DateTime<Utc>) {
        self.columns.insert("uuid_ts".into(), (ColumnType::Datetime, Value::String(format_time(loaded_at))));
    }

    fn put(&mut self, column: &str, ty: ColumnType, value: Value) {
        self.columns.insert(column.to_owned(), (ty, value));
    }

    fn text(&mut self, column: &str, value: Option<&str>) {
        if let Some(v) = value.filter(|v| !v.is_empty()) {
            self.put(column, ColumnType::String, Value::String(v.to_owned()));
        }
    }

    /// A value for a column of a fixed type: converted when it fits, else kept with its own
    /// type so [`crate::Schema::admit`] discards it with the reason.
    fn typed(&mut self, column: &str, ty: ColumnType, value: Option<&Value>) {
        let Some((found, v)) = value.and_then(infer) else { return };
        let v = if ty == ColumnType::Json { value.cloned().unwrap_or(v) } else { v };
        match coerce(&v, found, ty) {
            Ok(converted) => self.put(column, ty, converted),
            Err(_) => self.put(column, found, v),
        }
    }

    fn time(&mut self, column: &str, value: Option<&str>) {
        if let Some(text) = value.filter(|v| !v.is_empty()) {
            match parse_time(text) {
                Some(t) => self.put(column, ColumnType::Datetime, Value::String(format_time(t))),
                // Left as text: a datetime column refuses it into the discards.
                None => self.put(column, ColumnType::String, Value::String(text.to_owned())),
            }
        }
    }
}

/// The standard columns every RudderStack table but `users` has (a property of that name is
/// dropped).
const STANDARD: &[&str] = &[
    "id",
    "anonymous_id",
    "user_id",
    "sent_at",
    "timestamp",
    "received_at",
    "original_timestamp",
    "channel",
    "context_ip",
    "context_request_ip",
    "context_passed_ip",
    "uuid_ts",
];

/// The rows of an event, names for PostgreSQL.
pub fn rows_of(event: &Event) -> Vec<Row> {
    rows_for(event, Dialect::Postgres)
}

/// The rows of an event, names for `dialect`: RudderStack's tables, then `event_logs`, then
/// `model_cost_logs` for LLM calls, then `agent_trace_events` for events of a trace.
pub fn rows_for(event: &Event, dialect: Dialect) -> Vec<Row> {
    let mut rows = Vec::with_capacity(4);
    let name = |n: &str| naming::safe_name(dialect, n.to_owned());
    match event.kind {
        EventType::Track => {
            let table = naming::table_name(dialect, &event.event);
            let mut tracks = standard(event, dialect, &name("tracks"));
            tracks.text("event_text", Some(&event.event));
            if let Some(table) = &table {
                tracks.text("event", Some(table));
                let mut own = tracks.clone();
                own.table = table.clone();
                let reserved = reserved(&[STANDARD, &["event", "event_text"]]);
                flatten_into(&mut own.columns, dialect, "", &event.properties, &reserved);
                rows.push(tracks);
                rows.push(own);
            } else {
                rows.push(tracks);
            }
        }
        EventType::Identify => {
            let mut identifies = standard(event, dialect, &name("identifies"));
            let mut traits = event.traits.clone();
            // RudderStack renames a trait `user_id` in identifies rather than losing it.
            if let Some(v) = traits.remove("user_id") {
                traits.insert("_user_id".into(), v);
            }
            flatten_into(&mut identifies.columns, dialect, "", &traits, &reserved(&[STANDARD]));
            rows.push(identifies);
            if let Some(user_id) = user_of(event) {
                let mut users = Row::new(&name("users"), Merge::LatestNonNull);
                users.text("id", Some(user_id));
                users.time("received_at", Some(&event.received_at));
                users.time("sent_at", event.sent_at.as_deref());
                users.time("timestamp", Some(&event.timestamp));
                users.time("original_timestamp", event.original_timestamp.as_deref());
                let reserved = ["id", "received_at", "sent_at", "timestamp", "original_timestamp", "uuid_ts"];
                if let Some(Value::Object(context_traits)) = event.context.get("traits") {
                    flatten_into(&mut users.columns, dialect, "context_traits_", context_traits, &reserved);
                }
                flatten_into(&mut users.columns, dialect, "", &traits, &reserved);
                rows.push(users);
            }
        }
        EventType::Group => {
            let mut groups = standard(event, dialect, &name("groups"));
            groups.text("group_id", event.group_id.as_deref());
            groups.text("group_type", event.group_type.as_deref());
            flatten_into(&mut groups.columns, dialect, "", &event.traits, &reserved(&[STANDARD, &["group_id", "group_type"]]));
            rows.push(groups);
        }
        EventType::Page | EventType::Screen => {
            let table = if event.kind == EventType::Page { "pages" } else { "screens" };
            let mut row = standard(event, dialect, &name(table));
            let page_name = event.name.as_deref().or_else(|| event.properties.get("name").and_then(Value::as_str));
            row.text("name", page_name);
            if !event.properties.contains_key("category") {
                row.text("category", event.category.as_deref());
            }
            flatten_into(&mut row.columns, dialect, "", &event.properties, &reserved(&[STANDARD, &["name"]]));
            rows.push(row);
        }
        EventType::Alias => {
            let mut aliases = standard(event, dialect, &name("aliases"));
            aliases.text("previous_id", event.previous_id.as_deref());
            flatten_into(&mut aliases.columns, dialect, "", &event.traits, &reserved(&[STANDARD, &["previous_id"]]));
            rows.push(aliases);
        }
    }
    rows.push(event_log(event));
    if is_llm_call(&event.event) {
        rows.push(model_cost_log(event));
    }
    rows.extend(crate::trace::event_row(event));
    rows
}

fn reserved<'a>(lists: &[&[&'a str]]) -> Vec<&'a str> {
    lists.iter().flat_map(|l| l.iter().copied()).collect()
}

/// RudderStack's standard columns and the flattened context.
fn standard(event: &Event, dialect: Dialect, table: &str) -> Row {
    let mut row = Row::new(table, Merge::Replace);
    row.text("id", Some(&event.id));
    row.text("anonymous_id", event.anonymous_id.as_deref());
    row.text("user_id", user_of(event));
    row.time("sent_at", event.sent_at.as_deref());
    row.time("timestamp", Some(&event.timestamp));
    row.time("received_at", Some(&event.received_at));
    row.time("original_timestamp", event.original_timestamp.as_deref());
    row.text("channel", event.extra.get("channel").and_then(Value::as_str));
    let passed_ip = event.context.get("ip").and_then(Value::as_str).filter(|ip| !ip.is_empty());
    row.text("context_ip", passed_ip.or(event.request_ip.as_deref()));
    row.text("context_request_ip", event.request_ip.as_deref());
    row.text("context_passed_ip", passed_ip);
    flatten_into(&mut row.columns, dialect, "context_", &event.context, STANDARD);
    row
}

/// The user id a row shows: the event's; else the distinct id of an identify (PostHog's
/// `$identify` names its user by distinct id) or of an event with no anonymous id either (a
/// PostHog event), as the router shows it to RudderStack (`userId`).
fn user_of(event: &Event) -> Option<&str> {
    if let Some(user) = event.user_id.as_deref().filter(|u| !u.is_empty()) {
        return Some(user);
    }
    let by_distinct_id = event.kind == EventType::Identify || event.anonymous_id.as_deref().is_none_or(str::is_empty);
    Some(event.distinct_id.as_str()).filter(|d| by_distinct_id && !d.is_empty())
}

/// Whether an event is one LLM call (a row of `model_cost_logs`).
pub fn is_llm_call(event: &str) -> bool {
    matches!(event, "model_cost" | "$ai_generation" | "$ai_embedding")
}

/// The first of `keys` in the properties that is not blank.
fn prop<'a>(props: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().filter_map(|k| props.get(*k)).find(|v| !crate::types::is_blank(v))
}

/// A string property (numbers as their text).
fn prop_text(props: &Map<String, Value>, keys: &[&str]) -> Option<String> {
    match prop(props, keys)? {
        Value::String(s) => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// The workspace or organization: the property, else the event's group of that type.
pub(crate) fn scope_of(event: &Event, key: &str, group: &str) -> Option<String> {
    prop_text(&event.properties, &[key]).or_else(|| match event.groups.get(group)? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        _ => None,
    })
}

/// The event's latency in whole milliseconds (rounded half up): `latency_ms`, else
/// `duration_ms`, else `$ai_latency` (seconds). A value that is not a number is given as it
/// is, for the schema to discard.
pub(crate) fn latency_ms(props: &Map<String, Value>) -> Option<Value> {
    let (value, per_ms) = match prop(props, &["latency_ms", "duration_ms"]) {
        Some(v) => (v, 1),
        None => (prop(props, &["$ai_latency"])?, 1000),
    };
    let Some(amount) = Decimal::parse_value(value) else { return Some(value.clone()) };
    let unit = 10_i128.pow(Decimal::SCALE);
    let ms = amount.0.checked_mul(per_ms).map(|n| (n + unit / 2).div_euclid(unit));
    Some(ms.and_then(|ms| i64::try_from(ms).ok()).map_or_else(|| value.clone(), Value::from))
}

/// The event's status: `status`, else `error`/`success` from `success` or `$ai_is_error`.
pub(crate) fn status_of(props: &Map<String, Value>) -> Option<String> {
    if let Some(s) = prop_text(props, &["status"]) {
        return Some(s);
    }
    let failed = match (props.get("success"), props.get("$ai_is_error")) {
        (Some(Value::Bool(ok)), _) => !ok,
        (_, Some(Value::Bool(error))) => *error,
        _ => return None,
    };
    Some(if failed { "error" } else { "success" }.to_owned())
}

/// The trace id: the event's, else `$ai_trace_id`.
pub(crate) fn trace_of(event: &Event) -> Option<String> {
    event.trace_id.clone().filter(|t| !t.is_empty()).or_else(|| prop_text(&event.properties, &["$ai_trace_id"]))
}

/// `event_logs`: every event, narrow.
fn event_log(event: &Event) -> Row {
    let props = &event.properties;
    let mut row = Row::new("event_logs", Merge::Replace);
    row.text("id", Some(&event.id));
    row.text("event", Some(&event.event));
    row.text("type", Some(event.kind.as_str()));
    row.text("distinct_id", Some(&event.distinct_id));
    row.text("user_id", user_of(event));
    row.text("anonymous_id", event.anonymous_id.as_deref());
    row.text("workspace_id", scope_of(event, "workspace_id", "workspace").as_deref());
    row.text("organization_id", scope_of(event, "organization_id", "organization").as_deref());
    row.text("trace_id", trace_of(event).as_deref());
    row.text("span_id", event.span_id.as_deref().or_else(|| props.get("$ai_span_id").and_then(Value::as_str)));
    row.text("status", status_of(props).as_deref());
    row.typed("latency_ms", ColumnType::Int, latency_ms(props).as_ref());
    row.time("timestamp", Some(&event.timestamp));
    row.time("received_at", Some(&event.received_at));
    if !props.is_empty() {
        row.put("properties", ColumnType::Json, Value::Object(props.clone()));
    }
    if !event.context.is_empty() {
        row.put("context", ColumnType::Json, Value::Object(event.context.clone()));
    }
    row
}

/// `model_cost_logs`: one LLM call. PostHog's `$ai_*` names first, then the platform's.
fn model_cost_log(event: &Event) -> Row {
    let props = &event.properties;
    let mut row = Row::new("model_cost_logs", Merge::Replace);
    row.text("id", Some(&event.id));
    row.text("event", Some(&event.event));
    row.text("model", prop_text(props, &["$ai_model", "model"]).as_deref());
    row.text("provider", prop_text(props, &["$ai_provider", "provider"]).as_deref());
    row.typed("input_tokens", ColumnType::Int, prop(props, &["$ai_input_tokens", "input_tokens"]));
    row.typed("output_tokens", ColumnType::Int, prop(props, &["$ai_output_tokens", "output_tokens"]));
    row.typed("cached_input_tokens", ColumnType::Int, prop(props, &["$ai_cache_read_input_tokens", "cached_input_tokens"]));
    row.typed("cost_usd", ColumnType::Decimal, prop(props, &["$ai_total_cost_usd", "cost_usd"]));
    row.text("distinct_id", Some(&event.distinct_id));
    row.text("user_id", event.user_id.as_deref().or(Some(&event.distinct_id)));
    row.text("workspace_id", scope_of(event, "workspace_id", "workspace").as_deref());
    row.text("organization_id", scope_of(event, "organization_id", "organization").as_deref());
    row.text("agent_id", prop_text(props, &["agent_id"]).as_deref());
    row.text("flow_id", prop_text(props, &["flow_id"]).as_deref());
    row.text("run_id", prop_text(props, &["run_id"]).as_deref());
    row.text("trace_id", trace_of(event).as_deref());
    row.text("span_id", event.span_id.as_deref().or_else(|| props.get("$ai_span_id").and_then(Value::as_str)));
    row.text("pricing_version", prop_text(props, &["pricing_version", "$ai_cost_table_version"]).as_deref());
    row.time("timestamp", Some(&event.timestamp));
    row.time("received_at", Some(&event.received_at));
    row
}

/// The tables whose columns are fixed, with their types: `event_logs`, `model_cost_logs`,
/// `agent_trace_history` and `rudder_discards`.
pub fn fixed_tables() -> Vec<(&'static str, Vec<(&'static str, ColumnType)>)> {
    use ColumnType::*;
    vec![
        (
            "event_logs",
            vec![
                ("id", String),
                ("event", String),
                ("type", String),
                ("distinct_id", String),
                ("user_id", String),
                ("anonymous_id", String),
                ("workspace_id", String),
                ("organization_id", String),
                ("trace_id", String),
                ("span_id", String),
                ("status", String),
                ("latency_ms", Int),
                ("timestamp", Datetime),
                ("received_at", Datetime),
                ("properties", Json),
                ("context", Json),
                ("uuid_ts", Datetime),
            ],
        ),
        (
            "model_cost_logs",
            vec![
                ("id", String),
                ("event", String),
                ("model", String),
                ("provider", String),
                ("input_tokens", Int),
                ("output_tokens", Int),
                ("cached_input_tokens", Int),
                ("cost_usd", Decimal),
                ("distinct_id", String),
                ("user_id", String),
                ("workspace_id", String),
                ("organization_id", String),
                ("agent_id", String),
                ("flow_id", String),
                ("run_id", String),
                ("trace_id", String),
                ("span_id", String),
                ("pricing_version", String),
                ("timestamp", Datetime),
                ("received_at", Datetime),
                ("uuid_ts", Datetime),
            ],
        ),
        ("agent_trace_history", crate::trace::COLUMNS.to_vec()),
        ("agent_trace_events", crate::trace::EVENT_COLUMNS.to_vec()),
        (
            "rudder_discards",
            vec![
                ("row_id", String),
                ("table_name", String),
                ("column_name", String),
                ("column_value", String),
                ("received_at", Datetime),
                ("reason", String),
                ("uuid_ts", Datetime),
            ],
        ),
    ]
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::schema::Schema;
    use serde_json::json;

    /// An event in the events API's shape, with the catalog's common properties.
    pub(crate) fn event(id: &str, kind: &str, name: &str, timestamp: &str, props: Value) -> Event {
        let mut properties = json!({"trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7", "workspace_id": "ws_1", "organization_id": "org_1"});
        properties.as_object_mut().unwrap().extend(props.as_object().unwrap().clone());
        serde_json::from_value(json!({
            "id": id, "project_id": 1, "protocol": "segment", "type": kind, "event": name,
            "distinct_id": "user_7", "user_id": "user_7", "anonymous_id": "anon_3",
            "properties": properties, "traits": {},
            "context": {"library": {"name": "analytics-python", "version": "2.3.0"}, "ip": "203.0.113.9", "traits": {"plan": "pro"}},
            "timestamp": timestamp, "original_timestamp": timestamp, "sent_at": "2025-12-05T09:31:00.000000Z",
            "received_at": "2025-12-05T09:31:00.250000Z", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
            "request_ip": "198.51.100.4", "extra": {"channel": "server"}
        }))
        .unwrap()
    }

    fn cols(row: &Row) -> Vec<(String, &'static str, Value)> {
        row.columns.iter().map(|(k, (t, v))| (k.clone(), t.as_str(), v.clone())).collect()
    }

    #[test]
    fn a_track_event_fills_tracks_its_own_table_and_event_logs() {
        let e = event(
            "e1",
            "track",
            "Flow Executed",
            "2025-12-05T09:30:00Z",
            json!({"flow_id": "flow_42", "status": "success", "duration_ms": 1830, "trigger": "schedule", "node_count": 5, "user_id": "spoofed", "nodes": ["a", "b"]}),
        );
        let rows = rows_of(&e);
        let tables: Vec<&str> = rows.iter().map(|r| r.table.as_str()).collect();
        assert_eq!(tables, vec!["tracks", "flow_executed", "event_logs", "agent_trace_events"]);
        let standard = vec![
            ("anonymous_id".to_owned(), "string", json!("anon_3")),
            ("channel".into(), "string", json!("server")),
            ("context_ip".into(), "string", json!("203.0.113.9")),
            ("context_library_name".into(), "string", json!("analytics-python")),
            ("context_library_version".into(), "string", json!("2.3.0")),
            ("context_passed_ip".into(), "string", json!("203.0.113.9")),
            ("context_request_ip".into(), "string", json!("198.51.100.4")),
            ("context_traits_plan".into(), "string", json!("pro")),
            ("event".into(), "string", json!("flow_executed")),
            ("event_text".into(), "string", json!("Flow Executed")),
            ("id".into(), "string", json!("e1")),
            ("original_timestamp".into(), "datetime", json!("2025-12-05T09:30:00.000000Z")),
            ("received_at".into(), "datetime", json!("2025-12-05T09:31:00.250000Z")),
            ("sent_at".into(), "datetime", json!("2025-12-05T09:31:00.000000Z")),
            ("timestamp".into(), "datetime", json!("2025-12-05T09:30:00.000000Z")),
            ("user_id".into(), "string", json!("user_7")),
        ];
        assert_eq!(cols(&rows[0]), standard, "tracks: standard columns, no properties");
        let own: Vec<_> = cols(&rows[1]).into_iter().filter(|c| !standard.contains(c)).collect();
        assert_eq!(
            own,
            vec![
                ("duration_ms".to_owned(), "int", json!(1830)),
                ("flow_id".into(), "string", json!("flow_42")),
                ("node_count".into(), "int", json!(5)),
                ("nodes".into(), "string", json!("[\"a\",\"b\"]")),
                ("organization_id".into(), "string", json!("org_1")),
                ("span_id".into(), "string", json!("00f067aa0ba902b7")),
                ("status".into(), "string", json!("success")),
                ("trace_id".into(), "string", json!("4bf92f3577b34da6a3ce929d0e0e4736")),
                ("trigger".into(), "string", json!("schedule")),
                ("workspace_id".into(), "string", json!("ws_1")),
            ],
            "properties flattened; the reserved user_id property dropped"
        );
        assert_eq!(rows[1].columns["user_id"].1, json!("user_7"));
        let log = &rows[2];
        for (column, value) in [
            ("event", json!("Flow Executed")),
            ("type", json!("track")),
            ("distinct_id", json!("user_7")),
            ("workspace_id", json!("ws_1")),
            ("organization_id", json!("org_1")),
            ("trace_id", json!("4bf92f3577b34da6a3ce929d0e0e4736")),
            ("status", json!("success")),
            ("latency_ms", json!(1830)),
        ] {
            assert_eq!(log.columns[column].1, value, "{column}");
        }
        assert_eq!(log.columns["properties"].0, ColumnType::Json);
        assert_eq!(log.columns["properties"].1["nodes"], json!(["a", "b"]));
    }

    #[test]
    fn llm_calls_fill_model_cost_logs_with_exact_cost() {
        let generation = event(
            "g1",
            "track",
            "$ai_generation",
            "2025-12-05T09:30:01Z",
            json!({"$ai_model": "gpt-4o-mini", "$ai_provider": "openai", "$ai_input_tokens": 1200, "$ai_output_tokens": 340, "$ai_cache_read_input_tokens": 200, "$ai_total_cost_usd": 0.000384, "$ai_latency": 1.2345, "agent_id": "agent_9", "$ai_trace_id": "ignored-when-event-has-one"}),
        );
        let rows = rows_of(&generation);
        assert_eq!(
            rows.iter().map(|r| r.table.as_str()).collect::<Vec<_>>(),
            vec!["tracks", "ai_generation", "event_logs", "model_cost_logs", "agent_trace_events"]
        );
        let cost = &rows[3];
        for (column, ty, value) in [
            ("model", "string", json!("gpt-4o-mini")),
            ("provider", "string", json!("openai")),
            ("input_tokens", "int", json!(1200)),
            ("output_tokens", "int", json!(340)),
            ("cached_input_tokens", "int", json!(200)),
            ("cost_usd", "decimal", json!("0.000384")),
            ("agent_id", "string", json!("agent_9")),
            ("user_id", "string", json!("user_7")),
            ("workspace_id", "string", json!("ws_1")),
            ("trace_id", "string", json!("4bf92f3577b34da6a3ce929d0e0e4736")),
        ] {
            assert_eq!((cost.columns[column].0.as_str(), &cost.columns[column].1), (ty, &value), "{column}");
        }
        assert_eq!(rows[2].columns["latency_ms"].1, json!(1235), "$ai_latency seconds as whole ms");

        // The platform's own event; a wrong type lands in the discards, not in the row.
        let platform = event(
            "m1",
            "track",
            "model_cost",
            "2025-12-05T09:30:02Z",
            json!({"model": "claude-sonnet-4-5", "provider": "anthropic", "input_tokens": "many", "output_tokens": 20, "cost_usd": "0.00075", "run_id": "run_1", "flow_id": "flow_42"}),
        );
        let mut schema = Schema::with_fixed_tables();
        let row = rows_of(&platform).into_iter().find(|r| r.table == "model_cost_logs").unwrap();
        let (row, discards) = schema.admit(row);
        assert_eq!(row.columns["cost_usd"], (ColumnType::Decimal, json!("0.00075")));
        assert!(!row.columns.contains_key("input_tokens"));
        assert_eq!(discards.len(), 1);
        assert_eq!((discards[0].column.as_str(), discards[0].row_id.as_str(), discards[0].value.as_str()), ("input_tokens", "m1", "many"));
        assert_eq!(discards[0].reason, "incompatible schema conversion from string to int");
    }

    #[test]
    fn identify_group_page_screen_alias_fill_their_tables() {
        let mut identify = event("i1", "identify", "$identify", "2025-12-05T09:30:00Z", json!({}));
        identify.traits = json!({"email": "ada@example.com", "plan": {"name": "pro", "seats": 5}, "user_id": "x"}).as_object().unwrap().clone();
        let rows = rows_of(&identify);
        assert_eq!(rows.iter().map(|r| r.table.as_str()).collect::<Vec<_>>(), vec!["identifies", "users", "event_logs", "agent_trace_events"]);
        assert_eq!(rows[0].columns["email"].1, json!("ada@example.com"));
        assert_eq!(rows[0].columns["plan_seats"], (ColumnType::Int, json!(5)));
        assert_eq!(rows[0].columns["_user_id"].1, json!("x"));
        assert_eq!(rows[0].columns["user_id"].1, json!("user_7"));
        let users = &rows[1];
        assert_eq!(users.merge, Merge::LatestNonNull);
        assert_eq!(users.id(), Some("user_7"));
        assert!(!users.columns.contains_key("anonymous_id"));
        assert_eq!(users.columns["context_traits_plan"].1, json!("pro"));
        assert_eq!(users.columns["plan_name"].1, json!("pro"));

        let mut group = event("gr1", "group", "$groupidentify", "2025-12-05T09:30:00Z", json!({}));
        group.group_id = Some("ws_1".into());
        group.group_type = Some("workspace".into());
        group.traits = json!({"name": "Acme", "seats": 12}).as_object().unwrap().clone();
        let rows = rows_of(&group);
        assert_eq!(rows[0].table, "groups");
        assert_eq!((&rows[0].columns["group_id"].1, &rows[0].columns["seats"].1), (&json!("ws_1"), &json!(12)));

        let mut page = event("p1", "page", "$pageview", "2025-12-05T09:30:00Z", json!({"url": "https://app.example.com/flows", "name": "ignored"}));
        page.name = Some("Flows".into());
        let rows = rows_of(&page);
        assert_eq!(rows[0].table, "pages");
        assert_eq!((&rows[0].columns["name"].1, &rows[0].columns["url"].1), (&json!("Flows"), &json!("https://app.example.com/flows")));
        let screen = event("s1", "screen", "$screen", "2025-12-05T09:30:00Z", json!({"name": "Agent Debugger"}));
        assert_eq!(rows_of(&screen)[0].table, "screens");
        assert_eq!(rows_of(&screen)[0].columns["name"].1, json!("Agent Debugger"));

        let mut alias = event("a1", "alias", "$create_alias", "2025-12-05T09:30:00Z", json!({}));
        alias.previous_id = Some("anon_3".into());
        let rows = rows_of(&alias);
        assert_eq!(rows[0].table, "aliases");
        assert_eq!(rows[0].columns["previous_id"].1, json!("anon_3"));
    }

    #[test]
    fn new_properties_add_columns_and_conflicts_are_discarded_across_events() {
        let mut schema = Schema::with_fixed_tables();
        let mut discards = Vec::new();
        let events = [
            event(
                "t1",
                "track",
                "tool_used",
                "2025-12-05T09:30:00Z",
                json!({"tool_name": "web_search", "success": true, "duration_ms": 120}),
            ),
            event(
                "t2",
                "track",
                "tool_used",
                "2025-12-05T09:30:01Z",
                json!({"tool_name": "sql", "success": false, "duration_ms": 80, "error_type": "timeout"}),
            ),
            event(
                "t3",
                "track",
                "tool_used",
                "2025-12-05T09:30:02Z",
                json!({"tool_name": "mcp", "success": "yes", "duration_ms": 95.5, "latency_ms": "slow"}),
            ),
        ];
        for e in &events {
            for row in rows_of(e) {
                let (_, d) = schema.admit(row);
                discards.extend(d);
            }
        }
        assert_eq!(schema.column("tool_used", "error_type"), Some(ColumnType::String), "a new property, a new column");
        assert_eq!(schema.column("tool_used", "success"), Some(ColumnType::Boolean));
        let got: Vec<(&str, &str, &str, &str)> = discards.iter().map(|d| (d.table.as_str(), d.column.as_str(), d.row_id.as_str(), d.value.as_str())).collect();
        assert_eq!(
            got,
            vec![
                ("tool_used", "duration_ms", "t3", "95.5"),
                ("tool_used", "success", "t3", "yes"),
                ("event_logs", "latency_ms", "t3", "slow")
            ]
        );
        assert_eq!(discards[1].reason, "incompatible schema conversion from string to boolean");
    }
}

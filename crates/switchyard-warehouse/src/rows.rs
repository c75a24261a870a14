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
        Row { table: table.to_owned(), columns: Columns::new(), merge }
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
const STANDARD: &[&str] = &["id", "anonymous_id", "user_id", "sent_at", "timestamp", "received_at", "original_timestamp", "channel", "context_ip", "context_request_ip", "context_passed_ip", "uuid_ts"];

/// The rows of an event, names for PostgreSQL.
pub fn rows_of(event: &Event) -> Vec<Row> {
    rows_for(event, Dialect::Postgres)
}

/// The rows of an event, names for `dialect`: RudderStack's tables, then `event_logs`, then
/// `model_cost_logs` for LLM calls.
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
            if let Some(user_id) = event.user_id.as_deref().filter(|u| !u.is_empty()) {
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
    row.text("user_id", event.user_id.as_deref());
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

/// The event's latency in milliseconds: `latency_ms`, else `duration_ms`, else `$ai_latency`
/// (seconds).
pub(crate) fn latency_ms(props: &Map<String, Value>) -> Option<Value> {
    if let Some(v) = prop(props, &["latency_ms", "duration_ms"]) {
        return Some(v.clone());
    }
    let seconds = Decimal::parse_value(prop(props, &["$ai_latency"])?)?;
    // Whole milliseconds, rounded half up (seconds have 12 fractional digits here).
    let unit = 10_i128.pow(Decimal::SCALE - 3);
    let ms = (seconds.0 + unit / 2).div_euclid(unit);
    i64::try_from(ms).ok().map(Value::from)
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
    row.text("user_id", event.user_id.as_deref());
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
                ("id", String), ("event", String), ("type", String), ("distinct_id", String), ("user_id", String), ("anonymous_id", String),
                ("workspace_id", String), ("organization_id", String), ("trace_id", String), ("span_id", String), ("status", String),
                ("latency_ms", Int), ("timestamp", Datetime), ("received_at", Datetime), ("properties", Json), ("context", Json), ("uuid_ts", Datetime),
            ],
        ),
        (
            "model_cost_logs",
            vec![
                ("id", String), ("event", String), ("model", String), ("provider", String), ("input_tokens", Int), ("output_tokens", Int),
                ("cached_input_tokens", Int), ("cost_usd", Decimal), ("distinct_id", String), ("user_id", String), ("workspace_id", String),
                ("organization_id", String), ("agent_id", String), ("flow_id", String), ("run_id", String), ("trace_id", String), ("span_id", String),
                ("pricing_version", String), ("timestamp", Datetime), ("received_at", Datetime), ("uuid_ts", Datetime),
            ],
        ),
        ("agent_trace_history", crate::trace::COLUMNS.to_vec()),
        (
            "rudder_discards",
            vec![("row_id", String), ("table_name", String), ("column_name", String), ("column_value", String), ("received_at", Datetime), ("reason", String), ("uuid_ts", Datetime)],
        ),
    ]
}

//! `agent_trace_history`: one row per trace, as a fold over the trace's events whose result
//! does not depend on the order the events arrive in (late, across loads) nor on duplicates
//! (an event id counts once). The loader keeps the fold per trace and upserts its row.
//!
//! - first/last timestamp over the events, `duration_ms` between them;
//! - user, workspace, organization, agent and flow: from the earliest event (by timestamp,
//!   then id) that carries each;
//! - counts: `llm_calls` (`$ai_generation`, `$ai_embedding`; `model_cost` events when the
//!   trace has none, as the trace view counts them), `tool_calls` (`tool_used`, `$ai_span`
//!   of type tool, `$ai_tool_call_count`), `guardrail_blocks` (`prompt_blocked`,
//!   `$ai_guardrail_triggered`), `rag_queries` (`rag_query_triggered`), `errors`
//!   (`agent_error`, `$ai_is_error`, `success: false`, `status: error`);
//! - tokens and cost summed exactly over the `$ai_*` calls, or the `model_cost` events when
//!   the trace has no `$ai_*` call (some wrappers report a call both ways);
//! - `status` is `error` when any event failed, else `success`; `first_error` is the error of
//!   the earliest failing event.

use std::collections::BTreeSet;

use serde_json::Value;
use switchyard_event::model::{format_time, parse_time};
use switchyard_event::Event;

use crate::flatten::Columns;
use crate::rows::{scope_of, status_of, trace_of, Merge, Row};
use crate::types::{ColumnType, Decimal};

/// The columns of `agent_trace_history`.
pub const COLUMNS: &[(&str, ColumnType)] = &[
    ("id", ColumnType::String),
    ("trace_id", ColumnType::String),
    ("first_timestamp", ColumnType::Datetime),
    ("last_timestamp", ColumnType::Datetime),
    ("duration_ms", ColumnType::Int),
    ("status", ColumnType::String),
    ("user_id", ColumnType::String),
    ("workspace_id", ColumnType::String),
    ("organization_id", ColumnType::String),
    ("agent_id", ColumnType::String),
    ("flow_id", ColumnType::String),
    ("events", ColumnType::Int),
    ("llm_calls", ColumnType::Int),
    ("tool_calls", ColumnType::Int),
    ("guardrail_blocks", ColumnType::Int),
    ("rag_queries", ColumnType::Int),
    ("errors", ColumnType::Int),
    ("input_tokens", ColumnType::Int),
    ("output_tokens", ColumnType::Int),
    ("cost_usd", ColumnType::Decimal),
    ("first_error", ColumnType::String),
    ("received_at", ColumnType::Datetime),
    ("uuid_ts", ColumnType::Datetime),
];

/// Sums over one kind of LLM call record.
#[derive(Debug, Clone, Default, PartialEq)]
struct Calls {
    count: u64,
    input_tokens: i64,
    output_tokens: i64,
    cost: Decimal,
}

/// A value and the (timestamp, event id) it was seen at: the earliest wins.
type Earliest = Option<((String, String), String)>;

fn keep_earliest(slot: &mut Earliest, at: &(String, String), value: Option<String>) {
    let Some(value) = value.filter(|v| !v.is_empty()) else { return };
    if slot.as_ref().is_none_or(|(seen, _)| at < seen) {
        *slot = Some((at.clone(), value));
    }
}

/// The running summary of one trace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TraceSummary {
    pub trace_id: String,
    seen: BTreeSet<String>,
    first: Option<String>,
    last: Option<String>,
    received_at: Option<String>,
    user_id: Earliest,
    workspace_id: Earliest,
    organization_id: Earliest,
    agent_id: Earliest,
    flow_id: Earliest,
    first_error: Earliest,
    ai_calls: Calls,
    platform_calls: Calls,
    tool_calls: u64,
    guardrail_blocks: u64,
    rag_queries: u64,
    errors: u64,
}

fn count(v: Option<&Value>) -> i64 {
    match v {
        Some(Value::Number(n)) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)).unwrap_or(0),
        Some(Value::String(s)) => s.trim().parse().unwrap_or(0),
        _ => 0,
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Object(_) | Value::Array(_) => v.map(Value::to_string),
        _ => None,
    }
}

impl TraceSummary {
    pub fn new(trace_id: &str) -> TraceSummary {
        TraceSummary {
            trace_id: trace_id.to_owned(),
            ..TraceSummary::default()
        }
    }

    /// Adds an event of the trace. Returns false (and changes nothing) for an event of
    /// another trace or one already added.
    pub fn add(&mut self, event: &Event) -> bool {
        if trace_of(event).as_deref() != Some(self.trace_id.as_str()) || !self.seen.insert(event.id.clone()) {
            return false;
        }
        let props = &event.properties;
        let timestamp = parse_time(&event.timestamp).map(format_time).unwrap_or_else(|| event.timestamp.clone());
        let received = parse_time(&event.received_at).map(format_time).unwrap_or_else(|| event.received_at.clone());
        if self.first.as_ref().is_none_or(|f| &timestamp < f) {
            self.first = Some(timestamp.clone());
        }
        if self.last.as_ref().is_none_or(|l| &timestamp > l) {
            self.last = Some(timestamp.clone());
        }
        if self.received_at.as_ref().is_none_or(|r| &received > r) {
            self.received_at = Some(received);
        }
        let at = (timestamp, event.id.clone());
        keep_earliest(&mut self.user_id, &at, event.user_id.clone());
        keep_earliest(&mut self.workspace_id, &at, scope_of(event, "workspace_id", "workspace"));
        keep_earliest(&mut self.organization_id, &at, scope_of(event, "organization_id", "organization"));
        keep_earliest(&mut self.agent_id, &at, text(props.get("agent_id")));
        keep_earliest(&mut self.flow_id, &at, text(props.get("flow_id")));

        let name = event.event.as_str();
        match name {
            "$ai_generation" | "$ai_embedding" | "model_cost" => {
                let calls = if name == "model_cost" { &mut self.platform_calls } else { &mut self.ai_calls };
                calls.count += 1;
                calls.input_tokens = calls.input_tokens.saturating_add(count(props.get("$ai_input_tokens").or(props.get("input_tokens"))));
                calls.output_tokens = calls.output_tokens.saturating_add(count(props.get("$ai_output_tokens").or(props.get("output_tokens"))));
                let cost = props.get("$ai_total_cost_usd").or(props.get("cost_usd")).and_then(Decimal::parse_value).unwrap_or_default();
                calls.cost = calls.cost.checked_add(cost).unwrap_or(calls.cost);
            }
            "tool_used" => self.tool_calls += 1,
            "prompt_blocked" => self.guardrail_blocks += 1,
            "rag_query_triggered" => self.rag_queries += 1,
            _ => {}
        }
        if props.get("$ai_span_type").and_then(Value::as_str) == Some("tool") {
            self.tool_calls += 1;
        }
        self.tool_calls += u64::try_from(count(props.get("$ai_tool_call_count"))).unwrap_or(0);
        if props.get("$ai_guardrail_triggered") == Some(&Value::Bool(true)) {
            self.guardrail_blocks += 1;
        }
        let failed = name == "agent_error" || status_of(props).as_deref() == Some("error");
        if failed {
            self.errors += 1;
            let error = text(props.get("error_message"))
                .or_else(|| text(props.get("$ai_error")))
                .or_else(|| text(props.get("error_type")))
                .unwrap_or_else(|| name.to_owned());
            keep_earliest(&mut self.first_error, &at, Some(error));
        }
        true
    }

    /// The ids the trace's earliest events carry, and its first error (named `error_column`),
    /// those it has.
    fn identities(&self, error_column: &'static str) -> impl Iterator<Item = (&'static str, &str)> {
        [
            ("user_id", &self.user_id),
            ("workspace_id", &self.workspace_id),
            ("organization_id", &self.organization_id),
            ("agent_id", &self.agent_id),
            ("flow_id", &self.flow_id),
            (error_column, &self.first_error),
        ]
        .into_iter()
        .filter_map(|(column, slot)| slot.as_ref().map(|(_, value)| (column, value.as_str())))
    }

    /// The number of distinct events added.
    pub fn events(&self) -> usize {
        self.seen.len()
    }

    fn calls(&self) -> &Calls {
        if self.ai_calls.count > 0 {
            &self.ai_calls
        } else {
            &self.platform_calls
        }
    }

    /// The trace's row of `agent_trace_history` (`id` = trace id), `None` before any event.
    pub fn row(&self) -> Option<Row> {
        let (first, last) = (self.first.as_ref()?, self.last.as_ref()?);
        let mut columns = Columns::new();
        let mut put = |c: &str, t: ColumnType, v: Value| {
            columns.insert(c.to_owned(), (t, v));
        };
        put("id", ColumnType::String, Value::String(self.trace_id.clone()));
        put("trace_id", ColumnType::String, Value::String(self.trace_id.clone()));
        put("first_timestamp", ColumnType::Datetime, Value::String(first.clone()));
        put("last_timestamp", ColumnType::Datetime, Value::String(last.clone()));
        if let (Some(a), Some(b)) = (parse_time(first), parse_time(last)) {
            put("duration_ms", ColumnType::Int, Value::from((b - a).num_milliseconds()));
        }
        put("status", ColumnType::String, Value::from(if self.errors > 0 { "error" } else { "success" }));
        for (column, value) in self.identities("first_error") {
            put(column, ColumnType::String, Value::String(value.to_owned()));
        }
        let calls = self.calls();
        put("events", ColumnType::Int, Value::from(self.seen.len() as u64));
        put("llm_calls", ColumnType::Int, Value::from(calls.count));
        put("tool_calls", ColumnType::Int, Value::from(self.tool_calls));
        put("guardrail_blocks", ColumnType::Int, Value::from(self.guardrail_blocks));
        put("rag_queries", ColumnType::Int, Value::from(self.rag_queries));
        put("errors", ColumnType::Int, Value::from(self.errors));
        put("input_tokens", ColumnType::Int, Value::from(calls.input_tokens));
        put("output_tokens", ColumnType::Int, Value::from(calls.output_tokens));
        put("cost_usd", ColumnType::Decimal, Value::String(calls.cost.to_string()));
        if let Some(r) = &self.received_at {
            put("received_at", ColumnType::Datetime, Value::String(r.clone()));
        }
        Some(Row {
            table: "agent_trace_history".into(),
            columns,
            merge: Merge::Replace,
        })
    }
}

/// The columns of `agent_trace_events`: one row per event of a trace, its contribution to the
/// trace's summary. `agent_trace_history` is a view that folds them with SQL aggregates
/// ([`history_view`]), so it is right however a trace's events arrive: late, across loads, in
/// any order.
pub const EVENT_COLUMNS: &[(&str, ColumnType)] = &[
    ("id", ColumnType::String),
    ("trace_id", ColumnType::String),
    ("timestamp", ColumnType::Datetime),
    ("timestamp_ms", ColumnType::Int),
    ("user_id", ColumnType::String),
    ("workspace_id", ColumnType::String),
    ("organization_id", ColumnType::String),
    ("agent_id", ColumnType::String),
    ("flow_id", ColumnType::String),
    ("llm_kind", ColumnType::String),
    ("input_tokens", ColumnType::Int),
    ("output_tokens", ColumnType::Int),
    ("cost_usd", ColumnType::Decimal),
    ("tool_calls", ColumnType::Int),
    ("guardrail_blocks", ColumnType::Int),
    ("rag_queries", ColumnType::Int),
    ("errors", ColumnType::Int),
    ("error", ColumnType::String),
    ("received_at", ColumnType::Datetime),
    ("uuid_ts", ColumnType::Datetime),
];

/// The event's row of `agent_trace_events`, `None` for an event without a trace.
pub fn event_row(event: &Event) -> Option<Row> {
    let mut one = TraceSummary::new(&trace_of(event)?);
    one.add(event);
    let timestamp = one.first.clone()?;
    let mut columns = Columns::new();
    let mut put = |c: &str, t: ColumnType, v: Value| {
        columns.insert(c.to_owned(), (t, v));
    };
    put("id", ColumnType::String, Value::String(event.id.clone()));
    put("trace_id", ColumnType::String, Value::String(one.trace_id.clone()));
    if let Some(t) = parse_time(&timestamp) {
        put("timestamp_ms", ColumnType::Int, Value::from(t.timestamp_millis()));
    }
    put("timestamp", ColumnType::Datetime, Value::String(timestamp));
    for (column, value) in one.identities("error") {
        put(column, ColumnType::String, Value::String(value.to_owned()));
    }
    let (kind, calls) = if one.ai_calls.count > 0 {
        (Some("ai"), &one.ai_calls)
    } else if one.platform_calls.count > 0 {
        (Some("platform"), &one.platform_calls)
    } else {
        (None, &one.ai_calls)
    };
    if let Some(kind) = kind {
        put("llm_kind", ColumnType::String, Value::from(kind));
        put("input_tokens", ColumnType::Int, Value::from(calls.input_tokens));
        put("output_tokens", ColumnType::Int, Value::from(calls.output_tokens));
        put("cost_usd", ColumnType::Decimal, Value::String(calls.cost.to_string()));
    }
    put("tool_calls", ColumnType::Int, Value::from(one.tool_calls));
    put("guardrail_blocks", ColumnType::Int, Value::from(one.guardrail_blocks));
    put("rag_queries", ColumnType::Int, Value::from(one.rag_queries));
    put("errors", ColumnType::Int, Value::from(one.errors));
    if let Some(r) = &one.received_at {
        put("received_at", ColumnType::Datetime, Value::String(r.clone()));
    }
    Some(Row {
        table: "agent_trace_events".into(),
        columns,
        merge: Merge::Replace,
    })
}

/// The engines the `agent_trace_history` view is written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ViewEngine {
    /// Apache DataFusion (the lake's SQL): `first_value(… ORDER BY …) FILTER (…)`.
    DataFusion,
    /// DuckDB over the lake's files: `first(… ORDER BY …) FILTER (…)`.
    DuckDb,
    /// `(array_agg(… ORDER BY …) FILTER (…))[1]`.
    PostgreSQL,
}

/// The `SELECT` of `agent_trace_history` over `{source}` (`agent_trace_events`, qualified as
/// the engine needs): the same fold as [`TraceSummary`], in SQL. Counts of LLM calls, tokens
/// and cost come from the `$ai_*` calls, or from `model_cost` events when the trace has no
/// `$ai_*` call; identities and the first error from the earliest event (by timestamp, then
/// id) that carries them.
pub fn history_view(engine: ViewEngine, source: &str) -> String {
    let earliest = |c: &str| match engine {
        ViewEngine::DataFusion => format!("first_value({c} ORDER BY \"timestamp\", id) FILTER (WHERE {c} IS NOT NULL)"),
        ViewEngine::DuckDb => format!("first({c} ORDER BY \"timestamp\", id) FILTER (WHERE {c} IS NOT NULL)"),
        ViewEngine::PostgreSQL => format!("(array_agg({c} ORDER BY \"timestamp\", id) FILTER (WHERE {c} IS NOT NULL))[1]"),
    };
    let calls = |expr: &str| {
        format!(
            "CASE WHEN count(*) FILTER (WHERE llm_kind = 'ai') > 0 THEN {expr} FILTER (WHERE llm_kind = 'ai') ELSE {expr} FILTER (WHERE llm_kind = 'platform') END"
        )
    };
    let zero = |e: String| format!("coalesce({e}, 0)");
    let cost_zero = match engine {
        ViewEngine::DataFusion | ViewEngine::DuckDb => "CAST(0 AS DECIMAL(38, 12))",
        ViewEngine::PostgreSQL => "CAST(0 AS NUMERIC(38, 12))",
    };
    let columns = [
        "trace_id AS id".to_owned(),
        "trace_id".to_owned(),
        "min(\"timestamp\") AS first_timestamp".to_owned(),
        "max(\"timestamp\") AS last_timestamp".to_owned(),
        "max(timestamp_ms) - min(timestamp_ms) AS duration_ms".to_owned(),
        "CASE WHEN sum(errors) > 0 THEN 'error' ELSE 'success' END AS status".to_owned(),
        format!("{} AS user_id", earliest("user_id")),
        format!("{} AS workspace_id", earliest("workspace_id")),
        format!("{} AS organization_id", earliest("organization_id")),
        format!("{} AS agent_id", earliest("agent_id")),
        format!("{} AS flow_id", earliest("flow_id")),
        "count(*) AS events".to_owned(),
        format!("{} AS llm_calls", calls("count(*)")),
        "sum(tool_calls) AS tool_calls".to_owned(),
        "sum(guardrail_blocks) AS guardrail_blocks".to_owned(),
        "sum(rag_queries) AS rag_queries".to_owned(),
        "sum(errors) AS errors".to_owned(),
        format!("{} AS input_tokens", zero(calls("sum(input_tokens)"))),
        format!("{} AS output_tokens", zero(calls("sum(output_tokens)"))),
        format!("coalesce({}, {cost_zero}) AS cost_usd", calls("sum(cost_usd)")),
        format!("{} AS first_error", earliest("error")),
        "max(received_at) AS received_at".to_owned(),
        "max(uuid_ts) AS uuid_ts".to_owned(),
    ];
    format!("SELECT {} FROM {source} GROUP BY trace_id", columns.join(", "))
}


#[cfg(test)]
mod tests {
    use super::*;
    use crate::rows::tests::event;
    use serde_json::json;

    fn run() -> Vec<Event> {
        vec![
            event("r1", "track", "rag_query_triggered", "2025-12-05T09:30:00.100Z", json!({"knowledge_base_id": "kb_1", "top_k": 5})),
            event(
                "r2",
                "track",
                "$ai_generation",
                "2025-12-05T09:30:01Z",
                json!({"$ai_model": "gpt-4o-mini", "$ai_input_tokens": 1000, "$ai_output_tokens": 200, "$ai_total_cost_usd": 0.1, "agent_id": "agent_9"}),
            ),
            event(
                "r3",
                "track",
                "$ai_generation",
                "2025-12-05T09:30:02Z",
                json!({"$ai_model": "gpt-4o-mini", "$ai_input_tokens": 500, "$ai_output_tokens": 100, "$ai_total_cost_usd": 0.2, "$ai_tool_call_count": 2}),
            ),
            event(
                "r4",
                "track",
                "model_cost",
                "2025-12-05T09:30:02Z",
                json!({"model": "gpt-4o-mini", "provider": "openai", "cost_usd": 9.99}),
            ),
            event(
                "r5",
                "track",
                "tool_used",
                "2025-12-05T09:30:03Z",
                json!({"tool_name": "sql", "success": false, "error_type": "timeout", "flow_id": "flow_42"}),
            ),
            event("r6", "track", "prompt_blocked", "2025-12-05T09:30:04Z", json!({"reason": "pii", "detector": "presidio"})),
            event(
                "r7",
                "track",
                "agent_error",
                "2025-12-05T09:30:05.5Z",
                json!({"agent_id": "agent_late", "error_type": "rate_limit", "error_message": "429 from provider"}),
            ),
            event(
                "r0",
                "track",
                "flow_executed",
                "2025-12-05T09:29:59.900Z",
                json!({"flow_id": "flow_42", "status": "error", "duration_ms": 5600}),
            ),
        ]
    }

    fn summary(events: &[Event]) -> Row {
        let mut s = TraceSummary::new("4bf92f3577b34da6a3ce929d0e0e4736");
        for e in events {
            s.add(e);
        }
        s.row().unwrap()
    }

    #[test]
    fn a_trace_is_summed_up() {
        let row = summary(&run());
        let get = |c: &str| row.columns.get(c).map(|(_, v)| v.clone()).unwrap_or(Value::Null);
        assert_eq!(get("first_timestamp"), json!("2025-12-05T09:29:59.900000Z"));
        assert_eq!(get("last_timestamp"), json!("2025-12-05T09:30:05.500000Z"));
        assert_eq!(get("duration_ms"), json!(5600));
        assert_eq!(get("status"), json!("error"));
        assert_eq!(get("events"), json!(8));
        assert_eq!(get("llm_calls"), json!(2), "model_cost not counted when $ai_* calls exist");
        assert_eq!(get("input_tokens"), json!(1500));
        assert_eq!(get("output_tokens"), json!(300));
        assert_eq!(get("cost_usd"), json!("0.3"), "exact: not 0.30000000000000004");
        assert_eq!(get("tool_calls"), json!(3));
        assert_eq!(get("guardrail_blocks"), json!(1));
        assert_eq!(get("rag_queries"), json!(1));
        assert_eq!(get("errors"), json!(3), "flow status error, tool success false, agent_error");
        assert_eq!(get("first_error"), json!("flow_executed"), "the earliest failing event");
        assert_eq!(get("agent_id"), json!("agent_9"), "from the earliest event carrying it");
        assert_eq!(get("flow_id"), json!("flow_42"));
        assert_eq!(get("workspace_id"), json!("ws_1"));
        assert_eq!(get("user_id"), json!("user_7"));
    }

    #[test]
    fn the_summary_does_not_depend_on_order_or_duplicates() {
        let events = run();
        let expected = summary(&events);
        // Every rotation and reversal, and a deterministic shuffle, with duplicates (replays).
        let mut seed = 0x9E37_79B9_7F4A_7C15_u64;
        for round in 0..50 {
            let mut shuffled = events.clone();
            shuffled.extend(events.iter().take(round % events.len()).cloned());
            for i in (1..shuffled.len()).rev() {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                shuffled.swap(i, (seed >> 33) as usize % (i + 1));
            }
            assert_eq!(summary(&shuffled), expected, "round {round}");
        }
        // Loads in pieces: a later fold over more events agrees as well.
        let mut s = TraceSummary::new("4bf92f3577b34da6a3ce929d0e0e4736");
        for e in events.iter().rev() {
            assert!(s.add(e));
            assert!(!s.add(e), "a replayed event counts once");
        }
        assert_eq!(s.row().unwrap(), expected);
        let mut other = events[0].clone();
        other.trace_id = Some("0af7651916cd43dd8448eb211c80319c".into());
        other.id = "elsewhere".into();
        assert!(!s.add(&other), "another trace's event is refused");
    }

    #[test]
    fn platform_cost_is_used_when_there_are_no_ai_calls() {
        let events: Vec<Event> = run().into_iter().filter(|e| !e.event.starts_with("$ai_")).collect();
        let row = summary(&events);
        assert_eq!(row.columns["llm_calls"].1, json!(1));
        assert_eq!(row.columns["cost_usd"].1, json!("9.99"));
    }
}

//! One agent run, put together: the spans taken in over OTLP and the events that carry the
//! same trace id (PostHog's `$ai_*` events and the product's own: `tool_used`,
//! `prompt_blocked`, `rag_query_triggered`, …) as one tree by parent id, the product events
//! placed in time, the flag variants seen, and totals.
//!
//! - A span and the `$ai_*` event made from it (same span id) are one node: the span's timing,
//!   the event's tokens and cost.
//! - An `$ai_*` event's node starts at its timestamp less `$ai_latency` (the wrappers capture
//!   once the call returned) and ends at its timestamp.
//! - A node whose parent is not in the run (or is the trace id itself) is kept at the root.
//! - Cost is summed over `$ai_generation` and `$ai_embedding` only (as PostHog rolls it up:
//!   some wrappers copy a run's total onto `$ai_trace`/`$ai_span`); when a run has none, the
//!   platform's `model_cost` events' `cost_usd` are summed instead.

use std::collections::{BTreeMap, HashMap, HashSet};

/// Deepest nesting of the tree as answered (deeper descendants hang flat at this depth).
pub const MAX_DEPTH: usize = 64;

use serde_json::{json, Map, Value};

/// A node of the run's tree (before it is rendered as JSON).
#[derive(Debug, Clone)]
struct Node {
    id: String,
    parent: Option<String>,
    kind: String,
    name: String,
    start_ns: Option<i128>,
    end_ns: Option<i128>,
    is_error: bool,
    /// What the node shows beyond its place in the tree.
    detail: Map<String, Value>,
    input_tokens: u64,
    output_tokens: u64,
    cost_usd: f64,
    llm_call: bool,
}

fn nanos_of_rfc3339(text: &str) -> Option<i128> {
    let t = chrono::DateTime::parse_from_rfc3339(text).ok()?;
    Some(t.timestamp() as i128 * 1_000_000_000 + t.timestamp_subsec_nanos() as i128)
}

fn rfc3339_of_nanos(ns: i128) -> String {
    let secs = ns.div_euclid(1_000_000_000) as i64;
    let sub = ns.rem_euclid(1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(secs, sub)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

fn number(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

fn truthy(v: Option<&Value>) -> bool {
    matches!(v, Some(Value::Bool(true))) || matches!(v, Some(Value::String(s)) if s == "true")
}

/// The run of `trace_id` from its spans (`Span::to_json` shape) and events (the events API's
/// shape), as the trace view answers it.
pub fn trace_view(trace_id: &str, spans: &[Value], events: &[Value]) -> Value {
    let mut nodes: Vec<Node> = Vec::new();
    let mut by_id: HashMap<String, usize> = HashMap::new();
    let mut flags: BTreeMap<String, Value> = BTreeMap::new();

    let mut span_count = 0usize;
    for span in spans {
        let Some(id) = text(span.get("span_id")) else { continue };
        // A retried export stores a span twice: it counts once.
        if by_id.contains_key(&id) {
            continue;
        }
        span_count += 1;
        let attributes = span.get("attributes").and_then(Value::as_object).cloned().unwrap_or_default();
        let start = number(span.get("start_unix_nano")).map(|n| n as i128);
        let end = number(span.get("end_unix_nano")).map(|n| n as i128);
        let status = span.get("status_code").cloned().unwrap_or(Value::Null);
        let is_error = status == json!(2) || status == json!("error") || status == json!("STATUS_CODE_ERROR");
        let variant_of = |attrs: &Map<String, Value>| {
            ["feature_flag.result.variant", "feature_flag.variant", "feature_flag.result.value"].iter().find_map(|k| attrs.get(*k)).cloned()
        };
        if let (Some(key), Some(variant)) = (text(attributes.get("feature_flag.key")), variant_of(&attributes)) {
            flags.insert(key, variant);
        }
        for event in span.get("events").and_then(Value::as_array).into_iter().flatten() {
            let attrs = event.get("attributes").and_then(Value::as_object);
            if let Some(attrs) = attrs {
                if let (Some(key), Some(variant)) = (text(attrs.get("feature_flag.key")), variant_of(attrs)) {
                    flags.insert(key, variant);
                }
            }
        }
        let mut detail = Map::new();
        detail.insert("source".into(), json!("otlp"));
        for key in ["gen_ai.operation.name", "gen_ai.request.model", "gen_ai.response.model", "gen_ai.provider.name", "gen_ai.system"] {
            if let Some(v) = attributes.get(key) {
                detail.insert(key.into(), v.clone());
            }
        }
        if let Some(message) = span.get("status_message").filter(|m| !m.is_null()) {
            detail.insert("status_message".into(), message.clone());
        }
        let input_tokens = number(attributes.get("gen_ai.usage.input_tokens")).unwrap_or(0.0) as u64;
        let output_tokens = number(attributes.get("gen_ai.usage.output_tokens")).unwrap_or(0.0) as u64;
        let llm_call = attributes.keys().any(|k| k == "gen_ai.request.model" || k == "gen_ai.response.model");
        by_id.insert(id.clone(), nodes.len());
        nodes.push(Node {
            id,
            parent: text(span.get("parent_span_id")),
            kind: "span".into(),
            name: text(span.get("name")).unwrap_or_default(),
            start_ns: start,
            end_ns: end,
            is_error,
            detail,
            input_tokens,
            output_tokens,
            cost_usd: 0.0,
            llm_call,
        });
    }

    let mut timeline = Vec::new();
    let mut tool_calls = 0u64;
    let mut guardrail_blocks = 0u64;
    let mut errors = 0u64;
    let mut platform_cost = 0.0f64;
    let mut ai_cost_seen = false;
    let mut seen_flag_calls = HashSet::new();
    let mut seen_events = HashSet::new();
    for event in events {
        // A retried batch may store an event twice (same id): it counts once.
        if let Some(id) = event.get("id").and_then(Value::as_str) {
            if !seen_events.insert(id.to_owned()) {
                continue;
            }
        }
        let name = event.get("event").and_then(Value::as_str).unwrap_or_default();
        let empty = Map::new();
        let properties = event.get("properties").and_then(Value::as_object).unwrap_or(&empty);
        for (key, value) in properties {
            if let Some(flag) = key.strip_prefix("$feature/") {
                flags.insert(flag.to_owned(), value.clone());
            }
        }
        let at = event.get("timestamp").and_then(Value::as_str).and_then(nanos_of_rfc3339);
        match name {
            "$ai_generation" | "$ai_embedding" | "$ai_span" | "$ai_trace" => {
                let kind = name.trim_start_matches("$ai_").to_owned();
                let id = text(properties.get("$ai_span_id"))
                    .or_else(|| text(properties.get("$ai_generation_id")))
                    .or_else(|| text(event.get("id")))
                    .unwrap_or_default();
                let latency_ns = number(properties.get("$ai_latency")).map(|s| (s * 1e9) as i128);
                let is_error = truthy(properties.get("$ai_is_error"));
                let llm = name == "$ai_generation" || name == "$ai_embedding";
                let cost = if llm { number(properties.get("$ai_total_cost_usd")).unwrap_or(0.0) } else { 0.0 };
                ai_cost_seen |= llm && properties.contains_key("$ai_total_cost_usd");
                if truthy(properties.get("$ai_guardrail_triggered")) {
                    guardrail_blocks += 1;
                }
                if properties.get("$ai_span_type").and_then(Value::as_str) == Some("tool") {
                    tool_calls += 1;
                }
                tool_calls += number(properties.get("$ai_tool_call_count")).unwrap_or(0.0) as u64;
                let mut detail = Map::new();
                detail.insert("source".into(), json!("event"));
                detail.insert("event_id".into(), event.get("id").cloned().unwrap_or(Value::Null));
                detail.insert("distinct_id".into(), event.get("distinct_id").cloned().unwrap_or(Value::Null));
                for key in ["$ai_model", "$ai_provider", "$ai_model_cost_used", "$ai_cost_model_source", "$ai_error", "$ai_span_type", "$ai_http_status"] {
                    if let Some(v) = properties.get(key) {
                        detail.insert(key.trim_start_matches("$ai_").into(), v.clone());
                    }
                }
                let input_tokens = number(properties.get("$ai_input_tokens")).unwrap_or(0.0) as u64;
                let output_tokens = number(properties.get("$ai_output_tokens")).unwrap_or(0.0) as u64;
                let parent = text(properties.get("$ai_parent_id"));
                if let Some(&i) = by_id.get(&id) {
                    // The same call as a span: one node.
                    let node = &mut nodes[i];
                    node.kind = kind;
                    node.is_error |= is_error;
                    node.cost_usd += cost;
                    node.llm_call |= llm;
                    node.input_tokens = node.input_tokens.max(input_tokens);
                    node.output_tokens = node.output_tokens.max(output_tokens);
                    for (k, v) in detail {
                        node.detail.entry(k).or_insert(v);
                    }
                    continue;
                }
                let name_shown = text(properties.get("$ai_span_name"))
                    .or_else(|| text(properties.get("$ai_model")))
                    .unwrap_or_else(|| name.to_owned());
                by_id.insert(id.clone(), nodes.len());
                nodes.push(Node {
                    id,
                    parent,
                    kind,
                    name: name_shown,
                    start_ns: at.map(|t| t.saturating_sub(latency_ns.unwrap_or(0))),
                    end_ns: at,
                    is_error,
                    detail,
                    input_tokens,
                    output_tokens,
                    cost_usd: cost,
                    llm_call: llm,
                });
            }
            _ => {
                match name {
                    "tool_used" => tool_calls += 1,
                    "prompt_blocked" => guardrail_blocks += 1,
                    "agent_error" => errors += 1,
                    "model_cost" => platform_cost += number(properties.get("cost_usd")).unwrap_or(0.0),
                    "$feature_flag_called" => {
                        if let Some(flag) = text(properties.get("$feature_flag")) {
                            if seen_flag_calls.insert(flag.clone()) || !flags.contains_key(&flag) {
                                flags.insert(flag, properties.get("$feature_flag_response").cloned().unwrap_or(Value::Null));
                            }
                        }
                    }
                    _ => {}
                }
                if properties.get("success") == Some(&Value::Bool(false)) || properties.get("status").and_then(Value::as_str) == Some("error") {
                    errors += u64::from(name != "agent_error");
                }
                timeline.push(json!({
                    "id": event.get("id"),
                    "event": name,
                    "timestamp": event.get("timestamp"),
                    "distinct_id": event.get("distinct_id"),
                    "span_id": properties.get("span_id").or(properties.get("$ai_span_id")),
                    "properties": properties,
                }));
            }
        }
    }
    timeline.sort_by(|a, b| a["timestamp"].as_str().cmp(&b["timestamp"].as_str()));

    // Totals.
    let starts = nodes.iter().filter_map(|n| n.start_ns).chain(timeline.iter().filter_map(|e| e["timestamp"].as_str().and_then(nanos_of_rfc3339)));
    let ends = nodes.iter().filter_map(|n| n.end_ns).chain(timeline.iter().filter_map(|e| e["timestamp"].as_str().and_then(nanos_of_rfc3339)));
    let (first, last) = (starts.min(), ends.max());
    let llm_calls = nodes.iter().filter(|n| n.llm_call).count();
    let input_tokens: u64 = nodes.iter().map(|n| n.input_tokens).sum();
    let output_tokens: u64 = nodes.iter().map(|n| n.output_tokens).sum();
    let node_errors = nodes.iter().filter(|n| n.is_error).count() as u64;
    let cost = if ai_cost_seen { nodes.iter().map(|n| n.cost_usd).sum() } else { platform_cost };

    // The tree: children by parent, in start order; orphans at the root; nodes in a cycle of
    // parents (reachable from no root) are roots too; past MAX_DEPTH levels the rest of a
    // branch hangs flat under its node at that depth (JSON that deep could not be shown).
    let mut kids: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut roots = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        match node.parent.as_ref().and_then(|p| by_id.get(p)) {
            Some(&p) if p != i && node.parent.as_deref() != Some(trace_id) => kids[p].push(i),
            _ => roots.push(i),
        }
    }
    let start_of = |i: &usize| (nodes[*i].start_ns.unwrap_or(i128::MAX), *i);
    let mut placed = vec![false; nodes.len()];
    let mut shown: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
    let mut level: Vec<(usize, usize)> = Vec::new();
    let mut pending_roots = roots.clone();
    let mut all_roots = Vec::new();
    loop {
        for r in pending_roots.drain(..) {
            if !placed[r] {
                placed[r] = true;
                all_roots.push(r);
                level.push((r, 0));
            }
        }
        while let Some((i, depth)) = level.pop() {
            if depth + 1 < MAX_DEPTH {
                for &k in &kids[i] {
                    if !std::mem::replace(&mut placed[k], true) {
                        shown[i].push(k);
                        level.push((k, depth + 1));
                    }
                }
            } else {
                let mut todo = kids[i].clone();
                while let Some(k) = todo.pop() {
                    if !std::mem::replace(&mut placed[k], true) {
                        shown[i].push(k);
                        todo.extend(kids[k].iter().copied());
                    }
                }
            }
        }
        match (0..nodes.len()).find(|&i| !placed[i]) {
            Some(i) => pending_roots.push(i),
            None => break,
        }
    }
    all_roots.sort_by_key(start_of);
    for list in &mut shown {
        list.sort_by_key(start_of);
    }
    // Rendered leaves first, without recursion.
    let mut rendered: Vec<Option<Value>> = vec![None; nodes.len()];
    let mut stack: Vec<(usize, bool)> = all_roots.iter().rev().map(|&i| (i, false)).collect();
    while let Some((i, expanded)) = stack.pop() {
        if !expanded {
            stack.push((i, true));
            stack.extend(shown[i].iter().rev().map(|&k| (k, false)));
            continue;
        }
        let node = &nodes[i];
        let kids_json: Vec<Value> = shown[i].iter().filter_map(|&k| rendered[k].take()).collect();
        rendered[i] = Some(json!({
            "id": node.id,
            "parent_id": node.parent,
            "type": node.kind,
            "name": node.name,
            "start": node.start_ns.map(rfc3339_of_nanos),
            "end": node.end_ns.map(rfc3339_of_nanos),
            "duration_ms": match (node.start_ns, node.end_ns) { (Some(s), Some(e)) => json!((e.saturating_sub(s) as f64) / 1e6), _ => Value::Null },
            "is_error": node.is_error,
            "input_tokens": node.input_tokens,
            "output_tokens": node.output_tokens,
            "cost_usd": node.cost_usd,
            "detail": node.detail,
        }));
        // Moved in, not through `json!` (which would copy the whole subtree at every level).
        if let Some(Value::Object(map)) = rendered[i].as_mut() {
            map.insert("children".into(), Value::Array(kids_json));
        }
    }
    let tree: Vec<Value> = all_roots.iter().filter_map(|&i| rendered[i].take()).collect();

    let mut view = json!({
        "trace_id": trace_id,
        "start": first.map(rfc3339_of_nanos),
        "end": last.map(rfc3339_of_nanos),
        "totals": {
            "duration_ms": match (first, last) { (Some(s), Some(e)) => json!((e.saturating_sub(s) as f64) / 1e6), _ => Value::Null },
            "spans": span_count,
            "llm_calls": llm_calls,
            "tool_calls": tool_calls,
            "input_tokens": input_tokens,
            "output_tokens": output_tokens,
            "cost_usd": cost,
            "errors": errors + node_errors,
            "guardrail_blocks": guardrail_blocks,
            "events": events.len(),
        },
        "flags": flags,
    });
    view["tree"] = Value::Array(tree);
    view["events"] = Value::Array(timeline);
    view
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, name: &str, start_ms: u64, end_ms: u64, attributes: Value) -> Value {
        let base = 1_764_927_000_000_000_000u64;
        json!({"trace_id": "t", "span_id": id, "parent_span_id": parent, "name": name,
               "start_unix_nano": base + start_ms * 1_000_000, "end_unix_nano": base + end_ms * 1_000_000,
               "attributes": attributes, "events": [], "status_code": 0})
    }

    fn event(name: &str, at: &str, properties: Value) -> Value {
        json!({"id": format!("{name}-{at}"), "event": name, "distinct_id": "user_1", "timestamp": at, "properties": properties})
    }

    #[test]
    fn spans_and_events_make_one_tree_with_totals() {
        let spans = vec![
            span("a", None, "agent_run", 0, 3000, json!({"feature_flag.key": "agent_debugger_ui", "feature_flag.result.variant": "on"})),
            span("g", Some("a"), "chat gpt-4o-mini", 100, 1100, json!({"gen_ai.request.model": "gpt-4o-mini", "gen_ai.usage.input_tokens": 12, "gen_ai.usage.output_tokens": 5})),
            span("o", Some("zz"), "orphan", 50, 60, json!({})),
        ];
        let events = vec![
            // The $ai_generation made from span g: merged into its node.
            event("$ai_generation", "2025-12-05T09:30:01.100Z", json!({"$ai_span_id": "g", "$ai_parent_id": "a", "$ai_total_cost_usd": 4.5e-6, "$ai_input_tokens": 12, "$ai_output_tokens": 5})),
            // A wrapper's generation, no span: its own node under a.
            event("$ai_generation", "2025-12-05T09:30:02.500Z", json!({"$ai_span_id": "w", "$ai_parent_id": "a", "$ai_latency": 0.5, "$ai_total_cost_usd": 1.0e-5, "$ai_model": "claude-sonnet-4-5", "$ai_input_tokens": 10, "$ai_output_tokens": 6})),
            event("$ai_trace", "2025-12-05T09:30:03Z", json!({"$ai_span_id": "t", "$ai_total_cost_usd": 99.0})),
            event("tool_used", "2025-12-05T09:30:01.500Z", json!({"tool_name": "web_search", "success": false})),
            event("prompt_blocked", "2025-12-05T09:30:00.500Z", json!({"$feature/enable_guardrails_tracing": true})),
            event("$feature_flag_called", "2025-12-05T09:30:00.010Z", json!({"$feature_flag": "versioned_rag_tracking", "$feature_flag_response": "v2"})),
        ];
        // A retried export and a retried batch stored some parts twice: they count once.
        let mut spans = spans;
        spans.push(spans[1].clone());
        let mut events = events;
        events.push(events[1].clone());
        let view = trace_view("t", &spans, &events);
        let totals = &view["totals"];
        assert_eq!(totals["llm_calls"], 2, "{view:#}");
        assert_eq!(totals["input_tokens"], 22);
        assert_eq!(totals["output_tokens"], 11);
        assert!((totals["cost_usd"].as_f64().unwrap() - 1.45e-5).abs() < 1e-12, "not the $ai_trace's copy: {totals}");
        assert_eq!(totals["tool_calls"], 1);
        assert_eq!(totals["guardrail_blocks"], 1);
        assert_eq!(totals["spans"], 3, "distinct spans");
        assert_eq!(totals["errors"], 1, "the failed tool call");
        let tree = view["tree"].as_array().unwrap();
        let names: Vec<&str> = tree.iter().map(|n| n["name"].as_str().unwrap()).collect();
        assert!(names.contains(&"agent_run") && names.contains(&"orphan"), "{names:?}");
        let run = tree.iter().find(|n| n["name"] == "agent_run").unwrap();
        let kids: Vec<&str> = run["children"].as_array().unwrap().iter().map(|n| n["id"].as_str().unwrap()).collect();
        assert_eq!(kids, vec!["g", "w"], "in start order");
        assert_eq!(run["children"][0]["type"], "generation");
        assert_eq!(run["children"][0]["cost_usd"], 4.5e-6);
        assert_eq!(view["flags"]["agent_debugger_ui"], "on");
        assert_eq!(view["flags"]["enable_guardrails_tracing"], true);
        assert_eq!(view["flags"]["versioned_rag_tracking"], "v2");
        let timeline: Vec<&str> = view["events"].as_array().unwrap().iter().map(|e| e["event"].as_str().unwrap()).collect();
        assert_eq!(timeline, vec!["$feature_flag_called", "prompt_blocked", "tool_used"]);
    }

    #[test]
    fn the_same_parts_in_any_order_give_the_same_view() {
        let spans = vec![span("a", None, "run", 0, 10, json!({})), span("b", Some("a"), "step", 1, 2, json!({}))];
        let events = vec![event("tool_used", "2025-12-05T09:30:00.005Z", json!({}))];
        let one = trace_view("t", &spans, &events);
        let mut reversed = spans.clone();
        reversed.reverse();
        assert_eq!(trace_view("t", &reversed, &events), one);
    }

    #[test]
    fn parent_cycles_and_deep_chains_are_rendered_without_recursion() {
        let mut spans: Vec<Value> = (0..50_000).map(|i| span(&format!("s{i}"), Some(&format!("s{}", i + 1)), "x", 0, 1, json!({}))).collect();
        spans.push(span("s50000", Some("s0"), "x", 0, 1, json!({})));
        let view = trace_view("t", &spans, &[]);
        assert_eq!(view["totals"]["spans"], 50_001);
        assert_eq!(view["tree"].as_array().unwrap().len(), 1, "a cycle still shows, once");
        let mut depth = 0;
        let mut node = &view["tree"][0];
        while let Some(child) = node["children"].as_array().and_then(|c| c.first()) {
            node = child;
            depth += 1;
        }
        assert_eq!(depth, MAX_DEPTH, "nesting is capped");
        assert_eq!(serde_json::to_string(&view).unwrap().matches("\"id\"").count(), 50_001, "every span shown");
    }
}

//! A span as PostHog's `$ai_*` event (PostHog's capture + `otel/attribute-mapping.ts`, with
//! OpenLLMetry's and Langfuse's attributes added). The span's attributes stay on the event
//! (over the resource's, less `host.`/`process.`/`os.`/`telemetry.`), except the message
//! contents moved to `$ai_input`/`$ai_output_choices`.
//!
//! Cache tokens: the GenAI conventions count cached tokens inside `gen_ai.usage.input_tokens`
//! (OpenLLMetry's Anthropic instrumentation adds them in), so an event that carries cache tokens
//! from `gen_ai.*`/`llm.*` attributes says `$ai_cache_reporting_exclusive: false`, and PostHog's
//! cost rules then subtract them even for Anthropic. Langfuse's `usage_details` are the
//! provider's raw usage: OpenAI's (`prompt_tokens`, inclusive) or Anthropic's (`input_tokens`,
//! exclusive) or Langfuse's own (`input`, exclusive), flagged accordingly.

use serde_json::{json, Map, Value};

use super::Span;

/// One span mapped onto a PostHog LLM-analytics event.
#[derive(Debug, Clone, PartialEq)]
pub struct AiEvent {
    /// `$ai_generation`, `$ai_embedding`, `$ai_span` or `$ai_trace`.
    pub event: &'static str,
    /// Resource or span `posthog.distinct_id`, else `user.id`, else `langfuse.user.id`; `None`
    /// → the caller picks (PostHog: one random UUID per request).
    pub distinct_id: Option<String>,
    /// The span's start, RFC 3339 with microseconds.
    pub timestamp: String,
    pub properties: Map<String, Value>,
}

const AI_PREFIXES: [&str; 5] = ["gen_ai.", "llm.", "ai.", "traceloop.", "langfuse."];
const RESOURCE_DROPPED_PREFIXES: [&str; 4] = ["host.", "process.", "os.", "telemetry."];

/// Attributes whose content moves into `$ai_*` properties (so the event does not carry it twice).
const MOVED: [&str; 5] = [
    "gen_ai.input.messages",
    "gen_ai.output.messages",
    "gen_ai.system_instructions",
    "langfuse.observation.input",
    "langfuse.observation.output",
];

/// Whether PostHog's span processor would keep the span: a name or an attribute key under
/// `gen_ai.`, `llm.`, `ai.`, `traceloop.` (and, for Langfuse's SDK, `langfuse.`).
pub fn is_ai_span(span: &Span) -> bool {
    let ai = |key: &str| AI_PREFIXES.iter().any(|p| key.starts_with(p));
    ai(&span.name) || span.attributes.keys().any(|k| ai(k))
}

fn text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        Value::Bool(b) => Some(b.to_string()),
        _ => None,
    }
}

/// A token count: integer, integral double or decimal string, not negative.
fn count(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::Number(n) => n
            .as_u64()
            .or_else(|| n.as_f64().filter(|f| *f >= 0.0 && f.fract() == 0.0 && *f < 1e18).map(|f| f as u64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// A JSON string parsed (as the attribute-mapping's `parseJSON`), any other value as is.
fn parsed(v: &Value) -> Value {
    match v {
        Value::String(s) => serde_json::from_str(s).unwrap_or_else(|_| v.clone()),
        other => other.clone(),
    }
}

fn first<'a>(attrs: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter()
        .find_map(|k| attrs.get(*k).filter(|v| !v.is_null() && *v != &Value::String(String::new())))
}

fn rfc3339(nanos: u64) -> String {
    let secs = i64::try_from(nanos / 1_000_000_000).unwrap_or(i64::MAX);
    let sub = u32::try_from(nanos % 1_000_000_000).unwrap_or(0);
    chrono::DateTime::from_timestamp(secs, sub)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// `$ai_generation`, `$ai_embedding` or `None` (a span) from the operation attributes.
fn llm_call_kind(attrs: &Map<String, Value>) -> Option<&'static str> {
    let op = text(attrs.get("gen_ai.operation.name")).map(|s| s.to_ascii_lowercase());
    match op.as_deref() {
        Some("chat" | "text_completion" | "generate_content" | "completion") => return Some("$ai_generation"),
        Some("embeddings" | "embedding") => return Some("$ai_embedding"),
        _ => {}
    }
    match text(attrs.get("llm.request.type")).map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("chat" | "completion") => return Some("$ai_generation"),
        Some("embedding" | "embeddings") => return Some("$ai_embedding"),
        _ => {}
    }
    match text(attrs.get("langfuse.observation.type")).map(|s| s.to_ascii_lowercase()).as_deref() {
        Some("generation") => Some("$ai_generation"),
        Some("embedding") => Some("$ai_embedding"),
        _ => None,
    }
}

/// Messages from span events (older GenAI conventions: `gen_ai.system.message`,
/// `gen_ai.user.message`, `gen_ai.assistant.message`, `gen_ai.tool.message`, `gen_ai.choice`).
fn messages_of_events(span: &Span) -> (Vec<Value>, Vec<Value>) {
    let mut input = Vec::new();
    let mut output = Vec::new();
    for event in &span.events {
        let role = match event.name.as_str() {
            "gen_ai.system.message" => "system",
            "gen_ai.user.message" => "user",
            "gen_ai.assistant.message" => "assistant",
            "gen_ai.tool.message" => "tool",
            "gen_ai.choice" => {
                let a = &event.attributes;
                let mut choice = match a.get("message").map(parsed) {
                    Some(Value::Object(m)) => m,
                    _ => {
                        let mut m = Map::new();
                        m.insert("role".into(), json!("assistant"));
                        if let Some(content) = a.get("content").map(parsed) {
                            m.insert("content".into(), content);
                        }
                        m
                    }
                };
                choice.entry("role").or_insert(json!("assistant"));
                if let Some(reason) = a.get("finish_reason") {
                    choice.insert("finish_reason".into(), reason.clone());
                }
                output.push(Value::Object(choice));
                continue;
            }
            _ => continue,
        };
        let a = &event.attributes;
        let mut message = Map::new();
        message.insert("role".into(), a.get("role").cloned().unwrap_or_else(|| json!(role)));
        if let Some(content) = a.get("content").map(parsed) {
            message.insert("content".into(), content);
        }
        if let Some(calls) = a.get("tool_calls").map(parsed) {
            message.insert("tool_calls".into(), calls);
        }
        if let Some(id) = a.get("id") {
            message.insert("tool_call_id".into(), id.clone());
        }
        input.push(Value::Object(message));
    }
    (input, output)
}

/// Traceloop's flattened `gen_ai.prompt.{i}.role/content` (or `gen_ai.completion.{i}.…`).
fn flattened_messages(attrs: &Map<String, Value>, prefix: &str) -> Vec<Value> {
    let mut by_index: std::collections::BTreeMap<u64, Map<String, Value>> = Default::default();
    for (key, value) in attrs {
        let Some(rest) = key.strip_prefix(prefix) else { continue };
        let Some((index, field)) = rest.split_once('.') else { continue };
        let (Ok(index), false) = (index.parse::<u64>(), field.is_empty()) else {
            continue;
        };
        if by_index.len() >= 10_000 && !by_index.contains_key(&index) {
            continue;
        }
        by_index.entry(index).or_default().insert(field.to_string(), parsed(value));
    }
    by_index.into_values().map(Value::Object).collect()
}

struct Usage {
    input: Option<u64>,
    output: Option<u64>,
    cache_read: Option<u64>,
    cache_creation: Option<u64>,
    reasoning: Option<u64>,
    total: Option<u64>,
    exclusive: bool,
}

/// Langfuse's `usage_details`: the provider's raw usage or Langfuse's own keys.
fn langfuse_usage(details: &Map<String, Value>) -> Usage {
    let nested = |outer: &str, inner: &str| count(details.get(outer).and_then(|o| o.get(inner)));
    if details.contains_key("prompt_tokens") || details.contains_key("completion_tokens") {
        // OpenAI's usage object: cached tokens are inside prompt_tokens.
        return Usage {
            input: count(details.get("prompt_tokens")),
            output: count(details.get("completion_tokens")),
            cache_read: nested("prompt_tokens_details", "cached_tokens"),
            cache_creation: None,
            reasoning: nested("completion_tokens_details", "reasoning_tokens"),
            total: count(details.get("total_tokens")),
            exclusive: false,
        };
    }
    let get = |keys: &[&str]| keys.iter().find_map(|k| count(details.get(*k)));
    Usage {
        input: get(&["input_tokens", "input"]),
        output: get(&["output_tokens", "output"]),
        cache_read: get(&["cache_read_input_tokens", "input_cache_read", "input_cached_tokens", "cached_tokens"]),
        cache_creation: get(&["cache_creation_input_tokens", "input_cache_creation", "input_cache_write"]),
        reasoning: get(&["output_reasoning_tokens", "reasoning_tokens", "output_reasoning"]),
        total: get(&["total_tokens", "total"]),
        exclusive: true,
    }
}

fn otel_usage(attrs: &Map<String, Value>) -> Usage {
    let get = |keys: &[&str]| keys.iter().find_map(|k| count(attrs.get(*k)));
    Usage {
        input: get(&["gen_ai.usage.input_tokens", "gen_ai.usage.prompt_tokens", "llm.usage.prompt_tokens"]),
        output: get(&["gen_ai.usage.output_tokens", "gen_ai.usage.completion_tokens", "llm.usage.completion_tokens"]),
        cache_read: get(&[
            "gen_ai.usage.cache_read_input_tokens",
            "gen_ai.usage.cache_read.input_tokens",
            "llm.usage.cache_read_input_tokens",
            "gen_ai.usage.cached_tokens",
        ]),
        cache_creation: get(&[
            "gen_ai.usage.cache_creation_input_tokens",
            "gen_ai.usage.cache_creation.input_tokens",
            "llm.usage.cache_creation_input_tokens",
        ]),
        reasoning: get(&[
            "gen_ai.usage.reasoning_tokens",
            "gen_ai.usage.reasoning.output_tokens",
            "llm.usage.reasoning_tokens",
        ]),
        total: get(&["gen_ai.usage.total_tokens", "llm.usage.total_tokens"]),
        exclusive: false,
    }
}

/// PostHog's event for an AI span (see the module doc); `None` for a span that is not about AI
/// (the caller still stores the span).
pub fn to_ai_event(span: &Span) -> Option<AiEvent> {
    if !is_ai_span(span) {
        return None;
    }
    let attrs = &span.attributes;
    let call = llm_call_kind(attrs);
    let event = match call {
        Some(kind) => kind,
        None if span.parent_span_id.is_none() => "$ai_trace",
        None => "$ai_span",
    };

    let mut p = Map::new();
    for (key, value) in &span.resource {
        if !RESOURCE_DROPPED_PREFIXES.iter().any(|prefix| key.starts_with(prefix)) {
            p.insert(key.clone(), value.clone());
        }
    }
    for (key, value) in attrs {
        if !MOVED.contains(&key.as_str()) {
            p.insert(key.clone(), value.clone());
        }
    }

    p.insert("$ai_trace_id".into(), json!(span.trace_id));
    p.insert("$ai_span_id".into(), json!(span.span_id));
    if let Some(parent) = &span.parent_span_id {
        p.insert("$ai_parent_id".into(), json!(parent));
    }
    p.insert("$ai_ingestion_source".into(), json!("otel"));
    p.insert("$otel_span_name".into(), json!(span.name));
    p.insert("$otel_start_time_unix_nano".into(), json!(span.start_unix_nano));
    p.insert("$otel_end_time_unix_nano".into(), json!(span.end_unix_nano));
    p.insert("$ai_span_name".into(), json!(span.name));
    if let Some(name) = text(attrs.get("langfuse.trace.name")) {
        p.insert("$ai_trace_name".into(), json!(name));
    }
    p.insert("$ai_latency".into(), json!(span.duration_nanos() as f64 / 1e9));

    let model = text(first(
        attrs,
        &[
            "gen_ai.response.model",
            "gen_ai.request.model",
            "langfuse.observation.model.name",
            "llm.response.model",
            "llm.request.model",
            "ai.model.id",
        ],
    ));
    if let Some(model) = model {
        p.insert("$ai_model".into(), json!(model));
    }
    if let Some(provider) = text(first(attrs, &["gen_ai.provider.name", "gen_ai.system", "ai.model.provider"])) {
        p.insert("$ai_provider".into(), json!(provider.to_ascii_lowercase()));
    }
    let base_url = text(first(attrs, &["gen_ai.openai.api_base", "server.address"]));
    if let Some(url) = base_url {
        p.insert("$ai_base_url".into(), json!(url));
    }
    if let Some(lib) = text(span.resource.get("telemetry.sdk.name")) {
        p.insert("$ai_lib".into(), json!(lib));
    }
    if let Some(version) = text(span.resource.get("telemetry.sdk.version")) {
        p.insert("$ai_lib_version".into(), json!(version));
    }
    if let Some(session) = text(first(attrs, &["langfuse.session.id", "session.id", "posthog.ai.session_id"]).or_else(|| span.resource.get("session.id"))) {
        p.insert("$ai_session_id".into(), json!(session));
    }
    if let Some(kind) = text(attrs.get("langfuse.observation.type")).filter(|k| !matches!(k.as_str(), "generation" | "embedding")) {
        p.insert("$ai_span_type".into(), json!(kind));
    } else if call.is_none() {
        match text(attrs.get("gen_ai.operation.name")).as_deref() {
            Some("execute_tool") => {
                p.insert("$ai_span_type".into(), json!("tool"));
            }
            Some("invoke_agent" | "create_agent") => {
                p.insert("$ai_span_type".into(), json!("agent"));
            }
            _ => {}
        }
    }

    // Messages: semantic-convention attributes, then Traceloop's flattened ones, then span
    // events; Langfuse's observation input/output.
    let is_call = call.is_some();
    let mut input = attrs.get("gen_ai.input.messages").map(parsed);
    if input.is_none() {
        let flat = flattened_messages(attrs, "gen_ai.prompt.");
        if !flat.is_empty() {
            input = Some(Value::Array(flat));
        }
    }
    let mut output = attrs.get("gen_ai.output.messages").map(parsed);
    if output.is_none() {
        let flat = flattened_messages(attrs, "gen_ai.completion.");
        if !flat.is_empty() {
            output = Some(Value::Array(flat));
        }
    }
    let (event_input, event_output) = messages_of_events(span);
    if input.is_none() && !event_input.is_empty() {
        input = Some(Value::Array(event_input));
    }
    if output.is_none() && !event_output.is_empty() {
        output = Some(Value::Array(event_output));
    }
    if let Some(instructions) = attrs.get("gen_ai.system_instructions").map(parsed) {
        let system = match instructions {
            Value::Array(parts) => json!({"role": "system", "parts": parts}),
            other => json!({"role": "system", "content": other}),
        };
        input = Some(match input {
            Some(Value::Array(mut messages)) => {
                messages.insert(0, system);
                Value::Array(messages)
            }
            Some(other) => json!([system, other]),
            None => json!([system]),
        });
    }
    let langfuse_input = attrs.get("langfuse.observation.input").map(parsed);
    let langfuse_output = attrs.get("langfuse.observation.output").map(parsed);
    if is_call {
        if let Some(v) = input.or(langfuse_input) {
            p.insert("$ai_input".into(), v);
        }
        if let Some(v) = output.or(langfuse_output) {
            let choices = if v.is_array() { v } else { json!([v]) };
            p.insert("$ai_output_choices".into(), choices);
        }
    } else {
        if let Some(v) = langfuse_input.or(input) {
            p.insert("$ai_input_state".into(), v);
        }
        if let Some(v) = langfuse_output.or(output) {
            p.insert("$ai_output_state".into(), v);
        }
    }

    // Tokens.
    let mut usage = otel_usage(attrs);
    if usage.input.is_none() && usage.output.is_none() {
        if let Some(Value::Object(details)) = attrs.get("langfuse.observation.usage_details").map(parsed) {
            usage = langfuse_usage(&details);
        }
    }
    let mut put = |key: &str, v: Option<u64>| {
        if let Some(v) = v {
            p.insert(key.into(), json!(v));
        }
    };
    put("$ai_input_tokens", usage.input);
    put("$ai_output_tokens", usage.output);
    put("$ai_cache_read_input_tokens", usage.cache_read);
    put("$ai_cache_creation_input_tokens", usage.cache_creation);
    put("$ai_reasoning_tokens", usage.reasoning);
    put("$ai_total_tokens", usage.total);
    if usage.cache_read.is_some() || usage.cache_creation.is_some() {
        p.insert("$ai_cache_reporting_exclusive".into(), json!(usage.exclusive));
    }

    // Costs the client computed (Langfuse), taken as PostHog takes client-sent costs.
    if let Some(Value::Object(costs)) = attrs.get("langfuse.observation.cost_details").map(parsed) {
        for (from, to) in [
            ("input", "$ai_input_cost_usd"),
            ("output", "$ai_output_cost_usd"),
            ("total", "$ai_total_cost_usd"),
        ] {
            if let Some(n) = costs.get(from).and_then(Value::as_f64) {
                p.insert(to.into(), json!(n));
            }
        }
    }

    // Model parameters.
    let mut params = match attrs.get("langfuse.observation.model.parameters").map(parsed) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    };
    for (key, name) in [
        ("gen_ai.request.temperature", "temperature"),
        ("gen_ai.request.max_tokens", "max_tokens"),
        ("gen_ai.request.top_p", "top_p"),
        ("gen_ai.request.top_k", "top_k"),
        ("gen_ai.request.frequency_penalty", "frequency_penalty"),
        ("gen_ai.request.presence_penalty", "presence_penalty"),
        ("gen_ai.request.seed", "seed"),
        ("gen_ai.request.stop_sequences", "stop"),
    ] {
        if let Some(v) = attrs.get(key) {
            params.insert(name.into(), v.clone());
        }
    }
    if let Some(Value::Bool(stream)) = attrs.get("gen_ai.is_streaming").or(attrs.get("llm.is_streaming")) {
        params.insert("stream".into(), json!(stream));
        p.insert("$ai_stream".into(), json!(stream));
    }
    if is_call && !params.is_empty() {
        p.insert("$ai_model_parameters".into(), Value::Object(params));
    }
    if let Some(tools) = attrs.get("gen_ai.tool.definitions").map(parsed) {
        p.insert("$ai_tools".into(), tools);
    }
    if let Some(reasons) = attrs.get("gen_ai.response.finish_reasons") {
        if let Some(first) = reasons.as_array().and_then(|r| r.first()).or(Some(reasons)).and_then(|r| text(Some(r))) {
            p.insert("$ai_stop_reason".into(), json!(first));
        }
    }

    // Errors and HTTP status.
    let is_error = span.status_code == 2;
    p.insert("$ai_is_error".into(), json!(is_error));
    if is_error {
        let error = span
            .status_message
            .clone()
            .or_else(|| text(attrs.get("error.type")))
            .unwrap_or_else(|| "error".into());
        p.insert("$ai_error".into(), json!(error));
        if let Some(kind) = text(attrs.get("error.type")) {
            p.insert("$ai_error_type".into(), json!(kind));
        }
    }
    let http_status =
        count(first(attrs, &["http.response.status_code", "http.status_code"])).or_else(|| span.status_message.as_deref().and_then(status_in_message));
    if let Some(status) = http_status {
        p.insert("$ai_http_status".into(), json!(status));
    }

    // Flag variants on the span and in its events.
    let mut flag = |a: &Map<String, Value>| {
        if let (Some(key), Some(variant)) = (
            text(a.get("feature_flag.key")),
            first(a, &["feature_flag.result.variant", "feature_flag.variant", "feature_flag.result.value"]),
        ) {
            p.insert(format!("$feature/{key}"), variant.clone());
        }
    };
    flag(attrs);
    for e in &span.events {
        flag(&e.attributes);
    }

    let distinct_id = text(span.resource.get("posthog.distinct_id"))
        .or_else(|| text(attrs.get("posthog.distinct_id")))
        .or_else(|| text(span.resource.get("user.id")))
        .or_else(|| text(attrs.get("user.id")))
        .or_else(|| text(attrs.get("langfuse.user.id")));

    Some(AiEvent {
        event,
        distinct_id,
        timestamp: rfc3339(span.start_unix_nano),
        properties: p,
    })
}

/// `"Error code: 429 - …"` (the OpenAI and Anthropic clients' message) → 429.
fn status_in_message(message: &str) -> Option<u64> {
    let rest = &message[message.find("Error code: ")? + "Error code: ".len()..];
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().ok().filter(|s| (100..600).contains(s))
}

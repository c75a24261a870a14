//! LLM analytics: `$ai_*` events enriched at intake (PostHog's server-side steps and cost,
//! `switchyard_llm::enrich`), OTLP/HTTP trace export (`POST /v1/traces`, PostHog's
//! `/i/v0/ai/otel`, Langfuse's `/api/public/otel/v1/traces`) stored durably with the events,
//! GenAI spans also taken in as `$ai_*` events, and the trace view that puts a run together.

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Map, Value};
use switchyard_event::model::format_time;
use switchyard_event::{posthog, Accepted};
use switchyard_store::{AppendBatch, EventLog, EventQuery, KeyKind, LogError, SpanRecord};

use crate::api::{authorize, ApiError};
use crate::intake::{read_limited_body, request_meta, InFlight, Peer};
use crate::AppState;

/// Whether an event is one enrichment looks at (the rest pass untouched, unparsed).
fn is_llm_event(name: &str) -> bool {
    name.starts_with("$ai_") || name == "model_cost" || name == "agent_execution"
}

/// Enriches an accepted LLM event in place: its stored JSON's properties get PostHog's
/// server-side properties and cost; an `$ai_*` event without a trace id gets `$ai_trace_id`'s.
pub fn enrich(state: &AppState, event: &mut Accepted) {
    if !state.config.llm.enrich || !is_llm_event(&event.event) {
        return;
    }
    let custom = state.project_prices.get(event.project_id);
    let prices = state.prices();
    let Some((body, outcome, trace)) =
        enrich_spliced(&event.event, &event.body, prices, custom.as_deref()).or_else(|| enrich_whole(&event.event, &event.body, prices, custom.as_deref()))
    else {
        return;
    };
    event.body = body;
    if outcome.costed {
        state.metrics.llm_costed.inc();
    }
    if let Some(model) = outcome.unmatched_model {
        state.metrics.llm_unmatched.inc();
        tracing::debug!(model, "no price for this model: cost left unset");
    }
    if event.trace_id.is_none() {
        // Normalization took `$ai_trace_id` already; a number there is a string only now.
        event.trace_id = trace.map(|t| normalize_trace_id(&t));
    }
}

type Enriched = (String, switchyard_llm::enrich::Enrichment, Option<String>);

/// The event's `$ai_trace_id`, when it is a non-empty string.
fn ai_trace(properties: &Map<String, Value>) -> Option<String> {
    properties.get("$ai_trace_id").and_then(Value::as_str).filter(|t| !t.is_empty()).map(str::to_owned)
}

/// Enrichment without rebuilding the event: only the properties enrichment reads are parsed
/// (not an `$ai_*` event's messages), and what it adds is written into the stored JSON's
/// properties object as text. `None` when that cannot be done (a key with escapes, a value
/// enrichment changed rather than added): the caller rebuilds the whole event instead.
fn enrich_spliced(name: &str, body: &str, prices: &switchyard_llm::prices::PriceBook, custom: Option<&switchyard_llm::prices::PriceBook>) -> Option<Enriched> {
    use serde_json::value::RawValue;
    use std::collections::HashMap;
    let top: HashMap<&str, &RawValue> = serde_json::from_str(body).ok()?;
    let raw = top.get("properties")?.get();
    let properties: HashMap<&str, &RawValue> = serde_json::from_str(raw).ok()?;
    let ai = name.starts_with("$ai_");
    let mut read = Map::new();
    for (key, value) in &properties {
        let wanted = !ai
            || (key.starts_with("$ai_")
                && !matches!(*key, "$ai_input" | "$ai_tools" | "$ai_instructions")
                && (*key != "$ai_output_choices" || value.get().contains("tool")));
        if wanted {
            read.insert((*key).to_owned(), serde_json::from_str(value.get()).ok()?);
        }
    }
    let before = read.clone();
    let outcome = switchyard_llm::enrich::enrich(name, &mut read, prices, custom);
    if read.len() < before.len() {
        return None;
    }
    let mut added = String::new();
    for (key, value) in &read {
        match before.get(key) {
            None => {
                added.push(',');
                added.push_str(&Value::String(key.clone()).to_string());
                added.push(':');
                added.push_str(&value.to_string());
            }
            Some(old) if old == value => {}
            Some(_) => return None,
        }
    }
    let trace = ai_trace(&read);
    if added.is_empty() {
        return Some((body.to_owned(), outcome, trace));
    }
    // Where the properties object's closing brace is in the body.
    let start = raw.as_ptr() as usize - body.as_ptr() as usize;
    let close = start + raw.len() - 1;
    let empty = raw[1..raw.len() - 1].trim().is_empty();
    let mut out = String::with_capacity(body.len() + added.len());
    out.push_str(&body[..close]);
    out.push_str(if empty { &added[1..] } else { &added });
    out.push_str(&body[close..]);
    Some((out, outcome, trace))
}

/// Enrichment over the whole event, parsed and written again.
fn enrich_whole(name: &str, body: &str, prices: &switchyard_llm::prices::PriceBook, custom: Option<&switchyard_llm::prices::PriceBook>) -> Option<Enriched> {
    let Ok(Value::Object(mut body)) = serde_json::from_str::<Value>(body) else { return None };
    let mut properties = match body.remove("properties") {
        Some(Value::Object(p)) => p,
        _ => Map::new(),
    };
    let outcome = switchyard_llm::enrich::enrich(name, &mut properties, prices, custom);
    let trace = ai_trace(&properties);
    body.insert("properties".into(), Value::Object(properties));
    Some((Value::Object(body).to_string(), outcome, trace))
}

/// Trace ids as strings; hex ones lowercased (OTel's and PostHog's wrappers' spellings meet).
fn normalize_trace_id(id: &str) -> String {
    if id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
        id.to_ascii_lowercase()
    } else {
        id.to_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// OTLP/HTTP

/// What an OTLP exporter is answered: `google.rpc.Status` in the request's encoding.
struct OtlpAnswer {
    status: StatusCode,
    protobuf: bool,
    /// gRPC status code (3 invalid argument, 16 unauthenticated, 14 unavailable, …).
    code: u32,
    message: String,
    retry_after: Option<u64>,
}

impl IntoResponse for OtlpAnswer {
    fn into_response(self) -> Response {
        let mut response = if self.protobuf {
            (self.status, [(header::CONTENT_TYPE, "application/x-protobuf")], rpc_status(self.code, &self.message)).into_response()
        } else {
            (self.status, axum::Json(json!({"code": self.code, "message": self.message}))).into_response()
        };
        if let Some(secs) = self.retry_after {
            response.headers_mut().insert(header::RETRY_AFTER, secs.into());
        }
        response
    }
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    while n >= 0x80 {
        out.push((n as u8) | 0x80);
        n >>= 7;
    }
    out.push(n as u8);
}

/// `ExportTraceServiceResponse { partial_success = 1: { int64 rejected_spans = 1; string
/// error_message = 2; } }`, encoded by hand; empty when nothing was rejected.
fn export_response(rejected: u64, message: &str) -> Vec<u8> {
    if rejected == 0 {
        return Vec::new();
    }
    let mut inner = vec![0x08];
    varint(rejected, &mut inner);
    inner.push(0x12);
    varint(message.len() as u64, &mut inner);
    inner.extend_from_slice(message.as_bytes());
    let mut out = vec![0x0a];
    varint(inner.len() as u64, &mut out);
    out.extend_from_slice(&inner);
    out
}

/// `google.rpc.Status { int32 code = 1; string message = 2; }`, encoded by hand (two fields).
fn rpc_status(code: u32, message: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + 8);
    out.push(0x08);
    varint(u64::from(code), &mut out);
    out.push(0x12);
    varint(message.len() as u64, &mut out);
    out.extend_from_slice(message.as_bytes());
    out
}

/// The project token of an OTLP request: `Authorization: Bearer <token>` (PostHog, any OTel
/// exporter's headers) or Basic auth with the token as user name (Langfuse's public key).
fn otlp_token(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?.trim();
    if let Some(token) = value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer ")) {
        return Some(token.trim().to_owned());
    }
    let encoded = value.strip_prefix("Basic ").or_else(|| value.strip_prefix("basic "))?;
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    Some(text.split(':').next().unwrap_or_default().to_owned())
}

fn rfc3339_of_nanos(ns: u64) -> String {
    let t = chrono::DateTime::from_timestamp((ns / 1_000_000_000) as i64, (ns % 1_000_000_000) as u32).unwrap_or_default();
    format_time(t)
}

/// `POST /v1/traces`, `/i/v0/ai/otel`, `/api/public/otel/v1/traces`: an OTLP/HTTP trace
/// export (protobuf or JSON, gzip allowed). Its spans, and the `$ai_*` events made from its
/// GenAI spans, are appended in one transaction before the 2xx.
pub async fn otlp_traces(State(state): State<AppState>, peer: Peer, headers: HeaderMap, body: Body) -> Response {
    match take_spans(&state, peer, &headers, body).await {
        Ok((protobuf, rejected, message)) => {
            if protobuf {
                ([(header::CONTENT_TYPE, "application/x-protobuf")], export_response(rejected, &message)).into_response()
            } else if rejected == 0 {
                axum::Json(json!({})).into_response()
            } else {
                axum::Json(json!({"partialSuccess": {"rejectedSpans": rejected.to_string(), "errorMessage": message}})).into_response()
            }
        }
        Err(answer) => {
            state.metrics.otlp_rejected.inc();
            answer.into_response()
        }
    }
}

/// Takes an export in: whether it was protobuf, and the spans left out (with why).
async fn take_spans(state: &AppState, peer: Peer, headers: &HeaderMap, body: Body) -> Result<(bool, u64, String), OtlpAnswer> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("").to_ascii_lowercase();
    let protobuf = content_type.starts_with("application/x-protobuf") || content_type.starts_with("application/protobuf");
    let answer = |status: StatusCode, code: u32, message: String| OtlpAnswer { status, protobuf, code, message, retry_after: None };
    if !protobuf && !content_type.starts_with("application/json") {
        return Err(answer(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            3,
            format!("unsupported content type {content_type:?}: OTLP/HTTP is application/x-protobuf or application/json"),
        ));
    }
    let token = otlp_token(headers).ok_or_else(|| {
        answer(StatusCode::UNAUTHORIZED, 16, "no project token: send `Authorization: Bearer <project token>` (or Basic auth with it as user name)".into())
    })?;
    let project_id = state
        .control
        .lookup(KeyKind::ProjectToken, &token)
        .ok_or_else(|| answer(StatusCode::UNAUTHORIZED, 16, "the project token does not resolve to a known project".into()))?;
    let mut held = InFlight::new(state);
    let raw = read_limited_body(body, state.config.limits.max_request_bytes, &mut held, 408).await.map_err(|e| match e {
        Ok(r) => answer(StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST), 3, r.message),
        Err(()) => OtlpAnswer { retry_after: Some(1), ..answer(StatusCode::SERVICE_UNAVAILABLE, 14, crate::intake::BUSY.into()) },
    })?;
    let gzip = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
    let decoded: Bytes = if gzip || raw.starts_with(&[0x1f, 0x8b]) {
        let limits = switchyard_event::decode::DecodeLimits { max_decompressed_bytes: state.config.limits.max_decompressed_bytes };
        let inflated = switchyard_event::decode::gunzip(&raw, limits)
            .map_err(|r| answer(StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST), 3, r.message))?;
        if !held.reserve(inflated.len()) {
            return Err(OtlpAnswer { retry_after: Some(1), ..answer(StatusCode::SERVICE_UNAVAILABLE, 14, crate::intake::BUSY.into()) });
        }
        Bytes::from(inflated)
    } else {
        raw
    };
    // Decoding builds every span: it runs off the async workers, within the budget (a span
    // costs a few times its encoded size).
    if !held.reserve(decoded.len().saturating_mul(4)) {
        return Err(OtlpAnswer { retry_after: Some(1), ..answer(StatusCode::SERVICE_UNAVAILABLE, 14, crate::intake::BUSY.into()) });
    }
    let meta = request_meta(project_id, headers, peer, &state.config.trusted_proxies);
    let worker = state.clone();
    let (batch, rejected, why) = tokio::task::spawn_blocking(move || build_batch(&worker, &content_type, &decoded, &meta))
        .await
        .map_err(|error| {
            tracing::error!(%error, "decoding an OTLP export failed");
            answer(StatusCode::INTERNAL_SERVER_ERROR, 13, "the export could not be read".into())
        })?
        .map_err(|(status, message)| answer(status, 3, message))?;
    let spans = batch.spans.len() as u64;
    let events = batch.events.len() as u64;
    match state.log.append(batch).await {
        Ok(_) => {
            state.appended.notify_waiters();
            state.metrics.otlp_spans.inc_by(spans);
            state.metrics.events_logged.get_or_create(&crate::metrics::ProtocolLabels { protocol: "otlp" }).inc_by(events);
            Ok((protobuf, rejected, why))
        }
        Err(error) => {
            let retry_after = Some(error.retry_after_secs());
            let status = match error {
                LogError::Overloaded => StatusCode::TOO_MANY_REQUESTS,
                _ => StatusCode::SERVICE_UNAVAILABLE,
            };
            tracing::warn!(%error, "OTLP export refused: the event log cannot take it now");
            let message = match error {
                LogError::Overloaded => "too many exports waiting; retry later",
                LogError::Full => "the server's storage is full",
                _ => "the server cannot store spans right now; retry later",
            };
            Err(OtlpAnswer { retry_after, ..answer(status, 14, message.into()) })
        }
    }
}

/// The spans of a decoded request, and the `$ai_*` events its GenAI spans become (through
/// PostHog's normalization and the same enrichment as captured events).
fn build_batch(
    state: &AppState,
    content_type: &str,
    body: &[u8],
    meta: &switchyard_event::RequestMeta,
) -> Result<(AppendBatch, u64, String), (StatusCode, String)> {
    let decoded = switchyard_llm::otlp::decode_partial(content_type, body)
        .map_err(|e| (StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_REQUEST), e.to_string()))?;
    if decoded.spans.is_empty() && decoded.rejected_spans > 0 {
        return Err((StatusCode::BAD_REQUEST, decoded.rejection.unwrap_or_else(|| "no valid span".into())));
    }
    let spans = decoded.spans;
    let received_at = format_time(meta.received_at);
    let mut batch = AppendBatch::default();
    let custom = state.project_prices.get(meta.project_id);
    for span in &spans {
        if let Some(ai) = switchyard_llm::otlp::to_ai_event(span) {
            match ai_event(state, meta, &received_at, span, ai, custom.as_deref()) {
                Ok(record) => batch.events.push(record),
                Err(quarantined) => batch.quarantined.push(quarantined),
            }
        }
        batch.spans.push(SpanRecord {
            project_id: meta.project_id,
            trace_id: span.trace_id.clone(),
            span_id: span.span_id.clone(),
            parent_span_id: span.parent_span_id.clone(),
            name: span.name.clone(),
            start_time: rfc3339_of_nanos(span.start_unix_nano),
            end_time: rfc3339_of_nanos(span.end_unix_nano),
            received_at: received_at.clone(),
            body: span.to_json().to_string(),
        });
    }
    Ok((batch, decoded.rejected_spans, decoded.rejection.unwrap_or_default()))
}

/// The `$ai_*` event a GenAI span becomes, built as the unified event directly (a PostHog
/// event, as PostHog's capture makes it of a span), enriched like captured ones; one past the
/// event size limit is quarantined instead.
fn ai_event(
    state: &AppState,
    meta: &switchyard_event::RequestMeta,
    received_at: &str,
    span: &switchyard_llm::otlp::Span,
    ai: switchyard_llm::otlp::AiEvent,
    custom: Option<&switchyard_llm::prices::PriceBook>,
) -> Result<switchyard_store::LogRecord, switchyard_store::QuarantineRecord> {
    let mut properties = ai.properties;
    if state.config.llm.enrich {
        let outcome = switchyard_llm::enrich::enrich(ai.event, &mut properties, state.prices(), custom);
        if outcome.costed {
            state.metrics.llm_costed.inc();
        }
        if outcome.unmatched_model.is_some() {
            state.metrics.llm_unmatched.inc();
        }
    }
    let timestamp = switchyard_event::model::parse_time(&ai.timestamp).map(format_time).unwrap_or_else(|| received_at.to_owned());
    let event = switchyard_event::Event {
        id: switchyard_pipeline::wire::posthog_uuid(&format!("otlp:{}:{}", span.trace_id, span.span_id)).into_owned(),
        project_id: meta.project_id,
        protocol: switchyard_event::Protocol::Posthog,
        kind: switchyard_event::EventType::Track,
        event: ai.event.to_owned(),
        distinct_id: ai.distinct_id.unwrap_or_else(|| span.trace_id.clone()),
        user_id: None,
        anonymous_id: None,
        properties,
        traits: Map::new(),
        traits_set_once: Map::new(),
        context: Map::new(),
        groups: Map::new(),
        group_type: None,
        group_id: None,
        previous_id: None,
        name: None,
        category: None,
        original_timestamp: Some(timestamp.clone()),
        timestamp,
        sent_at: None,
        received_at: received_at.to_owned(),
        trace_id: Some(span.trace_id.clone()),
        span_id: Some(span.span_id.clone()),
        request_ip: meta.ip.clone(),
        extra: Map::new(),
    };
    let accepted = Accepted::from_event(event);
    if accepted.body.len() > state.config.limits.max_event_bytes {
        return Err(switchyard_store::QuarantineRecord {
            project_id: meta.project_id,
            protocol: "otlp",
            received_at: received_at.to_owned(),
            code: "event_too_large".into(),
            reason: format!(
                "the $ai_* event of span {} is {} bytes, over limits.max_event_bytes ({}); the span itself is stored",
                span.span_id,
                accepted.body.len(),
                state.config.limits.max_event_bytes
            ),
            raw: accepted.event_json(),
        });
    }
    Ok(switchyard_store::LogRecord::from_accepted(accepted, false))
}

// ---------------------------------------------------------------------------------------------
// The trace view

/// Most spans and events one trace view reads.
const MAX_TRACE_PARTS: usize = 10_000;

/// `GET /api/projects/{project_id}/traces/{trace_id}`: the run as a tree, its product events in
/// time, the flag variants seen in it, and totals.
pub async fn get_trace(State(state): State<AppState>, Path((project, trace_id)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let trace_id = normalize_trace_id(&trace_id);
    let view = load_trace(&state, project_id, &trace_id).await?;
    if view["totals"]["spans"] == 0 && view["totals"]["events"] == 0 {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", format!("no span or event has trace id {trace_id:?}")));
    }
    Ok(axum::Json(view).into_response())
}

async fn load_trace(state: &AppState, project_id: i64, trace_id: &str) -> Result<Value, ApiError> {
    let spans = state.log.trace_spans(project_id, trace_id, MAX_TRACE_PARTS).await.map_err(ApiError::unavailable)?;
    let events = state
        .log
        .query_events(EventQuery { project_id, trace_id: Some(trace_id.to_owned()), limit: MAX_TRACE_PARTS, ..EventQuery::default() })
        .await
        .map_err(ApiError::unavailable)?;
    let trace_id = trace_id.to_owned();
    tokio::task::spawn_blocking(move || {
        let spans: Vec<Value> = spans.iter().filter_map(|s| serde_json::from_str(s).ok()).collect();
        let events: Vec<Value> = events.iter().filter_map(|e| serde_json::from_str(&e.body).ok()).collect();
        switchyard_llm::trace::trace_view(&trace_id, &spans, &events)
    })
    .await
    .map_err(ApiError::unavailable)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceListParams {
    user: Option<String>,
    workspace: Option<String>,
    agent: Option<String>,
    error: Option<bool>,
    min_cost: Option<f64>,
    after: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
}

/// `GET /api/projects/{project_id}/traces/`: recent traces (by their newest spans and events)
/// with their totals, filtered by user, workspace, agent, error, minimum cost and time.
pub async fn list_traces(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    params: Result<Query<TraceListParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let Query(mut p) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    for (name, value) in [("after", &mut p.after), ("before", &mut p.before)] {
        if let Some(text) = value.as_ref() {
            let parsed =
                switchyard_event::model::parse_time(text).ok_or_else(|| ApiError::invalid(name, format!("`{name}` is not a valid date-time: {text:?}")))?;
            *value = Some(format_time(parsed));
        }
    }
    let limit = p.limit.unwrap_or(50).clamp(1, 500);
    // Candidates: the trace ids of the newest spans and of the newest events that carry one,
    // merged by when their newest part was received, newest first.
    let span_traces = state.log.recent_span_traces(project_id, 20_000).await.map_err(ApiError::unavailable)?;
    let recent = state.log.query_events(EventQuery { project_id, limit: 20_000, ..EventQuery::default() }).await.map_err(ApiError::unavailable)?;
    let candidates = tokio::task::spawn_blocking(move || {
        let mut newest: std::collections::HashMap<String, String> = std::collections::HashMap::new();
        for (trace, received_at) in span_traces {
            let at = newest.entry(trace).or_default();
            if received_at > *at {
                *at = received_at;
            }
        }
        for entry in &recent {
            if let Ok(event) = serde_json::from_str::<Value>(&entry.body) {
                if let (Some(trace), Some(received_at)) = (event["trace_id"].as_str(), event["received_at"].as_str()) {
                    let at = newest.entry(trace.to_owned()).or_default();
                    if received_at > at.as_str() {
                        *at = received_at.to_owned();
                    }
                }
            }
        }
        let mut ordered: Vec<(String, String)> = newest.into_iter().collect();
        ordered.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        ordered.into_iter().map(|(trace, _)| trace).collect::<Vec<String>>()
    })
    .await
    .map_err(ApiError::unavailable)?;
    // Each candidate costs a trace view: at most ten times `limit` are looked at.
    let examined = candidates.len().min(limit.saturating_mul(10));
    let complete = examined == candidates.len();
    let mut results = Vec::new();
    for trace_id in candidates.into_iter().take(examined) {
        if results.len() >= limit {
            break;
        }
        let view = load_trace(&state, project_id, &trace_id).await?;
        if !matches_filters(&view, &p) {
            continue;
        }
        results.push(json!({
            "trace_id": trace_id,
            "start": view["start"],
            "end": view["end"],
            "totals": view["totals"],
            "users": users_of(&view),
            "workspaces": distinct_of(&view, &["properties", "workspace_id"]),
            "agents": distinct_of(&view, &["properties", "agent_id"]),
        }));
    }
    results.sort_by(|a, b| b["start"].as_str().cmp(&a["start"].as_str()));
    Ok(axum::Json(json!({"results": results, "next": null, "complete": complete})).into_response())
}

/// The distinct values at `path` among a view's events.
fn distinct_of(view: &Value, path: &[&str]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    for event in view["events"].as_array().into_iter().flatten() {
        let mut v = event;
        for key in path {
            v = &v[*key];
        }
        if !v.is_null() && !out.contains(v) {
            out.push(v.clone());
        }
    }
    out
}

/// The users of a run: its product events' distinct ids and its `$ai_*` nodes' (their events'
/// distinct ids are kept in the tree's detail), in the order first seen.
fn users_of(view: &Value) -> Vec<Value> {
    let mut users = distinct_of(view, &["distinct_id"]);
    let mut todo: Vec<&Value> = view["tree"].as_array().into_iter().flatten().collect();
    while let Some(node) = todo.pop() {
        if let Some(user) = node["detail"].get("distinct_id").filter(|u| !u.is_null()) {
            if !users.contains(user) {
                users.push(user.clone());
            }
        }
        todo.extend(node["children"].as_array().into_iter().flatten());
    }
    users
}

fn matches_filters(view: &Value, p: &TraceListParams) -> bool {
    let has = |path: &[&str], want: &Option<String>| want.as_ref().is_none_or(|w| distinct_of(view, path).iter().any(|v| v.as_str() == Some(w)));
    let user_ok = p.user.as_ref().is_none_or(|w| users_of(view).iter().any(|v| v.as_str() == Some(w)));
    let errors = view["totals"]["errors"].as_u64().unwrap_or(0);
    let cost = view["totals"]["cost_usd"].as_f64().unwrap_or(0.0);
    let start = view["start"].as_str().unwrap_or("");
    user_ok
        && has(&["properties", "workspace_id"], &p.workspace)
        && has(&["properties", "agent_id"], &p.agent)
        && p.error.is_none_or(|e| e == (errors > 0))
        && p.min_cost.is_none_or(|m| cost >= m)
        && p.after.as_deref().is_none_or(|a| start >= a)
        && p.before.as_deref().is_none_or(|b| start < b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splicing_what_enrichment_adds_equals_rebuilding_the_event() {
        let prices = switchyard_llm::prices::PriceBook::embedded();
        let bodies = [
            // A wrapper's generation, with messages and a tool call.
            json!({"properties": {"$ai_model": "gpt-4o-mini", "$ai_provider": "openai", "$ai_input_tokens": 12, "$ai_output_tokens": 5,
                   "$ai_cache_read_input_tokens": 4, "$ai_trace_id": "Trace-1", "$ai_input": [{"role": "user", "content": "hi"}],
                   "$ai_output_choices": [{"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": "{}"}}]}],
                   "$ai_model_parameters": {"temperature": 0.2, "stream": false}, "workspace_id": "ws_1"}, "context": {"a": 1}}),
            // An error, a number as span id (stringified: a changed value → rebuilt).
            json!({"properties": {"$ai_model": "claude-sonnet-4-5", "$ai_provider": "anthropic", "$ai_input_tokens": 10, "$ai_output_tokens": 6,
                   "$ai_is_error": true, "$ai_error": "Error code: 429 - rate limited at 12:00:01", "$ai_span_id": 7}}),
            // The platform's own event, and one with empty properties.
            json!({"properties": {"model": "gpt-4o-mini", "provider": "openai", "input_tokens": 1200, "output_tokens": 300}}),
            json!({"properties": {}}),
        ];
        for (body, name) in bodies.iter().zip(["$ai_generation", "$ai_generation", "model_cost", "$ai_embedding"]) {
            let text = body.to_string();
            let whole = enrich_whole(name, &text, prices, None).unwrap();
            match enrich_spliced(name, &text, prices, None) {
                Some(spliced) => {
                    let (a, b): (Value, Value) = (serde_json::from_str(&spliced.0).unwrap(), serde_json::from_str(&whole.0).unwrap());
                    assert_eq!(a, b, "{name}");
                    assert_eq!(spliced.1, whole.1);
                    assert_eq!(spliced.2, whole.2);
                }
                None => assert!(body["properties"]["$ai_span_id"].is_number(), "only a changed value falls back: {body}"),
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Insights

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InsightParams {
    after: Option<String>,
    before: Option<String>,
    /// `model`, `provider`, `workspace`, `organization`, `agent` or `user`.
    group_by: Option<String>,
    /// `day` (default) or `all`.
    interval: Option<String>,
}

/// Most events of each kind one insights answer reads (newest first); past it the answer says
/// `"complete": false`.
const MAX_INSIGHT_EVENTS: usize = 1_000_000;

#[derive(Default)]
struct Bucket {
    llm_calls: u64,
    errors: u64,
    cost_usd: f64,
    input_tokens: u64,
    output_tokens: u64,
    latencies: Vec<f64>,
    guardrail_blocks: u64,
    tool_calls: u64,
    tool_failures: u64,
}

type Buckets = std::collections::BTreeMap<(String, String), Bucket>;

/// Adds a page of events of kind `name` to the buckets.
fn add_page(buckets: &mut Buckets, page: &[switchyard_store::LogEntry], name: &str, daily: bool, dimension: fn(&Value) -> Option<String>) {
    for entry in page {
        let Ok(event) = serde_json::from_str::<Value>(&entry.body) else { continue };
        let day = if daily { event["timestamp"].as_str().map_or(String::new(), |t| t.chars().take(10).collect()) } else { String::new() };
        let group = dimension(&event).unwrap_or_default();
        let bucket = buckets.entry((day, group)).or_default();
        let props = &event["properties"];
        match name {
            "prompt_blocked" => bucket.guardrail_blocks += 1,
            "tool_used" => {
                bucket.tool_calls += 1;
                if props["success"] == false || props["status"] == "error" {
                    bucket.tool_failures += 1;
                }
            }
            _ => {
                bucket.llm_calls += 1;
                if props["$ai_is_error"] == true || props["$ai_is_error"] == "true" {
                    bucket.errors += 1;
                }
                bucket.cost_usd += props["$ai_total_cost_usd"].as_f64().unwrap_or(0.0);
                bucket.input_tokens += props["$ai_input_tokens"].as_u64().unwrap_or(0);
                bucket.output_tokens += props["$ai_output_tokens"].as_u64().unwrap_or(0);
                if name == "$ai_generation" {
                    if let Some(latency) = props["$ai_latency"].as_f64() {
                        bucket.latencies.push(latency);
                    }
                }
                if props["$ai_guardrail_triggered"] == true {
                    bucket.guardrail_blocks += 1;
                }
            }
        }
    }
}

/// `GET /api/projects/{project_id}/insights/llm?after=&before=&group_by=&interval=`: cost,
/// tokens, LLM calls, error rate, p50/p95 generation latency, guardrail blocks and tool
/// failures over a time range, by day and by model, provider, workspace, organization, agent or
/// user — computed from the stored events themselves.
pub async fn llm_insights(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    params: Result<Query<InsightParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let Query(p) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let time = |name: &str, value: &Option<String>| -> Result<Option<String>, ApiError> {
        value
            .as_deref()
            .map(|text| {
                switchyard_event::model::parse_time(text)
                    .map(format_time)
                    .ok_or_else(|| ApiError::invalid(name, format!("`{name}` is not a valid date-time: {text:?}")))
            })
            .transpose()
    };
    let (after, before) = (time("after", &p.after)?, time("before", &p.before)?);
    let group_by = p.group_by.unwrap_or_default();
    let dimension: fn(&Value) -> Option<String> = match group_by.as_str() {
        "" => |_| None,
        "model" => |e| e["properties"]["$ai_model"].as_str().map(str::to_owned),
        "provider" => |e| e["properties"]["$ai_provider"].as_str().map(str::to_owned),
        "workspace" => |e| e["properties"]["workspace_id"].as_str().map(str::to_owned),
        "organization" => |e| e["properties"]["organization_id"].as_str().map(str::to_owned),
        "agent" => |e| e["properties"]["agent_id"].as_str().map(str::to_owned),
        "user" => |e| e["distinct_id"].as_str().map(str::to_owned),
        other => {
            return Err(ApiError::invalid("group_by", format!("unknown group_by {other:?} (model, provider, workspace, organization, agent, user)")));
        }
    };
    let daily = match p.interval.as_deref() {
        None | Some("day") => true,
        Some("all") => false,
        Some(other) => return Err(ApiError::invalid("interval", format!("unknown interval {other:?} (day, all)"))),
    };
    let mut buckets = Buckets::new();
    let mut complete = true;
    let mut scanned = 0usize;
    for name in ["$ai_generation", "$ai_embedding", "prompt_blocked", "tool_used"] {
        let mut before_seq = None;
        let mut read = 0usize;
        loop {
            let page = state
                .log
                .query_events(EventQuery {
                    project_id,
                    event: Some(name.to_owned()),
                    after: after.clone(),
                    before: before.clone(),
                    before_seq,
                    limit: 10_000,
                    ..EventQuery::default()
                })
                .await
                .map_err(ApiError::unavailable)?;
            let Some(last) = page.last() else { break };
            before_seq = Some(last.seq);
            read += page.len();
            let full = page.len() == 10_000;
            // Parsing and adding up run off the async workers.
            let mut taken = std::mem::take(&mut buckets);
            taken = tokio::task::spawn_blocking(move || {
                add_page(&mut taken, &page, name, daily, dimension);
                taken
            })
            .await
            .map_err(ApiError::unavailable)?;
            buckets = taken;
            if !full {
                break;
            }
            if read >= MAX_INSIGHT_EVENTS {
                complete = false;
                break;
            }
        }
        scanned += read;
    }
    let results: Vec<Value> = buckets
        .into_iter()
        .map(|((day, group), mut b)| {
            b.latencies.sort_by(f64::total_cmp);
            let quantile =
                |q: f64| if b.latencies.is_empty() { Value::Null } else { json!(b.latencies[((b.latencies.len() - 1) as f64 * q).round() as usize]) };
            let mut row = json!({
                "llm_calls": b.llm_calls,
                "cost_usd": b.cost_usd,
                "input_tokens": b.input_tokens,
                "output_tokens": b.output_tokens,
                "errors": b.errors,
                "error_rate": if b.llm_calls == 0 { 0.0 } else { b.errors as f64 / b.llm_calls as f64 },
                "latency_p50_s": quantile(0.5),
                "latency_p95_s": quantile(0.95),
                "guardrail_blocks": b.guardrail_blocks,
                "tool_calls": b.tool_calls,
                "tool_failures": b.tool_failures,
            });
            if daily {
                row["day"] = json!(day);
            }
            if !group_by.is_empty() {
                row[group_by.as_str()] = if group.is_empty() { Value::Null } else { json!(group) };
            }
            row
        })
        .collect();
    Ok(axum::Json(json!({"results": results, "complete": complete, "events_read": scanned})).into_response())
}

// ---------------------------------------------------------------------------------------------
// Langfuse scores

/// `POST /api/public/scores` (Langfuse's API; Basic auth with the public key as project token):
/// a score, or a list of them, stored as PostHog's `$ai_metric` events on the score's trace
/// (`$ai_metric_name`, `$ai_metric_value`), so the trace view and the events API show them.
pub async fn langfuse_scores(State(state): State<AppState>, peer: Peer, headers: HeaderMap, body: Bytes) -> Response {
    let fail = |status: StatusCode, message: String| (status, axum::Json(json!({"message": message}))).into_response();
    let Some(token) = otlp_token(&headers) else {
        return fail(StatusCode::UNAUTHORIZED, "send Basic auth with the project token as user name (Langfuse's public key)".into());
    };
    let Some(project_id) = state.control.lookup(KeyKind::ProjectToken, &token) else {
        return fail(StatusCode::UNAUTHORIZED, "the public key is not a known project token".into());
    };
    if body.len() > state.config.limits.max_request_bytes {
        return fail(StatusCode::PAYLOAD_TOO_LARGE, format!("the body is larger than {} bytes", state.config.limits.max_request_bytes));
    }
    let parsed: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return fail(StatusCode::BAD_REQUEST, format!("the body is not JSON: {e}")),
    };
    let (scores, single) = match parsed {
        Value::Array(items) => (items, false),
        one @ Value::Object(_) => (vec![one], true),
        _ => return fail(StatusCode::BAD_REQUEST, "a score is a JSON object (or a list of them)".into()),
    };
    let mut events = Vec::with_capacity(scores.len());
    let mut ids = Vec::with_capacity(scores.len());
    for (i, score) in scores.iter().enumerate() {
        let (Some(trace), Some(name)) = (score["traceId"].as_str(), score["name"].as_str()) else {
            return fail(StatusCode::BAD_REQUEST, format!("score {i}: `traceId` and `name` are required"));
        };
        let value = match &score["value"] {
            Value::Number(n) => n.to_string(),
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            _ => return fail(StatusCode::BAD_REQUEST, format!("score {i}: `value` must be a number, string or boolean")),
        };
        let id = score["id"].as_str().map_or_else(switchyard_event::model::new_event_id, str::to_owned);
        let mut properties = json!({
            "$ai_trace_id": trace,
            "$ai_metric_name": name,
            "$ai_metric_value": value,
            "$ai_ingestion_source": "langfuse",
        });
        for (from, to) in
            [("observationId", "$ai_span_id"), ("comment", "$ai_metric_comment"), ("dataType", "$ai_metric_data_type"), ("sessionId", "$ai_session_id")]
        {
            if let Some(v) = score.get(from).filter(|v| !v.is_null()) {
                properties[to] = v.clone();
            }
        }
        let mut event = json!({"event": "$ai_metric", "distinct_id": trace, "uuid": switchyard_pipeline::wire::posthog_uuid(&format!("langfuse-score:{id}")), "properties": properties});
        if let Some(at) = score["timestamp"].as_str() {
            event["timestamp"] = json!(at);
        }
        events.push(event);
        ids.push(id);
    }
    let meta = request_meta(project_id, &headers, peer, &state.config.trusted_proxies);
    let text = json!({"api_key": token, "batch": events}).to_string();
    let limits = state.event_limits();
    let request = match posthog::parse_capture_request(text.as_bytes(), None, &limits) {
        Ok(r) => r,
        Err(r) => return fail(StatusCode::BAD_REQUEST, r.message),
    };
    let ctx = posthog::PosthogContext { meta: &meta, sent_at: None, historical_migration: false, engage: false, limits: &limits };
    let normalized = posthog::normalize(request.events, &ctx);
    if let Some(invalid) = normalized.invalid.first() {
        return fail(StatusCode::BAD_REQUEST, format!("score {}: {}", invalid.index, invalid.rejection.message));
    }
    let (records, _) = crate::intake::records(&state, "langfuse", normalized, &meta);
    match state.log.append(AppendBatch { events: records, ..AppendBatch::default() }).await {
        Ok(_) => {
            state.appended.notify_waiters();
            let answer: Vec<Value> = ids.iter().map(|id| json!({"id": id})).collect();
            if single {
                axum::Json(answer.into_iter().next().unwrap_or(Value::Null)).into_response()
            } else {
                axum::Json(Value::Array(answer)).into_response()
            }
        }
        Err(error) => {
            tracing::warn!(%error, "scores refused: the event log cannot take them now");
            let mut response = fail(StatusCode::SERVICE_UNAVAILABLE, "the server cannot store scores right now; retry later".into());
            response.headers_mut().insert(header::RETRY_AFTER, error.retry_after_secs().into());
            response
        }
    }
}

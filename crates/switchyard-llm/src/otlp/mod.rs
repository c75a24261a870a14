//! OTLP/HTTP trace export requests (`ExportTraceServiceRequest`), decoded into [`Span`]s, and
//! the spans mapped onto PostHog's `$ai_*` events ([`to_ai_event`]) as PostHog's capture maps
//! them.
//!
//! - Bodies: `application/x-protobuf` (decoded with `prost` into `opentelemetry-proto`'s
//!   messages) and `application/json` (OTLP/JSON, mapped by hand in `json.rs`: hex ids, camelCase
//!   or snake_case names, 64-bit integers as strings or numbers, enums as numbers or names).
//!   Decompression and the body size limit are the caller's.
//! - Untrusted input never panics; limits bound what a small body can blow up into: attribute
//!   values nest at most [`MAX_VALUE_DEPTH`] deep and a request holds at most
//!   [`MAX_VALUES_PER_REQUEST`] attribute values (protobuf nesting is also capped by `prost`'s
//!   recursion limit, JSON by `serde_json`'s).
//! - A span with malformed ids is rejected alone ([`decode_partial`], for OTLP's partial
//!   success); a body that does not parse is rejected whole.

mod json;
mod map;
#[cfg(test)]
mod tests;

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue};
use prost::Message as _;
use serde_json::{json, Map, Value};

pub use map::{is_ai_span, to_ai_event, AiEvent};

/// Deepest nesting of array/kvlist attribute values accepted (OTel SDKs send flat values; a
/// few levels of JSON-like structure are plausible, dozens are not).
pub const MAX_VALUE_DEPTH: usize = 32;

/// Most attribute values (every array element and kvlist entry counts) in one request.
pub const MAX_VALUES_PER_REQUEST: usize = 1_000_000;

/// Why a body was refused; the receiver answers 400 with the message (415 for the content
/// type).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OtlpError {
    #[error("unsupported content type {0:?}: OTLP/HTTP traces are application/x-protobuf or application/json")]
    UnsupportedContentType(String),
    #[error("malformed protobuf ExportTraceServiceRequest: {0}")]
    Protobuf(String),
    #[error("malformed OTLP/JSON: {0}")]
    Json(String),
    #[error("span rejected: {0}")]
    InvalidSpan(String),
    #[error("attributes too large: {0}")]
    Limit(String),
}

impl OtlpError {
    /// The HTTP status the receiver answers with.
    pub fn http_status(&self) -> u16 {
        match self {
            OtlpError::UnsupportedContentType(_) => 415,
            _ => 400,
        }
    }
}

/// The encoding of a body, from its `Content-Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Encoding {
    Protobuf,
    Json,
}

impl Encoding {
    /// `application/x-protobuf` (or `application/protobuf`) and `application/json`, parameters
    /// such as `; charset=utf-8` ignored.
    pub fn from_content_type(content_type: &str) -> Result<Encoding, OtlpError> {
        let media = content_type.split(';').next().unwrap_or("").trim().to_ascii_lowercase();
        match media.as_str() {
            "application/x-protobuf" | "application/protobuf" => Ok(Encoding::Protobuf),
            "application/json" => Ok(Encoding::Json),
            _ => Err(OtlpError::UnsupportedContentType(content_type.to_string())),
        }
    }
}

/// One span as received, flattened with its resource and scope.
#[derive(Debug, Clone, PartialEq)]
pub struct Span {
    /// 32 lowercase hex digits.
    pub trace_id: String,
    /// 16 lowercase hex digits.
    pub span_id: String,
    /// 16 lowercase hex digits; `None` for a root span (absent or empty in the request).
    pub parent_span_id: Option<String>,
    pub trace_state: Option<String>,
    pub name: String,
    /// OTLP `SpanKind` number (0 unspecified, 1 internal, 2 server, 3 client, 4 producer,
    /// 5 consumer); [`Span::kind_name`] names it.
    pub kind: i32,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// OTel attribute values as JSON: strings, bools, int64 as numbers, doubles as numbers
    /// (non-finite as the strings "NaN", "Infinity", "-Infinity"), arrays, kvlists as objects,
    /// bytes as base64 strings.
    pub attributes: Map<String, Value>,
    /// The resource's attributes, same mapping.
    pub resource: Map<String, Value>,
    pub scope_name: Option<String>,
    pub scope_version: Option<String>,
    pub events: Vec<SpanEvent>,
    pub links: Vec<SpanLink>,
    /// OTLP `StatusCode` number (0 unset, 1 ok, 2 error); [`Span::status_name`] names it.
    pub status_code: i32,
    pub status_message: Option<String>,
}

/// A span event (`exception`, `gen_ai.choice`, `feature_flag.evaluation`, …).
#[derive(Debug, Clone, PartialEq)]
pub struct SpanEvent {
    pub name: String,
    pub time_unix_nano: u64,
    pub attributes: Map<String, Value>,
}

/// A link to another span.
#[derive(Debug, Clone, PartialEq)]
pub struct SpanLink {
    pub trace_id: String,
    pub span_id: String,
    pub attributes: Map<String, Value>,
}

/// What [`decode_partial`] took from a request.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Decoded {
    pub spans: Vec<Span>,
    /// Spans refused (malformed ids), for OTLP's `partial_success.rejected_spans`.
    pub rejected_spans: u64,
    /// Why the first refused span was refused, for `partial_success.error_message`.
    pub rejection: Option<String>,
}

const SPAN_KINDS: [&str; 6] = ["unspecified", "internal", "server", "client", "producer", "consumer"];
const STATUS_CODES: [&str; 3] = ["unset", "ok", "error"];

impl Span {
    /// `"internal"`, `"server"`, `"client"`, `"producer"`, `"consumer"` or `"unspecified"`.
    pub fn kind_name(&self) -> &'static str {
        usize::try_from(self.kind)
            .ok()
            .and_then(|i| SPAN_KINDS.get(i))
            .copied()
            .unwrap_or("unspecified")
    }

    /// `"unset"`, `"ok"` or `"error"`.
    pub fn status_name(&self) -> &'static str {
        usize::try_from(self.status_code)
            .ok()
            .and_then(|i| STATUS_CODES.get(i))
            .copied()
            .unwrap_or("unset")
    }

    /// Duration in nanoseconds (0 when the end is before the start).
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }

    /// The span as stored and shown in the trace view: ids, `name`, `kind` and `status_code` by
    /// name, times as integer nanoseconds, attributes, resource, scope, events and links.
    pub fn to_json(&self) -> Value {
        let events: Vec<Value> = self
            .events
            .iter()
            .map(|e| json!({"name": e.name, "time_unix_nano": e.time_unix_nano, "attributes": e.attributes}))
            .collect();
        let links: Vec<Value> = self
            .links
            .iter()
            .map(|l| json!({"trace_id": l.trace_id, "span_id": l.span_id, "attributes": l.attributes}))
            .collect();
        json!({
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_span_id": self.parent_span_id,
            "trace_state": self.trace_state,
            "name": self.name,
            "kind": self.kind_name(),
            "start_unix_nano": self.start_unix_nano,
            "end_unix_nano": self.end_unix_nano,
            "attributes": self.attributes,
            "resource": self.resource,
            "scope_name": self.scope_name,
            "scope_version": self.scope_version,
            "events": events,
            "links": links,
            "status_code": self.status_name(),
            "status_message": self.status_message,
        })
    }

    /// The span back from [`Span::to_json`]'s shape (`None` without the ids), e.g. to forward
    /// stored spans with [`encode`].
    pub fn from_json(value: &Value) -> Option<Span> {
        let text = |v: Option<&Value>| v.and_then(Value::as_str).filter(|s| !s.is_empty()).map(str::to_string);
        let nanos = |v: Option<&Value>| match v {
            Some(Value::Number(n)) => n.as_u64().unwrap_or(0),
            Some(Value::String(s)) => s.parse().unwrap_or(0),
            _ => 0,
        };
        let object = |v: Option<&Value>| v.and_then(Value::as_object).cloned().unwrap_or_default();
        let code = |v: Option<&Value>, names: &[&str]| match v {
            Some(Value::Number(n)) => n.as_i64().and_then(|n| i32::try_from(n).ok()).unwrap_or(0),
            Some(Value::String(s)) => names.iter().position(|n| n == s).map_or(0, |i| i as i32),
            _ => 0,
        };
        let list = |v: Option<&Value>| v.and_then(Value::as_array).cloned().unwrap_or_default();
        Some(Span {
            trace_id: text(value.get("trace_id"))?,
            span_id: text(value.get("span_id"))?,
            parent_span_id: text(value.get("parent_span_id")),
            trace_state: text(value.get("trace_state")),
            name: text(value.get("name")).unwrap_or_default(),
            kind: code(value.get("kind"), &SPAN_KINDS),
            start_unix_nano: nanos(value.get("start_unix_nano")),
            end_unix_nano: nanos(value.get("end_unix_nano")),
            attributes: object(value.get("attributes")),
            resource: object(value.get("resource")),
            scope_name: text(value.get("scope_name")),
            scope_version: text(value.get("scope_version")),
            events: list(value.get("events"))
                .iter()
                .map(|e| SpanEvent {
                    name: text(e.get("name")).unwrap_or_default(),
                    time_unix_nano: nanos(e.get("time_unix_nano")),
                    attributes: object(e.get("attributes")),
                })
                .collect(),
            links: list(value.get("links"))
                .iter()
                .filter_map(|l| {
                    Some(SpanLink {
                        trace_id: text(l.get("trace_id"))?,
                        span_id: text(l.get("span_id"))?,
                        attributes: object(l.get("attributes")),
                    })
                })
                .collect(),
            status_code: code(value.get("status_code"), &STATUS_CODES),
            status_message: text(value.get("status_message")),
        })
    }
}

/// Every span of an OTLP/HTTP trace export body; a malformed span fails the whole body (see
/// [`decode_partial`] to keep the others).
pub fn decode(content_type: &str, body: &[u8]) -> Result<Vec<Span>, OtlpError> {
    let decoded = decode_partial(content_type, body)?;
    match decoded.rejection {
        Some(why) => Err(OtlpError::InvalidSpan(why)),
        None => Ok(decoded.spans),
    }
}

/// The spans of an OTLP/HTTP trace export body, spans with malformed ids left out and counted.
pub fn decode_partial(content_type: &str, body: &[u8]) -> Result<Decoded, OtlpError> {
    let request = decode_request(Encoding::from_content_type(content_type)?, body)?;
    spans_of_request(&request)
}

/// The request message itself (protobuf or OTLP/JSON), before it is flattened into spans.
pub fn decode_request(encoding: Encoding, body: &[u8]) -> Result<ExportTraceServiceRequest, OtlpError> {
    match encoding {
        Encoding::Protobuf => ExportTraceServiceRequest::decode(body).map_err(|e| OtlpError::Protobuf(e.to_string())),
        Encoding::Json => json::request_of_json(body),
    }
}

/// Spans encoded as a protobuf `ExportTraceServiceRequest` (one resource/scope group per
/// distinct resource and scope, in order of appearance), e.g. to forward them to a collector.
pub fn encode(spans: &[Span]) -> Vec<u8> {
    use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
    use opentelemetry_proto::tonic::resource::v1::Resource;
    use opentelemetry_proto::tonic::trace::v1::{span, ResourceSpans, ScopeSpans, Status};

    let mut request = ExportTraceServiceRequest::default();
    let mut resources: Vec<&Map<String, Value>> = Vec::new();
    for s in spans {
        let group = match resources.iter().position(|r| **r == s.resource) {
            Some(i) => i,
            None => {
                resources.push(&s.resource);
                request.resource_spans.push(ResourceSpans {
                    resource: Some(Resource {
                        attributes: key_values_of_map(&s.resource),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                request.resource_spans.len() - 1
            }
        };
        let resource_spans = &mut request.resource_spans[group];
        let scope_name = s.scope_name.clone().unwrap_or_default();
        let scope_version = s.scope_version.clone().unwrap_or_default();
        let scope = match resource_spans.scope_spans.iter().position(|ss| {
            let scope = ss.scope.clone().unwrap_or_default();
            scope.name == scope_name && scope.version == scope_version
        }) {
            Some(i) => i,
            None => {
                resource_spans.scope_spans.push(ScopeSpans {
                    scope: Some(InstrumentationScope {
                        name: scope_name,
                        version: scope_version,
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                resource_spans.scope_spans.len() - 1
            }
        };
        resource_spans.scope_spans[scope].spans.push(opentelemetry_proto::tonic::trace::v1::Span {
            trace_id: bytes_of_hex(&s.trace_id),
            span_id: bytes_of_hex(&s.span_id),
            trace_state: s.trace_state.clone().unwrap_or_default(),
            parent_span_id: s.parent_span_id.as_deref().map(bytes_of_hex).unwrap_or_default(),
            name: s.name.clone(),
            kind: s.kind,
            start_time_unix_nano: s.start_unix_nano,
            end_time_unix_nano: s.end_unix_nano,
            attributes: key_values_of_map(&s.attributes),
            events: s
                .events
                .iter()
                .map(|e| span::Event {
                    time_unix_nano: e.time_unix_nano,
                    name: e.name.clone(),
                    attributes: key_values_of_map(&e.attributes),
                    ..Default::default()
                })
                .collect(),
            links: s
                .links
                .iter()
                .map(|l| span::Link {
                    trace_id: bytes_of_hex(&l.trace_id),
                    span_id: bytes_of_hex(&l.span_id),
                    attributes: key_values_of_map(&l.attributes),
                    ..Default::default()
                })
                .collect(),
            status: Some(Status {
                message: s.status_message.clone().unwrap_or_default(),
                code: s.status_code,
            }),
            ..Default::default()
        });
    }
    request.encode_to_vec()
}

fn bytes_of_hex(hex: &str) -> Vec<u8> {
    if !hex.len().is_multiple_of(2) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return hex.as_bytes().to_vec();
    }
    (0..hex.len()).step_by(2).filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok()).collect()
}

fn key_values_of_map(map: &Map<String, Value>) -> Vec<KeyValue> {
    map.iter()
        .map(|(k, v)| KeyValue {
            key: k.clone(),
            value: Some(any_of_json(v, 0)),
            ..Default::default()
        })
        .collect()
}

/// JSON back to an OTel value (objects as kvlists; depth beyond the limit as a JSON string).
fn any_of_json(value: &Value, depth: usize) -> AnyValue {
    use opentelemetry_proto::tonic::common::v1::{ArrayValue, KeyValueList};
    let v = match value {
        Value::Null => None,
        Value::Bool(b) => Some(any_value::Value::BoolValue(*b)),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Some(any_value::Value::IntValue(i)),
            None => Some(any_value::Value::DoubleValue(n.as_f64().unwrap_or(0.0))),
        },
        Value::String(s) => Some(any_value::Value::StringValue(s.clone())),
        _ if depth >= MAX_VALUE_DEPTH => Some(any_value::Value::StringValue(value.to_string())),
        Value::Array(items) => Some(any_value::Value::ArrayValue(ArrayValue {
            values: items.iter().map(|i| any_of_json(i, depth + 1)).collect(),
        })),
        Value::Object(map) => Some(any_value::Value::KvlistValue(KeyValueList {
            values: map
                .iter()
                .map(|(k, v)| KeyValue {
                    key: k.clone(),
                    value: Some(any_of_json(v, depth + 1)),
                    ..Default::default()
                })
                .collect(),
        })),
    };
    AnyValue { value: v }
}

/// Lowercase hex of an id that must be `len` bytes.
fn hex_id(bytes: &[u8], len: usize, what: &str) -> Result<String, String> {
    if bytes.len() != len {
        return Err(format!("{what} must be {len} bytes, got {}", bytes.len()));
    }
    if bytes.iter().all(|b| *b == 0) {
        return Err(format!("{what} is all zeros"));
    }
    let mut out = String::with_capacity(len * 2);
    for b in bytes {
        out.push(char::from_digit(u32::from(b >> 4), 16).unwrap_or('0'));
        out.push(char::from_digit(u32::from(b & 0xf), 16).unwrap_or('0'));
    }
    Ok(out)
}

/// Counts attribute values against [`MAX_VALUES_PER_REQUEST`].
struct Budget {
    left: usize,
}

impl Budget {
    fn take(&mut self) -> Result<(), OtlpError> {
        if self.left == 0 {
            return Err(OtlpError::Limit(format!("more than {MAX_VALUES_PER_REQUEST} attribute values in one request")));
        }
        self.left -= 1;
        Ok(())
    }
}

fn attributes_of(kvs: &[KeyValue], budget: &mut Budget) -> Result<Map<String, Value>, OtlpError> {
    let mut map = Map::new();
    for kv in kvs {
        let value = any_to_json(kv.value.as_ref(), 0, budget).map_err(|e| match e {
            OtlpError::Limit(why) => OtlpError::Limit(format!("attribute {:?}: {why}", truncate(&kv.key, 100))),
            other => other,
        })?;
        map.insert(kv.key.clone(), value);
    }
    Ok(map)
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn double_to_json(d: f64) -> Value {
    if d.is_nan() {
        Value::from("NaN")
    } else if d.is_infinite() {
        Value::from(if d > 0.0 { "Infinity" } else { "-Infinity" })
    } else {
        Value::from(d)
    }
}

fn any_to_json(value: Option<&AnyValue>, depth: usize, budget: &mut Budget) -> Result<Value, OtlpError> {
    budget.take()?;
    let Some(v) = value.and_then(|v| v.value.as_ref()) else {
        return Ok(Value::Null);
    };
    if depth >= MAX_VALUE_DEPTH && matches!(v, any_value::Value::ArrayValue(_) | any_value::Value::KvlistValue(_)) {
        return Err(OtlpError::Limit(format!("values nested deeper than {MAX_VALUE_DEPTH}")));
    }
    Ok(match v {
        any_value::Value::StringValue(s) => Value::from(s.as_str()),
        any_value::Value::BoolValue(b) => Value::from(*b),
        any_value::Value::IntValue(i) => Value::from(*i),
        any_value::Value::DoubleValue(d) => double_to_json(*d),
        any_value::Value::BytesValue(b) => Value::from(base64::engine::general_purpose::STANDARD.encode(b)),
        // Strings by index into a dictionary exist only in the profiles signal.
        any_value::Value::StringValueStrindex(i) => Value::from(*i),
        any_value::Value::ArrayValue(a) => {
            let mut items = Vec::with_capacity(a.values.len().min(1024));
            for item in &a.values {
                items.push(any_to_json(Some(item), depth + 1, budget)?);
            }
            Value::Array(items)
        }
        any_value::Value::KvlistValue(list) => {
            let mut map = Map::new();
            for kv in &list.values {
                map.insert(kv.key.clone(), any_to_json(kv.value.as_ref(), depth + 1, budget)?);
            }
            Value::Object(map)
        }
    })
}

fn spans_of_request(request: &ExportTraceServiceRequest) -> Result<Decoded, OtlpError> {
    let mut budget = Budget { left: MAX_VALUES_PER_REQUEST };
    let mut decoded = Decoded::default();
    for resource_spans in &request.resource_spans {
        let resource = match &resource_spans.resource {
            Some(r) => attributes_of(&r.attributes, &mut budget)?,
            None => Map::new(),
        };
        for scope_spans in &resource_spans.scope_spans {
            let scope = scope_spans.scope.as_ref();
            let scope_name = scope.map(|s| s.name.clone()).filter(|n| !n.is_empty());
            let scope_version = scope.map(|s| s.version.clone()).filter(|v| !v.is_empty());
            for span in &scope_spans.spans {
                let ids = hex_id(&span.trace_id, 16, "trace_id").and_then(|trace_id| {
                    let span_id = hex_id(&span.span_id, 8, "span_id")?;
                    let parent = if span.parent_span_id.is_empty() {
                        None
                    } else {
                        Some(hex_id(&span.parent_span_id, 8, "parent_span_id")?)
                    };
                    Ok((trace_id, span_id, parent))
                });
                let (trace_id, span_id, parent_span_id) = match ids {
                    Ok(ids) => ids,
                    Err(why) => {
                        decoded.rejected_spans += 1;
                        if decoded.rejection.is_none() {
                            decoded.rejection = Some(format!("span {:?}: {why}", truncate(&span.name, 100)));
                        }
                        continue;
                    }
                };
                let mut events = Vec::with_capacity(span.events.len().min(1024));
                for e in &span.events {
                    events.push(SpanEvent {
                        name: e.name.clone(),
                        time_unix_nano: e.time_unix_nano,
                        attributes: attributes_of(&e.attributes, &mut budget)?,
                    });
                }
                let mut links = Vec::new();
                for l in &span.links {
                    let (Ok(trace_id), Ok(span_id)) = (hex_id(&l.trace_id, 16, "trace_id"), hex_id(&l.span_id, 8, "span_id")) else {
                        continue;
                    };
                    links.push(SpanLink {
                        trace_id,
                        span_id,
                        attributes: attributes_of(&l.attributes, &mut budget)?,
                    });
                }
                let status = span.status.clone().unwrap_or_default();
                decoded.spans.push(Span {
                    trace_id,
                    span_id,
                    parent_span_id,
                    trace_state: Some(span.trace_state.clone()).filter(|s| !s.is_empty()),
                    name: span.name.clone(),
                    kind: span.kind,
                    start_unix_nano: span.start_time_unix_nano,
                    end_unix_nano: span.end_time_unix_nano,
                    attributes: attributes_of(&span.attributes, &mut budget)?,
                    resource: resource.clone(),
                    scope_name: scope_name.clone(),
                    scope_version: scope_version.clone(),
                    events,
                    links,
                    status_code: status.code,
                    status_message: Some(status.message).filter(|m| !m.is_empty()),
                });
            }
        }
    }
    Ok(decoded)
}

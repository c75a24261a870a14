//! OTLP/JSON into the protobuf message, by hand: the OTLP spec's JSON differs from proto3's
//! canonical JSON (ids are hex, not base64), and exporters differ among themselves (camelCase
//! or snake_case names, 64-bit integers as strings or numbers, enums as numbers or names).
//! Unknown fields are ignored; a known field of the wrong type is an error naming its path.

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, InstrumentationScope, KeyValue, KeyValueList};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{span, status, ResourceSpans, ScopeSpans, Span, Status};
use serde_json::{Map, Value};

use super::{OtlpError, MAX_VALUE_DEPTH};

type Result<T> = std::result::Result<T, OtlpError>;

fn err(path: &str, what: &str) -> OtlpError {
    OtlpError::Json(format!("{path}: {what}"))
}

/// The field under its camelCase or snake_case name; `null` counts as absent.
fn field<'a>(object: &'a Map<String, Value>, camel: &str, snake: &str) -> Option<&'a Value> {
    object.get(camel).or_else(|| object.get(snake)).filter(|v| !v.is_null())
}

fn as_object<'a>(value: &'a Value, path: &str) -> Result<&'a Map<String, Value>> {
    value.as_object().ok_or_else(|| err(path, "expected an object"))
}

fn array_field<'a>(object: &'a Map<String, Value>, camel: &str, snake: &str, path: &str) -> Result<&'a [Value]> {
    match field(object, camel, snake) {
        None => Ok(&[]),
        Some(Value::Array(items)) => Ok(items),
        Some(_) => Err(err(&format!("{path}.{camel}"), "expected an array")),
    }
}

fn string_field(object: &Map<String, Value>, camel: &str, snake: &str, path: &str) -> Result<String> {
    match field(object, camel, snake) {
        None => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(_) => Err(err(&format!("{path}.{camel}"), "expected a string")),
    }
}

fn u64_field(object: &Map<String, Value>, camel: &str, snake: &str, path: &str) -> Result<u64> {
    let bad = || err(&format!("{path}.{camel}"), "expected an unsigned 64-bit integer (number or decimal string)");
    match field(object, camel, snake) {
        None => Ok(0),
        Some(Value::Number(n)) => n.as_u64().ok_or_else(bad),
        Some(Value::String(s)) if s.is_empty() => Ok(0),
        Some(Value::String(s)) => s.trim().parse().map_err(|_| bad()),
        Some(_) => Err(bad()),
    }
}

fn i64_of(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n
            .as_i64()
            .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && f.abs() < 9.2e18).map(|f| f as i64)),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// An enum given as its number or its name (`SPAN_KIND_CLIENT`, or `CLIENT`, any case).
fn enum_field(object: &Map<String, Value>, camel: &str, snake: &str, path: &str, prefix: &str, from_name: fn(&str) -> Option<i32>) -> Result<i32> {
    let bad = || err(&format!("{path}.{camel}"), &format!("expected a number or a {prefix}* name"));
    match field(object, camel, snake) {
        None => Ok(0),
        Some(Value::Number(n)) => n.as_i64().and_then(|n| i32::try_from(n).ok()).ok_or_else(bad),
        Some(Value::String(s)) => {
            let upper = s.trim().to_ascii_uppercase();
            if let Ok(n) = upper.parse::<i32>() {
                return Ok(n);
            }
            from_name(&upper).or_else(|| from_name(&format!("{prefix}{upper}"))).ok_or_else(bad)
        }
        Some(_) => Err(bad()),
    }
}

/// An id: hex as the OTLP spec says, or base64 as proto3's canonical JSON would have it.
fn id_field(object: &Map<String, Value>, camel: &str, snake: &str, path: &str) -> Result<Vec<u8>> {
    let text = string_field(object, camel, snake, path)?;
    if text.is_empty() {
        return Ok(Vec::new());
    }
    if text.len().is_multiple_of(2) && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let mut out = Vec::with_capacity(text.len() / 2);
        for i in (0..text.len()).step_by(2) {
            out.push(u8::from_str_radix(&text[i..i + 2], 16).map_err(|_| err(&format!("{path}.{camel}"), "invalid hex"))?);
        }
        return Ok(out);
    }
    base64::engine::general_purpose::STANDARD.decode(&text).map_err(|_| {
        err(
            &format!("{path}.{camel}"),
            &format!("expected hex digits, got {:?}", super::truncate(&text, 64)),
        )
    })
}

fn key_values(object: &Map<String, Value>, camel: &str, snake: &str, path: &str, depth: usize) -> Result<Vec<KeyValue>> {
    let items = array_field(object, camel, snake, path)?;
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let item_path = format!("{path}.{camel}[{i}]");
        let kv = as_object(item, &item_path)?;
        let key = string_field(kv, "key", "key", &item_path)?;
        let value = match field(kv, "value", "value") {
            Some(v) => Some(any_value_of(v, &format!("{item_path}.value"), depth)?),
            None => None,
        };
        out.push(KeyValue {
            key,
            value,
            ..Default::default()
        });
    }
    Ok(out)
}

fn any_value_of(value: &Value, path: &str, depth: usize) -> Result<AnyValue> {
    if depth > MAX_VALUE_DEPTH {
        return Err(OtlpError::Limit(format!("{path}: values nested deeper than {MAX_VALUE_DEPTH}")));
    }
    let object = as_object(value, path)?;
    let kinds: [(&str, &str); 7] = [
        ("stringValue", "string_value"),
        ("boolValue", "bool_value"),
        ("intValue", "int_value"),
        ("doubleValue", "double_value"),
        ("arrayValue", "array_value"),
        ("kvlistValue", "kvlist_value"),
        ("bytesValue", "bytes_value"),
    ];
    for (camel, snake) in kinds {
        let Some(v) = field(object, camel, snake) else { continue };
        let here = format!("{path}.{camel}");
        let parsed = match camel {
            "stringValue" => any_value::Value::StringValue(v.as_str().ok_or_else(|| err(&here, "expected a string"))?.to_string()),
            "boolValue" => any_value::Value::BoolValue(match v {
                Value::Bool(b) => *b,
                Value::String(s) if s == "true" => true,
                Value::String(s) if s == "false" => false,
                _ => return Err(err(&here, "expected a bool")),
            }),
            "intValue" => any_value::Value::IntValue(i64_of(v).ok_or_else(|| err(&here, "expected a 64-bit integer (number or decimal string)"))?),
            "doubleValue" => any_value::Value::DoubleValue(match v {
                Value::Number(n) => n.as_f64().unwrap_or(0.0),
                Value::String(s) => match s.as_str() {
                    "NaN" => f64::NAN,
                    "Infinity" => f64::INFINITY,
                    "-Infinity" => f64::NEG_INFINITY,
                    other => other.trim().parse().map_err(|_| err(&here, "expected a number"))?,
                },
                _ => return Err(err(&here, "expected a number")),
            }),
            "arrayValue" => {
                let inner = as_object(v, &here)?;
                let items = array_field(inner, "values", "values", &here)?;
                let mut values = Vec::with_capacity(items.len());
                for (i, item) in items.iter().enumerate() {
                    values.push(any_value_of(item, &format!("{here}.values[{i}]"), depth + 1)?);
                }
                any_value::Value::ArrayValue(ArrayValue { values })
            }
            "kvlistValue" => {
                let inner = as_object(v, &here)?;
                any_value::Value::KvlistValue(KeyValueList {
                    values: key_values(inner, "values", "values", &here, depth + 1)?,
                })
            }
            _ => {
                let text = v.as_str().ok_or_else(|| err(&here, "expected a base64 string"))?;
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(text))
                    .map_err(|_| err(&here, "expected a base64 string"))?;
                any_value::Value::BytesValue(bytes)
            }
        };
        return Ok(AnyValue { value: Some(parsed) });
    }
    Ok(AnyValue { value: None })
}

fn span_of(value: &Value, path: &str) -> Result<Span> {
    let object = as_object(value, path)?;
    let mut events = Vec::new();
    for (i, e) in array_field(object, "events", "events", path)?.iter().enumerate() {
        let event_path = format!("{path}.events[{i}]");
        let e = as_object(e, &event_path)?;
        events.push(span::Event {
            time_unix_nano: u64_field(e, "timeUnixNano", "time_unix_nano", &event_path)?,
            name: string_field(e, "name", "name", &event_path)?,
            attributes: key_values(e, "attributes", "attributes", &event_path, 0)?,
            ..Default::default()
        });
    }
    let mut links = Vec::new();
    for (i, l) in array_field(object, "links", "links", path)?.iter().enumerate() {
        let link_path = format!("{path}.links[{i}]");
        let l = as_object(l, &link_path)?;
        links.push(span::Link {
            trace_id: id_field(l, "traceId", "trace_id", &link_path)?,
            span_id: id_field(l, "spanId", "span_id", &link_path)?,
            trace_state: string_field(l, "traceState", "trace_state", &link_path)?,
            attributes: key_values(l, "attributes", "attributes", &link_path, 0)?,
            ..Default::default()
        });
    }
    let status = match field(object, "status", "status") {
        None => None,
        Some(s) => {
            let status_path = format!("{path}.status");
            let s = as_object(s, &status_path)?;
            Some(Status {
                message: string_field(s, "message", "message", &status_path)?,
                code: enum_field(s, "code", "code", &status_path, "STATUS_CODE_", |n| {
                    status::StatusCode::from_str_name(n).map(|c| c as i32)
                })?,
            })
        }
    };
    Ok(Span {
        trace_id: id_field(object, "traceId", "trace_id", path)?,
        span_id: id_field(object, "spanId", "span_id", path)?,
        trace_state: string_field(object, "traceState", "trace_state", path)?,
        parent_span_id: id_field(object, "parentSpanId", "parent_span_id", path)?,
        flags: u64_field(object, "flags", "flags", path)?.try_into().unwrap_or(0),
        name: string_field(object, "name", "name", path)?,
        kind: enum_field(object, "kind", "kind", path, "SPAN_KIND_", |n| {
            span::SpanKind::from_str_name(n).map(|k| k as i32)
        })?,
        start_time_unix_nano: u64_field(object, "startTimeUnixNano", "start_time_unix_nano", path)?,
        end_time_unix_nano: u64_field(object, "endTimeUnixNano", "end_time_unix_nano", path)?,
        attributes: key_values(object, "attributes", "attributes", path, 0)?,
        events,
        links,
        status,
        ..Default::default()
    })
}

/// An OTLP/JSON `ExportTraceServiceRequest` body.
pub(super) fn request_of_json(body: &[u8]) -> Result<ExportTraceServiceRequest> {
    let root: Value = serde_json::from_slice(body).map_err(|e| OtlpError::Json(format!("not JSON: {e}")))?;
    let root = as_object(&root, "body")?;
    let mut request = ExportTraceServiceRequest::default();
    for (r, rs) in array_field(root, "resourceSpans", "resource_spans", "body")?.iter().enumerate() {
        let rs_path = format!("resourceSpans[{r}]");
        let rs = as_object(rs, &rs_path)?;
        let resource = match field(rs, "resource", "resource") {
            None => None,
            Some(res) => {
                let res_path = format!("{rs_path}.resource");
                Some(Resource {
                    attributes: key_values(as_object(res, &res_path)?, "attributes", "attributes", &res_path, 0)?,
                    ..Default::default()
                })
            }
        };
        let mut scope_spans = Vec::new();
        for (s, ss) in array_field(rs, "scopeSpans", "scope_spans", &rs_path)?.iter().enumerate() {
            let ss_path = format!("{rs_path}.scopeSpans[{s}]");
            let ss = as_object(ss, &ss_path)?;
            let scope = match field(ss, "scope", "scope") {
                None => None,
                Some(sc) => {
                    let sc_path = format!("{ss_path}.scope");
                    let sc = as_object(sc, &sc_path)?;
                    Some(InstrumentationScope {
                        name: string_field(sc, "name", "name", &sc_path)?,
                        version: string_field(sc, "version", "version", &sc_path)?,
                        attributes: key_values(sc, "attributes", "attributes", &sc_path, 0)?,
                        ..Default::default()
                    })
                }
            };
            let mut spans = Vec::new();
            for (i, sp) in array_field(ss, "spans", "spans", &ss_path)?.iter().enumerate() {
                spans.push(span_of(sp, &format!("{ss_path}.spans[{i}]"))?);
            }
            scope_spans.push(ScopeSpans {
                scope,
                spans,
                schema_url: string_field(ss, "schemaUrl", "schema_url", &ss_path)?,
            });
        }
        request.resource_spans.push(ResourceSpans {
            resource,
            scope_spans,
            schema_url: string_field(rs, "schemaUrl", "schema_url", &rs_path)?,
        });
    }
    Ok(request)
}

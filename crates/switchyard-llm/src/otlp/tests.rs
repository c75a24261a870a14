//! Recorded requests (../shared/fixtures/llm-requests, copied to tests/data/otlp) decoded and
//! mapped; bad bodies refused with clear errors; random and damaged bodies never panic.

use std::io::Read as _;

use base64::Engine as _;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, ArrayValue, KeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource;
use opentelemetry_proto::tonic::trace::v1::{ResourceSpans, ScopeSpans};
use prost::Message as _;
use serde_json::{json, Value};

use super::*;

/// `(content type, body)` of each OTLP request in a fixture file, gzip undone.
fn requests(jsonl: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for line in jsonl.lines().filter(|l| !l.trim().is_empty()) {
        let r: Value = serde_json::from_str(line).unwrap();
        let path = r["path"].as_str().unwrap();
        if !(path.contains("traces") || path.contains("otel")) {
            continue;
        }
        let headers = r["headers"].as_object().unwrap();
        let content_type = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .unwrap()
            .1
            .as_str()
            .unwrap()
            .to_string();
        let mut body = match r.get("body_base64") {
            Some(b) => base64::engine::general_purpose::STANDARD.decode(b.as_str().unwrap()).unwrap(),
            None => r["body_text"].as_str().unwrap().as_bytes().to_vec(),
        };
        if body.starts_with(&[0x1f, 0x8b]) {
            let mut plain = Vec::new();
            flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut plain).unwrap();
            body = plain;
        }
        out.push((content_type, body));
    }
    out
}

fn spans_of(jsonl: &str) -> Vec<Span> {
    requests(jsonl).iter().flat_map(|(ct, body)| decode(ct, body).unwrap()).collect()
}

const OPENAI_V2: &str = include_str!("../../tests/data/otlp/otel_openai_v2.jsonl");
const OPENLLMETRY: &str = include_str!("../../tests/data/otlp/otel_openllmetry.jsonl");
const OTEL_JSON: &str = include_str!("../../tests/data/otlp/otel_json.jsonl");
const POSTHOG_PROCESSOR: &str = include_str!("../../tests/data/otlp/posthog_otel_processor.jsonl");
const LANGFUSE: &str = include_str!("../../tests/data/otlp/langfuse_v5.jsonl");

fn by_name<'a>(spans: &'a [Span], name: &str) -> Vec<&'a Span> {
    spans.iter().filter(|s| s.name == name).collect()
}

fn event_of(span: &Span) -> AiEvent {
    to_ai_event(span).expect("an AI span")
}

#[test]
fn openai_v2_spans_and_their_events() {
    let reqs = requests(OPENAI_V2);
    assert_eq!(reqs.len(), 5);
    assert!(reqs.iter().all(|(ct, _)| Encoding::from_content_type(ct) == Ok(Encoding::Protobuf)));
    let spans = spans_of(OPENAI_V2);
    assert_eq!(spans.len(), 5);
    assert!(spans.iter().all(|s| s.trace_id == "b60abc829625b198fc54115e71019c5e"));
    let root = by_name(&spans, "invoke_agent demo")[0];
    assert_eq!(root.span_id, "54c03771b00d060e");
    assert_eq!(root.parent_span_id, None);
    assert_eq!(root.kind_name(), "internal");
    assert!(spans
        .iter()
        .filter(|s| s.span_id != root.span_id)
        .all(|s| s.parent_span_id.as_deref() == Some("54c03771b00d060e")));

    let chats = by_name(&spans, "chat gpt-4o-mini");
    assert_eq!(chats.len(), 2);
    let chat = chats[0];
    assert_eq!(chat.span_id, "8666cbc9d769ad3a");
    assert_eq!(chat.kind_name(), "client");
    assert_eq!(chat.scope_name.as_deref(), Some("opentelemetry.util.genai.handler"));
    assert_eq!(chat.attributes["gen_ai.usage.input_tokens"], json!(12));
    assert_eq!(chat.attributes["gen_ai.request.temperature"], json!(0.1));
    assert_eq!(chat.attributes["gen_ai.response.finish_reasons"], json!(["stop"]));
    assert_eq!(chat.resource["service.name"], json!("agent-svc"));
    assert!(chat.end_unix_nano > chat.start_unix_nano);

    let e = event_of(chat);
    assert_eq!(e.event, "$ai_generation");
    assert_eq!(e.distinct_id.as_deref(), Some("user_3"));
    let p = &e.properties;
    assert_eq!(p["$ai_model"], json!("gpt-4o-mini"));
    assert_eq!(p["$ai_provider"], json!("openai"));
    assert_eq!(p["$ai_input_tokens"], json!(12));
    assert_eq!(p["$ai_output_tokens"], json!(5));
    assert!(p.get("$ai_cache_read_input_tokens").is_none(), "openai-v2 reports no cache tokens");
    assert_eq!(p["$ai_trace_id"], json!("b60abc829625b198fc54115e71019c5e"));
    assert_eq!(p["$ai_span_id"], json!("8666cbc9d769ad3a"));
    assert_eq!(p["$ai_parent_id"], json!("54c03771b00d060e"));
    assert_eq!(p["$ai_ingestion_source"], json!("otel"));
    assert_eq!(p["$ai_span_name"], json!("chat gpt-4o-mini"));
    assert_eq!(p["$ai_input"], json!([{"role": "user", "parts": [{"content": "hi", "type": "text"}]}]));
    assert_eq!(p["$ai_output_choices"][0]["parts"][0]["content"], json!("Hello world"));
    assert_eq!(p["$ai_model_parameters"]["temperature"], json!(0.1));
    assert_eq!(p["$ai_stop_reason"], json!("stop"));
    assert_eq!(p["$ai_lib"], json!("opentelemetry"));
    assert_eq!(p["$ai_lib_version"], json!("1.45.2"));
    assert_eq!(p["$ai_is_error"], json!(false));
    assert!(p["$ai_latency"].as_f64().unwrap() > 0.0);
    assert!(p.get("gen_ai.input.messages").is_none(), "moved into $ai_input");
    assert!(p.get("telemetry.sdk.name").is_none(), "telemetry.* resource attributes are dropped");
    assert_eq!(p["service.name"], json!("agent-svc"));
    assert_eq!(p["gen_ai.response.id"], json!("chatcmpl-fake"));
    let start = chrono::DateTime::parse_from_rfc3339(&e.timestamp).unwrap();
    assert_eq!(start.timestamp() as u64, chat.start_unix_nano / 1_000_000_000);

    let failed = event_of(by_name(&spans, "chat fail-model")[0]);
    assert_eq!(failed.event, "$ai_generation");
    assert_eq!(failed.properties["$ai_is_error"], json!(true));
    assert_eq!(failed.properties["$ai_error"], json!("Error code: 429 - Rate limit reached"));
    assert_eq!(failed.properties["$ai_http_status"], json!(429));
    assert_eq!(failed.properties["$ai_model"], json!("fail-model"), "request model when there is no response");

    let embedding = event_of(by_name(&spans, "embeddings text-embedding-3-small")[0]);
    assert_eq!(embedding.event, "$ai_embedding");
    assert_eq!(embedding.properties["$ai_model"], json!("text-embedding-3-small"));
    assert_eq!(embedding.properties["$ai_input_tokens"], json!(7));

    let trace = event_of(root);
    assert_eq!(trace.event, "$ai_trace", "a span without parent");
    assert_eq!(trace.properties["$feature/agent-prompt"], json!("b"));
    assert_eq!(trace.properties["$ai_span_type"], json!("agent"));
    assert!(trace.properties.get("$ai_parent_id").is_none());
}

#[test]
fn openllmetry_cache_and_reasoning_tokens() {
    let spans = spans_of(OPENLLMETRY);
    assert_eq!(spans.len(), 5);
    assert!(spans.iter().all(|s| s.trace_id == "986d3dbe38d37db2f9bf16998ed5540d"));
    let chats = by_name(&spans, "openai.chat");
    assert_eq!(chats.len(), 3);
    let e = event_of(chats[0]);
    assert_eq!(e.event, "$ai_generation");
    let p = &e.properties;
    assert_eq!(p["$ai_model"], json!("gpt-4o-mini"));
    assert_eq!(p["$ai_provider"], json!("openai"));
    assert_eq!(p["$ai_input_tokens"], json!(12));
    assert_eq!(p["$ai_output_tokens"], json!(5));
    assert_eq!(p["$ai_cache_read_input_tokens"], json!(4));
    assert_eq!(p["$ai_cache_reporting_exclusive"], json!(false), "GenAI input tokens include cached ones");
    assert_eq!(p["$ai_reasoning_tokens"], json!(2));
    assert_eq!(p["$ai_total_tokens"], json!(17));
    assert_eq!(p["$ai_base_url"], json!("http://127.0.0.1:18090/v1/"));
    assert_eq!(p["$ai_stream"], json!(false));
    assert_eq!(p["$ai_input"][0]["parts"][0]["content"], json!("hi"));

    let stream = chats[1];
    assert_eq!(stream.events.len(), 5);
    assert!(stream
        .events
        .iter()
        .all(|ev| ev.name == "gen_ai.content.completion.chunk" && ev.time_unix_nano > 0));
    assert_eq!(stream.status_name(), "ok");
    assert_eq!(event_of(stream).properties["$ai_stream"], json!(true));

    let failed = chats[2];
    assert_eq!(failed.status_name(), "error");
    assert_eq!(failed.events[0].name, "exception");
    let fp = event_of(failed).properties;
    assert_eq!(fp["$ai_error_type"], json!("RateLimitError"));
    assert_eq!(fp["$ai_http_status"], json!(429));

    let embedding = event_of(by_name(&spans, "openai.embeddings")[0]);
    assert_eq!(embedding.event, "$ai_embedding");
    assert_eq!(embedding.properties["$ai_input_tokens"], json!(7));
    assert_eq!(embedding.properties["$ai_cache_read_input_tokens"], json!(0));
}

#[test]
fn otlp_json_fixture() {
    let reqs = requests(OTEL_JSON);
    assert_eq!(reqs.len(), 1);
    assert_eq!(Encoding::from_content_type(&reqs[0].0), Ok(Encoding::Json));
    let spans = spans_of(OTEL_JSON);
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.trace_id, "f4187f0f0ec3626ac2e42220fa60748f");
    assert_eq!(s.span_id, "59d7014d05a7a81f");
    assert_eq!(s.parent_span_id, None);
    assert_eq!(s.kind_name(), "client");
    assert_eq!(s.start_unix_nano, 1796404941388435906);
    assert_eq!(s.end_unix_nano, 1796404941388566489);
    assert_eq!(s.scope_name.as_deref(), Some("agent"));
    assert_eq!(s.attributes["gen_ai.usage.input_tokens"], json!(12));
    assert_eq!(s.events.len(), 1);
    assert_eq!(s.events[0].name, "feature_flag.evaluation");
    assert_eq!(s.events[0].attributes["feature_flag.key"], json!("agent-prompt"));
    let e = event_of(s);
    assert_eq!(e.event, "$ai_generation", "chat is a generation even at the root");
    assert_eq!(e.distinct_id, None, "no posthog.distinct_id nor user.id: the caller picks");
    assert_eq!(e.properties["$ai_input_tokens"], json!(12));
    assert_eq!(e.properties["$feature/agent-prompt"], json!("b"));
}

#[test]
fn posthog_span_processor_keeps_the_orphan_link() {
    let spans = spans_of(POSTHOG_PROCESSOR);
    assert_eq!(spans.len(), 1);
    let s = &spans[0];
    assert_eq!(s.trace_id, "95c07d6a2f6fa3f36163d8c8976b1bd6");
    assert_eq!(s.span_id, "7a8b259f2cea5650");
    assert_eq!(s.parent_span_id.as_deref(), Some("f1bc6841969bec77"));
    let e = event_of(s);
    assert_eq!(e.event, "$ai_generation");
    assert_eq!(e.distinct_id.as_deref(), Some("user_otel"));
    assert_eq!(e.properties["$ai_parent_id"], json!("f1bc6841969bec77"));
    assert_eq!(e.properties["$ai_model"], json!("gpt-4o-mini"));
    assert_eq!(e.properties["$ai_input_tokens"], json!(12));
    assert_eq!(e.properties["$ai_output_tokens"], json!(5));
    assert_eq!(e.properties["service.name"], json!("my-app"));
}

#[test]
fn langfuse_observations() {
    let reqs = requests(LANGFUSE);
    assert_eq!(reqs.len(), 1, "the scores call is not OTLP");
    let spans = spans_of(LANGFUSE);
    assert_eq!(spans.len(), 3);
    assert!(spans
        .iter()
        .all(|s| s.trace_id == "8ee2a440215e554970a47ff7b5084d76" && s.scope_name.as_deref() == Some("langfuse-sdk")));
    let root = by_name(&spans, "agent_run")[0];
    assert_eq!(root.span_id, "2b638086f9288828");
    assert_eq!(root.parent_span_id, None);

    let generation = event_of(by_name(&spans, "llm_step")[0]);
    assert_eq!(generation.event, "$ai_generation");
    assert_eq!(generation.distinct_id.as_deref(), Some("user_lf"));
    let p = &generation.properties;
    assert_eq!(p["$ai_model"], json!("gpt-4o-mini"));
    assert_eq!(p["$ai_input_tokens"], json!(12));
    assert_eq!(p["$ai_output_tokens"], json!(5));
    assert_eq!(p["$ai_cache_read_input_tokens"], json!(4));
    assert_eq!(p["$ai_cache_reporting_exclusive"], json!(false), "OpenAI's prompt_tokens include cached ones");
    assert_eq!(p["$ai_reasoning_tokens"], json!(2));
    assert_eq!(p["$ai_session_id"], json!("sess-1"));
    assert_eq!(p["$ai_parent_id"], json!("2b638086f9288828"));
    assert_eq!(p["$ai_input"], json!([{"role": "user", "content": "hi"}]));
    assert_eq!(p["$ai_output_choices"], json!([{"role": "assistant", "content": "Hello world"}]));
    assert_eq!(p["$ai_model_parameters"]["temperature"], json!(1));
    assert_eq!(p["langfuse.trace.tags"], json!(["exp:agent-prompt=b"]));

    let tool = event_of(by_name(&spans, "get_weather")[0]);
    assert_eq!(tool.event, "$ai_span");
    assert_eq!(tool.properties["$ai_span_type"], json!("tool"));
    assert_eq!(tool.properties["$ai_input_state"], json!({"city": "SF"}));
    assert_eq!(tool.properties["$ai_output_state"], json!({"t": 20}));

    let trace = event_of(root);
    assert_eq!(trace.event, "$ai_trace");
    assert_eq!(trace.properties["$ai_span_type"], json!("agent"));
}

#[test]
fn to_json_round_trips_and_encode_round_trips() {
    for fixture in [OPENAI_V2, OPENLLMETRY, OTEL_JSON, POSTHOG_PROCESSOR, LANGFUSE] {
        let spans = spans_of(fixture);
        for s in &spans {
            let stored = s.to_json();
            assert_eq!(stored["trace_id"], json!(s.trace_id));
            assert!(stored["kind"].is_string() && stored["status_code"].is_string());
            assert_eq!(Span::from_json(&stored).as_ref(), Some(s));
        }
        let again = decode("application/x-protobuf", &encode(&spans)).unwrap();
        assert_eq!(again, spans);
    }
}

fn snake_case(value: &Value) -> Value {
    match value {
        Value::Object(m) => Value::Object(
            m.iter()
                .map(|(k, v)| {
                    let mut snake = String::new();
                    for c in k.chars() {
                        if c.is_ascii_uppercase() {
                            snake.push('_');
                            snake.push(c.to_ascii_lowercase());
                        } else {
                            snake.push(c);
                        }
                    }
                    (snake, snake_case(v))
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.iter().map(snake_case).collect()),
        other => other.clone(),
    }
}

#[test]
fn json_variants_decode_alike() {
    let (_, body) = &requests(OTEL_JSON)[0];
    let expected = decode("application/json", body).unwrap();
    let camel: Value = serde_json::from_slice(body).unwrap();

    // snake_case names (attribute keys are values, not names: untouched).
    let snake = serde_json::to_vec(&snake_case(&camel)).unwrap();
    assert_eq!(decode("application/json; charset=utf-8", &snake).unwrap(), expected);

    // Numbers as numbers, enums by name.
    let mut v = camel.clone();
    let span = &mut v["resourceSpans"][0]["scopeSpans"][0]["spans"][0];
    span["startTimeUnixNano"] = json!(1796404941388435906u64);
    span["endTimeUnixNano"] = json!(1796404941388566489u64);
    span["kind"] = json!("SPAN_KIND_CLIENT");
    span["attributes"][1]["value"]["intValue"] = json!(12);
    span["status"] = json!({"code": "STATUS_CODE_UNSET"});
    assert_eq!(decode("application/json", &serde_json::to_vec(&v).unwrap()).unwrap(), expected);

    // All value kinds.
    let body = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{
    "traceId": "0102030405060708090A0B0C0D0E0F10", "spanId": "0102030405060708", "parentSpanId": "", "name": "x",
    "status": {"code": 2, "message": "boom"},
    "attributes": [
        {"key": "b", "value": {"boolValue": true}},
        {"key": "d", "value": {"doubleValue": 1.5}},
        {"key": "nan", "value": {"doubleValue": "NaN"}},
        {"key": "bytes", "value": {"bytesValue": "AAEC"}},
        {"key": "arr", "value": {"arrayValue": {"values": [{"intValue": "-3"}, {"stringValue": "s"}]}}},
        {"key": "kv", "value": {"kvlistValue": {"values": [{"key": "k", "value": {"stringValue": "v"}}]}}},
        {"key": "empty", "value": {}}
    ]}]}]}]});
    let spans = decode("application/json", &serde_json::to_vec(&body).unwrap()).unwrap();
    let s = &spans[0];
    assert_eq!(s.trace_id, "0102030405060708090a0b0c0d0e0f10", "lowercased");
    assert_eq!(s.parent_span_id, None);
    assert_eq!(s.status_name(), "error");
    assert_eq!(s.status_message.as_deref(), Some("boom"));
    assert_eq!(
        Value::Object(s.attributes.clone()),
        json!({"b": true, "d": 1.5, "nan": "NaN", "bytes": "AAEC", "arr": [-3, "s"], "kv": {"k": "v"}, "empty": null})
    );
    assert_eq!(to_ai_event(s), None, "not an AI span");
}

#[test]
fn bad_bodies_are_refused_with_a_clear_error() {
    let err = decode("text/plain", b"{}").unwrap_err();
    assert!(matches!(err, OtlpError::UnsupportedContentType(_)));
    assert_eq!(err.http_status(), 415);

    let err = decode("application/x-protobuf", b"\x0a\xff\xff\xff\xff\x0f").unwrap_err();
    assert!(matches!(err, OtlpError::Protobuf(_)), "{err}");
    assert_eq!(err.http_status(), 400);
    assert!(err.to_string().starts_with("malformed protobuf ExportTraceServiceRequest"));

    let err = decode("application/json", b"not json").unwrap_err();
    assert!(err.to_string().contains("not JSON"), "{err}");

    let err = decode("application/json", br#"{"resourceSpans": 5}"#).unwrap_err();
    assert_eq!(err.to_string(), "malformed OTLP/JSON: body.resourceSpans: expected an array");

    let bad_id = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz", "spanId": "0102030405060708"}]}]}]});
    let err = decode("application/json", bad_id.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("resourceSpans[0].scopeSpans[0].spans[0].traceId"), "{err}");

    let bad_int = json!({"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708",
        "attributes": [{"key": "n", "value": {"intValue": "twelve"}}]}]}]}]});
    let err = decode("application/json", bad_int.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("attributes[0].value.intValue: expected a 64-bit integer"), "{err}");

    // An id of the wrong length rejects that span only.
    let mixed = json!({"resourceSpans": [{"scopeSpans": [{"spans": [
        {"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0102030405060708", "name": "good"},
        {"traceId": "0102", "spanId": "0102030405060708", "name": "short"},
        {"traceId": "0102030405060708090a0b0c0d0e0f10", "spanId": "0000000000000000", "name": "zero"}]}]}]});
    let partial = decode_partial("application/json", mixed.to_string().as_bytes()).unwrap();
    assert_eq!(partial.spans.len(), 1);
    assert_eq!(partial.rejected_spans, 2);
    assert_eq!(partial.rejection.as_deref(), Some("span \"short\": trace_id must be 16 bytes, got 2"));
    let err = decode("application/json", mixed.to_string().as_bytes()).unwrap_err();
    assert!(matches!(err, OtlpError::InvalidSpan(_)));

    // Empty requests are fine.
    assert_eq!(decode("application/x-protobuf", b"").unwrap(), vec![]);
    assert_eq!(decode("application/json", b"{}").unwrap(), vec![]);
}

fn request_with_attribute(value: AnyValue) -> Vec<u8> {
    use opentelemetry_proto::tonic::trace::v1::Span as ProtoSpan;
    ExportTraceServiceRequest {
        resource_spans: vec![ResourceSpans {
            resource: Some(Resource::default()),
            scope_spans: vec![ScopeSpans {
                spans: vec![ProtoSpan {
                    trace_id: vec![1; 16],
                    span_id: vec![2; 8],
                    name: "gen_ai.x".into(),
                    attributes: vec![KeyValue {
                        key: "big".into(),
                        value: Some(value),
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }],
    }
    .encode_to_vec()
}

#[test]
fn absurd_attributes_are_refused() {
    // Nested arrays deeper than the limit (prost's own recursion limit would stop ~45 levels).
    let mut deep = AnyValue {
        value: Some(any_value::Value::StringValue("leaf".into())),
    };
    for _ in 0..(MAX_VALUE_DEPTH + 2) {
        deep = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![deep] })),
        };
    }
    let err = decode("application/x-protobuf", &request_with_attribute(deep)).unwrap_err();
    assert!(matches!(err, OtlpError::Limit(_)), "{err}");
    assert!(err.to_string().contains("\"big\""), "{err}");

    // Within the limit is fine.
    let mut ok = AnyValue {
        value: Some(any_value::Value::IntValue(1)),
    };
    for _ in 0..8 {
        ok = AnyValue {
            value: Some(any_value::Value::ArrayValue(ArrayValue { values: vec![ok] })),
        };
    }
    let spans = decode("application/x-protobuf", &request_with_attribute(ok)).unwrap();
    assert_eq!(spans[0].attributes["big"], json!([[[[[[[[1]]]]]]]]));

    // Too many values: two bytes each on the wire, a hundred-odd bytes each as JSON.
    let wide = AnyValue {
        value: Some(any_value::Value::ArrayValue(ArrayValue {
            values: vec![AnyValue::default(); MAX_VALUES_PER_REQUEST + 1],
        })),
    };
    let err = decode("application/x-protobuf", &request_with_attribute(wide)).unwrap_err();
    assert!(matches!(err, OtlpError::Limit(_)), "{err}");

    // JSON nested past serde_json's recursion limit: an error, not a stack overflow.
    let deep_json = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    assert!(decode("application/json", deep_json.as_bytes()).is_err());
}

/// xorshift64*: deterministic random bytes without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Decoding and mapping whatever decodes must never panic.
fn exercise(content_type: &str, body: &[u8]) {
    if let Ok(decoded) = decode_partial(content_type, body) {
        for s in &decoded.spans {
            let _ = to_ai_event(s);
            let _ = Span::from_json(&s.to_json());
        }
        let _ = encode(&decoded.spans);
    }
}

#[test]
fn random_and_damaged_bodies_never_panic() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    for _ in 0..3000 {
        let len = rng.below(300);
        let body: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        exercise("application/x-protobuf", &body);
        exercise("application/json", &body);
    }
    let mut bodies = Vec::new();
    for fixture in [OPENAI_V2, OPENLLMETRY, OTEL_JSON, POSTHOG_PROCESSOR, LANGFUSE] {
        bodies.extend(requests(fixture));
    }
    for (content_type, body) in &bodies {
        // Every truncation.
        for cut in 0..body.len() {
            exercise(content_type, &body[..cut]);
        }
        // Random byte flips, insertions and deletions.
        for _ in 0..400 {
            let mut damaged = body.clone();
            for _ in 0..1 + rng.below(4) {
                let at = rng.below(damaged.len());
                match rng.below(3) {
                    0 if !damaged.is_empty() => damaged[at] = rng.next() as u8,
                    1 => damaged.insert(at, rng.next() as u8),
                    _ if !damaged.is_empty() => {
                        damaged.remove(at);
                    }
                    _ => {}
                }
            }
            exercise(content_type, &damaged);
        }
    }
}

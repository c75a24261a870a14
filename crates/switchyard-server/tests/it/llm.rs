//! LLM analytics: the requests recorded from PostHog's LLM wrappers, OpenTelemetry
//! instrumentations and Langfuse (tests/data/llm-requests, copied from the shared fixtures)
//! replayed; costs at intake, spans over OTLP, one trace view.

use std::path::PathBuf;

use serde_json::{json, Value};
use switchyard_store::KeyKind;

use crate::{TestServer, SECRET};

fn recorded() -> Vec<crate::Recorded> {
    crate::recordings(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/llm-requests"))
}

/// A server knowing the fixtures' keys: `phc_test` (PostHog) and `pk-lf-test` (Langfuse's
/// public key) as project tokens.
async fn server() -> TestServer {
    let server = TestServer::start().await;
    let project = server.state.control.lookup(KeyKind::ProjectToken, crate::TOKEN).unwrap();
    server.state.control.add_key(project, KeyKind::ProjectToken, "phc_test").unwrap();
    server.state.control.add_key(project, KeyKind::ProjectToken, "pk-lf-test").unwrap();
    server
}

/// Replays every recorded export and capture; OTLP exporters recorded without headers get the
/// `Authorization: Bearer` a user sets in `OTEL_EXPORTER_OTLP_HEADERS`.
async fn replay(server: &TestServer) {
    for r in recorded() {
        let mut request = server.client.post(format!("{}{}", server.url, r.path));
        let mut authorized = false;
        for (k, v) in &r.headers {
            authorized |= k.eq_ignore_ascii_case("authorization");
            request = request.header(k, v);
        }
        if !authorized && r.path == "/v1/traces" {
            request = request.bearer_auth("phc_test");
        }
        let response = request.body(r.body.clone()).send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{} {}: {status} {text}", r.file, r.path);
    }
}

async fn get(server: &TestServer, path: &str) -> (u16, Value) {
    let response = server.client.get(format!("{}{path}", server.url)).bearer_auth(SECRET).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() <= 1e-12 + b.abs() * 1e-9
}

#[tokio::test]
async fn recorded_llm_requests_are_costed_and_traced() {
    let server = server().await;
    replay(&server).await;
    let events = server.events("event=$ai_generation").await;
    assert!(events.len() >= 8, "{} generations", events.len());
    // posthog-python's OpenAI wrapper: gpt-4o-mini, 12 in (4 cached), 5 out → 4.5e-6 (reference §2.6).
    let by_model = |model: &str, lib: &str| {
        events
            .iter()
            .find(|e| e["properties"]["$ai_model"].as_str().is_some_and(|m| m.starts_with(model)) && e["properties"]["$lib"].as_str().unwrap_or_default().contains(lib))
            .unwrap_or_else(|| panic!("a {model} generation from {lib}"))
            .clone()
    };
    let openai = by_model("gpt-4o-mini", "posthog-python");
    assert!(close(openai["properties"]["$ai_total_cost_usd"].as_f64().unwrap(), 4.5e-6), "{}", openai["properties"]);
    assert!(openai["properties"]["$ai_model_cost_used"].is_string());
    let claude = by_model("claude-sonnet-4-5", "posthog-python");
    assert!(close(claude["properties"]["$ai_total_cost_usd"].as_f64().unwrap(), 2.385e-4), "{}", claude["properties"]);
    let gemini = by_model("gemini-2.5-flash", "posthog-python");
    assert!(close(gemini["properties"]["$ai_total_cost_usd"].as_f64().unwrap(), 1.463e-5), "{}", gemini["properties"]);
    // Their trace ids are the events' trace ids: the events API and the trace view find them.
    let trace = openai["properties"]["$ai_trace_id"].as_str().unwrap();
    assert_eq!(openai["trace_id"], trace);

    // OTLP: the openai-v2 instrumentation's run, spans and their $ai_* events in one view.
    let spans_metric = server.metrics().await;
    assert!(!spans_metric.contains("switchyard_otlp_spans_total 0"), "{spans_metric}");
    // Every OTLP run's view; the openai-v2 instrumentation's is the largest (an agent span, two
    // chats, a failed call, an embedding).
    let mut otel_traces: Vec<String> = events
        .iter()
        .filter(|e| e["properties"]["$ai_ingestion_source"] == "otel")
        .map(|e| e["trace_id"].as_str().unwrap().to_owned())
        .collect();
    otel_traces.dedup();
    assert!(otel_traces.len() >= 4, "{otel_traces:?}");
    let mut views = Vec::new();
    for trace in &otel_traces {
        assert_eq!(trace.len(), 32, "OTel trace ids are 32 hex digits: {trace}");
        let (status, view) = get(&server, &format!("/api/projects/@current/traces/{trace}")).await;
        assert_eq!(status, 200, "{view}");
        views.push(view);
    }
    let costed = views.iter().filter(|v| v["totals"]["cost_usd"].as_f64().unwrap() > 0.0).count();
    assert!(costed >= 3, "runs costed from their spans' tokens: {costed} of {}", views.len());
    let view = views.iter().max_by_key(|v| v["totals"]["spans"].as_u64().unwrap()).unwrap();
    let otel_trace = view["trace_id"].as_str().unwrap().to_owned();
    let totals = &view["totals"];
    assert!(totals["spans"].as_u64().unwrap() >= 4, "{totals}");
    assert!(totals["llm_calls"].as_u64().unwrap() >= 3, "{totals}");
    assert!(totals["errors"].as_u64().unwrap() >= 1, "the rate-limited call: {totals}");
    assert!(totals["input_tokens"].as_u64().unwrap() >= 24, "{totals}");
    assert!(totals["cost_usd"].as_f64().unwrap() > 0.0, "{totals}");
    assert!(!view["flags"].as_object().unwrap().is_empty(), "the flag on the agent span: {view}");
    let root = &view["tree"][0];
    assert!(!root["children"].as_array().unwrap().is_empty(), "spans hang under the agent span: {view}");

    let (status, list) = get(&server, "/api/projects/@current/traces/?limit=100").await;
    assert_eq!(status, 200, "{list}");
    let listed: Vec<&str> = list["results"].as_array().unwrap().iter().map(|t| t["trace_id"].as_str().unwrap()).collect();
    assert!(listed.contains(&otel_trace.as_str()) && listed.contains(&trace), "{listed:?}");
    let (_, costly) = get(&server, "/api/projects/@current/traces/?min_cost=1").await;
    assert!(costly["results"].as_array().unwrap().is_empty(), "no run cost a dollar: {costly}");
    let (status, _) = get(&server, "/api/projects/@current/traces/no-such-trace").await;
    assert_eq!(status, 404);

    // Langfuse's score, on its trace as PostHog's $ai_metric.
    let metrics = server.events("event=$ai_metric").await;
    let score = metrics.iter().find(|e| e["properties"]["$ai_metric_name"] == "helpfulness").expect("the Langfuse score");
    assert_eq!(score["properties"]["$ai_metric_value"], "0.9");
    assert_eq!(score["trace_id"], "8ee2a440215e554970a47ff7b5084d76");
}

#[tokio::test]
async fn bad_otlp_requests_get_clear_errors_and_store_nothing() {
    let server = server().await;
    let post = |path: &str, content_type: &str, body: Vec<u8>, token: Option<&str>| {
        let mut request = server.client.post(format!("{}{path}", server.url)).header("content-type", content_type).body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send()
    };
    let garbage = vec![0xff, 0x12, 0x34, 0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f];
    let response = post("/v1/traces", "application/x-protobuf", garbage.clone(), Some("phc_test")).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(response.headers()["content-type"], "application/x-protobuf", "a google.rpc.Status");
    let response = post("/v1/traces", "application/json", b"{\"resourceSpans\": 7}".to_vec(), Some("phc_test")).await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["message"].as_str().unwrap().contains("resourceSpans"), "{body}");
    let response = post("/v1/traces", "text/plain", b"hello".to_vec(), Some("phc_test")).await.unwrap();
    assert_eq!(response.status(), 415);
    let response = post("/v1/traces", "application/json", b"{}".to_vec(), Some("phc_unknown")).await.unwrap();
    assert_eq!(response.status(), 401);
    let response = post("/v1/traces", "application/json", b"{}".to_vec(), None).await.unwrap();
    assert_eq!(response.status(), 401);
    let huge = vec![b' '; 30 * 1024 * 1024];
    let response = post("/v1/traces", "application/json", huge, Some("phc_test")).await;
    if let Ok(response) = response {
        assert_eq!(response.status(), 413);
    }
    // Absurd attributes: nesting far past any real span.
    let deep = format!("{}1{}", "{\"arrayValue\":{\"values\":[".repeat(5000), "]}}".repeat(5000));
    let body = format!(
        r#"{{"resourceSpans":[{{"scopeSpans":[{{"spans":[{{"traceId":"0af7651916cd43dd8448eb211c80319c","spanId":"b7ad6b7169203331","name":"x","startTimeUnixNano":"1","endTimeUnixNano":"2","attributes":[{{"key":"a","value":{deep}}}]}}]}}]}}]}}"#
    );
    let response = post("/v1/traces", "application/json", body.into_bytes(), Some("phc_test")).await.unwrap();
    assert_eq!(response.status(), 400);
    assert_eq!(server.client.get(format!("{}/_liveness", server.url)).send().await.unwrap().status(), 200);
    let (status, _) = get(&server, "/api/projects/@current/traces/0af7651916cd43dd8448eb211c80319c").await;
    assert_eq!(status, 404, "nothing stored half-way");
    assert!(server.metrics().await.contains("switchyard_otlp_spans_total 0"));
}

#[tokio::test]
async fn a_trace_is_the_same_whatever_order_its_parts_arrive_in_and_across_restarts() {
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let span = |id: &str, parent: Option<&str>, start: u64| {
        json!({"traceId": trace, "spanId": id, "parentSpanId": parent.unwrap_or(""), "name": format!("step {id}"), "kind": 1,
               "startTimeUnixNano": (1_764_927_000_000_000_000u64 + start * 1_000_000).to_string(),
               "endTimeUnixNano": (1_764_927_000_000_000_000u64 + (start + 5) * 1_000_000).to_string(),
               "attributes": [{"key": "gen_ai.operation.name", "value": {"stringValue": "chat"}},
                              {"key": "gen_ai.request.model", "value": {"stringValue": "gpt-4o-mini"}},
                              {"key": "gen_ai.usage.input_tokens", "value": {"intValue": "12"}},
                              {"key": "gen_ai.usage.output_tokens", "value": {"intValue": "5"}}]})
    };
    let export = |spans: Vec<Value>| json!({"resourceSpans": [{"resource": {"attributes": [{"key": "user.id", "value": {"stringValue": "user_42"}}]}, "scopeSpans": [{"spans": spans}]}]});
    let product = |name: &str, at: &str| json!({"event": name, "distinct_id": "user_42", "timestamp": at, "properties": {"trace_id": trace, "workspace_id": "ws_1", "tool_name": "search"}});
    let parts: Vec<(&str, Value)> = vec![
        ("otlp", export(vec![span("00f067aa0ba902b7", None, 0)])),
        ("capture", json!({"api_key": crate::TOKEN, "batch": [product("tool_used", "2025-12-05T09:30:00.002Z")]})),
        ("otlp", export(vec![span("00f067aa0ba902b8", Some("00f067aa0ba902b7"), 1)])),
        ("capture", json!({"api_key": crate::TOKEN, "batch": [product("rag_query_triggered", "2025-12-05T09:30:00.003Z")]})),
    ];
    let send = |server: &TestServer, (kind, body): &(&str, Value)| {
        let (path, auth) = if *kind == "otlp" { ("/v1/traces", true) } else { ("/batch/", false) };
        let mut request = server.client.post(format!("{}{path}", server.url)).json(body);
        if auth {
            request = request.bearer_auth(crate::TOKEN);
        }
        request.send()
    };
    let mut views = Vec::new();
    for order in [vec![0, 1, 2, 3], vec![3, 2, 1, 0], vec![1, 3, 0, 2]] {
        let server = TestServer::start().await;
        // Half before a restart, half after.
        for &i in &order[..2] {
            assert_eq!(send(&server, &parts[i]).await.unwrap().status(), 200);
        }
        let dir = server.stop().await;
        let server = TestServer::start_in(dir, |_| {}).await;
        for &i in &order[2..] {
            assert_eq!(send(&server, &parts[i]).await.unwrap().status(), 200);
        }
        let (status, mut view) = get(&server, &format!("/api/projects/@current/traces/{trace}")).await;
        assert_eq!(status, 200, "{view}");
        // Event ids are minted per server: compare the rest.
        for e in view["events"].as_array_mut().unwrap() {
            e.as_object_mut().unwrap().remove("id");
        }
        strip_event_ids(&mut view["tree"]);
        views.push(view);
    }
    assert_eq!(views[0]["totals"]["llm_calls"], 2, "{}", views[0]);
    assert_eq!(views[0]["totals"]["tool_calls"], 1);
    assert_eq!(views[0]["tree"][0]["children"][0]["id"], "00f067aa0ba902b8");
    assert_eq!(views[0], views[1]);
    assert_eq!(views[0], views[2]);
}

fn strip_event_ids(nodes: &mut Value) {
    for node in nodes.as_array_mut().into_iter().flatten() {
        if let Some(detail) = node["detail"].as_object_mut() {
            detail.remove("event_id");
        }
        strip_event_ids(&mut node["children"]);
    }
}

#[tokio::test]
async fn llm_insights_add_up_the_stored_events() {
    let server = TestServer::start().await;
    let generation = |model: &str, workspace: &str, latency: f64, error: bool, at: &str| {
        json!({"event": "$ai_generation", "distinct_id": "user_1", "timestamp": at,
               "properties": {"$ai_model": model, "$ai_provider": "openai", "$ai_input_tokens": 12, "$ai_output_tokens": 5,
                              "$ai_latency": latency, "$ai_is_error": error, "$ai_trace_id": "t-insights", "workspace_id": workspace}})
    };
    let batch = json!({"api_key": crate::TOKEN, "batch": [
        generation("gpt-4o-mini", "ws_1", 0.2, false, "2026-12-01T10:00:00Z"),
        generation("gpt-4o-mini", "ws_1", 0.4, true, "2026-12-01T11:00:00Z"),
        generation("gpt-4o-mini", "ws_2", 0.6, false, "2026-12-02T10:00:00Z"),
        generation("unknown-model-x", "ws_2", 1.0, false, "2026-12-02T11:00:00Z"),
        {"event": "prompt_blocked", "distinct_id": "user_1", "timestamp": "2026-12-01T10:00:01Z", "properties": {"workspace_id": "ws_1"}},
        {"event": "tool_used", "distinct_id": "user_1", "timestamp": "2026-12-01T10:00:02Z", "properties": {"workspace_id": "ws_1", "success": false}},
        {"event": "tool_used", "distinct_id": "user_1", "timestamp": "2026-12-01T10:00:03Z", "properties": {"workspace_id": "ws_1", "success": true}},
    ]});
    assert_eq!(server.client.post(format!("{}/batch/", server.url)).json(&batch).send().await.unwrap().status(), 200);

    let (status, by_model) = get(&server, "/api/projects/@current/insights/llm?group_by=model&interval=all").await;
    assert_eq!(status, 200, "{by_model}");
    let rows = by_model["results"].as_array().unwrap();
    let mini = rows.iter().find(|r| r["model"] == "gpt-4o-mini").unwrap();
    assert_eq!(mini["llm_calls"], 3);
    assert_eq!(mini["errors"], 1);
    assert_eq!(mini["input_tokens"], 36);
    assert!(close(mini["cost_usd"].as_f64().unwrap(), 3.0 * 4.8e-6), "{mini}");
    assert_eq!(mini["latency_p50_s"], 0.4);
    let unknown = rows.iter().find(|r| r["model"] == "unknown-model-x").unwrap();
    assert_eq!(unknown["cost_usd"], 0.0, "no price, no cost");
    let none = rows.iter().find(|r| r["model"].is_null()).unwrap();
    assert_eq!((none["guardrail_blocks"].as_u64(), none["tool_calls"].as_u64(), none["tool_failures"].as_u64()), (Some(1), Some(2), Some(1)));

    let (_, by_day) = get(&server, "/api/projects/@current/insights/llm?group_by=workspace&after=2026-12-02T00:00:00Z").await;
    let rows = by_day["results"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{by_day}");
    assert_eq!((rows[0]["day"].as_str(), rows[0]["workspace"].as_str(), rows[0]["llm_calls"].as_u64()), (Some("2026-12-02"), Some("ws_2"), Some(2)));
    let (status, bad) = get(&server, "/api/projects/@current/insights/llm?group_by=colour").await;
    assert_eq!((status, bad["attr"].as_str()), (400, Some("group_by")));
}

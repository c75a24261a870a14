//! Bad input gets a clear 4xx in its SDK family's form; valid events in a batch are kept and
//! invalid ones quarantined; nothing acknowledged is lost; a full log answers 503.

use base64::Engine as _;
use serde_json::{json, Value};
use switchyard_store::KeyKind;

use crate::{gzip, TestServer, SECRET, TOKEN, WRITE_KEY};

async fn post(server: &TestServer, path: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> (u16, String) {
    let mut request = server.client.post(format!("{}{path}", server.url)).body(body);
    for (k, v) in headers {
        request = request.header(*k, *v);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.text().await.unwrap())
}

fn posthog_error(body: &str) -> (String, String) {
    let v: Value = serde_json::from_str(body).unwrap_or_else(|_| panic!("JSON error body: {body}"));
    (v["code"].as_str().unwrap().to_owned(), v["error"].as_str().unwrap().to_owned())
}

fn event(name: &str, distinct_id: &str) -> Value {
    json!({"event": name, "distinct_id": distinct_id, "properties": {"trace_id": "0af7651916cd43dd8448eb211c80319c", "workspace_id": "ws_1"}})
}

type PosthogCase<'a> = (&'a str, Vec<u8>, &'a [(&'a str, &'a str)], u16, &'a str, &'a str);
type SegmentCase<'a> = (&'a str, Vec<u8>, Vec<(&'a str, &'a str)>, u16, &'a str);

#[tokio::test]
async fn posthog_bad_requests_name_the_problem() {
    let server = TestServer::start().await;
    // (path, body, headers, status, PostHog error code, words the detail holds)
    let cases: Vec<PosthogCase> = vec![
        ("/batch/", b"{\"api_key\": \"phc_x\", \"batch\": [".to_vec(), &[], 400, "request_parsing_error", "invalid JSON"),
        ("/batch/", vec![0x1f, 0x8b, 0x08, 0, 1, 2, 3], &[], 400, "request_decoding_error", "gzip"),
        ("/e/", b"data=x".to_vec(), &[("content-type", "application/x-www-form-urlencoded")], 400, "request_parsing_error", "invalid JSON"),
        ("/e/", b"not a form".to_vec(), &[("content-type", "application/x-www-form-urlencoded")], 400, "request_decoding_error", "form data"),
        ("/e/", Vec::new(), &[], 400, "empty_payload", "missing data payload"),
        ("/batch/", json!({"api_key": TOKEN, "batch": []}).to_string().into_bytes(), &[], 400, "empty_batch", "no event"),
        ("/capture/", json!({"event": "x", "distinct_id": "u"}).to_string().into_bytes(), &[], 401, "ingest_key_required", "without an api_key"),
        ("/capture/", json!({"api_key": "phc_nobody", "event": "x", "distinct_id": "u"}).to_string().into_bytes(), &[], 401, "ingest_key_unknown", "known project"),
        ("/capture/", json!({"api_key": "phx_personal", "event": "x", "distinct_id": "u"}).to_string().into_bytes(), &[], 401, "ingest_key_invalid", "personal_api_key"),
        ("/capture/", json!({"api_key": TOKEN, "event": "x"}).to_string().into_bytes(), &[], 400, "missing_distinct_id", "distinct_id"),
        ("/capture/", json!({"api_key": TOKEN, "distinct_id": "u"}).to_string().into_bytes(), &[], 400, "request_hydration_error", "missing event name"),
        ("/capture/", json!({"api_key": TOKEN, "event": "x", "distinct_id": "u", "uuid": "nope"}).to_string().into_bytes(), &[], 400, "invalid_uuid", "not a UUID"),
        ("/capture/", json!({"api_key": TOKEN, "event": "x", "distinct_id": "u", "timestamp": "yesterday"}).to_string().into_bytes(), &[], 400, "invalid_timestamp", "not a valid date"),
        ("/capture/", json!({"api_key": TOKEN, "event": "x".repeat(201), "distinct_id": "u"}).to_string().into_bytes(), &[], 400, "event_name_too_long", "201 characters"),
    ];
    for (path, body, headers, status, code, needle) in cases {
        let (got_status, text) = post(&server, path, body, headers).await;
        assert_eq!(got_status, status, "{path} {text}");
        let (got_code, message) = posthog_error(&text);
        assert_eq!(got_code, code, "{text}");
        assert!(message.contains(needle), "{message:?} should mention {needle:?}");
    }
    assert!(server.events("").await.is_empty(), "nothing stored from refused requests");
    let metrics = server.metrics().await;
    assert!(metrics.contains("switchyard_events_rejected_total{reason=\"missing_distinct_id\"} 1"), "{metrics}");
}

#[tokio::test]
async fn segment_bad_requests_name_the_problem() {
    let server = TestServer::start().await;
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:")));
    let wrong = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("nope:"));
    let track = json!({"userId": "u", "event": "tool_used", "properties": {"tool_name": "web_search"}}).to_string();
    // (path, body, headers, status, words the error holds)
    let cases: Vec<SegmentCase> = vec![
        ("/v1/track", track.clone().into_bytes(), vec![], 401, "failed to read writekey from header"),
        ("/v1/track", track.clone().into_bytes(), vec![("authorization", wrong.as_str())], 401, "invalid write key"),
        ("/v1/track", b"{not json".to_vec(), vec![("authorization", basic.as_str())], 400, "invalid json"),
        ("/v1/track", json!({"event": "x"}).to_string().into_bytes(), vec![("authorization", basic.as_str())], 400, "request neither has anonymousId nor userId"),
        ("/v1/batch", json!({"batch": []}).to_string().into_bytes(), vec![("authorization", basic.as_str())], 400, "empty batch payload"),
        ("/v1/batch", gzip(b"{\"batch\":[")[..10].to_vec(), vec![("authorization", basic.as_str()), ("content-encoding", "gzip")], 400, "gzip"),
        ("/v1/batch", json!({"batch": [{"type": "launch", "userId": "u"}]}).to_string().into_bytes(), vec![("authorization", basic.as_str())], 400, "not one of track"),
    ];
    for (path, body, headers, status, needle) in cases {
        let (got_status, text) = post(&server, path, body, &headers).await;
        assert_eq!(got_status, status, "{path} {text}");
        assert!(text.contains(needle), "{text:?} should mention {needle:?}");
    }
    // The write key in the query (beacon style) and in the body (Segment) also authenticate.
    let (status, _) = post(&server, &format!("/v1/track?writeKey={WRITE_KEY}"), track.clone().into_bytes(), &[]).await;
    assert_eq!(status, 200);
    let body = json!({"writeKey": WRITE_KEY, "batch": [{"type": "identify", "userId": "u", "traits": {"plan": "pro"}}]});
    let (status, text) = post(&server, "/v1/batch", body.to_string().into_bytes(), &[]).await;
    assert_eq!((status, text.as_str()), (200, "OK"));
    // rudder-sdk-js's sendBeacon: the key in the query, the JSON labelled text/plain.
    let beacon = json!({"batch": [{"type": "track", "event": "flow_executed", "anonymousId": "anon_1", "properties": {"flow_id": "fl_1"}}]});
    let path = format!("/beacon/v1/batch?writeKey={WRITE_KEY}");
    let (status, text) = post(&server, &path, beacon.to_string().into_bytes(), &[("content-type", "text/plain;charset=UTF-8")]).await;
    assert_eq!((status, text.as_str()), (200, "OK"));
    let (status, _) = post(&server, "/beacon/v1/batch", beacon.to_string().into_bytes(), &[]).await;
    assert_eq!(status, 401, "a beacon without a write key is refused");
    // RudderStack's /v1/import takes a batch.
    let import = json!({"batch": [{"type": "identify", "userId": "u2", "traits": {"plan": "team"}}, {"type": "track", "event": "tool_used", "userId": "u2"}]});
    let (status, text) = post(&server, "/v1/import", import.to_string().into_bytes(), &[("authorization", basic.as_str())]).await;
    assert_eq!((status, text.as_str()), (200, "OK"));
    // The pixel API (AMP pages): the event is the query; answered with a GIF once stored.
    let pixel = format!(
        "{}/pixel/v1/page?writeKey={WRITE_KEY}&anonymousId=anon_2&name=Pricing&context.page.url=https%3A%2F%2Fapp.example%2Fpricing&properties.plan=team",
        server.url
    );
    let response = server.client.get(pixel).send().await.unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["content-type"], "image/gif");
    assert!(response.bytes().await.unwrap().starts_with(b"GIF89a"));
    let response = server.client.get(format!("{}/pixel/v1/track?writeKey=nope&anonymousId=a&event=x", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    // Each dot nests: a name with thousands of them is refused before anything is built.
    let deep = format!("{}/pixel/v1/track?anonymousId=a&event=x&properties{}=1", server.url, ".a".repeat(5000));
    let response = server.client.get(deep).send().await.unwrap();
    assert_eq!(response.status(), 400);
    assert!(response.text().await.unwrap().contains("nests deeper than 32 levels"));
    // HEAD (link checkers, prefetchers) would be answered as a GET: refused, nothing stored.
    let head = server.client.head(format!("{}/pixel/v1/page?writeKey={WRITE_KEY}&anonymousId=anon_3", server.url)).send().await.unwrap();
    assert_eq!(head.status(), 405);
    let events = server.events("").await;
    let page = events.iter().find(|e| e["type"] == "page").expect("the pixel's page event");
    assert_eq!((&page["anonymous_id"], &page["name"]), (&json!("anon_2"), &json!("Pricing")));
    assert_eq!(page["context"]["page"]["url"], "https://app.example/pricing");
    assert_eq!(page["properties"], json!({"plan": "team"}));
    assert_eq!(events.len(), 6);
    assert!(events.iter().any(|e| e["event"] == "flow_executed" && e["anonymous_id"] == "anon_1"), "{events:?}");
    assert!(events.iter().any(|e| e["type"] == "identify" && e["user_id"] == "u2"), "{events:?}");
}

#[tokio::test]
async fn a_batch_keeps_valid_events_and_quarantines_the_rest() {
    let server = TestServer::start_with(|c| {
        c.limits.max_event_bytes = 2000;
        c.limits.max_properties = 20;
        c.limits.max_depth = 4;
    })
    .await;
    let mut too_many = event("tool_used", "u");
    for i in 0..30 {
        too_many["properties"][format!("p{i}")] = json!(i);
    }
    let batch = json!({"api_key": TOKEN, "batch": [
        event("flow_executed", "user_1"),
        {"event": "agent_error", "properties": {"agent_id": "ag_1"}},
        event("agent_execution", "user_2"),
        {"event": "rag_query_triggered", "distinct_id": "u", "properties": {"blob": "x".repeat(3000)}},
        too_many,
        {"event": "tool_used", "distinct_id": "u", "properties": {"a": {"b": {"c": {"d": {"e": 1}}}}}},
    ]});
    let (status, text) = post(&server, "/batch/", batch.to_string().into_bytes(), &[]).await;
    assert_eq!(status, 200, "{text}");
    let stored = server.events("").await;
    let names: Vec<&str> = stored.iter().map(|e| e["event"].as_str().unwrap()).collect();
    assert_eq!(names, ["agent_execution", "flow_executed"], "newest first");
    let quarantine = server.quarantine().await;
    let mut reasons: Vec<&str> = quarantine.iter().map(|q| q["reason"].as_str().unwrap()).collect();
    reasons.sort();
    assert_eq!(reasons, ["event_too_large", "missing_distinct_id", "too_deep", "too_many_properties"]);
    let missing = quarantine.iter().find(|q| q["reason"] == "missing_distinct_id").unwrap();
    assert_eq!(missing["raw"]["properties"]["agent_id"], "ag_1", "the raw event is kept");
    assert!(missing["detail"].as_str().unwrap().contains("event 1"), "{missing}");

    // Segment: same rule.
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:")));
    let batch = json!({"batch": [
        {"type": "track", "userId": "u", "event": "tool_used"},
        {"type": "track", "event": "tool_used"},
    ]});
    let (status, _) = post(&server, "/v1/batch", batch.to_string().into_bytes(), &[("authorization", &basic)]).await;
    assert_eq!(status, 200);
    assert_eq!(server.quarantine().await.len(), 5);
    let metrics = server.metrics().await;
    assert!(metrics.contains("switchyard_events_quarantined_total{reason=\"missing_distinct_id\"} 2"), "{metrics}");
    // Two requests one after the other: two commits, holding 6 + 2 events (valid and quarantined).
    assert!(metrics.contains("switchyard_log_transaction_events_count 2\n"), "{metrics}");
    assert!(metrics.contains("switchyard_log_transaction_events_sum 8.0\n"), "{metrics}");
}

#[tokio::test]
async fn oversized_requests_and_decompression_bombs_get_413() {
    let server = TestServer::start_with(|c| {
        c.limits.max_request_bytes = 64 * 1024;
        c.limits.max_decompressed_bytes = 256 * 1024;
    })
    .await;
    let big = json!({"api_key": TOKEN, "batch": [{"event": "x", "distinct_id": "u", "properties": {"blob": "y".repeat(100_000)}}]});
    let (status, text) = post(&server, "/batch/", big.to_string().into_bytes(), &[]).await;
    assert_eq!(status, 413);
    assert_eq!(posthog_error(&text).0, "request_too_large");

    let bomb = gzip(&vec![b' '; 10 * 1024 * 1024]);
    assert!(bomb.len() < 64 * 1024);
    let (status, text) = post(&server, "/batch/", bomb.clone(), &[]).await;
    assert_eq!(status, 413);
    assert!(posthog_error(&text).1.contains("decompressed payload exceeds"));
    let basic = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(format!("{WRITE_KEY}:")));
    let (status, text) = post(&server, "/v1/batch", bomb, &[("authorization", &basic), ("content-encoding", "gzip")]).await;
    assert_eq!(status, 413, "{text}");
}

#[tokio::test]
async fn a_full_log_answers_503_with_retry_after_and_keeps_what_it_acknowledged() {
    let server = TestServer::start_with(|c| c.log.max_size_bytes = Some(512 * 1024)).await;
    let mut acknowledged = Vec::new();
    let mut refused = false;
    for i in 0..400 {
        let batch: Vec<Value> = (0..10)
            .map(|j| {
                let id = uuid::Uuid::new_v4().to_string();
                json!({"event": "agent_execution", "distinct_id": "u", "uuid": id, "properties": {"pad": "z".repeat(500), "i": i, "j": j}})
            })
            .collect();
        let ids: Vec<String> = batch.iter().map(|e| e["uuid"].as_str().unwrap().to_owned()).collect();
        let response = server
            .client
            .post(format!("{}/batch/", server.url))
            .json(&json!({"api_key": TOKEN, "batch": batch}))
            .send()
            .await
            .unwrap();
        match response.status().as_u16() {
            200 => acknowledged.extend(ids),
            503 => {
                assert!(response.headers().get("retry-after").is_some());
                let body: Value = response.json().await.unwrap();
                assert!(body["error"].as_str().unwrap().contains("full"), "{body}");
                assert_eq!((&body["type"], &body["code"], &body["detail"]), (&json!("server_error"), &json!("service_unavailable"), &body["error"]));
                refused = true;
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused, "the log never filled up");
    let stored: Vec<String> = server.events("").await.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
    for id in &acknowledged {
        assert!(stored.contains(id), "acknowledged event {id} lost");
    }
    assert_eq!(stored.len(), acknowledged.len());
}

#[tokio::test]
async fn one_projects_keys_never_reach_another_projects_data() {
    let server = TestServer::start().await;
    let other = server.state.control.create_project("other").unwrap();
    server.state.control.add_key(other, KeyKind::ProjectToken, "phc_other").unwrap();
    server.state.control.add_key(other, KeyKind::SecretKey, "phs_other").unwrap();
    for (token, name) in [(TOKEN, "mine"), ("phc_other", "theirs")] {
        let (status, _) = post(&server, "/capture/", json!({"api_key": token, "event": name, "distinct_id": "u"}).to_string().into_bytes(), &[]).await;
        assert_eq!(status, 200);
    }
    let mine = server.events("").await;
    assert_eq!(mine.len(), 1);
    assert_eq!(mine[0]["event"], "mine");
    let get = |project: String, key: &'static str| {
        let client = server.client.clone();
        let url = format!("{}/api/projects/{project}/events/", server.url);
        async move { client.get(url).bearer_auth(key).send().await.unwrap() }
    };
    let theirs: Value = get("@current".into(), "phs_other").await.json().await.unwrap();
    assert_eq!(theirs["results"].as_array().unwrap().len(), 1);
    assert_eq!(theirs["results"][0]["event"], "theirs");
    assert_eq!(get(format!("{other}"), "phs_other").await.status(), 200);
    assert_eq!(get("1".into(), "phs_other").await.status(), 403);
    assert_eq!(get("@current".into(), "phc_other").await.status(), 401, "a public token cannot read");
    let response = server.client.get(format!("{}/api/projects/@current/events/", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 401);
    let _ = SECRET;
}

#[tokio::test]
async fn a_body_that_cannot_be_read_gets_an_answer_sdks_retry() {
    let server = TestServer::start().await;
    let addr = server.url.trim_start_matches("http://").to_owned();
    // Bad chunking mid-body: the transfer failed, not the data; a 413 would make SDKs drop it.
    for (path, status) in [("/batch/", "408"), ("/v1/batch", "500")] {
        let addr = addr.clone();
        let answer = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut stream = std::net::TcpStream::connect(&addr).unwrap();
            stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
            let request = format!(
                "POST {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n5\r\n{{\"bat\r\nzz\r\n"
            );
            stream.write_all(request.as_bytes()).unwrap();
            let mut answer = Vec::new();
            stream.read_to_end(&mut answer).unwrap();
            String::from_utf8_lossy(&answer).into_owned()
        })
        .await
        .unwrap();
        assert!(answer.starts_with(&format!("HTTP/1.1 {status}")), "{path}: {answer}");
        assert!(answer.contains("could not be read"), "{answer}");
    }
    assert!(server.events("").await.is_empty());
    assert!(server.metrics().await.contains("switchyard_events_rejected_total{reason=\"body_read_error\"} 2"));
}

#[tokio::test]
async fn an_oversize_quarantined_event_keeps_its_first_bytes_size_and_hash() {
    let server = TestServer::start_with(|c| {
        c.limits.max_event_bytes = 4000;
        c.log.quarantine_raw_bytes = 1000;
    })
    .await;
    let batch = json!({"api_key": TOKEN, "batch": [
        event("flow_executed", "user_1"),
        {"event": "rag_query_triggered", "distinct_id": "u", "properties": {"blob": "x".repeat(100_000)}},
    ]});
    let (status, text) = post(&server, "/batch/", batch.to_string().into_bytes(), &[]).await;
    assert_eq!(status, 200, "{text}");
    let quarantine = server.quarantine().await;
    let entry = &quarantine[0];
    assert_eq!(entry["reason"], "event_too_large");
    assert_eq!(entry["raw_truncated"], true, "{entry}");
    let raw = entry["raw"].as_str().unwrap();
    assert_eq!(raw.len(), 1000);
    assert!(raw.contains("rag_query_triggered"), "{raw}");
    assert!(entry["raw_size"].as_u64().unwrap() > 100_000, "{entry}");
    assert_eq!(entry["raw_sha256"].as_str().unwrap().len(), 64);
}

#[tokio::test]
async fn listing_pages_stop_at_their_byte_cap_and_link_the_rest() {
    let server = TestServer::start().await;
    // Ten events of ~1 MB: past one page's 8 MiB.
    let batch: Vec<Value> = (0..10)
        .map(|i| json!({"event": "big", "distinct_id": "u", "properties": {"i": i, "blob": "b".repeat(1_000_000)}}))
        .collect();
    let (status, text) = post(&server, "/batch/", json!({"api_key": TOKEN, "batch": batch}).to_string().into_bytes(), &[]).await;
    assert_eq!(status, 200, "{text}");
    let page = |path: String| {
        let client = server.client.clone();
        async move { client.get(path).bearer_auth(SECRET).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    let first = page(format!("{}/api/projects/@current/events/?limit=100", server.url)).await;
    let count = first["results"].as_array().unwrap().len();
    assert!((1..10).contains(&count), "{count} events of ~1 MB in one page");
    let next = first["next"].as_str().expect("a link to the rest");
    let rest = page(format!("{}{next}", server.url)).await;
    assert_eq!(count + rest["results"].as_array().unwrap().len(), 10);
    assert!(rest["next"].is_null());
}

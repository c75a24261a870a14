//! Replays every request recorded from the official SDKs (tests/data/sdk-requests, copied from
//! the shared fixtures) and checks the stored unified events field by field against
//! `expected-events.json` (regenerate with `UPDATE_GOLDEN=1`, then review the diff), plus
//! explicit checks of the mappings that matter most.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};
use switchyard_event::model::parse_time;
use switchyard_store::KeyKind;

use crate::{Recorded, TestServer};

fn data_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/data/sdk-requests")
}

fn recorded_requests() -> Vec<Recorded> {
    let recorded = crate::recordings(&data_dir());
    let files: std::collections::BTreeSet<&str> = recorded.iter().map(|r| r.file.as_str()).collect();
    assert_eq!(files.len(), 6, "every SDK's recording is replayed");
    recorded
}

/// The parts of a stored event that do not depend on when the test ran: `received_at` is
/// dropped, and a timestamp derived from it is kept as its offset from `received_at`.
fn stable_form(event: &Value) -> Value {
    let mut event = event.clone();
    let map = event.as_object_mut().unwrap();
    let received = parse_time(map.remove("received_at").unwrap().as_str().unwrap()).unwrap();
    let timestamp = parse_time(map["timestamp"].as_str().unwrap()).unwrap();
    let original = map.get("original_timestamp").and_then(Value::as_str).and_then(parse_time);
    if original != Some(timestamp) {
        map.remove("timestamp");
        map.insert("timestamp_offset_ms".into(), json!((timestamp - received).num_milliseconds()));
    }
    event
}

/// Sends every recorded request to `server`, asserting each is accepted.
async fn replay_all(server: &TestServer) {
    for r in recorded_requests() {
        let method = reqwest::Method::from_bytes(r.method.as_bytes()).unwrap();
        let mut request = server.client.request(method, format!("{}{}", server.url, r.path));
        for (k, v) in &r.headers {
            request = request.header(k, v);
        }
        if r.method != "GET" {
            request = request.body(r.body.clone());
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        assert!(status.is_success(), "{} {} {}: {status} {text}", r.file, r.method, r.path);
        if r.path.starts_with("/array/") {
            let config: Value = serde_json::from_str(&text).unwrap();
            assert_eq!(config["supportedCompression"], json!(["gzip", "gzip-js"]));
        }
    }

}

#[tokio::test]
async fn sdk_recordings_are_stored_as_expected() {
    let server = TestServer::start().await;
    // Segment's recording used its own write key: register it for the same project.
    let project = server.state.control.lookup(KeyKind::WriteKey, crate::WRITE_KEY).unwrap();
    server.state.control.add_key(project, KeyKind::WriteKey, "seg_write_key").unwrap();

    replay_all(&server).await;

    let events = server.events("").await;
    let mut actual = BTreeMap::new();
    for event in &events {
        assert_eq!(event["project_id"], project);
        actual.insert(event["id"].as_str().unwrap().to_owned(), stable_form(event));
    }
    assert_eq!(actual.len(), events.len(), "event ids are unique");

    let golden_path = data_dir().join("expected-events.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&golden_path, serde_json::to_string_pretty(&actual).unwrap() + "\n").unwrap();
    }
    let expected: BTreeMap<String, Value> =
        serde_json::from_str(&std::fs::read_to_string(&golden_path).unwrap()).unwrap();
    assert_eq!(
        expected.keys().collect::<Vec<_>>(),
        actual.keys().collect::<Vec<_>>(),
        "the same events, by id"
    );
    for (id, expected_event) in &expected {
        let actual_event = &actual[id];
        for (field, value) in expected_event.as_object().unwrap() {
            assert_eq!(&actual_event[field], value, "event {id}, field {field}");
        }
        assert_eq!(
            expected_event.as_object().unwrap().len(),
            actual_event.as_object().unwrap().len(),
            "event {id}: same fields\nexpected {expected_event}\nactual {actual_event}"
        );
    }

    // Explicit checks of the mappings, independent of the golden file.
    let by_id = |id: &str| events.iter().find(|e| e["id"] == id).unwrap_or_else(|| panic!("event {id} stored"));
    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    // posthog-python: a catalog event, trace id and groups; `$set`; python's alias direction.
    let flow = by_id("e25c5868-1bc6-4919-b972-18670c371e49");
    assert_eq!((flow["type"].as_str(), flow["event"].as_str()), (Some("track"), Some("flow_executed")));
    assert_eq!(flow["distinct_id"], "user_42");
    assert_eq!(flow["trace_id"], TRACE);
    assert_eq!(flow["properties"]["duration_ms"], 1234);
    assert_eq!(flow["groups"], json!({"workspace": "ws_1", "organization": "org_1"}));
    // python sends `sentAt` (camelCase) at the batch level: skew correction applies.
    assert_eq!(flow["sent_at"], "2026-11-25T12:08:21.829969Z");
    let set = by_id("68022e00-d6b7-457e-be6d-a17809396d59");
    assert_eq!(set["type"], "identify");
    assert_eq!(set["traits"], json!({"email": "a@example.com", "plan": "pro"}));
    let alias = by_id("5430f905-cfa9-4c64-8abb-58d3d1f6cb85");
    assert_eq!((alias["distinct_id"].as_str(), alias["previous_id"].as_str()), (Some("anon_1"), Some("user_42")));
    let group = by_id("5fcf9b40-0b85-47d1-8206-1f506cf53941");
    assert_eq!(group["type"], "group");
    assert_eq!((group["group_type"].as_str(), group["group_id"].as_str()), (Some("workspace"), Some("ws_1")));
    assert_eq!(group["traits"], json!({"name": "Acme", "seats": 12}));

    // posthog-node: `$set` inside properties; node's alias direction.
    let identify = by_id("01a2129b-6935-7737-bf0a-c68d1b937f82");
    assert_eq!(identify["traits"], json!({"email": "a@example.com"}));
    assert!(identify["properties"].get("$set").is_none());
    let alias = by_id("01a2129b-6935-7737-bf0a-c68f2d4e23f7");
    assert_eq!((alias["distinct_id"].as_str(), alias["previous_id"].as_str()), (Some("user_42"), Some("anon_1")));
    let blocked = by_id("01a2129b-6935-7737-bf0a-c68c7251059a");
    assert_eq!(blocked["properties"]["score"], 0.93);

    // posthog-js: gzip sent as text/plain; $identify with $anon_distinct_id and top-level $set.
    let js_identify = by_id("01a212a3-5faa-741f-88dd-631303aecaba");
    assert_eq!(js_identify["type"], "identify");
    assert_eq!(js_identify["anonymous_id"], "01a212a3-5f98-75f9-8a84-3489143336fc");
    assert_eq!(js_identify["traits"]["email"], "a@example.com");
    assert_eq!(js_identify["traits_set_once"]["$initial_referrer"], "$direct");
    let pageview = by_id("01a212a3-5ffa-7f20-97f9-4021e9880b06");
    assert_eq!(pageview["type"], "page");
    let js_flow = by_id("01a212a3-5fec-724c-a88c-077a54f4431a");
    assert_eq!(js_flow["trace_id"], TRACE);

    // rudder-sdk-node: gzipped JSON labelled as a form; originalTimestamp corrected by sentAt.
    let created = by_id("0d0b1253-61c0-4e8a-9107-131321ccd0d9");
    assert_eq!((created["protocol"].as_str(), created["event"].as_str()), (Some("segment"), Some("agent_created")));
    assert_eq!(created["trace_id"], TRACE);
    assert_eq!(created["user_id"], "user_42");
    let received = parse_time(created["received_at"].as_str().unwrap()).unwrap();
    let timestamp = parse_time(created["timestamp"].as_str().unwrap()).unwrap();
    assert_eq!((timestamp - received).num_milliseconds(), -32, "receivedAt - (sentAt - originalTimestamp)");
    let page = by_id("3b8979a2-c16d-46e2-b75d-ed1238be686a");
    assert_eq!((page["type"].as_str(), page["name"].as_str(), page["category"].as_str()), (Some("page"), Some("Start"), Some("Docs")));
    let rudder_alias = by_id("03b0232e-f11c-4f5e-9b1b-ec68b581543b");
    assert_eq!(rudder_alias["previous_id"], "anon_1");

    // rudder-sdk-python: identify traits only in context.traits; client `timestamp` kept.
    let py_identify = by_id("0c77e31a-6f5c-4da0-be29-36bace5fe072");
    assert_eq!(py_identify["traits"], json!({"email": "a@example.com", "plan": "pro"}));
    assert_eq!(py_identify["timestamp"], "2026-11-25T12:08:22.711488Z");
    let py_group = by_id("1242eddd-4606-4f7c-870d-b37fe2af9205");
    assert_eq!((py_group["group_id"].as_str(), py_group["traits"]["name"].as_str()), (Some("ws_1"), Some("Acme")));

    // @segment/analytics-node: body writeKey plus Basic auth; non-UUID messageId kept.
    let error = by_id("node-next-1795608506446-9849a9a4-6f4e-499c-be25-e6f626f55655");
    assert_eq!(error["event"], "agent_error");
    assert_eq!(error["properties"]["error_type"], "timeout");
    assert_eq!(error["timestamp"], "2026-11-25T12:08:26.446000Z");

    // Filters of the events API.
    let traced = server.events(&format!("trace_id={TRACE}")).await;
    assert!(traced.iter().all(|e| e["trace_id"] == TRACE));
    assert_eq!(traced.len(), events.iter().filter(|e| e["trace_id"] == TRACE).count());
    let identifies = server.events("event=%24identify").await;
    assert!(identifies.len() >= 4 && identifies.iter().all(|e| e["event"] == "$identify"));
    let metrics = server.metrics().await;
    assert!(metrics.contains(&format!("switchyard_events_logged_total{{protocol=\"segment\"}} {}",
        events.iter().filter(|e| e["protocol"] == "segment").count())), "{metrics}");
}

/// Fields the receiving side sets itself, or that a forwarder cannot carry in the receiver's
/// protocol (see docs/routing.md, "What a forwarded event keeps").
fn forwarded_form(event: &Value, ignored: &[&str]) -> Value {
    let mut event = event.clone();
    let map = event.as_object_mut().unwrap();
    for field in ["received_at", "request_ip", "protocol"].iter().chain(ignored) {
        map.remove(*field);
    }
    map.retain(|_, v| !v.is_null() && *v != json!({}));
    event
}

#[tokio::test]
async fn sdk_events_forwarded_to_a_second_switchyard_arrive_equal() {
    // Switchyard A takes the SDKs' requests and forwards every event to three other
    // Switchyards: one as an upstream PostHog, one as RudderStack, one as Segment.
    let as_posthog = TestServer::start().await;
    let as_rudderstack = TestServer::start().await;
    let as_segment = TestServer::start().await;
    // A receiver slowed by the tests beside this one must not time out into a retry: that
    // would store an event twice there, as upstream PostHog would without its dedup.
    let a = TestServer::start_with(|c| {
        crate::routing::quick(c);
        c.routing.request_timeout_secs = 30;
    })
    .await;
    let project = a.state.control.lookup(KeyKind::WriteKey, crate::WRITE_KEY).unwrap();
    a.state.control.add_key(project, KeyKind::WriteKey, "seg_write_key").unwrap();
    for (name, body) in [
        ("posthog", json!({"host": as_posthog.url, "project_token": crate::TOKEN})),
        ("rudderstack", json!({"url": as_rudderstack.url, "write_key": crate::WRITE_KEY})),
        ("segment", json!({"url": as_segment.url, "write_key": crate::WRITE_KEY})),
    ] {
        let (status, created) = crate::routing::create(&a, json!({"name": name, "type": name, "config": body})).await;
        assert_eq!(status, 201, "{created}");
    }
    replay_all(&a).await;
    let sent = a.events("").await;
    assert!(sent.len() > 20, "{} events", sent.len());

    for (receiver, ignored) in [
        // PostHog's own exporter sends no `sent_at`, and one `timestamp`.
        (&as_posthog, &["sent_at", "original_timestamp"][..]),
        // `sentAt` is the real send time.
        (&as_rudderstack, &["sent_at"][..]),
        (&as_segment, &["sent_at"][..]),
    ] {
        crate::wait_until("every event is forwarded", async || receiver.events("").await.len() >= sent.len()).await;
        let arrived = receiver.events("").await;
        assert_eq!(arrived.len(), sent.len(), "each event once");
        for original in &sent {
            let id = original["id"].as_str().unwrap();
            // PostHog takes only UUIDs: another id arrives as a UUID derived from it.
            let forwarded_id = if std::ptr::eq(receiver, &as_posthog) { switchyard_pipeline::wire::posthog_uuid(id).into_owned() } else { id.to_owned() };
            let copy = arrived.iter().find(|e| e["id"] == forwarded_id.as_str()).unwrap_or_else(|| panic!("{} has event {id}", receiver.url));
            let (mut expected, mut actual) = (forwarded_form(original, ignored), forwarded_form(copy, ignored));
            expected["id"] = json!(forwarded_id);
            if std::ptr::eq(receiver, &as_posthog) && original["properties"].get("$ip").is_none() {
                // The client's address goes as `$ip`, as PostHog's exporter sends it.
                assert_eq!(copy["properties"]["$ip"], original["request_ip"], "event {id}: $ip");
                let properties = actual["properties"].as_object_mut().unwrap();
                properties.remove("$ip");
                if properties.is_empty() {
                    actual.as_object_mut().unwrap().remove("properties");
                }
            }
            for (field, value) in expected.as_object().unwrap() {
                assert_eq!(&actual[field], value, "event {id} ({}), field {field}\nsent {original}\narrived {copy}", original["protocol"]);
            }
            assert_eq!(
                expected.as_object().unwrap().keys().collect::<Vec<_>>(),
                actual.as_object().unwrap().keys().collect::<Vec<_>>(),
                "event {id}: same fields\nsent {original}\narrived {copy}"
            );
        }
    }
}

use std::time::Duration;

use serde_json::{json, Value};

use super::rules::{glob_match, sample_keeps};
use super::*;

fn event(name: &str, distinct_id: &str, properties: Value) -> Value {
    json!({
        "id": format!("id-{name}-{distinct_id}"),
        "project_id": 7,
        "protocol": "posthog",
        "type": "track",
        "event": name,
        "distinct_id": distinct_id,
        "user_id": null,
        "anonymous_id": null,
        "properties": properties,
        "traits": {},
        "context": {},
        "timestamp": "2024-05-01T10:00:00.000Z",
        "received_at": "2024-05-01T10:00:01.000Z",
        "trace_id": null,
    })
}

fn chain(specs: Value) -> Transformations {
    let specs = specs.as_array().expect("array").clone();
    Transformations::compile(&specs, JsLimits::default()).expect("compiles")
}

fn compile_error(specs: Value) -> InvalidField {
    let specs = specs.as_array().expect("array").clone();
    Transformations::compile(&specs, JsLimits::default()).expect_err("must be refused")
}

fn one(t: &mut Transformations, e: Value) -> Transformed {
    let mut out = t.apply(vec![e], "dest-1");
    assert_eq!(out.len(), 1);
    out.remove(0)
}

fn single(t: &mut Transformations, e: Value) -> Value {
    match one(t, e).outcome {
        Outcome::Events(mut events) if events.len() == 1 => events.remove(0),
        other => panic!("expected one event, got {other:?}"),
    }
}

fn js(code: &str) -> Transformations {
    chain(json!([{ "type": "javascript", "code": code }]))
}

fn failed(t: Transformed) -> String {
    match t.outcome {
        Outcome::Failed(reason) => reason,
        other => panic!("expected a failure, got {other:?}"),
    }
}

#[test]
fn globs() {
    assert!(glob_match("flow_*", "flow_started"));
    assert!(glob_match("flow_*", "flow_"));
    assert!(!glob_match("flow_*", "flo"));
    assert!(glob_match("*_used", "tool_used"));
    assert!(glob_match("a*b*c", "axxbyyc"));
    assert!(!glob_match("a*b*c", "axxbyy"));
    assert!(glob_match("t?ol", "tool"));
    assert!(glob_match("t?ol", "tñol"));
    assert!(!glob_match("t?ol", "tol"));
    assert!(glob_match("*", ""));
    assert!(glob_match("**x", "abx"));
    assert!(!glob_match("exact", "exactly"));
}

#[test]
fn empty_chain_passes_events_through() {
    let mut t = chain(json!([]));
    assert!(t.is_empty());
    let e = event("a", "u1", json!({}));
    assert_eq!(single(&mut t, e.clone()), e);
}

#[test]
fn keep_and_drop_events_by_name_and_type() {
    let mut t = chain(json!([{ "type": "keep_events", "events": ["flow_*", "tool_used"] }]));
    assert!(!t.is_empty());
    let out = t.apply(vec![event("flow_start", "u", json!({})), event("tool_used", "u", json!({})), event("other", "u", json!({}))], "d");
    assert!(matches!(out[0].outcome, Outcome::Events(_)));
    assert!(matches!(out[1].outcome, Outcome::Events(_)));
    assert_eq!(out[2].outcome, Outcome::Dropped);

    let mut t = chain(json!([{ "type": "drop_events", "events": ["$pageview", "debug_*"] }]));
    assert_eq!(one(&mut t, event("debug_x", "u", json!({}))).outcome, Outcome::Dropped);
    assert!(matches!(one(&mut t, event("buy", "u", json!({}))).outcome, Outcome::Events(_)));

    let mut identify = event("$identify", "u", json!({}));
    identify["type"] = json!("identify");
    let mut t = chain(json!([{ "type": "keep_types", "types": ["track"] }]));
    assert_eq!(one(&mut t, identify.clone()).outcome, Outcome::Dropped);
    assert!(matches!(one(&mut t, event("buy", "u", json!({}))).outcome, Outcome::Events(_)));
    let mut t = chain(json!([{ "type": "drop_types", "types": ["identify"] }]));
    assert_eq!(one(&mut t, identify).outcome, Outcome::Dropped);
}

#[test]
fn drop_where_uses_posthog_property_filters() {
    let mut t = chain(json!([{ "type": "drop_where", "properties": [
        { "key": "$browser", "operator": "exact", "value": ["HeadlessChrome"], "type": "event" },
        { "key": "plan", "operator": "is_not", "value": "enterprise" },
    ]}]));
    // Both match: dropped.
    assert_eq!(one(&mut t, event("a", "u", json!({ "$browser": "headlesschrome", "plan": "free" }))).outcome, Outcome::Dropped);
    // Only one matches: kept.
    assert!(matches!(one(&mut t, event("a", "u", json!({ "$browser": "HeadlessChrome", "plan": "enterprise" }))).outcome, Outcome::Events(_)));
    assert!(matches!(one(&mut t, event("a", "u", json!({ "$browser": "Firefox" }))).outcome, Outcome::Events(_)));

    let mut t = chain(json!([{ "type": "drop_where", "properties": [{ "key": "amount", "operator": "gt", "value": 100 }] }]));
    assert_eq!(one(&mut t, event("a", "u", json!({ "amount": "150" }))).outcome, Outcome::Dropped);
    assert!(matches!(one(&mut t, event("a", "u", json!({ "amount": 50 }))).outcome, Outcome::Events(_)));

    let mut t = chain(
        json!([{ "type": "drop_where", "properties": [{ "key": "email", "operator": "icontains", "value": "@internal.example", "type": "person" }] }]),
    );
    let mut e = event("a", "u", json!({}));
    e["traits"] = json!({ "email": "Bob@Internal.Example" });
    assert_eq!(one(&mut t, e).outcome, Outcome::Dropped);
}

#[test]
fn property_edits() {
    let mut t = chain(json!([
        { "type": "rename_event", "from": "old", "to": "new" },
        { "type": "set_property", "key": "source", "value": { "via": "switchyard" } },
        { "type": "rename_property", "from": "userEmail", "to": "email" },
        { "type": "remove_property", "key": "secret" },
        { "type": "set_property", "key": "context.app.name", "value": "web" },
        { "type": "remove_property", "key": "context.ip" },
        { "type": "set_property", "key": "utm.source", "value": 1 },
    ]));
    let mut e = event("old", "u", json!({ "userEmail": "a@b.co", "secret": "x", "keep": true }));
    e["context"] = json!({ "ip": "1.2.3.4" });
    let out = single(&mut t, e);
    assert_eq!(out["event"], "new");
    assert_eq!(out["properties"], json!({ "email": "a@b.co", "keep": true, "source": { "via": "switchyard" }, "utm.source": 1 }));
    assert_eq!(out["context"], json!({ "app": { "name": "web" } }));
    // Other names are left alone; missing properties are not created by a rename.
    let out = single(&mut t, event("other", "u", json!({})));
    assert_eq!(out["event"], "other");
    assert!(out["properties"].get("email").is_none());
}

#[test]
fn hash_property_is_salted_sha256_hex() {
    let mut t = chain(json!([
        { "type": "hash_property", "key": "email", "salt": "pepper" },
        { "type": "hash_property", "key": "age", "salt": "" },
        { "type": "hash_property", "key": "traits.email" },
    ]));
    let mut e = event("a", "u", json!({ "email": "a@b.co", "age": 42 }));
    e["traits"] = json!({ "email": "abc" });
    let out = single(&mut t, e);
    assert_eq!(out["properties"]["email"], sha256_hex("peppera@b.co"));
    assert_eq!(out["properties"]["age"], sha256_hex("42"));
    // Well-known vector: sha256("abc").
    assert_eq!(out["traits"]["email"], "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

fn sha256_hex(text: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(text.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn redact_replaces_matches_in_strings() {
    let mut t = chain(json!([{ "type": "redact", "preset": "email" }]));
    let out = single(&mut t, event("a", "u", json!({ "note": "write to bob@example.com or ann@x.org", "n": 3, "nested": { "list": ["c@d.io"] } })));
    assert_eq!(out["properties"]["note"], "write to [redacted] or [redacted]");
    assert_eq!(out["properties"]["n"], 3);
    assert_eq!(out["properties"]["nested"]["list"][0], "[redacted]");

    let mut t = chain(json!([{ "type": "redact", "pattern": "\\d{4}-\\d{4}", "replacement": "$0-XXXX", "keys": ["card"] }]));
    let out = single(&mut t, event("a", "u", json!({ "card": "pay 1234-5678", "other": "1234-5678" })));
    assert_eq!(out["properties"]["card"], "pay $0-XXXX", "the replacement is literal");
    assert_eq!(out["properties"]["other"], "1234-5678", "only the keys given");
}

#[test]
fn sample_is_deterministic_by_distinct_id() {
    let mut t = chain(json!([{ "type": "sample", "percentage": 25 }]));
    let events: Vec<Value> = (0..4000).map(|i| event("a", &format!("user-{i}"), json!({}))).collect();
    let first: Vec<bool> = t.apply(events.clone(), "d").into_iter().map(|r| matches!(r.outcome, Outcome::Events(_))).collect();
    let second: Vec<bool> = t.apply(events, "d").into_iter().map(|r| matches!(r.outcome, Outcome::Events(_))).collect();
    assert_eq!(first, second);
    let kept = first.iter().filter(|k| **k).count();
    assert!((800..1200).contains(&kept), "about 25% kept, got {kept}");
    // A smaller percentage keeps a subset.
    for i in 0..1000 {
        let id = format!("user-{i}");
        if sample_keeps(&id, 0.10) {
            assert!(sample_keeps(&id, 0.25));
        }
    }
    assert!(sample_keeps("x", 1.0));
    assert!(!sample_keeps("x", 0.0));
}

#[test]
fn bad_specs_name_their_field() {
    let cases = [
        (json!([{ "type": "nope" }]), "transformations[0].type"),
        (json!([{ "events": ["a"] }]), "transformations[0].type"),
        (json!([{ "type": "keep_events" }, 1]), "transformations[0].events"),
        (json!([{ "type": "keep_events", "events": ["a"] }, 1]), "transformations[1]"),
        (json!([{ "type": "keep_events", "events": "a" }]), "transformations[0].events"),
        (json!([{ "type": "keep_events", "events": ["a", 2] }]), "transformations[0].events[1]"),
        (json!([{ "type": "keep_events", "event": ["a"] }]), "transformations[0].event"),
        (json!([{ "type": "keep_types", "types": ["click"] }]), "transformations[0].types[0]"),
        (json!([{ "type": "drop_where", "properties": [{ "key": "a", "operator": "bogus", "value": 1 }] }]), "transformations[0].properties[0]"),
        (json!([{ "type": "drop_where", "properties": [{ "key": "a", "operator": "gt", "value": "x" }] }]), "transformations[0].properties[0]"),
        (json!([{ "type": "drop_where", "properties": [] }]), "transformations[0].properties"),
        (json!([{ "type": "rename_event", "from": "a" }]), "transformations[0].to"),
        (json!([{ "type": "set_property", "key": "a" }]), "transformations[0].value"),
        (json!([{ "type": "hash_property", "key": "a", "salt": 3 }]), "transformations[0].salt"),
        (json!([{ "type": "redact", "pattern": "(" }]), "transformations[0].pattern"),
        (json!([{ "type": "redact" }]), "transformations[0].pattern"),
        (json!([{ "type": "redact", "preset": "phone" }]), "transformations[0].preset"),
        (json!([{ "type": "redact", "preset": "email", "keys": [""] }]), "transformations[0].keys[0]"),
        (json!([{ "type": "sample", "percentage": 150 }]), "transformations[0].percentage"),
        (json!([{ "type": "javascript" }]), "transformations[0].code"),
        (json!([{ "type": "javascript", "code": "export function transformEvent(e) { return e" }]), "transformations[0].code"),
    ];
    for (specs, field) in cases {
        let error = compile_error(specs.clone());
        assert_eq!(error.field, field, "{specs}: {}", error.message);
        assert!(!error.message.is_empty());
    }
}

#[test]
fn filter_matches_events_types_and_properties() {
    let everything = Filter::compile(&json!({})).unwrap();
    assert!(everything.is_empty());
    assert!(everything.matches(&event("x", "u", json!({}))));
    assert!(Filter::compile(&Value::Null).unwrap().matches(&event("x", "u", json!({}))));

    let filter = Filter::compile(&json!({
        "events": ["checkout_*", "signup"],
        "types": ["track"],
        "properties": [{ "key": "country", "operator": "exact", "value": ["DE", "FR"] }],
    }))
    .unwrap();
    assert!(filter.matches(&event("checkout_done", "u", json!({ "country": "de" }))));
    assert!(!filter.matches(&event("checkout_done", "u", json!({ "country": "US" }))));
    assert!(!filter.matches(&event("login", "u", json!({ "country": "DE" }))));
    let mut page = event("signup", "u", json!({ "country": "DE" }));
    page["type"] = json!("page");
    assert!(!filter.matches(&page));

    for (bad, field) in [
        (json!({ "event": ["a"] }), "filter.event"),
        (json!({ "events": "a" }), "filter.events"),
        (json!({ "types": ["nope"] }), "filter.types[0]"),
        (json!({ "properties": [{ "key": "a", "operator": "lt", "value": "b" }] }), "filter.properties[0]"),
        (json!(3), "filter"),
    ] {
        assert_eq!(Filter::compile(&bad).unwrap_err().field, field);
    }
}

#[test]
fn rules_run_in_order() {
    let mut t = chain(json!([
        { "type": "rename_event", "from": "a", "to": "b" },
        { "type": "keep_events", "events": ["b"] },
    ]));
    assert_eq!(single(&mut t, event("a", "u", json!({})))["event"], "b");
    let mut t = chain(json!([
        { "type": "keep_events", "events": ["b"] },
        { "type": "rename_event", "from": "a", "to": "b" },
    ]));
    assert_eq!(one(&mut t, event("a", "u", json!({}))).outcome, Outcome::Dropped);
}

#[test]
fn many_events_through_rules() {
    let mut t = chain(json!([
        { "type": "drop_events", "events": ["debug_*"] },
        { "type": "drop_where", "properties": [{ "key": "$browser", "value": "bot" }] },
        { "type": "hash_property", "key": "email", "salt": "s" },
        { "type": "redact", "preset": "email", "keys": ["note"] },
        { "type": "sample", "percentage": 50 },
    ]));
    let events: Vec<Value> = (0..20_000)
        .map(|i| {
            event(
                if i % 10 == 0 { "debug_x" } else { "buy" },
                &format!("u{i}"),
                json!({ "email": "a@b.co", "note": "hi a@b.co", "$browser": "Chrome" }),
            )
        })
        .collect();
    let out = t.apply(events, "d");
    assert_eq!(out.len(), 20_000);
    let kept = out.iter().filter(|r| matches!(r.outcome, Outcome::Events(_))).count();
    assert!((8_000..10_000).contains(&kept), "{kept}");
}

// ---------------------------------------------------------------------------------------------
// JavaScript

#[test]
fn transformations_are_send() {
    fn assert_send<T: Send>() {}
    assert_send::<Transformations>();
}

#[test]
fn js_modifies_drops_and_fans_out() {
    let mut t = js(r#"
        export function transformEvent(event, metadata) {
          if (event.event === "drop") return null;
          if (event.event === "undef") return;
          if (event.event === "split") return [event, { ...event, event: "split_copy" }];
          if (event.event === "empty") return [];
          event.properties.seen = true;
          return event;
        }
    "#);
    let out = t.apply(
        vec![
            event("drop", "u", json!({})),
            event("keep", "u", json!({ "a": 1 })),
            event("split", "u", json!({})),
            event("undef", "u", json!({})),
            event("empty", "u", json!({})),
        ],
        "d",
    );
    assert_eq!(out[0].outcome, Outcome::Dropped);
    match &out[1].outcome {
        Outcome::Events(events) => assert_eq!(events[0]["properties"], json!({ "a": 1, "seen": true })),
        other => panic!("{other:?}"),
    }
    match &out[2].outcome {
        Outcome::Events(events) => {
            assert_eq!(events.len(), 2);
            assert_eq!(events[1]["event"], "split_copy");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(out[3].outcome, Outcome::Dropped);
    assert_eq!(out[4].outcome, Outcome::Dropped);
}

#[test]
fn js_throw_fails_only_that_event_and_logs_are_kept() {
    let mut t = js(r#"
        export function transformEvent(event) {
          log("saw", event.event, { n: 1 }, 2);
          if (event.event === "bad") throw new Error("bad event: " + event.event);
          if (event.event === "str") throw "plain string";
          if (event.event === "num") return 5;
          if (event.event === "mixed") return [event, 3];
          return event;
        }
    "#);
    let mut out = t.apply(
        vec![
            event("bad", "u", json!({})),
            event("ok", "u", json!({})),
            event("str", "u", json!({})),
            event("num", "u", json!({})),
            event("mixed", "u", json!({})),
        ],
        "d",
    );
    assert_eq!(out[0].logs, vec![r#"saw bad {"n":1} 2"#.to_owned()]);
    let reason = failed(out.remove(0));
    assert!(reason.starts_with("Error: bad event: bad"), "{reason}");
    assert!(matches!(out[0].outcome, Outcome::Events(_)));
    assert_eq!(out[0].logs, vec![r#"saw ok {"n":1} 2"#.to_owned()]);
    assert_eq!(failed(out.remove(1)), "plain string");
    assert!(failed(out.remove(1)).contains("returned a number"));
    assert!(failed(out.remove(1)).contains("non-object element"));
}

#[test]
fn js_compile_errors_are_refused() {
    for code in [
        "export function transformEvent(event) { return event",
        "export function somethingElse(event) { return event }",
        "function transformEvent(event) { return event }",
        "export function transformEvent(e) { return e }\nexport function transformBatch(e) { return e }",
        "import { sha256 } from \"@rs/hash/v1\";\nexport function transformEvent(e) { return e }",
        "throw new Error('top-level')\nexport function transformEvent(e) { return e }",
        "while (true) {}\nexport function transformEvent(e) { return e }",
    ] {
        let specs = vec![json!({ "type": "javascript", "code": code })];
        let limits = JsLimits { time_limit: Duration::from_millis(200), ..JsLimits::default() };
        let error = Transformations::compile(&specs, limits).expect_err(code);
        assert_eq!(error.field, "transformations[0].code", "{code}");
        assert!(!error.message.is_empty());
    }
    let error = compile_error(json!([{ "type": "javascript", "code": "export const x = 1;" }]));
    assert!(error.message.contains("transformEvent"), "{}", error.message);
}

#[test]
fn js_sandbox_has_no_require_fetch_or_process() {
    let mut t = js(r#"
        export function transformEvent(event) {
          if (event.event === "require") require("fs");
          if (event.event === "fetch") fetch("http://example.com");
          if (event.event === "process") process.exit(1);
          return event;
        }
    "#);
    let mut out = t.apply(
        vec![event("require", "u", json!({})), event("fetch", "u", json!({})), event("process", "u", json!({})), event("ok", "u", json!({}))],
        "d",
    );
    let r = failed(out.remove(0));
    assert!(r.contains("require is not available"), "{r}");
    let r = failed(out.remove(0));
    assert!(r.contains("fetch is not available"), "{r}");
    let r = failed(out.remove(0));
    assert!(r.contains("ReferenceError") && r.contains("process"), "{r}");
    assert!(matches!(out[0].outcome, Outcome::Events(_)));
}

#[test]
fn js_time_limit_then_keeps_working() {
    let specs = vec![json!({ "type": "javascript", "code": r#"
        let calls = 0;
        export function transformEvent(event) {
          calls += 1;
          if (event.event === "loop") { while (true) {} }
          if (event.event === "catch") { try { while (true) {} } catch (e) { return { ...event, event: "escaped" }; } }
          event.properties.calls = calls;
          return event;
        }
    "# })];
    let limits = JsLimits { time_limit: Duration::from_millis(100), ..JsLimits::default() };
    let mut t = Transformations::compile(&specs, limits).unwrap();
    let mut out = t.apply(
        vec![
            event("ok", "u", json!({})),
            event("loop", "u", json!({})),
            event("ok", "u", json!({})),
            event("catch", "u", json!({})),
            event("ok", "u", json!({})),
        ],
        "d",
    );
    assert!(matches!(&out[0].outcome, Outcome::Events(e) if e[0]["properties"]["calls"] == 1));
    let r = failed(out.remove(1));
    assert!(r.contains("time limit of 100 ms"), "{r}");
    // The runtime was rebuilt: module state starts over.
    assert!(matches!(&out[1].outcome, Outcome::Events(e) if e[0]["properties"]["calls"] == 1), "{:?}", out[1]);
    // The interrupt cannot be caught by the code.
    let r = failed(out.remove(2));
    assert!(r.contains("time limit"), "{r}");
    assert!(matches!(&out[2].outcome, Outcome::Events(e) if e[0]["properties"]["calls"] == 1));
}

#[test]
fn js_memory_limit_then_keeps_working() {
    let specs = vec![json!({ "type": "javascript", "code": r#"
        export function transformEvent(event) {
          if (event.event === "hog") {
            const big = [];
            while (true) big.push("x".repeat(1024) + big.length);
          }
          if (event.event === "huge") { const a = new Array(1e9).fill(1.5); return a; }
          return event;
        }
    "# })];
    let limits = JsLimits { time_limit: Duration::from_secs(10), memory_bytes: 16 << 20 };
    let mut t = Transformations::compile(&specs, limits).unwrap();
    let mut out =
        t.apply(vec![event("hog", "u", json!({})), event("ok", "u", json!({})), event("huge", "u", json!({})), event("ok", "u", json!({}))], "d");
    let r = failed(out.remove(0));
    assert!(r.contains("memory"), "{r}");
    assert!(matches!(out[0].outcome, Outcome::Events(_)), "{:?}", out[0]);
    let r = failed(out.remove(1));
    assert!(r.contains("memory"), "{r}");
    assert!(matches!(out[1].outcome, Outcome::Events(_)), "{:?}", out[1]);
}

#[test]
fn js_metadata_and_async() {
    let mut t = js(r#"
        export async function transformEvent(event, metadata) {
          const meta = metadata(event);
          await null;
          event.properties.dest = meta.destinationId;
          event.properties.source = meta.sourceId;
          event.properties.mid = meta.messageId;
          event.properties.name = meta.eventName;
          return event;
        }
    "#);
    let out = single(&mut t, event("buy", "u1", json!({})));
    assert_eq!(out["properties"], json!({ "dest": "dest-1", "source": "7", "mid": "id-buy-u1", "name": "buy" }));
    let mut t = js("export async function transformEvent(event) { throw new TypeError('nope'); }");
    assert!(failed(one(&mut t, event("a", "u", json!({})))).starts_with("TypeError: nope"));
    let mut t = js("export function transformEvent(event) { return new Promise(() => {}); }");
    assert!(failed(one(&mut t, event("a", "u", json!({})))).contains("never settled"));
}

#[test]
fn js_batch_maps_outputs_by_message_id() {
    let mut t = js(r#"
        export function transformBatch(events, metadata) {
          log("batch of", events.length);
          return events
            .filter((e) => e.event !== "drop")
            .map((e) => { e.properties.dest = metadata(e).destinationId; return e; })
            .concat([{ ...events[0], id: "no-such-id", messageId: "no-such-id", event: "summary" }]);
        }
    "#);
    let out = t.apply(vec![event("a", "u1", json!({})), event("drop", "u2", json!({})), event("c", "u3", json!({}))], "dest-9");
    assert_eq!(out[0].logs, vec!["batch of 3".to_owned()]);
    match &out[0].outcome {
        Outcome::Events(events) => assert_eq!(events[0]["properties"]["dest"], "dest-9"),
        other => panic!("{other:?}"),
    }
    assert_eq!(out[1].outcome, Outcome::Dropped);
    match &out[2].outcome {
        Outcome::Events(events) => {
            assert_eq!(events.len(), 2, "its own event and the unmatched summary");
            assert_eq!(events[1]["event"], "summary");
        }
        other => panic!("{other:?}"),
    }

    let mut t = js("export function transformBatch(events) { if (events.length > 1) throw new Error('whole batch'); return events; }");
    let out = t.apply(vec![event("a", "u1", json!({})), event("b", "u2", json!({}))], "d");
    for r in out {
        assert!(failed(r).starts_with("Error: whole batch"));
    }
}

#[test]
fn js_after_rules_sees_only_kept_events() {
    let mut t = chain(json!([
        { "type": "drop_events", "events": ["skip"] },
        { "type": "javascript", "code": "export function transformEvent(e) { e.properties.js = true; return e; }" },
        { "type": "set_property", "key": "after", "value": 1 },
    ]));
    let out = t.apply(vec![event("skip", "u", json!({})), event("go", "u", json!({}))], "d");
    assert_eq!(out[0].outcome, Outcome::Dropped);
    match &out[1].outcome {
        Outcome::Events(events) => assert_eq!(events[0]["properties"], json!({ "js": true, "after": 1 })),
        other => panic!("{other:?}"),
    }
}

// RudderStack's documented templates, unchanged except where the template says to edit a
// placeholder (the denylist / allowlist contents, the event names of the split).

#[test]
fn rudderstack_template_denylist() {
    let mut t = js(r#"
export function transformEvent(event, metadata) {
  const property = event.event; // Edit property, here it is event name
  const denylist = ["Product Added", "Order Completed"]; // Edit denylist contents
  if (property && denylist.includes(property)) return;
  return event;
}
"#);
    let out = t.apply(vec![event("Product Added", "u", json!({})), event("Product Viewed", "u", json!({}))], "d");
    assert_eq!(out[0].outcome, Outcome::Dropped);
    assert!(matches!(out[1].outcome, Outcome::Events(_)));
}

#[test]
fn rudderstack_template_allowlist() {
    let mut t = js(r#"
export function transformEvent(event, metadata) {
  const property = event.event; // Edit property; here it is event name
  const allowlist = ["Product Added", "Order Completed"]; // Edit allowlist contents
  if (!property || !allowlist.includes(property)) return;
  return event;
}
"#);
    let out = t.apply(vec![event("Product Added", "u", json!({})), event("Product Viewed", "u", json!({}))], "d");
    assert!(matches!(out[0].outcome, Outcome::Events(_)));
    assert_eq!(out[1].outcome, Outcome::Dropped);
}

#[test]
fn rudderstack_template_split_event() {
    let mut t = js(r#"
export function transformEvent(event, metadata) {

  // Rename the event to originalEvent for clarity in the transformations below
  const originalEvent = event;

  if (originalEvent.type === "track" && originalEvent.event === "Your Event Name Here") {

    // Deep clone the original event
    const additionalEvent = JSON.parse(JSON.stringify(event))

    // Apply additional transformations to the new event
    additionalEvent.event = "Your New Event Name";

    // Send both the original and new event to the destination.
    return [originalEvent, additionalEvent];

  } else {
    // Otherwise just return the original event.
    return originalEvent;
  }
}
"#);
    match one(&mut t, event("Your Event Name Here", "u", json!({ "x": 1 }))).outcome {
        Outcome::Events(events) => {
            assert_eq!(events.len(), 2);
            assert_eq!(events[0]["event"], "Your Event Name Here");
            assert_eq!(events[1]["event"], "Your New Event Name");
            assert_eq!(events[1]["properties"], json!({ "x": 1 }));
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(one(&mut t, event("Other", "u", json!({}))).outcome, Outcome::Events(ref e) if e.len() == 1));
}

#[test]
fn rudderstack_template_remove_null_properties() {
    let mut t = js(r#"
export function transformEvent(event) {
  if (event.properties) {
    const keys = Object.keys(event.properties);
    if (keys) {
      keys.forEach(key => {
        if (event.properties[key] === null) delete event.properties[key];
      });
    }
  }
  return event;
}
"#);
    let out = single(&mut t, event("a", "u", json!({ "gone": null, "kept": 0 })));
    assert_eq!(out["properties"], json!({ "kept": 0 }));
}

#[test]
fn rudderstack_example_log_and_metadata() {
    let mut t = js(r#"
export function transformEvent(event, metadata) {
  const meta = metadata(event);
  event.sourceId = meta.sourceId;
  log("Event Name is", event.event, ";", "Message ID is", event.messageId);
  log("Source ID is", meta.sourceId);
  return event;
}
"#);
    let r = one(&mut t, event("Buy", "u", json!({})));
    assert!(matches!(r.outcome, Outcome::Events(_)));
    assert_eq!(r.logs.len(), 2);
    assert!(r.logs[0].starts_with("Event Name is Buy ; Message ID is"), "{:?}", r.logs);
    assert_eq!(r.logs[1], "Source ID is 7");
}

#[test]
fn rudderstack_example_transform_batch() {
    let mut t = js(r#"
      export function transformBatch(events, metadata) {
        return events.map((event, index) => {
          event.properties = event.properties || {};
          event.properties.transformed = true;
          event.properties.transformationType = 'batch';
          event.properties.batchIndex = index;
          event.properties.batchSize = events.length;
          return event;
        });
      }
"#);
    let out = t.apply(vec![event("a", "u1", json!({})), event("b", "u2", json!({}))], "d");
    for (i, r) in out.into_iter().enumerate() {
        match r.outcome {
            Outcome::Events(events) => {
                assert_eq!(events.len(), 1);
                assert_eq!(events[0]["properties"], json!({ "transformed": true, "transformationType": "batch", "batchIndex": i, "batchSize": 2 }));
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn many_events_through_js() {
    let mut t = js("export function transformEvent(event) { if (event.event === 'skip') return null; event.properties.n = (event.properties.n || 0) + 1; return event; }");
    let events: Vec<Value> = (0..20_000).map(|i| event(if i % 4 == 0 { "skip" } else { "go" }, &format!("u{i}"), json!({ "n": i }))).collect();
    let out = t.apply(events, "d");
    assert_eq!(out.iter().filter(|r| r.outcome == Outcome::Dropped).count(), 5_000);
    assert!(matches!(&out[1].outcome, Outcome::Events(e) if e[0]["properties"]["n"] == 2));
}

#[test]
fn js_deep_recursion_fails_cleanly_and_the_chain_moves_across_threads() {
    let mut t = js(r#"
        function down(n) { return down(n + 1) + 1; }
        export function transformEvent(event) {
          if (event.event === "deep") down(0);
          return event;
        }
    "#);
    let r = failed(one(&mut t, event("deep", "u", json!({}))));
    assert!(r.contains("RangeError") || r.contains("stack"), "{r}");
    // Used on another thread (as a destination worker's blocking task does), then back here.
    let mut t = std::thread::spawn(move || {
        assert!(matches!(one(&mut t, event("ok", "u", json!({}))).outcome, Outcome::Events(_)));
        t
    })
    .join()
    .unwrap();
    assert!(matches!(one(&mut t, event("ok", "u", json!({}))).outcome, Outcome::Events(_)));
}

//! Untrusted flag definitions — PostHog's local evaluation JSON (`{flags, group_type_mapping,
//! cohorts}`), as an upstream PostHog, an import or an older version's store hands them over —
//! compiled the way the server does and evaluated for a few persons: nothing may panic or
//! overflow the stack, however the flags and cohorts refer to each other. A set the strict
//! compile accepts never evaluates to an error; one it refuses names the flag or cohort.
#![no_main]

use chrono::{TimeZone, Utc};
use libfuzzer_sys::fuzz_target;
use serde_json::{json, Map, Value};
use switchyard_flags::{Context, FlagDefinition, FlagSet, Subject};

fuzz_target!(|data: &[u8]| {
    let Ok(body) = serde_json::from_slice::<Value>(data) else { return };
    let Some(flags) = body.get("flags").and_then(Value::as_array) else { return };
    let object = |key: &str| body.get(key).and_then(Value::as_object).cloned().unwrap_or_default();
    let (mapping, cohorts) = (object("group_type_mapping"), object("cohorts"));
    // As the server serves stored definitions: the flags that parse, deleted ones skipped.
    let definitions: Vec<FlagDefinition> = flags
        .iter()
        .filter(|f| f.get("deleted") != Some(&Value::Bool(true)))
        .filter_map(|f| serde_json::from_value(f.clone()).ok())
        .collect();

    let set = FlagSet::compile(definitions.clone(), &mapping, &cohorts);
    let strict = FlagSet::new(definitions, &mapping, &cohorts);
    assert_eq!(strict.is_ok(), set.problems().is_empty(), "the strict compile refuses exactly the sets with problems");
    if let Err(error) = &strict {
        let named = set.problems().iter().any(|p| {
            let subject = match &p.subject {
                Subject::Flag(key) => format!("flag `{key}`"),
                Subject::Cohort(id) => format!("cohort {id}"),
            };
            p.message.starts_with(&subject)
        });
        assert!(named && !error.to_string().is_empty(), "a problem names its flag or cohort");
    }

    let groups = json!({"workspace": "ws_1", "organization": 7});
    let group_properties = json!({"workspace": {"plan": "pro", "$group_key": "ws_1"}, "organization": {"seats": 12}});
    let people = [
        ("user_1", json!({"email": "dev@acme.io", "age": 31, "$browser_version": "1.2.3"})),
        ("", json!({})),
        ("42", json!({"email": null, "created": "2025-01-01T00:00:00Z", "tags": ["a", "b"]})),
    ];
    let now = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).single().expect("a valid date");
    for (distinct_id, properties) in &people {
        let empty = Map::new();
        let ctx = Context {
            distinct_id,
            device_id: Some("device_9"),
            continuity_key: None,
            person_properties: properties.as_object().unwrap_or(&empty),
            groups: groups.as_object().unwrap_or(&empty),
            group_properties: group_properties.as_object().unwrap_or(&empty),
            now,
        };
        let all = set.evaluate_all(&ctx);
        assert_eq!(all.len(), set.len());
        for (key, evaluation) in &all {
            if set.problems().is_empty() {
                assert!(!evaluation.is_error(), "a sound set never evaluates to an error: {key}");
            }
            // One flag alone gives what the whole set gave (a key defined twice aside: by key,
            // the last definition answers).
            let alone = set.evaluate(key, &ctx).expect("the set has the flag");
            if all.iter().filter(|(k, _)| k == key).count() == 1 {
                assert_eq!((&alone.value, alone.reason), (&evaluation.value, evaluation.reason), "{key}");
            }
        }
    }
});

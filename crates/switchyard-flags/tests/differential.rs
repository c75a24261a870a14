//! Differential test against posthog-python's local evaluation (the SDK from PyPI): thousands of
//! generated cases (flag definitions, person and group properties, distinct ids) must get the
//! same value and payload. Where the SDK cannot decide locally, the oracle either answers with
//! PostHog's documented server behaviour (a property the person does not have) or marks the case
//! inconclusive, and it is not compared.
//!
//! Needs python3 with `posthog` installed, so it runs when FLAGS_DIFFERENTIAL=1 (scripts/test
//! installs the package and sets it). FLAGS_DIFFERENTIAL_CASES and FLAGS_DIFFERENTIAL_SEED
//! change the run.

use std::process::Command;

use serde_json::{Map, Value};
use switchyard_flags::{Context, FlagDefinition, FlagSet, FlagValue};

#[test]
fn posthog_python_agrees() {
    if std::env::var("FLAGS_DIFFERENTIAL").as_deref() != Ok("1") {
        eprintln!("differential test not run: set FLAGS_DIFFERENTIAL=1 (needs python3 with posthog)");
        return;
    }
    let cases: usize = std::env::var("FLAGS_DIFFERENTIAL_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(12_000);
    let seed = std::env::var("FLAGS_DIFFERENTIAL_SEED").unwrap_or_else(|_| "20261125".into());
    let oracle = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/posthog_oracle.py");
    let output = Command::new("python3").args([oracle, &cases.to_string(), &seed]).output().expect("python3 runs");
    assert!(output.status.success(), "oracle failed: {}", String::from_utf8_lossy(&output.stderr));

    let now = chrono::Utc::now();
    let mut compared = 0;
    let mut inconclusive = 0;
    let mut failures = Vec::new();
    for line in String::from_utf8(output.stdout).unwrap().lines() {
        let record: Value = serde_json::from_str(line).unwrap();
        let case = &record["case"];
        let expected = &record["expected"];
        if expected.get("inconclusive").is_some() {
            inconclusive += 1;
            continue;
        }
        let definitions: Vec<FlagDefinition> = serde_json::from_value(case["flags"].clone()).unwrap();
        let set = FlagSet::new(
            definitions,
            case["group_type_mapping"].as_object().unwrap(),
            case["cohorts"].as_object().unwrap(),
        )
        .unwrap_or_else(|e| panic!("definitions compile: {e}\n{case}"));
        let empty = Map::new();
        let ctx = Context {
            distinct_id: case["distinct_id"].as_str().unwrap(),
            device_id: case["device_id"].as_str(),
            continuity_key: None,
            person_properties: case["person_properties"].as_object().unwrap_or(&empty),
            groups: case["groups"].as_object().unwrap_or(&empty),
            group_properties: case["group_properties"].as_object().unwrap_or(&empty),
            now,
        };
        let got = set.evaluate(case["key"].as_str().unwrap(), &ctx).unwrap();
        let want_value = match &expected["value"] {
            Value::Bool(b) => FlagValue::Bool(*b),
            Value::String(s) => FlagValue::Variant(s.clone()),
            other => panic!("unexpected oracle value {other}"),
        };
        let want_payload = match &expected["payload"] {
            Value::Null => None,
            p => Some(p.clone()),
        };
        compared += 1;
        if got.value != want_value || got.payload != want_payload {
            failures.push(format!(
                "case {}: expected {:?} / {:?}, got {:?} / {:?} ({:?})\n  {}",
                case["key"], want_value, want_payload, got.value, got.payload, got.reason, case
            ));
        }
    }
    eprintln!("differential: {compared} cases compared, {inconclusive} inconclusive in the SDK (not compared)");
    assert!(failures.is_empty(), "{} of {compared} cases differ; first ones:\n{}", failures.len(), failures[..failures.len().min(8)].join("\n"));
    assert!(compared >= 10_000 || cases < 11_000, "too few conclusive cases: {compared}");
}

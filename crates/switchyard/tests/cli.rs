//! The `switchyard flags` CLI against the built binary: import PostHog JSON, list, disable,
//! export, re-import; errors name the problem.

use serde_json::Value;

mod common;
use common::{cli, start, SECRET};

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/platform-flags.json");

#[test]
fn flags_cli_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let flags = |args: &[&str]| {
        let mut all = vec!["flags", "--url", &server.url, "--secret-key", SECRET];
        all.extend_from_slice(args);
        cli(&all)
    };

    let (ok, out, err) = flags(&["import", EXAMPLE]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "created 4, updated 0");

    let (ok, out, _) = flags(&["list"]);
    assert!(ok);
    let keys: Vec<&str> = out.lines().map(|l| l.split('\t').next().unwrap()).collect();
    assert_eq!(keys, ["track_model_costs", "enable_guardrails_tracing", "versioned_rag_tracking", "agent_debugger_ui"]);

    let (ok, out, _) = flags(&["disable", "agent_debugger_ui"]);
    assert!(ok);
    assert!(out.contains("inactive (version 2)"), "{out}");
    let (ok, out, _) = flags(&["get", "agent_debugger_ui"]);
    assert!(ok);
    let flag: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(flag["active"], false);

    let (ok, exported, _) = flags(&["export"]);
    assert!(ok);
    let export: Value = serde_json::from_str(&exported).unwrap();
    assert_eq!(export["flags"].as_array().unwrap().len(), 4);
    assert_eq!(export["group_type_mapping"]["0"], "workspace");
    let path = dir.path().join("export.json");
    std::fs::write(&path, exported).unwrap();
    let (ok, out, err) = flags(&["import", path.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "created 0, updated 4", "re-importing an export updates in place");

    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"flags": [{"key": "x", "filters": {"groups": [{"rollout_percentage": 120}]}}]}"#).unwrap();
    let (ok, _, err) = flags(&["import", bad.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("400") && err.contains("outside 0–100") && err.contains("field `filters`"), "{err}");

    let (ok, _, err) = cli(&["flags", "--url", &server.url, "--secret-key", "phs_wrong", "list"]);
    assert!(!ok && err.contains("401"), "{err}");
}

//! The CLIs against the built binary: flags (import PostHog JSON, list, disable, export,
//! re-import), keys, destinations, traces, prices, sql and warehouse; errors name the problem.

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

/// Starts the binary with its stdout captured; returns the server and what it printed by the
/// time it was ready.
fn start_printing(dir: &std::path::Path, adjust: impl FnOnce(&mut std::process::Command)) -> (common::Server, String) {
    use std::io::Read;
    let mut server = common::start_with(dir, |command| {
        command.stdout(std::process::Stdio::piped());
        adjust(command);
    });
    let mut stdout = server.child.stdout.take().unwrap();
    let _ = server.child.kill();
    let _ = server.child.wait();
    let mut printed = String::new();
    stdout.read_to_string(&mut printed).unwrap();
    (server, printed)
}

#[test]
fn keys_cli_list_create_revoke() {
    let dir = tempfile::tempdir().unwrap();
    // First start with configured keys: nothing secret is printed.
    let (_, printed) = start_printing(dir.path(), |_| {});
    assert!(!printed.contains(SECRET) && !printed.contains(common::TOKEN), "configured keys are never printed: {printed}");
    let server = start(dir.path());
    let keys = |secret: &str, args: &[&str]| {
        let mut all = vec!["keys", "--url", &server.url, "--secret-key", secret];
        all.extend_from_slice(args);
        cli(&all)
    };

    let (ok, out, err) = keys(SECRET, &["list"]);
    assert!(ok, "{err}");
    let lines: Vec<Vec<&str>> = out.lines().map(|l| l.split('\t').collect()).collect();
    assert_eq!(lines.iter().map(|l| l[1]).collect::<Vec<_>>(), ["project_token", "write_key", "secret_key"]);
    assert!(lines.iter().all(|l| l[5] == "active" && l[3] == "config"), "{out}");
    assert!(!out.contains(SECRET), "{out}");
    let configured_secret = lines[2][0].to_owned();

    let (ok, out, err) = keys(SECRET, &["create"]);
    assert!(ok, "{err}");
    let new_secret = out.lines().nth(1).unwrap().split_whitespace().next().unwrap().to_owned();
    assert!(new_secret.starts_with("phs_") && new_secret.len() >= 32, "{out}");
    let new_id = out.lines().next().unwrap().split('\t').next().unwrap().to_owned();

    let (ok, out, err) = keys(&new_secret, &["revoke", &configured_secret]);
    assert!(ok, "{err}");
    assert!(out.contains("revoked"), "{out}");
    let (ok, _, err) = keys(SECRET, &["list"]);
    assert!(!ok && err.contains("401"), "the revoked key is refused at once: {err}");
    let (ok, _, err) = keys(&new_secret, &["revoke", &new_id]);
    assert!(!ok && err.contains("400") && err.contains("last active secret key"), "{err}");
    let (ok, out, _) = keys(&new_secret, &["list"]);
    assert!(ok && !out.contains(&new_secret), "{out}");
    drop(server);

    // Without configured keys, the first start prints the generated ones, once.
    let dir = tempfile::tempdir().unwrap();
    let (_, printed) = start_printing(dir.path(), |command| {
        command.env_remove("SWITCHYARD_SECRET_KEY");
    });
    let generated = printed.lines().find(|l| l.contains("secret key")).and_then(|l| l.split_whitespace().last()).unwrap().to_owned();
    assert!(generated.starts_with("phs_") && !printed.contains(common::TOKEN), "{printed}");
    let server = common::start_with(dir.path(), |command| {
        command.env_remove("SWITCHYARD_SECRET_KEY");
    });
    let (ok, out, err) = cli(&["keys", "--url", &server.url, "--secret-key", &generated, "list"]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l.contains("secret_key") && l.contains("generated")), "{out}");
}

/// A CA made for the test, and a TLS server config for `localhost`/`127.0.0.1` it signed.
fn test_pki() -> (String, std::sync::Arc<tokio_rustls::rustls::ServerConfig>) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
    use tokio_rustls::rustls;
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "Switchyard CLI test CA");
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let leaf_key = KeyPair::generate().unwrap();
    let leaf = CertificateParams::new(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap().signed_by(&leaf_key, &ca, &ca_key).unwrap();
    let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(vec![leaf.der().clone()], key)
        .unwrap();
    (ca.pem(), std::sync::Arc::new(config))
}

/// Terminates TLS on a random loopback port and forwards each connection to `backend`, as a
/// reverse proxy in front of the server does. Returns the port; runs until the test ends.
fn tls_proxy(backend: String, tls: std::sync::Arc<tokio_rustls::rustls::ServerConfig>) -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            loop {
                let Ok((stream, _)) = listener.accept().await else { continue };
                let (acceptor, backend) = (acceptor.clone(), backend.clone());
                tokio::spawn(async move {
                    let Ok(mut client) = acceptor.accept(stream).await else { return };
                    let Ok(mut server) = tokio::net::TcpStream::connect(&backend).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
    });
    port
}

#[test]
fn cli_over_https_with_a_private_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let (ca_pem, tls) = test_pki();
    let port = tls_proxy(server.url.trim_start_matches("http://").to_owned(), tls);
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, ca_pem).unwrap();
    let https = format!("https://localhost:{port}");

    let (ok, out, err) = cli(&["flags", "--url", &https, "--secret-key", SECRET, "--ca-file", ca_file.to_str().unwrap(), "import", EXAMPLE]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "created 4, updated 0");
    let (ok, out, err) = cli(&["events", "--url", &https, "--secret-key", SECRET, "--ca-file", ca_file.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.is_empty(), "no events yet: {out}");

    // Without the CA the certificate is refused, and nothing is sent.
    let (ok, _, err) = cli(&["flags", "--url", &https, "--secret-key", SECRET, "list"]);
    assert!(!ok);
    assert!(err.to_lowercase().contains("certificate") || err.contains("cannot reach"), "{err}");

    // Plain http off this machine is refused before anything is sent, unless allowed.
    let (ok, _, err) = cli(&["flags", "--url", "http://switchyard.example.internal:8000", "--secret-key", SECRET, "list"]);
    assert!(!ok);
    assert!(err.contains("--allow-insecure-http"), "{err}");
    let (ok, _, err) = cli(&["flags", "--url", "http://switchyard.example.internal:8000", "--secret-key", SECRET, "--allow-insecure-http", "list"]);
    assert!(!ok && err.contains("cannot reach"), "allowed, then it tries: {err}");
}

#[test]
fn destinations_and_transform_cli() {
    let dir = tempfile::tempdir().unwrap();
    // Destinations on loopback, nothing listening: events wait in retries, then dead letters.
    let server = common::start_with(dir.path(), |c| {
        c.env("SWITCHYARD_ROUTING__ALLOW_PRIVATE_ADDRESSES", "true")
            .env("SWITCHYARD_ROUTING__RETRY_INITIAL_BACKOFF_MS", "20")
            .env("SWITCHYARD_ROUTING__RETRY_MIN_ATTEMPTS", "1")
            .env("SWITCHYARD_ROUTING__RETRY_MAX_AGE_SECS", "0");
    });
    let client = reqwest::blocking::Client::new();
    let dead_port = common::free_port();
    let created: serde_json::Value = client
        .post(format!("{}/api/projects/@current/destinations/", server.url))
        .bearer_auth(SECRET)
        .json(&serde_json::json!({"name": "nowhere", "type": "webhook", "config": {"url": format!("http://127.0.0.1:{dead_port}/hook")}}))
        .send()
        .unwrap()
        .json()
        .unwrap();
    let id = created["id"].to_string();
    let batch = serde_json::json!({"api_key": common::TOKEN, "batch": [{"event": "tool_used", "distinct_id": "u1", "properties": {"tool_name": "search"}}]});
    assert!(client.post(format!("{}/batch/", server.url)).json(&batch).send().unwrap().status().is_success());

    let (ok, out, err) = cli(&["destinations", "--url", &server.url, "--secret-key", SECRET, "list"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), format!("{id}\twebhook\tenabled\tnowhere"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let letters = loop {
        let (ok, out, err) = cli(&["destinations", "--url", &server.url, "--secret-key", SECRET, "dead-letters", &id]);
        assert!(ok, "{err}");
        if !out.trim().is_empty() {
            break out;
        }
        assert!(std::time::Instant::now() < deadline, "no dead letter");
        std::thread::sleep(std::time::Duration::from_millis(200));
    };
    let letter: serde_json::Value = serde_json::from_str(letters.lines().next().unwrap()).unwrap();
    assert_eq!(letter["event"]["event"], "tool_used");
    assert!(letter["reason"].as_str().unwrap().contains("could not connect"), "{letter}");
    let (ok, out, err) = cli(&["destinations", "--url", &server.url, "--secret-key", SECRET, "status", &id]);
    assert!(ok, "{err}");
    let status: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(status["dead_letters"], 1, "{status}");
    let (ok, out, err) = cli(&["destinations", "--url", &server.url, "--secret-key", SECRET, "replay", &id]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "replaying 1 dead letters");

    let code = dir.path().join("t.js");
    std::fs::write(&code, "export function transformEvent(e) { e.event = e.event.toUpperCase(); log('seen'); return e; }").unwrap();
    let events = dir.path().join("events.json");
    std::fs::write(&events, r#"[{"type": "track", "event": "tool_used", "userId": "u1", "properties": {}}]"#).unwrap();
    let (ok, out, err) = cli(&["transform", "--url", &server.url, "--secret-key", SECRET, "test", code.to_str().unwrap(), "--events", events.to_str().unwrap()]);
    assert!(ok, "{err}");
    let results: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(results[0]["output"][0]["event"], "TOOL_USED", "{results}");
    assert_eq!(results[0]["logs"][0], "seen");
}

/// One OTLP/JSON export: a run (`agent_run`, 0–1500 ms) with one chat call under it
/// (`chat gpt-4o-mini`, 100–600 ms, 12 tokens in, 5 out).
fn export_run(url: &str, trace: &str) {
    let attr = |key: &str, value: serde_json::Value| serde_json::json!({"key": key, "value": value});
    let base: u64 = 1_764_927_000_000_000_000;
    let at = |ms: u64| (base + ms * 1_000_000).to_string();
    let body = serde_json::json!({"resourceSpans": [{"resource": {"attributes": [attr("service.name", serde_json::json!({"stringValue": "agent"}))]},
        "scopeSpans": [{"scope": {"name": "test"}, "spans": [
            {"traceId": trace, "spanId": "00000000000000a1", "name": "agent_run", "kind": 1,
             "startTimeUnixNano": at(0), "endTimeUnixNano": at(1500), "attributes": []},
            {"traceId": trace, "spanId": "00000000000000b2", "parentSpanId": "00000000000000a1", "name": "chat gpt-4o-mini", "kind": 3,
             "startTimeUnixNano": at(100), "endTimeUnixNano": at(600),
             "attributes": [attr("gen_ai.operation.name", serde_json::json!({"stringValue": "chat"})),
                            attr("gen_ai.request.model", serde_json::json!({"stringValue": "gpt-4o-mini"})),
                            attr("gen_ai.usage.input_tokens", serde_json::json!({"intValue": "12"})),
                            attr("gen_ai.usage.output_tokens", serde_json::json!({"intValue": "5"}))]}]}]}]});
    let response = reqwest::blocking::Client::new()
        .post(format!("{url}/v1/traces"))
        .bearer_auth(common::TOKEN)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .unwrap();
    assert!(response.status().is_success(), "{:?}", response.text());
}

#[test]
fn traces_cli_list_and_waterfall() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(dir.path());
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    export_run(&server.url, trace);
    let batch = serde_json::json!({"api_key": common::TOKEN, "batch": [{"event": "tool_used", "distinct_id": "user_1", "timestamp": "2025-12-05T09:30:00.800Z",
        "properties": {"trace_id": trace, "tool_name": "web_search", "success": true}}]});
    let response = reqwest::blocking::Client::new().post(format!("{}/batch/", server.url)).json(&batch).send().unwrap();
    assert!(response.status().is_success());
    let traces = |args: &[&str]| {
        let mut all = vec!["traces", "--url", &server.url, "--secret-key", SECRET];
        all.extend_from_slice(args);
        cli(&all)
    };

    let (ok, out, err) = traces(&["list"]);
    assert!(ok, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 1, "{out}");
    let fields: Vec<&str> = lines[0].split('\t').collect();
    assert_eq!(fields[0], trace, "{out}");
    assert_eq!(fields[1], "2025-12-05T09:30:00.000000Z", "{out}");
    assert_eq!(&fields[2..5], ["1500.0 ms", "1 llm calls", "1 tool calls"], "{out}");
    assert_eq!(fields[5], "12 in / 5 out tokens", "{out}");
    assert_eq!(&fields[6..], ["$0.0000048", "0 errors"], "gpt-4o-mini from the embedded table: {out}");
    let (ok, out, err) = traces(&["list", "--errors"]);
    assert!(ok && out.trim().is_empty(), "no run with errors: {out} {err}");
    let (ok, out, _) = traces(&["list", "--user", "user_1", "--min-cost", "0.000001"]);
    assert!(ok && out.starts_with(trace), "{out}");

    let (ok, out, err) = traces(&["show", trace]);
    assert!(ok, "{err}");
    let run = out.lines().find(|l| l.starts_with("agent_run (span)")).unwrap_or_else(|| panic!("{out}"));
    let bar_of = |line: &str| line.split('|').nth(1).unwrap().to_owned();
    assert_eq!(bar_of(run), "█".repeat(40), "the run fills the bar: {out}");
    assert!(run.ends_with("1500.0 ms"), "{run}");
    let chat = out.lines().find(|l| l.starts_with("  chat gpt-4o-mini (generation)")).unwrap_or_else(|| panic!("indented under the run: {out}"));
    let chat_bar = bar_of(chat);
    // 100–600 ms of 1500 over 40 columns: columns 2 to 16.
    assert_eq!(chat_bar, format!("{}{}{}", " ".repeat(2), "█".repeat(14), " ".repeat(24)), "{out}");
    assert!(chat.contains("500.0 ms") && chat.contains("12 in / 5 out tokens") && chat.contains("$0.0000048"), "{chat}");
    assert!(out.lines().any(|l| l.contains("+800 ms") && l.contains("tool_used") && l.contains("tool_name=web_search")), "{out}");
    assert!(out.contains("flags: none"), "{out}");
    assert!(out.contains("totals: 1500.0 ms, 2 spans, 1 llm calls, 1 tool calls, 12 in / 5 out tokens, $0.0000048, 0 errors"), "{out}");

    let (ok, _, err) = traces(&["show", "ffffffffffffffffffffffffffffffff"]);
    assert!(!ok && err.contains("404"), "{err}");
}

#[test]
fn prices_import_installs_a_table_the_server_costs_with() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let table = dir.path().join("prices.json");
    std::fs::write(&table, r#"{"my-model": {"input_cost_per_token": 0.000001, "output_cost_per_token": 0.000002, "litellm_provider": "openai", "mode": "chat"}}"#).unwrap();
    let (ok, out, err) = cli(&["prices", "import", table.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
    assert!(ok, "{err}");
    assert!(out.contains("imported litellm-") && out.contains("(1 models"), "{out}");
    assert_eq!(std::fs::read_to_string(data.join("prices.json")).unwrap(), std::fs::read_to_string(&table).unwrap());

    // Refused, naming the problem; the installed table stays.
    for (text, problem) in [("[1, 2]", "not a JSON object keyed by model"), ("{\"x\": {\"mode\": \"chat\"}}", "no model with a per-token price"), ("{", "not JSON")] {
        std::fs::write(&table, text).unwrap();
        let (ok, _, err) = cli(&["prices", "import", table.to_str().unwrap(), "--data-dir", data.to_str().unwrap()]);
        assert!(!ok && err.contains("is not a usable price table") && err.contains(problem), "{text}: {err}");
    }
    assert!(std::fs::read_to_string(data.join("prices.json")).unwrap().contains("my-model"));

    let server = start(&data);
    let batch = serde_json::json!({"api_key": common::TOKEN, "batch": [{"event": "$ai_generation", "distinct_id": "u", "properties": {
        "$ai_model": "my-model", "$ai_provider": "openai", "$ai_input_tokens": 1000, "$ai_output_tokens": 100, "$ai_trace_id": "p1"}}]});
    let client = reqwest::blocking::Client::new();
    assert!(client.post(format!("{}/batch/", server.url)).json(&batch).send().unwrap().status().is_success());
    let events: Value = client.get(format!("{}/api/projects/@current/events/?event=$ai_generation", server.url)).bearer_auth(SECRET).send().unwrap().json().unwrap();
    let p = &events["results"][0]["properties"];
    assert_eq!(p["$ai_total_cost_usd"], serde_json::json!(0.0012), "{events}");
    assert!(p["$ai_cost_table_version"].as_str().unwrap().starts_with("litellm-"), "{p}");
}

#[test]
fn sql_and_warehouse_cli() {
    let dir = tempfile::tempdir().unwrap();
    let server = common::start_with(dir.path(), |command| {
        command.env("SWITCHYARD_WAREHOUSE_MAX_WAIT_SECS", "1");
    });
    let batch = serde_json::json!({"api_key": common::TOKEN, "batch": [
        {"event": "model_cost", "distinct_id": "user_1", "timestamp": "2026-12-05T09:30:00Z",
         "properties": {"model": "gpt-4o-mini", "provider": "openai", "cost_usd": 0.00042, "workspace_id": "ws_1", "trace_id": "t1"}},
        {"event": "model_cost", "distinct_id": "user_2", "timestamp": "2026-12-05T09:31:00Z",
         "properties": {"model": "claude-sonnet-4-5", "provider": "anthropic", "cost_usd": 0.0125, "workspace_id": "ws_22", "trace_id": "t2"}},
    ]});
    let response = reqwest::blocking::Client::new().post(format!("{}/batch/", server.url)).json(&batch).send().unwrap();
    assert!(response.status().is_success());
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend_from_slice(&["--url", &server.url, "--secret-key", SECRET]);
        cli(&all)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    // The lake's files show before its cursor and status move: both are waited for.
    loop {
        let (ok, out, _) = run(&["sql", "SELECT count(*) AS n FROM model_cost_logs", "--format", "json"]);
        let (_, status, _) = run(&["warehouse", "status"]);
        if ok && serde_json::from_str::<Value>(&out).unwrap()["results"][0][0] == 2 && status.contains("lag        0 events") {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the lake never had both events: {out}\n{status}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let (ok, out, err) = run(&["sql", "SELECT workspace_id, model, sum(cost_usd) AS cost FROM model_cost_logs GROUP BY 1, 2 ORDER BY 1"]);
    assert!(ok, "{err}");
    let expected = "\
workspace_id | model             |    cost
-------------+-------------------+--------
ws_1         | gpt-4o-mini       | 0.00042
ws_22        | claude-sonnet-4-5 |  0.0125
(2 rows)
";
    assert_eq!(out, expected, "aligned, numbers to the right");
    let (ok, _, err) = run(&["sql", "DROP TABLE model_cost_logs"]);
    assert!(!ok && err.contains("read-only"), "{err}");

    let (ok, out, err) = run(&["warehouse", "status"]);
    assert!(ok, "{err}");
    let lake = out.lines().find(|l| l.starts_with("lake")).unwrap_or_else(|| panic!("{out}"));
    assert!(lake.contains("loaded          2") && lake.contains("lag        0 events") && lake.contains("failures 0"), "{lake}");
    let (ok, _, err) = run(&["warehouse", "add", "--name", "dw", "--dsn", "mysql://nope"]);
    assert!(!ok && err.contains("config.dsn"), "{err}");
    let (ok, out, err) = run(&["warehouse", "list"]);
    assert!(ok && out.trim().is_empty(), "{out} {err}");
}

//! Hostile flag definitions (issue 16): a cohort that refers to itself, a 20,000-deep chain of
//! flag dependencies, cycles. Refused wherever they come from — import, the management API, an
//! upstream PostHog (the last good snapshot keeps serving) — and harmless when an older version
//! stored them: `/flags` keeps answering, the broken flags evaluate to errors.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use serde_json::{json, Value};
use switchyard_flags::MAX_DEPENDENCY_DEPTH;

use crate::{wait_until, TestServer, SECRET, TOKEN};

fn depends_on(key: &str) -> Value {
    json!({"groups": [{"properties": [{"key": key, "type": "flag", "operator": "flag_evaluates_to", "value": true}], "rollout_percentage": 100}]})
}

fn everyone() -> Value {
    json!({"groups": [{"properties": [], "rollout_percentage": 100}]})
}

/// `f0` depends on `f1`, …, `f{length-1}` on nothing, as the management API takes them.
fn chain(length: usize) -> Vec<Value> {
    (0..length)
        .map(|i| if i + 1 < length { json!({"key": format!("f{i}"), "filters": depends_on(&format!("f{}", i + 1))}) } else { json!({"key": format!("f{i}"), "filters": everyone()}) })
        .collect()
}

fn self_referencing_cohort() -> Value {
    json!({"type": "OR", "values": [{"type": "AND", "values": [{"key": "id", "type": "cohort", "value": 7}]}]})
}

fn in_cohort_seven() -> Value {
    json!({"groups": [{"properties": [{"key": "id", "type": "cohort", "value": 7}], "rollout_percentage": 100}]})
}

async fn import(server: &TestServer, body: &Value) -> (u16, Value) {
    let response = server
        .client
        .post(format!("{}/api/projects/@current/feature_flags/import/", server.url))
        .bearer_auth(SECRET)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn create(server: &TestServer, body: Value) -> (u16, Value) {
    let response = server.client.post(format!("{}/api/projects/@current/feature_flags/", server.url)).bearer_auth(SECRET).json(&body).send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap())
}

async fn stored_keys(server: &TestServer) -> Vec<String> {
    let response = server.client.get(format!("{}/api/projects/@current/feature_flags/", server.url)).bearer_auth(SECRET).send().await.unwrap();
    let body: Value = response.json().await.unwrap();
    let mut keys: Vec<String> = body["results"].as_array().unwrap().iter().map(|f| f["key"].as_str().unwrap().to_owned()).collect();
    keys.sort();
    keys
}

async fn evaluate(server: &TestServer, distinct_id: &str) -> Value {
    let response = server.client.post(format!("{}/flags/?v=2", server.url)).json(&json!({"token": TOKEN, "distinct_id": distinct_id})).send().await.unwrap();
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The answer once flags are ready; `Null` while a mirror has no snapshot yet (503).
async fn evaluate_when_ready(server: &TestServer, distinct_id: &str) -> Value {
    let response = server.client.post(format!("{}/flags/?v=2", server.url)).json(&json!({"token": TOKEN, "distinct_id": distinct_id})).send().await.unwrap();
    match response.status().as_u16() {
        200 => response.json().await.unwrap(),
        503 => Value::Null,
        other => panic!("/flags answered {other}"),
    }
}

fn assert_refused(status: u16, body: &Value, attr: &str, needles: &[&str]) {
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["attr"], attr, "{body}");
    let detail = body["detail"].as_str().unwrap();
    for needle in needles {
        assert!(detail.contains(needle), "{detail:?} should mention {needle:?}");
    }
}

#[tokio::test]
async fn import_refuses_cyclic_cohorts_deep_chains_and_cycles_storing_nothing() {
    let server = TestServer::start().await;
    let (status, body) = import(&server, &json!({"flags": [{"key": "kept", "filters": everyone()}]})).await;
    assert_eq!(status, 200, "{body}");

    let (status, body) = import(
        &server,
        &json!({"flags": [{"key": "in_seven", "filters": in_cohort_seven()}, {"key": "innocent", "filters": everyone()}],
                "cohorts": {"7": self_referencing_cohort()}}),
    )
    .await;
    assert_refused(status, &body, "cohorts", &["cohort 7", "cycle"]);

    // The array form, 20,000 flags deep (2.6 MB: past axum's default body limit too).
    let (status, body) = import(&server, &json!(chain(20_000))).await;
    assert_refused(status, &body, "filters", &["flag `f", "deeper than"]);

    let (status, body) = import(&server, &json!([{"key": "a", "filters": depends_on("b")}, {"key": "b", "filters": depends_on("a")}])).await;
    assert_refused(status, &body, "filters", &["cycle", "flag `a`", "flag `b`"]);

    let (status, body) = import(&server, &json!([{"key": "lonely", "filters": depends_on("nobody")}])).await;
    assert_refused(status, &body, "filters", &["flag `lonely`", "nobody", "does not exist"]);

    // Bad input is a 400, never a 503: a cohort that does not compile, a flag that is no object.
    let (status, body) = import(&server, &json!({"flags": [], "cohorts": {"3": {"type": "XOR", "values": []}}})).await;
    assert_refused(status, &body, "cohorts", &["cohort 3"]);
    let (status, body) = import(&server, &json!({"flags": [42]})).await;
    assert_refused(status, &body, "flags", &["flag 1"]);

    // All or nothing: not one of the refused flags or cohorts was stored.
    assert_eq!(stored_keys(&server).await, ["kept"]);
    let definitions: Value = server.client.get(format!("{}/flags/definitions", server.url)).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
    assert_eq!(definitions["cohorts"], json!({}));
    let answer = evaluate(&server, "user_1").await;
    assert_eq!(answer["flags"]["kept"]["enabled"], true);
    assert_eq!(answer["errorsWhileComputingFlags"], false);
}

#[tokio::test]
async fn import_of_300_dependent_flags_is_atomic_and_order_free() {
    let server = TestServer::start().await;
    // 300 flags, each depending on up to three of the 30 before it, listed in reverse order so
    // that every flag comes before its dependencies. (Timing, printed, not asserted: ~80 ms for
    // the whole request in a debug build on the development VM. Validation is one pass over the
    // project; it used to recompute every chain of the project once per imported flag.)
    let mut flags: Vec<Value> = (0..300)
        .map(|i: usize| {
            let properties: Vec<Value> = [7, 13, 29]
                .iter()
                .filter(|&&step| i >= step && (i / step).is_multiple_of(2))
                .map(|step| json!({"key": format!("dep_{}", i - step), "type": "flag", "operator": "flag_evaluates_to", "value": true}))
                .collect();
            json!({"key": format!("dep_{i}"), "filters": {"groups": [{"properties": properties, "rollout_percentage": 100}]}})
        })
        .collect();
    flags.reverse();
    let started = Instant::now();
    let (status, body) = import(&server, &json!({"flags": flags.clone()})).await;
    eprintln!("imported 300 dependent flags in {:?}", started.elapsed());
    assert_eq!((status, &body), (200, &json!({"created": 300, "updated": 0})));
    let answer = evaluate(&server, "user_1").await;
    assert_eq!(answer["flags"].as_object().unwrap().len(), 300);
    assert!(answer["flags"].as_object().unwrap().values().all(|f| f["enabled"] == true), "{answer}");
    let definitions: Value = server.client.get(format!("{}/flags/definitions", server.url)).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
    let served = definitions["flags"].as_array().unwrap().iter().find(|f| f["key"] == "dep_299").unwrap();
    assert!(!served["filters"]["groups"][0]["properties"][0]["dependency_chain"].as_array().unwrap().is_empty());

    // Importing them again updates them all; one bad flag among them and none is changed.
    let (status, body) = import(&server, &json!({"flags": flags.clone()})).await;
    assert_eq!((status, &body), (200, &json!({"created": 0, "updated": 300})));
    flags[150] = json!({"key": "dep_149", "active": false, "filters": depends_on("dep_149")});
    flags.push(json!({"key": "brand_new", "filters": everyone()}));
    let (status, body) = import(&server, &json!({"flags": flags})).await;
    assert_refused(status, &body, "filters", &["dep_149", "cycle"]);
    assert!(!stored_keys(&server).await.contains(&"brand_new".to_owned()));
    let flag: Value = server.client.get(format!("{}/api/projects/@current/feature_flags/dep_149/", server.url)).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
    assert_eq!((flag["version"].as_i64(), flag["active"].as_bool()), (Some(2), Some(true)));
}

#[tokio::test]
async fn management_api_refuses_cycles_and_chains_past_the_limit() {
    let server = TestServer::start().await;
    // A chain exactly at the limit, created from the bottom up.
    let mut flags = chain(MAX_DEPENDENCY_DEPTH + 1);
    flags.reverse();
    for flag in flags {
        let (status, body) = create(&server, flag).await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = create(&server, json!({"key": "top", "filters": depends_on("f0")})).await;
    assert_refused(status, &body, "filters", &["flag `top`", "deeper than"]);

    // Lengthening the chain from below is refused too, naming the flag it breaks.
    assert_eq!(create(&server, json!({"key": "below", "filters": everyone()})).await.0, 201);
    let bottom = format!("{}/api/projects/@current/feature_flags/f{MAX_DEPENDENCY_DEPTH}/", server.url);
    let response = server.client.patch(&bottom).bearer_auth(SECRET).json(&json!({"filters": depends_on("below")})).send().await.unwrap();
    let status = response.status().as_u16();
    assert_refused(status, &response.json().await.unwrap(), "filters", &["flag `f0`", "deeper than"]);

    // A flag that depends on itself.
    let (status, body) = create(&server, json!({"key": "selfish", "filters": depends_on("selfish")})).await;
    assert_refused(status, &body, "filters", &["flag `selfish`", "cycle"]);
    let answer = evaluate(&server, "user_1").await;
    assert_eq!(answer["flags"]["f0"]["enabled"], true);
    assert!(answer["flags"].get("top").is_none() && answer["flags"].get("selfish").is_none());
}

/// A fake upstream PostHog: a real HTTP server answering local evaluation with whatever
/// snapshot the test set last.
struct FakeUpstream {
    url: String,
    snapshot: Arc<Mutex<String>>,
}

impl FakeUpstream {
    async fn start(snapshot: Value) -> FakeUpstream {
        let shared = Arc::new(Mutex::new(snapshot.to_string()));
        let served = shared.clone();
        let app = axum::Router::new().route(
            "/api/feature_flag/local_evaluation/",
            axum::routing::get(move || {
                let body = served.lock().unwrap().clone();
                async move { ([("content-type", "application/json")], body) }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await });
        FakeUpstream { url, snapshot: shared }
    }

    fn serve(&self, snapshot: Value) {
        *self.snapshot.lock().unwrap() = snapshot.to_string();
    }
}

/// As PostHog's local evaluation serves flags: ids, and dependency chains.
fn posthog_flag(id: usize, key: &str, filters: Value) -> Value {
    json!({"id": id, "team_id": 1, "key": key, "name": "", "active": true, "deleted": false, "filters": filters})
}

fn posthog_chain(length: usize) -> Vec<Value> {
    (0..length)
        .map(|i| {
            let filters = if i + 1 < length {
                let next = format!("f{}", i + 1);
                json!({"groups": [{"properties": [{"key": next, "type": "flag", "operator": "flag_evaluates_to", "value": true, "dependency_chain": [next]}], "rollout_percentage": 100}]})
            } else {
                everyone()
            };
            posthog_flag(i + 1, &format!("f{i}"), filters)
        })
        .collect()
}

#[tokio::test]
async fn upstream_snapshots_that_fail_validation_keep_the_last_good_one() {
    let good = json!({"flags": [posthog_flag(1, "good", everyone())], "group_type_mapping": {}, "cohorts": {}});
    let upstream = FakeUpstream::start(good).await;
    let url = upstream.url.clone();
    let mirror = TestServer::start_with(crate::mirror_of(url)).await;
    wait_until("the mirror serves the good snapshot", async || evaluate_when_ready(&mirror, "user_1").await["flags"]["good"]["enabled"] == true).await;

    let refusals = [
        ("dependency_cycle_cohort", json!({"flags": [posthog_flag(2, "in_seven", in_cohort_seven())], "group_type_mapping": {}, "cohorts": {"7": self_referencing_cohort()}})),
        ("dependency_too_deep", json!({"flags": posthog_chain(20_000), "group_type_mapping": {}, "cohorts": {}})),
        ("invalid_json", json!("{\"flags\": [")),
    ];
    for (reason, snapshot) in refusals {
        match snapshot {
            Value::String(text) => *upstream.snapshot.lock().unwrap() = text,
            other => upstream.serve(other),
        }
        let counted = format!("switchyard_flags_upstream_rejected_total{{reason=\"{reason}\"}}");
        wait_until(&format!("{reason} is counted"), async || mirror.metrics().await.lines().any(|l| l.starts_with(&counted) && !l.ends_with(" 0"))).await;
        let answer = evaluate(&mirror, "user_1").await;
        assert_eq!(answer["flags"]["good"]["enabled"], true, "{reason}: the last good snapshot is served");
        assert_eq!(answer["flags"].as_object().unwrap().len(), 1, "{reason}");
        assert_eq!(answer["flagsSnapshot"]["stale"], true, "{reason}");
    }
    // Nor was a refused snapshot persisted: a restart serves the last good one.
    let dir = mirror.stop().await;
    let url = upstream.url.clone();
    let restarted = TestServer::start_in(dir, move |c| {
        c.upstream.url = Some(url);
        c.upstream.personal_api_key = Some(SECRET.into());
        c.upstream.poll_interval_secs = 3600;
        c.upstream.allow_insecure_http = true;
    })
    .await;
    assert_eq!(evaluate(&restarted, "user_1").await["flags"]["good"]["enabled"], true);

    // A sound snapshot is swapped in again.
    upstream.serve(json!({"flags": [posthog_flag(1, "good", everyone()), posthog_flag(3, "newer", depends_on_posthog("good"))], "group_type_mapping": {}, "cohorts": {}}));
    let url = upstream.url.clone();
    let dir = restarted.stop().await;
    let polling = TestServer::start_in(dir, move |c| {
        c.upstream.url = Some(url);
        c.upstream.personal_api_key = Some(SECRET.into());
        c.upstream.poll_interval_secs = 1;
        c.upstream.allow_insecure_http = true;
    })
    .await;
    wait_until("the newer snapshot is served", async || evaluate_when_ready(&polling, "user_1").await["flags"]["newer"]["enabled"] == true).await;
}

fn depends_on_posthog(key: &str) -> Value {
    json!({"groups": [{"properties": [{"key": key, "type": "flag", "operator": "flag_evaluates_to", "value": true, "dependency_chain": [key]}], "rollout_percentage": 100}]})
}

#[tokio::test]
async fn definitions_planted_by_an_older_version_cannot_crash_flags() {
    // A store as an older version left it: a 20,000-deep chain, a cohort that refers to itself,
    // two flags depending on each other, all written straight into control.db.
    let server = TestServer::start().await;
    let dir = server.stop().await;
    {
        let db = rusqlite::Connection::open(dir.path().join("control.db")).unwrap();
        let tx = db.unchecked_transaction().unwrap();
        let plant = |key: &str, filters: Value| {
            let definition = json!({"name": "", "active": true, "ensure_experience_continuity": false, "filters": filters});
            tx.execute(
                "INSERT INTO feature_flags (project_id, key, definition, version, deleted, created_at, updated_at) VALUES (1, ?1, ?2, 1, 0, '2025-01-01T00:00:00Z', '2025-01-01T00:00:00Z')",
                rusqlite::params![key, definition.to_string()],
            )
            .unwrap();
        };
        for flag in chain(20_000) {
            plant(flag["key"].as_str().unwrap(), flag["filters"].clone());
        }
        plant("in_seven", in_cohort_seven());
        plant("ping", depends_on("pong"));
        plant("pong", depends_on("ping"));
        plant("kept", everyone());
        tx.execute("INSERT INTO cohorts (project_id, id, definition) VALUES (1, 7, ?1)", [self_referencing_cohort().to_string()]).unwrap();
        tx.commit().unwrap();
    }
    let server = TestServer::start_in(dir, |_| {}).await;
    for distinct_id in ["user_1", "user_2"] {
        let answer = evaluate(&server, distinct_id).await;
        let flags = &answer["flags"];
        assert_eq!(flags["kept"]["enabled"], true);
        assert_eq!(answer["errorsWhileComputingFlags"], true);
        assert_eq!((flags["f0"]["enabled"].as_bool(), flags["f0"]["reason"]["code"].as_str()), (Some(false), Some("dependency_too_deep")));
        assert_eq!(flags["f19990"]["enabled"], true, "within the limit, the chain evaluates");
        assert_eq!(flags["in_seven"]["reason"]["code"], "dependency_cycle_cohort");
        assert_eq!(flags["ping"]["reason"]["code"], "dependency_cycle_flag");
    }
    // Only the flags asked for, OFREP and local evaluation answer too.
    let some = server
        .client
        .post(format!("{}/flags/?v=2", server.url))
        .json(&json!({"token": TOKEN, "distinct_id": "u", "flag_keys_to_evaluate": ["f0", "kept"]}))
        .send()
        .await
        .unwrap();
    let some: Value = some.json().await.unwrap();
    assert_eq!((some["flags"]["f0"]["enabled"].as_bool(), some["flags"]["kept"]["enabled"].as_bool()), (Some(false), Some(true)));
    let ofrep = server.client.post(format!("{}/ofrep/v1/evaluate/flags/in_seven", server.url)).bearer_auth(TOKEN).json(&json!({"context": {"targetingKey": "u"}})).send().await.unwrap();
    assert_eq!(ofrep.status(), 200);
    assert_eq!(ofrep.json::<Value>().await.unwrap()["reason"], "ERROR");
    let definitions = server.client.get(format!("{}/flags/definitions", server.url)).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(definitions.status(), 200);
    // The broken definitions do not stop changes to the others.
    assert_eq!(create(&server, json!({"key": "added_later", "filters": depends_on("kept")})).await.0, 201);
    assert_eq!(evaluate(&server, "user_1").await["flags"]["added_later"]["enabled"], true);
    assert_eq!(server.client.get(format!("{}/_liveness", server.url)).send().await.unwrap().status(), 200);
}

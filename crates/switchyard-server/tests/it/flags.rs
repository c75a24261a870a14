//! Feature flags over HTTP: management (validation, versions, soft delete, audit), evaluation
//! in every response shape, local evaluation definitions, OpenFeature OFREP.

use serde_json::{json, Value};

use crate::{TestServer, SECRET, TOKEN};

const EXAMPLE: &str = include_str!("../../../../examples/platform-flags.json");

async fn import_example(server: &TestServer) {
    let response = server
        .client
        .post(format!("{}/api/projects/@current/feature_flags/import/", server.url))
        .bearer_auth(SECRET)
        .body(EXAMPLE)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

async fn flags(server: &TestServer, path: &str, body: Value) -> (u16, Value) {
    let response = server.client.post(format!("{}{path}", server.url)).json(&body).send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn platform_flags_evaluate_in_every_response_shape() {
    let server = TestServer::start().await;
    import_example(&server).await;
    let request = json!({"token": TOKEN, "distinct_id": "user_42", "groups": {"workspace": "ws_1"},
                         "person_properties": {"email": "dev@acme.io"}});

    let (status, v2) = flags(&server, "/flags/?v=2", request.clone()).await;
    assert_eq!(status, 200);
    let f = &v2["flags"];
    assert_eq!(f["track_model_costs"]["enabled"], true);
    assert_eq!(f["track_model_costs"]["reason"]["code"], "condition_match");
    assert_eq!(f["track_model_costs"]["reason"]["description"], "Matched condition set 1");
    assert_eq!(f["track_model_costs"]["metadata"]["payload"], "{\"pricing_version\":\"2026-11\"}");
    assert_eq!(f["versioned_rag_tracking"]["variant"], "v2", "the condition's variant override");
    assert_eq!(f["agent_debugger_ui"]["enabled"], true);
    assert_eq!(f["enable_guardrails_tracing"]["enabled"], true);
    assert_eq!(v2["errorsWhileComputingFlags"], false);

    // Another workspace, not on a paid plan: the group flag is off; no group at all: no_group_type.
    let (_, other) = flags(&server, "/flags/?v=2", json!({"token": TOKEN, "distinct_id": "u9", "groups": {"workspace": "ws_9"},
                                                      "group_properties": {"workspace": {"plan": "free"}}})).await;
    assert_eq!(other["flags"]["track_model_costs"]["enabled"], false);
    assert_eq!(other["flags"]["track_model_costs"]["reason"]["code"], "no_condition_match");
    assert_eq!(other["flags"]["agent_debugger_ui"]["enabled"], false);
    let (_, none) = flags(&server, "/flags/?v=2", json!({"token": TOKEN, "distinct_id": "u9"})).await;
    assert_eq!(none["flags"]["track_model_costs"]["reason"]["code"], "no_group_type");

    // Legacy shapes.
    let (_, v3) = flags(&server, "/decide/?v=3", request.clone()).await;
    assert_eq!(v3["featureFlags"]["versioned_rag_tracking"], "v2");
    assert_eq!(v3["featureFlagPayloads"]["versioned_rag_tracking"], "{\"index_version\":\"v2\"}");
    assert!(v3["supportedCompression"].is_array(), "decide includes the remote config");
    let (_, decide_v2) = flags(&server, "/decide/?v=2", json!({"token": TOKEN, "distinct_id": "u9"})).await;
    assert!(decide_v2["featureFlags"].get("agent_debugger_ui").is_none(), "v2 lists enabled flags only");
    let (_, decide_v1) = flags(&server, "/decide/", json!({"token": TOKEN, "distinct_id": "user_42"})).await;
    assert!(decide_v1["featureFlags"].as_array().unwrap().contains(&json!("agent_debugger_ui")));

    // Only the flags asked for.
    let (_, some) = flags(&server, "/flags/?v=2", json!({"token": TOKEN, "distinct_id": "user_42", "flag_keys_to_evaluate": ["agent_debugger_ui"]})).await;
    assert_eq!(some["flags"].as_object().unwrap().len(), 1);

    // Errors as PostHog's.
    let (status, body) = flags(&server, "/flags/?v=2", json!({"token": "phc_nobody", "distinct_id": "u"})).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("invalid_token")));
    let (status, body) = flags(&server, "/flags/?v=2", json!({"distinct_id": "u"})).await;
    assert_eq!((status, body["code"].as_str()), (401, Some("missing_token")));
    let (status, body) = flags(&server, "/flags/?v=2", json!({"token": TOKEN})).await;
    assert_eq!((status, body["code"].as_str()), (400, Some("missing_distinct_id")));

    let metrics = server.metrics().await;
    assert!(metrics.contains("switchyard_flag_evaluations_total{flag=\"versioned_rag_tracking\",variant=\"v2\"}"), "{metrics}");
}

#[tokio::test]
async fn management_validates_versions_and_audits() {
    let server = TestServer::start().await;
    let base = format!("{}/api/projects/@current/feature_flags/", server.url);
    let post = |body: Value| server.client.post(&base).bearer_auth(SECRET).json(&body).send();

    let created = post(json!({"key": "beta_agents", "name": "Beta agents", "filters": {"groups": [{"properties": [], "rollout_percentage": 30}]}})).await.unwrap();
    assert_eq!(created.status(), 201);
    let flag: Value = created.json().await.unwrap();
    assert_eq!(flag["version"], 1);
    let id = flag["id"].as_i64().unwrap();

    for (body, attr, needle) in [
        (json!({"key": "beta_agents"}), "key", "already a feature flag"),
        (json!({"key": "bad key!"}), "key", "letters, numbers"),
        (json!({"key": "x", "filters": {"groups": [{"properties": [], "rollout_percentage": 150}]}}), "filters", "outside 0–100"),
        (json!({"key": "x", "filters": {"groups": [], "multivariate": {"variants": [{"key": "a", "rollout_percentage": 50}, {"key": "b", "rollout_percentage": 40}]}}}), "filters", "sum to 100"),
        (json!({"key": "x", "filters": {"groups": [{"properties": [{"key": "plan", "operator": "almost", "value": "pro"}]}]}}), "filters", "unknown operator `almost`"),
        (json!({"key": "x", "filters": {"groups": [{"properties": [{"key": "age", "operator": "gt", "value": "old"}]}]}}), "filters", "not a finite number"),
        (json!({"key": "x", "filters": {"groups": [{"properties": [{"key": "nope", "type": "flag", "operator": "flag_evaluates_to", "value": true}]}]}}), "filters", "does not exist"),
    ] {
        let response = post(body.clone()).await.unwrap();
        assert_eq!(response.status(), 400, "{body}");
        let error: Value = response.json().await.unwrap();
        assert_eq!(error["attr"], attr, "{error}");
        assert!(error["detail"].as_str().unwrap().contains(needle), "{error} should mention {needle}");
    }

    // A dependency cycle: a → b, then b → a.
    let dep = |on: &str| json!({"groups": [{"properties": [{"key": on, "type": "flag", "operator": "flag_evaluates_to", "value": true}]}]});
    assert_eq!(post(json!({"key": "a", "filters": {"groups": []}})).await.unwrap().status(), 201);
    assert_eq!(post(json!({"key": "b", "filters": dep("a")})).await.unwrap().status(), 201);
    let cycle = server.client.patch(format!("{base}a/")).bearer_auth(SECRET).json(&json!({"filters": dep("b")})).send().await.unwrap();
    assert_eq!(cycle.status(), 400);
    assert!(cycle.text().await.unwrap().contains("cycle"));

    // Optimistic concurrency.
    let update = |version: i64, active: bool| {
        server.client.patch(format!("{base}{id}/")).bearer_auth(SECRET).json(&json!({"version": version, "active": active})).send()
    };
    let ok = update(1, false).await.unwrap();
    assert_eq!(ok.status(), 200);
    let updated: Value = ok.json().await.unwrap();
    assert_eq!((updated["version"].as_i64(), updated["active"].as_bool()), (Some(2), Some(false)));
    let stale = update(1, true).await.unwrap();
    assert_eq!(stale.status(), 409);

    // Soft delete.
    let deleted = server.client.delete(format!("{base}beta_agents/")).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_eq!(server.client.get(format!("{base}beta_agents/")).bearer_auth(SECRET).send().await.unwrap().status(), 404);
    let by_id: Value = server.client.get(format!("{base}{id}/")).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
    assert_eq!(by_id["deleted"], true);
    let list: Value = server.client.get(&base).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
    assert!(list["results"].as_array().unwrap().iter().all(|f| f["key"] != "beta_agents"));
    // The key can be reused once deleted.
    assert_eq!(post(json!({"key": "beta_agents"})).await.unwrap().status(), 201);

    // Audit log: who, when, before and after.
    let audit: Value = server.client.get(format!("{base}{id}/activity/")).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
    let actions: Vec<&str> = audit["results"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["deleted", "updated", "created"]);
    let change = &audit["results"][1];
    assert_eq!((change["before"]["active"].as_bool(), change["after"]["active"].as_bool()), (Some(true), Some(false)));
    assert!(change["key_id"].as_i64().is_some() && change["at"].as_str().is_some());

    // A public token cannot manage flags.
    let public = server.client.get(&base).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(public.status(), 401);
}

#[tokio::test]
async fn local_evaluation_definitions_with_etag() {
    let server = TestServer::start().await;
    import_example(&server).await;
    for path in [format!("/flags/definitions?token={TOKEN}&send_cohorts"), "/api/feature_flag/local_evaluation/?send_cohorts".to_owned()] {
        let response = server.client.get(format!("{}{path}", server.url)).bearer_auth(SECRET).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let etag = response.headers()["etag"].to_str().unwrap().to_owned();
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["flags"].as_array().unwrap().len(), 4);
        assert_eq!(body["group_type_mapping"]["0"], "workspace");
        assert!(body["cohorts"].is_object());
        let again = server.client.get(format!("{}{path}", server.url)).bearer_auth(SECRET).header("if-none-match", &etag).send().await.unwrap();
        assert_eq!(again.status(), 304);
        let public = server.client.get(format!("{}{path}", server.url)).bearer_auth(TOKEN).send().await.unwrap();
        assert_eq!(public.status(), 401, "a public token cannot read definitions");
    }
}

#[tokio::test]
async fn openfeature_remote_evaluation() {
    let server = TestServer::start().await;
    import_example(&server).await;
    let ofrep = |path: &str, token: &str, body: Value| {
        server.client.post(format!("{}/ofrep/v1/evaluate/flags{path}", server.url)).bearer_auth(token).json(&body).send()
    };
    let ctx = json!({"context": {"targetingKey": "user_42", "email": "dev@acme.io", "groups": {"workspace": "ws_1"}}});
    let single: Value = ofrep("/versioned_rag_tracking", TOKEN, ctx.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(single["value"], "v2");
    assert_eq!(single["variant"], "v2");
    assert_eq!(single["reason"], "TARGETING_MATCH", "a condition's fixed variant");
    let split: Value = ofrep("/versioned_rag_tracking", TOKEN, json!({"context": {"targetingKey": "user_1"}})).await.unwrap().json().await.unwrap();
    if split["value"].is_string() {
        assert_eq!(split["reason"], "SPLIT", "a variant from the hash split: {split}");
    }
    assert_eq!(single["metadata"]["payload"], "{\"index_version\":\"v2\"}");
    let boolean: Value = ofrep("/agent_debugger_ui", TOKEN, ctx.clone()).await.unwrap().json().await.unwrap();
    assert_eq!((boolean["value"].as_bool(), boolean["reason"].as_str()), (Some(true), Some("TARGETING_MATCH")));
    let off: Value = ofrep("/agent_debugger_ui", TOKEN, json!({"context": {"targetingKey": "u9"}})).await.unwrap().json().await.unwrap();
    assert_eq!((off["value"].as_bool(), off["reason"].as_str()), (Some(false), Some("DEFAULT")));

    let missing = ofrep("/no_such_flag", TOKEN, ctx.clone()).await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(missing.json::<Value>().await.unwrap()["errorCode"], "FLAG_NOT_FOUND");
    let no_key = ofrep("/agent_debugger_ui", TOKEN, json!({"context": {"email": "x"}})).await.unwrap();
    assert_eq!(no_key.status(), 400);
    assert_eq!(no_key.json::<Value>().await.unwrap()["errorCode"], "TARGETING_KEY_MISSING");
    assert_eq!(ofrep("/agent_debugger_ui", "phc_nobody", ctx.clone()).await.unwrap().status(), 401);

    let bulk = ofrep("", TOKEN, ctx.clone()).await.unwrap();
    assert_eq!(bulk.status(), 200);
    let etag = bulk.headers()["etag"].to_str().unwrap().to_owned();
    let body: Value = bulk.json().await.unwrap();
    assert_eq!(body["flags"].as_array().unwrap().len(), 4);
    let cached = server
        .client
        .post(format!("{}/ofrep/v1/evaluate/flags", server.url))
        .bearer_auth(TOKEN)
        .header("if-none-match", etag)
        .json(&ctx)
        .send()
        .await
        .unwrap();
    assert_eq!(cached.status(), 304);
}

//! A project's own model prices: the API, and `$ai_generation` events costed from them.

use serde_json::{json, Value};

use crate::{TestServer, SECRET, TOKEN};

async fn call(server: &TestServer, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut request = server.client.request(method, format!("{}/api/projects/@current/model_prices/{path}", server.url)).bearer_auth(SECRET);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

async fn generation(server: &TestServer, model: &str, trace: &str) -> Value {
    let body = json!({"api_key": TOKEN, "batch": [{"event": "$ai_generation", "distinct_id": "u", "properties": {
        "$ai_model": model, "$ai_provider": "openai", "$ai_input_tokens": 1000, "$ai_output_tokens": 100, "$ai_trace_id": trace}}]});
    let response = server.client.post(format!("{}/batch/", server.url)).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let events = server.events(&format!("event=$ai_generation&trace_id={trace}")).await;
    assert_eq!(events.len(), 1, "{events:?}");
    events[0]["properties"].clone()
}

#[tokio::test]
async fn project_prices_cost_their_models() {
    let server = TestServer::start().await;

    let (status, created) = call(
        &server,
        reqwest::Method::POST,
        "",
        Some(json!({"model": "my-finetune", "input_cost_per_token": "0.000002", "output_cost_per_token": 8e-6, "provider": "openai"})),
    )
    .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!((created["input_cost_per_token"].clone(), created["output_cost_per_token"].clone()), (json!("0.000002"), json!("0.000008")));
    assert_eq!(created["provider"], "openai");

    let p = generation(&server, "my-finetune", "t1").await;
    assert_eq!(p["$ai_cost_model_source"], "project", "{p:#}");
    assert_eq!(p["$ai_input_cost_usd"], json!(0.002));
    assert_eq!(p["$ai_output_cost_usd"], json!(0.0008));
    assert_eq!(p["$ai_total_cost_usd"], json!(0.0028));
    assert!(p["$ai_cost_table_version"].as_str().unwrap().starts_with("project-"), "{p:#}");

    // A model in neither table stays uncosted; one only in LiteLLM's is costed from it.
    let p = generation(&server, "nobody-knows-this-model", "t2").await;
    assert!(p.get("$ai_total_cost_usd").is_none_or(Value::is_null), "{p:#}");
    let p = generation(&server, "gpt-4o-mini", "t3").await;
    assert_eq!(p["$ai_cost_model_source"], "litellm");

    // Replacing a price takes effect at once.
    let (status, _) =
        call(&server, reqwest::Method::POST, "", Some(json!({"model": "my-finetune", "input_cost_per_token": 0.000001, "output_cost_per_token": "0"}))).await;
    assert_eq!(status, 201);
    let (status, list) = call(&server, reqwest::Method::GET, "", None).await;
    assert_eq!(status, 200);
    let results = list["results"].as_array().unwrap();
    assert_eq!(results.len(), 1, "{list}");
    assert_eq!((results[0]["model"].clone(), results[0]["input_cost_per_token"].clone(), results[0]["provider"].clone()), (json!("my-finetune"), json!("0.000001"), Value::Null));
    let p = generation(&server, "my-finetune", "t4").await;
    assert_eq!(p["$ai_total_cost_usd"], json!(0.001));

    // Invalid bodies: 400 naming the field.
    for (body, field) in [
        (json!({"model": "m", "input_cost_per_token": "-0.1", "output_cost_per_token": 0}), "input_cost_per_token"),
        (json!({"model": "m", "input_cost_per_token": 0, "output_cost_per_token": "lots"}), "output_cost_per_token"),
        (json!({"model": "m", "input_cost_per_token": 0}), "output_cost_per_token"),
        (json!({"model": "", "input_cost_per_token": 0, "output_cost_per_token": 0}), "model"),
        (json!({"model": "m", "input_cost_per_token": 0, "output_cost_per_token": 0, "cache_read_input_token_cost": true}), "cache_read_input_token_cost"),
        (json!({"model": "m", "input_cost_per_token": 0, "output_cost_per_token": 0, "price": 1}), "price"),
        (json!(["m"]), "body"),
    ] {
        let (status, answer) = call(&server, reqwest::Method::POST, "", Some(body.clone())).await;
        assert_eq!((status, answer["attr"].as_str()), (400, Some(field)), "{body} → {answer}");
    }

    // Another project's key cannot reach these; no key at all is refused.
    let response = server.client.get(format!("{}/api/projects/@current/model_prices/", server.url)).send().await.unwrap();
    assert_eq!(response.status(), 401);

    // Deleting: the model falls back to uncosted.
    let (status, _) = call(&server, reqwest::Method::DELETE, "my-finetune/", None).await;
    assert_eq!(status, 204);
    let (status, _) = call(&server, reqwest::Method::DELETE, "my-finetune/", None).await;
    assert_eq!(status, 404);
    let p = generation(&server, "my-finetune", "t5").await;
    assert!(p.get("$ai_total_cost_usd").is_none_or(Value::is_null), "{p:#}");
    let (_, list) = call(&server, reqwest::Method::GET, "", None).await;
    assert_eq!(list["results"], json!([]));
}

#[tokio::test]
async fn project_prices_survive_a_restart_and_names_with_slashes_work() {
    let server = TestServer::start().await;
    let (status, _) = call(
        &server,
        reqwest::Method::POST,
        "",
        Some(json!({"model": "acme/tuned-1", "input_cost_per_token": "0.000003", "output_cost_per_token": "0.000004"})),
    )
    .await;
    assert_eq!(status, 201);
    let dir = server.stop().await;
    let server = TestServer::start_in(dir, |_| {}).await;
    let p = generation(&server, "acme/tuned-1", "r1").await;
    assert_eq!((p["$ai_cost_model_source"].clone(), p["$ai_total_cost_usd"].clone()), (json!("project"), json!(0.0034)), "{p:#}");
    let (status, _) = call(&server, reqwest::Method::DELETE, "acme%2Ftuned-1/", None).await;
    assert_eq!(status, 204);
    let (_, list) = call(&server, reqwest::Method::GET, "", None).await;
    assert_eq!(list["results"], json!([]));
}

#[tokio::test]
async fn configured_prices_cost_every_project_under_its_own() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("custom-prices.json");
    std::fs::write(
        &file,
        json!({"our-router": {"input_cost_per_token": 1e-6, "output_cost_per_token": 2e-6, "litellm_provider": "openai", "mode": "chat"},
               "my-finetune": {"input_cost_per_token": 5e-6, "output_cost_per_token": 5e-6, "litellm_provider": "openai", "mode": "chat"}})
        .to_string(),
    )
    .unwrap();
    let server = TestServer::start_with(|c| c.llm.custom_prices_file = Some(file.clone())).await;
    let routed = generation(&server, "our-router", "cfg-1").await;
    assert_eq!(routed["$ai_cost_model_source"], "project");
    assert_eq!(routed["$ai_total_cost_usd"].as_f64().unwrap(), 0.0012, "1000 × 1e-6 + 100 × 2e-6, exactly");
    // The project's own price for a model wins over the configured one.
    let (status, _) = call(&server, reqwest::Method::POST, "", Some(json!({"model": "my-finetune", "input_cost_per_token": "0.000002", "output_cost_per_token": "0.000008"}))).await;
    assert_eq!(status, 201);
    let tuned = generation(&server, "my-finetune", "cfg-2").await;
    assert!((tuned["$ai_total_cost_usd"].as_f64().unwrap() - 0.0028).abs() < 1e-15, "{tuned}");
    let still = generation(&server, "our-router", "cfg-3").await;
    assert_eq!(still["$ai_cost_model_source"], "project", "configured prices stay under the project's");
    // A broken file is refused at start, naming the setting.
    std::fs::write(&file, "[1, 2]").unwrap();
    let mut config = switchyard_server::Config { data_dir: dir.path().join("data"), ..switchyard_server::Config::default() };
    config.llm.custom_prices_file = Some(file.clone());
    let error = switchyard_server::AppState::open(config).err().expect("refused").to_string();
    assert!(error.contains("llm.custom_prices_file"), "{error}");
}

//! Keys and the edges browsers and proxies reach: configured keys are authoritative (rotation
//! by configuration), the keys API (create, list without secrets, revoke at once), the secret
//! key rules, `X-Forwarded-For` only from trusted proxies, CORS only on browser routes, and an
//! OFREP ETag that follows stored person properties.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use switchyard_server::Config;

use crate::{TestServer, SECRET, TOKEN, WRITE_KEY};

const NEW_SECRET: &str = "phs_rotated_secret_key_0123456789abcdef";

impl TestServer {
    async fn keys_api(&self, method: Method, path: &str, secret: &str, body: Option<Value>) -> (StatusCode, Value, String) {
        let mut request = self.client.request(method, format!("{}/api/projects/@current/keys/{path}", self.url)).bearer_auth(secret);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.unwrap();
        let status = response.status();
        let text = response.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null), text)
    }

    async fn capture_status(&self, token: &str) -> StatusCode {
        let body = json!({"api_key": token, "event": "e", "distinct_id": "d"});
        self.client.post(format!("{}/i/v0/e/", self.url)).json(&body).send().await.unwrap().status()
    }
}

#[tokio::test]
async fn keys_rotation_by_configuration_revokes_the_old_keys() {
    let server = TestServer::start().await;
    assert_eq!(server.keys_api(Method::GET, "", SECRET, None).await.0, 200);
    let dir = server.stop().await;

    let server = TestServer::start_in(dir, |c| {
        c.secret_key = Some(NEW_SECRET.into());
        c.project_token = Some("phc_rotated_token".into());
    })
    .await;
    assert_eq!(server.keys_api(Method::GET, "", SECRET, None).await.0, 401, "the old secret key is revoked");
    let (status, list, _) = server.keys_api(Method::GET, "", NEW_SECRET, None).await;
    assert_eq!(status, 200);
    assert_eq!(server.capture_status(TOKEN).await, 401, "the old project token is revoked");
    assert_eq!(server.capture_status("phc_rotated_token").await, 200);
    let old_secret = list["results"].as_array().unwrap().iter().find(|k| k["kind"] == "secret_key" && k["prefix"] == SECRET[..8]).unwrap();
    assert_eq!(old_secret["active"], false);
    assert!(old_secret["revoked_at"].is_string());
    let dir = server.stop().await;

    // Configuring the old key again does not bring it back.
    let server = TestServer::start_in(dir, |_| {}).await;
    assert_eq!(server.keys_api(Method::GET, "", SECRET, None).await.0, 401);
}

#[tokio::test]
async fn keys_api_creates_lists_without_secrets_and_revokes_at_once() {
    let server = TestServer::start().await;
    let (status, created, _) = server.keys_api(Method::POST, "", SECRET, Some(json!({"kind": "secret_key"}))).await;
    assert_eq!(status, 201, "{created}");
    let new_secret = created["key"].as_str().unwrap().to_owned();
    assert!(new_secret.starts_with("phs_") && new_secret.len() >= 32, "{new_secret}");
    assert_eq!(created["origin"], "api");
    assert_eq!(created["prefix"], &new_secret[..8]);

    let (status, list, text) = server.keys_api(Method::GET, "", &new_secret, None).await;
    assert_eq!(status, 200);
    assert!(!text.contains(&new_secret) && !text.contains(SECRET), "a listing never shows a secret: {text}");
    let kinds: Vec<&str> = list["results"].as_array().unwrap().iter().map(|k| k["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["project_token", "write_key", "secret_key", "secret_key"]);
    let configured = list["results"][2]["id"].as_i64().unwrap();

    // Revoking the configured secret key with the new one: 401 on the very next request.
    let (status, revoked, _) = server.keys_api(Method::DELETE, &format!("{configured}/"), &new_secret, None).await;
    assert_eq!(status, 200, "{revoked}");
    assert_eq!(revoked["active"], false);
    assert_eq!(server.keys_api(Method::GET, "", SECRET, None).await.0, 401);
    let events = server.client.get(format!("{}/api/projects/@current/events/", server.url)).bearer_auth(SECRET).send().await.unwrap();
    assert_eq!(events.status(), 401);

    // The last active secret key stays.
    let created_id = created["id"].as_i64().unwrap();
    let (status, refused, _) = server.keys_api(Method::DELETE, &format!("{created_id}/"), &new_secret, None).await;
    assert_eq!(status, 400);
    assert_eq!(refused["code"], "last_secret_key");
    assert_eq!(server.keys_api(Method::DELETE, "999/", &new_secret, None).await.0, 404);

    // Public keys too: a new write key works, revoked it does not.
    let (status, write_key, _) = server.keys_api(Method::POST, "", &new_secret, Some(json!({"kind": "write_key"}))).await;
    assert_eq!(status, 201);
    let segment = |key: String| {
        server.client.post(format!("{}/v1/track", server.url)).basic_auth(key, Some("")).json(&json!({"userId": "u", "event": "e"})).send()
    };
    assert_eq!(segment(write_key["key"].as_str().unwrap().to_owned()).await.unwrap().status(), 200);
    let id = write_key["id"].as_i64().unwrap();
    assert_eq!(server.keys_api(Method::DELETE, &format!("{id}"), &new_secret, None).await.0, 200);
    assert_eq!(segment(write_key["key"].as_str().unwrap().to_owned()).await.unwrap().status(), 401);
    assert_eq!(segment(WRITE_KEY.to_owned()).await.unwrap().status(), 200);

    // Another project's key cannot be reached through this one.
    let other = server.state.control.create_project("other").unwrap();
    server.state.control.add_key(other, switchyard_store::KeyKind::WriteKey, "other_write_key").unwrap();
    let other_id = server.state.control.list_keys(other).unwrap()[0].id;
    assert_eq!(server.keys_api(Method::DELETE, &format!("{other_id}/"), &new_secret, None).await.0, 404);
    let response = server.client.get(format!("{}/api/projects/{other}/keys/", server.url)).bearer_auth(&new_secret).send().await.unwrap();
    assert_eq!(response.status(), 403);
}

#[tokio::test]
async fn keys_secret_keys_are_long_and_unlike_the_public_keys() {
    let load = |pairs: &[(&str, &str)]| Config::load(None, pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let err = load(&[("SWITCHYARD_SECRET_KEY", "phs_short")]).unwrap_err().to_string();
    assert!(err.contains("secret_key") && err.contains("32"), "{err}");
    assert!(!err.contains("phs_short"), "the error never shows the secret: {err}");
    let long = "phc_0123456789abcdefghijklmnopqrstuvwxyz";
    let err = load(&[("SWITCHYARD_SECRET_KEY", long), ("SWITCHYARD_PROJECT_TOKEN", long)]).unwrap_err().to_string();
    assert!(err.contains("secret_key must differ"), "{err}");
    assert!(load(&[("SWITCHYARD_SECRET_KEY", NEW_SECRET), ("SWITCHYARD_PROJECT_TOKEN", long)]).is_ok());

    let server = TestServer::start().await;
    let create = |body: Value| server.keys_api(Method::POST, "", SECRET, Some(body));
    let (status, refused, _) = create(json!({"kind": "secret_key", "key": "phs_too_short"})).await;
    assert_eq!((status, refused["attr"].as_str()), (StatusCode::BAD_REQUEST, Some("key")), "{refused}");
    assert!(refused["detail"].as_str().unwrap().contains("32"));
    let (status, _, _) = create(json!({"kind": "project_token", "key": long})).await;
    assert_eq!(status, 201);
    let (status, refused, _) = create(json!({"kind": "secret_key", "key": long})).await;
    assert_eq!(status, 400, "a public key's value as a secret key: {refused}");
    let (status, _, _) = create(json!({"kind": "admin"})).await;
    assert_eq!(status, 400);
    let (status, _, _) = create(json!({"kind": "secret_key", "key": NEW_SECRET})).await;
    assert_eq!(status, 201);
}

/// The `request_ip` stored for one capture sent with `X-Forwarded-For: forwarded`.
async fn stored_ip(server: &TestServer, distinct_id: &str, forwarded: &str) -> Value {
    let body = json!({"api_key": TOKEN, "event": "e", "distinct_id": distinct_id});
    let response = server.client.post(format!("{}/i/v0/e/", server.url)).header("x-forwarded-for", forwarded).json(&body).send().await.unwrap();
    assert_eq!(response.status(), 200);
    server.events(&format!("distinct_id={distinct_id}")).await[0]["request_ip"].clone()
}

#[tokio::test]
async fn keys_x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let server = TestServer::start().await;
    assert_eq!(stored_ip(&server, "a", "203.0.113.9").await, "127.0.0.1", "no trusted proxy: the header is ignored");
    let dir = server.stop().await;

    let server = TestServer::start_in(dir, |c| c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap(), "10.0.0.0/8".parse().unwrap()]).await;
    assert_eq!(stored_ip(&server, "b", "203.0.113.9").await, "203.0.113.9");
    // The client wrote its own first hop; the proxies appended the real ones.
    assert_eq!(stored_ip(&server, "c", "198.51.100.1, 203.0.113.9, 10.1.2.3").await, "203.0.113.9");
    assert_eq!(stored_ip(&server, "d", "garbage, 10.1.2.3").await, "10.1.2.3");
    assert_eq!(stored_ip(&server, "e", "[2001:db8::7]:4711").await, "2001:db8::7");

    let err = Config::load(None, [("SWITCHYARD_TRUSTED_PROXIES".to_owned(), "10.0.0.0/8, nonsense".to_owned())]).unwrap_err().to_string();
    assert!(err.contains("trusted_proxies") && err.contains("nonsense"), "{err}");
    let config = Config::load(None, [("SWITCHYARD_TRUSTED_PROXIES".to_owned(), "10.0.0.0/8, ::1".to_owned())]).unwrap();
    assert_eq!(config.trusted_proxies.len(), 2);
}

#[tokio::test]
async fn keys_cors_only_on_browser_routes() {
    let server = TestServer::start().await;
    let origin = "https://app.example.com";
    let send = |method: Method, path: &str| {
        server
            .client
            .request(method, format!("{}{path}", server.url))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .bearer_auth(SECRET)
            .json(&json!({"api_key": TOKEN, "token": TOKEN, "event": "e", "distinct_id": "d"}))
            .send()
    };
    for path in ["/flags/?v=2", "/decide/", "/i/v0/e/", "/e/", "/batch/", "/ofrep/v1/evaluate/flags", "/v1/track", "/array/x/config"] {
        let preflight = send(Method::OPTIONS, path).await.unwrap();
        assert_eq!(preflight.status(), 200, "{path}");
        assert_eq!(preflight.headers()["access-control-allow-origin"], origin, "{path}");
        assert!(preflight.headers().contains_key("access-control-allow-methods"), "{path}");
    }
    for path in ["/flags/?v=2", "/i/v0/e/"] {
        let response = send(Method::POST, path).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert_eq!(response.headers()["access-control-allow-origin"], origin, "{path}");
        assert_eq!(response.headers()["access-control-allow-credentials"], "true");
    }
    for path in ["/api/projects/@current/events/", "/api/projects/@current/keys/", "/metrics", "/flags/definitions", "/api/feature_flag/local_evaluation/", "/_readiness"] {
        let response = send(Method::GET, path).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        assert!(!response.headers().contains_key("access-control-allow-origin"), "{path} has no CORS");
        let preflight = send(Method::OPTIONS, path).await.unwrap();
        assert!(preflight.status() == 405 || preflight.status() == 204, "{path}: {}", preflight.status());
        assert!(!preflight.headers().keys().any(|h| h.as_str().starts_with("access-control-")), "{path}: {:?}", preflight.headers());
    }
}

#[tokio::test]
async fn keys_ofrep_etag_follows_stored_person_properties() {
    let server = TestServer::start().await;
    let example = include_str!("../../../../examples/platform-flags.json");
    let response = server.client.post(format!("{}/api/projects/@current/feature_flags/import/", server.url)).bearer_auth(SECRET).body(example).send().await.unwrap();
    assert_eq!(response.status(), 200);
    let ctx = json!({"context": {"targetingKey": "etag_user"}});
    let bulk = |etag: Option<String>| {
        let mut request = server.client.post(format!("{}/ofrep/v1/evaluate/flags", server.url)).bearer_auth(TOKEN).json(&ctx);
        if let Some(etag) = etag {
            request = request.header("if-none-match", etag);
        }
        request.send()
    };
    let enabled = |body: &Value| body["flags"].as_array().unwrap().iter().find(|f| f["key"] == "agent_debugger_ui").unwrap()["value"].clone();
    let first = bulk(None).await.unwrap();
    let etag = first.headers()["etag"].to_str().unwrap().to_owned();
    assert_eq!(enabled(&first.json().await.unwrap()), false);
    assert_eq!(bulk(Some(etag.clone())).await.unwrap().status(), 304);

    // The person gets the email the flag targets; once the person processor stored it, the
    // old ETag no longer matches.
    let set = json!({"api_key": TOKEN, "event": "$set", "distinct_id": "etag_user", "$set": {"email": "dev@acme.io"}});
    assert_eq!(server.client.post(format!("{}/i/v0/e/", server.url)).json(&set).send().await.unwrap().status(), 200);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let person: Value = server.client.get(format!("{}/api/projects/@current/persons/?distinct_id=etag_user", server.url)).bearer_auth(SECRET).send().await.unwrap().json().await.unwrap();
        if person["results"][0]["properties"]["email"] == "dev@acme.io" {
            break;
        }
        assert!(Instant::now() < deadline, "the person processor did not store the $set: {person}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = bulk(Some(etag.clone())).await.unwrap();
    assert_eq!(after.status(), 200, "not a stale 304");
    let new_etag = after.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag);
    assert_eq!(enabled(&after.json().await.unwrap()), true);
    assert_eq!(bulk(Some(new_etag)).await.unwrap().status(), 304);
}

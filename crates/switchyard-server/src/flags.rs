//! `/flags` and `/decide`: request handling and response shapes as PostHog's, so SDKs start
//! cleanly. Flag definitions and their evaluation come with the feature-flag engine; until a
//! project has flags, every evaluation answers an empty set.

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use switchyard_event::decode::{decode_posthog_body, BodyHints, DecodeLimits};
use switchyard_event::model::id_string;
use switchyard_store::KeyKind;

use crate::AppState;

fn error(status: StatusCode, code: &str, detail: &str) -> Response {
    (status, axum::Json(json!({"type": "validation_error", "code": code, "detail": detail}))).into_response()
}

pub async fn flags(State(state): State<AppState>, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let decide = uri.path().starts_with("/decide");
    let params: Vec<(String, String)> =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let param = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let version: Option<u32> = param("v").and_then(|v| v.parse().ok());
    let config = decide || param("config").map(|c| c == "true" || c == "1").unwrap_or(version.is_none());

    if method == Method::GET || method == Method::HEAD {
        return axum::Json(json!({"flags": {}, "featureFlags": {}, "supportedCompression": ["gzip", "gzip-js"]})).into_response();
    }
    let limit = state.config.limits.max_request_bytes;
    let Ok(body) = axum::body::to_bytes(body, limit).await else {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", "request body too large");
    };
    let hints = BodyHints {
        query: uri.query(),
        content_type: headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        content_encoding: headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()),
        legacy_path: false,
    };
    let limits = DecodeLimits { max_decompressed_bytes: state.config.limits.max_decompressed_bytes };
    let request: Map<String, Value> = match decode_posthog_body(&body, &hints, limits)
        .map_err(|r| r.message)
        .and_then(|json| serde_json::from_slice(&json).map_err(|e| format!("failed to parse request: {e}")))
    {
        Ok(map) => map,
        Err(message) => return error(StatusCode::BAD_REQUEST, "request_parsing_error", &message),
    };
    let token = ["token", "api_key", "$token"].iter().find_map(|k| request.get(*k).and_then(Value::as_str));
    let Some(token) = token else {
        return error(StatusCode::UNAUTHORIZED, "missing_token", "API key is missing from the request");
    };
    if state.control.lookup(KeyKind::ProjectToken, token).is_none() {
        return error(StatusCode::UNAUTHORIZED, "invalid_token", "API key is not valid");
    }
    if id_string(request.get("distinct_id").or_else(|| request.get("$distinct_id"))).is_none()
        && !request.contains_key("distinct_id")
    {
        return error(StatusCode::BAD_REQUEST, "missing_distinct_id", "The distinct_id field is missing from the request");
    }

    let mut response = Map::new();
    let detailed = if decide { version.unwrap_or(1) >= 4 } else { version.map(|v| v >= 2).unwrap_or(true) };
    if detailed {
        response.insert("flags".into(), json!({}));
    } else if decide && version.unwrap_or(1) < 2 {
        response.insert("featureFlags".into(), json!([]));
    } else {
        response.insert("featureFlags".into(), json!({}));
        response.insert("featureFlagPayloads".into(), json!({}));
    }
    response.insert("errorsWhileComputingFlags".into(), Value::Bool(false));
    response.insert("requestId".into(), Value::String(uuid::Uuid::now_v7().to_string()));
    response.insert("evaluatedAt".into(), json!(chrono::Utc::now().timestamp_millis()));
    if config {
        if let Value::Object(config) = crate::intake::remote_config_value(token) {
            for (k, v) in config {
                if k != "token" {
                    response.insert(k, v);
                }
            }
        }
    }
    axum::Json(Value::Object(response)).into_response()
}

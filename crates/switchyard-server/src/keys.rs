//! The keys API (secret key as Bearer; `@current` is the key's project):
//! `GET /api/projects/{project_id}/keys/` lists the project's keys (never their values),
//! `POST` creates one and answers its value once, `DELETE .../keys/{id}/` revokes one, which
//! stops working before the answer is sent. The project's last active secret key cannot be
//! revoked (400).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_store::{ControlError, KeyInfo, KeyKind};

use crate::api::{authorize, ApiError};
use crate::AppState;

/// A key as the API shows it: id, kind, prefix, origin, times; never the value.
pub fn key_json(info: &KeyInfo) -> Value {
    json!({
        "id": info.id,
        "kind": info.kind.as_str(),
        "prefix": info.prefix,
        "origin": info.origin.as_str(),
        "created_at": info.created_at,
        "revoked_at": info.revoked_at,
        "active": info.revoked_at.is_none(),
    })
}

fn key_error(e: ControlError) -> ApiError {
    match e {
        ControlError::InvalidKey(detail) => ApiError::invalid("key", detail),
        // Which project holds it is not this caller's business.
        ControlError::KeyTaken(_) => ApiError::invalid("key", "this key is already in use"),
        ControlError::KeyNotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", "Not found."),
        ControlError::LastSecretKey => ApiError::new(StatusCode::BAD_REQUEST, "last_secret_key", e.to_string()),
        other => ApiError::unavailable(other),
    }
}

/// Runs a control-store call off the async workers.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&AppState) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state)).await.map_err(ApiError::unavailable)?.map_err(key_error)
}

pub async fn list_keys(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let keys = blocking(&state, move |s| s.control.list_keys(project_id)).await?;
    let results: Vec<Value> = keys.iter().map(key_json).collect();
    Ok(axum::Json(json!({"results": results, "next": null})).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateKey {
    /// `secret_key`, `project_token` or `write_key`.
    kind: String,
    /// The key's value; generated when absent.
    key: Option<String>,
}

pub async fn create_key(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let request: CreateKey = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "parse_error", format!("invalid JSON: {e}")))?;
    let kind = KeyKind::parse(&request.kind)
        .ok_or_else(|| ApiError::invalid("kind", "`kind` must be `secret_key`, `project_token` or `write_key`"))?;
    let created = blocking(&state, move |s| s.control.create_key(project_id, kind, request.key.as_deref())).await?;
    let mut body = key_json(&created.info);
    // The only time the value is shown.
    body["key"] = Value::String(created.key);
    Ok((StatusCode::CREATED, axum::Json(body)).into_response())
}

pub async fn revoke_key(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let key_id: i64 = id.parse().map_err(|_| ApiError::new(StatusCode::NOT_FOUND, "not_found", "Not found."))?;
    let revoked = blocking(&state, move |s| s.control.revoke_key(project_id, key_id)).await?;
    Ok(axum::Json(key_json(&revoked)).into_response())
}

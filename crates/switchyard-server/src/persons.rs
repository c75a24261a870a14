//! The persons/groups API: what the person processor (`switchyard_pipeline::persons`) keeps.

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::api::{authorize, ApiError};
use crate::AppState;

#[derive(serde::Deserialize)]
pub struct PersonParams {
    distinct_id: String,
}

/// `GET /api/projects/{id}/persons/?distinct_id=`
pub async fn get_person(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    params: Result<Query<PersonParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let Query(p) = params.map_err(|_| ApiError::invalid("distinct_id", "`distinct_id` is required"))?;
    let store = state.clone();
    let person = tokio::task::spawn_blocking(move || store.control.person(project_id, &p.distinct_id))
        .await
        .map_err(ApiError::unavailable)?
        .map_err(ApiError::unavailable)?;
    Ok(axum::Json(json!({"results": person.into_iter().collect::<Vec<_>>(), "next": null})).into_response())
}

#[derive(serde::Deserialize)]
pub struct GroupParams {
    group_type: String,
    group_key: String,
}

/// `GET /api/projects/{id}/groups/?group_type=&group_key=`
pub async fn get_group(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    params: Result<Query<GroupParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let Query(p) = params.map_err(|_| ApiError::invalid("group_type", "`group_type` and `group_key` are required"))?;
    let store = state.clone();
    let group = tokio::task::spawn_blocking(move || store.control.group(project_id, &p.group_type, &p.group_key))
        .await
        .map_err(ApiError::unavailable)?
        .map_err(ApiError::unavailable)?;
    match group {
        Some(group) => Ok(axum::Json(json!({"results": [group], "next": null})).into_response()),
        None => Ok((StatusCode::OK, axum::Json(json!({"results": [], "next": null}))).into_response()),
    }
}

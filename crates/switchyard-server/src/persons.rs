//! The person processor: a consumer of the event log (cursor `persons`) that keeps persons
//! and groups in the control store, and the persons/groups API that shows them.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchyard_event::Event;
use switchyard_store::{EventLog, Selection};
use tokio::sync::watch;

use crate::api::{authorize, ApiError};
use crate::AppState;

const CONSUMER: &str = "persons";
const BATCH: usize = 2000;

/// Runs until `stop` turns true: reads the log after the committed cursor, applies the events,
/// commits the cursor. At-least-once: every update it applies is idempotent.
pub async fn run(state: AppState, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let processed = match process_batch(&state).await {
            Ok(n) => n,
            Err(error) => {
                tracing::error!(%error, "person processor failed; retrying");
                0
            }
        };
        if processed < BATCH {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

async fn process_batch(state: &AppState) -> anyhow::Result<usize> {
    let batch = state.log.read(CONSUMER, BATCH, Selection::PersonUpdates).await?;
    let Some(position) = batch.position else { return Ok(0) };
    let entries = batch.entries;
    let mut events = Vec::with_capacity(entries.len());
    for entry in &entries {
        match serde_json::from_str::<Event>(&entry.body) {
            Ok(event) => events.push(event),
            Err(error) => tracing::error!(seq = entry.seq, %error, "logged event is not readable; skipped by the person processor"),
        }
    }
    let worker = state.clone();
    let changed = tokio::task::spawn_blocking(move || worker.control.apply_person_events(&events)).await??;
    for project_id in changed {
        state.flags.reload(&state.control, project_id)?;
    }
    state.log.commit(CONSUMER, position).await?;
    Ok(entries.len())
}

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
    let person = state.control.person(project_id, &p.distinct_id).map_err(ApiError::unavailable)?;
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
    match state.control.group(project_id, &p.group_type, &p.group_key).map_err(ApiError::unavailable)? {
        Some(group) => Ok(axum::Json(json!({"results": [group], "next": null})).into_response()),
        None => Ok((StatusCode::OK, axum::Json(json!({"results": [], "next": null}))).into_response()),
    }
}

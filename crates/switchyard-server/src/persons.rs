//! The person processor: a consumer of the event log (cursor `persons`) that keeps persons
//! and groups in the control store, and the persons/groups API that shows them.

use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;
use switchyard_event::Event;
use switchyard_store::{EventLog, PropertyLimits, Selection};
use tokio::sync::watch;

use crate::api::{authorize, ApiError};
use crate::AppState;

/// The person processor's cursor in the event log.
pub const CONSUMER: &str = "persons";
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
    let read = batch.entries.len();
    // Parsing and the control store's work run on a blocking thread, never on the async
    // workers that serve requests.
    let worker = state.clone();
    tokio::task::spawn_blocking(move || apply(&worker, batch.entries)).await??;
    state.log.commit(CONSUMER, position).await?;
    Ok(read)
}

/// Applies logged events to persons and groups (in small transactions, see
/// `ControlStore::apply_person_events`), then reloads the flags of projects with a new group type.
fn apply(state: &AppState, entries: Vec<switchyard_store::LogEntry>) -> anyhow::Result<()> {
    let mut events = Vec::with_capacity(entries.len());
    for entry in &entries {
        match serde_json::from_str::<Event>(&entry.body) {
            Ok(event) => events.push(event),
            Err(error) => tracing::error!(seq = entry.seq, %error, "logged event is not readable; skipped by the person processor"),
        }
    }
    drop(entries);
    let limits = PropertyLimits {
        max_properties: state.config.limits.max_person_properties,
        max_bytes: state.config.limits.max_person_properties_bytes,
    };
    let applied = state.control.apply_person_events(&events, limits)?;
    if applied.dropped_properties > 0 {
        state.metrics.person_properties_dropped.inc_by(applied.dropped_properties);
        tracing::warn!(
            dropped = applied.dropped_properties,
            max_properties = limits.max_properties,
            max_bytes = limits.max_bytes,
            "properties dropped: persons or groups at their limits (limits.max_person_properties, limits.max_person_properties_bytes)"
        );
    }
    for project_id in applied.new_group_types {
        state.flags.reload(&state.control, project_id)?;
    }
    Ok(())
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

//! The destinations API (secret key as Bearer; `@current` is the key's project):
//! `/api/projects/{project_id}/destinations/` — create (201), list, get, update (PATCH),
//! delete; a destination's `status`, its `dead_letters/` (paged, newest first), their
//! `replay` and discarding; and `/api/projects/{project_id}/transformations/test`, which
//! answers what a chain of transformations makes of some events. Secrets in configs are
//! masked when read back.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_pipeline::transform::{Filter, Outcome, Transformations};
use switchyard_pipeline::{DestinationSpec, InvalidField, Router};
use switchyard_store::{DeadLetter, StoredDestination};

use crate::api::{authorize, ApiError};
use crate::AppState;

const MAX_BODY_BYTES: usize = 1 << 20;

fn invalid(e: InvalidField) -> ApiError {
    ApiError::invalid(&e.field, format!("{}: {}", e.field, e.message))
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "Not found.")
}

fn router(state: &AppState) -> Result<Router, ApiError> {
    state.router().ok_or_else(|| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the server is stopping"))
}

fn json_body(body: &Bytes) -> Result<Value, ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the body is larger than {MAX_BODY_BYTES} bytes")));
    }
    serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", format!("the body is not valid JSON: {e}")))
}

/// Runs a store call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&AppState) -> Result<T, switchyard_store::ControlError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state)).await.map_err(ApiError::unavailable)?.map_err(ApiError::unavailable)
}

/// Everything a spec must pass before it is stored: its own fields, its filter and
/// transformations compiled, its URL's address when it is a literal.
fn validate(state: &AppState, router: &Router, spec: &DestinationSpec) -> Result<(), ApiError> {
    Filter::compile(&spec.filter).map_err(invalid)?;
    Transformations::compile(&spec.transformations, router.config().js).map_err(invalid)?;
    switchyard_pipeline::outbound::check_url(spec.config.url(), state.config.routing.allow_private_addresses)
        .map_err(|m| ApiError::invalid(url_field(spec), m))?;
    Ok(())
}

fn url_field(spec: &DestinationSpec) -> &'static str {
    match spec.config.kind() {
        switchyard_pipeline::DestinationKind::Posthog => "config.host",
        switchyard_pipeline::DestinationKind::Otlp => "config.endpoint",
        _ => "config.url",
    }
}

fn parse_stored(d: &StoredDestination) -> Result<DestinationSpec, ApiError> {
    let value: Value = serde_json::from_str(&d.spec).map_err(ApiError::unavailable)?;
    DestinationSpec::parse(&value).map_err(|e| ApiError::unavailable(format!("stored destination {} is not valid: {e}", d.id)))
}

fn destination_json(d: &StoredDestination, spec: &DestinationSpec) -> Value {
    let mut body = spec.to_json(true);
    body["id"] = json!(d.id);
    body["project_id"] = json!(d.project_id);
    body["created_at"] = json!(d.created_at);
    body["updated_at"] = json!(d.updated_at);
    body
}

fn destination_id(id: &str) -> Result<i64, ApiError> {
    id.parse().map_err(|_| not_found())
}

pub async fn create_destination(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let router = router(&state)?;
    let spec = DestinationSpec::parse(&json_body(&body)?).map_err(invalid)?;
    validate(&state, &router, &spec)?;
    let stored = spec.to_json(false).to_string();
    let created = blocking(&state, move |s| s.control.create_destination(project_id, &stored)).await?;
    router.start_cursor(created.id, spec.config.kind(), spec.start).await.map_err(ApiError::unavailable)?;
    router.reload();
    Ok((StatusCode::CREATED, axum::Json(destination_json(&created, &spec))).into_response())
}

pub async fn list_destinations(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let all = blocking(&state, move |s| s.control.list_destinations(Some(project_id))).await?;
    let mut results = Vec::with_capacity(all.len());
    for d in &all {
        results.push(destination_json(d, &parse_stored(d)?));
    }
    Ok(axum::Json(json!({"results": results, "next": null})).into_response())
}

async fn load(state: &AppState, project_id: i64, id: i64) -> Result<(StoredDestination, DestinationSpec), ApiError> {
    let d = blocking(state, move |s| s.control.get_destination(project_id, id)).await?.ok_or_else(not_found)?;
    let spec = parse_stored(&d)?;
    Ok((d, spec))
}

pub async fn get_destination(State(state): State<AppState>, Path((project, id)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let (d, spec) = load(&state, project_id, destination_id(&id)?).await?;
    Ok(axum::Json(destination_json(&d, &spec)).into_response())
}

pub async fn update_destination(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let router = router(&state)?;
    let id = destination_id(&id)?;
    let (_, spec) = load(&state, project_id, id).await?;
    let patched = spec.patched(&json_body(&body)?).map_err(invalid)?;
    validate(&state, &router, &patched)?;
    let stored = patched.to_json(false).to_string();
    let updated = blocking(&state, move |s| s.control.update_destination(project_id, id, &stored)).await?.ok_or_else(not_found)?;
    router.reload();
    Ok(axum::Json(destination_json(&updated, &patched)).into_response())
}

pub async fn delete_destination(State(state): State<AppState>, Path((project, id)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let router = router(&state)?;
    let id = destination_id(&id)?;
    if !blocking(&state, move |s| s.control.delete_destination(project_id, id)).await? {
        return Err(not_found());
    }
    // Deleted first (the supervisor will not start it again), then its worker stopped and
    // awaited, then what it may have written meanwhile removed.
    router.stop_worker(id).await;
    blocking(&state, move |s| s.control.discard_dead_letters(id, None)).await?;
    router.forget(id).await.map_err(ApiError::unavailable)?;
    router.reload();
    Ok(StatusCode::NO_CONTENT.into_response())
}

pub async fn destination_status(State(state): State<AppState>, Path((project, id)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let router = router(&state)?;
    let (d, spec) = load(&state, project_id, destination_id(&id)?).await?;
    let mut status = router.status_json(&d, spec.enabled).await;
    status["name"] = json!(spec.name);
    status["type"] = json!(spec.config.kind().as_str());
    Ok(axum::Json(status).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LetterParams {
    limit: Option<usize>,
    /// Letters older than this id (the `next` link sets it).
    before: Option<i64>,
    /// Comma-separated ids (for DELETE).
    ids: Option<String>,
}

fn letter_json(l: &DeadLetter) -> Value {
    json!({
        "id": l.id,
        "destination_id": l.destination_id,
        "event": serde_json::from_str::<Value>(&l.letter.event).unwrap_or_else(|_| json!(l.letter.event)),
        "event_id": l.letter.event_id,
        "reason": l.letter.reason,
        "attempts": l.letter.attempts,
        "last_status": l.letter.last_status,
        "last_response": l.letter.last_response,
        "first_attempt_at": l.letter.first_attempt_at,
        "created_at": l.created_at,
        "replay_requested": l.replay_requested,
    })
}

pub async fn list_dead_letters(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    params: Result<Query<LetterParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let Query(p) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let id = destination_id(&id)?;
    load(&state, project_id, id).await?;
    let limit = p.limit.unwrap_or(100).clamp(1, 1000);
    let before = p.before;
    let page = blocking(&state, move |s| s.control.dead_letters(id, before, limit)).await?;
    let next = (page.len() == limit).then(|| format!("{}?limit={limit}&before={}", uri.path(), page.last().map_or(0, |l| l.id)));
    let results: Vec<Value> = page.iter().map(letter_json).collect();
    Ok(axum::Json(json!({"results": results, "next": next})).into_response())
}

/// `{"ids": [...]}`, or everything when the body is empty or has no `ids`.
fn ids_of(body: &Bytes, query: Option<&str>) -> Result<Option<Vec<i64>>, ApiError> {
    if let Some(list) = query {
        let ids = list.split(',').filter(|s| !s.is_empty()).map(|s| s.trim().parse::<i64>()).collect::<Result<Vec<_>, _>>();
        return ids.map(Some).map_err(|_| ApiError::invalid("ids", "`ids` must be comma-separated integers"));
    }
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    let value = json_body(body)?;
    match value.get("ids") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => items
            .iter()
            .map(|v| v.as_i64().ok_or_else(|| ApiError::invalid("ids", "`ids` must be an array of integers")))
            .collect::<Result<Vec<_>, _>>()
            .map(Some),
        Some(_) => Err(ApiError::invalid("ids", "`ids` must be an array of integers")),
    }
}

pub async fn replay_dead_letters(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let router = router(&state)?;
    let id = destination_id(&id)?;
    load(&state, project_id, id).await?;
    let ids = ids_of(&body, None)?;
    let n = blocking(&state, move |s| s.control.request_replay(id, ids.as_deref())).await?;
    router.reload();
    Ok((StatusCode::ACCEPTED, axum::Json(json!({"replaying": n}))).into_response())
}

pub async fn discard_dead_letters(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    headers: HeaderMap,
    params: Result<Query<LetterParams>, axum::extract::rejection::QueryRejection>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let Query(p) = params.map_err(|e| ApiError::invalid("query", e.body_text()))?;
    let id = destination_id(&id)?;
    load(&state, project_id, id).await?;
    let ids = ids_of(&body, p.ids.as_deref())?;
    let n = blocking(&state, move |s| s.control.discard_dead_letters(id, ids.as_deref())).await?;
    Ok(axum::Json(json!({"discarded": n})).into_response())
}

/// `POST /api/projects/{project_id}/transformations/test` with `{"transformations": [...],
/// "events": [...]}` → per event: its output, or dropped, or the error, and the logs.
pub async fn test_transformations(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let router = router(&state)?;
    let body = json_body(&body)?;
    let specs = match body.get("transformations") {
        Some(Value::Array(specs)) => specs.clone(),
        _ => return Err(ApiError::invalid("transformations", "`transformations` must be an array")),
    };
    let events = match body.get("events") {
        Some(Value::Array(events)) if events.len() <= 100 => events.clone(),
        Some(Value::Array(_)) => return Err(ApiError::invalid("events", "at most 100 events at a time")),
        _ => return Err(ApiError::invalid("events", "`events` must be an array of events")),
    };
    let events = events.into_iter().enumerate().map(|(i, e)| as_unified(e, project_id).map_err(|m| ApiError::invalid(&format!("events[{i}]"), m))).collect::<Result<Vec<_>, _>>()?;
    // A try is bounded as a whole: at most 100 events, one second of JavaScript each.
    let mut limits = router.config().js;
    limits.time_limit = limits.time_limit.min(std::time::Duration::from_secs(1));
    let results = tokio::task::spawn_blocking(move || -> Result<Vec<Value>, ApiError> {
        let mut chain = Transformations::compile(&specs, limits).map_err(invalid)?;
        Ok(chain
            .apply(events, "test")
            .into_iter()
            .map(|t| {
                let mut r = match t.outcome {
                    Outcome::Events(events) => json!({"output": events, "dropped": false, "error": null}),
                    Outcome::Dropped => json!({"output": [], "dropped": true, "error": null}),
                    Outcome::Failed(error) => json!({"output": [], "dropped": false, "error": error}),
                };
                r["logs"] = json!(t.logs);
                r
            })
            .collect())
    })
    .await
    .map_err(ApiError::unavailable)??;
    Ok(axum::Json(json!({"results": results})).into_response())
}

/// A test event as a destination's worker would see it: a unified event (the events API's
/// shape), or a RudderStack/Segment message (`userId`/`anonymousId`), its missing members
/// (ids, times) filled in.
fn as_unified(event: Value, project_id: i64) -> Result<Value, String> {
    let Value::Object(mut map) = event else { return Err("must be an object".into()) };
    let now = switchyard_event::model::format_time(chrono::Utc::now());
    let message = !map.contains_key("distinct_id") && (map.contains_key("userId") || map.contains_key("anonymousId"));
    let mut template = json!({
        "id": uuid::Uuid::now_v7().to_string(), "project_id": project_id, "protocol": if message { "segment" } else { "posthog" },
        "type": "track", "event": "", "distinct_id": "", "timestamp": now, "received_at": now,
    });
    if message {
        if !map.contains_key("messageId") {
            map.insert("messageId".into(), template["id"].clone());
        }
        template["distinct_id"] = json!("template");
        template["event"] = json!("template");
        return switchyard_pipeline::wire::from_message(Value::Object(map), &template);
    }
    for (key, value) in template.as_object().unwrap() {
        if !map.contains_key(key) {
            map.insert(key.clone(), value.clone());
        }
    }
    map.insert("project_id".into(), json!(project_id));
    Ok(Value::Object(map))
}

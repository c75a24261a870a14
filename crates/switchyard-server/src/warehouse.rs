//! The warehouse's server side: SQL over the embedded lake (`POST /api/projects/{id}/query`),
//! PostgreSQL warehouses (`/api/projects/{id}/warehouses/`, `[[warehouse.postgres]]`) and the
//! loaders that fill them, with their status.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use switchyard_pipeline::postgres::PostgresConfig;
use switchyard_pipeline::LoadStatus;
use switchyard_query::QueryError;

use crate::api::{authorize, ApiError};
use crate::destinations::blocking;
use crate::AppState;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueryRequest {
    query: String,
}

/// `POST /api/projects/{project_id}/query` with `{"query": "SELECT …"}` (secret key):
/// `{"columns": [...], "types": [...], "results": [[...]]}`. Read-only, the project's tables
/// only, within the configured time, row and memory limits; a query's fault is a 400 naming it.
pub async fn query(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let request: QueryRequest = serde_json::from_slice(&body).map_err(|e| ApiError::invalid("query", format!("the body must be {{\"query\": \"SELECT …\"}}: {e}")))?;
    let Some(engine) = state.query_engine() else {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "lake_disabled", "SQL runs over the embedded lake, which is turned off (`warehouse.lake = false`)."));
    };
    let started = std::time::Instant::now();
    let result = engine.query(project_id, &request.query).await;
    state.metrics.warehouse_queries.get_or_create(&crate::metrics::OutcomeLabels { outcome: outcome(&result) }).inc();
    match result {
        Ok(answer) => {
            tracing::debug!(project_id, rows = answer.results.len(), elapsed_ms = started.elapsed().as_millis() as u64, "query answered");
            Ok(axum::Json(answer).into_response())
        }
        Err(error) => Err(query_error(error)),
    }
}

fn outcome(result: &Result<switchyard_query::QueryResult, QueryError>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(QueryError::ReadOnly(_)) => "read_only",
        Err(QueryError::Invalid(_)) => "invalid",
        Err(QueryError::TooManyRows(_)) => "too_many_rows",
        Err(QueryError::Timeout(_)) => "timeout",
        Err(QueryError::Memory(_)) => "memory",
        Err(QueryError::Engine(_)) => "error",
    }
}

fn query_error(error: QueryError) -> ApiError {
    let code = match &error {
        QueryError::ReadOnly(_) => "read_only",
        QueryError::Invalid(_) => "invalid_query",
        QueryError::TooManyRows(_) => "too_many_rows",
        QueryError::Timeout(_) => "query_timeout",
        QueryError::Memory(_) => "query_memory",
        QueryError::Engine(e) => {
            tracing::error!(error = %e, "query engine failure");
            return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "query_failed", error.to_string());
        }
    };
    ApiError::new(StatusCode::BAD_REQUEST, code, error.to_string())
}

/// A PostgreSQL warehouse as the API and the config file give it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WarehouseSpec {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub config: PostgresSpec,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresSpec {
    /// `postgres://user:password@host:port/database` (or libpq's `key=value` form).
    pub dsn: String,
    /// The schema the tables go in.
    #[serde(default = "default_schema")]
    pub schema: String,
}

fn default_schema() -> String {
    "switchyard".into()
}

impl WarehouseSpec {
    /// Refuses what cannot work, naming the field.
    pub fn validate(&self) -> Result<(), ApiError> {
        if self.name.trim().is_empty() {
            return Err(ApiError::invalid("name", "a warehouse needs a name"));
        }
        if self.kind != "postgres" {
            return Err(ApiError::invalid("type", format!("unknown warehouse type {:?}: `postgres` (the lake is built in)", self.kind)));
        }
        let probe = switchyard_pipeline::postgres::PostgresConfig::new(0, 0, self.config.dsn.clone(), self.config.schema.clone());
        probe.connection().map_err(|e| {
            let field = if matches!(e, switchyard_pipeline::postgres::PostgresError::SchemaName(_)) { "config.schema" } else { "config.dsn" };
            ApiError::invalid(field, e.to_string())
        })?;
        Ok(())
    }

    /// The spec as shown: the DSN's password masked.
    pub fn masked(&self) -> Value {
        let mut shown = serde_json::to_value(self).unwrap_or(Value::Null);
        shown["config"]["dsn"] = Value::String(mask_dsn(&self.config.dsn));
        shown
    }
}

/// A DSN with its password replaced by `********` (URL and `key=value` forms).
fn mask_dsn(dsn: &str) -> String {
    if let Ok(mut url) = reqwest::Url::parse(dsn) {
        if url.password().is_some() && url.set_password(Some("********")).is_ok() {
            return url.to_string();
        }
        return dsn.to_owned();
    }
    dsn.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=********"),
            _ => pair.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A running loader.
struct Running {
    name: String,
    kind: &'static str,
    /// `None`: every project's (the lake).
    project_id: Option<i64>,
    consumer: String,
    status: Arc<LoadStatus>,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

/// The warehouse loaders that run: the lake's and each PostgreSQL warehouse's, on the
/// warehouse runtime (one thread at nice 10), each with its status.
#[derive(Default)]
pub struct Loaders {
    runtime: std::sync::OnceLock<tokio::runtime::Handle>,
    running: Mutex<BTreeMap<i64, Running>>,
}

/// The key of the lake's loader among [`Loaders`] (warehouses have positive ids).
const LAKE: i64 = 0;

impl Loaders {
    /// Where loaders run from now on.
    pub fn set_runtime(&self, runtime: tokio::runtime::Handle) {
        let _ = self.runtime.set(runtime);
    }

    /// Registers the lake's loader (started by the router's thread).
    pub fn lake_status(&self) -> Arc<LoadStatus> {
        let status = Arc::new(LoadStatus::default());
        self.running.lock().unwrap().insert(
            LAKE,
            Running {
                name: "lake".into(),
                kind: "lake",
                project_id: None,
                consumer: switchyard_pipeline::lake::CONSUMER.into(),
                status: status.clone(),
                stop: None,
                task: None,
            },
        );
        status
    }

    /// Starts a PostgreSQL warehouse's loader (replacing one of the same id).
    pub fn start_postgres(&self, state: &AppState, id: i64, project_id: i64, spec: &WarehouseSpec) {
        let Some(runtime) = self.runtime.get() else { return };
        let _ = self.stop(id);
        let w = &state.config.warehouse;
        let mut config = PostgresConfig::new(id, project_id, spec.config.dsn.clone(), spec.config.schema.clone());
        config.max_events = w.max_events;
        config.max_wait = Duration::from_secs(w.max_wait_secs);
        let status = Arc::new(LoadStatus::default());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let stores: Arc<dyn switchyard_pipeline::Stores> = Arc::new(crate::RouterStores(state.clone()));
        let task = runtime.spawn(switchyard_pipeline::postgres::run(stores, config, status.clone(), stopped));
        self.running.lock().unwrap().insert(
            id,
            Running {
                name: spec.name.clone(),
                kind: "postgres",
                project_id: Some(project_id),
                consumer: switchyard_pipeline::postgres::consumer_name(id),
                status,
                stop: Some(stop),
                task: Some(task),
            },
        );
    }

    /// Stops a PostgreSQL warehouse's loader; gives its task, to wait for.
    pub fn stop(&self, id: i64) -> Option<tokio::task::JoinHandle<()>> {
        let running = self.running.lock().unwrap().remove(&id)?;
        if let Some(stop) = running.stop {
            let _ = stop.send(true);
        }
        running.task
    }

    /// Stops every PostgreSQL loader (the server stops).
    pub fn stop_all(&self) {
        let ids: Vec<i64> = self.running.lock().unwrap().keys().copied().filter(|id| *id != LAKE).collect();
        for id in ids {
            let _ = self.stop(id);
        }
    }

    /// Each loader's status, with its lag in `project_id`'s events (every project's for the
    /// lake when `None`).
    pub async fn statuses(&self, log: &switchyard_store::SqliteLog, project_id: Option<i64>) -> Vec<Value> {
        // (id, name, kind, project, consumer, status): copied out, the lock let go before awaiting.
        type Seen = (i64, String, &'static str, Option<i64>, String, Arc<LoadStatus>);
        let loaders: Vec<Seen> = self
            .running
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, r)| project_id.is_none() || r.project_id.is_none() || r.project_id == project_id)
            .map(|(id, r)| (*id, r.name.clone(), r.kind, r.project_id, r.consumer.clone(), r.status.clone()))
            .collect();
        let mut out = Vec::with_capacity(loaders.len());
        for (id, name, kind, own_project, consumer, status) in loaders {
            let lag = match project_id.or(own_project) {
                Some(project) => log.lag(&consumer, project).await.ok(),
                None => match (log.end().await, log.cursor(&consumer).await) {
                    (Ok(end), Ok(cursor)) => Some(((end - cursor.unwrap_or(0)).max(0), None)),
                    _ => None,
                },
            };
            // Taken after the lag: a loader counts a window before committing the log's cursor,
            // so a lag of 0 comes with every window counted.
            let mut snapshot = status.snapshot();
            let (behind, oldest) = lag.unwrap_or((-1, None));
            let seconds = oldest
                .and_then(|t| switchyard_event::model::parse_time(&t))
                .map(|t| ((chrono::Utc::now() - t).num_milliseconds() as f64 / 1000.0).max(0.0));
            snapshot["id"] = json!(if kind == "lake" { Value::Null } else { json!(id) });
            snapshot["name"] = json!(name);
            snapshot["type"] = json!(kind);
            snapshot["lag"] = json!({"events": behind, "seconds": seconds});
            out.push(snapshot);
        }
        out
    }
}

/// The config file's `[[warehouse.postgres]]` entries, as warehouses in the control store
/// (matched by project and name, updated when they changed), so they have ids and cursors.
pub fn sync_configured(state: &AppState) -> anyhow::Result<Vec<(i64, i64, WarehouseSpec)>> {
    let mut out = Vec::new();
    for entry in &state.config.warehouse.postgres {
        let spec = WarehouseSpec {
            name: entry.name.clone(),
            kind: "postgres".into(),
            config: PostgresSpec { dsn: entry.dsn.clone(), schema: entry.schema.clone() },
        };
        spec.validate().map_err(|e| anyhow::anyhow!("warehouse.postgres {:?}: {}", entry.name, e.detail()))?;
        let text = serde_json::to_string(&spec)?;
        let existing = state.control.list_warehouses(Some(entry.project_id))?.into_iter().find(|w| {
            serde_json::from_str::<WarehouseSpec>(&w.spec).is_ok_and(|s| s.name == entry.name)
        });
        let id = match existing {
            Some(w) if w.spec == text => w.id,
            Some(w) => {
                state.control.update_warehouse(entry.project_id, w.id, &text)?;
                w.id
            }
            None => state.control.create_warehouse(entry.project_id, &text)?.id,
        };
        out.push((id, entry.project_id, spec));
    }
    Ok(out)
}

/// Starts the loader of every warehouse in the control store (the configured ones synced first).
pub fn start_all(state: &AppState) -> anyhow::Result<()> {
    sync_configured(state)?;
    for stored in state.control.list_warehouses(None)? {
        match serde_json::from_str::<WarehouseSpec>(&stored.spec) {
            Ok(spec) => state.loaders.start_postgres(state, stored.id, stored.project_id, &spec),
            Err(error) => tracing::error!(id = stored.id, %error, "a stored warehouse is not readable; not started"),
        }
    }
    Ok(())
}

fn body_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", format!("not a warehouse: {e}")))
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "No such warehouse.")
}

fn shown(stored: &switchyard_store::StoredWarehouse) -> Value {
    let spec = serde_json::from_str::<WarehouseSpec>(&stored.spec).map(|s| s.masked()).unwrap_or(Value::Null);
    json!({"id": stored.id, "name": spec["name"], "type": spec["type"], "config": spec["config"], "created_at": stored.created_at})
}

/// `POST /api/projects/{id}/warehouses/`: 201 with the warehouse (password masked); its
/// loader starts at once and loads the project's events from the start of the log.
pub async fn create_warehouse(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let spec: WarehouseSpec = body_json(&body)?;
    spec.validate()?;
    let text = serde_json::to_string(&spec).map_err(ApiError::unavailable)?;
    let stored = blocking(&state, move |s| s.control.create_warehouse(project_id, &text)).await?;
    state.loaders.start_postgres(&state, stored.id, project_id, &spec);
    Ok((StatusCode::CREATED, axum::Json(shown(&stored))).into_response())
}

pub async fn list_warehouses(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let all = blocking(&state, move |s| s.control.list_warehouses(Some(project_id))).await?;
    Ok(axum::Json(json!({"results": all.iter().map(shown).collect::<Vec<_>>(), "next": null})).into_response())
}

fn warehouse_id(id: &str) -> Result<i64, ApiError> {
    id.parse::<i64>().ok().filter(|id| *id > 0).ok_or_else(not_found)
}

pub async fn get_warehouse(State(state): State<AppState>, Path((project, id)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let id = warehouse_id(&id)?;
    let stored = blocking(&state, move |s| s.control.get_warehouse(project_id, id)).await?.ok_or_else(not_found)?;
    Ok(axum::Json(shown(&stored)).into_response())
}

/// `DELETE`: the loader stops and its cursor in the log goes (retention no longer waits for
/// it); the warehouse's tables stay.
pub async fn delete_warehouse(State(state): State<AppState>, Path((project, id)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let id = warehouse_id(&id)?;
    if !blocking(&state, move |s| s.control.delete_warehouse(project_id, id)).await? {
        return Err(not_found());
    }
    if let Some(task) = state.loaders.stop(id) {
        // A load in flight finishes (or is given up) before the cursor is forgotten.
        if tokio::time::timeout(Duration::from_secs(30), task).await.is_err() {
            tracing::warn!(id, "a deleted warehouse's loader did not stop in 30 s");
        }
    }
    state.log.forget(&switchyard_pipeline::postgres::consumer_name(id)).await.map_err(ApiError::unavailable)?;
    let label = crate::metrics::WarehouseLabels { warehouse: format!("postgres:{id}") };
    let m = &state.metrics;
    for gauge in [&m.warehouse_loaded_events, &m.warehouse_lag_events, &m.warehouse_last_load_seconds, &m.warehouse_failures] {
        gauge.remove(&label);
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /api/projects/{id}/warehouses/status/`: the lake's and each warehouse's loader.
pub async fn warehouse_status(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let results = state.loaders.statuses(&state.log, Some(project_id)).await;
    Ok(axum::Json(json!({"results": results})).into_response())
}

/// Sets the warehouse gauges (when `/metrics` is read).
pub async fn update_metrics(state: &AppState) {
    let m = &state.metrics;
    for status in state.loaders.statuses(&state.log, None).await {
        let label = crate::metrics::WarehouseLabels {
            warehouse: match status["id"].as_i64() {
                Some(id) => format!("postgres:{id}"),
                None => "lake".into(),
            },
        };
        m.warehouse_loaded_events.get_or_create(&label).set(status["loaded_events"].as_i64().unwrap_or(0));
        m.warehouse_lag_events.get_or_create(&label).set(status["lag"]["events"].as_i64().unwrap_or(-1));
        m.warehouse_failures.get_or_create(&label).set(status["failures"].as_i64().unwrap_or(0));
        let last = status["last_load_at"].as_str().and_then(switchyard_event::model::parse_time).map_or(0, |t| t.timestamp());
        m.warehouse_last_load_seconds.get_or_create(&label).set(last);
    }
}

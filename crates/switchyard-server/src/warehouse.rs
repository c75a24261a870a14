//! The warehouse's HTTP side: SQL over the embedded lake (`POST /api/projects/{id}/query`).

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use switchyard_query::QueryError;

use crate::api::{authorize, ApiError};
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

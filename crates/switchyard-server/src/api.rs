//! The inspection API (secret key): `GET /api/projects/{project_id}/events/` and
//! `.../quarantine/`, PostHog-style (`@current` is the key's project; `{"results", "next"}`).

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{json, Value};
use switchyard_event::model::{format_time, parse_time};
use switchyard_store::{EventQuery, KeyKind, KeyRef, QuarantineQuery};

use crate::AppState;

/// An API error in PostHog's (Django REST framework's) shape:
/// `{"type", "code", "detail", "attr"}`; `attr` names the offending field.
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    detail: String,
    attr: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError { status, code, detail: detail.into(), attr: None }
    }
    /// 400 naming the field.
    pub fn invalid(attr: &str, detail: impl Into<String>) -> Self {
        ApiError { attr: Some(attr.to_owned()), ..Self::new(StatusCode::BAD_REQUEST, "invalid_input", detail) }
    }
    /// What is wrong, as the answer says it.
    pub fn detail(&self) -> &str {
        &self.detail
    }
    /// 503 for a store failure; the cause is logged, not shown.
    pub fn unavailable(error: impl std::fmt::Display) -> Self {
        tracing::error!(%error, "control store failure");
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the control store cannot be used right now")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::FORBIDDEN => "permission_denied",
            StatusCode::SERVICE_UNAVAILABLE => "server_error",
            _ => "validation_error",
        };
        let body = json!({"type": kind, "code": self.code, "detail": self.detail, "attr": self.attr});
        (self.status, axum::Json(body)).into_response()
    }
}

/// Resolves the `Authorization: Bearer <secret key>` header to its key.
pub fn authorize_key(state: &AppState, headers: &HeaderMap) -> Result<KeyRef, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim)
        .ok_or_else(|| {
            ApiError::new(StatusCode::UNAUTHORIZED, "not_authenticated", "Authentication credentials were not provided: send `Authorization: Bearer <secret key>`.")
        })?;
    state.control.lookup_key(KeyKind::SecretKey, token).ok_or_else(|| {
        ApiError::new(StatusCode::UNAUTHORIZED, "authentication_failed", "The secret key is not valid.")
    })
}

/// Resolves the secret key to its project and checks the path's project against it.
pub fn authorize(state: &AppState, headers: &HeaderMap, project: &str) -> Result<i64, ApiError> {
    let project_id = authorize_key(state, headers)?.project_id;
    if project != "@current" && project.parse::<i64>().ok() != Some(project_id) {
        return Err(ApiError::new(StatusCode::FORBIDDEN, "permission_denied", "You don't have access to the project."));
    }
    Ok(project_id)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsParams {
    event: Option<String>,
    distinct_id: Option<String>,
    trace_id: Option<String>,
    after: Option<String>,
    before: Option<String>,
    limit: Option<usize>,
    cursor: Option<i64>,
}

const DEFAULT_LIMIT: usize = 100;
const MAX_LIMIT: usize = 10_000;
/// Most bytes of events (or raw forms) one page of a listing holds: past it the page ends
/// early, with a `next` link, whatever `limit` asked for. One event may pass it alone.
pub const MAX_PAGE_BYTES: usize = 8 * 1024 * 1024;

fn time_param(name: &str, value: Option<String>) -> Result<Option<String>, ApiError> {
    value
        .map(|v| {
            parse_time(&v).map(format_time).ok_or_else(|| {
                ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", format!("`{name}` is not a valid date-time: {v:?}"))
            })
        })
        .transpose()
}

fn limit_param(limit: Option<usize>) -> Result<usize, ApiError> {
    match limit.unwrap_or(DEFAULT_LIMIT) {
        0 => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", "`limit` must be at least 1")),
        n => Ok(n.min(MAX_LIMIT)),
    }
}

/// The `next` link: the same request with `cursor` set past the last result.
fn next_link(uri: &Uri, last_seq: i64) -> String {
    let mut pairs: Vec<(String, String)> =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(uri).map(|q| q.0).unwrap_or_default();
    pairs.retain(|(k, _)| k != "cursor");
    pairs.push(("cursor".into(), last_seq.to_string()));
    let query: Vec<String> = pairs.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
    format!("{}?{}", uri.path(), query.join("&"))
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn params_error(e: axum::extract::rejection::QueryRejection) -> ApiError {
    ApiError::new(StatusCode::BAD_REQUEST, "invalid_input", e.body_text())
}

pub async fn list_events(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    params: Result<Query<EventsParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let Query(p) = params.map_err(params_error)?;
    let limit = limit_param(p.limit)?;
    let query = EventQuery {
        project_id,
        event: p.event,
        distinct_id: p.distinct_id,
        trace_id: p.trace_id,
        after: time_param("after", p.after)?,
        before: time_param("before", p.before)?,
        before_seq: p.cursor,
        limit,
        max_bytes: Some(MAX_PAGE_BYTES),
    };
    let rows = state.log.query_events(query).await.map_err(|e| {
        tracing::error!(error = %e, "events query failed");
        ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the event log cannot be read right now")
    })?;
    let bytes: usize = rows.iter().map(|r| r.body.len()).sum();
    let next = match rows.last() {
        Some(last) if rows.len() == limit || bytes >= MAX_PAGE_BYTES => Value::String(next_link(&uri, last.seq)),
        _ => Value::Null,
    };
    // The stored bodies are the events' JSON already: splice them in rather than re-parse.
    let mut body = String::with_capacity(rows.iter().map(|r| r.body.len() + 1).sum::<usize>() + 64);
    body.push_str("{\"results\":[");
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            body.push(',');
        }
        body.push_str(&row.body);
    }
    body.push_str("],\"next\":");
    body.push_str(&next.to_string());
    body.push('}');
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuarantineParams {
    reason: Option<String>,
    limit: Option<usize>,
    cursor: Option<i64>,
}

pub async fn list_quarantine(
    State(state): State<AppState>,
    Path(project): Path<String>,
    headers: HeaderMap,
    uri: Uri,
    params: Result<Query<QuarantineParams>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let Query(p) = params.map_err(params_error)?;
    let limit = limit_param(p.limit)?;
    let rows = state
        .log
        .query_quarantine(QuarantineQuery { project_id, code: p.reason, before_seq: p.cursor, limit, max_bytes: Some(MAX_PAGE_BYTES) })
        .await
        .map_err(|e| {
            tracing::error!(error = %e, "quarantine query failed");
            ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", "the quarantine cannot be read right now")
        })?;
    let bytes: usize = rows.iter().map(|r| r.raw.len() + r.reason.len()).sum();
    let next = match rows.last() {
        Some(last) if rows.len() == limit || bytes >= MAX_PAGE_BYTES => Value::String(next_link(&uri, last.seq)),
        _ => Value::Null,
    };
    let results: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let truncated = r.raw_truncated();
            // A cut raw form is not JSON any more: it is shown as the text it is.
            let raw = match truncated {
                true => Value::String(r.raw),
                false => serde_json::from_str::<Value>(&r.raw).unwrap_or(Value::String(r.raw)),
            };
            let mut entry = json!({"id": r.seq, "protocol": r.protocol, "received_at": r.received_at,
                   "reason": r.code, "detail": r.reason, "raw": raw});
            if truncated {
                entry["raw_truncated"] = Value::Bool(true);
                entry["raw_size"] = json!(r.raw_size);
                entry["raw_sha256"] = json!(r.raw_sha256);
            }
            entry
        })
        .collect();
    Ok(axum::Json(json!({"results": results, "next": next})).into_response())
}

/// Runs a management handler's work, which reads and writes SQLite, on a blocking thread:
/// never on an async worker, where a busy store would stall every request on that worker.
pub async fn off_runtime<F>(state: crate::AppState, work: F) -> Result<axum::response::Response, ApiError>
where
    F: FnOnce(&crate::AppState) -> Result<axum::response::Response, ApiError> + Send + 'static,
{
    tokio::task::spawn_blocking(move || work(&state)).await.map_err(ApiError::unavailable)?
}

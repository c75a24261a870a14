//! A project's own model prices (secret key as Bearer; `@current` is the key's project):
//! `GET /api/projects/{project_id}/model_prices/` lists them, `POST` creates or replaces one
//! model's, `DELETE .../model_prices/{model}/` removes one (the model URL-encoded).
//!
//! A price uses LiteLLM's field names (USD per token, JSON numbers or decimal strings, ≥ 0):
//! `{"model", "input_cost_per_token", "output_cost_per_token", "cache_read_input_token_cost"?,
//! "cache_creation_input_token_cost"?, "provider"?}`; prices are answered as decimal strings
//! (exact). It is stored as a LiteLLM entry, so the project's table is read by
//! [`PriceBook::from_litellm_json`] like LiteLLM's, and kept in memory per project
//! ([`ProjectPrices`]), rebuilt on every change. Enrichment looks a model up there first
//! (`$ai_cost_model_source: "project"`), then in the server's table.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use switchyard_llm::prices::{PriceBook, Usd};
use switchyard_store::{ControlError, ControlStore, StoredModelPrice};

use crate::api::{authorize, ApiError};
use crate::AppState;

const MAX_BODY_BYTES: usize = 64 * 1024;
const MAX_MODEL_CHARS: usize = 256;

/// The API's price fields that are amounts (LiteLLM's names), and whether each is required.
const AMOUNTS: &[(&str, bool)] = &[
    ("input_cost_per_token", true),
    ("output_cost_per_token", true),
    ("cache_read_input_token_cost", false),
    ("cache_creation_input_token_cost", false),
];

/// Every project's own price table, by project id (only projects that have one).
#[derive(Default)]
pub struct ProjectPrices {
    books: RwLock<HashMap<i64, Arc<PriceBook>>>,
    /// Prices from the configuration (`llm.custom_prices_file`) for every project, under each
    /// project's own (an API price for the same model wins).
    configured: Map<String, Value>,
    /// The configured prices alone, for projects with none of their own.
    configured_book: Option<Arc<PriceBook>>,
    /// Held while a project's table is read and swapped in, so an older read never replaces
    /// a newer one.
    reloading: Mutex<()>,
}

impl ProjectPrices {
    /// Every project's table from the control store (at start), over `configured` (a LiteLLM
    /// table's entries from the configuration, for every project).
    pub fn load(control: &ControlStore, configured: Map<String, Value>) -> Result<ProjectPrices, ControlError> {
        let mut by_project: HashMap<i64, Vec<StoredModelPrice>> = HashMap::new();
        for row in control.list_model_prices(None)? {
            by_project.entry(row.project_id).or_default().push(row);
        }
        let books = by_project
            .into_iter()
            .filter_map(|(project_id, rows)| Some((project_id, Arc::new(book_of(project_id, &rows, &configured)?))))
            .collect();
        let configured_book = book_of(0, &[], &configured).map(Arc::new);
        Ok(ProjectPrices { books: RwLock::new(books), configured, configured_book, reloading: Mutex::new(()) })
    }

    /// The project's own table (over the configured prices), else the configured prices.
    pub fn get(&self, project_id: i64) -> Option<Arc<PriceBook>> {
        self.books.read().unwrap().get(&project_id).cloned().or_else(|| self.configured_book.clone())
    }

    /// Reads the project's prices again from the control store.
    pub fn reload(&self, control: &ControlStore, project_id: i64) -> Result<(), ControlError> {
        let _held = self.reloading.lock().unwrap();
        let rows = control.list_model_prices(Some(project_id))?;
        let book = if rows.is_empty() { None } else { book_of(project_id, &rows, &self.configured).map(Arc::new) };
        let mut books = self.books.write().unwrap();
        match book {
            Some(book) => books.insert(project_id, book),
            None => books.remove(&project_id),
        };
        Ok(())
    }
}

/// A project's rows over the configured entries, as one LiteLLM-shaped table; `None` when
/// there is nothing (or nothing usable).
fn book_of(project_id: i64, rows: &[StoredModelPrice], configured: &Map<String, Value>) -> Option<PriceBook> {
    let mut table = configured.clone();
    for row in rows {
        match serde_json::from_str::<Value>(&row.spec) {
            Ok(spec) => {
                table.insert(row.model.clone(), litellm_entry(&spec));
            }
            Err(error) => tracing::error!(project_id, model = row.model, %error, "stored model price is not JSON: skipped"),
        }
    }
    if table.is_empty() {
        return None;
    }
    let updated = rows.iter().map(|r| r.updated_at.as_str()).max().unwrap_or_default();
    match PriceBook::from_litellm_json(&Value::Object(table).to_string()) {
        Ok(book) => Some(book.with_version(format!("project-{project_id}@{updated}"))),
        Err(error) => {
            tracing::error!(project_id, %error, "the project's model prices cannot be read: not used");
            None
        }
    }
}

/// A stored spec (amounts as exact decimal strings) as the LiteLLM entry the reader takes
/// (amounts as JSON numbers: their shortest round-trip text is the decimal again).
fn litellm_entry(spec: &Value) -> Value {
    let mut entry = Map::new();
    for (field, _) in AMOUNTS {
        if let Some(number) = spec.get(*field).and_then(Value::as_str).and_then(|s| s.parse::<f64>().ok()).and_then(serde_json::Number::from_f64) {
            entry.insert((*field).into(), Value::Number(number));
        }
    }
    if let Some(provider) = spec.get("litellm_provider").and_then(Value::as_str) {
        entry.insert("litellm_provider".into(), json!(provider));
    }
    entry.insert("mode".into(), json!("chat"));
    Value::Object(entry)
}

/// A checked request: the model and the spec to store (amounts as decimal strings, the
/// provider as `litellm_provider`).
fn parse_request(body: &Bytes) -> Result<(String, Value), ApiError> {
    if body.len() > MAX_BODY_BYTES {
        return Err(ApiError::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", format!("the body is larger than {MAX_BODY_BYTES} bytes")));
    }
    let value: Value = serde_json::from_slice(body).map_err(|e| ApiError::invalid("body", format!("the body is not valid JSON: {e}")))?;
    let Value::Object(map) = value else {
        return Err(ApiError::invalid("body", "the body must be a JSON object"));
    };
    for key in map.keys() {
        if key != "model" && key != "provider" && !AMOUNTS.iter().any(|(f, _)| f == key) {
            return Err(ApiError::invalid(key, format!("`{key}` is not a field of a model price")));
        }
    }
    let model = match map.get("model") {
        Some(Value::String(m)) if !m.trim().is_empty() && m.trim().chars().count() <= MAX_MODEL_CHARS => m.trim().to_owned(),
        _ => return Err(ApiError::invalid("model", format!("`model` must be a non-empty string of at most {MAX_MODEL_CHARS} characters"))),
    };
    let mut spec = Map::new();
    for (field, required) in AMOUNTS {
        let amount = match map.get(*field) {
            None | Some(Value::Null) if !required => continue,
            None | Some(Value::Null) => return Err(ApiError::invalid(field, format!("`{field}` is required (USD per token)"))),
            Some(v @ (Value::Number(_) | Value::String(_))) => Usd::from_json(v),
            Some(_) => None,
        };
        let amount = amount
            .filter(|a| *a >= Usd::ZERO && a.to_f64().is_finite())
            .ok_or_else(|| ApiError::invalid(field, format!("`{field}` must be a number or decimal string ≥ 0 (USD per token)")))?;
        spec.insert((*field).into(), json!(amount.to_string()));
    }
    match map.get("provider") {
        None | Some(Value::Null) => {}
        Some(Value::String(p)) if !p.trim().is_empty() && p.len() <= MAX_MODEL_CHARS => {
            spec.insert("litellm_provider".into(), json!(p.trim()));
        }
        Some(_) => return Err(ApiError::invalid("provider", "`provider` must be a non-empty string")),
    }
    Ok((model, Value::Object(spec)))
}

/// A stored price as the API shows it.
fn price_json(row: &StoredModelPrice) -> Value {
    let spec: Value = serde_json::from_str(&row.spec).unwrap_or(Value::Null);
    let mut body = json!({"model": row.model});
    for (field, _) in AMOUNTS {
        body[*field] = spec.get(*field).cloned().unwrap_or(Value::Null);
    }
    body["provider"] = spec.get("litellm_provider").cloned().unwrap_or(Value::Null);
    body["updated_at"] = json!(row.updated_at);
    body
}

/// Runs a control-store call off the async workers.
async fn blocking<T: Send + 'static>(
    state: &AppState,
    f: impl FnOnce(&AppState) -> Result<T, ControlError> + Send + 'static,
) -> Result<T, ApiError> {
    let state = state.clone();
    tokio::task::spawn_blocking(move || f(&state)).await.map_err(ApiError::unavailable)?.map_err(ApiError::unavailable)
}

pub async fn list_model_prices(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let rows = blocking(&state, move |s| s.control.list_model_prices(Some(project_id))).await?;
    let results: Vec<Value> = rows.iter().map(price_json).collect();
    Ok(axum::Json(json!({"results": results, "next": null})).into_response())
}

pub async fn put_model_price(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let (model, spec) = parse_request(&body)?;
    let stored = blocking(&state, move |s| {
        let row = s.control.put_model_price(project_id, &model, &spec.to_string())?;
        s.project_prices.reload(&s.control, project_id)?;
        Ok(row)
    })
    .await?;
    Ok((StatusCode::CREATED, axum::Json(price_json(&stored))).into_response())
}

pub async fn delete_model_price(State(state): State<AppState>, Path((project, model)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, ApiError> {
    let project_id = authorize(&state, &headers, &project)?;
    let deleted = blocking(&state, move |s| {
        let deleted = s.control.delete_model_price(project_id, &model)?;
        s.project_prices.reload(&s.control, project_id)?;
        Ok(deleted)
    })
    .await?;
    if !deleted {
        return Err(ApiError::new(StatusCode::NOT_FOUND, "not_found", "Not found."));
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_checked_field_by_field() {
        let ok = parse_request(&Bytes::from(r#"{"model":" m ","input_cost_per_token":"0.000002","output_cost_per_token":8e-6,"provider":"openai"}"#));
        let (model, spec) = ok.ok().unwrap();
        assert_eq!(model, "m");
        assert_eq!(spec, json!({"input_cost_per_token": "0.000002", "output_cost_per_token": "0.000008", "litellm_provider": "openai"}));
        let field = |body: &str| match parse_request(&Bytes::from(body.to_owned())) {
            Err(e) => e.into_response().status(),
            Ok(_) => StatusCode::OK,
        };
        assert_eq!(field(r#"{"model":"m","input_cost_per_token":"-1","output_cost_per_token":0}"#), StatusCode::BAD_REQUEST);
        assert_eq!(field(r#"{"model":"m","input_cost_per_token":"abc","output_cost_per_token":0}"#), StatusCode::BAD_REQUEST);
        assert_eq!(field(r#"{"model":"m","input_cost_per_token":1}"#), StatusCode::BAD_REQUEST);
        assert_eq!(field(r#"{"input_cost_per_token":1,"output_cost_per_token":1}"#), StatusCode::BAD_REQUEST);
        assert_eq!(field(r#"{"model":"m","input_cost_per_token":1,"output_cost_per_token":1,"x":1}"#), StatusCode::BAD_REQUEST);
        assert_eq!(field(r#"{"model":"m","input_cost_per_token":0,"output_cost_per_token":1}"#), StatusCode::OK);
    }

    #[test]
    fn stored_specs_make_an_exact_table() {
        let row = |model: &str, spec: Value| StoredModelPrice { project_id: 7, model: model.into(), spec: spec.to_string(), updated_at: "2026-01-01T00:00:00Z".into() };
        let book = book_of(
            7,
            &[row("my-finetune", json!({"input_cost_per_token": "0.000002", "output_cost_per_token": "0.00000015", "cache_read_input_token_cost": "0.0000005"}))],
            &Map::new(),
        )
        .unwrap();
        assert_eq!(book.version(), "project-7@2026-01-01T00:00:00Z");
        let price = book.lookup("my-finetune", Some("openai")).unwrap().prices;
        assert_eq!(price.input.to_string(), "0.000002");
        assert_eq!(price.output.to_string(), "0.00000015");
        assert_eq!(price.cache_read.map(|u| u.to_string()).as_deref(), Some("0.0000005"));
        assert!(book_of(7, &[], &Map::new()).is_none());
    }
}

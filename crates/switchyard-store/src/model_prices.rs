//! A project's own model prices, in the control store: one row per model, its spec stored as
//! JSON in LiteLLM's field names (validated by the server before it gets here), so the
//! project's table is built by the same reader as LiteLLM's.

use rusqlite::{params, Row};

use crate::control::{ControlError, ControlStore};

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS model_prices (
    project_id INTEGER NOT NULL,
    model TEXT NOT NULL,
    spec TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (project_id, model)
);
";

#[derive(Debug, Clone, PartialEq)]
pub struct StoredModelPrice {
    pub project_id: i64,
    pub model: String,
    /// The price's JSON (LiteLLM's field names).
    pub spec: String,
    pub updated_at: String,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn model_price(r: &Row<'_>) -> rusqlite::Result<StoredModelPrice> {
    Ok(StoredModelPrice { project_id: r.get(0)?, model: r.get(1)?, spec: r.get(2)?, updated_at: r.get(3)? })
}

impl ControlStore {
    /// Creates or replaces a project's price for `model`.
    pub fn put_model_price(&self, project_id: i64, model: &str, spec: &str) -> Result<StoredModelPrice, ControlError> {
        let conn = self.conn.lock().unwrap();
        let at = now();
        conn.execute(
            "INSERT INTO model_prices (project_id, model, spec, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (project_id, model) DO UPDATE SET spec = excluded.spec, updated_at = excluded.updated_at",
            params![project_id, model, spec, at],
        )?;
        Ok(StoredModelPrice { project_id, model: model.to_owned(), spec: spec.to_owned(), updated_at: at })
    }

    /// A project's prices, by model; of every project when `project_id` is `None`.
    pub fn list_model_prices(&self, project_id: Option<i64>) -> Result<Vec<StoredModelPrice>, ControlError> {
        let conn = self.reader.lock().unwrap();
        let mut stmt = conn.prepare_cached(
            "SELECT project_id, model, spec, updated_at FROM model_prices WHERE (?1 IS NULL OR project_id = ?1) ORDER BY project_id, model",
        )?;
        let rows = stmt.query_map([project_id], model_price)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// Removes a project's price for `model`; `false` when there was none.
    pub fn delete_model_price(&self, project_id: i64, model: &str) -> Result<bool, ControlError> {
        let conn = self.conn.lock().unwrap();
        Ok(conn.execute("DELETE FROM model_prices WHERE project_id = ?1 AND model = ?2", params![project_id, model])? > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_are_kept_per_project_and_replaced_by_model() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(&dir.path().join("control.db")).unwrap();
        store.put_model_price(1, "my-finetune", "{\"input_cost_per_token\":1}").unwrap();
        store.put_model_price(1, "my-finetune", "{\"input_cost_per_token\":2}").unwrap();
        store.put_model_price(2, "other", "{}").unwrap();
        let mine = store.list_model_prices(Some(1)).unwrap();
        assert_eq!(mine.len(), 1, "replaced, not added");
        assert_eq!(mine[0].spec, "{\"input_cost_per_token\":2}");
        assert_eq!(store.list_model_prices(None).unwrap().len(), 2);
        assert!(!store.delete_model_price(1, "other").unwrap(), "another project's model is not deleted");
        assert!(store.delete_model_price(1, "my-finetune").unwrap());
        assert!(store.list_model_prices(Some(1)).unwrap().is_empty());
        assert!(!store.delete_model_price(1, "my-finetune").unwrap());
    }
}

//! Warehouses added through the API (`/api/projects/{id}/warehouses/`), in the control store.
//! A warehouse's spec is stored as JSON (validated by the server before it gets here); its
//! loader's cursor lives in the warehouse itself and, as a copy, in the event log.

use rusqlite::{params, OptionalExtension, Row};

use crate::control::{ControlError, ControlStore};

#[derive(Debug, Clone, PartialEq)]
pub struct StoredWarehouse {
    pub id: i64,
    pub project_id: i64,
    /// The spec's JSON, secrets included.
    pub spec: String,
    pub created_at: String,
}

const COLUMNS: &str = "id, project_id, spec, created_at";

fn warehouse(r: &Row<'_>) -> rusqlite::Result<StoredWarehouse> {
    Ok(StoredWarehouse { id: r.get(0)?, project_id: r.get(1)?, spec: r.get(2)?, created_at: r.get(3)? })
}

impl ControlStore {
    pub fn create_warehouse(&self, project_id: i64, spec: &str) -> Result<StoredWarehouse, ControlError> {
        let conn = self.conn.lock().unwrap();
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        conn.execute("INSERT INTO warehouses (project_id, spec, created_at) VALUES (?1, ?2, ?3)", params![project_id, spec, at])?;
        Ok(StoredWarehouse { id: conn.last_insert_rowid(), project_id, spec: spec.to_owned(), created_at: at })
    }

    /// Live warehouses: of `project_id`, or of every project.
    pub fn list_warehouses(&self, project_id: Option<i64>) -> Result<Vec<StoredWarehouse>, ControlError> {
        let conn = self.reader.lock().unwrap();
        let mut stmt = conn.prepare_cached(&format!("SELECT {COLUMNS} FROM warehouses WHERE deleted_at IS NULL AND (?1 IS NULL OR project_id = ?1) ORDER BY id"))?;
        let rows = stmt.query_map([project_id], warehouse)?.collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    pub fn get_warehouse(&self, project_id: i64, id: i64) -> Result<Option<StoredWarehouse>, ControlError> {
        let conn = self.reader.lock().unwrap();
        Ok(conn
            .query_row(&format!("SELECT {COLUMNS} FROM warehouses WHERE deleted_at IS NULL AND project_id = ?1 AND id = ?2"), params![project_id, id], warehouse)
            .optional()?)
    }

    /// Replaces a live warehouse's spec; `false` when there is no such warehouse.
    pub fn update_warehouse(&self, project_id: i64, id: i64, spec: &str) -> Result<bool, ControlError> {
        let conn = self.conn.lock().unwrap();
        let changed = conn.execute("UPDATE warehouses SET spec = ?3 WHERE deleted_at IS NULL AND project_id = ?1 AND id = ?2", params![project_id, id, spec])?;
        Ok(changed > 0)
    }

    /// Marks a warehouse deleted; `false` when there was none.
    pub fn delete_warehouse(&self, project_id: i64, id: i64) -> Result<bool, ControlError> {
        let conn = self.conn.lock().unwrap();
        let at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
        let changed = conn.execute("UPDATE warehouses SET deleted_at = ?3 WHERE deleted_at IS NULL AND project_id = ?1 AND id = ?2", params![project_id, id, at])?;
        Ok(changed > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warehouses_are_created_listed_and_deleted_per_project() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(&dir.path().join("control.db")).unwrap();
        let a = store.create_warehouse(1, r#"{"name":"a"}"#).unwrap();
        let b = store.create_warehouse(2, r#"{"name":"b"}"#).unwrap();
        assert_eq!(store.list_warehouses(Some(1)).unwrap(), vec![a.clone()]);
        assert_eq!(store.list_warehouses(None).unwrap().len(), 2);
        assert_eq!(store.get_warehouse(2, a.id).unwrap(), None, "another project's");
        assert!(!store.delete_warehouse(1, b.id).unwrap());
        assert!(store.update_warehouse(1, a.id, r#"{"name":"a2"}"#).unwrap());
        assert!(!store.update_warehouse(1, b.id, "{}").unwrap());
        assert_eq!(store.get_warehouse(1, a.id).unwrap().unwrap().spec, r#"{"name":"a2"}"#);
        assert!(store.delete_warehouse(1, a.id).unwrap());
        assert_eq!(store.list_warehouses(None).unwrap(), vec![b]);
        assert_eq!(store.get_warehouse(1, a.id).unwrap(), None);
    }
}

//! Properties, traits and context flattened to columns, as RudderStack's warehouse transformer
//! does it (`setDataFromInputAndComputeColumnTypes`):
//!
//! - nested objects are walked, their keys joined with `_` (`{"a": {"b": 1}}` → `a_b`); the
//!   joined path is then named by [`naming::column_name`] (`context.traits.firstName` →
//!   `context_traits_first_name`);
//! - arrays are not walked: one column holding their JSON text;
//! - null, empty strings and empty arrays create no column (nor do empty objects);
//! - `context` gets the `context_` prefix; properties and traits none.
//!
//! Two paths with the same column name (`a.b` and `a_b`) write one column: the later in the
//! object's order wins, as in RudderStack.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use crate::naming::{self, Dialect};
use crate::types::{infer, ColumnType};

/// The columns of a row: name → (type, value).
pub type Columns = BTreeMap<String, (ColumnType, Value)>;

/// Writes the columns of `object` into `out`, every path prefixed with `prefix` (`""` or
/// `"context_"`). Columns named in `reserved` are skipped (the table's standard columns: a
/// property cannot overwrite them, RudderStack drops it).
pub fn flatten_into(out: &mut Columns, dialect: Dialect, prefix: &str, object: &Map<String, Value>, reserved: &[&str]) {
    for (key, value) in object {
        let path = format!("{prefix}{key}");
        if let Value::Object(inner) = value {
            flatten_into(out, dialect, &format!("{path}_"), inner, reserved);
            continue;
        }
        let Some(column) = naming::column_name(dialect, &path) else { continue };
        if reserved.contains(&column.as_str()) {
            continue;
        }
        if let Some(typed) = infer(value) {
            out.insert(column, typed);
        }
    }
}

/// The columns of `object` alone.
pub fn flatten(dialect: Dialect, prefix: &str, object: &Map<String, Value>) -> Columns {
    let mut out = Columns::new();
    flatten_into(&mut out, dialect, prefix, object, &[]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().unwrap().clone()
    }

    #[test]
    fn nested_objects_become_columns_and_arrays_stay_json() {
        let props = map(json!({
            "flow_id": "flow_42",
            "duration_ms": 1830,
            "node": {"id": "n1", "retry": {"count": 2, "backoffMs": 250.5}},
            "tags": ["a", "b"],
            "nothing": null,
            "empty": "",
            "none": [],
            "noObject": {},
            "startedAt": "2025-12-05T09:30:00Z",
            "$ai_model": "gpt-4o-mini",
        }));
        let cols = flatten(Dialect::Postgres, "", &props);
        let got: Vec<(&str, &str, Value)> = cols.iter().map(|(k, (t, v))| (k.as_str(), t.as_str(), v.clone())).collect();
        assert_eq!(
            got,
            vec![
                ("ai_model", "string", json!("gpt-4o-mini")),
                ("duration_ms", "int", json!(1830)),
                ("flow_id", "string", json!("flow_42")),
                ("node_id", "string", json!("n1")),
                ("node_retry_backoff_ms", "float", json!(250.5)),
                ("node_retry_count", "int", json!(2)),
                ("started_at", "datetime", json!("2025-12-05T09:30:00.000000Z")),
                ("tags", "string", json!("[\"a\",\"b\"]")),
            ]
        );
    }

    #[test]
    fn context_is_prefixed_and_reserved_columns_are_kept_from_properties() {
        let context = map(json!({"library": {"name": "analytics-node", "version": "2.1.0"}, "traits": {"firstName": "Ada"}, "ip": "10.0.0.1"}));
        let mut cols = Columns::new();
        flatten_into(&mut cols, Dialect::Postgres, "context_", &context, &["context_ip"]);
        assert_eq!(cols.keys().collect::<Vec<_>>(), vec!["context_library_name", "context_library_version", "context_traits_first_name"]);
        let props = map(json!({"user_id": "spoof", "id": "spoof", "order": 3}));
        let mut cols = Columns::new();
        flatten_into(&mut cols, Dialect::Postgres, "", &props, &["id", "user_id"]);
        assert_eq!(cols.keys().collect::<Vec<_>>(), vec!["_order"]);
    }
}

//! The warehouse schema (tables → columns → type) as it grows while rows arrive, and the
//! discards (RudderStack's `rudder_discards`).
//!
//! [`Schema::admit`] follows RudderStack's loader (`rudder-server: warehouse/schema`): a new
//! table or column takes the type of its first value; an existing column's type wins over the
//! value's; columns are never dropped or retyped. A value that cannot be converted to its
//! column's type is set to NULL in the row (the column is left out) and written to the
//! discards with its reason — never dropped silently. The discard's `row_id` is the row's
//! `id` (the event id; the user id for `users`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flatten::Columns;
use crate::rows::{Merge, Row};
use crate::types::{coerce, value_text, ColumnType};

/// The discards table's name.
pub const DISCARDS_TABLE: &str = "rudder_discards";

/// A value that did not fit its column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discard {
    pub table: String,
    pub column: String,
    /// The row's `id`.
    pub row_id: String,
    /// The value as text (strings as they are, anything else as JSON).
    pub value: String,
    /// The row's `received_at`, when it has one.
    pub received_at: Option<String>,
    pub reason: String,
}

impl Discard {
    /// The discard as a row of `rudder_discards` (RudderStack's columns: `row_id`,
    /// `table_name`, `column_name`, `column_value`, `received_at`, `reason`; the loader adds
    /// `uuid_ts`). Merged on (`row_id`, `table_name`, `column_name`), as RudderStack merges it.
    pub fn to_row(&self) -> Row {
        let mut columns = Columns::new();
        let text = |s: &str| (ColumnType::String, Value::String(s.to_owned()));
        columns.insert("row_id".into(), text(&self.row_id));
        columns.insert("table_name".into(), text(&self.table));
        columns.insert("column_name".into(), text(&self.column));
        columns.insert("column_value".into(), text(&self.value));
        columns.insert("reason".into(), text(&self.reason));
        if let Some(at) = &self.received_at {
            columns.insert("received_at".into(), (ColumnType::Datetime, Value::String(at.clone())));
        }
        Row {
            table: DISCARDS_TABLE.into(),
            columns,
            merge: Merge::Replace,
        }
    }
}

/// Tables → columns → type.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schema {
    pub tables: BTreeMap<String, BTreeMap<String, ColumnType>>,
}

impl Schema {
    /// An empty schema.
    pub fn new() -> Schema {
        Schema::default()
    }

    /// The schema with the tables whose columns are fixed: the platform's tables and the
    /// discards, so a value of the wrong type there is discarded even in the first row.
    pub fn with_fixed_tables() -> Schema {
        let mut schema = Schema::new();
        for (table, columns) in crate::rows::fixed_tables() {
            schema.tables.insert(table.to_owned(), columns.iter().map(|&(c, t)| (c.to_owned(), t)).collect());
        }
        schema
    }

    /// The type of a column, if the schema has it.
    pub fn column(&self, table: &str, column: &str) -> Option<ColumnType> {
        self.tables.get(table)?.get(column).copied()
    }

    /// Admits a row: new columns are added with the type of their value; values of existing
    /// columns are converted to the column's type, or left out and discarded with the reason.
    pub fn admit(&mut self, row: Row) -> (Row, Vec<Discard>) {
        let row_id = match row.columns.get("id") {
            Some((_, v)) => value_text(v),
            None => String::new(),
        };
        let received_at = row.columns.get("received_at").map(|(_, v)| value_text(v));
        let table = self.tables.entry(row.table.clone()).or_default();
        let mut discards = Vec::new();
        let mut columns = Columns::new();
        for (name, (ty, value)) in row.columns {
            let Some(&existing) = table.get(&name) else {
                table.insert(name.clone(), ty);
                columns.insert(name, (ty, value));
                continue;
            };
            match coerce(&value, ty, existing) {
                Ok(converted) => {
                    columns.insert(name, (existing, converted));
                }
                Err(reason) => discards.push(Discard {
                    table: row.table.clone(),
                    column: name,
                    row_id: row_id.clone(),
                    value: value_text(&value),
                    received_at: received_at.clone(),
                    reason,
                }),
            }
        }
        (
            Row {
                table: row.table,
                columns,
                merge: row.merge,
            },
            discards,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(table: &str, id: &str, cols: &[(&str, Value)]) -> Row {
        let mut columns = Columns::new();
        columns.insert("id".into(), (ColumnType::String, json!(id)));
        columns.insert("received_at".into(), (ColumnType::Datetime, json!("2025-12-05T09:30:00.000000Z")));
        for (name, value) in cols {
            let (t, v) = crate::types::infer(value).unwrap();
            columns.insert((*name).into(), (t, v));
        }
        Row {
            table: table.into(),
            columns,
            merge: Merge::Replace,
        }
    }

    #[test]
    fn the_schema_grows_and_conflicts_land_in_discards() {
        let mut schema = Schema::new();
        let (first, discards) = schema.admit(row("flow_executed", "e1", &[("duration_ms", json!(1200)), ("status", json!("success"))]));
        assert!(discards.is_empty());
        assert_eq!(first.columns["duration_ms"], (ColumnType::Int, json!(1200)));
        assert_eq!(schema.column("flow_executed", "duration_ms"), Some(ColumnType::Int));

        // A new property: a new column. A float in a float column, an int widened.
        let (second, discards) = schema.admit(row("flow_executed", "e2", &[("duration_ms", json!(900)), ("node_count", json!(7)), ("score", json!(0.5))]));
        assert!(discards.is_empty());
        assert_eq!(schema.column("flow_executed", "node_count"), Some(ColumnType::Int));
        assert_eq!(second.columns.len(), 5);
        let (third, discards) = schema.admit(row("flow_executed", "e3", &[("score", json!(1))]));
        assert!(discards.is_empty());
        assert_eq!(third.columns["score"], (ColumnType::Float, json!(1.0)));

        // Conflicts: the column's type wins; what does not fit is discarded with its reason.
        let (fourth, discards) = schema.admit(row("flow_executed", "e4", &[("duration_ms", json!("slow")), ("status", json!(404)), ("node_count", json!(2.5))]));
        assert_eq!(fourth.columns["status"], (ColumnType::String, json!("404")), "an int is kept in a string column");
        assert!(!fourth.columns.contains_key("duration_ms") && !fourth.columns.contains_key("node_count"));
        assert_eq!(
            discards,
            vec![
                Discard {
                    table: "flow_executed".into(),
                    column: "duration_ms".into(),
                    row_id: "e4".into(),
                    value: "slow".into(),
                    received_at: Some("2025-12-05T09:30:00.000000Z".into()),
                    reason: "incompatible schema conversion from string to int".into()
                },
                Discard {
                    table: "flow_executed".into(),
                    column: "node_count".into(),
                    row_id: "e4".into(),
                    value: "2.5".into(),
                    received_at: Some("2025-12-05T09:30:00.000000Z".into()),
                    reason: "incompatible schema conversion from float to int".into()
                },
            ]
        );
        // Never retyped by a later value, in the same table; other tables are their own.
        assert_eq!(schema.column("flow_executed", "duration_ms"), Some(ColumnType::Int));
        let (_, discards) = schema.admit(row("tool_used", "e5", &[("duration_ms", json!("slow"))]));
        assert!(discards.is_empty());
        assert_eq!(schema.column("tool_used", "duration_ms"), Some(ColumnType::String));

        let discard_row = Discard {
            table: "t".into(),
            column: "c".into(),
            row_id: "r".into(),
            value: "v".into(),
            received_at: None,
            reason: "why".into(),
        }
        .to_row();
        assert_eq!(discard_row.table, "rudder_discards");
        assert_eq!(discard_row.columns["column_value"].1, json!("v"));
    }
}

//! Feature-flag definitions in the control store: PostHog's flag JSON per project, versioned
//! (optimistic concurrency), soft-deleted, every change in an audit log; plus the project's
//! group type mapping and cohorts, which flags refer to.

use rusqlite::{params, OptionalExtension, Row};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::control::{ControlError, ControlStore};

/// A stored flag: its PostHog JSON (`definition`, without the fields below) and bookkeeping.
#[derive(Debug, Clone, Serialize)]
pub struct StoredFlag {
    pub id: i64,
    pub project_id: i64,
    pub key: String,
    pub version: i64,
    pub deleted: bool,
    pub created_at: String,
    pub updated_at: String,
    pub definition: Map<String, Value>,
}

impl StoredFlag {
    /// PostHog's flag JSON: the definition with `id`, `team_id`, `key`, `version`, `deleted`,
    /// `created_at`, `updated_at` set from the store.
    pub fn to_posthog_json(&self) -> Value {
        let mut out = self.definition.clone();
        out.insert("id".into(), self.id.into());
        out.insert("team_id".into(), self.project_id.into());
        out.insert("key".into(), self.key.clone().into());
        out.insert("version".into(), self.version.into());
        out.insert("deleted".into(), self.deleted.into());
        out.insert("created_at".into(), self.created_at.clone().into());
        out.insert("updated_at".into(), self.updated_at.clone().into());
        Value::Object(out)
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct AuditEntry {
    pub id: i64,
    pub flag_id: i64,
    pub flag_key: String,
    pub at: String,
    /// The id of the key that made the change.
    pub key_id: Option<i64>,
    pub action: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

const FLAG_COLUMNS: &str = "id, project_id, key, version, deleted, created_at, updated_at, definition";

fn flag_from_row(r: &Row<'_>) -> rusqlite::Result<(StoredFlag, String)> {
    Ok((
        StoredFlag {
            id: r.get(0)?,
            project_id: r.get(1)?,
            key: r.get(2)?,
            version: r.get(3)?,
            deleted: r.get::<_, i64>(4)? != 0,
            created_at: r.get(5)?,
            updated_at: r.get(6)?,
            definition: Map::new(),
        },
        r.get(7)?,
    ))
}

fn parse_flag((mut flag, text): (StoredFlag, String)) -> Result<StoredFlag, ControlError> {
    flag.definition = serde_json::from_str(&text).map_err(|e| ControlError::Corrupt(format!("flag {}: {e}", flag.id)))?;
    Ok(flag)
}

/// Fields the store owns; never kept inside the stored definition.
const STORE_FIELDS: &[&str] = &["id", "team_id", "key", "version", "deleted", "created_at", "updated_at"];

fn strip_store_fields(mut definition: Map<String, Value>) -> Map<String, Value> {
    for field in STORE_FIELDS {
        definition.remove(*field);
    }
    definition
}

impl ControlStore {
    pub fn list_flags(&self, project_id: i64, include_deleted: bool) -> Result<Vec<StoredFlag>, ControlError> {
        let conn = self.conn.lock().expect("control lock");
        let mut stmt = conn.prepare(&format!(
            "SELECT {FLAG_COLUMNS} FROM feature_flags WHERE project_id = ?1 AND (?2 OR deleted = 0) ORDER BY id"
        ))?;
        let rows = stmt.query_map(params![project_id, include_deleted], flag_from_row)?.collect::<Result<Vec<_>, _>>()?;
        rows.into_iter().map(parse_flag).collect()
    }

    /// A live flag by numeric id or key (a deleted one only by id).
    pub fn get_flag(&self, project_id: i64, id_or_key: &str) -> Result<StoredFlag, ControlError> {
        let conn = self.conn.lock().expect("control lock");
        let row = match id_or_key.parse::<i64>() {
            Ok(id) => conn
                .query_row(&format!("SELECT {FLAG_COLUMNS} FROM feature_flags WHERE project_id = ?1 AND id = ?2"), params![project_id, id], flag_from_row)
                .optional()?,
            Err(_) => conn
                .query_row(
                    &format!("SELECT {FLAG_COLUMNS} FROM feature_flags WHERE project_id = ?1 AND key = ?2 AND deleted = 0"),
                    params![project_id, id_or_key],
                    flag_from_row,
                )
                .optional()?,
        };
        row.map(parse_flag).ok_or(ControlError::FlagNotFound)?
    }

    /// Creates a flag (version 1). A live flag with the same key is a conflict.
    pub fn create_flag(
        &self,
        project_id: i64,
        key: &str,
        definition: Map<String, Value>,
        key_id: Option<i64>,
    ) -> Result<StoredFlag, ControlError> {
        let mut conn = self.conn.lock().expect("control lock");
        let tx = conn.transaction()?;
        let flag = insert_flag(&tx, project_id, key, definition, key_id, &now())?;
        tx.commit()?;
        Ok(flag)
    }

    /// Replaces a flag's definition (and key), or soft-deletes it, if it is still at
    /// `expected_version` (when given). Bumps the version; records the change.
    #[allow(clippy::too_many_arguments, reason = "one argument per column the update sets")]
    pub fn update_flag(
        &self,
        project_id: i64,
        id: i64,
        expected_version: Option<i64>,
        key: &str,
        definition: Map<String, Value>,
        deleted: bool,
        key_id: Option<i64>,
    ) -> Result<StoredFlag, ControlError> {
        let mut conn = self.conn.lock().expect("control lock");
        let tx = conn.transaction()?;
        let change = FlagChange { id, expected_version, key, definition, deleted };
        let flag = replace_flag(&tx, project_id, change, key_id, &now())?;
        tx.commit()?;
        Ok(flag)
    }

    /// Stores an import in one transaction, all or nothing: group types, cohorts, then flags
    /// (created, or the live flag of that id updated, each version bumped and audited).
    pub fn import_definitions(&self, project_id: i64, import: FlagImport, key_id: Option<i64>) -> Result<ImportCounts, ControlError> {
        let at = now();
        let mut counts = ImportCounts::default();
        {
            let mut conn = self.conn.lock().expect("control lock");
            let tx = conn.transaction()?;
            for (index, name) in &import.group_types {
                tx.execute(
                    "INSERT INTO group_types (project_id, group_type_index, group_type) VALUES (?1, ?2, ?3)
                     ON CONFLICT (project_id, group_type_index) DO UPDATE SET group_type = excluded.group_type",
                    params![project_id, index, name],
                )?;
            }
            for (id, definition) in &import.cohorts {
                tx.execute(
                    "INSERT INTO cohorts (project_id, id, definition) VALUES (?1, ?2, ?3)
                     ON CONFLICT (project_id, id) DO UPDATE SET definition = excluded.definition",
                    params![project_id, id, definition.to_string()],
                )?;
            }
            for flag in import.flags {
                match flag.existing_id {
                    Some(id) => {
                        let change = FlagChange { id, expected_version: None, key: &flag.key, definition: flag.definition, deleted: false };
                        replace_flag(&tx, project_id, change, key_id, &at)?;
                        counts.updated += 1;
                    }
                    None => {
                        insert_flag(&tx, project_id, &flag.key, flag.definition, key_id, &at)?;
                        counts.created += 1;
                    }
                }
            }
            tx.commit()?;
        }
        if !import.group_types.is_empty() {
            self.refresh_group_types()?;
        }
        Ok(counts)
    }

    /// The audit log of a project's flags (or one flag), newest first.
    pub fn flag_audit(&self, project_id: i64, flag_id: Option<i64>, limit: usize) -> Result<Vec<AuditEntry>, ControlError> {
        let conn = self.conn.lock().expect("control lock");
        let mut stmt = conn.prepare(
            "SELECT id, flag_id, flag_key, at, key_id, action, before, after FROM feature_flag_audit
             WHERE project_id = ?1 AND (?2 IS NULL OR flag_id = ?2) ORDER BY id DESC LIMIT ?3",
        )?;
        let rows = stmt
            .query_map(params![project_id, flag_id, limit as i64], |r| {
                let parse = |t: Option<String>| t.and_then(|t| serde_json::from_str(&t).ok());
                Ok(AuditEntry {
                    id: r.get(0)?,
                    flag_id: r.get(1)?,
                    flag_key: r.get(2)?,
                    at: r.get(3)?,
                    key_id: r.get(4)?,
                    action: r.get(5)?,
                    before: parse(r.get(6)?),
                    after: parse(r.get(7)?),
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(rows)
    }

    /// PostHog's `group_type_mapping`: `{"0": "workspace", …}`.
    pub fn group_type_mapping(&self, project_id: i64) -> Result<Map<String, Value>, ControlError> {
        let conn = self.conn.lock().expect("control lock");
        let mut stmt = conn.prepare("SELECT group_type_index, group_type FROM group_types WHERE project_id = ?1 ORDER BY group_type_index")?;
        let rows = stmt
            .query_map([project_id], |r| Ok((r.get::<_, i64>(0)?.to_string(), Value::String(r.get(1)?))))?
            .collect::<Result<Map<_, _>, _>>()?;
        Ok(rows)
    }

    pub fn set_group_type(&self, project_id: i64, index: i64, name: &str) -> Result<(), ControlError> {
        self.conn.lock().expect("control lock").execute(
            "INSERT INTO group_types (project_id, group_type_index, group_type) VALUES (?1, ?2, ?3)
             ON CONFLICT (project_id, group_type_index) DO UPDATE SET group_type = excluded.group_type",
            params![project_id, index, name],
        )?;
        self.refresh_group_types()
    }

    /// Cohorts as PostHog's local evaluation serves them: `{"<id>": property group}`.
    pub fn cohorts(&self, project_id: i64) -> Result<Map<String, Value>, ControlError> {
        let conn = self.conn.lock().expect("control lock");
        let mut stmt = conn.prepare("SELECT id, definition FROM cohorts WHERE project_id = ?1 ORDER BY id")?;
        let rows = stmt
            .query_map([project_id], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))?
            .collect::<Result<Vec<_>, _>>()?;
        rows.into_iter()
            .map(|(id, text)| {
                let v = serde_json::from_str(&text).map_err(|e| ControlError::Corrupt(format!("cohort {id}: {e}")))?;
                Ok((id.to_string(), v))
            })
            .collect()
    }

    /// Persists an upstream flag snapshot (PostHog local evaluation JSON).
    pub fn save_flag_snapshot(&self, project_id: i64, body: &str, fetched_at: &str) -> Result<(), ControlError> {
        self.conn.lock().expect("control lock").execute(
            "INSERT INTO flag_snapshots (project_id, body, fetched_at) VALUES (?1, ?2, ?3)
             ON CONFLICT (project_id) DO UPDATE SET body = excluded.body, fetched_at = excluded.fetched_at",
            params![project_id, body, fetched_at],
        )?;
        Ok(())
    }

    /// Records that upstream confirmed the persisted snapshot is current.
    pub fn touch_flag_snapshot(&self, project_id: i64, fetched_at: &str) -> Result<(), ControlError> {
        self.conn.lock().expect("control lock").execute("UPDATE flag_snapshots SET fetched_at = ?2 WHERE project_id = ?1", params![project_id, fetched_at])?;
        Ok(())
    }

    /// The persisted upstream snapshot and when it was fetched.
    pub fn load_flag_snapshot(&self, project_id: i64) -> Result<Option<(String, String)>, ControlError> {
        Ok(self
            .conn
            .lock()
            .expect("control lock")
            .query_row("SELECT body, fetched_at FROM flag_snapshots WHERE project_id = ?1", [project_id], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?)
    }

    pub fn put_cohort(&self, project_id: i64, id: i64, definition: &Value) -> Result<(), ControlError> {
        self.conn.lock().expect("control lock").execute(
            "INSERT INTO cohorts (project_id, id, definition) VALUES (?1, ?2, ?3)
             ON CONFLICT (project_id, id) DO UPDATE SET definition = excluded.definition",
            params![project_id, id, definition.to_string()],
        )?;
        Ok(())
    }
}

/// What an import stores (see [`ControlStore::import_definitions`]).
#[derive(Debug, Default)]
pub struct FlagImport {
    /// Group type index → name.
    pub group_types: Vec<(i64, String)>,
    /// Cohort id → its property groups.
    pub cohorts: Vec<(i64, Value)>,
    pub flags: Vec<ImportedFlag>,
}

/// One flag of an import: created, or the live flag `existing_id` updated.
#[derive(Debug)]
pub struct ImportedFlag {
    pub existing_id: Option<i64>,
    pub key: String,
    pub definition: Map<String, Value>,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ImportCounts {
    pub created: usize,
    pub updated: usize,
}

fn insert_flag(
    tx: &rusqlite::Transaction<'_>,
    project_id: i64,
    key: &str,
    definition: Map<String, Value>,
    key_id: Option<i64>,
    at: &str,
) -> Result<StoredFlag, ControlError> {
    let definition = strip_store_fields(definition);
    let text = serde_json::to_string(&definition).expect("JSON serializes");
    ensure_key_free(tx, project_id, key, None)?;
    tx.execute(
        "INSERT INTO feature_flags (project_id, key, definition, version, deleted, created_at, updated_at) VALUES (?1, ?2, ?3, 1, 0, ?4, ?4)",
        params![project_id, key, text, at],
    )?;
    let flag = StoredFlag {
        id: tx.last_insert_rowid(),
        project_id,
        key: key.to_owned(),
        version: 1,
        deleted: false,
        created_at: at.to_owned(),
        updated_at: at.to_owned(),
        definition,
    };
    audit(tx, &flag, at, key_id, "created", None, Some(flag.to_posthog_json()))?;
    Ok(flag)
}

/// A change to one stored flag.
struct FlagChange<'a> {
    id: i64,
    expected_version: Option<i64>,
    key: &'a str,
    definition: Map<String, Value>,
    deleted: bool,
}

fn replace_flag(tx: &rusqlite::Transaction<'_>, project_id: i64, change: FlagChange<'_>, key_id: Option<i64>, at: &str) -> Result<StoredFlag, ControlError> {
    let FlagChange { id, expected_version, key, definition, deleted } = change;
    let definition = strip_store_fields(definition);
    let text = serde_json::to_string(&definition).expect("JSON serializes");
    let before = tx
        .query_row(&format!("SELECT {FLAG_COLUMNS} FROM feature_flags WHERE project_id = ?1 AND id = ?2"), params![project_id, id], flag_from_row)
        .optional()?
        .map(parse_flag)
        .ok_or(ControlError::FlagNotFound)??;
    if let Some(expected) = expected_version {
        if expected != before.version {
            return Err(ControlError::VersionConflict { current: before.version, expected });
        }
    }
    if !deleted && key != before.key {
        ensure_key_free(tx, project_id, key, Some(id))?;
    }
    let version = before.version + 1;
    tx.execute(
        "UPDATE feature_flags SET key = ?3, definition = ?4, version = ?5, deleted = ?6, updated_at = ?7 WHERE project_id = ?1 AND id = ?2",
        params![project_id, id, key, text, version, deleted, at],
    )?;
    let after = StoredFlag {
        key: key.to_owned(),
        version,
        deleted,
        updated_at: at.to_owned(),
        definition,
        ..before.clone()
    };
    let action = if deleted && !before.deleted { "deleted" } else { "updated" };
    audit(tx, &after, at, key_id, action, Some(before.to_posthog_json()), Some(after.to_posthog_json()))?;
    Ok(after)
}

/// A live flag key belongs to one flag of a project (`except` is the flag being changed).
fn ensure_key_free(tx: &rusqlite::Transaction<'_>, project_id: i64, key: &str, except: Option<i64>) -> Result<(), ControlError> {
    let taken: Option<i64> = tx
        .query_row(
            "SELECT id FROM feature_flags WHERE project_id = ?1 AND key = ?2 AND deleted = 0 AND (?3 IS NULL OR id != ?3)",
            params![project_id, key, except],
            |r| r.get(0),
        )
        .optional()?;
    match taken {
        Some(_) => Err(ControlError::DuplicateFlagKey(key.to_owned())),
        None => Ok(()),
    }
}

fn audit(
    tx: &rusqlite::Transaction<'_>,
    flag: &StoredFlag,
    at: &str,
    key_id: Option<i64>,
    action: &str,
    before: Option<Value>,
    after: Option<Value>,
) -> Result<(), ControlError> {
    tx.execute(
        "INSERT INTO feature_flag_audit (project_id, flag_id, flag_key, at, key_id, action, before, after) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![flag.project_id, flag.id, flag.key, at, key_id, action, before.map(|v| v.to_string()), after.map(|v| v.to_string())],
    )?;
    Ok(())
}

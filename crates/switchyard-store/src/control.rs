//! The control store: projects and their keys (later also flags, persons, groups).
//!
//! Public keys (project tokens, write keys) are stored as they are; secret keys only as their
//! SHA-256. Lookups are served from an in-memory copy loaded at open and updated on every write,
//! so authenticating a request never touches the disk.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Mutex, RwLock};

use rand::distr::{Alphanumeric, SampleString};
use rusqlite::{params, Connection, OptionalExtension};
use sha2::{Digest, Sha256};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// Public PostHog project token (`phc_…`): capture and flag evaluation.
    ProjectToken,
    /// Public RudderStack/Segment write key: capture.
    WriteKey,
    /// Secret key (`phs_…`): administration and reading data.
    SecretKey,
}

impl KeyKind {
    fn as_str(self) -> &'static str {
        match self {
            KeyKind::ProjectToken => "project_token",
            KeyKind::WriteKey => "write_key",
            KeyKind::SecretKey => "secret_key",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "project_token" => KeyKind::ProjectToken,
            "write_key" => KeyKind::WriteKey,
            "secret_key" => KeyKind::SecretKey,
            _ => return None,
        })
    }
    /// How the key is stored: secrets hashed, public keys as they are.
    fn stored_form(self, key: &str) -> String {
        match self {
            KeyKind::SecretKey => hex_sha256(key),
            _ => key.to_owned(),
        }
    }
}

fn hex_sha256(s: &str) -> String {
    Sha256::digest(s.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
}

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("control store error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("the key is already registered to project {0}")]
    KeyTaken(i64),
    #[error("there is already a feature flag with the key `{0}`")]
    DuplicateFlagKey(String),
    #[error("the feature flag is at version {current}, not {expected}: reload it and apply the change again")]
    VersionConflict { current: i64, expected: i64 },
    #[error("no such feature flag")]
    FlagNotFound,
    #[error("invalid stored data: {0}")]
    Corrupt(String),
}

/// The keys of a project created on this start, shown once.
#[derive(Debug, Clone)]
pub struct NewProjectKeys {
    pub project_id: i64,
    pub project_token: String,
    pub write_key: String,
    pub secret_key: String,
}

/// Keys given explicitly (configuration or environment) rather than generated.
#[derive(Debug, Clone, Default)]
pub struct ExplicitKeys {
    pub project_token: Option<String>,
    pub write_key: Option<String>,
    pub secret_key: Option<String>,
}

/// Projects and keys. The embedded implementation is SQLite; PostgreSQL can follow.
pub struct ControlStore {
    pub(crate) conn: Mutex<Connection>,
    /// (kind, stored form) → (project id, key id)
    keys: RwLock<HashMap<(KeyKind, String), (i64, i64)>>,
    /// (project id, group type) pairs registered, so intake can tell new group types cheaply.
    group_types: RwLock<HashMap<i64, std::collections::HashSet<String>>>,
    /// Stored person properties by (project, distinct id), absent persons included; emptied
    /// whenever the person processor commits a change, so it never serves stale properties.
    pub(crate) person_cache: Mutex<crate::persons::PersonCache>,
}

/// A resolved key: its project and its own id (recorded in audit logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyRef {
    pub project_id: i64,
    pub key_id: i64,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE TABLE IF NOT EXISTS api_keys (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects (id),
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now')),
    UNIQUE (kind, value)
);
CREATE TABLE IF NOT EXISTS feature_flags (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL REFERENCES projects (id),
    key TEXT NOT NULL,
    definition TEXT NOT NULL,
    version INTEGER NOT NULL,
    deleted INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS feature_flags_live_key ON feature_flags (project_id, key) WHERE deleted = 0;
CREATE TABLE IF NOT EXISTS feature_flag_audit (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL,
    flag_id INTEGER NOT NULL,
    flag_key TEXT NOT NULL,
    at TEXT NOT NULL,
    key_id INTEGER,
    action TEXT NOT NULL,
    before TEXT,
    after TEXT
);
CREATE TABLE IF NOT EXISTS group_types (
    project_id INTEGER NOT NULL,
    group_type_index INTEGER NOT NULL,
    group_type TEXT NOT NULL,
    PRIMARY KEY (project_id, group_type_index),
    UNIQUE (project_id, group_type)
);
CREATE TABLE IF NOT EXISTS flag_snapshots (
    project_id INTEGER PRIMARY KEY,
    body TEXT NOT NULL,
    fetched_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS persons (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL,
    properties TEXT NOT NULL,
    is_identified INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS person_distinct_ids (
    project_id INTEGER NOT NULL,
    distinct_id TEXT NOT NULL,
    person_id INTEGER NOT NULL,
    PRIMARY KEY (project_id, distinct_id)
);
CREATE INDEX IF NOT EXISTS person_distinct_ids_person ON person_distinct_ids (person_id);
CREATE TABLE IF NOT EXISTS groups (
    project_id INTEGER NOT NULL,
    group_type TEXT NOT NULL,
    group_key TEXT NOT NULL,
    properties TEXT NOT NULL,
    PRIMARY KEY (project_id, group_type, group_key)
);
CREATE TABLE IF NOT EXISTS cohorts (
    project_id INTEGER NOT NULL,
    id INTEGER NOT NULL,
    definition TEXT NOT NULL,
    PRIMARY KEY (project_id, id)
);
";

fn random_key(prefix: &str) -> String {
    format!("{prefix}{}", Alphanumeric.sample_string(&mut rand::rng(), 43))
}

impl ControlStore {
    pub fn open(path: &Path) -> Result<Self, ControlError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        let mut keys = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT kind, value, project_id, id FROM api_keys")?;
            let rows = stmt.query_map([], |r| {
                Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, i64>(2)?, r.get::<_, i64>(3)?))
            })?;
            for row in rows {
                let (kind, value, project, id) = row?;
                if let Some(kind) = KeyKind::parse(&kind) {
                    keys.insert((kind, value), (project, id));
                }
            }
        }
        let store = ControlStore {
            conn: Mutex::new(conn),
            keys: RwLock::new(keys),
            group_types: RwLock::default(),
            person_cache: Mutex::default(),
        };
        store.refresh_group_types()?;
        Ok(store)
    }

    /// On first start (no project yet) creates the default project with the explicit keys or
    /// generated ones, and returns them so they can be shown once. On later starts, explicit
    /// keys not registered yet are added to the default project.
    pub fn ensure_default_project(
        &self,
        explicit: &ExplicitKeys,
    ) -> Result<Option<NewProjectKeys>, ControlError> {
        let existing: Option<i64> = self
            .conn
            .lock()
            .expect("control lock")
            .query_row("SELECT min(id) FROM projects", [], |r| r.get(0))
            .optional()?
            .flatten();
        match existing {
            Some(project_id) => {
                for (kind, key) in [
                    (KeyKind::ProjectToken, &explicit.project_token),
                    (KeyKind::WriteKey, &explicit.write_key),
                    (KeyKind::SecretKey, &explicit.secret_key),
                ] {
                    if let Some(key) = key {
                        if self.lookup(kind, key).is_none() {
                            self.add_key(project_id, kind, key)?;
                        }
                    }
                }
                Ok(None)
            }
            None => {
                let keys = NewProjectKeys {
                    project_id: 0,
                    project_token: explicit.project_token.clone().unwrap_or_else(|| random_key("phc_")),
                    write_key: explicit
                        .write_key
                        .clone()
                        .unwrap_or_else(|| Alphanumeric.sample_string(&mut rand::rng(), 32)),
                    secret_key: explicit.secret_key.clone().unwrap_or_else(|| random_key("phs_")),
                };
                let project_id = self.create_project("Default project")?;
                // The platform's two group types, in PostHog's mapping form.
                self.set_group_type(project_id, 0, "workspace")?;
                self.set_group_type(project_id, 1, "organization")?;
                self.add_key(project_id, KeyKind::ProjectToken, &keys.project_token)?;
                self.add_key(project_id, KeyKind::WriteKey, &keys.write_key)?;
                self.add_key(project_id, KeyKind::SecretKey, &keys.secret_key)?;
                Ok(Some(NewProjectKeys { project_id, ..keys }))
            }
        }
    }

    /// Whether a group type is registered for the project.
    pub fn knows_group_type(&self, project_id: i64, group_type: &str) -> bool {
        self.group_types.read().expect("group types lock").get(&project_id).is_some_and(|types| types.contains(group_type))
    }

    pub(crate) fn refresh_group_types(&self) -> Result<(), ControlError> {
        let conn = self.conn.lock().expect("control lock");
        let mut stmt = conn.prepare("SELECT project_id, group_type FROM group_types")?;
        let mut all: HashMap<i64, std::collections::HashSet<String>> = HashMap::new();
        for row in stmt.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)))? {
            let (project_id, group_type) = row?;
            all.entry(project_id).or_default().insert(group_type);
        }
        *self.group_types.write().expect("group types lock") = all;
        Ok(())
    }

    pub fn project_ids(&self) -> Result<Vec<i64>, ControlError> {
        let conn = self.conn.lock().expect("control lock");
        let mut stmt = conn.prepare("SELECT id FROM projects ORDER BY id")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<Result<Vec<i64>, _>>()?;
        Ok(ids)
    }

    pub fn create_project(&self, name: &str) -> Result<i64, ControlError> {
        let conn = self.conn.lock().expect("control lock");
        conn.execute("INSERT INTO projects (name) VALUES (?1)", [name])?;
        Ok(conn.last_insert_rowid())
    }

    /// Registers a key for a project. A key belongs to one project only.
    pub fn add_key(&self, project_id: i64, kind: KeyKind, key: &str) -> Result<(), ControlError> {
        if let Some(owner) = self.lookup(kind, key) {
            return if owner == project_id { Ok(()) } else { Err(ControlError::KeyTaken(owner)) };
        }
        let stored = kind.stored_form(key);
        let conn = self.conn.lock().expect("control lock");
        conn.execute(
            "INSERT INTO api_keys (project_id, kind, value) VALUES (?1, ?2, ?3)",
            params![project_id, kind.as_str(), stored],
        )?;
        let key_id = conn.last_insert_rowid();
        self.keys.write().expect("keys lock").insert((kind, stored), (project_id, key_id));
        Ok(())
    }

    /// The project a key belongs to.
    pub fn lookup(&self, kind: KeyKind, key: &str) -> Option<i64> {
        self.lookup_key(kind, key).map(|k| k.project_id)
    }

    /// The project and id of a key.
    pub fn lookup_key(&self, kind: KeyKind, key: &str) -> Option<KeyRef> {
        let stored = kind.stored_form(key);
        self.keys
            .read()
            .expect("keys lock")
            .get(&(kind, stored))
            .map(|&(project_id, key_id)| KeyRef { project_id, key_id })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_bound_to_their_project_and_secrets_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.db");
        let store = ControlStore::open(&path).unwrap();
        let keys = store.ensure_default_project(&ExplicitKeys::default()).unwrap().unwrap();
        assert!(keys.project_token.starts_with("phc_"));
        assert!(keys.secret_key.starts_with("phs_"));
        let other = store.create_project("other").unwrap();
        store.add_key(other, KeyKind::ProjectToken, "phc_other").unwrap();
        assert!(matches!(
            store.add_key(other, KeyKind::ProjectToken, &keys.project_token),
            Err(ControlError::KeyTaken(_))
        ));
        drop(store);

        let store = ControlStore::open(&path).unwrap();
        assert!(store.ensure_default_project(&ExplicitKeys::default()).unwrap().is_none());
        assert_eq!(store.lookup(KeyKind::ProjectToken, &keys.project_token), Some(keys.project_id));
        assert_eq!(store.lookup(KeyKind::SecretKey, &keys.secret_key), Some(keys.project_id));
        assert_eq!(store.lookup(KeyKind::ProjectToken, "phc_other"), Some(other));
        assert_eq!(store.lookup(KeyKind::SecretKey, &keys.project_token), None);
        let conn = Connection::open(&path).unwrap();
        let stored: String = conn
            .query_row("SELECT value FROM api_keys WHERE kind = 'secret_key'", [], |r| r.get(0))
            .unwrap();
        assert_ne!(stored, keys.secret_key);
    }
}

//! The control store: projects and their keys (later also flags, persons, groups).
//!
//! Public keys (project tokens, write keys) are stored as they are; secret keys only as their
//! SHA-256. Lookups are served from an in-memory copy of the active keys loaded at open and
//! updated on every write (a revoked key leaves it before `revoke_key` returns), so
//! authenticating a request never touches the disk.
//!
//! Keys have an origin: `config` (given in the configuration), `generated` (made at first start
//! because the configuration gave none) or `api` (created through the keys API). The
//! configuration is authoritative for its kinds: at start, a configured or generated key of a
//! kind the configuration sets, other than the configured one, is revoked. Revoked keys stay in
//! the table (listed, never valid again: the same value cannot be registered twice).

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

/// The shortest secret key accepted (configuration and keys API).
pub const MIN_SECRET_KEY_CHARS: usize = 32;

impl KeyKind {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyKind::ProjectToken => "project_token",
            KeyKind::WriteKey => "write_key",
            KeyKind::SecretKey => "secret_key",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
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
    /// What a listing shows of a key: its first characters, fewer of a secret key that does
    /// not start with Switchyard's own `phs_` (never enough to matter: secrets are 32+ chars).
    fn prefix(self, key: &str) -> String {
        let shown = match self {
            KeyKind::SecretKey if !key.starts_with("phs_") => 4,
            _ => 8,
        };
        key.chars().take(shown).collect()
    }
    /// A new random key of this kind.
    fn generate(self) -> String {
        match self {
            KeyKind::ProjectToken => random_key("phc_"),
            KeyKind::WriteKey => Alphanumeric.sample_string(&mut rand::rng(), 32),
            KeyKind::SecretKey => random_key("phs_"),
        }
    }
}

/// Where a key came from (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyOrigin {
    Config,
    Generated,
    Api,
}

impl KeyOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyOrigin::Config => "config",
            KeyOrigin::Generated => "generated",
            KeyOrigin::Api => "api",
        }
    }
    fn parse(s: &str) -> KeyOrigin {
        match s {
            "generated" => KeyOrigin::Generated,
            "api" => KeyOrigin::Api,
            _ => KeyOrigin::Config,
        }
    }
}

/// A key as listings show it: never its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyInfo {
    pub id: i64,
    pub project_id: i64,
    pub kind: KeyKind,
    /// The key's first characters (unknown for secret keys stored by versions before 0.2 and
    /// not configured since).
    pub prefix: Option<String>,
    pub origin: KeyOrigin,
    pub created_at: String,
    pub revoked_at: Option<String>,
}

/// A key just created: the only time its value is available.
#[derive(Debug, Clone)]
pub struct CreatedKey {
    pub info: KeyInfo,
    pub key: String,
}

/// Why a key value is refused; the message names the rule.
pub fn check_key_value(kind: KeyKind, key: &str) -> Result<(), String> {
    if key.is_empty() {
        return Err(format!("the {} is empty", kind.as_str()));
    }
    if key.len() > 256 {
        return Err(format!("the {} is longer than 256 bytes", kind.as_str()));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(format!("the {} may hold only printable ASCII characters, no spaces", kind.as_str()));
    }
    if kind == KeyKind::SecretKey && key.chars().count() < MIN_SECRET_KEY_CHARS {
        return Err(format!("a secret key must be at least {MIN_SECRET_KEY_CHARS} characters long"));
    }
    Ok(())
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
    #[error("{0}")]
    InvalidKey(String),
    #[error("no such key")]
    KeyNotFound,
    #[error("this is the project's last active secret key: create another one before revoking it")]
    LastSecretKey,
}

/// The default project, created on this start. Each key is `Some` only when it was generated
/// now (to be shown once); keys given in the configuration are `None`, never to be printed.
#[derive(Debug, Clone)]
pub struct NewProjectKeys {
    pub project_id: i64,
    pub project_token: Option<String>,
    pub write_key: Option<String>,
    pub secret_key: Option<String>,
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
    /// A second connection, for person and group reads on the flag path (WAL: readers never
    /// wait for the writer).
    pub(crate) reader: Mutex<Connection>,
    /// Active keys: (kind, stored form) → (project id, key id)
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
    prefix TEXT,
    origin TEXT NOT NULL DEFAULT 'config',
    revoked_at TEXT,
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
CREATE TABLE IF NOT EXISTS warehouses (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE TABLE IF NOT EXISTS destinations (
    id INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL,
    spec TEXT NOT NULL,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    deleted_at TEXT
);
CREATE TABLE IF NOT EXISTS dead_letters (
    id INTEGER PRIMARY KEY,
    destination_id INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    event TEXT NOT NULL,
    reason TEXT NOT NULL,
    attempts INTEGER NOT NULL,
    last_status INTEGER,
    last_response TEXT,
    first_attempt_at TEXT NOT NULL,
    created_at TEXT NOT NULL,
    replay_requested INTEGER NOT NULL DEFAULT 0,
    UNIQUE (destination_id, seq)
);
CREATE INDEX IF NOT EXISTS dead_letters_replay ON dead_letters (destination_id, replay_requested);
";

fn random_key(prefix: &str) -> String {
    format!("{prefix}{}", Alphanumeric.sample_string(&mut rand::rng(), 43))
}

/// Columns added to `api_keys` after its first version: a store written before them gets them,
/// its keys counted as configured (no keys API existed), public keys' prefixes filled in.
fn migrate_api_keys(conn: &Connection) -> Result<(), ControlError> {
    let mut stmt = conn.prepare("SELECT name FROM pragma_table_info('api_keys')")?;
    let columns = stmt.query_map([], |r| r.get::<_, String>(0))?.collect::<Result<Vec<_>, _>>()?;
    for (column, definition) in [("prefix", "TEXT"), ("origin", "TEXT NOT NULL DEFAULT 'config'"), ("revoked_at", "TEXT")] {
        if !columns.iter().any(|c| c == column) {
            conn.execute_batch(&format!("ALTER TABLE api_keys ADD COLUMN {column} {definition}"))?;
        }
    }
    conn.execute(
        "UPDATE api_keys SET prefix = substr(value, 1, 8) WHERE prefix IS NULL AND kind != 'secret_key'",
        [],
    )?;
    Ok(())
}

const KEY_COLUMNS: &str = "id, project_id, kind, prefix, origin, created_at, revoked_at";

fn key_info(r: &rusqlite::Row<'_>) -> rusqlite::Result<KeyInfo> {
    let kind: String = r.get(2)?;
    Ok(KeyInfo {
        id: r.get(0)?,
        project_id: r.get(1)?,
        kind: KeyKind::parse(&kind).ok_or_else(|| {
            rusqlite::Error::FromSqlConversionFailure(2, rusqlite::types::Type::Text, format!("unknown key kind {kind:?}").into())
        })?,
        prefix: r.get(3)?,
        origin: KeyOrigin::parse(&r.get::<_, String>(4)?),
        created_at: r.get(5)?,
        revoked_at: r.get(6)?,
    })
}

impl ControlStore {
    pub fn open(path: &Path) -> Result<Self, ControlError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.execute_batch(SCHEMA)?;
        conn.execute_batch(crate::model_prices::SCHEMA)?;
        migrate_api_keys(&conn)?;
        let mut keys = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT kind, value, project_id, id FROM api_keys WHERE revoked_at IS NULL")?;
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
        // Reads for request handlers go through their own connection: in WAL mode they never
        // wait for the person processor's or the API's write transactions.
        let reader = Connection::open(path)?;
        let store = ControlStore {
            reader: Mutex::new(reader),
            conn: Mutex::new(conn),
            keys: RwLock::new(keys),
            group_types: RwLock::default(),
            person_cache: Mutex::default(),
        };
        store.refresh_group_types()?;
        Ok(store)
    }

    /// On first start (no project yet) creates the default project with the explicit keys or
    /// generated ones, and returns the generated ones so they can be shown once. On later
    /// starts, each explicit key becomes the default project's configured key of its kind, and
    /// the other configured or generated keys of that kind are revoked (logged by id and
    /// prefix); keys created through the API stay. Kinds the configuration leaves unset keep
    /// their stored keys.
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
        let kinds = [
            (KeyKind::ProjectToken, &explicit.project_token),
            (KeyKind::WriteKey, &explicit.write_key),
            (KeyKind::SecretKey, &explicit.secret_key),
        ];
        match existing {
            Some(project_id) => {
                for (kind, key) in kinds {
                    if let Some(key) = key {
                        self.make_configured(project_id, kind, key)?;
                    }
                }
                Ok(None)
            }
            None => {
                let project_id = self.create_project("Default project")?;
                // The platform's two group types, in PostHog's mapping form.
                self.set_group_type(project_id, 0, "workspace")?;
                self.set_group_type(project_id, 1, "organization")?;
                let mut generated: [Option<String>; 3] = Default::default();
                for ((kind, key), shown) in kinds.into_iter().zip(&mut generated) {
                    match key {
                        Some(key) => {
                            self.insert_key(project_id, kind, key, KeyOrigin::Config)?;
                        }
                        None => {
                            let key = kind.generate();
                            self.insert_key(project_id, kind, &key, KeyOrigin::Generated)?;
                            *shown = Some(key);
                        }
                    }
                }
                let [project_token, write_key, secret_key] = generated;
                Ok(Some(NewProjectKeys { project_id, project_token, write_key, secret_key }))
            }
        }
    }

    /// Makes `key` the project's configured key of its kind and revokes the other configured
    /// or generated keys of that kind. A configured key that was revoked stays revoked.
    fn make_configured(&self, project_id: i64, kind: KeyKind, key: &str) -> Result<(), ControlError> {
        let stored = kind.stored_form(key);
        let prefix = kind.prefix(key);
        let mut conn = self.conn.lock().expect("control lock");
        let tx = conn.transaction()?;
        let row: Option<(i64, i64, Option<String>)> = tx
            .query_row(
                "SELECT id, project_id, revoked_at FROM api_keys WHERE kind = ?1 AND value = ?2",
                params![kind.as_str(), stored],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let (configured_id, added) = match row {
            Some((_, owner, _)) if owner != project_id => return Err(ControlError::KeyTaken(owner)),
            Some((id, _, revoked_at)) => {
                tx.execute(
                    "UPDATE api_keys SET origin = 'config', prefix = coalesce(prefix, ?2) WHERE id = ?1",
                    params![id, prefix],
                )?;
                if let Some(revoked_at) = revoked_at {
                    tracing::error!(key_id = id, kind = kind.as_str(), %prefix, %revoked_at,
                        "the configured key was revoked and stays revoked: configure a new one");
                }
                (id, false)
            }
            None => {
                tx.execute(
                    "INSERT INTO api_keys (project_id, kind, value, prefix, origin) VALUES (?1, ?2, ?3, ?4, 'config')",
                    params![project_id, kind.as_str(), stored, prefix],
                )?;
                (tx.last_insert_rowid(), true)
            }
        };
        let stale = {
            let mut stmt = tx.prepare(
                "SELECT id, value, prefix FROM api_keys WHERE project_id = ?1 AND kind = ?2 AND revoked_at IS NULL
                 AND origin IN ('config', 'generated') AND id != ?3",
            )?;
            let rows = stmt.query_map(params![project_id, kind.as_str(), configured_id], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, Option<String>>(2)?))
            })?;
            rows.collect::<Result<Vec<_>, _>>()?
        };
        for (id, _, _) in &stale {
            tx.execute("UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1", [id])?;
        }
        tx.commit()?;
        let mut keys = self.keys.write().expect("keys lock");
        if added {
            keys.insert((kind, stored), (project_id, configured_id));
        }
        for (id, value, prefix) in stale {
            keys.remove(&(kind, value));
            tracing::warn!(key_id = id, kind = kind.as_str(), prefix = prefix.as_deref().unwrap_or("?"),
                "revoked a key no longer in the configuration");
        }
        Ok(())
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

    /// Registers a key for a project (as created through the API). A key belongs to one
    /// project only; registering a project's active key again changes nothing.
    pub fn add_key(&self, project_id: i64, kind: KeyKind, key: &str) -> Result<(), ControlError> {
        if let Some(owner) = self.lookup(kind, key) {
            return if owner == project_id { Ok(()) } else { Err(ControlError::KeyTaken(owner)) };
        }
        self.insert_key(project_id, kind, key, KeyOrigin::Api).map(|_| ())
    }

    fn insert_key(&self, project_id: i64, kind: KeyKind, key: &str, origin: KeyOrigin) -> Result<KeyInfo, ControlError> {
        let stored = kind.stored_form(key);
        let conn = self.conn.lock().expect("control lock");
        let owner: Option<(i64, Option<String>)> = conn
            .query_row(
                "SELECT project_id, revoked_at FROM api_keys WHERE kind = ?1 AND value = ?2",
                params![kind.as_str(), stored],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        match owner {
            Some((_, Some(_))) => {
                return Err(ControlError::InvalidKey("this key was revoked: it cannot be used again".into()));
            }
            Some((owner, None)) => return Err(ControlError::KeyTaken(owner)),
            None => {}
        }
        conn.execute(
            "INSERT INTO api_keys (project_id, kind, value, prefix, origin) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![project_id, kind.as_str(), stored, kind.prefix(key), origin.as_str()],
        )?;
        let key_id = conn.last_insert_rowid();
        let info = conn.query_row(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE id = ?1"), [key_id], key_info)?;
        self.keys.write().expect("keys lock").insert((kind, stored), (project_id, key_id));
        Ok(info)
    }

    /// Creates a key through the API: `key` given (checked by [`check_key_value`]) or
    /// generated. A secret key may not be a public key's value, nor a public key a secret's.
    pub fn create_key(&self, project_id: i64, kind: KeyKind, key: Option<&str>) -> Result<CreatedKey, ControlError> {
        let key = match key {
            Some(key) => {
                check_key_value(kind, key).map_err(ControlError::InvalidKey)?;
                key.to_owned()
            }
            None => kind.generate(),
        };
        let clash = {
            let conn = self.conn.lock().expect("control lock");
            let (query, value) = match kind {
                KeyKind::SecretKey => ("SELECT 1 FROM api_keys WHERE kind != 'secret_key' AND value = ?1", key.clone()),
                _ => ("SELECT 1 FROM api_keys WHERE kind = 'secret_key' AND value = ?1", hex_sha256(&key)),
            };
            conn.query_row(query, [value], |_| Ok(())).optional()?.is_some()
        };
        if clash {
            return Err(ControlError::InvalidKey(match kind {
                KeyKind::SecretKey => "a secret key must differ from the public keys (project tokens, write keys)".into(),
                _ => "a public key must differ from the secret keys".into(),
            }));
        }
        let info = self.insert_key(project_id, kind, &key, KeyOrigin::Api)?;
        tracing::info!(key_id = info.id, project_id, kind = kind.as_str(), prefix = info.prefix.as_deref().unwrap_or(""), "key created");
        Ok(CreatedKey { info, key })
    }

    /// The project's keys, active and revoked, oldest first.
    pub fn list_keys(&self, project_id: i64) -> Result<Vec<KeyInfo>, ControlError> {
        let conn = self.conn.lock().expect("control lock");
        let mut stmt = conn.prepare(&format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE project_id = ?1 ORDER BY id"))?;
        let keys = stmt.query_map([project_id], key_info)?.collect::<Result<Vec<_>, _>>()?;
        Ok(keys)
    }

    /// Revokes a key of the project: it stops working before this returns. Revoking a revoked
    /// key changes nothing; the project's last active secret key cannot be revoked.
    pub fn revoke_key(&self, project_id: i64, key_id: i64) -> Result<KeyInfo, ControlError> {
        let mut conn = self.conn.lock().expect("control lock");
        let tx = conn.transaction()?;
        let select = format!("SELECT {KEY_COLUMNS}, value FROM api_keys WHERE id = ?1 AND project_id = ?2");
        let found = tx
            .query_row(&select, params![key_id, project_id], |r| Ok((key_info(r)?, r.get::<_, String>(7)?)))
            .optional()?;
        let Some((info, value)) = found else { return Err(ControlError::KeyNotFound) };
        if info.revoked_at.is_some() {
            return Ok(info);
        }
        if info.kind == KeyKind::SecretKey {
            let active: i64 = tx.query_row(
                "SELECT count(*) FROM api_keys WHERE project_id = ?1 AND kind = 'secret_key' AND revoked_at IS NULL",
                [project_id],
                |r| r.get(0),
            )?;
            if active <= 1 {
                return Err(ControlError::LastSecretKey);
            }
        }
        tx.execute("UPDATE api_keys SET revoked_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1", [key_id])?;
        let (info, _) = tx.query_row(&select, params![key_id, project_id], |r| Ok((key_info(r)?, ())))?;
        tx.commit()?;
        self.keys.write().expect("keys lock").remove(&(info.kind, value));
        tracing::warn!(key_id, project_id, kind = info.kind.as_str(), prefix = info.prefix.as_deref().unwrap_or("?"), "key revoked");
        Ok(info)
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

    struct Keys {
        project_id: i64,
        project_token: String,
        secret_key: String,
    }

    const SECRET_A: &str = "phs_aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    const SECRET_B: &str = "phs_bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb";

    fn configured(secret: &str) -> ExplicitKeys {
        ExplicitKeys { project_token: Some("phc_token".into()), write_key: None, secret_key: Some(secret.into()) }
    }

    #[test]
    fn configured_keys_replace_earlier_configured_and_generated_ones_but_not_api_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.db");
        let store = ControlStore::open(&path).unwrap();
        let first = store.ensure_default_project(&configured(SECRET_A)).unwrap().unwrap();
        assert!(first.secret_key.is_none() && first.project_token.is_none(), "configured keys are never handed back to print");
        let generated_write_key = first.write_key.unwrap();
        let api = store.create_key(first.project_id, KeyKind::SecretKey, None).unwrap();
        drop(store);

        let store = ControlStore::open(&path).unwrap();
        let explicit = ExplicitKeys { write_key: Some("configured_write_key".into()), ..configured(SECRET_B) };
        assert!(store.ensure_default_project(&explicit).unwrap().is_none());
        assert_eq!(store.lookup(KeyKind::SecretKey, SECRET_A), None, "the old configured secret is revoked");
        assert_eq!(store.lookup(KeyKind::SecretKey, SECRET_B), Some(first.project_id));
        assert_eq!(store.lookup(KeyKind::SecretKey, &api.key), Some(first.project_id), "API keys stay");
        assert_eq!(store.lookup(KeyKind::WriteKey, &generated_write_key), None, "a configured key replaces a generated one");
        assert_eq!(store.lookup(KeyKind::ProjectToken, "phc_token"), Some(first.project_id));
        drop(store);

        // Revoked stays revoked, across restarts and even when configured again.
        let store = ControlStore::open(&path).unwrap();
        assert_eq!(store.lookup(KeyKind::SecretKey, SECRET_A), None);
        store.ensure_default_project(&configured(SECRET_A)).unwrap();
        assert_eq!(store.lookup(KeyKind::SecretKey, SECRET_A), None);
        assert_eq!(store.lookup(KeyKind::SecretKey, SECRET_B), None);
        let listed = store.list_keys(first.project_id).unwrap();
        let secrets: Vec<_> = listed.iter().filter(|k| k.kind == KeyKind::SecretKey).collect();
        assert_eq!(secrets.len(), 3);
        assert_eq!(secrets.iter().filter(|k| k.revoked_at.is_none()).count(), 1, "{secrets:?}");
        assert_eq!(secrets[0].prefix.as_deref(), Some("phs_aaaa"));
    }

    #[test]
    fn revoking_removes_the_key_at_once_but_never_the_last_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = ControlStore::open(&dir.path().join("control.db")).unwrap();
        let project = store.ensure_default_project(&configured(SECRET_A)).unwrap().unwrap().project_id;
        let first = store.lookup_key(KeyKind::SecretKey, SECRET_A).unwrap().key_id;
        assert!(matches!(store.revoke_key(project, first), Err(ControlError::LastSecretKey)));
        let second = store.create_key(project, KeyKind::SecretKey, Some(SECRET_B)).unwrap();
        assert_eq!(second.info.origin, KeyOrigin::Api);
        let revoked = store.revoke_key(project, first).unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(store.lookup(KeyKind::SecretKey, SECRET_A), None);
        assert!(store.revoke_key(project, first).unwrap().revoked_at.is_some(), "revoking twice is harmless");
        assert!(matches!(store.revoke_key(project, second.info.id), Err(ControlError::LastSecretKey)));
        assert!(matches!(store.revoke_key(project + 1, second.info.id), Err(ControlError::KeyNotFound)));
        assert!(matches!(store.create_key(project, KeyKind::SecretKey, Some(SECRET_A)), Err(ControlError::InvalidKey(_))));
        assert!(matches!(store.create_key(project, KeyKind::SecretKey, Some("phs_short")), Err(ControlError::InvalidKey(_))));
        let long_token = "phc_a_public_token_that_is_long_enough_for_a_secret";
        store.create_key(project, KeyKind::ProjectToken, Some(long_token)).unwrap();
        assert!(matches!(store.create_key(project, KeyKind::SecretKey, Some(long_token)), Err(ControlError::InvalidKey(_))));
    }

    #[test]
    fn a_store_from_before_key_origins_counts_its_keys_as_configured() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.db");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(&format!(
                "CREATE TABLE projects (id INTEGER PRIMARY KEY, name TEXT NOT NULL, created_at TEXT NOT NULL DEFAULT 'x');
                 CREATE TABLE api_keys (id INTEGER PRIMARY KEY, project_id INTEGER NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL,
                     created_at TEXT NOT NULL DEFAULT 'x', UNIQUE (kind, value));
                 INSERT INTO projects (name) VALUES ('Default project');
                 INSERT INTO api_keys (project_id, kind, value) VALUES (1, 'secret_key', '{}'), (1, 'project_token', 'phc_old');",
                hex_sha256(SECRET_A)
            ))
            .unwrap();
        }
        let store = ControlStore::open(&path).unwrap();
        assert_eq!(store.lookup(KeyKind::SecretKey, SECRET_A), Some(1));
        store.ensure_default_project(&configured(SECRET_B)).unwrap();
        assert_eq!(store.lookup(KeyKind::SecretKey, SECRET_A), None);
        assert_eq!(store.lookup(KeyKind::ProjectToken, "phc_old"), None);
        let listed = store.list_keys(1).unwrap();
        assert_eq!(listed[1].prefix.as_deref(), Some("phc_old"));
        assert_eq!(listed[0].origin, KeyOrigin::Config);
    }

    #[test]
    fn keys_are_bound_to_their_project_and_secrets_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.db");
        let store = ControlStore::open(&path).unwrap();
        let created = store.ensure_default_project(&ExplicitKeys::default()).unwrap().unwrap();
        let keys = Keys {
            project_id: created.project_id,
            project_token: created.project_token.expect("generated"),
            secret_key: created.secret_key.expect("generated"),
        };
        assert!(keys.project_token.starts_with("phc_"));
        assert!(keys.secret_key.starts_with("phs_") && keys.secret_key.len() >= MIN_SECRET_KEY_CHARS);
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

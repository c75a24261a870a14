//! Persons and groups in the control store, kept up to date from the event log by the person
//! processor, so flag evaluation on the server sees stored properties.
//!
//! Merge rules (PostHog's, see docs/flags.md):
//! - `$set` (and Segment identify traits) overwrite; `$set_once` sets only absent keys;
//!   `properties.$unset` (a list of keys) removes.
//! - `$identify` with an anonymous id, `$create_alias` and Segment `alias` merge the other id's
//!   person into the person of `distinct_id`, unless the other person is already identified
//!   (then both stay apart); on conflicting keys the `distinct_id` person's values win.
//! - Group identify (`$groupidentify`, Segment `group`) sets the group's properties; a group
//!   type seen for the first time gets the next free index (at most 5, as PostHog).

use std::collections::HashMap;

use std::sync::Arc;

use rusqlite::{params, OptionalExtension, Transaction};
use serde::Serialize;
use serde_json::{Map, Value};
use switchyard_event::{Event, EventType};

use crate::control::{ControlError, ControlStore};

/// Cached person properties, shared (`Arc`), bounded in bytes ([`PERSON_CACHE_BYTES`]).
/// `generation` moves on every committed change; a lookup that read the database under an
/// older generation does not fill the cache.
#[derive(Default)]
pub(crate) struct PersonCache {
    generation: u64,
    entries: HashMap<(i64, String), CachedProperties>,
    /// What the entries hold, roughly: their properties' JSON length and keys.
    bytes: usize,
}

/// A person's properties as cached: `None` when there is no such person.
type CachedProperties = Option<Arc<Map<String, Value>>>;

/// Most bytes the person-property cache holds (properties as JSON, plus keys); past it, it
/// starts over empty.
pub const PERSON_CACHE_BYTES: usize = 64 * 1024 * 1024;

/// Entries the cache holds at most, whatever their size.
const PERSON_CACHE_ENTRIES: usize = 100_000;

#[derive(Debug, Clone, Serialize)]
pub struct Person {
    pub id: i64,
    pub distinct_ids: Vec<String>,
    pub properties: Map<String, Value>,
    pub is_identified: bool,
    pub created_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub group_type: String,
    pub group_type_index: i64,
    pub group_key: String,
    pub properties: Map<String, Value>,
}

/// Ids that never merge persons (PostHog's list of "illegal" distinct ids).
fn mergeable(id: &str) -> bool {
    let t = id.trim();
    let lower = t.to_lowercase();
    !(t.is_empty()
        || ["anonymous", "guest", "distinctid", "distinct_id", "id", "not_authenticated", "email", "undefined", "true", "false"].contains(&lower.as_str())
        || ["[object Object]", "NaN", "None", "none", "null", "0"].contains(&t))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

struct PersonRow {
    id: i64,
    properties: Map<String, Value>,
    is_identified: bool,
}

fn person_of(tx: &Transaction<'_>, project_id: i64, distinct_id: &str) -> Result<Option<PersonRow>, ControlError> {
    let row = tx
        .query_row(
            "SELECT p.id, p.properties, p.is_identified FROM person_distinct_ids d JOIN persons p ON p.id = d.person_id
             WHERE d.project_id = ?1 AND d.distinct_id = ?2",
            params![project_id, distinct_id],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?)),
        )
        .optional()?;
    row.map(|(id, text, is_identified)| {
        let properties = serde_json::from_str(&text).map_err(|e| ControlError::Corrupt(format!("person {id}: {e}")))?;
        Ok(PersonRow { id, properties, is_identified })
    })
    .transpose()
}

fn create_person(tx: &Transaction<'_>, project_id: i64, distinct_id: &str) -> Result<PersonRow, ControlError> {
    let at = now();
    tx.execute(
        "INSERT INTO persons (project_id, properties, is_identified, created_at, updated_at) VALUES (?1, '{}', 0, ?2, ?2)",
        params![project_id, at],
    )?;
    let id = tx.last_insert_rowid();
    tx.execute("INSERT INTO person_distinct_ids (project_id, distinct_id, person_id) VALUES (?1, ?2, ?3)", params![project_id, distinct_id, id])?;
    Ok(PersonRow { id, properties: Map::new(), is_identified: false })
}

fn save_person(tx: &Transaction<'_>, person: &PersonRow) -> Result<(), ControlError> {
    tx.execute(
        "UPDATE persons SET properties = ?2, is_identified = ?3, updated_at = ?4 WHERE id = ?1",
        params![person.id, Value::Object(person.properties.clone()).to_string(), person.is_identified, now()],
    )?;
    Ok(())
}

fn apply_updates(properties: &mut Capped<'_>, event: &Event) {
    for (k, v) in &event.traits_set_once {
        properties.set_once(k, v);
    }
    for (k, v) in &event.traits {
        properties.set(k, v);
    }
    if let Some(Value::Array(keys)) = event.properties.get("$unset") {
        for key in keys.iter().filter_map(Value::as_str) {
            properties.remove(key);
        }
    }
}

/// Bounds on what one person's (or group's) stored properties hold. Properties past them are
/// dropped (counted in [`AppliedEvents::dropped_properties`]); values already stored stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PropertyLimits {
    /// Most properties.
    pub max_properties: usize,
    /// Longest JSON text of all the properties, in bytes.
    pub max_bytes: usize,
}

impl Default for PropertyLimits {
    fn default() -> Self {
        PropertyLimits { max_properties: 10_000, max_bytes: 1 << 20 }
    }
}

/// What applying a batch of events did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AppliedEvents {
    /// Projects that got a new group type (their flags need the new mapping).
    pub new_group_types: Vec<i64>,
    /// Transactions the batch was committed in.
    pub transactions: usize,
    /// Properties left out because a person or group was at its [`PropertyLimits`].
    pub dropped_properties: u64,
}

/// Most events one transaction of the person processor applies ...
pub const EVENTS_PER_TRANSACTION: usize = 100;
/// ... and the longest it goes on adding events to it. The control store's lock is released
/// between two transactions, so whatever else needs the store waits about that long at most.
pub const TRANSACTION_BUDGET: std::time::Duration = std::time::Duration::from_millis(20);

/// Counts bytes written.
struct ByteCount(usize);

impl std::io::Write for ByteCount {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The length of `"key":value,` in a JSON object.
fn member_bytes(key: &str, value: &Value) -> usize {
    let mut count = ByteCount(2);
    let _ = serde_json::to_writer(&mut count, key);
    let _ = serde_json::to_writer(&mut count, value);
    count.0
}

/// Properties being changed under [`PropertyLimits`], their JSON length kept as they change.
struct Capped<'a> {
    properties: &'a mut Map<String, Value>,
    limits: PropertyLimits,
    bytes: usize,
    dropped: u64,
}

impl<'a> Capped<'a> {
    fn new(properties: &'a mut Map<String, Value>, limits: PropertyLimits) -> Self {
        let bytes = 2 + properties.iter().map(|(k, v)| member_bytes(k, v)).sum::<usize>();
        Capped { properties, limits, bytes, dropped: 0 }
    }

    /// Sets `key`, unless that would pass a limit (a change that does not grow them passes).
    fn set(&mut self, key: &str, value: &Value) {
        let old = self.properties.get(key).map(|old| member_bytes(key, old));
        let new = member_bytes(key, value);
        let too_many = old.is_none() && self.properties.len() >= self.limits.max_properties;
        let too_big = new > old.unwrap_or(0) && self.bytes - old.unwrap_or(0) + new > self.limits.max_bytes;
        if too_many || too_big {
            self.dropped += 1;
            return;
        }
        self.bytes = self.bytes - old.unwrap_or(0) + new;
        self.properties.insert(key.to_owned(), value.clone());
    }

    fn set_once(&mut self, key: &str, value: &Value) {
        if !self.properties.contains_key(key) {
            self.set(key, value);
        }
    }

    fn remove(&mut self, key: &str) {
        if let Some(old) = self.properties.remove(key) {
            self.bytes -= member_bytes(key, &old);
        }
    }
}

impl ControlStore {
    /// Applies a batch of logged events to persons and groups, in small transactions (at most
    /// [`EVENTS_PER_TRANSACTION`] events, or what fits in [`TRANSACTION_BUDGET`]), releasing
    /// the store between two, so a batch of heavy `$set`s never holds it for long. Should one
    /// fail, the transactions before it stay: the updates are idempotent, and the batch is
    /// applied again.
    pub fn apply_person_events(&self, events: &[Event], limits: PropertyLimits) -> Result<AppliedEvents, ControlError> {
        let mut applied = AppliedEvents::default();
        let mut known_group_types = std::collections::HashSet::new();
        let mut rest = events;
        while !rest.is_empty() {
            let mut conn = self.conn.lock().expect("control lock");
            let tx = conn.transaction()?;
            let started = std::time::Instant::now();
            let mut done = 0;
            while done < rest.len() && done < EVENTS_PER_TRANSACTION && (done == 0 || started.elapsed() < TRANSACTION_BUDGET) {
                apply_one(&tx, &rest[done], limits, &mut known_group_types, &mut applied)?;
                done += 1;
            }
            tx.commit()?;
            // Emptied before the store is let go: whoever reads the change through the store
            // next (the persons API, a client told by it) finds no stale cached properties.
            let mut cache = self.person_cache.lock().expect("cache lock");
            cache.generation += 1;
            cache.entries.clear();
            cache.bytes = 0;
            drop(cache);
            drop(conn);
            rest = &rest[done..];
            applied.transactions += 1;
            if !rest.is_empty() {
                // A mutex is not fair: without a pause this thread would take it straight back.
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        applied.new_group_types.sort_unstable();
        applied.new_group_types.dedup();
        if !applied.new_group_types.is_empty() {
            self.refresh_group_types()?;
        }
        Ok(applied)
    }

    /// The person a distinct id belongs to.
    pub fn person(&self, project_id: i64, distinct_id: &str) -> Result<Option<Person>, ControlError> {
        let mut conn = self.conn.lock().expect("control lock");
        let tx = conn.transaction()?;
        let Some(row) = person_of(&tx, project_id, distinct_id)? else { return Ok(None) };
        let mut stmt = tx.prepare("SELECT distinct_id FROM person_distinct_ids WHERE person_id = ?1 ORDER BY distinct_id")?;
        let distinct_ids = stmt.query_map([row.id], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
        let created_at: String = tx.query_row("SELECT created_at FROM persons WHERE id = ?1", [row.id], |r| r.get(0))?;
        Ok(Some(Person { id: row.id, distinct_ids, properties: row.properties, is_identified: row.is_identified, created_at }))
    }

    /// A person's stored properties, for flag evaluation (one cached statement).
    pub fn person_properties(&self, project_id: i64, distinct_id: &str) -> Result<Option<Arc<Map<String, Value>>>, ControlError> {
        let key = (project_id, distinct_id.to_owned());
        let generation = {
            let cache = self.person_cache.lock().expect("cache lock");
            if let Some(hit) = cache.entries.get(&key) {
                return Ok(hit.clone());
            }
            cache.generation
        };
        let (found, bytes) = self.person_properties_uncached(project_id, distinct_id)?;
        let found = found.map(Arc::new);
        let mut cache = self.person_cache.lock().expect("cache lock");
        if cache.generation == generation {
            let bytes = bytes + distinct_id.len() + 64;
            if cache.entries.len() >= PERSON_CACHE_ENTRIES || cache.bytes + bytes > PERSON_CACHE_BYTES {
                cache.entries.clear();
                cache.bytes = 0;
            }
            if bytes <= PERSON_CACHE_BYTES / 16 {
                cache.bytes += bytes;
                cache.entries.insert(key, found.clone());
            }
        }
        Ok(found)
    }

    /// The cached answer of [`Self::person_properties`], if the cache has one: never touches
    /// SQLite, so request handlers may call it on an async worker.
    pub fn cached_person_properties(&self, project_id: i64, distinct_id: &str) -> Option<CachedProperties> {
        let cache = self.person_cache.lock().expect("cache lock");
        cache.entries.get(&(project_id, distinct_id.to_owned())).cloned()
    }

    /// The properties and the length of their JSON text.
    fn person_properties_uncached(&self, project_id: i64, distinct_id: &str) -> Result<(Option<Map<String, Value>>, usize), ControlError> {
        let conn = self.reader.lock().expect("control reader lock");
        let mut stmt = conn.prepare_cached(
            "SELECT p.properties FROM person_distinct_ids d JOIN persons p ON p.id = d.person_id
             WHERE d.project_id = ?1 AND d.distinct_id = ?2",
        )?;
        let text: Option<String> = stmt.query_row(params![project_id, distinct_id], |r| r.get(0)).optional()?;
        let bytes = text.as_ref().map_or(0, String::len);
        let found = text.map(|t| serde_json::from_str(&t).map_err(|e| ControlError::Corrupt(format!("person properties: {e}")))).transpose()?;
        Ok((found, bytes))
    }

    /// A group's stored properties.
    pub fn group(&self, project_id: i64, group_type: &str, group_key: &str) -> Result<Option<Group>, ControlError> {
        let conn = self.reader.lock().expect("control reader lock");
        let mut stmt = conn.prepare_cached(
            "SELECT g.properties, t.group_type_index FROM groups g JOIN group_types t ON t.project_id = g.project_id AND t.group_type = g.group_type
             WHERE g.project_id = ?1 AND g.group_type = ?2 AND g.group_key = ?3",
        )?;
        let row = stmt
            .query_row(params![project_id, group_type, group_key], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))
            .optional()?;
        row.map(|(text, index)| {
            Ok(Group {
                group_type: group_type.to_owned(),
                group_type_index: index,
                group_key: group_key.to_owned(),
                properties: serde_json::from_str(&text).map_err(|e| ControlError::Corrupt(format!("group: {e}")))?,
            })
        })
        .transpose()
    }

    /// Stored properties of several groups at once (type → properties), for flag evaluation.
    pub fn group_properties(&self, project_id: i64, groups: &Map<String, Value>) -> Result<HashMap<String, Map<String, Value>>, ControlError> {
        let mut out = HashMap::new();
        for (group_type, key) in groups {
            let key = match key {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if let Some(g) = self.group(project_id, group_type, &key)? {
                out.insert(group_type.clone(), g.properties);
            }
        }
        Ok(out)
    }
}

/// Registers a group type; true when it was new.
fn ensure_group_type(tx: &Transaction<'_>, project_id: i64, group_type: &str) -> Result<bool, ControlError> {
    let known: Option<i64> = tx
        .query_row("SELECT group_type_index FROM group_types WHERE project_id = ?1 AND group_type = ?2", params![project_id, group_type], |r| r.get(0))
        .optional()?;
    if known.is_some() {
        return Ok(false);
    }
    let next: i64 = tx.query_row("SELECT coalesce(max(group_type_index) + 1, 0) FROM group_types WHERE project_id = ?1", [project_id], |r| r.get(0))?;
    if next >= 5 {
        return Ok(false);
    }
    tx.execute("INSERT INTO group_types (project_id, group_type_index, group_type) VALUES (?1, ?2, ?3)", params![project_id, next, group_type])?;
    Ok(true)
}

fn apply_one(
    tx: &Transaction<'_>,
    event: &Event,
    limits: PropertyLimits,
    known_group_types: &mut std::collections::HashSet<(i64, String)>,
    applied: &mut AppliedEvents,
) -> Result<(), ControlError> {
    let project_id = event.project_id;
    let mut added = false;
    for group_type in event.groups.keys() {
        if known_group_types.insert((project_id, group_type.clone())) {
            added |= ensure_group_type(tx, project_id, group_type)?;
        }
    }
    if event.kind == EventType::Group {
        let group_type = event.group_type.clone().unwrap_or_else(|| "group".to_owned());
        if let Some(key) = &event.group_id {
            added |= ensure_group_type(tx, project_id, &group_type)?;
            let current: Option<String> = tx
                .query_row("SELECT properties FROM groups WHERE project_id = ?1 AND group_type = ?2 AND group_key = ?3", params![project_id, group_type, key], |r| r.get(0))
                .optional()?;
            let mut properties: Map<String, Value> = current.and_then(|t| serde_json::from_str(&t).ok()).unwrap_or_default();
            let mut capped = Capped::new(&mut properties, limits);
            for (k, v) in &event.traits {
                capped.set(k, v);
            }
            applied.dropped_properties += capped.dropped;
            tx.execute(
                "INSERT INTO groups (project_id, group_type, group_key, properties) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (project_id, group_type, group_key) DO UPDATE SET properties = excluded.properties",
                params![project_id, group_type, key, Value::Object(properties).to_string()],
            )?;
        }
    }
    if added {
        applied.new_group_types.push(project_id);
    }
    if event.kind == EventType::Group {
        return Ok(());
    }
    if event.properties.get("$process_person_profile") == Some(&Value::Bool(false)) {
        return Ok(());
    }
    // Events that change no person property and merge no ids leave persons as they are (a
    // person without properties evaluates flags like no person at all).
    let merges = matches!(event.kind, EventType::Identify | EventType::Alias);
    if !merges && event.traits.is_empty() && event.traits_set_once.is_empty() && !event.properties.contains_key("$unset") {
        return Ok(());
    }

    let other_id = match event.kind {
        EventType::Identify => event.anonymous_id.clone().filter(|_| event.event == "$identify"),
        EventType::Alias => event.previous_id.clone(),
        _ => None,
    };
    let mut person = match person_of(tx, project_id, &event.distinct_id)? {
        Some(p) => p,
        None => create_person(tx, project_id, &event.distinct_id)?,
    };
    if let Some(other_id) = other_id.filter(|o| o != &event.distinct_id && mergeable(o) && mergeable(&event.distinct_id)) {
        match person_of(tx, project_id, &other_id)? {
            None => {
                tx.execute("INSERT INTO person_distinct_ids (project_id, distinct_id, person_id) VALUES (?1, ?2, ?3)", params![project_id, other_id, person.id])?;
            }
            Some(other) if other.id != person.id && !other.is_identified => {
                // Merge the other person into this one; this person's values win.
                let mut capped = Capped::new(&mut person.properties, limits);
                for (k, v) in &other.properties {
                    capped.set_once(k, v);
                }
                applied.dropped_properties += capped.dropped;
                tx.execute("UPDATE person_distinct_ids SET person_id = ?1 WHERE person_id = ?2", params![person.id, other.id])?;
                tx.execute("DELETE FROM persons WHERE id = ?1", [other.id])?;
            }
            Some(_) => {}
        }
        if event.event == "$identify" {
            person.is_identified = true;
        }
    }
    let mut capped = Capped::new(&mut person.properties, limits);
    apply_updates(&mut capped, event);
    if capped.dropped > 0 {
        tracing::debug!(project_id, person_id = person.id, dropped = capped.dropped, "person properties at their limits");
    }
    applied.dropped_properties += capped.dropped;
    save_person(tx, &person)?;
    Ok(())
}

//! Feature flags over HTTP: evaluation (`/flags`, `/decide`, OpenFeature OFREP), local
//! evaluation definitions (`/flags/definitions`, `/api/feature_flag/local_evaluation/`), and
//! management (`/api/projects/{id}/feature_flags/`).
//!
//! Definitions live in the control store. Each project's flags are compiled into a
//! [`FlagSet`] snapshot that requests read without locking the store; every change builds a new
//! snapshot and swaps it in.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};
use switchyard_event::decode::{decode_posthog_body, BodyHints, DecodeLimits};
use switchyard_event::model::id_string;
use switchyard_flags::{Context, EvalError, Evaluation, FlagDefinition, FlagSet, FlagValue, Problem, Reason, Subject, MAX_DEPENDENCY_DEPTH};
use switchyard_store::{ControlError, ControlStore, FlagImport, ImportedFlag, KeyKind, StoredFlag};

use crate::api::{authorize_key, ApiError};
use crate::metrics::FlagLabels;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use crate::AppState;

/// One project's compiled flags and what local evaluation serves.
pub struct ProjectFlags {
    pub set: FlagSet,
    /// `{flags, group_type_mapping, cohorts}` as PostHog's local evaluation API answers.
    pub definitions_body: String,
    pub etag: String,
    /// Flag key → (id, version), for response metadata.
    meta: HashMap<String, (i64, i64)>,
    /// Flag key → its evaluation counters, resolved once so evaluation neither hashes labels
    /// nor allocates them.
    counters: HashMap<String, FlagCounters>,
}

struct FlagCounters {
    off: Counter,
    on: Counter,
    variants: HashMap<String, Counter>,
}

impl ProjectFlags {
    fn attach_counters(&mut self, family: &Family<FlagLabels, Counter>) {
        let counter = |flag: &str, variant: &str| family.get_or_create(&FlagLabels { flag: flag.to_owned(), variant: variant.to_owned() }).clone();
        self.counters = self
            .set
            .definitions()
            .map(|d| {
                let variants = d.filters.multivariate.iter().flat_map(|m| &m.variants).map(|v| (v.key.clone(), counter(&d.key, &v.key))).collect();
                (d.key.clone(), FlagCounters { off: counter(&d.key, "false"), on: counter(&d.key, "true"), variants })
            })
            .collect();
    }

    fn count(&self, key: &str, value: &FlagValue, family: &Family<FlagLabels, Counter>) {
        let known = self.counters.get(key).and_then(|c| match value {
            FlagValue::Bool(false) => Some(&c.off),
            FlagValue::Bool(true) => Some(&c.on),
            FlagValue::Variant(v) => c.variants.get(v),
        });
        match known {
            Some(counter) => {
                counter.inc();
            }
            None => {
                let variant = match value {
                    FlagValue::Bool(b) => b.to_string(),
                    FlagValue::Variant(v) => v.clone(),
                };
                family.get_or_create(&FlagLabels { flag: key.to_owned(), variant }).inc();
            }
        }
    }
}

/// Every project's current snapshot.
pub struct FlagRegistry {
    /// `switchyard_flag_evaluations_total`, shared with the metrics registry.
    evaluations: Family<FlagLabels, Counter>,
    projects: RwLock<HashMap<i64, Arc<ProjectFlags>>>,
    /// Projects whose flags are mirrored from an upstream PostHog, with the mirror's state.
    mirrored: RwLock<HashMap<i64, Arc<crate::upstream::MirrorState>>>,
    /// Held from a reload's read of the store to its swap: two reloads at once (a flag saved
    /// while a new group type arrives) would otherwise let the older read be swapped in last.
    reloads: Mutex<()>,
}

impl FlagRegistry {
    pub fn new(evaluations: Family<FlagLabels, Counter>) -> Self {
        FlagRegistry { evaluations, projects: RwLock::default(), mirrored: RwLock::default(), reloads: Mutex::default() }
    }

    /// The project's snapshot, built from the store on first use.
    pub fn get(&self, store: &ControlStore, project_id: i64) -> Result<Arc<ProjectFlags>, ControlError> {
        if let Some(p) = self.projects.read().expect("flags lock").get(&project_id) {
            return Ok(p.clone());
        }
        if self.mirror(project_id).is_some() {
            return Err(ControlError::Corrupt("no flag snapshot from upstream yet".into()));
        }
        self.reload(store, project_id)
    }

    /// Marks a project as mirrored from upstream: local definitions no longer apply to it.
    pub fn set_mirrored(&self, project_id: i64, state: Arc<crate::upstream::MirrorState>) {
        self.mirrored.write().expect("flags lock").insert(project_id, state);
        self.projects.write().expect("flags lock").remove(&project_id);
    }

    pub fn mirror(&self, project_id: i64) -> Option<Arc<crate::upstream::MirrorState>> {
        self.mirrored.read().expect("flags lock").get(&project_id).cloned()
    }

    /// Swaps in a snapshot (from upstream).
    pub fn install(&self, project_id: i64, mut flags: ProjectFlags) {
        flags.attach_counters(&self.evaluations);
        self.projects.write().expect("flags lock").insert(project_id, Arc::new(flags));
    }

    /// Whether every mirrored project has a snapshot to serve.
    pub fn mirrors_loaded(&self) -> bool {
        let projects = self.projects.read().expect("flags lock");
        self.mirrored.read().expect("flags lock").keys().all(|p| projects.contains_key(p))
    }

    /// Rebuilds the project's snapshot from the store and swaps it in.
    pub fn reload(&self, store: &ControlStore, project_id: i64) -> Result<Arc<ProjectFlags>, ControlError> {
        if self.mirror(project_id).is_some() {
            // Mirrored projects serve upstream's snapshot; the poller swaps new ones in.
            return self.get(store, project_id);
        }
        let _reloading = self.reloads.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let flags = store.list_flags(project_id, false)?;
        let mapping = store.group_type_mapping(project_id)?;
        let cohorts = store.cohorts(project_id)?;
        let mut built = build_project_flags(&flags, mapping, cohorts).map_err(ControlError::Corrupt)?;
        built.attach_counters(&self.evaluations);
        let built = Arc::new(built);
        self.projects.write().expect("flags lock").insert(project_id, built.clone());
        Ok(built)
    }
}

/// Definitions as served for local evaluation: dependency keys resolved (flag ids → keys) and
/// `dependency_chain` computed. A flag that cannot be put in order — it depends, directly or
/// not, on a missing flag or a cycle, or deeper than [`MAX_DEPENDENCY_DEPTH`] — gets an empty
/// chain, PostHog's marker (its SDKs then ask the server, which answers with an error).
fn served_definitions(flags: &[StoredFlag]) -> Vec<Value> {
    let by_id: HashMap<String, &str> = flags.iter().map(|f| (f.id.to_string(), f.key.as_str())).collect();
    let mut jsons: Vec<Value> = flags.iter().map(StoredFlag::to_posthog_json).collect();
    // Resolve references first, then chains over the resolved graph.
    for flag in jsons.iter_mut() {
        for_each_dependency(flag, |filter| {
            if let Some(key) = filter.get("key").and_then(Value::as_str).and_then(|k| by_id.get(k)) {
                filter.insert("key".into(), Value::String((*key).to_owned()));
            }
        });
    }
    let deps: HashMap<String, Vec<String>> = jsons
        .iter()
        .map(|f| (f["key"].as_str().unwrap_or_default().to_owned(), dependency_keys(f)))
        .collect();
    let chains = dependency_chains(&deps);
    for flag in jsons.iter_mut() {
        for_each_dependency(flag, |filter| {
            let key = filter.get("key").and_then(Value::as_str).unwrap_or_default();
            let chain = match chains.get(key) {
                Some(Some(chain)) => json!(chain),
                _ => json!([]),
            };
            filter.insert("dependency_chain".into(), chain);
        });
    }
    jsons
}

fn for_each_dependency(flag: &mut Value, mut f: impl FnMut(&mut Map<String, Value>)) {
    let Some(groups) = flag.pointer_mut("/filters/groups").and_then(Value::as_array_mut) else { return };
    for group in groups {
        let Some(props) = group.get_mut("properties").and_then(Value::as_array_mut) else { continue };
        for prop in props {
            if let Some(filter) = prop.as_object_mut() {
                if filter.get("type").and_then(Value::as_str) == Some("flag") {
                    f(filter);
                }
            }
        }
    }
}

fn dependency_keys(flag: &Value) -> Vec<String> {
    let mut keys = Vec::new();
    for group in flag.pointer("/filters/groups").and_then(Value::as_array).into_iter().flatten() {
        for prop in group.get("properties").and_then(Value::as_array).into_iter().flatten() {
            if prop.get("type").and_then(Value::as_str) == Some("flag") {
                if let Some(k) = prop.get("key").and_then(Value::as_str) {
                    keys.push(k.to_owned());
                }
            }
        }
    }
    keys
}

/// Every flag's dependency chain: the flags to evaluate first, each after its own
/// dependencies, then the flag itself; `None` when it cannot be put in order (see
/// [`served_definitions`]). A depth-first walk on an explicit stack, each chain built once from
/// its dependencies' chains: a chain as long as the project's flags neither exhausts the stack
/// nor is walked again for every flag above it.
fn dependency_chains(deps: &HashMap<String, Vec<String>>) -> HashMap<&str, Option<Vec<&str>>> {
    enum Mark<'a> {
        /// On the walk's path now: met again, it closes a cycle.
        Open,
        /// (height, chain), or `None`.
        Done(Option<(usize, Vec<&'a str>)>),
    }
    let mut marks: HashMap<&str, Mark<'_>> = HashMap::with_capacity(deps.len());
    for start in deps.keys() {
        if marks.contains_key(start.as_str()) {
            continue;
        }
        marks.insert(start, Mark::Open);
        // (key, its next dependency to visit, whether one of them closed a cycle)
        let mut path: Vec<(&str, usize, bool)> = vec![(start, 0, false)];
        while let Some(top) = path.last_mut() {
            let (key, next, _) = *top;
            let children = deps.get(key).map_or(&[][..], Vec::as_slice);
            if let Some(child) = children.get(next) {
                top.1 += 1;
                match marks.get(child.as_str()) {
                    Some(Mark::Open) => top.2 = true,
                    Some(Mark::Done(_)) => {}
                    None if deps.contains_key(child) => {
                        marks.insert(child, Mark::Open);
                        path.push((child, 0, false));
                    }
                    // A dependency on a flag that does not exist.
                    None => {
                        marks.insert(child, Mark::Done(None));
                    }
                }
                continue;
            }
            let Some((key, _, cyclic)) = path.pop() else { break };
            let mut result = (!cyclic).then(|| (0, Vec::new()));
            let mut seen = HashSet::new();
            for child in children {
                let (Some((height, chain)), Some(Mark::Done(Some((child_height, child_chain))))) = (result.as_mut(), marks.get(child.as_str())) else {
                    result = None;
                    break;
                };
                *height = (*height).max(child_height + 1);
                for k in child_chain {
                    if seen.insert(*k) {
                        chain.push(*k);
                    }
                }
            }
            let result = result.filter(|(height, _)| *height <= MAX_DEPENDENCY_DEPTH).map(|(height, mut chain)| {
                chain.push(key);
                (height, chain)
            });
            marks.insert(key, Mark::Done(result));
        }
    }
    marks
        .into_iter()
        .map(|(key, mark)| match mark {
            Mark::Done(Some((_, chain))) => (key, Some(chain)),
            _ => (key, None),
        })
        .collect()
}

/// What building a snapshot does with a broken flag or cohort.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OnProblems {
    /// Refuse the snapshot: new definitions (from upstream) must be sound.
    Refuse,
    /// Serve it, the broken flags evaluating to errors (and logged): definitions already stored,
    /// perhaps by an older version, must not stop the rest from being served.
    Serve,
}

/// Why a flag snapshot was refused. `reason` is low-cardinality (the metric's label):
/// `invalid_json`, `invalid_definition`, or the [`EvalError`] code of a structural problem.
#[derive(Debug, Clone)]
pub struct SnapshotRejected {
    pub reason: &'static str,
    pub message: String,
}

impl std::fmt::Display for SnapshotRejected {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for SnapshotRejected {}

fn build_project_flags(flags: &[StoredFlag], mapping: Map<String, Value>, cohorts: Map<String, Value>) -> Result<ProjectFlags, String> {
    build_served(served_definitions(flags), mapping, cohorts, OnProblems::Serve).map_err(|e| e.to_string())
}

/// A snapshot from PostHog's local evaluation JSON (`{flags, group_type_mapping, cohorts}`),
/// as an upstream PostHog serves it: refused unless every flag and cohort is sound.
pub fn project_flags_from_posthog(body: &Value) -> Result<ProjectFlags, SnapshotRejected> {
    snapshot_from_posthog(body, OnProblems::Refuse)
}

/// A snapshot persisted earlier, perhaps by an older version that did not check definitions:
/// served whatever it holds, its broken flags evaluating to errors.
pub fn persisted_project_flags(body: &Value) -> Result<ProjectFlags, SnapshotRejected> {
    snapshot_from_posthog(body, OnProblems::Serve)
}

fn snapshot_from_posthog(body: &Value, on_problems: OnProblems) -> Result<ProjectFlags, SnapshotRejected> {
    let flags = body
        .get("flags")
        .and_then(Value::as_array)
        .ok_or_else(|| SnapshotRejected { reason: "invalid_json", message: "`flags` is missing or not a list".into() })?;
    let live: Vec<Value> = flags.iter().filter(|f| f.get("deleted") != Some(&Value::Bool(true))).cloned().collect();
    build_served(live, object(body.get("group_type_mapping")), object(body.get("cohorts")), on_problems)
}

fn build_served(served: Vec<Value>, mapping: Map<String, Value>, cohorts: Map<String, Value>, on_problems: OnProblems) -> Result<ProjectFlags, SnapshotRejected> {
    let mut definitions = Vec::with_capacity(served.len());
    for v in &served {
        match serde_json::from_value::<FlagDefinition>(v.clone()) {
            Ok(definition) => definitions.push(definition),
            Err(e) if on_problems == OnProblems::Refuse => {
                return Err(SnapshotRejected { reason: "invalid_definition", message: format!("flag {}: {e}", v["key"]) });
            }
            Err(error) => tracing::warn!(flag = %v["key"], %error, "a stored flag definition cannot be read: it is left out"),
        }
    }
    let set = FlagSet::compile(definitions, &mapping, &cohorts);
    if let Some(problem) = set.problems().first() {
        if on_problems == OnProblems::Refuse {
            let reason = match problem.error {
                EvalError::Invalid => "invalid_definition",
                other => other.code(),
            };
            return Err(SnapshotRejected { reason, message: problem.message.clone() });
        }
        const SHOWN: usize = 10;
        for problem in set.problems().iter().take(SHOWN) {
            tracing::warn!(%problem, "a stored flag definition is broken: the flags that use it evaluate to an error");
        }
        if set.problems().len() > SHOWN {
            tracing::warn!(more = set.problems().len() - SHOWN, "more broken flag definitions");
        }
    }
    let body = json!({"flags": served, "group_type_mapping": mapping, "cohorts": cohorts}).to_string();
    let etag = format!("\"{:016x}\"", fnv1a(body.as_bytes()));
    let meta = served
        .iter()
        .filter_map(|f| Some((f["key"].as_str()?.to_owned(), (f["id"].as_i64().unwrap_or(0), f["version"].as_i64().unwrap_or(0)))))
        .collect();
    Ok(ProjectFlags { set, definitions_body: body, etag, meta, counters: HashMap::new() })
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= *b as u64;
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

// ---------------------------------------------------------------------------------------------
// Validation

fn invalid(attr: &str, detail: impl Into<String>) -> ApiError {
    ApiError::invalid(attr, detail)
}

/// Checks one flag definition on its own, as the management API and import receive it, and
/// returns its key; the error names the field. What it means beside the project's other flags
/// and cohorts is [`check_project_change`]'s.
pub fn validate_definition(def: &Map<String, Value>) -> Result<String, ApiError> {
    definition_problem(def).map_err(|(attr, detail)| invalid(attr, detail))
}

/// [`validate_definition`]'s checks: the key, or the field at fault and what is wrong.
fn definition_problem(def: &Map<String, Value>) -> Result<String, (&'static str, String)> {
    let key = match def.get("key") {
        Some(Value::String(k)) if !k.is_empty() => k.clone(),
        _ => return Err(("key", "`key` is required: a non-empty string".into())),
    };
    if !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(("key", format!("`key` may only contain letters, numbers, hyphens and underscores: {key:?}")));
    }
    let parsed: FlagDefinition = serde_json::from_value(Value::Object(def.clone())).map_err(|e| ("filters", format!("invalid flag definition: {e}")))?;
    let variants: Vec<&str> = parsed.filters.multivariate.iter().flat_map(|m| &m.variants).map(|v| v.key.as_str()).collect();
    if let Some(m) = &parsed.filters.multivariate {
        if !m.variants.is_empty() {
            let total: f64 = m.variants.iter().map(|v| v.rollout_percentage).sum();
            if (total - 100.0).abs() > 1e-6 {
                return Err(("filters", format!("multivariate variant percentages must sum to 100, not {total}")));
            }
            for v in &m.variants {
                if !(0.0..=100.0).contains(&v.rollout_percentage) {
                    return Err(("filters", format!("variant `{}` has rollout_percentage {} outside 0–100", v.key, v.rollout_percentage)));
                }
            }
            let unique: HashSet<&str> = variants.iter().copied().collect();
            if unique.len() != variants.len() {
                return Err(("filters", "multivariate variant keys must be unique".into()));
            }
        }
    }
    for (i, group) in parsed.filters.groups.iter().enumerate() {
        if let Some(r) = group.rollout_percentage {
            if !(0.0..=100.0).contains(&r) {
                return Err(("filters", format!("condition {}: rollout_percentage {r} is outside 0–100", i + 1)));
            }
        }
        if let Some(v) = &group.variant {
            if !variants.contains(&v.as_str()) {
                return Err(("filters", format!("condition {}: variant `{v}` is not one of the flag's variants", i + 1)));
            }
        }
    }
    for payload_key in parsed.filters.payloads.keys() {
        if payload_key != "true" && !variants.contains(&payload_key.as_str()) {
            return Err(("filters", format!("payload for `{payload_key}`: not `true` nor a variant key")));
        }
    }
    // Compile it: unknown operators, unusable filter values and a dependency on itself are
    // named here.
    FlagSet::new(vec![parsed], &Map::new(), &Map::new()).map_err(|e| ("filters", e.to_string()))?;
    Ok(key)
}

/// A flag as a change would store it, for checking before it is stored.
fn unsaved_flag(id: i64, key: &str, definition: &Map<String, Value>) -> StoredFlag {
    StoredFlag {
        id,
        project_id: 0,
        key: key.to_owned(),
        version: 0,
        deleted: false,
        created_at: String::new(),
        updated_at: String::new(),
        definition: definition.clone(),
    }
}

/// A project's definitions as a change would leave them.
struct ProjectChange {
    /// Every live flag after the change (unsaved ones with made-up ids).
    flags: Vec<StoredFlag>,
    /// Group types and cohorts the change writes, by index and id.
    group_types: Map<String, Value>,
    cohorts: Map<String, Value>,
    /// The flags and cohorts the change writes.
    changed: HashSet<Subject>,
}

/// Checks a change against the whole project before anything is stored: every dependency of a
/// changed flag exists, and neither what the change writes nor anything sound before it is
/// broken after it — no cycle of flags or cohorts, no chain of them deeper than
/// `MAX_DEPENDENCY_DEPTH`, no cohort nested deeper than `MAX_PROPERTY_GROUP_DEPTH`. A flag or
/// cohort already broken in the store (stored by an older version) does not stop changes to
/// the others. Linear in the size of the project's definitions. 400 naming the flag or cohort.
fn check_project_change(state: &AppState, project_id: i64, change: ProjectChange) -> Result<(), ApiError> {
    let before = state.flags.get(&state.control, project_id).map_err(control_error)?;
    let mut mapping = state.control.group_type_mapping(project_id).map_err(control_error)?;
    mapping.extend(change.group_types);
    let mut cohorts = state.control.cohorts(project_id).map_err(control_error)?;
    cohorts.extend(change.cohorts);

    let served = served_definitions(&change.flags);
    let keys: HashSet<&str> = change.flags.iter().map(|f| f.key.as_str()).collect();
    for flag in &served {
        let key = flag["key"].as_str().unwrap_or_default();
        if !change.changed.contains(&Subject::Flag(key.to_owned())) {
            continue;
        }
        if let Some(dep) = dependency_keys(flag).into_iter().find(|dep| !keys.contains(dep.as_str())) {
            return Err(invalid("filters", format!("flag `{key}`: depends on flag `{dep}`, which does not exist")));
        }
    }
    let definitions: Vec<FlagDefinition> = served.into_iter().filter_map(|v| serde_json::from_value(v).ok()).collect();
    let after = FlagSet::compile(definitions, &mapping, &cohorts);
    let was_broken: HashSet<&Subject> = before.set.broken().map(|(subject, _)| subject).collect();
    let mut refused: Option<(&Problem, bool)> = None;
    for (subject, problem) in after.broken() {
        let written = change.changed.contains(subject);
        if !written && was_broken.contains(subject) {
            continue;
        }
        // Name the cause, preferring one the change writes.
        let cause_written = change.changed.contains(&problem.subject);
        if refused.is_none_or(|(_, best)| cause_written && !best) {
            refused = Some((problem, cause_written));
        }
    }
    match refused {
        Some((problem, _)) => {
            let attr = match problem.subject {
                Subject::Flag(_) => "filters",
                Subject::Cohort(_) => "cohorts",
            };
            Err(invalid(attr, problem.message.clone()))
        }
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------------------------
// Evaluation

/// What a flags request asks for, from any SDK's body.
struct FlagsRequest {
    token: String,
    distinct_id: String,
    person_properties: Map<String, Value>,
    groups: Map<String, Value>,
    group_properties: Map<String, Value>,
    anon_distinct_id: Option<String>,
    device_id: Option<String>,
    flag_keys: Option<Vec<String>>,
}

fn object(v: Option<&Value>) -> Map<String, Value> {
    v.and_then(Value::as_object).cloned().unwrap_or_default()
}

#[allow(clippy::result_large_err, reason = "the error is the finished answer, built once per bad request")]
fn flags_request(body: &Map<String, Value>) -> Result<FlagsRequest, Response> {
    let token = ["token", "api_key", "$token"].iter().find_map(|k| body.get(*k).and_then(Value::as_str));
    let Some(token) = token else {
        return Err(flags_error(StatusCode::UNAUTHORIZED, "missing_token", "API key is missing from the request"));
    };
    let distinct = body.get("distinct_id").or_else(|| body.get("$distinct_id"));
    let distinct_id = match distinct {
        None | Some(Value::Null) => {
            return Err(flags_error(StatusCode::BAD_REQUEST, "missing_distinct_id", "The distinct_id field is missing from the request"))
        }
        Some(v) => id_string(Some(v)).unwrap_or_default(),
    };
    let mut person_properties = object(body.get("person_properties").or_else(|| body.get("$properties")));
    person_properties.entry("distinct_id").or_insert_with(|| Value::String(distinct_id.clone()));
    let groups = object(body.get("groups").or_else(|| body.get("$groups")));
    let mut group_properties = object(body.get("group_properties").or_else(|| body.get("$group_properties")));
    with_group_keys(&groups, &mut group_properties);
    let flag_keys = body
        .get("flag_keys_to_evaluate")
        .or_else(|| body.get("flag_keys"))
        .and_then(Value::as_array)
        .map(|keys| keys.iter().filter_map(|k| k.as_str().map(str::to_owned)).collect());
    Ok(FlagsRequest {
        token: token.to_owned(),
        distinct_id,
        person_properties,
        groups,
        group_properties,
        anon_distinct_id: ["$anon_distinct_id", "anon_distinct_id"].iter().find_map(|k| body.get(*k).and_then(Value::as_str)).map(str::to_owned),
        device_id: ["$device_id", "device_id"].iter().find_map(|k| body.get(*k).and_then(Value::as_str)).map(str::to_owned),
        flag_keys,
    })
}

/// Every group's properties include its `$group_key`, as PostHog's SDKs and server add it.
fn with_group_keys(groups: &Map<String, Value>, group_properties: &mut Map<String, Value>) {
    for (group_type, key) in groups {
        let props = group_properties.entry(group_type.clone()).or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(props) = props {
            props.entry("$group_key").or_insert_with(|| match key {
                Value::String(s) => Value::String(s.clone()),
                other => Value::String(other.to_string()),
            });
        }
    }
}

/// Stored person and group properties under the request's: properties sent with a flags
/// request take precedence over stored ones, key by key.
fn merge_stored_properties(state: &AppState, project_id: i64, req: &mut FlagsRequest) {
    match state.control.person_properties(project_id, &req.distinct_id) {
        Ok(stored) => merge_person_properties(req, stored.as_deref()),
        Err(error) => tracing::warn!(%error, "stored person properties unavailable; using the request's"),
    }
    match state.control.group_properties(project_id, &req.groups) {
        Ok(stored) => {
            for (group_type, mut merged) in stored {
                if let Some(Value::Object(sent)) = req.group_properties.remove(&group_type) {
                    merged.extend(sent);
                }
                req.group_properties.insert(group_type, Value::Object(merged));
            }
        }
        Err(error) => tracing::warn!(%error, "stored group properties unavailable; using the request's"),
    }
}

/// [`merge_stored_properties`] off the async workers: the stored properties come from the
/// cache when it has them, else from SQLite on a blocking thread, so a busy control store
/// never stalls the server.
async fn with_stored_properties(state: &AppState, project_id: i64, mut req: FlagsRequest) -> Result<FlagsRequest, Response> {
    if req.groups.is_empty() {
        if let Some(cached) = state.control.cached_person_properties(project_id, &req.distinct_id) {
            merge_person_properties(&mut req, cached.as_deref());
            return Ok(req);
        }
    }
    let state = state.clone();
    tokio::task::spawn_blocking(move || {
        merge_stored_properties(&state, project_id, &mut req);
        req
    })
    .await
    .map_err(|_| flags_error(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "flags are unavailable right now"))
}

/// 503 + Retry-After: the in-flight budget is spent.
fn busy(state: &AppState) -> Response {
    state.metrics.in_flight_refused.inc();
    let mut response = flags_error(StatusCode::SERVICE_UNAVAILABLE, "service_unavailable", crate::intake::BUSY);
    response.headers_mut().insert(header::RETRY_AFTER, axum::http::HeaderValue::from_static("1"));
    response
}

fn merge_person_properties(req: &mut FlagsRequest, stored: Option<&Map<String, Value>>) {
    if let Some(stored) = stored {
        let sent = std::mem::take(&mut req.person_properties);
        let mut merged = stored.clone();
        merged.extend(sent);
        req.person_properties = merged;
    }
}

fn flags_error(status: StatusCode, code: &str, detail: &str) -> Response {
    (status, axum::Json(json!({"type": "validation_error", "code": code, "detail": detail, "attr": null}))).into_response()
}

fn evaluate(state: &AppState, project: &ProjectFlags, req: &FlagsRequest) -> Vec<(String, Evaluation)> {
    let started = Instant::now();
    let ctx = Context {
        distinct_id: &req.distinct_id,
        device_id: req.device_id.as_deref(),
        continuity_key: req.anon_distinct_id.as_deref(),
        person_properties: &req.person_properties,
        groups: &req.groups,
        group_properties: &req.group_properties,
        now: chrono::Utc::now(),
    };
    let results: Vec<(String, Evaluation)> = match &req.flag_keys {
        // Each known key once: a key repeated a million times is answered once, unknown keys
        // are dropped, so the answer is never larger than the project's flags.
        Some(keys) => {
            let mut seen = std::collections::HashSet::new();
            keys.iter()
                .filter(|k| project.set.definition(k).is_some() && seen.insert(k.as_str()))
                .filter_map(|k| project.set.evaluate(k, &ctx).map(|e| (k.clone(), e)))
                .collect()
        }
        None => project.set.evaluate_all(&ctx).into_iter().map(|(k, e)| (k.to_owned(), e)).collect(),
    };
    state.metrics.flag_evaluation_latency.observe(started.elapsed().as_secs_f64());
    for (key, e) in &results {
        project.count(key, &e.value, &state.metrics.flag_evaluations);
    }
    results
}

/// One flag in a v2 answer, serialized straight from borrowed data.
#[derive(serde::Serialize)]
struct FlagDetails<'a> {
    key: &'a str,
    enabled: bool,
    variant: Option<&'a str>,
    reason: ReasonDetails,
    metadata: FlagMetadata<'a>,
}

#[derive(serde::Serialize)]
struct ReasonDetails {
    code: &'static str,
    condition_index: Option<usize>,
    description: String,
}

#[derive(serde::Serialize)]
struct FlagMetadata<'a> {
    id: i64,
    version: i64,
    description: Option<&'a str>,
    payload: Option<&'a Value>,
}

/// `{"flags": {key: details, …}, …}` in evaluation order.
struct DetailedFlags<'a>(&'a ProjectFlags, &'a [(String, Evaluation)]);

impl serde::Serialize for DetailedFlags<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.1.len()))?;
        for (key, e) in self.1 {
            map.serialize_entry(key, &flag_details(self.0, key, e))?;
        }
        map.end()
    }
}

fn flag_details<'a>(project: &'a ProjectFlags, key: &'a str, e: &'a Evaluation) -> FlagDetails<'a> {
    let (id, version) = project.meta.get(key).copied().unwrap_or((0, 0));
    FlagDetails {
        key,
        enabled: e.value.is_enabled(),
        variant: e.value.variant(),
        reason: ReasonDetails { code: e.reason.code(), condition_index: e.condition_index, description: e.description() },
        metadata: FlagMetadata {
            id,
            version,
            description: project.set.definition(key).map(|d| d.name.as_str()).filter(|n| !n.is_empty()),
            payload: e.payload.as_ref(),
        },
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct DetailedResponse<'a> {
    flags: DetailedFlags<'a>,
    #[serde(flatten)]
    rest: Map<String, Value>,
}


/// `/flags` and `/decide` (GET, HEAD, POST; versioned response shapes as PostHog's).
pub async fn flags(State(state): State<AppState>, method: Method, uri: Uri, headers: HeaderMap, body: Body) -> Response {
    let decide = uri.path().starts_with("/decide");
    let params: Vec<(String, String)> =
        axum::extract::Query::<Vec<(String, String)>>::try_from_uri(&uri).map(|q| q.0).unwrap_or_default();
    let param = |k: &str| params.iter().find(|(key, _)| key == k).map(|(_, v)| v.as_str());
    let version: Option<u32> = param("v").and_then(|v| v.parse().ok());
    let config = decide || param("config").map(|c| c == "true" || c == "1").unwrap_or(version.is_none());

    if method == Method::GET || method == Method::HEAD {
        return axum::Json(json!({"flags": {}, "featureFlags": {}, "supportedCompression": ["gzip", "gzip-js"]})).into_response();
    }
    // PostHog's SDKs send a few KB: a small cap, before and after decompression, bounds what
    // one public request can make the server hold.
    let limit = state.config.limits.max_flags_request_bytes;
    let mut held = crate::intake::InFlight::new(&state);
    let body = match crate::intake::read_limited_body(body, limit, &mut held, 408).await {
        Ok(body) => body,
        Err(Ok(rejection)) => {
            let status = StatusCode::from_u16(rejection.status).unwrap_or(StatusCode::BAD_REQUEST);
            let code = if rejection.status == 413 { "payload_too_large" } else { rejection.code };
            return flags_error(status, code, &rejection.message);
        }
        Err(Err(())) => return busy(&state),
    };
    let hints = BodyHints {
        query: uri.query(),
        content_type: headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()),
        content_encoding: headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()),
        legacy_path: false,
    };
    let limits = DecodeLimits { max_decompressed_bytes: limit };
    let json = match decode_posthog_body(&body, &hints, limits) {
        Ok(json) => json,
        Err(r) if r.status == 413 => return flags_error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large", &r.message),
        Err(r) => return flags_error(StatusCode::BAD_REQUEST, "request_parsing_error", &r.message),
    };
    if !held.reserve(json.len().saturating_mul(4)) {
        return busy(&state);
    }
    let body: Map<String, Value> = match serde_json::from_slice(&json) {
        Ok(map) => map,
        Err(e) => return flags_error(StatusCode::BAD_REQUEST, "request_parsing_error", &format!("failed to parse request: {e}")),
    };
    let mut req = match flags_request(&body) {
        Ok(r) => r,
        Err(response) => return response,
    };
    let Some(project_id) = state.control.lookup(KeyKind::ProjectToken, &req.token) else {
        return flags_error(StatusCode::UNAUTHORIZED, "invalid_token", "API key is not valid");
    };
    // Only the project's group types are looked up; the others cannot match a condition.
    req.groups.retain(|group_type, _| state.control.knows_group_type(project_id, group_type));
    let req = match with_stored_properties(&state, project_id, req).await {
        Ok(req) => req,
        Err(response) => return response,
    };
    let project = match state.flags.get(&state.control, project_id) {
        Ok(p) => p,
        Err(e) => {
            tracing::error!(error = %e, "loading flags failed");
            return flags_error(StatusCode::SERVICE_UNAVAILABLE, "database_unavailable", "flags are unavailable right now");
        }
    };
    let results = evaluate(&state, &project, &req);

    let mut response = Map::new();
    let detailed = if decide { version.unwrap_or(1) >= 4 } else { version.map(|v| v >= 2).unwrap_or(true) };
    if detailed {
        // Filled below; serialized without building JSON values for the flags.
    } else if decide && version.unwrap_or(1) < 2 {
        let enabled: Vec<&str> = results.iter().filter(|(_, e)| e.value.is_enabled()).map(|(k, _)| k.as_str()).collect();
        response.insert("featureFlags".into(), json!(enabled));
    } else if decide && version == Some(2) {
        let enabled: Map<String, Value> =
            results.iter().filter(|(_, e)| e.value.is_enabled()).map(|(k, e)| (k.clone(), e.value.to_json())).collect();
        response.insert("featureFlags".into(), Value::Object(enabled));
    } else {
        let values: Map<String, Value> = results.iter().map(|(k, e)| (k.clone(), e.value.to_json())).collect();
        let payloads: Map<String, Value> =
            results.iter().filter_map(|(k, e)| e.payload.clone().map(|p| (k.clone(), p))).collect();
        response.insert("featureFlags".into(), Value::Object(values));
        response.insert("featureFlagPayloads".into(), Value::Object(payloads));
    }
    // A flag whose definition is broken (stored by an older version) evaluates to an error.
    response.insert("errorsWhileComputingFlags".into(), Value::Bool(results.iter().any(|(_, e)| e.is_error())));
    response.insert("requestId".into(), Value::String(uuid::Uuid::now_v7().to_string()));
    response.insert("evaluatedAt".into(), json!(chrono::Utc::now().timestamp_millis()));
    if config {
        if let Value::Object(config) = crate::intake::remote_config_value(&req.token, !project.set.is_empty()) {
            for (k, v) in config {
                if k != "token" {
                    response.insert(k, v);
                }
            }
        }
    }
    if let Some(mirror) = state.flags.mirror(project_id) {
        response.insert("flagsSnapshot".into(), mirror.describe());
    }
    if detailed {
        let body = DetailedResponse { flags: DetailedFlags(&project, &results), rest: response };
        return axum::Json(body).into_response();
    }
    axum::Json(Value::Object(response)).into_response()
}

// ---------------------------------------------------------------------------------------------
// Local evaluation definitions

/// `GET /flags/definitions` and `/api/feature_flag/local_evaluation/`: the secret key as
/// Bearer; `token` (optional) must be the same project's.
pub async fn local_evaluation(State(state): State<AppState>, headers: HeaderMap, Query(params): Query<HashMap<String, String>>) -> Response {
    let key = match authorize_key(&state, &headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    if let Some(token) = params.get("token").filter(|t| !t.is_empty()) {
        if state.control.lookup(KeyKind::ProjectToken, token) != Some(key.project_id) {
            return ApiError::new(StatusCode::FORBIDDEN, "permission_denied", "The token does not belong to this key's project.").into_response();
        }
    }
    let project = match state.flags.get(&state.control, key.project_id) {
        Ok(p) => p,
        Err(e) => return ApiError::unavailable(e).into_response(),
    };
    if headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()) == Some(project.etag.as_str()) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, project.etag.clone())]).into_response();
    }
    let mut response = (
        [(header::CONTENT_TYPE, "application/json".to_owned()), (header::ETAG, project.etag.clone())],
        project.definitions_body.clone(),
    )
        .into_response();
    if let Some(mirror) = state.flags.mirror(key.project_id) {
        let age = mirror.age_seconds().map(|a| a.to_string()).unwrap_or_else(|| "unknown".into());
        response.headers_mut().insert("x-switchyard-snapshot-age", age.parse().expect("digits"));
        response.headers_mut().insert("x-switchyard-snapshot-stale", mirror.is_stale().to_string().parse().expect("bool"));
    }
    response
}

// ---------------------------------------------------------------------------------------------
// OpenFeature Remote Evaluation Protocol

fn ofrep_error(status: StatusCode, key: Option<&str>, code: &str, details: &str) -> Response {
    let mut body = json!({"errorCode": code, "errorDetails": details});
    if let Some(key) = key {
        body["key"] = json!(key);
    }
    (status, axum::Json(body)).into_response()
}

/// OpenFeature's reason: a variant picked by the hash split is `SPLIT`; a condition's fixed
/// variant or a boolean match is `TARGETING_MATCH`.
fn ofrep_reason(e: &Evaluation, split: bool) -> &'static str {
    match e.reason {
        Reason::Disabled => "DISABLED",
        Reason::Error(_) => "ERROR",
        Reason::ConditionMatch if split && e.value.variant().is_some() => "SPLIT",
        Reason::ConditionMatch | Reason::HoldoutConditionValue | Reason::SuperConditionValue => "TARGETING_MATCH",
        _ => "DEFAULT",
    }
}

fn ofrep_result(project: &ProjectFlags, key: &str, e: &Evaluation) -> Value {
    let definition = project.set.definition(key);
    let multivariate = definition.and_then(|d| d.filters.multivariate.as_ref()).is_some_and(|m| !m.variants.is_empty());
    let fixed_variant = definition
        .zip(e.condition_index)
        .and_then(|(d, i)| d.filters.groups.get(i))
        .is_some_and(|c| c.variant.is_some());
    let split = multivariate && !fixed_variant;
    let variant = match &e.value {
        FlagValue::Variant(v) => v.clone(),
        FlagValue::Bool(b) => b.to_string(),
    };
    let (id, version) = project.meta.get(key).copied().unwrap_or((0, 0));
    let mut metadata = json!({"flagId": id, "version": version, "posthogReason": e.reason.code()});
    if let Some(payload) = &e.payload {
        metadata["payload"] = match payload {
            Value::String(s) => Value::String(s.clone()),
            other => Value::String(other.to_string()),
        };
    }
    json!({"key": key, "value": e.value.to_json(), "reason": ofrep_reason(e, split), "variant": variant, "metadata": metadata})
}

struct OfrepRequest {
    project_id: i64,
    req: FlagsRequest,
}

#[allow(clippy::result_large_err, reason = "the error is the finished answer, built once per bad request")]
fn ofrep_request(state: &AppState, headers: &HeaderMap, body: &[u8], key: Option<&str>) -> Result<OfrepRequest, Response> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim);
    let Some(token) = token else {
        return Err(ofrep_error(StatusCode::UNAUTHORIZED, key, "GENERAL", "send the project token as `Authorization: Bearer <token>`"));
    };
    let Some(project_id) = state.control.lookup(KeyKind::ProjectToken, token) else {
        return Err(ofrep_error(StatusCode::UNAUTHORIZED, key, "GENERAL", "the project token is not valid"));
    };
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(body).map_err(|e| ofrep_error(StatusCode::BAD_REQUEST, key, "PARSE_ERROR", &format!("invalid JSON: {e}")))?
    };
    let context = match body.get("context") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(c)) => c.clone(),
        Some(_) => return Err(ofrep_error(StatusCode::BAD_REQUEST, key, "INVALID_CONTEXT", "`context` must be an object")),
    };
    let Some(targeting_key) = context.get("targetingKey").and_then(|v| id_string(Some(v))) else {
        return Err(ofrep_error(StatusCode::BAD_REQUEST, key, "TARGETING_KEY_MISSING", "the context has no `targetingKey` (the distinct id)"));
    };
    let mut person_properties = context.clone();
    person_properties.remove("targetingKey");
    let groups = object(person_properties.remove("groups").as_ref());
    let mut group_properties = object(person_properties.remove("group_properties").as_ref());
    with_group_keys(&groups, &mut group_properties);
    person_properties.entry("distinct_id").or_insert_with(|| Value::String(targeting_key.clone()));
    Ok(OfrepRequest {
        project_id,
        req: FlagsRequest {
            token: token.to_owned(),
            distinct_id: targeting_key,
            person_properties,
            groups,
            group_properties,
            anon_distinct_id: None,
            device_id: None,
            flag_keys: key.map(|k| vec![k.to_owned()]),
        },
    })
}

/// `POST /ofrep/v1/evaluate/flags/{key}`.
pub async fn ofrep_single(State(state): State<AppState>, Path(key): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let mut r = match ofrep_request(&state, &headers, &body, Some(&key)) {
        Ok(r) => r,
        Err(response) => return response,
    };
    merge_stored_properties(&state, r.project_id, &mut r.req);
    let project = match state.flags.get(&state.control, r.project_id) {
        Ok(p) => p,
        Err(_) => return ofrep_error(StatusCode::INTERNAL_SERVER_ERROR, Some(&key), "GENERAL", "flags are unavailable right now"),
    };
    let results = evaluate(&state, &project, &r.req);
    match results.first() {
        Some((k, e)) => axum::Json(ofrep_result(&project, k, e)).into_response(),
        None => ofrep_error(StatusCode::NOT_FOUND, Some(&key), "FLAG_NOT_FOUND", &format!("flag `{key}` does not exist")),
    }
}

/// `POST /ofrep/v1/evaluate/flags`: every flag, with an ETag of the answer itself. The answer
/// depends on more than the definitions and the request (stored person and group properties,
/// relative dates against the clock), so the ETag is the hash of what would be sent: a 304 is
/// never a stale value, and a change that leaves every value as it was keeps the client's copy.
pub async fn ofrep_bulk(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let mut r = match ofrep_request(&state, &headers, &body, None) {
        Ok(r) => r,
        Err(response) => return response,
    };
    merge_stored_properties(&state, r.project_id, &mut r.req);
    let project = match state.flags.get(&state.control, r.project_id) {
        Ok(p) => p,
        Err(_) => return ofrep_error(StatusCode::INTERNAL_SERVER_ERROR, None, "GENERAL", "flags are unavailable right now"),
    };
    let results = evaluate(&state, &project, &r.req);
    let flags: Vec<Value> = results.iter().map(|(k, e)| ofrep_result(&project, k, e)).collect();
    let answer = json!({"flags": flags}).to_string();
    let etag = format!("\"{:016x}\"", fnv1a(answer.as_bytes()));
    if if_none_match(&headers, &etag) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag)]).into_response();
    }
    ([(header::CONTENT_TYPE, "application/json".to_owned()), (header::ETAG, etag)], answer).into_response()
}

/// Whether `If-None-Match` names `etag` (one of a list, weak or strong).
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|tag| tag.trim())
        .any(|tag| tag.strip_prefix("W/").unwrap_or(tag) == etag)
}

// ---------------------------------------------------------------------------------------------
// Management

fn control_error(e: ControlError) -> ApiError {
    match e {
        ControlError::DuplicateFlagKey(key) => invalid("key", format!("There is already a feature flag with the key `{key}`.")),
        ControlError::VersionConflict { .. } => ApiError::new(StatusCode::CONFLICT, "version_conflict", e.to_string()),
        ControlError::FlagNotFound => ApiError::new(StatusCode::NOT_FOUND, "not_found", "Not found."),
        other => ApiError::unavailable(other),
    }
}

fn body_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid("body", "the body must be a JSON object")),
        Err(e) => Err(ApiError::new(StatusCode::BAD_REQUEST, "parse_error", format!("JSON parse error - {e}"))),
    }
}

fn with_defaults(mut def: Map<String, Value>) -> Map<String, Value> {
    def.entry("name").or_insert_with(|| Value::String(String::new()));
    def.entry("active").or_insert(Value::Bool(true));
    def.entry("ensure_experience_continuity").or_insert(Value::Bool(false));
    def.entry("filters").or_insert_with(|| json!({"groups": []}));
    def
}

pub async fn list_flags(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap) -> Result<Response, ApiError> {
    crate::api::off_runtime(state, move |state| {
        let key = crate::api::authorize(state, &headers, &project)?;
        let flags = state.control.list_flags(key, false).map_err(control_error)?;
        let results: Vec<Value> = flags.iter().map(StoredFlag::to_posthog_json).collect();
        Ok(axum::Json(json!({"count": results.len(), "next": null, "previous": null, "results": results})).into_response())
    })
    .await
}

fn refuse_mirrored(state: &AppState, project_id: i64) -> Result<(), ApiError> {
    match state.flags.mirror(project_id) {
        Some(_) => Err(ApiError::new(StatusCode::CONFLICT, "mirrored", "this project's flags are mirrored from the upstream PostHog: change them there")),
        None => Ok(()),
    }
}

/// The caller's key, the project and the live flag a change targets.
fn live_flag_for_change(state: &AppState, headers: &HeaderMap, project: &str, id: &str) -> Result<(switchyard_store::KeyRef, i64, StoredFlag), ApiError> {
    let actor = authorize_key(state, headers)?;
    let project_id = crate::api::authorize(state, headers, project)?;
    refuse_mirrored(state, project_id)?;
    let current = state.control.get_flag(project_id, id).map_err(control_error)?;
    if current.deleted {
        return Err(control_error(ControlError::FlagNotFound));
    }
    Ok((actor, project_id, current))
}

pub async fn create_flag(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, ApiError> {
    crate::api::off_runtime(state, move |state| {
        let actor = authorize_key(state, &headers)?;
        let project_id = crate::api::authorize(state, &headers, &project)?;
        refuse_mirrored(state, project_id)?;
        let def = with_defaults(body_object(&body)?);
        let flag_key = validate_definition(&def)?;
        let mut flags = state.control.list_flags(project_id, false).map_err(control_error)?;
        if flags.iter().any(|f| f.key == flag_key) {
            return Err(control_error(ControlError::DuplicateFlagKey(flag_key)));
        }
        flags.push(unsaved_flag(-1, &flag_key, &def));
        let changed = HashSet::from([Subject::Flag(flag_key.clone())]);
        check_project_change(state, project_id, ProjectChange { flags, group_types: Map::new(), cohorts: Map::new(), changed })?;
        let flag = state.control.create_flag(project_id, &flag_key, def, Some(actor.key_id)).map_err(control_error)?;
        state.flags.reload(&state.control, project_id).map_err(control_error)?;
        Ok((StatusCode::CREATED, axum::Json(flag.to_posthog_json())).into_response())
    })
    .await
}

pub async fn get_flag(State(state): State<AppState>, Path((project, id)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, ApiError> {
    crate::api::off_runtime(state, move |state| {
        let project_id = crate::api::authorize(state, &headers, &project)?;
        let flag = state.control.get_flag(project_id, &id).map_err(control_error)?;
        Ok(axum::Json(flag.to_posthog_json()).into_response())
    })
    .await
}

pub async fn update_flag(
    State(state): State<AppState>,
    Path((project, id)): Path<(String, String)>,
    method: Method,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    crate::api::off_runtime(state, move |state| {
        let (actor, project_id, current) = live_flag_for_change(state, &headers, &project, &id)?;
        let mut patch = body_object(&body)?;
        let expected_version = match patch.remove("version") {
            None | Some(Value::Null) => None,
            Some(v) => Some(v.as_i64().ok_or_else(|| invalid("version", "`version` must be an integer"))?),
        };
        let deleted = patch.remove("deleted").and_then(|d| d.as_bool()).unwrap_or(false);
        let mut def = if method == Method::PUT { Map::new() } else { current.definition.clone() };
        def.insert("key".into(), Value::String(current.key.clone()));
        def.extend(patch);
        let def = with_defaults(def);
        let flag_key = validate_definition(&def)?;
        let mut flags: Vec<StoredFlag> = state.control.list_flags(project_id, false).map_err(control_error)?.into_iter().filter(|f| f.id != current.id).collect();
        let mut changed = HashSet::new();
        if !deleted {
            if flags.iter().any(|f| f.key == flag_key) {
                return Err(control_error(ControlError::DuplicateFlagKey(flag_key)));
            }
            flags.push(unsaved_flag(current.id, &flag_key, &def));
            changed.insert(Subject::Flag(flag_key.clone()));
        }
        check_project_change(state, project_id, ProjectChange { flags, group_types: Map::new(), cohorts: Map::new(), changed })?;
        let flag = state
            .control
            .update_flag(project_id, current.id, expected_version, &flag_key, def, deleted, Some(actor.key_id))
            .map_err(control_error)?;
        state.flags.reload(&state.control, project_id).map_err(control_error)?;
        Ok(axum::Json(flag.to_posthog_json()).into_response())
    })
    .await
}

pub async fn delete_flag(State(state): State<AppState>, Path((project, id)): Path<(String, String)>, headers: HeaderMap) -> Result<Response, ApiError> {
    crate::api::off_runtime(state, move |state| {
        let (actor, project_id, current) = live_flag_for_change(state, &headers, &project, &id)?;
        let def = current.definition.clone();
        state
            .control
            .update_flag(project_id, current.id, None, &current.key, def, true, Some(actor.key_id))
            .map_err(control_error)?;
        state.flags.reload(&state.control, project_id).map_err(control_error)?;
        Ok(StatusCode::NO_CONTENT.into_response())
    })
    .await
}

pub async fn flag_activity(State(state): State<AppState>, Path(params): Path<HashMap<String, String>>, headers: HeaderMap) -> Result<Response, ApiError> {
    crate::api::off_runtime(state, move |state| {
        let project = params.get("project_id").cloned().unwrap_or_default();
        let project_id = crate::api::authorize(state, &headers, &project)?;
        let flag_id = match params.get("id") {
            Some(id) => Some(state.control.get_flag(project_id, id).map_err(control_error)?.id),
            None => None,
        };
        let entries = state.control.flag_audit(project_id, flag_id, 1000).map_err(control_error)?;
        Ok(axum::Json(json!({"results": entries, "next": null})).into_response())
    })
    .await
}

/// `POST /api/projects/{id}/feature_flags/import/`: PostHog's local evaluation JSON
/// (`{flags, group_type_mapping, cohorts}`) or an array of flags. Flags are created, or
/// updated by key; the group type mapping and cohorts are stored. All or nothing: every flag and
/// cohort is checked, together with the project's other definitions, before one transaction
/// stores them (the order of the flags does not matter); bad input is a 400 naming the flag or
/// cohort. Linear in the size of the project's definitions.
pub async fn import_flags(State(state): State<AppState>, Path(project): Path<String>, headers: HeaderMap, body: axum::body::Bytes) -> Result<Response, ApiError> {
    crate::api::off_runtime(state, move |state| {
        let actor = authorize_key(state, &headers)?;
        let project_id = crate::api::authorize(state, &headers, &project)?;
        refuse_mirrored(state, project_id)?;
        let body: Value = serde_json::from_slice(&body).map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "parse_error", format!("JSON parse error - {e}")))?;
        let (flags, mapping, cohorts) = match body {
            Value::Array(flags) => (flags, Map::new(), Map::new()),
            Value::Object(mut map) => (
                match map.remove("flags") {
                    Some(Value::Array(flags)) => flags,
                    _ => return Err(invalid("flags", "`flags` must be an array")),
                },
                object(map.get("group_type_mapping")),
                object(map.get("cohorts")),
            ),
            _ => return Err(invalid("body", "expected `{flags, group_type_mapping, cohorts}` or an array of flags")),
        };
        let mut import = FlagImport::default();
        let mut group_types = Map::new();
        for (index, name) in mapping {
            let index: i64 = index.parse().map_err(|_| invalid("group_type_mapping", format!("index {index:?} is not a number")))?;
            let Value::String(name) = name else { return Err(invalid("group_type_mapping", "group type names must be strings")) };
            group_types.insert(index.to_string(), Value::String(name.clone()));
            import.group_types.push((index, name));
        }
        let mut changed = HashSet::new();
        let mut imported_cohorts = Map::new();
        for (id, definition) in cohorts {
            let id: i64 = id.parse().map_err(|_| invalid("cohorts", format!("cohort id {id:?} is not a number")))?;
            changed.insert(Subject::Cohort(id.to_string()));
            imported_cohorts.insert(id.to_string(), definition.clone());
            import.cohorts.push((id, definition));
        }

        let existing = state.control.list_flags(project_id, false).map_err(control_error)?;
        let mut after: Vec<StoredFlag> = existing;
        let index_by_key: HashMap<String, usize> = after.iter().enumerate().map(|(i, f)| (f.key.clone(), i)).collect();
        for (n, flag) in flags.into_iter().enumerate() {
            let Value::Object(def) = flag else { return Err(invalid("flags", format!("flag {}: every flag must be an object", n + 1))) };
            let def = with_defaults(def);
            let key = definition_problem(&def).map_err(|(attr, detail)| {
                let name = def.get("key").and_then(Value::as_str).map_or_else(|| format!("flag {}", n + 1), |k| format!("flag `{k}`"));
                // The compiler's messages already name the flag.
                let detail = if detail.starts_with(&name) { detail } else { format!("{name}: {detail}") };
                invalid(attr, detail)
            })?;
            if !changed.insert(Subject::Flag(key.clone())) {
                return Err(invalid("key", format!("flag `{key}` appears twice in the import")));
            }
            let existing_id = index_by_key.get(&key).map(|&i| after[i].id);
            match index_by_key.get(&key) {
                Some(&i) => after[i].definition = def.clone(),
                // Not stored yet: a made-up id no stored flag has.
                None => after.push(unsaved_flag(-(n as i64) - 1, &key, &def)),
            }
            import.flags.push(ImportedFlag { existing_id, key, definition: def });
        }
        check_project_change(state, project_id, ProjectChange { flags: after, group_types, cohorts: imported_cohorts, changed })?;
        let counts = state.control.import_definitions(project_id, import, Some(actor.key_id)).map_err(control_error)?;
        state.flags.reload(&state.control, project_id).map_err(control_error)?;
        Ok(axum::Json(json!({"created": counts.created, "updated": counts.updated})).into_response())
    })
    .await
}

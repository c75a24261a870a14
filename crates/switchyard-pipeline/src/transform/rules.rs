//! Declarative rules and the destination filter, compiled once, applied in place.
//!
//! Property keys (`set_property`, `rename_property`, `remove_property`, `hash_property`,
//! `redact.keys`) name a member of the event's `properties`. A key that starts with
//! `properties.`, `traits.` or `context.` is a dotted path from the event's root instead
//! (`context.ip`, `traits.email`, `context.page.url`); any other key is taken whole, dots
//! included (`utm.source` is the property named `utm.source`).

use std::collections::HashSet;

use chrono::{DateTime, Utc};
use regex::Regex;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use switchyard_flags::property::PropertyMatcher;

use crate::InvalidField;

const EVENT_TYPES: [&str; 6] = ["track", "identify", "group", "page", "screen", "alias"];

/// The email preset of `redact`: addresses anywhere in a string.
const EMAIL_PATTERN: &str = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}";
/// The ipv4 preset of `redact`.
const IPV4_PATTERN: &str = r"\b(?:(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\.){3}(?:25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])\b";

fn invalid(field: &str, member: &str, message: impl Into<String>) -> InvalidField {
    InvalidField::new(format!("{field}.{member}"), message)
}

/// Refuses members a rule does not know (a typo would otherwise silently do nothing).
pub(super) fn check_members(object: &Map<String, Value>, field: &str, kind: &str, known: &[&str]) -> Result<(), InvalidField> {
    for key in object.keys() {
        if key != "type" && !known.contains(&key.as_str()) {
            let known = if known.is_empty() { "none".to_owned() } else { known.join(", ") };
            return Err(invalid(field, key, format!("is not a member of a {kind} rule (known: {known})")));
        }
    }
    Ok(())
}

fn required<'a>(object: &'a Map<String, Value>, field: &str, member: &str) -> Result<&'a Value, InvalidField> {
    match object.get(member) {
        None | Some(Value::Null) => Err(invalid(field, member, "is required")),
        Some(value) => Ok(value),
    }
}

fn required_str<'a>(object: &'a Map<String, Value>, field: &str, member: &str) -> Result<&'a str, InvalidField> {
    match required(object, field, member)? {
        Value::String(s) if !s.is_empty() => Ok(s),
        _ => Err(invalid(field, member, "must be a non-empty string")),
    }
}

// ---------------------------------------------------------------------------------------------
// Globs

/// Event-name patterns: exact names and globs (`*` any run of characters, `?` one character).
#[derive(Debug, Clone, Default)]
pub(super) struct NamePatterns {
    exact: HashSet<String>,
    globs: Vec<String>,
}

impl NamePatterns {
    fn compile(value: &Value, field: &str) -> Result<Self, InvalidField> {
        let Value::Array(items) = value else {
            return Err(InvalidField::new(field, "must be an array of event names or globs"));
        };
        let mut patterns = NamePatterns::default();
        for (i, item) in items.iter().enumerate() {
            let Value::String(pattern) = item else {
                return Err(InvalidField::new(format!("{field}[{i}]"), "must be a string"));
            };
            if pattern.contains(['*', '?']) {
                patterns.globs.push(pattern.clone());
            } else {
                patterns.exact.insert(pattern.clone());
            }
        }
        Ok(patterns)
    }

    fn matches(&self, name: &str) -> bool {
        self.exact.contains(name) || self.globs.iter().any(|g| glob_match(g, name))
    }
}

fn char_len(first_byte: u8) -> usize {
    match first_byte {
        b if b < 0x80 => 1,
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        _ => 2,
    }
}

/// Glob match without allocation: `*` matches any run (also empty), `?` exactly one
/// character; everything else literally. Linear-time two-pointer with one backtrack point.
pub(super) fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && p[pi] == b'*' {
            pi += 1;
            star = Some((pi, ti));
        } else if pi < p.len() && p[pi] == b'?' {
            pi += 1;
            ti += char_len(t[ti]);
        } else if pi < p.len() && p[pi] == t[ti] {
            pi += 1;
            ti += 1;
        } else if let Some((star_p, star_t)) = star {
            let next = star_t + char_len(t[star_t]);
            star = Some((star_p, next));
            pi = star_p;
            ti = next;
        } else {
            return false;
        }
    }
    p[pi.min(p.len())..].iter().all(|&b| b == b'*')
}

// ---------------------------------------------------------------------------------------------
// Types and property filters

fn compile_types(value: &Value, field: &str) -> Result<Vec<String>, InvalidField> {
    let Value::Array(items) = value else {
        return Err(InvalidField::new(field, format!("must be an array of event types ({})", EVENT_TYPES.join(", "))));
    };
    let mut types = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        match item.as_str() {
            Some(t) if EVENT_TYPES.contains(&t) => types.push(t.to_owned()),
            _ => return Err(InvalidField::new(format!("{field}[{i}]"), format!("must be one of {}", EVENT_TYPES.join(", ")))),
        }
    }
    Ok(types)
}

fn type_in(event: &Value, types: &[String]) -> bool {
    let kind = event.get("type").and_then(Value::as_str).unwrap_or("");
    types.iter().any(|t| t == kind)
}

fn event_name(event: &Value) -> &str {
    event.get("event").and_then(Value::as_str).unwrap_or("")
}

#[derive(Debug, Clone, Copy)]
pub(super) enum FilterTarget {
    /// The event's `properties`.
    Event,
    /// The event's `traits` (person properties being set).
    Person,
}

/// One PostHog property filter, compiled by the flag engine.
#[derive(Debug, Clone)]
pub(super) struct PropertyCondition {
    matcher: PropertyMatcher,
    target: FilterTarget,
}

fn compile_property_filters(value: &Value, field: &str) -> Result<Vec<PropertyCondition>, InvalidField> {
    let Value::Array(items) = value else {
        return Err(InvalidField::new(field, "must be an array of property filters ({\"key\", \"operator\", \"value\"})"));
    };
    let mut conditions = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = format!("{field}[{i}]");
        let Some(object) = item.as_object() else {
            return Err(InvalidField::new(at, "must be a property filter object"));
        };
        if let Some(unknown) = object.keys().find(|k| !["key", "operator", "value", "type"].contains(&k.as_str())) {
            return Err(invalid(&at, unknown, "is not a member of a property filter (known: key, operator, value, type)"));
        }
        let key = required_str(object, &at, "key")?;
        let operator = match object.get("operator") {
            None | Some(Value::Null) => None,
            Some(Value::String(op)) => Some(op.as_str()),
            Some(_) => return Err(invalid(&at, "operator", "must be a string")),
        };
        let target = match object.get("type") {
            None | Some(Value::Null) => FilterTarget::Event,
            Some(Value::String(t)) if t == "event" => FilterTarget::Event,
            Some(Value::String(t)) if t == "person" => FilterTarget::Person,
            Some(_) => return Err(invalid(&at, "type", "must be \"event\" (the event's properties) or \"person\" (its traits)")),
        };
        let value = object.get("value").unwrap_or(&Value::Null);
        let matcher = PropertyMatcher::compile(key, operator, value).map_err(|e| InvalidField::new(at.clone(), e.0))?;
        conditions.push(PropertyCondition { matcher, target });
    }
    Ok(conditions)
}

/// True when every condition matches (so an empty list matches).
fn all_match(conditions: &[PropertyCondition], event: &Value, now: DateTime<Utc>) -> bool {
    static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
    conditions.iter().all(|c| {
        let section = match c.target {
            FilterTarget::Event => "properties",
            FilterTarget::Person => "traits",
        };
        let map = event.get(section).and_then(Value::as_object).unwrap_or_else(|| EMPTY.get_or_init(Map::new));
        c.matcher.matches(map, now)
    })
}

// ---------------------------------------------------------------------------------------------
// Property paths

/// Where a rule's key points: a member of an object section of the event.
#[derive(Debug, Clone)]
pub(super) struct PropertyPath {
    /// `properties`, `traits` or `context`.
    section: &'static str,
    /// Members from the section down; the last is the property itself.
    segments: Vec<String>,
}

impl PropertyPath {
    fn parse(key: &str) -> Self {
        for section in ["properties", "traits", "context"] {
            if let Some(rest) = key.strip_prefix(section).and_then(|r| r.strip_prefix('.')) {
                if !rest.is_empty() && rest.split('.').all(|s| !s.is_empty()) {
                    return PropertyPath { section, segments: rest.split('.').map(str::to_owned).collect() };
                }
            }
        }
        PropertyPath { section: "properties", segments: vec![key.to_owned()] }
    }

    fn last(&self) -> &str {
        &self.segments[self.segments.len() - 1]
    }

    /// The object holding the property, if it exists.
    fn parent_mut<'a>(&self, event: &'a mut Value) -> Option<&'a mut Map<String, Value>> {
        let mut map = event.get_mut(self.section)?.as_object_mut()?;
        for segment in &self.segments[..self.segments.len() - 1] {
            map = map.get_mut(segment)?.as_object_mut()?;
        }
        Some(map)
    }

    /// The object holding the property, created (and non-objects on the way replaced) as needed.
    fn parent_or_create<'a>(&self, event: &'a mut Value) -> Option<&'a mut Map<String, Value>> {
        let root = event.as_object_mut()?;
        let mut slot = root.entry(self.section).or_insert_with(|| Value::Object(Map::new()));
        for segment in &self.segments[..self.segments.len() - 1] {
            if !slot.is_object() {
                *slot = Value::Object(Map::new());
            }
            slot = slot.as_object_mut()?.entry(segment.as_str()).or_insert_with(|| Value::Object(Map::new()));
        }
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        slot.as_object_mut()
    }

    fn get_mut<'a>(&self, event: &'a mut Value) -> Option<&'a mut Value> {
        self.parent_mut(event)?.get_mut(self.last())
    }

    fn take(&self, event: &mut Value) -> Option<Value> {
        self.parent_mut(event)?.remove(self.last())
    }

    fn set(&self, event: &mut Value, value: Value) {
        if let Some(parent) = self.parent_or_create(event) {
            parent.insert(self.last().to_owned(), value);
        }
    }
}

fn compile_path(object: &Map<String, Value>, field: &str, member: &str) -> Result<PropertyPath, InvalidField> {
    Ok(PropertyPath::parse(required_str(object, field, member)?))
}

// ---------------------------------------------------------------------------------------------
// Rules

#[derive(Debug, Clone)]
pub(super) enum Rule {
    KeepEvents(NamePatterns),
    DropEvents(NamePatterns),
    KeepTypes(Vec<String>),
    DropTypes(Vec<String>),
    DropWhere(Vec<PropertyCondition>),
    RenameEvent {
        from: String,
        to: String,
    },
    SetProperty {
        path: PropertyPath,
        value: Value,
    },
    RenameProperty {
        from: PropertyPath,
        to: PropertyPath,
    },
    RemoveProperty(PropertyPath),
    HashProperty {
        path: PropertyPath,
        salt: String,
    },
    Redact {
        regex: Regex,
        replacement: String,
        keys: Option<Vec<PropertyPath>>,
    },
    /// Keeps an event when the first 8 bytes of SHA-256(distinct id), as a fraction of 2^64,
    /// fall below `fraction`.
    Sample {
        fraction: f64,
    },
}

const RULE_TYPES: &str = "keep_events, drop_events, keep_types, drop_types, drop_where, rename_event, set_property, rename_property, remove_property, hash_property, redact, sample, javascript";

impl Rule {
    /// Compiles one rule object; `field` is its position, e.g. `transformations[2]`.
    pub(super) fn compile(object: &Map<String, Value>, field: &str) -> Result<Rule, InvalidField> {
        let kind = match object.get("type") {
            Some(Value::String(kind)) => kind.as_str(),
            _ => return Err(invalid(field, "type", format!("is required: one of {RULE_TYPES}"))),
        };
        let members: &[&str] = match kind {
            "keep_events" | "drop_events" => &["events"],
            "keep_types" | "drop_types" => &["types"],
            "drop_where" => &["properties"],
            "rename_event" | "rename_property" => &["from", "to"],
            "set_property" => &["key", "value"],
            "remove_property" => &["key"],
            "hash_property" => &["key", "salt"],
            "redact" => &["pattern", "preset", "replacement", "keys"],
            "sample" => &["percentage"],
            other => return Err(invalid(field, "type", format!("unknown rule type `{other}` (known: {RULE_TYPES})"))),
        };
        check_members(object, field, kind, members)?;
        let at = |member: &str| format!("{field}.{member}");
        Ok(match kind {
            "keep_events" => Rule::KeepEvents(NamePatterns::compile(required(object, field, "events")?, &at("events"))?),
            "drop_events" => Rule::DropEvents(NamePatterns::compile(required(object, field, "events")?, &at("events"))?),
            "keep_types" => Rule::KeepTypes(compile_types(required(object, field, "types")?, &at("types"))?),
            "drop_types" => Rule::DropTypes(compile_types(required(object, field, "types")?, &at("types"))?),
            "drop_where" => {
                let conditions = compile_property_filters(required(object, field, "properties")?, &at("properties"))?;
                if conditions.is_empty() {
                    return Err(invalid(field, "properties", "must hold at least one filter (an empty list would drop every event)"));
                }
                Rule::DropWhere(conditions)
            }
            "rename_event" => {
                Rule::RenameEvent { from: required_str(object, field, "from")?.to_owned(), to: required_str(object, field, "to")?.to_owned() }
            }
            "set_property" => Rule::SetProperty {
                path: compile_path(object, field, "key")?,
                value: object.get("value").cloned().ok_or_else(|| invalid(field, "value", "is required (null is allowed)"))?,
            },
            "rename_property" => Rule::RenameProperty { from: compile_path(object, field, "from")?, to: compile_path(object, field, "to")? },
            "remove_property" => Rule::RemoveProperty(compile_path(object, field, "key")?),
            "hash_property" => Rule::HashProperty {
                path: compile_path(object, field, "key")?,
                salt: match object.get("salt") {
                    None | Some(Value::Null) => String::new(),
                    Some(Value::String(salt)) => salt.clone(),
                    Some(_) => return Err(invalid(field, "salt", "must be a string")),
                },
            },
            "redact" => compile_redact(object, field)?,
            "sample" => {
                let percentage = required(object, field, "percentage")?
                    .as_f64()
                    .filter(|p| (0.0..=100.0).contains(p))
                    .ok_or_else(|| invalid(field, "percentage", "must be a number from 0 to 100"))?;
                Rule::Sample { fraction: percentage / 100.0 }
            }
            _ => unreachable!("rule types are matched above"),
        })
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Rule::KeepEvents(_) => "keep_events",
            Rule::DropEvents(_) => "drop_events",
            Rule::KeepTypes(_) => "keep_types",
            Rule::DropTypes(_) => "drop_types",
            Rule::DropWhere(_) => "drop_where",
            Rule::RenameEvent { .. } => "rename_event",
            Rule::SetProperty { .. } => "set_property",
            Rule::RenameProperty { .. } => "rename_property",
            Rule::RemoveProperty(_) => "remove_property",
            Rule::HashProperty { .. } => "hash_property",
            Rule::Redact { .. } => "redact",
            Rule::Sample { .. } => "sample",
        }
    }

    /// Applies the rule to `event` in place; false drops it.
    pub(super) fn apply(&self, event: &mut Value, now: DateTime<Utc>) -> bool {
        match self {
            Rule::KeepEvents(patterns) => patterns.matches(event_name(event)),
            Rule::DropEvents(patterns) => !patterns.matches(event_name(event)),
            Rule::KeepTypes(types) => type_in(event, types),
            Rule::DropTypes(types) => !type_in(event, types),
            Rule::DropWhere(conditions) => !all_match(conditions, event, now),
            Rule::RenameEvent { from, to } => {
                if event_name(event) == from {
                    if let Some(object) = event.as_object_mut() {
                        object.insert("event".to_owned(), Value::String(to.clone()));
                    }
                }
                true
            }
            Rule::SetProperty { path, value } => {
                path.set(event, value.clone());
                true
            }
            Rule::RenameProperty { from, to } => {
                if let Some(value) = from.take(event) {
                    to.set(event, value);
                }
                true
            }
            Rule::RemoveProperty(path) => {
                path.take(event);
                true
            }
            Rule::HashProperty { path, salt } => {
                if let Some(value) = path.get_mut(event) {
                    if !value.is_null() {
                        *value = Value::String(salted_sha256(salt, value));
                    }
                }
                true
            }
            Rule::Redact { regex, replacement, keys } => {
                match keys {
                    Some(paths) => {
                        for path in paths {
                            if let Some(value) = path.get_mut(event) {
                                redact_value(value, regex, replacement);
                            }
                        }
                    }
                    None => {
                        if let Some(properties) = event.get_mut("properties") {
                            redact_value(properties, regex, replacement);
                        }
                    }
                }
                true
            }
            Rule::Sample { fraction } => {
                let distinct_id = event.get("distinct_id").and_then(Value::as_str).unwrap_or("");
                sample_keeps(distinct_id, *fraction)
            }
        }
    }
}

fn compile_redact(object: &Map<String, Value>, field: &str) -> Result<Rule, InvalidField> {
    let pattern = match (object.get("pattern"), object.get("preset")) {
        (Some(Value::String(pattern)), None | Some(Value::Null)) => pattern.as_str(),
        (None | Some(Value::Null), Some(Value::String(preset))) => match preset.as_str() {
            "email" => EMAIL_PATTERN,
            "ipv4" => IPV4_PATTERN,
            other => return Err(invalid(field, "preset", format!("unknown preset `{other}` (known: email, ipv4)"))),
        },
        (None | Some(Value::Null), None | Some(Value::Null)) => return Err(invalid(field, "pattern", "is required (or a \"preset\": email, ipv4)")),
        (Some(Value::String(_)), Some(_)) => return Err(invalid(field, "preset", "cannot be given together with \"pattern\"")),
        (Some(_), _) => return Err(invalid(field, "pattern", "must be a string (a regular expression)")),
        (_, Some(_)) => return Err(invalid(field, "preset", "must be a string: email, ipv4")),
    };
    let regex = Regex::new(pattern).map_err(|e| invalid(field, "pattern", format!("is not a valid regular expression: {e}")))?;
    let replacement = match object.get("replacement") {
        None | Some(Value::Null) => "[redacted]".to_owned(),
        Some(Value::String(r)) => r.clone(),
        Some(_) => return Err(invalid(field, "replacement", "must be a string")),
    };
    let keys = match object.get("keys") {
        None | Some(Value::Null) => None,
        Some(Value::Array(items)) => {
            let mut paths = Vec::with_capacity(items.len());
            for (i, item) in items.iter().enumerate() {
                match item {
                    Value::String(key) if !key.is_empty() => paths.push(PropertyPath::parse(key)),
                    _ => return Err(InvalidField::new(format!("{field}.keys[{i}]"), "must be a non-empty string")),
                }
            }
            Some(paths)
        }
        Some(_) => return Err(invalid(field, "keys", "must be an array of property keys")),
    };
    Ok(Rule::Redact { regex, replacement, keys })
}

/// Hex SHA-256 of `salt` followed by the value (a string as is, anything else as its JSON text).
fn salted_sha256(salt: &str, value: &Value) -> String {
    let mut hasher = Sha256::new();
    hasher.update(salt.as_bytes());
    match value {
        Value::String(s) => hasher.update(s.as_bytes()),
        other => hasher.update(other.to_string().as_bytes()),
    }
    let digest = hasher.finalize();
    let mut hex = String::with_capacity(64);
    for byte in digest {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        hex.push(DIGITS[(byte >> 4) as usize] as char);
        hex.push(DIGITS[(byte & 0xf) as usize] as char);
    }
    hex
}

/// Replaces matches in every string inside `value` (nested objects and arrays included).
fn redact_value(value: &mut Value, regex: &Regex, replacement: &str) {
    match value {
        Value::String(text) => {
            let replaced = match regex.replace_all(text, regex::NoExpand(replacement)) {
                std::borrow::Cow::Owned(new) => Some(new),
                std::borrow::Cow::Borrowed(_) => None,
            };
            if let Some(new) = replaced {
                *text = new;
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|v| redact_value(v, regex, replacement)),
        Value::Object(map) => map.values_mut().for_each(|v| redact_value(v, regex, replacement)),
        _ => {}
    }
}

/// The same distinct id always gets the same answer for the same fraction, and a smaller
/// fraction keeps a subset of what a larger one keeps.
pub(super) fn sample_keeps(distinct_id: &str, fraction: f64) -> bool {
    if fraction >= 1.0 {
        return true;
    }
    let digest = Sha256::digest(distinct_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    let bucket = u64::from_be_bytes(first) as f64 / 18_446_744_073_709_551_616.0;
    bucket < fraction
}

// ---------------------------------------------------------------------------------------------
// Filter

/// A destination's keep-filter: `{"events": [names or globs]?, "types": [...]?, "properties":
/// [PostHog property filters]?}`. An event passes when it matches every part given; an empty
/// (or null) filter passes everything.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    events: Option<NamePatterns>,
    types: Option<Vec<String>>,
    properties: Vec<PropertyCondition>,
}

impl Filter {
    pub fn compile(filter: &Value) -> Result<Filter, InvalidField> {
        let object = match filter {
            Value::Null => return Ok(Filter::default()),
            Value::Object(object) => object,
            _ => return Err(InvalidField::new("filter", "must be an object: {\"events\", \"types\", \"properties\"}")),
        };
        for key in object.keys() {
            if !["events", "types", "properties"].contains(&key.as_str()) {
                return Err(invalid("filter", key, "is not a member of a filter (known: events, types, properties)"));
            }
        }
        let events = match object.get("events") {
            None | Some(Value::Null) => None,
            Some(value) => Some(NamePatterns::compile(value, "filter.events")?),
        };
        let types = match object.get("types") {
            None | Some(Value::Null) => None,
            Some(value) => Some(compile_types(value, "filter.types")?),
        };
        let properties = match object.get("properties") {
            None | Some(Value::Null) => Vec::new(),
            Some(value) => compile_property_filters(value, "filter.properties")?,
        };
        Ok(Filter { events, types, properties })
    }

    /// True when the filter lets everything through.
    pub fn is_empty(&self) -> bool {
        self.events.is_none() && self.types.is_none() && self.properties.is_empty()
    }

    pub fn matches(&self, event: &Value) -> bool {
        if let Some(patterns) = &self.events {
            if !patterns.matches(event_name(event)) {
                return false;
            }
        }
        if let Some(types) = &self.types {
            if !type_in(event, types) {
                return false;
            }
        }
        self.properties.is_empty() || all_match(&self.properties, event, Utc::now())
    }
}

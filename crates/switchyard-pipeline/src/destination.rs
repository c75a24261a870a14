//! A destination as users manage it: its spec (`{"name", "type", "enabled", "config", "filter",
//! "transformations", "start"}`), validated field by field, and its secrets masked for reading.

use std::collections::BTreeMap;

use base64::Engine;
use serde_json::{json, Map, Value};

/// A spec refused: the field (`config.url`, `transformations[1].pattern`) and why.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct InvalidField {
    pub field: String,
    pub message: String,
}

impl InvalidField {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        InvalidField { field: field.into(), message: message.into() }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DestinationKind {
    Webhook,
    Posthog,
    Rudderstack,
    Segment,
    Otlp,
}

impl DestinationKind {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "webhook" => DestinationKind::Webhook,
            "posthog" => DestinationKind::Posthog,
            "rudderstack" => DestinationKind::Rudderstack,
            "segment" => DestinationKind::Segment,
            "otlp" => DestinationKind::Otlp,
            _ => return None,
        })
    }
    pub fn as_str(self) -> &'static str {
        match self {
            DestinationKind::Webhook => "webhook",
            DestinationKind::Posthog => "posthog",
            DestinationKind::Rudderstack => "rudderstack",
            DestinationKind::Segment => "segment",
            DestinationKind::Otlp => "otlp",
        }
    }
}

/// Where and how a destination's requests go, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum DestinationConfig {
    /// A JSON array of events (the events API's shape), signed per Standard Webhooks when a
    /// `whsec_…` secret is set.
    Webhook { url: reqwest::Url, secret: Option<String>, headers: BTreeMap<String, String>, max_batch_events: usize },
    /// PostHog's `/batch/` at `host`.
    Posthog { host: reqwest::Url, project_token: String },
    /// `/v1/batch` of a RudderStack data plane, Basic auth with the write key.
    Rudderstack { url: reqwest::Url, write_key: String },
    /// `/v1/batch` of Segment's tracking API (or anything speaking it).
    Segment { url: reqwest::Url, write_key: String },
    /// The spans taken in over OTLP, sent on as OTLP/HTTP protobuf to `endpoint` (a collector's
    /// `/v1/traces`, SigNoz, …).
    Otlp { endpoint: reqwest::Url, headers: BTreeMap<String, String> },
}

pub const DEFAULT_WEBHOOK_BATCH: usize = 1000;
pub const MAX_WEBHOOK_BATCH: usize = 10_000;
/// What a masked secret reads as; sent back unchanged in a PATCH, it keeps the stored secret.
pub const MASK: &str = "********";

impl DestinationConfig {
    pub fn kind(&self) -> DestinationKind {
        match self {
            DestinationConfig::Webhook { .. } => DestinationKind::Webhook,
            DestinationConfig::Posthog { .. } => DestinationKind::Posthog,
            DestinationConfig::Rudderstack { .. } => DestinationKind::Rudderstack,
            DestinationConfig::Segment { .. } => DestinationKind::Segment,
            DestinationConfig::Otlp { .. } => DestinationKind::Otlp,
        }
    }

    /// The URL requests go to (before the type's path).
    pub fn url(&self) -> &reqwest::Url {
        match self {
            DestinationConfig::Webhook { url, .. } => url,
            DestinationConfig::Posthog { host, .. } => host,
            DestinationConfig::Rudderstack { url, .. } | DestinationConfig::Segment { url, .. } => url,
            DestinationConfig::Otlp { endpoint, .. } => endpoint,
        }
    }

    /// Validates `config` for `kind`; errors name the field as `config.<name>`.
    pub fn parse(kind: DestinationKind, config: &Value) -> Result<Self, InvalidField> {
        let Some(object) = config.as_object() else {
            return Err(InvalidField::new("config", "must be an object"));
        };
        let known: &[&str] = match kind {
            DestinationKind::Webhook => &["url", "secret", "headers", "max_batch_events"],
            DestinationKind::Posthog => &["host", "project_token"],
            DestinationKind::Rudderstack | DestinationKind::Segment => &["url", "write_key"],
            DestinationKind::Otlp => &["endpoint", "headers"],
        };
        if let Some(unknown) = object.keys().find(|k| !known.contains(&k.as_str())) {
            return Err(InvalidField::new(
                format!("config.{unknown}"),
                format!("is not a setting of a {} destination (known: {})", kind.as_str(), known.join(", ")),
            ));
        }
        Ok(match kind {
            DestinationKind::Webhook => {
                let url = parse_url(object, "url")?;
                let secret = match object.get("secret") {
                    None | Some(Value::Null) => None,
                    Some(Value::String(s)) => {
                        webhook_key(s).map_err(|m| InvalidField::new("config.secret", m))?;
                        Some(s.clone())
                    }
                    Some(_) => return Err(InvalidField::new("config.secret", "must be a string")),
                };
                let headers = parse_headers(object)?;
                let max_batch_events = match object.get("max_batch_events") {
                    None | Some(Value::Null) => DEFAULT_WEBHOOK_BATCH,
                    Some(v) => match v.as_u64() {
                        Some(n) if (1..=MAX_WEBHOOK_BATCH as u64).contains(&n) => n as usize,
                        _ => {
                            return Err(InvalidField::new(
                                "config.max_batch_events",
                                format!("must be an integer from 1 to {MAX_WEBHOOK_BATCH}"),
                            ))
                        }
                    },
                };
                DestinationConfig::Webhook { url, secret, headers, max_batch_events }
            }
            DestinationKind::Posthog => {
                DestinationConfig::Posthog { host: parse_url(object, "host")?, project_token: required_string(object, "project_token")? }
            }
            DestinationKind::Rudderstack => {
                DestinationConfig::Rudderstack { url: parse_url(object, "url")?, write_key: required_string(object, "write_key")? }
            }
            DestinationKind::Segment => {
                DestinationConfig::Segment { url: parse_url(object, "url")?, write_key: required_string(object, "write_key")? }
            }
            DestinationKind::Otlp => DestinationConfig::Otlp { endpoint: parse_url(object, "endpoint")?, headers: parse_headers(object)? },
        })
    }

    /// The config as stored (secrets included).
    pub fn to_json(&self) -> Value {
        match self {
            DestinationConfig::Webhook { url, secret, headers, max_batch_events } => {
                let mut o = json!({"url": url.as_str(), "headers": headers, "max_batch_events": max_batch_events});
                if let Some(secret) = secret {
                    o["secret"] = json!(secret);
                }
                o
            }
            DestinationConfig::Posthog { host, project_token } => json!({"host": host.as_str(), "project_token": project_token}),
            DestinationConfig::Rudderstack { url, write_key } | DestinationConfig::Segment { url, write_key } => {
                json!({"url": url.as_str(), "write_key": write_key})
            }
            DestinationConfig::Otlp { endpoint, headers } => json!({"endpoint": endpoint.as_str(), "headers": headers}),
        }
    }

    /// The config as read back: the webhook secret, write keys and header values masked.
    pub fn masked(&self) -> Value {
        let mut o = self.to_json();
        let map = o.as_object_mut().expect("configs are objects");
        for key in ["secret", "write_key"] {
            if map.contains_key(key) {
                map.insert(key.into(), json!(MASK));
            }
        }
        if let Some(Value::Object(headers)) = map.get_mut("headers") {
            for value in headers.values_mut() {
                *value = json!(MASK);
            }
        }
        o
    }

    /// `patch` with masked values replaced by what `self` stores, so reading a destination,
    /// changing one setting and writing it back keeps its secrets.
    pub fn unmask(&self, mut patch: Value) -> Value {
        let stored = self.to_json();
        if let Some(map) = patch.as_object_mut() {
            for key in ["secret", "write_key"] {
                if map.get(key).and_then(Value::as_str) == Some(MASK) {
                    if let Some(v) = stored.get(key) {
                        map.insert(key.into(), v.clone());
                    }
                }
            }
            if let Some(Value::Object(headers)) = map.get_mut("headers") {
                for (name, value) in headers.iter_mut() {
                    if value.as_str() == Some(MASK) {
                        if let Some(v) = stored["headers"].get(name) {
                            *value = v.clone();
                        }
                    }
                }
            }
        }
        patch
    }
}

/// The HMAC key of a Standard Webhooks secret: `whsec_` then base64 of 24 to 64 bytes.
pub fn webhook_key(secret: &str) -> Result<Vec<u8>, String> {
    let Some(encoded) = secret.strip_prefix("whsec_") else {
        return Err("must start with `whsec_` (a Standard Webhooks secret)".into());
    };
    let key = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|_| "must be `whsec_` followed by base64".to_string())?;
    if !(24..=64).contains(&key.len()) {
        return Err(format!("must encode 24 to 64 bytes (it encodes {})", key.len()));
    }
    Ok(key)
}

/// `config.headers`: an object of valid header names and values, none of those Switchyard sets.
fn parse_headers(object: &Map<String, Value>) -> Result<BTreeMap<String, String>, InvalidField> {
    let mut headers = BTreeMap::new();
    match object.get("headers") {
        None | Some(Value::Null) => {}
        Some(Value::Object(map)) => {
            for (name, value) in map {
                let field = format!("config.headers.{name}");
                let Value::String(value) = value else {
                    return Err(InvalidField::new(field, "must be a string"));
                };
                if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                    return Err(InvalidField::new(field, "is not a valid header name"));
                }
                if reqwest::header::HeaderValue::from_str(value).is_err() {
                    return Err(InvalidField::new(field, "is not a valid header value"));
                }
                let lower = name.to_ascii_lowercase();
                if lower == "content-type" || lower == "content-length" || lower.starts_with("webhook-") {
                    return Err(InvalidField::new(field, "is set by Switchyard"));
                }
                headers.insert(name.clone(), value.clone());
            }
        }
        Some(_) => return Err(InvalidField::new("config.headers", "must be an object of strings")),
    }
    Ok(headers)
}

fn required_string(object: &Map<String, Value>, name: &str) -> Result<String, InvalidField> {
    match object.get(name) {
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.clone()),
        Some(Value::String(_)) => Err(InvalidField::new(format!("config.{name}"), "must not be empty")),
        None | Some(Value::Null) => Err(InvalidField::new(format!("config.{name}"), "is required")),
        Some(_) => Err(InvalidField::new(format!("config.{name}"), "must be a string")),
    }
}

fn parse_url(object: &Map<String, Value>, name: &str) -> Result<reqwest::Url, InvalidField> {
    let field = format!("config.{name}");
    let text = required_string(object, name)?;
    let url = reqwest::Url::parse(&text).map_err(|e| InvalidField::new(&field, format!("is not a URL ({e})")))?;
    if url.scheme() != "http" && url.scheme() != "https" {
        return Err(InvalidField::new(field, format!("must be http or https, not {}", url.scheme())));
    }
    if url.host().is_none() {
        return Err(InvalidField::new(field, "has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(InvalidField::new(field, "must not carry credentials (use the type's key settings or headers)"));
    }
    Ok(url)
}

/// Where a new destination starts reading the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Only what arrives after creation.
    Now,
    /// The log from its beginning (what retention kept): a backfill.
    Earliest,
}

/// A destination as created or updated.
#[derive(Debug, Clone, PartialEq)]
pub struct DestinationSpec {
    pub name: String,
    pub enabled: bool,
    pub config: DestinationConfig,
    /// The keep-rule: `{"events": [globs], "types": [...], "properties": [PostHog property filters]}`.
    pub filter: Value,
    pub transformations: Vec<Value>,
    pub start: Start,
}

impl DestinationSpec {
    /// Validates a create body. `transformations` and `filter` are validated by compiling
    /// them ([`crate::transform`]); this checks the rest.
    pub fn parse(body: &Value) -> Result<Self, InvalidField> {
        let Some(object) = body.as_object() else {
            return Err(InvalidField::new("body", "must be a JSON object"));
        };
        const KNOWN: [&str; 7] = ["name", "type", "enabled", "config", "filter", "transformations", "start"];
        if let Some(unknown) = object.keys().find(|k| !KNOWN.contains(&k.as_str())) {
            return Err(InvalidField::new(unknown.as_str(), format!("is not a destination field (known: {})", KNOWN.join(", "))));
        }
        let name = match object.get("name") {
            Some(Value::String(s)) if !s.trim().is_empty() && s.len() <= 200 => s.clone(),
            Some(Value::String(_)) => return Err(InvalidField::new("name", "must be 1 to 200 bytes, not blank")),
            None | Some(Value::Null) => return Err(InvalidField::new("name", "is required")),
            Some(_) => return Err(InvalidField::new("name", "must be a string")),
        };
        let kind = match object.get("type") {
            Some(Value::String(s)) => DestinationKind::parse(s).ok_or_else(|| {
                InvalidField::new("type", format!("unknown type {s:?} (known: webhook, posthog, rudderstack, segment, otlp)"))
            })?,
            None | Some(Value::Null) => return Err(InvalidField::new("type", "is required")),
            Some(_) => return Err(InvalidField::new("type", "must be a string")),
        };
        let enabled = match object.get("enabled") {
            None | Some(Value::Null) => true,
            Some(Value::Bool(b)) => *b,
            Some(_) => return Err(InvalidField::new("enabled", "must be true or false")),
        };
        let config = DestinationConfig::parse(kind, object.get("config").unwrap_or(&Value::Null))?;
        let filter = match object.get("filter") {
            None | Some(Value::Null) => json!({}),
            Some(v @ Value::Object(_)) => v.clone(),
            Some(_) => return Err(InvalidField::new("filter", "must be an object")),
        };
        let transformations = match object.get("transformations") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a.clone(),
            Some(_) => return Err(InvalidField::new("transformations", "must be an array")),
        };
        if kind == DestinationKind::Otlp {
            if filter.as_object().is_some_and(|f| !f.is_empty()) {
                return Err(InvalidField::new("filter", "an otlp destination sends every span: it has no filter"));
            }
            if !transformations.is_empty() {
                return Err(InvalidField::new("transformations", "an otlp destination sends spans as they came: it has no transformations"));
            }
        }
        let start = match object.get("start").and_then(Value::as_str) {
            None if object.get("start").is_none_or(Value::is_null) => Start::Now,
            Some("now") => Start::Now,
            Some("earliest") => Start::Earliest,
            _ => return Err(InvalidField::new("start", "must be \"now\" or \"earliest\"")),
        };
        Ok(DestinationSpec { name, enabled, config, filter, transformations, start })
    }

    /// The spec with `patch` applied (PATCH semantics: members present replace; `config`
    /// members present replace those settings, masked secrets kept). `type` and `start`
    /// cannot change.
    pub fn patched(&self, patch: &Value) -> Result<Self, InvalidField> {
        let Some(object) = patch.as_object() else {
            return Err(InvalidField::new("body", "must be a JSON object"));
        };
        // What a GET answers and cannot be changed: sent back unchanged, it is accepted.
        let current = self.to_json(false);
        for fixed in ["type", "start"] {
            if object.get(fixed).is_some_and(|v| *v != current[fixed]) {
                return Err(InvalidField::new(fixed, "cannot change; create another destination"));
            }
        }
        let mut body = self.to_json(false);
        let merged = body.as_object_mut().expect("object");
        merged.remove("start");
        for (key, value) in object {
            if matches!(key.as_str(), "type" | "start" | "id" | "project_id" | "created_at" | "updated_at") {
                continue;
            }
            if key == "config" {
                let Some(changes) = value.as_object() else {
                    return Err(InvalidField::new("config", "must be an object"));
                };
                self.check_secrets_follow(changes)?;
                let mut config = self.config.to_json();
                for (k, v) in self.config.unmask(Value::Object(changes.clone())).as_object().expect("object") {
                    config[k] = v.clone();
                }
                merged.insert("config".into(), config);
            } else {
                merged.insert(key.clone(), value.clone());
            }
        }
        let mut spec = DestinationSpec::parse(&body)?;
        spec.start = self.start;
        Ok(spec)
    }

    /// A PATCH that moves the destination to another origin (scheme, host, port) must send its
    /// secrets again: the stored ones (a webhook secret, a write key, header values) were given
    /// for the old host and are never sent to a new one on the strength of a masked value.
    fn check_secrets_follow(&self, changes: &Map<String, Value>) -> Result<(), InvalidField> {
        let Some(new_url) = ["url", "host", "endpoint"].iter().find_map(|k| changes.get(*k)).and_then(Value::as_str) else {
            return Ok(());
        };
        let Ok(new_url) = reqwest::Url::parse(new_url) else { return Ok(()) };
        if new_url.origin() == self.config.url().origin() {
            return Ok(());
        }
        let stored = self.config.to_json();
        let resent = |v: Option<&Value>| v.and_then(Value::as_str).is_some_and(|v| v != MASK);
        for key in ["secret", "write_key"] {
            if stored.get(key).is_some_and(|v| !v.is_null()) && !resent(changes.get(key)) {
                return Err(InvalidField::new(format!("config.{key}"), "send it again: the destination moves to another host"));
            }
        }
        if let Some(headers) = stored["headers"].as_object() {
            for name in headers.keys() {
                if !resent(changes.get("headers").and_then(|h| h.get(name))) {
                    return Err(InvalidField::new(format!("config.headers.{name}"), "send it again: the destination moves to another host"));
                }
            }
        }
        Ok(())
    }

    /// The spec as JSON; `masked` for answers, unmasked for storage.
    pub fn to_json(&self, masked: bool) -> Value {
        json!({
            "name": self.name,
            "type": self.config.kind().as_str(),
            "enabled": self.enabled,
            "config": if masked { self.config.masked() } else { self.config.to_json() },
            "filter": self.filter,
            "transformations": self.transformations,
            "start": match self.start { Start::Now => "now", Start::Earliest => "earliest" },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn webhook(config: Value) -> Result<DestinationSpec, InvalidField> {
        DestinationSpec::parse(&json!({"name": "hook", "type": "webhook", "config": config}))
    }

    #[test]
    fn invalid_configs_name_their_field() {
        assert_eq!(webhook(json!({})).unwrap_err().field, "config.url");
        assert_eq!(webhook(json!({"url": "ftp://x"})).unwrap_err().field, "config.url");
        assert_eq!(webhook(json!({"url": "http://x", "secret": "abc"})).unwrap_err().field, "config.secret");
        assert_eq!(webhook(json!({"url": "http://x", "max_batch_events": 0})).unwrap_err().field, "config.max_batch_events");
        assert_eq!(webhook(json!({"url": "http://x", "headers": {"webhook-id": "x"}})).unwrap_err().field, "config.headers.webhook-id");
        assert_eq!(webhook(json!({"url": "http://x", "surprise": 1})).unwrap_err().field, "config.surprise");
        let e = DestinationSpec::parse(&json!({"name": "x", "type": "kafka", "config": {}})).unwrap_err();
        assert_eq!(e.field, "type");
        let e = DestinationSpec::parse(&json!({"name": "x", "type": "segment", "config": {"url": "https://api.segment.io"}})).unwrap_err();
        assert_eq!(e.field, "config.write_key");
        let e = DestinationSpec::parse(&json!({"name": "x", "type": "posthog", "config": {"host": "http://h", "project_token": "t"}, "start": "yesterday"})).unwrap_err();
        assert_eq!(e.field, "start");
    }

    #[test]
    fn secrets_are_masked_and_kept_through_a_patch() {
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let spec = webhook(json!({"url": "http://x/hook", "secret": secret, "headers": {"Authorization": "Bearer abc"}})).unwrap();
        let shown = spec.to_json(true);
        assert_eq!(shown["config"]["secret"], MASK);
        assert_eq!(shown["config"]["headers"]["Authorization"], MASK);
        assert!(!shown.to_string().contains("Bearer abc"));
        // Written back as read, with one change: the secrets stay.
        let patched = spec.patched(&json!({"enabled": false, "config": shown["config"]})).unwrap();
        assert!(!patched.enabled);
        assert_eq!(patched.config, spec.config);
        let moved = spec.patched(&json!({"config": {"url": "http://x/elsewhere"}})).unwrap();
        assert_eq!(moved.config.url().as_str(), "http://x/elsewhere");
        assert!(matches!(moved.config, DestinationConfig::Webhook { secret: Some(ref s), .. } if s == secret), "same host: secrets kept");
        // Another host: the secrets must come again, never follow on a masked value.
        assert_eq!(spec.patched(&json!({"config": {"url": "https://attacker.example/"}})).unwrap_err().field, "config.secret");
        let err = spec.patched(&json!({"config": {"url": "https://y/hook", "secret": secret}})).unwrap_err();
        assert_eq!(err.field, "config.headers.Authorization");
        let renamed = spec.patched(&json!({"config": {"url": "https://y/hook", "secret": secret, "headers": {"Authorization": "Bearer new"}}})).unwrap();
        assert_eq!(renamed.config.url().as_str(), "https://y/hook");
        assert_eq!(spec.patched(&json!({"type": "segment"})).unwrap_err().field, "type");
        assert_eq!(spec.patched(&json!({"start": "earliest"})).unwrap_err().field, "start");
        // A GET's answer sent back as it is (read-only members included) changes nothing.
        let mut read_back = shown.clone();
        read_back["id"] = json!(7);
        read_back["created_at"] = json!("2026-12-05T00:00:00Z");
        assert_eq!(spec.patched(&read_back).unwrap(), spec);
    }
}

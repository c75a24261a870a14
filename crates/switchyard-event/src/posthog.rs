//! PostHog's capture wire format (`/e`, `/i/v0/e`, `/batch`, `/capture`, `/track`, `/engage`)
//! into unified events. Follows PostHog's capture-rs: request shapes, token and distinct-id
//! extraction, error codes and messages.
//!
//! Events stay JSON text (see [`crate::raw`]): their properties are copied into the stored
//! event, and only the keys the mapping reads are parsed.

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt;

use chrono::{DateTime, Duration, Utc};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

use crate::error::Rejection;
use crate::json::ItemsCap;
use crate::model::{clean_id, format_time, id_string, new_event_id, parse_time, parse_traceparent, storable_time, EventType};
use crate::raw::{self, Entry, RawObject};
use crate::validate::{check_event_name, check_measured, EventLimits};
use crate::{Accepted, InvalidEvent, Normalized, RequestMeta};

/// A decoded capture request, before authentication. Its events borrow from the request body.
#[derive(Debug)]
pub struct CaptureRequest<'a> {
    /// The project token, from wherever PostHog accepts it.
    pub token: String,
    pub events: Vec<RawEvent<'a>>,
    pub sent_at: Option<DateTime<Utc>>,
    pub historical_migration: bool,
}

/// One event of a capture request, as JSON text.
#[derive(Debug)]
pub enum RawEvent<'a> {
    Object(EventObject<'a>),
    /// Not a JSON object: invalid, kept for the quarantine.
    NotObject(Value),
}

/// An event object: its top-level entries, and its `properties` parsed one level further.
#[derive(Debug)]
pub struct EventObject<'a> {
    /// Every top-level entry but `properties`.
    top: RawObject<'a>,
    properties: Properties<'a>,
}

#[derive(Debug)]
enum Properties<'a> {
    Absent,
    Null,
    Object(RawObject<'a>),
    NotObject(Value),
}

/// An event object as parsed: `properties` apart, the other entries as raw text.
struct EventParts<'a> {
    entries: Vec<Entry<'a>>,
    properties: Option<Parsed<Vec<Entry<'a>>>>,
}

/// A value wanted as an object (read as `T`), or any other value.
enum Parsed<T> {
    Object(T),
    Other(Value),
}

/// One element of an events array: an event object, or any other value.
type Item<'a> = Parsed<EventParts<'a>>;

/// How an object is read into `Parsed::Object`.
trait FromMap<'de>: Sized {
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error>;
}

impl<'de> FromMap<'de> for EventParts<'de> {
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        event_parts(map, None)
    }
}

impl<'de> FromMap<'de> for Vec<Entry<'de>> {
    fn from_map<A: MapAccess<'de>>(map: A) -> Result<Self, A::Error> {
        raw::entries(map)
    }
}

impl<'a> EventObject<'a> {
    /// Scans every value (see [`raw::scan`]).
    fn new(parts: EventParts<'a>) -> Result<Self, serde_json::Error> {
        let properties = match parts.properties {
            None => Properties::Absent,
            Some(Parsed::Other(Value::Null)) => Properties::Null,
            Some(Parsed::Other(value)) => Properties::NotObject(value),
            Some(Parsed::Object(entries)) => Properties::Object(RawObject::scanned(entries)?),
        };
        Ok(EventObject { top: RawObject::scanned(parts.entries)?, properties })
    }

    fn properties(&self) -> Option<&RawObject<'a>> {
        match &self.properties {
            Properties::Object(p) => Some(p),
            Properties::Absent | Properties::Null | Properties::NotObject(_) => None,
        }
    }

    /// The token an event carries itself (`token`, `$token`, `api_key`, `properties.token`).
    fn token(&self) -> Option<Cow<'a, str>> {
        ["token", "$token", "api_key"]
            .iter()
            .find_map(|k| self.top.str(k))
            .or_else(|| self.properties()?.str("token"))
            .filter(|t| !t.trim().is_empty())
    }

    /// The compact JSON size and nesting depth of the whole event (the object is level 1).
    fn measure(&self) -> (usize, usize) {
        let top = self.top.shape();
        let properties = match &self.properties {
            Properties::Absent => return (top.len, top.depth),
            Properties::Null => (4, 0),
            Properties::Object(p) => {
                let shape = p.shape();
                (shape.len, shape.depth)
            }
            Properties::NotObject(value) => crate::validate::measure(value),
        };
        let comma = usize::from(!self.top.is_empty());
        (top.len + "\"properties\":".len() + properties.0 + comma, top.depth.max(properties.1 + 1))
    }

    /// The event as JSON text, as it came (for the quarantine).
    fn to_json(&self) -> String {
        let properties = match &self.properties {
            Properties::Absent => None,
            Properties::Null => Some("null".to_owned()),
            Properties::Object(p) => Some(p.to_json()),
            Properties::NotObject(value) => Some(value.to_string()),
        };
        let mut out = Vec::with_capacity(self.top.shape().len + properties.as_ref().map_or(0, |p| p.len() + 16));
        out.push(b'{');
        let mut properties = properties.as_deref();
        let mut first = true;
        let mut separate = |out: &mut Vec<u8>| {
            if !std::mem::take(&mut first) {
                out.push(b',');
            }
        };
        for e in self.top.entries() {
            if e.key.as_ref() > "properties" {
                if let Some(p) = properties.take() {
                    separate(&mut out);
                    out.extend_from_slice(b"\"properties\":");
                    out.extend_from_slice(p.as_bytes());
                }
            }
            separate(&mut out);
            raw::write_key(&mut out, &e.key);
            out.push(b':');
            raw::write_raw(&mut out, e.raw, e.shape);
        }
        if let Some(p) = properties {
            separate(&mut out);
            out.extend_from_slice(b"\"properties\":");
            out.extend_from_slice(p.as_bytes());
        }
        out.push(b'}');
        String::from_utf8(out).expect("JSON text is UTF-8")
    }
}

/// Reads an event object's entries; `batch` (at a request's top level) is read with `batch`,
/// its events counted against the cap.
fn event_parts<'de, A: MapAccess<'de>>(
    mut map: A,
    mut batch: Option<(&mut Option<Option<Vec<Item<'de>>>>, ItemsCap<'_>)>,
) -> Result<EventParts<'de>, A::Error> {
    // Nothing reserved ahead: an empty object costs no allocation.
    let mut parts = EventParts { entries: Vec::new(), properties: None };
    while let Some(key) = map.next_key_seed(raw::KeySeed)? {
        match key.as_ref() {
            // A repeated key keeps its last value.
            "properties" => parts.properties = Some(map.next_value_seed(ParsedSeed::new())?),
            "batch" if batch.is_some() => {
                if let Some((batch, cap)) = batch.as_mut() {
                    **batch = Some(map.next_value_seed(BatchSeed(*cap))?);
                }
            }
            _ => parts.entries.push(Entry::unscanned(key, map.next_value::<&'de RawValue>()?)),
        }
    }
    Ok(parts)
}

/// Any value; an object read as `T`.
struct ParsedSeed<T>(std::marker::PhantomData<T>);

impl<T> ParsedSeed<T> {
    fn new() -> Self {
        ParsedSeed(std::marker::PhantomData)
    }
}

impl<'de, T: FromMap<'de>> DeserializeSeed<'de> for ParsedSeed<T> {
    type Value = Parsed<T>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Parsed<T>, D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de, T: FromMap<'de>> Visitor<'de> for ParsedSeed<T> {
    type Value = Parsed<T>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Parsed<T>, A::Error> {
        T::from_map(map).map(Parsed::Object)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Parsed<T>, A::Error> {
        crate::json::VALUE_VISITOR.visit_seq(seq).map(Parsed::Other)
    }
    fn visit_bool<E>(self, v: bool) -> Result<Parsed<T>, E> {
        Ok(Parsed::Other(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Parsed<T>, E> {
        Ok(Parsed::Other(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Parsed<T>, E> {
        Ok(Parsed::Other(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Parsed<T>, E> {
        Ok(Parsed::Other(serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Parsed<T>, E> {
        Ok(Parsed::Other(Value::String(v.to_owned())))
    }
    fn visit_unit<E>(self) -> Result<Parsed<T>, E> {
        Ok(Parsed::Other(Value::Null))
    }
}

/// An events array, or `None` for any other value.
struct BatchSeed<'c>(ItemsCap<'c>);

impl<'de> DeserializeSeed<'de> for BatchSeed<'_> {
    type Value = Option<Vec<Item<'de>>>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_any(BatchVisitor(self.0))
    }
}

/// Events are counted as they are read: the first one past the cap fails the parse before it
/// is built.
struct BatchVisitor<'c>(ItemsCap<'c>);

impl<'de> Visitor<'de> for BatchVisitor<'_> {
    type Value = Option<Vec<Item<'de>>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of events")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::new();
        loop {
            self.0.check(items.len(), &mut seq)?;
            match seq.next_element_seed(ParsedSeed::new())? {
                Some(item) => items.push(item),
                None => return Ok(Some(items)),
            }
        }
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
        Ok(None)
    }
    fn visit_bool<E>(self, _: bool) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_str<E>(self, _: &str) -> Result<Self::Value, E> {
        Ok(None)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(None)
    }
}

/// A request body: an events array, or an object (a batch if it has `batch`, else one event).
enum Top<'a> {
    Array(Vec<Item<'a>>),
    Object { batch: Option<Option<Vec<Item<'a>>>>, parts: EventParts<'a> },
    Other,
}

struct TopVisitor<'c>(ItemsCap<'c>);

impl<'de> Visitor<'de> for TopVisitor<'_> {
    type Value = Top<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object, an array of events or a batch")
    }
    fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Top<'de>, A::Error> {
        Ok(Top::Array(BatchVisitor(self.0).visit_seq(seq)?.unwrap_or_default()))
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Top<'de>, A::Error> {
        let mut batch = None;
        let parts = event_parts(map, Some((&mut batch, self.0)))?;
        Ok(Top::Object { batch, parts })
    }
    fn visit_bool<E>(self, _: bool) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
    fn visit_i64<E>(self, _: i64) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
    fn visit_str<E>(self, _: &str) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
    fn visit_unit<E>(self) -> Result<Top<'de>, E> {
        Ok(Top::Other)
    }
}

fn invalid_json(e: impl fmt::Display) -> Rejection {
    Rejection::parsing(format!("invalid JSON: {e}"))
}

fn raw_events(items: Vec<Item<'_>>) -> Result<Vec<RawEvent<'_>>, serde_json::Error> {
    items
        .into_iter()
        .map(|item| match item {
            Parsed::Object(parts) => EventObject::new(parts).map(RawEvent::Object),
            Parsed::Other(value) => Ok(RawEvent::NotObject(value)),
        })
        .collect()
}

/// Parses the JSON of a capture request: an array of events (posthog-js), a batch
/// `{batch, api_key|token, historical_migration, sent_at|sentAt}`, or one event. A request of
/// more than `limits.max_events_per_request` events is refused as soon as the parser reaches
/// the first one past it.
pub fn parse_capture_request<'a>(
    json: &'a [u8],
    query_sent_at_ms: Option<i64>,
    limits: &EventLimits,
) -> Result<CaptureRequest<'a>, Rejection> {
    let text = std::str::from_utf8(json).map_err(invalid_json)?;
    let exceeded = Cell::new(false);
    let cap = ItemsCap { max: limits.max_events_per_request, exceeded: &exceeded };
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let top = deserializer.deserialize_any(TopVisitor(cap)).map_err(|e| {
        if exceeded.get() {
            Rejection::too_many_events(limits.max_events_per_request)
        } else {
            invalid_json(e)
        }
    })?;
    deserializer.end().map_err(invalid_json)?;
    let (events, batch_token, sent_at, historical) = match top {
        Top::Array(items) => (raw_events(items).map_err(invalid_json)?, None, None, false),
        Top::Object { batch: Some(batch), parts } => {
            let Some(items) = batch else {
                return Err(Rejection::parsing("`batch` must be an array of events".into()));
            };
            let fields = EventObject::new(parts).map_err(invalid_json)?.top;
            let token = ["api_key", "token"]
                .iter()
                .find_map(|k| fields.str(k))
                .filter(|t| !t.trim().is_empty())
                .map(Cow::into_owned);
            let sent_at = ["sent_at", "sentAt"].iter().find_map(|k| fields.str(k)).and_then(|s| parse_time(&s));
            let historical = fields.get("historical_migration").is_some_and(|v| v.get() == "true");
            (raw_events(items).map_err(invalid_json)?, token, sent_at, historical)
        }
        Top::Object { batch: None, parts } => {
            (vec![RawEvent::Object(EventObject::new(parts).map_err(invalid_json)?)], None, None, false)
        }
        Top::Other => {
            return Err(Rejection::parsing("expected a JSON object, an array of events or a batch".into()))
        }
    };
    if events.is_empty() {
        return Err(Rejection::empty_batch());
    }
    let token = match batch_token {
        Some(token) => token,
        None => {
            let mut found: Option<Cow<'_, str>> = None;
            for event in &events {
                let RawEvent::Object(event) = event else { continue };
                if let Some(t) = event.token() {
                    match &found {
                        None => found = Some(t),
                        Some(prev) if *prev != t => {
                            return Err(Rejection::new(
                                400,
                                "unroutable_events",
                                "batch submitted with inconsistent api_key values",
                            ))
                        }
                        Some(_) => {}
                    }
                }
            }
            found.map(Cow::into_owned).ok_or_else(|| {
                Rejection::new(401, "ingest_key_required", "event submitted without an api_key")
            })?
        }
    };
    let token = token.trim().to_owned();
    validate_token(&token)?;
    let sent_at = sent_at.or_else(|| query_sent_at_ms.and_then(DateTime::from_timestamp_millis));
    Ok(CaptureRequest { token, events, sent_at, historical_migration: historical })
}

/// PostHog's token checks: not empty, at most 64 ASCII characters, no NUL, not a personal key.
pub fn validate_token(token: &str) -> Result<(), Rejection> {
    let problem = if token.is_empty() {
        "empty"
    } else if token.len() > 64 {
        "too_long"
    } else if !token.is_ascii() {
        "not_ascii"
    } else if token.contains('\0') {
        "null_byte"
    } else if token.starts_with("phx_") {
        "personal_api_key"
    } else {
        return Ok(());
    };
    Err(Rejection::new(401, "ingest_key_invalid", format!("API key is not valid: {problem}")))
}

/// Per-request context for normalizing PostHog events.
pub struct PosthogContext<'a> {
    pub meta: &'a RequestMeta,
    pub sent_at: Option<DateTime<Utc>>,
    pub historical_migration: bool,
    /// `/engage`: an event without a name is an `$identify`.
    pub engage: bool,
    pub limits: &'a EventLimits,
}

/// Normalizes every event of a request; invalid ones are returned with their reason.
pub fn normalize(events: Vec<RawEvent<'_>>, ctx: &PosthogContext<'_>) -> Normalized {
    let mut out = Normalized::default();
    out.accepted.reserve(events.len());
    let received_at = format_time(ctx.meta.received_at);
    let sent_at = ctx.sent_at.map(format_time);
    for (index, event) in events.into_iter().enumerate() {
        match event {
            RawEvent::NotObject(value) => out.invalid.push(InvalidEvent {
                index,
                rejection: Rejection::parsing("event is not a JSON object".into()),
                raw: value.to_string(),
            }),
            RawEvent::Object(event) => match check_event(&event, ctx) {
                Ok(checked) => out.accepted.push(build_event(event, checked, ctx, &received_at, sent_at.as_deref())),
                Err(rejection) => out.invalid.push(InvalidEvent { index, rejection, raw: event.to_json() }),
            },
        }
    }
    out
}

/// Removes `key` from `map` if it holds an object, and returns that object's entries; any
/// other value stays where it is rather than be lost.
fn take_object<'a>(map: &mut RawObject<'a>, key: &str) -> Vec<Entry<'a>> {
    match map.get(key).map(RawObject::parse) {
        Some(Ok(Some(object))) => {
            map.remove(key);
            object.into_entries()
        }
        _ => Vec::new(),
    }
}

/// Removes `key` from `map` if it holds a string, and returns it; any other value stays.
fn take_str(map: &mut RawObject<'_>, key: &str) -> Option<String> {
    let s = map.str(key)?.into_owned();
    map.remove(key);
    Some(s)
}

/// Top-level fields the mapping consumes; every other one is kept in `extra`.
fn top_level_known(key: &str) -> bool {
    matches!(
        key,
        "event" | "uuid" | "distinct_id" | "$distinct_id" | "properties" | "timestamp" | "$set" | "$set_once" | "token" | "$token" | "api_key"
    )
}

/// What validation established about an event, before it is taken apart.
struct Checked {
    event_name: String,
    distinct_id: String,
    id: String,
    timestamp: DateTime<Utc>,
    original_timestamp: Option<String>,
}

fn check_event(event: &EventObject<'_>, ctx: &PosthogContext<'_>) -> Result<Checked, Rejection> {
    let obj = &event.top;
    let properties = match &event.properties {
        Properties::Absent | Properties::Null => None,
        Properties::Object(p) => Some(p),
        Properties::NotObject(_) => return Err(Rejection::parsing("`properties` must be an object".into())),
    };
    let (size, depth) = event.measure();
    check_measured(size, depth, properties.map_or(0, RawObject::len), ctx.limits)?;

    let event_name = match obj.str("event").filter(|e| !e.is_empty()) {
        Some(name) => name.into_owned(),
        None if ctx.engage && !obj.contains_key("event") => "$identify".to_owned(),
        None if obj.contains_key("event") => return Err(Rejection::missing_event_name()),
        None => {
            return Err(Rejection::new(
                400,
                "request_hydration_error",
                "failed to hydrate events from request: non-engage request missing event name attribute",
            ))
        }
    };
    check_event_name(&event_name, ctx.limits)?;

    let distinct_id = raw_id_string(obj.get("distinct_id").or_else(|| obj.get("$distinct_id")))
        .or_else(|| raw_id_string(properties.and_then(|p| p.get("distinct_id"))))
        .ok_or_else(Rejection::missing_distinct_id)?;

    let id = match obj.get("uuid") {
        None => new_event_id(),
        Some(uuid) => match raw::as_str(uuid) {
            None if uuid.get() == "null" => new_event_id(),
            Some(s) if s.is_empty() => new_event_id(),
            Some(s) => uuid::Uuid::parse_str(&s)
                .map_err(|_| Rejection::new(400, "invalid_uuid", format!("event uuid {s:?} is not a UUID")))?
                .to_string(),
            None => {
                return Err(Rejection::new(400, "invalid_uuid", format!("event uuid {} is not a UUID", uuid.get())))
            }
        },
    };

    let property = |key: &str| properties.and_then(|p| p.get(key)).map(RawValue::get);
    if let Some(mode) = property("$cookieless_mode") {
        if mode != "true" && mode != "false" {
            return Err(Rejection::new(400, "invalid_cookieless_mode", "$cookieless_mode must be a boolean"));
        }
    }

    let original_timestamp = obj.str("timestamp").map(Cow::into_owned);
    let offset_ms = obj.value("offset").and_then(|v| v.as_i64());
    let ignore_sent_at = property("$ignore_sent_at") == Some("true");
    let timestamp = posthog_timestamp(
        ctx.meta.received_at,
        original_timestamp.as_deref(),
        if ignore_sent_at { None } else { ctx.sent_at },
        offset_ms,
    )?;
    Ok(Checked { event_name, distinct_id, id, timestamp, original_timestamp })
}

/// A raw value as PostHog's capture takes an id: a string as sent (only an empty one is missing),
/// other JSON as [`id_string`] has it.
fn raw_id_string(raw: Option<&RawValue>) -> Option<String> {
    let raw = raw?;
    match raw::as_str(raw) {
        Some(s) => clean_id(&s),
        None => id_string(Some(&raw::to_value(raw))),
    }
}

/// `true`, as a raw value.
fn raw_true() -> &'static RawValue {
    serde_json::from_str("true").expect("`true` is JSON")
}

fn build_event(
    event: EventObject<'_>,
    checked: Checked,
    ctx: &PosthogContext<'_>,
    received_at: &str,
    sent_at: Option<&str>,
) -> Accepted {
    let EventObject { top: mut obj, properties } = event;
    let mut properties = match properties {
        Properties::Object(p) => p,
        Properties::Absent | Properties::Null | Properties::NotObject(_) => RawObject::default(),
    };
    // Person updates may come top-level (posthog-js, python) or inside properties (node);
    // the top-level ones win.
    let mut traits = take_object(&mut properties, "$set");
    let mut traits_set_once = take_object(&mut properties, "$set_once");
    traits.extend(take_object(&mut obj, "$set"));
    traits_set_once.extend(take_object(&mut obj, "$set_once"));
    let groups = RawObject::from_entries(take_object(&mut properties, "$groups"));
    // Segment's fields, which PostHog clients never send at top level: where a forwarding
    // Switchyard (`switchyard-pipeline`'s `wire`) puts them. Read when of their type, else kept
    // in `extra`.
    let user_id = take_str(&mut obj, "user_id").and_then(|s| clean_id(&s));
    let context = RawObject::from_entries(take_object(&mut obj, "context"));
    let category = take_str(&mut obj, "category");

    let mut kind = match checked.event_name.as_str() {
        "$identify" | "$set" => EventType::Identify,
        "$create_alias" | "$merge_dangerously" => EventType::Alias,
        "$groupidentify" => EventType::Group,
        "$pageview" => EventType::Page,
        "$screen" => EventType::Screen,
        _ => EventType::Track,
    };
    let mut anonymous_id = None;
    let mut previous_id = None;
    let mut group_type = None;
    let mut group_id = None;
    let mut name = None;
    let remove_id = |properties: &mut RawObject<'_>, key: &str| {
        properties.remove(key).and_then(|e| raw_id_string(Some(e.raw)))
    };
    match kind {
        EventType::Identify => {
            if let Some(anon) = properties.str("$anon_distinct_id") {
                anonymous_id = Some(anon.into_owned());
                properties.remove("$anon_distinct_id");
            }
        }
        EventType::Alias => match properties.contains_key("alias") {
            true => previous_id = remove_id(&mut properties, "alias"),
            false => kind = EventType::Track,
        },
        EventType::Group => {
            group_type = remove_id(&mut properties, "$group_type");
            group_id = remove_id(&mut properties, "$group_key");
            traits.extend(take_object(&mut properties, "$group_set"));
        }
        // A forwarded screen names itself at top level when its name is not its `$screen_name`,
        // or when the mapping added that `$screen_name` (then equal to it, and dropped again).
        EventType::Screen => match obj.get("name") {
            Some(raw) if raw.get() == "null" => {
                obj.remove("name");
            }
            Some(raw) if raw::as_str(raw).is_some() => {
                name = take_str(&mut obj, "name");
                if properties.str("$screen_name").as_deref() == name.as_deref() {
                    properties.remove("$screen_name");
                }
            }
            _ => name = properties.str("$screen_name").map(Cow::into_owned),
        },
        EventType::Page | EventType::Track => {}
    }
    if kind != EventType::Screen {
        name = take_str(&mut obj, "name");
    }
    if anonymous_id.is_none() {
        anonymous_id = take_str(&mut obj, "anonymous_id").and_then(|s| clean_id(&s));
    }
    let traits = RawObject::from_entries(traits);
    let traits_set_once = RawObject::from_entries(traits_set_once);

    // Trace and span ids: `properties.trace_id`/`span_id`, else `context.traceparent` (a
    // forwarded Segment event's), else the `traceparent` header.
    let span = properties.str("span_id").map(Cow::into_owned);
    let context_traceparent = context.str("traceparent");
    // PostHog's LLM events name their run `$ai_trace_id` (hex ids lowercased, so an OTel
    // trace id and a wrapper's spelling of it meet).
    let ai_trace = || {
        properties.str("$ai_trace_id").filter(|t| !t.is_empty()).map(|t| {
            if t.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
                t.to_ascii_lowercase()
            } else {
                t.into_owned()
            }
        })
    };
    let (trace_id, span_id) = match properties.str("trace_id").map(Cow::into_owned).or_else(ai_trace) {
        Some(trace) => (Some(trace), span),
        None => match [context_traceparent.as_deref(), ctx.meta.traceparent.as_deref()]
            .into_iter()
            .flatten()
            .find_map(parse_traceparent)
        {
            Some((trace, header_span)) => (Some(trace), span.or(Some(header_span))),
            None => (None, span),
        },
    };

    obj.retain(|key| !top_level_known(key));
    if ctx.historical_migration {
        let raw = raw_true();
        obj.insert(Entry { key: Cow::Borrowed("historical_migration"), raw, shape: raw::scan(raw).expect("`true` scans") });
    }
    let extra = obj;

    let updates_persons = crate::updates_persons(
        kind,
        !traits.is_empty() || !traits_set_once.is_empty(),
        properties.contains_key("$unset"),
    );
    let group_types = groups.entries().iter().map(|e| e.key.clone().into_owned()).collect();
    let timestamp = format_time(checked.timestamp);

    // The unified event (`Event`) in its stored form, written field by field in its serialized order.
    let mut out = Vec::with_capacity(
        properties.shape().len + traits.shape().len + context.shape().len + extra.shape().len + 512,
    );
    // A string member, left out when absent.
    let opt = |out: &mut Vec<u8>, name: &str, value: Option<&str>| {
        if let Some(value) = value {
            out.extend_from_slice(b",\"");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b"\":");
            raw::write_str(out, value);
        }
    };
    // The members kept as columns (`stored::COLUMN_MEMBERS`) are left out.
    out.extend_from_slice(b"{\"protocol\":\"posthog\"");
    // Members at their default (`null`, `{}`) are left out too (`stored::DEFAULT_MEMBERS`).
    opt(&mut out, "user_id", user_id.as_deref());
    opt(&mut out, "anonymous_id", anonymous_id.as_deref());
    out.extend_from_slice(b",\"properties\":");
    properties.write(&mut out);
    if !traits.is_empty() {
        out.extend_from_slice(b",\"traits\":");
        traits.write(&mut out);
    }
    if !traits_set_once.is_empty() {
        out.extend_from_slice(b",\"traits_set_once\":");
        traits_set_once.write(&mut out);
    }
    if !context.is_empty() {
        out.extend_from_slice(b",\"context\":");
        context.write(&mut out);
    }
    if !groups.is_empty() {
        out.extend_from_slice(b",\"groups\":");
        groups.write(&mut out);
    }
    opt(&mut out, "group_type", group_type.as_deref());
    opt(&mut out, "group_id", group_id.as_deref());
    opt(&mut out, "previous_id", previous_id.as_deref());
    opt(&mut out, "name", name.as_deref());
    opt(&mut out, "category", category.as_deref());
    opt(&mut out, "original_timestamp", checked.original_timestamp.as_deref());
    opt(&mut out, "sent_at", sent_at);
    opt(&mut out, "span_id", span_id.as_deref());
    opt(&mut out, "request_ip", ctx.meta.ip.as_deref());
    if !extra.is_empty() {
        out.extend_from_slice(b",\"extra\":");
        extra.write(&mut out);
    }
    out.push(b'}');

    Accepted {
        id: checked.id,
        project_id: ctx.meta.project_id,
        kind,
        event: checked.event_name,
        distinct_id: checked.distinct_id,
        trace_id,
        timestamp,
        received_at: received_at.to_owned(),
        body: String::from_utf8(out).expect("JSON text is UTF-8"),
        updates_persons,
        group_types,
    }
}

/// PostHog's rule (plugin-server `timestamps.ts`): with both `timestamp` and `sent_at`,
/// `now + (timestamp - sent_at)`; else `timestamp`; else `now - offset`; else `now`.
pub fn posthog_timestamp(
    now: DateTime<Utc>,
    timestamp: Option<&str>,
    sent_at: Option<DateTime<Utc>>,
    offset_ms: Option<i64>,
) -> Result<DateTime<Utc>, Rejection> {
    if let Some(ts) = timestamp {
        let invalid = || {
            Rejection::new(400, "invalid_timestamp", format!("event timestamp {ts:?} is not a valid date"))
        };
        let parsed = parse_time(ts).ok_or_else(invalid)?;
        return match sent_at {
            // Dates far apart enough to overflow are not real clock skew.
            Some(sent_at) => now.checked_add_signed(parsed - sent_at).filter(storable_time).ok_or_else(invalid),
            None => Ok(parsed),
        };
    }
    if let Some(offset) = offset_ms {
        return Duration::try_milliseconds(offset)
            .and_then(|offset| now.checked_sub_signed(offset))
            .filter(storable_time)
            .ok_or_else(|| Rejection::new(400, "invalid_timestamp", format!("event offset {offset} is out of range")));
    }
    Ok(now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Event;
    use serde_json::json;

    fn meta() -> RequestMeta {
        RequestMeta {
            project_id: 1,
            received_at: parse_time("2026-11-25T12:00:10Z").unwrap(),
            traceparent: None,
            ip: Some("203.0.113.7".into()),
        }
    }

    fn one(raw: Value, sent_at: Option<&str>) -> Result<Event, Rejection> {
        let meta = meta();
        let ctx = PosthogContext {
            meta: &meta,
            sent_at: sent_at.and_then(parse_time),
            historical_migration: false,
            engage: false,
            limits: &EventLimits::default(),
        };
        let text = raw.to_string();
        let mut deserializer = serde_json::Deserializer::from_str(&text);
        let event = match ParsedSeed::new().deserialize(&mut deserializer).unwrap() {
            Parsed::Object(parts) => RawEvent::Object(EventObject::new(parts).unwrap()),
            Parsed::Other(value) => RawEvent::NotObject(value),
        };
        let mut out = normalize(vec![event], &ctx);
        match out.accepted.pop() {
            Some(accepted) => {
                let event: Event = serde_json::from_str(&accepted.event_json()).expect("stored bodies read back");
                assert_eq!((accepted.id.as_str(), accepted.kind), (event.id.as_str(), event.kind));
                assert_eq!(accepted.timestamp, event.timestamp);
                assert_eq!(accepted.trace_id, event.trace_id);
                Ok(event)
            }
            None => Err(out.invalid.pop().unwrap().rejection),
        }
    }

    #[test]
    fn clock_skew_is_corrected_from_sent_at() {
        // The client clock is 5 s behind: it says sent at 12:00:05, the server got it at 12:00:10.
        let e = one(
            json!({"event": "tool_used", "distinct_id": "u", "timestamp": "2026-11-25T12:00:04Z"}),
            Some("2026-11-25T12:00:05Z"),
        )
        .unwrap();
        assert_eq!(e.timestamp, "2026-11-25T12:00:09.000000Z");
        assert_eq!(e.original_timestamp.as_deref(), Some("2026-11-25T12:00:04Z"));
    }

    #[test]
    fn absurd_dates_are_rejected_not_panicked_on() {
        let e = one(
            json!({"event": "x", "distinct_id": "u", "timestamp": "9999-12-31T23:59:59Z"}),
            Some("0001-01-01T00:00:00Z"),
        )
        .unwrap_err();
        assert_eq!(e.code, "invalid_timestamp");
        let err = one(json!({"event": "x", "distinct_id": "u", "offset": i64::MIN}), None).unwrap_err();
        assert_eq!(err.code, "invalid_timestamp");
    }

    #[test]
    fn offset_without_timestamp() {
        let e = one(json!({"event": "x", "distinct_id": "u", "offset": 2000}), None).unwrap();
        assert_eq!(e.timestamp, "2026-11-25T12:00:08.000000Z");
    }

    #[test]
    fn distinct_id_forms() {
        let e = one(json!({"event": "x", "distinct_id": 23}), None).unwrap();
        assert_eq!(e.distinct_id, "23");
        let e = one(json!({"event": "x", "properties": {"distinct_id": "p"}}), None).unwrap();
        assert_eq!(e.distinct_id, "p");
        let err = one(json!({"event": "x", "distinct_id": ""}), None).unwrap_err();
        assert_eq!(err.code, "missing_distinct_id");
        // As PostHog's capture: strings as sent, spaces and all.
        let e = one(json!({"event": "x", "distinct_id": " user_1 "}), None).unwrap();
        assert_eq!(e.distinct_id, " user_1 ");
    }

    #[test]
    fn tokens_must_agree() {
        let body = json!([{"event": "a", "properties": {"token": "phc_a"}},
                          {"event": "b", "properties": {"token": "phc_b"}}]);
        let err = parse_capture_request(body.to_string().as_bytes(), None, &EventLimits::default()).unwrap_err();
        assert_eq!(err.code, "unroutable_events");
        let body = json!({"event": "a", "api_key": "phx_personal"});
        let err = parse_capture_request(body.to_string().as_bytes(), None, &EventLimits::default()).unwrap_err();
        assert_eq!(err.status, 401);
    }

    #[test]
    fn alias_and_group_map_onto_segment_fields() {
        let e = one(
            json!({"event": "$create_alias", "distinct_id": "anon_1",
                   "properties": {"distinct_id": "anon_1", "alias": "user_42"}}),
            None,
        )
        .unwrap();
        assert_eq!((e.kind, e.previous_id.as_deref()), (EventType::Alias, Some("user_42")));
        let e = one(
            json!({"event": "$groupidentify", "distinct_id": "$workspace_ws_1",
                   "properties": {"$group_type": "workspace", "$group_key": "ws_1",
                                  "$group_set": {"name": "Acme"}}}),
            None,
        )
        .unwrap();
        assert_eq!(e.kind, EventType::Group);
        assert_eq!(e.group_type.as_deref(), Some("workspace"));
        assert_eq!(e.group_id.as_deref(), Some("ws_1"));
        assert_eq!(e.traits["name"], "Acme");
    }

    #[test]
    fn segment_fields_sent_at_top_level_are_read_into_the_unified_event() {
        // What a forwarding Switchyard sends for a Segment page: ids, `context`, name, category.
        let e = one(
            json!({"event": "$pageview", "distinct_id": "user_1", "user_id": "user_1", "anonymous_id": "anon_9",
                   "context": {"ip": "198.51.100.9", "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"},
                   "name": "Flows", "category": "App", "properties": {"path": "/flows"}, "channel": "server"}),
            None,
        )
        .unwrap();
        assert_eq!((e.user_id.as_deref(), e.anonymous_id.as_deref()), (Some("user_1"), Some("anon_9")));
        assert_eq!((e.name.as_deref(), e.category.as_deref()), (Some("Flows"), Some("App")));
        assert_eq!(e.context["ip"], "198.51.100.9");
        assert_eq!(e.trace_id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"), "from context.traceparent");
        assert_eq!(e.span_id.as_deref(), Some("00f067aa0ba902b7"));
        assert_eq!(Value::Object(e.extra), json!({"channel": "server"}));
        // Members not of their field's type stay in `extra`, as before.
        let e = one(json!({"event": "x", "distinct_id": "u", "user_id": 7, "context": "c", "name": ["n"], "category": null}), None)
            .unwrap();
        assert_eq!((e.user_id, e.name, e.category, e.context.len()), (None, None, None, 0));
        assert_eq!(Value::Object(e.extra), json!({"user_id": 7, "context": "c", "name": ["n"], "category": null}));
        // An identify's anonymous id is `$anon_distinct_id`; a top-level one besides is kept.
        let e = one(
            json!({"event": "$identify", "distinct_id": "u", "anonymous_id": "a_top", "properties": {"$anon_distinct_id": "a_1"}}),
            None,
        )
        .unwrap();
        assert_eq!((e.anonymous_id.as_deref(), &e.extra["anonymous_id"]), (Some("a_1"), &json!("a_top")));
        let e = one(json!({"event": "$identify", "distinct_id": "u", "anonymous_id": "a_top"}), None).unwrap();
        assert_eq!((e.anonymous_id.as_deref(), e.extra.len()), (Some("a_top"), 0));
    }

    #[test]
    fn a_screens_top_level_name_wins_and_drops_the_screen_name_the_mapping_added() {
        let screen = |top: Option<Value>, screen_name: Option<&str>| {
            let mut raw = json!({"event": "$screen", "distinct_id": "u", "properties": {"k": 1}});
            if let Some(top) = top {
                raw["name"] = top;
            }
            if let Some(s) = screen_name {
                raw["properties"]["$screen_name"] = json!(s);
            }
            let e = one(raw, None).unwrap();
            assert!(e.extra.is_empty(), "{:?}", e.extra);
            (e.name, e.properties.get("$screen_name").cloned())
        };
        // As PostHog clients send it: the name is `$screen_name`, which stays.
        assert_eq!(screen(None, Some("Flows")), (Some("Flows".into()), Some(json!("Flows"))));
        // Added by the mapping (equal to the top-level name): dropped.
        assert_eq!(screen(Some(json!("Settings")), Some("Settings")), (Some("Settings".into()), None));
        // The event's own, differing from its name: kept.
        assert_eq!(screen(Some(json!("Settings")), Some("Other")), (Some("Settings".into()), Some(json!("Other"))));
        // A screen without a name but with a `$screen_name` property.
        assert_eq!(screen(Some(Value::Null), Some("Other")), (None, Some(json!("Other"))));
    }

    fn request(text: &str, historical_migration: bool) -> Normalized {
        let meta = RequestMeta { traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()), ..meta() };
        let request = parse_capture_request(text.as_bytes(), None, &EventLimits::default()).unwrap();
        let ctx = PosthogContext {
            meta: &meta,
            sent_at: request.sent_at,
            historical_migration,
            engage: false,
            limits: &EventLimits::default(),
        };
        normalize(request.events, &ctx)
    }

    #[test]
    fn stored_body_is_the_unified_event_serialized() {
        // Python's spacing, repeated keys (the last wins, as with `Value`), escapes, nesting,
        // `$set` in both places (top-level wins), a `$set` that is not an object (kept).
        let text = r#"{"api_key": "phc_x", "batch": [
            {"event": "tool_used", "distinct_id": "u_1", "uuid": "0190b2a1-0000-7000-8000-000000000001",
             "properties": {"tool": "web_search", "tool": "sql", "nested": {"a": [1, 2.50, {"b": null}], "z": "\u00e9\"q"},
                            "$set": {"plan": "free", "seats": 1}, "$set_once": "not an object",
                            "$groups": {"workspace": "ws_1"}, "span_id": "s1", "big": 1e300, "k\"ey": true},
             "$set": {"plan": "pro"}, "timestamp": "2026-11-25T12:00:04Z", "channel": "server", "offset": 5},
            {"event": "$pageview", "distinct_id": 7, "properties": null}
        ], "sent_at": "2026-11-25T12:00:05Z"}"#;
        let out = request(text, true);
        assert!(out.invalid.is_empty(), "{:?}", out.invalid);
        let first = &out.accepted[0];
        let stored: Value = serde_json::from_str(&first.event_json()).unwrap();
        assert_eq!(
            stored,
            json!({
                "id": "0190b2a1-0000-7000-8000-000000000001", "project_id": 1, "protocol": "posthog",
                "type": "track", "event": "tool_used", "distinct_id": "u_1", "user_id": null, "anonymous_id": null,
                "properties": {"tool": "sql", "nested": {"a": [1, 2.5, {"b": null}], "z": "é\"q"},
                               "$set_once": "not an object", "span_id": "s1", "big": 1e300, "k\"ey": true},
                "traits": {"plan": "pro", "seats": 1}, "context": {}, "groups": {"workspace": "ws_1"},
                "timestamp": "2026-11-25T12:00:09.000000Z", "original_timestamp": "2026-11-25T12:00:04Z",
                "sent_at": "2026-11-25T12:00:05.000000Z", "received_at": "2026-11-25T12:00:10.000000Z",
                "trace_id": "0af7651916cd43dd8448eb211c80319c", "span_id": "s1", "request_ip": "203.0.113.7",
                "extra": {"channel": "server", "offset": 5, "historical_migration": true}
            })
        );
        // Compact, in `Event`'s own serialized form, the column members only in the columns.
        let event: Event = serde_json::from_str(&first.event_json()).unwrap();
        assert_eq!(serde_json::to_value(&event).unwrap(), stored);
        assert!(!first.body.contains(": ") && !first.body.contains(", "), "{}", first.body);
        let body: Value = serde_json::from_str(&first.body).unwrap();
        let members: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert!(members.iter().all(|m| !crate::stored::COLUMN_MEMBERS.contains(&m.as_str())), "{members:?}");
        let defaults = crate::stored::DEFAULT_MEMBERS.iter().filter(|(name, _)| !members.contains(&&name.to_string())).count();
        assert_eq!(defaults, 3, "user_id, anonymous_id and context are at their default: {members:?}");
        assert_eq!(members.len() + crate::stored::COLUMN_MEMBERS.len() + defaults, stored.as_object().unwrap().len());
        assert_eq!((first.updates_persons, first.group_types.clone()), (true, vec!["workspace".to_owned()]));
        // The stored form is the one `Accepted::from_event` (the Segment path's) makes.
        let second = &out.accepted[1];
        let event: Event = serde_json::from_str(&second.event_json()).unwrap();
        let from_event = crate::Accepted::from_event(event.clone());
        assert_eq!(serde_json::from_str::<Value>(&from_event.body).unwrap(), serde_json::from_str::<Value>(&second.body).unwrap());
        assert_eq!(from_event.event_json().len(), second.event_json().len());
        assert_eq!((event.kind, event.distinct_id.as_str(), second.updates_persons), (EventType::Page, "7", false));
    }

    #[test]
    fn invalid_events_are_quarantined_as_sent() {
        let text = r#"[{"event": "a", "properties": {"token": "phc_x", "n": [1, {"m": 2}]}, "z": 1},
                       "not an event", {"event": "b", "distinct_id": "u", "properties": [1], "token": "phc_x"}]"#;
        let out = request(text, false);
        assert!(out.accepted.is_empty());
        let reasons: Vec<(usize, &str)> = out.invalid.iter().map(|i| (i.index, i.rejection.code)).collect();
        assert_eq!(reasons, [(0, "missing_distinct_id"), (1, "request_parsing_error"), (2, "request_parsing_error")]);
        let sent: Vec<Value> = serde_json::from_str(text).unwrap();
        for invalid in &out.invalid {
            assert_eq!(serde_json::from_str::<Value>(&invalid.raw).unwrap(), sent[invalid.index]);
        }
    }

    #[test]
    fn a_request_past_the_events_cap_is_refused() {
        let limits = EventLimits { max_events_per_request: 3, ..Default::default() };
        let events = |n: usize| vec![r#"{"event":"e","distinct_id":"u","api_key":"phc_x"}"#; n].join(",");
        for (body, n) in [(format!("[{}]", events(3)), 3), (format!(r#"{{"api_key":"phc_x","batch":[{}]}}"#, events(3)), 3)] {
            assert_eq!(parse_capture_request(body.as_bytes(), None, &limits).unwrap().events.len(), n);
        }
        for body in [format!("[{}]", events(4)), format!(r#"{{"api_key":"phc_x","batch":[{}]}}"#, events(4)), "[{},{},{},{}]".into()] {
            let err = parse_capture_request(body.as_bytes(), None, &limits).unwrap_err();
            assert_eq!((err.status, err.code), (413, "too_many_events"), "{body}");
            assert!(err.message.contains("more than 3 events"), "{}", err.message);
        }
        // Arrays inside an event are not events.
        let body = r#"{"event":"e","distinct_id":"u","api_key":"phc_x","properties":{"a":[1,2,3,4,5]},"x":[1,2,3,4]}"#;
        assert!(parse_capture_request(body.as_bytes(), None, &limits).is_ok());
        let err = parse_capture_request(b"[{},{},{}", None, &limits).unwrap_err();
        assert_eq!(err.code, "request_parsing_error");
    }

    #[test]
    fn values_that_would_not_read_back_are_refused_with_the_request() {
        for bad in [r#"{"event": "a", "distinct_id": "u", "api_key": "phc_x", "properties": {"n": 1e400}}"#,
                    r#"{"event": "a", "distinct_id": "u", "api_key": "phc_x", "properties": {"s": "\ud800"}}"#,
                    r#"{"event": "a", "distinct_id": "u", "api_key": "phc_x", "x": [-1e999]}"#] {
            let err = parse_capture_request(bad.as_bytes(), None, &EventLimits::default()).unwrap_err();
            assert_eq!(err.code, "request_parsing_error", "{bad}");
            assert!(err.message.contains("invalid JSON"), "{}", err.message);
        }
        let deep = format!(r#"{{"event": "a", "distinct_id": "u", "api_key": "phc_x", "properties": {{"d": {}1{}}}}}"#, "[".repeat(40), "]".repeat(40));
        let out = request(&deep, false);
        assert_eq!(out.invalid[0].rejection.code, "too_deep");
    }
}

//! PostHog's capture wire format (`/e`, `/i/v0/e`, `/batch`, `/capture`, `/track`, `/engage`)
//! into unified events. Follows PostHog's capture-rs: request shapes, token and distinct-id
//! extraction, error codes and messages.

use chrono::{DateTime, Duration, Utc};
use serde_json::{Map, Value};

use crate::error::Rejection;
use crate::model::{
    extract_trace, format_time, id_string, new_event_id, parse_time, storable_time, Event, EventType,
    Protocol, RequestMeta,
};
use crate::validate::{check_event_name, check_raw_event, EventLimits};
use crate::{InvalidEvent, Normalized};

/// A decoded capture request, before authentication.
#[derive(Debug)]
pub struct CaptureRequest {
    /// The project token, from wherever PostHog accepts it.
    pub token: String,
    pub events: Vec<Value>,
    pub sent_at: Option<DateTime<Utc>>,
    pub historical_migration: bool,
    /// One event (not an array or batch): invalid input is rejected, not quarantined.
    pub single: bool,
}

fn event_token(event: &Value) -> Option<&str> {
    ["token", "$token", "api_key"]
        .iter()
        .find_map(|k| event.get(*k).and_then(Value::as_str))
        .or_else(|| event.get("properties")?.get("token")?.as_str())
        .filter(|t| !t.trim().is_empty())
}

/// Parses the JSON of a capture request: an array of events (posthog-js), a batch
/// `{batch, api_key|token, historical_migration, sent_at|sentAt}`, or one event.
pub fn parse_capture_request(
    json: &[u8],
    query_sent_at_ms: Option<i64>,
) -> Result<CaptureRequest, Rejection> {
    let value: Value =
        crate::json::parse(json).map_err(|e| Rejection::parsing(format!("invalid JSON: {e}")))?;
    let (events, batch_token, sent_at, historical, single) = match value {
        Value::Array(events) => (events, None, None, false, false),
        Value::Object(mut map) if map.contains_key("batch") => {
            let events = match map.remove("batch") {
                Some(Value::Array(events)) => events,
                _ => return Err(Rejection::parsing("`batch` must be an array of events".into())),
            };
            let token = ["api_key", "token"]
                .iter()
                .find_map(|k| map.get(*k).and_then(Value::as_str))
                .filter(|t| !t.trim().is_empty())
                .map(str::to_owned);
            let sent_at = ["sent_at", "sentAt"]
                .iter()
                .find_map(|k| map.get(*k).and_then(Value::as_str))
                .and_then(parse_time);
            let historical =
                map.get("historical_migration").and_then(Value::as_bool).unwrap_or(false);
            (events, token, sent_at, historical, false)
        }
        obj @ Value::Object(_) => (vec![obj], None, None, false, true),
        _ => {
            return Err(Rejection::parsing(
                "expected a JSON object, an array of events or a batch".into(),
            ))
        }
    };
    if events.is_empty() {
        return Err(Rejection::empty_batch());
    }
    let token = match batch_token {
        Some(token) => token,
        None => {
            let mut found: Option<&str> = None;
            for event in &events {
                if let Some(t) = event_token(event) {
                    match found {
                        None => found = Some(t),
                        Some(prev) if prev != t => {
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
            found
                .map(str::to_owned)
                .ok_or_else(|| {
                    Rejection::new(401, "ingest_key_required", "event submitted without an api_key")
                })?
        }
    };
    let token = token.trim().to_owned();
    validate_token(&token)?;
    let sent_at = sent_at.or_else(|| query_sent_at_ms.and_then(DateTime::from_timestamp_millis));
    Ok(CaptureRequest { token, events, sent_at, historical_migration: historical, single })
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
pub fn normalize(events: Vec<Value>, ctx: &PosthogContext<'_>) -> Normalized {
    let mut out = Normalized::default();
    out.accepted.reserve(events.len());
    for (index, raw) in events.into_iter().enumerate() {
        match normalize_event(raw, ctx) {
            Ok(event) => out.accepted.push(event),
            Err((rejection, raw)) => out.invalid.push(InvalidEvent { index, rejection, raw }),
        }
    }
    out
}

fn take_map(map: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match map.remove(key) {
        Some(Value::Object(m)) => m,
        Some(other) => {
            // Not an object: keep it where it was rather than lose it.
            map.insert(key.to_owned(), other);
            Map::new()
        }
        None => Map::new(),
    }
}

const TOP_LEVEL_KNOWN: &[&str] = &[
    "event",
    "uuid",
    "distinct_id",
    "$distinct_id",
    "properties",
    "timestamp",
    "$set",
    "$set_once",
    "token",
    "$token",
    "api_key",
];

/// What validation established about an event, before it is taken apart.
struct Checked {
    event_name: String,
    distinct_id: String,
    id: String,
    timestamp: DateTime<Utc>,
    original_timestamp: Option<String>,
}

/// Normalizes one event. All checks run on the borrowed event first, so an invalid one is
/// handed back whole (for the quarantine) and a valid one is moved, not copied, into the
/// unified event.
pub fn normalize_event(raw: Value, ctx: &PosthogContext<'_>) -> Result<Event, (Rejection, Value)> {
    let checked = match check_event(&raw, ctx) {
        Ok(checked) => checked,
        Err(rejection) => return Err((rejection, raw)),
    };
    match raw {
        Value::Object(obj) => Ok(build_event(obj, checked, ctx)),
        other => Err((Rejection::parsing("event is not a JSON object".into()), other)),
    }
}

fn check_event(raw: &Value, ctx: &PosthogContext<'_>) -> Result<Checked, Rejection> {
    let Some(obj) = raw.as_object() else {
        return Err(Rejection::parsing("event is not a JSON object".into()));
    };
    let empty = Map::new();
    let properties = match obj.get("properties") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(p)) => p,
        Some(_) => return Err(Rejection::parsing("`properties` must be an object".into())),
    };
    check_raw_event(raw, properties.len(), ctx.limits)?;

    let event_name = match obj.get("event").and_then(Value::as_str).filter(|e| !e.is_empty()) {
        Some(name) => name.to_owned(),
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

    let distinct_id = id_string(obj.get("distinct_id").or_else(|| obj.get("$distinct_id")))
        .or_else(|| id_string(properties.get("distinct_id")))
        .ok_or_else(Rejection::missing_distinct_id)?;

    let id = match obj.get("uuid") {
        None | Some(Value::Null) => new_event_id(),
        Some(Value::String(s)) if s.is_empty() => new_event_id(),
        Some(Value::String(s)) => uuid::Uuid::parse_str(s)
            .map_err(|_| Rejection::new(400, "invalid_uuid", format!("event uuid {s:?} is not a UUID")))?
            .to_string(),
        Some(other) => {
            return Err(Rejection::new(400, "invalid_uuid", format!("event uuid {other} is not a UUID")))
        }
    };

    if let Some(mode) = properties.get("$cookieless_mode") {
        if !mode.is_boolean() {
            return Err(Rejection::new(
                400,
                "invalid_cookieless_mode",
                "$cookieless_mode must be a boolean",
            ));
        }
    }

    let original_timestamp = obj.get("timestamp").and_then(Value::as_str).map(str::to_owned);
    let offset_ms = obj.get("offset").and_then(Value::as_i64);
    let ignore_sent_at = properties.get("$ignore_sent_at").and_then(Value::as_bool).unwrap_or(false);
    let timestamp = posthog_timestamp(
        ctx.meta.received_at,
        original_timestamp.as_deref(),
        if ignore_sent_at { None } else { ctx.sent_at },
        offset_ms,
    )?;
    Ok(Checked { event_name, distinct_id, id, timestamp, original_timestamp })
}

fn build_event(mut obj: Map<String, Value>, checked: Checked, ctx: &PosthogContext<'_>) -> Event {
    let mut properties = take_map(&mut obj, "properties");
    // Person updates may come top-level (posthog-js, python) or inside properties (node).
    let mut traits = take_map(&mut properties, "$set");
    let mut traits_set_once = take_map(&mut properties, "$set_once");
    traits.extend(take_map(&mut obj, "$set"));
    traits_set_once.extend(take_map(&mut obj, "$set_once"));
    let groups = take_map(&mut properties, "$groups");

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
    match kind {
        EventType::Identify => {
            if let Some(Value::String(anon)) = properties.remove("$anon_distinct_id") {
                anonymous_id = Some(anon);
            }
        }
        EventType::Alias => match properties.remove("alias") {
            Some(alias) => previous_id = id_string(Some(&alias)),
            None => kind = EventType::Track,
        },
        EventType::Group => {
            group_type = properties.remove("$group_type").and_then(|v| id_string(Some(&v)));
            group_id = properties.remove("$group_key").and_then(|v| id_string(Some(&v)));
            traits.extend(take_map(&mut properties, "$group_set"));
        }
        EventType::Screen => {
            name = properties.get("$screen_name").and_then(Value::as_str).map(str::to_owned);
        }
        EventType::Page | EventType::Track => {}
    }

    let context = Map::new();
    let (trace_id, span_id) = extract_trace(&properties, &context, ctx.meta.traceparent.as_deref());

    let mut extra: Map<String, Value> =
        obj.into_iter().filter(|(key, _)| !TOP_LEVEL_KNOWN.contains(&key.as_str())).collect();
    if ctx.historical_migration {
        extra.insert("historical_migration".into(), Value::Bool(true));
    }

    Event {
        id: checked.id,
        project_id: ctx.meta.project_id,
        protocol: Protocol::Posthog,
        kind,
        event: checked.event_name,
        distinct_id: checked.distinct_id,
        user_id: None,
        anonymous_id,
        properties,
        traits,
        traits_set_once,
        context,
        groups,
        group_type,
        group_id,
        previous_id,
        name,
        category: None,
        timestamp: format_time(checked.timestamp),
        original_timestamp: checked.original_timestamp,
        sent_at: ctx.sent_at.map(format_time),
        received_at: format_time(ctx.meta.received_at),
        trace_id,
        span_id,
        extra,
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
    use serde_json::json;

    fn meta() -> RequestMeta {
        RequestMeta {
            project_id: 1,
            received_at: parse_time("2026-11-25T12:00:10Z").unwrap(),
            traceparent: None,
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
        normalize_event(raw, &ctx).map_err(|(r, _)| r)
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
    }

    #[test]
    fn tokens_must_agree() {
        let body = json!([{"event": "a", "properties": {"token": "phc_a"}},
                          {"event": "b", "properties": {"token": "phc_b"}}]);
        let err = parse_capture_request(body.to_string().as_bytes(), None).unwrap_err();
        assert_eq!(err.code, "unroutable_events");
        let body = json!({"event": "a", "api_key": "phx_personal"});
        let err = parse_capture_request(body.to_string().as_bytes(), None).unwrap_err();
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
}

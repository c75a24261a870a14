//! RudderStack/Segment HTTP API (`/v1/track`, `/v1/identify`, `/v1/group`, `/v1/page`,
//! `/v1/screen`, `/v1/alias`, `/v1/batch`) into unified events.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::error::Rejection;
use crate::json::CappedError;
use crate::model::{
    extract_trace, format_time, id_string, new_event_id, parse_time, storable_time, Event, EventType,
    Protocol, RequestMeta,
};
use crate::validate::{check_event_name, check_raw_event, EventLimits};
use crate::{Accepted, InvalidEvent, Normalized};

/// A decoded Segment request, before authentication.
#[derive(Debug)]
pub struct SegmentRequest {
    /// Segment's body `writeKey` (Basic auth is preferred by the server).
    pub body_write_key: Option<String>,
    pub events: Vec<Value>,
    /// The batch-level `sentAt`.
    pub sent_at: Option<String>,
    pub single: bool,
}

/// Parses the JSON of a Segment request. `route_type` is the call type of the route
/// (`None` for `/v1/batch`). A batch of more than `limits.max_events_per_request` events is
/// refused as soon as the parser reaches the first one past it.
pub fn parse_segment_request(
    json: &[u8],
    route_type: Option<EventType>,
    limits: &EventLimits,
) -> Result<SegmentRequest, Rejection> {
    let invalid = |e: serde_json::Error| Rejection::new(400, "invalid_json", format!("invalid json: {e}"));
    let value: Value = match route_type {
        None => crate::json::parse_capped(json, "batch", limits.max_events_per_request).map_err(|e| match e {
            CappedError::Json(e) => invalid(e),
            CappedError::TooManyItems => Rejection::too_many_events(limits.max_events_per_request),
        })?,
        Some(_) => crate::json::parse(json).map_err(invalid)?,
    };
    let Value::Object(mut map) = value else {
        return Err(Rejection::new(400, "invalid_json", "invalid json: expected a JSON object"));
    };
    let body_write_key = map.get("writeKey").and_then(Value::as_str).map(str::to_owned);
    match route_type {
        None => {
            let events = match map.remove("batch") {
                Some(Value::Array(events)) => events,
                _ => {
                    return Err(Rejection::new(
                        400,
                        "invalid_json",
                        "invalid json: `batch` must be an array of events",
                    ))
                }
            };
            if events.is_empty() {
                return Err(Rejection::new(400, "empty_batch", "empty batch payload"));
            }
            let sent_at = map.get("sentAt").and_then(Value::as_str).map(str::to_owned);
            Ok(SegmentRequest { body_write_key, events, sent_at, single: false })
        }
        Some(kind) => {
            map.remove("writeKey");
            map.insert("type".into(), Value::String(kind.as_str().into()));
            Ok(SegmentRequest { body_write_key, events: vec![Value::Object(map)], sent_at: None, single: true })
        }
    }
}

pub struct SegmentContext<'a> {
    pub meta: &'a RequestMeta,
    pub batch_sent_at: Option<&'a str>,
    pub limits: &'a EventLimits,
}

pub fn normalize(events: Vec<Value>, ctx: &SegmentContext<'_>) -> Normalized {
    let mut out = Normalized::default();
    out.accepted.reserve(events.len());
    for (index, raw) in events.into_iter().enumerate() {
        match normalize_event(raw, ctx) {
            Ok(event) => out.accepted.push(Accepted::from_event(event)),
            Err((rejection, raw)) => out.invalid.push(InvalidEvent { index, rejection, raw: raw.to_string() }),
        }
    }
    out
}

const TOP_LEVEL_KNOWN: &[&str] = &[
    "type",
    "messageId",
    "event",
    "userId",
    "anonymousId",
    "properties",
    "traits",
    "context",
    "groupId",
    "previousId",
    "name",
    "category",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "writeKey",
];

fn object_field<'a>(obj: &'a Map<String, Value>, key: &str) -> Result<Option<&'a Map<String, Value>>, Rejection> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(_) => Err(Rejection::new(
            400,
            "invalid_field",
            format!("event is not a valid rudder event: `{key}` must be an object"),
        )),
    }
}

fn take_object(obj: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match obj.remove(key) {
        Some(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

/// Removes `key` if it holds an object, and returns it; any other value stays (for `extra`).
fn take_if_object(obj: &mut Map<String, Value>, key: &str) -> Map<String, Value> {
    match obj.get(key) {
        Some(Value::Object(_)) => take_object(obj, key),
        _ => Map::new(),
    }
}

/// What validation established about an event, before it is taken apart.
struct Checked {
    kind: EventType,
    event_name: String,
    user_id: Option<String>,
    anonymous_id: Option<String>,
    distinct_id: String,
    /// The event carries `$distinct_id` equal to its `userId`: a PostHog event (see
    /// [`posthog_distinct_id`]).
    posthog_distinct_id: bool,
}

/// Whether a message is a PostHog event forwarded by a Switchyard: PostHog's distinct id is
/// neither a user id nor an anonymous id, and a forwarder sends it as `userId` (what Segment's
/// destinations take it for) with the same id as `$distinct_id`, which is no Segment field. Its
/// `userId` then stands in for the distinct id and is not stored as `user_id`.
fn posthog_distinct_id(obj: &Map<String, Value>, user_id: Option<&str>) -> bool {
    user_id.is_some() && obj.get("$distinct_id").and_then(Value::as_str) == user_id
}

/// Normalizes one event: checks on the borrowed event (an invalid one is handed back whole,
/// for the quarantine), then moves its parts into the unified event.
pub fn normalize_event(raw: Value, ctx: &SegmentContext<'_>) -> Result<Event, (Rejection, Value)> {
    let checked = match check_event(&raw, ctx) {
        Ok(checked) => checked,
        Err(rejection) => return Err((rejection, raw)),
    };
    match raw {
        Value::Object(obj) => Ok(build_event(obj, checked, ctx)),
        other => Err((Rejection::new(400, "invalid_event", "event is not a valid rudder event"), other)),
    }
}

fn check_event(raw: &Value, ctx: &SegmentContext<'_>) -> Result<Checked, Rejection> {
    let Some(obj) = raw.as_object() else {
        return Err(Rejection::new(400, "invalid_event", "event is not a valid rudder event"));
    };
    let kind = match obj.get("type").and_then(Value::as_str) {
        Some(t) => EventType::parse(t).ok_or_else(|| {
            Rejection::new(400, "invalid_type", format!("event type {t:?} is not one of track, identify, group, page, screen, alias"))
        })?,
        None => return Err(Rejection::new(400, "invalid_type", "event is not a valid rudder event: missing `type`")),
    };
    let properties = object_field(obj, "properties")?.map_or(0, Map::len);
    let traits = object_field(obj, "traits")?.map_or(0, Map::len);
    object_field(obj, "context")?;
    check_raw_event(raw, properties.max(traits), ctx.limits)?;

    let mut user_id = id_string(obj.get("userId"));
    let anonymous_id = id_string(obj.get("anonymousId"));
    let distinct_id = user_id
        .clone()
        .or_else(|| anonymous_id.clone())
        .ok_or_else(|| {
            Rejection::new(400, "missing_distinct_id", "request neither has anonymousId nor userId")
        })?;
    let posthog_distinct_id = posthog_distinct_id(obj, user_id.as_deref());
    if posthog_distinct_id {
        user_id = None;
    }

    let event_name = match kind {
        EventType::Track => match obj.get("event").and_then(Value::as_str).filter(|e| !e.is_empty()) {
            Some(name) => name.to_owned(),
            None => return Err(Rejection::missing_event_name()),
        },
        // Segment's other calls have no name: PostHog's for them, unless the message names
        // itself (a forwarding Switchyard sends PostHog's `$set` so).
        _ => match obj.get("event").and_then(Value::as_str).filter(|e| !e.is_empty()) {
            Some(name) => name.to_owned(),
            None => match kind {
                EventType::Identify => "$identify",
                EventType::Group => "$groupidentify",
                EventType::Page => "$pageview",
                EventType::Screen => "$screen",
                _ => "$create_alias",
            }
            .to_owned(),
        },
    };
    check_event_name(&event_name, ctx.limits)?;
    Ok(Checked { kind, event_name, user_id, anonymous_id, distinct_id, posthog_distinct_id })
}

fn build_event(mut obj: Map<String, Value>, checked: Checked, ctx: &SegmentContext<'_>) -> Event {
    let kind = checked.kind;
    let properties = take_object(&mut obj, "properties");
    let context = take_object(&mut obj, "context");
    let mut traits = take_object(&mut obj, "traits");
    if kind == EventType::Identify && traits.is_empty() {
        // rudder-sdk-python sends identify traits only as `context.traits`.
        if let Some(Value::Object(t)) = context.get("traits") {
            traits = t.clone();
        }
    }
    // PostHog's members, which Segment has no field for (sent by a forwarding Switchyard).
    // Read when of their type, else kept in `extra`.
    let traits_set_once = take_if_object(&mut obj, "$set_once");
    let groups = take_if_object(&mut obj, "$groups");
    let group_type = match obj.get("$group_type") {
        Some(Value::String(_)) if kind == EventType::Group => {
            obj.remove("$group_type").and_then(|v| v.as_str().map(str::to_owned))
        }
        _ => None,
    };
    if checked.posthog_distinct_id {
        obj.remove("$distinct_id");
    }

    let id = obj
        .get("messageId")
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|m| !m.is_empty())
        .map(str::to_owned)
        .unwrap_or_else(new_event_id);

    let str_field = |k: &str| obj.get(k).and_then(Value::as_str).map(str::to_owned);
    let event_timestamp = str_field("timestamp");
    let original_timestamp = str_field("originalTimestamp");
    let sent_at = str_field("sentAt").or_else(|| ctx.batch_sent_at.map(str::to_owned));
    let timestamp = segment_timestamp(
        ctx.meta.received_at,
        event_timestamp.as_deref(),
        original_timestamp.as_deref(),
        sent_at.as_deref(),
    );
    let name = str_field("name");
    let category = str_field("category");
    let group_id = if kind == EventType::Group { id_string(obj.get("groupId")) } else { None };
    let previous_id = if kind == EventType::Alias { id_string(obj.get("previousId")) } else { None };

    let (trace_id, span_id) = extract_trace(&properties, &context, ctx.meta.traceparent.as_deref());

    let extra: Map<String, Value> =
        obj.into_iter().filter(|(key, _)| !TOP_LEVEL_KNOWN.contains(&key.as_str())).collect();

    Event {
        id,
        project_id: ctx.meta.project_id,
        protocol: Protocol::Segment,
        kind,
        event: checked.event_name,
        distinct_id: checked.distinct_id,
        user_id: checked.user_id,
        anonymous_id: checked.anonymous_id,
        properties,
        traits,
        traits_set_once,
        context,
        groups,
        group_type,
        group_id,
        previous_id,
        name,
        category,
        timestamp: format_time(timestamp),
        original_timestamp: original_timestamp.or(event_timestamp),
        sent_at: sent_at.as_deref().and_then(parse_time).map(format_time),
        received_at: format_time(ctx.meta.received_at),
        trace_id,
        span_id,
        request_ip: ctx.meta.ip.clone(),
        extra,
    }
}

/// RudderStack's rule (`enhanceWithTimeFields`): a parsable client `timestamp` is kept as-is;
/// otherwise `receivedAt - (sentAt - originalTimestamp)`, each missing value defaulting to
/// `receivedAt`. `sentAt` is the event's own, else the batch's (Segment's documented rule).
pub fn segment_timestamp(
    received_at: DateTime<Utc>,
    timestamp: Option<&str>,
    original_timestamp: Option<&str>,
    sent_at: Option<&str>,
) -> DateTime<Utc> {
    if let Some(ts) = timestamp.and_then(parse_time) {
        return ts;
    }
    let original = original_timestamp.and_then(parse_time).unwrap_or(received_at);
    let sent = sent_at.and_then(parse_time).unwrap_or(received_at);
    // A skew so large it overflows is not a real clock: fall back to the receive time.
    received_at.checked_sub_signed(sent - original).filter(storable_time).unwrap_or(received_at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn original_timestamp_is_corrected_by_sent_at() {
        let now = parse_time("2026-11-25T12:00:10Z").unwrap();
        let t = segment_timestamp(now, None, Some("2026-11-25T12:00:00Z"), Some("2026-11-25T12:00:01Z"));
        assert_eq!(format_time(t), "2026-11-25T12:00:09.000000Z");
        let t = segment_timestamp(now, None, Some("0001-01-01T00:00:00Z"), Some("9999-12-31T00:00:00Z"));
        assert_eq!(t, now);
        let t = segment_timestamp(now, Some("2026-11-25T11:00:00Z"), Some("2026-11-25T12:00:00Z"), None);
        assert_eq!(format_time(t), "2026-11-25T11:00:00.000000Z");
    }

    #[test]
    fn identify_traits_from_context() {
        let meta = RequestMeta { project_id: 1, received_at: Utc::now(), traceparent: None, ip: None };
        let ctx = SegmentContext { meta: &meta, batch_sent_at: None, limits: &EventLimits::default() };
        let e = normalize_event(
            json!({"type": "identify", "userId": "u", "context": {"traits": {"plan": "pro"},
                    "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}}),
            &ctx,
        )
        .unwrap_or_else(|(r, _)| panic!("{r}"));
        assert_eq!(e.traits["plan"], "pro");
        assert_eq!(e.trace_id.as_deref(), Some("4bf92f3577b34da6a3ce929d0e0e4736"));
        assert_eq!(e.span_id.as_deref(), Some("00f067aa0ba902b7"));
        let (err, _) = normalize_event(json!({"type": "track", "event": "x"}), &ctx).unwrap_err();
        assert_eq!(err.message, "request neither has anonymousId nor userId");
    }

    #[test]
    fn posthog_members_are_read_into_the_unified_event() {
        let meta = RequestMeta { project_id: 1, received_at: Utc::now(), traceparent: None, ip: None };
        let ctx = SegmentContext { meta: &meta, batch_sent_at: None, limits: &EventLimits::default() };
        let one = |raw: Value| normalize_event(raw, &ctx).unwrap_or_else(|(r, _)| panic!("{r}"));
        // A PostHog identify as a forwarding Switchyard sends it: its distinct id as `userId`,
        // marked by `$distinct_id`, so it is not taken for a user id.
        let e = one(json!({"type": "identify", "userId": "user_1", "$distinct_id": "user_1", "anonymousId": "anon_9",
                           "traits": {"plan": "pro"}, "$set_once": {"first_seen": "2026-11-01"},
                           "$groups": {"workspace": "ws_1"}, "$group_type": "workspace", "channel": "server"}));
        assert_eq!((e.distinct_id.as_str(), e.user_id.as_deref(), e.anonymous_id.as_deref()), ("user_1", None, Some("anon_9")));
        assert_eq!(Value::Object(e.traits_set_once), json!({"first_seen": "2026-11-01"}));
        assert_eq!(Value::Object(e.groups), json!({"workspace": "ws_1"}));
        assert_eq!(e.group_type, None, "a group type only on group calls");
        assert_eq!(Value::Object(e.extra), json!({"$group_type": "workspace", "channel": "server"}));
        let e = one(json!({"type": "group", "userId": "u", "groupId": "ws_1", "$group_type": "workspace"}));
        assert_eq!((e.group_type.as_deref(), e.group_id.as_deref(), e.extra.len()), (Some("workspace"), Some("ws_1"), 0));
        // A `$distinct_id` that is not the `userId`, and members not of their type, stay in `extra`.
        let e = one(json!({"type": "track", "event": "x", "userId": "u", "$distinct_id": "other",
                           "$set_once": "s", "$groups": null}));
        assert_eq!((e.user_id.as_deref(), e.distinct_id.as_str()), (Some("u"), "u"));
        assert!(e.traits_set_once.is_empty() && e.groups.is_empty());
        assert_eq!(Value::Object(e.extra), json!({"$distinct_id": "other", "$set_once": "s", "$groups": null}));
    }

    #[test]
    fn a_batch_past_the_events_cap_is_refused() {
        let limits = EventLimits { max_events_per_request: 3, ..Default::default() };
        let batch = |n: usize| format!(r#"{{"writeKey":"k","batch":[{}],"sentAt":"x"}}"#, vec!["{}"; n].join(","));
        let request = parse_segment_request(batch(3).as_bytes(), None, &limits).unwrap();
        assert_eq!((request.events.len(), request.body_write_key.as_deref()), (3, Some("k")));
        let err = parse_segment_request(batch(4).as_bytes(), None, &limits).unwrap_err();
        assert_eq!((err.status, err.code), (413, "too_many_events"));
        assert!(err.message.contains("more than 3 events"), "{}", err.message);
        // Only the top-level `batch` is counted; a single call's arrays are its own.
        let nested = r#"{"batch":[{"properties":{"batch":[1,2,3,4,5]}}]}"#;
        assert_eq!(parse_segment_request(nested.as_bytes(), None, &limits).unwrap().events.len(), 1);
        let single = r#"{"userId":"u","event":"e","batch":[1,2,3,4,5]}"#;
        assert!(parse_segment_request(single.as_bytes(), Some(EventType::Track), &limits).is_ok());
        // Invalid JSON is still named as such.
        let err = parse_segment_request(br#"{"batch":[{}"#, None, &limits).unwrap_err();
        assert_eq!(err.code, "invalid_json");
    }
}

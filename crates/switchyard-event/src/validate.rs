//! Per-event limits, checked on the raw event before it is normalized, and the one
//! request-level limit the parsers apply (`max_events_per_request`).

use serde_json::Value;

use crate::error::Rejection;

/// Per-event limits, and the number of events a request may hold (the other request-level
/// limits are the server's, and decoding's: [`crate::decode::DecodeLimits`]).
#[derive(Debug, Clone, Copy)]
pub struct EventLimits {
    /// Largest single event, measured as its JSON text.
    pub max_event_bytes: usize,
    pub max_event_name_chars: usize,
    /// Most top-level properties (and traits) one event may carry.
    pub max_properties: usize,
    /// Deepest nesting of objects and arrays inside one event.
    pub max_depth: usize,
    /// Most events one request may hold. The parsers count them as they go and refuse the
    /// request (413 `too_many_events`) at the first one past it, before it is built: a body of
    /// millions of tiny events (`[{},{},…]` is 3 bytes an event) costs at most this many.
    pub max_events_per_request: usize,
}

/// The default [`EventLimits::max_events_per_request`]: as many as one of the log's
/// transactions holds by default, far above what an SDK sends at once (tens to hundreds of
/// events; Segment's API takes batches of 500 KB at most).
pub const DEFAULT_MAX_EVENTS_PER_REQUEST: usize = 20_000;

impl Default for EventLimits {
    fn default() -> Self {
        EventLimits {
            max_event_bytes: 1024 * 1024,
            max_event_name_chars: 200,
            max_properties: 2000,
            max_depth: 32,
            max_events_per_request: DEFAULT_MAX_EVENTS_PER_REQUEST,
        }
    }
}

/// The JSON-text size of a value (exact for what `serde_json` writes, escapes aside) and its
/// nesting depth, in one walk.
pub fn measure(value: &Value) -> (usize, usize) {
    match value {
        Value::Null => (4, 0),
        Value::Bool(b) => (if *b { 4 } else { 5 }, 0),
        Value::Number(n) => (number_len(n), 0),
        Value::String(s) => (s.len() + 2, 0),
        Value::Array(items) => {
            let mut size = 2 + items.len().saturating_sub(1);
            let mut depth = 0;
            for item in items {
                let (s, d) = measure(item);
                size += s;
                depth = depth.max(d);
            }
            (size, depth + 1)
        }
        Value::Object(map) => {
            let mut size = 2 + map.len().saturating_sub(1);
            let mut depth = 0;
            for (key, item) in map {
                let (s, d) = measure(item);
                size += key.len() + 3 + s;
                depth = depth.max(d);
            }
            (size, depth + 1)
        }
    }
}

fn number_len(n: &serde_json::Number) -> usize {
    if let Some(i) = n.as_i64() {
        let mut len = if i < 0 { 2 } else { 1 };
        let mut v = i.unsigned_abs();
        while v >= 10 {
            v /= 10;
            len += 1;
        }
        len
    } else {
        n.to_string().len()
    }
}

/// Checks one raw event against the limits. `properties` is the map whose key count is
/// limited (PostHog `properties`, Segment `properties` or `traits`).
pub fn check_raw_event(
    raw: &Value,
    properties_len: usize,
    limits: &EventLimits,
) -> Result<(), Rejection> {
    let (size, depth) = measure(raw);
    check_measured(size, depth, properties_len, limits)
}

/// Checks an event's measured JSON size and depth (the event object is level 1) and its
/// property count against the limits.
pub fn check_measured(size: usize, depth: usize, properties_len: usize, limits: &EventLimits) -> Result<(), Rejection> {
    if size > limits.max_event_bytes {
        return Err(Rejection::new(
            413,
            "event_too_large",
            format!(
                "maximum event size exceeded: event is {size} bytes, the limit is {} bytes",
                limits.max_event_bytes
            ),
        ));
    }
    // The event object itself is level 1; properties are level 2.
    if depth > limits.max_depth + 1 {
        return Err(Rejection::new(
            400,
            "too_deep",
            format!(
                "event nesting depth {} exceeds the limit of {}",
                depth - 1,
                limits.max_depth
            ),
        ));
    }
    if properties_len > limits.max_properties {
        return Err(Rejection::new(
            400,
            "too_many_properties",
            format!(
                "event has {properties_len} properties, the limit is {}",
                limits.max_properties
            ),
        ));
    }
    Ok(())
}

pub fn check_event_name(name: &str, limits: &EventLimits) -> Result<(), Rejection> {
    let chars = name.chars().count();
    if chars > limits.max_event_name_chars {
        return Err(Rejection::new(
            400,
            "event_name_too_long",
            format!(
                "event name is {chars} characters, the limit is {}",
                limits.max_event_name_chars
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn measure_matches_serde_json_for_plain_values() {
        let v = json!({"a": [1, -22, 3.5, null, true, false], "b": {"c": "text"}, "d": ""});
        assert_eq!(measure(&v).0, serde_json::to_string(&v).unwrap().len());
        assert_eq!(measure(&v).1, 2);
    }

    #[test]
    fn limits_name_the_problem() {
        let limits = EventLimits { max_event_bytes: 50, max_depth: 2, ..Default::default() };
        let big = json!({"event": "x".repeat(100)});
        assert_eq!(check_raw_event(&big, 0, &limits).unwrap_err().code, "event_too_large");
        let deep = json!({"p": {"a": {"b": {"c": 1}}}});
        assert_eq!(check_raw_event(&deep, 1, &limits).unwrap_err().code, "too_deep");
        let ok = json!({"p": {"a": 1}});
        assert!(check_raw_event(&ok, 1, &limits).is_ok());
    }
}

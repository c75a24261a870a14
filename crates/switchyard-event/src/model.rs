//! The unified event: one Segment-spec-shaped record that PostHog's and RudderStack/Segment's
//! wire formats both map onto without loss (see `docs/protocols.md` for the mapping table).

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Which wire protocol an event arrived by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Posthog,
    Segment,
}

/// The Segment call type of an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Track,
    Identify,
    Group,
    Page,
    Screen,
    Alias,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Track => "track",
            EventType::Identify => "identify",
            EventType::Group => "group",
            EventType::Page => "page",
            EventType::Screen => "screen",
            EventType::Alias => "alias",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "track" => EventType::Track,
            "identify" => EventType::Identify,
            "group" => EventType::Group,
            "page" => EventType::Page,
            "screen" => EventType::Screen,
            "alias" => EventType::Alias,
            _ => return None,
        })
    }
}

/// One event, as stored in the log and served by the events API.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// The client's `uuid` / `messageId`, else a generated UUIDv7 (time-ordered).
    pub id: String,
    pub project_id: i64,
    pub protocol: Protocol,
    #[serde(rename = "type")]
    pub kind: EventType,
    /// The event name. PostHog names are kept as sent; Segment calls other than `track` get
    /// PostHog's name for them (`$identify`, `$groupidentify`, `$pageview`, `$screen`,
    /// `$create_alias`).
    pub event: String,
    /// PostHog's distinct id; for Segment, `userId`, else `anonymousId`.
    pub distinct_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub anonymous_id: Option<String>,
    #[serde(default)]
    pub properties: Map<String, Value>,
    /// Person properties to set: PostHog `$set`, Segment identify traits.
    #[serde(default)]
    pub traits: Map<String, Value>,
    /// Person properties to set only when absent: PostHog `$set_once`.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub traits_set_once: Map<String, Value>,
    #[serde(default)]
    pub context: Map<String, Value>,
    /// Group memberships of the event: PostHog `$groups` (type → key).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub groups: Map<String, Value>,
    /// For group calls: the group type (`$group_type`; Segment has none) and key (`groupId`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_id: Option<String>,
    /// For alias calls: the id being merged into `distinct_id` (`previousId`, PostHog `alias`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_id: Option<String>,
    /// Page/screen name and category (Segment page/screen calls).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub category: Option<String>,
    /// When the event happened, corrected for client clock skew.
    pub timestamp: String,
    /// The timestamp as the client sent it (PostHog `timestamp`, Segment
    /// `originalTimestamp`, else Segment `timestamp`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_timestamp: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_at: Option<String>,
    pub received_at: String,
    #[serde(default)]
    pub trace_id: Option<String>,
    #[serde(default)]
    pub span_id: Option<String>,
    /// The client's address as the server saw it: the connection's peer, or behind trusted
    /// proxies the client `X-Forwarded-For` names. PostHog keeps it as the event's `ip` (`$ip`), RudderStack as
    /// `request_ip` (`context.ip` in the warehouse when the client sent none).
    #[serde(default)]
    pub request_ip: Option<String>,
    /// Every other top-level field the client sent (`integrations`, `channel`, `offset`, …),
    /// kept so the event can be forwarded out again unchanged.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub extra: Map<String, Value>,
}

/// Formats a time the way every stored timestamp is written: RFC 3339, UTC, microseconds.
/// Fixed width, so stored timestamps compare correctly as strings.
pub fn format_time(t: DateTime<Utc>) -> String {
    use chrono::{Datelike, Timelike};
    let year = t.year();
    if !(0..=9999).contains(&year) {
        return t.to_rfc3339_opts(SecondsFormat::Micros, true);
    }
    // `YYYY-MM-DDTHH:MM:SS.ffffffZ`, digit by digit: chrono's formatter goes through
    // `fmt` machinery and costs several times more, and this runs for every stored event.
    let mut out = [0u8; 27];
    let mut put = |at: usize, width: usize, mut value: u32| {
        for i in (at..at + width).rev() {
            out[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year as u32);
    put(5, 2, t.month());
    put(8, 2, t.day());
    put(11, 2, t.hour());
    put(14, 2, t.minute());
    // A leap second shows as :60, as chrono writes it.
    let nanos = t.nanosecond();
    put(17, 2, t.second() + nanos / 1_000_000_000);
    put(20, 6, (nanos % 1_000_000_000) / 1_000);
    for (at, separator) in [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':'), (19, b'.'), (26, b'Z')] {
        out[at] = separator;
    }
    std::str::from_utf8(&out).expect("ASCII digits and separators").to_owned()
}

/// Whether a computed time can be stored: years 1 to 9999 (fixed-width RFC 3339).
pub fn storable_time(t: &DateTime<Utc>) -> bool {
    use chrono::Datelike;
    (1..=9999).contains(&t.year())
}

/// Parses the timestamp forms SDKs send: RFC 3339 with any offset, or without one (UTC),
/// or a date.
pub fn parse_time(s: &str) -> Option<DateTime<Utc>> {
    let s = s.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(s) {
        return Some(t.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f"] {
        if let Ok(t) = chrono::NaiveDateTime::parse_from_str(s, fmt) {
            return Some(t.and_utc());
        }
    }
    if let Ok(t) = DateTime::parse_from_str(s, "%Y-%m-%d %H:%M:%S%.f%z") {
        return Some(t.with_timezone(&Utc));
    }
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.and_hms_opt(0, 0, 0))
        .map(|t| t.and_utc())
}

/// What the intake knows about the request an event came in.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    pub project_id: i64,
    pub received_at: DateTime<Utc>,
    /// The request's W3C `traceparent` header, if any.
    pub traceparent: Option<String>,
    /// The client's address (see [`Event::request_ip`]).
    pub ip: Option<String>,
}

/// A W3C trace context: `00-<32 hex trace id>-<16 hex parent id>-<flags>`.
pub fn parse_traceparent(s: &str) -> Option<(String, String)> {
    let mut parts = s.trim().split('-');
    let _version = parts.next().filter(|v| v.len() == 2)?;
    let trace = parts.next().filter(|t| is_hex_id(t, 32))?;
    let span = parts.next().filter(|t| is_hex_id(t, 16))?;
    Some((trace.to_ascii_lowercase(), span.to_ascii_lowercase()))
}

fn is_hex_id(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit()) && s.bytes().any(|b| b != b'0')
}

/// Trace and span ids, from `properties.trace_id`/`span_id`, then `context.traceparent`,
/// then the request's `traceparent` header.
pub fn extract_trace(
    properties: &Map<String, Value>,
    context: &Map<String, Value>,
    header: Option<&str>,
) -> (Option<String>, Option<String>) {
    let prop = |k: &str| properties.get(k).and_then(Value::as_str).map(str::to_owned);
    if let Some(trace) = prop("trace_id") {
        return (Some(trace), prop("span_id"));
    }
    let context_tp = context.get("traceparent").and_then(Value::as_str);
    for tp in [context_tp, header].into_iter().flatten() {
        if let Some((trace, span)) = parse_traceparent(tp) {
            return (Some(trace), prop("span_id").or(Some(span)));
        }
    }
    (None, prop("span_id"))
}

/// Stringifies a distinct/user id as PostHog does: strings as they are, other JSON values
/// as their JSON text; NUL becomes U+FFFD; at most 200 characters. Empty or blank → `None`
/// (RudderStack's gateway refuses an id that is blank once trimmed, and keeps the others as sent).
pub fn id_string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::Null => None,
        Value::String(s) if s.trim().is_empty() => None,
        Value::String(s) => clean_id(s),
        other => clean_id(&other.to_string()),
    }
}

pub(crate) fn clean_id(s: &str) -> Option<String> {
    if s.is_empty() {
        return None;
    }
    // The common case (no NUL, at most 200 bytes, so at most 200 characters): one copy.
    if s.len() <= 200 && !s.contains('\0') {
        return Some(s.to_owned());
    }
    let s = s.replace('\0', "\u{FFFD}");
    Some(s.chars().take(200).collect())
}

/// A UUIDv7: the clock's milliseconds, then random bits from a thread-local generator (no
/// system call per event, unlike the `uuid` crate's default source).
pub fn new_event_id() -> String {
    let millis = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let random: [u8; 10] = rand::random();
    let id = uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid();
    id.hyphenated().encode_lower(&mut uuid::Uuid::encode_buffer()).to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stringified_as_posthog_does() {
        use serde_json::json;
        assert_eq!(id_string(Some(&json!("  user_1 "))).as_deref(), Some("  user_1 "), "kept as sent");
        assert_eq!(id_string(Some(&json!(42))).as_deref(), Some("42"));
        assert_eq!(id_string(Some(&json!("a\u{0}b"))).as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(id_string(Some(&json!("é".repeat(300)))), Some("é".repeat(200)));
        assert_eq!(id_string(Some(&json!("x".repeat(200)))), Some("x".repeat(200)));
        assert_eq!(id_string(Some(&json!("   "))), None);
        assert_eq!(id_string(Some(&json!(null))), None);
        assert_eq!(id_string(None), None);
    }

    #[test]
    fn format_time_writes_what_chrono_writes() {
        let chrono_form = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::Micros, true);
        let mut times: Vec<DateTime<Utc>> = [
            "2026-11-25T12:08:21.824965Z",
            "0001-01-01T00:00:00Z",
            "9999-12-31T23:59:59.999999999Z",
            "2024-02-29T23:59:59.000001Z",
            "1970-01-01T00:00:00.0000009Z",
        ]
        .iter()
        .map(|s| parse_time(s).unwrap())
        .collect();
        times.push(DateTime::from_timestamp(0, 0).unwrap());
        times.push(Utc::now());
        // A leap second (nanoseconds past 1e9).
        times.push(chrono::NaiveDate::from_ymd_opt(2016, 12, 31).unwrap().and_hms_micro_opt(23, 59, 59, 1_500_000).unwrap().and_utc());
        let mut seconds = 1_000_000_000_i64;
        for _ in 0..2000 {
            seconds = seconds.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407).rem_euclid(253_402_300_799);
            times.push(DateTime::from_timestamp(seconds, (seconds % 1_000_000_000) as u32).unwrap());
        }
        for t in times {
            assert_eq!(format_time(t), chrono_form(t), "{t:?}");
        }
        let far = DateTime::from_timestamp(253_402_300_800 + 86_400, 0).unwrap();
        assert_eq!(format_time(far), chrono_form(far), "years past 9999 fall back to chrono");
    }

    #[test]
    fn generated_ids_are_distinct_uuid_v7_carrying_the_current_time() {
        let before = Utc::now().timestamp_millis() as u64;
        let ids: Vec<String> = (0..1000).map(|_| new_event_id()).collect();
        let after = Utc::now().timestamp_millis() as u64;
        let unique: std::collections::HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "generated ids repeat");
        for id in &ids {
            let uuid = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            let (secs, nanos) = uuid.get_timestamp().unwrap().to_unix();
            let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
            assert!((before..=after).contains(&millis), "{id}: {millis} not in {before}..={after}");
            assert_eq!(id, &uuid.hyphenated().to_string(), "lowercase hyphenated form");
        }
    }
}

//! The stored form of an accepted event. The log keeps some of an event's members as indexed
//! columns (id, name, distinct id, timestamps, trace id); its body holds the others, so each is
//! written to disk once, and leaves out members at their default (`"user_id":null`,
//! `"context":{}`, …). The event log's disk writes (the WAL, then the database) are what bounds
//! its rate, and those members are over 40% of a typical event's JSON. [`event_json`] puts the
//! whole event back together when it is read.

use serde::de::{Deserializer as _, IgnoredAny, MapAccess, Visitor};

use crate::raw;

/// The members of the unified event ([`crate::Event`]) that the log keeps as columns, by their
/// JSON names.
pub const COLUMN_MEMBERS: [&str; 8] = ["id", "project_id", "type", "event", "distinct_id", "timestamp", "received_at", "trace_id"];

/// The members of the unified event that the stored form leaves out at their default, with
/// that default as JSON text. The events API's answers always have them.
pub const DEFAULT_MEMBERS: [(&str, &str); 6] = [
    ("user_id", "null"),
    ("anonymous_id", "null"),
    ("traits", "{}"),
    ("context", "{}"),
    ("span_id", "null"),
    ("request_ip", "null"),
];

/// An event's column values, as read back from the log.
#[derive(Debug, Clone, Copy)]
pub struct Columns<'a> {
    pub id: &'a str,
    pub project_id: i64,
    /// The event type (`track`, `identify`, …).
    pub kind: &'a str,
    pub event: &'a str,
    pub distinct_id: &'a str,
    pub timestamp: &'a str,
    pub received_at: &'a str,
    pub trace_id: Option<&'a str>,
}

/// The event's whole JSON: its columns' members, the defaults the body left out, then the
/// body's members.
///
/// A body that is not an object without the column members is returned as it is: bodies
/// written before the stored form left them out are whole already (they begin with `{"id":`).
pub fn event_json(columns: &Columns<'_>, body: String) -> String {
    let Some(rest) = body.strip_prefix('{').filter(|rest| !rest.starts_with("\"id\":")) else {
        return body;
    };
    let mut out = Vec::with_capacity(body.len() + 256);
    let key = |out: &mut Vec<u8>, name: &str| {
        out.extend_from_slice(b",\"");
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"\":");
    };
    out.extend_from_slice(b"{\"id\":");
    raw::write_str(&mut out, columns.id);
    key(&mut out, "project_id");
    out.extend_from_slice(columns.project_id.to_string().as_bytes());
    let texts = [
        ("type", Some(columns.kind)),
        ("event", Some(columns.event)),
        ("distinct_id", Some(columns.distinct_id)),
        ("timestamp", Some(columns.timestamp)),
        ("received_at", Some(columns.received_at)),
        ("trace_id", columns.trace_id),
    ];
    for (name, value) in texts {
        key(&mut out, name);
        match value {
            Some(value) => raw::write_str(&mut out, value),
            None => out.extend_from_slice(b"null"),
        }
    }
    let present = default_members_present(&body);
    for (i, (name, default)) in DEFAULT_MEMBERS.iter().enumerate() {
        if present & (1 << i) == 0 {
            key(&mut out, name);
            out.extend_from_slice(default.as_bytes());
        }
    }
    if rest != "}" {
        out.push(b',');
    }
    out.extend_from_slice(rest.as_bytes());
    String::from_utf8(out).expect("JSON text is UTF-8")
}

/// Which of [`DEFAULT_MEMBERS`] the body has (bit `i` for the `i`-th); all of them if the body
/// does not parse, so that nothing is added to it.
fn default_members_present(body: &str) -> u8 {
    struct Members;
    impl<'de> Visitor<'de> for Members {
        type Value = u8;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<u8, A::Error> {
            let mut present = 0;
            while let Some(key) = map.next_key::<std::borrow::Cow<'de, str>>()? {
                if let Some(i) = DEFAULT_MEMBERS.iter().position(|(name, _)| *name == key) {
                    present |= 1 << i;
                }
                map.next_value::<IgnoredAny>()?;
            }
            Ok(present)
        }
    }
    serde_json::Deserializer::from_str(body).deserialize_map(Members).unwrap_or(u8::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    const COLUMNS: Columns<'static> = Columns {
        id: "01a2366a-dc3a-700a-a81b-9a72c271fdf5",
        project_id: 7,
        kind: "track",
        event: "tool \"used\"",
        distinct_id: "user_1",
        timestamp: "2026-11-25T12:08:21.824965Z",
        received_at: "2026-11-25T12:08:22.000001Z",
        trace_id: Some("4bf92f3577b34da6a3ce929d0e0e4736"),
    };

    #[test]
    fn the_columns_and_the_body_make_the_whole_event() {
        let body = r#"{"protocol":"posthog","user_id":null,"properties":{"tool":"search"}}"#.to_owned();
        let whole: Value = serde_json::from_str(&event_json(&COLUMNS, body)).unwrap();
        assert_eq!(
            whole,
            json!({"id": COLUMNS.id, "project_id": 7, "type": "track", "event": "tool \"used\"", "distinct_id": "user_1",
                   "timestamp": COLUMNS.timestamp, "received_at": COLUMNS.received_at,
                   "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "protocol": "posthog", "user_id": null,
                   "anonymous_id": null, "traits": {}, "context": {}, "span_id": null, "request_ip": null,
                   "properties": {"tool": "search"}})
        );
        let untraced = Columns { trace_id: None, ..COLUMNS };
        let whole: Value = serde_json::from_str(&event_json(&untraced, "{}".to_owned())).unwrap();
        assert_eq!(whole["trace_id"], Value::Null);
        assert_eq!(whole.as_object().unwrap().len(), COLUMN_MEMBERS.len() + DEFAULT_MEMBERS.len());
    }

    #[test]
    fn members_left_out_at_their_default_come_back_and_present_ones_stay() {
        let body = r#"{"protocol":"segment","anonymous_id":"anon_1","traits":{"plan":"pro"},"properties":{"user_id":7,"context":1}}"#;
        let whole: Value = serde_json::from_str(&event_json(&COLUMNS, body.to_owned())).unwrap();
        assert_eq!((&whole["user_id"], &whole["context"], &whole["span_id"]), (&Value::Null, &json!({}), &Value::Null));
        assert_eq!((&whole["anonymous_id"], &whole["traits"]), (&json!("anon_1"), &json!({"plan": "pro"})));
        assert_eq!(whole["properties"], json!({"user_id": 7, "context": 1}), "nested members are not top-level ones");
        assert_eq!(whole.as_object().unwrap().len(), COLUMN_MEMBERS.len() + DEFAULT_MEMBERS.len() + 2);
    }

    #[test]
    fn whole_bodies_written_before_the_stored_form_read_back_unchanged() {
        let old = r#"{"id":"a","project_id":1,"protocol":"posthog","type":"track","event":"e"}"#.to_owned();
        assert_eq!(event_json(&COLUMNS, old.clone()), old);
        assert_eq!(event_json(&COLUMNS, "not json".to_owned()), "not json");
    }
}

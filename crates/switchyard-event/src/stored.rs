//! The stored form of an accepted event. The log keeps some of an event's members as indexed
//! columns (id, name, distinct id, timestamps, trace id); its body holds the others, so each is
//! written to disk once. The event log's disk writes (the WAL, then the database) are what
//! bounds its rate, and those members are about a third of a typical event's JSON.
//! [`event_json`] puts the whole event back together when it is read.

use crate::raw;

/// The members of the unified event ([`crate::Event`]) that the log keeps as columns, by their
/// JSON names.
pub const COLUMN_MEMBERS: [&str; 8] = ["id", "project_id", "type", "event", "distinct_id", "timestamp", "received_at", "trace_id"];

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

/// The event's whole JSON: its columns' members, then the stored body's.
///
/// A body that is not an object without the column members is returned as it is: bodies
/// written before the stored form left them out are whole already (they begin with `{"id":`).
pub fn event_json(columns: &Columns<'_>, body: String) -> String {
    let Some(rest) = body.strip_prefix('{').filter(|rest| !rest.starts_with("\"id\":")) else {
        return body;
    };
    let mut out = Vec::with_capacity(body.len() + 256);
    out.extend_from_slice(b"{\"id\":");
    raw::write_str(&mut out, columns.id);
    out.extend_from_slice(b",\"project_id\":");
    out.extend_from_slice(columns.project_id.to_string().as_bytes());
    out.extend_from_slice(b",\"type\":");
    raw::write_str(&mut out, columns.kind);
    out.extend_from_slice(b",\"event\":");
    raw::write_str(&mut out, columns.event);
    out.extend_from_slice(b",\"distinct_id\":");
    raw::write_str(&mut out, columns.distinct_id);
    out.extend_from_slice(b",\"timestamp\":");
    raw::write_str(&mut out, columns.timestamp);
    out.extend_from_slice(b",\"received_at\":");
    raw::write_str(&mut out, columns.received_at);
    out.extend_from_slice(b",\"trace_id\":");
    match columns.trace_id {
        Some(trace_id) => raw::write_str(&mut out, trace_id),
        None => out.extend_from_slice(b"null"),
    }
    if rest != "}" {
        out.push(b',');
    }
    out.extend_from_slice(rest.as_bytes());
    String::from_utf8(out).expect("JSON text is UTF-8")
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
                   "properties": {"tool": "search"}})
        );
        let untraced = Columns { trace_id: None, ..COLUMNS };
        let whole: Value = serde_json::from_str(&event_json(&untraced, "{}".to_owned())).unwrap();
        assert_eq!(whole["trace_id"], Value::Null);
        assert_eq!(whole.as_object().unwrap().len(), COLUMN_MEMBERS.len());
    }

    #[test]
    fn whole_bodies_written_before_the_stored_form_read_back_unchanged() {
        let old = r#"{"id":"a","project_id":1,"protocol":"posthog","type":"track","event":"e"}"#.to_owned();
        assert_eq!(event_json(&COLUMNS, old.clone()), old);
        assert_eq!(event_json(&COLUMNS, "not json".to_owned()), "not json");
    }
}

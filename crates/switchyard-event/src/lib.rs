//! The unified event model and the wire formats that map onto it. Pure: no I/O, so every
//! function here can be tested as a plain function and fuzzed.

pub mod decode;
pub mod error;
pub mod json;
mod lz_string;
pub mod model;
pub mod posthog;
pub mod raw;
pub mod segment;
pub mod stored;
pub mod validate;

pub use error::Rejection;
pub use model::{Event, EventType, Protocol, RequestMeta};
pub use validate::EventLimits;

/// An event that failed validation, with its reason and raw form (for the quarantine).
#[derive(Debug)]
pub struct InvalidEvent {
    /// Its position in the request.
    pub index: usize,
    pub rejection: Rejection,
    /// The event as received, as JSON text.
    pub raw: String,
}

/// An accepted event as it is stored: the columns the log indexes, and the rest of the unified
/// event ([`Event`]) as JSON text (see [`stored`]).
#[derive(Debug, Clone)]
pub struct Accepted {
    pub id: String,
    pub project_id: i64,
    pub kind: EventType,
    pub event: String,
    pub distinct_id: String,
    pub trace_id: Option<String>,
    pub timestamp: String,
    pub received_at: String,
    /// The unified event's JSON without the members kept as columns ([`stored::COLUMN_MEMBERS`])
    /// and those at their default ([`stored::DEFAULT_MEMBERS`]).
    pub body: String,
    /// Whether it sets, unsets or merges person or group data: identify, alias and group
    /// calls, `$set`, `$set_once`, `$unset`.
    pub updates_persons: bool,
    /// The group types it names (PostHog `$groups`).
    pub group_types: Vec<String>,
}

/// Whether an event sets, unsets or merges person or group data (see
/// [`Accepted::updates_persons`]).
pub(crate) fn updates_persons(kind: EventType, sets_traits: bool, unsets: bool) -> bool {
    matches!(kind, EventType::Identify | EventType::Alias | EventType::Group) || sets_traits || unsets
}

impl Accepted {
    pub fn from_event(event: Event) -> Self {
        // Sized for a typical event, so serializing rarely reallocates.
        let mut whole = Vec::with_capacity(1024);
        serde_json::to_writer(&mut whole, &event).expect("events serialize");
        let whole: &serde_json::value::RawValue = serde_json::from_slice(&whole).expect("serialized events parse");
        let members = raw::RawObject::parse(whole).expect("serialized events scan").expect("events are objects");
        let stored_members = members
            .into_entries()
            .into_iter()
            .filter(|m| !stored::COLUMN_MEMBERS.contains(&&*m.key) && !stored::DEFAULT_MEMBERS.contains(&(&*m.key, m.raw.get())))
            .collect();
        Accepted {
            updates_persons: updates_persons(
                event.kind,
                !event.traits.is_empty() || !event.traits_set_once.is_empty(),
                event.properties.contains_key("$unset"),
            ),
            group_types: event.groups.keys().cloned().collect(),
            body: raw::RawObject::from_entries(stored_members).to_json(),
            id: event.id,
            project_id: event.project_id,
            kind: event.kind,
            event: event.event,
            distinct_id: event.distinct_id,
            trace_id: event.trace_id,
            timestamp: event.timestamp,
            received_at: event.received_at,
        }
    }

    /// The whole unified event's JSON, as the log reads it back.
    pub fn event_json(&self) -> String {
        let columns = stored::Columns {
            id: &self.id,
            project_id: self.project_id,
            kind: self.kind.as_str(),
            event: &self.event,
            distinct_id: &self.distinct_id,
            timestamp: &self.timestamp,
            received_at: &self.received_at,
            trace_id: self.trace_id.as_deref(),
        };
        stored::event_json(&columns, self.body.clone())
    }
}

/// The events of one request after normalization.
#[derive(Debug, Default)]
pub struct Normalized {
    pub accepted: Vec<Accepted>,
    pub invalid: Vec<InvalidEvent>,
}

//! Wire formats of the destination types: what one attempt POSTs for a batch of events.
//! (Interface fixed; bodies to come.)

use chrono::{DateTime, Utc};
use serde_json::Value;

use crate::DestinationConfig;

/// One HTTP request of an attempt: where it goes, what it carries, and which of the batch's
/// events (indices into the slice given to [`render`]) it holds.
#[derive(Debug, Clone)]
pub struct WireRequest {
    pub url: reqwest::Url,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub events: Vec<usize>,
}

/// An attempt's requests, and the events that cannot be sent at all (too large, or refused
/// by the receiver's own rules, checked first) with the reason: those are dead-lettered.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub requests: Vec<WireRequest>,
    pub refused: Vec<(usize, String)>,
}

/// Renders `events` (the unified event's JSON, the events API's shape) for `config`, for an
/// attempt made at `now` (Segment's and RudderStack's `sentAt`, the webhook timestamp and
/// signature). Called again for each attempt and for each half of a split batch.
pub fn render(_config: &DestinationConfig, _events: &[Value], _now: DateTime<Utc>) -> Rendered {
    Rendered::default()
}

/// The unified event as a RudderStack/Segment message (what user transformations see).
pub fn to_message(event: &Value) -> Value {
    event.clone()
}

/// A message a transformation returned, back to the unified event; `original` is the event
/// it came from (what the message no longer says is taken from it: project, receipt).
pub fn from_message(message: Value, _original: &Value) -> Result<Value, String> {
    Ok(message)
}

//! The unified event model and the wire formats that map onto it. Pure: no I/O, so every
//! function here can be tested as a plain function and fuzzed.

pub mod decode;
pub mod error;
pub mod json;
pub mod model;
pub mod posthog;
pub mod segment;
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
    pub raw: serde_json::Value,
}

/// The events of one request after normalization.
#[derive(Debug, Default)]
pub struct Normalized {
    pub accepted: Vec<Event>,
    pub invalid: Vec<InvalidEvent>,
}

//! Why a request or an event is not accepted.

/// A request or event that cannot be accepted, with the consequence attached: the HTTP status
/// to answer with, a stable machine-readable `code` (also the metrics reason and the quarantine
/// reason) and a message naming the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub status: u16,
    pub code: &'static str,
    pub message: String,
}

impl Rejection {
    pub fn new(status: u16, code: &'static str, message: impl Into<String>) -> Self {
        Rejection { status, code, message: message.into() }
    }
    pub fn decoding(message: String) -> Self {
        Self::new(400, "request_decoding_error", format!("failed to decode request: {message}"))
    }
    pub fn parsing(message: String) -> Self {
        Self::new(400, "request_parsing_error", format!("failed to parse request: {message}"))
    }
    pub fn empty_payload() -> Self {
        Self::new(400, "empty_payload", "request missing data payload")
    }
    pub fn empty_batch() -> Self {
        Self::new(400, "empty_batch", "request holds no event")
    }
    pub fn decompressed_too_large(limit: usize) -> Self {
        Self::new(
            413,
            "decompressed_too_large",
            format!("decompressed payload exceeds the limit of {limit} bytes"),
        )
    }
    pub fn too_many_events(limit: usize) -> Self {
        Self::new(413, "too_many_events", format!("request holds more than {limit} events, the limit per request"))
    }
    pub fn missing_distinct_id() -> Self {
        Self::new(400, "missing_distinct_id", "event submitted without a distinct_id")
    }
    pub fn missing_event_name() -> Self {
        Self::new(400, "missing_event_name", "event submitted with an empty event name")
    }
    pub fn is_too_large(&self) -> bool {
        self.status == 413
    }
}

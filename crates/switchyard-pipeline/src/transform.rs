//! Transformations applied in order per destination: declarative rules and JavaScript
//! compatible with RudderStack's user transformations.
//!
//! Events are the unified event's JSON (the events API's shape). (Interface fixed; body to come.)

use serde_json::Value;

use crate::InvalidField;

/// Limits of one JavaScript call.
#[derive(Debug, Clone, Copy)]
pub struct JsLimits {
    pub time_limit: std::time::Duration,
    pub memory_bytes: usize,
}

impl Default for JsLimits {
    fn default() -> Self {
        JsLimits { time_limit: std::time::Duration::from_secs(4), memory_bytes: 64 << 20 }
    }
}

/// What one input event became.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Zero (never: that is `Dropped`), one or several events (a fan-out).
    Events(Vec<Value>),
    /// Dropped by a rule or by `null` from JavaScript: counted as filtered.
    Dropped,
    /// A throw or a failed call: dead-lettered with this reason.
    Failed(String),
}

/// One event's result, with what `log(…)` printed while it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct Transformed {
    pub outcome: Outcome,
    pub logs: Vec<String>,
}

/// A compiled chain. `Send`, so a destination's worker can run it on a blocking thread.
pub struct Transformations {
    _steps: Vec<Value>,
}

impl Transformations {
    /// Validates and compiles `specs` (the destination's `transformations` array); a bad spec
    /// is refused naming its field, e.g. `transformations[1].pattern`.
    pub fn compile(specs: &[Value], _limits: JsLimits) -> Result<Self, InvalidField> {
        Ok(Transformations { _steps: specs.to_vec() })
    }

    pub fn is_empty(&self) -> bool {
        self._steps.is_empty()
    }

    /// Runs the chain over `events` in order; one result per input event, in input order.
    /// `destination_id` is what RudderStack's `metadata(event).destinationId` answers.
    pub fn apply(&mut self, events: Vec<Value>, _destination_id: &str) -> Vec<Transformed> {
        events.into_iter().map(|e| Transformed { outcome: Outcome::Events(vec![e]), logs: Vec::new() }).collect()
    }
}

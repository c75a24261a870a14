//! Transformations applied in order per destination: declarative rules and JavaScript
//! compatible with RudderStack's user transformations.
//!
//! Events are the unified event's JSON (the events API's shape). A chain is compiled once
//! (every spec validated, regexes and property filters compiled, JavaScript evaluated) and then
//! applied to batches: [`Transformations::apply`] answers one [`Transformed`] per input event,
//! in input order, whatever the steps did to it (kept, changed, fanned out, dropped, failed).
//!
//! - Declarative rules (`rules.rs`) work on the event in place: no per-event compilation and
//!   no copy of the event unless a rule has to.
//! - JavaScript (`js.rs`) runs in an embedded QuickJS runtime with a time and memory limit; the
//!   code sees the event as a RudderStack message ([`crate::wire::to_message`]) and what it
//!   returns comes back through [`crate::wire::from_message`].
//!
//! Per-event bookkeeping: an input event owns a *slot* holding what it has become so far (zero
//! or more events, or a failure) and the lines `log(…)` printed for it. A step that fails an
//! event fails its whole slot (one input event has one outcome); a slot left without events is
//! `Dropped`.

mod js;
mod rules;

use serde_json::Value;

use crate::InvalidField;

pub use rules::Filter;

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

enum Step {
    Rule(rules::Rule),
    Js(Box<js::JsTransform>),
}

/// A compiled chain. `Send`, so a destination's worker can run it on a blocking thread.
pub struct Transformations {
    steps: Vec<Step>,
}

impl std::fmt::Debug for Transformations {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let kinds: Vec<&str> = self
            .steps
            .iter()
            .map(|s| match s {
                Step::Rule(rule) => rule.kind(),
                Step::Js(_) => "javascript",
            })
            .collect();
        f.debug_struct("Transformations").field("steps", &kinds).finish()
    }
}

/// What one input event has become so far.
struct Slot {
    events: Vec<Value>,
    failed: Option<String>,
    logs: Vec<String>,
}

impl Slot {
    fn alive(&self) -> bool {
        self.failed.is_none() && !self.events.is_empty()
    }
}

impl Transformations {
    /// Validates and compiles `specs` (the destination's `transformations` array); a bad spec
    /// is refused naming its field, e.g. `transformations[1].pattern`.
    pub fn compile(specs: &[Value], limits: JsLimits) -> Result<Self, InvalidField> {
        let mut steps = Vec::with_capacity(specs.len());
        for (i, spec) in specs.iter().enumerate() {
            let field = format!("transformations[{i}]");
            let Some(object) = spec.as_object() else {
                return Err(InvalidField::new(field, "must be an object with a \"type\""));
            };
            if object.get("type").and_then(Value::as_str) == Some("javascript") {
                rules::check_members(object, &field, "javascript", &["code"])?;
                let code = match object.get("code") {
                    Some(Value::String(code)) => code,
                    _ => return Err(InvalidField::new(format!("{field}.code"), "must be a string of JavaScript")),
                };
                let transform = js::JsTransform::compile(code, limits).map_err(|m| InvalidField::new(format!("{field}.code"), m))?;
                steps.push(Step::Js(Box::new(transform)));
            } else {
                steps.push(Step::Rule(rules::Rule::compile(object, &field)?));
            }
        }
        Ok(Transformations { steps })
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Runs the chain over `events` in order; one result per input event, in input order.
    /// `destination_id` is what RudderStack's `metadata(event).destinationId` answers.
    pub fn apply(&mut self, events: Vec<Value>, destination_id: &str) -> Vec<Transformed> {
        let now = chrono::Utc::now();
        let mut slots: Vec<Slot> = events.into_iter().map(|e| Slot { events: vec![e], failed: None, logs: Vec::new() }).collect();
        for step in &mut self.steps {
            match step {
                Step::Rule(rule) => {
                    for slot in slots.iter_mut().filter(|s| s.alive()) {
                        slot.events.retain_mut(|event| rule.apply(event, now));
                    }
                }
                Step::Js(transform) => transform.run(&mut slots, destination_id),
            }
        }
        slots
            .into_iter()
            .map(|slot| {
                let outcome = match slot.failed {
                    Some(reason) => Outcome::Failed(reason),
                    None if slot.events.is_empty() => Outcome::Dropped,
                    None => Outcome::Events(slot.events),
                };
                Transformed { outcome, logs: slot.logs }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests;

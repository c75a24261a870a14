//! JavaScript transformations compatible with RudderStack's user transformations, run in an
//! embedded QuickJS (`rquickjs`).
//!
//! The code is an ES module exporting exactly one of `transformEvent(event, metadata)` or
//! `transformBatch(events, metadata)` (RudderStack refuses both, and so do we). It is evaluated
//! once, at compile time and after a runtime had to be thrown away; each call then only passes
//! JSON text in and out (one `JSON.parse` / `JSON.stringify` per direction inside QuickJS).
//!
//! What the code has: the ECMAScript built-ins (including `Date`, `JSON`, `Math`, promises:
//! an `async` transformation works, its promise is driven to the end within the time limit),
//! `log(…)` (also `console.log/info/warn/error`), collected per event (at most 200 lines of
//! 4 KiB). What it does not have: modules (`import` fails at compile time), `require`, `fetch`,
//! `fetchV2`, `geolocation`, `getCredential` (each throws "… is not available in Switchyard
//! transformations: …"), `process` and any file system or network (QuickJS has none).
//!
//! Limits: the runtime's memory limit ([`JsLimits::memory_bytes`]) and a deadline checked by
//! QuickJS's interrupt handler ([`JsLimits::time_limit`] per call: one event for
//! `transformEvent`, the whole batch for `transformBatch`; the interrupt cannot be caught by
//! the code). A call that hits either limit fails with a reason naming the limit, and the
//! runtime is discarded and rebuilt from the code before the next call, so whatever state the
//! code left behind (a half-built heap, globals) is gone.
//!
//! `Send`: the runtime is built with rquickjs's `parallel` feature (the runtime sits behind a
//! lock), so a chain can move to a blocking thread; it is used by one thread at a time.
//! QuickJS's C assertions are compiled out (`disable-assertions`): an assertion failure would
//! abort the whole server, and a runtime freed after an out-of-memory error must not.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use rquickjs::{CatchResultExt, CaughtError, Context, Function, Module, Runtime};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{JsLimits, Slot};

/// Defines the globals the code may use and `__switchyard_install`, which builds the runner
/// around the exported function. Evaluated before the module.
const PRELUDE: &str = r#"
(() => {
  "use strict";
  let logs = [];
  const text = (v) => {
    if (typeof v === "string") return v;
    if (v === undefined) return "undefined";
    if (typeof v === "function" || typeof v === "symbol" || typeof v === "bigint") return String(v);
    try { const s = JSON.stringify(v); return s === undefined ? String(v) : s; } catch (e) { return String(v); }
  };
  const log = function (...args) {
    if (logs.length < 200) logs.push(args.map(text).join(" ").slice(0, 4096));
  };
  const hidden = (name, value) => Object.defineProperty(globalThis, name, { value, writable: false, enumerable: false, configurable: false });
  const unavailable = (name, why) => function () {
    throw new Error(name + " is not available in Switchyard transformations: " + why);
  };
  globalThis.log = log;
  globalThis.console = { log, info: log, warn: log, error: log, debug: log };
  globalThis.require = unavailable("require", "there are no modules, file system or network");
  globalThis.fetch = unavailable("fetch", "there is no network access");
  globalThis.fetchV2 = unavailable("fetchV2", "there is no network access");
  globalThis.geolocation = unavailable("geolocation", "there is no network access");
  globalThis.getCredential = unavailable("getCredential", "there is no credential store");
  const errorText = (e) => {
    if (e instanceof Error) {
      const stack = typeof e.stack === "string" ? e.stack.trimEnd() : "";
      return stack ? String(e) + "\n" + stack : String(e);
    }
    if (typeof e === "string") return e;
    // QuickJS throws null when it cannot even allocate the error object of an out-of-memory.
    if (e === null) return "InternalError: out of memory (null was thrown)";
    return text(e);
  };
  const finish = (ok, value) => {
    const out = { l: logs };
    logs = [];
    if (ok) out.r = value === undefined ? null : value; else out.e = value;
    try {
      return JSON.stringify(out);
    } catch (e) {
      return JSON.stringify({ l: out.l, e: "the transformation returned a value that cannot be turned into JSON: " + errorText(e) });
    }
  };
  const settle = (run) => {
    let r;
    try { r = run(); } catch (e) { return finish(false, errorText(e)); }
    if (r !== null && typeof r === "object" && typeof r.then === "function") {
      return Promise.resolve(r).then((v) => finish(true, v), (e) => finish(false, errorText(e)));
    }
    return finish(true, r);
  };
  hidden("__switchyard_install", (fn, batch) => {
    const run = batch
      ? (input, metas) => {
          logs = [];
          let parsed;
          const metadata = (ev) => {
            if (parsed === undefined) parsed = JSON.parse(metas);
            const id = ev === null || ev === undefined ? undefined : (ev.messageId ?? ev.id);
            return (id !== undefined && id !== null && parsed[id]) || {};
          };
          return settle(() => fn(JSON.parse(input), metadata));
        }
      : (input, meta) => {
          logs = [];
          let parsed;
          const metadata = () => (parsed === undefined ? (parsed = JSON.parse(meta)) : parsed);
          return settle(() => fn(JSON.parse(input), metadata));
        };
    hidden("__switchyard_run", run);
  });
})();
"#;

/// What the runner answers, as JSON: the logs and either a result or an error.
#[derive(Deserialize)]
struct Reply {
    #[serde(default)]
    l: Vec<String>,
    #[serde(default)]
    r: Option<Value>,
    #[serde(default)]
    e: Option<String>,
}

/// Why a call failed.
enum Failure {
    TimeLimit,
    Memory,
    /// A throw, a bad return value: the runtime is fine.
    Code(String),
}

/// The deadline the interrupt handler checks, shared with it.
struct Clock {
    start: Instant,
    /// Nanoseconds since `start`; 0 = no deadline.
    deadline: AtomicU64,
    fired: AtomicBool,
}

impl Clock {
    fn arm(&self, limit: std::time::Duration) {
        self.fired.store(false, Ordering::Relaxed);
        let deadline = self.start.elapsed().saturating_add(limit).as_nanos().min(u64::MAX as u128) as u64;
        self.deadline.store(deadline.max(1), Ordering::Relaxed);
    }

    fn disarm(&self) -> bool {
        self.deadline.store(0, Ordering::Relaxed);
        self.fired.load(Ordering::Relaxed)
    }

    fn expired(&self) -> bool {
        let deadline = self.deadline.load(Ordering::Relaxed);
        if deadline != 0 && self.start.elapsed().as_nanos() as u64 > deadline {
            self.fired.store(true, Ordering::Relaxed);
            return true;
        }
        false
    }
}

/// A runtime with the code evaluated in it. Field order: the context goes before its runtime.
struct Engine {
    context: Context,
    _runtime: Runtime,
}

pub(super) struct JsTransform {
    code: String,
    limits: JsLimits,
    batch: bool,
    clock: Arc<Clock>,
    /// None after a call broke the runtime; rebuilt before the next call.
    engine: Option<Engine>,
}

fn is_memory_error(message: &str) -> bool {
    message.contains("out of memory")
}

fn describe(error: CaughtError<'_>) -> String {
    match error {
        CaughtError::Exception(exception) => {
            let message = exception.message().unwrap_or_default();
            let name = exception.get::<_, String>("name").unwrap_or_else(|_| "Error".to_owned());
            let head = if message.is_empty() { name } else { format!("{name}: {message}") };
            match exception.stack() {
                Some(stack) if !stack.trim().is_empty() => format!("{head}\n{}", stack.trim_end()),
                _ => head,
            }
        }
        CaughtError::Value(value) => match value.as_string().and_then(|s| s.to_string().ok()) {
            Some(text) => text,
            None => format!("a {} was thrown", value.type_name()),
        },
        CaughtError::Error(error) => error.to_string(),
    }
}

impl JsTransform {
    pub(super) fn compile(code: &str, limits: JsLimits) -> Result<Self, String> {
        let clock = Arc::new(Clock { start: Instant::now(), deadline: AtomicU64::new(0), fired: AtomicBool::new(false) });
        let (engine, batch) = build(code, limits, &clock)?;
        Ok(JsTransform { code: code.to_owned(), limits, batch, clock, engine: Some(engine) })
    }

    /// One call of the runner: `input` is the JSON of the message (or of the array of
    /// messages), `meta` the JSON of its metadata (or of the messageId → metadata map).
    fn call(&mut self, input: String, meta: String) -> (Result<Option<Value>, Failure>, Vec<String>) {
        if self.engine.is_none() {
            match build(&self.code, self.limits, &self.clock) {
                Ok((engine, _)) => self.engine = Some(engine),
                Err(message) => return (Err(Failure::Code(format!("the transformation could not be started again: {message}"))), Vec::new()),
            }
        }
        let engine = self.engine.as_ref().expect("built above");
        self.clock.arm(self.limits.time_limit);
        let raw: Result<String, String> = engine.context.with(|ctx| {
            let run: Function = ctx.globals().get("__switchyard_run").map_err(|e| e.to_string())?;
            let value: rquickjs::Value = run.call((input, meta)).catch(&ctx).map_err(describe)?;
            match value.as_promise() {
                Some(promise) => match promise.finish::<String>() {
                    Err(rquickjs::Error::WouldBlock) => Err("the transformation returned a promise that never settled".to_owned()),
                    other => other.catch(&ctx).map_err(describe),
                },
                None => value.get::<String>().map_err(|e| e.to_string()),
            }
        });
        let fired = self.clock.disarm();
        let text = match raw {
            _ if fired => return (Err(Failure::TimeLimit), Vec::new()),
            Ok(text) => text,
            Err(message) if is_memory_error(&message) => return (Err(Failure::Memory), Vec::new()),
            Err(message) => return (Err(Failure::Code(message)), Vec::new()),
        };
        let reply: Reply = match serde_json::from_str(&text) {
            Ok(reply) => reply,
            Err(e) => return (Err(Failure::Code(format!("the transformation's result could not be read: {e}"))), Vec::new()),
        };
        match reply.e {
            Some(message) if is_memory_error(&message) => (Err(Failure::Memory), reply.l),
            Some(message) => (Err(Failure::Code(message)), reply.l),
            None => (Ok(reply.r), reply.l),
        }
    }

    /// The reason for a failure, discarding the runtime when the failure may have broken it.
    fn reason(&mut self, failure: Failure) -> String {
        match failure {
            Failure::TimeLimit => {
                self.engine = None;
                format!("the transformation exceeded its time limit of {} ms", self.limits.time_limit.as_millis())
            }
            Failure::Memory => {
                self.engine = None;
                format!("the transformation exceeded its memory limit of {} bytes (out of memory)", self.limits.memory_bytes)
            }
            Failure::Code(message) => message,
        }
    }

    pub(super) fn run(&mut self, slots: &mut [Slot], destination_id: &str) {
        if self.batch {
            self.run_batch(slots, destination_id);
        } else {
            self.run_events(slots, destination_id);
        }
    }

    fn run_events(&mut self, slots: &mut [Slot], destination_id: &str) {
        for slot in slots.iter_mut().filter(|s| s.alive()) {
            let inputs = std::mem::take(&mut slot.events);
            for event in inputs {
                let message = crate::wire::to_message(&event);
                let meta = metadata(&event, destination_id).to_string();
                let (result, logs) = self.call(message.to_string(), meta);
                slot.logs.extend(logs);
                let returned = match result {
                    Ok(returned) => returned,
                    Err(failure) => {
                        fail(slot, self.reason(failure));
                        break;
                    }
                };
                match outputs(returned, "transformEvent") {
                    Ok(messages) => {
                        for message in messages {
                            match crate::wire::from_message(message, &event) {
                                Ok(out) => slot.events.push(out),
                                Err(e) => {
                                    fail(slot, format!("transformEvent returned an event that cannot be used: {e}"));
                                    break;
                                }
                            }
                        }
                    }
                    Err(message) => fail(slot, message),
                }
                if slot.failed.is_some() {
                    break;
                }
            }
        }
    }

    /// One `transformBatch` call over every live event. Outputs go back to the input whose
    /// `messageId` they carry (RudderStack's ordering rule); outputs without a known one go to
    /// the batch's last input. A throw fails every input of the batch (as RudderStack does);
    /// the call's logs go to the first.
    fn run_batch(&mut self, slots: &mut [Slot], destination_id: &str) {
        let mut originals: Vec<(usize, Value)> = Vec::new();
        for (index, slot) in slots.iter_mut().enumerate().filter(|(_, s)| s.alive()) {
            originals.extend(std::mem::take(&mut slot.events).into_iter().map(|e| (index, e)));
        }
        let Some(&(first_slot, _)) = originals.first() else { return };
        let mut input = String::from("[");
        let mut metas = serde_json::Map::new();
        let mut by_key: HashMap<String, usize> = HashMap::new();
        for (position, (_, event)) in originals.iter().enumerate() {
            let message = crate::wire::to_message(event);
            if position > 0 {
                input.push(',');
            }
            input.push_str(&message.to_string());
            if let Some(key) = message_key(&message) {
                by_key.entry(key.to_owned()).or_insert(position);
                metas.insert(key.to_owned(), metadata(event, destination_id));
            }
        }
        input.push(']');
        let (result, logs) = self.call(input, Value::Object(metas).to_string());
        slots[first_slot].logs.extend(logs);
        let returned = match result {
            Ok(Some(Value::Array(items))) => items,
            Ok(Some(other)) => {
                return fail_all(slots, &originals, &format!("transformBatch must return an array of events, it returned {}", kind_of(&other)))
            }
            Ok(None) => return fail_all(slots, &originals, "transformBatch must return an array of events, it returned null"),
            Err(failure) => {
                let reason = self.reason(failure);
                return fail_all(slots, &originals, &reason);
            }
        };
        let last = originals.len() - 1;
        for item in returned {
            if !item.is_object() {
                return fail_all(slots, &originals, &format!("transformBatch returned an array with a non-object element ({})", kind_of(&item)));
            }
            let position = message_key(&item).and_then(|k| by_key.get(k).copied()).unwrap_or(last);
            let (slot_index, original) = &originals[position];
            let slot = &mut slots[*slot_index];
            if slot.failed.is_some() {
                continue;
            }
            match crate::wire::from_message(item, original) {
                Ok(out) => slot.events.push(out),
                Err(e) => fail(slot, format!("transformBatch returned an event that cannot be used: {e}")),
            }
        }
    }
}

/// Builds a runtime, evaluates the prelude and the module, and installs the runner.
fn build(code: &str, limits: JsLimits, clock: &Arc<Clock>) -> Result<(Engine, bool), String> {
    let runtime = Runtime::new().map_err(|e| format!("cannot start the JavaScript runtime: {e}"))?;
    runtime.set_memory_limit(limits.memory_bytes);
    runtime.set_max_stack_size(512 << 10);
    let handler_clock = Arc::clone(clock);
    runtime.set_interrupt_handler(Some(Box::new(move || handler_clock.expired())));
    let context = Context::full(&runtime).map_err(|e| format!("cannot start the JavaScript runtime: {e}"))?;
    clock.arm(limits.time_limit);
    let result = context.with(|ctx| -> Result<bool, String> {
        ctx.eval::<(), _>(PRELUDE).catch(&ctx).map_err(describe)?;
        let module = Module::declare(ctx.clone(), "transformation", code).catch(&ctx).map_err(describe)?;
        let (module, promise) = module.eval().catch(&ctx).map_err(describe)?;
        match promise.finish::<()>() {
            Err(rquickjs::Error::WouldBlock) => return Err("the module's top-level code never finished".to_owned()),
            other => other.catch(&ctx).map_err(describe)?,
        }
        let namespace = module.namespace().map_err(|e| e.to_string())?;
        let event: rquickjs::Value = namespace.get("transformEvent").map_err(|e| e.to_string())?;
        let batch: rquickjs::Value = namespace.get("transformBatch").map_err(|e| e.to_string())?;
        let (function, is_batch) = match (event.is_function(), batch.is_function()) {
            (true, false) => (event, false),
            (false, true) => (batch, true),
            (true, true) => return Err("exports both transformEvent and transformBatch; export exactly one of them".to_owned()),
            (false, false) => {
                return Err("expected one of transformEvent, transformBatch: export function transformEvent(event, metadata) { … }".to_owned())
            }
        };
        let install: Function = ctx.globals().get("__switchyard_install").map_err(|e| e.to_string())?;
        install.call::<_, ()>((function, is_batch)).catch(&ctx).map_err(describe)?;
        Ok(is_batch)
    });
    let fired = clock.disarm();
    match result {
        _ if fired => Err(format!("the module's top-level code exceeded the time limit of {} ms", limits.time_limit.as_millis())),
        Err(message) if is_memory_error(&message) => Err(format!("the module exceeded the memory limit of {} bytes", limits.memory_bytes)),
        Err(message) => Err(message),
        Ok(batch) => Ok((Engine { context, _runtime: runtime }, batch)),
    }
}

/// What `metadata(event)` answers for an event, after RudderStack's fields: the project is
/// the source (and the workspace), its protocol the source type.
fn metadata(event: &Value, destination_id: &str) -> Value {
    let text = |key: &str| event.get(key).cloned().unwrap_or(Value::Null);
    let project = match event.get("project_id") {
        Some(Value::Number(n)) => Value::String(n.to_string()),
        Some(other) => other.clone(),
        None => Value::Null,
    };
    json!({
        "sourceId": project,
        "workspaceId": project,
        "sourceType": text("protocol"),
        "destinationId": destination_id,
        "messageId": text("id"),
        "eventName": text("event"),
        "eventType": text("type"),
        "receivedAt": text("received_at"),
    })
}

/// The id a message carries: RudderStack's `messageId`, else the unified event's `id`.
fn message_key(message: &Value) -> Option<&str> {
    message.get("messageId").or_else(|| message.get("id")).and_then(Value::as_str)
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// RudderStack's rules for what `transformEvent` returns: null/undefined drops, an object is
/// the event, an array of objects fans out (empty: dropped), anything else is an error.
fn outputs(returned: Option<Value>, function: &str) -> Result<Vec<Value>, String> {
    match returned {
        None => Ok(Vec::new()),
        Some(Value::Object(object)) => Ok(vec![Value::Object(object)]),
        Some(Value::Array(items)) => {
            if let Some(bad) = items.iter().find(|item| !item.is_object()) {
                return Err(format!("{function} returned an array with a non-object element ({})", kind_of(bad)));
            }
            Ok(items)
        }
        Some(other) => Err(format!("{function} must return an event object, an array of them, null or undefined; it returned {}", kind_of(&other))),
    }
}

fn fail(slot: &mut Slot, reason: String) {
    slot.events.clear();
    slot.failed = Some(reason);
}

fn fail_all(slots: &mut [Slot], originals: &[(usize, Value)], reason: &str) {
    for (index, _) in originals {
        let slot = &mut slots[*index];
        slot.events.clear();
        if slot.failed.is_none() {
            slot.failed = Some(reason.to_owned());
        }
    }
}

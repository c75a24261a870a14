//! Storage: the [`EventLog`] (durable, append-only, consumer cursors) and the [`ControlStore`]
//! (projects and keys), with their embedded SQLite implementations.

pub mod control;
pub mod log;

pub use control::{ControlError, ControlStore, ExplicitKeys, KeyKind, NewProjectKeys};
pub use log::{
    AppendBatch, AppendReceipt, EventLog, EventQuery, LogEntry, LogError, LogRecord,
    QuarantineEntry, QuarantineQuery, QuarantineRecord, SqliteLog, SqliteLogConfig,
};

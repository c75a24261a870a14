//! Storage: the [`EventLog`] (durable, append-only, consumer cursors) and the [`ControlStore`]
//! (projects and keys), with their embedded SQLite implementations.

pub mod control;
pub mod flags;
pub mod log;
pub mod persons;

pub use control::{ControlError, ControlStore, ExplicitKeys, KeyKind, KeyRef, NewProjectKeys};
pub use flags::{AuditEntry, StoredFlag};
pub use persons::{Group, Person};
pub use log::{
    AppendBatch, AppendReceipt, EventLog, EventQuery, LogEntry, LogError, LogRecord,
    CommitObserver, QuarantineEntry, QuarantineQuery, QuarantineRecord, ReadBatch, Selection, SqliteLog, SqliteLogConfig,
};

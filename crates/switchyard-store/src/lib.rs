//! Storage: the [`EventLog`] (durable, append-only, consumer cursors) and the [`ControlStore`]
//! (projects and keys), with their embedded SQLite implementations.

pub mod control;
pub mod destinations;
pub mod warehouses;
pub mod flags;
pub mod log;
pub mod model_prices;
pub mod persons;

pub use control::{
    check_key_value, ControlError, ControlStore, CreatedKey, ExplicitKeys, KeyInfo, KeyKind, KeyOrigin, KeyRef, NewProjectKeys,
    MIN_SECRET_KEY_CHARS,
};
pub use destinations::{DeadLetter, NewDeadLetter, StoredDestination};
pub use warehouses::StoredWarehouse;
pub use model_prices::StoredModelPrice;
pub use flags::{AuditEntry, FlagImport, ImportCounts, ImportedFlag, StoredFlag};
pub use persons::{AppliedEvents, Group, Person, PropertyLimits};
pub use log::{
    AppendBatch, AppendReceipt, EventLog, EventQuery, LogEntry, LogError, LogRecord,
    CommitObserver, QuarantineEntry, QuarantineQuery, QuarantineRecord, ReadBatch, SpanRecord, SPAN_CURSOR_PREFIX, RetentionObserver, RetentionPass, Selection, SqliteLog, SqliteLogConfig,
};

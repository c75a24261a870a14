//! The warehouse schema, pure (no I/O): from the unified [`switchyard_event::Event`] to typed
//! rows of RudderStack's warehouse tables (`tracks`, one table per track event, `identifies`,
//! `users`, `groups`, `pages`, `screens`, `aliases`, `rudder_discards`) and of the platform's
//! own tables (`event_logs`, `model_cost_logs`, `agent_trace_history`).
//!
//! - [`naming`]: table and column names as RudderStack makes them.
//! - [`flatten`]: properties, traits and context flattened to columns.
//! - [`types`]: type inference, the conflict rule, exact decimals.
//! - [`rows`]: the rows of one event.
//! - [`trace`]: the `agent_trace_history` fold, independent of event order.
//! - [`schema`]: the schema that grows as rows arrive, and the discards.

pub mod flatten;
pub mod naming;
pub mod parts;
pub mod rows;
pub mod schema;
pub mod trace;
pub mod types;

pub use naming::Dialect;
pub use rows::{rows_for, rows_of, Merge, Row};
pub use schema::{Discard, Schema};
pub use trace::TraceSummary;
pub use types::{ColumnType, Decimal};

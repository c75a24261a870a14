//! Consumers of the event log. The router: every enabled destination is a consumer with its own
//! durable cursor, filter → transform → map → batch → send → confirm → commit (see
//! `docs/routing.md`). The warehouse loaders: the embedded Parquet lake and PostgreSQL (see
//! `docs/warehouse.md`). The person processor.

pub mod destination;
pub mod lake;
pub mod outbound;
pub mod persons;
pub mod postgres;
pub mod retry;
pub mod router;
pub mod status;
pub mod transform;
pub mod wire;

pub use destination::{DestinationConfig, DestinationKind, DestinationSpec, InvalidField, Start};
pub use router::{Router, RouterConfig, RouterMetrics, Stores};
pub use status::LoadStatus;

/// The event bytes a warehouse loader's window holds at most (besides `max_events`): parsed
/// events and their rows take several times their JSON, and a window is held whole.
pub const WINDOW_BYTES: usize = 4 << 20;

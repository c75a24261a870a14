//! LLM analytics, pure (no I/O): PostHog's server-side enrichment of `$ai_generation` and
//! `$ai_embedding` events (ids as strings, normalized errors, tool calls, model parameters,
//! cost by PostHog's rules), the embedded price table and custom prices, and OTLP trace
//! export requests decoded into spans and mapped onto `$ai_*` events as PostHog maps them.

pub mod enrich;
pub mod otlp;
pub mod prices;
pub mod trace;

pub use enrich::{enrich, Enrichment};
pub use prices::{MatchKind, ModelPrice, PriceBook, PriceError, PriceMatch, Usd};

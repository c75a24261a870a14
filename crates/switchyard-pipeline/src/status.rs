//! What a warehouse loader (the lake's, PostgreSQL's) has done, for the API and metrics.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;

use serde_json::{json, Value};
use switchyard_event::model::format_time;

/// What a loader has done, for the API and metrics. Counters since start.
#[derive(Debug, Default)]
pub struct LoadStatus {
    /// Events loaded (readable log entries of committed windows).
    pub loaded_events: AtomicU64,
    /// Rows inserted or updated, discards included.
    pub loaded_rows: AtomicU64,
    /// `rudder_discards` rows written.
    pub discards: AtomicU64,
    /// Log entries that were not readable events, skipped.
    pub skipped: AtomicU64,
    /// Failures since the last window loaded (0 when healthy).
    pub failures: AtomicU64,
    /// The loader's cursor: the last log seq loaded.
    pub position: AtomicI64,
    pub last_error: Mutex<Option<String>>,
    /// RFC 3339.
    pub last_error_at: Mutex<Option<String>>,
    /// When a window was last committed, RFC 3339.
    pub last_load_at: Mutex<Option<String>>,
}

impl LoadStatus {
    pub fn snapshot(&self) -> Value {
        let text = |m: &Mutex<Option<String>>| m.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone();
        json!({
            "loaded_events": self.loaded_events.load(Ordering::Relaxed),
            "loaded_rows": self.loaded_rows.load(Ordering::Relaxed),
            "discards": self.discards.load(Ordering::Relaxed),
            "skipped": self.skipped.load(Ordering::Relaxed),
            "failures": self.failures.load(Ordering::Relaxed),
            "position": self.position.load(Ordering::Relaxed),
            "last_error": text(&self.last_error),
            "last_error_at": text(&self.last_error_at),
            "last_load_at": text(&self.last_load_at),
        })
    }

    pub fn set(slot: &Mutex<Option<String>>, value: String) {
        *slot.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(value);
    }

    /// A failed attempt: its error kept for the status, then counted (whoever sees the count
    /// sees the error).
    pub fn failed(&self, error: &dyn std::fmt::Display) {
        Self::set(&self.last_error, error.to_string());
        Self::set(&self.last_error_at, format_time(chrono::Utc::now()));
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// A committed window.
    pub fn loaded(&self, events: u64, rows: u64, discards: u64, skipped: u64, position: i64) {
        self.loaded_events.fetch_add(events, Ordering::Relaxed);
        self.loaded_rows.fetch_add(rows, Ordering::Relaxed);
        self.discards.fetch_add(discards, Ordering::Relaxed);
        self.skipped.fetch_add(skipped, Ordering::Relaxed);
        self.failures.store(0, Ordering::Relaxed);
        self.position.store(position, Ordering::Relaxed);
        Self::set(&self.last_load_at, format_time(chrono::Utc::now()));
    }
}


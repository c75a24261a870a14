//! The person processor: a consumer of the event log (cursor `persons`) that keeps persons
//! and groups in the control store. At-least-once: every update it applies is idempotent.

use std::sync::Arc;
use std::time::Duration;

use switchyard_event::Event;
use switchyard_store::{EventLog, LogEntry, PropertyLimits, Selection};
use tokio::sync::watch;

use crate::Stores;

/// The person processor's cursor in the event log.
pub const CONSUMER: &str = "persons";
const BATCH: usize = 2000;

/// What the processor reports back to the server.
pub struct PersonHooks {
    pub limits: PropertyLimits,
    /// Properties dropped at the limits.
    pub dropped: Box<dyn Fn(u64) + Send + Sync>,
    /// A project got a new group type (its flags must be reloaded).
    pub new_group_type: Box<dyn Fn(i64) -> anyhow::Result<()> + Send + Sync>,
}

/// Runs until `stop` turns true: reads the log after the committed cursor, applies the events,
/// commits the cursor.
pub async fn run(stores: Arc<dyn Stores>, hooks: Arc<PersonHooks>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let processed = match process_batch(&stores, &hooks).await {
            Ok(n) => n,
            Err(error) => {
                tracing::error!(%error, "person processor failed; retrying");
                0
            }
        };
        if processed < BATCH {
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

async fn process_batch(stores: &Arc<dyn Stores>, hooks: &Arc<PersonHooks>) -> anyhow::Result<usize> {
    let batch = stores.log().read(CONSUMER, BATCH, Selection::PersonUpdates).await?;
    let Some(position) = batch.position else { return Ok(0) };
    let read = batch.entries.len();
    // Parsing and the control store's work run on a blocking thread, never on the async
    // workers that serve requests.
    let (worker, hooks_) = (stores.clone(), hooks.clone());
    tokio::task::spawn_blocking(move || apply(worker.as_ref(), &hooks_, batch.entries)).await??;
    stores.log().commit(CONSUMER, position).await?;
    Ok(read)
}

/// Applies logged events to persons and groups (in small transactions, see
/// `ControlStore::apply_person_events`), then reloads the flags of projects with a new group type.
fn apply(stores: &dyn Stores, hooks: &PersonHooks, entries: Vec<LogEntry>) -> anyhow::Result<()> {
    let mut events = Vec::with_capacity(entries.len());
    for entry in &entries {
        match serde_json::from_str::<Event>(&entry.body) {
            Ok(event) => events.push(event),
            Err(error) => tracing::error!(seq = entry.seq, %error, "logged event is not readable; skipped by the person processor"),
        }
    }
    drop(entries);
    let limits = hooks.limits;
    let applied = stores.control().apply_person_events(&events, limits)?;
    if applied.dropped_properties > 0 {
        (hooks.dropped)(applied.dropped_properties);
        tracing::warn!(
            dropped = applied.dropped_properties,
            max_properties = limits.max_properties,
            max_bytes = limits.max_bytes,
            "properties dropped: persons or groups at their limits (limits.max_person_properties, limits.max_person_properties_bytes)"
        );
    }
    for project_id in applied.new_group_types {
        (hooks.new_group_type)(project_id)?;
    }
    Ok(())
}

//! The durable event log, and its embedded SQLite implementation.
//!
//! # Group commit
//!
//! One writer thread owns the only writing SQLite connection. Intake tasks send it
//! [`AppendBatch`]es over a bounded channel and wait for the answer. The writer takes the first
//! waiting batch, then every other batch already queued (up to `max_txn_events` events), writes
//! them all in **one** transaction and commits it. In WAL mode with `synchronous=FULL` the
//! commit syncs the WAL (`fdatasync`: the bundled SQLite is built with `HAVE_FDATASYNC`, see
//! `.cargo/config.toml`), so when the commit returns the events are on disk; only then is each
//! waiting request answered. While one commit's sync runs, the next requests queue up and share
//! the next transaction: the cost of a sync (hundreds of microseconds) is paid once per group,
//! not per request.
//!
//! # Invariants
//!
//! - A batch is answered `Ok` only after the transaction holding it committed (durable).
//! - A batch that fails (disk full, size cap, I/O error) is answered with the error and none of
//!   its events or quarantine records are visible: they share the transaction.
//! - The channel is bounded: when it is full, `append` fails at once with
//!   [`LogError::Overloaded`] instead of buffering without bound.
//! - Closing drains: every batch queued before [`SqliteLog::close`] is committed or answered
//!   with an error before the writer exits.
//!
//! # Staying bounded
//!
//! - A quarantined raw form longer than `quarantine_raw_bytes` keeps its first bytes, its size
//!   and SHA-256 (`cut_quarantined`, in `append`, whoever built the record).
//! - The size cap counts every database of the data directory (see `SizeCap`).
//! - Retention deletes old rows, events only behind every consumer's cursor, from the log's
//!   start, never its newest row (see `retention_pass`).
//! - Inspection queries stop at a byte budget (`max_bytes`).
//!
//! # Restart
//!
//! Nothing is kept in memory that SQLite does not have: on restart the log is the database.
//! SQLite's WAL recovery discards a transaction whose commit did not reach the disk, and such a
//! transaction's requests were never answered.

use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension};
use switchyard_event::Accepted;
use tokio::sync::{mpsc, oneshot};

pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One event ready to be written: the indexed columns plus the JSON of the rest of the event
/// (see [`switchyard_event::stored`]; a body that still holds the column members is kept and
/// read back as it is). Built (and serialized) by the caller, so the writer thread only writes.
#[derive(Debug, Clone)]
pub struct LogRecord {
    pub id: String,
    pub project_id: i64,
    pub kind: &'static str,
    pub event: String,
    pub distinct_id: String,
    pub trace_id: Option<String>,
    pub timestamp: String,
    pub received_at: String,
    pub body: String,
    /// Whether the person processor needs this event (see [`Selection::PersonUpdates`]).
    pub person_update: bool,
}

impl LogRecord {
    pub fn from_accepted(event: Accepted, person_update: bool) -> Self {
        LogRecord {
            id: event.id,
            project_id: event.project_id,
            kind: event.kind.as_str(),
            event: event.event,
            distinct_id: event.distinct_id,
            trace_id: event.trace_id,
            timestamp: event.timestamp,
            received_at: event.received_at,
            body: event.body,
            person_update,
        }
    }
}

/// An invalid event kept with its reason and raw form. A raw form longer than
/// [`SqliteLogConfig::quarantine_raw_bytes`] is kept as its first bytes, with its size and
/// SHA-256 beside them (done by [`SqliteLog`]'s `append`, whoever built the record).
#[derive(Debug, Clone)]
pub struct QuarantineRecord {
    pub project_id: i64,
    pub protocol: &'static str,
    pub received_at: String,
    /// Stable reason code (`missing_distinct_id`, `event_too_large`, …).
    pub code: String,
    pub reason: String,
    /// The event as received (JSON text).
    pub raw: String,
}

/// What one request appends: its valid events, its quarantined ones and its spans (OTLP),
/// committed together.
#[derive(Debug, Default)]
pub struct AppendBatch {
    pub events: Vec<LogRecord>,
    pub quarantined: Vec<QuarantineRecord>,
    pub spans: Vec<SpanRecord>,
}

/// A span taken in over OTLP: its indexed columns and its JSON.
#[derive(Debug, Clone)]
pub struct SpanRecord {
    pub project_id: i64,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: Option<String>,
    pub name: String,
    /// RFC 3339, UTC.
    pub start_time: String,
    pub end_time: String,
    pub received_at: String,
    pub body: String,
}

impl AppendBatch {
    pub fn len(&self) -> usize {
        self.events.len() + self.quarantined.len() + self.spans.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[derive(Debug, Clone)]
pub struct AppendReceipt {
    /// Sequence number of the last event appended (if any).
    pub last_seq: Option<i64>,
    /// How many events the committing transaction held, this batch's and others'.
    pub transaction_events: usize,
}

/// Which logged events a consumer reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    All,
    /// Only events marked as changing persons or groups at append (a JetStream or Kafka log
    /// would put them on their own subject or topic).
    PersonUpdates,
    /// Only one project's events (a destination's).
    Project(i64),
}

/// Cursors named so are positions in the spans, not the events (consumers of spans: `otlp`
/// destinations); event retention ignores them, span retention honours them.
pub const SPAN_CURSOR_PREFIX: &str = "spans:";

/// What a consumer read: the entries, and the position to commit once they are processed
/// (past entries the selection skipped).
#[derive(Debug, Clone, Default)]
pub struct ReadBatch {
    pub entries: Vec<LogEntry>,
    pub position: Option<i64>,
}

/// A logged event, read back.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub seq: i64,
    /// The event's JSON: its columns' members and its stored body's (see
    /// [`switchyard_event::stored`]).
    pub body: String,
}

/// What [`log_entry`] reads.
const ENTRY_COLUMNS: &str = "seq, id, project_id, type, event, distinct_id, timestamp, received_at, trace_id, body";

/// A row of `SELECT {ENTRY_COLUMNS}`, its event put back together from columns and body.
fn log_entry(r: &rusqlite::Row<'_>) -> rusqlite::Result<LogEntry> {
    // The columns are borrowed from the row: only the event's JSON is allocated.
    let text = |i: usize| -> rusqlite::Result<&str> { Ok(r.get_ref(i)?.as_str()?) };
    let columns = switchyard_event::stored::Columns {
        id: text(1)?,
        project_id: r.get(2)?,
        kind: text(3)?,
        event: text(4)?,
        distinct_id: text(5)?,
        timestamp: text(6)?,
        received_at: text(7)?,
        trace_id: r.get_ref(8)?.as_str_or_null()?,
    };
    Ok(LogEntry { seq: r.get(0)?, body: switchyard_event::stored::event_json(&columns, r.get(9)?) })
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum LogError {
    #[error("the event log is over capacity: too many appends waiting")]
    Overloaded,
    #[error("the event log is full: no space left for new events")]
    Full,
    #[error("the event log is closed")]
    Closed,
    #[error("event log storage error: {0}")]
    Storage(String),
}

impl LogError {
    /// Seconds a client should wait before retrying.
    pub fn retry_after_secs(&self) -> u64 {
        match self {
            LogError::Overloaded => 1,
            LogError::Full => 30,
            LogError::Closed | LogError::Storage(_) => 5,
        }
    }
}

impl From<rusqlite::Error> for LogError {
    fn from(e: rusqlite::Error) -> Self {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DiskFull) => LogError::Full,
            _ => LogError::Storage(e.to_string()),
        }
    }
}

/// The event log. Implementations: [`SqliteLog`] (embedded); NATS JetStream or Kafka later.
/// Async and batch-oriented; readers are consumers with a durable cursor they commit explicitly.
pub trait EventLog: Send + Sync {
    /// Appends a batch; resolves only once it is durable.
    fn append(&self, batch: AppendBatch) -> BoxFuture<'_, Result<AppendReceipt, LogError>>;
    /// Reads up to `max` selected entries after `consumer`'s committed cursor.
    fn read<'a>(&'a self, consumer: &'a str, max: usize, selection: Selection) -> BoxFuture<'a, Result<ReadBatch, LogError>>;
    /// Durably moves `consumer`'s cursor to `position` (the last seq it has processed).
    fn commit<'a>(&'a self, consumer: &'a str, position: i64) -> BoxFuture<'a, Result<(), LogError>>;
}

/// Filters for the inspection API. Results are newest first (by log order).
#[derive(Debug, Clone, Default)]
pub struct EventQuery {
    pub project_id: i64,
    pub event: Option<String>,
    pub distinct_id: Option<String>,
    pub trace_id: Option<String>,
    /// Event timestamps, normalized with `format_time`.
    pub after: Option<String>,
    pub before: Option<String>,
    /// Only entries with a seq below this (pagination cursor).
    pub before_seq: Option<i64>,
    pub limit: usize,
    /// Stop adding results once their bodies add up to this many bytes (the one that passes it
    /// included, so a page always makes progress). None: only `limit` bounds the answer.
    pub max_bytes: Option<usize>,
}

#[derive(Debug, Clone, Default)]
pub struct QuarantineQuery {
    pub project_id: i64,
    pub code: Option<String>,
    pub before_seq: Option<i64>,
    pub limit: usize,
    /// As [`EventQuery::max_bytes`], counting the raw forms.
    pub max_bytes: Option<usize>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct QuarantineEntry {
    pub seq: i64,
    pub protocol: String,
    pub received_at: String,
    pub code: String,
    pub reason: String,
    /// The raw form, or its first bytes when `raw_sha256` is set.
    pub raw: String,
    /// The raw form's size in bytes, when only its first bytes were kept.
    pub raw_size: Option<i64>,
    /// The whole raw form's SHA-256 (hex), when only its first bytes were kept.
    pub raw_sha256: Option<String>,
}

impl QuarantineEntry {
    /// Whether only the first bytes of the raw form were kept.
    pub fn raw_truncated(&self) -> bool {
        self.raw_sha256.is_some()
    }
}

/// What one retention pass deleted (see [`SqliteLogConfig::retention`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RetentionPass {
    pub events: u64,
    pub quarantine: u64,
    pub spans: u64,
}

/// Called after every retention pass with what it deleted (zeros included), for metrics.
#[derive(Clone)]
pub struct RetentionObserver(pub Arc<dyn Fn(RetentionPass) + Send + Sync>);

impl std::fmt::Debug for RetentionObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RetentionObserver")
    }
}

/// Called by the writer after every committed transaction with the number of events
/// (valid and quarantined) it held: how well group commit is grouping, for metrics.
#[derive(Clone)]
pub struct CommitObserver(pub Arc<dyn Fn(usize) + Send + Sync>);

impl std::fmt::Debug for CommitObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CommitObserver")
    }
}

/// Settings of the embedded log.
#[derive(Debug, Clone)]
pub struct SqliteLogConfig {
    /// Appends (requests) that may wait for the writer before new ones get `Overloaded`.
    pub queue_capacity: usize,
    /// Most events one transaction groups.
    pub max_txn_events: usize,
    /// Largest size of everything the data directory's databases hold: the log's database and
    /// WAL, the trace index's database and WAL, and `counted_files` (with their WALs), all by
    /// their size on disk. Appends that would pass it fail with `Full` (see `SizeCap`).
    pub max_size_bytes: Option<u64>,
    /// Other databases whose files (and `-wal` files) count against `max_size_bytes`: the
    /// control store's.
    pub counted_files: Vec<std::path::PathBuf>,
    /// Longest raw form a quarantine row keeps whole; a longer one keeps its first bytes (cut
    /// at a character boundary), its size and SHA-256.
    pub quarantine_raw_bytes: usize,
    /// Delete events and quarantine rows received longer ago than this, once every consumer's
    /// cursor is past them (see `retention_loop`). None: keep everything.
    pub retention: Option<Duration>,
    /// Time between retention passes.
    pub retention_interval: Duration,
    /// Most rows one retention transaction deletes.
    pub retention_batch: usize,
    /// Consumers that must have read an event before retention deletes it even before their
    /// first commit (a missing cursor is position 0). Every cursor in the log counts besides,
    /// and the trace index's.
    pub retention_consumers: Vec<String>,
    /// Told about every retention pass.
    pub on_retention: Option<RetentionObserver>,
    /// WAL length in frames (pages) at which the WAL is started over (see `checkpoint_loop`).
    pub restart_wal_frames: i64,
    /// Told about every committed transaction that held events.
    pub on_commit: Option<CommitObserver>,
    /// How much of the database file's end stays in the OS page cache after a checkpoint pass
    /// (see `release_cached_pages`).
    pub cached_tail_bytes: u64,
}

impl Default for SqliteLogConfig {
    fn default() -> Self {
        SqliteLogConfig {
            queue_capacity: 4096,
            max_txn_events: 20_000,
            max_size_bytes: None,
            counted_files: Vec::new(),
            quarantine_raw_bytes: QUARANTINE_RAW_BYTES,
            retention: None,
            retention_interval: Duration::from_secs(60),
            retention_batch: 5_000,
            retention_consumers: Vec::new(),
            on_retention: None,
            restart_wal_frames: RESTART_WAL_FRAMES,
            on_commit: None,
            cached_tail_bytes: CACHED_TAIL_BYTES,
        }
    }
}

/// Default longest raw form a quarantine row keeps whole: 64 KiB.
pub const QUARANTINE_RAW_BYTES: usize = 64 << 10;

/// What is kept of a raw form cut to its first bytes: its whole size and SHA-256 (hex).
struct RawDigest {
    size: i64,
    sha256: String,
}

/// Cuts every quarantined raw form of `batch` longer than `max` bytes to its first bytes (at
/// a character boundary), returning each record's digest (None: kept whole).
fn cut_quarantined(batch: &mut AppendBatch, max: usize) -> Vec<Option<RawDigest>> {
    use sha2::{Digest, Sha256};
    batch
        .quarantined
        .iter_mut()
        .map(|q| {
            if q.raw.len() <= max {
                return None;
            }
            let digest = Sha256::digest(q.raw.as_bytes()).iter().map(|b| format!("{b:02x}")).collect();
            let size = q.raw.len() as i64;
            let mut end = max;
            while !q.raw.is_char_boundary(end) {
                end -= 1;
            }
            q.raw.truncate(end);
            q.raw.shrink_to_fit();
            Some(RawDigest { size, sha256: digest })
        })
        .collect()
}

enum WriteOp {
    /// Answered with the batch itself, so that the appending task frees its events (on its
    /// own thread, where the allocator frees fastest) and the writer goes on to the next group.
    /// With the digests of the quarantined raw forms that were cut (see `cut_quarantined`).
    Append(AppendBatch, Vec<Option<RawDigest>>, oneshot::Sender<Result<(AppendReceipt, AppendBatch), LogError>>),
    Commit(String, i64, oneshot::Sender<Result<(), LogError>>),
    /// Removes a consumer's cursor (it no longer holds retention back).
    Forget(String, oneshot::Sender<Result<(), LogError>>),
    /// From the checkpoint thread: the WAL is long and mostly copied back; checkpoint the
    /// rest between two groups, so the next transaction starts the WAL over. The checkpoint
    /// thread waits for the answer, so the two checkpoints never collide.
    RestartWal(std::sync::mpsc::Sender<()>),
}

/// The trace index's position in the log, kept among the consumer cursors.
const TRACE_INDEX_CURSOR: &str = "$trace_index";
/// The trace index is kept per block of 2^16 events of the log (see `index_traces`).
const TRACE_BLOCK_BITS: i64 = 16;
/// Most events one trace-index pass takes. An indexer that is behind runs passes back to back
/// until it has caught up.
const TRACE_INDEX_BATCH: i64 = 5_000;

/// Default WAL length (in frames, i.e. pages) at which the writer is asked to restart the WAL:
/// 256 MiB with 16 KiB pages.
const RESTART_WAL_FRAMES: i64 = 16_384;

/// The embedded event log: one SQLite database in WAL mode with group commit.
pub struct SqliteLog {
    sender: Mutex<Option<mpsc::Sender<WriteOp>>>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// The checkpoint and trace index threads, each with the sender that stops it.
    background: Mutex<Vec<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    path: std::path::PathBuf,
    quarantine_raw_bytes: usize,
    /// The database file, which the checkpoint thread syncs after its passes. Declared last so
    /// it closes after every connection: closing any descriptor of a file drops the process's
    /// POSIX locks on it, SQLite's included.
    _db_file: Arc<std::fs::File>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    id TEXT NOT NULL,
    project_id INTEGER NOT NULL,
    type TEXT NOT NULL,
    event TEXT NOT NULL,
    distinct_id TEXT NOT NULL,
    trace_id TEXT,
    timestamp TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body TEXT NOT NULL,
    person_update INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS events_person_updates ON events (seq) WHERE person_update = 1;
-- Trace lookups live in their own database (TRACE_INDEX_SCHEMA).
DROP INDEX IF EXISTS events_trace;
CREATE TABLE IF NOT EXISTS quarantine (
    seq INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL,
    protocol TEXT NOT NULL,
    received_at TEXT NOT NULL,
    code TEXT NOT NULL,
    reason TEXT NOT NULL,
    raw TEXT NOT NULL,
    -- Set when `raw` holds only the first bytes of the raw form: its size and SHA-256.
    raw_size INTEGER,
    raw_sha256 TEXT
);
CREATE TABLE IF NOT EXISTS cursors (
    consumer TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS spans (
    seq INTEGER PRIMARY KEY,
    project_id INTEGER NOT NULL,
    trace_id TEXT NOT NULL,
    span_id TEXT NOT NULL,
    parent_span_id TEXT,
    name TEXT NOT NULL,
    start_time TEXT NOT NULL,
    end_time TEXT NOT NULL,
    received_at TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_trace ON spans (project_id, trace_id);
-- This log's identity (random, made once), so that what is derived from it elsewhere (the trace
-- index) can tell whether it was derived from this log.
CREATE TABLE IF NOT EXISTS log_identity (
    id TEXT NOT NULL
);
INSERT INTO log_identity (id) SELECT lower(hex(randomblob(16))) WHERE NOT EXISTS (SELECT 1 FROM log_identity);
";

/// The trace index's database, beside the log's: derived from the log, filled behind it by
/// the trace index thread (see `index_traces`), and rebuilt from the log if it is lost or was
/// built from another log (see `drop_trace_index_of_another_log`).
const TRACE_INDEX_SCHEMA: &str = "
-- Per block of the log (`block` = seq >> TRACE_BLOCK_BITS), so a pass writes into one block;
-- one row per agent run per pass: the seqs of its events as a JSON array, `first_seq` the least.
CREATE TABLE IF NOT EXISTS trace_runs (
    project_id INTEGER NOT NULL,
    block INTEGER NOT NULL,
    trace_id TEXT NOT NULL,
    first_seq INTEGER NOT NULL,
    seqs TEXT NOT NULL,
    PRIMARY KEY (project_id, block, trace_id, first_seq)
) WITHOUT ROWID;
-- The index's position in the log (TRACE_INDEX_CURSOR).
CREATE TABLE IF NOT EXISTS cursors (
    consumer TEXT PRIMARY KEY,
    position INTEGER NOT NULL
);
-- The identity of the log the index was built from (the log's `log_identity`).
CREATE TABLE IF NOT EXISTS built_from (
    log_id TEXT NOT NULL
);
";

/// Quarantine tables made before raw forms were cut get the columns that describe a cut one.
fn migrate_quarantine(conn: &Connection) -> Result<(), LogError> {
    let has_digest: bool =
        conn.query_row("SELECT count(*) FROM pragma_table_info('quarantine') WHERE name = 'raw_sha256'", [], |r| r.get(0))?;
    if !has_digest {
        conn.execute_batch(
            "BEGIN; ALTER TABLE quarantine ADD COLUMN raw_size INTEGER; ALTER TABLE quarantine ADD COLUMN raw_sha256 TEXT; COMMIT;",
        )?;
    }
    Ok(())
}

/// Where the trace index of the log at `path` is kept: `events.db` → `events.traces.db`.
pub fn trace_index_path(path: &Path) -> std::path::PathBuf {
    path.with_extension("traces.db")
}

/// A reader of the log, with the trace index attached as `traces`.
fn open_reader(path: &Path) -> Result<Connection, LogError> {
    let conn = open_connection(path)?;
    conn.execute("ATTACH DATABASE ?1 AS traces", [trace_index_path(path).to_string_lossy()])?;
    Ok(conn)
}

/// The trace index thread's connection: the index's database, creating its tables, with the
/// log attached as `log` (read only: its transactions write the index alone, so they never
/// take the log's write lock).
fn open_trace_indexer(path: &Path) -> Result<Connection, LogError> {
    let conn = open_connection(&trace_index_path(path))?;
    // Derived data: a power loss may take the last passes back, position and entries alike.
    conn.pragma_update(None, "synchronous", "NORMAL")?;
    conn.execute_batch(TRACE_INDEX_SCHEMA)?;
    conn.execute("ATTACH DATABASE ?1 AS log", [path.to_string_lossy()])?;
    Ok(conn)
}

/// The writer's busy handler. The writer waits only for readers: a WAL restart waits until no
/// reader holds an older snapshot. Readers here are short (an index pass, a consumer's read, an
/// API query: milliseconds), so it checks again every 100 µs, where SQLite's default handler
/// sleeps 1, 2, 5, 10, 15, 20, 25… ms (a reader that ended after 3.1 ms cost 8 ms). Gives up
/// after about 5 s, like the other connections' busy timeout.
fn writer_busy(attempts: i32) -> bool {
    const STEP: Duration = Duration::from_micros(100);
    std::thread::sleep(STEP);
    attempts < 50_000
}

fn open_connection(path: &Path) -> Result<Connection, LogError> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // Bigger pages: fewer WAL frames (and write calls) per group commit. Only takes effect
    // when the database is created.
    conn.pragma_update(None, "page_size", 16384)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: every commit syncs the WAL, so a committed transaction survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

impl SqliteLog {
    /// Opens (creating if needed) the log at `path` and starts its writer thread.
    pub fn open(path: &Path, config: SqliteLogConfig) -> Result<Self, LogError> {
        let conn = open_connection(path)?;
        conn.execute_batch(SCHEMA)?;
        migrate_quarantine(&conn)?;
        let mut indexer = open_trace_indexer(path)?;
        migrate_trace_index(&mut indexer)?;
        drop_trace_index_of_another_log(&mut indexer)?;
        let mut restart_wal_frames = config.restart_wal_frames.max(1);
        let size_cap = match config.max_size_bytes {
            Some(max_bytes) => {
                let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
                // The WALs count against the cap by their files' size: each is started over (and
                // its file cut back) at an eighth of the cap, so that they take about that much.
                let wal_bytes = (max_bytes / 8).clamp(16 * page_size as u64, (RESTART_WAL_FRAMES * page_size) as u64);
                restart_wal_frames = restart_wal_frames.min(wal_bytes as i64 / page_size);
                conn.pragma_update(None, "journal_size_limit", wal_bytes as i64)?;
                indexer.pragma_update(None, "wal_autocheckpoint", (wal_bytes as i64 / page_size / 4).clamp(16, 1000))?;
                indexer.pragma_update(None, "journal_size_limit", (wal_bytes / 4) as i64)?;
                let mut others = vec![wal_path(path), trace_index_path(path), wal_path(&trace_index_path(path))];
                for file in &config.counted_files {
                    others.push(file.clone());
                    others.push(wal_path(file));
                }
                Some(SizeCap { max_bytes, page_size: page_size as u64, wal: wal_path(path), wal_limit: wal_bytes, others, pages: None })
            }
            None => None,
        };
        let mut readers = Vec::new();
        for _ in 0..2 {
            readers.push(open_reader(path)?);
        }
        // Checkpoints (copying the WAL back into the database) run on their own thread and
        // connection, PASSIVE, so group commits do not wait for them (see `checkpoint_loop`).
        // SQLite's own checkpoint after a commit is only a backstop, far past the point where
        // the background thread asks the writer to restart the WAL.
        let cached_tail_bytes = config.cached_tail_bytes;
        conn.pragma_update(None, "wal_autocheckpoint", 4 * restart_wal_frames)?;
        let (sender, receiver) = mpsc::channel(config.queue_capacity.max(1));
        let checkpoint_conn = open_connection(path)?;
        let db_file = Arc::new(
            std::fs::File::open(path).map_err(|e| LogError::Storage(format!("cannot open {}: {e}", path.display())))?,
        );
        let (stop_checkpoints, checkpoint_stop) = std::sync::mpsc::channel::<()>();
        let checkpointer = {
            let writer = sender.clone();
            let db_file = db_file.clone();
            std::thread::Builder::new()
                .name("event-log-checkpoint".into())
                .spawn(move || {
                    checkpoint_loop(checkpoint_conn, &db_file, checkpoint_stop, writer, restart_wal_frames, cached_tail_bytes)
                })
                .map_err(|e| LogError::Storage(e.to_string()))?
        };
        let (stop_indexing, indexing_stop) = std::sync::mpsc::channel::<()>();
        let trace_indexer = std::thread::Builder::new()
            .name("event-log-traces".into())
            .spawn(move || trace_index_loop(indexer, indexing_stop))
            .map_err(|e| LogError::Storage(e.to_string()))?;
        conn.busy_handler(Some(writer_busy))?;
        let max_txn_events = config.max_txn_events.max(1);
        let writer = std::thread::Builder::new()
            .name("event-log-writer".into())
            .spawn(move || writer_loop(conn, receiver, max_txn_events, size_cap, config.on_commit))
            .map_err(|e| LogError::Storage(e.to_string()))?;
        let mut background = vec![(stop_checkpoints, checkpointer), (stop_indexing, trace_indexer)];
        if let Some(retention) = config.retention {
            let settings = Retention {
                retention,
                interval: config.retention_interval,
                batch: config.retention_batch.max(1),
                consumers: config.retention_consumers,
                observer: config.on_retention,
            };
            let conn = open_reader(path)?;
            // Deletions need not survive a power loss: the next pass deletes again.
            conn.pragma_update(None, "synchronous", "NORMAL")?;
            let (stop_retention, retention_stop) = std::sync::mpsc::channel::<()>();
            let thread = std::thread::Builder::new()
                .name("event-log-retention".into())
                .spawn(move || retention_loop(conn, settings, retention_stop))
                .map_err(|e| LogError::Storage(e.to_string()))?;
            background.push((stop_retention, thread));
        }
        Ok(SqliteLog {
            sender: Mutex::new(Some(sender)),
            writer: Mutex::new(Some(writer)),
            background: Mutex::new(background),
            readers: Arc::new(Mutex::new(readers)),
            path: path.to_owned(),
            quarantine_raw_bytes: config.quarantine_raw_bytes,
            _db_file: db_file,
        })
    }

    fn sender(&self) -> Result<mpsc::Sender<WriteOp>, LogError> {
        self.sender.lock().expect("sender lock").clone().ok_or(LogError::Closed)
    }

    /// Stops taking appends, commits every queued one, and waits for the writer to exit.
    pub async fn close(&self) {
        let background = std::mem::take(&mut *self.background.lock().expect("background lock"));
        for (stop, thread) in background {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        self.readers.lock().expect("readers lock").clear();
        drop(self.sender.lock().expect("sender lock").take());
        let writer = self.writer.lock().expect("writer lock").take();
        if let Some(writer) = writer {
            let _ = tokio::task::spawn_blocking(move || writer.join()).await;
        }
    }

    async fn with_reader<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, LogError> + Send + 'static,
    ) -> Result<T, LogError> {
        let readers = self.readers.clone();
        let path = self.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers.lock().expect("readers lock").pop();
            let conn = match conn {
                Some(conn) => conn,
                None => open_reader(&path)?,
            };
            let result = f(&conn);
            readers.lock().expect("readers lock").push(conn);
            result
        })
        .await
        .map_err(|e| LogError::Storage(e.to_string()))?
    }

    /// Up to `max` spans of `project_id` after `consumer`'s cursor (a [`SPAN_CURSOR_PREFIX`]
    /// name), as entries (seq, the span's JSON), and the position to commit.
    pub async fn read_spans(&self, consumer: &str, max: usize, project_id: i64) -> Result<ReadBatch, LogError> {
        let consumer = consumer.to_owned();
        self.with_reader(move |conn| {
            let conn = conn.unchecked_transaction()?;
            let position = cursor_position(&conn, &consumer)?;
            let mut stmt = conn.prepare_cached("SELECT seq, body FROM spans WHERE project_id = ?1 AND seq > ?2 ORDER BY seq LIMIT ?3")?;
            let entries = stmt
                .query_map(params![project_id, position, max as i64], |r| Ok(LogEntry { seq: r.get(0)?, body: r.get(1)? }))?
                .collect::<Result<Vec<_>, _>>()?;
            let position = position_after(&conn, "spans", position, &entries, max, true)?;
            drop(stmt);
            conn.commit()?;
            Ok(ReadBatch { entries, position })
        })
        .await
    }

    /// The last position among the spans (0 when there are none).
    pub async fn spans_end(&self) -> Result<i64, LogError> {
        self.with_reader(|conn| Ok(conn.query_row("SELECT coalesce(max(seq), 0) FROM spans", [], |r| r.get(0))?)).await
    }

    /// [`SqliteLog::lag`] for a consumer of spans.
    pub async fn spans_lag(&self, consumer: &str, project_id: i64) -> Result<(i64, Option<String>), LogError> {
        self.lag_in("spans", consumer, project_id).await
    }

    /// How far `consumer` is behind in `table` (`events` or `spans`), see [`SqliteLog::lag`].
    /// [`EventLog::read`], and no more entries once their bodies add up to `max_bytes` (the one
    /// that passes it included, so a read always makes progress): a consumer that holds a
    /// window in memory (a warehouse loader) stays bounded however large the events are.
    pub async fn read_bounded(&self, consumer: &str, max: usize, max_bytes: usize, selection: Selection) -> Result<ReadBatch, LogError> {
        let consumer = consumer.to_owned();
        self.with_reader(move |conn| {
            // One snapshot for both queries, so nothing committed in between is skipped.
            let conn = conn.unchecked_transaction()?;
            let position = cursor_position(&conn, &consumer)?;
            let (filter, project) = match selection {
                Selection::All => ("", None),
                Selection::PersonUpdates => ("person_update = 1 AND", None),
                Selection::Project(id) => ("project_id = ?3 AND", Some(id)),
            };
            let sql = format!("SELECT {ENTRY_COLUMNS} FROM events WHERE {filter} seq > ?1 ORDER BY seq LIMIT ?2");
            let mut stmt = conn.prepare_cached(&sql)?;
            let mut rows = match project {
                Some(id) => stmt.query(params![position, max as i64, id])?,
                None => stmt.query(params![position, max as i64])?,
            };
            let (mut entries, mut bytes, mut full) = (Vec::new(), 0usize, false);
            while let Some(row) = rows.next()? {
                let entry = log_entry(row)?;
                bytes = bytes.saturating_add(entry.body.len());
                entries.push(entry);
                if bytes >= max_bytes {
                    full = true;
                    break;
                }
            }
            drop(rows);
            let position = if full { entries.last().map(|e| e.seq) } else { position_after(&conn, "events", position, &entries, max, selection != Selection::All)? };
            drop(stmt);
            conn.commit()?;
            Ok(ReadBatch { entries, position })
        })
        .await
    }

    async fn lag_in(&self, table: &'static str, consumer: &str, project_id: i64) -> Result<(i64, Option<String>), LogError> {
        let consumer = consumer.to_owned();
        self.with_reader(move |conn| {
            let position = cursor_position(conn, &consumer)?;
            let end: i64 = conn.query_row(&format!("SELECT coalesce(max(seq), 0) FROM {table}"), [], |r| r.get(0))?;
            let oldest: Option<String> = conn
                .query_row(
                    &format!("SELECT received_at FROM {table} WHERE seq > ?1 AND project_id = ?2 ORDER BY seq LIMIT 1"),
                    params![position, project_id],
                    |r| r.get(0),
                )
                .optional()?;
            Ok(((end - position).max(0), oldest))
        })
        .await
    }

    /// The spans of one trace, by start time (their JSON).
    pub async fn trace_spans(&self, project_id: i64, trace_id: &str, limit: usize) -> Result<Vec<String>, LogError> {
        let trace_id = trace_id.to_owned();
        self.with_reader(move |conn| {
            let mut stmt =
                conn.prepare_cached("SELECT body FROM spans WHERE project_id = ?1 AND trace_id = ?2 ORDER BY start_time, seq LIMIT ?3")?;
            let rows = stmt.query_map(params![project_id, trace_id, limit as i64], |r| r.get(0))?.collect::<Result<Vec<String>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// The trace ids of the newest spans (up to `scan` of them), newest first, distinct, with
    /// when their newest span was received.
    pub async fn recent_span_traces(&self, project_id: i64, scan: usize) -> Result<Vec<(String, String)>, LogError> {
        self.with_reader(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT trace_id, max(received_at) FROM (SELECT trace_id, seq, received_at FROM spans WHERE project_id = ?1 ORDER BY seq DESC LIMIT ?2)
                 GROUP BY trace_id ORDER BY max(seq) DESC",
            )?;
            let rows = stmt.query_map(params![project_id, scan as i64], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<Result<Vec<_>, _>>()?;
            Ok(rows)
        })
        .await
    }

    /// Removes `consumer`'s cursor, so it no longer holds retention back (a deleted destination).
    pub async fn forget(&self, consumer: &str) -> Result<(), LogError> {
        let sender = self.sender()?;
        let (reply, answer) = oneshot::channel();
        sender.send(WriteOp::Forget(consumer.to_owned(), reply)).await.map_err(|_| LogError::Closed)?;
        answer.await.map_err(|_| LogError::Closed)?
    }

    /// `consumer`'s committed cursor, if it has one.
    pub async fn cursor(&self, consumer: &str) -> Result<Option<i64>, LogError> {
        let consumer = consumer.to_owned();
        self.with_reader(move |conn| {
            Ok(conn.query_row("SELECT position FROM cursors WHERE consumer = ?1", [consumer], |r| r.get(0)).optional()?)
        })
        .await
    }

    /// The last position in the log (0 when empty).
    pub async fn end(&self) -> Result<i64, LogError> {
        self.with_reader(|conn| Ok(conn.query_row("SELECT coalesce(max(seq), 0) FROM events", [], |r| r.get(0))?)).await
    }

    /// How far `consumer` is behind: positions between its cursor and the log's end, and when
    /// the first event after its cursor (of `project_id`) was received.
    pub async fn lag(&self, consumer: &str, project_id: i64) -> Result<(i64, Option<String>), LogError> {
        self.lag_in("events", consumer, project_id).await
    }

    /// Inspection: events matching `q`, newest first.
    pub async fn query_events(&self, q: EventQuery) -> Result<Vec<LogEntry>, LogError> {
        self.with_reader(move |conn| {
            let mut args: Vec<rusqlite::types::Value> = vec![q.project_id.into()];
            let mut sql = match q.trace_id {
                None => format!("SELECT {ENTRY_COLUMNS} FROM events WHERE project_id = ?1"),
                Some(trace_id) => {
                    args.push(trace_id.into());
                    // The trace index up to its position (one lookup per block, newest block
                    // first), and the events logged after it. CROSS JOIN keeps SQLite on these
                    // seqs: left to itself it may scan the whole log for the trace id.
                    format!(
                        "SELECT {ENTRY_COLUMNS} FROM (
                           WITH RECURSIVE position(seq) AS (
                               SELECT coalesce((SELECT position FROM traces.cursors WHERE consumer = '{TRACE_INDEX_CURSOR}'), 0)),
                             blocks(block) AS (
                               SELECT seq >> {TRACE_BLOCK_BITS} FROM position
                               UNION ALL SELECT block - 1 FROM blocks WHERE block > 0)
                           SELECT j.value AS hit FROM blocks CROSS JOIN traces.trace_runs t CROSS JOIN json_each(t.seqs) j
                             WHERE t.project_id = ?1 AND t.block = blocks.block AND t.trace_id = ?2
                           UNION ALL SELECT seq AS hit FROM events WHERE trace_id = ?2 AND seq > (SELECT seq FROM position)
                         ) AS hits CROSS JOIN events ON events.seq = hits.hit
                         WHERE project_id = ?1 AND trace_id = ?2"
                    )
                }
            };
            let mut push = |clause: &str, value: rusqlite::types::Value| {
                args.push(value);
                sql.push_str(&format!(" AND {clause} ?{}", args.len()));
            };
            if let Some(v) = q.event {
                push("event =", v.into());
            }
            if let Some(v) = q.distinct_id {
                push("distinct_id =", v.into());
            }
            if let Some(v) = q.after {
                push("timestamp >", v.into());
            }
            if let Some(v) = q.before {
                push("timestamp <", v.into());
            }
            if let Some(v) = q.before_seq {
                push("seq <", v.into());
            }
            sql.push_str(&format!(" ORDER BY seq DESC LIMIT {}", q.limit));
            let mut stmt = conn.prepare(&sql)?;
            let rows = stmt.query_map(rusqlite::params_from_iter(args), log_entry)?;
            take_up_to(rows, q.max_bytes, |e| e.body.len())
        })
        .await
    }

    /// Inspection: quarantined events, newest first.
    pub async fn query_quarantine(&self, q: QuarantineQuery) -> Result<Vec<QuarantineEntry>, LogError> {
        self.with_reader(move |conn| {
            let mut stmt = conn.prepare(
                "SELECT seq, protocol, received_at, code, reason, raw, raw_size, raw_sha256 FROM quarantine
                 WHERE project_id = ?1 AND (?2 IS NULL OR code = ?2) AND (?3 IS NULL OR seq < ?3)
                 ORDER BY seq DESC LIMIT ?4",
            )?;
            let rows = stmt.query_map(params![q.project_id, q.code, q.before_seq, q.limit as i64], |r| {
                Ok(QuarantineEntry {
                    seq: r.get(0)?,
                    protocol: r.get(1)?,
                    received_at: r.get(2)?,
                    code: r.get(3)?,
                    reason: r.get(4)?,
                    raw: r.get(5)?,
                    raw_size: r.get(6)?,
                    raw_sha256: r.get(7)?,
                })
            })?;
            take_up_to(rows, q.max_bytes, |e| e.raw.len() + e.reason.len())
        })
        .await
    }
}

/// Collects rows until their sizes add up to `max_bytes` (the row that reaches it included):
/// SQLite reads a row only when asked for it, so the rest is never read.
fn take_up_to<T>(
    rows: impl Iterator<Item = rusqlite::Result<T>>,
    max_bytes: Option<usize>,
    size: impl Fn(&T) -> usize,
) -> Result<Vec<T>, LogError> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for row in rows {
        let row = row?;
        total += size(&row);
        out.push(row);
        if max_bytes.is_some_and(|max| total >= max) {
            break;
        }
    }
    Ok(out)
}

impl EventLog for SqliteLog {
    fn append(&self, mut batch: AppendBatch) -> BoxFuture<'_, Result<AppendReceipt, LogError>> {
        Box::pin(async move {
            let sender = self.sender()?;
            // Here, not on the writer thread: hashing a long raw form is the appender's work.
            let digests = cut_quarantined(&mut batch, self.quarantine_raw_bytes);
            let (reply, answer) = oneshot::channel();
            sender.try_send(WriteOp::Append(batch, digests, reply)).map_err(|e| match e {
                mpsc::error::TrySendError::Full(_) => LogError::Overloaded,
                mpsc::error::TrySendError::Closed(_) => LogError::Closed,
            })?;
            let (receipt, _written) = answer.await.map_err(|_| LogError::Closed)??;
            Ok(receipt)
        })
    }

    fn read<'a>(&'a self, consumer: &'a str, max: usize, selection: Selection) -> BoxFuture<'a, Result<ReadBatch, LogError>> {
        Box::pin(self.read_bounded(consumer, max, usize::MAX, selection))
    }

    fn commit<'a>(&'a self, consumer: &'a str, position: i64) -> BoxFuture<'a, Result<(), LogError>> {
        Box::pin(async move {
            let sender = self.sender()?;
            let (reply, answer) = oneshot::channel();
            sender
                .send(WriteOp::Commit(consumer.to_owned(), position, reply))
                .await
                .map_err(|_| LogError::Closed)?;
            answer.await.map_err(|_| LogError::Closed)?
        })
    }
}

/// `path`'s WAL: `events.db` → `events.db-wal`.
fn wal_path(path: &Path) -> std::path::PathBuf {
    let mut wal = path.to_owned().into_os_string();
    wal.push("-wal");
    wal.into()
}

/// The size cap ([`SqliteLogConfig::max_size_bytes`]) as the writer applies it. Before every
/// transaction it measures what the other files hold (the log's WAL, the trace index's database
/// and WAL, the control store's) and lets the log's database grow only into what is left:
/// SQLite's `max_page_count`, which fails a transaction that would pass it with SQLITE_FULL
/// (nothing of it stays). The database is counted by its pages, those still in the WAL
/// included, so a page in both is counted twice: the cap is reached early, never late. What
/// one transaction adds to the WAL is counted from the next one on.
struct SizeCap {
    max_bytes: u64,
    page_size: u64,
    /// The log's WAL.
    wal: std::path::PathBuf,
    /// The length the log's WAL file is cut back to when it starts over (`journal_size_limit`).
    wal_limit: u64,
    /// Every file counted besides the log's database, its WAL included.
    others: Vec<std::path::PathBuf>,
    /// The `max_page_count` set last.
    pages: Option<i64>,
}

fn file_size(path: &Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

impl SizeCap {
    /// Sets the database's page budget from what the other files hold now.
    fn apply(&mut self, conn: &Connection) -> Result<(), LogError> {
        let others: u64 = self.others.iter().map(|f| file_size(f)).sum();
        // At least one page: SQLite keeps the limit at the database's size anyway.
        let pages = (self.max_bytes.saturating_sub(others) / self.page_size).max(1) as i64;
        if self.pages != Some(pages) {
            conn.pragma_update(None, "max_page_count", pages)?;
            self.pages = Some(pages);
        }
        Ok(())
    }

    /// After a transaction failed for the cap: a WAL file longer than its limit (it grew in a
    /// burst, or a refused transaction spilled pages into it) is copied back and cut to nothing,
    /// so that it stops counting. Returns whether it was (then the transaction is worth
    /// another try). Tries again for ~200 ms while the checkpoint thread's pass holds the
    /// checkpoint lock (a busy answer at once); readers of older snapshots are waited for by the
    /// writer's busy handler.
    fn reclaim_wal(&self, conn: &Connection) -> bool {
        if file_size(&self.wal) <= self.wal_limit {
            return false;
        }
        let started = std::time::Instant::now();
        while started.elapsed() < Duration::from_millis(200) {
            match conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)) {
                Ok(0) => return true,
                // Busy: the checkpoint thread's pass, or a reader of an older snapshot.
                Ok(_) => {}
                Err(error) if is_io_error(&error) => stop_after_lost_write("a WAL checkpoint for the size cap", &error),
                Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::DatabaseBusy => {}
                Err(error) => {
                    tracing::warn!(%error, "WAL checkpoint for the size cap failed");
                    return false;
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        false
    }
}

/// Writes `ops` in one transaction under the size cap (see [`SizeCap`]).
fn write_capped(conn: &mut Connection, ops: &[WriteOp], cap: &mut Option<SizeCap>) -> Result<Vec<Option<i64>>, LogError> {
    let Some(cap) = cap else { return write_group(conn, ops) };
    cap.apply(conn)?;
    match write_group(conn, ops) {
        Err(LogError::Full) if cap.reclaim_wal(conn) => {
            cap.apply(conn)?;
            write_group(conn, ops)
        }
        result => result,
    }
}

fn writer_loop(
    mut conn: Connection,
    mut receiver: mpsc::Receiver<WriteOp>,
    max_txn_events: usize,
    mut size_cap: Option<SizeCap>,
    on_commit: Option<CommitObserver>,
) {
    while let Some(first) = receiver.blocking_recv() {
        let mut ops = vec![first];
        let mut events = op_len(&ops[0]);
        while events < max_txn_events {
            match receiver.try_recv() {
                Ok(op) => {
                    events += op_len(&op);
                    ops.push(op);
                }
                Err(_) => break,
            }
        }
        let restart_wal: Vec<std::sync::mpsc::Sender<()>> = ops
            .iter()
            .filter_map(|op| match op {
                WriteOp::RestartWal(done) => Some(done.clone()),
                _ => None,
            })
            .collect();
        match write_capped(&mut conn, &ops, &mut size_cap) {
            Ok(last_seqs) => answer_committed(ops, last_seqs, events, on_commit.as_ref()),
            Err(error) if requests(&ops) > 1 => {
                // One request's failure (one too big for the size cap) must not fail the others
                // grouped with it: each gets a transaction of its own. Only ever after a failure.
                tracing::warn!(%error, requests = ops.len(), "event log transaction failed; writing its requests one by one");
                for op in ops {
                    match write_capped(&mut conn, std::slice::from_ref(&op), &mut size_cap) {
                        Ok(last_seqs) => {
                            let events = op_len(&op);
                            answer_committed(vec![op], last_seqs, events, on_commit.as_ref());
                        }
                        Err(error) => answer_failed(vec![op], &error),
                    }
                }
            }
            Err(error) => answer_failed(ops, &error),
        }
        if !restart_wal.is_empty() {
            // Only the frames written since the checkpoint thread's last pass are left to copy;
            // RESTART waits for readers of older snapshots, so the next write starts the WAL over.
            if let Err(error) = conn.query_row("PRAGMA wal_checkpoint(RESTART)", [], |_| Ok(())) {
                if is_io_error(&error) {
                    stop_after_lost_write("the WAL restart checkpoint", &error);
                }
                tracing::warn!(%error, "WAL restart checkpoint failed");
            }
            for done in restart_wal {
                let _ = done.send(());
            }
        }
    }
    // Every sender is gone: checkpoint so the next start has a small WAL to replay.
    if let Err(error) = conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE);") {
        tracing::warn!(%error, "final WAL checkpoint failed");
    }
}

/// How many of `ops` are requests someone waits for (not the checkpoint thread's restarts).
fn requests(ops: &[WriteOp]) -> usize {
    ops.iter().filter(|op| !matches!(op, WriteOp::RestartWal(_))).count()
}

/// Answers the requests of a committed transaction of `events` events.
fn answer_committed(ops: Vec<WriteOp>, last_seqs: Vec<Option<i64>>, events: usize, on_commit: Option<&CommitObserver>) {
    let appended: usize = ops.iter().map(|op| if let WriteOp::Append(batch, ..) = op { batch.len() } else { 0 }).sum();
    if let (Some(observer), true) = (on_commit, appended > 0) {
        (observer.0)(appended);
    }
    for (op, last_seq) in ops.into_iter().zip(last_seqs) {
        match op {
            WriteOp::Append(batch, _, reply) => {
                let _ = reply.send(Ok((AppendReceipt { last_seq, transaction_events: events }, batch)));
            }
            WriteOp::Commit(_, _, reply) | WriteOp::Forget(_, reply) => {
                let _ = reply.send(Ok(()));
            }
            WriteOp::RestartWal(_) => {}
        }
    }
}

/// Answers the requests of a failed transaction with its error.
fn answer_failed(ops: Vec<WriteOp>, error: &LogError) {
    let requests = requests(&ops);
    if requests > 0 {
        tracing::error!(%error, requests, "event log transaction failed");
    }
    for op in ops {
        match op {
            WriteOp::Append(_, _, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            WriteOp::Commit(_, _, reply) | WriteOp::Forget(_, reply) => {
                let _ = reply.send(Err(error.clone()));
            }
            WriteOp::RestartWal(_) => {}
        }
    }
}

/// Copies the WAL back into the database every 100 ms, PASSIVE: it never blocks the writer.
/// Under steady writes a PASSIVE pass can never finish the WAL (new frames keep coming), and
/// SQLite only starts the WAL over once it is wholly copied; so when the WAL has grown past
/// `restart_wal_frames`, the writer is asked to copy the little that is left between two
/// groups (a short pause, instead of SQLite's own checkpoint after a commit copying everything
/// since the last pass).
///
/// A pass that does not reach the WAL's end (every pass under steady writes) leaves what it
/// copied unsynced in the page cache; the checkpoint that restarts the WAL would then sync the
/// database file with everything copied since the last restart, up to `restart_wal_frames`
/// pages: a 60–160 ms pause of the writer. So this thread syncs the database file after each
/// pass, off the writer's path; and once the WAL is past the limit it runs up to two more passes
/// (each synced) until at most `RESTART_LEFT_FRAMES` are left, so the writer's restart copies
/// and syncs only what came in meanwhile (a few milliseconds).
/// That sync is for speed only: the WAL keeps every frame until a checkpoint that synced the
/// database lets it start over. Once synced, the copied pages are dropped from the OS page
/// cache, all but the file's last `cached_tail_bytes` (see `release_cached_pages`).
fn checkpoint_loop(
    conn: Connection,
    db_file: &std::fs::File,
    stop: std::sync::mpsc::Receiver<()>,
    writer: mpsc::Sender<WriteOp>,
    restart_wal_frames: i64,
    cached_tail_bytes: u64,
) {
    const INTERVAL: Duration = Duration::from_millis(100);
    let mut next_pass = std::time::Instant::now() + INTERVAL;
    // Passes every 100 ms from start to start, so a slow database sync does not space them out.
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(next_pass.saturating_duration_since(std::time::Instant::now()))
    {
        next_pass = std::time::Instant::now() + INTERVAL;
        let mut pass = pass_and_sync(&conn, db_file, cached_tail_bytes);
        // Past the limit: copy and sync all but the newest frames first, off the writer's path,
        // so that the writer's RESTART copies and syncs only what came in meanwhile.
        for _ in 0..2 {
            match pass {
                Some((frames, copied)) if frames >= restart_wal_frames && frames - copied > RESTART_LEFT_FRAMES => {
                    pass = pass_and_sync(&conn, db_file, cached_tail_bytes);
                }
                _ => break,
            }
        }
        if let Some((frames, _)) = pass.filter(|(frames, _)| *frames >= restart_wal_frames) {
            // The writer's RESTART checkpoint copies the rest and syncs the database itself.
            // A full queue means the writer is busy anyway; the next pass asks again.
            let (done, restarted) = std::sync::mpsc::channel();
            tracing::trace!(frames, "asking the writer to restart the WAL");
            if writer.try_send(WriteOp::RestartWal(done)).is_ok() && restarted.recv_timeout(Duration::from_secs(10)).is_ok() {
                release_cached_pages(db_file, cached_tail_bytes);
            }
        }
    }
}

/// What may be left to copy when the writer restarts the WAL: 4 MiB with 16 KiB pages.
const RESTART_LEFT_FRAMES: i64 = 256;

/// One PASSIVE checkpoint pass, then a sync of the database file and the release of its synced
/// pages. Returns the WAL's length and how much of it is copied, in frames.
fn pass_and_sync(conn: &Connection, db_file: &std::fs::File, cached_tail_bytes: u64) -> Option<(i64, i64)> {
    let pass = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |r| Ok((r.get::<_, i64>(1)?, r.get::<_, i64>(2)?)));
    match pass {
        Ok(frames) => {
            match db_file.sync_data() {
                Ok(()) => release_cached_pages(db_file, cached_tail_bytes),
                Err(error) => stop_after_lost_write("syncing the event log's database file after a checkpoint", &error),
            }
            Some(frames)
        }
        Err(error) if is_io_error(&error) => stop_after_lost_write("a background WAL checkpoint", &error),
        Err(error) => {
            tracing::warn!(%error, "background WAL checkpoint failed");
            None
        }
    }
}

fn is_io_error(error: &rusqlite::Error) -> bool {
    matches!(error, rusqlite::Error::SqliteFailure(e, _) if e.code == rusqlite::ErrorCode::SystemIoFailure)
}

/// After an I/O error writing or syncing the database file, pages a checkpoint copied there may
/// never reach the disk, and Linux reports such an error once per open file: a later checkpoint
/// would succeed and let the WAL start over, overwriting the frames that are then those pages'
/// only durable copy. So the process stops here, as PostgreSQL does on a failed fsync; at the
/// next start SQLite replays the WAL, which still holds every acknowledged event.
fn stop_after_lost_write(what: &str, error: &dyn std::fmt::Display) -> ! {
    tracing::error!(%error, "{what} failed; stopping so that the WAL, which holds every acknowledged event, is replayed at the next start");
    eprintln!("switchyard: {what} failed: {error}; stopping: the WAL, which holds every acknowledged event, is replayed at the next start");
    std::process::abort()
}

/// Default end of the database file that stays in the OS page cache after a checkpoint pass:
/// the newest events and the pages the trace index passes are writing.
const CACHED_TAIL_BYTES: u64 = 64 << 20;

/// Drops the database file's synced pages, all but its last `tail` bytes, from the OS
/// page cache. Checkpoints copy every logged event into the file, which grows by the whole
/// event rate; kept cached, those pages would fill memory with a log that is mostly never read
/// again, and every new one would be fresh memory for the kernel to find. Dropped, the next
/// checkpoint's copies land in pages just freed (on this project's benchmark machine the
/// checkpoint thread's CPU went from 0.45 to 0.13 cores under sustained batches). Readers of
/// old events read them from disk instead. Only clean pages are dropped: call after a sync.
fn release_cached_pages(db_file: &std::fs::File, tail: u64) {
    #[cfg(any(target_os = "linux", target_os = "android", target_os = "freebsd"))]
    {
        let size = match db_file.metadata() {
            Ok(metadata) => metadata.len(),
            Err(_) => return,
        };
        if let Some(len) = std::num::NonZeroU64::new(size.saturating_sub(tail)) {
            if let Err(error) = rustix::fs::fadvise(db_file, 0, Some(len), rustix::fs::Advice::DontNeed) {
                tracing::debug!(%error, "dropping the event log's cached pages failed");
            }
        }
    }
    #[cfg(not(any(target_os = "linux", target_os = "android", target_os = "freebsd")))]
    let _ = (db_file, tail);
}

const UPSERT_CURSOR: &str = "INSERT INTO cursors (consumer, position) VALUES (?1, ?2)
     ON CONFLICT (consumer) DO UPDATE SET position = excluded.position";

/// The position a consumer commits after reading `entries` (at most `max`) of `table` from
/// `position`: past the last one read; or, when the read was filtered (`filtered`) and did not
/// fill up, the table's end, since everything up to it was looked at.
fn position_after(conn: &Connection, table: &str, position: i64, entries: &[LogEntry], max: usize, filtered: bool) -> Result<Option<i64>, LogError> {
    if filtered && entries.len() < max {
        let end: Option<i64> = conn.query_row(&format!("SELECT max(seq) FROM {table}"), [], |r| r.get(0))?;
        return Ok(end.filter(|end| *end > position));
    }
    Ok(entries.last().map(|e| e.seq))
}

/// A consumer's committed position in the log (0 before its first commit).
fn cursor_position(conn: &Connection, consumer: &str) -> Result<i64, LogError> {
    Ok(conn
        .query_row("SELECT position FROM cursors WHERE consumer = ?1", [consumer], |r| r.get(0))
        .optional()?
        .unwrap_or(0))
}

/// Keeps the trace index up with the log: a pass every 100 ms, passes back to back while
/// behind. On its own thread and in its own database, a pass never pauses the log's writer.
fn trace_index_loop(mut conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    const INTERVAL: Duration = Duration::from_millis(100);
    loop {
        let behind = match index_traces(&mut conn) {
            Ok(behind) => behind,
            Err(error) => {
                tracing::warn!(%error, "trace index pass failed; the next one retries");
                false
            }
        };
        let wait = if behind { Duration::ZERO } else { INTERVAL };
        match stop.recv_timeout(wait) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// Adds the trace ids of events logged since the last pass to `trace_runs`, sorted, in one
/// transaction with the index's new position. A B-tree index on `trace_id` updated in every
/// group commit would write one page per distinct trace per commit (trace ids are random);
/// a pass every 100 ms writes each touched page once. And the index is keyed by block of the
/// log first (`seq >> TRACE_BLOCK_BITS`): a pass inserts only into the newest block's part of
/// the tree, a few hundred pages at most, instead of anywhere in an index of every trace ever
/// seen (with thousands of agent runs in flight, one page per trace per pass). Queries look the
/// trace up in each block, newest first, up to the index's position, and scan the few events
/// after it (`query_events`): one B-tree seek per 65,536 events of the log.
/// Runs on the indexer's connection (see `open_trace_indexer`): it reads the log and writes
/// only the index. Returns whether more events are waiting to be indexed.
fn index_traces(conn: &mut Connection) -> Result<bool, LogError> {
    let from = cursor_position(conn, TRACE_INDEX_CURSOR)?;
    let end: Option<i64> = conn.query_row("SELECT max(seq) FROM log.events", [], |r| r.get(0))?;
    let Some(end) = end.filter(|end| *end > from) else { return Ok(false) };
    let upto = end.min(from + TRACE_INDEX_BATCH);
    let tx = conn.transaction()?;
    tx.execute(
        &format!(
            "INSERT OR IGNORE INTO main.trace_runs (project_id, block, trace_id, first_seq, seqs)
             SELECT project_id, seq >> {TRACE_BLOCK_BITS}, trace_id, min(seq), json_group_array(seq) FROM log.events
             WHERE seq > ?1 AND seq <= ?2 AND trace_id IS NOT NULL
             GROUP BY project_id, seq >> {TRACE_BLOCK_BITS}, trace_id
             ORDER BY project_id, seq >> {TRACE_BLOCK_BITS}, trace_id"
        ),
        params![from, upto],
    )?;
    tx.execute(UPSERT_CURSOR, params![TRACE_INDEX_CURSOR, upto])?;
    tx.commit()?;
    Ok(upto < end)
}

/// What the retention thread is told (see [`SqliteLogConfig::retention`]).
struct Retention {
    retention: Duration,
    interval: Duration,
    batch: usize,
    consumers: Vec<String>,
    observer: Option<RetentionObserver>,
}

/// Deletes old events and quarantine rows: a pass at start, then one every `interval`, on its
/// own thread and connection (a reader's, with the trace index attached). Each transaction
/// deletes at most `batch` rows, a range of seqs at the log's start (a few milliseconds of the
/// write lock), with a pause between two, so group commits go on in between.
fn retention_loop(conn: Connection, settings: Retention, stop: std::sync::mpsc::Receiver<()>) {
    loop {
        let mut pass = RetentionPass::default();
        if let Err(error) = retention_pass(&conn, &settings, &stop, &mut pass) {
            tracing::warn!(%error, "retention pass failed; the next one retries");
        }
        if pass != RetentionPass::default() {
            tracing::debug!(events = pass.events, quarantine = pass.quarantine, "retention pass deleted old rows");
        }
        if let Some(observer) = &settings.observer {
            (observer.0)(pass);
        }
        match stop.recv_timeout(settings.interval) {
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return,
        }
    }
}

/// One retention pass. Events go once they were received before the retention period and
/// every consumer's cursor is past them (`retention_bound`); quarantine rows once they were
/// received before it. Both in log order from the start, stopping at the first row that stays,
/// and never the newest row of a table: seqs are rowids, and SQLite would hand an emptied
/// table's seqs out again from 1, under the consumers' cursors. The trace index's rows go
/// with the last event of their block (`drop_trace_runs_of_deleted_blocks`).
fn retention_pass(
    conn: &Connection,
    settings: &Retention,
    stop: &std::sync::mpsc::Receiver<()>,
    done: &mut RetentionPass,
) -> Result<(), LogError> {
    let Some(cutoff) = chrono::TimeDelta::from_std(settings.retention)
        .ok()
        .and_then(|period| chrono::Utc::now().checked_sub_signed(period))
    else {
        return Ok(());
    };
    let cutoff = switchyard_event::model::format_time(cutoff);
    let bound = retention_bound(conn, &settings.consumers)?;
    let span_bound = span_retention_bound(conn)?;
    for (table, bound) in [("events", Some(bound)), ("quarantine", None), ("spans", span_bound)] {
        loop {
            let deleted = delete_old_prefix(conn, table, &cutoff, bound, settings.batch)?;
            match table {
                "events" => done.events += deleted,
                "quarantine" => done.quarantine += deleted,
                _ => done.spans += deleted,
            }
            if deleted < settings.batch as u64 {
                break;
            }
            // A pause between two transactions; and a stop asked for ends the pass here.
            match stop.recv_timeout(Duration::from_millis(10)) {
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Ok(()) | Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            }
        }
    }
    if done.events > 0 {
        drop_trace_runs_of_deleted_blocks(conn)?;
    }
    Ok(())
}

/// The last seq every consumer has read: the least of every cursor in the log, the trace
/// index's, and 0 for a consumer of `consumers` that never committed.
fn retention_bound(conn: &Connection, consumers: &[String]) -> Result<i64, LogError> {
    let mut bound: i64 = conn
        .query_row("SELECT position FROM traces.cursors WHERE consumer = ?1", [TRACE_INDEX_CURSOR], |r| r.get(0))
        .optional()?
        .unwrap_or(0);
    let mut stmt = conn.prepare_cached("SELECT consumer, position FROM main.cursors")?;
    let mut seen = std::collections::HashSet::new();
    for row in stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))? {
        let (consumer, position) = row?;
        if consumer.starts_with(SPAN_CURSOR_PREFIX) {
            continue;
        }
        bound = bound.min(position);
        seen.insert(consumer);
    }
    if consumers.iter().any(|c| !seen.contains(c)) {
        return Ok(0);
    }
    Ok(bound)
}

/// The last span every consumer of spans has read (`None`: no consumer reads spans).
fn span_retention_bound(conn: &Connection) -> Result<Option<i64>, LogError> {
    Ok(conn.query_row(
        "SELECT min(position) FROM main.cursors WHERE substr(consumer, 1, ?1) = ?2",
        params![SPAN_CURSOR_PREFIX.len() as i64, SPAN_CURSOR_PREFIX],
        |r| r.get(0),
    )?)
}

/// Deletes, in one transaction, the rows at the start of `table` (at most `batch`, up to `bound`
/// and never its newest row) received before `cutoff`, up to the first one that was not.
/// Returns how many.
fn delete_old_prefix(conn: &Connection, table: &str, cutoff: &str, bound: Option<i64>, batch: usize) -> Result<u64, LogError> {
    let newest: Option<i64> = conn.query_row(&format!("SELECT max(seq) FROM main.{table}"), [], |r| r.get(0))?;
    let Some(newest) = newest else { return Ok(0) };
    let limit = bound.map_or(newest - 1, |bound| bound.min(newest - 1));
    let mut stmt =
        conn.prepare_cached(&format!("SELECT seq, received_at < ?1 FROM main.{table} WHERE seq <= ?2 ORDER BY seq LIMIT ?3"))?;
    let mut upto = None;
    for row in stmt.query_map(params![cutoff, limit, batch as i64], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, bool>(1)?)))? {
        match row? {
            (seq, true) => upto = Some(seq),
            (_, false) => break,
        }
    }
    drop(stmt);
    let Some(upto) = upto else { return Ok(0) };
    // Every row left at or below `upto` was just read as old: one range of the table's B-tree.
    let deleted = conn.execute(&format!("DELETE FROM main.{table} WHERE seq <= ?1"), [upto])?;
    Ok(deleted as u64)
}

/// Drops the trace index's rows of every block of the log retention has emptied. Rows of the
/// block it is deleting from stay until the block is empty: a trace query reads the events
/// their seqs name, and a deleted one is simply not found.
fn drop_trace_runs_of_deleted_blocks(conn: &Connection) -> Result<(), LogError> {
    let first: Option<i64> = conn.query_row("SELECT min(seq) FROM main.events", [], |r| r.get(0))?;
    let Some(first) = first else { return Ok(()) };
    let emptied_below = first >> TRACE_BLOCK_BITS;
    if emptied_below == 0 {
        return Ok(());
    }
    // One range per project (the index is keyed by project first), each found with a seek.
    let mut after = i64::MIN;
    loop {
        let project: Option<i64> =
            conn.query_row("SELECT min(project_id) FROM traces.trace_runs WHERE project_id > ?1", [after], |r| r.get(0))?;
        let Some(project) = project else { return Ok(()) };
        conn.execute("DELETE FROM traces.trace_runs WHERE project_id = ?1 AND block < ?2", params![project, emptied_below])?;
        after = project;
    }
}

/// An index built from another log (the log's database replaced, or restored from a backup,
/// the index's kept) points at events this log does not have, and would never index the events
/// this log has up to its position. Such an index carries another log's identity, or (a backup
/// of this log) a position past the log's end; it is derived, so it is emptied and built again
/// from this log. An index from before identities were kept adopts the log's if it is not ahead.
fn drop_trace_index_of_another_log(conn: &mut Connection) -> Result<(), LogError> {
    let log_id: String = conn.query_row("SELECT id FROM log.log_identity", [], |r| r.get(0))?;
    let built_from: Option<String> = conn.query_row("SELECT log_id FROM main.built_from", [], |r| r.get(0)).optional()?;
    let position = cursor_position(conn, TRACE_INDEX_CURSOR)?;
    let end: i64 = conn.query_row("SELECT coalesce(max(seq), 0) FROM log.events", [], |r| r.get(0))?;
    let another_log = built_from.as_ref().is_some_and(|id| *id != log_id) || position > end;
    if !another_log && built_from.is_some() {
        return Ok(());
    }
    let tx = conn.transaction()?;
    if another_log {
        tracing::warn!(position, end, "the trace index was built from another event log: rebuilding it");
        tx.execute("DELETE FROM main.trace_runs", [])?;
        tx.execute("DELETE FROM main.cursors WHERE consumer = ?1", [TRACE_INDEX_CURSOR])?;
    }
    tx.execute("DELETE FROM main.built_from", [])?;
    tx.execute("INSERT INTO main.built_from (log_id) VALUES (?1)", [&log_id])?;
    tx.commit()?;
    Ok(())
}

/// Earlier versions kept the trace index inside the log's database: as `trace_blocks`, or
/// before that as `trace_index` keyed by `(project_id, trace_id, seq)`. At start its entries
/// and position move into the index's own database, once; run on the indexer's connection
/// before the writer starts.
fn migrate_trace_index(conn: &mut Connection) -> Result<(), LogError> {
    // This database's first layout: a row per event.
    let per_event: bool =
        conn.query_row("SELECT count(*) FROM main.sqlite_master WHERE type = 'table' AND name = 'trace_blocks'", [], |r| {
            r.get(0)
        })?;
    if per_event {
        let tx = conn.transaction()?;
        tx.execute_batch(
            "INSERT OR IGNORE INTO main.trace_runs (project_id, block, trace_id, first_seq, seqs)
               SELECT project_id, block, trace_id, seq, json_array(seq) FROM main.trace_blocks ORDER BY 1, 2, 3, 4;
             DROP TABLE main.trace_blocks;",
        )?;
        tx.commit()?;
    }
    let old_tables = [
        ("trace_index", format!("SELECT project_id, seq >> {TRACE_BLOCK_BITS} AS block, trace_id, seq FROM log.trace_index")),
        ("trace_blocks", "SELECT project_id, block, trace_id, seq FROM log.trace_blocks".to_owned()),
    ];
    for (table, select) in old_tables {
        let exists: bool = conn.query_row(
            "SELECT count(*) FROM log.sqlite_master WHERE type = 'table' AND name = ?1",
            [table],
            |r| r.get(0),
        )?;
        if !exists {
            continue;
        }
        let position: Option<i64> = conn
            .query_row("SELECT position FROM log.cursors WHERE consumer = ?1", [TRACE_INDEX_CURSOR], |r| r.get(0))
            .optional()?;
        let tx = conn.transaction()?;
        tx.execute_batch(&format!(
            "INSERT OR IGNORE INTO main.trace_runs (project_id, block, trace_id, first_seq, seqs)
               SELECT project_id, block, trace_id, seq, json_array(seq) FROM ({select}) ORDER BY 1, 2, 3, 4;"
        ))?;
        if let Some(position) = position {
            tx.execute(
                "INSERT INTO main.cursors (consumer, position) VALUES (?1, ?2)
                 ON CONFLICT (consumer) DO UPDATE SET position = max(position, excluded.position)",
                params![TRACE_INDEX_CURSOR, position],
            )?;
        }
        tx.commit()?;
        // Moved and committed: the old table and position go. Should this fail, the next
        // start moves them again (`OR IGNORE`).
        conn.execute_batch(&format!(
            "DROP TABLE log.{table}; DELETE FROM log.cursors WHERE consumer = '{TRACE_INDEX_CURSOR}';"
        ))?;
    }
    Ok(())
}

fn op_len(op: &WriteOp) -> usize {
    match op {
        WriteOp::Append(batch, ..) => batch.len(),
        WriteOp::Commit(..) | WriteOp::Forget(..) => 1,
        WriteOp::RestartWal(_) => 0,
    }
}

/// Writes every op in one transaction; returns each op's last event seq.
fn write_group(conn: &mut Connection, ops: &[WriteOp]) -> Result<Vec<Option<i64>>, LogError> {
    let tx = conn.transaction()?;
    let mut last_seqs = Vec::with_capacity(ops.len());
    {
        let mut insert_event = tx.prepare_cached(
            "INSERT INTO events (id, project_id, type, event, distinct_id, trace_id, timestamp, received_at, body, person_update)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
        )?;
        let mut insert_quarantine = tx.prepare_cached(
            "INSERT INTO quarantine (project_id, protocol, received_at, code, reason, raw, raw_size, raw_sha256)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        )?;
        let mut upsert_cursor = tx.prepare_cached(UPSERT_CURSOR)?;
        let mut insert_span = tx.prepare_cached(
            "INSERT INTO spans (project_id, trace_id, span_id, parent_span_id, name, start_time, end_time, received_at, body)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )?;
        for op in ops {
            match op {
                WriteOp::Append(batch, digests, _) => {
                    let mut last = None;
                    for r in &batch.events {
                        insert_event.execute(params![
                            r.id,
                            r.project_id,
                            r.kind,
                            r.event,
                            r.distinct_id,
                            r.trace_id,
                            r.timestamp,
                            r.received_at,
                            r.body,
                            r.person_update
                        ])?;
                        last = Some(tx.last_insert_rowid());
                    }
                    for (i, q) in batch.quarantined.iter().enumerate() {
                        let digest = digests.get(i).and_then(Option::as_ref);
                        insert_quarantine.execute(params![
                            q.project_id,
                            q.protocol,
                            q.received_at,
                            q.code,
                            q.reason,
                            q.raw,
                            digest.map(|d| d.size),
                            digest.map(|d| &d.sha256)
                        ])?;
                    }
                    for span in &batch.spans {
                        insert_span.execute(params![
                            span.project_id,
                            span.trace_id,
                            span.span_id,
                            span.parent_span_id,
                            span.name,
                            span.start_time,
                            span.end_time,
                            span.received_at,
                            span.body
                        ])?;
                    }
                    last_seqs.push(last);
                }
                WriteOp::Commit(consumer, position, _) => {
                    upsert_cursor.execute(params![consumer, position])?;
                    last_seqs.push(None);
                }
                WriteOp::Forget(consumer, _) => {
                    tx.execute("DELETE FROM cursors WHERE consumer = ?1", [consumer])?;
                    last_seqs.push(None);
                }
                WriteOp::RestartWal(_) => last_seqs.push(None),
            }
        }
    }
    tx.commit()?;
    Ok(last_seqs)
}

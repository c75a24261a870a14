//! The embedded Parquet lake, the default warehouse: a consumer of the event log (cursor
//! `warehouse:lake`) that writes the warehouse rows of each window of events
//! ([`switchyard_warehouse::rows_for`], [`Dialect::Lake`]) as Parquet files, one per table and
//! day:
//!
//! `{root}/project={id}/{table}/day={YYYY-MM-DD}/part-{first_seq:020}-{last_seq:020}.parquet`
//!
//! The day is the row's `timestamp`, else its `received_at` (else `1970-01-01`). Column types:
//! int → Int64, float → Float64, boolean → Boolean, string and json → Utf8 (json as JSON
//! text), datetime → Timestamp(µs, UTC), decimal → Decimal128(38, 12); a row without a column
//! has NULL there. Columns are sorted by name; the files of the platform's tables (fixed
//! columns) have all of them.
//!
//! At-least-once, idempotent by the window: a file is written to a temporary name in its
//! directory, synced, renamed and the directory synced; the cursor is committed after every
//! file of the window is in place. A replay after a crash starts at the same `first_seq`: it
//! overwrites the files of the same window and removes the files of an earlier attempt that
//! ended at another `last_seq` ([`remove_attempts`], done on the first window of a run and
//! after a failure), so a window's events are never in the lake twice.
//!
//! One [`Schema`] per project decides the column types (the first value's type wins, values
//! that do not fit go to `rudder_discards`); it is kept in `project={id}/_schema.json`,
//! written before the files that use it, so types stay the same across runs. `users` rows
//! (RudderStack merges them column by column, latest non-null) are written as they are, one
//! row per identify: the SQL engine's `users` view merges them.
//!
//! Compaction: after each commit, a day's directory of a table with more than
//! `compact_files` small files gets them merged into one ([`compact_dir`]), so a lake of
//! millions of events stays a modest number of files.

use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arrow_array::builder::{BooleanBuilder, Decimal128Builder, Float64Builder, Int64Builder, StringBuilder, TimestampMicrosecondBuilder};
use arrow_array::{ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema as ArrowSchema, TimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ArrowWriter;
use parquet::basic::Compression;
use parquet::errors::ParquetError;
use parquet::file::properties::WriterProperties;
use serde_json::Value;
use switchyard_event::model::parse_time;
use switchyard_event::Event;
use switchyard_store::{EventLog, LogEntry, Selection};
use switchyard_warehouse::parts::{covered, part_name};
use switchyard_warehouse::types::{coerce, value_text};
use switchyard_warehouse::{rows_for, ColumnType, Decimal, Dialect, Row, Schema};
use tokio::sync::watch;

use crate::{LoadStatus, Stores};

/// The lake's cursor in the event log.
pub const CONSUMER: &str = "warehouse:lake";

/// The lake's settings.
#[derive(Debug, Clone)]
pub struct LakeConfig {
    /// The lake's directory.
    pub root: PathBuf,
    /// Events per window, at most.
    pub max_events: usize,
    /// How long a window may wait to fill: anything in the log is written within about this.
    pub max_wait: Duration,
    /// A day's directory of a table is compacted when it has more small files than this.
    pub compact_files: usize,
    /// Files from this size on are left as they are by compaction.
    pub compact_small_bytes: u64,
}

impl LakeConfig {
    pub fn new(root: impl Into<PathBuf>) -> LakeConfig {
        LakeConfig {
            root: root.into(),
            max_events: 10_000,
            max_wait: Duration::from_secs(5),
            compact_files: 8,
            compact_small_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LakeError {
    #[error("lake I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("arrow: {0}")]
    Arrow(#[from] ArrowError),
    #[error("parquet: {0}")]
    Parquet(#[from] ParquetError),
    #[error("the lake's schema file: {0}")]
    Schema(String),
    #[error("table name {0:?} is not a lake table name")]
    TableName(String),
    #[error("{table}.{column}: {reason}")]
    Value { table: String, column: String, reason: String },
}

/// Writes the rows of one window of events (seqs `first_seq..=last_seq`) of one project: one
/// file per table and day, replacing the file of the same window if there is one. Gives the
/// paths written, in (table, day) order.
pub fn write_window(root: &Path, project_id: i64, first_seq: i64, last_seq: i64, rows: &[Row]) -> Result<Vec<PathBuf>, LakeError> {
    let mut groups: BTreeMap<(&str, String), Vec<&Row>> = BTreeMap::new();
    for row in rows.iter().filter(|r| !r.columns.is_empty()) {
        if row.table.is_empty() || !row.table.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
            return Err(LakeError::TableName(row.table.clone()));
        }
        groups.entry((row.table.as_str(), day_of(row))).or_default().push(row);
    }
    // Every file of the window is written under a temporary name, then one sync makes them
    // all durable, then the renames, then one sync for the names: two syncs a window, not two
    // a file (a window writes a file per table and day).
    let mut staged: Vec<(PathBuf, PathBuf)> = Vec::with_capacity(groups.len());
    let result = (|| -> Result<(), LakeError> {
        for ((table, day), rows) in groups {
            let batch = record_batch(table, &rows)?;
            let dir = root.join(format!("project={project_id}")).join(table).join(format!("day={day}"));
            fs::create_dir_all(&dir)?;
            let path = dir.join(part_name(first_seq, last_seq));
            let temp = dir.join(format!(".{}.tmp", part_name(first_seq, last_seq)));
            staged.push((temp.clone(), path));
            let mut writer = ArrowWriter::try_new(File::create(&temp)?, batch.schema(), Some(writer_properties()))?;
            writer.write(&batch)?;
            writer.close()?;
        }
        let temps: Vec<&Path> = staged.iter().map(|(temp, _)| temp.as_path()).collect();
        sync_written(root, &temps)?;
        for (temp, path) in &staged {
            fs::rename(temp, path)?;
        }
        let dirs: Vec<&Path> = staged.iter().filter_map(|(_, path)| path.parent()).collect();
        sync_written(root, &dirs)
    })();
    if let Err(error) = result {
        for (temp, _) in &staged {
            let _ = fs::remove_file(temp);
        }
        return Err(error);
    }
    Ok(staged.into_iter().map(|(_, path)| path).collect())
}

/// Makes what was written under `root` durable: on Linux one `syncfs` of its filesystem;
/// elsewhere each of `paths` (files, or directories after renames) synced.
fn sync_written(root: &Path, paths: &[&Path]) -> Result<(), LakeError> {
    #[cfg(target_os = "linux")]
    {
        let _ = paths;
        rustix::fs::syncfs(File::open(root)?).map_err(std::io::Error::from)?;
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = root;
        for path in paths {
            File::open(path)?.sync_all()?;
        }
    }
    Ok(())
}

/// Removes the files of earlier attempts at the window starting at `first_seq` (a crash or a
/// failure after some of its files were written; the attempt may have ended at another seq),
/// and leftover temporary files, except `keep`. Gives how many were removed.
pub fn remove_attempts(root: &Path, first_seq: i64, keep: &[PathBuf]) -> Result<usize, LakeError> {
    let prefix = format!("part-{first_seq:020}-");
    let mut removed = 0;
    for project in subdirs(root)? {
        for table in subdirs(&project)? {
            for day in subdirs(&table)? {
                for entry in fs::read_dir(&day)? {
                    let path = entry?.path();
                    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
                    let stale = (name.starts_with(&prefix) && name.ends_with(".parquet")) || (name.starts_with(".part-") && name.ends_with(".tmp"));
                    if stale && !keep.contains(&path) {
                        fs::remove_file(&path)?;
                        removed += 1;
                    }
                }
                removed += remove_covered(&day)?;
            }
        }
    }
    Ok(removed)
}

/// The log range of a part file's path.
fn part_range(path: &Path) -> Option<(i64, i64)> {
    switchyard_warehouse::parts::part_range(path.file_name()?.to_str()?)
}

/// A part file and the log range it holds.
type Part = (PathBuf, (i64, i64));

/// The part files of a day's directory with their ranges, by range.
fn parts(dir: &Path) -> Result<Vec<Part>, LakeError> {
    let mut parts = Vec::new();
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        if let Some(range) = part_range(&path) {
            parts.push((path, range));
        }
    }
    parts.sort_by_key(|(_, range)| *range);
    Ok(parts)
}

/// Removes the files whose range another file of the directory covers: the inputs of a
/// compaction that stopped between writing its output and removing them.
fn remove_covered(dir: &Path) -> Result<usize, LakeError> {
    let parts = parts(dir)?;
    let mut removed = 0;
    let ranges: Vec<(i64, i64)> = parts.iter().map(|(_, range)| *range).collect();
    for (path, range) in &parts {
        if covered(*range, &ranges) {
            fs::remove_file(path)?;
            removed += 1;
        }
    }
    Ok(removed)
}

/// Compacts a day's directory of a table: when it has more than `max_files` files smaller
/// than `small_bytes`, they become one file named for their whole range (their rows in log
/// order, their columns united by name). The output is in place before the inputs are
/// removed; a crash in between leaves inputs that [`remove_attempts`] removes as covered.
/// Only committed windows are compacted (the loader calls this after its commit), and a
/// replay never starts inside a compacted range. Gives the file written, if any.
pub fn compact_dir(dir: &Path, max_files: usize, small_bytes: u64) -> Result<Option<PathBuf>, LakeError> {
    let mut small = Vec::new();
    for (path, range) in parts(dir)? {
        if fs::metadata(&path)?.len() < small_bytes {
            small.push((path, range));
        }
    }
    if small.len() <= max_files {
        return Ok(None);
    }
    // The united schema from the files' footers; then the rows, one file at a time, so
    // compaction holds one input's batches, not all of them.
    let mut fields: BTreeMap<String, Field> = BTreeMap::new();
    for (path, _) in &small {
        let builder = ParquetRecordBatchReaderBuilder::try_new(File::open(path)?)?;
        for field in builder.schema().fields() {
            match fields.get(field.name()) {
                Some(known) if known.data_type() != field.data_type() => {
                    return Err(LakeError::Value {
                        table: dir.display().to_string(),
                        column: field.name().clone(),
                        reason: format!("files disagree on its type ({} and {}); not compacted", known.data_type(), field.data_type()),
                    });
                }
                Some(_) => {}
                None => {
                    fields.insert(field.name().clone(), Field::new(field.name(), field.data_type().clone(), true));
                }
            }
        }
    }
    let schema = Arc::new(ArrowSchema::new(fields.into_values().collect::<Vec<_>>()));
    let first = small.first().map_or(0, |(_, (f, _))| *f);
    let last = small.last().map_or(0, |(_, (_, l))| *l);
    let path = dir.join(part_name(first, last));
    let props = writer_properties();
    let temp = dir.join(format!(".{}.tmp", part_name(first, last)));
    let result = (|| -> Result<(), LakeError> {
        let mut writer = ArrowWriter::try_new(File::create(&temp)?, schema.clone(), Some(props))?;
        for (input, _) in &small {
            for batch in ParquetRecordBatchReaderBuilder::try_new(File::open(input)?)?.build()? {
                let batch = batch?;
                let columns: Vec<ArrayRef> = schema
                    .fields()
                    .iter()
                    .map(|f| batch.column_by_name(f.name()).cloned().unwrap_or_else(|| arrow_array::new_null_array(f.data_type(), batch.num_rows())))
                    .collect();
                writer.write(&RecordBatch::try_new(schema.clone(), columns)?)?;
            }
            // A row group is held in memory until it is flushed: bounded here.
            if writer.memory_size() > 32 << 20 {
                writer.flush()?;
            }
        }
        let file = writer.into_inner()?;
        file.sync_all()?;
        drop(file);
        fs::rename(&temp, &path)?;
        File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if let Err(error) = result {
        let _ = fs::remove_file(&temp);
        return Err(error);
    }
    for (input, _) in &small {
        if *input != path {
            fs::remove_file(input)?;
        }
    }
    File::open(dir)?.sync_all()?;
    Ok(Some(path))
}

fn subdirs(dir: &Path) -> Result<Vec<PathBuf>, LakeError> {
    let mut dirs = Vec::new();
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(dirs),
        Err(e) => return Err(e.into()),
    };
    for entry in entries {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}


/// The row's day (UTC): its `timestamp`, else its `received_at`.
fn day_of(row: &Row) -> String {
    ["timestamp", "received_at"]
        .iter()
        .filter_map(|c| match row.columns.get(*c) {
            Some((ColumnType::Datetime, Value::String(text))) => micros_of(text).and_then(chrono::DateTime::from_timestamp_micros),
            _ => None,
        })
        .next()
        .map_or_else(|| "1970-01-01".to_owned(), |t| t.format("%Y-%m-%d").to_string())
}

/// The tables whose columns are fixed, with their columns.
static FIXED_TABLES: std::sync::OnceLock<FixedTables> = std::sync::OnceLock::new();

type FixedTables = Vec<(&'static str, Vec<(&'static str, ColumnType)>)>;

fn arrow_type(ty: ColumnType) -> DataType {
    match ty {
        ColumnType::Int => DataType::Int64,
        ColumnType::Float => DataType::Float64,
        ColumnType::Boolean => DataType::Boolean,
        ColumnType::String | ColumnType::Json => DataType::Utf8,
        ColumnType::Datetime => DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        ColumnType::Decimal => DataType::Decimal128(Decimal::PRECISION as u8, Decimal::SCALE as i8),
    }
}

/// A column being built, by its type.
enum Builder {
    Int(Int64Builder),
    Float(Float64Builder),
    Boolean(BooleanBuilder),
    Text(StringBuilder),
    Json(StringBuilder),
    Datetime(TimestampMicrosecondBuilder),
    Decimal(Decimal128Builder),
}

impl Builder {
    fn new(ty: ColumnType, rows: usize) -> Result<Builder, ArrowError> {
        Ok(match ty {
            ColumnType::Int => Builder::Int(Int64Builder::with_capacity(rows)),
            ColumnType::Float => Builder::Float(Float64Builder::with_capacity(rows)),
            ColumnType::Boolean => Builder::Boolean(BooleanBuilder::with_capacity(rows)),
            ColumnType::String => Builder::Text(StringBuilder::with_capacity(rows, rows * 16)),
            ColumnType::Json => Builder::Json(StringBuilder::with_capacity(rows, rows * 64)),
            ColumnType::Datetime => Builder::Datetime(TimestampMicrosecondBuilder::with_capacity(rows).with_timezone("UTC")),
            ColumnType::Decimal => {
                Builder::Decimal(Decimal128Builder::with_capacity(rows).with_precision_and_scale(Decimal::PRECISION as u8, Decimal::SCALE as i8)?)
            }
        })
    }

    fn append_null(&mut self) {
        match self {
            Builder::Int(b) => b.append_null(),
            Builder::Float(b) => b.append_null(),
            Builder::Boolean(b) => b.append_null(),
            Builder::Text(b) | Builder::Json(b) => b.append_null(),
            Builder::Datetime(b) => b.append_null(),
            Builder::Decimal(b) => b.append_null(),
        }
    }

    /// Appends a value of the column's type (`text` is a scratch buffer for JSON).
    fn append(&mut self, v: &Value, text: &mut Vec<u8>) -> Result<(), String> {
        match self {
            Builder::Int(b) => b.append_value(v.as_i64().ok_or_else(|| format!("not an int: {v}"))?),
            Builder::Float(b) => b.append_value(v.as_f64().ok_or_else(|| format!("not a float: {v}"))?),
            Builder::Boolean(b) => b.append_value(v.as_bool().ok_or_else(|| format!("not a boolean: {v}"))?),
            Builder::Text(b) => match v {
                Value::String(s) => b.append_value(s),
                other => b.append_value(value_text(other)),
            },
            Builder::Json(b) => {
                text.clear();
                serde_json::to_writer(&mut *text, v).map_err(|e| e.to_string())?;
                b.append_value(String::from_utf8_lossy(text));
            }
            Builder::Datetime(b) => b.append_value(v.as_str().and_then(micros_of).ok_or_else(|| format!("not a datetime: {v}"))?),
            Builder::Decimal(b) => b.append_value(Decimal::parse_value(v).ok_or_else(|| format!("not a decimal: {v}"))?.0),
        }
        Ok(())
    }

    fn finish(self) -> ArrayRef {
        match self {
            Builder::Int(mut b) => Arc::new(b.finish()),
            Builder::Float(mut b) => Arc::new(b.finish()),
            Builder::Boolean(mut b) => Arc::new(b.finish()),
            Builder::Text(mut b) | Builder::Json(mut b) => Arc::new(b.finish()),
            Builder::Datetime(mut b) => Arc::new(b.finish()),
            Builder::Decimal(mut b) => Arc::new(b.finish()),
        }
    }
}

/// Microseconds since the epoch of a date-time: the loader's own form
/// (`2025-12-05T09:30:00.123456Z`, read without a general parser), else any form
/// [`parse_time`] reads.
fn micros_of(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    let fixed = b.len() == 27 && b[4] == b'-' && b[7] == b'-' && b[10] == b'T' && b[13] == b':' && b[16] == b':' && b[19] == b'.' && b[26] == b'Z';
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        b[range].iter().try_fold(0u32, |n, d| d.is_ascii_digit().then(|| n * 10 + u32::from(d - b'0')))
    };
    if fixed {
        let date = chrono::NaiveDate::from_ymd_opt(number(0..4)? as i32, number(5..7)?, number(8..10)?)?;
        let time = chrono::NaiveTime::from_hms_micro_opt(number(11..13)?, number(14..16)?, number(17..19)?, number(20..26)?)?;
        return Some(date.and_time(time).and_utc().timestamp_micros());
    }
    parse_time(text).map(|t| t.timestamp_micros())
}

/// One batch of the rows of one group: the union of their columns (the first row's type for a
/// column; a value of another type is converted as the schema would, or refused). One pass
/// over each row's columns, merged with the union's (both sorted by name).
fn record_batch(table: &str, rows: &[&Row]) -> Result<RecordBatch, LakeError> {
    let mut union: BTreeMap<&str, ColumnType> = BTreeMap::new();
    // The platform's tables have all their columns in every file, so readers (and the
    // `agent_trace_history` view) find a column even where no row of the file has a value.
    if let Some((_, fixed)) = FIXED_TABLES.get_or_init(switchyard_warehouse::rows::fixed_tables).iter().find(|(name, _)| *name == table) {
        union.extend(fixed.iter().copied());
    }
    for row in rows {
        for (name, (ty, _)) in &row.columns {
            union.entry(name.as_str()).or_insert(*ty);
        }
    }
    let names: Vec<&str> = union.keys().copied().collect();
    let types: Vec<ColumnType> = union.values().copied().collect();
    let mut builders = types.iter().map(|ty| Builder::new(*ty, rows.len())).collect::<Result<Vec<_>, _>>()?;
    let mut text = Vec::new();
    for row in rows {
        let mut next = 0;
        for (name, (found, v)) in &row.columns {
            while names[next] != name.as_str() {
                builders[next].append_null();
                next += 1;
            }
            let bad = |reason: String| LakeError::Value {
                table: table.to_owned(),
                column: name.clone(),
                reason,
            };
            if *found == types[next] {
                builders[next].append(v, &mut text).map_err(bad)?;
            } else {
                let converted = coerce(v, *found, types[next]).map_err(&bad)?;
                builders[next].append(&converted, &mut text).map_err(bad)?;
            }
            next += 1;
        }
        for builder in &mut builders[next..] {
            builder.append_null();
        }
    }
    let fields: Vec<Field> = names.iter().zip(&types).map(|(name, ty)| Field::new(*name, arrow_type(*ty), true)).collect();
    let arrays: Vec<ArrayRef> = builders.into_iter().map(Builder::finish).collect();
    Ok(RecordBatch::try_new(Arc::new(ArrowSchema::new(fields)), arrays)?)
}

/// Snappy; statistics per column chunk (what readers prune row groups by), not per page.
fn writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_statistics_enabled(parquet::file::properties::EnabledStatistics::Chunk)
        .build()
}

/// Each project's schema, kept beside its tables so column types stay the same across runs.
const SCHEMA_FILE: &str = "_schema.json";

/// The schemas kept in the lake (a project without one starts with the fixed tables).
fn load_schemas(root: &Path) -> Result<HashMap<i64, Schema>, LakeError> {
    let mut schemas = HashMap::new();
    for dir in subdirs(root)? {
        let Some(project_id) = dir.file_name().and_then(|n| n.to_str()).and_then(|n| n.strip_prefix("project=")).and_then(|n| n.parse::<i64>().ok()) else {
            continue;
        };
        let path = dir.join(SCHEMA_FILE);
        let mut schema = match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice::<Schema>(&bytes).map_err(|e| LakeError::Schema(format!("{}: {e}", path.display())))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Schema::new(),
            Err(e) => return Err(e.into()),
        };
        // Columns a newer version added to the fixed tables.
        for (table, columns) in Schema::with_fixed_tables().tables {
            let known = schema.tables.entry(table).or_default();
            for (column, ty) in columns {
                known.entry(column).or_insert(ty);
            }
        }
        schemas.insert(project_id, schema);
    }
    Ok(schemas)
}

/// Writes a project's schema (atomically: a temporary file renamed over it).
fn save_schema(root: &Path, project_id: i64, schema: &Schema) -> Result<(), LakeError> {
    let dir = root.join(format!("project={project_id}"));
    fs::create_dir_all(&dir)?;
    let temp = dir.join(format!(".{SCHEMA_FILE}.tmp"));
    let bytes = serde_json::to_vec(schema).map_err(|e| LakeError::Schema(e.to_string()))?;
    let mut file = File::create(&temp)?;
    std::io::Write::write_all(&mut file, &bytes)?;
    file.sync_all()?;
    fs::rename(&temp, dir.join(SCHEMA_FILE))?;
    File::open(&dir)?.sync_all()?;
    Ok(())
}

/// Runs until `stop` turns true: waits for a window to fill (`max_events`, or `max_wait` after
/// the first pending event), writes it, commits the cursor.
pub async fn run(stores: Arc<dyn Stores>, config: LakeConfig, status: Arc<LoadStatus>, mut stop: watch::Receiver<bool>) {
    let schemas = loop {
        let root = config.root.clone();
        match tokio::task::spawn_blocking(move || load_schemas(&root)).await {
            Ok(Ok(schemas)) => break Arc::new(Mutex::new(schemas)),
            Ok(Err(error)) => {
                status.failed(&error);
                tracing::error!(%error, "lake: its schemas cannot be read; retrying");
            }
            Err(error) => tracing::error!(%error, "lake: reading its schemas failed; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => return,
        }
    };
    let poll = (config.max_wait / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    // Set when files of an uncommitted attempt may be in the lake (a run's start, a failure).
    let mut clean = true;
    let mut pending_since: Option<Instant> = None;
    // The last window stopped at its byte bound: more is waiting, no need to wait to fill.
    let mut more = false;
    loop {
        if *stop.borrow() {
            return;
        }
        let ready = match pending(&stores).await {
            Ok(0) => {
                pending_since = None;
                false
            }
            Ok(n) => more || n >= config.max_events as i64 || pending_since.get_or_insert_with(Instant::now).elapsed() >= config.max_wait,
            Err(error) => {
                tracing::error!(%error, "lake: reading the log failed; retrying");
                false
            }
        };
        if ready {
            match write_next(&stores, &config, &schemas, clean, &status).await {
                Ok(bounded) => {
                    more = bounded;
                    clean = false;
                    pending_since = None;
                    continue;
                }
                Err(error) => {
                    status.failed(&error);
                    tracing::error!(%error, "lake: writing a window failed; retrying");
                    clean = true;
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => {}
                    }
                    continue;
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = stop.changed() => {}
        }
    }
}

/// Events after the cursor (about: seqs may have gaps).
async fn pending(stores: &Arc<dyn Stores>) -> anyhow::Result<i64> {
    let log = stores.log();
    let end = log.end().await?;
    let cursor = log.cursor(CONSUMER).await?.unwrap_or(0);
    Ok((end - cursor).max(0))
}

/// Writes the next window; gives whether it stopped at its byte bound (more is waiting).
async fn write_next(stores: &Arc<dyn Stores>, config: &LakeConfig, schemas: &Arc<Mutex<HashMap<i64, Schema>>>, clean: bool, status: &LoadStatus) -> anyhow::Result<bool> {
    let batch = stores.log().read_bounded(CONSUMER, config.max_events, crate::WINDOW_BYTES, Selection::All).await?;
    let Some(position) = batch.position else { return Ok(false) };
    let bounded = batch.entries.iter().map(|e| e.body.len()).sum::<usize>() >= crate::WINDOW_BYTES;
    let mut written = Written::default();
    let events = batch.entries.len() as u64;
    if let Some(first) = batch.entries.first() {
        let (first_seq, root, schemas) = (first.seq, config.root.clone(), schemas.clone());
        // Parsing and writing run on a blocking thread, never on the async workers.
        written = tokio::task::spawn_blocking(move || write_entries(&root, &schemas, first_seq, position, &batch.entries, clean)).await??;
    }
    // Counted before the log's commit (the files are durable): whoever sees the cursor at the
    // end sees the window in the status.
    status.loaded(events - written.skipped, written.rows, written.discards, written.skipped, position);
    stores.log().commit(CONSUMER, position).await?;
    let written = written.files;
    if !written.is_empty() {
        let (max_files, small_bytes) = (config.compact_files, config.compact_small_bytes);
        let compacted = tokio::task::spawn_blocking(move || {
            let mut dirs: Vec<PathBuf> = written.iter().filter_map(|p| p.parent().map(Path::to_path_buf)).collect();
            dirs.dedup();
            for dir in dirs {
                match compact_dir(&dir, max_files, small_bytes) {
                    Ok(Some(path)) => tracing::debug!(path = %path.display(), "lake: compacted"),
                    Ok(None) => {}
                    Err(error) => tracing::error!(%error, dir = %dir.display(), "lake: compaction failed; the files stay as they are"),
                }
            }
        });
        compacted.await?;
    }
    Ok(bounded)
}

/// What a window wrote.
#[derive(Debug, Default)]
struct Written {
    files: Vec<PathBuf>,
    rows: u64,
    discards: u64,
    /// Log entries that were not readable events.
    skipped: u64,
}

/// Writes a window's files (and the schemas it changed).
fn write_entries(root: &Path, schemas: &Mutex<HashMap<i64, Schema>>, first_seq: i64, last_seq: i64, entries: &[LogEntry], clean: bool) -> Result<Written, LakeError> {
    let mut by_project: BTreeMap<i64, Vec<Row>> = BTreeMap::new();
    let (mut discarded, mut skipped) = (0, 0);
    let column_count = |schema: &Schema| schema.tables.values().map(BTreeMap::len).sum::<usize>();
    let mut grown: Vec<(i64, Schema)> = Vec::new();
    {
        let mut schemas = schemas.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut columns_before: BTreeMap<i64, usize> = BTreeMap::new();
        let loaded_at = chrono::Utc::now();
        for entry in entries {
            let event = match serde_json::from_str::<Event>(&entry.body) {
                Ok(event) => event,
                Err(error) => {
                    tracing::error!(seq = entry.seq, %error, "logged event is not readable; skipped by the lake");
                    skipped += 1;
                    continue;
                }
            };
            let schema = schemas.entry(event.project_id).or_insert_with(Schema::with_fixed_tables);
            columns_before.entry(event.project_id).or_insert_with(|| column_count(schema));
            let rows = by_project.entry(event.project_id).or_default();
            for row in rows_for(&event, Dialect::Lake) {
                let (mut row, discards) = schema.admit(row);
                row.stamp(loaded_at);
                rows.push(row);
                for discard in discards {
                    let (mut row, _) = schema.admit(discard.to_row());
                    row.stamp(loaded_at);
                    rows.push(row);
                    discarded += 1;
                }
            }
        }
        for (project_id, before) in columns_before {
            if let Some(schema) = schemas.get(&project_id).filter(|s| column_count(s) != before) {
                grown.push((project_id, schema.clone()));
            }
        }
    }
    // The schema is in place before the files that use it, and both before the commit.
    for (project_id, schema) in &grown {
        save_schema(root, *project_id, schema)?;
    }
    let mut files = Vec::new();
    let rows = by_project.values().map(|rows| rows.len() as u64).sum();
    for (project_id, rows) in by_project {
        files.extend(write_window(root, project_id, first_seq, last_seq, &rows)?);
    }
    if clean {
        let removed = remove_attempts(root, first_seq, &files)?;
        if removed > 0 {
            tracing::info!(removed, first_seq, "lake: removed the files of an earlier attempt at this window");
        }
    }
    Ok(Written { files, rows, discards: discarded, skipped })
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow_array::{Array, BooleanArray, Decimal128Array, Float64Array, Int64Array, StringArray, TimestampMicrosecondArray};
    use serde_json::json;
    use switchyard_store::{AppendBatch, ControlStore, LogRecord, SqliteLog, SqliteLogConfig};

    fn event(project_id: i64, id: &str, kind: &str, name: &str, timestamp: &str, properties: Value, traits: Value) -> Event {
        serde_json::from_value(json!({
            "id": id, "project_id": project_id, "protocol": "segment", "type": kind, "event": name,
            "distinct_id": "user_7", "user_id": "user_7", "anonymous_id": "anon_3",
            "properties": properties, "traits": traits,
            "context": {"library": {"name": "analytics-python", "version": "2.3.0"}, "traits": {"plan": "pro"}},
            "timestamp": timestamp, "received_at": "2025-12-06T23:59:00.000000Z", "request_ip": "198.51.100.4"
        }))
        .unwrap()
    }

    fn events() -> Vec<Event> {
        vec![
            event(
                1,
                "e1",
                "track",
                "tool_used",
                "2025-12-05T09:30:00Z",
                json!({"tool_name": "web_search", "duration_ms": 120, "success": true, "score": 0.5}),
                json!({}),
            ),
            event(
                1,
                "e2",
                "track",
                "$ai_generation",
                "2025-12-06T10:00:00.123456Z",
                json!({"$ai_model": "gpt-4o-mini", "$ai_provider": "openai", "$ai_input_tokens": 1200, "$ai_output_tokens": 300, "$ai_total_cost_usd": 0.0042135, "$ai_trace_id": "t1"}),
                json!({}),
            ),
            event(1, "e3", "identify", "", "2025-12-05T11:00:00Z", json!({}), json!({"plan": "team", "seats": 3})),
        ]
    }

    fn admitted(events: &[Event]) -> Vec<Row> {
        let mut schema = Schema::with_fixed_tables();
        let mut rows = Vec::new();
        for e in events {
            for row in rows_for(e, Dialect::Lake) {
                let (row, discards) = schema.admit(row);
                assert!(discards.is_empty(), "{discards:?}");
                rows.push(row);
            }
        }
        rows
    }

    fn read(path: &Path) -> RecordBatch {
        let reader = ParquetRecordBatchReaderBuilder::try_new(File::open(path).unwrap()).unwrap().build().unwrap();
        let batches: Vec<RecordBatch> = reader.map(Result::unwrap).collect();
        assert_eq!(batches.len(), 1, "{path:?}");
        batches.into_iter().next().unwrap()
    }

    fn column<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
        batch
            .column_by_name(name)
            .unwrap_or_else(|| panic!("no column {name}"))
            .as_any()
            .downcast_ref::<T>()
            .unwrap_or_else(|| panic!("{name}: wrong array type"))
    }

    fn files(root: &Path) -> Vec<String> {
        fn walk(dir: &Path, root: &Path, out: &mut Vec<String>) {
            for entry in fs::read_dir(dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    walk(&path, root, out);
                } else {
                    out.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
                }
            }
        }
        let mut out = Vec::new();
        if root.exists() {
            walk(root, root, &mut out);
        }
        out.sort();
        out
    }

    fn micros(text: &str) -> i64 {
        parse_time(text).unwrap().timestamp_micros()
    }

    #[test]
    fn a_window_is_written_by_table_and_day_with_arrow_types() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let rows = admitted(&events());
        let written = write_window(root, 1, 10, 12, &rows).unwrap();
        let part = "part-00000000000000000010-00000000000000000012.parquet";
        let expected: Vec<String> = [
            "agent_trace_events/day=2025-12-06",
            "ai_generation/day=2025-12-06",
            "event_logs/day=2025-12-05",
            "event_logs/day=2025-12-06",
            "identifies/day=2025-12-05",
            "model_cost_logs/day=2025-12-06",
            "tool_used/day=2025-12-05",
            "tracks/day=2025-12-05",
            "tracks/day=2025-12-06",
            "users/day=2025-12-05",
        ]
        .iter()
        .map(|d| format!("project=1/{d}/{part}"))
        .collect();
        assert_eq!(files(root), expected);
        let mut written_rel: Vec<String> = written.iter().map(|p| p.strip_prefix(root).unwrap().to_string_lossy().into_owned()).collect();
        written_rel.sort();
        assert_eq!(written_rel, expected);

        let at = |table: &str, day: &str| root.join(format!("project=1/{table}/day={day}/{part}"));
        let tool = read(&at("tool_used", "2025-12-05"));
        assert_eq!(tool.num_rows(), 1);
        let schema = tool.schema();
        let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted, "columns sorted by name");
        assert_eq!(schema.field_with_name("duration_ms").unwrap().data_type(), &DataType::Int64);
        assert_eq!(schema.field_with_name("success").unwrap().data_type(), &DataType::Boolean);
        assert_eq!(schema.field_with_name("score").unwrap().data_type(), &DataType::Float64);
        assert_eq!(schema.field_with_name("tool_name").unwrap().data_type(), &DataType::Utf8);
        assert_eq!(
            schema.field_with_name("timestamp").unwrap().data_type(),
            &DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()))
        );
        assert_eq!(column::<Int64Array>(&tool, "duration_ms").value(0), 120);
        assert!(column::<BooleanArray>(&tool, "success").value(0));
        assert_eq!(column::<Float64Array>(&tool, "score").value(0), 0.5);
        assert_eq!(column::<StringArray>(&tool, "tool_name").value(0), "web_search");
        assert_eq!(column::<StringArray>(&tool, "id").value(0), "e1");
        assert_eq!(column::<TimestampMicrosecondArray>(&tool, "timestamp").value(0), micros("2025-12-05T09:30:00Z"));
        assert_eq!(column::<StringArray>(&tool, "context_library_name").value(0), "analytics-python");

        let cost = read(&at("model_cost_logs", "2025-12-06"));
        assert_eq!(cost.num_rows(), 1);
        assert_eq!(cost.schema().field_with_name("cost_usd").unwrap().data_type(), &DataType::Decimal128(38, 12));
        let usd = column::<Decimal128Array>(&cost, "cost_usd");
        assert_eq!(usd.value(0), 4_213_500_000, "0.0042135 exactly, in 10^-12 units");
        assert_eq!(usd.value_as_string(0), "0.004213500000");
        assert_eq!(column::<Int64Array>(&cost, "input_tokens").value(0), 1200);
        assert_eq!(column::<Int64Array>(&cost, "output_tokens").value(0), 300);
        assert_eq!(column::<StringArray>(&cost, "model").value(0), "gpt-4o-mini");
        assert_eq!(column::<StringArray>(&cost, "trace_id").value(0), "t1");
        assert_eq!(column::<TimestampMicrosecondArray>(&cost, "timestamp").value(0), micros("2025-12-06T10:00:00.123456Z"));

        // Two events of the day in event_logs: the identify has no properties (NULL there).
        let logs = read(&at("event_logs", "2025-12-05"));
        assert_eq!(logs.num_rows(), 2);
        let ids = column::<StringArray>(&logs, "id");
        assert_eq!((ids.value(0), ids.value(1)), ("e1", "e3"));
        let props = column::<StringArray>(&logs, "properties");
        let first: Value = serde_json::from_str(props.value(0)).unwrap();
        assert_eq!(first["tool_name"], json!("web_search"), "json as JSON text");
        assert!(props.is_null(1));
        assert!(column::<Int64Array>(&logs, "latency_ms").is_null(1));
        assert_eq!(column::<Int64Array>(&logs, "latency_ms").value(0), 120);

        let users = read(&at("users", "2025-12-05"));
        assert_eq!(users.num_rows(), 1);
        assert_eq!(column::<StringArray>(&users, "id").value(0), "user_7");
        assert_eq!(column::<StringArray>(&users, "plan").value(0), "team");
        assert_eq!(column::<Int64Array>(&users, "seats").value(0), 3);
        assert_eq!(column::<StringArray>(&users, "context_traits_plan").value(0), "pro");

        // The same window again: the same files, the same rows, nothing beside them.
        let again = write_window(root, 1, 10, 12, &rows).unwrap();
        assert_eq!(again, written);
        assert_eq!(files(root), expected);
        assert_eq!(read(&at("event_logs", "2025-12-05")), logs);
        assert_eq!(read(&at("model_cost_logs", "2025-12-06")), cost);

        // A table name that is not one is refused before anything is written.
        let mut bad = rows[0].clone();
        bad.table = "../escape".into();
        assert!(matches!(write_window(root, 1, 13, 13, &[bad]), Err(LakeError::TableName(_))));
        assert_eq!(files(root), expected);
    }

    #[test]
    fn the_day_falls_back_to_received_at_and_earlier_attempts_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let discard = switchyard_warehouse::Discard {
            table: "tool_used".into(),
            column: "duration_ms".into(),
            row_id: "e9".into(),
            value: "slow".into(),
            received_at: Some("2025-12-07T01:00:00.000000Z".into()),
            reason: "incompatible schema conversion from string to int".into(),
        };
        let written = write_window(root, 3, 5, 9, &[discard.to_row()]).unwrap();
        assert_eq!(files(root), vec!["project=3/rudder_discards/day=2025-12-07/part-00000000000000000005-00000000000000000009.parquet"]);
        // A retry of the window that read further: the earlier attempt's file goes.
        let retry = write_window(root, 3, 5, 11, &[discard.to_row()]).unwrap();
        assert_ne!(retry, written);
        assert_eq!(remove_attempts(root, 5, &retry).unwrap(), 1);
        assert_eq!(files(root), vec!["project=3/rudder_discards/day=2025-12-07/part-00000000000000000005-00000000000000000011.parquet"]);
        let batch = read(&retry[0]);
        assert_eq!(column::<StringArray>(&batch, "column_value").value(0), "slow");
        assert_eq!(column::<TimestampMicrosecondArray>(&batch, "received_at").value(0), micros("2025-12-07T01:00:00Z"));
    }

    #[test]
    fn small_files_are_compacted_in_log_order_and_a_crash_between_leaves_no_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut schema = Schema::with_fixed_tables();
        // Ten windows of one event each, the same day; later ones carry a new column.
        for n in 1..=10 {
            let props = if n > 5 { json!({"tool_name": "sql", "rows": n}) } else { json!({"tool_name": "sql"}) };
            let e = event(1, &format!("e{n}"), "track", "tool_used", "2025-12-05T09:30:00Z", props, json!({}));
            let rows: Vec<Row> = rows_for(&e, Dialect::Lake).into_iter().filter(|r| r.table == "tool_used").map(|r| schema.admit(r).0).collect();
            write_window(root, 1, n, n, &rows).unwrap();
        }
        let day = root.join("project=1/tool_used/day=2025-12-05");
        assert_eq!(compact_dir(&day, 10, 1 << 20).unwrap(), None, "not more than 10 files");
        let inputs: Vec<(PathBuf, Vec<u8>)> = parts(&day).unwrap().into_iter().map(|(p, _)| (p.clone(), fs::read(&p).unwrap())).collect();
        let out = compact_dir(&day, 8, 1 << 20).unwrap().unwrap();
        assert_eq!(files(root), vec!["project=1/tool_used/day=2025-12-05/part-00000000000000000001-00000000000000000010.parquet"]);
        let batch = read(&out);
        assert_eq!(batch.num_rows(), 10);
        let ids = column::<StringArray>(&batch, "id");
        assert_eq!((0..10).map(|i| ids.value(i).to_owned()).collect::<Vec<_>>(), (1..=10).map(|n| format!("e{n}")).collect::<Vec<_>>());
        let rows = column::<Int64Array>(&batch, "rows");
        assert!(rows.is_null(0) && rows.value(9) == 10, "the new column, null where absent");
        // A crash after the output was in place but before the inputs went: they are covered.
        for (path, bytes) in &inputs[..3] {
            fs::write(path, bytes).unwrap();
        }
        assert_eq!(files(root).len(), 4);
        assert_eq!(remove_attempts(root, 11, &[]).unwrap(), 3);
        assert_eq!(files(root).len(), 1);
        // Files from the size limit on are left alone.
        assert_eq!(compact_dir(&day, 0, 1).unwrap(), None);
    }

    #[test]
    fn schemas_are_kept_across_runs() {
        let dir = tempfile::tempdir().unwrap();
        let schemas = Mutex::new(HashMap::new());
        let e = event(4, "e1", "track", "tool_used", "2025-12-05T09:30:00Z", json!({"latency": 12}), json!({}));
        let entry = LogEntry { seq: 1, body: serde_json::to_string(&e).unwrap() };
        write_entries(dir.path(), &schemas, 1, 1, &[entry], true).unwrap();
        let loaded = load_schemas(dir.path()).unwrap();
        assert_eq!(loaded[&4].column("tool_used", "latency"), Some(ColumnType::Int));
        assert_eq!(loaded[&4], schemas.lock().unwrap()[&4]);
        // The next run discards a string there, as this one would have.
        let schemas = Mutex::new(loaded);
        let e = event(4, "e2", "track", "tool_used", "2025-12-05T09:31:00Z", json!({"latency": "slow"}), json!({}));
        let entry = LogEntry { seq: 2, body: serde_json::to_string(&e).unwrap() };
        let written = write_entries(dir.path(), &schemas, 2, 2, &[entry], false).unwrap();
        assert_eq!((written.discards, written.skipped), (1, 0));
        assert!(written.files.iter().any(|p| p.to_string_lossy().contains("rudder_discards")), "{written:?}");
    }

    #[test]
    fn the_fast_date_time_reading_agrees_with_the_general_one() {
        for text in ["2025-12-05T09:30:00.123456Z", "1970-01-01T00:00:00.000000Z", "2024-02-29T23:59:59.999999Z", "2025-12-05T09:30:00Z", "2025-12-05 09:30:00.5"] {
            assert_eq!(micros_of(text), parse_time(text).map(|t| t.timestamp_micros()), "{text}");
        }
        for text in ["2025-02-30T00:00:00.000000Z", "2025-12-05T25:00:00.000000Z", "2025-12-0xT09:30:00.000000Z", "nope"] {
            assert_eq!(micros_of(text), None, "{text}");
        }
    }

    struct TestStores {
        log: SqliteLog,
        control: ControlStore,
    }

    impl Stores for TestStores {
        fn log(&self) -> &SqliteLog {
            &self.log
        }
        fn control(&self) -> &ControlStore {
            &self.control
        }
    }

    fn record(event: &Event) -> LogRecord {
        LogRecord {
            id: event.id.clone(),
            project_id: event.project_id,
            kind: event.kind.as_str(),
            event: event.event.clone(),
            distinct_id: event.distinct_id.clone(),
            trace_id: None,
            timestamp: event.timestamp.clone(),
            received_at: event.received_at.clone(),
            body: serde_json::to_string(event).unwrap(),
            person_update: false,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_consumer_writes_windows_from_the_log_and_commits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lake");
        let stores = Arc::new(TestStores {
            log: SqliteLog::open(&dir.path().join("log.db"), SqliteLogConfig::default()).unwrap(),
            control: ControlStore::open(&dir.path().join("control.db")).unwrap(),
        });
        let mut all = events();
        all.push(event(
            1,
            "e4",
            "track",
            "tool_used",
            "2025-12-05T12:00:00Z",
            json!({"tool_name": "calc", "duration_ms": "slow"}),
            json!({}),
        ));
        all.push(event(2, "e5", "track", "tool_used", "2025-12-05T12:00:00Z", json!({"tool_name": "calc", "duration_ms": 7}), json!({})));
        stores
            .log
            .append(AppendBatch {
                events: all.iter().map(record).collect(),
                ..Default::default()
            })
            .await
            .unwrap();
        let probe = stores.log.read("probe", 100, Selection::All).await.unwrap();
        let (first, last) = (probe.entries[0].seq, probe.position.unwrap());
        assert_eq!(last - first, 4);
        // A file of an earlier attempt at this window that read further (a crash before the commit).
        let stale = root.join(format!("project=1/tool_used/day=2025-12-05/part-{first:020}-{:020}.parquet", last + 5));
        fs::create_dir_all(stale.parent().unwrap()).unwrap();
        fs::write(&stale, b"partial").unwrap();

        let (stop_tx, stop_rx) = watch::channel(false);
        let config = LakeConfig {
            max_events: 100,
            max_wait: Duration::from_millis(50),
            ..LakeConfig::new(root.clone())
        };
        let task = tokio::spawn(run(stores.clone() as Arc<dyn Stores>, config, Arc::default(), stop_rx));
        let deadline = Instant::now() + Duration::from_secs(20);
        while stores.log.cursor(CONSUMER).await.unwrap() != Some(last) {
            assert!(Instant::now() < deadline, "the cursor did not pass the events");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();

        let part = format!("part-{first:020}-{last:020}.parquet");
        let listed = files(&root);
        assert!(listed.iter().all(|f| f.ends_with(&part) || f.ends_with("/_schema.json")), "one window, no stale or temporary file: {listed:?}");
        assert!(!stale.exists());
        let tool = read(&root.join(format!("project=1/tool_used/day=2025-12-05/{part}")));
        assert_eq!(tool.num_rows(), 2);
        let durations = column::<Int64Array>(&tool, "duration_ms");
        assert_eq!(durations.value(0), 120);
        assert!(durations.is_null(1), "the conflicting value is left out");
        let uuid_ts = column::<TimestampMicrosecondArray>(&tool, "uuid_ts");
        assert!(!uuid_ts.is_null(0), "the load time is stamped");
        // The conflict is in the discards (dated by the row's received_at).
        let discards = read(&root.join(format!("project=1/rudder_discards/day=2025-12-06/{part}")));
        assert_eq!(discards.num_rows(), 2, "the property's column and event_logs.latency_ms");
        let tables = column::<StringArray>(&discards, "table_name");
        assert_eq!((tables.value(0), tables.value(1)), ("tool_used", "event_logs"));
        for i in 0..2 {
            assert_eq!(column::<StringArray>(&discards, "row_id").value(i), "e4");
            assert_eq!(column::<StringArray>(&discards, "column_value").value(i), "slow");
            assert_eq!(column::<StringArray>(&discards, "reason").value(i), "incompatible schema conversion from string to int");
        }
        let columns = column::<StringArray>(&discards, "column_name");
        assert_eq!((columns.value(0), columns.value(1)), ("duration_ms", "latency_ms"));
        // Projects are apart, with their own schemas.
        let other = read(&root.join(format!("project=2/tool_used/day=2025-12-05/{part}")));
        assert_eq!(column::<Int64Array>(&other, "duration_ms").value(0), 7);
        let costs = read(&root.join(format!("project=1/model_cost_logs/day=2025-12-06/{part}")));
        assert_eq!(column::<Decimal128Array>(&costs, "cost_usd").value(0), 4_213_500_000);
        assert_eq!(listed.len(), 16, "14 files and 2 schemas: {listed:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn full_windows_are_written_at_once_and_a_partial_one_waits() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("lake");
        let stores = Arc::new(TestStores {
            log: SqliteLog::open(&dir.path().join("log.db"), SqliteLogConfig::default()).unwrap(),
            control: ControlStore::open(&dir.path().join("control.db")).unwrap(),
        });
        let tool = |i: usize| event(1, &format!("e{i}"), "track", "tool_used", "2025-12-05T09:30:00Z", json!({"n": i}), json!({}));
        stores
            .log
            .append(AppendBatch {
                events: (0..5).map(|i| record(&tool(i))).collect(),
                ..Default::default()
            })
            .await
            .unwrap();
        let probe = stores.log.read("probe", 100, Selection::All).await.unwrap();
        let seqs: Vec<i64> = probe.entries.iter().map(|e| e.seq).collect();

        let (stop_tx, stop_rx) = watch::channel(false);
        let config = LakeConfig {
            max_events: 2,
            max_wait: Duration::from_secs(600),
            ..LakeConfig::new(root.clone())
        };
        let task = tokio::spawn(run(stores.clone() as Arc<dyn Stores>, config, Arc::default(), stop_rx));
        let deadline = Instant::now() + Duration::from_secs(20);
        while stores.log.cursor(CONSUMER).await.unwrap() != Some(seqs[3]) {
            assert!(Instant::now() < deadline, "the full windows were not written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // The fifth event waits for its window to fill (or for max_wait).
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(stores.log.cursor(CONSUMER).await.unwrap(), Some(seqs[3]));
        stop_tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), task).await.unwrap().unwrap();

        let day = root.join("project=1/tool_used/day=2025-12-05");
        let mut parts: Vec<String> = fs::read_dir(&day).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        parts.sort();
        assert_eq!(parts, vec![part_name(seqs[0], seqs[1]), part_name(seqs[2], seqs[3])]);
        let second = read(&day.join(part_name(seqs[2], seqs[3])));
        let n = column::<Int64Array>(&second, "n");
        assert_eq!((n.len(), n.value(0), n.value(1)), (2, 2, 3));
    }
}

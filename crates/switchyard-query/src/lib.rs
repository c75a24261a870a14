//! SQL over the embedded Parquet lake, through Apache DataFusion: read-only, one project's
//! tables only, within a time, row and memory limit.
//!
//! Each query gets its own DataFusion session holding the project's tables it names, nothing else:
//! every directory `{root}/project={id}/{table}/` is a table over its Parquet files (all days,
//! the files' schemas merged by column name). Two tables are views, as RudderStack's warehouse
//! has them as tables:
//! - `users`: the latest non-null value of each column per user (the lake keeps one row per
//!   identify, its loader does not merge them);
//! - `agent_trace_history`: one row per trace, folded from `agent_trace_events`
//!   ([`switchyard_warehouse::trace::history_view`]), right however the events arrived.
//!
//! The statement is planned with DDL, DML and other statements refused, so nothing a query
//! does can write, and no file outside the project's tables can be named (DataFusion reads
//! files named in SQL only when a session enables it; these don't).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::array::{
    Array, AsArray, BooleanArray, Decimal128Array, Float32Array, Float64Array, Int16Array, Int32Array, Int64Array, Int8Array, RecordBatch, UInt16Array,
    UInt32Array, UInt64Array, UInt8Array,
};
use datafusion::arrow::datatypes::{DataType, TimeUnit};
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::common::TableReference;
use datafusion::config::ConfigOptions;
use datafusion::datasource::file_format::options::ReadOptions;
use datafusion::datasource::listing::{ListingTable, ListingTableConfig, ListingTableUrl};
use datafusion::execution::session_state::SessionStateBuilder;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::coop::CooperativeExec;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::arrow::util::display::{ArrayFormatter, FormatOptions};
use datafusion::error::DataFusionError;
use datafusion::execution::cache::cache_manager::{CacheManagerConfig, FileMetadataCache, DEFAULT_METADATA_CACHE_LIMIT};
use datafusion::execution::cache::default_cache::DefaultCache;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::{ParquetReadOptions, SQLOptions, SessionConfig, SessionContext};
use futures_util::StreamExt;
use serde::Serialize;
use serde_json::Value;
use switchyard_warehouse::trace::{history_view, ViewEngine};
use switchyard_warehouse::parts::{covered, part_range};

/// A query's limits.
#[derive(Debug, Clone)]
pub struct QueryLimits {
    /// Rows an answer may have; a query that gives more is refused (add a `LIMIT`).
    pub max_rows: usize,
    /// How long a query may run.
    pub timeout: Duration,
    /// Memory its operators may hold (sorts, joins, aggregations), in bytes.
    pub memory_bytes: usize,
}

impl Default for QueryLimits {
    fn default() -> QueryLimits {
        QueryLimits {
            max_rows: 100_000,
            timeout: Duration::from_secs(30),
            memory_bytes: 1 << 30,
        }
    }
}

/// Why a query was refused or failed. Every kind but [`QueryError::Engine`] is the query's fault.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("queries are read-only: {0}")]
    ReadOnly(String),
    #[error("{0}")]
    Invalid(String),
    #[error("the answer has more than {0} rows; add a LIMIT or aggregate")]
    TooManyRows(usize),
    #[error("the query ran longer than its limit of {0:?}")]
    Timeout(Duration),
    #[error("the query needs more memory than its limit: {0}")]
    Memory(String),
    #[error("query engine: {0}")]
    Engine(String),
}

impl From<DataFusionError> for QueryError {
    fn from(error: DataFusionError) -> QueryError {
        match error.find_root() {
            DataFusionError::ResourcesExhausted(e) => QueryError::Memory(e.clone()),
            DataFusionError::Plan(e) if is_read_only_refusal(e) => QueryError::ReadOnly(e.clone()),
            DataFusionError::SQL(..) | DataFusionError::Plan(_) | DataFusionError::SchemaError(..) | DataFusionError::NotImplemented(_) => {
                QueryError::Invalid(error.strip_backtrace())
            }
            DataFusionError::Execution(e) if is_read_only_refusal(e) => QueryError::ReadOnly(e.clone()),
            DataFusionError::Execution(e) => QueryError::Invalid(e.clone()),
            _ => QueryError::Engine(error.strip_backtrace()),
        }
    }
}

impl From<datafusion::arrow::error::ArrowError> for QueryError {
    fn from(error: datafusion::arrow::error::ArrowError) -> QueryError {
        QueryError::Engine(error.to_string())
    }
}

/// DataFusion's refusals under [`SQLOptions`] ("DDL not supported: …", "DML not supported: …",
/// "Statement not supported: …").
fn is_read_only_refusal(message: &str) -> bool {
    ["DDL not supported", "DML not supported", "Statement not supported"].iter().any(|m| message.contains(m))
}

/// An answer: column names, their types, and the rows as JSON values (decimals as exact
/// strings, timestamps as RFC 3339 in UTC).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub types: Vec<String>,
    pub results: Vec<Vec<Value>>,
}

/// The lake's directory of one project.
pub fn project_dir(root: &Path, project_id: i64) -> PathBuf {
    root.join(format!("project={project_id}"))
}

/// The project's tables (directories with Parquet files) in the lake, sorted. Names are the
/// loader's: ASCII letters, digits and `_` (`_order`: RudderStack escapes reserved words so);
/// anything else is not a table.
pub fn lake_tables(root: &Path, project_id: i64) -> std::io::Result<Vec<String>> {
    let dir = project_dir(root, project_id);
    let entries = match std::fs::read_dir(&dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut tables = Vec::new();
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let valid = !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if valid && entry.file_type()?.is_dir() && has_parquet(&entry.path())? {
            tables.push(name);
        }
    }
    tables.sort();
    Ok(tables)
}

/// A table's Parquet files, all days, but those a compacted file covers: compaction puts its
/// output (`part-{first}-{last}.parquet`, the inputs' whole log range) in place before it
/// removes its inputs, and a query that lists the day in between reads each row once.
fn visible_parts(table_dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut visible = Vec::new();
    let mut dirs = vec![table_dir.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let mut parts: Vec<(PathBuf, Option<(i64, i64)>)> = Vec::new();
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if entry.file_type()?.is_dir() {
                dirs.push(path);
            } else if name.ends_with(".parquet") && !name.starts_with('.') {
                parts.push((path, part_range(&name)));
            }
        }
        let ranges: Vec<(i64, i64)> = parts.iter().filter_map(|(_, range)| *range).collect();
        for (path, range) in parts {
            if !range.is_some_and(|range| covered(range, &ranges)) {
                visible.push(path);
            }
        }
    }
    visible.sort();
    Ok(visible)
}

fn has_parquet(dir: &Path) -> std::io::Result<bool> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let path = entry.path();
        if entry.file_type()?.is_dir() {
            if has_parquet(&path)? {
                return Ok(true);
            }
        } else if path.extension().is_some_and(|e| e == "parquet") && !entry.file_name().to_string_lossy().starts_with('.') {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The table the lake's `users` rows are registered as; `users` is the merged view over it.
/// Upper case: no lake table is named so (the loader's names are lower case).
const USERS_ROWS: &str = "UsersIdentified";

/// A session with nothing registered, within `limits`; Parquet footers are read through
/// `footers` when given (kept across queries: checked against each file's size and
/// modification time, and the lake never rewrites a file in place). Listings are not cached:
/// each query sees the files there are.
fn empty_session(limits: &QueryLimits, footers: Option<&Arc<FileMetadataCache>>) -> Result<SessionContext, QueryError> {
    let mut caches = CacheManagerConfig::default();
    if let Some(footers) = footers {
        caches = caches.with_file_metadata_cache(Some(Arc::clone(footers)));
    }
    let runtime = RuntimeEnvBuilder::new()
        .with_memory_limit(limits.memory_bytes, 1.0)
        .with_cache_manager(caches)
        .build_arc()?;
    let config = SessionConfig::new().with_information_schema(true).with_target_partitions(2);
    let state = SessionStateBuilder::new()
        .with_config(config)
        .with_runtime_env(runtime)
        .with_default_features()
        .with_physical_optimizer_rule(Arc::new(YieldEverywhere))
        .build();
    Ok(SessionContext::new_with_state(state))
}

/// Registers in `ctx` the project's tables `wanted` names (a table's name, or a view's), and
/// the views over them; all of them when a reference has a schema (`information_schema.tables`
/// lists them all). A query registers only what it reads, so it does not read the footers of
/// every table's files.
///
/// Gives each table's directory and the files it reads, for the query to check that they are
/// still the files there are once DataFusion has listed them.
async fn register(ctx: &SessionContext, root: &Path, project_id: i64, wanted: &[TableReference]) -> Result<Vec<Listed>, QueryError> {
    let all = wanted.iter().any(|r| r.schema().is_some());
    let named = |name: &str| all || wanted.iter().any(|r| r.table().eq_ignore_ascii_case(name));
    let dir = project_dir(root, project_id);
    let tables = lake_tables(root, project_id).map_err(|e| QueryError::Engine(format!("listing the lake: {e}")))?;
    let tables: Vec<&String> = tables
        .iter()
        .filter(|t| named(t) || (t.as_str() == "agent_trace_events" && named("agent_trace_history")))
        .collect();
    let mut listed = Vec::with_capacity(tables.len());
    for table in &tables {
        let name = if table.as_str() == "users" { USERS_ROWS } else { table.as_str() };
        let table_dir = dir.join(table);
        // The schema from every file's footer (merged by name); the rows from the files no
        // compacted file covers.
        let options = ParquetReadOptions::default().to_listing_options(&ctx.copied_config(), ctx.copied_table_options());
        let whole = ListingTableUrl::parse(format!("{}/", table_dir.display()))?;
        let schema = options.infer_schema(&ctx.state(), &whole).await?;
        let files = visible_parts(&table_dir).map_err(|e| QueryError::Engine(format!("listing the lake: {e}")))?;
        let urls = files
            .iter()
            .map(|f| ListingTableUrl::parse(f.display().to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        let config = ListingTableConfig::new_with_multi_paths(urls).with_listing_options(options).with_schema(schema);
        ctx.register_table(TableReference::bare(name), Arc::new(ListingTable::try_new(config)?))?;
        listed.push((table_dir, files));
    }
    if tables.iter().any(|t| t.as_str() == "users") {
        let schema = ctx.table_provider(TableReference::bare(USERS_ROWS)).await?.schema();
        let mut columns = vec!["id".to_owned()];
        for field in schema.fields().iter().filter(|f| f.name() != "id") {
            let c = quoted(field.name());
            columns.push(format!("last_value({c} ORDER BY received_at, uuid_ts) FILTER (WHERE {c} IS NOT NULL) AS {c}"));
        }
        ctx.sql(&format!("CREATE VIEW users AS SELECT {} FROM {} GROUP BY id", columns.join(", "), quoted(USERS_ROWS))).await?;
    }
    if tables.iter().any(|t| t.as_str() == "agent_trace_events") {
        ctx.sql(&format!("CREATE VIEW agent_trace_history AS {}", history_view(ViewEngine::DataFusion, "agent_trace_events"))).await?;
    }
    Ok(listed)
}

/// Wraps every operator of a plan in DataFusion's [`CooperativeExec`], which spends a unit of
/// the task's Tokio budget per batch. DataFusion yields only where its sources do; an operator
/// that makes many batches from what it holds (a cross join) would otherwise keep its task from
/// ever yielding, and an aborted query (past its time limit) would keep its threads to the end.
#[derive(Debug)]
struct YieldEverywhere;

impl PhysicalOptimizerRule for YieldEverywhere {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            if (node.as_ref() as &dyn std::any::Any).is::<CooperativeExec>() {
                return Ok(Transformed::no(node));
            }
            Ok(Transformed::yes(Arc::new(CooperativeExec::new(node)) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "yield_everywhere"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

fn quoted(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Runs queries on threads of its own, so a query that keeps a core busy never holds up the
/// caller's runtime, and its time limit is enforced from outside: past it, the caller has its
/// answer (`Timeout`) and the query's task is aborted.
pub struct QueryEngine {
    root: PathBuf,
    limits: QueryLimits,
    runtime: Option<tokio::runtime::Runtime>,
    /// The Parquet footers read, shared by the queries (DataFusion's default bound, 50 MiB).
    footers: Arc<FileMetadataCache>,
}

impl QueryEngine {
    /// An engine over the lake at `root`; `on_thread_start` runs on each of its threads (the
    /// server lowers their priority there).
    pub fn new(root: impl Into<PathBuf>, limits: QueryLimits, on_thread_start: impl Fn() + Send + Sync + 'static) -> std::io::Result<QueryEngine> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("query")
            .on_thread_start(on_thread_start)
            .enable_all()
            .build()?;
        Ok(QueryEngine {
            root: root.into(),
            limits,
            runtime: Some(runtime),
            footers: Arc::new(DefaultCache::new(DEFAULT_METADATA_CACHE_LIMIT)),
        })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn limits(&self) -> &QueryLimits {
        &self.limits
    }

    /// Runs `sql` over project `project_id`'s tables.
    pub async fn query(&self, project_id: i64, sql: &str) -> Result<QueryResult, QueryError> {
        let Some(runtime) = &self.runtime else { return Err(QueryError::Engine("the query engine is shut down".into())) };
        let (root, limits, sql, footers) = (self.root.clone(), self.limits.clone(), sql.to_owned(), self.footers.clone());
        let mut task = runtime.spawn(async move { query_with(&root, project_id, &sql, &limits, Some(&footers)).await });
        match tokio::time::timeout(self.limits.timeout, &mut task).await {
            Ok(Ok(result)) => result,
            Ok(Err(error)) => Err(QueryError::Engine(format!("the query's task failed: {error}"))),
            Err(_) => {
                task.abort();
                Err(QueryError::Timeout(self.limits.timeout))
            }
        }
    }
}

impl Drop for QueryEngine {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Runs `sql` over project `project_id`'s tables in the lake at `root`, on the calling
/// runtime. Its time limit holds only where the query yields: use [`QueryEngine`] to bound it.
pub async fn query(root: &Path, project_id: i64, sql: &str, limits: &QueryLimits) -> Result<QueryResult, QueryError> {
    query_with(root, project_id, sql, limits, None).await
}

async fn query_with(root: &Path, project_id: i64, sql: &str, limits: &QueryLimits, footers: Option<&Arc<FileMetadataCache>>) -> Result<QueryResult, QueryError> {
    if sql.trim().is_empty() {
        return Err(QueryError::Invalid("the query is empty".into()));
    }
    // A file listed and then removed by a compaction (its rows are in the merged file now):
    // the query runs again over the files there are (a compaction is rare and quick).
    let run = async {
        let mut tries = 0;
        loop {
            tries += 1;
            match run_once(root, project_id, sql, limits, footers).await {
                Ok(Some(result)) => return Ok(result),
                Ok(None) if tries < 3 => {}
                Ok(None) => return Err(QueryError::Engine("the lake's files kept changing while the query was planned".into())),
                Err(QueryError::Engine(message)) if tries < 3 && vanished(&message) => {}
                Err(error) => return Err(error),
            }
        }
    };
    tokio::time::timeout(limits.timeout, run).await.map_err(|_| QueryError::Timeout(limits.timeout))?
}

/// An engine error that says a file is gone (object_store's `NotFound`, or the OS's).
fn vanished(message: &str) -> bool {
    (message.contains("Object at location") && message.contains("not found")) || message.contains("No such file or directory")
}

/// A table's directory and the files a query reads of it.
type Listed = (PathBuf, Vec<PathBuf>);

/// Runs the query once; `None` when the lake's files changed while it was planned.
async fn run_once(root: &Path, project_id: i64, sql: &str, limits: &QueryLimits, footers: Option<&Arc<FileMetadataCache>>) -> Result<Option<QueryResult>, QueryError> {
    // Parsed first, to register only the tables the statement names.
    let ctx = empty_session(limits, footers)?;
    let state = ctx.state();
    let statement = state.sql_to_statement(sql, &state.config().options().sql_parser.dialect)?;
    let wanted = state.resolve_table_references(&statement)?;
    let listed = register(&ctx, root, project_id, &wanted).await?;
    let plan = ctx.state().statement_to_plan(statement).await?;
    SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false).verify_plan(&plan)?;
    let frame = ctx.execute_logical_plan(plan).await?;
    let schema = frame.schema().as_arrow().clone();
    // The physical plan lists the files given (a file gone by then is skipped): the files must
    // be the same now, or a compaction came in between and the query starts over.
    let mut stream = frame.execute_stream().await?;
    for (dir, files) in &listed {
        if visible_parts(dir).map_err(|e| QueryError::Engine(format!("listing the lake: {e}")))? != *files {
            return Ok(None);
        }
    }
    let mut results = Vec::new();
    while let Some(batch) = stream.next().await {
        let batch = batch?;
        if results.len() + batch.num_rows() > limits.max_rows {
            return Err(QueryError::TooManyRows(limits.max_rows));
        }
        append_rows(&batch, &mut results)?;
    }
    Ok(Some(QueryResult {
        columns: schema.fields().iter().map(|f| f.name().clone()).collect(),
        types: schema.fields().iter().map(|f| type_name(f.data_type())).collect(),
        results,
    }))
}

/// A column type as a user reads it.
fn type_name(ty: &DataType) -> String {
    match ty {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "string".into(),
        DataType::Int8 | DataType::Int16 | DataType::Int32 | DataType::Int64 => "int".into(),
        DataType::UInt8 | DataType::UInt16 | DataType::UInt32 | DataType::UInt64 => "int".into(),
        DataType::Float32 | DataType::Float64 => "float".into(),
        DataType::Boolean => "boolean".into(),
        DataType::Timestamp(..) => "datetime".into(),
        DataType::Decimal128(p, s) => format!("decimal({p},{s})"),
        other => other.to_string().to_lowercase(),
    }
}

fn append_rows(batch: &RecordBatch, rows: &mut Vec<Vec<Value>>) -> Result<(), QueryError> {
    let start = rows.len();
    rows.extend((0..batch.num_rows()).map(|_| Vec::with_capacity(batch.num_columns())));
    for column in batch.columns() {
        let values = json_values(column.as_ref())?;
        for (row, value) in rows[start..].iter_mut().zip(values) {
            row.push(value);
        }
    }
    Ok(())
}

macro_rules! numbers {
    ($array:expr, $ty:ty) => {{
        let a = $array.as_any().downcast_ref::<$ty>().expect("the array's type matches its data type");
        (0..a.len()).map(|i| if a.is_null(i) { Value::Null } else { Value::from(a.value(i)) }).collect()
    }};
}

/// One column's values as JSON.
fn json_values(array: &dyn Array) -> Result<Vec<Value>, QueryError> {
    let float = |f: f64| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number);
    Ok(match array.data_type() {
        DataType::Int8 => numbers!(array, Int8Array),
        DataType::Int16 => numbers!(array, Int16Array),
        DataType::Int32 => numbers!(array, Int32Array),
        DataType::Int64 => numbers!(array, Int64Array),
        DataType::UInt8 => numbers!(array, UInt8Array),
        DataType::UInt16 => numbers!(array, UInt16Array),
        DataType::UInt32 => numbers!(array, UInt32Array),
        DataType::UInt64 => numbers!(array, UInt64Array),
        DataType::Boolean => numbers!(array, BooleanArray),
        DataType::Float32 => {
            let a = array.as_any().downcast_ref::<Float32Array>().expect("Float32");
            (0..a.len()).map(|i| if a.is_null(i) { Value::Null } else { float(f64::from(a.value(i))) }).collect()
        }
        DataType::Float64 => {
            let a = array.as_any().downcast_ref::<Float64Array>().expect("Float64");
            (0..a.len()).map(|i| if a.is_null(i) { Value::Null } else { float(a.value(i)) }).collect()
        }
        DataType::Utf8 => strings(array.as_string::<i32>().iter()),
        DataType::LargeUtf8 => strings(array.as_string::<i64>().iter()),
        DataType::Utf8View => strings(array.as_string_view().iter()),
        DataType::Decimal128(_, _) => {
            let a = array.as_any().downcast_ref::<Decimal128Array>().expect("Decimal128");
            (0..a.len()).map(|i| if a.is_null(i) { Value::Null } else { Value::String(trim_decimal(&a.value_as_string(i))) }).collect()
        }
        DataType::Timestamp(..) => {
            let cast = datafusion::arrow::compute::cast(array, &DataType::Timestamp(TimeUnit::Microsecond, None))?;
            let a = cast.as_primitive::<datafusion::arrow::datatypes::TimestampMicrosecondType>();
            (0..a.len())
                .map(|i| {
                    if a.is_null(i) {
                        return Value::Null;
                    }
                    chrono::DateTime::from_timestamp_micros(a.value(i)).map_or(Value::Null, |t| Value::String(t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()))
                })
                .collect()
        }
        _ => {
            let options = FormatOptions::default();
            let formatter = ArrayFormatter::try_new(array, &options)?;
            (0..array.len()).map(|i| if array.is_null(i) { Value::Null } else { Value::String(formatter.value(i).to_string()) }).collect()
        }
    })
}

fn strings<'a>(values: impl Iterator<Item = Option<&'a str>>) -> Vec<Value> {
    values.map(|v| v.map_or(Value::Null, |s| Value::String(s.to_owned()))).collect()
}

/// `0.004213500000` → `0.0042135`, `12.000000000000` → `12`.
fn trim_decimal(text: &str) -> String {
    if !text.contains('.') {
        return text.to_owned();
    }
    text.trim_end_matches('0').trim_end_matches('.').to_owned()
}

#[cfg(test)]
mod tests;

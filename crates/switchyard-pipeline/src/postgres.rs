//! The PostgreSQL warehouse: a consumer of the event log (cursor `warehouse:postgres:{id}`,
//! [`consumer_name`]) that loads the warehouse rows of one project's events
//! ([`switchyard_warehouse::rows_for`], [`Dialect::Postgres`]) into one PostgreSQL schema. The
//! sibling of the Parquet lake ([`crate::lake`]), with the same windows.
//!
//! **Exactly once.** The cursor that counts lives in PostgreSQL, in
//! `"{schema}"._switchyard_loads (consumer, position, loaded_at)`, and is written in the same
//! transaction as the window's rows. One transaction per window: lock the cursor row, create
//! tables and columns, copy, merge, move the cursor, COMMIT; only then is the log's own copy of
//! the cursor committed (it serves lag and retention). At every connect the log's cursor is set
//! to PostgreSQL's (it may move backwards: the log's commit is a plain upsert), and every
//! window checks that the log read from PostgreSQL's position, so a crash between the two
//! commits never loads a window twice, and a failed transaction leaves both cursors where
//! they were. Rows are upserted on their key, so even a replay (a cursor row deleted by hand)
//! gives the same rows, not more.
//!
//! **Load.** Per table of the window: `CREATE TEMP TABLE … (LIKE target) ON COMMIT DROP`, a
//! binary `COPY … FROM STDIN (FORMAT binary)` of the window's rows into it, then
//! `INSERT INTO target SELECT … FROM staging ON CONFLICT (key) DO UPDATE SET c =
//! COALESCE(EXCLUDED.c, t.c), …`. The key is `id`; `rudder_discards`' is (`row_id`,
//! `table_name`, `column_name`). A row never carries a NULL (blank values make no column), so
//! the `COALESCE` is exactly "a row replaces the columns it carries" ([`Merge::Replace`],
//! where a replay writes the same values) and "a NULL keeps the stored value"
//! ([`Merge::LatestNonNull`], `users`). `ON CONFLICT` cannot touch a row twice in one
//! statement, so rows of one key within a window are merged first, in log order: a
//! `Replace` row replaces the earlier one, a `LatestNonNull` row overlays its columns.
//!
//! **Schema.** Tables are created when a row for them first comes (`PRIMARY KEY` on the key),
//! columns added with `ADD COLUMN IF NOT EXISTS`, all in the window's transaction. Types: int →
//! `bigint`, float → `double precision`, boolean → `boolean`, string → `text`, json → `jsonb`,
//! datetime → `timestamptz`, decimal → `numeric(38,12)` (sent as PostgreSQL's binary numeric
//! from the exact units, never through a float: [`PgDecimal`]). The loader's [`Schema`] (which
//! decides a new column's type and what conflicts) is rebuilt from `information_schema.columns`
//! at every connect, so column types survive restarts, and PostgreSQL stays the one truth: a
//! column of another PostgreSQL type (changed by hand) is never written to; its values go to
//! the discards.
//!
//! **Discards.** A value PostgreSQL would refuse never fails a load: text or jsonb containing
//! NUL (`\u0000`), a datetime outside PostgreSQL's range, a value for a column of a type the
//! loader does not write. It becomes NULL in its row and a `rudder_discards` row (value,
//! column, table, row id, reason), like the schema conflicts [`Schema::admit`] finds. A key
//! cannot be NULL, so NULs in a key (and in the discards' own text) are written as the six
//! characters `\u0000`.
//!
//! **Failures.** PostgreSQL down or refusing a statement: the error is logged and kept in
//! [`LoadStatus`], the connection dropped, and the same window retried after 1 s, doubling up
//! to 60 s (a stop interrupts the wait), on a new connection with the schema read again. The
//! cursor never moves past a window that is not committed. A log entry that is not a readable
//! event is skipped with an error log and counted (`skipped`), as the lake does.
//!
//! **No TLS**: the connection is plain TCP (`NoTls`), for a PostgreSQL on loopback or a
//! private network. TLS is a follow-up.

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use chrono::{DateTime, Utc};
use serde_json::Value;
use switchyard_event::model::parse_time;
use switchyard_event::Event;
use switchyard_store::{EventLog, LogEntry, LogError, Selection};
use switchyard_warehouse::schema::DISCARDS_TABLE;
use switchyard_warehouse::types::{coerce, value_text};
use switchyard_warehouse::{rows_for, ColumnType, Decimal, Dialect, Discard, Merge, Row, Schema};
use tokio::sync::watch;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{to_sql_checked, IsNull, ToSql, Type};
use tokio_postgres::{Client, NoTls};

use crate::{LoadStatus, Stores};

/// The table of the loaders' cursors, in the warehouse schema.
pub const LOADS_TABLE: &str = "_switchyard_loads";

/// The first wait after a failure; it doubles up to [`MAX_RETRY`].
const FIRST_RETRY: Duration = Duration::from_secs(1);
const MAX_RETRY: Duration = Duration::from_secs(60);

/// A loader's cursor name, in the event log and in `_switchyard_loads`.
pub fn consumer_name(warehouse_id: i64) -> String {
    format!("warehouse:postgres:{warehouse_id}")
}

/// One PostgreSQL warehouse: where, which project, how big a window.
#[derive(Clone)]
pub struct PostgresConfig {
    /// The warehouse's id (its cursor is [`consumer_name`]).
    pub warehouse_id: i64,
    /// The project whose events are loaded.
    pub project_id: i64,
    /// `postgres://user:password@host:port/database` (anything `tokio_postgres::Config`
    /// parses). Plain TCP: no TLS.
    pub url: String,
    /// The schema the tables are in; created if missing.
    pub schema: String,
    /// Events per window, at most (0 counts as 1).
    pub max_events: usize,
    /// How long a window may wait to fill: anything in the log is loaded within about this.
    pub max_wait: Duration,
}

impl PostgresConfig {
    /// A warehouse with the default window (10 000 events, 5 s).
    pub fn new(warehouse_id: i64, project_id: i64, url: impl Into<String>, schema: impl Into<String>) -> PostgresConfig {
        PostgresConfig {
            warehouse_id,
            project_id,
            url: url.into(),
            schema: schema.into(),
            max_events: 10_000,
            max_wait: Duration::from_secs(5),
        }
    }

    /// The connection settings, or why they are not valid.
    pub fn connection(&self) -> Result<tokio_postgres::Config, PostgresError> {
        if self.schema.is_empty() || self.schema.contains('\0') {
            return Err(PostgresError::SchemaName(self.schema.clone()));
        }
        let mut config: tokio_postgres::Config = self.url.parse().map_err(PostgresError::Url)?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        config.application_name("switchyard");
        Ok(config)
    }
}

impl std::fmt::Debug for PostgresConfig {
    /// The URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("warehouse_id", &self.warehouse_id)
            .field("project_id", &self.project_id)
            .field("url", &redacted(&self.url))
            .field("schema", &self.schema)
            .field("max_events", &self.max_events)
            .field("max_wait", &self.max_wait)
            .finish()
    }
}

/// A connection URL with its password replaced by `***`.
fn redacted(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        // The key=value form: `password=…` up to the next space.
        return match url.find("password=") {
            Some(at) => {
                let rest = &url[at + 9..];
                let end = rest.find(' ').map_or(url.len(), |e| at + 9 + e);
                format!("{}password=***{}", &url[..at], &url[end..])
            }
            None => url.to_owned(),
        };
    };
    let authority_end = url[scheme_end..].find(['/', '?']).map_or(url.len(), |e| scheme_end + e);
    match url[scheme_end..authority_end].rfind('@').map(|at| scheme_end + at) {
        Some(at) => match url[scheme_end..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..scheme_end + colon], &url[at..]),
            None => url.to_owned(),
        },
        None => url.to_owned(),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PostgresError {
    #[error("the warehouse URL is not a PostgreSQL connection string: {}", chain(.0))]
    Url(tokio_postgres::Error),
    #[error("{0:?} is not a schema name")]
    SchemaName(String),
    #[error("PostgreSQL: {}", chain(.0))]
    Postgres(#[from] tokio_postgres::Error),
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("preparing a window's rows failed: {0}")]
    Prepare(#[from] tokio::task::JoinError),
}

/// An error and its sources, `: `-separated (tokio-postgres says only "db error" without them).
fn chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}

/// A committed window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Loaded {
    events: u64,
    rows: u64,
    discards: u64,
    skipped: u64,
    position: i64,
}

enum Outcome {
    /// Nothing to read.
    Idle,
    Loaded(Loaded),
    /// The log's cursor was not PostgreSQL's; it was set to it and nothing was loaded.
    Resynced,
}

/// Runs until `stop` turns true (or its sender is dropped): waits for a window to fill
/// (`max_events`, or `max_wait` after the first pending event), loads it, commits.
pub async fn run(stores: Arc<dyn Stores>, config: PostgresConfig, status: Arc<LoadStatus>, mut stop: watch::Receiver<bool>) {
    let consumer = consumer_name(config.warehouse_id);
    let warehouse = config.warehouse_id;
    let connection = match config.connection() {
        Ok(connection) => connection,
        Err(error) => {
            tracing::error!(warehouse, %error, "warehouse postgres: not started");
            status.failed(&error);
            stopped(&mut stop).await;
            return;
        }
    };
    let poll = (config.max_wait / 4).clamp(Duration::from_millis(10), Duration::from_millis(250));
    let mut backoff = FIRST_RETRY;
    let mut session: Option<Session> = None;
    let mut pending_since: Option<Instant> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(open) = session.as_mut() else {
            let opened = tokio::select! {
                opened = Session::open(&connection, &config.schema, &consumer, stores.as_ref()) => opened,
                () = stopped(&mut stop) => return,
            };
            match opened {
                Ok(opened) => {
                    status.position.store(opened.position, Ordering::Relaxed);
                    session = Some(opened);
                }
                Err(error) => {
                    tracing::error!(warehouse, %error, retry_in = ?backoff, "warehouse postgres: connecting failed");
                    status.failed(&error);
                    if sleep_or_stop(next_backoff(&mut backoff), &mut stop).await {
                        return;
                    }
                }
            }
            continue;
        };
        let ready = match pending(stores.as_ref(), &consumer).await {
            Ok(0) => {
                pending_since = None;
                false
            }
            Ok(n) => n >= config.max_events.max(1) as i64 || pending_since.get_or_insert_with(Instant::now).elapsed() >= config.max_wait,
            Err(error) => {
                tracing::error!(warehouse, %error, "warehouse postgres: reading the log failed; retrying");
                false
            }
        };
        if ready {
            let loaded = tokio::select! {
                loaded = load_next(open, stores.as_ref(), &config, &consumer, &status) => loaded,
                () = stopped(&mut stop) => return,
            };
            match loaded {
                Ok(Outcome::Loaded(window)) => {
                    tracing::debug!(warehouse, ?window, "warehouse postgres: window loaded");
                    backoff = FIRST_RETRY;
                    pending_since = None;
                    continue;
                }
                Ok(Outcome::Resynced) => continue,
                Ok(Outcome::Idle) => pending_since = None,
                Err(error) => {
                    tracing::error!(warehouse, %error, retry_in = ?backoff, "warehouse postgres: loading a window failed; retrying");
                    status.failed(&error);
                    session = None;
                    if sleep_or_stop(next_backoff(&mut backoff), &mut stop).await {
                        return;
                    }
                    continue;
                }
            }
        }
        if sleep_or_stop(poll, &mut stop).await {
            return;
        }
    }
}

/// The wait before the next retry; doubles the one after, up to [`MAX_RETRY`].
fn next_backoff(backoff: &mut Duration) -> Duration {
    let wait = *backoff;
    *backoff = (*backoff * 2).min(MAX_RETRY);
    wait
}

/// Resolves when `stop` turns true or its sender is gone.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|&stop| stop).await;
}

/// Sleeps `wait`; true when stopped meanwhile.
async fn sleep_or_stop(wait: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    tokio::select! {
        _ = tokio::time::sleep(wait) => false,
        () = stopped(stop) => true,
    }
}

/// Events after the cursor (about: seqs may have gaps, other projects' events count).
async fn pending(stores: &dyn Stores, consumer: &str) -> Result<i64, LogError> {
    let log = stores.log();
    let end = log.end().await?;
    let cursor = log.cursor(consumer).await?.unwrap_or(0);
    Ok((end - cursor).max(0))
}

/// A connection, and what the loader knows of the schema behind it.
struct Session {
    client: Client,
    catalog: Catalog,
    /// PostgreSQL's cursor when connected.
    position: i64,
}

impl Session {
    /// Connects; creates the schema and the cursors' table if missing; sets the log's cursor
    /// to PostgreSQL's; reads the schema's columns.
    async fn open(connection: &tokio_postgres::Config, schema: &str, consumer: &str, stores: &dyn Stores) -> Result<Session, PostgresError> {
        let (client, conn) = connection.connect(NoTls).await?;
        // The connection does the I/O; it ends when the client is dropped.
        tokio::spawn(async move {
            if let Err(error) = conn.await {
                tracing::warn!(error = %chain(&error), "warehouse postgres: connection ended");
            }
        });
        // Checked first: CREATE SCHEMA IF NOT EXISTS needs the database's CREATE privilege even
        // when the schema is there.
        if client.query_opt("SELECT 1 FROM pg_namespace WHERE nspname = $1", &[&schema]).await?.is_none() {
            client.batch_execute(&format!("CREATE SCHEMA IF NOT EXISTS {}", quote(schema))).await?;
        }
        client
            .batch_execute(&format!(
                "CREATE TABLE IF NOT EXISTS {} (consumer text PRIMARY KEY, position bigint NOT NULL, loaded_at timestamptz NOT NULL)",
                qualified(schema, LOADS_TABLE)
            ))
            .await?;
        let position: i64 = client
            .query_opt(
                &format!("SELECT position FROM {} WHERE consumer = $1", qualified(schema, LOADS_TABLE)),
                &[&consumer],
            )
            .await?
            .map(|row| row.try_get(0))
            .transpose()?
            .unwrap_or(0);
        let log = stores.log();
        let logged = log.cursor(consumer).await?;
        if logged != Some(position) {
            tracing::info!(consumer, ?logged, position, "warehouse postgres: the log's cursor is set to the warehouse's");
            log.commit(consumer, position).await?;
        }
        let columns = client
            .query(
                "SELECT c.table_name::text, c.column_name::text, c.data_type::text, c.numeric_precision::int4, c.numeric_scale::int4
                 FROM information_schema.columns c
                 JOIN information_schema.tables t ON t.table_schema = c.table_schema AND t.table_name = c.table_name
                 WHERE c.table_schema = $1 AND t.table_type = 'BASE TABLE'
                 ORDER BY c.table_name, c.ordinal_position",
                &[&schema],
            )
            .await?
            .into_iter()
            .map(|row| {
                Ok(InfoColumn {
                    table: row.try_get(0)?,
                    column: row.try_get(1)?,
                    data_type: row.try_get(2)?,
                    precision: row.try_get(3)?,
                    scale: row.try_get(4)?,
                })
            })
            .collect::<Result<Vec<_>, tokio_postgres::Error>>()?;
        Ok(Session {
            client,
            catalog: Catalog::from_columns(columns),
            position,
        })
    }
}

/// Reads the next window from the log and loads it in one transaction.
async fn load_next(session: &mut Session, stores: &dyn Stores, config: &PostgresConfig, consumer: &str, status: &LoadStatus) -> Result<Outcome, PostgresError> {
    let log = stores.log();
    let from = log.cursor(consumer).await?.unwrap_or(0);
    let batch = log.read_bounded(consumer, config.max_events.max(1), crate::WINDOW_BYTES, Selection::Project(config.project_id)).await?;
    let Some(position) = batch.position else { return Ok(Outcome::Idle) };
    let schema = config.schema.as_str();
    let loads = qualified(schema, LOADS_TABLE);
    let tx = session.client.transaction().await?;
    // Locks the cursor: a second loader of the same warehouse waits here, then sees it moved.
    let stored: i64 = tx
        .query_opt(&format!("SELECT position FROM {loads} WHERE consumer = $1 FOR UPDATE"), &[&consumer])
        .await?
        .map(|row| row.try_get(0))
        .transpose()?
        .unwrap_or(0);
    if stored != from {
        tx.rollback().await?;
        tracing::warn!(
            consumer,
            from,
            stored,
            "warehouse postgres: the log read from another position than the warehouse's; set to it"
        );
        log.commit(consumer, stored).await?;
        return Ok(Outcome::Resynced);
    }

    // Parsing and converting run on a blocking thread, never on the async workers.
    let mut catalog = std::mem::take(&mut session.catalog);
    let entries = batch.entries;
    let (catalog, window) = tokio::task::spawn_blocking(move || {
        let window = catalog.prepare(&entries, Utc::now());
        (catalog, window)
    })
    .await?;
    session.catalog = catalog;

    let mut added: Vec<(String, String, ColumnType)> = Vec::new();
    let mut rows = 0;
    for (i, (table, load)) in window.tables.iter().enumerate() {
        let target = qualified(schema, table);
        let known = session.catalog.columns.get(table);
        match known {
            None => {
                // The schema's columns for the table (all of a fixed table's), and the window's.
                let mut columns: BTreeMap<&str, ColumnType> = session
                    .catalog
                    .schema
                    .tables
                    .get(table)
                    .map(|t| t.iter().map(|(c, ty)| (c.as_str(), *ty)).collect())
                    .unwrap_or_default();
                columns.extend(load.columns.iter().map(|(c, ty)| (c.as_str(), *ty)));
                let definitions: Vec<String> = columns.iter().map(|(c, ty)| format!("{} {}", quote(c), sql_type(*ty))).collect();
                let key: Vec<String> = load.key.iter().map(|k| quote(k)).collect();
                tx.batch_execute(&format!(
                    "CREATE TABLE IF NOT EXISTS {target} ({}, PRIMARY KEY ({}))",
                    definitions.join(", "),
                    key.join(", ")
                ))
                .await?;
                if table == "agent_trace_events" {
                    // One row per trace, folded from its events whatever their order of arrival.
                    let view = switchyard_warehouse::trace::history_view(switchyard_warehouse::trace::ViewEngine::PostgreSQL, &target);
                    tx.batch_execute(&format!("CREATE OR REPLACE VIEW {} AS {view}", qualified(schema, "agent_trace_history"))).await?;
                }
                added.extend(columns.iter().map(|(c, ty)| (table.clone(), (*c).to_owned(), *ty)));
            }
            Some(known) => {
                let missing: Vec<(&String, &ColumnType)> = load.columns.iter().filter(|(c, _)| !known.contains_key(*c)).collect();
                if !missing.is_empty() {
                    let clauses: Vec<String> = missing
                        .iter()
                        .map(|(c, ty)| format!("ADD COLUMN IF NOT EXISTS {} {}", quote(c), sql_type(**ty)))
                        .collect();
                    tx.batch_execute(&format!("ALTER TABLE {target} {}", clauses.join(", "))).await?;
                    added.extend(missing.iter().map(|(c, ty)| (table.clone(), (*c).clone(), **ty)));
                }
            }
        }

        let staging = quote(&format!("_switchyard_stage_{i}"));
        tx.batch_execute(&format!("CREATE TEMP TABLE {staging} (LIKE {target}) ON COMMIT DROP")).await?;
        let names: Vec<&String> = load.columns.keys().collect();
        let quoted: Vec<String> = names.iter().map(|c| quote(c)).collect();
        let list = quoted.join(", ");
        let types: Vec<Type> = load.columns.values().map(|ty| pg_type(*ty)).collect();
        let sink = tx.copy_in(&format!("COPY {staging} ({list}) FROM STDIN (FORMAT binary)")).await?;
        let writer = BinaryCopyInWriter::new(sink, &types);
        tokio::pin!(writer);
        for row in &load.rows {
            // Collected first: a closure held across the await would make the future not `Send`.
            let values: Vec<Option<&Cell>> = names.iter().map(|c| row.get(*c)).collect();
            writer.as_mut().write_raw(values).await?;
        }
        writer.finish().await?;

        let key: Vec<String> = load.key.iter().map(|k| quote(k)).collect();
        let updates: Vec<String> = names
            .iter()
            .filter(|c| !load.key.contains(&c.as_str()))
            .map(|c| format!("{q} = COALESCE(EXCLUDED.{q}, t.{q})", q = quote(c)))
            .collect();
        let on_conflict = if updates.is_empty() {
            "DO NOTHING".to_owned()
        } else {
            format!("DO UPDATE SET {}", updates.join(", "))
        };
        rows += tx
            .execute(
                &format!(
                    "INSERT INTO {target} AS t ({list}) SELECT {list} FROM {staging} ON CONFLICT ({}) {on_conflict}",
                    key.join(", ")
                ),
                &[],
            )
            .await?;
    }
    tx.execute(
        &format!("INSERT INTO {loads} (consumer, position, loaded_at) VALUES ($1, $2, now()) ON CONFLICT (consumer) DO UPDATE SET position = EXCLUDED.position, loaded_at = EXCLUDED.loaded_at"),
        &[&consumer, &position],
    )
    .await?;
    tx.commit().await?;
    for (table, column, ty) in added {
        session.catalog.columns.entry(table).or_default().insert(column, PgColumn::Known(ty));
    }
    // Counted before the log's commit (PostgreSQL has the rows): whoever sees the cursor at the
    // end sees the window in the status.
    status.loaded(window.events, rows, window.discards, window.skipped, position);
    log.commit(consumer, position).await?;
    Ok(Outcome::Loaded(Loaded {
        events: window.events,
        rows,
        discards: window.discards,
        skipped: window.skipped,
        position,
    }))
}

/// `"name"`, with `"` doubled.
fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn qualified(schema: &str, table: &str) -> String {
    format!("{}.{}", quote(schema), quote(table))
}

fn sql_type(ty: ColumnType) -> &'static str {
    match ty {
        ColumnType::Int => "bigint",
        ColumnType::Float => "double precision",
        ColumnType::Boolean => "boolean",
        ColumnType::String => "text",
        ColumnType::Json => "jsonb",
        ColumnType::Datetime => "timestamptz",
        ColumnType::Decimal => "numeric(38,12)",
    }
}

fn pg_type(ty: ColumnType) -> Type {
    match ty {
        ColumnType::Int => Type::INT8,
        ColumnType::Float => Type::FLOAT8,
        ColumnType::Boolean => Type::BOOL,
        ColumnType::String => Type::TEXT,
        ColumnType::Json => Type::JSONB,
        ColumnType::Datetime => Type::TIMESTAMPTZ,
        ColumnType::Decimal => Type::NUMERIC,
    }
}

/// A column as PostgreSQL has it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum PgColumn {
    /// Of the type the loader gives a column of this [`ColumnType`].
    Known(ColumnType),
    /// Of another type (named): never written to.
    Foreign(String),
}

/// A column of `information_schema.columns`: its `data_type`, `numeric_precision`,
/// `numeric_scale`.
fn pg_column(data_type: &str, precision: Option<i32>, scale: Option<i32>) -> PgColumn {
    let known = match data_type {
        "bigint" => ColumnType::Int,
        "double precision" => ColumnType::Float,
        "boolean" => ColumnType::Boolean,
        "text" => ColumnType::String,
        "jsonb" => ColumnType::Json,
        "timestamp with time zone" => ColumnType::Datetime,
        // Unconstrained, or ours: anything else would round or refuse the exact units.
        "numeric" if matches!((precision, scale), (None, None) | (Some(38), Some(12))) => ColumnType::Decimal,
        "numeric" => return PgColumn::Foreign(format!("numeric({}, {})", precision.unwrap_or_default(), scale.unwrap_or_default())),
        other => return PgColumn::Foreign(other.to_owned()),
    };
    PgColumn::Known(known)
}

/// A row of `information_schema.columns`.
#[derive(Debug, Clone)]
struct InfoColumn {
    table: String,
    column: String,
    data_type: String,
    precision: Option<i32>,
    scale: Option<i32>,
}

/// The tables → columns of a window's rows.
#[derive(Debug, Default)]
struct Catalog {
    /// Decides new columns' types and conflicts: the fixed tables, overlaid with PostgreSQL's
    /// columns (a column of a foreign type is a string here, so any value reaches the check
    /// that discards it).
    schema: Schema,
    /// The columns PostgreSQL has (as of the connect, plus what committed windows added).
    columns: BTreeMap<String, BTreeMap<String, PgColumn>>,
}

/// A table's rows in one window, one per key.
#[derive(Debug)]
struct TableLoad {
    key: &'static [&'static str],
    merge: Merge,
    /// Every column a row carries, with its type.
    columns: BTreeMap<String, ColumnType>,
    rows: Vec<BTreeMap<String, Cell>>,
    /// Key → index in `rows`.
    index: HashMap<Vec<String>, usize>,
}

/// A window's rows, by table.
#[derive(Debug, Default)]
struct Window {
    tables: BTreeMap<String, TableLoad>,
    /// Readable events.
    events: u64,
    /// Unreadable log entries.
    skipped: u64,
    /// Discard rows added (before merging by key).
    discards: u64,
}

/// A table's key.
fn key_of(table: &str) -> &'static [&'static str] {
    if table == DISCARDS_TABLE {
        &["row_id", "table_name", "column_name"]
    } else {
        &["id"]
    }
}

impl Window {
    /// Adds a row, merged with the window's row of the same key. A row without its key is
    /// discarded instead (given back).
    fn push(&mut self, table: &str, merge: Merge, cells: BTreeMap<String, (ColumnType, Cell)>) -> Result<(), String> {
        let key_columns = key_of(table);
        let key: Option<Vec<String>> = key_columns.iter().map(|k| cells.get(*k).map(|(_, cell)| cell.key_text())).collect();
        let Some(key) = key else {
            return Err(format!("the row has no {}, its key", key_columns.join(", ")));
        };
        let load = self.tables.entry(table.to_owned()).or_insert_with(|| TableLoad {
            key: key_columns,
            merge,
            columns: BTreeMap::new(),
            rows: Vec::new(),
            index: HashMap::new(),
        });
        let mut row = BTreeMap::new();
        for (name, (ty, cell)) in cells {
            load.columns.insert(name.clone(), ty);
            row.insert(name, cell);
        }
        match load.index.get(&key) {
            Some(&i) => match load.merge {
                Merge::Replace => load.rows[i] = row,
                Merge::LatestNonNull => load.rows[i].extend(row),
            },
            None => {
                load.index.insert(key, load.rows.len());
                load.rows.push(row);
            }
        }
        Ok(())
    }
}

impl Catalog {
    /// The catalog of a schema with these columns.
    fn from_columns(columns: Vec<InfoColumn>) -> Catalog {
        let mut catalog = Catalog {
            schema: Schema::with_fixed_tables(),
            columns: BTreeMap::new(),
        };
        for InfoColumn {
            table,
            column,
            data_type,
            precision,
            scale,
        } in columns
        {
            if table == LOADS_TABLE {
                continue;
            }
            let pg = pg_column(&data_type, precision, scale);
            let ty = match pg {
                PgColumn::Known(ty) => ty,
                PgColumn::Foreign(_) => ColumnType::String,
            };
            // Schema::tables is public: a known column is added by hand (no function needed).
            catalog.schema.tables.entry(table.clone()).or_default().insert(column.clone(), ty);
            catalog.columns.entry(table).or_default().insert(column, pg);
        }
        catalog
    }

    /// The rows of a window's log entries, admitted to the schema, converted for PostgreSQL
    /// and merged by key, with their discards.
    fn prepare(&mut self, entries: &[LogEntry], loaded_at: DateTime<Utc>) -> Window {
        let mut window = Window::default();
        for entry in entries {
            let event = match serde_json::from_str::<Event>(&entry.body) {
                Ok(event) => event,
                Err(error) => {
                    tracing::error!(seq = entry.seq, %error, "logged event is not readable; skipped by the PostgreSQL warehouse");
                    window.skipped += 1;
                    continue;
                }
            };
            window.events += 1;
            for row in rows_for(&event, Dialect::Postgres) {
                self.add(row, loaded_at, &mut window);
            }
        }
        window
    }

    /// Admits a row (stamped with the load time) and adds it and its discards to the window.
    fn add(&mut self, mut row: Row, loaded_at: DateTime<Utc>, window: &mut Window) {
        // An event named `_switchyard_loads` must not write into the cursors.
        if row.table == LOADS_TABLE {
            row.table.insert(0, '_');
        }
        // Stamped before admitting, so `uuid_ts` is in the schema like any column.
        row.stamp(loaded_at);
        let (row, mut discards) = self.schema.admit(row);
        let cells = self.cells(&row, Some(&mut discards));
        if let Err(reason) = window.push(&row.table, row.merge, cells) {
            let (row_id, received_at) = row_origin(&row);
            discards.push(Discard {
                table: row.table.clone(),
                column: key_of(&row.table)[0].to_owned(),
                row_id,
                value: String::new(),
                received_at,
                reason,
            });
        }
        for discard in discards {
            self.add_discard(&discard, loaded_at, window);
        }
    }

    fn add_discard(&mut self, discard: &Discard, loaded_at: DateTime<Utc>, window: &mut Window) {
        let mut row = discard.to_row();
        row.stamp(loaded_at);
        let (row, refused) = self.schema.admit(row);
        for r in refused {
            tracing::error!(table = %discard.table, column = %discard.column, row_id = %discard.row_id, reason = %r.reason, "warehouse postgres: a discard does not fit rudder_discards; its {} is left out", r.column);
        }
        let cells = self.cells(&row, None);
        match window.push(&row.table, row.merge, cells) {
            Ok(()) => window.discards += 1,
            Err(reason) => tracing::error!(table = %discard.table, column = %discard.column, %reason, "warehouse postgres: a discard was not written"),
        }
    }

    /// A row's values as PostgreSQL takes them. A value it would refuse is left out and
    /// discarded with the reason (`discards`); without `discards` (a discard's own row) text is
    /// kept with its NULs written as `\u0000` and anything else refused is left out (logged).
    fn cells(&self, row: &Row, mut discards: Option<&mut Vec<Discard>>) -> BTreeMap<String, (ColumnType, Cell)> {
        let key = key_of(&row.table);
        let known = self.columns.get(&row.table);
        let mut cells = BTreeMap::new();
        for (name, (ty, value)) in &row.columns {
            let escape = discards.is_none() || key.contains(&name.as_str());
            let converted = match known.and_then(|t| t.get(name)) {
                Some(PgColumn::Foreign(pg)) => Err(format!("the column has PostgreSQL type {pg}, which the loader does not write")),
                Some(PgColumn::Known(target)) if target != ty => coerce(value, *ty, *target).and_then(|v| cell(*target, &v, escape)).map(|c| (*target, c)),
                _ => cell(*ty, value, escape).map(|c| (*ty, c)),
            };
            match converted {
                Ok(converted) => {
                    cells.insert(name.clone(), converted);
                }
                Err(reason) => match discards.as_deref_mut() {
                    Some(discards) => {
                        let (row_id, received_at) = row_origin(row);
                        discards.push(Discard {
                            table: row.table.clone(),
                            column: name.clone(),
                            row_id,
                            value: escape_nul(&value_text(value)),
                            received_at,
                            reason,
                        });
                    }
                    None => tracing::error!(column = %name, %reason, "warehouse postgres: a value of a discard is left out"),
                },
            }
        }
        cells
    }
}

/// A row's id and `received_at`, as its discards record them.
fn row_origin(row: &Row) -> (String, Option<String>) {
    let text = |c: &str| row.columns.get(c).map(|(_, v)| escape_nul(&value_text(v)));
    (text("id").unwrap_or_default(), text("received_at"))
}

/// `text` with each NUL written as the six characters `\u0000`.
fn escape_nul(text: &str) -> String {
    text.replace('\0', "\\u0000")
}

/// Whether a JSON value has a NUL in a string or a key (jsonb refuses `\u0000`).
fn has_nul(value: &Value) -> bool {
    match value {
        Value::String(s) => s.contains('\0'),
        Value::Array(items) => items.iter().any(has_nul),
        Value::Object(members) => members.iter().any(|(k, v)| k.contains('\0') || has_nul(v)),
        _ => false,
    }
}

/// PostgreSQL's timestamps, in microseconds from 2000-01-01: from Julian day 0 (4714-11-24 BC)
/// included to 294277-01-01 excluded (`MIN_TIMESTAMP`, `END_TIMESTAMP`).
const PG_MIN_MICROS: i64 = -211_813_488_000_000_000;
const PG_END_MICROS: i64 = 9_223_371_331_200_000_000;
/// 2000-01-01T00:00:00Z in Unix microseconds.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;

/// A datetime as the schema writes it: what [`parse_time`] reads, and years past four digits
/// as [`format_time`] writes them (`-5000-01-01T00:00:00.000000Z`).
fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    parse_time(text).or_else(|| {
        let naive = text.strip_suffix('Z')?;
        chrono::NaiveDateTime::parse_from_str(naive, "%Y-%m-%dT%H:%M:%S%.f").ok().map(|t| t.and_utc())
    })
}

fn in_pg_range(t: &DateTime<Utc>) -> bool {
    t.timestamp_micros()
        .checked_sub(PG_EPOCH_MICROS)
        .is_some_and(|m| (PG_MIN_MICROS..PG_END_MICROS).contains(&m))
}

/// A value of type `ty` as PostgreSQL takes it, or why it cannot. `escape`: text NULs are
/// written as `\u0000` instead of refused.
fn cell(ty: ColumnType, value: &Value, escape: bool) -> Result<Cell, String> {
    match ty {
        ColumnType::Int => value.as_i64().map(Cell::Int).ok_or_else(|| format!("not an int: {value}")),
        ColumnType::Float => value.as_f64().map(Cell::Float).ok_or_else(|| format!("not a float: {value}")),
        ColumnType::Boolean => value.as_bool().map(Cell::Boolean).ok_or_else(|| format!("not a boolean: {value}")),
        ColumnType::String => {
            let text = value_text(value);
            match (text.contains('\0'), escape) {
                (false, _) => Ok(Cell::Text(text)),
                (true, true) => Ok(Cell::Text(escape_nul(&text))),
                (true, false) => Err("PostgreSQL text cannot hold the NUL character (\\u0000)".to_owned()),
            }
        }
        ColumnType::Json if has_nul(value) => Err("PostgreSQL jsonb cannot hold the NUL character (\\u0000)".to_owned()),
        ColumnType::Json => Ok(Cell::Json(value.clone())),
        ColumnType::Datetime => {
            let t = value.as_str().and_then(parse_datetime).ok_or_else(|| format!("not a datetime: {value}"))?;
            if in_pg_range(&t) {
                Ok(Cell::Datetime(t))
            } else {
                Err("datetime outside PostgreSQL's range (4714-11-24 BC to 294276 AD)".to_owned())
            }
        }
        ColumnType::Decimal => Decimal::parse_value(value)
            .map(|d| Cell::Decimal(PgDecimal(d)))
            .ok_or_else(|| format!("not a decimal: {value}")),
    }
}

/// A value as it is copied. Each variant is written only to its own PostgreSQL type.
#[derive(Debug, Clone, PartialEq)]
enum Cell {
    Int(i64),
    Float(f64),
    Boolean(bool),
    Text(String),
    Json(Value),
    Datetime(DateTime<Utc>),
    Decimal(PgDecimal),
}

impl Cell {
    /// The value as part of a key (keys are text in practice).
    fn key_text(&self) -> String {
        match self {
            Cell::Text(s) => s.clone(),
            other => format!("{other:?}"),
        }
    }
}

impl ToSql for Cell {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        // Written in the binary format of the column's type: a mismatch would be misread, not
        // refused, so it is an error here.
        let fits = match self {
            Cell::Int(_) => *ty == Type::INT8,
            Cell::Float(_) => *ty == Type::FLOAT8,
            Cell::Boolean(_) => *ty == Type::BOOL,
            Cell::Text(_) => *ty == Type::TEXT,
            Cell::Json(_) => *ty == Type::JSONB,
            Cell::Datetime(_) => *ty == Type::TIMESTAMPTZ,
            Cell::Decimal(_) => *ty == Type::NUMERIC,
        };
        if !fits {
            return Err(format!("{self:?} is not a value of type {ty}").into());
        }
        match self {
            Cell::Int(v) => v.to_sql(ty, out),
            Cell::Float(v) => v.to_sql(ty, out),
            Cell::Boolean(v) => v.to_sql(ty, out),
            Cell::Text(v) => v.to_sql(ty, out),
            Cell::Json(v) => v.to_sql(ty, out),
            Cell::Datetime(v) => v.to_sql(ty, out),
            Cell::Decimal(v) => v.to_sql(ty, out),
        }
    }

    fn accepts(ty: &Type) -> bool {
        [Type::INT8, Type::FLOAT8, Type::BOOL, Type::TEXT, Type::JSONB, Type::TIMESTAMPTZ, Type::NUMERIC].contains(ty)
    }

    to_sql_checked!();
}

/// An exact decimal sent as PostgreSQL's binary `numeric`: base-10000 digits, most significant
/// first, the weight (the power of 10000 of the first digit), the sign and the display scale
/// (12, [`Decimal::SCALE`]). Built from the integer units, never through a float.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PgDecimal(pub Decimal);

// The fraction is exactly three base-10000 digits.
const _: () = assert!(Decimal::SCALE == 12);

/// PostgreSQL's sign word for a negative numeric.
const NUMERIC_NEG: u16 = 0x4000;

impl PgDecimal {
    /// The numeric's (weight, sign, digits), digits with no leading or trailing zeros.
    fn parts(self) -> (i16, u16, Vec<i16>) {
        let units = self.0 .0.unsigned_abs();
        let scale = 10_u128.pow(Decimal::SCALE);
        let (mut whole, fraction) = (units / scale, units % scale);
        let mut digits: Vec<i16> = Vec::with_capacity(10);
        while whole > 0 {
            digits.push((whole % 10_000) as i16);
            whole /= 10_000;
        }
        digits.reverse();
        let mut weight = digits.len() as i16 - 1;
        digits.extend([(fraction / 100_000_000) as i16, (fraction / 10_000 % 10_000) as i16, (fraction % 10_000) as i16]);
        let leading = digits.iter().take_while(|&&d| d == 0).count();
        digits.drain(..leading);
        weight -= leading as i16;
        while digits.last() == Some(&0) {
            digits.pop();
        }
        if digits.is_empty() {
            return (0, 0, digits);
        }
        (weight, if self.0 .0 < 0 { NUMERIC_NEG } else { 0 }, digits)
    }
}

impl ToSql for PgDecimal {
    fn to_sql(&self, _: &Type, out: &mut BytesMut) -> Result<IsNull, Box<dyn StdError + Sync + Send>> {
        let (weight, sign, digits) = self.parts();
        out.put_i16(digits.len() as i16);
        out.put_i16(weight);
        out.put_u16(sign);
        out.put_u16(Decimal::SCALE as u16);
        for digit in digits {
            out.put_i16(digit);
        }
        Ok(IsNull::No)
    }

    fn accepts(ty: &Type) -> bool {
        *ty == Type::NUMERIC
    }

    to_sql_checked!();
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn decimal(text: &str) -> PgDecimal {
        PgDecimal(Decimal::parse(text).unwrap())
    }

    #[test]
    fn postgres_numeric_digits_are_base_10000_with_weight_and_sign() {
        assert_eq!(decimal("0").parts(), (0, 0, vec![]));
        assert_eq!(decimal("0.000123456789").parts(), (-1, 0, vec![1, 2345, 6789]));
        assert_eq!(decimal("-1.5").parts(), (0, NUMERIC_NEG, vec![1, 5000]));
        assert_eq!(decimal("10000").parts(), (1, 0, vec![1]));
        assert_eq!(decimal("99990000.0001").parts(), (1, 0, vec![9999, 0, 1]));
        assert_eq!(decimal("0.000000000001").parts(), (-3, 0, vec![1]));
        assert_eq!(
            decimal("12345678901234567890123456.999999999999").parts(),
            (6, 0, vec![12, 3456, 7890, 1234, 5678, 9012, 3456, 9999, 9999, 9999])
        );
        let mut out = BytesMut::new();
        decimal("-0.0042").to_sql(&Type::NUMERIC, &mut out).unwrap();
        assert_eq!(
            &out[..],
            &[0, 1, 255, 255, 0x40, 0, 0, 12, 0, 42],
            "1 digit, weight -1, negative, dscale 12, 0042"
        );
    }

    #[test]
    fn values_postgres_refuses_are_reasons_not_failures() {
        assert_eq!(
            cell(ColumnType::String, &json!("a\u{0}b"), false),
            Err("PostgreSQL text cannot hold the NUL character (\\u0000)".into())
        );
        assert_eq!(cell(ColumnType::String, &json!("a\u{0}b"), true), Ok(Cell::Text("a\\u0000b".into())));
        assert!(cell(ColumnType::Json, &json!({"k": ["x\u{0}"]}), false).is_err());
        assert!(cell(ColumnType::Json, &json!({"k\u{0}": 1}), false).is_err());
        assert_eq!(cell(ColumnType::Json, &json!({"k": [1]}), false), Ok(Cell::Json(json!({"k": [1]}))));
        let old = cell(ColumnType::Datetime, &json!("-5000-01-01T00:00:00.000000Z"), false);
        assert_eq!(old, Err("datetime outside PostgreSQL's range (4714-11-24 BC to 294276 AD)".into()));
        let first = parse_datetime("-4713-11-24T00:00:00.000000Z").unwrap();
        assert!(in_pg_range(&first) && !in_pg_range(&(first - chrono::Duration::microseconds(1))));
        assert!(matches!(
            cell(ColumnType::Datetime, &json!("2025-12-05T09:30:00.000000Z"), false),
            Ok(Cell::Datetime(_))
        ));
        assert_eq!(
            cell(ColumnType::Decimal, &json!("0.000123456789"), false),
            Ok(Cell::Decimal(decimal("0.000123456789")))
        );
        assert!(cell(ColumnType::Int, &json!("7"), false).is_err());
    }

    #[test]
    fn a_cell_is_written_only_to_its_own_type() {
        let mut out = BytesMut::new();
        assert!(Cell::Int(7).to_sql_checked(&Type::INT8, &mut out).is_ok());
        assert!(Cell::Int(7).to_sql_checked(&Type::TEXT, &mut out).is_err());
        assert!(Cell::Text("7".into()).to_sql_checked(&Type::INT4, &mut out).is_err());
    }

    #[test]
    fn the_catalog_takes_postgres_types_and_keeps_foreign_columns_apart() {
        let column = |table: &str, column: &str, data_type: &str, precision: Option<i32>, scale: Option<i32>| InfoColumn {
            table: table.into(),
            column: column.into(),
            data_type: data_type.into(),
            precision,
            scale,
        };
        let columns = vec![
            column("tool_used", "id", "text", None, None),
            column("tool_used", "duration_ms", "bigint", None, None),
            column("tool_used", "at", "timestamp with time zone", None, None),
            column("tool_used", "legacy", "integer", None, None),
            column("model_cost_logs", "cost_usd", "numeric", Some(38), Some(12)),
            column("model_cost_logs", "cents", "numeric", Some(10), Some(2)),
            column("event_logs", "latency_ms", "text", None, None),
            column(LOADS_TABLE, "position", "bigint", None, None),
        ];
        let catalog = Catalog::from_columns(columns);
        assert_eq!(catalog.schema.column("tool_used", "duration_ms"), Some(ColumnType::Int));
        assert_eq!(catalog.schema.column("tool_used", "at"), Some(ColumnType::Datetime));
        assert_eq!(catalog.columns["tool_used"]["legacy"], PgColumn::Foreign("integer".into()));
        assert_eq!(catalog.columns["model_cost_logs"]["cost_usd"], PgColumn::Known(ColumnType::Decimal));
        assert_eq!(catalog.columns["model_cost_logs"]["cents"], PgColumn::Foreign("numeric(10, 2)".into()));
        assert_eq!(
            catalog.schema.column("event_logs", "latency_ms"),
            Some(ColumnType::String),
            "PostgreSQL's type wins over the fixed one"
        );
        assert_eq!(
            catalog.schema.column("event_logs", "properties"),
            Some(ColumnType::Json),
            "fixed columns not in PostgreSQL stay"
        );
        assert!(!catalog.schema.tables.contains_key(LOADS_TABLE) && !catalog.columns.contains_key(LOADS_TABLE));
    }

    fn entry(seq: i64, event: Value) -> LogEntry {
        LogEntry { seq, body: event.to_string() }
    }

    fn event(id: &str, kind: &str, name: &str, properties: Value, traits: Value) -> Value {
        json!({
            "id": id, "project_id": 1, "protocol": "segment", "type": kind, "event": name,
            "distinct_id": "user_7", "user_id": "user_7", "properties": properties, "traits": traits,
            "timestamp": "2025-12-05T09:30:00Z", "received_at": "2025-12-05T09:30:01Z"
        })
    }

    #[test]
    fn a_window_merges_rows_by_key_and_discards_what_postgres_refuses() {
        let mut catalog = Catalog::from_columns(vec![InfoColumn {
            table: "tool_used".into(),
            column: "legacy".into(),
            data_type: "integer".into(),
            precision: None,
            scale: None,
        }]);
        let entries = vec![
            entry(
                1,
                event(
                    "e1",
                    "track",
                    "tool_used",
                    json!({"tool_name": "web_search", "tool_type": "builtin", "legacy": 3}),
                    json!({}),
                ),
            ),
            entry(2, json!("not an event")),
            entry(3, event("e1", "track", "tool_used", json!({"tool_name": "sql"}), json!({}))),
            entry(
                4,
                event("i1", "identify", "$identify", json!({}), json!({"email": "ada@example.com", "plan": "free"})),
            ),
            entry(5, event("i2", "identify", "$identify", json!({}), json!({"plan": "team", "note": "x\u{0}y"}))),
        ];
        let window = catalog.prepare(&entries, Utc::now());
        assert_eq!((window.events, window.skipped), (4, 1));
        let tool = &window.tables["tool_used"];
        assert_eq!(tool.rows.len(), 1, "one row per key");
        assert_eq!(tool.rows[0]["tool_name"], Cell::Text("sql".into()), "Replace: the last row wins");
        assert!(!tool.rows[0].contains_key("tool_type"), "the whole earlier row is replaced");
        assert!(!tool.columns.contains_key("legacy"), "a foreign column is never copied to");
        let users = &window.tables["users"];
        assert_eq!(users.rows.len(), 1);
        assert_eq!(
            users.rows[0]["email"],
            Cell::Text("ada@example.com".into()),
            "LatestNonNull: earlier columns stay"
        );
        assert_eq!(users.rows[0]["plan"], Cell::Text("team".into()));
        assert!(!users.rows[0].contains_key("note"));
        let discards = &window.tables[DISCARDS_TABLE];
        let got: Vec<(String, String, String)> = discards
            .rows
            .iter()
            .map(|r| (r["table_name"].key_text(), r["column_name"].key_text(), r["column_value"].key_text()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("tool_used".into(), "legacy".into(), "3".into()),
                ("identifies".into(), "note".into(), "x\\u0000y".into()),
                ("users".into(), "note".into(), "x\\u0000y".into()),
            ]
        );
        assert_eq!(window.discards, 3);
        assert!(discards.rows[0]["reason"].key_text().contains("PostgreSQL type integer"));
        assert!(discards.rows[1]["reason"].key_text().contains("NUL"));
    }

    #[test]
    fn the_password_is_not_in_the_debug_form() {
        let config = PostgresConfig::new(3, 1, "postgres://loader:s3cret@db.internal:5432/analytics", "switchyard");
        let debug = format!("{config:?}");
        assert!(
            debug.contains("postgres://loader:***@db.internal:5432/analytics") && !debug.contains("s3cret"),
            "{debug}"
        );
        assert_eq!(
            redacted("host=db user=loader password=s3cret dbname=x"),
            "host=db user=loader password=*** dbname=x"
        );
        assert_eq!(redacted("postgres://db/x"), "postgres://db/x");
        assert_eq!(consumer_name(3), "warehouse:postgres:3");
        assert!(matches!(
            PostgresConfig::new(3, 1, "postgres://db/x", "").connection(),
            Err(PostgresError::SchemaName(_))
        ));
        assert!(matches!(PostgresConfig::new(3, 1, "nonsense://", "s").connection(), Err(PostgresError::Url(_))));
    }
}

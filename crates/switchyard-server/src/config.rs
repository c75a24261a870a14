//! The one typed configuration: an optional TOML file, every field overridable by a
//! `SWITCHYARD_*` environment variable. Unknown fields are rejected with their name.
//! `docs/configuration.md` lists every field with its default.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Directory holding the event log (`events.db`) and control store (`control.db`).
    pub data_dir: PathBuf,
    /// Address the HTTP server listens on.
    pub listen: SocketAddr,
    /// The default project's public token (`phc_…`); generated on first start when unset.
    pub project_token: Option<String>,
    /// The default project's RudderStack/Segment write key; generated when unset.
    pub write_key: Option<String>,
    /// The default project's secret key; generated when unset. Stored hashed. At least 32
    /// characters, different from the public keys.
    pub secret_key: Option<String>,
    /// Proxies (IP addresses or CIDR blocks, a list or a comma-separated string) whose
    /// `X-Forwarded-For` is believed. Empty: the header is ignored, the client's address is
    /// the connection's peer.
    #[serde(deserialize_with = "ip_nets")]
    pub trusted_proxies: Vec<IpNet>,
    /// Longest time in-flight requests get to finish after SIGTERM/SIGINT, in seconds.
    pub shutdown_timeout_secs: u64,
    /// Threads serving HTTP. Unset: one per CPU. (One less than the CPUs leaves a CPU to the
    /// event log's writer thread: on two CPUs that answers single-event requests ~5% faster,
    /// and batches ~10% slower; see docs/benchmarks.md.)
    pub workers: Option<usize>,
    pub limits: Limits,
    pub log: LogSettings,
    pub upstream: UpstreamSettings,
    pub http: HttpSettings,
    pub tls: TlsSettings,
    pub routing: RoutingSettings,
    pub llm: LlmSettings,
    pub warehouse: WarehouseSettings,
}

/// Warehouse loading (see `docs/warehouse.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WarehouseSettings {
    /// Load every event into the embedded Parquet lake.
    pub lake: bool,
    /// The lake's directory; unset: `lake` under the data directory.
    pub lake_dir: Option<PathBuf>,
    /// Events per load, at most.
    pub max_events: usize,
    /// Seconds a load waits to fill: what is logged reaches the lake within about this.
    pub max_wait_secs: u64,
    /// A day's files of a table are compacted into one when there are more than this many.
    pub compact_files: usize,
    /// SQL (`/api/projects/{id}/query`, `switchyard sql`): a query's time limit.
    pub query_timeout_secs: u64,
    /// The rows an answer may have.
    pub query_max_rows: usize,
    /// The memory a query's operators may hold, MiB.
    pub query_memory_mib: usize,
    /// PostgreSQL warehouses (`[[warehouse.postgres]]`); more can be added through the API.
    pub postgres: Vec<PostgresWarehouse>,
}

/// A PostgreSQL warehouse in the config file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresWarehouse {
    /// Its name (the warehouse of the same name and project is kept across restarts).
    pub name: String,
    /// `postgres://user:password@host:port/database`.
    pub dsn: String,
    /// The schema the tables go in.
    #[serde(default = "default_warehouse_schema")]
    pub schema: String,
    /// The project whose events it gets.
    #[serde(default = "default_project")]
    pub project_id: i64,
}

fn default_warehouse_schema() -> String {
    "switchyard".into()
}

fn default_project() -> i64 {
    1
}

impl WarehouseSettings {
    /// The lake's directory.
    pub fn lake_root(&self, data_dir: &std::path::Path) -> PathBuf {
        self.lake_dir.clone().unwrap_or_else(|| data_dir.join("lake"))
    }
}

impl Default for WarehouseSettings {
    fn default() -> Self {
        WarehouseSettings {
            lake: true,
            lake_dir: None,
            max_events: 10_000,
            max_wait_secs: 5,
            compact_files: 8,
            query_timeout_secs: 30,
            query_max_rows: 100_000,
            query_memory_mib: 1024,
            postgres: Vec::new(),
        }
    }
}

/// LLM analytics (see `docs/llm-analytics.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LlmSettings {
    /// Enrich `$ai_generation`/`$ai_embedding` events (and the platform's `model_cost` and
    /// `agent_execution`) at intake: PostHog's server-side properties and cost.
    pub enrich: bool,
    /// A LiteLLM price table (`model_prices_and_context_window.json`, full or as
    /// `switchyard prices import` writes it) used instead of the embedded snapshot. Unset: the
    /// data directory's `prices.json` when present, else the embedded snapshot.
    pub prices_file: Option<PathBuf>,
    /// Custom prices for every project (a LiteLLM-shaped JSON object keyed by model: your
    /// fine-tunes, negotiated rates), used before the price table, under each project's own
    /// prices from the model prices API. Costs from them say `$ai_cost_model_source: "project"`.
    pub custom_prices_file: Option<PathBuf>,
}

impl Default for LlmSettings {
    fn default() -> Self {
        LlmSettings { enrich: true, prices_file: None, custom_prices_file: None }
    }
}

/// Delivery to destinations (see `docs/routing.md`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RoutingSettings {
    /// An event is dead-lettered only once it had at least this many attempts…
    pub retry_min_attempts: u32,
    /// …and its first attempt is at least this many seconds old.
    pub retry_max_age_secs: u64,
    /// First wait between attempts, in milliseconds; doubles up to `retry_max_backoff_secs`
    /// (each wait drawn at random below it: full jitter). A `Retry-After` asking for longer
    /// (up to 5 minutes) is honoured.
    pub retry_initial_backoff_ms: u64,
    pub retry_max_backoff_secs: u64,
    /// Seconds one request may take, answer included; past it, it is retried.
    pub request_timeout_secs: u64,
    /// Deliver to private, loopback, link-local and similar addresses (destinations inside
    /// your own network). Off: such addresses are refused, whatever a name resolves to.
    pub allow_private_addresses: bool,
    /// Events a destination reads from the log at a time (its cursor moves past them once
    /// all are delivered or dead-lettered). Larger windows hold the log's read snapshot
    /// longer and slow intake beside a busy destination.
    pub window_events: usize,
    /// Requests a destination has in flight at once (lanes keyed by distinct id).
    pub lanes: usize,
    /// Time limit of one JavaScript transformation call, in milliseconds.
    pub js_time_limit_ms: u64,
    /// Memory limit of a destination's JavaScript runtime, in MiB.
    pub js_memory_mib: usize,
}

impl Default for RoutingSettings {
    fn default() -> Self {
        RoutingSettings {
            retry_min_attempts: 3,
            retry_max_age_secs: 3 * 3600,
            retry_initial_backoff_ms: 1000,
            retry_max_backoff_secs: 300,
            request_timeout_secs: 30,
            allow_private_addresses: false,
            window_events: 1000,
            lanes: 4,
            js_time_limit_ms: 4000,
            js_memory_mib: 64,
        }
    }
}

/// Bounds on connections: what a slow or idle client may hold.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Seconds a request's header may take to arrive, counted from when the connection waits
    /// for it (opened, or the previous response sent). Past it the connection is closed.
    pub header_read_timeout_secs: u64,
    /// Seconds a request's whole body may take to arrive. Past it intake answers 408
    /// (PostHog) / 500 (RudderStack), which SDKs retry.
    pub body_read_timeout_secs: u64,
    /// Seconds an idle keep-alive connection is kept open (at most the header read timeout).
    pub keep_alive_timeout_secs: u64,
    /// Connections served at once. Past it, a few more get `503` (health checks are still
    /// answered) and the rest are closed at once.
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        HttpSettings { header_read_timeout_secs: 10, body_read_timeout_secs: 30, keep_alive_timeout_secs: 10, max_connections: 4096 }
    }
}

impl RoutingSettings {
    /// The router's settings.
    pub fn router_config(&self, ca_file: Option<&Path>) -> switchyard_pipeline::RouterConfig {
        use std::time::Duration;
        switchyard_pipeline::RouterConfig {
            retry: switchyard_pipeline::retry::RetryPolicy {
                initial_backoff: Duration::from_millis(self.retry_initial_backoff_ms),
                max_backoff: Duration::from_secs(self.retry_max_backoff_secs),
                min_attempts: self.retry_min_attempts,
                max_age: Duration::from_secs(self.retry_max_age_secs),
            },
            request_timeout: Duration::from_secs(self.request_timeout_secs),
            allow_private_addresses: self.allow_private_addresses,
            ca_file: ca_file.map(Path::to_path_buf),
            window_events: self.window_events,
            lanes: self.lanes,
            js: switchyard_pipeline::transform::JsLimits {
                time_limit: Duration::from_millis(self.js_time_limit_ms),
                memory_bytes: self.js_memory_mib << 20,
            },
            ..switchyard_pipeline::RouterConfig::default()
        }
    }
}

impl HttpSettings {
    pub fn header_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.header_read_timeout_secs)
    }
    pub fn body_read_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.body_read_timeout_secs)
    }
    pub fn keep_alive_timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.keep_alive_timeout_secs)
    }
}

/// TLS for outgoing connections (the upstream mirror, the CLI, destinations).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsSettings {
    /// A PEM file of extra CA certificates trusted besides the built-in (webpki) roots, for
    /// private PKI.
    pub ca_file: Option<PathBuf>,
}

/// Upstream mode: mirror the flags of an existing PostHog instead of managing them here.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UpstreamSettings {
    /// Base URL of the PostHog to mirror (e.g. `https://us.posthog.com`). Unset: no mirroring.
    pub url: Option<String>,
    /// A personal API key (`phx_…`) with feature flag read access, or a Switchyard secret key.
    pub personal_api_key: Option<String>,
    /// The upstream project's token, sent as `token=` to its local evaluation API.
    pub project_token: Option<String>,
    /// The local project the flags are mirrored into; unset: the default (first) project.
    pub project_id: Option<i64>,
    /// Seconds between polls.
    pub poll_interval_secs: u64,
    /// Seconds before one poll gives up.
    pub timeout_secs: u64,
    /// Allow a plain `http://` upstream URL: the personal API key would cross the network in
    /// the clear. Off: such a URL is refused at start (loopback addresses excepted).
    pub allow_insecure_http: bool,
    /// Largest upstream answer read, in bytes.
    pub max_response_bytes: usize,
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings { url: None, personal_api_key: None, project_token: None, project_id: None, poll_interval_secs: 30, timeout_secs: 10, allow_insecure_http: false, max_response_bytes: 32 * 1024 * 1024 }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            data_dir: PathBuf::from("switchyard-data"),
            listen: "127.0.0.1:8000".parse().expect("valid default address"),
            project_token: None,
            write_key: None,
            secret_key: None,
            trusted_proxies: Vec::new(),
            shutdown_timeout_secs: 10,
            workers: None,
            limits: Limits::default(),
            log: LogSettings::default(),
            upstream: UpstreamSettings::default(),
            http: HttpSettings::default(),
            tls: TlsSettings::default(),
            routing: RoutingSettings::default(),
            llm: LlmSettings::default(),
            warehouse: WarehouseSettings::default(),
        }
    }
}

/// Bounds on what one request and one event may be. Each has its own clear error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body as sent (compressed), in bytes. Larger: 413.
    pub max_request_bytes: usize,
    /// Largest body after decompression, in bytes (decompression bombs). Larger: 413.
    pub max_decompressed_bytes: usize,
    /// Largest single event as JSON, in bytes. In a batch the event is quarantined.
    pub max_event_bytes: usize,
    /// Longest event name, in characters.
    pub max_event_name_chars: usize,
    /// Most properties (or traits) on one event.
    pub max_properties: usize,
    /// Deepest nesting of objects/arrays in one event's properties.
    pub max_depth: usize,
    /// Most events one request (a batch, an array) may hold. Counted while parsing: the
    /// request is refused (413 `too_many_events`) at the first event past it, before it is
    /// built. Default 20,000 (the log's `max_txn_events`), far above what SDKs send at once.
    pub max_events_per_request: usize,
    /// Largest `/flags`, `/decide` or OFREP request body, decompressed, in bytes (PostHog's
    /// SDKs send a few KB). Larger: 413.
    pub max_flags_request_bytes: usize,
    /// Request bytes (as received, then decoded) held in flight by all requests together.
    /// Past it, requests are answered 503 + Retry-After instead of growing memory.
    pub max_in_flight_bytes: usize,
    /// Most properties one person (or group) keeps; the person processor drops further ones
    /// (counted in `switchyard_person_properties_dropped_total`, logged).
    pub max_person_properties: usize,
    /// Largest JSON text of one person's (or group's) properties, in bytes; updates that would
    /// pass it are dropped the same way.
    pub max_person_properties_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 20 * 1024 * 1024,
            max_decompressed_bytes: 20 * 1024 * 1024,
            max_event_bytes: 1024 * 1024,
            max_event_name_chars: 200,
            max_properties: 2000,
            max_depth: 32,
            max_events_per_request: switchyard_event::validate::DEFAULT_MAX_EVENTS_PER_REQUEST,
            max_flags_request_bytes: 64 * 1024,
            max_in_flight_bytes: 128 * 1024 * 1024,
            max_person_properties: 10_000,
            max_person_properties_bytes: 1024 * 1024,
        }
    }
}

/// The embedded event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogSettings {
    /// Requests that may wait for a commit; beyond it intake answers 503 with Retry-After.
    pub queue_capacity: usize,
    /// Most events grouped into one transaction.
    pub max_txn_events: usize,
    /// Cap, in bytes, on what the data directory's databases take on disk together: the event
    /// log (`events.db`), its trace index (`events.traces.db`) and the control store
    /// (`control.db`), each with its `-wal` file. When reached intake answers 503. Unset: no cap.
    pub max_size_bytes: Option<u64>,
    /// Delete logged events and quarantined ones received more than this many days ago, once
    /// every consumer of the log has read them. Unset: keep everything.
    pub retention_days: Option<u32>,
    /// Longest raw form a quarantined event keeps whole, in bytes (at most
    /// `limits.max_event_bytes` is used); a longer one keeps its first bytes, its size and
    /// SHA-256.
    pub quarantine_raw_bytes: usize,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { queue_capacity: 4096, max_txn_events: 20_000, max_size_bytes: None, retention_days: None, quarantine_raw_bytes: 64 * 1024 }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Environment variables that are not configuration fields.
const NOT_FIELDS: &[&str] = &["SWITCHYARD_CONFIG", "SWITCHYARD_LOG", "SWITCHYARD_URL"];
const SECTIONS: &[&str] = &["limits", "log", "upstream", "http", "tls", "routing", "llm", "warehouse"];
const STRING_FIELDS: &[&str] =
    &["data_dir", "listen", "project_token", "write_key", "secret_key", "url", "personal_api_key", "ca_file", "prices_file", "custom_prices_file", "lake_dir"];

impl Config {
    /// Loads the file (if any), then applies `SWITCHYARD_*` variables from `env`.
    /// `SWITCHYARD_LIMITS_MAX_EVENT_BYTES` (or `SWITCHYARD_LIMITS__MAX_EVENT_BYTES`) sets
    /// `limits.max_event_bytes`.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Config, ConfigError> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
                toml::from_str::<toml::Table>(&text)
                    .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?
            }
            None => toml::Table::new(),
        };
        for (name, raw) in env {
            let Some(rest) = name.strip_prefix("SWITCHYARD_") else { continue };
            if NOT_FIELDS.contains(&name.as_str()) {
                continue;
            }
            let key = rest.to_ascii_lowercase().replace("__", "_");
            let (section, field) = match SECTIONS
                .iter()
                .find(|s| key.starts_with(&format!("{s}_")))
            {
                Some(section) => (Some(*section), key[section.len() + 1..].to_owned()),
                None => (None, key.clone()),
            };
            let value = if STRING_FIELDS.contains(&field.as_str()) {
                toml::Value::String(raw)
            } else if let Ok(i) = raw.parse::<i64>() {
                toml::Value::Integer(i)
            } else if let Ok(b) = raw.parse::<bool>() {
                toml::Value::Boolean(b)
            } else {
                toml::Value::String(raw)
            };
            let target = match section {
                Some(section) => table
                    .entry(section)
                    .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                    .as_table_mut()
                    .ok_or_else(|| ConfigError::Invalid(format!("`{section}` must be a table")))?,
                None => &mut table,
            };
            target.insert(field, value);
        }
        let config: Config = toml::Value::Table(table)
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_owned()))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what serde cannot: non-zero limits, required pairs, safe URLs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (name, value) in [
            ("limits.max_request_bytes", l.max_request_bytes),
            ("limits.max_decompressed_bytes", l.max_decompressed_bytes),
            ("limits.max_event_bytes", l.max_event_bytes),
            ("limits.max_event_name_chars", l.max_event_name_chars),
            ("limits.max_depth", l.max_depth),
            ("limits.max_events_per_request", l.max_events_per_request),
            ("log.queue_capacity", self.log.queue_capacity),
            ("log.max_txn_events", self.log.max_txn_events),
            ("limits.max_flags_request_bytes", l.max_flags_request_bytes),
            ("limits.max_in_flight_bytes", l.max_in_flight_bytes),
            ("limits.max_person_properties", l.max_person_properties),
            ("limits.max_person_properties_bytes", l.max_person_properties_bytes),
            ("log.quarantine_raw_bytes", self.log.quarantine_raw_bytes),
            ("log.retention_days", self.log.retention_days.map_or(1, |days| days as usize)),
            ("http.max_connections", self.http.max_connections),
            ("http.header_read_timeout_secs", self.http.header_read_timeout_secs as usize),
            ("http.body_read_timeout_secs", self.http.body_read_timeout_secs as usize),
            ("http.keep_alive_timeout_secs", self.http.keep_alive_timeout_secs as usize),
            ("routing.retry_min_attempts", self.routing.retry_min_attempts as usize),
            ("routing.request_timeout_secs", self.routing.request_timeout_secs as usize),
            ("routing.window_events", self.routing.window_events),
            ("routing.lanes", self.routing.lanes),
            ("routing.js_time_limit_ms", self.routing.js_time_limit_ms as usize),
            ("routing.js_memory_mib", self.routing.js_memory_mib),
            ("warehouse.max_events", self.warehouse.max_events),
            ("warehouse.max_wait_secs", self.warehouse.max_wait_secs as usize),
            ("warehouse.compact_files", self.warehouse.compact_files),
            ("warehouse.query_timeout_secs", self.warehouse.query_timeout_secs as usize),
            ("warehouse.query_max_rows", self.warehouse.query_max_rows),
            ("warehouse.query_memory_mib", self.warehouse.query_memory_mib),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be greater than 0")));
            }
        }
        if self.workers == Some(0) {
            return Err(ConfigError::Invalid("workers must be greater than 0".into()));
        }
        if self.upstream.url.is_some() && self.upstream.personal_api_key.is_none() {
            return Err(ConfigError::Invalid("upstream.personal_api_key is required when upstream.url is set".into()));
        }
        let smallest_budget = l.max_request_bytes.saturating_add(l.max_decompressed_bytes.saturating_mul(3));
        if l.max_in_flight_bytes < smallest_budget {
            return Err(ConfigError::Invalid(format!(
                "limits.max_in_flight_bytes ({}) must be at least limits.max_request_bytes + 3 × limits.max_decompressed_bytes ({smallest_budget}), or the largest request could never be served",
                l.max_in_flight_bytes
            )));
        }
        if l.max_in_flight_bytes > u32::MAX as usize {
            return Err(ConfigError::Invalid(format!("limits.max_in_flight_bytes must be at most {}", u32::MAX)));
        }
        if let Some(url) = &self.upstream.url {
            check_upstream_url(url, self.upstream.allow_insecure_http)?;
        }
        if self.upstream.poll_interval_secs == 0 {
            return Err(ConfigError::Invalid("upstream.poll_interval_secs must be greater than 0".into()));
        }
        self.validate_keys()?;
        Ok(())
    }

    /// Configured keys: well-formed; the secret key long and unlike the public keys. Errors
    /// name the field, never the value.
    fn validate_keys(&self) -> Result<(), ConfigError> {
        use switchyard_store::{check_key_value, KeyKind};
        for (name, kind, value) in [
            ("project_token", KeyKind::ProjectToken, &self.project_token),
            ("write_key", KeyKind::WriteKey, &self.write_key),
            ("secret_key", KeyKind::SecretKey, &self.secret_key),
        ] {
            if let Some(value) = value {
                check_key_value(kind, value).map_err(|problem| ConfigError::Invalid(format!("{name}: {problem}")))?;
            }
        }
        if let Some(secret) = &self.secret_key {
            if Some(secret) == self.project_token.as_ref() || Some(secret) == self.write_key.as_ref() {
                return Err(ConfigError::Invalid("secret_key must differ from project_token and write_key".into()));
            }
        }
        Ok(())
    }

    /// The process-wide budget of request bytes in flight.
    pub fn in_flight_budget(&self) -> usize {
        self.limits.max_in_flight_bytes
    }

    /// The HTTP worker threads to start (see [`Config::workers`]).
    pub fn worker_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |cpus| cpus.get()))
    }
}

/// An IP address or a CIDR block (`10.0.0.0/8`, `fd00::/8`, `192.0.2.7`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix_len: u8,
}

impl IpNet {
    /// Whether `ip` is in the block (IPv4-mapped IPv6 addresses count as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip.to_canonical()) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX.checked_shl(32 - u32::from(self.prefix_len)).unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX.checked_shl(128 - u32::from(self.prefix_len)).unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for IpNet {
    type Err = String;
    fn from_str(s: &str) -> Result<IpNet, String> {
        let invalid = || format!("trusted_proxies: `{s}` is not an IP address or CIDR block");
        let (addr, prefix_len) = match s.trim().split_once('/') {
            Some((addr, len)) => (addr, Some(len)),
            None => (s.trim(), None),
        };
        let addr = addr.parse::<IpAddr>().map_err(|_| invalid())?.to_canonical();
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match prefix_len {
            Some(len) => len.parse::<u8>().ok().filter(|&l| l <= max).ok_or_else(invalid)?,
            None => max,
        };
        Ok(IpNet { addr, prefix_len })
    }
}

impl std::fmt::Display for IpNet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl Serialize for IpNet {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// `trusted_proxies`: a list of strings, or one comma-separated string (as an environment
/// variable gives it).
fn ip_nets<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<IpNet>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    let entries = match OneOrMany::deserialize(deserializer)? {
        OneOrMany::One(s) => s.split(',').map(str::trim).filter(|e| !e.is_empty()).map(str::to_owned).collect(),
        OneOrMany::Many(v) => v,
    };
    entries.iter().map(|e| e.parse().map_err(serde::de::Error::custom)).collect()
}

/// An upstream URL must be `https://`, or plain `http://` with `allow_insecure_http`: the
/// personal API key goes with every poll.
fn check_upstream_url(url: &str, allow_insecure_http: bool) -> Result<(), ConfigError> {
    let parsed = reqwest::Url::parse(url).map_err(|e| ConfigError::Invalid(format!("upstream.url is not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure_http => Ok(()),
        "http" => Err(ConfigError::Invalid(format!(
            "upstream.url {url} is plain http: the personal API key would cross the network unencrypted; use https, or set upstream.allow_insecure_http = true"
        ))),
        other => Err(ConfigError::Invalid(format!("upstream.url must be http or https, not {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn defaults_without_file_or_env() {
        let c = Config::load(None, env(&[("PATH", "/bin")])).unwrap();
        assert_eq!(c, Config::default());
        assert_eq!(c.listen.to_string(), "127.0.0.1:8000");
    }

    #[test]
    fn env_overrides_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("switchyard.toml");
        std::fs::write(&path, "data_dir = \"/srv/sy\"\n[limits]\nmax_event_bytes = 1000\n").unwrap();
        let c = Config::load(
            Some(&path),
            env(&[
                ("SWITCHYARD_LISTEN", "127.0.0.1:9999"),
                ("SWITCHYARD_LIMITS_MAX_DEPTH", "5"),
                ("SWITCHYARD_LOG__MAX_SIZE_BYTES", "1048576"),
                ("SWITCHYARD_WRITE_KEY", "12345"),
            ]),
        )
        .unwrap();
        assert_eq!(c.data_dir, PathBuf::from("/srv/sy"));
        assert_eq!(c.listen.port(), 9999);
        assert_eq!(c.limits.max_event_bytes, 1000);
        assert_eq!(c.limits.max_depth, 5);
        assert_eq!(c.log.max_size_bytes, Some(1048576));
        assert_eq!(c.write_key.as_deref(), Some("12345"));
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = Config::load(None, env(&[("SWITCHYARD_LISTN", "x")])).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
        let err = Config::load(None, env(&[("SWITCHYARD_LIMITS_MAX_EVENTS", "1")])).unwrap_err();
        assert!(err.to_string().contains("max_events"), "{err}");
        let err = Config::load(None, env(&[("SWITCHYARD_LIMITS_MAX_DEPTH", "deep")])).unwrap_err();
        assert!(err.to_string().contains("invalid type"), "{err}");
        let err = Config::load(None, env(&[("SWITCHYARD_WORKERS", "0")])).unwrap_err();
        assert!(err.to_string().contains("workers must be greater than 0"), "{err}");
    }

    #[test]
    fn workers_default_to_one_per_cpu_unless_set() {
        let c = Config::load(None, env(&[("SWITCHYARD_WORKERS", "3")])).unwrap();
        assert_eq!(c.worker_threads(), 3);
        let cpus = std::thread::available_parallelism().unwrap().get();
        assert_eq!(Config::default().worker_threads(), cpus);
    }
}

//! The one typed configuration: an optional TOML file, every field overridable by a
//! `SWITCHYARD_*` environment variable. Unknown fields are rejected with their name.
//! `docs/configuration.md` lists every field with its default.

use std::net::SocketAddr;
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
    /// The default project's secret key; generated when unset. Stored hashed.
    pub secret_key: Option<String>,
    /// Longest time in-flight requests get to finish after SIGTERM/SIGINT, in seconds.
    pub shutdown_timeout_secs: u64,
    /// Threads serving HTTP. Unset: one per CPU. (One less than the CPUs leaves a CPU to the
    /// event log's writer thread: on two CPUs that answers single-event requests ~5% faster,
    /// and batches ~10% slower; see docs/benchmarks.md.)
    pub workers: Option<usize>,
    pub limits: Limits,
    pub log: LogSettings,
    pub upstream: UpstreamSettings,
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
}

impl Default for UpstreamSettings {
    fn default() -> Self {
        UpstreamSettings { url: None, personal_api_key: None, project_token: None, project_id: None, poll_interval_secs: 30, timeout_secs: 10 }
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
            shutdown_timeout_secs: 10,
            workers: None,
            limits: Limits::default(),
            log: LogSettings::default(),
            upstream: UpstreamSettings::default(),
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
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_request_bytes: 20 * 1024 * 1024,
            max_decompressed_bytes: 100 * 1024 * 1024,
            max_event_bytes: 1024 * 1024,
            max_event_name_chars: 200,
            max_properties: 2000,
            max_depth: 32,
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
    /// Cap on the log file's size in bytes; when reached intake answers 503. Unset: no cap.
    pub max_size_bytes: Option<u64>,
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { queue_capacity: 4096, max_txn_events: 20_000, max_size_bytes: None }
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
const SECTIONS: &[&str] = &["limits", "log", "upstream"];
const STRING_FIELDS: &[&str] =
    &["data_dir", "listen", "project_token", "write_key", "secret_key", "url", "personal_api_key"];

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

    fn validate(&self) -> Result<(), ConfigError> {
        let l = &self.limits;
        for (name, value) in [
            ("limits.max_request_bytes", l.max_request_bytes),
            ("limits.max_decompressed_bytes", l.max_decompressed_bytes),
            ("limits.max_event_bytes", l.max_event_bytes),
            ("limits.max_event_name_chars", l.max_event_name_chars),
            ("limits.max_depth", l.max_depth),
            ("log.queue_capacity", self.log.queue_capacity),
            ("log.max_txn_events", self.log.max_txn_events),
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
        if self.upstream.poll_interval_secs == 0 {
            return Err(ConfigError::Invalid("upstream.poll_interval_secs must be greater than 0".into()));
        }
        Ok(())
    }

    /// The HTTP worker threads to start (see [`Config::workers`]).
    pub fn worker_threads(&self) -> usize {
        self.workers.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |cpus| cpus.get()))
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

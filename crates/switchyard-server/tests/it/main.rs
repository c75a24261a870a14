//! Integration tests: the real server in-process on a random loopback port, over real SQLite
//! files in a temporary directory.

mod bad_input;
mod flags;
mod fixtures;
mod hostile_flags;
mod keys;
mod lifecycle;
mod model_prices;
mod llm;
mod persons;
/// A throwaway PostgreSQL cluster, shared with the pipeline's tests.
#[path = "../../../switchyard-pipeline/tests/support/pg.rs"]
mod pg;
mod routing;
mod tls;
mod upstream;
mod warehouse;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;
use switchyard_server::{serve, AppState, Config};
use tokio::sync::oneshot;

pub const TOKEN: &str = "phc_test_project_key";
pub const WRITE_KEY: &str = "rs_write_key_test";
pub const SECRET: &str = "phs_test_secret_0123456789abcdefghij";

pub struct TestServer {
    pub url: String,
    pub state: AppState,
    pub client: reqwest::Client,
    shutdown: Option<oneshot::Sender<()>>,
    handle: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        Self::start_with(|_| {}).await
    }

    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, adjust).await
    }

    pub async fn start_in(dir: tempfile::TempDir, adjust: impl FnOnce(&mut Config)) -> TestServer {
        // The server's warnings and errors, shown with a failing test's output (`RUST_LOG` for more).
        let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into());
        let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(false).with_test_writer().try_init();
        let mut config = Config {
            data_dir: dir.path().to_owned(),
            project_token: Some(TOKEN.into()),
            write_key: Some(WRITE_KEY.into()),
            secret_key: Some(SECRET.into()),
            ..Config::default()
        };
        adjust(&mut config);
        let (state, _) = AppState::open(config).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(serve(state.clone(), listener, async move {
            let _ = rx.await;
        }));
        TestServer {
            url: format!("http://{addr}"),
            state,
            client: reqwest::Client::new(),
            shutdown: Some(tx),
            handle: Some(handle),
            dir,
        }
    }

    /// Graceful shutdown; returns the data directory so a test can restart on it.
    pub async fn stop(mut self) -> tempfile::TempDir {
        let _ = self.shutdown.take().unwrap().send(());
        self.handle.take().unwrap().await.unwrap().unwrap();
        self.dir
    }

    /// The `results` of an inspection API listing (secret key), asserting a 200.
    async fn results(&self, path: &str) -> Vec<serde_json::Value> {
        let response = self.client.get(format!("{}{path}", self.url)).bearer_auth(SECRET).send().await.unwrap();
        assert_eq!(response.status(), 200);
        let body: serde_json::Value = response.json().await.unwrap();
        body["results"].as_array().unwrap().clone()
    }

    pub async fn events(&self, query: &str) -> Vec<serde_json::Value> {
        self.results(&format!("/api/projects/@current/events/?limit=10000&{query}")).await
    }

    pub async fn quarantine(&self) -> Vec<serde_json::Value> {
        self.results("/api/projects/@current/quarantine/").await
    }

    pub async fn metrics(&self) -> String {
        self.client.get(format!("{}/metrics", self.url)).send().await.unwrap().text().await.unwrap()
    }
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(bytes).unwrap();
    enc.finish().unwrap()
}

/// Upstream mode against `upstream_url` (plain http allowed: the fakes are loopback HTTP servers).
pub fn mirror_of(upstream_url: String) -> impl FnOnce(&mut Config) {
    move |c| {
        c.upstream.url = Some(upstream_url);
        c.upstream.personal_api_key = Some(SECRET.into());
        c.upstream.project_token = Some(TOKEN.into());
        c.upstream.poll_interval_secs = 1;
        c.upstream.timeout_secs = 2;
        c.upstream.allow_insecure_http = true;
    }
}

/// Polls `check` until it holds; fails the test after 30 s naming `what`.
pub async fn wait_until(what: &str, mut check: impl AsyncFnMut() -> bool) {
    wait_seeing(what, async || if check().await { Ok(()) } else { Err(String::new()) }).await;
}

/// Polls `check` until it is `Ok`; fails the test after 30 s naming `what` and what the last
/// `Err` said it saw.
pub async fn wait_seeing(what: &str, mut check: impl AsyncFnMut() -> Result<(), String>) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let Err(seen) = check().await else { return };
        assert!(Instant::now() < deadline, "timed out waiting until {what}; last seen: {seen}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A request recorded from a real client (`tests/data/*/*.jsonl`: method, path, headers, body
/// as text or base64).
pub struct Recorded {
    pub file: String,
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// Every request of every `.jsonl` file in `dir`, files in name order.
pub fn recordings(dir: &std::path::Path) -> Vec<Recorded> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "jsonl"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for file in files {
        for line in std::fs::read_to_string(&file).unwrap().lines() {
            let r: Value = serde_json::from_str(line).unwrap();
            let body = match (&r["body_text"], &r["body_base64"]) {
                (Value::String(text), _) => text.as_bytes().to_vec(),
                (_, Value::String(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).unwrap(),
                _ => Vec::new(),
            };
            let headers = r["headers"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| !matches!(k.to_ascii_lowercase().as_str(), "host" | "content-length" | "connection"))
                .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                .collect();
            out.push(Recorded {
                file: file.file_name().unwrap().to_string_lossy().into_owned(),
                method: r["method"].as_str().unwrap().to_owned(),
                path: r["path"].as_str().unwrap().to_owned(),
                headers,
                body,
            });
        }
    }
    out
}

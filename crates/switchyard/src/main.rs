//! `switchyard`: the one binary. CLI wiring only; everything else lives in the library crates.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use switchyard_server::{serve, AppState, Config};

mod warehouse;

/// mimalloc: intake allocates many small JSON values per request; the system allocator spent a
/// quarter of the server's CPU time in malloc/free under load (docs/benchmarks.md).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "switchyard", version, about = "Self-hosted analytics, feature-flag and event-routing server")]
struct Cli {
    /// A PEM file of CA certificates to trust besides the built-in roots, for a server whose
    /// certificate comes from a private CA (client commands).
    #[arg(long, env = "SWITCHYARD_TLS_CA_FILE", global = true)]
    ca_file: Option<PathBuf>,
    /// Let client commands send the secret key over plain http to a host that is not loopback.
    #[arg(long, global = true)]
    allow_insecure_http: bool,
    #[command(subcommand)]
    command: Command,
}

/// How client commands reach the server, set once from the global options.
static CLIENT: std::sync::OnceLock<ClientSettings> = std::sync::OnceLock::new();

struct ClientSettings {
    ca_file: Option<PathBuf>,
    allow_insecure_http: bool,
}

/// The HTTP client of the client commands: TLS with the built-in roots and `--ca-file`'s.
fn http_client() -> anyhow::Result<reqwest::blocking::Client> {
    let settings = CLIENT.get().expect("client settings are set in main");
    switchyard_server::outbound::blocking_client(settings.ca_file.as_deref())
}

/// Refuses to send the secret key in the clear off this machine: `http://` only to loopback,
/// unless `--allow-insecure-http`.
fn check_url(url: &str) -> anyhow::Result<()> {
    let parsed = reqwest::Url::parse(url).with_context(|| format!("--url {url} is not a URL"))?;
    let host = parsed.host_str().unwrap_or("").trim_start_matches('[').trim_end_matches(']');
    let loopback = host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
    let allowed = CLIENT.get().is_some_and(|c| c.allow_insecure_http);
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if loopback || allowed => Ok(()),
        "http" => anyhow::bail!("refusing to send the secret key over plain http to {url}: use https, or pass --allow-insecure-http"),
        other => anyhow::bail!("--url must be http or https, not {other}"),
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. With no configuration: data under ./switchyard-data, listening on
    /// 127.0.0.1:8000.
    Serve {
        /// TOML configuration file; every field can also be set by a SWITCHYARD_* variable.
        #[arg(long, env = "SWITCHYARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// List stored events (or quarantined ones) through the events API, newest first, one
    /// JSON object per line.
    Events {
        /// Base URL of the server.
        #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8000")]
        url: String,
        /// The project's secret key.
        #[arg(long, env = "SWITCHYARD_SECRET_KEY")]
        secret_key: String,
        #[arg(long)]
        event: Option<String>,
        #[arg(long)]
        distinct_id: Option<String>,
        #[arg(long)]
        trace_id: Option<String>,
        /// Only events after this time (RFC 3339).
        #[arg(long)]
        after: Option<String>,
        /// Only events before this time (RFC 3339).
        #[arg(long)]
        before: Option<String>,
        #[arg(long, default_value_t = 100)]
        limit: usize,
        /// List the quarantine instead of the events.
        #[arg(long)]
        quarantine: bool,
    },
    /// Manage feature flags through the management API. `import` and `export` speak PostHog's
    /// local-evaluation JSON (`{flags, group_type_mapping, cohorts}`), so flags move over
    /// from PostHog as they are.
    Flags {
        /// Base URL of the server.
        #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8000", global = true)]
        url: String,
        /// The project's secret key.
        #[arg(long, env = "SWITCHYARD_SECRET_KEY", global = true)]
        secret_key: Option<String>,
        #[command(subcommand)]
        action: FlagsAction,
    },
    /// Manage the project's keys through the keys API (the secret key's project).
    Keys {
        /// Base URL of the server.
        #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8000", global = true)]
        url: String,
        /// The project's secret key.
        #[arg(long, env = "SWITCHYARD_SECRET_KEY", global = true)]
        secret_key: Option<String>,
        #[command(subcommand)]
        action: KeysAction,
    },
    /// Destinations through the destinations API: what they are, how they are doing, their
    /// dead letters and replays.
    Destinations {
        /// Base URL of the server.
        #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8000", global = true)]
        url: String,
        /// The project's secret key.
        #[arg(long, env = "SWITCHYARD_SECRET_KEY", global = true)]
        secret_key: Option<String>,
        #[command(subcommand)]
        action: DestinationsAction,
    },
    /// Try transformations before attaching them to a destination.
    Transform {
        /// Base URL of the server.
        #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8000", global = true)]
        url: String,
        /// The project's secret key.
        #[arg(long, env = "SWITCHYARD_SECRET_KEY", global = true)]
        secret_key: Option<String>,
        #[command(subcommand)]
        action: TransformAction,
    },
    /// Agent runs through the trace view API: a list with totals, or one run as a waterfall.
    Traces {
        /// Base URL of the server.
        #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8000", global = true)]
        url: String,
        /// The project's secret key.
        #[arg(long, env = "SWITCHYARD_SECRET_KEY", global = true)]
        secret_key: Option<String>,
        #[command(subcommand)]
        action: TracesAction,
    },
    /// SQL over the embedded lake (read-only; the project's tables: `tracks`, one per event,
    /// `identifies`, `users`, `event_logs`, `model_cost_logs`, `agent_trace_history`, …).
    Sql {
        /// The query, e.g. "SELECT event, count(*) FROM event_logs GROUP BY event".
        query: String,
        #[arg(long, value_enum, default_value = "table")]
        format: warehouse::Format,
        /// Base URL of the server.
        #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8000")]
        url: String,
        /// The project's secret key.
        #[arg(long, env = "SWITCHYARD_SECRET_KEY")]
        secret_key: Option<String>,
    },
    /// The project's warehouses: loaders' status, PostgreSQL warehouses added, listed, removed.
    Warehouse {
        /// Base URL of the server.
        #[arg(long, env = "SWITCHYARD_URL", default_value = "http://127.0.0.1:8000", global = true)]
        url: String,
        /// The project's secret key.
        #[arg(long, env = "SWITCHYARD_SECRET_KEY", global = true)]
        secret_key: Option<String>,
        #[command(subcommand)]
        action: warehouse::WarehouseAction,
    },
    /// The LLM price table the server costs `$ai_*` events with (offline: no server needed).
    Prices {
        #[command(subcommand)]
        action: PricesAction,
    },
}

#[derive(Subcommand)]
enum TracesAction {
    /// One line per run, newest first: trace id, start, duration, LLM calls, tool calls,
    /// tokens in/out, cost, errors.
    List {
        /// Only runs with events of this distinct id.
        #[arg(long)]
        user: Option<String>,
        /// Only runs with events whose `workspace_id` property is this.
        #[arg(long)]
        workspace: Option<String>,
        /// Only runs with events whose `agent_id` property is this.
        #[arg(long)]
        agent: Option<String>,
        /// Only runs with errors.
        #[arg(long)]
        errors: bool,
        /// Only runs that cost at least this many USD.
        #[arg(long)]
        min_cost: Option<f64>,
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// One run as a waterfall: its tree with bars over the run's span, the product events in
    /// time, the flags seen and the totals.
    Show { trace_id: String },
}

#[derive(Subcommand)]
enum PricesAction {
    /// Checks a LiteLLM price table (`model_prices_and_context_window.json`, or a file of the
    /// same shape) and installs it as `<data dir>/prices.json`, which the server loads at
    /// start (unless `llm.prices_file` names another file). Restart the server to use it.
    Import {
        file: PathBuf,
        /// The server's data directory.
        #[arg(long, env = "SWITCHYARD_DATA_DIR", default_value = "switchyard-data")]
        data_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DestinationsAction {
    /// One line per destination: id, type, enabled, name.
    List,
    /// A destination as JSON (secrets masked).
    Get { id: i64 },
    /// Delivered, filtered, retrying, dead-lettered, lag, last error and success, as JSON.
    Status { id: i64 },
    /// A destination's dead letters, newest first, one JSON object per line.
    DeadLetters {
        id: i64,
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Send dead letters again with the destination's current config (all, or `--ids`).
    Replay {
        id: i64,
        /// Comma-separated dead letter ids.
        #[arg(long, value_delimiter = ',')]
        ids: Vec<i64>,
    },
}

#[derive(Subcommand)]
enum TransformAction {
    /// Runs a chain of transformations (a JSON array, or a `.js` file holding
    /// `transformEvent`/`transformBatch`) over events (a JSON array) and prints what each became.
    Test {
        file: PathBuf,
        #[arg(long)]
        events: PathBuf,
    },
}

#[derive(Subcommand)]
enum KeysAction {
    /// One line per key: id, kind, prefix, origin, created, revoked time (or `active`). Never
    /// a key's value.
    List,
    /// Create a key; its value is printed once, here only (secret keys are stored hashed).
    Create {
        #[arg(long, default_value = "secret_key", value_parser = ["secret_key", "project_token", "write_key"])]
        kind: String,
    },
    /// Revoke a key by id: it stops working at once. The last active secret key cannot be.
    Revoke { id: i64 },
}

#[derive(Subcommand)]
enum FlagsAction {
    /// One line per flag: key, active, version, name.
    List,
    /// A flag's PostHog JSON.
    Get { key: String },
    /// Create or update flags (by key) from a PostHog JSON file (`-` reads stdin).
    Import { file: PathBuf },
    /// Print every flag, the group type mapping and cohorts as PostHog JSON.
    Export,
    Enable { key: String },
    Disable { key: String },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let _ = CLIENT.set(ClientSettings { ca_file: cli.ca_file, allow_insecure_http: cli.allow_insecure_http });
    match cli.command {
        Command::Serve { config } => run_server(config),
        Command::Events { url, secret_key, event, distinct_id, trace_id, after, before, limit, quarantine } => {
            let collection = if quarantine { "quarantine" } else { "events" };
            let mut query: Vec<(&str, String)> = vec![("limit", limit.to_string())];
            for (name, value) in
                [("event", event), ("distinct_id", distinct_id), ("trace_id", trace_id), ("after", after), ("before", before)]
            {
                if let Some(value) = value {
                    query.push((name, value));
                }
            }
            check_url(&url)?;
            let response = http_client()?
                .get(format!("{}/api/projects/@current/{collection}/", url.trim_end_matches('/')))
                .bearer_auth(secret_key)
                .query(&query)
                .send()
                .with_context(|| format!("cannot reach {url}"))?;
            let status = response.status();
            let body: serde_json::Value = response.json().context("the server's answer is not JSON")?;
            if !status.is_success() {
                anyhow::bail!("{status}: {}", body.get("detail").and_then(|d| d.as_str()).unwrap_or(&body.to_string()));
            }
            for result in body["results"].as_array().into_iter().flatten() {
                println!("{result}");
            }
            Ok(())
        }
        Command::Flags { url, secret_key, action } => run_flags(&url, secret_key, action),
        Command::Keys { url, secret_key, action } => run_keys(&url, secret_key, action),
        Command::Destinations { url, secret_key, action } => run_destinations(&url, secret_key, action),
        Command::Transform { url, secret_key, action } => run_transform(&url, secret_key, action),
        Command::Traces { url, secret_key, action } => run_traces(&url, secret_key, action),
        Command::Sql { query, format, url, secret_key } => warehouse::run_sql(&url, secret_key, &query, format),
        Command::Warehouse { url, secret_key, action } => warehouse::run_warehouse(&url, secret_key, action),
        Command::Prices { action: PricesAction::Import { file, data_dir } } => import_prices(&file, &data_dir),
    }
}

/// Calls the management API; non-2xx answers become errors with the server's detail.
fn api(method: reqwest::Method, url: &str, secret: &str, body: Option<String>) -> anyhow::Result<serde_json::Value> {
    check_url(url)?;
    let mut request = http_client()?.request(method, url).bearer_auth(secret);
    if let Some(body) = body {
        request = request.header("content-type", "application/json").body(body);
    }
    let response = request.send().with_context(|| format!("cannot reach {url}"))?;
    let status = response.status();
    let text = response.text()?;
    let body: serde_json::Value = if text.is_empty() { serde_json::Value::Null } else { serde_json::from_str(&text).context("the server's answer is not JSON")? };
    if !status.is_success() {
        let detail = body.get("detail").and_then(|d| d.as_str()).map(str::to_owned).unwrap_or(text);
        let attr = body.get("attr").and_then(|a| a.as_str()).map(|a| format!(" (field `{a}`)")).unwrap_or_default();
        anyhow::bail!("{status}: {detail}{attr}");
    }
    Ok(body)
}

fn run_flags(url: &str, secret: Option<String>, action: FlagsAction) -> anyhow::Result<()> {
    use reqwest::Method;
    let secret = secret.context("the secret key is needed: --secret-key or SWITCHYARD_SECRET_KEY")?;
    let base = format!("{}/api/projects/@current/feature_flags", url.trim_end_matches('/'));
    match action {
        FlagsAction::List => {
            let list = api(Method::GET, &format!("{base}/"), &secret, None)?;
            for flag in list["results"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\tv{}\t{}",
                    flag["key"].as_str().unwrap_or_default(),
                    if flag["active"] == true { "active" } else { "inactive" },
                    flag["version"],
                    flag["name"].as_str().unwrap_or_default()
                );
            }
        }
        FlagsAction::Get { key } => println!("{}", serde_json::to_string_pretty(&api(Method::GET, &format!("{base}/{key}/"), &secret, None)?)?),
        FlagsAction::Import { file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?
            };
            let result = api(Method::POST, &format!("{base}/import/"), &secret, Some(text))?;
            println!("created {}, updated {}", result["created"], result["updated"]);
        }
        FlagsAction::Export => {
            let root = url.trim_end_matches('/');
            let body = api(Method::GET, &format!("{root}/api/feature_flag/local_evaluation/?send_cohorts"), &secret, None)?;
            println!("{}", serde_json::to_string_pretty(&body)?);
        }
        FlagsAction::Enable { key } => set_active(&base, &secret, &key, true)?,
        FlagsAction::Disable { key } => set_active(&base, &secret, &key, false)?,
    }
    Ok(())
}

fn run_keys(url: &str, secret: Option<String>, action: KeysAction) -> anyhow::Result<()> {
    use reqwest::Method;
    let secret = secret.context("the secret key is needed: --secret-key or SWITCHYARD_SECRET_KEY")?;
    let base = format!("{}/api/projects/@current/keys", url.trim_end_matches('/'));
    let line = |key: &serde_json::Value| {
        format!(
            "{}\t{}\t{}\t{}\t{}\t{}",
            key["id"],
            key["kind"].as_str().unwrap_or_default(),
            key["prefix"].as_str().map(|p| format!("{p}…")).unwrap_or_else(|| "?".into()),
            key["origin"].as_str().unwrap_or_default(),
            key["created_at"].as_str().unwrap_or_default(),
            key["revoked_at"].as_str().map(|at| format!("revoked {at}")).unwrap_or_else(|| "active".into()),
        )
    };
    match action {
        KeysAction::List => {
            let list = api(Method::GET, &format!("{base}/"), &secret, None)?;
            for key in list["results"].as_array().into_iter().flatten() {
                println!("{}", line(key));
            }
        }
        KeysAction::Create { kind } => {
            let created = api(Method::POST, &format!("{base}/"), &secret, Some(serde_json::json!({"kind": kind}).to_string()))?;
            println!("{}", line(&created));
            println!("{} (shown only now)", created["key"].as_str().unwrap_or_default());
        }
        KeysAction::Revoke { id } => {
            let revoked = api(Method::DELETE, &format!("{base}/{id}/"), &secret, None)?;
            println!("{}", line(&revoked));
        }
    }
    Ok(())
}

fn run_destinations(url: &str, secret: Option<String>, action: DestinationsAction) -> anyhow::Result<()> {
    use reqwest::Method;
    let secret = secret.context("the secret key is needed: --secret-key or SWITCHYARD_SECRET_KEY")?;
    let base = format!("{}/api/projects/@current/destinations", url.trim_end_matches('/'));
    let pretty = |v: &serde_json::Value| serde_json::to_string_pretty(v);
    match action {
        DestinationsAction::List => {
            let list = api(Method::GET, &format!("{base}/"), &secret, None)?;
            for d in list["results"].as_array().into_iter().flatten() {
                println!(
                    "{}\t{}\t{}\t{}",
                    d["id"],
                    d["type"].as_str().unwrap_or_default(),
                    if d["enabled"] == true { "enabled" } else { "paused" },
                    d["name"].as_str().unwrap_or_default()
                );
            }
        }
        DestinationsAction::Get { id } => println!("{}", pretty(&api(Method::GET, &format!("{base}/{id}/"), &secret, None)?)?),
        DestinationsAction::Status { id } => println!("{}", pretty(&api(Method::GET, &format!("{base}/{id}/status"), &secret, None)?)?),
        DestinationsAction::DeadLetters { id, limit } => {
            let mut next = Some(format!("{base}/{id}/dead_letters/?limit={}", limit.min(1000)));
            let mut printed = 0;
            while let Some(page_url) = next.take() {
                let page = api(Method::GET, &page_url, &secret, None)?;
                for letter in page["results"].as_array().into_iter().flatten() {
                    if printed == limit {
                        return Ok(());
                    }
                    println!("{letter}");
                    printed += 1;
                }
                let root = url.trim_end_matches('/');
                next = page["next"].as_str().map(|path| format!("{root}{path}"));
            }
        }
        DestinationsAction::Replay { id, ids } => {
            let body = if ids.is_empty() { serde_json::json!({}) } else { serde_json::json!({"ids": ids}) };
            let answer = api(Method::POST, &format!("{base}/{id}/dead_letters/replay"), &secret, Some(body.to_string()))?;
            println!("replaying {} dead letters", answer["replaying"]);
        }
    }
    Ok(())
}

fn run_transform(url: &str, secret: Option<String>, action: TransformAction) -> anyhow::Result<()> {
    let secret = secret.context("the secret key is needed: --secret-key or SWITCHYARD_SECRET_KEY")?;
    let TransformAction::Test { file, events } = action;
    let code = std::fs::read_to_string(&file).with_context(|| format!("cannot read {}", file.display()))?;
    let transformations: serde_json::Value = if file.extension().is_some_and(|e| e == "js") {
        serde_json::json!([{"type": "javascript", "code": code}])
    } else {
        serde_json::from_str(&code).with_context(|| format!("{} is not JSON (a .js file is taken as JavaScript)", file.display()))?
    };
    let events_text = std::fs::read_to_string(&events).with_context(|| format!("cannot read {}", events.display()))?;
    let events: serde_json::Value = serde_json::from_str(&events_text).with_context(|| format!("{} is not JSON", events.display()))?;
    let body = serde_json::json!({"transformations": transformations, "events": events});
    let target = format!("{}/api/projects/@current/transformations/test", url.trim_end_matches('/'));
    let answer = api(reqwest::Method::POST, &target, &secret, Some(body.to_string()))?;
    println!("{}", serde_json::to_string_pretty(&answer["results"])?);
    Ok(())
}

fn run_traces(url: &str, secret: Option<String>, action: TracesAction) -> anyhow::Result<()> {
    use reqwest::Method;
    let secret = secret.context("the secret key is needed: --secret-key or SWITCHYARD_SECRET_KEY")?;
    let base = format!("{}/api/projects/@current/traces", url.trim_end_matches('/'));
    match action {
        TracesAction::List { user, workspace, agent, errors, min_cost, limit } => {
            let mut query = vec![format!("limit={limit}")];
            for (name, value) in [("user", user), ("workspace", workspace), ("agent", agent)] {
                if let Some(value) = value {
                    query.push(format!("{name}={}", url_encode(&value)));
                }
            }
            if errors {
                query.push("error=true".into());
            }
            if let Some(min) = min_cost {
                query.push(format!("min_cost={min}"));
            }
            let list = api(Method::GET, &format!("{base}/?{}", query.join("&")), &secret, None)?;
            for trace in list["results"].as_array().into_iter().flatten() {
                println!("{}", trace_line(trace));
            }
        }
        TracesAction::Show { trace_id } => {
            let view = api(Method::GET, &format!("{base}/{}/", url_encode(&trace_id)), &secret, None)?;
            print!("{}", waterfall(&view));
        }
    }
    Ok(())
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) { (b as char).to_string() } else { format!("%{b:02X}") })
        .collect()
}

/// USD without float noise: at most 10 decimals, trailing zeros dropped.
fn usd(value: &serde_json::Value) -> String {
    let amount = value.as_f64().unwrap_or(0.0);
    let text = format!("{amount:.10}");
    format!("${}", text.trim_end_matches('0').trim_end_matches('.'))
}

fn millis(value: &serde_json::Value) -> String {
    value.as_f64().map(|ms| format!("{ms:.1} ms")).unwrap_or_else(|| "? ms".into())
}

/// A run of the list: trace id, start, duration, LLM calls, tool calls, tokens, cost, errors.
fn trace_line(trace: &serde_json::Value) -> String {
    let t = &trace["totals"];
    format!(
        "{}\t{}\t{}\t{} llm calls\t{} tool calls\t{} in / {} out tokens\t{}\t{} errors",
        trace["trace_id"].as_str().unwrap_or_default(),
        trace["start"].as_str().unwrap_or("-"),
        millis(&t["duration_ms"]),
        t["llm_calls"],
        t["tool_calls"],
        t["input_tokens"],
        t["output_tokens"],
        usd(&t["cost_usd"]),
        t["errors"],
    )
}

/// Width of a waterfall bar, in columns.
const BAR_WIDTH: usize = 40;

fn nanos(value: &serde_json::Value) -> Option<i128> {
    let t = chrono::DateTime::parse_from_rfc3339(value.as_str()?).ok()?;
    Some(i128::from(t.timestamp()) * 1_000_000_000 + i128::from(t.timestamp_subsec_nanos()))
}

/// `from`..`to` (ns) drawn as `█` over `width` columns standing for `start`..`start + total`;
/// at least one column when the node has times.
fn bar(from: Option<i128>, to: Option<i128>, start: i128, total: i128, width: usize) -> String {
    let (Some(from), Some(to)) = (from, to) else { return " ".repeat(width) };
    let column = |t: i128, up: bool| {
        if total <= 0 {
            return if up { width } else { 0 };
        }
        let scaled = (t - start).clamp(0, total) * width as i128;
        let c = if up { (scaled + total - 1) / total } else { scaled / total };
        c as usize
    };
    let first = column(from, false).min(width - 1);
    let last = column(to.max(from), true).clamp(first + 1, width);
    format!("{}{}{}", " ".repeat(first), "█".repeat(last - first), " ".repeat(width - last))
}

/// The run as text: the tree with bars, the product events in time, flags and totals.
fn waterfall(view: &serde_json::Value) -> String {
    use std::fmt::Write as _;
    let start = nanos(&view["start"]).unwrap_or(0);
    let total = nanos(&view["end"]).map_or(0, |end| end - start);
    let mut rows: Vec<(String, &serde_json::Value)> = Vec::new();
    let mut stack: Vec<(&serde_json::Value, usize)> = view["tree"].as_array().into_iter().flatten().rev().map(|n| (n, 0)).collect();
    while let Some((node, depth)) = stack.pop() {
        let label = format!("{}{} ({})", "  ".repeat(depth), node["name"].as_str().unwrap_or("?"), node["type"].as_str().unwrap_or("?"));
        rows.push((label, node));
        stack.extend(node["children"].as_array().into_iter().flatten().rev().map(|k| (k, depth + 1)));
    }
    let label_width = rows.iter().map(|(l, _)| l.chars().count()).max().unwrap_or(0);
    let mut out = String::new();
    let totals = &view["totals"];
    let _ = writeln!(out, "trace {}  start {}  {}", view["trace_id"].as_str().unwrap_or_default(), view["start"].as_str().unwrap_or("-"), millis(&totals["duration_ms"]));
    let _ = writeln!(out);
    for (label, node) in &rows {
        let pad = label_width - label.chars().count();
        let mut line = format!(
            "{label}{}  |{}|  {:>10}",
            " ".repeat(pad),
            bar(nanos(&node["start"]), nanos(&node["end"]), start, total, BAR_WIDTH),
            millis(&node["duration_ms"])
        );
        let (input, output) = (node["input_tokens"].as_u64().unwrap_or(0), node["output_tokens"].as_u64().unwrap_or(0));
        if input > 0 || output > 0 {
            let _ = write!(line, "  {input} in / {output} out tokens");
        }
        if node["cost_usd"].as_f64().is_some_and(|c| c > 0.0) {
            let _ = write!(line, "  {}", usd(&node["cost_usd"]));
        }
        if node["is_error"] == true {
            line.push_str("  ERROR");
        }
        let _ = writeln!(out, "{}", line.trim_end());
    }
    let events: Vec<&serde_json::Value> = view["events"].as_array().into_iter().flatten().collect();
    if !events.is_empty() {
        let _ = writeln!(out, "\nevents:");
        for event in events {
            let offset = nanos(&event["timestamp"]).map(|t| format!("+{} ms", (t - start) / 1_000_000)).unwrap_or_else(|| "?".into());
            let shown: Vec<String> = event["properties"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, _)| !k.starts_with('$') && k.as_str() != "trace_id")
                .take(6)
                .map(|(k, v)| format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string())))
                .collect();
            let _ = writeln!(
                out,
                "  {offset:>10}  {}  {}  {}",
                event["event"].as_str().unwrap_or("?"),
                event["distinct_id"].as_str().unwrap_or(""),
                shown.join(" ")
            );
        }
    }
    let flags: Vec<String> = view["flags"].as_object().into_iter().flatten().map(|(k, v)| format!("{k}={}", v.as_str().map(str::to_owned).unwrap_or_else(|| v.to_string()))).collect();
    let _ = writeln!(out, "\nflags: {}", if flags.is_empty() { "none".into() } else { flags.join(", ") });
    let _ = writeln!(
        out,
        "totals: {}, {} spans, {} llm calls, {} tool calls, {} in / {} out tokens, {}, {} errors, {} guardrail blocks, {} events",
        millis(&totals["duration_ms"]),
        totals["spans"],
        totals["llm_calls"],
        totals["tool_calls"],
        totals["input_tokens"],
        totals["output_tokens"],
        usd(&totals["cost_usd"]),
        totals["errors"],
        totals["guardrail_blocks"],
        totals["events"],
    );
    out
}

/// `switchyard prices import`: checks the table, then writes it whole as `prices.json` (a
/// temporary file renamed over it, so the server never reads half a table).
fn import_prices(file: &std::path::Path, data_dir: &std::path::Path) -> anyhow::Result<()> {
    let text = std::fs::read_to_string(file).with_context(|| format!("cannot read {}", file.display()))?;
    let book = switchyard_llm::prices::PriceBook::from_litellm_json(&text)
        .map_err(|e| anyhow::anyhow!("{} is not a usable price table: {e}", file.display()))?;
    std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let target = data_dir.join("prices.json");
    let partial = data_dir.join("prices.json.partial");
    std::fs::write(&partial, &text).with_context(|| format!("cannot write {}", partial.display()))?;
    std::fs::rename(&partial, &target).with_context(|| format!("cannot write {}", target.display()))?;
    println!("imported {} ({} models with per-token prices) into {}", book.version(), book.len(), target.display());
    println!("restart the server to use it (a configured llm.prices_file takes precedence)");
    Ok(())
}

fn set_active(base: &str, secret: &str, key: &str, active: bool) -> anyhow::Result<()> {
    let flag = api(reqwest::Method::PATCH, &format!("{base}/{key}/"), secret, Some(serde_json::json!({"active": active}).to_string()))?;
    println!("{} is now {} (version {})", key, if active { "active" } else { "inactive" }, flag["version"]);
    Ok(())
}

fn run_server(config_path: Option<PathBuf>) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SWITCHYARD_LOG").unwrap_or_else(|_| "info".into()),
        )
        .init();
    let config = Config::load(config_path.as_deref(), std::env::vars())?;
    let runtime =
        tokio::runtime::Builder::new_multi_thread().worker_threads(config.worker_threads()).enable_all().build()?;
    runtime.block_on(async move {
        let listen = config.listen;
        let (state, new_keys) = AppState::open(config)?;
        if let Some(keys) = new_keys {
            // Only generated keys are shown (once); configured ones are never printed.
            let generated = [
                ("project token (PostHog SDKs):         ", keys.project_token),
                ("write key (RudderStack/Segment SDKs): ", keys.write_key),
                ("secret key (events API, admin):       ", keys.secret_key),
            ];
            if generated.iter().all(|(_, key)| key.is_none()) {
                println!("Created the default project (id {}) with the configured keys.", keys.project_id);
            } else {
                println!("Created the default project (id {}). Keep these generated keys; they are shown only now:", keys.project_id);
                for (label, key) in generated {
                    if let Some(key) = key {
                        println!("  {label} {key}");
                    }
                }
            }
        }
        let listener = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("cannot listen on {listen}"))?;
        tracing::info!(address = %listener.local_addr()?, "switchyard listening");
        serve(state, listener, shutdown_signal()).await?;
        tracing::info!("switchyard stopped cleanly");
        Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutdown signal received: draining");
}

//! The Switchyard HTTP server. [`app`] builds the router and [`serve`] runs it until a shutdown
//! future resolves, so tests start the real server in-process on port 0.

pub mod api;
pub mod config;
pub mod destinations;
pub mod flags;
pub mod http;
pub mod intake;
pub mod keys;
pub mod llm;
pub mod outbound;
pub mod metrics;
pub mod model_prices;
pub mod persons;
pub mod upstream;
pub mod warehouse;

use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get, post};
use axum::Router;
use switchyard_event::EventLimits;
use switchyard_store::{CommitObserver, ControlStore, ExplicitKeys, NewProjectKeys, SqliteLog, SqliteLogConfig};
use tokio::net::TcpListener;

pub use config::Config;
use metrics::{Metrics, RouteLabels};

/// Everything a handler needs. Cheap to clone: one reference count.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

pub struct Shared {
    pub config: Config,
    pub log: SqliteLog,
    pub control: ControlStore,
    pub metrics: Metrics,
    pub flags: flags::FlagRegistry,
    /// The process-wide budget of request bytes in flight (`limits.max_in_flight_bytes`).
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// lz-string bodies are decoded one at a time (see `intake::posthog_capture`).
    pub lz_decodes: tokio::sync::Semaphore,
    ready: AtomicBool,
    /// Upstream mode: the mirrored project and its mirror.
    mirror: std::sync::OnceLock<(i64, Arc<upstream::MirrorState>)>,
    /// Delivery to destinations. It holds the state (its stores), so it is let go when the
    /// server stops (see `serve`).
    router: std::sync::Mutex<Option<switchyard_pipeline::Router>>,
    /// Told after every append, so caught-up destinations read at once.
    pub appended: Arc<tokio::sync::Notify>,
    /// The LLM price table (`llm.prices_file`, the data directory's `prices.json`, or the
    /// embedded snapshot).
    prices: Option<switchyard_llm::prices::PriceBook>,
    /// Each project's own model prices (`/api/projects/{id}/model_prices/`), looked up first.
    pub project_prices: model_prices::ProjectPrices,
    /// SQL over the embedded lake, when the lake is on.
    query: Option<switchyard_query::QueryEngine>,
    /// The warehouse loaders and their status.
    pub loaders: warehouse::Loaders,
}

/// The price table: `llm.prices_file`, else the data directory's `prices.json` (what
/// `switchyard prices import` writes), else the embedded snapshot.
fn load_prices(config: &Config) -> anyhow::Result<Option<switchyard_llm::prices::PriceBook>> {
    let imported = config.data_dir.join("prices.json");
    let file = config.llm.prices_file.clone().or_else(|| imported.exists().then_some(imported));
    match file {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| anyhow::anyhow!("cannot read the price table {}: {e}", path.display()))?;
            let book = switchyard_llm::prices::PriceBook::from_litellm_json(&text).map_err(|e| anyhow::anyhow!("the price table {}: {e}", path.display()))?;
            Ok(Some(book))
        }
        None => Ok(None),
    }
}

/// The entries of `llm.custom_prices_file` (a LiteLLM-shaped table), checked by reading it as
/// a price table first.
fn configured_prices(config: &Config) -> anyhow::Result<serde_json::Map<String, serde_json::Value>> {
    let Some(path) = &config.llm.custom_prices_file else { return Ok(serde_json::Map::new()) };
    let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read llm.custom_prices_file {}: {e}", path.display()))?;
    switchyard_llm::prices::PriceBook::from_litellm_json(&text).map_err(|e| anyhow::anyhow!("llm.custom_prices_file {}: {e}", path.display()))?;
    match serde_json::from_str::<serde_json::Value>(&text) {
        Ok(serde_json::Value::Object(entries)) => Ok(entries),
        _ => anyhow::bail!("llm.custom_prices_file {}: a JSON object keyed by model is expected", path.display()),
    }
}

/// What the person processor reports: dropped properties counted, flags reloaded for a new
/// group type.
fn person_hooks(state: &AppState) -> switchyard_pipeline::persons::PersonHooks {
    let dropped = state.metrics.person_properties_dropped.clone();
    let reloading = state.clone();
    switchyard_pipeline::persons::PersonHooks {
        limits: switchyard_store::PropertyLimits {
            max_properties: state.config.limits.max_person_properties,
            max_bytes: state.config.limits.max_person_properties_bytes,
        },
        dropped: Box::new(move |n| {
            dropped.inc_by(n);
        }),
        new_group_type: Box::new(move |project_id| {
            reloading.flags.reload(&reloading.control, project_id)?;
            Ok(())
        }),
    }
}

/// What the router and the person processor use of the state.
pub(crate) struct RouterStores(pub(crate) AppState);

impl switchyard_pipeline::Stores for RouterStores {
    fn log(&self) -> &SqliteLog {
        &self.0.log
    }
    fn control(&self) -> &ControlStore {
        &self.0.control
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}

impl AppState {
    /// Opens the stores under `config.data_dir` (creating them and the default project on
    /// first start). Returns the default project's keys when they were created now.
    pub fn open(config: Config) -> anyhow::Result<(AppState, Option<NewProjectKeys>)> {
        config.validate()?;
        if let Some(ca_file) = &config.tls.ca_file {
            outbound::extra_roots(ca_file)?;
        }
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create data directory {}: {e}", config.data_dir.display())
        })?;
        let control = ControlStore::open(&config.data_dir.join("control.db"))?;
        let new_keys = control.ensure_default_project(&ExplicitKeys {
            project_token: config.project_token.clone(),
            write_key: config.write_key.clone(),
            secret_key: config.secret_key.clone(),
        })?;
        let metrics = Metrics::default();
        let flags = flags::FlagRegistry::new(metrics.flag_evaluations.clone());
        for project_id in control.project_ids()? {
            flags.reload(&control, project_id)?;
        }
        let transaction_events = metrics.log_transaction_events.clone();
        let log = SqliteLog::open(
            &config.data_dir.join("events.db"),
            SqliteLogConfig {
                queue_capacity: config.log.queue_capacity,
                max_txn_events: config.log.max_txn_events,
                max_size_bytes: config.log.max_size_bytes,
                counted_files: vec![config.data_dir.join("control.db")],
                quarantine_raw_bytes: config.log.quarantine_raw_bytes.min(config.limits.max_event_bytes),
                retention: config.log.retention_days.map(|days| Duration::from_secs(u64::from(days) * 86_400)),
                retention_consumers: std::iter::once(switchyard_pipeline::persons::CONSUMER)
                    .chain(config.warehouse.lake.then_some(switchyard_pipeline::lake::CONSUMER))
                    .map(str::to_owned)
                    .collect(),
                on_retention: Some(switchyard_store::RetentionObserver(Arc::new({
                    let deleted = metrics.log_retention_deleted.clone();
                    move |pass| {
                        deleted.get_or_create(&metrics::TableLabels { table: "events" }).inc_by(pass.events);
                        deleted.get_or_create(&metrics::TableLabels { table: "quarantine" }).inc_by(pass.quarantine);
                        deleted.get_or_create(&metrics::TableLabels { table: "spans" }).inc_by(pass.spans);
                    }
                }))),
                on_commit: Some(CommitObserver(Arc::new(move |events| transaction_events.observe(events as f64)))),
                ..SqliteLogConfig::default()
            },
        )?;
        let in_flight = Arc::new(tokio::sync::Semaphore::new(config.limits.max_in_flight_bytes));
        let prices = load_prices(&config)?;
        let project_prices = model_prices::ProjectPrices::load(&control, configured_prices(&config)?)?;
        let query = config
            .warehouse
            .lake
            .then(|| {
                let w = &config.warehouse;
                let limits = switchyard_query::QueryLimits {
                    max_rows: w.query_max_rows,
                    timeout: Duration::from_secs(w.query_timeout_secs),
                    memory_bytes: w.query_memory_mib << 20,
                };
                switchyard_query::QueryEngine::new(w.lake_root(&config.data_dir), limits, || lower_priority(10))
            })
            .transpose()?;
        let state = AppState(Arc::new(Shared {
            query,
            loaders: warehouse::Loaders::default(),
            in_flight,
            lz_decodes: tokio::sync::Semaphore::new(1),
            config,
            log,
            control,
            metrics,
            flags,
            ready: AtomicBool::new(true),
            mirror: std::sync::OnceLock::new(),
            router: std::sync::Mutex::new(None),
            appended: Arc::new(tokio::sync::Notify::new()),
            prices,
            project_prices,
        }));
        let router_config = state.config.routing.router_config(state.config.tls.ca_file.as_deref());
        let router = switchyard_pipeline::Router::new(
            Arc::new(RouterStores(state.clone())),
            router_config,
            state.metrics.router.clone(),
            state.appended.clone(),
        )
            .map_err(|e| anyhow::anyhow!("routing: {e}"))?;
        *state.router.lock().unwrap() = Some(router);
        if state.config.upstream.url.is_some() {
            let project_id = match state.config.upstream.project_id {
                Some(id) => id,
                None => *state.control.project_ids()?.first().ok_or_else(|| anyhow::anyhow!("no project to mirror flags into"))?,
            };
            let mirror = upstream::restore(&state, project_id, &state.config.upstream)?;
            let _ = state.mirror.set((project_id, mirror));
        }
        Ok((state, new_keys))
    }

    pub fn event_limits(&self) -> EventLimits {
        let l = &self.config.limits;
        EventLimits {
            max_event_bytes: l.max_event_bytes,
            max_event_name_chars: l.max_event_name_chars,
            max_properties: l.max_properties,
            max_depth: l.max_depth,
            max_events_per_request: l.max_events_per_request,
        }
    }

    /// Intake is ready: stores open, not stopping. A down upstream never takes intake out of
    /// rotation.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// The LLM price table in use.
    pub fn prices(&self) -> &switchyard_llm::prices::PriceBook {
        self.prices.as_ref().unwrap_or_else(|| switchyard_llm::prices::PriceBook::embedded())
    }

    /// SQL over the lake, when the lake is on.
    pub fn query_engine(&self) -> Option<&switchyard_query::QueryEngine> {
        self.query.as_ref()
    }

    /// The router, while the server runs.
    pub fn router(&self) -> Option<switchyard_pipeline::Router> {
        self.router.lock().unwrap().clone()
    }

    /// Flags are ready too: loaded (in upstream mode: a snapshot to serve).
    pub fn flags_ready(&self) -> bool {
        self.is_ready() && self.flags.mirrors_loaded()
    }
}

const POSTHOG_CAPTURE_PATHS: &[&str] = &["/e", "/i/v0/e", "/capture", "/track", "/engage", "/batch"];
/// RudderStack's `/v1/import` is a batch too (its gateway splits it per user, then takes each
/// part as a batch), and so is `/beacon/v1/batch` (rudder-sdk-js's `sendBeacon`, key in `?writeKey=`).
const SEGMENT_CALLS: &[&str] = &["track", "identify", "group", "page", "screen", "alias", "batch", "import"];

/// The whole HTTP application.
pub fn app(state: AppState) -> Router {
    let mut router = Router::new()
        .route("/_liveness", get(|| async { "ok" }))
        .route("/_readiness", get(readiness))
        .route("/_readiness/flags", get(flags_readiness))
        .route("/metrics", get(metrics_endpoint))
        .route("/array/{token}/config", get(intake::posthog_remote_config))
        .route("/array/{token}/config.js", get(intake::posthog_remote_config_js))
        .route("/api/projects/{project_id}/events", get(api::list_events))
        .route("/api/projects/{project_id}/events/", get(api::list_events))
        .route("/api/projects/{project_id}/quarantine", get(api::list_quarantine))
        .route("/api/projects/{project_id}/quarantine/", get(api::list_quarantine))
        .route("/api/projects/{project_id}/persons", get(persons::get_person))
        .route("/api/projects/{project_id}/persons/", get(persons::get_person))
        .route("/api/projects/{project_id}/groups", get(persons::get_group))
        .route("/api/projects/{project_id}/groups/", get(persons::get_group));
    for suffix in ["", "/"] {
        router = router
            .route(&format!("/api/projects/{{project_id}}/keys{suffix}"), get(keys::list_keys).post(keys::create_key))
            .route(&format!("/api/projects/{{project_id}}/keys/{{id}}{suffix}"), axum::routing::delete(keys::revoke_key));
        let base = "/api/projects/{project_id}/destinations";
        router = router
            .route(&format!("{base}{suffix}"), get(destinations::list_destinations).post(destinations::create_destination))
            .route(
                &format!("{base}/{{id}}{suffix}"),
                get(destinations::get_destination).patch(destinations::update_destination).delete(destinations::delete_destination),
            )
            .route(&format!("{base}/{{id}}/status{suffix}"), get(destinations::destination_status))
            .route(
                &format!("{base}/{{id}}/dead_letters{suffix}"),
                get(destinations::list_dead_letters).delete(destinations::discard_dead_letters),
            )
            .route(&format!("{base}/{{id}}/dead_letters/replay{suffix}"), post(destinations::replay_dead_letters))
            .route(&format!("/api/projects/{{project_id}}/transformations/test{suffix}"), post(destinations::test_transformations));
        router = router
            .route(&format!("/api/projects/{{project_id}}/model_prices{suffix}"), get(model_prices::list_model_prices).post(model_prices::put_model_price))
            .route(&format!("/api/projects/{{project_id}}/model_prices/{{model}}{suffix}"), axum::routing::delete(model_prices::delete_model_price))
            .route(&format!("/api/projects/{{project_id}}/traces{suffix}"), get(llm::list_traces))
            .route(&format!("/api/projects/{{project_id}}/traces/{{trace_id}}{suffix}"), get(llm::get_trace))
            .route(&format!("/api/projects/{{project_id}}/insights/llm{suffix}"), get(llm::llm_insights))
            .route(&format!("/api/projects/{{project_id}}/query{suffix}"), post(warehouse::query))
            .route(&format!("/api/projects/{{project_id}}/warehouses{suffix}"), get(warehouse::list_warehouses).post(warehouse::create_warehouse))
            .route(&format!("/api/projects/{{project_id}}/warehouses/status{suffix}"), get(warehouse::warehouse_status))
            .route(
                &format!("/api/projects/{{project_id}}/warehouses/{{id}}{suffix}"),
                get(warehouse::get_warehouse).delete(warehouse::delete_warehouse),
            );
    }
    // OPTIONS (CORS preflight) is answered by `cors_and_count`; other methods get 405, HEAD
    // too (axum would answer it as a GET: link checkers would send events).
    let capture = get(intake::posthog_capture).post(intake::posthog_capture).head(method_not_allowed);
    for path in POSTHOG_CAPTURE_PATHS {
        router = router.route(path, capture.clone()).route(&format!("{path}/"), capture.clone());
    }
    for path in ["/flags", "/decide"] {
        router = router.route(path, any(flags::flags)).route(&format!("{path}/"), any(flags::flags));
    }
    for path in ["/flags/definitions", "/api/feature_flag/local_evaluation"] {
        router = router
            .route(path, get(flags::local_evaluation))
            .route(&format!("{path}/"), get(flags::local_evaluation));
    }
    router = router
        .route("/ofrep/v1/evaluate/flags", post(flags::ofrep_bulk))
        .route("/ofrep/v1/evaluate/flags/{key}", post(flags::ofrep_single));
    for suffix in ["", "/"] {
        let base = "/api/projects/{project_id}/feature_flags";
        router = router
            .route(&format!("{base}{suffix}"), get(flags::list_flags).post(flags::create_flag))
            // A whole project's export: up to `limits.max_request_bytes`, not axum's 2 MiB.
            .route(
                &format!("{base}/import{suffix}"),
                post(flags::import_flags).layer(axum::extract::DefaultBodyLimit::max(state.config.limits.max_request_bytes)),
            )
            .route(&format!("{base}/activity{suffix}"), get(flags::flag_activity))
            .route(
                &format!("{base}/{{id}}{suffix}"),
                get(flags::get_flag).patch(flags::update_flag).put(flags::update_flag).delete(flags::delete_flag),
            )
            .route(&format!("{base}/{{id}}/activity{suffix}"), get(flags::flag_activity));
    }
    for call in SEGMENT_CALLS {
        router = router
            .route(&format!("/v1/{call}"), axum::routing::post(intake::segment_intake))
            .route(&format!("/v1/{call}/"), axum::routing::post(intake::segment_intake));
    }
    router = router
        .route("/v1/traces", post(llm::otlp_traces))
        .route("/i/v0/ai/otel", post(llm::otlp_traces))
        .route("/i/v0/ai/otel/", post(llm::otlp_traces))
        .route("/api/public/otel/v1/traces", post(llm::otlp_traces))
        .route("/api/public/scores", post(llm::langfuse_scores))
        .route("/beacon/v1/batch", axum::routing::post(intake::segment_intake))
        .route("/beacon/v1/batch/", axum::routing::post(intake::segment_intake));
    let pixel = get(intake::segment_pixel).head(method_not_allowed);
    for call in ["track", "page"] {
        router = router.route(&format!("/pixel/v1/{call}"), pixel.clone()).route(&format!("/pixel/v1/{call}/"), pixel.clone());
    }
    router
        .layer(axum::middleware::from_fn_with_state(state.clone(), cors_and_count))
        .with_state(state)
}

async fn readiness(State(state): State<AppState>) -> Response {
    if state.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready").into_response()
    }
}

async fn flags_readiness(State(state): State<AppState>) -> Response {
    if state.flags_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "flags not loaded").into_response()
    }
}

/// For HEAD on routes whose GET stores events.
async fn method_not_allowed() -> StatusCode {
    StatusCode::METHOD_NOT_ALLOWED
}

async fn metrics_endpoint(State(state): State<AppState>) -> Response {
    warehouse::update_metrics(&state).await;
    if let Some((_, mirror)) = state.mirror.get() {
        state.metrics.flags_snapshot_age.set(mirror.age_seconds().unwrap_or(-1));
        state.metrics.flags_snapshot_stale.set(mirror.is_stale() as i64);
    }
    (
        [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.encode(),
    )
        .into_response()
}

/// The routes browsers' SDKs call (capture, `/flags`, `/decide`, remote config, OFREP,
/// RudderStack's intake, beacon and pixel routes): the only ones with CORS. Management APIs,
/// local evaluation (secret key), `/metrics` and health checks are for servers and operators,
/// so no web page gets to read them, whatever key it holds.
fn browser_route(route: &str) -> bool {
    let path = route.strip_suffix('/').unwrap_or(route);
    POSTHOG_CAPTURE_PATHS.contains(&path)
        || path == "/flags"
        || path == "/decide"
        || ["/array/", "/ofrep/", "/v1/", "/beacon/", "/pixel/"].iter().any(|prefix| path.starts_with(prefix))
}

/// Counts every answered request by route and status, and adds CORS on browser routes
/// ([`browser_route`]): mirror the origin and requested headers, allow credentials (as PostHog's
/// capture does); their preflights are answered here. Other routes get no CORS headers, and
/// their preflights go to the router (405, or 404). One middleware rather than two: each layer
/// costs a service clone per request.
async fn cors_and_count(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".to_owned());
    if !browser_route(&route) {
        let response = next.run(request).await;
        state.metrics.http_requests.get_or_create(&RouteLabels { route, status: response.status().as_u16() }).inc();
        return response;
    }
    let origin = request.headers().get(header::ORIGIN).cloned();
    let requested_headers = request.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).cloned();
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        (StatusCode::OK, axum::Json(serde_json::json!({"status": "Ok"}))).into_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    let allow_origin = origin.unwrap_or(HeaderValue::from_static("*"));
    let credentials = allow_origin != "*";
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    if credentials {
        headers.insert(header::ACCESS_CONTROL_ALLOW_CREDENTIALS, HeaderValue::from_static("true"));
        headers.append(header::VARY, HeaderValue::from_static("Origin"));
    }
    if preflight {
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, HeaderValue::from_static("GET, POST, OPTIONS"));
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            requested_headers.unwrap_or(HeaderValue::from_static("*")),
        );
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("900"));
    }
    state
        .metrics
        .http_requests
        .get_or_create(&RouteLabels { route, status: response.status().as_u16() })
        .inc();
    response
}

/// Runs the router on a runtime of its own, whose threads run at a lower priority (nice 10)
/// than intake's: when both want the CPU, acknowledging events comes first and delivery
/// catches up after (its backlog is on disk); an idle machine delivers at full speed.
fn spawn_router(router: switchyard_pipeline::Router, stop: tokio::sync::watch::Receiver<bool>) -> anyhow::Result<std::thread::JoinHandle<()>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("router")
        .on_thread_start(|| lower_priority(10))
        .enable_all()
        .build()?;
    Ok(std::thread::Builder::new().name("router".into()).spawn(move || {
        lower_priority(10);
        runtime.block_on(router.run(stop));
    })?)
}

/// Runs the warehouse loaders (the lake's, when on, and PostgreSQL's, started later on the
/// handle given back) on one thread at a lower priority (nice 10, as the router's): a load is
/// CPU-heavy (~60 µs per event for the lake) and can wait; intake comes first. Not nice 19:
/// there a loader gets ~1.5% of a core beside one busy process (CFS weights 15 to 1024), so
/// another program's load on the machine would hold the lake back far past `max_wait_secs`.
fn spawn_warehouse(
    lake: Option<(Arc<dyn switchyard_pipeline::Stores>, switchyard_pipeline::lake::LakeConfig, Arc<switchyard_pipeline::LoadStatus>)>,
    stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(std::thread::JoinHandle<()>, tokio::runtime::Handle)> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("warehouse")
        .on_thread_start(|| lower_priority(10))
        .enable_all()
        .build()?;
    let handle = runtime.handle().clone();
    let thread = std::thread::Builder::new().name("warehouse".into()).spawn(move || {
        lower_priority(10);
        runtime.block_on(async move {
            if let Some((stores, config, status)) = lake {
                switchyard_pipeline::lake::run(stores, config, status, stop.clone()).await;
            }
            // The runtime lives as long as the server: PostgreSQL loaders run on it.
            let mut stop = stop;
            while !*stop.borrow() {
                if stop.changed().await.is_err() {
                    break;
                }
            }
        });
    })?;
    Ok((thread, handle))
}

/// Lowers the calling thread's priority to `nice` (Linux: per thread).
fn lower_priority(nice: i32) {
    #[cfg(target_os = "linux")]
    if let Err(error) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), nice) {
        tracing::debug!(%error, "a background thread keeps the normal priority");
    }
}

/// Serves `state` on `listener` until `shutdown` resolves; then readiness turns 503, in-flight
/// requests get `shutdown_timeout_secs` to finish, and the event log commits what it was given
/// and closes.
pub async fn serve(
    state: AppState,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (stopping_tx, mut stopping_rx) = tokio::sync::watch::channel(false);
    let signalled = state.clone();
    let graceful = async move {
        shutdown.await;
        signalled.ready.store(false, Ordering::SeqCst);
        let _ = stopping_tx.send(true);
    };
    let router = app(state.clone());
    let (stop_processor, processor_stop) = tokio::sync::watch::channel(false);
    let processor = tokio::spawn(switchyard_pipeline::persons::run(
        Arc::new(RouterStores(state.clone())),
        Arc::new(person_hooks(&state)),
        processor_stop.clone(),
    ));
    let routing = match state.router() {
        Some(router) => {
            let lake = state.config.warehouse.lake.then(|| {
                let w = &state.config.warehouse;
                let mut config = switchyard_pipeline::lake::LakeConfig::new(w.lake_root(&state.config.data_dir));
                config.max_events = w.max_events;
                config.max_wait = Duration::from_secs(w.max_wait_secs);
                config.compact_files = w.compact_files;
                (Arc::new(RouterStores(state.clone())) as Arc<dyn switchyard_pipeline::Stores>, config, state.loaders.lake_status())
            });
            let (loaders, runtime) = spawn_warehouse(lake, processor_stop.clone())?;
            state.loaders.set_runtime(runtime);
            warehouse::start_all(&state)?;
            Some((spawn_router(router, processor_stop.clone())?, loaders))
        }
        None => None,
    };
    let poller = state.mirror.get().map(|(project_id, mirror)| {
        tokio::spawn(upstream::run(state.clone(), *project_id, state.config.upstream.clone(), mirror.clone(), processor_stop))
    });
    let (stop_connections, connections_stop) = tokio::sync::watch::channel(false);
    let mut server = tokio::spawn(http::serve_connections(
        listener,
        router,
        state.config.http.clone(),
        state.metrics.connections.clone(),
        connections_stop,
    ));
    tokio::spawn(async move {
        graceful.await;
        let _ = stop_connections.send(true);
    });
    let served = tokio::select! {
        result = &mut server => Some(result.map(Ok::<(), std::io::Error>)),
        _ = stopping_rx.changed() => None,
    };
    let result = match served {
        Some(result) => result,
        None => {
            let drain = Duration::from_secs(state.config.shutdown_timeout_secs);
            match tokio::time::timeout(drain, &mut server).await {
                Ok(result) => result.map(Ok),
                Err(_) => {
                    tracing::warn!(?drain, "in-flight requests did not finish in time; closing them");
                    server.abort();
                    Ok(Ok(()))
                }
            }
        }
    };
    state.ready.store(false, Ordering::SeqCst);
    let _ = stop_processor.send(true);
    state.loaders.stop_all();
    let _ = processor.await;
    if let Some((routing, loaders)) = routing {
        let _ = tokio::task::spawn_blocking(move || (routing.join(), loaders.join())).await;
    }
    // The router holds the state: let it go, so the stores close with the last handle.
    state.router.lock().unwrap().take();
    if let Some(poller) = poller {
        let _ = poller.await;
    }
    state.log.close().await;
    result??;
    Ok(())
}

//! The router: every enabled destination is a consumer of the log with its own durable cursor
//! (`destination:{id}`), run by a worker of its own, so a slow, failing or paused destination
//! never delays intake or another destination.
//!
//! A worker reads a window of its project's events after its cursor, then filter → transform
//! → map → batch → send → confirm, and commits the cursor past the window only once every
//! event in it was confirmed by the destination or dead-lettered (at-least-once: a crash
//! re-sends the window it was in). Within a window, events go out in lanes keyed by distinct
//! id: lanes run concurrently, and each sends its events in log order, one request at a time,
//! so events of one distinct id reach the destination in log order. A request refused with a
//! final status is split in halves until the events that cause it are found; only those are
//! dead-lettered.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use serde_json::{json, Value};
use switchyard_store::{ControlStore, DeadLetter, EventLog, NewDeadLetter, Selection, SqliteLog, StoredDestination};
use tokio::sync::{watch, Notify};

use crate::destination::{DestinationConfig, DestinationKind, DestinationSpec, Start};
use crate::retry::{classify, parse_retry_after, RetryPolicy, Verdict};
use crate::transform::{Filter, JsLimits, Outcome, Transformations};
use crate::wire;

/// What the router needs of the server: its log and control store.
pub trait Stores: Send + Sync + 'static {
    fn log(&self) -> &SqliteLog;
    fn control(&self) -> &ControlStore;
}

/// The router's settings (`[routing]` in the configuration).
#[derive(Debug, Clone)]
pub struct RouterConfig {
    pub retry: RetryPolicy,
    /// One request's time limit (a hang past it is retried).
    pub request_timeout: Duration,
    /// Deliver to private, loopback and link-local addresses too.
    pub allow_private_addresses: bool,
    pub ca_file: Option<std::path::PathBuf>,
    /// Events read from the log per window.
    pub window_events: usize,
    /// Concurrent lanes per destination.
    pub lanes: usize,
    pub js: JsLimits,
    /// How much of a refusal's answer a dead letter keeps.
    pub max_response_bytes: usize,
}

impl Default for RouterConfig {
    fn default() -> Self {
        RouterConfig {
            retry: RetryPolicy::default(),
            request_timeout: Duration::from_secs(30),
            allow_private_addresses: false,
            ca_file: None,
            window_events: 1000,
            lanes: 4,
            js: JsLimits::default(),
            max_response_bytes: 2048,
        }
    }
}

/// The log cursor of destination `id`.
pub fn cursor_name(id: i64) -> String {
    format!("destination:{id}")
}

/// The cursor of destination `id` of `kind`: in the spans for an `otlp` destination, in the
/// events for the others.
pub fn cursor_of(id: i64, kind: DestinationKind) -> String {
    match kind {
        DestinationKind::Otlp => format!("{}{}", switchyard_store::SPAN_CURSOR_PREFIX, cursor_name(id)),
        _ => cursor_name(id),
    }
}

/// The kind of a stored destination (webhook when its spec cannot be read).
fn kind_of(d: &StoredDestination) -> DestinationKind {
    serde_json::from_str::<Value>(&d.spec).ok().and_then(|v| DestinationSpec::parse(&v).ok()).map_or(DestinationKind::Webhook, |s| s.config.kind())
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DestinationLabels {
    pub destination: String,
}

/// The router's metrics, per destination.
type HistogramFamily = Family<DestinationLabels, Histogram, fn() -> Histogram>;

#[derive(Clone)]
pub struct RouterMetrics {
    pub delivered: Family<DestinationLabels, Counter>,
    pub filtered: Family<DestinationLabels, Counter>,
    pub dead_lettered: Family<DestinationLabels, Counter>,
    pub retrying: Family<DestinationLabels, Gauge>,
    pub lag_events: Family<DestinationLabels, Gauge>,
    pub batch_events: HistogramFamily,
    pub send_seconds: HistogramFamily,
}

impl Default for RouterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl RouterMetrics {
    pub fn new() -> Self {
        RouterMetrics {
            delivered: Family::default(),
            filtered: Family::default(),
            dead_lettered: Family::default(),
            retrying: Family::default(),
            lag_events: Family::default(),
            batch_events: Family::new_with_constructor(|| Histogram::new(exponential_buckets(1.0, 2.0, 14))),
            send_seconds: Family::new_with_constructor(|| Histogram::new(exponential_buckets(0.001, 2.0, 16))),
        }
    }

    pub fn register(&self, registry: &mut Registry) {
        registry.register("destination_delivered", "Events a destination confirmed", self.delivered.clone());
        registry.register("destination_filtered", "Events a destination's filter or transformations dropped", self.filtered.clone());
        registry.register("destination_dead_lettered", "Events a destination gave up on (dead letters)", self.dead_lettered.clone());
        registry.register("destination_retrying_events", "Events waiting to be sent again", self.retrying.clone());
        registry.register("destination_lag_events", "Log positions between a destination's cursor and the log's end", self.lag_events.clone());
        registry.register("destination_batch_events", "Events per request sent", self.batch_events.clone());
        registry.register("destination_send_seconds", "Time a request took, answer included", self.send_seconds.clone());
    }
}

/// What a destination's status shows, kept since the server started (dead letters are
/// counted from the store).
#[derive(Default)]
pub struct Status {
    pub delivered: AtomicU64,
    pub filtered: AtomicU64,
    pub retrying: AtomicU64,
    pub dead_lettered: AtomicU64,
    last_error: Mutex<Option<(String, String)>>,
    last_success: Mutex<Option<String>>,
}

impl Status {
    fn failed(&self, error: String) {
        *self.last_error.lock().unwrap() = Some((error, now_text()));
    }
    fn succeeded(&self) {
        *self.last_success.lock().unwrap() = Some(now_text());
    }
}

fn now_text() -> String {
    Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Runs the workers of the enabled destinations and keeps them in step with the store.
#[derive(Clone)]
pub struct Router(Arc<Inner>);

struct Inner {
    stores: Arc<dyn Stores>,
    config: RouterConfig,
    client: reqwest::Client,
    metrics: RouterMetrics,
    statuses: Mutex<HashMap<i64, Arc<Status>>>,
    workers: Mutex<HashMap<i64, Running>>,
    changed: Notify,
    /// Woken when events were appended (workers wait on it when caught up).
    appended: Arc<Notify>,
}

struct Running {
    spec: String,
    /// The worker's cursor (in the events, or in the spans).
    cursor: String,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Router {
    /// `appended` is told whenever events were appended to the log.
    pub fn new(stores: Arc<dyn Stores>, config: RouterConfig, metrics: RouterMetrics, appended: Arc<Notify>) -> Result<Router, String> {
        let client = crate::outbound::client(config.ca_file.as_deref(), config.allow_private_addresses, config.request_timeout)?;
        Ok(Router(Arc::new(Inner {
            stores,
            config,
            client,
            metrics,
            statuses: Mutex::new(HashMap::new()),
            workers: Mutex::new(HashMap::new()),
            changed: Notify::new(),
            appended,
        })))
    }

    pub fn config(&self) -> &RouterConfig {
        &self.0.config
    }

    /// Tells the router destinations changed (the supervisor also looks every few seconds).
    pub fn reload(&self) {
        self.0.changed.notify_one();
    }

    pub fn status(&self, id: i64) -> Arc<Status> {
        self.0.statuses.lock().unwrap().entry(id).or_default().clone()
    }

    /// Positions a new destination's cursor: at the log's end (`now`) or its beginning (in the
    /// spans for an `otlp` destination).
    pub async fn start_cursor(&self, id: i64, kind: DestinationKind, start: Start) -> Result<(), String> {
        let log = self.0.stores.log();
        let position = match (start, kind) {
            (Start::Now, DestinationKind::Otlp) => log.spans_end().await.map_err(|e| e.to_string())?,
            (Start::Now, _) => log.end().await.map_err(|e| e.to_string())?,
            (Start::Earliest, _) => 0,
        };
        log.commit(&cursor_of(id, kind), position).await.map_err(|e| e.to_string())
    }

    /// Stops destination `id`'s worker and waits until it has stopped (a deleted destination:
    /// nothing of it may commit a cursor after this).
    pub async fn stop_worker(&self, id: i64) {
        let running = self.0.workers.lock().unwrap().remove(&id);
        if let Some(running) = running {
            let _ = running.stop.send(true);
            let _ = running.task.await;
        }
    }

    /// Forgets a deleted destination's cursor (it no longer holds retention back).
    pub async fn forget(&self, id: i64) -> Result<(), String> {
        let log = self.0.stores.log();
        log.forget(&cursor_name(id)).await.map_err(|e| e.to_string())?;
        log.forget(&cursor_of(id, DestinationKind::Otlp)).await.map_err(|e| e.to_string())
    }

    /// Sets the lag gauge of every running destination (also while one hangs or retries).
    async fn refresh_lag(&self) {
        let running: Vec<(i64, String)> = self.0.workers.lock().unwrap().iter().map(|(id, r)| (*id, r.cursor.clone())).collect();
        let log = self.0.stores.log();
        let (Ok(end), Ok(spans_end)) = (log.end().await, log.spans_end().await) else { return };
        for (id, cursor) in running {
            let end = if cursor.starts_with(switchyard_store::SPAN_CURSOR_PREFIX) { spans_end } else { end };
            if let Ok(Some(position)) = log.cursor(&cursor).await {
                self.0.metrics.lag_events.get_or_create(&DestinationLabels { destination: id.to_string() }).set((end - position).max(0));
            }
        }
    }

    /// A destination's status as the API shows it.
    pub async fn status_json(&self, destination: &StoredDestination, enabled: bool) -> Value {
        let status = self.status(destination.id);
        let log = self.0.stores.log();
        let (behind, oldest) = match kind_of(destination) {
            DestinationKind::Otlp => log.spans_lag(&cursor_of(destination.id, DestinationKind::Otlp), destination.project_id).await,
            _ => log.lag(&cursor_name(destination.id), destination.project_id).await,
        }
        .unwrap_or((0, None));
        let lag_seconds = oldest
            .and_then(|t| DateTime::parse_from_rfc3339(&t).ok())
            .map(|t| ((Utc::now() - t.with_timezone(&Utc)).num_milliseconds().max(0) as f64) / 1000.0)
            .unwrap_or(0.0);
        let stores = self.0.stores.clone();
        let id = destination.id;
        let dead_letters = tokio::task::spawn_blocking(move || stores.control().count_dead_letters(id)).await.ok().and_then(Result::ok).unwrap_or(0);
        let last_error = status.last_error.lock().unwrap().clone();
        json!({
            "id": destination.id,
            "enabled": enabled,
            "running": self.0.workers.lock().unwrap().contains_key(&destination.id),
            "delivered": status.delivered.load(Ordering::Relaxed),
            "filtered": status.filtered.load(Ordering::Relaxed),
            "retrying": status.retrying.load(Ordering::Relaxed),
            "dead_lettered": status.dead_lettered.load(Ordering::Relaxed),
            "dead_letters": dead_letters,
            "lag": {"events": behind, "seconds": lag_seconds},
            "last_error": last_error.as_ref().map(|(e, _)| e),
            "last_error_at": last_error.as_ref().map(|(_, at)| at),
            "last_success_at": *status.last_success.lock().unwrap(),
        })
    }

    /// Runs until `stop`: starts, restarts and stops workers as destinations change.
    pub async fn run(self, mut stop: watch::Receiver<bool>) {
        loop {
            if *stop.borrow() {
                break;
            }
            if let Err(error) = self.sync().await {
                tracing::error!(%error, "reading destinations failed; retrying");
            }
            tokio::select! {
                _ = self.0.changed.notified() => {}
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
                _ = stop.changed() => {}
            }
        }
        let running: Vec<Running> = self.0.workers.lock().unwrap().drain().map(|(_, r)| r).collect();
        for r in &running {
            let _ = r.stop.send(true);
        }
        for r in running {
            let _ = r.task.await;
        }
    }

    async fn sync(&self) -> Result<(), String> {
        self.refresh_lag().await;
        let stores = self.0.stores.clone();
        let destinations = tokio::task::spawn_blocking(move || stores.control().list_destinations(None))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        let mut wanted = HashMap::new();
        for d in destinations {
            // A destination is created first, its cursor placed next (see `start_cursor`):
            // one seen in between is left for the next pass. One whose creation was cut short
            // gets its cursor placed here.
            let kind = kind_of(&d);
            let cursor = self.0.stores.log().cursor(&cursor_of(d.id, kind)).await.map_err(|e| e.to_string())?;
            if cursor.is_none() {
                let created = DateTime::parse_from_rfc3339(&d.created_at).map(|t| t.with_timezone(&Utc)).unwrap_or_else(|_| Utc::now());
                if Utc::now() - created < chrono::Duration::seconds(30) {
                    continue;
                }
                let start = serde_json::from_str::<Value>(&d.spec).ok().and_then(|v| DestinationSpec::parse(&v).ok()).map_or(Start::Now, |s| s.start);
                self.start_cursor(d.id, kind, start).await?;
            }
            match serde_json::from_str::<Value>(&d.spec).map_err(|e| e.to_string()).and_then(|v| DestinationSpec::parse(&v).map_err(|e| e.to_string())) {
                Ok(spec) if spec.enabled => {
                    wanted.insert(d.id, (d, spec));
                }
                Ok(_) => {}
                Err(error) => tracing::error!(destination = d.id, %error, "stored destination is not valid; not started"),
            }
        }
        {
            let mut workers = self.0.workers.lock().unwrap();
            workers.retain(|id, running| {
                let keep = wanted.get(id).is_some_and(|(d, _)| d.spec == running.spec) && !running.task.is_finished();
                if !keep {
                    let _ = running.stop.send(true);
                }
                keep
            });
            for (id, (d, spec)) in wanted {
                if workers.contains_key(&id) {
                    continue;
                }
                match Worker::new(self.clone(), &d, spec) {
                    Ok((worker, chain)) => {
                        let (stop, stopped) = watch::channel(false);
                        let task = tokio::spawn(Arc::new(worker).run(chain, stopped));
                        workers.insert(id, Running { spec: d.spec.clone(), cursor: cursor_of(id, kind_of(&d)), stop, task });
                    }
                    Err(error) => {
                        self.status(id).failed(error.clone());
                        tracing::error!(destination = id, %error, "destination not started");
                    }
                }
            }
            // Workers told to stop leave at once (what they were sending is sent again by
            // their successor: at-least-once); nothing waits for them here.
        }
        Ok(())
    }
}

/// One logged event on its way: where it is in the log, the event as logged (kept for a dead
/// letter), and what is sent (after transformations).
struct Item {
    seq: i64,
    original: Arc<str>,
    event_id: Arc<str>,
    /// What is sent: `None` for the event as logged (a webhook without filter or
    /// transformations sends the logged JSON as it is, never parsed).
    send: Option<Value>,
}

/// A failure to deliver: the events and why.
struct Failure {
    reason: String,
    status: Option<u16>,
    response: Option<String>,
    /// What the receiver's `Retry-After` asked for.
    retry_after: Option<Duration>,
}

struct Worker {
    router: Router,
    id: i64,
    project_id: i64,
    labels: DestinationLabels,
    config: DestinationConfig,
    filter: Filter,
    status: Arc<Status>,
    /// Dead letters of the window being worked on.
    letters: Mutex<Vec<NewDeadLetter>>,
    /// Set when a window failed in a way that lost the worker's transformations.
    broken: std::sync::atomic::AtomicBool,
}

/// Most events a transformation may make of one (a fan-out past it dead-letters the event).
pub const MAX_FAN_OUT: usize = 100;

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

impl Worker {
    /// The worker, and its transformations (owned by its task, lent to a blocking thread for
    /// each window).
    fn new(router: Router, d: &StoredDestination, spec: DestinationSpec) -> Result<(Worker, Option<Transformations>), String> {
        let filter = Filter::compile(&spec.filter).map_err(|e| e.to_string())?;
        let transformations = Transformations::compile(&spec.transformations, router.0.config.js).map_err(|e| e.to_string())?;
        crate::outbound::check_url(spec.config.url(), router.0.config.allow_private_addresses)?;
        let worker = Worker {
            status: router.status(d.id),
            router,
            id: d.id,
            project_id: d.project_id,
            labels: DestinationLabels { destination: d.id.to_string() },
            config: spec.config,
            filter,
            letters: Mutex::new(Vec::new()),
            broken: std::sync::atomic::AtomicBool::new(false),
        };
        Ok((worker, (!transformations.is_empty()).then_some(transformations)))
    }

    async fn run(self: Arc<Self>, mut transformations: Option<Transformations>, mut stop: watch::Receiver<bool>) {
        let this = self;
        let cursor = cursor_of(this.id, this.config.kind());
        loop {
            if *stop.borrow() {
                return;
            }
            let appended = this.router.0.appended.clone();
            let notified = appended.notified();
            tokio::pin!(notified);
            // Registered now: an append while the window is worked on still wakes the wait.
            notified.as_mut().enable();
            let work = this.clone().step(&cursor, &mut transformations);
            let outcome = tokio::select! {
                outcome = work => outcome,
                _ = stop.changed() => return,
            };
            if this.broken.load(Ordering::Relaxed) {
                // Its transformations were lost with a failed window: the supervisor starts
                // the destination again from its spec.
                tracing::error!(destination = this.id, "destination worker stopped after a failure; it is started again");
                return;
            }
            match outcome {
                Ok(true) => continue,
                Ok(false) => {
                    tokio::select! {
                        // A moment more, so that appends arriving together are read together.
                        _ = &mut notified => tokio::time::sleep(Duration::from_millis(5)).await,
                        _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                        _ = stop.changed() => return,
                    }
                }
                Err(error) => {
                    tracing::error!(destination = this.id, %error, "destination worker failed; retrying");
                    this.status.failed(error);
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stop.changed() => return,
                    }
                }
            }
        }
    }

    /// One window: replays first, then the log after the cursor. `Ok(true)` when there may be
    /// more to do at once.
    async fn step(self: Arc<Self>, cursor: &str, transformations: &mut Option<Transformations>) -> Result<bool, String> {
        let stores = self.router.0.stores.clone();
        let id = self.id;
        let replays = tokio::task::spawn_blocking(move || stores.control().replay_requested(id, 1000))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        if !replays.is_empty() {
            self.replay(replays, transformations).await?;
            return Ok(true);
        }
        let log = self.router.0.stores.log();
        let window = self.router.0.config.window_events;
        let batch = match self.config.kind() {
            DestinationKind::Otlp => log.read_spans(cursor, window, self.project_id).await,
            _ => log.read(cursor, window, Selection::Project(self.project_id)).await,
        }
        .map_err(|e| e.to_string())?;
        let Some(position) = batch.position else { return Ok(false) };
        let full = batch.entries.len() >= self.router.0.config.window_events;
        let entries: Vec<(i64, String)> = batch.entries.into_iter().map(|e| (e.seq, e.body)).collect();
        self.clone().deliver_window(entries, transformations).await?;
        log.commit(cursor, position).await.map_err(|e| e.to_string())?;
        let lag = match self.config.kind() {
            DestinationKind::Otlp => log.spans_lag(cursor, self.project_id).await,
            _ => log.lag(cursor, self.project_id).await,
        };
        if let Ok((behind, _)) = lag {
            self.router.0.metrics.lag_events.get_or_create(&self.labels).set(behind);
        }
        Ok(full)
    }

    /// Delivers dead letters marked for replay with the current config: those delivered are
    /// discarded, the others dead-lettered again.
    async fn replay(self: &Arc<Self>, letters: Vec<DeadLetter>, transformations: &mut Option<Transformations>) -> Result<(), String> {
        let ids: Vec<i64> = letters.iter().map(|l| l.id).collect();
        let entries: Vec<(i64, String)> = letters.into_iter().map(|l| (l.letter.seq, l.letter.event)).collect();
        self.clone().deliver_window(entries, transformations).await?;
        // Letters that failed again were replaced (new ids); the old ids left are delivered.
        let stores = self.router.0.stores.clone();
        let id = self.id;
        tokio::task::spawn_blocking(move || stores.control().discard_dead_letters(id, Some(&ids)))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| e.to_string())?;
        Ok(())
    }

    /// Filter, transform, send in lanes; stores the window's dead letters. Returns once every
    /// event is confirmed or dead-lettered.
    async fn deliver_window(self: Arc<Self>, entries: Vec<(i64, String)>, transformations: &mut Option<Transformations>) -> Result<(), String> {
        let lanes_n = self.router.0.config.lanes.max(1);
        let first_attempt = Utc::now();
        // Parsing, the filter and the transformations are CPU work: off the async workers.
        let worker = self.clone();
        let chain = transformations.take();
        let (lanes, chain) = match tokio::task::spawn_blocking(move || worker.prepare(entries, chain, lanes_n, first_attempt)).await {
            Ok(prepared) => prepared,
            Err(error) => {
                self.broken.store(true, Ordering::Relaxed);
                return Err(format!("preparing a window failed: {error}"));
            }
        };
        *transformations = chain;
        let mut set = tokio::task::JoinSet::new();
        for lane in lanes.into_iter().filter(|l| !l.is_empty()) {
            let worker = self.clone();
            set.spawn(async move { worker.send_lane(lane, first_attempt).await });
        }
        while let Some(done) = set.join_next().await {
            done.map_err(|e| e.to_string())?;
        }
        let letters = std::mem::take(&mut *self.letters.lock().unwrap());
        if !letters.is_empty() {
            let n = letters.len() as u64;
            let stores = self.router.0.stores.clone();
            let id = self.id;
            tokio::task::spawn_blocking(move || stores.control().add_dead_letters(id, &letters))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| e.to_string())?;
            self.status.dead_lettered.fetch_add(n, Ordering::Relaxed);
            self.router.0.metrics.dead_lettered.get_or_create(&self.labels).inc_by(n);
        }
        Ok(())
    }

    fn prepare(
        &self,
        entries: Vec<(i64, String)>,
        mut chain: Option<Transformations>,
        lanes_n: usize,
        first_attempt: DateTime<Utc>,
    ) -> (Vec<Vec<Item>>, Option<Transformations>) {
        let mut lanes: Vec<Vec<Item>> = (0..lanes_n).map(|_| Vec::new()).collect();
        if chain.is_none() && self.filter.is_empty() && matches!(self.config, DestinationConfig::Webhook { .. }) {
            // As logged: only the id and distinct id are read (borrowed, nothing built).
            #[derive(serde::Deserialize)]
            struct Head<'a> {
                #[serde(borrow)]
                id: std::borrow::Cow<'a, str>,
                #[serde(borrow)]
                distinct_id: std::borrow::Cow<'a, str>,
            }
            for (seq, body) in entries {
                let (event_id, lane): (Arc<str>, usize) = match serde_json::from_str::<Head<'_>>(&body) {
                    Ok(head) => (Arc::from(head.id.as_ref()), lane_of_id(&head.distinct_id, lanes_n)),
                    Err(e) => {
                        self.dead_letter_now(seq, &body, "", format!("the logged event is not readable: {e}"), first_attempt);
                        continue;
                    }
                };
                lanes[lane].push(Item { seq, original: Arc::from(body), event_id, send: None });
            }
            return (lanes, chain);
        }
        // (position, the event as logged, its id, the event parsed)
        let mut kept: Vec<(i64, Arc<str>, Arc<str>, Value)> = Vec::with_capacity(entries.len());
        let mut filtered = 0u64;
        for (seq, body) in entries {
            let event: Value = match serde_json::from_str(&body) {
                Ok(v) => v,
                Err(e) => {
                    self.dead_letter_now(seq, &body, "", format!("the logged event is not readable: {e}"), first_attempt);
                    continue;
                }
            };
            if !self.filter.matches(&event) {
                filtered += 1;
                continue;
            }
            let original: Arc<str> = Arc::from(body);
            let event_id: Arc<str> = Arc::from(event.get("id").and_then(Value::as_str).unwrap_or_default());
            kept.push((seq, original, event_id, event));
        }
        let destination_id = self.id.to_string();
        let outcomes: Vec<Vec<Value>> = match chain.as_mut() {
            None => kept.iter_mut().map(|(_, _, _, e)| vec![std::mem::take(e)]).collect(),
            Some(chain) => {
                let events: Vec<Value> = kept.iter_mut().map(|(_, _, _, e)| std::mem::take(e)).collect();
                let results = chain.apply(events, &destination_id);
                results
                    .into_iter()
                    .zip(kept.iter())
                    .map(|(t, (seq, original, event_id, _))| match t.outcome {
                        Outcome::Events(events) if events.len() > MAX_FAN_OUT => {
                            let reason = format!("the transformation made {} events of one, over the limit of {MAX_FAN_OUT}", events.len());
                            self.dead_letter_now(*seq, original, event_id, reason, first_attempt);
                            Vec::new()
                        }
                        Outcome::Events(events) => events,
                        Outcome::Dropped => {
                            filtered += 1;
                            Vec::new()
                        }
                        Outcome::Failed(reason) => {
                            self.dead_letter_now(*seq, original, event_id, format!("transformation failed: {reason}"), first_attempt);
                            Vec::new()
                        }
                    })
                    .collect()
            }
        };
        for ((seq, original, event_id, _), events) in kept.into_iter().zip(outcomes) {
            for send in events {
                // Events by distinct id; spans (an otlp destination's) by trace.
                let key = send.get("distinct_id").or_else(|| send.get("trace_id")).and_then(Value::as_str).unwrap_or_default();
                let lane = lane_of_id(key, lanes_n);
                lanes[lane].push(Item { seq, original: original.clone(), event_id: event_id.clone(), send: Some(send) });
            }
        }
        if filtered > 0 {
            self.status.filtered.fetch_add(filtered, Ordering::Relaxed);
            self.router.0.metrics.filtered.get_or_create(&self.labels).inc_by(filtered);
        }
        (lanes, chain)
    }

    fn dead_letter_now(&self, seq: i64, original: &str, event_id: &str, reason: String, first_attempt: DateTime<Utc>) {
        let event_id = if event_id.is_empty() {
            serde_json::from_str::<Value>(original).ok().and_then(|v| v["id"].as_str().map(str::to_owned)).unwrap_or_default()
        } else {
            event_id.to_owned()
        };
        self.status.failed(reason.clone());
        self.letters.lock().unwrap().push(NewDeadLetter {
            seq,
            event_id,
            event: original.to_owned(),
            reason,
            attempts: 0,
            last_status: None,
            last_response: None,
            first_attempt_at: first_attempt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        });
    }

    /// A lane's events in order: chunks of the type's batch size, one request at a time.
    async fn send_lane(self: Arc<Self>, lane: Vec<Item>, first_attempt: DateTime<Utc>) {
        let chunk = match &self.config {
            DestinationConfig::Webhook { max_batch_events, .. } => *max_batch_events,
            DestinationConfig::Posthog { .. } => 5000,
            DestinationConfig::Rudderstack { .. } => 5000,
            DestinationConfig::Segment { .. } => 2500,
            DestinationConfig::Otlp { .. } => 5000,
        };
        let items: Vec<Arc<Item>> = lane.into_iter().map(Arc::new).collect();
        for part in items.chunks(chunk) {
            self.deliver(part.to_vec(), 1, first_attempt).await;
        }
    }

    /// Sends `items` (rendered as one attempt's requests, in order) until each is confirmed or
    /// dead-lettered.
    fn deliver(self: &Arc<Self>, items: Vec<Arc<Item>>, attempt: u32, first_attempt: DateTime<Utc>) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let now = Utc::now();
            let rendered = match (&self.config, items.iter().all(|i| i.send.is_none())) {
                (DestinationConfig::Webhook { url, secret, headers, max_batch_events }, true) => {
                    let raw: Vec<wire::RawEvent<'_>> = items.iter().map(|i| wire::RawEvent { id: &i.event_id, json: &i.original }).collect();
                    wire::render_webhook_raw(url, secret.as_deref(), headers, *max_batch_events, &raw, now)
                }
                _ => {
                    let values: Vec<std::borrow::Cow<'_, Value>> = items
                        .iter()
                        .map(|i| match &i.send {
                            Some(v) => std::borrow::Cow::Borrowed(v),
                            None => std::borrow::Cow::Owned(serde_json::from_str(&i.original).unwrap_or(Value::Null)),
                        })
                        .collect();
                    wire::render(&self.config, &values, now)
                }
            };
            for (index, reason) in rendered.refused {
                let item = &items[index];
                self.dead_letter_now(item.seq, &item.original, &item.event_id, format!("not sendable: {reason}"), first_attempt);
            }
            for request in rendered.requests {
                let part: Vec<Arc<Item>> = request.events.iter().map(|&i| items[i].clone()).collect();
                match self.send(request).await {
                    Ok(()) => {
                        let n = part.len() as u64;
                        self.status.delivered.fetch_add(n, Ordering::Relaxed);
                        self.status.succeeded();
                        self.router.0.metrics.delivered.get_or_create(&self.labels).inc_by(n);
                    }
                    Err((Verdict::Final, failure)) => {
                        // 401, 403, 404, 405 and 407 are about the request (a wrong key or
                        // URL), never its events: splitting would only multiply them.
                        let whole = matches!(failure.status, Some(401 | 403 | 404 | 405 | 407));
                        if part.len() == 1 || whole {
                            self.give_up(&part, attempt, failure, first_attempt);
                        } else {
                            // Split to find the events that cause it; the rest is delivered.
                            let right = part[part.len() / 2..].to_vec();
                            let left = part[..part.len() / 2].to_vec();
                            self.deliver(left, attempt, first_attempt).await;
                            self.deliver(right, attempt, first_attempt).await;
                        }
                    }
                    Err((_, failure)) => {
                        let policy = self.router.0.config.retry;
                        if policy.exhausted(attempt, first_attempt, Utc::now()) {
                            self.give_up(&part, attempt, failure, first_attempt);
                            continue;
                        }
                        let wait = policy.backoff(attempt, failure.retry_after);
                        self.status.failed(failure.reason.clone());
                        {
                            let _waiting = Retrying::new(self, part.len() as u64);
                            tokio::time::sleep(wait).await;
                        }
                        self.deliver(part, attempt + 1, first_attempt).await;
                    }
                }
            }
        })
    }

    fn give_up(&self, part: &[Arc<Item>], attempts: u32, failure: Failure, first_attempt: DateTime<Utc>) {
        self.status.failed(failure.reason.clone());
        let mut letters = self.letters.lock().unwrap();
        let mut seen = std::collections::HashSet::new();
        for item in part {
            if !seen.insert(item.seq) {
                continue;
            }
            letters.push(NewDeadLetter {
                seq: item.seq,
                event_id: item.event_id.to_string(),
                event: item.original.to_string(),
                reason: failure.reason.clone(),
                attempts,
                last_status: failure.status,
                last_response: failure.response.clone(),
                first_attempt_at: first_attempt.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            });
        }
    }

    /// One request: `Ok` when confirmed (2xx), else the verdict and what went wrong.
    async fn send(&self, request: wire::WireRequest) -> Result<(), (Verdict, Failure)> {
        if let Err(reason) = crate::outbound::check_url(&request.url, self.router.0.config.allow_private_addresses) {
            return Err((Verdict::Final, Failure { reason, status: None, response: None, retry_after: None }));
        }
        let events = request.events.len();
        let mut builder = self.router.0.client.post(request.url).body(request.body);
        for (name, value) in &request.headers {
            builder = builder.header(name, value);
        }
        let started = Instant::now();
        let result = builder.send().await;
        self.router.0.metrics.send_seconds.get_or_create(&self.labels).observe(started.elapsed().as_secs_f64());
        self.router.0.metrics.batch_events.get_or_create(&self.labels).observe(events as f64);
        let response = match result {
            Ok(response) => response,
            Err(error) => {
                let what = if error.is_timeout() { "timed out" } else if error.is_connect() { "could not connect" } else { "request failed" };
                let reason = format!("{what}: {}", error_chain(&error));
                return Err((Verdict::Retry, Failure { reason, status: None, response: None, retry_after: None }));
            }
        };
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, Utc::now()));
        let verdict = classify(status);
        let body = read_prefix(response, self.router.0.config.max_response_bytes).await;
        match verdict {
            Verdict::Delivered => Ok(()),
            verdict => {
                let mut reason = format!("HTTP {status}");
                if let Some(wait) = retry_after {
                    reason.push_str(&format!(" (Retry-After {}s)", wait.as_secs()));
                }
                Err((verdict, Failure { reason, status: Some(status), response: Some(body), retry_after }))
            }
        }
    }
}

/// Events counted as retrying while they wait, whether the wait ends or is dropped (a
/// stopped worker).
struct Retrying<'a> {
    worker: &'a Worker,
    events: u64,
}

impl<'a> Retrying<'a> {
    fn new(worker: &'a Worker, events: u64) -> Self {
        worker.status.retrying.fetch_add(events, Ordering::Relaxed);
        worker.router.0.metrics.retrying.get_or_create(&worker.labels).inc_by(events as i64);
        Retrying { worker, events }
    }
}

impl Drop for Retrying<'_> {
    fn drop(&mut self) {
        self.worker.status.retrying.fetch_sub(self.events, Ordering::Relaxed);
        self.worker.router.0.metrics.retrying.get_or_create(&self.worker.labels).dec_by(self.events as i64);
    }
}

/// Up to `limit` bytes of an answer (lossy UTF-8); the rest is read and dropped so the
/// connection can be reused.
async fn read_prefix(mut response: reqwest::Response, limit: usize) -> String {
    let mut kept = Vec::new();
    let mut total = 0usize;
    while let Ok(Some(chunk)) = response.chunk().await {
        total += chunk.len();
        if kept.len() < limit {
            let take = (limit - kept.len()).min(chunk.len());
            kept.extend_from_slice(&chunk[..take]);
        }
        if total > 1 << 20 {
            break;
        }
    }
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if total > kept.len() {
        text.push('…');
    }
    text
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The lane of an event: by its distinct id, so one id's events stay in order.
fn lane_of_id(key: &str, lanes: usize) -> usize {
    if lanes <= 1 {
        return 0;
    }
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    key.hash(&mut hasher);
    (hasher.finish() % lanes as u64) as usize
}

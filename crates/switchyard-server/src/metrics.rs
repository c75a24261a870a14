//! Every metric the server exports at `/metrics` (Prometheus text format), in one place.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
    pub status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProtocolLabels {
    pub protocol: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FlagLabels {
    pub flag: String,
    pub variant: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectionLabels {
    /// `answered_503` (past the cap, one request answered) or `closed` (closed at once).
    pub outcome: &'static str,
}

/// The connection metrics the accept loop updates.
#[derive(Clone)]
pub struct ConnectionMetrics {
    /// Connections open now.
    pub open: Gauge,
    /// Connections past `http.max_connections`, by what became of them.
    pub refused: Family<ConnectionLabels, Counter>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WarehouseLabels {
    /// `lake`, or `postgres:{id}`.
    pub warehouse: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TableLabels {
    /// `events`, `quarantine` or `spans`.
    pub table: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// LLM events given a cost at intake.
    pub llm_costed: Counter,
    /// LLM events whose model has no price (cost left unset).
    pub llm_unmatched: Counter,
    /// Spans stored from OTLP exports.
    pub otlp_spans: Counter,
    /// OTLP export requests refused (bad payload, unknown token, too large, busy).
    pub otlp_rejected: Counter,
    /// Delivery to destinations, per destination.
    pub router: switchyard_pipeline::RouterMetrics,
    /// Rows retention (`log.retention_days`) deleted from the event log, by table.
    pub log_retention_deleted: Family<TableLabels, Counter>,
    /// Person or group properties the person processor dropped: the person or group was at
    /// `limits.max_person_properties` or `limits.max_person_properties_bytes`.
    pub person_properties_dropped: Counter,
    /// Connections open, and those refused past the cap.
    pub connections: ConnectionMetrics,
    /// Requests answered 503 because `limits.max_in_flight_bytes` was reached.
    pub in_flight_refused: Counter,
    /// HTTP requests answered, by matched route and status.
    pub http_requests: Family<RouteLabels, Counter>,
    /// Events durably written to the event log, by protocol.
    pub events_logged: Family<ProtocolLabels, Counter>,
    /// Invalid events kept in the quarantine, by reason.
    pub events_quarantined: Family<ReasonLabels, Counter>,
    /// Events whose request was refused (nothing stored; the client was told why), by reason.
    pub events_rejected: Family<ReasonLabels, Counter>,
    /// Time from handing a request's events to the log until they were durable.
    pub append_latency: Histogram,
    /// Events (valid and quarantined) per append.
    pub append_batch_events: Histogram,
    /// Events (valid and quarantined) per committed log transaction: how many requests' events
    /// group commit puts behind one fsync. Its count is the number of commits.
    pub log_transaction_events: Histogram,
    /// Flag evaluations served, by flag and value (`true`, `false` or the variant).
    pub flag_evaluations: Family<FlagLabels, Counter>,
    /// Time to evaluate one request's flags.
    pub flag_evaluation_latency: Histogram,
    /// Age of the upstream flag snapshot being served (upstream mode), set at scrape time.
    pub flags_snapshot_age: Gauge,
    /// Whether the upstream snapshot is stale (1) or fresh (0).
    pub flags_snapshot_stale: Gauge,
    /// Failed polls of the upstream PostHog.
    pub flags_upstream_failures: Counter,
    /// Upstream flag snapshots refused (the last good one kept), by reason: `invalid_json`,
    /// `invalid_definition`, `dependency_cycle_flag`, `dependency_cycle_cohort`,
    /// `dependency_too_deep`.
    pub flags_upstream_rejected: Family<ReasonLabels, Counter>,
    /// SQL queries, by outcome (`ok`, `read_only`, `invalid`, `too_many_rows`, `timeout`,
    /// `memory`, `error`).
    pub warehouse_queries: Family<OutcomeLabels, Counter>,
    /// Per warehouse (set when `/metrics` is read): events loaded since start, events the
    /// loader is behind the log, the last successful load (Unix seconds), consecutive failures.
    pub warehouse_loaded_events: Family<WarehouseLabels, Gauge>,
    pub warehouse_lag_events: Family<WarehouseLabels, Gauge>,
    pub warehouse_last_load_seconds: Family<WarehouseLabels, Gauge>,
    pub warehouse_failures: Family<WarehouseLabels, Gauge>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let http_requests = Family::<RouteLabels, Counter>::default();
        registry.register("http_requests", "HTTP requests answered, by route and status", http_requests.clone());
        let events_logged = Family::<ProtocolLabels, Counter>::default();
        registry.register("events_logged", "Events durably written to the event log", events_logged.clone());
        let events_quarantined = Family::<ReasonLabels, Counter>::default();
        registry.register("events_quarantined", "Invalid events kept in the quarantine, by reason", events_quarantined.clone());
        let events_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register("events_rejected", "Events in refused requests, by reason", events_rejected.clone());
        let append_latency = Histogram::new(exponential_buckets(0.0005, 2.0, 14));
        registry.register("log_append_seconds", "Time until an append was durable", append_latency.clone());
        let append_batch_events = Histogram::new(exponential_buckets(1.0, 2.0, 14));
        registry.register("log_append_events", "Events per append", append_batch_events.clone());
        let log_transaction_events = Histogram::new(exponential_buckets(1.0, 2.0, 15));
        registry.register(
            "log_transaction_events",
            "Events per committed log transaction (group commit)",
            log_transaction_events.clone(),
        );
        let flag_evaluations = Family::<FlagLabels, Counter>::default();
        registry.register("flag_evaluations", "Flag evaluations served, by flag and value", flag_evaluations.clone());
        let flag_evaluation_latency = Histogram::new(exponential_buckets(0.000_001, 2.0, 16));
        registry.register("flag_evaluation_seconds", "Time to evaluate one request's flags", flag_evaluation_latency.clone());
        let flags_snapshot_age = Gauge::default();
        registry.register("flags_snapshot_age_seconds", "Age of the upstream flag snapshot being served", flags_snapshot_age.clone());
        let flags_snapshot_stale = Gauge::default();
        registry.register("flags_snapshot_stale", "Whether the upstream flag snapshot is stale", flags_snapshot_stale.clone());
        let flags_upstream_failures = Counter::default();
        registry.register("flags_upstream_failures", "Failed polls of the upstream PostHog", flags_upstream_failures.clone());
        let flags_upstream_rejected = Family::<ReasonLabels, Counter>::default();
        registry.register(
            "flags_upstream_rejected",
            "Upstream flag snapshots refused by validation (the last good one kept), by reason",
            flags_upstream_rejected.clone(),
        );
        let connections = ConnectionMetrics { open: Gauge::default(), refused: Family::default() };
        registry.register("http_connections_open", "HTTP connections open now", connections.open.clone());
        registry.register("http_connections_refused", "Connections past http.max_connections, by outcome", connections.refused.clone());
        let in_flight_refused = Counter::default();
        registry.register("in_flight_refused", "Requests answered 503 because limits.max_in_flight_bytes was reached", in_flight_refused.clone());
        let log_retention_deleted = Family::<TableLabels, Counter>::default();
        registry.register("log_retention_deleted", "Rows retention deleted from the event log, by table", log_retention_deleted.clone());
        let person_properties_dropped = Counter::default();
        registry.register(
            "person_properties_dropped",
            "Person or group properties dropped at limits.max_person_properties or limits.max_person_properties_bytes",
            person_properties_dropped.clone(),
        );
        let router = switchyard_pipeline::RouterMetrics::new();
        router.register(&mut registry);
        let llm_costed = Counter::default();
        registry.register("llm_events_costed", "LLM events given a cost at intake", llm_costed.clone());
        let llm_unmatched = Counter::default();
        registry.register("llm_model_unmatched", "LLM events whose model has no price in the table (cost left unset)", llm_unmatched.clone());
        let otlp_spans = Counter::default();
        registry.register("otlp_spans", "Spans stored from OTLP trace exports", otlp_spans.clone());
        let otlp_rejected = Counter::default();
        registry.register("otlp_requests_rejected", "OTLP trace export requests refused", otlp_rejected.clone());
        let warehouse_queries = Family::<OutcomeLabels, Counter>::default();
        registry.register("warehouse_queries", "SQL queries over the lake, by outcome", warehouse_queries.clone());
        let warehouse_loaded_events = Family::<WarehouseLabels, Gauge>::default();
        registry.register("warehouse_loaded_events", "Events a warehouse loader loaded since the server started", warehouse_loaded_events.clone());
        let warehouse_lag_events = Family::<WarehouseLabels, Gauge>::default();
        registry.register("warehouse_lag_events", "Log positions between a warehouse loader's cursor and the log's end", warehouse_lag_events.clone());
        let warehouse_last_load_seconds = Family::<WarehouseLabels, Gauge>::default();
        registry.register("warehouse_last_load_seconds", "When a warehouse loader last loaded (Unix seconds; 0: not yet)", warehouse_last_load_seconds.clone());
        let warehouse_failures = Family::<WarehouseLabels, Gauge>::default();
        registry.register("warehouse_failures", "A warehouse loader's consecutive failed loads", warehouse_failures.clone());
        Metrics {
            warehouse_queries,
            warehouse_loaded_events,
            warehouse_lag_events,
            warehouse_last_load_seconds,
            warehouse_failures,
            router,
            llm_costed,
            llm_unmatched,
            otlp_spans,
            otlp_rejected,
            log_retention_deleted,
            person_properties_dropped,
            connections,
            in_flight_refused,
            flags_snapshot_age,
            flags_snapshot_stale,
            flags_upstream_failures,
            flags_upstream_rejected,
            flag_evaluations,
            flag_evaluation_latency,
            registry,
            http_requests,
            events_logged,
            events_quarantined,
            events_rejected,
            append_latency,
            append_batch_events,
            log_transaction_events,
        }
    }
}

impl Metrics {
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("encoding to a String");
        out
    }
}

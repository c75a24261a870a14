//! HTTP intake: PostHog capture and RudderStack/Segment HTTP API.
//!
//! A handler authenticates, decodes, normalizes and validates, appends the request's events to
//! the log and answers only once the log says they are durable. Every event ends in exactly
//! one outcome: logged, quarantined (invalid event in a batch that also has valid ones), or
//! rejected with its request (the client is told why; nothing is stored).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, Path, State};
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde_json::{json, Value};
use switchyard_event::decode::{decode_posthog_body, decode_segment_body, BodyHints, CaptureQuery, DecodeLimits};
use switchyard_event::model::{format_time, RequestMeta};
use switchyard_event::{posthog, segment, Accepted, EventType, Normalized, Rejection};
use switchyard_store::{AppendBatch, EventLog, KeyKind, LogError, LogRecord, QuarantineRecord};

use crate::metrics::{ProtocolLabels, ReasonLabels};
use crate::config::IpNet;
use crate::AppState;

/// Which SDK family a request came from: decides the error format.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Family {
    Posthog,
    Segment,
}

impl Family {
    fn name(self) -> &'static str {
        match self {
            Family::Posthog => "posthog",
            Family::Segment => "segment",
        }
    }
}

/// An intake failure, answered in the form its SDK family expects.
pub struct IntakeError {
    family: Family,
    kind: IntakeErrorKind,
}

enum IntakeErrorKind {
    Rejected(Rejection),
    Unavailable(LogError),
    /// The in-flight budget is spent.
    Busy,
}

impl IntoResponse for IntakeError {
    fn into_response(self) -> Response {
        match self.kind {
            IntakeErrorKind::Rejected(r) => {
                let status = StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST);
                match self.family {
                    Family::Posthog => (
                        status,
                        axum::Json(json!({"type": "validation_error", "status": r.status, "code": r.code, "error": r.message, "detail": r.message})),
                    )
                        .into_response(),
                    Family::Segment => (status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], r.message).into_response(),
                }
            }
            kind @ (IntakeErrorKind::Unavailable(_) | IntakeErrorKind::Busy) => {
                // Never a 2xx: the SDK keeps the events and retries after Retry-After.
                let (retry_after, message) = match kind {
                    IntakeErrorKind::Unavailable(e) => (e.retry_after_secs().to_string(), e.to_string()),
                    _ => ("1".to_owned(), BUSY.to_owned()),
                };
                let mut response = match self.family {
                    Family::Posthog => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        axum::Json(json!({"type": "server_error", "status": 503, "code": "service_unavailable", "error": message, "detail": message})),
                    )
                        .into_response(),
                    Family::Segment => (StatusCode::SERVICE_UNAVAILABLE, message).into_response(),
                };
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, retry_after.parse().expect("digits are a valid header"));
                response
            }
        }
    }
}

fn reject(family: Family, r: Rejection) -> IntakeError {
    IntakeError { family, kind: IntakeErrorKind::Rejected(r) }
}

/// Request bytes held against the process-wide budget (`limits.max_in_flight_bytes`), given
/// back when dropped. A request holds its body, then its decoded form, until it is answered.
pub struct InFlight {
    budget: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl InFlight {
    pub fn new(state: &AppState) -> Self {
        InFlight { budget: state.in_flight.clone(), held: None }
    }

    /// Takes `bytes` more from the budget; false when it does not have them now.
    pub fn reserve(&mut self, bytes: usize) -> bool {
        let Ok(bytes) = u32::try_from(bytes) else { return false };
        match self.budget.clone().try_acquire_many_owned(bytes) {
            Ok(permit) => {
                match &mut self.held {
                    Some(held) => held.merge(permit),
                    None => self.held = Some(permit),
                }
                true
            }
            Err(_) => false,
        }
    }
}

/// The message of a request refused because the in-flight budget is spent.
pub const BUSY: &str = "the server is holding too many request bytes; retry later";

/// Reads a body of at most `limit` bytes, each chunk taken from the in-flight budget as it
/// arrives. Errors: `Err(Ok(rejection))` for the client's fault or transfer, `Err(Err(()))`
/// when the budget is spent.
pub async fn read_limited_body(
    body: Body,
    limit: usize,
    held: &mut InFlight,
    transfer_status: u16,
) -> Result<Bytes, Result<Rejection, ()>> {
    use http_body_util::BodyExt as _;
    let mut body = body;
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| {
            // Not the client's data at fault but its transfer (cut off, too slow, bad chunking):
            // an answer the SDKs retry, as PostHog's 408 and RudderStack's 500 are, not a 413.
            Ok(Rejection::new(transfer_status, "body_read_error", format!("the request body could not be read: {error}")))
        })?;
        let Ok(data) = frame.into_data() else { continue };
        total += data.len();
        if total > limit {
            return Err(Ok(Rejection::new(413, "request_too_large", format!("request size exceeds max limit of {limit} bytes"))));
        }
        if !held.reserve(data.len()) {
            return Err(Err(()));
        }
        chunks.push(data);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.pop().expect("one chunk"),
        _ => {
            let mut joined = Vec::with_capacity(total);
            for chunk in &chunks {
                joined.extend_from_slice(chunk);
            }
            Bytes::from(joined)
        }
    })
}

async fn read_body(state: &AppState, family: Family, body: Body, held: &mut InFlight) -> Result<Bytes, IntakeError> {
    let transfer_status = match family {
        Family::Posthog => 408,
        Family::Segment => 500,
    };
    read_limited_body(body, state.config.limits.max_request_bytes, held, transfer_status).await.map_err(|error| match error {
        Ok(rejection) => {
            state.metrics.events_rejected.get_or_create(&ReasonLabels { reason: rejection.code }).inc();
            reject(family, rejection)
        }
        Err(()) => busy(state, family),
    })
}

/// 503 + Retry-After: the in-flight budget is spent.
fn busy(state: &AppState, family: Family) -> IntakeError {
    state.metrics.in_flight_refused.inc();
    IntakeError { family, kind: IntakeErrorKind::Busy }
}

/// Whether a capture request may be lz-string (`compression=lz64` in its query or form body).
fn mentions_lz_string(query: Option<&str>, body: &[u8]) -> bool {
    query.is_some_and(|q| q.contains("compression=lz")) || memchr::memmem::find(body, b"compression=lz").is_some()
}

/// What parsing a decoded body may cost in memory, estimated from its bytes before parsing.
/// PostHog events are kept as text borrowed from the body (about three times its size with the
/// stored JSON), but a top-level value still costs a `Value` per element; Segment events are
/// parsed into values, where every object is a B-tree node of ~640 bytes however small it is
/// (`[{"a":0},…]` is 7 bytes an object) and every element a 32-byte `Value`. Braces and commas
/// inside strings are counted too: an overestimate, never an under.
fn parse_cost(family: Family, decoded: &[u8]) -> usize {
    let commas = memchr::memchr_iter(b',', decoded).count();
    match family {
        Family::Posthog => decoded.len().saturating_mul(3).saturating_add(commas.saturating_mul(16)),
        Family::Segment => {
            let objects = memchr::memchr_iter(b'{', decoded).count();
            decoded.len().saturating_mul(2).saturating_add(objects.saturating_mul(640)).saturating_add(commas.saturating_mul(32))
        }
    }
}

/// Holds a decoded body against the budget, at what parsing it may cost ([`parse_cost`]):
/// 413 when that is more than the whole budget (it could never be served), 503 when the
/// budget does not have it now.
fn hold_decoded(state: &AppState, family: Family, held: &mut InFlight, decoded: &[u8]) -> Result<(), IntakeError> {
    let cost = parse_cost(family, decoded);
    if cost > state.config.limits.max_in_flight_bytes {
        let message = format!(
            "the request's {} bytes would take about {cost} bytes to parse, more than limits.max_in_flight_bytes ({}); send fewer or smaller events per request",
            decoded.len(),
            state.config.limits.max_in_flight_bytes
        );
        state.metrics.events_rejected.get_or_create(&ReasonLabels { reason: "too_costly_to_parse" }).inc();
        return Err(reject(family, Rejection::new(413, "too_costly_to_parse", message)));
    }
    if held.reserve(cost) {
        Ok(())
    } else {
        Err(busy(state, family))
    }
}

fn header_str(headers: &HeaderMap, name: header::HeaderName) -> Option<&str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// The connection's peer, when the server was started with it (`serve` does).
pub(crate) type Peer = Option<axum::Extension<ConnectInfo<SocketAddr>>>;

pub(crate) fn request_meta(project_id: i64, headers: &HeaderMap, peer: Peer, trusted_proxies: &[IpNet]) -> RequestMeta {
    RequestMeta {
        project_id,
        received_at: chrono::Utc::now(),
        traceparent: headers.get("traceparent").and_then(|v| v.to_str().ok()).map(str::to_owned),
        ip: client_ip(headers, peer, trusted_proxies),
    }
}

/// The client's address: the connection's peer, unless the peer is a trusted proxy; then
/// `X-Forwarded-For` is walked from the right (each proxy appends the address it got the
/// request from), skipping trusted proxies, and the first other address is the client's. A
/// client can write anything into the header, so only hops added by trusted proxies count:
/// an unparsable hop ends the walk at the last proxy that handed it on; a chain of trusted
/// proxies only gives its leftmost one.
fn client_ip(headers: &HeaderMap, peer: Peer, trusted_proxies: &[IpNet]) -> Option<String> {
    let trusted = |ip: IpAddr| trusted_proxies.iter().any(|net| net.contains(ip));
    let peer = peer.map(|axum::Extension(ConnectInfo(addr))| addr.ip().to_canonical())?;
    if !trusted(peer) {
        return Some(peer.to_string());
    }
    let mut client = peer;
    let hops = headers.get_all(header::HeaderName::from_static("x-forwarded-for")).iter().collect::<Vec<_>>();
    for hop in hops.iter().rev().flat_map(|v| v.to_str().unwrap_or("").rsplit(',')) {
        let Some(ip) = forwarded_ip(hop.trim()) else { break };
        client = ip;
        if !trusted(ip) {
            break;
        }
    }
    Some(client.to_string())
}

/// One `X-Forwarded-For` hop: an address, with a port as some proxies add it (`192.0.2.1:4711`,
/// `[2001:db8::1]:4711`).
fn forwarded_ip(hop: &str) -> Option<IpAddr> {
    hop.parse::<IpAddr>()
        .or_else(|_| hop.parse::<SocketAddr>().map(|a| a.ip()))
        .ok()
        .map(|ip| ip.to_canonical())
}

fn decode_limits(state: &AppState) -> DecodeLimits {
    DecodeLimits { max_decompressed_bytes: state.config.limits.max_decompressed_bytes }
}

/// Turns normalized events into what is appended, or the request's rejection.
fn outcome(
    state: &AppState,
    family: Family,
    normalized: Normalized,
    meta: &RequestMeta,
) -> Result<AppendBatch, IntakeError> {
    if normalized.accepted.is_empty() {
        let first = normalized.invalid.into_iter().next().map(|i| i.rejection).unwrap_or_else(Rejection::empty_batch);
        state.metrics.events_rejected.get_or_create(&ReasonLabels { reason: first.code }).inc();
        return Err(reject(family, first));
    }
    let (events, quarantined) = records(state, family.name(), normalized, meta);
    Ok(AppendBatch { spans: vec![], events, quarantined })
}

/// Normalized events as log records (LLM events enriched: `crate::llm::enrich`) and their
/// invalid ones as quarantine records.
pub(crate) fn records(state: &AppState, protocol: &'static str, normalized: Normalized, meta: &RequestMeta) -> (Vec<LogRecord>, Vec<QuarantineRecord>) {
    let received_at = format_time(meta.received_at);
    let quarantined = normalized
        .invalid
        .into_iter()
        .map(|invalid| QuarantineRecord {
            project_id: meta.project_id,
            protocol,
            received_at: received_at.clone(),
            code: invalid.rejection.code.to_owned(),
            reason: format!("event {}: {}", invalid.index, invalid.rejection.message),
            raw: invalid.raw,
        })
        .collect();
    let events = normalized
        .accepted
        .into_iter()
        .map(|mut event| {
            crate::llm::enrich(state, &mut event);
            let person_update = changes_persons(state, &event);
            LogRecord::from_accepted(event, person_update)
        })
        .collect();
    (events, quarantined)
}

/// Whether the person processor needs the event: it changes person or group properties,
/// merges ids, or names a group type not registered yet.
fn changes_persons(state: &AppState, event: &Accepted) -> bool {
    event.updates_persons
        || event.group_types.iter().any(|group_type| !state.control.knows_group_type(event.project_id, group_type))
}

async fn append(state: &AppState, family: Family, batch: AppendBatch) -> Result<(), IntakeError> {
    let events = batch.events.len() as u64;
    let quarantine_codes: Vec<String> = batch.quarantined.iter().map(|q| q.code.clone()).collect();
    state.metrics.append_batch_events.observe(batch.len() as f64);
    let started = Instant::now();
    let result = state.log.append(batch).await;
    state.metrics.append_latency.observe(started.elapsed().as_secs_f64());
    match result {
        Ok(_) => {
            state.appended.notify_waiters();
            state.metrics.events_logged.get_or_create(&ProtocolLabels { protocol: family.name() }).inc_by(events);
            for code in quarantine_codes {
                state.metrics.events_quarantined.get_or_create(&ReasonLabels { reason: static_reason(&code) }).inc();
            }
            Ok(())
        }
        Err(error) => {
            tracing::warn!(%error, "append refused");
            let reason = match error {
                LogError::Overloaded => "log_overloaded",
                LogError::Full => "log_full",
                LogError::Closed => "log_closed",
                LogError::Storage(_) => "log_error",
            };
            state.metrics.events_rejected.get_or_create(&ReasonLabels { reason }).inc_by(events);
            Err(IntakeError { family, kind: IntakeErrorKind::Unavailable(error) })
        }
    }
}

/// Metric labels must be `'static`; reason codes come from a fixed set.
fn static_reason(code: &str) -> &'static str {
    const CODES: &[&str] = &[
        "missing_distinct_id",
        "missing_event_name",
        "event_too_large",
        "event_name_too_long",
        "too_many_properties",
        "too_deep",
        "invalid_uuid",
        "invalid_timestamp",
        "invalid_cookieless_mode",
        "request_hydration_error",
        "request_parsing_error",
        "invalid_event",
        "invalid_type",
        "invalid_field",
    ];
    CODES.iter().find(|c| **c == code).copied().unwrap_or("other")
}

// ---------------------------------------------------------------------------------------------
// PostHog

fn posthog_success(beacon: bool) -> Response {
    if beacon {
        StatusCode::NO_CONTENT.into_response()
    } else {
        ([(header::CONTENT_TYPE, "application/json")], r#"{"status":"Ok"}"#).into_response()
    }
}

/// `/e`, `/i/v0/e`, `/capture`, `/track`, `/engage`, `/batch` (GET with `data=`, POST).
pub async fn posthog_capture(
    State(state): State<AppState>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IntakeError> {
    let family = Family::Posthog;
    let mut held = InFlight::new(&state);
    let body = read_body(&state, family, body, &mut held).await?;
    let path = uri.path().trim_end_matches('/');
    let legacy = matches!(path, "/e" | "/capture" | "/engage" | "/track");
    let engage = path == "/engage";
    let query = CaptureQuery::parse(uri.query());
    let hints = BodyHints {
        query: uri.query(),
        content_type: header_str(&headers, header::CONTENT_TYPE),
        content_encoding: header_str(&headers, header::CONTENT_ENCODING),
        legacy_path: legacy,
    };
    let rejected = |r: Rejection| {
        state.metrics.events_rejected.get_or_create(&ReasonLabels { reason: r.code }).inc();
        reject(family, r)
    };
    // lz-string decodes into UTF-16 before UTF-8: up to three times the decompressed limit for
    // a moment. One at a time (posthog-js has sent gzip since 2023; lz64 is its old format).
    let _lz_turn = if mentions_lz_string(uri.query(), &body) { Some(state.lz_decodes.acquire().await) } else { None };
    let json = decode_posthog_body(&body, &hints, decode_limits(&state)).map_err(rejected)?;
    drop(_lz_turn);
    hold_decoded(&state, family, &mut held, &json)?;
    let request = posthog::parse_capture_request(&json, query.sent_at_ms, &state.event_limits()).map_err(rejected)?;
    let project_id = state.control.lookup(KeyKind::ProjectToken, &request.token).ok_or_else(|| {
        state.metrics.events_rejected.get_or_create(&ReasonLabels { reason: "ingest_key_unknown" }).inc_by(request.events.len() as u64);
        reject(family, Rejection::new(401, "ingest_key_unknown", "api_key does not resolve to a known project"))
    })?;
    let meta = request_meta(project_id, &headers, peer, &state.config.trusted_proxies);
    let limits = state.event_limits();
    let ctx = posthog::PosthogContext {
        meta: &meta,
        sent_at: request.sent_at,
        historical_migration: request.historical_migration,
        engage,
        limits: &limits,
    };
    let normalized = posthog::normalize(request.events, &ctx);
    let batch = outcome(&state, family, normalized, &meta)?;
    append(&state, family, batch).await?;
    Ok(posthog_success(query.beacon))
}

/// `GET /array/{token}/config`: the remote config posthog-js fetches at start.
pub async fn posthog_remote_config(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    if state.control.lookup(KeyKind::ProjectToken, &token).is_none() {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"type": "authentication_error", "code": "invalid_api_key", "detail": "Project API key invalid."})),
        )
            .into_response();
    }
    axum::Json(remote_config_value(&token, project_has_flags(&state, &token))).into_response()
}

/// `GET /array/{token}/config.js`: the same config as a script, as posthog-js loads it.
pub async fn posthog_remote_config_js(
    State(state): State<AppState>,
    Path(token): Path<String>,
) -> Response {
    if state.control.lookup(KeyKind::ProjectToken, &token).is_none() {
        return (StatusCode::NOT_FOUND, "// unknown project token").into_response();
    }
    let config = json!({"config": remote_config_value(&token, project_has_flags(&state, &token)), "siteApps": []});
    let script = format!(
        "(function() {{ window._POSTHOG_REMOTE_CONFIG = window._POSTHOG_REMOTE_CONFIG || {{}}; \
         window._POSTHOG_REMOTE_CONFIG[{token}] = {config}; }})();",
        token = Value::String(token.clone()),
    );
    ([(header::CONTENT_TYPE, "application/javascript")], script).into_response()
}

/// Whether the token's project has flags (posthog-js asks `/flags` at start only if so).
fn project_has_flags(state: &AppState, token: &str) -> bool {
    state
        .control
        .lookup(KeyKind::ProjectToken, token)
        .and_then(|project_id| state.flags.get(&state.control, project_id).ok())
        .is_some_and(|flags| !flags.set.is_empty())
}

pub fn remote_config_value(token: &str, has_flags: bool) -> Value {
    json!({
        "token": token,
        "supportedCompression": ["gzip", "gzip-js"],
        "hasFeatureFlags": has_flags,
        "captureDeadClicks": false,
        "capturePerformance": false,
        "autocapture_opt_out": false,
        "autocaptureExceptions": false,
        "analytics": {"endpoint": "/i/v0/e/"},
        "elementsChainAsString": true,
        "sessionRecording": false,
        "heatmaps": false,
        "surveys": false,
        "defaultIdentifiedOnly": true,
        "siteApps": [],
    })
}

// ---------------------------------------------------------------------------------------------
// RudderStack / Segment

fn basic_auth_user(headers: &HeaderMap) -> Option<String> {
    let value = header_str(headers, header::AUTHORIZATION)?;
    let (scheme, encoded) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let user = text.split_once(':').map(|(u, _)| u).unwrap_or(&text);
    (!user.is_empty()).then(|| user.to_owned())
}

fn query_write_key(uri: &Uri) -> Option<String> {
    let query = axum::extract::Query::<std::collections::HashMap<String, String>>::try_from_uri(uri).ok()?;
    query.0.get("writeKey").filter(|k| !k.is_empty()).cloned()
}

/// `/v1/{track,identify,group,page,screen,alias,batch,import}` and `/beacon/v1/batch`.
pub async fn segment_intake(
    State(state): State<AppState>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, IntakeError> {
    let route_type = segment_route(&uri)?;
    let header_key = segment_request_key(&state, &headers, &uri)?;
    let mut held = InFlight::new(&state);
    let body = read_body(&state, Family::Segment, body, &mut held).await?;
    let json = decode_segment_body(&body, header_str(&headers, header::CONTENT_ENCODING), decode_limits(&state))
        .map_err(|r| segment_rejected(&state, r))?;
    hold_decoded(&state, Family::Segment, &mut held, &json)?;
    store_segment(&state, peer, &headers, header_key, &json, route_type).await?;
    Ok((StatusCode::OK, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "OK").into_response())
}

/// RudderStack's pixel API, `GET /pixel/v1/{track,page}` (AMP pages, e-mails: wherever only an
/// image can be loaded): the event is the query, each dotted name a path into it
/// (`context.page.url=…`, `properties.plan=…`), `writeKey` the key. Answered with a 1×1 GIF once
/// the event is durable; a failure gets its usual status and message.
pub async fn segment_pixel(
    State(state): State<AppState>,
    peer: Peer,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, IntakeError> {
    let route_type = segment_route(&uri)?;
    let header_key = segment_request_key(&state, &headers, &uri)?;
    let mut event = serde_json::Map::new();
    let max_depth = state.config.limits.max_depth;
    for (name, value) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        if name == "writeKey" {
            continue;
        }
        // Each dot is a level of nesting, made (and later serialized) recursively.
        if name.split('.').count() > max_depth {
            let message = format!("parameter {:?} nests deeper than {max_depth} levels", truncated(&name, 64));
            return Err(segment_rejected(&state, Rejection::new(400, "too_deep", message)));
        }
        set_path(&mut event, &name, Value::String(value.into_owned()));
    }
    let json = serde_json::to_vec(&Value::Object(event)).expect("JSON serializes");
    store_segment(&state, peer, &headers, header_key, &json, route_type).await?;
    let headers = [(header::CONTENT_TYPE, "image/gif"), (header::CACHE_CONTROL, "no-cache, no-store, must-revalidate")];
    Ok((StatusCode::OK, headers, PIXEL_GIF).into_response())
}

/// A transparent 1×1 GIF.
const PIXEL_GIF: &[u8] = b"GIF89a\x01\x00\x01\x00\x80\x00\x00\x00\x00\x00\xff\xff\xff!\xf9\x04\x01\x00\x00\x00\x00,\x00\x00\x00\x00\x01\x00\x01\x00\x00\x02\x01D\x00;";

/// At most `max` characters of `s`, for naming bad input in a message.
fn truncated(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_owned(),
    }
}

/// Sets `a.b.c` in `object` to `value`, making the objects on the way (a value in the way is
/// replaced: the last parameter wins, as with repeated names).
fn set_path(object: &mut serde_json::Map<String, Value>, path: &str, value: Value) {
    match path.split_once('.') {
        None => {
            object.insert(path.to_owned(), value);
        }
        Some((head, rest)) => {
            let child = object.entry(head.to_owned()).or_insert_with(|| Value::Object(Default::default()));
            if !child.is_object() {
                *child = Value::Object(Default::default());
            }
            if let Value::Object(child) = child {
                set_path(child, rest, value);
            }
        }
    }
}

/// The call type a Segment route names (`None` for a batch).
fn segment_route(uri: &Uri) -> Result<Option<EventType>, IntakeError> {
    let route = uri.path().trim_end_matches('/').rsplit('/').next().unwrap_or("");
    match route {
        "batch" | "import" => Ok(None),
        other => EventType::parse(other).map(Some).ok_or_else(|| {
            reject(Family::Segment, Rejection::new(404, "unknown_route", format!("unknown call type {other:?}")))
        }),
    }
}

/// The write key from Basic auth or `?writeKey=`, refused before the body is read if unknown.
fn segment_request_key(state: &AppState, headers: &HeaderMap, uri: &Uri) -> Result<Option<String>, IntakeError> {
    let key = basic_auth_user(headers).or_else(|| query_write_key(uri));
    if let Some(key) = &key {
        if state.control.lookup(KeyKind::WriteKey, key).is_none() {
            return Err(segment_rejected(state, Rejection::new(401, "invalid_write_key", "invalid write key")));
        }
    }
    Ok(key)
}

fn segment_rejected(state: &AppState, r: Rejection) -> IntakeError {
    state.metrics.events_rejected.get_or_create(&ReasonLabels { reason: r.code }).inc();
    reject(Family::Segment, r)
}

/// Normalizes a Segment request's events (the body's `writeKey` if no other key came) and
/// appends them; returns once they are durable.
async fn store_segment(
    state: &AppState,
    peer: Peer,
    headers: &HeaderMap,
    header_key: Option<String>,
    json: &[u8],
    route_type: Option<EventType>,
) -> Result<(), IntakeError> {
    let family = Family::Segment;
    let request = segment::parse_segment_request(json, route_type, &state.event_limits()).map_err(|r| segment_rejected(state, r))?;
    let key = header_key.or(request.body_write_key.clone()).ok_or_else(|| {
        segment_rejected(state, Rejection::new(401, "missing_write_key", "failed to read writekey from header"))
    })?;
    let project_id = state
        .control
        .lookup(KeyKind::WriteKey, &key)
        .ok_or_else(|| segment_rejected(state, Rejection::new(401, "invalid_write_key", "invalid write key")))?;
    let meta = request_meta(project_id, headers, peer, &state.config.trusted_proxies);
    let limits = state.event_limits();
    let ctx = segment::SegmentContext { meta: &meta, batch_sent_at: request.sent_at.as_deref(), limits: &limits };
    let normalized = segment::normalize(request.events, &ctx);
    let batch = outcome(state, family, normalized, &meta)?;
    append(state, family, batch).await
}

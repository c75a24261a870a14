//! Wire formats of the destination types: what one attempt POSTs for a batch of events.
//!
//! - `webhook`: a JSON array of the events as the events API serves them, signed per Standard
//!   Webhooks when a secret is set (`webhook-id` derived from the events' ids, so it is the same
//!   for every retry of the same events).
//! - `posthog`: `/batch/` as PostHog's own exporter sends it (`uuid` and `timestamp` kept, no
//!   `sent_at`, `$ip`, Segment calls mapped back to `$identify`, `$groupidentify`, …).
//! - `rudderstack`, `segment`: `/v1/batch` of Segment-spec messages ([`to_message`]).
//!
//! The mappings are the inverses of the intake's (`switchyard_event::posthog`, `::segment`): a
//! second Switchyard taking these requests in stores the events equal to the originals, but for
//! what the receiver sets itself and the few fields a format has no place for (see the tests,
//! `posthog_round_trip` and `segment_round_trip`, which list them). What one format has no field
//! for is sent as top-level members the other's intake reads (Segment's `user_id`,
//! `anonymous_id`, `context`, `name`, `category` to PostHog, which ignores them; PostHog's
//! `$set_once`, `$groups`, `$group_type` and `$distinct_id` to Segment/RudderStack).
//!
//! Trace ids the intake took from a request's `traceparent` header (not from the event's body)
//! are sent the same way: consecutive events needing the same header share a request.

use std::borrow::Cow;

use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};
use switchyard_event::model::{extract_trace, format_time, parse_time, parse_traceparent};

use crate::DestinationConfig;

/// PostHog's exporter flushes at 5,000 events; capture takes 20 MB per request.
pub const POSTHOG_MAX_EVENTS: usize = 5_000;
pub const POSTHOG_MAX_BYTES: usize = 10_000_000;
/// PostHog documents 1 MB per event.
pub const POSTHOG_MAX_EVENT_BYTES: usize = 1_000_000;
/// PostHog's (and the intake's) longest event name, in characters.
pub const POSTHOG_MAX_EVENT_NAME_CHARS: usize = 200;
/// Segment's tracking API: 32 KB per call, 500 KB per batch, 2,500 events per batch.
pub const SEGMENT_MAX_EVENTS: usize = 2_500;
pub const SEGMENT_MAX_BYTES: usize = 500 * 1000;
pub const SEGMENT_MAX_EVENT_BYTES: usize = 32 * 1000;
/// RudderStack's gateway: `Gateway.maxReqSizeInKB` 4,000 per request.
pub const RUDDERSTACK_MAX_BYTES: usize = 4000 * 1000;
pub const RUDDERSTACK_MAX_EVENTS: usize = 5_000;
/// A webhook request's largest body (receivers' own limits are unknown; this keeps requests sane).
pub const WEBHOOK_MAX_BYTES: usize = 10 * 1000 * 1000;

/// One HTTP request of an attempt: where it goes, what it carries, and which of the batch's
/// events (indices into the slice given to [`render`]) it holds.
#[derive(Debug, Clone)]
pub struct WireRequest {
    pub url: reqwest::Url,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub events: Vec<usize>,
}

/// An attempt's requests, and the events that cannot be sent at all (too large, or refused
/// by the receiver's own rules, checked first) with the reason: those are dead-lettered.
#[derive(Debug, Clone, Default)]
pub struct Rendered {
    pub requests: Vec<WireRequest>,
    pub refused: Vec<(usize, String)>,
}

/// Renders `events` (the unified event's JSON, the events API's shape) for `config`, for an
/// attempt made at `now` (Segment's and RudderStack's `sentAt`, the webhook timestamp and
/// signature). Called again for each attempt and for each half of a split batch.
pub fn render<V: std::borrow::Borrow<Value>>(config: &DestinationConfig, events: &[V], now: DateTime<Utc>) -> Rendered {
    match config {
        DestinationConfig::Webhook {
            url,
            secret,
            headers,
            max_batch_events,
        } => render_webhook(
            url,
            secret.as_deref(),
            headers,
            *max_batch_events,
            events,
            now,
        ),
        DestinationConfig::Posthog {
            host,
            project_token,
        } => render_posthog(host, project_token, events),
        DestinationConfig::Rudderstack { url, write_key } => render_segment(
            url,
            write_key,
            events,
            now,
            RUDDERSTACK_MAX_EVENTS,
            RUDDERSTACK_MAX_BYTES,
            None,
        ),
        DestinationConfig::Segment { url, write_key } => render_segment(
            url,
            write_key,
            events,
            now,
            SEGMENT_MAX_EVENTS,
            SEGMENT_MAX_BYTES,
            Some(SEGMENT_MAX_EVENT_BYTES),
        ),
        DestinationConfig::Otlp { endpoint, headers } => render_otlp(endpoint, headers, events),
    }
}

/// Spans per OTLP export (the OTel SDK's batch processor sends at most 512).
pub const OTLP_MAX_SPANS: usize = 512;

/// OTLP/HTTP protobuf exports of stored spans (`Span::to_json`'s shape), `OTLP_MAX_SPANS` each.
fn render_otlp<V: std::borrow::Borrow<Value>>(endpoint: &reqwest::Url, headers: &std::collections::BTreeMap<String, String>, events: &[V]) -> Rendered {
    let mut out = Rendered::default();
    let mut spans = Vec::with_capacity(events.len());
    let mut indices = Vec::with_capacity(events.len());
    for (index, value) in events.iter().enumerate() {
        match switchyard_llm::otlp::Span::from_json(value.borrow()) {
            Some(span) => {
                spans.push(span);
                indices.push(index);
            }
            None => out.refused.push((index, "not a span (a stored span's JSON was expected)".into())),
        }
    }
    for (part, part_indices) in spans.chunks(OTLP_MAX_SPANS).zip(indices.chunks(OTLP_MAX_SPANS)) {
        let mut request_headers = vec![("content-type".to_owned(), "application/x-protobuf".to_owned())];
        request_headers.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        out.requests.push(WireRequest {
            url: endpoint.clone(),
            headers: request_headers,
            body: switchyard_llm::otlp::encode(part),
            events: part_indices.to_vec(),
        });
    }
    out
}

/// The unified event as a RudderStack/Segment message (what user transformations see).
/// `sentAt` is the event's own; members the event lacks are left out.
pub fn to_message(event: &Value) -> Value {
    match View::new(event) {
        Ok(view) => {
            let sent_at = view.str("sent_at");
            serde_json::to_value(Message {
                e: &view,
                sent_at,
                mark_distinct_id: false,
            })
            .expect("messages serialize")
        }
        // Not a unified event: shown as it is.
        Err(_) => event.clone(),
    }
}

/// A message a transformation returned, back to the unified event; `original` is the event
/// it came from (what the message no longer says is taken from it: project, receipt).
pub fn from_message(message: Value, original: &Value) -> Result<Value, String> {
    use switchyard_event::segment::{normalize_event, SegmentContext};
    let orig = View::new(original)?;
    let received_at = orig
        .str("received_at")
        .and_then(parse_time)
        .unwrap_or_else(Utc::now);
    let meta = switchyard_event::RequestMeta {
        project_id: original
            .get("project_id")
            .and_then(Value::as_i64)
            .unwrap_or_default(),
        received_at,
        traceparent: None,
        ip: orig.str("request_ip").map(str::to_owned),
    };
    let limits = switchyard_event::EventLimits::default();
    let ctx = SegmentContext {
        meta: &meta,
        batch_sent_at: None,
        limits: &limits,
    };
    let had_original_timestamp = message
        .get("originalTimestamp")
        .is_some_and(Value::is_string);
    let mut event = normalize_event(message, &ctx).map_err(|(rejection, _)| rejection.message)?;
    // What the intake stamps: kept from the original.
    event.received_at = orig
        .str("received_at")
        .map_or(event.received_at, str::to_owned);
    if let Some(protocol) = original
        .get("protocol")
        .and_then(|p| serde_json::from_value(p.clone()).ok())
    {
        event.protocol = protocol;
    }
    // `extra` members named as the message's own fields, which a message cannot carry.
    for (k, v) in orig.extra() {
        if MESSAGE_TOP.contains(&k.as_str()) {
            event.extra.insert(k.clone(), v.clone());
        }
    }
    // A PostHog event has no user id: [`Message`] shows its distinct id as `userId` (unmarked:
    // transformations see a plain message).
    if orig.str("user_id").is_none() && event.user_id.as_deref() == Some(orig.distinct_id) {
        event.user_id = None;
    }
    // PostHog names the intake does not produce from a type (`$set`, `$merge_dangerously`).
    if event.kind != switchyard_event::EventType::Track && event.kind.as_str() == orig.kind {
        event.event = orig.event.to_owned();
    }
    // Without `originalTimestamp` the intake reads `timestamp` as the original one.
    if !had_original_timestamp
        && orig.str("original_timestamp").is_none()
        && event.timestamp == orig.timestamp
    {
        event.original_timestamp = None;
    }
    // A trace id the original took from its request's header.
    if event.trace_id.is_none() {
        event.trace_id = orig.str("trace_id").map(str::to_owned);
        event.span_id = event
            .span_id
            .or_else(|| orig.str("span_id").map(str::to_owned));
    }
    serde_json::to_value(event).map_err(|e| e.to_string())
}

// ---------------------------------------------------------------------------------------------
// Batching

/// One rendered event: its bytes in the shared buffer, and the `traceparent` header it needs.
struct Item {
    index: usize,
    start: usize,
    end: usize,
    traceparent: Option<String>,
}

/// Consecutive items grouped into requests: at most `max_events` each, and the body (items,
/// commas and `overhead`) at most `max_bytes`; items needing different headers apart.
fn chunks(
    items: &[Item],
    max_events: usize,
    max_bytes: usize,
    overhead: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut bytes = overhead;
    for (i, item) in items.iter().enumerate() {
        let len = item.end - item.start;
        let count = i - start;
        if count > 0
            && (count >= max_events
                || bytes + 1 + len > max_bytes
                || items[start].traceparent != item.traceparent)
        {
            out.push(start..i);
            start = i;
            bytes = overhead;
        }
        bytes += len + usize::from(i > start);
    }
    if start < items.len() {
        out.push(start..items.len());
    }
    out
}

/// `prefix` + the items joined by commas + `suffix`.
fn join(buf: &[u8], items: &[Item], prefix: &[u8], suffix: &[u8]) -> Vec<u8> {
    let len: usize =
        items.iter().map(|i| i.end - i.start + 1).sum::<usize>() + prefix.len() + suffix.len();
    let mut body = Vec::with_capacity(len);
    body.extend_from_slice(prefix);
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&buf[item.start..item.end]);
    }
    body.extend_from_slice(suffix);
    body
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).expect("strings serialize")
}

/// `url` with `suffix` as its path's end, unless it ends so already.
fn endpoint(url: &reqwest::Url, suffix: &str) -> reqwest::Url {
    let mut url = url.clone();
    let path = url.path().trim_end_matches('/');
    let bare = suffix.trim_end_matches('/');
    if !path.ends_with(bare) {
        let joined = format!("{path}{suffix}");
        url.set_path(&joined);
    }
    url
}

// ---------------------------------------------------------------------------------------------
// Webhook

fn render_webhook<V: std::borrow::Borrow<Value>>(
    url: &reqwest::Url,
    secret: Option<&str>,
    headers: &std::collections::BTreeMap<String, String>,
    max_batch_events: usize,
    events: &[V],
    now: DateTime<Utc>,
) -> Rendered {
    let json: Vec<String> = events.iter().map(|e| e.borrow().to_string()).collect();
    let raw: Vec<RawEvent<'_>> = events
        .iter()
        .zip(&json)
        .map(|(e, json)| RawEvent { id: e.borrow().get("id").and_then(Value::as_str).unwrap_or(""), json })
        .collect();
    render_webhook_raw(url, secret, headers, max_batch_events, &raw, now)
}

/// An event already in the events API's JSON (as the log stores it), and its id.
#[derive(Debug, Clone, Copy)]
pub struct RawEvent<'a> {
    pub id: &'a str,
    pub json: &'a str,
}

/// [`render`] for a webhook whose events are sent as they are logged: no parsing, no
/// serializing.
pub fn render_webhook_raw(
    url: &reqwest::Url,
    secret: Option<&str>,
    headers: &std::collections::BTreeMap<String, String>,
    max_batch_events: usize,
    events: &[RawEvent<'_>],
    now: DateTime<Utc>,
) -> Rendered {
    let mut out = Rendered::default();
    let key = match secret.map(crate::destination::webhook_key) {
        None => None,
        Some(Ok(key)) => Some(key),
        Some(Err(e)) => {
            out.refused = (0..events.len()).map(|i| (i, format!("the webhook secret is invalid: {e}"))).collect();
            return out;
        }
    };
    let mut buf = Vec::with_capacity(events.iter().map(|e| e.json.len() + 1).sum());
    let mut items = Vec::with_capacity(events.len());
    for (index, event) in events.iter().enumerate() {
        if event.json.len() + 2 > WEBHOOK_MAX_BYTES {
            out.refused.push((index, format!("the event is {} bytes, over the {WEBHOOK_MAX_BYTES}-byte request limit", event.json.len())));
            continue;
        }
        let start = buf.len();
        buf.extend_from_slice(event.json.as_bytes());
        items.push(Item { index, start, end: buf.len(), traceparent: None });
    }
    let timestamp = now.timestamp().to_string();
    for range in chunks(&items, max_batch_events, WEBHOOK_MAX_BYTES, 2) {
        let part = &items[range];
        let body = join(&buf, part, b"[", b"]");
        let mut request_headers = Vec::with_capacity(headers.len() + 4);
        request_headers.push(("content-type".to_owned(), "application/json".to_owned()));
        request_headers.extend(headers.iter().map(|(k, v)| (k.clone(), v.clone())));
        let indices: Vec<usize> = part.iter().map(|i| i.index).collect();
        if let Some(key) = &key {
            let id = webhook_id(indices.iter().map(|&i| events[i].id));
            let signature = sign(key, &id, &timestamp, &body);
            request_headers.push(("webhook-id".into(), id));
            request_headers.push(("webhook-timestamp".into(), timestamp.clone()));
            request_headers.push(("webhook-signature".into(), signature));
        }
        out.requests.push(WireRequest { url: url.clone(), headers: request_headers, body, events: indices });
    }
    out
}

/// The Standard Webhooks message id of a request: `msg_` and 32 hex digits of the SHA-256 of
/// its events' ids, so every retry of the same events has the same id.
pub fn webhook_id<'a>(ids: impl IntoIterator<Item = &'a str>) -> String {
    let mut hash = Sha256::new();
    for id in ids {
        hash.update(id.as_bytes());
        hash.update(b"\n");
    }
    let digest = hash.finalize();
    let mut out = String::with_capacity(36);
    out.push_str("msg_");
    for b in &digest[..16] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// A Standard Webhooks signature: `v1,` and the base64 HMAC-SHA256 of `{id}.{timestamp}.{body}`.
pub fn sign(key: &[u8], id: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

// ---------------------------------------------------------------------------------------------
// The unified event, borrowed

/// The members of a unified event's JSON the mappings read.
struct View<'a> {
    map: &'a Map<String, Value>,
    id: &'a str,
    kind: &'a str,
    event: &'a str,
    distinct_id: &'a str,
    timestamp: &'a str,
}

static EMPTY: std::sync::LazyLock<Map<String, Value>> = std::sync::LazyLock::new(Map::new);

impl<'a> View<'a> {
    fn new(value: &'a Value) -> Result<Self, String> {
        let map = value
            .as_object()
            .ok_or("not a unified event: not a JSON object")?;
        let field = |k: &str| {
            map.get(k)
                .and_then(Value::as_str)
                .ok_or_else(|| format!("not a unified event: `{k}` is missing or not a string"))
        };
        let kind = field("type")?;
        if switchyard_event::EventType::parse(kind).is_none() {
            return Err(format!("not a unified event: unknown type {kind:?}"));
        }
        Ok(View {
            map,
            id: field("id")?,
            kind,
            event: field("event")?,
            distinct_id: field("distinct_id")?,
            timestamp: field("timestamp")?,
        })
    }
    fn str(&self, key: &str) -> Option<&'a str> {
        self.map.get(key).and_then(Value::as_str)
    }
    fn obj(&self, key: &str) -> &'a Map<String, Value> {
        match self.map.get(key) {
            Some(Value::Object(m)) => m,
            _ => &EMPTY,
        }
    }
    fn extra(&self) -> &'a Map<String, Value> {
        self.obj("extra")
    }
}

/// A value added to an object when serialized.
enum Added<'a> {
    Str(&'a str),
    Obj(&'a Map<String, Value>),
    Value(&'a Value),
}

impl Serialize for Added<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Added::Str(v) => s.serialize_str(v),
            Added::Obj(v) => v.serialize(s),
            Added::Value(v) => v.serialize(s),
        }
    }
}

/// An object's members, then `added` (replacing members of the same name).
struct Extended<'a> {
    base: &'a Map<String, Value>,
    added: &'a [(&'a str, Added<'a>)],
}

impl Serialize for Extended<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.base {
            if !self.added.iter().any(|(a, _)| a == k) {
                map.serialize_entry(k, v)?;
            }
        }
        for (k, v) in self.added {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The `traceparent` header that makes a receiver derive `want` (trace and span ids) for an
/// event whose body makes it derive `derive(None)`; `None` when the body says it already (or
/// when no header can).
fn trace_header(
    want: (Option<&str>, Option<&str>),
    derive: impl Fn(Option<&str>) -> (Option<String>, Option<String>),
) -> Option<String> {
    let same = |got: &(Option<String>, Option<String>)| {
        got.0.as_deref() == want.0 && got.1.as_deref() == want.1
    };
    if same(&derive(None)) {
        return None;
    }
    let trace = want.0?;
    let span = want
        .1
        .filter(|s| s.len() == 16 && parse_traceparent(&format!("00-{trace}-{s}-01")).is_some())
        .unwrap_or("0000000000000001");
    let header = format!("00-{trace}-{span}-01");
    same(&derive(Some(&header))).then_some(header)
}

// ---------------------------------------------------------------------------------------------
// PostHog

/// An event as PostHog's `/batch/` takes it.
struct PosthogEvent<'a> {
    e: &'a View<'a>,
    uuid: Cow<'a, str>,
    timestamp: &'a str,
    properties: Vec<(&'a str, Added<'a>)>,
    /// The top-level `name` to send, if any (`Some(None)`: `null`).
    name: Option<Option<&'a str>>,
}

/// Top-level members [`PosthogEvent`] writes itself (or the intake reads as a token or id):
/// `extra` members of these names are not sent.
const POSTHOG_TOP: &[&str] = &[
    "uuid",
    "distinct_id",
    "timestamp",
    "event",
    "properties",
    "$set",
    "$set_once",
    "$distinct_id",
    "token",
    "$token",
    "api_key",
    "user_id",
    "anonymous_id",
    "context",
    "name",
    "category",
];

impl Serialize for PosthogEvent<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.e;
        let kind = e.kind;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("uuid", &self.uuid)?;
        map.serialize_entry("distinct_id", e.distinct_id)?;
        map.serialize_entry("timestamp", self.timestamp)?;
        map.serialize_entry("event", e.event)?;
        map.serialize_entry(
            "properties",
            &Extended {
                base: e.obj("properties"),
                added: &self.properties,
            },
        )?;
        let traits = e.obj("traits");
        if !traits.is_empty() && kind != "group" {
            map.serialize_entry("$set", traits)?;
        }
        let set_once = e.obj("traits_set_once");
        if !set_once.is_empty() {
            map.serialize_entry("$set_once", set_once)?;
        }
        let extra = e.extra();
        for (k, v) in extra {
            if !POSTHOG_TOP.contains(&k.as_str()) {
                map.serialize_entry(k, v)?;
            }
        }
        // What PostHog's shape has no place for, as top-level members: PostHog ignores them, a
        // Switchyard's PostHog intake reads them.
        let context = e.obj("context");
        if !context.is_empty() {
            map.serialize_entry("context", context)?;
        }
        if let Some(v) = e.str("user_id") {
            map.serialize_entry("user_id", v)?;
        }
        // An identify's is `$anon_distinct_id`.
        if let (Some(v), false) = (e.str("anonymous_id"), kind == "identify") {
            map.serialize_entry("anonymous_id", v)?;
        }
        if let Some(name) = self.name {
            map.serialize_entry("name", &name)?;
        }
        if let Some(v) = e.str("category") {
            map.serialize_entry("category", v)?;
        }
        map.end()
    }
}

/// An id PostHog takes as `uuid`: the event's id when it is a UUID, else a UUID derived from it
/// (the same on every attempt, so PostHog's deduplication still sees retries as one event).
pub fn posthog_uuid(id: &str) -> Cow<'_, str> {
    match uuid::Uuid::parse_str(id) {
        Ok(u) if u.hyphenated().to_string() == id => Cow::Borrowed(id),
        Ok(u) => Cow::Owned(u.hyphenated().to_string()),
        Err(_) => {
            let digest = Sha256::digest(id.as_bytes());
            let bytes: [u8; 16] = digest[..16].try_into().expect("16 bytes");
            Cow::Owned(
                uuid::Builder::from_custom_bytes(bytes)
                    .into_uuid()
                    .hyphenated()
                    .to_string(),
            )
        }
    }
}

/// Why PostHog would refuse the event (and with it the whole batch), if it would.
fn posthog_refusal(e: &View<'_>) -> Option<String> {
    if e.distinct_id.is_empty() {
        return Some("PostHog refuses an event with an empty distinct_id".into());
    }
    if e.event.is_empty() {
        return Some("PostHog refuses an event with an empty event name".into());
    }
    let chars = e.event.chars().count();
    if chars > POSTHOG_MAX_EVENT_NAME_CHARS {
        return Some(format!("the event name is {chars} characters, PostHog's limit is {POSTHOG_MAX_EVENT_NAME_CHARS}"));
    }
    if let Some(mode) = e.obj("properties").get("$cookieless_mode") {
        if !mode.is_boolean() {
            return Some("PostHog refuses a `$cookieless_mode` that is not a boolean".into());
        }
    }
    if parse_time(e.timestamp).is_none() {
        return Some(format!("PostHog refuses the timestamp {:?}", e.timestamp));
    }
    None
}

fn render_posthog<V: std::borrow::Borrow<Value>>(host: &reqwest::Url, token: &str, events: &[V]) -> Rendered {
    let mut out = Rendered::default();
    let url = endpoint(host, "/batch/");
    let mut buf = Vec::with_capacity(events.len() * 600);
    let mut items = Vec::with_capacity(events.len());
    let mut old = Vec::with_capacity(events.len());
    for (index, value) in events.iter().map(std::borrow::Borrow::borrow).enumerate() {
        let e = match View::new(value) {
            Ok(e) => e,
            Err(reason) => {
                out.refused.push((index, reason));
                continue;
            }
        };
        if let Some(reason) = posthog_refusal(&e) {
            out.refused.push((index, reason));
            continue;
        }
        let properties_in = e.obj("properties");
        let mut properties: Vec<(&str, Added<'_>)> = Vec::new();
        let mut name = e.str("name").map(Some);
        let groups = e.obj("groups");
        if !groups.is_empty() {
            properties.push(("$groups", Added::Obj(groups)));
        }
        match e.kind {
            "identify" => {
                if let Some(anon) = e.str("anonymous_id") {
                    properties.push(("$anon_distinct_id", Added::Str(anon)));
                }
            }
            "alias" => {
                if let Some(previous) = e.str("previous_id") {
                    properties.push(("alias", Added::Str(previous)));
                }
            }
            "group" => {
                if let Some(group_type) = e.str("group_type") {
                    properties.push(("$group_type", Added::Str(group_type)));
                }
                if let Some(key) = e.map.get("group_id").filter(|v| !v.is_null()) {
                    properties.push(("$group_key", Added::Value(key)));
                }
                let traits = e.obj("traits");
                if !traits.is_empty() {
                    properties.push(("$group_set", Added::Obj(traits)));
                }
            }
            // PostHog names a screen by `$screen_name`. One added here comes with the name at top
            // level too, which tells the receiver to drop it again; a top-level name also says a
            // name that is not the `$screen_name` the event has.
            "screen" => {
                let own = e.str("name");
                name = match properties_in.get("$screen_name") {
                    None => {
                        if let Some(own) = own {
                            properties.push(("$screen_name", Added::Str(own)));
                        }
                        own.map(Some)
                    }
                    Some(screen_name) => (screen_name.as_str() != own).then_some(own),
                };
            }
            _ => {}
        }
        if let (Some(ip), false) = (e.str("request_ip"), properties_in.contains_key("$ip")) {
            properties.push(("$ip", Added::Str(ip)));
        }
        // The client's own timestamp when the stored one is just it, parsed (no skew correction):
        // then the receiver keeps both.
        let timestamp = match e.str("original_timestamp") {
            Some(original)
                if parse_time(original).map(format_time).as_deref() == Some(e.timestamp) =>
            {
                original
            }
            _ => e.timestamp,
        };
        let context = e.obj("context");
        let traceparent = trace_header((e.str("trace_id"), e.str("span_id")), |header| {
            extract_trace(properties_in, context, header)
        });
        let event = PosthogEvent {
            e: &e,
            uuid: posthog_uuid(e.id),
            timestamp,
            properties,
            name,
        };
        let start = buf.len();
        serde_json::to_writer(&mut buf, &event).expect("events serialize");
        let len = buf.len() - start;
        if len > POSTHOG_MAX_EVENT_BYTES {
            buf.truncate(start);
            out.refused.push((index, format!("the event is {len} bytes as PostHog takes it, over PostHog's {POSTHOG_MAX_EVENT_BYTES}-byte limit")));
            continue;
        }
        // PostHog's batch flag, when every event of the batch was taken in under it (a
        // migration of history): the flag is the sender's to give, not a matter of age.
        old.push(e.obj("extra").get("historical_migration") == Some(&Value::Bool(true)));
        items.push(Item {
            index,
            start,
            end: buf.len(),
            traceparent,
        });
    }
    let token = json_string(token);
    let overhead =
        format!("{{\"api_key\":{token},\"historical_migration\":true,\"batch\":[]}}").len();
    for range in chunks(&items, POSTHOG_MAX_EVENTS, POSTHOG_MAX_BYTES, overhead) {
        let historical = old[range.clone()].iter().all(|&o| o);
        let part = &items[range];
        let prefix = if historical {
            format!("{{\"api_key\":{token},\"historical_migration\":true,\"batch\":[")
        } else {
            format!("{{\"api_key\":{token},\"batch\":[")
        };
        let body = join(&buf, part, prefix.as_bytes(), b"]}");
        let headers = vec![("content-type".to_owned(), "application/json".to_owned())];
        out.requests.push(traced_request(&url, headers, body, part));
    }
    out
}

/// A request carrying `part`, with its first event's trace context as `traceparent` (the
/// events of a request share one: see `chunks`' callers).
fn traced_request(url: &reqwest::Url, mut headers: Vec<(String, String)>, body: Vec<u8>, part: &[Item]) -> WireRequest {
    if let Some(tp) = &part[0].traceparent {
        headers.push(("traceparent".into(), tp.clone()));
    }
    WireRequest { url: url.clone(), headers, body, events: part.iter().map(|i| i.index).collect() }
}

// ---------------------------------------------------------------------------------------------
// RudderStack / Segment

/// A unified event as a Segment-spec message.
struct Message<'a> {
    e: &'a View<'a>,
    sent_at: Option<&'a str>,
    /// Whether a `userId` standing in for a PostHog distinct id is marked so (`$distinct_id`).
    mark_distinct_id: bool,
}

/// Members [`Message`] writes itself, and those the intake reads: `extra` members of these names
/// are not sent.
const MESSAGE_TOP: &[&str] = &[
    "type",
    "messageId",
    "event",
    "userId",
    "anonymousId",
    "properties",
    "traits",
    "context",
    "groupId",
    "previousId",
    "name",
    "category",
    "timestamp",
    "originalTimestamp",
    "sentAt",
    "receivedAt",
    "writeKey",
    "$set_once",
    "$groups",
    "$group_type",
];

impl Message<'_> {
    /// `userId` and `anonymousId`: the event's; a PostHog event's distinct id (which is neither)
    /// as `userId`.
    fn ids(&self) -> (Option<&str>, Option<&str>) {
        let e = self.e;
        let user = e.str("user_id");
        let anon = e.str("anonymous_id");
        let distinct = Some(e.distinct_id).filter(|d| !d.trim().is_empty());
        match (user, anon) {
            (Some(u), a) => (Some(u), a),
            (None, Some(a)) if Some(a) == distinct => (None, Some(a)),
            (None, a) => (distinct, a),
        }
    }
}

impl Serialize for Message<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.e;
        let kind = e.kind;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("type", kind)?;
        map.serialize_entry("messageId", e.id)?;
        let (user, anon) = self.ids();
        if let Some(user) = user {
            map.serialize_entry("userId", user)?;
        }
        if let Some(anon) = anon {
            map.serialize_entry("anonymousId", anon)?;
        }
        // The `userId` is a PostHog distinct id (which is neither a user nor an anonymous id):
        // said by `$distinct_id`, so that a Switchyard stores no user id for it.
        let marked = self.mark_distinct_id && user.is_some() && e.str("user_id").is_none();
        if marked {
            map.serialize_entry("$distinct_id", e.distinct_id)?;
        }
        // Other calls have no name in Segment's spec; one other than the call's usual name
        // (PostHog's `$set`, an identify) is sent anyway, for a Switchyard to keep.
        let usual = match kind {
            "identify" => "$identify",
            "group" => "$groupidentify",
            "page" => "$pageview",
            "screen" => "$screen",
            "alias" => "$create_alias",
            _ => "",
        };
        if kind == "track" || e.event != usual {
            map.serialize_entry("event", e.event)?;
        }
        map.serialize_entry("properties", e.obj("properties"))?;
        let traits = e.obj("traits");
        if !traits.is_empty() || kind == "identify" || kind == "group" {
            map.serialize_entry("traits", traits)?;
        }
        map.serialize_entry("context", e.obj("context"))?;
        if kind == "group" {
            if let Some(group_id) = e.map.get("group_id").filter(|v| !v.is_null()) {
                map.serialize_entry("groupId", group_id)?;
            }
        }
        if kind == "alias" {
            if let Some(previous) = e.str("previous_id") {
                map.serialize_entry("previousId", previous)?;
            }
        }
        for (key, member) in [("name", "name"), ("category", "category")] {
            if let Some(v) = e.str(key) {
                map.serialize_entry(member, v)?;
            }
        }
        map.serialize_entry("timestamp", e.timestamp)?;
        if let Some(original) = e.str("original_timestamp") {
            map.serialize_entry("originalTimestamp", original)?;
        }
        if let Some(sent_at) = self.sent_at {
            map.serialize_entry("sentAt", sent_at)?;
        }
        // PostHog's members that Segment has no place for.
        let set_once = e.obj("traits_set_once");
        if !set_once.is_empty() {
            map.serialize_entry("$set_once", set_once)?;
        }
        let groups = e.obj("groups");
        if !groups.is_empty() {
            map.serialize_entry("$groups", groups)?;
        }
        if let Some(group_type) = e.str("group_type") {
            map.serialize_entry("$group_type", group_type)?;
        }
        for (k, v) in e.extra() {
            if !(MESSAGE_TOP.contains(&k.as_str()) || (marked && k == "$distinct_id")) {
                map.serialize_entry(k, v)?;
            }
        }
        map.end()
    }
}

fn render_segment<V: std::borrow::Borrow<Value>>(
    url: &reqwest::Url,
    write_key: &str,
    events: &[V],
    now: DateTime<Utc>,
    max_events: usize,
    max_bytes: usize,
    max_event_bytes: Option<usize>,
) -> Rendered {
    let mut out = Rendered::default();
    let url = endpoint(url, "/v1/batch");
    let sent_at = format_time(now);
    let suffix = format!("],\"sentAt\":\"{sent_at}\"}}");
    let prefix = "{\"batch\":[";
    let overhead = prefix.len() + suffix.len();
    let max_event_bytes = max_event_bytes.unwrap_or(max_bytes - overhead);
    let mut buf = Vec::with_capacity(events.len() * 700);
    let mut items = Vec::with_capacity(events.len());
    for (index, value) in events.iter().map(std::borrow::Borrow::borrow).enumerate() {
        let e = match View::new(value) {
            Ok(e) => e,
            Err(reason) => {
                out.refused.push((index, reason));
                continue;
            }
        };
        let message = Message {
            e: &e,
            sent_at: Some(&sent_at),
            mark_distinct_id: true,
        };
        if message.ids() == (None, None) {
            out.refused.push((
                index,
                "the event has neither a userId nor an anonymousId".into(),
            ));
            continue;
        }
        if e.kind == "track" && e.event.is_empty() {
            out.refused.push((
                index,
                "a track event without an event name is refused".into(),
            ));
            continue;
        }
        let start = buf.len();
        serde_json::to_writer(&mut buf, &message).expect("messages serialize");
        let len = buf.len() - start;
        if len > max_event_bytes {
            buf.truncate(start);
            out.refused.push((
                index,
                format!(
                    "the message is {len} bytes, over the {max_event_bytes}-byte limit per event"
                ),
            ));
            continue;
        }
        let properties = e.obj("properties");
        let context = e.obj("context");
        let traceparent = trace_header((e.str("trace_id"), e.str("span_id")), |header| {
            extract_trace(properties, context, header)
        });
        items.push(Item {
            index,
            start,
            end: buf.len(),
            traceparent,
        });
    }
    let auth = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{write_key}:"))
    );
    for range in chunks(&items, max_events, max_bytes, overhead) {
        let part = &items[range];
        let body = join(&buf, part, prefix.as_bytes(), suffix.as_bytes());
        let headers = vec![("content-type".to_owned(), "application/json".to_owned()), ("authorization".to_owned(), auth.clone())];
        out.requests.push(traced_request(&url, headers, body, part));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use serde_json::json;
    use switchyard_event::{posthog, segment, EventLimits, RequestMeta};

    use super::*;

    const RECEIVED: &str = "2026-11-25T12:00:10Z";

    fn meta(traceparent: Option<&str>, ip: &str) -> RequestMeta {
        RequestMeta {
            project_id: 7,
            received_at: parse_time(RECEIVED).unwrap(),
            traceparent: traceparent.map(str::to_owned),
            ip: Some(ip.to_owned()),
        }
    }

    fn header<'a>(request: &'a WireRequest, name: &str) -> Option<&'a str> {
        request
            .headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    /// What a Switchyard's PostHog intake stores for a `/batch/` body (all of it must be accepted).
    fn posthog_intake(body: &[u8], traceparent: Option<&str>, ip: &str) -> Vec<Value> {
        let limits = EventLimits::default();
        let request =
            posthog::parse_capture_request(body, None, &limits).unwrap_or_else(|r| panic!("{r}"));
        let meta = meta(traceparent, ip);
        let ctx = posthog::PosthogContext {
            meta: &meta,
            sent_at: request.sent_at,
            historical_migration: request.historical_migration,
            engage: false,
            limits: &limits,
        };
        let out = posthog::normalize(request.events, &ctx);
        assert!(out.invalid.is_empty(), "{:?}", out.invalid);
        out.accepted
            .iter()
            .map(|a| serde_json::from_str(&a.event_json()).unwrap())
            .collect()
    }

    /// What a Switchyard's Segment intake stores for a `/v1/batch` body.
    fn segment_intake(body: &[u8], traceparent: Option<&str>, ip: &str) -> Vec<Value> {
        let limits = EventLimits::default();
        let request =
            segment::parse_segment_request(body, None, &limits).unwrap_or_else(|r| panic!("{r}"));
        let meta = meta(traceparent, ip);
        let ctx = segment::SegmentContext {
            meta: &meta,
            batch_sent_at: request.sent_at.as_deref(),
            limits: &limits,
        };
        request
            .events
            .into_iter()
            .map(|raw| {
                serde_json::to_value(
                    segment::normalize_event(raw, &ctx).unwrap_or_else(|(r, _)| panic!("{r}")),
                )
                .unwrap()
            })
            .collect()
    }

    const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

    /// Events a PostHog SDK sends (posthog-node's batch, with `sent_at`), as Switchyard A stored them.
    fn posthog_events() -> Vec<Value> {
        let body = json!({"api_key": "phc_a", "sent_at": "2026-11-25T12:00:05Z", "batch": [
            {"event": "flow_executed", "distinct_id": "user_1", "uuid": "0190b2a1-0000-7000-8000-000000000001",
             "timestamp": "2026-11-25T12:00:04Z",
             "properties": {"flow_id": "f_1", "status": "success", "duration_ms": 1520, "trace_id": TRACE, "span_id": "00f067aa0ba902b7",
                            "$groups": {"workspace": "ws_1", "organization": "org_1"}, "$lib": "posthog-node"}},
            {"event": "$ai_generation", "distinct_id": "user_1", "uuid": "0190b2a1-0000-7000-8000-000000000002",
             "properties": {"$ai_model": "gpt-4o", "$ai_input_tokens": 120, "$ai_output_tokens": 2.50, "nested": {"z": 1, "a": [1, {"b": null}]}}},
            {"event": "$identify", "distinct_id": "user_1", "uuid": "0190b2a1-0000-7000-8000-000000000003",
             "timestamp": "2026-11-25T12:00:03Z",
             "properties": {"$anon_distinct_id": "anon_9", "$set_once": {"first_seen": "2026-11-01"}},
             "$set": {"email": "a@example.com", "plan": "pro"}},
            {"event": "$groupidentify", "distinct_id": "user_1", "uuid": "0190b2a1-0000-7000-8000-000000000004",
             "properties": {"$group_type": "workspace", "$group_key": "ws_1", "$group_set": {"name": "Acme"}}},
            {"event": "$create_alias", "distinct_id": "user_1", "uuid": "0190b2a1-0000-7000-8000-000000000005",
             "properties": {"alias": "anon_9"}},
            {"event": "$pageview", "distinct_id": "anon_9", "uuid": "0190b2a1-0000-7000-8000-000000000006",
             "properties": {"$current_url": "https://app.example.com/flows"}, "offset": 20},
            {"event": "$screen", "distinct_id": "anon_9", "uuid": "0190b2a1-0000-7000-8000-000000000007",
             "properties": {"$screen_name": "Flows"}, "type": "capture", "library": "posthog-ios"},
            {"event": "tool_used", "distinct_id": "svc_runner", "uuid": "0190b2a1-0000-7000-8000-000000000008",
             "properties": {"tool_name": "web_search", "success": true, "$ip": "198.51.100.1"}}
        ]});
        // The request carried a `traceparent`: events without `trace_id` took theirs from it.
        posthog_intake(
            body.to_string().as_bytes(),
            Some(&format!("00-{TRACE}-b7ad6b7169203331-01")),
            "203.0.113.7",
        )
    }

    /// Events RudderStack/Segment SDKs send, as Switchyard A stored them.
    fn segment_events() -> Vec<Value> {
        let context = json!({"library": {"name": "analytics-node", "version": "2.1.0"}, "ip": "198.51.100.9",
                             "page": {"url": "https://app.example.com/flows"}});
        let body = json!({"sentAt": "2026-11-25T12:00:06.000Z", "batch": [
            {"type": "track", "event": "tool_used", "userId": "user_1", "anonymousId": "anon_9", "messageId": "ajs-next-6b1f0c",
             "properties": {"tool_name": "sql", "success": false, "error_type": "timeout", "trace_id": TRACE},
             "context": context, "integrations": {"All": true, "Mixpanel": false},
             "originalTimestamp": "2026-11-25T12:00:05.500Z", "channel": "server"},
            {"type": "track", "event": "flow_executed", "userId": "user_1", "messageId": "0190b2a1-0000-7000-8000-0000000000a2",
             "properties": {"flow_id": "f_2", "status": "error"},
             "context": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"},
             "timestamp": "2026-11-25T11:59:00Z"},
            {"type": "identify", "userId": "user_1", "anonymousId": "anon_9", "messageId": "m-identify-1",
             "traits": {"email": "a@example.com", "plan": "pro"}, "context": context, "originalTimestamp": "2026-11-25T12:00:05Z"},
            {"type": "group", "userId": "user_1", "groupId": "ws_1", "messageId": "m-group-1", "traits": {"name": "Acme", "seats": 12}},
            {"type": "alias", "userId": "user_1", "previousId": "anon_9", "messageId": "m-alias-1"},
            {"type": "page", "anonymousId": "anon_9", "name": "Flows", "category": "App", "messageId": "m-page-1",
             "properties": {"path": "/flows"}, "context": context},
            {"type": "screen", "userId": "user_1", "name": "Settings", "messageId": "m-screen-1", "properties": {}}
        ]});
        // No trace id in the body of the last events: they take the header's.
        segment_intake(
            body.to_string().as_bytes(),
            Some("00-11111111111111111111111111111111-2222222222222222-01"),
            "203.0.113.8",
        )
    }

    /// The members of `b` that differ from `a`'s (those the receiver sets itself aside).
    fn differing(a: &Value, b: &Value) -> BTreeSet<String> {
        let (a, b) = (a.as_object().unwrap(), b.as_object().unwrap());
        a.keys()
            .chain(b.keys())
            .filter(|k| !["received_at", "request_ip", "protocol"].contains(&k.as_str()))
            .filter(|k| a.get(*k).unwrap_or(&Value::Null) != b.get(*k).unwrap_or(&Value::Null))
            .cloned()
            .collect()
    }

    /// Whether the event's timestamp is its original one, parsed (no clock-skew correction).
    fn timestamp_is_original(e: &Value) -> bool {
        e["original_timestamp"]
            .as_str()
            .and_then(parse_time)
            .map(format_time)
            .as_deref()
            == e["timestamp"].as_str()
    }

    fn by_id(events: Vec<Value>) -> BTreeMap<String, Value> {
        events
            .into_iter()
            .map(|e| (e["id"].as_str().unwrap().to_owned(), e))
            .collect()
    }

    fn now() -> DateTime<Utc> {
        parse_time("2026-11-25T12:05:00Z").unwrap()
    }

    fn posthog_config() -> DestinationConfig {
        DestinationConfig::Posthog {
            host: "http://b.example:8000".parse().unwrap(),
            project_token: "phc_b".into(),
        }
    }

    fn segment_config() -> DestinationConfig {
        DestinationConfig::Segment {
            url: "http://b.example:8000/".parse().unwrap(),
            write_key: "wk_b".into(),
        }
    }

    /// Forwards `events` to a second Switchyard through `config`, and returns what it stores, by id.
    fn forward(config: &DestinationConfig, events: &[Value]) -> BTreeMap<String, Value> {
        let rendered = render(config, events, now());
        assert!(rendered.refused.is_empty(), "{:?}", rendered.refused);
        let mut stored = Vec::new();
        let mut sent = Vec::new();
        for request in &rendered.requests {
            let tp = header(request, "traceparent");
            sent.extend(request.events.iter().copied());
            stored.extend(match config {
                DestinationConfig::Posthog { .. } => posthog_intake(&request.body, tp, "192.0.2.1"),
                _ => segment_intake(&request.body, tp, "192.0.2.1"),
            });
        }
        assert_eq!(
            sent,
            (0..events.len()).collect::<Vec<_>>(),
            "every event sent once, in order"
        );
        by_id(stored)
    }

    #[test]
    fn posthog_round_trip() {
        let config = posthog_config();
        // PostHog events: lossless but for the client's own `sent_at` (PostHog's forwarder sends
        // none, so the receiver applies no second clock-skew correction) and with it the
        // uncorrected `original_timestamp`; the receiver gets the client address as `$ip`.
        let mut originals = posthog_events();
        // Without a `sent_at` (the client's clock trusted), nothing is lost but an absent
        // `original_timestamp` (PostHog's one `timestamp` is read as both).
        let unsent: Vec<Value> = originals
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e.as_object_mut().unwrap().remove("sent_at");
                if let Some(original) = e.get("original_timestamp").and_then(Value::as_str) {
                    e["timestamp"] = json!(format_time(parse_time(original).unwrap()));
                }
                e
            })
            .collect();
        originals.extend(unsent);
        for chunk in originals.chunks(8) {
            let stored = forward(&config, chunk);
            for a in chunk {
                let mut b = stored[a["id"].as_str().unwrap()].clone();
                if a["properties"].get("$ip").is_none() {
                    assert_eq!(b["properties"]["$ip"], a["request_ip"], "{}", a["event"]);
                    b["properties"].as_object_mut().unwrap().remove("$ip");
                }
                let mut expected = BTreeSet::new();
                if a.get("sent_at").is_some() {
                    expected.insert("sent_at".to_owned());
                }
                if !timestamp_is_original(a) {
                    expected.insert("original_timestamp".to_owned());
                }
                assert_eq!(differing(a, &b), expected, "{}\n{a:#}\n{b:#}", a["event"]);
                assert_eq!(b["protocol"], "posthog");
            }
        }

        // Segment events: user and anonymous ids (but an identify's), `context`, page names and
        // categories are sent as top-level members, which PostHog ignores and a Switchyard reads.
        // Lost: `sent_at`, with it the uncorrected `original_timestamp`, and an id that is not a
        // UUID (PostHog's `uuid` is one); the properties gain `$ip`.
        let mut originals = segment_events();
        // Screens named otherwise than by the mapping's `$screen_name`.
        let screen = originals
            .iter()
            .find(|e| e["type"] == "screen")
            .unwrap()
            .clone();
        for (n, (name, screen_name)) in [
            (json!("Settings"), json!("Settings")),
            (json!("Settings"), json!("Other")),
            (Value::Null, json!("Other")),
        ]
        .into_iter()
        .enumerate()
        {
            let mut e = screen.clone();
            e["id"] = json!(format!("m-screen-{}", n + 2));
            e["properties"]["$screen_name"] = screen_name;
            match name {
                Value::Null => drop(e.as_object_mut().unwrap().remove("name")),
                name => e["name"] = name,
            }
            originals.push(e);
        }
        let stored = forward(&config, &originals);
        for a in &originals {
            let id = a["id"].as_str().unwrap();
            let mut b = stored[&posthog_uuid(id).into_owned()].clone();
            assert_eq!(
                b["properties"].as_object_mut().unwrap().remove("$ip"),
                Some(a["request_ip"].clone())
            );
            let mut expected: BTreeSet<&str> = ["sent_at", "id"].into();
            if uuid::Uuid::parse_str(id).is_ok() {
                expected.remove("id");
            }
            if !timestamp_is_original(a) {
                expected.insert("original_timestamp");
            }
            let expected: BTreeSet<String> = expected.into_iter().map(String::from).collect();
            assert_eq!(differing(a, &b), expected, "{}\n{a:#}\n{b:#}", a["event"]);
        }
    }

    #[test]
    fn segment_round_trip() {
        let config = segment_config();
        // Segment events: lossless but for `sentAt`, which is the time of sending.
        let originals = segment_events();
        let stored = forward(&config, &originals);
        for a in &originals {
            let b = &stored[a["id"].as_str().unwrap()];
            // An absent `original_timestamp` reads back as the timestamp (SDKs always send one).
            let mut expected: BTreeSet<String> = ["sent_at".to_owned()].into();
            if a.get("original_timestamp").is_none() {
                expected.insert("original_timestamp".to_owned());
                assert_eq!(b["original_timestamp"], a["timestamp"]);
            }
            assert_eq!(differing(a, b), expected, "{}\n{a:#}\n{b:#}", a["event"]);
            assert_eq!(b["sent_at"], json!(format_time(now())));
        }
        // PostHog events: a distinct id that is neither a user nor an anonymous id is sent as
        // `userId` marked by `$distinct_id`; `$set_once`, `$groups` and the group type as top-level
        // members; a Switchyard reads them all back. Lost: `sent_at` (the time of sending instead),
        // an absent `original_timestamp` (the timestamp read as it), and `extra` members named as
        // Segment's own fields (`type`), which a message cannot carry.
        let originals = posthog_events();
        let stored = forward(&config, &originals);
        for a in &originals {
            let b = &stored[a["id"].as_str().unwrap()];
            let mut expected: BTreeSet<&str> = ["sent_at"].into();
            if a.get("original_timestamp").is_none() {
                expected.insert("original_timestamp");
            }
            if a["extra"]
                .as_object()
                .is_some_and(|x| x.keys().any(|k| MESSAGE_TOP.contains(&k.as_str())))
            {
                expected.insert("extra");
            }
            let expected: BTreeSet<String> = expected.into_iter().map(String::from).collect();
            assert_eq!(differing(a, b), expected, "{}\n{a:#}\n{b:#}", a["event"]);
        }
        // What a real Segment/RudderStack destination sees: the distinct id as `userId`.
        let rendered = render(&config, &originals, now());
        let messages: Vec<Value> = rendered
            .requests
            .iter()
            .flat_map(|r| {
                serde_json::from_slice::<Value>(&r.body).unwrap()["batch"]
                    .as_array()
                    .unwrap()
                    .clone()
            })
            .collect();
        let identify = messages.iter().find(|m| m["type"] == "identify").unwrap();
        assert_eq!(
            (
                &identify["userId"],
                &identify["anonymousId"],
                &identify["$distinct_id"]
            ),
            (&json!("user_1"), &json!("anon_9"), &json!("user_1"))
        );
        assert!(
            to_message(&originals[2]).get("$distinct_id").is_none(),
            "transformations see a plain message"
        );
    }

    #[test]
    fn messages_map_back_to_the_same_event() {
        for a in posthog_events().into_iter().chain(segment_events()) {
            let message = to_message(&a);
            assert_eq!(message["messageId"], a["id"]);
            assert_eq!(message["type"], a["type"]);
            let b = from_message(message, &a).unwrap();
            assert_eq!(b, a, "{}", a["event"]);
        }
        // A transformation's changes come through; what the message does not say, from the original.
        let a = &segment_events()[0];
        let mut message = to_message(a);
        message["event"] = json!("tool_called");
        message["properties"]["extra_prop"] = json!(1);
        message.as_object_mut().unwrap().remove("integrations");
        let b = from_message(message, a).unwrap();
        assert_eq!(
            (b["event"].as_str(), b["properties"]["extra_prop"].as_i64()),
            (Some("tool_called"), Some(1))
        );
        assert_eq!(
            (&b["project_id"], &b["received_at"], &b["request_ip"]),
            (&a["project_id"], &a["received_at"], &a["request_ip"])
        );
        assert!(b["extra"].get("integrations").is_none());
        assert!(from_message(json!({"type": "track", "event": "x"}), a)
            .unwrap_err()
            .contains("anonymousId"));
    }

    #[test]
    fn posthog_batches_are_shaped_as_posthogs_exporter_sends_them() {
        let events = posthog_events();
        let rendered = render(&posthog_config(), &events, now());
        assert_eq!(
            rendered.requests[0].url.as_str(),
            "http://b.example:8000/batch/"
        );
        let body: Value = serde_json::from_slice(&rendered.requests[0].body).unwrap();
        assert_eq!(body["api_key"], "phc_b");
        assert!(
            body.get("sent_at").is_none() && body.get("historical_migration").is_none(),
            "{body}"
        );
        let first = &body["batch"][0];
        assert_eq!(first["uuid"], "0190b2a1-0000-7000-8000-000000000001");
        assert_eq!(first["timestamp"], events[0]["timestamp"]);
        assert_eq!(first["properties"]["$ip"], "203.0.113.7");
        // Days later, events are not historical for their age: only events taken in as a
        // historical migration make a batch one.
        let later = render(&posthog_config(), &events, now() + chrono::TimeDelta::hours(49));
        let body: Value = serde_json::from_slice(&later.requests[0].body).unwrap();
        assert!(body.get("historical_migration").is_none(), "{body}");
        let migrated: Vec<Value> = events
            .iter()
            .map(|e| {
                let mut e = e.clone();
                e["extra"]["historical_migration"] = json!(true);
                e
            })
            .collect();
        for request in &render(&posthog_config(), &migrated, now()).requests {
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            assert_eq!(body["historical_migration"], true);
        }
        // Events PostHog would refuse the batch for are kept out of it.
        let mut bad = events[0].clone();
        bad["distinct_id"] = json!("");
        let mut big = events[1].clone();
        big["properties"]["blob"] = json!("x".repeat(POSTHOG_MAX_EVENT_BYTES));
        let mut cookieless = events[1].clone();
        cookieless["properties"]["$cookieless_mode"] = json!("yes");
        let rendered = render(
            &posthog_config(),
            &[events[2].clone(), bad, big, cookieless, json!({"id": 1})],
            now(),
        );
        let refused: Vec<usize> = rendered.refused.iter().map(|(i, _)| *i).collect();
        assert_eq!(refused, [1, 2, 3, 4], "{:?}", rendered.refused);
        assert!(
            rendered.refused[1].1.contains("bytes"),
            "{:?}",
            rendered.refused
        );
        assert_eq!(
            rendered
                .requests
                .iter()
                .flat_map(|r| r.events.clone())
                .collect::<Vec<_>>(),
            [0]
        );
        // Non-UUID ids get a UUID derived from them, the same on every attempt.
        assert_eq!(
            posthog_uuid("ajs-next-6b1f0c"),
            posthog_uuid("ajs-next-6b1f0c")
        );
        assert_ne!(
            posthog_uuid("ajs-next-6b1f0c"),
            posthog_uuid("ajs-next-6b1f0d")
        );
        assert!(uuid::Uuid::parse_str(&posthog_uuid("m-1")).is_ok());
    }

    #[test]
    fn posthog_requests_hold_at_most_5000_events() {
        let event = &posthog_events()[1];
        let events = vec![event.clone(); 12_001];
        let rendered = render(&posthog_config(), &events, now());
        let sizes: Vec<usize> = rendered.requests.iter().map(|r| r.events.len()).collect();
        assert_eq!(sizes, [5000, 5000, 2001]);
        assert_eq!(rendered.requests[2].events[0], 10_000);
    }

    #[test]
    fn segment_requests_respect_the_byte_and_event_limits() {
        let mut event = segment_events()[1].clone();
        event["properties"]["blob"] = json!("x".repeat(10_000));
        let events = vec![event.clone(); 120];
        let rendered = render(&segment_config(), &events, now());
        assert!(rendered.refused.is_empty());
        assert!(rendered.requests.len() >= 3, "{}", rendered.requests.len());
        let mut next = 0;
        for request in &rendered.requests {
            assert!(
                request.body.len() <= SEGMENT_MAX_BYTES,
                "{}",
                request.body.len()
            );
            assert_eq!(request.url.as_str(), "http://b.example:8000/v1/batch");
            assert_eq!(header(request, "authorization"), Some("Basic d2tfYjo="));
            let body: Value = serde_json::from_slice(&request.body).unwrap();
            assert_eq!(
                body["batch"].as_array().unwrap().len(),
                request.events.len()
            );
            assert_eq!(body["sentAt"], format_time(now()));
            assert_eq!(body["batch"][0]["sentAt"], format_time(now()));
            assert_eq!(
                request.events,
                (next..next + request.events.len()).collect::<Vec<_>>()
            );
            next += request.events.len();
        }
        assert_eq!(next, 120);
        // RudderStack takes the same events in one request.
        let rudder = DestinationConfig::Rudderstack {
            url: "http://r.example/v1/batch".parse().unwrap(),
            write_key: "k".into(),
        };
        let rendered = render(&rudder, &events, now());
        assert_eq!(rendered.requests.len(), 1);
        assert_eq!(
            rendered.requests[0].url.as_str(),
            "http://r.example/v1/batch"
        );
        // Small events: at most 5,000 a request to RudderStack.
        let small = vec![segment_events()[4].clone(); 5_100];
        let sizes: Vec<usize> = render(&rudder, &small, now())
            .requests
            .iter()
            .map(|r| r.events.len())
            .collect();
        assert_eq!(sizes, [5000, 100]);
        // Over 32 KB a message, Segment refuses it: dead-lettered, the others sent.
        event["properties"]["blob"] = json!("x".repeat(40_000));
        let rendered = render(
            &segment_config(),
            &[events[0].clone(), event.clone()],
            now(),
        );
        assert_eq!(rendered.refused.len(), 1);
        assert_eq!(rendered.refused[0].0, 1);
        assert_eq!(
            rendered
                .requests
                .iter()
                .flat_map(|r| r.events.clone())
                .collect::<Vec<_>>(),
            [0]
        );
        assert_eq!(
            render(&rudder, &[event], now()).refused.len(),
            0,
            "RudderStack has no per-event limit"
        );
    }

    fn webhook(secret: Option<&str>, max_batch_events: usize) -> DestinationConfig {
        DestinationConfig::Webhook {
            url: "http://hooks.example/in".parse().unwrap(),
            secret: secret.map(str::to_owned),
            headers: [("Authorization".to_owned(), "Bearer t".to_owned())].into(),
            max_batch_events,
        }
    }

    #[test]
    fn standard_webhooks_golden_vector() {
        let key =
            crate::destination::webhook_key("whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD").unwrap();
        let signature = sign(
            &key,
            "msg_27UH4WbU6Z5A5EzD8u03UvzRbpk",
            "1649367553",
            br#"{"email":"test@example.com","username":"test_user"}"#,
        );
        assert_eq!(signature, "v1,tZ1I4/hDygAJgO5TYxiSd6Sd0kDW6hPenDe+bTa3Kkw=");
    }

    #[test]
    fn webhooks_are_chunked_and_signed_with_a_stable_id() {
        let secret = "whsec_C2FVsBQIhrscChlQIMV+b5sSYspob7oD";
        let events: Vec<Value> = posthog_events()
            .into_iter()
            .chain(segment_events())
            .collect();
        let config = webhook(Some(secret), 4);
        let first = render(&config, &events, now());
        let second = render(&config, &events, now() + chrono::TimeDelta::seconds(90));
        let sizes: Vec<usize> = first.requests.iter().map(|r| r.events.len()).collect();
        assert_eq!(sizes, [4, 4, 4, 3]);
        let key = crate::destination::webhook_key(secret).unwrap();
        let mut ids = BTreeSet::new();
        for (a, b) in first.requests.iter().zip(&second.requests) {
            // The body is the events as given.
            let body: Vec<Value> = serde_json::from_slice(&a.body).unwrap();
            assert_eq!(
                body,
                a.events
                    .iter()
                    .map(|&i| events[i].clone())
                    .collect::<Vec<_>>()
            );
            assert_eq!(header(a, "content-type"), Some("application/json"));
            assert_eq!(header(a, "Authorization"), Some("Bearer t"));
            let id = header(a, "webhook-id").unwrap();
            assert_eq!(
                header(b, "webhook-id"),
                Some(id),
                "the same events, the same id"
            );
            assert!(ids.insert(id.to_owned()), "other events, another id");
            assert_eq!(
                header(a, "webhook-timestamp"),
                Some(now().timestamp().to_string().as_str())
            );
            assert_ne!(
                header(a, "webhook-timestamp"),
                header(b, "webhook-timestamp")
            );
            let ts = header(a, "webhook-timestamp").unwrap();
            assert_eq!(
                header(a, "webhook-signature"),
                Some(sign(&key, id, ts, &a.body).as_str())
            );
        }
        // A half of a batch (the router's split) is other events: another id.
        let half = render(&config, &events[..2], now());
        assert!(!ids.contains(header(&half.requests[0], "webhook-id").unwrap()));
        // Unsigned without a secret.
        let plain = render(&webhook(None, 1000), &events, now());
        assert_eq!(plain.requests.len(), 1);
        assert!(header(&plain.requests[0], "webhook-signature").is_none());
        // By bytes: past the request limit, another request; one event past it alone, refused.
        let big = json!({"id": "x", "blob": "y".repeat(WEBHOOK_MAX_BYTES / 2)});
        let rendered = render(
            &webhook(None, 1000),
            &[big.clone(), big.clone(), big],
            now(),
        );
        assert_eq!(
            rendered
                .requests
                .iter()
                .map(|r| r.events.clone())
                .collect::<Vec<_>>(),
            [vec![0], vec![1], vec![2]]
        );
        let huge = json!({"id": "x", "blob": "y".repeat(WEBHOOK_MAX_BYTES)});
        let rendered = render(&webhook(None, 1000), &[events[0].clone(), huge], now());
        assert_eq!(
            rendered.refused.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [1]
        );
    }
}

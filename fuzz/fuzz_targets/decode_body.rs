//! Untrusted request bytes through every decoder and both wire formats: nothing may panic,
//! and decoded output never exceeds the decompression limit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchyard_event::decode::{decode_posthog_body, decode_segment_body, BodyHints, DecodeLimits};
use switchyard_event::{posthog, segment, EventLimits, RequestMeta};

const LIMITS: DecodeLimits = DecodeLimits { max_decompressed_bytes: 1 << 20 };

fuzz_target!(|data: &[u8]| {
    // The first byte picks the request's hints, the rest is the body.
    let Some((&selector, body)) = data.split_first() else { return };
    let content_type = match selector & 3 {
        0 => None,
        1 => Some("application/x-www-form-urlencoded"),
        2 => Some("text/plain"),
        _ => Some("application/json"),
    };
    let query = match (selector >> 2) & 3 {
        0 => None,
        1 => Some("compression=gzip-js"),
        2 => Some("compression=lz64&_=1795609026554"),
        _ => Some("compression=base64"),
    };
    let hints = BodyHints {
        query,
        content_type,
        content_encoding: if selector & 16 != 0 { Some("gzip") } else { None },
        legacy_path: selector & 32 != 0,
    };
    let meta = RequestMeta { project_id: 1, received_at: chrono::Utc::now(), traceparent: None, ip: None };
    let limits = EventLimits::default();

    if let Ok(json) = decode_posthog_body(body, &hints, LIMITS) {
        assert!(json.len() <= LIMITS.max_decompressed_bytes);
        if let Ok(request) = posthog::parse_capture_request(&json, None, &limits) {
            let ctx = posthog::PosthogContext {
                meta: &meta,
                sent_at: request.sent_at,
                historical_migration: request.historical_migration,
                engage: selector & 64 != 0,
                limits: &limits,
            };
            let n = request.events.len();
            let out = posthog::normalize(request.events, &ctx);
            assert_eq!(out.accepted.len() + out.invalid.len(), n, "every event has one outcome");
            for event in &out.accepted {
                // Every stored event reads back as the unified event.
                let back: switchyard_event::Event = serde_json::from_str(&event.event_json()).unwrap();
                assert_eq!(back.id, event.id);
                assert_eq!(event.timestamp.len(), 27, "fixed-width timestamp {}", event.timestamp);
            }
            for invalid in &out.invalid {
                serde_json::from_str::<serde_json::Value>(&invalid.raw).unwrap();
            }
        }
    }
    if let Ok(json) = decode_segment_body(body, hints.content_encoding, LIMITS) {
        assert!(json.len() <= LIMITS.max_decompressed_bytes);
        if let Ok(request) = segment::parse_segment_request(&json, None, &limits) {
            let ctx = segment::SegmentContext { meta: &meta, batch_sent_at: request.sent_at.as_deref(), limits: &limits };
            let n = request.events.len();
            let out = segment::normalize(request.events, &ctx);
            assert_eq!(out.accepted.len() + out.invalid.len(), n, "every event has one outcome");
        }
    }
});

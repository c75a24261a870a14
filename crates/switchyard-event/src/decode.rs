//! Turning the raw bytes of an intake request into JSON text.
//!
//! PostHog SDKs send bodies in many shapes (see `docs/protocols.md`): raw JSON, gzip (recognised
//! by its magic bytes whatever the headers say), lz-string (`compression=lz64`), base64, form
//! `data=` fields and `GET ?data=`. RudderStack and Segment SDKs send JSON, optionally gzipped,
//! with content types that cannot be trusted (rudder-sdk-node labels gzipped JSON as a form).
//!
//! Every decompression is bounded by [`DecodeLimits::max_decompressed_bytes`], so a
//! decompression bomb costs at most that much memory.

use std::io::Read;

use base64::Engine as _;

use crate::error::Rejection;
use crate::lz_string::LzError;

/// Bounds applied while decoding.
#[derive(Debug, Clone, Copy)]
pub struct DecodeLimits {
    /// Largest decoded (decompressed) payload accepted.
    pub max_decompressed_bytes: usize,
}

/// What the request said about its body, besides the body itself.
#[derive(Debug, Default, Clone)]
pub struct BodyHints<'a> {
    /// The raw query string, without `?`.
    pub query: Option<&'a str>,
    pub content_type: Option<&'a str>,
    pub content_encoding: Option<&'a str>,
    /// `/e`, `/capture`, `/engage`, `/track`: PostHog's legacy paths get a second base64 pass.
    pub legacy_path: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Compression {
    None,
    Gzip,
    LzString,
    Base64,
}

fn compression_from_hint(hint: &str) -> Compression {
    match hint.trim().to_ascii_lowercase().as_str() {
        "gzip" | "gzip-js" => Compression::Gzip,
        "lz64" | "lz-string" => Compression::LzString,
        "base64" | "b64" => Compression::Base64,
        _ => Compression::None,
    }
}

const GZIP_MAGIC: [u8; 3] = [0x1f, 0x8b, 0x08];

fn is_gzip(bytes: &[u8]) -> bool {
    bytes.starts_with(&GZIP_MAGIC)
}

/// Query parameters PostHog's capture reads.
#[derive(Debug, Default, Clone)]
pub struct CaptureQuery {
    pub data: Option<String>,
    pub compression: Option<String>,
    /// `_` or `sent_at`, milliseconds since the epoch.
    pub sent_at_ms: Option<i64>,
    pub beacon: bool,
}

impl CaptureQuery {
    pub fn parse(query: Option<&str>) -> Self {
        let mut out = CaptureQuery::default();
        let Some(query) = query else { return out };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            match key.as_ref() {
                "data" if !value.is_empty() => out.data = Some(value.into_owned()),
                "compression" => out.compression = Some(value.into_owned()),
                "_" | "sent_at" => {
                    // Values that decode to a year before 2021 are seconds, not milliseconds:
                    // PostHog ignores them, and so do we.
                    out.sent_at_ms = value.parse::<i64>().ok().filter(|ms| *ms > 1_609_459_200_000)
                }
                "beacon" => out.beacon = value == "1",
                _ => {}
            }
        }
        out
    }
}

fn looks_like_base64(bytes: &[u8]) -> bool {
    if bytes.is_empty() || !bytes.len().is_multiple_of(4) {
        return false;
    }
    bytes
        .iter()
        .take(128)
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'='))
}

fn looks_like_form(bytes: &[u8]) -> bool {
    let text = &bytes[..bytes.len().min(4096)];
    ["data=", "_=", "ip=", "compression=", "ver="].iter().any(|field| {
        text.starts_with(field.as_bytes())
            || text.windows(field.len() + 1).any(|w| w[0] == b'&' && &w[1..] == field.as_bytes())
    })
}

/// Inflates gzip, stopping as soon as the output passes the limit; the output never holds
/// (nor reserves) more than the limit.
pub fn gunzip(bytes: &[u8], limits: DecodeLimits) -> Result<Vec<u8>, Rejection> {
    let limit = limits.max_decompressed_bytes;
    let mut decoder = flate2::read::GzDecoder::new(bytes);
    let mut out = Vec::with_capacity(bytes.len().saturating_mul(4).min(limit));
    let mut chunk = vec![0u8; 16 * 1024];
    loop {
        let n = match decoder.read(&mut chunk) {
            Ok(0) => return Ok(out),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Rejection::decoding(format!("invalid gzip data: {e}"))),
        };
        if out.len() + n > limit {
            return Err(Rejection::decompressed_too_large(limit));
        }
        if out.len() + n > out.capacity() {
            let target = (out.len() + n).max(out.capacity().saturating_mul(2)).min(limit);
            out.reserve_exact(target - out.len());
        }
        out.extend_from_slice(&chunk[..n]);
    }
}

/// Decodes lz-string's base64 form ([`crate::lz_string`]), stopping as soon as the output
/// passes the limit.
fn lz_string(bytes: &[u8], limits: DecodeLimits) -> Result<Vec<u8>, Rejection> {
    let limit = limits.max_decompressed_bytes;
    let text = std::str::from_utf8(bytes)
        .map_err(|_| Rejection::decoding("lz-string payload is not valid text".into()))?;
    // Form decoding turns '+' into ' '; lz-string's base64 alphabet needs them back.
    let chars = text.trim().bytes().map(|b| if b == b' ' { b'+' } else { b });
    // A unit is at least one byte of UTF-8, so more units than the limit is too large.
    let units = crate::lz_string::decompress_from_base64(chars, limit).map_err(|e| match e {
        LzError::Invalid => Rejection::decoding("invalid lz-string (lz64) data".into()),
        LzError::TooLarge => Rejection::decompressed_too_large(limit),
    })?;
    // UTF-8 sized exactly before it is written.
    let invalid = || Rejection::decoding("lz-string data is not valid UTF-16".into());
    let mut len = 0usize;
    for c in char::decode_utf16(units.iter().copied()) {
        len += c.map_err(|_| invalid())?.len_utf8();
        if len > limit {
            return Err(Rejection::decompressed_too_large(limit));
        }
    }
    let mut decoded = String::with_capacity(len);
    decoded.extend(char::decode_utf16(units.iter().copied()).map(|c| c.unwrap_or(char::REPLACEMENT_CHARACTER)));
    Ok(decoded.into_bytes())
}

fn base64_decode(bytes: &[u8]) -> Result<Vec<u8>, Rejection> {
    let cleaned: Vec<u8> = bytes
        .iter()
        .map(|b| if *b == b' ' { b'+' } else { *b })
        .filter(|b| !b.is_ascii_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(&cleaned)
        .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(&cleaned))
        .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(&cleaned))
        .map_err(|e| Rejection::decoding(format!("invalid base64 data: {e}")))
}

/// Decodes a PostHog capture (or flags) request body into JSON bytes, following capture-rs.
pub fn decode_posthog_body(
    body: &[u8],
    hints: &BodyHints<'_>,
    limits: DecodeLimits,
) -> Result<Vec<u8>, Rejection> {
    let query = CaptureQuery::parse(hints.query);
    let mut payload: Vec<u8> = match &query.data {
        Some(data) => data.as_bytes().to_vec(),
        None => body.to_vec(),
    };
    if payload.is_empty() {
        return Err(Rejection::empty_payload());
    }

    let mut compression = query
        .compression
        .as_deref()
        .map(compression_from_hint)
        .unwrap_or(Compression::None);

    let is_form_type = hints
        .content_type
        .map(|ct| ct.to_ascii_lowercase().starts_with("application/x-www-form-urlencoded"))
        .unwrap_or(false);

    if is_form_type && query.data.is_none() && !is_gzip(&payload) {
        if !looks_like_form(&payload) {
            return Err(Rejection::decoding("expected form data in POST request payload".into()));
        }
        let mut data = None;
        let mut form_compression = None;
        for (key, value) in form_urlencoded::parse(&payload) {
            match key.as_ref() {
                "data" => data = Some(value.into_owned()),
                "compression" => form_compression = Some(value.into_owned()),
                _ => {}
            }
        }
        let data = data.filter(|d| !d.is_empty()).ok_or_else(Rejection::empty_payload)?;
        if compression == Compression::None {
            compression = form_compression
                .as_deref()
                .map(compression_from_hint)
                .unwrap_or(Compression::None);
        }
        payload = data.into_bytes();
        if compression == Compression::None && looks_like_base64(&payload.replace_spaces()) {
            compression = Compression::Base64;
        }
    } else if compression == Compression::None && !is_gzip(&payload) && looks_like_base64(&payload) {
        // Optimistic base64: keep the original when it doesn't decode.
        if let Ok(decoded) = base64_decode(&payload) {
            payload = decoded;
        }
    }

    if compression == Compression::None {
        if let Some(encoding) = hints.content_encoding {
            compression = compression_from_hint(encoding);
        }
    }

    let mut text = if compression == Compression::Gzip || is_gzip(&payload) {
        gunzip(&payload, limits)?
    } else if compression == Compression::LzString {
        lz_string(&payload, limits)?
    } else if compression == Compression::Base64 {
        let decoded = base64_decode(&payload)?;
        if is_gzip(&decoded) {
            gunzip(&decoded, limits)?
        } else {
            decoded
        }
    } else {
        payload
    };

    if hints.legacy_path && looks_like_base64(&text) {
        if let Ok(decoded) = base64_decode(&text) {
            text = decoded;
        }
    }
    if text.len() > limits.max_decompressed_bytes {
        return Err(Rejection::decompressed_too_large(limits.max_decompressed_bytes));
    }
    if std::str::from_utf8(&text).is_err() {
        return Err(Rejection::decoding("invalid UTF-8 in request payload".into()));
    }
    Ok(text)
}

/// Decodes a RudderStack/Segment request body into JSON bytes: gzip when the header says so
/// or the bytes start with gzip's magic, whatever the content type.
pub fn decode_segment_body(
    body: &[u8],
    content_encoding: Option<&str>,
    limits: DecodeLimits,
) -> Result<Vec<u8>, Rejection> {
    if body.is_empty() {
        return Err(Rejection::empty_payload());
    }
    let gzip_header = content_encoding
        .map(|e| e.trim().eq_ignore_ascii_case("gzip"))
        .unwrap_or(false);
    let text = if gzip_header || is_gzip(body) { gunzip(body, limits)? } else { body.to_vec() };
    if text.len() > limits.max_decompressed_bytes {
        return Err(Rejection::decompressed_too_large(limits.max_decompressed_bytes));
    }
    Ok(text)
}

trait ReplaceSpaces {
    fn replace_spaces(&self) -> Vec<u8>;
}

impl ReplaceSpaces for Vec<u8> {
    fn replace_spaces(&self) -> Vec<u8> {
        self.iter().map(|b| if *b == b' ' { b'+' } else { *b }).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    const LIMITS: DecodeLimits = DecodeLimits { max_decompressed_bytes: 1 << 20 };

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(bytes).unwrap();
        enc.finish().unwrap()
    }

    #[test]
    fn gzip_is_recognised_by_magic_bytes_whatever_the_headers() {
        let body = gzip(br#"{"event":"x"}"#);
        let hints = BodyHints { content_type: Some("text/plain"), ..Default::default() };
        assert_eq!(decode_posthog_body(&body, &hints, LIMITS).unwrap(), br#"{"event":"x"}"#);
    }

    #[test]
    fn lz64_form_body() {
        let json = r#"[{"event":"tool_used","properties":{"distinct_id":"u"}}]"#;
        let packed = lz_str::compress_to_base64(json);
        let form: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("data", &packed)
            .append_pair("compression", "lz64")
            .finish();
        let hints = BodyHints {
            content_type: Some("application/x-www-form-urlencoded"),
            ..Default::default()
        };
        assert_eq!(decode_posthog_body(form.as_bytes(), &hints, LIMITS).unwrap(), json.as_bytes());
    }

    #[test]
    fn base64_form_body_with_pluses_eaten_by_url_decoding() {
        // A payload whose base64 contains '+', sent unescaped in a form: '+' becomes ' '.
        let json = r#"{"event":"a>>>?","distinct_id":"u~~~"}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        assert!(b64.contains('+') || b64.contains('/'));
        let body = format!("data={b64}");
        let hints = BodyHints {
            content_type: Some("application/x-www-form-urlencoded"),
            ..Default::default()
        };
        assert_eq!(decode_posthog_body(body.as_bytes(), &hints, LIMITS).unwrap(), json.as_bytes());
    }

    #[test]
    fn get_data_query() {
        let json = r#"{"event":"e","distinct_id":"u"}"#;
        let b64 = base64::engine::general_purpose::STANDARD.encode(json);
        let query: String =
            form_urlencoded::Serializer::new(String::new()).append_pair("data", &b64).finish();
        let hints = BodyHints { query: Some(&query), legacy_path: true, ..Default::default() };
        assert_eq!(decode_posthog_body(b"", &hints, LIMITS).unwrap(), json.as_bytes());
    }

    #[test]
    fn decompression_bomb_is_refused() {
        let body = gzip(&vec![b' '; 2 << 20]);
        let err = decode_posthog_body(&body, &BodyHints::default(), LIMITS).unwrap_err();
        assert_eq!(err.code, "decompressed_too_large");
    }

    #[test]
    fn gzip_output_up_to_the_limit_is_kept_and_one_byte_more_refused() {
        let limits = DecodeLimits { max_decompressed_bytes: 100_000 };
        let body = gzip(&vec![b' '; 100_000]);
        assert_eq!(decode_segment_body(&body, None, limits).unwrap().len(), 100_000);
        let body = gzip(&vec![b' '; 100_001]);
        assert_eq!(decode_segment_body(&body, None, limits).unwrap_err().code, "decompressed_too_large");
    }

    #[test]
    fn lz64_bombs_are_refused_on_every_path() {
        // A run compresses quadratically well: 1.2 MB of `{},` packs into a few KB.
        let packed = lz_str::compress_to_base64(&"{},".repeat(400_000));
        assert!(packed.len() < 8 * 1024, "{}", packed.len());
        let query: String = form_urlencoded::Serializer::new(String::new())
            .append_pair("data", &packed)
            .append_pair("compression", "lz64")
            .finish();
        let form_hints = BodyHints { content_type: Some("application/x-www-form-urlencoded"), ..Default::default() };
        let attempts = [
            // `GET /e/?data=…&compression=lz64`, as an `<img>` tag can send it.
            decode_posthog_body(b"", &BodyHints { query: Some(&query), legacy_path: true, ..Default::default() }, LIMITS),
            decode_posthog_body(query.as_bytes(), &form_hints, LIMITS),
            decode_posthog_body(packed.as_bytes(), &BodyHints { query: Some("compression=lz64"), ..Default::default() }, LIMITS),
        ];
        for attempt in attempts {
            let err = attempt.unwrap_err();
            assert_eq!((err.status, err.code), (413, "decompressed_too_large"));
        }
        // Non-ASCII text counts in UTF-8 bytes: 'é' is one unit and two bytes.
        let limits = DecodeLimits { max_decompressed_bytes: 1000 };
        let hints = BodyHints { query: Some("compression=lz64"), ..Default::default() };
        let packed = lz_str::compress_to_base64(&"é".repeat(500));
        assert_eq!(decode_posthog_body(packed.as_bytes(), &hints, limits).unwrap(), "é".repeat(500).as_bytes());
        let packed = lz_str::compress_to_base64(&"é".repeat(501));
        assert_eq!(decode_posthog_body(packed.as_bytes(), &hints, limits).unwrap_err().code, "decompressed_too_large");
        // A lone surrogate is not text; a pair is.
        let packed = lz_str::compress_to_base64(&[0x61u16, 0xD83D][..]);
        assert_eq!(decode_posthog_body(packed.as_bytes(), &hints, limits).unwrap_err().code, "request_decoding_error");
        let packed = lz_str::compress_to_base64(&[0x61u16, 0xD83D, 0xDE00][..]);
        assert_eq!(decode_posthog_body(packed.as_bytes(), &hints, limits).unwrap(), "a😀".as_bytes());
    }

    #[test]
    fn corrupt_gzip_names_the_problem() {
        let mut body = gzip(b"{\"event\":\"x\"}");
        let n = body.len();
        body.truncate(n - 6);
        let err = decode_segment_body(&body, Some("gzip"), LIMITS).unwrap_err();
        assert!(err.message.contains("gzip"), "{}", err.message);
    }

    #[test]
    fn empty_payload() {
        let err = decode_posthog_body(b"", &BodyHints::default(), LIMITS).unwrap_err();
        assert_eq!(err.code, "empty_payload");
    }

    #[test]
    fn sent_at_query_in_seconds_is_ignored() {
        assert_eq!(CaptureQuery::parse(Some("_=1795609026554")).sent_at_ms, Some(1795609026554));
        assert_eq!(CaptureQuery::parse(Some("_=1795609026")).sent_at_ms, None);
    }
}

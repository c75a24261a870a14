//! JSON objects kept as text: an object is a sorted list of `(key, raw value)` entries that
//! borrow from the request body, so an event's properties are copied into the stored event
//! instead of being parsed into `Value`s and written out again (the most expensive part of
//! intake). Only the few values the intake reads are parsed.
//!
//! What `serde_json`'s raw values do not check is checked here, so that every stored event
//! reads back as a `Value`: numbers out of `f64`'s range, lone UTF-16 surrogates in `\u`
//! escapes and nesting past `serde_json`'s recursion limit are validated the way `Value`
//! parsing does, and rejected with its message.

use std::borrow::Cow;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::Value;

/// Nesting past this is parsed as a `Value` to check it: `serde_json` refuses 128 levels.
const DEEP: usize = 100;

/// What a scan learned about one raw value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    /// Nesting depth of objects and arrays (0 for a scalar).
    pub depth: usize,
    /// Length of the text without insignificant whitespace.
    pub len: usize,
    /// Whether the text has insignificant whitespace, dropped when it is copied.
    pub spaced: bool,
}

/// One entry of a raw object.
#[derive(Debug, Clone)]
pub struct Entry<'a> {
    pub key: Cow<'a, str>,
    pub raw: &'a RawValue,
    pub shape: Shape,
}

impl<'a> Entry<'a> {
    /// An entry whose value is not measured yet.
    pub(crate) fn unscanned(key: Cow<'a, str>, raw: &'a RawValue) -> Self {
        Entry { key, raw, shape: Shape { depth: 0, len: 0, spaced: false } }
    }
}

/// A JSON object as sorted, unique `(key, raw value)` entries. A repeated key keeps its last
/// value, as `serde_json`'s `Value` does.
#[derive(Debug, Clone, Default)]
pub struct RawObject<'a> {
    entries: Vec<Entry<'a>>,
}

impl<'a> RawObject<'a> {
    /// Builds an object from entries in any order; the last of a repeated key wins.
    pub fn from_entries(mut entries: Vec<Entry<'a>>) -> Self {
        // A stable sort keeps repeated keys in their order. `dedup_by` drops `later` when told
        // to, so a repeated key's later entry is first swapped into the place that stays.
        entries.sort_by(|a, b| key_cmp(&a.key, &b.key));
        entries.dedup_by(|later, kept| {
            let repeated = key_cmp(&later.key, &kept.key).is_eq();
            if repeated {
                std::mem::swap(later, kept);
            }
            repeated
        });
        RawObject { entries }
    }

    /// Parses the entries of an object's raw text and scans each value; `Ok(None)` if the
    /// value is not an object.
    pub fn parse(raw: &'a RawValue) -> Result<Option<Self>, serde_json::Error> {
        if !raw.get().starts_with('{') {
            return Ok(None);
        }
        let mut deserializer = serde_json::Deserializer::from_str(raw.get());
        let entries = deserializer.deserialize_map(EntriesVisitor)?;
        Ok(Some(Self::scanned(entries)?))
    }

    /// Scans every value of parsed entries (see [`scan`]), measuring them in place.
    pub fn scanned(mut entries: Vec<Entry<'a>>) -> Result<Self, serde_json::Error> {
        for entry in &mut entries {
            entry.shape = scan(entry.raw)?;
        }
        Ok(Self::from_entries(entries))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
    pub fn entries(&self) -> &[Entry<'a>] {
        &self.entries
    }
    pub fn into_entries(self) -> Vec<Entry<'a>> {
        self.entries
    }

    fn position(&self, key: &str) -> Result<usize, usize> {
        self.entries.binary_search_by(|e| key_cmp(&e.key, key))
    }
    pub fn contains_key(&self, key: &str) -> bool {
        self.position(key).is_ok()
    }
    pub fn get(&self, key: &str) -> Option<&'a RawValue> {
        self.position(key).ok().map(|i| self.entries[i].raw)
    }
    pub fn remove(&mut self, key: &str) -> Option<Entry<'a>> {
        self.position(key).ok().map(|i| self.entries.remove(i))
    }
    /// Sets an entry, replacing one with the same key.
    pub fn insert(&mut self, entry: Entry<'a>) {
        match self.position(&entry.key) {
            Ok(i) => self.entries[i] = entry,
            Err(i) => self.entries.insert(i, entry),
        }
    }
    /// Keeps the entries whose key passes `keep`.
    pub fn retain(&mut self, mut keep: impl FnMut(&str) -> bool) {
        self.entries.retain(|e| keep(&e.key));
    }

    /// A string value, unescaped.
    pub fn str(&self, key: &str) -> Option<Cow<'a, str>> {
        self.get(key).and_then(as_str)
    }
    /// Any value, parsed.
    pub fn value(&self, key: &str) -> Option<Value> {
        self.get(key).map(to_value)
    }

    /// The shape of the object written out compactly.
    pub fn shape(&self) -> Shape {
        let mut depth = 0;
        let mut len = 2 + self.entries.len().saturating_sub(1);
        let mut spaced = false;
        for e in &self.entries {
            depth = depth.max(e.shape.depth);
            len += e.key.len() + 3 + e.shape.len;
            spaced |= e.shape.spaced;
        }
        Shape { depth: depth + 1, len, spaced }
    }

    /// Writes the object as compact JSON.
    pub fn write(&self, out: &mut Vec<u8>) {
        out.push(b'{');
        for (i, e) in self.entries.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            write_key(out, &e.key);
            out.push(b':');
            write_raw(out, e.raw, e.shape);
        }
        out.push(b'}');
    }

    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(self.shape().len);
        self.write(&mut out);
        String::from_utf8(out).expect("JSON text is UTF-8")
    }
}

/// Orders keys as `str` does (bytewise). Keys are short: a loop the compiler inlines beats a
/// `memcmp` call per comparison, and sorting and looking up entries is mostly comparisons.
fn key_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    for (x, y) in a.iter().zip(b) {
        if x != y {
            return x.cmp(y);
        }
    }
    a.len().cmp(&b.len())
}

/// Writes an object key. A key borrowed from the text had no escapes there, so it holds no
/// character that needs one.
#[allow(clippy::ptr_arg, reason = "whether the key is borrowed is what tells it needs no escaping")]
pub fn write_key(out: &mut Vec<u8>, key: &Cow<'_, str>) {
    match key {
        Cow::Borrowed(key) => {
            out.push(b'"');
            out.extend_from_slice(key.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(key) => write_str(out, key),
    }
}

/// Writes a JSON string with `serde_json`'s escaping.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing to a Vec cannot fail");
}

/// Copies a raw value, without its insignificant whitespace.
pub fn write_raw(out: &mut Vec<u8>, raw: &RawValue, shape: Shape) {
    let bytes = raw.get().as_bytes();
    if !shape.spaced {
        out.extend_from_slice(bytes);
        return;
    }
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i);
                out.extend_from_slice(&bytes[i..end]);
                i = end;
            }
            b' ' | b'\n' | b'\r' | b'\t' => i += 1,
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
}

/// The index just past the string starting with the quote at `start` (valid JSON).
fn string_end(bytes: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(offset) = memchr::memchr2(b'"', b'\\', &bytes[i..]) {
        i += offset;
        if bytes[i] == b'"' {
            return i + 1;
        }
        i += 2;
    }
    bytes.len()
}

/// Measures a raw value and checks what `serde_json`'s raw values leave unchecked: a number
/// that overflows `f64`, a `\u` escape of a UTF-16 surrogate (a lone one is invalid) or
/// nesting deep enough for the recursion limit. Such a value is parsed as a `Value`, and its
/// error is returned.
pub fn scan(raw: &RawValue) -> Result<Shape, serde_json::Error> {
    let bytes = raw.get().as_bytes();
    let scalar = |check: bool| {
        if check {
            serde_json::from_str::<Value>(raw.get())?;
        }
        Ok(Shape { depth: 0, len: bytes.len(), spaced: false })
    };
    match bytes.first() {
        // A string without escapes, a literal, a short number without an exponent: nothing
        // to check and no whitespace inside.
        Some(b'"') => return scalar(memchr::memchr(b'\\', bytes).is_some() && has_surrogate_escape(bytes)),
        Some(b'-' | b'0'..=b'9') => {
            return scalar(bytes.len() > 300 || memchr::memchr2(b'e', b'E', bytes).is_some())
        }
        Some(b't' | b'f' | b'n') => return scalar(false),
        _ => {}
    }
    let (mut depth, mut max_depth, mut whitespace) = (0usize, 0usize, 0usize);
    let mut check = false;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i);
                let text = &bytes[i..end];
                if memchr::memchr(b'\\', text).is_some() {
                    check |= has_surrogate_escape(text);
                }
                i = end;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                max_depth = max_depth.max(depth);
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            b' ' | b'\n' | b'\r' | b'\t' => whitespace += 1,
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < bytes.len() && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    check |= matches!(bytes[i], b'e' | b'E');
                    i += 1;
                }
                // Only an exponent or hundreds of digits can leave `f64`'s range.
                check |= i - start > 300;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    if check || max_depth > DEEP {
        serde_json::from_str::<Value>(raw.get())?;
    }
    Ok(Shape { depth: max_depth, len: bytes.len() - whitespace, spaced: whitespace > 0 })
}

/// Whether JSON text holds a `\u` escape of a UTF-16 surrogate.
fn has_surrogate_escape(text: &[u8]) -> bool {
    text.windows(4).any(|w| {
        w[0] == b'\\' && w[1] == b'u' && matches!(w[2], b'd' | b'D') && matches!(w[3], b'8'..=b'9' | b'a'..=b'f' | b'A'..=b'F')
    })
}

/// A raw string value, unescaped; `None` for other values.
pub fn as_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    if !text.starts_with('"') {
        return None;
    }
    let inner = &text[1..text.len() - 1];
    if !inner.contains('\\') {
        return Some(Cow::Borrowed(inner));
    }
    serde_json::from_str::<String>(text).ok().map(Cow::Owned)
}

/// A raw value parsed (scanned values always parse).
pub fn to_value(raw: &RawValue) -> Value {
    serde_json::from_str(raw.get()).unwrap_or(Value::Null)
}

/// An object key: borrowed from the text unless it holds escapes.
pub(crate) struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(KeyVisitor)
    }
}

struct KeyVisitor;

impl<'de> Visitor<'de> for KeyVisitor {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

/// An object's entries, each value left as raw text.
pub(crate) struct EntriesVisitor;

impl<'de> Visitor<'de> for EntriesVisitor {
    type Value = Vec<Entry<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }
    fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Self::Value, A::Error> {
        entries(map)
    }
}

/// An object's entries as parsed: not scanned yet (see [`RawObject::scanned`]).
pub(crate) fn entries<'de, A: MapAccess<'de>>(mut map: A) -> Result<Vec<Entry<'de>>, A::Error> {
    // Nothing reserved ahead: an empty object costs no allocation.
    let mut entries = Vec::new();
    while let Some(key) = map.next_key_seed(KeySeed)? {
        let raw: &'de RawValue = map.next_value()?;
        entries.push(Entry::unscanned(key, raw));
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn objects_are_sorted_and_the_last_repeated_key_wins() {
        let object = RawObject::parse(raw(r#"{"z": 1, "a": [1, {"b": 2}], "m": "x", "a": "last"}"#)).unwrap().unwrap();
        assert_eq!(object.entries().iter().map(|e| e.key.as_ref()).collect::<Vec<_>>(), ["a", "m", "z"]);
        assert_eq!(object.to_json(), r#"{"a":"last","m":"x","z":1}"#);
        let parsed: Value = serde_json::from_str(&object.to_json()).unwrap();
        assert_eq!(parsed, serde_json::from_str::<Value>(r#"{"z": 1, "a": [1, {"b": 2}], "m": "x", "a": "last"}"#).unwrap());
    }

    #[test]
    fn whitespace_is_dropped_outside_strings_only() {
        let text = "{ \"k\" : [ 1 , \"a b\\\" c\" ,\n{ \"x\" :\ttrue } ] }";
        let object = RawObject::parse(raw(text)).unwrap().unwrap();
        assert_eq!(object.to_json(), r#"{"k":[1,"a b\" c",{"x":true}]}"#);
        assert_eq!(object.shape().len, object.to_json().len());
        assert_eq!(object.shape().depth, 3);
    }

    #[test]
    fn what_value_parsing_refuses_is_refused() {
        for bad in ["1e400", "[-1E309]", r#""\ud800""#, r#"{"a":"x\uDC00"}"#, &format!("1{}", "0".repeat(400))] {
            let err = scan(raw(bad)).unwrap_err();
            assert!(serde_json::from_str::<Value>(bad).is_err(), "{bad}: {err}");
        }
        let deep = format!("{}{}", "[".repeat(130), "]".repeat(130));
        assert!(scan(raw(&deep)).is_err());
        for good in ["1e300", "-0", "0.5", r#""\ud83d\ude00""#, r#""\u00e9""#, "18446744073709551616", "1e-400"] {
            assert!(scan(raw(good)).is_ok(), "{good}");
        }
        assert_eq!(scan(raw(&format!("{}{}", "[".repeat(40), "]".repeat(40)))).unwrap().depth, 40);
    }

    #[test]
    fn strings_are_unescaped() {
        assert_eq!(as_str(raw(r#""plain""#)).as_deref(), Some("plain"));
        assert_eq!(as_str(raw(r#""a\"b\u00e9""#)).as_deref(), Some("a\"bé"));
        assert_eq!(as_str(raw("12")), None);
    }
}

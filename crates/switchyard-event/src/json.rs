//! Parsing request bodies into `serde_json::Value` with objects built in one go.
//!
//! `serde_json`'s own `Value` parser inserts an object's entries one by one; SDK events are
//! objects of a dozen or more properties. Here an object's entries are gathered in a list
//! first and the object is built once from them (`serde_json::Map` is a `BTreeMap`: sorted and
//! built bottom-up). The result is the same `Value`.
//!
//! Nothing is reserved ahead of what the text holds: an empty object or array allocates
//! nothing (`[{},{},…]` is 3 bytes of text for each 32-byte `Value`). A non-empty object is
//! still a whole B-tree node (11 slots, about 630 bytes), so tiny objects cost up to ~90 times
//! their text: `Value` parsing is bounded by the input, not cheap in it.

use std::cell::Cell;
use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, Error as _, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Parses JSON text into a `Value`, exactly as `serde_json::from_slice` would.
pub fn parse(json: &[u8]) -> serde_json::Result<Value> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = ValueSeed(Cap::None).deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

/// Why [`parse_capped`] refused its input.
#[derive(Debug)]
pub enum CappedError {
    Json(serde_json::Error),
    /// The capped array holds more items than allowed.
    TooManyItems,
}

/// Parses JSON text as [`parse`] does, except that the array under `key` in the top-level
/// object is refused at its first item past `max_items`, before that item is built.
pub fn parse_capped(json: &[u8], key: &str, max_items: usize) -> Result<Value, CappedError> {
    let exceeded = Cell::new(false);
    let items = ItemsCap { max: max_items, exceeded: &exceeded };
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = ValueSeed(Cap::Key(key, items)).deserialize(&mut deserializer).and_then(|value| {
        deserializer.end()?;
        Ok(value)
    });
    value.map_err(|e| if exceeded.get() { CappedError::TooManyItems } else { CappedError::Json(e) })
}

/// At most `max` items in an array; `exceeded` tells the caller an error was this cap's.
#[derive(Clone, Copy)]
pub(crate) struct ItemsCap<'c> {
    pub max: usize,
    pub exceeded: &'c Cell<bool>,
}

impl ItemsCap<'_> {
    /// Called with `count` items read: fails if another one follows (skipped, not built).
    pub fn check<'de, A: SeqAccess<'de>>(&self, count: usize, seq: &mut A) -> Result<(), A::Error> {
        if count >= self.max && seq.next_element::<IgnoredAny>()?.is_some() {
            self.exceeded.set(true);
            return Err(A::Error::custom(format_args!("more than {} items", self.max)));
        }
        Ok(())
    }
}

/// Where a cap applies.
#[derive(Clone, Copy)]
enum Cap<'c> {
    None,
    /// To the array under this key of this object.
    Key(&'c str, ItemsCap<'c>),
    /// To this array.
    Items(ItemsCap<'c>),
}

struct ValueSeed<'c>(Cap<'c>);

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor(self.0))
    }
}

pub(crate) struct ValueVisitor<'c>(Cap<'c>);

/// A visitor without caps.
pub(crate) const VALUE_VISITOR: ValueVisitor<'static> = ValueVisitor(Cap::None);

impl<'de> Visitor<'de> for ValueVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any JSON value")
    }
    fn visit_bool<E>(self, v: bool) -> Result<Value, E> {
        Ok(Value::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Value, E> {
        Ok(Value::Number(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<Value, E> {
        Ok(Number::from_f64(v).map_or(Value::Null, Value::Number))
    }
    fn visit_str<E>(self, v: &str) -> Result<Value, E> {
        Ok(Value::String(v.to_owned()))
    }
    fn visit_string<E>(self, v: String) -> Result<Value, E> {
        Ok(Value::String(v))
    }
    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        ValueSeed(Cap::None).deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::new();
        loop {
            if let Cap::Items(cap) = self.0 {
                cap.check(items.len(), &mut seq)?;
            }
            match seq.next_element_seed(ValueSeed(Cap::None))? {
                Some(item) => items.push(item),
                None => break,
            }
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // Entries are gathered first, then the object is built at once (no more memory per
        // byte of JSON than serde_json's own parser takes).
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<String>()? {
            let cap = match self.0 {
                Cap::Key(capped, items) if key == capped => Cap::Items(items),
                _ => Cap::None,
            };
            let value = map.next_value_seed(ValueSeed(cap))?;
            entries.push((key, value));
        }
        // A repeated key keeps its last value, as with serde_json.
        Ok(Value::Object(entries.into_iter().collect::<Map<String, Value>>()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_serde_json_does() {
        for text in [
            r#"{"event":"tool_used","properties":{"n":1,"neg":-2,"big":18446744073709551615,"f":0.5,"e":1e300,
                "s":"a\"\u00e9\n","arr":[1,[2,{}],null,true,false],"o":{"k":{"x":[]}}},"dup":1,"dup":2}"#,
            "[]",
            "[1, \"two\", {\"three\": 3}]",
            "\"text\"",
            "null",
            "-0",
        ] {
            assert_eq!(parse(text.as_bytes()).unwrap(), serde_json::from_str::<Value>(text).unwrap(), "{text}");
        }
        // Objects are unordered (RFC 8259); keys come out sorted, as serde_json's map keeps them.
        let order = parse(br#"{"z":1,"a":2,"m":3}"#).unwrap();
        assert_eq!(order.as_object().unwrap().keys().collect::<Vec<_>>(), ["a", "m", "z"]);
    }

    #[test]
    fn rejects_what_serde_json_rejects() {
        for text in ["{", "{\"a\":}", "[1,]", "{\"a\":1} trailing", "", "nul", "{\"a\":1e999999}"] {
            assert_eq!(parse(text.as_bytes()).is_err(), serde_json::from_str::<Value>(text).is_err(), "{text}");
        }
    }
}

//! Parsing request bodies into `serde_json::Value` with objects built in one go.
//!
//! `serde_json`'s own `Value` parser inserts an object's entries one by one; SDK events are
//! objects of a dozen or more properties. Here an object's entries are gathered in a list
//! first and the object is built once from them (`serde_json::Map` is a `BTreeMap`: sorted and
//! built bottom-up). The result is the same `Value`.

use std::fmt;

use serde::de::{DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};

/// Entries gathered before the list of an object's entries grows.
const OBJECT_CAPACITY: usize = 16;

/// Parses JSON text into a `Value`, exactly as `serde_json::from_slice` would.
pub fn parse(json: &[u8]) -> serde_json::Result<Value> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let value = ValueSeed.deserialize(&mut deserializer)?;
    deserializer.end()?;
    Ok(value)
}

struct ValueSeed;

impl<'de> DeserializeSeed<'de> for ValueSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(ValueVisitor)
    }
}

pub(crate) struct ValueVisitor;

impl<'de> Visitor<'de> for ValueVisitor {
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
        ValueSeed.deserialize(deserializer)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element_seed(ValueSeed)? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        // Entries are gathered first, then the object is built at its exact size: no growth,
        // and no more memory per byte of JSON than serde_json's own parser takes.
        let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(OBJECT_CAPACITY));
        while let Some(key) = map.next_key::<String>()? {
            let value = map.next_value_seed(ValueSeed)?;
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

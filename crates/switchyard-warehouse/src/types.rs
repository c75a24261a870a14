//! Column types and values, as RudderStack infers them (`rudder-transformer:
//! src/warehouse/index.js` `getDataType`) and as its loader resolves conflicts
//! (`rudder-server: warehouse/schema`, the warehouse-discards docs):
//!
//! - a JSON number is `int` when it is a whole number (JavaScript's `Number.isInteger`, so
//!   `3.0` is `int`), else `float`; a boolean is `boolean`;
//! - a string that is an ISO 8601 date or date-time (years 0001–9999) is `datetime`, written
//!   back in one form (RFC 3339, UTC, microseconds — RudderStack's `toISOString()` keeps
//!   milliseconds; we keep what the event carries); any other string is `string`;
//! - arrays are written as their JSON text, typed `string` (objects are flattened before);
//! - `json` is only for columns declared so (the platform's `properties`, `context`).
//! - `decimal` is ours, not RudderStack's: exact money (`cost_usd`), written as plain decimal
//!   text with at most [`Decimal::SCALE`] fractional digits, loaded as NUMERIC/DECIMAL.
//!
//! Conflicts ([`coerce`]): the column's existing type wins. A value that fits is converted:
//! anything into `string` (its text), anything into `json`, an `int` into `float` (the one
//! widening), a whole `float` into `int`, a number into `decimal`. Anything else is refused
//! with RudderStack's reason, `incompatible schema conversion from <value type> to <column
//! type>`, and the caller writes a discard.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use switchyard_event::model::{format_time, parse_time};

/// A column type, named as RudderStack names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ColumnType {
    Int,
    Float,
    Boolean,
    String,
    Datetime,
    Json,
    /// Exact decimal (ours): plain decimal text, at most [`Decimal::SCALE`] fractional digits.
    Decimal,
}

impl ColumnType {
    pub fn as_str(self) -> &'static str {
        match self {
            ColumnType::Int => "int",
            ColumnType::Float => "float",
            ColumnType::Boolean => "boolean",
            ColumnType::String => "string",
            ColumnType::Datetime => "datetime",
            ColumnType::Json => "json",
            ColumnType::Decimal => "decimal",
        }
    }
}

impl std::fmt::Display for ColumnType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether a value creates no column: null, an empty string, an empty array (RudderStack's
/// `isBlank`, which tests the value's `toString()`).
pub fn is_blank(value: &Value) -> bool {
    match value {
        Value::Null => true,
        Value::String(s) => s.is_empty(),
        Value::Array(items) => items.is_empty(),
        _ => false,
    }
}

/// The type of a value and the value as it is written; `None` for a blank value.
pub fn infer(value: &Value) -> Option<(ColumnType, Value)> {
    if is_blank(value) {
        return None;
    }
    Some(match value {
        Value::Bool(_) => (ColumnType::Boolean, value.clone()),
        Value::Number(n) => match whole(n) {
            Some(i) => (ColumnType::Int, Value::from(i)),
            None => (ColumnType::Float, value.clone()),
        },
        Value::String(s) => match datetime(s) {
            Some(t) => (ColumnType::Datetime, Value::String(t)),
            None => (ColumnType::String, value.clone()),
        },
        Value::Array(_) | Value::Object(_) => (ColumnType::String, Value::String(value.to_string())),
        Value::Null => return None,
    })
}

/// A number as an `i64` when it is whole and fits.
fn whole(n: &serde_json::Number) -> Option<i64> {
    if let Some(i) = n.as_i64() {
        return Some(i);
    }
    let f = n.as_f64()?;
    // 2^63 is exactly representable; the range check keeps the cast exact.
    (f.fract() == 0.0 && (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f)).then_some(f as i64)
}

/// An ISO 8601 date or date-time (years 0001–9999) in the stored form, else `None`.
/// Only strings that start like a date (`YYYY-MM-DD`) are tried, as RudderStack's regex does.
pub fn datetime(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let date_like = b.len() >= 10 && b[..4].iter().all(u8::is_ascii_digit) && b[4] == b'-' && b[5..7].iter().all(u8::is_ascii_digit) && b[7] == b'-' && b[8..10].iter().all(u8::is_ascii_digit);
    if !date_like || s.trim() != s {
        return None;
    }
    let t = parse_time(s)?;
    switchyard_event::model::storable_time(&t).then(|| format_time(t))
}

/// A value's text as a discard records it: strings as they are, anything else as JSON.
pub fn value_text(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Fits `value` (of type `from`, as [`infer`] gave it) into a column of type `to`, or gives
/// the reason it cannot.
pub fn coerce(value: &Value, from: ColumnType, to: ColumnType) -> Result<Value, String> {
    use ColumnType as T;
    if from == to {
        return Ok(value.clone());
    }
    let refused = || Err(format!("incompatible schema conversion from {from} to {to}"));
    match (from, to) {
        (T::Json, T::String) => Ok(Value::String(value.to_string())),
        (_, T::String) => Ok(Value::String(value_text(value))),
        (_, T::Json) => Ok(value.clone()),
        (T::Int, T::Float) => Ok(value.as_f64().map(Value::from).unwrap_or_else(|| value.clone())),
        (T::Float, T::Int) => match value.as_number().and_then(whole) {
            Some(i) => Ok(Value::from(i)),
            None => refused(),
        },
        (T::Int | T::Float | T::String | T::Decimal, T::Decimal) => match Decimal::parse_value(value) {
            Some(d) => Ok(Value::String(d.to_string())),
            None => refused(),
        },
        _ => refused(),
    }
}

/// An exact decimal: an integer count of 10^-[`Decimal::SCALE`] units. Sums of decimals are
/// exact and so do not depend on their order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Decimal(pub i128);

impl Decimal {
    /// Fractional digits kept: 12 (a millionth of a micro-dollar; per-token prices have 8–9).
    /// Digits beyond are rounded half to even.
    pub const SCALE: u32 = 12;
    /// Digits kept in all (fits NUMERIC(38, 12) and Decimal128(38, 12)).
    pub const PRECISION: u32 = 38;

    /// Parses decimal text: `-1.25`, `0.000001`, `1.5e-7`, `12`. `None` for anything else or
    /// more than [`Decimal::PRECISION`] digits.
    pub fn parse(text: &str) -> Option<Decimal> {
        let s = text.trim();
        let (negative, s) = match s.strip_prefix('-') {
            Some(rest) => (true, rest),
            None => (false, s.strip_prefix('+').unwrap_or(s)),
        };
        let (mantissa, exponent) = match s.find(['e', 'E']) {
            Some(at) => (&s[..at], s[at + 1..].parse::<i32>().ok()?),
            None => (s, 0),
        };
        let (int_part, frac_part) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int_part.is_empty() && frac_part.is_empty() {
            return None;
        }
        if !int_part.bytes().chain(frac_part.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        // The digits, and the power of ten of the last one.
        let digits: Vec<u8> = int_part.bytes().chain(frac_part.bytes()).map(|b| b - b'0').skip_while(|&d| d == 0).collect();
        let last_power = exponent.checked_sub(i32::try_from(frac_part.len()).ok()?)?;
        // Units are 10^-SCALE: shift the digits by last_power + SCALE.
        let shift = last_power.checked_add(Self::SCALE as i32)?;
        let mut units: i128 = 0;
        let keep = if shift >= 0 { digits.len() } else { digits.len().saturating_sub(shift.unsigned_abs() as usize) };
        for &d in &digits[..keep] {
            units = units.checked_mul(10)?.checked_add(i128::from(d))?;
        }
        if shift > 0 {
            units = units.checked_mul(10_i128.checked_pow(shift as u32)?)?;
        }
        // Round half to even on the dropped digits.
        let dropped = &digits[keep..];
        if let Some((&first, rest)) = dropped.split_first() {
            let round_up = first > 5 || (first == 5 && (rest.iter().any(|&d| d != 0) || units % 2 == 1));
            if round_up {
                units = units.checked_add(1)?;
            }
        }
        if units >= 10_i128.pow(Self::PRECISION) {
            return None;
        }
        Some(Decimal(if negative { -units } else { units }))
    }

    /// A JSON number or numeric string as a decimal, from its text (never through a float).
    pub fn parse_value(value: &Value) -> Option<Decimal> {
        match value {
            Value::Number(n) => Decimal::parse(&n.to_string()),
            Value::String(s) => Decimal::parse(s),
            _ => None,
        }
    }

    pub fn checked_add(self, other: Decimal) -> Option<Decimal> {
        self.0.checked_add(other.0).filter(|u| u.unsigned_abs() < 10_u128.pow(Self::PRECISION)).map(Decimal)
    }
}

impl std::fmt::Display for Decimal {
    /// Plain decimal text, no exponent, no trailing fractional zeros: `0.0000015`, `12`, `-3.5`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scale = 10_u128.pow(Self::SCALE);
        let units = self.0.unsigned_abs();
        let sign = if self.0 < 0 { "-" } else { "" };
        let (int_part, frac_part) = (units / scale, units % scale);
        if frac_part == 0 {
            return write!(f, "{sign}{int_part}");
        }
        let frac = format!("{frac_part:012}");
        write!(f, "{sign}{int_part}.{}", frac.trim_end_matches('0'))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn types_are_inferred_as_rudderstack_does() {
        let t = |v: Value| infer(&v).map(|(t, v)| (t.as_str(), v));
        assert_eq!(t(json!(3)), Some(("int", json!(3))));
        assert_eq!(t(json!(3.0)), Some(("int", json!(3))), "Number.isInteger(3.0)");
        assert_eq!(t(json!(-2.5)), Some(("float", json!(-2.5))));
        assert_eq!(t(json!(1e300)), Some(("float", json!(1e300))), "whole but past i64");
        assert_eq!(t(json!(true)), Some(("boolean", json!(true))));
        assert_eq!(t(json!("hello")), Some(("string", json!("hello"))));
        assert_eq!(t(json!("2025-12-05T09:30:00Z")), Some(("datetime", json!("2025-12-05T09:30:00.000000Z"))));
        assert_eq!(t(json!("2025-12-05T10:30:00.5+01:00")), Some(("datetime", json!("2025-12-05T09:30:00.500000Z"))));
        assert_eq!(t(json!("2025-12-05")), Some(("datetime", json!("2025-12-05T00:00:00.000000Z"))));
        assert_eq!(t(json!("2025-13-05")), Some(("string", json!("2025-13-05"))), "not a date");
        assert_eq!(t(json!("12/05/2025")), Some(("string", json!("12/05/2025"))));
        assert_eq!(t(json!("1733390000")), Some(("string", json!("1733390000"))), "digits stay a string");
        assert_eq!(t(json!([1, "a"])), Some(("string", json!("[1,\"a\"]"))));
        assert_eq!(t(json!(null)), None);
        assert_eq!(t(json!("")), None);
        assert_eq!(t(json!([])), None);
    }

    #[test]
    fn the_column_type_wins_and_refusals_say_why() {
        use ColumnType as T;
        assert_eq!(coerce(&json!(3), T::Int, T::Float), Ok(json!(3.0)), "int widens to float");
        assert_eq!(coerce(&json!(3), T::Int, T::String), Ok(json!("3")), "an int is kept as text");
        assert_eq!(coerce(&json!(true), T::Boolean, T::String), Ok(json!("true")));
        assert_eq!(coerce(&json!("x"), T::String, T::Json), Ok(json!("x")));
        assert_eq!(coerce(&json!(2.5), T::Float, T::Int), Err("incompatible schema conversion from float to int".into()));
        assert_eq!(coerce(&json!("abc"), T::String, T::Int), Err("incompatible schema conversion from string to int".into()));
        assert_eq!(coerce(&json!("yes"), T::String, T::Boolean), Err("incompatible schema conversion from string to boolean".into()));
        assert_eq!(coerce(&json!("soon"), T::String, T::Datetime), Err("incompatible schema conversion from string to datetime".into()));
        assert_eq!(coerce(&json!(1), T::Int, T::Boolean), Err("incompatible schema conversion from int to boolean".into()));
        assert_eq!(coerce(&json!(0.0042), T::Float, T::Decimal), Ok(json!("0.0042")));
        assert_eq!(coerce(&json!("n/a"), T::String, T::Decimal), Err("incompatible schema conversion from string to decimal".into()));
    }

    #[test]
    fn decimals_are_exact() {
        let d = |s: &str| Decimal::parse(s).map(|d| d.to_string());
        assert_eq!(d("0.0042").as_deref(), Some("0.0042"));
        assert_eq!(d("1.5e-7").as_deref(), Some("0.00000015"));
        assert_eq!(d("1.5E+3").as_deref(), Some("1500"));
        assert_eq!(d("-3.50").as_deref(), Some("-3.5"));
        assert_eq!(d("12").as_deref(), Some("12"));
        assert_eq!(d(".5").as_deref(), Some("0.5"));
        assert_eq!(d("0.0000000000005").as_deref(), Some("0"), "half to even, down");
        assert_eq!(d("0.0000000000015").as_deref(), Some("0.000000000002"), "half to even, up");
        assert_eq!(d("0.00000000000051").as_deref(), Some("0.000000000001"));
        assert_eq!(d("1e30"), None, "past NUMERIC(38, 12)");
        for bad in ["", ".", "abc", "1.2.3", "1e", "--1", "0x10", "NaN"] {
            assert_eq!(d(bad), None, "{bad:?}");
        }
        // A float's shortest text is what is parsed: 0.1 + 0.2 sums exactly here.
        let sum = Decimal::parse_value(&json!(0.1)).unwrap().checked_add(Decimal::parse_value(&json!(0.2)).unwrap()).unwrap();
        assert_eq!(sum.to_string(), "0.3");
        assert_eq!(Decimal::parse_value(&json!(1.23e-5)).unwrap().to_string(), "0.0000123");
    }
}

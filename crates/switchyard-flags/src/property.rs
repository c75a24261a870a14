//! Property filters: operators, PostHog's coercion rules, and the values compiled once when a
//! flag set is loaded (regexes, numbers, absolute dates, versions), so evaluation does no
//! parsing of filter values.
//!
//! Semantics follow PostHog's flags service (`property_matching.rs`) as mirrored by
//! posthog-python's local evaluation, with one deliberate difference where they differ: the
//! server knows a person's stored properties, so a property the person does not have is not
//! "inconclusive" but simply absent (see [`missing_property`]).

use chrono::{DateTime, Datelike, Duration, NaiveDate, NaiveDateTime, Utc};
use regex::Regex;
use serde_json::{Map, Value};

use crate::FlagError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operator {
    Exact,
    IsNot,
    IsSet,
    IsNotSet,
    Icontains,
    NotIcontains,
    StartsWith,
    NotStartsWith,
    EndsWith,
    NotEndsWith,
    Regex,
    NotRegex,
    Gt,
    Gte,
    Lt,
    Lte,
    IsDateBefore,
    IsDateAfter,
    SemverEq,
    SemverNeq,
    SemverGt,
    SemverGte,
    SemverLt,
    SemverLte,
    SemverTilde,
    SemverCaret,
    SemverWildcard,
}

impl Operator {
    pub fn parse(s: &str) -> Option<Self> {
        use Operator::*;
        Some(match s {
            "exact" => Exact,
            "is_not" => IsNot,
            "is_set" => IsSet,
            "is_not_set" => IsNotSet,
            "icontains" => Icontains,
            "not_icontains" => NotIcontains,
            "starts_with" => StartsWith,
            "not_starts_with" => NotStartsWith,
            "ends_with" => EndsWith,
            "not_ends_with" => NotEndsWith,
            "regex" => Regex,
            "not_regex" => NotRegex,
            "gt" => Gt,
            "gte" => Gte,
            "lt" => Lt,
            "lte" => Lte,
            "is_date_before" => IsDateBefore,
            "is_date_after" => IsDateAfter,
            "semver_eq" => SemverEq,
            "semver_neq" => SemverNeq,
            "semver_gt" => SemverGt,
            "semver_gte" => SemverGte,
            "semver_lt" => SemverLt,
            "semver_lte" => SemverLte,
            "semver_tilde" => SemverTilde,
            "semver_caret" => SemverCaret,
            "semver_wildcard" => SemverWildcard,
            _ => return None,
        })
    }

    fn is_negative(self) -> bool {
        use Operator::*;
        matches!(self, IsNot | IsNotSet | NotIcontains | NotStartsWith | NotEndsWith | NotRegex | SemverNeq)
    }
}

type Version = (u64, u64, u64);

#[derive(Debug, Clone)]
enum DateFilter {
    Absolute(DateTime<Utc>),
    /// `-7d`: relative to the evaluation time.
    Relative { number: u32, unit: char },
}

#[derive(Debug, Clone)]
enum Compiled {
    Exact { truthy: Option<bool>, empty_list: bool, candidates: Vec<String> },
    Text(String),
    Regex(Regex),
    Number(f64),
    Date(DateFilter),
    Version(Version),
    Range(Version, Version),
    Nothing,
}

/// A property filter ready to match.
#[derive(Debug, Clone)]
pub struct PropertyMatcher {
    pub key: String,
    pub operator: Operator,
    compiled: Compiled,
}

impl PropertyMatcher {
    /// Compiles a filter. An operator or value the operator cannot use is an error naming it.
    pub fn compile(key: &str, operator: Option<&str>, value: &Value) -> Result<Self, FlagError> {
        let op_name = operator.unwrap_or("exact");
        let operator = Operator::parse(op_name)
            .ok_or_else(|| FlagError::invalid(format!("unknown operator `{op_name}` on property `{key}`")))?;
        let bad = |what: &str| FlagError::invalid(format!("property `{key}`: {what} for operator `{op_name}`: {value}"));
        use Operator::*;
        let compiled = match operator {
            Exact | IsNot => {
                let empty_list = matches!(value, Value::Array(a) if a.is_empty());
                let truthy = is_truthy_or_falsy(value).then(|| is_truthy(value));
                let candidates = match value {
                    Value::Array(items) => items.iter().map(|v| value_to_string(v).to_lowercase()).collect(),
                    other => vec![value_to_string(other).to_lowercase()],
                };
                Compiled::Exact { truthy, empty_list, candidates }
            }
            IsSet | IsNotSet => Compiled::Nothing,
            Icontains | NotIcontains | StartsWith | NotStartsWith | EndsWith | NotEndsWith => {
                Compiled::Text(value_to_string(value).to_ascii_lowercase())
            }
            Regex | NotRegex => match regex::Regex::new(&value_to_string(value)) {
                Ok(re) => Compiled::Regex(re),
                // An invalid pattern matches nothing, for `regex` and `not_regex` alike.
                Err(_) => Compiled::Nothing,
            },
            Gt | Gte | Lt | Lte => Compiled::Number(parse_numeric(value).ok_or_else(|| bad("not a finite number"))?),
            IsDateBefore | IsDateAfter => Compiled::Date(parse_date_filter(&value_to_string(value)).ok_or_else(|| bad("not a valid date"))?),
            SemverTilde => {
                let (a, b, c) = parse_semver(&value_to_string(value)).ok_or_else(|| bad("not a valid version"))?;
                Compiled::Range((a, b, c), (a, b + 1, 0))
            }
            SemverCaret => {
                let (a, b, c) = parse_semver(&value_to_string(value)).ok_or_else(|| bad("not a valid version"))?;
                let upper = if a > 0 { (a + 1, 0, 0) } else if b > 0 { (0, b + 1, 0) } else { (0, 0, c + 1) };
                Compiled::Range((a, b, c), upper)
            }
            SemverWildcard => {
                let (lo, hi) = wildcard_bounds(&value_to_string(value)).ok_or_else(|| bad("not a valid wildcard version"))?;
                Compiled::Range(lo, hi)
            }
            SemverEq | SemverNeq | SemverGt | SemverGte | SemverLt | SemverLte => {
                Compiled::Version(parse_semver(&value_to_string(value)).ok_or_else(|| bad("not a valid version"))?)
            }
        };
        Ok(PropertyMatcher { key: key.to_owned(), operator, compiled })
    }

    /// Matches against a full set of properties.
    pub fn matches(&self, properties: &Map<String, Value>, now: DateTime<Utc>) -> bool {
        match properties.get(&self.key) {
            None => missing_property(self.operator),
            Some(value) => self.matches_value(value, now),
        }
    }

    fn matches_value(&self, value: &Value, now: DateTime<Utc>) -> bool {
        use Operator::*;
        let op = self.operator;
        match (&self.compiled, op) {
            (_, IsSet) => true,
            (_, IsNotSet) => false,
            (Compiled::Number(filter), _) => match parse_numeric(value) {
                None => false,
                Some(v) => match op {
                    Gt => v > *filter,
                    Gte => v >= *filter,
                    Lt => v < *filter,
                    _ => v <= *filter,
                },
            },
            (Compiled::Exact { truthy, empty_list, candidates }, _) => {
                let matched = if *empty_list {
                    is_truthy(value)
                } else if let Some(filter_truthy) = truthy {
                    *filter_truthy == is_truthy(value)
                } else {
                    let own = value_text(value);
                    candidates.iter().any(|c| lowercase_equals(&own, c))
                };
                matched != (op == IsNot)
            }
            (Compiled::Text(filter), _) => {
                let own = value_text(value);
                let (own, filter) = (own.as_bytes(), filter.as_bytes());
                let matched = match op {
                    Icontains | NotIcontains => filter.is_empty() || own.windows(filter.len()).any(|w| ascii_lower_eq(w, filter)),
                    StartsWith | NotStartsWith => own.len() >= filter.len() && ascii_lower_eq(&own[..filter.len()], filter),
                    _ => own.len() >= filter.len() && ascii_lower_eq(&own[own.len() - filter.len()..], filter),
                };
                matched != op.is_negative()
            }
            (Compiled::Regex(re), _) => re.is_match(&value_text(value)) != (op == NotRegex),
            (Compiled::Nothing, _) => false,
            _ if value.is_null() => false,
            (Compiled::Date(filter), _) => {
                let Some(target) = filter.resolve(now) else { return false };
                let Some(own) = property_date(value) else { return false };
                if op == IsDateBefore {
                    own < target
                } else {
                    own > target
                }
            }
            (Compiled::Version(filter), _) => {
                let Some(own) = parse_semver(&value_text(value)) else { return false };
                match op {
                    SemverEq => own == *filter,
                    SemverNeq => own != *filter,
                    SemverGt => own > *filter,
                    SemverGte => own >= *filter,
                    SemverLt => own < *filter,
                    _ => own <= *filter,
                }
            }
            (Compiled::Range(lo, hi), _) => {
                let Some(own) = parse_semver(&value_text(value)) else { return false };
                *lo <= own && own < *hi
            }
        }
    }
}

/// A property the person (or group) does not have, with all their stored properties known:
/// positive operators fail, negative ones (`is_not`, `is_not_set`, `not_icontains`,
/// `not_regex`, `not_starts_with`, `not_ends_with`, `semver_neq`) pass. (posthog-python, which
/// only sees the properties passed to it, calls this "inconclusive" and asks the server.)
pub fn missing_property(operator: Operator) -> bool {
    operator.is_negative()
}

/// [`value_to_string`] without copying strings.
fn value_text(value: &Value) -> std::borrow::Cow<'_, str> {
    match value {
        Value::String(s) => std::borrow::Cow::Borrowed(s),
        other => std::borrow::Cow::Owned(value_to_string(other)),
    }
}

/// `own.to_lowercase() == lowered` without building the lower-case copy.
fn lowercase_equals(own: &str, lowered: &str) -> bool {
    if own.is_ascii() {
        return own.len() == lowered.len() && ascii_lower_eq(own.as_bytes(), lowered.as_bytes());
    }
    own.to_lowercase() == lowered
}

/// Bytes equal after ASCII lower-casing the left side (the right side is lower case already).
fn ascii_lower_eq(own: &[u8], lowered: &[u8]) -> bool {
    own.len() == lowered.len() && own.iter().zip(lowered).all(|(a, b)| a.to_ascii_lowercase() == *b)
}

/// A JSON value as PostHog's matching sees it: strings as they are, everything else as compact
/// JSON with sorted object keys and Python's float notation (`1e+16`).
pub fn value_to_string(value: &Value) -> String {
    match value {
        Value::String(s) => s.clone(),
        other => {
            let mut out = String::new();
            write_json(other, &mut out);
            out
        }
    }
}

fn write_json(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => out.push_str(&number_string(n)),
        Value::String(s) => out.push_str(&serde_json::to_string(s).expect("strings serialize")),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_json(item, out);
            }
            out.push(']');
        }
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&serde_json::to_string(key).expect("strings serialize"));
                out.push(':');
                write_json(&map[key], out);
            }
            out.push('}');
        }
    }
}

fn number_string(n: &serde_json::Number) -> String {
    if n.is_f64() {
        let text = n.to_string();
        if let Some((mantissa, exponent)) = text.split_once('e') {
            if !exponent.starts_with(['-', '+']) {
                return format!("{mantissa}e+{exponent}");
            }
        }
        text
    } else {
        n.to_string()
    }
}

fn is_truthy_or_falsy(value: &Value) -> bool {
    match value {
        Value::Bool(_) => true,
        Value::String(s) => s.eq_ignore_ascii_case("true") || s.eq_ignore_ascii_case("false"),
        Value::Array(items) => items.iter().all(is_truthy_or_falsy),
        _ => false,
    }
}

fn is_truthy(value: &Value) -> bool {
    match value {
        Value::Bool(b) => *b,
        Value::String(s) => s.eq_ignore_ascii_case("true"),
        Value::Array(items) => items.iter().all(is_truthy),
        _ => false,
    }
}

/// Numbers and numeric strings (`[+-]?digits[.digits][e±digits]`), finite; booleans are not
/// numbers.
pub fn parse_numeric(value: &Value) -> Option<f64> {
    let parsed = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => {
            if !is_numeric_text(s) {
                return None;
            }
            s.parse::<f64>().ok()?
        }
        _ => return None,
    };
    parsed.is_finite().then_some(parsed)
}

fn is_numeric_text(s: &str) -> bool {
    let b = s.as_bytes();
    let mut i = 0;
    if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
        i += 1;
    }
    let int_start = i;
    while i < b.len() && b[i].is_ascii_digit() {
        i += 1;
    }
    let int_digits = i - int_start;
    let mut frac_digits = 0;
    if i < b.len() && b[i] == b'.' {
        i += 1;
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        frac_digits = i - start;
    }
    if int_digits == 0 && frac_digits == 0 {
        return false;
    }
    if i < b.len() && (b[i] == b'e' || b[i] == b'E') {
        i += 1;
        if i < b.len() && (b[i] == b'+' || b[i] == b'-') {
            i += 1;
        }
        let start = i;
        while i < b.len() && b[i].is_ascii_digit() {
            i += 1;
        }
        if i == start {
            return false;
        }
    }
    i == b.len()
}

fn semver_part(part: &str) -> Option<u64> {
    if part.is_empty() || !part.bytes().all(|b| b.is_ascii_digit()) || (part.len() > 1 && part.starts_with('0')) {
        return None;
    }
    part.parse().ok()
}

/// `v1.2.3-beta+build` → (1, 2, 3); missing minor/patch are 0; leading zeros are invalid.
pub fn parse_semver(text: &str) -> Option<Version> {
    let text = text.trim().trim_start_matches(['v', 'V']);
    let text = text.split('-').next()?.split('+').next()?;
    let mut parts = text.split('.');
    let major = semver_part(parts.next()?)?;
    let minor = match parts.next() {
        Some(p) if !p.is_empty() => semver_part(p)?,
        _ => 0,
    };
    let patch = match parts.next() {
        Some(p) if !p.is_empty() => semver_part(p)?,
        _ => 0,
    };
    Some((major, minor, patch))
}

fn wildcard_bounds(text: &str) -> Option<(Version, Version)> {
    let cleaned = text.trim().trim_start_matches(['v', 'V']).replace('*', "");
    let cleaned = cleaned.trim_end_matches('.');
    let parts: Vec<&str> = cleaned.split('.').filter(|p| !p.is_empty()).collect();
    match parts.as_slice() {
        [] => None,
        [a] => {
            let a = semver_part(a)?;
            Some(((a, 0, 0), (a + 1, 0, 0)))
        }
        [a, b] => {
            let (a, b) = (semver_part(a)?, semver_part(b)?);
            Some(((a, b, 0), (a, b + 1, 0)))
        }
        [a, b, c, ..] => {
            let (a, b, c) = (semver_part(a)?, semver_part(b)?, semver_part(c)?);
            Some(((a, b, c), (a, b, c + 1)))
        }
    }
}

fn parse_date_filter(text: &str) -> Option<DateFilter> {
    let t = text.trim();
    let rel = t.strip_prefix('-').unwrap_or(t);
    if let Some(unit) = rel.chars().last().filter(|c| c.is_ascii_lowercase()) {
        let digits = &rel[..rel.len() - 1];
        if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
            let number: u32 = digits.parse().ok()?;
            if number >= 10_000 || !matches!(unit, 'h' | 'd' | 'w' | 'm' | 'y') {
                return None;
            }
            return Some(DateFilter::Relative { number, unit });
        }
    }
    parse_datetime(t).map(DateFilter::Absolute)
}

impl DateFilter {
    fn resolve(&self, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
        match *self {
            DateFilter::Absolute(t) => Some(t),
            DateFilter::Relative { number, unit } => match unit {
                'h' => now.checked_sub_signed(Duration::hours(number.into())),
                'd' => now.checked_sub_signed(Duration::days(number.into())),
                'w' => now.checked_sub_signed(Duration::weeks(number.into())),
                'm' => subtract_months(now, number),
                _ => {
                    let year = now.year() - number as i32;
                    let day = if number > 0 && now.month() == 2 && now.day() == 29 { 28 } else { now.day() };
                    (1..=9999).contains(&year).then(|| now.with_day(day)?.with_year(year)).flatten()
                }
            },
        }
    }
}

fn subtract_months(now: DateTime<Utc>, months: u32) -> Option<DateTime<Utc>> {
    let index = now.year() as i64 * 12 + now.month0() as i64 - months as i64;
    let (year, month) = (index.div_euclid(12) as i32, index.rem_euclid(12) as u32 + 1);
    if !(1..=9999).contains(&year) {
        return None;
    }
    let mut day = now.day();
    while NaiveDate::from_ymd_opt(year, month, day).is_none() {
        day -= 1;
    }
    now.with_day(1)?.with_year(year)?.with_month(month)?.with_day(day)
}

/// ISO 8601 date-times as PostHog's SDK reads them (`Z` or an offset; naive means UTC) and
/// dates.
pub fn parse_datetime(text: &str) -> Option<DateTime<Utc>> {
    let t = text.trim();
    if t.len() == 10 {
        // The common `YYYY-MM-DD` first: no failed attempts at the longer forms.
        if let Ok(d) = NaiveDate::parse_from_str(t, "%Y-%m-%d") {
            return d.and_hms_opt(0, 0, 0).map(|d| d.and_utc());
        }
    }
    let t = t.strip_suffix(" UTC").or_else(|| t.strip_suffix(" utc")).map(|s| format!("{s}+00:00")).unwrap_or_else(|| t.to_owned());
    if let Ok(d) = DateTime::parse_from_rfc3339(&t) {
        return Some(d.with_timezone(&Utc));
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f%:z", "%Y-%m-%d %H:%M:%S%.f%:z", "%Y-%m-%dT%H:%M%:z", "%Y-%m-%d %H:%M%:z"] {
        if let Ok(d) = DateTime::parse_from_str(&t, fmt) {
            return Some(d.with_timezone(&Utc));
        }
    }
    for fmt in ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%d %H:%M:%S%.f", "%Y-%m-%dT%H:%M", "%Y-%m-%d %H:%M"] {
        if let Ok(d) = NaiveDateTime::parse_from_str(&t, fmt) {
            return Some(d.and_utc());
        }
    }
    NaiveDate::parse_from_str(&t, "%Y-%m-%d").ok()?.and_hms_opt(0, 0, 0).map(|d| d.and_utc())
}

/// A property's date: an ISO string, or a number of seconds since the epoch (as PostHog's
/// server reads numeric dates).
fn property_date(value: &Value) -> Option<DateTime<Utc>> {
    match value {
        Value::String(s) => parse_datetime(s),
        Value::Number(n) => {
            let secs = n.as_f64()?;
            DateTime::from_timestamp_millis((secs * 1000.0) as i64)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn check(op: &str, filter: Value, property: Value) -> bool {
        let m = PropertyMatcher::compile("k", Some(op), &filter).unwrap();
        let mut props = Map::new();
        props.insert("k".into(), property);
        m.matches(&props, Utc::now())
    }

    #[test]
    fn exact_coercions() {
        assert!(check("exact", json!("true"), json!(true)));
        assert!(check("exact", json!(true), json!("TRUE")));
        assert!(check("exact", json!(["a", "B"]), json!("b")));
        assert!(check("exact", json!(5), json!("5")));
        assert!(!check("exact", json!(5), json!(5.0)), "1.0 is not 1, as in PostHog");
        assert!(check("is_not", json!("x"), json!("y")));
        assert!(check("exact", json!([]), json!(true)));
    }

    #[test]
    fn numeric_operators_parse_numeric_strings() {
        assert!(check("gt", json!("9"), json!("10")));
        assert!(check("lte", json!(3), json!(3)));
        assert!(!check("gt", json!(1), json!("abc")));
        assert!(!check("gt", json!(1), json!(true)));
        assert!(PropertyMatcher::compile("k", Some("gt"), &json!("x")).is_err());
    }

    #[test]
    fn text_regex_semver_dates() {
        assert!(check("icontains", json!("GPT"), json!("gpt-4o-mini")));
        assert!(check("not_icontains", json!("claude"), json!("gpt-4o")));
        assert!(check("regex", json!("^ws_[0-9]+$"), json!("ws_12")));
        assert!(!check("regex", json!("(unclosed"), json!("x")));
        assert!(!check("not_regex", json!("(unclosed"), json!("x")));
        assert!(check("semver_gte", json!("1.2.0"), json!("v1.10.0")));
        assert!(check("semver_caret", json!("0.2.3"), json!("0.2.9")));
        assert!(!check("semver_caret", json!("0.2.3"), json!("0.3.0")));
        assert!(check("semver_wildcard", json!("1.*"), json!("1.99.0")));
        assert!(check("is_date_before", json!("2026-01-01"), json!("2025-12-31T23:59:59Z")));
        assert!(check("is_date_after", json!("-30d"), json!(Utc::now().to_rfc3339())));
        assert!(check("is_date_after", json!("2020-01-01"), json!(1_700_000_000)));
    }

    #[test]
    fn missing_properties_fail_positive_operators() {
        let m = PropertyMatcher::compile("plan", Some("exact"), &json!("pro")).unwrap();
        assert!(!m.matches(&Map::new(), Utc::now()));
        let m = PropertyMatcher::compile("plan", Some("is_not"), &json!("pro")).unwrap();
        assert!(m.matches(&Map::new(), Utc::now()));
    }

    #[test]
    fn json_text_like_python() {
        assert_eq!(value_to_string(&json!({"b": 1, "a": [1.5, null]})), r#"{"a":[1.5,null],"b":1}"#);
        assert_eq!(value_to_string(&json!(1e20)), "1e+20");
    }
}

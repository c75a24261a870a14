//! Flag definitions in PostHog's JSON form, as its local evaluation API returns them and its
//! management API takes them. Unknown fields are kept, so definitions round-trip.

use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

fn null_as_default<'de, D, T>(deserializer: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(deserializer)?.unwrap_or_default())
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlagDefinition {
    #[serde(default)]
    pub id: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub team_id: Option<i64>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub name: String,
    pub key: String,
    #[serde(default, deserialize_with = "null_as_default")]
    pub filters: FlagFilters,
    #[serde(default)]
    pub deleted: bool,
    #[serde(default = "default_true")]
    pub active: bool,
    #[serde(default, deserialize_with = "null_as_default")]
    pub ensure_experience_continuity: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<i64>,
    /// `device_id` buckets by the request's device id instead of the distinct id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucketing_identifier: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct FlagFilters {
    #[serde(default, deserialize_with = "null_as_default")]
    pub groups: Vec<Condition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub multivariate: Option<Multivariate>,
    #[serde(default)]
    pub aggregation_group_type_index: Option<i64>,
    /// Payload by variant key, or by `"true"` for a boolean flag.
    #[serde(default, deserialize_with = "null_as_default")]
    pub payloads: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holdout: Option<Holdout>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feature_enrollment: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucketing_identifier: Option<String>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    #[serde(default, deserialize_with = "null_as_default")]
    pub properties: Vec<PropertyFilter>,
    /// `None` means 100%.
    #[serde(default)]
    pub rollout_percentage: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Mixed targeting: this condition aggregates by another group type than the flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregation_group_type_index: Option<Option<i64>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Multivariate {
    #[serde(default, deserialize_with = "null_as_default")]
    pub variants: Vec<Variant>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Variant {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    pub rollout_percentage: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holdout {
    pub id: Value,
    pub exclusion_percentage: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PropertyFilter {
    pub key: String,
    #[serde(default)]
    pub value: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<String>,
    /// `person` (default), `group`, `cohort` or `flag`.
    #[serde(rename = "type", default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub negation: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group_type_index: Option<i64>,
    /// Flag dependencies: the keys to evaluate first, the referenced flag last; empty = cycle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dependency_chain: Option<Vec<String>>,
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

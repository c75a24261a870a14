//! Evaluating a set of flags for one person (and their groups).
//!
//! The algorithm is PostHog's (`docs/flags.md` lists each rule and where PostHog's server and
//! SDKs differ): conditions OR'd in declared order, a condition's filters AND'ed, then its
//! rollout by hash; the variant by a second hash (salt `variant`) unless the condition overrides
//! it; group flags bucket by the group key through the group type mapping; cohorts are nested
//! property groups; flag dependencies evaluate the referenced flag.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::definition::{FlagDefinition, PropertyFilter};
use crate::hash::hash;
use crate::property::PropertyMatcher;
use crate::FlagError;

/// A flag's value: `false`, `true` or a variant key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlagValue {
    Bool(bool),
    Variant(String),
}

impl FlagValue {
    pub fn is_enabled(&self) -> bool {
        !matches!(self, FlagValue::Bool(false))
    }
    pub fn to_json(&self) -> Value {
        match self {
            FlagValue::Bool(b) => Value::Bool(*b),
            FlagValue::Variant(v) => Value::String(v.clone()),
        }
    }
    pub fn variant(&self) -> Option<&str> {
        match self {
            FlagValue::Variant(v) => Some(v),
            FlagValue::Bool(_) => None,
        }
    }
}

/// Why a flag has its value (PostHog's `FeatureFlagMatchReason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Reason {
    /// Ordered by PostHog's score: when nothing matches, the highest seen is reported.
    NoConditionMatch,
    OutOfRolloutBound,
    NoGroupType,
    Disabled,
    ConditionMatch,
    HoldoutConditionValue,
    SuperConditionValue,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::NoConditionMatch => "no_condition_match",
            Reason::OutOfRolloutBound => "out_of_rollout_bound",
            Reason::NoGroupType => "no_group_type",
            Reason::Disabled => "flag_disabled",
            Reason::ConditionMatch => "condition_match",
            Reason::HoldoutConditionValue => "holdout_condition_value",
            Reason::SuperConditionValue => "super_condition_value",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    pub value: FlagValue,
    pub reason: Reason,
    /// The matching condition (0-based), for `condition_match`.
    pub condition_index: Option<usize>,
    pub payload: Option<Value>,
}

impl Evaluation {
    fn new(value: FlagValue, reason: Reason, condition_index: Option<usize>) -> Self {
        Evaluation { value, reason, condition_index, payload: None }
    }

    /// PostHog's description: "Matched condition set 1", …
    pub fn description(&self) -> String {
        match self.reason {
            Reason::ConditionMatch => format!("Matched condition set {}", self.condition_index.unwrap_or(0) + 1),
            Reason::NoConditionMatch => "No matching condition set".into(),
            Reason::OutOfRolloutBound => "Out of rollout bound".into(),
            Reason::NoGroupType => "No group type".into(),
            Reason::Disabled => "Feature flag is disabled".into(),
            Reason::HoldoutConditionValue => "Holdout condition value".into(),
            Reason::SuperConditionValue => "Super condition value".into(),
        }
    }
}

/// Who a flag is evaluated for.
#[derive(Debug, Clone, Copy)]
pub struct Context<'a> {
    pub distinct_id: &'a str,
    pub device_id: Option<&'a str>,
    /// Identifier to bucket flags with experience continuity by (the anonymous id the person
    /// first saw the flag with); `None` uses the distinct id.
    pub continuity_key: Option<&'a str>,
    pub person_properties: &'a Map<String, Value>,
    /// Group type name → group key.
    pub groups: &'a Map<String, Value>,
    /// Group type name → that group's properties.
    pub group_properties: &'a Map<String, Value>,
    pub now: DateTime<Utc>,
}

enum Filter {
    Property(PropertyMatcher),
    Cohort { id: String, negated: bool },
    Flag { key: String, expected: Value, valid: bool },
}

/// A cohort: nested AND/OR groups of filters, each filter possibly negated.
enum CohortNode {
    Group { and: bool, children: Vec<CohortNode> },
    Leaf { filter: Filter, negation: bool },
}

struct CompiledCondition {
    filters: Vec<Filter>,
    rollout: Option<f64>,
    variant: Option<String>,
    /// `Some(x)` when the condition overrides the flag's aggregation.
    aggregation: Option<Option<i64>>,
}

struct CompiledFlag {
    definition: FlagDefinition,
    conditions: Vec<CompiledCondition>,
    /// (variant key, cumulative upper bound)
    variants: Vec<(String, f64)>,
    device_bucketing: bool,
}

/// A loaded, compiled set of flags with their group type mapping and cohorts. Immutable:
/// a change builds a new set, swapped in atomically by the server.
pub struct FlagSet {
    flags: Vec<CompiledFlag>,
    by_key: HashMap<String, usize>,
    group_types: HashMap<i64, String>,
    cohorts: HashMap<String, CohortNode>,
}

fn compile_filter(f: &PropertyFilter) -> Result<Filter, FlagError> {
    match f.kind.as_deref() {
        Some("cohort") => {
            let op = f.operator.as_deref().unwrap_or("in");
            if !matches!(op, "exact" | "in" | "not_in") {
                return Err(FlagError::invalid(format!("unknown cohort operator `{op}`")));
            }
            let id = match &f.value {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            Ok(Filter::Cohort { id, negated: op == "not_in" })
        }
        Some("flag") => {
            let valid = f.operator.as_deref() == Some("flag_evaluates_to")
                && !f.key.is_empty()
                && !f.value.is_null()
                && f.dependency_chain.as_ref().is_some_and(|c| !c.is_empty());
            Ok(Filter::Flag { key: f.key.clone(), expected: f.value.clone(), valid })
        }
        _ => Ok(Filter::Property(PropertyMatcher::compile(&f.key, f.operator.as_deref(), &f.value)?)),
    }
}

fn compile_cohort(value: &Value) -> Result<CohortNode, FlagError> {
    let Value::Object(map) = value else {
        return Err(FlagError::invalid("a cohort group must be an object"));
    };
    let nested = map.is_empty() || map.contains_key("values") || matches!(map.get("type").and_then(Value::as_str), Some("AND" | "OR"));
    if nested {
        if map.is_empty() {
            return Ok(CohortNode::Group { and: true, children: vec![] });
        }
        let and = match map.get("type").and_then(Value::as_str) {
            Some("AND") => true,
            Some("OR") => false,
            _ => return Err(FlagError::invalid("a cohort group's type must be AND or OR")),
        };
        let values = map.get("values").and_then(Value::as_array).ok_or_else(|| FlagError::invalid("a cohort group's values must be a list"))?;
        let children = values.iter().map(compile_cohort).collect::<Result<_, _>>()?;
        Ok(CohortNode::Group { and, children })
    } else {
        let filter: PropertyFilter = serde_json::from_value(value.clone()).map_err(|e| FlagError::invalid(format!("cohort filter: {e}")))?;
        Ok(CohortNode::Leaf { negation: filter.negation, filter: compile_filter(&filter)? })
    }
}

impl FlagSet {
    /// Compiles definitions. `group_type_mapping` is PostHog's `{"0": "workspace", …}`,
    /// `cohorts` its `{"<id>": {"type": "OR", "values": [...]}}`. Deleted flags are skipped.
    pub fn new(
        definitions: Vec<FlagDefinition>,
        group_type_mapping: &Map<String, Value>,
        cohorts: &Map<String, Value>,
    ) -> Result<FlagSet, FlagError> {
        let mut flags = Vec::with_capacity(definitions.len());
        for definition in definitions.into_iter().filter(|d| !d.deleted) {
            let key = definition.key.clone();
            let in_flag = |e: FlagError| FlagError::invalid(format!("flag `{key}`: {e}"));
            let mut conditions = Vec::new();
            for condition in &definition.filters.groups {
                let filters = condition.properties.iter().map(compile_filter).collect::<Result<_, _>>().map_err(in_flag)?;
                conditions.push(CompiledCondition {
                    filters,
                    rollout: condition.rollout_percentage,
                    variant: condition.variant.clone(),
                    aggregation: condition.aggregation_group_type_index,
                });
            }
            let mut variants = Vec::new();
            let mut upper = 0.0;
            for v in definition.filters.multivariate.iter().flat_map(|m| &m.variants) {
                upper += v.rollout_percentage / 100.0;
                variants.push((v.key.clone(), upper));
            }
            let device_bucketing = definition.bucketing_identifier.as_deref().or(definition.filters.bucketing_identifier.as_deref()) == Some("device_id");
            flags.push(CompiledFlag { definition, conditions, variants, device_bucketing });
        }
        let by_key = flags.iter().enumerate().map(|(i, f)| (f.definition.key.clone(), i)).collect();
        let group_types = group_type_mapping
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_owned())))
            .collect();
        let cohorts = cohorts
            .iter()
            .map(|(id, v)| Ok((id.clone(), compile_cohort(v).map_err(|e| FlagError::invalid(format!("cohort {id}: {e}")))?)))
            .collect::<Result<_, FlagError>>()?;
        Ok(FlagSet { flags, by_key, group_types, cohorts })
    }

    pub fn len(&self) -> usize {
        self.flags.len()
    }
    pub fn is_empty(&self) -> bool {
        self.flags.is_empty()
    }
    pub fn definitions(&self) -> impl Iterator<Item = &FlagDefinition> {
        self.flags.iter().map(|f| &f.definition)
    }
    pub fn definition(&self, key: &str) -> Option<&FlagDefinition> {
        self.by_key.get(key).map(|i| &self.flags[*i].definition)
    }

    /// Evaluates one flag. `None` when the set has no such flag.
    pub fn evaluate(&self, key: &str, ctx: &Context<'_>) -> Option<Evaluation> {
        let index = *self.by_key.get(key)?;
        let mut cache = vec![None; self.flags.len()];
        Some(self.evaluate_index(index, ctx, &mut cache))
    }

    /// Evaluates every flag (sharing dependency results), in definition order.
    pub fn evaluate_all(&self, ctx: &Context<'_>) -> Vec<(&str, Evaluation)> {
        let mut cache = vec![None; self.flags.len()];
        (0..self.flags.len())
            .map(|i| (self.flags[i].definition.key.as_str(), self.evaluate_index(i, ctx, &mut cache)))
            .collect()
    }

    fn evaluate_index(&self, index: usize, ctx: &Context<'_>, cache: &mut Vec<Option<Slot>>) -> Evaluation {
        match &cache[index] {
            Some(Slot::Done(e)) => return e.clone(),
            // A dependency cycle: the flag depends on itself.
            Some(Slot::InProgress) => return Evaluation::new(FlagValue::Bool(false), Reason::NoConditionMatch, None),
            None => {}
        }
        cache[index] = Some(Slot::InProgress);
        let mut evaluation = self.compute(&self.flags[index], ctx, cache);
        if evaluation.value.is_enabled() {
            let payload_key = evaluation.value.variant().unwrap_or("true");
            evaluation.payload = self.flags[index].definition.filters.payloads.get(payload_key).cloned();
        }
        cache[index] = Some(Slot::Done(evaluation.clone()));
        evaluation
    }

    fn compute(&self, flag: &CompiledFlag, ctx: &Context<'_>, cache: &mut Vec<Option<Slot>>) -> Evaluation {
        let def = &flag.definition;
        if !def.active {
            return Evaluation::new(FlagValue::Bool(false), Reason::Disabled, None);
        }
        let flag_aggregation = def.filters.aggregation_group_type_index;
        // The flag's own context: person, or the group it aggregates by.
        let (properties, bucketing): (&Map<String, Value>, Option<String>) = match flag_aggregation {
            Some(idx) => match self.group_context(idx, ctx) {
                Some(c) => c,
                None => return Evaluation::new(FlagValue::Bool(false), Reason::NoGroupType, None),
            },
            None => (ctx.person_properties, self.person_bucketing(flag, ctx)),
        };

        if def.filters.feature_enrollment == Some(true) {
            let enrolled = ctx
                .person_properties
                .get(&format!("$feature_enrollment/{}", def.key))
                .is_some_and(|v| v == &Value::Bool(true) || v == "true");
            return Evaluation::new(FlagValue::Bool(enrolled), Reason::SuperConditionValue, None);
        }

        if let (Some(holdout), Some(bucketing)) = (&def.filters.holdout, &bucketing) {
            let pct = holdout.exclusion_percentage.clamp(0.0, 100.0);
            if pct == 100.0 || hash("holdout", bucketing, "", '-') <= pct / 100.0 {
                let id = match &holdout.id {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                return Evaluation::new(FlagValue::Variant(format!("holdout-{id}")), Reason::HoldoutConditionValue, None);
            }
        }

        let mut best = Reason::NoConditionMatch;
        for (i, condition) in flag.conditions.iter().enumerate() {
            let (props, bucket) = match condition.aggregation {
                Some(agg) if agg != flag_aggregation => match agg {
                    Some(idx) => match self.group_context(idx, ctx) {
                        Some((p, b)) => (p, b),
                        None => continue,
                    },
                    None => (ctx.person_properties, self.person_bucketing(flag, ctx)),
                },
                _ => (properties, bucketing.clone()),
            };
            if !condition.filters.iter().all(|f| self.filter_matches(f, props, ctx, cache)) {
                continue;
            }
            if let Some(rollout) = condition.rollout {
                // 100% needs no hash (every hash is at most 1).
                let in_rollout = rollout >= 100.0
                    || match &bucket {
                        Some(b) => hash(&def.key, b, "", '.') <= rollout / 100.0,
                        // Device bucketing without a device id: the condition cannot be rolled out.
                        None => false,
                    };
                if !in_rollout {
                    best = best.max(Reason::OutOfRolloutBound);
                    continue;
                }
            }
            let variant = match &condition.variant {
                Some(v) if flag.variants.iter().any(|(k, _)| k == v) => Some(v.clone()),
                _ => bucket.as_deref().and_then(|b| matching_variant(flag, b)),
            };
            let value = match variant {
                Some(v) => FlagValue::Variant(v),
                None => FlagValue::Bool(true),
            };
            return Evaluation::new(value, Reason::ConditionMatch, Some(i));
        }
        Evaluation::new(FlagValue::Bool(false), best, None)
    }

    fn person_bucketing(&self, flag: &CompiledFlag, ctx: &Context<'_>) -> Option<String> {
        if flag.device_bucketing {
            return ctx.device_id.filter(|d| !d.is_empty()).map(str::to_owned);
        }
        if flag.definition.ensure_experience_continuity {
            if let Some(key) = ctx.continuity_key {
                return Some(key.to_owned());
            }
        }
        Some(ctx.distinct_id.to_owned())
    }

    fn group_context<'c>(&self, index: i64, ctx: &Context<'c>) -> Option<(&'c Map<String, Value>, Option<String>)> {
        static EMPTY: std::sync::OnceLock<Map<String, Value>> = std::sync::OnceLock::new();
        let name = self.group_types.get(&index)?;
        let key = match ctx.groups.get(name)? {
            Value::String(s) => s.clone(),
            Value::Null => return None,
            other => other.to_string(),
        };
        let props = ctx
            .group_properties
            .get(name)
            .and_then(Value::as_object)
            .unwrap_or_else(|| EMPTY.get_or_init(Map::new));
        Some((props, Some(key)))
    }

    fn filter_matches(&self, filter: &Filter, props: &Map<String, Value>, ctx: &Context<'_>, cache: &mut Vec<Option<Slot>>) -> bool {
        match filter {
            Filter::Property(m) => m.matches(props, ctx.now),
            Filter::Cohort { id, negated } => match self.cohorts.get(id) {
                // Static cohorts (membership lists) are not known here: no one is in them.
                None => *negated,
                Some(node) => self.cohort_matches(node, props, ctx, cache) != *negated,
            },
            Filter::Flag { key, expected, valid } => {
                if !valid {
                    return false;
                }
                let Some(&index) = self.by_key.get(key) else { return false };
                let actual = self.evaluate_index(index, ctx, cache).value;
                matches_dependency(expected, &actual)
            }
        }
    }

    fn cohort_matches(&self, node: &CohortNode, props: &Map<String, Value>, ctx: &Context<'_>, cache: &mut Vec<Option<Slot>>) -> bool {
        match node {
            CohortNode::Leaf { filter, negation } => self.filter_matches(filter, props, ctx, cache) != *negation,
            CohortNode::Group { and, children } => {
                if children.is_empty() {
                    return true;
                }
                if *and {
                    children.iter().all(|c| self.cohort_matches(c, props, ctx, cache))
                } else {
                    children.iter().any(|c| self.cohort_matches(c, props, ctx, cache))
                }
            }
        }
    }
}

#[derive(Clone)]
enum Slot {
    InProgress,
    Done(Evaluation),
}

fn matching_variant(flag: &CompiledFlag, bucketing: &str) -> Option<String> {
    if flag.variants.is_empty() {
        return None;
    }
    let h = hash(&flag.definition.key, bucketing, "variant", '.');
    let mut lower = 0.0;
    for (key, upper) in &flag.variants {
        if h >= lower && h < *upper {
            return Some(key.clone());
        }
        lower = *upper;
    }
    None
}

/// `flag_evaluates_to`: `true` matches any enabled value, `false` a disabled one, a string
/// that exact variant (case-sensitive).
fn matches_dependency(expected: &Value, actual: &FlagValue) -> bool {
    match (actual, expected) {
        (FlagValue::Variant(v), Value::Bool(b)) => *b && !v.is_empty(),
        (FlagValue::Variant(v), Value::String(e)) => v == e,
        (FlagValue::Bool(a), Value::Bool(e)) => a == e,
        _ => false,
    }
}

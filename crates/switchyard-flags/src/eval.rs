//! Evaluating a set of flags for one person (and their groups).
//!
//! The algorithm is PostHog's (`docs/flags.md` lists each rule and where PostHog's server and
//! SDKs differ): conditions OR'd in declared order, a condition's filters AND'ed, then its
//! rollout by hash; the variant by a second hash (salt `variant`) unless the condition overrides
//! it; group flags bucket by the group key through the group type mapping; cohorts are nested
//! property groups; flag dependencies evaluate the referenced flag.
//!
//! Definitions come from users and from upstream PostHogs, so none of them may take the process
//! down. Compiling a set checks its structure once: flags and cohorts refer to each other
//! (a flag's condition on another flag, a cohort filter, a cohort inside a cohort), and a cycle
//! of references, a chain of them deeper than [`MAX_DEPENDENCY_DEPTH`], AND/OR groups nested
//! deeper than [`MAX_PROPERTY_GROUP_DEPTH`] or a filter that does not compile make that flag or
//! cohort *broken*, with a [`Problem`] naming it. [`FlagSet::new`] refuses a set with any problem;
//! [`FlagSet::compile`] keeps it (definitions stored by an older version must keep the rest
//! serving): a broken flag, and every flag that refers to one, evaluates to `false` with reason
//! [`Reason::Error`]. Evaluation also carries its own depth counter ([`MAX_EVAL_DEPTH`]) and
//! remembers each cohort's answer per request, so its stack and work stay bounded by the
//! definitions' size whatever got past compilation.

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
    /// The flag could not be evaluated (its definition is broken); its value is `false`.
    Error(EvalError),
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
            Reason::Error(error) => error.code(),
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

    fn error(error: EvalError) -> Self {
        Evaluation::new(FlagValue::Bool(false), Reason::Error(error), None)
    }

    /// Whether the flag could not be evaluated (PostHog's `errorsWhileComputingFlags`).
    pub fn is_error(&self) -> bool {
        matches!(self.reason, Reason::Error(_))
    }

    /// PostHog's description: "Matched condition set 1", …
    pub fn description(&self) -> String {
        match self.reason {
            Reason::Error(error) => format!("Evaluation error: {}", error.describe()),
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

/// The longest chain of references between flags and cohorts a set may hold: a flag's condition
/// on another flag, a cohort filter, a cohort inside a cohort each count one.
pub const MAX_DEPENDENCY_DEPTH: usize = 32;

/// The deepest nesting of AND/OR property groups inside one cohort (PostHog's own are two deep).
pub const MAX_PROPERTY_GROUP_DEPTH: usize = 16;

/// The recursion evaluation allows itself (flags, cohorts and property groups, each one frame),
/// whatever the definitions. Compiled sets stay far below it; past it a flag is an error.
pub const MAX_EVAL_DEPTH: usize = (MAX_DEPENDENCY_DEPTH + 1) * (MAX_PROPERTY_GROUP_DEPTH + 3);

/// Why a flag cannot be evaluated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum EvalError {
    /// Flags that depend on each other in a cycle (cohorts possibly between them).
    FlagCycle,
    /// Cohorts that contain each other in a cycle (a cohort that refers to itself).
    CohortCycle,
    /// A chain of references deeper than [`MAX_DEPENDENCY_DEPTH`], or property groups nested
    /// deeper than [`MAX_PROPERTY_GROUP_DEPTH`].
    TooDeep,
    /// A filter or cohort that does not compile.
    Invalid,
}

impl EvalError {
    /// The reason code answers carry (PostHog's `dependency_cycle_flag`/`_cohort` for cycles).
    pub fn code(self) -> &'static str {
        match self {
            EvalError::FlagCycle => "dependency_cycle_flag",
            EvalError::CohortCycle => "dependency_cycle_cohort",
            EvalError::TooDeep => "dependency_too_deep",
            EvalError::Invalid => "invalid_definition",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            EvalError::FlagCycle => "flag dependencies form a cycle",
            EvalError::CohortCycle => "cohorts refer to each other in a cycle",
            EvalError::TooDeep => "dependencies or property groups nested too deep",
            EvalError::Invalid => "invalid definition",
        }
    }
}

/// What a [`Problem`] is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Flag(String),
    Cohort(String),
}

impl std::fmt::Display for Subject {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subject::Flag(key) => write!(f, "flag `{key}`"),
            Subject::Cohort(id) => write!(f, "cohort {id}"),
        }
    }
}

/// Why a flag or cohort of a set is broken: the root cause, naming its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub subject: Subject,
    pub error: EvalError,
    /// Starts with the subject: "flag `a`: …", "cohort 7: …".
    pub message: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

enum Filter {
    Property(PropertyMatcher),
    /// `cohort`: its index in the set, `None` for a cohort the set does not have.
    Cohort { cohort: Option<usize>, negated: bool },
    /// `flag`: its index in the set, `None` for a flag the set does not have; a malformed filter
    /// is not `valid` and never matches.
    Flag { flag: Option<usize>, expected: Value, valid: bool },
}

/// A cohort: nested AND/OR groups of filters, each filter possibly negated.
enum CohortNode {
    Group { and: bool, children: Vec<CohortNode> },
    Leaf { filter: Filter, negation: bool },
}

struct CompiledCohort {
    root: CohortNode,
    broken: Option<EvalError>,
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
    broken: Option<EvalError>,
}

/// A loaded, compiled set of flags with their group type mapping and cohorts. Immutable:
/// a change builds a new set, swapped in atomically by the server.
pub struct FlagSet {
    flags: Vec<CompiledFlag>,
    by_key: HashMap<String, usize>,
    group_types: HashMap<i64, String>,
    cohorts: Vec<CompiledCohort>,
    /// Cohort ids, by index.
    cohort_ids: Vec<String>,
    /// Root causes, in the order found.
    problems: Vec<Problem>,
    /// Every broken flag or cohort with the index of its root cause in `problems`.
    broken: Vec<(Subject, usize)>,
}

/// What a compile step refuses.
struct Broken {
    error: EvalError,
    message: String,
}

impl Broken {
    fn invalid(e: FlagError) -> Self {
        Broken { error: EvalError::Invalid, message: e.0 }
    }
}

/// Flag keys and cohort ids to indexes.
struct Names<'a> {
    flags: &'a HashMap<String, usize>,
    cohorts: &'a HashMap<String, usize>,
}

fn compile_filter(f: &PropertyFilter, names: &Names<'_>) -> Result<Filter, FlagError> {
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
            Ok(Filter::Cohort { cohort: names.cohorts.get(&id).copied(), negated: op == "not_in" })
        }
        Some("flag") => {
            // PostHog serves `dependency_chain: []` for a flag it cannot order (a cycle); the
            // set's own analysis finds those, so only a missing chain makes the filter malformed.
            let valid = f.operator.as_deref() == Some("flag_evaluates_to")
                && !f.key.is_empty()
                && !f.value.is_null()
                && f.dependency_chain.is_some();
            Ok(Filter::Flag { flag: names.flags.get(&f.key).copied(), expected: f.value.clone(), valid })
        }
        _ => Ok(Filter::Property(PropertyMatcher::compile(&f.key, f.operator.as_deref(), &f.value)?)),
    }
}

fn compile_cohort(value: &Value, names: &Names<'_>, depth: usize) -> Result<CohortNode, Broken> {
    let Value::Object(map) = value else {
        return Err(Broken::invalid(FlagError::invalid("a cohort group must be an object")));
    };
    let nested = map.is_empty() || map.contains_key("values") || matches!(map.get("type").and_then(Value::as_str), Some("AND" | "OR"));
    if nested {
        if depth >= MAX_PROPERTY_GROUP_DEPTH {
            return Err(Broken {
                error: EvalError::TooDeep,
                message: format!("property groups are nested deeper than {MAX_PROPERTY_GROUP_DEPTH} levels"),
            });
        }
        if map.is_empty() {
            return Ok(CohortNode::Group { and: true, children: vec![] });
        }
        let and = match map.get("type").and_then(Value::as_str) {
            Some("AND") => true,
            Some("OR") => false,
            _ => return Err(Broken::invalid(FlagError::invalid("a cohort group's type must be AND or OR"))),
        };
        let values = map
            .get("values")
            .and_then(Value::as_array)
            .ok_or_else(|| Broken::invalid(FlagError::invalid("a cohort group's values must be a list")))?;
        let children = values.iter().map(|v| compile_cohort(v, names, depth + 1)).collect::<Result<_, _>>()?;
        Ok(CohortNode::Group { and, children })
    } else {
        let filter: PropertyFilter =
            serde_json::from_value(value.clone()).map_err(|e| Broken::invalid(FlagError::invalid(format!("cohort filter: {e}"))))?;
        Ok(CohortNode::Leaf { negation: filter.negation, filter: compile_filter(&filter, names).map_err(Broken::invalid)? })
    }
}

fn compile_flag(definition: &FlagDefinition, names: &Names<'_>) -> Result<Vec<CompiledCondition>, FlagError> {
    let mut conditions = Vec::with_capacity(definition.filters.groups.len());
    for condition in &definition.filters.groups {
        let filters = condition.properties.iter().map(|f| compile_filter(f, names)).collect::<Result<_, _>>()?;
        conditions.push(CompiledCondition {
            filters,
            rollout: condition.rollout_percentage,
            variant: condition.variant.clone(),
            aggregation: condition.aggregation_group_type_index,
        });
    }
    Ok(conditions)
}

/// The graph node a filter refers to: flags are `0..flags`, cohorts follow.
fn reference(filter: &Filter, flags: usize) -> Option<usize> {
    match filter {
        Filter::Cohort { cohort: Some(c), .. } => Some(flags + c),
        Filter::Flag { flag: Some(f), valid: true, .. } => Some(*f),
        _ => None,
    }
}

fn cohort_references(node: &CohortNode, flags: usize, out: &mut Vec<usize>) {
    match node {
        // Nesting is bounded by compilation (`MAX_PROPERTY_GROUP_DEPTH`).
        CohortNode::Group { children, .. } => children.iter().for_each(|c| cohort_references(c, flags, out)),
        CohortNode::Leaf { filter, .. } => out.extend(reference(filter, flags)),
    }
}

/// Tarjan's strongly connected components, with an explicit stack (a chain of references as long
/// as the input must not exhaust the thread's stack). Components come out children first: every
/// component a node refers to is emitted before the node's own.
fn strongly_connected(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const UNVISITED: usize = usize::MAX;
    let n = edges.len();
    let mut index = vec![UNVISITED; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut stack = Vec::new();
    let mut components = Vec::new();
    let mut next = 0;
    // (node, position of the next edge to follow)
    let mut calls: Vec<(usize, usize)> = Vec::new();
    for root in 0..n {
        if index[root] != UNVISITED {
            continue;
        }
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        calls.push((root, 0));
        while let Some(top) = calls.last_mut() {
            let (v, position) = *top;
            if let Some(&w) = edges[v].get(position) {
                top.1 += 1;
                if index[w] == UNVISITED {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(parent, _)) = calls.last() {
                low[parent] = low[parent].min(low[v]);
            }
            if low[v] == index[v] {
                let mut component = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                components.push(component);
            }
        }
    }
    components
}

impl FlagSet {
    /// Compiles definitions, refusing any problem (the first one found is the error): what a
    /// new definition must pass. `group_type_mapping` is PostHog's `{"0": "workspace", …}`,
    /// `cohorts` its `{"<id>": {"type": "OR", "values": [...]}}`. Deleted flags are skipped.
    pub fn new(
        definitions: Vec<FlagDefinition>,
        group_type_mapping: &Map<String, Value>,
        cohorts: &Map<String, Value>,
    ) -> Result<FlagSet, FlagError> {
        let set = FlagSet::compile(definitions, group_type_mapping, cohorts);
        match set.problems.first() {
            Some(problem) => Err(FlagError::invalid(problem.message.clone())),
            None => Ok(set),
        }
    }

    /// Compiles definitions whatever they hold: a flag or cohort with a problem is kept broken
    /// (see [`FlagSet::problems`]) and evaluates to an error, the others as usual. For
    /// definitions already stored, which must keep serving.
    pub fn compile(definitions: Vec<FlagDefinition>, group_type_mapping: &Map<String, Value>, cohorts: &Map<String, Value>) -> FlagSet {
        let definitions: Vec<FlagDefinition> = definitions.into_iter().filter(|d| !d.deleted).collect();
        let by_key: HashMap<String, usize> = definitions.iter().enumerate().map(|(i, d)| (d.key.clone(), i)).collect();
        let cohort_ids: Vec<String> = cohorts.keys().cloned().collect();
        let cohort_index: HashMap<String, usize> = cohort_ids.iter().enumerate().map(|(i, id)| (id.clone(), i)).collect();
        let names = Names { flags: &by_key, cohorts: &cohort_index };
        let mut problems = Vec::new();
        // Root cause of each broken node (flags, then cohorts), as an index into `problems`.
        let mut cause: Vec<Option<usize>> = vec![None; definitions.len() + cohort_ids.len()];

        let mut flags = Vec::with_capacity(definitions.len());
        for (i, definition) in definitions.into_iter().enumerate() {
            let conditions = match compile_flag(&definition, &names) {
                Ok(c) => c,
                Err(e) => {
                    cause[i] = Some(problems.len());
                    problems.push(Problem {
                        subject: Subject::Flag(definition.key.clone()),
                        error: EvalError::Invalid,
                        message: format!("flag `{}`: {e}", definition.key),
                    });
                    Vec::new()
                }
            };
            let mut variants = Vec::new();
            let mut upper = 0.0;
            for v in definition.filters.multivariate.iter().flat_map(|m| &m.variants) {
                upper += v.rollout_percentage / 100.0;
                variants.push((v.key.clone(), upper));
            }
            let device_bucketing = definition.bucketing_identifier.as_deref().or(definition.filters.bucketing_identifier.as_deref()) == Some("device_id");
            flags.push(CompiledFlag { definition, conditions, variants, device_bucketing, broken: None });
        }
        let mut compiled_cohorts = Vec::with_capacity(cohort_ids.len());
        for (i, (id, value)) in cohorts.iter().enumerate() {
            let root = match compile_cohort(value, &names, 0) {
                Ok(root) => root,
                Err(b) => {
                    cause[flags.len() + i] = Some(problems.len());
                    problems.push(Problem { subject: Subject::Cohort(id.clone()), error: b.error, message: format!("cohort {id}: {}", b.message) });
                    CohortNode::Group { and: true, children: vec![] }
                }
            };
            compiled_cohorts.push(CompiledCohort { root, broken: None });
        }

        let group_types = group_type_mapping
            .iter()
            .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_str()?.to_owned())))
            .collect();
        let mut set = FlagSet { flags, by_key, group_types, cohorts: compiled_cohorts, cohort_ids, problems, broken: Vec::new() };
        set.check_references(cause);
        set
    }

    fn subject(&self, node: usize) -> Subject {
        match node.checked_sub(self.flags.len()) {
            None => Subject::Flag(self.flags[node].definition.key.clone()),
            Some(c) => Subject::Cohort(self.cohort_ids[c].clone()),
        }
    }

    /// Finds cycles and over-deep chains of references between flags and cohorts, and marks
    /// broken every node on one or referring (directly or not) to a broken node. Linear in the
    /// number of references.
    fn check_references(&mut self, mut cause: Vec<Option<usize>>) {
        let n_flags = self.flags.len();
        let mut edges: Vec<Vec<usize>> = Vec::with_capacity(cause.len());
        for flag in &self.flags {
            edges.push(flag.conditions.iter().flat_map(|c| &c.filters).filter_map(|f| reference(f, n_flags)).collect());
        }
        for cohort in &self.cohorts {
            let mut out = Vec::new();
            cohort_references(&cohort.root, n_flags, &mut out);
            edges.push(out);
        }
        let mut error: Vec<Option<EvalError>> = cause.iter().map(|c| c.map(|p| self.problems[p].error)).collect();
        // References below each node (0 for a node that refers to nothing).
        let mut height = vec![0usize; edges.len()];
        for component in strongly_connected(&edges) {
            let cyclic = component.len() > 1 || edges[component[0]].contains(&component[0]);
            if cyclic {
                let kind = if component.iter().any(|&n| n < n_flags) { EvalError::FlagCycle } else { EvalError::CohortCycle };
                let mut members: Vec<String> = component.iter().map(|&n| self.subject(n).to_string()).collect();
                members.sort();
                let shown = members.len().min(5);
                let more = if members.len() > shown { format!(" and {} more", members.len() - shown) } else { String::new() };
                for &node in &component {
                    if cause[node].is_some() {
                        continue;
                    }
                    let subject = self.subject(node);
                    let message = if component.len() == 1 {
                        format!("{subject}: refers to itself (a cycle)")
                    } else {
                        format!("{subject}: a cycle of references among {}{more}", members[..shown].join(", "))
                    };
                    cause[node] = Some(self.problems.len());
                    error[node] = Some(kind);
                    self.problems.push(Problem { subject, error: kind, message });
                }
                continue;
            }
            let node = component[0];
            if cause[node].is_some() {
                continue;
            }
            // Every node referred to is in an earlier component: done.
            if let Some(&child) = edges[node].iter().find(|&&c| cause[c].is_some()) {
                cause[node] = cause[child];
                error[node] = error[child];
                continue;
            }
            height[node] = edges[node].iter().map(|&c| height[c] + 1).max().unwrap_or(0);
            if height[node] > MAX_DEPENDENCY_DEPTH {
                let subject = self.subject(node);
                let message = format!("{subject}: its chain of dependencies (flags and cohorts) is deeper than {MAX_DEPENDENCY_DEPTH}");
                cause[node] = Some(self.problems.len());
                error[node] = Some(EvalError::TooDeep);
                self.problems.push(Problem { subject, error: EvalError::TooDeep, message });
            }
        }
        for (node, c) in cause.iter().enumerate() {
            let Some(problem) = *c else { continue };
            match node.checked_sub(n_flags) {
                None => self.flags[node].broken = error[node],
                Some(i) => self.cohorts[i].broken = error[node],
            }
            self.broken.push((self.subject(node), problem));
        }
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

    /// The root causes of every broken flag and cohort, in the order found (empty for a sound set).
    pub fn problems(&self) -> &[Problem] {
        &self.problems
    }

    /// Every broken flag and cohort, with the root cause that breaks it (its own problem, or
    /// that of what it refers to).
    pub fn broken(&self) -> impl Iterator<Item = (&Subject, &Problem)> {
        self.broken.iter().map(|(subject, p)| (subject, &self.problems[*p]))
    }

    /// Evaluates one flag. `None` when the set has no such flag.
    pub fn evaluate(&self, key: &str, ctx: &Context<'_>) -> Option<Evaluation> {
        let index = *self.by_key.get(key)?;
        let mut scratch = Scratch::new(self.flags.len());
        Some(self.evaluate_index(index, ctx, &mut scratch, 0))
    }

    /// Evaluates every flag (sharing dependency results), in definition order.
    pub fn evaluate_all(&self, ctx: &Context<'_>) -> Vec<(&str, Evaluation)> {
        let mut scratch = Scratch::new(self.flags.len());
        (0..self.flags.len())
            .map(|i| (self.flags[i].definition.key.as_str(), self.evaluate_index(i, ctx, &mut scratch, 0)))
            .collect()
    }

    fn evaluate_index(&self, index: usize, ctx: &Context<'_>, scratch: &mut Scratch, depth: usize) -> Evaluation {
        match &scratch.flags[index] {
            Some(Slot::Done(e)) => return e.clone(),
            // A dependency cycle: compilation breaks every flag on one, so this is a guard only.
            Some(Slot::InProgress) => return Evaluation::error(EvalError::FlagCycle),
            None => {}
        }
        let flag = &self.flags[index];
        if let Some(error) = flag.broken {
            let evaluation = Evaluation::error(error);
            scratch.flags[index] = Some(Slot::Done(evaluation.clone()));
            return evaluation;
        }
        if depth > MAX_EVAL_DEPTH {
            return Evaluation::error(EvalError::TooDeep);
        }
        scratch.flags[index] = Some(Slot::InProgress);
        let mut evaluation = self.compute(flag, ctx, scratch, depth);
        if evaluation.value.is_enabled() {
            let payload_key = evaluation.value.variant().unwrap_or("true");
            evaluation.payload = flag.definition.filters.payloads.get(payload_key).cloned();
        }
        scratch.flags[index] = Some(Slot::Done(evaluation.clone()));
        evaluation
    }

    fn compute(&self, flag: &CompiledFlag, ctx: &Context<'_>, scratch: &mut Scratch, depth: usize) -> Evaluation {
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
        'conditions: for (i, condition) in flag.conditions.iter().enumerate() {
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
            for filter in &condition.filters {
                match self.filter_matches(filter, props, ctx, scratch, depth) {
                    Ok(true) => {}
                    Ok(false) => continue 'conditions,
                    Err(error) => return Evaluation::error(error),
                }
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

    fn filter_matches(&self, filter: &Filter, props: &Map<String, Value>, ctx: &Context<'_>, scratch: &mut Scratch, depth: usize) -> Result<bool, EvalError> {
        match filter {
            Filter::Property(m) => Ok(m.matches(props, ctx.now)),
            // Static cohorts (membership lists) are not known here: no one is in them.
            Filter::Cohort { cohort: None, negated } => Ok(*negated),
            Filter::Cohort { cohort: Some(index), negated } => Ok(self.in_cohort(*index, props, ctx, scratch, depth + 1)? != *negated),
            Filter::Flag { flag, expected, valid } => {
                let (true, Some(index)) = (*valid, *flag) else { return Ok(false) };
                let actual = self.evaluate_index(index, ctx, scratch, depth + 1);
                if let Reason::Error(error) = actual.reason {
                    return Err(error);
                }
                Ok(matches_dependency(expected, &actual.value))
            }
        }
    }

    /// Whether `props` are in the cohort, remembered for the rest of the request: a cohort
    /// referred to many times (directly or through others) is evaluated once per property map.
    fn in_cohort(&self, index: usize, props: &Map<String, Value>, ctx: &Context<'_>, scratch: &mut Scratch, depth: usize) -> Result<bool, EvalError> {
        let cohort = &self.cohorts[index];
        if let Some(error) = cohort.broken {
            return Err(error);
        }
        // The property maps live as long as the request's context: their address names them.
        let key = (index, props as *const Map<String, Value> as usize);
        if let Some(&member) = scratch.cohorts.get(&key) {
            return Ok(member);
        }
        let member = self.cohort_matches(&cohort.root, props, ctx, scratch, depth)?;
        scratch.cohorts.insert(key, member);
        Ok(member)
    }

    fn cohort_matches(&self, node: &CohortNode, props: &Map<String, Value>, ctx: &Context<'_>, scratch: &mut Scratch, depth: usize) -> Result<bool, EvalError> {
        if depth > MAX_EVAL_DEPTH {
            return Err(EvalError::TooDeep);
        }
        match node {
            CohortNode::Leaf { filter, negation } => Ok(self.filter_matches(filter, props, ctx, scratch, depth)? != *negation),
            CohortNode::Group { and, children } => {
                for child in children {
                    if self.cohort_matches(child, props, ctx, scratch, depth + 1)? != *and {
                        // AND: one false decides; OR: one true.
                        return Ok(!*and);
                    }
                }
                // Empty groups match; otherwise AND: all true, OR: none true.
                Ok(*and || children.is_empty())
            }
        }
    }
}

/// What one evaluation call remembers: each flag's result (dependencies are evaluated once) and
/// each cohort's per property map.
struct Scratch {
    flags: Vec<Option<Slot>>,
    cohorts: HashMap<(usize, usize), bool>,
}

impl Scratch {
    fn new(flags: usize) -> Self {
        Scratch { flags: vec![None; flags], cohorts: HashMap::new() }
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

//! Hostile definitions: cycles, chains and nesting far past the limits must neither overflow
//! the stack nor take the set down. `FlagSet::new` refuses them naming the flag or cohort;
//! `FlagSet::compile` (definitions already stored) keeps them, and the broken flags evaluate to
//! an error while the others keep their values.

use serde_json::{json, Map, Value};
use switchyard_flags::{Context, EvalError, FlagDefinition, FlagSet, FlagValue, Reason, Subject, MAX_DEPENDENCY_DEPTH};

fn flag(key: &str, properties: Value) -> FlagDefinition {
    serde_json::from_value(json!({"key": key, "filters": {"groups": [{"properties": properties, "rollout_percentage": 100}]}})).unwrap()
}

fn depends_on(key: &str) -> Value {
    json!([{"key": key, "type": "flag", "operator": "flag_evaluates_to", "value": true, "dependency_chain": [key]}])
}

fn in_cohort(id: &str) -> Value {
    json!([{"key": "id", "type": "cohort", "value": id}])
}

/// `chain_0` depends on `chain_1`, …, the last one on nothing; plus an unrelated `plain` flag.
fn chain(length: usize) -> Vec<FlagDefinition> {
    let mut flags: Vec<FlagDefinition> = (0..length)
        .map(|i| if i + 1 < length { flag(&format!("chain_{i}"), depends_on(&format!("chain_{}", i + 1))) } else { flag(&format!("chain_{i}"), json!([])) })
        .collect();
    flags.push(flag("plain", json!([])));
    flags
}

fn evaluate_all(set: &FlagSet, distinct_id: &str) -> Vec<(String, switchyard_flags::Evaluation)> {
    let props = Map::from_iter([("email".to_owned(), json!("a@b.c"))]);
    let empty = Map::new();
    let ctx = Context {
        distinct_id,
        device_id: None,
        continuity_key: None,
        person_properties: &props,
        groups: &empty,
        group_properties: &empty,
        now: chrono::Utc::now(),
    };
    set.evaluate_all(&ctx).into_iter().map(|(k, e)| (k.to_owned(), e)).collect()
}

fn result<'a>(results: &'a [(String, switchyard_flags::Evaluation)], key: &str) -> &'a switchyard_flags::Evaluation {
    &results.iter().find(|(k, _)| k == key).unwrap().1
}

#[test]
fn a_20000_deep_dependency_chain_is_refused_and_evaluates_to_errors() {
    let refused = FlagSet::new(chain(20_000), &Map::new(), &Map::new()).err().expect("refused");
    assert!(refused.to_string().contains("deeper than"), "{refused}");

    let set = FlagSet::compile(chain(20_000), &Map::new(), &Map::new());
    let problem = &set.problems()[0];
    assert_eq!(problem.error, EvalError::TooDeep);
    // The first flag whose chain passes the limit is named.
    assert_eq!(problem.subject, Subject::Flag(format!("chain_{}", 20_000 - 1 - MAX_DEPENDENCY_DEPTH - 1)));
    for distinct_id in ["user_1", "user_2"] {
        let results = evaluate_all(&set, distinct_id);
        assert_eq!(results.len(), 20_001);
        let top = result(&results, "chain_0");
        assert_eq!((top.value.clone(), top.reason), (FlagValue::Bool(false), Reason::Error(EvalError::TooDeep)));
        assert!(top.is_error());
        // Near the bottom the chain is within the limit: evaluated as usual.
        assert_eq!(result(&results, "chain_19990").value, FlagValue::Bool(true));
        assert_eq!(result(&results, "plain").value, FlagValue::Bool(true));
    }
    // One flag alone, from the top of the chain: no overflow either.
    let props = Map::new();
    let ctx = Context { distinct_id: "u", device_id: None, continuity_key: None, person_properties: &props, groups: &props, group_properties: &props, now: chrono::Utc::now() };
    assert!(set.evaluate("chain_0", &ctx).unwrap().is_error());
}

#[test]
fn a_chain_at_the_limit_evaluates() {
    let set = FlagSet::new(chain(MAX_DEPENDENCY_DEPTH + 1), &Map::new(), &Map::new()).expect("the limit itself is allowed");
    assert_eq!(result(&evaluate_all(&set, "u"), "chain_0").value, FlagValue::Bool(true));
    assert!(FlagSet::new(chain(MAX_DEPENDENCY_DEPTH + 2), &Map::new(), &Map::new()).is_err());
}

#[test]
fn a_self_referencing_cohort_is_refused_and_evaluates_to_an_error() {
    let cohorts = json!({"7": {"type": "OR", "values": [{"type": "AND", "values": [{"key": "id", "type": "cohort", "value": 7}]}]}});
    let flags = vec![flag("in_seven", in_cohort("7")), flag("plain", json!([]))];
    let refused = FlagSet::new(flags.clone(), &Map::new(), cohorts.as_object().unwrap()).err().expect("refused");
    assert!(refused.to_string().starts_with("cohort 7:"), "{refused}");
    assert!(refused.to_string().contains("cycle"), "{refused}");

    let set = FlagSet::compile(flags, &Map::new(), cohorts.as_object().unwrap());
    assert_eq!(set.problems().len(), 1);
    assert_eq!(set.problems()[0].error, EvalError::CohortCycle);
    let broken: Vec<&Subject> = set.broken().map(|(s, _)| s).collect();
    assert!(broken.contains(&&Subject::Flag("in_seven".into())) && broken.contains(&&Subject::Cohort("7".into())));
    let results = evaluate_all(&set, "u");
    assert_eq!(result(&results, "in_seven").reason, Reason::Error(EvalError::CohortCycle));
    assert_eq!(result(&results, "in_seven").reason.code(), "dependency_cycle_cohort");
    assert_eq!(result(&results, "plain").value, FlagValue::Bool(true));
}

#[test]
fn cycles_through_flags_and_cohorts_are_found() {
    // a → b → cohort 1 → a; c → a (broken by what it refers to); d fine.
    let cohorts = json!({"1": {"type": "AND", "values": [{"key": "a", "type": "flag", "operator": "flag_evaluates_to", "value": true, "dependency_chain": []}]}});
    let flags = vec![flag("a", depends_on("b")), flag("b", in_cohort("1")), flag("c", depends_on("a")), flag("d", depends_on("plain")), flag("plain", json!([]))];
    let set = FlagSet::compile(flags, &Map::new(), cohorts.as_object().unwrap());
    assert!(set.problems().iter().all(|p| p.error == EvalError::FlagCycle), "{:?}", set.problems());
    let results = evaluate_all(&set, "u");
    for key in ["a", "b", "c"] {
        assert!(result(&results, key).is_error(), "{key}");
    }
    assert_eq!(result(&results, "d").value, FlagValue::Bool(true));
}

#[test]
fn a_20000_deep_chain_of_cohorts_is_refused() {
    let mut cohorts = Map::new();
    for i in 0..20_000 {
        let inner = if i + 1 < 20_000 { json!({"key": "id", "type": "cohort", "value": i + 1}) } else { json!({"key": "email", "operator": "is_set", "value": "is_set"}) };
        cohorts.insert(i.to_string(), json!({"type": "AND", "values": [inner]}));
    }
    let flags = vec![flag("deep", in_cohort("0")), flag("shallow", in_cohort("19990"))];
    assert!(FlagSet::new(flags.clone(), &Map::new(), &cohorts).is_err());
    let set = FlagSet::compile(flags, &Map::new(), &cohorts);
    let results = evaluate_all(&set, "u");
    assert_eq!(result(&results, "deep").reason, Reason::Error(EvalError::TooDeep));
    assert_eq!(result(&results, "shallow").value, FlagValue::Bool(true));
}

/// `{"type": "AND", "values": [inner]}`, built without `json!` (which copies `inner` recursively).
fn and_group(inner: Value) -> Value {
    Value::Object(Map::from_iter([("type".to_owned(), json!("AND")), ("values".to_owned(), Value::Array(vec![inner]))]))
}

#[test]
fn property_groups_nested_past_the_limit_are_refused() {
    // 1,000 levels of AND groups around one filter (a stored one parses to at most 128).
    let mut group = json!({"key": "email", "operator": "is_set", "value": "is_set"});
    for _ in 0..1_000 {
        group = and_group(group);
    }
    let cohorts = Map::from_iter([("3".to_owned(), group)]);
    let flags = vec![flag("nested", in_cohort("3")), flag("plain", json!([]))];
    let refused = FlagSet::new(flags.clone(), &Map::new(), &cohorts).err().expect("refused");
    assert!(refused.to_string().starts_with("cohort 3:") && refused.to_string().contains("nested deeper"), "{refused}");
    let set = FlagSet::compile(flags, &Map::new(), &cohorts);
    let results = evaluate_all(&set, "u");
    assert_eq!(result(&results, "nested").reason, Reason::Error(EvalError::TooDeep));
    assert_eq!(result(&results, "plain").value, FlagValue::Bool(true));
    // Nesting within the limit evaluates.
    let mut group = json!({"key": "email", "operator": "is_set", "value": "is_set"});
    for _ in 0..10 {
        group = json!({"type": "OR", "values": [group]});
    }
    let set = FlagSet::new(vec![flag("nested", in_cohort("3"))], &Map::new(), &Map::from_iter([("3".to_owned(), group)])).unwrap();
    assert_eq!(result(&evaluate_all(&set, "u"), "nested").value, FlagValue::Bool(true));
}

#[test]
fn a_cohort_referred_to_many_times_is_evaluated_once_per_request() {
    // Cohort i is "in cohort i+1 AND in cohort i+1": without remembering answers, 2^30 visits.
    let mut cohorts = Map::new();
    for i in 0..30 {
        let inner = if i + 1 < 30 { json!({"key": "id", "type": "cohort", "value": i + 1}) } else { json!({"key": "email", "operator": "is_set", "value": "is_set"}) };
        cohorts.insert(i.to_string(), json!({"type": "AND", "values": [inner.clone(), inner]}));
    }
    let set = FlagSet::new(vec![flag("wide", in_cohort("0"))], &Map::new(), &cohorts).unwrap();
    let started = std::time::Instant::now();
    assert_eq!(result(&evaluate_all(&set, "u"), "wide").value, FlagValue::Bool(true));
    eprintln!("evaluated 30 doubling cohort levels in {:?}", started.elapsed());
}

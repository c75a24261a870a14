#!/usr/bin/env python3
"""Generates flag-evaluation cases and answers them with posthog-python's local evaluation.

Writes one JSON object per line to stdout:
  {"case": {flags, group_type_mapping, cohorts, key, distinct_id, device_id, groups,
            person_properties, group_properties},
   "expected": {"value": true|false|"variant", "payload": ...}
             | {"inconclusive": "<why>"}}

Where the SDK cannot decide locally for lack of context (it would ask the server), PostHog's
documented server behaviour answers instead (see install_server_rules); what is left undecided
(patterns the SDK will not translate, for instance) is marked inconclusive and not compared.

usage: posthog_oracle.py CASES SEED
"""

import json
import random
import sys
import warnings

warnings.simplefilter("ignore")

import datetime  # noqa: E402

import posthog.feature_flags as ff  # noqa: E402
from posthog import Posthog  # noqa: E402
from posthog.feature_flags import InconclusiveMatchError, RequiresServerEvaluation  # noqa: E402

NEGATIVE_OPERATORS = {"is_not", "is_not_set", "not_icontains", "not_regex", "not_starts_with",
                      "not_ends_with", "semver_neq"}

KEYS = ["email", "plan", "age", "country", "signup_date", "app_version", "is_beta", "score",
        "seats", "model"]
STRINGS = ["a@example.com", "b@acme.io", "pro", "team", "free", "Pro", "FR", "us", "gpt-4o-mini",
           "claude-3-5-sonnet", "", "ws_12", "ÉCOLE", "true", "false", "True", "10", "9", "3.5",
           "-2", "1e3", "abc123", "null"]
DATES = ["2024-01-01", "2025-06-15T10:00:00Z", "2026-11-01T00:00:00+02:00", "2023-12-31 23:59:59",
         "2026-11-20T12:00:00", "2019-05-05T05:05:05.123Z"]
RELATIVE = ["-30d", "-1y", "-6m", "-12h", "-2w", "7d", "-400d"]
VERSIONS = ["1.2.3", "v1.10.0", "0.2.9", "2.0.0", "1.2", "0.0.3", "10.4.1-beta", "1.02.0", "3"]
REGEXES = ["^a", "com$", "[0-9]+", "^(pro|team)$", "gpt-4", "(?i)PRO", "^$", "ws_\\d+", "[", "e.o"]


def rand_value(r):
    kind = r.random()
    if kind < 0.40:
        return r.choice(STRINGS)
    if kind < 0.60:
        return r.choice([0, 1, 2, 5, 9, 10, 12, 100, -3, 2.5, 3.0, 0.1, 1e20])
    if kind < 0.70:
        return r.choice([True, False])
    if kind < 0.80:
        return r.choice(DATES)
    if kind < 0.90:
        return r.choice(VERSIONS)
    if kind < 0.95:
        return None
    return r.choice([["pro", "team"], [1, 2], {"b": 1, "a": "x"}])


def rand_filter(r, key=None):
    key = key or r.choice(KEYS)
    op = r.choice(["exact", "exact", "is_not", "is_set", "is_not_set", "icontains", "not_icontains",
                   "starts_with", "not_starts_with", "ends_with", "not_ends_with", "regex",
                   "not_regex", "gt", "gte", "lt", "lte", "is_date_before", "is_date_after",
                   "semver_eq", "semver_neq", "semver_gt", "semver_gte", "semver_lt", "semver_lte",
                   "semver_tilde", "semver_caret", "semver_wildcard", None])
    if op in ("exact", "is_not", None):
        value = r.choice([rand_value(r), [r.choice(STRINGS) for _ in range(r.randint(1, 3))],
                          r.choice([True, False, "true", "false"])])
    elif op in ("is_set", "is_not_set"):
        value = "is_set" if op == "is_set" else "is_not_set"
    elif op in ("icontains", "not_icontains", "starts_with", "not_starts_with", "ends_with",
                "not_ends_with"):
        value = r.choice(["pro", "EXAMPLE", "@", "gpt", "1", "a", "true", "ws_", "É"])
    elif op in ("regex", "not_regex"):
        value = r.choice(REGEXES)
    elif op in ("gt", "gte", "lt", "lte"):
        value = r.choice([0, 1, 5, 9, 10, 2.5, "10", "3.5", "-1"])
    elif op in ("is_date_before", "is_date_after"):
        value = r.choice(DATES + RELATIVE)
    elif op == "semver_wildcard":
        value = r.choice(["1.*", "1.2.*", "0.*", "2.0.*"])
    else:
        value = r.choice(["1.2.3", "1.2.0", "0.2.3", "2.0.0", "1.10.0", "0.0.3"])
    f = {"key": key, "value": value, "type": "person"}
    if op is not None:
        f["operator"] = op
    return f


def property_value_for(r, f):
    """A value that often exercises the filter's operator."""
    op = f.get("operator")
    if r.random() < 0.35:
        return rand_value(r)
    if op in ("is_date_before", "is_date_after"):
        return r.choice(DATES)
    if op and op.startswith("semver"):
        return r.choice(VERSIONS)
    if op in ("gt", "gte", "lt", "lte"):
        return r.choice([0, 1, 5, 9, 10, 11, "10", "9", "3.5", 2.5, True, "abc"])
    v = f["value"]
    if isinstance(v, list) and v:
        return r.choice(v)
    return v if not isinstance(v, dict) else rand_value(r)


def rand_variants(r):
    n = r.randint(2, 4)
    cuts = sorted(r.sample(range(1, 100), n - 1))
    pcts = [b - a for a, b in zip([0] + cuts, cuts + [100])]
    return [{"key": f"v{i}", "name": f"Variant {i}", "rollout_percentage": p} for i, p in enumerate(pcts)]


def rand_flag(r, key, filters_for, variants=True):
    multivariate = {"variants": rand_variants(r)} if variants and r.random() < 0.4 else None
    groups = []
    for _ in range(r.randint(1, 3)):
        props = [filters_for() for _ in range(r.randint(0, 3))]
        cond = {"properties": props,
                "rollout_percentage": r.choice([None, None, 0, 10, 33.3, 50, 90, 100])}
        if multivariate and r.random() < 0.3:
            cond["variant"] = r.choice([v["key"] for v in multivariate["variants"]] + ["nope"])
        groups.append(cond)
    payloads = {}
    if r.random() < 0.5:
        payloads["true"] = json.dumps({"on": True})
        for v in (multivariate or {}).get("variants", []):
            payloads[v["key"]] = json.dumps({"variant": v["key"]})
    flag = {"id": r.randint(1, 10_000), "key": key, "name": key, "active": r.random() > 0.05,
            "deleted": False, "ensure_experience_continuity": False,
            "filters": {"groups": groups, "multivariate": multivariate, "payloads": payloads}}
    if r.random() < 0.05:
        flag["filters"]["holdout"] = {"id": r.randint(1, 99), "exclusion_percentage": r.choice([10, 50, 100])}
    return flag


def rand_cohort(r, depth=0):
    if depth < 2 and r.random() < 0.4:
        return {"type": r.choice(["AND", "OR"]), "values": [rand_cohort(r, depth + 1) for _ in range(r.randint(1, 3))]}
    leaf = rand_filter(r)
    if r.random() < 0.2:
        leaf["negation"] = True
    return {"type": r.choice(["AND", "OR"]), "values": [leaf] + [rand_filter(r) for _ in range(r.randint(0, 2))]}


def make_case(r, i):
    distinct_id = r.choice([f"user_{r.randint(0, 10**6)}", f"{r.randint(0, 10**9)}",
                            f"anon-{r.random():.8f}", "user_42"])
    group_type_mapping = {"0": "workspace", "1": "organization"}
    cohorts = {}
    category = r.random()
    flags = []
    key = f"flag_{i}"
    person = {}
    groups = {}
    group_properties = {}
    device_id = None

    if category < 0.12:
        # group flag
        index = r.choice([0, 1])
        flag = rand_flag(r, key, lambda: rand_filter(r))
        flag["filters"]["aggregation_group_type_index"] = index
        flags.append(flag)
        name = group_type_mapping[str(index)]
        if r.random() < 0.85:
            groups[name] = r.choice(["ws_1", "ws_2", "org_1", f"g{r.randint(0, 10**5)}"])
            group_properties[name] = {}
            for cond in flag["filters"]["groups"]:
                for f in cond["properties"]:
                    group_properties[name][f["key"]] = property_value_for(r, f)
    elif category < 0.22:
        # cohorts
        cohort_id = str(r.randint(1, 500))
        cohorts[cohort_id] = rand_cohort(r)

        def filters():
            if r.random() < 0.5:
                return {"key": "id", "type": "cohort", "value": int(cohort_id),
                        "operator": r.choice(["in", "in", "not_in"])}
            return rand_filter(r)
        flag = rand_flag(r, key, filters)
        flags.append(flag)

        def fill(node):
            for v in node.get("values", []):
                if "values" in v:
                    fill(v)
                else:
                    person[v["key"]] = property_value_for(r, v)
        fill(cohorts[cohort_id])
        for cond in flag["filters"]["groups"]:
            for f in cond["properties"]:
                if f.get("type") != "cohort":
                    person[f["key"]] = property_value_for(r, f)
    elif category < 0.32:
        # flag dependencies (person flags only)
        dep_key = f"dep_{i}"
        dep = rand_flag(r, dep_key, lambda: rand_filter(r))
        flags.append(dep)
        dep_variants = [v["key"] for v in ((dep["filters"].get("multivariate") or {}).get("variants") or [])]
        expected = r.choice([True, False] + dep_variants)

        def filters():
            if r.random() < 0.6:
                return {"key": dep_key, "type": "flag", "value": expected,
                        "operator": "flag_evaluates_to", "dependency_chain": [dep_key]}
            return rand_filter(r)
        flag = rand_flag(r, key, filters)
        flags.append(flag)
        for f_ in flags:
            for cond in f_["filters"]["groups"]:
                for f in cond["properties"]:
                    if f.get("type") != "flag":
                        person[f["key"]] = property_value_for(r, f)
    elif category < 0.40:
        # missing properties: one filter on a property the person does not have
        f = rand_filter(r)
        flag = {"id": 1, "key": key, "name": key, "active": True, "deleted": False,
                "ensure_experience_continuity": False,
                "filters": {"groups": [{"properties": [f], "rollout_percentage": None}],
                            "payloads": {}, "multivariate": None}}
        flags.append(flag)
        person = {k: rand_value(r) for k in KEYS if k != f["key"] and r.random() < 0.3}
    else:
        # person flags with every referenced property present
        flag = rand_flag(r, key, lambda: rand_filter(r))
        if r.random() < 0.05:
            flag["bucketing_identifier"] = "device_id"
            device_id = f"dev_{r.randint(0, 10**6)}"
        flags.append(flag)
        for cond in flag["filters"]["groups"]:
            for f in cond["properties"]:
                person[f["key"]] = property_value_for(r, f)
        for k in KEYS:
            if k not in person and r.random() < 0.2:
                person[k] = rand_value(r)

    return {"flags": flags, "group_type_mapping": group_type_mapping, "cohorts": cohorts, "key": key,
            "distinct_id": distinct_id, "device_id": device_id, "groups": groups,
            "person_properties": person, "group_properties": group_properties}, category


def payload_for(flag, value):
    if value is False:
        return None
    payloads = (flag.get("filters") or {}).get("payloads") or {}
    return payloads.get("true" if value is True else str(value))


def missing_property_expectation(case):
    flag = case["flags"][0]
    if not flag["active"]:
        return False
    f = flag["filters"]["groups"][0]["properties"][0]
    return (f.get("operator") or "exact") in NEGATIVE_OPERATORS


def install_server_rules():
    """Teach the SDK's evaluator PostHog's documented server behaviour where the SDK would give
    up ("inconclusive") for lack of context, so those cases are compared too:
    - a property the person does not have: positive operators fail, negative ones pass;
    - a date property that is a number: Unix seconds; any other unreadable date: no match;
    - a property that is not a valid version: no match."""
    missing_context = ff.UnresolvedFlagReason.MISSING_CONTEXT
    match_value = ff._match_property_value
    match_date = ff._match_date_property
    match_semver = ff._match_semver_property

    def server_match_property_value(prop, values, version):
        operator = prop.get("operator") or "exact"
        if operator in ff.PROPERTY_OPERATORS and prop.get("key") not in values:
            return operator in NEGATIVE_OPERATORS
        return match_value(prop, values, version)

    def server_match_date(operator, value, override):
        if isinstance(override, (int, float)) and not isinstance(override, bool):
            target = ff._parse_date_filter(value)
            try:
                own = datetime.datetime.fromtimestamp(override, tz=datetime.timezone.utc)
            except (OverflowError, OSError, ValueError):
                return False  # not a representable time
            return ff._compare_dates(operator, own, target)
        try:
            return match_date(operator, value, override)
        except InconclusiveMatchError as e:
            if e.reason == missing_context:
                return False
            raise

    def server_match_semver(operator, value, override):
        try:
            return match_semver(operator, value, override)
        except InconclusiveMatchError as e:
            if e.reason == missing_context:
                return False
            raise

    ff._match_property_value = server_match_property_value
    ff._match_date_property = server_match_date
    ff._match_semver_property = server_match_semver


def main():
    count, seed = int(sys.argv[1]), int(sys.argv[2])
    install_server_rules()
    r = random.Random(seed)
    client = Posthog("phc_oracle", personal_api_key="phx_oracle", host="http://127.0.0.1:9",
                     sync_mode=True, disabled=False, enable_local_evaluation=False)
    client.log.disabled = True
    out = sys.stdout
    for i in range(count):
        case, category = make_case(r, i)
        flags = case["flags"]
        snapshot = {"flags": flags, "flags_by_key": {f["key"]: f for f in flags},
                    "group_type_mapping": case["group_type_mapping"], "cohorts": case["cohorts"],
                    "property_matching_version": 1, "minimal_flag_called_events": False,
                    "flag_definition_version": 1}
        target = snapshot["flags_by_key"][case["key"]]
        try:
            value = client._compute_flag_locally(
                target, case["distinct_id"], groups=case["groups"],
                person_properties=case["person_properties"],
                group_properties=case["group_properties"], warn_on_unknown_groups=False,
                device_id=case["device_id"], _definition_snapshot=snapshot)
            expected = {"value": value, "payload": payload_for(target, value)}
        except (InconclusiveMatchError, RequiresServerEvaluation) as e:
            if 0.32 <= category < 0.40:
                value = missing_property_expectation(case)
                expected = {"value": value, "payload": payload_for(target, value), "server_rule": "missing_property"}
            else:
                expected = {"inconclusive": type(e).__name__ + ": " + str(e)[:120]}
        out.write(json.dumps({"case": case, "expected": expected}) + "\n")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Checks what the SDK drivers sent against what Switchyard's events API returns.

Reads the per-SDK records the drivers wrote (<out>/<sdk>.json), queries
GET /api/projects/@current/events/ by each SDK's trace_id and distinct ids
(polling up to --wait seconds), and asserts that every sent event arrived
intact. Each assertion group counts as one pass or one fail; failures print
the expected/actual values and, from the recording proxy's log, the HTTP
exchange that carried the event.

Feature flags: for the flags-* drivers (drivers/flags_*.py|js) it derives the expected
values from the imported definitions (--flag-definitions, evaluated with PostHog's rules),
checks every deterministic answer, and checks that remote and local evaluation, the two
server SDKs and OFREP agree on the hash-dependent ones; it also checks the definitions
endpoints (ETag/304) and the posthog-js remote config.

usage: check.py --api URL --secret KEY --out DIR [--proxy-log FILE] [--counts FILE]
                [--wait SECONDS] [--token TOKEN --flag-definitions FILE] [SDK ...]
"""

import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime, timedelta, timezone

# Every result carries at least these keys (values may be null/empty).
CONTRACT_FIELDS = ("id", "type", "event", "distinct_id", "user_id", "anonymous_id", "properties", "traits",
                   "context", "timestamp", "received_at", "trace_id", "span_id", "protocol")
TIMESTAMP_TOLERANCE = timedelta(seconds=2)   # explicit client timestamps (allows clock-skew correction)
WINDOW_SLACK = timedelta(seconds=15)         # implicit timestamps must fall inside the driver's run
NON_CAPTURE_PREFIXES = ("/flags", "/decide", "/array/", "/api/", "/ofrep/")


# --------------------------------------------------------------------------- output

class Results:
    def __init__(self):
        self.passed = 0
        self.failed = 0
        self.failures = []

    def check(self, name, ok, details=None):
        if ok:
            self.passed += 1
            print(f"PASS {name}")
        else:
            self.failed += 1
            self.failures.append(name)
            print(f"FAIL {name}")
            for line in (details or []):
                for sub in str(line).splitlines() or [""]:
                    print(f"     {sub}")
        sys.stdout.flush()
        return ok


def short(value, limit=600):
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False, sort_keys=True)
    return text if len(text) <= limit else text[:limit] + f"…[{len(text)} chars]"


# --------------------------------------------------------------------------- HTTP

def http_get(url, headers=None, timeout=5.0):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, res.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode("utf-8", "replace")
    except Exception as e:  # connection refused, timeout, ...
        return None, f"{type(e).__name__}: {e}"


class Api:
    def __init__(self, base, secret):
        self.base = base.rstrip("/")
        self.secret = secret
        self.log = []  # (url, status, body excerpt) of the last queries, for evidence

    def events(self, **params):
        """All results for a query (following `next`, at most 20 pages). Returns (results, error)."""
        params.setdefault("limit", "1000")
        url = f"{self.base}/api/projects/@current/events/?{urllib.parse.urlencode(params)}"
        results, pages, seen = [], 0, set()
        while url and pages < 20:
            if url in seen:
                return results, f"pagination loops: next={url}"
            seen.add(url)
            status, body = http_get(url, {"Authorization": f"Bearer {self.secret}", "Accept": "application/json"})
            self.log.append((url, status, body[:300]))
            self.log = self.log[-50:]
            if status != 200:
                return results, f"GET {url} -> {status}: {short(body, 400)}"
            try:
                data = json.loads(body)
            except ValueError:
                return results, f"GET {url} -> 200 but body is not JSON: {short(body, 400)}"
            if not isinstance(data, dict) or not isinstance(data.get("results"), list):
                return results, f"GET {url} -> 200 but no results list: {short(body, 400)}"
            results.extend(data["results"])
            nxt = data.get("next")
            pages += 1
            if not nxt:
                break
            url = nxt if nxt.startswith("http") else self.base + (nxt if nxt.startswith("/") else "/" + nxt)
        return results, None

    def quarantine_hits(self, needles):
        """Quarantine entries (GET .../quarantine/) whose raw event mentions every needle."""
        needles = [n for n in needles if n]
        if not needles:
            return []
        if getattr(self, "_quarantine", None) is None:
            url = f"{self.base}/api/projects/@current/quarantine/?limit=1000"
            status, body = http_get(url, {"Authorization": f"Bearer {self.secret}"})
            try:
                self._quarantine = json.loads(body).get("results", []) if status == 200 else []
            except (ValueError, AttributeError):
                self._quarantine = []
        out = []
        for q in self._quarantine:
            blob = json.dumps(q, ensure_ascii=False)
            if all(n in blob for n in needles):
                out.append(f"quarantined: reason={q.get('reason')!r} detail={short(q.get('detail'), 300)} "
                           f"received_at={q.get('received_at')}")
        return out[:3]


# --------------------------------------------------------------------------- helpers

def same(a, b):
    """Equality that also requires the same JSON type (1 != 1.0 != true)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return type(a) is type(b) and a == b
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def jtype(v):
    return {bool: "bool", int: "int", float: "float", str: "string", type(None): "null",
            dict: "object", list: "array"}.get(type(v), type(v).__name__)


def subset_diffs(expected, actual, where):
    """Differences for each expected key that is missing or differs in value/type in actual."""
    diffs = []
    if not isinstance(actual, dict):
        return [f"{where} is {jtype(actual)} {short(actual, 200)}, expected an object containing {short(expected)}"]
    for k, v in expected.items():
        if k not in actual:
            diffs.append(f"{where}.{k}: missing (sent {short(v, 200)} [{jtype(v)}])")
        elif not same(v, actual[k]):
            diffs.append(f"{where}.{k}: sent {short(v, 200)} [{jtype(v)}], stored {short(actual[k], 200)} [{jtype(actual[k])}]")
    return diffs


_FRACTION = re.compile(r"(\.\d+)")


def parse_ts(value):
    """Parse an ISO-8601 string (or epoch seconds/ms number) into an aware datetime, or None."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        secs = value / 1000.0 if value > 1e11 else float(value)
        return datetime.fromtimestamp(secs, tz=timezone.utc)
    if not isinstance(value, str):
        return None
    s = value.strip().replace(" ", "T", 1)
    if s.endswith("Z") or s.endswith("z"):
        s = s[:-1] + "+00:00"
    s = _FRACTION.sub(lambda m: m.group(1)[:7].ljust(7, "0") if len(m.group(1)) > 1 else "", s, count=1)
    try:
        dt = datetime.fromisoformat(s)
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def load_proxy_log(path):
    entries = []
    if path and os.path.exists(path):
        with open(path, encoding="utf-8") as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        entries.append(json.loads(line))
                    except ValueError:
                        pass
    return entries


def describe_exchange(e):
    body = e.get("req_body") or {}
    text = body.get("text")
    req = f"{e.get('method')} {e.get('path')}  [{(e.get('req_headers') or {}).get('content-type', '-')}, " \
          f"{(e.get('req_headers') or {}).get('content-encoding', 'identity')}, {body.get('size', 0)} bytes" \
          f"{', gzip' if body.get('gzip') is True else ''}]"
    resp = e.get("resp_body") or {}
    out = [f"request:  {req}  UA={(e.get('req_headers') or {}).get('user-agent', '-')[:60]}",
           f"response: {e.get('status')} {short(resp.get('text', resp.get('base64', '')), 300)}"
           + (f"  proxy_error={e['proxy_error']}" if e.get("proxy_error") else "")]
    if text is not None:
        out.append(f"body:     {short(text, 700)}")
    return out


def evidence(proxy_log, needles):
    """Proxy exchanges whose decoded request body contains every needle."""
    needles = [n for n in needles if n]
    if not needles or not proxy_log:
        return []
    hits = [e for e in proxy_log
            if all(n in ((e.get("req_body") or {}).get("text") or "") for n in needles)]
    if not hits:
        return [f"wire: no request seen by the proxy contains {needles} (the SDK never sent it?)"]
    out = []
    for e in hits[:3]:
        out.append("wire: " + describe_exchange(e)[0])
        out.extend("      " + x for x in describe_exchange(e)[1:])
    return out


# --------------------------------------------------------------------------- checks

def expected_types(rec):
    t = rec.get("type")
    return t if isinstance(t, list) else [t]


def find_match(rec, pool, used):
    """The stored event for a sent one: by id when the driver knows it, else by event+distinct_id."""
    if rec.get("id"):
        for r in pool:
            if r.get("id") == rec["id"]:
                return r
        return None
    for r in pool:
        key = id(r)
        if key in used:
            continue
        if r.get("event") == rec["event"] and r.get("distinct_id") == rec["distinct_id"]:
            return r
    return None


def check_sdk(res, api, sdk, record, proxy_log, wait_s):
    trace = record["trace_id"]
    events = record["events"]
    traced = [e for e in events if e.get("traced")]
    distinct_ids = sorted(set(record.get("distinct_ids", [])) | {e["distinct_id"] for e in events if e.get("distinct_id")})
    label = f"[{sdk}]"

    res.check(f"{label} driver recorded events", len(events) > 0, [f"record: {short(record, 400)}"])
    res.check(f"{label} SDK reported no delivery errors", not record.get("errors"),
              [f"error: {e}" for e in record.get("errors", [])[:10]])
    if sdk == "posthog-js":
        failed_net = [n for n in record.get("network", []) if n.get("failure") or (n.get("status") or 0) >= 400]
        # /flags, /decide and the remote-config *script* (config.js) may be missing (listed as INFO
        # from the proxy log); everything else, /array/<token>/config included, must work.
        bad = [n for n in failed_net if not re.search(r"/(flags|decide)/|/array/[^/]+/config\.js", n.get("url", ""))]
        res.check(f"{label} browser requests to the server succeeded (incl. CORS)", not bad,
                  [f"{n.get('method')} {n.get('url')} -> {n.get('status', n.get('failure'))}" for n in bad[:10]]
                  + [f"console {m}" for m in record.get("console", [])[:8]])

    # Poll until every sent event is visible, or the deadline passes.
    deadline = time.monotonic() + wait_s
    trace_results, dist_results, errors = [], {}, []
    while True:
        errors = []
        trace_results, err = api.events(trace_id=trace)
        if err:
            errors.append(err)
        dist_results = {}
        for d in distinct_ids:
            rs, err = api.events(distinct_id=d)
            if err:
                errors.append(err)
            dist_results[d] = rs
        pool = {}
        for r in trace_results + [r for rs in dist_results.values() for r in rs]:
            pool.setdefault(r.get("id") if r.get("id") else id(r), r)
        pool = list(pool.values())
        used = set()
        missing = 0
        for rec in events:
            m = find_match(rec, pool, used)
            if m is None:
                missing += 1
            else:
                used.add(id(m))
        trace_ok = len(trace_results) >= len(traced)
        if (missing == 0 and trace_ok and not errors) or time.monotonic() >= deadline:
            break
        time.sleep(0.5)

    res.check(f"{label} events API answers the trace_id / distinct_id queries", not errors, errors[:5])

    # Trace query: exactly the traced events, no duplicates, nothing foreign.
    got_ids = [r.get("id") for r in trace_results]
    known = {e["id"] for e in traced if e.get("id")}
    details = []
    if len(trace_results) != len(traced):
        details.append(f"trace_id={trace}: expected {len(traced)} events, API returned {len(trace_results)}")
    dups = sorted({i for i in got_ids if got_ids.count(i) > 1 and i is not None})
    if dups:
        details.append(f"duplicate ids returned: {dups}")
    foreign = [r for r in trace_results if r.get("trace_id") not in (trace, None) or
               (isinstance(r.get("properties"), dict) and r["properties"].get("trace_id") not in (trace, None))]
    if foreign:
        details.append(f"{len(foreign)} returned events belong to another trace, e.g. {short(foreign[0], 300)}")
    missing_ids = sorted(known - set(got_ids))
    if missing_ids:
        details.append(f"sent but not returned for the trace: "
                       + ", ".join(f"{e['event']}:{e['id']}" for e in traced if e.get('id') in missing_ids))
    res.check(f"{label} trace_id query returns exactly the {len(traced)} traced events", not details,
              details + [f"returned: " + ", ".join(f"{r.get('event')}:{r.get('id')}" for r in trace_results[:20])])

    # Newest first. The API orders by the log (newest appended first); requests handled at the
    # same time may be appended in either order, so by received_at two neighbours may be out of
    # order by at most 100 ms.
    def nonincreasing(key, slack_secs=0.0):
        ts = [parse_ts(r.get(key)) for r in trace_results]
        return all(t is not None for t in ts) and all(
            (ts[i] - ts[i + 1]).total_seconds() >= -slack_secs for i in range(len(ts) - 1))
    if len(trace_results) > 1:
        res.check(f"{label} results are newest first",
                  nonincreasing("timestamp") or nonincreasing("received_at", slack_secs=0.1),
                  [f"order: " + ", ".join(f"{r.get('event')}@{r.get('timestamp')}/{r.get('received_at')}"
                                          for r in trace_results[:12])])

    # Event filter narrows the trace query.
    if traced:
        name = traced[0]["event"]
        want = sum(1 for e in traced if e["event"] == name)
        rs, err = api.events(trace_id=trace, event=name)
        names = sorted({r.get("event") for r in rs})
        res.check(f"{label} event={name} filter returns only {want} {name} event(s)",
                  err is None and len(rs) == want and names == [name],
                  [err or f"returned {len(rs)} events named {names}"])

    # Per-event assertions.
    pool = {}
    for r in trace_results + [r for rs in dist_results.values() for r in rs]:
        pool.setdefault(r.get("id") if r.get("id") else id(r), r)
    pool = list(pool.values())
    used = set()
    started = parse_ts(record.get("started_at"))
    finished = parse_ts(record.get("finished_at")) or datetime.now(timezone.utc)
    missing_fields = {}
    for rec in events:
        name = f"{label} {rec['event']} ({rec.get('id') or 'id minted by the SDK'})"
        got = find_match(rec, pool, used)
        needles = [rec["id"]] if rec.get("id") else [rec["event"], rec["distinct_id"]]
        if not res.check(f"{name} stored", got is not None,
                         [f"sent: {short(rec, 500)}",
                          f"queried trace_id={trace} and distinct_id in {distinct_ids}; got "
                          + ", ".join(f"{r.get('event')}:{r.get('id')}" for r in pool[:15])]
                         + api.quarantine_hits(needles) + evidence(proxy_log, needles)):
            continue
        used.add(id(got))
        ev = evidence(proxy_log, [got.get("id")] if got.get("id") else needles)

        # Envelope: id, event, type, distinct_id, protocol, trace/span, user ids.
        d = []
        if rec.get("id") and got.get("id") != rec["id"]:
            d.append(f"id: sent {rec['id']!r}, stored {got.get('id')!r}")
        if not rec.get("id") and not (isinstance(got.get("id"), str) and got.get("id")):
            d.append(f"id: stored {got.get('id')!r}, expected a non-empty string")
        if got.get("event") != rec["event"]:
            d.append(f"event: expected {rec['event']!r}, stored {got.get('event')!r}")
        if got.get("type") not in expected_types(rec):
            d.append(f"type: expected {' or '.join(map(repr, expected_types(rec)))}, stored {got.get('type')!r}")
        if got.get("distinct_id") != rec["distinct_id"]:
            d.append(f"distinct_id: expected {rec['distinct_id']!r}, stored {got.get('distinct_id')!r}")
        if got.get("protocol") != record["protocol"]:
            d.append(f"protocol: expected {record['protocol']!r}, stored {got.get('protocol')!r}")
        if rec.get("traced"):
            if got.get("trace_id") != trace:
                d.append(f"trace_id: expected {trace!r}, stored {got.get('trace_id')!r}")
            span = rec.get("span_id") or (rec.get("properties") or {}).get("span_id")
            if span and got.get("span_id") != span:
                d.append(f"span_id: expected {span!r}, stored {got.get('span_id')!r}")
        for key in ("user_id", "anonymous_id"):
            if key in rec and got.get(key) != rec[key]:
                d.append(f"{key}: expected {rec[key]!r}, stored {got.get(key)!r}")
        for key in ("properties", "traits", "context"):
            if key in got and got[key] is not None and not isinstance(got[key], dict):
                d.append(f"{key}: stored a {jtype(got[key])}, expected an object")
        missing = [k for k in CONTRACT_FIELDS if k not in got]
        if missing:
            missing_fields.setdefault(tuple(missing), []).append(f"{got.get('event')}:{got.get('id')}")
        res.check(f"{name} envelope (id/event/type/distinct_id/protocol/trace)", not d,
                  d + [f"stored: {short(got, 900)}"] + ev)

        # Properties intact (values and JSON types).
        d = subset_diffs(rec.get("properties") or {}, got.get("properties"), "properties")
        if rec.get("properties"):
            res.check(f"{name} properties intact ({len(rec['properties'])} keys)", not d,
                      d + [f"stored properties: {short(got.get('properties'), 900)}"] + ev)

        # Person traits ($set / identify traits).
        if rec.get("traits") is not None:
            d = subset_diffs(rec["traits"], got.get("traits"), "traits")
            res.check(f"{name} traits intact", not d, d + [f"stored: {short(got, 900)}"] + ev)

        # Group call: group key/type and group traits.
        if rec.get("group"):
            g = rec["group"]
            blob = json.dumps(got, ensure_ascii=False)
            d = []
            if g.get("key") and json.dumps(g["key"]) not in blob:
                d.append(f"group key {g['key']!r} appears nowhere in the stored event")
            if g.get("type") and json.dumps(g["type"]) not in blob:
                d.append(f"group type {g['type']!r} appears nowhere in the stored event")
            props = got.get("properties") if isinstance(got.get("properties"), dict) else {}
            group_traits_places = [got.get("traits"), props.get("$group_set")]
            if g.get("traits") and not any(isinstance(p, dict) and not subset_diffs(g["traits"], p, "x")
                                           for p in group_traits_places):
                d.append(f"group traits {short(g['traits'])} found neither in traits nor in properties.$group_set")
            res.check(f"{name} group key and traits kept", not d, d + [f"stored: {short(got, 900)}"] + ev)

        # Values that must survive somewhere (alias targets, page/screen names).
        if rec.get("mentions"):
            blob = json.dumps(got, ensure_ascii=False)
            d = [f"{m!r} appears nowhere in the stored event" for m in rec["mentions"] if json.dumps(m, ensure_ascii=False) not in blob]
            res.check(f"{name} keeps {', '.join(map(repr, rec['mentions']))}", not d,
                      d + [f"stored: {short(got, 900)}"] + ev)

        # Timestamps.
        d = []
        ts = parse_ts(got.get("timestamp"))
        recv = parse_ts(got.get("received_at"))
        if ts is None:
            d.append(f"timestamp: {got.get('timestamp')!r} is not a timestamp")
        elif rec.get("timestamp"):
            sent_ts = parse_ts(rec["timestamp"])
            if abs(ts - sent_ts) > TIMESTAMP_TOLERANCE:
                d.append(f"timestamp: client sent {rec['timestamp']}, stored {got.get('timestamp')} "
                         f"({(ts - sent_ts).total_seconds():+.3f} s)")
        elif started and not (started - WINDOW_SLACK <= ts <= finished + WINDOW_SLACK):
            d.append(f"timestamp: {got.get('timestamp')} outside the driver's run {record.get('started_at')} .. {record.get('finished_at')}")
        if recv is None:
            d.append(f"received_at: {got.get('received_at')!r} is not a timestamp")
        elif started and not (started - WINDOW_SLACK <= recv <= datetime.now(timezone.utc) + WINDOW_SLACK):
            d.append(f"received_at: {got.get('received_at')} outside the run")
        res.check(f"{name} timestamp/received_at", not d, d)

    res.check(f"{label} results carry every contract field ({', '.join(CONTRACT_FIELDS)})", not missing_fields,
              [f"missing {', '.join(k)} in {len(v)} result(s): {', '.join(v[:6])}" for k, v in missing_fields.items()])


def check_proxy(res, proxy_log):
    if not proxy_log:
        return
    capture = [e for e in proxy_log if e.get("method") != "OPTIONS"
               and not str(e.get("path", "")).startswith(NON_CAPTURE_PREFIXES)]
    bad = [e for e in capture if not (isinstance(e.get("status"), int) and 200 <= e["status"] < 300)]
    d = []
    for e in bad[:6]:
        d.extend(describe_exchange(e))
    res.check(f"[wire] all {len(capture)} capture requests answered 2xx", not bad, d)

    origin_reqs = [e for e in proxy_log if (e.get("req_headers") or {}).get("origin")]
    if origin_reqs:
        no_cors = [e for e in origin_reqs if not (e.get("resp_headers") or {}).get("access-control-allow-origin")
                   and not str(e.get("path", "")).startswith(("/flags", "/decide"))]
        preflight_bad = [e for e in origin_reqs if e.get("method") == "OPTIONS"
                         and not (isinstance(e.get("status"), int) and 200 <= e["status"] < 300)]
        d = []
        for e in (no_cors + preflight_bad)[:6]:
            d.extend(describe_exchange(e))
            d.append(f"resp headers: {short(e.get('resp_headers'), 300)}")
        res.check(f"[wire] {len(origin_reqs)} cross-origin browser requests answered with CORS headers",
                  not no_cors and not preflight_bad, d)

    # Informational: everything non-2xx (including /flags, /decide 404s).
    others = [e for e in proxy_log if e not in bad and not (isinstance(e.get("status"), int) and 200 <= e["status"] < 300)]
    if others:
        print("INFO non-2xx responses on non-capture routes (not counted):")
        seen = set()
        for e in others:
            key = (e.get("method"), str(e.get("path")).split("?")[0], e.get("status"))
            if key in seen:
                continue
            seen.add(key)
            print(f"     {e.get('method')} {e.get('path')} -> {e.get('status')} "
                  f"{short((e.get('resp_body') or {}).get('text', ''), 160)}")


def check_auth(res, api):
    url = f"{api.base}/api/projects/@current/events/?limit=1"
    s1, b1 = http_get(url)
    s2, b2 = http_get(url, {"Authorization": "Bearer phs_definitely_wrong"})
    res.check("[api] events API rejects missing and wrong secret keys (401/403)",
              s1 in (401, 403) and s2 in (401, 403),
              [f"no Authorization -> {s1} {short(b1, 200)}", f"wrong bearer -> {s2} {short(b2, 200)}"])


# --------------------------------------------------------------------------- feature flags
#
# Expected values come from the definitions file run.sh imported (examples/platform-flags.json),
# evaluated here with PostHog's matching rules for the operators it uses (exact, icontains,
# regex; $group_key and distinct_id as properties; first matching condition wins; a condition's
# variant override picks the variant). Anything that depends on the rollout hash (a rollout
# below 100 %, or a variant picked by hash) is "hash": only agreement between remote and local
# evaluation (and between the SDKs) is asserted for it.

FLAG_EVAL_PATHS = ("/flags", "/decide", "/ofrep/")
OFREP_REASONS = ("STATIC", "DEFAULT", "TARGETING_MATCH", "SPLIT", "CACHED", "DISABLED", "UNKNOWN", "STALE", "ERROR")


def load_flag_definitions(path):
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    return {"flags": {fl["key"]: fl for fl in spec.get("flags", [])},
            "group_type_mapping": spec.get("group_type_mapping") or {}, "raw": spec}


def _match_property(prop, props):
    """True/False, or None when the property is missing (PostHog: inconclusive locally)."""
    key, op, want = prop.get("key"), prop.get("operator") or "exact", prop.get("value")
    if key not in props:
        return None
    got = props[key]
    if op == "exact":
        values = want if isinstance(want, list) else [want]
        return str(got).casefold() in [str(v).casefold() for v in values]
    if op == "icontains":
        return str(want).casefold() in str(got).casefold()
    if op == "regex":
        return re.search(str(want), str(got)) is not None
    raise ValueError(f"operator {op!r} not supported by the e2e evaluator")


def expected_flag(defs, key, case, remote):
    """{kind: exact|hash|inconclusive|missing, value, payload, why} for one flag and one case."""
    flag = defs["flags"].get(key)
    if flag is None:
        return {"kind": "missing", "value": None, "payload": None, "why": f"{key} is not defined"}
    if not flag.get("active", True):
        return {"kind": "exact", "value": False, "payload": None, "why": "flag inactive"}
    filters = flag.get("filters") or {}
    agg = filters.get("aggregation_group_type_index")
    if agg is not None:
        group_type = defs["group_type_mapping"].get(str(agg))
        groups = case.get("groups") or {}
        if group_type not in groups:
            return {"kind": "exact", "value": False, "payload": None,
                    "why": f"group flag on {group_type!r} and no {group_type} group passed"}
        props = dict((case.get("group_properties") or {}).get(group_type) or {})
        props["$group_key"] = str(groups[group_type])
    else:
        props = dict(case.get("person_properties") or {})
        props.setdefault("distinct_id", case["distinct_id"])
    variants = [v.get("key") for v in ((filters.get("multivariate") or {}).get("variants") or [])]
    inconclusive = False
    for i, cond in enumerate(filters.get("groups") or [], 1):
        results = []
        for p in cond.get("properties") or []:
            r = _match_property(p, props)
            if r is None and remote:
                r = False  # the server has no value for it (fresh ids): no match
            results.append((p, r))
        if any(r is False for _, r in results):
            continue
        if any(r is None for _, r in results):
            inconclusive = True
            continue
        rollout = cond.get("rollout_percentage")
        rollout = 100 if rollout is None else rollout
        desc = " and ".join(f"{p.get('key')} {p.get('operator', 'exact')} {p.get('value')!r}" for p, _ in results) or "everyone"
        if rollout <= 0:
            continue
        if rollout < 100:
            return {"kind": "hash", "value": None, "payload": None,
                    "why": f"condition {i} ({desc}) matches at {rollout}% rollout: depends on the hash"}
        if variants:
            if cond.get("variant") in variants:
                value = cond["variant"]
            else:
                return {"kind": "hash", "value": None, "payload": None,
                        "why": f"condition {i} ({desc}) matches; the variant depends on the hash"}
        else:
            value = True
        raw = (filters.get("payloads") or {}).get("true" if value is True else value)
        payload = json.loads(raw) if isinstance(raw, str) else raw
        return {"kind": "exact", "value": value, "payload": payload,
                "why": f"condition {i} ({desc}) matches" + (f" -> variant {value}" if value is not True else "")}
    if inconclusive:
        return {"kind": "inconclusive", "value": None, "payload": None,
                "why": "a condition needs a property the case does not pass"}
    return {"kind": "exact", "value": False, "payload": None, "why": "no condition matches"}


def expected_call(exp, call):
    if call == "value":
        return exp["value"]
    if call == "enabled":
        return bool(exp["value"])
    if call == "payload":
        return exp["payload"]
    raise ValueError(call)


FLAG_UA = {"flags-posthog-python": "posthog-python", "flags-posthog-node": "posthog-node", "flags-posthog-js": "Mozilla"}


def flag_evidence(proxy_log, needle, paths=FLAG_EVAL_PATHS, limit=2, ua=None):
    """The last exchanges on these paths whose body (or path) mentions needle, from the SDK with user agent ua."""
    hits = [e for e in proxy_log if str(e.get("path", "")).startswith(paths)
            and (ua is None or str((e.get("req_headers") or {}).get("user-agent", "")).startswith(ua))
            and needle in (((e.get("req_body") or {}).get("text") or "") + str(e.get("path")))]
    out = []
    for e in hits[-limit:]:
        lines = describe_exchange(e)
        out.append("wire: " + lines[0])
        out.extend("      " + x for x in lines[1:])
    return out


def check_flag_results(res, label, defs, record, proxy_log, ua=None):
    """Deterministic expectations per (case, mode); returns {(case, mode, call, flag): value} for agreement."""
    cases = {cs["id"]: cs for cs in record.get("cases", [])}
    grouped, answers = {}, {}
    for r in record.get("results", []):
        # the sweep_<i> cases (rollout-hash agreement) are reported together
        group = "sweep" if r["case"].startswith("sweep_") else r["case"]
        grouped.setdefault((group, r["mode"]), []).append(r)
        answers[(r["case"], r["mode"], r["call"], r["flag"])] = r
    for (group, mode), rows in grouped.items():
        missing = sorted({r["case"] for r in rows if r["case"] not in cases})
        if missing:
            res.check(f"{label} {mode} {group}: case inputs recorded", False, [f"no inputs recorded for {missing}"])
            continue
        remote = mode == "remote"
        exps_by_case = {cid: {k: expected_flag(defs, k, cases[cid], remote) for k in defs["flags"]}
                        for cid in {r["case"] for r in rows}}
        d, n_exact, n_hash = [], 0, 0
        for r in rows:
            exps = exps_by_case[r["case"]]
            where = f"{r['case'] + ' ' if group == 'sweep' else ''}{r['method']}({r['flag'] or ''})"
            if "error" in r:
                d.append(f"{where} raised {r['error']}")
                continue
            if r["call"] == "all":
                got_all = r["value"] if isinstance(r["value"], dict) else None
                if got_all is None:
                    d.append(f"{where}: returned {short(r['value'], 200)}, expected an object")
                    continue
                for k, exp in exps.items():
                    if exp["kind"] != "exact":
                        n_hash += 1
                        continue
                    n_exact += 1
                    if r["method"] == "onFeatureFlags":  # posthog-js passes only the truthy flags
                        want, got = (exp["value"] if exp["value"] else None), got_all.get(k)
                    else:
                        want, got = exp["value"], got_all.get(k, "<absent>")
                    if not same(want, got):
                        d.append(f"{where}[{k}]: expected {want!r} ({exp['why']}), got {got!r}")
                continue
            exp = exps.get(r["flag"])
            if exp is None or exp["kind"] != "exact":
                n_hash += 1
                # whatever the hash decides, the answer is a flag value (not None / undefined / an error)
                variants = [v.get("key") for v in (((defs["flags"].get(r["flag"]) or {}).get("filters") or {})
                                                   .get("multivariate") or {}).get("variants") or []]
                ok_values = {"value": [False, True] + variants, "enabled": [False, True]}.get(r["call"])
                if ok_values is not None and (r.get("undefined") or not any(same(r["value"], v) for v in ok_values)):
                    d.append(f"{where}: got {'undefined' if r.get('undefined') else repr(r['value'])}, "
                             f"expected one of {ok_values} ({exp['why'] if exp else 'unknown flag'})")
                continue
            n_exact += 1
            want = expected_call(exp, r["call"])
            if not same(want, r["value"]) or (r.get("undefined") and want is not None):
                got = "undefined" if r.get("undefined") else repr(r["value"])
                d.append(f"{where}: expected {want!r} ({exp['why']}), got {got}")
        cs = cases[rows[0]["case"]]
        n_cases = len(exps_by_case)
        inputs = (f"distinct_id={cs['distinct_id']!r} person_properties={short(cs.get('person_properties'), 200)} "
                  f"groups={short(cs.get('groups'), 120)} group_properties={short(cs.get('group_properties'), 120)}"
                  + (f" (first of {n_cases} cases)" if n_cases > 1 else ""))
        ev = flag_evidence(proxy_log, cs["distinct_id"], paths=("/flags/?", "/flags?", "/decide"), ua=ua) if remote else \
            flag_evidence(proxy_log, "", paths=("/flags/definitions", "/api/feature_flag/local_evaluation"), limit=1, ua=ua)
        res.check(f"{label} {mode} {group}{f' ({n_cases} distinct ids)' if n_cases > 1 else ''}: "
                  f"{n_exact} deterministic answers match the definitions"
                  + (f" ({n_hash} hash-dependent left to the agreement checks)" if n_hash else ""),
                  not d, d[:12] + [f"inputs: {inputs}"] + ev)
    return answers


def check_agreement(res, name, left, right, defs, cases, what):
    """left/right: {(case, call, flag): entry}. Every key in both must hold the same value."""
    common = sorted(set(left) & set(right), key=str)
    d, n_hash = [], 0
    for k in common:
        a, b = left[k], right[k]
        case_id, call, flag = k
        cs = cases.get(case_id)
        if cs is not None and flag and expected_flag(defs, flag, cs, True)["kind"] == "hash":
            n_hash += 1
        # an absent payload is undefined in posthog-node and None in posthog-python: the same answer
        undef = None if call == "payload" else "undefined"
        va = "error: " + a["error"] if "error" in a else (undef if a.get("undefined") else a.get("value"))
        vb = "error: " + b["error"] if "error" in b else (undef if b.get("undefined") else b.get("value"))
        if not same(va, vb):
            d.append(f"{case_id} {a.get('method')}({flag or ''}): {what[0]} {va!r}, {what[1]} {vb!r}"
                     + (f"  [distinct_id {cs['distinct_id']}]" if cs else ""))
    res.check(f"{name}: {len(common)} answers agree ({n_hash} of them hash-dependent)",
              bool(common) and not d, (d[:15] or [f"nothing to compare ({len(left)} vs {len(right)} answers)"]))


def check_flags_sdk(res, sdk, record, defs, proxy_log):
    label = f"[{sdk}]"
    res.check(f"{label} driver reported no SDK errors", not record.get("errors"),
              [f"error: {e}" for e in record.get("errors", [])[:10]])
    if sdk == "flags-openfeature":
        return check_openfeature(res, label, record, defs, proxy_log)
    if sdk == "flags-posthog-python":
        loaded = (record.get("local") or {}).get("loaded_flags") or []
        res.check(f"{label} load_feature_flags() loaded the {len(defs['flags'])} imported definitions",
                  sorted(loaded) == sorted(defs["flags"]),
                  [f"loaded: {loaded}"] + flag_evidence(proxy_log, "", paths=("/flags/definitions",), limit=1, ua=FLAG_UA[sdk]))
    if sdk == "flags-posthog-node":
        loc = record.get("local") or {}
        res.check(f"{label} waitForLocalEvaluationReady() -> true",
                  loc.get("ready") is True and loc.get("is_ready") is True,
                  [f"local: {loc}"] + flag_evidence(proxy_log, "", paths=("/flags/definitions",), limit=1, ua=FLAG_UA[sdk]))
    if sdk == "flags-posthog-js":
        net = record.get("network") or []
        flag_reqs = [n for n in net if re.search(r"/(flags|decide)/", n.get("url", ""))]
        bad = [n for n in net if n.get("failure") or (n.get("status") or 0) >= 400]
        res.check(f"{label} page requests to the server ({len(flag_reqs)} to /flags) answered 2xx",
                  flag_reqs and not bad,
                  [f"{n.get('method')} {n.get('url')} -> {n.get('status', n.get('failure'))}" for n in (bad or net)[:10]]
                  + [f"console {m}" for m in record.get("console", [])[:6]])
        res.check(f"{label} flags load on page load for the anonymous visitor (onFeatureFlags before identify)",
                  record.get("anon_loaded") is True,
                  ["onFeatureFlags never fired within 4 s of posthog.init(); posthog-js only requests /flags on load "
                   "when /array/<token>/config says hasFeatureFlags != false",
                   f"page requests: " + ", ".join(f"{n.get('method')} {n.get('url')} {n.get('status')}" for n in net[:8])])
        last = record.get("last_callback") or {}
        res.check(f"{label} reloadFeatureFlags() after identify/group answered through onFeatureFlags without errors",
                  record.get("reloaded") is True and last.get("errorsLoading") is False
                  and record.get("identified_distinct_id") == (record.get("cases") or [{}])[0].get("distinct_id"),
                  [f"reloaded={record.get('reloaded')} last callback={short(last, 400)} "
                   f"distinct_id={record.get('identified_distinct_id')!r}"])
    answers = check_flag_results(res, label, defs, record, proxy_log, ua=FLAG_UA.get(sdk))
    if sdk in ("flags-posthog-python", "flags-posthog-node"):
        cases = {cs["id"]: cs for cs in record.get("cases", [])}
        remote = {(k[0], k[2], k[3]): v for k, v in answers.items() if k[1] == "remote"}
        local = {(k[0], k[2], k[3]): v for k, v in answers.items() if k[1] == "local"}
        check_agreement(res, f"{label} remote and local evaluation", remote, local, defs, cases, ("remote", "local"))
    return answers


def ofrep_case(context):
    ctx = dict(context)
    cs = {"id": "ofrep", "distinct_id": ctx.pop("targetingKey", None), "groups": ctx.pop("groups", {}) or {},
          "group_properties": {}}
    cs["person_properties"] = ctx
    return cs


def check_openfeature(res, label, record, defs, proxy_log):
    for r in record.get("results", []):
        name = f"{label} {r['method']}({r['flag']!r}, {r['default']!r}, {json.dumps(r['context'])})"
        det = r.get("details") or {}
        ev = flag_evidence(proxy_log, str(r["context"].get("targetingKey")), paths=(f"/ofrep/v1/evaluate/flags/{r['flag']}",))
        if "error" in r:
            res.check(name, False, [f"raised {r['error']}"] + ev)
            continue
        exp = expected_flag(defs, r["flag"], ofrep_case(r["context"]), remote=True)
        d, want_desc = [], ""
        has_details = r["method"].endswith("Details")
        if exp["kind"] == "missing":
            want_desc = f"default {r['default']!r}, FLAG_NOT_FOUND"
            if not same(det.get("value"), r["default"]):
                d.append(f"value: expected the default {r['default']!r}, got {det.get('value')!r}")
            if has_details and det.get("errorCode") != "FLAG_NOT_FOUND":
                d.append(f"errorCode: expected 'FLAG_NOT_FOUND', got {det.get('errorCode')!r}")
        elif exp["kind"] != "exact":
            res.check(name + " answered", det.get("errorCode") is None, [f"details: {short(det)}"] + ev)
            continue
        elif jtype(exp["value"]) != jtype(r["default"]):
            want_desc = f"default {r['default']!r}, TYPE_MISMATCH (flag is {jtype(exp['value'])})"
            if not same(det.get("value"), r["default"]):
                d.append(f"value: expected the default {r['default']!r}, got {det.get('value')!r}")
            if has_details and det.get("errorCode") != "TYPE_MISMATCH":
                d.append(f"errorCode: expected 'TYPE_MISMATCH' ({exp['why']}: a {jtype(exp['value'])}), got {det.get('errorCode')!r}")
        else:
            want_desc = f"{exp['value']!r}"
            if not same(det.get("value"), exp["value"]):
                d.append(f"value: expected {exp['value']!r} ({exp['why']}), got {det.get('value')!r}")
            if has_details:
                if det.get("errorCode") is not None:
                    d.append(f"errorCode: expected none, got {det.get('errorCode')!r} {det.get('errorMessage')!r}")
                if det.get("reason") not in OFREP_REASONS:
                    d.append(f"reason: {det.get('reason')!r} is not an OpenFeature reason")
                if r["name"] == "debugger_user_42" and det.get("reason") != "TARGETING_MATCH":
                    want_desc += ", TARGETING_MATCH"
                    d.append(f"reason: expected 'TARGETING_MATCH' ({exp['why']}), got {det.get('reason')!r}")
                if exp["payload"] is not None:
                    raw = (det.get("flagMetadata") or {}).get("payload")
                    try:
                        got_payload = json.loads(raw) if isinstance(raw, str) else raw
                    except ValueError:
                        got_payload = raw
                    want_desc += " with its payload"
                    if not same(got_payload, exp["payload"]):
                        d.append(f"flagMetadata.payload: expected {json.dumps(exp['payload'])!r}, got {raw!r}")
        res.check(f"{name} -> {want_desc}", not d, d + [f"details: {short(det)}"] + ev)

    # Bulk evaluation: deterministic values, one check over every context.
    d, n = [], 0
    for b in record.get("bulk", []):
        cs = ofrep_case(b["context"])
        if "error" in b or b.get("status") != 200 or not isinstance((b.get("body") or {}).get("flags"), list):
            d.append(f"{b['case']}: status={b.get('status')} error={b.get('error')} body={short(b.get('body') or b.get('body_text'), 300)}")
            continue
        got = {f.get("key"): f for f in b["body"]["flags"]}
        for k in defs["flags"]:
            exp = expected_flag(defs, k, cs, remote=True)
            if k not in got:
                d.append(f"{b['case']}: flag {k} missing from the bulk answer")
                continue
            if exp["kind"] != "exact":
                continue
            n += 1
            if not same(got[k].get("value"), exp["value"]):
                d.append(f"{b['case']} {k}: expected {exp['value']!r} ({exp['why']}), got {got[k].get('value')!r}")
    res.check(f"{label} POST /ofrep/v1/evaluate/flags: {n} deterministic values over {len(record.get('bulk', []))} contexts match the definitions",
              bool(record.get("bulk")) and not d,
              d[:12] + flag_evidence(proxy_log, "", paths=("/ofrep/v1/evaluate/flags",), limit=1))
    return None


def bulk_answers(record):
    """OFREP bulk values in the shape of posthog get_feature_flag answers: {(case, 'value', flag): entry}."""
    out = {}
    for b in record.get("bulk", []):
        for f in ((b.get("body") or {}).get("flags") or []) if isinstance(b.get("body"), dict) else []:
            out[(b["case"], "value", f.get("key"))] = {"method": "ofrep bulk", "value": f.get("value")}
    return out


def http_request(url, headers=None, timeout=5.0):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, {k.lower(): v for k, v in r.headers.items()}, r.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as e:
        return e.code, {k.lower(): v for k, v in e.headers.items()}, e.read().decode("utf-8", "replace")
    except Exception as e:
        return None, {}, f"{type(e).__name__}: {e}"


def check_flag_definitions(res, api, token, defs):
    """The imported definitions as the SDKs fetch them (both endpoints), with ETag/304, plus remote config."""
    wanted = defs["raw"]
    endpoints = [
        f"/flags/definitions?token={urllib.parse.quote(token)}&send_cohorts",
        "/api/feature_flag/local_evaluation/?send_cohorts",
    ]
    for path in endpoints:
        url = api.base + path
        auth = {"Authorization": f"Bearer {api.secret}"}
        status, headers, body = http_request(url, auth)
        d = []
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if status != 200 or not isinstance(data, dict):
            d.append(f"GET {path} -> {status}: {short(body, 400)}")
        else:
            got = {f.get("key"): f for f in data.get("flags") or []}
            for key, fl in defs["flags"].items():
                if key not in got:
                    d.append(f"flag {key} missing (got {sorted(got)})")
                    continue
                if not same(got[key].get("filters"), fl.get("filters")):
                    d.append(f"{key}.filters differ from the imported file: {short(got[key].get('filters'), 400)}")
                if got[key].get("active") is not fl.get("active", True):
                    d.append(f"{key}.active: {got[key].get('active')!r}")
            extra = sorted(set(got) - set(defs["flags"]))
            if extra:
                d.append(f"unexpected flags: {extra}")
            # group types seen in events since (e.g. Segment/RudderStack group calls) may be added
            mapping = data.get("group_type_mapping")
            want_map = wanted.get("group_type_mapping") or {}
            if not isinstance(mapping, dict) or any(mapping.get(k) != v for k, v in want_map.items()):
                d.append(f"group_type_mapping: {mapping!r} does not contain the imported {want_map!r}")
            if not isinstance(data.get("cohorts"), dict):
                d.append(f"cohorts: {data.get('cohorts')!r}, expected an object (send_cohorts)")
            etag = headers.get("etag")
            if not etag:
                d.append("no ETag header")
            else:
                s2, _, b2 = http_request(url, dict(auth, **{"If-None-Match": etag}))
                if s2 != 304:
                    d.append(f"If-None-Match: {etag} -> {s2} (expected 304) {short(b2, 200)}")
        s3, _, b3 = http_request(url)
        if s3 not in (401, 403):
            d.append(f"without Authorization -> {s3} (expected 401/403) {short(b3, 200)}")
        res.check(f"[flags] GET {path.split('?')[0]} serves the {len(defs['flags'])} imported flags (ETag/304, secret key required)",
                  not d, d)
    status, _, body = http_request(f"{api.base}/array/{urllib.parse.quote(token)}/config")
    try:
        has = json.loads(body).get("hasFeatureFlags")
    except (ValueError, AttributeError):
        has = None
    res.check("[flags] GET /array/<token>/config says hasFeatureFlags: true once flags exist (posthog-js loads flags on init only then)",
              status == 200 and has is True,
              [f"GET /array/{token}/config -> {status} hasFeatureFlags={has!r}", f"body: {short(body, 400)}"])


def check_flags_cross(res, records, defs):
    """posthog-python vs posthog-node (both modes), and OFREP bulk vs posthog-python remote."""
    py, node, of = (records.get(k) for k in ("flags-posthog-python", "flags-posthog-node", "flags-openfeature"))
    if py and node:
        cases = {cs["id"]: cs for cs in py.get("cases", [])}
        for mode in ("remote", "local"):
            a = {(r["case"], r["call"], r["flag"]): r for r in py.get("results", []) if r["mode"] == mode}
            b = {(r["case"], r["call"], r["flag"]): r for r in node.get("results", []) if r["mode"] == mode}
            check_agreement(res, f"[flags] posthog-python and posthog-node, {mode} evaluation", a, b, defs, cases,
                            ("posthog-python", "posthog-node"))
    if py and of:
        cases = {cs["id"]: cs for cs in py.get("cases", [])}
        a = {(r["case"], r["call"], r["flag"]): r for r in py.get("results", []) if r["mode"] == "remote" and r["call"] == "value"}
        check_agreement(res, "[flags] OFREP bulk values and posthog-python get_feature_flag", a, bulk_answers(of), defs, cases,
                        ("posthog-python", "OFREP"))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--api", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--proxy-log")
    ap.add_argument("--counts")
    ap.add_argument("--wait", type=float, default=15.0)
    ap.add_argument("--token", help="project token (flag checks)")
    ap.add_argument("--flag-definitions", help="the flag definitions run.sh imported (flag checks)")
    ap.add_argument("sdks", nargs="*")
    args = ap.parse_args()

    res = Results()
    api = Api(args.api, args.secret)
    proxy_log = load_proxy_log(args.proxy_log)
    check_auth(res, api)
    defs = load_flag_definitions(args.flag_definitions) if args.flag_definitions else None
    flag_records = {}
    for sdk in args.sdks:
        path = os.path.join(args.out, f"{sdk}.json")
        if not res.check(f"[{sdk}] driver record exists", os.path.exists(path), [f"missing {path} (driver failed?)"]):
            continue
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        try:
            if sdk.startswith("flags-"):
                if defs is None:
                    res.check(f"[{sdk}] flag definitions given (--flag-definitions)", False)
                    continue
                flag_records[sdk] = record
                check_flags_sdk(res, sdk, record, defs, proxy_log)
            else:
                check_sdk(res, api, sdk, record, proxy_log, args.wait)
        except Exception as e:  # a checker bug must not hide the other SDKs' results
            import traceback
            res.check(f"[{sdk}] checker ran without crashing", False, traceback.format_exc().splitlines())
    if defs is not None:
        try:
            if args.token:
                check_flag_definitions(res, api, args.token, defs)
            check_flags_cross(res, flag_records, defs)
        except Exception:
            import traceback
            res.check("[flags] checker ran without crashing", False, traceback.format_exc().splitlines())
    check_proxy(res, load_proxy_log(args.proxy_log))

    print(f"check.py totals: passed={res.passed} failed={res.failed}")
    if args.counts:
        with open(args.counts, "w") as f:
            f.write(f"{res.passed} {res.failed}\n")
    return 0 if res.failed == 0 else 1

if __name__ == "__main__":
    sys.exit(main())

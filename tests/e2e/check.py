#!/usr/bin/env python3
"""Checks what the SDK drivers sent against what Switchyard's events API returns.

Reads the per-SDK records the drivers wrote (<out>/<sdk>.json), queries
GET /api/projects/@current/events/ by each SDK's trace_id and distinct ids
(polling up to --wait seconds), and asserts that every sent event arrived
intact. Each assertion group counts as one pass or one fail; failures print
the expected/actual values and, from the recording proxy's log, the HTTP
exchange that carried the event.

usage: check.py --api URL --secret KEY --out DIR [--proxy-log FILE] [--counts FILE]
                [--wait SECONDS] SDK [SDK ...]
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
NON_CAPTURE_PREFIXES = ("/flags", "/decide", "/array/", "/api/")


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

    # Newest first (by timestamp or by received_at).
    def nonincreasing(key):
        ts = [parse_ts(r.get(key)) for r in trace_results]
        return all(t is not None for t in ts) and all(ts[i] >= ts[i + 1] for i in range(len(ts) - 1))
    if len(trace_results) > 1:
        res.check(f"{label} results are newest first", nonincreasing("timestamp") or nonincreasing("received_at"),
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--api", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--proxy-log")
    ap.add_argument("--counts")
    ap.add_argument("--wait", type=float, default=15.0)
    ap.add_argument("sdks", nargs="+")
    args = ap.parse_args()

    res = Results()
    api = Api(args.api, args.secret)
    proxy_log = load_proxy_log(args.proxy_log)
    check_auth(res, api)
    for sdk in args.sdks:
        path = os.path.join(args.out, f"{sdk}.json")
        if not res.check(f"[{sdk}] driver record exists", os.path.exists(path), [f"missing {path} (driver failed?)"]):
            continue
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
        try:
            check_sdk(res, api, sdk, record, proxy_log, args.wait)
        except Exception as e:  # a checker bug must not hide the other SDKs' results
            import traceback
            res.check(f"[{sdk}] checker ran without crashing", False, traceback.format_exc().splitlines())
    check_proxy(res, load_proxy_log(args.proxy_log))

    print(f"check.py totals: passed={res.passed} failed={res.failed}")
    if args.counts:
        with open(args.counts, "w") as f:
            f.write(f"{res.passed} {res.failed}\n")
    return 0 if res.failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Reads each run's trace view from Switchyard and checks it against what the clients sent.

Expected values come from the fake LLM server's usage (fakes.py) and the golden costs of
shared/reference/llm-analytics.md §2.6 (PostHog's cost algorithm, LiteLLM 1.110.2 prices), never
from the server:

  gpt-4o-mini            in 12 (4 cached), out 5 (2 reasoning inside)   4.5e-6
  claude-sonnet-4-5      in 10, out 6, cache read 20, cache write 30     2.385e-4
  gemini-2.5-flash       in 8 (1 cached), out 3 + thoughts 2             1.463e-5
  text-embedding-3-small in 7                                            1.4e-7

The openai-v2 instrumentation reports no cached tokens (only gen_ai.usage.input/output_tokens),
so its chat spans cost 12 x 1.5e-7 + 5 x 6e-7 = 4.8e-6 with the same prices.

usage: check.py --api URL --secret KEY --out DIR --counts FILE [--wait S] RUN...
Prints PASS/FAIL lines and "N passed, M failed"; writes "N M" to --counts.
"""
import argparse
import json
import sys
import time
import urllib.error
import urllib.request

TOLERANCE = 1e-12
GPT = 4.5e-6  # gpt-4o-mini, 4 of the 12 input tokens cached
GPT_NO_CACHE_INFO = 12 * 1.5e-7 + 5 * 6e-7  # 4.8e-6: openai-v2 drops the cached count
CLAUDE = 2.385e-4
GEMINI = 1.463e-5
EMBEDDING = 1.4e-7


def call(model, tokens_in, tokens_out, cost, error=False, kind="generation"):
    return {"type": kind, "model": model, "in": tokens_in, "out": tokens_out, "cost": cost, "error": error}


FAIL_CALL = call("fail-model", 0, 0, 0.0, error=True)
EMBED_CALL = call("text-embedding-3-small", 7, 0, EMBEDDING, kind="embedding")


def otel_run(chat_cost, names, product_events):
    """The root span, 2 chats, a 429 and embeddings; `names`: span name -> how many."""
    return {
        "calls": [call("gpt-4o-mini", 12, 5, chat_cost), call("gpt-4o-mini", 12, 5, chat_cost), FAIL_CALL, EMBED_CALL],
        "spans": 5,
        "nodes": {"invoke_agent demo": 1, **names},
        "root": "invoke_agent demo",  # every other span hangs below it
        "errors": 1,
        "flags": {"agent-prompt": "b"},
        "product_events": product_events,
    }


# openai-v2 names a span "<operation> <request model>".
V2_NAMES = {"chat gpt-4o-mini": 2, "chat fail-model": 1, "embeddings text-embedding-3-small": 1}

# What each run must show. "calls": the LLM-call nodes (type generation/embedding) by model;
# "nodes": node names that must appear (with their count); "spans": totals.spans (OTLP spans).
EXPECTED = {
    "posthog-python": {
        "calls": [call("gpt-4o-mini", 12, 5, GPT), call("gpt-4o-mini", 12, 5, GPT), FAIL_CALL, call("text-embedding-3-small", 7, 0, EMBEDDING, kind="embedding"),
                  call("claude-sonnet-4-5", 10, 6, CLAUDE), call("claude-sonnet-4-5", 10, 6, CLAUDE)],
        "spans": 0,
        "nodes": {"get_weather": 1, "agent_run": 1},
        "errors": 1,
        "tool_calls": 1,
        "flags": {"agent-prompt": "variant-b"},
        "product_events": ["tool_used"],
    },
    "posthog-langchain": {
        "calls": [call("gpt-4o-mini", 12, 5, GPT)],
        "spans": 0,
        "nodes": {"ChatPromptTemplate": 1, "RunnableLambda": 1, "agent_run": 1},
        "errors": 0,
        "flags": {"agent-model": "cheap"},
    },
    "posthog-gemini": {
        "calls": [call("gemini-2.5-flash", 8, 3, GEMINI)],
        "spans": 0,
        "errors": 0,
    },
    "posthog-node": {
        "calls": [call("gpt-4o-mini", 12, 5, GPT), call("gpt-4o-mini", 12, 5, GPT)],
        "spans": 0,
        "errors": 0,
        "flags": {"agent-prompt": "b"},
    },
    "posthog-otel": {
        "calls": [call("gpt-4o-mini", 12, 5, GPT_NO_CACHE_INFO)],
        "spans": 1,  # the processor forwards GenAI spans only: the "http request" parent stays home
        "nodes": {"chat gpt-4o-mini": 1},
        "errors": 0,
    },
    "otel-v2-proto": otel_run(GPT_NO_CACHE_INFO, V2_NAMES, ["tool_used"]),
    "otel-openllmetry-proto": otel_run(GPT, {"openai.chat": 3, "openai.embeddings": 1}, []),
    "otel-v2-json": otel_run(GPT_NO_CACHE_INFO, V2_NAMES, []),
    "langfuse": {
        "calls": [call("gpt-4o-mini", 12, 5, GPT)],
        "spans": 3,
        "nodes": {"agent_run": 1, "llm_step": 1, "get_weather": 1},
        "root": "agent_run",
        "errors": 0,
        "tool_calls": 1,
    },
}
# A FAIL_CALL's output is the error, not tokens; the 429 costs nothing.

passed = failed = 0


def ok(cond, what, detail=""):
    global passed, failed
    if cond:
        passed += 1
        print(f"PASS {what}")
    else:
        failed += 1
        print(f"FAIL {what}" + (f"\n     {detail}" if detail else ""))
    return cond


def get(api, secret, path):
    req = urllib.request.Request(api + path, headers={"Authorization": f"Bearer {secret}"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")[:300]
    except (urllib.error.URLError, OSError) as e:
        return 0, str(e)


def walk(nodes, depth=0):
    for n in nodes:
        yield n, depth
        yield from walk(n.get("children") or [], depth + 1)


def model_of(node):
    d = node.get("detail") or {}
    return d.get("model") or d.get("gen_ai.response.model") or d.get("gen_ai.request.model")


def complete(view, exp):
    """Whether the view holds everything the run sent (so polling can stop)."""
    if not isinstance(view, dict):
        return False
    t = view.get("totals", {})
    names = [e.get("event") for e in view.get("events", [])]
    return (t.get("llm_calls", 0) >= len(exp["calls"]) and t.get("spans", 0) >= exp["spans"]
            and all(p in names for p in exp.get("product_events", []))
            and all(sum(1 for n, _ in walk(view.get("tree", [])) if n.get("name") == k) >= c for k, c in exp.get("nodes", {}).items()))


def close(a, b):
    return isinstance(a, (int, float)) and abs(a - b) <= TOLERANCE


def check_run(api, secret, run, record, wait):
    exp = EXPECTED[run]
    trace = record["trace_id"]
    exp = dict(exp, product_events=record.get("product_events", exp.get("product_events", [])))
    deadline = time.time() + wait
    while True:
        status, view = get(api, secret, f"/api/projects/@current/traces/{trace}")
        if (status == 200 and complete(view, exp)) or time.time() > deadline:
            break
        time.sleep(0.3)
    if not ok(status == 200, f"{run}: GET /api/projects/@current/traces/{trace} -> 200", f"got {status}: {view}"):
        return
    t = view["totals"]
    nodes = list(walk(view["tree"]))
    summary = [(n["type"], n["name"], model_of(n), n["input_tokens"], n["output_tokens"], n["cost_usd"], n["is_error"]) for n, _ in nodes]
    show = f"nodes (type, name, model, in, out, cost, error): {summary}"

    # The LLM calls, one by one: model, tokens, cost, error.
    calls = sorted((n for n, _ in nodes if n["type"] in ("generation", "embedding")), key=lambda n: (str(model_of(n)), n["is_error"], n["start"] or ""))
    want = sorted(exp["calls"], key=lambda c: (c["model"], c["error"]))
    ok(len(calls) == len(want) and t["llm_calls"] == len(want),
       f"{run}: {len(want)} LLM calls ({', '.join(c['model'] for c in want)})",
       f"tree has {len(calls)} generation/embedding nodes, totals.llm_calls={t['llm_calls']}; {show}")
    for n, c in zip(calls, want):
        label = f"{run}: {c['type']} {c['model']}{' (error)' if c['error'] else ''}"
        got = {"type": n["type"], "model": model_of(n), "in": n["input_tokens"], "out": n["output_tokens"], "error": n["is_error"]}
        ok(got == {k: c[k] for k in ("type", "model", "in", "out", "error")},
           f"{label}: type, model, tokens in {c['in']} / out {c['out']}, is_error={c['error']}", f"got {got}; node {json.dumps(n)[:600]}")
        ok(close(n["cost_usd"], c["cost"]), f"{label}: cost_usd {c['cost']:.6g} (±1e-12)",
           f"got {n['cost_usd']!r} (diff {n['cost_usd'] - c['cost']:.3g}); detail {n.get('detail')}")

    # Totals.
    tin, tout, tcost = sum(c["in"] for c in want), sum(c["out"] for c in want), sum(c["cost"] for c in want)
    ok(t["input_tokens"] == tin and t["output_tokens"] == tout, f"{run}: totals input/output tokens {tin}/{tout}",
       f"got {t['input_tokens']}/{t['output_tokens']}; {show}")
    ok(close(t["cost_usd"], tcost), f"{run}: totals cost_usd {tcost:.6g}", f"got {t['cost_usd']!r}")
    ok(t["errors"] == exp["errors"], f"{run}: totals errors {exp['errors']}", f"got {t['errors']}; {show}")
    ok(t["spans"] == exp["spans"], f"{run}: totals spans {exp['spans']} (OTLP spans stored)", f"got {t['spans']}; {show}")
    if "tool_calls" in exp:
        ok(t["tool_calls"] == exp["tool_calls"], f"{run}: totals tool_calls {exp['tool_calls']}", f"got {t['tool_calls']}")

    # The tree: the named nodes, and (OTel, Langfuse) one root holding every other span.
    for name, count in exp.get("nodes", {}).items():
        got = sum(1 for n, _ in nodes if n["name"] == name)
        ok(got == count, f"{run}: {count} node(s) named {name!r}", f"got {got}; {show}")
    if "root" in exp:
        roots = [n["name"] for n in view["tree"]]
        ok(roots == [exp["root"]] and len(nodes) == t["spans"],
           f"{run}: one root {exp['root']!r} with every span below it", f"roots {roots}; {len(nodes)} nodes for {t['spans']} spans; {show}")

    # Flags and product events.
    for key, variant in exp.get("flags", {}).items():
        ok(view.get("flags", {}).get(key) == variant, f"{run}: flag {key} = {variant!r}", f"flags {view.get('flags')}")
    names = [e.get("event") for e in view.get("events", [])]
    for event in exp["product_events"]:
        ok(event in names, f"{run}: product event {event} in the trace's events", f"events {names}")
    if exp["product_events"] and "tool_used" in exp["product_events"]:
        ok(t.get("tool_calls", 0) >= 1, f"{run}: tool_used counted in totals.tool_calls", f"totals {t}")
    return trace


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--api", required=True)
    ap.add_argument("--secret", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--counts", required=True)
    ap.add_argument("--wait", type=float, default=15)
    ap.add_argument("runs", nargs="+")
    a = ap.parse_args()
    traces = []
    try:
        for run in a.runs:
            if run not in EXPECTED:
                continue
            try:
                record = json.load(open(f"{a.out}/{run}.json"))
            except (OSError, ValueError) as e:
                ok(False, f"{run}: the driver recorded its trace id", str(e))
                continue
            trace = check_run(a.api, a.secret, run, record, a.wait)
            if trace:
                traces.append(trace)
        if traces:
            status, body = get(a.api, a.secret, "/api/projects/@current/traces/?limit=500")
            listed = {r["trace_id"] for r in body.get("results", [])} if isinstance(body, dict) else set()
            missing = [t for t in traces if t not in listed]
            ok(status == 200 and not missing, f"GET /api/projects/@current/traces/ lists all {len(traces)} runs' traces", f"{status}; missing {missing}")
            status, _ = get(a.api, "phs_wrong_secret_0123456789abcdefghij", f"/api/projects/@current/traces/{traces[0]}")
            ok(status in (401, 403), "the trace view refuses a wrong secret key (401/403)", f"got {status}")
    finally:
        print(f"check.py: {passed} passed, {failed} failed")
        with open(a.counts, "w") as f:
            f.write(f"{passed} {failed}\n")


if __name__ == "__main__":
    sys.exit(main())

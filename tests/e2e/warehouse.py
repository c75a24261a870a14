#!/usr/bin/env python3
"""The lake, read by a real DuckDB, gives the same counts and sums as `switchyard sql` and as the
events API.

Starts its own `switchyard serve` (random loopback port, temp data dir, a config file with
`[warehouse] max_wait_secs = 1`), sends a few thousand catalog events with posthog-python (agent
runs over the last 3 days: tool_used, flow_executed, agent_execution, agent_error,
$ai_generation, $ai_embedding, model_cost, prompt_blocked, rag_query_triggered, each with its
trace id; users, workspaces and organizations over a few values; $identify and $set calls), waits
until `switchyard sql "SELECT count(*) FROM event_logs"` reaches the number sent and the lake's
files stop changing, then compares three readers of the same lake -- DuckDB (PyPI `duckdb`)
over `read_parquet(..., union_by_name = true)`, `switchyard sql --format json` (DataFusion in the
server) and `GET /api/projects/@current/events` -- with each other and with what was sent:

- count by event (event_logs), and the ids the events API lists;
- count(*) of `tracks`, of each per-event table and of `identifies`; the `users` view's rows;
- sum(cost_usd), sum(input_tokens) by workspace_id, model (model_cost_logs), as exact decimals;
- count by event and UTC day (date_trunc), and every row in the `day=` directory of its day;
- agent_trace_history (the server's view) against the same view SQL run by DuckDB over
  agent_trace_events, and against the fold computed here from the events sent;
- `switchyard sql` refuses writes (DELETE, DROP, COPY ... TO) and nothing changes.

usage: SWITCHYARD_BIN=target/debug/switchyard python3 tests/e2e/warehouse.py
env:   SWITCHYARD_BIN  server binary (default target/release/switchyard, relative to the repo root)
       E2E_WH_RUNS     agent runs to send (default 400, about 7 events each)
       E2E_WH_SEED     seed of the generated events (default: random, printed)
       E2E_WAIT        seconds to wait for the lake (default 60)
       E2E_KEEP=1      keep the temp dir (config, server log, data) even when everything passed
Prints one PASS/FAIL line per assertion and, last, "N passed, M failed"; exits non-zero on any
failure, keeping the temp dir.
"""

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
import uuid
from collections import Counter, defaultdict
from datetime import datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path

import duckdb
from posthog import Posthog
from rudderstack.analytics.client import Client as RudderClient

ROOT = Path(__file__).resolve().parents[2]
PROJECT_TOKEN = "phc_wh_e2e_token"
WRITE_KEY = "wh_e2e_write_key"
SECRET_KEY = "phs_wh_e2e_secret_0123456789abcdefghij"
# The lake keeps 12 fractional digits (NUMERIC(38, 12)), rounding half to even beyond.
SCALE = Decimal("1e-12")

passed = failed = 0


def check(ok, what, detail=""):
    global passed, failed
    if ok:
        passed += 1
        print(f"PASS warehouse: {what}", flush=True)
    else:
        failed += 1
        print(f"FAIL warehouse: {what}", flush=True)
        if detail:
            for line in str(detail).splitlines():
                print(f"     {line}", flush=True)


def log(msg):
    print(f"--- {msg}", flush=True)


def diff(a, b, a_name, b_name, limit=10):
    """The keys where two {key: value} maps differ, for a FAIL line."""
    keys = sorted(set(a) | set(b), key=repr)
    lines = [f"{k!r}: {a_name}={a.get(k, '<missing>')!r} {b_name}={b.get(k, '<missing>')!r}" for k in keys if a.get(k) != b.get(k)]
    more = f"\n... and {len(lines) - limit} more" if len(lines) > limit else ""
    return "\n".join(lines[:limit]) + more


def same(what, maps):
    """One PASS/FAIL per pair of readers: maps is [(name, {key: value})], the first the reference."""
    (ref_name, ref), *others = maps
    summary = f"{len(ref)} groups"
    if ref and all(isinstance(v, int) for v in ref.values()):
        summary += f", {sum(ref.values())} rows"
    for name, other in others:
        check(ref == other and len(ref) > 0, f"{what}: {ref_name} = {name} ({summary})", diff(ref, other, ref_name, name))


# ---------------------------------------------------------------- values


def utc_text(t):
    """A timestamp as the server prints it: RFC 3339, microseconds, Z."""
    if isinstance(t, str):
        t = datetime.fromisoformat(t.replace("Z", "+00:00"))
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def exact(value):
    """The decimal the lake stores for a JSON number sent from Python: the server parses the
    number's shortest text (what `json.dumps` writes, `repr`), keeping 12 fractional digits."""
    return Decimal(repr(value)).quantize(SCALE, rounding=ROUND_HALF_EVEN)


def from_sql(value, kind):
    if value is None:
        return None
    if kind.startswith("decimal"):
        return Decimal(value)
    if kind == "datetime":
        return utc_text(value)
    return value


def from_duckdb(value):
    if isinstance(value, datetime):
        return utc_text(value)
    return value


# ---------------------------------------------------------------- the server


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def clean_env():
    """Our environment without SWITCHYARD_* (the server rejects unknown ones and the CLI would
    take SWITCHYARD_URL/SECRET_KEY from it) and without backtraces on CLI errors."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SWITCHYARD_")}
    env.pop("RUST_BACKTRACE", None)
    env.pop("RUST_LIB_BACKTRACE", None)
    return env


class Server:
    def __init__(self, binary, work):
        self.binary = binary
        self.work = work
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data = work / "data"
        self.log_path = work / "server.log"
        self.config = work / "switchyard.toml"
        self.config.write_text(
            "\n".join(
                [
                    f"data_dir = {json.dumps(str(self.data))}",
                    f'listen = "127.0.0.1:{self.port}"',
                    f'project_token = "{PROJECT_TOKEN}"',
                    f'write_key = "{WRITE_KEY}"',
                    f'secret_key = "{SECRET_KEY}"',
                    "",
                    "[warehouse]",
                    "max_wait_secs = 1",
                    "",
                ]
            )
        )
        self.proc = None

    def start(self):
        log(f"starting {self.binary} serve on {self.url} (config {self.config})")
        self.log_file = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            [str(self.binary), "serve", "--config", str(self.config)], stdout=self.log_file, stderr=subprocess.STDOUT, env=clean_env()
        )
        started = time.monotonic()
        while time.monotonic() - started < 30:
            if self.proc.poll() is not None:
                check(False, f"server exited during startup with code {self.proc.returncode}", self.tail())
                return False
            try:
                with urllib.request.urlopen(self.url + "/_readiness", timeout=2) as r:
                    if r.status == 200:
                        check(True, f"server ready within {time.monotonic() - started:.1f} s")
                        return True
            except OSError:
                pass
            time.sleep(0.1)
        check(False, "server not ready within 30 s", self.tail())
        return False

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self):
        if not self.alive():
            return None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            log("server still running 15 s after SIGTERM; killing it")
            self.proc.kill()
            return self.proc.wait()
        finally:
            self.log_file.close()

    def tail(self, lines=40):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def sql(self, query):
        """`switchyard sql --format json`: (returncode, {column: [values]} rows as dicts, stderr)."""
        done = subprocess.run(
            [str(self.binary), "sql", query, "--format", "json", "--url", self.url, "--secret-key", SECRET_KEY],
            capture_output=True,
            text=True,
            timeout=90,
            env=clean_env(),
        )
        if done.returncode != 0:
            return done.returncode, None, done.stderr.strip()
        answer = json.loads(done.stdout)
        rows = [
            {c: from_sql(v, t) for c, t, v in zip(answer["columns"], answer["types"], row)} for row in answer["results"]
        ]
        return 0, rows, done.stderr.strip()

    def sql_rows(self, query):
        code, rows, err = self.sql(query)
        if code != 0:
            raise RuntimeError(f"switchyard sql {query!r} exited with {code}: {err}")
        return rows

    def api(self, path):
        request = urllib.request.Request(self.url + path, headers={"Authorization": f"Bearer {SECRET_KEY}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())


# ---------------------------------------------------------------- what the platform sends

WORKSPACES = {"ws_acme": "org_acme", "ws_acme_research": "org_acme", "ws_globex": "org_globex", "ws_initech": "org_initech"}
USERS = [
    ("user_ada", "ws_acme"),
    ("user_brian", "ws_acme"),
    ("user_chen", "ws_acme_research"),
    ("user_dana", "ws_globex"),
    ("user_emeka", "ws_globex"),
    ("user_farah", "ws_initech"),
    ("svc_scheduler", "ws_initech"),
]
# Per-token prices in 1e-12 USD ($0.15 per million tokens = 150_000).
CHAT_MODELS = [
    ("gpt-4o-mini", "openai", 150_000, 600_000),
    ("gpt-4o", "openai", 2_500_000, 10_000_000),
    ("claude-sonnet-4-5", "anthropic", 3_000_000, 15_000_000),
    ("gemini-2.5-flash", "google", 300_000, 2_500_000),
]
EMBEDDING_MODEL = ("text-embedding-3-small", "openai", 20_000)
AGENTS = ["agent_support", "agent_sql_analyst", "agent_researcher", "agent_triage"]
FLOWS = ["flow_ticket_triage", "flow_nightly_report", "flow_lead_enrichment"]
TOOLS = [("web_search", "builtin"), ("sql_query", "connector"), ("http_get", "http"), ("python", "code"), ("github", "mcp")]


def cost_of(rng, tokens_in, tokens_out, price_in, price_out):
    """A cost as the platform computes it (12 fractional digits), sent as a float."""
    units = tokens_in * price_in + tokens_out * price_out + rng.randrange(1000)
    return float(Decimal(units) * SCALE)


class Sent:
    """Everything sent, in the shape the checks need."""

    def __init__(self):
        self.events = []  # dicts: id, event, type, distinct_id, timestamp, properties, groups

    def add(self, via="posthog", **event):
        self.events.append(dict(event, via=via))


def agent_run(rng, sent, now):
    """One agent run (one trace): its events, about a second apart, somewhere in the last 3 days."""
    user, ws = rng.choice(USERS)
    org = WORKSPACES[ws]
    trace = rng.getrandbits(128).to_bytes(16, "big").hex()
    run_id = f"run_{rng.getrandbits(48):012x}"
    agent_id, flow_id = rng.choice(AGENTS), rng.choice(FLOWS)
    model, provider, price_in, price_out = rng.choice(CHAT_MODELS)
    at = now - timedelta(seconds=rng.uniform(600, 72 * 3600))

    def emit(name, props):
        nonlocal at
        at += timedelta(milliseconds=rng.randint(200, 2500))
        properties = {
            "trace_id": trace,
            "span_id": rng.getrandbits(64).to_bytes(8, "big").hex(),
            "workspace_id": ws,
            "organization_id": org,
            **props,
        }
        sent.add(
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            event=name,
            type="track",
            distinct_id=user,
            timestamp=at,
            properties=properties,
            groups={"workspace": ws, "organization": org},
            trace_id=trace,
        )

    if rng.random() < 0.6:
        emb_model, emb_provider, emb_price = EMBEDDING_MODEL
        emit(
            "rag_query_triggered",
            {
                "knowledge_base_id": rng.choice(["kb_docs", "kb_tickets", "kb_code"]),
                "index_version": rng.choice(["v3", "v4"]),
                "top_k": rng.choice([5, 8, 10]),
                "results_count": rng.randint(0, 10),
                "latency_ms": rng.randint(20, 900),
                "retriever": rng.choice(["vector", "hybrid", "keyword"]),
                "embedding_model": emb_model,
            },
        )
        if rng.random() < 0.2:
            tokens = rng.randint(8, 600)
            emit(
                "$ai_embedding",
                {
                    "$ai_trace_id": trace,
                    "$ai_model": emb_model,
                    "$ai_provider": emb_provider,
                    "$ai_input_tokens": tokens,
                    "$ai_total_cost_usd": cost_of(rng, tokens, 0, emb_price, 0),
                    "$ai_latency": round(rng.uniform(0.02, 0.4), 3),
                },
            )
    if rng.random() < 0.08:
        emit(
            "prompt_blocked",
            {
                "reason": rng.choice(["abuse", "similarity", "pii", "jailbreak", "policy"]),
                "detector": rng.choice(["presidio", "llama_guard", "regex"]),
                "score": round(rng.uniform(0.8, 1.0), 4),
                "threshold": 0.8,
                "policy_id": "pol_default",
                "agent_id": agent_id,
                "flow_id": flow_id,
                "prompt_sha256": rng.getrandbits(256).to_bytes(32, "big").hex(),
            },
        )
    for _ in range(rng.randint(0, 4)):
        tool, kind = rng.choice(TOOLS)
        ok = rng.random() > 0.1
        props = {
            "tool_name": tool,
            "tool_type": kind,
            "flow_id": flow_id,
            "node_id": f"node_{rng.randint(1, 12)}",
            "run_id": run_id,
            "duration_ms": rng.randint(5, 4000),
            "success": ok,
        }
        if not ok:
            props["error_type"] = rng.choice(["timeout", "http_500", "auth"])
        emit("tool_used", props)

    calls_in = calls_out = 0
    calls_cost = Decimal(0)
    if rng.random() < 0.75:
        # PostHog's LLM events; sometimes the executor also reports the last call as model_cost.
        for _ in range(rng.randint(1, 3)):
            tokens_in, tokens_out = rng.randint(50, 8000), rng.randint(10, 1500)
            cost = cost_of(rng, tokens_in, tokens_out, price_in, price_out)
            props = {
                "$ai_trace_id": trace,
                "$ai_model": model,
                "$ai_provider": provider,
                "$ai_input_tokens": tokens_in,
                "$ai_output_tokens": tokens_out,
                "$ai_total_cost_usd": cost,
                "$ai_latency": round(rng.uniform(0.3, 9.0), 3),
                "agent_id": agent_id,
            }
            if rng.random() < 0.04:
                props["$ai_is_error"] = True
                props["$ai_error"] = "upstream 529 overloaded"
            emit("$ai_generation", props)
            calls_in, calls_out, calls_cost = calls_in + tokens_in, calls_out + tokens_out, calls_cost + exact(cost)
        if rng.random() < 0.3:
            emit(
                "model_cost",
                {
                    "model": model,
                    "provider": provider,
                    "input_tokens": tokens_in,
                    "output_tokens": tokens_out,
                    "cost_usd": cost,
                    "pricing_version": "2026-11",
                    "agent_id": agent_id,
                    "flow_id": flow_id,
                    "run_id": run_id,
                },
            )
    else:
        # Only the platform's own cost events (track_model_costs on, no PostHog wrapper).
        for _ in range(rng.randint(1, 2)):
            tokens_in, tokens_out = rng.randint(50, 8000), rng.randint(10, 1500)
            cached = rng.randint(0, tokens_in // 2)
            cost = cost_of(rng, tokens_in - cached, tokens_out, price_in, price_out)
            emit(
                "model_cost",
                {
                    "model": model,
                    "provider": provider,
                    "input_tokens": tokens_in,
                    "output_tokens": tokens_out,
                    "cached_input_tokens": cached,
                    "cost_usd": cost,
                    "pricing_version": "2026-11",
                    "agent_id": agent_id,
                    "flow_id": flow_id,
                    "run_id": run_id,
                },
            )
            calls_in, calls_out, calls_cost = calls_in + tokens_in, calls_out + tokens_out, calls_cost + exact(cost)

    status = "error" if rng.random() < 0.12 else "success"
    emit(
        "agent_execution",
        {
            "agent_id": agent_id,
            "run_id": run_id,
            "model": model,
            "provider": provider,
            "input_tokens": calls_in,
            "output_tokens": calls_out,
            "cost_usd": float(calls_cost),
            "duration_ms": rng.randint(500, 60000),
            "status": status,
            "tool_calls": rng.randint(0, 4),
        },
    )
    if status == "error" and rng.random() < 0.6:
        emit(
            "agent_error",
            {
                "agent_id": agent_id,
                "run_id": run_id,
                "error_type": rng.choice(["timeout", "rate_limit", "provider_error", "tool_error"]),
                "error_message": "429 Too Many Requests from provider",
                "model": model,
                "provider": provider,
                "retryable": True,
            },
        )
    flow_status = rng.choices(["success", "error", "cancelled", "timeout"], [80, 10, 5, 5])[0]
    props = {
        "flow_id": flow_id,
        "flow_version": rng.randint(1, 7),
        "run_id": run_id,
        "status": flow_status,
        "duration_ms": rng.randint(800, 120000),
        "node_count": rng.randint(3, 14),
        "nodes_failed": 1 if flow_status == "error" else 0,
        "trigger": rng.choice(["manual", "schedule", "api", "webhook"]),
    }
    if flow_status == "error":
        props["error_type"] = "node_failed"
    emit("flow_executed", props)


def identifies(rng, sent, now):
    """Each user identified twice with rudder-sdk-python (Segment protocol: a user id, so a
    `users` row; the second call changes some traits, sent after the first is stored), and
    posthog-python's $identify (merging an anonymous id) and $set calls."""
    plans = ["free", "pro", "enterprise"]
    for i, (user, ws) in enumerate(USERS):
        traits = {"email": f"{user}@{WORKSPACES[ws][4:]}.example", "name": user[5:].title(), "plan": rng.choice(plans), "seats": rng.randint(1, 50)}
        sent.add(id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), via="rudder", round=1, event="$identify", type="identify",
                 distinct_id=user, timestamp=None, traits=traits, trace_id=None)  # fmt: skip
        if i % 2 == 0:
            later = {"plan": rng.choice([p for p in plans if p != traits["plan"]]), "seats": None}
            sent.add(id=str(uuid.UUID(int=rng.getrandbits(128), version=4)), via="rudder", round=2, event="$identify", type="identify",
                     distinct_id=user, timestamp=None, traits=later, trace_id=None)  # fmt: skip
        sent.add(
            id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            event="$identify",
            type="identify",
            distinct_id=user,
            timestamp=now - timedelta(minutes=30 - i),
            properties={"$set": {"role": rng.choice(["admin", "builder", "viewer"])}, "$anon_distinct_id": f"anon_{rng.getrandbits(32):08x}"},
            groups={"workspace": ws, "organization": WORKSPACES[ws]},
            trace_id=None,
        )
        for _ in range(1 + (i % 2)):
            sent.add(
                id=str(uuid.UUID(int=rng.getrandbits(128), version=4)),
                event="$set",
                type="identify",
                distinct_id=user,
                timestamp=None,
                properties={"last_workspace": ws, "onboarded": rng.random() < 0.5},
                groups=None,
                trace_id=None,
            )


def expected_users(sent):
    """The `users` view: per user id, the latest non-null value of each trait."""
    users = {}
    for e in sorted((e for e in sent.events if e["via"] == "rudder"), key=lambda e: e["round"]):
        row = users.setdefault(e["distinct_id"], {})
        row.update({k: v for k, v in e["traits"].items() if v is not None})
    return users


def send(server, sent):
    """Sends the first round of rudder identifies, everything else through posthog-python
    (batches of 100), then the second round of identifies; waits for each SDK's queue."""
    errors = []
    rudder = RudderClient(
        WRITE_KEY,
        host=server.url,
        on_error=lambda err, items: errors.append(f"rudder-sdk-python: {err!r} ({len(items) if items else 0} items)"),
        max_retries=3,
        timeout=15,
    )

    def identify_round(n):
        for e in sent.events:
            if e["via"] == "rudder" and e["round"] == n:
                rudder.identify(user_id=e["distinct_id"], traits=e["traits"], message_id=e["id"])
        rudder.flush()

    identify_round(1)
    client = Posthog(
        PROJECT_TOKEN,
        host=server.url,
        on_error=lambda err, batch: errors.append(f"posthog-python: {err!r} (batch of {len(batch) if batch else 0})"),
        flush_at=100,
        flush_interval=0.5,
        max_retries=3,
        timeout=15,
        disable_geoip=True,
    )
    wrong = []
    for e in sent.events:
        if e["via"] != "posthog":
            continue
        if e["event"] == "$set":
            returned = client.set(distinct_id=e["distinct_id"], properties=e["properties"], uuid=e["id"])
        else:
            kwargs = {"distinct_id": e["distinct_id"], "properties": e["properties"], "uuid": e["id"]}
            if e["timestamp"] is not None:
                kwargs["timestamp"] = e["timestamp"]
            if e["groups"]:
                kwargs["groups"] = e["groups"]
            returned = client.capture(e["event"], **kwargs)
        if returned != e["id"]:
            wrong.append((e["id"], returned))
    client.flush()
    client.shutdown()
    identify_round(2)
    rudder.shutdown()
    vias = Counter(e["via"] for e in sent.events)
    check(
        not errors and not wrong,
        f"posthog-python sent {vias['posthog']} events, rudder-sdk-python {vias['rudder']} identifies, without an error",
        "\n".join(errors[:5]) + f"\nids not kept: {wrong[:5]}",
    )


# ---------------------------------------------------------------- expectations from what was sent


def status_of(props):
    """rows.rs `status_of`: `status`, else from `success` or `$ai_is_error`."""
    s = props.get("status")
    if isinstance(s, str) and s or isinstance(s, (int, float)) and not isinstance(s, bool):
        return str(s)
    if isinstance(props.get("success"), bool):
        return "error" if not props["success"] else "success"
    if isinstance(props.get("$ai_is_error"), bool):
        return "error" if props["$ai_is_error"] else "success"
    return None


def expected_history(sent):
    """agent_trace_history's fold (trace.rs `TraceSummary`), from the events sent."""
    traces = defaultdict(list)
    for e in sent.events:
        if e["trace_id"]:
            traces[e["trace_id"]].append(e)
    out = {}
    for trace, events in traces.items():
        ai = [e for e in events if e["event"] in ("$ai_generation", "$ai_embedding")]
        calls = ai or [e for e in events if e["event"] == "model_cost"]
        failing = sorted(
            (e for e in events if e["event"] == "agent_error" or status_of(e["properties"]) == "error"),
            key=lambda e: (e["timestamp"], e["id"]),
        )

        def first_error(e):
            p = e["properties"]
            return p.get("error_message") or p.get("$ai_error") or p.get("error_type") or e["event"]

        def tokens(e, *keys):
            return next((e["properties"][k] for k in keys if k in e["properties"]), 0)

        first = min(events, key=lambda e: (e["timestamp"], e["id"]))
        out[trace] = {
            "events": len(events),
            "llm_calls": len(calls),
            "tool_calls": sum(e["event"] == "tool_used" for e in events),
            "guardrail_blocks": sum(e["event"] == "prompt_blocked" for e in events),
            "rag_queries": sum(e["event"] == "rag_query_triggered" for e in events),
            "errors": len(failing),
            "input_tokens": sum(tokens(e, "$ai_input_tokens", "input_tokens") for e in calls),
            "output_tokens": sum(tokens(e, "$ai_output_tokens", "output_tokens") for e in calls),
            "cost_usd": sum((exact(e["properties"].get("$ai_total_cost_usd", e["properties"].get("cost_usd"))) for e in calls), Decimal(0)),
            "status": "error" if failing else "success",
            "first_error": first_error(failing[0]) if failing else None,
            "workspace_id": first["properties"]["workspace_id"],
            "organization_id": first["properties"]["organization_id"],
            "agent_id": min((e for e in events if "agent_id" in e["properties"]), key=lambda e: (e["timestamp"], e["id"]))["properties"]["agent_id"],
            "flow_id": min((e for e in events if "flow_id" in e["properties"]), key=lambda e: (e["timestamp"], e["id"]))["properties"]["flow_id"],
        }
    return out


def table_name(event):
    """The per-event table of a track event (RudderStack's naming, the simple cases)."""
    return "".join(c if c.isalnum() else "_" for c in event.lower()).strip("_")


# ---------------------------------------------------------------- the view, for DuckDB


def history_view(source, first_fn):
    """trace.rs `history_view(ViewEngine::DataFusion, source)`, built the same way. DataFusion
    names the ordered "first" aggregate `first_value`; DuckDB only has `first` (its
    `first_value` is a window function: "Window functions are not supported here")."""

    def earliest(c):
        return f'{first_fn}({c} ORDER BY "timestamp", id) FILTER (WHERE {c} IS NOT NULL)'

    def calls(expr):
        return (
            f"CASE WHEN count(*) FILTER (WHERE llm_kind = 'ai') > 0 THEN {expr} FILTER (WHERE llm_kind = 'ai') "
            f"ELSE {expr} FILTER (WHERE llm_kind = 'platform') END"
        )

    columns = [
        "trace_id AS id",
        "trace_id",
        'min("timestamp") AS first_timestamp',
        'max("timestamp") AS last_timestamp',
        "max(timestamp_ms) - min(timestamp_ms) AS duration_ms",
        "CASE WHEN sum(errors) > 0 THEN 'error' ELSE 'success' END AS status",
        f"{earliest('user_id')} AS user_id",
        f"{earliest('workspace_id')} AS workspace_id",
        f"{earliest('organization_id')} AS organization_id",
        f"{earliest('agent_id')} AS agent_id",
        f"{earliest('flow_id')} AS flow_id",
        "count(*) AS events",
        f"{calls('count(*)')} AS llm_calls",
        "sum(tool_calls) AS tool_calls",
        "sum(guardrail_blocks) AS guardrail_blocks",
        "sum(rag_queries) AS rag_queries",
        "sum(errors) AS errors",
        f"coalesce({calls('sum(input_tokens)')}, 0) AS input_tokens",
        f"coalesce({calls('sum(output_tokens)')}, 0) AS output_tokens",
        f"coalesce({calls('sum(cost_usd)')}, CAST(0 AS DECIMAL(38, 12))) AS cost_usd",
        f"{earliest('error')} AS first_error",
        "max(received_at) AS received_at",
        "max(uuid_ts) AS uuid_ts",
    ]
    return f"SELECT {', '.join(columns)} FROM {source} GROUP BY trace_id"


# ---------------------------------------------------------------- the lake


def lake_files(lake):
    """Every Parquet file of the lake with its size (what a reader's glob sees)."""
    return sorted((str(p.relative_to(lake)), p.stat().st_size) for p in lake.rglob("*.parquet"))


def covered_parts(files):
    """Part files whose log range lies inside another file's of the same directory: rows a glob
    would read twice (compaction writes its output before removing its inputs)."""
    by_dir = defaultdict(list)
    for path, _ in files:
        d, name = path.rsplit("/", 1)
        if name.startswith("part-"):
            first, last = name[len("part-") : -len(".parquet")].split("-")
            by_dir[d].append((int(first), int(last), path))
    out = []
    for parts in by_dir.values():
        for f, l, p in parts:
            if any((f2 <= f and l <= l2 and (f2, l2) != (f, l)) for f2, l2, _ in parts):
                out.append(p)
    return out


def wait_for_lake(server, lake, expected, seconds):
    """Until `switchyard sql` counts what was sent in each table, then until the lake's files
    have stopped changing (the last load's compaction is done)."""
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    counts = {}
    while True:
        try:
            counts = {t: server.sql_rows(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in expected}
        except RuntimeError as e:
            counts = {"error": str(e)}
        if counts == expected or time.monotonic() > deadline or not server.alive():
            break
        time.sleep(0.5)
    check(
        counts == expected,
        f"switchyard sql counts every event sent within {time.monotonic() - started:.1f} s: {expected}",
        f"last counts: {counts}",
    )
    stable_since, last = time.monotonic(), lake_files(lake)
    while time.monotonic() < deadline and time.monotonic() - stable_since < 3:
        time.sleep(0.5)
        now = lake_files(lake)
        if now != last:
            stable_since, last = time.monotonic(), now
    check(time.monotonic() - stable_since >= 3, f"the lake's files settle ({len(last)} Parquet files)")
    return counts == expected


# ---------------------------------------------------------------- the checks


def run_checks(server, sent, lake, work):
    project_dirs = sorted(p.name for p in lake.iterdir() if p.is_dir())
    check(project_dirs == ["project=1"], f"the lake holds the default project only: {project_dirs}")
    files = lake_files(lake)
    covered = covered_parts(files)
    check(not covered, "no part file's range is inside another's (a glob reads every row once)", covered[:10])

    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")

    def table(t):
        return f"read_parquet('{lake}/project=1/{t}/**/*.parquet', union_by_name = true, hive_partitioning = true)"

    def duck(query):
        cursor = con.execute(query)
        names = [d[0] for d in cursor.description]
        return [{n: from_duckdb(v) for n, v in zip(names, row)} for row in cursor.fetchall()]

    track_events = [e for e in sent.events if e["type"] == "track"]

    # -- count by event: DuckDB, switchyard sql, the events API, what was sent
    sent_by_event = Counter(e["event"] for e in sent.events)
    duck_by_event = {r["event"]: r["n"] for r in duck(f"SELECT event, count(*) AS n FROM {table('event_logs')} GROUP BY event")}
    sql_by_event = {r["event"]: r["n"] for r in server.sql_rows("SELECT event, count(*) AS n FROM event_logs GROUP BY event")}
    api_ids = {}
    pages = 0
    for name in sent_by_event:
        path = f"/api/projects/@current/events?event={urllib.parse.quote(name, safe='')}&limit=500"
        ids = []
        while path:
            page = server.api(path)
            pages += 1
            ids.extend(e["id"] for e in page["results"])
            path = page.get("next")
        api_ids[name] = ids
    api_by_event = {name: len(ids) for name, ids in api_ids.items() if ids}
    same(
        "count by event (event_logs)",
        [("sent", dict(sent_by_event)), ("DuckDB", duck_by_event), ("switchyard sql", sql_by_event), (f"events API ({pages} pages)", api_by_event)],
    )
    sent_ids = defaultdict(set)
    for e in sent.events:
        sent_ids[e["event"]].add(e["id"])
    dupes = {n: len(ids) - len(set(ids)) for n, ids in api_ids.items() if len(ids) != len(set(ids))}
    check(
        not dupes and {n: set(ids) for n, ids in api_ids.items()} == dict(sent_ids),
        "the events API lists each id sent once, under its event",
        f"duplicates: {dupes}",
    )
    duck_ids = {r["id"] for r in duck(f"SELECT id FROM {table('event_logs')}")}
    check(duck_ids == {e["id"] for e in sent.events}, f"DuckDB reads each id sent from event_logs ({len(duck_ids)} ids)")

    # -- tracks, per-event tables, identifies, users
    sent_tables = Counter(table_name(e["event"]) for e in track_events)
    sent_tables["tracks"] = len(track_events)
    duck_tables = {t: duck(f"SELECT count(*) AS n FROM {table(t)}")[0]["n"] for t in sent_tables}
    sql_tables = {t: server.sql_rows(f"SELECT count(*) AS n FROM {t}")[0]["n"] for t in sent_tables}
    same("count(*) of tracks and each event's table", [("sent", dict(sent_tables)), ("DuckDB", duck_tables), ("switchyard sql", sql_tables)])

    identified = [e for e in sent.events if e["type"] == "identify"]
    duck_identifies = duck(f"SELECT count(*) AS n FROM {table('identifies')}")[0]["n"]
    sql_identifies = server.sql_rows("SELECT count(*) AS n FROM identifies")[0]["n"]
    check(
        duck_identifies == sql_identifies == len(identified),
        f"identifies: DuckDB {duck_identifies} = switchyard sql {sql_identifies} = sent {len(identified)} ($identify and $set)",
    )
    want = expected_users(sent)
    sql_users = {r["id"]: (r["plan"], r["email"], r["seats"]) for r in server.sql_rows("SELECT id, plan, email, seats FROM users")}
    latest = ", ".join(f"first({c} ORDER BY received_at DESC) FILTER (WHERE {c} IS NOT NULL) AS {c}" for c in ("plan", "email", "seats"))
    duck_users = {r["id"]: (r["plan"], r["email"], r["seats"]) for r in duck(f"SELECT id, {latest} FROM {table('users')} GROUP BY id")}
    same(
        "users: one row per user id, the latest non-null plan, email, seats",
        [("sent", {u: (t["plan"], t["email"], t["seats"]) for u, t in want.items()}), ("DuckDB", duck_users), ("switchyard sql (users view)", sql_users)],
    )

    # -- model_cost_logs: exact sums by workspace and model
    expected_costs = defaultdict(lambda: [Decimal(0), 0, 0])
    for e in track_events:
        p = e["properties"]
        if e["event"] in ("$ai_generation", "$ai_embedding"):
            key, cost, tokens = (p["workspace_id"], p["$ai_model"]), p["$ai_total_cost_usd"], p["$ai_input_tokens"]
        elif e["event"] == "model_cost":
            key, cost, tokens = (p["workspace_id"], p["model"]), p["cost_usd"], p["input_tokens"]
        else:
            continue
        expected_costs[key][0] += exact(cost)
        expected_costs[key][1] += tokens
        expected_costs[key][2] += 1
    sent_costs = {k: tuple(v) for k, v in expected_costs.items()}
    cost_query = "SELECT workspace_id, model, sum(cost_usd) AS cost, sum(input_tokens) AS tokens, count(*) AS n FROM {} GROUP BY workspace_id, model"
    duck_costs = {(r["workspace_id"], r["model"]): (r["cost"], r["tokens"], r["n"]) for r in duck(cost_query.format(table("model_cost_logs")))}
    sql_costs = {(r["workspace_id"], r["model"]): (r["cost"], r["tokens"], r["n"]) for r in server.sql_rows(cost_query.format("model_cost_logs"))}
    total = sum((v[0] for v in sent_costs.values()), Decimal(0))
    same(
        f"sum(cost_usd), sum(input_tokens), count by workspace_id, model (model_cost_logs; total ${total})",
        [("sent", sent_costs), ("DuckDB", duck_costs), ("switchyard sql", sql_costs)],
    )
    types = duck(f"SELECT typeof(cost_usd) AS t FROM {table('model_cost_logs')} LIMIT 1")
    check(types and types[0]["t"] == "DECIMAL(38,12)", f"DuckDB reads cost_usd as DECIMAL(38,12): {types}")

    # -- count by event and UTC day
    day_query = "SELECT event, date_trunc('day', \"timestamp\") AS day, count(*) AS n FROM {} GROUP BY 1, 2"
    duck_days = {(r["event"], r["day"][:10]): r["n"] for r in duck(day_query.format(table("event_logs")))}
    sql_days = {(r["event"], r["day"][:10]): r["n"] for r in server.sql_rows(day_query.format("event_logs"))}
    same("count by event and day (date_trunc)", [("DuckDB", duck_days), ("switchyard sql", sql_days)])
    days = sorted({d for _, d in duck_days})
    check(len(days) >= 3, f"the events span {len(days)} UTC days: {days}")
    for t in ("event_logs", "model_cost_logs", "agent_trace_events"):
        misplaced = duck(f"SELECT count(*) AS n FROM {table(t)} WHERE CAST(\"timestamp\" AS DATE) <> day")[0]["n"]
        check(misplaced == 0, f"{t}: every row is in the day= directory of its timestamp's UTC day", f"{misplaced} rows elsewhere")

    # -- agent_trace_history
    columns = [
        "trace_id", "events", "llm_calls", "tool_calls", "guardrail_blocks", "rag_queries", "errors", "input_tokens",
        "output_tokens", "cost_usd", "status", "first_error", "user_id", "workspace_id", "organization_id", "agent_id",
        "flow_id", "first_timestamp", "last_timestamp", "duration_ms", "received_at",
    ]  # fmt: skip
    select = ", ".join(columns)
    sql_history = {r["trace_id"]: r for r in server.sql_rows(f"SELECT {select} FROM agent_trace_history")}
    view = history_view(table("agent_trace_events"), "first")
    duck_history = {r["trace_id"]: r for r in duck(f"SELECT {select} FROM ({view})")}
    same(
        f"agent_trace_history, every column of {len(columns)} per trace",
        [
            ("switchyard sql", {t: tuple(r[c] for c in columns) for t, r in sql_history.items()}),
            ("DuckDB over agent_trace_events", {t: tuple(r[c] for c in columns) for t, r in duck_history.items()}),
        ],
    )
    expected = expected_history(sent)
    folded = list(next(iter(expected.values())).keys())
    same(
        f"agent_trace_history's {', '.join(folded)} per trace",
        [("sent", {t: tuple(v.values()) for t, v in expected.items()}), ("switchyard sql", {t: tuple(r[c] for c in folded) for t, r in sql_history.items()})],
    )
    statuses = Counter(v["status"] for v in expected.values())
    kinds = Counter("ai" if any(e["event"] in ("$ai_generation", "$ai_embedding") for e in sent.events if e["trace_id"] == t) else "platform" for t in expected)
    check(
        statuses["error"] > 0 and statuses["success"] > 0 and kinds["ai"] > 0 and kinds["platform"] > 0,
        f"the traces cover both statuses {dict(statuses)} and both cost sources {dict(kinds)}",
    )

    # -- writes are refused
    before = server.sql_rows("SELECT count(*) AS n FROM event_logs")[0]["n"]
    target = work / "copied.parquet"
    for query in ["DELETE FROM event_logs", "DROP TABLE event_logs", f"COPY (SELECT * FROM event_logs) TO '{target}'"]:
        code, _, err = server.sql(query)
        first_line = err.splitlines()[0] if err else ""
        check(code != 0 and "read-only" in err, f"switchyard sql refuses {query.split(' (')[0]!r}: exit {code}, {first_line!r}")
    after = server.sql_rows("SELECT count(*) AS n FROM event_logs")[0]["n"]
    check(before == after == len(sent.events) and not target.exists() and lake_files(lake) == files, f"nothing changed: {after} events, no file written")


def main():
    binary = Path(os.environ.get("SWITCHYARD_BIN", "target/release/switchyard"))
    if not binary.is_absolute():
        binary = ROOT / binary
    if not os.access(binary, os.X_OK):
        check(False, f"server binary {binary} not found (build it, or set SWITCHYARD_BIN)")
        print(f"{passed} passed, {failed} failed")
        return 1
    seed = int(os.environ.get("E2E_WH_SEED") or random.SystemRandom().randrange(1 << 32))
    runs = int(os.environ.get("E2E_WH_RUNS", "400"))
    wait = float(os.environ.get("E2E_WAIT", "60"))
    started = time.monotonic()

    work = Path(tempfile.mkdtemp(prefix="switchyard-e2e-warehouse."))
    server = Server(binary, work)
    try:
        if server.start():
            rng = random.Random(seed)
            now = datetime.now(timezone.utc)
            sent = Sent()
            identifies(rng, sent, now)
            for _ in range(runs):
                agent_run(rng, sent, now)
            counts = Counter(e["event"] for e in sent.events)
            log(f"sending {len(sent.events)} events (seed {seed}, E2E_WH_SEED={seed} repeats them): {dict(counts)}")
            send(server, sent)
            traced = sum(1 for e in sent.events if e["trace_id"])
            costed = sum(counts[n] for n in ("$ai_generation", "$ai_embedding", "model_cost"))
            lake = server.data / "lake"
            expected = {"event_logs": len(sent.events), "model_cost_logs": costed, "agent_trace_events": traced}
            if wait_for_lake(server, lake, expected, wait):
                run_checks(server, sent, lake, work)
    except Exception as e:  # a crash of the script is a failed check, with its cause
        import traceback

        check(False, f"the checks ran to the end: {e!r}", traceback.format_exc())
    finally:
        if server.proc is not None:
            was_alive = server.alive()
            code = server.stop()
            check(was_alive and code == 0, f"server stayed up and exited with 0 on SIGTERM (exit {code})")
        if failed:
            tail = server.tail()
            if tail:
                log(f"last lines of the server log ({server.log_path}):")
                print("\n".join("    " + line for line in tail.splitlines()))
        if failed or os.environ.get("E2E_KEEP") == "1":
            log(f"kept {work} (switchyard.toml, server.log, data/lake)")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print(f"{passed} passed, {failed} failed ({time.monotonic() - started:.1f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

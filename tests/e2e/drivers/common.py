"""Shared helpers for the Python SDK drivers (mirrors drivers/common.js)."""

import hashlib
import json
import os
import secrets
import uuid as _uuid
from datetime import datetime, timezone


def hexid(nbytes: int) -> str:
    return secrets.token_hex(nbytes)


def _env(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"missing environment variable {name} (drivers are started by run.sh)")
    return value


def config() -> dict:
    return {
        "capture_url": _env("E2E_CAPTURE_URL").rstrip("/"),
        "api_url": _env("E2E_API_URL").rstrip("/"),
        "token": _env("E2E_PROJECT_TOKEN"),
        "write_key": _env("E2E_WRITE_KEY"),
        "secret": _env("E2E_SECRET_KEY"),
        "out_dir": _env("E2E_OUT"),
    }


def new_run(sdk: str) -> dict:
    tag = "".join(ch if ch.isalnum() else "_" for ch in sdk)
    return {
        "sdk": sdk,
        "trace_id": hexid(16),
        "workspace_id": f"ws_{hexid(4)}",
        "organization_id": f"org_{hexid(4)}",
        "user_id": f"user_{tag}_{hexid(4)}",
        "anon_id": f"anon_{tag}_{hexid(6)}",
    }


def trace_context(run: dict) -> tuple:
    """(span_id, context) for calls without properties: W3C traceparent in context."""
    span = hexid(8)
    return span, {"traceparent": f"00-{run['trace_id']}-{span}-01"}


def base_props(run: dict) -> dict:
    return {
        "trace_id": run["trace_id"],
        "span_id": hexid(8),
        "workspace_id": run["workspace_id"],
        "organization_id": run["organization_id"],
    }


def catalog_props(run: dict, event: str) -> dict:
    """Realistic catalog properties (shared/catalog.md) with mixed JSON types."""
    run_id = f"run_{hexid(6)}"
    flow_id = f"flow_{hexid(4)}"
    agent_id = f"agt_{hexid(4)}"
    if event == "flow_executed":
        p = {"flow_id": flow_id, "flow_version": 3, "run_id": run_id, "status": "error", "duration_ms": 30012,
             "node_count": 9, "nodes_failed": 2, "trigger": "schedule", "error_type": "timeout"}
    elif event == "tool_used":
        p = {"tool_name": "sql_query", "tool_type": "connector", "connector_id": f"conn_{hexid(3)}",
             "flow_id": flow_id, "node_id": "node_5", "run_id": run_id, "duration_ms": 87, "success": False,
             "error_type": "permission_denied"}
    elif event == "agent_created":
        p = {"agent_id": agent_id, "agent_name": "Invoice extractor — Größe 📄", "model": "gpt-4.1",
             "provider": "openai", "tools_count": 2, "has_rag": False}
    elif event == "prompt_blocked":
        p = {"reason": "pii", "detector": "presidio", "score": 0.91, "threshold": 0.75, "policy_id": f"pol_{hexid(3)}",
             "agent_id": agent_id, "flow_id": flow_id,
             "prompt_sha256": hashlib.sha256(run_id.encode()).hexdigest()}
    elif event == "rag_query_triggered":
        p = {"knowledge_base_id": f"kb_{hexid(3)}", "index_version": "v12", "top_k": 5, "results_count": 0,
             "latency_ms": 12.25, "retriever": "vector", "embedding_model": "bge-m3"}
    elif event == "agent_execution":
        p = {"agent_id": agent_id, "run_id": run_id, "model": "mistral-large", "provider": "mistral",
             "input_tokens": 2048, "output_tokens": 512, "cached_input_tokens": 0, "cost_usd": 0.0125,
             "duration_ms": 2750, "status": "success", "tool_calls": 0}
    elif event == "agent_error":
        p = {"agent_id": agent_id, "run_id": run_id, "error_type": "provider_error",
             "error_message": 'upstream 503: "overloaded" \\ retry later — 再试', "model": "gemini-1.5-pro",
             "provider": "google", "retryable": False}
    else:
        raise ValueError(f"unknown catalog event {event}")
    props = base_props(run)
    props.update(p)
    return props


def json_copy(value):
    return json.loads(json.dumps(value))


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_uuid() -> str:
    return str(_uuid.uuid4())


def write_record(cfg: dict, record: dict) -> None:
    os.makedirs(cfg["out_dir"], exist_ok=True)
    path = os.path.join(cfg["out_dir"], f"{record['sdk']}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, ensure_ascii=False)
    print(f"[{record['sdk']}] recorded {len(record['events'])} events -> {path}")


# --------------------------------------------------------------------------- feature flags

FLAG_CASES_FILE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "flag_cases.json")


def flag_run_tag() -> str:
    """Shared by every flag driver of one run (run.sh sets E2E_FLAG_RUN) so their answers can be compared."""
    return os.environ.get("E2E_FLAG_RUN") or hexid(4)


def flag_cases(run_tag: str) -> tuple:
    """(flag keys, cases) from flag_cases.json with '{run}' / '{i}' filled in (mirrors common.js flagCases)."""
    with open(FLAG_CASES_FILE, encoding="utf-8") as f:
        spec = json.load(f)

    def fill(value, i=None):
        if isinstance(value, str):
            value = value.replace("{run}", run_tag)
            return value.replace("{i}", str(i)) if i is not None else value
        if isinstance(value, dict):
            return {fill(k, i): fill(v, i) for k, v in value.items() if not k.startswith("_")}
        if isinstance(value, list):
            return [fill(v, i) for v in value]
        return value

    cases = [fill(case) for case in spec["cases"]]
    sweep = spec.get("sweep") or {}
    for i in range(int(sweep.get("count", 0))):
        cases.append({
            "id": f"sweep_{i}", "distinct_id": fill(sweep["distinct_id"], i),
            "person_properties": fill(sweep.get("person_properties") or {}, i),
            "groups": {}, "group_properties": {},
        })
    return list(spec["flags"]), cases


def write_flag_record(cfg: dict, record: dict) -> None:
    os.makedirs(cfg["out_dir"], exist_ok=True)
    path = os.path.join(cfg["out_dir"], f"{record['sdk']}.json")
    with open(path, "w", encoding="utf-8") as f:
        json.dump(record, f, indent=2, ensure_ascii=False)
    print(f"[{record['sdk']}] recorded {len(record['results'])} flag evaluations -> {path}")

"""posthog (PyPI) driver: capture with groups (one with an explicit past
timestamp, one with an SDK-generated uuid), set ($set), group_identify,
alias; then flush + shutdown."""

import os
import sys
import time
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402

from posthog import Posthog  # noqa: E402


def main() -> int:
    cfg = c.config()
    run = c.new_run("posthog-python")
    record = {
        "sdk": "posthog-python", "protocol": "posthog", "trace_id": run["trace_id"], "started_at": c.now_iso(),
        "distinct_ids": [run["user_id"], run["anon_id"]], "errors": [], "events": [],
    }

    def on_error(err, batch):
        msg = f"posthog-python on_error: {err!r} (batch of {len(batch) if batch else 0})"
        print(msg, file=sys.stderr)
        record["errors"].append(msg)

    client = Posthog(
        cfg["token"],
        host=cfg["capture_url"],
        on_error=on_error,
        flush_at=50,
        flush_interval=0.5,
        max_retries=2,
        timeout=10,
        disable_geoip=True,
    )

    user = run["user_id"]
    groups = {"workspace": run["workspace_id"], "organization": run["organization_id"]}

    for event in ["flow_executed", "tool_used", "rag_query_triggered", "prompt_blocked"]:
        props = c.catalog_props(run, event)
        kwargs = {"distinct_id": user, "properties": props, "groups": groups}
        rec = {"event": event, "type": "track", "distinct_id": user, "traced": True, "properties": c.json_copy(props)}
        if event == "flow_executed":
            ts = datetime.now(timezone.utc) - timedelta(seconds=90)
            kwargs["timestamp"] = ts
            rec["timestamp"] = ts.isoformat()
        if event != "tool_used":  # tool_used: let the SDK mint the uuid
            kwargs["uuid"] = c.new_uuid()
        sent = client.capture(event, **kwargs)
        if event != "tool_used" and sent != kwargs["uuid"]:
            record["errors"].append(f"capture({event}) returned {sent!r}, expected the uuid passed {kwargs['uuid']!r}")
        if not sent:
            record["errors"].append(f"capture({event}) returned {sent!r} (event not queued)")
        rec["id"] = sent
        record["events"].append(rec)

    # Person properties: posthog-python 7 sends a "$set" event with a top-level $set.
    set_props = {"email": f"{user}@example.com", "role": "admin", "seats": 10, "sso": True}
    sent = client.set(distinct_id=user, properties=set_props, uuid=c.new_uuid())
    record["events"].append({
        "id": sent, "event": "$set", "type": ["identify", "track"], "distinct_id": user, "traced": False,
        "properties": {}, "traits": c.json_copy(set_props),
    })

    group_set = {"name": "Umbrella Corp", "plan": "scale", "agents": 40}
    sent = client.group_identify("workspace", run["workspace_id"], group_set, distinct_id=user, uuid=c.new_uuid())
    record["events"].append({
        "id": sent, "event": "$groupidentify", "type": "group", "distinct_id": user, "traced": False,
        "properties": {},
        "group": {"type": "workspace", "key": run["workspace_id"], "traits": c.json_copy(group_set)},
    })

    # alias(previous_id, distinct_id): the event's distinct_id is previous_id,
    # properties.alias the new id.
    sent = client.alias(previous_id=run["anon_id"], distinct_id=user, uuid=c.new_uuid())
    record["events"].append({
        "id": sent, "event": "$create_alias", "type": "alias", "distinct_id": run["anon_id"], "traced": False,
        "properties": {}, "mentions": [user],
    })

    t0 = time.monotonic()
    client.flush(timeout_seconds=20)
    client.shutdown()
    print(f"[posthog-python] flushed and shut down in {time.monotonic() - t0:.2f}s")
    record["finished_at"] = c.now_iso()
    c.write_record(cfg, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

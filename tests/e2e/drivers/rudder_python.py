"""rudder-sdk-python driver (module-level `rudderstack.analytics` API):
anonymous page, identify, track (x3, one with an explicit timestamp), group,
screen, alias; gzip on (SDK default); then flush + shutdown."""

import os
import sys
import time
from datetime import datetime, timedelta, timezone

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as c  # noqa: E402

import rudderstack.analytics as rudder_analytics  # noqa: E402


def main() -> int:
    cfg = c.config()
    run = c.new_run("rudder-python")
    user, anon = run["user_id"], run["anon_id"]
    record = {
        "sdk": "rudder-python", "protocol": "segment", "trace_id": run["trace_id"], "started_at": c.now_iso(),
        "distinct_ids": [user, anon], "errors": [], "events": [],
    }

    def on_error(err, items):
        msg = f"rudder-sdk-python on_error: {err!r} ({len(items) if items else 0} items)"
        print(msg, file=sys.stderr)
        record["errors"].append(msg)

    rudder_analytics.write_key = cfg["write_key"]
    rudder_analytics.dataPlaneUrl = cfg["capture_url"]
    rudder_analytics.on_error = on_error
    rudder_analytics.max_retries = 2
    rudder_analytics.timeout = 10

    def sent(method, rec, **kwargs):
        message_id = c.new_uuid()
        getattr(rudder_analytics, method)(message_id=message_id, **kwargs)
        rec["id"] = message_id
        record["events"].append(rec)

    # Before login: the landing page, anonymous only.
    page_props = dict(c.base_props(run), path="/pricing", url="https://www.example.com/pricing", title="Pricing")
    sent("page", {"event": "$pageview", "type": "page", "distinct_id": anon, "anonymous_id": anon, "traced": True,
                  "properties": c.json_copy(page_props), "mentions": ["Pricing page"]},
         anonymous_id=anon, category="Marketing", name="Pricing page", properties=page_props)

    traits = {"email": f"{user}@example.com", "name": "Katherine Johnson", "plan": "free", "age": 41,
              "newsletter": False}
    # identify/group/alias carry the trace as context.traceparent (they have no properties).
    span, ctx = c.trace_context(run)
    sent("identify", {"event": "$identify", "type": "identify", "distinct_id": user, "user_id": user,
                      "anonymous_id": anon, "traced": True, "span_id": span, "properties": {},
                      "traits": c.json_copy(traits)},
         user_id=user, anonymous_id=anon, traits=traits, context=ctx)

    for event in ["agent_execution", "agent_error", "tool_used"]:
        props = c.catalog_props(run, event)
        rec = {"event": event, "type": "track", "distinct_id": user, "user_id": user, "traced": True,
               "properties": c.json_copy(props)}
        kwargs = {"user_id": user, "event": event, "properties": props}
        if event == "agent_error":
            ts = datetime.now(timezone.utc) - timedelta(seconds=60)
            kwargs["timestamp"] = ts
            rec["timestamp"] = ts.isoformat()
        sent("track", rec, **kwargs)

    group_traits = {"name": "Cyberdyne", "plan": "enterprise", "employees": 1200}
    span, ctx = c.trace_context(run)
    sent("group", {"event": "$groupidentify", "type": "group", "distinct_id": user, "user_id": user,
                   "traced": True, "span_id": span, "properties": {},
                   "group": {"type": None, "key": run["workspace_id"], "traits": c.json_copy(group_traits)}},
         user_id=user, group_id=run["workspace_id"], traits=group_traits, context=ctx)

    screen_props = dict(c.base_props(run), agent_id=f"agt_{c.hexid(4)}")
    sent("screen", {"event": "$screen", "type": "screen", "distinct_id": user, "user_id": user, "traced": True,
                    "properties": c.json_copy(screen_props), "mentions": ["Agent debugger"]},
         user_id=user, name="Agent debugger", properties=screen_props)

    span, ctx = c.trace_context(run)
    sent("alias", {"event": "$create_alias", "type": "alias", "distinct_id": user, "user_id": user,
                   "traced": True, "span_id": span, "properties": {}, "mentions": [anon]},
         previous_id=anon, user_id=user, context=ctx)

    t0 = time.monotonic()
    rudder_analytics.flush()
    rudder_analytics.shutdown()
    print(f"[rudder-python] flushed and shut down in {time.monotonic() - t0:.2f}s")
    record["finished_at"] = c.now_iso()
    c.write_record(cfg, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())

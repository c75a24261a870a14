"""What every Python driver shares: the endpoints run.sh hands over, and the record of what it did."""
import json
import os

LLM_URL = os.environ["E2E_LLM_URL"]  # the fake LLM server, http://127.0.0.1:<port>
CAPTURE_URL = os.environ["E2E_CAPTURE_URL"]  # Switchyard
TOKEN = os.environ["E2E_PROJECT_TOKEN"]
TRACE_ID = os.environ["E2E_TRACE_ID"]  # this run's trace id (hex for the OTel drivers)
RUN = os.environ["E2E_RUN"]  # the driver's name, e.g. posthog-python


def record(**what):
    """Writes out/<run>.json: the trace id and whatever check.py needs to know about the run."""
    what.setdefault("trace_id", TRACE_ID)
    with open(os.path.join(os.environ["E2E_OUT"], RUN + ".json"), "w") as f:
        json.dump(what, f, indent=1)


def fixed_trace_ids():
    """An OTel id generator whose every trace id is TRACE_ID (span ids stay random)."""
    from opentelemetry.sdk.trace.id_generator import RandomIdGenerator

    class Fixed(RandomIdGenerator):
        def generate_trace_id(self):
            return int(TRACE_ID, 16)

    return Fixed()


def product_event(event="tool_used", **properties):
    """A product event in this run's trace, sent with posthog-python's capture."""
    from posthog import Posthog

    ph = Posthog(TOKEN, host=CAPTURE_URL, flush_at=1, sync_mode=True)
    ph.capture(distinct_id="user_tool", event=event, properties={"trace_id": TRACE_ID, **properties})
    ph.flush()
    ph.shutdown()

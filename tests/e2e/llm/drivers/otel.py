"""The OTel SDK exporting OTLP/HTTP to $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT (with
$OTEL_EXPORTER_OTLP_HEADERS), one agent run: a root span carrying a feature flag, then OpenAI
chat, chat streamed with usage, a 429 (retries off) and embeddings, instrumented.

usage: otel.py v2|openllmetry proto|json [--product-event]
  v2           opentelemetry-instrumentation-openai-v2 (content captured on the span)
  openllmetry  opentelemetry-instrumentation-openai (Traceloop's OpenLLMetry)
  proto/json   opentelemetry-exporter-otlp-proto-http / opentelemetry-exporter-otlp-json-http
The json run puts the flag on a `feature_flag.evaluation` span event, the proto runs on span
attributes. --product-event also sends a `tool_used` event in the trace with posthog-python."""
import os
import sys

which, encoding = sys.argv[1], sys.argv[2]
if which == "v2":
    os.environ.setdefault("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    os.environ.setdefault("OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT", "SPAN_ONLY")

from common import LLM_URL, fixed_trace_ids, product_event, record  # noqa: E402
from opentelemetry import trace  # noqa: E402
from opentelemetry.sdk.resources import Resource  # noqa: E402
from opentelemetry.sdk.trace import TracerProvider  # noqa: E402
from opentelemetry.sdk.trace.export import SimpleSpanProcessor  # noqa: E402

if encoding == "json":
    from opentelemetry.exporter.otlp.json.http.trace_exporter import OTLPSpanExporter
else:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
if which == "v2":
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
else:
    from opentelemetry.instrumentation.openai import OpenAIInstrumentor

provider = TracerProvider(resource=Resource.create({"service.name": "agent-svc", "posthog.distinct_id": "user_3"}), id_generator=fixed_trace_ids())
exporter = OTLPSpanExporter()  # endpoint and headers from the environment
provider.add_span_processor(SimpleSpanProcessor(exporter))
trace.set_tracer_provider(provider)
OpenAIInstrumentor().instrument()
import openai  # noqa: E402 (after instrumenting)

c = openai.OpenAI(api_key="sk-fake", base_url=LLM_URL + "/v1")
with trace.get_tracer("agent").start_as_current_span("invoke_agent demo") as root:
    root.set_attribute("gen_ai.operation.name", "invoke_agent")
    if encoding == "json":
        root.add_event("feature_flag.evaluation", {"feature_flag.key": "agent-prompt", "feature_flag.result.variant": "b"})
    else:
        root.set_attribute("feature_flag.key", "agent-prompt")
        root.set_attribute("feature_flag.result.variant", "b")
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], temperature=0.1)
    s = c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
                                  stream_options={"include_usage": True})
    for _ in s:
        pass
    try:
        c.with_options(max_retries=0).chat.completions.create(model="fail-model", messages=[{"role": "user", "content": "x"}])
    except Exception as e:
        print("err", type(e).__name__)
    c.embeddings.create(model="text-embedding-3-small", input="abc")
provider.shutdown()
product = []
if "--product-event" in sys.argv:
    product_event("tool_used", tool_name="web_search", success=True)
    product = ["tool_used"]
record(product_events=product)
print("done")

"""posthog-python's PostHogSpanProcessor (POST /i/v0/ai/otel) with the openai-v2 instrumentation."""
from common import CAPTURE_URL, LLM_URL, TOKEN, record, fixed_trace_ids
from opentelemetry import trace
from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from posthog.ai.otel import PostHogSpanProcessor

provider = TracerProvider(resource=Resource(attributes={SERVICE_NAME: "my-app", "posthog.distinct_id": "user_otel"}), id_generator=fixed_trace_ids())
provider.add_span_processor(PostHogSpanProcessor(api_key=TOKEN, host=CAPTURE_URL))
trace.set_tracer_provider(provider)
OpenAIInstrumentor().instrument()
import openai  # noqa: E402 (after instrumenting)

c = openai.OpenAI(api_key="sk-fake", base_url=LLM_URL + "/v1")
with trace.get_tracer("app").start_as_current_span("http request"):
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}])
provider.shutdown()
record()
print("done")

"""posthog-python's OpenAI and Anthropic wrappers (chat, stream, a 429, embeddings; Anthropic
chat and stream), a manual $ai_span and $ai_trace, and a product event, all in one trace."""
import time

from common import CAPTURE_URL, LLM_URL, TOKEN, TRACE_ID, record
from posthog import Posthog
from posthog.ai.anthropic import Anthropic
from posthog.ai.openai import OpenAI

ph = Posthog(TOKEN, host=CAPTURE_URL, flush_at=1, sync_mode=True)
client = OpenAI(api_key="sk-fake", base_url=LLM_URL + "/v1", posthog_client=ph)
ids = dict(posthog_distinct_id="user_1", posthog_trace_id=TRACE_ID)

r = client.chat.completions.create(
    model="gpt-4o-mini",
    messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    temperature=0.2,
    posthog_properties={"$feature/agent-prompt": "variant-b", "run_id": "run-1"},
    tools=[{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {}}}}],
    **ids,
)
print("nonstream:", r.choices[0].message.content)
s = client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], stream=True,
                                   stream_options={"include_usage": True}, **ids)
print("stream:", "".join((c.choices[0].delta.content or "") for c in s if c.choices))
try:
    client.chat.completions.create(model="fail-model", messages=[{"role": "user", "content": "x"}], **ids)
except Exception as e:  # the 429 the fake answers for fail-model (after the client's 2 retries)
    print("error:", type(e).__name__)
client.embeddings.create(model="text-embedding-3-small", input=["a", "b"], **ids)

ac = Anthropic(api_key="sk-ant-fake", base_url=LLM_URL, posthog_client=ph)
m = ac.messages.create(model="claude-sonnet-4-5", max_tokens=50, system="sys", messages=[{"role": "user", "content": "hi"}], **ids)
print("anthropic:", m.content[0].text)
for _ in ac.messages.create(model="claude-sonnet-4-5", max_tokens=50, messages=[{"role": "user", "content": "hi"}], stream=True, **ids):
    pass

ph.capture(distinct_id="user_1", event="$ai_span", properties={
    "$ai_trace_id": TRACE_ID, "$ai_span_id": "span-tool-1", "$ai_parent_id": TRACE_ID, "$ai_span_name": "get_weather",
    "$ai_input_state": {"city": "SF"}, "$ai_output_state": {"t": 20}, "$ai_latency": 0.12})
ph.capture(distinct_id="user_1", event="tool_used", properties={
    "trace_id": TRACE_ID, "span_id": "span-tool-1", "tool_name": "get_weather", "success": True})
ph.capture(distinct_id="user_1", event="$ai_trace", properties={
    "$ai_trace_id": TRACE_ID, "$ai_span_name": "agent_run", "$ai_input_state": [{"role": "user", "content": "hi"}],
    "$ai_output_state": "done", "$ai_latency": 1.5})
ph.flush()
time.sleep(0.3)
ph.shutdown()
record(product_events=["tool_used"])
print("done")

"""The Langfuse Python SDK (OTel based): an agent observation with an OpenAI generation
(langfuse.openai) and a tool observation, then a score. LANGFUSE_HOST points at Switchyard;
the public key is one of its project tokens."""
import os
import time

from common import CAPTURE_URL, LLM_URL, TRACE_ID, record

os.environ.update(LANGFUSE_PUBLIC_KEY=os.environ["E2E_LANGFUSE_PUBLIC_KEY"], LANGFUSE_SECRET_KEY="sk-lf-e2e-secret",
                  LANGFUSE_HOST=CAPTURE_URL, LANGFUSE_BASE_URL=CAPTURE_URL)
from langfuse import get_client, propagate_attributes  # noqa: E402
from langfuse.openai import OpenAI  # noqa: E402

lf = get_client()
c = OpenAI(api_key="sk-fake", base_url=LLM_URL + "/v1")
with lf.start_as_current_observation(as_type="agent", name="agent_run", trace_context={"trace_id": TRACE_ID}) as root, \
        propagate_attributes(user_id="user_lf", session_id="sess-1", tags=["exp:agent-prompt=b"]):
    c.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}], name="llm_step")
    with lf.start_as_current_observation(as_type="tool", name="get_weather", input={"city": "SF"}) as t:
        t.update(output={"t": 20})
    lf.create_score(name="helpfulness", value=0.9, trace_id=root.trace_id)
lf.flush()
time.sleep(0.3)
lf.shutdown()
record(trace_id=root.trace_id)
print("done")

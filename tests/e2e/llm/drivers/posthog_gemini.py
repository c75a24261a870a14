"""posthog-python's Gemini wrapper (google-genai)."""
from common import CAPTURE_URL, LLM_URL, TOKEN, TRACE_ID, record
from posthog import Posthog
from posthog.ai.gemini import Client

ph = Posthog(TOKEN, host=CAPTURE_URL, flush_at=1, sync_mode=True)
c = Client(api_key="fake", posthog_client=ph, http_options={"base_url": LLM_URL})
r = c.models.generate_content(model="gemini-2.5-flash", contents="hi", posthog_distinct_id="user_g", posthog_trace_id=TRACE_ID)
print(r.text)
ph.shutdown()
record()

"""posthog-python's LangChain CallbackHandler around prompt | ChatOpenAI | lambda."""
import time

from common import CAPTURE_URL, LLM_URL, TOKEN, TRACE_ID, record
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda
from langchain_openai import ChatOpenAI
from posthog import Posthog
from posthog.ai.langchain import CallbackHandler

ph = Posthog(TOKEN, host=CAPTURE_URL, flush_at=1, sync_mode=True)
cb = CallbackHandler(client=ph, distinct_id="user_2", trace_id=TRACE_ID, properties={"$feature/agent-model": "cheap"})
llm = ChatOpenAI(model="gpt-4o-mini", api_key="sk-fake", base_url=LLM_URL + "/v1", temperature=0)
prompt = ChatPromptTemplate.from_messages([("system", "be brief"), ("user", "{q}")])
chain = prompt | llm | RunnableLambda(lambda m: m.content.upper())
print(chain.invoke({"q": "hello"}, config={"callbacks": [cb], "run_name": "agent_run"}))
ph.flush()
time.sleep(0.3)
ph.shutdown()
record()

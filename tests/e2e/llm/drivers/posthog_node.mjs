// @posthog/ai's OpenAI wrapper (chat, and chat streamed with usage) with posthog-node (gzip
// batches).
import { writeFileSync } from 'node:fs'
import { join } from 'node:path'
import { PostHog } from 'posthog-node'
import { OpenAI } from '@posthog/ai/openai'

const env = process.env
const trace = env.E2E_TRACE_ID
const ph = new PostHog(env.E2E_PROJECT_TOKEN, { host: env.E2E_CAPTURE_URL, flushAt: 1, flushInterval: 0 })
const client = new OpenAI({ apiKey: 'sk-fake', baseURL: `${env.E2E_LLM_URL}/v1`, posthog: ph })
const r = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }],
  posthogDistinctId: 'user_n', posthogTraceId: trace, posthogProperties: { '$feature/agent-prompt': 'b' } })
console.log('nonstream', r.choices[0].message.content)
const s = await client.chat.completions.create({ model: 'gpt-4o-mini', messages: [{ role: 'user', content: 'hi' }], stream: true,
  stream_options: { include_usage: true }, posthogDistinctId: 'user_n', posthogTraceId: trace })
let out = ''
for await (const c of s) out += c.choices?.[0]?.delta?.content ?? ''
console.log('stream', out)
await ph.shutdown()
writeFileSync(join(env.E2E_OUT, `${env.E2E_RUN}.json`), JSON.stringify({ trace_id: trace }))
console.log('done')

'use strict';
// Shared helpers for the Node.js SDK drivers: configuration from the
// environment run.sh sets, catalog event properties, and the record file
// each driver writes for check.py.

const crypto = require('crypto');
const fs = require('fs');
const path = require('path');

function hex(bytes) {
  return crypto.randomBytes(bytes).toString('hex');
}

function requireEnv(name) {
  const v = process.env[name];
  if (!v) {
    throw new Error(`missing environment variable ${name} (drivers are started by run.sh)`);
  }
  return v;
}

function config() {
  return {
    captureUrl: requireEnv('E2E_CAPTURE_URL').replace(/\/+$/, ''),
    apiUrl: requireEnv('E2E_API_URL').replace(/\/+$/, ''),
    token: requireEnv('E2E_PROJECT_TOKEN'),
    writeKey: requireEnv('E2E_WRITE_KEY'),
    secret: requireEnv('E2E_SECRET_KEY'),
    outDir: requireEnv('E2E_OUT'),
  };
}

/** Identity and tracing context of one driver run (one SDK). */
function newRun(sdk) {
  const tag = sdk.replace(/[^a-z0-9]+/gi, '_');
  return {
    sdk,
    traceId: hex(16),
    workspaceId: `ws_${hex(4)}`,
    organizationId: `org_${hex(4)}`,
    userId: `user_${tag}_${hex(4)}`,
    anonId: `anon_${tag}_${hex(6)}`,
  };
}

function newSpanId() {
  return hex(8);
}

/**
 * W3C trace context for calls that have no properties (identify, group, alias):
 * sent as context.traceparent, from which the server takes trace_id/span_id.
 */
function traceContext(run) {
  const span = newSpanId();
  return { span, context: { traceparent: `00-${run.traceId}-${span}-01` } };
}

/** Properties every catalog event carries. */
function baseProps(run) {
  return {
    trace_id: run.traceId,
    span_id: newSpanId(),
    workspace_id: run.workspaceId,
    organization_id: run.organizationId,
  };
}

/**
 * Realistic catalog properties (shared/catalog.md), mixing strings, ints,
 * floats, booleans, unicode and an explicit null so the checker can verify
 * values and JSON types survive intake.
 */
function catalogProps(run, event) {
  const runId = `run_${hex(6)}`;
  const flowId = `flow_${hex(4)}`;
  const agentId = `agt_${hex(4)}`;
  let p;
  switch (event) {
    case 'flow_executed':
      p = { flow_id: flowId, flow_version: 3, run_id: runId, status: 'success', duration_ms: 1834,
        node_count: 7, nodes_failed: 0, trigger: 'api', error_type: null };
      break;
    case 'tool_used':
      p = { tool_name: 'web_search', tool_type: 'mcp', connector_id: `conn_${hex(3)}`, flow_id: flowId,
        node_id: 'node_3', run_id: runId, duration_ms: 412, success: true };
      break;
    case 'agent_created':
      p = { agent_id: agentId, agent_name: 'Support triage — Ünïcode 🤖', model: 'gpt-4o-mini',
        provider: 'openai', tools_count: 4, has_rag: true };
      break;
    case 'prompt_blocked':
      p = { reason: 'jailbreak', detector: 'llm-guard', score: 0.97, threshold: 0.8, policy_id: `pol_${hex(3)}`,
        agent_id: agentId, flow_id: flowId, prompt_sha256: crypto.createHash('sha256').update(runId).digest('hex') };
      break;
    case 'rag_query_triggered':
      p = { knowledge_base_id: `kb_${hex(3)}`, index_version: 'v7', top_k: 8, results_count: 6, latency_ms: 38.5,
        retriever: 'hybrid', embedding_model: 'text-embedding-3-small' };
      break;
    case 'agent_execution':
      p = { agent_id: agentId, run_id: runId, model: 'claude-3-5-sonnet', provider: 'anthropic',
        input_tokens: 12840, output_tokens: 911, cached_input_tokens: 8192, cost_usd: 0.052236,
        duration_ms: 6120, status: 'success', tool_calls: 3 };
      break;
    case 'agent_error':
      p = { agent_id: agentId, run_id: runId, error_type: 'rate_limit',
        error_message: 'Provider returned 429 "Too Many Requests" — retry after 20s (ünïcødé)',
        model: 'gpt-4o', provider: 'openai', retryable: true };
      break;
    default:
      throw new Error(`unknown catalog event ${event}`);
  }
  return Object.assign(baseProps(run), p);
}

/** Deep copy through JSON: what is recorded is exactly what goes on the wire. */
function jsonCopy(v) {
  return v === undefined ? undefined : JSON.parse(JSON.stringify(v));
}

function nowIso() {
  return new Date().toISOString();
}

function writeRecord(cfg, record) {
  fs.mkdirSync(cfg.outDir, { recursive: true });
  const file = path.join(cfg.outDir, `${record.sdk}.json`);
  fs.writeFileSync(file, JSON.stringify(record, null, 2));
  console.log(`[${record.sdk}] recorded ${record.events.length} events -> ${file}`);
}

/** Reject after ms so no await can hang a driver forever. */
function withTimeout(promise, ms, what) {
  let t;
  const timer = new Promise((_, reject) => {
    t = setTimeout(() => reject(new Error(`${what} timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timer]).finally(() => clearTimeout(t));
}

function sleep(ms) {
  return new Promise((r) => setTimeout(r, ms));
}

/** Describe an SDK error, including the HTTP status/body when one is attached (axios, fetch). */
function fmtErr(err) {
  if (!err) return String(err);
  const parts = [err.message || String(err)];
  const r = err.response;
  if (r && r.status !== undefined) {
    let body = r.data;
    if (body !== undefined && typeof body !== 'string') {
      try { body = JSON.stringify(body); } catch (e) { body = String(body); }
    }
    parts.push(`HTTP ${r.status}${body !== undefined ? ` body=${String(body).slice(0, 500)}` : ''}`);
  }
  if (err.status !== undefined) parts.push(`status=${err.status}`);
  if (err.code) parts.push(`code=${err.code}`);
  return parts.join(' | ');
}

function uuid() {
  return crypto.randomUUID();
}

// ------------------------------------------------------------------ feature flags

const FLAG_CASES_FILE = path.join(__dirname, '..', 'flag_cases.json');

/** Shared by every flag driver of one run (run.sh sets E2E_FLAG_RUN) so their answers can be compared. */
function flagRunTag() {
  return process.env.E2E_FLAG_RUN || hex(4);
}

/** {flags, cases} from flag_cases.json with '{run}' / '{i}' filled in (mirrors common.py flag_cases). */
function flagCases(runTag) {
  const spec = JSON.parse(fs.readFileSync(FLAG_CASES_FILE, 'utf8'));
  const fill = (v, i) => {
    if (typeof v === 'string') {
      const s = v.split('{run}').join(runTag);
      return i === undefined ? s : s.split('{i}').join(String(i));
    }
    if (Array.isArray(v)) return v.map((x) => fill(x, i));
    if (v && typeof v === 'object') {
      const out = {};
      for (const [k, x] of Object.entries(v)) if (!k.startsWith('_')) out[fill(k, i)] = fill(x, i);
      return out;
    }
    return v;
  };
  const cases = spec.cases.map((cs) => fill(cs));
  const sweep = spec.sweep || {};
  for (let i = 0; i < Number(sweep.count || 0); i++) {
    cases.push({
      id: `sweep_${i}`, distinct_id: fill(sweep.distinct_id, i), person_properties: fill(sweep.person_properties || {}, i),
      groups: {}, group_properties: {},
    });
  }
  return { flags: spec.flags, cases };
}

/** JSON-safe copy of an SDK answer; undefined becomes null (recorded separately as `undefined: true`). */
function flagEntry(base, value) {
  const e = Object.assign({}, base);
  if (value === undefined) {
    e.value = null;
    e.undefined = true;
  } else {
    e.value = jsonCopy(value);
  }
  return e;
}

function writeFlagRecord(cfg, record) {
  fs.mkdirSync(cfg.outDir, { recursive: true });
  const file = path.join(cfg.outDir, `${record.sdk}.json`);
  fs.writeFileSync(file, JSON.stringify(record, null, 2));
  console.log(`[${record.sdk}] recorded ${record.results.length} flag evaluations -> ${file}`);
}

// A loopback HTTP server for a test page and posthog-js's bundled files (`/posthog-js/<file>.js`),
// on its own port so capture from the page is cross-origin, as on a real site.
function startPageServer(pageHtml, posthogDist) {
  const http = require('http');
  const fs = require('fs');
  const path = require('path');
  const server = http.createServer((req, res) => {
    const url = new URL(req.url, 'http://localhost');
    if (url.pathname === '/' || url.pathname === '/index.html') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
      res.end(fs.readFileSync(pageHtml));
      return;
    }
    const m = url.pathname.match(/^\/posthog-js\/([A-Za-z0-9._-]+\.js)$/);
    if (m && fs.existsSync(path.join(posthogDist, m[1]))) {
      res.writeHead(200, { 'content-type': 'application/javascript; charset=utf-8', 'cache-control': 'no-store' });
      res.end(fs.readFileSync(path.join(posthogDist, m[1])));
      return;
    }
    res.writeHead(404, { 'content-type': 'text/plain' });
    res.end('not found');
  });
  return new Promise((resolve, reject) => {
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => resolve(server));
  });
}

// Headless Chromium with the flags this machine needs, one page that records console errors,
// page errors and every request to the capture origin into `record`.
async function launchPage(chromium, executablePath, record, captureUrl) {
  const browser = await withTimeout(chromium.launch({
    executablePath,
    headless: true,
    timeout: 30000,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--disable-dev-shm-usage'],
  }), 40000, 'chromium launch');
  const context = await browser.newContext();
  const page = await context.newPage();
  page.setDefaultTimeout(15000);
  const captureOrigin = new URL(captureUrl).origin;
  page.on('console', (msg) => {
    if (msg.type() === 'error' || msg.type() === 'warning') {
      record.console.push(`${msg.type()}: ${msg.text()}`.slice(0, 1000));
    }
  });
  page.on('pageerror', (err) => record.errors.push(`page error: ${err.message}`));
  page.on('requestfailed', (req) => {
    if (req.url().startsWith(captureOrigin)) {
      record.network.push({ method: req.method(), url: req.url(), failure: req.failure() && req.failure().errorText });
    }
  });
  page.on('response', (res) => {
    if (res.url().startsWith(captureOrigin)) {
      record.network.push({ method: res.request().method(), url: res.url(), status: res.status() });
    }
  });
  return { browser, page };
}

module.exports = {
  hex, config, newRun, newSpanId, traceContext, baseProps, catalogProps, jsonCopy, nowIso, writeRecord, withTimeout, sleep, uuid, fmtErr,
  flagRunTag, flagCases, flagEntry, writeFlagRecord, launchPage, startPageServer,
};

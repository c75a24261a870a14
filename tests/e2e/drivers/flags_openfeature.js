'use strict';
// OpenFeature driver: @openfeature/server-sdk with @openfeature/ofrep-provider
// (POST /ofrep/v1/evaluate/flags/{key}, Authorization: Bearer <project token>),
// plus raw bulk requests (POST /ofrep/v1/evaluate/flags), which the server
// provider does not use. Records every evaluation detail with its context;
// check.py derives the expected values from examples/platform-flags.json.

const { OpenFeature } = require('@openfeature/server-sdk');
const { OFREPProvider } = require('@openfeature/ofrep-provider');
const c = require('./common');

const SDK = 'flags-openfeature';

function details(d) {
  return {
    value: d.value === undefined ? null : c.jsonCopy(d.value),
    reason: d.reason === undefined ? null : d.reason,
    variant: d.variant === undefined ? null : d.variant,
    errorCode: d.errorCode === undefined ? null : d.errorCode,
    errorMessage: d.errorMessage === undefined ? null : d.errorMessage,
    flagMetadata: c.jsonCopy(d.flagMetadata || {}),
  };
}

async function main() {
  const cfg = c.config();
  const runTag = c.flagRunTag();
  const { cases } = c.flagCases(runTag);
  const record = { sdk: SDK, run_tag: runTag, started_at: c.nowIso(), errors: [], results: [], bulk: [] };

  // Option names as in @openfeature/ofrep-core's OFREPProviderBaseOptions: baseUrl, headers, headersFactory, fetchImplementation.
  const provider = new OFREPProvider({
    baseUrl: cfg.captureUrl,
    headers: [['Authorization', `Bearer ${cfg.token}`]],
  });
  await c.withTimeout(OpenFeature.setProviderAndWait(provider), 15000, 'OpenFeature.setProviderAndWait');
  const client = OpenFeature.getClient('switchyard-e2e');
  OpenFeature.addHandler && OpenFeature.addHandler('PROVIDER_ERROR', (ev) => record.errors.push(`provider error event: ${JSON.stringify(ev)}`));

  const missing = `no_such_flag_${runTag}`;
  // name, method, flag, default value, evaluation context
  const evaluations = [
    ['debugger_user_42', 'getBooleanDetails', 'agent_debugger_ui', false, { targetingKey: 'user_42' }],
    ['rag_acme_value', 'getStringValue', 'versioned_rag_tracking', 'none', { targetingKey: 'u1', email: 'dev@acme.io' }],
    ['rag_acme_details', 'getStringDetails', 'versioned_rag_tracking', 'none', { targetingKey: 'u1', email: 'dev@acme.io' }],
    ['rag_acme_uppercase', 'getStringDetails', 'versioned_rag_tracking', 'none', { targetingKey: `acme_ops_${runTag}`, email: 'Ops@ACME.IO' }],
    ['debugger_acme_uppercase', 'getBooleanDetails', 'agent_debugger_ui', true, { targetingKey: `acme_ops_${runTag}`, email: 'Ops@ACME.IO' }],
    ['debugger_example_com', 'getBooleanDetails', 'agent_debugger_ui', false, { targetingKey: `maria_${runTag}`, email: 'maria@example.com' }],
    ['debugger_outsider', 'getBooleanDetails', 'agent_debugger_ui', true, { targetingKey: `outsider_${runTag}`, email: 'eve@gmail.com' }],
    ['costs_ws1', 'getBooleanDetails', 'track_model_costs', false, { targetingKey: 'u1', groups: { workspace: 'ws_1' } }],
    ['costs_other_ws', 'getBooleanDetails', 'track_model_costs', true, { targetingKey: 'u1', groups: { workspace: `ws_9_${runTag}` } }],
    ['costs_no_group', 'getBooleanDetails', 'track_model_costs', true, { targetingKey: 'u1' }],
    ['guardrails_anyone', 'getBooleanDetails', 'enable_guardrails_tracing', false, { targetingKey: `anyone_${runTag}` }],
    ['missing_flag', 'getBooleanDetails', missing, true, { targetingKey: 'user_42' }],
    ['type_mismatch', 'getNumberDetails', 'agent_debugger_ui', 7, { targetingKey: 'user_42' }],
  ];
  for (const [name, method, flag, dflt, ctx] of evaluations) {
    const entry = { name, method, flag, default: dflt, context: ctx };
    try {
      const got = await c.withTimeout(client[method](flag, dflt, ctx), 15000, `${method}(${flag})`);
      entry.details = method.endsWith('Details') ? details(got) : { value: c.jsonCopy(got) };
    } catch (e) {
      entry.error = c.fmtErr(e);
    }
    record.results.push(entry);
  }

  // Bulk evaluation (raw HTTP): every case of flag_cases.json that OFREP can express
  // (no group properties), so check.py can compare with the posthog SDKs' answers.
  for (const cs of cases) {
    if (Object.keys(cs.group_properties || {}).length) continue;
    const context = Object.assign({ targetingKey: cs.distinct_id }, cs.person_properties);
    if (Object.keys(cs.groups || {}).length) context.groups = cs.groups;
    const entry = { case: cs.id, context };
    try {
      const res = await c.withTimeout(fetch(`${cfg.captureUrl}/ofrep/v1/evaluate/flags`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${cfg.token}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ context }),
      }), 15000, 'bulk evaluation');
      entry.status = res.status;
      const text = await res.text();
      try { entry.body = JSON.parse(text); } catch (e) { entry.body_text = text.slice(0, 2000); }
    } catch (e) {
      entry.error = c.fmtErr(e);
    }
    record.bulk.push(entry);
  }

  await c.withTimeout(OpenFeature.close(), 10000, 'OpenFeature.close');
  record.finished_at = c.nowIso();
  c.writeFlagRecord(cfg, record);
}

main().then(() => process.exit(0)).catch((e) => {
  console.error(`[${SDK}] driver failed: ${e && (e.stack || e)}`);
  process.exit(1);
});

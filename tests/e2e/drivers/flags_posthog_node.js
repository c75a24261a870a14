'use strict';
// posthog-node feature-flag driver: evaluates the platform flags for every case
// of flag_cases.json twice, once remotely (client without personalApiKey: POST
// /flags) and once locally (client with personalApiKey = the secret key: GET
// /flags/definitions, then onlyEvaluateLocally: true). Records what the SDK
// returned; check.py holds the expectations (derived from
// examples/platform-flags.json).

const { PostHog } = require('posthog-node');
const c = require('./common');

const SDK = 'flags-posthog-node';

async function evaluate(client, mode, flags, cs, results, local) {
  const opts = {
    groups: cs.groups,
    personProperties: cs.person_properties,
    groupProperties: cs.group_properties,
    onlyEvaluateLocally: local,
  };
  const d = cs.distinct_id;
  const call = async (kind, method, flag, fn) => {
    const base = { case: cs.id, mode, call: kind, method, flag };
    try {
      results.push(c.flagEntry(base, await c.withTimeout(fn(), 15000, `${method}(${flag})`)));
    } catch (e) {
      results.push(Object.assign(base, { error: c.fmtErr(e) }));
    }
  };
  for (const flag of flags) {
    await call('value', 'getFeatureFlag', flag, () => client.getFeatureFlag(flag, d, opts));
    await call('enabled', 'isFeatureEnabled', flag, () => client.isFeatureEnabled(flag, d, opts));
    await call('payload', 'getFeatureFlagPayload', flag, () => client.getFeatureFlagPayload(flag, d, undefined, opts));
  }
  await call('all', 'getAllFlags', null, () => client.getAllFlags(d, opts));
}

async function main() {
  const cfg = c.config();
  const runTag = c.flagRunTag();
  const { flags, cases } = c.flagCases(runTag);
  const record = { sdk: SDK, run_tag: runTag, started_at: c.nowIso(), cases, errors: [], local: {}, results: [] };

  const common = {
    host: cfg.captureUrl, flushAt: 20, flushInterval: 200, fetchRetryCount: 2, fetchRetryDelay: 300,
    requestTimeout: 10000, disableGeoip: true,
  };
  const remote = new PostHog(cfg.token, common);
  const local = new PostHog(cfg.token, Object.assign({}, common, {
    personalApiKey: cfg.secret, featureFlagsPollingInterval: 300000,
  }));
  for (const [name, client] of [['remote', remote], ['local', local]]) {
    client.on('error', (err) => {
      const msg = `posthog-node (${name} client) error: ${c.fmtErr(err)}`;
      console.error(msg);
      record.errors.push(msg);
    });
  }

  // The documented way in posthog-node 5 to wait for the first definitions load.
  const t0 = Date.now();
  const ready = await c.withTimeout(local.waitForLocalEvaluationReady(15000), 20000, 'waitForLocalEvaluationReady');
  record.local = { ready, ready_ms: Date.now() - t0, is_ready: local.isLocalEvaluationReady() };
  console.log(`[${SDK}] local evaluation ready=${ready} after ${Date.now() - t0} ms`);

  for (const cs of cases) {
    await evaluate(remote, 'remote', flags, cs, record.results, false);
    await evaluate(local, 'local', flags, cs, record.results, true);
  }

  await c.withTimeout(Promise.all([remote.shutdown(10000), local.shutdown(10000)]), 15000, 'posthog-node shutdown');
  record.finished_at = c.nowIso();
  c.writeFlagRecord(cfg, record);
}

main().then(() => process.exit(0)).catch((e) => {
  console.error(`[${SDK}] driver failed: ${e && (e.stack || e)}`);
  process.exit(1);
});

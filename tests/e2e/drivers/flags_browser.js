'use strict';
// posthog-js feature-flag driver: serves drivers/flags_page.html plus
// posthog-js's bundle from its own loopback port (cross-origin, as on a real
// site) and drives it with headless Chromium through playwright-core. The page
// waits for the anonymous flag load, then identify('user_42', {email:
// 'dev@acme.io'}) + group('workspace', 'ws_1'), one awaited
// reloadFeatureFlags(), and reads isFeatureEnabled / getFeatureFlag /
// getFeatureFlagPayload / the onFeatureFlags variants. check.py derives the
// expected values from examples/platform-flags.json.

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');
const c = require('./common');

const SDK = 'flags-posthog-js';
const CASE_ID = 'user_42_acme_ws1';
const CHROMIUM = process.env.E2E_CHROMIUM || '/usr/bin/chromium';
const PAGE_HTML = path.join(__dirname, 'flags_page.html');
const POSTHOG_DIST = path.join(path.dirname(require.resolve('posthog-js/package.json')), 'dist');

/** One recorded result per SDK read, in the schema the posthog-python/-node flag drivers use. */
function toResults(caseId, values, variants) {
  const out = [];
  const entry = (call, method, flag, v) => {
    const base = { case: caseId, mode: 'remote', call, method, flag };
    return v === '__undefined__' ? Object.assign(base, { value: null, undefined: true }) : Object.assign(base, { value: v });
  };
  for (const [flag, v] of Object.entries(values || {})) {
    out.push(entry('value', 'getFeatureFlag', flag, v.getFeatureFlag));
    out.push(entry('enabled', 'isFeatureEnabled', flag, v.isFeatureEnabled));
    out.push(entry('payload', 'getFeatureFlagPayload', flag, v.getFeatureFlagPayload));
  }
  if (variants) out.push(entry('all', 'onFeatureFlags', null, variants));
  return out;
}

async function main() {
  const cfg = c.config();
  const runTag = c.flagRunTag();
  const { flags, cases } = c.flagCases(runTag);
  const cs = cases.find((x) => x.id === CASE_ID);
  if (!cs) throw new Error(`case ${CASE_ID} missing from flag_cases.json`);
  const record = {
    sdk: SDK, run_tag: runTag, started_at: c.nowIso(), cases: [cs], errors: [], results: [], network: [], console: [],
  };
  if (!fs.existsSync(path.join(POSTHOG_DIST, 'array.full.js'))) {
    throw new Error(`posthog-js bundle not found at ${POSTHOG_DIST}/array.full.js`);
  }

  const pageServer = await c.startPageServer(PAGE_HTML, POSTHOG_DIST);
  const pageOrigin = `http://127.0.0.1:${pageServer.address().port}`;
  let browser;
  try {
    let page;
    ({ browser, page } = await c.launchPage(chromium, CHROMIUM, record, cfg.captureUrl));

    await page.goto(`${pageOrigin}/`, { waitUntil: 'load', timeout: 15000 });
    const workspace = Object.entries(cs.groups)[0];
    const out = await c.withTimeout(page.evaluate((pageCfg) => window.runFlags(pageCfg), {
      token: cfg.token, apiHost: cfg.captureUrl, distinctId: cs.distinct_id, personProperties: cs.person_properties,
      groupType: workspace[0], groupKey: workspace[1], flags, anonWaitMs: 4000,
    }), 60000, 'runFlags in the page');
    record.page = out;

    // The anonymous visitor before identify: a case of its own (no properties, no groups).
    const anonCase = { id: 'browser_anonymous', distinct_id: out.anon.distinctId, person_properties: {}, groups: {}, group_properties: {} };
    record.cases.push(anonCase);
    record.anon_loaded = out.anon.loaded;
    const anonCallback = out.callbacks.find((cb) => cb.phase === 'init');
    if (out.anon.loaded) {
      record.results.push(...toResults(anonCase.id, out.anon.values, anonCallback && anonCallback.variants));
    }
    record.reloaded = out.reloaded;
    record.identified_distinct_id = out.distinctId;
    record.results.push(...toResults(cs.id, out.values, out.lastCallback && out.lastCallback.variants));
    record.last_callback = out.lastCallback;
    console.log(`[${SDK}] anonymous flags loaded=${out.anon.loaded}; after identify: ${JSON.stringify(out.lastCallback && out.lastCallback.variants)}`);
    await page.context().close();
  } finally {
    if (browser) await c.withTimeout(browser.close(), 10000, 'browser close').catch((e) => console.error(String(e)));
    pageServer.close();
  }
  record.finished_at = c.nowIso();
  c.writeFlagRecord(cfg, record);
}

main().then(() => process.exit(0)).catch((e) => {
  console.error(`[${SDK}] driver failed: ${e && (e.stack || e)}`);
  process.exit(1);
});

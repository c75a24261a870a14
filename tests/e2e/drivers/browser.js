'use strict';
// posthog-js driver: serves drivers/browser_page.html plus posthog-js's bundled
// build from a local HTTP server on its own loopback port (so capture is
// cross-origin, as on a real site), drives it with headless Chromium through
// playwright-core, and waits until the events show up in the events API
// (falling back to page unload, which makes posthog-js flush via sendBeacon).

const fs = require('fs');
const path = require('path');
const { chromium } = require('playwright-core');
const c = require('./common');

const CHROMIUM = process.env.E2E_CHROMIUM || '/usr/bin/chromium';
const PAGE_HTML = path.join(__dirname, 'browser_page.html');
const POSTHOG_DIST = path.join(path.dirname(require.resolve('posthog-js/package.json')), 'dist');

const PH_TYPES = {
  $pageview: 'page', $screen: 'screen', $identify: 'identify', $groupidentify: 'group', $create_alias: 'alias',
  $set: ['identify', 'track'],
};

async function countTraceEvents(cfg, traceId) {
  const url = `${cfg.apiUrl}/api/projects/@current/events/?trace_id=${traceId}&limit=1000`;
  try {
    const res = await c.withTimeout(fetch(url, { headers: { Authorization: `Bearer ${cfg.secret}` } }), 5000, 'events API');
    if (!res.ok) return { count: -1, status: res.status };
    const body = await res.json();
    return { count: Array.isArray(body.results) ? body.results.length : -1, status: res.status };
  } catch (e) {
    return { count: -1, status: String(e.message || e) };
  }
}

async function main() {
  const cfg = c.config();
  const run = c.newRun('posthog-js');
  const record = {
    sdk: 'posthog-js', protocol: 'posthog', trace_id: run.traceId, started_at: c.nowIso(),
    distinct_ids: [run.userId], errors: [], events: [], network: [], console: [],
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
    const events = {
      agent_created: c.catalogProps(run, 'agent_created'),
      flow_executed: c.catalogProps(run, 'flow_executed'),
      tool_used: c.catalogProps(run, 'tool_used'),
    };
    const result = await page.evaluate((pageCfg) => window.runE2E(pageCfg), {
      token: cfg.token, apiHost: cfg.captureUrl, traceId: run.traceId, workspaceId: run.workspaceId,
      organizationId: run.organizationId, userId: run.userId, events,
    });
    record.distinct_ids.push(result.anonId);
    record.anon_id = result.anonId;

    const readSent = async () => page.evaluate(() => ({ sent: window.__e2e.sent, errors: window.__e2e.errors }));
    let snapshot = await readSent();
    const tracedExpected = () => snapshot.sent.filter((e) => e.properties && e.properties.trace_id === run.traceId).length;

    // Wait for the batched requests (flush interval 3 s) to land; after 10 s
    // unload the page so posthog-js flushes with sendBeacon; give up at 25 s.
    const start = Date.now();
    let unloaded = false;
    let last = { count: -1, status: 'not polled' };
    while (Date.now() - start < 25000) {
      if (!unloaded) snapshot = await readSent();
      last = await countTraceEvents(cfg, run.traceId);
      if (last.count >= tracedExpected() && tracedExpected() > 0) break;
      if (!unloaded && Date.now() - start > 10000) {
        console.log(`[posthog-js] ${last.count}/${tracedExpected()} events visible after 10 s; unloading the page to force a flush`);
        snapshot = await readSent();
        await page.close({ runBeforeUnload: true });
        unloaded = true;
      }
      await c.sleep(500);
    }
    console.log(`[posthog-js] events API shows ${last.count} of ${tracedExpected()} traced events (last status ${last.status}) after ${Date.now() - start} ms`);
    if (!unloaded) {
      snapshot = await readSent();
      await page.close({ runBeforeUnload: true });
    }
    record.errors.push(...snapshot.errors);

    for (const ev of snapshot.sent) {
      const rec = {
        id: ev.id,
        event: ev.event,
        type: PH_TYPES[ev.event] || 'track',
        distinct_id: ev.distinct_id,
        traced: !!(ev.properties && ev.properties.trace_id === run.traceId),
        properties: ev.properties,
        sdk_timestamp: ev.sdk_timestamp,
      };
      if (ev.set && Object.keys(ev.set).length > 0) rec.traits = ev.set;
      if (ev.event === '$identify' && ev.anon_distinct_id) rec.anonymous_id = ev.anon_distinct_id;
      if (ev.event === '$groupidentify') {
        rec.group = { type: ev.properties.$group_type, key: ev.properties.$group_key, traits: ev.group_set || {} };
      }
      record.events.push(rec);
    }
    await page.context().close();
  } finally {
    if (browser) await c.withTimeout(browser.close(), 10000, 'browser close').catch((e) => console.error(String(e)));
    pageServer.close();
  }
  record.finished_at = c.nowIso();
  c.writeRecord(cfg, record);
}

main().then(() => process.exit(0)).catch((e) => {
  console.error(`[posthog-js] driver failed: ${e && (e.stack || e)}`);
  process.exit(1);
});

'use strict';
// @segment/analytics-node driver: an anonymous page view, identify, group,
// track (x3, one with an explicit timestamp, one with an SDK-generated
// messageId read back from the callback), alias; then closeAndFlush.

const { Analytics } = require('@segment/analytics-node');
const c = require('./common');

async function main() {
  const cfg = c.config();
  const run = c.newRun('segment-node');
  const record = {
    sdk: 'segment-node', protocol: 'segment', trace_id: run.traceId, started_at: c.nowIso(),
    distinct_ids: [run.userId, run.anonId], errors: [], events: [],
  };

  const analytics = new Analytics({
    writeKey: cfg.writeKey,
    host: cfg.captureUrl,
    flushAt: 5,
    flushInterval: 300,
    maxRetries: 2,
    httpRequestTimeout: 10000,
  });
  analytics.on('error', (err) => {
    const msg = `segment analytics-node error: ${c.fmtErr(err)}${err && err.reason ? ` reason=${c.fmtErr(err.reason)}` : ''}`;
    console.error(msg);
    record.errors.push(msg);
  });

  const pending = [];
  // id: a messageId we set; or null to let the SDK generate it (read back from ctx).
  function send(method, params, rec, setId = true) {
    const messageId = setId ? c.uuid() : undefined;
    const entry = { id: messageId || null, ...rec };
    record.events.push(entry);
    pending.push(new Promise((resolve) => {
      analytics[method](setId ? { ...params, messageId } : params, (err, ctx) => {
        if (!setId && ctx && ctx.event && ctx.event.messageId) entry.id = ctx.event.messageId;
        if (err) {
          const msg = `segment ${method} ${entry.id}: ${c.fmtErr(err)}`;
          console.error(msg);
          record.errors.push(msg);
        }
        resolve();
      });
    }));
  }

  // Before login: an anonymous page view of the agent builder.
  const pageProps = { ...c.baseProps(run), path: '/agents/new', url: 'https://app.example.com/agents/new', referrer: '' };
  send('page', { anonymousId: run.anonId, category: 'Builder', name: 'New agent', properties: pageProps }, {
    event: '$pageview', type: 'page', distinct_id: run.anonId, anonymous_id: run.anonId, traced: true,
    properties: c.jsonCopy(pageProps), mentions: ['New agent'],
  });

  const traits = { email: `${run.userId}@example.com`, firstName: 'Grace', lastName: 'Hopper', plan: 'team', seats: 3 };
  // identify/group/alias carry the trace as context.traceparent (they have no properties).
  let tc = c.traceContext(run);
  send('identify', { userId: run.userId, anonymousId: run.anonId, traits, context: tc.context }, {
    event: '$identify', type: 'identify', distinct_id: run.userId, user_id: run.userId, anonymous_id: run.anonId,
    traced: true, span_id: tc.span, properties: {}, traits: c.jsonCopy(traits),
  });

  const groupTraits = { name: 'Initech', industry: 'software', employees: 57 };
  tc = c.traceContext(run);
  send('group', { userId: run.userId, groupId: run.organizationId, traits: groupTraits, context: tc.context }, {
    event: '$groupidentify', type: 'group', distinct_id: run.userId, user_id: run.userId, traced: true, span_id: tc.span,
    properties: {}, group: { type: null, key: run.organizationId, traits: c.jsonCopy(groupTraits) },
  });

  for (const event of ['agent_created', 'prompt_blocked', 'agent_execution']) {
    const properties = c.catalogProps(run, event);
    const params = { userId: run.userId, event, properties };
    const rec = { event, type: 'track', distinct_id: run.userId, user_id: run.userId, traced: true, properties: c.jsonCopy(properties) };
    if (event === 'agent_execution') {
      const ts = new Date(Date.now() - 30000);
      params.timestamp = ts;
      rec.timestamp = ts.toISOString();
    }
    send('track', params, rec, event !== 'prompt_blocked');
  }

  tc = c.traceContext(run);
  send('alias', { userId: run.userId, previousId: run.anonId, context: tc.context }, {
    event: '$create_alias', type: 'alias', distinct_id: run.userId, user_id: run.userId, traced: true, span_id: tc.span,
    properties: {}, mentions: [run.anonId],
  });

  await c.withTimeout(analytics.closeAndFlush({ timeout: 20000 }), 25000, 'segment closeAndFlush');
  await c.withTimeout(Promise.all(pending), 5000, 'segment callbacks');
  record.finished_at = c.nowIso();
  c.writeRecord(cfg, record);
}

main().then(() => process.exit(0)).catch((e) => {
  console.error(`[segment-node] driver failed: ${e && (e.stack || e)}`);
  process.exit(1);
});

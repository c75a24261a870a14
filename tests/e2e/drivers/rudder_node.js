'use strict';
// @rudderstack/rudder-sdk-node driver: identify, track (x3), group, page,
// alias with explicit messageIds; gzip on (the SDK default, which labels the
// body application/x-www-form-urlencoded); flush until the queue is empty.

const Analytics = require('@rudderstack/rudder-sdk-node');
const c = require('./common');

async function main() {
  const cfg = c.config();
  const run = c.newRun('rudder-node');
  const record = {
    sdk: 'rudder-node', protocol: 'segment', trace_id: run.traceId, started_at: c.nowIso(),
    distinct_ids: [run.userId], errors: [], events: [],
  };

  const client = new Analytics(cfg.writeKey, {
    dataPlaneUrl: cfg.captureUrl,
    flushAt: 4,
    flushInterval: 200,
    retryCount: 2,
    logLevel: 'error',
    // Failed batches also reach each event's callback (recorded there).
    errorHandler: (err) => console.error(`rudder-sdk-node errorHandler: ${c.fmtErr(err)}`),
  });

  const pending = [];
  function send(method, message, rec) {
    const messageId = c.uuid();
    pending.push(new Promise((resolve) => {
      client[method]({ ...message, messageId }, (err) => {
        if (err) {
          const msg = `rudder-sdk-node ${method} ${messageId}: ${c.fmtErr(err)}`;
          console.error(msg);
          record.errors.push(msg);
        }
        resolve();
      });
    }));
    record.events.push({ id: messageId, distinct_id: run.userId, user_id: run.userId, ...rec });
  }

  const traits = { email: `${run.userId}@example.com`, name: 'Ada Lovelace', plan: 'pro', seats: 5, verified: true };
  // identify/group carry the trace as context.traceparent (they have no properties).
  let tc = c.traceContext(run);
  send('identify', { userId: run.userId, traits, context: tc.context }, {
    event: '$identify', type: 'identify', traced: true, span_id: tc.span, properties: {}, traits: c.jsonCopy(traits),
  });

  for (const event of ['flow_executed', 'rag_query_triggered', 'agent_execution']) {
    const properties = c.catalogProps(run, event);
    const msg = { userId: run.userId, event, properties };
    const rec = { event, type: 'track', traced: true, properties: c.jsonCopy(properties) };
    if (event === 'agent_execution') {
      const ts = new Date(Date.now() - 30000);
      msg.timestamp = ts;
      rec.timestamp = ts.toISOString();
    }
    send('track', msg, rec);
  }

  const groupTraits = { name: 'Acme Robotics', plan: 'enterprise', employees: 240 };
  tc = c.traceContext(run);
  send('group', { userId: run.userId, groupId: run.workspaceId, traits: groupTraits, context: tc.context }, {
    event: '$groupidentify', type: 'group', traced: true, span_id: tc.span, properties: {},
    group: { type: null, key: run.workspaceId, traits: c.jsonCopy(groupTraits) },
  });

  const pageProps = { ...c.baseProps(run), path: '/flows/editor', url: 'https://app.example.com/flows/editor', title: 'Flow editor' };
  send('page', { userId: run.userId, category: 'Builder', name: 'Flow editor', properties: pageProps }, {
    event: '$pageview', type: 'page', traced: true, properties: c.jsonCopy(pageProps), mentions: ['Flow editor'],
  });

  // alias without trace context: found through the distinct_id query.
  send('alias', { userId: run.userId, previousId: run.anonId }, {
    event: '$create_alias', type: 'alias', traced: false, properties: {}, mentions: [run.anonId],
  });

  // Flush in rounds of flushAt until the queue is empty (bounded).
  const deadline = Date.now() + 20000;
  while (client.queue.length > 0 && Date.now() < deadline) {
    await c.withTimeout(client.flush(), 15000, 'rudder-sdk-node flush');
  }
  await c.withTimeout(client.flush(), 15000, 'rudder-sdk-node final flush');
  await c.withTimeout(Promise.all(pending), 20000, 'rudder-sdk-node event callbacks');
  record.finished_at = c.nowIso();
  c.writeRecord(cfg, record);
}

main().then(() => process.exit(0)).catch((e) => {
  console.error(`[rudder-node] driver failed: ${e && (e.stack || e)}`);
  process.exit(1);
});

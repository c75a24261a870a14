'use strict';
// posthog-node driver: capture (with uuids, groups, one explicit timestamp),
// identify, groupIdentify, alias; then shutdown (flushes the queue).

const { PostHog } = require('posthog-node');
const c = require('./common');

async function main() {
  const cfg = c.config();
  const run = c.newRun('posthog-node');
  const record = {
    sdk: 'posthog-node', protocol: 'posthog', trace_id: run.traceId, started_at: c.nowIso(),
    distinct_ids: [run.userId], errors: [], events: [],
  };

  const client = new PostHog(cfg.token, {
    host: cfg.captureUrl,
    flushAt: 3,
    flushInterval: 200,
    fetchRetryCount: 2,
    fetchRetryDelay: 300,
    requestTimeout: 10000,
    disableGeoip: true,
  });
  client.on('error', (err) => {
    const msg = `posthog-node error: ${c.fmtErr(err)}`;
    console.error(msg);
    record.errors.push(msg);
  });

  const groups = { workspace: run.workspaceId, organization: run.organizationId };
  const captures = [
    { event: 'agent_created' },
    { event: 'agent_execution' },
    { event: 'tool_used' },
    { event: 'agent_error', timestamp: new Date(Date.now() - 45000) },
  ];

  for (const cap of captures) {
    const props = c.catalogProps(run, cap.event);
    const id = c.uuid();
    const msg = { distinctId: run.userId, event: cap.event, properties: props, groups, uuid: id };
    if (cap.timestamp) msg.timestamp = cap.timestamp;
    client.capture(msg);
    const rec = {
      id, event: cap.event, type: 'track', distinct_id: run.userId, traced: true,
      properties: c.jsonCopy(props),
    };
    if (cap.timestamp) rec.timestamp = cap.timestamp.toISOString();
    record.events.push(rec);
  }

  // identify: posthog-node puts $set / $set_once inside properties.
  const setProps = { email: `${run.userId}@example.com`, plan: 'enterprise', seats: 25, beta_user: true };
  const setOnce = { first_seen_sdk: 'posthog-node' };
  client.identify({ distinctId: run.userId, properties: { $set: setProps, $set_once: setOnce } });
  record.events.push({
    id: null, event: '$identify', type: 'identify', distinct_id: run.userId, traced: false,
    properties: {}, traits: c.jsonCopy(setProps),
  });

  const groupSet = { name: 'Acme Robotics', plan: 'enterprise', agents: 12 };
  client.groupIdentify({ groupType: 'workspace', groupKey: run.workspaceId, properties: groupSet, distinctId: run.userId });
  record.events.push({
    id: null, event: '$groupidentify', type: 'group', distinct_id: run.userId, traced: false,
    properties: {}, group: { type: 'workspace', key: run.workspaceId, traits: c.jsonCopy(groupSet) },
  });

  client.alias({ distinctId: run.userId, alias: run.anonId });
  record.events.push({
    id: null, event: '$create_alias', type: 'alias', distinct_id: run.userId, traced: false,
    properties: {}, mentions: [run.anonId],
  });

  await c.withTimeout(client.shutdown(15000), 20000, 'posthog-node shutdown');
  record.finished_at = c.nowIso();
  c.writeRecord(cfg, record);
}

main().catch((e) => {
  console.error(`[posthog-node] driver failed: ${e && (e.stack || e)}`);
  process.exit(1);
});

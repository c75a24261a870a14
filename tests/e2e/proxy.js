'use strict';
// Transparent recording reverse proxy: SDK -> proxy -> Switchyard.
//
// Bodies are forwarded byte for byte (only hop-by-hop headers change). Every
// exchange is appended to a JSONL log (request with a decoded body, status,
// response body) so check.py can show the exact wire evidence for a failure.
//
// usage: node proxy.js <listen-port> <target-base-url> <log-file>

const http = require('http');
const zlib = require('zlib');
const fs = require('fs');

const [, , listenPort, targetBase, logFile] = process.argv;
if (!listenPort || !targetBase || !logFile) {
  console.error('usage: node proxy.js <listen-port> <target-base-url> <log-file>');
  process.exit(2);
}
const target = new URL(targetBase);
const log = fs.createWriteStream(logFile, { flags: 'a' });
const MAX_LOGGED_BODY = 256 * 1024;
const HOP_BY_HOP = ['connection', 'keep-alive', 'proxy-connection', 'transfer-encoding', 'upgrade', 'te', 'trailer'];

function describeBody(buf) {
  if (!buf || buf.length === 0) return { size: 0, text: '' };
  let data = buf;
  let gzip = false;
  if (buf.length >= 2 && buf[0] === 0x1f && buf[1] === 0x8b) {
    try {
      data = zlib.gunzipSync(buf);
      gzip = true;
    } catch (e) {
      return { size: buf.length, gzip: 'invalid', base64: buf.subarray(0, 4096).toString('base64') };
    }
  }
  const text = data.toString('utf8');
  const out = { size: buf.length, gzip };
  if (Buffer.from(text, 'utf8').equals(data)) {
    out.text = text.length > MAX_LOGGED_BODY ? text.slice(0, MAX_LOGGED_BODY) + '…[truncated]' : text;
  } else {
    out.base64 = data.subarray(0, 4096).toString('base64');
  }
  return out;
}

function pickHeaders(h) {
  const keep = ['content-type', 'content-encoding', 'content-length', 'authorization', 'user-agent', 'origin',
    'access-control-request-method', 'access-control-request-headers', 'access-control-allow-origin',
    'access-control-allow-credentials', 'access-control-allow-headers', 'access-control-allow-methods', 'location'];
  const out = {};
  for (const k of keep) if (h[k] !== undefined) out[k] = h[k];
  return out;
}

function writeLog(entry) {
  log.write(JSON.stringify(entry) + '\n');
}

const server = http.createServer((req, res) => {
  const started = Date.now();
  const chunks = [];
  req.on('data', (c) => chunks.push(c));
  req.on('error', () => {});
  req.on('end', () => {
    const body = Buffer.concat(chunks);
    const headers = { ...req.headers, host: target.host };
    for (const h of HOP_BY_HOP) delete headers[h];
    if (body.length > 0 || req.method === 'POST' || req.method === 'PUT') headers['content-length'] = String(body.length);
    const entry = {
      ts: new Date(started).toISOString(),
      method: req.method,
      path: req.url,
      req_headers: pickHeaders(req.headers),
      req_body: describeBody(body),
    };
    const preq = http.request({
      protocol: target.protocol,
      hostname: target.hostname,
      port: target.port,
      method: req.method,
      path: req.url,
      headers,
    }, (pres) => {
      const rchunks = [];
      pres.on('data', (c) => rchunks.push(c));
      pres.on('error', () => {});
      pres.on('end', () => {
        const rbody = Buffer.concat(rchunks);
        const rheaders = { ...pres.headers };
        for (const h of HOP_BY_HOP) delete rheaders[h];
        rheaders['content-length'] = String(rbody.length);
        entry.status = pres.statusCode;
        entry.resp_headers = pickHeaders(pres.headers);
        const rb = describeBody(rbody);
        if (rb.text && rb.text.length > 4096) rb.text = rb.text.slice(0, 4096) + '…[truncated]';
        entry.resp_body = rb;
        entry.ms = Date.now() - started;
        writeLog(entry);
        try {
          res.writeHead(pres.statusCode, rheaders);
          res.end(rbody);
        } catch (e) { /* client went away */ }
      });
    });
    preq.setTimeout(30000, () => preq.destroy(new Error('upstream timeout (30 s)')));
    preq.on('error', (e) => {
      entry.status = 502;
      entry.proxy_error = String(e && e.message);
      entry.ms = Date.now() - started;
      writeLog(entry);
      try {
        res.writeHead(502, { 'content-type': 'text/plain' });
        res.end(`e2e proxy: upstream error: ${e.message}`);
      } catch (err) { /* ignore */ }
    });
    preq.end(body);
  });
});

server.keepAliveTimeout = 5000;
server.listen(Number(listenPort), '127.0.0.1', () => {
  console.log(`e2e proxy listening on 127.0.0.1:${listenPort} -> ${target.origin}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    log.end(() => process.exit(0));
    setTimeout(() => process.exit(0), 1000).unref();
  });
}

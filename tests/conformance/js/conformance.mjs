// The real JS @fal-ai/client (1.10.1) against a runmesh node over TLS.
//
// Configured only the documented way: `credentials` (FAL_KEY) and a `requestMiddleware` that
// rewrites fal's hosts to the node (https://fal.run → https://HOST, https://queue.fal.run →
// https://HOST/queue, https://rest.fal.ai → https://HOST); the certificate is trusted through
// NODE_EXTRA_CA_CERTS. The last section repeats the main calls in `proxyUrl` mode (the node's
// /api/fal/proxy endpoint, dispatching on x-fal-target-url). Realtime's URL is hard-coded (wss://fal.run) and cannot be redirected by
// config, so that one check installs a global WebSocket shim (the `ws` package) that rewrites it.
// Env: RUNMESH_HOST (host:port), FAL_KEY, NODE_EXTRA_CA_CERTS. Exits non-zero on the first failure.

import crypto from "node:crypto";
import http from "node:http";
import { fal, ApiError, ValidationError } from "@fal-ai/client";
import WebSocket from "ws";

const HOST = process.env.RUNMESH_HOST;
const WAIT_MS = 30_000;

function check(cond, what) {
  if (!cond) {
    console.log(`FAIL: ${what}`);
    process.exit(1);
  }
  console.log(`ok: ${what}`);
}

function rewrite(url) {
  return url
    .replace(/^https:\/\/queue\.fal\.run\//, `https://${HOST}/queue/`)
    .replace(/^https:\/\/fal\.run\//, `https://${HOST}/`)
    .replace(/^wss:\/\/fal\.run\//, `wss://${HOST}/`)
    .replace(/^https:\/\/rest\.fal\.ai\//, `https://${HOST}/`);
}

fal.config({
  credentials: process.env.FAL_KEY,
  requestMiddleware: async (req) => ({ ...req, url: rewrite(req.url) }),
});

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitStatus(endpointId, requestId, pred, what) {
  const deadline = Date.now() + WAIT_MS;
  let st = await fal.queue.status(endpointId, { requestId, logs: true });
  while (!pred(st) && Date.now() < deadline) {
    await sleep(50);
    st = await fal.queue.status(endpointId, { requestId, logs: true });
  }
  check(pred(st), what);
  return st;
}

// --- webhook receiver: verification written from fal's docs (JWKS `x`, Ed25519 over
// request_id\nuser_id\ntimestamp\nsha256hex(body), hex signature, ±300 s) ---
async function verifyWebhook(headers, body) {
  const requestId = headers["x-fal-webhook-request-id"];
  const userId = headers["x-fal-webhook-user-id"];
  const timestamp = headers["x-fal-webhook-timestamp"];
  const signatureHex = headers["x-fal-webhook-signature"];
  if (!requestId || !userId || !timestamp || !signatureHex) return false;
  if (Math.abs(Math.floor(Date.now() / 1000) - parseInt(timestamp, 10)) > 300) return false;
  const digest = crypto.createHash("sha256").update(body).digest("hex");
  const message = Buffer.from([requestId, userId, timestamp, digest].join("\n"), "utf-8");
  const signature = Buffer.from(signatureHex, "hex");
  const jwks = await (await fetch(`https://${HOST}/.well-known/jwks.json`)).json();
  for (const key of jwks.keys) {
    const publicKey = crypto.createPublicKey({
      key: { kty: "OKP", crv: "Ed25519", x: key.x },
      format: "jwk",
    });
    if (crypto.verify(null, message, publicKey, signature)) return true;
  }
  return false;
}

function startReceiver() {
  const received = [];
  const server = http.createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", async () => {
      const body = Buffer.concat(chunks);
      const ok = await verifyWebhook(req.headers, body);
      received.push({ headers: req.headers, body: JSON.parse(body.toString("utf-8")), ok });
      res.writeHead(ok ? 200 : 401).end();
    });
  });
  return new Promise((resolve) =>
    server.listen(0, "127.0.0.1", () => resolve({ server, received, port: server.address().port })),
  );
}

async function main() {
  // fal.run
  const run = await fal.run("runmesh/echo", { input: { hello: "world" }, startTimeout: 30, storageSettings: { expiresIn: 60 } });
  check(JSON.stringify(run.data) === '{"hello":"world"}', "fal.run returns the output");
  check(typeof run.requestId === "string" && run.requestId.length > 0, "fal.run requestId from x-fal-request-id");

  // queue.submit → status (logs) → result
  const { request_id } = await fal.queue.submit("runmesh/sleep/sub", {
    input: { ms: 300 },
    priority: "low",
    hint: "h",
    startTimeout: 30,
    storageSettings: { expiresIn: "1h" },
  });
  check(typeof request_id === "string", "queue.submit returns a request_id");
  const done = await waitStatus("runmesh/sleep", request_id, (s) => s.status === "COMPLETED", "submitted job completes");
  check(Array.isArray(done.logs) && done.logs.length > 0, "status with logs=1 carries logs");
  check(done.metrics && typeof done.metrics.inference_time === "number", "metrics.inference_time");
  const result = await fal.queue.result("runmesh/sleep", { requestId: request_id });
  check(result.data.slept_ms === 300 && result.requestId === request_id, "queue.result");

  // result before completion is an error, never data
  const slow = await fal.queue.submit("runmesh/sleep", { input: { ms: 30000 } });
  try {
    await fal.queue.result("runmesh/sleep", { requestId: slow.request_id });
    check(false, "result before completion throws");
  } catch (e) {
    check(e instanceof ApiError && e.status === 400, `result before completion: ${e.status}`);
  }
  // cancel
  await waitStatus("runmesh/sleep", slow.request_id, (s) => s.status === "IN_PROGRESS", "long job starts");
  await fal.queue.cancel("runmesh/sleep", { requestId: slow.request_id });
  const cancelled = await waitStatus("runmesh/sleep", slow.request_id, (s) => s.status === "COMPLETED", "cancelled job completes");
  check(cancelled.error_type === "client_cancelled", `cancelled error_type ${cancelled.error_type}`);

  // subscribe, polling, with queue updates
  const updates = [];
  const sub = await fal.subscribe("runmesh/sleep", {
    input: { ms: 400 },
    logs: true,
    pollInterval: 100,
    onQueueUpdate: (u) => updates.push(u),
  });
  check(sub.data.slept_ms === 400, "subscribe (polling) returns the output");
  check(updates.some((u) => u.status === "IN_PROGRESS"), "subscribe saw IN_PROGRESS");

  // subscribe in streaming mode (status/stream SSE)
  const streamed = [];
  const sub2 = await fal.subscribe("runmesh/sleep", {
    input: { ms: 300 },
    mode: "streaming",
    logs: true,
    onQueueUpdate: (u) => streamed.push(u.status),
  });
  check(sub2.data.slept_ms === 300, "subscribe (streaming mode) returns the output");
  check(streamed.includes("COMPLETED"), `streaming mode saw ${streamed}`);

  // fal.stream: partials, then done() with the final output. JS appends `/stream` unless the id
  // already ends with it, and this app's alias *is* `stream`: so the id spells the path out.
  const stream = await fal.stream("runmesh/stream/stream", { input: { n: 3, interval_ms: 10 } });
  const events = [];
  for await (const ev of stream) events.push(ev);
  const final = await stream.done();
  check(JSON.stringify(events) === '[{"i":0},{"i":1},{"i":2},{"n":3}]', `stream events ${JSON.stringify(events)}`);
  check(final.n === 3, "stream done() is the final output");

  // a failing app: subscribe throws the app's error
  try {
    await fal.subscribe("runmesh/fail", { input: { message: "js-boom" }, pollInterval: 100 });
    check(false, "subscribe to a failing app throws");
  } catch (e) {
    check(e instanceof ApiError && JSON.stringify(e.body).includes("js-boom"), `failing app: ${e.status}`);
  }
  // invalid input: 422 → ValidationError
  try {
    await fal.run("runmesh/sleep", { input: { ms: "soon" } });
    check(false, "invalid input throws");
  } catch (e) {
    check(e instanceof ValidationError && e.status === 422, `invalid input: ${e.constructor.name} ${e.status}`);
  }

  // a bad key
  const bad = (await import("@fal-ai/client")).createFalClient({
    credentials: "nobody:nothing",
    requestMiddleware: async (req) => ({ ...req, url: rewrite(req.url) }),
  });
  try {
    await bad.run("runmesh/echo", { input: {} });
    check(false, "a bad key is refused");
  } catch (e) {
    check(e instanceof ApiError && e.status === 401 && e.body.detail === "No user found for Key ID and Secret", `bad key: ${e.status}`);
  }

  // realtime: a token from /tokens/ (through the middleware), the socket through a shim
  globalThis.WebSocket = class extends WebSocket {
    constructor(url, protocols) {
      super(rewrite(String(url)), protocols);
    }
  };
  const frames = await new Promise((resolve, reject) => {
    const got = [];
    const timer = setTimeout(() => reject(new Error(`realtime timed out after ${JSON.stringify(got)}`)), WAIT_MS);
    const conn = fal.realtime.connect("runmesh/stream", {
      onResult: (r) => {
        got.push(r);
        if (got.length === 3) {
          clearTimeout(timer);
          conn.close();
          resolve(got);
        }
      },
      onError: (e) => {
        clearTimeout(timer);
        reject(e);
      },
    });
    conn.send({ n: 2, interval_ms: 10 });
  });
  check(JSON.stringify(frames) === '[{"i":0},{"i":1},{"n":2}]', `realtime frames ${JSON.stringify(frames)}`);

  // webhook, verified with the JWKS only
  const rx = await startReceiver();
  const hooked = await fal.queue.submit("runmesh/echo", {
    input: { hook: "js" },
    webhookUrl: `http://127.0.0.1:${rx.port}/hook`,
  });
  const deadline = Date.now() + WAIT_MS;
  while (rx.received.length < 1 && Date.now() < deadline) await sleep(50);
  check(rx.received.length === 1, "webhook delivered");
  const hook = rx.received[0];
  check(hook.ok, "webhook signature verifies against the JWKS");
  check(hook.body.request_id === hooked.request_id && hook.body.status === "OK" && hook.body.payload.hook === "js", "webhook payload");
  rx.server.close();

  // Storage: fal.storage.upload (initiate on rest.fal.ai, rewritten to the node, then a PUT to the
  // upload_url it answered) and the automatic upload of a Blob inside an input.
  const bytes = new Uint8Array(200_000).map((_, i) => i % 253);
  const fileUrl = await fal.storage.upload(new Blob([bytes], { type: "image/png" }));
  check(fileUrl.startsWith(`https://${HOST}/files/`), `storage.upload returns a node URL ${fileUrl}`);
  const back = new Uint8Array(await (await fetch(fileUrl)).arrayBuffer());
  check(back.length === bytes.length && back.every((b, i) => b === bytes[i]), "the upload reads back");
  const hashed = await fal.subscribe("runmesh/hash", { input: { file_url: new Blob([bytes]) } });
  check(hashed.data.size === bytes.length, `a Blob input reaches the app as a file ${JSON.stringify(hashed.data)}`);
  const noise = await fal.subscribe("runmesh/noise", { input: { bytes: 1000, seed: 2 } });
  const got = await (await fetch(noise.data.file.url)).arrayBuffer();
  check(got.byteLength === 1000 && noise.data.file.file_size === 1000, "an output File downloads");

  // proxyUrl mode: every request goes to the node's proxy endpoint with the URL it meant in
  // x-fal-target-url (the client's documented alternative to requestMiddleware), no rewriting.
  const viaProxy = (await import("@fal-ai/client")).createFalClient({
    credentials: process.env.FAL_KEY,
    proxyUrl: { url: `https://${HOST}/api/fal/proxy`, when: "always" },
  });
  const prun = await viaProxy.run("runmesh/echo", { input: { via: "proxy" } });
  check(JSON.stringify(prun.data) === '{"via":"proxy"}' && prun.requestId.length > 0, "proxy: fal.run");
  const pupdates = [];
  const psub = await viaProxy.subscribe("runmesh/sleep/sub", {
    input: { ms: 200 },
    logs: true,
    pollInterval: 100,
    onQueueUpdate: (u) => pupdates.push(u.status),
  });
  check(psub.data.slept_ms === 200 && pupdates.includes("IN_PROGRESS"), `proxy: subscribe saw ${pupdates}`);
  const psub2 = await viaProxy.subscribe("runmesh/sleep", { input: { ms: 100 }, mode: "streaming" });
  check(psub2.data.slept_ms === 100, "proxy: subscribe (streaming mode)");
  const pq = await viaProxy.queue.submit("runmesh/echo", { input: { q: 1 } });
  const pst = await viaProxy.queue.status("runmesh/echo", { requestId: pq.request_id, logs: true });
  check(["IN_QUEUE", "IN_PROGRESS", "COMPLETED"].includes(pst.status), `proxy: queue.status ${pst.status}`);
  const pres = await viaProxy.subscribe("runmesh/echo", { input: { q: 2 }, pollInterval: 100 });
  check(pres.data.q === 2, "proxy: result");
  const pstream = await viaProxy.stream("runmesh/stream/stream", { input: { n: 2, interval_ms: 10 } });
  const pevents = [];
  for await (const ev of pstream) pevents.push(ev);
  check(JSON.stringify(pevents) === '[{"i":0},{"i":1},{"n":2}]', `proxy: stream events ${JSON.stringify(pevents)}`);
  try {
    await viaProxy.run("runmesh/sleep", { input: { ms: "soon" } });
    check(false, "proxy: invalid input throws");
  } catch (e) {
    check(e instanceof ValidationError && e.status === 422, `proxy: invalid input ${e.status}`);
  }
  const badProxy = (await import("@fal-ai/client")).createFalClient({
    credentials: "nobody:nothing",
    proxyUrl: { url: `https://${HOST}/api/fal/proxy`, when: "always" },
  });
  try {
    await badProxy.run("runmesh/echo", { input: {} });
    check(false, "proxy: a bad key is refused");
  } catch (e) {
    check(e instanceof ApiError && e.status === 401, `proxy: bad key ${e.status}`);
  }

  console.log("all @fal-ai/client conformance checks passed");
  process.exit(0);
}

main().catch((e) => {
  console.log(`FAIL: ${e && e.stack ? e.stack : e}`);
  if (e && e.body) console.log(JSON.stringify(e.body));
  process.exit(1);
});

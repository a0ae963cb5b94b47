// tether-client (web/) used from Node as a package: the ES module and the
// CommonJS entry, with the `ws` package as the WebSocket, against the real
// `tether serve` binary.
//
//   TETHER_BIN=target/release/tether node --test tests/node/

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import WebSocket from "ws";
import { freePort, startServer, stopServer, next } from "../support/tether-server.mjs";
import TetherClient, { backoffDelay, heartbeatAction, DEFAULTS } from "tether-client";

const require = createRequire(import.meta.url);

let port;
let server;
before(async () => {
  port = await freePort();
  server = await startServer(port);
});
after(async () => {
  if (server) await stopServer(server);
});

test("the ES module and the CommonJS entry are one client, with the static helpers", () => {
  const cjs = require("tether-client");
  assert.equal(cjs, TetherClient);
  assert.equal(typeof TetherClient, "function");
  assert.equal(backoffDelay, TetherClient.backoffDelay);
  assert.equal(heartbeatAction, TetherClient.heartbeatAction);
  assert.equal(DEFAULTS.queueLimit, 1000);
  const d = backoffDelay(3, { minDelay: 100, maxDelay: 1000, jitter: 0 });
  assert.equal(d, 400);
  const pkg = require("tether-client/package.json");
  assert.equal(pkg.name, "tether-client");
});

test("the server serves the package's tether.js at /tether.js", async () => {
  const res = await fetch(`http://127.0.0.1:${port}/tether.js`);
  assert.equal(res.status, 200);
  assert.match(res.headers.get("content-type"), /javascript/);
  assert.equal(await res.text(), readFileSync(require.resolve("tether-client/tether.js"), "utf8"));
});

test("without a WebSocket (Node before 22) the client says what to pass", { skip: !!globalThis.WebSocket }, async () => {
  // The first attempt fails inside the constructor; watch the second.
  const c = new TetherClient(`ws://127.0.0.1:${port}/x`, { maxAttempts: 1, minDelay: 10, maxDelay: 10 });
  const [err, giveup] = await Promise.all([next(c, "error"), next(c, "giveup")]);
  assert.match(err.message, /options\.WebSocket/);
  assert.equal(giveup.attempts, 1);
  assert.equal(c.state, "closed");
});

test("tether.v1 from Node: welcome, subscribe, publish with acks, delivery to another client", async () => {
  const url = `ws://127.0.0.1:${port}/node-room`;
  const a = new TetherClient(url, { json: true, WebSocket });
  const b = new TetherClient(url, { json: true, WebSocket });
  // Listened for at once: b may open before a does.
  const openB = next(b, "open");
  const [openA, welcomeA] = await Promise.all([next(a, "open"), next(a, "message", (m) => m.type === "welcome")]);
  assert.equal(openA.protocol, "tether.v1");
  assert.equal(welcomeA.room, "/node-room");
  await openB;
  await b.subscribe("news");
  const got = next(b, "message", (m) => m.type === "message" && m.topic === "news");
  const ack = await a.publish("news", { headline: "from node" });
  assert.equal(ack.type, "ack");
  assert.equal(ack.topic, "news");
  assert.equal(typeof ack.seq, "number");
  const msg = await got;
  assert.deepEqual(msg.content, { headline: "from node" });
  assert.equal(msg.seq, ack.seq);
  assert.equal(msg.sender, a.session);
  await assert.rejects(a.unsubscribe("never-subscribed"), (e) => e.code === "not_subscribed");
  a.close();
  b.close();
  await Promise.all([next(a, "state", (s) => s === "closed"), next(b, "state", (s) => s === "closed")]);
});

test("plain mode from Node: the welcome line and the room's broadcast", async () => {
  const c = new TetherClient(`ws://127.0.0.1:${port}/plain-room`, { WebSocket });
  const welcome = await next(c, "message");
  assert.match(String(welcome), /^Welcome to tether! You are \S+ in room \/plain-room\.$/);
  const echoed = next(c, "message", (m) => String(m).endsWith("] hello plain"));
  assert.equal(c.send("hello plain"), true);
  await echoed;
  c.close();
});

test("reconnects after the server restarts, re-subscribes, and flushes queued sends", async () => {
  const url = `ws://127.0.0.1:${port}/restart-room`;
  const client = new TetherClient(url, { json: true, WebSocket, minDelay: 100, maxDelay: 400 });
  await next(client, "open");
  await client.subscribe("after-restart");
  const closed = next(client, "close");
  await stopServer(server);
  const close = await closed;
  assert.equal(close.wasClean, false);
  // Sent while down: queued, then flushed on open (after the re-subscribe).
  const got = next(client, "message", (m) => m.type === "message" && m.topic === "after-restart", 15000);
  assert.equal(client.send(JSON.stringify({ type: "publish", topic: "after-restart", content: "queued" })), true);
  server = await startServer(port);
  await next(client, "open", () => true, 15000);
  const msg = await got;
  assert.equal(msg.content, "queued");
  client.close();
});

test("deploy/grafana-dashboard.json charts exactly the metrics that /metrics exposes", async () => {
  // A server with every optional part that adds figures turned on (the
  // backend hooks and the webhooks; nothing is called for /metrics).
  const full = await freePort();
  const backend = `http://127.0.0.1:${await freePort()}`;
  const child = await startServer(full, ["--hook-url", backend, "--webhook-url", backend, "--webhook-secret", "s"]);
  let text;
  try {
    text = await (await fetch(`http://127.0.0.1:${full}/metrics`)).text();
  } finally {
    await stopServer(child);
  }
  const exposed = new Set([...text.matchAll(/^# TYPE (tether_\w+) /gm)].map((m) => m[1]));
  const dashboard = readFileSync(new URL("../../deploy/grafana-dashboard.json", import.meta.url), "utf8");
  JSON.parse(dashboard);
  const charted = new Set([...dashboard.matchAll(/\b(tether_[a-z_]+)/g)].map((m) => m[1]));
  assert.ok(exposed.size >= 15, text);
  assert.deepEqual([...charted].filter((n) => !exposed.has(n)).sort(), [], "charted but not exposed");
  assert.deepEqual([...exposed].filter((n) => !charted.has(n)).sort(), [], "exposed but not charted");
});

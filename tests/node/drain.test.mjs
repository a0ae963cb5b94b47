// tether.js honours a draining server's reconnect hint (docs/protocol.md,
// "Drain"): after a 1012 close it waits reconnect_after_ms, not its
// backoff, reconnects and resumes its topic, so every message published
// meanwhile arrives once and in order. Real `tether serve`, the `ws` package.
//
//   TETHER_BIN=target/release/tether node --test tests/node/drain.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { freePort, startServer, stopServer, next } from "../support/tether-server.mjs";
import TetherClient, { reconnectHint } from "tether-client";

let port;
let server;
before(async () => {
  port = await freePort();
  server = await startServer(port, ["--admin-token", "s3cret", "--drain-window", "1s"]);
});
after(async () => {
  if (server) await stopServer(server);
});

test("reconnectHint reads only a 1012 with reconnect_after_ms, capped", () => {
  assert.equal(reconnectHint(1012, "service restart; reconnect_after_ms=250"), 250);
  assert.equal(reconnectHint(1012, "reconnect_after_ms=0"), 0);
  assert.equal(reconnectHint(1012, "reconnect_after_ms=99999999"), 300000);
  assert.equal(reconnectHint(1001, "reconnect_after_ms=250"), null);
  assert.equal(reconnectHint(1012, "service restart"), null);
  assert.equal(reconnectHint(1012, "reconnect_after_ms=12345678901234"), null);
  assert.equal(reconnectHint(1012, undefined), null);
});

async function publishRange(url, from, to) {
  const p = new TetherClient(url, { json: true, WebSocket });
  await next(p, "open");
  for (let i = from; i <= to; i++) {
    await p.publish("feed", { n: i });
    await new Promise((r) => setTimeout(r, 25));
  }
  p.close();
}

test("a shed client waits the hinted delay, reconnects and resumes without loss", async () => {
  const url = `ws://127.0.0.1:${port}/lobby`;
  // A large backoff: a reconnect on the backoff would be told apart.
  const client = new TetherClient(url, { json: true, WebSocket, minDelay: 5000, maxDelay: 5000, jitter: 0 });
  const seen = [];
  client.on("message", (m) => {
    if (m.type === "message" && m.topic === "feed") seen.push(m.content.n);
  });
  await next(client, "open");
  await client.subscribe("feed", { resume: true });
  await publishRange(url, 1, 10);
  while (seen.length < 10) await next(client, "message");
  // The shed picks the connections open at the call: only the client.
  const res = await fetch(`http://127.0.0.1:${port}/admin/shed?fraction=1`, { method: "POST", headers: { authorization: "Bearer s3cret" } });
  assert.equal(res.status, 202);
  assert.equal((await res.json()).shedding, 1);
  const closed = next(client, "close");
  const reconnecting = next(client, "reconnecting");
  const publishing = publishRange(url, 11, 60);
  const close = await closed;
  assert.equal(close.code, 1012, close.reason);
  const hint = reconnectHint(close.code, close.reason);
  assert.ok(hint !== null && hint <= 1000, close.reason);
  assert.equal((await reconnecting).delay, hint, "the delay is the server's hint, not the 5 s backoff");
  await next(client, "open");
  await publishing;
  while (seen.length < 60) await next(client, "message");
  assert.deepEqual(seen, Array.from({ length: 60 }, (_, i) => i + 1), "every message once, in order");
  client.close();
});

// tether.js with JWT connection tokens (docs/auth.md): a token function
// is called for the connection's first `auth` message and again to
// refresh it when the server warns of its expiry, so the connection stays
// open past the token's exp; a fixed token that expires gets the
// connection closed with 1008. Real `tether serve`, the `ws` package,
// tokens minted with node:crypto.
//
//   TETHER_BIN=target/release/tether node --test tests/node/auth.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import WebSocket from "ws";
import { freePort, startServer, stopServer, next } from "../support/tether-server.mjs";
import TetherClient, { tokenExpiry } from "tether-client";

const SECRET = "node-auth-test-secret";
let port;
let server;
before(async () => {
  port = await freePort();
  server = await startServer(port, ["--jwt-secret", SECRET, "--token-expiry-warning", "2s", "--token-expiry-grace", "1s", "--heartbeat-interval", "500ms"]);
});
after(async () => {
  if (server) await stopServer(server);
});

function mint(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

const now = () => Math.floor(Date.now() / 1000);

test("tokenExpiry reads a JWT's exp", () => {
  assert.equal(tokenExpiry(mint({ sub: "a", exp: 1234 })), 1234);
  assert.equal(tokenExpiry("not-a-jwt"), null);
  assert.equal(tokenExpiry(mint({ sub: "a" })), null);
});

test("a token function authenticates, refreshes on the warning, and the connection outlives the first token", async () => {
  let calls = 0;
  const firstExp = now() + 3;
  const client = new TetherClient(`ws://127.0.0.1:${port}/`, {
    json: true,
    WebSocket,
    reconnect: false,
    heartbeatInterval: 0,
    refreshAhead: 0,
    token: async () => {
      calls += 1;
      return mint({ sub: "ada", exp: calls === 1 ? firstExp : now() + 600, subscribe: ["chat:*"], publish: ["chat:*"] });
    },
  });
  const closed = [];
  client.on("close", (ev) => closed.push(ev));
  const warned = next(client, "message", (m) => m.type === "token_expiring", 15000);
  const first = await next(client, "authenticated");
  assert.equal(first.user, "ada");
  assert.equal(first.expires_at, firstExp);
  await client.subscribe("chat:lobby");
  await assert.rejects(client.subscribe("admin:x"), (e) => e.code === "forbidden");
  const warning = await warned;
  const renewed = await next(client, "authenticated", () => true, 15000);
  assert.equal(calls, 2);
  assert.ok(renewed.expires_at > firstExp);
  // Past the first token's close_at (server time), still open and allowed.
  while (now() <= warning.close_at + 1) await new Promise((r) => setTimeout(r, 250));
  const ack = await client.publish("chat:lobby", "still here");
  assert.equal(ack.type, "ack");
  assert.deepEqual(closed, []);
  client.close();
});

test("a fixed token that expires is warned and then closed with 1008", async () => {
  const client = new TetherClient(`ws://127.0.0.1:${port}/`, {
    json: true,
    WebSocket,
    reconnect: false,
    heartbeatInterval: 0,
    token: mint({ sub: "bob", exp: now() + 2, subscribe: ["chat:*"] }),
  });
  const warned = next(client, "message", (m) => m.type === "token_expiring", 15000);
  const closed = next(client, "close", () => true, 15000);
  await next(client, "authenticated");
  await warned;
  const ev = await closed;
  assert.equal(ev.code, 1008);
  assert.equal(ev.reason, "authentication expired");
});

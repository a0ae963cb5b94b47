// JWT grants on Yjs documents (/yjs/NAME): with --jwt-secret, reading a
// document needs the subscribe grant `yjs:NAME` and editing it the publish
// grant. Refusals come at the handshake (401 without a valid token, 403
// without the grant); a read-only client syncs and shows its presence, and
// its first edit closes it with 1008 without reaching anyone. Real `tether
// serve`, the real `yjs` + `y-websocket`, tokens minted with node:crypto.
//
//   TETHER_BIN=target/release/tether node --test tests/node/yjs-auth.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { createHmac } from "node:crypto";
import { createServer } from "node:http";
import WebSocket from "ws";
import { freePort, startServer, stopServer } from "../support/tether-server.mjs";
import { peer as yjsPeer, until } from "./yjs-peer.mjs";

const SECRET = "node-yjs-auth-secret";
let port, server;

before(async () => {
  port = await freePort();
  server = await startServer(port, ["--jwt-secret", SECRET, "--yjs-dir", "none"]);
});
after(() => stopServer(server));

function mint(claims) {
  const b64 = (v) => Buffer.from(JSON.stringify(v)).toString("base64url");
  const body = `${b64({ alg: "HS256", typ: "JWT" })}.${b64(claims)}`;
  return `${body}.${createHmac("sha256", SECRET).update(body).digest("base64url")}`;
}

const exp = () => Math.floor(Date.now() / 1000) + 600;

/** The HTTP status of a WebSocket handshake to /yjs/NAME (101 if it opened). */
function handshake(name, token) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/yjs/${name}${token ? `?token=${token}` : ""}`);
    ws.on("open", () => {
      ws.terminate();
      resolve(101);
    });
    ws.on("unexpected-response", (_req, res) => {
      resolve(res.statusCode);
      ws.terminate();
    });
    ws.on("error", (e) => (e.message.includes("Unexpected server response") ? null : reject(e)));
  });
}

/** Document `name` on the server under test, with `token` as ?token=. */
function peer(name, token) {
  return yjsPeer(`ws://127.0.0.1:${port}/yjs`, name, { params: { token } });
}

test("the handshake refuses a missing or bad token (401) and a token without the document's subscribe grant (403)", async () => {
  assert.equal(await handshake("notes"), 401);
  assert.equal(await handshake("notes", mint({ sub: "eve", exp: exp(), subscribe: ["yjs:*"] }).slice(0, -3) + "xyz"), 401);
  assert.equal(await handshake("notes", mint({ sub: "eve", exp: exp() - 1200, subscribe: ["yjs:*"] })), 401);
  // Grants for other documents, or for the URL path as a room, do not open it.
  assert.equal(await handshake("notes", mint({ sub: "eve", exp: exp(), subscribe: ["yjs:other", "chat:*"], publish: ["yjs:notes"] })), 403);
  assert.equal(await handshake("notes", mint({ sub: "eve", exp: exp(), subscribe: ["/yjs/notes"] })), 403);
  assert.equal(await handshake("notes", mint({ sub: "ada", exp: exp(), subscribe: ["yjs:notes"] })), 101);
  assert.equal(await handshake("notes", mint({ sub: "ada", exp: exp(), subscribe: ["yjs:*"] })), 101);
});

test("subscribe without publish reads and shows presence; its edit is refused with 1008 and reaches no one", async () => {
  const writer = peer("shared", mint({ sub: "ada", exp: exp(), subscribe: ["yjs:shared"], publish: ["yjs:shared"] }));
  const reader = peer("shared", mint({ sub: "bob", exp: exp(), subscribe: ["yjs:shared"] }));
  try {
    await until(() => writer.provider.synced && reader.provider.synced, "both synced");
    writer.text.insert(0, "written by ada");
    await until(() => reader.text.toString() === "written by ada", "the reader sees the text");
    // Presence is allowed to a reader.
    reader.provider.awareness.setLocalStateField("user", { name: "bob" });
    await until(() => writer.provider.awareness.getStates().get(reader.doc.clientID)?.user?.name === "bob", "the writer sees the reader");
    const closed = new Promise((resolve) => reader.provider.on("connection-close", (e) => e && resolve(e)));
    reader.provider.shouldConnect = true;
    reader.text.insert(0, "bob was here: ");
    const ev = await closed;
    assert.equal(ev.code, 1008);
    assert.match(ev.reason, /read-only/);
    // The writer never got it, and a fresh reader gets only ada's text.
    writer.text.insert(writer.text.length, ".");
    const fresh = peer("shared", mint({ sub: "cy", exp: exp(), subscribe: ["yjs:*"] }));
    try {
      await until(() => fresh.provider.synced && fresh.text.toString() === "written by ada.", "a fresh reader has only the writer's text");
      assert.equal(writer.text.toString(), "written by ada.");
    } finally {
      fresh.close();
    }
  } finally {
    writer.close();
    reader.close();
  }
});

test("the connect hook's grants count as a JWT's: yjs:NAME to read, 403 without it, 401 when the hook says so", async () => {
  // A backend answering the connect hook (POST /hooks/connect) by token.
  const grants = {
    reader: { subscribe: ["yjs:notes"] },
    writer: { subscribe: ["yjs:*"], publish: ["yjs:*"] },
    other: { subscribe: ["yjs:other", "/yjs/notes"], publish: ["yjs:notes"] },
  };
  const asked = [];
  const backend = createServer((req, res) => {
    let body = "";
    req.on("data", (d) => (body += d));
    req.on("end", () => {
      const call = JSON.parse(body);
      asked.push(call.room);
      const g = grants[call.token];
      res.setHeader("content-type", "application/json");
      res.end(JSON.stringify(g ? { allow: true, user: call.token, publish: [], presence: [], ...g } : { allow: false, status: 401, reason: "log in first" }));
    });
  });
  await new Promise((r) => backend.listen(0, "127.0.0.1", r));
  const hooked = await freePort();
  const s = await startServer(hooked, ["--hook-url", `http://127.0.0.1:${backend.address().port}/hooks`, "--hook-secret", "s", "--hook-connect", "closed", "--yjs-dir", "none"]);
  try {
    const url = `ws://127.0.0.1:${hooked}/yjs`;
    const status = (query) => new Promise((resolve) => {
      const ws = new WebSocket(`${url}/notes${query}`);
      ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
      ws.on("open", () => { ws.close(); resolve(101); });
      ws.on("error", () => {});
    });
    assert.equal(await status(""), 401);
    assert.equal(await status("?token=other"), 403);
    assert.equal(await status("?token=reader"), 101);
    assert.ok(asked.every((room) => room === "/yjs/notes"), `the hook was asked about the document: ${asked}`);
    // The reader reads, and its edit is refused; the writer's edit reaches it.
    const doc = (token) => yjsPeer(url, "notes", { params: { token } });
    const writer = doc("writer");
    const reader = doc("reader");
    try {
      writer.text.insert(0, "by the writer");
      await until(() => reader.text.toString() === "by the writer", "the reader has the writer's text");
      const closed = new Promise((resolve) => reader.provider.on("connection-close", (e) => e && resolve(e)));
      reader.text.insert(0, "x");
      assert.equal((await closed).code, 1008);
    } finally {
      writer.close();
      reader.close();
    }
  } finally {
    await stopServer(s);
    backend.close();
  }
});

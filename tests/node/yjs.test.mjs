// The real `yjs` + `y-websocket` client from npm, unchanged, against
// `tether serve`'s /yjs/<document> endpoint. `disableBc: true` everywhere:
// documents in one process must not sync through a BroadcastChannel, only
// through the server. The tests run concurrently (each on its own server):
// the idle one takes a minute by design.
//
//   TETHER_BIN=target/release/tether node --test tests/node/yjs.test.mjs

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import WebSocket from "ws";
import { freePort, startServer, stopServer } from "../support/tether-server.mjs";
import { peer, until, varuint } from "./yjs-peer.mjs";

/** A server with its own document directory; `stop()` kills it. */
async function server(args = [], dir = mkdtempSync(join(tmpdir(), "tether-yjs-"))) {
  const port = await freePort();
  const child = await startServer(port, ["--yjs-dir", dir, ...args]);
  return { port, dir, child, url: `ws://127.0.0.1:${port}/yjs`, stop: () => stopServer(child) };
}

const synced = (p) => until(() => p.provider.synced, "provider synced");

async function metric(port, name) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line === undefined ? undefined : Number(line.split(" ")[1]);
}

/** Resolves once `/metrics` shows `name` at `min` or more. */
async function untilMetric(port, name, min, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await metric(port, name);
    if (value >= min) return value;
    if (Date.now() > deadline) throw new Error(`${name} stayed at ${value}, below ${min}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

describe("y-websocket against tether serve", { concurrency: true }, () => {
  test("two documents converge after concurrent edits", async () => {
    const s = await server();
    const a = peer(s.url, "converge");
    const b = peer(s.url, "converge");
    try {
      await Promise.all([synced(a), synced(b)]);
      // Concurrent: both edit before either sees the other's change.
      a.text.insert(0, "alpha ");
      b.text.insert(0, "beta ");
      a.doc.getMap("m").set("a", 1);
      b.doc.getMap("m").set("b", 2);
      await until(() => a.text.toString() === b.text.toString() && a.doc.getMap("m").size === 2 && b.doc.getMap("m").size === 2, "converged");
      const text = a.text.toString();
      assert.ok(text.includes("alpha ") && text.includes("beta "), text);
      assert.deepEqual(b.doc.getMap("m").toJSON(), { a: 1, b: 2 });
      // Many edits each way, interleaved.
      let added = 0;
      for (let i = 0; i < 50; i++) {
        a.text.insert(a.text.length, `a${i}`);
        b.text.insert(0, `b${i}`);
        added += 2 * String(i).length + 2;
      }
      await until(() => a.text.toString() === b.text.toString() && a.text.length === text.length + added, "converged again");
      assert.equal(a.text.toString(), b.text.toString());
      assert.ok((await metric(s.port, "tether_yjs_updates_total")) >= 100);
    } finally {
      a.close();
      b.close();
      await s.stop();
    }
  });

  test("awareness reaches the other peer, and is cleared when its connection goes", async () => {
    const s = await server();
    const a = peer(s.url, "presence");
    const b = peer(s.url, "presence");
    try {
      await Promise.all([synced(a), synced(b)]);
      a.provider.awareness.setLocalStateField("user", { name: "ada", cursor: 3 });
      const aId = a.doc.clientID;
      await until(() => b.provider.awareness.getStates().get(aId)?.user?.name === "ada", "B sees A's state");
      // A raw client sees both states (query-awareness), and its own comes back to it.
      const states = await rawAwareness(s.port, "presence");
      assert.equal(states.get(aId)?.user?.name, "ada");
      // A's connection goes (not a clean leave: the socket is dropped), and
      // the server tells B: A's state is removed.
      a.provider.ws.terminate();
      a.provider.shouldConnect = false;
      await until(() => !b.provider.awareness.getStates().has(aId), "A's state cleared at B");
    } finally {
      a.close();
      b.close();
      await s.stop();
    }
  });

  test("a late joiner gets the whole state", async () => {
    const s = await server();
    const a = peer(s.url, "late");
    try {
      await synced(a);
      a.text.insert(0, "written before anyone else came");
      a.doc.getArray("list").push([1, 2, 3]);
      // The server has both updates before the late joiner comes.
      await untilMetric(s.port, "tether_yjs_updates_total", 2);
      const late = peer(s.url, "late");
      try {
        await synced(late);
        await until(() => late.text.toString() === "written before anyone else came", "late joiner has the text");
        assert.deepEqual(late.doc.getArray("list").toJSON(), [1, 2, 3]);
      } finally {
        late.close();
      }
    } finally {
      a.close();
      await s.stop();
    }
  });

  test("the state survives a server restart (killed, not stopped)", async () => {
    const s = await server();
    const a = peer(s.url, "durable");
    await synced(a);
    a.text.insert(0, "kept on disk");
    // Updates are appended to the document's file as they arrive.
    await untilMetric(s.port, "tether_yjs_updates_total", 1);
    a.close();
    await s.stop(); // SIGKILL
    const again = await server([], s.dir);
    const b = peer(again.url, "durable");
    try {
      await synced(b);
      await until(() => b.text.toString() === "kept on disk", "state after restart");
    } finally {
      b.close();
      await again.stop();
      rmSync(s.dir, { recursive: true, force: true });
    }
  });

  test("a lone idle client does not reconnect within a minute", async () => {
    const s = await server();
    // No local awareness state: the client itself sends nothing while
    // idle, so only the server's messages keep y-websocket's 30 s timer quiet.
    const a = peer(s.url, "idle");
    a.provider.awareness.setLocalState(null);
    let connects = 0;
    let disconnects = 0;
    a.provider.on("status", ({ status }) => {
      if (status === "connected") connects++;
      if (status === "disconnected") disconnects++;
    });
    try {
      await synced(a);
      await new Promise((r) => setTimeout(r, 65_000));
      assert.equal(disconnects, 0);
      assert.equal(a.provider.wsconnected, true);
      assert.equal(await metric(s.port, "tether_yjs_connections_total"), 1);
      assert.ok(connects <= 1);
    } finally {
      a.close();
      await s.stop();
    }
  });
});

/** Connect a raw WebSocket to `/yjs/name`, announce an awareness state, send
 *  query-awareness and resolve with every state the server reports (by client id). */
function rawAwareness(port, name) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/yjs/${name}`);
    ws.binaryType = "nodebuffer";
    const states = new Map();
    let echoed = false;
    ws.on("open", () => {
      ws.send(awarenessMessage(4242, 1, JSON.stringify({ user: { name: "raw" } })));
    });
    ws.on("message", (data) => {
      const r = reader(data);
      if (r.uint() !== 1) return; // not awareness
      const inner = reader(r.bytes());
      const n = inner.uint();
      for (let i = 0; i < n; i++) {
        const client = inner.uint();
        inner.uint();
        const state = JSON.parse(Buffer.from(inner.bytes()).toString());
        if (client === 4242) {
          // Our own state, sent back to us: now ask for everyone's.
          if (!echoed) ws.send(Buffer.from([3]));
          echoed = true;
        } else states.set(client, state);
      }
      if (echoed && states.size > 0) {
        ws.close();
        resolve(states);
      }
    });
    ws.on("error", reject);
  });
}

function awarenessMessage(client, clock, json) {
  const state = [...Buffer.from(json)];
  const inner = [...varuint(1), ...varuint(client), ...varuint(clock), ...varuint(state.length), ...state];
  return Buffer.from([1, ...varuint(inner.length), ...inner]);
}

function reader(buf) {
  let pos = 0;
  return {
    uint() {
      let n = 0;
      let mult = 1;
      for (;;) {
        const b = buf[pos++];
        n += (b & 0x7f) * mult;
        mult *= 128;
        if (b < 0x80) return n;
      }
    },
    bytes() {
      const len = this.uint();
      const out = buf.subarray(pos, pos + len);
      pos += len;
      return out;
    },
  };
}

// Every limit of the /yjs/ endpoint, hit from a raw WebSocket (`ws`) with
// updates made by the real `yjs`: each closes the connection with its code
// and a reason naming the setting.
//
//   TETHER_BIN=target/release/tether node --test tests/node/yjs-limits.test.mjs

import { describe, test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import * as Y from "yjs";
import { freePort, startServer, stopServer } from "../support/tether-server.mjs";
import { varuint } from "./yjs-peer.mjs";

async function server(args) {
  const port = await freePort();
  const child = await startServer(port, ["--yjs-dir", "none", ...args]);
  return { port, stop: () => stopServer(child) };
}

const bytes = (b) => [...varuint(b.length), ...b];

/** A sync update message (0, 2, update). */
const updateMessage = (update) => Buffer.from([0, 2, ...bytes([...update])]);

/** An awareness message with one client's state. */
function awarenessMessage(client, clock, json) {
  const inner = [...varuint(1), ...varuint(client), ...varuint(clock), ...bytes([...Buffer.from(json)])];
  return Buffer.from([1, ...bytes(inner)]);
}

/** Open /yjs/<name>, run `send(ws)` once open, resolve with the close code and reason. */
function closeOf(port, name, send) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/yjs/${name}`);
    ws.on("open", () => send(ws));
    ws.on("close", (code, reason) => resolve({ code, reason: reason.toString() }));
    ws.on("error", reject);
  });
}

/** Resolves once a connection to /yjs/<name> is open and has had the server's sync step 1. */
function opened(port, name) {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/yjs/${name}`);
    ws.once("message", () => resolve(ws));
    ws.on("error", reject);
  });
}

describe("limits of /yjs/", { concurrency: true }, () => {
  test("document size: an update past --yjs-max-document-size closes with 1008", async () => {
    const s = await server(["--yjs-max-document-size", "10KiB"]);
    try {
      const doc = new Y.Doc();
      doc.getText("t").insert(0, "small");
      // Under the limit: accepted, the connection stays.
      const ok = await opened(s.port, "big");
      ok.send(updateMessage(Y.encodeStateAsUpdate(doc)));
      doc.getText("t").insert(0, "x".repeat(20_000));
      const closed = await closeOf(s.port, "big", (ws) => ws.send(updateMessage(Y.encodeStateAsUpdate(doc))));
      assert.equal(closed.code, 1008);
      assert.match(closed.reason, /max_document_bytes/);
      assert.equal(ok.readyState, WebSocket.OPEN);
      ok.close();
    } finally {
      await s.stop();
    }
  });

  test("update rate: past --yjs-message-rate and its burst closes with 1008", async () => {
    const s = await server(["--yjs-message-rate", "5", "--yjs-message-burst", "5"]);
    try {
      const closed = await closeOf(s.port, "fast", (ws) => {
        for (let i = 1; i <= 50; i++) ws.send(awarenessMessage(7, i, `{"i":${i}}`));
      });
      assert.equal(closed.code, 1008);
      assert.match(closed.reason, /rate limit/);
    } finally {
      await s.stop();
    }
  });

  test("number of documents: one more than --yjs-max-documents closes with 1013", async () => {
    const s = await server(["--yjs-max-documents", "2"]);
    try {
      const a = await opened(s.port, "one");
      const b = await opened(s.port, "two");
      const closed = await closeOf(s.port, "three", () => {});
      assert.equal(closed.code, 1013);
      assert.match(closed.reason, /max_documents/);
      // Another connection to an open document is fine.
      const again = await opened(s.port, "one");
      // Once a document closes, its slot is free again.
      b.close();
      let third;
      for (let i = 0; i < 100 && !third; i++) {
        third = await new Promise((resolve) => {
          const ws = new WebSocket(`ws://127.0.0.1:${s.port}/yjs/three`);
          ws.once("message", () => resolve(ws));
          ws.once("close", () => setTimeout(() => resolve(undefined), 20));
        });
      }
      assert.ok(third, "document three could not open after two closed");
      for (const ws of [a, again, third]) ws.close();
    } finally {
      await s.stop();
    }
  });

  test("awareness size: a state past --yjs-max-awareness-size closes with 1008", async () => {
    const s = await server(["--yjs-max-awareness-size", "100"]);
    try {
      const closed = await closeOf(s.port, "aw", (ws) => ws.send(awarenessMessage(9, 1, JSON.stringify({ name: "x".repeat(200) }))));
      assert.equal(closed.code, 1008);
      assert.match(closed.reason, /max_awareness_bytes/);
      // Too many client ids from one connection.
      const many = await closeOf(s.port, "aw", (ws) => {
        for (let c = 1; c <= 9; c++) ws.send(awarenessMessage(c, 1, "{}"));
      });
      assert.equal(many.code, 1008);
      assert.match(many.reason, /max_awareness_clients/);
    } finally {
      await s.stop();
    }
  });

  test("malformed messages close with 1007, text frames with 1003, bad names get 400", async () => {
    const s = await server([]);
    try {
      const truncated = await closeOf(s.port, "bad", (ws) => ws.send(Buffer.from([0, 2, 50, 1, 2])));
      assert.equal(truncated.code, 1007);
      const garbage = await closeOf(s.port, "bad", (ws) => ws.send(Buffer.from([0, 2, 4, 0xff, 0xff, 0xff, 0xff])));
      assert.equal(garbage.code, 1007);
      const notJson = await closeOf(s.port, "bad", (ws) => ws.send(awarenessMessage(1, 1, "{nope")));
      assert.equal(notJson.code, 1007);
      const text = await closeOf(s.port, "bad", (ws) => ws.send("hello"));
      assert.equal(text.code, 1003);
      const status = await new Promise((resolve) => {
        const ws = new WebSocket(`ws://127.0.0.1:${s.port}/yjs/.hidden`);
        ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
        ws.on("error", () => {});
      });
      assert.equal(status, 400);
      // The server still serves a well-behaved client.
      const ok = await opened(s.port, "bad");
      ok.close();
    } finally {
      await s.stop();
    }
  });
});

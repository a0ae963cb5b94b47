// Delta subscriptions from tether-client in Node against the real binary:
// every message's content, rebuilt by tether.js from JSON Merge Patches,
// equals what was published, before and after a reconnect that resumes;
// tether.js's mergePatch agrees with an independent implementation
// (the json-merge-patch package).
//
//   TETHER_BIN=target/release/tether node --test tests/node/delta.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import jsonMergePatch from "json-merge-patch";
import TetherClient, { mergePatch } from "tether-client";
import { freePort, startServer, stopServer, next } from "../support/tether-server.mjs";

let server;
let port;
before(async () => {
  port = await freePort();
  server = await startServer(port, ["--message-rate", "0", "--subscribe-rate", "0"]);
});
after(() => stopServer(server));

function quote(symbol, i) {
  return { symbol, name: `${symbol} Holdings Incorporated`, price: 100 + (i % 7) / 4, volume: 1000 + i, book: { bid: 99 + (i % 5), depth: [i % 3, 2] }, note: i % 4 === 0 ? null : "open" };
}

test("mergePatch agrees with the json-merge-patch package (RFC 7396)", () => {
  const docs = [{ a: 1, b: { c: [1, 2], d: "x" } }, { a: 2, b: { d: "y", e: null } }, [1, 2], "s", null, { a: { b: { c: 1 } } }, {}];
  for (const target of docs) {
    for (const patch of docs) {
      const ours = mergePatch(structuredClone(target), structuredClone(patch));
      const theirs = jsonMergePatch.apply(structuredClone(target), structuredClone(patch));
      assert.deepEqual(ours, theirs, `${JSON.stringify(target)} + ${JSON.stringify(patch)}`);
    }
  }
});

test("a delta subscription rebuilds every message, also after a resume", async () => {
  const url = `ws://127.0.0.1:${port}/delta`;
  const raw = [];
  // Count what arrives on the wire: patches, and bytes.
  class CountingWebSocket extends WebSocket {
    constructor(...args) {
      super(...args);
      this.addEventListener("message", (ev) => raw.push(String(ev.data)));
    }
  }
  const sub = new TetherClient(url, { json: true, WebSocket: CountingWebSocket, minDelay: 50, maxDelay: 200 });
  const pub = new TetherClient(`ws://127.0.0.1:${port}/pub`, { json: true, WebSocket });
  await Promise.all([next(sub, "open"), next(pub, "open")]);
  const errors = [];
  sub.on("error", (e) => errors.push(e));
  const got = new Map(); // seq -> content
  sub.on("message", (m) => { if (m.type === "message" && m.topic === "prices") got.set(m.seq, m.content); });
  await sub.subscribe("prices", { delta: true, resume: true });
  const sent = new Map();
  const symbols = ["TTR", "ACME", "INIT", "GLOBX"];
  async function publish(from, to) {
    for (let i = from; i < to; i++) {
      const content = i === 17 ? "trading halted" : quote(symbols[i % 4], i);
      const ack = await pub.publish("prices", content, { key: symbols[i % 4] });
      sent.set(ack.seq, content);
    }
  }
  await publish(0, 40);
  const until = (n) => new Promise((resolve, reject) => {
    const deadline = Date.now() + 10000;
    (function poll() {
      if (got.size >= n) return resolve();
      if (Date.now() > deadline) return reject(new Error(`got ${got.size} of ${n}`));
      setTimeout(poll, 20);
    })();
  });
  await until(40);
  const patches = raw.filter((t) => t.includes('"patch":')).length;
  assert.ok(patches >= 25, `most arrived as patches: ${patches}`);
  // Drop the connection (not a close: the client reconnects), publish while away.
  const closed = next(sub, "close");
  sub.ws.terminate();
  await closed;
  await publish(40, 52);
  await next(sub, "open", () => true, 15000);
  await until(52);
  await publish(52, 70);
  await until(70);
  assert.deepEqual([...got.keys()].sort((a, b) => a - b), [...sent.keys()].sort((a, b) => a - b), "every message once (the resume replayed what was missed)");
  for (const [seq, content] of sent) assert.deepEqual(got.get(seq), content, `seq ${seq}`);
  assert.ok(raw.filter((t) => t.includes('"patch":')).length > patches, "patches again after the resume");
  assert.deepEqual(errors, []);
  const bytesFull = [...sent.values()].reduce((n, c) => n + JSON.stringify(c).length, 0);
  const bytesWire = raw.filter((t) => t.includes('"topic":"prices"')).reduce((n, t) => n + t.length, 0);
  console.log(`# ${sent.size} messages: content ${bytesFull} bytes, on the wire (envelopes, patches) ${bytesWire} bytes`);
  sub.close();
  pub.close();
});

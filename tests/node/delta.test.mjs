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
  const times = new Map(); // seq -> how many times it arrived
  sub.on("message", (m) => {
    if (m.type !== "message" || m.topic !== "prices") return;
    got.set(m.seq, m.content);
    times.set(m.seq, (times.get(m.seq) || 0) + 1);
  });
  await sub.subscribe("prices", { delta: true, resume: true });
  const sent = new Map(); // seq -> content
  const keyOf = new Map(); // seq -> key
  const symbols = ["TTR", "ACME", "INIT", "GLOBX"];
  async function publish(from, to) {
    for (let i = from; i < to; i++) {
      const content = i === 17 ? "trading halted" : quote(symbols[i % 4], i);
      const ack = await pub.publish("prices", content, { key: symbols[i % 4] });
      sent.set(ack.seq, content);
      keyOf.set(ack.seq, symbols[i % 4]);
    }
  }
  const conflated = async () => {
    const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
    const line = text.split("\n").find((l) => l.startsWith("tether_conflated_messages_total "));
    return Number(line.split(" ")[1]);
  };
  // Keyed messages are conflatable (docs/protocol.md): a message still
  // unsent when a newer one of its key is queued is replaced, as when the
  // server's loop for this client waits for a CPU on a loaded machine. So
  // "everything arrived" is: the newest message of every key arrived, and
  // every other one either arrived or was replaced, as the server counts.
  const settled = () => new Promise((resolve, reject) => {
    const deadline = Date.now() + 10000;
    const newest = new Map();
    for (const [seq, key] of keyOf) newest.set(key, Math.max(newest.get(key) || 0, seq));
    (async function poll() {
      if ([...newest.values()].every((seq) => got.has(seq))) {
        const replaced = await conflated();
        if (got.size + replaced >= sent.size) return resolve(replaced);
      }
      if (Date.now() > deadline) {
        const missing = [...sent.keys()].filter((seq) => !got.has(seq));
        return reject(new Error(`got ${got.size} of ${sent.size}, ${await conflated()} conflated; missing seq ${missing}; errors: ${errors.map((e) => e.message)}`));
      }
      setTimeout(poll, 20);
    })();
  });
  // What did not arrive was superseded: a later message of its key arrived.
  const checkSkipped = () => {
    for (const seq of sent.keys()) {
      if (got.has(seq)) continue;
      assert.ok([...got.keys()].some((later) => later > seq && keyOf.get(later) === keyOf.get(seq)), `seq ${seq} neither arrived nor was superseded`);
    }
  };
  await publish(0, 40);
  let replaced = await settled();
  assert.equal(got.size + replaced, 40, "each of the 40 arrived or was conflated, none lost otherwise");
  checkSkipped();
  // Patches after the first message of each key, except the string at 17
  // and the quote after it (a patch no smaller than the content is sent in
  // full), and the message after a conflated one (its base was never sent).
  const patches = raw.filter((t) => t.includes('"patch":')).length;
  assert.ok(patches >= got.size - 4 - 2 - replaced, `most arrived as patches: ${patches} of ${got.size}`);
  assert.deepEqual(errors, [], "every patch applied to what the client held");
  // Drop the connection (not a close: the client reconnects), publish while away.
  const closed = next(sub, "close");
  sub.ws.terminate();
  await closed;
  await publish(40, 52);
  await next(sub, "open", () => true, 15000);
  await settled();
  // The resume replays from history: everything published while away.
  for (const seq of [...sent.keys()].slice(40, 52)) assert.ok(got.has(seq) || [...got.keys()].some((later) => later > seq && keyOf.get(later) === keyOf.get(seq)), `seq ${seq} replayed`);
  await publish(52, 70);
  replaced = await settled();
  assert.equal(got.size + replaced, 70, "each of the 70 arrived or was conflated");
  checkSkipped();
  assert.deepEqual([...times].filter(([, n]) => n !== 1), [], "none arrived twice (the resume replayed only what was missed)");
  for (const [seq, content] of got) assert.deepEqual(content, sent.get(seq), `seq ${seq}`);
  assert.ok(raw.filter((t) => t.includes('"patch":')).length > patches, "patches again after the resume");
  assert.deepEqual(errors, []);
  const bytesFull = [...sent.values()].reduce((n, c) => n + JSON.stringify(c).length, 0);
  const bytesWire = raw.filter((t) => t.includes('"topic":"prices"')).reduce((n, t) => n + t.length, 0);
  console.log(`# ${sent.size} messages (${got.size} arrived, ${replaced} conflated): content ${bytesFull} bytes, on the wire (envelopes, patches) ${bytesWire} bytes`);
  sub.close();
  pub.close();
});

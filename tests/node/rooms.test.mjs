// Multiplayer rooms ($room: topics, tether serve --tick-rate): every client
// gets one frame per tick whatever the number of players, counted, not
// timed. With 2 and then 24 players each publishing its position at 60 Hz,
// every client (players and a watcher) receives exactly one frame per tick
// (each frame's seq is its tick; no seq twice, every client the same
// seqs), and the server's own count of messages sent over the run is
// clients × ticks: N frames per tick, not N².
//
//   TETHER_BIN=target/release/tether node --test tests/node/rooms.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { freePort, startServer, stopServer } from "../support/tether-server.mjs";

let port, server;

before(async () => {
  port = await freePort();
  server = await startServer(port, ["--tick-rate", "20", "--message-rate", "0", "--subscribe-rate", "0", "--heartbeat-interval", "120s", "--stats-interval", "0"]);
});
after(() => stopServer(server));

async function messagesOut() {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  return Number(/^tether_messages_out_total (\d+)/m.exec(text)[1]);
}

/** A tether.v1 client subscribed to `room`, counting the room's frames. */
async function client(room) {
  const ws = new WebSocket(`ws://127.0.0.1:${port}/p`, "tether.v1");
  const c = { ws, frames: 0, seqs: new Map(), last: null, lastAt: 0 };
  let acked;
  const subscribed = new Promise((resolve) => (acked = resolve));
  ws.on("message", (data) => {
    const m = JSON.parse(data.toString());
    if (m.type === "ack" && m.id === "sub") acked();
    if (m.type === "message" && m.topic === room) {
      c.frames++;
      c.seqs.set(m.seq, (c.seqs.get(m.seq) || 0) + 1);
      c.last = m.content;
      c.lastAt = Date.now();
    }
  });
  await new Promise((resolve, reject) => {
    ws.on("open", resolve);
    ws.on("error", reject);
  });
  ws.send(JSON.stringify({ type: "subscribe", topic: room, id: "sub" }));
  await subscribed;
  return c;
}

async function run(players) {
  const room = `$room:count-${players}`;
  const ps = [];
  for (let i = 0; i < players; i++) ps.push(await client(room));
  const watcher = await client(room);
  const all = [...ps, watcher];
  // Joining makes the room dirty: let that tick's frame go out first.
  await new Promise((r) => setTimeout(r, 300));
  for (const c of all) {
    c.frames = 0;
    c.seqs.clear();
  }
  const before = await messagesOut();
  let sent = 0;
  const started = Date.now();
  await new Promise((resolve) => {
    let step = 0;
    const timer = setInterval(() => {
      step++;
      ps.forEach((p, i) => {
        p.ws.send(JSON.stringify({ type: "publish", topic: room, content: { x: step, y: i } }));
        sent++;
      });
      if (Date.now() - started >= 1500) {
        clearInterval(timer);
        resolve();
      }
    }, 1000 / 60);
  });
  // Frames stop once nothing changes; wait for ten quiet ticks.
  await new Promise((resolve) => {
    const t = setInterval(() => {
      if (all.every((c) => Date.now() - c.lastAt > 500)) {
        clearInterval(t);
        resolve();
      }
    }, 50);
  });
  const after = await messagesOut();
  const ticks = [...watcher.seqs.keys()].sort((a, b) => a - b);
  for (const c of all) {
    assert.deepEqual([...c.seqs.keys()].sort((a, b) => a - b), ticks, "every client got the same ticks");
    assert.ok([...c.seqs.values()].every((n) => n === 1), "one frame per tick");
    assert.equal(c.frames, ticks.length);
    assert.equal(Object.keys(c.last.players).length, players, "every player is in the frame");
  }
  const frames = after - before;
  for (const c of all) c.ws.close();
  return { ticks: ticks.length, sent, frames, clients: all.length };
}

test("one frame per tick per client, with 2 players and with 24", async () => {
  const results = [];
  for (const players of [2, 24]) {
    const r = await run(players);
    results.push(r);
    // What the server sent during the run: one frame per client per tick.
    assert.equal(r.frames, r.clients * r.ticks, `${players} players: ${r.frames} messages sent for ${r.clients} clients × ${r.ticks} ticks`);
    assert.ok(r.ticks >= 10, `ticks happened: ${r.ticks}`);
    assert.ok(r.sent > 2 * r.ticks * players, `positions were batched: ${r.sent} sent, ${r.ticks} ticks`);
  }
  console.log(results.map((r) => `${r.clients - 1} players: ${r.sent} positions in, ${r.ticks} ticks, ${r.frames} frames out = ${(r.frames / r.ticks / r.clients).toFixed(2)} per client per tick`).join("\n"));
});

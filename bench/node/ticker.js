// Ticker benchmark: bytes per update and deliveries per second, with and
// without delta compression and conflation, all in one run against one
// `tether serve` (so the ratios compare like with like on a busy machine).
//
// One publisher sends each quote twice: keyed (topic "keyed", key = symbol:
// conflatable, patched per symbol) and unkeyed (topic "plain"). Fast
// subscribers read everything; slow ones stop reading while the feed runs,
// then read what the server kept for them.
//
//   cargo build --release -p tether-cli && (cd bench/node && npm ci)
//   node bench/node/ticker.js [--symbols 500] [--rate 3000] [--seconds 15] [--queue 1024]
"use strict";

const { spawn } = require("node:child_process");
const fs = require("node:fs");
const net = require("node:net");
const path = require("node:path");
const WebSocket = require("ws");

const args = Object.fromEntries(process.argv.slice(2).join(" ").split("--").filter(Boolean).map((a) => a.trim().split(/\s+/)));
const SYMBOLS = Number(args.symbols || 500);
const RATE = Number(args.rate || 3000);
const SECONDS = Number(args.seconds || 15);
const BIN = process.env.TETHER_BIN || path.join(__dirname, "../../target/release/tether");

function freePort() {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.listen(0, "127.0.0.1", () => { const { port } = s.address(); s.close(() => resolve(port)); });
  });
}

function cpuTicks(pid) {
  const f = fs.readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return Number(f[11]) + Number(f[12]); // utime + stime, in clock ticks (100/s)
}

/** RFC 7396 MergePatch. */
function mergePatch(target, patch) {
  if (patch === null || typeof patch !== "object" || Array.isArray(patch)) return patch;
  if (target === null || typeof target !== "object" || Array.isArray(target)) target = {};
  for (const k of Object.keys(patch)) {
    if (patch[k] === null) delete target[k];
    else target[k] = mergePatch(target[k], patch[k]);
  }
  return target;
}

function subscriber(url, name, topic, { delta = false, slow = false } = {}) {
  const s = { name, topic, delta, slow, messages: 0, bytes: 0, patches: 0, lagged: 0, latest: new Map(), held: new Map(), bad: 0 };
  const ws = new WebSocket(url, "tether.v1");
  s.ws = ws;
  s.ready = new Promise((resolve) => {
    ws.on("open", () => {
      ws.send(JSON.stringify({ type: "subscribe", topic, id: 1, ...(delta ? { delta: "merge-patch" } : {}) }));
    });
    ws.on("message", (data) => {
      const text = String(data);
      const m = JSON.parse(text);
      if (m.type === "ack" && m.id === 1) resolve();
      if (m.type === "error" && m.code === "lagged") s.lagged += Number(/^\d+/.exec(m.message)[0]);
      if (m.type !== "message" || m.topic !== topic) return;
      s.messages++;
      s.bytes += Buffer.byteLength(text);
      let content = m.content;
      const key = m.key || "";
      if (m.patch !== undefined) {
        s.patches++;
        const held = s.held.get(key);
        if (!held || held.seq !== m.base) s.bad++;
        content = mergePatch(structuredClone(held ? held.content : {}), m.patch);
      }
      if (delta) s.held.set(key, { seq: m.seq, content });
      s.latest.set(content.symbol, content.price);
    });
  });
  if (slow) {
    // Stop reading once subscribed (until the publishing ends): the kernel
    // buffers fill, then the server's queue for this client.
    s.ready.then(() => ws._socket.pause());
  }
  return s;
}

async function main() {
  const port = await freePort();
  const server = spawn(BIN, ["serve", "--listen", `127.0.0.1:${port}`, "--message-rate", "0", "--subscribe-rate", "0",
    "--queue-max-messages", String(args.queue || 1024), "--stats-interval", "0"], { stdio: ["ignore", "pipe", "inherit"] });
  await new Promise((resolve) => server.stdout.on("data", (d) => String(d).includes("listening on") && resolve()));
  const url = `ws://127.0.0.1:${port}/bench`;
  const subs = [
    subscriber(url, "unkeyed, full", "plain"),
    subscriber(url, "keyed, full", "keyed"),
    subscriber(url, "keyed, deltas", "keyed", { delta: true }),
    subscriber(url, "slow, unkeyed (drop-oldest)", "plain", { slow: true }),
    subscriber(url, "slow, keyed (conflated)", "keyed", { slow: true }),
    subscriber(url, "slow, keyed, deltas", "keyed", { slow: true, delta: true }),
  ];
  await Promise.all(subs.map((s) => s.ready));
  const pub = new WebSocket(url, "tether.v1");
  await new Promise((r) => pub.on("open", r));
  const quotes = Array.from({ length: SYMBOLS }, (_, i) => ({ symbol: `S${String(i).padStart(4, "0")}`, name: `Listing ${i} Incorporated`, price: 100 + i, change: 0, bid: 0, ask: 0, volume: 0 }));
  const latest = new Map();
  let published = 0;
  const cpu0 = cpuTicks(server.pid);
  const t0 = Date.now();
  await new Promise((resolve) => {
    const timer = setInterval(() => {
      const due = Math.min(RATE * SECONDS, Math.floor(((Date.now() - t0) / 1000) * RATE));
      while (published < due) {
        const q = quotes[Math.floor(Math.random() * SYMBOLS)];
        q.price = Math.round(q.price * (1 + (Math.random() - 0.5) / 250) * 100) / 100;
        q.change = Math.round((q.price - 100) * 100) / 100;
        q.bid = Math.round((q.price - 0.01) * 100) / 100;
        q.ask = Math.round((q.price + 0.01) * 100) / 100;
        q.volume += 100;
        latest.set(q.symbol, q.price);
        pub.send(JSON.stringify({ type: "publish", topic: "keyed", key: q.symbol, content: q }));
        pub.send(JSON.stringify({ type: "publish", topic: "plain", content: q }));
        published++;
      }
      if (published >= RATE * SECONDS) { clearInterval(timer); resolve(); }
    }, 5);
  });
  const elapsed = (Date.now() - t0) / 1000;
  // Let everyone drain (slow readers read normally again).
  for (const s of subs) s.ws._socket.resume();
  await new Promise((r) => setTimeout(r, 3000));
  const cpu = (cpuTicks(server.pid) - cpu0) / 100;
  const deliveries = subs.reduce((n, s) => n + s.messages, 0);
  console.log(`ticker: ${SYMBOLS} symbols, ${published} updates (x2 topics) in ${elapsed.toFixed(1)} s (${(published / elapsed).toFixed(0)}/s)`);
  console.log(`server CPU ${cpu.toFixed(2)} s for ${deliveries} deliveries + ${2 * published} publishes: ${((cpu * 1e6) / (deliveries + 2 * published)).toFixed(1)} us per message`);
  console.log("| subscriber | messages | deliveries/s | bytes per message | bytes per update published | patches | latest price of every symbol at the end | dropped (lagged) |");
  console.log("| --- | ---: | ---: | ---: | ---: | ---: | --- | ---: |");
  for (const s of subs) {
    const current = [...latest].filter(([sym, p]) => s.latest.get(sym) === p).length;
    console.log(`| ${s.name} | ${s.messages} | ${(s.messages / elapsed).toFixed(0)} | ${(s.bytes / Math.max(1, s.messages)).toFixed(0)} | ${(s.bytes / published).toFixed(0)} | ${s.patches}${s.bad ? ` (${s.bad} bad)` : ""} | ${current}/${latest.size} | ${s.lagged} |`);
    s.ws.terminate();
  }
  pub.terminate();
  server.kill("SIGKILL");
}

main().catch((e) => { console.error(e); process.exit(1); });

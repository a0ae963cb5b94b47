// The chat page and tether.js in a real browser: Debian's Chromium, headless,
// driven by playwright-core, against the real `tether serve` binary.
//
//   TETHER_BIN=target/release/tether node --test tests/browser/
//
// Chromium blocks WebSockets from public pages to loopback, so every page is
// loaded from the server under test (see shared/docs/browser-testing.md).

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { freePort, startServer as start, stopServer, chromiumOptions } from "../support/tether-server.mjs";

// --deflate: Chromium offers permessage-deflate on every WebSocket, so every
// test here also runs with compression negotiated.
const startServer = (port) => start(port, ["--heartbeat-interval", "2s", "--deflate"]);
const SHOTS = process.env.TETHER_SCREENSHOTS || "target/browser-screenshots";




let browser;
let port;
let server;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  port = await freePort();
  server = await startServer(port);
  browser = await chromium.launch(
    chromiumOptions(["--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync"]),
  );
});

after(async () => {
  if (browser) await browser.close();
  if (server) await stopServer(server);
});

async function openChat(room) {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push("pageerror: " + e.message));
  page.logs = logs;
  await page.goto(`http://127.0.0.1:${port}/?room=${encodeURIComponent(room)}`);
  await page.waitForSelector('#status[data-state="open"]', { timeout: 10000 });
  return page;
}

async function say(page, text) {
  await page.fill("#input", text);
  await page.click("button[type=submit]");
}

async function sees(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages li.message")].some((li) => li.textContent.includes(t)),
    text,
    { timeout: 10000 },
  );
}

test("two pages chat, and reconnect by themselves after the server restarts", async () => {
  const a = await openChat("/e2e");
  const b = await openChat("/e2e");
  await say(a, "hello from a");
  await sees(b, "hello from a");
  await sees(a, "hello from a");
  await say(b, "hi back from b");
  await sees(a, "hi back from b");
  await a.screenshot({ path: `${SHOTS}/chat-before-restart.png` });

  // Kill the server: both pages notice and start reconnecting.
  await stopServer(server);
  for (const p of [a, b]) {
    await p.waitForSelector('#status:not([data-state="open"])', { timeout: 10000 });
  }
  server = await startServer(port);
  for (const p of [a, b]) {
    await p.waitForSelector('#status[data-state="open"]', { timeout: 15000 });
  }
  await say(b, "after the restart");
  await sees(a, "after the restart");
  // WebSocket worked before the restart: the pages stayed on it (no switch
  // to the HTTP transport while the server was down).
  for (const p of [a, b]) assert.equal(await p.evaluate(() => window.chat.transport), "websocket");
  await a.screenshot({ path: `${SHOTS}/chat-after-restart.png` });
  assert.deepEqual(a.logs.filter((l) => l.startsWith("pageerror")), []);
  await a.close();
  await b.close();
});

test("tether.js: event order, subscribe/publish/ack round trip, queued sends, backoff bounds", async () => {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${port}/tether.js`);
  // Load the client into a page served by the server under test.
  await page.goto(`http://127.0.0.1:${port}/`);
  const result = await page.evaluate(async (port) => {
    const events = [];
    const client = new TetherClient(`ws://127.0.0.1:${port}/js-room`, { json: true, minDelay: 100, maxDelay: 400 });
    client.on("open", () => events.push("open"));
    client.on("close", (e) => events.push(`close:${e.wasClean}`));
    client.on("message", (m) => events.push(`message:${m.type}`));
    client.on("reconnecting", () => events.push("reconnecting"));
    // Queued before the socket is open: sent once it opens.
    const queuedAck = client.chat("queued before open");
    await new Promise((r) => client.on("open", r));
    await queuedAck;
    const sub = await client.subscribe("prices");
    const ack = await client.publish("prices", { symbol: "TTR", price: 42 });
    const got = await new Promise((resolve) => {
      client.on("message", (m) => { if (m.type === "message" && m.topic === "prices") resolve(m); });
      // The message may already have arrived before the handler was added.
      setTimeout(() => resolve(null), 3000);
    });
    let failed = null;
    try { await client.publish("", 1); } catch (e) { failed = e.code; }
    const delays = [1, 2, 3, 4, 5, 6].map((n) => TetherClient.backoffDelay(n, { minDelay: 100, maxDelay: 1000, jitter: 0.5 }));
    client.close();
    await new Promise((r) => setTimeout(r, 200));
    return { events, sub, ack, got, failed, delays, session: client.session };
  }, port);

  // open comes first, then the welcome.
  assert.equal(result.events[0], "open");
  assert.equal(result.events[1], "message:welcome");
  assert.ok(result.session);
  assert.equal(result.sub.type, "ack");
  assert.equal(result.sub.topic, "prices");
  assert.equal(result.ack.seq, 1);
  assert.equal(result.failed, "invalid_field");
  assert.ok(result.events.includes("message:message"));
  assert.equal(result.events.at(-1), "close:true");
  assert.ok(!result.events.includes("reconnecting"), "no reconnect after close()");
  // Backoff grows and is jittered within +-50% of min(max, 100 * 2^(n-1)).
  result.delays.forEach((d, i) => {
    const base = Math.min(1000, 100 * 2 ** i);
    assert.ok(d >= base * 0.5 && d <= base * 1.5, `attempt ${i + 1}: ${d} ms outside [${base * 0.5}, ${base * 1.5}]`);
  });
  await page.close();
});

test("tether.js: re-subscribes after a server restart and reports an unclean close", async () => {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${port}/`);
  await page.evaluate((port) => {
    window.seen = [];
    window.closes = [];
    window.client2 = new TetherClient(`ws://127.0.0.1:${port}/resub`, { json: true, minDelay: 100, maxDelay: 300 });
    window.client2.on("message", (m) => { if (m.type === "message") window.seen.push(m.content); });
    window.client2.on("close", (e) => window.closes.push(e));
    return new Promise((r) => window.client2.on("open", () => window.client2.subscribe("alerts").then(r)));
  }, port);
  await stopServer(server);
  server = await startServer(port);
  await page.waitForFunction(() => window.client2.state === "open" && window.closes.length >= 1, null, { timeout: 15000 });
  const close = await page.evaluate(() => window.closes[0]);
  assert.equal(close.wasClean, false);
  assert.equal(close.code, 1006);
  // Publish from Node through a second page's client; the first receives it
  // because tether.js re-subscribed "alerts" on reconnect.
  const other = await browser.newPage();
  await other.goto(`http://127.0.0.1:${port}/`);
  await page.waitForTimeout(300);
  await other.evaluate(async (port) => {
    const c = new TetherClient(`ws://127.0.0.1:${port}/elsewhere`, { json: true });
    await new Promise((r) => c.on("open", r));
    await c.publish("alerts", "fire drill");
    c.close();
  }, port);
  await page.waitForFunction(() => window.seen.includes("fire drill"), null, { timeout: 10000 });
  await page.close();
  await other.close();
});

test("tether.js in plain mode stays open in a quiet room for several heartbeat periods", async () => {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${port}/`);
  const events = await page.evaluate(async (port) => {
    const events = [];
    // Short settings: the old client closed itself after interval + timeout (0.6 s).
    const client = new TetherClient(`ws://127.0.0.1:${port}/quiet-room`, { json: false, heartbeatInterval: 300, heartbeatTimeout: 300 });
    client.on("open", () => events.push("open"));
    client.on("close", (e) => events.push(`close:${e.code}`));
    client.on("error", (e) => events.push(`error:${e.message}`));
    client.on("reconnecting", () => events.push("reconnecting"));
    await new Promise((r) => setTimeout(r, 5000)); // > 8 periods, and two server pings (2 s)
    events.push(`readyState:${client.ws && client.ws.readyState}`);
    client.close();
    return events;
  }, port);
  assert.deepEqual(events, ["open", "readyState:1"]);
  await page.close();
});

test("the server echoes the close code and reason a browser sends", async () => {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${port}/`);
  const closed = await page.evaluate(async (port) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/bye-room`);
    await new Promise((r) => { ws.onopen = r; });
    ws.close(1000, "bye");
    const e = await new Promise((r) => { ws.onclose = r; });
    return { code: e.code, reason: e.reason, wasClean: e.wasClean };
  }, port);
  assert.deepEqual(closed, { code: 1000, reason: "bye", wasClean: true });
  await page.close();
});

test("Chromium negotiates permessage-deflate with tether serve and round-trips large messages", async () => {
  const page = await browser.newPage();
  await page.goto(`http://127.0.0.1:${port}/`);
  const result = await page.evaluate(async (port) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/deflate-room`);
    const got = [];
    ws.onmessage = (e) => got.push(e.data);
    await new Promise((r, j) => { ws.onopen = r; ws.onerror = j; });
    // Chromium compresses what it sends; the server inflates it. (Hub
    // broadcasts go out uncompressed, which RFC 7692 allows per message.)
    const big = JSON.stringify({ items: Array.from({ length: 200 }, (_, i) => ({ id: i, name: "item " + i })) });
    ws.send(big);
    const deadline = Date.now() + 5000;
    while (got.length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    ws.close();
    return { extensions: ws.extensions, got, big };
  }, port);
  assert.match(result.extensions, /permessage-deflate/);
  assert.ok(result.got[0].startsWith("Welcome"), result.got[0]);
  assert.ok(result.got[1].endsWith(result.big), "the broadcast of the large message came back intact");
  await page.close();
});

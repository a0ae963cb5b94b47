// tether.js's HTTP transport (Server-Sent Events down, POSTed batches up)
// in Debian's Chromium against the real `tether serve`: the chat page with
// window.WebSocket removed, the same page behind an nginx that refuses
// upgrades (deploy/nginx-no-websocket.conf, tether.js switching by itself),
// a server killed and restarted mid-conversation, and streams cut every
// two seconds that resume with nothing lost or repeated.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { freePort, startServer, stopServer, chromiumOptions } from "../support/tether-server.mjs";
import { startNginx } from "../support/nginx.mjs";

let browser;
let port;
let server;

before(async () => {
  port = await freePort();
  server = await startServer(port, ["--heartbeat-interval", "5s"]);
  browser = await chromium.launch(chromiumOptions(["--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync"]));
});

after(async () => {
  if (browser) await browser.close();
  if (server) await stopServer(server);
});

/** The chat page of `room` from `origin`; without WebSocket if asked. */
async function openChat(origin, room, { noWebSocket = false } = {}) {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push("pageerror: " + e.message));
  page.logs = logs;
  // Before any script of the page runs: a browser with no WebSocket at all.
  if (noWebSocket) await page.addInitScript(() => { delete window.WebSocket; });
  await page.goto(`${origin}/?room=${encodeURIComponent(room)}`);
  await page.waitForSelector('#status[data-state="open"]', { timeout: 15000 });
  return page;
}

async function say(page, text) {
  await page.fill("#input", text);
  await page.click("button[type=submit]");
}

/** The chat lines a page shows (message text only). */
function lines(page) {
  return page.evaluate(() => [...document.querySelectorAll("#messages li.message")].map((li) => li.lastChild.textContent));
}

async function sees(page, text) {
  await page.waitForFunction(
    (t) => [...document.querySelectorAll("#messages li.message")].some((li) => li.lastChild.textContent === t),
    text,
    { timeout: 15000 },
  );
}

const transportOf = (page) => page.evaluate(() => ({ transport: window.chat.transport, hasWebSocket: typeof window.WebSocket }));

test("no WebSocket in the page: two chat pages talk over the HTTP transport, and resume after the server is killed and restarted", async () => {
  const origin = `http://127.0.0.1:${port}`;
  const a = await openChat(origin, "/nows", { noWebSocket: true });
  const b = await openChat(origin, "/nows", { noWebSocket: true });
  for (const p of [a, b]) assert.deepEqual(await transportOf(p), { transport: "http", hasWebSocket: "undefined" });
  await say(a, "a1");
  await sees(b, "a1");
  await say(b, "b1");
  await sees(a, "b1");

  // Kill the server mid-conversation: both pages notice the broken stream.
  await stopServer(server);
  for (const p of [a, b]) await p.waitForSelector('#status:not([data-state="open"])', { timeout: 15000 });
  server = await startServer(port, ["--heartbeat-interval", "5s"]);
  // Their resume gets 404 (the new server knows no session): each opens a new one.
  for (const p of [a, b]) await p.waitForSelector('#status[data-state="open"]', { timeout: 30000 });
  await say(a, "a2");
  await sees(b, "a2");
  await say(b, "b2");
  await sees(a, "b2");
  // Nothing lost, nothing twice, in order, still on HTTP.
  for (const p of [a, b]) {
    assert.deepEqual(await lines(p), ["a1", "b1", "a2", "b2"]);
    assert.equal((await transportOf(p)).transport, "http");
    assert.deepEqual(p.logs.filter((l) => l.startsWith("pageerror")), []);
  }
  // close() tells the server (POST &close=1), which ends the session at once.
  const closed = await a.evaluate(async () => {
    const socket = window.chat.ws;
    const fetch = socket._fetch;
    let answer = null;
    socket._fetch = function (url, init) {
      const p = fetch.call(this, url, init);
      if (String(url).includes("close=1")) answer = p.then((r) => r.status);
      return p;
    };
    window.chat.close();
    return answer && (await answer);
  });
  assert.equal(closed, 200);
  await a.close();
  await b.close();
});

test("behind nginx that refuses WebSocket upgrades (deploy/nginx-no-websocket.conf), tether.js switches to HTTP by itself", async () => {
  const nginxPort = await freePort();
  const nginx = await startNginx("nginx-no-websocket.conf", nginxPort, [port]);
  try {
    const origin = `http://127.0.0.1:${nginxPort}`;
    const a = await openChat(origin, "/proxied");
    const b = await openChat(origin, "/proxied");
    for (const p of [a, b]) {
      // WebSocket exists, its upgrade got 403 from nginx: switched at once,
      // without waiting out a reconnect backoff.
      assert.deepEqual(await transportOf(p), { transport: "http", hasWebSocket: "function" });
      const system = await p.evaluate(() => [...document.querySelectorAll("#messages li.system")].map((li) => li.textContent));
      assert.ok(!system.some((l) => l.startsWith("reconnecting")), `a backoff before the switch: ${system.join(" | ")}`);
    }
    for (let i = 0; i < 5; i++) {
      await say(a, `via nginx a${i}`);
      await say(b, `via nginx b${i}`);
    }
    await sees(a, "via nginx b4");
    await sees(b, "via nginx a4");
    const want = [0, 1, 2, 3, 4].flatMap((i) => [`via nginx a${i}`, `via nginx b${i}`]);
    for (const p of [a, b]) {
      const got = await lines(p);
      assert.deepEqual([...got].sort(), [...want].sort(), "every message once");
      assert.deepEqual(got.filter((l) => l.includes(" a")), want.filter((l) => l.includes(" a")), "a's in order");
      assert.deepEqual(got.filter((l) => l.includes(" b")), want.filter((l) => l.includes(" b")), "b's in order");
    }
    await a.close();
    await b.close();
  } finally {
    await nginx.stop();
  }
});

test("streams cut every 2 s (--http-timeout) resume by Last-Event-ID with nothing lost or repeated", async () => {
  const cutPort = await freePort();
  const cut = await startServer(cutPort, ["--heartbeat-interval", "5s", "--http-timeout", "2s"]);
  try {
    const origin = `http://127.0.0.1:${cutPort}`;
    const a = await openChat(origin, "/cut", { noWebSocket: true });
    const b = await openChat(origin, "/cut", { noWebSocket: true });
    const sessions = await Promise.all([a, b].map((p) => p.evaluate(() => {
      window.opens = 0;
      window.stalls = 0;
      window.chat.on("open", () => { window.opens += 1; });
      window.chat.on("state", (s) => { if (s === "reconnecting") window.stalls += 1; });
      return window.chat.session;
    })));
    // 30 messages from each page over about 6 s: three cuts of every stream
    // (and of the POSTs' connections) happen meanwhile.
    const N = 30;
    await Promise.all([a, b].map((p, who) => p.evaluate(async ({ N, who }) => {
      for (let i = 0; i < N; i++) {
        window.chat.chat(`${who ? "b" : "a"}${i}`).catch(() => {});
        await new Promise((r) => setTimeout(r, 200));
      }
    }, { N, who })));
    for (const p of [a, b]) for (const w of ["a", "b"]) await sees(p, `${w}${N - 1}`);
    const want = (w) => Array.from({ length: N }, (_, i) => `${w}${i}`);
    for (const [i, p] of [a, b].entries()) {
      const got = await lines(p);
      assert.equal(got.length, 2 * N, `exactly ${2 * N} lines: ${got.join(" ")}`);
      assert.deepEqual(got.filter((l) => l[0] === "a"), want("a"));
      assert.deepEqual(got.filter((l) => l[0] === "b"), want("b"));
      // The same session all along: resumed, never opened anew.
      assert.deepEqual(await p.evaluate(() => [window.chat.session, window.opens, window.chat.transport]), [sessions[i], 0, "http"]);
      // The streams were cut (and resumed) meanwhile.
      assert.ok(await p.evaluate(() => window.stalls) >= 2, "no stream was cut");
    }
    await a.close();
    await b.close();
  } finally {
    await stopServer(cut);
  }
});

test("a WebSocket that never brings a welcome: tether.js switches to HTTP after welcomeTimeout", async () => {
  const page = await browser.newPage();
  // A middlebox that accepts the connection and passes nothing: this
  // WebSocket never opens, never fails.
  await page.addInitScript(() => {
    window.WebSocket = class { constructor(url) { this.url = url; this.readyState = 0; } send() {} close() { this.readyState = 3; } };
  });
  await page.goto(`http://127.0.0.1:${port}/?room=/silent`);
  await page.evaluate(() => {
    window.switches = [];
    window.chat.on("transport", (e) => window.switches.push(e));
  });
  await page.waitForSelector('#status[data-state="open"]', { timeout: 15000 });
  assert.deepEqual(await page.evaluate(() => window.switches), [{ transport: "http", previous: "websocket", reason: "no_welcome" }]);
  await page.close();
});

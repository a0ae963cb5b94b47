// The browser samples of the guide (tests/browser/guide/*.js, included by
// guide/src/tutorial/*.md), each run in Chromium against tether serve and
// checked by what it prints.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { chromium } from "playwright-core";
import { freePort, startServer as start, stopServer, chromiumOptions } from "../support/tether-server.mjs";

const startServer = (port) => start(port, ["--heartbeat-interval", "2s"]);




let browser;
let server;
let port;

before(async () => {
  port = await freePort();
  server = await startServer(port);
  browser = await chromium.launch(chromiumOptions());
});

after(async () => {
  if (browser) await browser.close();
  if (server) await stopServer(server);
});

/** A page of the server under test with tether.js loaded and the sample running; `lines` fills with what it logs. */
async function runSample(name) {
  const page = await browser.newPage();
  page.lines = [];
  page.on("console", (m) => page.lines.push(m.text()));
  page.on("pageerror", (e) => page.lines.push("pageerror: " + e.message));
  await page.goto(`http://127.0.0.1:${port}/health`);
  await page.addScriptTag({ url: "/tether.js" });
  await page.addScriptTag({ content: readFileSync(new URL(`guide/${name}`, import.meta.url), "utf8") });
  return page;
}

async function logged(page, pattern, ms = 10000) {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const line = page.lines.find((l) => pattern.test(l));
    if (line) return line;
    await new Promise((r) => setTimeout(r, 50));
  }
  assert.fail(`no line matching ${pattern} within ${ms} ms; got:\n${page.lines.join("\n")}`);
}

test("http-fallback.js: alice on HTTP and bob on WebSocket share a room; an EventSource reads a topic feed", async () => {
  const page = await runSample("http-fallback.js");
  await logged(page, /^alice open over http$/);
  await logged(page, /^bob open over websocket$/);
  await logged(page, /^bob got: hello from the HTTP side$/);
  await logged(page, /^feed got: \{"symbol":"TTR","price":42\}$/);
  assert.deepEqual(page.lines.filter((l) => l.startsWith("pageerror")), []);
  await page.close();
});

test("broadcast.js: bob sees alice's message, prefixed with her session", async () => {
  const page = await runSample("broadcast.js");
  await logged(page, /^bob got: \[\S+\] hello, room$/);
  await page.close();
});

test("heartbeat.js: the rule's timeline, and a healthy connection stays open", async () => {
  const page = await runSample("heartbeat.js");
  await logged(page, /^t=1000: send_ping$/);
  await logged(page, /^t=1600: peer_dead$/);
  await logged(page, /^state: open$/);
  await new Promise((r) => setTimeout(r, 3500)); // three heartbeats
  assert.ok(!page.lines.some((l) => /reconnecting|closed|pageerror/.test(l)), page.lines.join("\n"));
  await page.close();
});

test("json.js: welcome, the chat message and its ack, an error for bad JSON", async () => {
  const page = await runSample("json.js");
  await logged(page, /^got welcome/);
  await logged(page, /^got message "Hello"$/);
  await logged(page, /^got ack 1$/);
  await logged(page, /^got error bad_json$/);
  await page.close();
});

test("reconnecting.js: back after a server restart, still subscribed", async () => {
  const page = await runSample("reconnecting.js");
  await logged(page, /^open$/);
  await stopServer(server);
  await logged(page, /^reconnecting: attempt 1 in \d+ ms$/);
  server = await startServer(port);
  const deadline = Date.now() + 15000;
  while (page.lines.filter((l) => l === "open").length < 2 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  await page.evaluate(() => window.publish("after the restart"));
  await logged(page, /^news: after the restart$/);
  await page.close();
});

// tether.js as an ES module in the browser, with no bundler: the page imports
// /tether.mjs (which imports /tether.js) from the server under test.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { chromium } from "playwright-core";
import { freePort, startServer, stopServer, chromiumOptions } from "../support/tether-server.mjs";



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
  await stopServer(server);
});

test("import { TetherClient } from /tether.mjs: a tether.v1 round trip", async () => {
  const page = await browser.newPage();
  // A page of the server's that does not load tether.js itself.
  await page.goto(`http://127.0.0.1:${port}/health`);
  const result = await page.evaluate(async (port) => {
    const mod = await import("/tether.mjs");
    const client = new mod.TetherClient(`ws://127.0.0.1:${port}/esm-room`, { json: true });
    await new Promise((resolve) => client.on("open", resolve));
    const ack = await client.publish("esm", { ok: true });
    client.close();
    return {
      same: mod.default === mod.TetherClient && mod.TetherClient === window.TetherClient,
      helper: mod.backoffDelay === mod.TetherClient.backoffDelay,
      ack: ack.type,
    };
  }, port);
  assert.deepEqual(result, { same: true, helper: true, ack: "ack" });
  await page.close();
});

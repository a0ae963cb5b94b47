// tether.js as an ES module in the browser, with no bundler: the page imports
// /tether.mjs (which imports /tether.js) from the server under test.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { chromium } from "playwright-core";

const BIN = process.env.TETHER_BIN || "target/release/tether";
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

let browser;
let server;
let port;

before(async () => {
  port = await freePort();
  server = await new Promise((resolve, reject) => {
    const child = spawn(BIN, ["serve", "--listen", `127.0.0.1:${port}`], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("listening on")) resolve(child);
    });
    child.on("exit", (code) => reject(new Error(`tether serve exited with ${code}: ${out}`)));
  });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu", "--no-first-run"] });
});

after(async () => {
  if (browser) await browser.close();
  if (server) server.kill("SIGKILL");
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

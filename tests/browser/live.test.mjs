// The live demos in a real browser (Debian's Chromium via playwright-core)
// against the real binary: the ticker (deltas and conflation on), the
// dashboard (charts move under load, figures match /metrics, the metrics
// token guards it) and the multiplayer room in two pages.
//
//   TETHER_BIN=target/release/tether node --test tests/browser/live.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { BIN, freePort, startTether, stopServer, chromiumOptions, poll } from "../support/tether-server.mjs";

const SHOTS = process.env.TETHER_SCREENSHOTS || "target/browser-screenshots";
const UNLIMITED = ["--message-rate", "0", "--subscribe-rate", "0"];

/** `tether ARGS... --listen 127.0.0.1:PORT`, resolved once it listens. */
async function start(args) {
  const port = await freePort();
  const child = await startTether([...args, "--listen", `127.0.0.1:${port}`]);
  children.push(child);
  return { child, port, base: `http://127.0.0.1:${port}` };
}

async function metrics(base, token) {
  const res = await fetch(`${base}/metrics`, token ? { headers: { authorization: `Bearer ${token}` } } : {});
  assert.equal(res.status, 200);
  const out = {};
  for (const line of (await res.text()).split("\n")) {
    const m = /^(tether_[a-z_]+) ([0-9.e+]+)$/.exec(line);
    if (m) out[m[1]] = Number(m[2]);
  }
  return out;
}

let browser;
const children = [];

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  browser = await chromium.launch(chromiumOptions(["--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync"]));
});

after(async () => {
  if (browser) await browser.close();
  await Promise.all(children.map((c) => stopServer(c)));
});

async function open(url) {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push("pageerror: " + e.message));
  await page.goto(url);
  page.logs = logs;
  return page;
}

test("ticker: every symbol shows, through deltas, and the index links each demo", async () => {
  const { base } = await start(["demo", "ticker", "--symbols", "12", "--rate", "200", ...UNLIMITED]);
  const index = await open(`${base}/`);
  const links = await index.$$eval("nav.demos a", (as) => as.map((a) => a.getAttribute("href")));
  assert.deepEqual(links, ["/ticker.html", "/dashboard.html", "/multiplayer.html", "/editor.html"]);
  await index.close();
  const page = await open(`${base}/ticker.html`);
  await poll(() => page.evaluate(() => Object.keys(window.ticker.quotes()).length === 12 && window.ticker.updates() > 100), "12 symbols and 100 updates");
  const m = await metrics(base);
  assert.ok(m.tether_delta_patches_total > 50, `patches were sent: ${m.tether_delta_patches_total}`);
  assert.deepEqual(page.logs.filter((l) => /error/i.test(l)), []);
  await page.screenshot({ path: `${SHOTS}/ticker.png` });
  await page.close();
});

test("dashboard: charts move under load, figures match /metrics, the metrics token guards it", async () => {
  const token = "s3cret-metrics";
  const { base, port } = await start(["serve", "--metrics-token", token, ...UNLIMITED]);
  // Without the token the system room is refused.
  const refused = await open(`${base}/dashboard.html`);
  await poll(() => refused.evaluate(() => document.getElementById("status").textContent.includes("disconnected")), "a refusal");
  await refused.close();
  const page = await open(`${base}/dashboard.html?token=${token}`);
  await poll(() => page.evaluate(() => window.dashboard.received() >= 1), "first stats");
  // Load: a ticker publishing to this server, read by a ticker page.
  const reader = await open(`${base}/ticker.html`);
  const load = spawn(BIN, ["demo", "ticker", "--url", `ws://127.0.0.1:${port}/load`, "--rate", "300", "--count", "3000"], { stdio: "ignore" });
  children.push(load);
  const canvas = () => page.evaluate(() => [...document.querySelectorAll("#charts canvas")].map((c) => c.toDataURL()).join());
  await poll(() => page.evaluate(() => Object.values(window.dashboard.latest()).some((s) => s.messages_in_per_s > 50 && s.messages_out_per_s > 50)), "the load on the charts");
  const before = await canvas();
  await poll(async () => (await canvas()) !== before, "the charts to move");
  await page.screenshot({ path: `${SHOTS}/dashboard.png`, fullPage: true });
  await new Promise((resolve) => load.exitCode !== null ? resolve() : load.on("exit", resolve));
  // Idle again: the page's figures catch up with /metrics.
  await poll(async () => {
    const m = await metrics(base, token);
    const shown = await page.evaluate(() => Object.values(window.dashboard.latest())[0]);
    return shown && shown.messages_in_total === m.tether_messages_in_total && shown.connections === m.tether_connections
      && shown.dropped_total === m.tether_dropped_messages_total && shown.conflated_total === m.tether_conflated_messages_total;
  }, "the dashboard to match /metrics");
  const shown = await page.evaluate(() => Object.values(window.dashboard.latest())[0]);
  assert.ok(shown.messages_in_total >= 3000, `the load is counted: ${shown.messages_in_total}`);
  await reader.close();
  await page.close();
});

test("multiplayer: two pages see each other, one frame per tick", async () => {
  const { base } = await start(["serve", "--tick-rate", "10"]);
  const a = await open(`${base}/multiplayer.html?room=t`);
  const b = await open(`${base}/multiplayer.html?room=t`);
  for (const p of [a, b]) await poll(() => p.evaluate(() => window.multiplayer.client.session !== null), "a session");
  // Positions on the field, as the page computes them (pointer minus the canvas corner).
  const boxA = await (await a.$("canvas")).boundingBox();
  const boxB = await (await b.$("canvas")).boundingBox();
  for (let i = 0; i < 40; i++) {
    await a.mouse.move(boxA.x + 100 + i * 5, boxA.y + 100, { steps: 2 });
    await b.mouse.move(boxB.x + 400, boxB.y + 100 + i * 5, { steps: 2 });
  }
  const near = (p, x, y) => Math.abs(p.x - x) <= 1 && Math.abs(p.y - y) <= 1;
  await poll(async () => {
    const seen = await b.evaluate(() => Object.values(window.multiplayer.players()));
    return seen.length === 2 && seen.some((p) => near(p, 295, 100)) && seen.some((p) => near(p, 400, 295));
  }, "both players' last positions in page b");
  const counts = await b.evaluate(() => ({ frames: window.multiplayer.frames(), ticks: window.multiplayer.ticks() }));
  const sent = (await a.evaluate(() => window.multiplayer.sent())) + (await b.evaluate(() => window.multiplayer.sent()));
  assert.equal(counts.frames, counts.ticks, "one frame per tick, whatever the number of players");
  assert.ok(sent > counts.frames, `positions were batched: ${sent} sent, ${counts.frames} frames`);
  await a.screenshot({ path: `${SHOTS}/multiplayer.png` });
  // A player leaves: gone from the other page.
  await a.close();
  await poll(() => b.evaluate(() => Object.keys(window.multiplayer.players()).length === 1), "the leaver removed");
  await b.close();
});

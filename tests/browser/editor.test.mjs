// The collaborative editor demo (/editor.html: CodeMirror 6 + y-websocket +
// y-codemirror.next, vendored in the binary) in two Chromium pages against
// the real binary: both type at once and converge, each shows the other's
// cursor with its name, and a page opened later gets the text. The pages
// use `disableBc`, so nothing passes between them but through the server.
//
//   TETHER_BIN=target/release/tether node --test tests/browser/editor.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { mkdirSync } from "node:fs";
import { chromium } from "playwright-core";
import { freePort, startServer, stopServer, chromiumOptions, poll } from "../support/tether-server.mjs";

const SHOTS = process.env.TETHER_SCREENSHOTS || "target/browser-screenshots";

let browser, server, base;

before(async () => {
  mkdirSync(SHOTS, { recursive: true });
  const port = await freePort();
  server = await startServer(port, ["--yjs-dir", "none"]);
  base = `http://127.0.0.1:${port}`;
  browser = await chromium.launch(chromiumOptions(["--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync"]));
});

after(async () => {
  if (browser) await browser.close();
  await stopServer(server);
});

async function open(path) {
  const page = await browser.newPage();
  const logs = [];
  const requests = [];
  page.on("console", (m) => logs.push(m.text()));
  page.on("pageerror", (e) => logs.push("pageerror: " + e.message));
  page.on("request", (r) => requests.push(r.url()));
  await page.goto(base + path);
  await poll(() => page.evaluate(() => window.editor && window.editor.provider.synced), `${path} in sync`);
  page.logs = logs;
  page.requests = requests;
  return page;
}

test("editor: two pages type at once and converge, remote cursors show, a late page gets the text", async () => {
  const doc = `doc-${process.pid}`;
  const a = await open(`/editor.html?doc=${doc}&name=ada`);
  const b = await open(`/editor.html?doc=${doc}&name=bob`);
  // Every script came from the server under test (no CDN).
  for (const url of [...a.requests, ...b.requests]) assert.ok(url.startsWith(base), `fetched from elsewhere: ${url}`);

  // Both type at the same time, as a user would (keystrokes into CodeMirror).
  await Promise.all([a.click(".cm-content"), b.click(".cm-content")]);
  await Promise.all([
    a.keyboard.type("alpha from ada. ", { delay: 15 }),
    b.keyboard.type("beta from bob! ", { delay: 15 }),
  ]);
  const texts = () => Promise.all([a, b].map((p) => p.evaluate(() => window.editor.text())));
  const [ta, tb] = await poll(async () => {
    const [x, y] = await texts();
    return x === y && x.length === "alpha from ada. ".length + "beta from bob! ".length ? [x, y] : null;
  }, "both pages to show the same text");
  assert.equal(ta, tb);
  // Each keystroke landed once: the text is an interleaving of the two, each in order.
  const sorted = (s) => [...s].sort().join("");
  assert.equal(sorted(ta), sorted("alpha from ada. beta from bob! "));
  // What the editors show (CodeMirror's own document) is the shared text.
  for (const p of [a, b]) assert.equal(await p.evaluate(() => window.editor.view.state.doc.toString()), ta);

  // A remote cursor: page a shows bob's caret with his name, and b shows ada's.
  for (const [p, other] of [[a, "bob"], [b, "ada"]]) {
    await poll(() => p.evaluate((name) => [...document.querySelectorAll(".cm-ySelectionCaret")].some((c) => c.textContent.includes(name)), other), `${other}'s cursor`);
    const peers = await p.evaluate(() => document.getElementById("peers").textContent);
    assert.ok(peers.includes(other), `the peer list shows ${other}: ${peers}`);
  }
  await a.screenshot({ path: `${SHOTS}/editor.png` });

  // A page opened later gets the whole text from the server.
  const late = await open(`/editor.html?doc=${doc}&name=cy`);
  await poll(async () => (await late.evaluate(() => window.editor.view.state.doc.toString())) === ta, "the late page to show the text");

  // A page that leaves: its cursor goes from the others.
  await b.close();
  await poll(() => a.evaluate(() => ![...document.querySelectorAll(".cm-ySelectionCaret")].some((c) => c.textContent.includes("bob"))), "bob's cursor gone");

  // The server integrated the edits (it is not in-page broadcast).
  const metrics = await (await fetch(`${base}/metrics`)).text();
  const updates = Number(/^tether_yjs_updates_total (\d+)/m.exec(metrics)[1]);
  assert.ok(updates >= 2, `updates integrated by the server: ${updates}`);
  for (const p of [a, late]) assert.deepEqual(p.logs.filter((l) => /error/i.test(l)), []);
  await a.close();
  await late.close();
});

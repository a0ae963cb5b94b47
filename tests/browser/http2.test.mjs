// WebSocket over HTTP/2 (RFC 8441) in a real browser: Debian's Chromium
// loads the chat page from `tether serve` over HTTPS, which it negotiates
// as HTTP/2 by ALPN, and opens its wss:// WebSocket to the same origin as
// a stream of that HTTP/2 connection (extended CONNECT). The server's
// per-transport gauge shows which transport the socket took: the test
// fails if Chromium fell back to an HTTP/1.1 upgrade.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdtempSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium } from "playwright-core";
import { freePort, startServer, stopServer, chromiumOptions } from "../support/tether-server.mjs";

let browser;
let port;
let server;

before(async () => {
  // A self-signed certificate made for this run (Chromium is told to
  // accept it with --ignore-certificate-errors).
  const dir = mkdtempSync(join(tmpdir(), "tether-h2-"));
  const [cert, key] = [join(dir, "cert.pem"), join(dir, "key.pem")];
  execFileSync("openssl", [
    "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
  ], { stdio: "ignore" });
  port = await freePort();
  server = await startServer(port, ["--tls-cert", cert, "--tls-key", key, "--deflate"]);
  browser = await chromium.launch(
    chromiumOptions(["--ignore-certificate-errors", "--disable-quic", "--disable-background-networking", "--disable-component-update", "--disable-sync"]),
  );
});

after(async () => {
  if (browser) await browser.close();
  if (server) await stopServer(server);
});

/** The per-transport gauges, read by the page itself (fetch over its HTTP/2 connection). */
async function transports(page) {
  const text = await page.evaluate(async () => (await fetch("/metrics")).text());
  const gauge = (t) => Number(text.match(new RegExp(`^tether_connections_by_transport\\{transport="${t}"\\} (\\d+)`, "m"))?.[1]);
  return { websocket: gauge("websocket"), websocket_h2: gauge("websocket_h2") };
}

test("the chat page's wss:// WebSocket runs as an HTTP/2 stream (RFC 8441)", async () => {
  const page = await browser.newPage();
  const logs = [];
  page.on("console", (m) => logs.push(m.text()));
  await page.goto(`https://127.0.0.1:${port}/?room=h2room`);
  // The page itself came over HTTP/2.
  const protocol = await page.evaluate(() => performance.getEntriesByType("navigation")[0].nextHopProtocol);
  assert.equal(protocol, "h2", "the page was not loaded over HTTP/2");
  await page.waitForSelector('#status[data-state="open"]', { timeout: 10000 });
  assert.deepEqual(await transports(page), { websocket: 0, websocket_h2: 1 }, `Chromium fell back to HTTP/1.1 (logs: ${logs.join(" | ")})`);

  // A message through the hub and back, over the stream.
  await page.fill("#input", "hello over h2");
  await page.click("button[type=submit]");
  await page.waitForFunction(
    () => [...document.querySelectorAll("#messages li.message")].some((li) => li.textContent.includes("hello over h2")),
    null,
    { timeout: 10000 },
  );

  // Closing the page ends the stream; the server counts it gone.
  const watcher = await browser.newPage();
  await watcher.goto(`https://127.0.0.1:${port}/health`);
  await page.close();
  let now;
  for (let i = 0; i < 100; i++) {
    now = await transports(watcher);
    if (now.websocket_h2 === 0) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  assert.deepEqual(now, { websocket: 0, websocket_h2: 0 });
  await watcher.close();
});

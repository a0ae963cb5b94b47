// What the Node and browser tests share: a free loopback port, the real
// `tether serve` binary started and stopped, and Debian's Chromium launched
// headless. Imported by tests/browser/*.test.mjs and tests/node/*.test.mjs.
//
//   TETHER_BIN   the binary under test (default: target/release/tether of this checkout)
//   CHROMIUM     the browser (default: /usr/bin/chromium)

import { spawn } from "node:child_process";
import { createServer } from "node:net";
import { fileURLToPath } from "node:url";

export const BIN = process.env.TETHER_BIN || fileURLToPath(new URL("../../target/release/tether", import.meta.url));
export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

/** A TCP port on 127.0.0.1 that was free a moment ago. */
export function freePort() {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.listen(0, "127.0.0.1", () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
    srv.on("error", reject);
  });
}

/**
 * Starts `tether serve --listen 127.0.0.1:PORT ARGS...` and resolves with the
 * child process once it prints "listening on"; rejects if it exits first.
 */
export function startServer(port, args = []) {
  return startTether(["serve", "--listen", `127.0.0.1:${port}`, ...args]);
}

/**
 * Starts `tether ARGV...` (any subcommand that serves, e.g. `demo ticker
 * --listen ...`) and resolves with the child once it prints "listening on".
 */
export function startTether(argv) {
  return new Promise((resolve, reject) => {
    const child = spawn(BIN, argv, { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      if (out.includes("listening on")) resolve(child);
    });
    child.on("exit", (code) => reject(new Error(`tether ${argv[0]} exited with ${code}: ${out}`)));
  });
}

/** Stops a server started by `startServer` and resolves once it has exited. */
export function stopServer(child, signal = "SIGKILL") {
  return new Promise((resolve) => {
    if (!child || child.exitCode !== null || child.signalCode !== null) return resolve();
    child.removeAllListeners("exit");
    child.on("exit", () => resolve());
    child.kill(signal);
  });
}

/**
 * Launch options for Debian's Chromium, headless, for playwright-core's
 * `chromium.launch` (playwright-core is installed in tests/browser, so the
 * test imports it and passes these options).
 */
export function chromiumOptions(args = []) {
  return { executablePath: CHROMIUM, args: ["--no-sandbox", "--disable-gpu", "--no-first-run", ...args] };
}

/** Resolves with the first `event` payload of a TetherClient that satisfies `pred`. */
export function next(client, event, pred = () => true, ms = 10000) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no ${event} within ${ms} ms`)), ms);
    const fn = (payload) => {
      if (!pred(payload)) return;
      clearTimeout(timer);
      client.off(event, fn);
      resolve(payload);
    };
    client.on(event, fn);
  });
}

/** Poll `fn` (sync or async) until it returns a truthy value, and return
 * it; fail after `ms` naming `what`. */
export async function poll(fn, what, ms = 20000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

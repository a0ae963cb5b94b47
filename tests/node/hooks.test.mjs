// tether.js rpc() against the real `tether serve` with its RPC hook and a
// real backend process (examples/auth-backend/backend.py, Python's
// standard library): the backend's answers come back as rpc() results, its
// error codes as rejections, and a backend that does not answer in time
// as the code "timeout". The connect hook admits the token user:ada (sent
// as ?token=, as a browser would) as the user ada.
//
//   TETHER_BIN=target/release/tether node --test tests/node/hooks.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { fileURLToPath } from "node:url";
import WebSocket from "ws";
import { freePort, startServer, stopServer, next } from "../support/tether-server.mjs";
import TetherClient from "tether-client";

const SECRET = "node-hooks-secret";
let port;
let server;
let backend;

function startBackend() {
  const script = fileURLToPath(new URL("../../examples/auth-backend/backend.py", import.meta.url));
  return new Promise((resolve, reject) => {
    const child = spawn(process.env.TETHER_PYTHON || "python3", [script, "--port", "0", "--webhook-secret", SECRET], { stdio: ["ignore", "pipe", "inherit"] });
    let out = "";
    child.stdout.on("data", (d) => {
      out += d;
      const first = out.split("\n")[0];
      if (out.includes("\n") && !child.port) {
        child.port = JSON.parse(first).listening;
        resolve(child);
      }
    });
    child.on("exit", (code) => reject(new Error(`backend.py exited with ${code}: ${out}`)));
  });
}

before(async () => {
  backend = await startBackend();
  port = await freePort();
  const hooks = `http://127.0.0.1:${backend.port}/hooks`;
  server = await startServer(port, ["--hook-url", hooks, "--hook-secret", SECRET, "--hook-connect", "closed", "--hook-rpc", "--hook-timeout", "1s"]);
});
after(async () => {
  if (server) await stopServer(server);
  if (backend) await stopServer(backend);
});

test("rpc() resolves with the backend's answer and rejects with its error codes", async () => {
  const client = new TetherClient(`ws://127.0.0.1:${port}/?token=user:ada`, { json: true, WebSocket, reconnect: false, heartbeatInterval: 0 });
  await next(client, "message", (m) => m.type === "welcome");
  assert.deepEqual(await client.rpc("add", { a: 2, b: 40 }), { sum: 42 });
  assert.equal((await client.rpc("whoami")).user, "ada");
  await assert.rejects(client.rpc("nope", {}), (e) => e.code === "not_found");
  await assert.rejects(client.rpc("sleep", { s: 3 }), (e) => e.code === "timeout");
  client.close();
});

test("the connect hook's refusals are the handshake's status: 403 banned, 401 no token", async () => {
  const status = (query) => new Promise((resolve) => {
    const ws = new WebSocket(`ws://127.0.0.1:${port}/${query}`, "tether.v1");
    ws.on("unexpected-response", (_req, res) => resolve(res.statusCode));
    ws.on("open", () => { ws.close(); resolve(101); });
    ws.on("error", () => {});
  });
  assert.equal(await status("?token=banned"), 403);
  assert.equal(await status(""), 401);
  assert.equal(await status("?token=user:ada"), 101);
});

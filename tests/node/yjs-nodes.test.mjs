// Yjs documents across nodes: two `tether serve --broker redis://...` nodes
// behind nginx (least_conn), a real redis-server, and the real `yjs` +
// `y-websocket` client from npm with `disableBc: true`. Two clients on
// different nodes converge and see each other's awareness; a client on a
// node that never had the document open gets the whole state; after every
// client left (both nodes wrote the document back to Redis), a new one on
// either node still gets everything; after Redis restarted empty, edits
// cross nodes again and the state of an open document is back in Redis.
//
//   TETHER_BIN=target/release/tether node --test tests/node/yjs-nodes.test.mjs

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn, execFileSync } from "node:child_process";
import { mkdtempSync, writeFileSync, rmSync, existsSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createConnection } from "node:net";
import { freePort, startServer, stopServer } from "../support/tether-server.mjs";
import { peer, until } from "./yjs-peer.mjs";

const NGINX = ["/usr/sbin/nginx", "/usr/bin/nginx"].find(existsSync);
const REDIS = (() => {
  try {
    return execFileSync("sh", ["-c", "command -v redis-server"]).toString().trim();
  } catch {
    return null;
  }
})();
// As the Rust cluster tests: missing programs fail the run unless the
// developer opts out with TETHER_SKIP_CLUSTER=1 (CI sets nothing).
if ((!NGINX || !REDIS) && process.env.TETHER_SKIP_CLUSTER !== "1") {
  throw new Error("yjs-nodes needs redis-server and nginx: run scripts/deps.sh (or set TETHER_SKIP_CLUSTER=1 to skip)");
}
const skip = !NGINX || !REDIS ? "needs redis-server and nginx (TETHER_SKIP_CLUSTER=1)" : false;

const children = [];
let dir, redisPort, nodes, proxyPort;

function waitPort(port, ms = 10000) {
  const deadline = Date.now() + ms;
  return new Promise((resolve, reject) => {
    const attempt = () => {
      const sock = createConnection({ host: "127.0.0.1", port }, () => {
        sock.destroy();
        resolve();
      });
      sock.on("error", () => {
        if (Date.now() > deadline) reject(new Error(`nothing listens on ${port}`));
        else setTimeout(attempt, 50);
      });
    };
    attempt();
  });
}

let redis;
/** redis-server on `redisPort`, without persistence (a restart empties it). */
async function startRedis() {
  redis = spawn(REDIS, ["--port", String(redisPort), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", dir], { stdio: "ignore" });
  children.push(redis);
  await waitPort(redisPort);
}

before(async () => {
  if (skip) return;
  dir = mkdtempSync(join(tmpdir(), "tether-yjs-nodes-"));
  redisPort = await freePort();
  await startRedis();
  nodes = [];
  for (let i = 0; i < 2; i++) {
    const port = await freePort();
    const child = await startServer(port, ["--broker", `redis://127.0.0.1:${redisPort}`]);
    children.push(child);
    nodes.push(port);
  }
  proxyPort = await freePort();
  writeFileSync(join(dir, "nginx.conf"), `
worker_processes 1;
pid ${dir}/nginx.pid;
error_log ${dir}/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path ${dir}/body; proxy_temp_path ${dir}/proxy; fastcgi_temp_path ${dir}/fastcgi;
  uwsgi_temp_path ${dir}/uwsgi; scgi_temp_path ${dir}/scgi;
  map $http_upgrade $connection_upgrade { default upgrade; '' close; }
  upstream tether { least_conn; ${nodes.map((p) => `server 127.0.0.1:${p};`).join(" ")} }
  server {
    listen 127.0.0.1:${proxyPort};
    location / {
      proxy_pass http://tether;
      proxy_http_version 1.1;
      proxy_set_header Upgrade $http_upgrade;
      proxy_set_header Connection $connection_upgrade;
      proxy_read_timeout 75s;
      proxy_buffering off;
    }
  }
}
`);
  const nginx = spawn(NGINX, ["-p", dir, "-c", join(dir, "nginx.conf"), "-g", "daemon off;"], { stdio: "ignore" });
  children.push(nginx);
  await waitPort(proxyPort);
});

after(async () => {
  await Promise.all(children.map((c) => stopServer(c)));
  if (dir) rmSync(dir, { recursive: true, force: true });
});

async function metric(port, name) {
  const text = await (await fetch(`http://127.0.0.1:${port}/metrics`)).text();
  const line = text.split("\n").find((l) => l.startsWith(name + " "));
  return line === undefined ? undefined : Number(line.split(" ")[1]);
}

async function untilMetric(port, name, pred, what, ms = 15000) {
  const deadline = Date.now() + ms;
  for (;;) {
    const value = await metric(port, name);
    if (pred(value)) return value;
    if (Date.now() > deadline) throw new Error(`${name} on ${port} is ${value}: ${what}`);
    await new Promise((r) => setTimeout(r, 50));
  }
}

const synced = (p) => until(() => p.provider.synced, "provider synced");

test("two clients on different nodes behind nginx converge, see each other, and a late joiner on either node gets the state", { skip }, async () => {
  const url = `ws://127.0.0.1:${proxyPort}/yjs`;
  const a = peer(url, "shared");
  await synced(a);
  const b = peer(url, "shared");
  await synced(b);
  // nginx (least_conn) put them on different nodes.
  for (const port of nodes) await untilMetric(port, "tether_yjs_connections", (v) => v === 1, "one client per node");

  // Concurrent edits on both nodes.
  a.text.insert(0, "alpha ");
  b.text.insert(0, "beta ");
  a.doc.getMap("m").set("a", 1);
  b.doc.getMap("m").set("b", 2);
  let added = 0;
  for (let i = 0; i < 30; i++) {
    a.text.insert(a.text.length, `a${i}`);
    b.text.insert(0, `b${i}`);
    added += 2 * String(i).length + 2;
  }
  const want = "alpha ".length + "beta ".length + added;
  await until(() => a.text.toString() === b.text.toString() && a.text.length === want && a.doc.getMap("m").size === 2 && b.doc.getMap("m").size === 2, "converged across nodes");
  assert.deepEqual(a.doc.getMap("m").toJSON(), { a: 1, b: 2 });
  const text = a.text.toString();

  // Awareness crosses nodes too, and is cleared there when its client goes.
  a.provider.awareness.setLocalStateField("user", { name: "ada" });
  b.provider.awareness.setLocalStateField("user", { name: "bob" });
  await until(() => b.provider.awareness.getStates().get(a.doc.clientID)?.user?.name === "ada", "b sees ada");
  await until(() => a.provider.awareness.getStates().get(b.doc.clientID)?.user?.name === "bob", "a sees bob");

  // A third client straight to each node gets the state.
  for (const port of nodes) {
    const direct = peer(`ws://127.0.0.1:${port}/yjs`, "shared");
    await synced(direct);
    await until(() => direct.text.toString() === text, `a client on node ${port} has the text`);
    // It sees both awareness states at once (the other node's included).
    await until(() => direct.provider.awareness.getStates().get(a.doc.clientID)?.user?.name === "ada" && direct.provider.awareness.getStates().get(b.doc.clientID)?.user?.name === "bob", `both cursors on node ${port}`);
    direct.close();
  }

  const aId = a.doc.clientID;
  a.provider.ws.terminate();
  a.provider.shouldConnect = false;
  await until(() => !b.provider.awareness.getStates().has(aId), "ada's state cleared on the other node");
  a.close();
  b.close();
  // Both nodes close the document (written back whole to Redis).
  for (const port of nodes) await untilMetric(port, "tether_yjs_documents", (v) => v === 0, "the document closed");
  for (const port of nodes) {
    const late = peer(`ws://127.0.0.1:${port}/yjs`, "shared");
    await synced(late);
    await until(() => late.text.toString() === text && late.doc.getMap("m").size === 2, `a late joiner on node ${port} has everything`);
    late.close();
    await untilMetric(port, "tether_yjs_documents", (v) => v === 0, "closed again");
  }
});

test("a document edited on one node only reaches a client of the other node, live and late", { skip }, async () => {
  const [n1, n2] = nodes;
  const a = peer(`ws://127.0.0.1:${n1}/yjs`, "one-side");
  await synced(a);
  a.text.insert(0, "from node one");
  // Node two has never opened the document: it comes from Redis.
  const b = peer(`ws://127.0.0.1:${n2}/yjs`, "one-side");
  await synced(b);
  await until(() => b.text.toString() === "from node one", "late joiner on node two");
  // Then live, both ways.
  b.text.insert(b.text.length, ", and node two");
  a.text.insert(0, "[a] ");
  await until(() => a.text.toString() === b.text.toString() && a.text.toString() === "[a] from node one, and node two", "live both ways");
  a.close();
  b.close();
});

test("Redis restarts empty: edits cross nodes again, and an open document's state is written back", { skip }, async () => {
  const [n1, n2] = nodes;
  const a = peer(`ws://127.0.0.1:${n1}/yjs`, "restart");
  const b = peer(`ws://127.0.0.1:${n2}/yjs`, "restart");
  await Promise.all([synced(a), synced(b)]);
  a.text.insert(0, "before");
  await until(() => b.text.toString() === "before", "b has a's edit");
  b.close();
  await untilMetric(n2, "tether_yjs_documents", (v) => v === 0, "node two closed the document");
  // Redis dies and comes back with nothing.
  await stopServer(redis);
  await startRedis();
  // Node one notices (its listener reconnects) and writes the document it
  // has open back, and sends it to the other nodes: a client on node two
  // (which had closed it: it opens it from Redis, before or after) gets it all.
  const late = peer(`ws://127.0.0.1:${n2}/yjs`, "restart");
  await synced(late);
  await until(() => late.text.toString() === "before", "the state is back in Redis", 20000);
  // And live edits cross again, both ways.
  a.text.insert(a.text.length, " after");
  late.text.insert(0, "[late] ");
  await until(() => a.text.toString() === "[late] before after" && late.text.toString() === "[late] before after", "live again both ways", 20000);
  a.close();
  late.close();
});

// nginx for the Node and browser tests: a configuration from deploy/ run
// with this test's ports in a temporary directory (the same rewriting as
// crates/tether-cli/tests/common/mod.rs does for the Rust tests).

import { spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { connect } from "node:net";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

/** The nginx binary (Debian puts it in /usr/sbin), or null. */
export function nginxBin() {
  const dirs = (process.env.PATH || "").split(":").concat(["/usr/sbin", "/usr/local/sbin"]);
  return dirs.map((d) => join(d, "nginx")).find((p) => existsSync(p)) || null;
}

/** deploy/NAME with nginx listening on `port`, proxying to `upstreams`. */
export function nginxConfig(name, dir, port, upstreams) {
  const deploy = readFileSync(fileURLToPath(new URL(`../../deploy/${name}`, import.meta.url)), "utf8");
  const out = [];
  let servers = false;
  for (const line of deploy.split("\n")) {
    const t = line.trim();
    const upstream = /^server 127\.0\.0\.1:\d+( .*)?;$/.exec(t);
    if (upstream) {
      if (!servers) upstreams.forEach((p) => out.push(`        server 127.0.0.1:${p}${upstream[1] || ""};`));
      servers = true;
    } else if (t === "worker_processes auto;") {
      out.push("worker_processes 1;", `pid ${dir}/nginx.pid;`);
    } else if (t === "listen 80;") {
      out.push(`        listen 127.0.0.1:${port};`);
    } else if (t === "http {") {
      out.push("http {", ...["client_body", "proxy", "fastcgi", "uwsgi", "scgi"].map((k) => `    ${k}_temp_path ${dir}/${k};`));
    } else {
      out.push(line);
    }
  }
  const conf = out.join("\n");
  if (!servers || !conf.includes(`listen 127.0.0.1:${port};`)) throw new Error(`deploy/${name} changed shape:\n${conf}`);
  return conf;
}

function waitForPort(port, child) {
  return new Promise((resolve, reject) => {
    const deadline = Date.now() + 10000;
    const tryOnce = () => {
      if (child.exitCode !== null) return reject(new Error(`nginx exited with ${child.exitCode}`));
      const s = connect(port, "127.0.0.1");
      s.on("connect", () => { s.destroy(); resolve(); });
      s.on("error", () => {
        if (Date.now() > deadline) reject(new Error(`nginx did not listen on ${port}`));
        else setTimeout(tryOnce, 50);
      });
    };
    tryOnce();
  });
}

/** Starts nginx with deploy/NAME on `port`; resolves with { stop(), errorLog() }. */
export async function startNginx(name, port, upstreams) {
  const bin = nginxBin();
  if (!bin) throw new Error("nginx is not installed: run scripts/deps.sh");
  const dir = mkdtempSync(join(tmpdir(), "tether-nginx-"));
  writeFileSync(join(dir, "nginx.conf"), nginxConfig(name, dir, port, upstreams));
  const child = spawn(bin, ["-p", dir, "-e", join(dir, "error.log"), "-c", join(dir, "nginx.conf"), "-g", "daemon off;"], { stdio: ["ignore", "ignore", "inherit"] });
  await waitForPort(port, child);
  return {
    errorLog: () => { try { return readFileSync(join(dir, "error.log"), "utf8"); } catch { return ""; } },
    stop: () => new Promise((resolve) => {
      const done = () => { rmSync(dir, { recursive: true, force: true }); resolve(); };
      if (child.exitCode !== null || child.signalCode !== null) return done();
      child.on("exit", done);
      // SIGTERM: the master stops its workers (a SIGKILLed master would leave them).
      child.kill("SIGTERM");
    }),
  };
}

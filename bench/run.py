#!/usr/bin/env python3
"""Run the same scenarios against tether and its peers, in one run, and write
BENCHMARKS.md (the comparison section) from the results.

    bench/run.py                 everything (~15 min)
    bench/run.py --quick         1 sample, shorter runs (a smoke test, ~3 min)
    bench/run.py --only echo     one group: echo, memory, broadcast
    bench/run.py issue16 --rounds 3
                                 the #16 comparison with uWebSockets as a peer and
                                 two echo generators (bench/issue16.py; its --help)

Environment: TETHER_BIN=/path/to/tether replaces target/release/tether (as the
server and as the load generator). TETHER_BASELINE=/path/to/older/tether adds
"tether (baseline)" to the echo servers and "tether serve (baseline)" to the
broadcast servers (same arguments, minus flags it predates), and a table of
current / baseline for msg/s and server CPU µs per message.

Method: each server is pinned to CPU 0 and the load generator (`tether bench`,
one thread) to CPU 1 with taskset. Every scenario runs --samples times (default
3) against each server, in rotation, and the median is reported. Ratios are
tether / peer in the same run. Needs: a release build (`cargo build --release
-p tether-cli`), bench/build-peers.sh, and node for the ws peers.
"""
import argparse
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TETHER = os.environ.get("TETHER_BIN") or os.path.join(ROOT, "target/release/tether")
BASELINE = os.environ.get("TETHER_BASELINE")
PEERS = os.path.join(ROOT, "bench/peers/target/release")
NODE_DIR = os.path.join(ROOT, "bench/node")
RESULTS = os.path.join(ROOT, "bench/results")

ECHO_SERVERS = {
    "tether": lambda port: [TETHER, "echo", "--listen", f"127.0.0.1:{port}"],
    "fastwebsockets": lambda port: [f"{PEERS}/fastwebsockets-echo", "--listen", f"127.0.0.1:{port}"],
    "tokio-tungstenite": lambda port: [f"{PEERS}/tungstenite-echo", "--listen", f"127.0.0.1:{port}"],
    "node-ws": lambda port: ["node", f"{NODE_DIR}/echo.js", "--listen", f"127.0.0.1:{port}"],
}
BROADCAST_SERVERS = {
    # The load comes from one address and one publisher per topic: the
    # per-address and per-connection rate limits of a public server are off.
    "tether serve": lambda port: [TETHER, "serve", "--listen", f"127.0.0.1:{port}", "--queue-max-messages", "100000",
                                  "--queue-max-bytes", "268435456", "--message-rate", "0",
                                  "--max-connections", "100000", "--max-connections-per-ip", "100000"],
    "tokio-tungstenite": lambda port: [f"{PEERS}/tungstenite-broadcast", "--listen", f"127.0.0.1:{port}"],
    "node-ws": lambda port: ["node", f"{NODE_DIR}/broadcast.js", "--listen", f"127.0.0.1:{port}"],
}
IDLE_SERVERS = dict(ECHO_SERVERS)
IDLE_SERVERS["tether serve (heartbeat 30s)"] = lambda port: [TETHER, "serve", "--listen", f"127.0.0.1:{port}",
                                                             "--max-connections", "100000",
                                                             "--max-connections-per-ip", "100000"]
if BASELINE:
    # A build from before #11: it has no --message-rate or --max-connections-per-ip (and no such limits).
    ECHO_SERVERS["tether (baseline)"] = lambda port: [BASELINE, "echo", "--listen", f"127.0.0.1:{port}"]
    BROADCAST_SERVERS["tether serve (baseline)"] = lambda port: [
        BASELINE, "serve", "--listen", f"127.0.0.1:{port}", "--queue-max-messages", "100000",
        "--queue-max-bytes", "268435456", "--max-connections", "100000"]

ECHO_SCENARIOS = [
    # (name, connections, size)
    ("20 B x 100 conns", 100, 20),
    ("1 KiB x 10 conns", 10, 1024),
    ("16 KiB x 200 conns", 200, 16384),
]


def log(msg):
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def raise_nofile():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


class Server:
    def __init__(self, cmd, port):
        self.port = port
        self.proc = subprocess.Popen(["taskset", "-c", "0"] + cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     env=dict(os.environ, RUST_LOG="warn"))
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"server did not start: {' '.join(cmd)}")

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()


def bench(args):
    cmd = ["taskset", "-c", "1", TETHER, "bench"] + args + ["--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if not out.stdout.strip():
        raise RuntimeError(f"bench failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout)


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def cpu_us(r, per_sec):
    """Server CPU (user + system) per message or delivery, in microseconds."""
    cpu = (r.get("server") or {}).get("cpu_percent")
    return cpu / 100 / per_sec * 1e6 if cpu is not None and per_sec else None


def run_echo(opts):
    rows = []
    for name, conns, size in ECHO_SCENARIOS:
        samples = {s: [] for s in ECHO_SERVERS}
        for i in range(opts.samples):
            for server_name, cmd in ECHO_SERVERS.items():
                port = free_port()
                srv = Server(cmd(port), port)
                try:
                    r = bench(["echo", "--url", f"ws://127.0.0.1:{port}/", "--connections", str(conns), "--size",
                               str(size), "--duration", str(opts.duration), "--warmup", "1", "--pid", str(srv.pid)])
                finally:
                    srv.stop()
                errors = sum(v for k, v in r["errors"].items() if isinstance(v, int))
                samples[server_name].append({
                    "msgs": r["messages_per_sec"], "p50": r["latency"]["p50_us"], "p99": r["latency"]["p99_us"],
                    "server_cpu": (r.get("server") or {}).get("cpu_percent"),
                    "cpu_us": cpu_us(r, r["messages_per_sec"]),
                    "client_cpu": r.get("client_cpu_percent"), "errors": errors,
                })
                log(f"echo {name} {server_name} sample {i + 1}: {r['messages_per_sec']:.0f} msg/s, "
                    f"server cpu {(r.get('server') or {}).get('cpu_percent')}%, errors {errors}")
        for server_name, ss in samples.items():
            rows.append({
                "scenario": name, "server": server_name, "msgs_per_sec": median([s["msgs"] for s in ss]),
                "p50_us": median([s["p50"] for s in ss]), "p99_us": median([s["p99"] for s in ss]),
                "server_cpu": median([s["server_cpu"] for s in ss]), "client_cpu": median([s["client_cpu"] for s in ss]),
                "cpu_us_per_msg": median([s["cpu_us"] for s in ss]),
                "errors": sum(s["errors"] for s in ss), "samples": [s["msgs"] for s in ss],
            })
    return rows


def run_memory(opts):
    rows = []
    count = opts.idle
    for server_name, cmd in IDLE_SERVERS.items():
        per_conn = []
        for i in range(max(1, opts.samples - 1)):
            port = free_port()
            srv = Server(cmd(port), port)
            try:
                r = bench(["connections", "--url", f"ws://127.0.0.1:{port}/idle", "--count", str(count), "--hold", "3",
                           "--pid", str(srv.pid)])
            finally:
                srv.stop()
            mem = r.get("server_memory") or r.get("server") or {}
            value = mem.get("bytes_per_connection")
            per_conn.append(value)
            log(f"memory {server_name} sample {i + 1}: {value} B/conn ({r['connect']['connected']} connected)")
        rows.append({"server": server_name, "connections": count, "bytes_per_conn": median(per_conn),
                     "samples": per_conn})
    return rows


def run_broadcast(opts):
    rows = []
    scenarios = [
        ("all: 100 clients x 20 msg/s (200k deliveries/s offered)",
         ["--mode", "all", "--clients", "100", "--rate", "20"]),
        ("fanout: 1 publisher -> 10,000 subscribers x 50 msg/s (500k deliveries/s offered)",
         ["--mode", "fanout", "--clients", "10000", "--publishers", "1", "--rate", "50"]),
        ("fanout: 1 publisher -> 10,000 subscribers x 150 msg/s (1.5M deliveries/s offered)",
         ["--mode", "fanout", "--clients", "10000", "--publishers", "1", "--rate", "150"]),
    ]
    for name, extra in scenarios:
        samples = {s: [] for s in BROADCAST_SERVERS}
        for i in range(opts.samples):
            for server_name, cmd in BROADCAST_SERVERS.items():
                port = free_port()
                srv = Server(cmd(port), port)
                try:
                    r = bench(["broadcast", "--url", f"ws://127.0.0.1:{port}/bench", "--size", "64", "--duration",
                               str(opts.duration), "--warmup", "1", "--pid", str(srv.pid)] + extra)
                finally:
                    srv.stop()
                samples[server_name].append(r)
                log(f"broadcast {name} {server_name} sample {i + 1}: "
                    f"{r.get('deliveries_per_sec', 0):.0f} deliveries/s, "
                    f"server cpu {(r.get('server') or {}).get('cpu_percent')}%, lost {r.get('lost', r.get('errors', {}).get('lost_messages'))}")
        for server_name, ss in samples.items():
            rows.append({
                "scenario": name, "server": server_name,
                "deliveries_per_sec": median([r.get("deliveries_per_sec") for r in ss]),
                "p50_us": median([(r.get("last_delivery_latency") or {}).get("p50_us") for r in ss]),
                "p99_us": median([(r.get("last_delivery_latency") or {}).get("p99_us") for r in ss]),
                "lost": median([(r.get("errors") or {}).get("lost_messages") for r in ss]),
                "server_cpu": median([(r.get("server") or {}).get("cpu_percent") for r in ss]),
                "cpu_us_per_msg": median([cpu_us(r, r.get("deliveries_per_sec")) for r in ss]),
            })
    return rows


def fmt(v, digits=0):
    if v is None:
        return "n/a"
    if digits == 0:
        return f"{v:,.0f}"
    return f"{v:,.{digits}f}"


def ratio(a, b):
    if not a or not b:
        return "n/a"
    return f"{a / b:.2f}x"


def machine():
    cpu = "unknown"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    rustc = subprocess.run(["rustc", "--version"], capture_output=True, text=True).stdout.strip()
    node = subprocess.run(["node", "--version"], capture_output=True, text=True).stdout.strip() if shutil.which("node") else "none"
    return f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}, {rustc}, node {node}"


def render(results, opts):
    out = []
    out.append(f"Generated by `bench/run.py{' --quick' if opts.quick else ''}` on {results['date']}.")
    out.append(f"Machine: {results['machine']}.")
    out.append(f"Method: server pinned to CPU 0, load generator (`tether bench`, one thread) pinned to CPU 1; "
               f"{opts.samples} sample(s) per cell, {opts.duration:g} s each after 1 s warmup, median reported. "
               "Ratios are tether / peer, from the same run. The machine is shared: read ratios, not absolutes.")
    out.append("")
    if "echo" in results:
        out.append("### Echo, closed loop (one message in flight per connection)")
        out.append("")
        out.append("| scenario | server | msg/s | p50 µs | p99 µs | server CPU % | tether / this |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for scenario, _, _ in ECHO_SCENARIOS:
            rows = [r for r in results["echo"] if r["scenario"] == scenario]
            ours = next((r["msgs_per_sec"] for r in rows if r["server"] == "tether"), None)
            for r in rows:
                out.append(f"| {scenario} | {r['server']} | {fmt(r['msgs_per_sec'])} | {fmt(r['p50_us'], 1)} | "
                           f"{fmt(r['p99_us'], 1)} | {fmt(r['server_cpu'])} | "
                           f"{'' if r['server'] == 'tether' else ratio(ours, r['msgs_per_sec'])} |")
        out.append("")
    if "memory" in results:
        out.append(f"### Memory per idle connection ({results['memory'][0]['connections']:,} connections, server VmRSS after - before)")
        out.append("")
        out.append("| server | bytes per connection | KiB |")
        out.append("| --- | ---: | ---: |")
        for r in results["memory"]:
            b = r["bytes_per_conn"]
            out.append(f"| {r['server']} | {fmt(b)} | {fmt(b / 1024 if b else None, 2)} |")
        out.append("")
    if "broadcast" in results:
        out.append("### Broadcast (64-byte messages)")
        out.append("")
        out.append("| scenario | server | deliveries/s | publish-to-last-delivery p50 µs | p99 µs | lost | server CPU % | tether / this |")
        out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for scenario in dict.fromkeys(r["scenario"] for r in results["broadcast"]):
            rows = [r for r in results["broadcast"] if r["scenario"] == scenario]
            ours = next((r["deliveries_per_sec"] for r in rows if r["server"] == "tether serve"), None)
            for r in rows:
                out.append(f"| {scenario} | {r['server']} | {fmt(r['deliveries_per_sec'])} | {fmt(r['p50_us'], 1)} | "
                           f"{fmt(r['p99_us'], 1)} | {fmt(r['lost'])} | {fmt(r['server_cpu'])} | "
                           f"{'' if r['server'] == 'tether serve' else ratio(ours, r['deliveries_per_sec'])} |")
        out.append("")
    baseline = [(g, r) for g in ("echo", "broadcast") for r in results.get(g, []) if r["server"].endswith("(baseline)")]
    if baseline:
        out.append("### Current / baseline (TETHER_BASELINE)")
        out.append("")
        out.append("| scenario | msg/s current | msg/s baseline | ratio | server CPU µs/msg current | baseline | ratio |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for group, base in baseline:
            key = "msgs_per_sec" if group == "echo" else "deliveries_per_sec"
            cur = next((r for r in results[group] if r["scenario"] == base["scenario"]
                        and r["server"] == base["server"].replace(" (baseline)", "")), None)
            if cur:
                out.append(f"| {group}: {base['scenario']} | {fmt(cur[key])} | {fmt(base[key])} | "
                           f"{ratio(cur[key], base[key])} | {fmt(cur.get('cpu_us_per_msg'), 3)} | "
                           f"{fmt(base.get('cpu_us_per_msg'), 3)} | "
                           f"{ratio(cur.get('cpu_us_per_msg'), base.get('cpu_us_per_msg'))} |")
        out.append("")
    return "\n".join(out)


def write_benchmarks_md(section):
    path = os.path.join(ROOT, "BENCHMARKS.md")
    begin, end = "<!-- bench/run.py:begin -->", "<!-- bench/run.py:end -->"
    text = open(path).read() if os.path.exists(path) else f"# Benchmarks\n\n{begin}\n{end}\n"
    if begin not in text:
        text += f"\n{begin}\n{end}\n"
    new = re.sub(re.escape(begin) + ".*?" + re.escape(end), lambda _: f"{begin}\n{section}\n{end}", text, flags=re.S)
    open(path, "w").write(new)
    log(f"wrote {path}")


def main():
    if sys.argv[1:2] == ["issue16"]:
        import issue16
        return issue16.main(sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="1 sample, 3 s runs, 2,000 idle connections")
    p.add_argument("--only", choices=["echo", "memory", "broadcast"], action="append")
    p.add_argument("--samples", type=int, default=3)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--idle", type=int, default=15000, help="idle connections for the memory scenario")
    p.add_argument("--no-write", action="store_true", help="print the table, leave BENCHMARKS.md alone")
    opts = p.parse_args()
    if opts.quick:
        opts.samples, opts.duration, opts.idle = 1, 3.0, 2000
    for binary in [TETHER, f"{PEERS}/fastwebsockets-echo"] + ([BASELINE] if BASELINE else []):
        if not os.path.exists(binary):
            sys.exit(f"missing {binary}: run `cargo build --release -p tether-cli` and bench/build-peers.sh")
    raise_nofile()
    groups = opts.only or ["echo", "memory", "broadcast"]
    results = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"), "machine": machine()}
    previous = os.path.join(RESULTS, "latest.json")
    if opts.only and os.path.exists(previous):
        # Keep the groups not re-run from the last run, so the table stays whole.
        old = json.load(open(previous))
        for group in ("echo", "memory", "broadcast"):
            if group not in groups and group in old:
                results[group] = old[group]
    if "echo" in groups:
        results["echo"] = run_echo(opts)
    if "memory" in groups:
        results["memory"] = run_memory(opts)
    if "broadcast" in groups:
        results["broadcast"] = run_broadcast(opts)
    os.makedirs(RESULTS, exist_ok=True)
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump(results, f, indent=2)
    section = render(results, opts)
    print(section)
    if not opts.no_write:
        write_benchmarks_md(section)


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""One event loop against two: `tether serve` broadcast and `tether echo`, side by side.

    python3 bench/loops.py [--rounds 3] [--baseline OLD_TETHER_BIN]

On this machine kind (2 CPUs) the load generator needs a core of its own
for the rates that matter, so two event loops cannot be given two cores of
their own, and a second loop's gain cannot be measured directly. What this
runs instead is every configuration under the same conditions: server and
generator (`tether bench`) both on CPUs 0-1, 1 loop and 2 loops, at rising
offered broadcast rates (100 clients, all sending 64-byte messages, all
receiving, the sender included) and closed-loop echo (20 B x 100
connections). Reported per cell: delivered msg/s, publish-to-last-delivery
p99, messages lost (not delivered within 2 s), and the server's and the
generator's CPU % (user + system, /proc, over the measured window).

Server CPU per message is not printed: a loop that keeps up writes each
message as soon as it can (one send per delivery at low rates, batching as
the load grows), so its CPU % stays near 100 % from a few hundred thousand
deliveries/s up to its limit; CPU per message at a fixed rate says how busy
it chose to be, not what it could carry. The limit, where p99 and losses
grow, is the figure to compare.

Every cell runs --rounds times, binaries and configurations in rotation
inside a round; medians are reported. TETHER_BIN (default
target/release/tether) is the build under test, --baseline an older one.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVE_FLAGS = ["--queue-max-messages", "100000", "--queue-max-bytes", "268435456", "--message-rate", "0",
               "--max-connections", "100000", "--max-connections-per-ip", "100000"]


def free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_cell(binary, kind, threads, rate, duration):
    port = free_port()
    server_cpus = gen_cpus = "0,1"
    if kind == "broadcast":
        cmd = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--threads", str(threads)] + SERVE_FLAGS
    else:
        cmd = [binary, "echo", "--listen", f"127.0.0.1:{port}", "--threads", str(threads)]
    server = subprocess.Popen(["taskset", "-c", server_cpus] + cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.8)
        if kind == "broadcast":
            gen = ["bench", "broadcast", "--url", f"ws://127.0.0.1:{port}/b", "--clients", "100", "--mode", "all",
                   "--rate", str(rate), "--size", "64", "--warmup", "1", "--duration", str(duration)]
        else:
            gen = ["bench", "echo", "--url", f"ws://127.0.0.1:{port}/", "--connections", "100", "--size", "20",
                   "--binary", "--warmup", "1", "--duration", str(duration)]
        out = subprocess.run(["taskset", "-c", gen_cpus, binary] + gen + ["--pid", str(server.pid), "--json"],
                             capture_output=True, text=True, timeout=duration + 60)
        report = json.loads(out.stdout)
    finally:
        server.terminate()
        server.wait()
    cpu = report["server"]["cpu_percent"] / 100.0
    if kind == "broadcast":
        rate_done = report["deliveries_per_sec"]
        p99 = report["last_delivery_latency"]["p99_us"] / 1000.0
        lost = report["expected_deliveries"] - report["deliveries"]
    else:
        rate_done = report.get("messages_per_sec") or report.get("msgs_per_sec")
        p99 = report["latency"]["p99_us"] / 1000.0 if "latency" in report else None
        lost = 0
    return {"rate": rate_done, "p99_ms": p99, "lost": lost, "server_cpu": cpu * 100, "gen_cpu": report.get("client_cpu_percent"),
            "load": os.getloadavg()[0]}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=5, help="seconds measured per cell (after 1 s of warmup)")
    ap.add_argument("--baseline", help="an older tether binary, run in the same rounds")
    ap.add_argument("--rates", default="400,500,600,700,800", help="broadcast: messages/s per client (100 clients: x 10,000 deliveries/s)")
    args = ap.parse_args()
    binaries = [("tether", os.environ.get("TETHER_BIN", os.path.join(ROOT, "target/release/tether")))]
    if args.baseline:
        binaries.append(("baseline", args.baseline))
    cells = [("echo", t, None) for t in (1, 2)]
    cells += [("broadcast", t, int(r)) for r in args.rates.split(",") for t in (1, 2)]
    results = {}
    for rnd in range(args.rounds):
        for kind, threads, rate in cells:
            for name, binary in binaries:
                r = run_cell(binary, kind, threads, rate, args.duration)
                results.setdefault((name, kind, threads, rate), []).append(r)
                print(f"round {rnd + 1}/{args.rounds} {name} {kind} rate={rate} loops={threads}: "
                      f"{r['rate']:,.0f}/s, p99 {r['p99_ms']} ms, lost {r['lost']}, server {r['server_cpu']:.0f} %, generator {r['gen_cpu']} %, load {r['load']:.2f}",
                      file=sys.stderr, flush=True)
    med = lambda xs: statistics.median(x for x in xs if x is not None) if any(x is not None for x in xs) else None
    print("| what | offered | build | loops | msg/s | p99 ms | lost | server CPU % | generator CPU % |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for kind, threads, rate in cells:
        for name, _ in binaries:
            rs = results[(name, kind, threads, rate)]
            offered = f"{rate * 100 * 100:,}/s" if kind == "broadcast" else "closed loop"
            p99 = med([r["p99_ms"] for r in rs])
            print(f"| {kind} | {offered} | {name} | {threads} | {med([r['rate'] for r in rs]):,.0f} | "
                  f"{'' if p99 is None else f'{p99:,.1f}'} | {med([r['lost'] for r in rs]):,.0f} | "
                  f"{med([r['server_cpu'] for r in rs]):.0f} | {med([r['gen_cpu'] for r in rs]):.0f} |")
    loads = [r["load"] for rs in results.values() for r in rs]
    print(f"\n1-minute load average after each cell: min {min(loads):.2f}, median {statistics.median(loads):.2f}, max {max(loads):.2f}")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""The #16 comparison: tether against uWebSockets and the other peers, as markdown tables.

    python3 bench/run.py issue16 --rounds 3        everything (~35 min on 2 cores)
    python3 bench/run.py issue16 --quick           1 round, short runs (a smoke test, ~6 min)
    python3 bench/run.py issue16 --only echo       one group: echo, memory, broadcast

What it measures (server pinned to CPU 0, load generator to CPU 1, every cell
run --rounds times with the servers in rotation, medians reported):

- echo at 20 B x 100 conns, 1 KiB x 10 conns, 16 KiB x 200 conns, with two
  generators: `tether bench echo` and uWebSockets' own benchmarks/load_test.c
  (binary frames, one message in flight per connection, as tether bench does).
  msg/s, and server CPU per echoed message: user + system ticks from
  /proc/PID/stat over the measured window, divided by the messages echoed in it.
- idle memory per connection at --idle connections (default 15,000): server
  VmRSS after the handshakes minus before, over the connections (`tether bench
  connections`).
- broadcast, 64-byte messages, every client sends and receives (sender
  included), at 100 and 500 clients and rising offered rates: sustained
  deliveries/s, publish-to-last-delivery p50/p99, lost messages, server CPU per
  delivery (`tether bench broadcast --mode all`). A server that delivered less
  than half of what was offered is not run at the higher rates of that client
  count (its queues would only grow).

The 1-minute load average (/proc/loadavg) is read before and after every cell,
printed on its progress line and summarised under each table: the machine may
be shared, and CPU per message is the figure that survives that best.

Binaries: TETHER_BIN (default target/release/tether) is the tether under test;
TETHER_BASELINE adds "tether (baseline)" rows. uWebSockets is built by hand
outside the repository (BENCHMARKS.md says how) and found through
UWS_ECHO_BIN, UWS_BROADCAST_BIN (servers: `BIN PORT [HOST]`) and
UWS_LOAD_TEST_BIN (benchmarks/load_test.c: `connections host port ssl deflate
size`); each one unset is skipped with a message. The Rust and Node peers come
from bench/build-peers.sh.
"""
import argparse
import datetime
import json
import os
import platform
import queue
import re
import resource
import shutil
import subprocess
import sys
import threading
import time

import run as base

UWS_ECHO = os.environ.get("UWS_ECHO_BIN")
UWS_BROADCAST = os.environ.get("UWS_BROADCAST_BIN")
UWS_LOAD_TEST = os.environ.get("UWS_LOAD_TEST_BIN")
CLK_TCK = os.sysconf("SC_CLK_TCK")
REFERENCE = "uWebSockets"
# load_test prints the responses of the last LIBUS_TIMEOUT_GRANULARITY (4 s) divided by 4.
LOAD_TEST_PERIOD = 4.0

BROADCAST_RATES = {
    # clients -> messages/s per client; offered deliveries/s = clients^2 x rate
    100: [100, 200, 400, 800],  # 1M, 2M, 4M, 8M
    500: [4, 8, 16],  # 1M, 2M, 4M
}
QUICK_BROADCAST_RATES = {100: [100, 400], 500: [8]}


def log(msg):
    print(f"[issue16] {msg}", file=sys.stderr, flush=True)


def loadavg():
    try:
        return float(open("/proc/loadavg").read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def cpu_ticks(pid):
    """utime + stime of a process (all its threads), in clock ticks; None if gone."""
    try:
        return ticks_from_stat(open(f"/proc/{pid}/stat").read())
    except OSError:
        return None


def ticks_from_stat(stat):
    """utime + stime from the text of /proc/PID/stat; the command name may hold spaces and parentheses."""
    fields = stat[stat.rindex(")") + 2:].split()
    return int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5)


def parse_load_test_line(line):
    """The msg/s of a load_test report line ("Msg/sec: 123.5"), None for other lines."""
    m = re.match(r"\s*Msg/sec:\s*([0-9.]+)\s*$", line)
    return float(m.group(1)) if m else None


def load_test_summary(reports, skip=1):
    """Aggregate load_test reports into msg/s and CPU per message.

    `reports` are (seconds, msgs_per_sec_printed, server_ticks, generator_ticks)
    taken when each "Msg/sec" line arrived. load_test counts the responses since
    its previous report exactly and divides them by 4; we multiply back, and use
    our own clock for the window. The first `skip` reports are warmup (the first
    window includes the connection ramp).
    """
    if len(reports) < skip + 2:
        return None
    msgs = secs = server = gen = 0.0
    for prev, cur in zip(reports[skip:], reports[skip + 1:]):
        msgs += cur[1] * LOAD_TEST_PERIOD
        secs += cur[0] - prev[0]
        server += cur[2] - prev[2]
        gen += cur[3] - prev[3]
    if msgs <= 0 or secs <= 0:
        return {"msgs_per_sec": 0.0, "cpu_us_per_msg": None, "server_cpu": server / CLK_TCK / secs * 100 if secs else None,
                "client_cpu": None, "windows": len(reports) - skip - 1, "seconds": secs}
    return {
        "msgs_per_sec": msgs / secs,
        "cpu_us_per_msg": server / CLK_TCK / msgs * 1e6,
        "server_cpu": server / CLK_TCK / secs * 100,
        "client_cpu": gen / CLK_TCK / secs * 100,
        "windows": len(reports) - skip - 1,
        "seconds": secs,
    }


def run_load_test(port, conns, size, windows, server_pid):
    """Run uWebSockets' load_test on CPU 1 for `windows` measured 4 s reports after one warmup report."""
    cmd = ["taskset", "-c", "1"] + NICE + ["stdbuf", "-oL", UWS_LOAD_TEST, str(conns), "127.0.0.1", str(port), "0", "0", str(size)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
    lines = queue.Queue()

    def reader():
        for line in proc.stdout:
            # Sample CPU the moment the report arrives: the window is load_test's own.
            lines.put((time.monotonic(), line, cpu_ticks(server_pid), cpu_ticks(proc.pid)))
        lines.put(None)

    threading.Thread(target=reader, daemon=True).start()
    reports, errors, first_error = [], 0, None
    deadline = time.monotonic() + 30 + (windows + 2) * LOAD_TEST_PERIOD * 2
    try:
        while len(reports) < windows + 2 and time.monotonic() < deadline:
            try:
                item = lines.get(timeout=1)
            except queue.Empty:
                continue
            if item is None:
                break
            t, line, server, gen = item
            rate = parse_load_test_line(line)
            if rate is not None and server is not None and gen is not None:
                reports.append((t, rate, server, gen))
            elif "ERROR" in line or line.strip() == "Closed!":
                errors += 1
                first_error = first_error or line.strip()
    finally:
        proc.kill()
        proc.wait()
    summary = load_test_summary(reports)
    if summary is None:
        raise RuntimeError(f"load_test gave {len(reports)} reports (wanted {windows + 2}); "
                           f"first error: {first_error}; command: {' '.join(cmd)}")
    summary["errors"] = errors
    return summary


NICE = []  # ["nice", "-n", N] with --nice N: for the servers and generators measured


def tether_bench(args):
    """`tether bench ... --json` on CPU 1, as run.py's bench(), with --nice applied."""
    cmd = ["taskset", "-c", "1"] + NICE + [base.TETHER, "bench"] + args + ["--json"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if not out.stdout.strip():
        raise RuntimeError(f"bench failed: {' '.join(cmd)}\n{out.stderr}")
    return json.loads(out.stdout)


def start_server(cmd, port):
    return base.Server(NICE + cmd(port), port)


def run_tether_bench(port, conns, size, duration, server_pid):
    r = tether_bench(["echo", "--url", f"ws://127.0.0.1:{port}/", "--connections", str(conns), "--size", str(size),
                    "--duration", str(duration), "--warmup", "1", "--pid", str(server_pid)])
    errors = sum(v for v in r["errors"].values() if isinstance(v, int))
    return {"msgs_per_sec": r["messages_per_sec"], "cpu_us_per_msg": base.cpu_us(r, r["messages_per_sec"]),
            "server_cpu": (r.get("server") or {}).get("cpu_percent"), "client_cpu": r.get("client_cpu_percent"),
            "p50_us": r["latency"]["p50_us"], "p99_us": r["latency"]["p99_us"], "errors": errors}


class Progress:
    def __init__(self, total):
        self.total, self.done, self.start = total, 0, time.monotonic()

    def step(self, what, result, load_before, load_after):
        self.done += 1
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done)
        log(f"[{self.done}/{self.total}, {elapsed / 60:.1f} min, ~{eta / 60:.0f} min left] {what}: {result} "
            f"(load {fmt_load(load_before)} -> {fmt_load(load_after)})")


def fmt_load(v):
    return "?" if v is None else f"{v:.2f}"


def available(opts):
    """The servers and generators that can run here, with a message for each one skipped."""
    def have(path):
        return bool(path) and (os.path.exists(path) or shutil.which(path))

    echo = {k: v for k, v in base.ECHO_SERVERS.items()}
    idle = {k: v for k, v in base.IDLE_SERVERS.items()}
    broadcast = {k: v for k, v in base.BROADCAST_SERVERS.items()}
    if have(UWS_ECHO):
        echo[REFERENCE] = idle[REFERENCE] = lambda port: [UWS_ECHO, str(port), "127.0.0.1"]
    else:
        log("uWebSockets echo skipped: set UWS_ECHO_BIN to a uWebSockets echo server (`BIN PORT [HOST]`)")
    if have(UWS_BROADCAST):
        broadcast[REFERENCE] = lambda port: [UWS_BROADCAST, str(port), "127.0.0.1"]
    else:
        log("uWebSockets broadcast skipped: set UWS_BROADCAST_BIN to a uWebSockets pub/sub server (`BIN PORT [HOST]`)")
    generators = ["tether bench"]
    if have(UWS_LOAD_TEST):
        generators.append("load_test")
    else:
        log("load_test generator skipped: set UWS_LOAD_TEST_BIN to uWebSockets' benchmarks/load_test built against uSockets")
    for group in (echo, idle, broadcast):
        for name in list(group):
            prog = group[name](0)[0]
            if not have(prog):
                hint = "run bench/build-peers.sh" if prog != "node" else "install node and run bench/build-peers.sh"
                log(f"{name} skipped: {prog} not found ({hint})")
                del group[name]
            elif prog == "node" and not os.path.isdir(os.path.join(base.NODE_DIR, "node_modules", "ws")):
                log(f"{name} skipped: bench/node/node_modules missing (run bench/build-peers.sh)")
                del group[name]
    if opts.servers:
        wanted = [s.strip() for s in opts.servers.split(",")]
        for group in (echo, idle, broadcast):
            for name in list(group):
                if not any(w == name or w == name.split(" (")[0] for w in wanted):
                    del group[name]
    return echo, idle, broadcast, generators


def cell(cmd, what, measure):
    """Start a server, run `measure(port, pid)` against it, stop it: (result or None, load before, load after)."""
    before = loadavg()
    port = base.free_port()
    result = None
    try:
        srv = start_server(cmd, port)
    except RuntimeError as e:
        log(f"{what}: failed: {e}")
        return None, before, loadavg()
    try:
        result = measure(port, srv.pid)
    except (RuntimeError, subprocess.TimeoutExpired, KeyError, ValueError) as e:
        log(f"{what}: failed: {e}")
    finally:
        srv.stop()
    return result, before, loadavg()


def run_echo(opts, servers, generators, progress):
    rows = []
    windows = max(1, round(opts.duration / LOAD_TEST_PERIOD))
    for scenario, conns, size in base.ECHO_SCENARIOS:
        samples = {(g, s): [] for g in generators for s in servers}
        for rnd in range(opts.rounds):
            for server_name, cmd in servers.items():
                for gen in generators:
                    if gen == "load_test":
                        measure = lambda port, pid: run_load_test(port, conns, size, windows, pid)
                    else:
                        measure = lambda port, pid: run_tether_bench(port, conns, size, opts.duration, pid)
                    r, before, after = cell(cmd, f"echo {scenario} {server_name} {gen}", measure)
                    if r:
                        r.update(load_before=before, load_after=after)
                        samples[(gen, server_name)].append(r)
                    progress.step(f"echo {scenario}, {server_name}, {gen}, round {rnd + 1}/{opts.rounds}",
                                  "failed" if not r else f"{r['msgs_per_sec']:,.0f} msg/s, server CPU "
                                  f"{fmt(r['cpu_us_per_msg'], 2)} us/msg ({fmt(r['server_cpu'])}%), errors {r['errors']}",
                                  before, after)
        for (gen, server_name), ss in samples.items():
            rows.append(summarise(ss, scenario=scenario, server=server_name, generator=gen))
    return rows


def summarise(ss, **keys):
    row = dict(keys)
    for k in ("msgs_per_sec", "cpu_us_per_msg", "server_cpu", "client_cpu", "p50_us", "p99_us"):
        row[k] = base.median([s.get(k) for s in ss])
    row["errors"] = sum(s.get("errors") or 0 for s in ss)
    row["samples"] = len(ss)
    row["loads"] = [x for s in ss for x in (s.get("load_before"), s.get("load_after")) if x is not None]
    return row


def run_memory(opts, servers, progress):
    rows = []
    for rnd in range(opts.rounds):
        for server_name, cmd in servers.items():
            r, before, after = cell(cmd, f"memory {server_name}", lambda port, pid: tether_bench(
                ["connections", "--url", f"ws://127.0.0.1:{port}/idle", "--count", str(opts.idle), "--hold", "3",
                 "--pid", str(pid)]))
            mem = (r or {}).get("server_memory") or {}
            sample = {"bytes_per_conn": mem.get("bytes_per_connection"), "rss_before": mem.get("rss_before_bytes"),
                      "rss_after": mem.get("rss_after_bytes"), "connected": ((r or {}).get("connect") or {}).get("connected"),
                      "load_before": before, "load_after": after}
            rows.append(dict(sample, server=server_name, round=rnd))
            progress.step(f"memory {opts.idle:,} idle, {server_name}, round {rnd + 1}/{opts.rounds}",
                          f"{fmt(sample['bytes_per_conn'])} B/conn, {sample['connected']} connected", before, after)
    out = []
    for server_name in servers:
        ss = [r for r in rows if r["server"] == server_name]
        out.append({"server": server_name, "connections": opts.idle,
                    "bytes_per_conn": base.median([s["bytes_per_conn"] for s in ss]),
                    "rss_before": base.median([s["rss_before"] for s in ss]),
                    "rss_after": base.median([s["rss_after"] for s in ss]),
                    "connected": min((s["connected"] or 0) for s in ss) if ss else None,
                    "all": [s["bytes_per_conn"] for s in ss],
                    "loads": [x for s in ss for x in (s["load_before"], s["load_after"]) if x is not None]})
    return out


def run_broadcast(opts, servers, progress):
    rows = []
    rates = QUICK_BROADCAST_RATES if opts.quick else BROADCAST_RATES
    for clients, per_client in rates.items():
        active = dict(servers)
        for rate in per_client:
            offered = clients * clients * rate
            samples = {s: [] for s in active}
            for rnd in range(opts.rounds):
                for server_name, cmd in active.items():
                    r, before, after = cell(cmd, f"broadcast {clients} x {rate}/s {server_name}", lambda port, pid: tether_bench(
                        ["broadcast", "--url", f"ws://127.0.0.1:{port}/bench", "--mode", "all", "--clients", str(clients),
                         "--rate", str(rate), "--size", "64", "--duration", str(opts.duration), "--warmup", "1",
                         "--pid", str(pid)]))
                    if r:
                        lat = r.get("last_delivery_latency") or {}
                        if not lat.get("count"):
                            lat = {}  # no message reached every receiver: no latency to report
                        s = {"deliveries_per_sec": r.get("deliveries_per_sec"), "p50_us": lat.get("p50_us"),
                             "p99_us": lat.get("p99_us"), "lost": (r.get("errors") or {}).get("lost_messages"),
                             "server_cpu": (r.get("server") or {}).get("cpu_percent"),
                             "cpu_us_per_msg": base.cpu_us(r, r.get("deliveries_per_sec")),
                             "client_cpu": r.get("client_cpu_percent"), "load_before": before, "load_after": after}
                        samples[server_name].append(s)
                    progress.step(f"broadcast {clients} clients x {rate} msg/s ({offered / 1e6:g}M deliveries/s offered), "
                                  f"{server_name}, round {rnd + 1}/{opts.rounds}",
                                  "failed" if not r else f"{fmt(s['deliveries_per_sec'])} deliveries/s, p99 "
                                  f"{fmt(s['p99_us'] / 1000 if s['p99_us'] is not None else None, 1)} ms, lost {fmt(s['lost'])}, server CPU "
                                  f"{fmt(s['cpu_us_per_msg'], 3)} us/delivery", before, after)
            for server_name, ss in samples.items():
                row = summarise(ss, clients=clients, rate=rate, offered=offered, server=server_name)
                row["deliveries_per_sec"] = base.median([s["deliveries_per_sec"] for s in ss])
                row["lost"] = base.median([s["lost"] for s in ss])
                rows.append(row)
                if not ss or (row["deliveries_per_sec"] or 0) < offered / 2:
                    log(f"broadcast: {server_name} delivered under half of {offered:,} deliveries/s offered at "
                        f"{clients} clients; not run at higher rates for {clients} clients")
                    del active[server_name]
        # Rates a server skipped show as such in the table.
        for rate in per_client:
            for server_name in servers:
                if not any(r["clients"] == clients and r["rate"] == rate and r["server"] == server_name for r in rows):
                    rows.append({"clients": clients, "rate": rate, "offered": clients * clients * rate,
                                 "server": server_name, "skipped": True})
    return rows


def fmt(v, digits=0):
    return base.fmt(v, digits)


def times(a, b):
    """a / b as "1.23x"."""
    return base.ratio(a, b)


def load_range(rows):
    loads = [x for r in rows for x in r.get("loads", [])]
    if not loads:
        return "load average not read"
    loads.sort()
    return (f"1-minute load average read before and after every cell: min {loads[0]:.2f}, "
            f"median {loads[len(loads) // 2]:.2f}, max {loads[-1]:.2f} (2 CPUs; 2.0 means both busy)")


def machine():
    cpu = "unknown"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or str(os.cpu_count())
    return f"{cpu}, nproc {nproc}, Linux {platform.release()}"


def tether_version():
    try:
        out = subprocess.run([base.TETHER, "--version"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        out = ""
    return f"{base.TETHER} ({out or 'version unknown'})"


def render(results, opts):
    out = [f"Generated by `python3 bench/run.py issue16 {results['args']}` on {results['date']}, "
           f"{results['elapsed_min']:.0f} min.",
           f"Machine: {results['machine']}. tether under test: `{results['tether']}`. "
           f"Priority: {'default' if results.get('nice') is None else 'nice ' + str(results['nice'])}.",
           f"Load average (1 min) at start {fmt_load(results['load_start'])}, at end {fmt_load(results['load_end'])}.",
           f"Each cell: {results['rounds']} round(s), servers in rotation, median reported; server on CPU 0, "
           "generator on CPU 1 (`taskset`). Ratios are tether / peer from the same run: for CPU per message "
           "below 1.00x means tether spends less, for msg/s and deliveries/s above 1.00x means tether does more.", ""]
    if results.get("echo"):
        rows = results["echo"]
        servers = list(dict.fromkeys(r["server"] for r in rows))
        gens = list(dict.fromkeys(r["generator"] for r in rows))
        scen = [s for s, _, _ in base.ECHO_SCENARIOS]
        out += ["### Echo: server CPU per echoed message, in brief", ""]
        out.append("| | " + " | ".join(scen) + " |")
        out.append("| --- |" + " ---: |" * len(scen))
        get = lambda g, s, sc: next((r for r in rows if r["generator"] == g and r["server"] == s and r["scenario"] == sc), {})
        for g in gens:
            for s in servers:
                out.append(f"| server CPU µs per message, {s}, {g} | " +
                           " | ".join(fmt(get(g, s, sc).get("cpu_us_per_msg"), 2) for sc in scen) + " |")
            if REFERENCE in servers and "tether" in servers:
                out.append(f"| CPU per message, tether / uWebSockets, {g} | " +
                           " | ".join(times(get(g, "tether", sc).get("cpu_us_per_msg"), get(g, REFERENCE, sc).get("cpu_us_per_msg"))
                                      for sc in scen) + " |")
                out.append(f"| throughput, tether / uWebSockets, {g} | " +
                           " | ".join(times(get(g, "tether", sc).get("msgs_per_sec"), get(g, REFERENCE, sc).get("msgs_per_sec"))
                                      for sc in scen) + " |")
        out.append("")
        for g in gens:
            out += [f"### Echo with `{g}` as the generator", ""]
            lat = g == "tether bench"
            out.append("| scenario | server | msg/s | tether / this | server CPU µs/msg | tether / this | server CPU % | "
                       "generator CPU % |" + (" p50 µs | p99 µs |" if lat else "") + " errors |")
            out.append("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |" + (" ---: | ---: |" if lat else "") + " ---: |")
            for sc in scen:
                ours = get(g, "tether", sc)
                for s in servers:
                    r = get(g, s, sc)
                    if not r:
                        continue
                    me = s == "tether"
                    out.append(f"| {sc} | {s} | {fmt(r['msgs_per_sec'])} | {'' if me else times(ours.get('msgs_per_sec'), r['msgs_per_sec'])} | "
                               f"{fmt(r['cpu_us_per_msg'], 2)} | {'' if me else times(ours.get('cpu_us_per_msg'), r['cpu_us_per_msg'])} | "
                               f"{fmt(r['server_cpu'])} | {fmt(r['client_cpu'])} |" +
                               (f" {fmt(r['p50_us'], 1)} | {fmt(r['p99_us'], 1)} |" if lat else "") + f" {r['errors']} |")
            out += ["", load_range([r for r in rows if r["generator"] == g]) + ".", ""]
    if results.get("memory"):
        rows = results["memory"]
        ref = next((r["bytes_per_conn"] for r in rows if r["server"] == REFERENCE), None)
        out += [f"### Memory per idle connection ({rows[0]['connections']:,} connections, server VmRSS after - before)", ""]
        out.append("| server | RSS before | RSS after | bytes per connection | this / uWebSockets | connected | every round |")
        out.append("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
        for r in rows:
            mib = lambda b: "n/a" if b is None else f"{b / 1048576:,.1f} MiB"
            out.append(f"| {r['server']} | {mib(r['rss_before'])} | {mib(r['rss_after'])} | {fmt(r['bytes_per_conn'])} | "
                       f"{times(r['bytes_per_conn'], ref) if r['server'] != REFERENCE else ''} | {fmt(r['connected'])} | "
                       f"{', '.join(fmt(v) for v in r['all'])} |")
        out += ["", load_range(rows) + ".", ""]
    if results.get("broadcast"):
        rows = results["broadcast"]
        out += ["### Broadcast: every client sends 64-byte messages, every client receives all (sender included)", ""]
        out.append("| clients | offered deliveries/s | server | deliveries/s | % of offered | tether / this | "
                   "publish-to-last-delivery p50 ms | p99 ms | lost | server CPU µs/delivery | server CPU % |")
        out.append("| ---: | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        for key in dict.fromkeys((r["clients"], r["rate"]) for r in rows):
            cell = [r for r in rows if (r["clients"], r["rate"]) == key]
            ours = next((r.get("deliveries_per_sec") for r in cell if r["server"] == "tether serve"), None)
            for r in cell:
                head = f"| {r['clients']} | {fmt(r['offered'])} ({r['rate']}/s each) | {r['server']} |"
                if r.get("skipped"):
                    out.append(head + " not run: under half delivered at a lower rate | | | | | | | |")
                    continue
                d = r["deliveries_per_sec"]
                ms = lambda us: None if us is None else us / 1000
                out.append(head + f" {fmt(d)} | {fmt(d / r['offered'] * 100 if d is not None else None, 1)} | "
                           f"{'' if r['server'] == 'tether serve' else times(ours, d)} | {fmt(ms(r['p50_us']), 2)} | "
                           f"{fmt(ms(r['p99_us']), 2)} | {fmt(r['lost'])} | {fmt(r['cpu_us_per_msg'], 3)} | {fmt(r['server_cpu'])} |")
        out += ["", load_range([r for r in rows if not r.get("skipped")]) + ".", ""]
    return "\n".join(out)


BEGIN, END = "<!-- bench/run.py issue16:begin -->", "<!-- bench/run.py issue16:end -->"


def write_benchmarks_md(section):
    path = os.path.join(base.ROOT, "BENCHMARKS.md")
    text = open(path).read()
    if BEGIN not in text:
        text += f"\n## uWebSockets as a peer (#16)\n\n{BEGIN}\n{END}\n"
    text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: f"{BEGIN}\n{section}\n{END}", text, flags=re.S)
    open(path, "w").write(text)
    log(f"wrote {path}")


def raise_nofile(want):
    """Raise the open-file limit (the hard one too, when allowed) for this process and its children."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
        except (ValueError, OSError):
            pass
    return base.raise_nofile()


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run.py issue16", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=3, help="rounds per cell, servers in rotation (default 3)")
    p.add_argument("--duration", type=float, default=5.0,
                   help="seconds measured per tether bench cell (default 5); load_test measures round(this / 4) "
                        "of its 4 s reports after one warmup report")
    p.add_argument("--idle", type=int, default=15000, help="idle connections for the memory group (default 15000)")
    p.add_argument("--only", choices=["echo", "memory", "broadcast"], action="append", help="run only this group (repeatable)")
    p.add_argument("--servers", help="comma-separated server names to keep, e.g. 'tether,uWebSockets,tether serve'")
    p.add_argument("--quick", action="store_true", help="1 round, 2 s runs, 2,000 idle connections, fewer broadcast rates")
    p.add_argument("--nice", type=int, help="run servers and generators under `nice -n N` (e.g. -10 on a shared "
                   "machine, as root); the default leaves priorities alone")
    p.add_argument("--render-only", action="store_true",
                   help="run nothing: write the tables from the last run (bench/results/issue16.json) into BENCHMARKS.md")
    p.add_argument("--no-write", action="store_true", help="print the tables, leave BENCHMARKS.md alone")
    opts = p.parse_args(argv)
    if opts.quick:
        opts.rounds, opts.duration, opts.idle = 1, 2.0, 2000
    if opts.rounds < 1 or opts.duration <= 0 or opts.idle < 1:
        p.error("--rounds, --duration and --idle must be positive")
    return opts


def main(argv):
    opts = parse_args(argv)
    if opts.render_only:
        section = render(json.load(open(os.path.join(base.RESULTS, "issue16.json"))), opts)
        print(section)
        if not opts.no_write:
            write_benchmarks_md(section)
        return
    if not os.path.exists(base.TETHER):
        sys.exit(f"missing {base.TETHER}: run `cargo build --release -p tether-cli` or set TETHER_BIN")
    nofile = raise_nofile(opts.idle + 1000)
    if nofile < opts.idle + 100:
        sys.exit(f"open-file limit {nofile} is below --idle {opts.idle} + 100: raise it (ulimit -Hn) and rerun")
    if opts.nice is not None:
        NICE[:] = ["nice", "-n", str(opts.nice)]
    echo, idle, broadcast, generators = available(opts)
    groups = opts.only or ["echo", "memory", "broadcast"]
    rates = QUICK_BROADCAST_RATES if opts.quick else BROADCAST_RATES
    total = (("echo" in groups) * len(base.ECHO_SCENARIOS) * len(echo) * len(generators) * opts.rounds
             + ("memory" in groups) * len(idle) * opts.rounds
             + ("broadcast" in groups) * sum(len(v) for v in rates.values()) * len(broadcast) * opts.rounds)
    start = time.monotonic()
    results = {"date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "machine": machine(), "tether": tether_version(), "rounds": opts.rounds,
               "args": " ".join(a for a in argv if a != "--no-write"), "load_start": loadavg(), "nice": opts.nice}
    log(f"{results['machine']}; tether {results['tether']}; load {fmt_load(results['load_start'])}; "
        f"{total} cells (up to: broadcast stops climbing for a server that fell under half)")
    out = os.path.join(base.RESULTS, "issue16.json")
    if opts.only and os.path.exists(out):
        # Keep the groups not re-run from the last run, so the tables stay whole.
        old = json.load(open(out))
        for group in ("echo", "memory", "broadcast"):
            if group not in groups and group in old:
                results[group] = old[group]
    progress = Progress(total)
    if "echo" in groups:
        results["echo"] = run_echo(opts, echo, generators, progress)
    if "memory" in groups:
        results["memory"] = run_memory(opts, idle, progress)
    if "broadcast" in groups:
        results["broadcast"] = run_broadcast(opts, broadcast, progress)
    results["load_end"] = loadavg()
    results["elapsed_min"] = (time.monotonic() - start) / 60
    os.makedirs(base.RESULTS, exist_ok=True)
    with open(out, "w") as f:
        json.dump(results, f, indent=2)
    log(f"raw results in {out}")
    section = render(results, opts)
    print(section)
    if not opts.no_write:
        write_benchmarks_md(section)


if __name__ == "__main__":
    main(sys.argv[1:])

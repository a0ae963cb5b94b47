#!/usr/bin/env python3
"""Server API publish throughput next to WebSocket publish, side by side in one run.

    python3 bench/api_publish.py --bin target/release/tether [--count 3000] [--redis]

Starts `tether serve --api-key` (memory broker, or --redis: a redis-server
of its own on a free port), one tether.v1 subscriber, then publishes
--count messages two ways, each waiting for its answer before the next
(one client, latency-bound):

  api        POST /api/publish over one keep-alive HTTP/1.1 connection
  api+key    the same with an idempotency_key per message
  websocket  {"type":"publish","id":N} on a tether.v1 connection, waiting for the ack

and reports messages/s, the server's CPU per message (from /proc), and
the load average. Numbers on a shared machine are only meaningful as
ratios within one run.
"""
import argparse
import asyncio
import http.client
import json
import os
import socket
import subprocess
import time

import websockets

from issue16 import cpu_ticks
from run import free_port


def cpu_seconds(pid):
    return cpu_ticks(pid) / os.sysconf("SC_CLK_TCK")


def api_run(port, key, count, idempotent):
    conn = http.client.HTTPConnection("127.0.0.1", port)
    headers = {"X-API-Key": key, "Content-Type": "application/json"}
    tag = time.time_ns()
    for i in range(count):
        body = {"topic": "bench", "content": {"n": i}}
        if idempotent:
            body["idempotency_key"] = f"k-{tag}-{i}"
        conn.request("POST", "/api/publish", json.dumps(body), headers)
        resp = conn.getresponse()
        data = resp.read()
        assert resp.status == 200, data
    conn.close()


async def ws_run(port, count):
    async with websockets.connect(f"ws://127.0.0.1:{port}/pub", subprotocols=["tether.v1"], max_size=None) as ws:
        await ws.recv()  # welcome
        for i in range(count):
            await ws.send(json.dumps({"type": "publish", "topic": "bench", "content": {"n": i}, "id": i}))
            while True:
                m = json.loads(await ws.recv())
                if m.get("type") == "ack" and m.get("id") == i:
                    break
                assert m.get("type") != "error", m


async def drain(port, stop, expected):
    async with websockets.connect(f"ws://127.0.0.1:{port}/sub", subprotocols=["tether.v1"], max_size=None) as ws:
        await ws.send(json.dumps({"type": "subscribe", "topic": "bench", "id": "s"}))
        got = 0
        # Until every message arrived, or 5 s after the publishers stopped.
        deadline = None
        while got < expected:
            if stop.is_set():
                deadline = deadline or time.monotonic() + 5
                if time.monotonic() > deadline:
                    break
            try:
                m = json.loads(await asyncio.wait_for(ws.recv(), 0.2))
                got += m.get("type") == "message"
            except asyncio.TimeoutError:
                pass
        return got


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/tether")
    ap.add_argument("--count", type=int, default=3000)
    ap.add_argument("--redis", action="store_true")
    args = ap.parse_args()
    redis = None
    extra = []
    if args.redis:
        rport = free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(rport), "--save", "", "--appendonly", "no"], stdout=subprocess.DEVNULL)
        time.sleep(0.5)
        extra = ["--broker", f"redis://127.0.0.1:{rport}"]
    port, key = free_port(), "bench-key"
    server = subprocess.Popen([args.bin, "serve", "--listen", f"127.0.0.1:{port}", "--api-key", key, "--message-rate", "1000000", "--message-burst", "1000000", *extra],
                              stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    server.stdout.readline()
    time.sleep(0.5)
    stop = asyncio.Event()
    sub = asyncio.create_task(drain(port, stop, 3 * args.count))
    await asyncio.sleep(0.3)
    rows = []
    try:
        for name, run in [("api", lambda: api_run(port, key, args.count, False)),
                          ("api+key", lambda: api_run(port, key, args.count, True)),
                          ("websocket", None)]:
            cpu0, t0 = cpu_seconds(server.pid), time.perf_counter()
            if run is None:
                await ws_run(port, args.count)
            else:
                await asyncio.to_thread(run)
            dt, cpu = time.perf_counter() - t0, cpu_seconds(server.pid) - cpu0
            rows.append((name, args.count / dt, cpu / args.count * 1e6))
        stop.set()
        delivered = await sub
    finally:
        server.terminate()
        server.wait()
        if redis:
            redis.terminate()
            redis.wait()
    base = rows[-1][1]
    print(f"broker: {'redis' if args.redis else 'memory'}, {args.count} messages each, load average {os.getloadavg()[0]:.2f}, subscriber got {delivered}")
    print(f"{'path':<10} {'msg/s':>8} {'vs websocket':>13} {'server CPU us/msg':>18}")
    for name, rate, cpu in rows:
        print(f"{name:<10} {rate:>8.0f} {rate / base:>12.2f}x {cpu:>18.0f}")
    assert delivered == 3 * args.count, f"the subscriber got {delivered} of {3 * args.count}"


if __name__ == "__main__":
    asyncio.run(main())

"""The cases of the adversarial suite (issue #11: hostile peers cannot hurt
the server). Each one starts its own `tether serve`, attacks it, and asserts
(1) what the attacker sees (close code, HTTP status, error code), (2) that the
server's resident memory stays bounded, (3) that a well-behaved client on the
same server keeps getting its messages.

"Today" in the comments means main at 2d7f9da, before the limits of #11.
"""

import asyncio
import json
import os
import random
import struct
import time
import zlib

from harness import (
    MiB, OP_BINARY, OP_CLOSE, OP_CONT, OP_PING, OP_PONG, OP_TEXT, Bystander, Closed, RawWS, RssSampler,
    frame, http_request, metric, open_tcp, read_head, upgrade_request, upgrade_status, v1_client, v1_next,
    v1_request,
)

CASES = {}
RSS_BOUND_MIB = 32
ATTACK_BYTES = 256 * MiB


def case(name):
    def register(fn):
        CASES[name] = fn
        return fn
    return register


async def settle(server, seconds=0.3):
    await asyncio.sleep(seconds)
    return server.rss_mib()


async def wait_until(pred, timeout, every=0.1):
    """Poll `pred` (sync or async) until true; the seconds it took, or None."""
    t0 = time.monotonic()
    while True:
        v = pred()
        if asyncio.iscoroutine(v):
            v = await v
        if v:
            return time.monotonic() - t0
        if time.monotonic() - t0 > timeout:
            return None
        await asyncio.sleep(every)


async def flood_without_reading(ws, chunk, limit=ATTACK_BYTES, stall=2.0, max_time=20.0):
    """Write `chunk` over and over, never reading, until `limit` bytes were
    taken by the socket, the socket stops taking them for `stall` seconds
    (backpressure), the connection breaks, or `max_time`.
    Returns (outcome, seconds); outcome is 'sent-all', 'blocked', 'closed' or 'time'."""
    t0 = time.monotonic()
    while ws.sent < limit:
        if time.monotonic() - t0 > max_time:
            return "time", time.monotonic() - t0
        try:
            if not await ws.send_raw(chunk, timeout=stall):
                return "blocked", time.monotonic() - t0
        except Closed:
            return "closed", time.monotonic() - t0
    return "sent-all", time.monotonic() - t0


async def rss_phase(ctx, server, attack):
    """Run `attack()` while sampling RSS; record and check the growth."""
    base = await settle(server)
    sampler = RssSampler(server)
    try:
        result = await attack()
    finally:
        peak = sampler.stop()
    growth = peak - base
    ctx.num("rss_growth_mib", round(growth, 1))
    ctx.expect(growth <= RSS_BOUND_MIB, f"server RSS grew {growth:.1f} MiB (bound {RSS_BOUND_MIB})")
    return result


async def bystander_final(ctx, by):
    await by.stop_watch()
    ctx.expect(await by.check(), "bystander did not get its message after the attack")
    ctx.expect(by.ok, f"bystander missed messages during the attack: {by.failures[:2]}")
    ctx.num("bystander_worst_s", round(by.worst_latency, 2))


async def counters_up(ctx, server, before, names):
    after = await server.metrics()
    deltas = {n: metric(after, n) - metric(before, n) for n in names}
    ctx.num("counters", ",".join(f"{n.replace('tether_', '')}+{int(d)}" for n, d in deltas.items()))
    return deltas


# --------------------------------------------------------------------------
# 1. reply_flood

def ack_flood_chunk():
    """A tether.v1 ping with a 200 KB id: answered by an ack echoing the id."""
    return frame(OP_TEXT, '{"type":"ping","id":"' + "x" * 200_000 + '"}')


async def non_reader(ctx, flags, path, counters, chunk=None, protocol="tether.v1", dropped=None):
    """A client that never reads and sends `chunk` over and over (by default
    tether.v1 pings with a 200 KB id, each answered by an ack echoing the id),
    against a server started with `flags`: RSS must stay flat and the server
    must drop it within 15 s. Returns how much each of `counters` went up.

    Whether it was dropped is read from the counters (`dropped(deltas)`, by
    default any of them up), polled until 15 s: the server's socket count
    alone can also fall when an unrelated socket (a /metrics request) closes."""
    dropped = dropped or (lambda d: sum(d.values()) >= 1)
    srv = ctx.server(flags)
    by = await Bystander(srv).start()
    before = await srv.metrics()
    sockets0 = srv.socket_count()
    ws = await RawWS.connect(srv.port, path, protocol=protocol)
    chunk = chunk or ack_flood_chunk()
    by.watch()
    t0 = time.monotonic()
    outcome, secs = await rss_phase(ctx, srv, lambda: flood_without_reading(ws, chunk))
    ctx.num("attacker_sent_mib", round(ws.sent / MiB, 1))
    ctx.num("outcome", f"{outcome}@{secs:.1f}s")
    async def counted():
        after = await srv.metrics()
        return dropped({n: metric(after, n) - metric(before, n) for n in counters})

    closed = await wait_until(counted, max(0.1, 15 - (time.monotonic() - t0)), every=0.25)
    ctx.expect(closed is not None, "the server did not drop the flooding connection (by the expected rule) within 15 s")
    ctx.num("closed_after_s", round(time.monotonic() - t0, 1) if closed is not None else "never")
    gone = await wait_until(lambda: srv.socket_count() <= sockets0, 5)
    ctx.expect(gone is not None, "the server counted the drop but kept the socket open")
    ws.close()
    d = await counters_up(ctx, srv, before, counters)
    await bystander_final(ctx, by)
    await by.close()
    return d


@case("reply_flood")
async def reply_flood(ctx):
    """The non-reader with a 1 s heartbeat. Before #11 every ack was queued
    without bound (push_unbounded) while the server kept reading: RSS grew
    one-to-one with what the attacker sent until the heartbeat dropped it.
    Expected: the server stops reading once the replies back up (the
    attacker's writes block), RSS flat, closed by the heartbeat (or the
    write-stall timeout) within ~15 s."""
    d = await non_reader(ctx, ["--heartbeat-interval", "1s", "--write-stall-timeout", "3s"], "/flood",
                         ["tether_write_stall_closes_total", "tether_terminated_connections_total"])
    ctx.expect(sum(d.values()) >= 1, "neither tether_write_stall_closes_total nor tether_terminated_connections_total went up")


@case("write_stall")
async def write_stall(ctx):
    """The same non-reader, with the write-stall timeout shorter than the
    heartbeat (--heartbeat-interval 3s --write-stall-timeout 1s): it is the
    stall rule, not the missed pong, that drops it, at the second heartbeat
    (the first one after its socket filled), and
    tether_write_stall_closes_total counts it."""
    d = await non_reader(ctx, ["--heartbeat-interval", "3s", "--write-stall-timeout", "1s"], "/stall",
                         ["tether_write_stall_closes_total", "tether_terminated_connections_total"],
                         dropped=lambda d: d["tether_write_stall_closes_total"] >= 1)
    ctx.expect(d["tether_write_stall_closes_total"] >= 1, "tether_write_stall_closes_total did not go up")


# --------------------------------------------------------------------------
# 2. ping_flood

@case("ping_flood")
async def ping_flood(ctx):
    """Masked 125-byte pings as fast as possible, never reading the pongs.
    Expected: pongs do not pile up in the server (it may answer only the
    latest ping, RFC 6455 §5.5.3), reading stops when writing cannot
    proceed, RSS flat, closed within ~15 s. Pings count towards
    --message-rate: a flood is closed with 1008 long before the heartbeat
    or the write-stall timeout would notice it."""
    chunk = b"".join(frame(OP_PING, os.urandom(125)) for _ in range(8000))
    d = await non_reader(ctx, ["--heartbeat-interval", "1s", "--write-stall-timeout", "3s"], "/pingflood",
                         ["tether_write_stall_closes_total", "tether_terminated_connections_total", "tether_rate_limit_closes_total"],
                         chunk=chunk, protocol=None)
    ctx.expect(sum(d.values()) >= 1, "none of tether_write_stall_closes_total, tether_terminated_connections_total, tether_rate_limit_closes_total went up")


# --------------------------------------------------------------------------
# 3. unsolicited_pongs

@case("unsolicited_pongs")
async def unsolicited_pongs(ctx):
    """A client that reads and discards everything, never answers a ping,
    but sends an unsolicited pong with a random payload every 100 ms. Today
    any pong clears the heartbeat flag, so it is never dropped. Expected:
    only a pong carrying the server's ping payload counts, so it is
    terminated within ~3 heartbeats (1 s each); a client that answers pings
    (websockets does) stays."""
    srv = ctx.server(["--heartbeat-interval", "1s"])
    by = await Bystander(srv).start()
    before = await srv.metrics()
    ws = await RawWS.connect(srv.port, "/pongs")
    t0 = time.monotonic()
    pings = 0

    def seen(op, payload):
        nonlocal pings
        pings += op == OP_PING

    async def pong_forever():
        while True:
            await ws.send(OP_PONG, os.urandom(random.randrange(0, 126)))
            await asyncio.sleep(0.1)

    ponger = asyncio.create_task(pong_forever())
    by.watch()
    end = await ws.recv_until_close(timeout=6, on_frame=seen)
    ended = time.monotonic() - t0
    ponger.cancel()
    try:
        await ponger
    except (asyncio.CancelledError, Closed):
        pass
    ctx.num("pings_seen", pings)
    ctx.num("attacker_end", f"{end}@{ended:.1f}s" if end else "still-open@6s")
    ctx.expect(end is not None and ended <= 4.0, f"not terminated within 3 heartbeats (end={end}, {ended:.1f}s)")
    ws.close()
    # The bystander answered every ping over the same period: still there.
    await asyncio.sleep(max(0.0, 4.0 - (time.monotonic() - t0)))
    d = await counters_up(ctx, srv, before, ["tether_terminated_connections_total"])
    ctx.expect(d["tether_terminated_connections_total"] >= 1, "tether_terminated_connections_total did not go up")
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 4. long_room_path

@case("long_room_path")
async def long_room_path(ctx):
    """Room names (URL paths) over 200 bytes are refused with 414 before the
    upgrade. Today any path that fits the 16 KiB head is accepted (101) and
    becomes a topic name. Bytes httparse refuses (controls, DEL) get 400."""
    srv = ctx.server([])
    by = await Bystander(srv).start()
    pad = [(f"X-Pad-{i}", "p" * 200) for i in range(12)]  # pushes the head past 16 KiB: the hyper path
    checks = [
        ("15KB", "/" + "a" * 15_000, (), 414),
        ("15KB+hdrs", "/" + "a" * 15_000, pad, (414, 431)),
        ("201B", "/" + "b" * 200, (), 414),
        ("201B+hdrs", "/" + "b" * 200, [(f"X-Pad-{i}", "p" * 1500) for i in range(11)], (414, 431)),
        ("200B", "/" + "c" * 199, (), 101),
        ("200B+query", "/" + "c" * 199 + "?x=1", (), 101),
    ]
    seen = []
    for label, path, headers, want in checks:
        got = await upgrade_status(srv.port, path, headers=headers)
        seen.append(f"{label}:{got}")
        ctx.expect(got in (want if isinstance(want, tuple) else (want,)), f"{label} path: HTTP {got}, expected {want}")
    for label, raw in [("DEL", b"/a\x7fb"), ("ctl01", b"/a\x01b"), ("NUL", b"/a\x00b")]:
        got = await upgrade_status(srv.port, raw_path=raw)
        seen.append(f"{label}:{got}")
        ctx.expect(got == 400 or got is None, f"path with {label}: HTTP {got}, expected 400 (or closed, never 101)")
    # Not asserted (no rule for it yet): what a non-UTF-8 byte does.
    got = await upgrade_status(srv.port, raw_path=b"/caf\xe9")
    seen.append(f"latin1(info):{got}")
    ctx.num("statuses", " ".join(seen))
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 5. presence_spam

@case("presence_spam")
async def presence_spam(ctx):
    """20 tether.v1 clients that never read sit in /room; the attacker
    subscribes to and unsubscribes from /room as fast as it can (each one a
    presence event to 20 queues). Expected: rate_limited errors, then 1008.
    Today: no limit (no error, no close); memory is bounded by the queues."""
    srv = ctx.server(["--subscribe-rate", "20", "--subscribe-burst", "50"])
    by = await Bystander(srv).start()
    quiet = [await RawWS.connect(srv.port, "/room", protocol="tether.v1") for _ in range(20)]
    ws = await RawWS.connect(srv.port, "/spam", protocol="tether.v1")
    codes = {}
    close = {}

    def seen(op, payload):
        if op == OP_TEXT:
            try:
                m = json.loads(payload)
            except ValueError:
                return
            if m.get("type") == "error":
                codes[m.get("code")] = codes.get(m.get("code"), 0) + 1

    async def reader():
        close["code"] = await ws.recv_until_close(timeout=15, on_frame=seen)
        close["at"] = time.monotonic() - t0

    batch = b"".join(frame(OP_TEXT, json.dumps({"type": t, "topic": "/room"})) for _ in range(100) for t in ("subscribe", "unsubscribe"))
    t0 = time.monotonic()
    rd = asyncio.create_task(reader())
    by.watch()

    async def attack():
        pairs = 0
        while time.monotonic() - t0 < 10 and not rd.done():
            try:
                if not await ws.send_raw(batch, timeout=2):
                    continue
            except Closed:
                break
            pairs += 100
            await asyncio.sleep(0)
        return pairs

    pairs = await rss_phase(ctx, srv, attack)
    await asyncio.wait_for(rd, 16)
    ctx.num("pairs_sent", pairs)
    ctx.num("errors", ",".join(f"{k}:{v}" for k, v in codes.items()) or "none")
    ctx.num("close", f"{close.get('code')}@{close.get('at', 0):.1f}s")
    ctx.expect(codes.get("rate_limited", 0) > 0, "no rate_limited error")
    ctx.expect(close.get("code") == 1008, f"closed with {close.get('code')}, expected 1008")
    for q in quiet:
        q.close()
    ws.close()
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 6. resume_loop

@case("resume_loop")
async def resume_loop(ctx):
    """1000 messages of 1 KB kept in "hist"; an attacker that never reads
    asks for all of them again 300 times (subscribe since 0, unsubscribe).
    The replays go to its bounded queue (drop-oldest): memory stays bounded
    today too; the case guards that a fix does not regress it. (Rate
    limits off: the publisher fills the history as fast as it can.)"""
    srv = ctx.server(["--subscribe-rate", "100000", "--subscribe-burst", "100000", "--message-rate", "0"])
    by = await Bystander(srv).start()
    pub, _ = await v1_client(srv, "/pub")
    live, _ = await v1_client(srv, "/live")
    ack = await v1_request(live, {"type": "subscribe", "topic": "hist", "id": "s"})
    ctx.expect(ack["type"] == "ack", f"subscribe: {ack}")
    seen = []

    async def follow():
        try:
            async for raw in live:
                m = json.loads(raw)
                if m["type"] == "message":
                    seen.append(m)
        except Exception:
            pass

    follower = asyncio.create_task(follow())
    body = "h" * 1000
    for i in range(1000):
        await pub.send(json.dumps({"type": "publish", "topic": "hist", "content": body, "id": i}))
    await v1_next(pub, lambda m: m.get("id") == 999, timeout=15)
    ws = await RawWS.connect(srv.port, "/resumer", protocol="tether.v1")
    loop = b"".join(frame(OP_TEXT, json.dumps({"type": "subscribe", "topic": "hist", "since": 0})) +
                    frame(OP_TEXT, json.dumps({"type": "unsubscribe", "topic": "hist"})) for _ in range(300))
    by.watch()

    async def attack():
        ok = await ws.send_raw(loop, timeout=10)
        await asyncio.sleep(3)
        return ok

    taken = await rss_phase(ctx, srv, attack)
    ctx.num("loop_taken", taken)
    ack = await v1_request(pub, {"type": "publish", "topic": "hist", "content": "after", "id": "after"})
    got = await wait_until(lambda: any(m.get("content") == "after" for m in seen), 5)
    after = [m["seq"] for m in seen if m.get("content") == "after"]
    ctx.expect(got is not None and after == [1001], f"live subscriber of hist got {after} for the next message, expected seq 1001")
    follower.cancel()
    ws.close()
    await bystander_final(ctx, by)
    for w in (pub, live):
        await w.close()
    await by.close()


# --------------------------------------------------------------------------
# 7. history_eviction

@case("history_eviction")
async def history_eviction(ctx):
    """A quiet topic with a live subscriber must not lose its history
    because someone touched 10,050 throwaway topics (the memory broker keeps
    --history-topics 10000, least recently used first). Today "quiet" is
    evicted: a client resuming it gets history_gap (new epoch)."""
    srv = ctx.server(["--subscribe-rate", "100000", "--subscribe-burst", "100000"])
    by = await Bystander(srv).start()
    sub, _ = await v1_client(srv, "/sub")
    await v1_request(sub, {"type": "subscribe", "topic": "quiet", "id": "s"})
    drain = asyncio.create_task(_discard(sub))
    pub, _ = await v1_client(srv, "/pub")
    epoch = None
    for i in range(5):
        ack = await v1_request(pub, {"type": "publish", "topic": "quiet", "content": f"m{i + 1}", "id": i})
        epoch = ack.get("epoch")
    attacker, _ = await v1_client(srv, "/churn")
    n = 10_050
    t0 = time.monotonic()
    for i in range(0, n, 50):
        batch = []
        for j in range(i, min(n, i + 50)):
            batch += [json.dumps({"type": "subscribe", "topic": f"throwaway-{j}"}), json.dumps({"type": "unsubscribe", "topic": f"throwaway-{j}"})]
        for b in batch:
            await attacker.send(b)
        # Keep reading so the attacker itself is not the bottleneck.
    done = await v1_request(attacker, {"type": "ping", "id": "done"}, timeout=60)
    ctx.num("churn_s", round(time.monotonic() - t0, 1))
    ctx.expect(done["type"] == "ack", f"attacker ping: {done}")
    resumer, _ = await v1_client(srv, "/resumer")
    await resumer.send(json.dumps({"type": "subscribe", "topic": "quiet", "since": 2, "epoch": epoch, "id": "r"}))
    got, gap = [], None
    while True:
        m = await v1_next(resumer, lambda m: m["type"] in ("message", "error", "ack"), timeout=5)
        if m["type"] == "error":
            gap = m.get("code")
        elif m["type"] == "message":
            got.append(m["seq"])
        else:
            break
    ctx.num("resumed_seqs", got)
    ctx.num("gap", gap)
    ctx.expect(gap is None, f"resume got error {gap} (quiet topic evicted)")
    ctx.expect(got == [3, 4, 5], f"resume replayed {got}, expected [3, 4, 5]")
    drain.cancel()
    await bystander_final(ctx, by)
    for w in (sub, pub, attacker, resumer):
        await w.close()
    await by.close()


async def _discard(ws):
    try:
        async for _ in ws:
            pass
    except Exception:
        pass


# --------------------------------------------------------------------------
# 8. since_overflow

@case("since_overflow")
async def since_overflow(ctx):
    """`since` at u64::MAX, beyond the newest, or with a bogus epoch: that
    client is told history_gap; nothing crashes; others see no gap;
    numbering goes on. Run against --debug-bin too when given: the hub
    computes `since + 1`, which panics on overflow in a debug build."""
    builds = [("release", ctx.bin)] + ([("debug", ctx.debug_bin)] if ctx.debug_bin else [])
    ctx.num("builds", "+".join(b for b, _ in builds))
    for build, bin_path in builds:
        await _since_overflow(ctx, ctx.server([], bin_path=bin_path), build)


async def _since_overflow(ctx, srv, build):
    by = await Bystander(srv).start()
    pub, _ = await v1_client(srv, "/pub")
    for i in range(3):
        ack = await v1_request(pub, {"type": "publish", "topic": "ov", "content": i, "id": i})
    epoch, newest = ack["epoch"], ack["seq"]
    clients = {}
    for label, since, ep in [("max", 18446744073709551615, epoch), ("ahead", newest + 1000, epoch), ("bogus_epoch", 2, "bogus-epoch"), ("max_no_epoch", 18446744073709551615, None)]:
        ws, _ = await v1_client(srv, f"/c-{label}")
        req = {"type": "subscribe", "topic": "ov", "since": since, "id": label}
        if ep:
            req["epoch"] = ep
        await ws.send(json.dumps(req))
        try:
            first = await v1_next(ws, lambda m: m.get("id") == label, timeout=5)
        except Exception as e:
            ctx.expect(False, f"{build}, since={since} ({label}): connection dropped instead of history_gap ({type(e).__name__})")
            continue
        ctx.expect(first["type"] == "error" and first.get("code") == "history_gap", f"{build}, {label}: first answer {first}")
        clients[label] = ws
    # One past u64: refused as a field error, not a crash.
    ws, _ = await v1_client(srv, "/c-big")
    await ws.send('{"type":"subscribe","topic":"ov","since":18446744073709551616,"id":"big"}')
    big = await v1_next(ws, lambda m: m.get("id") == "big", timeout=5)
    ctx.num("since_2^64", big.get("code", big["type"]))
    ctx.expect(big["type"] == "error", f"since 2^64: {big}")
    await ws.close()
    good, _ = await v1_client(srv, "/good")
    await good.send(json.dumps({"type": "subscribe", "topic": "ov", "since": newest, "epoch": epoch, "id": "g"}))
    m = await v1_next(good, lambda m: m.get("id") == "g", timeout=5)
    ctx.expect(m["type"] == "ack", f"good resume: {m}")
    ack = await v1_request(pub, {"type": "publish", "topic": "ov", "content": "next", "id": "next"})
    ctx.expect((ack.get("epoch"), ack.get("seq")) == (epoch, newest + 1), f"next publish: {ack}, expected seq {newest + 1} in {epoch}")
    m = await v1_next(good, lambda m: m["type"] in ("message", "error"), timeout=5)
    ctx.expect(m["type"] == "message" and m["seq"] == newest + 1 and m["epoch"] == epoch, f"good subscriber got {m}")
    for label, ws in clients.items():
        m = await v1_next(ws, lambda m: m["type"] == "message" and m.get("content") == "next", timeout=5)
        ctx.expect(m["seq"] == newest + 1 and m["epoch"] == epoch, f"{label} got {m}")
        await ws.close()
    ctx.expect(srv.alive(), f"{build} server died")
    await bystander_final(ctx, by)
    await good.close()
    await pub.close()
    await by.close()


# --------------------------------------------------------------------------
# 9. oversized_headers / many_headers

async def _send_head_status(port, head):
    """Send a request head, reading the answer concurrently (the server may
    answer and close before it has read everything)."""
    reader, writer = await open_tcp(port)
    writer.write(head)
    status, _ = await read_head(reader, timeout=10)
    writer.close()
    return status


@case("oversized_headers")
async def oversized_headers(ctx):
    """A 100 KB header: 431 or closed, never 101. Today the lean path gives
    up at 16 KiB and hands the request to hyper, whose head limit is ~400 KB:
    the upgrade goes through."""
    srv = ctx.server([])
    by = await Bystander(srv).start()
    head = upgrade_request(srv.port, "/big", headers=[("X-Big", "a" * 100_000)]).encode()
    by.watch()

    async def attack():
        return await asyncio.gather(*[_send_head_status(srv.port, head) for _ in range(20)])

    statuses = await rss_phase(ctx, srv, attack)
    ctx.num("statuses", sorted(set(map(str, statuses))))
    ctx.expect(all(s in (431, None) for s in statuses), f"100 KB header answered {statuses[:3]}, expected 431 or closed")
    await bystander_final(ctx, by)
    await by.close()


@case("many_headers")
async def many_headers(ctx):
    """10,000 small headers: 431."""
    srv = ctx.server([])
    by = await Bystander(srv).start()
    head = upgrade_request(srv.port, "/many", headers=[(f"X-H{i}", "v") for i in range(10_000)]).encode()
    by.watch()

    async def attack():
        return await asyncio.gather(*[_send_head_status(srv.port, head) for _ in range(20)])

    statuses = await rss_phase(ctx, srv, attack)
    ctx.num("statuses", sorted(set(map(str, statuses))))
    ctx.expect(all(s == 431 for s in statuses), f"10,000 headers answered {statuses[:3]}, expected 431")
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 10. slowloris / slow HTTP readers

@case("slowloris")
async def slowloris(ctx):
    """500 connections sending one byte of a request head per second: with
    --handshake-timeout 3s all are closed within ~5 s, while a normal client
    connects and chats."""
    srv = ctx.server(["--handshake-timeout", "3s", "--max-connections-per-ip", "2000"])
    by = await Bystander(srv).start()
    head = upgrade_request(srv.port, "/slow").encode()
    lifetimes = []

    async def loris():
        try:
            reader, writer = await open_tcp(srv.port)
        except OSError:
            lifetimes.append(0.0)
            return
        t = time.monotonic()
        try:
            for i in range(len(head)):
                writer.write(head[i:i + 1])
                try:
                    r = await asyncio.wait_for(reader.read(1024), 1.0)
                    if not r:
                        break
                except asyncio.TimeoutError:
                    pass
            lifetimes.append(time.monotonic() - t)
        except (ConnectionError, OSError):
            lifetimes.append(time.monotonic() - t)
        finally:
            writer.close()

    by.watch()

    async def attack():
        tasks = [asyncio.create_task(loris()) for _ in range(500)]
        await asyncio.sleep(1.5)
        fresh = await Bystander(srv, "/fresh").start()
        ok = await fresh.check()
        await fresh.close()
        await asyncio.wait_for(asyncio.gather(*tasks), 30)
        return ok

    fresh_ok = await rss_phase(ctx, srv, attack)
    ctx.expect(fresh_ok, "a new client could not connect and chat during the attack")
    worst = max(lifetimes)
    ctx.num("closed", len(lifetimes))
    ctx.num("longest_s", round(worst, 1))
    ctx.expect(len(lifetimes) == 500 and worst <= 5.5, f"slowloris connections lived up to {worst:.1f} s (expected <= ~5)")
    await bystander_final(ctx, by)
    await by.close()


@case("slow_http_reader")
async def slow_http_reader(ctx):
    """200 keep-alive clients pipelining GET /tether.js and /metrics without
    reading the answers. RSS bounded (the server must stop reading when its
    writes back up), and the server closes them at --http-timeout (the
    longest a plain HTTP connection stays open; 5 s here), at the latest
    8 s after they went quiet. Before #11 hyper stopped reading (bounded),
    but kept them open forever."""
    srv = ctx.server(["--handshake-timeout", "3s", "--http-timeout", "5s", "--max-connections-per-ip", "2000"])
    by = await Bystander(srv).start()
    sockets0 = srv.socket_count()
    reqs = (b"GET /tether.js HTTP/1.1\r\nHost: x\r\n\r\nGET /metrics HTTP/1.1\r\nHost: x\r\n\r\n") * 50
    conns = []
    by.watch()

    async def reader_less():
        reader, writer = await open_tcp(srv.port, rcvbuf=4096, sndbuf=4096)
        conns.append(writer)
        sent = 0
        while sent < 4 * MiB:
            writer.write(reqs)
            try:
                await asyncio.wait_for(writer.drain(), 0.5)
            except asyncio.TimeoutError:
                return sent
            except (ConnectionError, OSError):
                return sent
            sent += len(reqs)
        return sent

    async def attack():
        sent = await asyncio.gather(*[reader_less() for _ in range(200)])
        return sum(sent)

    t0 = time.monotonic()
    sent = await rss_phase(ctx, srv, attack)
    quiet_at = time.monotonic() - t0
    ctx.num("requests_mib", round(sent / MiB, 1))
    closed = await wait_until(lambda: srv.socket_count() <= sockets0, 2 * 3 + 2)
    ctx.num("closed_after_quiet_s", round(closed, 1) if closed is not None else f"never(open={srv.socket_count() - sockets0})")
    ctx.expect(closed is not None, "the server kept the non-reading HTTP clients open past --http-timeout")
    ctx.num("quiet_at_s", round(quiet_at, 1))
    for w in conns:
        w.close()
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 11. endless_fragments

@case("endless_fragments")
async def endless_fragments(ctx):
    """A text message that never ends (FIN=0, then continuation frames):
    1009 once it passes --max-message-size; then a flood of zero-length
    continuation frames for 10 s: RSS flat, others fine."""
    srv = ctx.server(["--max-message-size", "65536"])
    by = await Bystander(srv).start()
    ws = await RawWS.connect(srv.port, "/frag")
    rd = asyncio.create_task(ws.recv_until_close(timeout=10))
    await ws.send(OP_TEXT, b"a" * 1000, fin=False)
    piece = frame(OP_CONT, b"a" * 1000, fin=False)
    t0 = time.monotonic()
    while not rd.done() and time.monotonic() - t0 < 5 and ws.sent < 8 * MiB:
        try:
            await ws.send_raw(piece * 16, timeout=2)
        except Closed:
            break
        await asyncio.sleep(0.001)
    code = await rd
    ctx.num("fragments_close", f"{code} after {ws.sent // 1024} KiB")
    ctx.expect(code == 1009, f"endless message closed with {code}, expected 1009")
    ctx.expect(ws.sent >= 65536, f"closed after {ws.sent} bytes, before the message reached --max-message-size")
    ws.close()

    ws = await RawWS.connect(srv.port, "/zero")
    await ws.send(OP_TEXT, b"a", fin=False)
    empty = b"".join(frame(OP_CONT, b"", fin=False) for _ in range(50_000))
    by.watch()

    async def attack():
        t0 = time.monotonic()
        frames = 0
        while time.monotonic() - t0 < 10:
            try:
                if await ws.send_raw(empty, timeout=2):
                    frames += 50_000
            except Closed:
                return frames, "closed"
        return frames, "open"

    frames, state = await rss_phase(ctx, srv, attack)
    ctx.num("zero_frames", frames)
    ctx.num("zero_end", state)
    ws.close()
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 12. decompression_bomb

_BOMB = {}


def bomb(size):
    """A raw-deflate message (RFC 7692 §7.2.1: trailing 00 00 ff ff removed)
    that inflates to `size` zero bytes."""
    if size not in _BOMB:
        c = zlib.compressobj(9, zlib.DEFLATED, -15)
        zeros = bytes(16 * MiB)
        out = [c.compress(zeros) for _ in range(size // len(zeros))]
        out.append(c.flush(zlib.Z_SYNC_FLUSH))
        data = b"".join(out)
        assert data.endswith(b"\x00\x00\xff\xff")
        _BOMB[size] = data[:-4]
    return _BOMB[size]


@case("decompression_bomb")
async def decompression_bomb(ctx):
    """permessage-deflate: ~1 MiB of deflate that inflates to 1 GiB, sent as
    16 KiB frames (paced: the attacker reads between frames, as any client
    does) and as 64 KiB frames back to back; and 254 KiB in one frame that
    inflates to 256 MiB. Closed with 1009 as soon as the inflated size
    passes --max-message-size; RSS bounded.

    Back to back, the close frame often does not reach the attacker: the
    server drops TCP right after sending 1009 while the attacker's bytes are
    still arriving, so the kernel answers with RST and the 1009 is lost. For
    that variant any close (1009 or EOF) passes."""
    srv = ctx.server(["--deflate"])
    by = await Bystander(srv).start()
    results = []
    by.watch()

    async def one(label, size, piece, pace):
        data = bomb(size)
        ws = await RawWS.connect(srv.port, "/bomb", extensions="permessage-deflate; client_max_window_bits")
        ext = ws.headers.get("sec-websocket-extensions", "")
        ctx.expect("permessage-deflate" in ext, f"deflate not negotiated: {ext!r}")
        rd = asyncio.create_task(ws.recv_until_close(timeout=15))
        chunks = [data[i:i + piece] for i in range(0, len(data), piece)]
        for i, c in enumerate(chunks):
            f = frame(OP_BINARY if i == 0 else OP_CONT, c, fin=i == len(chunks) - 1, rsv1=i == 0)
            try:
                await ws.send_raw(f, timeout=5)
            except Closed:
                break
            if pace:
                await asyncio.sleep(pace)
            if rd.done():
                break
        code = await rd
        ws.close()
        results.append(f"{label}:{len(data) // 1024}KiB->{size // MiB}MiB:{code}")
        return code

    async def attack():
        return (await one("paced", 1 << 30, 16 * 1024, 0.05), await one("burst", 1 << 30, 64 * 1024, 0),
                await one("single", 256 * MiB, 1 << 30, 0))

    paced, burst, single = await rss_phase(ctx, srv, attack)
    ctx.num("bombs", " ".join(results))
    ctx.expect(paced == 1009, f"fragmented 1 GiB bomb (paced) closed with {paced}, expected 1009")
    # The server lingers after the close (reads and discards), so even a
    # peer still sending gets the 1009 rather than a reset.
    ctx.expect(burst == 1009, f"fragmented 1 GiB bomb (back to back): {burst}, expected 1009")
    ctx.expect(single == 1009, f"single-frame 256 MiB bomb closed with {single}, expected 1009")
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 13. token_guessing

@case("token_guessing")
async def token_guessing(ctx):
    """--token secret123 --max-auth-failures 20: 200 wrong guesses from one
    address: 401 for the first 20, then 429 (even for the right token from
    that address, or the limit would tell the attacker when it guessed
    right); other addresses are not affected; `bearer` in lower case works
    (RFC 9110 §11.1: the scheme is case-insensitive)."""
    srv = ctx.server(["--token", "secret123", "--max-auth-failures", "20", "--client-ip-header", "X-Forwarded-For"])
    # Connected before the guessing: the guesses come from its address.
    by = await Bystander(srv, "/bystander?token=secret123").start()
    by_status = await upgrade_status(srv.port, "/x", headers=[("Authorization", "Bearer secret123")])
    ctx.expect(by_status == 101, f"right token: HTTP {by_status}")
    before = await srv.metrics()
    statuses = []
    for i in range(200):
        statuses.append(await upgrade_status(srv.port, "/x", headers=[("Authorization", f"Bearer guess{i}")]))
    first_429 = statuses.index(429) if 429 in statuses else None
    ctx.num("n401", statuses.count(401))
    ctx.num("n429", statuses.count(429))
    ctx.num("first_429_at", first_429)
    ctx.expect(statuses[:20] == [401] * 20, f"first 20 guesses: {sorted(set(map(str, statuses[:20])))}, expected all 401")
    ctx.expect(statuses[20:] == [429] * 180, f"guesses after the 20th: {sorted(set(map(str, statuses[20:])))}, expected all 429")
    right_throttled = await upgrade_status(srv.port, "/x", headers=[("Authorization", "Bearer secret123")])
    ctx.num("right_token_throttled_addr", right_throttled)
    ctx.expect(right_throttled == 429, f"right token from the throttled address: {right_throttled}, expected 429")
    other = await upgrade_status(srv.port, "/x", headers=[("Authorization", "Bearer secret123"), ("X-Forwarded-For", "10.0.0.2")])
    ctx.expect(other == 101, f"right token from 10.0.0.2 (forwarded): {other}, expected 101")
    lower = await upgrade_status(srv.port, "/x", headers=[("Authorization", "bearer secret123"), ("X-Forwarded-For", "10.0.0.3")])
    ctx.expect(lower == 101, f"'bearer' (lower case): {lower}, expected 101")
    query = await upgrade_status(srv.port, "/x?token=secret123", headers=[("X-Forwarded-For", "10.0.0.4")])
    ctx.expect(query == 101, f"?token=: {query}, expected 101")
    src = await upgrade_status(srv.port, "/x", headers=[("Authorization", "Bearer secret123")], source="127.0.0.5")
    ctx.expect(src == 101, f"right token from 127.0.0.5: {src}, expected 101")
    ctx.num("others", f"xff:{other} lower:{lower} query:{query} 127.0.0.5:{src}")
    after = await srv.metrics()
    auth = metric(after, "tether_refused_connections_total", reason="auth") - metric(before, "tether_refused_connections_total", reason="auth")
    thr = metric(after, "tether_refused_connections_total", reason="auth_throttled") - metric(before, "tether_refused_connections_total", reason="auth_throttled")
    ctx.num("refused", f"auth+{int(auth)},auth_throttled+{int(thr)}")
    ctx.expect(auth >= 20 and thr >= 180, "tether_refused_connections_total{reason=auth|auth_throttled} did not count the refusals")
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 14. message_flood

@case("message_flood")
async def message_flood(ctx):
    """--message-rate 50 --message-burst 100: a tether.v1 client publishing
    5000 messages as fast as it can gets rate_limited errors, then 1008; a
    plain one gets `[tether] rate limited`, then 1008; a client at 20 msg/s
    is never limited; the room got at most burst + rate * elapsed of the
    attacker's messages."""
    srv = ctx.server(["--message-rate", "50", "--message-burst", "100"])
    by = await Bystander(srv).start()
    before = await srv.metrics()
    watcher, _ = await v1_client(srv, "/flood")
    from_attacker = {}

    async def count():
        try:
            async for raw in watcher:
                m = json.loads(raw)
                if m["type"] == "message":
                    from_attacker[m["sender"]] = from_attacker.get(m["sender"], 0) + 1
        except Exception:
            pass

    counter = asyncio.create_task(count())
    by.watch()

    async def flood_v1():
        ws, welcome = await v1_client(srv, "/flood")
        errors, close = {}, None
        t0 = time.monotonic()

        async def read():
            try:
                async for raw in ws:
                    m = json.loads(raw)
                    if m["type"] == "error":
                        errors[m.get("code")] = errors.get(m.get("code"), 0) + 1
            except Exception:
                pass

        rd = asyncio.create_task(read())
        sent = 0
        try:
            for i in range(5000):
                await ws.send(json.dumps({"type": "chat", "content": f"spam {i}"}))
                sent += 1
        except Exception:
            pass
        try:
            await asyncio.wait_for(ws.wait_closed(), 12)
        except asyncio.TimeoutError:
            pass
        elapsed = time.monotonic() - t0
        close = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None
        rd.cancel()
        await ws.close()
        return welcome["session"], sent, errors, close, elapsed

    async def flood_plain():
        from websockets.asyncio.client import connect
        ws = await connect(srv.url("/flood-plain"), open_timeout=5)
        await ws.recv()
        limited, close = 0, None

        async def read():
            nonlocal limited
            try:
                async for m in ws:
                    limited += isinstance(m, str) and m.startswith("[tether] rate limited")
            except Exception:
                pass

        rd = asyncio.create_task(read())
        try:
            for i in range(5000):
                await ws.send(f"spam {i}")
        except Exception:
            pass
        try:
            await asyncio.wait_for(ws.wait_closed(), 12)
        except asyncio.TimeoutError:
            pass
        close = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else None
        rd.cancel()
        await ws.close()
        return limited, close

    async def polite():
        ws, _ = await v1_client(srv, "/polite")
        refused = 0
        for i in range(60):
            r = await v1_request(ws, {"type": "chat", "content": i, "id": i})
            refused += r["type"] == "error"
            await asyncio.sleep(0.05)
        await ws.close()
        return refused

    (session, sent, errors, close, elapsed), (plain_limited, plain_close), refused = await asyncio.gather(flood_v1(), flood_plain(), polite())
    await asyncio.sleep(0.5)
    counter.cancel()
    delivered = from_attacker.get(session, 0)
    allowed = 100 + 50 * elapsed
    ctx.num("v1", f"sent={sent} errors={errors} close={close} delivered={delivered} (max {allowed:.0f})")
    ctx.num("plain", f"limited_lines={plain_limited} close={plain_close}")
    ctx.num("polite_refused", refused)
    ctx.expect(errors.get("rate_limited", 0) > 0, "tether.v1 flooder got no rate_limited error")
    ctx.expect(close == 1008, f"tether.v1 flooder closed with {close}, expected 1008")
    ctx.expect(plain_limited > 0, "plain flooder got no '[tether] rate limited' line")
    ctx.expect(plain_close == 1008, f"plain flooder closed with {plain_close}, expected 1008")
    ctx.expect(refused == 0, f"a client at 20 msg/s was refused {refused} times")
    ctx.expect(delivered <= allowed, f"the room got {delivered} of the attacker's messages (max {allowed:.0f})")
    d = await counters_up(ctx, srv, before, ["tether_rate_limited_total", "tether_rate_limit_closes_total"])
    ctx.expect(d["tether_rate_limited_total"] >= 1 and d["tether_rate_limit_closes_total"] >= 2, "rate-limit counters did not go up")
    await watcher.close()
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 15. connections_per_ip

@case("connections_per_ip")
async def connections_per_ip(ctx):
    """--max-connections-per-ip 10: the 11th concurrent connection from one
    address gets 429. Behind a trusted proxy (peer 127.0.0.1,
    --client-ip-header X-Forwarded-For) each forwarded address counts alone,
    the right-most entry being the one used; from an untrusted peer
    (127.0.0.2: not in --trusted-proxies) the header is ignored."""
    srv = ctx.server(["--max-connections-per-ip", "10", "--client-ip-header", "X-Forwarded-For"])
    held, seen = [], []

    async def open_n(n, headers_for=lambda i: [], source=None):
        out = []
        for i in range(n):
            st, ws = await upgrade_status(srv.port, "/ip", headers=headers_for(i), source=source, keep=True)
            out.append(st)
            if ws:
                held.append(ws)
        return out

    a = await open_n(11)
    seen.append(f"loopback:{a.count(101)}x101,11th={a[-1]}")
    ctx.expect(a[:10] == [101] * 10 and a[10] == 429, f"from 127.0.0.1: {a}")
    b = await open_n(11, lambda i: [("X-Forwarded-For", "10.0.0.1")])
    seen.append(f"xff10.0.0.1:{b.count(101)}x101,11th={b[-1]}")
    ctx.expect(b[:10] == [101] * 10 and b[10] == 429, f"forwarded 10.0.0.1: {b}")
    c = await open_n(11, lambda i: [("X-Forwarded-For", f"203.0.113.{i}, 10.0.0.7")])
    seen.append(f"rightmost:{c.count(101)}x101,11th={c[-1]}")
    ctx.expect(c[:10] == [101] * 10 and c[10] == 429, f"spoofed left-most, right-most 10.0.0.7: {c}")
    d = await open_n(1, lambda i: [("X-Forwarded-For", "10.0.0.8")])
    ctx.expect(d == [101], f"forwarded 10.0.0.8: {d}")
    e = await open_n(11, lambda i: [("X-Forwarded-For", f"10.1.0.{i}")], source="127.0.0.2")
    seen.append(f"untrusted:{e.count(101)}x101,11th={e[-1]}")
    ctx.expect(e[:10] == [101] * 10 and e[10] == 429, f"untrusted peer 127.0.0.2 with varying X-Forwarded-For: {e}")
    ctx.num("results", " ".join(seen))
    m = await srv.metrics()
    ctx.num("refused_per_ip", int(metric(m, "tether_refused_connections_total", reason="per_ip")))
    ctx.expect(metric(m, "tether_refused_connections_total", reason="per_ip") >= 4, "tether_refused_connections_total{reason=per_ip} did not count")
    for ws in held:
        ws.close()
    await asyncio.sleep(0.3)
    by = await Bystander(srv).start()
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 16. max_connections_pending

@case("max_connections_pending")
async def max_connections_pending(ctx):
    """--max-connections 50 counts connections that have not finished their
    upgrade: with 48 silent TCP connections and the bystander's 2 open, a
    real upgrade gets 503; once the silent ones time out (handshake timeout
    3 s) a new client connects. Today only upgraded connections count: 101."""
    srv = ctx.server(["--max-connections", "50", "--handshake-timeout", "3s", "--max-connections-per-ip", "1000"])
    by = await Bystander(srv).start()
    silent = [await open_tcp(srv.port) for _ in range(48)]
    await asyncio.sleep(0.3)
    st = await upgrade_status(srv.port, "/late")
    ctx.num("51st", st)
    ctx.expect(st == 503, f"51st connection: HTTP {st}, expected 503")
    ctx.expect(await by.check(), "bystander broken while the server is full")
    await asyncio.sleep(4)
    st2 = await upgrade_status(srv.port, "/late")
    ctx.num("after_timeout", st2)
    ctx.expect(st2 == 101, f"after the silent ones timed out: HTTP {st2}, expected 101")
    m = await srv.metrics()
    ctx.expect(metric(m, "tether_refused_connections_total", reason="max_connections") >= 1, "tether_refused_connections_total{reason=max_connections} did not count")
    for _, w in silent:
        w.close()
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 17. metrics_token / health

@case("metrics_token")
async def metrics_token(ctx):
    """--metrics-token m1: /metrics needs `Authorization: Bearer m1` (401
    otherwise); /health stays open and never names the broker's address."""
    srv = ctx.server(["--metrics-token", "m1"])
    none, _, _ = await http_request(srv.port, "GET", "/metrics")
    wrong, _, _ = await http_request(srv.port, "GET", "/metrics", [("Authorization", "Bearer m2")])
    right, _, body = await http_request(srv.port, "GET", "/metrics", [("Authorization", "Bearer m1")])
    ctx.num("metrics", f"none:{none} wrong:{wrong} right:{right}")
    ctx.expect(none == 401, f"/metrics without the token: {none}")
    ctx.expect(wrong == 401, f"/metrics with a wrong token: {wrong}")
    ctx.expect(right == 200 and b"tether_connections" in body, f"/metrics with the token: {right}")
    hs, _, hbody = await http_request(srv.port, "GET", "/health")
    ctx.expect(hs == 200, f"/health: {hs}")
    text = hbody.decode(errors="replace")
    leaks = [w for w in ("redis://", "127.0.0.1", "localhost", "://") if w in text]
    ctx.num("health", text[:120])
    ctx.expect(not leaks, f"/health mentions {leaks}")
    by = await Bystander(srv).start()
    await bystander_final(ctx, by)
    await by.close()


# --------------------------------------------------------------------------
# 18. log_injection

FAKE = "FAKE-LOG-LINE ERROR tether::admin: root password is hunter2"


@case("log_injection")
async def log_injection(ctx):
    """Peer strings in the server's log are escaped: a topic with "\\n" and a
    fake log line, an Origin and a path with terminal escapes. RUST_LOG=debug
    to expose every log call that might print them (text format)."""
    srv = ctx.server(["--message-rate", "5", "--message-burst", "5", "--subscribe-rate", "5", "--subscribe-burst", "5",
                      "--allowed-origin", "http://good.example"], rust_log="debug")
    evil_topic = "t\n" + FAKE + "\r\n" + FAKE + "\x1b]0;pwned\x07"
    ws, _ = await v1_client(srv, "/log%0A" + "FAKE", origin="http://good.example")
    drain = asyncio.create_task(_discard(ws))
    for _ in range(20):
        try:
            await ws.send(json.dumps({"type": "subscribe", "topic": evil_topic}))
            await ws.send(json.dumps({"type": "publish", "topic": evil_topic, "content": FAKE}))
            await ws.send("\n" + FAKE)
        except Exception:
            break
    await asyncio.sleep(0.5)
    try:
        await ws.close()
    except Exception:
        pass
    await upgrade_status(srv.port, "/o", headers=[("Origin", "http://evil\x1b]0;pwned\x07.example")])
    await upgrade_status(srv.port, "/u", headers=[("Origin", "http://good.example"), ("User-Agent", "x\x1b[2J" + FAKE)])
    raw = await RawWS.connect(srv.port, "/bad", protocol="tether.v1", headers=[("Origin", "http://good.example")])
    await raw.send(OP_TEXT, b"\xff\xfe\n" + FAKE.encode())
    await raw.recv_until_close(timeout=2)
    raw.close()
    await asyncio.sleep(0.5)
    log = srv.stderr_bytes()
    lines = log.split(b"\n")
    injected = [l for l in lines if l.lstrip(b"\r").startswith(FAKE.encode()) or l.startswith(FAKE.encode())]
    osc = b"\x1b]0;pwned" in log
    ctx.num("log_lines", len(lines))
    ctx.num("injected_lines", len(injected))
    ctx.num("raw_escape_in_log", osc)
    ctx.expect(not injected, f"a peer string started a log line: {injected[0][:80]!r}" if injected else "")
    ctx.expect(not osc, "a peer's terminal escape sequence reached the log unescaped")
    by = await Bystander(srv, origin="http://good.example").start()
    await bystander_final(ctx, by)
    await by.close()

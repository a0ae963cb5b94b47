"""Shared pieces of the adversarial suite: a `tether serve` process on a free
port, its resident memory and sockets from /proc, /metrics, a raw WebSocket
client that misbehaves on purpose (asyncio streams, no library to stop it),
and a well-behaved bystander that must keep getting its messages.

Standard library + `websockets` only.
"""

import asyncio
import base64
import json
import os
import random
import re
import socket
import struct
import subprocess
import tempfile
import threading
import time

import websockets
from websockets.asyncio.client import connect as ws_connect

MiB = 1 << 20


# --------------------------------------------------------------------------
# The server under test

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class SetupError(Exception):
    """The server could not be started (e.g. a flag it does not know yet)."""


class Server:
    """`tether serve --listen 127.0.0.1:PORT ARGS`, stderr kept in a file."""

    # Set by run.py: with --lenient, flags the binary does not know are
    # dropped (to measure today's binary); without it they make the case fail.
    lenient = False
    known_flags = None
    dropped_flags = []

    def __init__(self, bin_path, args=(), rust_log="warn", env=None):
        self.bin = bin_path
        self.port = free_port()
        args = list(args)
        if Server.lenient:
            args = self._drop_unknown(args)
        self.args = args
        self.stderr_file = tempfile.NamedTemporaryFile(prefix="tether-adv-", suffix=".log", delete=False)
        full_env = dict(os.environ, RUST_LOG=rust_log)
        full_env.pop("TETHER_CONFIG", None)
        if env:
            full_env.update(env)
        cmd = [self.bin, "serve", "--listen", f"127.0.0.1:{self.port}", *args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=self.stderr_file, env=full_env)
        line = self.proc.stdout.readline().decode(errors="replace")
        if not line.startswith("listening on"):
            self.proc.wait(timeout=5)
            err = self.stderr_text().strip().splitlines()
            why = next((l for l in err if l.startswith("error:")), err[-1] if err else line)
            raise SetupError(f"server did not start (rc={self.proc.returncode}): {why.strip()}")
        self.pid = self.proc.pid

    def _drop_unknown(self, args):
        if Server.known_flags is None:
            out = subprocess.run([self.bin, "serve", "--help"], capture_output=True, text=True).stdout
            Server.known_flags = set(re.findall(r"--[a-z][a-z0-9-]*", out))
        kept, i = [], 0
        while i < len(args):
            a = args[i]
            name = a.split("=", 1)[0]
            takes_value = "=" not in a and i + 1 < len(args) and not args[i + 1].startswith("--")
            if a.startswith("--") and name not in Server.known_flags:
                Server.dropped_flags.append(name)
                i += 2 if takes_value else 1
                continue
            kept.append(a)
            i += 1
        return kept

    def url(self, path="/"):
        return f"ws://127.0.0.1:{self.port}{path}"

    def alive(self):
        return self.proc.poll() is None

    def rss_mib(self):
        try:
            with open(f"/proc/{self.pid}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def socket_count(self):
        """Open sockets of the server process (the listener included)."""
        n = 0
        try:
            for fd in os.listdir(f"/proc/{self.pid}/fd"):
                try:
                    if os.readlink(f"/proc/{self.pid}/fd/{fd}").startswith("socket:"):
                        n += 1
                except OSError:
                    pass
        except OSError:
            pass
        return n

    def stderr_text(self):
        self.stderr_file.flush()
        with open(self.stderr_file.name, "rb") as f:
            return f.read().decode(errors="replace")

    def stderr_bytes(self):
        self.stderr_file.flush()
        with open(self.stderr_file.name, "rb") as f:
            return f.read()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        self.stderr_file.close()
        try:
            os.unlink(self.stderr_file.name)
        except OSError:
            pass

    async def metrics(self, token=None):
        # From an address of its own, so that per-address limits on the
        # attackers' 127.0.0.1 do not refuse the operator's scrape.
        headers = [("Authorization", f"Bearer {token}")] if token else []
        status, _, body = await http_request(self.port, "GET", "/metrics", headers, source="127.0.0.254")
        if status != 200:
            return {}
        return parse_metrics(body.decode(errors="replace"))


def parse_metrics(text):
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        try:
            key, value = line.rsplit(" ", 1)
            out[key] = float(value)
        except ValueError:
            pass
    return out


def metric(m, name, **labels):
    """Sum of a counter over every label set matching `labels`."""
    total = 0.0
    for key, value in m.items():
        base, _, rest = key.partition("{")
        if base != name:
            continue
        if all(f'{k}="{v}"' in rest for k, v in labels.items()):
            total += value
    return total


class RssSampler:
    """Samples the server's VmRSS every 20 ms in a thread; keeps the peak."""

    def __init__(self, server):
        self.server = server
        self.peak = server.rss_mib()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, self.server.rss_mib())

    def stop(self):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.server.rss_mib())
        return self.peak


# --------------------------------------------------------------------------
# Raw HTTP

async def open_tcp(port, source=None, rcvbuf=None, sndbuf=None):
    """A TCP connection to the server, optionally from another loopback
    source address (127.0.0.2...) and with small socket buffers (so that a
    peer that does not read is noticed after kilobytes, not megabytes)."""
    if rcvbuf is None and sndbuf is None:
        local = (source, 0) if source else None
        return await asyncio.open_connection("127.0.0.1", port, local_addr=local, limit=1 << 20)
    s = socket.socket()
    if rcvbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    if sndbuf:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, sndbuf)
    if source:
        s.bind((source, 0))
    s.setblocking(False)
    await asyncio.get_running_loop().sock_connect(s, ("127.0.0.1", port))
    return await asyncio.open_connection(sock=s, limit=1 << 20)


async def read_head(reader, timeout=5):
    """Read an HTTP response head; (status, headers dict) or (None, {}) when
    the connection closed (or timed out) first."""
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
    except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, asyncio.LimitOverrunError, OSError):
        return None, {}
    lines = head.decode(errors="replace").split("\r\n")
    try:
        status = int(lines[0].split()[1])
    except (IndexError, ValueError):
        return None, {}
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            k, v = line.split(":", 1)
            headers[k.strip().lower()] = v.strip()
    return status, headers


async def http_request(port, method, path, headers=(), source=None, timeout=5):
    """One request on a fresh connection: (status, headers, body)."""
    try:
        reader, writer = await open_tcp(port, source)
    except OSError:
        return None, {}, b""
    try:
        req = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n"
        req += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        writer.write(req.encode("latin-1"))
        status, hdrs = await read_head(reader, timeout)
        body = b""
        if status is not None:
            try:
                n = int(hdrs.get("content-length", "-1"))
                body = await asyncio.wait_for(reader.readexactly(n) if n >= 0 else reader.read(), timeout)
            except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError):
                pass
        return status, hdrs, body
    finally:
        writer.close()


def upgrade_request(port, path="/", protocol=None, extensions=None, headers=()):
    key = base64.b64encode(os.urandom(16)).decode()
    req = (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
           f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n")
    if protocol:
        req += f"Sec-WebSocket-Protocol: {protocol}\r\n"
    if extensions:
        req += f"Sec-WebSocket-Extensions: {extensions}\r\n"
    for k, v in headers:
        req += f"{k}: {v}\r\n"
    return req + "\r\n"


async def upgrade_status(port, path="/", headers=(), source=None, raw_path=None, keep=False, timeout=5):
    """Send an upgrade request; return the status (None if the connection
    closed without an answer). With keep=True, return (status, RawWS|None)."""
    try:
        reader, writer = await open_tcp(port, source)
    except OSError:
        return (None, None) if keep else None
    req = upgrade_request(port, "/", headers=headers).encode("latin-1")
    if raw_path is not None:
        req = req.replace(b"GET / HTTP/1.1", b"GET " + raw_path + b" HTTP/1.1", 1)
    else:
        req = req.replace(b"GET / HTTP/1.1", f"GET {path} HTTP/1.1".encode("latin-1"), 1)
    try:
        writer.write(req)
        await writer.drain()
    except OSError:
        pass
    status, hdrs = await read_head(reader, timeout)
    if keep and status == 101:
        ws = RawWS(reader, writer, hdrs)
        return status, ws
    writer.close()
    return (status, None) if keep else status


# --------------------------------------------------------------------------
# Raw WebSocket frames (RFC 6455 §5.2)

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def mask_bytes(data, key):
    if not data:
        return b""
    n = len(data)
    k = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(data, "little") ^ int.from_bytes(k, "little")).to_bytes(n, "little")


def frame(opcode, payload=b"", fin=True, rsv1=False, mask=True):
    if isinstance(payload, str):
        payload = payload.encode()
    b0 = (0x80 if fin else 0) | (0x40 if rsv1 else 0) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if mask:
        key = os.urandom(4)
        return head + key + mask_bytes(payload, key)
    return head + payload


class Closed(Exception):
    pass


class RawWS:
    """An upgraded connection driven frame by frame."""

    def __init__(self, reader, writer, headers):
        self.reader, self.writer, self.headers = reader, writer, headers
        self.sent = 0

    @classmethod
    async def connect(cls, port, path="/", protocol=None, extensions=None, headers=(), source=None):
        reader, writer = await open_tcp(port, source)
        writer.write(upgrade_request(port, path, protocol, extensions, headers).encode("latin-1"))
        status, hdrs = await read_head(reader)
        if status != 101:
            writer.close()
            raise Closed(f"upgrade refused: HTTP {status}")
        return cls(reader, writer, hdrs)

    async def send_raw(self, data, timeout=None):
        """Write and wait for the socket to take it; False when it did not
        within `timeout` (the peer stopped reading)."""
        self.writer.write(data)
        try:
            if timeout is None:
                await self.writer.drain()
            else:
                await asyncio.wait_for(self.writer.drain(), timeout)
        except asyncio.TimeoutError:
            return False
        except (ConnectionError, OSError) as e:
            raise Closed(str(e))
        self.sent += len(data)
        return True

    def write_nowait(self, data):
        self.writer.write(data)

    async def send(self, opcode, payload=b"", **kw):
        return await self.send_raw(frame(opcode, payload, **kw))

    async def send_text(self, text):
        return await self.send(OP_TEXT, text)

    async def send_json(self, obj):
        return await self.send(OP_TEXT, json.dumps(obj))

    async def recv_frame(self, timeout=10):
        """(fin, rsv1, opcode, payload); raises Closed on EOF."""
        try:
            h = await asyncio.wait_for(self.reader.readexactly(2), timeout)
            n = h[1] & 0x7F
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            if h[1] & 0x80:
                key = await self.reader.readexactly(4)
                payload = mask_bytes(await self.reader.readexactly(n), key)
            else:
                payload = await self.reader.readexactly(n)
        except asyncio.TimeoutError:
            raise
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as e:
            raise Closed(f"EOF: {e!r}")
        return bool(h[0] & 0x80), bool(h[0] & 0x40), h[0] & 0x0F, payload

    async def recv_until_close(self, timeout=10, on_frame=None):
        """Read until a close frame or EOF. Returns the close code, 'EOF'
        (TCP closed without a close frame) or None (timed out)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            try:
                fin, rsv1, op, payload = await self.recv_frame(left)
            except asyncio.TimeoutError:
                return None
            except Closed:
                return "EOF"
            if on_frame:
                on_frame(op, payload)
            if op == OP_CLOSE:
                return struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else 1005

    def close(self):
        try:
            self.writer.close()
        except Exception:
            pass


# --------------------------------------------------------------------------
# The bystander: a well-behaved plain client and a third client publishing
# to it, in a room of their own.

class Bystander:
    def __init__(self, server, room="/bystander", origin=None):
        self.server, self.room, self.origin = server, room, origin
        self.checks = 0
        self.failures = []
        self.worst_latency = 0.0
        self._task = None

    async def start(self):
        kw = {"origin": self.origin} if self.origin else {}
        self.sub = await ws_connect(self.server.url(self.room), open_timeout=5, close_timeout=1, max_size=None, **kw)
        self.pub = await ws_connect(self.server.url(self.room), open_timeout=5, close_timeout=1, **kw)
        for ws in (self.sub, self.pub):
            welcome = await asyncio.wait_for(ws.recv(), 5)
            assert welcome.startswith("Welcome"), welcome
        return self

    async def check(self, timeout=5.0):
        """Publish a unique line; True if the subscriber gets it in time."""
        self.checks += 1
        token = f"bystander-{self.checks}-{random.randrange(1 << 30)}"
        t0 = time.monotonic()
        try:
            await asyncio.wait_for(self.pub.send(token), timeout)
            deadline = t0 + timeout
            while True:
                msg = await asyncio.wait_for(self.sub.recv(), max(0.01, deadline - time.monotonic()))
                if isinstance(msg, str) and msg.endswith(token):
                    break
        except Exception as e:
            self.failures.append(f"check {self.checks}: {type(e).__name__} {e}")
            return False
        self.worst_latency = max(self.worst_latency, time.monotonic() - t0)
        return True

    def watch(self, every=0.5):
        """Check repeatedly in the background until `stop_watch`."""
        async def loop():
            while True:
                await self.check()
                await asyncio.sleep(every)
        self._task = asyncio.create_task(loop())

    async def stop_watch(self):
        if self._task:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None

    @property
    def ok(self):
        return not self.failures and self.checks > 0

    async def close(self):
        await self.stop_watch()
        for ws in (self.sub, self.pub):
            try:
                await asyncio.wait_for(ws.close(), 2)
            except Exception:
                pass


async def v1_client(server, path="/", **kw):
    """A well-behaved tether.v1 client (websockets); returns (ws, welcome)."""
    ws = await ws_connect(server.url(path), subprotocols=["tether.v1"], open_timeout=5, close_timeout=1, max_size=None, **kw)
    welcome = json.loads(await asyncio.wait_for(ws.recv(), 5))
    assert welcome["type"] == "welcome", welcome
    return ws, welcome


async def v1_next(ws, pred, timeout=5):
    """The next envelope satisfying `pred` (others are skipped)."""
    deadline = time.monotonic() + timeout
    while True:
        msg = json.loads(await asyncio.wait_for(ws.recv(), max(0.01, deadline - time.monotonic())))
        if pred(msg):
            return msg


async def v1_request(ws, obj, timeout=5):
    """Send a request with an id; return its ack or error (skipping the rest)."""
    await ws.send(json.dumps(obj))
    return await v1_next(ws, lambda m: m.get("id") == obj["id"] and m["type"] in ("ack", "error"), timeout)

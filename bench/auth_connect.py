#!/usr/bin/env python3
"""Connection rate of `tether serve` with JWT verification (HS256, RS256)
next to no auth (issue #14): three servers side by side, each given the same
number of sequential WebSocket handshakes (raw sockets: the upgrade request
with `Authorization: Bearer`, read the 101, close), in interleaved rounds so
load changes hit all three alike. Reports connections per second and the
ratio to no auth, with the load average. Python's standard library only;
the tokens are minted here (HS256 with hmac, RS256 with `openssl dgst`).

    python3 bench/auth_connect.py --bin target/release/tether [--n 300 --rounds 3]
"""
import argparse, base64, hashlib, hmac, json, os, socket, subprocess, sys, tempfile, time

from run import free_port

FIXTURES = os.path.join(os.path.dirname(__file__), "..", "crates", "tether-cli", "tests", "fixtures", "jwt")


def b64(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def mint(alg, claims, secret=None, key_file=None):
    body = f"{b64(json.dumps({'alg': alg, 'typ': 'JWT'}).encode())}.{b64(json.dumps(claims).encode())}"
    if alg == "HS256":
        sig = hmac.new(secret.encode(), body.encode(), hashlib.sha256).digest()
    else:
        sig = subprocess.run(["openssl", "dgst", "-sha256", "-sign", key_file], input=body.encode(), capture_output=True, check=True).stdout
    return f"{body}.{b64(sig)}"


def start(bin_path, args):
    port = free_port()
    p = subprocess.Popen([bin_path, "serve", "--listen", f"127.0.0.1:{port}", "--max-auth-failures", "1000000"] + args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env={**os.environ, "RUST_LOG": "warn"})
    line = p.stdout.readline().decode()
    assert line.startswith("listening on"), line
    return p, port


def handshake(port, token):
    s = socket.create_connection(("127.0.0.1", port))
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    s.sendall(f"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{auth}\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    s.close()
    if not data.startswith(b"HTTP/1.1 101"):
        raise SystemExit(f"handshake refused: {data[:80]!r}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/tether")
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--rounds", type=int, default=3)
    a = ap.parse_args()
    exp = int(time.time()) + 3600
    claims = {"sub": "bench", "exp": exp, "subscribe": ["*"], "publish": ["*"]}
    secret = "bench-secret"
    setups = {
        "no auth": ([], None),
        "HS256": (["--jwt-secret", secret], mint("HS256", claims, secret=secret)),
        "RS256": (["--jwt-public-key", os.path.join(FIXTURES, "rsa1.pub")], mint("RS256", claims, key_file=os.path.join(FIXTURES, "rsa1.key"))),
    }
    servers = {name: start(a.bin, args) for name, (args, _) in setups.items()}
    times = {name: 0.0 for name in setups}
    try:
        for name, (_, token) in setups.items():
            for _ in range(20):
                handshake(servers[name][1], token)  # warm up
        for _ in range(a.rounds):
            for name, (_, token) in setups.items():
                t0 = time.perf_counter()
                for _ in range(a.n):
                    handshake(servers[name][1], token)
                times[name] += time.perf_counter() - t0
    finally:
        for p, _ in servers.values():
            p.kill()
    load = os.getloadavg()
    total = a.n * a.rounds
    base = total / times["no auth"]
    print(f"# {total} sequential handshakes each, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}, {os.cpu_count()} cores")
    print("| setup | connections/s | ratio to no auth |")
    print("| --- | --- | --- |")
    for name in setups:
        rate = total / times[name]
        print(f"| {name} | {rate:.0f} | {rate / base:.2f} |")


if __name__ == "__main__":
    main()

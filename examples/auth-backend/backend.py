#!/usr/bin/env python3
"""A small application backend for tether serve, in Python's standard library only.

    python3 examples/auth-backend/backend.py --port 9000 --webhook-secret s --api http://127.0.0.1:8080 --api-key k
    tether serve --api-key k --webhook-url http://127.0.0.1:9000/webhook --webhook-secret s

It
  - receives tether's lifecycle webhooks at POST /webhook and verifies their
    signature (X-Tether-Signature = sha256=HMAC-SHA256(secret, "<X-Tether-Timestamp>.<body>"),
    timestamp within 5 minutes); each event is printed as one JSON line with
    "valid": true or false, and a bad signature is answered 401;
  - issues HS256 connection tokens at GET /token?user=NAME (JWT built with
    hmac + base64: {"sub": NAME, "exp": now + 1 h}, signed with --token-secret);
  - publishes through tether's server API at POST /say?topic=T (body: any JSON).

  - answers tether's hooks (tether serve --hook-url http://127.0.0.1:9000/hooks
    --hook-secret s --hook-connect closed --hook-rpc, and namespaces with
    subscribe-hook / publish-hook), checking their signature like the webhooks':
      POST /hooks/connect   token "user:NAME" admits NAME, allowed chat:*, private:* (the subscribe hook decides)
                            and rpc; token "banned" is refused 403, no token 401
                            (with JWTs on, a verified user is admitted as its token says)
      POST /hooks/subscribe private:NAME only for NAME
      POST /hooks/publish   refuses content with "spam", masks "darn" (rewrite)
      POST /hooks/rpc       add {a, b} -> {sum}; whoami -> {user}; sleep {s} answers
                            after s seconds; anything else -> error not_found
    Each hook call is printed as one JSON line {"hook": ..., "valid": ...}.

--mode slow answers webhooks and hooks only after 30 s, --mode fail answers
500: to see tether's failure modes (webhooks: retries with backoff, then
dropped and counted; hooks: the hook's failure mode).
"""
import argparse
import base64
import hashlib
import hmac
import json
import sys
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_token(secret: str, claims: dict) -> str:
    header = b64url(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    payload = b64url(json.dumps(claims).encode())
    sig = hmac.new(secret.encode(), f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{b64url(sig)}"


def valid_signature(secret: str, timestamp: str, body: bytes, signature: str) -> bool:
    try:
        if abs(time.time() - int(timestamp)) > 300:
            return False
    except ValueError:
        return False
    expected = "sha256=" + hmac.new(secret.encode(), timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, signature)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, default=9000)
    ap.add_argument("--webhook-secret", required=True)
    ap.add_argument("--token-secret", default="token-secret")
    ap.add_argument("--api", default="http://127.0.0.1:8080")
    ap.add_argument("--api-key", default="")
    ap.add_argument("--mode", choices=["ok", "slow", "fail"], default="ok")
    ap.add_argument("--tls-cert", help="serve https:// with this certificate (PEM)")
    ap.add_argument("--tls-key", help="... and this key (PEM)")
    args = ap.parse_args()

    def out(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def answer(self, status, obj):
            body = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            url = urllib.parse.urlparse(self.path)
            if url.path == "/token":
                user = urllib.parse.parse_qs(url.query).get("user", ["anonymous"])[0]
                token = hs256_token(args.token_secret, {"sub": user, "exp": int(time.time()) + 3600})
                return self.answer(200, {"token": token})
            self.answer(404, {"error": "not found"})

        def hook(self, name, body):
            ok = valid_signature(args.webhook_secret, self.headers.get("X-Tether-Timestamp", ""), body,
                                 self.headers.get("X-Tether-Signature", ""))
            call = json.loads(body)
            out({"hook": name, "call": call, "valid": ok})
            if args.mode == "slow":
                time.sleep(30)
            if args.mode == "fail":
                return self.answer(500, {"error": "failing on purpose"})
            if not ok:
                return self.answer(401, {"error": "bad signature"})
            user = call.get("user")
            if name == "connect":
                token = call.get("token") or ""
                if user:
                    return self.answer(200, {"allow": True})
                if token == "banned":
                    return self.answer(200, {"allow": False, "status": 403, "reason": "this account is banned"})
                if not token.startswith("user:"):
                    return self.answer(200, {"allow": False, "status": 401, "reason": "log in first"})
                who = token[len("user:"):]
                return self.answer(200, {"allow": True, "user": who,
                                         "subscribe": ["/", "chat:*", "private:*"],
                                         "publish": ["chat:*", f"private:{who}"], "presence": ["chat:*"]})
            if name == "subscribe":
                topic = call["topic"]
                if topic == f"private:{user}":
                    return self.answer(200, {"allow": True})
                return self.answer(200, {"allow": False, "reason": f"{topic} is not yours"})
            if name == "publish":
                content = call.get("content")
                text = content if isinstance(content, str) else json.dumps(content)
                if "spam" in text:
                    return self.answer(200, {"allow": False, "reason": "no spam here"})
                if isinstance(content, str) and "darn" in content:
                    return self.answer(200, {"allow": True, "content": content.replace("darn", "d**n")})
                return self.answer(200, {"allow": True})
            if name == "rpc":
                method, data = call.get("method"), call.get("data") or {}
                if method == "add":
                    return self.answer(200, {"data": {"sum": data.get("a", 0) + data.get("b", 0)}})
                if method == "whoami":
                    return self.answer(200, {"data": {"user": user, "session": call.get("session")}})
                if method == "sleep":
                    time.sleep(float(data.get("s", 1)))
                    return self.answer(200, {"data": "slept"})
                return self.answer(200, {"error": {"code": "not_found", "message": f"no method {method!r}"}})
            self.answer(404, {"error": "no such hook"})

        def do_POST(self):
            url = urllib.parse.urlparse(self.path)
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if url.path.startswith("/hooks/"):
                return self.hook(url.path[len("/hooks/"):], body)
            if url.path == "/webhook":
                if args.mode == "slow":
                    time.sleep(30)
                if args.mode == "fail":
                    return self.answer(500, {"error": "failing on purpose"})
                ok = valid_signature(args.webhook_secret, self.headers.get("X-Tether-Timestamp", ""), body,
                                     self.headers.get("X-Tether-Signature", ""))
                for event in json.loads(body).get("events", []):
                    out({"webhook": event, "valid": ok})
                return self.answer(200 if ok else 401, {"ok": ok})
            if url.path == "/say":
                topic = urllib.parse.parse_qs(url.query).get("topic", ["news"])[0]
                req = urllib.request.Request(f"{args.api}/api/publish", method="POST",
                                             data=json.dumps({"topic": topic, "content": json.loads(body or b"null")}).encode(),
                                             headers={"X-API-Key": args.api_key, "Content-Type": "application/json"})
                with urllib.request.urlopen(req, timeout=10) as resp:
                    return self.answer(200, json.load(resp))
            self.answer(404, {"error": "not found"})

    server = ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    if args.tls_cert:
        import ssl
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.tls_cert, args.tls_key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    out({"listening": server.server_address[1]})
    server.serve_forever()


if __name__ == "__main__":
    main()

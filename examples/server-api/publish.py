#!/usr/bin/env python3
"""Publish through tether serve's server API from a backend (standard library only).

    tether serve --api-key secret &
    python3 examples/server-api/publish.py --url http://127.0.0.1:8080 --key secret

Publishes with an idempotency key twice (the second is answered with the
same epoch and seq, and delivered once), then reads the topic's history,
its presence and the server's info.
"""
import argparse
import json
import urllib.error
import urllib.request


def call(url, key, endpoint, body):
    req = urllib.request.Request(f"{url}/api/{endpoint}", data=json.dumps(body).encode(), method="POST",
                                 headers={"X-API-Key": key, "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.load(resp)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--key", required=True)
    ap.add_argument("--topic", default="news")
    args = ap.parse_args()
    msg = {"topic": args.topic, "content": {"headline": "Tether ships a server API"}, "idempotency_key": "news-42"}
    first = call(args.url, args.key, "publish", msg)
    retry = call(args.url, args.key, "publish", msg)
    print("publish:", first)
    print("retry:  ", retry)
    assert first[1]["seq"] == retry[1]["seq"] and retry[1]["duplicate"], "a retry is applied once"
    print("history:", call(args.url, args.key, "history", {"topic": args.topic, "limit": 5}))
    print("presence:", call(args.url, args.key, "presence", {"topic": args.topic}))
    print("info:", call(args.url, args.key, "info", {}))
    print("wrong key:", call(args.url, "nope", "info", {}))


if __name__ == "__main__":
    main()

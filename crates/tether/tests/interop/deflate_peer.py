"""Python's `websockets` with permessage-deflate on (its default), for the
compression interop tests (tests/interop_deflate.rs).

  deflate_peer.py client URL   connect, print "extensions: <negotiated>",
                               exchange messages, close 1000, print "ok"
  deflate_peer.py server PORT  echo server; prints "ready"; after one
                               connection prints "extensions: <answer>" and
                               "closed CODE REASON"
"""
import asyncio
import sys

import websockets


def negotiated(headers):
    return headers.get("Sec-WebSocket-Extensions") or "none"


async def client(url):
    # compression="deflate" is the default: offers permessage-deflate with
    # client_max_window_bits.
    async with websockets.connect(url, max_size=None, compression="deflate") as ws:
        print("extensions:", negotiated(ws.response.headers), flush=True)
        text = '{"event":"tick","data":"ünïcödé payload"} ' * 200
        for _ in range(3):
            # Repeated: exercises context takeover where it was agreed.
            await ws.send(text)
            assert await ws.recv() == text
        await ws.send("tiny")
        assert await ws.recv() == "tiny"
        blob = bytes(range(256)) * 4096  # 1 MiB, compressible
        await ws.send(blob)
        assert await ws.recv() == blob
        # A fragmented compressed message: websockets sends an iterable as fragments.
        parts = ["frag " * 300, "mented " * 300, "message " * 300]
        await ws.send(parts)
        assert await ws.recv() == "".join(parts)
        pong = await ws.ping(b"interop")
        await asyncio.wait_for(pong, 5)
        await ws.close(1000, "done")
    assert ws.close_code == 1000, ws.close_code
    print("ok", flush=True)


async def server(port):
    done = asyncio.get_running_loop().create_future()

    async def handler(ws):
        try:
            async for msg in ws:
                await ws.send(msg)
        finally:
            if not done.done():
                done.set_result((negotiated(ws.response.headers), ws.close_code, ws.close_reason))

    async with websockets.serve(handler, "127.0.0.1", port, max_size=None, compression="deflate"):
        print("ready", flush=True)
        extensions, code, reason = await done
        print("extensions:", extensions, flush=True)
        print(f"closed {code} {reason}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "client":
        asyncio.run(client(sys.argv[2]))
    else:
        asyncio.run(server(int(sys.argv[2])))

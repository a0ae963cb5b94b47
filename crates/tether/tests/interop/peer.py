"""A peer we did not write: Python's `websockets` package, for interop tests.

  peer.py client URL   connect, exchange text/binary/ping/large, close 1000; exit 0 on success
  peer.py server PORT  echo server; prints "ready" once listening; exits after one connection
"""
import asyncio
import sys

import websockets


async def client(url):
    async with websockets.connect(url, max_size=None, compression=None) as ws:
        await ws.send("héllo from python")
        assert await ws.recv() == "héllo from python"
        await ws.send(b"\x00\xff" * 10)
        assert await ws.recv() == b"\x00\xff" * 10
        big = bytes(range(256)) * 8192  # 2 MiB
        await ws.send(big)
        assert await ws.recv() == big
        # A fragmented message: websockets sends an iterable as fragments.
        await ws.send(["frag", "mented"])
        assert await ws.recv() == "fragmented"
        pong = await ws.ping(b"interop")
        await asyncio.wait_for(pong, 5)
        await ws.close(1000, "done")
    assert ws.close_code == 1000, ws.close_code
    print("ok")


async def server(port):
    done = asyncio.get_running_loop().create_future()

    async def handler(ws):
        try:
            async for msg in ws:
                await ws.send(msg)
        finally:
            if not done.done():
                done.set_result((ws.close_code, ws.close_reason))

    async with websockets.serve(handler, "127.0.0.1", port, max_size=None, compression=None):
        print("ready", flush=True)
        code, reason = await done
        print(f"closed {code} {reason}", flush=True)


if __name__ == "__main__":
    if sys.argv[1] == "client":
        asyncio.run(client(sys.argv[2]))
    else:
        asyncio.run(server(int(sys.argv[2])))

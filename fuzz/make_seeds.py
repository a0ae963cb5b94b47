#!/usr/bin/env python3
"""Write the seed inputs in fuzz/seeds/<target>/ (run from anywhere; idempotent).

Each frame_decoder seed is 4 control bytes (see fuzz_targets/frame_decoder.rs)
followed by a byte stream; each handshake seed is 1 control byte followed by
an HTTP message.
"""
import os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
KEY = bytes([0x37, 0xFA, 0x21, 0x3D])


def frame(opcode, payload, fin=True, masked=True, rsv=0):
    b0 = (0x80 if fin else 0) | rsv | opcode
    n = len(payload)
    mask_bit = 0x80 if masked else 0
    if n < 126:
        head = bytes([b0, mask_bit | n])
    elif n < 65536:
        head = bytes([b0, mask_bit | 126]) + struct.pack(">H", n)
    else:
        head = bytes([b0, mask_bit | 127]) + struct.pack(">Q", n)
    if not masked:
        return head + payload
    return head + KEY + bytes(b ^ KEY[i % 4] for i, b in enumerate(payload))


def streams(masked):
    f = lambda *a, **k: frame(*a, masked=masked, **k)
    snow = "☃".encode()  # 3 bytes, split across fragments below
    return {
        "text": f(1, b"Hello"),
        "fragmented": f(1, b"Hel", fin=False) + f(0, b"lo"),
        "fragmented_utf8_ping": f(1, b"a" + snow[:1], fin=False) + f(9, b"p") + f(0, snow[1:], fin=False) + f(0, b"z"),
        "binary_256": f(2, bytes(range(256))),
        "ping_pong_close": f(9, b"Hello") + f(10, b"") + f(8, b"\x03\xe8bye"),
        "close_empty_then_data": f(8, b"") + f(1, b"after close"),
        "binary_len64": f(2, b"\x00" * 70000)[:20],  # header + start of a 64-bit length frame
        "invalid_utf8": f(1, b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited"),
        "rsv_set": f(1, b"x", rsv=0x40),
        "many_small": b"".join(f(1, bytes([65 + i % 26]) * (i % 30)) for i in range(40)),
    }


def write(target, name, data):
    d = os.path.join(HERE, "seeds", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as fh:
        fh.write(data)


for masked, tag in [(True, "masked"), (False, "unmasked")]:
    for name, s in streams(masked).items():
        # Large limits, both auto replies, seed 0x2a; and tight limits.
        write("frame_decoder", f"{tag}_{name}", bytes([0xFF, 0xFF, 0x03, 0x2A]) + s)
        write("frame_decoder", f"{tag}_{name}_tight", bytes([0x02, 0x01, 0x00, 0x07]) + s)

REQUEST = (
    b"GET /chat?room=1 HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\n"
    b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    b"Origin: http://example.com\r\nSec-WebSocket-Protocol: chat, superchat\r\n"
    b"Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits, x-foo; a=\"1\"\r\n"
    b"Sec-WebSocket-Version: 13\r\n\r\n"
)
write("server_handshake", "rfc", bytes([0x05]) + REQUEST)
write("server_handshake", "rfc_one_byte_reads", bytes([0x00]) + REQUEST + frame(1, b"Hello"))
write("server_handshake", "rfc_small_limit", bytes([0x93]) + REQUEST)
write("server_handshake", "minimal", bytes([0x20]) + b"GET / HTTP/1.1\r\nHost: a\r\nUpgrade: websocket\r\nConnection: upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n\r\n")
write("server_handshake", "version_8", bytes([0x07]) + REQUEST.replace(b"Version: 13", b"Version: 8"))

RESPONSE = (
    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
)
write("client_handshake", "plain", bytes([0x05]) + RESPONSE + b"\r\n")
write("client_handshake", "protocol_extension", bytes([0x85]) + RESPONSE + b"Sec-WebSocket-Protocol: chat\r\nSec-WebSocket-Extensions: permessage-deflate; server_no_context_takeover\r\n\r\n" + frame(1, b"Hi", masked=False))
write("client_handshake", "unoffered_protocol", bytes([0x81]) + RESPONSE + b"Sec-WebSocket-Protocol: other\r\n\r\n")
write("client_handshake", "rejected", bytes([0x03]) + b"HTTP/1.1 403 Forbidden\r\nContent-Length: 2\r\n\r\nno")

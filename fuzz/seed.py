#!/usr/bin/env python3
"""Writes the seed corpora of the fuzz targets from the specification's test vectors
(proto/README.md) and the example configurations. Run from the repository root: fuzz/seed.py"""
import hashlib
import pathlib
import re

root = pathlib.Path(__file__).resolve().parent.parent
spec = (root / "proto" / "README.md").read_text()
vectors = {}
for name, body in re.findall(r"```hex (\S+)\n(.*?)```", spec, re.S):
    vectors[name] = bytes(int(h, 16) for h in body.split())
valid = [v for k, v in vectors.items() if not k.startswith("invalid") and "datagram" not in k]


def put(target, data):
    d = root / "fuzz" / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-" + hashlib.sha1(data).hexdigest()[:16])).write_bytes(data)


for k, v in vectors.items():
    if "datagram" in k:
        # The datagram target's first byte is its chunk size.
        for chunk in (1, 3, 255):
            put("datagram", bytes([chunk]) + v)
        continue
    put("decode", v)
    put("roundtrip", v)
put("streaming", b"".join(valid))
# Session, raw mode (first byte even): a yamux SYN for stream 1 with the Hello vector as data.
hello = vectors["hello"]
syn = bytes([0, 0, 0, 1]) + (1).to_bytes(4, "big") + len(hello).to_bytes(4, "big")
put("session", b"\x00" + syn + hello)
put("session", b"\x00" + bytes([0, 2, 0, 1, 0, 0, 0, 0, 0, 0, 0, 7]))  # yamux ping
# Session, authenticated mode (first byte odd): control-stream frames after the hello.
for name in ("register", "ping", "pong", "go_away", "error", "visitor_connected", "welcome"):
    put("session", b"\x01" + vectors[name])
put("session", b"\x01" + vectors["register"] + vectors["ping"] + vectors["invalid_trailing"])
put("session", b"\x01" + vectors["register_private"])
# Version 3: into the group "desks" the harness lets the fuzz identity join (port 0: the
# group's first free port), a health report each way, the private group, a visit of the group.
group = bytes([0x0D, 3]) + b"rdp" + bytes([5]) + b"desks" + bytes([0, 0, 0, 0])
group = len(group).to_bytes(2, "big") + group
put("session", b"\x01" + group + vectors["service_unhealthy"] + vectors["service_healthy"])
put("session", b"\x01" + vectors["register_private_group"] + vectors["service_unhealthy"])
# Session, visit mode (first byte 3 mod 4): bytes of a visit substream after authentication.
for name in ("visit", "ping", "invalid_too_many_visitors"):
    put("session", b"\x03" + vectors[name])
private_echo, good = b"private-echo", b"good"
visit = bytes([0x12, len(good)]) + good + bytes([len(private_echo)]) + private_echo
put("session", b"\x03" + len(visit).to_bytes(2, "big") + visit + b"bytes after the visit")
for f in sorted((root / "examples").rglob("*.toml")):
    put("config", f.read_bytes())
# PROXY protocol headers as HAProxy sends them (v1, v2 with a TLV, LOCAL), then the client's TLS.
tls = bytes([0x16, 0x03, 0x01, 0x00, 0x05]) + b"hello"
put("proxy_header", b"PROXY TCP4 192.168.0.1 192.168.0.11 56324 443\r\n" + tls)
put("proxy_header", b"PROXY TCP6 2001:db8::1 2001:db8::2 1000 22\r\n")
put("proxy_header", b"PROXY UNKNOWN\r\n")
sig = bytes([0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A])
v4 = bytes([10, 0, 0, 1, 10, 0, 0, 2, 0, 80, 1, 187]) + bytes([0x01, 0x00, 0x02]) + b"h2"
put("proxy_header", sig + bytes([0x21, 0x11]) + len(v4).to_bytes(2, "big") + v4 + tls)
v6 = bytes(range(32)) + bytes([0, 1, 0, 2])
put("proxy_header", sig + bytes([0x21, 0x21]) + len(v6).to_bytes(2, "big") + v6)
put("proxy_header", sig + bytes([0x20, 0x00, 0x00, 0x00]))
# Proxy answers: HTTP CONNECT (a tunnel, a refusal) and SOCKS5 (method, then connect answers).
put("proxy_reply", b"HTTP/1.1 200 Connection established\r\n\r\n")
put("proxy_reply", b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic\r\n\r\n")
put("proxy_reply", b"HTTP/1.0 503 Service Unavailable\r\nVia: squid\r\n\r\n")
put("proxy_reply", bytes([5, 0, 5, 0, 0, 1, 127, 0, 0, 1, 0x1e, 0x9b]))
put("proxy_reply", bytes([5, 2, 5, 5, 0, 3, 9]) + b"localhost" + bytes([0, 80]))
# WebSocket: frames as each end sends them, an upgrade request and an answer.
put("websocket", bytes([0x82, 0x05]) + b"hello" + bytes([0x89, 0x00, 0x88, 0x02, 0x03, 0xE8]))
put("websocket", bytes([0x82, 0x85, 0x37, 0xFA, 0x21, 0x3D, 0x7F, 0x9F, 0x4D, 0x51, 0x58]))
put("websocket", bytes([0x02, 0x7E, 0x01, 0x00]) + bytes(256) + bytes([0x80, 0x00]))
put("websocket", b"GET /ncx HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
put("websocket", b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n")

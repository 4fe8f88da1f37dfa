#!/usr/bin/env python3
"""One visitor round trip through ncx: read the echo service's greeting, send a line, read it back.

Usage: roundtrip.py HOST PORT TIMEOUT_SECONDS. Exit 0 on success, 1 with the reason on stderr.
"""
import socket
import sys

host, port, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
try:
    with socket.create_connection((host, port), timeout=timeout) as s:
        s.settimeout(timeout)
        f = s.makefile("rb")
        banner = f.readline()
        if not banner.startswith(b"hello from the ncx demo service"):
            raise RuntimeError(f"unexpected greeting {banner!r}")
        s.sendall(b"through the NAT\n")
        line = f.readline()
        if line != b"through the NAT\n":
            raise RuntimeError(f"unexpected echo {line!r}")
except Exception as e:  # noqa: BLE001 - any failure is reported the same way
    print(f"round trip failed: {e}", file=sys.stderr)
    sys.exit(1)

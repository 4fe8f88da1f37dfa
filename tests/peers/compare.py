#!/usr/bin/env python3
"""ncx beside rathole (TLS) and bore, on 127.0.0.1 only, in the same interleaved run.

Not part of the test suite (it needs the peers' binaries); `ncx-bench` (bench/) is the benchmark of record.
This answers one question: measured on the same machine at the same time, how does ncx compare with
the tunnels people would pick instead? One Python service serves every path, so Python's own
overhead is in every figure alike; quote the ratios to direct.

    cargo install --root /tmp/peers rathole --no-default-features --features server,client,tls
    cargo install --root /tmp/peers bore-cli
    cargo build --release
    python3 tests/peers/compare.py ROUNDS MIB target/release/ncx /tmp/peers/bin/rathole /tmp/peers/bin/bore

Needs the openssl command (rathole's TLS wants a PKCS#12 identity). bore's control port is fixed by
bore at 7835, so it must be free. Prints medians per path: download throughput, idle 64-byte round
trip, the round trip while a download runs through the same tunnel, connect to first echoed byte,
and the memory the tunnel's two processes hold per idle visitor (IDLE connections held at once).
"""
import os, shutil, socket, subprocess, sys, tempfile, threading, time, statistics

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

CHUNK = b"Z" * (1 << 20)
IDLE = 1000
def service():
    svc = socket.socket(); svc.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    svc.bind(("127.0.0.1", 0)); svc.listen(128)
    def h(c):
        try:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cmd = c.recv(1)
            if cmd == b"d":
                n = int.from_bytes(c.recv(8, socket.MSG_WAITALL), "big")
                while n > 0:
                    k = min(n, len(CHUNK)); c.sendall(CHUNK[:k]); n -= k
                c.shutdown(socket.SHUT_WR)
            elif cmd == b"D":  # endless
                while True: c.sendall(CHUNK)
            else:
                if cmd: c.sendall(cmd)
                while True:
                    b = c.recv(65536)
                    if not b: break
                    c.sendall(b)
        except OSError: pass
        finally: c.close()
    def loop():
        while True:
            c, _ = svc.accept(); threading.Thread(target=h, args=(c,), daemon=True).start()
    threading.Thread(target=loop, daemon=True).start()
    return svc.getsockname()[1]

def conn(port):
    c = socket.create_connection(("127.0.0.1", port)); c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1); return c

def download(port, n):
    c = conn(port); t = time.perf_counter(); c.sendall(b"d" + n.to_bytes(8, "big"))
    buf = bytearray(1 << 20); got = 0
    while True:
        k = c.recv_into(buf)
        if not k: break
        got += k
    dt = time.perf_counter() - t; c.close(); assert got == n, (got, n)
    return n / dt / (1 << 20)

def rr(port, n=2000):
    c = conn(port); c.sendall(b"e"); assert c.recv(1) == b"e"
    msg = b"x" * 64; lat = []
    for _ in range(n):
        t = time.perf_counter(); c.sendall(msg); got = 0
        while got < 64: got += len(c.recv(64 - got))
        lat.append((time.perf_counter() - t) * 1e6)
    c.close(); lat.sort(); return lat[len(lat)//2], lat[int(len(lat)*0.99)]

def rr_under_bulk(port):
    stop = threading.Event()
    def bulk():
        c = conn(port); c.sendall(b"D"); buf = bytearray(1 << 20)
        while not stop.is_set():
            if not c.recv_into(buf): break
        c.close()
    th = threading.Thread(target=bulk, daemon=True); th.start(); time.sleep(0.3)
    r = rr(port); stop.set(); th.join(5); return r

def connect_p50(port, n=300):
    lat = []
    for _ in range(n):
        t = time.perf_counter(); c = conn(port); c.sendall(b"e")
        assert c.recv(1) == b"e"; lat.append((time.perf_counter() - t) * 1e6); c.close()
    lat.sort(); return lat[len(lat)//2]

def rss_kib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"): return int(line.split()[1])
    return 0

def held_kib(port, pids, n):
    """Memory the tunnel's two processes hold per idle visitor connection, in KiB."""
    before = sum(rss_kib(p) for p in pids); held = []
    for _ in range(n):
        c = conn(port); c.sendall(b"e"); assert c.recv(1) == b"e"; held.append(c)
    after = sum(rss_kib(p) for p in pids)
    for c in held: c.close()
    return (after - before) / n

def wait_port(port, probe_echo=False, limit=15):
    end = time.time() + limit
    while time.time() < end:
        try:
            c = conn(port)
            if probe_echo:
                c.settimeout(1); c.sendall(b"e")
                if c.recv(1) == b"e": c.close(); return
                c.close()
            else:
                c.close(); return
        except OSError: pass
        time.sleep(0.05)
    raise SystemExit(f"port {port} never came up")

def start_ncx(exe, svc, d):
    sp, pp = free_port(), free_port(); env = dict(os.environ, NCX_TOKEN="t")
    a = subprocess.Popen([exe, "--log-level", "error", "server", "--listen", f"127.0.0.1:{sp}", "--auto-cert-dir", d + "/ncx",
        "--identity", "b", "--ports", "1024-65535", "--bind", "127.0.0.1"], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wait_port(sp)
    b = subprocess.Popen([exe, "--log-level", "error", "client", "--server", f"127.0.0.1:{sp}", "--identity", "b", "--insecure-skip-verify",
        "--service", f"s=127.0.0.1:{svc}@{pp}"], env=env, stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wait_port(pp, True); return [a, b], pp

def start_rathole(exe, svc, d):
    sp, pp = free_port(), free_port()
    subprocess.run(f"cd {d} && openssl req -x509 -newkey rsa:2048 -nodes -keyout k.pem -out c.pem -days 2 -subj /CN=localhost -addext subjectAltName=DNS:localhost 2>/dev/null && openssl pkcs12 -export -out id.pfx -inkey k.pem -in c.pem -passout pass:1234 2>/dev/null", shell=True, check=True)
    open(f"{d}/rs.toml", "w").write(f'[server]\nbind_addr = "127.0.0.1:{sp}"\n[server.transport]\ntype = "tls"\n[server.transport.tls]\npkcs12 = "{d}/id.pfx"\npkcs12_password = "1234"\n[server.services.s]\ntoken = "t"\nbind_addr = "127.0.0.1:{pp}"\n')
    open(f"{d}/rc.toml", "w").write(f'[client]\nremote_addr = "localhost:{sp}"\n[client.transport]\ntype = "tls"\n[client.transport.tls]\ntrusted_root = "{d}/c.pem"\nhostname = "localhost"\n[client.services.s]\ntoken = "t"\nlocal_addr = "127.0.0.1:{svc}"\n')
    a = subprocess.Popen([exe, "-s", f"{d}/rs.toml"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="error"))
    wait_port(sp)
    b = subprocess.Popen([exe, "-c", f"{d}/rc.toml"], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL, env=dict(os.environ, RUST_LOG="error"))
    wait_port(pp, True); return [a, b], pp

def start_bore(exe, svc, d):
    pp = free_port()
    a = subprocess.Popen([exe, "server", "--bind-addr", "127.0.0.1", "--min-port", str(pp), "--max-port", str(pp)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wait_port(7835)
    b = subprocess.Popen([exe, "local", str(svc), "--to", "127.0.0.1", "--port", str(pp)], stderr=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
    wait_port(pp, True); return [a, b], pp

if __name__ == "__main__":
    rounds = int(sys.argv[1]); mib = int(sys.argv[2])
    svc = service(); d = tempfile.mkdtemp(); os.makedirs(d + "/ncx")
    procs, ports, pids = [], {"direct": svc}, {}
    for name, start, exe in [("ncx", start_ncx, sys.argv[3]), ("rathole-tls", start_rathole, sys.argv[4]), ("bore", start_bore, sys.argv[5])]:
        p, port = start(exe, svc, d); procs += p; ports[name] = port; pids[name] = [x.pid for x in p]
    res = {k: {"dl": [], "rr50": [], "rr99": [], "b50": [], "b99": [], "conn": []} for k in ports}
    try:
        for r in range(rounds):
            for k, port in ports.items():
                res[k]["dl"].append(download(port, mib << 20))
                a, b = rr(port); res[k]["rr50"].append(a); res[k]["rr99"].append(b)
                a, b = rr_under_bulk(port); res[k]["b50"].append(a); res[k]["b99"].append(b)
                res[k]["conn"].append(connect_p50(port))
            print(f"round {r+1} done", flush=True)
        idle = {k: held_kib(ports[k], pids[k], IDLE) for k in pids}
    finally:
        for p in procs:
            p.kill(); p.wait()
        shutil.rmtree(d, ignore_errors=True)
    m = lambda k, f: statistics.median(res[k][f])
    print("| path | download MiB/s | ×direct | RR p50 µs | RR p99 µs | ×direct | under-bulk p50 µs | under-bulk p99 µs | connect p50 µs | ×direct | KiB per idle visitor |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for k in ports:
        print(f"| {k} | {m(k,'dl'):.0f} | {m(k,'dl')/m('direct','dl'):.2f}× | {m(k,'rr50'):.0f} | {m(k,'rr99'):.0f} | {m(k,'rr99')/m('direct','rr99'):.2f}× | {m(k,'b50'):.0f} | {m(k,'b99'):.0f} | {m(k,'conn'):.0f} | {m(k,'conn')/m('direct','conn'):.2f}× | {idle[k]:.1f} |" if k in idle else f"| {k} | {m(k,'dl'):.0f} | 1.00× | {m(k,'rr50'):.0f} | {m(k,'rr99'):.0f} | 1.00× | {m(k,'b50'):.0f} | {m(k,'b99'):.0f} | {m(k,'conn'):.0f} | 1.00× | – |")

#!/usr/bin/env bash
# bench/wan.sh — the benchmark's WAN mode: ncx against a direct TCP connection over the same
# emulated long link, in network namespaces this script creates and removes (root only).
#
#   [lan] ncx client, bench service ── [rtr] tbf RATE both ways ── [pub] delay relay :443 -> ncx server
#         10.79.1.2                     10.79.1.1 | 10.79.2.1              10.79.2.2, visitors on 127.0.0.1
#
# This machine has no netem, so the round trip comes from a TCP relay in front of the server that
# holds every chunk for RTT/2 in each direction (bench/wan/relay-delay.py), and the rate from tbf
# on the router (one FIFO shared by every flow, like a plain home router; 100 ms of queue). The
# direct path is a TCP connection from the lan to a bench service in pub through the same router
# and an identical relay. Bytes flow lan -> pub for "download" (a visitor downloading from the
# office service) and pub -> lan for "upload".
#
# For each RTT, each direction and each path one probe run (bench/src/wan.rs): one bulk stream for
# --seconds (20) while a 64-byte round trip is taken every 50 ms after a 3 s warm-up (less for runs
# shorter than 12 s), on a connection of
# its own (direct) or through the tunnel (ncx). Then two bulk streams at once through ncx at 50 ms
# (fairness), and both directions at 20 ms without a rate cap (where the CPU is the limit). Those
# two run --repeat times (3), alternating: on two shared cores one run's ratio moves by a tenth
# with the machine's state, so the table adds their median, as well as every run.
# A second table gives the CPU while each run measured: the idle share of all cores and what the
# relay, the services and the two ncx processes used (from /proc; a sampler beside each probe).
#
# Usage: bench/wan.sh [--ncx PATH] [--bench PATH] [--seconds S] [--rtts "20 50 100"] [--rate 100mbit]
#                     [--quick]   (--quick: only the single-stream runs at RATE)
#                     [--unshaped] (only the runs without a rate cap, at the first of --rtts)
#                     [--repeat N] (runs of each unshaped row, 3)
#   defaults: target/release/ncx and target/release/ncx-bench (cargo build --release first).
# Prints "SKIPPED: <why>" and exits 0 where namespaces cannot be created.
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
NCX=$ROOT/target/release/ncx
BENCH=$ROOT/target/release/ncx-bench
SECS=20
RTTS="20 50 100"
RATE=100mbit
QUICK=0
UNSHAPED_ONLY=0
REPEAT=3
while [ $# -gt 0 ]; do
  case $1 in
    --ncx) NCX=$2; shift 2 ;;
    --bench) BENCH=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --rtts) RTTS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --unshaped) UNSHAPED_ONLY=1; shift ;;
    --repeat) REPEAT=$2; shift 2 ;;
    *) echo "usage: $0 [--ncx PATH] [--bench PATH] [--seconds S] [--rtts \"20 50 100\"] [--rate 100mbit] [--quick] [--unshaped] [--repeat N]" >&2; exit 2 ;;
  esac
done
NCX=$(readlink -f "$NCX"); BENCH=$(readlink -f "$BENCH")
case $REPEAT in ''|*[!0-9]*|0) echo "--repeat takes a count of runs, got '$REPEAT'" >&2; exit 2 ;; esac
RELAY=$ROOT/bench/wan/relay-delay.py
WARMUP=$(python3 -c "print(min(3.0, $SECS / 4))" 2>/dev/null || echo 3)

skip() { echo "SKIPPED: WAN benchmark: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root (network namespaces)"
command -v ip >/dev/null || skip "iproute2 (ip) is not installed"
command -v tc >/dev/null || skip "tc is not installed"
command -v python3 >/dev/null || skip "python3 is not installed"
[ -x "$NCX" ] && [ -x "$BENCH" ] || { echo "build first: cargo build --release (missing $NCX or $BENCH)" >&2; exit 1; }

P=ncxwan$$
TMP=$(mktemp -d)
PIDS=()
cleanup() {
  set +e
  # WAN_KEEP=DIR keeps the logs of every process and every round trip of each run, one file per
  # run and path (rtts-*.txt: seconds since the start, milliseconds), for looking into a result.
  [ -n "${WAN_KEEP-}" ] && mkdir -p "$WAN_KEEP" && cp -r "$TMP"/. "$WAN_KEEP"/
  exec 2>/dev/null
  for pid in "${PIDS[@]}"; do kill -9 "$pid"; done
  for ns in lan rtr pub; do ip netns pids "$P$ns" | xargs -r kill -9; done
  wait
  for ns in lan rtr pub; do ip netns del "$P$ns"; done
  rm -rf "$TMP"
}
trap cleanup EXIT
x() { local ns=$1; shift; ip netns exec "$P$ns" "$@"; }
# bg NS NAME CMD...: start CMD inside NS, output in $TMP/NAME.out/.err; `ip netns exec` execs CMD,
# so $! is CMD itself.
bg() { local ns=$1 name=$2; shift 2; ip netns exec "$P$ns" "$@" >"$TMP/$name.out" 2>"$TMP/$name.err" & PIDS+=($!); }
# wait_for FILE PATTERN: bounded poll (10 s) for a line in a process's output.
wait_for() {
  local i
  for i in $(seq 200); do grep -q "$2" "$1" 2>/dev/null && return 0; sleep 0.05; done
  echo "timed out waiting for '$2' in $1:" >&2; cat "$1" "${1%.out}.err" >&2 2>/dev/null; exit 1
}
# wait_port NS PORT: bounded poll (15 s) until 127.0.0.1:PORT in NS accepts a connection.
wait_port() {
  local i
  for i in $(seq 300); do
    x "$1" bash -c "exec 3<>/dev/tcp/127.0.0.1/$2" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "timed out waiting for 127.0.0.1:$2 in $1" >&2; cat "$TMP"/client-*.err >&2 2>/dev/null; exit 1
}
stop() { local pid; for pid in "$@"; do kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; done; true; }

ip netns add "${P}probe" 2>/dev/null || skip "cannot create network namespaces here"
ip netns del "${P}probe"
for ns in lan rtr pub; do ip netns add "$P$ns"; x "$ns" ip link set lo up; done
ip link add eth0 netns "${P}lan" type veth peer name lan0 netns "${P}rtr"
ip link add wan0 netns "${P}rtr" type veth peer name eth0 netns "${P}pub"
x lan ip addr add 10.79.1.2/24 dev eth0; x lan ip link set eth0 up
x rtr ip addr add 10.79.1.1/24 dev lan0; x rtr ip link set lan0 up
x rtr ip addr add 10.79.2.1/24 dev wan0; x rtr ip link set wan0 up
x pub ip addr add 10.79.2.2/24 dev eth0; x pub ip link set eth0 up
x lan ip route add default via 10.79.1.1
x pub ip route add 10.79.1.0/24 via 10.79.2.1
x rtr sysctl -qw net.ipv4.ip_forward=1
shape() { # shape RATE|off: tbf on both router egresses (as a plain router's uplink and downlink)
  local dev
  for dev in lan0 wan0; do
    x rtr tc qdisc del dev "$dev" root 2>/dev/null || true
    [ "$1" = off ] || x rtr tc qdisc add dev "$dev" root tbf rate "$1" burst 32kb latency 100ms
  done
}

# Fixed ports are safe here: nothing else runs in these namespaces.
bg pub svc-pub "$BENCH" service --listen 127.0.0.1:9000
SVC_PUB=$!
bg lan svc-lan "$BENCH" service --listen 127.0.0.1:9000
SVC_LAN=$!
wait_for "$TMP/svc-pub.out" "listening"; wait_for "$TMP/svc-lan.out" "listening"
export NCX_TOKEN=wan-bench-token-not-secret
bg pub server env -u RUST_LOG "$NCX" --log-level warn server --listen 127.0.0.1:8443 \
  --auto-cert-dir "$TMP/certs" --identity bench --ports 10000-10001 --bind 127.0.0.1
SERVER=$!
wait_for "$TMP/server.out" "fingerprint:"
FP=$(sed -n 's/^server certificate fingerprint: //p' "$TMP/server.out")

# cpu.py DELAY SPAN NAME=PID...: after DELAY seconds, the CPU each process used over SPAN seconds,
# in % of one core, and the share of all cores that sat idle ("idle=27 server=48 ..."). Where the
# rate is set by the CPU, the idle share tells whether the cores were full or the stages waited.
cat >"$TMP/cpu.py" <<'EOF'
import os, sys, time

def busy(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])
    except (OSError, IndexError, ValueError):
        return None

def idle():
    with open("/proc/stat") as f:
        cpu = [int(v) for v in f.readline().split()[1:]]
    return cpu[3] + cpu[4], sum(cpu)

delay, span = float(sys.argv[1]), float(sys.argv[2])
procs = [arg.split("=", 1) for arg in sys.argv[3:]]
time.sleep(delay)
i0, t0 = idle()
b0 = {name: busy(pid) for name, pid in procs}
time.sleep(span)
i1, t1 = idle()
hz = os.sysconf("SC_CLK_TCK")
out = [f"idle={100 * (i1 - i0) / max(1, t1 - t0):.0f}"]
for name, pid in procs:
    b1 = busy(pid)
    if b0[name] is not None and b1 is not None:
        out.append(f"{name}={100 * (b1 - b0[name]) / hz / span:.0f}")
print(" ".join(out))
EOF
CPU_DELAY=$(python3 -c "print($WARMUP + 0.5)")
CPU_SPAN=$(python3 -c "print(max(0.5, $SECS - $WARMUP - 1.5))")
# cpu_from NAME=PID...: starts the sampler for the run that follows; cpu_read waits for its line
# (it ends before the run does).
cpu_from() { python3 "$TMP/cpu.py" "$CPU_DELAY" "$CPU_SPAN" "$@" >"$TMP/cpu.out" & CPU_PID=$!; }
cpu_read() { wait "$CPU_PID" 2>/dev/null; cat "$TMP/cpu.out"; }

RESULTS=()
RUN_NO=0
# run LABEL RTT DIR STREAMS: one direct run and one ncx run; appends a table row.
run() {
  local label=$1 rtt=$2 dir=$3 streams=$4 half direct_dir ncx_dir d n dc nc
  RUN_NO=$((RUN_NO + 1))
  half=$(python3 -c "print($rtt / 2)")
  bg pub relay-ncx python3 "$RELAY" --listen 10.79.2.2:443 --target 127.0.0.1:8443 --delay-ms "$half" --buffer-bytes 16777216 --quiet
  local relay_ncx=$!
  bg pub relay-direct python3 "$RELAY" --listen 10.79.2.2:9443 --target 127.0.0.1:9000 --delay-ms "$half" --buffer-bytes 16777216 --quiet
  local relay_direct=$!
  wait_for "$TMP/relay-ncx.out" "listening"; wait_for "$TMP/relay-direct.out" "listening"
  bg lan "client-$label-$rtt-$dir-$streams-r$RUN_NO" env -u RUST_LOG "$NCX" --log-level warn client --server 10.79.2.2:443 --server-name localhost \
    --identity bench --server-fingerprint "$FP" --service "bench=127.0.0.1:9000@10000"
  local client=$!
  wait_port pub 10000
  # download = bytes lan -> pub: the direct probe in the lan sends, the visitor in pub receives.
  if [ "$dir" = download ]; then direct_dir=upload; ncx_dir=download; else direct_dir=download; ncx_dir=upload; fi
  cpu_from relay="$relay_direct" service="$SVC_PUB"
  d=$(x lan "$BENCH" probe --bulk 10.79.2.2:9443 --ping 10.79.2.2:9443 --direction "$direct_dir" --streams "$streams" --seconds "$SECS" --warmup "$WARMUP" \
    --rtt-log "$TMP/rtts-$label-$rtt-$dir-$streams-r$RUN_NO-direct.txt")
  dc=$(cpu_read)
  cpu_from server="$SERVER" relay="$relay_ncx" client="$client" service="$SVC_LAN"
  n=$(x pub "$BENCH" probe --bulk 127.0.0.1:10000 --ping 127.0.0.1:10000 --direction "$ncx_dir" --streams "$streams" --seconds "$SECS" --warmup "$WARMUP" \
    --rtt-log "$TMP/rtts-$label-$rtt-$dir-$streams-r$RUN_NO-ncx.txt")
  nc=$(cpu_read)
  stop "$client" "$relay_ncx" "$relay_direct"
  echo "$label $rtt ms $dir x$streams: direct: $d cpu: $dc" >&2
  echo "$label $rtt ms $dir x$streams: ncx:    $n cpu: $nc" >&2
  RESULTS+=("$label|$rtt|$dir|$streams|$d|$n|$dc|$nc")
}

# unshaped RTT: the CPU-bound rows, --repeat times, the two directions taking turns.
unshaped() {
  local i
  shape off
  for i in $(seq "$REPEAT"); do
    run unshaped "$1" download 1
    run unshaped "$1" upload 1
  done
}

if [ "$UNSHAPED_ONLY" = 1 ]; then
  unshaped "${RTTS%% *}"
else
  for rtt in $RTTS; do
    shape "$RATE"
    run "$RATE" "$rtt" download 1
    run "$RATE" "$rtt" upload 1
  done
  if [ "$QUICK" = 0 ]; then
    shape "$RATE"
    run "$RATE" 50 download 2
    unshaped 20
  fi
fi

echo
# One row per run; then, for a row that ran more than once, the median of its runs (of the rates,
# of the ratios and of the p99 differences, each taken on its own). Then the CPU of each run.
cat >"$TMP/table.py" <<'EOF'
import statistics, sys

def kv(s):
    return dict(f.split("=", 1) for f in s.split())

print("| link | RTT | bytes | streams | direct Mbit/s | ncx Mbit/s | ncx / direct | per stream (ncx) "
      "| direct RTT p50 / p99 ms | ncx RTT p50 / p99 ms | ncx p99 − direct p99 |")
print("|---|---:|---|---:|---:|---:|---:|---|---|---|---:|")
groups, cpu = {}, []
for line in sys.stdin:
    label, rtt, way, streams, d, n, dc, nc = line.rstrip("\n").split("|")
    d, n = kv(d), kv(n)
    way = "lan → pub" if way == "download" else "pub → lan"
    cpu.append((label, rtt, way, streams, kv(dc), kv(nc)))
    dm, nm, per = float(d["mbit"]), float(n["mbit"]), n["streams"]
    dp50, dp99 = float(d["rtt_p50_ms"]), float(d["rtt_p99_ms"])
    np50, np99 = float(n["rtt_p50_ms"]), float(n["rtt_p99_ms"])
    print(f"| {label} | {rtt} ms | {way} | {streams} | {dm:.0f} | {nm:.0f} | {nm / dm:.2f}× | {per} | "
          f"{dp50:.1f} / {dp99:.1f} | {np50:.1f} / {np99:.1f} | {np99 - dp99:+.1f} ms |")
    groups.setdefault((label, rtt, way, streams), []).append((dm, nm, nm / dm, np99 - dp99))
for (label, rtt, way, streams), runs in groups.items():
    if len(runs) < 2:
        continue
    dm, nm, ratio, p99 = (statistics.median(col) for col in zip(*runs))
    lo, hi = min(r[2] for r in runs), max(r[2] for r in runs)
    print(f"| {label}, median of {len(runs)} | {rtt} ms | {way} | {streams} | {dm:.0f} | {nm:.0f} | "
          f"{ratio:.2f}× ({lo:.2f}–{hi:.2f}) | | | | {p99:+.1f} ms |")

def shares(c, names):
    return " / ".join(c.get(name, "?") for name in names)

print()
print("CPU while each run measured: idle is the share of all cores; each process in % of one core.")
print()
print("| link | RTT | bytes | streams | direct: idle % / relay / service | "
      "ncx: idle % / server / relay / client / service |")
print("|---|---:|---|---:|---|---|")
for label, rtt, way, streams, dc, nc in cpu:
    print(f"| {label} | {rtt} ms | {way} | {streams} | {shares(dc, ['idle', 'relay', 'service'])} | "
          f"{shares(nc, ['idle', 'server', 'relay', 'client', 'service'])} |")
EOF
for r in "${RESULTS[@]}"; do echo "$r"; done | python3 "$TMP/table.py"

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
# (fairness), and both directions at 20 ms without a rate cap (where the CPU is the limit).
#
# Usage: bench/wan.sh [--ncx PATH] [--bench PATH] [--seconds S] [--rtts "20 50 100"] [--rate 100mbit]
#                     [--quick]   (--quick: only the single-stream runs at RATE)
#                     [--unshaped] (only the two runs without a rate cap, at the first of --rtts)
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
while [ $# -gt 0 ]; do
  case $1 in
    --ncx) NCX=$2; shift 2 ;;
    --bench) BENCH=$2; shift 2 ;;
    --seconds) SECS=$2; shift 2 ;;
    --rtts) RTTS=$2; shift 2 ;;
    --rate) RATE=$2; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --unshaped) UNSHAPED_ONLY=1; shift ;;
    *) echo "usage: $0 [--ncx PATH] [--bench PATH] [--seconds S] [--rtts \"20 50 100\"] [--rate 100mbit]" >&2; exit 2 ;;
  esac
done
NCX=$(readlink -f "$NCX"); BENCH=$(readlink -f "$BENCH")
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
  # WAN_KEEP=DIR keeps the logs of every process (for looking into a result).
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
bg lan svc-lan "$BENCH" service --listen 127.0.0.1:9000
wait_for "$TMP/svc-pub.out" "listening"; wait_for "$TMP/svc-lan.out" "listening"
export NCX_TOKEN=wan-bench-token-not-secret
bg pub server env -u RUST_LOG "$NCX" --log-level warn server --listen 127.0.0.1:8443 \
  --auto-cert-dir "$TMP/certs" --identity bench --ports 10000-10001 --bind 127.0.0.1
wait_for "$TMP/server.out" "fingerprint:"
FP=$(sed -n 's/^server certificate fingerprint: //p' "$TMP/server.out")

RESULTS=()
# run LABEL RTT DIR STREAMS: one direct run and one ncx run; appends a table row.
run() {
  local label=$1 rtt=$2 dir=$3 streams=$4 half direct_dir ncx_dir d n
  half=$(python3 -c "print($rtt / 2)")
  bg pub relay-ncx python3 "$RELAY" --listen 10.79.2.2:443 --target 127.0.0.1:8443 --delay-ms "$half" --buffer-bytes 16777216 --quiet
  local relay_ncx=$!
  bg pub relay-direct python3 "$RELAY" --listen 10.79.2.2:9443 --target 127.0.0.1:9000 --delay-ms "$half" --buffer-bytes 16777216 --quiet
  local relay_direct=$!
  wait_for "$TMP/relay-ncx.out" "listening"; wait_for "$TMP/relay-direct.out" "listening"
  bg lan "client-$label-$rtt-$dir-$streams" env -u RUST_LOG "$NCX" --log-level warn client --server 10.79.2.2:443 --server-name localhost \
    --identity bench --server-fingerprint "$FP" --service "bench=127.0.0.1:9000@10000"
  local client=$!
  wait_port pub 10000
  # download = bytes lan -> pub: the direct probe in the lan sends, the visitor in pub receives.
  if [ "$dir" = download ]; then direct_dir=upload; ncx_dir=download; else direct_dir=download; ncx_dir=upload; fi
  d=$(x lan "$BENCH" probe --bulk 10.79.2.2:9443 --ping 10.79.2.2:9443 --direction "$direct_dir" --streams "$streams" --seconds "$SECS" --warmup "$WARMUP")
  n=$(x pub "$BENCH" probe --bulk 127.0.0.1:10000 --ping 127.0.0.1:10000 --direction "$ncx_dir" --streams "$streams" --seconds "$SECS" --warmup "$WARMUP")
  stop "$client" "$relay_ncx" "$relay_direct"
  echo "$label $rtt ms $dir x$streams: direct: $d" >&2
  echo "$label $rtt ms $dir x$streams: ncx:    $n" >&2
  RESULTS+=("$label|$rtt|$dir|$streams|$d|$n")
}

if [ "$UNSHAPED_ONLY" = 1 ]; then
  shape off
  run unshaped "${RTTS%% *}" download 1
  run unshaped "${RTTS%% *}" upload 1
else
  for rtt in $RTTS; do
    shape "$RATE"
    run "$RATE" "$rtt" download 1
    run "$RATE" "$rtt" upload 1
  done
  if [ "$QUICK" = 0 ]; then
    shape "$RATE"
    run "$RATE" 50 download 2
    shape off
    run unshaped 20 download 1
    run unshaped 20 upload 1
  fi
fi

kv() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
echo
echo "| link | RTT | bytes | streams | direct Mbit/s | ncx Mbit/s | ncx / direct | per stream (ncx) | direct RTT p50 / p99 ms | ncx RTT p50 / p99 ms | ncx p99 − direct p99 |"
echo "|---|---:|---|---:|---:|---:|---:|---|---|---|---:|"
for r in "${RESULTS[@]}"; do
  IFS='|' read -r label rtt dir streams d n <<<"$r"
  dm=$(kv "$d" mbit); nm=$(kv "$n" mbit)
  dp50=$(kv "$d" rtt_p50_ms); dp99=$(kv "$d" rtt_p99_ms); np50=$(kv "$n" rtt_p50_ms); np99=$(kv "$n" rtt_p99_ms)
  way=$([ "$dir" = download ] && echo "lan → pub" || echo "pub → lan")
  python3 - "$label" "$rtt" "$way" "$streams" "$dm" "$nm" "$(kv "$n" streams)" "$dp50" "$dp99" "$np50" "$np99" <<'EOF'
import sys
label, rtt, way, streams, dm, nm, per, dp50, dp99, np50, np99 = sys.argv[1:]
dm, nm, dp99f, np99f = float(dm), float(nm), float(dp99), float(np99)
print(f"| {label} | {rtt} ms | {way} | {streams} | {dm:.0f} | {nm:.0f} | {nm / dm:.2f}× | {per} | "
      f"{float(dp50):.1f} / {dp99f:.1f} | {float(np50):.1f} / {np99f:.1f} | {np99f - dp99f:+.1f} ms |")
EOF
done

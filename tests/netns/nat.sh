#!/usr/bin/env bash
# End-to-end through a real NAT that lets only TCP to port 443 out, built from network namespaces.
#
#   lan (client, echo service) --- router (MASQUERADE, only tcp/443 out) --- pub (ncx server :443) --- visitor
#   10.77.1.2                10.77.1.1 | 10.77.2.1                       10.77.2.2 | 10.77.3.1     10.77.3.2
#
# Shows: (a) a visitor reaches the service in the lan through the client; (b) the tunnel recovers
# after the router drops all traffic for longer than the liveness timeout; (c) it recovers after the
# server is killed with SIGKILL and restarted; (d) a visitor whose network vanishes is given up by
# TCP keepalive. Every address is inside namespaces this script
# creates, and everything it creates is removed on exit.
#
# Usage: tests/netns/nat.sh PATH_TO_NCX_BINARY
# Prints "SKIPPED: <why>" and exits 0 where namespaces cannot be created.
set -euo pipefail

NCX=${1:?usage: nat.sh PATH_TO_NCX}
NCX=$(readlink -f "$NCX")
HERE=$(cd "$(dirname "$0")" && pwd)
P=ncxnat$$            # namespace prefix, unique per run
TMP=$(mktemp -d)
PIDS=()

skip() { echo "SKIPPED: netns NAT test: $*"; exit 0; }
[ "$(id -u)" = 0 ] || skip "needs root"
command -v ip >/dev/null || skip "iproute2 (ip) is not installed"
command -v iptables >/dev/null || skip "iptables is not installed"
command -v python3 >/dev/null || skip "python3 is not installed"
ip netns add "${P}probe" 2>/dev/null || skip "cannot create network namespaces here"
ip netns del "${P}probe"

cleanup() {
  set +e
  exec 2>/dev/null # bash's "Killed" job notices for the processes stopped below
  for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null; done
  # Anything else still running inside the namespaces goes too, so nothing outlives the test.
  for ns in lan router pub visitor; do ip netns pids "$P$ns" 2>/dev/null | xargs -r kill -9; done
  wait 2>/dev/null
  for ns in lan router pub visitor; do ip netns del "$P$ns" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT

x() { local ns=$1; shift; ip netns exec "$P$ns" "$@"; }
# Starts a program in a namespace in the background. `ip netns exec` execs it, so $! is the
# program itself (a backgrounded shell function would be a subshell, and killing that would leave
# the program running).

for ns in lan router pub visitor; do ip netns add "$P$ns"; x "$ns" ip link set lo up; done
link() { # link NS_A IF_A ADDR_A NS_B IF_B ADDR_B
  ip link add "$2" netns "$P$1" type veth peer name "$5" netns "$P$4"
  x "$1" ip addr add "$3" dev "$2"; x "$1" ip link set "$2" up
  x "$4" ip addr add "$6" dev "$5"; x "$4" ip link set "$5" up
}
link lan eth0 10.77.1.2/24 router lan0 10.77.1.1/24
link router wan0 10.77.2.1/24 pub eth0 10.77.2.2/24
link pub eth1 10.77.3.1/24 visitor eth0 10.77.3.2/24
x lan ip route add default via 10.77.1.1
x visitor ip route add default via 10.77.3.1
x router sysctl -qw net.ipv4.ip_forward=1
# NAT: the lan hides behind the router's wan address; only TCP to port 443 may leave.
x router iptables -t nat -A POSTROUTING -o wan0 -j MASQUERADE
x router iptables -P FORWARD DROP
x router iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
x router iptables -A FORWARD -i lan0 -o wan0 -p tcp --dport 443 -j ACCEPT
# The public host has no route into the lan at all.

cat > "$TMP/server.toml" <<TOML
listen = "10.77.2.2:443"
ping_interval_secs = 1
liveness_timeout_secs = 3
drain_timeout_secs = 1
[tls]
auto_cert_dir = "$TMP/certs"
[[identities]]
name = "lan"
token = "nat-test-token"
ports = ["20000"]
TOML
start_server() {
  ip netns exec "${P}pub" "$NCX" server --config "$TMP/server.toml" >>"$TMP/server.log" 2>&1 &
  PIDS+=($!); SERVER=$!
}
start_server
for _ in $(seq 100); do grep -q "server listening" "$TMP/server.log" && break; sleep 0.1; done
FP=$(grep -o 'sha256:[0-9a-f]*' "$TMP/server.log" | head -1)
[ -n "$FP" ] || { cat "$TMP/server.log"; echo "FAIL: the server printed no fingerprint"; exit 1; }

ip netns exec "${P}lan" "$NCX" echo --listen 10.77.1.2:7000 >"$TMP/echo.log" 2>&1 &
PIDS+=($!)
cat > "$TMP/client.toml" <<TOML
server = "10.77.2.2:443"
identity = "lan"
token = "nat-test-token"
server_fingerprint = "$FP"
ping_interval_secs = 1
liveness_timeout_secs = 3
reconnect_initial_secs = 1
reconnect_max_secs = 2
[[services]]
name = "echo"
local = "10.77.1.2:7000"
remote_port = 20000
TOML
ip netns exec "${P}lan" "$NCX" client --config "$TMP/client.toml" >"$TMP/client.log" 2>&1 &
PIDS+=($!)

# Waits until a visitor round trip works, at most $1 seconds; prints how long it took.
wait_roundtrip() {
  local limit=$1 start end
  start=$(date +%s.%N)
  for _ in $(seq $((limit * 5))); do
    if x visitor python3 "$HERE/roundtrip.py" 10.77.3.1 20000 1 2>/dev/null; then
      end=$(date +%s.%N); python3 -c "print(f'{$end - $start:.2f}')"; return 0
    fi
    sleep 0.2
  done
  return 1
}
fail() {
  echo "FAIL: $*"
  echo "--- server log"; tail -20 "$TMP/server.log"
  echo "--- client log"; tail -20 "$TMP/client.log"
  exit 1
}

# The firewall is real: the lan cannot reach the public host on another port.
if x lan timeout 2 python3 -c "import socket; socket.create_connection(('10.77.2.2', 80), timeout=1)" 2>/dev/null; then
  fail "the router let tcp/80 out"
fi

t=$(wait_roundtrip 20) || fail "(a) no visitor round trip through the NAT"
echo "ok (a): visitor reached the lan service through the client behind NAT (${t}s to come up)"

x router iptables -I FORWARD 1 -j DROP
sleep 5   # longer than the 3 s liveness timeout: both sides must notice
x router iptables -D FORWARD 1
t=$(wait_roundtrip 30) || fail "(b) the tunnel did not recover after the outage"
grep -q "answered no ping\|stopped answering pings" "$TMP/client.log" "$TMP/server.log" \
  || fail "(b) neither side noticed the outage"
echo "ok (b): recovered ${t}s after a 5 s outage (liveness timeout 3 s)"

OLD=$SERVER
kill -9 "$OLD"
wait "$OLD" 2>/dev/null || true
kill -0 "$OLD" 2>/dev/null && fail "(c) the server survived SIGKILL"
[ -z "$(ip netns pids "${P}pub")" ] || fail "(c) a server process is still running after SIGKILL"
start_server
t=$(wait_roundtrip 30) || fail "(c) the tunnel did not recover after the server was killed"
[ "$(grep -c 'server listening' "$TMP/server.log")" = 2 ] || fail "(c) the restarted server is not the one serving"
grep -q "not connected; retrying" "$TMP/client.log" || fail "(c) the client never noticed the server's death"
echo "ok (c): recovered ${t}s after SIGKILL and restart of the server"

# (d) A visitor whose network vanishes (no FIN, no RST ever arrives) frees its place, even with a
# reply to it in flight that is never acknowledged: TCP keepalive (30 s idle, 3 probes 10 s apart)
# and a user timeout as long as that give the connection up after about a minute, and the
# server's audit line records the reset. The visitor first loses what comes in, then sends a line,
# so the echo's reply to it stays unacknowledged; then it loses what goes out too.
x visitor python3 -c "
import os, socket, time
s = socket.create_connection(('10.77.3.1', 20000), timeout=5)
f = s.makefile('rb')
assert f.readline().startswith(b'hello from the ncx demo service')
s.sendall(b'held\\n'); assert f.readline() == b'held\\n'
print('HELD-OK', flush=True)
for _ in range(200):
    if os.path.exists('$TMP/go'): break
    time.sleep(0.05)
s.sendall(b'again\\n')
print('SENT', flush=True)
time.sleep(600)
" >"$TMP/held.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q HELD-OK "$TMP/held.log" && break; sleep 0.1; done
grep -q HELD-OK "$TMP/held.log" || fail "(d) the held visitor was not served"
before=$(grep -c 'visitor connection service=.*visitor=10.77.3.2' "$TMP/server.log" || true)
x visitor iptables -A INPUT -j DROP
touch "$TMP/go"
for _ in $(seq 100); do grep -q SENT "$TMP/held.log" && break; sleep 0.1; done
grep -q SENT "$TMP/held.log" || fail "(d) the held visitor did not send its second line"
x visitor iptables -A OUTPUT -j DROP
start=$(date +%s)
gone=""
for _ in $(seq 240); do   # at most 120 s
  now=$(grep -c 'visitor connection service=.*visitor=10.77.3.2.*end=reset' "$TMP/server.log" || true)
  if [ "$now" -gt 0 ] && [ "$(grep -c 'visitor connection service=.*visitor=10.77.3.2' "$TMP/server.log")" -gt "$before" ]; then
    gone=yes; break
  fi
  sleep 0.5
done
[ -n "$gone" ] || fail "(d) the vanished visitor still holds its place after 120 s"
echo "ok (d): a vanished visitor with a reply in flight was given up after $(( $(date +%s) - start ))s"
echo "netns: 4 passed, 0 failed"

#!/usr/bin/env bash
# An office network whose only way out is the company's HTTP proxy, built from network namespaces:
#
#   lan (client, echo service) --- router (forwards only to the proxy) --- proxy (squid :3128) --- pub (ncx server, visitor)
#   10.78.1.2                 10.78.1.1 | 10.78.2.1                    10.78.2.3 | 10.78.3.1      10.78.3.2
#
# The router drops everything from the lan except TCP to squid, and squid's namespace does not
# route, so the lan cannot reach the server at all except through squid's CONNECT tunnel. Shows:
# (a) the lan really cannot reach the server directly; (b) a client configured with
# `proxy = "http://…"` registers its service and a visitor's bytes reach the lan through squid;
# (c) a client that finds the proxy in HTTPS_PROXY does the same and logs where it came from;
# (d) the server saw every session arrive from squid. Every address is inside namespaces this script
# creates, and everything it creates is removed on exit.
#
# Usage: tests/netns/proxy.sh PATH_TO_NCX_BINARY
# Prints "SKIPPED: <why>" and exits 0 where it cannot run (and fails where NCX_REQUIRE_PROXIES
# says squid must be there).
set -euo pipefail

NCX=${1:?usage: proxy.sh PATH_TO_NCX}
NCX=$(readlink -f "$NCX")
HERE=$(cd "$(dirname "$0")" && pwd)
P=ncxpx$$             # namespace prefix, unique per run
TMP=$(mktemp -d)
PIDS=()

skip() {
  if [ -n "${NCX_REQUIRE_PROXIES:-}" ] && [ "${2:-}" = squid ]; then
    echo "FAIL: netns proxy test: $1 (NCX_REQUIRE_PROXIES is set)"; exit 1
  fi
  echo "SKIPPED: netns proxy test: $1"; exit 0
}
[ "$(id -u)" = 0 ] || skip "needs root"
command -v ip >/dev/null || skip "iproute2 (ip) is not installed"
command -v iptables >/dev/null || skip "iptables is not installed"
command -v python3 >/dev/null || skip "python3 is not installed"
[ -x /usr/sbin/squid ] || skip "squid is not installed" squid
ip netns add "${P}probe" 2>/dev/null || skip "cannot create network namespaces here"
ip netns del "${P}probe"

NSES="lan router proxy pub"
cleanup() {
  set +e
  exec 2>/dev/null # bash's "Killed" job notices for the processes stopped below
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  sleep 0.2
  for ns in $NSES; do ip netns pids "$P$ns" 2>/dev/null | xargs -r kill -9; done
  wait 2>/dev/null
  for ns in $NSES; do ip netns del "$P$ns" 2>/dev/null; done
  rm -rf "$TMP"
}
trap cleanup EXIT

x() { local ns=$1; shift; ip netns exec "$P$ns" "$@"; }
# Programs started in the background use `ip netns exec` directly, so $! is the program itself
# (a backgrounded shell function would be a subshell, and killing that would leave it running).
for ns in $NSES; do ip netns add "$P$ns"; x "$ns" ip link set lo up; done
link() { # link NS_A IF_A ADDR_A NS_B IF_B ADDR_B
  ip link add "$2" netns "$P$1" type veth peer name "$5" netns "$P$4"
  x "$1" ip addr add "$3" dev "$2"; x "$1" ip link set "$2" up
  x "$4" ip addr add "$6" dev "$5"; x "$4" ip link set "$5" up
}
link lan eth0 10.78.1.2/24 router lan0 10.78.1.1/24
link router wan0 10.78.2.1/24 proxy eth0 10.78.2.3/24
link proxy eth1 10.78.3.1/24 pub eth0 10.78.3.2/24
x lan ip route add default via 10.78.1.1
x router ip route add 10.78.3.0/24 via 10.78.2.3
x proxy ip route add 10.78.1.0/24 via 10.78.2.1
x pub ip route add default via 10.78.3.1
x router sysctl -qw net.ipv4.ip_forward=1
# squid's host is no router: nothing passes it except what squid itself connects.
x proxy sysctl -qw net.ipv4.ip_forward=0
# The office firewall: from the lan, only TCP to the proxy.
x router iptables -P FORWARD DROP
x router iptables -A FORWARD -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
x router iptables -A FORWARD -i lan0 -o wan0 -d 10.78.2.3 -p tcp --dport 3128 -j ACCEPT

mkdir -p "$TMP/squid"
cat > "$TMP/squid/squid.conf" <<CONF
http_port 10.78.2.3:3128
pid_filename $TMP/squid/squid.pid
cache_log $TMP/squid/cache.log
access_log stdio:$TMP/squid/access.log
cache deny all
coredump_dir $TMP/squid
shutdown_lifetime 0 seconds
dns_nameservers 127.0.0.1
acl CONNECT method CONNECT
acl office src 10.78.1.0/24
acl server dst 10.78.3.2/32
acl server_port port 7835
http_access allow CONNECT office server server_port
http_access deny all
CONF
# squid started as root runs as the user `proxy`, which must reach and write its directory.
chmod 755 "$TMP"
chown -R proxy:proxy "$TMP/squid"
ip netns exec "${P}proxy" /usr/sbin/squid -N -f "$TMP/squid/squid.conf" >"$TMP/squid.out" 2>&1 &
PIDS+=($!)

cat > "$TMP/server.toml" <<TOML
listen = "10.78.3.2:7835"
[tls]
auto_cert_dir = "$TMP/certs"
[[identities]]
name = "office"
token = "proxy-test-token"
ports = ["20000-20001"]
TOML
ip netns exec "${P}pub" "$NCX" server --config "$TMP/server.toml" >"$TMP/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q "server listening" "$TMP/server.log" && break; sleep 0.1; done
FP=$(grep -o 'sha256:[0-9a-f]*' "$TMP/server.log" | head -1)
[ -n "$FP" ] || { cat "$TMP/server.log"; echo "FAIL: the server printed no fingerprint"; exit 1; }
up=""
for _ in $(seq 100); do
  if x router timeout 1 python3 -c "import socket; socket.create_connection(('10.78.2.3', 3128), timeout=1)" 2>/dev/null; then
    up=yes; break
  fi
  sleep 0.1
done
[ -n "$up" ] || { tail -20 "$TMP/squid/cache.log"; echo "FAIL: squid did not start"; exit 1; }

ip netns exec "${P}lan" "$NCX" echo --listen 10.78.1.2:7000 >"$TMP/echo.log" 2>&1 &
PIDS+=($!)

fail() {
  echo "FAIL: $*"
  for f in server client1 client2; do echo "--- $f log"; tail -20 "$TMP/$f.log" 2>/dev/null; done
  echo "--- squid access log"; tail -20 "$TMP/squid/access.log" 2>/dev/null
  exit 1
}

# (a) The firewall is real: the lan cannot reach the server, only the proxy.
if x lan timeout 3 python3 -c "import socket; socket.create_connection(('10.78.3.2', 7835), timeout=2)" 2>/dev/null; then
  fail "(a) the lan reached the server without the proxy"
fi
x lan timeout 3 python3 -c "import socket; socket.create_connection(('10.78.2.3', 3128), timeout=2)" \
  || fail "(a) the lan cannot reach the proxy"
echo "ok (a): from the lan only the proxy is reachable"

# Waits until a visitor round trip to public port $1 works, at most $2 seconds.
wait_roundtrip() {
  for _ in $(seq $(($2 * 5))); do
    x pub python3 "$HERE/roundtrip.py" 10.78.3.2 "$1" 1 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

client_config() { # client_config FILE PUBLIC_PORT [PROXY_LINE]
  cat > "$1" <<TOML
server = "10.78.3.2:7835"
identity = "office"
token = "proxy-test-token"
server_fingerprint = "$FP"
${3:-}
[[services]]
name = "echo$2"
local = "10.78.1.2:7000"
remote_port = $2
TOML
}

# (b) The proxy from the configuration.
client_config "$TMP/client1.toml" 20000 'proxy = "http://10.78.2.3:3128"'
ip netns exec "${P}lan" "$NCX" client --config "$TMP/client1.toml" >"$TMP/client1.log" 2>&1 &
CLIENT1=$!
PIDS+=($CLIENT1)
wait_roundtrip 20000 20 || fail "(b) no visitor round trip through the proxy"
grep -q "reaching the server through a proxy proxy=http://10.78.2.3:3128" "$TMP/client1.log" \
  || fail "(b) the client did not log the proxy it used"
# The next client has the same identity: stop this one first, and squid logs its tunnel as it
# closes.
kill -TERM "$CLIENT1"
wait "$CLIENT1" 2>/dev/null || true
logged=""
for _ in $(seq 50); do
  grep -q "10.78.1.2 TCP_TUNNEL/200 .* CONNECT 10.78.3.2:7835" "$TMP/squid/access.log" && { logged=yes; break; }
  sleep 0.1
done
[ -n "$logged" ] || fail "(b) squid did not log the client's CONNECT to the server"
echo "ok (b): a visitor reached the lan through the client's tunnel inside squid's CONNECT"

# (c) The proxy from the environment.
client_config "$TMP/client2.toml" 20001
ip netns exec "${P}lan" env HTTPS_PROXY=http://10.78.2.3:3128 "$NCX" client --config "$TMP/client2.toml" >"$TMP/client2.log" 2>&1 &
PIDS+=($!)
wait_roundtrip 20001 20 || fail "(c) no visitor round trip through the proxy from HTTPS_PROXY"
grep -q "from=the environment variable HTTPS_PROXY" "$TMP/client2.log" \
  || fail "(c) the client did not log that HTTPS_PROXY named the proxy"
echo "ok (c): the same through HTTPS_PROXY"

# (d) The server sees its clients arrive from squid's address, never from the lan's.
grep -q "session{peer=10.78.3.1:" "$TMP/server.log" || fail "(d) no session from squid's address"
if grep -q "peer=10.78.1." "$TMP/server.log"; then fail "(d) a session came from the lan directly"; fi
echo "ok (d): every session reached the server from squid's address"
echo "netns proxy: 4 passed, 0 failed"

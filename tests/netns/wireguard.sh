#!/usr/bin/env bash
# A WireGuard tunnel carried through ncx, from an office that lets only one TCP port out, built
# from network namespaces:
#
#   lan (ncx client, wireguard-go wga 10.99.0.1) --- pub (ncx server) --- vis (wireguard-go wgb 10.99.0.2)
#   10.79.1.2                                 10.79.1.1 | 10.79.2.1        10.79.2.2
#
# The lan's firewall lets out only TCP to the server's port 7835 (and nothing in that it did not
# ask for); pub does not route. The client exposes the lan's WireGuard port (UDP 51820) as the
# UDP service on pub's port 20051, and the visitor's WireGuard peer has that as its endpoint. Shows:
# (a) the lan cannot reach the visitor, nor the visitor the lan, outside ncx; (b) a WireGuard
# handshake completes through the tunnel; (c) an 8 MiB TCP transfer inside WireGuard arrives byte
# for byte, with its rate printed. Every address is inside namespaces this script creates, and
# everything it creates is removed on exit.
#
# Usage: tests/netns/wireguard.sh PATH_TO_NCX_BINARY
# Prints "SKIPPED: <why>" and exits 0 where it cannot run (and fails where NCX_REQUIRE_PROXIES
# says wireguard-go must be there).
set -euo pipefail

NCX=${1:?usage: wireguard.sh PATH_TO_NCX}
NCX=$(readlink -f "$NCX")
P=ncxwg$$             # namespace prefix, unique per run
TMP=$(mktemp -d)
PIDS=()
# wireguard-go's control sockets are named after the interfaces in /var/run/wireguard, which
# every namespace shares: names unique per run.
WGA=wga$$
WGB=wgb$$

skip() {
  if [ -n "${NCX_REQUIRE_PROXIES:-}" ] && [ "${2:-}" = required ]; then
    echo "FAIL: netns WireGuard test: $1 (NCX_REQUIRE_PROXIES is set)"; exit 1
  fi
  echo "SKIPPED: netns WireGuard test: $1"; exit 0
}
[ "$(id -u)" = 0 ] || skip "needs root"
command -v ip >/dev/null || skip "iproute2 (ip) is not installed"
command -v iptables >/dev/null || skip "iptables is not installed"
command -v python3 >/dev/null || skip "python3 is not installed"
command -v wireguard-go >/dev/null || skip "wireguard-go is not installed" required
command -v wg >/dev/null || skip "wg (wireguard-tools) is not installed" required
[ -c /dev/net/tun ] || skip "/dev/net/tun is missing"
ip netns add "${P}probe" 2>/dev/null || skip "cannot create network namespaces here"
ip netns del "${P}probe"

NSES="lan pub vis"
cleanup() {
  set +e
  exec 2>/dev/null
  for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null; done
  sleep 0.2
  for ns in $NSES; do ip netns pids "$P$ns" 2>/dev/null | xargs -r kill -9; done
  wait 2>/dev/null
  for ns in $NSES; do ip netns del "$P$ns" 2>/dev/null; done
  rm -f "/var/run/wireguard/$WGA.sock" "/var/run/wireguard/$WGB.sock"
  rm -rf "$TMP"
}
trap cleanup EXIT

x() { local ns=$1; shift; ip netns exec "$P$ns" "$@"; }
for ns in $NSES; do ip netns add "$P$ns"; x "$ns" ip link set lo up; done
link() { # link NS_A IF_A ADDR_A NS_B IF_B ADDR_B
  ip link add "$2" netns "$P$1" type veth peer name "$5" netns "$P$4"
  x "$1" ip addr add "$3" dev "$2"; x "$1" ip link set "$2" up
  x "$4" ip addr add "$6" dev "$5"; x "$4" ip link set "$5" up
}
link lan eth0 10.79.1.2/24 pub lan0 10.79.1.1/24
link vis eth0 10.79.2.2/24 pub vis0 10.79.2.1/24
x pub sysctl -qw net.ipv4.ip_forward=0
x lan ip route add default via 10.79.1.1
x vis ip route add default via 10.79.2.1
# The office: out only TCP to the server's port; in only what answers that.
x lan iptables -P OUTPUT DROP
x lan iptables -A OUTPUT -o lo -j ACCEPT
x lan iptables -A OUTPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
x lan iptables -A OUTPUT -d 10.79.1.1 -p tcp --dport 7835 -j ACCEPT
x lan iptables -P INPUT DROP
x lan iptables -A INPUT -i lo -j ACCEPT
x lan iptables -A INPUT -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT

fail() {
  echo "FAIL: $*"
  for f in server client wga wgb; do echo "--- $f log"; tail -20 "$TMP/$f.log" 2>/dev/null; done
  x lan wg show 2>/dev/null; x vis wg show 2>/dev/null
  exit 1
}

cat > "$TMP/server.toml" <<TOML
listen = "0.0.0.0:7835"
[tls]
auto_cert_dir = "$TMP/certs"
[[identities]]
name = "office"
token = "wireguard-test-token"
ports = ["20051"]
TOML
ip netns exec "${P}pub" "$NCX" server --config "$TMP/server.toml" >"$TMP/server.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q "server listening" "$TMP/server.log" && break; sleep 0.1; done
FP=$(grep -o 'sha256:[0-9a-f]*' "$TMP/server.log" | head -1)
[ -n "$FP" ] || fail "the server printed no fingerprint"

# The two WireGuard peers (userspace, as on a machine without the kernel module).
export WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD=1
KA=$(wg genkey); KB=$(wg genkey)
PA=$(echo "$KA" | wg pubkey); PB=$(echo "$KB" | wg pubkey)
echo "$KA" > "$TMP/ka"; echo "$KB" > "$TMP/kb"
x lan wireguard-go "$WGA" >"$TMP/wga.log" 2>&1 || fail "wireguard-go did not start in the lan"
x vis wireguard-go "$WGB" >"$TMP/wgb.log" 2>&1 || fail "wireguard-go did not start for the visitor"
x lan wg set "$WGA" private-key "$TMP/ka" listen-port 51820 peer "$PB" allowed-ips 10.99.0.2/32
x lan ip addr add 10.99.0.1/24 dev "$WGA"
x lan ip link set "$WGA" up
# Inside the WireGuard tunnel the office lets everything through (it is its own VPN).
x lan iptables -A INPUT -i "$WGA" -j ACCEPT
x lan iptables -A OUTPUT -o "$WGA" -j ACCEPT
x vis wg set "$WGB" private-key "$TMP/kb" peer "$PA" allowed-ips 10.99.0.1/32 \
  endpoint 10.79.2.1:20051 persistent-keepalive 25
x vis ip addr add 10.99.0.2/24 dev "$WGB"
x vis ip link set "$WGB" up

# (a) Without ncx the two sides do not meet: the lan cannot send to the visitor at all, and the
# visitor's WireGuard endpoint (pub's UDP port) has no service yet.
if x lan timeout 3 python3 -c "import socket; socket.create_connection(('10.79.2.2', 22), timeout=2)" 2>/dev/null; then
  fail "(a) the lan reached the visitor's network"
fi
echo "ok (a): the lan reaches nothing but the server's port 7835"

# The office's ncx client: the WireGuard port as a UDP service.
cat > "$TMP/client.toml" <<TOML
server = "10.79.1.1:7835"
identity = "office"
token = "wireguard-test-token"
server_fingerprint = "$FP"
[[services]]
name = "wireguard"
local = "127.0.0.1:51820"
remote_port = 20051
protocol = "udp"
TOML
ip netns exec "${P}lan" "$NCX" client --config "$TMP/client.toml" >"$TMP/client.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do grep -q "service available" "$TMP/client.log" && break; sleep 0.1; done
grep -q "service available" "$TMP/client.log" || fail "the UDP service was not registered"

# (b) The handshake: the visitor's keepalive and first packets reach the lan's peer through ncx.
x vis python3 -c "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.sendto(b'', ('10.99.0.1', 9))" || true
shaken=""
for _ in $(seq 100); do
  if x vis wg show "$WGB" latest-handshakes | awk '{exit !($2 > 0)}'; then shaken=yes; break; fi
  sleep 0.1
done
[ -n "$shaken" ] || fail "(b) no WireGuard handshake through the tunnel"
echo "ok (b): the WireGuard handshake completed through ncx"

# (c) A TCP transfer inside WireGuard, checked byte for byte.
head -c 8388608 /dev/urandom > "$TMP/blob"
ip netns exec "${P}lan" python3 -c "
import socket
s = socket.create_server(('10.99.0.1', 9000))
c, _ = s.accept()
c.sendall(open('$TMP/blob', 'rb').read())
c.close()
" &
PIDS+=($!)
start=$(date +%s.%N)
got=""
for _ in $(seq 50); do
  if x vis timeout 60 python3 -c "
import socket
c = socket.create_connection(('10.99.0.1', 9000), timeout=5)
c.settimeout(30)
with open('$TMP/got', 'wb') as f:
    while True:
        d = c.recv(65536)
        if not d:
            break
        f.write(d)
" 2>/dev/null; then got=yes; break; fi
  sleep 0.1
done
end=$(date +%s.%N)
[ -n "$got" ] || fail "(c) the transfer inside WireGuard did not complete"
cmp -s "$TMP/blob" "$TMP/got" || fail "(c) the bytes that arrived differ from those sent ($(stat -c %s "$TMP/got") of 8388608)"
rate=$(python3 -c "print(f'{8388608 * 8 / ($end - $start) / 1e6:.0f}')")
echo "ok (c): 8 MiB over TCP inside WireGuard inside ncx arrived intact ($rate Mbit/s)"
echo "netns WireGuard: 3 passed, 0 failed"

//! Socket options: the one TCP connection between client and server, and the visitor and local
//! connections beside it.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Kernel keepalive probes start after this much idle time. The control stream's pings judge
/// liveness; keepalive only helps NAT tables and stateful firewalls keep the connection's entry.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Interval between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Unsent bytes the kernel may queue on the tunnel socket before it stops reporting the socket
/// writable. Without a limit Linux queues megabytes, and a keystroke's frame waits behind all of
/// a bulk transfer's queued bytes (16 ms at 300 MiB/s was measured); with it, the rest of a bulk
/// transfer waits in yamux's per-stream queues, where frames of other streams can pass it.
pub const TUNNEL_NOTSENT_LOWAT: u32 = 128 * 1024;

/// Tunes the one TCP connection between client and server: no Nagle delay, TCP keepalive, and a
/// bounded queue of unsent bytes. Failure only loses a hint, so it is logged at debug level.
pub fn tune_tunnel(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "setting TCP_NODELAY failed");
    }
    let sock = SockRef::from(tcp);
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "setting TCP keepalive failed");
    }
    // Linux and Android only (socket2 offers it nowhere else); elsewhere the kernel's own queue
    // limit applies.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_notsent_lowat(TUNNEL_NOTSENT_LOWAT) {
        tracing::debug!(error = %e, "setting TCP_NOTSENT_LOWAT failed");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    tracing::debug!("TCP_NOTSENT_LOWAT is not available on this platform; skipped");
}

/// The local address of a socket, or the unspecified address in the rare case it cannot be read.
pub fn local_or_unspecified(tcp: &TcpStream) -> std::net::SocketAddr {
    tcp.local_addr()
        .unwrap_or_else(|_| std::net::SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Idle time before TCP keepalive probes start on a visitor or local-service connection.
pub const VISITOR_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Interval between those probes.
pub const VISITOR_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);
/// Unanswered probes after which the connection is given up: a visitor whose network vanished
/// (no FIN, no RST ever arrives) frees its slot about a minute after it went quiet, instead of
/// holding it forever.
pub const VISITOR_KEEPALIVE_PROBES: u32 = 3;

/// Tunes a visitor's connection (on the server) or a local-service connection (on the client):
/// TCP_NODELAY, where a keystroke must not wait for Nagle, and keepalive with a user timeout, so a
/// peer that vanished is noticed, idle or not. Failure only loses a hint, so it is logged at debug level.
pub fn tune_visitor(tcp: &TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "setting TCP_NODELAY failed");
    }
    let ka = TcpKeepalive::new()
        .with_time(VISITOR_KEEPALIVE_IDLE)
        .with_interval(VISITOR_KEEPALIVE_INTERVAL);
    #[cfg(unix)]
    let ka = ka.with_retries(VISITOR_KEEPALIVE_PROBES);
    let sock = SockRef::from(tcp);
    if let Err(e) = sock.set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "setting TCP keepalive failed");
    }
    // Keepalive only probes an idle connection. One whose last bytes were never acknowledged (the
    // network vanished right after a reply was sent) is retransmitted instead, for about 15
    // minutes by Linux's default; the user timeout gives it up after as long as the probes take.
    #[cfg(any(target_os = "linux", target_os = "android"))]
    if let Err(e) = sock.set_tcp_user_timeout(Some(VISITOR_GIVE_UP)) {
        tracing::debug!(error = %e, "setting TCP_USER_TIMEOUT failed");
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    tracing::debug!("TCP_USER_TIMEOUT is not available on this platform; skipped");
}

/// How long a visitor or local connection may go without an answer (to keepalive probes, or for
/// bytes sent) before it is given up: the idle time plus every probe.
pub const VISITOR_GIVE_UP: Duration = Duration::from_secs(
    VISITOR_KEEPALIVE_IDLE.as_secs()
        + VISITOR_KEEPALIVE_INTERVAL.as_secs() * VISITOR_KEEPALIVE_PROBES as u64,
);

//! Socket options for the one TCP connection between client and server.

use std::time::Duration;

use socket2::{SockRef, TcpKeepalive};
use tokio::net::TcpStream;

/// Kernel keepalive probes start after this much idle time. The control stream's pings judge
/// liveness; keepalive only helps NAT tables and stateful firewalls keep the connection's entry.
const KEEPALIVE_IDLE: Duration = Duration::from_secs(30);
/// Interval between keepalive probes.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// Turns on TCP keepalive for the tunnel connection. Failure only loses a hint, so it is logged at
/// debug level and otherwise ignored.
pub fn keepalive(tcp: &TcpStream) {
    let ka = TcpKeepalive::new()
        .with_time(KEEPALIVE_IDLE)
        .with_interval(KEEPALIVE_INTERVAL);
    if let Err(e) = SockRef::from(tcp).set_tcp_keepalive(&ka) {
        tracing::debug!(error = %e, "setting TCP keepalive failed");
    }
}

//! Binding public ports under the identity's policy: the port asked for, or with 0 any port the
//! policy allows, reserved in the registry for the session. TCP listeners and UDP sockets alike;
//! the registry keeps a TCP and a UDP port of one number apart.

use std::net::{IpAddr, SocketAddr};

use ncx_proto::{ErrorCode, Name};
use tokio::net::{TcpListener, TcpSocket};

use super::context::SessionCtx;
use super::registry::{Port, PortClaimError};
use crate::config::IdentityPolicy;
use crate::refusal::Refusal;

/// Pending connections the kernel queues on a public port.
const LISTEN_BACKLOG: u32 = 1024;

/// Ports tried when the client asks for "any port" and the OS's pick is outside the policy.
const PICK_ATTEMPTS: usize = 512;

/// What a public port is bound as: a TCP listener or a UDP socket. The policy's ports are the
/// same for both; the registry keeps TCP and UDP ports apart.
pub(super) trait Bindable: Sized {
    /// The registry's name of port `n` of this kind.
    fn port(n: u16) -> Port;
    fn bind(ip: IpAddr, port: u16) -> std::io::Result<Self>;
    fn local_port(&self) -> std::io::Result<u16>;
}

impl Bindable for TcpListener {
    fn port(n: u16) -> Port {
        Port::Tcp(n)
    }
    fn bind(ip: IpAddr, port: u16) -> std::io::Result<Self> {
        bind(ip, port)
    }
    fn local_port(&self) -> std::io::Result<u16> {
        self.local_addr().map(|a| a.port())
    }
}

impl Bindable for tokio::net::UdpSocket {
    fn port(n: u16) -> Port {
        Port::Udp(n)
    }
    fn bind(ip: IpAddr, port: u16) -> std::io::Result<Self> {
        let socket = std::net::UdpSocket::bind(SocketAddr::new(ip, port))?;
        socket.set_nonblocking(true)?;
        tokio::net::UdpSocket::from_std(socket)
    }
    fn local_port(&self) -> std::io::Result<u16> {
        self.local_addr().map(|a| a.port())
    }
}

/// Binds a public port for a service of `identity`'s session: `port`, or with 0 any port the
/// policy allows. Returns the listener (or UDP socket) and its port, reserved in the registry
/// for the session.
pub(super) fn bind_port<B: Bindable>(
    ctx: &SessionCtx,
    identity: &Name,
    policy: &IdentityPolicy,
    port: u16,
) -> Result<(B, u16), Refusal> {
    let ports = PortBinder::<B> {
        ctx,
        identity,
        policy,
        kind: std::marker::PhantomData,
    };
    if policy.ports.is_empty() {
        // Not "port in use": no port will ever be free for this identity.
        Err(Refusal::new(
            ErrorCode::PortNotAllowed,
            format!(
                "identity {identity} may not open public ports (it has no `ports` on the server); offer the service privately (`visitors`) or give the identity ports"
            ),
        ))
    } else if port == 0 {
        ports.pick()
    } else if !policy.allows(port) {
        Err(Refusal::new(
            ErrorCode::PortNotAllowed,
            format!(
                "port {port} is outside the ports allowed for identity {identity} ({})",
                policy.ports_text()
            ),
        ))
    } else {
        ports.claim_and_bind(port)
    }
}

struct PortBinder<'a, B> {
    ctx: &'a SessionCtx,
    identity: &'a Name,
    policy: &'a IdentityPolicy,
    kind: std::marker::PhantomData<B>,
}

impl<B: Bindable> PortBinder<'_, B> {
    fn claim_and_bind(&self, number: u16) -> Result<(B, u16), Refusal> {
        let registry = &self.ctx.shared.registry;
        let port = B::port(number);
        match registry.claim_port(port, self.identity, self.ctx.id) {
            Ok(()) => {}
            Err(PortClaimError::OtherIdentity(_)) => {
                // The other identity's name is not this client's business.
                return Err(Refusal::new(
                    ErrorCode::PortInUse,
                    format!("port {port} is in use by another identity"),
                ));
            }
            Err(PortClaimError::OtherSession) => {
                return Err(Refusal::new(
                    ErrorCode::PortInUse,
                    format!("port {port} is still held by an earlier session of this identity"),
                ));
            }
        }
        match B::bind(self.policy.bind, number) {
            Ok(l) => Ok((l, number)),
            Err(e) => {
                registry.release_port(port, self.ctx.id);
                let code = if e.kind() == std::io::ErrorKind::AddrInUse {
                    ErrorCode::PortInUse
                } else {
                    ErrorCode::BindFailed
                };
                Err(Refusal::new(
                    code,
                    format!("binding {}:{port} failed: {e}", self.policy.bind),
                ))
            }
        }
    }

    /// Port 0: let the OS pick, and keep its pick if the policy allows it; otherwise walk the
    /// allowed ranges from a varying start.
    fn pick(&self) -> Result<(B, u16), Refusal> {
        let registry = &self.ctx.shared.registry;
        if let Ok(l) = B::bind(self.policy.bind, 0) {
            if let Ok(port) = l.local_port() {
                if self.policy.allows(port)
                    && registry
                        .claim_port(B::port(port), self.identity, self.ctx.id)
                        .is_ok()
                {
                    return Ok((l, port));
                }
            }
        }
        let candidates: Vec<u16> = self.policy.ports.iter().flat_map(|r| r.0.clone()).collect();
        if !candidates.is_empty() {
            let start =
                usize::try_from(self.ctx.id.wrapping_mul(7919)).unwrap_or(0) % candidates.len();
            for i in 0..candidates.len().min(PICK_ATTEMPTS) {
                let port = candidates[(start + i) % candidates.len()];
                if registry.is_claimed(B::port(port)) {
                    continue;
                }
                if let Ok(b) = self.claim_and_bind(port) {
                    return Ok(b);
                }
            }
        }
        Err(Refusal::new(
            ErrorCode::PortInUse,
            format!(
                "no free port among those allowed for identity {} ({})",
                self.identity,
                self.policy.ports_text()
            ),
        ))
    }
}

pub(super) fn bind(ip: IpAddr, port: u16) -> std::io::Result<TcpListener> {
    let socket = match ip {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    // Lets a port be bound again at once after its session ends, despite visitor connections in
    // TIME_WAIT. Two live listeners on one port are still impossible on Linux.
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::new(ip, port))?;
    socket.listen(LISTEN_BACKLOG)
}

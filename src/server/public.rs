//! Public ports: binding one under the identity's policy, and accepting its visitors, each of
//! which becomes a substream to the client through the `opener.rs`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ncx_proto::{AccessRules, ErrorCode, Name};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn, Instrument};

use super::context::SessionCtx;
use super::opener::{end_text, open_to_client, Early};
use super::registry::PortClaimError;
use crate::accept::accept_until;
use crate::audit::{AuditRecord, VisitorEnd};
use crate::config::IdentityPolicy;
use crate::ratelimit::LogLimiter;
use crate::refusal::Refusal;
use crate::splice::{abort, splice_metered};

/// Pending connections the kernel queues on a public port.
const LISTEN_BACKLOG: u32 = 1024;

/// Ports tried when the client asks for "any port" and the OS's pick is outside the policy.
const PICK_ATTEMPTS: usize = 512;

/// Binds a public port for a service of `identity`'s session: `port`, or with 0 any port the
/// policy allows. Returns the listener and its port, reserved in the registry for the session.
pub(super) fn bind_port(
    ctx: &SessionCtx,
    identity: &Name,
    policy: &IdentityPolicy,
    port: u16,
) -> Result<(TcpListener, u16), Refusal> {
    let ports = PortBinder {
        ctx,
        identity,
        policy,
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

struct PortBinder<'a> {
    ctx: &'a SessionCtx,
    identity: &'a Name,
    policy: &'a IdentityPolicy,
}

impl PortBinder<'_> {
    fn claim_and_bind(&self, port: u16) -> Result<(TcpListener, u16), Refusal> {
        let registry = &self.ctx.shared.registry;
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
        match bind(self.policy.bind, port) {
            Ok(l) => Ok((l, port)),
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
    fn pick(&self) -> Result<(TcpListener, u16), Refusal> {
        let registry = &self.ctx.shared.registry;
        if let Ok(l) = bind(self.policy.bind, 0) {
            if let Ok(port) = l.local_addr().map(|a| a.port()) {
                if self.policy.allows(port)
                    && registry
                        .claim_port(port, self.identity, self.ctx.id)
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
                if registry.is_claimed(port) {
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

/// One public service as its listener serves it.
pub(super) struct Public {
    pub service: Name,
    pub port: u16,
    /// Checked on every visitor before anything reaches the client.
    pub access: AccessRules,
    pub identity: Name,
    /// The identity's visitor places, shared by all its sessions.
    pub identity_permits: Arc<Semaphore>,
    /// Stops the listener.
    pub stop: CancellationToken,
    /// Whether the client says the local service answers its health check; while not, visitors
    /// are refused at once.
    pub healthy: Arc<std::sync::atomic::AtomicBool>,
}

/// Accepts visitors on one public port until `stop` (a child of the session's listeners, so
/// also when they stop) is cancelled, then releases the port.
pub(super) async fn accept_visitors(ctx: Arc<SessionCtx>, listener: TcpListener, public: Public) {
    let Public {
        service,
        port,
        access,
        identity,
        identity_permits,
        stop,
        healthy,
    } = public;
    let service_permits = Arc::new(Semaphore::new(ctx.shared.settings.max_visitors_per_service));
    let denied_log = LogLimiter::default();
    let mut denied: u64 = 0;
    accept_until(
        &listener,
        &stop,
        "a visitor",
        |tcp, peer| {
            // The access rules and the limits are checked here, before a task or a substream
            // exists for the visitor: nothing of a refused visitor reaches the client.
            if !access.permits(peer.ip()) {
                denied += 1;
                if let Some(held_back) = denied_log.allow() {
                    warn!(%peer, denied_total = denied, held_back, "visitor refused by the service's access rules");
                }
                abort(tcp);
                return;
            }
            if !healthy.load(std::sync::atomic::Ordering::Relaxed) {
                if let Some(held_back) = denied_log.allow() {
                    warn!(%peer, held_back, "visitor refused: the client reports the service unhealthy");
                }
                abort(tcp);
                return;
            }
            let settings = &ctx.shared.settings;
            let permits = identity_permits
                .clone()
                .try_acquire_owned()
                .map_err(|_| ("identity", settings.max_visitors_per_identity))
                .and_then(|i| {
                    ctx.limits
                        .visitors
                        .clone()
                        .try_acquire_owned()
                        .map(|s| (i, s))
                        .map_err(|_| ("session", settings.max_visitors_per_session))
                })
                .and_then(|(i, s)| {
                    service_permits
                        .clone()
                        .try_acquire_owned()
                        .map(|v| (i, s, v))
                        .map_err(|_| ("service", settings.max_visitors_per_service))
                });
            let permits = match permits {
                Ok(p) => p,
                Err((which, limit)) => {
                    if let Some(held_back) = ctx.limits.log.allow() {
                        warn!(%peer, limit, held_back, "visitor refused: the {which} has reached its visitor limit");
                    }
                    abort(tcp);
                    return;
                }
            };
            let span = tracing::info_span!("visitor", %peer);
            ctx.visitors.spawn(
                visitor(ctx.clone(), tcp, peer, &identity, service.clone(), permits)
                    .instrument(span),
            );
        },
    )
    .await;
    drop(listener);
    ctx.shared.registry.release_port(port, ctx.id);
    debug!("port released");
}

/// A visitor's places under its identity's, its session's and its service's limits; dropping
/// them frees the places.
pub(super) type Places = (
    OwnedSemaphorePermit,
    OwnedSemaphorePermit,
    OwnedSemaphorePermit,
);

/// One public visitor, from its arrival to the audit line.
fn visitor(
    ctx: Arc<SessionCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
    identity: &Name,
    service: Name,
    permits: Places,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    // Counted as active from its arrival.
    let mut metrics = ctx
        .shared
        .metrics
        .visitor(identity.as_str(), service.as_str());
    metrics.meter.a_to_b.push(ctx.status.bytes_in.clone());
    metrics.meter.b_to_a.push(ctx.status.bytes_out.clone());
    served(ctx, tcp, peer, service, permits, metrics)
}

/// A plain function returning a block, not an `async fn`: this future is held for as long as the
/// visitor stays, and an `async fn` keeps a copy of every argument beside the one its body uses.
// Not an `async fn` on purpose (see above); clippy would make it one.
#[allow(clippy::manual_async_fn)]
fn served(
    ctx: Arc<SessionCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
    service: Name,
    permits: Places,
    metrics: crate::metrics::VisitorMetrics,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        let _permits = &permits;
        let record = AuditRecord {
            service: &service,
            owner: None,
            visitor: peer,
            identity: None,
            started: tokio::time::Instant::now(),
        };
        let end = connect_visitor(&ctx, tcp, peer, &service, &metrics.meter).await;
        record.emit(&end);
        metrics.ended(&end.how);
    }
}

/// Connects one visitor to its service through a substream and splices until the end.
async fn connect_visitor(
    ctx: &SessionCtx,
    mut tcp: TcpStream,
    peer: SocketAddr,
    service: &Name,
    meter: &crate::splice::Meter,
) -> VisitorEnd {
    crate::net::tune_visitor(&tcp);
    // The address the visitor connected to, for the PROXY protocol's destination.
    let public = crate::net::local_or_unspecified(&tcp);
    // Boxed: the opening is brief, and inline its state would size the future of every visitor
    // for as long as it stays (about 1.4 KiB of its 1.6).
    let opened = Box::pin(open_to_client(
        ctx,
        service,
        peer,
        public,
        Early::From(&mut tcp),
    ))
    .await;
    let (sub, early) = match opened {
        Ok(opened) => opened,
        Err(failure) => {
            abort(tcp);
            return VisitorEnd::before_data(failure.end);
        }
    };
    debug!("visitor connected");
    meter.a_to_b_before(early);
    let spliced = splice_metered(tcp, sub, ctx.visitors.cancelled(), meter.clone()).await;
    VisitorEnd {
        bytes_in: early + spliced.from_a,
        bytes_out: spliced.from_b,
        how: end_text(&spliced.end),
    }
}

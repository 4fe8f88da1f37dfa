//! Public TCP ports: a service started on its bound port, and its visitors accepted, each of
//! which becomes a substream to the client through the `opener.rs`.

use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use ncx_proto::{AccessRules, Name};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn, Instrument};

use super::context::SessionCtx;
use super::opener::{end_text, open_to_client, Early};
use super::ports::bind_port;
use super::registry::Port;
use crate::accept::accept_until;
use crate::audit::{AuditRecord, VisitorEnd};
use crate::config::IdentityPolicy;
use crate::ratelimit::LogLimiter;
use crate::refusal::Refusal;
use crate::splice::{abort, splice_metered};

/// What a started public service (TCP or UDP) hands the session's services: the port bound, the
/// token that stops the service, the token cancelled once its port is released, and its health
/// flag.
pub(super) type Started = (u16, CancellationToken, CancellationToken, Arc<AtomicBool>);

/// Binds the TCP port of `service` (`port`, or with 0 any the policy allows) for `ctx`'s session
/// and accepts its visitors in the session's listeners.
pub(super) fn start(
    ctx: &Arc<SessionCtx>,
    identity: &Name,
    policy: &IdentityPolicy,
    identity_permits: Arc<Semaphore>,
    (service, port, access): (Name, u16, AccessRules),
) -> Result<Started, Refusal> {
    let (listener, port) = bind_port::<TcpListener>(ctx, identity, policy, port)?;
    let addr = SocketAddr::new(policy.bind, port);
    if access.is_open() {
        info!(%service, %addr, "service exposed");
    } else {
        info!(%service, %addr, allow = ?access.allow, deny = ?access.deny, "service exposed to the allowed addresses");
    }
    let span = tracing::info_span!("service", %service, port);
    Ok(spawn_public(ctx, port, span, |stop, healthy| {
        accept_visitors(
            ctx.clone(),
            listener,
            Public {
                service,
                port,
                access,
                identity: identity.clone(),
                identity_permits,
                stop,
                healthy,
            },
        )
    }))
}

/// Runs the loop of a public service that `serve` makes (from its stop token and health flag) in
/// the session's listeners.
pub(super) fn spawn_public<F>(
    ctx: &SessionCtx,
    port: u16,
    span: tracing::Span,
    serve: impl FnOnce(CancellationToken, Arc<AtomicBool>) -> F,
) -> Started
where
    F: std::future::Future<Output = ()> + Send + 'static,
{
    let stop = ctx.listeners.token().child_token();
    let released = CancellationToken::new();
    let healthy = Arc::new(AtomicBool::new(true));
    let serving = serve(stop.clone(), healthy.clone());
    let done = released.clone();
    ctx.listeners.spawn(
        async move {
            serving.await;
            done.cancel();
        }
        .instrument(span),
    );
    (port, stop, released, healthy)
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
    ctx.shared.registry.release_port(Port::Tcp(port), ctx.id);
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

//! Public ports: binding them under the identity's policy, and turning each visitor into a
//! substream to the client.

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use ncx_proto::{AccessRules, ErrorCode, Message, Name, Text};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn, Instrument};

use super::registry::PortClaimError;
use super::session::SessionCtx;
use crate::config::IdentityPolicy;
use crate::framed::{write_message, MessageReader};
use crate::ratelimit::LogLimiter;
use crate::splice::{abort, splice, SpliceEnd, Substream};

/// How long the server waits for the client to answer a visitor header. The client's own local
/// connect deadline (5 s by default) is what normally answers first.
pub const VISITOR_STATUS_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a visitor may wait for a slot among the opens in flight and then for its substream.
/// A burst of thousands of visitors queues here (first come, first served) rather than being
/// refused at once.
const OPEN_TIMEOUT: Duration = Duration::from_secs(30);

/// Most bytes of a visitor forwarded before the client's answer. Well below yamux's initial window
/// of 256 KiB, so forwarding them never waits for the client to read.
const EARLY_DATA: usize = 64 * 1024;

/// Pending connections the kernel queues on a public port.
const LISTEN_BACKLOG: u32 = 1024;

/// Ports tried when the client asks for "any port" and the OS's pick is outside the policy.
const PICK_ATTEMPTS: usize = 512;

/// Pause after a failed `accept` on a public port.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// The services of one session.
pub(super) struct Services {
    pub(super) ctx: Arc<SessionCtx>,
    pub(super) identity: Name,
    policy: IdentityPolicy,
    /// Every service name of the session, public and private.
    pub(super) names: HashSet<Name>,
}

impl Services {
    pub(super) fn new(ctx: Arc<SessionCtx>, identity: Name, policy: IdentityPolicy) -> Self {
        Services {
            ctx,
            identity,
            policy,
            names: HashSet::new(),
        }
    }

    /// Handles one `Register`: binds the port and starts serving it, or says why not.
    pub(super) fn register(&mut self, service: Name, port: u16, access: AccessRules) -> Message {
        let refused = |code: ErrorCode, message: String| {
            warn!(%service, port, %code, reason = %message, "service refused");
            Message::ServiceRefused {
                service: service.clone(),
                code,
                message: Text::new(message),
            }
        };
        if self.names.contains(&service) {
            return refused(
                ErrorCode::DuplicateService,
                format!("service {service} is already registered in this session"),
            );
        }
        let bound = if port == 0 {
            self.pick_port()
        } else if !self.policy.allows(port) {
            Err((
                ErrorCode::PortNotAllowed,
                format!(
                    "port {port} is outside the ports allowed for identity {} ({})",
                    self.identity,
                    self.policy.ports_text()
                ),
            ))
        } else {
            self.claim_and_bind(port)
        };
        let (listener, port) = match bound {
            Ok(b) => b,
            Err((code, message)) => return refused(code, message),
        };
        self.names.insert(service.clone());
        let addr = SocketAddr::new(self.policy.bind, port);
        if access.is_open() {
            info!(%service, %addr, "service exposed");
        } else {
            info!(%service, %addr, allow = ?access.allow, deny = ?access.deny, "service exposed to the allowed addresses");
        }
        let span = tracing::info_span!("service", %service, port);
        self.ctx.listeners.spawn(
            serve(self.ctx.clone(), listener, service.clone(), port, access).instrument(span),
        );
        Message::Registered {
            service,
            remote_port: port,
        }
    }

    fn claim_and_bind(&self, port: u16) -> Result<(TcpListener, u16), (ErrorCode, String)> {
        let registry = &self.ctx.shared.registry;
        match registry.claim_port(port, &self.identity, self.ctx.id) {
            Ok(()) => {}
            Err(PortClaimError::OtherIdentity(_)) => {
                // The other identity's name is not this client's business.
                return Err((
                    ErrorCode::PortInUse,
                    format!("port {port} is in use by another identity"),
                ));
            }
            Err(PortClaimError::OtherSession) => {
                return Err((
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
                Err((
                    code,
                    format!("binding {}:{port} failed: {e}", self.policy.bind),
                ))
            }
        }
    }

    /// Port 0: let the OS pick, and keep its pick if the policy allows it; otherwise walk the allowed
    /// ranges from a varying start.
    fn pick_port(&self) -> Result<(TcpListener, u16), (ErrorCode, String)> {
        if let Ok(l) = bind(self.policy.bind, 0) {
            if let Ok(port) = l.local_addr().map(|a| a.port()) {
                if self.policy.allows(port)
                    && self
                        .ctx
                        .shared
                        .registry
                        .claim_port(port, &self.identity, self.ctx.id)
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
                if self.ctx.shared.registry.is_claimed(port) {
                    continue;
                }
                if let Ok(b) = self.claim_and_bind(port) {
                    return Ok(b);
                }
            }
        }
        Err((
            ErrorCode::PortInUse,
            format!(
                "no free port among those allowed for identity {} ({})",
                self.identity,
                self.policy.ports_text()
            ),
        ))
    }
}

fn bind(ip: IpAddr, port: u16) -> std::io::Result<TcpListener> {
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

/// Accepts visitors on one public port until the session's listeners are cancelled, then releases
/// the port.
async fn serve(
    ctx: Arc<SessionCtx>,
    listener: TcpListener,
    service: Name,
    port: u16,
    access: AccessRules,
) {
    let service_permits = Arc::new(Semaphore::new(ctx.shared.settings.max_visitors_per_service));
    let denied_log = LogLimiter::default();
    let mut denied: u64 = 0;
    loop {
        let (tcp, peer) = tokio::select! {
            _ = ctx.listeners_cancel.cancelled() => break,
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    warn!(error = %e, "accepting a visitor failed; backing off");
                    tokio::select! {
                        _ = ctx.listeners_cancel.cancelled() => break,
                        _ = tokio::time::sleep(ACCEPT_ERROR_BACKOFF) => continue,
                    }
                }
            },
        };
        // The access rules and the limits are checked here, before a task or a substream exists
        // for the visitor: nothing of a refused visitor reaches the client.
        if !access.permits(peer.ip()) {
            denied += 1;
            if let Some(held_back) = denied_log.allow() {
                warn!(%peer, denied_total = denied, held_back, "visitor refused by the service's access rules");
            }
            abort(tcp);
            continue;
        }
        let permits = ctx
            .visitor_permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ("session", ctx.shared.settings.max_visitors_per_session))
            .and_then(|s| {
                service_permits
                    .clone()
                    .try_acquire_owned()
                    .map(|v| (s, v))
                    .map_err(|_| ("service", ctx.shared.settings.max_visitors_per_service))
            });
        let permits = match permits {
            Ok(p) => p,
            Err((which, limit)) => {
                if let Some(held_back) = ctx.limit_log.allow() {
                    warn!(%peer, limit, held_back, "visitor refused: the {which} has reached its visitor limit");
                }
                abort(tcp);
                continue;
            }
        };
        let span = tracing::info_span!("visitor", %peer);
        ctx.visitors
            .spawn(visitor(ctx.clone(), tcp, peer, service.clone(), permits).instrument(span));
    }
    drop(listener);
    ctx.shared.registry.release_port(port, ctx.id);
    debug!("port released");
}

async fn visitor(
    ctx: Arc<SessionCtx>,
    tcp: TcpStream,
    peer: SocketAddr,
    service: Name,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
) {
    let started = tokio::time::Instant::now();
    let (bytes_in, bytes_out, end) = serve_visitor(&ctx, tcp, peer, &service).await;
    // The audit log: one line per visitor connection, whatever became of it.
    info!(
        target: "ncx::audit",
        %service,
        visitor = %peer,
        bytes_in,
        bytes_out,
        duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        end = %end,
        "visitor connection"
    );
}

/// Connects one visitor to its service through a substream and splices until the end. Returns the
/// bytes from and to the visitor and how it ended, in words.
async fn serve_visitor(
    ctx: &SessionCtx,
    mut tcp: TcpStream,
    peer: SocketAddr,
    service: &Name,
) -> (u64, u64, String) {
    if let Err(e) = tcp.set_nodelay(true) {
        debug!(error = %e, "setting TCP_NODELAY failed");
    }
    // The address the visitor connected to, for the PROXY protocol's destination.
    let public = super::session::local_or_unspecified(&tcp);
    let (sub, early) = match open_to_client(ctx, service, peer, public, Some(&mut tcp)).await {
        Ok(opened) => opened,
        Err(failure) => {
            abort(tcp);
            return (0, 0, failure.end);
        }
    };
    debug!("visitor connected");
    let spliced = splice(tcp, sub, ctx.visitors_cancel.cancelled()).await;
    (
        early + spliced.from_tcp,
        spliced.from_substream,
        end_text(&spliced.end),
    )
}

/// How a splice ended, in the words of the audit log.
pub(super) fn end_text(end: &SpliceEnd) -> String {
    match end {
        SpliceEnd::Finished => "finished".to_owned(),
        SpliceEnd::Reset(e) => format!("reset: {e}"),
        SpliceEnd::Cancelled => "reset: session ended".to_owned(),
    }
}

/// Why a visitor could not be connected to its service.
pub(super) struct OpenFailure {
    /// What to tell a visiting peer (private services).
    pub code: ErrorCode,
    /// Why, for people.
    pub message: String,
    /// How the visitor ended, for the audit log.
    pub end: String,
}

impl OpenFailure {
    fn new(code: ErrorCode, message: impl Into<String>, end: impl Into<String>) -> Self {
        OpenFailure {
            code,
            message: message.into(),
            end: end.into(),
        }
    }
}

/// Opens a substream to the client of `ctx` for a visitor of `service` from `peer` (which reached
/// the server at `public`), sends the visitor header and waits for the client's answer. Returns
/// the substream, ready for raw bytes, once the client is connected to its local service, and how
/// many of the visitor's bytes were forwarded already.
///
/// With `early`, the visitor's connection, up to [`EARLY_DATA`] bytes of it are forwarded right
/// behind the header instead of after the answer: the client reads them only once connected to its
/// service (and drops them if it cannot connect).
pub(super) async fn open_to_client(
    ctx: &SessionCtx,
    service: &Name,
    peer: SocketAddr,
    public: SocketAddr,
    mut early: Option<&mut TcpStream>,
) -> Result<(Substream, u64), OpenFailure> {
    let cancel = &ctx.visitors_cancel;
    let ended = || {
        OpenFailure::new(
            ErrorCode::ShuttingDown,
            "the service's session ended",
            "reset: session ended",
        )
    };
    // An open is "in flight" until the client answers; yamux stalls beyond 256 such streams.
    let in_flight = tokio::select! {
        _ = cancel.cancelled() => return Err(ended()),
        r = tokio::time::timeout(OPEN_TIMEOUT, ctx.open_permits.clone().acquire_owned()) => r,
    };
    let Ok(Ok(in_flight)) = in_flight else {
        if let Some(held_back) = ctx.limit_log.allow() {
            warn!(
                held_back,
                "visitor refused: {} substreams await the client's answer",
                ctx.shared.settings.max_opens_in_flight
            );
        }
        return Err(OpenFailure::new(
            ErrorCode::LimitReached,
            "too many visitors are waiting for the service's client",
            "refused: too many substreams await the client",
        ));
    };
    let stream = tokio::select! {
        _ = cancel.cancelled() => return Err(ended()),
        r = tokio::time::timeout(OPEN_TIMEOUT, ctx.handle.open()) => match r {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(OpenFailure::new(ErrorCode::ShuttingDown, "the service's session ended", format!("reset: no substream: {e}"))),
            Err(_) => {
                warn!("no substream for the visitor within {OPEN_TIMEOUT:?}");
                return Err(OpenFailure::new(ErrorCode::LimitReached, "the service's client is too busy", "refused: no substream in time"));
            }
        },
    };
    if ctx.opens.fetch_add(1, Ordering::Relaxed) + 1 >= ctx.shared.settings.rotate_after_opens {
        ctx.rotate.cancel();
    }
    let mut sub = Substream::new(stream, ctx.handle.state().clone());
    let header = Message::VisitorHeader {
        service: service.clone(),
        visitor: peer,
        public,
    };
    if let Err(e) = write_message(&mut sub, &header).await {
        return Err(OpenFailure::new(
            ErrorCode::ShuttingDown,
            "the service's session ended",
            format!("reset: sending the visitor header: {e}"),
        ));
    }
    // While the client connects to its service, the visitor's first bytes already cross the
    // tunnel (they wait in the substream until the client splices), saving a round trip.
    let deadline = tokio::time::Instant::now() + VISITOR_STATUS_TIMEOUT;
    let mut reader = MessageReader::new();
    let mut early_buf = Vec::new();
    let mut early_sent = 0usize;
    let status = loop {
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return Err(ended()),
            r = tokio::time::timeout_at(deadline, reader.read(&mut sub)) => {
                break r.map(|r| r.map_err(|e| format!("reading the client's answer: {e}")));
            }
            r = read_early(&mut early, &mut early_buf) => match r {
                Ok(n) if n > 0 => {
                    early_sent += n;
                    let sent = async {
                        sub.write_all(&early_buf[..n]).await?;
                        sub.flush().await
                    };
                    if sent.await.is_err() || early_sent >= EARLY_DATA {
                        // The client's answer says what went wrong, or the rest waits for it.
                        early = None;
                    }
                }
                // End or failure of the visitor: the splice sees it again and passes it on.
                _ => early = None,
            },
        }
    };
    drop(in_flight);
    let broken =
        |end: String| OpenFailure::new(ErrorCode::Internal, "the service's client failed", end);
    match status {
        Ok(Ok(Message::VisitorStatus { refusal: None })) => Ok((sub, early_sent as u64)),
        Ok(Ok(Message::VisitorStatus {
            refusal: Some((code, message)),
        })) => {
            warn!(%code, reason = %message, "the client could not reach the local service; visitor closed");
            Err(OpenFailure::new(
                code,
                message.as_str(),
                format!("refused by the client: {message} ({code})"),
            ))
        }
        Ok(Ok(other)) => {
            warn!(
                "the client answered a visitor header with message type 0x{:02x}",
                other.type_byte()
            );
            Err(broken("reset: protocol violation by the client".into()))
        }
        Ok(Err(e)) => Err(broken(format!("reset: {e}"))),
        Err(_) => {
            warn!("the client did not answer the visitor header within {VISITOR_STATUS_TIMEOUT:?}");
            Err(OpenFailure::new(
                ErrorCode::LocalTimeout,
                "the service's client did not answer in time",
                "refused: the client did not answer in time",
            ))
        }
    }
}

/// Reads what the visitor has sent so far (at most 16 KiB at a time); never completes once
/// `early` is `None`.
async fn read_early(
    early: &mut Option<&mut TcpStream>,
    buf: &mut Vec<u8>,
) -> std::io::Result<usize> {
    match early {
        Some(tcp) => {
            if buf.is_empty() {
                buf.resize(16 * 1024, 0);
            }
            tcp.read(buf).await
        }
        None => std::future::pending().await,
    }
}

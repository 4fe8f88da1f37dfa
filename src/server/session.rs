//! One client session on the server: TLS, hello and authentication under one deadline, takeover of
//! the identity's previous session, then the control stream (registrations, pings, go-away) until
//! the session ends, and finally the teardown of its ports and visitors.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ncx_proto::{ErrorCode, Message, Name, Text, PROTOCOL_VERSION};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Semaphore};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::compat::{Compat, FuturesAsyncReadCompatExt};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn, Instrument};

use super::admission::{FailureVerdict, HandshakeSlot};
use super::registry::{SessionEntry, SessionId};
use super::services::Services;
use super::Shared;
use crate::framed::{write_message, MessageReader, ReadError};
use crate::ratelimit::LogLimiter;
use crate::session::{self as yamux_session, SessionEnd, SessionHandle};

/// After refusing a client, keep the connection open this long for the refusal to be read, so
/// closing does not turn into a reset that destroys it.
const REFUSAL_LINGER: Duration = Duration::from_secs(2);

/// How long a new session waits for the session it replaces to release its ports.
const TAKEOVER_TIMEOUT: Duration = Duration::from_secs(5);

/// Streams the client opened that wait to be taken by the session task: the control stream, then
/// visit substreams. yamux lets a peer have at most 256 streams unacknowledged, so a queue of that
/// size only overflows (and resets the newest stream) if the session task stalls.
const INBOUND_QUEUE: usize = 256;

/// The drain of a session that rotated: its visitors may take as long as they like (liveness still
/// ends the session if the client vanishes).
const UNBOUNDED_DRAIN: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

type Control = Compat<yamux::Stream>;

/// Everything one session's tasks share.
pub(super) struct SessionCtx {
    pub shared: Arc<Shared>,
    pub id: SessionId,
    pub handle: SessionHandle,
    /// Stops the accept loops of the session's public ports.
    pub listeners_cancel: CancellationToken,
    /// Owns the accept loops; empty once every port is released.
    pub listeners: TaskTracker,
    /// Resets the session's visitors.
    pub visitors_cancel: CancellationToken,
    /// Owns the visitor tasks.
    pub visitors: TaskTracker,
    /// Caps concurrent visitors of the session.
    pub visitor_permits: Arc<Semaphore>,
    /// Caps substreams opened and not yet answered by the client.
    pub open_permits: Arc<Semaphore>,
    /// Limits warnings about visitors refused at a limit.
    pub limit_log: LogLimiter,
    /// Substreams opened so far.
    pub opens: AtomicU64,
    /// Cancelled when `opens` reaches the rotation threshold.
    pub rotate: CancellationToken,
    /// The client's address.
    pub peer: SocketAddr,
    /// The server address the client connected to.
    pub local: SocketAddr,
    /// Private services this session registered, as (owner, name), released with its ports.
    pub private_names: std::sync::Mutex<Vec<(Name, Name)>>,
}

impl SessionCtx {
    /// Remembers a private service to release when the session's services stop.
    pub fn hold_private(&self, owner: Name, name: Name) {
        self.private_names
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push((owner, name));
    }
}

/// What the TLS handshake established about the client.
pub(crate) struct PeerTls {
    /// Keying material for the token proof.
    pub exported: crate::auth::ExportedKey,
    /// The common name of the verified client certificate, if one was presented.
    pub cert_name: Option<String>,
    /// The server address the client connected to.
    pub local: SocketAddr,
}

/// How the control exchange ended, which decides the teardown.
enum Outcome {
    /// Refused before authentication: the reason was sent; linger so it is read.
    Refused,
    /// Ends now: visitors are reset.
    Abort(String),
    /// Go-away was sent: visitors may finish until the drain deadline.
    Drain(String),
}

/// Runs a session from the first TLS byte to the release of its last port.
pub(super) async fn run(
    shared: Arc<Shared>,
    tcp: TcpStream,
    peer: SocketAddr,
    slot: HandshakeSlot,
    cancel: CancellationToken,
) {
    let deadline = Instant::now() + shared.settings.handshake_timeout;
    let local = local_or_unspecified(&tcp);
    let accept = tokio::select! {
        _ = cancel.cancelled() => return,
        _ = slot.evicted() => {
            debug!("handshake dropped to make room for a newer connection");
            return;
        }
        r = tokio::time::timeout_at(deadline, shared.acceptor.accept(tcp)) => r,
    };
    let tls = match accept {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            let bad_cert = e
                .get_ref()
                .and_then(|i| i.downcast_ref::<rustls::Error>())
                .is_some_and(|t| matches!(t, rustls::Error::InvalidCertificate(_)));
            if bad_cert {
                // A client certificate the client CA did not sign (or expired) is a failed
                // authentication like a wrong token.
                if let Some(held_back) = shared.refusal_log.allow() {
                    warn!(error = %e, held_back, "client certificate refused");
                }
                if shared.auth_guard.record_failure(peer.ip()) == FailureVerdict::NowBlocked {
                    warn!(ip = %peer.ip(), block = ?shared.settings.auth_block, "blocking an address after repeated failed authentications");
                }
            } else {
                debug!(error = %e, "TLS handshake with a client failed");
            }
            return;
        }
        Err(_) => {
            debug!("TLS handshake with a client timed out");
            return;
        }
    };
    let (_, conn) = tls.get_ref();
    if conn.alpn_protocol() != Some(ncx_proto::ALPN) {
        info!("refused a client that does not offer ALPN ncx/1 (not ncx, or a version before 1)");
        return;
    }
    let exported = match crate::auth::export(conn) {
        Ok(e) => e,
        Err(e) => {
            warn!(error = %e, "exporting TLS keying material failed");
            return;
        }
    };
    let facts = PeerTls {
        exported,
        cert_name: crate::tls::client_certificate_name(conn),
        local,
    };
    serve(shared, tls, facts, peer, slot, deadline, cancel).await;
}

/// The local address of a socket, or the unspecified address in the rare case it cannot be read.
pub(super) fn local_or_unspecified(tcp: &TcpStream) -> SocketAddr {
    tcp.local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)))
}

/// Runs a session over `io`, the inside of a TLS connection that established `facts`, until its
/// last port is released. Public to the crate so the session logic can be
/// fed arbitrary bytes without TLS (the `fuzzing` feature's `Server::serve_decrypted`).
pub(crate) async fn serve<T>(
    shared: Arc<Shared>,
    io: T,
    facts: PeerTls,
    peer: SocketAddr,
    slot: HandshakeSlot,
    deadline: Instant,
    cancel: CancellationToken,
) where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (inbound_tx, mut inbound_rx) = mpsc::channel(INBOUND_QUEUE);
    let on_inbound = Box::new(
        move |stream: yamux::Stream, _: &Arc<yamux_session::SessionState>| {
            if inbound_tx.try_send(stream).is_err() {
                debug!("dropped a stream the client opened beyond the control stream");
            }
        },
    );
    // The driver has its own token, cancelled only after the control task has said goodbye and the
    // visitors are done, so a shutdown reaches the client as a reason before the connection closes.
    let driver_cancel = CancellationToken::new();
    let (handle, driver) =
        yamux_session::start(io, yamux::Mode::Server, on_inbound, driver_cancel.clone());
    let driver = tokio::spawn(driver.in_current_span());

    let id = shared.next_session.fetch_add(1, Ordering::Relaxed);
    let ctx = Arc::new(SessionCtx {
        shared: shared.clone(),
        id,
        handle,
        listeners_cancel: CancellationToken::new(),
        listeners: TaskTracker::new(),
        visitors_cancel: CancellationToken::new(),
        visitors: TaskTracker::new(),
        visitor_permits: Arc::new(Semaphore::new(shared.settings.max_visitors_per_session)),
        open_permits: Arc::new(Semaphore::new(shared.settings.max_opens_in_flight)),
        limit_log: LogLimiter::default(),
        opens: AtomicU64::new(0),
        rotate: CancellationToken::new(),
        peer,
        local: facts.local,
        private_names: std::sync::Mutex::new(Vec::new()),
    });
    let replace = CancellationToken::new();
    let ports_released = CancellationToken::new();
    let mut identity: Option<Name> = None;

    let outcome = control(
        &ctx,
        &mut inbound_rx,
        &facts,
        peer,
        deadline,
        slot,
        &replace,
        &ports_released,
        &cancel,
        &mut identity,
    )
    .await;

    match &outcome {
        Outcome::Refused => {
            // Keep the connection up so the refusal is delivered; the client closes once it has
            // read it.
            let _ = tokio::time::timeout(REFUSAL_LINGER, ctx.handle.state().ended()).await;
        }
        Outcome::Abort(reason) => info!(%reason, "session ended"),
        Outcome::Drain(reason) => info!(%reason, "session ended after its visitors finished"),
    }
    // Ports first, so a takeover can proceed, then visitors (any still running are reset), then the
    // connection itself.
    stop_listeners(&ctx, &ports_released).await;
    ctx.visitors_cancel.cancel();
    ctx.visitors.close();
    ctx.visitors.wait().await;
    if let Some(identity) = identity {
        shared.registry.remove_session(&identity, id);
    }
    driver_cancel.cancel();
    match driver.await {
        Ok(SessionEnd::Failed(e)) => debug!(error = %e, "connection ended with an error"),
        Ok(_) => {}
        Err(e) => warn!(error = %e, "the session driver task failed"),
    }
}

/// Stops accepting on the session's public ports and waits until every one is released; withdraws
/// its private services.
async fn stop_listeners(ctx: &SessionCtx, ports_released: &CancellationToken) {
    ctx.listeners_cancel.cancel();
    ctx.listeners.close();
    ctx.listeners.wait().await;
    let private = std::mem::take(&mut *ctx.private_names.lock().unwrap_or_else(|e| e.into_inner()));
    for (owner, name) in private {
        ctx.shared.registry.release_private(&owner, &name, ctx.id);
    }
    ports_released.cancel();
}

#[allow(clippy::too_many_arguments)]
async fn control(
    ctx: &Arc<SessionCtx>,
    inbound: &mut mpsc::Receiver<yamux::Stream>,
    facts: &PeerTls,
    peer: SocketAddr,
    deadline: Instant,
    slot: HandshakeSlot,
    replace: &CancellationToken,
    ports_released: &CancellationToken,
    cancel: &CancellationToken,
    identity_out: &mut Option<Name>,
) -> Outcome {
    let shared = &ctx.shared;
    let state = ctx.handle.state().clone();
    let mut reader = MessageReader::new();
    let hello = async {
        let stream = inbound
            .recv()
            .await
            .ok_or("the connection closed before the hello")?;
        let mut ctrl = stream.compat();
        match reader.read(&mut ctrl).await {
            Ok(msg) => Ok((ctrl, msg)),
            Err(_) => Err("the client sent no valid hello"),
        }
    };
    let (mut ctrl, msg) = tokio::select! {
        _ = cancel.cancelled() => return Outcome::Abort("the server is shutting down".into()),
        _ = slot.evicted() => return Outcome::Abort("handshake dropped to make room for a newer connection".into()),
        r = tokio::time::timeout_at(deadline, hello) => match r {
            Ok(Ok(r)) => r,
            Ok(Err(reason)) => return Outcome::Abort(reason.into()),
            Err(_) => return Outcome::Abort("the client did not say hello in time".into()),
        },
    };
    let identity = match authenticate(shared, facts, peer, msg) {
        Ok(identity) => identity,
        Err((code, message)) => {
            if let Some(held_back) = shared.refusal_log.allow() {
                warn!(%code, reason = %message, held_back, "client refused");
            }
            send_error(&mut ctrl, code, &message).await;
            return Outcome::Refused;
        }
    };
    tracing::Span::current().record("client", identity.as_str());
    let Ok(_session_permit) = shared.sessions.clone().try_acquire_owned() else {
        let message = format!(
            "the server holds its maximum of {} sessions",
            shared.settings.max_sessions
        );
        warn!(reason = %message, "client refused");
        send_error(&mut ctrl, ErrorCode::LimitReached, &message).await;
        return Outcome::Refused;
    };
    if let Err(e) = write_message(
        &mut ctrl,
        &Message::Welcome {
            version: PROTOCOL_VERSION,
        },
    )
    .await
    {
        return Outcome::Abort(format!("sending welcome: {e}"));
    }
    drop(slot);

    *identity_out = Some(identity.clone());
    info!("client authenticated");

    let policy = shared
        .identities
        .get(&identity)
        .expect("authenticate only returns configured identities");
    let timing = shared.settings.timing;
    let mut services = Services::new(ctx.clone(), identity.clone(), policy.clone());
    let mut ping =
        tokio::time::interval_at(Instant::now() + timing.ping_interval, timing.ping_interval);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut ping_seq: u64 = 0;
    let mut last_pong = Instant::now();
    // Set once this side sent a go-away: (deadline, reason).
    let mut draining: Option<(Instant, String)> = None;
    // Set once the client said it goes away: its ports are released, registrations refused.
    let mut client_leaving = false;
    // Set once this session asked the client to rotate.
    let mut rotating = false;
    // Set once the session registered a service and so became the identity's live session.
    let mut installed = false;
    loop {
        let drain_deadline = draining.as_ref().map_or_else(Instant::now, |(d, _)| *d);
        let msg = tokio::select! {
            biased;
            _ = state.ended() => {
                return Outcome::Abort(match draining {
                    Some((_, reason)) => reason,
                    None => "the connection ended".into(),
                });
            }
            _ = replace.cancelled(), if draining.is_none() => {
                go_away(&mut ctrl, ErrorCode::SessionReplaced, "a newer session of this identity took over").await;
                stop_listeners(ctx, ports_released).await;
                ctx.visitors.close();
                // After a rotation the client is alive and its visitors (a remote desktop, say) may
                // last for hours: they keep this session until they end. Otherwise the takeover
                // usually means this session's client is gone, and the drain deadline applies.
                let drain = if rotating { UNBOUNDED_DRAIN } else { timing.drain_timeout };
                draining = Some((Instant::now() + drain, "replaced by a newer session of the same identity".into()));
                continue;
            }
            _ = ctx.rotate.cancelled(), if !rotating && draining.is_none() => {
                // The client opens a fresh session, which takes over the ports (and so ends this one
                // through the takeover path) while visitors here finish.
                info!(opens = ctx.opens.load(Ordering::Relaxed), "asking the client to rotate to a fresh session before yamux runs out of stream ids");
                go_away(&mut ctrl, ErrorCode::Rotate, "this session used most of its stream ids; open a new one").await;
                rotating = true;
                continue;
            }
            _ = cancel.cancelled(), if draining.is_none() => {
                go_away(&mut ctrl, ErrorCode::ShuttingDown, "the server is shutting down").await;
                stop_listeners(ctx, ports_released).await;
                ctx.visitors.close();
                draining = Some((Instant::now() + timing.drain_timeout, "the server is shutting down".into()));
                continue;
            }
            _ = ctx.visitors.wait(), if draining.is_some() => {
                return Outcome::Drain(draining.map(|(_, r)| r).unwrap_or_default());
            }
            _ = tokio::time::sleep_until(drain_deadline), if draining.is_some() => {
                let reason = draining.map(|(_, r)| r).unwrap_or_default();
                return Outcome::Abort(format!("{reason}; drain deadline passed, remaining visitors reset"));
            }
            _ = ping.tick() => {
                if last_pong.elapsed() > timing.liveness_timeout {
                    warn!(silent_for = ?last_pong.elapsed(), "the client answered no ping in time; closing its session");
                    return Outcome::Abort("the client stopped answering pings".into());
                }
                ping_seq += 1;
                if let Err(e) = write_message(&mut ctrl, &Message::Ping(ping_seq)).await {
                    return Outcome::Abort(format!("sending a ping: {e}"));
                }
                continue;
            }
            Some(stream) = inbound.recv() => {
                // A visit substream (`ncx visit`). Counted against the session's visitor limit
                // before a task exists for it.
                if ctx.listeners_cancel.is_cancelled() {
                    continue; // going away: dropping the stream resets it
                }
                match ctx.visitor_permits.clone().try_acquire_owned() {
                    Ok(permit) => {
                        let span = tracing::info_span!("visit", service = tracing::field::Empty);
                        ctx.visitors.spawn(
                            super::private::visit(ctx.clone(), stream, identity.clone(), permit)
                                .instrument(span),
                        );
                    }
                    Err(_) => {
                        if let Some(held_back) = ctx.limit_log.allow() {
                            warn!(limit = shared.settings.max_visitors_per_session, held_back, "visit refused: the session has reached its visitor limit");
                        }
                    }
                }
                continue;
            }
            m = reader.read(&mut ctrl) => m,
        };
        if !installed
            && !client_leaving
            && draining.is_none()
            && matches!(
                msg,
                Ok(Message::Register { .. } | Message::RegisterPrivate { .. })
            )
        {
            installed = true;
            take_over(shared, ctx, &identity, replace, ports_released).await;
        }
        let reply = match msg {
            Ok(Message::Register { service, .. } | Message::RegisterPrivate { service, .. })
                if client_leaving || draining.is_some() =>
            {
                Message::ServiceRefused {
                    service,
                    code: ErrorCode::ShuttingDown,
                    message: Text::new("the session is going away"),
                }
            }
            Ok(Message::Register {
                service,
                remote_port,
                access,
            }) => services.register(service, remote_port, access),
            Ok(Message::RegisterPrivate { service, visitors }) => {
                services.register_private(service, visitors)
            }
            Ok(Message::Ping(v)) => Message::Pong(v),
            Ok(Message::Pong(_)) => {
                last_pong = Instant::now();
                continue;
            }
            Ok(Message::GoAway { code, message }) => {
                info!(%code, reason = %message, "the client is going away; releasing its ports");
                client_leaving = true;
                stop_listeners(ctx, ports_released).await;
                continue;
            }
            Ok(Message::Error { code, message }) => {
                return Outcome::Abort(format!("the client ended the session: {message} ({code})"))
            }
            Ok(other) => {
                let text = format!(
                    "unexpected message type 0x{:02x} on the control stream",
                    other.type_byte()
                );
                send_error(&mut ctrl, ErrorCode::ProtocolViolation, &text).await;
                return Outcome::Abort(text);
            }
            Err(ReadError::Closed) => {
                return Outcome::Abort("the client closed the control stream".into())
            }
            Err(ReadError::Invalid(e)) => {
                let text = format!("malformed control frame: {e}");
                send_error(&mut ctrl, ErrorCode::ProtocolViolation, &text).await;
                return Outcome::Abort(text);
            }
            Err(e) => return Outcome::Abort(format!("reading the control stream: {e}")),
        };
        if let Err(e) = write_message(&mut ctrl, &reply).await {
            return Outcome::Abort(format!("writing the control stream: {e}"));
        }
    }
}

/// Makes this session the identity's live session. A client must never be locked out by its own
/// stale session: the previous one is told to go away and its ports are awaited. Done at the first
/// registration, so a session that only visits (`ncx visit`) never displaces the identity's client.
async fn take_over(
    shared: &Shared,
    ctx: &SessionCtx,
    identity: &Name,
    replace: &CancellationToken,
    ports_released: &CancellationToken,
) {
    let entry = SessionEntry {
        id: ctx.id,
        replace: replace.clone(),
        ports_released: ports_released.clone(),
    };
    if let Some(old) = shared.registry.install_session(identity, entry) {
        info!(
            old_session = old.id,
            "taking over from the identity's previous session"
        );
        old.replace.cancel();
        if tokio::time::timeout(TAKEOVER_TIMEOUT, old.ports_released.cancelled())
            .await
            .is_err()
        {
            warn!(
                old_session = old.id,
                "the previous session did not release its ports in time"
            );
        }
    }
}

fn authenticate(
    shared: &Shared,
    facts: &PeerTls,
    peer: SocketAddr,
    msg: Message,
) -> Result<Name, (ErrorCode, String)> {
    let Message::Hello {
        version,
        identity,
        proof,
    } = msg
    else {
        return Err((
            ErrorCode::ProtocolViolation,
            format!(
                "expected a hello, got message type 0x{:02x}",
                msg.type_byte()
            ),
        ));
    };
    if version != PROTOCOL_VERSION {
        return Err((
            ErrorCode::VersionMismatch,
            format!(
                "the server speaks protocol version {PROTOCOL_VERSION} and the client {version}: upgrade the older side"
            ),
        ));
    }
    if let Some(left) = shared.auth_guard.blocked_for(peer.ip()) {
        return Err((
            ErrorCode::LimitReached,
            format!(
                "too many failed authentications from {}; try again in {} s",
                peer.ip(),
                left.as_secs().max(1)
            ),
        ));
    }
    let result = match shared.identities.get(&identity) {
        None => Err((
            ErrorCode::UnknownIdentity,
            format!("the server has no identity named {identity}"),
        )),
        Some(policy) => check_credentials(policy, facts, &identity, &proof).map(|()| identity),
    };
    match &result {
        Ok(_) => shared.auth_guard.record_success(peer.ip()),
        Err(_) => {
            if shared.auth_guard.record_failure(peer.ip()) == FailureVerdict::NowBlocked {
                warn!(
                    ip = %peer.ip(),
                    block = ?shared.settings.auth_block,
                    failures = shared.settings.auth_failures_before_block,
                    "blocking an address after repeated failed authentications"
                );
            }
        }
    }
    result
}

/// Checks what the identity's policy asks for: a certificate naming it, a proof of its token, or
/// both. Certificates were verified against the client CA during the TLS handshake.
fn check_credentials(
    policy: &crate::config::IdentityPolicy,
    facts: &PeerTls,
    identity: &Name,
    proof: &[u8; ncx_proto::AUTH_PROOF_LEN],
) -> Result<(), (ErrorCode, String)> {
    if policy.auth.needs_certificate() {
        match facts.cert_name.as_deref() {
            Some(name) if name == identity.as_str() => {}
            Some(name) => {
                return Err((
                    ErrorCode::CertificateRequired,
                    format!(
                        "the client certificate is for {name:?}, not for identity {identity}"
                    ),
                ))
            }
            None => {
                return Err((
                    ErrorCode::CertificateRequired,
                    format!("identity {identity} must present a client certificate signed by the server's client CA"),
                ))
            }
        }
    }
    if let Some(token) = policy.auth.token() {
        if !crate::auth::verify(token, &facts.exported, identity, proof) {
            return Err((
                ErrorCode::BadToken,
                format!("the token for identity {identity} is wrong"),
            ));
        }
    }
    Ok(())
}

async fn send_error(ctrl: &mut Control, code: ErrorCode, message: &str) {
    let msg = Message::Error {
        code,
        message: Text::new(message),
    };
    if let Err(e) = write_message(ctrl, &msg).await {
        debug!(error = %e, "could not tell the client why");
    }
    let _ = tokio::io::AsyncWriteExt::shutdown(ctrl).await;
}

async fn go_away(ctrl: &mut Control, code: ErrorCode, message: &str) {
    let msg = Message::GoAway {
        code,
        message: Text::new(message),
    };
    if let Err(e) = write_message(ctrl, &msg).await {
        debug!(error = %e, "could not send go-away");
    }
}
